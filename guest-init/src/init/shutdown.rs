//! Orderly shutdown: SIGTERM to every process, a grace period, SIGKILL to what is left, then
//! wait until the reaper has collected everything.

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::reaper::ChildrenLeft;

/// Signals every process but init (`kill(-1)`); false when there was none.
fn signal_all(sig: Signal) -> bool {
    kill(Pid::from_raw(-1), sig).is_ok()
}

async fn wait_no_children(children: &mut ChildrenLeft, limit: Duration) -> bool {
    tokio::time::timeout(limit, children.wait_for(|left| !left))
        .await
        .is_ok_and(|r| r.is_ok())
}

pub async fn terminate_all(grace: Duration, mut children: ChildrenLeft) {
    if !signal_all(Signal::SIGTERM) {
        return;
    }
    // The flag may still say "none left" from before the signal: look for a fresh update.
    children.mark_unchanged();
    if wait_no_children(&mut children, grace).await {
        return;
    }
    tracing::info!("processes still alive after {grace:?}: SIGKILL");
    if signal_all(Signal::SIGKILL) {
        wait_no_children(&mut children, Duration::from_secs(10)).await;
    }
}
