//! Routes vsock packets between the guest and host unix sockets.
//!
//! All host fds live on the muxer's own epoll (edge-triggered for connections),
//! whose fd the VMM event loop watches; that lets the muxer add and drop sockets
//! from whichever thread processes a queue.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::net::Shutdown;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::csm::{Connection, Ctl, Reset};
use super::{op, shutdown, Hdr, HOST_CID, TYPE_STREAM};

/// epoll_wait rounds per `process_events` call.
const MAX_EVENT_ROUNDS: usize = 8;
/// Host-initiated connections get host ports from here up.
const HOST_PORT_BASE: u32 = 1 << 30;
/// Most live connections per VM.
const MAX_CONNECTIONS: usize = 1024;
/// Most host connections still sending their CONNECT line.
const MAX_PENDING: usize = 64;
/// Longest accepted CONNECT line.
const MAX_LINE: usize = 64;

/// (host port, guest port).
pub type ConnKey = (u32, u32);

enum Owner {
    Listener,
    Pending,
    Conn(ConnKey),
}

struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
}

/// The connection multiplexer behind one virtio-vsock device.
pub struct Muxer {
    uds_path: PathBuf,
    guest_cid: u64,
    listener: UnixListener,
    epoll: Epoll,
    conns: BTreeMap<ConnKey, Connection>,
    owners: HashMap<RawFd, Owner>,
    pending: HashMap<RawFd, PendingHost>,
    /// Packets not tied to a live connection (RSTs for unknown ports).
    ctl: VecDeque<Hdr>,
    next_host_port: u32,
}

impl Muxer {
    /// Listens on `uds_path` for host connections to guest `guest_cid`.
    pub fn new(uds_path: &Path, guest_cid: u64) -> std::io::Result<Self> {
        let listener = crate::devices::bind_unix(uds_path)?;
        listener.set_nonblocking(true)?;
        let epoll = Epoll::new()?;
        epoll.ctl(
            ControlOperation::Add,
            listener.as_raw_fd(),
            EpollEvent::new(EventSet::IN, listener.as_raw_fd() as u64),
        )?;
        let mut owners = HashMap::new();
        owners.insert(listener.as_raw_fd(), Owner::Listener);
        Ok(Muxer {
            uds_path: uds_path.to_path_buf(),
            guest_cid,
            listener,
            epoll,
            conns: BTreeMap::new(),
            owners,
            pending: HashMap::new(),
            ctl: VecDeque::new(),
            next_host_port: HOST_PORT_BASE,
        })
    }

    /// The fd the VMM event loop watches.
    pub fn epoll_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    fn watch(&mut self, fd: RawFd, owner: Owner) -> std::io::Result<()> {
        let ev = EventSet::IN | EventSet::OUT | EventSet::READ_HANG_UP | EventSet::EDGE_TRIGGERED;
        self.epoll
            .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, fd as u64))?;
        self.owners.insert(fd, owner);
        Ok(())
    }

    fn unwatch(&mut self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        self.owners.remove(&fd);
    }

    fn kill(&mut self, key: ConnKey, send_rst: bool) {
        if let Some(c) = self.conns.remove(&key) {
            tracing::debug!(
                "vsock: closing host port {} <-> guest port {} (rst {send_rst})",
                key.0,
                key.1
            );
            self.unwatch(c.stream.as_raw_fd());
            let _ = c.stream.shutdown(Shutdown::Both);
            if send_rst {
                self.ctl.push_back(self.rst_hdr(key.0, key.1));
            }
        }
    }

    fn rst_hdr(&self, host_port: u32, guest_port: u32) -> Hdr {
        Hdr {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: host_port,
            dst_port: guest_port,
            type_: TYPE_STREAM,
            op: op::RST,
            ..Default::default()
        }
    }

    /// Drops every connection (device reset).
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for k in keys {
            self.kill(k, false);
        }
        let fds: Vec<RawFd> = self.pending.keys().copied().collect();
        for fd in fds {
            self.unwatch(fd);
            self.pending.remove(&fd);
        }
        self.ctl.clear();
    }

    /// Serves what the host sockets have ready, without blocking.
    pub fn process_events(&mut self) {
        let mut events = vec![EpollEvent::default(); 32];
        // Bounded: the device lock is held meanwhile, and the vCPUs wait on it. Whatever is
        // left keeps the epoll fd readable, so the event loop comes back for it.
        for _ in 0..MAX_EVENT_ROUNDS {
            let n = match self.epoll.wait(0, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!("vsock epoll_wait failed: {e}");
                    return;
                }
            };
            if n == 0 {
                return;
            }
            for ev in &events[..n] {
                self.handle_event(ev.data() as RawFd, ev.event_set());
            }
        }
    }

    fn handle_event(&mut self, fd: RawFd, set: EventSet) {
        match self.owners.get(&fd) {
            Some(Owner::Listener) => self.accept_all(),
            Some(Owner::Pending) => self.read_connect_line(fd),
            Some(Owner::Conn(key)) => {
                let key = *key;
                let Some(c) = self.conns.get_mut(&key) else {
                    return;
                };
                if set.intersects(
                    EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR,
                ) {
                    c.readable = true;
                }
                if set.contains(EventSet::OUT) && c.flush_tx().is_err() {
                    self.kill(key, true);
                }
                self.close_finished();
            }
            None => {}
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() >= MAX_PENDING || stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.pending.insert(
                        fd,
                        PendingHost {
                            stream,
                            line: Vec::new(),
                        },
                    );
                    if self.watch(fd, Owner::Pending).is_err() {
                        self.pending.remove(&fd);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("vsock accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut buf = [0u8; MAX_LINE];
        let outcome = loop {
            match p.stream.read(&mut buf) {
                Ok(0) => break Err(()),
                Ok(n) => {
                    p.line.extend_from_slice(&buf[..n]);
                    if let Some(pos) = p.line.iter().position(|b| *b == b'\n') {
                        break Ok(pos);
                    }
                    if p.line.len() > MAX_LINE {
                        break Err(());
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break Err(()),
            }
        };
        self.unwatch(fd);
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let Ok(pos) = outcome else {
            return;
        };
        let port = std::str::from_utf8(&p.line[..pos])
            .ok()
            .and_then(|l| l.trim().strip_prefix("CONNECT "))
            .and_then(|n| n.trim().parse::<u32>().ok());
        let Some(guest_port) = port else {
            // Tell the host why before hanging up; best effort.
            let _ = std::io::Write::write_all(&mut &p.stream, b"ERR expected \"CONNECT <port>\"\n");
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            return;
        }
        let host_port = self.alloc_host_port(guest_port);
        let leftover = p.line[pos + 1..].to_vec();
        let mut c = Connection::host_initiated(p.stream, host_port, guest_port);
        // Bytes the host sent right after the CONNECT line are data for the guest.
        c.stash().extend(leftover);
        let fd = c.stream.as_raw_fd();
        let key = (host_port, guest_port);
        self.conns.insert(key, c);
        if self.watch(fd, Owner::Conn(key)).is_err() {
            self.conns.remove(&key);
        }
    }

    fn alloc_host_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let p = self.next_host_port;
            self.next_host_port = self.next_host_port.checked_add(1).unwrap_or(HOST_PORT_BASE);
            if !self.conns.contains_key(&(p, guest_port)) {
                return p;
            }
        }
    }

    /// Handles one packet the guest sent on the TX queue.
    pub fn handle_tx(&mut self, hdr: &Hdr, data: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            tracing::debug!("vsock: dropping packet with bad cids {hdr:?}");
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != op::RST {
                self.ctl.push_back(self.rst_hdr(key.0, key.1));
            }
            return;
        }
        if hdr.op == op::REQUEST {
            self.guest_connect(hdr);
            return;
        }
        let Some(c) = self.conns.get_mut(&key) else {
            if hdr.op != op::RST {
                self.ctl.push_back(self.rst_hdr(key.0, key.1));
            }
            return;
        };
        c.update_peer_credit(hdr);
        let result: Result<(), Reset> = match hdr.op {
            op::RESPONSE => c.established(hdr),
            op::RW => c.guest_data(data),
            op::CREDIT_UPDATE => Ok(()),
            op::CREDIT_REQUEST => {
                c.pending.push_back(Ctl::CreditUpdate);
                Ok(())
            }
            op::SHUTDOWN => {
                tracing::debug!(
                    "vsock: guest SHUTDOWN flags {} on host port {} <-> guest port {}",
                    hdr.flags,
                    key.0,
                    key.1
                );
                // Not a reset, even with both flags (Linux's close()): what the guest sent
                // before may still sit in tx_buf, waiting for the host socket.
                c.guest_shutdown(hdr.flags);
                Ok(())
            }
            op::RST => {
                self.kill(key, false);
                return;
            }
            _ => Err(Reset),
        };
        if result.is_err() {
            self.kill(key, true);
        } else {
            self.close_finished();
        }
    }

    /// Closes connections whose both directions are over.
    fn close_finished(&mut self) {
        let done: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.finished())
            .map(|(k, _)| *k)
            .collect();
        for k in done {
            self.kill(k, true);
        }
    }

    fn guest_connect(&mut self, hdr: &Hdr) {
        let key = (hdr.dst_port, hdr.src_port);
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            self.ctl.push_back(self.rst_hdr(key.0, key.1));
            return;
        }
        let path = format!("{}_{}", self.uds_path.display(), hdr.dst_port);
        let stream = match UnixStream::connect(&path) {
            Ok(s) if s.set_nonblocking(true).is_ok() => s,
            _ => {
                tracing::debug!(
                    "vsock: guest connect to host port {} ({path}) refused",
                    hdr.dst_port
                );
                self.ctl.push_back(self.rst_hdr(key.0, key.1));
                return;
            }
        };
        let c = Connection::guest_initiated(stream, hdr);
        let fd = c.stream.as_raw_fd();
        self.conns.insert(key, c);
        if self.watch(fd, Owner::Conn(key)).is_err() {
            self.kill(key, true);
        }
    }

    /// The next packet for the guest, with at most `max_data` bytes of payload.
    pub fn next_rx(&mut self, max_data: usize) -> Option<(Hdr, Vec<u8>)> {
        let mut broken = Vec::new();
        for (k, c) in self.conns.iter_mut() {
            if c.fill_stash().is_err() {
                broken.push(*k);
            }
        }
        for k in broken {
            self.kill(k, true);
        }
        self.close_finished();
        if let Some(h) = self.ctl.pop_front() {
            return Some((h, Vec::new()));
        }
        let cid = self.guest_cid;
        for c in self.conns.values_mut() {
            if let Some(ctl) = c.pending.pop_front() {
                let mut h = c.header(cid, Connection::op_for(ctl));
                if ctl == Ctl::Shutdown {
                    // Host EOF: it sends no more, but may still read (a half-close, as
                    // `shutdown(SHUT_WR)` makes). Were it a full close, the guest's next
                    // data fails to write and resets the connection.
                    h.flags = shutdown::SEND;
                }
                return Some((h, Vec::new()));
            }
        }
        if max_data == 0 {
            return None;
        }
        for c in self.conns.values_mut() {
            if c.sendable() > 0 {
                let data = c.take_data(max_data);
                let mut h = c.header(cid, op::RW);
                h.len = data.len() as u32;
                return Some((h, data));
            }
        }
        None
    }
}
