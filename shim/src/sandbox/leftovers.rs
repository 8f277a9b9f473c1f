//! A sandbox's processes found by what they were started with, for when its record cannot
//! say (unreadable, never written, a crash between reserving the name and recording a pid).
//!
//! Every process the host library starts for a sandbox names a path inside the sandbox's
//! directory on its command line (box-vmm's `--console`/`--vsock-uds`, the host-process
//! init's endpoint), except the log pump, which is `box __log-pump NAME` with the state root
//! in its environment. So `/proc` tells them apart from everything else on the host.

use std::path::Path;

use super::state::StateRoot;
use super::vmm_process::ProcRef;

/// Live processes that belong to sandbox `name` of `root`.
pub fn processes(root: &StateRoot, name: &str) -> Vec<ProcRef> {
    let dir = root.dir(name);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| belongs(*pid, &dir, root.root(), name))
        .filter_map(ProcRef::of)
        .filter(|p| p.is_alive())
        .collect()
}

fn args_of(file: &Path) -> Vec<Vec<u8>> {
    std::fs::read(file)
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

fn belongs(pid: i32, dir: &Path, state_root: &Path, name: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let args = args_of(&proc_dir.join("cmdline"));
    let mut prefix = dir.as_os_str().as_bytes().to_vec();
    prefix.push(b'/');
    if args.iter().any(|a| a.starts_with(&prefix)) {
        return true;
    }
    let is_pump = args.len() >= 3 && args[1] == b"__log-pump" && args[2] == name.as_bytes();
    if !is_pump {
        return false;
    }
    let env = args_of(&proc_dir.join("environ"));
    let want = [
        b"BOX_STATE_DIR=".as_slice(),
        state_root.as_os_str().as_bytes(),
    ]
    .concat();
    env.contains(&want)
        || (state_root == Path::new("/run/box")
            && !env.iter().any(|v| v.starts_with(b"BOX_STATE_DIR=")))
}
