//! Driving a program through a pseudo-terminal, as a person's terminal would: shared by the
//! `-it` tests and `pty-drive` (the nested end-to-end tier).

use std::io::Read;
use std::os::fd::{OwnedFd, RawFd};
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
