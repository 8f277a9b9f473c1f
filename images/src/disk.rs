//! The container disk: an ext4 image of a root filesystem, mounted read-only in the guest
//! under an overlay. One builder for the shim (at run time) and xtask (the test image).

use std::path::Path;
use std::process::Command;

use crate::ImageError;

/// The largest container disk Box makes; also the default bound on an image's unpacked size.
pub const MAX_DISK_BYTES: u64 = 8 << 30;

/// An ext4 image of `rootfs` at `dest`, made with `mke2fs -t ext4 -d`, built aside and
/// renamed into place. `mke2fs` by its own name: minimal hosts (the nested node) carry no
/// `mkfs.ext4` link. Deterministic: fixed UUID and times, so equal trees give equal disks.
pub fn build_ext4(image: &str, rootfs: &Path, dest: &Path) -> Result<(), ImageError> {
    let disk_err = |reason: String| ImageError::Disk {
        image: image.into(),
        reason,
    };
    let (bytes, entries) = tree_size(rootfs).map_err(|e| disk_err(e.to_string()))?;
    // Room for metadata and a little slack; at least 32 MiB.
    let size = ((bytes + bytes / 3 + entries * 4096 + (32 << 20)) >> 20) << 20;
    if size > MAX_DISK_BYTES {
        return Err(disk_err(format!(
            "{} needs a {size}-byte disk, more than the {MAX_DISK_BYTES}-byte limit",
            rootfs.display()
        )));
    }
    let inodes = entries * 2 + 4096;
    let parent = dest.parent().ok_or_else(|| disk_err("no parent".into()))?;
    std::fs::create_dir_all(parent).map_err(|e| disk_err(e.to_string()))?;
    let tmp = crate::write::temp_sibling(dest);
    let f = std::fs::File::create(&tmp).map_err(|e| disk_err(format!("{}: {e}", tmp.display())))?;
    f.set_len(size).map_err(|e| disk_err(e.to_string()))?;
    drop(f);
    let out = Command::new("mke2fs")
        // Read-only in the guest: no journal needed.
        .args(["-t", "ext4", "-q", "-F", "-L", "boxroot", "-U", "clear"])
        .args(["-O", "^has_journal", "-E", "root_owner=0:0", "-N"])
        .arg(inodes.to_string())
        .arg("-d")
        .arg(rootfs)
        .arg(&tmp)
        .env("E2FSPROGS_FAKE_TIME", "1")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(disk_err(format!("running mke2fs (e2fsprogs): {e}")));
        }
    };
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(disk_err(format!(
            "mke2fs failed: {}",
            crate::error::one_line(&String::from_utf8_lossy(&out.stderr))
        )));
    }
    std::fs::rename(&tmp, dest).map_err(|e| disk_err(e.to_string()))
}

/// Bytes of content and number of entries under `root`, symlinks not followed.
fn tree_size(root: &Path) -> std::io::Result<(u64, u64)> {
    let (mut bytes, mut entries) = (0u64, 0u64);
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let m = e.path().symlink_metadata()?;
            entries += 1;
            if m.is_dir() {
                stack.push(e.path());
            } else {
                bytes += m.len();
            }
        }
    }
    Ok((bytes, entries))
}
