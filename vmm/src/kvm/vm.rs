//! The KVM VM: memory slots, in-kernel irqchip and PIT, irqfd/ioeventfd plumbing.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{IoEventAddress, Kvm, VmFd};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::KVM_TSS_ADDR;
use crate::error::{Error, Result};

/// A KVM VM with guest memory registered.
pub struct Vm {
    /// The system fd (for CPUID queries).
    pub kvm: Kvm,
    /// The VM fd.
    pub fd: VmFd,
    /// Whether the in-kernel irqchip (PIC, IOAPIC, LAPICs) and PIT exist.
    pub irqchip: bool,
}

impl Vm {
    /// Creates the VM. Without `irqchip`, HLT exits to userspace and no
    /// interrupts can be injected: only the tiny-payload tests use that.
    pub fn new(kvm: Kvm, irqchip: bool) -> Result<Self> {
        let fd = kvm.create_vm().map_err(Error::kvm("KVM_CREATE_VM"))?;
        fd.set_tss_address(KVM_TSS_ADDR)
            .map_err(Error::kvm("KVM_SET_TSS_ADDR"))?;
        if irqchip {
            fd.create_irq_chip()
                .map_err(Error::kvm("KVM_CREATE_IRQCHIP"))?;
            let pit = kvm_pit_config {
                // The PC speaker port is of no use to a microVM; let KVM swallow it.
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit).map_err(Error::kvm("KVM_CREATE_PIT2"))?;
        }
        Ok(Vm { kvm, fd, irqchip })
    }

    /// Registers every guest RAM region as a memory slot.
    pub fn register_memory(&self, mem: &GuestMemoryMmap) -> Result<()> {
        for (slot, region) in mem.iter().enumerate() {
            let host = mem
                .get_host_address(region.start_addr())
                .map_err(Error::Memory)?;
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
                flags: 0,
            };
            // SAFETY: `host` maps `region.len()` bytes owned by `mem`, which the
            // caller keeps alive for as long as the VM runs (the Machine owns both,
            // and the VM fd is dropped with it).
            unsafe { self.fd.set_user_memory_region(r) }
                .map_err(Error::kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }
        Ok(())
    }

    /// Makes a write to `evt` raise `gsi`.
    pub fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<()> {
        self.fd
            .register_irqfd(evt, gsi)
            .map_err(Error::kvm("KVM_IRQFD"))
    }

    /// Makes guest writes of `value` to MMIO `addr` signal `evt` inside KVM,
    /// without a userspace exit.
    pub fn register_ioevent(&self, evt: &EventFd, addr: u64, value: u32) -> Result<()> {
        self.fd
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), value)
            .map_err(Error::kvm("KVM_IOEVENTFD"))
    }
}
