//! The device event loop: one epoll on the VMM's main thread serving every
//! device's eventfds and sockets, plus the vCPUs' "VM stopped" event.

use std::os::unix::io::RawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::error::{Error, Result};

/// Lets a handler change which of its fds are watched.
pub struct EventOps<'a> {
    epoll: &'a Epoll,
    handler: u32,
}

impl EventOps<'_> {
    fn token(&self, fd: RawFd) -> u64 {
        (u64::from(self.handler) << 32) | u64::from(fd as u32)
    }

    /// Watches `fd` for `events`; re-adding an fd updates its event mask.
    pub fn add(&mut self, fd: RawFd, events: EventSet) -> std::io::Result<()> {
        let ev = EpollEvent::new(events, self.token(fd));
        match self.epoll.ctl(ControlOperation::Add, fd, ev) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                self.epoll.ctl(ControlOperation::Modify, fd, ev)
            }
            r => r,
        }
    }

    /// Stops watching `fd` (before closing it).
    pub fn remove(&mut self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

#[cfg(test)]
impl<'a> EventOps<'a> {
    /// Ops on a scratch epoll, for device tests that hand them through.
    pub fn for_tests(epoll: &'a Epoll) -> Self {
        EventOps { epoll, handler: 0 }
    }
}

/// A device back end driven by the event loop.
pub trait EventHandler: Send {
    /// Registers the handler's initial fds.
    fn init(&mut self, ops: &mut EventOps);
    /// Handles readiness of one of its fds.
    fn handle(&mut self, fd: RawFd, events: EventSet, ops: &mut EventOps);
}

/// Runs handlers until `stop` becomes readable.
pub struct EventLoop {
    epoll: Epoll,
    handlers: Vec<Box<dyn EventHandler>>,
}

const STOP_TOKEN: u64 = u64::MAX;

impl EventLoop {
    /// An empty loop.
    pub fn new() -> Result<Self> {
        Ok(EventLoop {
            epoll: Epoll::new().map_err(Error::io("epoll_create"))?,
            handlers: Vec::new(),
        })
    }

    /// Adds a handler and lets it register its fds.
    pub fn add_handler(&mut self, mut h: Box<dyn EventHandler>) {
        let idx = self.handlers.len() as u32;
        h.init(&mut EventOps {
            epoll: &self.epoll,
            handler: idx,
        });
        self.handlers.push(h);
    }

    /// Serves events until `stop` is signalled.
    pub fn run_until(&mut self, stop: &EventFd) -> Result<()> {
        use std::os::unix::io::AsRawFd;
        self.epoll
            .ctl(
                ControlOperation::Add,
                stop.as_raw_fd(),
                EpollEvent::new(EventSet::IN, STOP_TOKEN),
            )
            .map_err(Error::io("epoll_ctl(stop)"))?;
        let mut events = vec![EpollEvent::default(); 64];
        loop {
            let n = match self.epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("epoll_wait")(e)),
            };
            for ev in &events[..n] {
                let token = ev.data();
                if token == STOP_TOKEN {
                    return Ok(());
                }
                let idx = (token >> 32) as u32;
                let fd = (token & 0xffff_ffff) as u32 as RawFd;
                if let Some(h) = self.handlers.get_mut(idx as usize) {
                    h.handle(
                        fd,
                        ev.event_set(),
                        &mut EventOps {
                            epoll: &self.epoll,
                            handler: idx,
                        },
                    );
                }
            }
        }
    }
}
