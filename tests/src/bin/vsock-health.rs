//! `vsock-health CID [--deadline SECS] [--shutdown]`: from the host side of a VM with a vsock
//! device (an L1 node running qemu with `vhost-vsock-device`), connects to guest-init's control
//! port over AF_VSOCK, calls `box.agent.v1.Agent/Health`, and with `--shutdown` then
//! `Agent/Shutdown`. One line per step on stdout; exit 0 only if every call answered.
//!
//! The VM-mode smoke test (`cargo xtask vm-smoke`) runs it inside the nested node. Connects are
//! retried until the deadline: before the guest's vsock driver is up a connect times out or is
//! reset; once guest-init has bound its listener (early, before serving) a connect queues in
//! the backlog and succeeds.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use box_guest_init::api::agent::{AgentClient, HealthRequest, ShutdownRequest};
use box_guest_init::api::Port;
use tokio_vsock::{VsockAddr, VsockStream};

/// One connect attempt may wait this long (the kernel's own vsock connect timeout is 2 s).
const ATTEMPT: Duration = Duration::from_secs(3);
const RETRY_PAUSE: Duration = Duration::from_millis(100);
const RPC_TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    cid: u32,
    deadline: Duration,
    shutdown: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut cid = None;
    let mut deadline = Duration::from_secs(120);
    let mut shutdown = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--shutdown" => shutdown = true,
            "--deadline" => {
                let v = args.next().ok_or("--deadline needs seconds")?;
                let secs: f64 = v.parse().map_err(|_| format!("--deadline {v}"))?;
                deadline = Duration::from_secs_f64(secs);
            }
            _ if cid.is_none() => cid = Some(a.parse().map_err(|_| format!("bad CID {a}"))?),
            _ => return Err(format!("unexpected argument {a}")),
        }
    }
    Ok(Args {
        cid: cid.ok_or("usage: vsock-health CID [--deadline SECS] [--shutdown]")?,
        deadline,
        shutdown,
    })
}

/// How the failed attempts failed, in order of first appearance, with counts: tells apart
/// "no device yet" (timeouts), "no listener yet" (resets) and the like.
#[derive(Default)]
struct Failures(Vec<(String, u32)>);

impl Failures {
    fn add(&mut self, what: String) {
        match self.0.iter_mut().find(|(w, _)| *w == what) {
            Some((_, n)) => *n += 1,
            None => self.0.push((what, 1)),
        }
    }
}

impl std::fmt::Display for Failures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            return write!(f, "none");
        }
        let parts: Vec<String> = self.0.iter().map(|(w, n)| format!("{w} x{n}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// Connects to the control port, retrying until `deadline`; returns the stream, how many
/// attempts it took, and how the others failed.
async fn connect(cid: u32, deadline: Instant) -> Result<(VsockStream, u32, Failures), String> {
    let port = Port::Control.vsock_port();
    let mut attempts = 0;
    let mut failures = Failures::default();
    while Instant::now() < deadline {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(
            ATTEMPT.min(left),
            VsockStream::connect(VsockAddr::new(cid, port)),
        )
        .await
        {
            Ok(Ok(s)) => return Ok((s, attempts, failures)),
            Ok(Err(e)) => failures.add(e.to_string()),
            Err(_) => failures.add(format!("no answer in {} s", ATTEMPT.as_secs())),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    Err(format!(
        "no connection to cid {cid} port {port} after {attempts} attempts (failures: {failures})"
    ))
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(RPC_TIMEOUT.as_nanos() as i64)
}

async fn run(a: Args) -> Result<(), String> {
    let t0 = Instant::now();
    let (stream, attempts, failures) = connect(a.cid, t0 + a.deadline).await?;
    println!(
        "vsock-health: connected to cid {} port {} after {attempts} attempt(s), {} ms; earlier attempts: {failures}",
        a.cid,
        Port::Control.vsock_port(),
        t0.elapsed().as_millis()
    );
    let client = AgentClient::new(ttrpc::r#async::Client::new(stream.into()));
    let h = client
        .health(ctx(), &HealthRequest::default())
        .await
        .map_err(|e| format!("Health: {e}"))?;
    println!(
        "vsock-health: health ok: version {} guest-init uptime {} ms (host side {} ms)",
        h.version,
        h.uptime_ms,
        t0.elapsed().as_millis()
    );
    if a.shutdown {
        client
            .shutdown(ctx(), &ShutdownRequest::default())
            .await
            .map_err(|e| format!("Shutdown: {e}"))?;
        println!(
            "vsock-health: shutdown accepted ({} ms)",
            t0.elapsed().as_millis()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("vsock-health: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vsock-health: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("vsock-health: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}
