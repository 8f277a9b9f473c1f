//! The L1 node's initramfs, in two cpio segments that the kernel unpacks in turn:
//! - a base segment (busybox, kvm modules, qemu, the guest kernel), which changes only when the
//!   kernel package or a host tool changes, so it is cached by fingerprint;
//! - a per-run segment (/init, the command, `--bin` and `--file` extras), small and rebuilt each
//!   time.

use crate::host::{self, BUSYBOX};
use crate::kernel::Kernel;
use crate::tree::Tree;
use anyhow::{Context, Result};
use box_images::initramfs::kmod;
use std::fs;
use std::path::{Path, PathBuf};

/// Where things sit inside L1.
pub const GUEST_KERNEL_DIR: &str = "/box/kernel";
pub const L1_MODULES_DIR: &str = "/box/l1-modules";
pub const CMD_FILE: &str = "/box/cmd";
pub const BIN_DIR: &str = "/usr/local/bin";

/// What L1 loads at boot, by name; [`l1_modules`] adds their dependencies in load order.
/// kvm-amd gives L1 a real /dev/kvm; vhost_vsock gives it /dev/vhost-vsock, so qemu can give an
/// L2 guest a vsock device that L1 processes reach over AF_VSOCK; tun gives it /dev/net/tun for
/// the TAPs behind virtio-net. Then the networks: the bridge, nftables' NAT (L1 has no
/// modprobe for the kernel to load them on demand), and veth with tc's ingress, u32 and
/// mirred for the pod network; loop for containerd's blockfile snapshots (loop-mounted ext4
/// files).
pub const L1_MODULE_NAMES: &[&str] = &[
    "kvm_amd",
    "vhost_vsock",
    "tun",
    "bridge",
    "nf_tables",
    "nft_chain_nat",
    "nft_nat",
    "nft_masq",
    "nft_ct",
    "nft_fib_ipv4",
    "veth",
    "sch_ingress",
    "cls_u32",
    "act_mirred",
    "loop",
];

/// L1's modules in load order: (canonical name, path relative to `lib/modules/<release>`).
pub fn l1_modules(k: &Kernel) -> Result<Vec<(String, PathBuf)>> {
    kmod::resolve(&k.modules, L1_MODULE_NAMES)?
        .into_iter()
        .map(|rel| {
            let name = rel
                .file_stem()
                .map(|s| kmod::canonical(&s.to_string_lossy()))
                .with_context(|| format!("module path {}", rel.display()))?;
            Ok((name, rel))
        })
        .collect()
}

/// The guest's share of the kernel's modules, relative to `lib/modules/<release>`: virtio-mmio
/// transport, block, net, console, rng, vsock, and the filesystems a container root may use.
/// Debian's cloud kernel builds all of these as modules.
const GUEST_MODULES: &[&str] = &[
    "modules.order",
    "modules.builtin",
    "modules.builtin.modinfo",
    "kernel/drivers/virtio",
    "kernel/drivers/block/virtio_blk.ko",
    "kernel/drivers/char/virtio_console.ko",
    "kernel/drivers/char/hw_random/virtio-rng.ko",
    "kernel/drivers/net/virtio_net.ko",
    "kernel/drivers/net/net_failover.ko",
    "kernel/net/core/failover.ko",
    "kernel/net/vmw_vsock",
    "kernel/fs/overlayfs",
    "kernel/fs/erofs",
    "kernel/lib/libcrc32c.ko",
    "kernel/fs/fuse",
];

/// qemu's data files that a `-M microvm -kernel` boot reads (its qboot BIOS); the rest of
/// /usr/share/qemu stays out.
const QEMU_DATA: &[&str] = &["bios-microvm.bin"];

/// The guest kernel's paths inside L1, exported to the command as BOX_KERNEL etc.
pub struct GuestKernel {
    pub bzimage: String,
    pub vmlinux: String,
    pub modules: String,
}

pub fn guest_kernel(k: &Kernel) -> GuestKernel {
    GuestKernel {
        bzimage: format!("{GUEST_KERNEL_DIR}/vmlinuz"),
        vmlinux: format!("{GUEST_KERNEL_DIR}/vmlinux"),
        modules: format!("{GUEST_KERNEL_DIR}/modules/{}", k.release),
    }
}

/// Returns the cached base segment, building it if its inputs changed.
pub fn base(k: &Kernel, dir: &Path) -> Result<PathBuf> {
    let tree = base_tree(k)?;
    let out = dir.join(format!("l1-base-{}.cpio", tree.fingerprint()));
    if out.exists() {
        return Ok(out);
    }
    fs::create_dir_all(dir)?;
    eprintln!("xtask: building the L1 base image {}", out.display());
    tree.write(&out).context("building the L1 base image")?;
    // Older bases are dead weight (tens of MB each).
    for e in fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("l1-base-") && e.path() != out {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(out)
}

fn base_tree(k: &Kernel) -> Result<Tree> {
    let mut t = Tree::default();
    for d in [
        "proc", "sys", "dev", "tmp", "run", "root", "etc", "bin", "sbin", "usr/bin", "usr/sbin",
        BIN_DIR,
    ] {
        t.dir(d);
    }
    t.file("bin/busybox", Path::new(BUSYBOX))?;
    t.bytes("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0o644);
    t.bytes("etc/group", "root:x:0:\nkvm:x:36:\n", 0o644);
    // containerd's CRI copies both into each pod's sandbox files and fails RunPodSandbox
    // without them ("failed to generate sandbox hosts file", "failed to copy host's
    // resolv.conf"). The node has no resolver: box's NAT network then gives guests its fallback.
    t.bytes(
        "etc/hosts",
        "127.0.0.1\tlocalhost\n127.0.1.1\tbox-node\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        0o644,
    );
    t.bytes("etc/resolv.conf", "# no resolver in the node\n", 0o644);
    for (name, rel) in l1_modules(k)? {
        t.file(
            &format!("{L1_MODULES_DIR}/{name}.ko"),
            &k.modules.join(&rel),
        )
        .with_context(|| format!("the L1 node needs {name}.ko from {}", k.package))?;
    }
    let g = guest_kernel(k);
    t.file(&g.bzimage, &k.bzimage)?;
    t.file(&g.vmlinux, &k.vmlinux)?;
    for rel in GUEST_MODULES {
        t.path(&format!("{}/{rel}", g.modules), &k.modules.join(rel))?;
    }
    // Network tools, by full path: busybox's applets shadow `ip` in sh.
    t.executable("usr/sbin/nft", Path::new(host::NFT))?;
    t.executable("usr/sbin/ip", Path::new(host::IP))?;
    for p in host::CNI_PLUGINS {
        let src = Path::new(host::CNI_DIR).join(p);
        t.executable(&format!("usr/lib/cni/{p}"), &src)?;
    }
    // `ip netns` keeps namespaces under /var/run/netns.
    t.dir("var");
    t.symlink("var/run", "/run");
    // qemu inside L1: the reference VMM that benchmarks compare box-vmm against.
    let qemu = host::which("qemu-system-x86_64")
        .context("qemu-system-x86_64 (package qemu-system-x86)")?;
    t.executable("usr/bin/qemu-system-x86_64", &qemu)?;
    for f in QEMU_DATA {
        t.file(
            &format!("usr/share/qemu/{f}"),
            &Path::new("/usr/share/qemu").join(f),
        )?;
    }
    Ok(t)
}

/// What one run adds on top of the base.
pub struct RunSpec<'a> {
    pub init: &'a str,
    pub command: &'a str,
    pub bins: &'a [PathBuf],
    pub files: &'a [(PathBuf, String)],
}

pub fn run_segment(spec: &RunSpec, out: &Path) -> Result<()> {
    let mut t = Tree::default();
    t.bytes("init", spec.init, 0o755);
    t.bytes(CMD_FILE, spec.command, 0o644);
    for bin in spec.bins {
        let name = bin
            .file_name()
            .with_context(|| format!("--bin {}: not a file path", bin.display()))?;
        t.executable(&format!("{BIN_DIR}/{}", name.to_string_lossy()), bin)
            .with_context(|| format!("--bin {}", bin.display()))?;
    }
    for (src, dest) in spec.files {
        t.path(dest, src)
            .with_context(|| format!("--file {}:{dest}", src.display()))?;
    }
    t.write(out)
}
