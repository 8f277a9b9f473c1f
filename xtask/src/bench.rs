//! `cargo xtask bench`: box-vmm against `qemu-system-x86_64 -M microvm -enable-kvm -cpu host`,
//! in one L1 node boot, on the same kernel (the stock Debian bzImage) and initramfs (the VMM
//! tier's, in its `bench` mode: print the marker, sleep 1 s, power off). Not a pass/fail test.
//!
//! Per run, `box-vmm-probe boot-time` measures process start → the guest's first userspace
//! line on the console, and samples the VMM's VmRSS/VmHWM right then, while the guest is up.
//! Runs alternate between the two VMMs so drift in the TCG-emulated L1 hits both alike.
//! Absolute numbers are inflated by nested TCG; only the ratios mean much.

use crate::node;
use crate::vmm_tier::{self, GUEST_CMDLINE, GUEST_INITRD, GUEST_UP};
use anyhow::{bail, Result};
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Boots per VMM.
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
}

const VMMS: &[&str] = &["box-vmm", "qemu"];

fn script(runs: u32) -> String {
    format!(
        r#"
G={GUEST_INITRD}
CMD="{GUEST_CMDLINE} box.test=bench"
for i in $(seq 1 {runs}); do
    echo "bench box-vmm $i $(box-vmm-probe boot-time {GUEST_UP} 30 -- box-vmm --kernel "$BOX_KERNEL" --initrd $G --mem 256 --cpus 1 --cmdline "$CMD")"
    echo "bench qemu $i $(box-vmm-probe boot-time {GUEST_UP} 30 -- qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=on -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -nographic -serial stdio -no-reboot -kernel "$BOX_KERNEL" -initrd $G -append "$CMD")"
done
"#
    )
}

/// One measured boot.
#[derive(Debug, Clone, Copy)]
struct Sample {
    ms: u64,
    rss_kb: u64,
    hwm_kb: u64,
}

/// Name, the field, divisor for display, unit.
type Metric = (&'static str, fn(&Sample) -> u64, f64, &'static str);

/// `bench <vmm> <i> probe: boot-time ms=.. rss_kb=.. hwm_kb=.. exit=..`
fn parse(line: &str) -> Option<(&str, Sample)> {
    let rest = line.trim_end().strip_prefix("bench ")?;
    let vmm = rest.split_whitespace().next()?;
    let rest = rest.split_once("probe: boot-time ")?.1;
    let field = |k: &str| -> Option<u64> {
        rest.split_whitespace()
            .find_map(|w| w.strip_prefix(k)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    Some((
        vmm,
        Sample {
            ms: field("ms")?,
            rss_kb: field("rss_kb")?,
            hwm_kb: field("hwm_kb")?,
        },
    ))
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    match v.len() {
        0 => 0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

/// The table: one row per metric, medians per VMM, and box-vmm/qemu.
fn table(console: &str) -> Result<String> {
    let mut samples: Vec<(String, Sample)> = Vec::new();
    for l in console.lines() {
        if let Some((vmm, s)) = parse(l) {
            samples.push((vmm.to_string(), s));
        }
    }
    let of = |vmm: &str, f: fn(&Sample) -> u64| -> Vec<u64> {
        samples
            .iter()
            .filter(|(v, _)| v == vmm)
            .map(|(_, s)| f(s))
            .collect()
    };
    for v in VMMS {
        if of(v, |s| s.ms).is_empty() {
            bail!("no successful {v} boot");
        }
    }
    let metrics: [Metric; 3] = [
        ("start → first userspace line", |s| s.ms, 1.0, "ms"),
        ("VMM VmRSS, guest up", |s| s.rss_kb, 1024.0, "MiB"),
        ("VMM VmHWM, guest up", |s| s.hwm_kb, 1024.0, "MiB"),
    ];
    let mut t = format!(
        "| metric (median) | box-vmm (n={}) | qemu microvm (n={}) | box-vmm/qemu |\n|---|---|---|---|\n",
        of("box-vmm", |s| s.ms).len(),
        of("qemu", |s| s.ms).len()
    );
    for (name, f, div, unit) in metrics {
        let a = median(of("box-vmm", f)) as f64;
        let b = median(of("qemu", f)) as f64;
        let ratio = if b > 0.0 { a / b } else { f64::NAN };
        t.push_str(&format!(
            "| {name} | {:.1} {unit} | {:.1} {unit} | {ratio:.2} |\n",
            a / div,
            b / div
        ));
    }
    let ms = |v: &str| {
        of(v, |s| s.ms)
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    t.push_str(&format!(
        "\nall boot times (ms): box-vmm [{}], qemu [{}]\n",
        ms("box-vmm"),
        ms("qemu")
    ));
    Ok(t)
}

pub fn run(args: BenchArgs) -> Result<()> {
    let art = vmm_tier::prepare()?;
    let timeout = Duration::from_secs(300 + 120 * u64::from(args.runs));
    let out = node::run_in_node(&art.node_spec(script(args.runs), timeout))?;
    for l in out.console.lines().filter(|l| l.starts_with("bench ")) {
        println!("{l}");
    }
    match table(&out.console) {
        Ok(t) => {
            println!(
                "\nbench: {} boots per VMM in one L1 node (L1 under qemu TCG: compare ratios only)\n",
                args.runs
            );
            print!("{t}");
            Ok(())
        }
        Err(e) => {
            for l in out.console.lines() {
                println!("  {l}");
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_samples_and_builds_the_table() {
        let console = "bench box-vmm 1 probe: boot-time ms=100 rss_kb=2048 hwm_kb=4096 exit=0\n\
                       bench qemu 1 probe: boot-time ms=400 rss_kb=8192 hwm_kb=8192 exit=0\n\
                       bench box-vmm 2 probe: boot-time ms=300 rss_kb=2048 hwm_kb=4096 exit=0\n\
                       bench qemu 2 probe: error: no `BOX-GUEST-UP` line (exit 1)\n";
        let t = table(console).unwrap();
        assert!(
            t.contains("| start → first userspace line | 200.0 ms | 400.0 ms | 0.50 |"),
            "{t}"
        );
        assert!(
            t.contains("| VMM VmRSS, guest up | 2.0 MiB | 8.0 MiB | 0.25 |"),
            "{t}"
        );
        assert!(table("bench box-vmm 1 probe: boot-time ms=1 rss_kb=1 hwm_kb=1 exit=0").is_err());
    }
}
