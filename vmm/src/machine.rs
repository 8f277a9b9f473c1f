//! Assembling and running a VM: the builder for kernel boots and test payloads.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use linux_loader::cmdline::Cmdline;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

use crate::arch::x86_64::layout::*;
use crate::arch::x86_64::{acpi, boot};
use crate::config::{Console, VmConfig};
use crate::control::ControlHandler;
use crate::devices::legacy::{AcpiPm, BootTimer, I8042};
use crate::devices::mmio::MmioDeviceManager;
use crate::devices::serial::{ConsoleOut, ConsoleWriter, SerialDevice};
use crate::devices::virtio::block::Block;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::vsock::device::Vsock;
use crate::devices::Bus;
use crate::error::{ConfigError, Error, Result, VmExit};
use crate::event_loop::{EventHandler, EventLoop};
use crate::kvm::caps;
use crate::kvm::memory::GuestRam;
use crate::kvm::vcpu::{install_kick_handler, kick_signal, Vcpu};
use crate::kvm::vm::Vm;

/// A fully built VM, ready to run.
pub struct Machine {
    vm: Vm,
    io_bus: Bus,
    mmio_bus: Bus,
    vcpus: Vec<Vcpu>,
    handlers: Vec<Box<dyn EventHandler>>,
    seccomp: bool,
    /// Last: dropped after every holder of a clone of its memory.
    ram: GuestRam,
}

/// A tiny guest program for tests: raw x86-64 machine code started in long mode.
#[derive(Debug, Clone)]
pub struct Payload {
    /// Code bytes, loaded at [`Payload::LOAD_ADDR`].
    pub code: Vec<u8>,
    /// Create the in-kernel irqchip and PIT (then `hlt` never exits to us).
    pub irqchip: bool,
    /// Guest memory in MiB.
    pub mem_mib: u64,
    /// vCPUs; all start at the payload entry (with the irqchip, only vCPU 0
    /// runs: the others wait for an INIT/SIPI that never comes).
    pub cpus: u8,
    /// Raw disks to attach as virtio-blk devices (their MMIO windows start at
    /// [`VIRTIO_MMIO_BASE`]).
    pub disks: Vec<crate::config::DiskConfig>,
    /// Run the VMM threads under the seccomp filter, as the binary does. The
    /// filter then also binds the calling thread: run it on a thread of its own.
    pub seccomp: bool,
}

impl Payload {
    /// Where payload code is placed (and where vCPU 0 starts).
    pub const LOAD_ADDR: u64 = 0x10_0000;

    /// A payload with no irqchip and 32 MiB of memory.
    pub fn new(code: Vec<u8>) -> Self {
        Payload {
            code,
            irqchip: false,
            mem_mib: 32,
            cpus: 1,
            disks: Vec::new(),
            seccomp: false,
        }
    }
}

/// What a payload run produced.
#[derive(Debug)]
pub struct PayloadOutcome {
    /// Why it stopped.
    pub exit: VmExit,
    /// Everything written to COM1.
    pub console: Vec<u8>,
}

struct Common {
    vm: Vm,
    io_bus: Bus,
    mmio_bus: Bus,
    ram: GuestRam,
}

fn build_common(
    mem_bytes: u64,
    irqchip: bool,
    console: ConsoleWriter,
    boot_timer: Option<Instant>,
) -> Result<Common> {
    let kvm = caps::open_kvm(irqchip)?;
    let vm = Vm::new(kvm, irqchip)?;
    let ram = GuestRam::new(mem_bytes)?;
    for r in ram.layout() {
        tracing::debug!(
            "guest RAM {:#x}+{:#x} at host {:#x}: {}",
            r.guest,
            r.len,
            r.host,
            if r.huge_page_capable() {
                "2 MiB pages possible"
            } else {
                "4 KiB pages only"
            }
        );
    }
    vm.register_memory(ram.memory())?;

    let serial_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
    if irqchip {
        vm.register_irqfd(&serial_evt, SERIAL_IRQ)?;
    }
    let mut io_bus = Bus::new();
    let overlap = |e: crate::devices::BusOverlap| Error::Io {
        what: e.to_string(),
        source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
    };
    io_bus
        .insert(
            Arc::new(Mutex::new(SerialDevice::new(serial_evt, console))),
            u64::from(SERIAL_PORT),
            8,
        )
        .map_err(overlap)?;
    io_bus
        .insert(
            Arc::new(Mutex::new(I8042::default())),
            u64::from(I8042_DATA_PORT),
            5,
        )
        .map_err(overlap)?;
    io_bus
        .insert(
            Arc::new(Mutex::new(AcpiPm)),
            u64::from(ACPI_SLEEP_CTL_PORT),
            3,
        )
        .map_err(overlap)?;
    io_bus
        .insert(
            Arc::new(Mutex::new(BootTimer::new(
                boot_timer.unwrap_or_else(Instant::now),
                boot_timer.is_some(),
            ))),
            u64::from(BOOT_TIMER_PORT),
            1,
        )
        .map_err(overlap)?;
    Ok(Common {
        vm,
        io_bus,
        mmio_bus: Bus::new(),
        ram,
    })
}

fn console_writer(c: &Console, boot_timer: Option<Instant>) -> Result<ConsoleWriter> {
    let out = match c {
        Console::Stdout => ConsoleOut::Stdout(std::io::stdout()),
        Console::File(p) => ConsoleOut::File(
            std::fs::File::create(p)
                .map_err(Error::io(format!("create console file {}", p.display())))?,
        ),
    };
    Ok(ConsoleWriter::new(out, boot_timer))
}

impl Machine {
    /// Builds a VM that boots the configured kernel. `start` is the process
    /// start, used by the boot timer.
    pub fn from_config(cfg: &VmConfig, start: Instant) -> Result<Self> {
        // BOX_VMM_FORCE_PVM=1 tries anyway: a diagnostic for watching how far a
        // kernel gets on PVM, never for real use.
        if caps::is_pvm_host() && std::env::var_os("BOX_VMM_FORCE_PVM").is_none() {
            return Err(Error::PvmHost);
        }
        let boot_timer = cfg.boot_timer.then_some(start);
        // The VMM's own start, phase by phase (with --boot-timer).
        let phase = |what: &str| {
            if cfg.boot_timer {
                report_phase(start, what);
            }
        };
        let mem_bytes = cfg.mem_mib << 20;
        let c = build_common(
            mem_bytes,
            true,
            console_writer(&cfg.console, boot_timer)?,
            boot_timer,
        )?;
        phase("VM and guest RAM ready");

        let kernel = boot::load_kernel(c.ram.memory(), &cfg.kernel)?;
        phase("kernel loaded");
        let mut cmdline =
            Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| ConfigError::Cmdline(e.to_string()))?;
        cmdline
            .insert_str(&cfg.cmdline)
            .map_err(|e| ConfigError::Cmdline(format!("{e}: {:?}", cfg.cmdline)))?;

        let io_bus = c.io_bus;
        let mut mmio_bus = c.mmio_bus;
        let mut mgr = MmioDeviceManager::default();
        for (i, d) in cfg.disks.iter().enumerate() {
            let blk = Block::open(&d.path, d.read_only, &format!("box-disk-{i}"))
                .map_err(|_| ConfigError::MissingDisk(d.path.clone()))?;
            mgr.add(&c.vm, c.ram.memory(), &mut mmio_bus, Box::new(blk))?;
        }
        let first_slot = mgr.transports.len();
        for i in 0..cfg.disk_slots {
            let slot = Block::empty_slot(&format!("box-slot-{i}"));
            mgr.add(&c.vm, c.ram.memory(), &mut mmio_bus, Box::new(slot))?;
        }
        if let Some(path) = &cfg.api_sock {
            let slots = mgr.transports[first_slot..].to_vec();
            let h = ControlHandler::bind(path, slots).map_err(Error::io(format!(
                "control socket: cannot listen on {}",
                path.display()
            )))?;
            mgr.handlers.push(Box::new(h));
        }
        if let Some(v) = &cfg.vsock {
            let dev = Vsock::new(v.guest_cid, &v.uds_path).map_err(Error::io(format!(
                "vsock: cannot listen on {}",
                v.uds_path.display()
            )))?;
            mgr.add(&c.vm, c.ram.memory(), &mut mmio_bus, Box::new(dev))?;
        }
        if let Some(n) = &cfg.net {
            let fd = crate::devices::virtio::net::tap::open_source(&n.source)?;
            let dev = Net::new(fd, n.mac, true).map_err(Error::io("virtio-net"))?;
            mgr.add(&c.vm, c.ram.memory(), &mut mmio_bus, Box::new(dev))?;
        }
        mgr.append_cmdline(&mut cmdline)?;
        phase("devices ready");
        let initrd = match &cfg.initrd {
            Some(p) => Some(boot::load_initrd(
                c.ram.memory(),
                p,
                mem_bytes,
                kernel.end,
                boot::initrd_addr_max(&kernel),
            )?),
            None => None,
        };
        phase("initrd loaded");
        let rsdp = acpi::write_acpi_tables(c.ram.memory(), cfg.cpus, &mgr.infos)?;
        boot::write_boot_params(
            c.ram.memory(),
            mem_bytes,
            &kernel,
            &cmdline,
            initrd,
            Some(rsdp),
        )?;

        let mut vcpus = Vec::new();
        for id in 0..cfg.cpus {
            let v = Vcpu::new(&c.vm, id)?;
            v.configure(&c.vm, c.ram.memory(), kernel.entry, cfg.cpus)?;
            vcpus.push(v);
        }
        Ok(Machine {
            vm: c.vm,
            ram: c.ram,
            io_bus,
            mmio_bus,
            vcpus,
            handlers: mgr.handlers,
            seccomp: cfg.seccomp,
        })
    }

    /// Builds a VM that runs `p.code` in long mode, console into `console`.
    pub fn from_payload(p: &Payload, console: Arc<Mutex<Vec<u8>>>) -> Result<Self> {
        let c = build_common(
            p.mem_mib << 20,
            p.irqchip,
            ConsoleWriter::new(ConsoleOut::Buffer(console), None),
            None,
        )?;
        c.ram
            .memory()
            .write_slice(&p.code, GuestAddress(Payload::LOAD_ADDR))
            .map_err(Error::Memory)?;
        let mut mmio_bus = c.mmio_bus;
        let mut mgr = MmioDeviceManager::default();
        for d in &p.disks {
            let blk = Block::open(&d.path, d.read_only, "payload-disk")
                .map_err(|_| ConfigError::MissingDisk(d.path.clone()))?;
            mgr.add(&c.vm, c.ram.memory(), &mut mmio_bus, Box::new(blk))?;
        }
        let mut vcpus = Vec::new();
        for id in 0..p.cpus.max(1) {
            let v = Vcpu::new(&c.vm, id)?;
            v.configure(&c.vm, c.ram.memory(), Payload::LOAD_ADDR, p.cpus.max(1))?;
            vcpus.push(v);
        }
        Ok(Machine {
            vm: c.vm,
            ram: c.ram,
            io_bus: c.io_bus,
            mmio_bus,
            vcpus,
            handlers: mgr.handlers,
            seccomp: p.seccomp,
        })
    }

    /// Guest memory (tests inspect it).
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.ram.memory()
    }

    /// Runs the VM until the guest stops it. vCPUs run on their own threads and
    /// the device event loop on this one.
    pub fn run(self) -> Result<VmExit> {
        install_kick_handler()?;
        let Machine {
            vm,
            io_bus,
            mmio_bus,
            vcpus,
            handlers,
            seccomp,
            ram,
        } = self;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::io("eventfd"))?;
        let (tx, rx) = mpsc::channel::<Option<VmExit>>();
        let filter = if seccomp {
            Some(crate::seccomp::vmm_filter()?)
        } else {
            None
        };

        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        for mut vcpu in vcpus {
            let (io, mmio, stop, tx) = (io_bus.clone(), mmio_bus.clone(), stop.clone(), tx.clone());
            let evt = stopped_evt
                .try_clone()
                .map_err(Error::io("eventfd clone"))?;
            let filter = filter.clone();
            let t = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id))
                .spawn(move || {
                    if let Some(f) = filter {
                        if let Err(e) = seccompiler::apply_filter(&f) {
                            let _ = tx.send(Some(VmExit::InternalError(format!("seccomp: {e}"))));
                            let _ = evt.write(1);
                            return;
                        }
                    }
                    // A panic in device emulation must still stop the VM with a reason
                    // instead of leaving the event loop waiting (release builds abort).
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        vcpu.run(&io, &mmio, &stop)
                    }))
                    .unwrap_or_else(|_| Some(VmExit::InternalError("vCPU thread panicked".into())));
                    let _ = tx.send(r);
                    let _ = evt.write(1);
                })
                .map_err(Error::io("spawn vCPU thread"))?;
            threads.push(t);
        }
        drop(tx);

        let mut ev_loop = EventLoop::new()?;
        for h in handlers {
            ev_loop.add_handler(h);
        }
        if let Some(f) = &filter {
            seccompiler::apply_filter(f).map_err(|e| Error::Seccomp(e.to_string()))?;
        }
        let loop_result = ev_loop.run_until(&stopped_evt);

        // The first vCPU to report decides the exit; the others are told to stop.
        // If the event loop itself failed, no vCPU may ever report: don't wait.
        let exit = match &loop_result {
            Ok(()) => rx.recv().ok().flatten(),
            Err(_) => None,
        };
        stop.store(true, Ordering::Release);
        let mut stuck = false;
        for t in threads {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !t.is_finished() && Instant::now() < deadline {
                let _ = t.kill(kick_signal());
                std::thread::sleep(Duration::from_millis(2));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                stuck = true;
            }
        }
        if stuck {
            // A vCPU still inside KVM_RUN may touch guest memory: never unmap it
            // under its feet. The process is about to exit anyway.
            std::mem::forget(ram);
            std::mem::forget(vm);
        } else {
            // Every holder of guest memory (devices in the buses and the event loop's
            // handlers) goes before the mappings do.
            drop(ev_loop);
            drop((io_bus, mmio_bus));
            drop(ram);
        }
        loop_result?;
        exit.ok_or(Error::VcpuThread)
    }
}

/// Boots a payload and returns how it stopped and what it printed. The entry point
/// tests use: no binary, no config file.
pub fn run_payload(p: &Payload) -> Result<PayloadOutcome> {
    let console = Arc::new(Mutex::new(Vec::new()));
    let m = Machine::from_payload(p, console.clone())?;
    let exit = m.run()?;
    let console = crate::devices::lock(&console).clone();
    Ok(PayloadOutcome { exit, console })
}

/// Builds from config and runs. Used by the binary.
pub fn run_config(cfg: &VmConfig, start: Instant) -> Result<VmExit> {
    let machine = Machine::from_config(cfg, start)?;
    if cfg.boot_timer {
        // The VMM's own start, as Firecracker reports it ("VMM up in N CPU ms"): wall and
        // CPU time from process start to the vCPUs' first KVM_RUN.
        report_phase(start, "VMM up");
    }
    machine.run()
}

/// One phase of the VMM's start on stderr: `box-vmm: boot-timer: WHAT at N ms (M CPU ms)`.
fn report_phase(start: Instant, what: &str) {
    eprintln!(
        "box-vmm: boot-timer: {what} at {} ms ({} CPU ms)",
        start.elapsed().as_millis(),
        cpu_ms()
    );
}

/// User plus system CPU time of this process so far, in ms.
fn cpu_ms() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one struct rusage to the pointer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } != 0 {
        return 0;
    }
    // SAFETY: getrusage succeeded, so the struct is initialised.
    let ru = unsafe { ru.assume_init() };
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}
