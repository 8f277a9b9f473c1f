//! Where a sandbox runs. Two backends, selected with `$BOX_BACKEND`:
//!
//! - `microvm` (default): a microVM under `box-vmm`, guest-init as its PID 1, reached through
//!   box-vmm's vsock unix socket ([`Endpoint::HybridVsock`]). The VM boots with an empty disk
//!   slot; the container's root filesystem, an ext4 image, goes into it read-only when the
//!   container is created (box-vmm's control socket, the file passed as a descriptor, so the
//!   jailed VMM never sees its path), and guest-init finds it by its serial. Booting does not
//!   depend on the image: the step a pooled or pod VM takes before it knows its container.
//! - `host-process` (**a test backend**): guest-init as PID 1 of a new PID + mount namespace on
//!   this host (`unshare --pid --mount --fork --kill-child`), reached through unix sockets
//!   ([`Endpoint::SocketDir`]); the root filesystem directory is bind-mounted read-only. It
//!   isolates nothing beyond the namespaces and exists so that the whole CLI can be exercised
//!   on hosts whose KVM cannot boot a Linux guest. Needs root.
//!
//! Both give the container the same overlay: the image read-only at `lower`, a tmpfs at `rw`,
//! and `rootfs = overlay(lowerdir=lower, upperdir=rw/upper, workdir=rw/work)`.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::state::{BackendKind, Paths, StateRoot};
use super::vmm_process::Spawned;
use super::SandboxError;
use crate::agent_client::{Endpoint, RootfsMount};
use crate::network::NetworkMode;
use box_images::disk::build_ext4;
use box_images::ResolvedImage;

/// What to launch.
pub struct LaunchSpec<'a> {
    pub paths: &'a Paths,
    pub cpus: u32,
    pub memory_mib: u32,
    /// Jail the VMM (microVM backend; `--no-jail` turns it off).
    pub jail: bool,
    /// The guest NIC's TAP (opened by the host library) and MAC.
    pub net: Option<(&'a std::os::fd::OwnedFd, &'a str)>,
    /// Empty disk slots for containers' disks attached later.
    pub disk_slots: u32,
}

pub trait Backend: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// The network a sandbox gets when none is asked for.
    fn default_network(&self) -> NetworkMode;

    /// Checks that this host can run the backend at all; errors are one actionable line.
    fn preflight(&self) -> Result<(), SandboxError>;

    /// Makes the image available to the sandbox; returns the disk to attach (if any) and the
    /// mounts guest-init applies under the bundle. `dir` is the sandbox's state directory,
    /// `disk_id` the serial the disk will carry in the guest.
    fn prepare_rootfs(
        &self,
        image: &ResolvedImage,
        root: &StateRoot,
        dir: &Path,
        disk_id: &str,
    ) -> Result<(Option<PathBuf>, Vec<RootfsMount>), SandboxError>;

    /// Puts a container's disk into the running sandbox's `slot`, with serial `disk_id`.
    fn attach_disk(
        &self,
        _paths: &Paths,
        _slot: usize,
        _file: &Path,
        _disk_id: &str,
        _read_only: bool,
    ) -> Result<(), SandboxError> {
        Err(SandboxError::InvalidOption(
            "this backend has no disks: container roots are host directories".into(),
        ))
    }

    /// Empties a disk slot of the running sandbox.
    fn detach_disk(&self, _paths: &Paths, _slot: usize) -> Result<(), SandboxError> {
        Ok(())
    }

    /// The endpoint file (vsock socket or socket directory) inside `dir`.
    fn endpoint_path(&self, dir: &Path) -> PathBuf;

    /// Where the guest's console is written.
    fn console_path(&self, dir: &Path) -> PathBuf {
        dir.join("console.log")
    }

    /// Spawns the sandbox's process (detached, in its own session).
    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<Spawned, SandboxError>;

    /// Where guest-init builds the container's bundle.
    fn bundle_dir(&self, paths: &Paths, id: &str) -> String;

    /// What an early exit of the launched process means.
    fn explain_exit(&self, code: i32) -> String;
}

pub fn endpoint(kind: BackendKind, paths: &Paths) -> Endpoint {
    match kind {
        BackendKind::MicroVm => Endpoint::HybridVsock(paths.endpoint.clone()),
        BackendKind::HostProcess => Endpoint::SocketDir(paths.endpoint.clone()),
    }
}

/// The backend `$BOX_BACKEND` names (`microvm` by default, or `host-process`).
pub fn from_env() -> Result<Box<dyn Backend>, SandboxError> {
    match std::env::var("BOX_BACKEND").as_deref() {
        Err(_) | Ok("") | Ok("microvm") => Ok(Box::new(MicroVm::from_env())),
        Ok("host-process") => Ok(Box::new(HostProcess::from_env())),
        Ok(other) => Err(SandboxError::Preflight(format!(
            "unknown BOX_BACKEND {other:?}: use microvm (default) or host-process (test backend)"
        ))),
    }
}

/// The directory of the running `box` executable (where cargo puts its sibling binaries).
fn exe_dir() -> Option<PathBuf> {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
}

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// A program: `$var`, else a sibling of the `box` executable, else `name` on `$PATH`.
fn program(var: &str, name: &str) -> PathBuf {
    if let Some(p) = env_path(var) {
        return p;
    }
    if let Some(p) = exe_dir().map(|d| d.join(name)).filter(|p| p.exists()) {
        return p;
    }
    PathBuf::from(name)
}

fn open_log(path: &Path) -> Result<std::fs::File, SandboxError> {
    std::fs::File::options()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| SandboxError::Io(format!("{}: {e}", path.display())))
}

/// Starts a sandbox process detached, its stdout and stderr appended to `log`. The outer
/// error is about the log file; the inner one is the spawn's, for the caller to explain.
fn spawn_logged(
    cmd: &mut Command,
    log: std::fs::File,
) -> Result<std::io::Result<Spawned>, SandboxError> {
    let out = log
        .try_clone()
        .map_err(|e| SandboxError::Io(e.to_string()))?;
    cmd.stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(log);
    Ok(super::vmm_process::ChildRegistry::global()
        .spawn_detached(cmd)
        .map(|(s, _)| s))
}

fn overlay_mounts(lower: RootfsMount) -> Vec<RootfsMount> {
    vec![
        lower,
        RootfsMount {
            fstype: "tmpfs".into(),
            source: "tmpfs".into(),
            target: "rw".into(),
            options: vec!["mode=0755".into()],
        },
        RootfsMount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            target: "rootfs".into(),
            options: vec![
                "lowerdir=lower".into(),
                "upperdir=rw/upper".into(),
                "workdir=rw/work".into(),
            ],
        },
    ]
}

/// The microVM backend: `box-vmm`.
pub struct MicroVm {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `$BOX_BOOT_TIMER=1`: box-vmm logs the boot's milestones (its own start, then
    /// guest-init's) to the sandbox's vmm log, for `cargo xtask bench`.
    pub boot_timer: bool,
}

impl MicroVm {
    /// `$BOX_VMM`, `$BOX_KERNEL`, `$BOX_INITRD`; by default box-vmm next to `box`, and the
    /// kernel and initramfs `cargo xtask images` leaves in `target/box-images/` (or
    /// `$BOX_IMAGES_DIR`).
    pub fn from_env() -> MicroVm {
        let images = env_path("BOX_IMAGES_DIR").unwrap_or_else(|| {
            // target/<profile>/box -> target/box-images
            exe_dir()
                .and_then(|d| d.parent().map(|t| t.join("box-images")))
                .unwrap_or_else(|| PathBuf::from("target/box-images"))
        });
        MicroVm {
            vmm: program("BOX_VMM", "box-vmm"),
            kernel: env_path("BOX_KERNEL").unwrap_or_else(|| images.join("vmlinux")),
            initrd: env_path("BOX_INITRD").unwrap_or_else(|| images.join("initramfs.cpio.gz")),
            boot_timer: std::env::var_os("BOX_BOOT_TIMER").is_some_and(|v| v == "1"),
        }
    }
}

/// Checks `/dev/kvm` can be used to boot a stock Linux guest.
pub fn check_kvm(dev: &Path, pvm_marker: &Path) -> Result<(), SandboxError> {
    let pre = |m: String| Err(SandboxError::Preflight(m));
    match std::fs::File::options().read(true).write(true).open(dev) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return pre(format!(
                "{} does not exist: this host has no KVM; enable virtualization, or run box in the nested node (cargo xtask node)",
                dev.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return pre(format!(
                "no permission to open {}: run as root or join the kvm group",
                dev.display()
            ))
        }
        Err(e) => return pre(format!("cannot open {}: {e}", dev.display())),
    }
    if pvm_marker.exists() && std::env::var_os("BOX_VMM_FORCE_PVM").is_none() {
        return pre(
            "this host's KVM is PVM (/sys/module/kvm_pvm), which cannot boot the stock guest kernel: use the nested node (cargo xtask node -- box ...)"
                .into(),
        );
    }
    Ok(())
}

impl Backend for MicroVm {
    fn kind(&self) -> BackendKind {
        BackendKind::MicroVm
    }

    fn default_network(&self) -> NetworkMode {
        NetworkMode::Nat
    }

    fn preflight(&self) -> Result<(), SandboxError> {
        check_kvm(Path::new("/dev/kvm"), Path::new("/sys/module/kvm_pvm"))?;
        for (what, p, var) in [
            ("guest kernel", &self.kernel, "BOX_KERNEL"),
            ("guest initramfs", &self.initrd, "BOX_INITRD"),
        ] {
            if !p.exists() {
                return Err(SandboxError::Preflight(format!(
                    "{what} {} is missing: build it with `cargo xtask images` (or set {var})",
                    p.display()
                )));
            }
        }
        Ok(())
    }

    fn prepare_rootfs(
        &self,
        image: &ResolvedImage,
        root: &StateRoot,
        dir: &Path,
        disk_id: &str,
    ) -> Result<(Option<PathBuf>, Vec<RootfsMount>), SandboxError> {
        let disk = match &image.digest {
            // Layouts are immutable by digest: one cached disk per image.
            Some(d) => {
                let hex = d.split_once(':').map(|(_, h)| h).unwrap_or(d);
                let disk = root.images_dir().join("disks").join(format!("{hex}.ext4"));
                if !disk.exists() {
                    build_ext4(&image.reference, &image.rootfs, &disk)?;
                }
                disk
            }
            // A plain directory may change between runs: a disk of its own per sandbox.
            None => {
                let disk = dir.join("rootfs.ext4");
                build_ext4(&image.reference, &image.rootfs, &disk)?;
                disk
            }
        };
        let lower = RootfsMount {
            fstype: "ext4".into(),
            source: format!("{BY_ID}{disk_id}"),
            target: "lower".into(),
            options: vec!["ro".into()],
        };
        Ok((Some(disk), overlay_mounts(lower)))
    }

    fn attach_disk(
        &self,
        paths: &Paths,
        slot: usize,
        file: &Path,
        disk_id: &str,
        read_only: bool,
    ) -> Result<(), SandboxError> {
        use std::os::fd::AsFd;
        let f = std::fs::File::options()
            .read(true)
            .write(!read_only)
            .open(file)
            .map_err(|e| SandboxError::Io(format!("{}: {e}", file.display())))?;
        let req = box_vmm::control::Request::AttachDisk {
            slot,
            id: disk_id.to_string(),
            read_only,
        };
        control(paths, &req, Some(f.as_fd()))
            .map_err(|e| SandboxError::Io(format!("disk {}: {e}", file.display())))
    }

    fn detach_disk(&self, paths: &Paths, slot: usize) -> Result<(), SandboxError> {
        control(paths, &box_vmm::control::Request::DetachDisk { slot }, None)
            .map_err(|e| SandboxError::Io(format!("emptying disk slot {slot}: {e}")))
    }

    fn endpoint_path(&self, dir: &Path) -> PathBuf {
        dir.join(JAIL_DIR).join("vsock.sock")
    }

    fn console_path(&self, dir: &Path) -> PathBuf {
        dir.join(JAIL_DIR).join("console.log")
    }

    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<Spawned, SandboxError> {
        let p = spec.paths;
        let log = open_log(&p.vmm_log)?;
        let jail_dir = p.dir.join(JAIL_DIR);
        std::fs::create_dir_all(&jail_dir)
            .map_err(|e| SandboxError::Io(format!("{}: {e}", jail_dir.display())))?;
        let mut cmd = Command::new(&self.vmm);
        if spec.jail {
            let ids = super::jail::prepare(&jail_dir, spec.cpus, spec.memory_mib)?;
            cmd.arg("--jail")
                .arg(&jail_dir)
                .arg("--jail-uid")
                .arg(ids.uid.to_string())
                .arg("--jail-gid")
                .arg(ids.gid.to_string());
            if let Some(cg) = &ids.cgroup {
                cmd.arg("--jail-cgroup").arg(cg);
            }
        }
        cmd.arg("--kernel")
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.initrd)
            .arg("--cpus")
            .arg(spec.cpus.to_string())
            .arg("--mem")
            .arg(spec.memory_mib.to_string())
            .arg("--disk-slots")
            .arg(spec.disk_slots.to_string())
            .arg("--api-sock")
            .arg(api_sock(p))
            .arg("--vsock-uds")
            .arg(&p.endpoint)
            .arg("--vsock-cid")
            .arg("3")
            .arg("--console")
            .arg(&p.console);
        if self.boot_timer {
            cmd.arg("--boot-timer");
        }
        if let Some((tap, mac)) = spec.net {
            // The TAP goes in as fd 3 (command-fds closes the gap between fork and exec
            // that a plain inherited descriptor would leak into other children).
            use command_fds::{CommandFdExt, FdMapping};
            let fd = tap
                .try_clone()
                .map_err(|e| SandboxError::Io(format!("duplicating the TAP fd: {e}")))?;
            cmd.fd_mappings(vec![FdMapping {
                parent_fd: fd,
                child_fd: TAP_FD,
            }])
            .map_err(|e| SandboxError::Io(format!("passing the TAP fd: {e}")))?;
            cmd.arg("--net").arg(format!("fd={TAP_FD},mac={mac}"));
        }
        spawn_logged(&mut cmd, log)?.map_err(|e| {
                SandboxError::Preflight(format!(
                    "cannot run box-vmm ({}): {e}; build it with `cargo build -p box-vmm` or set BOX_VMM",
                    self.vmm.display()
                ))
            })
    }

    fn bundle_dir(&self, _paths: &Paths, id: &str) -> String {
        format!("/run/box/bundles/{id}")
    }

    fn explain_exit(&self, code: i32) -> String {
        let why = match code {
            0 => "the guest powered off",
            10 => "the guest rebooted (kernel panic or init failure)",
            11 => "the guest crashed (triple fault or KVM internal error)",
            12 => "box-vmm rejected its configuration",
            13 => "host error (KVM unavailable, PVM host, or I/O error)",
            _ => "unexpected exit",
        };
        format!("box-vmm exited with code {code} before the guest answered: {why}")
    }
}

/// The descriptor box-vmm finds its TAP at.
const TAP_FD: i32 = 3;

/// How long one request on box-vmm's control socket may take (it answers from its event
/// loop at once; this only bounds a VMM that stopped serving).
const CONTROL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The udev name of a virtio disk by serial, which guest-init resolves itself.
pub(crate) const BY_ID: &str = "/dev/disk/by-id/virtio-";

/// One request on box-vmm's control socket; a refusal is an error with box-vmm's reason.
fn control(
    paths: &Paths,
    req: &box_vmm::control::Request,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<(), String> {
    let reply = box_vmm::control::call(&api_sock(paths), req, fd, CONTROL_TIMEOUT)
        .map_err(|e| e.to_string())?;
    if !reply.ok {
        return Err(format!(
            "box-vmm refused: {}",
            reply.error.unwrap_or_default()
        ));
    }
    Ok(())
}

/// box-vmm's control socket, in its jail root.
fn api_sock(paths: &Paths) -> PathBuf {
    paths.dir.join(JAIL_DIR).join("api.sock")
}

/// The microVM's own directory inside the sandbox's: the VMM's jail root (its sockets and
/// console; kernel and initramfs are bound in by box-vmm itself, disks come as descriptors).
pub const JAIL_DIR: &str = "vmm";

/// The host-process test backend: guest-init as PID 1 of a PID + mount namespace.
pub struct HostProcess {
    pub init: PathBuf,
    pub unshare: PathBuf,
}

impl HostProcess {
    /// `$BOX_INIT_BIN`, by default `box-init` next to `box`.
    pub fn from_env() -> HostProcess {
        HostProcess {
            init: program("BOX_INIT_BIN", "box-init"),
            unshare: PathBuf::from("/usr/bin/unshare"),
        }
    }
}

impl Backend for HostProcess {
    fn kind(&self) -> BackendKind {
        BackendKind::HostProcess
    }

    /// It shares the host's network namespace: it has no network of its own to make.
    fn default_network(&self) -> NetworkMode {
        NetworkMode::None
    }

    fn preflight(&self) -> Result<(), SandboxError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(SandboxError::Preflight(
                "the host-process backend needs root (PID and mount namespaces)".into(),
            ));
        }
        if !self.unshare.exists() {
            return Err(SandboxError::Preflight(format!(
                "{} (util-linux) is missing",
                self.unshare.display()
            )));
        }
        if !self.init.exists() {
            return Err(SandboxError::Preflight(format!(
                "guest init {} is missing: build it with `cargo build -p box-guest-init` or set BOX_INIT_BIN",
                self.init.display()
            )));
        }
        Ok(())
    }

    fn prepare_rootfs(
        &self,
        image: &ResolvedImage,
        _root: &StateRoot,
        _dir: &Path,
        _disk_id: &str,
    ) -> Result<(Option<PathBuf>, Vec<RootfsMount>), SandboxError> {
        let lower = RootfsMount {
            fstype: "bind".into(),
            source: image.rootfs.to_string_lossy().into_owned(),
            target: "lower".into(),
            options: vec!["rbind".into(), "ro".into()],
        };
        Ok((None, overlay_mounts(lower)))
    }

    fn endpoint_path(&self, dir: &Path) -> PathBuf {
        dir.join("sock")
    }

    fn launch(&self, spec: &LaunchSpec<'_>) -> Result<Spawned, SandboxError> {
        let p = spec.paths;
        std::fs::create_dir_all(&p.endpoint)
            .map_err(|e| SandboxError::Io(format!("{}: {e}", p.endpoint.display())))?;
        let log = open_log(&p.console)?;
        let mut cmd = Command::new(&self.unshare);
        cmd.args(["--pid", "--mount", "--fork", "--kill-child", "--"])
            .arg(&self.init)
            .arg("--host-process")
            .arg(&p.endpoint)
            .env("BOX_INIT_LOG", "info");
        spawn_logged(&mut cmd, log)?
            .map_err(|e| SandboxError::Io(format!("spawning {}: {e}", self.unshare.display())))
    }

    fn bundle_dir(&self, paths: &Paths, _id: &str) -> String {
        paths.dir.join("bundle").to_string_lossy().into_owned()
    }

    fn explain_exit(&self, code: i32) -> String {
        format!("guest init exited with code {code} before answering")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_problems_are_one_actionable_line() {
        let d = std::env::temp_dir().join(format!("box-kvm-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let e = check_kvm(&d.join("kvm"), &d.join("pvm"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("does not exist") && e.contains("nested node"),
            "{e}"
        );
        let fake = d.join("fake-kvm");
        std::fs::write(&fake, "").unwrap();
        std::fs::write(d.join("pvm"), "").unwrap();
        let e = check_kvm(&fake, &d.join("pvm")).unwrap_err().to_string();
        assert!(e.contains("PVM") && e.contains("cargo xtask node"), "{e}");
        std::fs::remove_file(d.join("pvm")).unwrap();
        assert!(check_kvm(&fake, &d.join("pvm")).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
