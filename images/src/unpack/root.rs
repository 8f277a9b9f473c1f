//! A directory being built into a container's root filesystem, every path resolved inside it.
//!
//! Layers are hostile: an earlier layer may plant `etc -> /` (or `etc -> ../../..`) so that a
//! later `etc/passwd`, `etc/.wh.shadow` or hardlink to `etc/shadow` would reach the host.
//! Every lookup here is `openat2` with `RESOLVE_IN_ROOT`: symlinks, absolute ones and `..`
//! included, resolve as if this directory were `/`, which is also what the container will see.
//! The last component of a path is then acted on through its parent's fd and never followed
//! (`O_NOFOLLOW`, `AT_SYMLINK_NOFOLLOW`, `unlinkat`), so nothing outside the root is opened,
//! created, changed or removed, whatever the layers hold.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// A path inside the root, cleaned lexically as containerd does: `.` and empty components
/// dropped, `..` pops (never above the root), a leading `/` means the root.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RelPath(Vec<OsString>);

impl RelPath {
    pub fn clean(p: &Path) -> RelPath {
        let mut parts: Vec<OsString> = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(n) => parts.push(n.to_os_string()),
                Component::ParentDir => {
                    parts.pop();
                }
                Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            }
        }
        RelPath(parts)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The parent and the last component; `None` for the root itself.
    pub fn split_last(&self) -> Option<(RelPath, &OsStr)> {
        let (last, parent) = self.0.split_last()?;
        Some((RelPath(parent.to_vec()), last.as_os_str()))
    }

    pub fn join(&self, name: &OsStr) -> RelPath {
        let mut v = self.0.clone();
        v.push(name.to_os_string());
        RelPath(v)
    }

    /// As a relative path for `openat2` ("." for the root).
    fn as_arg(&self) -> OsString {
        if self.0.is_empty() {
            return ".".into();
        }
        let mut s = OsString::new();
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                s.push("/");
            }
            s.push(p);
        }
        s
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return f.write_str("/");
        }
        write!(f, "/{}", Path::new(&self.as_arg()).display())
    }
}

pub struct Root {
    fd: OwnedFd,
}

fn resolve_how(flags: OFlag) -> OpenHow {
    OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS)
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_DIRECTORY);

impl Root {
    pub fn open(path: &Path) -> Result<Root, Errno> {
        let fd = nix::fcntl::open(path, DIR_FLAGS | OFlag::O_CLOEXEC, Mode::empty())?;
        Ok(Root { fd })
    }

    /// A regular file's content (at most `cap` bytes), resolved inside the root: what the
    /// container would read at that path, never a host file a symlink points at.
    pub fn read_file(&self, rel: &RelPath, cap: u64) -> std::io::Result<Vec<u8>> {
        use std::io::Read;
        let fd = openat2(
            self.fd.as_fd(),
            rel.as_arg().as_os_str(),
            resolve_how(OFlag::O_RDONLY),
        )?;
        let f = std::fs::File::from(fd);
        if !f.metadata()?.is_file() {
            return Err(std::io::Error::other("not a regular file"));
        }
        let mut data = Vec::new();
        f.take(cap).read_to_end(&mut data)?;
        Ok(data)
    }

    /// The directory at `rel`, resolved inside the root.
    pub fn open_dir(&self, rel: &RelPath) -> Result<OwnedFd, Errno> {
        openat2(
            self.fd.as_fd(),
            rel.as_arg().as_os_str(),
            resolve_how(DIR_FLAGS),
        )
    }

    /// The directory at `rel`, each missing component made (mode 0755, owned by whoever
    /// unpacks), resolved inside the root. A symlink to a directory that does not exist yet
    /// has its target made, inside the root (as containerd does); a component that is not a
    /// directory is `ENOTDIR`.
    pub fn open_dir_create(&self, rel: &RelPath) -> Result<OwnedFd, Errno> {
        self.create_dirs(rel, 0)
    }

    fn create_dirs(&self, rel: &RelPath, links: u32) -> Result<OwnedFd, Errno> {
        match self.open_dir(rel) {
            Err(Errno::ENOENT) => {}
            r => return r,
        }
        let mut fd = self.open_dir(&RelPath::default())?;
        let mut prefix = RelPath::default();
        for (i, part) in rel.0.iter().enumerate() {
            let parent = prefix.clone();
            prefix = prefix.join(part);
            fd = match self.open_dir(&prefix) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) => match lstat_at(&fd, part)? {
                    None => {
                        mkdirat(
                            fd.as_fd(),
                            part.as_os_str(),
                            Mode::from_bits_truncate(0o755),
                        )?;
                        openat(
                            fd.as_fd(),
                            part.as_os_str(),
                            DIR_FLAGS | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                            Mode::empty(),
                        )?
                    }
                    Some(st) if is_symlink(&st) => {
                        // The kernel's own bound on symlinks in one resolution.
                        if links >= 40 {
                            return Err(Errno::ELOOP);
                        }
                        let target = readlinkat(fd.as_fd(), part.as_os_str())?;
                        let mut next = if Path::new(&target).is_absolute() {
                            RelPath::clean(Path::new(&target))
                        } else {
                            let mut p = PathBuf::from(parent.as_arg());
                            p.push(&target);
                            RelPath::clean(&p)
                        };
                        next.0.extend(rel.0[i + 1..].iter().cloned());
                        return self.create_dirs(&next, links + 1);
                    }
                    Some(_) => return Err(Errno::ENOTDIR),
                },
                Err(e) => return Err(e),
            };
        }
        Ok(fd)
    }
}

/// `fstatat` without following the last component; `None` when nothing is there.
pub fn lstat_at(dir: &OwnedFd, name: &OsStr) -> Result<Option<FileStat>, Errno> {
    match fstatat(dir.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

pub fn is_dir(st: &FileStat) -> bool {
    file_type(st) == SFlag::S_IFDIR
}

fn is_symlink(st: &FileStat) -> bool {
    file_type(st) == SFlag::S_IFLNK
}

/// Removes `name` in `dir`, a directory with everything under it, never following a symlink
/// (each level is opened `O_NOFOLLOW` from its parent's fd). Nothing there is success.
pub fn remove_at(dir: &OwnedFd, name: &OsStr) -> Result<(), Errno> {
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if !is_dir(&st) {
        return unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir);
    }
    let sub = openat(
        dir.as_fd(),
        name,
        DIR_FLAGS | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    for child in children(&sub)? {
        remove_at(&sub, &child)?;
    }
    unlinkat(dir.as_fd(), name, UnlinkatFlags::RemoveDir)
}

/// The names in a directory, `.` and `..` left out.
pub fn children(dir: &OwnedFd) -> Result<Vec<OsString>, Errno> {
    let dup = dir
        .try_clone()
        .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))?;
    let mut d = nix::dir::Dir::from_fd(dup)?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(OsStr::from_bytes(n).to_os_string());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_lexically_and_never_leave_the_root() {
        let c = |s: &str| RelPath::clean(Path::new(s)).to_string();
        assert_eq!(c("a/b/c"), "/a/b/c");
        assert_eq!(c("./a//b/"), "/a/b");
        assert_eq!(c("/etc/passwd"), "/etc/passwd");
        assert_eq!(c("../../../etc/passwd"), "/etc/passwd");
        assert_eq!(c("a/../../b"), "/b");
        assert_eq!(c(".."), "/");
        assert!(RelPath::clean(Path::new("./")).is_root());
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let d = std::env::temp_dir().join(format!("box-root-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let (root_dir, outside) = (d.join("root"), d.join("outside"));
        std::fs::create_dir_all(&root_dir).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root_dir.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root_dir.join("rel")).unwrap();
        let root = Root::open(&root_dir).unwrap();
        for link in ["abs", "rel"] {
            let fd = root
                .open_dir_create(&RelPath::clean(Path::new(link)).join("x".as_ref()))
                .unwrap();
            drop(fd);
        }
        // Both made their directories inside the root, none outside.
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());
        assert!(root_dir
            .join(outside.strip_prefix("/").unwrap())
            .join("x")
            .is_dir());
        assert!(root_dir.join("outside/x").is_dir());
        let _ = std::fs::remove_dir_all(&d);
    }
}
