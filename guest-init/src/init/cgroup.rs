//! cgroup v2 per container (VM mode): the spec's memory and pids limits, and how many of its
//! processes the kernel's OOM killer took (for TaskOOM and `OOMKilled`).
//!
//! The guest runs one sandbox, so the container cgroups sit right under the root
//! (`/sys/fs/cgroup/<container id>`). In host-process mode there are none: the host's cgroup
//! tree is not PID 1's to reorganise.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use oci_spec::runtime::LinuxResources;

const ROOT: &str = "/sys/fs/cgroup";

static AVAILABLE: OnceLock<bool> = OnceLock::new();

/// Mounts cgroup2 and delegates memory, pids and cpu to child cgroups. Failure is logged and
/// leaves containers without limits.
pub fn setup() {
    let ok = (|| -> Result<(), String> {
        let root = Path::new(ROOT);
        std::fs::create_dir_all(root).map_err(|e| format!("{ROOT}: {e}"))?;
        if !root.join("cgroup.controllers").exists() {
            nix::mount::mount(
                Some("cgroup2"),
                root,
                Some("cgroup2"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(|e| format!("mounting cgroup2 on {ROOT}: {e}"))?;
        }
        std::fs::write(root.join("cgroup.subtree_control"), "+memory +pids +cpu")
            .map_err(|e| format!("enabling controllers: {e}"))
    })();
    if let Err(e) = &ok {
        tracing::warn!("no cgroups for containers: {e}");
    }
    let _ = AVAILABLE.set(ok.is_ok());
}

pub struct Cgroup {
    dir: PathBuf,
}

impl Cgroup {
    /// The container's cgroup with the spec's limits, or `None` without cgroups.
    pub fn create(id: &str, resources: Option<&LinuxResources>) -> Result<Option<Cgroup>, String> {
        if !AVAILABLE.get().copied().unwrap_or(false) {
            return Ok(None);
        }
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(format!("container id {id:?} cannot name a cgroup"));
        }
        let dir = Path::new(ROOT).join(id);
        std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cg = Cgroup { dir };
        let memory = resources
            .and_then(|r| r.memory().as_ref())
            .and_then(|m| m.limit())
            .filter(|l| *l > 0);
        let pids = resources
            .and_then(|r| r.pids().as_ref())
            .map(|p| p.limit())
            .filter(|l| *l > 0);
        if let Some(m) = memory {
            cg.write("memory.max", &m.to_string())?;
            // No swap in the guest; where accounting exists, none for the container either.
            let _ = cg.write("memory.swap.max", "0");
        }
        if let Some(p) = pids {
            cg.write("pids.max", &p.to_string())?;
        }
        Ok(Some(cg))
    }

    fn write(&self, file: &str, value: &str) -> Result<(), String> {
        std::fs::write(self.dir.join(file), value)
            .map_err(|e| format!("{}/{file} = {value}: {e}", self.dir.display()))
    }

    /// `cgroup.procs`, opened for the child to write "0" into (joining it before its exec).
    pub fn procs(&self) -> std::io::Result<OwnedFd> {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.join("cgroup.procs"))?;
        Ok(OwnedFd::from(f))
    }

    /// Processes of this cgroup the OOM killer took so far.
    pub fn oom_kills(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("memory.events"))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Empty by now (the container's processes were killed and reaped), else EBUSY.
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            tracing::debug!("removing {}: {e}", self.dir.display());
        }
    }
}
