//! x86_64: guest physical layout, boot-time register state, CPUID/MSRs, ACPI and the
//! Linux 64-bit boot protocol.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod regs;
