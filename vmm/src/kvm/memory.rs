//! Guest RAM: anonymous mappings, one per range of the layout.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::layout::ram_ranges;
use crate::error::{Error, Result};

/// Allocates guest RAM for `mem_bytes`, split around the 32-bit MMIO gap.
pub fn create_guest_memory(mem_bytes: u64) -> Result<GuestMemoryMmap> {
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(mem_bytes)
        .into_iter()
        .map(|(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&ranges).map_err(Error::MemoryRegion)
}
