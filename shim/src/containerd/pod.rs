//! What one shim serves: at most one VM (a pod's, or a standalone container's) and the tasks
//! containerd created in it, each with its processes and their exits.
//!
//! Lock order: [`Pod::vm`] (a tokio mutex, held across the boot so creates of app containers
//! wait for it) before [`Pod::tasks`] and any process's locks (std mutexes, never held
//! across an await).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

use super::io::{Io, Paths as IoPaths};
use crate::sandbox::Sandbox;

/// How a process ended: its status (128+n for signal n) and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: u32,
    pub at: SystemTime,
}

impl Exit {
    pub fn now(status: u32) -> Exit {
        Exit {
            status,
            at: SystemTime::now(),
        }
    }

    pub fn timestamp(&self) -> Timestamp {
        let d = self
            .at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut t = Timestamp::new();
        t.seconds = d.as_secs() as i64;
        t.nanos = d.subsec_nanos() as i32;
        t
    }
}

/// One process containerd knows: a container's main process or an exec.
pub struct Proc {
    pub exec_id: String,
    pub pid: Mutex<u32>,
    pub stdio: IoPaths,
    pub io: Mutex<Option<Io>>,
    /// Set once TaskStart/TaskExecStarted went out: TaskExit waits for it.
    pub started: watch::Sender<bool>,
    /// Set once, when the process's exit is known (and its output drained).
    pub exit: watch::Sender<Option<Exit>>,
}

impl Proc {
    pub fn new(exec_id: &str, stdio: IoPaths) -> Arc<Proc> {
        Arc::new(Proc {
            exec_id: exec_id.to_string(),
            pid: Mutex::new(0),
            stdio,
            io: Mutex::new(None),
            started: watch::channel(false).0,
            exit: watch::channel(None).0,
        })
    }

    pub fn pid(&self) -> u32 {
        *self.pid.lock().unwrap()
    }

    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Records the exit unless one is recorded already; true if this call recorded it.
    pub fn set_exit(&self, e: Exit) -> bool {
        self.exit.send_if_modified(|cur| {
            if cur.is_some() {
                return false;
            }
            *cur = Some(e);
            true
        })
    }

    pub async fn wait(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        let e = match rx.wait_for(|e| e.is_some()).await {
            Ok(e) => *e,
            // The sender lives as long as self.
            Err(_) => None,
        };
        e.unwrap_or_else(|| Exit::now(255))
    }
}

/// What a task is to the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The pod's sandbox container: the VM itself (its pid is box-vmm's).
    Vm,
    /// A container in the VM, its root on a disk slot; `owns_vm` for `ctr run`'s one
    /// container, whose Delete also ends the VM.
    Container { slot: usize, owns_vm: bool },
}

pub struct Task {
    pub id: String,
    pub bundle: String,
    pub kind: Kind,
    pub main: Arc<Proc>,
    pub execs: Mutex<HashMap<String, Arc<Proc>>>,
}

impl Task {
    pub fn proc(&self, exec_id: &str) -> Option<Arc<Proc>> {
        if exec_id.is_empty() {
            Some(self.main.clone())
        } else {
            self.execs.lock().unwrap().get(exec_id).cloned()
        }
    }
}

/// The booted VM.
pub struct Vm {
    pub sandbox: Sandbox,
    /// The container using each disk slot.
    pub slots: Mutex<Vec<Option<String>>>,
}

impl Vm {
    pub fn take_slot(&self, id: &str) -> Option<usize> {
        let mut slots = self.slots.lock().unwrap();
        let free = slots.iter().position(Option::is_none)?;
        slots[free] = Some(id.to_string());
        Some(free)
    }

    pub fn free_slot(&self, slot: usize) {
        if let Some(s) = self.slots.lock().unwrap().get_mut(slot) {
            *s = None;
        }
    }
}

#[derive(Default)]
pub struct Pod {
    pub vm: tokio::sync::Mutex<Option<Arc<Vm>>>,
    pub tasks: Mutex<HashMap<String, Arc<Task>>>,
}

impl Pod {
    pub fn task(&self, id: &str) -> Option<Arc<Task>> {
        self.tasks.lock().unwrap().get(id).cloned()
    }

    /// The process a request names, or containerd's NOT_FOUND.
    pub fn proc(&self, id: &str, exec_id: &str) -> Option<(Arc<Task>, Arc<Proc>)> {
        let t = self.task(id)?;
        let p = t.proc(exec_id)?;
        Some((t, p))
    }

    /// The process a TaskExit names: `id` is the container's own id for its main process,
    /// else the exec's.
    pub fn find(&self, container_id: &str, id: &str) -> Option<Arc<Proc>> {
        let t = self.task(container_id)?;
        let exec_id = if id == container_id { "" } else { id };
        t.proc(exec_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exit_is_recorded_once_and_seen_by_late_waiters() {
        let p = Proc::new("", IoPaths::default());
        assert!(p.set_exit(Exit::now(3)));
        assert!(!p.set_exit(Exit::now(137)), "a second exit is ignored");
        // Wait called after the exit still gets it.
        assert_eq!(p.wait().await.status, 3);
    }

    #[test]
    fn exits_name_the_main_process_by_container_id() {
        let pod = Pod::default();
        let main = Proc::new("", IoPaths::default());
        let exec = Proc::new("e1", IoPaths::default());
        let t = Arc::new(Task {
            id: "c1".into(),
            bundle: String::new(),
            kind: Kind::Container {
                slot: 0,
                owns_vm: false,
            },
            main: main.clone(),
            execs: Mutex::new(HashMap::from([("e1".to_string(), exec.clone())])),
        });
        pod.tasks.lock().unwrap().insert("c1".into(), t);
        assert!(Arc::ptr_eq(&pod.find("c1", "c1").unwrap(), &main));
        assert!(Arc::ptr_eq(&pod.find("c1", "e1").unwrap(), &exec));
        assert!(pod.find("c2", "c2").is_none());
    }
}
