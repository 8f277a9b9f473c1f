//! Guest RAM: one anonymous mapping per range of the layout, each starting on a 2 MiB
//! boundary and advised for transparent huge pages.
//!
//! KVM maps guest memory with a 2 MiB page only where the host backs it with a huge page
//! *and* guest-physical and host-virtual addresses agree modulo 2 MiB. `mmap` gives no such
//! alignment (only page alignment), so a plain mapping costs a page-fault exit per 4 KiB the
//! guest touches: measured in the nested node, 17k-29k extra exits per boot, ~84% of all
//! exits. vm-memory's builder cannot ask for an aligned address, so the mapping is made here
//! (over-reserve, trim to the boundary) and handed to vm-memory as a raw region; this module
//! owns it and unmaps it on drop.

use std::ptr::NonNull;

use vm_memory::mmap::MmapRegion;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::x86_64::layout::ram_ranges;
use crate::error::{Error, Result};

/// The huge page size KVM can map guest memory with on x86-64 (besides 1 GiB).
pub const HUGE_PAGE: usize = 2 << 20;

const PROT: i32 = libc::PROT_READ | libc::PROT_WRITE;
const FLAGS: i32 = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;

/// One anonymous mapping this module made, unmapped on drop.
#[derive(Debug)]
struct Mapping {
    addr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory with no thread affinity; the pointer is only unmapped
// in Drop, when no reference to the memory remains (see `GuestRam`).
unsafe impl Send for Mapping {}
// SAFETY: as above; shared access goes through vm-memory's volatile accessors.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// `len` bytes (a multiple of the page size) starting on a [`HUGE_PAGE`] boundary.
    fn new_aligned(len: usize) -> Result<Mapping> {
        let map_err = |what: &str| Error::Io {
            what: format!("{what} for {} MiB of guest RAM", len >> 20),
            source: std::io::Error::last_os_error(),
        };
        let reserve = len
            .checked_add(HUGE_PAGE)
            .ok_or_else(|| Error::MemoryRegion(format!("{len} bytes of guest RAM overflow")))?;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks; nothing else
        // refers to it yet.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), reserve, PROT, FLAGS, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(map_err("mmap"));
        }
        let base = base as usize;
        let start = base.next_multiple_of(HUGE_PAGE);
        let head = start - base;
        let tail = reserve - head - len;
        // SAFETY: both ranges lie inside the reservation just made and outside the part kept.
        unsafe {
            if head > 0 && libc::munmap(base as *mut libc::c_void, head) != 0 {
                return Err(map_err("munmap (head)"));
            }
            if tail > 0 && libc::munmap((start + len) as *mut libc::c_void, tail) != 0 {
                return Err(map_err("munmap (tail)"));
            }
        }
        // SAFETY: advice on a range this function mapped; it changes no contents.
        if unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_HUGEPAGE) } != 0 {
            // A host with THP compiled out still runs guests, with 4 KiB pages.
            tracing::warn!(
                "madvise(MADV_HUGEPAGE) on guest RAM: {}: the guest runs on 4 KiB pages",
                std::io::Error::last_os_error()
            );
        }
        Ok(Mapping {
            addr: NonNull::new(start as *mut u8).expect("mmap never returns address 0 here"),
            len,
        })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: this is the mapping made in `new_aligned`; `GuestRam` drops it only after
        // its `GuestMemoryMmap` (see there).
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}

/// Guest RAM and the mappings behind it.
///
/// Whoever holds a clone of [`GuestRam::memory`] must be gone (vCPU threads joined, devices
/// dropped) before this is dropped: the machine keeps it until the end of its run, and
/// forgets it where a vCPU thread could not be stopped.
#[derive(Debug)]
pub struct GuestRam {
    // Field order is drop order: the regions before the memory they point into.
    mem: GuestMemoryMmap,
    _maps: Vec<Mapping>,
}

/// Where one region landed, for the start-up report and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionLayout {
    pub guest: u64,
    pub host: u64,
    pub len: u64,
}

impl RegionLayout {
    /// Whether KVM can map this region with 2 MiB pages: guest and host addresses agree
    /// modulo 2 MiB.
    pub fn huge_page_capable(&self) -> bool {
        let m = HUGE_PAGE as u64;
        self.guest % m == self.host % m
    }
}

impl GuestRam {
    /// Allocates guest RAM for `mem_bytes`, split around the 32-bit MMIO gap.
    pub fn new(mem_bytes: u64) -> Result<GuestRam> {
        let mut maps = Vec::new();
        let mut regions = Vec::new();
        for (start, len) in ram_ranges(mem_bytes) {
            let len = usize::try_from(len)
                .map_err(|_| Error::MemoryRegion(format!("{len} bytes do not fit this host")))?;
            let map = Mapping::new_aligned(len)?;
            // SAFETY: `map` is a live mapping of exactly `len` bytes made with PROT and
            // FLAGS; it is kept in `maps` for as long as the region (see the field order).
            let raw = unsafe { MmapRegion::build_raw(map.addr.as_ptr(), len, PROT, FLAGS) }
                .map_err(|e| Error::MemoryRegion(e.to_string()))?;
            let region = GuestRegionMmap::new(raw, GuestAddress(start)).ok_or_else(|| {
                Error::MemoryRegion(format!("region at {start:#x} overflows the address space"))
            })?;
            regions.push(region);
            maps.push(map);
        }
        let mem = GuestMemoryMmap::from_regions(regions)
            .map_err(|e| Error::MemoryRegion(e.to_string()))?;
        Ok(GuestRam { mem, _maps: maps })
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    /// Guest and host address of every region.
    pub fn layout(&self) -> Vec<RegionLayout> {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
        self.mem
            .iter()
            .map(|r| RegionLayout {
                guest: r.start_addr().0,
                host: self
                    .mem
                    .get_host_address(r.start_addr())
                    .map_or(0, |p| p as u64),
                len: r.len(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn every_region_can_take_huge_pages() {
        for mib in [32u64, 256, 4096] {
            let ram = GuestRam::new(mib << 20).unwrap();
            let layout = ram.layout();
            assert_eq!(layout.len(), ram_ranges(mib << 20).len());
            for r in layout {
                assert_eq!(r.host % HUGE_PAGE as u64, 0, "{mib} MiB: {r:x?}");
                assert!(r.huge_page_capable(), "{mib} MiB: {r:x?}");
            }
        }
    }

    #[test]
    fn regions_are_advised_for_huge_pages() {
        let ram = GuestRam::new(64 << 20).unwrap();
        let host = ram.layout()[0].host;
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        // The mapping's block starts with its address range and ends with its VmFlags.
        let header = format!("{host:x}-");
        let flags = smaps
            .lines()
            .skip_while(|l| !l.starts_with(&header))
            .find(|l| l.starts_with("VmFlags:"))
            .unwrap_or_else(|| panic!("no mapping at {header} in /proc/self/smaps"));
        assert!(flags.split_whitespace().any(|f| f == "hg"), "{flags}");
    }

    #[test]
    fn memory_is_usable_and_bounded() {
        let ram = GuestRam::new(8 << 20).unwrap();
        let mem = ram.memory();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert!(mem.get_host_address(GuestAddress(8 << 20)).is_err());
    }
}
