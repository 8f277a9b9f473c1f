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

#[allow(dead_code)]
fn unused(a: Asm) -> Asm {
    a.load_eax(0).store_eax(0).mov_eax(0).print_eax()
}
