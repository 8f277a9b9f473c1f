//! Per-sandbox records on disk, so that any later `box` command (or a restarted host process)
//! finds a sandbox again.
//!
//! Layout under the state root (`$BOX_STATE_DIR`, default `/run/box`):
//! - `sandboxes/<name>/record.json`: the [`Record`], replaced atomically (temp + fsync + rename);
//! - `sandboxes/<name>/lock`: `flock`ed around every read-modify-write of the record;
//! - `sandboxes/<name>/console.log`, `vmm.log`, `container.log`, sockets, per-sandbox disks;
//! - `images/`: unpacked image layers and block images, cached by digest.
//!
//! A record is created by reserving its directory (`mkdir`, which fails if the name is taken)
//! and deleted only by an explicit remove (`box rm`).

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::vmm_process::ProcRef;

/// A sandbox's lifecycle as recorded.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxState {
    /// The VM (or host init) is being started, or the container created.
    Creating,
    /// The container's main process runs.
    Running,
    /// The main process exited or the sandbox was stopped.
    Exited,
    /// Creation failed: see `error` and `console_tail`.
    Failed,
    /// A directory without a readable record (a crash mid-create, a corrupt file): shown so
    /// that it can be removed, never hidden.
    Unknown,
}

impl std::fmt::Display for SandboxState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            SandboxState::Creating => "Creating",
            SandboxState::Running => "Running",
            SandboxState::Exited => "Exited",
            SandboxState::Failed => "Failed",
            SandboxState::Unknown => "Unknown",
        };
        f.write_str(s)
    }
}

/// Which backend runs the sandbox.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum BackendKind {
    MicroVm,
    HostProcess,
}

/// The processes a sandbox consists of on the host.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Pids {
    /// What the library spawned: `box-vmm`, or `unshare` for the host-process backend.
    pub vmm: Option<ProcRef>,
    /// Host-process backend: guest-init itself (a child of `unshare`).
    pub init: Option<ProcRef>,
    /// The detached log pump of `box run -d`.
    pub log_pump: Option<ProcRef>,
}

impl Pids {
    pub fn all(&self) -> impl Iterator<Item = &ProcRef> {
        [&self.log_pump, &self.vmm, &self.init]
            .into_iter()
            .flatten()
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Paths {
    pub dir: PathBuf,
    /// The guest's serial console (microVM) or init's stdout/stderr (host process).
    pub console: PathBuf,
    /// box-vmm's own stdout/stderr.
    pub vmm_log: PathBuf,
    /// The container's output, for `box logs` (kept by `box run -d`).
    pub container_log: PathBuf,
    /// The vsock unix socket (microVM) or the socket directory (host process).
    pub endpoint: PathBuf,
    /// The container's block image (microVM).
    pub disk: Option<PathBuf>,
    /// The container's unpacked root filesystem on the host.
    pub rootfs: Option<PathBuf>,
}

/// What the sandbox was asked to run.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct RunConfig {
    pub cpus: u32,
    pub memory_mib: u32,
    pub command: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    /// Remove the record once the sandbox ends (`--rm`).
    pub auto_remove: bool,
    /// Cap of one container log file (0: [`super::log::DEFAULT_MAX_BYTES`]).
    #[serde(default)]
    pub log_max_bytes: u64,
    /// Who the container's processes run as (execs too, unless `-u`).
    #[serde(default)]
    pub user: super::user::UserIds,
    /// `--pids-limit`.
    #[serde(default)]
    pub pids_limit: Option<i64>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub name: String,
    pub id: String,
    pub image: String,
    pub backend: BackendKind,
    pub state: SandboxState,
    pub pids: Pids,
    /// Seconds since the epoch.
    pub created_at: u64,
    pub started_at: Option<u64>,
    pub finished_at: Option<u64>,
    /// The main process's exit code (128+n for signal n).
    pub exit_code: Option<i32>,
    /// The main process was killed by the OOM killer (docker's `OOMKilled`).
    #[serde(default)]
    pub oom_killed: bool,
    /// Why creation failed, or why the sandbox ended abnormally.
    pub error: Option<String>,
    /// The last console lines, captured when the sandbox failed.
    pub console_tail: Vec<String>,
    pub paths: Paths,
    pub config: RunConfig,
    /// The sandbox's network: what was made for it, so that stop and rm undo exactly that.
    #[serde(default)]
    pub network: Option<crate::network::Attachment>,
}

impl Record {
    /// What is known of a sandbox directory without a readable record.
    pub fn unknown(name: &str, dir: PathBuf, reason: &str) -> Record {
        Record {
            name: name.into(),
            id: String::new(),
            image: "?".into(),
            backend: BackendKind::MicroVm,
            state: SandboxState::Unknown,
            pids: Pids::default(),
            created_at: 0,
            started_at: None,
            finished_at: None,
            exit_code: None,
            oom_killed: false,
            error: Some(reason.into()),
            console_tail: Vec::new(),
            paths: Paths {
                dir,
                ..Paths::default()
            },
            config: RunConfig::default(),
            network: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("a sandbox named {0:?} already exists")]
    NameInUse(String),
    #[error("no sandbox named {0:?}")]
    Unknown(String),
    #[error("invalid sandbox name {0:?}: use letters, digits, '-', '_' and '.', not starting with '.' or '-'")]
    BadName(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("sandbox {0:?} has no record (its creation was interrupted): box rm -f removes it")]
    NoRecord(String),
    #[error("record {}: {source}", path.display())]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Space each sandbox directory sets aside for its last record writes on a full disk.
pub const SPARE: u64 = 64 << 10;
const SPARE_FILE: &str = "spare";

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The state root: `$BOX_STATE_DIR` or `/run/box`.
#[derive(Debug, Clone)]
pub struct StateRoot {
    root: PathBuf,
}

impl StateRoot {
    pub fn from_env() -> StateRoot {
        let root = std::env::var_os("BOX_STATE_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/box"));
        StateRoot { root }
    }

    pub fn new(root: impl Into<PathBuf>) -> StateRoot {
        StateRoot { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    fn sandboxes(&self) -> PathBuf {
        self.root.join("sandboxes")
    }

    pub fn dir(&self, name: &str) -> PathBuf {
        self.sandboxes().join(name)
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.dir(name).join("record.json")
    }

    /// Reserves `name`: creates its directory, failing if it exists, with [`SPARE`] bytes
    /// set aside so that its record can still be written once the disk fills (a full disk
    /// then ends in a `Failed` record, not a `Creating` one that nothing can update). When
    /// even that space is not there, nothing is left behind.
    pub fn reserve(&self, name: &str) -> Result<PathBuf, StateError> {
        validate_name(name)?;
        let parent = self.sandboxes();
        std::fs::create_dir_all(&parent).map_err(io("creating state dir", &parent))?;
        let dir = self.dir(name);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StateError::NameInUse(name.into()))
            }
            Err(e) => return Err(io("creating", &dir)(e)),
        }
        let spare = dir.join(SPARE_FILE);
        let made = File::create(&spare).and_then(|f| {
            nix::fcntl::posix_fallocate(&f, 0, SPARE as libc::off_t).map_err(std::io::Error::from)
        });
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(io("setting space aside in", &self.root)(e));
        }
        Ok(dir)
    }

    /// Writes the whole record atomically. On a full disk the sandbox's spare space is given
    /// up and the write tried once more.
    pub fn write(&self, record: &Record) -> Result<(), StateError> {
        let path = self.record_path(&record.name);
        let tmp = path.with_extension("json.tmp");
        let data = serde_json::to_vec_pretty(record).expect("a record always serializes");
        let put = || -> std::io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&data).and_then(|_| f.sync_all())
        };
        let full = |e: &std::io::Error| {
            matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        };
        match put() {
            Ok(()) => {}
            Err(e) if full(&e) && self.dir(&record.name).join(SPARE_FILE).exists() => {
                tracing::warn!(
                    "{}: state directory full: using the spare space",
                    record.name
                );
                let _ = std::fs::remove_file(self.dir(&record.name).join(SPARE_FILE));
                put().map_err(io("writing", &tmp))?;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(io("writing", &tmp)(e));
            }
        }
        std::fs::rename(&tmp, &path).map_err(io("renaming", &tmp))?;
        // The rename itself is durable once the directory is synced.
        if let Ok(d) = File::open(self.dir(&record.name)) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn load(&self, name: &str) -> Result<Record, StateError> {
        if validate_name(name).is_err() {
            return Err(StateError::Unknown(name.into()));
        }
        let path = self.record_path(name);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A crash before the first rename leaves only the temporary: complete if
                // it parses (it was fsynced before any rename would have happened).
                let tmp = path.with_extension("json.tmp");
                if let Some(r) = std::fs::read(&tmp)
                    .ok()
                    .and_then(|d| serde_json::from_slice::<Record>(&d).ok())
                    .filter(|r| r.name == name)
                {
                    return Ok(r);
                }
                if self.dir(name).is_dir() {
                    return Err(StateError::NoRecord(name.into()));
                }
                return Err(StateError::Unknown(name.into()));
            }
            Err(e) => return Err(io("reading", &path)(e)),
        };
        serde_json::from_slice(&data).map_err(|source| StateError::Corrupt { path, source })
    }

    /// Read-modify-write under the record's lock.
    pub fn update<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Record) -> T,
    ) -> Result<(Record, T), StateError> {
        let _lock = self.lock(name)?;
        let mut record = self.load(name)?;
        let out = f(&mut record);
        self.write(&record)?;
        Ok((record, out))
    }

    fn lock(&self, name: &str) -> Result<File, StateError> {
        let path = self.dir(name).join("lock");
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    StateError::Unknown(name.into())
                } else {
                    io("locking", &path)(e)
                }
            })?;
        // SAFETY: flock on a descriptor we own; the lock goes with the file.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(io("locking", &path)(std::io::Error::last_os_error()));
        }
        Ok(f)
    }

    /// Every sandbox directory's record, sorted by creation time; a directory whose record
    /// is missing or unreadable is listed as `Unknown`, with the reason as its error.
    pub fn list(&self) -> Result<Vec<Record>, StateError> {
        let dir = self.sandboxes();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &dir)(e)),
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match self.load(&name) {
                Ok(r) => out.push(r),
                // Removed meanwhile, or not a sandbox name at all.
                Err(StateError::Unknown(_)) => {}
                Err(StateError::NoRecord(_)) => out.push(Record::unknown(
                    &name,
                    self.dir(&name),
                    "no record (creation interrupted)",
                )),
                Err(err) => out.push(Record::unknown(
                    &name,
                    self.dir(&name),
                    &format!("unreadable record: {err}"),
                )),
            }
        }
        out.sort_by_key(|r| (r.created_at, r.name.clone()));
        Ok(out)
    }

    /// Deletes the sandbox's directory and everything in it.
    pub fn remove(&self, name: &str) -> Result<(), StateError> {
        let dir = self.dir(name);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(StateError::Unknown(name.into()))
            }
            Err(e) => Err(io("removing", &dir)(e)),
        }
    }
}

pub fn validate_name(name: &str) -> Result<(), StateError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadName(name.into()))
    }
}

/// The last `n` lines of the given files, in order, each prefixed with its file's name when
/// there is more than one.
pub fn tail_lines(files: &[&Path], n: usize) -> Vec<String> {
    let mut per_file = Vec::new();
    for f in files {
        let Ok(data) = std::fs::read(f) else { continue };
        // Only the end matters; console logs can be large.
        let start = data.len().saturating_sub(64 * 1024);
        let text = String::from_utf8_lossy(&data[start..]);
        let lines: Vec<String> = text
            .lines()
            .map(|l| l.trim_end_matches('\r').to_string())
            .filter(|l| !l.trim().is_empty())
            .collect();
        if !lines.is_empty() {
            per_file.push((f.file_name().unwrap_or_default().to_string_lossy(), lines));
        }
    }
    let prefixed = per_file.len() > 1;
    let mut out = Vec::new();
    for (name, lines) in per_file {
        for l in &lines[lines.len().saturating_sub(n)..] {
            out.push(if prefixed {
                format!("{name}: {l}")
            } else {
                l.clone()
            });
        }
    }
    let skip = out.len().saturating_sub(n);
    out.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> Record {
        Record {
            name: name.into(),
            id: "0123".into(),
            image: "img".into(),
            backend: BackendKind::HostProcess,
            state: SandboxState::Creating,
            pids: Pids::default(),
            created_at: now(),
            started_at: None,
            finished_at: None,
            exit_code: None,
            oom_killed: false,
            error: None,
            console_tail: Vec::new(),
            paths: Paths::default(),
            config: RunConfig::default(),
            network: None,
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("box-state-test-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn reserve_write_update_list_remove() {
        let root = StateRoot::new(scratch("rw"));
        root.reserve("a").unwrap();
        assert!(matches!(root.reserve("a"), Err(StateError::NameInUse(_))));
        // Reserved, not yet written: a sandbox without a record, not no sandbox.
        assert!(matches!(root.load("a"), Err(StateError::NoRecord(_))));
        root.write(&record("a")).unwrap();
        let (r, ()) = root
            .update("a", |r| {
                r.state = SandboxState::Failed;
                r.error = Some("why".into());
            })
            .unwrap();
        assert_eq!(root.load("a").unwrap(), r);
        assert_eq!(root.list().unwrap().len(), 1);
        assert!(!root.dir("a").join("record.json.tmp").exists());
        root.remove("a").unwrap();
        assert!(matches!(root.load("a"), Err(StateError::Unknown(_))));
        assert!(matches!(root.remove("a"), Err(StateError::Unknown(_))));
        let _ = std::fs::remove_dir_all(root.root());
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", ".x", "-x", "a/b", "a b", "..", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "web-1", "x_y.z"] {
            assert!(validate_name(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let d = scratch("tail");
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("console.log");
        std::fs::write(&f, "1\n2\r\n\n3\n4\n").unwrap();
        assert_eq!(tail_lines(&[&f], 2), vec!["3", "4"]);
        assert!(tail_lines(&[&d.join("missing")], 2).is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Whatever bytes a record file holds, loading and listing answer without a panic,
        /// and the sandbox stays listed.
        #[test]
        fn any_record_bytes_load_or_err(data in proptest::collection::vec(any::<u8>(), 0..600), tmp in any::<bool>()) {
            let dir = std::env::temp_dir().join(format!("box-state-prop-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let root = StateRoot::new(&dir);
            root.reserve("x").unwrap();
            let file = if tmp { "record.json.tmp" } else { "record.json" };
            std::fs::write(root.dir("x").join(file), &data).unwrap();
            let _ = root.load("x");
            let listed = root.list().unwrap();
            prop_assert_eq!(listed.len(), 1);
            prop_assert_eq!(&listed[0].name, "x");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
