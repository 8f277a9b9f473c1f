//! PID 1 gets no default signal handlers: the signals it cares about are blocked in every
//! thread and read from a signalfd by one supervision thread.

use std::sync::Arc;

use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use tokio::sync::{mpsc, watch};

use super::reaper::Registry;

const HANDLED: [Signal; 7] = [
    Signal::SIGCHLD,
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
];

fn handled_set() -> SigSet {
    let mut set = SigSet::empty();
    for s in HANDLED {
        set.add(s);
    }
    set
}

/// Blocks the handled signals in the calling thread; call before any other thread starts so
/// that every thread inherits the mask (a signal delivered to an unblocking thread would be
/// lost to the signalfd).
pub fn block() -> nix::Result<()> {
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&handled_set()), None)
}

/// Starts the supervision thread: SIGCHLD drives the reaper; SIGTERM and SIGINT ask for an
/// orderly shutdown. `children_left` is refreshed after every reaping round.
pub fn spawn_supervisor(
    registry: Arc<Registry>,
    shutdown: mpsc::UnboundedSender<ShutdownCause>,
    children_left: watch::Sender<bool>,
) -> std::io::Result<()> {
    let sfd = SignalFd::with_flags(&handled_set(), SfdFlags::SFD_CLOEXEC)?;
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            // Children may have exited before the signalfd existed: the pending SIGCHLD is
            // still delivered to it, but reap once anyway so nothing waits on a lost wakeup.
            children_left.send_replace(registry.reap_exited());
            loop {
                let info = match sfd.read_signal() {
                    Ok(Some(info)) => info,
                    Ok(None) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::error!("signalfd read failed, reaper stops: {e}");
                        return;
                    }
                };
                match Signal::try_from(info.ssi_signo as i32) {
                    Ok(Signal::SIGCHLD) => {
                        children_left.send_replace(registry.reap_exited());
                    }
                    // Only from outside the guest's processes (the kernel, or the host in
                    // host-process mode, both seen as pid 0): a container's `kill -TERM 1`
                    // must not shut its sandbox down.
                    Ok(Signal::SIGTERM) | Ok(Signal::SIGINT) if info.ssi_pid == 0 => {
                        let _ = shutdown.send(ShutdownCause::Signal);
                    }
                    Ok(s @ (Signal::SIGTERM | Signal::SIGINT)) => {
                        tracing::warn!("ignoring {s} from pid {} in the guest", info.ssi_pid);
                    }
                    Ok(other) => tracing::debug!("ignoring {other}"),
                    Err(_) => {}
                }
            }
        })?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownCause {
    Signal,
    Request { grace_ms: u32 },
}
