//! The scenarios, in order. Each returns what it saw on success; the containers it made are
//! stopped and removed by the runner whatever the outcome. Pods A and B live across scenarios
//! (made by the first that needs them) and are torn down by scenario 10 or at the end.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use k8s_cri::v1 as api;

use crate::cri::{self, container_config, describe, pod_config, Cri, Ctr, Pod, POLL};
use crate::crilog::{self, clip};
use crate::node;

pub const COUNT: u32 = 10;

/// How long a log may trail the exit it belongs to.
const LOG_BACKSTOP: Duration = Duration::from_secs(30);
/// How long pod teardown may leave processes and namespaces behind.
const TEARDOWN_BACKSTOP: Duration = Duration::from_secs(60);
/// How long a server in a pod may take to answer.
const HTTP_BACKSTOP: Duration = Duration::from_secs(60);
/// ExecSync's own timeout, in seconds.
const EXEC_TIMEOUT_S: i64 = 60;

pub fn title(n: u32) -> &'static str {
    match n {
        1 => "pod A: `echo hello-cri` exits 0, its CRI log has `stdout F hello-cri`",
        2 => "exit codes: `exit 3` -> 3 (reason Error), `kill -9 $$` -> 137",
        3 => "stdout and stderr reach the CRI log as separate streams",
        4 => "1 MiB line + 20000 short lines of stdout reassemble byte for byte from the CRI log",
        5 => "ExecSync in a running container: stdout `exec-out\\n`, exit code 5",
        6 => "StopContainer: TERM ignored -> KILL after the 2 s timeout (137); plain sleep -> TERM (143)",
        7 => "two containers of pod A share one VM (boot_id), pod B has another",
        8 => "pod networking: the node gets `pod-page` from httpd at pod A's IP:80",
        9 => "a bad entrypoint fails visibly and pod A's VM still runs `echo still-ok`",
        10 => "teardown: pods stopped and removed, none listed, no box-vmm/shim process or cni netns left",
        _ => "no such scenario",
    }
}

enum PodSlot {
    Absent,
    Up(Box<Pod>),
    /// RunPodSandbox failed once: later scenarios fail at once rather than retry a VM boot.
    Failed(String),
}

pub struct Ctx {
    pub cri: Cri,
    image: String,
    handler: String,
    log_root: PathBuf,
    run_id: String,
    pods: [(&'static str, PodSlot); 2],
    /// Containers made by the scenario running now.
    made: Vec<String>,
    /// Scenario 1's phase timings, printed after its result.
    pub timing: Option<String>,
}

const A: usize = 0;
const B: usize = 1;

impl Ctx {
    pub fn new(cri: Cri, image: String, handler: String, log_root: PathBuf) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        Ctx {
            cri,
            image,
            handler,
            log_root,
            run_id: format!("{}-{nanos:x}", std::process::id()),
            pods: [("A", PodSlot::Absent), ("B", PodSlot::Absent)],
            made: Vec::new(),
            timing: None,
        }
    }

    /// Pod `which`, made now if it is not yet; with how long RunPodSandbox took when made now.
    async fn pod(&mut self, which: usize) -> Result<(Pod, Option<Duration>)> {
        let label = self.pods[which].0;
        match &self.pods[which].1 {
            PodSlot::Up(p) => return Ok(((**p).clone(), None)),
            PodSlot::Failed(e) => bail!("pod {label} did not start earlier: {e}"),
            PodSlot::Absent => {}
        }
        let name = format!("cri-{}", label.to_lowercase());
        let uid = format!("{name}-{}", self.run_id);
        let log_dir = self.log_root.join(&uid);
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating the log directory {}", log_dir.display()))?;
        let config = pod_config(&name, &uid, &log_dir);
        let t = Instant::now();
        match self.cri.run_pod(config.clone(), &self.handler).await {
            Ok(id) => {
                let pod = Pod {
                    id,
                    label,
                    config,
                    log_dir,
                };
                self.pods[which].1 = PodSlot::Up(Box::new(pod.clone()));
                Ok((pod, Some(t.elapsed())))
            }
            Err(e) => {
                let msg = format!("{e:#} (after {:.1?})", t.elapsed());
                self.pods[which].1 = PodSlot::Failed(msg.clone());
                bail!("pod {label}: {msg}")
            }
        }
    }

    /// CreateContainer in `pod`, recorded for cleanup.
    async fn create(&mut self, pod: &Pod, name: &str, command: &[&str]) -> Result<Ctr> {
        let config = container_config(name, &self.image, command);
        let id = self
            .cri
            .create_container(pod, config)
            .await
            .with_context(|| format!("container {name} in pod {}", pod.label))?;
        self.made.push(id.clone());
        Ok(Ctr {
            id,
            name: name.to_string(),
            log: pod.log_dir.join(cri::log_name(name)),
        })
    }

    async fn start(&self, c: &Ctr) -> Result<()> {
        self.cri
            .start(&c.id)
            .await
            .with_context(|| format!("container {}", c.name))
    }

    /// Create + start, then wait until RUNNING.
    async fn running(&mut self, pod: &Pod, name: &str, command: &[&str]) -> Result<Ctr> {
        let c = self.create(pod, name, command).await?;
        self.start(&c).await?;
        self.cri
            .wait_state(&c.id, api::ContainerState::ContainerRunning)
            .await
            .with_context(|| format!("container {}", c.name))?;
        Ok(c)
    }

    async fn exited(&self, c: &Ctr) -> Result<api::ContainerStatus> {
        self.cri
            .wait_exited(&c.id)
            .await
            .with_context(|| format!("container {}", c.name))
    }

    /// Create + start + wait for the exit.
    async fn run_to_exit(
        &mut self,
        pod: &Pod,
        name: &str,
        command: &[&str],
    ) -> Result<(Ctr, api::ContainerStatus)> {
        let c = self.create(pod, name, command).await?;
        self.start(&c).await?;
        let s = self.exited(&c).await?;
        Ok((c, s))
    }

    async fn exec(&self, c: &Ctr, cmd: &[&str]) -> Result<api::ExecSyncResponse> {
        self.cri
            .exec_sync(&c.id, cmd, EXEC_TIMEOUT_S)
            .await
            .with_context(|| format!("in container {}: {cmd:?}", c.name))
    }

    /// Stops and removes the containers the current scenario made.
    pub async fn cleanup_containers(&mut self) -> Result<()> {
        let made = std::mem::take(&mut self.made);
        let mut errors = Vec::new();
        for id in &made {
            if let Err(e) = self.cri.stop(id, 0).await {
                errors.push(format!("{}: {e:#}", short(id)));
            }
        }
        for id in &made {
            if let Err(e) = self.cri.remove(id).await {
                errors.push(format!("{}: {e:#}", short(id)));
            }
        }
        if !errors.is_empty() {
            bail!("cleanup: {}", errors.join("; "));
        }
        Ok(())
    }

    /// Stops and removes the pods still up; their labels and the time it took.
    async fn teardown_pods(&mut self) -> (Vec<String>, Vec<String>) {
        let (mut done, mut errors) = (Vec::new(), Vec::new());
        let cri = self.cri.clone();
        for (label, slot) in self.pods.iter_mut() {
            let PodSlot::Up(pod) = std::mem::replace(slot, PodSlot::Absent) else {
                continue;
            };
            let t = Instant::now();
            let r = async {
                cri.stop_pod(&pod.id).await?;
                let stopped = t.elapsed();
                cri.remove_pod(&pod.id).await?;
                anyhow::Ok(stopped)
            }
            .await;
            match r {
                Ok(stopped) => done.push(format!(
                    "{label} stop {:.1}s remove {:.1}s",
                    stopped.as_secs_f64(),
                    (t.elapsed() - stopped).as_secs_f64()
                )),
                Err(e) => errors.push(format!("pod {label} ({}): {e:#}", short(&pod.id))),
            }
        }
        (done, errors)
    }

    /// The pods left when the run ends without scenario 10.
    pub async fn final_cleanup(&mut self) -> Result<Vec<String>> {
        let (done, errors) = self.teardown_pods().await;
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(done)
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// Polls `path` until its entries satisfy `ready`, up to `LOG_BACKSTOP`; the entries.
async fn wait_log(
    path: &Path,
    what: &str,
    ready: impl Fn(&[crilog::Entry]) -> bool,
) -> Result<Vec<crilog::Entry>> {
    let start = Instant::now();
    loop {
        let text = match std::fs::read(path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let entries = crilog::parse(&text).with_context(|| path.display().to_string())?;
        if ready(&entries) {
            return Ok(entries);
        }
        if start.elapsed() > LOG_BACKSTOP {
            bail!(
                "{} never showed {what} within {LOG_BACKSTOP:?}; it has {} bytes, ending: {}",
                path.display(),
                text.len(),
                crilog::tail(&text, 4)
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn wait_log_line(path: &Path, stream: &str, text: &str) -> Result<()> {
    wait_log(path, &format!("`{stream} F {text}`"), |e| {
        crilog::has(e, stream, "F", text)
    })
    .await?;
    Ok(())
}

pub async fn run(ctx: &mut Ctx, n: u32) -> Result<String> {
    match n {
        1 => s1_echo(ctx).await,
        2 => s2_exit_codes(ctx).await,
        3 => s3_streams(ctx).await,
        4 => s4_big_output(ctx).await,
        5 => s5_exec(ctx).await,
        6 => s6_stop(ctx).await,
        7 => s7_one_vm_per_pod(ctx).await,
        8 => s8_network(ctx).await,
        9 => s9_bad_entrypoint(ctx).await,
        10 => s10_teardown(ctx).await,
        _ => bail!("no scenario {n}"),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

async fn s1_echo(ctx: &mut Ctx) -> Result<String> {
    let (pod, ran) = ctx.pod(A).await?;
    let status = ctx.cri.pod_status(&pod.id).await?;
    ensure!(
        status.state() == api::PodSandboxState::SandboxReady,
        "pod A is {} after RunPodSandbox",
        status.state().as_str_name()
    );
    let t = Instant::now();
    let c = ctx
        .create(&pod, "echo", &["sh", "-c", "echo hello-cri"])
        .await?;
    let created = t.elapsed();
    let t = Instant::now();
    ctx.start(&c).await?;
    let started = t.elapsed();
    let t = Instant::now();
    let s = ctx.exited(&c).await?;
    let exited = t.elapsed();
    ctx.timing = Some(format!(
        "RunPodSandbox {}, CreateContainer {}, StartContainer {}, first exit {} after StartContainer returned",
        ran.map_or("(pod made earlier)".to_string(), secs),
        secs(created),
        secs(started),
        secs(exited)
    ));
    ensure!(s.exit_code == 0, "echo ended {}", describe(&s));
    wait_log_line(&c.log, "stdout", "hello-cri").await?;
    let ip = status.network.map(|n| n.ip).unwrap_or_default();
    Ok(format!(
        "pod {} READY ip={ip:?}, echo EXITED 0",
        short(&pod.id)
    ))
}

async fn s2_exit_codes(ctx: &mut Ctx) -> Result<String> {
    let (pod, _) = ctx.pod(A).await?;
    let three = ctx.create(&pod, "exit3", &["sh", "-c", "exit 3"]).await?;
    let killed = ctx
        .create(&pod, "kill9", &["sh", "-c", "kill -9 $$"])
        .await?;
    ctx.start(&three).await?;
    ctx.start(&killed).await?;
    let s3 = ctx.exited(&three).await?;
    let s9 = ctx.exited(&killed).await?;
    let mut bad = Vec::new();
    if s3.exit_code != 3 || s3.reason != "Error" {
        bad.push(format!("exit 3 ended {}", describe(&s3)));
    }
    if s9.exit_code != 137 {
        bad.push(format!("kill -9 $$ ended {}", describe(&s9)));
    }
    ensure!(bad.is_empty(), "{}", bad.join("; "));
    Ok(format!(
        "3 reason {:?}, 137 reason {:?}",
        s3.reason, s9.reason
    ))
}

async fn s3_streams(ctx: &mut Ctx) -> Result<String> {
    let (pod, _) = ctx.pod(A).await?;
    let (c, s) = ctx
        .run_to_exit(
            &pod,
            "streams",
            &["sh", "-c", "echo out-line; echo err-line >&2"],
        )
        .await?;
    ensure!(s.exit_code == 0, "ended {}", describe(&s));
    let entries = wait_log(&c.log, "`stdout F out-line` and `stderr F err-line`", |e| {
        crilog::has(e, "stdout", "F", "out-line") && crilog::has(e, "stderr", "F", "err-line")
    })
    .await?;
    let crossed = entries
        .iter()
        .any(|e| (e.stream == "stdout") == e.text.contains("err-line"));
    ensure!(!crossed, "a line in the wrong stream: {entries:?}");
    Ok(format!("{} log entries", entries.len()))
}

/// What scenario 4's generator prints: the numbers 1.. run together, cut at 1 MiB, a newline,
/// then 1..=20000 one a line.
fn big_expected() -> String {
    let mut long = String::new();
    let mut i = 1u32;
    while long.len() < 1 << 20 {
        long.push_str(&i.to_string());
        i += 1;
    }
    long.truncate(1 << 20);
    long.push('\n');
    for i in 1..=20000 {
        long.push_str(&i.to_string());
        long.push('\n');
    }
    long
}

const BIG_SCRIPT: &str = "seq 1 200000 | tr -d '\\n' | head -c 1048576; echo; seq 1 20000";

async fn s4_big_output(ctx: &mut Ctx) -> Result<String> {
    let (pod, _) = ctx.pod(A).await?;
    let expected = big_expected();
    let (c, s) = ctx
        .run_to_exit(&pod, "bigout", &["sh", "-c", BIG_SCRIPT])
        .await?;
    ensure!(s.exit_code == 0, "ended {}", describe(&s));
    // Complete once the last line has come; then compare everything.
    let entries = wait_log(&c.log, "the line `stdout F 20000`", |e| {
        crilog::has(e, "stdout", "F", "20000")
    })
    .await?;
    let got = crilog::reassemble(&entries, "stdout");
    if got != expected {
        let at = got
            .bytes()
            .zip(expected.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(got.len().min(expected.len()));
        let from = at.saturating_sub(20);
        bail!(
            "reassembled stdout has {} bytes, expected {}; first difference at byte {at}: got {:?}, expected {:?}",
            got.len(),
            expected.len(),
            clip(got.get(from..).unwrap_or_default(), 60),
            clip(expected.get(from..).unwrap_or_default(), 60)
        );
    }
    let partial = entries.iter().filter(|e| e.tag == "P").count();
    let stderr = entries.iter().filter(|e| e.stream == "stderr").count();
    ensure!(
        stderr == 0,
        "{stderr} stderr entries: {:?}",
        entries.iter().find(|e| e.stream == "stderr")
    );
    Ok(format!(
        "{} bytes in {} entries, {partial} of them partial",
        got.len(),
        entries.len()
    ))
}

async fn s5_exec(ctx: &mut Ctx) -> Result<String> {
    let (pod, _) = ctx.pod(A).await?;
    let c = ctx.running(&pod, "sleeper", &["sleep", "100000"]).await?;
    let r = ctx.exec(&c, &["sh", "-c", "echo exec-out; exit 5"]).await?;
    ensure!(
        r.stdout == b"exec-out\n" && r.exit_code == 5,
        "stdout {:?} stderr {:?} exit_code {}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr),
        r.exit_code
    );
    let s = ctx.cri.status(&c.id).await?;
    ensure!(
        s.state() == api::ContainerState::ContainerRunning,
        "the container after the exec: {}",
        describe(&s)
    );
    Ok("the container still RUNNING after it".to_string())
}

/// StopContainer with `timeout_s`; the exit and how long StopContainer took.
async fn stop_timed(
    ctx: &Ctx,
    c: &Ctr,
    timeout_s: i64,
) -> Result<(api::ContainerStatus, Duration)> {
    let t = Instant::now();
    ctx.cri
        .stop(&c.id, timeout_s)
        .await
        .with_context(|| format!("container {}", c.name))?;
    let took = t.elapsed();
    Ok((ctx.exited(c).await?, took))
}

async fn s6_stop(ctx: &mut Ctx) -> Result<String> {
    let (pod, _) = ctx.pod(A).await?;
    let deaf = ctx
        .running(
            &pod,
            "deaf",
            &["sh", "-c", "trap '' TERM; touch /tmp/trapped; sleep 100000"],
        )
        .await?;
    let plain = ctx.running(&pod, "plain", &["sleep", "100000"]).await?;
    // The trap must be set before the TERM comes: poll for the file the script makes after it.
    let t = Instant::now();
    loop {
        let r = ctx.exec(&deaf, &["test", "-e", "/tmp/trapped"]).await?;
        if r.exit_code == 0 {
            break;
        }
        ensure!(
            t.elapsed() < cri::STATE_BACKSTOP,
            "the trap script never reached `touch /tmp/trapped`"
        );
        tokio::time::sleep(POLL).await;
    }
    let (s, took) = stop_timed(ctx, &deaf, 2).await?;
    let mut bad = Vec::new();
    if s.exit_code != 137 || took < Duration::from_millis(1900) {
        bad.push(format!(
            "TERM-deaf: StopContainer(2) returned after {} and it ended {}",
            secs(took),
            describe(&s)
        ));
    }
    let (p, ptook) = stop_timed(ctx, &plain, 30).await?;
    if p.exit_code != 143 {
        bad.push(format!(
            "plain sleep: StopContainer(30) returned after {} and it ended {} (143 = TERM)",
            secs(ptook),
            describe(&p)
        ));
    }
    ensure!(bad.is_empty(), "{}", bad.join("; "));
    Ok(format!(
        "KILL after {} (timeout 2 s), TERM after {}",
        secs(took),
        secs(ptook)
    ))
}

async fn boot_id(ctx: &Ctx, c: &Ctr) -> Result<String> {
    let r = ctx
        .exec(c, &["cat", "/proc/sys/kernel/random/boot_id"])
        .await?;
    let id = String::from_utf8_lossy(&r.stdout).trim().to_string();
    ensure!(
        r.exit_code == 0 && id.len() == 36,
        "boot_id in {}: exit_code {} stdout {id:?} stderr {:?}",
        c.name,
        r.exit_code,
        String::from_utf8_lossy(&r.stderr)
    );
    Ok(id)
}

async fn s7_one_vm_per_pod(ctx: &mut Ctx) -> Result<String> {
    let (a, _) = ctx.pod(A).await?;
    let a1 = ctx.running(&a, "twin1", &["sleep", "100000"]).await?;
    let a2 = ctx.running(&a, "twin2", &["sleep", "100000"]).await?;
    let (id1, id2) = (boot_id(ctx, &a1).await?, boot_id(ctx, &a2).await?);
    ensure!(
        id1 == id2,
        "pod A's containers see different boot_ids: {id1} and {id2}"
    );
    let (b, _) = ctx.pod(B).await?;
    let b1 = ctx.running(&b, "other", &["sleep", "100000"]).await?;
    let idb = boot_id(ctx, &b1).await?;
    ensure!(idb != id1, "pod B sees pod A's boot_id {id1}");
    let host = node::boot_id().unwrap_or_default();
    ensure!(
        host != id1 && host != idb,
        "a pod sees the node's own boot_id {host}"
    );
    Ok(format!("A {id1}, B {idb}, node {host}"))
}

async fn s8_network(ctx: &mut Ctx) -> Result<String> {
    let (pod, _) = ctx.pod(A).await?;
    let status = ctx.cri.pod_status(&pod.id).await?;
    let ip_text = status.network.map(|n| n.ip).unwrap_or_default();
    let ip: IpAddr = ip_text
        .parse()
        .with_context(|| format!("pod A's network.ip {ip_text:?}"))?;
    let web = ctx
        .running(
            &pod,
            "web",
            &[
                "sh",
                "-c",
                "mkdir -p /www && echo pod-page > /www/index.html && httpd -f -p 80 -h /www",
            ],
        )
        .await?;
    // The server starts after StartContainer returns: retry until it answers, bounded.
    let t = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let last = match node::http_get(ip, 80, Duration::from_secs(10)).await {
            Ok(page) if page.contains("pod-page") => {
                return Ok(format!(
                    "{ip}:80 answered after {} ({tries} tries)",
                    secs(t.elapsed())
                ))
            }
            Ok(page) => format!("answer without pod-page: {:?}", clip(&page, 200)),
            Err(e) => format!("{e:#}"),
        };
        let s = ctx.cri.status(&web.id).await?;
        ensure!(
            s.state() == api::ContainerState::ContainerRunning,
            "httpd is not running: {}; last try: {last}",
            describe(&s)
        );
        ensure!(
            t.elapsed() < HTTP_BACKSTOP,
            "no page from {ip}:80 within {HTTP_BACKSTOP:?} ({tries} tries); last: {last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn s9_bad_entrypoint(ctx: &mut Ctx) -> Result<String> {
    let (pod, _) = ctx.pod(A).await?;
    let config = container_config("bad", &ctx.image, &["/no/such/binary"]);
    let how = match ctx.cri.create_container(&pod, config).await {
        Err(e) => format!(
            "CreateContainer refused it: {}",
            clip(&format!("{e:#}"), 300)
        ),
        Ok(id) => {
            ctx.made.push(id.clone());
            let c = Ctr {
                id,
                name: "bad".into(),
                log: pod.log_dir.join(cri::log_name("bad")),
            };
            match ctx.cri.start(&c.id).await {
                Err(e) => format!(
                    "StartContainer refused it: {}",
                    clip(&format!("{e:#}"), 300)
                ),
                Ok(()) => {
                    let s = ctx.exited(&c).await?;
                    ensure!(
                        s.exit_code != 0 && !(s.reason.is_empty() && s.message.is_empty()),
                        "it started and ended {}",
                        describe(&s)
                    );
                    format!("it ended {}", clip(&describe(&s), 300))
                }
            }
        }
    };
    let (c, s) = ctx
        .run_to_exit(&pod, "still-ok", &["sh", "-c", "echo still-ok"])
        .await
        .with_context(|| format!("after the bad entrypoint ({how})"))?;
    ensure!(
        s.exit_code == 0,
        "still-ok ended {} (after: {how})",
        describe(&s)
    );
    wait_log_line(&c.log, "stdout", "still-ok").await?;
    Ok(format!("{how}; then still-ok exited 0"))
}

async fn s10_teardown(ctx: &mut Ctx) -> Result<String> {
    let (done, errors) = ctx.teardown_pods().await;
    ensure!(errors.is_empty(), "{}", errors.join("; "));
    let pods = ctx.cri.list_pods().await?;
    ensure!(
        pods.is_empty(),
        "ListPodSandbox still lists {}",
        pods.iter()
            .map(|p| format!(
                "{} {:?} {}",
                short(&p.id),
                p.metadata.as_ref().map(|m| m.name.as_str()).unwrap_or(""),
                p.state().as_str_name()
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let t = Instant::now();
    let mut first_seen = None;
    loop {
        let left = node::leftovers();
        if left.is_empty() {
            break;
        }
        first_seen.get_or_insert_with(|| left.join(", "));
        ensure!(
            t.elapsed() < TEARDOWN_BACKSTOP,
            "still on the node {TEARDOWN_BACKSTOP:?} after teardown: {}",
            left.join(", ")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pods = if done.is_empty() {
        "no pods of ours were up".to_string()
    } else {
        done.join(", ")
    };
    let waited = match first_seen {
        Some(seen) => format!("gone {} after teardown: {seen}", secs(t.elapsed())),
        None => "none left at once".to_string(),
    };
    Ok(format!("{pods}; processes and netns {waited}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn big_output_is_a_mebibyte_line_then_short_lines() {
        let e = big_expected();
        let (long, rest) = e.split_once('\n').unwrap();
        assert_eq!(long.len(), 1 << 20);
        assert!(long.starts_with("123456789101112"));
        assert_eq!(rest.lines().count(), 20000);
        assert!(rest.ends_with("19999\n20000\n"));
    }
}
