//! `cargo xtask ...`: the project's automation: CI, the demo, images, the nested node, benchmarks.

mod bench;
mod ci;
mod containerd;
mod demo;
mod e2e;
mod host;
mod images;
mod k8s;
mod kernel;
mod l1image;
mod l1init;
mod node;
mod oci;
mod paths;
mod product;
mod tree;
mod util;
mod vmm_tier;
mod vmsmoke;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "Box project automation")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the tests need, then fmt --check, clippy -D warnings and every test tier.
    Ci,
    /// Run a command in a real microVM (the main job).
    Demo,
    /// The end-to-end scenarios of `box` in real microVMs (nested node).
    E2e,
    /// Box under a real containerd 2.x (Debian sid's) in the nested node: `ctr run` with the
    /// `box` runtime, then the CRI client's scenarios if tests/cri exists.
    K8s {
        #[command(flatten)]
        args: k8s::K8sArgs,
    },
    /// Run a shell command in an L1 node (Linux under qemu TCG with a real /dev/kvm), where
    /// microVMs boot. Exits with the command's exit code; 125 if the node itself failed.
    Node {
        #[command(flatten)]
        args: node::NodeArgs,
    },
    /// Fetch (or find cached) Debian's cloud kernel for guests and print its paths.
    Kernel,
    /// Build (or find cached) the guest kernel, initramfs and busybox test image; print paths.
    Images,
    /// Boot guest-init as PID 1 of a real microVM (qemu, in an L1 node) and check it answers
    /// Agent.Health and Agent.Shutdown over vsock and then powers the guest off.
    VmSmoke,
    /// The nested VMM tier: box-vmm boots the stock kernel in an L1 node (disk, vsock, exits).
    VmmTier,
    /// Boot time and RSS of box-vmm against qemu microvm, in one L1 node (not pass/fail).
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Ci => ci::run_ci(),
        Cmd::Demo => match demo::run() {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("xtask demo: {e:#}");
                std::process::exit(125)
            }
        },
        Cmd::E2e => e2e::run(),
        Cmd::K8s { args } => k8s::run(args),
        Cmd::Node { args } => match node::cmd(args) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                // 125, as `docker run` uses: distinct from any exit code the command itself
                // is likely to return.
                eprintln!("xtask node: {e:#}");
                std::process::exit(125)
            }
        },
        Cmd::Kernel => kernel::cmd(),
        Cmd::Images => images::cmd(),
        Cmd::VmSmoke => vmsmoke::cmd(),
        Cmd::VmmTier => vmm_tier::run(),
        Cmd::Bench { args } => bench::run(args),
    }
}
