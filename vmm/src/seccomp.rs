//! The syscall filter for VMM threads (vCPUs and the device event loop).
//!
//! Installed after every file, socket listener, eventfd and thread exists, so
//! the allow list is what serving a running guest needs and no more: no
//! `open`, `execve`, `fork` or `ptrace`. A denied call kills the process
//! (SIGSYS), which the supervisor sees as a crash rather than a silent escape.

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

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
    // KVM_RUN and the vCPU register dumps on crash, and FIONBIO-style socket setup.
    libc::SYS_ioctl,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    // vsock: accepting host connections and dialing `<uds>_<port>`.
    libc::SYS_accept4,
    libc::SYS_socket,
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

/// Compiles the VMM thread filter.
pub fn vmm_filter() -> Result<BpfProgram> {
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        ALLOWED.iter().map(|&nr| (nr, Vec::new())).collect();
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

    #[test]
    fn filter_allows_needed_and_kills_forbidden_calls() {
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
