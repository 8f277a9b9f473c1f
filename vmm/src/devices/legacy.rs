//! Small legacy-port devices: i8042 (reset), the ACPI power/reset registers, and the
//! boot timer port.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use vm_superio::{I8042Device, Trigger};

use super::BusDevice;
use crate::arch::x86_64::acpi::{S5_SLP_TYP, SLP_EN};
use crate::arch::x86_64::layout::ACPI_RESET_VALUE;
use crate::error::VmExit;

/// A trigger that only records that it fired; the bus turns it into a VM exit.
#[derive(Clone, Default)]
pub struct Latch(Arc<AtomicBool>);

impl Latch {
    /// Returns and clears the fired state.
    pub fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

impl Trigger for Latch {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.store(true, Ordering::Release);
        Ok(())
    }
}

/// i8042 controller at ports 0x60..=0x64 (offset 0 data, offset 4 command).
/// Only the CPU reset pulse (command 0xfe) matters: it ends the VM with [`VmExit::Reset`].
pub struct I8042 {
    dev: I8042Device<Latch>,
    reset: Latch,
}

impl Default for I8042 {
    fn default() -> Self {
        let reset = Latch::default();
        I8042 {
            dev: I8042Device::new(reset.clone()),
            reset,
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && (offset == 0 || offset == 4) {
            data[0] = self.dev.read(offset as u8);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmExit> {
        if data.len() == 1 && (offset == 0 || offset == 4) {
            // Infallible trigger: the error type is uninhabited.
            let _ = self.dev.write(offset as u8, data[0]);
        }
        self.reset.take().then_some(VmExit::Reset)
    }
}

/// The ACPI hardware-reduced sleep control (offset 0), sleep status (offset 1) and
/// reset (offset 2) registers. See [`crate::arch::x86_64::acpi`].
#[derive(Default)]
pub struct AcpiPm;

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never "woken", nothing pending.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmExit> {
        let v = *data.first()?;
        match offset {
            0 if v & SLP_EN != 0 && (v >> 2) & 0x7 == S5_SLP_TYP => Some(VmExit::Poweroff),
            2 if v == ACPI_RESET_VALUE => Some(VmExit::Reset),
            _ => None,
        }
    }
}

/// Boot milestone port: the guest writes a byte when it gets somewhere worth timing.
pub struct BootTimer {
    start: Instant,
    enabled: bool,
}

impl BootTimer {
    /// `start` is the VMM process start; `enabled` gates the stderr report.
    pub fn new(start: Instant, enabled: bool) -> Self {
        BootTimer { start, enabled }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) -> Option<VmExit> {
        if self.enabled {
            eprintln!(
                "box-vmm: boot-timer: guest milestone {:#x} at {} ms",
                data.first().copied().unwrap_or(0),
                self.start.elapsed().as_millis()
            );
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn i8042_reset_pulse_exits() {
        let mut k = I8042::default();
        assert_eq!(k.write(4, &[0x20]), None);
        let mut b = [0u8];
        k.read(0, &mut b);
        assert_eq!(k.write(4, &[0xfe]), Some(VmExit::Reset));
        // Odd sizes and offsets are ignored.
        assert_eq!(k.write(4, &[0xfe, 0]), None);
        assert_eq!(k.write(2, &[0xfe]), None);
        let mut w = [1u8; 4];
        k.read(0, &mut w);
        assert_eq!(w, [0; 4]);
    }

    #[test]
    fn acpi_sleep_and_reset() {
        let mut pm = AcpiPm;
        assert_eq!(
            pm.write(0, &[(S5_SLP_TYP << 2) | SLP_EN]),
            Some(VmExit::Poweroff)
        );
        assert_eq!(pm.write(0, &[0x34]), Some(VmExit::Poweroff));
        // SLP_TYP without SLP_EN, and another sleep type: ignored.
        assert_eq!(pm.write(0, &[S5_SLP_TYP << 2]), None);
        assert_eq!(pm.write(0, &[(3 << 2) | SLP_EN]), None);
        assert_eq!(pm.write(2, &[ACPI_RESET_VALUE]), Some(VmExit::Reset));
        assert_eq!(pm.write(2, &[]), None);
        assert_eq!(pm.write(1, &[0xff]), None);
    }
}
