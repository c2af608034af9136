//! The page at GET / in a real browser: headless Chromium (Debian
//! `chromium` + `chromium-driver`) driven by selenium (PyPI, pinned in
//! tests/tus/requirements.txt) against the gateway served in-process on a
//! free port in front of a real step-server. tests/tus/browser.py uploads
//! two files at once through the file input, waits for their progress to
//! complete and for them to be listed, resumes a half-done upload after a
//! page reload, and deletes a file from the page; this test then checks
//! over HTTP that every uploaded key returns exactly the file's bytes and
//! the deleted one is gone. With STEP_SCREENSHOT=path the script saves a
//! PNG of the page (docs/page.png was made that way).
//!
//! Reported as ignored, with the reason, where chromium, chromedriver or
//! the Python venv are missing (a failure under STEP_REQUIRE_ALL_TESTS).

use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};
use serde_json::Value;
use step_tests::TestServer;
use step_tests::prereq::{self, block_on_threads, command_works};

mod support;
use support::Gateway;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/tus/browser.py");

fn main() {
    prereq::main(vec![
        prereq::needs(
            "page_uploads_lists_resumes_and_deletes_in_chromium",
            browser,
            |py| block_on_threads(2, page_in_chromium(py)),
        ),
        prereq::needs(
            "page_signs_in_when_the_gateway_requires_a_token",
            browser,
            |py| block_on_threads(2, page_signs_in(py)),
        ),
    ]);
}

/// The venv's python (with selenium), when chromium and its driver are here.
fn browser() -> Result<PathBuf, String> {
    command_works("chromium", &["--version"])
        .map_err(|e| format!("{e} (Debian package chromium)"))?;
    command_works("chromedriver", &["--version"])
        .map_err(|e| format!("{e} (Debian package chromium-driver)"))?;
    support::python::tus_venv()
}

async fn md5_of_get(gw: &Gateway, key: &str) -> (u16, String) {
    let path = key
        .split('/')
        .map(|s| s.replace(' ', "%20"))
        .collect::<Vec<_>>()
        .join("/");
    let (status, _, body) = gw.get_bytes(&format!("/files/{path}")).await;
    (status.as_u16(), hex::encode(Md5::digest(&body)))
}

fn md5_of_file(path: &Path) -> String {
    hex::encode(Md5::digest(
        std::fs::read(path).expect("read the uploaded file"),
    ))
}

/// Run tests/tus/browser.py against `gw` (with `extra` arguments); its JSON.
async fn run_script(py: &Path, gw: &Gateway, work: &Path, extra: &[&str]) -> Value {
    let work = work.to_string_lossy();
    let args: Vec<&str> = [gw.url.as_str(), &work]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    let report = support::python::run_for_json(py, SCRIPT, &args, Duration::from_secs(240)).await;
    println!("browser.py: {report}");
    report
}

async fn page_in_chromium(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = support::gateway_with(step.addr, |_, transfer| transfer.block_size = 65_536).await;
    let work = tempfile::tempdir().expect("tempdir");
    let report = run_script(&py, &gw, work.path(), &[]).await;
    let deleted = report["deleted"].as_str();
    let uploaded = report["uploaded"].as_array().expect("uploaded keys");
    assert_eq!(uploaded.len(), 3);
    for key in uploaded {
        let key = key.as_str().expect("a key");
        let (status, md5) = md5_of_get(&gw, key).await;
        if Some(key) == deleted {
            assert_eq!(status, 404, "{key} was deleted from the page");
        } else {
            assert_eq!(status, 200, "GET {key}");
            assert_eq!(md5, md5_of_file(&work.path().join(key)), "{key}: md5");
        }
    }
    // Once the gateway lists files, the page must have shown and deleted.
    if report["listed"] == true {
        assert_eq!(deleted, Some("notes.txt"));
    }
}

async fn page_signs_in(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = support::gateway_with(step.addr, |http, transfer| {
        http.require_auth = true;
        transfer.block_size = 65_536;
    })
    .await;
    let work = tempfile::tempdir().expect("tempdir");
    let report = run_script(&py, &gw, work.path(), &["auth"]).await;
    assert_eq!(report["user"], "alice");
    // The file is alice's: without a token nothing is served, with hers the
    // exact bytes.
    assert_eq!(gw.get("/files/alice.bin").await.status(), 401);
    let login: Value = gw
        .client
        .post(gw.at("/login"))
        .json(&serde_json::json!({"username": "alice"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("token");
    let body = gw
        .client
        .get(gw.at("/files/alice.bin"))
        .bearer_auth(login["token"].as_str().expect("token"))
        .send()
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body");
    assert_eq!(
        hex::encode(Md5::digest(&body)),
        md5_of_file(&work.path().join("alice.bin"))
    );
}
