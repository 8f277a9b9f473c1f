//! Container images: an OCI image layout (a directory or a tar of one) or a plain root
//! filesystem directory, turned into a root filesystem directory on the host and, for a
//! microVM, an ext4 block image of it.
//!
//! Unpacked layouts and block images are cached under the state root's `images/` by digest
//! (the manifest's for a layout, the tar file's for a tar), built in a temporary directory and
//! renamed into place, so a half-built cache entry is never used.

use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image {0}: no such file or directory")]
    NotFound(String),
    #[error("image {image}: {reason}")]
    Invalid { image: String, reason: String },
    #[error("building the disk image of {image}: {reason}")]
    Disk { image: String, reason: String },
}

/// What the image's config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
}

#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// As the user named it.
    pub reference: String,
    /// `sha256:<hex>` of the manifest or tar; `None` for a plain rootfs directory.
    pub digest: Option<String>,
    pub rootfs: PathBuf,
    pub config: ImageConfig,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
}

#[derive(Deserialize)]
struct Manifest {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    manifests: Vec<Descriptor>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ConfigInner>,
}

#[derive(Deserialize, Default)]
struct ConfigInner {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
}

fn invalid(image: &str, reason: impl std::fmt::Display) -> ImageError {
    ImageError::Invalid {
        image: image.into(),
        reason: reason.to_string(),
    }
}

fn hex(d: impl AsRef<[u8]>) -> String {
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves `image` into a root filesystem directory, unpacking into `cache` if needed.
pub fn resolve(image: &str, cache: &Path) -> Result<ResolvedImage, ImageError> {
    let path = Path::new(image);
    let meta = std::fs::metadata(path).map_err(|_| ImageError::NotFound(image.into()))?;
    if meta.is_file() {
        let digest = sha256_file(path).map_err(|e| invalid(image, e))?;
        let layout = cache.join("layouts").join(&digest);
        if !layout.join("index.json").exists() {
            build_dir(&layout, |tmp| {
                let f = File::open(path)?;
                let mut a = tar::Archive::new(maybe_gunzip(f)?);
                a.unpack(tmp)
            })
            .map_err(|e| invalid(image, format!("unpacking the tar: {e}")))?;
        }
        if !layout.join("index.json").exists() {
            return Err(invalid(
                image,
                "the tar holds no OCI image layout (index.json)",
            ));
        }
        return resolve_layout(image, &layout, cache);
    }
    if path.join("index.json").exists() && path.join("oci-layout").exists() {
        return resolve_layout(image, path, cache);
    }
    if path.join("index.json").exists() || path.join("oci-layout").exists() {
        return Err(invalid(
            image,
            "looks like an OCI layout but lacks oci-layout or index.json",
        ));
    }
    let rootfs = std::fs::canonicalize(path).map_err(|e| invalid(image, e))?;
    if !rootfs.join("bin").exists() && !rootfs.join("usr").exists() {
        return Err(invalid(
            image,
            "neither an OCI image layout nor a root filesystem (no bin/ or usr/)",
        ));
    }
    Ok(ResolvedImage {
        reference: image.into(),
        digest: None,
        rootfs,
        config: ImageConfig::default(),
    })
}

fn blob(layout: &Path, digest: &str) -> Result<PathBuf, String> {
    let (alg, h) = digest
        .split_once(':')
        .ok_or_else(|| format!("bad digest {digest:?}"))?;
    if h.contains('/') || alg.contains('/') {
        return Err(format!("bad digest {digest:?}"));
    }
    let p = layout.join("blobs").join(alg).join(h);
    if !p.exists() {
        return Err(format!("blob {digest} missing"));
    }
    Ok(p)
}

fn read_json<T: for<'de> Deserialize<'de>>(p: &Path) -> Result<T, String> {
    let data = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
    serde_json::from_slice(&data).map_err(|e| format!("{}: {e}", p.display()))
}

fn resolve_layout(image: &str, layout: &Path, cache: &Path) -> Result<ResolvedImage, ImageError> {
    let index: Index = read_json(&layout.join("index.json")).map_err(|e| invalid(image, e))?;
    let mut desc = index
        .manifests
        .into_iter()
        .next()
        .ok_or_else(|| invalid(image, "index.json lists no manifest"))?;
    // Follow nested indexes to the first image manifest.
    let manifest = loop {
        let m: Manifest = read_json(&blob(layout, &desc.digest).map_err(|e| invalid(image, e))?)
            .map_err(|e| invalid(image, e))?;
        let is_index = desc.media_type.contains("index")
            || m.media_type.contains("index")
            || (!m.manifests.is_empty() && m.config.is_none());
        if !is_index {
            break m;
        }
        desc = m
            .manifests
            .into_iter()
            .next()
            .ok_or_else(|| invalid(image, "an image index lists no manifest"))?;
    };
    let config = match &manifest.config {
        Some(c) => {
            let f: ConfigFile = read_json(&blob(layout, &c.digest).map_err(|e| invalid(image, e))?)
                .map_err(|e| invalid(image, e))?;
            let c = f.config.unwrap_or_default();
            ImageConfig {
                env: c.env.unwrap_or_default(),
                entrypoint: c.entrypoint.unwrap_or_default(),
                cmd: c.cmd.unwrap_or_default(),
                working_dir: c.working_dir.unwrap_or_default(),
            }
        }
        None => ImageConfig::default(),
    };
    let digest_hex = desc
        .digest
        .split_once(':')
        .map(|(_, h)| h.to_string())
        .unwrap_or_default();
    let rootfs = cache.join("rootfs").join(&digest_hex);
    if !rootfs.exists() {
        let layers: Vec<PathBuf> = manifest
            .layers
            .iter()
            .map(|l| blob(layout, &l.digest))
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(image, e))?;
        build_dir(&rootfs, |tmp| {
            for l in &layers {
                unpack_layer(l, tmp)?;
            }
            Ok(())
        })
        .map_err(|e| invalid(image, format!("unpacking layers: {e}")))?;
    }
    Ok(ResolvedImage {
        reference: image.into(),
        digest: Some(desc.digest),
        rootfs,
        config,
    })
}

/// Builds `dest` by filling a temporary sibling, then renaming it into place.
fn build_dir(dest: &Path, fill: impl FnOnce(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    let parent = dest.parent().expect("cache paths have a parent");
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        dest.file_name().unwrap_or_default().to_string_lossy()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let r = fill(&tmp).and_then(|_| std::fs::rename(&tmp, dest));
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        // Another process may have won the race to build the same entry.
        if dest.exists() {
            return Ok(());
        }
    }
    r
}

fn sha256_file(p: &Path) -> std::io::Result<String> {
    let mut f = File::open(p)?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex(h.finalize()))
}

/// The file, gunzipped if it starts with the gzip magic.
fn maybe_gunzip(mut f: File) -> std::io::Result<Box<dyn Read>> {
    let mut magic = [0u8; 2];
    let n = f.read(&mut magic)?;
    f.rewind()?;
    if n == 2 && magic == [0x1f, 0x8b] {
        Ok(Box::new(flate2::read::GzDecoder::new(BufReader::new(f))))
    } else {
        Ok(Box::new(BufReader::new(f)))
    }
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Unpacks one layer over `root`, applying OCI whiteouts: `.wh.NAME` deletes NAME from the
/// layers below, `.wh..wh..opq` empties its directory of what the layers below put there.
pub fn unpack_layer(layer: &Path, root: &Path) -> std::io::Result<()> {
    use std::collections::HashSet;
    let mut a = tar::Archive::new(maybe_gunzip(File::open(layer)?)?);
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_unpack_xattrs(false);
    let mut this_layer: HashSet<PathBuf> = HashSet::new();
    for entry in a.entries()? {
        let mut e = entry?;
        let rel: PathBuf = e
            .path()?
            .components()
            .filter(|c| matches!(c, std::path::Component::Normal(_)))
            .collect();
        let Some(fname) = rel.file_name().map(|f| f.to_string_lossy().into_owned()) else {
            continue;
        };
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if fname == ".wh..wh..opq" {
            if let Ok(rd) = std::fs::read_dir(root.join(&parent)) {
                for child in rd.flatten() {
                    let child_rel = parent.join(child.file_name());
                    if !this_layer.contains(&child_rel) {
                        remove_any(&child.path())?;
                    }
                }
            }
            continue;
        }
        if let Some(victim) = fname.strip_prefix(".wh.") {
            remove_any(&root.join(&parent).join(victim))?;
            continue;
        }
        // A file replacing a directory (or the reverse) replaces it whole.
        let target = root.join(&rel);
        if let Ok(m) = std::fs::symlink_metadata(&target) {
            if !(m.is_dir() && e.header().entry_type().is_dir()) {
                remove_any(&target)?;
            }
        }
        e.unpack_in(root)?;
        this_layer.insert(rel);
    }
    Ok(())
}

/// An ext4 image of `rootfs` at `dest`, made with `mke2fs -t ext4 -d` (built aside, then
/// renamed). `mke2fs` by its own name: minimal hosts (the nested node) carry no `mkfs.ext4` link.
pub fn build_ext4(image: &str, rootfs: &Path, dest: &Path) -> Result<(), ImageError> {
    let disk_err = |reason: String| ImageError::Disk {
        image: image.into(),
        reason,
    };
    let (bytes, entries) = tree_size(rootfs).map_err(|e| disk_err(e.to_string()))?;
    // Room for metadata and a little slack; at least 32 MiB.
    let size = ((bytes + bytes / 3 + entries * 4096 + (32 << 20)) >> 20) << 20;
    let inodes = entries * 2 + 4096;
    let parent = dest.parent().expect("disk paths have a parent");
    std::fs::create_dir_all(parent).map_err(|e| disk_err(e.to_string()))?;
    let tmp = parent.join(format!(
        ".tmp-{}-{}",
        std::process::id(),
        dest.file_name().unwrap_or_default().to_string_lossy()
    ));
    let f = File::create(&tmp).map_err(|e| disk_err(format!("{}: {e}", tmp.display())))?;
    f.set_len(size).map_err(|e| disk_err(e.to_string()))?;
    drop(f);
    let out = Command::new("mke2fs")
        // Read-only in the guest: no journal needed.
        .args([
            "-t",
            "ext4",
            "-q",
            "-F",
            "-L",
            "boxroot",
            "-O",
            "^has_journal",
            "-E",
            "root_owner=0:0",
            "-N",
        ])
        .arg(inodes.to_string())
        .arg("-d")
        .arg(rootfs)
        .arg(&tmp)
        .output()
        .map_err(|e| disk_err(format!("running mke2fs (e2fsprogs): {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(disk_err(format!(
            "mke2fs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    std::fs::rename(&tmp, dest).map_err(|e| disk_err(e.to_string()))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("box-image-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn layer(path: &Path, files: &[(&str, Option<&[u8]>)]) {
        let f = File::create(path).unwrap();
        let gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match data {
                Some(d) => {
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    h.set_entry_type(tar::EntryType::Regular);
                    b.append_data(&mut h, name, *d).unwrap();
                }
                None => {
                    h.set_size(0);
                    h.set_mode(0o755);
                    h.set_entry_type(tar::EntryType::Directory);
                    b.append_data(&mut h, name, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn layers_apply_in_order_with_whiteouts() {
        let d = scratch("layers");
        let root = d.join("root");
        std::fs::create_dir_all(&root).unwrap();
        layer(
            &d.join("l1"),
            &[
                ("bin/", None),
                ("bin/a", Some(b"a1")),
                ("bin/b", Some(b"b1")),
                ("etc/", None),
                ("etc/old", Some(b"o")),
            ],
        );
        layer(
            &d.join("l2"),
            &[
                ("bin/.wh.b", Some(b"")),
                ("bin/a", Some(b"a2")),
                ("etc/", None),
                ("etc/.wh..wh..opq", Some(b"")),
                ("etc/new", Some(b"n")),
            ],
        );
        unpack_layer(&d.join("l1"), &root).unwrap();
        unpack_layer(&d.join("l2"), &root).unwrap();
        assert_eq!(std::fs::read(root.join("bin/a")).unwrap(), b"a2");
        assert!(!root.join("bin/b").exists());
        assert!(!root.join("etc/old").exists());
        assert_eq!(std::fs::read(root.join("etc/new")).unwrap(), b"n");
        assert!(!root.join("etc/.wh..wh..opq").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn missing_and_unknown_images_are_named() {
        let d = scratch("missing");
        let e = resolve("/nonexistent/img", &d).unwrap_err();
        assert_eq!(
            e.to_string(),
            "image /nonexistent/img: no such file or directory"
        );
        let e = resolve(d.to_str().unwrap(), &d.join("cache")).unwrap_err();
        assert!(e.to_string().contains("neither an OCI image layout"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
