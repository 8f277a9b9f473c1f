//! Kernel modules out of an unpacked Debian kernel package: finding them by name, reading their
//! dependencies from the `.modinfo` ELF section (the package ships no `modules.dep`, and the
//! host may have no `modinfo`), and ordering them so every module follows its dependencies.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum KmodError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not a 64-bit little-endian ELF file")]
    NotElf,
    #[error("truncated ELF")]
    Truncated,
    #[error("no .modinfo section")]
    NoModinfo,
    #[error("module dependency cycle: {0}")]
    Cycle(String),
    #[error("no module {name} under {}", dir.display())]
    NoModule { name: String, dir: PathBuf },
    #[error("dependencies of {module}: {source}")]
    Deps {
        module: String,
        #[source]
        source: Box<KmodError>,
    },
}

type Result<T> = std::result::Result<T, KmodError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KmodError + '_ {
    move |source| KmodError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A module's canonical name: the kernel treats `-` and `_` alike and reports `_`.
pub fn canonical(name: &str) -> String {
    name.replace('-', "_")
}

/// Every `.ko` under `modules_dir` (`lib/modules/<release>`), by canonical name, with its path
/// relative to `modules_dir`.
pub fn index(modules_dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![modules_dir.join("kernel")];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).map_err(io(&dir))? {
            let e = e.map_err(io(&dir))?;
            let p = e.path();
            if e.file_type().map_err(io(&p))?.is_dir() {
                stack.push(p);
            } else if let Some(stem) = p.file_name().and_then(|n| n.to_str()?.strip_suffix(".ko")) {
                let rel = p.strip_prefix(modules_dir).unwrap_or(&p).to_path_buf();
                out.insert(canonical(stem), rel);
            }
        }
    }
    Ok(out)
}

/// The `depends=` field of a module's `.modinfo` section: the modules it needs loaded first.
pub fn depends(ko: &[u8]) -> Result<Vec<String>> {
    let modinfo = section(ko, ".modinfo")?.ok_or(KmodError::NoModinfo)?;
    Ok(modinfo
        .split(|b| *b == 0)
        .filter_map(|f| f.strip_prefix(b"depends="))
        .flat_map(|v| v.split(|b| *b == b','))
        .filter(|d| !d.is_empty())
        .map(|d| canonical(&String::from_utf8_lossy(d)))
        .collect())
}

/// The contents of the named section of a 64-bit little-endian ELF file.
fn section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(KmodError::NotElf);
    }
    let num = |o: usize, n: usize| -> Result<usize> {
        let b = elf.get(o..o + n).ok_or(KmodError::Truncated)?;
        Ok(b.iter()
            .rev()
            .fold(0usize, |a, &x| (a << 8) | usize::from(x)))
    };
    let (shoff, shentsize, shnum, shstrndx) =
        (num(0x28, 8)?, num(0x3a, 2)?, num(0x3c, 2)?, num(0x3e, 2)?);
    let header = |i: usize| -> Result<(usize, usize, usize)> {
        let h = shoff + i * shentsize;
        // sh_name, sh_offset, sh_size
        Ok((num(h, 4)?, num(h + 0x18, 8)?, num(h + 0x20, 8)?))
    };
    let (_, stroff, strsize) = header(shstrndx)?;
    let strtab = elf
        .get(stroff..stroff + strsize)
        .ok_or(KmodError::Truncated)?;
    for i in 0..shnum {
        let (name_off, off, size) = header(i)?;
        let sname = strtab.get(name_off..).unwrap_or_default();
        let sname = &sname[..sname.iter().position(|b| *b == 0).unwrap_or(sname.len())];
        if sname == name.as_bytes() {
            return Ok(Some(elf.get(off..off + size).ok_or(KmodError::Truncated)?));
        }
    }
    Ok(None)
}

/// `wanted` and everything they depend on, each after its dependencies; among independent
/// modules the order of `wanted` is kept. `deps` gives a module's direct dependencies.
pub fn load_order(
    wanted: &[&str],
    mut deps: impl FnMut(&str) -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    fn visit(
        m: &str,
        deps: &mut dyn FnMut(&str) -> Result<Vec<String>>,
        done: &mut HashSet<String>,
        path: &mut Vec<String>,
        out: &mut Vec<String>,
    ) -> Result<()> {
        if done.contains(m) {
            return Ok(());
        }
        if path.iter().any(|p| p == m) {
            return Err(KmodError::Cycle(format!("{} -> {m}", path.join(" -> "))));
        }
        path.push(m.to_string());
        let direct = deps(m).map_err(|e| KmodError::Deps {
            module: m.to_string(),
            source: Box::new(e),
        })?;
        for d in direct {
            visit(&d, deps, done, path, out)?;
        }
        path.pop();
        done.insert(m.to_string());
        out.push(m.to_string());
        Ok(())
    }
    let (mut done, mut out) = (HashSet::new(), Vec::new());
    for m in wanted {
        visit(
            &canonical(m),
            &mut deps,
            &mut done,
            &mut Vec::new(),
            &mut out,
        )?;
    }
    Ok(out)
}

/// [`load_order`] over a real kernel's modules: the relative paths of `wanted` and their
/// dependencies, in load order.
pub fn resolve(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>> {
    let idx = index(modules_dir)?;
    let path_of = |m: &str| -> Result<&PathBuf> {
        idx.get(m).ok_or_else(|| KmodError::NoModule {
            name: m.to_string(),
            dir: modules_dir.to_path_buf(),
        })
    };
    let order = load_order(wanted, |m| {
        let p = modules_dir.join(path_of(m)?);
        depends(&fs::read(&p).map_err(io(&p))?)
    })?;
    order.iter().map(|m| path_of(m).cloned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(m: &str) -> Result<Vec<String>> {
        let d: &[&str] = match m {
            "virtio" => &["virtio_ring"],
            "virtio_mmio" | "virtio_blk" => &["virtio", "virtio_ring"],
            "vmw_vsock_virtio_transport_common" => &["vsock"],
            "vmw_vsock_virtio_transport" => &[
                "virtio",
                "vmw_vsock_virtio_transport_common",
                "virtio_ring",
                "vsock",
            ],
            "a" => &["b"],
            "b" => &["a"],
            _ => &[],
        };
        Ok(d.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn dependencies_come_first_and_each_module_once() {
        let order = load_order(
            &[
                "virtio",
                "virtio-mmio",
                "virtio_blk",
                "vmw_vsock_virtio_transport",
                "overlay",
            ],
            graph,
        )
        .unwrap();
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "virtio_mmio",
                "virtio_blk",
                "vsock",
                "vmw_vsock_virtio_transport_common",
                "vmw_vsock_virtio_transport",
                "overlay"
            ]
        );
    }

    #[test]
    fn a_cycle_is_an_error_not_a_hang() {
        let err = load_order(&["a"], graph).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }

    /// A minimal ELF64 with a section header table holding `.shstrtab` and `.modinfo`.
    fn fake_ko(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let strtab_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let modinfo_off = elf.len();
        elf.extend_from_slice(modinfo);
        while !elf.len().is_multiple_of(8) {
            elf.push(0);
        }
        let shoff = elf.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0);
        sh(1, strtab_off, shstrtab.len());
        sh(11, modinfo_off, modinfo.len());
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn depends_is_read_from_the_modinfo_section() {
        let ko = fake_ko(b"license=GPL\0depends=virtio,virtio-ring\0vermagic=6.1\0");
        assert_eq!(depends(&ko).unwrap(), ["virtio", "virtio_ring"]);
        let ko = fake_ko(b"license=GPL\0depends=\0");
        assert!(depends(&ko).unwrap().is_empty());
        assert!(depends(b"not an elf").is_err());
    }
}
