//! The containers of this VM and the work behind each Task call.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use containerd_shim_protos::events::task::{TaskExecStarted, TaskExit, TaskOOM, TaskStart};
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use oci_spec::runtime::{Process as OciProcess, Spec};
use tokio::sync::{oneshot, watch};

use super::process::{Phase, Process};
use super::TaskError;
use crate::api::events::{
    TASK_EXEC_STARTED_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC,
    TASK_START_EVENT_TOPIC,
};
use crate::api::stream::StreamKind;
use crate::init::cgroup::Cgroup;
use crate::init::events::{timestamp, Events};
use crate::init::net::Identity;
use crate::init::process::spawn::{spawn_held, Held, Launch, PidNs, RootSetup};
use crate::init::process::stdio::{Io, Wanted};
use crate::init::process::{launch, seccomp};
use crate::init::reaper::{Exit, Registry};
use crate::init::transport::BoxConn;

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    pub main: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// The mount namespace exec'd processes join, opened once the main process set it up.
    mnt_ns: OwnedFd,
    /// `/proc/<pid>/ns/mnt`'s link text, to find every process of the container.
    mnt_ns_id: String,
    /// Root filesystem mounts guest-init made for this container, undone at Delete.
    rootfs_mounts: Vec<PathBuf>,
    /// Its cgroup (VM mode), removed with the container.
    cgroup: Option<Arc<Cgroup>>,
    /// The PID namespace exec'd processes join (the main process made it).
    pid_ns: OwnedFd,
    /// The spec's seccomp filters, for its execs too.
    seccomp: Vec<seccompiler::BpfProgram>,
}

/// What Create carries besides the process: the spec and rootfs when the host cannot write
/// the bundle itself (see `bundle`).
#[derive(Default)]
pub struct CreateRequest {
    pub spec: Option<containerd_shim_protos::protobuf::well_known_types::any::Any>,
    pub rootfs: Vec<containerd_shim_protos::api::Mount>,
}

/// Everything a Create or Exec call asks for, independent of the protobuf types.
pub struct ProcessRequest {
    pub container_id: String,
    pub exec_id: String,
    pub terminal: bool,
    pub io_names: [String; 3],
}

impl ProcessRequest {
    fn wanted(&self) -> Wanted {
        Wanted {
            stdin: !self.io_names[0].is_empty(),
            stdout: !self.io_names[1].is_empty(),
            stderr: !self.io_names[2].is_empty(),
            terminal: self.terminal,
        }
    }
}

pub struct Tasks {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    registry: Arc<Registry>,
    events: Arc<Events>,
    drain_grace: Duration,
    /// Bumped whenever a container or an exec is defined: a stream that arrived before its
    /// process (the host opens both at once) waits on it.
    defined: watch::Sender<u64>,
    /// In a VM (not a host process): the guest's hostname is the container's.
    vm: bool,
    /// What `ConfigureNetwork` set, for each new container's /etc files.
    identity: Mutex<Identity>,
}

/// Retries `lookup` while it answers NotFound, each time `defined` is bumped, for at most
/// `within`; then its last answer stands.
async fn when_defined<T>(
    defined: &watch::Sender<u64>,
    within: Duration,
    lookup: impl Fn() -> Result<T, TaskError>,
) -> Result<T, TaskError> {
    let mut rx = defined.subscribe();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        // Marked seen before the lookup: a definition after it is a change to wait for.
        rx.borrow_and_update();
        match lookup() {
            Err(TaskError::NotFound(what)) => {
                match tokio::time::timeout_at(deadline, rx.changed()).await {
                    Ok(Ok(())) => continue,
                    _ => return Err(TaskError::NotFound(what)),
                }
            }
            other => return other,
        }
    }
}

fn internal(what: &str) -> impl Fn(String) -> TaskError + '_ {
    move |e| TaskError::Internal(format!("{what}: {e}"))
}

impl Tasks {
    pub fn new(
        registry: Arc<Registry>,
        events: Arc<Events>,
        drain_grace: Duration,
        vm: bool,
    ) -> Tasks {
        Tasks {
            containers: Mutex::default(),
            registry,
            events,
            drain_grace,
            defined: watch::channel(0).0,
            vm,
            identity: Mutex::default(),
        }
    }

    /// Whether this init runs in a VM (it owns the machine's network then).
    pub fn in_vm(&self) -> bool {
        self.vm
    }

    /// Records what the sandbox's network is, for the containers created from now on.
    pub fn set_identity(&self, identity: Identity) {
        *self.identity.lock().unwrap_or_else(|p| p.into_inner()) = identity;
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>, TaskError> {
        self.map()
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(format!("container {id:?}")))
    }

    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, TaskError> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            return Ok(c.main.clone());
        }
        let execs = c.execs.lock().unwrap_or_else(|p| p.into_inner());
        execs
            .get(exec_id)
            .cloned()
            .ok_or_else(|| TaskError::NotFound(format!("exec {exec_id:?} in container {id:?}")))
    }

    pub fn stream_slot(
        &self,
        id: &str,
        exec_id: &str,
        kind: StreamKind,
    ) -> Result<oneshot::Sender<BoxConn>, TaskError> {
        self.process(id, exec_id)?
            .io
            .take_slot(kind)
            .map_err(|e| TaskError::FailedPrecondition(e.to_string()))
    }

    /// [`Tasks::stream_slot`], for a stream that may arrive before its process is defined:
    /// waits up to `within` for the definition.
    pub async fn stream_slot_when_defined(
        &self,
        id: &str,
        exec_id: &str,
        kind: StreamKind,
        within: Duration,
    ) -> Result<oneshot::Sender<BoxConn>, TaskError> {
        when_defined(&self.defined, within, || {
            self.stream_slot(id, exec_id, kind)
        })
        .await
    }

    /// Forks `proc` held; a finisher task publishes its exit once its output has drained,
    /// after a TaskOOM when `oom` (the container's cgroup, for its main process) saw the OOM
    /// killer at work.
    async fn spawn(
        &self,
        proc: &Arc<Process>,
        launch: Launch,
        oom: Option<Arc<Cgroup>>,
    ) -> Result<Held, TaskError> {
        let (route, exited) = proc.route();
        let finisher = proc.clone();
        let events = self.events.clone();
        // A client that hung up on the process's output will never read it or wait for it:
        // the process goes, as a terminal's processes go when it hangs up.
        let orphaned = proc.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = orphaned.io.hung_up() => {}
                _ = orphaned.wait() => return,
            }
            if orphaned.exited().is_none() {
                tracing::info!(
                    "{}/{}: its client hung up: killing it",
                    orphaned.container_id,
                    orphaned.exec_id
                );
                let _ = orphaned.signal(Signal::SIGKILL);
            }
        });
        tokio::spawn(async move {
            let Ok(exit) = exited.await else { return };
            if finisher.finish(exit).await {
                if oom.is_some_and(|cg| cg.oom_kills() > 0) {
                    let mut ev = TaskOOM::new();
                    ev.container_id = finisher.container_id.clone();
                    events.publish(TASK_OOM_EVENT_TOPIC, &ev);
                }
                events.publish(TASK_EXIT_EVENT_TOPIC, &task_exit(&finisher, exit));
            }
        });
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || spawn_held(&registry, launch, route))
            .await
            .map_err(|e| TaskError::Internal(format!("spawn task: {e}")))?
            .map_err(|e| TaskError::Internal(e.to_string()))
    }

    pub async fn create(
        &self,
        req: ProcessRequest,
        bundle: &Path,
        extra: CreateRequest,
    ) -> Result<u32, TaskError> {
        let id = req.container_id.clone();
        if id.is_empty() || id.contains('/') {
            return Err(TaskError::InvalidArgument(format!(
                "bad container id {id:?}"
            )));
        }
        if self.map().contains_key(&id) {
            return Err(TaskError::AlreadyExists(format!("container {id:?}")));
        }
        super::bundle::write_spec(bundle, extra.spec.as_ref())?;
        // Mounting may wait for a disk attached just before (see `disk`): off the runtime.
        let (b, rootfs) = (bundle.to_path_buf(), extra.rootfs.clone());
        let rootfs_mounts =
            tokio::task::spawn_blocking(move || super::bundle::mount_rootfs(&b, &rootfs))
                .await
                .map_err(|e| TaskError::Internal(format!("mounting the rootfs: {e}")))??;
        let created = self
            .create_in_bundle(req, bundle, rootfs_mounts.clone())
            .await;
        if created.is_err() {
            super::bundle::unmount_all(&rootfs_mounts);
        }
        created
    }

    async fn create_in_bundle(
        &self,
        req: ProcessRequest,
        bundle: &Path,
        rootfs_mounts: Vec<PathBuf>,
    ) -> Result<u32, TaskError> {
        let id = req.container_id.clone();
        let spec = Spec::load(bundle.join("config.json")).map_err(|e| {
            TaskError::InvalidArgument(format!("bundle {}: config.json: {e}", bundle.display()))
        })?;
        let oci_process = spec
            .process()
            .clone()
            .ok_or_else(|| TaskError::InvalidArgument("the spec has no process".into()))?;
        let root = spec
            .root()
            .as_ref()
            .map_or(PathBuf::from("rootfs"), |r| r.path().clone());
        let rootfs = bundle.join(root);
        if !rootfs.is_dir() {
            return Err(TaskError::InvalidArgument(format!(
                "rootfs {} is not a directory",
                rootfs.display()
            )));
        }
        let linux = spec.linux().as_ref();
        let masked = linux
            .and_then(|l| l.masked_paths().clone())
            .unwrap_or_default();
        let readonly = linux
            .and_then(|l| l.readonly_paths().clone())
            .unwrap_or_default();
        let hostname = spec
            .hostname()
            .clone()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| id.chars().take(12).collect());
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        let identity = self
            .identity
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        mounts.extend(super::etc::prepare(bundle, &hostname, &identity, &mounts)?);
        if self.vm {
            // The VM is the sandbox: its one UTS namespace carries the container's name.
            nix::unistd::sethostname(&hostname)
                .map_err(|e| TaskError::InvalidArgument(format!("hostname {hostname:?}: {e}")))?;
        }
        let root = launch::new_root(&rootfs, &mounts, &masked, &readonly)
            .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
        let terminal = req.terminal || oci_process.terminal().unwrap_or(false);
        let req = ProcessRequest { terminal, ..req };
        let (io, stdio) = Io::new(req.wanted(), self.drain_grace)
            .map_err(|e| internal("stdio")(e.to_string()))?;
        let mut launch = launch::build(&oci_process, root, stdio)
            .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
        let cgroup = Cgroup::create(&id, linux.and_then(|l| l.resources().as_ref()))
            .map_err(TaskError::Internal)?
            .map(Arc::new);
        if let Some(cg) = &cgroup {
            launch.cgroup_procs = Some(cg.procs().map_err(|e| internal("cgroup")(e.to_string()))?);
        }
        launch.pid_ns = PidNs::New;
        let seccomp = seccomp::compile(linux.and_then(|l| l.seccomp().as_ref()))
            .map_err(TaskError::InvalidArgument)?;
        launch.seccomp = seccomp.clone();
        let main = Process::new(
            &id,
            "",
            terminal,
            req.io_names.clone(),
            io,
            Phase::Created(None),
        );
        let held = match self.spawn(&main, launch, cgroup.clone()).await {
            Ok(h) => h,
            Err(e) => {
                main.set_started(false);
                return Err(e);
            }
        };
        let pid = held.pid;
        // The child reported ready after its root switch, so these are the container's
        // namespaces.
        let ns_path = format!("/proc/{pid}/ns/mnt");
        let opened = std::fs::File::open(&ns_path).and_then(|f| {
            let pid_ns = std::fs::File::open(format!("/proc/{pid}/ns/pid"))?;
            Ok((
                OwnedFd::from(f),
                std::fs::read_link(&ns_path)?,
                OwnedFd::from(pid_ns),
            ))
        });
        *main.phase() = Phase::Created(Some(held));
        let (mnt_ns, link, pid_ns) = match opened {
            Ok(v) => v,
            Err(e) => {
                let _ = main.signal(Signal::SIGKILL);
                main.set_started(false);
                return Err(TaskError::Internal(format!("opening {ns_path}: {e}")));
            }
        };
        let container = Arc::new(Container {
            id: id.clone(),
            bundle: bundle.to_path_buf(),
            main,
            execs: Mutex::default(),
            mnt_ns,
            mnt_ns_id: link.to_string_lossy().into_owned(),
            rootfs_mounts,
            cgroup,
            pid_ns,
            seccomp,
        });
        self.map().insert(id, container);
        self.defined.send_modify(|n| *n += 1);
        Ok(pid.as_raw() as u32)
    }

    pub async fn exec(&self, req: ProcessRequest, spec: OciProcess) -> Result<(), TaskError> {
        let c = self.container(&req.container_id)?;
        if req.exec_id.is_empty() {
            return Err(TaskError::InvalidArgument("empty exec id".into()));
        }
        let mut execs = c.execs.lock().unwrap_or_else(|p| p.into_inner());
        if execs.contains_key(&req.exec_id) {
            return Err(TaskError::AlreadyExists(format!("exec {:?}", req.exec_id)));
        }
        let terminal = req.terminal || spec.terminal().unwrap_or(false);
        let req = ProcessRequest { terminal, ..req };
        let (io, stdio) = Io::new(req.wanted(), self.drain_grace)
            .map_err(|e| internal("stdio")(e.to_string()))?;
        // The OCI spec's consoleSize: the terminal has its size before the process starts.
        if let (Some(master), Some(size)) = (&io.pty, spec.console_size()) {
            let clamp = |v: u64| v.min(u16::MAX as u64) as u16;
            crate::init::process::pty::resize(
                master.fd(),
                clamp(size.width()),
                clamp(size.height()),
            )
            .map_err(|e| internal("consoleSize")(e.to_string()))?;
        }
        let ns = c
            .mnt_ns
            .try_clone()
            .map_err(|e| internal("mount namespace")(e.to_string()))?;
        let mut launch = launch::build(&spec, RootSetup::JoinMountNs { ns }, stdio)
            .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
        if let Some(cg) = &c.cgroup {
            launch.cgroup_procs = Some(cg.procs().map_err(|e| internal("cgroup")(e.to_string()))?);
        }
        launch.seccomp = c.seccomp.clone();
        launch.pid_ns = PidNs::Join(
            c.pid_ns
                .try_clone()
                .map_err(|e| internal("pid namespace")(e.to_string()))?,
        );
        let p = Process::new(
            &c.id,
            &req.exec_id,
            terminal,
            req.io_names.clone(),
            io,
            Phase::Defined(Some(Box::new(launch))),
        );
        execs.insert(req.exec_id.clone(), p);
        drop(execs);
        self.defined.send_modify(|n| *n += 1);
        Ok(())
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, TaskError> {
        let p = self.process(id, exec_id)?;
        let held = if exec_id.is_empty() {
            let held = match &mut *p.phase() {
                Phase::Created(held) => held.take(),
                _ => None,
            };
            held.ok_or_else(|| {
                TaskError::FailedPrecondition(format!("container {id:?} was already started"))
            })?
        } else {
            let launch = match &mut *p.phase() {
                Phase::Defined(launch) => launch.take(),
                _ => None,
            };
            let launch = launch.ok_or_else(|| {
                TaskError::FailedPrecondition(format!("exec {exec_id:?} was already started"))
            })?;
            match self.spawn(&p, *launch, None).await {
                Ok(h) => h,
                Err(e) => {
                    p.set_started(false);
                    return Err(e);
                }
            }
        };
        let pid = held.pid;
        {
            let mut phase = p.phase();
            // The reaper may already have marked a fast exit; never overwrite that.
            if !matches!(*phase, Phase::Exited(_)) {
                *phase = Phase::Running(pid);
            }
        }
        let started = tokio::task::spawn_blocking(move || held.start())
            .await
            .map_err(|e| TaskError::Internal(format!("start task: {e}")))?;
        if let Err(e) = started {
            p.set_started(false);
            return Err(TaskError::FailedPrecondition(format!(
                "starting {id:?}/{exec_id:?}: {e}"
            )));
        }
        if exec_id.is_empty() {
            let mut ev = TaskStart::new();
            ev.container_id = id.to_string();
            ev.pid = pid.as_raw() as u32;
            self.events.publish(TASK_START_EVENT_TOPIC, &ev);
        } else {
            let mut ev = TaskExecStarted::new();
            ev.container_id = id.to_string();
            ev.exec_id = exec_id.to_string();
            ev.pid = pid.as_raw() as u32;
            self.events.publish(TASK_EXEC_STARTED_EVENT_TOPIC, &ev);
        }
        // Only now may the finisher publish TaskExit: it always follows TaskStart.
        p.set_started(true);
        Ok(pid.as_raw() as u32)
    }

    /// The short path for one exec ([`crate::init::agent`]'s RunProcess): define it, start
    /// it once every stream it wants is attached (so no output can be missed), and with
    /// `wait` wait for its exit and forget it. Whatever fails after the definition removes the
    /// exec again; the exit is awaited on a task of its own, so a client that goes away
    /// mid-wait still leaves nothing behind.
    pub async fn run_process(
        self: &Arc<Self>,
        req: ProcessRequest,
        spec: OciProcess,
        attach_within: Duration,
        wait: bool,
    ) -> Result<(u32, Option<Exit>), TaskError> {
        let (id, exec_id) = (req.container_id.clone(), req.exec_id.clone());
        self.exec(req, spec).await?;
        let forget = |tasks: &Tasks| {
            if let Ok(c) = tasks.container(&id) {
                c.forget_exec(&exec_id);
            }
        };
        let p = self.process(&id, &exec_id)?;
        if tokio::time::timeout(attach_within, p.io.all_attached())
            .await
            .is_err()
        {
            forget(self);
            return Err(TaskError::FailedPrecondition(format!(
                "{id:?}/{exec_id:?}: its streams were not attached within {attach_within:?}"
            )));
        }
        let pid = match self.start(&id, &exec_id).await {
            Ok(pid) => pid,
            Err(e) => {
                forget(self);
                return Err(e);
            }
        };
        if !wait {
            return Ok((pid, None));
        }
        let tasks = self.clone();
        let waiter = tokio::spawn(async move {
            let exit = tasks.wait(&id, &exec_id).await;
            let _ = tasks.delete(&id, &exec_id).await;
            exit
        });
        let exit = waiter
            .await
            .map_err(|e| TaskError::Internal(format!("wait task: {e}")))??;
        Ok((pid, Some(exit)))
    }

    pub fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> Result<(), TaskError> {
        let sig = Signal::try_from(signal as i32)
            .map_err(|_| TaskError::InvalidArgument(format!("bad signal {signal}")))?;
        let p = self.process(id, exec_id)?;
        if all && exec_id.is_empty() {
            let c = self.container(id)?;
            for pid in c.pids() {
                let _ = nix::sys::signal::kill(pid, sig);
            }
        }
        p.signal(sig)
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exit, TaskError> {
        Ok(self.process(id, exec_id)?.wait().await)
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<(Option<Exit>, u32), TaskError> {
        let c = self.container(id)?;
        let p = self.process(id, exec_id)?;
        let pid = p.pid().map_or(0, |p| p.as_raw() as u32);
        let exit = match &mut *p.phase() {
            Phase::Running(_) => {
                return Err(TaskError::FailedPrecondition(format!(
                    "{id:?}/{exec_id:?} is running"
                )))
            }
            // Never started: dropping the held child's start pipe makes it exit.
            Phase::Created(held) => {
                held.take();
                p.set_started(false);
                None
            }
            Phase::Defined(_) => None,
            Phase::Exited(exit) => Some(*exit),
        };
        let exit = match exit {
            Some(_) => Some(p.wait().await),
            None if pid != 0 => Some(p.wait().await),
            None => None,
        };
        if exec_id.is_empty() {
            self.map().remove(id);
            // The container ends with its main process: nothing may outlive it inside.
            for pid in c.pids() {
                let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            }
            super::bundle::unmount_all(&c.rootfs_mounts);
        } else {
            c.forget_exec(exec_id);
        }
        Ok((exit, pid))
    }

    pub fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<(), TaskError> {
        let p = self.process(id, exec_id)?;
        let master = p.io.pty.as_ref().ok_or_else(|| {
            TaskError::FailedPrecondition(format!("{id:?}/{exec_id:?} has no terminal"))
        })?;
        let clamp = |v: u32| v.min(u16::MAX as u32) as u16;
        crate::init::process::pty::resize(master.fd(), clamp(width), clamp(height))
            .map_err(|e| TaskError::Internal(format!("resize: {e}")))
    }

    pub fn close_io(&self, id: &str, exec_id: &str) -> Result<(), TaskError> {
        self.process(id, exec_id)?.io.close_stdin();
        Ok(())
    }

    pub fn pids(&self, id: &str) -> Result<Vec<Pid>, TaskError> {
        Ok(self.container(id)?.pids())
    }

    pub fn all_containers(&self) -> Vec<Arc<Container>> {
        self.map().values().cloned().collect()
    }
}

impl Container {
    fn forget_exec(&self, exec_id: &str) {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(exec_id);
    }

    /// Every live process in the container's mount namespace (Box runs no cgroups yet).
    pub fn pids(&self) -> Vec<Pid> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
                    .is_ok_and(|l| l.to_string_lossy() == self.mnt_ns_id)
            })
            .map(Pid::from_raw)
            .collect()
    }

    pub fn exec_processes(&self) -> Vec<Arc<Process>> {
        self.execs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

fn task_exit(p: &Process, exit: Exit) -> TaskExit {
    let mut ev = TaskExit::new();
    ev.container_id = p.container_id.clone();
    ev.id = if p.exec_id.is_empty() {
        p.container_id.clone()
    } else {
        p.exec_id.clone()
    };
    ev.pid = exit.pid as u32;
    ev.exit_status = exit.status;
    ev.exited_at = Some(timestamp(exit.exited_at)).into();
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(flavor = "current_thread")]
    async fn a_lookup_waits_for_its_definition() {
        let defined = Arc::new(watch::channel(0u64).0);
        let present = Arc::new(AtomicBool::new(false));
        let waiter = {
            let (defined, present) = (defined.clone(), present.clone());
            tokio::spawn(async move {
                when_defined(&defined, Duration::from_secs(30), || {
                    match present.load(Ordering::SeqCst) {
                        true => Ok(7),
                        false => Err(TaskError::NotFound("exec".into())),
                    }
                })
                .await
            })
        };
        // On this single-threaded runtime the waiter runs to its wait here.
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "gave up before the definition");
        present.store(true, Ordering::SeqCst);
        defined.send_modify(|n| *n += 1);
        assert_eq!(waiter.await.unwrap().unwrap(), 7);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lookup_gives_up_after_the_deadline_and_other_errors_are_immediate() {
        let defined = watch::channel(0u64).0;
        let r = when_defined(&defined, Duration::from_millis(20), || {
            Err::<(), _>(TaskError::NotFound("exec x".into()))
        })
        .await;
        assert!(matches!(r, Err(TaskError::NotFound(w)) if w == "exec x"));
        let r = when_defined(&defined, Duration::from_secs(30), || {
            Err::<(), _>(TaskError::FailedPrecondition("attached".into()))
        })
        .await;
        assert!(matches!(r, Err(TaskError::FailedPrecondition(_))));
    }
}
