//! fork + exec of container processes, in two steps: the child is created and set up
//! (namespace, root, stdio, user) and then held until started, so that a container's main
//! process exists from Create on and runs from Start on, exactly once.
//!
//! Written on raw `fork` rather than `std::process::Command` because the registry lock must
//! be held across the fork (see `reaper`), the mount namespace and root must be set up before
//! `chdir`/`setuid`, and std would call `waitpid` itself when exec fails, racing the reaper.
//! Everything the child needs is prepared before the fork: after it, in a multithreaded
//! parent, the child calls only async-signal-safe syscalls and never allocates.

use std::ffi::CString;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::fcntl::OFlag;
use nix::unistd::{pipe2, Pid};

use crate::init::reaper::{Registry, Route};

/// Where the child's filesystem root comes from.
pub enum RootSetup {
    /// Keep init's root (used by unit tests).
    Inherit,
    /// A new mount namespace whose root becomes `rootfs` (the container's main process).
    NewRoot {
        rootfs: CString,
        mounts: Vec<ChildMount>,
        /// `<rootfs>/dev`, created if missing, and the default devices bound into it.
        dev_dir: CString,
        devices: Vec<DeviceBind>,
        /// Paths (inside the new root) hidden: `/dev/null` over files, an empty read-only
        /// tmpfs over directories, as runc does with the spec's `maskedPaths`.
        masked: Vec<CString>,
        /// Paths (inside the new root) bound read-only over themselves (`readonlyPaths`).
        readonly: Vec<CString>,
    },
    /// Join an existing container's mount namespace (exec'd processes).
    JoinMountNs { ns: OwnedFd },
}

/// One mount made inside the new namespace before the root switch; `target` is already the
/// full path under the rootfs as seen before the switch.
pub struct ChildMount {
    pub source: Option<CString>,
    pub target: CString,
    pub fstype: Option<CString>,
    pub flags: libc::c_ulong,
    pub data: Option<CString>,
    /// A bind of a file (its mount point is a file, not a directory).
    pub is_file: bool,
}

/// A device node of init's `/dev` bind-mounted over a file created at `target` (the OCI
/// runtime spec's default devices: programs expect /dev/null and friends).
pub struct DeviceBind {
    pub source: CString,
    pub target: CString,
}

/// A container's PID namespace: its main process makes one (and is PID 1 there as a small
/// init that runs the real command as its child, reaps the container's orphans and passes
/// on signals from outside, as docker's `--init`); execs join it. Either way PID 1 of the
/// guest is out of the container's sight and reach.
pub enum PidNs {
    /// Stay in init's (unit tests).
    Inherit,
    New,
    Join(OwnedFd),
}

/// A process's capability sets as bit masks (bit n = capability n), as the spec gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Privileges {
    pub bounding: u64,
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

/// The child's stdin, stdout and stderr, and whether fd 0 is its controlling terminal.
pub struct ChildStdio {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub controlling_tty: bool,
}

pub struct Launch {
    /// Paths tried in order with `execve`, as `execvp` would walk `PATH` (resolved inside
    /// the child after the root switch, so the container's own files are found).
    pub exe_candidates: Vec<CString>,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    pub cwd: CString,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub additional_gids: Vec<libc::gid_t>,
    /// Capability sets and no_new_privs; `None` keeps init's (all capabilities).
    pub privileges: Option<Privileges>,
    /// The container cgroup's `cgroup.procs`: the child writes "0" there to join it.
    pub cgroup_procs: Option<OwnedFd>,
    /// Which PID namespace the process lives in.
    pub pid_ns: PidNs,
    /// seccomp filters installed right before the exec (after `no_new_privs`).
    pub seccomp: Vec<seccompiler::BpfProgram>,
    pub root: RootSetup,
    pub stdio: ChildStdio,
}

/// The step of child setup that failed, reported through the status pipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Stage {
    Setsid = 1,
    Unshare,
    MakePrivate,
    BindRoot,
    Mount,
    Device,
    SwitchRoot,
    SetNs,
    Stdio,
    Tty,
    Chdir,
    SetGroups,
    SetGid,
    SetUid,
    Exec,
    Mask,
    Capabilities,
    Cgroup,
    Fork,
    Seccomp,
}

impl Stage {
    fn from_u8(v: u8) -> Option<Stage> {
        use Stage::*;
        [
            Setsid,
            Unshare,
            MakePrivate,
            BindRoot,
            Mount,
            Device,
            SwitchRoot,
            SetNs,
            Stdio,
            Tty,
            Chdir,
            SetGroups,
            SetGid,
            SetUid,
            Exec,
            Mask,
            Capabilities,
            Cgroup,
            Fork,
            Seccomp,
        ]
        .into_iter()
        .find(|s| *s as u8 == v)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("process setup failed at {stage:?}: {errno}")]
    Child { stage: Stage, errno: nix::Error },
    #[error("process died before reporting its setup")]
    Vanished,
    #[error("creating a process: {0}")]
    Host(#[from] nix::Error),
}

const READY: u8 = b'R';
const FAILED: u8 = b'E';

/// A created child, set up and waiting for [`Held::start`].
pub struct Held {
    pub pid: Pid,
    go: OwnedFd,
    status: OwnedFd,
}

/// Forks a child registered with `route`, waits until its setup is done and returns it held.
/// Blocking: call from a blocking context.
pub fn spawn_held(registry: &Registry, launch: Launch, route: Route) -> Result<Held, SpawnError> {
    let (status_r, status_w) = pipe2(OFlag::O_CLOEXEC)?;
    let (go_r, go_w) = pipe2(OFlag::O_CLOEXEC)?;
    let fork_registered = || -> Result<Pid, SpawnError> {
        let mut guard = registry.lock_for_spawn();
        let r = match launch.pid_ns {
            // SAFETY: clone(2) without CLONE_VM and with a NULL stack is fork(2), the child
            // PID 1 of a new namespace. It bypasses glibc's fork bookkeeping, so that child
            // must never call a glibc set*id wrapper (they would wait on the parent's threads,
            // stale here): it only sets up the container and forks (with glibc's fork) the
            // process that does. It runs only `child_main`: async-signal-safe syscalls on data
            // prepared before the fork; it never returns.
            PidNs::New => unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    (libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong,
                    0usize,
                    0usize,
                    0usize,
                    0usize,
                )
            },
            // SAFETY: as above, with glibc's own fork.
            _ => unsafe { libc::fork() as libc::c_long },
        };
        match r {
            r if r < 0 => Err(SpawnError::Host(nix::Error::last())),
            0 => child_main(&launch, status_w.as_raw_fd(), go_r.as_raw_fd()),
            pid => {
                let child = Pid::from_raw(pid as i32);
                guard.register(child, route);
                Ok(child)
            }
        }
    };
    let pid = match &launch.pid_ns {
        // The PID namespace for children is per thread: join it on a thread of its own, so
        // no pooled thread of init is left forking into a container's namespace.
        PidNs::Join(ns) => std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWPID)?;
                    fork_registered()
                })
                .join()
                .unwrap_or(Err(SpawnError::Vanished))
        })?,
        _ => fork_registered()?,
    };
    // The child's ends must close here, or EOF on the status pipe would never come.
    drop(status_w);
    drop(go_r);
    drop(launch);
    match read_report(&status_r)? {
        Report::Ready => Ok(Held {
            pid,
            go: go_w,
            status: status_r,
        }),
        Report::Failed(stage, errno) => Err(SpawnError::Child { stage, errno }),
        Report::Eof => Err(SpawnError::Vanished),
    }
}

impl Held {
    /// Lets the child exec; returns once the exec succeeded (the status pipe closed on exec)
    /// or with the reason it failed. Blocking.
    pub fn start(self) -> Result<Pid, SpawnError> {
        nix::unistd::write(&self.go, &[1u8])?;
        match read_report(&self.status)? {
            Report::Eof => Ok(self.pid),
            Report::Failed(stage, errno) => Err(SpawnError::Child { stage, errno }),
            Report::Ready => Err(SpawnError::Vanished),
        }
    }
}

enum Report {
    Ready,
    Failed(Stage, nix::Error),
    Eof,
}

fn read_report(fd: &OwnedFd) -> Result<Report, SpawnError> {
    let mut tag = [0u8; 1];
    if read_full(fd, &mut tag)? == 0 {
        return Ok(Report::Eof);
    }
    match tag[0] {
        READY => Ok(Report::Ready),
        FAILED => {
            let mut rest = [0u8; 5];
            if read_full(fd, &mut rest)? < rest.len() {
                return Err(SpawnError::Vanished);
            }
            let stage = Stage::from_u8(rest[0]).unwrap_or(Stage::Exec);
            let errno = i32::from_ne_bytes([rest[1], rest[2], rest[3], rest[4]]);
            Ok(Report::Failed(stage, nix::Error::from_raw(errno)))
        }
        _ => Err(SpawnError::Vanished),
    }
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> Result<usize, SpawnError> {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

// ---- the child side: async-signal-safe only, no allocation ----

fn fail(status_w: RawFd, stage: Stage) -> ! {
    let errno = nix::Error::last_raw();
    let e = errno.to_ne_bytes();
    let msg = [FAILED, stage as u8, e[0], e[1], e[2], e[3]];
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` outlives the call.
    unsafe {
        libc::write(status_w, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

fn ptr(s: &CString) -> *const libc::c_char {
    s.as_ptr()
}

fn opt_ptr(s: &Option<CString>) -> *const libc::c_char {
    s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr())
}

fn child_main(l: &Launch, status_w: RawFd, go_r: RawFd) -> ! {
    // SAFETY: every call below is a raw, async-signal-safe syscall on pointers into `l`, which
    // was fully built before the fork and is not modified; nothing allocates.
    unsafe {
        // PID 1 blocks the signals it handles and Rust ignores SIGPIPE; neither may leak into
        // the container (Kata #... lesson: programs expect SIGPIPE's default).
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);

        if libc::setsid() < 0 {
            fail(status_w, Stage::Setsid);
        }
        if let Some(fd) = &l.cgroup_procs {
            let me = b"0";
            if libc::write(fd.as_raw_fd(), me.as_ptr().cast(), me.len()) < 0 {
                fail(status_w, Stage::Cgroup);
            }
        }
        match &l.root {
            RootSetup::Inherit => {}
            RootSetup::NewRoot {
                rootfs,
                mounts,
                dev_dir,
                devices,
                masked,
                readonly,
            } => {
                if libc::unshare(libc::CLONE_NEWNS) < 0 {
                    fail(status_w, Stage::Unshare);
                }
                let root = c"/";
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) < 0
                {
                    fail(status_w, Stage::MakePrivate);
                }
                // pivot_root needs the new root to be a mount point.
                if libc::mount(
                    ptr(rootfs),
                    ptr(rootfs),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REC,
                    std::ptr::null(),
                ) < 0
                {
                    fail(status_w, Stage::BindRoot);
                }
                for m in mounts {
                    // Made again here: an earlier mount of the spec (containerd's tmpfs on
                    // /dev) may hide the point made before the fork (/dev/pts), as runc
                    // makes each point after the mounts before it.
                    let made = if m.is_file {
                        let fd = libc::open(
                            ptr(&m.target),
                            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                            0o644,
                        );
                        if fd >= 0 {
                            libc::close(fd);
                        }
                        fd >= 0
                    } else {
                        libc::mkdir(ptr(&m.target), 0o755) == 0
                            || nix::Error::last_raw() == libc::EEXIST
                    };
                    if !made {
                        fail(status_w, Stage::Mount);
                    }
                    if libc::mount(
                        opt_ptr(&m.source),
                        ptr(&m.target),
                        opt_ptr(&m.fstype),
                        m.flags,
                        opt_ptr(&m.data).cast(),
                    ) < 0
                    {
                        fail(status_w, Stage::Mount);
                    }
                }
                // After the spec's mounts, which may have put a tmpfs on /dev.
                if libc::mkdir(ptr(dev_dir), 0o755) < 0 && nix::Error::last_raw() != libc::EEXIST {
                    fail(status_w, Stage::Device);
                }
                for d in devices {
                    let fd = libc::open(
                        ptr(&d.target),
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o666,
                    );
                    if fd < 0 {
                        fail(status_w, Stage::Device);
                    }
                    libc::close(fd);
                    if libc::mount(
                        ptr(&d.source),
                        ptr(&d.target),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) < 0
                    {
                        fail(status_w, Stage::Device);
                    }
                }
                if libc::chdir(ptr(rootfs)) < 0 {
                    fail(status_w, Stage::SwitchRoot);
                }
                let dot = c".";
                if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) == 0 {
                    // The old root is stacked under the new one: detach it.
                    if libc::umount2(dot.as_ptr(), libc::MNT_DETACH) < 0 {
                        fail(status_w, Stage::SwitchRoot);
                    }
                } else if nix::Error::last_raw() == libc::EINVAL {
                    // The initramfs root cannot be pivoted away from: move the new root over
                    // it and chroot instead, as runc's no-pivot mode does.
                    if libc::mount(
                        dot.as_ptr(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_MOVE,
                        std::ptr::null(),
                    ) < 0
                        || libc::chroot(dot.as_ptr()) < 0
                    {
                        fail(status_w, Stage::SwitchRoot);
                    }
                } else {
                    fail(status_w, Stage::SwitchRoot);
                }
                if libc::chdir(root.as_ptr()) < 0 {
                    fail(status_w, Stage::SwitchRoot);
                }
                mask_paths(masked, readonly, status_w);
            }
            RootSetup::JoinMountNs { ns } => {
                // Joining a mount namespace also moves root and cwd to that namespace's root.
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) < 0 {
                    fail(status_w, Stage::SetNs);
                }
            }
        }
        let s = &l.stdio;
        for (src, dst) in [(&s.stdin, 0), (&s.stdout, 1), (&s.stderr, 2)] {
            // init keeps 0-2 open (see init::ensure_std_fds), so a source is never 0-2 itself
            // and dup2 leaves the copies without CLOEXEC.
            if libc::dup2(src.as_raw_fd(), dst) < 0 {
                fail(status_w, Stage::Stdio);
            }
        }
        let ready = [READY];
        if libc::write(status_w, ready.as_ptr().cast(), 1) != 1 {
            libc::_exit(127);
        }
        // Held: Start writes one byte; Delete before Start closes the pipe instead.
        let mut go = [0u8; 1];
        loop {
            let n = libc::read(go_r, go.as_mut_ptr().cast(), 1);
            if n == 1 {
                break;
            }
            if n < 0 && nix::Error::last_raw() == libc::EINTR {
                continue;
            }
            libc::_exit(127);
        }
        if !matches!(l.pid_ns, PidNs::New) {
            become_process(l, status_w, false)
        }
        // PID 1 of the container's namespace: the real process is our child.
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        // A raw fork again: glibc's would take its malloc locks, which another thread of init
        // may have held at our own (raw) clone.
        let main = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        ) as libc::pid_t;
        if main < 0 {
            fail(status_w, Stage::Fork);
        }
        if main == 0 {
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            become_process(l, status_w, true)
        }
        // Every descriptor inherited from init goes (its listeners, connections, the status
        // pipe whose EOF is the exec's success, the stdio pipes whose EOF ends the output):
        // this process only reaps.
        if libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) < 0 {
            for fd in 0..4096 {
                libc::close(fd);
            }
        }
        container_init(main, &all)
    }
}

/// The container's own process: terminal, working directory, user and capabilities, then
/// exec. `new_session` for a child of the container's init (which keeps its own session).
///
/// # Safety
/// Child side of the fork: async-signal-safe syscalls on data built before it.
unsafe fn become_process(l: &Launch, status_w: RawFd, new_session: bool) -> ! {
    // SAFETY: as for `child_main`: raw syscalls on pointers into `l`; nothing allocates.
    unsafe {
        if new_session && libc::setsid() < 0 {
            fail(status_w, Stage::Setsid);
        }
        let s = &l.stdio;
        if s.controlling_tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
            fail(status_w, Stage::Tty);
        }
        if libc::chdir(ptr(&l.cwd)) < 0 {
            fail(status_w, Stage::Chdir);
        }
        if let Some(p) = &l.privileges {
            drop_bounding(p, status_w);
        }
        // Raw syscalls, not glibc's wrappers: those broadcast the change to every thread glibc
        // believes the process has, which after a raw clone are the parent's, and wait for
        // them forever. This process has one thread; the syscalls are per thread.
        let gids = &l.additional_gids;
        if libc::syscall(libc::SYS_setgroups, gids.len(), gids.as_ptr()) < 0 {
            fail(status_w, Stage::SetGroups);
        }
        if libc::syscall(libc::SYS_setgid, l.gid) < 0 {
            fail(status_w, Stage::SetGid);
        }
        if libc::syscall(libc::SYS_setuid, l.uid) < 0 {
            fail(status_w, Stage::SetUid);
        }
        if let Some(p) = &l.privileges {
            set_capabilities(p, status_w);
        }
        for prog in &l.seccomp {
            let fprog = libc::sock_fprog {
                len: prog.len() as libc::c_ushort,
                filter: prog.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &fprog) < 0 {
                fail(status_w, Stage::Seccomp);
            }
        }
        let argv = NullTerminated::new(&l.argv);
        let envp = NullTerminated::new(&l.envp);
        let mut err = libc::ENOENT;
        for exe in &l.exe_candidates {
            libc::execve(ptr(exe), argv.as_ptr(), envp.as_ptr());
            let e = nix::Error::last_raw();
            // As execvp: keep looking past "not here", remember a "found but refused".
            if e != libc::ENOENT && e != libc::ENOTDIR {
                err = e;
                if e != libc::EACCES {
                    break;
                }
            }
        }
        nix::Error::set_raw(err);
        fail(status_w, Stage::Exec)
    }
}

/// The container's PID 1: reaps every process reparented to it and exits with the real
/// process's status (128+n for signal n, the code guest-init reports for it anyway), passing
/// on the signals guest-init sends. A signal from inside the container is dropped, as the
/// kernel drops it for a runc container's PID 1 that installed no handler.
///
/// # Safety
/// Child side of the fork: sigwaitinfo, waitpid, kill and _exit only.
unsafe fn container_init(main: libc::pid_t, all: &libc::sigset_t) -> ! {
    // SAFETY: raw, async-signal-safe syscalls on stack buffers.
    unsafe {
        loop {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            let sig = libc::sigwaitinfo(all, &mut info);
            if sig < 0 {
                continue;
            }
            if sig == libc::SIGCHLD {
                loop {
                    let mut status = 0;
                    let pid = libc::waitpid(-1, &mut status, libc::WNOHANG);
                    if pid <= 0 {
                        break;
                    }
                    if pid == main {
                        let code = if libc::WIFEXITED(status) {
                            libc::WEXITSTATUS(status)
                        } else {
                            128 + libc::WTERMSIG(status)
                        };
                        libc::_exit(code);
                    }
                }
            } else if info.si_pid() == 0 {
                libc::kill(main, sig);
            }
        }
    }
}

/// Masks and read-only binds, inside the container's root (after the switch).
///
/// # Safety
/// Child side of the fork: raw syscalls only, on strings built before it.
unsafe fn mask_paths(masked: &[CString], readonly: &[CString], status_w: RawFd) {
    // SAFETY: (all blocks) raw syscalls on NUL-terminated strings that outlive the calls and
    // a stack `stat` buffer; async-signal-safe, no allocation.
    unsafe {
        for p in masked {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::lstat(ptr(p), &mut st) < 0 {
                if nix::Error::last_raw() == libc::ENOENT {
                    continue;
                }
                fail(status_w, Stage::Mask);
            }
            let r = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    ptr(p),
                    c"tmpfs".as_ptr(),
                    libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                )
            } else {
                libc::mount(
                    c"/dev/null".as_ptr(),
                    ptr(p),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                )
            };
            if r < 0 {
                fail(status_w, Stage::Mask);
            }
        }
        for p in readonly {
            if libc::mount(
                ptr(p),
                ptr(p),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null(),
            ) < 0
            {
                if nix::Error::last_raw() == libc::ENOENT {
                    continue;
                }
                fail(status_w, Stage::Mask);
            }
            if libc::mount(
                ptr(p),
                ptr(p),
                std::ptr::null(),
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC,
                std::ptr::null(),
            ) < 0
            {
                fail(status_w, Stage::Mask);
            }
        }
    }
}

/// Drops what is not in the bounding set (needs CAP_SETPCAP, so before setuid), keeping the
/// permitted set across a setuid to a non-root user.
///
/// # Safety
/// Child side of the fork: raw syscalls only.
unsafe fn drop_bounding(p: &Privileges, status_w: RawFd) {
    // SAFETY: prctl(2) with integer arguments; async-signal-safe.
    unsafe {
        if libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0 {
            fail(status_w, Stage::Capabilities);
        }
        for cap in 0..64u64 {
            if p.bounding & (1 << cap) != 0 {
                continue;
            }
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) < 0 {
                // Past the kernel's last capability.
                if nix::Error::last_raw() == libc::EINVAL {
                    break;
                }
                fail(status_w, Stage::Capabilities);
            }
        }
    }
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;

/// The effective, permitted and inheritable sets, the ambient set, and no_new_privs.
///
/// # Safety
/// Child side of the fork: raw syscalls only, on stack structs.
unsafe fn set_capabilities(p: &Privileges, status_w: RawFd) {
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let half = |m: u64, hi: bool| if hi { (m >> 32) as u32 } else { m as u32 };
    let data = [false, true].map(|hi| CapData {
        effective: half(p.effective, hi),
        permitted: half(p.permitted, hi),
        inheritable: half(p.inheritable, hi),
    });
    // SAFETY: capset(2) reads the two stack structs above; prctl(2) takes integers. No
    // libc wrapper allocates; all are async-signal-safe.
    unsafe {
        if libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) < 0 {
            fail(status_w, Stage::Capabilities);
        }
        let clear = libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong;
        if libc::prctl(libc::PR_CAP_AMBIENT, clear, 0, 0, 0) < 0 {
            fail(status_w, Stage::Capabilities);
        }
        for cap in 0..64u64 {
            if p.ambient & (1 << cap) != 0 {
                let raise = libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong;
                if libc::prctl(libc::PR_CAP_AMBIENT, raise, cap, 0, 0) < 0 {
                    fail(status_w, Stage::Capabilities);
                }
            }
        }
        if p.no_new_privs && libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            fail(status_w, Stage::Capabilities);
        }
    }
}

/// A NULL-terminated pointer array over CStrings, on the stack so that building it after
/// the fork does not allocate. Argument and environment counts above the cap are refused
/// before the fork (see `launch`).
pub const MAX_ARGS: usize = 4096;

struct NullTerminated {
    ptrs: [*const libc::c_char; MAX_ARGS + 1],
}

impl NullTerminated {
    fn new(items: &[CString]) -> NullTerminated {
        let mut ptrs = [std::ptr::null(); MAX_ARGS + 1];
        for (slot, s) in ptrs.iter_mut().zip(items.iter().take(MAX_ARGS)) {
            *slot = s.as_ptr();
        }
        NullTerminated { ptrs }
    }

    fn as_ptr(&self) -> *const *const libc::c_char {
        self.ptrs.as_ptr()
    }
}
