//! One process of a container (its main process or an exec) and its lifecycle:
//! Defined (exec, not started) -> Created (forked, held) -> Running -> Exited.
//!
//! Lock order: the reaper registry lock, then a process's `phase` lock. The reaper calls
//! [`Process::route`]'s closure under the registry lock, so no code may hold `phase` while
//! spawning.

use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{oneshot, watch};

use super::TaskError;
use crate::init::process::spawn::{Held, Launch};
use crate::init::process::stdio::Io;
use crate::init::reaper::{Exit, Route};

pub enum Phase {
    /// An exec registered by `Exec`, waiting for `Start`.
    Defined(Option<Box<Launch>>),
    /// Forked and set up, held until `Start` (the container's main process).
    Created(Option<Held>),
    Running(Pid),
    /// Reaped; `Wait` answers once its output has drained.
    Exited(Exit),
}

pub struct Process {
    pub container_id: String,
    /// Empty for the container's main process.
    pub exec_id: String,
    pub terminal: bool,
    /// The names the host gave for stdin/stdout/stderr, echoed in `State`.
    pub io_names: [String; 3],
    pub io: Arc<Io>,
    phase: Mutex<Phase>,
    /// Set once the process exited and its output drained: what `Wait` and `Delete` see.
    exit: watch::Sender<Option<Exit>>,
    /// Whether `Start` succeeded; decided exactly once, then TaskExit may follow.
    started: watch::Sender<Option<bool>>,
}

impl Process {
    pub fn new(
        container_id: &str,
        exec_id: &str,
        terminal: bool,
        io_names: [String; 3],
        io: Arc<Io>,
        phase: Phase,
    ) -> Arc<Process> {
        Arc::new(Process {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            terminal,
            io_names,
            io,
            phase: Mutex::new(phase),
            exit: watch::channel(None).0,
            started: watch::channel(None).0,
        })
    }

    pub fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pid(&self) -> Option<Pid> {
        match &*self.phase() {
            Phase::Defined(_) => None,
            Phase::Created(held) => held.as_ref().map(|h| h.pid),
            Phase::Running(pid) => Some(*pid),
            Phase::Exited(exit) => Some(Pid::from_raw(exit.pid)),
        }
    }

    /// The reaper's route for this process, plus the receiving side for the finisher.
    pub fn route(self: &Arc<Self>) -> (Route, oneshot::Receiver<Exit>) {
        let (tx, rx) = oneshot::channel();
        let me = self.clone();
        let route: Route = Box::new(move |exit: Exit| {
            let mut phase = me.phase();
            // Start sets Running before it lets the child exec: any other phase means the
            // process died before it ran (setup failure, or killed while created).
            if !matches!(*phase, Phase::Running(_)) {
                me.set_started(false);
            }
            *phase = Phase::Exited(exit);
            drop(phase);
            let _ = tx.send(exit);
        });
        (route, rx)
    }

    pub fn set_started(&self, ok: bool) {
        self.started.send_if_modified(|s| {
            let first = s.is_none();
            if first {
                *s = Some(ok);
            }
            first
        });
    }

    /// After the exit: drain the output, publish the exit to waiters, and tell whether the
    /// process had started (only then does it get a TaskExit).
    pub async fn finish(&self, exit: Exit) -> bool {
        self.io.drain_after_exit().await;
        self.exit.send_replace(Some(exit));
        let mut started = self.started.subscribe();
        matches!(
            started.wait_for(Option::is_some).await.map(|s| *s),
            Ok(Some(true))
        )
    }

    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        let exit = *rx
            .wait_for(Option::is_some)
            .await
            .expect("the sender lives in self");
        exit.expect("waited for Some")
    }

    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Signals the process. An exited process is success (containerd: ESRCH is not an
    /// error), and a reaped pid is never signalled: the phase changes to Exited before reap.
    pub fn signal(&self, sig: Signal) -> Result<(), TaskError> {
        let phase = self.phase();
        let pid = match &*phase {
            Phase::Defined(_) => {
                return Err(TaskError::FailedPrecondition(format!(
                    "process {:?} is not started",
                    self.exec_id
                )))
            }
            Phase::Created(Some(held)) => held.pid,
            Phase::Created(None) => return Ok(()),
            Phase::Running(pid) => *pid,
            Phase::Exited(_) => return Ok(()),
        };
        match kill(pid, sig) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(TaskError::Internal(format!("kill {pid}: {e}"))),
        }
    }
}
