//! `cargo xtask e2e`: the end-to-end scenarios of `box` in real microVMs, in one nested-node
//! boot. One line per scenario (`ok N ...` or `FAIL N ...: why`), then `N passed, N failed`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::node::{self, NodeSpec};
use crate::{paths, product, util};

/// The scenarios, as a script for L1's busybox sh. `box`, `box-vmm`, `pty-drive` are on PATH;
/// `$BOX_TEST_IMAGE` is the busybox OCI layout.
const SCRIPT: &str = r#"
pass=0; fail=0
ok() { echo "ok $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1: $2"; fail=$((fail+1)); }
IMG=$BOX_TEST_IMAGE

out=$(box run --rm "$IMG" -- echo hi 2>/tmp/e1); rc=$?
if [ "$out" = "hi" ] && [ $rc = 0 ]; then ok "1 box run --rm IMG -- echo hi prints exactly hi"; else bad "1 echo hi" "rc=$rc out=[$out] $(tail -3 /tmp/e1)"; fi

box run --rm "$IMG" -- sh -c 'exit 7' 2>/tmp/e2; rc=$?
if [ $rc = 7 ]; then ok "2 sh -c 'exit 7' exits 7"; else bad "2 exit 7" "rc=$rc $(tail -3 /tmp/e2)"; fi

out=$(echo abc | box run --rm -i "$IMG" -- cat 2>/tmp/e3); rc=$?
if [ "$out" = "abc" ] && [ $rc = 0 ]; then ok "3 echo abc | box run -i IMG -- cat prints abc"; else bad "3 stdin" "rc=$rc out=[$out] $(tail -3 /tmp/e3)"; fi

name=$(box run -d --name det "$IMG" -- sleep 100000 2>/tmp/e4); rc=$?
box exec det -- sh -c 'exit 5' 2>>/tmp/e4; r5=$?
box exec det -- true 2>>/tmp/e4; r0=$?
if [ $rc = 0 ] && [ "$name" = det ] && [ $r5 = 5 ] && [ $r0 = 0 ]; then ok "4 detached: exec 'exit 5' -> 5, exec true -> 0"; else bad "4 detached" "run=$rc name=[$name] exec5=$r5 exec0=$r0 $(tail -3 /tmp/e4)"; fi
box rm -f det >/dev/null 2>&1

if pty-drive -- box run --rm -it "$IMG" -- sh >/tmp/e5 2>&1; then ok "5 -it through a pty: answered, resize, exit 4"; else bad "5 -it" "$(grep -v '^ok' /tmp/e5 | tail -3)"; fi

box run -d --name orph "$IMG" -- sleep 100000 >/dev/null 2>/tmp/e6
box exec orph -- sh -c 'i=0; while [ $i -lt 100 ]; do (sleep 1 &); i=$((i+1)); done' 2>>/tmp/e6; rc=$?
# Quiescence: the orphans exit after a second; then no sleeper but the main one, no zombie.
n=0; left=x
while [ $n -lt 120 ]; do
  left=$(box exec orph -- sh -c 'cat /proc/[0-9]*/stat 2>/dev/null | grep -c -e "(sleep) [RSD]" -e ") Z "')
  [ "$left" = 1 ] && break
  n=$((n+1)); sleep 0.5
done
z=$(box exec orph -- sh -c 'cat /proc/[0-9]*/stat 2>/dev/null | grep -c ") Z "')
if [ $rc = 0 ] && [ "$left" = 1 ] && [ "$z" = 0 ]; then ok "6 100 orphans: afterwards no zombie in the guest"; else bad "6 orphans" "spawner=$rc left=$left zombies=$z $(tail -3 /tmp/e6)"; fi
box rm -f orph >/dev/null 2>&1

head -c 200000 /dev/urandom > /tmp/corrupt.cpio
BOX_INITRD=/tmp/corrupt.cpio box run --name broken "$IMG" -- true 2>/tmp/e7; rc=$?
ps_line=$(box ps -a 2>&1 | grep broken)
# The kernel boots `quiet`: its panic line must still reach the Failed record's console tail.
panic=$(box inspect broken 2>&1 | grep -c "Kernel panic")
box rm broken 2>>/tmp/e7; rmrc=$?
gone=$(box ps -a 2>&1 | grep -c broken)
if [ $rc != 0 ] && [ -s /tmp/e7 ] && echo "$ps_line" | grep -q Failed && [ "$panic" -ge 1 ] && [ $rmrc = 0 ] && [ "$gone" = 0 ]; then ok "7 corrupt initramfs: box run fails ($(head -1 /tmp/e7 | cut -c1-120)), ps -a shows Failed with the kernel's panic line in its console tail, rm removes it"; else bad "7 boot failure" "rc=$rc ps=[$ps_line] panic=$panic rm=$rmrc gone=$gone $(head -2 /tmp/e7)"; fi

# Live box-vmm processes: a zombie is gone already, its reaping is L1's PID 1's business.
live_vmms() { cat /proc/[0-9]*/stat 2>/dev/null | grep '(box-vmm)' | grep -vc ') Z '; }
box run -d --name victim "$IMG" -- sleep 100000 >/dev/null 2>/tmp/e8
before=$(live_vmms)
box rm -f victim 2>>/tmp/e8; rc=$?
after=$(live_vmms)
if [ $rc = 0 ] && [ "$before" -ge 1 ] && [ "$after" = 0 ] && [ ! -e "$BOX_STATE_DIR/sandboxes/victim" ]; then ok "8 rm -f of a running sandbox: no box-vmm left, state entry gone"; else bad "8 rm -f" "rc=$rc vmm before=$before after=$after $(ls $BOX_STATE_DIR/sandboxes 2>&1) $(tail -2 /tmp/e8)"; fi

# In-guest hardening in a real guest kernel (one with modules): docker's capabilities, no
# module loading, /proc/sys read-only, and PID 1 deaf to a container's SIGTERM.
box run -d --name hard "$IMG" -- sleep 100000 >/dev/null 2>/tmp/e9
caps=$(box exec hard -- grep CapEff /proc/self/status 2>>/tmp/e9)
box exec hard -- sh -c 'echo x > /tmp/m.ko; insmod /tmp/m.ko' 2>/tmp/e9m; insrc=$?
box exec hard -- sh -c 'echo 1 > /proc/sys/kernel/panic' 2>/tmp/e9s; sysrc=$?
box exec hard -- unshare -U true 2>/tmp/e9u; usrc=$?
mypid=$(box exec hard -- sh -c 'echo $$' 2>>/tmp/e9)
box exec hard -- kill -TERM 1 2>>/tmp/e9
alive=$(box exec hard -- echo alive 2>>/tmp/e9)
if [ "$caps" = "CapEff:	00000000a80425fb" ] && [ $insrc != 0 ] && grep -q "not permitted" /tmp/e9m && [ $sysrc != 0 ] && [ "$alive" = alive ] && [ $usrc != 0 ] && grep -q "not permitted" /tmp/e9u && [ "$mypid" != 1 ] && [ "$mypid" -lt 20 ]; then ok "9 hardening in the guest: docker caps, insmod refused, /proc/sys read-only, seccomp refuses unshare -U, own PID namespace (exec is pid $mypid), kill -TERM 1 ignored"; else bad "9 hardening" "caps=[$caps] insmod=$insrc($(head -1 /tmp/e9m)) sys=$sysrc userns=$usrc($(head -1 /tmp/e9u)) pid=[$mypid] alive=[$alive] $(tail -2 /tmp/e9)"; fi
box rm -f hard >/dev/null 2>&1

# The VMM's jail: its own uid, no capabilities, no_new_privs, its own mount/net/pid
# namespaces, a root holding only its files, a cgroup with the VM's limits.
box run -d --name jailed "$IMG" -- sleep 100000 >/dev/null 2>/tmp/e10
waiter=$(box inspect jailed | tr -d ' \n' | sed 's/.*"vmm":{"pid":\([0-9]*\).*/\1/')
vmm=$(for s in /proc/[0-9]*/stat; do set -- $(cat $s 2>/dev/null); [ "$4" = "$waiter" ] && echo $1; done | head -1)
st=$(grep -E '^(Uid|CapEff|NoNewPrivs)' /proc/$vmm/status 2>/dev/null | tr -s '\t ' ' ' | tr '\n' ';')
rootls=$(ls /proc/$vmm/root/ 2>&1 | tr '\n' ' ')
samenet=$([ "$(readlink /proc/$vmm/ns/net)" = "$(readlink /proc/self/ns/net)" ] && echo same || echo own)
samemnt=$([ "$(readlink /proc/$vmm/ns/mnt)" = "$(readlink /proc/self/ns/mnt)" ] && echo same || echo own)
cg=$(cat /proc/$vmm/cgroup 2>/dev/null)
memmax=$(cat /sys/fs/cgroup/box/jailed/memory.max 2>/dev/null)
hi=$(box exec jailed -- echo hi 2>>/tmp/e10)
box rm -f jailed >/dev/null 2>>/tmp/e10
cggone=$([ -d /sys/fs/cgroup/box/jailed ] && echo left || echo gone)
case "$st" in "Uid: 15"*"CapEff: 0000000000000000;NoNewPrivs: 1;") stok=1;; *) stok=0;; esac
if [ -n "$vmm" ] && [ $stok = 1 ] && [ "$rootls" = "api.sock console.log dev initrd kernel vsock.sock " ] && [ $samenet = own ] && [ $samemnt = own ] && [ "$cg" = "0::/box/jailed" ] && [ "$memmax" = 402653184 ] && [ "$hi" = hi ] && [ $cggone = gone ]; then ok "10 jailed VMM: uid $(echo $st | cut -d' ' -f2), no caps, no_new_privs, own mount+net ns, root holds only [$rootls], cgroup memory.max $memmax, removed with the sandbox"; else bad "10 jail" "vmm=$vmm st=[$st] root=[$rootls] net=$samenet mnt=$samemnt cg=[$cg] mem=[$memmax] hi=[$hi] cg=$cggone $(tail -3 /tmp/e10)"; fi

# cgroups in the guest: the container in its own cgroup, --pids-limit enforced, an OOM inside
# the container kills the container's process (not the guest) and is reported as such.
cgline=$(box run --rm "$IMG" -- cat /proc/self/cgroup 2>/tmp/e11)
box run --rm --pids-limit 4 "$IMG" -- sh -c 'for i in 1 2 3 4 5 6; do sleep 1 & done; wait' 2>/tmp/e11p
box run --name oom "$IMG" -- sh -c 'head -c 400m /dev/zero | tail' 2>>/tmp/e11; oomrc=$?
oomrec=$(box inspect oom 2>>/tmp/e11 | grep -c '"oom_killed": true')
oomps=$(box ps -a 2>&1 | grep '^oom ' | grep -c 'OOM killed')
box rm oom >/dev/null 2>>/tmp/e11
case "$cgline" in "0::/"?*) cgok=1;; *) cgok=0;; esac
if [ $cgok = 1 ] && grep -q "fork" /tmp/e11p && [ $oomrc = 137 ] && [ "$oomrec" = 1 ] && [ "$oomps" = 1 ]; then ok "11 guest cgroups: container in [$cgline], --pids-limit 4 refuses forks, OOM -> exit 137, OOMKilled recorded"; else bad "11 cgroups" "cg=[$cgline] pids=[$(head -1 /tmp/e11p)] oomrc=$oomrc rec=$oomrec ps=$oomps $(tail -2 /tmp/e11)"; fi

# Fast paths: guest RAM mapped by KVM with 2 MiB pages (KVM's own count, while the guest
# runs), and an interactive exec through a pty on the one-call RunProcess path.
box run -d --name fast "$IMG" -- sleep 100000 >/dev/null 2>/tmp/e12
waiter=$(box inspect fast | tr -d ' \n' | sed 's/.*"vmm":{"pid":\([0-9]*\).*/\1/')
vmm=$(for s in /proc/[0-9]*/stat; do set -- $(cat $s 2>/dev/null); [ "$4" = "$waiter" ] && echo $1; done | head -1)
[ -d /sys/kernel/debug/kvm ] || mount -t debugfs debugfs /sys/kernel/debug 2>>/tmp/e12
p2m=$(cat /sys/kernel/debug/kvm/$vmm-*/pages_2m 2>>/tmp/e12 | head -1)
p4k=$(cat /sys/kernel/debug/kvm/$vmm-*/pages_4k 2>>/tmp/e12 | head -1)
pty-drive -- box exec -it fast sh >/tmp/e12t 2>&1; ptyrc=$?
box rm -f fast >/dev/null 2>>/tmp/e12
if [ -n "$p2m" ] && [ "$p2m" -gt 0 ] && [ $ptyrc = 0 ]; then ok "12 fast paths: KVM maps guest RAM with $p2m 2 MiB pages ($p4k 4 KiB), exec -it through a pty: answered, resize, exit 4"; else bad "12 fast paths" "vmm=$vmm pages_2m=[$p2m] pages_4k=[$p4k] pty=$ptyrc $(grep -v '^ok' /tmp/e12t | tail -2) $(tail -2 /tmp/e12)"; fi

# The sandbox's own name and loopback, without a network: hostname (the guest's, set from
# the container's), /etc/hostname and /etc/hosts bind-mounted by guest-init, only lo, and up
# (a down lo makes the ping "Network unreachable").
out=$(box run --rm --network none --name netc "$IMG" -- sh -c 'hostname; cat /etc/hostname; grep -c "127.0.1.1.netc" /etc/hosts; ip -o link | wc -l; ip -o link show lo | grep -c "[<,]UP[,>]"; ping -c 1 -W 5 127.0.0.1 >/dev/null && echo pong; wc -c < /etc/resolv.conf' 2>/tmp/e13 | tr '\n' ' ')
if [ "$out" = "netc netc 1 1 1 pong 0 " ]; then ok "13 --network none: hostname netc, /etc/hostname and /etc/hosts, only lo, up and answering, no resolver"; else bad "13 identity" "out=[$out] $(tail -2 /tmp/e13)"; fi

# The nat network: the guest's eth0 has an address of box0's subnet, a default route via the
# node, a resolver, its own name in /etc/hosts, and reaches a server on the node.
mkdir -p /tmp/www && echo node-page > /tmp/www/index.html
busybox httpd -p 8000 -h /tmp/www
out=$(box run --rm --name egress "$IMG" -- sh -c 'ip -o -4 addr show eth0 | tr -s " " | cut -d" " -f4; ip route | grep -c "^default via 10.77.0.1 dev eth0"; grep -c "^nameserver" /etc/resolv.conf; grep -c "^10\.77\.0\.[0-9]*.egress" /etc/hosts; printf "GET / HTTP/1.0\r\n\r\n" | nc -w 10 10.77.0.1 8000 | tail -1' 2>/tmp/e14 | tr '\n' ' ')
case "$out" in 10.77.0.*/24" 1 "[1-9]" 1 node-page ") ok "14 nat network: eth0 [$(echo $out | cut -d' ' -f1)], default via 10.77.0.1, resolver, /etc/hosts, a page from the node's server";; *) bad "14 nat egress" "out=[$out] $(tail -3 /tmp/e14)";; esac

# Published ports: DNAT from the node's 127.0.0.1 to a guest's httpd, shown by ps; a second
# claim and a port a node process listens on are refused with the reason.
# busybox's static wget crashes in glibc's resolver (in the node and in the image alike), so
# nc speaks HTTP: get HOST PORT prints the body's last line. fetch retries until the server
# answers (it starts after `run -d` returns), bounded.
get() { printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 "$1" "$2" 2>/dev/null | tail -1; }
fetch() { n=0; until page=$(get "$1" "$2"); [ -n "$page" ]; do n=$((n+1)); [ $n -ge 60 ] && break; sleep 0.5; done; echo "$page"; }
box run -d --name web -p 8080:80 "$IMG" -- sh -c 'mkdir -p /tmp/w && echo guest-page > /tmp/w/index.html && exec httpd -f -p 80 -h /tmp/w' >/dev/null 2>/tmp/e15
page=$(fetch 127.0.0.1 8080)
psl=$(box ps | grep '^web ')
box run --rm -p 8080:80 "$IMG" -- true 2>/tmp/e15b; dup=$?
box run --rm -p 8000:80 "$IMG" -- true 2>/tmp/e15c; busy=$?
if [ "$page" = guest-page ] && echo "$psl" | grep -q '0.0.0.0:8080->80/tcp' && [ $dup != 0 ] && grep -q "already published by sandbox web" /tmp/e15b && [ $busy != 0 ] && grep -q "in use on this host" /tmp/e15c; then ok "15 -p 8080:80: the node's 127.0.0.1:8080 gets the guest's page, ps shows 0.0.0.0:8080->80/tcp, a second -p 8080 and a port in use are refused"; else bad "15 publish" "page=[$page] ps=[$psl] dup=$dup($(tail -1 /tmp/e15b)) busy=$busy($(tail -1 /tmp/e15c)) $(tail -2 /tmp/e15)"; fi

# Two sandboxes on box0 reach each other.
webip=$(box inspect web | grep -o '"10\.77\.0\.[0-9]*/' | head -1 | tr -d '"/')
peer=$(box run --rm "$IMG" -- sh -c "printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 10 $webip 80 | tail -1" 2>/tmp/e16)
if [ -n "$webip" ] && [ "$peer" = guest-page ]; then ok "16 sandbox to sandbox: a second sandbox gets web's page at $webip"; else bad "16 peers" "ip=[$webip] page=[$peer] $(tail -2 /tmp/e16)"; fi

# rm -f leaves no TAP, no DNAT element, no lease.
tap=$(box inspect web | grep -o '"bx[0-9a-f]*"' | tr -d '"')
tapbefore=$(/usr/sbin/ip -o link | grep -c "$tap")
box rm -f web 2>/tmp/e17; rc=$?
tapafter=$(/usr/sbin/ip -o link | grep -c "$tap")
elems=$(nft list map ip box tcp_any 2>&1 | grep -c 8080)
leases=$(grep -l '^web$' $BOX_STATE_DIR/network/leases/* 2>/dev/null | wc -l)
claims=$(ls $BOX_STATE_DIR/network/ports/ 2>/dev/null | wc -l)
if [ $rc = 0 ] && [ -n "$tap" ] && [ "$tapbefore" = 1 ] && [ "$tapafter" = 0 ] && [ "$elems" = 0 ] && [ "$leases" = 0 ] && [ "$claims" = 0 ]; then ok "17 rm -f: TAP $tap gone, no DNAT element, no lease, no port claim"; else bad "17 cleanup" "rc=$rc tap=[$tap] before=$tapbefore after=$tapafter elems=$elems leases=$leases claims=$claims $(tail -2 /tmp/e17)"; fi

# The pod network: CNI's bridge plugin makes a netns with a veth; box wires a TAP to it with
# tc; the guest takes the veth's MAC and address and serves at the pod IP. A box0 subnet
# that clashes with CNI's is refused.
mkdir -p /var/lib/cni
/usr/sbin/ip netns add pod1 2>/tmp/e18
conf='{"cniVersion":"1.0.0","name":"podnet","type":"bridge","bridge":"cni0","isGateway":true,"ipMasq":false,"ipam":{"type":"host-local","subnet":"10.89.0.0/24","routes":[{"dst":"0.0.0.0/0"}]}}'
res=$(echo "$conf" | CNI_COMMAND=ADD CNI_CONTAINERID=pod1 CNI_NETNS=/run/netns/pod1 CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni /usr/lib/cni/bridge 2>>/tmp/e18)
podip=$(echo "$res" | tr -d ' \n' | sed -n 's/.*"address":"\([0-9.]*\)\/.*/\1/p')
box run -d --name pod --network ns:/run/netns/pod1 "$IMG" -- sh -c 'mkdir -p /tmp/w && echo pod-page > /tmp/w/index.html && exec httpd -f -p 80 -h /tmp/w' >/dev/null 2>>/tmp/e18
ppage=$(fetch "$podip" 80)
gmac=$(box exec pod -- ip -o link show eth0 2>>/tmp/e18 | grep -o 'link/ether [0-9a-f:]*' | cut -d' ' -f2)
vmac=$(/usr/sbin/ip netns exec pod1 cat /sys/class/net/eth0/address 2>>/tmp/e18)
BOX_NET_SUBNET=10.89.0.0/24 box run --rm "$IMG" -- true 2>/tmp/e18c; clash=$?
box rm -f pod >/dev/null 2>>/tmp/e18
/usr/sbin/ip netns del pod1 2>>/tmp/e18
if [ -n "$podip" ] && [ "$ppage" = pod-page ] && [ -n "$gmac" ] && [ "$gmac" = "$vmac" ] && [ $clash != 0 ] && grep -q "overlaps" /tmp/e18c; then ok "18 pod network: CNI netns, TAP+tc to its veth, the guest (MAC $gmac = veth's) serves at its pod IP $podip; a clashing box0 subnet is refused ($(head -1 /tmp/e18c | cut -c1-100))"; else bad "18 pod network" "ip=[$podip] page=[$ppage] gmac=[$gmac] vmac=[$vmac] clash=$clash($(head -1 /tmp/e18c)) $(tail -3 /tmp/e18)"; fi

# The pooled API in microVMs: `box serve` with a warm pool of 2, on TCP with its token (busybox
# nc speaks HTTP/1.0, so bodies arrive unchunked). Acquire from the pool, run echo, take more
# while the pool refills, kill a running command, delete: no box-vmm left after SIGTERM.
box serve --listen 127.0.0.1:7070 --pool "$IMG=2" >/tmp/e19s 2>&1 &
spid=$!
api() {
  printf '%s %s HTTP/1.0\r\nHost: box\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' "$1" "$2" "$(cat $BOX_STATE_DIR/serve.token 2>/dev/null)" "${#3}" "$3" | nc -w 60 127.0.0.1 7070 2>/dev/null
}
n=0; ready=0
while [ $n -lt 600 ] && kill -0 $spid 2>/dev/null; do
  ready=$(api GET /metrics | grep '^box_pool_ready' | cut -d' ' -f2)
  [ "$ready" = 2 ] && break
  n=$((n+1)); sleep 0.2
done
a=$(api POST /v1/sandboxes "{\"image\":\"$IMG\"}")
aid=$(echo "$a" | tr -d '\r' | sed -n 's/.*"id":"\(sbx-[0-9a-f]*\)".*/\1/p')
echo19=$(api POST /v1/sandboxes/$aid/commands '{"cmd":["echo","hi"]}' | tr -d '\r' | grep -c -e '{"type":"stdout","data":"hi\\n"}' -e '{"type":"exit","code":0}')
b=$(api POST /v1/sandboxes "{\"image\":\"$IMG\"}"); c=$(api POST /v1/sandboxes "{\"image\":\"$IMG\"}")
bid=$(echo "$b" | tr -d '\r' | sed -n 's/.*"id":"\(sbx-[0-9a-f]*\)".*/\1/p'); cid=$(echo "$c" | tr -d '\r' | sed -n 's/.*"id":"\(sbx-[0-9a-f]*\)".*/\1/p')
bg=$(api POST /v1/sandboxes/$bid/commands '{"cmd":["sleep","1000"],"background":true}' | tr -d '\r' | sed -n 's/.*"id":"\(cmd-[0-9a-f]*\)".*/\1/p')
killed=$(api POST /v1/sandboxes/$bid/commands/$bg/kill | head -1 | cut -d' ' -f2)
dels=""; for i in $aid $bid $cid; do dels="$dels$(api DELETE /v1/sandboxes/$i | head -1 | cut -d' ' -f2)"; done
pooled=$(echo "$a" | grep -c '"from_pool":true')
kill -TERM $spid; n=0; while kill -0 $spid 2>/dev/null && [ $n -lt 300 ]; do n=$((n+1)); sleep 0.1; done
left=$(live_vmms)
if [ "$ready" = 2 ] && [ "$pooled" = 1 ] && [ "$echo19" = 2 ] && [ -n "$bid" ] && [ -n "$cid" ] && [ "$killed" = 204 ] && [ "$dels" = 204204204 ] && [ "$left" = 0 ]; then ok "19 box serve in microVMs: pool of 2 ready, acquired from it, echo streamed (stdout, exit 0), two more taken while it refills, a running command killed, deletes, SIGTERM leaves no box-vmm"; else bad "19 box serve" "ready=[$ready] pooled=$pooled echo=$echo19 b=[$bid] c=[$cid] kill=[$killed] deletes=[$dels] vmms left=$left $(tail -3 /tmp/e19s)"; fi

echo "e2e: $pass passed, $fail failed"
echo "$pass passed, $fail failed"
[ $fail = 0 ]
"#;

pub fn run() -> Result<()> {
    let t0 = Instant::now();
    let p = product::prepare()?;
    util::run(util::cargo().args(["build", "-p", "box-tests", "--bin", "pty-drive"]))
        .context("building pty-drive")?;
    let mut spec = NodeSpec::new(format!("{}{SCRIPT}", product::env_prologue()));
    spec.bins = p.bins;
    spec.bins.push(paths::target_dir().join("debug/pty-drive"));
    spec.files = p.files;
    spec.timeout = Duration::from_secs(1200);
    spec.stream = true;
    node::run_tier("e2e", &spec, |out| {
        let summary = out
            .console
            .lines()
            .find(|l| l.starts_with("e2e: "))
            .unwrap_or("e2e: no summary line")
            .to_string();
        eprintln!(
            "xtask e2e: {summary} (L1 boot {:.1} s, node {:.1} s, all {:.1} s)",
            out.boot_time.as_secs_f64(),
            out.run_time.as_secs_f64(),
            t0.elapsed().as_secs_f64()
        );
        if out.exit_code != 0 || !summary.contains(" 0 failed") {
            bail!("end-to-end scenarios failed: {summary}");
        }
        Ok(())
    })
}
