//! Host processes of a sandbox: spawning them detached, reaping only our own children, and
//! following processes that a previous `box` command spawned.
//!
//! Reaping is scoped: [`ChildRegistry`] waits on exactly the pids it spawned (`waitpid(pid)`
//! through [`std::process::Child::wait`], one watcher thread per child). Nothing here waits on
//! `-1`, so exit codes of other children of the process (a `Command` of the caller, a test
//! harness) are never stolen.
//!
//! A process spawned by an earlier `box` invocation is no child of ours: it is followed through
//! a [`ProcRef`] (pid + start time, so a recycled pid is never mistaken for it) and a pidfd.

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{ChildStdout, Command};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// A process identity that survives pid reuse: its pid and its start time (clock ticks since
/// boot, field 22 of `/proc/<pid>/stat`).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcRef {
    pub pid: i32,
    pub start_time: u64,
}

fn stat_fields(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may contain anything; fields follow the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // `rest` starts at field 3 (state); start time is field 22.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

impl ProcRef {
    /// The process with this pid as it is now.
    pub fn of(pid: i32) -> Option<ProcRef> {
        stat_fields(pid).map(|(_, start_time)| ProcRef { pid, start_time })
    }

    /// Still the same process, and not yet exited (a zombie counts as exited).
    pub fn is_alive(&self) -> bool {
        matches!(stat_fields(self.pid), Some((state, start))
            if start == self.start_time && !matches!(state, 'Z' | 'X' | 'x'))
    }

    /// Sends `sig` if the process is still this one.
    pub fn signal(&self, sig: i32) -> bool {
        if !self.is_alive() {
            return false;
        }
        // SAFETY: kill(2) with a pid we verified a moment ago; no memory is involved.
        unsafe { libc::kill(self.pid, sig) == 0 }
    }

    /// Waits until the process exited, at most `limit`; true if it did. Uses a pidfd, so it
    /// works for processes that are not our children and waits on nothing.
    pub fn wait_gone(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let pidfd = pidfd_open(self.pid);
        // The pidfd may have been opened on a recycled pid: check identity after opening.
        if !self.is_alive() {
            return true;
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return !self.is_alive();
            }
            match &pidfd {
                Some(fd) => {
                    let mut fds = [nix::poll::PollFd::new(
                        fd.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    let ms = left.as_millis().min(60_000) as u16;
                    let _ = nix::poll::poll(&mut fds, ms);
                }
                // No pidfd support: a short poll of /proc is the fallback.
                None => std::thread::sleep(left.min(Duration::from_millis(20))),
            }
            if !self.is_alive() {
                return true;
            }
        }
    }
}

fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open(2) takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Some(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// How a child ended: its exit code, or 128+n for signal n.
pub type ExitCode = i32;

/// The children this library spawned, each reaped by its own watcher (`waitpid(pid)`).
pub struct ChildRegistry {
    children: Mutex<HashMap<i32, watch::Receiver<Option<ExitCode>>>>,
}

/// A spawned child: its identity and a receiver that turns `Some(code)` when it was reaped.
#[derive(Clone, Debug)]
pub struct Spawned {
    pub proc_ref: ProcRef,
    pub exit: watch::Receiver<Option<ExitCode>>,
}

impl Spawned {
    pub fn exited(&self) -> Option<ExitCode> {
        *self.exit.borrow()
    }

    /// Waits for the exit, at most `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitCode> {
        let r = tokio::time::timeout(limit, self.exit.wait_for(|e| e.is_some()))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|code| *code));
        r.or_else(|| self.exited())
    }
}

impl ChildRegistry {
    pub fn global() -> &'static ChildRegistry {
        static REG: OnceLock<ChildRegistry> = OnceLock::new();
        REG.get_or_init(|| ChildRegistry {
            children: Mutex::new(HashMap::new()),
        })
    }

    /// Spawns `cmd` in a new session (so it survives this process and no terminal signal of
    /// ours reaches it) and starts its watcher.
    /// The child's stdout is returned when `cmd` asked for a pipe.
    pub fn spawn_detached(
        &self,
        cmd: &mut Command,
    ) -> std::io::Result<(Spawned, Option<ChildStdout>)> {
        // SAFETY: setsid(2) is async-signal-safe; the child calls nothing else before exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        let stdout = child.stdout.take();
        let pid = child.id() as i32;
        let proc_ref = ProcRef::of(pid).unwrap_or(ProcRef { pid, start_time: 0 });
        let (tx, rx) = watch::channel(None);
        self.children.lock().unwrap().insert(pid, rx.clone());
        std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || {
                // waitpid(pid): this child only.
                let code = match child.wait() {
                    Ok(st) => {
                        use std::os::unix::process::ExitStatusExt;
                        st.code().or(st.signal().map(|s| 128 + s)).unwrap_or(255)
                    }
                    Err(_) => 255,
                };
                let _ = tx.send(Some(code));
                ChildRegistry::global()
                    .children
                    .lock()
                    .unwrap()
                    .remove(&pid);
            })?;
        Ok((Spawned { proc_ref, exit: rx }, stdout))
    }

    /// The exit receiver of a child this process spawned and has not reaped yet.
    pub fn get(&self, pid: i32) -> Option<watch::Receiver<Option<ExitCode>>> {
        self.children.lock().unwrap().get(&pid).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reaps_its_own_child_with_code_and_signal() {
        let reg = ChildRegistry::global();
        let mut s = reg
            .spawn_detached(Command::new("/bin/sh").args(["-c", "exit 7"]))
            .unwrap()
            .0;
        assert_eq!(s.wait_exit(Duration::from_secs(30)).await, Some(7));
        let mut s = reg
            .spawn_detached(Command::new("/bin/sh").args(["-c", "kill -9 $$"]))
            .unwrap()
            .0;
        assert_eq!(s.wait_exit(Duration::from_secs(30)).await, Some(137));
        // An unrelated child of this process keeps its own exit status.
        let mut other = Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let mut s = reg
            .spawn_detached(&mut Command::new("/bin/true"))
            .unwrap()
            .0;
        assert_eq!(s.wait_exit(Duration::from_secs(30)).await, Some(0));
        assert_eq!(other.wait().unwrap().code(), Some(3));
    }

    #[tokio::test]
    async fn proc_ref_follows_liveness() {
        let reg = ChildRegistry::global();
        let mut s = reg
            .spawn_detached(Command::new("/bin/sleep").arg("100"))
            .unwrap()
            .0;
        let r = s.proc_ref;
        assert!(r.is_alive());
        assert!(!r.wait_gone(Duration::from_millis(50)));
        assert!(r.signal(libc::SIGKILL));
        assert!(r.wait_gone(Duration::from_secs(30)));
        assert_eq!(s.wait_exit(Duration::from_secs(30)).await, Some(137));
        assert!(!r.signal(libc::SIGKILL), "a gone process is not signalled");
        let stale = ProcRef {
            pid: std::process::id() as i32,
            start_time: 1,
        };
        assert!(
            !stale.is_alive(),
            "a different start time is another process"
        );
    }
}
