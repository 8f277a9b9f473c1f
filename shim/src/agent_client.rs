//! Client for guest-init's API: connect, call, open streams, follow events.
//!
//! The same calls run over two transports: the unix sockets of a host-process init, or a
//! microVM's vsock through box-vmm's hybrid unix socket (`CONNECT <port>\n` -> `OK <n>\n`).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use box_guest_init::api::agent::{
    AgentClient as AgentRpc, HealthRequest, HealthResponse, RunProcessRequest, RunProcessResponse,
    ShutdownRequest,
};
use box_guest_init::api::events::{read_frame, Event, FrameError};
use box_guest_init::api::stream::{read_line, LineError, StreamHello, StreamKind};
use box_guest_init::api::{Port, PROCESS_SPEC_TYPE_URL, SPEC_TYPE_URL};
use containerd_shim_protos::api::{
    CloseIORequest, CreateTaskRequest, DeleteRequest, DeleteResponse, ExecProcessRequest,
    KillRequest, Mount, PidsRequest, ResizePtyRequest, StartRequest, StateRequest, StateResponse,
    WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::shim_async::TaskClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;

/// Where guest-init listens.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// Host-process mode: one unix socket per port in this directory.
    SocketDir(PathBuf),
    /// A microVM: box-vmm's vsock unix socket.
    HybridVsock(PathBuf),
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connecting to {what}: {source}")]
    Connect {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vsock handshake for port {port}: {reason}")]
    Handshake { port: u32, reason: String },
    #[error("guest refused the {stream:?} stream: {reason}")]
    StreamRefused { stream: StreamKind, reason: String },
    #[error("reading the guest's answer: {0}")]
    Line(#[from] LineError),
    #[error("{}", rpc_message(.0))]
    Rpc(#[from] ttrpc::Error),
    #[error("events stream: {0}")]
    Events(#[from] FrameError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("encoding the process spec: {0}")]
    Spec(#[from] serde_json::Error),
}

/// A ttrpc error as one line: the guest's own message for a status, not the struct dump.
fn rpc_message(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// Why a process could not be started, as docker's exit codes tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CannotRun {
    /// 127: no such executable.
    NotFound,
    /// 126: found, but it cannot be invoked (permissions, format).
    NotExecutable,
}

impl CannotRun {
    pub fn exit_code(self) -> i32 {
        match self {
            CannotRun::NotFound => 127,
            CannotRun::NotExecutable => 126,
        }
    }
}

impl ClientError {
    /// Whether the guest refused to start a process because its `execve` failed. guest-init
    /// reports the failing setup stage and errno in the status message
    /// (`process setup failed at Exec: ENOENT: ...`), which is all the Task API carries.
    pub fn cannot_run(&self) -> Option<CannotRun> {
        let ClientError::Rpc(ttrpc::Error::RpcStatus(s)) = self else {
            return None;
        };
        let (_, errno) = s.message.split_once("failed at Exec: ")?;
        if errno.starts_with("ENOENT") || errno.starts_with("ENOTDIR") {
            Some(CannotRun::NotFound)
        } else {
            Some(CannotRun::NotExecutable)
        }
    }
}

impl Endpoint {
    /// A fresh byte stream to `port`.
    pub async fn connect(&self, port: Port) -> Result<UnixStream, ClientError> {
        self.connect_with(port, &[]).await
    }

    /// A fresh byte stream to `port`, with `first` already sent on it. Through box-vmm the
    /// bytes go out with the `CONNECT` line, in the same write (box-vmm holds what follows the
    /// line for the guest until it accepted): the handshake and the first message cost one
    /// round trip, not two.
    pub async fn connect_with(&self, port: Port, first: &[u8]) -> Result<UnixStream, ClientError> {
        match self {
            Endpoint::SocketDir(dir) => {
                let path = dir.join(port.socket_name());
                let mut s =
                    UnixStream::connect(&path)
                        .await
                        .map_err(|source| ClientError::Connect {
                            what: path.display().to_string(),
                            source,
                        })?;
                if !first.is_empty() {
                    s.write_all(first)
                        .await
                        .map_err(|source| ClientError::Connect {
                            what: path.display().to_string(),
                            source,
                        })?;
                }
                Ok(s)
            }
            Endpoint::HybridVsock(uds) => {
                let mut s =
                    UnixStream::connect(uds)
                        .await
                        .map_err(|source| ClientError::Connect {
                            what: uds.display().to_string(),
                            source,
                        })?;
                let p = port.vsock_port();
                let mut out = format!("CONNECT {p}\n").into_bytes();
                out.extend_from_slice(first);
                s.write_all(&out)
                    .await
                    .map_err(|source| ClientError::Connect {
                        what: format!("{} port {p}", uds.display()),
                        source,
                    })?;
                let line =
                    read_handshake_line(&mut s)
                        .await
                        .map_err(|e| ClientError::Handshake {
                            port: p,
                            reason: e.to_string(),
                        })?;
                if !line.starts_with("OK ") {
                    return Err(ClientError::Handshake {
                        port: p,
                        reason: line,
                    });
                }
                Ok(s)
            }
        }
    }

    /// Opens one stdio or pty stream of a process: after this returns the connection carries
    /// that stream's raw bytes. The hello goes out with the connect (one round trip); the
    /// guest answers once the process is defined, so this may run before the call defining it.
    pub async fn open_stream(
        &self,
        id: &str,
        exec_id: &str,
        stream: StreamKind,
    ) -> Result<UnixStream, ClientError> {
        let port = if stream == StreamKind::Pty {
            Port::Pty
        } else {
            Port::Stdio
        };
        let hello = StreamHello {
            container_id: id.into(),
            exec_id: exec_id.into(),
            stream,
        };
        let mut conn = self.connect_with(port, hello.to_line().as_bytes()).await?;
        let answer = read_line(&mut conn).await?;
        if answer != "OK" {
            let reason = answer.strip_prefix("ERR ").unwrap_or(&answer).to_string();
            return Err(ClientError::StreamRefused { stream, reason });
        }
        Ok(conn)
    }
}

/// Reads box-vmm's `OK <port>\n` without consuming a byte past it (the guest may speak right
/// after it, e.g. on the events port): peek, then read exactly the line. Two syscalls instead
/// of one per byte, which under nested TCG is most of a connect's cost.
async fn read_handshake_line(s: &mut UnixStream) -> Result<String, LineError> {
    const MAX: usize = 64;
    let mut line = Vec::with_capacity(MAX);
    loop {
        let mut peek = [0u8; MAX];
        let n = loop {
            s.readable().await?;
            let peeked = s.try_io(Interest::READABLE, || {
                nix::sys::socket::recv(
                    s.as_raw_fd(),
                    &mut peek,
                    nix::sys::socket::MsgFlags::MSG_PEEK,
                )
                .map_err(std::io::Error::from)
            });
            match peeked {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        };
        if n == 0 {
            return Err(LineError::Eof);
        }
        // Consume through the newline if it is there, else what was peeked (never more).
        let (take, done) = match peek[..n].iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (n, false),
        };
        let mut chunk = vec![0u8; take];
        s.read_exact(&mut chunk).await?;
        line.extend_from_slice(&chunk);
        if done {
            line.pop();
            return String::from_utf8(line).map_err(|_| LineError::NotUtf8);
        }
        if line.len() >= MAX {
            return Err(LineError::TooLong);
        }
    }
}

/// What a process is, for Create (the bundle's config.json says) and Exec (given here).
#[derive(Debug, Clone, Default)]
pub struct StdioRequest {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub terminal: bool,
}

impl StdioRequest {
    fn names(&self, id: &str) -> [String; 3] {
        let name = |on: bool, s: &str| {
            if on {
                format!("{id}-{s}")
            } else {
                String::new()
            }
        };
        [
            name(self.stdin, "stdin"),
            name(self.stdout, "stdout"),
            name(self.stderr, "stderr"),
        ]
    }
}

/// One mount of a container's root filesystem, applied by guest-init under the bundle.
#[derive(Debug, Clone, Default)]
pub struct RootfsMount {
    pub fstype: String,
    pub source: String,
    /// Relative to the bundle; empty means `rootfs`.
    pub target: String,
    pub options: Vec<String>,
}

/// A connected client. Unary calls share one ttrpc connection; every stream and the events
/// get their own connection.
#[derive(Clone)]
pub struct GuestClient {
    endpoint: Endpoint,
    task: TaskClient,
    agent: AgentRpc,
    /// Request/answer exchanges with the guest so far (connect handshakes, stream hellos,
    /// calls), for the exec path's accounting: see [`GuestClient::exchanges`].
    exchanges: Arc<AtomicU32>,
}

/// How long guest-init may take to answer Create.
const CREATE_BACKSTOP: Duration = Duration::from_secs(120);
/// How long guest-init may take to answer a call that does not wait for a process
/// (Start, ConfigureNetwork): a backstop against a guest that stopped answering.
const RPC_BACKSTOP: Duration = Duration::from_secs(60);

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::Context::default()
}

impl GuestClient {
    pub async fn connect(endpoint: Endpoint) -> Result<GuestClient, ClientError> {
        let conn = endpoint.connect(Port::Control).await?;
        let client = ttrpc::r#async::Client::new(conn.into());
        Ok(GuestClient {
            task: TaskClient::new(client.clone()),
            agent: AgentRpc::new(client),
            endpoint,
            exchanges: Arc::new(AtomicU32::new(1)),
        })
    }

    /// How many request/answer exchanges this client had with the guest (the control
    /// connection's handshake included). Concurrent ones count each.
    pub fn exchanges(&self) -> u32 {
        self.exchanges.load(Ordering::Relaxed)
    }

    fn count(&self, n: u32) {
        self.exchanges.fetch_add(n, Ordering::Relaxed);
    }

    /// Defines an exec, starts it once its streams are attached (open them with
    /// [`GuestClient::open_stream`] concurrently: the guest waits for them) and, with `wait`,
    /// answers at its exit, the exec already forgotten. One call where the Task service
    /// takes four (Exec, Start, Wait, Delete).
    pub async fn run_process(
        &self,
        id: &str,
        exec_id: &str,
        process: &serde_json::Value,
        io: &StdioRequest,
        wait: bool,
    ) -> Result<RunProcessResponse, ClientError> {
        self.run_process_within(id, exec_id, process, io, wait, Duration::ZERO)
            .await
    }

    /// [`GuestClient::run_process`], giving up (the process never runs) when its streams are
    /// not attached within `attach` (zero: the guest's default, 30 s).
    pub async fn run_process_within(
        &self,
        id: &str,
        exec_id: &str,
        process: &serde_json::Value,
        io: &StdioRequest,
        wait: bool,
        attach: Duration,
    ) -> Result<RunProcessResponse, ClientError> {
        self.count(1);
        let req = RunProcessRequest {
            container_id: id.into(),
            exec_id: exec_id.into(),
            process: serde_json::to_vec(process)?,
            terminal: io.terminal,
            stdin: io.stdin,
            stdout: io.stdout,
            stderr: io.stderr,
            wait,
            attach_timeout_ms: attach.as_millis().min(u32::MAX as u128) as u32,
            ..Default::default()
        };
        Ok(self.agent.run_process(ctx(), &req).await?)
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub async fn health(&self, timeout: Duration) -> Result<HealthResponse, ClientError> {
        self.count(1);
        tokio::time::timeout(timeout, self.agent.health(ctx(), &HealthRequest::new()))
            .await
            .map_err(|_| ClientError::Timeout(timeout))?
            .map_err(Into::into)
    }

    /// Configures the sandbox's network (interfaces, routes, resolver), before its first
    /// container.
    pub async fn configure_network(
        &self,
        req: &box_guest_init::api::agent::ConfigureNetworkRequest,
    ) -> Result<(), ClientError> {
        self.count(1);
        tokio::time::timeout(RPC_BACKSTOP, self.agent.configure_network(ctx(), req))
            .await
            .map_err(|_| ClientError::Timeout(RPC_BACKSTOP))??;
        Ok(())
    }

    pub async fn shutdown(&self, grace: Duration) -> Result<(), ClientError> {
        self.count(1);
        let req = ShutdownRequest {
            grace_ms: grace.as_millis().min(u32::MAX as u128) as u32,
            ..Default::default()
        };
        self.agent.shutdown(ctx(), &req).await?;
        Ok(())
    }

    /// Creates the container from a bundle that already exists where guest-init runs.
    pub async fn create(
        &self,
        id: &str,
        bundle: &str,
        io: &StdioRequest,
    ) -> Result<u32, ClientError> {
        self.create_described(id, bundle, io, None, Vec::new())
            .await
    }

    /// Creates the container in a bundle guest-init makes: `spec` (an OCI runtime spec) is
    /// written to its config.json and `rootfs` mounted under it (paths bundle-relative).
    pub async fn create_described(
        &self,
        id: &str,
        bundle: &str,
        io: &StdioRequest,
        spec: Option<&serde_json::Value>,
        rootfs: Vec<RootfsMount>,
    ) -> Result<u32, ClientError> {
        self.count(1);
        let [stdin, stdout, stderr] = io.names(id);
        let options = match spec {
            Some(spec) => {
                let mut any = Any::new();
                any.type_url = SPEC_TYPE_URL.into();
                any.value = serde_json::to_vec(spec)?;
                Some(any)
            }
            None => None,
        };
        let req = CreateTaskRequest {
            id: id.into(),
            bundle: bundle.into(),
            terminal: io.terminal,
            stdin,
            stdout,
            stderr,
            options: options.into(),
            rootfs: rootfs
                .into_iter()
                .map(|m| Mount {
                    type_: m.fstype,
                    source: m.source,
                    target: m.target,
                    options: m.options,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        // A backstop, not a wait: guest-init answers once the rootfs is mounted (which may
        // wait up to 10 s for a disk attached just before); a guest that never answers
        // must fail the create with a reason, not hang it.
        tokio::time::timeout(CREATE_BACKSTOP, self.task.create(ctx(), &req))
            .await
            .map_err(|_| ClientError::Timeout(CREATE_BACKSTOP))?
            .map(|r| r.pid)
            .map_err(Into::into)
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, ClientError> {
        self.count(1);
        let req = StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        tokio::time::timeout(RPC_BACKSTOP, self.task.start(ctx(), &req))
            .await
            .map_err(|_| ClientError::Timeout(RPC_BACKSTOP))?
            .map(|r| r.pid)
            .map_err(Into::into)
    }

    /// Registers an exec; `process` is an OCI process spec (JSON), as containerd sends it.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process: &serde_json::Value,
        io: &StdioRequest,
    ) -> Result<(), ClientError> {
        self.count(1);
        let [stdin, stdout, stderr] = io.names(exec_id);
        let mut spec = Any::new();
        spec.type_url = PROCESS_SPEC_TYPE_URL.into();
        spec.value = serde_json::to_vec(process)?;
        let req = ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            terminal: io.terminal,
            stdin,
            stdout,
            stderr,
            spec: Some(spec).into(),
            ..Default::default()
        };
        self.task.exec(ctx(), &req).await?;
        Ok(())
    }

    pub async fn kill(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), ClientError> {
        self.count(1);
        let req = KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            all,
            ..Default::default()
        };
        self.task.kill(ctx(), &req).await?;
        Ok(())
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<WaitResponse, ClientError> {
        self.count(1);
        let req = WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        Ok(self.task.wait(ctx(), &req).await?)
    }

    pub async fn state(&self, id: &str, exec_id: &str) -> Result<StateResponse, ClientError> {
        self.count(1);
        let req = StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        Ok(self.task.state(ctx(), &req).await?)
    }

    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<DeleteResponse, ClientError> {
        self.count(1);
        let req = DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        Ok(self.task.delete(ctx(), &req).await?)
    }

    pub async fn resize_pty(
        &self,
        id: &str,
        exec_id: &str,
        cols: u32,
        rows: u32,
    ) -> Result<(), ClientError> {
        self.count(1);
        let req = ResizePtyRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            width: cols,
            height: rows,
            ..Default::default()
        };
        self.task.resize_pty(ctx(), &req).await?;
        Ok(())
    }

    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), ClientError> {
        self.count(1);
        let req = CloseIORequest {
            id: id.into(),
            exec_id: exec_id.into(),
            stdin: true,
            ..Default::default()
        };
        self.task.close_io(ctx(), &req).await?;
        Ok(())
    }

    pub async fn pids(&self, id: &str) -> Result<Vec<u32>, ClientError> {
        self.count(1);
        let req = PidsRequest {
            id: id.into(),
            ..Default::default()
        };
        Ok(self
            .task
            .pids(ctx(), &req)
            .await?
            .processes
            .iter()
            .map(|p| p.pid)
            .collect())
    }

    /// [`Endpoint::open_stream`], counted.
    pub async fn open_stream(
        &self,
        id: &str,
        exec_id: &str,
        stream: StreamKind,
    ) -> Result<UnixStream, ClientError> {
        self.count(1);
        self.endpoint.open_stream(id, exec_id, stream).await
    }

    /// Counts exchanges made without this client (streams opened on its endpoint before it
    /// connected).
    pub fn add_exchanges(&self, n: u32) {
        self.count(n);
    }

    pub async fn events(&self) -> Result<EventStream, ClientError> {
        self.count(1);
        Ok(EventStream {
            conn: BufReader::new(self.endpoint.connect(Port::Events).await?),
        })
    }
}

/// The guest's event stream, in publish order.
pub struct EventStream {
    conn: BufReader<UnixStream>,
}

impl EventStream {
    /// The next event; `Ok(None)` when the guest closed the stream.
    pub async fn next(&mut self) -> Result<Option<Event>, ClientError> {
        match read_frame(&mut self.conn).await? {
            Some(env) => Ok(Some(Event::from_envelope(&env)?)),
            None => Ok(None),
        }
    }
}
