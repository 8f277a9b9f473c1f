//! An initramfs under construction: destination paths mapped to their contents, written out as
//! a newc cpio archive. Parent directories are added implicitly.

use crate::host;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::UNIX_EPOCH;

enum Src {
    Dir,
    Host(PathBuf),
    Bytes(Vec<u8>),
    Link(String),
}

#[derive(Default)]
pub struct Tree {
    // Sorted, so every directory is written before what it contains (a parent path is a prefix
    // of its children's, and sorts first).
    entries: BTreeMap<String, (Src, u32)>,
}

impl Tree {
    pub fn dir(&mut self, dest: &str) {
        let dest = normalize(dest);
        self.parents(&dest);
        self.entries.entry(dest).or_insert((Src::Dir, 0o755));
    }

    pub fn bytes(&mut self, dest: &str, data: impl Into<Vec<u8>>, mode: u32) {
        self.insert(dest, Src::Bytes(data.into()), mode);
    }

    pub fn symlink(&mut self, dest: &str, target: &str) {
        self.insert(dest, Src::Link(target.into()), 0o777);
    }

    /// A host file (following symlinks), keeping its permission bits.
    pub fn file(&mut self, dest: &str, src: &Path) -> Result<()> {
        let meta = fs::metadata(src).with_context(|| format!("{}", src.display()))?;
        if !meta.is_file() {
            bail!("{} is not a regular file", src.display());
        }
        self.insert(dest, Src::Host(src.into()), meta.permissions().mode());
        Ok(())
    }

    /// A host file or directory tree; symlinks inside a directory are kept as symlinks.
    pub fn path(&mut self, dest: &str, src: &Path) -> Result<()> {
        let meta = fs::metadata(src).with_context(|| format!("{}", src.display()))?;
        if !meta.is_dir() {
            return self.file(dest, src);
        }
        self.dir(dest);
        let mut names: Vec<_> = fs::read_dir(src)
            .with_context(|| format!("reading {}", src.display()))?
            .collect::<std::io::Result<_>>()?;
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let child_dest = format!(
                "{}/{}",
                dest.trim_end_matches('/'),
                e.file_name().to_string_lossy()
            );
            let child = e.path();
            if e.file_type()?.is_symlink() {
                let target = fs::read_link(&child)?;
                self.symlink(&child_dest, &target.to_string_lossy());
            } else {
                self.path(&child_dest, &child)?;
            }
        }
        Ok(())
    }

    /// A host executable plus the shared libraries `ldd` lists for it, at their host paths so
    /// the dynamic loader finds them without an ld.so.cache.
    pub fn executable(&mut self, dest: &str, src: &Path) -> Result<()> {
        self.file(dest, src)?;
        for lib in shared_libs(src)? {
            self.file(&lib.to_string_lossy(), &lib)?;
        }
        Ok(())
    }

    /// A cache key over every input: destination, mode, and for host files path, size and mtime.
    pub fn fingerprint(&self) -> String {
        let mut h = Fnv::default();
        for (dest, (src, mode)) in &self.entries {
            h.write(dest.as_bytes());
            h.write(&mode.to_le_bytes());
            match src {
                Src::Dir => h.write(b"d"),
                Src::Bytes(b) => h.write(b),
                Src::Link(t) => h.write(t.as_bytes()),
                Src::Host(p) => {
                    h.write(p.as_os_str().as_encoded_bytes());
                    if let Ok(m) = fs::metadata(p) {
                        h.write(&m.len().to_le_bytes());
                        let mtime = m
                            .modified()
                            .ok()
                            .and_then(|t| t.duration_since(UNIX_EPOCH).ok());
                        h.write(&mtime.map_or(0, |d| d.as_nanos()).to_le_bytes());
                    }
                }
            }
        }
        format!("{:016x}", h.0)
    }

    /// Writes the archive, uncompressed, to `out` (via a temporary file, so a partial archive
    /// never sits at `out`).
    ///
    /// Uncompressed on purpose: L1 unpacks its initramfs under TCG, where inflating is slow.
    /// Measured with the ~125 MB L1 base: qemu start to L1 init 2.5-2.9 s uncompressed against
    /// 3.9-4.5 s as `gzip -1` (43 MB), and the host saves the gzip time too. The cost is disk
    /// space under target/.
    pub fn write(&self, out: &Path) -> Result<()> {
        // Per process: two runs building the same base at once must not share a temp file.
        let tmp = out.with_extension(format!("partial-{}", std::process::id()));
        let file = fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        self.write_cpio(BufWriter::with_capacity(1 << 20, file))
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, out)?;
        Ok(())
    }

    fn write_cpio(&self, out: impl Write) -> Result<()> {
        let mut w = box_images::initramfs::cpio::Writer::new(out);
        for (dest, (src, mode)) in &self.entries {
            match src {
                Src::Dir => w.dir(dest, *mode)?,
                Src::Bytes(b) => w.file(dest, *mode, b)?,
                Src::Link(t) => w.symlink(dest, t)?,
                Src::Host(p) => {
                    let data = fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                    w.file(dest, *mode, &data)?;
                }
            }
        }
        w.finish()?.flush()?;
        Ok(())
    }

    fn insert(&mut self, dest: &str, src: Src, mode: u32) {
        let dest = normalize(dest);
        self.parents(&dest);
        self.entries.insert(dest, (src, mode));
    }

    fn parents(&mut self, dest: &str) {
        let mut at = 0;
        while let Some(i) = dest[at..].find('/') {
            let parent = &dest[..at + i];
            self.entries
                .entry(parent.to_string())
                .or_insert((Src::Dir, 0o755));
            at += i + 1;
        }
    }
}

/// "/usr//bin/" → "usr/bin": the archive's relative form.
fn normalize(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The absolute library paths `ldd` prints for a dynamic executable; none for a static one.
pub fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    if host::is_static_elf(bin) {
        return Ok(Vec::new());
    }
    let out = host::run(Command::new("ldd").arg(bin))
        .with_context(|| format!("listing the shared libraries of {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!(
                "{}: a shared library is missing on this host: {}",
                bin.display(),
                line.trim()
            );
        }
        // "libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        if let Some(p) = line.split_whitespace().find(|w| w.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// FNV-1a: a stable hash (std's hasher may change between Rust releases, invalidating caches
/// for no reason).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        // Separates fields, so ("ab","c") and ("a","bc") differ.
        self.0 = self.0.wrapping_mul(0x0100_0000_01b3) ^ 0xff;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_paths_are_relative() {
        let mut t = Tree::default();
        t.bytes("/usr/local/bin/x", b"1".to_vec(), 0o755);
        t.symlink("/bin/sh", "busybox");
        let keys: Vec<_> = t.entries.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "bin",
                "bin/sh",
                "usr",
                "usr/local",
                "usr/local/bin",
                "usr/local/bin/x"
            ]
        );
    }

    #[test]
    fn fingerprint_follows_content() {
        let mut a = Tree::default();
        a.bytes("init", b"one".to_vec(), 0o755);
        let mut b = Tree::default();
        b.bytes("init", b"two".to_vec(), 0o755);
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
