//! Guest CPUID and boot MSRs.

use kvm_bindings::{kvm_msr_entry, CpuId, Msrs};

/// CPUID.1:ECX bit 24: TSC-deadline timer.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// CPUID.1:ECX bit 31 tells the guest it runs under a hypervisor, which makes
/// Linux look for KVM's paravirt leaves (kvmclock etc.).
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;

/// Adjusts KVM's supported CPUID for vCPU `id` of `cpus`: per-vCPU APIC ids in
/// every leaf that reports one, the hypervisor bit, logical processor count.
pub fn patch_cpuid(cpuid: &mut CpuId, id: u8, cpus: u8) {
    for e in cpuid.as_mut_slice() {
        match e.function {
            0x1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(cpus) << 16);
                e.ecx |= ECX_HYPERVISOR;
                // KVM emulates the TSC-deadline LAPIC timer (KVM_CAP_TSC_DEADLINE_TIMER) but
                // leaves the bit out of the supported set for the VMM to set, as qemu and
                // Firecracker do. Without it Linux falls back to calibrating the LAPIC timer.
                e.ecx |= ECX_TSC_DEADLINE;
                if cpus > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            // Extended topology: describe our own shape (one thread per core,
            // `cpus` cores in one package) instead of the host's, which would
            // contradict the MADT.
            0xb | 0x1f => {
                let core_shift = u32::BITS - (u32::from(cpus.max(1)) - 1).leading_zeros();
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (1 << 8) | e.index;
                    }
                    1 => {
                        e.eax = core_shift;
                        e.ebx = u32::from(cpus);
                        e.ecx = (2 << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
                e.edx = u32::from(id);
            }
            // AMD: cores per package minus one in ECX[7:0] (keep the APIC id size field).
            0x8000_0008 => e.ecx = (e.ecx & !0xff) | u32::from(cpus.saturating_sub(1)),
            // AMD extended APIC id; one thread per core, core id = vCPU id.
            0x8000_001e => {
                e.eax = u32::from(id);
                e.ebx = (e.ebx & !0xffff) | u32::from(id);
            }
            _ => {}
        }
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back: without it the guest maps all
/// RAM uncached and boots very slowly.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// The MSR values a vCPU needs at reset for a direct kernel boot.
pub fn boot_msrs() -> Msrs {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .iter()
    .map(|&(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    // The list is fixed and far below KVM_MAX_MSR_ENTRIES.
    Msrs::from_entries(&entries).expect("boot MSR list fits")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_id_and_hypervisor_bit() {
        let mut c = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ebx: 0xaabb_ccdd,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ebx: 64,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0x8000_0008,
                ecx: 0x70ff,
                ..Default::default()
            },
        ])
        .unwrap();
        patch_cpuid(&mut c, 3, 4);
        let e = c.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0xccdd);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].edx, 3);
        assert_eq!(e[1].ebx, 1);
        assert_eq!(e[1].ecx, 1 << 8);
        // Core level: 4 cores need a 2-bit shift.
        assert_eq!(
            (e[2].eax, e[2].ebx, e[2].ecx, e[2].edx),
            (2, 4, (2 << 8) | 1, 3)
        );
        assert_eq!(e[3].ecx, 0x7003);
    }

    #[test]
    fn boot_msrs_enable_mtrr() {
        let m = boot_msrs();
        let e = m
            .as_slice()
            .iter()
            .find(|e| e.index == MSR_MTRR_DEF_TYPE)
            .unwrap();
        assert_eq!(e.data, MTRR_ENABLE_WB);
    }
}
