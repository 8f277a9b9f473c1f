//! The virtio-vsock device: queues and config space; packets go to the [`Muxer`].

use std::os::unix::io::RawFd;
use std::path::Path;

use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use super::muxer::Muxer;
use super::{Hdr, MAX_PKT_DATA};
use crate::devices::virtio::VirtioDevice;
use crate::event_loop::EventOps;

const QUEUE_SIZE: u16 = 256;
/// Queue indices.
pub const RXQ: usize = 0;
/// Guest-to-host packets.
pub const TXQ: usize = 1;
/// Transport events (unused: we never migrate).
pub const EVQ: usize = 2;

/// virtio-vsock with the hybrid unix-socket backend.
pub struct Vsock {
    cid: u64,
    muxer: Muxer,
}

impl Vsock {
    /// A device for guest `cid` listening on `uds_path`.
    pub fn new(cid: u64, uds_path: &Path) -> std::io::Result<Self> {
        Ok(Vsock {
            cid,
            muxer: Muxer::new(uds_path, cid)?,
        })
    }

    /// The multiplexer (tests drive host events through it).
    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// Consumes every TX packet. Returns true when used entries were added.
    pub fn process_tx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(q) = queues.get_mut(TXQ) else {
            return false;
        };
        let mut used = false;
        while let Some(mut chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            match VsockPacket::<()>::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(pkt) => {
                    let hdr = Hdr {
                        src_cid: pkt.src_cid(),
                        dst_cid: pkt.dst_cid(),
                        src_port: pkt.src_port(),
                        dst_port: pkt.dst_port(),
                        len: pkt.len(),
                        type_: pkt.type_(),
                        op: pkt.op(),
                        flags: pkt.flags(),
                        buf_alloc: pkt.buf_alloc(),
                        fwd_cnt: pkt.fwd_cnt(),
                    };
                    let mut data = Vec::new();
                    if let Some(s) = pkt.data_slice() {
                        data.resize(s.len(), 0);
                        if s.read_slice(&mut data, 0).is_err() {
                            data.clear();
                        }
                    }
                    self.muxer.handle_tx(&hdr, &data);
                }
                Err(e) => tracing::debug!("vsock: bad TX chain: {e}"),
            }
            if q.add_used(mem, head, 0).is_err() {
                break;
            }
            used = true;
        }
        used
    }

    /// Serves ready host sockets, then delivers what that produced.
    pub fn poll_host(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        self.muxer.process_events();
        self.process_rx(queues, mem)
    }

    /// Fills RX buffers with whatever the muxer has for the guest.
    pub fn process_rx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(q) = queues.get_mut(RXQ) else {
            return false;
        };
        let mut used = false;
        while let Some(mut chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let mut pkt =
                match VsockPacket::<()>::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!("vsock: bad RX chain: {e}");
                        if q.add_used(mem, head, 0).is_err() {
                            break;
                        }
                        used = true;
                        continue;
                    }
                };
            let cap = pkt.data_slice().map_or(0, |s| s.len());
            let Some((hdr, data)) = self.muxer.next_rx(cap) else {
                // Nothing to send: give the buffer back for later.
                q.go_to_previous_position();
                break;
            };
            pkt.set_src_cid(hdr.src_cid)
                .set_dst_cid(hdr.dst_cid)
                .set_src_port(hdr.src_port)
                .set_dst_port(hdr.dst_port)
                .set_len(data.len() as u32)
                .set_type(hdr.type_)
                .set_op(hdr.op)
                .set_flags(hdr.flags)
                .set_buf_alloc(hdr.buf_alloc)
                .set_fwd_cnt(hdr.fwd_cnt);
            if let Some(s) = pkt.data_slice() {
                if !data.is_empty() && s.write_slice(&data, 0).is_err() {
                    tracing::warn!("vsock: RX data write failed");
                }
            }
            if q.add_used(mem, head, (PKT_HEADER_SIZE + data.len()) as u32)
                .is_err()
            {
                break;
            }
            used = true;
        }
        used
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::super::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn reset(&mut self) {
        self.muxer.reset();
    }

    fn process_queue(&mut self, idx: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let tx = if idx == TXQ {
            self.process_tx(queues, mem)
        } else {
            false
        };
        // New RX buffers, or TX answers (RESPONSE, RST, credit) to deliver.
        let rx = if idx == RXQ || idx == TXQ {
            self.process_rx(queues, mem)
        } else {
            false
        };
        tx || rx
    }

    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.muxer.epoll_fd()]
    }

    fn host_event(
        &mut self,
        _fd: RawFd,
        _events: EventSet,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        _ops: &mut EventOps,
    ) -> bool {
        self.poll_host(queues, mem)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{op, shutdown, BUF_ALLOC, HOST_CID, TYPE_STREAM};
    use super::*;
    use crate::devices::virtio::testutil::{test_mem, TestQueue};
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::PathBuf;
    use std::time::Duration;
    use vm_memory::GuestAddress;

    const CID: u64 = 3;
    const RX_BUF: u64 = 0x10_0000;
    const RX_BUF_LEN: u32 = 44 + 4096;
    const TX_BUF: u64 = 0x40_0000;

    fn encode(h: &Hdr) -> Vec<u8> {
        let mut v = Vec::with_capacity(44);
        v.extend(h.src_cid.to_le_bytes());
        v.extend(h.dst_cid.to_le_bytes());
        v.extend(h.src_port.to_le_bytes());
        v.extend(h.dst_port.to_le_bytes());
        v.extend(h.len.to_le_bytes());
        v.extend(h.type_.to_le_bytes());
        v.extend(h.op.to_le_bytes());
        v.extend(h.flags.to_le_bytes());
        v.extend(h.buf_alloc.to_le_bytes());
        v.extend(h.fwd_cnt.to_le_bytes());
        v
    }

    fn decode(b: &[u8]) -> Hdr {
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        Hdr {
            src_cid: u64::from_le_bytes(b[0..8].try_into().unwrap()),
            dst_cid: u64::from_le_bytes(b[8..16].try_into().unwrap()),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16::from_le_bytes(b[28..30].try_into().unwrap()),
            op: u16::from_le_bytes(b[30..32].try_into().unwrap()),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    struct Harness {
        mem: GuestMemoryMmap,
        dev: Vsock,
        rx: TestQueue,
        tx: TestQueue,
        queues: Vec<Queue>,
        rx_given: u16,
        rx_seen: u16,
        tx_sent: u16,
        uds: PathBuf,
    }

    impl Harness {
        fn new(tag: &str) -> Self {
            let uds =
                std::env::temp_dir().join(format!("box-vsock-{}-{tag}.sock", std::process::id()));
            let mem = test_mem();
            let rx = TestQueue::new(&mem, 0x1000, 16);
            let tx = TestQueue::new(&mem, 0x4000, 16);
            let ev = TestQueue::new(&mem, 0x7000, 16);
            let queues = vec![rx.queue(), tx.queue(), ev.queue()];
            Harness {
                dev: Vsock::new(CID, &uds).unwrap(),
                mem,
                rx,
                tx,
                queues,
                rx_given: 0,
                rx_seen: 0,
                tx_sent: 0,
                uds,
            }
        }

        fn give_rx(&mut self, n: u16) {
            for _ in 0..n {
                let i = self.rx_given % 16;
                self.rx.set_desc(
                    &self.mem,
                    i,
                    RX_BUF + u64::from(i) * 0x2000,
                    RX_BUF_LEN,
                    2,
                    0,
                );
                self.rx.publish(&self.mem, i);
                self.rx_given += 1;
            }
            self.dev.process_queue(RXQ, &mut self.queues, &self.mem);
        }

        fn send(&mut self, h: Hdr, data: &[u8]) {
            let i = (self.tx_sent * 2) % 16;
            let at = TX_BUF + u64::from(i) * 0x2_0000;
            let h = Hdr {
                len: data.len() as u32,
                ..h
            };
            self.mem.write_slice(&encode(&h), GuestAddress(at)).unwrap();
            if data.is_empty() {
                self.tx.chain(&self.mem, i, &[(at, 44, false)]);
            } else {
                self.mem
                    .write_slice(data, GuestAddress(at + 0x100))
                    .unwrap();
                self.tx.chain(
                    &self.mem,
                    i,
                    &[(at, 44, false), (at + 0x100, data.len() as u32, false)],
                );
            }
            self.tx.publish(&self.mem, i);
            self.tx_sent += 1;
            self.dev.process_queue(TXQ, &mut self.queues, &self.mem);
        }

        fn guest_hdr(&self, guest_port: u32, host_port: u32, op: u16) -> Hdr {
            Hdr {
                src_cid: CID,
                dst_cid: HOST_CID,
                src_port: guest_port,
                dst_port: host_port,
                type_: TYPE_STREAM,
                op,
                buf_alloc: 64 * 1024,
                ..Default::default()
            }
        }

        fn poll(&mut self) {
            // No waiting needed: on unix sockets a connect or a write is in the peer's
            // queue by the time the call returns.
            self.dev.poll_host(&mut self.queues, &self.mem);
        }

        fn recv(&mut self) -> Vec<(Hdr, Vec<u8>)> {
            let mut out = Vec::new();
            while self.rx_seen != self.rx.used_idx(&self.mem) {
                let (id, len) = self.rx.used_elem(&self.mem, self.rx_seen);
                let at = RX_BUF + u64::from(id) * 0x2000;
                let mut b = vec![0u8; len as usize];
                self.mem.read_slice(&mut b, GuestAddress(at)).unwrap();
                let h = decode(&b);
                out.push((h, b[44..].to_vec()));
                self.rx_seen += 1;
            }
            out
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.uds);
        }
    }

    fn read_exact_timeout(s: &mut UnixStream, n: usize) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut b = vec![0u8; n];
        s.read_exact(&mut b).unwrap();
        b
    }

    /// Host connects with CONNECT, guest accepts; returns (host stream, host port).
    fn host_connect(h: &mut Harness, guest_port: u32, guest_buf: u32) -> (UnixStream, u32) {
        let mut s = UnixStream::connect(&h.uds).unwrap();
        s.write_all(format!("CONNECT {guest_port}\n").as_bytes())
            .unwrap();
        h.give_rx(4);
        h.poll();
        let pkts = h.recv();
        assert_eq!(pkts.len(), 1, "{pkts:?}");
        let req = pkts[0].0;
        assert_eq!(req.op, op::REQUEST);
        assert_eq!(
            (req.src_cid, req.dst_cid, req.dst_port),
            (HOST_CID, CID, guest_port)
        );
        assert_eq!(req.buf_alloc, BUF_ALLOC);
        let hp = req.src_port;
        let mut resp = h.guest_hdr(guest_port, hp, op::RESPONSE);
        resp.buf_alloc = guest_buf;
        h.send(resp, &[]);
        let line = format!("OK {hp}\n");
        assert_eq!(read_exact_timeout(&mut s, line.len()), line.as_bytes());
        (s, hp)
    }

    #[test]
    fn host_initiated_connection_echoes_both_ways_and_closes() {
        let mut h = Harness::new("host");
        let (mut s, hp) = host_connect(&mut h, 1234, 64 * 1024);
        h.send(h.guest_hdr(1234, hp, op::RW), b"ping");
        assert_eq!(read_exact_timeout(&mut s, 4), b"ping");
        s.write_all(b"pong").unwrap();
        h.poll();
        let pkts = h.recv();
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].0.op, op::RW);
        assert_eq!(pkts[0].1, b"pong");
        assert_eq!(
            pkts[0].0.fwd_cnt, 4,
            "forwarded count reflects the 4 bytes handed on"
        );
        drop(s);
        h.poll();
        let pkts = h.recv();
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].0.op, op::SHUTDOWN);
        // Host EOF says "no more data from the host", not "the host reads no more".
        assert_eq!(pkts[0].0.flags, shutdown::SEND);
        h.send(h.guest_hdr(1234, hp, op::RST), &[]);
        assert_eq!(h.dev.muxer().connection_count(), 0);
    }

    /// The host half-closes (`shutdown(SHUT_WR)`, as an echo client does after its last
    /// byte): the guest must still be able to answer, and its answer must reach the host
    /// before the connection closes. Found in the nested node: a 1 MiB echo lost its tail.
    #[test]
    fn host_half_close_keeps_the_guest_to_host_direction() {
        let mut h = Harness::new("halfclose");
        h.give_rx(8);
        let (mut s, hp) = host_connect(&mut h, 1234, 64 * 1024);
        s.write_all(b"last").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        h.poll();
        let pkts = h.recv();
        assert_eq!(pkts[0].0.op, op::RW);
        assert_eq!(pkts[0].1, b"last");
        assert_eq!(pkts[1].0.op, op::SHUTDOWN);
        assert_eq!(pkts[1].0.flags, shutdown::SEND);
        // The guest answers after the host's EOF, then closes.
        h.send(h.guest_hdr(1234, hp, op::RW), b"reply");
        assert_eq!(h.dev.muxer().connection_count(), 1);
        let mut sh = h.guest_hdr(1234, hp, op::SHUTDOWN);
        sh.flags = shutdown::RCV | shutdown::SEND;
        h.send(sh, &[]);
        assert_eq!(h.dev.muxer().connection_count(), 0);
        assert_eq!(h.recv()[0].0.op, op::RST);
        let mut got = Vec::new();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"reply");
    }

    /// The guest half-closes while the host keeps its end open: we pass the EOF on exactly
    /// once, and the host socket's own wakeups must not keep the event loop busy.
    #[test]
    fn guest_half_close_is_passed_on_once_and_goes_quiet() {
        let mut h = Harness::new("guesthalf");
        let l = UnixListener::bind(format!("{}_5002", h.uds.display())).unwrap();
        h.give_rx(8);
        h.send(h.guest_hdr(778, 5002, op::REQUEST), &[]);
        assert_eq!(h.recv()[0].0.op, op::RESPONSE);
        let (mut s, _) = l.accept().unwrap();
        h.send(h.guest_hdr(778, 5002, op::RW), b"bye");
        let mut sh = h.guest_hdr(778, 5002, op::SHUTDOWN);
        sh.flags = shutdown::SEND;
        h.send(sh, &[]);
        let mut got = Vec::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"bye");
        assert_eq!(h.dev.muxer().connection_count(), 1);
        // Nothing new happened on the host side: the muxer's epoll must be idle now.
        h.poll();
        let mut fds = [libc::pollfd {
            fd: h.dev.muxer().epoll_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        assert_eq!(n, 0, "the muxer's epoll fd stays readable: a busy loop");
        let _ = std::fs::remove_file(format!("{}_5002", h.uds.display()));
    }

    #[test]
    fn connections_work_under_the_seccomp_filter() {
        let mut h = Harness::new("seccomp");
        let l = UnixListener::bind(format!("{}_5001", h.uds.display())).unwrap();
        let prog = crate::seccomp::vmm_filter().unwrap();
        // The filter binds this thread only; files are removed after it ends
        // (no unlink under the filter).
        let h = std::thread::spawn(move || {
            seccompiler::apply_filter(&prog).unwrap();
            let (mut s, hp) = host_connect(&mut h, 80, 64 * 1024);
            h.send(h.guest_hdr(80, hp, op::RW), b"GET");
            assert_eq!(read_exact_timeout(&mut s, 3), b"GET");
            s.write_all(b"200").unwrap();
            h.poll();
            assert_eq!(h.recv()[0].1, b"200");
            // Guest-initiated: the VMM dials <uds>_5001.
            h.send(h.guest_hdr(1000, 5001, op::REQUEST), &[]);
            assert_eq!(h.recv()[0].0.op, op::RESPONSE);
            let (mut s2, _) = l.accept().unwrap();
            h.send(h.guest_hdr(1000, 5001, op::RW), b"up");
            assert_eq!(read_exact_timeout(&mut s2, 2), b"up");
            h
        })
        .join()
        .unwrap();
        let _ = std::fs::remove_file(format!("{}_5001", h.uds.display()));
    }

    #[test]
    fn guest_initiated_connection_reaches_host_listener() {
        let mut h = Harness::new("guest");
        let l = UnixListener::bind(format!("{}_5000", h.uds.display())).unwrap();
        h.give_rx(4);
        h.send(h.guest_hdr(777, 5000, op::REQUEST), &[]);
        let pkts = h.recv();
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].0.op, op::RESPONSE);
        assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (5000, 777));
        let (mut s, _) = l.accept().unwrap();
        h.send(h.guest_hdr(777, 5000, op::RW), b"hi host");
        assert_eq!(read_exact_timeout(&mut s, 7), b"hi host");
        s.write_all(b"hi guest").unwrap();
        h.poll();
        let pkts = h.recv();
        assert_eq!(pkts[0].1, b"hi guest");
        // Guest closes fully: the connection goes away and we answer RST.
        let mut sh = h.guest_hdr(777, 5000, op::SHUTDOWN);
        sh.flags = shutdown::RCV | shutdown::SEND;
        h.send(sh, &[]);
        assert_eq!(h.dev.muxer().connection_count(), 0);
        assert_eq!(h.recv()[0].0.op, op::RST);
        let _ = std::fs::remove_file(format!("{}_5000", h.uds.display()));
    }

    #[test]
    fn guest_connect_without_listener_gets_rst() {
        let mut h = Harness::new("refused");
        h.give_rx(2);
        h.send(h.guest_hdr(9, 6000, op::REQUEST), &[]);
        let pkts = h.recv();
        assert_eq!(pkts.len(), 1);
        assert_eq!(pkts[0].0.op, op::RST);
        assert_eq!((pkts[0].0.src_port, pkts[0].0.dst_port), (6000, 9));
    }

    #[test]
    fn credit_limits_host_to_guest_flow() {
        let mut h = Harness::new("credit");
        let (mut s, hp) = host_connect(&mut h, 42, 4);
        s.write_all(b"abcdefgh").unwrap();
        h.poll();
        let pkts = h.recv();
        let data: Vec<u8> = pkts
            .iter()
            .filter(|p| p.0.op == op::RW)
            .flat_map(|p| p.1.clone())
            .collect();
        assert_eq!(data, b"abcd", "only the guest's 4 bytes of credit");
        assert!(pkts.iter().any(|p| p.0.op == op::CREDIT_REQUEST));
        let mut cu = h.guest_hdr(42, hp, op::CREDIT_UPDATE);
        cu.buf_alloc = 4;
        cu.fwd_cnt = 4;
        h.send(cu, &[]);
        let pkts = h.recv();
        let data: Vec<u8> = pkts
            .iter()
            .filter(|p| p.0.op == op::RW)
            .flat_map(|p| p.1.clone())
            .collect();
        assert_eq!(data, b"efgh");
    }

    #[test]
    fn guest_overrunning_our_credit_is_reset() {
        let mut h = Harness::new("overrun");
        let (_s, hp) = host_connect(&mut h, 43, 64 * 1024);
        // The host never reads: past the socket buffer, bytes pile up with us
        // until the advertised BUF_ALLOC is exceeded.
        let chunk = vec![7u8; 60 * 1024];
        for _ in 0..((BUF_ALLOC as usize * 4) / chunk.len()) {
            if h.dev.muxer().connection_count() == 0 {
                break;
            }
            h.send(h.guest_hdr(43, hp, op::RW), &chunk);
        }
        assert_eq!(h.dev.muxer().connection_count(), 0);
        assert!(h.recv().iter().any(|p| p.0.op == op::RST));
    }

    #[test]
    fn malformed_packets_are_dropped_or_reset_never_panic() {
        let mut h = Harness::new("bad");
        h.give_rx(8);
        // Wrong source CID: dropped silently.
        let mut bad = h.guest_hdr(1, 2, op::REQUEST);
        bad.src_cid = 99;
        h.send(bad, &[]);
        assert!(h.recv().is_empty());
        // Wrong type: RST.
        let mut dgram = h.guest_hdr(1, 2, op::RW);
        dgram.type_ = 2;
        h.send(dgram, &[]);
        assert_eq!(h.recv()[0].0.op, op::RST);
        // Data for a connection that doesn't exist: RST.
        h.send(h.guest_hdr(5, 6, op::RW), b"x");
        assert_eq!(h.recv()[0].0.op, op::RST);
        // Unknown op on no connection: RST; RST on no connection: nothing.
        h.send(h.guest_hdr(5, 6, 99), &[]);
        assert_eq!(h.recv()[0].0.op, op::RST);
        h.send(h.guest_hdr(5, 6, op::RST), &[]);
        assert!(h.recv().is_empty());

        // Chains the packet parser rejects: consumed with nothing done.
        let used_before = h.tx.used_idx(&h.mem);
        let cases: Vec<Vec<(u64, u32, bool)>> = vec![
            vec![(TX_BUF, 10, false)],                            // short header
            vec![(TX_BUF, 44, true)],                             // write-only header
            vec![(0xffff_ffff_0000, 44, false)],                  // header outside memory
            vec![(TX_BUF, 44, false), (TX_BUF + 0x100, 4, true)], // write-only data
        ];
        for (k, c) in cases.iter().enumerate() {
            let i = (h.tx_sent * 2) % 16;
            let mut hd = h.guest_hdr(1, 2, op::RW);
            hd.len = if k == 3 { 4 } else { 0 };
            h.mem
                .write_slice(&encode(&hd), GuestAddress(TX_BUF))
                .unwrap();
            h.tx.chain(&h.mem, i, c);
            h.tx.publish(&h.mem, i);
            h.tx_sent += 1;
            h.dev.process_queue(TXQ, &mut h.queues, &h.mem);
        }
        // Header claiming a huge payload.
        let mut huge = h.guest_hdr(1, 2, op::RW);
        huge.len = u32::MAX;
        let i = (h.tx_sent * 2) % 16;
        h.mem
            .write_slice(&encode(&huge), GuestAddress(TX_BUF))
            .unwrap();
        h.tx.chain(
            &h.mem,
            i,
            &[(TX_BUF, 44, false), (TX_BUF + 0x100, 16, false)],
        );
        h.tx.publish(&h.mem, i);
        h.tx_sent += 1;
        h.dev.process_queue(TXQ, &mut h.queues, &h.mem);
        assert_eq!(h.tx.used_idx(&h.mem), used_before + 5);
    }

    #[test]
    fn bad_rx_buffers_are_skipped() {
        let mut h = Harness::new("badrx");
        // A read-only RX buffer, then a good one; a refused connect produces one RST.
        h.rx.set_desc(&h.mem, 0, RX_BUF, RX_BUF_LEN, 0, 0);
        h.rx.publish(&h.mem, 0);
        h.rx_given = 1;
        h.send(h.guest_hdr(9, 6001, op::REQUEST), &[]);
        assert_eq!(h.rx.used_idx(&h.mem), 1);
        assert_eq!(h.rx.used_elem(&h.mem, 0), (0, 0));
        h.rx_seen = 1;
        h.give_rx(1);
        assert_eq!(h.recv()[0].0.op, op::RST);
    }

    #[test]
    fn bad_connect_lines_are_refused() {
        let mut h = Harness::new("line");
        let mut s = UnixStream::connect(&h.uds).unwrap();
        s.write_all(b"HELLO 12\n").unwrap();
        h.give_rx(2);
        h.poll();
        assert!(h.recv().is_empty());
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("ERR"), "{out}");
        assert_eq!(h.dev.muxer().connection_count(), 0);
        // An overlong line without newline is dropped too.
        let mut s2 = UnixStream::connect(&h.uds).unwrap();
        s2.write_all(&[b'A'; 200]).unwrap();
        h.poll();
        assert_eq!(h.dev.muxer().connection_count(), 0);
    }

    #[test]
    fn config_space_holds_cid() {
        let h = Harness::new("cfg");
        let mut b = [0u8; 8];
        h.dev.read_config(0, &mut b);
        assert_eq!(u64::from_le_bytes(b), CID);
        let mut b4 = [0u8; 4];
        h.dev.read_config(4, &mut b4);
        assert_eq!(b4, [0; 4]);
    }
}
