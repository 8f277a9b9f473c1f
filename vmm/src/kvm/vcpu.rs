//! vCPUs: boot-time configuration and the exit-handling loop, one thread each.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;

use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::vm::Vm;
use crate::arch::x86_64::{cpuid, regs};
use crate::devices::Bus;
use crate::error::{Error, Result, VmExit};

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;

/// The signal used to kick a vCPU thread out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

extern "C" fn noop_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Installs the (empty) kick handler once per process: its only job is to make
/// `KVM_RUN` return `EINTR` so the loop sees the stop flag.
pub fn install_kick_handler() -> Result<()> {
    static ONCE: Once = Once::new();
    let mut res = Ok(());
    ONCE.call_once(|| {
        res = register_signal_handler(kick_signal(), noop_handler).map_err(|e| Error::Io {
            what: "installing the vCPU kick signal handler".into(),
            source: std::io::Error::from_raw_os_error(e.errno()),
        });
    });
    res
}

/// One vCPU.
pub struct Vcpu {
    /// KVM vCPU fd.
    pub fd: VcpuFd,
    /// Index, also the APIC id.
    pub id: u8,
}

impl Vcpu {
    /// Creates vCPU `id`.
    pub fn new(vm: &Vm, id: u8) -> Result<Self> {
        let fd = vm
            .fd
            .create_vcpu(u64::from(id))
            .map_err(Error::kvm("KVM_CREATE_VCPU"))?;
        Ok(Vcpu { fd, id })
    }

    /// CPUID, MSRs, registers for a start at `entry` in long mode, and LAPIC LINTs.
    pub fn configure(&self, vm: &Vm, mem: &GuestMemoryMmap, entry: u64, cpus: u8) -> Result<()> {
        let mut cpuid = vm
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))?;
        cpuid::patch_cpuid(&mut cpuid, self.id, cpus);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(Error::kvm("KVM_SET_CPUID2"))?;

        let msrs = cpuid::boot_msrs();
        let n = self
            .fd
            .set_msrs(&msrs)
            .map_err(Error::kvm("KVM_SET_MSRS"))?;
        if n != msrs.as_slice().len() {
            // KVM stops at the first MSR it rejects; the rest keep reset values.
            tracing::warn!(
                "KVM accepted only {n} of {} boot MSRs (first rejected: {:#x})",
                msrs.as_slice().len(),
                msrs.as_slice()[n].index
            );
        }
        regs::setup_vcpu_regs(&self.fd, mem, entry)?;
        if vm.irqchip {
            regs::setup_lapic_lints(&self.fd)?;
        }
        Ok(())
    }

    /// Runs until the guest stops the VM (returns its exit) or `stop` is set and
    /// the thread is kicked (returns `None`).
    pub fn run(&mut self, io: &Bus, mmio: &Bus, stop: &AtomicBool) -> Option<VmExit> {
        loop {
            if stop.load(Ordering::Acquire) {
                return None;
            }
            let exit = match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => io.write(u64::from(port), data),
                Ok(VcpuExit::IoIn(port, data)) => {
                    io.read(u64::from(port), data);
                    None
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => mmio.write(addr, data),
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    if !mmio.read(addr, data) {
                        // Unbacked MMIO reads as zero, like Firecracker and QEMU microvm.
                        data.fill(0);
                    }
                    None
                }
                Ok(VcpuExit::Hlt) => Some(VmExit::Halted),
                Ok(VcpuExit::Shutdown) => {
                    self.report_crash("triple fault (KVM_EXIT_SHUTDOWN)");
                    Some(VmExit::TripleFault)
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                    KVM_SYSTEM_EVENT_SHUTDOWN => Some(VmExit::Poweroff),
                    KVM_SYSTEM_EVENT_RESET => Some(VmExit::Reset),
                    other => {
                        let why = format!("KVM system event {other}");
                        self.report_crash(&why);
                        Some(VmExit::InternalError(why))
                    }
                },
                Ok(VcpuExit::InternalError) => {
                    let why = format!("KVM internal error, suberror {}", self.internal_suberror());
                    self.report_crash(&why);
                    Some(VmExit::InternalError(why))
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    let why = format!("KVM entry failed: hardware reason {reason:#x} on cpu {cpu}");
                    self.report_crash(&why);
                    Some(VmExit::InternalError(why))
                }
                Ok(VcpuExit::Intr) | Ok(VcpuExit::IrqWindowOpen) => None,
                Ok(other) => {
                    let why = format!("unexpected KVM exit {other:?}");
                    self.report_crash(&why);
                    Some(VmExit::InternalError(why))
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
                Err(e) => {
                    let why = format!("KVM_RUN failed: {e}");
                    self.report_crash(&why);
                    Some(VmExit::InternalError(why))
                }
            };
            if exit.is_some() {
                return exit;
            }
        }
    }

    fn internal_suberror(&mut self) -> u32 {
        let run = self.fd.get_kvm_run();
        // SAFETY: KVM filled the `internal` member of the exit union because the
        // exit reason is KVM_EXIT_INTERNAL_ERROR; reading a u32 from it is plain data.
        unsafe { run.__bindgen_anon_1.internal.suberror }
    }

    fn report_crash(&self, why: &str) {
        eprintln!(
            "box-vmm: vCPU {}: {why}\n{}",
            self.id,
            regs::dump_registers(&self.fd)
        );
    }
}
