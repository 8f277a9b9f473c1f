//! Drives the real `box` binary with the host-process test backend (`BOX_BACKEND=host-process`):
//! each [`BoxEnv`] has its own state directory and busybox image, and removes every sandbox it
//! left when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::host_init::{built_binary, init_binary, make_rootfs};

/// The `box` binary cargo built (`cargo build -p box-shim`).
pub fn box_binary() -> PathBuf {
    built_binary("box", "box-shim")
}

pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub struct BoxEnv {
    pub dir: PathBuf,
    pub state: PathBuf,
    pub rootfs: PathBuf,
}

impl Default for BoxEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl BoxEnv {
    pub fn new() -> BoxEnv {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "box-cli-tier-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let rootfs = dir.join("image");
        make_rootfs(&rootfs);
        BoxEnv {
            state: dir.join("state"),
            rootfs,
            dir,
        }
    }

    pub fn image(&self) -> &str {
        self.rootfs.to_str().unwrap()
    }

    /// `box ARGS` with this environment, under a backstop (`timeout 120`, exit 124).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.arg("120")
            .arg(box_binary())
            .args(args)
            .env("BOX_BACKEND", "host-process")
            .env("BOX_STATE_DIR", &self.state)
            .env("BOX_INIT_BIN", init_binary())
            .stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_cmd(&mut self.command(args))
    }

    pub fn run_cmd(&self, c: &mut Command) -> Output {
        let o = c.output().expect("running box");
        Output {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn sandbox_dir(&self, name: &str) -> PathBuf {
        self.state.join("sandboxes").join(name)
    }

    /// The record as stored.
    pub fn record(&self, name: &str) -> serde_json::Value {
        let p = self.sandbox_dir(name).join("record.json");
        serde_json::from_slice(&std::fs::read(&p).unwrap_or_else(|e| panic!("{p:?}: {e}"))).unwrap()
    }

    pub fn sandboxes(&self) -> Vec<String> {
        match std::fs::read_dir(self.state.join("sandboxes")) {
            Ok(rd) => rd
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

/// Whether `pid` runs and is not a zombie.
pub fn pid_alive(pid: i64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.trim().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

impl Drop for BoxEnv {
    fn drop(&mut self) {
        for name in self.sandboxes() {
            let _ = self.run(&["rm", "-f", &name]);
        }
        if std::thread::panicking() {
            for name in self.sandboxes() {
                let d = self.sandbox_dir(&name);
                for f in [
                    "record.json",
                    "console.log",
                    "log-pump.log",
                    "container.log",
                ] {
                    if let Ok(s) = std::fs::read_to_string(d.join(f)) {
                        eprintln!("--- {name}/{f} ---\n{s}");
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Writes an OCI image layout at `dest` from `layers` (each a list of (path in the layer,
/// host path or `None` for an empty whiteout file)) and an image config (its
/// `rootfs.diff_ids` filled in here).
pub fn write_oci_layout(
    dest: &Path,
    layers: &[Vec<(String, Option<PathBuf>)>],
    mut config: serde_json::Value,
) {
    use box_images::write::{
        LayoutWriter, CONFIG_MEDIA_TYPE, LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE,
    };
    let w = LayoutWriter::create(dest).unwrap();
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for entries in layers {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        for (inside, host) in entries {
            match host {
                Some(h) if h.is_dir() => b.append_dir_all(inside, h).unwrap(),
                Some(h) => b.append_path_with_name(h, inside).unwrap(),
                None => {
                    let mut hdr = tar::Header::new_gnu();
                    hdr.set_size(0);
                    hdr.set_mode(0o644);
                    hdr.set_uid(0);
                    hdr.set_gid(0);
                    hdr.set_mtime(0);
                    hdr.set_entry_type(tar::EntryType::Regular);
                    b.append_data(&mut hdr, inside, &[][..]).unwrap();
                }
            }
        }
        let tar = b.into_inner().unwrap();
        diff_ids.push(box_images::sha256_digest(&tar));
        layer_descs.push(
            w.blob(LAYER_MEDIA_TYPE, &box_images::write::gzip(&tar))
                .unwrap(),
        );
    }
    config["rootfs"] = serde_json::json!({"type": "layers", "diff_ids": diff_ids});
    let config = w.json_blob(CONFIG_MEDIA_TYPE, &config).unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config,
        "layers": layer_descs
    });
    let m = w.json_blob(MANIFEST_MEDIA_TYPE, &manifest).unwrap();
    w.index(vec![m]).unwrap();
}
