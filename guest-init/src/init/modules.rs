//! Loads the kernel modules listed in the initramfs, in order: stock distribution kernels
//! build virtio, vsock and overlay as modules, and nothing else would load them.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use nix::kmod::{finit_module, ModuleInitFlags};

#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    #[error("kernel module {path} (line {line} of {list}) is missing from the initramfs")]
    Missing {
        path: PathBuf,
        list: PathBuf,
        line: usize,
    },
    #[error("loading kernel module {path}: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("reading the module list {list}: {source}")]
    List {
        list: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The module paths of a list: one per line, `#` starts a comment.
pub fn parse_list(text: &str) -> Vec<(usize, PathBuf)> {
    text.lines()
        .enumerate()
        .filter_map(|(i, l)| {
            let l = l.split('#').next().unwrap_or("").trim();
            (!l.is_empty()).then(|| (i + 1, PathBuf::from(l)))
        })
        .collect()
}

/// Loads every module of `list`; a list that does not exist means nothing to load. Returns
/// how many modules were loaded (already loaded ones count).
pub fn load_listed(list: &Path) -> Result<usize, ModuleError> {
    let text = match std::fs::read_to_string(list) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(source) => {
            return Err(ModuleError::List {
                list: list.into(),
                source,
            })
        }
    };
    let entries = parse_list(&text);
    for (line, path) in &entries {
        let file = std::fs::File::open(path).map_err(|_| ModuleError::Missing {
            path: path.clone(),
            list: list.into(),
            line: *line,
        })?;
        let no_params = CString::default();
        match finit_module(&file, &no_params, ModuleInitFlags::empty()) {
            Ok(()) | Err(nix::Error::EEXIST) => {}
            Err(source) => {
                return Err(ModuleError::Load {
                    path: path.clone(),
                    source,
                })
            }
        }
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_keeps_order_and_skips_comments() {
        let l = parse_list("# virtio first\n/m/virtio.ko\n\n/m/virtio_ring.ko # ring\n");
        assert_eq!(
            l,
            vec![
                (2, PathBuf::from("/m/virtio.ko")),
                (4, PathBuf::from("/m/virtio_ring.ko"))
            ]
        );
    }

    #[test]
    fn a_missing_module_is_named() {
        let dir = std::env::temp_dir().join(format!("box-modules-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let list = dir.join("modules");
        std::fs::write(&list, "/nonexistent/vsock.ko\n").unwrap();
        let err = load_listed(&list).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/vsock.ko"), "{err}");
        assert!(err.contains("line 1"), "{err}");
        assert_eq!(load_listed(&dir.join("absent")).unwrap(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
