//! Places virtio devices: one MMIO window and one GSI each, wired to KVM
//! (irqfd, per-queue ioeventfd), the MMIO bus, the event loop, ACPI and the
//! kernel command line.

use std::sync::{Arc, Mutex};

use linux_loader::cmdline::Cmdline;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::virtio::mmio_transport::{reg, MmioTransport, VirtioHandler};
use super::virtio::VirtioDevice;
use super::Bus;
use crate::arch::x86_64::acpi::MmioDeviceInfo;
use crate::arch::x86_64::layout::{
    virtio_irq, virtio_mmio_addr, MAX_VIRTIO_DEVICES, VIRTIO_MMIO_SIZE,
};
use crate::error::{ConfigError, Error, Result};
use crate::event_loop::EventHandler;
use crate::kvm::vm::Vm;

/// Devices placed so far.
#[derive(Default)]
pub struct MmioDeviceManager {
    /// ACPI descriptions, in placement order.
    pub infos: Vec<MmioDeviceInfo>,
    /// Event-loop handlers, one per device.
    pub handlers: Vec<Box<dyn EventHandler>>,
    /// Transports, for inspection in tests.
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl MmioDeviceManager {
    /// Places `device` in the next free window.
    pub fn add(
        &mut self,
        vm: &Vm,
        mem: &GuestMemoryMmap,
        bus: &mut Bus,
        device: Box<dyn VirtioDevice>,
    ) -> Result<MmioDeviceInfo> {
        let idx = self.infos.len();
        if idx >= MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(idx + 1).into());
        }
        let info = MmioDeviceInfo {
            addr: virtio_mmio_addr(idx),
            len: VIRTIO_MMIO_SIZE,
            irq: virtio_irq(idx),
        };
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
        if vm.irqchip {
            vm.register_irqfd(&irq, info.irq)?;
        }
        let t =
            MmioTransport::new(device, mem.clone(), irq).map_err(Error::io("virtio transport"))?;
        if vm.irqchip {
            for (q, evt) in t.queue_evts().iter().enumerate() {
                vm.register_ioevent(evt, info.addr + reg::QUEUE_NOTIFY, q as u32)?;
            }
        }
        let t = Arc::new(Mutex::new(t));
        bus.insert(t.clone(), info.addr, info.len)
            .map_err(|e| Error::Io {
                what: e.to_string(),
                source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
            })?;
        self.handlers.push(Box::new(VirtioHandler::new(t.clone())));
        self.transports.push(t);
        self.infos.push(info);
        Ok(info)
    }

    /// Appends `virtio_mmio.device=` for every device (kernels built with
    /// VIRTIO_MMIO_CMDLINE_DEVICES; others use the ACPI description).
    pub fn append_cmdline(&self, cmdline: &mut Cmdline) -> Result<()> {
        for i in &self.infos {
            cmdline
                .add_virtio_mmio_device(i.len, GuestAddress(i.addr), i.irq, None)
                .map_err(|e| ConfigError::Cmdline(e.to_string()))?;
        }
        Ok(())
    }
}
