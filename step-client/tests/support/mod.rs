//! Running the real `step-client` binary in the CLI tests: its output, and
//! the assertions every test makes on it.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::Stdio;

use step_tests::TestServer;
use tokio::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_step-client");

#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(out: std::process::Output) -> Run {
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The client with no STEP_* variables from the environment leaking in.
pub fn client(dir: &Path) -> Command {
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

pub async fn run_raw(dir: &Path, args: &[&str]) -> Run {
    let out = client(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run step-client");
    Run::of(out)
}

/// Run against `server` as `user`.
pub async fn run(server: &TestServer, dir: &Path, user: &str, args: &[&str]) -> Run {
    let port = server.addr.port().to_string();
    let mut all = vec!["--server-ip", "127.0.0.1", "--port", &port, "--id", user];
    all.extend_from_slice(args);
    run_raw(dir, &all).await
}

pub fn assert_ok(r: &Run) {
    assert!(r.ok, "step-client failed: {r:?}");
}

/// A failure must be exactly one line on stderr, with no panic or debug dump.
pub fn assert_one_line_error(r: &Run, needle: &str) {
    assert!(!r.ok, "step-client should have failed: {r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line on stderr: {r:?}");
    assert!(lines[0].starts_with("step-client: error: "), "{r:?}");
    assert!(lines[0].contains(needle), "want {needle:?} in {r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

pub fn md5_line(r: &Run) -> Option<&str> {
    r.stdout.lines().find_map(|l| l.strip_prefix("MD5: "))
}

pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write test file");
    p
}
