//! Connecting the user's stdio to a container process: its streams (or its pty) are opened
//! before Start, so no output is lost; stdin EOF becomes CloseIO; the output is drained after
//! the exit (bounded); terminal resizes become ResizePty; without a terminal, SIGINT and
//! SIGTERM are forwarded to the process.

use std::future::Future;
use std::time::Duration;

use box_guest_init::api::stream::StreamKind;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::tty;
use crate::agent_client::{ClientError, Endpoint, GuestClient, StdioRequest};

/// How long output may still arrive after the process's exit was reported.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, Default)]
pub struct IoMode {
    /// `-i`: forward stdin (with EOF).
    pub stdin: bool,
    /// `-t`: a pty.
    pub tty: bool,
    /// After a hangup, how long the process may take to exit before it is killed.
    pub hangup_grace: Duration,
}

impl IoMode {
    pub fn request(self) -> StdioRequest {
        StdioRequest {
            stdin: self.stdin,
            stdout: !self.tty,
            stderr: !self.tty,
            terminal: self.tty,
        }
    }
}

/// The streams of one process, open before it starts.
pub struct Streams {
    pty: Option<UnixStream>,
    stdin: Option<UnixStream>,
    stdout: Option<UnixStream>,
    stderr: Option<UnixStream>,
}

/// Opens the process's streams, all at once (each is one connect carrying its hello:
/// concurrently, that is one round trip whatever the count). The process need not be defined
/// yet: the guest answers each hello once it is.
pub async fn open_streams(
    ep: &Endpoint,
    id: &str,
    exec_id: &str,
    mode: IoMode,
) -> Result<Streams, ClientError> {
    if mode.tty {
        return Ok(Streams {
            pty: Some(ep.open_stream(id, exec_id, StreamKind::Pty).await?),
            stdin: None,
            stdout: None,
            stderr: None,
        });
    }
    let stdin = async {
        match mode.stdin {
            true => ep
                .open_stream(id, exec_id, StreamKind::Stdin)
                .await
                .map(Some),
            false => Ok(None),
        }
    };
    let (stdin, stdout, stderr) = tokio::try_join!(
        stdin,
        ep.open_stream(id, exec_id, StreamKind::Stdout),
        ep.open_stream(id, exec_id, StreamKind::Stderr),
    )?;
    Ok(Streams {
        pty: None,
        stdin,
        stdout: Some(stdout),
        stderr: Some(stderr),
    })
}

impl Streams {
    fn count(&self) -> u32 {
        [&self.pty, &self.stdin, &self.stdout, &self.stderr]
            .iter()
            .filter(|s| s.is_some())
            .count() as u32
    }
}

/// Reads fd 0 on a plain thread (a blocked read must never hold up the exit) into a channel;
/// the channel closes at EOF.
fn stdin_reader() -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        let fd = tty_fd(0);
        loop {
            match nix::unistd::read(fd, &mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(nix::Error::EINTR) => continue,
                Err(_) => break,
            }
        }
    });
    rx
}

fn tty_fd(fd: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
}

async fn pump<R, W>(mut from: R, mut to: W) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return to.flush().await;
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
    }
}

/// Forwards this process's stdin to the container's, then signals EOF.
///
/// EOF is a half-close of the stream first: guest-init reads everything sent before it, then
/// closes the process's stdin and its end of the stream. CloseIO is only the fallback for a
/// transport that does not carry the half-close: guest-init's CloseIO drops the stdin pipe at
/// once, so bytes still in flight on the stream would be lost if it came first.
async fn forward_stdin(mut stream: UnixStream, c: GuestClient, id: String, exec_id: String) {
    let mut rx = stdin_reader();
    while let Some(chunk) = rx.recv().await {
        if stream.write_all(&chunk).await.is_err() {
            return;
        }
    }
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut one = [0u8; 1];
    let closed = matches!(
        tokio::time::timeout(EOF_ACK, stream.read(&mut one)).await,
        Ok(Ok(0)) | Ok(Err(_))
    );
    if !closed {
        if let Err(e) = c.close_stdin(&id, &exec_id).await {
            tracing::debug!("close_stdin: {e}");
        }
    }
}

/// How long the guest may take to acknowledge stdin's half-close by closing its end.
const EOF_ACK: Duration = Duration::from_secs(2);

/// Runs `start`, connects the streams to this process's stdio, and returns the process's
/// exit status once it exited and its output was drained.
pub async fn run_attached<F>(
    c: &GuestClient,
    id: &str,
    exec_id: &str,
    mode: IoMode,
    streams: Streams,
    start: F,
) -> Result<u32, crate::cli::CliError>
where
    F: Future<Output = Result<(), crate::cli::CliError>>,
{
    // Raw mode lasts exactly as long as this guard: every return below restores the terminal.
    let _raw = if mode.tty {
        tty::RawMode::enter(0)
    } else {
        None
    };
    if mode.tty {
        if let Some((cols, rows)) = tty::size(0).or_else(|| tty::size(1)) {
            c.resize_pty(id, exec_id, cols, rows).await?;
        }
    }
    let forwarders = forward_signals(c, id, exec_id, mode);
    start.await?;
    let pumps = Pumps::connect(c, id, exec_id, mode, streams, forwarders);
    let status = c.wait(id, exec_id).await?.exit_status;
    pumps.drain(id, exec_id).await;
    Ok(status)
}

/// `box exec` attached, in one RunProcess call: its streams are opened while `connect` makes
/// the control connection, the call goes out as soon as that stands (guest-init defines the
/// exec, starts it once the streams are attached, and answers at the exit with the exec
/// already gone). On the critical path: one connect (the control's, or a stream's with its
/// hello), then the process, then the answer.
pub async fn run_exec<C>(
    ep: &Endpoint,
    connect: C,
    id: &str,
    exec_id: &str,
    mode: IoMode,
    process: serde_json::Value,
) -> Result<u32, crate::cli::CliError>
where
    C: Future<Output = Result<GuestClient, crate::cli::CliError>>,
{
    let began = std::time::Instant::now();
    let _raw = if mode.tty {
        tty::RawMode::enter(0)
    } else {
        None
    };
    let control = async {
        let c = connect.await?;
        // Registered before the call, so before the process can start.
        let forwarders = forward_signals(&c, id, exec_id, mode);
        let run = {
            let (c, id, exec_id) = (c.clone(), id.to_string(), exec_id.to_string());
            tokio::spawn(async move {
                c.run_process(&id, &exec_id, &process, &mode.request(), true)
                    .await
            })
        };
        Ok::<_, crate::cli::CliError>((c, forwarders, run))
    };
    let (control, streams) = tokio::join!(control, open_streams(ep, id, exec_id, mode));
    let (c, forwarders, run) = control?;
    let streams = match streams {
        Ok(s) => s,
        Err(e) => {
            // The guest forgets an exec whose streams never come; this client stops waiting.
            run.abort();
            for f in forwarders {
                f.abort();
            }
            return Err(e.into());
        }
    };
    c.add_exchanges(streams.count());
    tracing::info!("exec {exec_id}: streams attached at {:?}", began.elapsed());
    let pumps = Pumps::connect(&c, id, exec_id, mode, streams, forwarders);
    let status = run
        .await
        .map_err(|e| crate::cli::CliError::Io(format!("exec {exec_id}: {e}")))??
        .exit_status;
    tracing::info!(
        "exec {exec_id}: exit {status} reported at {:?}",
        began.elapsed()
    );
    pumps.drain(id, exec_id).await;
    tracing::info!(
        "exec {exec_id}: output drained at {:?}; {} exchanges with the guest",
        began.elapsed(),
        c.exchanges()
    );
    Ok(status)
}

/// Signals to this client are the container's, as docker's sig-proxy does it: forwarded, so
/// that the normal path records the exit (and `--rm` removes the sandbox). ^C with a terminal
/// arrives through the pty instead. A hangup means nobody is attached any more: the process
/// gets SIGHUP, and SIGKILL after the grace if it ignores that. Register before the process
/// starts, so no signal finds this client undefended.
fn forward_signals(
    c: &GuestClient,
    id: &str,
    exec_id: &str,
    mode: IoMode,
) -> Vec<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::SignalKind;
    let mut forwarded = vec![
        (SignalKind::terminate(), libc::SIGTERM),
        (SignalKind::quit(), libc::SIGQUIT),
        (SignalKind::hangup(), libc::SIGHUP),
    ];
    if !mode.tty {
        forwarded.push((SignalKind::interrupt(), libc::SIGINT));
    }
    let mut forwarders = Vec::new();
    for (kind, sig) in forwarded {
        let Ok(mut s) = tokio::signal::unix::signal(kind) else {
            continue;
        };
        let (c2, id2, ex2) = (c.clone(), id.to_string(), exec_id.to_string());
        let grace = mode.hangup_grace;
        forwarders.push(tokio::spawn(async move {
            while s.recv().await.is_some() {
                let _ = c2.kill(&id2, &ex2, sig as u32, false).await;
                if sig == libc::SIGHUP {
                    tokio::time::sleep(grace).await;
                    tracing::warn!(
                        "{id2}/{ex2}: still running {grace:?} after a hangup: killing it"
                    );
                    let _ = c2.kill(&id2, &ex2, libc::SIGKILL as u32, false).await;
                }
            }
        }));
    }
    forwarders
}

/// The copies between this client's stdio and the process's streams.
struct Pumps {
    outputs: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Pumps {
    fn connect(
        c: &GuestClient,
        id: &str,
        exec_id: &str,
        mode: IoMode,
        streams: Streams,
        forwarders: Vec<tokio::task::JoinHandle<()>>,
    ) -> Pumps {
        let mut outputs = Vec::new();
        let mut input_sink: Option<Box<dyn AsyncWrite + Unpin + Send>> = None;
        if let Some(pty) = streams.pty {
            let (r, w) = pty.into_split();
            outputs.push(tokio::spawn(pump(r, tokio::io::stdout())));
            input_sink = Some(Box::new(w));
        }
        if let Some(s) = streams.stdout {
            outputs.push(tokio::spawn(pump(s, tokio::io::stdout())));
        }
        if let Some(s) = streams.stderr {
            outputs.push(tokio::spawn(pump(s, tokio::io::stderr())));
        }
        let mut background = forwarders;
        if let (true, Some(mut sink)) = (mode.stdin, input_sink) {
            background.push(tokio::spawn(async move {
                let mut rx = stdin_reader();
                while let Some(chunk) = rx.recv().await {
                    if sink.write_all(&chunk).await.is_err() {
                        return;
                    }
                    let _ = sink.flush().await;
                }
            }));
        }
        if let (true, Some(stream)) = (mode.stdin, streams.stdin) {
            let (c2, id2, ex2) = (c.clone(), id.to_string(), exec_id.to_string());
            background.push(tokio::spawn(forward_stdin(stream, c2, id2, ex2)));
        }
        if mode.tty {
            let (c2, id2, ex2) = (c.clone(), id.to_string(), exec_id.to_string());
            background.push(tokio::spawn(async move {
                use tokio::signal::unix::{signal, SignalKind};
                let Ok(mut winch) = signal(SignalKind::window_change()) else {
                    return;
                };
                while winch.recv().await.is_some() {
                    if let Some((cols, rows)) = tty::size(0).or_else(|| tty::size(1)) {
                        let _ = c2.resize_pty(&id2, &ex2, cols, rows).await;
                    }
                }
            }));
        }
        Pumps {
            outputs,
            background,
        }
    }

    /// After the exit: lets the output finish (bounded), then stops the input side.
    async fn drain(self, id: &str, exec_id: &str) {
        let drained = tokio::time::timeout(DRAIN, async {
            for o in self.outputs {
                let _ = o.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("output of {id}/{exec_id} still open {DRAIN:?} after its exit");
        }
        for b in self.background {
            b.abort();
        }
    }
}
