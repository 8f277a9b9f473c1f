//! The nested VMM tier (`cargo xtask vmm-tier`, and part of `cargo xtask ci`): one L1 node boot
//! in which box-vmm boots Debian's stock cloud kernel with a small busybox initramfs, twice:
//!
//! 1. bzImage, two disks (rw and `,ro`), vsock and virtio-net on a TAP: boot to userspace, disk
//!    size and content, guest writes reaching the file, the read-only disk refusing writes,
//!    vsock host→guest and guest→host echoes (1 MiB and 300 kB, past the 256 KiB credit
//!    window), the guest pinging L1 through the TAP with its configured MAC, the driver
//!    having taken checksum and TSO offloads and mergeable rx buffers, 4 MiB over
//!    TCP each way (TSO frames both ways), a disk put into an empty slot through box-vmm's
//!    control socket (seen by the guest with its size and serial, written, emptied again),
//!    then `poweroff -f` → exit 0;
//! 2. the ELF vmlinux: boot to userspace, then `reboot -f` → exit 10.
//!
//! The L1 script prints one `ok <check>` or `FAIL <check>: <why>` line per check; this side
//! parses them, treats a missing line as a failure and prints `N passed, N failed`.
//!
//! The guest side of vsock is `box-vmm-probe` (tests/src/bin/box-vmm-probe.rs), a static helper
//! that also serves as the host end in L1 and times boots for `cargo xtask bench`.

use crate::kernel::{self, Kernel};
use crate::node::{self, NodeSpec};
use crate::tree::Tree;
use crate::{host, paths};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the guest initramfs sits inside L1.
pub const GUEST_INITRD: &str = "/box/vmm-guest.cpio";
/// The first line the guest's /init prints: "booted to userspace".
pub const GUEST_UP: &str = "BOX-GUEST-UP";
/// Kernel command line for the L2 guest (box-vmm's default, plus `quiet`: every console byte
/// is a trapped port write, slow under nested TCG). The guest's mode is appended.
pub const GUEST_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.dumbkbd quiet";

/// The guest modules, in load order (`depends=` of each .ko: virtio needs virtio_ring,
/// virtio_mmio and virtio_blk need both, the vsock transport needs vsock and its common part).
const GUEST_MODULES: &[(&str, &str)] = &[
    ("virtio_ring", "kernel/drivers/virtio/virtio_ring.ko"),
    ("virtio", "kernel/drivers/virtio/virtio.ko"),
    ("virtio_mmio", "kernel/drivers/virtio/virtio_mmio.ko"),
    ("virtio_blk", "kernel/drivers/block/virtio_blk.ko"),
    ("vsock", "kernel/net/vmw_vsock/vsock.ko"),
    (
        "vmw_vsock_virtio_transport_common",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
    ),
    (
        "vmw_vsock_virtio_transport",
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
    ),
    // virtio_net needs net_failover, which needs failover.
    ("failover", "kernel/net/core/failover.ko"),
    ("net_failover", "kernel/drivers/net/net_failover.ko"),
    ("virtio_net", "kernel/drivers/net/virtio_net.ko"),
];

/// The checks, in the order the script runs them. Each must print exactly one result line.
const CHECKS: &[&str] = &[
    "boot-bzimage",
    "disk-size",
    "disk-read",
    "disk-write",
    "disk-ro",
    "vsock-host-to-guest",
    "vsock-guest-to-host",
    "net-ping",
    "net-negotiated",
    "net-tcp-guest-to-host",
    "net-tcp-host-to-guest",
    "disk-hot-attach",
    "disk-hot-write",
    "disk-hot-detach",
    "poweroff-exit-0",
    "boot-vmlinux",
    "reboot-exit-10",
];

/// What L1 needs: the box-vmm binary, the probe, and the guest initramfs.
pub struct Artifacts {
    pub vmm: PathBuf,
    pub probe: PathBuf,
    pub initrd: PathBuf,
}

impl Artifacts {
    pub fn node_spec(&self, command: String, timeout: Duration) -> NodeSpec {
        let mut spec = NodeSpec::new(command);
        spec.bins = vec![self.vmm.clone(), self.probe.clone()];
        spec.files = vec![(self.initrd.clone(), GUEST_INITRD.to_string())];
        spec.timeout = timeout;
        spec
    }
}

/// Builds box-vmm and the probe (static release, with the init: see `ci::build_static`) and
/// the guest initramfs.
pub fn prepare() -> Result<Artifacts> {
    host::ensure_node_tools()?;
    let bins = crate::ci::build_static()?;
    let kernel = kernel::fetch()?;
    let initrd = guest_initrd(&kernel, &bins.probe)?;
    Ok(Artifacts {
        vmm: bins.vmm,
        probe: bins.probe,
        initrd,
    })
}

/// The L2 guest's /init. Its mode comes from `box.test=` on the kernel command line:
/// `bench` prints the marker, pauses a second (the bench samples memory then) and resets;
/// `reboot` loads the modules and reboots; `netbench` is the network benchmark's guest
/// (`box-vmm-probe net-guest`, `box.netbytes=N` bytes back to L1); `full` runs the disk and
/// vsock checks' guest halves, then powers off.
const GUEST_INIT: &str = r#"#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B echo BOX-GUEST-UP
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
$B --install -s /bin
export PATH=/bin
mode=$(sed -n 's/.*box\.test=\([a-z]*\).*/\1/p' /proc/cmdline)
if [ "$mode" = bench ]; then
    sleep 1
    # Firecracker exits on a reset only, qemu microvm (no i8042) on a power-off only.
    case "$(cat /proc/cmdline)" in *box.end=poweroff*) poweroff -f;; *) reboot -f;; esac
fi
for m in MODULES; do
    insmod /lib/modules/$m.ko || echo "guest: insmod $m failed"
done
if [ "$mode" = reboot ]; then
    echo "guest: reboot -f"
    reboot -f
fi
if [ "$mode" = netbench ]; then
    i=0
    while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do i=$((i+1)); sleep 0.1; done
    ip link set lo up
    ip link set eth0 up
    ip addr add 10.99.0.2/24 dev eth0
    box-vmm-probe net-guest 10.99.0.1:7000 $(sed -n 's/.*box\.netbytes=\([0-9]*\).*/\1/p' /proc/cmdline)
    case "$(cat /proc/cmdline)" in *box.end=poweroff*) poweroff -f;; *) reboot -f;; esac
fi
i=0
while [ ! -b /dev/vda ] || [ ! -b /dev/vdb ] || [ ! -e /dev/vsock ] || [ ! -e /sys/class/net/eth0 ]; do
    i=$((i+1))
    if [ $i -gt 100 ]; then echo "guest: devices missing: $(ls /dev | tr '\n' ' ')"; break; fi
    sleep 0.1
done
box-vmm-probe vsock-echo 1024 &
echo_pid=$!
echo "guest: vda-size $(cat /sys/block/vda/size)"
echo "guest: vda-marker $(dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | head -c 16)"
echo "guest: vda-last $(dd if=/dev/vda bs=512 skip=131071 count=1 2>/dev/null | head -c 16)"
printf BOX-GUEST-WROTE1 | dd of=/dev/vda bs=512 seek=4096 conv=notrunc,fsync 2>/dev/null
echo "guest: vda-write rc=$?"
echo "guest: vdb-ro $(cat /sys/block/vdb/ro)"
if printf XXXXXXXXXXXXXXXX | dd of=/dev/vdb bs=512 conv=notrunc,fsync 2>/dev/null; then
    echo "guest: vdb-write accepted"
else
    echo "guest: vdb-write refused"
fi
sync
ip link set lo up
ip link set eth0 up
ip addr add 10.99.0.2/24 dev eth0
echo "guest: eth0 mac $(cat /sys/class/net/eth0/address) features $(cat /sys/class/net/eth0/device/features 2>/dev/null)"
if ping -c 3 -W 10 10.99.0.1 > /tmp/ping.out 2>&1; then echo "guest: ping ok"; else echo "guest: ping failed: $(tail -2 /tmp/ping.out | tr '\n' ' ')"; fi
nc -l -p 7001 < /dev/null > /tmp/net.rx &
rxpid=$!
echo "guest: tcp-rx listening"
box-vmm-probe tcp-send 10.99.0.1:7000 4194304
box-vmm-probe vsock-send 2 5000 300000
wait $rxpid
echo "guest: tcp-rx received $(wc -c < /tmp/net.rx)"
wait $echo_pid
# The disk slot: found by its serial, empty until L1 attaches a disk through box-vmm's control
# socket (a config-change interrupt), written, then emptied again.
slot=""
for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = box-slot-0 ] && slot=${b##*/}; done
echo "guest: slot-empty dev=$slot size=$(cat /sys/block/$slot/size 2>/dev/null)"
i=0
while [ -n "$slot" ] && [ "$(cat /sys/block/$slot/size)" = 0 ] && [ $i -lt 300 ]; do i=$((i+1)); sleep 0.1; done
echo "guest: slot-attached size=$(cat /sys/block/$slot/size 2>/dev/null) serial=$(cat /sys/block/$slot/serial 2>/dev/null) marker=$(dd if=/dev/$slot bs=512 count=1 2>/dev/null | head -c 16)"
printf BOX-SLOT-WROTE01 | dd of=/dev/$slot bs=512 seek=1 conv=notrunc,fsync 2>/dev/null
echo "guest: slot-written rc=$?"
i=0
while [ -n "$slot" ] && [ "$(cat /sys/block/$slot/size)" != 0 ] && [ $i -lt 300 ]; do i=$((i+1)); sleep 0.1; done
echo "guest: slot-detached size=$(cat /sys/block/$slot/size 2>/dev/null)"
echo "guest: done"
poweroff -f
"#;

fn guest_initrd(k: &Kernel, probe: &Path) -> Result<PathBuf> {
    let names: Vec<&str> = GUEST_MODULES.iter().map(|(n, _)| *n).collect();
    let mut t = Tree::default();
    for d in ["proc", "sys", "dev", "tmp", "bin"] {
        t.dir(d);
    }
    t.bytes(
        "init",
        GUEST_INIT.replace("MODULES", &names.join(" ")),
        0o755,
    );
    t.file("bin/busybox", Path::new(host::BUSYBOX))?;
    t.executable("bin/box-vmm-probe", probe)?;
    for (name, rel) in GUEST_MODULES {
        t.file(&format!("lib/modules/{name}.ko"), &k.modules.join(rel))
            .with_context(|| format!("guest module {name} from {}", k.package))?;
    }
    let dir = paths::images_dir().join("vmm-tier");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join(format!("guest-{}.cpio", t.fingerprint()));
    if !out.exists() {
        t.write(&out).context("writing the guest initramfs")?;
    }
    Ok(out)
}

/// The L1 side. `ok`/`FAIL` lines only; details of a failure go into its reason, and the
/// consoles are dumped at the end when anything failed.
fn script() -> String {
    // BOX_VMM_LOG (a tracing filter, e.g. `debug`) is passed on to box-vmm in L1.
    let log = std::env::var("BOX_VMM_LOG")
        .ok()
        .filter(|v| {
            v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "_=,:".contains(c))
        })
        .map_or(String::new(), |v| format!("export BOX_VMM_LOG={v}"));
    format!(
        r#"
{log}
T=/tmp/vmm-tier; mkdir -p $T; cd $T
G={GUEST_INITRD}
CMD="{GUEST_CMDLINE}"
t0=$(cut -d' ' -f1 /proc/uptime)
failed=0
ok() {{ echo "ok $1"; }}
fail() {{ echo "FAIL $1: $2"; failed=1; }}
tail1() {{ tail -n 4 "$1" 2>/dev/null | tr '\r\n' '  '; }}
# waitline PATTERN FILE PID SECS: until FILE has PATTERN, PID is gone, or SECS pass.
waitline() {{
    i=0
    while ! grep -q "$1" "$2" 2>/dev/null; do
        kill -0 "$3" 2>/dev/null || return 1
        i=$((i+1)); [ $i -gt $(($4*10)) ] && return 1
        sleep 0.1
    done
}}
# waitexit PID SECS: the exit status of PID, killed after SECS.
waitexit() {{
    ( sleep "$2"
      if kill -0 "$1" 2>/dev/null; then
          echo "watchdog: box-vmm still running after $2 s; its threads:"
          for t in /proc/$1/task/*; do
              echo "watchdog:   $(cat $t/comm) state=$(cut -d' ' -f3 $t/stat) wchan=$(cat $t/wchan) syscall=$(cut -d' ' -f1 $t/syscall)"
          done
          kill -9 "$1"
      fi ) &
    wd=$!
    wait "$1"; rc=$?
    kill $wd 2>/dev/null
    return $rc
}}
sector() {{ dd if="$1" bs=512 skip="$2" count=1 2>/dev/null | head -c 16; }}

dd if=/dev/zero of=vda.img bs=1M count=0 seek=64 2>/dev/null
printf BOX-DISK-MARKER1 | dd of=vda.img bs=512 seek=2048 conv=notrunc 2>/dev/null
printf BOX-DISK-LASTSEC | dd of=vda.img bs=512 seek=131071 conv=notrunc 2>/dev/null
dd if=/dev/zero of=vdb.img bs=1M count=0 seek=8 2>/dev/null
printf BOX-DISK-ROMARK1 | dd of=vdb.img conv=notrunc 2>/dev/null

# Boot 1: bzImage, disks, vsock, a TAP, poweroff. The TAP is made persistent and given its
# address first, so the guest's first packet finds it ready.
box-vmm-probe tap-persist boxtap0 > tap.log 2>&1
ip addr add 10.99.0.1/24 dev boxtap0 >> tap.log 2>&1
ip link set boxtap0 up >> tap.log 2>&1
nc -l -p 7000 < /dev/null > net.recv 2>nc.err &
ncpid=$!
box-vmm-probe uds-echo $T/v.sock_5000 > uds-echo.log 2>&1 &
upid=$!
dd if=/dev/zero of=slot.img bs=1M count=0 seek=4 2>/dev/null
printf BOX-SLOT-MARKER1 | dd of=slot.img conv=notrunc 2>/dev/null
box-vmm --kernel "$BOX_KERNEL" --initrd $G --mem 256 --cpus 1 --cmdline "$CMD box.test=full" \
    --disk vda.img --disk vdb.img,ro --disk-slots 1 --api-sock $T/api.sock --vsock-uds $T/v.sock \
    --net tap=boxtap0,mac=02:b0:c5:99:00:02 --console con1.log > vmm1.log 2>&1 &
vpid=$!
if waitline "probe: vsock-listening" con1.log $vpid 60; then
    box-vmm-probe uds-connect $T/v.sock 1024 1048576 > uds-connect.log 2>&1
fi
if waitline "guest: tcp-rx listening" con1.log $vpid 60; then
    box-vmm-probe tcp-send 10.99.0.2:7001 4194304 > nc-tx.err 2>&1
fi
if waitline "guest: slot-empty" con1.log $vpid 60; then
    box-vmm-probe attach-disk $T/api.sock 0 slot.img ctr-rootfs > attach.log 2>&1
fi
if waitline "guest: slot-written" con1.log $vpid 60; then
    box-vmm-probe detach-disk $T/api.sock 0 > detach.log 2>&1
fi
waitexit $vpid 60; rc1=$?
kill $upid 2>/dev/null
if grep -q {GUEST_UP} con1.log; then ok boot-bzimage; else fail boot-bzimage "no {GUEST_UP} (exit $rc1): $(tail1 con1.log) $(tail1 vmm1.log)"; fi
if grep -q "guest: vda-size 131072" con1.log; then ok disk-size; else fail disk-size "want 131072 sectors: $(grep 'vda-size' con1.log)"; fi
if grep -q "guest: vda-marker BOX-DISK-MARKER1" con1.log && grep -q "guest: vda-last BOX-DISK-LASTSEC" con1.log; then ok disk-read
else fail disk-read "$(grep -E 'vda-(marker|last)' con1.log | tr '\r\n' '  ')"; fi
w=$(sector vda.img 4096)
if [ "$w" = BOX-GUEST-WROTE1 ]; then ok disk-write; else fail disk-write "sector 4096 holds '$w'; $(grep 'vda-write' con1.log)"; fi
r=$(sector vdb.img 0)
if grep -q "guest: vdb-ro 1" con1.log && grep -q "guest: vdb-write refused" con1.log && [ "$r" = BOX-DISK-ROMARK1 ]; then ok disk-ro
else fail disk-ro "sector 0 holds '$r'; $(grep 'vdb-' con1.log | tr '\r\n' '  ')"; fi
if grep -q "probe: uds-connect ok" uds-connect.log && grep -q "probe: vsock-echoed 1048576" con1.log; then ok vsock-host-to-guest
else fail vsock-host-to-guest "host: $(tail1 uds-connect.log) guest: $(grep 'probe: ' con1.log | tr '\r\n' '  ')"; fi
if grep -q "probe: vsock-send ok" con1.log && grep -q "probe: uds-echoed 300000" uds-echo.log; then ok vsock-guest-to-host
else fail vsock-guest-to-host "host: $(tail1 uds-echo.log) guest: $(grep 'probe: ' con1.log | tr '\r\n' '  ')"; fi
if grep -q "guest: ping ok" con1.log && grep -q "guest: eth0 mac 02:b0:c5:99:00:02" con1.log; then ok net-ping
else fail net-ping "$(grep 'guest: \(eth0\|ping\)' con1.log | tr '\r\n' '  ') tap: $(tail1 tap.log)"; fi
# The driver's acked feature bits, one character per bit from bit 0: the paths the TCP checks
# below exercise (guest checksum 1, guest TSO4 7, host TSO4 11, mergeable rx 15).
feat=$(sed -n 's/.*guest: eth0 mac [0-9a-f:]* features \([01]*\).*/\1/p' con1.log)
want=""; for b in 1 7 11 15; do [ "$(echo "$feat" | cut -c$((b+1)))" = 1 ] || want="$want $b"; done
if [ -n "$feat" ] && [ -z "$want" ]; then ok net-negotiated; else fail net-negotiated "bits not acked:$want (features '$feat')"; fi
kill $ncpid 2>/dev/null
recv=$(wc -c < net.recv 2>/dev/null)
if [ "$recv" = 4194304 ] && grep -q "probe: tcp-sent 4194304" con1.log; then ok net-tcp-guest-to-host
else fail net-tcp-guest-to-host "received $recv of 4194304 bytes: $(tail1 nc.err) $(grep 'probe: tcp' con1.log)"; fi
if grep -q "guest: tcp-rx received 4194304" con1.log; then ok net-tcp-host-to-guest
else fail net-tcp-host-to-guest "$(grep 'guest: tcp-rx' con1.log | tr '\r\n' '  ') $(tail1 nc-tx.err)"; fi
if grep -q "probe: control ok slot=0 sectors=8192" attach.log && grep -q "guest: slot-empty dev=vd[a-z]* size=0" con1.log \
    && grep -q "guest: slot-attached size=8192 serial=ctr-rootfs marker=BOX-SLOT-MARKER1" con1.log; then ok disk-hot-attach
else fail disk-hot-attach "$(tail1 attach.log) $(grep 'guest: slot-' con1.log | tr '\r\n' '  ')"; fi
w=$(sector slot.img 1)
if [ "$w" = BOX-SLOT-WROTE01 ]; then ok disk-hot-write; else fail disk-hot-write "sector 1 holds '$w'; $(grep 'slot-written' con1.log)"; fi
if grep -q "probe: control ok slot=0" detach.log && grep -q "guest: slot-detached size=0" con1.log; then ok disk-hot-detach
else fail disk-hot-detach "$(tail1 detach.log) $(grep 'guest: slot-detached' con1.log)"; fi
if [ $rc1 = 0 ]; then ok poweroff-exit-0; else fail poweroff-exit-0 "box-vmm exited $rc1: $(tail1 vmm1.log)"; fi

# Boot 2: ELF vmlinux, reboot.
box-vmm --kernel "$BOX_VMLINUX" --initrd $G --mem 256 --cpus 1 --cmdline "$CMD box.test=reboot" \
    --console con2.log > vmm2.log 2>&1 &
waitexit $! 60; rc2=$?
if grep -q {GUEST_UP} con2.log; then ok boot-vmlinux; else fail boot-vmlinux "no {GUEST_UP} (exit $rc2): $(tail1 con2.log) $(tail1 vmm2.log)"; fi
if [ $rc2 = 10 ]; then ok reboot-exit-10; else fail reboot-exit-10 "box-vmm exited $rc2: $(tail1 vmm2.log)"; fi

t1=$(cut -d' ' -f1 /proc/uptime)
echo "vmm-tier: L1 script $(awk "BEGIN{{print $t1-$t0}}") s"
if [ $failed = 1 ]; then
    for f in con1.log vmm1.log uds-connect.log uds-echo.log attach.log detach.log con2.log vmm2.log; do
        echo "--- $f"; sed 's/^/  | /' $f 2>/dev/null | tail -n 60
    done
fi
"#
    )
}

/// `cargo xtask vmm-tier`, also run by `cargo xtask ci`.
pub fn run() -> Result<()> {
    let art = prepare()?;
    let t0 = Instant::now();
    let spec = art.node_spec(script(), Duration::from_secs(600));
    node::run_tier("vmm-tier", &spec, |out| {
        let (passed, failed) = report(&out.console);
        println!(
            "vmm-tier: L1 boot {:.1} s, qemu total {:.1} s, all {:.1} s",
            out.boot_time.as_secs_f64(),
            out.run_time.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
        if failed > 0 {
            println!("vmm-tier: the node's output:");
            for l in out.console.lines() {
                println!("  {l}");
            }
            bail!("vmm-tier: {failed} of {} checks failed", passed + failed);
        }
        Ok(())
    })
}

/// Prints the result line of every check (a missing one counts as failed) and the totals.
fn report(console: &str) -> (usize, usize) {
    let mut passed = 0;
    let mut failed = 0;
    for check in CHECKS {
        let line = console.lines().map(str::trim_end).find(|l| {
            l.strip_prefix("ok ") == Some(check)
                || l.strip_prefix("FAIL ")
                    .and_then(|r| r.strip_prefix(check))
                    .is_some_and(|r| r.starts_with(':'))
        });
        match line {
            Some(l) if l.starts_with("ok ") => {
                passed += 1;
                println!("{l}");
            }
            Some(l) => {
                failed += 1;
                println!("{l}");
            }
            None => {
                failed += 1;
                println!("FAIL {check}: no result line from the node");
            }
        }
    }
    if let Some(t) = console
        .lines()
        .find(|l| l.starts_with("vmm-tier: L1 script"))
    {
        println!("{t}");
    }
    println!("{passed} passed, {failed} failed");
    (passed, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_failed_checks_count_as_failures() {
        let console =
            "ok boot-bzimage\nFAIL disk-size: want 131072\nok disk-sizes\nok disk-read\r\n";
        let (p, f) = report(console);
        assert_eq!(p, 2);
        assert_eq!(f, CHECKS.len() - 2);
    }

    #[test]
    fn every_check_has_a_result_line_in_the_script() {
        let s = script();
        for c in CHECKS {
            assert!(s.contains(&format!("ok {c}")), "{c}");
            assert!(s.contains(&format!("fail {c} ")), "{c}");
        }
    }
}
