//! `cargo xtask bench`: one L1 node boot, side by side (not a pass/fail test):
//!
//! 1. **VMMs**: box-vmm, `qemu-system-x86_64 -M microvm` and Firecracker (when given: it is
//!    built outside the project, see `../shared/docs/firecracker.md`) boot the same ELF vmlinux
//!    and initramfs (the VMM tier's guest in its `bench` mode: print the marker, pause 1 s,
//!    reset) with 1 vCPU and 256 MiB, alternating so drift in the TCG-emulated L1 hits all
//!    alike. Per boot, `box-vmm-probe boot-time` times process start → the guest's first
//!    userspace line and → exit, and samples at the marker the VMM's RSS outside guest RAM and
//!    the VM's KVM counters (debugfs).
//! 2. **`box run --rm IMG -- true`**: wall time and the host's phases (box's own log), plus
//!    the boot's milestones from box-vmm's boot timer (VMM up, guest-init's milestones).
//! 3. **`box exec NAME -- true`**: median wall time of `--execs` runs and the exchanges with
//!    the guest the CLI counted.
//!
//! 4. **Network**: box-vmm (`--net tap=`) and `qemu -M microvm` with `virtio-net-device` on
//!    the same persistent TAP (qemu's userspace virtio-net, `vhost=off`: L1 has no vhost-net,
//!    and box-vmm's device is userspace too) boot the VMM tier's guest in its `netbench` mode:
//!    `--net-mib` MiB node→guest and guest→node over TCP, and `--rr` one-byte TCP round trips,
//!    all timed by `box-vmm-probe` on the node's clock.
//!
//! `--baseline DIR` adds the same `box run`/`box exec` measurements for the `box` and `box-vmm`
//! binaries in DIR (e.g. a build of an older commit), with the bzImage kernel, so "before" and
//! "after" are measured in one node. Absolute numbers are inflated by nested TCG; only the
//! ratios mean much.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::node;
use crate::product;
use crate::vmm_tier::{self, GUEST_CMDLINE, GUEST_INITRD, GUEST_UP};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Boots per VMM.
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
    /// `box run --rm IMG -- true` runs.
    #[arg(long, default_value_t = 3)]
    pub box_runs: u32,
    /// `box exec NAME -- true` runs (the median is reported).
    #[arg(long, default_value_t = 50)]
    pub execs: u32,
    /// A Firecracker binary (default `$BOX_BENCH_FIRECRACKER`).
    #[arg(long)]
    pub firecracker: Option<PathBuf>,
    /// A directory holding an older build's `box` and `box-vmm`, measured beside this one.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Network boots per VMM (0 skips the network part).
    #[arg(long, default_value_t = 2)]
    pub net_runs: u32,
    /// MiB moved each way per network boot.
    #[arg(long, default_value_t = 64)]
    pub net_mib: u32,
    /// One-byte TCP round trips per network boot (the latency).
    #[arg(long, default_value_t = 500)]
    pub rr: u32,
    /// Only the network part (no boot or `box` measurements).
    #[arg(long)]
    pub net_only: bool,
}

/// The VMMs in table order. `box-vmm-default` is box-vmm with its own default command line
/// (which adds `cryptomgr.notests`, see `box_vmm::config::DEFAULT_CMDLINE`); the others all
/// get the same one, Firecracker's usual plus `quiet`.
const VMMS: &[&str] = &["box-vmm", "box-vmm-default", "qemu", "firecracker"];

fn vmm_script(runs: u32, firecracker: bool) -> String {
    let fc = if firecracker {
        format!(
            r#"    cat > /tmp/fc.json <<FCEOF
{{"boot-source": {{"kernel_image_path": "$BOX_VMLINUX", "initrd_path": "{GUEST_INITRD}", "boot_args": "$CMD"}},
 "drives": [], "machine-config": {{"vcpu_count": 1, "mem_size_mib": 256}}}}
FCEOF
    echo "bench firecracker $i $(box-vmm-probe boot-time {GUEST_UP} 30 -- firecracker --no-api --config-file /tmp/fc.json --no-seccomp 2>/dev/null)""#
        )
    } else {
        String::new()
    };
    let default = box_vmm::config::DEFAULT_CMDLINE;
    format!(
        r#"
[ -d /sys/kernel/debug/kvm ] || mount -t debugfs debugfs /sys/kernel/debug
G={GUEST_INITRD}
CMD="{GUEST_CMDLINE} box.test=bench"
DEFAULT_CMD="{default}"
for i in $(seq 1 {runs}); do
    echo "bench box-vmm $i $(box-vmm-probe boot-time {GUEST_UP} 30 -- box-vmm --boot-timer --kernel "$BOX_VMLINUX" --initrd $G --mem 256 --cpus 1 --cmdline "$CMD" 2>/tmp/bv.err)"
    grep -o 'VMM up at [0-9]* ms ([0-9]* CPU ms)' /tmp/bv.err | sed "s/^/bench vmm-up box-vmm $i /"
    echo "bench box-vmm-default $i $(box-vmm-probe boot-time {GUEST_UP} 30 -- box-vmm --kernel "$BOX_VMLINUX" --initrd $G --mem 256 --cpus 1 --cmdline "$DEFAULT_CMD box.test=bench" 2>/dev/null)"
    echo "bench qemu $i $(box-vmm-probe boot-time {GUEST_UP} 30 -- qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=on -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -nographic -serial stdio -no-reboot -kernel "$BOX_VMLINUX" -initrd $G -append "$CMD box.end=poweroff" 2>/dev/null)"
{fc}
done
"#
    )
}

/// `box run` and `box exec` for one build: `label`, the `box` binary, and `exports` (shell
/// assignments selecting its box-vmm and kernel; each build gets its own state directory). Every command goes through
/// one wrapper script per build, so both builds pay the same shell start.
fn box_script(label: &str, box_bin: &str, exports: &str, runs: u32, execs: u32) -> String {
    let state = format!("/run/box-{label}");
    format!(
        r#"
cat > /tmp/bx-{label} <<BXEOF
#!/bin/sh
export BOX_STATE_DIR={state} {exports}
exec {box_bin} "\$@"
BXEOF
chmod +x /tmp/bx-{label}
SD={state}
for i in $(seq 1 {runs}); do
    w=$(BOX_LOG=box_shim=info box-vmm-probe wall -- /tmp/bx-{label} run --rm "$BOX_TEST_IMAGE" -- true 2>/tmp/run.err)
    echo "bench run {label} $i $w"
    grep -o '[a-z0-9-]*: [a-z ]* at [0-9.]*[mµn]*s' /tmp/run.err | sed "s/^/bench run-phase {label} $i /"
done
BOX_BOOT_TIMER=1 /tmp/bx-{label} run --name timed "$BOX_TEST_IMAGE" -- true >/dev/null 2>&1
grep 'boot-timer' "$SD/sandboxes/timed/vmm.log" | sed "s/^/bench milestone {label} /"
/tmp/bx-{label} rm -f timed >/dev/null 2>&1
/tmp/bx-{label} run -d --name ex "$BOX_TEST_IMAGE" -- sleep 100000 >/dev/null 2>/tmp/ex.err || cat /tmp/ex.err
for i in $(seq 1 {execs}); do
    echo "bench exec {label} $i $(box-vmm-probe wall -- /tmp/bx-{label} exec ex -- true)"
done
BOX_LOG=box_shim=info /tmp/bx-{label} exec ex -- true 2>&1 | grep -o '[0-9]* exchanges' | sed "s/^/bench exchanges {label} /"
/tmp/bx-{label} rm -f ex >/dev/null 2>&1
"#
    )
}

/// The network legs per VMM, alternating box-vmm and qemu on one persistent TAP (10.99.0.1 on
/// the node, 10.99.0.2 in the guest, the same MAC for both so the node's neighbour entry
/// holds). Every leg is bounded: the probe fails a leg after 60 s without progress, and the
/// shell kills what outlives its backstop.
fn net_script(runs: u32, mib: u32, rr: u32, baseline: bool) -> String {
    let bytes = u64::from(mib) << 20;
    let base = if baseline {
        r#"    netrun box-vmm-baseline $i box-vmm-baseline --kernel "$BOX_VMLINUX" --initrd $G --mem 256 --cpus 1 --cmdline "$CMD" --net tap=boxtap0,$NET"#
    } else {
        ""
    };
    format!(
        r#"
box-vmm-probe tap-persist boxtap0 >/dev/null 2>&1
ip addr add 10.99.0.1/24 dev boxtap0
ip link set boxtap0 up
G={GUEST_INITRD}
CMD="{GUEST_CMDLINE} box.test=netbench box.netbytes={bytes}"
NET="mac=02:b0:c5:99:00:02"
bounded() {{ ( sleep "$2"; kill -9 "$1" 2>/dev/null ) & bw=$!; wait "$1"; r=$?; kill $bw 2>/dev/null; return $r; }}
netrun() {{
    label=$1; i=$2; shift 2
    box-vmm-probe tcp-sink 7000 > /tmp/sink.out 2>&1 &
    spid=$!
    "$@" > /tmp/nb-con.log 2>&1 &
    vpid=$!
    n=0
    while ! grep -q "probe: net-ready" /tmp/nb-con.log; do
        kill -0 $vpid 2>/dev/null || break
        n=$((n+1)); [ $n -gt 1200 ] && break
        sleep 0.1
    done
    if grep -q "probe: net-ready" /tmp/nb-con.log; then
        echo "bench net $label $i to-guest $(box-vmm-probe tcp-send 10.99.0.2:7001 {bytes} 2>&1 | tail -n 1)"
        echo "bench net $label $i rr $(box-vmm-probe tcp-rr 10.99.0.2:7002 {rr} 2>&1 | tail -n 1)"
        bounded $spid 200
        echo "bench net $label $i from-guest $(tail -n 1 /tmp/sink.out)"
    else
        echo "bench net $label $i error: no net-ready from the guest: $(tail -n 3 /tmp/nb-con.log | tr '\r\n' '  ')"
        kill $spid 2>/dev/null
    fi
    bounded $vpid 60
}}
for i in $(seq 1 {runs}); do
    netrun box-vmm $i box-vmm --kernel "$BOX_VMLINUX" --initrd $G --mem 256 --cpus 1 --cmdline "$CMD" --net tap=boxtap0,$NET
    netrun qemu $i qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=on -enable-kvm -cpu host -m 256 -smp 1 -nodefaults -no-user-config -nographic -serial stdio -no-reboot -kernel "$BOX_VMLINUX" -initrd $G -append "$CMD box.end=poweroff" -netdev tap,id=n0,ifname=boxtap0,script=no,downscript=no,vnet_hdr=on,vhost=off -device virtio-net-device,netdev=n0,$NET
{base}
done
"#
    )
}

/// `bench net <vmm> <i> <leg> probe: ...` → (vmm, leg, value): MiB/s for the transfer legs,
/// µs for the round trips (`rr`, their mean).
fn parse_net(line: &str) -> Vec<(&str, &'static str, f64)> {
    let Some(rest) = line.trim_end().strip_prefix("bench net ") else {
        return Vec::new();
    };
    let mut w = rest.split_whitespace();
    let (Some(vmm), Some(_i), Some(leg)) = (w.next(), w.next(), w.next()) else {
        return Vec::new();
    };
    let field = |k: &str| -> Option<f64> {
        rest.split_whitespace()
            .find_map(|x| x.strip_prefix(k)?.strip_prefix('='))?
            .parse()
            .ok()
    };
    let mibps = |bytes: f64, ms: f64| (ms > 0.0).then(|| bytes / 1048576.0 / (ms / 1000.0));
    match leg {
        "to-guest" => {
            let bytes = rest
                .split_once("probe: tcp-sent ")
                .and_then(|(_, r)| r.split_whitespace().next()?.parse().ok());
            match (bytes, field("ms")) {
                (Some(b), Some(ms)) => mibps(b, ms)
                    .map(|v| vec![(vmm, "to-guest", v)])
                    .unwrap_or_default(),
                _ => Vec::new(),
            }
        }
        "from-guest" => match (field("bytes"), field("ms")) {
            (Some(b), Some(ms)) if b > 0.0 => mibps(b, ms)
                .map(|v| vec![(vmm, "from-guest", v)])
                .unwrap_or_default(),
            _ => Vec::new(),
        },
        "rr" => field("mean_us")
            .map(|v| vec![(vmm, "rr", v)])
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The network table: medians per VMM and box-vmm's ratio to qemu; failed legs are listed.
fn net_table(console: &str) -> String {
    let mut vals: BTreeMap<(String, &str), Vec<f64>> = BTreeMap::new();
    let mut failures = Vec::new();
    for l in console.lines().filter(|l| l.starts_with("bench net ")) {
        let got = parse_net(l);
        if got.is_empty() {
            failures.push(l.trim_end().to_string());
        }
        for (vmm, leg, v) in got {
            vals.entry((vmm.to_string(), leg)).or_default().push(v);
        }
    }
    let of = |vmm: &str, leg: &str| median_of(vals.get(&(vmm.to_string(), leg)));
    let n = |vmm: &str| vals.get(&(vmm.to_string(), "to-guest")).map_or(0, Vec::len);
    let baseline = vals.keys().any(|(v, _)| v == "box-vmm-baseline");
    let mut t = format!(
        "| network (median) | box-vmm (n={}) | qemu (n={}) | box-vmm/qemu |",
        n("box-vmm"),
        n("qemu")
    );
    if baseline {
        t.push_str(&format!(
            " box-vmm-baseline (n={}) | box-vmm/baseline |",
            n("box-vmm-baseline")
        ));
    }
    t.push_str(&format!(
        "\n{}|\n",
        "|---".repeat(if baseline { 6 } else { 4 })
    ));
    for (name, leg, unit) in [
        ("TCP node → guest (higher is better)", "to-guest", "MiB/s"),
        ("TCP guest → node (higher is better)", "from-guest", "MiB/s"),
        ("TCP 1-byte round trip, mean (lower is better)", "rr", "µs"),
    ] {
        let cell = |v: f64| {
            if v.is_nan() {
                "-".to_string()
            } else if unit == "µs" {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.2} {unit}")
            }
        };
        let (a, q) = (of("box-vmm", leg), of("qemu", leg));
        t.push_str(&format!(
            "| {name} | {} | {} | {} |",
            cell(a),
            cell(q),
            ratio(a, q)
        ));
        if baseline {
            let b = of("box-vmm-baseline", leg);
            t.push_str(&format!(" {} | {} |", cell(b), ratio(a, b)));
        }
        t.push('\n');
    }
    for f in failures {
        t.push_str(&format!("\nfailed: {f}"));
    }
    t.push('\n');
    t
}

/// One measured boot: `probe: boot-time ms=.. exit_ms=.. key=value ... exit=..`.
#[derive(Debug, Clone, Default)]
struct Sample {
    fields: BTreeMap<String, u64>,
}

/// `bench <vmm> <i> probe: boot-time k=v ...`
fn parse_boot(line: &str) -> Option<(&str, Sample)> {
    let rest = line.trim_end().strip_prefix("bench ")?;
    let vmm = rest.split_whitespace().next()?;
    let rest = rest.split_once("probe: boot-time ")?.1;
    let fields = rest
        .split_whitespace()
        .filter_map(|w| {
            let (k, v) = w.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    Some((vmm, Sample { fields }))
}

/// `bench vmm-up box-vmm <i> VMM up at N ms (M CPU ms)`
fn parse_vmm_up(line: &str) -> Option<Sample> {
    let rest = line.strip_prefix("bench vmm-up box-vmm ")?;
    let rest = rest.split_once("VMM up at ")?.1;
    let (ms, rest) = rest.split_once(" ms (")?;
    let cpu = rest.split_once(" CPU ms")?.0;
    let fields = [
        ("vmm_up_ms".to_string(), ms.parse().ok()?),
        ("vmm_up_cpu_ms".to_string(), cpu.parse().ok()?),
    ]
    .into();
    Some(Sample { fields })
}

/// `bench <kind> <label> <i> probe: wall ms=N exit=0` → (kind, label, ms) for exit 0.
fn parse_wall(line: &str) -> Option<(&str, &str, u64)> {
    let mut w = line.strip_prefix("bench ")?.split_whitespace();
    let kind = w.next()?;
    let label = w.next()?;
    let rest = line.split_once("probe: wall ")?.1;
    let ms = rest
        .split_whitespace()
        .find_map(|x| x.strip_prefix("ms="))?;
    let ok = rest.split_whitespace().any(|x| x == "exit=0");
    ok.then_some((kind, label, ms.parse().ok()?))
}

/// A Debug-printed Duration (`1.5s`, `230.1ms`, `12µs`) in ms.
fn duration_ms(s: &str) -> Option<f64> {
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix("µs") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("ns") {
        (n, 1e-6)
    } else {
        (s.strip_suffix('s')?, 1e3)
    };
    Some(num.parse::<f64>().ok()? * scale)
}

/// `bench run-phase <label> <i> <name>: <what> at <dur>` → (label, what, ms).
fn parse_phase(line: &str) -> Option<(&str, &str, f64)> {
    let rest = line.strip_prefix("bench run-phase ")?;
    let mut w = rest.splitn(3, ' ');
    let label = w.next()?;
    let _i = w.next()?;
    let rest = w.next()?;
    let (_, rest) = rest.split_once(": ")?;
    let (what, at) = rest.rsplit_once(" at ")?;
    Some((label, what, duration_ms(at)?))
}

/// `a / b` for a table cell, `-` when either side is missing.
fn ratio(a: f64, b: f64) -> String {
    let r = a / b;
    if r.is_finite() {
        format!("{r:.2}")
    } else {
        "-".into()
    }
}

/// The median of a series that may be missing (NaN then).
fn median_of(v: Option<&Vec<f64>>) -> f64 {
    median(v.cloned().unwrap_or_default())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The VMM table: one row per metric, medians per VMM, and box-vmm's ratio to each other.
fn vmm_table(console: &str) -> Result<String> {
    let mut samples: Vec<(String, Sample)> = Vec::new();
    for l in console.lines() {
        if let Some((vmm, s)) = parse_boot(l) {
            samples.push((vmm.to_string(), s));
        } else if let Some(s) = parse_vmm_up(l) {
            samples.push(("box-vmm".into(), s));
        }
    }
    let of = |vmm: &str, key: &str| -> Vec<f64> {
        samples
            .iter()
            .filter(|(v, _)| v == vmm)
            .filter_map(|(_, s)| s.fields.get(key).map(|&x| x as f64))
            .collect()
    };
    let present: Vec<&str> = VMMS
        .iter()
        .copied()
        .filter(|v| !of(v, "ms").is_empty())
        .collect();
    for v in ["box-vmm", "qemu"] {
        if !present.contains(&v) {
            bail!("no successful {v} boot");
        }
    }
    let metrics: &[(&str, &str, f64, &str)] = &[
        ("start → VMM up (first KVM_RUN)", "vmm_up_ms", 1.0, "ms"),
        ("  CPU time to VMM up", "vmm_up_cpu_ms", 1.0, "ms"),
        ("start → first userspace line", "ms", 1.0, "ms"),
        ("start → exit (guest pauses 1 s)", "exit_ms", 1.0, "ms"),
        ("VMM RSS outside guest RAM", "overhead_kb", 1024.0, "MiB"),
        ("VMM VmRSS (all)", "rss_kb", 1024.0, "MiB"),
        ("KVM exits to marker", "kvm_exits", 1.0, ""),
        ("  of which I/O port", "kvm_io_exits", 1.0, ""),
        ("  of which MMIO", "kvm_mmio_exits", 1.0, ""),
        ("  of which HLT", "kvm_halt_exits", 1.0, ""),
        ("  of which external IRQ", "kvm_irq_exits", 1.0, ""),
        ("page faults fixed by KVM", "kvm_pf_fixed", 1.0, ""),
        ("guest RAM mapped 2 MiB", "kvm_pages_2m", 1.0, "pages"),
        ("guest RAM mapped 4 KiB", "kvm_pages_4k", 1.0, "pages"),
    ];
    let mut t = String::from("| metric (median) |");
    for v in &present {
        t.push_str(&format!(" {v} (n={}) |", of(v, "ms").len()));
    }
    // Ratios: box-vmm to each other VMM on the same command line, and box-vmm with its own
    // default command line to Firecracker.
    let mut ratios: Vec<(&str, &str)> = present
        .iter()
        .copied()
        .filter(|v| !v.starts_with("box-vmm"))
        .map(|o| ("box-vmm", o))
        .collect();
    if present.contains(&"box-vmm-default") && present.contains(&"firecracker") {
        ratios.push(("box-vmm-default", "firecracker"));
    }
    for (a, b) in &ratios {
        t.push_str(&format!(" {a}/{b} |"));
    }
    t.push('\n');
    t.push_str(&"|---".repeat(1 + present.len() + ratios.len()));
    t.push_str("|\n");
    for (name, key, div, unit) in metrics {
        t.push_str(&format!("| {name} |"));
        for v in &present {
            let m = median(of(v, key));
            if m.is_nan() {
                t.push_str(" - |");
            } else if *div == 1.0 && unit.is_empty() {
                t.push_str(&format!(" {m:.0} |"));
            } else if *div == 1.0 {
                t.push_str(&format!(" {m:.0} {unit} |"));
            } else {
                t.push_str(&format!(" {:.1} {unit} |", m / div));
            }
        }
        for (a, o) in &ratios {
            t.push_str(&format!(
                " {} |",
                ratio(median(of(a, key)), median(of(o, key)))
            ));
        }
        t.push('\n');
    }
    let all = |v: &str| {
        of(v, "ms")
            .iter()
            .map(|x| format!("{x:.0}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    t.push_str("\nall boot times (ms):");
    for v in &present {
        t.push_str(&format!(" {v} [{}]", all(v)));
    }
    t.push('\n');
    Ok(t)
}

/// `box run` / `box exec` for each build label present: medians, phases, and the ratio of
/// this build to the baseline.
fn box_table(console: &str) -> String {
    let mut walls: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut phases: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut phase_order: Vec<String> = Vec::new();
    let mut exchanges: BTreeMap<String, String> = BTreeMap::new();
    let mut milestones: Vec<String> = Vec::new();
    for l in console.lines() {
        if let Some((kind, label, ms)) = parse_wall(l) {
            walls
                .entry((kind.into(), label.into()))
                .or_default()
                .push(ms as f64);
        } else if let Some((label, what, ms)) = parse_phase(l) {
            if !phase_order.iter().any(|p| p == what) {
                phase_order.push(what.to_string());
            }
            phases
                .entry((label.into(), what.into()))
                .or_default()
                .push(ms);
        } else if let Some(rest) = l.strip_prefix("bench exchanges ") {
            if let Some((label, n)) = rest.split_once(' ') {
                exchanges.insert(label.into(), n.trim().to_string());
            }
        } else if let Some(rest) = l.strip_prefix("bench milestone ") {
            milestones.push(rest.trim().to_string());
        }
    }
    let labels: Vec<&str> = ["this", "baseline"]
        .into_iter()
        .filter(|l| walls.keys().any(|(_, x)| x == l))
        .collect();
    let mut t = String::from("| measurement (median) |");
    for l in &labels {
        t.push_str(&format!(" {l} |"));
    }
    if labels.len() == 2 {
        t.push_str(" this/baseline |");
    }
    t.push('\n');
    t.push_str(&"|---".repeat(1 + labels.len() + usize::from(labels.len() == 2)));
    t.push_str("|\n");
    let mut row = |name: String, vals: Vec<f64>| {
        t.push_str(&format!("| {name} |"));
        for v in &vals {
            if v.is_nan() {
                t.push_str(" - |");
            } else {
                t.push_str(&format!(" {v:.0} ms |"));
            }
        }
        if vals.len() == 2 {
            t.push_str(&format!(" {} |", ratio(vals[0], vals[1])));
        }
        t.push('\n');
    };
    for (kind, name) in [
        ("run", "`box run --rm IMG -- true`"),
        ("exec", "`box exec NAME -- true`"),
    ] {
        let samples = |l: &str| walls.get(&(kind.to_string(), l.to_string()));
        let vals: Vec<f64> = labels.iter().map(|l| median_of(samples(l))).collect();
        let n: Vec<String> = labels
            .iter()
            .map(|l| samples(l).map_or(0, Vec::len).to_string())
            .collect();
        row(format!("{name} (n={})", n.join("/")), vals);
    }
    for p in &phase_order {
        let vals: Vec<f64> = labels
            .iter()
            .map(|l| median_of(phases.get(&(l.to_string(), p.clone()))))
            .collect();
        row(format!("  run: {p} at"), vals);
    }
    for l in &labels {
        if let Some(n) = exchanges.get(*l) {
            t.push_str(&format!(
                "\n{l}: `box exec -- true` had {n} with the guest (the CLI's count)"
            ));
        }
    }
    if !milestones.is_empty() {
        t.push_str("\n\nboot milestones of one `box run` (box-vmm's boot timer, ms since box-vmm started):\n");
        for m in milestones {
            t.push_str(&format!("  {m}\n"));
        }
    }
    t.push('\n');
    t
}

pub fn run(args: BenchArgs) -> Result<()> {
    let art = vmm_tier::prepare()?;
    let firecracker = args
        .firecracker
        .clone()
        .or_else(|| std::env::var_os("BOX_BENCH_FIRECRACKER").map(PathBuf::from))
        .filter(|p| p.is_file());
    if firecracker.is_none() && !args.net_only {
        println!(
            "bench: no Firecracker binary (--firecracker PATH or $BOX_BENCH_FIRECRACKER; the build recipe is ../shared/docs/firecracker.md): comparing box-vmm and qemu only"
        );
    }
    let mut spec = art.node_spec(String::new(), Duration::ZERO);
    // The node's $BOX_KERNEL is the bzImage; the prologue points box at the ELF vmlinux.
    let mut script = format!("BOX_BZIMAGE=\"$BOX_KERNEL\"; {}", product::env_prologue());
    let mut timeout = 300;
    if let Some(dir) = &args.baseline {
        // Renamed copies, so they sit on L1's PATH beside this build's. The network part
        // needs only box-vmm.
        let stage = crate::paths::target_dir().join("bench-baseline");
        std::fs::create_dir_all(&stage)?;
        for (from, to) in [("box", "box-baseline"), ("box-vmm", "box-vmm-baseline")] {
            let src = dir.join(from);
            if args.net_only && from == "box" {
                continue;
            }
            std::fs::copy(&src, stage.join(to))
                .with_context(|| format!("--baseline: {}", src.display()))?;
            spec.bins.push(stage.join(to));
        }
    }
    if !args.net_only {
        let prod = product::prepare()?;
        spec.bins.extend(prod.bins.iter().cloned());
        spec.files.extend(prod.files.iter().cloned());
        if let Some(fc) = &firecracker {
            spec.bins.push(fc.clone());
        }
        script.push_str(&vmm_script(args.runs, firecracker.is_some()));
        script.push_str(&box_script("this", "box", "", args.box_runs, args.execs));
        if args.baseline.is_some() {
            // As that build ran in the node: the bzImage, its own state directory.
            script.push_str(&box_script(
                "baseline",
                "box-baseline",
                "BOX_VMM=$(command -v box-vmm-baseline) BOX_KERNEL=$BOX_BZIMAGE",
                args.box_runs,
                args.execs,
            ));
        }
        let boots = u64::from(args.runs) * 3;
        let boxes = u64::from(args.box_runs + 2) * if args.baseline.is_some() { 2 } else { 1 };
        let execs = u64::from(args.execs) * if args.baseline.is_some() { 2 } else { 1 };
        timeout += 40 * boots + 90 * boxes + 5 * execs;
    }
    if args.net_runs > 0 {
        let baseline = args.baseline.is_some();
        script.push_str(&net_script(args.net_runs, args.net_mib, args.rr, baseline));
        // Each boot's legs are bounded by the script (60 s without progress; 200 s for the
        // sink, 60 s for the exit).
        let vmms = if baseline { 3 } else { 2 };
        timeout += u64::from(args.net_runs) * vmms * 420;
    }
    spec.command = script;
    spec.timeout = Duration::from_secs(timeout);
    let out = node::run_in_node(&spec)?;
    for l in out.console.lines().filter(|l| l.starts_with("bench ")) {
        println!("{l}");
    }
    println!("\nbench: one L1 node (L1 under qemu TCG: compare ratios only)\n");
    if args.net_runs > 0 {
        print!("{}", net_table(&out.console));
        println!();
    }
    if args.net_only {
        return Ok(());
    }
    match vmm_table(&out.console) {
        Ok(t) => {
            println!("{} boots per VMM\n", args.runs);
            print!("{t}");
            println!();
            print!("{}", box_table(&out.console));
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
    fn parses_boots_and_builds_the_vmm_table() {
        let console = "bench box-vmm 1 probe: boot-time ms=100 exit_ms=1200 rss_kb=2048 hwm_kb=4096 overhead_kb=1024 kvm_exits=10 kvm_pages_2m=40 exit=10\n\
                       bench qemu 1 probe: boot-time ms=400 exit_ms=1600 rss_kb=8192 hwm_kb=8192 overhead_kb=4096 kvm_exits=40 kvm_pages_2m=40 exit=0\n\
                       bench box-vmm 2 probe: boot-time ms=300 exit_ms=1400 rss_kb=2048 hwm_kb=4096 overhead_kb=1024 kvm_exits=30 kvm_pages_2m=40 exit=10\n\
                       bench qemu 2 probe: error: no `BOX-GUEST-UP` line (exit 1)\n\
                       bench vmm-up box-vmm 1 VMM up at 30 ms (20 CPU ms)\n\
                       bench firecracker 1 probe: boot-time ms=250 exit_ms=1300 rss_kb=4096 hwm_kb=4096 overhead_kb=2048 kvm=none exit=0\n";
        let t = vmm_table(console).unwrap();
        assert!(
            t.contains("| start → first userspace line | 200 ms | 400 ms | 250 ms | 0.50 | 0.80 |"),
            "{t}"
        );
        assert!(
            t.contains("| VMM RSS outside guest RAM | 1.0 MiB | 4.0 MiB | 2.0 MiB | 0.25 | 0.50 |"),
            "{t}"
        );
        assert!(
            t.contains("| KVM exits to marker | 20 | 40 | - | 0.50 | - |"),
            "{t}"
        );
        assert!(
            t.contains("| start → VMM up (first KVM_RUN) | 30 ms | - | - | - | - |"),
            "{t}"
        );
        assert!(vmm_table("bench box-vmm 1 probe: boot-time ms=1 exit=0").is_err());
    }

    #[test]
    fn parses_walls_phases_and_exchanges() {
        let console = "bench run this 1 probe: wall ms=5000 exit=0\n\
                       bench run-phase this 1 abc: process launched at 12.5ms\n\
                       bench run-phase this 1 abc: guest ready at 2.5s\n\
                       bench run baseline 1 probe: wall ms=20000 exit=0\n\
                       bench run-phase baseline 1 def: guest ready at 10s\n\
                       bench exec this 1 probe: wall ms=100 exit=0\n\
                       bench exec this 2 probe: wall ms=300 exit=0\n\
                       bench exec this 3 probe: wall ms=999 exit=1\n\
                       bench exec baseline 1 probe: wall ms=1000 exit=0\n\
                       bench exchanges this 3 exchanges\n\
                       bench milestone this box-vmm: boot-timer: VMM up at 5 ms (2 CPU ms)\n";
        let t = box_table(console);
        assert!(
            t.contains("| `box run --rm IMG -- true` (n=1/1) | 5000 ms | 20000 ms | 0.25 |"),
            "{t}"
        );
        assert!(
            t.contains("| `box exec NAME -- true` (n=2/1) | 200 ms | 1000 ms | 0.20 |"),
            "{t}"
        );
        assert!(
            t.contains("|   run: guest ready at | 2500 ms | 10000 ms | 0.25 |"),
            "{t}"
        );
        assert!(
            t.contains("|   run: process launched at | 12 ms | - | - |"),
            "{t}"
        );
        assert!(
            t.contains("this: `box exec -- true` had 3 exchanges"),
            "{t}"
        );
        assert!(t.contains("VMM up at 5 ms"), "{t}");
        assert_eq!(duration_ms("1.5s"), Some(1500.0));
        assert_eq!(duration_ms("250µs"), Some(0.25));
    }

    #[test]
    fn parses_network_legs_and_builds_the_net_table() {
        let console = "bench net box-vmm 1 to-guest probe: tcp-sent 33554432 ms=4000\n\
                       bench net box-vmm 1 rr probe: tcp-rr n=200 mean_us=500\n\
                       bench net box-vmm 1 from-guest probe: tcp-sink bytes=33554432 ms=8000\n\
                       bench net qemu 1 to-guest probe: tcp-sent 33554432 ms=2000\n\
                       bench net qemu 1 rr probe: tcp-rr n=200 mean_us=1000\n\
                       bench net qemu 1 from-guest probe: error: read after 5 bytes: timed out\n\
                       bench net qemu 2 error: no net-ready from the guest: panic\n";
        let t = net_table(console);
        assert!(
            t.contains("| TCP node → guest (higher is better) | 8.00 MiB/s | 16.00 MiB/s | 0.50 |"),
            "{t}"
        );
        assert!(
            t.contains("| TCP guest → node (higher is better) | 4.00 MiB/s | - | - |"),
            "{t}"
        );
        assert!(
            t.contains(
                "| TCP 1-byte round trip, mean (lower is better) | 500 µs | 1000 µs | 0.50 |"
            ),
            "{t}"
        );
        assert!(
            t.contains("failed: bench net qemu 1 from-guest probe: error"),
            "{t}"
        );
        assert!(
            t.contains("failed: bench net qemu 2 error: no net-ready"),
            "{t}"
        );
    }
}
