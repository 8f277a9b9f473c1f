//! Turns an OCI process spec into a [`Launch`]: every string, path and pointer the forked
//! child needs, prepared and validated before the fork.

use std::ffi::CString;
use std::path::Path;

use oci_spec::runtime::{Mount, Process};

use super::spawn::{
    ChildMount, ChildStdio, DeviceBind, Launch, PidNs, Privileges, RootSetup, MAX_ARGS,
};

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LaunchError {
    #[error("the process spec has no args")]
    NoArgs,
    #[error("{0} contains a NUL byte")]
    Nul(&'static str),
    #[error("more than {MAX_ARGS} args or env entries")]
    TooMany,
    #[error("mount destination {0:?} is not an absolute path inside the container")]
    BadMountDestination(String),
    #[error("preparing mount point {0}: {1}")]
    MountPoint(String, String),
    #[error("unknown capability {0}")]
    Capability(String),
    #[error("masked or read-only path {0:?} is not an absolute path")]
    BadPath(String),
}

/// The spec's capability sets as masks; `None` when it names none (init's are kept).
fn privileges(process: &Process) -> Result<Option<Privileges>, LaunchError> {
    let Some(c) = process.capabilities() else {
        return Ok(None);
    };
    let mask = |set: &Option<oci_spec::runtime::Capabilities>| -> Result<u64, LaunchError> {
        let mut m = 0u64;
        for cap in set.iter().flatten() {
            let name = cap.to_string();
            let name = if name.starts_with("CAP_") {
                name
            } else {
                format!("CAP_{name}")
            };
            let c: caps::Capability = name
                .parse()
                .map_err(|_| LaunchError::Capability(name.clone()))?;
            m |= 1 << c.index();
        }
        Ok(m)
    };
    Ok(Some(Privileges {
        bounding: mask(c.bounding())?,
        effective: mask(c.effective())?,
        permitted: mask(c.permitted())?,
        inheritable: mask(c.inheritable())?,
        ambient: mask(c.ambient())?,
        no_new_privs: process.no_new_privileges().unwrap_or(false),
    }))
}

fn cstr(s: &str, what: &'static str) -> Result<CString, LaunchError> {
    CString::new(s).map_err(|_| LaunchError::Nul(what))
}

/// The paths `execvp` would try for `arg0`, resolved against the process's own PATH.
pub fn exe_candidates(arg0: &str, env: &[String]) -> Vec<String> {
    if arg0.contains('/') {
        return vec![arg0.to_string()];
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| if dir.is_empty() { "." } else { dir })
        .map(|dir| format!("{}/{arg0}", dir.trim_end_matches('/')))
        .collect()
}

pub fn build(process: &Process, root: RootSetup, stdio: ChildStdio) -> Result<Launch, LaunchError> {
    let args = process.args().clone().unwrap_or_default();
    let arg0 = args.first().ok_or(LaunchError::NoArgs)?;
    let mut env = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if args.len() > MAX_ARGS || env.len() > MAX_ARGS {
        return Err(LaunchError::TooMany);
    }
    let exe_candidates = exe_candidates(arg0, &env)
        .iter()
        .map(|p| cstr(p, "the executable path"))
        .collect::<Result<_, _>>()?;
    let user = process.user();
    Ok(Launch {
        exe_candidates,
        argv: args
            .iter()
            .map(|a| cstr(a, "an argument"))
            .collect::<Result<_, _>>()?,
        envp: env
            .iter()
            .map(|e| cstr(e, "an environment entry"))
            .collect::<Result<_, _>>()?,
        cwd: cstr(&process.cwd().to_string_lossy(), "the working directory")?,
        uid: user.uid(),
        gid: user.gid(),
        additional_gids: user.additional_gids().clone().unwrap_or_default(),
        privileges: privileges(process)?,
        cgroup_procs: None,
        pid_ns: PidNs::Inherit,
        seccomp: Vec::new(),
        root,
        stdio,
    })
}

/// The OCI runtime spec's default devices, bound from init's own `/dev`.
const DEFAULT_DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// A new root at `rootfs` with the spec's mounts, the default devices, and the spec's masked
/// and read-only paths.
pub fn new_root(
    rootfs: &Path,
    mounts: &[Mount],
    masked: &[String],
    readonly: &[String],
) -> Result<RootSetup, LaunchError> {
    let inside = |list: &[String]| -> Result<Vec<CString>, LaunchError> {
        list.iter()
            .map(|p| {
                if !p.starts_with('/') || p.split('/').any(|c| c == "..") {
                    return Err(LaunchError::BadPath(p.clone()));
                }
                cstr(p, "a masked path")
            })
            .collect()
    };
    let path = |p: &Path| cstr(&p.to_string_lossy(), "a rootfs path");
    let dev = rootfs.join("dev");
    let devices = DEFAULT_DEVICES
        .iter()
        .filter(|name| Path::new("/dev").join(name).exists())
        .map(|name| {
            Ok(DeviceBind {
                source: path(&Path::new("/dev").join(name))?,
                target: path(&dev.join(name))?,
            })
        })
        .collect::<Result<_, LaunchError>>()?;
    Ok(RootSetup::NewRoot {
        rootfs: path(rootfs)?,
        mounts: container_mounts(rootfs, mounts)?,
        dev_dir: path(&dev)?,
        devices,
        masked: inside(masked)?,
        readonly: inside(readonly)?,
    })
}

/// OCI mount options split into mount flags and the data string, as runc does.
pub(crate) fn mount_flags(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for o in options {
        let (set, clear) = match o.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "nodev" => (libc::MS_NODEV, 0),
            "noexec" => (libc::MS_NOEXEC, 0),
            "bind" => (libc::MS_BIND, 0),
            "rbind" => (libc::MS_BIND | libc::MS_REC, 0),
            "relatime" => (libc::MS_RELATIME, 0),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => (0, 0),
            other => {
                data.push(other.to_string());
                (0, 0)
            }
        };
        flags = (flags | set) & !clear;
    }
    (flags, data.join(","))
}

/// The container's mounts (proc, tmpfs, bind, ...) under `rootfs`, with mount points created
/// now, before the fork. cgroup and mqueue mounts are skipped: the guest kernel runs one
/// sandbox and Box does not manage cgroups yet.
fn container_mounts(rootfs: &Path, mounts: &[Mount]) -> Result<Vec<ChildMount>, LaunchError> {
    let mut out = Vec::new();
    for m in mounts {
        let typ = m.typ().clone().unwrap_or_default();
        if matches!(typ.as_str(), "cgroup" | "cgroup2" | "mqueue") {
            continue;
        }
        let dest = m.destination().to_string_lossy().to_string();
        let rel = dest.trim_start_matches('/');
        if !dest.starts_with('/') || rel.split('/').any(|c| c == "..") {
            return Err(LaunchError::BadMountDestination(dest));
        }
        let target = rootfs.join(rel);
        let (flags, data) = mount_flags(&m.options().clone().unwrap_or_default());
        let source = m.source().as_ref().map(|s| s.to_string_lossy().to_string());
        let is_file_bind =
            flags & libc::MS_BIND != 0 && source.as_ref().is_some_and(|s| Path::new(s).is_file());
        let made = if is_file_bind {
            target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|_| {
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&target)
                        .map(drop)
                })
        } else {
            std::fs::create_dir_all(&target)
        };
        made.map_err(|e| LaunchError::MountPoint(dest.clone(), e.to_string()))?;
        out.push(ChildMount {
            source: source.map(|s| cstr(&s, "a mount source")).transpose()?,
            target: cstr(&target.to_string_lossy(), "a mount destination")?,
            fstype: (!typ.is_empty() && typ != "bind")
                .then(|| cstr(&typ, "a mount type"))
                .transpose()?,
            flags,
            data: (!data.is_empty())
                .then(|| cstr(&data, "mount options"))
                .transpose()?,
            is_file: is_file_bind,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exe_candidates_follow_path() {
        let env = vec!["PATH=/a:/b/".to_string()];
        assert_eq!(exe_candidates("sh", &env), vec!["/a/sh", "/b/sh"]);
        assert_eq!(exe_candidates("/bin/sh", &env), vec!["/bin/sh"]);
        assert_eq!(
            exe_candidates("sh", &[]).len(),
            DEFAULT_PATH.split(':').count()
        );
    }

    #[test]
    fn mount_options_become_flags_and_data() {
        let (flags, data) = mount_flags(&[
            "nosuid".into(),
            "ro".into(),
            "size=64k".into(),
            "mode=755".into(),
        ]);
        assert_eq!(flags, libc::MS_NOSUID | libc::MS_RDONLY);
        assert_eq!(data, "size=64k,mode=755");
    }

    #[test]
    fn escaping_mount_destinations_are_refused() {
        let m: Mount =
            serde_json::from_str(r#"{"destination":"/../etc","type":"tmpfs","source":"tmpfs"}"#)
                .unwrap();
        assert!(matches!(
            container_mounts(Path::new("/nonexistent"), &[m]),
            Err(LaunchError::BadMountDestination(_))
        ));
    }
}
