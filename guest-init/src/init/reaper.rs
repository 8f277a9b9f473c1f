//! The reaper registry: the only code in guest-init that waits for children.
//!
//! Every child spawned on purpose is registered under the registry lock held across `fork`,
//! so a child that exits at once cannot be looked up before it is registered. One loop, woken
//! by SIGCHLD, peeks at an exited child with `waitid(P_ALL, WEXITED | WNOWAIT)`, routes its
//! status to the registered owner, and only then reaps exactly that pid. Orphans reparented to
//! PID 1 are reaped and dropped. Nothing else calls `wait*`: a second waiter would steal
//! exit codes (the seeds' bogus `exit 0` for `exec false`).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use nix::errno::Errno;
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::api::exit_status_code;

/// How a child ended, as routed to its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    /// containerd's convention: the exit code, or 128+n for signal n.
    pub status: u32,
    pub exited_at: SystemTime,
}

/// Called by the reaper, under the registry lock and before the pid is reaped, so that the
/// owner marks the process exited while the pid cannot yet be reused. Must not block.
pub type Route = Box<dyn FnOnce(Exit) + Send>;

#[derive(Default)]
pub struct Registry {
    routes: Mutex<HashMap<i32, Route>>,
    orphans_reaped: std::sync::atomic::AtomicU64,
}

/// The registry lock, held by a spawner across `fork` until the child is registered.
pub struct SpawnGuard<'a>(MutexGuard<'a, HashMap<i32, Route>>);

impl SpawnGuard<'_> {
    pub fn register(&mut self, pid: Pid, route: Route) {
        self.0.insert(pid.as_raw(), route);
    }
}

impl Registry {
    pub fn lock_for_spawn(&self) -> SpawnGuard<'_> {
        SpawnGuard(self.lock())
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Route>> {
        // A panic while holding the lock leaves the map consistent (inserts and removes are
        // single operations), so a poisoned lock is still usable.
        self.routes.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn orphans_reaped(&self) -> u64 {
        self.orphans_reaped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reaps every child that has exited so far and routes each status. Returns whether any
    /// child remains (false once the kernel says ECHILD).
    pub fn reap_exited(&self) -> bool {
        loop {
            let peek = waitid(
                Id::All,
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG,
            );
            let (pid, status) = match peek {
                Ok(WaitStatus::Exited(pid, code)) => (pid, exit_status_code(Some(code), None)),
                Ok(WaitStatus::Signaled(pid, sig, _)) => {
                    (pid, exit_status_code(None, Some(sig as i32)))
                }
                Ok(WaitStatus::StillAlive) => return true,
                // WEXITED only: other states cannot be reported; look again.
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(Errno::ECHILD) => return false,
                Err(e) => {
                    tracing::error!("waitid(P_ALL, WNOWAIT) failed: {e}");
                    return true;
                }
            };
            let exit = Exit {
                pid: pid.as_raw(),
                status,
                exited_at: SystemTime::now(),
            };
            let mut routes = self.lock();
            match routes.remove(&pid.as_raw()) {
                Some(route) => route(exit),
                None => {
                    self.orphans_reaped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::debug!(pid = pid.as_raw(), status, "reaped an orphan");
                }
            }
            // Reap exactly the pid that was routed, still under the lock.
            if let Err(e) = waitid(Id::Pid(pid), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
                tracing::warn!(pid = pid.as_raw(), "reaping routed child: {e}");
            }
        }
    }
}

/// Whether init still has children, refreshed after every reaping round; shutdown waits on it.
pub type ChildrenLeft = watch::Receiver<bool>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    // The reaper's contract against real children of the test process: a child registered
    // under the lock gets its own status, even when it exits before the spawner returns.
    // (Nothing else in this test binary forks, so waiting on P_ALL is safe here.)
    #[test]
    fn routes_each_registered_child_its_own_status() {
        let reg = Registry::default();
        let (tx, rx) = mpsc::channel();
        for code in [0, 1, 7, 255] {
            let mut guard = reg.lock_for_spawn();
            // SAFETY: the child only calls the async-signal-safe `_exit`.
            match unsafe { nix::unistd::fork() }.unwrap() {
                nix::unistd::ForkResult::Child => {
                    // SAFETY: `_exit` is async-signal-safe and ends the forked child at once.
                    unsafe { libc::_exit(code) }
                }
                nix::unistd::ForkResult::Parent { child } => {
                    let tx = tx.clone();
                    guard.register(child, Box::new(move |e: Exit| tx.send((code, e)).unwrap()));
                }
            }
        }
        let mut seen = 0;
        while seen < 4 {
            reg.reap_exited();
            while let Ok((code, exit)) = rx.try_recv() {
                assert_eq!(exit.status, code as u32);
                seen += 1;
            }
            if seen < 4 {
                // Wait for the next child to exit without reaping it.
                let _ = waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT);
            }
        }
        assert!(!reg.reap_exited(), "no child may be left behind");
    }
}
