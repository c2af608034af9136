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
//! tests/tus/browser_security.py plays an attacker against a signed-in
//! user (a page on another origin of this machine): scripts in alice's
//! uploaded HTML, SVG and text files must not run in the gateway's origin
//! nor read her token (a control proves the harness sees a script that
//! runs); a forged cross-site form must not replace her file with her
//! cached Basic credentials (a control proves the browser sends them); the
//! page must not load in another site's frame, and her unfinished
//! uploads' names and URLs must not outlive her sign-out nor show to the
//! next user of the browser.
//!
//! tests/tus/page.py is a person at the page (one mode per test below):
//! signing in with a wrong password, folders, search, sorting, previews,
//! selection, uploads (pause, resume, cancel, retry, the time left), the
//! name-clash choice, a phone's width, and axe-core's accessibility check.
//! With STEP_PAGE_SHOTS=docs it saves the screenshots in docs/.
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
const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/tus/page.py");
const ATTACKS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/tus/browser_security.py"
);

fn main() {
    prereq::main(vec![
        in_chromium(
            "page_uploads_lists_resumes_and_deletes_in_chromium",
            page_in_chromium,
        ),
        in_chromium(
            "page_signs_in_when_the_gateway_requires_a_token",
            page_signs_in,
        ),
        in_chromium(
            "uploaded_html_and_svg_never_run_in_the_gateways_origin",
            stored_scripts_do_not_run,
        ),
        in_chromium(
            "a_forged_cross_site_form_cannot_replace_alices_file",
            forged_form_is_refused,
        ),
        in_chromium(
            "the_page_is_not_framed_and_forgets_alice_at_sign_out",
            page_state_is_per_user,
        ),
        in_chromium(
            "a_wrong_password_gets_a_message_and_the_form_stays_usable",
            wrong_password,
        ),
        in_chromium(
            "folders_search_sorting_previews_and_selection",
            folders_and_search,
        ),
        in_chromium(
            "uploads_run_pause_resume_cancel_retry_and_clear",
            uploads_as_a_person_sees_them,
        ),
        in_chromium("a_name_clash_is_a_choice", name_clash_choice),
        in_chromium("the_page_fits_a_phone", fits_a_phone),
        in_chromium(
            "axe_core_finds_no_serious_accessibility_problem",
            accessibility,
        ),
    ]);
}

/// A test that needs the browser (else ignored with the reason).
fn in_chromium<F, Fut>(name: &str, test: F) -> prereq::Trial
where
    F: FnOnce(PathBuf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    prereq::needs(name, browser, move |py| block_on_threads(2, test(py)))
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
    let body = gw
        .client
        .get(gw.at("/files/alice.bin"))
        .bearer_auth(gw.token("alice").await)
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

/// A gateway that wants credentials (so the page signs in and the
/// browser is challenged for, and caches, HTTP Basic).
async fn signed_in_gateway(step: &TestServer) -> Gateway {
    support::gateway_with(step.addr, |http, transfer| {
        http.require_auth = true;
        transfer.block_size = 65_536;
    })
    .await
}

async fn attack(py: &Path, mode: &str, gw: &Gateway, work: &Path) -> Value {
    let work = work.to_string_lossy();
    let args = [mode, gw.url.as_str(), &work];
    let report = support::python::run_for_json(py, ATTACKS, &args, Duration::from_secs(240)).await;
    println!("browser_security.py {mode}: {report}");
    report
}

async fn stored_scripts_do_not_run(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = signed_in_gateway(&step).await;
    let work = tempfile::tempdir().expect("tempdir");
    let r = attack(&py, "xss", &gw, work.path()).await;
    // The harness sees a script that runs (served by the other site).
    for control in ["control", "control-svg"] {
        assert!(r["controls"][control].as_u64() >= Some(1), "{control}: {r}");
    }
    let ran = r["ran"].as_object().expect("ran");
    assert_eq!(ran.len(), 7, "{r}");
    for (how, beacons) in ran {
        assert_eq!(
            beacons, 0,
            "{how}: a stored script ran in the gateway's origin"
        );
    }
    assert_eq!(r["tokens"], serde_json::json!([]), "no token read");
    assert_eq!(r["notes_shown_as_text"], true, "{r}");
    assert_eq!(r["png_shown"], 1, "an image is still shown inline: {r}");
    // Chromium saved them rather than opening them.
    let saved = r["downloaded"].as_array().expect("downloads");
    for name in ["evil.html", "evil.svg"] {
        assert!(saved.iter().any(|f| f == name), "{name} not saved: {r}");
    }
}

async fn forged_form_is_refused(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = signed_in_gateway(&step).await;
    let alice = gw.token("alice").await;
    let words = "alice's own words";
    let r = gw
        .client
        .put(gw.at("/files/alice.txt"))
        .bearer_auth(&alice)
        .body(words)
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 201);
    let work = tempfile::tempdir().expect("tempdir");
    let r = attack(&py, "csrf", &gw, work.path()).await;
    assert_eq!(r["alice_sees"], words, "{r}");
    // Control: the other site's GET form gets alice's file, so the browser
    // does send her credentials along.
    assert_eq!(r["get"], words, "{r}");
    for form in ["file", "text"] {
        let answer: Value = serde_json::from_str(r[form].as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{form}: not JSON ({e}): {r}"));
        assert_eq!(answer["error"], "cross_site", "{form}: {answer}");
    }
    let body = gw
        .client
        .get(gw.at("/files/alice.txt"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("body");
    assert_eq!(body, words, "alice's file is intact");
}

async fn page_state_is_per_user(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = signed_in_gateway(&step).await;
    let work = tempfile::tempdir().expect("tempdir");
    let r = attack(&py, "state", &gw, work.path()).await;
    assert_eq!(r["framed_page_loaded"], false, "{r}");
    let name = "alice-secret-plans.pdf";
    let url = r["upload_url"].as_str().expect("the upload's URL");
    assert!(
        r["alice_pending"]
            .as_str()
            .unwrap_or_default()
            .contains(name),
        "{r}"
    );
    assert!(
        !r["bob_pending"].as_str().unwrap_or_default().contains(name),
        "{r}"
    );
    assert!(
        r["confirm"].as_str().unwrap_or_default().contains("cancel"),
        "{r}"
    );
    for what in ["stored_after_signout", "stored_after_reload"] {
        let stored = r[what].as_str().expect("localStorage");
        assert!(
            !stored.contains(name) && !stored.contains(url),
            "{what}: {stored}"
        );
    }
    assert_eq!(r["uploads_shown_after_signout"], "", "{r}");
    assert_eq!(r["pending_after_signout"], "", "{r}");
    // Ended on the server too.
    let alice = gw.token("alice").await;
    let head = gw
        .client
        .head(gw.at(url))
        .bearer_auth(&alice)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 404, "the unfinished upload was cancelled");
}

// ------------------------------------------------------------ the page as a person uses it

async fn person(py: &Path, mode: &str, gw: &Gateway, work: &Path) -> Value {
    let work = work.to_string_lossy();
    let args = [mode, gw.url.as_str(), &work];
    let report = support::python::run_for_json(py, PAGE, &args, Duration::from_secs(300)).await;
    println!("page.py {mode}: {report}");
    report
}

/// The page's gateway: small blocks, so uploads have several.
async fn page_gateway(step: &TestServer, require_auth: bool) -> Gateway {
    support::gateway_with(step.addr, |http, transfer| {
        http.require_auth = require_auth;
        transfer.block_size = 65_536;
    })
    .await
}

/// The bytes under `key` (as `token`'s user, else anonymous); None if 404.
async fn body_of(gw: &Gateway, key: &str, token: Option<&str>) -> Option<Vec<u8>> {
    let path: Vec<String> = key
        .split('/')
        .map(|s| s.replace('%', "%25").replace(' ', "%20"))
        .collect();
    let mut req = gw.client.get(gw.at(&format!("/files/{}", path.join("/"))));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("GET");
    match r.status().as_u16() {
        200 => Some(r.bytes().await.expect("body").to_vec()),
        404 => None,
        other => panic!("GET {key}: {other}"),
    }
}

async fn text_of(gw: &Gateway, key: &str) -> Option<String> {
    body_of(gw, key, None)
        .await
        .map(|b| String::from_utf8(b).expect("utf-8"))
}

async fn wrong_password(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = page_gateway(&step, true).await;
    let work = tempfile::tempdir().expect("tempdir");
    let r = person(&py, "signin", &gw, work.path()).await;
    let said = r["wrong_password_message"].as_str().unwrap_or_default();
    assert!(
        said.contains("Wrong user name or password"),
        "a wrong password must be answered in words: {r}"
    );
    assert_eq!(r["submit_enabled"], true, "{r}");
    assert_eq!(
        r["signed_in_as"], "Signed in as alice",
        "then the right one signs in without a reload: {r}"
    );
    assert!(
        r["empty_text"]
            .as_str()
            .unwrap_or_default()
            .starts_with("No files yet"),
        "{r}"
    );
    // A signed-in preview and download: bytes fetched with her token.
    assert_eq!(r["preview_src"], "blob:", "{r}");
    assert_eq!(r["preview_width"], 480, "{r}");
    assert_eq!(r["downloaded_md5"], r["uploaded_md5"], "{r}");
    let alice = gw.token("alice").await;
    let stored = body_of(&gw, "sunset.png", Some(&alice))
        .await
        .expect("stored");
    assert_eq!(
        Some(hex::encode(Md5::digest(&stored)).as_str()),
        r["uploaded_md5"].as_str()
    );
}

async fn folders_and_search(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = page_gateway(&step, false).await;
    let work = tempfile::tempdir().expect("tempdir");
    let r = person(&py, "browse", &gw, work.path()).await;
    // A name and a favicon; no text meant for developers.
    assert_eq!(r["title"], "STEP Files");
    assert_eq!(r["icon_status"], 200);
    let body = r["body_text"].as_str().unwrap_or_default();
    for dev in ["/tus/", "curl", "STEP gateway", "openapi", "HTTP "] {
        assert!(
            !body.contains(dev),
            "developer text {dev:?} on the page: {body}"
        );
    }
    // Keys with "/" are folders; folders first, then files by name.
    assert_eq!(
        r["root_rows"],
        serde_json::json!(["docs", "pics", "big.bin", "middle.txt", "tiny.txt"])
    );
    assert_eq!(
        r["by_size"],
        serde_json::json!(["docs", "pics", "big.bin", "middle.txt", "tiny.txt"])
    );
    assert_eq!(
        r["by_date"][4], "tiny.txt",
        "the oldest file comes last by date: {r}"
    );
    let crumbs = r["crumbs"].as_str().unwrap_or_default();
    assert!(
        crumbs.contains("All files") && crumbs.contains("docs"),
        "{r}"
    );
    assert_eq!(
        r["docs_rows"],
        serde_json::json!(["old", "manual.pdf", "readme.txt", "Report 2024.txt"])
    );
    // Search: a substring in any case; a miss is not "no files".
    assert_eq!(r["search_hit"], serde_json::json!(["Report 2024.txt"]));
    let miss = r["miss_text"].as_str().unwrap_or_default();
    assert!(
        miss.contains("matches") && !miss.contains("No files yet"),
        "{r}"
    );
    // Previews.
    assert_eq!(r["text_preview"], "Read me first.\nSecond line.");
    assert!(
        r["pdf_preview"]
            .as_str()
            .unwrap_or_default()
            .contains("download")
    );
    assert_eq!(r["thumbnails"], 2);
    assert_eq!(r["image_preview_width"], 320);
    // A new folder, a file and a whole folder uploaded into it.
    assert!(
        r["new_folder_text"]
            .as_str()
            .unwrap_or_default()
            .contains("new and empty")
    );
    assert_eq!(
        text_of(&gw, "pics/holiday 2025/plan.txt").await.as_deref(),
        Some("the plan")
    );
    assert_eq!(
        text_of(&gw, "pics/holiday 2025/album/inner/two.txt")
            .await
            .as_deref(),
        Some("two")
    );
    assert_eq!(
        text_of(&gw, "pics/holiday 2025/album/one.txt")
            .await
            .as_deref(),
        Some("one")
    );
    // The selection as one zip, then deleted.
    assert_eq!(
        r["zip_names"],
        serde_json::json!(["old/a.txt", "old/deep/b.txt", "readme.txt"])
    );
    assert_eq!(r["zip_readme"], "Read me first.\nSecond line.\n");
    for gone in ["docs/readme.txt", "docs/old/a.txt", "docs/old/deep/b.txt"] {
        assert_eq!(
            text_of(&gw, gone).await,
            None,
            "{gone} deleted from the page"
        );
    }
    assert!(text_of(&gw, "docs/manual.pdf").await.is_some());
}

async fn uploads_as_a_person_sees_them(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = page_gateway(&step, false).await;
    let work = tempfile::tempdir().expect("tempdir");
    let r = person(&py, "uploads", &gw, work.path()).await;
    // An empty file is a full bar.
    assert_eq!(r["empty_bar"], serde_json::json!(["1", "1"]), "{r}");
    assert_eq!(r["empty_pct"], "100 %");
    assert_eq!(text_of(&gw, "empty.txt").await.as_deref(), Some(""));
    // A running upload is called running, with the time left.
    let running = r["running_info"].as_str().unwrap_or_default();
    assert!(running.contains("left"), "no time left shown: {r}");
    assert_eq!(
        r["pending_shown_while_running"], false,
        "a running upload must not be called unfinished: {r}"
    );
    // Paused: nothing more reached the server; resumed: all of it.
    assert!(r["paused_offsets"].is_array(), "no pause: {r}");
    assert_eq!(r["paused_offsets"][0], r["paused_offsets"][1], "{r}");
    let film = body_of(&gw, "film.mp4", None).await.expect("film.mp4");
    assert_eq!(
        Some(hex::encode(Md5::digest(&film)).as_str()),
        r["film_md5"].as_str()
    );
    // Cancelled: ended on the server too.
    let url = r["cancelled_url"].as_str().expect("no cancel");
    let head = gw
        .client
        .head(gw.at(url))
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .expect("HEAD");
    assert_eq!(head.status(), 404, "the cancelled upload is gone");
    assert_eq!(text_of(&gw, "doomed.bin").await, None);
    assert_eq!(
        r["rows_before_after_clear"],
        serde_json::json!([3, 0]),
        "{r}"
    );
    // Offline: the creation is retried, in words, until it passes.
    let offline = r["offline_info"].as_str().unwrap_or_default();
    assert!(
        offline.contains("Connection lost") && !offline.contains("Failed to fetch"),
        "{r}"
    );
    assert_eq!(
        text_of(&gw, "later.txt").await.as_deref(),
        Some("sent once the network is back")
    );
    assert_eq!(r["failed_steps"], serde_json::json!({}), "{r}");
}

async fn name_clash_choice(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = page_gateway(&step, false).await;
    let work = tempfile::tempdir().expect("tempdir");
    let r = person(&py, "clash", &gw, work.path()).await;
    let q = r["question"].as_str().unwrap_or_default();
    assert!(!q.is_empty(), "no choice offered: {r}");
    for choice in ["Replace", "Keep both", "Skip"] {
        assert!(q.contains(choice), "{choice}: {r}");
    }
    assert_eq!(r["kept_as"], "notes (1).txt");
    assert_eq!(
        text_of(&gw, "notes (1).txt").await.as_deref(),
        Some("second")
    );
    // Replaced by the third, not by the fourth (skipped).
    assert_eq!(text_of(&gw, "notes.txt").await.as_deref(), Some("third"));
    assert!(
        r["skipped_info"]
            .as_str()
            .unwrap_or_default()
            .contains("Skipped")
    );
    // One answer for both clashes.
    assert_eq!(r["all_offered"], true);
    assert_eq!(r["dialog_again"], false);
    assert_eq!(text_of(&gw, "a (1).txt").await.as_deref(), Some("new a"));
    assert_eq!(text_of(&gw, "b (1).txt").await.as_deref(), Some("new b"));
    assert_eq!(text_of(&gw, "a.txt").await.as_deref(), Some("old a"));
}

async fn fits_a_phone(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = page_gateway(&step, false).await;
    let work = tempfile::tempdir().expect("tempdir");
    let r = person(&py, "phone", &gw, work.path()).await;
    assert_eq!(r["inner_width"], 390);
    assert!(
        r["scroll_width"].as_u64() <= Some(390),
        "no sideways scroll at 390 px: {r}"
    );
    assert_eq!(r["buttons_off_screen"], serde_json::json!([]), "{r}");
    // A long name wraps in a column wide enough to read, not a letter a line.
    assert!(r["long_name_box"]["width"].as_f64() >= Some(150.0), "{r}");
    assert!(r["font_px"].as_f64() >= Some(16.0), "{r}");
}

async fn accessibility(py: PathBuf) {
    let step = TestServer::start().await;
    let gw = page_gateway(&step, false).await;
    let work = tempfile::tempdir().expect("tempdir");
    let r = person(&py, "a11y", &gw, work.path()).await;
    assert_eq!(
        r["violations"],
        serde_json::json!([]),
        "axe-core: serious or critical violations"
    );
    assert!(r.get("failed_steps").is_none(), "{r}");
    assert_eq!(r["checked"], serde_json::json!(["light", "dark"]), "{r}");
}
