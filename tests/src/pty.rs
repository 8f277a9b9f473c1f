//! Driving a program through a pseudo-terminal, as a person's terminal would: shared by the
//! `-it` tests and `pty-drive` (the nested end-to-end tier).

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sets the terminal's window size (the outer terminal being resized).
pub fn set_size(fd: RawFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; fd is a pty master.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// Reads the pty master on a thread into a shared buffer, until EOF or EIO.
pub fn reader(master: OwnedFd) -> Arc<Mutex<Vec<u8>>> {
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    std::thread::spawn(move || {
        let mut f = std::fs::File::from(master);
        let mut buf = [0u8; 4096];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    out
}

/// Waits until the output contains `needle`, calling `nudge` between looks (e.g. to ask
/// again); false after `backstop`.
pub fn wait_for(
    out: &Mutex<Vec<u8>>,
    needle: &str,
    backstop: Duration,
    mut nudge: impl FnMut(),
) -> bool {
    let deadline = Instant::now() + backstop;
    while Instant::now() < deadline {
        if String::from_utf8_lossy(&out.lock().unwrap()).contains(needle) {
            return true;
        }
        nudge();
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Spawns `cmd` with the pty's slave as its stdio and controlling terminal, as in a real
/// login, so that resizes of the pty reach it as SIGWINCH.
pub fn spawn_on(cmd: &mut Command, slave: &impl AsFd) -> std::io::Result<Child> {
    let end = || -> std::io::Result<Stdio> { Ok(Stdio::from(slave.as_fd().try_clone_to_owned()?)) };
    cmd.stdin(end()?).stdout(end()?).stderr(end()?);
    // SAFETY: setsid and ioctl are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}
