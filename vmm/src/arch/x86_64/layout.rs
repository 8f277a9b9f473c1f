//! Guest physical memory map and I/O port assignments.
//!
//! ```text
//! 0x0000_0500  boot GDT            0x0000_0520  boot IDT (empty)
//! 0x0000_7000  zero page           0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4, PDPT, 4 PDs   (identity map of the first 4 GiB, 2 MiB pages)
//! 0x0002_0000  kernel command line
//! 0x0009_fc00  EBDA ... 0x000f_ffff legacy hole; ACPI tables at 0x000e_0000
//! 0x0010_0000  kernel (HIMEM), then RAM up to the 32-bit MMIO gap
//! 0xc000_0000  32-bit MMIO gap: virtio-mmio at 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB when the VM has more than 3 GiB
//! ```

/// Boot GDT address.
pub const BOOT_GDT_START: u64 = 0x500;
/// Boot IDT address (limit 0: no handlers before the kernel installs its own).
pub const BOOT_IDT_START: u64 = 0x520;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page-map level 4 table.
pub const PML4_START: u64 = 0x9000;
/// Page-directory-pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Four page directories (4 x 512 x 2 MiB pages): the identity map covers 4 GiB
/// so code running on the boot page tables can reach the MMIO gap.
pub const PDE_START: u64 = 0xb000;
/// Number of page directories after [`PDE_START`].
pub const PDE_COUNT: u64 = 4;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// x86 Linux COMMAND_LINE_SIZE.
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area: RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live in the BIOS area where the kernel also scans for the RSDP.
pub const ACPI_START: u64 = 0xe0000;
/// End of the ACPI area (exclusive).
pub const ACPI_END: u64 = 0x100000;
/// Where the kernel is loaded (1 MiB).
pub const HIMEM_START: u64 = 0x100000;
/// Start of the 32-bit MMIO hole.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the 32-bit MMIO hole (4 GiB).
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio window.
pub const VIRTIO_MMIO_BASE: u64 = 0xd000_0000;
/// Size of one virtio-mmio window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// IOAPIC MMIO base (KVM's in-kernel IOAPIC).
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Local APIC MMIO base.
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// KVM needs three pages for the TSS, placed just under the BIOS area at the top of 4 GiB.
pub const KVM_TSS_ADDR: usize = 0xfffb_d000;
/// IOAPIC pins.
pub const IOAPIC_PINS: u32 = 24;

/// COM1.
pub const SERIAL_PORT: u16 = 0x3f8;
/// COM1 interrupt (ISA IRQ 4, same GSI).
pub const SERIAL_IRQ: u32 = 4;
/// i8042 data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// i8042 command port: writing 0xfe pulses the CPU reset line.
pub const I8042_CMD_PORT: u16 = 0x64;
/// ACPI hardware-reduced sleep control register (FADT SLEEP_CONTROL_REG).
pub const ACPI_SLEEP_CTL_PORT: u16 = 0x600;
/// ACPI sleep status register (FADT SLEEP_STATUS_REG).
pub const ACPI_SLEEP_STS_PORT: u16 = 0x601;
/// ACPI reset register (FADT RESET_REG).
pub const ACPI_RESET_PORT: u16 = 0x602;
/// Value the guest writes to [`ACPI_RESET_PORT`] to reset.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// Boot timer port: the guest writes any byte when it reaches a milestone.
pub const BOOT_TIMER_PORT: u16 = 0x440;
/// First GSI handed to virtio devices (after the legacy ISA ones we use).
pub const VIRTIO_IRQ_BASE: u32 = 5;
/// How many virtio-mmio devices fit in the IOAPIC's remaining pins.
pub const MAX_VIRTIO_DEVICES: usize = (IOAPIC_PINS - VIRTIO_IRQ_BASE) as usize;

/// MMIO base of the `index`-th virtio device.
pub fn virtio_mmio_addr(index: usize) -> u64 {
    VIRTIO_MMIO_BASE + index as u64 * VIRTIO_MMIO_SIZE
}

/// GSI of the `index`-th virtio device.
pub fn virtio_irq(index: usize) -> u32 {
    VIRTIO_IRQ_BASE + index as u32
}

/// Guest RAM ranges `(start, len)` for a VM of `mem_bytes`, skipping the MMIO gap.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (0, MMIO_GAP_START));
        assert_eq!(r[1], (MMIO_GAP_END, (4 << 30) - MMIO_GAP_START));
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), 4 << 30);
    }

    #[test]
    fn device_windows_fit_in_the_gap() {
        let last = virtio_mmio_addr(MAX_VIRTIO_DEVICES - 1) + VIRTIO_MMIO_SIZE;
        assert!(last < u64::from(IOAPIC_ADDR));
        assert_eq!(virtio_irq(MAX_VIRTIO_DEVICES - 1), IOAPIC_PINS - 1);
    }
}
