//! The cluster of `deploy/cluster/` survives its faults: runs
//! `deploy/cluster/fault_test.sh`, which builds the images without pulling
//! anything, brings up a private copy of the cluster (3 Garage nodes, Redis,
//! 3 step-servers, 2 gateways, HAProxy; its own project name and free
//! ports), runs Python STEP clients and curl through the balancer and
//! against single instances while it kills a step-server, stops a Garage
//! node, kills Redis and cuts a step-server off the store, races SAVEs of
//! one key on three instances, prints a "fault | check | result" table and
//! removes everything.
//!
//! Reported as ignored, with the reason, where no Docker engine answers
//! (`docker info` fails), compose, curl or python3 is missing, or
//! `STEP_SKIP_DOCKER_TEST` is set; a failure instead under
//! `STEP_REQUIRE_ALL_TESTS` (see `step_tests::prereq`). Garage must be
//! installed (`tests/garage/install.sh`): its binary goes into an image.

use std::path::Path;
use std::process::{Command, Stdio};

use step_tests::prereq::{self, command_works};

/// Exit status of the script meaning "skipped" (the automake convention).
const SKIPPED: i32 = 77;

fn main() {
    prereq::main(vec![prereq::needs(
        "cluster_survives_killed_instances_store_and_coordination_faults_and_races",
        cluster_prerequisites,
        |()| cluster_survives_killed_instances_store_and_coordination_faults_and_races(),
    )]);
}

/// What the script needs, checked the way it checks.
fn cluster_prerequisites() -> Result<(), String> {
    if std::env::var_os("STEP_SKIP_DOCKER_TEST").is_some() {
        return Err("STEP_SKIP_DOCKER_TEST is set".into());
    }
    command_works("docker", &["info"]).map_err(|e| format!("no Docker engine answers: {e}"))?;
    command_works("docker-compose", &["version"])
        .or_else(|_| command_works("docker", &["compose", "version"]))
        .map_err(|_| "no docker compose (neither docker-compose nor the v2 plugin)".to_string())?;
    command_works("curl", &[])?;
    command_works("python3", &[])?;
    // Their binaries go into the cluster's images (.ci/run installs them).
    command_works("redis-server", &["--version"])?;
    command_works("haproxy", &["-v"])?;
    step_tests::garage::Garage::binary().map(|_| ())
}

fn cluster_survives_killed_instances_store_and_coordination_faults_and_races() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the workspace");
    // Output goes straight to the terminal: the fault table.
    let status = Command::new("bash")
        .arg(root.join("deploy/cluster/fault_test.sh"))
        .current_dir(root)
        .stdin(Stdio::null())
        .status()
        .expect("run bash deploy/cluster/fault_test.sh");
    match status.code() {
        Some(0) => {}
        // The prerequisites were checked above: a skip now is a failure.
        Some(SKIPPED) => panic!("deploy/cluster/fault_test.sh skipped (it said why above)"),
        _ => panic!("deploy/cluster/fault_test.sh failed: {status}"),
    }
}
