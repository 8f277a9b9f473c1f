//! A TAP device for virtio-net: `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, a 12-byte vnet header,
//! non-blocking. Written by hand (four ioctls on /dev/net/tun) because the well-kept `tun`
//! crates target layer-3 tun devices and expose neither vnet headers nor offload control.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};

use super::VNET_HDR_LEN;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Offload flags for TUNSETOFFLOAD: what the TAP may hand us (and so the guest).
pub const TUN_F_CSUM: libc::c_uint = 0x01;
pub const TUN_F_TSO4: libc::c_uint = 0x02;
pub const TUN_F_TSO6: libc::c_uint = 0x04;

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    IfReq
);
nix::ioctl_write_ptr_bad!(
    tun_set_vnet_hdr_sz,
    nix::request_code_write!(b'T', 216, std::mem::size_of::<libc::c_int>()),
    libc::c_int
);
nix::ioctl_write_int_bad!(
    tun_set_offload,
    nix::request_code_write!(b'T', 208, std::mem::size_of::<libc::c_uint>())
);
nix::ioctl_write_int_bad!(
    tun_set_persist,
    nix::request_code_write!(b'T', 203, std::mem::size_of::<libc::c_int>())
);

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    #[error("cannot open /dev/net/tun (is the tun module loaded, and may this user open it?)")]
    NoTunDevice(#[source] nix::Error),
    #[error("cannot attach to TAP {name:?}")]
    Attach {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("cannot configure the TAP: {what}")]
    Configure {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
}

/// Opens (creating it when this process may) the TAP called `name`, configured for
/// virtio-net.
pub fn open(name: &str) -> Result<OwnedFd, TapError> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(TapError::BadName(name.into()));
    }
    let fd = nix::fcntl::open(
        "/dev/net/tun",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(TapError::NoTunDevice)?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads one struct ifreq from the pointer, which lives across the call.
    unsafe { tun_set_iff(fd.as_raw_fd(), &req) }.map_err(|source| TapError::Attach {
        name: name.into(),
        source,
    })?;
    configure(fd)
}

/// Takes a TAP fd opened by someone else (the host library, so a jailed VMM needs no
/// privilege): sets its vnet header size and makes it non-blocking. It must have been opened
/// with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
pub fn configure(fd: OwnedFd) -> Result<OwnedFd, TapError> {
    let size = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which lives across the call.
    unsafe { tun_set_vnet_hdr_sz(fd.as_raw_fd(), &size) }.map_err(|source| {
        TapError::Configure {
            what: "TUNSETVNETHDRSZ (was it opened with IFF_VNET_HDR?)",
            source,
        }
    })?;
    let flags = fcntl(&fd, FcntlArg::F_GETFL).map_err(|source| TapError::Configure {
        what: "F_GETFL",
        source,
    })?;
    fcntl(
        &fd,
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(|source| TapError::Configure {
        what: "O_NONBLOCK",
        source,
    })?;
    Ok(fd)
}

/// The TAP a config names: opened by name, or the inherited fd taken over.
pub fn open_source(source: &crate::config::TapSource) -> Result<OwnedFd, TapError> {
    use std::os::fd::FromRawFd;
    match source {
        crate::config::TapSource::Tap(name) => open(name),
        crate::config::TapSource::Fd(fd) => {
            // An inherited fd must be open; it becomes ours from here on.
            fcntl(
                // SAFETY: only queries whether the number is an open descriptor.
                unsafe { BorrowedFd::borrow_raw(*fd) },
                FcntlArg::F_GETFD,
            )
            .map_err(|source| TapError::Configure {
                what: "the inherited TAP fd is not open",
                source,
            })?;
            // SAFETY: the fd is open (checked above) and was handed to this process for the
            // device alone; nothing else in box-vmm owns it.
            configure(unsafe { OwnedFd::from_raw_fd(*fd) })
        }
    }
}

/// Makes the TAP outlive its fds (test setups give it an address before a VMM attaches).
pub fn set_persistent(fd: BorrowedFd<'_>, on: bool) -> nix::Result<()> {
    // SAFETY: TUNSETPERSIST takes its argument by value; no memory is passed.
    unsafe { tun_set_persist(fd.as_raw_fd(), libc::c_int::from(on)) }.map(drop)
}

/// Tells the TAP which offloaded frames the guest accepts (`TUN_F_*`).
pub fn set_offload(fd: BorrowedFd<'_>, flags: libc::c_uint) -> nix::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
    unsafe { tun_set_offload(fd.as_raw_fd(), flags as libc::c_int) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seccomp_filter_allows_this_tunsetoffload() {
        assert_eq!(
            nix::request_code_write!(b'T', 208, std::mem::size_of::<libc::c_uint>()) as u64,
            crate::seccomp::TUNSETOFFLOAD
        );
    }

    #[test]
    fn names_are_checked_before_any_syscall() {
        assert!(matches!(open(""), Err(TapError::BadName(_))));
        assert!(matches!(
            open("a-name-far-too-long"),
            Err(TapError::BadName(_))
        ));
    }

    #[test]
    fn a_socket_is_not_a_tap() {
        let (a, _b) = std::os::unix::net::UnixDatagram::pair().unwrap();
        let e = configure(OwnedFd::from(a)).unwrap_err();
        assert!(e.to_string().contains("TUNSETVNETHDRSZ"), "{e}");
    }
}
