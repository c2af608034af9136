//! Loading the vector files and replaying all of them against a server:
//! shared by the replay over disk (`conformance.rs`) and over S3
//! (`conformance_s3.rs`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use step_tests::TestServer;

use super::Case;

/// Every vector file and the exact number of cases it must contain.
pub const EXPECTED_CASES: &[(&str, usize)] = &[("public.jsonl", 74)];

/// Cases replayed at once. Enough to overlap the 2 s "no answer" waits and
/// the sleeps; small enough not to swamp a 2-core machine.
pub const PARALLEL: usize = 16;

pub fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// Load every `*.jsonl` in `dir` and verify it against `expected`: each
/// listed file present with exactly its count, no unlisted file, no case name
/// used twice (names are how results are reported).
pub fn load_checked(dir: &Path, expected: &[(&str, usize)]) -> Result<Vec<Case>, Vec<String>> {
    let files = super::vector_files(dir).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut cases = Vec::new();
    for (name, _) in expected {
        if !files
            .iter()
            .any(|f| f.file_name().is_some_and(|n| n == *name))
        {
            errors.push(format!("{name} is missing from {}", dir.display()));
        }
    }
    for path in &files {
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let loaded = match super::vectors::load_file(path) {
            Ok(c) => c,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match expected.iter().find(|(n, _)| *n == file) {
            Some((_, want)) if loaded.len() != *want => {
                errors.push(format!("{file}: {} cases loaded, expected exactly {want}", loaded.len()))
            }
            Some(_) => {}
            None => errors.push(format!(
                "{file} holds {} cases but is not listed in EXPECTED_CASES; add (\"{file}\", {}) there",
                loaded.len(),
                loaded.len()
            )),
        }
        cases.extend(loaded);
    }
    let mut seen = HashSet::new();
    for c in &cases {
        if !seen.insert(c.name.as_str()) {
            errors.push(format!(
                "{}: case name {:?} is used twice",
                c.origin, c.name
            ));
        }
    }
    if errors.is_empty() {
        Ok(cases)
    } else {
        Err(errors)
    }
}

/// Replay every vector against `server` (then shut it down) and fail with
/// the cases that failed.
pub async fn replay_and_check(server: TestServer) {
    let dir = vectors_dir();
    let mut cases = match load_checked(&dir, EXPECTED_CASES) {
        Ok(c) => c,
        Err(errors) => panic!(
            "conformance vectors are not as expected:\n  {}",
            errors.join("\n  ")
        ),
    };
    let loaded = cases.len();
    let expected_total: usize = EXPECTED_CASES.iter().map(|(_, n)| n).sum();
    assert_eq!(loaded, expected_total, "total cases loaded");

    if let Ok(only) = std::env::var("STEP_CONFORMANCE_ONLY") {
        let only: HashSet<&str> = only
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        cases.retain(|c| only.contains(c.name.as_str()));
        assert!(!cases.is_empty(), "STEP_CONFORMANCE_ONLY matches no case");
        println!(
            "replaying {} of {loaded} cases (STEP_CONFORMANCE_ONLY)",
            cases.len()
        );
    }

    let started = Instant::now();
    let reports = super::replay_all(cases, server.addr, PARALLEL).await;
    let took = started.elapsed();
    server.shutdown().await;

    for r in &reports {
        println!("{}", r.line());
    }
    let failed: Vec<_> = reports.iter().filter(|r| !r.passed()).collect();
    let slowest = reports.iter().max_by_key(|r| r.elapsed);
    println!(
        "conformance: {} passed, {} failed in {:.1}s (slowest: {})",
        reports.len() - failed.len(),
        failed.len(),
        took.as_secs_f64(),
        slowest.map_or_else(String::new, |r| format!(
            "{} {:.1}s",
            r.name,
            r.elapsed.as_secs_f64()
        )),
    );
    assert!(
        failed.is_empty(),
        "{} of {} conformance cases failed:\n{}",
        failed.len(),
        reports.len(),
        failed
            .iter()
            .map(|r| format!("{} ({})", r.line(), r.origin))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
