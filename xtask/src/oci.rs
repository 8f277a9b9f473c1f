//! The test container image: Debian's `busybox-static` as a one-layer OCI image layout, and the
//! same root filesystem as an ext4 block image (what a guest mounts read-only under an overlay).

use anyhow::{bail, Context, Result};
use flate2::write::GzEncoder;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

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

/// `sha256:<hex>`.
pub fn digest(data: &[u8]) -> String {
    let mut hex = String::with_capacity(64);
    for b in Sha256::digest(data) {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("sha256:{hex}")
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    json!({ "mediaType": media_type, "digest": digest(blob), "size": blob.len() })
}

/// Writes an OCI image layout (oci-layout, index.json, blobs/sha256/...) for `rootfs` into
/// `dir`, which must not exist yet. Returns the manifest's digest.
pub fn write_layout(rootfs: &Rootfs, ref_name: &str, dir: &Path) -> Result<String> {
    let tar = rootfs.layer_tar()?;
    // flate2 writes mtime 0 and no file name: the gzip bytes depend on the tar alone.
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar)?;
    let layer = gz.finish()?;
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [digest(&tar)] },
        "history": [{ "created_by": "cargo xtask images (Debian busybox-static)" }],
    }))?;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": descriptor(CONFIG_MEDIA_TYPE, &config),
        "layers": [descriptor(LAYER_MEDIA_TYPE, &layer)],
    }))?;
    let mut mdesc = descriptor(MANIFEST_MEDIA_TYPE, &manifest);
    mdesc["annotations"] = json!({ "org.opencontainers.image.ref.name": ref_name });
    let index = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [mdesc],
    }))?;
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    for blob in [&layer, &config, &manifest] {
        let d = digest(blob);
        fs::write(blobs.join(&d["sha256:".len()..]), blob)?;
    }
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    fs::write(dir.join("index.json"), index)?;
    Ok(digest(&manifest))
}

/// Makes an ext4 image of the directory `root` with `mkfs.ext4 -d` (e2fsprogs), sized for its
/// contents plus headroom. No journal: the guest mounts it read-only.
pub fn make_ext4(root: &Path, out: &Path) -> Result<()> {
    let bytes = du(root)?;
    let mib = (bytes / (1 << 20) + 1) * 2 + 8;
    if out.exists() {
        fs::remove_file(out)?;
    }
    crate::host::run(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-t", "ext4", "-O", "^has_journal"])
            .args(["-L", "box-rootfs", "-U", "clear", "-E", "root_owner=0:0"])
            .arg("-d")
            .arg(root)
            .arg(out)
            .arg(format!("{mib}M"))
            // Fixed timestamps in the superblock and inodes mkfs creates.
            .env("E2FSPROGS_FAKE_TIME", "1"),
    )
    .with_context(|| format!("making the ext4 image {}", out.display()))?;
    Ok(())
}

fn du(p: &Path) -> Result<u64> {
    let m = fs::symlink_metadata(p)?;
    if !m.is_dir() {
        return Ok(m.len());
    }
    let mut n = 4096;
    for e in fs::read_dir(p)? {
        n += du(&e?.path())?;
    }
    Ok(n)
}

/// Follows index → manifest → config and layers as a runtime would, checking every blob
/// against its digest and size, and each layer's diff_id against its decompressed content.
/// Returns the number of manifests checked.
pub fn verify_layout(layout: &Path) -> Result<usize> {
    use std::io::Read;
    let json = |b: &[u8]| -> Result<serde_json::Value> { Ok(serde_json::from_slice(b)?) };
    let blob = |desc: &serde_json::Value| -> Result<Vec<u8>> {
        let d = desc["digest"]
            .as_str()
            .context("descriptor without digest")?;
        let data = read_blob(layout, d)?;
        if desc["size"].as_u64() != Some(data.len() as u64) {
            bail!("{d}: size {} does not match its descriptor", data.len());
        }
        Ok(data)
    };
    let index = json(&fs::read(layout.join("index.json")).context("index.json")?)?;
    let manifests = index["manifests"]
        .as_array()
        .context("index without manifests")?;
    for mdesc in manifests {
        let manifest = json(&blob(mdesc)?)?;
        let config = json(&blob(&manifest["config"])?)?;
        let layers = manifest["layers"]
            .as_array()
            .context("manifest without layers")?;
        let diff_ids = config["rootfs"]["diff_ids"]
            .as_array()
            .context("config without rootfs.diff_ids")?;
        if layers.len() != diff_ids.len() {
            bail!("{} layers but {} diff_ids", layers.len(), diff_ids.len());
        }
        for (ldesc, diff_id) in layers.iter().zip(diff_ids) {
            let mut tar = Vec::new();
            flate2::read::GzDecoder::new(blob(ldesc)?.as_slice()).read_to_end(&mut tar)?;
            if diff_id.as_str() != Some(digest(&tar).as_str()) {
                bail!(
                    "layer {} does not match its diff_id {diff_id}",
                    ldesc["digest"]
                );
            }
        }
    }
    Ok(manifests.len())
}

/// Reads a blob of a layout by its digest, checking that the content matches it.
pub fn read_blob(layout: &Path, digest_str: &str) -> Result<Vec<u8>> {
    let hex = digest_str
        .strip_prefix("sha256:")
        .with_context(|| format!("{digest_str}: not a sha256 digest"))?;
    let path: PathBuf = layout.join("blobs/sha256").join(hex);
    let data = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    if digest(&data) != digest_str {
        bail!("{} does not match its digest", path.display());
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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

    #[test]
    fn sha256_digest_of_known_input() {
        assert_eq!(
            digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Follows index → manifest → config and layer the way a runtime does, checking every
    /// digest, size and the diff_id against the decompressed layer.
    #[test]
    fn layout_digests_are_consistent() {
        let dir = tmpdir("layout");
        let mdigest = write_layout(&rootfs(), "busybox", &dir).unwrap();
        let layout: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("oci-layout")).unwrap()).unwrap();
        assert_eq!(layout["imageLayoutVersion"], "1.0.0");
        let index: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], mdigest.as_str());
        assert_eq!(
            m["annotations"]["org.opencontainers.image.ref.name"],
            "busybox"
        );
        let manifest_bytes = read_blob(&dir, &mdigest).unwrap();
        assert_eq!(m["size"], manifest_bytes.len());
        let manifest: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
        assert_eq!(manifest["mediaType"], MANIFEST_MEDIA_TYPE);
        let cdesc = &manifest["config"];
        let config_bytes = read_blob(&dir, cdesc["digest"].as_str().unwrap()).unwrap();
        assert_eq!(cdesc["size"], config_bytes.len());
        let config: serde_json::Value = serde_json::from_slice(&config_bytes).unwrap();
        let ldesc = &manifest["layers"][0];
        assert_eq!(ldesc["mediaType"], LAYER_MEDIA_TYPE);
        let layer = read_blob(&dir, ldesc["digest"].as_str().unwrap()).unwrap();
        assert_eq!(ldesc["size"], layer.len());
        let mut tar = Vec::new();
        flate2::read::GzDecoder::new(layer.as_slice())
            .read_to_end(&mut tar)
            .unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], digest(&tar).as_str());
        assert_eq!(verify_layout(&dir).unwrap(), 1);
        // Exactly three blobs: nothing stale or extra.
        assert_eq!(fs::read_dir(dir.join("blobs/sha256")).unwrap().count(), 3);

        // The layer holds busybox and its applet links.
        let mut ar = tar::Archive::new(tar.as_slice());
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
        let layer = dir
            .join("blobs/sha256")
            .join(&ldesc["digest"].as_str().unwrap()["sha256:".len()..]);
        fs::write(&layer, b"tampered").unwrap();
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
