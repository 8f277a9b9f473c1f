//! The jail, as Firecracker's jailer builds it, entered by box-vmm itself before anything
//! else runs (`--jail DIR --jail-uid U --jail-gid G`): new mount, PID, IPC, UTS and network
//! namespaces; `DIR` becomes `/`, holding only the kernel, the initramfs and the disks
//! (bind-mounted read-only, or read-write for writable disks), a `/dev/kvm` node of its own,
//! and the VMM's sockets and console; the process then runs as `U:G` with no capabilities and
//! `no_new_privs`, optionally in a cgroup the host prepared (`--jail-cgroup`).
//!
//! A new PID namespace needs a fork: the parent stays outside as a small waiter that passes
//! signals on and exits with the jailed child's status, so the host sees box-vmm's exit
//! contract unchanged; the child dies with it (`PR_SET_PDEATHSIG`). Everything here runs while
//! box-vmm is still single-threaded.

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chdir, fork, pivot_root, setgid, setgroups, setuid, ForkResult, Gid, Pid, Uid};

use crate::config::{Console, VmConfig};
use crate::error::{ConfigError, Error, Result};

/// Where and as whom to jail the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    pub root: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// A cgroup v2 directory the VMM moves itself into before jailing.
    pub cgroup: Option<PathBuf>,
}

fn sys(what: &str) -> impl FnOnce(nix::Error) -> Error + '_ {
    move |e| Error::Io {
        what: format!("jail: {what}"),
        source: std::io::Error::from(e),
    }
}

/// `path` as the jailed VMM sees it: it must lie inside the jail root.
fn inside(root: &Path, path: &Path, flag: &'static str) -> Result<PathBuf> {
    let rel = path
        .strip_prefix(root)
        .map_err(|_| ConfigError::OutsideJail(flag, path.to_path_buf()))?;
    Ok(Path::new("/").join(rel))
}

/// Enters the jail and rewrites `cfg`'s paths to the jailed view. Returns in the jailed
/// child; the parent never returns (it exits with the child's status).
pub fn enter(cfg: &mut VmConfig, jail: &JailConfig) -> Result<()> {
    let root = &jail.root;
    if !root.is_absolute() || !root.is_dir() {
        return Err(ConfigError::OutsideJail("--jail", root.clone()).into());
    }
    if jail.uid == 0 || jail.gid == 0 {
        return Err(ConfigError::JailAsRoot.into());
    }
    // Paths that live in the jail already (the host made them there).
    if let Some(p) = cfg.api_sock.as_mut() {
        *p = inside(root, p, "--api-sock")?;
    }
    if let Some(v) = cfg.vsock.as_mut() {
        v.uds_path = inside(root, &v.uds_path, "--vsock-uds")?;
    }
    if let Console::File(p) = &cfg.console {
        cfg.console = Console::File(inside(root, p, "--console")?);
    }
    // Files bound in: checked now, while their host paths still mean something.
    let mut binds: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    if !cfg.kernel.is_file() {
        return Err(ConfigError::MissingKernel(cfg.kernel.clone()).into());
    }
    binds.push((cfg.kernel.clone(), root.join("kernel"), true));
    cfg.kernel = PathBuf::from("/kernel");
    if let Some(i) = cfg.initrd.as_mut() {
        binds.push((i.clone(), root.join("initrd"), true));
        *i = PathBuf::from("/initrd");
    }
    for (n, d) in cfg.disks.iter_mut().enumerate() {
        if !d.path.is_file() {
            return Err(ConfigError::MissingDisk(d.path.clone()).into());
        }
        let name = format!("disk{n}");
        binds.push((d.path.clone(), root.join(&name), d.read_only));
        d.path = Path::new("/").join(name);
    }
    let kvm_dev = std::fs::metadata("/dev/kvm")
        .map(|m| std::os::unix::fs::MetadataExt::rdev(&m))
        .map_err(Error::io("jail: /dev/kvm"))?;

    if let Some(cg) = &jail.cgroup {
        std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
            .map_err(Error::io(format!("jail: joining cgroup {}", cg.display())))?;
    }
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWNET,
    )
    .map_err(sys("unshare"))?;
    wait_or_continue()?;

    // The jailed child, PID 1 of its namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making mounts private"))?;
    for (src, dst, ro) in &binds {
        bind_file(src, dst, *ro, jail)?;
    }
    let dev = root.join("dev");
    let _ = std::fs::create_dir(&dev);
    let kvm = dev.join("kvm");
    let _ = std::fs::remove_file(&kvm);
    mknod(
        &kvm,
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o600),
        kvm_dev,
    )
    .map_err(sys("making /dev/kvm"))?;
    nix::unistd::chown(
        &kvm,
        Some(Uid::from_raw(jail.uid)),
        Some(Gid::from_raw(jail.gid)),
    )
    .map_err(sys("owning /dev/kvm"))?;
    mount(
        Some(root.as_path()),
        root.as_path(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("binding the jail root"))?;
    chdir(root.as_path()).map_err(sys("entering the jail root"))?;
    match pivot_root(".", ".") {
        Ok(()) => umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?,
        // An initramfs root (the nested node's) cannot be pivoted away from: move the jail
        // over it and chroot, as runc's no-pivot mode does. Without capabilities the process
        // cannot leave a chroot.
        Err(nix::Error::EINVAL) => {
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .map_err(sys("moving the jail root over /"))?;
            nix::unistd::chroot(".").map_err(sys("chroot"))?;
        }
        Err(e) => return Err(sys("pivot_root")(e)),
    }
    chdir("/").map_err(sys("chdir /"))?;
    let _ = nix::unistd::sethostname("box-vmm");
    setgroups(&[]).map_err(sys("setgroups"))?;
    setgid(Gid::from_raw(jail.gid)).map_err(sys("setgid"))?;
    setuid(Uid::from_raw(jail.uid)).map_err(sys("setuid"))?;
    nix::sys::prctl::set_no_new_privs().map_err(sys("no_new_privs"))?;
    Ok(())
}

/// Binds `src` over a placeholder at `dst`, read-only when `ro`. A writable disk must also be
/// writable by the jail's user.
fn bind_file(src: &Path, dst: &Path, ro: bool, jail: &JailConfig) -> Result<()> {
    let what = |w: &str| format!("{w} {}", src.display());
    std::fs::File::create(dst).map_err(Error::io(what("jail: placeholder for")))?;
    mount(Some(src), dst, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(sys(&what("binding")))?;
    if ro {
        mount(
            None::<&str>,
            dst,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(sys(&what("read-only")))?;
    } else {
        nix::unistd::chown(
            dst,
            Some(Uid::from_raw(jail.uid)),
            Some(Gid::from_raw(jail.gid)),
        )
        .map_err(sys(&what("owning")))?;
    }
    Ok(())
}

/// Forks: the child returns (it is PID 1 of the new PID namespace); the parent waits for it,
/// passing TERM, INT and HUP on, and exits with its status (128+n for a signal).
fn wait_or_continue() -> Result<()> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        set.add(s);
    }
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(sys("sigprocmask"))?;
    // The parent holds the write end for its whole life: the child sees it hung up if the
    // parent died before the death signal was armed (getppid() says 0 across the PID
    // namespace, so it cannot tell).
    let (alive_r, alive_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe"))?;
    // SAFETY: box-vmm is single-threaded here (nothing has spawned a thread yet), so the
    // child may run any code after the fork.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            drop(alive_w);
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("pdeathsig"))?;
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(&alive_r),
                nix::poll::PollFlags::POLLIN,
            )];
            let hung_up = nix::poll::poll(&mut fds, nix::poll::PollTimeout::ZERO)
                .ok()
                .filter(|n| *n > 0)
                .and_then(|_| fds[0].revents())
                .is_some_and(|r| r.contains(nix::poll::PollFlags::POLLHUP));
            if hung_up {
                std::process::exit(crate::error::ExitCode::Host.code());
            }
            drop(alive_r);
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None)
                .map_err(sys("sigprocmask"))?;
            Ok(())
        }
        ForkResult::Parent { child } => {
            drop(alive_r);
            // Kept open until this process exits.
            std::mem::forget(alive_w);
            wait_child(child, &set)
        }
    }
}

fn wait_child(child: Pid, set: &SigSet) -> ! {
    let sfd = SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC);
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => std::process::exit(128 + sig as i32),
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => std::process::exit(crate::error::ExitCode::Host.code()),
        }
        let Ok(sfd) = &sfd else {
            // No signalfd: wait blocking, signals stay blocked (the child still gets killed
            // with us through its death signal).
            match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => std::process::exit(128 + sig as i32),
                _ => continue,
            }
        };
        if let Ok(Some(info)) = sfd.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                if sig != Signal::SIGCHLD {
                    let _ = kill(child, sig);
                }
            }
        }
    }
}
