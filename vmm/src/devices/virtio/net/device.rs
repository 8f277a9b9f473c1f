//! The virtio-net device model (see the module docs for the design).

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::tap;
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
    /// A frame read from the TAP that found no guest buffer yet (its length in `rx_buf`).
    rx_pending: Option<usize>,
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
            rx_pending: None,
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

    /// Moves frames from the TAP into the guest's rx buffers, at most [`BUDGET`]. With no
    /// buffer posted, the frame in hand waits and the TAP is no longer watched until the
    /// guest posts some (its rx notification), so nothing spins.
    fn deliver_rx(&mut self, queues: &mut [Queue], mem: &GuestMemoryMmap) -> bool {
        let Some(q) = queues.get_mut(RX) else {
            return false;
        };
        let mut used = false;
        for _ in 0..BUDGET {
            let len = match self.rx_pending.take() {
                Some(len) => len,
                None => match nix::unistd::read(&self.tap, &mut self.rx_buf) {
                    Ok(n) => n,
                    Err(nix::Error::EAGAIN) => break,
                    Err(nix::Error::EINTR) => continue,
                    Err(e) => {
                        tracing::warn!("virtio-net: reading the TAP: {e}");
                        break;
                    }
                },
            };
            if len < VNET_HDR_LEN {
                self.stats.rx_dropped += 1;
                continue;
            }
            let Some(chain) = q.pop_descriptor_chain(mem) else {
                self.rx_pending = Some(len);
                self.set_watch(false);
                return used;
            };
            let head = chain.head_index();
            // No mergeable rx buffers: every frame takes exactly one chain.
            self.rx_buf[NUM_BUFFERS_AT..NUM_BUFFERS_AT + 2].copy_from_slice(&1u16.to_le_bytes());
            let written = match chain.writer(mem) {
                Ok(mut w) if w.available_bytes() >= len => match w.write_all(&self.rx_buf[..len]) {
                    Ok(()) => len as u32,
                    Err(_) => 0,
                },
                _ => 0,
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
            let frame = match chain.reader(mem) {
                Ok(mut r) => {
                    let len = r.available_bytes();
                    if (VNET_HDR_LEN..=MAX_FRAME).contains(&len)
                        && r.read_exact(&mut self.tx_buf[..len]).is_ok()
                    {
                        Some(len)
                    } else {
                        None
                    }
                }
                Err(_) => None,
            };
            match frame.map(|len| nix::unistd::write(&self.tap, &self.tx_buf[..len])) {
                Some(Ok(_)) => self.stats.tx_frames += 1,
                // A full TAP drops the frame, as a full NIC queue would; TCP resends.
                Some(Err(_)) | None => self.stats.tx_dropped += 1,
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
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let mut f = bit(VIRTIO_NET_F_MAC) | bit(VIRTIO_NET_F_STATUS);
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
        self.active = true;
        self.set_watch(true);
    }

    fn reset(&mut self) {
        self.active = false;
        self.set_watch(false);
        self.rx_pending = None;
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

    /// A device whose "TAP" is one end of a datagram socketpair (frames keep their
    /// boundaries, as on a TAP); the other end is the host side.
    fn device() -> (
        Net,
        UnixDatagram,
        Vec<Queue>,
        GuestMemoryMmap,
        TestQueue,
        TestQueue,
    ) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut net = Net::new(OwnedFd::from(a), MAC, false).unwrap();
        let mem = test_mem();
        let rx = TestQueue::new(&mem, RXQ, 16);
        let tx = TestQueue::new(&mem, TXQ, 16);
        let queues = vec![rx.queue(), tx.queue()];
        net.activate(0, None);
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
        // Buffers left and the TAP watched again: a new frame raises the epoll.
        rx.chain(&mem, 2, &[(BUF + 0x4000, 4096, true)]);
        rx.publish(&mem, 2);
        host.send(&frame(60, 3)).unwrap();
        assert!(epoll_readable(&net));
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
}
