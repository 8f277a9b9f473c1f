//! An OCI image layout on disk, read as untrusted input: blobs opened beneath the layout
//! without following symlinks, every document size-capped and checked against its
//! descriptor's digest and size before it is parsed.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType, Os};

use crate::digest::{sha256_hex, Hashing};
use crate::Limits;

pub(crate) struct Layout {
    dir: OwnedFd,
}

/// What a descriptor points at, as far as choosing a manifest goes.
pub(crate) enum Doc {
    Index(Box<ImageIndex>),
    Manifest(Box<ImageManifest>),
}

impl Layout {
    pub(crate) fn open(path: &Path) -> Result<Layout, String> {
        let dir = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("opening the layout: {e}"))?;
        Ok(Layout { dir })
    }

    /// A file of the layout, beneath it and through no symlink (a layout handed to Box may
    /// come from anyone; `blobs/sha256/x -> /etc/shadow` must not be read).
    fn open_file(&self, rel: &str) -> io::Result<File> {
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
        let fd = openat2(self.dir.as_fd(), rel, how).map_err(io::Error::from)?;
        let f = File::from(fd);
        if !f.metadata()?.is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(f)
    }

    pub(crate) fn index(&self, limits: &Limits) -> Result<ImageIndex, String> {
        let f = self
            .open_file("index.json")
            .map_err(|e| format!("index.json: {e}"))?;
        let mut data = Vec::new();
        let mut r = Hashing::new(f, limits.max_json);
        r.read_to_end(&mut data).map_err(|e| {
            if r.over_limit() {
                format!("index.json is larger than {} bytes", limits.max_json)
            } else {
                format!("index.json: {e}")
            }
        })?;
        serde_json::from_slice::<ImageIndex>(&data)
            .map_err(|e| format!("index.json is not a valid OCI image index: {e}"))
    }

    /// The blob a descriptor names, opened (not yet verified).
    pub(crate) fn blob(&self, desc: &Descriptor) -> Result<File, String> {
        let hex = sha256_hex(desc.digest())?;
        self.open_file(&format!("blobs/sha256/{hex}"))
            .map_err(|e| format!("blob {}: {e}", desc.digest()))
    }

    /// Reads a whole blob, no larger than `cap`, checked against its descriptor.
    pub(crate) fn read_blob(&self, desc: &Descriptor, cap: u64) -> Result<Vec<u8>, String> {
        if desc.size() > cap {
            return Err(format!(
                "blob {} declares {} bytes, more than the {cap} allowed for it",
                desc.digest(),
                desc.size()
            ));
        }
        let mut r = Hashing::new(self.blob(desc)?, desc.size());
        let mut data = Vec::new();
        r.read_to_end(&mut data).map_err(|e| {
            if r.over_limit() {
                size_mismatch(desc, "more")
            } else {
                format!("blob {}: {e}", desc.digest())
            }
        })?;
        let (hex, n) = r
            .finish()
            .map_err(|e| format!("blob {}: {e}", desc.digest()))?;
        check(desc, &hex, n)?;
        Ok(data)
    }

    /// Streams a blob through its digest check without keeping it.
    pub(crate) fn verify_blob(&self, desc: &Descriptor) -> Result<(), String> {
        let mut r = Hashing::new(self.blob(desc)?, desc.size());
        if let Err(e) = io::copy(&mut r, &mut io::sink()) {
            return Err(if r.over_limit() {
                size_mismatch(desc, "more")
            } else {
                format!("blob {}: {e}", desc.digest())
            });
        }
        let (hex, n) = r
            .finish()
            .map_err(|e| format!("blob {}: {e}", desc.digest()))?;
        check(desc, &hex, n)
    }

    /// The index or manifest a descriptor points at.
    pub(crate) fn doc(&self, desc: &Descriptor, limits: &Limits) -> Result<Doc, String> {
        let data = self.read_blob(desc, limits.max_json)?;
        let what = kind(desc.media_type(), &data).ok_or_else(|| {
            format!(
                "blob {} ({}) is neither an image index nor a manifest",
                desc.digest(),
                desc.media_type()
            )
        })?;
        match what {
            Kind::Index => serde_json::from_slice::<ImageIndex>(&data)
                .map(|i| Doc::Index(Box::new(i)))
                .map_err(|e| format!("blob {} is not a valid image index: {e}", desc.digest())),
            Kind::Manifest => serde_json::from_slice::<ImageManifest>(&data)
                .map(|m| Doc::Manifest(Box::new(m)))
                .map_err(|e| format!("blob {} is not a valid image manifest: {e}", desc.digest())),
        }
    }
}

fn size_mismatch(desc: &Descriptor, how: &str) -> String {
    format!(
        "blob {} holds {how} than the {} bytes its descriptor says",
        desc.digest(),
        desc.size()
    )
}

pub(crate) fn check(desc: &Descriptor, hex: &str, n: u64) -> Result<(), String> {
    if n != desc.size() {
        return Err(format!(
            "blob {} is {n} bytes, its descriptor says {}",
            desc.digest(),
            desc.size()
        ));
    }
    if desc.digest().digest() != hex {
        return Err(format!(
            "blob {} does not match its digest (its content is sha256:{hex})",
            desc.digest()
        ));
    }
    Ok(())
}

enum Kind {
    Index,
    Manifest,
}

const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

fn kind(media_type: &MediaType, data: &[u8]) -> Option<Kind> {
    match media_type {
        MediaType::ImageIndex => return Some(Kind::Index),
        MediaType::ImageManifest => return Some(Kind::Manifest),
        MediaType::Other(t) if t == DOCKER_LIST => return Some(Kind::Index),
        MediaType::Other(t) if t == DOCKER_MANIFEST => return Some(Kind::Manifest),
        _ => {}
    }
    // Descriptors in index.json often leave the type generic: the document says.
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    if v.get("manifests").is_some() {
        Some(Kind::Index)
    } else if v.get("layers").is_some() || v.get("config").is_some() {
        Some(Kind::Manifest)
    } else {
        None
    }
}

/// The one descriptor of `descs` for linux/amd64: one whose platform says so, else one with
/// no platform (single-platform layouts leave it out). Attestations (`unknown/unknown`) and
/// other platforms are never taken.
pub(crate) fn choose_platform(descs: &[Descriptor]) -> Result<&Descriptor, String> {
    if descs.is_empty() {
        return Err("the image index lists no manifest".into());
    }
    let amd64 = |d: &&Descriptor| {
        d.platform()
            .as_ref()
            .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == Arch::Amd64)
    };
    if let Some(d) = descs.iter().find(amd64) {
        return Ok(d);
    }
    if let Some(d) = descs.iter().find(|d| d.platform().is_none()) {
        return Ok(d);
    }
    let offered: Vec<String> = descs
        .iter()
        .filter_map(|d| d.platform().as_ref())
        .map(|p| format!("{}/{}", p.os(), p.architecture()))
        .collect();
    Err(format!(
        "no linux/amd64 image in the index (it offers {})",
        offered.join(", ")
    ))
}
