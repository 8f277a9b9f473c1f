//! The binary's exit contract, checked on the real executable.

use std::process::Command;

fn box_vmm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_box-vmm"))
}

#[test]
fn help_documents_flags_and_exit_codes() {
    let out = box_vmm().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--kernel",
        "--initrd",
        "--cmdline",
        "--cpus",
        "--mem",
        "--disk",
        "--vsock-uds",
        "--vsock-cid",
        "--console",
        "--boot-timer",
        "--no-seccomp",
        "--config",
        "EXIT STATUS",
        "cargo xtask node",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn missing_kernel_is_config_error_naming_path() {
    let out = box_vmm()
        .args(["--kernel", "/nonexistent/box-vmlinux"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/box-vmlinux"), "{err}");
}

#[test]
fn bad_cpus_is_config_error() {
    let k = std::env::temp_dir().join(format!("box-vmm-cli-k-{}", std::process::id()));
    std::fs::write(&k, b"x").unwrap();
    let out = box_vmm()
        .args(["--kernel", k.to_str().unwrap(), "--cpus", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(12));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--cpus"));
}

#[test]
fn pvm_host_is_reported_plainly() {
    if !std::path::Path::new("/sys/module/kvm_pvm").exists() {
        eprintln!("SKIP: not a PVM host");
        return;
    }
    let k = std::env::temp_dir().join(format!("box-vmm-cli-pvm-{}", std::process::id()));
    std::fs::write(&k, b"x").unwrap();
    let out = box_vmm()
        .args(["--kernel", k.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(13));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PVM") && err.contains("cargo xtask node"),
        "{err}"
    );
}
