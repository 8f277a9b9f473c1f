//! The host<->guest API of Box: what guest-init serves and what the host library speaks.
//!
//! Four listeners, bound by guest-init right after its first mounts:
//! - control: ttrpc with containerd's Task service and Box's [`agent`] service;
//! - stdio: one connection per stdin/stdout/stderr of a process ([`stream`]);
//! - pty: one connection per terminal process, both directions;
//! - events: one long-lived connection carrying length-prefixed event envelopes ([`events`]).
//!
//! Inside a VM they are vsock ports; in host-process mode, unix sockets in one directory.

pub mod agent;
pub mod events;
pub mod net;
pub mod stream;

/// A listener of guest-init, identified the same way on both transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    Control,
    Stdio,
    Pty,
    Events,
}

impl Port {
    pub const ALL: [Port; 4] = [Port::Control, Port::Stdio, Port::Pty, Port::Events];

    /// The vsock port inside the guest.
    pub fn vsock_port(self) -> u32 {
        match self {
            Port::Control => 1024,
            Port::Stdio => 1025,
            Port::Pty => 1026,
            Port::Events => 1027,
        }
    }

    /// The socket's file name in host-process mode.
    pub fn socket_name(self) -> &'static str {
        match self {
            Port::Control => "control.sock",
            Port::Stdio => "stdio.sock",
            Port::Pty => "pty.sock",
            Port::Events => "events.sock",
        }
    }
}

/// The exit status containerd expects: the code for a normal exit, 128+n for signal n.
pub fn exit_status_code(code: Option<i32>, signal: Option<i32>) -> u32 {
    match (code, signal) {
        (_, Some(sig)) => 128 + sig as u32,
        (Some(code), None) => code as u32 & 0xff,
        (None, None) => 255,
    }
}

/// The OCI process spec's type URL in `ExecProcessRequest.spec`, as containerd sends it.
pub const PROCESS_SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

/// The OCI runtime spec's type URL in `CreateTaskRequest.options`.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// Test knob, host-process mode only: an inherited socket fd on which guest-init reports
/// `listening\n` once every listener is bound and, when [`HOLD_ENV`] is set, then blocks until
/// one byte arrives, standing in for a slow boot phase.
pub const NOTIFY_FD_ENV: &str = "BOX_INIT_NOTIFY_FD";
/// See [`NOTIFY_FD_ENV`].
pub const HOLD_ENV: &str = "BOX_INIT_HOLD";
