//! The product inside the nested node: `box` and `box-vmm` on PATH, the guest initramfs, and
//! the busybox test image named by `$BOX_TEST_IMAGE`, so `cargo xtask node -- box run ...`
//! boots real microVMs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::{images, paths, util};

/// Where the product's files sit inside L1.
pub const L1_INITRD: &str = "/box/initramfs.cpio";
pub const L1_TEST_IMAGE: &str = "/box/images/busybox";

pub struct Product {
    pub bins: Vec<PathBuf>,
    pub files: Vec<(PathBuf, String)>,
}

/// The shell prologue that names the product for commands run in L1. `$BOX_KERNEL` (the
/// stock bzImage) is exported by the node's init already.
pub fn env_prologue() -> String {
    format!("export BOX_INITRD={L1_INITRD} BOX_TEST_IMAGE={L1_TEST_IMAGE} BOX_STATE_DIR=/run/box; ")
}

/// Builds `box`, `box-vmm`, the static init, the initramfs and the test image.
pub fn prepare() -> Result<Product> {
    util::run(util::cargo().args([
        "build", "-p", "box-shim", "--bin", "box", "-p", "box-vmm", "--bin", "box-vmm",
    ]))
    .context("building box and box-vmm")?;
    let kernel = crate::kernel::fetch()?;
    let init = crate::ci::build_static_init()?;
    let (initramfs, _) = images::initramfs(&kernel, &init)?;
    let (oci, _) = images::busybox_images()?;
    // box makes the container disk with mke2fs in L1 (busybox_images installed e2fsprogs).
    let mke2fs = ["/sbin/mke2fs", "/usr/sbin/mke2fs"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("mke2fs not found: install e2fsprogs")?;
    let debug = paths::target_dir().join("debug");
    Ok(Product {
        bins: vec![
            debug.join("box"),
            debug.join("box-vmm"),
            mke2fs.to_path_buf(),
        ],
        files: vec![
            (initramfs, L1_INITRD.to_string()),
            (oci, L1_TEST_IMAGE.to_string()),
        ],
    })
}
