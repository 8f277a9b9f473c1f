//! box-vmm: the rust-vmm microVM monitor, one process per microVM.
//!
//! Built in the VMM issue; see `../shared/docs/architecture.md` ("VMM").
