//! Starts `box-init --host-process` as PID 1 of a new PID + mount namespace (util-linux
//! `unshare`), with a busybox root filesystem for its containers.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use box_shim::agent_client::{Endpoint, GuestClient};

/// A generous backstop for events that normally take milliseconds.
pub const BACKSTOP: Duration = Duration::from_secs(60);

const BUSYBOX: &str = "/bin/busybox";

/// Why this tier cannot run here, if it cannot: it needs root, util-linux's `unshare` and
/// Debian's `busybox-static` (which `cargo xtask ci` installs).
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("host-process tier needs root (PID and mount namespaces)".into());
    }
    for tool in ["/usr/bin/unshare", BUSYBOX] {
        if !Path::new(tool).exists() {
            return Some(format!("{tool} is missing (cargo xtask ci installs it)"));
        }
    }
    None
}

/// Skips the calling test, visibly, when the tier cannot run here.
#[macro_export]
macro_rules! require_host_tier {
    () => {
        if let Some(reason) = $crate::host_init::skip_reason() {
            eprintln!("SKIP: {reason}");
            return;
        }
    };
}

/// The box-init binary: `$BOX_INIT_BIN`, or the one cargo built next to this test binary.
pub fn init_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("BOX_INIT_BIN") {
        return p.into();
    }
    built_binary("box-init", "box-guest-init")
}

/// A binary of this workspace, built next to this test binary (cargo builds the binaries of
/// other packages only when asked).
pub fn built_binary(name: &str, package: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .join(name);
    assert!(
        bin.exists(),
        "{} not built: run `cargo build -p {package}` (cargo xtask ci does)",
        bin.display()
    );
    bin
}

fn scratch_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "box-host-tier-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A busybox root filesystem: the static binary and a symlink per applet.
pub fn make_rootfs(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for d in ["proc", "tmp", "dev", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, bin.join("busybox")).unwrap();
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
}

pub struct HostInit {
    unshare: Child,
    pub dir: PathBuf,
    rootfs: PathBuf,
    notify: UnixStream,
    pub endpoint: Endpoint,
}

impl HostInit {
    /// Starts init and returns once it reported its listeners bound (the notify fd is the
    /// event; its EOF, if init dies first, bounds the wait). With `hold`, init then stays in
    /// its slow phase until [`HostInit::release`].
    pub fn start(hold: bool) -> HostInit {
        let dir = scratch_dir();
        let sockets = dir.join("sock");
        std::fs::create_dir_all(&sockets).unwrap();
        let rootfs = dir.join("rootfs");
        make_rootfs(&rootfs);
        let (mut notify, theirs) = UnixStream::pair().unwrap();
        let theirs_fd = theirs.as_raw_fd();
        let log = std::fs::File::create(dir.join("init.log")).unwrap();
        let mut cmd = Command::new("/usr/bin/unshare");
        cmd.args(["--pid", "--mount", "--fork", "--kill-child", "--"])
            .arg(init_binary())
            .arg("--host-process")
            .arg(&sockets)
            .env(box_guest_init::api::NOTIFY_FD_ENV, "3")
            .env("BOX_INIT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if hold {
            cmd.env(box_guest_init::api::HOLD_ENV, "1");
        }
        // SAFETY: dup2 is async-signal-safe; it gives the child our socket as fd 3 without
        // CLOEXEC, while the original (CLOEXEC) closes at exec and leaks into no other child.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(theirs_fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let unshare = cmd.spawn().expect("spawn unshare");
        drop(theirs);
        let mut line = [0u8; 10];
        let got = notify.read_exact(&mut line);
        let me = HostInit {
            unshare,
            dir,
            rootfs,
            notify,
            endpoint: Endpoint::SocketDir(sockets),
        };
        if got.is_err() || &line != b"listening\n" {
            panic!("init did not report its listeners: {got:?}\n{}", me.log());
        }
        me
    }

    /// Ends the held slow phase.
    pub fn release(&mut self) {
        self.notify.write_all(b"g").expect("release init");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("init.log")).unwrap_or_default()
    }

    /// A client, once the first health call was answered (the readiness event).
    pub async fn client(&self) -> GuestClient {
        let client = GuestClient::connect(self.endpoint.clone())
            .await
            .expect("connect");
        client.health(BACKSTOP).await.expect("health");
        client
    }

    /// Writes a bundle for container `id` running `args`, on the shared busybox rootfs.
    pub fn bundle(&self, id: &str, args: &[&str], terminal: bool) -> String {
        let bundle = self.dir.join("bundles").join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": terminal,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/bin", "HOME=/"],
                "cwd": "/"
            },
            "root": {"path": self.rootfs.to_string_lossy()},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
            ]
        });
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        bundle.to_string_lossy().into_owned()
    }

    /// Host pid of the namespace's PID 1.
    pub fn init_pid(&self) -> i32 {
        let children =
            std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.unshare.id()))
                .expect("unshare's children");
        children
            .split_whitespace()
            .next()
            .expect("init is running")
            .parse()
            .unwrap()
    }

    /// Every process of init's PID namespace, as (host pid, state letter).
    pub fn namespace_processes(&self) -> Vec<(i32, char)> {
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.init_pid())).unwrap();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if std::fs::read_link(format!("/proc/{pid}/ns/pid"))
                .ok()
                .as_ref()
                != Some(&ns)
            {
                continue;
            }
            // State is the first field after the parenthesised command name.
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                if let Some(state) = stat
                    .rsplit(')')
                    .next()
                    .and_then(|s| s.trim().chars().next())
                {
                    out.push((pid, state));
                }
            }
        }
        out
    }

    /// Waits for init (and so `unshare`) to exit; returns unshare's exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        self.unshare.wait().ok()?.code()
    }
}

impl Drop for HostInit {
    fn drop(&mut self) {
        // --kill-child: SIGKILL to unshare takes init, and with it the namespace, down.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        if std::thread::panicking() {
            eprintln!("--- init log ({}) ---\n{}", self.dir.display(), self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
