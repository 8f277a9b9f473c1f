//! The user's terminal: raw mode for `-t`, restored on every exit path, and its size.

use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::termios::{self, SetArg, Termios};

/// Puts a terminal in raw mode; the original mode comes back on drop (also on error paths
/// and panics that unwind).
pub struct RawMode {
    saved: Termios,
    fd: i32,
}

fn borrow(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: fd 0/1/2 stay open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

impl RawMode {
    /// Raw mode on `fd`, if it is a terminal.
    pub fn enter(fd: i32) -> Option<RawMode> {
        let f = borrow(fd);
        if !nix::unistd::isatty(f).unwrap_or(false) {
            return None;
        }
        let saved = termios::tcgetattr(f).ok()?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(f, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved, fd })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(borrow(self.fd).as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

/// (cols, rows) of the terminal on `fd`.
pub fn size(fd: i32) -> Option<(u32, u32)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some((ws.ws_col as u32, ws.ws_row as u32))
}
