//! The product inside the nested node: `box` and `box-vmm` on PATH, the guest initramfs, and
//! the busybox test image named by `$BOX_TEST_IMAGE`, so `cargo xtask node -- box run ...`
//! boots real microVMs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::images;

/// Where the product's files sit inside L1.
pub const L1_INITRD: &str = "/box/initramfs.cpio";
pub const L1_TEST_IMAGE: &str = "/box/images/busybox";

pub struct Product {
    /// The `box` CLI (also in `bins`).
    pub box_cli: PathBuf,
    /// `containerd-shim-box-v2`, for the k8s tier (not in `bins`).
    pub shim: PathBuf,
    pub bins: Vec<PathBuf>,
    pub files: Vec<(PathBuf, String)>,
}

/// The shell prologue that names the product for commands run in L1. `box` boots the ELF
/// vmlinux the node's init exports as `$BOX_VMLINUX`, as it does outside the node: a bzImage
/// spends its first second decompressing itself in the guest (boot 1.39x slower, measured).
pub fn env_prologue() -> String {
    format!(
        "export BOX_KERNEL=\"$BOX_VMLINUX\" BOX_INITRD={L1_INITRD} BOX_TEST_IMAGE={L1_TEST_IMAGE} BOX_STATE_DIR=/run/box; "
    )
}

/// Builds `box`, `box-vmm`, the static init (static release builds: `ci::build_static`), the
/// initramfs and the test image.
pub fn prepare() -> Result<Product> {
    let bins = crate::ci::build_static()?;
    let kernel = crate::kernel::fetch()?;
    let (initramfs, _) = images::initramfs(&kernel, &bins.init)?;
    let (oci, _) = images::busybox_images()?;
    // box makes the container disk with mke2fs in L1 (busybox_images installed e2fsprogs).
    let mke2fs = ["/sbin/mke2fs", "/usr/sbin/mke2fs"]
        .iter()
        .map(Path::new)
        .find(|p| p.exists())
        .context("mke2fs not found: install e2fsprogs")?;
    Ok(Product {
        box_cli: bins.box_cli.clone(),
        shim: bins.shim.clone(),
        bins: vec![bins.box_cli, bins.vmm, mke2fs.to_path_buf()],
        files: vec![
            (initramfs, L1_INITRD.to_string()),
            (oci, L1_TEST_IMAGE.to_string()),
        ],
    })
}
