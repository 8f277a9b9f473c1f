//! The log pump of `box run -d` (`box __log-pump NAME`, detached in its own session): holds
//! the container's stdout and stderr streams, appends them to `container.log`, and when the
//! main process exits records its exit code, stops the sandbox and, for `--rm`, removes it.
//!
//! With `--client PID START` it is the supervisor of an attached `box run` instead: no logs
//! (the client holds the streams); once the main process exited and the client is gone, it
//! finishes whatever the client did not (a client killed with SIGKILL: the guest killed the
//! container's process when its output connections closed).

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use box_guest_init::api::stream::StreamKind;
use tokio::io::AsyncReadExt;

use super::CliError;
use crate::sandbox::state::{Record, SandboxState, StateError, StateRoot};
use crate::sandbox::vmm_process::ProcRef;
use crate::sandbox::{self, SandboxError};

pub async fn run(root: &StateRoot, name: &str, client: Option<ProcRef>) -> Result<i32, CliError> {
    if let Some(client) = client {
        return supervise(root, name, client).await;
    }
    let (record, client) = connect(root, name).await?;
    let id = record.id.clone();
    let out = client.open_stream(&id, "", StreamKind::Stdout).await?;
    let err = client.open_stream(&id, "", StreamKind::Stderr).await?;
    let max = match record.config.log_max_bytes {
        0 => sandbox::log::DEFAULT_MAX_BYTES,
        n => n,
    };
    let log = sandbox::log::CappedLog::open(&record.paths.container_log, max)
        .map_err(|e| CliError::Io(format!("{}: {e}", record.paths.container_log.display())))?;
    let log = Arc::new(Mutex::new(log));
    say_ready();
    // Nobody reads our stdout any more.
    if let Ok(null) = std::fs::File::options().write(true).open("/dev/null") {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 1, which we own; `null` stays valid for the call.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
    let copy = |mut s: tokio::net::UnixStream, log: Arc<Mutex<sandbox::log::CappedLog>>| async move {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if let Err(e) = log.lock().unwrap().write(&buf[..n]) {
                        tracing::warn!("container log: {e}");
                    }
                }
            }
        }
    };
    let tasks = [
        tokio::spawn(copy(out, log.clone())),
        tokio::spawn(copy(err, log.clone())),
    ];
    let code = client
        .wait(&id, "")
        .await
        .ok()
        .map(|w| w.exit_status as i32);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        for t in tasks {
            let _ = t.await;
        }
    })
    .await;
    let _ = client.delete(&id, "").await;
    record_exit(root, name, &client, &id, code).await?;
    sandbox::stop(root, name, Duration::from_secs(2)).await?;
    remove_if_asked(root, name, root.load(name)?.config.auto_remove)
}

/// The record (the sandbox may still be Creating: no state check, unlike attach) and a
/// client of its guest that answered Health.
async fn connect(
    root: &StateRoot,
    name: &str,
) -> Result<(Record, crate::agent_client::GuestClient), CliError> {
    let record = root.load(name)?;
    let endpoint = sandbox::backend::endpoint(record.backend, &record.paths);
    let client = crate::agent_client::GuestClient::connect(endpoint).await?;
    client.health(sandbox::readiness::ATTEMPT).await?;
    Ok((record, client))
}

/// What `box run` waits for before it starts the container.
fn say_ready() {
    println!("ready");
    let _ = std::io::stdout().flush();
}

/// The main process's exit code, and whether the OOM killer took it.
async fn record_exit(
    root: &StateRoot,
    name: &str,
    guest: &crate::agent_client::GuestClient,
    id: &str,
    code: Option<i32>,
) -> Result<(), CliError> {
    let oom = code == Some(137) && sandbox::oom_killed(guest, id).await;
    sandbox::record_exit(root, name, code, oom)?;
    Ok(())
}

/// `--rm`: removes the sandbox, unless someone already did.
fn remove_if_asked(root: &StateRoot, name: &str, auto_remove: bool) -> Result<i32, CliError> {
    if auto_remove {
        match sandbox::remove(root, name, true) {
            Ok(()) | Err(SandboxError::State(StateError::Unknown(_))) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(0)
}

async fn supervise(root: &StateRoot, name: &str, client: ProcRef) -> Result<i32, CliError> {
    let (record, guest) = connect(root, name).await?;
    let id = record.id.clone();
    say_ready();
    let code = guest.wait(&id, "").await.ok().map(|w| w.exit_status as i32);
    // The client records and cleans up itself when it lives: let it finish first.
    let _ = tokio::task::spawn_blocking(move || client.wait_gone(Duration::from_secs(60))).await;
    let r = match root.load(name) {
        Ok(r) => r,
        Err(StateError::Unknown(_)) => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    if matches!(r.state, SandboxState::Creating | SandboxState::Running) {
        tracing::warn!("{name}: its client died: recording the exit");
        record_exit(root, name, &guest, &id, code).await?;
    }
    if r.pids.vmm.is_some_and(|p| p.is_alive()) {
        sandbox::stop(root, name, Duration::from_secs(2)).await?;
    }
    remove_if_asked(root, name, r.config.auto_remove)
}
