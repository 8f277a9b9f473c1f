//! Images as Box runs them: an OCI image layout (a directory, or a tar of one) or a plain
//! root filesystem directory, resolved into a root filesystem directory.
//!
//! Cache (under the directory the caller gives, made 0700):
//! - `layouts/<sha256 of the tar>/`: a tar image's layout, every blob verified as it was
//!   copied out;
//! - `rootfs/<manifest hex>/`: an unpacked image, keyed by the verified manifest digest (the
//!   manifest names every layer by digest, so the key fixes the content).
//!
//! Entries are built in a temporary sibling and renamed into place only once every blob and
//! every layer's diff_id checked out, so a half-built or unverified entry is never found.

mod archive;
mod layout;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use oci_spec::image::{Arch, Descriptor, ImageConfiguration, ImageManifest, MediaType, Os};

use crate::digest::{sha256_hex, Hashing};
use crate::error::invalid;
use crate::unpack::{self, root::Root, LayerError, Usage};
use crate::{ImageError, Limits};
use layout::{choose_platform, Doc, Layout};

/// What the image's config says about running it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// As the user named it.
    pub reference: String,
    /// `sha256:<hex>` of the verified manifest; `None` for a plain rootfs directory.
    pub digest: Option<String>,
    pub rootfs: PathBuf,
    pub config: ImageConfig,
    /// Entries the image policy did not make (device nodes), by path.
    pub skipped: Vec<String>,
}

/// [`resolve_with`] under the default [`Limits`].
pub fn resolve(image: &str, cache: &Path) -> Result<ResolvedImage, ImageError> {
    resolve_with(image, cache, &Limits::default())
}

/// Resolves `image` into a root filesystem directory, unpacking into `cache` if needed.
pub fn resolve_with(
    image: &str,
    cache: &Path,
    limits: &Limits,
) -> Result<ResolvedImage, ImageError> {
    let path = Path::new(image);
    let meta = std::fs::metadata(path).map_err(|_| ImageError::NotFound(image.into()))?;
    prepare_cache(cache).map_err(|e| invalid(image, format!("the image cache: {e}")))?;
    if meta.is_file() {
        let layout = archive::import(path, cache, limits).map_err(|e| invalid(image, e))?;
        return resolve_layout(image, &layout, cache, limits);
    }
    if path.join("index.json").exists() && path.join("oci-layout").exists() {
        return resolve_layout(image, path, cache, limits);
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
        skipped: Vec::new(),
    })
}

/// The cache holds setuid files of images as root: no other host user may reach it.
fn prepare_cache(cache: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(cache)?;
    std::fs::set_permissions(cache, std::fs::Permissions::from_mode(0o700))
}

/// The manifest for linux/amd64, following nested indexes to a bounded depth.
fn select_manifest(
    layout: &Layout,
    limits: &Limits,
) -> Result<(Descriptor, ImageManifest), String> {
    let mut descs = layout.index(limits)?.manifests().clone();
    for _ in 0..=limits.max_index_depth {
        let desc = choose_platform(&descs)?.clone();
        match layout.doc(&desc, limits)? {
            Doc::Manifest(m) => return Ok((desc, *m)),
            Doc::Index(i) => descs = i.manifests().clone(),
        }
    }
    Err(format!(
        "image indexes nest deeper than {} levels",
        limits.max_index_depth
    ))
}

/// Config and layers of the chosen manifest, every one checked before anything is unpacked.
fn read_image(
    layout: &Layout,
    manifest: &ImageManifest,
    limits: &Limits,
) -> Result<(ImageConfiguration, Vec<String>), String> {
    let cdesc = manifest.config();
    let data = layout.read_blob(cdesc, limits.max_json)?;
    let config = serde_json::from_slice::<ImageConfiguration>(&data)
        .map_err(|e| format!("config {} is not a valid image config: {e}", cdesc.digest()))?;
    if *config.os() != Os::Linux || *config.architecture() != Arch::Amd64 {
        return Err(format!(
            "the image is for {}/{}; Box runs linux/amd64",
            config.os(),
            config.architecture()
        ));
    }
    let layers = manifest.layers();
    if layers.len() > limits.max_layers {
        return Err(format!(
            "{} layers, more than the limit of {}",
            layers.len(),
            limits.max_layers
        ));
    }
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != layers.len() {
        return Err(format!(
            "the manifest has {} layers but the config {} diff_ids",
            layers.len(),
            diff_ids.len()
        ));
    }
    let mut diff_hex = Vec::new();
    for (l, d) in layers.iter().zip(diff_ids) {
        compression(l)?;
        layout.verify_blob(l)?;
        let d = crate::digest::parse(d).map_err(|e| format!("diff_id: {e}"))?;
        diff_hex.push(sha256_hex(&d)?.to_string());
    }
    Ok((config, diff_hex))
}

fn config_of(c: &ImageConfiguration) -> ImageConfig {
    let Some(c) = c.config() else {
        return ImageConfig::default();
    };
    ImageConfig {
        env: c.env().clone().unwrap_or_default(),
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        working_dir: c.working_dir().clone().unwrap_or_default(),
        user: c.user().clone().unwrap_or_default(),
    }
}

fn resolve_layout(
    image: &str,
    dir: &Path,
    cache: &Path,
    limits: &Limits,
) -> Result<ResolvedImage, ImageError> {
    let layout = Layout::open(dir).map_err(|e| invalid(image, e))?;
    let (desc, manifest) = select_manifest(&layout, limits).map_err(|e| invalid(image, e))?;
    let (config, diff_ids) =
        read_image(&layout, &manifest, limits).map_err(|e| invalid(image, e))?;
    let hex = sha256_hex(desc.digest())
        .map_err(|e| invalid(image, e))?
        .to_string();
    let rootfs = cache.join("rootfs").join(&hex);
    let mut skipped = Vec::new();
    if !rootfs.exists() {
        crate::write::build_dir(&rootfs, |tmp| {
            let root = Root::open(tmp).map_err(|e| format!("opening {}: {e}", tmp.display()))?;
            let mut usage = Usage::default();
            for (l, diff) in manifest.layers().iter().zip(&diff_ids) {
                apply(&layout, &root, l, diff, limits, &mut usage)?;
            }
            skipped = usage.skipped_devices;
            Ok(())
        })
        .map_err(|e| invalid(image, e))?;
    }
    Ok(ResolvedImage {
        reference: image.into(),
        digest: Some(desc.digest().to_string()),
        rootfs,
        config: config_of(&config),
        skipped,
    })
}

#[derive(Clone, Copy)]
enum Compression {
    None,
    Gzip,
}

fn compression(l: &Descriptor) -> Result<Compression, String> {
    let t = l.media_type().to_string();
    if t.ends_with("zstd") {
        return Err(format!(
            "layer {}: zstd-compressed layers are not supported",
            l.digest()
        ));
    }
    match l.media_type() {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Ok(Compression::None),
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
            Ok(Compression::Gzip)
        }
        _ if t == "application/vnd.docker.image.rootfs.diff.tar.gzip"
            || t == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" =>
        {
            Ok(Compression::Gzip)
        }
        _ if t == "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
        _ => Err(format!("layer {}: unknown layer type {t}", l.digest())),
    }
}

/// Applies one layer, hashing both the blob (again: the file may have changed since it was
/// verified) and its uncompressed stream (the diff_id) as it goes.
fn apply(
    layout: &Layout,
    root: &Root,
    l: &Descriptor,
    diff_id: &str,
    limits: &Limits,
    usage: &mut Usage,
) -> Result<(), String> {
    let name = l.digest();
    let mut blob = BufReader::new(Hashing::new(layout.blob(l)?, l.size()));
    let gz = matches!(compression(l)?, Compression::Gzip);
    let is_gzip = blob
        .fill_buf()
        .map(|b| b.starts_with(&[0x1f, 0x8b]))
        .map_err(|e| format!("layer {name}: {e}"))?;
    if gz && !is_gzip {
        return Err(format!("layer {name}: declared gzip, but is not gzip data"));
    }
    // Tar headers and padding on top of the content: a bound on the decompressed stream, so
    // a bomb of empty entries ends too.
    let stream_limit = limits
        .max_bytes
        .saturating_add(limits.max_entries.saturating_mul(2048));
    let decoder: Box<dyn Read + '_> = if is_gzip {
        Box::new(flate2::bufread::MultiGzDecoder::new(&mut blob))
    } else {
        Box::new(&mut blob)
    };
    let mut stream = Hashing::new(decoder, stream_limit);
    let r = unpack::apply_layer(root, &mut stream, limits, usage);
    let (over, decode_error) = (stream.over_limit(), stream.inner_error.clone());
    let explain = |e: String| -> String {
        if over {
            format!("layer {name}: decompresses to more than {stream_limit} bytes")
        } else if let Some(d) = &decode_error {
            if is_gzip {
                format!("layer {name}: corrupt gzip data ({d})")
            } else {
                format!("layer {name}: unreadable ({d})")
            }
        } else {
            e
        }
    };
    match r {
        Ok(()) => {}
        Err(LayerError::Read(e)) => {
            return Err(explain(format!(
                "layer {name}: not a valid tar archive ({e})"
            )))
        }
        Err(e) => return Err(explain(format!("layer {name}: {e}"))),
    }
    let (diff, _) = stream
        .finish()
        .map_err(|e| explain(format!("layer {name}: {e}")))?;
    let mut inner = blob.into_inner();
    std::io::copy(&mut inner, &mut std::io::sink()).map_err(|e| format!("layer {name}: {e}"))?;
    let (hex, n) = inner.finish().map_err(|e| format!("layer {name}: {e}"))?;
    layout::check(l, &hex, n)?;
    if diff != diff_id {
        return Err(format!(
            "layer {name}: its content is sha256:{diff}, not the diff_id sha256:{diff_id} the config names"
        ));
    }
    Ok(())
}

/// Follows index → manifest → config and layers as [`resolve`] does, checking every blob
/// against its digest and size and each layer's diff_id, without keeping anything. Returns
/// the verified manifest digest.
pub fn verify_layout(dir: &Path) -> Result<String, ImageError> {
    let image = dir.display().to_string();
    let limits = Limits::default();
    let layout = Layout::open(dir).map_err(|e| invalid(&image, e))?;
    let (desc, manifest) = select_manifest(&layout, &limits).map_err(|e| invalid(&image, e))?;
    let (_, diff_ids) = read_image(&layout, &manifest, &limits).map_err(|e| invalid(&image, e))?;
    for (l, diff) in manifest.layers().iter().zip(&diff_ids) {
        let mut r = BufReader::new(layout.blob(l).map_err(|e| invalid(&image, e))?);
        let gz = r
            .fill_buf()
            .map(|b| b.starts_with(&[0x1f, 0x8b]))
            .unwrap_or(false);
        let decoder: Box<dyn Read> = if gz {
            Box::new(flate2::bufread::MultiGzDecoder::new(r))
        } else {
            Box::new(r)
        };
        let (hex, _) = Hashing::new(decoder, u64::MAX)
            .finish()
            .map_err(|e| invalid(&image, format!("layer {}: {e}", l.digest())))?;
        if &hex != diff {
            return Err(invalid(
                &image,
                format!("layer {} does not match its diff_id", l.digest()),
            ));
        }
    }
    Ok(desc.digest().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_unknown_images_are_named() {
        let d = std::env::temp_dir().join(format!("box-resolve-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let e = resolve("/nonexistent/img", &d).unwrap_err();
        assert_eq!(
            e.to_string(),
            "image /nonexistent/img: no such file or directory"
        );
        let e = resolve(d.to_str().unwrap(), &d.join("cache")).unwrap_err();
        assert!(e.to_string().contains("neither an OCI image layout"), "{e}");
        let f = d.join("not-a-tar");
        std::fs::write(&f, b"hello").unwrap();
        let e = resolve(f.to_str().unwrap(), &d.join("cache")).unwrap_err();
        assert!(e.to_string().contains("not a valid tar archive"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
