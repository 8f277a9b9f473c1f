//! Lays out split virtqueues in guest memory by hand, so tests can build any
//! descriptor chain a malicious driver could, loops and bad addresses included.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// VRING_DESC_F_NEXT.
pub const NEXT: u16 = 1;
/// VRING_DESC_F_WRITE.
pub const WRITE: u16 = 2;

/// A split queue at fixed guest addresses.
pub struct TestQueue {
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
    /// Queue size.
    pub size: u16,
}

impl TestQueue {
    /// A queue whose tables start at `base`.
    pub fn new(mem: &GuestMemoryMmap, base: u64, size: u16) -> Self {
        let q = TestQueue {
            desc: base,
            avail: base + 16 * u64::from(size),
            used: (base + 16 * u64::from(size) + 6 + 2 * u64::from(size) + 3) & !3,
            size,
        };
        mem.write_obj(0u16, GuestAddress(q.avail)).unwrap();
        mem.write_obj(0u16, GuestAddress(q.avail + 2)).unwrap();
        mem.write_obj(0u16, GuestAddress(q.used + 2)).unwrap();
        q
    }

    /// Writes descriptor `i`.
    pub fn set_desc(
        &self,
        mem: &GuestMemoryMmap,
        i: u16,
        addr: u64,
        len: u32,
        flags: u16,
        next: u16,
    ) {
        let at = self.desc + 16 * u64::from(i);
        mem.write_obj(addr, GuestAddress(at)).unwrap();
        mem.write_obj(len, GuestAddress(at + 8)).unwrap();
        mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
        mem.write_obj(next, GuestAddress(at + 14)).unwrap();
    }

    /// Writes a chain of `(addr, len, writable)` starting at descriptor `first`.
    pub fn chain(&self, mem: &GuestMemoryMmap, first: u16, descs: &[(u64, u32, bool)]) {
        for (k, &(addr, len, w)) in descs.iter().enumerate() {
            let i = first + k as u16;
            let mut flags = if w { WRITE } else { 0 };
            if k + 1 < descs.len() {
                flags |= NEXT;
            }
            self.set_desc(mem, i, addr, len, flags, i + 1);
        }
    }

    /// Makes descriptor `head` available.
    pub fn publish(&self, mem: &GuestMemoryMmap, head: u16) {
        let idx: u16 = mem.read_obj(GuestAddress(self.avail + 2)).unwrap();
        let slot = u64::from(idx % self.size);
        mem.write_obj(head, GuestAddress(self.avail + 4 + 2 * slot))
            .unwrap();
        mem.write_obj(idx.wrapping_add(1), GuestAddress(self.avail + 2))
            .unwrap();
    }

    /// Number of used entries the device produced.
    pub fn used_idx(&self, mem: &GuestMemoryMmap) -> u16 {
        mem.read_obj(GuestAddress(self.used + 2)).unwrap()
    }

    /// Used entry `i`: (descriptor head, bytes written).
    pub fn used_elem(&self, mem: &GuestMemoryMmap, i: u16) -> (u32, u32) {
        let at = self.used + 4 + 8 * u64::from(i % self.size);
        (
            mem.read_obj(GuestAddress(at)).unwrap(),
            mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    /// A ready `Queue` pointing at these tables.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_desc_table_address(Some(self.desc as u32), Some((self.desc >> 32) as u32));
        q.set_avail_ring_address(Some(self.avail as u32), Some((self.avail >> 32) as u32));
        q.set_used_ring_address(Some(self.used as u32), Some((self.used >> 32) as u32));
        q.set_ready(true);
        q
    }
}

/// 16 MiB of guest memory at 0.
pub fn test_mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}
