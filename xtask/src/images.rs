//! `cargo xtask images`: everything a Box microVM boots from, cached under
//! `target/box-images/`:
//! - the guest kernel (Debian's cloud kernel, via [`kernel::fetch`]);
//! - the initramfs: the static `box-init` as `/init`, the virtio (block, net, vsock) and overlay modules with
//!   their dependencies, and `/etc/box/modules` listing them in load order;
//! - a test container image from Debian's `busybox-static`: an OCI image layout and an ext4
//!   block image of the same root filesystem.

use crate::kernel::{self, Kernel};
use crate::tree::Tree;
use crate::{host, oci, paths};
use anyhow::{bail, Context, Result};
use box_images::initramfs::kmod;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What the guest loads, by name; [`kmod::resolve`] adds dependencies and orders them.
pub const GUEST_MODULES: &[&str] = &[
    "virtio",
    "virtio_ring",
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
    "overlay",
];

/// guest-init's module list, inside the initramfs.
pub const MODULE_LIST: &str = "/etc/box/modules";

/// Bumped when the layout of a cache entry changes, so stale entries are not reused.
const ROOTFS_FORMAT: u32 = 1;
const BUSYBOX_PACKAGE: &str = "busybox-static";

pub struct Images {
    pub kernel: Kernel,
    pub initramfs: PathBuf,
    /// Module paths inside the guest, in load order (the contents of [`MODULE_LIST`]).
    pub modules: Vec<String>,
    pub oci_layout: PathBuf,
    pub rootfs_ext4: PathBuf,
}

/// `cargo xtask images`.
pub fn cmd() -> Result<()> {
    let i = build()?;
    println!("kernel     {}", i.kernel.bzimage.display());
    println!("vmlinux    {}", i.kernel.vmlinux.display());
    println!("initramfs  {}", i.initramfs.display());
    println!("modules    {}", i.modules.join(" "));
    println!("oci        {}", i.oci_layout.display());
    println!("ext4       {}", i.rootfs_ext4.display());
    Ok(())
}

pub fn build() -> Result<Images> {
    let kernel = kernel::fetch()?;
    let init = crate::ci::build_static_init()?;
    let (initramfs, modules) = initramfs(&kernel, &init)?;
    let (oci_layout, rootfs_ext4) = busybox_images()?;
    Ok(Images {
        kernel,
        initramfs,
        modules,
        oci_layout,
        rootfs_ext4,
    })
}

/// The guest's initramfs for `init` (a static box-init), cached by the fingerprint of its inputs.
pub fn initramfs(k: &Kernel, init: &Path) -> Result<(PathBuf, Vec<String>)> {
    let (tree, modules) = initramfs_tree(k, init)?;
    let dir = paths::images_dir().join("initramfs");
    let out = dir.join(format!("initramfs-{}.cpio", tree.fingerprint()));
    if !out.exists() {
        fs::create_dir_all(&dir)?;
        eprintln!("xtask: building the guest initramfs {}", out.display());
        tree.write(&out)?;
        for e in fs::read_dir(&dir)?.flatten() {
            if e.path() != out {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    Ok((out, modules))
}

/// Uncompressed, as the L1 image is: measured in the nested node (images/README.md), the L2
/// guest reached /init 0.7-0.8 s sooner with the raw archive than with the same one gzip'd.
fn initramfs_tree(k: &Kernel, init: &Path) -> Result<(Tree, Vec<String>)> {
    let mut t = Tree::default();
    for d in ["dev", "proc", "sys", "run", "tmp", "etc/box"] {
        t.dir(d);
    }
    t.file("init", init)?;
    if !host::is_static_elf(init) {
        bail!("{} is not static: the guest has no libc", init.display());
    }
    let mut list = String::from("# Loaded in order by box-init (dependencies first).\n");
    let mut modules = Vec::new();
    for rel in kmod::resolve(&k.modules, GUEST_MODULES)? {
        let guest = format!("/lib/modules/{}/{}", k.release, rel.display());
        t.file(&guest, &k.modules.join(&rel))?;
        list.push_str(&guest);
        list.push('\n');
        modules.push(guest);
    }
    t.bytes(MODULE_LIST, list, 0o644);
    Ok((t, modules))
}

/// The busybox OCI layout and ext4 image, rebuilt when the package version changes.
pub fn busybox_images() -> Result<(PathBuf, PathBuf)> {
    let cache = paths::images_dir().join("rootfs");
    let version = candidate_version(BUSYBOX_PACKAGE, &cache)?;
    // No `:` (the epoch) in the path: qemu options and `--file SRC:DEST` split on it.
    let dir = cache.join(format!(
        "{BUSYBOX_PACKAGE}_{}-f{ROOTFS_FORMAT}",
        version.replace(':', "_")
    ));
    let (layout, ext4) = (dir.join("oci"), dir.join("rootfs.ext4"));
    if dir.join(".complete").exists() {
        return Ok((layout, ext4));
    }
    if !host::have("mkfs.ext4") {
        host::apt_update()?;
        host::apt_get(&[
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "e2fsprogs",
        ])?;
    }
    eprintln!(
        "xtask: building the busybox test image in {}",
        dir.display()
    );
    let tmp = cache.join(format!(".partial-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    host::run(
        Command::new("apt-get")
            .args(["download", "-qq", &format!("{BUSYBOX_PACKAGE}={version}")])
            .current_dir(&tmp),
    )?;
    let deb = fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    let unpacked = tmp.join("deb");
    host::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&unpacked))?;
    let bb = unpacked.join("bin/busybox");
    if !host::is_static_elf(&bb) {
        bail!("{} from {BUSYBOX_PACKAGE} is not static", bb.display());
    }
    let list = host::run(Command::new(&bb).arg("--list"))?;
    let applets: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(str::trim)
        .filter(|a| !a.is_empty() && *a != "busybox" && !a.contains('/'))
        .map(String::from)
        .collect();
    let rootfs = oci::Rootfs {
        busybox: fs::read(&bb)?,
        applets,
    };
    oci::write_layout(&rootfs, "busybox", &tmp.join("oci"))?;
    oci::verify_layout(&tmp.join("oci")).context("the OCI layout just written")?;
    let staged = tmp.join("rootfs");
    rootfs.stage(&staged)?;
    oci::make_ext4(&staged, &tmp.join("rootfs.ext4"))?;
    for scratch in [&unpacked, &staged] {
        fs::remove_dir_all(scratch)?;
    }
    fs::remove_file(&deb)?;
    fs::write(
        tmp.join(".complete"),
        format!("{BUSYBOX_PACKAGE} {version}\n"),
    )?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&tmp, &dir)?;
    Ok((layout, ext4))
}

/// The version apt would install, remembered until apt's lists change (each apt-cache call
/// costs about half a second here).
fn candidate_version(package: &str, cache: &Path) -> Result<String> {
    let memo = cache.join(format!("{package}.resolved"));
    let stamp = kernel::lists_stamp();
    if let (Some(stamp), Ok(text)) = (&stamp, fs::read_to_string(&memo)) {
        if let [s, v] = text.split_whitespace().collect::<Vec<_>>()[..] {
            if s == stamp {
                return Ok(v.to_string());
            }
        }
    }
    let show = || -> Option<String> {
        let out = Command::new("apt-cache")
            .args(["show", "--no-all-versions", package])
            .output()
            .ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("Version:"))
            .map(|v| v.trim().to_string())
    };
    let version = match show() {
        Some(v) => v,
        None => {
            host::apt_update()?;
            show().with_context(|| format!("apt-cache knows no {package}"))?
        }
    };
    if let Some(stamp) = kernel::lists_stamp() {
        fs::create_dir_all(cache)?;
        fs::write(&memo, format!("{stamp} {version}\n"))?;
    }
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use box_images::initramfs::kmod::{canonical, resolve};

    /// Against the real Debian kernel package (fetched with apt): every guest and L1 module
    /// resolves, and known dependencies come first. `cargo test -p xtask -- --ignored`
    #[test]
    #[ignore = "needs the kernel package (apt-get download)"]
    fn real_kernel_modules_resolve_in_dependency_order() {
        let k = crate::kernel::fetch().unwrap();
        let names = |wanted: &[&str]| -> Vec<String> {
            resolve(&k.modules, wanted)
                .unwrap()
                .iter()
                .map(|p| canonical(&p.file_stem().unwrap().to_string_lossy()))
                .collect()
        };
        let before = |v: &[String], a: &str, b: &str| {
            let pos = |m: &str| {
                v.iter()
                    .position(|x| x == m)
                    .unwrap_or_else(|| panic!("{m} missing from {v:?}"))
            };
            assert!(pos(a) < pos(b), "{a} must load before {b}: {v:?}");
        };
        let guest = names(GUEST_MODULES);
        before(&guest, "virtio_ring", "virtio");
        before(&guest, "virtio", "virtio_mmio");
        before(&guest, "vsock", "vmw_vsock_virtio_transport_common");
        before(
            &guest,
            "vmw_vsock_virtio_transport_common",
            "vmw_vsock_virtio_transport",
        );
        let l1 = names(crate::l1image::L1_MODULE_NAMES);
        before(&l1, "irqbypass", "kvm");
        before(&l1, "kvm", "kvm_amd");
        before(&l1, "vhost_iotlb", "vhost");
        before(&l1, "vhost", "vhost_vsock");
        before(&l1, "vsock", "vhost_vsock");
    }
}
