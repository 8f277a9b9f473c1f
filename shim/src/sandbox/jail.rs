//! What the host prepares for a jailed box-vmm (the jail itself is box-vmm's `--jail`): its
//! directory, owned by the sandbox's own unprivileged uid/gid, and a cgroup v2 with memory,
//! CPU and pids limits derived from the VM's size plus the VMM's overhead.
//!
//! Each sandbox gets its own uid/gid (from the sandbox's name, in a range no distribution
//! hands out), so two VMMs can neither signal nor ptrace each other.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::SandboxError;

/// First uid/gid of the range jailed VMMs run as.
pub const ID_BASE: u32 = 1_500_000_000;
const ID_SPAN: u32 = 100_000_000;

/// Where Box's cgroups live (cgroup v2 only).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
const CGROUP_PARENT: &str = "box";

/// Memory the VMM itself needs beyond the guest's RAM (threads, device buffers, page cache
/// of its disks).
pub const VMM_OVERHEAD_MIB: u64 = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailIds {
    pub uid: u32,
    pub gid: u32,
    /// `None` where the host has no writable cgroup v2 (then only the VMM's own limits hold).
    pub cgroup: Option<PathBuf>,
}

/// FNV-1a: stable across runs and versions, unlike std's hasher.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The uid (= gid) of sandbox `name`'s VMM.
pub fn id_of(name: &str) -> u32 {
    ID_BASE + fnv1a(name) % ID_SPAN
}

fn name_of(jail_dir: &Path) -> String {
    jail_dir
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Owns `jail_dir` to the sandbox's uid and makes its cgroup.
pub fn prepare(jail_dir: &Path, cpus: u32, memory_mib: u32) -> Result<JailIds, SandboxError> {
    let name = name_of(jail_dir);
    let id = id_of(&name);
    let err = |what: &str, e: std::io::Error| {
        SandboxError::Io(format!("jail {}: {what}: {e}", jail_dir.display()))
    };
    std::os::unix::fs::chown(jail_dir, Some(id), Some(id)).map_err(|e| err("chown", e))?;
    std::fs::set_permissions(jail_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err("chmod", e))?;
    let cgroup = match make_cgroup(&name, cpus, memory_mib) {
        Ok(cg) => cg,
        Err(e) => {
            tracing::warn!("{name}: no cgroup for the VMM: {e}");
            None
        }
    };
    Ok(JailIds {
        uid: id,
        gid: id,
        cgroup,
    })
}

fn make_cgroup(name: &str, cpus: u32, memory_mib: u32) -> std::io::Result<Option<PathBuf>> {
    let root = Path::new(CGROUP_ROOT);
    if !root.join("cgroup.controllers").exists() {
        return Ok(None);
    }
    let parent = root.join(CGROUP_PARENT);
    std::fs::create_dir_all(&parent)?;
    for dir in [root, parent.as_path()] {
        std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids")?;
    }
    let cg = parent.join(name);
    match std::fs::create_dir(&cg) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let memory = (u64::from(memory_mib) + VMM_OVERHEAD_MIB) << 20;
    let limits = [
        ("memory.max", memory.to_string()),
        ("memory.swap.max", "0".to_string()),
        ("cpu.max", format!("{} 100000", u64::from(cpus) * 100_000)),
        // vCPU threads, device threads and the jail's waiter, with room.
        ("pids.max", (cpus + 32).to_string()),
    ];
    for (file, value) in limits {
        let p = cg.join(file);
        // memory.swap.max is absent without swap accounting: not an error.
        if let Err(e) = std::fs::write(&p, &value) {
            if file != "memory.swap.max" {
                let _ = std::fs::remove_dir(&cg);
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", p.display()),
                ));
            }
        }
    }
    Ok(Some(cg))
}

/// Removes sandbox `name`'s cgroup (once its processes are gone).
pub fn remove_cgroup(name: &str) {
    let cg = Path::new(CGROUP_ROOT).join(CGROUP_PARENT).join(name);
    match std::fs::remove_dir(&cg) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("removing {}: {e}", cg.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_unprivileged_and_differ_between_sandboxes() {
        assert_eq!(id_of("web"), id_of("web"));
        assert_ne!(id_of("web"), id_of("db"));
        for n in ["a", "box-12345678", "x".repeat(64).as_str()] {
            let id = id_of(n);
            assert!((ID_BASE..ID_BASE + ID_SPAN).contains(&id), "{n}: {id}");
        }
        assert_eq!(name_of(Path::new("/run/box/sandboxes/web/vmm")), "web");
    }
}
