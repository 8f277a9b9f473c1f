//! COM1: vm-superio's 8250 wired to the console output and to GSI 4 through an irqfd.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::BusDevice;
use crate::error::VmExit;

/// Raises the serial interrupt by signalling the irqfd registered for GSI 4.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// Console sink: stdout, a file, or an in-memory buffer (tests read it back).
pub enum ConsoleOut {
    /// Process stdout.
    Stdout(std::io::Stdout),
    /// A file.
    File(std::fs::File),
    /// Shared buffer.
    Buffer(Arc<Mutex<Vec<u8>>>),
}

/// Writer handed to the UART: forwards to the sink and notes the first byte for
/// the boot timer.
pub struct ConsoleWriter {
    out: ConsoleOut,
    first: AtomicBool,
    boot_timer: Option<Instant>,
}

impl ConsoleWriter {
    /// `boot_timer` holds the process start when the first console byte should be reported.
    pub fn new(out: ConsoleOut, boot_timer: Option<Instant>) -> Self {
        ConsoleWriter {
            out,
            first: AtomicBool::new(true),
            boot_timer,
        }
    }
}

impl Write for ConsoleWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(start) = self.boot_timer {
            if self.first.swap(false, Ordering::Relaxed) {
                eprintln!(
                    "box-vmm: boot-timer: first console byte at {} ms",
                    start.elapsed().as_millis()
                );
            }
        }
        match &mut self.out {
            ConsoleOut::Stdout(s) => s.write(buf),
            ConsoleOut::File(f) => f.write(buf),
            ConsoleOut::Buffer(b) => {
                super::lock(b).extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.out {
            ConsoleOut::Stdout(s) => s.flush(),
            ConsoleOut::File(f) => f.flush(),
            ConsoleOut::Buffer(_) => Ok(()),
        }
    }
}

/// The 8250 UART on the port bus (8 registers).
pub struct SerialDevice {
    uart: Serial<IrqTrigger, vm_superio::serial::NoEvents, ConsoleWriter>,
}

impl SerialDevice {
    /// A UART writing to `out` and interrupting through `irq`.
    pub fn new(irq: EventFd, out: ConsoleWriter) -> Self {
        SerialDevice {
            uart: Serial::new(IrqTrigger(irq), out),
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() == 1 && offset < 8 {
            data[0] = self.uart.read(offset as u8);
        } else {
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmExit> {
        if data.len() == 1 && offset < 8 {
            if let Err(e) = self.uart.write(offset as u8, data[0]) {
                // A full pipe or a closed console must not stop the guest.
                tracing::warn!("serial write failed: {e}");
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transmits_to_buffer_and_interrupts() {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut s = SerialDevice::new(
            evt.try_clone().unwrap(),
            ConsoleWriter::new(ConsoleOut::Buffer(buf.clone()), None),
        );
        // Enable the THR-empty interrupt (IER bit 1).
        s.write(1, &[0x02]);
        for b in b"hi\n" {
            s.write(0, &[*b]);
        }
        assert_eq!(&*buf.lock().unwrap(), b"hi\n");
        assert!(evt.read().unwrap() >= 1);
        // Wrong sizes and offsets off the register map are ignored.
        s.write(0, b"xy");
        s.write(9, b"z");
        let mut w = [7u8; 2];
        s.read(0, &mut w);
        assert_eq!(w, [0, 0]);
        assert_eq!(&*buf.lock().unwrap(), b"hi\n");
    }
}
