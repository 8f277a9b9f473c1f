//! `box serve`: the pooled sandbox API. HTTP/JSON (axum) over the same sandbox library as the
//! CLI and the containerd shim: a sandbox is a VM whose main container is an idle keeper,
//! commands are execs in it. Warm pools ([`pool`]) hand out VMs booted ahead.
//!
//! Listens on a unix socket (`$BOX_STATE_DIR/serve.sock`, no token: the socket's mode is the
//! access control) and, with `--listen`, on TCP, where every request needs the bearer token
//! (created 0600 on first start, compared in constant time).

pub mod api;
pub mod auth;
pub mod handlers;
pub mod metrics;
pub mod pool;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use tokio::sync::watch;

use crate::agent_client::StdioRequest;
use crate::sandbox::backend::Backend;
use crate::sandbox::state::{now, StateRoot};
use crate::sandbox::{self, CreateOptions, Sandbox, SandboxError, VmSpec};
use box_images as image;
use pool::{Pool, PoolConfig, Warm};

/// What a sandbox's main container runs: nothing but staying alive for its commands.
pub const KEEPER: &[&str] = &["sleep", "2147483647"];
/// The names of this server's sandboxes start so.
pub const SANDBOX_PREFIX: &str = "sbx-";
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

pub struct ServeConfig {
    pub socket: PathBuf,
    pub listen: Option<SocketAddr>,
    pub token_file: PathBuf,
    pub pools: Vec<PoolConfig>,
    /// Sandboxes alive at once (taken ones; pools' warm VMs do not count).
    pub max_sandboxes: usize,
    pub cpus: u32,
    pub memory_mib: u32,
}

/// A sandbox handed out.
pub struct Live {
    /// Not changed once handed out: its client and container id serve every command.
    pub sandbox: Sandbox,
    pub info: Mutex<api::SandboxInfo>,
    pub env: Vec<String>,
    /// The deadline moves with a timeout extension; the expiry task follows it.
    pub deadline: watch::Sender<Instant>,
    pub commands: Mutex<BTreeMap<String, api::CommandInfo>>,
    pub destroying: std::sync::atomic::AtomicBool,
}

pub struct State {
    /// Creates under way (each holds a [`Place`]).
    starting: std::sync::atomic::AtomicUsize,
    pub root: StateRoot,
    pub backend: Arc<dyn Backend>,
    pub config: ServeConfig,
    pub pools: HashMap<String, Arc<Pool>>,
    pub live: Mutex<HashMap<String, Arc<Live>>>,
    pub metrics: metrics::Metrics,
}

/// A place among `max_sandboxes`, held while a create runs.
pub struct Place<'a>(&'a State);

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0
            .starting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl State {
    /// A place for one more sandbox, or the count that fills the server.
    pub fn reserve(&self) -> Result<Place<'_>, usize> {
        // Under the live map's lock: a create that finishes moves from `starting` to `live`
        // while holding it too.
        let live = self.live.lock().unwrap();
        let n = live.len() + self.starting.load(std::sync::atomic::Ordering::SeqCst);
        if n >= self.config.max_sandboxes {
            return Err(n);
        }
        self.starting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(Place(self))
    }

    fn vm_spec(&self) -> VmSpec {
        VmSpec {
            network: self.backend.default_network(),
            disk_slots: 1,
            ..Default::default()
        }
    }

    /// Boots a VM for `image` with no container yet, its root prepared.
    pub async fn boot_warm(&self, image_ref: &str) -> Result<Warm, SandboxError> {
        self.boot(image_ref, self.config.cpus, self.config.memory_mib, &[])
            .await
    }

    async fn boot(
        &self,
        image_ref: &str,
        cpus: u32,
        memory_mib: u32,
        env: &[String],
    ) -> Result<Warm, SandboxError> {
        let opts = CreateOptions {
            image: image_ref.to_string(),
            cpus,
            memory_mib,
            env: env.to_vec(),
            command: KEEPER.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        opts.validate()?;
        let img = image::resolve(image_ref, &self.root.images_dir())?;
        let config = sandbox::run_config(&img, &opts)?;
        let name = format!("{SANDBOX_PREFIX}{}", sandbox::random_hex(6));
        let mut sb = Sandbox::create_vm(
            &self.root,
            self.backend.as_ref(),
            &name,
            config,
            &self.vm_spec(),
        )
        .await?;
        // The main container is created now, only its Start waits for the request: a taken
        // VM is one Start away from serving.
        let created = async {
            let rootfs =
                Sandbox::prepare_rootfs(&self.root, self.backend.as_ref(), &img, &mut sb.record)
                    .map_err(|reason| SandboxError::SetupFailed {
                        name: name.clone(),
                        reason,
                    })?;
            sb.add_main_container(self.backend.as_ref(), &rootfs, &StdioRequest::default())
                .await
        }
        .await;
        if let Err(e) = created {
            sandbox::mark_failed(&self.root, &name, &e.to_string());
            self.destroy_quietly(&name).await;
            return Err(e);
        }
        Ok(Warm { sandbox: sb })
    }

    /// A sandbox for the request: from the image's warm pool when it has one ready (and the
    /// default size is asked for), else booted now; then its main container created and
    /// started (exactly once, here).
    pub async fn acquire(
        self: &Arc<Self>,
        req: &api::CreateSandbox,
    ) -> Result<Arc<Live>, SandboxError> {
        let began = Instant::now();
        let cpus = req.cpus.unwrap_or(self.config.cpus);
        let memory_mib = req.memory_mib.unwrap_or(self.config.memory_mib);
        sandbox::validate_env(&req.env)?;
        let default_size = cpus == self.config.cpus && memory_mib == self.config.memory_mib;
        let pooled = match self.pools.get(&req.image) {
            Some(p) if default_size => p.take(self).await,
            _ => None,
        };
        let from_pool = pooled.is_some();
        let warm = match pooled {
            Some(w) => w,
            None => self.boot(&req.image, cpus, memory_mib, &req.env).await?,
        };
        let Warm { sandbox: mut sb } = warm;
        let name = sb.name().to_string();
        // Commands get the request's environment over the image's (a pooled main was
        // created before the request).
        let env = sandbox::merge_env(&[&sb.record.config.env, &req.env]);
        let started = sb.start().await;
        if let Err(e) = started {
            sandbox::mark_failed(&self.root, &name, &e.to_string());
            self.destroy_quietly(&name).await;
            return Err(e);
        }
        self.metrics.acquired(began.elapsed(), from_pool);
        let timeout = req
            .timeout_s
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TIMEOUT)
            .min(MAX_TIMEOUT);
        let created = now();
        let info = api::SandboxInfo {
            id: name.clone(),
            image: req.image.clone(),
            state: "running".into(),
            metadata: req.metadata.clone(),
            created_at: created,
            expires_at: created + timeout.as_secs(),
            from_pool,
        };
        let live = Arc::new(Live {
            sandbox: sb,
            info: Mutex::new(info),
            env,
            deadline: watch::channel(Instant::now() + timeout).0,
            commands: Mutex::default(),
            destroying: Default::default(),
        });
        self.live.lock().unwrap().insert(name.clone(), live.clone());
        tokio::spawn(self.clone().expire(name, live.deadline.subscribe()));
        Ok(live)
    }

    /// Destroys the sandbox when its deadline passes (following extensions).
    async fn expire(self: Arc<Self>, name: String, mut deadline: watch::Receiver<Instant>) {
        loop {
            let at = *deadline.borrow_and_update();
            tokio::select! {
                _ = tokio::time::sleep_until(at.into()) => break,
                changed = deadline.changed() => if changed.is_err() { return },
            }
        }
        tracing::info!("{name}: timed out");
        self.destroy(&name).await;
    }

    /// Stops and removes a sandbox; true if it was live. It is listed (`deleting`) until
    /// its processes and files are gone, so a 404 means nothing of it is left.
    pub async fn destroy(&self, name: &str) -> bool {
        let live = self.live.lock().unwrap().get(name).cloned();
        let Some(live) = live else {
            return false;
        };
        if live
            .destroying
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return true;
        }
        live.info.lock().unwrap().state = "deleting".into();
        self.destroy_quietly(name).await;
        self.live.lock().unwrap().remove(name);
        true
    }

    async fn destroy_quietly(&self, name: &str) {
        sandbox::destroy(&self.root, name, Duration::from_secs(2)).await;
    }
}

fn routes(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/v1/sandboxes",
            post(handlers::create_sandbox).get(handlers::list_sandboxes),
        )
        .route(
            "/v1/sandboxes/{id}",
            get(handlers::get_sandbox).delete(handlers::delete_sandbox),
        )
        .route("/v1/sandboxes/{id}/timeout", post(handlers::set_timeout))
        .route(
            "/v1/sandboxes/{id}/commands",
            post(handlers::run_command).get(handlers::list_commands),
        )
        .route(
            "/v1/sandboxes/{id}/commands/{cmd}/kill",
            post(handlers::kill_command),
        )
        .route("/metrics", get(handlers::metrics))
        .route("/openapi.json", get(handlers::openapi))
        .fallback(handlers::fallback)
        .layer(axum::extract::DefaultBodyLimit::max(1 << 20))
        .with_state(state)
}

/// Runs the server until SIGINT/SIGTERM; the sandboxes it handed out and its warm VMs are
/// destroyed on the way out.
pub async fn run(
    config: ServeConfig,
    backend: Box<dyn Backend>,
    root: StateRoot,
) -> Result<(), ServeError> {
    let io = |what: String| move |source| ServeError::Io { what, source };
    let pools = config
        .pools
        .iter()
        .map(|p| (p.image.clone(), Pool::new(p.clone())))
        .collect();
    let token = match config.listen {
        Some(_) => Some(
            auth::load_or_create(&config.token_file)
                .map_err(io(format!("the API token {}", config.token_file.display())))?,
        ),
        None => None,
    };
    let state = Arc::new(State {
        root,
        backend: Arc::from(backend),
        pools,
        live: Mutex::default(),
        starting: Default::default(),
        metrics: metrics::Metrics::default(),
        config,
    });
    let fillers: Vec<_> = state
        .pools
        .values()
        .map(|p| tokio::spawn(p.clone().fill(state.clone())))
        .collect();
    let _ = std::fs::remove_file(&state.config.socket);
    if let Some(dir) = state.config.socket.parent() {
        std::fs::create_dir_all(dir).map_err(io(format!("{}", dir.display())))?;
    }
    let unix = tokio::net::UnixListener::bind(&state.config.socket)
        .map_err(io(format!("binding {}", state.config.socket.display())))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&state.config.socket, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("{}", state.config.socket.display())))?;
    tracing::info!("serving on {}", state.config.socket.display());
    let app = routes(state.clone());
    let stop = shutdown_signal();
    tokio::pin!(stop);
    let unix_server = accept_loop(
        || async { unix.accept().await.map(|(s, _)| s) },
        app.clone(),
    );
    let tcp_server = async {
        match (state.config.listen, token) {
            (Some(addr), Some(token)) => {
                let l = tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(io(format!("binding {addr}")))?;
                tracing::info!("serving on {addr} (bearer token required)");
                let app = app.layer(axum::middleware::from_fn_with_state(
                    Arc::new(token),
                    auth::require_token,
                ));
                accept_loop(|| async { l.accept().await.map(|(s, _)| s) }, app)
                    .await
                    .map_err(io(format!("serving {addr}")))
            }
            _ => std::future::pending().await,
        }
    };
    let r = tokio::select! {
        r = unix_server => r.map_err(io("serving the unix socket".into())),
        r = tcp_server => r,
        _ = &mut stop => Ok(()),
    };
    tracing::info!("shutting down: destroying sandboxes and warm VMs");
    // No more boots; one cut short left its record, which the sweep below finds.
    for f in &fillers {
        f.abort();
    }
    let names: Vec<String> = state.live.lock().unwrap().keys().cloned().collect();
    for n in names {
        state.destroy(&n).await;
    }
    for p in state.pools.values() {
        for w in p.drain() {
            state.destroy_quietly(w.sandbox.name()).await;
        }
    }
    // Every sandbox this server made is named `sbx-…`: whatever of them is left (a boot
    // aborted mid-way, a create whose client went away) goes too.
    if let Ok(records) = state.root.list() {
        for r in records
            .into_iter()
            .filter(|r| r.name.starts_with(SANDBOX_PREFIX))
        {
            state.destroy_quietly(&r.name).await;
        }
    }
    let _ = std::fs::remove_file(&state.config.socket);
    r
}

/// Serves each accepted connection with hyper, HTTP/1 with half-closed connections kept: a
/// client that shuts its write side after the request (`nc`, some proxies) still gets its
/// answer instead of a request cancelled mid-way (axum::serve cannot be told so).
async fn accept_loop<S, A, F>(mut accept: A, app: Router) -> std::io::Result<()>
where
    A: FnMut() -> F,
    F: std::future::Future<Output = std::io::Result<S>>,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    loop {
        let stream = match accept().await {
            Ok(s) => s,
            // Out of descriptors or a connection reset before accept: not the server's end.
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::task::yield_now().await;
                continue;
            }
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
        });
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
