//! virtio-vsock in userspace with the hybrid unix-socket backend.
//!
//! - [`device`]: the virtio device (rx/tx/event queues, config space with the CID),
//!   parsing packets with the `virtio-vsock` crate.
//! - [`muxer`]: routes packets between the guest and host unix sockets.
//! - [`csm`]: one connection's state machine and credit accounting.
//!
//! Host side protocol (the same one Firecracker uses): a host process connects to
//! the listening socket `uds_path`, writes `CONNECT <guest port>\n` and reads
//! `OK <host port>\n` once the guest accepted, then raw bytes flow. A guest
//! connection to host port P makes the VMM connect to `<uds_path>_<P>`.

pub mod csm;
pub mod device;
pub mod muxer;

/// Well-known CID of the host.
pub const HOST_CID: u64 = 2;
/// Stream sockets are all we support.
pub const TYPE_STREAM: u16 = 1;
/// Largest payload per packet (Linux uses 64 KiB buffers).
pub const MAX_PKT_DATA: u32 = 64 * 1024;
/// Bytes per connection we buffer from the guest before the host socket takes them:
/// the credit we advertise.
pub const BUF_ALLOC: u32 = 256 * 1024;

/// Packet operations.
pub mod op {
    pub const REQUEST: u16 = 1;
    pub const RESPONSE: u16 = 2;
    pub const RST: u16 = 3;
    pub const SHUTDOWN: u16 = 4;
    pub const RW: u16 = 5;
    pub const CREDIT_UPDATE: u16 = 6;
    pub const CREDIT_REQUEST: u16 = 7;
}

/// SHUTDOWN flags.
pub mod shutdown {
    pub const RCV: u32 = 1;
    pub const SEND: u32 = 2;
}

/// A packet header, decoupled from guest memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}
