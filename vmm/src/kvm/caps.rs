//! Host checks before anything is created, so failures name the missing piece.

use std::path::Path;

use kvm_ioctls::{Cap, Kvm};

use crate::error::{Error, Result};

/// True when this host's KVM is PVM, which runs only PVM-built guest kernels.
pub fn is_pvm_host() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Capabilities a full Linux boot needs.
const REQUIRED: &[(Cap, &str)] = &[
    (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
    (Cap::Ioeventfd, "KVM_CAP_IOEVENTFD"),
    (Cap::Irqfd, "KVM_CAP_IRQFD"),
    (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
    (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
    (Cap::Pit2, "KVM_CAP_PIT2"),
    (Cap::PitState2, "KVM_CAP_PIT_STATE2"),
    (Cap::ExtCpuid, "KVM_CAP_EXT_CPUID"),
];

/// Opens /dev/kvm and checks the API version and capabilities.
pub fn open_kvm(needs_irqchip: bool) -> Result<Kvm> {
    let kvm = Kvm::new().map_err(Error::KvmOpen)?;
    if kvm.get_api_version() != 12 {
        return Err(Error::KvmCap("KVM API version 12"));
    }
    for (cap, name) in REQUIRED {
        let optional = !needs_irqchip
            && matches!(
                cap,
                Cap::Irqchip | Cap::Irqfd | Cap::Pit2 | Cap::PitState2 | Cap::Ioeventfd
            );
        if !optional && !kvm.check_extension(*cap) {
            return Err(Error::KvmCap(name));
        }
    }
    Ok(kvm)
}
