//! Processes: their launch description, the fork/exec that creates them, their stdio.

pub mod launch;
pub mod pty;
pub mod seccomp;
pub mod spawn;
pub mod stdio;
