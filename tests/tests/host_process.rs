//! The host-process tier: guest-init as PID 1 of a new PID + mount namespace, driven only
//! through the host library's client. Each test starts its own init.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::time::Duration;

use box_guest_init::api::events::Event;
use box_guest_init::api::stream::StreamKind;
use box_shim::agent_client::{GuestClient, StdioRequest};
use box_tests::host_init::{HostInit, BACKSTOP};
use box_tests::require_host_tier;
use containerd_shim_protos::api::Status;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

fn process(args: &[&str], terminal: bool) -> serde_json::Value {
    json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin", "TERM=xterm"],
        "cwd": "/"
    })
}

const NO_IO: StdioRequest = StdioRequest {
    stdin: false,
    stdout: false,
    stderr: false,
    terminal: false,
};

/// A container whose main process sleeps, to exec into.
async fn sleeping_container(init: &HostInit, c: &GuestClient, id: &str) {
    let bundle = init.bundle(id, &["sleep", "100000"], false);
    c.create(id, &bundle, &NO_IO).await.expect("create");
    c.start(id, "").await.expect("start");
}

async fn exec_code(c: &GuestClient, id: &str, exec_id: &str, args: &[&str]) -> u32 {
    c.exec(id, exec_id, &process(args, false), &NO_IO)
        .await
        .expect("exec");
    c.start(id, exec_id).await.expect("start exec");
    tokio::time::timeout(BACKSTOP, c.wait(id, exec_id))
        .await
        .unwrap_or_else(|_| panic!("exec {exec_id}: no exit routed within {BACKSTOP:?}"))
        .expect("wait")
        .exit_status
}

async fn read_all(mut s: UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("read stream");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t1_main_exit_code_and_sigkill_status() {
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;

    let b = init.bundle("seven", &["sh", "-c", "exit 7"], false);
    c.create("seven", &b, &NO_IO).await.unwrap();
    assert_eq!(
        c.state("seven", "").await.unwrap().status.enum_value(),
        Ok(Status::CREATED)
    );
    c.start("seven", "").await.unwrap();
    assert_eq!(c.wait("seven", "").await.unwrap().exit_status, 7);
    let del = c.delete("seven", "").await.unwrap();
    assert_eq!(del.exit_status, 7);
    assert!(del.exited_at.is_some());

    let b = init.bundle("victim", &["sleep", "100000"], false);
    c.create("victim", &b, &NO_IO).await.unwrap();
    c.start("victim", "").await.unwrap();
    c.kill("victim", "", 9, false).await.unwrap();
    let w = c.wait("victim", "").await.unwrap();
    assert_eq!(w.exit_status, 137, "SIGKILL is reported as 128+9");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t2_exec_codes_and_500_concurrent_fast_execs() {
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    sleeping_container(&init, &c, "ctr").await;
    assert_eq!(exec_code(&c, "ctr", "false", &["false"]).await, 1);
    assert_eq!(exec_code(&c, "ctr", "true", &["true"]).await, 0);

    let mut tasks = Vec::new();
    for i in 0..500u32 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            let code = i % 256;
            let script = format!("exit {code}");
            let got = exec_code(&c, "ctr", &format!("e{i}"), &["sh", "-c", &script]).await;
            (code, got)
        }));
    }
    let mut wrong = Vec::new();
    for t in tasks {
        let (want, got) = t.await.unwrap();
        if want != got {
            wrong.push((want, got));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of 500 execs got a wrong code (want, got): {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(20)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t3_double_forked_orphans_are_reaped_while_execs_keep_codes() {
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    sleeping_container(&init, &c, "ctr").await;
    let baseline: HashSet<i32> = init
        .namespace_processes()
        .into_iter()
        .map(|(p, _)| p)
        .collect();

    // Each `( ... &)` subshell exits at once, leaving its background child to PID 1.
    let spawner = "i=0; while [ $i -lt 50 ]; do (sleep 0.2 &); i=$((i+1)); done";
    let orphans = tokio::spawn({
        let c = c.clone();
        async move { exec_code(&c, "ctr", "orphans", &["sh", "-c", spawner]).await }
    });
    let mut codes = Vec::new();
    for i in 0..40u32 {
        let c = c.clone();
        codes.push(tokio::spawn(async move {
            let code = 100 + i;
            (
                code,
                exec_code(
                    &c,
                    "ctr",
                    &format!("x{i}"),
                    &["sh", "-c", &format!("exit {code}")],
                )
                .await,
            )
        }));
    }
    assert_eq!(orphans.await.unwrap(), 0);
    for t in codes {
        let (want, got) = t.await.unwrap();
        assert_eq!(want, got);
    }

    // Quiescence: every orphan gone. A zombie never leaves, so a reaper that drops orphans
    // without reaping them runs into the backstop here.
    let deadline = tokio::time::Instant::now() + BACKSTOP;
    loop {
        let procs = init.namespace_processes();
        let extra: Vec<_> = procs
            .iter()
            .filter(|(p, _)| !baseline.contains(p))
            .collect();
        let zombies: Vec<_> = procs.iter().filter(|(_, s)| *s == 'Z').collect();
        if extra.is_empty() {
            assert!(zombies.is_empty(), "zombies: {zombies:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "processes left behind: {extra:?} (zombies: {zombies:?})"
        );
        // Polling a condition the kernel holds, not a synchronization sleep.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t4_early_bind_queues_connects_during_slow_phase() {
    require_host_tier!();
    let mut init = HostInit::start(true);
    // Init is held in its slow phase now, listeners bound but not served.
    let client = GuestClient::connect(init.endpoint.clone())
        .await
        .expect("connect during the slow phase must queue, not be refused");
    let stdio = init
        .endpoint
        .connect(box_guest_init::api::Port::Stdio)
        .await;
    assert!(stdio.is_ok(), "stdio connect refused: {stdio:?}");
    let health = tokio::spawn(async move { client.health(BACKSTOP).await });
    // Not answered while held (it cannot be: nobody accepts yet).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!health.is_finished(), "answered while init was held");
    init.release();
    let h = health
        .await
        .unwrap()
        .expect("the queued health call is served once init proceeds");
    assert!(!h.version.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t5_pty_exec_echo_resize_and_exit_code() {
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    sleeping_container(&init, &c, "ctr").await;
    let tty = StdioRequest {
        terminal: true,
        ..NO_IO
    };
    c.exec("ctr", "sh", &process(&["sh"], true), &tty)
        .await
        .unwrap();
    let mut pty = c.open_stream("ctr", "sh", StreamKind::Pty).await.unwrap();
    c.resize_pty("ctr", "sh", 100, 40).await.unwrap();
    c.start("ctr", "sh").await.unwrap();
    pty.write_all(b"stty size; echo hi; exit 3\n")
        .await
        .unwrap();
    let out = tokio::time::timeout(BACKSTOP, read_all(pty))
        .await
        .expect("pty EOF");
    let text = String::from_utf8_lossy(&out);
    let lines: Vec<&str> = text.split("\r\n").map(str::trim).collect();
    assert!(lines.contains(&"40 100"), "stty size missing in {text:?}");
    assert!(lines.contains(&"hi"), "echo output missing in {text:?}");
    assert_eq!(c.wait("ctr", "sh").await.unwrap().exit_status, 3);
    // A second resize after exit is an error or a no-op, never a crash.
    let _ = c.resize_pty("ctr", "sh", 80, 24).await;
    c.health(BACKSTOP).await.unwrap();
}

/// Reads whatever the socket holds right now without waiting: (bytes, reached EOF).
fn drain_now(s: &UnixStream, into: &mut Vec<u8>) -> bool {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match nix::unistd::read(s.as_fd(), &mut buf) {
            Ok(0) => return true,
            Ok(n) => into.extend_from_slice(&buf[..n]),
            Err(nix::Error::EINTR) => continue,
            Err(nix::Error::EAGAIN) => return false,
            Err(e) => panic!("read: {e}"),
        }
    }
}

fn seq_bytes(upto: u32, limit: usize) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 1..=upto {
        v.extend_from_slice(format!("{i}\n").as_bytes());
        if v.len() >= limit {
            break;
        }
    }
    v.truncate(limit);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6_all_output_arrives_in_order_before_task_exit() {
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    let mut events = c.events().await.unwrap();
    sleeping_container(&init, &c, "ctr").await;
    let io = StdioRequest {
        stdout: true,
        stderr: true,
        ..NO_IO
    };
    let script = "seq 1 1500000 | head -c 10485760; seq 1 200000 | head -c 1048576 >&2";
    c.exec("ctr", "big", &process(&["sh", "-c", script], false), &io)
        .await
        .unwrap();
    let mut out = c
        .open_stream("ctr", "big", StreamKind::Stdout)
        .await
        .unwrap();
    let mut err = c
        .open_stream("ctr", "big", StreamKind::Stderr)
        .await
        .unwrap();
    c.start("ctr", "big").await.unwrap();

    let ([out, err], exit) =
        streams_then_exit([Some(&mut out), Some(&mut err)], &mut events, "big").await;
    // The guest closed both streams before it sent TaskExit: everything left is already
    // queued on our sockets, EOF included.
    assert!(out.at_eof, "stdout not at EOF when TaskExit arrived");
    assert!(err.at_eof, "stderr not at EOF when TaskExit arrived");
    let (got_out, got_err) = (out.bytes, err.bytes);
    assert_eq!(exit.exit_status, 0);
    assert_eq!(got_out.len(), 10 << 20);
    assert!(
        got_out == seq_bytes(1_500_000, 10 << 20),
        "stdout bytes differ"
    );
    assert_eq!(got_err.len(), 1 << 20);
    assert!(
        got_err == seq_bytes(200_000, 1 << 20),
        "stderr bytes differ"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t7_kill_after_exit_succeeds_and_late_wait_gets_status() {
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    let mut events = c.events().await.unwrap();
    sleeping_container(&init, &c, "ctr").await;
    c.exec(
        "ctr",
        "five",
        &process(&["sh", "-c", "exit 5"], false),
        &NO_IO,
    )
    .await
    .unwrap();
    c.start("ctr", "five").await.unwrap();
    // Wait for the exit event first, so that Wait is called strictly after the exit.
    loop {
        match tokio::time::timeout(BACKSTOP, events.next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(Event::Exit(e)) if e.id == "five" => {
                assert_eq!(e.exit_status, 5);
                assert!(e.exited_at.is_some());
                break;
            }
            Some(_) => {}
            None => panic!("events closed"),
        }
    }
    c.kill("ctr", "five", 9, false)
        .await
        .expect("kill of an exited process succeeds");
    c.kill("ctr", "five", 15, false).await.expect("and again");
    let w = c.wait("ctr", "five").await.unwrap();
    assert_eq!(w.exit_status, 5);
    assert!(w.exited_at.is_some());
    let st = c.state("ctr", "five").await.unwrap();
    assert_eq!(st.status.enum_value(), Ok(Status::STOPPED));
    assert_eq!(st.exit_status, 5);
}

fn xorshift(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t8_malformed_input_gets_errors_and_init_keeps_serving() {
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    let ep = init.endpoint.clone();
    use box_guest_init::api::Port;

    // Random bytes on every listener, from a fixed seed so a failure reproduces.
    let mut seed = 0x9e3779b97f4a7c15u64;
    for port in Port::ALL {
        for _ in 0..8 {
            let mut s = ep.connect(port).await.unwrap();
            let junk: Vec<u8> = (0..4096).map(|_| xorshift(&mut seed) as u8).collect();
            let _ = s.write_all(&junk).await;
            let _ = s.shutdown().await;
            let mut sink = Vec::new();
            let _ = tokio::time::timeout(BACKSTOP, s.read_to_end(&mut sink))
                .await
                .unwrap_or_else(|_| panic!("{port:?}: init neither answered nor closed"));
        }
    }
    // ttrpc frames: a truncated one, an oversized one, and a well-formed call to an unknown
    // method. Header: u32 length, u32 stream id, u8 type (1 = request), u8 flags.
    let header = |len: u32, id: u32| {
        let mut h = len.to_be_bytes().to_vec();
        h.extend_from_slice(&id.to_be_bytes());
        h.extend_from_slice(&[1, 0]);
        h
    };
    let mut s = ep.connect(Port::Control).await.unwrap();
    let mut truncated = header(100, 1);
    truncated.extend_from_slice(&[0u8; 10]);
    s.write_all(&truncated).await.unwrap();
    drop(s);
    // Just over ttrpc's 4 MiB limit, body included: the server skips it and answers an error.
    let mut s = ep.connect(Port::Control).await.unwrap();
    let over = ttrpc::proto::MESSAGE_LENGTH_MAX as u32 + 1;
    s.write_all(&header(over, 3)).await.unwrap();
    s.write_all(&vec![0u8; over as usize]).await.unwrap();
    let mut reply = [0u8; 10];
    tokio::time::timeout(BACKSTOP, s.read_exact(&mut reply))
        .await
        .expect("oversized frame answered")
        .expect("oversized frame gets an error reply");
    assert_eq!(reply[8], 2, "a response frame");
    // A length no one will ever send, then end of input: the connection closes.
    let mut s = ep.connect(Port::Control).await.unwrap();
    s.write_all(&header(u32::MAX, 5)).await.unwrap();
    s.write_all(&[0u8; 64]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(BACKSTOP, s.read_to_end(&mut sink))
        .await
        .expect("huge frame: connection closed")
        .ok();

    let raw = ttrpc::r#async::Client::new(ep.connect(Port::Control).await.unwrap().into());
    let mut req = ttrpc::Request::new();
    req.service = "box.Nope".into();
    req.method = "Nothing".into();
    let r = raw.request(req).await;
    assert!(
        r.is_err()
            || r.as_ref()
                .unwrap()
                .status
                .as_ref()
                .is_some_and(|s| s.code() != ttrpc::Code::OK),
        "unknown method must fail: {r:?}"
    );

    // Data plane: a hello that is not JSON, one too long, and one naming no such container.
    for hello in [
        b"garbage\n".to_vec(),
        vec![b'x'; 5000],
        b"{\"container_id\":\"nope\",\"stream\":\"stdout\"}\n".to_vec(),
    ] {
        let mut s = ep.connect(Port::Stdio).await.unwrap();
        s.write_all(&hello).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(BACKSTOP, s.read_to_end(&mut answer))
            .await
            .expect("hello answered");
        assert!(
            answer.starts_with(b"ERR "),
            "got {:?}",
            String::from_utf8_lossy(&answer)
        );
    }

    // Still serving: the old client, a new client, and real work.
    c.health(BACKSTOP).await.expect("old client still served");
    let fresh = init.client().await;
    sleeping_container(&init, &fresh, "ctr").await;
    assert_eq!(
        exec_code(&fresh, "ctr", "e", &["sh", "-c", "exit 42"]).await,
        42
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_shutdown_terminates_processes_and_exits() {
    require_host_tier!();
    let mut init = HostInit::start(false);
    let c = init.client().await;
    sleeping_container(&init, &c, "ctr").await;
    // A process that ignores SIGTERM forces the SIGKILL step.
    c.exec(
        "ctr",
        "stubborn",
        &process(&["sh", "-c", "trap '' TERM; sleep 100000"], false),
        &NO_IO,
    )
    .await
    .unwrap();
    c.start("ctr", "stubborn").await.unwrap();
    c.shutdown(Duration::from_millis(200)).await.unwrap();
    let code = tokio::task::spawn_blocking(move || init.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0), "init exits 0 after an orderly shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t11_sigterm_to_pid1_is_an_orderly_shutdown() {
    require_host_tier!();
    let mut init = HostInit::start(false);
    let c = init.client().await;
    sleeping_container(&init, &c, "ctr").await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(init.init_pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let code = tokio::task::spawn_blocking(move || init.wait_exit())
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

/// What one output stream delivered by the time the process's TaskExit arrived.
struct Delivered {
    bytes: Vec<u8>,
    /// Whether everything up to EOF had arrived (read, or already queued on our socket).
    at_eof: bool,
}

/// Reads the streams and the events concurrently until this process's TaskExit, then takes
/// whatever the streams already hold without waiting.
async fn streams_then_exit(
    streams: [Option<&mut UnixStream>; 2],
    events: &mut box_shim::agent_client::EventStream,
    exec_id: &str,
) -> (
    [Delivered; 2],
    containerd_shim_protos::events::task::TaskExit,
) {
    let [mut a, mut b] = streams;
    let mut got = [Vec::new(), Vec::new()];
    let mut eof = [a.is_none(), b.is_none()];
    let (mut buf_a, mut buf_b) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    async fn read_opt(s: &mut Option<&mut UnixStream>, buf: &mut [u8]) -> usize {
        match s {
            Some(s) => s.read(buf).await.unwrap(),
            None => std::future::pending().await,
        }
    }
    let exit = tokio::time::timeout(BACKSTOP, async {
        loop {
            tokio::select! {
                n = read_opt(&mut a, &mut buf_a), if !eof[0] => {
                    if n == 0 { eof[0] = true } else { got[0].extend_from_slice(&buf_a[..n]) }
                }
                n = read_opt(&mut b, &mut buf_b), if !eof[1] => {
                    if n == 0 { eof[1] = true } else { got[1].extend_from_slice(&buf_b[..n]) }
                }
                ev = events.next() => match ev.unwrap() {
                    Some(Event::Exit(e)) if e.id == exec_id => return e,
                    Some(_) => {}
                    None => panic!("events stream closed"),
                },
            }
        }
    })
    .await
    .expect("TaskExit within the backstop");
    let [got_a, got_b] = got;
    let finish = |s: Option<&mut UnixStream>, mut bytes: Vec<u8>, eof: bool| {
        let at_eof = eof || s.is_some_and(|s| drain_now(s, &mut bytes));
        Delivered { bytes, at_eof }
    };
    ([finish(a, got_a, eof[0]), finish(b, got_b, eof[1])], exit)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6b_output_of_a_background_child_still_precedes_task_exit() {
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    let mut events = c.events().await.unwrap();
    sleeping_container(&init, &c, "ctr").await;
    let io = StdioRequest {
        stdout: true,
        ..NO_IO
    };
    // The shell exits at once; its background child writes 10 MiB on the inherited stdout.
    let script = "(seq 1 1500000 | head -c 10485760) & exit 0";
    c.exec("ctr", "bg", &process(&["sh", "-c", script], false), &io)
        .await
        .unwrap();
    let mut out = c
        .open_stream("ctr", "bg", StreamKind::Stdout)
        .await
        .unwrap();
    c.start("ctr", "bg").await.unwrap();
    let ([out, _], exit) = streams_then_exit([Some(&mut out), None], &mut events, "bg").await;
    let (got, at_eof) = (out.bytes, out.at_eof);
    assert!(
        at_eof,
        "stdout not drained to EOF before TaskExit ({} bytes so far)",
        got.len()
    );
    assert_eq!(exit.exit_status, 0);
    assert_eq!(got.len(), 10 << 20);
    assert!(got == seq_bytes(1_500_000, 10 << 20), "stdout bytes differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t6c_a_grandchild_holding_stdout_open_does_not_block_task_exit() {
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    let mut events = c.events().await.unwrap();
    sleeping_container(&init, &c, "ctr").await;
    let io = StdioRequest {
        stdout: true,
        ..NO_IO
    };
    c.exec(
        "ctr",
        "held",
        &process(&["sh", "-c", "sleep 100000 & echo done"], false),
        &io,
    )
    .await
    .unwrap();
    let mut out = c
        .open_stream("ctr", "held", StreamKind::Stdout)
        .await
        .unwrap();
    c.start("ctr", "held").await.unwrap();
    let ([out, _], exit) = streams_then_exit([Some(&mut out), None], &mut events, "held").await;
    let (got, at_eof) = (out.bytes, out.at_eof);
    assert_eq!(exit.exit_status, 0);
    assert!(at_eof, "the stream is closed once the drain grace passed");
    assert_eq!(got, b"done\n");
    let w = tokio::time::timeout(BACKSTOP, c.wait("ctr", "held"))
        .await
        .expect("Wait is not blocked either");
    assert_eq!(w.unwrap().exit_status, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t12_stdin_close_io_and_the_process_spec_user_cwd_env() {
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    sleeping_container(&init, &c, "ctr").await;
    let io = StdioRequest {
        stdin: true,
        stdout: true,
        ..NO_IO
    };
    // CloseIO: `cat` sees EOF on stdin and exits with what it read.
    c.exec("ctr", "cat", &process(&["cat"], false), &io)
        .await
        .unwrap();
    let mut stdin = c
        .open_stream("ctr", "cat", StreamKind::Stdin)
        .await
        .unwrap();
    let stdout = c
        .open_stream("ctr", "cat", StreamKind::Stdout)
        .await
        .unwrap();
    c.start("ctr", "cat").await.unwrap();
    // 1 MiB: more than the socket buffers hold, so some of it is still in flight when
    // CloseIO arrives, and must still reach `cat` before its EOF.
    let sent = seq_bytes(200_000, 1 << 20);
    let reader =
        tokio::spawn(async move { tokio::time::timeout(BACKSTOP, read_all(stdout)).await });
    stdin.write_all(&sent).await.unwrap();
    stdin.flush().await.unwrap();
    c.close_stdin("ctr", "cat").await.unwrap();
    let out = reader.await.unwrap().expect("cat ends after CloseIO");
    assert!(out == sent, "cat got {} of {} bytes", out.len(), sent.len());
    assert_eq!(c.wait("ctr", "cat").await.unwrap().exit_status, 0);

    // The host half-closing the stdin connection is EOF too.
    c.exec("ctr", "wc", &process(&["wc", "-c"], false), &io)
        .await
        .unwrap();
    let mut stdin = c.open_stream("ctr", "wc", StreamKind::Stdin).await.unwrap();
    let stdout = c
        .open_stream("ctr", "wc", StreamKind::Stdout)
        .await
        .unwrap();
    c.start("ctr", "wc").await.unwrap();
    stdin.write_all(&[b'x'; 100_000]).await.unwrap();
    stdin.shutdown().await.unwrap();
    let out = tokio::time::timeout(BACKSTOP, read_all(stdout))
        .await
        .expect("wc ends after EOF");
    assert_eq!(String::from_utf8_lossy(&out).trim(), "100000");

    // uid, gid, cwd and env come from the spec; the main process can start only once.
    let spec = json!({
        "user": {"uid": 1234, "gid": 4321},
        "args": ["sh", "-c", "echo $(id -u) $(id -g) $(pwd) $GREETING"],
        "env": ["PATH=/bin", "GREETING=hello"],
        "cwd": "/tmp"
    });
    let out_only = StdioRequest {
        stdout: true,
        ..NO_IO
    };
    c.exec("ctr", "who", &spec, &out_only).await.unwrap();
    let stdout = c
        .open_stream("ctr", "who", StreamKind::Stdout)
        .await
        .unwrap();
    c.start("ctr", "who").await.unwrap();
    let out = tokio::time::timeout(BACKSTOP, read_all(stdout))
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out).trim(), "1234 4321 /tmp hello");
    assert!(
        c.start("ctr", "").await.is_err(),
        "a second Start of the main process must fail"
    );
    assert!(
        c.start("ctr", "who").await.is_err(),
        "a second Start of an exec must fail"
    );
    // Streams nobody asked for, or asked twice, are refused with a reason.
    assert!(c
        .open_stream("ctr", "who", StreamKind::Stderr)
        .await
        .is_err());
    assert!(c
        .open_stream("ctr", "who", StreamKind::Stdout)
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t13_a_described_bundle_gets_its_spec_and_an_overlay_root() {
    use box_shim::agent_client::RootfsMount;
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    let lower = init.dir.join("rootfs");
    let bundle = init.dir.join("guest-bundles/ovl");
    let spec = json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sleep", "100000"], "env": ["PATH=/bin"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}]
    });
    let m = |fstype: &str, source: &str, target: &str, options: &[&str]| RootfsMount {
        fstype: fstype.into(),
        source: source.into(),
        target: target.into(),
        options: options.iter().map(|s| s.to_string()).collect(),
    };
    let rootfs = vec![
        m("bind", &lower.to_string_lossy(), "lower", &["rbind", "ro"]),
        m("tmpfs", "tmpfs", "rw", &[]),
        m(
            "overlay",
            "overlay",
            "",
            &["lowerdir=lower", "upperdir=rw/upper", "workdir=rw/work"],
        ),
    ];
    c.create_described(
        "ovl",
        &bundle.to_string_lossy(),
        &NO_IO,
        Some(&spec),
        rootfs,
    )
    .await
    .expect("create from a described bundle");
    c.start("ovl", "").await.unwrap();
    let code = exec_code(
        &c,
        "ovl",
        "w",
        &[
            "sh",
            "-c",
            "echo new > /made-in-container && test -f /bin/busybox",
        ],
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        !lower.join("made-in-container").exists(),
        "writes land in the overlay, not the image"
    );
    // A spec that is not a spec, and a mount escaping the bundle, are refused with a reason.
    let bad = c
        .create_described(
            "bad",
            "/tmp/x",
            &NO_IO,
            None,
            vec![m("tmpfs", "tmpfs", "../../etc", &[])],
        )
        .await;
    let msg = format!("{:?}", bad.unwrap_err());
    assert!(msg.contains("inside the bundle"), "{msg}");
    c.kill("ovl", "", 9, false).await.unwrap();
    c.wait("ovl", "").await.unwrap();
    c.delete("ovl", "").await.unwrap();
    let still_mounted =
        std::fs::read_to_string(format!("/proc/{}/mountinfo", init.init_pid())).unwrap();
    assert!(
        !still_mounted.contains("guest-bundles/ovl"),
        "Delete unmounts the rootfs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t14_killed_before_start_and_delete_ends_the_container() {
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    // Killed while created (never started): Wait still returns, and Start is refused.
    let b = init.bundle("never", &["sleep", "100000"], false);
    c.create("never", &b, &NO_IO).await.unwrap();
    c.kill("never", "", 9, false).await.unwrap();
    let w = tokio::time::timeout(BACKSTOP, c.wait("never", ""))
        .await
        .expect("Wait of a never-started process");
    assert_eq!(w.unwrap().exit_status, 137);
    assert!(c.start("never", "").await.is_err());
    c.delete("never", "").await.unwrap();
    assert!(
        c.state("never", "").await.is_err(),
        "deleted containers are gone"
    );

    // The main process is PID 1 of the container's PID namespace: killing it takes every
    // other process of the container along (as runc's), and the exec's exit is reported.
    sleeping_container(&init, &c, "ctr").await;
    c.exec("ctr", "bg", &process(&["sleep", "100000"], false), &NO_IO)
        .await
        .unwrap();
    c.start("ctr", "bg").await.unwrap();
    c.kill("ctr", "", 9, false).await.unwrap();
    assert_eq!(c.wait("ctr", "").await.unwrap().exit_status, 137);
    let bg = tokio::time::timeout(BACKSTOP, c.wait("ctr", "bg"))
        .await
        .expect("the exec ends with its namespace's init");
    assert_eq!(bg.unwrap().exit_status, 137);
    let mut events = c.events().await.unwrap();
    c.delete("ctr", "").await.unwrap();
    loop {
        match tokio::time::timeout(BACKSTOP, events.next())
            .await
            .expect("exec exit")
            .unwrap()
        {
            Some(Event::Exit(e)) if e.id == "bg" => {
                assert_eq!(e.exit_status, 137);
                break;
            }
            Some(_) => {}
            None => panic!("events closed"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t15_run_process_one_call_streams_first_exit_and_forgetting() {
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    sleeping_container(&init, &c, "ctr").await;
    let io = StdioRequest {
        stdout: true,
        stderr: true,
        ..NO_IO
    };
    let script = process(&["sh", "-c", "echo out; echo err >&2; exit 3"], false);

    // The stdout hello goes out before the exec exists: guest-init holds it until the
    // definition arrives (without that, it is refused at once).
    let out = {
        let c = c.clone();
        tokio::spawn(async move { c.open_stream("ctr", "r1", StreamKind::Stdout).await })
    };
    let run = {
        let (c, io, script) = (c.clone(), io.clone(), script.clone());
        tokio::spawn(async move { c.run_process("ctr", "r1", &script, &io, true).await })
    };
    let err = c
        .open_stream("ctr", "r1", StreamKind::Stderr)
        .await
        .expect("stderr attaches");
    let out = out
        .await
        .unwrap()
        .expect("a hello before its exec attaches");
    let resp = tokio::time::timeout(BACKSTOP, run)
        .await
        .expect("RunProcess answers at the exit")
        .unwrap()
        .expect("RunProcess");
    assert_eq!(resp.exit_status, 3);
    assert!(resp.pid > 0 && resp.exited_at_ns > 0, "{resp:?}");
    assert_eq!(read_all(out).await, b"out\n");
    assert_eq!(read_all(err).await, b"err\n");
    let gone = c
        .state("ctr", "r1")
        .await
        .expect_err("the exec is forgotten");
    assert!(
        gone.to_string().contains("not found") || gone.to_string().contains("r1"),
        "{gone}"
    );

    // Streams that never come: the process never runs, and nothing is left behind.
    let marker = process(&["touch", "/ran"], false);
    let e = c
        .run_process_within("ctr", "r2", &marker, &io, true, Duration::from_millis(300))
        .await
        .expect_err("no streams, no run");
    assert!(e.to_string().contains("not attached"), "{e}");
    assert!(c.state("ctr", "r2").await.is_err(), "r2 is forgotten");
    assert_eq!(
        exec_code(&c, "ctr", "check", &["test", "-e", "/ran"]).await,
        1
    );

    // A command that cannot run: the Exec stage's errno, and again nothing left behind.
    let e = c
        .run_process("ctr", "r3", &process(&["/no/such"], false), &NO_IO, true)
        .await
        .expect_err("ENOENT");
    assert_eq!(
        e.cannot_run(),
        Some(box_shim::agent_client::CannotRun::NotFound),
        "{e}"
    );
    assert!(c.state("ctr", "r3").await.is_err(), "r3 is forgotten");

    // Without `wait`: the answer comes at the start; the exit is the Task API's as usual.
    let bg = c
        .run_process(
            "ctr",
            "r4",
            &process(&["sh", "-c", "exit 9"], false),
            &NO_IO,
            false,
        )
        .await
        .expect("started");
    assert!(bg.pid > 0);
    let w = tokio::time::timeout(BACKSTOP, c.wait("ctr", "r4"))
        .await
        .expect("exit routed")
        .unwrap();
    assert_eq!(w.exit_status, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t16_configure_network_checks_its_request_and_feeds_the_resolver() {
    use box_guest_init::api::agent::{ConfigureNetworkRequest, Interface};
    require_host_tier!();
    let init = HostInit::start(false);
    let c = init.client().await;
    // A host-process init shares the host's namespace: it must never touch an interface.
    let iface = ConfigureNetworkRequest {
        interfaces: vec![Interface {
            mac: "02:b0:c5:00:00:09".into(),
            addresses: vec!["10.250.0.2/24".into()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let e = format!("{:?}", c.configure_network(&iface).await.unwrap_err());
    assert!(e.contains("needs a VM"), "{e}");
    // A malformed value is named, and nothing of the request is kept.
    let bad = ConfigureNetworkRequest {
        dns_servers: vec!["10.0.0.53".into(), "resolver.example".into()],
        ..Default::default()
    };
    let e = format!("{:?}", c.configure_network(&bad).await.unwrap_err());
    assert!(
        e.contains("DNS server") && e.contains("resolver.example"),
        "{e}"
    );
    sleeping_container(&init, &c, "before").await;
    let none = exec_code(
        &c,
        "before",
        "r0",
        &["sh", "-c", "test ! -s /etc/resolv.conf"],
    )
    .await;
    assert_eq!(none, 0, "a refused request leaves the resolver empty");
    let good = ConfigureNetworkRequest {
        dns_servers: vec!["10.0.0.53".into()],
        dns_search: vec!["corp.example".into()],
        ..Default::default()
    };
    c.configure_network(&good)
        .await
        .expect("a resolver-only request");
    sleeping_container(&init, &c, "after").await;
    let code = exec_code(
        &c,
        "after",
        "r1",
        &[
            "sh",
            "-c",
            "grep -qx 'nameserver 10.0.0.53' /etc/resolv.conf && grep -qx 'search corp.example' /etc/resolv.conf",
        ],
    )
    .await;
    assert_eq!(
        code, 0,
        "the next container's /etc/resolv.conf names the resolver"
    );
}
