//! The progress bar as a person sees it, on a terminal (util-linux `script`
//! gives the binary one): after a resume, every speed it shows is the
//! speed of this run, from the first frame on (the bar once counted the
//! blocks already on the server as sent in its first instant: TiB/s).
//! Without `script` the test is reported as ignored with the reason (a
//! failure under `STEP_REQUIRE_ALL_TESTS`).

use std::process::Stdio;
use std::time::Duration;

use step_tests::prereq::{self, block_on_threads, command_works};
use step_tests::{TestServer, pattern};

mod support;

use support::{BIN, write};

fn main() {
    prereq::main(vec![prereq::needs(
        "the_first_frame_after_a_resume_shows_a_sane_speed",
        || command_works("script", &["-V"]),
        |()| block_on_threads(2, the_first_frame_after_a_resume_shows_a_sane_speed()),
    )]);
}

async fn the_first_frame_after_a_resume_shows_a_sane_speed() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "big.bin", &pattern(64 << 20, 3));
    let port = server.addr.port().to_string();
    let args = support::at(&port, "tty", &["--connections", "1", "upload", "big.bin"]);

    // Cut at 30% or more (a crash: no clean-up).
    let mut first: Vec<&str> = args.to_vec();
    first.extend(["--limit-rate", "16M"]);
    let mut up = support::Running::start(dir.path(), &first);
    up.until_percent(30).await;
    up.crash().await;

    // The rerun on a terminal, throttled to 8 MiB/s.
    let cmd = format!("{BIN} {} --limit-rate 8M", args.join(" "));
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        support::isolated(tokio::process::Command::new("script"), dir.path())
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("the resumed upload ends")
    .expect("script");
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("Resuming"), "{screen}");
    let rate = regex::Regex::new(r"(\d+(?:\.\d+)?) ?(B|KiB|MiB|GiB|TiB)/s").expect("regex");
    let rates: Vec<f64> = rate
        .captures_iter(&screen)
        .map(|c| {
            let n: f64 = c[1].parse().expect("number");
            let unit = match &c[2] {
                "B" => 1.0,
                "KiB" => 1024.0,
                "MiB" => 1024.0 * 1024.0,
                "GiB" => 1024.0 * 1024.0 * 1024.0,
                _ => 1024.0_f64.powi(4),
            };
            n * unit
        })
        .collect();
    assert!(!rates.is_empty(), "the bar shows a speed: {screen}");
    // Throttled to 8 MiB/s: no frame may claim four times that.
    let worst = rates.iter().copied().fold(0.0, f64::max);
    assert!(
        worst < 32.0 * 1024.0 * 1024.0,
        "a frame showed {:.1} MiB/s: {screen}",
        worst / 1024.0 / 1024.0
    );
}
