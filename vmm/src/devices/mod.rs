//! Emulated devices and the buses that route vCPU I/O and MMIO exits to them.

pub mod legacy;
pub mod mmio;
pub mod serial;
pub mod virtio;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::error::VmExit;

/// A device on the port-I/O or MMIO bus. `offset` is relative to the device's base.
/// Accesses come straight from the guest: any offset and any size up to 8 bytes.
pub trait BusDevice: Send {
    /// Fills `data`; unknown registers read as zero unless the device says otherwise.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Handles a write. Returning an exit stops the VM with that reason.
    fn write(&mut self, offset: u64, data: &[u8]) -> Option<VmExit>;
}

/// Shared handle to a device.
pub type DeviceHandle = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct Range {
    len: u64,
    dev: DeviceHandle,
}

/// Address-range map to devices. Ranges never overlap.
#[derive(Clone, Default)]
pub struct Bus {
    ranges: BTreeMap<u64, Range>,
}

/// Inserting a range that overlaps an existing one.
#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps an existing device or is empty")]
pub struct BusOverlap {
    base: u64,
    len: u64,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `[base, base+len)` to `dev`.
    pub fn insert(&mut self, dev: DeviceHandle, base: u64, len: u64) -> Result<(), BusOverlap> {
        let end = base.checked_add(len).filter(|_| len > 0);
        let overlap = match end {
            None => true,
            Some(end) => {
                self.ranges.range(..end).next_back().is_some_and(|(b, r)| {
                    // Any range that starts below `end` and reaches past `base`.
                    b + r.len > base
                })
            }
        };
        if overlap {
            return Err(BusOverlap { base, len });
        }
        self.ranges.insert(base, Range { len, dev });
        Ok(())
    }

    fn find(&self, addr: u64, size: usize) -> Option<(u64, &DeviceHandle)> {
        let (base, r) = self.ranges.range(..=addr).next_back()?;
        let off = addr - base;
        // The whole access must fall inside the device window.
        (off.checked_add(size as u64)? <= r.len).then_some((off, &r.dev))
    }

    /// Dispatches a read; returns false (and leaves `data` all-ones, like an
    /// unclaimed ISA/PCI read) when no device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((off, dev)) => {
                lock(dev).read(off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; unclaimed writes are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> Option<VmExit> {
        let (off, dev) = self.find(addr, data.len())?;
        let r = lock(dev).write(off, data);
        r
    }
}

/// Locks a device, recovering from a poisoned lock: a panic in one access must
/// not take the whole VM down with it on the next one.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Listens on the unix socket `path`. The socket file is left behind when the VM stops (the
/// seccomp filter has no `unlink`); the next VM on the same path replaces it.
pub(crate) fn bind_unix(
    path: &std::path::Path,
) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::net::UnixListener;
    match UnixListener::bind(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            // A stale socket from an earlier run of this VM: replace it.
            std::fs::remove_file(path)?;
            UnixListener::bind(path)
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.wrapping_add(offset as u8));
        }
        fn write(&mut self, _offset: u64, data: &[u8]) -> Option<VmExit> {
            self.0 = data[0];
            (data[0] == 0xee).then_some(VmExit::Reset)
        }
    }

    #[test]
    fn routes_and_rejects_overlaps() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Reg(1))), 0x10, 8).unwrap();
        bus.insert(Arc::new(Mutex::new(Reg(0x40))), 0x20, 8)
            .unwrap();
        assert!(bus.insert(Arc::new(Mutex::new(Reg(0))), 0x14, 2).is_err());
        assert!(bus.insert(Arc::new(Mutex::new(Reg(0))), 0x0c, 8).is_err());
        assert!(bus.insert(Arc::new(Mutex::new(Reg(0))), 0x18, 0).is_err());
        assert!(bus
            .insert(Arc::new(Mutex::new(Reg(0))), u64::MAX - 1, 8)
            .is_err());
        bus.insert(Arc::new(Mutex::new(Reg(0))), 0x18, 8).unwrap();

        let mut b = [0u8; 1];
        assert!(bus.read(0x12, &mut b));
        assert_eq!(b[0], 3);
        assert!(bus.read(0x21, &mut b));
        assert_eq!(b[0], 0x41);
        // Unclaimed, and straddling the end of a window.
        assert!(!bus.read(0x30, &mut b));
        assert_eq!(b[0], 0xff);
        let mut w = [0u8; 4];
        assert!(!bus.read(0x26, &mut w));
        assert_eq!(bus.write(0x10, &[0xee]), Some(VmExit::Reset));
        assert_eq!(bus.write(0x99, &[0xee]), None);
    }
}
