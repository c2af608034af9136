//! The Python venv the tus and browser tests drive (tuspy, selenium:
//! tests/tus/requirements.txt), and running its scripts for one JSON line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

const VENV_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/tus/venv.sh");

/// The venv's python, made by tests/tus/venv.sh when missing, or why
/// there is none (its exit code 77: a skip, with the reason it printed).
pub fn tus_venv() -> Result<PathBuf, String> {
    let out = Command::new("bash")
        .arg(VENV_SCRIPT)
        .output()
        .map_err(|e| format!("cannot run bash {VENV_SCRIPT}: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())),
        Some(77) => Err(stderr
            .lines()
            .filter_map(|l| l.strip_prefix("tus: SKIP: "))
            .next_back()
            .unwrap_or("tests/tus/venv.sh skipped")
            .to_owned()),
        code => panic!("tests/tus/venv.sh failed ({code:?}): {stderr}"),
    }
}

/// Run `script` with `args` under `py`, within `limit`; the JSON object
/// its last line of output holds. Panics, with its output, when it fails.
pub async fn run_for_json(py: &Path, script: &str, args: &[&str], limit: Duration) -> Value {
    let name = Path::new(script)
        .file_name()
        .map_or_else(|| script.into(), |n| n.to_string_lossy());
    let run = tokio::process::Command::new(py)
        .arg(script)
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(limit, run)
        .await
        .unwrap_or_else(|_| panic!("{name} {args:?} did not finish within {limit:?}"))
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{name} printed no JSON ({e}): {stdout}"))
}
