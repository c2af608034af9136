//! The real `step-client` binary downloading into a nearly full file system.
//! Needs a private mount namespace (root with CAP_SYS_ADMIN) for its tmpfs;
//! elsewhere the test is reported as ignored with the reason (a failure under
//! `STEP_REQUIRE_ALL_TESTS`; see `step_tests::prereq`). Kept apart from
//! cli.rs so that file keeps the standard harness.

use std::path::Path;
use std::process::Stdio;

use step_tests::prereq::{self, block_on_threads};
use step_tests::{TestServer, pattern};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_step-client");

fn main() {
    prereq::main(vec![prereq::needs(
        "download_to_a_full_disk",
        can_mount_tmpfs,
        |()| block_on_threads(2, download_to_a_full_disk()),
    )]);
}

fn can_mount_tmpfs() -> Result<(), String> {
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unshare (util-linux): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cannot mount a tmpfs in a private mount namespace (needs root with CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[derive(Debug)]
struct Run {
    ok: bool,
    // Read only through Debug, in assertion messages.
    #[allow(dead_code)]
    stdout: String,
    stderr: String,
}

impl Run {
    fn of(out: std::process::Output) -> Run {
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// As in cli.rs: the client with no STEP_* variables from the environment.
fn client(dir: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir).kill_on_drop(true);
    for var in [
        "STEP_SERVER",
        "STEP_PORT",
        "STEP_ID",
        "STEP_PASSWORD",
        "STEP_TIMEOUT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A failure must be exactly one line on stderr, with no panic or debug dump.
fn assert_one_line_error(r: &Run, needle: &str) {
    assert!(!r.ok, "step-client should have failed: {r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line on stderr: {r:?}");
    assert!(lines[0].starts_with("step-client: error: "), "{r:?}");
    assert!(lines[0].contains(needle), "want {needle:?} in {r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

/// A download into a nearly full file system fails with "disk full", as one
/// line.
async fn download_to_a_full_disk() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("four.bin"), pattern(4 << 20, 5)).expect("write test file");
    let port = server.addr.port().to_string();
    let args = ["--server-ip", "127.0.0.1", "--port", &port, "--id", "full"];
    let out = client(dir.path())
        .args(args)
        .args(["upload", "four.bin"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run step-client");
    let r = Run::of(out);
    assert!(r.ok, "step-client failed: {r:?}");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{small}' && exec '{BIN}' --server-ip 127.0.0.1 --port {port} --id full download four.bin -o '{small}/four.bin'",
        small = small.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .await
        .expect("run");
    let r = Run::of(out);
    assert_one_line_error(&r, "disk full while writing");
}
