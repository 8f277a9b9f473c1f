//! ACPI tables: how a stock distribution kernel finds our devices and powers off.
//!
//! The platform is ACPI *hardware-reduced*: no PM1 blocks, no SCI, no legacy PIC
//! or PIT expectations. Poweroff uses the FADT `SLEEP_CONTROL_REG`, an I/O port the
//! VMM traps ([`ACPI_SLEEP_CTL_PORT`]): Linux's `acpi_power_off` writes
//! `SLP_TYP << 2 | SLP_EN` there, with `SLP_TYP` taken from the DSDT's `\_S5`
//! package (5 here), so a byte `0x34` ends the VM with exit code 0. Reset goes
//! through the FADT `RESET_REG` (another trapped port) or the i8042.
//!
//! Each virtio-mmio device is a DSDT `Device` with `_HID "LNRO0005"` (the id the
//! `virtio_mmio` driver matches), a `Memory32Fixed` window and an extended IRQ.

use acpi_tables::aml::{
    Device, EISAName, Interrupt, Memory32Fixed, Name, Package, Path, ResourceTemplate, Scope, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;
use crate::error::{Error, Result};

const OEM_ID: [u8; 6] = *b"BOXVMM";
/// The `SLP_TYP` value of our `\_S5` package.
pub const S5_SLP_TYP: u8 = 5;
/// `SLP_EN` bit of the hardware-reduced sleep control register.
pub const SLP_EN: u8 = 1 << 5;

/// A virtio-mmio device as ACPI describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmioDeviceInfo {
    /// Window base.
    pub addr: u64,
    /// Window length.
    pub len: u64,
    /// GSI.
    pub irq: u32,
}

/// Builds the DSDT body (AML) describing `devices` and the `\_S5` sleep state.
pub fn dsdt_aml(devices: &[MmioDeviceInfo]) -> Vec<u8> {
    let mut aml = Vec::new();
    // Package {SLP_TYPa, SLP_TYPb}.
    let s5_a = S5_SLP_TYP;
    let s5_b = 0u8;
    Name::new(Path::new("_S5_"), &Package::new(vec![&s5_a, &s5_b])).to_aml_bytes(&mut aml);

    let names: Vec<String> = (0..devices.len()).map(|i| format!("VR{i:02X}")).collect();
    let hid = Name::new(Path::new("_HID"), &"LNRO0005");
    let uids: Vec<u32> = (0..devices.len() as u32).collect();
    let uid_names: Vec<Name> = uids
        .iter()
        .map(|u| Name::new(Path::new("_UID"), u))
        .collect();
    let mems: Vec<Memory32Fixed> = devices
        .iter()
        .map(|d| Memory32Fixed::new(true, d.addr as u32, d.len as u32))
        .collect();
    // Edge-triggered, active high: the irqfd injects edges.
    let irqs: Vec<Interrupt> = devices
        .iter()
        .map(|d| Interrupt::new(true, true, false, false, d.irq))
        .collect();
    let crs_templates: Vec<ResourceTemplate> = mems
        .iter()
        .zip(irqs.iter())
        .map(|(m, i)| ResourceTemplate::new(vec![m, i]))
        .collect();
    let crs: Vec<Name> = crs_templates
        .iter()
        .map(|t| Name::new(Path::new("_CRS"), t))
        .collect();
    let devs: Vec<Device> = (0..devices.len())
        .map(|i| Device::new(Path::new(&names[i]), vec![&hid, &uid_names[i], &crs[i]]))
        .collect();
    // COM1 as a PNP0501 device. Without it the serial port has no interrupt in a stock kernel:
    // on a hardware-reduced platform Linux has no legacy PIC, preallocates no ISA IRQs, and
    // the 8250 driver's hard-coded IRQ 4 is not routed to IOAPIC pin 4, so the kernel's own
    // (polled) printk output appears but every userspace write to the console stalls in the
    // tty buffer. Described here, 8250_pnp takes the port over with an IRQ that ACPI mapped.
    let com1_hid = Name::new(Path::new("_HID"), &EISAName::new("PNP0501"));
    let com1_uid = Name::new(Path::new("_UID"), &0u32);
    let com1_io = IO::new(SERIAL_PORT, SERIAL_PORT, 1, 8);
    let com1_irq = Interrupt::new(true, true, false, false, SERIAL_IRQ);
    let com1_res = ResourceTemplate::new(vec![&com1_io, &com1_irq]);
    let com1_crs = Name::new(Path::new("_CRS"), &com1_res);
    let com1 = Device::new(Path::new("COM1"), vec![&com1_hid, &com1_uid, &com1_crs]);
    let mut children: Vec<&dyn Aml> = vec![&com1];
    children.extend(devs.iter().map(|d| d as &dyn Aml));
    Scope::new(Path::new("\\_SB_"), children).to_aml_bytes(&mut aml);
    aml
}

fn align8(x: u64) -> u64 {
    (x + 7) & !7
}

/// Writes RSDP, XSDT, FADT, MADT and DSDT into the BIOS area; returns the RSDP address.
pub fn write_acpi_tables(
    mem: &GuestMemoryMmap,
    cpus: u8,
    devices: &[MmioDeviceInfo],
) -> Result<u64> {
    let rsdp_addr = ACPI_START;
    let mut next = align8(rsdp_addr + Rsdp::len() as u64);
    let mut place = |bytes: &[u8]| -> Result<u64> {
        let at = next;
        if at + bytes.len() as u64 > ACPI_END {
            return Err(Error::Io {
                what: "ACPI tables do not fit below 1 MiB".into(),
                source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
            });
        }
        mem.write_slice(bytes, GuestAddress(at))
            .map_err(Error::Memory)?;
        next = align8(at + bytes.len() as u64);
        Ok(at)
    };

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, *b"BOXDSDT ", 1);
    dsdt.append_slice(&dsdt_aml(devices));
    let dsdt_addr = place(dsdt.as_slice())?;

    let mut fadt = FADTBuilder::new(OEM_ID, *b"BOXFACP ", 1)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    fadt.sleep_control_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_SLEEP_CTL_PORT),
    );
    fadt.sleep_status_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_SLEEP_STS_PORT),
    );
    fadt.reset_reg = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_RESET_PORT),
    );
    fadt.reset_value = ACPI_RESET_VALUE;
    // IAPC_BOOT_ARCH: no VGA (bit 2), no MSI (bit 3), ASPM controls off (bit 4), no CMOS
    // RTC (bit 5). Without bit 5 Linux registers rtc_cmos, whose probe of the absent ports
    // 0x70/0x71 cost 3.5 s of a 10 s boot in the nested node; the wall clock comes from
    // kvm-clock.
    fadt.iapc_boot_arch = ((1u16 << 2) | (1 << 3) | (1 << 4) | (1 << 5)).into();
    let mut fadt_bytes = Vec::new();
    fadt.finalize().to_aml_bytes(&mut fadt_bytes);
    let fadt_addr = place(&fadt_bytes)?;

    let mut madt = MADT::new(
        OEM_ID,
        *b"BOXMADT ",
        1,
        LocalInterruptController::Address(APIC_ADDR),
    );
    for id in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
    let mut madt_bytes = Vec::new();
    madt.to_aml_bytes(&mut madt_bytes);
    let madt_addr = place(&madt_bytes)?;

    let mut xsdt = XSDT::new(OEM_ID, *b"BOXXSDT ", 1);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_addr = place(&xsdt_bytes)?;

    let mut rsdp_bytes = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp_bytes);
    mem.write_slice(&rsdp_bytes, GuestAddress(rsdp_addr))
        .map_err(Error::Memory)?;
    Ok(rsdp_addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checksum_ok(b: &[u8]) -> bool {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x)) == 0
    }

    fn read(mem: &GuestMemoryMmap, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    fn table(mem: &GuestMemoryMmap, at: u64) -> Vec<u8> {
        let hdr = read(mem, at, 8);
        let len = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
        read(mem, at, len)
    }

    #[test]
    fn tables_are_linked_and_checksummed() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let devs = [
            MmioDeviceInfo {
                addr: virtio_mmio_addr(0),
                len: VIRTIO_MMIO_SIZE,
                irq: virtio_irq(0),
            },
            MmioDeviceInfo {
                addr: virtio_mmio_addr(1),
                len: VIRTIO_MMIO_SIZE,
                irq: virtio_irq(1),
            },
        ];
        let rsdp_at = write_acpi_tables(&mem, 2, &devs).unwrap();
        let rsdp = read(&mem, rsdp_at, 36);
        assert_eq!(&rsdp[0..8], b"RSD PTR ");
        assert!(checksum_ok(&rsdp[0..20]));
        assert!(checksum_ok(&rsdp));
        let xsdt_at = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let xsdt = table(&mem, xsdt_at);
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries.len(), 2);
        let fadt = table(&mem, entries[0]);
        assert_eq!(&fadt[0..4], b"FACP");
        assert!(checksum_ok(&fadt));
        // FADT flags (offset 112): hardware-reduced.
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0);
        // SLEEP_CONTROL_REG (offset 244): system I/O at our port.
        assert_eq!(fadt[244], 1);
        assert_eq!(
            u64::from_le_bytes(fadt[248..256].try_into().unwrap()),
            u64::from(ACPI_SLEEP_CTL_PORT)
        );
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = table(&mem, x_dsdt);
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        let body = &dsdt[36..];
        let count = body.windows(8).filter(|w| w == b"LNRO0005").count();
        assert_eq!(count, 2);
        assert!(body.windows(4).any(|w| w == b"_S5_"));
        let madt = table(&mem, entries[1]);
        assert_eq!(&madt[0..4], b"APIC");
        assert!(checksum_ok(&madt));
        // Header 44 bytes, 2 local APICs (8 each) and one IOAPIC (12).
        assert_eq!(madt.len(), 44 + 16 + 12);
    }

    /// Writes the tables to $BOX_VMM_DUMP_ACPI (when set) for `iasl -d`.
    #[test]
    fn dump_tables_when_asked() {
        let Some(dir) = std::env::var_os("BOX_VMM_DUMP_ACPI") else {
            return;
        };
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let devs: Vec<MmioDeviceInfo> = (0..3)
            .map(|i| MmioDeviceInfo {
                addr: virtio_mmio_addr(i),
                len: VIRTIO_MMIO_SIZE,
                irq: virtio_irq(i),
            })
            .collect();
        let rsdp_at = write_acpi_tables(&mem, 2, &devs).unwrap();
        let rsdp = read(&mem, rsdp_at, 36);
        let xsdt_at = u64::from_le_bytes(rsdp[24..32].try_into().unwrap());
        let xsdt = table(&mem, xsdt_at);
        let fadt_at = u64::from_le_bytes(xsdt[36..44].try_into().unwrap());
        let madt_at = u64::from_le_bytes(xsdt[44..52].try_into().unwrap());
        let fadt = table(&mem, fadt_at);
        let dsdt_at = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dir = std::path::PathBuf::from(dir);
        for (name, at) in [
            ("dsdt", dsdt_at),
            ("facp", fadt_at),
            ("apic", madt_at),
            ("xsdt", xsdt_at),
        ] {
            std::fs::write(dir.join(format!("{name}.dat")), table(&mem, at)).unwrap();
        }
    }

    #[test]
    fn dsdt_describes_com1_with_its_irq() {
        let aml = dsdt_aml(&[]);
        // EISAName("PNP0501"): dword prefix 0x0c, compressed id 0x0105d041.
        assert!(aml.windows(5).any(|w| w == [0x0c, 0x41, 0xd0, 0x05, 0x01]));
        // IO descriptor: 0x47, decode16, min = max = 0x3f8, alignment 1, length 8.
        let io = [0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08];
        let pos = aml.windows(8).position(|w| w == io).unwrap();
        // Extended IRQ 4 right after it.
        assert_eq!(aml[pos + 8], 0x89);
        assert_eq!(&aml[pos + 13..pos + 17], &4u32.to_le_bytes());
    }

    #[test]
    fn dsdt_crs_carries_window_and_irq() {
        let aml = dsdt_aml(&[MmioDeviceInfo {
            addr: 0xd000_0000,
            len: 0x1000,
            irq: 5,
        }]);
        // Memory32Fixed: tag 0x86, length 9, rw, base, len.
        let pos = aml.windows(1).position(|w| w[0] == 0x86).unwrap();
        assert_eq!(&aml[pos + 4..pos + 8], &0xd000_0000u32.to_le_bytes());
        assert_eq!(&aml[pos + 8..pos + 12], &0x1000u32.to_le_bytes());
        // Extended IRQ descriptor follows with GSI 5.
        assert_eq!(aml[pos + 12], 0x89);
        assert_eq!(&aml[pos + 17..pos + 21], &5u32.to_le_bytes());
    }
}
