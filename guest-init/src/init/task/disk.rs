//! Disks put into the VM after it booted (box-vmm's disk slots), named as udev names virtio
//! disks: `/dev/disk/by-id/virtio-<serial>`. The guest has no udev, so guest-init resolves
//! such a mount source itself from `/sys/block/*/serial`.
//!
//! box-vmm answers the host's attach before the guest has taken in the new capacity (its
//! config-change interrupt is handled on a kernel workqueue), so a resolved disk is also
//! waited for until it has sectors, bounded by [`BACKSTOP`]. sysfs offers no notification for
//! either, so both are polled at [`POLL`]; the wait is normally a few polls.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::TaskError;

/// The udev name of a virtio disk by its serial.
pub const BY_ID: &str = "/dev/disk/by-id/virtio-";
/// How long a disk may take to appear with its capacity.
pub const BACKSTOP: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(5);

/// The device node for `source` if it names a virtio disk by serial that guest-init must
/// find itself; `None` for any other source (used as given).
pub fn resolve(source: &str) -> Result<Option<PathBuf>, TaskError> {
    let Some(serial) = source.strip_prefix(BY_ID) else {
        return Ok(None);
    };
    if Path::new(source).exists() {
        // A guest with udev has the link already.
        return Ok(None);
    }
    find(Path::new("/sys/block"), Path::new("/dev"), serial, BACKSTOP).map(Some)
}

/// Waits for a disk in `sys_block` whose serial is `serial` and whose size is not zero;
/// returns its node under `dev`.
pub fn find(
    sys_block: &Path,
    dev: &Path,
    serial: &str,
    backstop: Duration,
) -> Result<PathBuf, TaskError> {
    if serial.is_empty() || serial.contains('/') {
        return Err(TaskError::InvalidArgument(format!(
            "disk serial {serial:?} is not a serial"
        )));
    }
    let deadline = Instant::now() + backstop;
    // Reading a `serial` is a request to the device (GET_ID): the disks are scanned until one
    // answers with the serial, then only its `size` (no request) is watched.
    let mut found: Option<String> = None;
    loop {
        if found.is_none() {
            found = by_serial(sys_block, serial);
        }
        if let Some(name) = &found {
            if sectors(&sys_block.join(name)) > 0 {
                return Ok(dev.join(name));
            }
        }
        if Instant::now() >= deadline {
            return Err(TaskError::FailedPrecondition(match found {
                Some(name) => format!(
                    "disk {serial:?} ({name}) still has no sectors after {backstop:?}: was it attached?"
                ),
                None => format!("no disk with serial {serial:?} after {backstop:?}"),
            }));
        }
        std::thread::sleep(POLL);
    }
}

fn sectors(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join("size"))
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// The block device whose serial is `serial`.
fn by_serial(sys_block: &Path, serial: &str) -> Option<String> {
    std::fs::read_dir(sys_block).ok()?.flatten().find_map(|e| {
        let s = std::fs::read_to_string(e.path().join("serial")).ok()?;
        (s.trim_end() == serial).then(|| e.file_name().to_string_lossy().into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sys(disks: &[(&str, &str, u64)]) -> PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "box-init-disk-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        for (name, serial, size) in disks {
            let b = d.join(name);
            std::fs::create_dir_all(&b).unwrap();
            std::fs::write(b.join("serial"), format!("{serial}\n")).unwrap();
            std::fs::write(b.join("size"), format!("{size}\n")).unwrap();
        }
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn finds_the_disk_by_serial_once_it_has_sectors() {
        let s = sys(&[("vda", "box-disk-0", 100), ("vdb", "ctr-1", 8)]);
        let got = find(&s, Path::new("/dev"), "ctr-1", Duration::ZERO).unwrap();
        assert_eq!(got, Path::new("/dev/vdb"));
        let _ = std::fs::remove_dir_all(s);
    }

    #[test]
    fn a_disk_without_sectors_is_waited_for_then_refused_with_a_reason() {
        let s = sys(&[("vdb", "ctr-1", 0)]);
        let e = find(&s, Path::new("/dev"), "ctr-1", Duration::from_millis(20)).unwrap_err();
        assert!(e.to_string().contains("(vdb) still has no sectors"), "{e}");
        let e = find(&s, Path::new("/dev"), "ctr-2", Duration::ZERO).unwrap_err();
        assert!(
            e.to_string().contains("no disk with serial \"ctr-2\""),
            "{e}"
        );
        assert!(find(&s, Path::new("/dev"), "../x", Duration::ZERO).is_err());
        let _ = std::fs::remove_dir_all(s);
    }

    #[test]
    fn a_capacity_that_arrives_while_waiting_is_seen() {
        let s = sys(&[("vdc", "ctr-9", 0)]);
        let size = s.join("vdc/size");
        let t = std::thread::spawn(move || {
            // The guest kernel taking in the config change, some polls later.
            std::thread::sleep(Duration::from_millis(30));
            std::fs::write(size, "2048\n").unwrap();
        });
        let got = find(&s, Path::new("/dev"), "ctr-9", Duration::from_secs(10)).unwrap();
        assert_eq!(got, Path::new("/dev/vdc"));
        t.join().unwrap();
        let _ = std::fs::remove_dir_all(s);
    }

    #[test]
    fn other_sources_are_left_alone() {
        assert_eq!(resolve("/dev/vda").unwrap(), None);
        assert_eq!(resolve("tmpfs").unwrap(), None);
    }
}
