//! The guest (and L1) kernel: Debian's stock cloud kernel, fetched with `apt-get download`,
//! unpacked with `dpkg-deb -x`, and cached under `target/box-images/kernel/<package>_<version>/`.
//!
//! Besides the bzImage it provides an uncompressed ELF `vmlinux`, because qemu under TCG boots
//! an ELF through its PVH entry point (and our VMM can load either).

use crate::host;
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The metapackage that always depends on the current cloud kernel image.
const META_PACKAGE: &str = "linux-image-cloud-amd64";
/// Written last into a cache entry: its presence means the entry is whole.
const COMPLETE: &str = ".complete";

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The concrete package, e.g. `linux-image-6.1.0-56-cloud-amd64`.
    pub package: String,
    /// Its Debian version, e.g. `6.1.192-2`.
    pub package_version: String,
    /// The kernel release (`uname -r`), e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    pub bzimage: PathBuf,
    pub vmlinux: PathBuf,
    /// `lib/modules/<release>`: holds `kernel/...` and the `modules.*` files.
    pub modules: PathBuf,
}

/// `cargo xtask kernel`: fetch (or find cached) and print the paths.
pub fn cmd() -> Result<()> {
    let k = fetch()?;
    println!("package  {} {}", k.package, k.package_version);
    println!("release  {}", k.release);
    println!("bzImage  {}", k.bzimage.display());
    println!("vmlinux  {}", k.vmlinux.display());
    println!("modules  {}", k.modules.display());
    Ok(())
}

/// Returns the cached kernel for the current package version, downloading it first if needed.
pub fn fetch() -> Result<Kernel> {
    host::ensure_node_tools()?;
    let cache = crate::paths::images_dir().join("kernel");
    let (package, version) = match resolve_cached(&cache) {
        Ok(pv) => pv,
        // Offline, or apt's lists are gone: any complete cached kernel still does the job.
        Err(e) => match newest_cached(&cache) {
            Some(k) => {
                eprintln!(
                    "xtask: {e:#}; using the cached {} {}",
                    k.package, k.package_version
                );
                return Ok(k);
            }
            None => return Err(e),
        },
    };
    let dir = cache.join(format!("{package}_{version}"));
    if dir.join(COMPLETE).exists() {
        return load(&dir);
    }
    eprintln!("xtask: fetching {package} {version} into {}", dir.display());
    let tmp = cache.join(format!(
        ".{package}_{version}.partial-{}",
        std::process::id()
    ));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    unpack(&package, &version, &tmp)?;
    fs::write(tmp.join(COMPLETE), format!("{package} {version}\n"))?;
    if dir.exists() {
        fs::remove_dir_all(&dir)?;
    }
    fs::rename(&tmp, &dir)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dir.display()))?;
    load(&dir)
}

/// The apt lists directory: apt-get update replaces files in it, which bumps its mtime.
const APT_LISTS: &str = "/var/lib/apt/lists";

/// [`resolve`], remembered until apt's lists change: each `apt-cache` call takes ~0.6 s here
/// (the image keeps no pkgcache.bin), which every `cargo xtask node` would otherwise pay.
fn resolve_cached(cache: &Path) -> Result<(String, String)> {
    let memo = cache.join("resolved");
    if let (Some(lists), Ok(text)) = (lists_stamp(), fs::read_to_string(&memo)) {
        if let [stamp, package, version] = text.split_whitespace().collect::<Vec<_>>()[..] {
            if stamp == lists {
                return Ok((package.into(), version.into()));
            }
        }
    }
    let (package, version) = resolve()?;
    // Re-read: resolve() may have run apt-get update.
    if let Some(lists) = lists_stamp() {
        fs::create_dir_all(cache)?;
        fs::write(&memo, format!("{lists} {package} {version}\n"))?;
    }
    Ok((package, version))
}

pub fn lists_stamp() -> Option<String> {
    let t = fs::metadata(APT_LISTS).and_then(|m| m.modified()).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    Some(d.as_nanos().to_string())
}

/// Finds the concrete kernel package behind the metapackage, and its candidate version.
fn resolve() -> Result<(String, String)> {
    let package = match depends_of_meta() {
        Some(p) => p,
        None => {
            // A fresh container often ships without apt lists.
            eprintln!("xtask: apt-cache knows no {META_PACKAGE}; running apt-get update");
            host::apt_update()?;
            depends_of_meta().with_context(|| {
                format!("`apt-cache depends {META_PACKAGE}` names no linux-image package even after apt-get update")
            })?
        }
    };
    let out = host::run(Command::new("apt-cache").args(["show", "--no-all-versions", &package]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("`apt-cache show {package}` printed no Version"))?;
    Ok((package, version))
}

fn depends_of_meta() -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["depends", META_PACKAGE])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        let rest = dep.strip_prefix("linux-image-")?;
        rest.starts_with(|c: char| c.is_ascii_digit())
            .then(|| dep.to_string())
    })
}

/// Downloads the .deb into `dir`, unpacks it to `dir/root`, and writes `dir/vmlinux`.
fn unpack(package: &str, version: &str, dir: &Path) -> Result<()> {
    host::run(
        Command::new("apt-get")
            .args(["download", "-qq", &format!("{package}={version}")])
            .current_dir(dir),
    )
    .with_context(|| format!("downloading the kernel package {package} {version}"))?;
    let deb = fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| {
            format!(
                "apt-get download {package} left no .deb in {}",
                dir.display()
            )
        })?;
    let root = dir.join("root");
    host::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
        .with_context(|| format!("unpacking {package}"))?;
    fs::remove_file(&deb)?;
    let bz = only_entry(&root.join("boot"), "vmlinuz-")?;
    let elf = extract_vmlinux(&fs::read(&bz).with_context(|| format!("reading {}", bz.display()))?)
        .with_context(|| format!("extracting vmlinux from {}", bz.display()))?;
    fs::write(dir.join("vmlinux"), elf)?;
    Ok(())
}

/// Reads a complete cache entry.
fn load(dir: &Path) -> Result<Kernel> {
    let stamp = fs::read_to_string(dir.join(COMPLETE))?;
    let mut words = stamp.split_whitespace();
    let (Some(package), Some(package_version)) = (words.next(), words.next()) else {
        bail!("{} is damaged; delete {}", COMPLETE, dir.display());
    };
    let root = dir.join("root");
    let bzimage = only_entry(&root.join("boot"), "vmlinuz-")?;
    let modules = only_entry(&root.join("lib/modules"), "")?;
    let release = modules
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    Ok(Kernel {
        package: package.into(),
        package_version: package_version.into(),
        release,
        bzimage,
        vmlinux: dir.join("vmlinux"),
        modules,
    })
}

fn newest_cached(cache: &Path) -> Option<Kernel> {
    let mut dirs: Vec<_> = fs::read_dir(cache)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|d| d.join(COMPLETE).exists())
        .collect();
    dirs.sort_by_key(|d| fs::metadata(d).and_then(|m| m.modified()).ok());
    dirs.last().and_then(|d| load(d).ok())
}

/// The one entry of `dir` whose name starts with `prefix`.
fn only_entry(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no {prefix}* in {}", dir.display()),
        _ => bail!("more than one {prefix}* in {}", dir.display()),
    }
}

/// The lz4 legacy frame magic, which starts the payload of Debian's x86 bzImage.
const LZ4_MAGIC: &[u8] = b"\x02\x21\x4c\x18";

/// Decompresses the ELF vmlinux out of a bzImage.
pub fn extract_vmlinux(bz: &[u8]) -> Result<Vec<u8>> {
    let payload = payload(bz)?;
    if !payload.starts_with(LZ4_MAGIC) {
        bail!(
            "the bzImage payload is not lz4 (starts {:02x?}); only lz4 kernels are supported",
            &payload[..payload.len().min(4)]
        );
    }
    // The kernel build appends the uncompressed size (le32) after the lz4 stream; the lz4 tool
    // would read it as a broken frame.
    let stream = &payload[..payload.len() - 4];
    let elf = pipe_through(Command::new("lz4").args(["-d", "-c", "-q"]), stream)
        .context("decompressing the kernel with the lz4 tool (package lz4)")?;
    let expected = u32::from_le_bytes(payload[payload.len() - 4..].try_into()?) as usize;
    if !elf.starts_with(b"\x7fELF") || elf.len() != expected {
        bail!(
            "decompressed kernel is not the expected ELF ({} bytes, expected {expected})",
            elf.len()
        );
    }
    Ok(elf)
}

/// The compressed kernel inside a bzImage, located through the boot protocol header
/// (Documentation/x86/boot.rst: `setup_sects`, `payload_offset`, `payload_length`).
fn payload(bz: &[u8]) -> Result<&[u8]> {
    if bz.get(0x202..0x206) != Some(b"HdrS".as_slice()) {
        bail!("not a bzImage: no HdrS signature");
    }
    let le32 = |o: usize| -> Result<usize> {
        let b = bz.get(o..o + 4).context("bzImage header truncated")?;
        Ok(u32::from_le_bytes(b.try_into()?) as usize)
    };
    let setup_sects = match bz[0x1f1] {
        0 => 4, // the boot protocol's historical default
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + le32(0x248)?;
    let len = le32(0x24c)?;
    match bz.get(start..start + len) {
        Some(p) if len > 4 => Ok(p),
        _ => {
            // Old boot protocols lack the payload fields: fall back to the magic.
            let at = bz
                .windows(LZ4_MAGIC.len())
                .position(|w| w == LZ4_MAGIC)
                .context("no lz4 payload found in the bzImage")?;
            Ok(&bz[at..])
        }
    }
}

/// Feeds `input` to a command's stdin and returns its stdout.
fn pipe_through(cmd: &mut Command, input: &[u8]) -> Result<Vec<u8>> {
    let line = host::describe(cmd);
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    let mut stdin = child.stdin.take().context("no stdin")?;
    // Write from a thread: the child fills its stdout pipe long before it has read all input.
    let out = std::thread::scope(|s| {
        let writer = s.spawn(move || stdin.write_all(input));
        let out = child.wait_with_output();
        (writer.join(), out)
    });
    let out = match out {
        (Ok(Ok(())), Ok(out)) => out,
        (_, Err(e)) => return Err(e).with_context(|| format!("`{line}`")),
        (Ok(Err(e)), _) => return Err(e).with_context(|| format!("writing to `{line}`")),
        (Err(_), _) => bail!("writer thread for `{line}` panicked"),
    };
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage-shaped blob: boot header fields, then an lz4 legacy payload and its size.
    fn fake_bzimage(elf: &[u8]) -> Option<Vec<u8>> {
        let lz = pipe_through(Command::new("lz4").args(["-l", "-c", "-q"]), elf).ok()?;
        let setup_sects = 3u8;
        let payload_offset = 100usize;
        let mut bz = vec![0u8; (setup_sects as usize + 1) * 512 + payload_offset];
        bz[0x1f1] = setup_sects;
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        let mut payload = lz;
        payload.extend_from_slice(&(elf.len() as u32).to_le_bytes());
        bz[0x248..0x24c].copy_from_slice(&(payload_offset as u32).to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend_from_slice(&payload);
        bz.extend_from_slice(b"trailing junk after the payload");
        Some(bz)
    }

    #[test]
    fn vmlinux_comes_out_of_the_lz4_payload() {
        let mut elf = b"\x7fELF".to_vec();
        elf.extend((0..100_000u32).map(|i| (i % 251) as u8));
        let Some(bz) = fake_bzimage(&elf) else {
            return; // no lz4 tool on this host
        };
        assert_eq!(extract_vmlinux(&bz).unwrap(), elf);
    }

    #[test]
    fn a_non_bzimage_is_refused() {
        let err = extract_vmlinux(&[0u8; 4096]).unwrap_err();
        assert!(format!("{err:#}").contains("HdrS"), "{err:#}");
    }
}
