//! The container log: bounded like docker's json-file driver with `max-size` and
//! `max-file=2`: `container.log` grows to at most `max` bytes, then becomes `container.log.1`
//! (replacing the older one) and a fresh file starts. At most `2 × max` bytes are kept.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Default cap of one log file (docker users commonly set `max-size=10m`).
pub const DEFAULT_MAX_BYTES: u64 = 10 << 20;

pub struct CappedLog {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
}

/// The rotated predecessor of `path`.
pub fn rotated(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(".1");
    PathBuf::from(s)
}

impl CappedLog {
    pub fn open(path: &Path, max: u64) -> std::io::Result<CappedLog> {
        let file = File::options().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(CappedLog {
            path: path.into(),
            file,
            size,
            max: max.max(1),
        })
    }

    pub fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            if self.size >= self.max {
                std::fs::rename(&self.path, rotated(&self.path))?;
                self.file = File::options().create(true).append(true).open(&self.path)?;
                self.size = 0;
            }
            let room = usize::try_from(self.max - self.size).unwrap_or(usize::MAX);
            let n = data.len().min(room);
            self.file.write_all(&data[..n])?;
            self.size += n as u64;
            data = &data[n..];
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_once_and_keeps_at_most_twice_its_cap() {
        let d = std::env::temp_dir().join(format!("box-log-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("container.log");
        let mut log = CappedLog::open(&p, 10).unwrap();
        for chunk in [&b"0123456"[..], b"789abcdefghij", b"klmnopqrstuvwxyz"] {
            log.write(chunk).unwrap();
        }
        assert_eq!(std::fs::read(&p).unwrap(), b"uvwxyz");
        assert_eq!(std::fs::read(rotated(&p)).unwrap(), b"klmnopqrst");
        // Reopened, it goes on from the size on disk.
        let mut log = CappedLog::open(&p, 10).unwrap();
        log.write(b"ABCDE").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"E");
        assert_eq!(std::fs::read(rotated(&p)).unwrap(), b"uvwxyzABCD");
        let _ = std::fs::remove_dir_all(&d);
    }
}
