//! `docker-compose.yml` works: runs `tests/docker/compose_test.sh`, which
//! builds the images without pulling anything, brings the stack up, uploads
//! with curl through the gateway and with the native client to the server,
//! reads both back, restarts the stack and finds the files still there.
//!
//! Skipped, saying so, where no Docker engine answers (`docker info` fails)
//! or compose is missing, and when `STEP_SKIP_DOCKER_TEST` is set. The first
//! run builds static release binaries: a few minutes on two cores.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Exit status of the script meaning "skipped" (the automake convention).
const SKIPPED: i32 = 77;

/// Printed to the real stderr, so it shows even when the harness captures output.
fn note(msg: &str) {
    let _ = writeln!(std::io::stderr(), "docker_compose: {msg}");
}

fn docker_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn compose_stack_serves_curl_and_native_clients_and_keeps_files_across_restart() {
    if std::env::var_os("STEP_SKIP_DOCKER_TEST").is_some() {
        note("skipped: STEP_SKIP_DOCKER_TEST is set");
        return;
    }
    if !docker_answers() {
        note("skipped: no Docker engine (`docker info` fails)");
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace");
    // Output goes straight to the terminal: image sizes, time to healthy.
    let status = Command::new("bash")
        .arg(root.join("tests/docker/compose_test.sh"))
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .expect("run bash tests/docker/compose_test.sh");
    match status.code() {
        Some(0) => {}
        Some(SKIPPED) => note("skipped (the script said why above)"),
        _ => panic!("tests/docker/compose_test.sh failed: {status}"),
    }
}
