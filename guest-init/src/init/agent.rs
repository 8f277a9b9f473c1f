//! Box's own sandbox-level service: health (readiness) and orderly shutdown.

use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::mpsc;
use ttrpc::r#async::TtrpcContext;

use super::signals::ShutdownCause;
use crate::api::agent::{HealthRequest, HealthResponse, ShutdownRequest, ShutdownResponse};

pub struct AgentService {
    pub started: Instant,
    pub shutdown: mpsc::UnboundedSender<ShutdownCause>,
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
}
