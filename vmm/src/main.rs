//! `box-vmm` binary: parse flags, build the VM, run it, map the outcome to the
//! exit contract (see `box-vmm --help`).

use std::process::ExitCode as ProcessExit;
use std::time::Instant;

use box_vmm::config::{Cli, VmConfig};
use box_vmm::error::{Error, ExitCode};
use clap::Parser;

fn main() -> ProcessExit {
    let start = Instant::now();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BOX_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();

    let cli = Cli::parse();
    let code = match run(&cli, start) {
        Ok(exit) => {
            let code = ExitCode::from(&exit);
            if code != ExitCode::Poweroff {
                eprintln!("box-vmm: guest stopped: {exit:?}");
            }
            code
        }
        Err(e) => {
            eprintln!("box-vmm: {}", error_chain(&e));
            e.exit_code()
        }
    };
    ProcessExit::from(code.code() as u8)
}

fn run(cli: &Cli, start: Instant) -> Result<box_vmm::error::VmExit, Error> {
    let mut cfg = VmConfig::from_cli(cli)?;
    // A TAP named on the command line is opened before a jail takes /dev/net/tun and
    // CAP_NET_ADMIN away; from then on it is an inherited fd like any other.
    if let Some(n) = cfg.net.as_mut() {
        if let box_vmm::config::TapSource::Tap(_) = n.source {
            let fd = box_vmm::devices::virtio::net::tap::open_source(&n.source)?;
            n.source = box_vmm::config::TapSource::Fd(std::os::fd::IntoRawFd::into_raw_fd(fd));
        }
    }
    if let Some(jail) = cli.jail()? {
        // Before the jail hides /sys: a PVM host is named plainly, not as a jail failure.
        if box_vmm::kvm::caps::is_pvm_host() && std::env::var_os("BOX_VMM_FORCE_PVM").is_none() {
            return Err(Error::PvmHost);
        }
        box_vmm::jail::enter(&mut cfg, &jail)?;
    }
    box_vmm::machine::run_config(&cfg, start)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
