//! `box-init`: PID 1 of a Box microVM (or of a host PID namespace in the test tier).

use std::io::Write;
use std::process::ExitCode;

use box_guest_init::init::{self, config::Config, config::Mode};

/// Reports on stderr (the console). Never panics: `eprintln!` does when the write fails,
/// which inside the panic hook of PID 1 would turn a message into an abort.
fn report(msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "box-init: {msg}");
}

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
        // Its fallback report uses eprintln!, which panics when the console write fails.
        .log_internal_errors(false)
        .init();
    let config = match Config::parse(std::env::args(), |k| std::env::var(k).ok()) {
        Ok(c) => c,
        Err(e) => {
            report(format_args!("{e}"));
            return ExitCode::from(2);
        }
    };
    let in_vm = config.mode == Mode::Vm;
    if in_vm {
        // PID 1 exiting or panicking panics the kernel; power off cleanly instead so the VMM
        // reports an ordinary exit and the console keeps the reason.
        std::panic::set_hook(Box::new(|info| {
            report(format_args!("fatal: {info}"));
            power_off();
        }));
    }
    match init::run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            report(format_args!("{e}"));
            if in_vm {
                power_off();
            }
            ExitCode::FAILURE
        }
    }
}
