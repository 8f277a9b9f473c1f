//! Box's own sandbox-level service: health (readiness), orderly shutdown, the one-call exec
//! path (RunProcess), and the sandbox's network (ConfigureNetwork).

use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::mpsc;
use ttrpc::r#async::TtrpcContext;

use super::net;
use super::signals::ShutdownCause;
use super::streams::DEFINE_WAIT;
use super::task::{ProcessRequest, TaskError, Tasks};
use crate::api::agent::{
    ConfigureNetworkRequest, ConfigureNetworkResponse, HealthRequest, HealthResponse,
    RunProcessRequest, RunProcessResponse, ShutdownRequest, ShutdownResponse,
};

pub struct AgentService {
    pub started: Instant,
    pub shutdown: mpsc::UnboundedSender<ShutdownCause>,
    pub tasks: Arc<Tasks>,
}

#[async_trait]
impl crate::api::agent::Agent for AgentService {
    async fn health(&self, _: &TtrpcContext, _: HealthRequest) -> ttrpc::Result<HealthResponse> {
        Ok(HealthResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _: &TtrpcContext,
        req: ShutdownRequest,
    ) -> ttrpc::Result<ShutdownResponse> {
        let _ = self.shutdown.send(ShutdownCause::Request {
            grace_ms: req.grace_ms,
        });
        Ok(ShutdownResponse::default())
    }

    async fn run_process(
        &self,
        _: &TtrpcContext,
        req: RunProcessRequest,
    ) -> ttrpc::Result<RunProcessResponse> {
        let spec = serde_json::from_slice(&req.process)
            .map_err(|e| TaskError::InvalidArgument(format!("process spec: {e}")))?;
        // The Task service's stream names: non-empty means wanted.
        let name = |on: bool, s: &str| {
            if on {
                format!("{}-{s}", req.exec_id)
            } else {
                String::new()
            }
        };
        let pr = ProcessRequest {
            container_id: req.container_id.clone(),
            exec_id: req.exec_id.clone(),
            terminal: req.terminal,
            io_names: [
                name(req.stdin, "stdin"),
                name(req.stdout && !req.terminal, "stdout"),
                name(req.stderr && !req.terminal, "stderr"),
            ],
        };
        let attach_within = match req.attach_timeout_ms {
            0 => DEFINE_WAIT,
            ms => Duration::from_millis(ms.into()),
        };
        let (pid, exit) = self
            .tasks
            .run_process(pr, spec, attach_within, req.wait)
            .await?;
        let mut resp = RunProcessResponse {
            pid,
            ..Default::default()
        };
        if let Some(exit) = exit {
            resp.exit_status = exit.status;
            resp.exited_at_ns = exit
                .exited_at
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
        }
        Ok(resp)
    }

    async fn configure_network(
        &self,
        _: &TtrpcContext,
        req: ConfigureNetworkRequest,
    ) -> ttrpc::Result<ConfigureNetworkResponse> {
        let plan = net::Plan::parse(&req).map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
        if !plan.interfaces.is_empty() || !plan.routes.is_empty() {
            // A host-process init shares the host's network namespace: its interfaces are
            // the host's, never the sandbox's to configure.
            if !self.tasks.in_vm() {
                return Err(TaskError::FailedPrecondition(
                    "configuring interfaces needs a VM: a host-process sandbox shares the host's network"
                        .into(),
                )
                .into());
            }
            net::apply(&plan).await.map_err(|e| match e {
                net::NetError::Invalid(m) => TaskError::InvalidArgument(m),
                net::NetError::NoSuchInterface(_) => TaskError::FailedPrecondition(e.to_string()),
                e => TaskError::Internal(e.to_string()),
            })?;
        }
        self.tasks.set_identity(plan.identity);
        Ok(ConfigureNetworkResponse::default())
    }
}
