//! A descriptor chain's guest buffers as host iovecs, so a frame moves between the TAP and
//! guest memory in one `readv`/`writev` with no copy through a bounce buffer (as Firecracker
//! and qemu do it). Under nested TCG every copied byte is emulated: the bounce copy was the
//! device's largest cost per frame.
//!
//! Only plain chains take this path: every descriptor of the one direction, each inside one
//! guest memory region, at most [`MAX_SEGS`] of them. Anything else goes through the copying
//! path, which judges odd chains itself, so a hostile chain costs the same as before.

use std::os::fd::{AsRawFd, BorrowedFd};

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

/// More descriptors than a Linux driver uses for one frame (a big rx buffer is 1 + 17).
pub const MAX_SEGS: usize = 64;

/// The buffers of one chain: host iovecs and, beside them, where each lies in the guest.
pub struct Segments {
    iov: [libc::iovec; MAX_SEGS],
    guest: [(u64, usize); MAX_SEGS],
    n: usize,
    total: usize,
}

impl Segments {
    /// Bytes the chain can hold (rx) or holds (tx).
    pub fn total(&self) -> usize {
        self.total
    }

    /// Reads one frame from `fd` into the buffers.
    pub fn readv(&self, fd: BorrowedFd<'_>) -> nix::Result<usize> {
        // SAFETY: the iovecs come from `host_iovec` over the memory `segments` borrowed,
        // which stays mapped for the VM's life.
        unsafe { readv(fd, &self.iov[..self.n]) }
    }

    /// Writes the buffers to `fd` as one frame.
    pub fn writev(&self, fd: BorrowedFd<'_>) -> nix::Result<usize> {
        // SAFETY: as in `readv`.
        unsafe { writev(fd, &self.iov[..self.n]) }
    }

    /// Writes `bytes` at offset `at` of the chain's buffers (which may split them).
    pub fn write_at(&self, mem: &GuestMemoryMmap, at: usize, bytes: &[u8]) -> bool {
        write_at(mem, &self.guest[..self.n], at, bytes)
    }
}

/// The host iovec over `len` bytes of guest memory at `addr`, if they lie in one region.
pub fn host_iovec(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    len: usize,
    writable: bool,
) -> Option<libc::iovec> {
    let slice = mem.get_slice(addr, len).ok()?;
    let ptr = if writable {
        slice.ptr_guard_mut().as_ptr()
    } else {
        slice.ptr_guard().as_ptr().cast_mut()
    };
    Some(libc::iovec {
        iov_base: ptr.cast(),
        iov_len: len,
    })
}

/// Reads one frame from `fd` into `iov`.
///
/// # Safety
/// Every iovec must come from [`host_iovec`] (writable) over guest memory that stays mapped
/// for the call. The guest may touch those bytes meanwhile, as it may with any device's DMA.
pub unsafe fn readv(fd: BorrowedFd<'_>, iov: &[libc::iovec]) -> nix::Result<usize> {
    // SAFETY: the caller vouches for every iovec; the count is the slice's.
    let r = unsafe { libc::readv(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
    nix::errno::Errno::result(r).map(|n| n as usize)
}

/// Writes `iov` to `fd` as one frame.
///
/// # Safety
/// As for [`readv`]; the kernel only reads the bytes.
pub unsafe fn writev(fd: BorrowedFd<'_>, iov: &[libc::iovec]) -> nix::Result<usize> {
    // SAFETY: the caller vouches for every iovec; the count is the slice's.
    let r = unsafe { libc::writev(fd.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
    nix::errno::Errno::result(r).map(|n| n as usize)
}

/// Writes `bytes` at offset `at` of the guest buffers `segs` (address, length): a driver may
/// split a header anywhere. False when a byte did not land.
pub fn write_at(mem: &GuestMemoryMmap, segs: &[(u64, usize)], at: usize, bytes: &[u8]) -> bool {
    for (k, b) in bytes.iter().enumerate() {
        let mut off = at + k;
        let mut done = false;
        for &(addr, len) in segs {
            if off < len {
                done = mem.write_obj(*b, GuestAddress(addr + off as u64)).is_ok();
                break;
            }
            off -= len;
        }
        if !done {
            return false;
        }
    }
    true
}

/// The chain's buffers if it is plain (see the module docs): all device-writable when
/// `writable`, else all device-readable.
pub fn segments(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    writable: bool,
) -> Option<Segments> {
    let mut s = Segments {
        iov: [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_SEGS],
        guest: [(0, 0); MAX_SEGS],
        n: 0,
        total: 0,
    };
    for d in chain {
        if d.is_write_only() != writable || s.n == MAX_SEGS {
            return None;
        }
        let len = d.len() as usize;
        s.iov[s.n] = host_iovec(mem, d.addr(), len, writable)?;
        s.guest[s.n] = (d.addr().0, len);
        s.n += 1;
        s.total += len;
    }
    Some(s)
}
