//! A process's stdio between containerd's endpoints (FIFOs, or `file://` paths) and the
//! guest's per-stream connections, each stream on its own connection and its own task.
//!
//! Every guest stream is opened when the process is defined (Create/Exec), before Start, so
//! nothing the process writes at once is lost. Output is done when both output copies hit
//! EOF: the process's TaskExit is published only after that (bounded by the caller).

use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use box_guest_init::api::stream::StreamKind;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::agent_client::GuestClient;

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{0}: binary:// log drivers are not supported by Box; use a FIFO or file://")]
    Binary(String),
    #[error("opening {0}: {1}")]
    Open(String, std::io::Error),
    #[error("opening the guest's {0:?} stream: {1}")]
    Guest(StreamKind, String),
}

/// Where containerd wants a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    None,
    Fifo(PathBuf),
    File(PathBuf),
}

fn parse(uri: &str) -> Result<Endpoint, IoError> {
    if uri.is_empty() {
        return Ok(Endpoint::None);
    }
    if uri.starts_with("binary://") {
        return Err(IoError::Binary(uri.into()));
    }
    match uri.strip_prefix("file://") {
        Some(p) => Ok(Endpoint::File(p.into())),
        None => Ok(Endpoint::Fifo(
            uri.strip_prefix("fifo://").unwrap_or(uri).into(),
        )),
    }
}

/// The paths containerd named for a process.
#[derive(Debug, Clone, Default)]
pub struct Paths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The running copies of one process's stdio.
pub struct Io {
    /// Turns true when every output stream reached EOF.
    pub drained: watch::Receiver<bool>,
    stdin: Option<JoinHandle<()>>,
    /// containerd's stdin FIFO, while our open of it may still be waiting for its writer.
    stdin_path: Option<PathBuf>,
}

impl Io {
    /// Stops feeding stdin (containerd's CloseIO, or the process exited).
    pub fn close_stdin(&mut self) {
        if let Some(t) = self.stdin.take() {
            t.abort();
        }
        // An open of the FIFO still waiting for a writer that will never come would keep a
        // blocking thread forever: be that writer for a moment (non-blocking: it succeeds
        // only while a reader waits, which is exactly the case to end).
        if let Some(p) = self.stdin_path.take() {
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                .open(p);
        }
    }

    /// Waits until output is drained, at most `limit` (a background grandchild may hold
    /// the process's stdout open forever: the exit is reported anyway).
    pub async fn wait_drained(&self, limit: std::time::Duration) {
        let mut d = self.drained.clone();
        let _ = tokio::time::timeout(limit, d.wait_for(|v| *v)).await;
    }
}

/// Opens the FIFO's or file's write side. A FIFO open blocks until containerd's reader is
/// there (it is, by Create), so it runs off the runtime.
async fn open_sink(ep: Endpoint) -> Result<Option<tokio::fs::File>, IoError> {
    let (path, append) = match ep {
        Endpoint::None => return Ok(None),
        Endpoint::Fifo(p) => (p, false),
        Endpoint::File(p) => (p, true),
    };
    let shown = path.display().to_string();
    let f = tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .write(true)
            .append(append)
            .create(append)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
    })
    .await
    .map_err(|e| IoError::Open(shown.clone(), std::io::Error::other(e)))?
    .map_err(|e| IoError::Open(shown, e))?;
    Ok(Some(tokio::fs::File::from_std(f)))
}

/// Opens containerd's stdin FIFO for reading; blocks (off the runtime) until its writer
/// opened it, so the first read does not see a spurious EOF.
async fn open_source(ep: Endpoint) -> Result<Option<tokio::fs::File>, IoError> {
    let path = match ep {
        Endpoint::None => return Ok(None),
        Endpoint::Fifo(p) | Endpoint::File(p) => p,
    };
    let shown = path.display().to_string();
    let f = tokio::task::spawn_blocking(move || std::fs::File::open(&path))
        .await
        .map_err(|e| IoError::Open(shown.clone(), std::io::Error::other(e)))?
        .map_err(|e| IoError::Open(shown, e))?;
    Ok(Some(tokio::fs::File::from_std(f)))
}

async fn copy_out<R, W>(mut from: R, to: Option<W>, label: String)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    match to {
        Some(mut to) => {
            if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
                tracing::warn!("{label}: {e}");
            }
            let _ = to.flush().await;
        }
        // Nobody wants it: still read to EOF so the guest's pipe never fills.
        None => {
            let _ = tokio::io::copy(&mut from, &mut tokio::io::sink()).await;
        }
    }
}

/// Opens the guest's streams of a defined process and containerd's ends, and starts the
/// copies.
pub async fn connect(
    client: &GuestClient,
    id: &str,
    exec_id: &str,
    paths: &Paths,
) -> Result<Io, IoError> {
    let stdin_ep = parse(&paths.stdin)?;
    let stdout_ep = parse(&paths.stdout)?;
    let stderr_ep = parse(&paths.stderr)?;
    let open = |kind| async move {
        client
            .open_stream(id, exec_id, kind)
            .await
            .map_err(|e| IoError::Guest(kind, e.to_string()))
    };
    let label = |s: &str| format!("{id}/{exec_id} {s}");
    let (tx, drained) = watch::channel(false);
    let mut outputs: Vec<JoinHandle<()>> = Vec::new();
    // containerd's ends are opened by the copies, not here: a client may never open its
    // side (ctr closes its stdin FIFO unopened when its stdin is at EOF), and Create must
    // not wait for that.
    let (stdin_guest, output_guests) = if paths.terminal {
        let (r, w) = open(StreamKind::Pty).await?.into_split();
        let w: Box<dyn AsyncWrite + Send + Unpin> = Box::new(w);
        let r: Box<dyn AsyncRead + Send + Unpin> = Box::new(r);
        (Some(w), vec![(r, stdout_ep, "pty")])
    } else {
        let stdin = match stdin_ep {
            Endpoint::None => None,
            _ => {
                Some(Box::new(open(StreamKind::Stdin).await?) as Box<dyn AsyncWrite + Send + Unpin>)
            }
        };
        let mut outs = Vec::new();
        for (ep, kind, name) in [
            (stdout_ep, StreamKind::Stdout, "stdout"),
            (stderr_ep, StreamKind::Stderr, "stderr"),
        ] {
            if ep != Endpoint::None {
                let s: Box<dyn AsyncRead + Send + Unpin> = Box::new(open(kind).await?);
                outs.push((s, ep, name));
            }
        }
        (stdin, outs)
    };
    for (guest, ep, name) in output_guests {
        let label = label(name);
        outputs.push(tokio::spawn(async move {
            let sink = open_sink(ep).await.unwrap_or_else(|e| {
                tracing::warn!("{label}: {e}");
                None
            });
            copy_out(guest, sink, label).await
        }));
    }
    let mut stdin_path = None;
    let stdin = match (stdin_guest, stdin_ep) {
        (Some(guest), ep @ (Endpoint::Fifo(_) | Endpoint::File(_))) => {
            if let Endpoint::Fifo(p) = &ep {
                stdin_path = Some(p.clone());
            }
            let label = label("stdin");
            Some(tokio::spawn(async move {
                match open_source(ep).await {
                    Ok(Some(src)) => feed(src, guest).await,
                    Ok(None) => {}
                    Err(e) => tracing::warn!("{label}: {e}"),
                }
            }))
        }
        _ => None,
    };
    tokio::spawn(async move {
        for t in outputs {
            let _ = t.await;
        }
        let _ = tx.send(true);
    });
    Ok(Io {
        drained,
        stdin,
        stdin_path,
    })
}

/// containerd's stdin into the guest; the guest sees EOF when containerd's writer closes.
async fn feed(mut from: tokio::fs::File, mut to: Box<dyn AsyncWrite + Send + Unpin>) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse_as_containerd_writes_them() {
        assert_eq!(parse("").unwrap(), Endpoint::None);
        assert_eq!(
            parse("/run/x/stdout").unwrap(),
            Endpoint::Fifo("/run/x/stdout".into())
        );
        assert_eq!(
            parse("file:///var/log/c.log").unwrap(),
            Endpoint::File("/var/log/c.log".into())
        );
        assert!(parse("binary:///bin/logger?x=1")
            .unwrap_err()
            .to_string()
            .contains("binary://"));
    }
}
