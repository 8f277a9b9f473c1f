//! `cargo xtask k8s`: Box under a real containerd 2.x, in one nested-node boot.
//!
//! The node gets containerd and ctr (Debian sid's, [`containerd::fetch`]), the shim
//! `containerd-shim-box-v2` beside `box-vmm` on PATH, the config in `xtask/k8s/` (blockfile
//! snapshots, the `box` runtime handler, CNI bridge), and the busybox test image as a tar that
//! ctr imports under the CRI's pinned sandbox name, so nothing is pulled (the node has no
//! network). containerd inherits the node's Box environment (`BOX_KERNEL`, `BOX_INITRD`,
//! `BOX_MODULES`, `BOX_STATE_DIR`, PATH) and passes it on to the shims it starts.
//!
//! One line per scenario (`ok N ...` or `FAIL N ...: why`), then `N passed, N failed`. If the
//! CRI client (`k8s-cri-client`, crate `box-cri-tests` in tests/cri) exists, it runs last
//! against containerd's socket with its own ok/FAIL lines, which count in the summary, and
//! its exit code is the tier's.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::node::{self, NodeSpec};
use crate::{containerd, host, images, l1image, paths, product, util};

/// The test image's name in containerd, and the CRI's pinned sandbox image (containerd.toml).
pub const IMAGE: &str = "localhost/box/busybox:test";
const SOCKET: &str = "/run/containerd/containerd.sock";
const CONFIG_DEST: &str = "/etc/containerd/config.toml";
const CNI_DEST: &str = "/etc/cni/net.d/10-box-pods.conflist";
const TAR_DEST: &str = "/box/images/busybox-import.tar";
/// The blockfile scratch image (containerd.toml's `scratch_file`), made in the node: a file in
/// the initramfs could not stay sparse. Every snapshot is a full copy of it, in L1's RAM.
const SCRATCH: &str = "/var/lib/containerd/blockfile-scratch.ext4";
const SCRATCH_MIB: u32 = 64;
const CRI_CRATE: &str = "tests/cri/Cargo.toml";
const CRI_BIN: &str = "k8s-cri-client";

#[derive(clap::Args, Debug)]
pub struct K8sArgs {
    /// Fetch Debian sid's current containerd even if one is cached (sid moves).
    #[arg(long)]
    pub refresh_containerd: bool,
    /// Skip the CRI client (tests/cri) even where its crate exists.
    #[arg(long)]
    pub no_cri: bool,
}

/// The tier, as a script for L1's busybox sh (placeholders `@...@` filled in by [`script`]).
/// Every wait is a bounded poll; every command that could hang runs under `timeout`.
const SCRIPT: &str = r#"
pass=0; fail=0
ok() { echo "ok $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail+1)); }
now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
IMG=@IMAGE@
SOCK=@SOCKET@
LOG=/tmp/containerd.log
logtail() { echo "--- containerd log, last 25 lines ---"; tail -25 "$LOG"; echo "--- end of containerd log ---"; }
finish() { echo "k8s: $pass passed, $fail failed"; echo "$pass passed, $fail failed"; [ $fail = 0 ] || exit 1; exit ${crirc:-0}; }
start=$(now)

# blockfile's scratch image: every snapshot starts as a copy of this empty ext4. mke2fs by
# full path: busybox sh runs its own mke2fs applet before PATH.
mkdir -p "$(dirname @SCRATCH@)"
dd if=/dev/zero of=@SCRATCH@ bs=1M count=0 seek=@SCRATCH_MIB@ 2>/dev/null
if ! @BIN_DIR@/mke2fs -q -t ext4 -F @SCRATCH@ >/tmp/mkfs.out 2>&1; then bad "0 setup" "mke2fs of the blockfile scratch image: $(tail -2 /tmp/mkfs.out)"; finish; fi

t0=$(now)
BOX_SHIM_LOG=${BOX_SHIM_LOG:-info} containerd --config @CONFIG@ >"$LOG" 2>&1 &
cpid=$!
export CONTAINERD_ADDRESS="$SOCK"
# Poll for the socket with the shell's own test (a ctr start costs ~0.5 s under TCG), then
# check containerd answers on it.
n=0
while [ ! -S "$SOCK" ] && [ $n -lt 600 ] && kill -0 $cpid 2>/dev/null; do n=$((n+1)); sleep 0.05; done
sock=$(since $t0)
n=0
until timeout 10 ctr version >/dev/null 2>&1; do
  n=$((n+1))
  if [ $n -ge 20 ] || ! kill -0 $cpid 2>/dev/null; then
    bad "0 setup" "containerd not answering on $SOCK $(since $t0) s after its start (process alive: $(kill -0 $cpid 2>/dev/null && echo yes || echo no))"; logtail; finish
  fi
  sleep 0.2
done
ready=$(since $t0); total=$(since $start)
echo "k8s: containerd $(containerd --version | cut -d' ' -f3) answering on $SOCK $ready s after its start (socket at $sock s)"
echo "k8s: script start to containerd ready: $total s"
bf=$(timeout 30 ctr plugins ls 2>&1 | grep 'io.containerd.snapshotter.v1 *blockfile' | tr -s ' ' | cut -d' ' -f4)
if [ "$bf" != ok ]; then bad "0 setup" "the blockfile snapshotter is [$bf], not ok"; logtail; finish; fi

# The test image, into the CRI's namespace (where it is the pinned sandbox image) and ctr's.
for ns in k8s.io default; do
  t1=$(now)
  if timeout 120 ctr -n $ns images import --local --snapshotter blockfile @TAR@ >/tmp/import.$ns 2>&1 && timeout 30 ctr -n $ns images ls -q 2>&1 | grep -qx "$IMG"; then
    echo "k8s: imported $IMG into namespace $ns ($(since $t1) s)"
  else
    bad "0 setup" "ctr -n $ns images import: $(tail -3 /tmp/import.$ns | tr '\n' ' ')"; logtail; finish
  fi
done

t1=$(now)
out=$(timeout 180 ctr run --runtime io.containerd.box.v2 --snapshotter blockfile --rm "$IMG" id1 echo hi 2>/tmp/k1); rc=$?
if [ "$out" = hi ] && [ $rc = 0 ]; then ok "1 ctr run --runtime io.containerd.box.v2 --snapshotter blockfile --rm IMG id1 echo hi prints exactly hi ($(since $t1) s)"; else bad "1 ctr run echo hi" "rc=$rc out=[$out] $(tail -3 /tmp/k1 | tr '\n' ' ')"; echo "--- containerd log on id1 ---"; grep -e id1 -e box_shim "$LOG" | tail -40; fi

# Live processes only: a zombie's reaping is L1's PID 1's business. The shim's comm is its name
# cut to 15 characters.
leftovers() { cat /proc/[0-9]*/stat 2>/dev/null | grep -e '(box-vmm)' -e '(containerd-shim)' | grep -v ') Z ' | cut -d' ' -f1,2 | tr '\n' ' '; }
n=0; left=$(leftovers)
while [ -n "$left" ] && [ $n -lt 100 ]; do n=$((n+1)); sleep 0.2; left=$(leftovers); done
ctrs=$(timeout 30 ctr containers ls -q 2>&1 | tr '\n' ' ')
if [ -z "$left" ] && [ -z "$ctrs" ]; then ok "2 afterwards no box-vmm, no containerd-shim-box-v2, no container left"; else bad "2 leftovers" "processes=[$left] containers=[$ctrs]"; fi
# Whatever happened, id1 goes now.
timeout 30 ctr task kill -s KILL id1 >/dev/null 2>&1; timeout 30 ctr task rm -f id1 >/dev/null 2>&1; timeout 30 ctr containers rm id1 >/dev/null 2>&1

# containerd restarted under a running task: it reconnects to the shim, which still serves
# the VM (state and exec through the new containerd).
start_containerd() {
  BOX_SHIM_LOG=${BOX_SHIM_LOG:-info} containerd --config @CONFIG@ >>"$LOG" 2>&1 &
  cpid=$!
  n=0
  until timeout 10 ctr version >/dev/null 2>&1; do
    n=$((n+1)); [ $n -ge 100 ] && return 1
    kill -0 $cpid 2>/dev/null || return 1
    sleep 0.2
  done
}
task_status() { timeout 30 ctr task ls 2>/dev/null | awk -v id="$1" '$1 == id { print $3 }'; }
t1=$(now)
timeout 180 ctr run -d --runtime io.containerd.box.v2 --snapshotter blockfile "$IMG" id2 sleep 100000 >/tmp/k3 2>&1; rc=$?
st1=$(task_status id2)
kill -9 $cpid; wait $cpid 2>/dev/null
if start_containerd; then
  st2=$(task_status id2)
  again=$(timeout 60 ctr task exec --exec-id e1 id2 echo again 2>>/tmp/k3)
  if [ $rc = 0 ] && [ "$st1" = RUNNING ] && [ "$st2" = RUNNING ] && [ "$again" = again ]; then ok "3 containerd killed and restarted under a running task: it reconnects to the shim (RUNNING, exec answers) ($(since $t1) s)"; else bad "3 containerd restart" "run=$rc before=[$st1] after=[$st2] exec=[$again] $(tail -3 /tmp/k3 | tr '\n' ' ')"; logtail; fi
else
  bad "3 containerd restart" "containerd did not come back"; logtail; finish
fi

# The shim killed with SIGKILL: containerd runs the shim binary's delete, which finds the
# sandbox's record and removes the VM and its files.
t1=$(now)
# By its name first: this very script's command line names id2 too.
shim=$(for d in /proc/[0-9]*; do [ "$(cat $d/comm 2>/dev/null)" = containerd-shim ] && tr '\0' ' ' <$d/cmdline 2>/dev/null | grep -q -- '-id id2 ' && echo "${d#/proc/}"; done | head -1)
[ -n "$shim" ] && kill -9 "$shim"
timeout 60 ctr task rm -f id2 >/tmp/k4 2>&1; timeout 30 ctr containers rm id2 >>/tmp/k4 2>&1
n=0; left=$(leftovers)
while { [ -n "$left" ] || [ -e "$BOX_STATE_DIR/sandboxes/id2" ]; } && [ $n -lt 150 ]; do n=$((n+1)); sleep 0.2; left=$(leftovers); done
if [ -n "$shim" ] && [ -z "$left" ] && [ ! -e "$BOX_STATE_DIR/sandboxes/id2" ] && [ -z "$(timeout 30 ctr containers ls -q)" ]; then ok "4 shim killed (SIGKILL): containerd's cleanup through the shim's delete leaves no box-vmm and no sandbox record ($(since $t1) s)"; else bad "4 dead shim" "shim=[$shim] left=[$left] record=$(ls $BOX_STATE_DIR/sandboxes 2>&1 | tr '\n' ' ') $(tail -3 /tmp/k4 | tr '\n' ' ')"; logtail; fi

# The CRI scenarios: the client's own ok/FAIL lines count here too.
if command -v @CRI_BIN@ >/dev/null 2>&1; then
  t1=$(now)
  { timeout 900 @CRI_BIN@ --socket "$SOCK" --image "$IMG"; echo $? >/tmp/cri.rc; } 2>&1 | tee /tmp/cri.out
  crirc=$(cat /tmp/cri.rc)
  cp=$(grep -c '^ok ' /tmp/cri.out); cf=$(grep -c '^FAIL ' /tmp/cri.out)
  pass=$((pass+cp)); fail=$((fail+cf))
  echo "k8s: @CRI_BIN@ exited $crirc after $(since $t1) s"
  if [ "$crirc" != 0 ]; then
    [ "$cf" = 0 ] && bad "cri" "@CRI_BIN@ exited $crirc without a FAIL line"
    logtail
  fi
  # Where a pod's start went (the shim's phase lines for the first pod's VM).
  grep -E 'box_shim::sandbox: [0-9a-f]{64}: (process launched|guest ready|network configured) at' "$LOG" | head -3 | sed 's/.*box_shim::sandbox: \([0-9a-f]\{12\}\)[0-9a-f]*: /k8s: pod VM \1: /'
else
  echo "k8s: no @CRI_BIN@ in this node (no tests/cri, or --no-cri): no CRI scenarios"
fi
finish
"#;

fn script() -> String {
    SCRIPT
        .replace("@IMAGE@", IMAGE)
        .replace("@SOCKET@", SOCKET)
        .replace("@SCRATCH@", SCRATCH)
        .replace("@SCRATCH_MIB@", &SCRATCH_MIB.to_string())
        .replace("@CONFIG@", CONFIG_DEST)
        .replace("@TAR@", TAR_DEST)
        .replace("@CRI_BIN@", CRI_BIN)
        .replace("@BIN_DIR@", l1image::BIN_DIR)
}

/// containerd's config and the CNI network, as files in the repo (they double as the
/// documentation users copy).
fn config_dir() -> PathBuf {
    util::project_root().join("xtask/k8s")
}

pub fn run(args: K8sArgs) -> Result<()> {
    let t0 = Instant::now();
    let ctrd = containerd::fetch(args.refresh_containerd)?;
    eprintln!(
        "xtask k8s: containerd {} (Debian sid {}), {}",
        ctrd.version,
        ctrd.package_version,
        if host::is_static_elf(&ctrd.containerd) {
            "static"
        } else {
            "dynamic: the node gets its libraries too"
        }
    );
    let p = product::prepare()?;
    let (layout, _) = images::busybox_images()?;
    let tar = import_tar(&layout)?;
    let cri = if args.no_cri {
        None
    } else {
        build_cri_client()?
    };

    let dir = config_dir();
    let mut extra_bins = vec![p.shim.clone(), ctrd.containerd.clone(), ctrd.ctr.clone()];
    extra_bins.extend(cri.iter().cloned());
    let extra_files = vec![
        (dir.join("containerd.toml"), CONFIG_DEST.to_string()),
        (dir.join("10-box-pods.conflist"), CNI_DEST.to_string()),
        (tar.clone(), TAR_DEST.to_string()),
    ];
    let added: u64 = extra_bins
        .iter()
        .chain(extra_files.iter().map(|(src, _)| src))
        .filter_map(|f| fs::metadata(f).ok())
        .map(|m| m.len())
        .sum();
    eprintln!(
        "xtask k8s: {:.1} MB added to the node's per-run image (containerd, ctr, the shim{}, config, image tar)",
        added as f64 / 1e6,
        if cri.is_some() { ", the CRI client" } else { "" }
    );

    let mut spec = NodeSpec::new(format!("{}{}", product::env_prologue(), script()));
    spec.bins = p.bins;
    spec.bins.extend(extra_bins);
    spec.files = p.files;
    spec.files.extend(extra_files);
    spec.timeout = Duration::from_secs(1500);
    spec.stream = true;
    node::run_tier("k8s", &spec, |out| {
        let line = |prefix: &str| {
            out.console
                .lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(str::to_string)
        };
        let summary = out
            .console
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix("k8s: ").filter(|s| s.contains(" passed, ")))
            .unwrap_or("no summary line")
            .to_string();
        let ready = line("k8s: script start to containerd ready: ")
            .and_then(|s| s.trim_end_matches(" s").parse::<f64>().ok())
            .map_or("containerd never ready".to_string(), |s| {
                format!(
                    "node boot to containerd ready {:.1} s",
                    out.boot_time.as_secs_f64() + s
                )
            });
        eprintln!(
            "xtask k8s: {summary} (L1 boot {:.1} s, {ready}, node {:.1} s, all {:.1} s)",
            out.boot_time.as_secs_f64(),
            out.run_time.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
        if out.exit_code != 0 || !none_failed(&summary) {
            bail!(
                "containerd scenarios failed (script exit {}): {summary}",
                out.exit_code
            );
        }
        Ok(())
    })
}

/// Whether a `N passed, M failed` summary has M = 0 (`10 failed` ends in ` 0 failed` too).
fn none_failed(summary: &str) -> bool {
    summary
        .rsplit_once(", ")
        .is_some_and(|(_, f)| f == "0 failed")
}

/// The busybox OCI layout as a tar that `ctr images import` takes, its index naming the image
/// [`IMAGE`] (`io.containerd.image.name`, which ctr uses as is). Cached by manifest digest.
fn import_tar(layout: &Path) -> Result<PathBuf> {
    let index_path = layout.join("index.json");
    let mut index: serde_json::Value = serde_json::from_slice(
        &fs::read(&index_path).with_context(|| format!("reading {}", index_path.display()))?,
    )
    .with_context(|| format!("parsing {}", index_path.display()))?;
    let manifests = index
        .get_mut("manifests")
        .and_then(|m| m.as_array_mut())
        .filter(|m| m.len() == 1)
        .with_context(|| format!("{}: expected one manifest", index_path.display()))?;
    let digest = manifests[0]
        .get("digest")
        .and_then(|d| d.as_str())
        .and_then(|d| d.strip_prefix("sha256:"))
        .context("the index's manifest has no sha256 digest")?
        .to_string();
    let tag = IMAGE.rsplit_once(':').map_or("latest", |(_, t)| t);
    manifests[0]["annotations"] = serde_json::json!({
        "io.containerd.image.name": IMAGE,
        "org.opencontainers.image.ref.name": tag,
    });

    let dir = paths::images_dir().join("k8s");
    let name = format!(
        "{}-{}.tar",
        IMAGE.replace(['/', ':'], "_"),
        &digest[..digest.len().min(16)]
    );
    let out = dir.join(&name);
    if out.exists() {
        return Ok(out);
    }
    fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".partial-{}", std::process::id()));
    let mut b = tar::Builder::new(fs::File::create(&tmp)?);
    let mut add = |path: &str, data: &[u8]| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        b.append_data(&mut h, path, data)?;
        Ok(())
    };
    add("oci-layout", &fs::read(layout.join("oci-layout"))?)?;
    add("index.json", &serde_json::to_vec(&index)?)?;
    let blobs = layout.join("blobs/sha256");
    let mut names: Vec<_> = fs::read_dir(&blobs)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()?;
    names.sort();
    for n in names {
        let n = n.to_string_lossy();
        add(&format!("blobs/sha256/{n}"), &fs::read(blobs.join(&*n))?)?;
    }
    b.into_inner()?.sync_all()?;
    fs::rename(&tmp, &out)?;
    for e in fs::read_dir(&dir)?.flatten() {
        if e.path() != out {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(out)
}

/// The CRI client, if its crate exists yet: a static debug build (a release build of a tonic
/// client takes ~17 min on 2 cores), stripped into the images cache so its debug info stays
/// out of the node.
fn build_cri_client() -> Result<Option<PathBuf>> {
    if !util::project_root().join(CRI_CRATE).exists() {
        eprintln!("xtask k8s: no {CRI_CRATE} yet: the tier runs without CRI scenarios");
        return Ok(None);
    }
    let target = "x86_64-unknown-linux-gnu";
    util::run(
        util::cargo()
            .args([
                "build",
                "-p",
                "box-cri-tests",
                "--bin",
                CRI_BIN,
                "--target",
                target,
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )
    .context("building the CRI client (tests/cri)")?;
    let built = paths::target_dir().join(target).join("debug").join(CRI_BIN);
    if !host::is_static_elf(&built) {
        bail!(
            "{} is dynamically linked; the node has no libc for it",
            built.display()
        );
    }
    let dir = paths::images_dir().join("k8s");
    fs::create_dir_all(&dir)?;
    let stripped = dir.join(CRI_BIN);
    if host::have("strip") {
        host::run(
            std::process::Command::new("strip")
                .arg("--strip-debug")
                .arg(&built)
                .arg("-o")
                .arg(&stripped),
        )?;
    } else {
        fs::copy(&built, &stripped)?;
    }
    Ok(Some(stripped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_pins_the_imported_image_and_names_the_box_runtime() {
        let toml = fs::read_to_string(config_dir().join("containerd.toml")).unwrap();
        assert!(toml.contains(&format!("sandbox = '{IMAGE}'")), "{toml}");
        assert!(toml.contains("runtime_type = 'io.containerd.box.v2'"));
        assert!(toml.contains(&format!("scratch_file = '{SCRATCH}'")));
        assert!(toml.contains(&format!("address = '{SOCKET}'")));
        let cni: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(config_dir().join("10-box-pods.conflist")).unwrap(),
        )
        .unwrap();
        assert_eq!(cni["plugins"][0]["type"], "bridge");
        assert_eq!(cni["plugins"][0]["ipam"]["type"], "host-local");
        for p in ["bridge", "host-local"] {
            assert!(host::CNI_PLUGINS.contains(&p), "the node lacks CNI's {p}");
        }
    }

    #[test]
    fn only_a_zero_failure_count_passes() {
        assert!(none_failed("2 passed, 0 failed"));
        assert!(!none_failed("2 passed, 10 failed"));
        assert!(!none_failed("no summary line"));
    }

    #[test]
    fn the_script_has_every_placeholder_filled() {
        let s = script();
        assert!(!s.contains('@'), "{s}");
        assert!(s.contains(IMAGE));
    }
}
