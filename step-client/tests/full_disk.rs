//! The real `step-client` binary downloading into a nearly full file system.
//! Needs a private mount namespace (root with CAP_SYS_ADMIN) for its tmpfs;
//! elsewhere the test is reported as ignored with the reason (a failure under
//! `STEP_REQUIRE_ALL_TESTS`; see `step_tests::prereq`). Kept apart from
//! cli.rs so that file keeps the standard harness.

use std::process::Stdio;

use step_tests::prereq::{self, block_on_threads};
use step_tests::{TestServer, pattern};
use tokio::process::Command;

mod support;

use support::{BIN, Run, assert_one_line_error, client};

fn main() {
    prereq::main(vec![prereq::needs(
        "download_to_a_full_disk",
        can_mount_tmpfs,
        |()| block_on_threads(2, download_to_a_full_disk()),
    )]);
}

fn can_mount_tmpfs() -> Result<(), String> {
    let out = std::process::Command::new("unshare")
        .args(["-m", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run unshare (util-linux): {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "cannot mount a tmpfs in a private mount namespace (needs root with CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A download into a nearly full file system fails with "disk full", as one
/// line.
async fn download_to_a_full_disk() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("four.bin"), pattern(4 << 20, 5)).expect("write test file");
    let port = server.addr.port().to_string();
    let args = ["--server-ip", "127.0.0.1", "--port", &port, "--id", "full"];
    let out = client(dir.path())
        .args(args)
        .args(["upload", "four.bin"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run step-client");
    let r = Run::of(out);
    assert!(r.ok, "step-client failed: {r:?}");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs '{small}' && exec '{BIN}' --server-ip 127.0.0.1 --port {port} --id full download four.bin -o '{small}/four.bin'",
        small = small.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .await
        .expect("run");
    let r = Run::of(out);
    assert_one_line_error(&r, "disk full while writing");
}
