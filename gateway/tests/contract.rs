//! Contract test: runs tests/contract/run_schemathesis.sh, which checks the
//! gateway binary against openapi.yaml with schemathesis (every operation,
//! every phase, every check). It installs its pinned Python tools into a venv
//! under target/ on first use. When python3 is missing or that install fails
//! (no network) the test is reported as ignored with the reason (a failure
//! under `STEP_REQUIRE_ALL_TESTS`; see `step_tests::prereq`).

use std::process::Command;
use std::time::Instant;

use step_tests::prereq::{self, command_works};

/// The script's exit status for "skipped, the reason is on stderr".
const SKIPPED: i32 = 77;

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/contract/run_schemathesis.sh"
);

fn main() {
    prereq::main(vec![prereq::needs(
        "gateway_conforms_to_openapi_yaml",
        schemathesis_installed,
        |()| gateway_conforms_to_openapi_yaml(),
    )]);
}

/// The reason the script gives for a skip (its last "contract: SKIP:" line).
fn skip_reason(stderr: &str) -> String {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("contract: SKIP: "))
        .next_back()
        .unwrap_or("the script skipped; see its output")
        .to_owned()
}

/// python3 is here and the script's venv is installed (installing it now if
/// needed): the script's own step 1, alone.
fn schemathesis_installed() -> Result<(), String> {
    command_works("python3", &[]).map_err(|e| format!("{e}, so schemathesis cannot run"))?;
    let out = Command::new("bash")
        .arg(SCRIPT)
        .env("CONTRACT_PREPARE_ONLY", "1")
        .output()
        .map_err(|e| format!("cannot run bash {SCRIPT}: {e}"))?;
    match out.status.code() {
        Some(SKIPPED) => Err(skip_reason(&String::from_utf8_lossy(&out.stderr))),
        // Anything else is not a missing prerequisite: the full run below
        // meets the same problem and fails with all of the output.
        _ => Ok(()),
    }
}

fn gateway_conforms_to_openapi_yaml() {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(SCRIPT)
        .env("GATEWAY_BIN", env!("CARGO_BIN_EXE_gateway"))
        .output()
        .expect("run tests/contract/run_schemathesis.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => println!(
            "{stdout}\n{stderr}\nschemathesis: no failures in {:.0?}",
            started.elapsed()
        ),
        // The prerequisite check passed moments ago: a skip now is a failure.
        Some(SKIPPED) => panic!(
            "the contract script skipped after its tools were found: {}",
            skip_reason(&stderr)
        ),
        code => panic!(
            "schemathesis found failures or could not run (exit {code:?}):\n{stdout}\n{stderr}"
        ),
    }
}
