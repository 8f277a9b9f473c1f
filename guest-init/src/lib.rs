//! Box guest-init: PID 1 of every Box microVM, and the host<->guest API it serves.
//!
//! [`api`] is shared with the host library; [`init`] is the PID-1 side.

pub mod api;
pub mod init;
