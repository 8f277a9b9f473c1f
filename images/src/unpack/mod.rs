//! Layers applied to a root filesystem directory as hostile input.
//!
//! Policy (also in `images/README.md`):
//! - every path is resolved inside the root ([`root`]); `..` and absolute names are cleaned
//!   lexically first, as containerd does, so they name places inside the root;
//! - whiteouts (`.wh.NAME`) and opaque whiteouts (`.wh..wh..opq`) remove only what lower
//!   layers of this image put there: never an entry of their own layer, never anything outside
//!   the root; a whiteout naming `.`, `..` or nothing is an error;
//! - hardlinks point only at entries already unpacked in this image (resolved inside the root);
//! - regular files, directories, symlinks, hardlinks and FIFOs are made as the tar says, with
//!   their mode bits (setuid, setgid and sticky kept, as docker keeps them: the image cache is
//!   0700 root's, so no host user can reach a setuid file there) and, when unpacking as root,
//!   their numeric owners; modification times of files and links are kept;
//! - character and block device nodes are **not** made (a device node in a host directory is a
//!   door to the host's devices, and the guest gets its `/dev` from the kernel): each is
//!   skipped and named in a warning, never turned into something else;
//! - extended attributes (file capabilities included) are not applied;
//! - sizes, entry counts and path lengths are bounded by [`Limits`].

pub mod root;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fchmodat, mknodat, utimensat, FchmodatFlags, Mode, SFlag};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, Gid, Uid};

use crate::Limits;
use root::{is_dir, lstat_at, remove_at, RelPath, Root};

/// Why a layer could not be applied. The caller names the image and the layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{path}: {what}: {errno}")]
    Fs {
        path: String,
        what: &'static str,
        errno: Errno,
    },
    #[error("{0}")]
    Bad(String),
    #[error("{0}")]
    Limit(String),
    #[error("reading the layer: {0}")]
    Read(io::Error),
}

fn fs_err<'a>(path: &'a RelPath, what: &'static str) -> impl FnOnce(Errno) -> LayerError + 'a {
    move |errno| LayerError::Fs {
        path: path.to_string(),
        what,
        errno,
    }
}

/// What all layers of one image have used of the [`Limits`] so far, and what was skipped.
#[derive(Debug, Default)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
    /// Device nodes the policy did not make, by path.
    pub skipped_devices: Vec<String>,
}

/// Applies the tar stream `tar` over the directory `root` (which only this image has filled).
pub fn apply_layer<R: Read>(
    root: &Root,
    tar: R,
    limits: &Limits,
    usage: &mut Usage,
) -> Result<(), LayerError> {
    let as_root = nix::unistd::geteuid().is_root();
    let mut archive = tar::Archive::new(tar);
    // Paths this layer made: its own whiteouts must leave them alone.
    let mut this_layer: HashSet<RelPath> = HashSet::new();
    for entry in archive.entries().map_err(LayerError::Read)? {
        let mut e = entry.map_err(LayerError::Read)?;
        usage.entries += 1;
        if usage.entries > limits.max_entries {
            return Err(LayerError::Limit(format!(
                "more than {} entries (the image entry limit)",
                limits.max_entries
            )));
        }
        let raw = e.path_bytes().into_owned();
        if raw.len() > limits.max_path {
            return Err(LayerError::Limit(format!(
                "an entry's path is {} bytes long (the limit is {})",
                raw.len(),
                limits.max_path
            )));
        }
        let rel = RelPath::clean(Path::new(OsStr::from_bytes(&raw)));
        let kind = e.header().entry_type();
        let Some((parent, name)) = rel.split_last() else {
            // The root itself ("./"): its mode and owner, nothing else.
            if kind.is_dir() {
                let fd = root.open_dir(&rel).map_err(fs_err(&rel, "opening"))?;
                set_meta(&fd, &rel, e.header(), as_root)?;
            }
            continue;
        };
        let name = name.to_os_string();
        let name_b = name.as_bytes();
        if let Some(victim) = name_b.strip_prefix(b".wh.") {
            whiteout(root, &rel, &parent, victim, &this_layer)?;
            continue;
        }
        match kind {
            tar::EntryType::XGlobalHeader => continue,
            tar::EntryType::Char | tar::EntryType::Block => {
                tracing::warn!("image policy: device node {rel} not created");
                usage.skipped_devices.push(rel.to_string());
                continue;
            }
            _ => {}
        }
        let pfd = root
            .open_dir_create(&parent)
            .map_err(fs_err(&parent, "making the parent directory"))?;
        // Whatever is there goes, unless a directory meets a directory (they merge).
        if let Some(st) = lstat_at(&pfd, &name).map_err(fs_err(&rel, "looking up"))? {
            if !(kind.is_dir() && is_dir(&st)) {
                remove_at(&pfd, &name).map_err(fs_err(&rel, "replacing"))?;
            }
        }
        match kind {
            tar::EntryType::Directory => {
                match nix::sys::stat::mkdirat(pfd.as_fd(), name.as_os_str(), Mode::S_IRWXU) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(fs_err(&rel, "making the directory")(e)),
                }
                let fd = openat(
                    pfd.as_fd(),
                    name.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(fs_err(&rel, "opening the directory"))?;
                set_meta(&fd, &rel, e.header(), as_root)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let size = e.size();
                let room = limits.max_bytes.saturating_sub(usage.bytes);
                if size > room {
                    return Err(too_big(limits, &rel, size));
                }
                let fd = openat(
                    pfd.as_fd(),
                    name.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::S_IRUSR | Mode::S_IWUSR,
                )
                .map_err(fs_err(&rel, "creating the file"))?;
                let mut file = std::fs::File::from(fd);
                let n =
                    io::copy(&mut (&mut e).take(room + 1), &mut file).map_err(LayerError::Read)?;
                if n > room {
                    return Err(too_big(limits, &rel, n));
                }
                usage.bytes += n;
                let fd = OwnedFd::from(file);
                set_meta(&fd, &rel, e.header(), as_root)?;
                set_times(&pfd, &name, &rel, e.header())?;
            }
            tar::EntryType::Symlink => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::Bad(format!("symlink {rel} has no target")))?
                    .into_owned();
                if target.len() > limits.max_path {
                    return Err(LayerError::Limit(format!(
                        "symlink {rel}: target is {} bytes long (the limit is {})",
                        target.len(),
                        limits.max_path
                    )));
                }
                symlinkat(OsStr::from_bytes(&target), pfd.as_fd(), name.as_os_str())
                    .map_err(fs_err(&rel, "making the symlink"))?;
                set_owner_at(&pfd, &name, &rel, e.header(), as_root)?;
                set_times(&pfd, &name, &rel, e.header())?;
            }
            tar::EntryType::Link => {
                let target = e
                    .link_name_bytes()
                    .ok_or_else(|| LayerError::Bad(format!("hardlink {rel} has no target")))?
                    .into_owned();
                let trel = RelPath::clean(Path::new(OsStr::from_bytes(&target)));
                hardlink(root, &trel, &pfd, &name, &rel)?;
            }
            tar::EntryType::Fifo => {
                mknodat(
                    pfd.as_fd(),
                    name.as_os_str(),
                    SFlag::S_IFIFO,
                    Mode::S_IRUSR | Mode::S_IWUSR,
                    0,
                )
                .map_err(fs_err(&rel, "making the fifo"))?;
                set_owner_at(&pfd, &name, &rel, e.header(), as_root)?;
                // A fifo just made by us in our own directory: no symlink to follow.
                fchmodat(
                    pfd.as_fd(),
                    name.as_os_str(),
                    mode_of(e.header()),
                    FchmodatFlags::FollowSymlink,
                )
                .map_err(fs_err(&rel, "setting the mode"))?;
            }
            other => {
                return Err(LayerError::Bad(format!(
                    "{rel}: unsupported tar entry type {other:?}"
                )))
            }
        }
        this_layer.insert(rel);
    }
    // The rest of the stream (end-of-archive blocks, padding) belongs to the layer's digest.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(LayerError::Read)?;
    Ok(())
}

fn too_big(limits: &Limits, rel: &RelPath, size: u64) -> LayerError {
    LayerError::Limit(format!(
        "{rel} ({size} bytes) would take the image past {} bytes unpacked (the size limit)",
        limits.max_bytes
    ))
}

fn whiteout(
    root: &Root,
    rel: &RelPath,
    parent: &RelPath,
    victim: &[u8],
    this_layer: &HashSet<RelPath>,
) -> Result<(), LayerError> {
    // Nothing below to remove from when the directory is not there (or is not a directory).
    let pfd = match root.open_dir(parent) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Ok(()),
        Err(e) => return Err(fs_err(parent, "opening the whiteout's directory")(e)),
    };
    if victim == b".wh..opq" {
        let names = root::children(&pfd).map_err(fs_err(parent, "listing"))?;
        for child in names {
            if !this_layer.contains(&parent.join(&child)) {
                remove_at(&pfd, &child).map_err(fs_err(parent, "emptying (opaque whiteout)"))?;
            }
        }
        return Ok(());
    }
    if victim.starts_with(b".wh.") {
        // aufs' own metadata (.wh..wh.plnk, .wh..wh.aufs): nothing to apply.
        return Ok(());
    }
    if victim.is_empty() || victim == b"." || victim == b".." {
        return Err(LayerError::Bad(format!(
            "whiteout {rel} names no entry (\"{}\")",
            String::from_utf8_lossy(victim)
        )));
    }
    let victim = OsStr::from_bytes(victim);
    if this_layer.contains(&parent.join(victim)) {
        return Ok(());
    }
    remove_at(&pfd, victim).map_err(fs_err(rel, "applying the whiteout"))
}

fn hardlink(
    root: &Root,
    target: &RelPath,
    pfd: &OwnedFd,
    name: &OsStr,
    rel: &RelPath,
) -> Result<(), LayerError> {
    let missing = || {
        LayerError::Bad(format!(
            "hardlink {rel} points at {target}, which is not in this image"
        ))
    };
    let (tparent, tname) = target.split_last().ok_or_else(missing)?;
    let tfd = match root.open_dir(&tparent) {
        Ok(fd) => fd,
        Err(Errno::ENOENT | Errno::ENOTDIR) => return Err(missing()),
        Err(e) => {
            return Err(fs_err(&tparent, "opening the hardlink target's directory")(
                e,
            ))
        }
    };
    match lstat_at(&tfd, tname).map_err(fs_err(target, "looking up"))? {
        None => return Err(missing()),
        Some(st) if is_dir(&st) => {
            return Err(LayerError::Bad(format!(
                "hardlink {rel} points at the directory {target}"
            )))
        }
        Some(_) => {}
    }
    // No AT_SYMLINK_FOLLOW: a link to a symlink links the symlink, inside the root.
    linkat(tfd.as_fd(), tname, pfd.as_fd(), name, AtFlags::empty())
        .map_err(fs_err(rel, "making the hardlink"))
}

fn mode_of(h: &tar::Header) -> Mode {
    Mode::from_bits_truncate(h.mode().unwrap_or(0o644) & 0o7777)
}

fn ids(h: &tar::Header, rel: &RelPath) -> Result<(Uid, Gid), LayerError> {
    let bad = |_| LayerError::Bad(format!("{rel}: unreadable owner in the tar header"));
    let uid = h.uid().map_err(bad)?;
    let gid = h.gid().map_err(bad)?;
    let uid = u32::try_from(uid)
        .map_err(|_| LayerError::Bad(format!("{rel}: owner uid {uid} out of range")))?;
    let gid = u32::try_from(gid)
        .map_err(|_| LayerError::Bad(format!("{rel}: owner gid {gid} out of range")))?;
    Ok((Uid::from_raw(uid), Gid::from_raw(gid)))
}

/// Owner, then mode (a chown clears setuid bits), on an fd of what was just made.
fn set_meta(fd: &OwnedFd, rel: &RelPath, h: &tar::Header, as_root: bool) -> Result<(), LayerError> {
    if as_root {
        let (u, g) = ids(h, rel)?;
        fchown(fd.as_fd(), Some(u), Some(g)).map_err(fs_err(rel, "setting the owner"))?;
    }
    fchmod(fd.as_fd(), mode_of(h)).map_err(fs_err(rel, "setting the mode"))
}

fn set_owner_at(
    pfd: &OwnedFd,
    name: &OsStr,
    rel: &RelPath,
    h: &tar::Header,
    as_root: bool,
) -> Result<(), LayerError> {
    if !as_root {
        return Ok(());
    }
    let (u, g) = ids(h, rel)?;
    fchownat(
        pfd.as_fd(),
        name,
        Some(u),
        Some(g),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(fs_err(rel, "setting the owner"))
}

fn set_times(
    pfd: &OwnedFd,
    name: &OsStr,
    rel: &RelPath,
    h: &tar::Header,
) -> Result<(), LayerError> {
    let Ok(mtime) = h.mtime() else {
        return Ok(());
    };
    let t = TimeSpec::new(i64::try_from(mtime).unwrap_or(i64::MAX), 0);
    utimensat(
        pfd.as_fd(),
        name,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .map_err(fs_err(rel, "setting the time"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scratch() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let d = std::env::temp_dir().join(format!(
            "box-unpack-prop-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("root")).unwrap();
        d
    }

    /// A header block with fields from `bytes`, checksummed so that tar reads past it.
    fn forged_tar(blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for b in blocks {
            let mut h = [0u8; 512];
            h[..b.len().min(512)].copy_from_slice(&b[..b.len().min(512)]);
            h[148..156].fill(b' ');
            let sum: u32 = h.iter().map(|&x| u32::from(x)).sum();
            h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
            out.extend_from_slice(&h);
            out.extend_from_slice(&[0u8; 512]);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Cleaned paths never hold `.`, `..`, empty or `/`-bearing components.
        #[test]
        fn cleaned_paths_stay_inside(raw in proptest::collection::vec(any::<u8>(), 0..200)) {
            let p = RelPath::clean(Path::new(OsStr::from_bytes(&raw)));
            let shown = p.to_string();
            prop_assert!(shown.starts_with('/'));
            for c in shown.split('/').skip(1) {
                prop_assert!(c != "." && c != "..", "{shown}");
            }
        }

        /// Whatever a layer holds, applying it is an error or a tree inside the root, and
        /// the directory beside the root is never touched.
        #[test]
        fn any_layer_is_an_error_or_harmless(
            blocks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..512), 0..6),
            junk in proptest::collection::vec(any::<u8>(), 0..2048),
        ) {
            let d = scratch();
            std::fs::write(d.join("canary"), b"x").unwrap();
            let root = Root::open(&d.join("root")).unwrap();
            let limits = Limits { max_bytes: 1 << 20, ..Limits::default() };
            for input in [forged_tar(&blocks), junk.clone()] {
                let _ = apply_layer(&root, input.as_slice(), &limits, &mut Usage::default());
            }
            let beside: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().file_name()).collect();
            prop_assert_eq!(beside.len(), 2);
            prop_assert_eq!(std::fs::read(d.join("canary")).unwrap(), b"x".to_vec());
            let _ = std::fs::remove_dir_all(&d);
        }
    }
}
