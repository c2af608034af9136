//! tus at /tus/ with a real tus client: tuspy (PyPI, pinned in
//! tests/tus/requirements.txt, installed by tests/tus/venv.sh) drives the
//! gateway served in-process on a free port in front of a real step-server.
//! Every PATCH carries an md5 Upload-Checksum; chunks are not multiples of
//! the block size, so kept tails are exercised. Where python3 or the venv
//! is missing the tests are reported as ignored with the reason (failures
//! under STEP_REQUIRE_ALL_TESTS).

use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};
use serde_json::Value;
use step_tests::prereq::{self, block_on_threads};
use step_tests::{TestServer, pattern};

mod support;
use support::Gateway;

/// Blocks of this size (the gateway's --block-size in these tests), so small
/// files span many blocks.
const BLOCK: u64 = 65_536;

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/tus/tuspy_client.py");

fn main() {
    prereq::main(vec![
        prereq::needs(
            "tuspy_whole_upload_is_byte_identical",
            support::python::tus_venv,
            |py| block_on_threads(2, whole_upload(py)),
        ),
        prereq::needs(
            "tuspy_new_uploader_resumes_after_gateway_restart",
            support::python::tus_venv,
            |py| block_on_threads(2, resume_after_restart(py)),
        ),
        prereq::needs(
            "tuspy_new_uploader_resumes_after_connection_cut_mid_patch",
            support::python::tus_venv,
            |py| block_on_threads(2, resume_after_cut(py)),
        ),
    ]);
}

/// Run the tuspy client with `args`; its JSON answer.
async fn tuspy_run(py: &Path, args: &[&str]) -> Value {
    support::python::run_for_json(py, CLIENT, args, Duration::from_secs(120)).await
}

async fn gateway(step: &TestServer) -> Gateway {
    support::gateway_with(step.addr, |_, transfer| {
        transfer.block_size = BLOCK;
        transfer.backend_timeout = 5;
    })
    .await
}

fn file_with(dir: &Path, name: &str, body: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).expect("write the file to upload");
    path.to_string_lossy().into_owned()
}

/// GET /files/{key} returns exactly `body` (compared by md5 and length).
async fn assert_stored(gw: &Gateway, key: &str, body: &[u8]) {
    let (status, _, got) = gw.get_bytes(&format!("/files/{key}")).await;
    assert_eq!(status, 200, "GET /files/{key}");
    assert_eq!(got.len(), body.len(), "{key}: length");
    assert_eq!(
        hex::encode(Md5::digest(&got)),
        hex::encode(Md5::digest(body)),
        "{key}: md5"
    );
}

/// The offset HEAD reports for a tus URL (absolute, any gateway).
async fn head_offset(gw: &Gateway, url: &str) -> u64 {
    let path = &url[url.find("/tus/").expect("a /tus/ URL")..];
    let r = gw
        .client
        .head(gw.at(path))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .expect("HEAD");
    assert_eq!(r.status(), 200, "HEAD {path}");
    r.headers()["upload-offset"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("a number")
}

async fn whole_upload(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = gateway(&step).await;
    let dir = tempfile::tempdir().expect("tempdir");
    // 1.2 MB in 300 000-byte chunks: every chunk ends inside a block.
    let body = pattern(1_234_567, 7);
    let path = file_with(dir.path(), "whole.bin", &body);
    let done = tuspy_run(&py, &["whole", &gw.url, &path, "dir/whole.bin", "300000"]).await;
    assert_eq!(done["offset"], body.len() as u64);
    assert_stored(&gw, "dir/whole.bin", &body).await;
    // HEAD of the finished upload: complete.
    let url = done["url"].as_str().expect("url");
    assert_eq!(head_offset(&gw, url).await, body.len() as u64);
}

async fn resume_after_restart(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = gateway(&step).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let body = pattern(1_000_003, 8);
    let path = file_with(dir.path(), "restart.bin", &body);
    // The first uploader stops at 350 000 bytes (3.5 chunks, 5 blocks and
    // 22 320 bytes of a sixth).
    let first = tuspy_run(
        &py,
        &["partial", &gw.url, &path, "restart.bin", "100000", "350000"],
    )
    .await;
    assert_eq!(first["offset"], 350_000);
    let url = first["url"].as_str().expect("url").to_owned();
    // While this gateway lives, the partial block counts.
    assert_eq!(head_offset(&gw, &url).await, 350_000);

    // A new gateway process state: the partial block is gone, the stored
    // blocks are the server's, and the offset says so.
    drop(gw);
    let gw = gateway(&step).await;
    let path_only = &url[url.find("/tus/").expect("tus URL")..];
    let new_url = gw.at(path_only);
    assert_eq!(head_offset(&gw, &new_url).await, 5 * BLOCK);
    let second = tuspy_run(&py, &["resume", &new_url, &path, "100000"]).await;
    assert_eq!(second["resumed_from"], 5 * BLOCK);
    assert_eq!(second["offset"], body.len() as u64);
    assert_stored(&gw, "restart.bin", &body).await;
}

async fn resume_after_cut(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = gateway(&step).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let body = pattern(777_777, 9);
    let path = file_with(dir.path(), "cut.bin", &body);
    // The connection drops after 300 000 of 777 777 bytes of one PATCH.
    let cut = tuspy_run(&py, &["cut", &gw.url, &path, "cut.bin", "300000"]).await;
    let url = cut["url"].as_str().expect("url").to_owned();
    // A new uploader asks the server where to continue: everything that
    // arrived was kept (4 blocks stored, 37 856 bytes held as the tail).
    let resumed = tuspy_run(&py, &["resume", &url, &path, "250000"]).await;
    assert_eq!(resumed["resumed_from"], 300_000);
    assert_eq!(resumed["offset"], body.len() as u64);
    assert_stored(&gw, "cut.bin", &body).await;
}
