//! Linux 64-bit direct boot: kernel and initramfs placement, command line and the
//! zero page (`boot_params`) with its e820 map.

use std::fs::File;
use std::path::Path;

use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::cmdline::Cmdline;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::layout::*;
use crate::error::{ConfigError, Error, Result};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// The 64-bit entry point of a bzImage's protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// A kernel loaded into guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Where vCPU 0 starts.
    pub entry: u64,
    /// First byte after the kernel image.
    pub end: u64,
    /// The bzImage setup header, which the zero page must carry.
    pub setup_header: Option<linux_loader::bootparam::setup_header>,
}

/// Loads an ELF vmlinux, or failing that a bzImage, at 1 MiB and up.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel> {
    let mut f = File::open(path).map_err(|_| ConfigError::MissingKernel(path.to_path_buf()))?;
    let elf = Elf::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START)));
    let (res, entry): (KernelLoaderResult, u64) = match elf {
        Ok(r) => (r, r.kernel_load.raw_value()),
        Err(linux_loader::loader::Error::Elf(
            linux_loader::loader::elf::Error::InvalidElfMagicNumber,
        )) => {
            let r = BzImage::load(mem, None, &mut f, Some(GuestAddress(HIMEM_START))).map_err(
                |source| ConfigError::BadKernel {
                    path: path.to_path_buf(),
                    source,
                },
            )?;
            (r, r.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET)
        }
        Err(source) => {
            return Err(ConfigError::BadKernel {
                path: path.to_path_buf(),
                source,
            }
            .into())
        }
    };
    Ok(LoadedKernel {
        entry,
        end: res.kernel_load.raw_value() + res.kernel_end,
        setup_header: res.setup_header,
    })
}

/// Highest page-aligned address where `size` bytes fit below `limit` and above `floor`.
pub fn initrd_addr(mem_bytes: u64, size: u64, floor: u64, limit: u64) -> Option<u64> {
    let low_end = mem_bytes.min(MMIO_GAP_START).min(limit);
    let start = low_end.checked_sub(size)? & !0xfff;
    (start >= floor).then_some(start)
}

/// Loads the initramfs at the top of low memory; returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    mem_bytes: u64,
    kernel_end: u64,
    addr_max: u64,
) -> Result<(u64, u64)> {
    let mut f = File::open(path).map_err(|_| ConfigError::MissingInitrd(path.to_path_buf()))?;
    let size = f
        .metadata()
        .map_err(Error::io(format!("stat {}", path.display())))?
        .len();
    let at = initrd_addr(mem_bytes, size, kernel_end.max(HIMEM_START), addr_max).ok_or(
        ConfigError::InitrdTooBig {
            path: path.to_path_buf(),
            size,
            limit: mem_bytes.min(MMIO_GAP_START).min(addr_max),
        },
    )?;
    mem.read_exact_volatile_from(GuestAddress(at), &mut f, size as usize)
        .map_err(Error::Memory)?;
    Ok((at, size))
}

/// The e820 map for a VM of `mem_bytes`.
pub fn e820_map(mem_bytes: u64) -> Vec<boot_e820_entry> {
    let mut map = vec![
        boot_e820_entry {
            addr: 0,
            size: EBDA_START,
            r#type: E820_RAM,
        },
        boot_e820_entry {
            addr: ACPI_START,
            size: ACPI_END - ACPI_START,
            r#type: E820_RESERVED,
        },
    ];
    let low_end = mem_bytes.min(MMIO_GAP_START);
    map.push(boot_e820_entry {
        addr: HIMEM_START,
        size: low_end - HIMEM_START,
        r#type: E820_RAM,
    });
    if mem_bytes > MMIO_GAP_START {
        map.push(boot_e820_entry {
            addr: MMIO_GAP_END,
            size: mem_bytes - MMIO_GAP_START,
            r#type: E820_RAM,
        });
    }
    map
}

/// Writes the command line and the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel: &LoadedKernel,
    cmdline: &Cmdline,
    initrd: Option<(u64, u64)>,
    rsdp: Option<u64>,
) -> Result<()> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(Error::KernelLoad)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| ConfigError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();

    let mut params = boot_params::default();
    if let Some(h) = kernel.setup_header {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        params.hdr.header = KERNEL_HDR_MAGIC;
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    if let Some(r) = rsdp {
        params.acpi_rsdp_addr = r;
    }
    let map = e820_map(mem_bytes);
    for (i, e) in map.iter().enumerate() {
        params.e820_table[i] = *e;
    }
    params.e820_entries = map.len() as u8;

    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(Error::BootParams)
}

/// The initrd address limit the kernel header declares (0x37ffffff for old kernels).
pub fn initrd_addr_max(kernel: &LoadedKernel) -> u64 {
    match kernel.setup_header {
        Some(h) if h.initrd_addr_max != 0 => u64::from(h.initrd_addr_max) + 1,
        Some(_) => 0x3800_0000,
        // ELF vmlinux: 64-bit kernels accept initrds anywhere in low memory.
        None => MMIO_GAP_START,
    }
}

/// Whether `addr` lies in guest RAM: used to sanity check placements in tests.
pub fn in_ram(mem: &GuestMemoryMmap, addr: u64) -> bool {
    mem.address_in_range(GuestAddress(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_covers_ram_and_reserves_acpi() {
        let m = e820_map(256 << 20);
        assert_eq!(m.len(), 3);
        assert_eq!({ m[2].addr } + { m[2].size }, 256 << 20);
        assert_eq!({ m[1].r#type }, E820_RESERVED);
        let big = e820_map(6 << 30);
        assert_eq!(big.len(), 4);
        let ram: u64 = big
            .iter()
            .filter(|e| e.r#type == E820_RAM)
            .map(|e| e.size)
            .sum();
        // Everything but the 1 MiB legacy area below HIMEM_START minus the low RAM part.
        assert_eq!(ram, (6 << 30) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn initrd_goes_high_and_aligned() {
        let a = initrd_addr(256 << 20, 10_000, 0x200_0000, u64::MAX).unwrap();
        assert_eq!(a & 0xfff, 0);
        assert!(a + 10_000 <= 256 << 20);
        assert!(initrd_addr(256 << 20, 300 << 20, 0x200_0000, u64::MAX).is_none());
        assert!(initrd_addr(64 << 20, 60 << 20, 0x200_0000, u64::MAX).is_none());
    }

    #[test]
    fn zero_page_written() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).unwrap();
        cl.insert_str("console=ttyS0").unwrap();
        let k = LoadedKernel {
            entry: 0x100_0000,
            end: 0x200_0000,
            setup_header: None,
        };
        write_boot_params(
            &mem,
            64 << 20,
            &k,
            &cl,
            Some((0x300_0000, 4096)),
            Some(ACPI_START),
        )
        .unwrap();
        let p: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.cmdline_size }, 13);
        assert_eq!({ p.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ p.acpi_rsdp_addr }, ACPI_START);
        assert_eq!(p.e820_entries, 3);
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
    }

    #[test]
    fn garbage_kernel_is_a_config_error() {
        let p = std::env::temp_dir().join(format!("box-vmm-badkernel-{}", std::process::id()));
        std::fs::write(&p, vec![0x55u8; 8192]).unwrap();
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let e = load_kernel(&mem, &p).unwrap_err();
        assert!(
            matches!(e, Error::Config(ConfigError::BadKernel { .. })),
            "{e}"
        );
    }
}
