//! The virtio-net device model (see the module docs for the design).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::mergeable::MergeableRx;
use super::{iov, tap};
use super::{MAX_FRAME, VNET_HDR_LEN};
use crate::devices::virtio::{read_config_bytes, VirtioDevice};
use crate::event_loop::EventOps;

const RX: usize = 0;
const TX: usize = 1;
const QUEUE_SIZE: u16 = 256;
/// Frames per direction per round: the event thread also serves the other devices.
const BUDGET: usize = 256;
/// `num_buffers` sits at bytes 10..12 of the vnet header.
const NUM_BUFFERS_AT: usize = 10;

fn bit(b: u32) -> u64 {
    1 << b
}

/// Frame counters, for the logs and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct NetStats {
    pub rx_frames: u64,
    pub tx_frames: u64,
    /// Frames from the TAP the guest had no fitting buffer for.
    pub rx_dropped: u64,
    /// Chains the guest got wrong, or frames the TAP would not take.
    pub tx_dropped: u64,
}

/// A virtio-net device on a TAP fd.
pub struct Net {
    tap: OwnedFd,
    /// The TAP takes TUNSETOFFLOAD: checksum and TSO offloads are offered.
    offloads: bool,
    config: [u8; 10],
    /// The device's own epoll (the event loop watches its fd): the TAP while rx is
    /// accepting frames, and `kick` for tx work left over from a round.
    epoll: Epoll,
    kick: EventFd,
    watching: bool,
    active: bool,
    /// The driver took mergeable rx buffers; `mrg` holds the chains in hand.
    mergeable: bool,
    mrg: MergeableRx,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    stats: NetStats,
}

impl Net {
    /// A device on `tap` (configured by [`tap::open`] or [`tap::configure`]) with guest MAC
    /// `mac`. `offloads`: the fd is a real TAP that can be told what the guest accepts.
    pub fn new(tap: OwnedFd, mac: [u8; 6], offloads: bool) -> std::io::Result<Net> {
        let epoll = Epoll::new()?;
        let kick = EventFd::new(libc::EFD_NONBLOCK)?;
        epoll.ctl(
            ControlOperation::Add,
            kick.as_raw_fd(),
            EpollEvent::new(EventSet::IN, kick.as_raw_fd() as u64),
        )?;
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        Ok(Net {
            tap,
            offloads,
            config,
            epoll,
            kick,
            watching: false,
            active: false,
            mergeable: false,
            mrg: MergeableRx::default(),
            rx_buf: vec![0; MAX_FRAME],
            tx_buf: vec![0; MAX_FRAME],
            stats: NetStats::default(),
        })
    }

    pub fn stats(&self) -> NetStats {
        self.stats
    }

    fn set_watch(&mut self, on: bool) {
        if on == self.watching {
            return;
        }
        let fd = self.tap.as_raw_fd();
        let r = if on {
            self.epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, fd as u64),
            )
        } else {
            self.epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
        };
        match r {
            Ok(()) => self.watching = on,
            Err(e) => tracing::warn!("virtio-net: epoll on the TAP: {e}"),
        }
    }

    /// Moves frames from the TAP into the guest's rx buffers, at most [`BUDGET`]. A frame is
    /// read only once a buffer is in hand: with none posted, frames wait in the TAP's own
    /// queue and the TAP is not watched until the guest posts some (its rx notification), so
    /// nothing spins.
    fn deliver_rx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(q) = queues.get_mut(RX) else {
            return false;
        };
        if self.mergeable {
            let d = self.mrg.deliver(self.tap.as_fd(), q, mem, BUDGET);
            self.stats.rx_frames += d.frames;
            self.stats.rx_dropped += d.dropped;
            let watch = self.active && !d.short;
            self.set_watch(watch);
            return d.used;
        }
        let mut used = false;
        for _ in 0..BUDGET {
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                self.set_watch(false);
                return used;
            };
            let head = chain.head_index();
            // A chain that holds any frame takes it straight from the TAP; a smaller one (a
            // driver without TSO posts MTU-sized buffers) through `rx_buf`, so an oversized
            // frame is dropped whole rather than cut.
            let direct = iov::segments(chain.clone(), mem, true).filter(|s| s.total() >= MAX_FRAME);
            let read = match &direct {
                Some(segs) => segs.readv(self.tap.as_fd()),
                None => nix::unistd::read(&self.tap, &mut self.rx_buf),
            };
            let len = match read {
                Ok(n) => n,
                Err(e) => {
                    // The chain was not used: it is the first the next frame takes.
                    q.set_next_avail(q.next_avail().wrapping_sub(1));
                    match e {
                        nix::Error::EINTR => continue,
                        nix::Error::EAGAIN => break,
                        e => {
                            tracing::warn!("virtio-net: reading the TAP: {e}");
                            break;
                        }
                    }
                }
            };
            // No mergeable rx buffers: every frame takes exactly one chain (num_buffers 1).
            let written = if len < VNET_HDR_LEN {
                0
            } else if let Some(segs) = &direct {
                if segs.write_at(mem, NUM_BUFFERS_AT, &1u16.to_le_bytes()) {
                    len as u32
                } else {
                    0
                }
            } else {
                self.rx_buf[NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2]
                    .copy_from_slice(&1u16.to_le_bytes());
                match chain.writer(mem) {
                    Ok(mut w) if w.available_bytes() >= len => {
                        match w.write_all(&self.rx_buf[..len]) {
                            Ok(()) => len as u32,
                            Err(_) => 0,
                        }
                    }
                    _ => 0,
                }
            };
            if written == 0 {
                self.stats.rx_dropped += 1;
            } else {
                self.stats.rx_frames += 1;
            }
            if let Err(e) = q.add_used(mem, head, written) {
                tracing::warn!("virtio-net: cannot complete an rx buffer: {e}");
                return used;
            }
            used = true;
        }
        if self.active {
            self.set_watch(true);
        }
        used
    }

    /// Sends the guest's tx chains to the TAP, at most [`BUDGET`] per round; more waiting
    /// means another round through `kick`.
    fn process_tx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(q) = queues.get_mut(TX) else {
            return false;
        };
        let mut used = false;
        let mut n = 0;
        while let Some(chain) = q.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let sent = match iov::segments(chain.clone(), mem, false) {
                Some(segs) if (VNET_HDR_LEN..=MAX_FRAME).contains(&segs.total()) => {
                    segs.writev(self.tap.as_fd()).is_ok()
                }
                Some(_) => false,
                None => self.send_copied(chain, mem),
            };
            if sent {
                self.stats.tx_frames += 1;
            } else {
                // A full TAP drops the frame, as a full NIC queue would; TCP resends.
                self.stats.tx_dropped += 1;
            }
            if let Err(e) = q.add_used(mem, head, 0) {
                tracing::warn!("virtio-net: cannot complete a tx buffer: {e}");
                break;
            }
            used = true;
            n += 1;
            if n == BUDGET {
                let _ = self.kick.write(1);
                break;
            }
        }
        used
    }

    /// A chain that is not plain (see `iov`): its readable bytes gathered into `tx_buf`.
    fn send_copied(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
    ) -> bool {
        let Ok(mut r) = chain.reader(mem) else {
            return false;
        };
        let len = r.available_bytes();
        (VNET_HDR_LEN..=MAX_FRAME).contains(&len)
            && r.read_exact(&mut self.tx_buf[..len]).is_ok()
            && nix::unistd::write(&self.tap, &self.tx_buf[..len]).is_ok()
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS) | bit(VIRTIO_NET_F_MRG_RXBUF);
        if self.offloads {
            f |= bit(VIRTIO_NET_F_CSUM)
                | bit(VIRTIO_NET_F_HOST_TSO4)
                | bit(VIRTIO_NET_F_HOST_TSO6)
                | bit(VIRTIO_NET_F_GUEST_CSUM)
                | bit(VIRTIO_NET_F_GUEST_TSO4)
                | bit(VIRTIO_NET_F_GUEST_TSO6);
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, acked: u64, _ops: Option<&mut EventOps>) {
        if self.offloads {
            let mut flags = 0;
            if acked & bit(VIRTIO_NET_F_GUEST_CSUM) != 0 {
                flags |= tap::TUN_F_CSUM;
                if acked & bit(VIRTIO_NET_F_GUEST_TSO4) != 0 {
                    flags |= tap::TUN_F_TSO4;
                }
                if acked & bit(VIRTIO_NET_F_GUEST_TSO6) != 0 {
                    flags |= tap::TUN_F_TSO6;
                }
            }
            if let Err(e) = tap::set_offload(self.tap.as_fd(), flags) {
                tracing::warn!("virtio-net: TUNSETOFFLOAD {flags:#x}: {e}");
            }
        }
        self.mergeable = acked & bit(VIRTIO_NET_F_MRG_RXBUF) != 0;
        self.mrg.clear();
        self.active = true;
        self.set_watch(true);
    }

    fn reset(&mut self) {
        self.active = false;
        self.mrg.clear();
        self.set_watch(false);
        if self.offloads {
            let _ = tap::set_offload(self.tap.as_fd(), 0);
        }
    }

    fn process_queue(&mut self, idx: usize, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        if !self.active {
            return false;
        }
        match idx {
            RX => self.deliver_rx(queues, mem),
            TX => self.process_tx(queues, mem),
            _ => false,
        }
    }

    fn host_fds(&self) -> Vec<RawFd> {
        vec![self.epoll.as_raw_fd()]
    }

    fn host_event(
        &mut self,
        _fd: RawFd,
        _events: EventSet,
        queues: &mut [Queue],
        mem: &GuestMemoryMmap,
        _ops: &mut EventOps,
    ) -> bool {
        // Harvest the ready list, or the epoll fd stays readable for members no longer ready.
        let mut events = [EpollEvent::default(); 4];
        let _ = self.epoll.wait(0, &mut events);
        let _ = self.kick.read();
        if !self.active {
            return false;
        }
        let tx = self.process_tx(queues, mem);
        let rx = self.deliver_rx(queues, mem);
        tx || rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::testutil::{test_mem, TestQueue};
    use std::os::unix::net::UnixDatagram;
    use vm_memory::{Bytes, GuestAddress};

    const MAC: [u8; 6] = [0x02, 0xb0, 0x0c, 0, 0, 1];
    const RXQ: u64 = 0x1000;
    const TXQ: u64 = 0x8000;
    const BUF: u64 = 0x10_0000;

    /// A device, the host end of its "TAP", its queues, guest memory, and the rx and tx
    /// queues' layouts.
    type Fixture = (
        Net,
        UnixDatagram,
        Vec<Queue>,
        GuestMemoryMmap,
        TestQueue,
        TestQueue,
    );

    /// A device whose "TAP" is one end of a datagram socketpair (frames keep their
    /// boundaries, as on a TAP); the other end is the host side.
    fn device() -> Fixture {
        device_with(16, 0)
    }

    /// A device with an rx queue of `rx_size` whose driver acked `acked`.
    fn device_with(rx_size: u16, acked: u64) -> Fixture {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut net = Net::new(OwnedFd::from(a), MAC, false).unwrap();
        let mem = test_mem();
        let rx = TestQueue::new(&mem, RXQ, rx_size);
        let tx = TestQueue::new(&mem, TXQ, 16);
        let queues = vec![rx.queue(), tx.queue()];
        net.activate(acked, None);
        (net, b, queues, mem, rx, tx)
    }

    fn frame(n: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN];
        f.extend(std::iter::repeat_n(fill, n));
        f
    }

    fn epoll_readable(net: &Net) -> bool {
        let mut fds = [libc::pollfd {
            fd: net.epoll.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll(2) on one valid pollfd, no timeout.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) == 1 }
    }

    fn host_event(net: &mut Net, q: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        // EventOps is only handed through; this device never uses it.
        let epfd = Epoll::new().unwrap();
        let mut ops = EventOps::for_tests(&epfd);
        net.host_event(0, EventSet::IN, q, mem, &mut ops)
    }

    #[test]
    fn config_space_has_the_mac_and_link_up() {
        let (net, ..) = device();
        let mut c = [0u8; 10];
        net.read_config(0, &mut c);
        assert_eq!(&c[..6], &MAC);
        assert_eq!(u16::from_le_bytes([c[6], c[7]]), 1);
        assert_eq!(net.features() & bit(VIRTIO_NET_F_GUEST_TSO4), 0);
    }

    #[test]
    fn tx_sends_each_chain_as_one_frame_and_survives_hostile_chains() {
        let (mut net, host, mut q, mem, _rx, tx) = device();
        let f = frame(100, 0xab);
        mem.write_slice(&f[..8], GuestAddress(BUF)).unwrap();
        mem.write_slice(&f[8..], GuestAddress(BUF + 0x1000))
            .unwrap();
        // 0: a good frame split over two descriptors.
        tx.chain(
            &mem,
            0,
            &[(BUF, 8, false), (BUF + 0x1000, (f.len() - 8) as u32, false)],
        );
        tx.publish(&mem, 0);
        // 2: shorter than the vnet header.
        tx.chain(&mem, 2, &[(BUF, 4, false)]);
        tx.publish(&mem, 2);
        // 3: points outside guest memory.
        tx.chain(&mem, 3, &[(1 << 40, 64, false)]);
        tx.publish(&mem, 3);
        // 4: longer than any frame.
        tx.chain(&mem, 4, &[(BUF, (MAX_FRAME + 1) as u32, false)]);
        tx.publish(&mem, 4);
        // 5: a loop (descriptor 5 -> 5): the walk stops after the queue size, so it costs
        // one bounded frame of guest bytes (the guest could send any frame anyway).
        tx.set_desc(&mem, 5, BUF, 64, crate::devices::virtio::testutil::NEXT, 5);
        tx.publish(&mem, 5);
        // 6: good again.
        tx.chain(&mem, 6, &[(BUF, f.len() as u32, false)]);
        tx.publish(&mem, 6);
        mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        assert!(net.process_queue(TX, &mut q, &mem));
        assert_eq!(tx.used_idx(&mem), 6, "every chain is returned");
        let mut got = vec![0u8; MAX_FRAME];
        let n = host.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &f[..], "first frame, reassembled");
        let n = host.recv(&mut got).unwrap();
        assert_eq!(n, 16 * 64, "the loop, bounded by the queue size");
        let n = host.recv(&mut got).unwrap();
        assert_eq!(&got[..n], &f[..], "last frame");
        assert!(host.recv(&mut got).is_err(), "nothing else reached the TAP");
        assert_eq!(
            net.stats(),
            NetStats {
                tx_frames: 3,
                tx_dropped: 3,
                ..Default::default()
            }
        );
    }

    #[test]
    fn rx_fills_a_posted_buffer_and_marks_one_buffer() {
        let (mut net, host, mut q, mem, rx, _tx) = device();
        rx.chain(&mem, 0, &[(BUF, 4096, true)]);
        rx.publish(&mem, 0);
        let f = frame(60, 0x5a);
        host.send(&f).unwrap();
        assert!(host_event(&mut net, &mut q, &mem));
        assert_eq!(rx.used_idx(&mem), 1);
        assert_eq!(rx.used_elem(&mem, 0), (0, f.len() as u32));
        let mut got = vec![0u8; f.len()];
        mem.read_slice(&mut got, GuestAddress(BUF)).unwrap();
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
    }

    #[test]
    fn rx_without_buffers_stops_watching_then_resumes_on_the_guests_notification() {
        let (mut net, host, mut q, mem, rx, _tx) = device();
        host.send(&frame(60, 1)).unwrap();
        host.send(&frame(60, 2)).unwrap();
        assert!(
            !host_event(&mut net, &mut q, &mem),
            "no buffer, nothing used"
        );
        // The frame in hand waits; the TAP is off the epoll: no event comes back, no spin.
        assert!(!epoll_readable(&net), "the device would spin");
        rx.chain(&mem, 0, &[(BUF, 4096, true)]);
        rx.publish(&mem, 0);
        assert!(
            net.process_queue(RX, &mut q, &mem),
            "the waiting frame goes first"
        );
        let mut b = [0u8; 1];
        mem.read_slice(&mut b, GuestAddress(BUF + VNET_HDR_LEN as u64))
            .unwrap();
        assert_eq!(b[0], 1);
        // The second frame has no buffer again: waiting, not lost.
        assert!(!epoll_readable(&net));
        rx.chain(&mem, 1, &[(BUF + 0x2000, 4096, true)]);
        rx.publish(&mem, 1);
        assert!(net.process_queue(RX, &mut q, &mem));
        mem.read_slice(&mut b, GuestAddress(BUF + 0x2000 + VNET_HDR_LEN as u64))
            .unwrap();
        assert_eq!(b[0], 2);
        assert_eq!(net.stats().rx_frames, 2);
        // A buffer posted (the guest's notification finds the TAP empty) and the TAP is
        // watched again: a new frame raises the epoll.
        rx.chain(&mem, 2, &[(BUF + 0x4000, 4096, true)]);
        rx.publish(&mem, 2);
        assert!(!net.process_queue(RX, &mut q, &mem), "no frame yet");
        assert!(!epoll_readable(&net));
        host.send(&frame(60, 3)).unwrap();
        assert!(epoll_readable(&net));
    }

    #[test]
    fn rx_reads_straight_into_a_big_chain_whose_header_is_split() {
        let (mut net, host, mut q, mem, rx, _tx) = device();
        // A driver may cut the header anywhere: num_buffers straddles the two descriptors.
        rx.chain(
            &mem,
            0,
            &[(BUF, 11, true), (BUF + 0x1000, MAX_FRAME as u32, true)],
        );
        rx.publish(&mem, 0);
        let mut f = patterned(3000);
        f[NUM_BUFFERS_AT] = 0xee;
        f[NUM_BUFFERS_AT + 1] = 0xee;
        host.send(&f).unwrap();
        assert!(host_event(&mut net, &mut q, &mem));
        assert_eq!(rx.used_elem(&mem, 0), (0, f.len() as u32));
        let mut got = vec![0u8; f.len()];
        mem.read_slice(&mut got[..11], GuestAddress(BUF)).unwrap();
        mem.read_slice(&mut got[11..], GuestAddress(BUF + 0x1000))
            .unwrap();
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
        assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
        assert_eq!(net.stats().rx_frames, 1);
    }

    #[test]
    fn rx_into_a_too_small_or_read_only_buffer_drops_only_that_frame() {
        let (mut net, host, mut q, mem, rx, _tx) = device();
        rx.chain(&mem, 0, &[(BUF, 16, true)]);
        rx.publish(&mem, 0);
        rx.chain(&mem, 1, &[(BUF + 0x1000, 4096, false)]);
        rx.publish(&mem, 1);
        rx.chain(&mem, 2, &[(BUF + 0x2000, 4096, true)]);
        rx.publish(&mem, 2);
        for fill in [1u8, 2, 3] {
            host.send(&frame(100, fill)).unwrap();
        }
        assert!(host_event(&mut net, &mut q, &mem));
        assert_eq!(rx.used_idx(&mem), 3);
        assert_eq!(rx.used_elem(&mem, 0).1, 0);
        assert_eq!(rx.used_elem(&mem, 1).1, 0);
        assert_eq!(rx.used_elem(&mem, 2).1, 112);
        assert_eq!(net.stats().rx_dropped, 2);
        assert_eq!(net.stats().rx_frames, 1);
    }

    #[test]
    fn a_tx_flood_is_served_in_bounded_rounds() {
        let (a, host) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut net = Net::new(OwnedFd::from(a), MAC, false).unwrap();
        let mem = test_mem();
        let size = 1024u16;
        let tx = TestQueue::new(&mem, TXQ, size);
        let rx = TestQueue::new(&mem, RXQ, 16);
        let mut q = vec![rx.queue(), tx.queue()];
        net.activate(0, None);
        let f = frame(20, 7);
        mem.write_slice(&f, GuestAddress(BUF)).unwrap();
        let chains = BUDGET as u16 + 10;
        for i in 0..chains {
            tx.chain(&mem, i, &[(BUF, f.len() as u32, false)]);
            tx.publish(&mem, i);
        }
        assert!(net.process_queue(TX, &mut q, &mem));
        assert_eq!(tx.used_idx(&mem), BUDGET as u16, "one round is bounded");
        assert!(epoll_readable(&net), "the rest is scheduled, not forgotten");
        assert!(host_event(&mut net, &mut q, &mem));
        assert_eq!(tx.used_idx(&mem), chains);
        // A unix datagram pair queues only a few frames: the rest met a "full TAP" and was
        // dropped, each counted, none left in the queue.
        let s = net.stats();
        assert_eq!(s.tx_frames + s.tx_dropped, u64::from(chains));
        assert!(s.tx_frames > 0);
        drop(host);
    }

    /// A device whose driver took mergeable rx buffers, with a 64-entry rx queue.
    fn mergeable_device() -> (Net, UnixDatagram, Vec<Queue>, GuestMemoryMmap, TestQueue) {
        let (net, host, q, mem, rx, _tx) = device_with(64, bit(VIRTIO_NET_F_MRG_RXBUF));
        (net, host, q, mem, rx)
    }

    /// Posts one-descriptor buffers of `len` bytes, heads `heads`, at BUF + head * 4 KiB.
    fn post(mem: &GuestMemoryMmap, rx: &TestQueue, heads: std::ops::Range<u16>, len: u32) {
        for h in heads {
            rx.chain(mem, h, &[(BUF + u64::from(h) * 0x1000, len, true)]);
            rx.publish(mem, h);
        }
    }

    fn patterned(n: usize) -> Vec<u8> {
        let mut f = frame(n, 0);
        for (i, b) in f.iter_mut().enumerate().skip(VNET_HDR_LEN) {
            *b = (i % 251) as u8;
        }
        f
    }

    #[test]
    fn mergeable_rx_spreads_a_frame_over_small_buffers() {
        let (mut net, host, mut q, mem, rx) = mergeable_device();
        post(&mem, &rx, 0..40, 2048);
        let f = patterned(5000);
        host.send(&f).unwrap();
        assert!(host_event(&mut net, &mut q, &mem));
        assert_eq!(rx.used_idx(&mem), 3);
        assert_eq!(rx.used_elem(&mem, 0), (0, 2048));
        assert_eq!(rx.used_elem(&mem, 1), (1, 2048));
        assert_eq!(rx.used_elem(&mem, 2), (2, (f.len() - 4096) as u32));
        let mut got = vec![0u8; f.len()];
        for (k, part) in got.chunks_mut(2048).enumerate() {
            mem.read_slice(part, GuestAddress(BUF + k as u64 * 0x1000))
                .unwrap();
        }
        assert_eq!(u16::from_le_bytes([got[10], got[11]]), 3, "num_buffers");
        assert_eq!(&got[VNET_HDR_LEN..], &f[VNET_HDR_LEN..]);
        // The next frame starts in the next buffer, alone.
        let g = patterned(60);
        host.send(&g).unwrap();
        assert!(host_event(&mut net, &mut q, &mem));
        assert_eq!(rx.used_elem(&mem, 3), (3, g.len() as u32));
        let mut hdr = [0u8; 2];
        mem.read_slice(&mut hdr, GuestAddress(BUF + 3 * 0x1000 + 10))
            .unwrap();
        assert_eq!(u16::from_le_bytes(hdr), 1);
        assert_eq!(net.stats().rx_frames, 2);
    }

    #[test]
    fn mergeable_rx_waits_until_the_buffers_hold_any_frame() {
        let (mut net, host, mut q, mem, rx) = mergeable_device();
        post(&mem, &rx, 0..4, 2048);
        host.send(&patterned(100)).unwrap();
        assert!(
            !host_event(&mut net, &mut q, &mem),
            "8 KiB cannot hold a 64 KiB frame"
        );
        assert!(!epoll_readable(&net), "the TAP is not watched: no spin");
        assert_eq!(rx.used_idx(&mem), 0);
        post(&mem, &rx, 4..40, 2048);
        assert!(
            net.process_queue(RX, &mut q, &mem),
            "the guest's notification"
        );
        assert_eq!(rx.used_elem(&mem, 0), (0, 112));
        assert_eq!(net.stats().rx_frames, 1);
    }

    #[test]
    fn mergeable_rx_returns_bad_chains_empty_and_keeps_going() {
        let (mut net, host, mut q, mem, rx) = mergeable_device();
        // A device-readable buffer and one outside guest memory among good ones.
        rx.chain(&mem, 0, &[(BUF, 2048, false)]);
        rx.publish(&mem, 0);
        rx.chain(&mem, 1, &[(1 << 40, 2048, true)]);
        rx.publish(&mem, 1);
        post(&mem, &rx, 2..40, 2048);
        host.send(&patterned(100)).unwrap();
        assert!(host_event(&mut net, &mut q, &mem));
        assert_eq!(rx.used_idx(&mem), 3);
        assert_eq!(rx.used_elem(&mem, 0), (0, 0));
        assert_eq!(rx.used_elem(&mem, 1), (1, 0));
        assert_eq!(rx.used_elem(&mem, 2), (2, 112));
        assert_eq!(net.stats().rx_frames, 1);
    }
}
