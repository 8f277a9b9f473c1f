//! Accepts stdio and pty connections, reads their hello line and hands each connection to
//! the process stream it names.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use super::task::Tasks;
use super::transport::{BoxConn, Listener};
use crate::api::stream::{read_line, StreamHello, StreamKind};

/// A client that connects and never says hello must not hold a task forever.
const HELLO_TIMEOUT: Duration = Duration::from_secs(30);
/// A host opens a process's streams while it defines the process (one round trip instead of
/// two): a hello may arrive first and waits this long for its process.
pub const DEFINE_WAIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stdio,
    Pty,
}

pub async fn serve(listener: Listener, kind: Kind, tasks: Arc<Tasks>) {
    loop {
        match listener.accept().await {
            Ok(conn) => {
                tokio::spawn(handle(conn, kind, tasks.clone()));
            }
            Err(e) => tracing::warn!("{kind:?} accept: {e}"),
        }
    }
}

async fn handle(mut conn: BoxConn, kind: Kind, tasks: Arc<Tasks>) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, read_line(&mut conn)).await {
        Ok(Ok(line)) => StreamHello::parse(&line).map_err(|e| format!("malformed hello: {e}")),
        Ok(Err(e)) => Err(format!("reading hello: {e}")),
        Err(_) => Err("no hello within the timeout".to_string()),
    };
    let slot = match hello {
        Ok(h) if (h.stream == StreamKind::Pty) != (kind == Kind::Pty) => {
            Err(format!("{:?} stream on the {kind:?} listener", h.stream))
        }
        Ok(h) => tasks
            .stream_slot_when_defined(&h.container_id, &h.exec_id, h.stream, DEFINE_WAIT)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    match slot {
        Ok(slot) => {
            if conn.write_all(b"OK\n").await.is_ok() {
                let _ = slot.send(conn);
            }
        }
        Err(reason) => {
            let reason = reason.replace('\n', " ");
            let _ = conn.write_all(format!("ERR {reason}\n").as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    }
}
