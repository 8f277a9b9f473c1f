//! The first thing PID 1 does: the pseudo filesystems everything else needs.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::config::Mode;

#[derive(Debug, thiserror::Error)]
#[error("mounting {fstype} on {target}: {source}")]
pub struct MountError {
    pub fstype: &'static str,
    pub target: &'static str,
    #[source]
    pub source: nix::Error,
}

struct Early {
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const fn early(
    fstype: &'static str,
    target: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
) -> Early {
    Early {
        fstype,
        target,
        flags,
        data,
    }
}

fn vm_mounts() -> [Early; 6] {
    let nosuid_nodev = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);
    [
        early(
            "proc",
            "/proc",
            nosuid_nodev.union(MsFlags::MS_NOEXEC),
            None,
        ),
        early(
            "sysfs",
            "/sys",
            nosuid_nodev.union(MsFlags::MS_NOEXEC),
            None,
        ),
        early("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        early(
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
            Some("ptmxmode=0666,mode=0620,gid=5"),
        ),
        early("tmpfs", "/run", nosuid_nodev, Some("mode=0755")),
        early("tmpfs", "/tmp", nosuid_nodev, Some("mode=1777")),
    ]
}

/// In a VM: proc, sys, dev, dev/pts, run, tmp. As a host process only a fresh `/proc`, which
/// the new PID namespace needs; the host's other mounts stay visible.
pub fn mount_early(mode: &Mode) -> Result<(), MountError> {
    let host_only;
    let vm;
    let list: &[Early] = match mode {
        Mode::Vm => {
            vm = vm_mounts();
            &vm
        }
        Mode::HostProcess { .. } => {
            host_only = [early(
                "proc",
                "/proc",
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                None,
            )];
            &host_only
        }
    };
    for m in list {
        let _ = std::fs::create_dir_all(m.target);
        match mount(
            Some(m.fstype),
            Path::new(m.target),
            Some(m.fstype),
            m.flags,
            m.data,
        ) {
            // The kernel may have mounted devtmpfs already (CONFIG_DEVTMPFS_MOUNT).
            Err(nix::Error::EBUSY) if m.fstype == "devtmpfs" => {}
            Err(source) => {
                return Err(MountError {
                    fstype: m.fstype,
                    target: m.target,
                    source,
                })
            }
            Ok(()) => {}
        }
    }
    Ok(())
}
