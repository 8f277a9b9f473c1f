//! The events stream: each frame is a big-endian `u32` length followed by a containerd event
//! `Envelope` (topic + `Any`-packed event), in the order guest-init published them.

use containerd_shim_protos::events::task::{TaskExecStarted, TaskExit, TaskOOM, TaskStart};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageFull};
use containerd_shim_protos::shim::event::Envelope;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest frame accepted: events are small; anything bigger is a corrupt stream.
pub const MAX_FRAME: usize = 1 << 20;

pub use containerd_shim_protos::topics::{
    TASK_EXEC_STARTED_EVENT_TOPIC, TASK_EXIT_EVENT_TOPIC, TASK_OOM_EVENT_TOPIC,
    TASK_START_EVENT_TOPIC,
};

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("event frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed event envelope: {0}")]
    Decode(#[from] containerd_shim_protos::protobuf::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start(TaskStart),
    ExecStarted(TaskExecStarted),
    Exit(TaskExit),
    Oom(TaskOOM),
    Other { topic: String },
}

pub fn envelope<M: MessageFull>(topic: &str, event: &M, timestamp: Timestamp) -> Envelope {
    let mut env = Envelope::new();
    env.timestamp = Some(timestamp).into();
    env.topic = topic.to_string();
    env.event = Some(Any::pack(event).expect("in-memory protobuf encoding cannot fail")).into();
    env
}

pub fn encode_frame(env: &Envelope) -> Vec<u8> {
    let body = env
        .write_to_bytes()
        .expect("in-memory protobuf encoding cannot fail");
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    frame
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<Envelope>, FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(Envelope::parse_from_bytes(&body)?))
}

impl Event {
    pub fn from_envelope(env: &Envelope) -> Result<Event, FrameError> {
        let Some(any) = env.event.as_ref() else {
            return Ok(Event::Other {
                topic: env.topic.clone(),
            });
        };
        Ok(match env.topic.as_str() {
            TASK_EXIT_EVENT_TOPIC => Event::Exit(TaskExit::parse_from_bytes(&any.value)?),
            TASK_OOM_EVENT_TOPIC => Event::Oom(TaskOOM::parse_from_bytes(&any.value)?),
            TASK_START_EVENT_TOPIC => Event::Start(TaskStart::parse_from_bytes(&any.value)?),
            TASK_EXEC_STARTED_EVENT_TOPIC => {
                Event::ExecStarted(TaskExecStarted::parse_from_bytes(&any.value)?)
            }
            other => Event::Other {
                topic: other.to_string(),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversize_is_refused() {
        let mut exit = TaskExit::new();
        exit.container_id = "c".into();
        exit.exit_status = 7;
        let frame = encode_frame(&envelope(TASK_EXIT_EVENT_TOPIC, &exit, Timestamp::now()));
        let mut two = frame.clone();
        two.extend_from_slice(&frame);
        let mut r = two.as_slice();
        for _ in 0..2 {
            let env = read_frame(&mut r).await.unwrap().unwrap();
            assert_eq!(
                Event::from_envelope(&env).unwrap(),
                Event::Exit(exit.clone())
            );
        }
        assert!(read_frame(&mut r).await.unwrap().is_none());

        let huge = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(
            read_frame(&mut &huge[..]).await,
            Err(FrameError::TooLarge(_))
        ));
        let garbage = [0, 0, 0, 3, 0xff, 0xff, 0xff];
        assert!(read_frame(&mut &garbage[..]).await.is_err());
    }
}
