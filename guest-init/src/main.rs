//! `box-init`: PID 1 of a Box microVM (or of a host PID namespace in the test tier).

use std::process::ExitCode;

use box_guest_init::init::{self, config::Config, config::Mode};

fn power_off() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BOX_INIT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // The serial console is a tty, yet the host keeps its tail as an error reason:
        // plain text only.
        .with_ansi(false)
        .init();
    let config = match Config::parse(std::env::args(), |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("box-init: {e}");
            return ExitCode::from(2);
        }
    };
    let in_vm = config.mode == Mode::Vm;
    if in_vm {
        // PID 1 exiting or panicking panics the kernel; power off cleanly instead so the VMM
        // reports an ordinary exit and the console keeps the reason.
        std::panic::set_hook(Box::new(|info| {
            eprintln!("box-init: fatal: {info}");
            power_off();
        }));
    }
    match init::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("box-init: {e}");
            if in_vm {
                power_off();
            }
            ExitCode::FAILURE
        }
    }
}
