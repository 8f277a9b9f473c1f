//! Tiny hand-assembled guests run on the host's /dev/kvm (PVM on the project
//! machines runs small code fine). Each asserts what reached the console and why
//! the VM stopped. Skipped, visibly, where /dev/kvm is missing or unusable.

use box_vmm::error::{ExitCode, VmExit};
use box_vmm::machine::{run_payload, Payload};

/// Returns false (after printing why) when this host cannot run KVM guests.
fn kvm_usable() -> bool {
    match kvm_ioctls::Kvm::new().and_then(|k| k.create_vm()) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP: /dev/kvm not usable here ({e}); payload test not run");
            false
        }
    }
}

/// A few x86-64 instructions, enough to talk to ports and MMIO.
#[derive(Default)]
struct Asm(Vec<u8>);

impl Asm {
    fn mov_dx(mut self, v: u16) -> Self {
        self.0.extend([0x66, 0xba]);
        self.0.extend(v.to_le_bytes());
        self
    }
    fn mov_al(mut self, v: u8) -> Self {
        self.0.extend([0xb0, v]);
        self
    }
    fn out_dx_al(mut self) -> Self {
        self.0.push(0xee);
        self
    }
    fn print(mut self, s: &[u8]) -> Self {
        self = self.mov_dx(0x3f8);
        for b in s {
            self = self.mov_al(*b).out_dx_al();
        }
        self
    }
    /// mov eax, [moffs64]
    fn load_eax(mut self, addr: u64) -> Self {
        self.0.push(0xa1);
        self.0.extend(addr.to_le_bytes());
        self
    }
    /// mov [moffs64], eax
    fn store_eax(mut self, addr: u64) -> Self {
        self.0.push(0xa3);
        self.0.extend(addr.to_le_bytes());
        self
    }
    fn mov_eax(mut self, v: u32) -> Self {
        self.0.push(0xb8);
        self.0.extend(v.to_le_bytes());
        self
    }
    /// Prints the four bytes of eax, low first, on COM1.
    fn print_eax(mut self) -> Self {
        self = self.mov_dx(0x3f8);
        for _ in 0..4 {
            self = self.out_dx_al();
            self.0.extend([0xc1, 0xe8, 0x08]); // shr eax, 8
        }
        self
    }
    fn hlt(mut self) -> Self {
        self.0.push(0xf4);
        self
    }
    fn poweroff(self) -> Self {
        // SLP_TYP=5, SLP_EN into the ACPI sleep control register.
        self.mov_dx(0x600).mov_al(0x34).out_dx_al().hlt()
    }
    fn i8042_reset(mut self) -> Self {
        self = self.mov_al(0xfe);
        self.0.extend([0xe6, 0x64]); // out 0x64, al
        self.hlt()
    }
}

fn run(code: Asm) -> (VmExit, String) {
    let out = run_payload(&Payload::new(code.0)).expect("payload VM runs");
    (out.exit, String::from_utf8_lossy(&out.console).into_owned())
}

#[test]
fn payload_prints_and_halts() {
    if !kvm_usable() {
        return;
    }
    let (exit, console) = run(Asm::default().print(b"hello from box\n").hlt());
    assert_eq!(console, "hello from box\n");
    assert_eq!(exit, VmExit::Halted);
}

#[test]
fn payload_acpi_poweroff_exits_zero() {
    if !kvm_usable() {
        return;
    }
    let (exit, console) = run(Asm::default().print(b"bye\n").poweroff());
    assert_eq!(console, "bye\n");
    assert_eq!(exit, VmExit::Poweroff);
    assert_eq!(ExitCode::from(&exit).code(), 0);
}

#[test]
fn payload_i8042_reset_gives_reset_code() {
    if !kvm_usable() {
        return;
    }
    let (exit, console) = run(Asm::default().print(b"rb\n").i8042_reset());
    assert_eq!(console, "rb\n");
    assert_eq!(exit, VmExit::Reset);
    assert_eq!(ExitCode::from(&exit), ExitCode::Reset);
}

#[test]
fn payload_triple_fault_is_reported() {
    if !kvm_usable() {
        return;
    }
    // ud2 with an empty IDT: #UD -> #DF -> triple fault.
    let (exit, _) = run(Asm(vec![0x0f, 0x0b]));
    assert!(
        matches!(exit, VmExit::TripleFault | VmExit::InternalError(_)),
        "{exit:?}"
    );
    assert_eq!(ExitCode::from(&exit), ExitCode::GuestCrash);
}

#[test]
fn payload_with_irqchip_powers_off() {
    if !kvm_usable() {
        return;
    }
    let mut p = Payload::new(Asm::default().print(b"irq\n").poweroff().0);
    p.irqchip = true;
    let out = run_payload(&p).expect("payload VM with irqchip runs");
    assert_eq!(out.console, b"irq\n");
    assert_eq!(out.exit, VmExit::Poweroff);
}

impl Asm {
    /// add al, imm8
    fn add_al(mut self, v: u8) -> Self {
        self.0.extend([0x04, v]);
        self
    }
    fn out_al(mut self) -> Self {
        self = self.mov_dx(0x3f8);
        self.0.push(0xee);
        self
    }
    fn store(self, addr: u64, v: u32) -> Self {
        self.mov_eax(v).store_eax(addr)
    }
}

const VIRTIO0: u64 = 0xd000_0000;

#[test]
fn payload_walks_virtio_mmio_handshake() {
    if !kvm_usable() {
        return;
    }
    let img = std::env::temp_dir().join(format!("box-vmm-payload-disk-{}", std::process::id()));
    std::fs::write(&img, vec![0u8; 8 * 512]).unwrap();
    let code = Asm::default()
        // MagicValue, printed as its four ASCII bytes: "virt".
        .load_eax(VIRTIO0)
        .print_eax()
        // Version (2) and DeviceID (2 = block) as digits.
        .load_eax(VIRTIO0 + 0x4)
        .add_al(b'0')
        .out_al()
        .load_eax(VIRTIO0 + 0x8)
        .add_al(b'0')
        .out_al()
        // ACKNOWLEDGE, DRIVER, accept VERSION_1, FEATURES_OK, read status back.
        .store(VIRTIO0 + 0x70, 1)
        .store(VIRTIO0 + 0x70, 3)
        .store(VIRTIO0 + 0x24, 1)
        .store(VIRTIO0 + 0x20, 1)
        .store(VIRTIO0 + 0x70, 0xb)
        .load_eax(VIRTIO0 + 0x70)
        .add_al(0x40)
        .out_al()
        // QueueNumMax of queue 0 (256 -> low byte 0 -> '0').
        .store(VIRTIO0 + 0x30, 0)
        .load_eax(VIRTIO0 + 0x34)
        .add_al(b'0')
        .out_al()
        // Capacity from config space, in sectors.
        .load_eax(VIRTIO0 + 0x100)
        .add_al(b'0')
        .out_al()
        // Off the register map: unbacked MMIO reads 0.
        .load_eax(VIRTIO0 + 0x2000_0000)
        .add_al(b'0')
        .out_al()
        .poweroff();
    let mut p = Payload::new(code.0);
    p.disks.push(box_vmm::config::DiskConfig {
        path: img.clone(),
        read_only: true,
    });
    let out = run_payload(&p).expect("payload with virtio-blk runs");
    std::fs::remove_file(&img).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.console), "virt22K080");
    assert_eq!(out.exit, VmExit::Poweroff);
}

/// Drives one virtio-blk read through a real split queue: the payload writes the
/// rings' addresses, notifies, spins on the used index, then prints the first data
/// byte and the status byte. With `irqchip` the notify goes through the ioeventfd
/// and the VMM's event loop; without, through an MMIO exit.
fn blk_read_through_queue(irqchip: bool) {
    if !kvm_usable() {
        return;
    }
    let img = std::env::temp_dir().join(format!(
        "box-vmm-payload-q-{}-{irqchip}",
        std::process::id()
    ));
    let mut disk = vec![b'P'; 4 * 512];
    disk[512..1024].fill(b'Q');
    std::fs::write(&img, &disk).unwrap();

    let base = Payload::LOAD_ADDR;
    let (desc, avail, used) = (base + 0x2000, base + 0x2100, base + 0x2200);
    let (hdr, data, status) = (base + 0x3000, base + 0x3200, base + 0x3400);
    let mut code = Asm::default()
        .store(VIRTIO0 + 0x70, 1)
        .store(VIRTIO0 + 0x70, 3)
        .store(VIRTIO0 + 0x24, 1)
        .store(VIRTIO0 + 0x20, 1)
        .store(VIRTIO0 + 0x70, 0xb)
        .store(VIRTIO0 + 0x30, 0)
        .store(VIRTIO0 + 0x38, 16)
        .store(VIRTIO0 + 0x80, desc as u32)
        .store(VIRTIO0 + 0x84, 0)
        .store(VIRTIO0 + 0x90, avail as u32)
        .store(VIRTIO0 + 0x94, 0)
        .store(VIRTIO0 + 0xa0, used as u32)
        .store(VIRTIO0 + 0xa4, 0)
        .store(VIRTIO0 + 0x44, 1)
        .store(VIRTIO0 + 0x70, 0xf)
        .store(VIRTIO0 + 0x50, 0);
    // spin: mov eax,[used]; shr eax,16; test eax,eax; jz spin
    code = code.load_eax(used);
    code.0.extend([0xc1, 0xe8, 0x10, 0x85, 0xc0, 0x74, 0xf0]);
    code = code
        .load_eax(data)
        .out_al()
        .load_eax(status)
        .add_al(b'0')
        .out_al()
        .poweroff();
    let mut blob = code.0;
    assert!(blob.len() < 0x2000);
    blob.resize(0x4000, 0);
    let put = |blob: &mut Vec<u8>, at: u64, bytes: &[u8]| {
        let o = (at - base) as usize;
        blob[o..o + bytes.len()].copy_from_slice(bytes);
    };
    let mut d = Vec::new();
    for (addr, len, flags, next) in [
        (hdr, 16u32, 1u16, 1u16),
        (data, 512, 3, 2),
        (status, 1, 2, 0),
    ] {
        d.extend(addr.to_le_bytes());
        d.extend(len.to_le_bytes());
        d.extend(flags.to_le_bytes());
        d.extend(next.to_le_bytes());
    }
    put(&mut blob, desc, &d);
    put(&mut blob, avail, &[0, 0, 1, 0, 0, 0]);
    let mut h = Vec::new();
    h.extend(0u32.to_le_bytes()); // VIRTIO_BLK_T_IN
    h.extend(0u32.to_le_bytes());
    h.extend(1u64.to_le_bytes()); // sector 1
    put(&mut blob, hdr, &h);
    put(&mut blob, status, &[0xee]);

    let mut p = Payload::new(blob);
    p.irqchip = irqchip;
    p.disks.push(box_vmm::config::DiskConfig {
        path: img.clone(),
        read_only: false,
    });
    let out = run_payload(&p).expect("payload with a live queue runs");
    std::fs::remove_file(&img).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.console), "Q0");
    assert_eq!(out.exit, VmExit::Poweroff);
}

#[test]
fn payload_blk_read_via_ioeventfd_and_event_loop() {
    blk_read_through_queue(true);
}

#[test]
fn payload_blk_read_via_mmio_exit() {
    blk_read_through_queue(false);
}

#[test]
fn payload_runs_under_the_seccomp_filter() {
    if !kvm_usable() {
        return;
    }
    let img = std::env::temp_dir().join(format!("box-vmm-payload-sc-{}", std::process::id()));
    std::fs::write(&img, vec![0u8; 4 * 512]).unwrap();
    let mut p = Payload::new(
        Asm::default()
            .load_eax(VIRTIO0)
            .print_eax()
            .print(b"\n")
            .poweroff()
            .0,
    );
    p.irqchip = true;
    p.seccomp = true;
    p.disks.push(box_vmm::config::DiskConfig {
        path: img.clone(),
        read_only: false,
    });
    // The filter binds the thread that runs the machine: keep it off the test thread.
    let out = std::thread::spawn(move || run_payload(&p).expect("payload runs under seccomp"))
        .join()
        .unwrap();
    std::fs::remove_file(&img).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.console), "virt\n");
    assert_eq!(out.exit, VmExit::Poweroff);
}

#[test]
fn payload_stop_kicks_waiting_vcpus() {
    if !kvm_usable() {
        return;
    }
    // vCPU 1 sits in KVM_RUN waiting for a SIPI; vCPU 0 powers off. The run
    // must return promptly, which needs the other thread kicked out of KVM_RUN.
    let mut p = Payload::new(Asm::default().print(b"smp\n").poweroff().0);
    p.irqchip = true;
    p.cpus = 2;
    let t = std::time::Instant::now();
    let out = run_payload(&p).expect("two-vCPU payload runs");
    assert_eq!(out.console, b"smp\n");
    assert_eq!(out.exit, VmExit::Poweroff);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(4),
        "{:?}",
        t.elapsed()
    );
}
