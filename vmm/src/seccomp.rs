//! The syscall filter for VMM threads (vCPUs and the device event loop).
//!
//! Installed after every file, socket listener, eventfd and thread exists, so
//! the allow list is what serving a running guest needs and no more: no
//! `open`, `execve`, `fork` or `ptrace`. A denied call kills the process
//! (SIGSYS), which the supervisor sees as a crash rather than a silent escape.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::error::{Error, Result};

const ALLOWED: &[i64] = &[
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_lseek,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_close,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fcntl,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    // vsock: accepting host connections and dialing `<uds>_<port>`.
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    // Memory management inside Rust's allocator.
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_brk,
    // Threads, signals and time.
    libc::SYS_futex,
    libc::SYS_sched_yield,
    libc::SYS_rt_sigreturn,
    libc::SYS_rt_sigprocmask,
    libc::SYS_sigaltstack,
    libc::SYS_tgkill,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_getrandom,
    libc::SYS_rseq,
    libc::SYS_set_robust_list,
    libc::SYS_sched_getaffinity,
    libc::SYS_exit,
    libc::SYS_exit_group,
];

/// `_IO(KVMIO, 0x80)`.
pub const KVM_RUN: u64 = 0xae80;
/// `_IOR(KVMIO, 0x81, struct kvm_regs)`: crash dumps.
pub const KVM_GET_REGS: u64 = 0x8090_ae81;
/// `_IOR(KVMIO, 0x83, struct kvm_sregs)`: crash dumps.
pub const KVM_GET_SREGS: u64 = 0x8138_ae83;
/// Making a vsock host socket non-blocking.
pub const FIONBIO: u64 = 0x5421;
/// `_IOW('T', 208, unsigned int)`: virtio-net tells its TAP the guest's offloads when the
/// driver activates (or resets) the device.
pub const TUNSETOFFLOAD: u64 = 0x4004_54d0;

fn arg_eq(arg: u8, len: SeccompCmpArgLen, value: u64) -> Result<SeccompRule> {
    let cond = SeccompCondition::new(arg, len, SeccompCmpOp::Eq, value)
        .map_err(|e| Error::Seccomp(e.to_string()))?;
    SeccompRule::new(vec![cond]).map_err(|e| Error::Seccomp(e.to_string()))
}

/// Compiles the VMM thread filter.
pub fn vmm_filter() -> Result<BpfProgram> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
    // Only the ioctls a running VM issues; creating VMs, vCPUs or memory slots
    // after start is not among them.
    rules.insert(
        libc::SYS_ioctl,
        [KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, FIONBIO, TUNSETOFFLOAD]
            .iter()
            .map(|&r| arg_eq(1, SeccompCmpArgLen::Dword, r))
            .collect::<Result<_>>()?,
    );
    // Unix sockets only (vsock guest-initiated connections).
    rules.insert(
        libc::SYS_socket,
        vec![arg_eq(0, SeccompCmpArgLen::Dword, libc::AF_UNIX as u64)?],
    );
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::KillProcess,
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .map_err(|e| Error::Seccomp(e.to_string()))?;
    BpfProgram::try_from(filter).map_err(|e| Error::Seccomp(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compiles() {
        let p = vmm_filter().unwrap();
        assert!(p.len() > ALLOWED.len());
    }

    /// Forks a child that installs the filter and runs `f`; returns its wait status.
    fn in_filtered_child(f: fn()) -> libc::c_int {
        let prog = vmm_filter().unwrap();
        // SAFETY: the child only installs the filter (prctl/seccomp syscalls on a
        // program built before the fork), runs `f` (raw syscalls) and `_exit`s; it
        // touches no lock another thread of the test process might hold.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = if seccompiler::apply_filter(&prog).is_ok() {
                f();
                0
            } else {
                2
            };
            // SAFETY: terminating the forked child without running the parent's
            // atexit handlers or destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: `pid` is our child; `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        status
    }

    #[test]
    fn forbidden_syscalls_kill_the_process() {
        let status = in_filtered_child(|| {
            // SAFETY: a raw openat with a valid NUL-terminated path; only its
            // being denied matters.
            unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/".as_ptr(), 0) };
        });
        assert!(libc::WIFSIGNALED(status), "status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        // A socket that is not AF_UNIX, and an ioctl not on the list, are denied too.
        let status = in_filtered_child(|| {
            // SAFETY: plain syscall with integer arguments.
            unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        });
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        let status = in_filtered_child(|| {
            // SAFETY: TCGETS on fd 0 with a null pointer: the filter stops it first.
            unsafe { libc::ioctl(0, libc::TCGETS, std::ptr::null_mut::<u8>()) };
        });
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
        // Allowed calls run and the child exits normally.
        let status = in_filtered_child(|| {
            // SAFETY: plain syscalls with integer arguments.
            unsafe {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                libc::close(fd);
            }
        });
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "status {status:#x}"
        );
    }

    #[test]
    fn ioctl_numbers_match_the_kernel_encoding() {
        // _IOC(dir, type, nr, size) = dir << 30 | size << 16 | type << 8 | nr.
        let ior = |nr: u64, size: usize| (2u64 << 30) | ((size as u64) << 16) | (0xae << 8) | nr;
        assert_eq!(
            KVM_GET_REGS,
            ior(0x81, std::mem::size_of::<kvm_bindings::kvm_regs>())
        );
        assert_eq!(
            KVM_GET_SREGS,
            ior(0x83, std::mem::size_of::<kvm_bindings::kvm_sregs>())
        );
        assert_eq!(FIONBIO, libc::FIONBIO);
    }

    #[test]
    fn filter_allows_what_a_running_vm_needs() {
        // Run in a child thread: seccomp filters apply per thread.
        let prog = vmm_filter().unwrap();
        let r = std::thread::spawn(move || {
            seccompiler::apply_filter(&prog).unwrap();
            // Allowed: write to a pipe-free fd via eventfd.
            let e = vmm_sys_util::eventfd::EventFd::new(0).unwrap();
            e.write(1).unwrap();
            e.read().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(r, 1);
    }
}
