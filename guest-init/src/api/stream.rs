//! The data-plane handshake: a fresh stdio or pty connection names its process and stream.
//!
//! The host writes one JSON line ([`StreamHello`]); guest-init answers `OK\n` or
//! `ERR <reason>\n`; after `OK` the connection carries raw bytes only.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest hello line accepted, newline included.
pub const MAX_LINE: usize = 4096;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// A terminal: both directions on one connection, served on the pty listener.
    Pty,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StreamHello {
    pub container_id: String,
    /// Empty for the container's main process.
    #[serde(default)]
    pub exec_id: String,
    pub stream: StreamKind,
}

#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("connection closed before the end of the line")]
    Eof,
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl StreamHello {
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("a hello always serializes");
        line.push('\n');
        line
    }

    pub fn parse(line: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// Reads one `\n`-terminated line, byte by byte so that not one byte of the raw stream that
/// follows is consumed, and refuses lines longer than [`MAX_LINE`].
pub async fn read_line<R: AsyncRead + Unpin>(r: &mut R) -> Result<String, LineError> {
    let mut buf = Vec::with_capacity(128);
    loop {
        let mut byte = [0u8; 1];
        if r.read(&mut byte).await? == 0 {
            return Err(LineError::Eof);
        }
        if byte[0] == b'\n' {
            return String::from_utf8(buf).map_err(|_| LineError::NotUtf8);
        }
        if buf.len() + 1 >= MAX_LINE {
            return Err(LineError::TooLong);
        }
        buf.push(byte[0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        let h = StreamHello {
            container_id: "c1".into(),
            exec_id: "e1".into(),
            stream: StreamKind::Stderr,
        };
        let line = h.to_line();
        assert!(line.ends_with('\n'));
        assert_eq!(StreamHello::parse(line.trim_end()).unwrap(), h);
    }

    #[test]
    fn hello_rejects_unknown_fields_and_streams() {
        assert!(StreamHello::parse(r#"{"container_id":"c","stream":"stdout","x":1}"#).is_err());
        assert!(StreamHello::parse(r#"{"container_id":"c","stream":"stdfoo"}"#).is_err());
        assert!(StreamHello::parse("not json").is_err());
    }

    #[tokio::test]
    async fn read_line_stops_at_newline_and_bounds_length() {
        let mut input: &[u8] = b"hello\nrest";
        assert_eq!(read_line(&mut input).await.unwrap(), "hello");
        assert_eq!(input, b"rest");
        let long = vec![b'a'; MAX_LINE + 10];
        assert!(matches!(
            read_line(&mut long.as_slice()).await,
            Err(LineError::TooLong)
        ));
        assert!(matches!(
            read_line(&mut &b"abc"[..]).await,
            Err(LineError::Eof)
        ));
    }
}
