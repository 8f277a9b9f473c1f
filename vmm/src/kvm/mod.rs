//! KVM state: the VM, its memory and vCPUs.

pub mod caps;
pub mod memory;
pub mod vcpu;
pub mod vm;
