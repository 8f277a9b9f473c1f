//! virtio devices and their MMIO transport.
//!
//! Devices don't know their transport: they see queues and guest memory through
//! [`VirtioDevice`], and the [`mmio_transport::MmioTransport`] owns the register
//! state machine, the irqfd and the per-queue ioeventfds.

pub mod block;
pub mod mmio_transport;
pub mod net;
#[cfg(test)]
pub mod testutil;
pub mod vsock;

use std::os::unix::io::RawFd;

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::EventSet;

use crate::event_loop::EventOps;

/// VIRTIO_F_VERSION_1: modern (non-legacy) device, mandatory for MMIO version 2.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// virtio device id (2 block, 19 vsock).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the queue count.
    fn queue_max_sizes(&self) -> &[u16];
    /// Offered feature bits (VERSION_1 is added by the transport).
    fn features(&self) -> u64;
    /// Reads device config space; bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes device config space (most devices ignore it).
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// The driver set DRIVER_OK with these acked features.
    fn activate(&mut self, _acked: u64, _ops: Option<&mut EventOps>) {}
    /// The driver reset the device.
    fn reset(&mut self) {}
    /// Queue `idx` was notified. Returns true when used buffers were added.
    fn process_queue(&mut self, idx: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool;
    /// Host fds to watch from the start (sockets), beyond the queue eventfds.
    fn host_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
    /// One of the device's host fds is ready. Returns true when used buffers were added.
    fn host_event(
        &mut self,
        _fd: RawFd,
        _events: EventSet,
        _queues: &mut [Queue],
        _mem: &GuestMemoryMmap,
        _ops: &mut EventOps,
    ) -> bool {
        false
    }
    /// The device as a disk slot that can take and give back a disk while the VM runs.
    fn disk_slot(&mut self) -> Option<&mut block::Block> {
        None
    }
}

/// Copies `src` (a device config struct as bytes) into `data` at `offset`,
/// zero-filling whatever lies outside it.
pub fn read_config_bytes(src: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(off) = usize::try_from(offset) else {
        return;
    };
    if off >= src.len() {
        return;
    }
    let n = data.len().min(src.len() - off);
    data[..n].copy_from_slice(&src[off..off + n]);
}
