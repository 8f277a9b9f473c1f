//! box-vmm's control socket (`--api-sock PATH`): requests from the host library while the VM
//! runs. Today: putting a disk into a slot declared with `--disk-slots` and taking it out
//! again (the containerd shim's rootfs of a container created after the VM booted).
//!
//! One request per connection: a JSON object ending at a newline or at EOF (at most
//! [`MAX_REQUEST`] bytes), one JSON reply line, then box-vmm closes the connection. A disk's
//! file travels as a file descriptor (SCM_RIGHTS) beside the request's bytes: the host
//! library opens it, so a jailed box-vmm never needs the host path (as with the TAP). Not
//! HTTP as Firecracker's API: a file descriptor cannot ride an HTTP request, and one
//! request kind does not need a router.
//!
//! ```text
//! {"op":"attach_disk","slot":0,"id":"ctr-1","read_only":false}  + fd
//!                                     → {"ok":true,"slot":0,"sectors":262144}
//! {"op":"detach_disk","slot":0}       → {"ok":true,"slot":0}
//! anything wrong                      → {"ok":false,"error":"no disk slot 3 (this VM has 1)"}
//! ```
//!
//! Every byte is untrusted: a malformed, oversized or half-sent request costs its connection
//! only; the listener and each connection are non-blocking on the device event loop, and at
//! most [`MAX_CONNS`] are open at once.

use std::collections::HashMap;
use std::fs::File;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::socket::{self, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use vmm_sys_util::epoll::EventSet;

use crate::devices::lock;
use crate::devices::virtio::block::{Block, SlotError};
use crate::devices::virtio::mmio_transport::MmioTransport;
use crate::event_loop::{EventHandler, EventOps};

/// Longest request accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Connections open at once; more are closed on accept.
pub const MAX_CONNS: usize = 16;
/// A disk id is the virtio-blk serial: at most 20 bytes.
pub const MAX_ID: usize = 20;

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Put the file sent with the request into empty slot `slot` as disk `id`.
    AttachDisk {
        slot: usize,
        id: String,
        #[serde(default)]
        read_only: bool,
    },
    /// Take the disk out of slot `slot` (the guest must have stopped using it).
    DetachDisk { slot: usize },
}

/// The answer to one request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sectors: Option<u64>,
}

impl Reply {
    fn err(msg: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

/// The event-loop handler behind `--api-sock`.
pub struct ControlHandler {
    listener: UnixListener,
    /// The transports of the `--disk-slots` devices, slot 0 first.
    slots: Vec<Arc<Mutex<MmioTransport>>>,
    conns: HashMap<RawFd, Conn>,
}

/// One connection's request so far.
struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
}

/// What a read on a connection came to.
enum Read_ {
    /// More to come.
    Pending,
    /// The request is complete (newline or EOF).
    Done,
    /// The connection broke or sent too much; answer with this and close.
    Bad(String),
}

impl ControlHandler {
    /// Listens on `path` (a stale socket file there is replaced).
    pub fn bind(path: &Path, slots: Vec<Arc<Mutex<MmioTransport>>>) -> std::io::Result<Self> {
        let listener = crate::devices::bind_unix(path)?;
        listener.set_nonblocking(true)?;
        Ok(ControlHandler {
            listener,
            slots,
            conns: HashMap::new(),
        })
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!("control socket: accept: {e}");
                    return;
                }
            };
            if self.conns.len() >= MAX_CONNS || stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if ops.add(fd, EventSet::IN).is_ok() {
                self.conns.insert(
                    fd,
                    Conn {
                        stream,
                        buf: Vec::new(),
                        fds: Vec::new(),
                    },
                );
            }
        }
    }

    /// Serves one complete request.
    fn serve(&self, bytes: &[u8], fds: Vec<OwnedFd>) -> Reply {
        let req: Request = match serde_json::from_slice(bytes) {
            Ok(r) => r,
            Err(e) => return Reply::err(format!("malformed request: {e}")),
        };
        match req {
            Request::AttachDisk {
                slot,
                id,
                read_only,
            } => self.attach(slot, &id, read_only, fds),
            Request::DetachDisk { slot } => self.detach(slot, fds),
        }
        .unwrap_or_else(|e| e)
    }

    fn attach(
        &self,
        slot: usize,
        id: &str,
        read_only: bool,
        mut fds: Vec<OwnedFd>,
    ) -> Result<Reply, Reply> {
        if fds.len() != 1 {
            return Err(Reply::err(format!(
                "attach_disk takes exactly one file descriptor (SCM_RIGHTS), got {}",
                fds.len()
            )));
        }
        check_id(id).map_err(Reply::err)?;
        let file = File::from(fds.remove(0));
        check_access(file.as_fd(), read_only).map_err(Reply::err)?;
        let sectors = self.change_slot(slot, |b| b.attach(file, read_only, id))?;
        tracing::info!("control: disk {id:?} in slot {slot} ({sectors} sectors)");
        Ok(Reply {
            ok: true,
            slot: Some(slot),
            sectors: Some(sectors),
            ..Default::default()
        })
    }

    fn detach(&self, slot: usize, fds: Vec<OwnedFd>) -> Result<Reply, Reply> {
        if !fds.is_empty() {
            return Err(Reply::err("detach_disk takes no file descriptor"));
        }
        self.change_slot(slot, |b| b.detach())?;
        tracing::info!("control: slot {slot} emptied");
        Ok(Reply {
            ok: true,
            slot: Some(slot),
            ..Default::default()
        })
    }

    /// Runs `change` on disk slot `slot` and, when it succeeds, tells the driver.
    fn change_slot<T>(
        &self,
        slot: usize,
        change: impl FnOnce(&mut Block) -> Result<T, SlotError>,
    ) -> Result<T, Reply> {
        let t = self.slots.get(slot).ok_or_else(|| {
            Reply::err(format!(
                "no disk slot {slot} (this VM has {}: --disk-slots)",
                self.slots.len()
            ))
        })?;
        let mut t = lock(t);
        let r = t
            .disk_slot()
            .ok_or(SlotError::NotASlot)
            .and_then(change)
            .map_err(|e| Reply::err(format!("slot {slot}: {e}")))?;
        t.config_changed();
        Ok(r)
    }
}

/// The id becomes the guest's `/sys/block/vdX/serial`, by which it finds the disk: cut or
/// odd bytes would make it find none, so they are refused.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID || !id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "disk id {id:?}: 1 to {MAX_ID} printable ASCII characters (it is the guest's serial)"
        ));
    }
    Ok(())
}

/// A disk attached read-write must have been opened for writing, or every write of the
/// guest would fail long after the attach said yes.
fn check_access(fd: BorrowedFd<'_>, read_only: bool) -> Result<(), String> {
    let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFL)
        .map_err(|e| format!("the file descriptor: {e}"))?;
    let mode = nix::fcntl::OFlag::from_bits_truncate(flags) & nix::fcntl::OFlag::O_ACCMODE;
    if !read_only && mode == nix::fcntl::OFlag::O_RDONLY {
        return Err("the file was opened read-only: attach it with read_only".into());
    }
    Ok(())
}

impl Conn {
    /// Reads what is there, keeping any file descriptors that came with it.
    fn read(&mut self) -> Read_ {
        loop {
            let mut chunk = [0u8; 4096];
            let mut cmsg = nix::cmsg_space!([RawFd; 4]);
            let mut iov = [IoSliceMut::new(&mut chunk)];
            let r = socket::recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let (n, truncated) = match r {
                Ok(m) => {
                    if let Ok(cmsgs) = m.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::ScmRights(fds) = c {
                                // SAFETY: SCM_RIGHTS hands this process new descriptors
                                // that nothing else owns.
                                self.fds.extend(
                                    fds.into_iter()
                                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                                );
                            }
                        }
                    }
                    (m.bytes, m.flags.contains(MsgFlags::MSG_CTRUNC))
                }
                Err(nix::Error::EAGAIN) => return Read_::Pending,
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Read_::Bad(format!("reading the request: {e}")),
            };
            if truncated {
                return Read_::Bad("too many file descriptors with one request".into());
            }
            if n == 0 {
                return Read_::Done;
            }
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                self.buf.truncate(end);
                return Read_::Done;
            }
            if self.buf.len() > MAX_REQUEST {
                return Read_::Bad(format!("request over {MAX_REQUEST} bytes"));
            }
        }
    }
}

impl EventHandler for ControlHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(self.listener.as_raw_fd(), EventSet::IN) {
            tracing::error!("cannot watch the control socket: {e}");
        }
    }

    fn handle(&mut self, fd: RawFd, _events: EventSet, ops: &mut EventOps) {
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
            return;
        }
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        let reply = match conn.read() {
            Read_::Pending => return,
            Read_::Done => {
                let bytes = std::mem::take(&mut conn.buf);
                let fds = std::mem::take(&mut conn.fds);
                self.serve(&bytes, fds)
            }
            Read_::Bad(why) => Reply::err(why),
        };
        ops.remove(fd);
        if let Some(mut conn) = self.conns.remove(&fd) {
            // A reply is a short line: it fits the socket's buffer, so a non-blocking
            // write does not wait for the client; one that does not read it loses it.
            let mut line = serde_json::to_vec(&reply).unwrap_or_default();
            line.push(b'\n');
            let _ = conn.stream.write_all(&line);
        }
    }
}

/// Why a [`call`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to box-vmm's control socket {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("talking to box-vmm's control socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("box-vmm's reply {0:?} is not a reply")]
    BadReply(String),
}

/// Sends `req` (with `file` as SCM_RIGHTS) to the control socket at `path` and waits for the
/// reply, at most `timeout` per read or write. For the host library and the tests.
pub fn call(
    path: &Path,
    req: &Request,
    file: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<Reply, ClientError> {
    let mut s = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.display().to_string(),
        source,
    })?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let fds: Vec<RawFd> = file.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg: Vec<ControlMessage> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    let n = socket::sendmsg::<()>(
        s.as_raw_fd(),
        &[IoSlice::new(&line)],
        &cmsg,
        MsgFlags::empty(),
        None,
    )
    .map_err(std::io::Error::from)?;
    if n < line.len() {
        s.write_all(&line[n..])?;
    }
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    serde_json::from_str(out.trim_end()).map_err(|_| ClientError::BadReply(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_strictly() {
        let r: Request =
            serde_json::from_str(r#"{"op":"attach_disk","slot":1,"id":"ctr-1"}"#).unwrap();
        assert_eq!(
            r,
            Request::AttachDisk {
                slot: 1,
                id: "ctr-1".into(),
                read_only: false
            }
        );
        for bad in [
            r#"{"op":"attach_disk","slot":1}"#,
            r#"{"op":"detach_disk","slot":-1}"#,
            r#"{"op":"format_disk","slot":0}"#,
            r#"{"op":"detach_disk","slot":0,"force":true}"#,
            "[]",
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_must_be_printable_and_fit_the_serial() {
        assert!(check_id("ctr-0123456789abcdef").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("ctr-0123456789abcdefX").is_err(), "21 bytes");
        assert!(check_id("a b").is_err());
        assert!(check_id("é").is_err());
    }

    use crate::devices::virtio::block::Block;
    use crate::devices::virtio::mmio_transport::reg;
    use crate::devices::virtio::testutil::test_mem;
    use crate::devices::BusDevice;
    use vmm_sys_util::epoll::{Epoll, EpollEvent};
    use vmm_sys_util::eventfd::EventFd;

    fn tmp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("box-vmm-ctl-{}-{name}", std::process::id()))
    }

    /// A handler with one empty slot, and the slot's transport.
    fn handler(
        name: &str,
    ) -> (
        ControlHandler,
        Arc<Mutex<MmioTransport>>,
        std::path::PathBuf,
    ) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t =
            MmioTransport::new(Box::new(Block::empty_slot("box-slot-0")), test_mem(), irq).unwrap();
        let t = Arc::new(Mutex::new(t));
        let path = tmp(name);
        (
            ControlHandler::bind(&path, vec![t.clone()]).unwrap(),
            t,
            path,
        )
    }

    /// Runs `client` on a thread while this one serves the handler, as the event loop would.
    fn exchange<T: Send + 'static>(
        h: &mut ControlHandler,
        client: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let epoll = Epoll::new().unwrap();
        let mut ops = EventOps::for_tests(&epoll);
        h.init(&mut ops);
        let c = std::thread::spawn(client);
        while !c.is_finished() {
            let mut ev = [EpollEvent::default(); 8];
            let n = epoll.wait(100, &mut ev).unwrap();
            for e in &ev[..n] {
                h.handle(e.data() as u32 as RawFd, e.event_set(), &mut ops);
            }
        }
        c.join().unwrap()
    }

    fn capacity(t: &Arc<Mutex<MmioTransport>>) -> u64 {
        let mut b = [0u8; 8];
        lock(t).read(reg::CONFIG, &mut b);
        u64::from_le_bytes(b)
    }

    fn generation(t: &Arc<Mutex<MmioTransport>>) -> u32 {
        let mut b = [0u8; 4];
        lock(t).read(reg::CONFIG_GENERATION, &mut b);
        u32::from_le_bytes(b)
    }

    fn disk(name: &str, bytes: usize, write: bool) -> File {
        let p = tmp(name);
        std::fs::write(&p, vec![7u8; bytes]).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(&p)
            .unwrap();
        std::fs::remove_file(&p).unwrap();
        f
    }

    fn call_with(path: &Path, req: Request, file: Option<File>) -> Reply {
        call(
            path,
            &req,
            file.as_ref().map(|f| f.as_fd()),
            Duration::from_secs(10),
        )
        .unwrap()
    }

    #[test]
    fn a_disk_goes_into_a_slot_and_out_again() {
        let (mut h, t, path) = handler("cycle");
        assert_eq!(capacity(&t), 0);
        let g0 = generation(&t);
        let p = path.clone();
        let r = exchange(&mut h, move || {
            let attach = Request::AttachDisk {
                slot: 0,
                id: "ctr-1".into(),
                read_only: false,
            };
            let first = call_with(&p, attach.clone(), Some(disk("d1", 4096, true)));
            let again = call_with(&p, attach, Some(disk("d2", 4096, true)));
            (first, again)
        });
        assert_eq!(r.0.sectors, Some(8), "{:?}", r.0);
        assert!(r.0.ok);
        assert_eq!(capacity(&t), 8, "the guest reads the new capacity");
        assert_ne!(generation(&t), g0, "and the config generation moved");
        assert_eq!(
            r.1.error.as_deref(),
            Some("slot 0: the slot already holds a disk (detach it first)")
        );
        let p = path.clone();
        let r = exchange(&mut h, move || {
            (
                call_with(&p, Request::DetachDisk { slot: 0 }, None),
                call_with(&p, Request::DetachDisk { slot: 0 }, None),
            )
        });
        assert!(r.0.ok, "{:?}", r.0);
        assert_eq!(capacity(&t), 0);
        assert_eq!(r.1.error.as_deref(), Some("slot 0: the slot is empty"));
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn bad_requests_get_reasons_and_change_nothing() {
        let (mut h, t, path) = handler("bad");
        let p = path.clone();
        let replies = exchange(&mut h, move || {
            let attach = |slot, id: &str, ro| Request::AttachDisk {
                slot,
                id: id.into(),
                read_only: ro,
            };
            let raw = |bytes: &[u8]| {
                let mut s = UnixStream::connect(&p).unwrap();
                s.write_all(bytes).unwrap();
                s.shutdown(std::net::Shutdown::Write).unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).unwrap();
                serde_json::from_str::<Reply>(out.trim_end()).unwrap()
            };
            vec![
                call_with(&p, attach(0, "ctr-1", false), None),
                call_with(&p, attach(3, "ctr-1", false), Some(disk("b1", 4096, true))),
                call_with(&p, attach(0, "ctr-1", false), Some(disk("b2", 4096, false))),
                call_with(&p, attach(0, "ctr-1", false), Some(disk("b3", 100, true))),
                call_with(&p, attach(0, "x y", false), Some(disk("b4", 4096, true))),
                raw(b"{\"op\":\"attach_disk\""),
                raw(&vec![b'x'; MAX_REQUEST + 10]),
            ]
        });
        let errors: Vec<String> = replies.iter().map(|r| r.error.clone().unwrap()).collect();
        assert!(
            errors[0].contains("exactly one file descriptor"),
            "{}",
            errors[0]
        );
        assert_eq!(errors[1], "no disk slot 3 (this VM has 1: --disk-slots)");
        assert!(errors[2].contains("opened read-only"), "{}", errors[2]);
        assert!(
            errors[3].contains("at least one 512-byte sector"),
            "{}",
            errors[3]
        );
        assert!(errors[4].contains("printable ASCII"), "{}", errors[4]);
        assert!(errors[5].starts_with("malformed request"), "{}", errors[5]);
        assert!(errors[6].contains("over 65536 bytes"), "{}", errors[6]);
        assert!(replies.iter().all(|r| !r.ok));
        assert_eq!(capacity(&t), 0, "the slot is still empty");
        // Read-only works with a read-only file, and the guest's writes are refused then.
        let p = path.clone();
        let r = exchange(&mut h, move || {
            call_with(
                &p,
                Request::AttachDisk {
                    slot: 0,
                    id: "ro".into(),
                    read_only: true,
                },
                Some(disk("b5", 1024, false)),
            )
        });
        assert_eq!(r.sectors, Some(2), "{r:?}");
        let _ = std::fs::remove_file(path);
    }
}
