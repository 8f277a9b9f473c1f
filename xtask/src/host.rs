//! Host prerequisites: finding the tools the node needs and installing the missing ones with apt,
//! plus one helper that runs a command and names it when it fails.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Output};

/// A host tool and the Debian package that provides it.
struct Tool {
    /// What must exist (an executable on PATH, or an absolute path).
    probe: &'static str,
    package: &'static str,
}

const NODE_TOOLS: &[Tool] = &[
    Tool {
        probe: "qemu-system-x86_64",
        package: "qemu-system-x86",
    },
    // The static build: it is copied into L1 and L2 images, which have no libc.
    Tool {
        probe: BUSYBOX,
        package: "busybox-static",
    },
    Tool {
        probe: "cpio",
        package: "cpio",
    },
    Tool {
        probe: "lz4",
        package: "lz4",
    },
    Tool {
        probe: "dpkg-deb",
        package: "dpkg",
    },
    Tool {
        probe: "ldd",
        package: "libc-bin",
    },
    // The node's network tools: nft for the nat network's rules, iproute2's ip (busybox's
    // has no netns), and CNI's plugins for the pod-network scenario.
    Tool {
        probe: NFT,
        package: "nftables",
    },
    Tool {
        probe: IP,
        package: "iproute2",
    },
    Tool {
        probe: CNI_BRIDGE,
        package: "containernetworking-plugins",
    },
];

pub const NFT: &str = "/usr/sbin/nft";
pub const IP: &str = "/usr/sbin/ip";
pub const CNI_DIR: &str = "/usr/lib/cni";
const CNI_BRIDGE: &str = "/usr/lib/cni/bridge";
/// The CNI plugins the node carries.
pub const CNI_PLUGINS: &[&str] = &["bridge", "host-local", "loopback"];

/// Installs whatever the node needs and is missing: one `apt-get update`, one `apt-get install`,
/// and nothing at all when everything is present.
pub fn ensure_node_tools() -> Result<()> {
    let mut missing: Vec<&str> = NODE_TOOLS
        .iter()
        .filter(|t| !have(t.probe))
        .map(|t| t.package)
        .collect();
    // The dynamic `busybox` package also ships /bin/busybox, but L1 and L2 images carry no
    // libc for it: only the static build will do.
    if have(BUSYBOX) && !is_static_elf(Path::new(BUSYBOX)) && !missing.contains(&"busybox-static") {
        missing.push("busybox-static");
    }
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask: installing missing host packages: {}",
        missing.join(" ")
    );
    apt_update()?;
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend(&missing);
    apt_get(&args)?;
    for t in NODE_TOOLS {
        if !have(t.probe) {
            bail!(
                "`{}` still missing after `apt-get install {}`",
                t.probe,
                t.package
            );
        }
    }
    if !is_static_elf(Path::new(BUSYBOX)) {
        bail!("{BUSYBOX} is not statically linked even after `apt-get install busybox-static`");
    }
    Ok(())
}

/// Where busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// An ELF with no PT_INTERP program header needs no dynamic loader.
pub fn is_static_elf(path: &Path) -> bool {
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    let u16_at = |o: usize| {
        data.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u32_at = |o: usize| {
        data.get(o..o + 4)
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()))
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
    };
    // 64-bit little-endian ELF only: that is all this x86-64 project builds.
    if data.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| u32_at(phoff + i * phentsize).is_some_and(|t| t != PT_INTERP))
}

/// Whether `probe` names an existing file (absolute) or an executable on PATH.
pub fn have(probe: &str) -> bool {
    which(probe).is_some()
}

pub fn which(probe: &str) -> Option<std::path::PathBuf> {
    if probe.starts_with('/') {
        return Path::new(probe).exists().then(|| probe.into());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(probe))
        .find(|p| p.is_file())
}

/// `apt-get update`, at most once per xtask run: a fresh machine may need it both for missing
/// tools and for the kernel package, and each costs seconds of downloads.
pub fn apt_update() -> Result<()> {
    static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if DONE.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    apt_get(&["update", "-qq"])?;
    DONE.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Runs `apt-get`, as root directly or through `sudo -n` otherwise.
pub fn apt_get(args: &[&str]) -> Result<()> {
    let mut cmd = if is_root() {
        Command::new("apt-get")
    } else if have("sudo") {
        let mut c = Command::new("sudo");
        c.args(["-n", "apt-get"]);
        c
    } else {
        bail!(
            "`apt-get {}` needs root: run it as root, or install sudo",
            args.join(" ")
        );
    };
    cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `apt-get {}`", args.join(" ")))?;
    if !status.success() {
        bail!("`apt-get {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn is_root() -> bool {
    // /proc/self/status "Uid:" is real, effective, saved, fs; the effective one decides.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs a command to completion and returns its output; a failure names the command line and
/// carries its stderr, so the user sees which step broke.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let line = describe(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_dynamic_elfs_are_told_apart() {
        // The test binary itself is dynamically linked (glibc, no crt-static here).
        let me = std::env::current_exe().unwrap();
        assert!(!is_static_elf(&me));
        assert!(!is_static_elf(Path::new("/etc/hostname")));
        if Path::new(BUSYBOX).exists() {
            // ldd fails on an executable that has no dynamic section.
            let ldd_says_static = std::process::Command::new("ldd")
                .arg(BUSYBOX)
                .output()
                .is_ok_and(|o| !o.status.success());
            assert_eq!(is_static_elf(Path::new(BUSYBOX)), ldd_says_static);
        }
    }
}
