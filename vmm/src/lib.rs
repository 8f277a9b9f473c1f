//! box-vmm: the rust-vmm microVM monitor, one process per microVM.
//!
//! [`machine::Machine`] assembles a VM from a [`config::VmConfig`] (or from a
//! raw test payload) and runs it until the guest stops it; the result is a
//! [`error::VmExit`] that maps onto the process exit contract in [`error::ExitCode`].

pub mod arch;
pub mod config;
pub mod control;
pub mod devices;
pub mod error;
pub mod event_loop;
pub mod jail;
pub mod kvm;
pub mod machine;
pub mod seccomp;
