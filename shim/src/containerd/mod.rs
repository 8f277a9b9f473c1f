//! The containerd front door: `containerd-shim-box-v2` (runtime `io.containerd.box.v2`, task
//! API v3, containerd ≥ 2.0), one shim process and one microVM per pod, over the same
//! sandbox library as the CLI.

pub mod io;
pub mod pod;
pub mod service;
pub mod spec;

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;

use crate::sandbox::backend::MicroVm;
use crate::sandbox::state::StateRoot;

/// containerd's name for this runtime.
pub const RUNTIME_ID: &str = "io.containerd.box.v2";

struct BoxShim {
    namespace: String,
    id: String,
    exit: Arc<ExitSignal>,
}

fn shim_err(e: impl std::fmt::Display) -> containerd_shim::Error {
    containerd_shim::Error::Other(e.to_string())
}

#[async_trait]
impl Shim for BoxShim {
    type T = service::Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        BoxShim {
            namespace: args.namespace.clone(),
            id: args.id.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// Spawns (or finds) the shim of the container's pod: containerd runs `start` in the
    /// bundle, whose spec names the pod.
    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let grouping = match spec::load(std::path::Path::new(".")) {
            Ok(s) => spec::grouping(&s, &opts.id),
            Err(_) => opts.id.clone(),
        };
        let address = spawn(opts, &grouping, Vec::new()).await?;
        containerd_shim::asynchronous::util::write_str_to_file("address", &address).await?;
        Ok(address)
    }

    /// containerd's cleanup after a shim died: the VM and the files of the sandbox this id
    /// names go (nothing, for an app container: its pod's shim or delete owns the VM).
    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let root = StateRoot::from_env();
        if root.load(&self.id).is_ok() {
            crate::sandbox::remove(&root, &self.id, true).map_err(shim_err)?;
        }
        let mut exited =
            containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp::now();
        exited.nanos = exited.nanos.max(0);
        Ok(DeleteResponse {
            exit_status: 137,
            exited_at: Some(exited).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        service::Service::new(
            &self.namespace,
            publisher,
            self.exit.clone(),
            StateRoot::from_env(),
            Box::new(MicroVm::from_env()),
        )
    }
}

/// Entry point of `containerd-shim-box-v2`.
pub fn main() {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: starting the runtime: {e}");
            std::process::exit(1);
        }
    };
    init_logging();
    let config = Config {
        // The library reaps exactly the pids it spawned; the crate's reaper would
        // waitpid(-1) and steal box-vmm's exit from it.
        no_reaper: true,
        no_sub_reaper: true,
        no_setup_logger: true,
        ..Default::default()
    };
    runtime.block_on(containerd_shim::asynchronous::run::<BoxShim>(
        RUNTIME_ID,
        Some(config),
    ));
}

/// Logs to containerd's `log` FIFO in the bundle (containerd copies it into its own log,
/// tagged with the shim), when there is one; `$BOX_SHIM_LOG` sets the filter.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BOX_SHIM_LOG")
        .unwrap_or_else(|_| "info".into());
    let log = std::fs::OpenOptions::new().write(true).open("log");
    match log {
        Ok(f) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(f))
                .try_init();
        }
        Err(_) => {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .try_init();
        }
    }
}
