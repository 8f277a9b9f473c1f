//! `box-vmm-probe`: a small static helper for the nested VMM tier and the benchmark
//! (`cargo xtask vmm-tier`, `cargo xtask bench`). The same binary runs in the L2 guest (vsock
//! ends; busybox has no vsock) and in the L1 node (the host ends of box-vmm's hybrid vsock
//! socket, and boot timing). Built with `+crt-static` so it needs no libc in the guest.
//!
//! Every transfer is a deterministic byte pattern of a given length, echoed back and compared,
//! so a lost, duplicated or reordered byte shows up as a mismatch, not as a hang.
//!
//! ```text
//! box-vmm-probe vsock-echo PORT               guest: listen on vsock PORT, echo one connection
//! box-vmm-probe vsock-send CID PORT BYTES     guest: connect to CID:PORT, send BYTES, expect them back
//! box-vmm-probe uds-connect UDS PORT BYTES    host: CONNECT PORT through box-vmm's socket, echo BYTES
//! box-vmm-probe uds-echo PATH                 host: listen on PATH (`<uds>_<port>`), echo one connection
//! box-vmm-probe boot-time MARKER SECS -- CMD  host: run CMD, time to the first stdout line holding
//!                                             MARKER and to its exit, sample its memory and
//!                                             its VM's KVM counters at the marker (CMD's
//!                                             stderr is the probe's)
//! box-vmm-probe wall -- CMD                    host: run CMD, print its wall time and exit code
//! box-vmm-probe tap-persist NAME               host: create a persistent TAP (vnet headers) NAME
//! box-vmm-probe tcp-send ADDR:PORT LEN         send LEN pattern bytes over TCP, half-close, wait
//!                                             for the peer's close (all delivered); prints ms
//! box-vmm-probe tcp-sink PORT                  host: take one TCP connection, read it to EOF,
//!                                             print bytes and ms from accept to EOF
//! box-vmm-probe tcp-rr ADDR:PORT N             host: N one-byte request/response round trips,
//!                                             print their mean in µs
//! box-vmm-probe attach-disk SOCK SLOT FILE ID [ro]  host: open FILE and put it into disk slot
//!                                             SLOT through box-vmm's control socket SOCK
//! box-vmm-probe detach-disk SOCK SLOT          host: empty disk slot SLOT
//! box-vmm-probe net-guest ADDR:PORT LEN        guest: the benchmark's guest half: sink one TCP
//!                                             connection on 7001, echo one on 7002, then send
//!                                             LEN bytes to ADDR:PORT
//! ```

use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

type Res<T> = Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match dispatch(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("probe: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(args: &[&str]) -> Res<()> {
    match args {
        ["vsock-echo", port] => vsock_echo(num(port)?),
        ["vsock-send", cid, port, len] => vsock_send(num(cid)?, num(port)?, num(len)?),
        ["uds-connect", path, port, len] => uds_connect(path, num(port)?, num(len)?),
        ["uds-echo", path] => uds_echo(path),
        ["boot-time", marker, secs, "--", cmd @ ..] if !cmd.is_empty() => {
            boot_time(marker, num(secs)?, cmd)
        }
        ["wall", "--", cmd @ ..] if !cmd.is_empty() => wall(cmd),
        ["tap-persist", name] => tap_persist(name),
        ["tcp-send", addr, len] => tcp_send(addr, num(len)?),
        ["tcp-sink", port] => tcp_sink(&listen_tcp(num(port)?)?).map(|_| ()),
        ["tcp-rr", addr, n] => tcp_rr(addr, num(n)?),
        ["net-guest", addr, len] => net_guest(addr, num(len)?),
        ["attach-disk", sock, slot, file, id, rest @ ..] if rest.is_empty() || rest == ["ro"] => {
            attach_disk(sock, num(slot)?, file, id, !rest.is_empty())
        }
        ["detach-disk", sock, slot] => control(
            sock,
            &box_vmm::control::Request::DetachDisk { slot: num(slot)? },
            None,
        ),
        _ => Err("usage: see the comment at the top of tests/src/bin/box-vmm-probe.rs".into()),
    }
}

fn num<T: std::str::FromStr>(s: &str) -> Res<T> {
    s.parse().map_err(|_| format!("`{s}` is not a number"))
}

/// The pattern byte at offset `i`: not periodic in any power of two, so a shifted or repeated
/// chunk does not compare equal.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

fn vsock_socket() -> Res<OwnedFd> {
    // SAFETY: plain socket(2) call; the returned fd is checked and then owned.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!(
            "socket(AF_VSOCK): {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn vsock_addr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

fn vsock_echo(port: u32) -> Res<()> {
    use std::os::fd::AsRawFd;
    let s = vsock_socket()?;
    let addr = vsock_addr(libc::VMADDR_CID_ANY, port);
    let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm of `len` bytes; s is an open socket.
    if unsafe { libc::bind(s.as_raw_fd(), std::ptr::addr_of!(addr).cast(), len) } != 0 {
        return Err(format!(
            "bind vsock:{port}: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: s is an open, bound socket.
    if unsafe { libc::listen(s.as_raw_fd(), 4) } != 0 {
        return Err(format!("listen: {}", std::io::Error::last_os_error()));
    }
    println!("probe: vsock-listening {port}");
    let _ = std::io::stdout().flush();
    // SAFETY: s is listening; a null address is allowed.
    let c = unsafe { libc::accept(s.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut()) };
    if c < 0 {
        return Err(format!("accept: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: c is a fresh descriptor from accept, owned from here on.
    let conn = unsafe { OwnedFd::from_raw_fd(c) };
    let mut stream = UnixStream::from(conn); // read/write on any stream socket fd
    let n = echo(&mut stream)?;
    println!("probe: vsock-echoed {n}");
    Ok(())
}

/// Echoes until EOF; returns how many bytes went through.
fn echo(s: &mut UnixStream) -> Res<usize> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("echo read: {e}"))?;
        if n == 0 {
            return Ok(total);
        }
        s.write_all(&buf[..n])
            .map_err(|e| format!("echo write: {e}"))?;
        total += n;
    }
}

/// Sends `len` pattern bytes on one thread while reading them back on this one (the echo
/// cannot buffer everything, so writing first and reading after would deadlock), then checks.
fn exchange(s: UnixStream, len: usize) -> Res<()> {
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut w = s.try_clone().map_err(|e| e.to_string())?;
    let writer = std::thread::spawn(move || -> Res<()> {
        let data: Vec<u8> = (0..len).map(pattern).collect();
        for chunk in data.chunks(16 * 1024) {
            w.write_all(chunk).map_err(|e| format!("write: {e}"))?;
        }
        // Half-close: the echo side sees EOF once everything is through.
        let _ = w.shutdown(std::net::Shutdown::Write);
        Ok(())
    });
    let mut r = s;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < len {
        let n = r
            .read(&mut buf)
            .map_err(|e| format!("read after {got} of {len} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("EOF after {got} of {len} bytes"));
        }
        if let Some(i) = (0..n).find(|&i| buf[i] != pattern(got + i)) {
            return Err(format!("byte {} differs", got + i));
        }
        got += n;
    }
    writer.join().map_err(|_| "writer panicked".to_string())??;
    Ok(())
}

fn vsock_send(cid: u32, port: u32, len: usize) -> Res<()> {
    use std::os::fd::AsRawFd;
    let s = vsock_socket()?;
    let addr = vsock_addr(cid, port);
    let alen = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: addr is a valid sockaddr_vm of `alen` bytes; s is an open socket.
    if unsafe { libc::connect(s.as_raw_fd(), std::ptr::addr_of!(addr).cast(), alen) } != 0 {
        return Err(format!(
            "connect vsock {cid}:{port}: {}",
            std::io::Error::last_os_error()
        ));
    }
    exchange(UnixStream::from(s), len)?;
    println!("probe: vsock-send ok {len}");
    Ok(())
}

fn uds_connect(path: &str, port: u32, len: usize) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::new();
    while Instant::now() < deadline {
        match uds_handshake(path, port) {
            Ok((s, reply)) => {
                exchange(s, len)?;
                println!("probe: uds-connect ok {len} ({})", reply.trim_end());
                return Ok(());
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("no connection to guest port {port}: {last}"))
}

fn uds_handshake(path: &str, port: u32) -> Res<(UnixStream, String)> {
    let mut s = UnixStream::connect(path).map_err(|e| format!("connect {path}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| format!("write CONNECT: {e}"))?;
    // Read the reply byte by byte: what follows the newline is already the guest's stream.
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b) {
            Ok(0) => return Err(format!("EOF after {:?}", String::from_utf8_lossy(&line))),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => line.push(b[0]),
            Err(e) => return Err(format!("reading the CONNECT reply: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let ok = line
        .strip_prefix("OK ")
        .is_some_and(|n| n.parse::<u32>().is_ok());
    if !ok {
        return Err(format!("CONNECT reply {line:?}, expected `OK <port>`"));
    }
    Ok((s, line))
}

fn uds_echo(path: &str) -> Res<()> {
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path).map_err(|e| format!("bind {path}: {e}"))?;
    println!("probe: uds-listening {path}");
    let _ = std::io::stdout().flush();
    let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    let n = echo(&mut s)?;
    println!("probe: uds-echoed {n}");
    Ok(())
}

/// Runs `cmd`, prints `probe: boot-time ms=<first MARKER line> exit_ms=.. rss_kb=.. hwm_kb=..
/// overhead_kb=.. <kvm stats> exit=..`. After the marker, the process gets `secs` to exit on
/// its own, then it is killed. Memory and KVM's counters are sampled when the marker shows:
/// `overhead_kb` is the VMM's resident memory outside guest RAM (every mapping smaller than
/// `$PROBE_GUEST_MIB`, default 256), the KVM counters are the VM's in debugfs (when mounted).
fn boot_time(marker: &str, secs: u64, cmd: &[&str]) -> Res<()> {
    let guest_mib: u64 = std::env::var("PROBE_GUEST_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let start = Instant::now();
    let mut child = Command::new(cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("spawn {}: {e}", cmd[0]))?;
    let pid = child.id();
    let out = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    let want = marker.to_string();
    std::thread::spawn(move || {
        let mut seen = false;
        for line in BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { break };
            if !seen && String::from_utf8_lossy(&line).contains(&want) {
                seen = true;
                let _ = tx.send(start.elapsed());
            }
        }
    });
    let up = rx.recv_timeout(Duration::from_secs(120));
    let (rss, hwm) = mem_kb(pid);
    let overhead = overhead_kb(pid, guest_mib << 10);
    let kvm = kvm_stats(pid);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let st = child.wait();
        let _ = done_tx.send((st, start.elapsed()));
    });
    let (code, exit_ms) = match done_rx.recv_timeout(Duration::from_secs(secs)) {
        Ok((Ok(st), t)) => (
            st.code().map_or("signal".to_string(), |c| c.to_string()),
            t.as_millis(),
        ),
        Ok((Err(e), _)) => return Err(format!("wait: {e}")),
        Err(_) => {
            // SAFETY: plain kill(2) of our own child, which has not been reaped (its waiter
            // is still blocked in wait).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            ("killed".to_string(), 0)
        }
    };
    match up {
        Ok(t) => {
            println!(
                "probe: boot-time ms={} exit_ms={exit_ms} rss_kb={rss} hwm_kb={hwm} overhead_kb={overhead} {kvm} exit={code}",
                t.as_millis()
            );
            Ok(())
        }
        Err(_) => Err(format!("no `{marker}` line (exit {code})")),
    }
}

/// Resident kB of every mapping smaller than `guest_kb` (guest RAM is the big ones).
fn overhead_kb(pid: u32, guest_kb: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let (mut total, mut size) = (0u64, 0u64);
    for l in smaps.lines() {
        let kb = |l: &str, k: &str| -> Option<u64> {
            l.strip_prefix(k)?.split_whitespace().next()?.parse().ok()
        };
        if let Some(v) = kb(l, "Size:") {
            size = v;
        } else if let Some(v) = kb(l, "Rss:") {
            if size < guest_kb {
                total += v;
            }
        }
    }
    total
}

/// KVM's counters for the VM of `pid`, from debugfs (`<pid>-<fd>/`), as `key=value` words.
fn kvm_stats(pid: u32) -> String {
    const KEYS: &[&str] = &[
        "exits",
        "io_exits",
        "mmio_exits",
        "halt_exits",
        "irq_exits",
        "pf_fixed",
        "pages_4k",
        "pages_2m",
    ];
    let prefix = format!("{pid}-");
    let dir = std::fs::read_dir("/sys/kernel/debug/kvm")
        .ok()
        .and_then(|d| {
            d.flatten()
                .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        });
    let Some(dir) = dir else {
        return "kvm=none".into();
    };
    KEYS.iter()
        .map(|k| {
            let v = std::fs::read_to_string(dir.path().join(k)).unwrap_or_default();
            format!("kvm_{k}={}", v.trim())
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// No progress for this long fails a TCP leg instead of hanging the node.
const TCP_STALL: Duration = Duration::from_secs(60);

/// Sends `len` pattern bytes to `addr`, then half-closes and reads until the peer closes, so
/// that success means the peer received everything (not that it sits in a send buffer).
/// Prints `probe: tcp-sent LEN ms=N`, timed from connect to the peer's close.
fn tcp_send(addr: &str, len: usize) -> Res<()> {
    let start = Instant::now();
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_write_timeout(Some(TCP_STALL))
        .and_then(|()| s.set_read_timeout(Some(TCP_STALL)))
        .map_err(|e| e.to_string())?;
    let chunk: Vec<u8> = (0..65536).map(pattern).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n])
            .map_err(|e| format!("write after {} of {len} bytes: {e}", len - left))?;
        left -= n;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown: {e}"))?;
    let mut rest = Vec::new();
    s.read_to_end(&mut rest)
        .map_err(|e| format!("waiting for the peer: {e}"))?;
    println!("probe: tcp-sent {len} ms={}", start.elapsed().as_millis());
    Ok(())
}

fn listen_tcp(port: u16) -> Res<std::net::TcpListener> {
    std::net::TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("bind :{port}: {e}"))
}

/// Takes one connection on `l` and reads it to EOF; prints `probe: tcp-sink bytes=N ms=M`
/// (accept to EOF) and closes, which tells the sender everything arrived.
fn tcp_sink(l: &std::net::TcpListener) -> Res<usize> {
    let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    let start = Instant::now();
    s.set_read_timeout(Some(TCP_STALL))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read after {total} bytes: {e}")),
        }
    }
    println!(
        "probe: tcp-sink bytes={total} ms={}",
        start.elapsed().as_millis()
    );
    Ok(total)
}

/// `n` round trips of one byte each way on one connection (Nagle off); prints
/// `probe: tcp-rr n=N mean_us=X`. The mean of the whole run, not per-trip samples: the
/// nested node's clock ticks in milliseconds, coarser than one trip.
fn tcp_rr(addr: &str, n: usize) -> Res<()> {
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_nodelay(true)
        .and_then(|()| s.set_read_timeout(Some(TCP_STALL)))
        .map_err(|e| e.to_string())?;
    let mut b = [0u8; 1];
    let start = Instant::now();
    for i in 0..n {
        s.write_all(&[i as u8])
            .and_then(|()| s.read_exact(&mut b))
            .map_err(|e| format!("round trip {i}: {e}"))?;
        if b[0] != i as u8 {
            return Err(format!("round trip {i} came back as {}", b[0]));
        }
    }
    let mean = start.elapsed().as_micros() / n.max(1) as u128;
    println!("probe: tcp-rr n={n} mean_us={mean}");
    Ok(())
}

/// The benchmark's guest half, in one process so that both listeners are bound before it says
/// `probe: net-ready`: sink one connection on 7001, echo one on 7002, then send `len` bytes to
/// `addr` (the host's sink).
fn net_guest(addr: &str, len: usize) -> Res<()> {
    let sink = listen_tcp(7001)?;
    let echo_l = listen_tcp(7002)?;
    println!("probe: net-ready");
    let _ = std::io::stdout().flush();
    tcp_sink(&sink)?;
    let (mut s, _) = echo_l.accept().map_err(|e| format!("accept: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut r = s.try_clone().map_err(|e| e.to_string())?;
    let n = std::io::copy(&mut r, &mut s).map_err(|e| format!("echo: {e}"))?;
    println!("probe: tcp-echoed {n}");
    tcp_send(addr, len)
}

/// Opens `file` (read-only when `ro`) and hands it to box-vmm for slot `slot`, as the host
/// library does: the jailed VMM gets the descriptor, never the path.
fn attach_disk(sock: &str, slot: usize, file: &str, id: &str, ro: bool) -> Res<()> {
    use std::os::fd::AsFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(!ro)
        .open(file)
        .map_err(|e| format!("open {file}: {e}"))?;
    let req = box_vmm::control::Request::AttachDisk {
        slot,
        id: id.to_string(),
        read_only: ro,
    };
    control(sock, &req, Some(f.as_fd()))
}

/// One control request; prints `probe: control ok ...` or `probe: control error: ...`.
fn control(
    sock: &str,
    req: &box_vmm::control::Request,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Res<()> {
    let r = box_vmm::control::call(std::path::Path::new(sock), req, fd, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    match (r.ok, r.error) {
        (true, _) => {
            println!(
                "probe: control ok slot={} sectors={}",
                r.slot.map_or("-".into(), |s| s.to_string()),
                r.sectors.map_or("-".into(), |s| s.to_string())
            );
            Ok(())
        }
        (false, e) => Err(format!("control: {}", e.unwrap_or_default())),
    }
}

/// Creates TAP `name` as box-vmm opens it and marks it persistent, so that it can be given an
/// address before box-vmm attaches to it.
fn tap_persist(name: &str) -> Res<()> {
    use box_vmm::devices::virtio::net::tap;
    use std::os::fd::AsFd;
    let fd = tap::open(name).map_err(|e| e.to_string())?;
    tap::set_persistent(fd.as_fd(), true).map_err(|e| format!("TUNSETPERSIST: {e}"))?;
    println!("probe: tap-persist {name}");
    Ok(())
}

/// Runs `cmd` (stdio inherited) and prints `probe: wall ms=.. exit=..`.
fn wall(cmd: &[&str]) -> Res<()> {
    let start = Instant::now();
    let st = Command::new(cmd[0])
        .args(&cmd[1..])
        .status()
        .map_err(|e| format!("spawn {}: {e}", cmd[0]))?;
    println!(
        "probe: wall ms={} exit={}",
        start.elapsed().as_millis(),
        st.code().map_or("signal".to_string(), |c| c.to_string())
    );
    Ok(())
}

fn mem_kb(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
