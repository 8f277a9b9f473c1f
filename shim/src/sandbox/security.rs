//! What a container may do inside its guest, as docker's defaults have it: its capability
//! set, `no_new_privs`, and the `/proc` and `/sys` paths it may not see or write. The host
//! puts them in the OCI spec; guest-init applies them (as runc does for containerd).

/// docker's default capabilities (moby `oci/caps/defaults.go`): no CAP_SYS_ADMIN (mount),
/// CAP_SYS_MODULE (modules), CAP_SYS_PTRACE, CAP_NET_ADMIN, CAP_SYS_TIME, ...
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// runc's and docker's default masked paths.
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// docker's default read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The spec's `process.capabilities`: the default set in every set but ambient.
pub fn capabilities() -> serde_json::Value {
    let set = DEFAULT_CAPABILITIES.to_vec();
    serde_json::json!({
        "bounding": set,
        "effective": set,
        "permitted": set,
        "inheritable": set,
    })
}

/// Syscalls docker's default seccomp profile refuses (moby `profiles/seccomp`): kernel
/// modules, mounts, namespaces, keyrings, clocks, tracing other processes, kexec, swap, ...
/// Box writes them as a denylist answered with EPERM, as docker answers them; docker's
/// profile is an allowlist of ~350 calls, whose remaining refusals (obsolete and exotic
/// calls) this does not repeat.
pub const BLOCKED_SYSCALLS: [&str; 49] = [
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

/// `CLONE_NEWUSER`: docker refuses clone() with it (a user namespace needs no capability).
const CLONE_NEWUSER: u64 = 0x1000_0000;

/// The spec's `linux.seccomp`: docker's refusals with EPERM; clone(CLONE_NEWUSER) refused;
/// clone3 answered ENOSYS, as docker does, so that libc falls back to clone (whose flags
/// a filter can see).
pub fn seccomp() -> serde_json::Value {
    serde_json::json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [
            {"names": BLOCKED_SYSCALLS.to_vec(), "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM},
            {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EPERM,
             "args": [{"index": 0, "value": CLONE_NEWUSER, "valueTwo": CLONE_NEWUSER,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOSYS},
        ],
    })
}
