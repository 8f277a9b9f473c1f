//! `pty-drive -- CMD...`: runs CMD on a fresh pseudo-terminal as its controlling terminal, the
//! way a person's terminal would, and checks an interactive shell session through it: a typed
//! command is answered, a window resize shows in `stty size`, and `exit 4` ends CMD with 4.
//! Used by the nested end-to-end tier for `box run -it` (busybox has no `script` or `expect`).
//! Prints one line per check; exits 0 only if all passed.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use box_tests::pty::{reader, set_size, wait_for};

const BACKSTOP: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip_while(|a| a != "--").skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: pty-drive -- CMD [ARGS...]");
        return ExitCode::from(2);
    }
    let pty = nix::pty::openpty(None, None).expect("openpty");
    set_size(pty.master.as_raw_fd(), 24, 80);
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]);
    let mut child = box_tests::pty::spawn_on(&mut cmd, &pty.slave).expect("spawn");
    drop(pty.slave);
    let master = pty.master.as_raw_fd();
    let mut w = std::fs::File::from(pty.master.try_clone().unwrap());
    let out = reader(pty.master);
    let mut failed = 0;
    let mut check = |name: &str, ok: bool| {
        println!("{} pty: {name}", if ok { "ok" } else { "FAIL" });
        if !ok {
            failed += 1;
        }
    };
    w.write_all(b"stty size; echo hel''lo\r").unwrap();
    check(
        "typed command answered",
        wait_for(&out, "hello", BACKSTOP, || {}),
    );
    check(
        "initial size 24 80",
        wait_for(&out, "24 80", BACKSTOP, || {}),
    );
    set_size(master, 50, 132);
    // The resize travels asynchronously (SIGWINCH -> ResizePty): ask until it shows.
    check(
        "resize shows in stty size",
        wait_for(&out, "50 132", BACKSTOP, || {
            let _ = w.write_all(b"stty size\r");
        }),
    );
    w.write_all(b"exit 4\r").unwrap();
    let deadline = Instant::now() + BACKSTOP;
    let code = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s.code(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                break None;
            }
        }
    };
    check(
        &format!("exit 4 ends the session with 4 (got {code:?})"),
        code == Some(4),
    );
    if failed > 0 {
        eprintln!(
            "terminal output: {:?}",
            String::from_utf8_lossy(&out.lock().unwrap())
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
