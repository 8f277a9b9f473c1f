//! containerd's Task service over the sandbox library: the pod's sandbox container boots the
//! VM ([`Sandbox::create_vm`]), app containers are created in it ([`Sandbox::add_container`])
//! on disks attached to free slots, and every process call is forwarded to guest-init.
//! Exits come from guest-init's event stream (one per VM) and from box-vmm's own exit.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, ExecProcessRequest, KillRequest, PidsRequest, PidsResponse,
    ProcessInfo, ResizePtyRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest,
    StateResponse, StatsRequest, StatsResponse, Status, WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::empty::Empty;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim_async::Task as TaskApi;
use containerd_shim_protos::topics;
use ttrpc::r#async::TtrpcContext;

use super::io::{self, Paths as IoPaths};
use super::pod::{Exit, Kind, Pod, Proc, Task, Vm};
use super::spec::{self, Role};
use crate::agent_client::{GuestClient, RootfsMount, StdioRequest};
use crate::network::NetworkMode;
use crate::sandbox::backend::Backend;
use crate::sandbox::state::{RunConfig, StateRoot};
use crate::sandbox::{self, ContainerSetup, Sandbox, VmSpec};
use box_guest_init::api::events::Event;

/// Disk slots of a pod's VM: app containers it can hold at once.
pub const POD_DISK_SLOTS: u32 = 8;
/// A pod VM's size unless the sandbox's annotations (`io.box.cpus`, `io.box.memory-mib`) say.
pub const POD_CPUS: u32 = 1;
pub const POD_MEMORY_MIB: u32 = 512;
/// How long TaskExit waits for the process's output to drain.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long guest-init gets to stop a pod's processes before box-vmm is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

fn err(code: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    let what = if exec_id.is_empty() {
        format!("task {id}")
    } else {
        format!("process {exec_id} of task {id}")
    };
    err(ttrpc::Code::NOT_FOUND, format!("{what} not found"))
}

fn internal(e: impl std::fmt::Display) -> ttrpc::Error {
    err(ttrpc::Code::INTERNAL, e.to_string())
}

/// A guest call's error as containerd should see it: the guest's own status when it gave one.
fn guest(e: crate::agent_client::ClientError) -> ttrpc::Error {
    match e {
        crate::agent_client::ClientError::Rpc(e @ ttrpc::Error::RpcStatus(_)) => e,
        other => internal(other),
    }
}

pub struct Service {
    inner: Arc<Inner>,
}

struct Inner {
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    root: StateRoot,
    backend: Box<dyn Backend>,
    pod: Pod,
}

impl Service {
    pub fn new(
        namespace: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
        root: StateRoot,
        backend: Box<dyn Backend>,
    ) -> Service {
        Service {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                publisher,
                exit,
                root,
                backend,
                pod: Pod::default(),
            }),
        }
    }
}

impl Inner {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let ctx = ttrpc::context::with_timeout(0);
        if let Err(e) = self
            .publisher
            .publish(ctx, topic, &self.namespace, event)
            .await
        {
            tracing::warn!("publishing {topic}: {e}");
        }
    }

    async fn vm(&self) -> Result<Arc<Vm>, ttrpc::Error> {
        self.pod.vm.lock().await.clone().ok_or_else(|| {
            err(
                ttrpc::Code::FAILED_PRECONDITION,
                "this shim's VM is not running",
            )
        })
    }

    /// Boots the VM for `id` (the pod's sandbox, or a standalone container).
    async fn boot(
        self: &Arc<Self>,
        id: &str,
        spec: &serde_json::Value,
        slots: u32,
    ) -> Result<Arc<Vm>, ttrpc::Error> {
        let mut guard = self.pod.vm.lock().await;
        if guard.is_some() {
            return Err(err(
                ttrpc::Code::ALREADY_EXISTS,
                format!("{id}: this shim already runs a VM"),
            ));
        }
        let (cpus, mem) = spec::vm_size(spec);
        let config = RunConfig {
            cpus: cpus.unwrap_or(POD_CPUS),
            memory_mib: mem.unwrap_or(POD_MEMORY_MIB),
            ..Default::default()
        };
        let vm = VmSpec {
            network: spec::netns(spec).map_or(NetworkMode::None, NetworkMode::Netns),
            disk_slots: slots,
            ..Default::default()
        };
        let mut sb = Sandbox::create_vm(&self.root, self.backend.as_ref(), id, config, &vm)
            .await
            .map_err(|e| err(ttrpc::Code::UNAVAILABLE, e.to_string()))?;
        sb.set_running().map_err(internal)?;
        let vm = Arc::new(Vm {
            slots: std::sync::Mutex::new(vec![None; slots as usize]),
            sandbox: sb,
        });
        *guard = Some(vm.clone());
        drop(guard);
        self.clone().follow_events(vm.sandbox.client.clone());
        Ok(vm)
    }

    /// Routes guest-init's events: exits to their processes (then TaskExit, once the
    /// process's output drained and its start was published), OOMs straight through.
    fn follow_events(self: Arc<Self>, client: GuestClient) {
        tokio::spawn(async move {
            let mut events = match client.events().await {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!("guest events: {e}");
                    return;
                }
            };
            loop {
                match events.next().await {
                    Ok(Some(Event::Exit(ev))) => {
                        let me = self.clone();
                        tokio::spawn(async move { me.route_exit(ev).await });
                    }
                    Ok(Some(Event::Oom(ev))) => {
                        self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev))
                            .await
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!("guest events: {e}");
                        return;
                    }
                }
            }
        });
    }

    async fn route_exit(&self, ev: TaskExit) {
        let Some(p) = self.pod.find(&ev.container_id, &ev.id) else {
            tracing::debug!("exit of unknown {}/{}", ev.container_id, ev.id);
            return;
        };
        // TaskExit only after TaskStart (the guest's exit may overtake our Start's publish).
        let mut started = p.started.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(60), started.wait_for(|s| *s)).await;
        let drained = p.io.lock().unwrap().as_ref().map(|io| io.drained.clone());
        if let Some(mut d) = drained {
            let _ = tokio::time::timeout(DRAIN_GRACE, d.wait_for(|v| *v)).await;
        }
        let at = ev
            .exited_at
            .as_ref()
            .map(|t| {
                std::time::UNIX_EPOCH
                    + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32)
            })
            .unwrap_or_else(std::time::SystemTime::now);
        self.exit(
            &ev.container_id,
            &p,
            Exit {
                status: ev.exit_status,
                at,
            },
        )
        .await;
    }

    /// Records a process's exit and publishes it, exactly once.
    async fn exit(&self, container_id: &str, p: &Proc, e: Exit) {
        if !p.set_exit(e) {
            return;
        }
        if let Some(io) = p.io.lock().unwrap().as_mut() {
            io.close_stdin();
        }
        let ev = TaskExit {
            container_id: container_id.to_string(),
            id: if p.exec_id.is_empty() {
                container_id.to_string()
            } else {
                p.exec_id.clone()
            },
            pid: p.pid(),
            exit_status: e.status,
            exited_at: Some(e.timestamp()).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    /// Follows box-vmm: when it exits, every process still running in it has ended too.
    fn follow_vmm(self: Arc<Self>, vm: Arc<Vm>, vm_task: Option<String>) {
        let Some(mut spawned) = vm.sandbox.process.clone() else {
            return;
        };
        tokio::spawn(async move {
            let code = loop {
                if let Some(c) = spawned.exited() {
                    break c;
                }
                if spawned.exit.changed().await.is_err() {
                    break spawned.exited().unwrap_or(255);
                }
            };
            tracing::info!("box-vmm exited with {code}");
            let tasks: Vec<Arc<Task>> = self.pod.tasks.lock().unwrap().values().cloned().collect();
            for t in tasks {
                let execs: Vec<Arc<Proc>> = t.execs.lock().unwrap().values().cloned().collect();
                for p in execs.iter().chain([&t.main]) {
                    let status = if Some(&t.id) == vm_task.as_ref() {
                        vm_status(code)
                    } else {
                        137
                    };
                    self.exit(&t.id, p, Exit::now(status)).await;
                }
            }
        });
    }
}

/// The sandbox task's status from box-vmm's: a guest that powered off is 0; a VM we
/// stopped is reported as SIGKILLed, as containerd expects of a killed pause.
fn vm_status(code: i32) -> u32 {
    match code {
        0 => 0,
        c if c >= 128 => c as u32,
        _ => 137,
    }
}

fn stdio_of(req: &CreateTaskRequest) -> IoPaths {
    IoPaths {
        stdin: req.stdin.clone(),
        stdout: req.stdout.clone(),
        stderr: req.stderr.clone(),
        terminal: req.terminal,
    }
}

fn wanted(p: &IoPaths) -> StdioRequest {
    StdioRequest {
        stdin: !p.stdin.is_empty(),
        stdout: !p.stdout.is_empty(),
        stderr: !p.stderr.is_empty() && !p.terminal,
        terminal: p.terminal,
    }
}

impl Inner {
    async fn create(self: &Arc<Self>, req: &CreateTaskRequest) -> Result<u32, ttrpc::Error> {
        if self.pod.task(&req.id).is_some() {
            return Err(err(
                ttrpc::Code::ALREADY_EXISTS,
                format!("task {} exists", req.id),
            ));
        }
        let bundle = std::path::Path::new(&req.bundle);
        let oci =
            spec::load(bundle).map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, e.to_string()))?;
        let stdio = stdio_of(req);
        match spec::role(&oci) {
            Role::PodSandbox => {
                let vm = self.boot(&req.id, &oci, POD_DISK_SLOTS).await?;
                let pid = vm
                    .sandbox
                    .process
                    .as_ref()
                    .map_or(0, |p| p.proc_ref.pid as u32);
                let main = Proc::new("", stdio);
                *main.pid.lock().unwrap() = pid;
                self.pod.tasks.lock().unwrap().insert(
                    req.id.clone(),
                    Arc::new(Task {
                        id: req.id.clone(),
                        bundle: req.bundle.clone(),
                        kind: Kind::Vm,
                        main,
                        execs: Default::default(),
                    }),
                );
                self.clone().follow_vmm(vm, Some(req.id.clone()));
                Ok(pid)
            }
            Role::InPod(sandbox_id) => {
                let vm = self.vm().await.map_err(|_| {
                    err(
                        ttrpc::Code::FAILED_PRECONDITION,
                        format!("pod {sandbox_id} has no running VM in this shim"),
                    )
                })?;
                self.create_container(&vm, req, &oci, stdio, false).await
            }
            Role::Standalone => {
                // Refused before a VM is booted for it.
                spec::root_disk(&req.id, &req.rootfs)
                    .map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, e.to_string()))?;
                let vm = self.boot(&req.id, &oci, 1).await?;
                self.clone().follow_vmm(vm.clone(), None);
                self.create_container(&vm, req, &oci, stdio, true).await
            }
        }
    }

    async fn create_container(
        self: &Arc<Self>,
        vm: &Arc<Vm>,
        req: &CreateTaskRequest,
        oci: &serde_json::Value,
        stdio: IoPaths,
        owns_vm: bool,
    ) -> Result<u32, ttrpc::Error> {
        let disk = spec::root_disk(&req.id, &req.rootfs)
            .map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, e.to_string()))?;
        let slot = vm.take_slot(&req.id).ok_or_else(|| {
            err(
                ttrpc::Code::RESOURCE_EXHAUSTED,
                format!("the pod's VM holds at most {POD_DISK_SLOTS} containers at once"),
            )
        })?;
        let guest_spec = spec::for_guest(oci);
        let io_req = wanted(&stdio);
        let setup = ContainerSetup {
            id: &req.id,
            spec: &guest_spec,
            disk: Some((&disk, slot, false)),
            mounts: vec![RootfsMount {
                fstype: "ext4".into(),
                source: sandbox::disk_source(&req.id),
                target: "rootfs".into(),
                options: Vec::new(),
            }],
            io: &io_req,
        };
        let created = vm
            .sandbox
            .add_container(self.backend.as_ref(), &setup)
            .await;
        let pid = match created {
            Ok(pid) => pid,
            Err(e) => {
                // The disk goes back to containerd untouched; the VM keeps serving.
                let _ = vm.sandbox.detach_disk(self.backend.as_ref(), slot);
                vm.free_slot(slot);
                return Err(err(ttrpc::Code::INVALID_ARGUMENT, e.to_string()));
            }
        };
        let main = Proc::new("", stdio.clone());
        *main.pid.lock().unwrap() = pid;
        self.pod.tasks.lock().unwrap().insert(
            req.id.clone(),
            Arc::new(Task {
                id: req.id.clone(),
                bundle: req.bundle.clone(),
                kind: Kind::Container { slot, owns_vm },
                main: main.clone(),
                execs: Default::default(),
            }),
        );
        tracing::info!("{}: connecting its stdio", req.id);
        match io::connect(&vm.sandbox.client, &req.id, "", &stdio).await {
            Ok(io) => *main.io.lock().unwrap() = Some(io),
            Err(e) => {
                let _ = self.delete_container(vm, &req.id, slot).await;
                return Err(err(ttrpc::Code::INVALID_ARGUMENT, e.to_string()));
            }
        }
        Ok(pid)
    }

    /// Removes a container from the VM: guest-init's Delete (it unmounts the root), then
    /// the disk out of its slot, which leaves the snapshot to containerd.
    async fn delete_container(&self, vm: &Vm, id: &str, slot: usize) -> Result<(), ttrpc::Error> {
        let r = vm.sandbox.client.delete(id, "").await;
        let detached = vm.sandbox.detach_disk(self.backend.as_ref(), slot);
        vm.free_slot(slot);
        self.pod.tasks.lock().unwrap().remove(id);
        if let Err(e) = r {
            tracing::warn!("{id}: guest delete: {e}");
        }
        detached.map_err(internal)
    }

    /// Stops and removes the VM and its record (pod sandbox deleted, or `ctr run`'s one
    /// container).
    async fn end_vm(&self) {
        let vm = self.pod.vm.lock().await.take();
        if let Some(vm) = vm {
            sandbox::destroy(&self.root, vm.sandbox.name(), STOP_GRACE).await;
        }
    }
}

#[async_trait]
impl TaskApi for Service {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        let i = &self.inner;
        tracing::info!(
            "create {} (stdin {:?} stdout {:?} stderr {:?} terminal {})",
            req.id,
            req.stdin,
            req.stdout,
            req.stderr,
            req.terminal
        );
        let pid = i
            .create(&req)
            .await
            .inspect_err(|e| tracing::warn!("create {}: {e}", req.id))?;
        tracing::info!("created {} pid {pid}", req.id);
        i.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                checkpoint: req.checkpoint.clone(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let i = &self.inner;
        tracing::info!("start {}/{}", req.id, req.exec_id);
        let (t, p) = i
            .pod
            .proc(&req.id, &req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        let pid = match t.kind {
            Kind::Vm if req.exec_id.is_empty() => p.pid(),
            _ => {
                let vm = i.vm().await?;
                let started = vm.sandbox.client.start(&req.id, &req.exec_id).await;
                let pid = match started {
                    Ok(pid) => pid,
                    Err(e) => {
                        // Nothing runs, and guest-init reports no exit for a process it
                        // never started: its exit is recorded here (docker's 127/126 for
                        // an executable that cannot be run), so Wait and a Kill-then-Wait
                        // cleanup end at once.
                        let status = e.cannot_run().map_or(255, |c| c.exit_code() as u32);
                        p.started.send_replace(true);
                        i.exit(&req.id, &p, Exit::now(status)).await;
                        return Err(guest(e));
                    }
                };
                *p.pid.lock().unwrap() = pid;
                pid
            }
        };
        if req.exec_id.is_empty() {
            i.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        } else {
            i.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            )
            .await;
        }
        p.started.send_replace(true);
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec(&self, _: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let i = &self.inner;
        let t = i.pod.task(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
        if t.kind == Kind::Vm {
            return Err(err(
                ttrpc::Code::FAILED_PRECONDITION,
                "the pod's sandbox container runs nothing to exec in",
            ));
        }
        if t.execs.lock().unwrap().contains_key(&req.exec_id) {
            return Err(err(
                ttrpc::Code::ALREADY_EXISTS,
                format!("exec {} exists", req.exec_id),
            ));
        }
        let vm = i.vm().await?;
        let stdio = IoPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let io_req = wanted(&stdio);
        let p = Proc::new(&req.exec_id, stdio.clone());
        // Registered before the guest knows it: its exit can only come after Start.
        t.execs
            .lock()
            .unwrap()
            .insert(req.exec_id.clone(), p.clone());
        let process: serde_json::Value = match req.spec.as_ref() {
            Some(any) => serde_json::from_slice(&any.value)
                .map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, format!("exec spec: {e}")))?,
            None => {
                return Err(err(
                    ttrpc::Code::INVALID_ARGUMENT,
                    "exec without a process spec",
                ))
            }
        };
        let r = async {
            vm.sandbox
                .client
                .exec(&req.id, &req.exec_id, &process, &io_req)
                .await
                .map_err(guest)?;
            io::connect(&vm.sandbox.client, &req.id, &req.exec_id, &stdio)
                .await
                .map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, e.to_string()))
        }
        .await;
        match r {
            Ok(io) => *p.io.lock().unwrap() = Some(io),
            Err(e) => {
                t.execs.lock().unwrap().remove(&req.exec_id);
                let _ = vm.sandbox.client.delete(&req.id, &req.exec_id).await;
                return Err(e);
            }
        }
        i.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(Empty::new())
    }

    async fn kill(&self, _: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let i = &self.inner;
        tracing::info!(
            "kill {}/{} signal {} all {}",
            req.id,
            req.exec_id,
            req.signal,
            req.all
        );
        let (t, p) = i
            .pod
            .proc(&req.id, &req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        // Killing what already exited is success (containerd's semantics).
        if p.exited().is_some() {
            return Ok(Empty::new());
        }
        if t.kind == Kind::Vm {
            // The pod's sandbox: stop the VM in the background; its exit follows box-vmm's.
            let me = self.inner.clone();
            tokio::spawn(async move {
                let name = me.vm().await.map(|vm| vm.sandbox.name().to_string());
                if let Ok(name) = name {
                    let grace = if req.signal == libc::SIGKILL as u32 {
                        Duration::ZERO
                    } else {
                        STOP_GRACE
                    };
                    if let Err(e) = sandbox::stop(&me.root, &name, grace).await {
                        tracing::warn!("{name}: stop: {e}");
                    }
                }
            });
            return Ok(Empty::new());
        }
        let vm = i.vm().await?;
        match vm
            .sandbox
            .client
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await
        {
            Ok(()) => Ok(Empty::new()),
            // It exited between our check and the guest's kill.
            Err(_) if p.exited().is_some() => Ok(Empty::new()),
            Err(e) => Err(guest(e)),
        }
    }

    async fn wait(&self, _: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let (_, p) = self
            .inner
            .pod
            .proc(&req.id, &req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        let e = p.wait().await;
        Ok(WaitResponse {
            exit_status: e.status,
            exited_at: Some(e.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn state(&self, _: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let (t, p) = self
            .inner
            .pod
            .proc(&req.id, &req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        let exit = p.exited();
        let status = match (exit, *p.started.borrow()) {
            (Some(_), _) => Status::STOPPED,
            (None, true) => Status::RUNNING,
            (None, false) => Status::CREATED,
        };
        Ok(StateResponse {
            id: req.id.clone(),
            bundle: t.bundle.clone(),
            pid: p.pid(),
            status: status.into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.map_or(0, |e| e.status),
            exited_at: exit.map(|e| e.timestamp()).into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn delete(&self, _: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let i = &self.inner;
        tracing::info!("delete {}/{}", req.id, req.exec_id);
        let (t, p) = i
            .pod
            .proc(&req.id, &req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        let exit = p.exited().unwrap_or_else(|| Exit::now(0));
        if !req.exec_id.is_empty() {
            if let Ok(vm) = i.vm().await {
                let _ = vm.sandbox.client.delete(&req.id, &req.exec_id).await;
            }
            t.execs.lock().unwrap().remove(&req.exec_id);
        } else {
            match t.kind {
                Kind::Vm => {
                    i.pod.tasks.lock().unwrap().remove(&req.id);
                    i.end_vm().await;
                }
                Kind::Container { slot, owns_vm } => {
                    if let Ok(vm) = i.vm().await {
                        i.delete_container(&vm, &req.id, slot).await?;
                    } else {
                        i.pod.tasks.lock().unwrap().remove(&req.id);
                    }
                    if owns_vm {
                        i.end_vm().await;
                    }
                }
            }
            i.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    pid: p.pid(),
                    exit_status: exit.status,
                    exited_at: Some(exit.timestamp()).into(),
                    id: req.id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        }
        Ok(DeleteResponse {
            pid: p.pid(),
            exit_status: exit.status,
            exited_at: Some(exit.timestamp()).into(),
            ..Default::default()
        })
    }

    async fn pids(&self, _: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let i = &self.inner;
        let t = i.pod.task(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
        let pids = if t.kind == Kind::Vm {
            vec![t.main.pid()]
        } else {
            i.vm()
                .await?
                .sandbox
                .client
                .pids(&req.id)
                .await
                .map_err(guest)?
        };
        Ok(PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        let vm = self.inner.vm().await?;
        vm.sandbox
            .client
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)
            .await
            .map_err(guest)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        let i = &self.inner;
        let (_, p) = i
            .pod
            .proc(&req.id, &req.exec_id)
            .ok_or_else(|| not_found(&req.id, &req.exec_id))?;
        if let Some(io) = p.io.lock().unwrap().as_mut() {
            io.close_stdin();
        }
        let vm = i.vm().await?;
        vm.sandbox
            .client
            .close_stdin(&req.id, &req.exec_id)
            .await
            .map_err(guest)?;
        Ok(Empty::new())
    }

    /// The guest's cgroup statistics are not carried to the host yet: an honest empty answer.
    async fn stats(&self, _: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        self.inner
            .pod
            .task(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        Ok(StatsResponse::default())
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: ConnectRequest,
    ) -> ttrpc::Result<ConnectResponse> {
        let t = self.inner.pod.task(&req.id);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: t.map_or(0, |t| t.main.pid()),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: ShutdownRequest) -> ttrpc::Result<Empty> {
        let i = &self.inner;
        tracing::info!(
            "shutdown ({} tasks left)",
            i.pod.tasks.lock().unwrap().len()
        );
        if !i.pod.tasks.lock().unwrap().is_empty() {
            return Ok(Empty::new());
        }
        i.end_vm().await;
        i.exit.signal();
        Ok(Empty::new())
    }
}
