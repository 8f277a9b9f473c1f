//! A process's stdio: pipes (or a pty) between the process and the host connections that
//! attach to them after the process is defined.
//!
//! A pipe sits between the process and every connection (never the raw socket as stdout:
//! programs that reopen /dev/stdout break on sockets, Kata #6714). Output pumps start at once
//! and wait for their connection; after the process exits they drain what is left and stop
//! when the pipe stays silent for the grace period without EOF, since a background grandchild
//! can hold the pipe open forever (Kata agent #370, #4747).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::OFlag;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;

use super::pty::{self, Master};
use super::spawn::ChildStdio;
use crate::api::stream::StreamKind;
use crate::init::transport::BoxConn;

/// Which streams the host asked for (containerd's non-empty stdin/stdout/stderr paths).
#[derive(Debug, Clone, Copy, Default)]
pub struct Wanted {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub terminal: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttachError {
    #[error("the process has no {0:?} stream")]
    NotWanted(StreamKind),
    #[error("the {0:?} stream is already attached")]
    AlreadyAttached(StreamKind),
}

/// After CloseIO, how long the stdin connection may stay silent before stdin is closed.
/// A host that wants exact ordering half-closes the connection instead, which is immediate.
const STDIN_CLOSE_GRACE: Duration = Duration::from_millis(100);

/// Host-side ends of a process's stdio, waiting for connections.
pub struct Io {
    slots: Mutex<HashMap<StreamKind, oneshot::Sender<BoxConn>>>,
    wanted_kinds: Vec<StreamKind>,
    close_stdin: Arc<Notify>,
    pub pty: Option<Master>,
    outputs: Mutex<Vec<JoinHandle<()>>>,
    exited: watch::Sender<bool>,
    /// Set when the host closed an output connection while the process ran: its client is
    /// gone (killed, hung up), and nobody will ever read the process's output.
    hangup: watch::Sender<bool>,
    /// Set once every wanted stream has a connection.
    attached: watch::Sender<bool>,
}

fn dev_null(write: bool) -> nix::Result<OwnedFd> {
    let mode = if write {
        OFlag::O_WRONLY
    } else {
        OFlag::O_RDONLY
    };
    nix::fcntl::open(
        "/dev/null",
        mode | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

impl Io {
    /// Creates the pipes or pty and starts the pumps; returns the child's ends.
    pub fn new(wanted: Wanted, grace: Duration) -> std::io::Result<(Arc<Io>, ChildStdio)> {
        let (exited, exited_rx) = watch::channel(false);
        let hangup = watch::channel(false).0;
        let close_stdin = Arc::new(Notify::new());
        let mut slots = HashMap::new();
        let mut outputs = Vec::new();
        let mut wanted_kinds = Vec::new();
        let mut slot = |kind: StreamKind, slots: &mut HashMap<_, _>| {
            let (tx, rx) = oneshot::channel::<BoxConn>();
            slots.insert(kind, tx);
            wanted_kinds.push(kind);
            rx
        };
        if wanted.terminal {
            let (master, slave) = pty::open()?;
            let master = Master::new(master)?;
            let rx = slot(StreamKind::Pty, &mut slots);
            outputs.push(tokio::spawn(pump_pty(master.clone(), rx, exited_rx, grace)));
            let child = ChildStdio {
                stdin: slave.try_clone()?,
                stdout: slave.try_clone()?,
                stderr: slave,
                controlling_tty: true,
            };
            let io = Io {
                slots: Mutex::new(slots),
                wanted_kinds,
                close_stdin,
                pty: Some(master),
                outputs: Mutex::new(outputs),
                exited,
                hangup,
                attached: watch::channel(false).0,
            };
            return Ok((Arc::new(io), child));
        }

        let stdin = if wanted.stdin {
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            let rx = slot(StreamKind::Stdin, &mut slots);
            let w = tokio::net::unix::pipe::Sender::from_owned_fd(w)?;
            tokio::spawn(pump_stdin(w, rx, close_stdin.clone()));
            r
        } else {
            dev_null(false)?
        };
        let mut output = |want: bool, kind: StreamKind, slots: &mut HashMap<_, _>| {
            if !want {
                return Ok::<_, std::io::Error>(dev_null(true)?);
            }
            let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
            let rx = slot(kind, slots);
            let r = tokio::net::unix::pipe::Receiver::from_owned_fd(r)?;
            outputs.push(tokio::spawn(pump_output(
                r,
                rx,
                exited_rx.clone(),
                grace,
                hangup.clone(),
            )));
            Ok(w)
        };
        let stdout = output(wanted.stdout, StreamKind::Stdout, &mut slots)?;
        let stderr = output(wanted.stderr, StreamKind::Stderr, &mut slots)?;
        let attached = watch::channel(slots.is_empty()).0;
        let io = Io {
            slots: Mutex::new(slots),
            wanted_kinds,
            close_stdin,
            pty: None,
            outputs: Mutex::new(outputs),
            exited,
            hangup,
            attached,
        };
        Ok((
            Arc::new(io),
            ChildStdio {
                stdin,
                stdout,
                stderr,
                controlling_tty: false,
            },
        ))
    }

    /// Reserves the `kind` stream for a connection: the caller confirms to the host, then sends
    /// the connection. If the pump has already given up (process long gone), the connection
    /// just closes, which the host reads as EOF.
    pub fn take_slot(&self, kind: StreamKind) -> Result<oneshot::Sender<BoxConn>, AttachError> {
        let tx = {
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let tx = slots.remove(&kind);
            if slots.is_empty() {
                self.attached.send_replace(true);
            }
            tx
        };
        match tx {
            Some(tx) => Ok(tx),
            None if self.wanted_kinds.contains(&kind) => Err(AttachError::AlreadyAttached(kind)),
            None => Err(AttachError::NotWanted(kind)),
        }
    }

    /// Resolves once every wanted stream has been claimed by a connection.
    pub async fn all_attached(&self) {
        let mut rx = self.attached.subscribe();
        let _ = rx.wait_for(|a| *a).await;
    }

    /// Resolves when the host hung up on an output stream while the process ran.
    pub async fn hung_up(&self) {
        let mut rx = self.hangup.subscribe();
        let _ = rx.wait_for(|h| *h).await;
    }

    /// containerd's CloseIO: the process reads EOF on stdin.
    pub fn close_stdin(&self) {
        self.close_stdin.notify_one();
    }

    /// Called when the process has exited: output pumps switch to draining. Resolves once
    /// every output stream has been written out and closed.
    pub async fn drain_after_exit(&self) {
        self.exited.send_replace(true);
        let pumps = std::mem::take(&mut *self.outputs.lock().unwrap_or_else(|p| p.into_inner()));
        for p in pumps {
            let _ = p.await;
        }
    }
}

/// Waits for the host's connection; once the process has exited, for at most `grace`.
async fn wait_attach(
    conn: oneshot::Receiver<BoxConn>,
    exited: &mut watch::Receiver<bool>,
    grace: Duration,
) -> Option<BoxConn> {
    tokio::pin!(conn);
    loop {
        if *exited.borrow_and_update() {
            return tokio::time::timeout(grace, &mut conn).await.ok()?.ok();
        }
        tokio::select! {
            c = &mut conn => return c.ok(),
            changed = exited.changed() => if changed.is_err() { return None },
        }
    }
}

/// One read from the process side: unbounded while the process runs, bounded by `grace`
/// after it exited. `None` means stop: EOF, error, or silence past the grace.
async fn read_some<R: AsyncRead + Unpin>(
    src: &mut R,
    buf: &mut [u8],
    exited: &mut watch::Receiver<bool>,
    grace: Duration,
) -> Option<usize> {
    loop {
        if *exited.borrow_and_update() {
            return match tokio::time::timeout(grace, src.read(buf)).await {
                Ok(Ok(n)) if n > 0 => Some(n),
                _ => None,
            };
        }
        tokio::select! {
            r = src.read(buf) => return match r { Ok(n) if n > 0 => Some(n), _ => None },
            _ = exited.changed() => {}
        }
    }
}

async fn pump_output<R: AsyncRead + Unpin>(
    mut src: R,
    conn: oneshot::Receiver<BoxConn>,
    mut exited: watch::Receiver<bool>,
    grace: Duration,
    hangup: watch::Sender<bool>,
) {
    let Some(conn) = wait_attach(conn, &mut exited, grace).await else {
        return;
    };
    // The host never writes on an output stream: its side reading EOF (or failing) means
    // the host closed it, i.e. the client is gone.
    let (mut from_host, mut conn) = tokio::io::split(conn);
    let watch_host = {
        let exited = exited.clone();
        tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let _ = from_host.read(&mut byte).await;
            if !*exited.borrow() {
                hangup.send_replace(true);
            }
        })
    };
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(n) = read_some(&mut src, &mut buf, &mut exited, grace).await {
        if conn.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = conn.shutdown().await;
    watch_host.abort();
}

async fn pump_stdin<W: AsyncWrite + Unpin>(
    mut pipe: W,
    conn: oneshot::Receiver<BoxConn>,
    close: Arc<Notify>,
) {
    let mut conn = tokio::select! {
        c = conn => match c { Ok(c) => c, Err(_) => return },
        _ = close.notified() => return,
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut closing = false;
    loop {
        // After CloseIO, bytes the host wrote before the call may still be in flight on the
        // connection: keep forwarding until it goes quiet, then close.
        let read = if closing {
            match tokio::time::timeout(STDIN_CLOSE_GRACE, conn.read(&mut buf)).await {
                Ok(r) => r,
                Err(_) => return,
            }
        } else {
            tokio::select! {
                r = conn.read(&mut buf) => r,
                _ = close.notified() => {
                    closing = true;
                    continue;
                }
            }
        };
        let n = match read {
            Ok(n) if n > 0 => n,
            _ => return,
        };
        if pipe.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    // Dropping `pipe` closes the write end: the process reads EOF.
}

/// A terminal connection carries both directions: host keystrokes to the master, and the
/// master's output back. The output direction decides when the stream is done.
async fn pump_pty(
    master: Master,
    conn: oneshot::Receiver<BoxConn>,
    mut exited: watch::Receiver<bool>,
    grace: Duration,
) {
    let Some(conn) = wait_attach(conn, &mut exited, grace).await else {
        return;
    };
    let (mut from_host, mut to_host) = tokio::io::split(conn);
    let mut input = master.clone();
    let keys = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_host, &mut input).await;
    });
    let mut output = master;
    let mut buf = vec![0u8; 64 * 1024];
    while let Some(n) = read_some(&mut output, &mut buf, &mut exited, grace).await {
        if to_host.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to_host.shutdown().await;
    keys.abort();
}
