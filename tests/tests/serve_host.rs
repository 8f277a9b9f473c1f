//! `box serve` on the host-process backend: a real server process, real guest-inits, spoken
//! to over its unix socket (and TCP with the token) with plain HTTP/1.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use box_tests::cli::{box_binary, BoxEnv};
use box_tests::host_init::init_binary;
use box_tests::require_host_tier;
use serde_json::{json, Value};

struct Server {
    child: Child,
    socket: std::path::PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(env: &BoxEnv, extra: &[&str]) -> Server {
    let socket = env.dir.join("serve.sock");
    let child = Command::new(box_binary())
        .arg("serve")
        .arg("--socket")
        .arg(&socket)
        .args(extra)
        .env("BOX_BACKEND", "host-process")
        .env("BOX_STATE_DIR", &env.state)
        .env("BOX_INIT_BIN", init_binary())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut s = Server { child, socket };
    wait_for("the server's socket", || {
        if let Some(st) = s.child.try_wait().unwrap() {
            panic!("box serve exited: {st}");
        }
        UnixStream::connect(&s.socket).is_ok()
    });
    s
}

/// Polls `ok` until it holds; a backstop (not a timing) fails the test after a minute.
fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "waited a minute for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A response: status and body (chunked bodies decoded).
struct Resp {
    status: u16,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

fn send<C: Read + Write>(
    mut conn: C,
    method: &str,
    path: &str,
    body: Option<&Value>,
    auth: Option<&str>,
) -> (u16, BufReader<C>, bool) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: box\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    if let Some(t) = auth {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    conn.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(conn);
    let mut status_line = String::new();
    r.read_line(&mut status_line).unwrap();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let mut chunked = false;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if h.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
        {
            chunked = true;
        }
    }
    (status, r, chunked)
}

/// The next chunk of a chunked body (None at its end).
fn next_chunk(r: &mut impl BufRead) -> Option<Vec<u8>> {
    let mut size = String::new();
    r.read_line(&mut size).unwrap();
    let n = usize::from_str_radix(size.trim(), 16).unwrap();
    let mut data = vec![0u8; n + 2];
    r.read_exact(&mut data).unwrap();
    data.truncate(n);
    (n > 0).then_some(data)
}

fn request(s: &Server, method: &str, path: &str, body: Option<&Value>) -> Resp {
    let (status, mut r, chunked) = send(
        UnixStream::connect(&s.socket).unwrap(),
        method,
        path,
        body,
        None,
    );
    let mut out = Vec::new();
    if chunked {
        while let Some(c) = next_chunk(&mut r) {
            out.extend(c);
        }
    } else {
        r.read_to_end(&mut out).unwrap();
    }
    Resp { status, body: out }
}

/// A command's NDJSON events, read as they come.
struct Events<R: BufRead> {
    r: R,
    pending: Vec<u8>,
}

impl<R: BufRead> Events<R> {
    fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(i) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=i).collect();
                return Some(serde_json::from_slice(&line).unwrap());
            }
            let c = next_chunk(&mut self.r)?;
            self.pending.extend(c);
        }
    }
}

fn command(s: &Server, id: &str, cmd: &[&str]) -> Events<BufReader<UnixStream>> {
    let (status, r, chunked) = send(
        UnixStream::connect(&s.socket).unwrap(),
        "POST",
        &format!("/v1/sandboxes/{id}/commands"),
        Some(&json!({"cmd": cmd})),
        None,
    );
    assert_eq!((status, chunked), (200, true));
    Events {
        r,
        pending: Vec::new(),
    }
}

/// stdout, stderr and the exit code of a foreground command.
fn run(s: &Server, id: &str, cmd: &[&str]) -> (String, String, i64) {
    let mut ev = command(s, id, cmd);
    let (mut out, mut err) = (String::new(), String::new());
    while let Some(e) = ev.next() {
        match e["type"].as_str().unwrap() {
            "stdout" => out.push_str(e["data"].as_str().unwrap()),
            "stderr" => err.push_str(e["data"].as_str().unwrap()),
            "exit" => return (out, err, e["code"].as_i64().unwrap()),
            other => panic!("{other}: {e}"),
        }
    }
    panic!("no exit event; out={out} err={err}");
}

fn pool_ready(s: &Server, image: &str) -> Option<u64> {
    let page = String::from_utf8(request(s, "GET", "/metrics", None).body).unwrap();
    let key = format!("box_pool_ready{{image=\"{image}\"}} ");
    page.lines()
        .find_map(|l| l.strip_prefix(&key)?.parse().ok())
}

fn dirs(p: &Path) -> usize {
    std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn s1_pool_commands_limits_and_teardown() {
    require_host_tier!();
    let env = BoxEnv::new();
    let img = env.image().to_string();
    let s = start(
        &env,
        &["--pool", &format!("{img}=2"), "--max-sandboxes", "3"],
    );
    wait_for("two warm sandboxes", || pool_ready(&s, &img) == Some(2));

    // From the pool: the request's main container is the warm VM's first.
    let r = request(
        &s,
        "POST",
        "/v1/sandboxes",
        Some(&json!({"image": img, "metadata": {"team": "a"}, "env": ["GREETING=hi there"]})),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let sb = r.json();
    assert_eq!(sb["from_pool"], true);
    let id = sb["id"].as_str().unwrap().to_string();

    assert_eq!(
        run(
            &s,
            &id,
            &["sh", "-c", "echo $GREETING; echo oops >&2; exit 3"]
        ),
        ("hi there\n".into(), "oops\n".into(), 3)
    );

    // Output arrives while the command still runs: the first line, then (only once told
    // to go on by a second command) the rest and the exit.
    let mut ev = command(
        &s,
        &id,
        &[
            "sh",
            "-c",
            "echo first; while [ ! -e /tmp/go ]; do sleep 0.01; done; echo second",
        ],
    );
    assert_eq!(
        ev.next().unwrap(),
        json!({"type": "stdout", "data": "first\n"})
    );
    assert_eq!(run(&s, &id, &["touch", "/tmp/go"]).2, 0);
    assert_eq!(
        ev.next().unwrap(),
        json!({"type": "stdout", "data": "second\n"})
    );
    assert_eq!(ev.next().unwrap(), json!({"type": "exit", "code": 0}));

    // A background command, listed, then killed.
    let r = request(
        &s,
        "POST",
        &format!("/v1/sandboxes/{id}/commands"),
        Some(&json!({"cmd": ["sleep", "1000"], "background": true})),
    );
    assert_eq!(r.status, 201);
    let cmd = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        request(&s, "GET", &format!("/v1/sandboxes/{id}/commands"), None).json()[0]["id"],
        cmd.as_str()
    );
    assert_eq!(
        request(
            &s,
            "POST",
            &format!("/v1/sandboxes/{id}/commands/{cmd}/kill"),
            None
        )
        .status,
        204
    );
    // Only the keeper's sleep is left (zombies do not count: their state is Z).
    let sleepers = "grep -l ' (sleep) [^Z]' /proc/[0-9]*/stat 2>/dev/null | wc -l";
    wait_for("the killed sleep gone", || {
        run(&s, &id, &["sh", "-c", sleepers]).0.trim() == "1"
    });

    // Listing by metadata; the limit answers 429 with a reason.
    let b = request(&s, "POST", "/v1/sandboxes", Some(&json!({"image": img}))).json();
    let c = request(
        &s,
        "POST",
        "/v1/sandboxes",
        Some(&json!({"image": img, "timeout_s": 1})),
    )
    .json();
    let full = request(&s, "POST", "/v1/sandboxes", Some(&json!({"image": img})));
    assert_eq!(full.status, 429, "{}", String::from_utf8_lossy(&full.body));
    assert!(full.json()["error"]
        .as_str()
        .unwrap()
        .contains("3 sandboxes"));
    let listed = request(&s, "GET", "/v1/sandboxes?metadata.team=a", None).json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["id"], id.as_str());

    // The 1 s sandbox expires and is destroyed.
    let cid = c["id"].as_str().unwrap();
    wait_for("the short sandbox to expire", || {
        request(&s, "GET", &format!("/v1/sandboxes/{cid}"), None).status == 404
    });
    assert!(!env.sandbox_dir(cid).exists());

    // Delete; bad requests are 4xx with a reason, never 5xx.
    let bid = b["id"].as_str().unwrap();
    assert_eq!(
        request(&s, "DELETE", &format!("/v1/sandboxes/{bid}"), None).status,
        204
    );
    assert_eq!(
        request(&s, "DELETE", &format!("/v1/sandboxes/{bid}"), None).status,
        404
    );
    assert!(!env.sandbox_dir(bid).exists());
    assert_eq!(
        request(
            &s,
            "POST",
            "/v1/sandboxes",
            Some(&json!({"image": "/no/such/image"}))
        )
        .status,
        400
    );
    assert_eq!(
        request(&s, "POST", "/v1/sandboxes", Some(&json!({"imag": img}))).status,
        422
    );
    assert_eq!(
        request(
            &s,
            "POST",
            &format!("/v1/sandboxes/{id}/commands"),
            Some(&json!({"cmd": []}))
        )
        .status,
        400
    );

    let doc = request(&s, "GET", "/openapi.json", None).json();
    assert!(doc["paths"]["/v1/sandboxes/{id}/commands"]["post"].is_object());

    // SIGTERM: the server destroys what it handed out and its warm VMs.
    let mut s = s;
    sigterm(s.child.id());
    assert!(s.child.wait().unwrap().success());
    assert_eq!(
        dirs(&env.state.join("sandboxes")),
        0,
        "{:?}",
        env.sandboxes()
    );
}

fn sigterm(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
fn s2_tcp_needs_the_token() {
    require_host_tier!();
    let env = BoxEnv::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let s = start(&env, &["--listen", &addr]);
    let token_file = env.state.join("serve.token");
    wait_for("the TCP listener", || {
        std::net::TcpStream::connect(&addr).is_ok()
    });
    let token = std::fs::read_to_string(&token_file).unwrap();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let tcp = || std::net::TcpStream::connect(&addr).unwrap();
    assert_eq!(send(tcp(), "GET", "/v1/sandboxes", None, None).0, 401);
    assert_eq!(
        send(tcp(), "GET", "/v1/sandboxes", None, Some("wrong")).0,
        401
    );
    assert_eq!(
        send(tcp(), "GET", "/v1/sandboxes", None, Some(token.trim())).0,
        200
    );
    // The unix socket's own permissions are its access control.
    assert_eq!(request(&s, "GET", "/v1/sandboxes", None).status, 200);
}

/// 50 creates at once against a pool of 5 and a limit of 20: exactly 20 sandboxes, every other
/// answer a clean 429 (places are reserved before a boot, so concurrent creates never pass
/// the limit), nothing else; deleting them all leaves no sandbox but the pool's.
#[test]
fn s3_concurrent_creates_respect_the_limit() {
    require_host_tier!();
    let env = BoxEnv::new();
    let img = env.image().to_string();
    let s = start(
        &env,
        &["--pool", &format!("{img}=5"), "--max-sandboxes", "20"],
    );
    wait_for("five warm sandboxes", || pool_ready(&s, &img) == Some(5));
    let answers: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let hs: Vec<_> = (0..50)
            .map(|_| {
                scope.spawn(|| {
                    let r = request(&s, "POST", "/v1/sandboxes", Some(&json!({"image": img})));
                    (r.status, r.json())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: Vec<&Value> = answers
        .iter()
        .filter(|(st, _)| *st == 201)
        .map(|(_, v)| v)
        .collect();
    let full = answers.iter().filter(|(st, _)| *st == 429).count();
    let other: Vec<_> = answers
        .iter()
        .filter(|(st, _)| ![201, 429].contains(st))
        .collect();
    assert!(other.is_empty(), "{other:?}");
    assert_eq!((created.len(), full), (20, 30));
    assert!(created.iter().filter(|v| v["from_pool"] == true).count() >= 5);
    for v in &created {
        let id = v["id"].as_str().unwrap();
        assert_eq!(
            request(&s, "DELETE", &format!("/v1/sandboxes/{id}"), None).status,
            204
        );
        assert!(!env.sandbox_dir(id).exists());
    }
    assert_eq!(request(&s, "GET", "/v1/sandboxes", None).json(), json!([]));
}
