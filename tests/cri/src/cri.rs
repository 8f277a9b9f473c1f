//! The CRI runtime service over containerd's unix socket, with the waits a kubelet does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Backstop of a single RPC (a pod start boots a VM under TCG in the node: seconds, not minutes).
const RPC_TIMEOUT: Duration = Duration::from_secs(180);
/// Backstop of the first RPC.
const VERSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Backstop of a wait for a container state.
pub const STATE_BACKSTOP: Duration = Duration::from_secs(120);
/// Poll period of ContainerStatus and of log files.
pub const POLL: Duration = Duration::from_millis(100);
/// The namespace of every pod this client makes.
pub const NAMESPACE: &str = "box-cri-test";

#[derive(Clone)]
pub struct Cri {
    rt: RuntimeServiceClient<Channel>,
}

/// A tonic status as `<rpc>: <code>: <message>` (its Display carries metadata and details).
fn rpc(what: &'static str) -> impl FnOnce(tonic::Status) -> anyhow::Error {
    move |s| anyhow!("{what}: {:?}: {}", s.code(), s.message())
}

/// Connects to `socket`; fails at once when nothing listens there.
pub async fn connect(socket: &Path) -> Result<Cri> {
    std::fs::metadata(socket)
        .with_context(|| format!("containerd's CRI socket {}", socket.display()))?;
    let path = socket.to_path_buf();
    // The URI only names the :authority; the connector ignores it.
    let channel = Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(10))
        .timeout(RPC_TIMEOUT)
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .with_context(|| format!("connecting to {}", socket.display()))?;
    Ok(Cri {
        rt: RuntimeServiceClient::new(channel),
    })
}

/// A pod this client made, with what CreateContainer needs again.
#[derive(Clone)]
pub struct Pod {
    pub id: String,
    pub label: &'static str,
    pub config: api::PodSandboxConfig,
    pub log_dir: PathBuf,
}

/// A container this client made.
#[derive(Clone)]
pub struct Ctr {
    pub id: String,
    pub name: String,
    pub log: PathBuf,
}

pub fn pod_config(name: &str, uid: &str, log_dir: &Path) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: NAMESPACE.to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir.display().to_string(),
        linux: Some(api::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

pub fn container_config(name: &str, image: &str, command: &[&str]) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: log_name(name),
        linux: Some(api::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// A container's log file, relative to its pod's log directory.
pub fn log_name(container: &str) -> String {
    format!("{container}_0.log")
}

pub fn state_name(s: &api::ContainerStatus) -> &'static str {
    s.state().as_str_name()
}

/// `state exit_code reason message` of a container, for messages.
pub fn describe(s: &api::ContainerStatus) -> String {
    format!(
        "{} exit_code={} reason={:?} message={:?}",
        state_name(s),
        s.exit_code,
        s.reason,
        s.message
    )
}

impl Cri {
    /// The first call: bounded tighter than the rest, so a socket that accepts but never
    /// answers fails soon.
    pub async fn version(&self) -> Result<api::VersionResponse> {
        let req = api::VersionRequest {
            version: "v1".into(),
        };
        let mut rt = self.rt.clone();
        let answer = tokio::time::timeout(VERSION_TIMEOUT, rt.version(req))
            .await
            .with_context(|| format!("Version: no answer within {VERSION_TIMEOUT:?}"))?;
        Ok(answer.map_err(rpc("Version"))?.into_inner())
    }

    pub async fn run_pod(&self, config: api::PodSandboxConfig, handler: &str) -> Result<String> {
        let req = api::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: handler.to_string(),
        };
        Ok(self
            .rt
            .clone()
            .run_pod_sandbox(req)
            .await
            .map_err(rpc("RunPodSandbox"))?
            .into_inner()
            .pod_sandbox_id)
    }

    pub async fn pod_status(&self, id: &str) -> Result<api::PodSandboxStatus> {
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: false,
        };
        self.rt
            .clone()
            .pod_sandbox_status(req)
            .await
            .map_err(rpc("PodSandboxStatus"))?
            .into_inner()
            .status
            .context("PodSandboxStatus answered without a status")
    }

    pub async fn stop_pod(&self, id: &str) -> Result<()> {
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.rt
            .clone()
            .stop_pod_sandbox(req)
            .await
            .map_err(rpc("StopPodSandbox"))?;
        Ok(())
    }

    pub async fn remove_pod(&self, id: &str) -> Result<()> {
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.rt
            .clone()
            .remove_pod_sandbox(req)
            .await
            .map_err(rpc("RemovePodSandbox"))?;
        Ok(())
    }

    pub async fn list_pods(&self) -> Result<Vec<api::PodSandbox>> {
        let req = api::ListPodSandboxRequest { filter: None };
        Ok(self
            .rt
            .clone()
            .list_pod_sandbox(req)
            .await
            .map_err(rpc("ListPodSandbox"))?
            .into_inner()
            .items)
    }

    pub async fn create_container(
        &self,
        pod: &Pod,
        config: api::ContainerConfig,
    ) -> Result<String> {
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        Ok(self
            .rt
            .clone()
            .create_container(req)
            .await
            .map_err(rpc("CreateContainer"))?
            .into_inner()
            .container_id)
    }

    pub async fn start(&self, id: &str) -> Result<()> {
        let req = api::StartContainerRequest {
            container_id: id.to_string(),
        };
        self.rt
            .clone()
            .start_container(req)
            .await
            .map_err(rpc("StartContainer"))?;
        Ok(())
    }

    pub async fn stop(&self, id: &str, timeout_s: i64) -> Result<()> {
        let req = api::StopContainerRequest {
            container_id: id.to_string(),
            timeout: timeout_s,
        };
        self.rt
            .clone()
            .stop_container(req)
            .await
            .map_err(rpc("StopContainer"))?;
        Ok(())
    }

    pub async fn remove(&self, id: &str) -> Result<()> {
        let req = api::RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.rt
            .clone()
            .remove_container(req)
            .await
            .map_err(rpc("RemoveContainer"))?;
        Ok(())
    }

    pub async fn status(&self, id: &str) -> Result<api::ContainerStatus> {
        let req = api::ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.rt
            .clone()
            .container_status(req)
            .await
            .map_err(rpc("ContainerStatus"))?
            .into_inner()
            .status
            .context("ContainerStatus answered without a status")
    }

    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_s: i64,
    ) -> Result<api::ExecSyncResponse> {
        let req = api::ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_s,
        };
        Ok(self
            .rt
            .clone()
            .exec_sync(req)
            .await
            .map_err(rpc("ExecSync"))?
            .into_inner())
    }

    /// Polls ContainerStatus until `want`, up to `STATE_BACKSTOP`. Reaching EXITED while
    /// waiting for another state ends the wait with an error carrying the exit.
    pub async fn wait_state(
        &self,
        id: &str,
        want: api::ContainerState,
    ) -> Result<api::ContainerStatus> {
        let start = Instant::now();
        loop {
            let s = self.status(id).await?;
            if s.state() == want {
                return Ok(s);
            }
            if s.state() == api::ContainerState::ContainerExited {
                bail!(
                    "container ended while waiting for {}: {}",
                    want.as_str_name(),
                    describe(&s)
                );
            }
            if start.elapsed() > STATE_BACKSTOP {
                bail!(
                    "not {} after {:?}: {}",
                    want.as_str_name(),
                    STATE_BACKSTOP,
                    describe(&s)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn wait_exited(&self, id: &str) -> Result<api::ContainerStatus> {
        self.wait_state(id, api::ContainerState::ContainerExited)
            .await
    }
}
