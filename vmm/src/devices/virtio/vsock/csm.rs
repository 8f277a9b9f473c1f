//! One vsock stream connection between a guest port and a host unix socket.
//!
//! Credit flow (virtio spec 5.10.6.3): we may send the guest at most
//! `peer_buf_alloc - (rx_cnt - peer_fwd_cnt)` bytes; the guest may send us at most
//! `BUF_ALLOC - (bytes received - fwd_cnt)`, where `fwd_cnt` counts what we have
//! handed on to the host socket. Bytes the host socket can't take yet wait in
//! `tx_buf`, which the advertised credit bounds; a guest that overruns it is
//! reset.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::unix::net::UnixStream;

use super::{op, Hdr, BUF_ALLOC, MAX_PKT_DATA};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Host connected and asked for a guest port; waiting for the guest's RESPONSE.
    LocalInit,
    /// Data flows.
    Established,
}

/// What the connection wants to tell the guest next, besides data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctl {
    Request,
    Response,
    CreditUpdate,
    CreditRequest,
    Shutdown,
    Rst,
}

/// Connection state for one (host port, guest port) pair.
pub struct Connection {
    /// The host-side socket.
    pub stream: UnixStream,
    /// Port number on the host side (CID 2).
    pub host_port: u32,
    /// Port number in the guest.
    pub guest_port: u32,
    /// Life-cycle state.
    pub state: State,
    /// Our own bytes for the host socket (the `OK <port>` line), sent before any
    /// guest data and not counted as forwarded.
    preamble: VecDeque<u8>,
    /// Data from the guest that the host socket hasn't accepted yet.
    tx_buf: VecDeque<u8>,
    /// Data from the host not yet delivered to the guest.
    stash: VecDeque<u8>,
    /// Bytes handed to the host socket (reported to the guest).
    fwd_cnt: Wrapping<u32>,
    /// `fwd_cnt` as last told to the guest.
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Edge-triggered epoll said readable; cleared on EWOULDBLOCK.
    pub readable: bool,
    /// The host closed its end (read returned 0).
    host_eof: bool,
    shutdown_sent: bool,
    /// The guest said it will send no more (SHUTDOWN with `SEND`).
    guest_shut_send: bool,
    /// The guest said it will receive no more (SHUTDOWN with `RCV`).
    guest_shut_rcv: bool,
    /// We half-closed the host socket (passed the guest's EOF on).
    host_write_shut: bool,
    credit_requested: bool,
    /// Control packets to send, in order.
    pub pending: VecDeque<Ctl>,
}

/// The guest broke the protocol or the host socket failed: reset the connection.
#[derive(Debug, PartialEq, Eq)]
pub struct Reset;

/// Send a credit update once this much has been consumed since the last one.
const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 4;

impl Connection {
    /// A connection the host opened (`CONNECT <guest_port>`).
    pub fn host_initiated(stream: UnixStream, host_port: u32, guest_port: u32) -> Self {
        let mut c = Self::new(stream, host_port, guest_port, State::LocalInit);
        c.pending.push_back(Ctl::Request);
        c
    }

    /// A connection the guest opened and the host accepted; `hdr` is its REQUEST.
    pub fn guest_initiated(stream: UnixStream, hdr: &Hdr) -> Self {
        let mut c = Self::new(stream, hdr.dst_port, hdr.src_port, State::Established);
        c.update_peer_credit(hdr);
        c.pending.push_back(Ctl::Response);
        c
    }

    fn new(stream: UnixStream, host_port: u32, guest_port: u32, state: State) -> Self {
        Connection {
            stream,
            host_port,
            guest_port,
            state,
            preamble: VecDeque::new(),
            tx_buf: VecDeque::new(),
            stash: VecDeque::new(),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            rx_cnt: Wrapping(0),
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            readable: false,
            host_eof: false,
            shutdown_sent: false,
            guest_shut_send: false,
            guest_shut_rcv: false,
            host_write_shut: false,
            credit_requested: false,
            pending: VecDeque::new(),
        }
    }

    /// Bytes received from the host that are waiting for the guest.
    pub fn stash(&mut self) -> &mut VecDeque<u8> {
        &mut self.stash
    }

    /// Records the guest's view of its receive buffer, carried by every packet.
    pub fn update_peer_credit(&mut self, hdr: &Hdr) {
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        if self.peer_credit() > 0 {
            self.credit_requested = false;
        }
    }

    /// How many bytes the guest can take now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Fills in the credit fields of an outgoing header.
    pub fn stamp(&mut self, hdr: &mut Hdr) {
        hdr.buf_alloc = BUF_ALLOC;
        hdr.fwd_cnt = self.fwd_cnt.0;
        self.last_fwd_cnt_sent = self.fwd_cnt;
    }

    /// Guest sent data (an RW packet).
    pub fn guest_data(&mut self, data: &[u8]) -> Result<(), Reset> {
        if self.state != State::Established {
            return Err(Reset);
        }
        // The guest may never have more unforwarded bytes with us than we advertised.
        if self.tx_buf.len() + data.len() > BUF_ALLOC as usize {
            return Err(Reset);
        }
        let mut rest = data;
        if self.tx_buf.is_empty() && self.preamble.is_empty() {
            match self.stream.write(rest) {
                Ok(n) => {
                    self.fwd_cnt += Wrapping(n as u32);
                    rest = &rest[n..];
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(_) => return Err(Reset),
            }
        }
        self.tx_buf.extend(rest);
        self.maybe_credit_update();
        Ok(())
    }

    /// The host socket became writable: push buffered guest data.
    pub fn flush_tx(&mut self) -> Result<(), Reset> {
        while !self.preamble.is_empty() {
            let (a, _) = self.preamble.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(Reset),
                Ok(n) => {
                    self.preamble.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(_) => return Err(Reset),
            }
        }
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(Reset),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => return Err(Reset),
            }
        }
        self.maybe_credit_update();
        self.pass_on_guest_eof();
        Ok(())
    }

    fn maybe_credit_update(&mut self) {
        if (self.fwd_cnt - self.last_fwd_cnt_sent).0 >= CREDIT_UPDATE_THRESHOLD
            && !self.pending.contains(&Ctl::CreditUpdate)
        {
            self.pending.push_back(Ctl::CreditUpdate);
        }
    }

    /// Reads from the host socket into the stash, within the guest's credit.
    pub fn fill_stash(&mut self) -> Result<(), Reset> {
        if self.state != State::Established {
            return Ok(());
        }
        if self.guest_shut_rcv {
            // Nobody will read it: drop what came and stop reading.
            self.stash.clear();
            return Ok(());
        }
        while self.readable && !self.host_eof && self.stash.len() < MAX_PKT_DATA as usize {
            let room = (self.peer_credit() as usize).saturating_sub(self.stash.len());
            if room == 0 {
                // Ask for credit only when it is what blocks us: the guest has
                // none left and the host may have more to say.
                if self.peer_credit() == 0 && !self.credit_requested {
                    self.credit_requested = true;
                    self.pending.push_back(Ctl::CreditRequest);
                }
                break;
            }
            let mut buf = vec![0u8; room.min(MAX_PKT_DATA as usize)];
            match self.stream.read(&mut buf) {
                Ok(0) => self.host_eof = true,
                Ok(n) => self.stash.extend(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => self.readable = false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(Reset),
            }
        }
        if self.host_eof && self.stash.is_empty() && !self.shutdown_sent {
            self.shutdown_sent = true;
            self.pending.push_back(Ctl::Shutdown);
        }
        Ok(())
    }

    /// Bytes of data that may go to the guest now.
    pub fn sendable(&self) -> usize {
        if self.state != State::Established {
            return 0;
        }
        self.stash.len().min(self.peer_credit() as usize)
    }

    /// Removes up to `max` sendable bytes for an RW packet.
    pub fn take_data(&mut self, max: usize) -> Vec<u8> {
        let n = self.sendable().min(max);
        let out: Vec<u8> = self.stash.drain(..n).collect();
        self.rx_cnt += Wrapping(n as u32);
        out
    }

    /// Header for a packet from this connection to the guest.
    pub fn header(&mut self, guest_cid: u64, op: u16) -> Hdr {
        let mut h = Hdr {
            src_cid: super::HOST_CID,
            dst_cid: guest_cid,
            src_port: self.host_port,
            dst_port: self.guest_port,
            type_: super::TYPE_STREAM,
            op,
            ..Default::default()
        };
        self.stamp(&mut h);
        h
    }

    /// The guest accepted a host-initiated connection.
    pub fn established(&mut self, hdr: &Hdr) -> Result<(), Reset> {
        if self.state != State::LocalInit {
            return Err(Reset);
        }
        self.state = State::Established;
        self.update_peer_credit(hdr);
        self.preamble
            .extend(format!("OK {}\n", self.host_port).into_bytes());
        self.flush_tx()
    }

    /// The guest shut down one or both directions (SHUTDOWN `flags`). Data it sent before
    /// still goes to the host socket; the host sees EOF only after it.
    pub fn guest_shutdown(&mut self, flags: u32) {
        self.guest_shut_send |= flags & super::shutdown::SEND != 0;
        self.guest_shut_rcv |= flags & super::shutdown::RCV != 0;
        if self.guest_shut_rcv {
            self.stash.clear();
        }
        self.pass_on_guest_eof();
    }

    /// Half-closes the host socket once the guest is done sending and all of it went through.
    /// Once only: every `shutdown(2)` wakes our own socket's waiters, so repeating it from
    /// the writable handler re-arms the edge-triggered epoll item and spins the device
    /// thread (which then starves the vCPU of the device lock: seen in the nested node).
    fn pass_on_guest_eof(&mut self) {
        if self.guest_shut_send
            && !self.host_write_shut
            && self.tx_buf.is_empty()
            && self.preamble.is_empty()
        {
            self.host_write_shut = true;
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
    }

    /// Both directions are over and nothing is left to forward: the muxer closes the
    /// connection (RST to the guest, which completes its close without a timeout).
    pub fn finished(&self) -> bool {
        let to_host_done =
            self.guest_shut_send && self.tx_buf.is_empty() && self.preamble.is_empty();
        let to_guest_done =
            self.guest_shut_rcv || (self.host_eof && self.stash.is_empty() && self.shutdown_sent);
        to_host_done && to_guest_done
    }

    /// Whether this control op is one we answer a received op with.
    pub fn op_for(ctl: Ctl) -> u16 {
        match ctl {
            Ctl::Request => op::REQUEST,
            Ctl::Response => op::RESPONSE,
            Ctl::CreditUpdate => op::CREDIT_UPDATE,
            Ctl::CreditRequest => op::CREDIT_REQUEST,
            Ctl::Shutdown => op::SHUTDOWN,
            Ctl::Rst => op::RST,
        }
    }
}
