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
