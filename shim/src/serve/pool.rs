//! Warm pools: per image, VMs booted ahead with guest-init ready and their main container
//! created but not started (the deferred main: the request's Start is its first and only).
//! A pool refills in the background as sandboxes are taken; a pooled VM that does not answer
//! its health check when taken is recorded Failed and never handed out.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use super::State;
use crate::sandbox::{self, Sandbox};

/// A booted VM whose main container is created and waits for its Start.
pub struct Warm {
    pub sandbox: Sandbox,
}

/// What a pool keeps ready: `min_warm` VMs of `image` with the default size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolConfig {
    pub image: String,
    pub min_warm: usize,
}

impl std::str::FromStr for PoolConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<PoolConfig, String> {
        let (image, n) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("--pool {s:?}: use IMAGE=N"))?;
        let min_warm = n
            .parse()
            .map_err(|_| format!("--pool {s:?}: {n:?} is not a count"))?;
        if image.is_empty() {
            return Err(format!("--pool {s:?}: the image is empty"));
        }
        Ok(PoolConfig {
            image: image.to_string(),
            min_warm,
        })
    }
}

pub struct Pool {
    pub config: PoolConfig,
    ready: Mutex<VecDeque<Warm>>,
    wake: Notify,
    pub boot_failures: AtomicU64,
}

impl Pool {
    pub fn new(config: PoolConfig) -> Arc<Pool> {
        Arc::new(Pool {
            config,
            ready: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            boot_failures: AtomicU64::new(0),
        })
    }

    pub fn ready(&self) -> usize {
        self.ready.lock().unwrap().len()
    }

    /// A healthy warm VM, if one is ready; the pool refills behind it.
    pub async fn take(&self, state: &State) -> Option<Warm> {
        loop {
            let w = self.ready.lock().unwrap().pop_front();
            self.wake.notify_one();
            let w = w?;
            match w.sandbox.client.health(Duration::from_secs(2)).await {
                Ok(_) => return Some(w),
                Err(e) => {
                    let name = w.sandbox.name().to_string();
                    tracing::warn!(
                        "pool {}: {name} failed its health check: {e}",
                        self.config.image
                    );
                    sandbox::mark_failed(
                        &state.root,
                        &name,
                        &format!("pooled VM failed its health check: {e}"),
                    );
                    self.boot_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Keeps `min_warm` VMs ready, booting one at a time; after a failed boot it waits
    /// (doubling up to a minute) before the next try, so a broken image does not spin.
    pub async fn fill(self: Arc<Self>, state: Arc<State>) {
        let mut backoff = Duration::from_secs(1);
        loop {
            while self.ready() < self.config.min_warm {
                match state.boot_warm(&self.config.image).await {
                    Ok(w) => {
                        self.ready.lock().unwrap().push_back(w);
                        backoff = Duration::from_secs(1);
                    }
                    Err(e) => {
                        self.boot_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!("pool {}: boot failed: {e}", self.config.image);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(60));
                    }
                }
            }
            self.wake.notified().await;
        }
    }

    /// The pool's VMs, for shutdown.
    pub fn drain(&self) -> Vec<Warm> {
        self.ready.lock().unwrap().drain(..).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_flags_parse() {
        assert_eq!(
            "/img/busybox=2".parse::<PoolConfig>().unwrap(),
            PoolConfig {
                image: "/img/busybox".into(),
                min_warm: 2
            }
        );
        assert!("busybox".parse::<PoolConfig>().is_err());
        assert!("busybox=x".parse::<PoolConfig>().is_err());
        assert!("=2".parse::<PoolConfig>().is_err());
    }
}
