//! Tests that need something this machine may lack (a Docker engine, root
//! for a tmpfs, python3, curl, an external STEP server).
//!
//! Such a test must never pass silently when it could not run: its file is a
//! `harness = false` test target whose `main` hands [`Needs`] trials to
//! libtest-mimic. A trial first checks its prerequisite; when it is missing
//! the test is reported as `ignored (the reason)` and counted in the
//! summary's "N ignored". With `STEP_REQUIRE_ALL_TESTS` set (CI sets it), a
//! missing prerequisite is a failure with the same reason instead, so a CI
//! machine lacking something cannot pass by skipping.

use std::future::Future;
use std::process::{Command, Stdio};

pub use libtest_mimic::{Completion, Failed, Trial};

/// Set (to anything) to turn every "prerequisite missing" skip into a failure.
pub const REQUIRE_ALL: &str = "STEP_REQUIRE_ALL_TESTS";

/// One test and its prerequisite: `check` gives what the body needs, or the
/// reason it is not available here. A panic in the body (a failed assertion)
/// fails the test, as with `#[test]`.
pub fn needs<T: 'static>(
    name: &str,
    check: impl FnOnce() -> Result<T, String> + Send + 'static,
    body: impl FnOnce(T) + Send + 'static,
) -> Trial {
    Trial::ignorable_test(name, move || match check() {
        Ok(ready) => {
            body(ready);
            Ok(Completion::Completed)
        }
        Err(reason) => skip(&reason),
    })
}

/// The outcome of a test whose prerequisite is missing: ignored with the
/// reason, or failed when [`REQUIRE_ALL`] is set.
pub fn skip(reason: &str) -> Result<Completion, Failed> {
    // One line in the summary, whatever a tool printed.
    let reason = reason.split_whitespace().collect::<Vec<_>>().join(" ");
    if required() {
        Err(Failed::from(format!(
            "cannot run: {reason} ({REQUIRE_ALL} is set, so every test must run)"
        )))
    } else {
        Ok(Completion::ignored_with(format!("skipped: {reason}")))
    }
}

fn required() -> bool {
    std::env::var_os(REQUIRE_ALL).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Run the trials with libtest's command line (filters, `--list`,
/// `--test-threads`...) and exit with its status.
pub fn main(trials: Vec<Trial>) -> ! {
    libtest_mimic::run(&libtest_mimic::Arguments::from_args(), trials).exit()
}

/// `#[tokio::test]`'s default: a current-thread runtime.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(fut)
}

/// `#[tokio::test(flavor = "multi_thread", worker_threads = n)]`.
pub fn block_on_threads<F: Future>(workers: usize, fut: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(fut)
}

/// Ok when `program` runs (`program --version` or the given arguments exit 0).
pub fn command_works(program: &str, args: &[&str]) -> Result<(), String> {
    let args = if args.is_empty() {
        &["--version"][..]
    } else {
        args
    };
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`{program} {}` failed ({s})", args.join(" "))),
        Err(e) => Err(format!("{program} is not installed ({e})")),
    }
}
