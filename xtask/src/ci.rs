//! `cargo xtask ci`: what CI runs, from a fresh clone on a fresh machine.
//!
//! Installs the packages the tests need, then: `cargo fmt --check`, clippy with `-D warnings`,
//! the static guest-init build (checked to be static), and every test tier that can run here.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::util::{cargo, run};

/// Debian packages the test tiers use, with a file that proves each is installed.
const PACKAGES: &[(&str, &str)] = &[
    ("busybox-static", "/bin/busybox"),
    ("util-linux", "/usr/bin/unshare"),
    // The CRI client's build (tests/cri) compiles the CRI protos.
    ("protobuf-compiler", "/usr/bin/protoc"),
    // The Python SDK's tests (tests/tests/sdk_python.rs) run sdk/python under python3.
    ("python3", "/usr/bin/python3"),
];

pub fn ensure_packages(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter(|(_, probe)| !Path::new(probe).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!("xtask: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update (are you root? is a Debian mirror reachable?)")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .with_context(|| format!("apt-get install {}", missing.join(" ")))
}

/// The binaries that run in a guest or in the nested node, as static release builds.
pub struct StaticBins {
    /// guest-init, PID 1 of every microVM (goes into the initramfs).
    pub init: PathBuf,
    /// The `box` CLI, for the node.
    pub box_cli: PathBuf,
    /// box-vmm, for the node.
    pub vmm: PathBuf,
    /// containerd's shim for the `box` runtime, for the node's containerd (k8s tier).
    pub shim: PathBuf,
    /// The VMM tier's guest helper and boot timer.
    pub probe: PathBuf,
}

/// What [`build_static`] builds: (package, binary).
const STATIC_BINS: &[(&str, &str)] = &[
    ("box-guest-init", "box-init"),
    ("box-shim", "box"),
    ("box-shim", "containerd-shim-box-v2"),
    ("box-vmm", "box-vmm"),
    ("box-tests", "box-vmm-probe"),
];

/// Builds every binary that leaves this machine (into a guest or into the nested node) as a
/// static glibc release binary (no musl target here) and checks each is static.
///
/// One cargo invocation with one set of flags for all of them, so that they share one build of
/// their dependencies (features unify the same way every time). Release, because the node
/// runs them under TCG: a debug `box` (114 MB) doubled every CLI start and every exit's cost.
/// `--target` keeps `+crt-static` away from build scripts and proc macros.
pub fn build_static() -> Result<StaticBins> {
    let target = "x86_64-unknown-linux-gnu";
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--target", target]);
    for (pkg, bin) in STATIC_BINS {
        cmd.args(["-p", pkg, "--bin", bin]);
    }
    run(cmd.env("RUSTFLAGS", "-C target-feature=+crt-static"))?;
    // Where cargo put them: $CARGO_TARGET_DIR when set, as cargo itself honours it.
    let dir = crate::paths::target_dir().join(target).join("release");
    for (_, bin) in STATIC_BINS {
        let path = dir.join(bin);
        if has_interpreter(&path)? {
            bail!(
                "{} is dynamically linked; neither the guest nor the node has its libraries",
                path.display()
            );
        }
    }
    Ok(StaticBins {
        init: dir.join("box-init"),
        box_cli: dir.join("box"),
        vmm: dir.join("box-vmm"),
        shim: dir.join("containerd-shim-box-v2"),
        probe: dir.join("box-vmm-probe"),
    })
}

/// `box-init`, static (see [`build_static`]).
pub fn build_static_init() -> Result<PathBuf> {
    Ok(build_static()?.init)
}

/// Whether an ELF64 file asks for a dynamic loader (has a PT_INTERP program header).
fn has_interpreter(path: &Path) -> Result<bool> {
    let elf = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let field = |off: usize, len: usize| -> Result<u64> {
        let b = elf.get(off..off + len).context("truncated ELF header")?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    };
    if elf.get(..4) != Some(b"\x7fELF") || elf.get(4) != Some(&2) {
        bail!("{} is not an ELF64 file", path.display());
    }
    let phoff = field(0x20, 8)? as usize;
    let phentsize = field(0x36, 2)? as usize;
    let phnum = field(0x38, 2)? as usize;
    for i in 0..phnum {
        if field(phoff + i * phentsize, 4)? == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

pub fn run_ci() -> Result<()> {
    let start = Instant::now();
    ensure_packages(PACKAGES)?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))
        .context("cargo fmt: run `cargo fmt --all`")?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    let init = build_static_init()?;
    println!("xtask: static guest init at {}", init.display());
    run(cargo().args(["build", "--workspace"]))?;
    // The host-process tier runs the very static binary that goes into the initramfs.
    let tiers = Instant::now();
    run(cargo()
        .args(["test", "--workspace"])
        .env("BOX_INIT_BIN", &init))?;
    // The VM-mode tier: the same init as PID 1 of a real stock-kernel microVM (nested node).
    crate::vmsmoke::vm_smoke().context("VM-mode guest-init tier (cargo xtask vm-smoke)")?;
    // The nested tier: real KVM, the stock kernel under box-vmm.
    crate::vmm_tier::run()?;
    // The product end to end: `box` scenarios in real microVMs (nested node).
    crate::e2e::run().context("end-to-end tier (cargo xtask e2e)")?;
    // Box under a real containerd 2.x (nested node).
    let k8s = Instant::now();
    crate::k8s::run(crate::k8s::K8sArgs {
        refresh_containerd: false,
        no_cri: false,
    })
    .context("containerd tier (cargo xtask k8s)")?;
    println!("xtask ci: k8s tier {:.1}s", k8s.elapsed().as_secs_f64());
    println!(
        "xtask ci: all passed (tests {:.1}s, total {:.1}s)",
        tiers.elapsed().as_secs_f64(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
