//! `cargo xtask demo`: from a fresh clone, `box run --rm <busybox image> -- echo hello from a
//! microVM`, on this host when its KVM can boot a Linux guest, otherwise in the nested node.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::node::{self, NodeSpec};
use crate::{images, product};

const GREETING: &str = "hello from a microVM";

/// Where a stock kernel cannot boot: no /dev/kvm, or PVM (see ../shared/docs/nested-kvm.md).
fn host_kvm_problem() -> Option<&'static str> {
    if !Path::new("/dev/kvm").exists() {
        Some("this host has no /dev/kvm")
    } else if Path::new("/sys/module/kvm_pvm").exists() {
        Some("this host's /dev/kvm is PVM, which cannot boot a standard Linux kernel")
    } else {
        None
    }
}

pub fn run() -> Result<i32> {
    let p = product::prepare()?;
    match host_kvm_problem() {
        None => {
            println!("demo: running directly on this host's KVM");
            let i = images::build()?;
            let status = Command::new(&p.box_cli)
                .args(["run", "--rm"])
                .arg(&i.oci_layout)
                .args(["--", "echo", GREETING])
                .env("BOX_KERNEL", &i.kernel.vmlinux)
                .env("BOX_INITRD", &i.initramfs)
                .status()
                .context("running box")?;
            Ok(status.code().unwrap_or(125))
        }
        Some(why) => {
            println!(
                "demo: {why}; running inside the nested node (Linux under qemu TCG with real KVM)"
            );
            let command = format!(
                "{}box run --rm \"$BOX_TEST_IMAGE\" -- echo {GREETING}",
                product::env_prologue()
            );
            let mut spec = NodeSpec::new(command);
            spec.bins = p.bins;
            spec.files = p.files;
            spec.timeout = Duration::from_secs(600);
            spec.stream = true;
            Ok(node::run_in_node(&spec)?.exit_code)
        }
    }
}
