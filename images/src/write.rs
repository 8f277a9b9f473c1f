//! Writing images and cache entries: OCI image layouts (the test image of `cargo xtask
//! images`, and the hostile images the tests craft), and the build-aside-then-rename every
//! cache entry goes through.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::digest::sha256_digest;

pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Builds `dest` by filling a fresh temporary sibling, then renaming it into place; on
/// failure the sibling is removed and `dest` is left as it was.
pub fn build_dir(
    dest: &Path,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<(), String> {
    let parent = dest.parent().ok_or("a cache entry needs a parent")?;
    std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    let tmp = temp_sibling(dest);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let r = fill(&tmp).and_then(|_| {
        std::fs::rename(&tmp, dest).or_else(|e| {
            // Another process may have won the race to build the same entry.
            if dest.exists() {
                Ok(())
            } else {
                Err(format!("{}: {e}", dest.display()))
            }
        })
    });
    if tmp.exists() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
}

/// `.tmp-<pid>-<nanos>-<name>` beside `dest`: never a name another build uses.
pub fn temp_sibling(dest: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    dest.with_file_name(format!(
        ".tmp-{}-{nanos}-{}",
        std::process::id(),
        dest.file_name().unwrap_or_default().to_string_lossy()
    ))
}

/// gzip of `data`. flate2 writes mtime 0 and no file name: the bytes depend on `data` alone.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(data).expect("writing to memory");
    gz.finish().expect("writing to memory")
}

/// A descriptor of `blob` as JSON.
pub fn descriptor(media_type: &str, blob: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256_digest(blob), "size": blob.len() })
}

/// An OCI image layout being written: blobs by digest, then the index.
pub struct LayoutWriter {
    dir: PathBuf,
}

impl LayoutWriter {
    /// Creates `dir` (which may exist) with its `oci-layout` and `blobs/sha256/`.
    pub fn create(dir: &Path) -> std::io::Result<LayoutWriter> {
        std::fs::create_dir_all(dir.join("blobs/sha256"))?;
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        Ok(LayoutWriter { dir: dir.into() })
    }

    /// Stores `blob` under its digest and returns its descriptor.
    pub fn blob(&self, media_type: &str, blob: &[u8]) -> std::io::Result<Value> {
        let d = sha256_digest(blob);
        std::fs::write(
            self.dir.join("blobs/sha256").join(&d["sha256:".len()..]),
            blob,
        )?;
        Ok(descriptor(media_type, blob))
    }

    /// A JSON document as a blob.
    pub fn json_blob(&self, media_type: &str, doc: &Value) -> std::io::Result<Value> {
        self.blob(media_type, &serde_json::to_vec(doc)?)
    }

    /// Writes `index.json` listing `manifests`.
    pub fn index(&self, manifests: Vec<Value>) -> std::io::Result<()> {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": INDEX_MEDIA_TYPE,
            "manifests": manifests,
        });
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec_pretty(&index)?,
        )
    }
}

/// What goes into an image's config besides its layers.
#[derive(Debug, Clone)]
pub struct ImageSpec<'a> {
    pub env: &'a [&'a str],
    pub cmd: &'a [&'a str],
    pub working_dir: &'a str,
    pub created_by: &'a str,
}

impl Default for ImageSpec<'_> {
    fn default() -> Self {
        ImageSpec {
            env: &["PATH=/bin"],
            cmd: &["/bin/sh"],
            working_dir: "/",
            created_by: "box-images",
        }
    }
}

/// A manifest (and its config) for `tars`, uncompressed layer tars, stored gzip'd in `w`.
/// Returns the manifest's descriptor, for an index.
pub fn image(w: &LayoutWriter, tars: &[Vec<u8>], spec: &ImageSpec<'_>) -> std::io::Result<Value> {
    let mut layers = Vec::new();
    for t in tars {
        layers.push(w.blob(LAYER_MEDIA_TYPE, &gzip(t))?);
    }
    let diff_ids: Vec<String> = tars.iter().map(|t| sha256_digest(t)).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Env": spec.env, "Cmd": spec.cmd, "WorkingDir": spec.working_dir },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [{ "created_by": spec.created_by }],
    });
    let config = w.json_blob(CONFIG_MEDIA_TYPE, &config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config,
        "layers": layers,
    });
    w.json_blob(MANIFEST_MEDIA_TYPE, &manifest)
}

/// A one-image layout at `dir` with the ref name `ref_name`. Returns the manifest digest.
pub fn write_layout(
    dir: &Path,
    tars: &[Vec<u8>],
    spec: &ImageSpec<'_>,
    ref_name: &str,
) -> std::io::Result<String> {
    let w = LayoutWriter::create(dir)?;
    let mut m = image(&w, tars, spec)?;
    m["annotations"] = json!({ "org.opencontainers.image.ref.name": ref_name });
    w.index(vec![m.clone()])?;
    Ok(m["digest"].as_str().unwrap_or_default().to_string())
}
