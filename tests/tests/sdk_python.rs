//! The Python SDK (`sdk/python`, standard library only) against a real `box serve` on the
//! host-process backend: its unittest suite starts the server itself, from the binaries and
//! the busybox image this tier provides.

use std::path::Path;
use std::process::{Command, Stdio};

use box_tests::cli::{box_binary, BoxEnv};
use box_tests::host_init::init_binary;
use box_tests::require_host_tier;

const SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/python");

#[test]
fn python_sdk_against_a_real_server() {
    require_host_tier!();
    let env = BoxEnv::new();
    let sdk = Path::new(SDK);
    match Command::new("python3").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        other => panic!(
            "python3 is needed to test sdk/python (Debian's `python3` package; \
             cargo xtask ci installs it): {other:?}"
        ),
    }
    std::fs::create_dir_all(&env.state).unwrap();
    // `timeout` is the backstop: the suite's own waits are bounded, this bounds the rest.
    let out = Command::new("timeout")
        .arg("300")
        .args(["python3", "-m", "unittest", "discover", "-v", "-s"])
        .arg(sdk.join("tests"))
        .current_dir(sdk)
        .env("PYTHONPATH", sdk.join("src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("BOX_BIN", box_binary())
        .env("BOX_INIT_BIN", init_binary())
        .env("BOX_TEST_IMAGE", env.image())
        .env("BOX_STATE_DIR", &env.state)
        .env_remove("BOX_SOCKET")
        .env_remove("BOX_URL")
        .env_remove("BOX_TOKEN")
        .stdin(Stdio::null())
        .output()
        .expect("running python3");
    // unittest reports on stderr.
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{report}");
    assert!(
        out.status.success(),
        "the Python SDK's tests failed ({}{}):\n{report}",
        out.status,
        if out.status.code() == Some(124) {
            ", killed by the 300 s backstop"
        } else {
            ""
        }
    );
    // A suite that found nothing to run (or skipped it all) is not a pass.
    assert!(
        report.contains("\nOK") && !report.contains("skipped"),
        "{report}"
    );
}
