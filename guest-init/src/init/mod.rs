//! PID 1: the boot order of architecture.md.
//!
//! 1. mounts and kernel modules; 2. bind every listener; 3. slow work (test knob here);
//! 4. serve: reaper thread, events, stdio/pty streams, the ttrpc control server.
//!
//! Then, on SIGTERM or the Shutdown call, terminate everything and power off (or exit).

pub mod agent;
pub mod boot_timer;
pub mod cgroup;
pub mod config;
pub mod events;
pub mod modules;
pub mod mount;
pub mod net;
pub mod process;
pub mod reaper;
pub mod shutdown;
pub mod signals;
pub mod streams;
pub mod task;
pub mod transport;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use self::config::{Config, Mode};
use self::signals::ShutdownCause;
use self::transport::{Listener, Listeners};

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Mount(#[from] mount::MountError),
    #[error(transparent)]
    Modules(#[from] modules::ModuleError),
    #[error(transparent)]
    Bind(#[from] transport::BindError),
    #[error("{0}: {1}")]
    Io(&'static str, #[source] std::io::Error),
    #[error("ttrpc server: {0}")]
    Ttrpc(#[from] ttrpc::Error),
}

/// Fds 0-2 must be open: otherwise a pipe created for a child could land on 0-2 and be
/// clobbered by the child's own dup2 onto them. The kernel leaves them closed when
/// /dev/console cannot be opened.
fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: F_GETFD only queries whether the fd number is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // Opened without CLOEXEC on purpose: these are init's own stdio.
            let _ = nix::fcntl::open(
                "/dev/null",
                nix::fcntl::OFlag::O_RDWR,
                nix::sys::stat::Mode::empty(),
            );
        }
    }
}

/// Test knob (host-process tier): report "listening", then hold until released.
fn notify_and_hold(fd: RawFd, hold: bool) -> Result<(), InitError> {
    // SAFETY: the fd number comes from our own test harness via the environment; init owns
    // it from here on and nothing else uses it.
    let mut sock = unsafe { UnixStream::from_raw_fd(fd) };
    let _ = nix::fcntl::fcntl(
        &sock,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    sock.write_all(b"listening\n")
        .map_err(|e| InitError::Io("notify fd", e))?;
    if hold {
        let mut byte = [0u8; 1];
        sock.read(&mut byte)
            .map_err(|e| InitError::Io("hold fd", e))?;
    }
    Ok(())
}

pub fn run(config: Config) -> Result<(), InitError> {
    let started = Instant::now();
    ensure_std_fds();
    signals::block().map_err(|e| InitError::Io("blocking signals", e.into()))?;
    mount::mount_early(&config.mode)?;
    // Before any thread or child exists (see boot_timer), dropped before the runtime starts.
    let timer = boot_timer::Timer::new(config.mode == Mode::Vm);
    timer.mark(boot_timer::Milestone::InitStarted);
    let loaded = modules::load_listed(&config.modules_file)?;
    timer.mark(boot_timer::Milestone::ModulesLoaded);
    let listeners = transport::bind_all(&config.mode)?;
    timer.mark(boot_timer::Milestone::ListenersBound);
    drop(timer);
    tracing::info!(modules = loaded, "listeners bound");
    if config.mode == Mode::Vm {
        cgroup::setup();
    }
    if let Some(fd) = config.notify_fd {
        notify_and_hold(fd, config.hold)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| InitError::Io("tokio runtime", e))?;
    runtime.block_on(serve(&config, listeners, started))?;
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    if config.mode == Mode::Vm {
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    }
    Ok(())
}

async fn serve(config: &Config, listeners: Listeners, started: Instant) -> Result<(), InitError> {
    let registry = Arc::new(reaper::Registry::default());
    let (shutdown_tx, mut shutdown_rx) = mpsc::unbounded_channel();
    let (children_tx, children_rx) = watch::channel(true);
    signals::spawn_supervisor(registry.clone(), shutdown_tx.clone(), children_tx)
        .map_err(|e| InitError::Io("signalfd", e))?;

    let serve_err = |e| InitError::Io("serving a listener", e);
    let ev = Arc::new(events::Events::default());
    tokio::spawn(
        ev.clone()
            .serve(Listener::serve(listeners.events).map_err(serve_err)?),
    );
    if config.mode == Mode::Vm {
        // Before readiness: a container never sees its loopback down.
        if let Err(e) = net::loopback_up().await {
            tracing::warn!("{e}");
        }
    }
    let tasks = Arc::new(task::Tasks::new(
        registry,
        ev,
        config.drain_grace,
        config.mode == Mode::Vm,
    ));
    tokio::spawn(streams::serve(
        Listener::serve(listeners.stdio).map_err(serve_err)?,
        streams::Kind::Stdio,
        tasks.clone(),
    ));
    tokio::spawn(streams::serve(
        Listener::serve(listeners.pty).map_err(serve_err)?,
        streams::Kind::Pty,
        tasks.clone(),
    ));
    let agent = agent::AgentService {
        started,
        shutdown: shutdown_tx,
        tasks: tasks.clone(),
    };
    let mut server = ttrpc::r#async::Server::new()
        .add_listener(
            Listener::serve(listeners.control)
                .map_err(serve_err)?
                .into_ttrpc(),
        )
        .register_service(containerd_shim_protos::shim_async::create_task(Arc::new(
            task::service::TaskService(tasks),
        )))
        .register_service(crate::api::agent::create_agent(Arc::new(agent)));
    server.start().await?;

    let cause = shutdown_rx.recv().await.unwrap_or(ShutdownCause::Signal);
    let grace = match cause {
        ShutdownCause::Request { grace_ms } if grace_ms > 0 => {
            Duration::from_millis(grace_ms.into())
        }
        _ => config.shutdown_grace,
    };
    tracing::info!(?cause, "shutting down");
    shutdown::terminate_all(grace, children_rx).await;
    // Lets in-flight replies (the Shutdown call's own) reach the host.
    server.shutdown().await?;
    Ok(())
}
