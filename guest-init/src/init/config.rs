//! How guest-init was started: inside a VM (vsock) or as a host process (unix sockets).

use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::Duration;

use crate::api::{HOLD_ENV, NOTIFY_FD_ENV};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of a microVM: full early mounts, vsock listeners, power off at the end.
    Vm,
    /// PID 1 of a PID + mount namespace on the host: only `/proc` is mounted, listeners are
    /// unix sockets in `socket_dir`, and shutdown exits instead of powering off.
    HostProcess { socket_dir: PathBuf },
}

#[derive(Debug, Clone)]
pub struct Config {
    pub mode: Mode,
    /// Kernel modules to load, one path per line.
    pub modules_file: PathBuf,
    /// Test knob: where to report "listening", and whether to hold afterwards.
    pub notify_fd: Option<RawFd>,
    pub hold: bool,
    /// After a process exits, how long its output may stay silent without EOF before
    /// TaskExit is sent anyway (a background grandchild can keep the pipe open forever).
    pub drain_grace: Duration,
    /// Default time between SIGTERM and SIGKILL at shutdown.
    pub shutdown_grace: Duration,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("--host-process needs a socket directory")]
    MissingSocketDir,
    #[error("{NOTIFY_FD_ENV}={0:?} is not a file descriptor number")]
    BadNotifyFd(String),
}

impl Config {
    /// Parses the command line. Unknown arguments are ignored on purpose: as PID 1 the kernel
    /// hands init every boot parameter it does not know, and a stray one must not kill the VM.
    pub fn parse<I, S>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut mode = Mode::Vm;
        let mut args = args.into_iter().map(Into::into).skip(1);
        while let Some(arg) = args.next() {
            if arg == "--host-process" {
                let dir = args.next().ok_or(ConfigError::MissingSocketDir)?;
                mode = Mode::HostProcess {
                    socket_dir: dir.into(),
                };
            }
        }
        let notify_fd = match env(NOTIFY_FD_ENV) {
            Some(v) => Some(v.parse().map_err(|_| ConfigError::BadNotifyFd(v))?),
            None => None,
        };
        Ok(Config {
            mode,
            modules_file: PathBuf::from("/etc/box/modules"),
            notify_fd,
            hold: env(HOLD_ENV).is_some_and(|v| v == "1"),
            drain_grace: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(5),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_modes_and_ignores_kernel_noise() {
        let c = Config::parse(["init", "quiet", "splash"], |_| None).unwrap();
        assert_eq!(c.mode, Mode::Vm);
        let c = Config::parse(["init", "--host-process", "/s"], |_| None).unwrap();
        assert_eq!(
            c.mode,
            Mode::HostProcess {
                socket_dir: "/s".into()
            }
        );
        assert_eq!(
            Config::parse(["init", "--host-process"], |_| None).unwrap_err(),
            ConfigError::MissingSocketDir
        );
        let c = Config::parse(["init"], |k| (k == NOTIFY_FD_ENV).then(|| "5".into())).unwrap();
        assert_eq!(c.notify_fd, Some(5));
        assert!(Config::parse(["init"], |k| (k == NOTIFY_FD_ENV).then(|| "x".into())).is_err());
    }
}
