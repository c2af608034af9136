//! A Rust port of `shared/conformance/replay.py`: replays STEP conformance
//! vectors against a server and checks its answers, with the Python runner's
//! semantics (see each module for the part it mirrors).
//!
//! - [`vectors`]: loading `.jsonl` files, `vars`, `${var}`/`${fn:var}` substitution
//! - [`content`]: sha256 pattern blocks, Python-compatible base64, token mutators
//! - [`wire`]: frame encoding, blocking connections, reading/classifying answers
//! - [`check`]: expectation matching (`$one_of`, `$regex`, `$token_for`, ...)
//! - [`runner`]: the step actions of one case
//! - [`suite`]: the vector files checked and replayed against a server

pub mod check;
pub mod content;
pub mod pyvalue;
pub mod runner;
pub mod suite;
pub mod vectors;
pub mod wire;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt as _;

pub use vectors::Case;

/// The outcome of replaying one case.
#[derive(Debug)]
pub struct Report {
    pub name: String,
    pub origin: String,
    /// Empty when the case passed; otherwise the first entry says why it failed.
    pub problems: Vec<String>,
    pub elapsed: Duration,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.problems.is_empty()
    }

    /// `PASS name` or `FAIL name: reason` (further problems indented below),
    /// as the Python runner prints them.
    pub fn line(&self) -> String {
        match self.problems.split_first() {
            None => format!("PASS {}", self.name),
            Some((first, rest)) => {
                let mut s = format!("FAIL {}: {first}", self.name);
                for p in rest {
                    s.push_str(&format!("\n     {p}"));
                }
                s
            }
        }
    }
}

/// Every `*.jsonl` file directly in `dir`, sorted by name so the replay
/// order (and the printed report) is stable.
pub fn vector_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries =
        std::fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    files.sort();
    Ok(files)
}

/// Replay `cases` against `addr`, at most `parallel` at a time.
///
/// Each case runs on a blocking thread with std sockets, so its steps are
/// strictly sequential and wait exactly as long as the Python runner would;
/// running many cases at once keeps the total time near that of the slowest
/// case rather than the sum of all the "no answer" waits. Cases do not
/// interfere: every replay uses fresh random user names and keys.
/// Reports come back in the order of `cases`.
pub async fn replay_all(cases: Vec<Case>, addr: SocketAddr, parallel: usize) -> Vec<Report> {
    let mut reports: Vec<(usize, Report)> = futures::stream::iter(cases.into_iter().enumerate())
        .map(|(i, case)| {
            let (name, origin) = (case.name.clone(), case.origin.clone());
            // `map` is lazy and `buffer_unordered` polls at most `parallel`
            // of these futures, so at most that many blocking threads run
            // cases; unordered so one slow case does not hold back the rest.
            let task = tokio::task::spawn_blocking(move || {
                let t = Instant::now();
                let problems = runner::run_case(&case, addr);
                (problems, t.elapsed())
            });
            async move {
                let (problems, elapsed) = match task.await {
                    Ok(done) => done,
                    // A panic inside the harness: report it against the case
                    // instead of losing every other result.
                    Err(e) => (vec![format!("harness panicked: {e}")], Duration::ZERO),
                };
                (
                    i,
                    Report {
                        name,
                        origin,
                        problems,
                        elapsed,
                    },
                )
            }
        })
        .buffer_unordered(parallel.max(1))
        .collect()
        .await;
    reports.sort_by_key(|(i, _)| *i);
    reports.into_iter().map(|(_, r)| r).collect()
}
