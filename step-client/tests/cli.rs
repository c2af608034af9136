//! End-to-end: the real `step-client` binary against a real `step-server` on
//! a free port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use step_core::digest::md5_hex;
use step_tests::{TestServer, pattern};

mod support;

use support::{Running, assert_ok, assert_one_line_error, client, md5_line, run, run_raw, write};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_download_plan_delete_round_trip() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    // Several connections and big blocks, both ways.
    let data = pattern(10 << 20 | 12345, 1);
    write(dir.path(), "big.bin", &data);
    let md5 = md5_hex(&data);

    let up = run(
        &server,
        dir.path(),
        "alice",
        &["upload", "big.bin", "--connections", "4"],
    )
    .await;
    assert_ok(&up);
    assert!(
        !up.stdout.contains("Token"),
        "the token only with -v: {up:?}"
    );
    assert_eq!(md5_line(&up), Some(md5.as_str()));
    assert!(up.stdout.contains("Uploading big.bin: 100%"), "{up:?}");

    let plan = run(&server, dir.path(), "alice", &["plan", "big.bin"]).await;
    assert_ok(&plan);
    assert!(
        plan.stdout.contains(&format!("size: {}", data.len())),
        "{plan:?}"
    );
    assert!(plan.stdout.contains(&format!("md5: {md5}")), "{plan:?}");

    let down = run(
        &server,
        dir.path(),
        "alice",
        &[
            "download",
            "big.bin",
            "-o",
            "copy.bin",
            "--connections",
            "4",
        ],
    )
    .await;
    assert_ok(&down);
    assert_eq!(md5_line(&down), Some(md5.as_str()));
    assert!(std::fs::read(dir.path().join("copy.bin")).expect("copy") == data);

    // An existing file is kept unless --force.
    let again = run(
        &server,
        dir.path(),
        "alice",
        &["download", "big.bin", "-o", "copy.bin"],
    )
    .await;
    assert_one_line_error(&again, "pass --force");
    std::fs::write(dir.path().join("copy.bin"), b"old").expect("overwrite");
    let forced = run(
        &server,
        dir.path(),
        "alice",
        &["download", "big.bin", "-o", "copy.bin", "--force"],
    )
    .await;
    assert_ok(&forced);
    assert!(std::fs::read(dir.path().join("copy.bin")).expect("copy") == data);

    // Into a directory, under the key's name; no temporary files left behind.
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).expect("mkdir");
    let into = run(
        &server,
        dir.path(),
        "alice",
        &["download", "big.bin", "-o", "sub"],
    )
    .await;
    assert_ok(&into);
    let names: Vec<_> = std::fs::read_dir(&sub)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("big.bin")]);

    // Other users do not see it.
    let other = run(&server, dir.path(), "bob", &["plan", "big.bin"]).await;
    assert_one_line_error(&other, "is not on the server");

    let del = run(&server, dir.path(), "alice", &["delete", "big.bin"]).await;
    assert_ok(&del);
    let gone = run(
        &server,
        dir.path(),
        "alice",
        &["download", "big.bin", "-o", "x.bin"],
    )
    .await;
    assert_one_line_error(&gone, "file \"big.bin\" is not on the server");
    assert!(!dir.path().join("x.bin").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_and_empty_files_and_custom_keys() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "empty.bin", b"");
    let up = run(
        &server,
        dir.path(),
        "u",
        &["upload", "empty.bin", "--quiet"],
    )
    .await;
    assert_ok(&up);
    assert_eq!(up.stdout.trim(), format!("MD5: {}", md5_hex(b"")));
    let down = run(
        &server,
        dir.path(),
        "u",
        &["download", "empty.bin", "-o", "e2"],
    )
    .await;
    assert_ok(&down);
    assert_eq!(std::fs::read(dir.path().join("e2")).expect("e2").len(), 0);

    let data = pattern(20480 * 3, 2); // exactly three reference-sized blocks
    write(dir.path(), "three.bin", &data);
    let up = run(
        &server,
        dir.path(),
        "u",
        &[
            "upload",
            "three.bin",
            "--key",
            "pics/three",
            "--block-size",
            "20480",
            "--window",
            "1",
        ],
    )
    .await;
    assert_ok(&up);
    assert_eq!(md5_line(&up), Some(md5_hex(&data).as_str()));
    // The key's last component names the downloaded file.
    let down = run(&server, dir.path(), "u", &["download", "pics/three"]).await;
    assert_ok(&down);
    assert!(std::fs::read(dir.path().join("three")).expect("three") == data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handout_single_dash_invocation() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = pattern(9 * 1024, 3);
    write(dir.path(), "otter.jpg", &data);
    let port = server.addr.port().to_string();
    let r = run_raw(
        dir.path(),
        &[
            "-server_ip",
            "127.0.0.1",
            "-port",
            &port,
            "-id",
            "123456",
            "-f",
            "otter.jpg",
        ],
    )
    .await;
    assert_ok(&r);
    assert!(
        r.stdout.contains("Uploaded otter.jpg: 1 of 1 blocks sent"),
        "{r:?}"
    );
    assert_eq!(md5_line(&r), Some(md5_hex(&data).as_str()));

    // The course clients' double-dash underscore spellings, and env fallbacks.
    write(dir.path(), "two.jpg", &data);
    let r = run_raw(
        dir.path(),
        &[
            "--server_ip",
            "127.0.0.1",
            "--port",
            &port,
            "--id",
            "123456",
            "--f",
            "two.jpg",
        ],
    )
    .await;
    assert_ok(&r);
    let out = client(dir.path())
        .args(["-f", "otter.jpg", "--key", "three.jpg"])
        .env("STEP_SERVER", "127.0.0.1")
        .env("STEP_PORT", &port)
        .env("STEP_ID", "123456")
        .output()
        .await
        .expect("run");
    assert!(out.status.success(), "{out:?}");
    let plan = run(&server, dir.path(), "123456", &["plan", "three.jpg"]).await;
    assert_ok(&plan);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_records() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let saved = run(
        &server,
        dir.path(),
        "d",
        &[
            "data",
            "save",
            "--key",
            "pet",
            r#"{"name": "otter", "legs": 4, "tags": ["ü", "x"]}"#,
        ],
    )
    .await;
    assert_ok(&saved);
    assert_eq!(saved.stdout.trim(), "Key: pet");

    let got = run(&server, dir.path(), "d", &["data", "get", "pet"]).await;
    assert_ok(&got);
    let record: serde_json::Value = serde_json::from_str(&got.stdout).expect("JSON on stdout");
    assert_eq!(record["name"], "otter");
    assert_eq!(record["legs"], 4);
    assert_eq!(record["tags"][0], "ü");

    let dup = run(
        &server,
        dir.path(),
        "d",
        &["data", "save", "--key", "pet", "{}"],
    )
    .await;
    assert_one_line_error(&dup, "record \"pet\" already exists");

    let anon = run(&server, dir.path(), "d", &["data", "save", r#"{"a": 1}"#]).await;
    assert_ok(&anon);
    let key = anon
        .stdout
        .trim()
        .strip_prefix("Key: ")
        .expect("key line")
        .to_owned();
    assert!(!key.is_empty());

    let bad = run(&server, dir.path(), "d", &["data", "save", "[1, 2]"]).await;
    assert_one_line_error(&bad, "must be a JSON object");

    assert_ok(&run(&server, dir.path(), "d", &["data", "delete", "pet"]).await);
    let gone = run(&server, dir.path(), "d", &["data", "get", "pet"]).await;
    assert_one_line_error(&gone, "record \"pet\" is not on the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_one_clear_line() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");

    // Unreachable: a port that was free a moment ago.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port().to_string();
    drop(dead);
    write(dir.path(), "f.bin", b"hello");
    let r = run_raw(
        dir.path(),
        &[
            "-server_ip",
            "127.0.0.1",
            "-port",
            &dead_port,
            "-id",
            "1",
            "-f",
            "f.bin",
        ],
    )
    .await;
    assert_one_line_error(&r, "cannot reach the STEP server at 127.0.0.1:");

    let r = run(
        &server,
        dir.path(),
        "1",
        &["--password", "nope", "upload", "f.bin"],
    )
    .await;
    assert_one_line_error(&r, "wrong user or password for \"1\"");

    let r = run(&server, dir.path(), "1", &["upload", "missing.bin"]).await;
    assert_one_line_error(&r, "cannot read missing.bin: no such file or directory");

    let r = run(&server, dir.path(), "1", &["upload", "."]).await;
    assert_one_line_error(&r, "cannot read");

    assert_ok(&run(&server, dir.path(), "1", &["upload", "f.bin"]).await);
    let r = run(&server, dir.path(), "1", &["upload", "f.bin"]).await;
    assert_one_line_error(&r, "file \"f.bin\" already exists on the server");

    let r = run(&server, dir.path(), "1", &["download", "no-such-key"]).await;
    assert_one_line_error(&r, "file \"no-such-key\" is not on the server");
    let r = run(&server, dir.path(), "1", &["delete", "no-such-key"]).await;
    assert_one_line_error(&r, "is not on the server");

    let r = run_raw(dir.path(), &["-f", "f.bin"]).await;
    assert_one_line_error(&r, "no user id");
}

/// Flip one byte of a stored file behind the server's back. The server's
/// per-chunk checksums catch it first; with those gone (a file stored before
/// they existed) the plan still carries the original md5, so the client's
/// own check refuses it. Either way nothing is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_md5_mismatch_saves_nothing() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = pattern(300_000, 4);
    write(dir.path(), "cor.bin", &data);
    assert_ok(&run(&server, dir.path(), "m", &["upload", "cor.bin"]).await);
    let stored = find_file(&server.data_dir().join("files"), "cor.bin").expect("stored file");
    let mut bytes = std::fs::read(&stored).expect("read stored");
    bytes[1000] ^= 0xff;
    std::fs::write(&stored, &bytes).expect("corrupt");

    let download = || {
        run(
            &server,
            dir.path(),
            "m",
            &["download", "cor.bin", "-o", "out.bin"],
        )
    };
    let r = download().await;
    assert_one_line_error(&r, "cor.bin failed its integrity check");
    assert_nothing_saved(dir.path());

    let sums = find_file(&server.data_dir().join("sums"), "cor.bin").expect("checksums");
    std::fs::remove_file(sums).expect("drop checksums");
    let r = download().await;
    assert_one_line_error(&r, "md5 mismatch for cor.bin");
    assert_nothing_saved(dir.path());
}

fn assert_nothing_saved(dir: &Path) {
    assert!(!dir.join("out.bin").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if entry.file_name() == name {
            return Some(path);
        }
    }
    None
}

/// Kill an upload part-way, run it again: the second run sends only what the
/// server lacks, and the result is byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_upload_resumes() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = pattern(64 << 20, 6);
    write(dir.path(), "huge.bin", &data);
    let port = server.addr.port().to_string();

    // Throttled so there is time to kill it in the middle.
    let mut up = Running::start(
        dir.path(),
        &[
            "-server_ip",
            "127.0.0.1",
            "-port",
            &port,
            "-id",
            "r",
            "-f",
            "huge.bin",
            "--limit-rate",
            "16M",
        ],
    );
    up.until_percent(30).await;
    up.crash().await;

    let again = run(&server, dir.path(), "r", &["-f", "huge.bin"]).await;
    assert_ok(&again);
    let resumed = again
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("Resuming: "))
        .unwrap_or_else(|| panic!("no Resuming line: {again:?}"));
    let (present, total) = parse_resuming(resumed).expect("Resuming: N of M blocks");
    assert_eq!(total, 64, "1 MiB blocks: {again:?}");
    assert!(present >= 19 && present < total, "{resumed}");
    let sent = format!("{} of {total} blocks sent", total - present);
    assert!(again.stdout.contains(&sent), "want {sent:?}: {again:?}");
    // It starts where the first run stopped rather than at 0%.
    let first = again
        .stdout
        .lines()
        .find_map(support::percent_of)
        .expect("a progress line");
    assert!(first > 30, "{again:?}");
    assert_eq!(md5_line(&again), Some(md5_hex(&data).as_str()));

    let down = run(
        &server,
        dir.path(),
        "r",
        &["download", "huge.bin", "-o", "back.bin"],
    )
    .await;
    assert_ok(&down);
    assert!(std::fs::read(dir.path().join("back.bin")).expect("back") == data);
}

/// "12 of 64 blocks already on the server" → (12, 64).
fn parse_resuming(s: &str) -> Option<(u64, u64)> {
    let mut words = s.split_whitespace();
    let present = words.next()?.parse().ok()?;
    let _of = words.next()?;
    let total = words.next()?.parse().ok()?;
    Some((present, total))
}

/// A server that accepts and then says nothing must not hang the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "f.bin", b"data");
    let started = std::time::Instant::now();
    let r = run_raw(
        dir.path(),
        &[
            "-server_ip",
            "127.0.0.1",
            "-port",
            &port,
            "-id",
            "1",
            "-f",
            "f.bin",
            "--timeout",
            "1",
        ],
    )
    .await;
    assert_one_line_error(&r, "did not answer within 1 s");
    assert!(started.elapsed() < Duration::from_secs(10));
    hold.abort();
}
