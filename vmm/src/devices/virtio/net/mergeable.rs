//! Receive with `VIRTIO_NET_F_MRG_RXBUF`: the driver posts small buffers (one descriptor of
//! about a page each, 256 of them in flight) instead of one 64 KiB chain per frame, and a
//! frame spans as many as it needs, their count in the header's `num_buffers`.
//!
//! Without it a Linux driver that takes TSO posts ~69 KiB "big packet" chains of 17 pages,
//! only ~13 fit in a 256-entry ring, and every small frame (each TCP ACK of a guest→host
//! stream) costs one of them and 17 page allocations to replace: that was the guest→host
//! direction's bottleneck.
//!
//! The size of the next frame is unknown until it is read, so the device takes every chain
//! the driver made available into `ready` and reads a frame only once the chains in hand can
//! hold the largest one ([`MAX_FRAME`]); until then the TAP's queue holds the frames.

use std::collections::VecDeque;
use std::os::fd::BorrowedFd;

use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::iov::{self, host_iovec};
use super::{MAX_FRAME, VNET_HDR_LEN};

/// `num_buffers` sits at bytes 10..12 of the vnet header.
const NUM_BUFFERS_AT: usize = 10;
/// readv(2) takes at most this many iovecs (IOV_MAX).
const IOV_MAX: usize = 1024;

/// One posted chain: its head and its device-writable buffers in the guest.
struct RxChain {
    head: u16,
    segs: Vec<(u64, usize)>,
    cap: usize,
}

/// What one [`MergeableRx::deliver`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Used entries were added (the driver may want an interrupt).
    pub used: bool,
    pub frames: u64,
    pub dropped: u64,
    /// The guest's buffers in hand cannot hold the largest frame: wait for more.
    pub short: bool,
}

/// The chains taken from the rx queue and not filled yet.
#[derive(Default)]
pub struct MergeableRx {
    ready: VecDeque<RxChain>,
    cap: usize,
}

impl MergeableRx {
    /// Forgets the chains in hand (device reset: the driver forgets them too).
    pub fn clear(&mut self) {
        self.ready.clear();
        self.cap = 0;
    }

    /// Takes every chain the driver made available. A chain with a device-readable
    /// descriptor or one outside guest memory is returned at once with nothing written.
    fn take_available(&mut self, q: &mut Queue, mem: &GuestMemoryMmap) -> bool {
        let mut used = false;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut segs = Vec::with_capacity(1);
            let mut cap = 0;
            let mut ok = true;
            for d in chain {
                let len = d.len() as usize;
                if !d.is_write_only() || mem.get_slice(d.addr(), len).is_err() {
                    ok = false;
                    break;
                }
                segs.push((d.addr().0, len));
                cap += len;
            }
            if ok && cap > 0 {
                self.cap += cap;
                self.ready.push_back(RxChain { head, segs, cap });
            } else {
                if let Err(e) = q.add_used(mem, head, 0) {
                    tracing::warn!("virtio-net: cannot return a bad rx chain: {e}");
                }
                used = true;
            }
        }
        used
    }

    /// Moves up to `budget` frames from `tap` into the guest.
    pub fn deliver(
        &mut self,
        tap: BorrowedFd<'_>,
        q: &mut Queue,
        mem: &GuestMemoryMmap,
        budget: usize,
    ) -> Delivered {
        let mut out = Delivered {
            used: self.take_available(q, mem),
            ..Default::default()
        };
        for _ in 0..budget {
            if self.cap < MAX_FRAME {
                out.used |= self.take_available(q, mem);
                if self.cap < MAX_FRAME {
                    out.short = true;
                    return out;
                }
            }
            let (iov, chains) = self.iovecs(mem);
            // SAFETY: every iovec comes from `host_iovec` over `mem`, mapped for the VM's life.
            let n = match unsafe { iov::readv(tap, &iov) } {
                Ok(n) => n,
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => return out,
                Err(e) => {
                    tracing::warn!("virtio-net: reading the TAP: {e}");
                    return out;
                }
            };
            let fits = n >= VNET_HDR_LEN && n <= self.front_cap(chains);
            // tun reports a frame's full length even when it had to cut it: such a frame is
            // dropped, every chain it touched returned empty.
            let mut left = if fits { n } else { 0 };
            let mut k = 0u16;
            while left > 0 || (!fits && usize::from(k) < chains) {
                let Some(c) = self.ready.pop_front() else {
                    break;
                };
                self.cap -= c.cap;
                let len = left.min(c.cap);
                left -= len;
                if k == 0 && fits {
                    let count = self.count_chains(n, c.cap);
                    // Cannot fail: the chain's buffers were checked when it was taken.
                    let _ = iov::write_at(mem, &c.segs, NUM_BUFFERS_AT, &count.to_le_bytes());
                }
                if let Err(e) = q.add_used(mem, c.head, len as u32) {
                    tracing::warn!("virtio-net: cannot complete an rx buffer: {e}");
                }
                k += 1;
            }
            out.used = true;
            if fits {
                out.frames += 1;
            } else {
                out.dropped += 1;
            }
        }
        out
    }

    /// How many chains a frame of `n` bytes fills, the first holding `first` bytes.
    fn count_chains(&self, n: usize, first: usize) -> u16 {
        let mut left = n.saturating_sub(first);
        let mut count = 1u16;
        for c in &self.ready {
            if left == 0 {
                break;
            }
            left = left.saturating_sub(c.cap);
            count += 1;
        }
        count
    }

    /// Bytes the first `chains` chains hold.
    fn front_cap(&self, chains: usize) -> usize {
        self.ready.iter().take(chains).map(|c| c.cap).sum()
    }

    /// iovecs over the front chains until they hold [`MAX_FRAME`] (or IOV_MAX is reached),
    /// and how many chains they cover.
    fn iovecs(&self, mem: &GuestMemoryMmap) -> (Vec<libc::iovec>, usize) {
        let mut iov = Vec::new();
        let mut cap = 0;
        let mut chains = 0;
        'chains: for c in &self.ready {
            // A chain goes in whole or not at all (it has at most a queue's worth of
            // descriptors, fewer than IOV_MAX, so the first always goes in).
            let start = iov.len();
            for &(addr, len) in &c.segs {
                // Checked when the chain was taken; guest memory does not change shape.
                let v = host_iovec(mem, GuestAddress(addr), len, true);
                match v.filter(|_| iov.len() < IOV_MAX) {
                    Some(v) => iov.push(v),
                    None => {
                        iov.truncate(start);
                        break 'chains;
                    }
                }
            }
            chains += 1;
            cap += c.cap;
            if cap >= MAX_FRAME {
                break;
            }
        }
        (iov, chains)
    }
}
