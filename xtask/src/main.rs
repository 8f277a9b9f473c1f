//! `cargo xtask ...`: the project's automation: CI, the demo, images, the nested node, benchmarks.

mod bench;
mod ci;
mod cpio;
mod host;
mod kernel;
mod l1image;
mod l1init;
mod node;
mod paths;
mod tree;
mod util;
mod vmm_tier;

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
    /// Run a shell command in an L1 node (Linux under qemu TCG with a real /dev/kvm), where
    /// microVMs boot. Exits with the command's exit code; 125 if the node itself failed.
    Node {
        #[command(flatten)]
        args: node::NodeArgs,
    },
    /// Fetch (or find cached) Debian's cloud kernel for guests and print its paths.
    Kernel,
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
        Cmd::Demo => {
            println!("cargo xtask demo: not yet available: `box run` in a real microVM arrives with the end-to-end issue");
            Ok(())
        }
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
        Cmd::VmmTier => vmm_tier::run(),
        Cmd::Bench { args } => bench::run(args),
    }
}
