//! `k8s-cri-client`: plays kubelet against containerd's CRI socket to test the Box runtime
//! (RuntimeClass handler `box`). Built static: it runs inside the nested node, which has no libc.
//!
//! One line a scenario, `ok N <what>` or `FAIL N <what>: <why>`, then `cri: P passed, F failed`;
//! the exit status is non-zero when a scenario or the final cleanup failed, 2 when the runtime
//! could not be reached at all.

mod cri;
mod crilog;
mod node;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "k8s-cri-client",
    about = "Plays kubelet against containerd's CRI socket: pods and containers on a runtime handler, checked end to end"
)]
struct Args {
    /// containerd's socket (CRI is served on it)
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    socket: PathBuf,
    /// The container image, already in containerd's k8s.io namespace (nothing is pulled)
    #[arg(long)]
    image: String,
    /// RunPodSandbox's runtime_handler
    #[arg(long, default_value = "box")]
    runtime_handler: String,
    /// Run only these scenarios (1-10, comma-separated); pods are made by the first that needs them
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
    /// Where pod log directories are made (one per pod)
    #[arg(long, default_value = "/tmp/cri-logs")]
    log_root: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cri: error: tokio runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            println!("cri: error: {}", chain(&e));
            ExitCode::from(2)
        }
    }
}

/// An error and its causes, `a: b: c`, a cause that repeats the one before it left out
/// (tonic's transport errors do).
pub fn chain(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !parts.last().is_some_and(|p| p.ends_with(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

/// One line, whatever the message carries.
fn one_line(s: &str) -> String {
    s.replace('\n', " | ")
}

async fn run(args: Args) -> Result<bool> {
    let selected: Vec<u32> = if args.only.is_empty() {
        (1..=scenarios::COUNT).collect()
    } else {
        let mut v = args.only.clone();
        v.sort_unstable();
        v.dedup();
        if let Some(bad) = v.iter().find(|n| !(1..=scenarios::COUNT).contains(*n)) {
            bail!("--only: no scenario {bad} (1-{})", scenarios::COUNT);
        }
        v
    };
    let cri = cri::connect(&args.socket).await?;
    let v = cri.version().await?;
    println!(
        "cri: runtime {} {} (CRI {})",
        v.runtime_name, v.runtime_version, v.runtime_api_version
    );

    let mut ctx = scenarios::Ctx::new(cri, args.image, args.runtime_handler, args.log_root);
    let (mut passed, mut failed) = (0, 0);
    for n in selected {
        let t = Instant::now();
        let outcome = scenarios::run(&mut ctx, n).await;
        let cleanup = ctx.cleanup_containers().await;
        let outcome = match (outcome, cleanup) {
            (Ok(seen), Ok(())) => Ok(seen),
            (Ok(_), Err(c)) => Err(chain(&c)),
            (Err(e), Ok(())) => Err(chain(&e)),
            (Err(e), Err(c)) => Err(format!("{}; {}", chain(&e), chain(&c))),
        };
        let took = t.elapsed().as_secs_f64();
        match outcome {
            Ok(seen) => {
                passed += 1;
                println!(
                    "ok {n} {} ({}; {took:.1}s)",
                    scenarios::title(n),
                    one_line(&seen)
                );
            }
            Err(why) => {
                failed += 1;
                println!(
                    "FAIL {n} {}: {} ({took:.1}s)",
                    scenarios::title(n),
                    one_line(&why)
                );
            }
        }
        if let Some(timing) = ctx.timing.take() {
            println!("cri: timing {n}: {timing}");
        }
    }
    let cleaned = match ctx.final_cleanup().await {
        Ok(done) => {
            if !done.is_empty() {
                println!("cri: cleanup: pods {}", done.join(", "));
            }
            true
        }
        Err(e) => {
            println!("cri: cleanup FAILED: {}", one_line(&chain(&e)));
            false
        }
    };
    println!("cri: {passed} passed, {failed} failed");
    Ok(failed == 0 && cleaned)
}
