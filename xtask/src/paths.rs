//! Where xtask keeps what it builds and downloads.

use std::path::PathBuf;

/// The cargo target dir: `$CARGO_TARGET_DIR` when set (as cargo itself honours it), else
/// `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => workspace_root().join("target"),
    }
}

pub fn workspace_root() -> PathBuf {
    // xtask/ sits directly under the workspace root.
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Downloads and generated images: `target/box-images/`.
pub fn images_dir() -> PathBuf {
    target_dir().join("box-images")
}
