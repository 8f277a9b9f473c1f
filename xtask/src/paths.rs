//! Where xtask keeps what it builds and downloads.

use crate::util::project_root;
use std::path::PathBuf;

/// The cargo target dir: `$CARGO_TARGET_DIR` when set (as cargo itself honours it), else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => project_root().join("target"),
    }
}

/// Downloads and generated images: `target/box-images/`.
pub fn images_dir() -> PathBuf {
    target_dir().join("box-images")
}
