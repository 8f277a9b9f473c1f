//! A bundle the host describes instead of writes: inside a VM the host cannot put files in
//! the guest, so Create may carry the OCI spec (in `options`, as containerd packs a spec) and
//! the root filesystem as mounts (`rootfs`), which guest-init applies under the bundle.
//!
//! Mount targets and overlay directories are relative to the bundle; an empty target means
//! `rootfs`. Typical for a VM: the container disk read-only at `lower`, a tmpfs at `rw`, and
//! an overlay at `rootfs` with `lowerdir=lower,upperdir=rw/upper,workdir=rw/work`. A disk
//! attached after boot is named `/dev/disk/by-id/virtio-<serial>` (see `disk`).

use std::path::{Component, Path, PathBuf};

use containerd_shim_protos::api::Mount;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use super::TaskError;
use crate::init::process::launch::mount_flags;

use crate::api::SPEC_TYPE_URL;

fn invalid(msg: String) -> TaskError {
    TaskError::InvalidArgument(msg)
}

/// A path inside the bundle: relative, without `..`.
fn inside(bundle: &Path, rel: &str) -> Result<PathBuf, TaskError> {
    let rel = if rel.is_empty() { "rootfs" } else { rel };
    let p = Path::new(rel);
    if p.components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(invalid(format!(
            "mount path {rel:?} must stay inside the bundle"
        )));
    }
    Ok(bundle.join(p))
}

/// Writes `config.json` from the spec carried in `options`, if any.
pub fn write_spec(bundle: &Path, options: Option<&Any>) -> Result<(), TaskError> {
    let Some(any) = options.filter(|a| !a.value.is_empty()) else {
        return Ok(());
    };
    if !any.type_url.ends_with(SPEC_TYPE_URL) {
        return Err(invalid(format!(
            "create options of type {:?} are not an OCI spec",
            any.type_url
        )));
    }
    let _: Spec = serde_json::from_slice(&any.value)
        .map_err(|e| invalid(format!("OCI spec in options: {e}")))?;
    std::fs::create_dir_all(bundle)
        .map_err(|e| invalid(format!("bundle {}: {e}", bundle.display())))?;
    let tmp = bundle.join(".config.json.tmp");
    std::fs::write(&tmp, &any.value)
        .and_then(|_| std::fs::rename(&tmp, bundle.join("config.json")))
        .map_err(|e| TaskError::Internal(format!("writing {}/config.json: {e}", bundle.display())))
}

/// Applies the rootfs mounts in order; returns the mounted paths, to undo in reverse.
pub fn mount_rootfs(bundle: &Path, mounts: &[Mount]) -> Result<Vec<PathBuf>, TaskError> {
    let mut done = Vec::new();
    for m in mounts {
        match mount_one(bundle, m) {
            Ok(target) => done.push(target),
            Err(e) => {
                unmount_all(&done);
                return Err(e);
            }
        }
    }
    Ok(done)
}

fn mount_one(bundle: &Path, m: &Mount) -> Result<PathBuf, TaskError> {
    let target = inside(bundle, &m.target)?;
    std::fs::create_dir_all(&target)
        .map_err(|e| invalid(format!("mount point {}: {e}", target.display())))?;
    let mut options = Vec::new();
    for o in &m.options {
        // Overlay directories are bundle-relative; the upper and work dirs must exist.
        let rewritten = match o.split_once('=') {
            Some((key @ ("lowerdir" | "upperdir" | "workdir"), dirs)) if m.type_ == "overlay" => {
                let mut abs = Vec::new();
                for d in dirs.split(':') {
                    let p = if d.starts_with('/') {
                        PathBuf::from(d)
                    } else {
                        inside(bundle, d)?
                    };
                    if key != "lowerdir" {
                        std::fs::create_dir_all(&p)
                            .map_err(|e| invalid(format!("{key} {}: {e}", p.display())))?;
                    }
                    abs.push(p.to_string_lossy().into_owned());
                }
                format!("{key}={}", abs.join(":"))
            }
            _ => o.clone(),
        };
        options.push(rewritten);
    }
    let (flags, data) = mount_flags(&options);
    let fstype = (!m.type_.is_empty() && m.type_ != "bind").then_some(m.type_.as_str());
    // A disk attached after boot is named by its serial (see `disk`).
    let resolved = super::disk::resolve(&m.source)?;
    let source = match &resolved {
        Some(dev) => Some(dev.to_str().unwrap_or_default()),
        None => (!m.source.is_empty()).then_some(m.source.as_str()),
    };
    let data = (!data.is_empty()).then_some(data.as_str());
    let flags = MsFlags::from_bits_truncate(flags);
    // A read-only bind needs a second, remounting step.
    let ro_bind = flags.contains(MsFlags::MS_BIND) && flags.contains(MsFlags::MS_RDONLY);
    mount(source, &target, fstype, flags, data)
        .and_then(|_| {
            if ro_bind {
                mount(
                    None::<&str>,
                    &target,
                    None::<&str>,
                    flags | MsFlags::MS_REMOUNT,
                    None::<&str>,
                )
            } else {
                Ok(())
            }
        })
        .map_err(|e| {
            invalid(format!(
                "mounting {} ({}) on {}: {e}",
                m.source,
                m.type_,
                target.display()
            ))
        })?;
    Ok(target)
}

pub fn unmount_all(targets: &[PathBuf]) {
    for t in targets.iter().rev() {
        if let Err(e) = umount2(t, MntFlags::MNT_DETACH) {
            tracing::warn!("unmounting {}: {e}", t.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_bundle() {
        let b = Path::new("/run/b");
        assert_eq!(inside(b, "").unwrap(), Path::new("/run/b/rootfs"));
        assert_eq!(inside(b, "rw/upper").unwrap(), Path::new("/run/b/rw/upper"));
        assert!(inside(b, "../etc").is_err());
        assert!(inside(b, "/etc").is_err());
    }

    #[test]
    fn options_must_be_a_spec() {
        let mut any = Any::new();
        any.type_url = "something/else".into();
        any.value = b"{}".to_vec();
        assert!(write_spec(Path::new("/nonexistent"), Some(&any)).is_err());
        any.type_url = SPEC_TYPE_URL.into();
        any.value = b"not json".to_vec();
        assert!(write_spec(Path::new("/nonexistent"), Some(&any)).is_err());
        assert!(write_spec(Path::new("/nonexistent"), None).is_ok());
    }
}
