//! Readiness: the guest is ready when it answers Health. The wait is bounded by the
//! liveness of the sandbox's process: every attempt (connect + Health) is short, the wait ends
//! at once when the process exits, and a large cap is only a backstop against a guest that
//! runs but never answers.

use std::time::{Duration, Instant};

use super::vmm_process::{ExitCode, Spawned};
use crate::agent_client::{ClientError, Endpoint, GuestClient};

/// One connect + Health attempt may take this long.
pub const ATTEMPT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error("the sandbox process exited with code {0} before the guest answered")]
    Exited(ExitCode),
    #[error("the guest did not answer within {waited:?} (last attempt: {last})")]
    Backstop { waited: Duration, last: String },
}

async fn attempt(endpoint: &Endpoint) -> Result<GuestClient, ClientError> {
    let client = tokio::time::timeout(ATTEMPT, GuestClient::connect(endpoint.clone()))
        .await
        .map_err(|_| ClientError::Timeout(ATTEMPT))??;
    client.health(ATTEMPT).await?;
    Ok(client)
}

/// Waits until the guest answers Health, the process exits, or `backstop` passed.
pub async fn wait_ready(
    endpoint: &Endpoint,
    process: &Spawned,
    backstop: Duration,
) -> Result<GuestClient, ReadyError> {
    let start = Instant::now();
    let mut exit = process.exit.clone();
    let mut backoff = BACKOFF_MIN;
    let mut last = String::from("none yet");
    loop {
        if let Some(code) = *exit.borrow_and_update() {
            return Err(ReadyError::Exited(code));
        }
        if start.elapsed() >= backstop {
            return Err(ReadyError::Backstop {
                waited: start.elapsed(),
                last,
            });
        }
        tokio::select! {
            r = attempt(endpoint) => match r {
                Ok(client) => {
                    tracing::debug!("guest ready after {:?}", start.elapsed());
                    return Ok(client);
                }
                Err(e) => last = e.to_string(),
            },
            _ = exit.changed() => continue,
        }
        // A short backoff between attempts; an exit cuts it short.
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = exit.changed() => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}
