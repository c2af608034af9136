//! `docker-compose.yml` works: runs `tests/docker/compose_test.sh`, which
//! builds the images without pulling anything, brings the stack up, uploads
//! with curl through the gateway and with the native client to the server,
//! reads both back, restarts the stack and finds the files still there.
//!
//! Reported as ignored, with the reason, where no Docker engine answers
//! (`docker info` fails), compose or curl is missing, or
//! `STEP_SKIP_DOCKER_TEST` is set; a failure instead under
//! `STEP_REQUIRE_ALL_TESTS` (see `step_tests::prereq`). The first run builds
//! static release binaries: a few minutes on two cores.

use std::path::Path;
use std::process::{Command, Stdio};

use step_tests::prereq::{self, command_works};

/// Exit status of the script meaning "skipped" (the automake convention).
const SKIPPED: i32 = 77;

fn main() {
    prereq::main(vec![prereq::needs(
        "compose_stack_serves_curl_and_native_clients_and_keeps_files_across_restart",
        docker_compose_available,
        |()| compose_stack_serves_curl_and_native_clients_and_keeps_files_across_restart(),
    )]);
}

/// What the script needs, checked the way it checks.
fn docker_compose_available() -> Result<(), String> {
    if std::env::var_os("STEP_SKIP_DOCKER_TEST").is_some() {
        return Err("STEP_SKIP_DOCKER_TEST is set".into());
    }
    command_works("docker", &["info"]).map_err(|e| format!("no Docker engine answers: {e}"))?;
    command_works("docker", &["compose", "version"])
        .or_else(|_| command_works("docker-compose", &["version"]))
        .map_err(|_| "no docker compose (neither the v2 plugin nor docker-compose)".to_string())?;
    command_works("curl", &[])
}

fn compose_stack_serves_curl_and_native_clients_and_keeps_files_across_restart() {
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
        // The prerequisites were checked above: a skip now is a failure.
        Some(SKIPPED) => panic!("tests/docker/compose_test.sh skipped (it said why above)"),
        _ => panic!("tests/docker/compose_test.sh failed: {status}"),
    }
}
