//! Golden conformance: replays every vector in `tests/vectors/*.jsonl`
//! against a real in-process `step-server`, with the semantics of
//! `shared/conformance/replay.py --strict-framing`, so conformance is checked
//! by `cargo test` on any machine, no Python needed.
//!
//! `cargo test -p step-tests --test conformance -- --nocapture` prints one
//! `PASS name` / `FAIL name: reason` line per case. To replay only some
//! cases while debugging, set `STEP_CONFORMANCE_ONLY=name1,name2`.
//!
//! Adding vectors: drop a `.jsonl` file into `tests/vectors/` and add its
//! exact case count to [`EXPECTED_CASES`]; every listed file must hold exactly
//! that many cases, so a truncated copy fails instead of passing silently.

#[path = "conformance/mod.rs"]
mod harness;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use harness::Case;
use step_tests::TestServer;

/// Every vector file and the exact number of cases it must contain.
const EXPECTED_CASES: &[(&str, usize)] = &[("public.jsonl", 74)];

/// Cases replayed at once. Enough to overlap the 2 s "no answer" waits and
/// the sleeps; small enough not to swamp a 2-core machine.
const PARALLEL: usize = 16;

fn vectors_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors")
}

/// Load every `*.jsonl` in `dir` and verify it against `expected`: each
/// listed file present with exactly its count, no unlisted file, no case name
/// used twice (names are how results are reported).
fn load_checked(dir: &Path, expected: &[(&str, usize)]) -> Result<Vec<Case>, Vec<String>> {
    let files = harness::vector_files(dir).map_err(|e| vec![e])?;
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
        let loaded = match harness::vectors::load_file(path) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_vectors() {
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

    let server = TestServer::start().await;
    let started = Instant::now();
    let reports = harness::replay_all(cases, server.addr, PARALLEL).await;
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

/// The count check must catch a truncated or unlisted vector file, or the
/// replay could pass vacuously on fewer cases.
#[test]
fn vector_file_counts_are_enforced() {
    let public =
        std::fs::read_to_string(vectors_dir().join("public.jsonl")).expect("read public.jsonl");
    let lines: Vec<&str> = public.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 74);
    let expected = &[("public.jsonl", 74)];

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("public.jsonl"), &public).expect("write");
    assert_eq!(
        load_checked(dir.path(), expected)
            .expect("full copy loads")
            .len(),
        74
    );

    // Truncated: one case short.
    std::fs::write(dir.path().join("public.jsonl"), lines[..73].join("\n")).expect("write");
    let errs = load_checked(dir.path(), expected).expect_err("truncated file must fail");
    assert!(
        errs[0].contains("73 cases loaded, expected exactly 74"),
        "{errs:?}"
    );

    // An extra file that is not listed, and duplicate names.
    std::fs::write(dir.path().join("public.jsonl"), &public).expect("write");
    std::fs::write(dir.path().join("more.jsonl"), lines[0]).expect("write");
    let errs = load_checked(dir.path(), expected).expect_err("unlisted file must fail");
    assert!(
        errs.iter()
            .any(|e| e.contains("not listed in EXPECTED_CASES")),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.contains("used twice")), "{errs:?}");

    // A listed file that is missing.
    std::fs::remove_file(dir.path().join("public.jsonl")).expect("rm");
    let errs = load_checked(dir.path(), expected).expect_err("missing file must fail");
    assert!(
        errs.iter().any(|e| e.contains("public.jsonl is missing")),
        "{errs:?}"
    );
}

/// The replay must be able to fail: the same cases with the last checked
/// status of each changed to 599 must all fail at that check. Guards against
/// a harness that reads answers but never really compares them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_vectors_fail() {
    let mut cases = load_checked(&vectors_dir(), EXPECTED_CASES).expect("vectors load");
    for case in &mut cases {
        let step = case
            .steps
            .iter_mut()
            .rev()
            .find_map(|s| {
                s.get_mut("expect")
                    .and_then(|e| e.as_object_mut())
                    .filter(|e| e.contains_key("status"))
            })
            .unwrap_or_else(|| panic!("{}: no step checks a status", case.name));
        step.insert("status".into(), serde_json::json!(599));
    }
    let server = TestServer::start().await;
    let reports = harness::replay_all(cases, server.addr, PARALLEL).await;
    server.shutdown().await;
    let wrongly_passed: Vec<_> = reports
        .iter()
        .filter(|r| {
            !r.problems
                .first()
                .is_some_and(|p| p.contains("status: expected 599, got "))
        })
        .map(|r| r.line())
        .collect();
    assert!(
        wrongly_passed.is_empty(),
        "cases not failing on the mutated status:\n{}",
        wrongly_passed.join("\n")
    );
}
