//! The events stream: one long-lived host connection, frames in publish order. Events
//! published while no host is connected wait in a bounded queue; a frame leaves the queue
//! only once written, so a host that reconnects misses nothing that fit in the queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageFull;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

use super::transport::{BoxConn, Listener};
use crate::api::events::{encode_frame, envelope};

/// Beyond this many undelivered events the oldest are dropped (and logged): a host that never
/// connects must not grow PID 1's memory without bound.
const MAX_QUEUED: usize = 4096;

#[derive(Default)]
pub struct Events {
    queue: Mutex<VecDeque<Vec<u8>>>,
    ready: Notify,
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    Timestamp::from(t)
}

impl Events {
    pub fn publish<M: MessageFull>(&self, topic: &str, event: &M) {
        let frame = encode_frame(&envelope(topic, event, timestamp(SystemTime::now())));
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_QUEUED {
            q.pop_front();
            tracing::warn!("events queue full: dropped the oldest undelivered event");
        }
        q.push_back(frame);
        drop(q);
        self.ready.notify_one();
    }

    fn front(&self) -> Option<Vec<u8>> {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .front()
            .cloned()
    }

    fn pop_front(&self) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
    }

    /// Accepts host connections; the newest one receives the stream.
    pub async fn serve(self: Arc<Self>, listener: Listener) {
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(self.clone().writer(rx));
        loop {
            match listener.accept().await {
                Ok(conn) => {
                    if tx.send(conn).await.is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!("events accept: {e}"),
            }
        }
    }

    async fn writer(self: Arc<Self>, mut conns: mpsc::Receiver<BoxConn>) {
        let mut conn: Option<BoxConn> = None;
        loop {
            let Some(current) = conn.as_mut() else {
                conn = conns.recv().await;
                if conn.is_none() {
                    return;
                }
                continue;
            };
            let Some(frame) = self.front() else {
                let mut byte = [0u8; 1];
                tokio::select! {
                    _ = self.ready.notified() => {}
                    newer = conns.recv() => match newer {
                        Some(c) => conn = Some(c),
                        None => return,
                    },
                    // The stream is one-way: the host closing it, or writing anything at all
                    // (a protocol violation), ends this connection.
                    _ = current.read(&mut byte) => conn = None,
                }
                continue;
            };
            match current.write_all(&frame).await {
                Ok(()) => self.pop_front(),
                Err(e) => {
                    tracing::debug!("events connection lost: {e}");
                    conn = None;
                }
            }
        }
    }
}
