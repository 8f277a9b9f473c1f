//! virtio-net on a TAP device, as Firecracker and cloud-hypervisor do it.
//!
//! Frames cross verbatim: the TAP is opened with `IFF_VNET_HDR` and a 12-byte vnet header
//! (`virtio_net_hdr_v1`), which is exactly what a VERSION_1 driver puts in front of each
//! frame, so neither direction rewrites the header. With a TAP that accepts offloads the
//! device offers checksum offload and TSO both ways (the host kernel segments or checksums
//! what the guest hands over, and may hand the guest up to 64 KiB segments). Mergeable rx
//! buffers are offered (`mergeable`): a frame spans as many small guest buffers as it needs;
//! a driver that declines them posts one big chain per frame instead.
//!
//! Every guest value is untrusted: a chain too long, too short or unreadable costs that
//! frame, never the device. Frames move between the TAP and guest memory with one
//! `readv`/`writev` per frame (`iov`), no bounce copy. Neither direction can make the device
//! thread spin: rx reads a frame only with a guest buffer in hand, stops watching the TAP
//! while the guest has none posted (frames wait in the TAP's queue) and resumes on the rx
//! queue's notification; tx handles a bounded number of
//! frames per round and schedules the rest on its own eventfd; a full TAP drops frames as a
//! full NIC queue would.

pub mod device;
mod iov;
mod mergeable;
pub mod tap;

pub use device::Net;

/// The vnet header both sides use (`virtio_net_hdr_v1`, `num_buffers` included).
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame a TSO/GSO packet can be, plus its header.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65550;
