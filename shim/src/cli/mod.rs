//! The `box` command line: `run`, `exec`, `ps`, `logs`, `stop`, `rm`, `inspect`.
//!
//! Every command finds its sandbox through the records under `$BOX_STATE_DIR` (default
//! `/run/box`). `box run` without `-d` stays attached and exits with the container's exit code
//! (128+n for signal n); with `-d` it leaves a small detached log pump (`box __log-pump NAME`,
//! a hidden subcommand) that copies the container's output to `container.log` (what `box logs`
//! prints), records the exit code and shuts the sandbox down when the main process ends.
//! Backends: `$BOX_BACKEND` (`microvm`, default; `host-process`, a test backend), see
//! [`crate::sandbox::backend`].

pub mod attach;
pub mod pump;
pub mod tty;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::agent_client::{ClientError, StdioRequest};
use crate::network::{NetworkMode, PortMapping};
use crate::sandbox::state::{self, SandboxState, StateError, StateRoot};
use crate::sandbox::vmm_process::ChildRegistry;
use crate::sandbox::{self, backend, CreateOptions, Sandbox, SandboxError};
use attach::IoMode;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error(transparent)]
    Guest(#[from] ClientError),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(String),
}

impl CliError {
    /// docker's codes: 126/127 when the command cannot be invoked / is not found, 125 for
    /// Box's own errors (usage included).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Sandbox(SandboxError::CannotRun { code, .. }) => *code,
            CliError::Sandbox(SandboxError::Guest { source, .. }) | CliError::Guest(source) => {
                source.cannot_run().map_or(125, |c| c.exit_code())
            }
            _ => 125,
        }
    }
}

/// `--env` entries as docker takes them: `KEY=VALUE` as given, a bare `KEY` takes this
/// client's value of KEY (and is dropped when it has none).
pub fn resolve_env(env: &[String]) -> Result<Vec<String>, CliError> {
    let mut out = Vec::new();
    for e in env {
        if e.contains('=') {
            out.push(e.clone());
        } else if e.is_empty() {
            return Err(CliError::Usage(
                "--env \"\": must be KEY=VALUE or KEY".into(),
            ));
        } else if let Ok(v) = std::env::var(e) {
            out.push(format!("{e}={v}"));
        }
    }
    sandbox::validate_env(&out)?;
    Ok(out)
}

impl From<StateError> for CliError {
    fn from(e: StateError) -> Self {
        CliError::Sandbox(e.into())
    }
}

#[derive(Parser, Debug)]
#[command(name = "box", version, about = "Run containers in microVMs")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run a command in a new sandbox.
    Run(RunArgs),
    /// Run a command in a running sandbox.
    Exec(ExecArgs),
    /// List sandboxes.
    Ps {
        /// Show all sandboxes, not only running ones.
        #[arg(short, long)]
        all: bool,
    },
    /// Print the output of a sandbox started with `run -d`.
    Logs { name: String },
    /// Stop a running sandbox (Shutdown with a grace period, then kill).
    Stop {
        name: String,
        /// Seconds to wait for processes to exit after SIGTERM.
        #[arg(short = 't', long = "time", default_value_t = 10)]
        time: u64,
    },
    /// Remove sandboxes (a running one needs -f).
    Rm {
        /// Kill a running sandbox first.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Print a sandbox's record as JSON.
    Inspect { name: String },
    /// Serve the pooled sandbox API (HTTP/JSON) until SIGTERM.
    Serve(ServeArgs),
    #[command(name = "__log-pump", hide = true)]
    LogPump {
        name: String,
        /// Supervise only (no logs): the attached client's pid and start time.
        #[arg(long, num_args = 2, value_names = ["PID", "START"])]
        client: Option<Vec<u64>>,
    },
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The unix socket (default `$BOX_STATE_DIR/serve.sock`).
    #[arg(long)]
    pub socket: Option<std::path::PathBuf>,
    /// Also listen on TCP (every request then needs the bearer token).
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// The bearer token's file, created 0600 if missing (default `$BOX_STATE_DIR/serve.token`).
    #[arg(long)]
    pub token_file: Option<std::path::PathBuf>,
    /// A warm pool: IMAGE=N keeps N sandboxes of IMAGE booted ahead; repeatable.
    #[arg(long = "pool")]
    pub pools: Vec<crate::serve::pool::PoolConfig>,
    /// Sandboxes handed out at once; beyond, creates answer 429.
    #[arg(long, default_value_t = 64)]
    pub max_sandboxes: usize,
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory of each sandbox in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Remove the sandbox when it exits.
    #[arg(long)]
    pub rm: bool,
    /// Keep stdin open and forward it.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a terminal.
    #[arg(short, long)]
    pub tty: bool,
    /// Run in the background and print the sandbox's name.
    #[arg(short, long)]
    pub detach: bool,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
    /// KEY=VALUE, or KEY to take this shell's value; repeatable.
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    /// Processes the container may have at once (its cgroup's pids.max; microVMs).
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Run box-vmm without its jail (namespaces, unprivileged user, cgroup): debugging only.
    #[arg(long)]
    pub no_jail: bool,
    /// USER[:GROUP] (names or ids, from the container's /etc/passwd), over the image's User.
    #[arg(short, long)]
    pub user: Option<String>,
    /// Cap of the container log kept by `-d` (bytes, or with k/m/g), one rotation kept.
    #[arg(long, value_parser = parse_size)]
    pub log_max_size: Option<u64>,
    /// nat (default: the box0 bridge, NAT to the host's networks), none (only lo), or
    /// ns:PATH (a network namespace made by CNI: the guest takes its veth's identity).
    #[arg(long, value_parser = parse_network)]
    pub network: Option<NetworkMode>,
    /// [HOSTIP:]HOSTPORT:GUESTPORT[/tcp|udp]: publish a guest port on the host (DNAT);
    /// repeatable.
    #[arg(short = 'p', long = "publish", value_parser = parse_publish)]
    pub publish: Vec<PortMapping>,
    /// Seconds the container may take to exit after its attached client is hung up on
    /// (SIGHUP forwarded), before it is killed.
    #[arg(long, default_value_t = 10)]
    pub stop_timeout: u64,
    /// An OCI image layout (directory or tar) or a root filesystem directory.
    pub image: String,
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Start the command and return: no stdio, it keeps running after this client exits.
    /// (Without -d, the command is killed if this client dies.)
    #[arg(short, long)]
    pub detach: bool,
    /// USER[:GROUP], over the container's user.
    #[arg(short, long)]
    pub user: Option<String>,
    #[arg(short, long)]
    pub interactive: bool,
    #[arg(short, long)]
    pub tty: bool,
    /// KEY=VALUE, repeatable.
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    pub name: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// Runs the command line; returns the exit code for the process.
pub fn main(cli: Cli) -> Result<i32, CliError> {
    // `exec` is one short exchange: on one thread its wakeups are plain polls, not futex
    // hand-offs between workers (each a context switch, costly in a nested guest). The
    // commands that supervise children and wait on them keep worker threads.
    let mut builder = match cli.command {
        Cmd::Exec(_) => tokio::runtime::Builder::new_current_thread(),
        _ => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    let rt = builder
        .enable_all()
        .build()
        .map_err(|e| CliError::Io(format!("starting the runtime: {e}")))?;
    let root = StateRoot::from_env();
    let out = rt.block_on(dispatch(&root, cli.command));
    // Streams of a finished process may still have blocked readers: do not wait for them.
    rt.shutdown_background();
    out
}

async fn dispatch(root: &StateRoot, cmd: Cmd) -> Result<i32, CliError> {
    match cmd {
        Cmd::Run(a) => run(root, a).await,
        Cmd::Exec(a) => exec(root, a).await,
        Cmd::Ps { all } => ps(root, all),
        Cmd::Logs { name } => logs(root, &name),
        Cmd::Stop { name, time } => {
            let r = root.load(&name)?;
            if sandbox::effective_state(&r) != SandboxState::Running {
                return Err(SandboxError::NotRunning(name).into());
            }
            sandbox::stop(root, &name, Duration::from_secs(time)).await?;
            println!("{name}");
            Ok(0)
        }
        Cmd::Rm { force, names } => {
            let mut code = 0;
            for n in names {
                match sandbox::remove(root, &n, force) {
                    Ok(()) => println!("{n}"),
                    Err(e) => {
                        eprintln!("box: {e}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
        Cmd::Inspect { name } => {
            let r = root.load(&name)?;
            println!(
                "{}",
                serde_json::to_string_pretty(&r).expect("a record always serializes")
            );
            Ok(0)
        }
        Cmd::Serve(a) => {
            let backend = backend::from_env()?;
            let config = crate::serve::ServeConfig {
                socket: a.socket.unwrap_or_else(|| root.root().join("serve.sock")),
                listen: a.listen,
                token_file: a
                    .token_file
                    .unwrap_or_else(|| root.root().join("serve.token")),
                pools: a.pools,
                max_sandboxes: a.max_sandboxes,
                cpus: a.cpus,
                memory_mib: a.memory,
            };
            crate::serve::run(config, backend, root.clone())
                .await
                .map_err(|e| CliError::Io(e.to_string()))?;
            Ok(0)
        }
        Cmd::LogPump { name, client } => {
            let client = client.and_then(|c| match c[..] {
                [pid, start] => Some(crate::sandbox::vmm_process::ProcRef {
                    pid: pid as i32,
                    start_time: start,
                }),
                _ => None,
            });
            pump::run(root, &name, client).await
        }
    }
}

async fn run(root: &StateRoot, a: RunArgs) -> Result<i32, CliError> {
    if a.detach && (a.interactive || a.tty) {
        return Err(CliError::Usage(
            "-d cannot be combined with -i or -t: use box exec -it on the detached sandbox".into(),
        ));
    }
    let mode = IoMode {
        stdin: a.interactive,
        tty: a.tty,
        hangup_grace: Duration::from_secs(a.stop_timeout),
    };
    let backend = backend::from_env()?;
    let opts = CreateOptions {
        name: a.name,
        image: a.image,
        cpus: a.cpus,
        memory_mib: a.memory,
        env: resolve_env(&a.env)?,
        command: a.command,
        io: mode.request(),
        auto_remove: a.rm,
        log_max_bytes: a.log_max_size.unwrap_or(0),
        user: a.user,
        no_jail: a.no_jail,
        pids_limit: a.pids_limit,
        boot_backstop: std::env::var("BOX_BOOT_TIMEOUT")
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Duration::from_secs),
        // None: the backend's own default (a host-process sandbox has no network).
        network: a.network,
        publish: a.publish,
    };
    let mut sb = Sandbox::create(root, backend.as_ref(), &opts).await?;
    if a.detach {
        return run_detached(root, sb).await;
    }
    // Should this client die (SIGKILL), the guest kills the container's process when its
    // output connections close, and this supervisor records the exit and honours --rm.
    let me = crate::sandbox::vmm_process::ProcRef::of(std::process::id() as i32);
    start_pump(root, &mut sb, me).await?;
    let name = sb.name().to_string();
    let id = sb.container_id().to_string();
    let client = sb.client.clone();
    let streams = match attach::open_streams(client.endpoint(), &id, "", mode).await {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("opening the container's stdio: {e}");
            let console_tail = sandbox::mark_failed(root, &name, &reason);
            return Err(SandboxError::BootFailed {
                name,
                reason,
                console_tail,
            }
            .into());
        }
    };
    let start = async {
        sb.start().await?;
        Ok(())
    };
    let status = attach::run_attached(&client, &id, "", mode, streams, start).await;
    let code = status.as_ref().ok().map(|s| *s as i32);
    let oom = code == Some(137) && sandbox::oom_killed(&client, &id).await;
    let _ = client.delete(&id, "").await;
    match &status {
        Ok(_) => {
            sandbox::record_exit(root, &name, code, oom)?;
        }
        // Recorded as Exited with 126/127 by the sandbox itself.
        Err(CliError::Sandbox(SandboxError::CannotRun { .. })) => {}
        // The guest went away under a running container: that is a failure, with its console.
        Err(e) => {
            sandbox::mark_failed(root, &name, &format!("lost the container: {e}"));
        }
    }
    // Alive to clean up: the supervisor is not needed any more.
    let dismiss = sb.record.clone();
    tokio::task::spawn_blocking(move || sandbox::dismiss_pump(&dismiss))
        .await
        .ok();
    tracing::info!("{name}: container exited, stopping the sandbox");
    sandbox::stop(root, &name, Duration::from_secs(2)).await?;
    if opts.auto_remove {
        sandbox::remove(root, &name, true)?;
    }
    Ok(status? as i32)
}

/// Leaves the sandbox running with a detached log pump, and prints its name.
async fn run_detached(root: &StateRoot, mut sb: Sandbox) -> Result<i32, CliError> {
    start_pump(root, &mut sb, None).await?;
    sb.start().await?;
    println!("{}", sb.name());
    Ok(0)
}

/// Starts `box __log-pump NAME` detached and waits for its "ready": with `client`, only as
/// the supervisor of an attached run (no logs), else as the log pump of `run -d`.
async fn start_pump(
    root: &StateRoot,
    sb: &mut Sandbox,
    client: Option<crate::sandbox::vmm_process::ProcRef>,
) -> Result<(), CliError> {
    let name = sb.name().to_string();
    let fail = |reason: String| {
        let console_tail = sandbox::mark_failed(root, &name, &reason);
        CliError::from(SandboxError::BootFailed {
            name: name.clone(),
            reason,
            console_tail,
        })
    };
    let exe = std::env::current_exe().map_err(|e| fail(format!("finding box itself: {e}")))?;
    let pump_log = std::fs::File::create(sb.record.paths.dir.join("log-pump.log"))
        .map_err(|e| fail(format!("log pump log: {e}")))?;
    let mut cmd = Command::new(exe);
    cmd.arg("__log-pump").arg(&name);
    if let Some(c) = client {
        cmd.arg("--client")
            .arg(c.pid.to_string())
            .arg(c.start_time.to_string());
    }
    cmd.env("BOX_STATE_DIR", root.root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(pump_log);
    let (pump, stdout) = ChildRegistry::global()
        .spawn_detached(&mut cmd)
        .map_err(|e| fail(format!("starting the log pump: {e}")))?;
    // The pump says "ready" once it holds the container's output streams (or, supervising,
    // its connection); its exit (EOF) bounds the wait.
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        if let Some(out) = stdout {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        line
    })
    .await
    .unwrap_or_default();
    if line.trim() != "ready" {
        let log =
            std::fs::read_to_string(sb.record.paths.dir.join("log-pump.log")).unwrap_or_default();
        return Err(fail(format!(
            "the log pump did not start: {}",
            log.lines().last().unwrap_or("no message")
        )));
    }
    sb.set_log_pump(pump.proc_ref)?;
    Ok(())
}

async fn exec(root: &StateRoot, a: ExecArgs) -> Result<i32, CliError> {
    let began = std::time::Instant::now();
    let (record, endpoint) = sandbox::running(root, &a.name)?;
    tracing::info!("{}: record loaded at {:?}", a.name, began.elapsed());
    let mode = IoMode {
        stdin: a.interactive,
        tty: a.tty,
        hangup_grace: Duration::from_secs(10),
    };
    let id = record.id.clone();
    // Random: two clients (even with one pid, from two PID namespaces) never share an id.
    let exec_id = format!("exec-{}", sandbox::random_hex(8));
    let mut env = record.config.env.clone();
    if a.tty {
        env = sandbox::merge_env(&[&env, &["TERM=xterm".to_string()]]);
    }
    env = sandbox::merge_env(&[&env, &resolve_env(&a.env)?]);
    let user = match (&a.user, &record.paths.rootfs) {
        (None, _) => record.config.user.clone(),
        (Some(u), Some(rootfs)) => {
            sandbox::user::resolve(rootfs, u).map_err(|e| CliError::Usage(e.to_string()))?
        }
        (Some(_), None) => {
            return Err(CliError::Usage(
                "-u: this sandbox's root filesystem is not known".into(),
            ))
        }
    };
    let mut spec = sandbox::process_spec(&a.command, &env, &record.config.cwd, a.tty, &user);
    if a.tty {
        // The terminal has its size before the process starts (no resize race).
        if let Some((cols, rows)) = tty::size(0).or_else(|| tty::size(1)) {
            spec["consoleSize"] = serde_json::json!({"width": cols, "height": rows});
        }
    }
    let name = a.name.clone();
    let connect = async move {
        let c = sandbox::connect_guest(&name, endpoint).await?;
        tracing::info!("{name}: connected at {:?}", began.elapsed());
        Ok::<_, CliError>(c)
    };
    if a.detach {
        if a.interactive || a.tty {
            return Err(CliError::Usage(
                "exec -d cannot be combined with -i or -t".into(),
            ));
        }
        connect
            .await?
            .run_process(&id, &exec_id, &spec, &StdioRequest::default(), false)
            .await?;
        return Ok(0);
    }
    let endpoint = backend::endpoint(record.backend, &record.paths);
    let status = attach::run_exec(&endpoint, connect, &id, &exec_id, mode, spec).await?;
    Ok(status as i32)
}

fn human(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h{}m", s / 3600, s / 60 % 60),
        s => format!("{}d{}h", s / 86400, s / 3600 % 24),
    }
}

/// `s` in at most `width` characters, its start elided (the end of a path names the image).
fn shorten(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - (width - 3)).collect();
    format!("...{tail}")
}

fn ps(root: &StateRoot, all: bool) -> Result<i32, CliError> {
    let now = state::now();
    println!(
        "{:<20} {:<9} {:<32} {:<8} {:<15} {:<12} PORTS",
        "NAME", "STATE", "IMAGE", "UPTIME", "ADDRESS", "STATUS"
    );
    for r in root.list()? {
        let st = sandbox::effective_state(&r);
        if !all
            && !matches!(
                st,
                SandboxState::Running | SandboxState::Creating | SandboxState::Unknown
            )
        {
            continue;
        }
        let uptime = match (st, r.started_at) {
            (SandboxState::Running, Some(t)) => human(now.saturating_sub(t)),
            _ => "-".into(),
        };
        let status = match (st, r.exit_code, &r.error) {
            (SandboxState::Failed, _, Some(e)) => format!("error: {e}"),
            (SandboxState::Unknown, _, Some(e)) => e.clone(),
            (_, Some(c), _) if r.oom_killed => format!("exit {c} (OOM killed)"),
            (_, Some(c), _) => format!("exit {c}"),
            (SandboxState::Exited, None, _) => "exit ?".into(),
            _ => String::new(),
        };
        let image = shorten(&r.image, 32);
        let net = r.network.as_ref();
        let address = net.and_then(|n| n.ip()).unwrap_or_else(|| "-".into());
        let ports = net
            .map(|n| {
                n.ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        println!(
            "{:<20} {:<9} {:<32} {:<8} {:<15} {:<12} {}",
            r.name,
            st.to_string(),
            image,
            uptime,
            address,
            status,
            ports
        );
    }
    Ok(0)
}

fn logs(root: &StateRoot, name: &str) -> Result<i32, CliError> {
    let r = root.load(name)?;
    let [older, current] = sandbox::log_paths(&r);
    let mut out = std::io::stdout().lock();
    if let Ok(mut f) = std::fs::File::open(&older) {
        std::io::copy(&mut f, &mut out)
            .map_err(|e| CliError::Io(format!("{}: {e}", older.display())))?;
    }
    match std::fs::File::open(&current) {
        Ok(mut f) => {
            std::io::copy(&mut f, &mut out)
                .map_err(|e| CliError::Io(format!("{}: {e}", current.display())))?;
            Ok(0)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CliError::Usage(format!(
            "sandbox {name} has no logs: only `box run -d` keeps the output (attached runs print it)"
        ))),
        Err(e) => Err(CliError::Io(format!("{}: {e}", current.display()))),
    }
}

fn parse_network(s: &str) -> Result<NetworkMode, String> {
    s.parse()
        .map_err(|e: crate::network::NetworkError| e.to_string())
}

fn parse_publish(s: &str) -> Result<PortMapping, String> {
    s.parse()
        .map_err(|e: crate::network::NetworkError| e.to_string())
}

/// `123`, `64k`, `10m`, `1g` (powers of 1024, as docker's sizes).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mul) = match t.strip_suffix(['k', 'm', 'g']) {
        Some(n) => {
            let shift = match t.chars().last() {
                Some('k') => 10,
                Some('m') => 20,
                _ => 30,
            };
            (n, 1u64 << shift)
        }
        None => (t.strip_suffix('b').unwrap_or(&t), 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (say 64k, 10m, 1g)"))?;
    match n.checked_mul(mul) {
        Some(0) | None => Err(format!("{s:?}: a size must be above 0 and fit in 64 bits")),
        Some(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_docker_writes_them() {
        assert_eq!(parse_size("123"), Ok(123));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        for bad in ["", "k", "0", "-1", "1.5m", "99999999999999999999g", "ten"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shorten_counts_characters_not_bytes() {
        assert_eq!(shorten("abc", 32), "abc");
        let long = "/tmp/ééééééééééééééééééééééééééééééééééé/image";
        let s = shorten(long, 32);
        assert_eq!(s.chars().count(), 32);
        assert!(s.ends_with("é/image"), "{s}");
    }

    #[test]
    fn env_entries_as_docker_takes_them() {
        std::env::set_var("BOX_TEST_ENV_HOST", "from-host");
        std::env::remove_var("BOX_TEST_ENV_UNSET");
        let got = resolve_env(&[
            "A=1".into(),
            "BOX_TEST_ENV_HOST".into(),
            "BOX_TEST_ENV_UNSET".into(),
            "B=".into(),
        ])
        .unwrap();
        assert_eq!(got, vec!["A=1", "BOX_TEST_ENV_HOST=from-host", "B="]);
        assert!(resolve_env(&["=x".into()]).is_err());
        assert!(resolve_env(&["".into()]).is_err());
    }

    #[test]
    fn usage_and_invocation_errors_have_docker_codes() {
        assert_eq!(CliError::Usage("x".into()).exit_code(), 125);
        let cannot = |code| {
            CliError::Sandbox(SandboxError::CannotRun {
                name: "n".into(),
                command: "c".into(),
                code,
                detail: String::new(),
            })
        };
        assert_eq!(cannot(127).exit_code(), 127);
        assert_eq!(cannot(126).exit_code(), 126);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use clap::Parser;
    use proptest::prelude::*;

    fn word() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("run".to_string()),
            Just("exec".to_string()),
            Just("--".to_string()),
            Just("-e".to_string()),
            Just("--memory".to_string()),
            Just("--cpus".to_string()),
            Just("--log-max-size".to_string()),
            Just("-it".to_string()),
            any::<String>(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// No argument list makes the parser or the option checks panic.
        #[test]
        fn any_command_line_parses_or_errs(args in proptest::collection::vec(word(), 0..8)) {
            let argv = std::iter::once("box".to_string()).chain(args);
            if let Ok(Cli { command: Cmd::Run(a) }) = Cli::try_parse_from(argv) {
                let env = resolve_env(&a.env).unwrap_or_default();
                let opts = CreateOptions {
                    name: a.name,
                    image: a.image,
                    cpus: a.cpus,
                    memory_mib: a.memory,
                    env,
                    command: a.command,
                    ..Default::default()
                };
                let _ = opts.validate();
            }
        }

        #[test]
        fn any_size_parses_or_errs(s in any::<String>()) {
            let _ = parse_size(&s);
        }
    }
}
