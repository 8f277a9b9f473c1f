//! Listeners: bound early (right after the mounts, before anything slow) so that a host
//! connect queues in the backlog instead of being refused; served later. The same code above
//! this module runs on AF_VSOCK in a VM and on AF_UNIX in host-process mode.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::pin::Pin;

use nix::sys::socket::{
    bind, listen, socket, AddressFamily, Backlog, SockFlag, SockType, UnixAddr, VsockAddr,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::config::Mode;
use crate::api::Port;

const BACKLOG: i32 = 128;

#[derive(Debug, Clone)]
pub enum Addr {
    Vsock(u32),
    Unix(PathBuf),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Vsock(port) => write!(f, "vsock port {port}"),
            Addr::Unix(path) => write!(f, "unix socket {}", path.display()),
        }
    }
}

impl Addr {
    pub fn for_port(mode: &Mode, port: Port) -> Addr {
        match mode {
            Mode::Vm => Addr::Vsock(port.vsock_port()),
            Mode::HostProcess { socket_dir } => Addr::Unix(socket_dir.join(port.socket_name())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("binding {addr}: {source}")]
pub struct BindError {
    pub addr: String,
    #[source]
    pub source: nix::Error,
}

/// A bound, listening socket that nobody accepts on yet.
pub struct Bound {
    pub addr: Addr,
    fd: OwnedFd,
}

pub fn bind_listener(addr: Addr) -> Result<Bound, BindError> {
    let err = |source| BindError {
        addr: addr.to_string(),
        source,
    };
    let family = match addr {
        Addr::Vsock(_) => AddressFamily::Vsock,
        Addr::Unix(_) => AddressFamily::Unix,
    };
    let fd = socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(err)?;
    match &addr {
        Addr::Vsock(port) => bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, *port)),
        Addr::Unix(path) => {
            // A stale socket file from an earlier run would make bind fail with EADDRINUSE.
            let _ = std::fs::remove_file(path);
            bind(fd.as_raw_fd(), &UnixAddr::new(path).map_err(err)?)
        }
    }
    .map_err(err)?;
    listen(&fd, Backlog::new(BACKLOG).map_err(err)?).map_err(err)?;
    Ok(Bound { addr, fd })
}

/// A connected byte stream on either transport.
pub trait Conn: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Conn for T {}
pub type BoxConn = Pin<Box<dyn Conn>>;

/// A listener being served. Must be created inside the tokio runtime.
pub enum Listener {
    Vsock(tokio_vsock::VsockListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    pub fn serve(bound: Bound) -> std::io::Result<Listener> {
        Ok(match bound.addr {
            Addr::Vsock(_) => Listener::Vsock(tokio_vsock::VsockListener::from(bound.fd)),
            Addr::Unix(_) => Listener::Unix(tokio::net::UnixListener::from_std(
                std::os::unix::net::UnixListener::from(bound.fd),
            )?),
        })
    }

    pub async fn accept(&self) -> std::io::Result<BoxConn> {
        Ok(match self {
            Listener::Vsock(l) => Box::pin(l.accept().await?.0),
            Listener::Unix(l) => Box::pin(l.accept().await?.0),
        })
    }

    /// The ttrpc server's view of the same listener.
    pub fn into_ttrpc(self) -> ttrpc::r#async::transport::Listener {
        match self {
            Listener::Vsock(l) => l.into(),
            Listener::Unix(l) => l.into(),
        }
    }
}

/// Every listener guest-init serves, bound in one go.
pub struct Listeners {
    pub control: Bound,
    pub stdio: Bound,
    pub pty: Bound,
    pub events: Bound,
}

pub fn bind_all(mode: &Mode) -> Result<Listeners, BindError> {
    let b = |p| bind_listener(Addr::for_port(mode, p));
    Ok(Listeners {
        control: b(Port::Control)?,
        stdio: b(Port::Stdio)?,
        pty: b(Port::Pty)?,
        events: b(Port::Events)?,
    })
}
