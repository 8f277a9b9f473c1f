//! `cargo xtask node`: run a shell command in an L1 node, a Linux VM under qemu TCG with a real
//! `/dev/kvm` (nested SVM, `kvm_amd`), where microVMs can boot. The recipe and its reasons are in
//! shared/docs/nested-kvm.md.
//!
//! Other xtask commands call [`run_in_node`] to run a test script there and parse its output.

use crate::l1image::{self, RunSpec};
use crate::l1init::{self, Marker};
use crate::{host, kernel, paths};
use anyhow::{Context, Result};
use std::collections::VecDeque;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The L1 kernel command line. `tsc_early_khz`: without it L1 fails TSC calibration on microvm
/// under TCG and hangs in about one boot of three.
const L1_CMDLINE: &str = "tsc_early_khz=2000000 console=ttyS0 panic=-1 quiet";
/// One vCPU: with two, multi-threaded TCG runs them on two host threads, and in one CI run
/// L1 corrupted its own memory (a silent L2 hang, then "corrupted stack end" in a vCPU
/// thread), the signature of a cross-thread TLB race in TCG. One vCPU has no such race and
/// measured the same here: the e2e tier took 104 s in the node with one vCPU, 101-107 s
/// with two.
const L1_CPUS: &str = "1";
/// How long qemu may take to exit once the command has finished and L1 has run `poweroff -f`.
const POWEROFF_GRACE: Duration = Duration::from_secs(30);
/// Console lines kept for error messages.
const TAIL_LINES: usize = 40;

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    /// A host binary to put on L1's PATH (/usr/local/bin), with the shared libraries `ldd`
    /// lists for it. Repeatable.
    #[arg(long = "bin", value_name = "PATH")]
    pub bins: Vec<PathBuf>,
    /// A host file or directory to copy into L1 at DEST (absolute). Repeatable.
    #[arg(long = "file", value_name = "SRC:DEST", value_parser = parse_file_arg)]
    pub files: Vec<FileArg>,
    /// Backstop: kill L1 if the command has not finished after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 1200)]
    pub timeout: u64,
    /// The shell command to run in L1 (with `sh -c`; several words are joined with spaces).
    /// In it, `box` and `box-vmm` are on PATH, $BOX_TEST_IMAGE names the busybox test image,
    /// and $BOX_KERNEL, $BOX_INITRD, $BOX_VMLINUX and $BOX_MODULES the guest kernel, initramfs
    /// and modules.
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct FileArg {
    pub src: PathBuf,
    pub dest: String,
}

fn parse_file_arg(s: &str) -> Result<FileArg, String> {
    let (src, dest) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected SRC:DEST"))?;
    if !dest.starts_with('/') {
        return Err(format!("`{s}`: DEST must be an absolute path inside L1"));
    }
    if !Path::new(src).exists() {
        return Err(format!("`{s}`: {src} does not exist"));
    }
    Ok(FileArg {
        src: src.into(),
        dest: dest.into(),
    })
}

/// What to run in the node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub command: String,
    pub bins: Vec<PathBuf>,
    pub files: Vec<(PathBuf, String)>,
    pub timeout: Duration,
    /// Echo the console as it arrives: boot messages to stderr, the command's output to stdout.
    pub stream: bool,
}

impl NodeSpec {
    // Library surface for other xtask commands (ci, bench); the CLI builds its spec directly.
    #[allow(dead_code)]
    pub fn new(command: impl Into<String>) -> Self {
        NodeSpec {
            command: command.into(),
            bins: Vec::new(),
            files: Vec::new(),
            timeout: Duration::from_secs(1200),
            stream: false,
        }
    }
}

#[derive(Debug)]
// `console` and `boot_console` are for callers that parse output; the CLI streams it instead.
#[allow(dead_code)]
pub struct NodeOutcome {
    /// The command's exit status as `sh` reports it (128+n for a signal).
    pub exit_code: i32,
    /// What the command printed (and anything the L1 kernel printed meanwhile), markers removed.
    pub console: String,
    /// What L1 printed before the command started and after it ended: kernel and init messages.
    pub boot_console: String,
    /// qemu start → the command starting in L1.
    pub boot_time: Duration,
    /// qemu start → qemu exit.
    pub run_time: Duration,
    /// The first line where L1's own kernel reported a fault (panic, BUG, oops), if any.
    pub l1_fault: Option<String>,
}

/// The L1 node itself failed: its kernel faulted, or it died before the command reported an
/// exit code. Whatever ran in it says nothing about the product.
#[derive(Debug)]
pub struct NodeFault(pub String);

impl std::fmt::Display for NodeFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NodeFault {}

/// What L1's kernel prints when it is no longer trustworthy. Under qemu TCG a nested node
/// very occasionally corrupts its own memory (seen once in CI: "corrupted stack end detected
/// inside scheduler" in a VMM's vCPU thread, after an L2 guest had hung silently).
const L1_FAULTS: &[&str] = &[
    "Kernel panic",
    "BUG:",
    "kernel BUG at",
    "Oops:",
    "general protection fault",
    "double fault",
];

/// Whether a console line is L1's kernel reporting a fault. Kernel lines start with a
/// `[ seconds]` stamp; the scripts' own lines never do, so an L2 console tail quoted in a
/// result line does not count.
fn is_l1_fault(line: &str) -> bool {
    let Some(rest) = line.strip_prefix('[') else {
        return false;
    };
    let Some((stamp, msg)) = rest.split_once(']') else {
        return false;
    };
    stamp.trim().parse::<f64>().is_ok() && L1_FAULTS.iter().any(|f| msg.contains(f))
}

/// Runs a test tier in a node and judges its outcome. A tier that fails in a node whose own
/// kernel faulted (or died) is run once more in a fresh node, loudly: that failure is the
/// emulator's, not evidence about the product. A failure in a healthy node is never retried.
pub fn run_tier<T>(
    name: &str,
    spec: &NodeSpec,
    judge: impl Fn(&NodeOutcome) -> Result<T>,
) -> Result<T> {
    retry_on_fault(name, || run_in_node(spec), judge)
}

fn retry_on_fault<T>(
    name: &str,
    mut run: impl FnMut() -> Result<NodeOutcome>,
    judge: impl Fn(&NodeOutcome) -> Result<T>,
) -> Result<T> {
    const ATTEMPTS: u32 = 2;
    for attempt in 1..=ATTEMPTS {
        let (fault, failure) = match run() {
            Ok(out) => match (judge(&out), out.l1_fault) {
                (Ok(v), None) => return Ok(v),
                (Ok(v), Some(fault)) => {
                    eprintln!(
                        "xtask {name}: passed, although the L1 node's kernel reported: {fault}"
                    );
                    return Ok(v);
                }
                (Err(e), None) => return Err(e),
                (Err(e), Some(fault)) => (fault, e),
            },
            Err(e) => match e.downcast_ref::<NodeFault>() {
                Some(f) => (f.0.clone(), e),
                None => return Err(e),
            },
        };
        if attempt == ATTEMPTS {
            return Err(failure.context(format!(
                "{name}: the L1 node faulted in {ATTEMPTS} of {ATTEMPTS} runs (last: {fault})"
            )));
        }
        eprintln!(
            "xtask {name}: THE L1 NODE ITSELF FAULTED ({fault}); this run ({failure:#}) is void. \
             Running {name} once more in a fresh node."
        );
    }
    unreachable!("the last attempt returns")
}

/// `cargo xtask node`: returns the command's exit code.
pub fn cmd(args: NodeArgs) -> Result<i32> {
    let product = crate::product::prepare()?;
    let mut bins = product.bins;
    bins.extend(args.bins);
    let mut files = product.files;
    files.extend(args.files.into_iter().map(|f| (f.src, f.dest)));
    let spec = NodeSpec {
        command: format!(
            "{}{}",
            crate::product::env_prologue(),
            args.command.join(" ")
        ),
        bins,
        files,
        timeout: Duration::from_secs(args.timeout),
        stream: true,
    };
    let t0 = Instant::now();
    let out = run_in_node(&spec)?;
    eprintln!(
        "xtask node: exit {} | L1 boot (qemu start → command start) {:.1} s | qemu total {:.1} s | all {:.1} s",
        out.exit_code,
        out.boot_time.as_secs_f64(),
        out.run_time.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
    Ok(out.exit_code)
}

/// Boots an L1 node, runs `spec.command` in it, and returns its exit code and output. An error
/// means the node itself failed (qemu died, L1 never ran the command, the backstop fired); its
/// message carries the console's tail.
pub fn run_in_node(spec: &NodeSpec) -> Result<NodeOutcome> {
    host::ensure_node_tools()?;
    let kernel = kernel::fetch()?;
    let dir = paths::images_dir().join("node");
    let base = l1image::base(&kernel, &dir)?;

    remove_stale(&dir);
    let nonce = nonce();
    let modules: Vec<String> = l1image::l1_modules(&kernel)?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let init = l1init::script(&nonce, &l1image::guest_kernel(&kernel), &modules);
    let pid = std::process::id();
    let segment = TempFile(dir.join(format!("run-{pid}.cpio")));
    let initrd = TempFile(dir.join(format!("initrd-{pid}.img")));
    l1image::run_segment(
        &RunSpec {
            init: &init,
            command: &spec.command,
            bins: &spec.bins,
            files: &spec.files,
        },
        &segment.0,
    )?;
    // The kernel unpacks concatenated archives in order, so the small per-run segment lands on
    // top of the cached base without rebuilding it.
    concat(&[&base, &segment.0], &initrd.0)?;

    let mut cmd = qemu_command(&kernel.vmlinux, &initrd.0)?;
    let line = host::describe(&cmd);
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("could not start `{line}`"))?;
    watch(child, started, &l1init::marker_prefix(&nonce), spec)
}

/// qemu booting L1, per the recipe in nested-kvm.md.
fn qemu_command(vmlinux: &Path, initrd: &Path) -> Result<Command> {
    let qemu = host::which("qemu-system-x86_64")
        .context("qemu-system-x86_64 not found (package qemu-system-x86)")?;
    let mut cmd = Command::new(qemu);
    // -cpu max: SVM with nested paging, plus XSAVE, which L2 VMMs (Firecracker) require.
    cmd.args(["-M", "microvm,x-option-roms=off,rtc=on"])
        .args([
            "-accel",
            "tcg,thread=multi",
            "-smp",
            L1_CPUS,
            "-cpu",
            "max",
            "-m",
            "4096",
        ])
        .args(["-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(vmlinux)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", L1_CMDLINE])
        // The command's stdin is /dev/null inside L1; none of ours goes to the serial port.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // If xtask is killed outright (a CI timeout's SIGKILL), qemu must not linger burning both
    // cores under TCG.
    // SAFETY: the closure runs in the forked child before exec and only calls prctl, which is
    // async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

enum Event {
    Out(String),
    Err(String),
    OutEnd,
    ErrEnd,
}

/// Follows qemu's output until it exits (or the backstop fires), streaming and collecting it.
fn watch(mut child: Child, started: Instant, prefix: &str, spec: &NodeSpec) -> Result<NodeOutcome> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().context("qemu stdout")?;
    let err = child.stderr.take().context("qemu stderr")?;
    spawn_lines(out, tx.clone(), Event::Out, Event::OutEnd);
    spawn_lines(err, tx, Event::Err, Event::ErrEnd);

    let mut console = String::new();
    let mut boot_console = String::new();
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut boot_time = None;
    let mut exit_code = None;
    let mut l1_fault: Option<String> = None;
    let mut open = 2;
    let mut deadline = started + spec.timeout;
    while open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = match rx.recv_timeout(left) {
            Ok(e) => e,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                if let Some(code) = exit_code {
                    // The command finished; only L1's poweroff stalled.
                    eprintln!("xtask node: L1 did not power off; killed qemu");
                    return Ok(NodeOutcome {
                        exit_code: code,
                        console,
                        boot_console,
                        boot_time: boot_time.unwrap_or_default(),
                        run_time: started.elapsed(),
                        l1_fault,
                    });
                }
                let msg = format!(
                    "the L1 node did not finish within {} s (--timeout){}; killed qemu. Console tail:\n{}",
                    spec.timeout.as_secs(),
                    fault_hint(&l1_fault),
                    join(&tail)
                );
                // A hang after L1's kernel faulted is the node's; otherwise it may be ours.
                return Err(match l1_fault {
                    Some(_) => NodeFault(msg).into(),
                    None => anyhow::anyhow!(msg),
                });
            }
        };
        match event {
            Event::Out(line) => {
                push_tail(&mut tail, &line);
                if l1_fault.is_none() && is_l1_fault(&line) {
                    l1_fault = Some(line.trim().to_string());
                }
                let (text, marker) = match l1init::parse(&line, prefix) {
                    Some((before, m)) => (before, Some(m)),
                    None => (line.as_str(), None),
                };
                // A marker right after unterminated output: the output is still a line of its own.
                if marker.is_none() || !text.is_empty() {
                    // Only what L1 prints between the markers is the command's output; before
                    // and after is boot and shutdown chatter.
                    if boot_time.is_some() && exit_code.is_none() {
                        console.push_str(text);
                        console.push('\n');
                        if spec.stream {
                            // A closed stdout (`| head`) must not abort the run: L1 still has
                            // to be waited for and its exit code returned.
                            let _ = writeln!(std::io::stdout(), "{text}");
                        }
                    } else {
                        boot_console.push_str(text);
                        boot_console.push('\n');
                        if spec.stream {
                            let _ = writeln!(std::io::stderr(), "{text}");
                        }
                    }
                }
                match marker {
                    Some(Marker::Start(_)) => boot_time = Some(started.elapsed()),
                    Some(Marker::Exit(code)) => {
                        exit_code = Some(code);
                        deadline = deadline.min(Instant::now() + POWEROFF_GRACE);
                    }
                    None => {}
                }
            }
            Event::Err(line) => {
                push_tail(&mut tail, &format!("qemu: {line}"));
                if spec.stream {
                    let _ = writeln!(std::io::stderr(), "qemu: {line}");
                }
            }
            Event::OutEnd | Event::ErrEnd => open -= 1,
        }
    }
    let status = child.wait().context("waiting for qemu")?;
    let run_time = started.elapsed();
    match (exit_code, boot_time) {
        (Some(exit_code), Some(boot_time)) => Ok(NodeOutcome {
            exit_code,
            console,
            boot_console,
            boot_time,
            run_time,
            l1_fault,
        }),
        (_, None) => Err(NodeFault(format!(
            "the L1 node exited ({status}) before running the command{}. Console tail:\n{}",
            fault_hint(&l1_fault),
            join(&tail)
        ))
        .into()),
        (None, Some(_)) => Err(NodeFault(format!(
            "the L1 node exited ({status}) while the command ran, without reporting its exit code{}. Console tail:\n{}",
            fault_hint(&l1_fault),
            join(&tail)
        ))
        .into()),
    }
}

/// Reads lines on a thread, so the main loop can wait on output and the deadline at once.
fn spawn_lines(
    r: impl Read + Send + 'static,
    tx: mpsc::Sender<Event>,
    wrap: fn(String) -> Event,
    end: Event,
) {
    std::thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    // The serial console ends lines with \r\n.
                    let line = String::from_utf8_lossy(&buf);
                    let line = line.trim_end_matches(['\n', '\r']);
                    if tx.send(wrap(line.to_string())).is_err() {
                        return;
                    }
                }
            }
        }
        let _ = tx.send(end);
    });
}

fn push_tail(tail: &mut VecDeque<String>, line: &str) {
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line.to_string());
}

fn fault_hint(fault: &Option<String>) -> String {
    match fault {
        Some(f) => format!(" (L1's kernel: {f})"),
        None => String::new(),
    }
}

fn join(tail: &VecDeque<String>) -> String {
    tail.iter().map(|l| format!("  | {l}\n")).collect()
}

fn concat(parts: &[&Path], out: &Path) -> Result<()> {
    let mut w = fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    for p in parts {
        let mut r = fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        std::io::copy(&mut r, &mut w).with_context(|| format!("writing {}", out.display()))?;
    }
    w.flush()?;
    Ok(())
}

/// Per-run marker nonce: distinct between runs, so stale or echoed markers never match.
fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:x}{:x}", t & 0xffff_ffff_ffff, std::process::id())
}

/// Removes per-run files and partial builds left by runs that were killed before their cleanup
/// ran (a 100+ MB initrd each). Their names end in the owner's pid.
fn remove_stale(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let owner = ["run-", "initrd-", "partial-"].iter().find_map(|p| {
            let at = name.find(p)? + p.len();
            name[at..].split('.').next()?.parse::<u32>().ok()
        });
        if let Some(pid) = owner {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// A per-run file, removed when the run ends however it ends.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_args_need_an_absolute_dest_and_an_existing_src() {
        let ok = parse_file_arg("/etc/hostname:/etc/host-hostname").unwrap();
        assert_eq!(ok.src, PathBuf::from("/etc/hostname"));
        assert_eq!(ok.dest, "/etc/host-hostname");
        assert!(parse_file_arg("/etc/hostname").is_err());
        assert!(parse_file_arg("/etc/hostname:relative").is_err());
        assert!(parse_file_arg("/no/such/file:/x").is_err());
    }

    #[test]
    fn only_stamped_kernel_lines_count_as_l1_faults() {
        assert!(is_l1_fault(
            "[  174.999029] Kernel panic - not syncing: corrupted stack end detected inside scheduler"
        ));
        assert!(is_l1_fault(
            "[    3.1] BUG: unable to handle page fault for address: 0"
        ));
        assert!(!is_l1_fault(
            "[  139.232400] kvm [124]: vcpu0, guest rIP: 0xffffffffb1e73744 Unhandled WRMSR(0xc0010007) = 0xffff"
        ));
        // A result line quoting an L2 guest's console is the product's business.
        assert!(!is_l1_fault(
            "ok 7 corrupt initramfs: box run fails ([ 0.5] Kernel panic - not syncing)"
        ));
        assert!(!is_l1_fault("[box] Kernel panic"));
    }

    fn outcome(exit_code: i32, l1_fault: Option<&str>) -> NodeOutcome {
        NodeOutcome {
            exit_code,
            console: String::new(),
            boot_console: String::new(),
            boot_time: Duration::ZERO,
            run_time: Duration::ZERO,
            l1_fault: l1_fault.map(str::to_string),
        }
    }

    fn judge(out: &NodeOutcome) -> Result<i32> {
        match out.exit_code {
            0 => Ok(0),
            c => anyhow::bail!("tier failed with {c}"),
        }
    }

    /// Runs `retry_on_fault` over scripted outcomes; returns its result and the runs used.
    fn scripted(mut runs: Vec<Result<NodeOutcome>>) -> (Result<i32>, usize) {
        let total = runs.len();
        runs.reverse();
        let r = retry_on_fault("t", || runs.pop().expect("ran too often"), judge);
        (r, total - runs.len())
    }

    #[test]
    fn a_failure_in_a_healthy_node_is_never_retried() {
        let (r, used) = scripted(vec![Ok(outcome(1, None)), Ok(outcome(0, None))]);
        assert_eq!(used, 1);
        assert!(r.unwrap_err().to_string().contains("tier failed with 1"));
        // Nor is an error that is not the node's (a backstop with a healthy kernel).
        let (r, used) = scripted(vec![Err(anyhow::anyhow!("backstop")), Ok(outcome(0, None))]);
        assert_eq!(used, 1);
        assert!(r.is_err());
    }

    #[test]
    fn a_failure_in_a_faulted_node_runs_once_more() {
        let (r, used) = scripted(vec![Ok(outcome(1, Some("BUG: x"))), Ok(outcome(0, None))]);
        assert_eq!((r.unwrap(), used), (0, 2));
        let died = Err(NodeFault("L1 exited".into()).into());
        let (r, used) = scripted(vec![died, Ok(outcome(0, None))]);
        assert_eq!((r.unwrap(), used), (0, 2));
        // A pass in a faulted node stands; the fault is only reported.
        let (r, used) = scripted(vec![Ok(outcome(0, Some("BUG: x")))]);
        assert_eq!((r.unwrap(), used), (0, 1));
    }

    #[test]
    fn two_faulted_runs_fail_naming_the_fault() {
        let (r, used) = scripted(vec![
            Ok(outcome(1, Some("BUG: first"))),
            Ok(outcome(1, Some("BUG: second"))),
        ]);
        assert_eq!(used, 2);
        let msg = format!("{:#}", r.unwrap_err());
        assert!(
            msg.contains("BUG: second") && msg.contains("tier failed"),
            "{msg}"
        );
        // The second run's product failure in a healthy node is final.
        let (r, used) = scripted(vec![Ok(outcome(1, Some("BUG: x"))), Ok(outcome(2, None))]);
        assert_eq!(used, 2);
        assert!(r.unwrap_err().to_string().contains("tier failed with 2"));
    }

    /// Boots a real L1 node: needs qemu, the kernel package (apt) and ~5 s.
    /// `cargo test -p xtask -- --ignored`
    #[test]
    #[ignore = "boots an L1 node under qemu TCG"]
    fn node_runs_the_command_and_returns_its_exit_code() {
        let mut spec = NodeSpec::new("test -c /dev/kvm && echo kvm-ok; test -f \"$BOX_VMLINUX\" && echo kernel-ok; printf partial; exit 7");
        spec.timeout = Duration::from_secs(300);
        let out = run_in_node(&spec).unwrap();
        assert_eq!(out.exit_code, 7);
        let lines: Vec<&str> = out.console.lines().collect();
        assert!(lines.contains(&"kvm-ok"), "{}", out.console);
        assert!(lines.contains(&"kernel-ok"), "{}", out.console);
        assert!(lines.contains(&"partial"), "{}", out.console);
        assert!(!out.console.contains("BOX-NODE"), "{}", out.console);
    }
}
