//! A resumed upload is only ever the user's own: step-client keeps the id of
//! an upload it started (per server, user and key, with what identifies the
//! local file) and resumes only that one, only for that file. Another
//! writer's unfinished upload of the same key, or the user's own upload of
//! a file that has changed since, is started over; a writer whose upload
//! another one took over stops with a clear error, never a success.
//! Real binaries, real server; each "machine" is a directory of its own
//! (its own state directory).

use std::path::Path;

use step_core::digest::md5_hex;
use step_tests::{TestServer, pattern};

mod support;

use support::{CutProxy, Running, Toward, assert_ok, assert_one_line_error, md5_line, run};

const SIZE: usize = 16 << 20;

fn port_of(server: &TestServer) -> String {
    server.addr.port().to_string()
}

/// Start `upload key` of the file `name` in `dir`, throttled, and kill it
/// (as a crash would) once it reported `percent`.
async fn crash_upload_at(server: &TestServer, dir: &Path, name: &str, key: &str, percent: u32) {
    let mut up = slow_upload(server, dir, &[name, "--key", key, "--limit-rate", "8M"]);
    up.until_percent(percent).await;
    up.crash().await;
}

/// `upload ARGS` as "same-user" on one connection, in the background.
fn slow_upload(server: &TestServer, dir: &Path, args: &[&str]) -> Running {
    let port = port_of(server);
    let mut all = vec!["--connections", "1", "upload"];
    all.extend_from_slice(args);
    Running::start(dir, &support::at(&port, "same-user", &all))
}

async fn download(server: &TestServer, dir: &Path, key: &str) -> Vec<u8> {
    let r = run(
        server,
        dir,
        "same-user",
        &["download", key, "-o", "check.bin", "--force"],
    )
    .await;
    assert_ok(&r);
    std::fs::read(dir.join("check.bin")).expect("downloaded")
}

/// The upload records in a machine's state directory.
fn records(dir: &Path) -> Vec<serde_json::Value> {
    let state = dir.join(".step-state");
    let mut out = Vec::new();
    let mut stack = vec![state];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(text) = std::fs::read_to_string(&p)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            {
                out.push(v);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_since_the_interruption_starts_over() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let v1 = pattern(SIZE, 1);
    std::fs::write(dir.path().join("f.bin"), &v1).expect("write");
    crash_upload_at(&server, dir.path(), "f.bin", "f.bin", 30).await;

    // Same name, same size, other bytes.
    let v2 = pattern(SIZE, 2);
    std::fs::write(dir.path().join("f.bin"), &v2).expect("write");
    let again = run(&server, dir.path(), "same-user", &["upload", "f.bin"]).await;
    assert_ok(&again);
    assert!(!again.stdout.contains("Resuming"), "{again:?}");
    assert_eq!(md5_line(&again), Some(md5_hex(&v2).as_str()));
    assert!(download(&server, dir.path(), "f.bin").await == v2);
    assert!(
        records(dir.path()).is_empty(),
        "a finished upload leaves no record"
    );
}

/// Machine A's upload was cut; machine B (same account) then started its
/// own file under the same key and was cut too. A's rerun must not resume
/// B's blocks: it starts over and stores exactly A's file. B's rerun then
/// finds the key taken and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_writers_unfinished_upload_is_never_resumed() {
    let server = TestServer::start().await;
    let (a, b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let (mine, theirs) = (pattern(SIZE, 3), pattern(SIZE, 4));
    std::fs::write(a.path().join("shared.bin"), &mine).expect("write");
    std::fs::write(b.path().join("shared.bin"), &theirs).expect("write");
    crash_upload_at(&server, a.path(), "shared.bin", "shared.bin", 20).await;
    crash_upload_at(&server, b.path(), "shared.bin", "shared.bin", 40).await;

    let again = run(&server, a.path(), "same-user", &["upload", "shared.bin"]).await;
    assert_ok(&again);
    assert_eq!(md5_line(&again), Some(md5_hex(&mine).as_str()));
    assert!(download(&server, a.path(), "shared.bin").await == mine);

    let late = run(&server, b.path(), "same-user", &["upload", "shared.bin"]).await;
    assert_one_line_error(&late, "already exists on the server");
    assert!(
        records(b.path()).is_empty(),
        "a refused upload's record is dropped"
    );
    assert!(download(&server, b.path(), "shared.bin").await == mine);
}

/// B uploads slowly; A uploads another file to the same key meanwhile and
/// finishes. The key holds A's file; B stops with an error that says
/// another upload took over — never a success, never a mixed file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_upload_was_taken_over_stops_clearly() {
    let server = TestServer::start().await;
    let (a, b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    let (mine, theirs) = (pattern(SIZE, 5), pattern(SIZE, 6));
    std::fs::write(a.path().join("k.bin"), &mine).expect("write");
    std::fs::write(b.path().join("k.bin"), &theirs).expect("write");
    let mut slow = slow_upload(&server, b.path(), &["k.bin", "--limit-rate", "2M"]);
    slow.until_percent(10).await;

    let fast = run(&server, a.path(), "same-user", &["upload", "k.bin"]).await;
    assert_ok(&fast);
    assert_eq!(md5_line(&fast), Some(md5_hex(&mine).as_str()));

    let (r, _) = slow.finish().await;
    assert_one_line_error(&r, "another upload");
    assert!(download(&server, a.path(), "k.bin").await == mine);
}

/// The rerun's SAVE names the upload the first run started (resume and
/// upload_id, as the protocol asks), and every UPLOAD carries the id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_names_its_own_upload() {
    let server = TestServer::start().await;
    let proxy = CutProxy::start(server.addr, Toward::Server, 6 << 20).await;
    let dir = tempfile::tempdir().expect("dir");
    let data = pattern(SIZE, 7);
    std::fs::write(dir.path().join("id.bin"), &data).expect("write");
    let args = ["--connections", "1", "upload", "id.bin"];
    let cut = support::run_at(proxy.addr, dir.path(), "same-user", &args).await;
    assert!(!cut.ok, "{cut:?}");
    let first = proxy.sent();
    let save = |conn: &[u8]| {
        support::frames_json(conn)
            .into_iter()
            .find(|f| f["operation"] == "SAVE" && f["type"] == "FILE")
    };
    let first_save = first.iter().find_map(|c| save(c)).expect("a SAVE");
    assert!(
        first_save.get("upload_id").is_none(),
        "nothing to resume yet: {first_save}"
    );

    proxy.pass_all();
    let again = support::run_at(proxy.addr, dir.path(), "same-user", &args).await;
    assert_ok(&again);
    assert!(again.stdout.contains("Resuming: "), "{again:?}");
    let sent = proxy.sent();
    let frames = sent[first.len()..]
        .iter()
        .flat_map(|c| support::frames_json(c))
        .collect::<Vec<_>>();
    let resave = frames
        .iter()
        .find(|f| f["operation"] == "SAVE" && f["type"] == "FILE")
        .expect("the rerun's SAVE");
    assert_eq!(resave["resume"], true, "{resave}");
    let id = resave["upload_id"].as_str().expect("upload_id in the SAVE");
    let uploads: Vec<_> = frames
        .iter()
        .filter(|f| f["operation"] == "UPLOAD")
        .collect();
    assert!(!uploads.is_empty());
    assert!(
        uploads.iter().all(|f| f["upload_id"] == id),
        "every UPLOAD names it"
    );
    assert!(
        records(dir.path()).is_empty(),
        "a finished upload leaves no record"
    );
}

/// The upload completed on the server but its last answers never reached
/// the client (here: the rest of the upload, under its own id, finished by
/// a raw client): the rerun recognises its own finished upload by id and
/// md5 and says so, rather than "already exists".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_finished_without_its_answer_is_recognised() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = pattern(SIZE, 8);
    std::fs::write(dir.path().join("done.bin"), &data).expect("write");
    crash_upload_at(&server, dir.path(), "done.bin", "done.bin", 30).await;
    let rec = records(dir.path())
        .pop()
        .expect("a record of the unfinished upload");
    let id = rec["upload_id"].as_str().expect("upload_id").to_owned();
    let block_size = rec["block_size"].as_u64().expect("block_size");

    let mut c = step_tests::login(server.addr, "same-user").await;
    let plan = c
        .file_save_own("done.bin", data.len() as u64, Some(block_size), &id, false)
        .await
        .expect("resume");
    assert_eq!(plan.upload_id.as_deref(), Some(id.as_str()));
    let missing: Vec<u64> = step_core::plan::from_ranges(&plan.missing).collect();
    let blocks = step_tests::blocks(&data, block_size as usize)
        .into_iter()
        .filter(|(i, _)| missing.contains(i))
        .map(Ok);
    c.upload_blocks(&plan, futures::stream::iter(blocks), 8, |_| {})
        .await
        .expect("finish the upload");

    let again = run(&server, dir.path(), "same-user", &["upload", "done.bin"]).await;
    assert_ok(&again);
    assert!(again.stdout.contains("already on the server"), "{again:?}");
    assert_eq!(md5_line(&again), Some(md5_hex(&data).as_str()));
    assert!(records(dir.path()).is_empty());
}

/// The unfinished upload is deleted while it runs: the uploader stops with
/// an error that says so (and drops its record), never a success.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_deleted_while_it_runs_says_so() {
    let server = TestServer::start().await;
    let (a, b) = (
        tempfile::tempdir().expect("a"),
        tempfile::tempdir().expect("b"),
    );
    std::fs::write(a.path().join("gone.bin"), pattern(SIZE, 9)).expect("write");
    let mut slow = slow_upload(&server, a.path(), &["gone.bin", "--limit-rate", "2M"]);
    slow.until_percent(10).await;
    let deleted = run(&server, b.path(), "same-user", &["delete", "gone.bin"]).await;
    assert_ok(&deleted);
    assert!(
        deleted
            .stdout
            .contains("Deleted the unfinished upload of gone.bin"),
        "{deleted:?}"
    );
    let (r, _) = slow.finish().await;
    assert_one_line_error(&r, "is gone from the server");
    assert!(records(a.path()).is_empty(), "nothing left to resume");
}

/// Six writers on one machine upload six different files of one size to
/// one key at once. Whatever the interleaving, the key then holds exactly
/// one writer's bytes (or nothing), a writer that succeeded is the one
/// whose bytes it holds, and every other writer failed with an error that
/// names the conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_writers_of_one_key_never_mix() {
    const WRITERS: usize = 6;
    let server = TestServer::start().await;
    let machine = tempfile::tempdir().expect("machine");
    let port = port_of(&server);
    let bodies: Vec<Vec<u8>> = (0..WRITERS)
        .map(|w| pattern(8 << 20, 40 + w as u8))
        .collect();
    let mut running = Vec::new();
    for (w, body) in bodies.iter().enumerate() {
        let dir = machine.path().join(format!("w{w}"));
        std::fs::create_dir(&dir).expect("dir");
        std::fs::write(dir.join("same.bin"), body).expect("write");
        let args = support::at(&port, "same-user", &["upload", "same.bin"]);
        let child = support::client(&dir)
            // One machine: one state directory for every writer.
            .env("STEP_STATE_DIR", machine.path().join(".step-state"))
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output();
        running.push(tokio::spawn(child));
    }
    let mut runs = Vec::new();
    for r in running {
        runs.push(support::Run::of(
            r.await.expect("join").expect("step-client ran"),
        ));
    }
    let mut c = step_tests::login(server.addr, "same-user").await;
    let stored = match c.file_get("same.bin", None).await {
        Ok(_) => Some(step_tests::download(&mut c, "same.bin").await),
        Err(e) => {
            assert_eq!(e.status().map(|s| s.code()), Some(404), "{e}");
            None
        }
    };
    let owner = stored.as_ref().map(|s| bodies.iter().position(|b| b == s));
    assert!(
        !matches!(owner, Some(None)),
        "the key holds bytes no writer wrote: {runs:#?}"
    );
    for (w, r) in runs.iter().enumerate() {
        println!("writer {w}: ok {}, {}", r.ok, r.stderr.trim());
        if r.ok {
            assert_eq!(
                owner,
                Some(Some(w)),
                "writer {w} succeeded: the key is its file"
            );
            assert_eq!(md5_line(r), Some(md5_hex(&bodies[w]).as_str()));
        } else {
            assert!(
                r.stderr.contains("another upload") || r.stderr.contains("already exists"),
                "writer {w} failed without naming the conflict: {r:?}"
            );
        }
    }
}

/// `upload --overwrite` whose bytes are damaged on the way (a proxy flips
/// one bit of one UPLOAD): the server refuses the replacement before it
/// takes the old file's place, the client says so, and the key keeps the
/// old file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overwrite_damaged_on_the_way_keeps_the_old_file() {
    let server = TestServer::start().await;
    let proxy = step_tests::proxy::Proxy::start(server.addr).await;
    let dir = tempfile::tempdir().expect("dir");
    let (old, new) = (pattern(3 << 20, 60), pattern(3 << 20, 61));
    std::fs::write(dir.path().join("f.bin"), &old).expect("write");
    assert_ok(&run(&server, dir.path(), "same-user", &["upload", "f.bin"]).await);

    std::fs::write(dir.path().join("f.bin"), &new).expect("write");
    proxy.flip_uploads(1);
    let args = ["upload", "f.bin", "--overwrite"];
    let damaged = support::run_at(proxy.addr, dir.path(), "same-user", &args).await;
    assert_eq!(proxy.flips_left(), 0, "a block was damaged");
    assert_one_line_error(&damaged, "md5 mismatch");
    assert!(
        download(&server, dir.path(), "f.bin").await == old,
        "the old file stays"
    );

    let again = support::run_at(proxy.addr, dir.path(), "same-user", &args).await;
    assert_ok(&again);
    assert_eq!(md5_line(&again), Some(md5_hex(&new).as_str()));
    assert!(download(&server, dir.path(), "f.bin").await == new);
}
