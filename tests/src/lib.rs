//! Cross-crate tests. The host-process tier lives in `tests/host_process.rs`, on the harness
//! in [`host_init`]: guest-init as PID 1 of a fresh PID + mount namespace on this host,
//! listening on unix sockets, driven only through the host library's client.

pub mod cli;
pub mod host_init;
pub mod pty;
