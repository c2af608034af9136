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

use step_tests::TestServer;

use harness::suite::{EXPECTED_CASES, PARALLEL, load_checked, vectors_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_vectors() {
    harness::suite::replay_and_check(TestServer::start().await).await;
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
