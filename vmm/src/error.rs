//! Typed errors and the process exit contract.
//!
//! The exit code is the only thing a supervisor (the shim) reliably sees when a
//! VMM process ends, so every way a VM can stop maps to exactly one code here.

use std::path::PathBuf;

/// Why the VM stopped, as seen by the host. Converts into the process exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered itself off through the ACPI sleep control register.
    Poweroff,
    /// The guest asked for a reset (i8042 pulse, ACPI reset register or KVM system event).
    Reset,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault,
    /// KVM could not run or emulate guest code; the reason is carried for the log.
    InternalError(String),
    /// A vCPU halted with no in-kernel irqchip to wake it: only payload tests see this.
    Halted,
}

/// Process exit codes of `box-vmm`. Stable: the shim matches on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// Guest powered off cleanly.
    Poweroff = 0,
    /// Guest requested a reset (`reboot`). A microVM is never rebooted in place.
    Reset = 10,
    /// Guest triple fault or KVM internal/emulation error; registers go to stderr.
    GuestCrash = 11,
    /// The configuration is invalid (bad flag value, missing file, bad JSON).
    Config = 12,
    /// The host cannot run the VM (no /dev/kvm, PVM KVM, missing capability, I/O error).
    Host = 13,
}

impl ExitCode {
    /// Numeric process exit status.
    pub fn code(self) -> i32 {
        self as i32
    }
}

impl From<&VmExit> for ExitCode {
    fn from(e: &VmExit) -> Self {
        match e {
            VmExit::Poweroff => ExitCode::Poweroff,
            VmExit::Reset => ExitCode::Reset,
            VmExit::TripleFault | VmExit::InternalError(_) => ExitCode::GuestCrash,
            // A halted payload with nothing to wake it can never make progress:
            // treat it like a crash so a supervisor does not wait forever.
            VmExit::Halted => ExitCode::GuestCrash,
        }
    }
}

/// Errors in the user's configuration. Each message names the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("kernel image {0:?} does not exist or is not readable")]
    MissingKernel(PathBuf),
    #[error("initrd {0:?} does not exist or is not readable")]
    MissingInitrd(PathBuf),
    #[error("disk image {0:?} does not exist or is not readable")]
    MissingDisk(PathBuf),
    #[error("invalid --disk value {0:?}: expected PATH or PATH,ro")]
    BadDiskSpec(String),
    #[error("invalid --net value {0:?}: expected tap=NAME or fd=N, then optionally ,mac=02:xx:xx:xx:xx:xx (a unicast MAC)")]
    BadNetSpec(String),
    #[error("invalid --cpus value {0}: must be between 1 and {max}", max = crate::config::MAX_VCPUS)]
    BadCpus(u8),
    #[error("invalid --mem value {0} MiB: must be between {min} and {max}", min = crate::config::MIN_MEM_MIB, max = crate::config::MAX_MEM_MIB)]
    BadMem(u64),
    #[error("invalid --vsock-cid value {0}: guest CIDs start at 3")]
    BadCid(u64),
    #[error("--vsock-cid given without --vsock-uds")]
    CidWithoutUds,
    #[error("--disk-slots given without --api-sock: nothing could ever fill them")]
    SlotsWithoutApi,
    #[error("--kernel is required (on the command line or in the config file)")]
    NoKernel,
    #[error("too many devices: {0} virtio devices, at most {max}", max = crate::arch::x86_64::layout::MAX_VIRTIO_DEVICES)]
    TooManyDevices(usize),
    #[error("kernel command line is invalid or too long: {0}")]
    Cmdline(String),
    #[error("cannot read config file {path:?}")]
    ConfigFileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path:?} is not valid JSON for box-vmm")]
    ConfigFileParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("kernel image {path:?} is neither an ELF vmlinux nor a bzImage")]
    BadKernel {
        path: PathBuf,
        #[source]
        source: linux_loader::loader::Error,
    },
    #[error("{0} {1:?} must lie inside the jail root (--jail)")]
    OutsideJail(&'static str, PathBuf),
    #[error("--jail-uid and --jail-gid must name an unprivileged user and group (not 0)")]
    JailAsRoot,
    #[error("--jail needs --jail-uid and --jail-gid")]
    JailWithoutIds,
    #[error("initrd {path:?} ({size} bytes) does not fit in guest memory below {limit:#x}")]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
}

/// Everything that can stop the VMM before or while it runs, other than a guest exit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("this host's /dev/kvm is PVM (/sys/module/kvm_pvm exists): it cannot boot a standard Linux kernel. Run box-vmm inside the nested node instead: `cargo xtask node -- <command>`")]
    PvmHost,
    #[error("cannot open /dev/kvm (does it exist, and may this user read and write it?)")]
    KvmOpen(#[source] kvm_ioctls::Error),
    #[error("KVM lacks a capability box-vmm needs: {0}")]
    KvmCap(&'static str),
    #[error("KVM ioctl {what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest memory setup failed")]
    Memory(#[source] vm_memory::GuestMemoryError),
    #[error("virtio-net")]
    Tap(#[from] crate::devices::virtio::net::tap::TapError),
    #[error("guest memory region creation failed: {0}")]
    MemoryRegion(String),
    #[error("loading the kernel into guest memory failed")]
    KernelLoad(#[source] linux_loader::loader::Error),
    #[error("writing boot parameters failed")]
    BootParams(#[source] linux_loader::configurator::Error),
    #[error("host I/O error: {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("seccomp filter could not be installed: {0}")]
    Seccomp(String),
    #[error("a vCPU thread died unexpectedly")]
    VcpuThread,
}

impl Error {
    /// The process exit code this error maps to.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Error::Config(_) => ExitCode::Config,
            _ => ExitCode::Host,
        }
    }

    pub(crate) fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
        move |source| Error::Kvm { what, source }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// Result alias for VMM operations.
pub type Result<T> = std::result::Result<T, Error>;
