//! Sandboxes: a microVM (or, for tests, a host-process init) holding containers.
//!
//! One boot path for every front door: [`Sandbox::create_vm`] (a pod's VM, containers added
//! later with [`Sandbox::add_container`]) and [`Sandbox::create`] (`box run`: the VM and its
//! one container) both reserve the name, write the record (`Creating`), launch the backend's
//! process, wait for readiness (bounded by the process's liveness) and configure the guest's
//! network; [`Sandbox::start`] starts `box run`'s container (`Running`); the caller
//! streams its stdio and waits; [`stop`] shuts the sandbox down (`Exited`); [`remove`] is the
//! only thing that deletes a record. Any failure during creation leaves the record `Failed`
//! with the reason and the console tail, files kept.

pub mod backend;
use box_images as image;
pub mod jail;
pub mod leftovers;
pub mod log;
pub mod readiness;
pub mod security;
pub mod state;
pub mod user;
pub mod vmm_process;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::agent_client::{ClientError, Endpoint, GuestClient, RootfsMount, StdioRequest};
use crate::network::{self, NetworkMode, PortMapping};
use backend::{Backend, LaunchSpec};
use state::{BackendKind, Paths, Pids, Record, RunConfig, SandboxState, StateError, StateRoot};
use vmm_process::{ProcRef, Spawned};

/// How many console lines a failed record keeps.
pub const CONSOLE_TAIL: usize = 20;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// The host cannot run the backend; the message says what to do.
    #[error("{0}")]
    Preflight(String),
    #[error("sandbox {name} failed to start: {reason}{}", last_line(console_tail))]
    BootFailed {
        name: String,
        reason: String,
        console_tail: Vec<String>,
    },
    /// Creation failed before anything was launched (there is no console to quote).
    #[error("sandbox {name} failed to start: {reason}")]
    SetupFailed { name: String, reason: String },
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    #[error("sandbox {0} is running: stop it first, or use box rm -f")]
    IsRunning(String),
    /// An option no backend accepts, caught before anything is made.
    #[error("{0}")]
    InvalidOption(String),
    /// The container's command could not be started (not found, not executable): the
    /// sandbox is recorded `Exited` with docker's code for it (127, 126).
    #[error("{command}: {detail}")]
    CannotRun {
        name: String,
        command: String,
        code: i32,
        detail: String,
    },
    #[error("talking to sandbox {name}: {source}")]
    Guest {
        name: String,
        #[source]
        source: ClientError,
    },
    #[error("{0}")]
    Io(String),
}

fn last_line(tail: &[String]) -> String {
    match tail.last() {
        Some(l) => format!(" (console: {l})"),
        // Worth saying: a guest stuck before its console driver looks exactly like this.
        None => " (its console is empty)".to_string(),
    }
}

/// What `box run` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    pub name: Option<String>,
    pub image: String,
    pub cpus: u32,
    pub memory_mib: u32,
    /// `KEY=VALUE`, over the image's environment.
    pub env: Vec<String>,
    /// Replaces the image's Cmd (the Entrypoint stays), as with OCI runtimes' `run`.
    pub command: Vec<String>,
    pub io: StdioRequest,
    pub auto_remove: bool,
    /// Cap of one container log file (0: the default).
    pub log_max_bytes: u64,
    /// `-u`: overrides the image's `User`.
    pub user: Option<String>,
    /// `--no-jail`: run box-vmm unjailed (debugging).
    pub no_jail: bool,
    /// `--pids-limit`: processes the container may have at once.
    pub pids_limit: Option<i64>,
    /// How long a guest that runs but never answers is waited for.
    pub boot_backstop: Option<Duration>,
    /// `--network`; None: the backend's default (`nat` for microVMs).
    pub network: Option<NetworkMode>,
    /// `-p`.
    pub publish: Vec<PortMapping>,
}

/// vCPUs and memory a sandbox may ask for: box-vmm's own bounds (32 vCPUs, 64 GiB), and a
/// floor under which the stock kernel and the initramfs do not boot.
pub const MAX_CPUS: u32 = 32;
pub const MIN_MEMORY_MIB: u32 = 64;
pub const MAX_MEMORY_MIB: u32 = 64 * 1024;

impl CreateOptions {
    /// The same checks for every backend and front door, before anything is made.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let bad = |m: String| Err(SandboxError::InvalidOption(m));
        if self.cpus == 0 || self.cpus > MAX_CPUS {
            return bad(format!(
                "--cpus {}: must be between 1 and {MAX_CPUS}",
                self.cpus
            ));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return bad(format!(
                "--memory {}: must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB} MiB",
                self.memory_mib
            ));
        }
        validate_env(&self.env)?;
        if let Some(p) = self.pids_limit.filter(|p| *p < 1) {
            return bad(format!("--pids-limit {p}: must be at least 1"));
        }
        if let Some(n) = &self.name {
            state::validate_name(n)?;
        }
        if !self.publish.is_empty() && self.network == Some(NetworkMode::None) {
            return bad("-p needs a network: --network none publishes nothing".into());
        }
        Ok(())
    }
}

/// Each entry `KEY=VALUE` with a non-empty key (what the guest's `execve` can carry).
pub fn validate_env(env: &[String]) -> Result<(), SandboxError> {
    for e in env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() && !e.contains('\0') => {}
            _ => {
                return Err(SandboxError::InvalidOption(format!(
                    "--env {e:?}: must be KEY=VALUE with a non-empty KEY"
                )))
            }
        }
    }
    Ok(())
}

pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const DEFAULT_BACKSTOP: Duration = Duration::from_secs(120);

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64
            ^ (std::process::id() as u64) << 32;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> ((i % 8) * 8)) as u8;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// An OCI process spec.
pub fn process_spec(
    args: &[String],
    env: &[String],
    cwd: &str,
    terminal: bool,
    user: &user::UserIds,
) -> Value {
    json!({
        "terminal": terminal,
        "user": {"uid": user.uid, "gid": user.gid, "additionalGids": user.additional_gids},
        "args": args,
        "env": env,
        "cwd": if cwd.is_empty() { "/" } else { cwd },
        "capabilities": security::capabilities(),
        "noNewPrivileges": true,
    })
}

/// Guest memory kept out of the container's cgroup, for the kernel and guest-init: an OOM
/// inside the container kills the container's processes, never PID 1.
pub const GUEST_RESERVE_MIB: u32 = 64;

/// The container's cgroup limits (`linux.resources`): memory is the VM's less the guest's
/// reserve; pids only when asked for.
pub fn resources(memory_mib: u32, pids_limit: Option<i64>) -> Value {
    let memory = u64::from(memory_mib.saturating_sub(GUEST_RESERVE_MIB).max(16)) << 20;
    let mut r = json!({ "memory": { "limit": memory } });
    if let Some(p) = pids_limit {
        r["pids"] = json!({ "limit": p });
    }
    r
}

/// The container's OCI runtime spec; its root is the overlay guest-init mounts at `rootfs`.
pub fn container_spec(hostname: &str, process: Value, resources: Value) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": "rootfs"},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "resources": resources,
            "seccomp": security::seccomp(),
            "maskedPaths": security::MASKED_PATHS,
            "readonlyPaths": security::READONLY_PATHS,
        },
    })
}

/// Merges `KEY=VALUE` lists, later keys winning, order of first appearance kept.
pub fn merge_env(lists: &[&[String]]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for list in lists {
        for kv in *list {
            let key = kv.split('=').next().unwrap_or(kv);
            match out
                .iter_mut()
                .find(|e| e.split('=').next().unwrap_or(e) == key)
            {
                Some(slot) => *slot = kv.clone(),
                None => out.push(kv.clone()),
            }
        }
    }
    out
}

/// The serial of a container's root disk in the guest (box-vmm takes at most 20 bytes).
fn rootfs_disk_id(container_id: &str) -> String {
    let short: String = container_id.chars().take(16).collect();
    format!("ctr-{short}")
}

/// What a container of `image` runs, as `box run` (and the pool) ask for it: the image's
/// Entrypoint and Cmd (the command replacing Cmd), its environment under the caller's, its
/// user unless overridden, its working directory.
pub fn run_config(
    image: &image::ResolvedImage,
    opts: &CreateOptions,
) -> Result<RunConfig, SandboxError> {
    let mut args = image.config.entrypoint.clone();
    if opts.command.is_empty() {
        args.extend(image.config.cmd.iter().cloned());
    } else {
        args.extend(opts.command.iter().cloned());
    }
    if args.is_empty() {
        args.push("/bin/sh".into());
    }
    let terminal_env = if opts.io.terminal {
        vec!["TERM=xterm".to_string()]
    } else {
        Vec::new()
    };
    let user_spec = opts
        .user
        .clone()
        .unwrap_or_else(|| image.config.user.clone());
    let ids = user::resolve(&image.rootfs, &user_spec)
        .map_err(|e| SandboxError::InvalidOption(e.to_string()))?;
    let home = ids
        .home
        .clone()
        .unwrap_or_else(|| if ids.uid == 0 { "/root" } else { "/" }.to_string());
    let base = [DEFAULT_PATH.to_string(), format!("HOME={home}")];
    let env = merge_env(&[&base, &image.config.env, &terminal_env, &opts.env]);
    Ok(RunConfig {
        cpus: opts.cpus,
        memory_mib: opts.memory_mib,
        command: args,
        env,
        cwd: image.config.working_dir.clone(),
        auto_remove: opts.auto_remove,
        log_max_bytes: opts.log_max_bytes,
        user: ids,
        pids_limit: opts.pids_limit,
    })
}

/// Reserves `name` (a random one when None) and writes its `Creating` record.
fn new_record(
    root: &StateRoot,
    backend: &dyn Backend,
    name: Option<String>,
    image: &str,
    config: RunConfig,
    rootfs: Option<PathBuf>,
) -> Result<Record, SandboxError> {
    let name = name.unwrap_or_else(|| format!("box-{}", random_hex(4)));
    let dir = root.reserve(&name)?;
    let paths = Paths {
        dir: dir.clone(),
        console: backend.console_path(&dir),
        vmm_log: dir.join("vmm.log"),
        container_log: dir.join("container.log"),
        endpoint: backend.endpoint_path(&dir),
        disk: None,
        rootfs,
    };
    let record = Record {
        name,
        id: random_hex(8),
        image: image.to_string(),
        backend: backend.kind(),
        state: SandboxState::Creating,
        pids: Pids::default(),
        created_at: state::now(),
        started_at: None,
        finished_at: None,
        exit_code: None,
        oom_killed: false,
        error: None,
        console_tail: Vec::new(),
        paths,
        config,
        network: None,
    };
    root.write(&record)?;
    Ok(record)
}

/// A created (or re-attached) sandbox and a client connected to its guest.
pub struct Sandbox {
    pub record: Record,
    pub client: GuestClient,
    root: StateRoot,
    /// Set when this process spawned the sandbox's process.
    pub process: Option<Spawned>,
    /// When this process began creating the sandbox (for the phase timings logged at info).
    began: std::time::Instant,
}

/// Marks a record `Failed` with the reason and the console tail; returns the tail.
pub fn mark_failed(root: &StateRoot, name: &str, reason: &str) -> Vec<String> {
    let r = root.update(name, |r| {
        let tail = state::tail_lines(&[&r.paths.console, &r.paths.vmm_log], CONSOLE_TAIL);
        r.state = SandboxState::Failed;
        r.error = Some(reason.to_string());
        r.console_tail = tail.clone();
        r.finished_at = Some(state::now());
        tail
    });
    match r {
        Ok((_, tail)) => tail,
        Err(e) => {
            tracing::warn!("recording the failure of {name}: {e}");
            Vec::new()
        }
    }
}

/// What the VM itself needs, whoever asks for it (the CLI's one container, a pod's sandbox).
#[derive(Debug, Clone, Default)]
pub struct VmSpec {
    pub network: NetworkMode,
    pub publish: Vec<PortMapping>,
    pub no_jail: bool,
    pub boot_backstop: Option<Duration>,
    /// Empty virtio-blk slots for containers' disks attached after boot.
    pub disk_slots: u32,
}

/// A container to create in a booted sandbox.
pub struct ContainerSetup<'a> {
    pub id: &'a str,
    /// The OCI runtime spec guest-init writes into the bundle.
    pub spec: &'a Value,
    /// The block image holding the container's root: (file, slot, read-only).
    pub disk: Option<(&'a Path, usize, bool)>,
    /// Mounts guest-init applies under the bundle (the disk by its serial, [`disk_source`]).
    pub mounts: Vec<RootfsMount>,
    pub io: &'a StdioRequest,
}

/// How guest-init finds a container's disk: by its serial, under udev's name for it.
pub fn disk_source(container_id: &str) -> String {
    format!("{}{}", backend::BY_ID, rootfs_disk_id(container_id))
}

impl Sandbox {
    /// Boots a sandbox and creates its container (not started yet): `box run`.
    pub async fn create(
        root: &StateRoot,
        backend: &dyn Backend,
        opts: &CreateOptions,
    ) -> Result<Sandbox, SandboxError> {
        let began = std::time::Instant::now();
        opts.validate()?;
        backend.preflight()?;
        let image = image::resolve(&opts.image, &root.images_dir())?;
        let config = run_config(&image, opts)?;
        let vm = VmSpec {
            network: opts
                .network
                .clone()
                .unwrap_or_else(|| backend.default_network()),
            publish: opts.publish.clone(),
            no_jail: opts.no_jail,
            boot_backstop: opts.boot_backstop,
            disk_slots: 1,
        };
        let record = new_record(
            root,
            backend,
            opts.name.clone(),
            &opts.image,
            config,
            Some(image.rootfs.clone()),
        )?;
        let name = record.name.clone();
        let mut process = None;
        let r = Self::create_steps(
            root,
            backend,
            opts,
            &image,
            &vm,
            record,
            &mut process,
            began,
        )
        .await;
        Self::settle(root, &name, r, process).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_steps(
        root: &StateRoot,
        backend: &dyn Backend,
        opts: &CreateOptions,
        image: &image::ResolvedImage,
        vm: &VmSpec,
        mut record: Record,
        process: &mut Option<Spawned>,
        began: std::time::Instant,
    ) -> Result<Sandbox, String> {
        let rootfs = Self::prepare_rootfs(root, backend, image, &mut record)?;
        let sb = Self::boot(root, backend, vm, record, process, began).await?;
        sb.add_main_container(backend, &rootfs, &opts.io)
            .await
            .map_err(|e| e.to_string())?;
        Ok(sb)
    }

    /// The image's root for the record's container, before anything is launched (a bad
    /// image fails here, with nothing to clean up); the disk is recorded.
    pub fn prepare_rootfs(
        root: &StateRoot,
        backend: &dyn Backend,
        image: &image::ResolvedImage,
        record: &mut Record,
    ) -> Result<(Option<PathBuf>, Vec<RootfsMount>), String> {
        let rootfs = backend
            .prepare_rootfs(image, root, &record.paths.dir, &rootfs_disk_id(&record.id))
            .map_err(|e| e.to_string())?;
        record.paths.disk = rootfs.0.clone();
        root.write(record).map_err(|e| e.to_string())?;
        Ok(rootfs)
    }

    /// Boots a sandbox with no container in it yet (a pod's VM): containers come later,
    /// through [`Sandbox::add_container`].
    pub async fn create_vm(
        root: &StateRoot,
        backend: &dyn Backend,
        name: &str,
        config: RunConfig,
        vm: &VmSpec,
    ) -> Result<Sandbox, SandboxError> {
        let began = std::time::Instant::now();
        backend.preflight()?;
        let record = new_record(root, backend, Some(name.to_string()), "", config, None)?;
        let mut process = None;
        let r = Self::boot(root, backend, vm, record, &mut process, began).await;
        Self::settle(root, name, r, process).await
    }

    /// The end of a creation whose record was written: any failure marks it `Failed` with
    /// the reason and the console tail, and the record stays until `box rm`.
    async fn settle(
        root: &StateRoot,
        name: &str,
        r: Result<Sandbox, String>,
        process: Option<Spawned>,
    ) -> Result<Sandbox, SandboxError> {
        let name = name.to_string();
        match r {
            Ok(sb) => Ok(sb),
            Err(reason) => {
                let console_tail = mark_failed(root, &name, &reason);
                // A failed sandbox publishes nothing; its address stays leased until rm.
                network::unpublish(root, &name);
                // Not even Failed could be recorded (the state directory's disk is gone):
                // a process nothing can find through its record must not live on.
                let recorded = root
                    .load(&name)
                    .is_ok_and(|r| r.state == SandboxState::Failed);
                if let (false, Some(p)) = (recorded, &process) {
                    let p = p.proc_ref;
                    tokio::task::spawn_blocking(move || {
                        kill_and_wait(&p, libc::SIGKILL, Duration::from_secs(10))
                    })
                    .await
                    .ok();
                }
                if process.is_none() {
                    return Err(SandboxError::SetupFailed { name, reason });
                }
                Err(SandboxError::BootFailed {
                    name,
                    reason,
                    console_tail,
                })
            }
        }
    }

    /// The VM's part of a creation: network, the backend's process, readiness, the guest's
    /// network. Shared by every front door; the record is `Creating` throughout.
    async fn boot(
        root: &StateRoot,
        backend: &dyn Backend,
        vm: &VmSpec,
        mut record: Record,
        process: &mut Option<Spawned>,
        began: std::time::Instant,
    ) -> Result<Sandbox, String> {
        let phase = |what: &str| tracing::info!("{}: {what} at {:?}", record.name, began.elapsed());
        let mode = vm.network.clone();
        if backend.kind() == BackendKind::HostProcess && mode != NetworkMode::None {
            return Err(format!(
                "--network {mode}: the host-process backend shares the host's network; use --network none"
            ));
        }
        // Recorded before it is made: a crash from here on leaves a record naming it.
        record.network = Some(network::Attachment {
            mode: mode.clone(),
            ..Default::default()
        });
        root.write(&record).map_err(|e| e.to_string())?;
        let live = |n: &str| {
            root.load(n)
                .is_ok_and(|r| effective_state(&r) == SandboxState::Running)
        };
        let net = network::attach(root, &record.name, &record.id, &mode, &vm.publish, &live)
            .await
            .map_err(|e| format!("setting up the network: {e}"))?;
        record.network = Some(net.attachment.clone());
        root.write(&record).map_err(|e| e.to_string())?;
        phase("network attached");
        let mac = net.attachment.interface.as_ref().map(|i| i.mac.clone());
        let spawned = backend
            .launch(&LaunchSpec {
                paths: &record.paths,
                cpus: record.config.cpus,
                memory_mib: record.config.memory_mib,
                jail: !vm.no_jail,
                net: net.tap.as_ref().zip(mac.as_deref()),
                disk_slots: vm.disk_slots,
            })
            .map_err(|e| e.to_string())?;
        // box-vmm holds the TAP now: once it exits, the TAP goes.
        drop(net.tap);
        *process = Some(spawned.clone());
        phase("process launched");
        record.pids.vmm = Some(spawned.proc_ref);
        root.write(&record).map_err(|e| e.to_string())?;
        let endpoint = backend::endpoint(record.backend, &record.paths);
        let backstop = vm.boot_backstop.unwrap_or(DEFAULT_BACKSTOP);
        let client = readiness::wait_ready(&endpoint, &spawned, backstop)
            .await
            .map_err(|e| match e {
                readiness::ReadyError::Exited(code) => backend.explain_exit(code),
                other => other.to_string(),
            })?;
        phase("guest ready");
        if record.backend == BackendKind::HostProcess {
            record.pids.init = host_init_pid(spawned.proc_ref.pid);
        }
        root.write(&record).map_err(|e| e.to_string())?;
        if mode != NetworkMode::None {
            client
                .configure_network(&net.attachment.guest_request())
                .await
                .map_err(|e| format!("configuring the guest's network: {e}"))?;
            phase("network configured");
        }
        Ok(Sandbox {
            record,
            client,
            root: root.clone(),
            process: process.clone(),
            began,
        })
    }

    /// Creates the sandbox's own container as its record's config says, on the image's
    /// root prepared by [`Backend::prepare_rootfs`] (`rootfs`: its disk, read-only in slot 0
    /// under a writable overlay, and the mounts): the deferred main of a booted VM, `box
    /// run`'s container or a pooled sandbox's.
    pub async fn add_main_container(
        &self,
        backend: &dyn Backend,
        rootfs: &(Option<PathBuf>, Vec<RootfsMount>),
        io: &StdioRequest,
    ) -> Result<u32, SandboxError> {
        let c = &self.record.config;
        let spec = container_spec(
            &self.record.name,
            process_spec(&c.command, &c.env, &c.cwd, io.terminal, &c.user),
            resources(c.memory_mib, c.pids_limit),
        );
        self.add_container(
            backend,
            &ContainerSetup {
                id: &self.record.id,
                spec: &spec,
                disk: rootfs.0.as_deref().map(|d| (d, 0, true)),
                mounts: rootfs.1.clone(),
                io,
            },
        )
        .await
    }

    /// Creates a container in the booted sandbox: its disk into the slot, then guest-init's
    /// Create. Returns the container's pid in the guest. A failure here is the container's:
    /// the caller decides whether it fails the sandbox (`box run`) or not (a pod).
    pub async fn add_container(
        &self,
        backend: &dyn Backend,
        c: &ContainerSetup<'_>,
    ) -> Result<u32, SandboxError> {
        let phase = |what: &str| {
            tracing::info!("{}: {what} at {:?}", self.record.name, self.began.elapsed())
        };
        if let Some((file, slot, read_only)) = c.disk {
            backend
                .attach_disk(
                    &self.record.paths,
                    slot,
                    file,
                    &rootfs_disk_id(c.id),
                    read_only,
                )
                .map_err(|e| SandboxError::Io(format!("attaching the container's disk: {e}")))?;
            phase("rootfs attached");
        }
        let bundle = backend.bundle_dir(&self.record.paths, c.id);
        let pid = self
            .client
            .create_described(c.id, &bundle, c.io, Some(c.spec), c.mounts.clone())
            .await
            .map_err(|e| SandboxError::Io(format!("creating the container: {e}")))?;
        phase("container created");
        Ok(pid)
    }

    /// Empties a disk slot (the container using it was deleted).
    pub fn detach_disk(&self, backend: &dyn Backend, slot: usize) -> Result<(), SandboxError> {
        backend.detach_disk(&self.record.paths, slot)
    }

    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn container_id(&self) -> &str {
        &self.record.id
    }

    pub fn root(&self) -> &StateRoot {
        &self.root
    }

    /// Records the sandbox `Running` (its container started, or a pod's VM booted).
    pub fn set_running(&mut self) -> Result<(), SandboxError> {
        let (r, ()) = self.root.update(&self.record.name, |r| {
            r.state = SandboxState::Running;
            r.started_at = Some(state::now());
        })?;
        self.record = r;
        Ok(())
    }

    /// Starts the main process: the sandbox is `Running`.
    pub async fn start(&mut self) -> Result<u32, SandboxError> {
        match self.client.start(&self.record.id, "").await {
            Ok(pid) => {
                self.set_running()?;
                tracing::info!(
                    "{}: container started at {:?}",
                    self.record.name,
                    self.began.elapsed()
                );
                Ok(pid)
            }
            Err(e) if e.cannot_run().is_some() => {
                let code = e.cannot_run().map_or(127, |c| c.exit_code());
                let reason = e.to_string();
                // "... failed at Exec: EACCES: Permission denied" → "Permission denied".
                let detail = match reason.rsplit_once(": ") {
                    _ if code == 127 => "executable file not found".to_string(),
                    Some((_, why)) => format!("cannot be run: {why}"),
                    None => "cannot be run".to_string(),
                };
                let (r, ()) = self.root.update(&self.record.name, |r| {
                    r.state = SandboxState::Exited;
                    r.exit_code = Some(code);
                    r.error = Some(reason.clone());
                    r.finished_at = Some(state::now());
                })?;
                self.record = r;
                Err(SandboxError::CannotRun {
                    name: self.record.name.clone(),
                    command: self
                        .record
                        .config
                        .command
                        .first()
                        .cloned()
                        .unwrap_or_default(),
                    code,
                    detail,
                })
            }
            Err(e) => {
                let reason = format!("starting the container: {e}");
                let console_tail = mark_failed(&self.root, &self.record.name, &reason);
                Err(SandboxError::BootFailed {
                    name: self.record.name.clone(),
                    reason,
                    console_tail,
                })
            }
        }
    }

    /// Records a process of this sandbox in its record (the log pump of `box run -d`).
    pub fn set_log_pump(&mut self, pump: ProcRef) -> Result<(), SandboxError> {
        let (r, ()) = self
            .root
            .update(&self.record.name, |r| r.pids.log_pump = Some(pump))?;
        self.record = r;
        Ok(())
    }
}

/// A running sandbox's record and its guest's endpoint, not connected yet (a client may open
/// streams there while it connects).
pub fn running(root: &StateRoot, name: &str) -> Result<(Record, Endpoint), SandboxError> {
    let record = root.load(name)?;
    if effective_state(&record) != SandboxState::Running {
        return Err(SandboxError::NotRunning(name.into()));
    }
    let endpoint = backend::endpoint(record.backend, &record.paths);
    Ok((record, endpoint))
}

/// The control connection to a running sandbox's guest. No Health call: the record says
/// Running and the next call answers for the guest (a VM that died since fails the connect's
/// handshake, with the reason). The connect itself is bounded, so a wedged guest is an
/// error, not a hang.
pub async fn connect_guest(name: &str, endpoint: Endpoint) -> Result<GuestClient, SandboxError> {
    let guest = |source| SandboxError::Guest {
        name: name.into(),
        source,
    };
    tokio::time::timeout(readiness::ATTEMPT, GuestClient::connect(endpoint))
        .await
        .map_err(|_| guest(ClientError::Timeout(readiness::ATTEMPT)))?
        .map_err(guest)
}

/// The host pid of guest-init, the child of `unshare`.
fn host_init_pid(unshare: i32) -> Option<ProcRef> {
    let children =
        std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children")).ok()?;
    let pid = children.split_whitespace().next()?.parse().ok()?;
    ProcRef::of(pid)
}

/// The state as it is now: a `Creating` or `Running` record whose process is gone is
/// `Exited`.
pub fn effective_state(r: &Record) -> SandboxState {
    match r.state {
        SandboxState::Creating | SandboxState::Running
            if !r.pids.vmm.is_some_and(|p| p.is_alive()) =>
        {
            // Still being created, with its VMM launched but not yet recorded (or its
            // creator killed right then): not over while a process of it lives.
            if r.state == SandboxState::Creating && r.pids.vmm.is_none() {
                let root = r.paths.dir.parent().and_then(Path::parent);
                if root.is_some_and(|root| {
                    !leftovers::processes(&StateRoot::new(root), &r.name).is_empty()
                }) {
                    return SandboxState::Creating;
                }
            }
            SandboxState::Exited
        }
        s => s,
    }
}

fn is_self(p: &ProcRef) -> bool {
    p.pid == std::process::id() as i32
}

fn kill_and_wait(p: &ProcRef, sig: i32, limit: Duration) -> bool {
    if is_self(p) {
        return true;
    }
    p.signal(sig);
    p.wait_gone(limit)
}

/// Whether the container's main process was taken by the OOM killer: guest-init publishes
/// TaskOOM before the main process's TaskExit, so the events up to that TaskExit tell. Only
/// asked after a SIGKILL (137), the only way an OOM kill ends a process.
pub async fn oom_killed(client: &GuestClient, id: &str) -> bool {
    use box_guest_init::api::events::Event;
    let scan = async {
        let mut events = client.events().await.ok()?;
        let mut oom = false;
        while let Ok(Some(ev)) = events.next().await {
            match ev {
                Event::Oom(o) if o.container_id == id => oom = true,
                Event::Exit(e) if e.container_id == id && e.id == id => return Some(oom),
                _ => {}
            }
        }
        Some(oom)
    };
    // TaskExit follows the exit within the guest's drain grace; this only bounds a lost one.
    tokio::time::timeout(Duration::from_secs(5), scan)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Ends a sandbox's log pump or supervisor: an attached client that lives to clean up after
/// its container does not need its stand-in.
pub fn dismiss_pump(r: &Record) {
    if let Some(p) = r.pids.log_pump.filter(|p| !is_self(p)) {
        kill_and_wait(&p, libc::SIGKILL, Duration::from_secs(10));
    }
}

/// Records the main process's exit.
pub fn record_exit(
    root: &StateRoot,
    name: &str,
    code: Option<i32>,
    oom_killed: bool,
) -> Result<Record, SandboxError> {
    let (r, ()) = root.update(name, |r| {
        if r.state != SandboxState::Failed {
            r.state = SandboxState::Exited;
        }
        if code.is_some() {
            r.exit_code = code;
        }
        r.oom_killed |= oom_killed;
        r.finished_at.get_or_insert_with(state::now);
    })?;
    // Ended: its ports are free for others (docker's behaviour); its address stays until rm.
    network::unpublish(root, name);
    Ok(r)
}

/// Stops a sandbox: asks guest-init to shut down (SIGTERM to everything, SIGKILL after
/// `grace`), waits for the sandbox's process, kills it if it lingers. The record stays.
pub async fn stop(root: &StateRoot, name: &str, grace: Duration) -> Result<Record, SandboxError> {
    let r = root.load(name)?;
    let endpoint = backend::endpoint(r.backend, &r.paths);
    if let Some(vmm) = r.pids.vmm.filter(|p| p.is_alive()) {
        let asked = async {
            let c = tokio::time::timeout(readiness::ATTEMPT, GuestClient::connect(endpoint))
                .await
                .ok()?
                .ok()?;
            tokio::time::timeout(readiness::ATTEMPT, c.shutdown(grace))
                .await
                .ok()?
                .ok()
        }
        .await
        .is_some();
        let gone = asked && {
            let limit = grace + Duration::from_secs(5);
            tokio::task::spawn_blocking(move || vmm.wait_gone(limit))
                .await
                .unwrap_or(false)
        };
        if !gone {
            tracing::info!("{name}: sandbox process still alive, killing it");
            tokio::task::spawn_blocking(move || {
                kill_and_wait(&vmm, libc::SIGKILL, Duration::from_secs(10))
            })
            .await
            .ok();
        }
    }
    let pids = r.pids.clone();
    tokio::task::spawn_blocking(move || {
        for p in pids.vmm.iter().chain(&pids.init) {
            kill_and_wait(p, libc::SIGKILL, Duration::from_secs(10));
        }
        // The log pump ends by itself once the sandbox is gone, after recording the exit
        // code (and removing the sandbox, for --rm): give it that chance.
        if let Some(p) = pids.log_pump.filter(|p| !is_self(p)) {
            if !p.wait_gone(Duration::from_secs(10)) {
                kill_and_wait(&p, libc::SIGKILL, Duration::from_secs(10));
            }
        }
    })
    .await
    .ok();
    match record_exit(root, name, None, false) {
        // `run -d --rm`: the log pump removed the sandbox as it ended.
        Err(SandboxError::State(StateError::Unknown(_))) => Ok(Record {
            state: SandboxState::Exited,
            ..r
        }),
        other => other,
    }
}

/// Ends a sandbox for good from async code (a pod's VM, a pooled sandbox): [`stop`] with
/// `grace`, then [`remove`] (which kills and waits for what is left) off the runtime. Failures
/// are logged: the sandbox is being thrown away either way.
pub async fn destroy(root: &StateRoot, name: &str, grace: Duration) {
    if let Err(e) = stop(root, name, grace).await {
        tracing::warn!("{name}: stop: {e}");
    }
    let (r, n) = (root.clone(), name.to_string());
    match tokio::task::spawn_blocking(move || remove(&r, &n, true)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("{name}: remove: {e}"),
        Err(e) => tracing::warn!("{name}: remove: {e}"),
    }
}

/// Removes a sandbox's record and files. A running one needs `force`; its processes are
/// killed first (SIGKILL) and waited for.
pub fn remove(root: &StateRoot, name: &str, force: bool) -> Result<(), SandboxError> {
    let r = match root.load(name) {
        Ok(r) => r,
        Err(StateError::NoRecord(_) | StateError::Corrupt { .. }) => {
            return remove_without_record(root, name, force)
        }
        Err(e) => return Err(e.into()),
    };
    if effective_state(&r) == SandboxState::Running && !force {
        return Err(SandboxError::IsRunning(name.into()));
    }
    // Recorded pids first, then anything of this sandbox the record missed (a client killed
    // between launching a process and recording its pid).
    let leftovers = leftovers::processes(root, name);
    if !force && !leftovers.is_empty() {
        return Err(SandboxError::IsRunning(name.into()));
    }
    kill_and_remove(root, name, r.pids.all().chain(&leftovers))
}

/// SIGKILLs `procs`, then deletes the sandbox's directory and cgroup.
fn kill_and_remove<'a>(
    root: &StateRoot,
    name: &str,
    procs: impl Iterator<Item = &'a ProcRef>,
) -> Result<(), SandboxError> {
    for p in procs {
        if !kill_and_wait(p, libc::SIGKILL, Duration::from_secs(10)) {
            return Err(SandboxError::Io(format!(
                "process {} of sandbox {name} did not exit after SIGKILL",
                p.pid
            )));
        }
    }
    network::release(root, name);
    root.remove(name)?;
    jail::remove_cgroup(name);
    Ok(())
}

/// Removes a sandbox directory whose record is missing or unreadable: its processes are
/// found through `/proc` ([`leftovers`]) and killed (with `force`), then the directory goes.
fn remove_without_record(root: &StateRoot, name: &str, force: bool) -> Result<(), SandboxError> {
    let procs = leftovers::processes(root, name);
    if !procs.is_empty() && !force {
        return Err(SandboxError::IsRunning(name.into()));
    }
    kill_and_remove(root, name, procs.iter())
}

/// The sandbox's container log files (kept by `box run -d`), oldest first.
pub fn log_paths(r: &Record) -> [PathBuf; 2] {
    [
        log::rotated(&r.paths.container_log),
        r.paths.container_log.clone(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_merges_with_later_keys_winning() {
        let a = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let b = vec!["A=2".to_string(), "B=3".to_string()];
        assert_eq!(merge_env(&[&a, &b]), vec!["PATH=/bin", "A=2", "B=3"]);
    }

    #[test]
    fn boot_failure_message_names_the_console() {
        let e = SandboxError::BootFailed {
            name: "x".into(),
            reason: "box-vmm exited with code 10".into(),
            console_tail: vec!["a".into(), "Kernel panic".into()],
        };
        assert_eq!(
            e.to_string(),
            "sandbox x failed to start: box-vmm exited with code 10 (console: Kernel panic)"
        );
        let silent = SandboxError::BootFailed {
            name: "x".into(),
            reason: "the guest did not answer".into(),
            console_tail: Vec::new(),
        };
        assert!(silent.to_string().ends_with("(its console is empty)"));
    }
}
