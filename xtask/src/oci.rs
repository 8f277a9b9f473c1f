//! The test container image: Debian's `busybox-static` as a one-layer OCI image layout, and the
//! same root filesystem as an ext4 block image (what a guest mounts read-only under an overlay).
//! Layouts are written and checked, and disks made, by `box-images`, as the shim does.

use anyhow::{Context, Result};
use std::fs;
use std::path::Path;

/// A root filesystem: busybox plus one symlink per applet, and the empty mount points a
/// container runtime expects.
pub struct Rootfs {
    pub busybox: Vec<u8>,
    /// Applet names, each linked as `/bin/<name>` → `busybox`.
    pub applets: Vec<String>,
}

const ROOT_DIRS: &[&str] = &["bin", "dev", "etc", "proc", "root", "sys", "tmp"];

impl Rootfs {
    /// The uncompressed layer: a tar with fixed owners and times, so equal inputs give equal
    /// digests.
    pub fn layer_tar(&self) -> Result<Vec<u8>> {
        let mut b = tar::Builder::new(Vec::new());
        let header = |kind: tar::EntryType, mode: u32, size: u64| {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(size);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            h
        };
        for d in ROOT_DIRS {
            let mode = if *d == "tmp" { 0o1777 } else { 0o755 };
            let mut h = header(tar::EntryType::Directory, mode, 0);
            b.append_data(&mut h, format!("{d}/"), std::io::empty())?;
        }
        let mut h = header(tar::EntryType::Regular, 0o755, self.busybox.len() as u64);
        b.append_data(&mut h, "bin/busybox", self.busybox.as_slice())?;
        for a in &self.applets {
            let mut h = header(tar::EntryType::Symlink, 0o777, 0);
            b.append_link(&mut h, format!("bin/{a}"), "busybox")?;
        }
        Ok(b.into_inner()?)
    }

    /// The same tree as real files under `dir` (for `mkfs.ext4 -d`).
    pub fn stage(&self, dir: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for d in ROOT_DIRS {
            fs::create_dir_all(dir.join(d))?;
        }
        fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777))?;
        let bb = dir.join("bin/busybox");
        fs::write(&bb, &self.busybox)?;
        fs::set_permissions(&bb, fs::Permissions::from_mode(0o755))?;
        for a in &self.applets {
            std::os::unix::fs::symlink("busybox", dir.join("bin").join(a))?;
        }
        Ok(())
    }
}

/// Writes an OCI image layout (oci-layout, index.json, blobs/sha256/...) for `rootfs` into
/// `dir`, which must not exist yet. Returns the manifest's digest.
pub fn write_layout(rootfs: &Rootfs, ref_name: &str, dir: &Path) -> Result<String> {
    let spec = box_images::write::ImageSpec {
        created_by: "cargo xtask images (Debian busybox-static)",
        ..Default::default()
    };
    Ok(box_images::write::write_layout(
        dir,
        &[rootfs.layer_tar()?],
        &spec,
        ref_name,
    )?)
}

/// Follows the layout as the shim does, checking every digest, size and diff_id.
pub fn verify_layout(layout: &Path) -> Result<String> {
    Ok(box_images::verify_layout(layout)?)
}

/// The ext4 image of `root`, made by the shim's own disk builder.
pub fn make_ext4(root: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        fs::remove_file(out)?;
    }
    box_images::disk::build_ext4("the test image", root, out)
        .with_context(|| format!("making the ext4 image {}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::path::PathBuf;

    fn rootfs() -> Rootfs {
        Rootfs {
            busybox: b"\x7fELF pretend busybox".to_vec(),
            applets: vec!["sh".into(), "ls".into()],
        }
    }

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("box-oci-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    /// The layout checks out as the shim reads it, and its layer holds busybox and its links.
    #[test]
    fn layout_is_verified_and_holds_busybox() {
        let dir = tmpdir("layout");
        let mdigest = write_layout(&rootfs(), "busybox", &dir).unwrap();
        assert_eq!(verify_layout(&dir).unwrap(), mdigest);
        // Exactly three blobs: config, manifest, layer.
        assert_eq!(fs::read_dir(dir.join("blobs/sha256")).unwrap().count(), 3);
        let mut ar = tar::Archive::new(std::io::Cursor::new(rootfs().layer_tar().unwrap()));
        let mut names = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = e.path().unwrap().to_string_lossy().into_owned();
            if name == "bin/busybox" {
                let mut body = Vec::new();
                e.read_to_end(&mut body).unwrap();
                assert_eq!(body, rootfs().busybox);
            }
            if name == "bin/sh" {
                assert_eq!(e.link_name().unwrap().unwrap().to_str(), Some("busybox"));
            }
            names.push(name);
        }
        assert!(names.contains(&"bin/busybox".to_string()), "{names:?}");
        assert!(names.contains(&"bin/sh".to_string()), "{names:?}");
        // A blob whose bytes no longer match its name is caught.
        for e in fs::read_dir(dir.join("blobs/sha256")).unwrap() {
            fs::write(e.unwrap().path(), b"tampered").unwrap();
        }
        assert!(verify_layout(&dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn equal_inputs_give_equal_digests() {
        let (a, b) = (tmpdir("a"), tmpdir("b"));
        let da = write_layout(&rootfs(), "x", &a).unwrap();
        let db = write_layout(&rootfs(), "x", &b).unwrap();
        assert_eq!(da, db);
        let mut other = rootfs();
        other.applets.push("cat".into());
        let c = tmpdir("c");
        assert_ne!(write_layout(&other, "x", &c).unwrap(), da);
        for d in [a, b, c] {
            fs::remove_dir_all(d).unwrap();
        }
    }
}
