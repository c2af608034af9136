//! What a person meets at the command line, with the real binary against a
//! real step-server: listing, deleting, replacing, what is printed and when,
//! and the words for the things that go wrong (a file name without a
//! command, a web server on the port, a server that dies mid-upload,
//! Ctrl-C, rate limits).

use std::process::Stdio;
use std::time::{Duration, Instant};

use step_core::digest::md5_hex;
use step_server::service::{Extensions, Limits};
use step_tests::{TestConfig, TestServer, pattern};

mod support;

use support::{
    CutProxy, Run, Running, Toward, assert_ok, assert_one_line_error, client, md5_line, run,
    run_at, run_raw, write,
};

/// A server with some extensions turned off, as an older or stricter one.
async fn server_without(extensions: Extensions) -> TestServer {
    TestServer::start_with(TestConfig {
        limits: Limits {
            extensions,
            ..Limits::default()
        },
        ..TestConfig::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shows_sizes_dates_and_names() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let small = pattern(1536, 1);
    let big = pattern(3 << 20, 2);
    write(dir.path(), "a.txt", &small);
    write(dir.path(), "b.bin", &big);
    write(dir.path(), "empty", b"");
    assert_ok(&run(&server, dir.path(), "lister", &["upload", "a.txt"]).await);
    assert_ok(
        &run(
            &server,
            dir.path(),
            "lister",
            &["upload", "b.bin", "--key", "docs/b.bin"],
        )
        .await,
    );
    assert_ok(
        &run(
            &server,
            dir.path(),
            "lister",
            &["upload", "empty", "--key", "docs/empty"],
        )
        .await,
    );

    let all = run(&server, dir.path(), "lister", &["list"]).await;
    assert_ok(&all);
    let line = |name: &str| {
        all.stdout
            .lines()
            .find(|l| l.trim_end().ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("no line for {name}: {all:?}"))
            .to_owned()
    };
    assert!(line("a.txt").contains("1.5 KiB"), "{all:?}");
    assert!(line("docs/b.bin").contains("3.0 MiB"), "{all:?}");
    assert!(line("docs/empty").contains("0 B"), "{all:?}");
    let date = regex::Regex::new(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}").expect("regex");
    assert!(
        date.is_match(&line("a.txt")),
        "a date on every line: {all:?}"
    );
    assert!(all.stdout.contains("3 files"), "a total: {all:?}");

    let docs = run(&server, dir.path(), "lister", &["list", "docs/"]).await;
    assert_ok(&docs);
    assert!(
        docs.stdout.contains("docs/b.bin") && !docs.stdout.contains("a.txt"),
        "{docs:?}"
    );

    let json = run(&server, dir.path(), "lister", &["list", "--json"]).await;
    assert_ok(&json);
    let files: Vec<serde_json::Value> = serde_json::from_str(&json.stdout).expect("a JSON array");
    assert_eq!(files.len(), 3, "{json:?}");
    let b = files
        .iter()
        .find(|f| f["key"] == "docs/b.bin")
        .expect("docs/b.bin listed");
    assert_eq!(b["size"], big.len() as u64);
    assert_eq!(b["md5"], md5_hex(&big));
    assert!(
        b["last_modified"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000),
        "{b}"
    );

    let none = run(&server, dir.path(), "lister", &["list", "nothing/"]).await;
    assert_ok(&none);
    assert!(
        none.stdout.contains("No files under \"nothing/\""),
        "{none:?}"
    );
    let other = run(&server, dir.path(), "someone-else", &["list"]).await;
    assert_ok(&other);
    assert!(
        other.stdout.contains("No files"),
        "another user sees none: {other:?}"
    );

    // More than a page of the server's answer (100): every file, once.
    let mut c = step_tests::login(server.addr, "lister").await;
    for i in 0..150 {
        c.file_save(Some(&format!("many/{i:03}")), 0, Default::default())
            .await
            .expect("save an empty file");
    }
    let many = run(&server, dir.path(), "lister", &["list", "many/", "--json"]).await;
    assert_ok(&many);
    let files: Vec<serde_json::Value> = serde_json::from_str(&many.stdout).expect("JSON");
    assert_eq!(files.len(), 150);
    assert_eq!(files[149]["key"], "many/149");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_against_a_server_without_listing_says_so() {
    let server = server_without(Extensions {
        list: false,
        ..Extensions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let r = run(&server, dir.path(), "u", &["list"]).await;
    assert_one_line_error(&r, "cannot list files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_takes_several_keys_and_says_what_it_did() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "one", b"1");
    write(dir.path(), "two", b"22");
    assert_ok(&run(&server, dir.path(), "d", &["upload", "one"]).await);
    assert_ok(&run(&server, dir.path(), "d", &["upload", "two"]).await);
    let r = run(&server, dir.path(), "d", &["delete", "one", "two"]).await;
    assert_ok(&r);
    assert!(
        r.stdout.contains("Deleted one") && r.stdout.contains("Deleted two"),
        "{r:?}"
    );
    let listed = run(&server, dir.path(), "d", &["list"]).await;
    assert!(listed.stdout.contains("No files"), "{listed:?}");
    let r = run(&server, dir.path(), "d", &["delete", "one"]).await;
    assert_one_line_error(&r, "file \"one\" is not on the server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_replaces_and_a_name_clash_says_how() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "notes.txt", b"first version");
    assert_ok(&run(&server, dir.path(), "w", &["upload", "notes.txt"]).await);

    let v2 = pattern(3 << 20, 9);
    write(dir.path(), "notes.txt", &v2);
    let clash = run(&server, dir.path(), "w", &["upload", "notes.txt"]).await;
    assert_one_line_error(&clash, "already exists on the server");
    assert!(
        clash.stderr.contains("--overwrite"),
        "says how to replace: {clash:?}"
    );

    let replaced = run(
        &server,
        dir.path(),
        "w",
        &["upload", "notes.txt", "--overwrite"],
    )
    .await;
    assert_ok(&replaced);
    assert_eq!(md5_line(&replaced), Some(md5_hex(&v2).as_str()));
    let down = run(
        &server,
        dir.path(),
        "w",
        &["download", "notes.txt", "-o", "back"],
    )
    .await;
    assert_ok(&down);
    assert!(std::fs::read(dir.path().join("back")).expect("back") == v2);

    // The handout's command line takes it too.
    let v3 = pattern(70_000, 10);
    write(dir.path(), "notes.txt", &v3);
    let port = server.addr.port().to_string();
    let r = run_raw(
        dir.path(),
        &[
            "-server_ip",
            "127.0.0.1",
            "-port",
            &port,
            "-id",
            "w",
            "-f",
            "notes.txt",
            "--overwrite",
        ],
    )
    .await;
    assert_ok(&r);
    assert_eq!(md5_line(&r), Some(md5_hex(&v3).as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_against_a_server_that_cannot_replace_says_so() {
    let server = server_without(Extensions {
        replace: false,
        ..Extensions::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "f", b"one");
    // A new key needs no replacing.
    assert_ok(&run(&server, dir.path(), "w", &["upload", "f", "--overwrite"]).await);
    write(dir.path(), "f", b"two");
    let r = run(&server, dir.path(), "w", &["upload", "f", "--overwrite"]).await;
    assert_one_line_error(&r, "cannot replace files");
    assert!(r.stderr.contains("step-client delete f"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_printed_only_with_verbose() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "a", b"abc");
    write(dir.path(), "b", b"abcd");
    let plain = run(&server, dir.path(), "t", &["upload", "a"]).await;
    assert_ok(&plain);
    assert!(
        !plain.stdout.contains("Token") && !plain.stderr.contains("Token"),
        "{plain:?}"
    );
    let verbose = run(&server, dir.path(), "t", &["-v", "upload", "b"]).await;
    assert_ok(&verbose);
    assert!(
        verbose.stderr.contains("Token: "),
        "on stderr, with the rest of -v: {verbose:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_name_without_a_command_gets_a_hint() {
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "otter.jpg", b"jpg");
    let out = client(dir.path())
        .args(["-id", "1", "otter.jpg"])
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let r = Run::of(out);
    assert_one_line_error(&r, "did you mean `step-client upload otter.jpg`?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_server_on_the_port_is_named_as_such() {
    let server = TestServer::start().await;
    let web = support::start_gateway(server.addr, &[]).await;
    let port = web.rsplit(':').next().expect("port").to_owned();
    let dir = tempfile::tempdir().expect("dir");
    write(dir.path(), "f", b"data");
    let r = run_raw(dir.path(), &support::at(&port, "h", &["upload", "f"])).await;
    assert_one_line_error(&r, "is an HTTP server, not a STEP server");
    assert!(!r.stderr.contains("bytes"), "no frame sizes: {r:?}");
}

/// The server goes away mid-upload (the connection is cut as a dying
/// server's is): one line says the connection was lost and to rerun; the
/// rerun resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_lost_mid_upload_says_rerun_and_the_rerun_resumes() {
    let server = TestServer::start().await;
    let proxy = CutProxy::start(server.addr, Toward::Server, 6 << 20).await;
    let dir = tempfile::tempdir().expect("dir");
    let data = pattern(16 << 20, 11);
    write(dir.path(), "lost.bin", &data);
    let args = ["--connections", "1", "upload", "lost.bin"];
    let cut = run_at(proxy.addr, dir.path(), "l", &args).await;
    assert_one_line_error(&cut, "connection lost");
    assert!(
        cut.stderr.contains("rerun the same command to resume"),
        "{cut:?}"
    );
    assert!(!cut.stderr.contains("broke the protocol"), "{cut:?}");

    proxy.pass_all();
    let again = run_at(proxy.addr, dir.path(), "l", &args).await;
    assert_ok(&again);
    assert!(again.stdout.contains("Resuming: "), "{again:?}");
    assert_eq!(md5_line(&again), Some(md5_hex(&data).as_str()));
}

/// Ctrl-C mid-upload: exit status 130 and one line saying what the server
/// kept and how to go on; the same command then resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_mid_upload_says_what_was_kept() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = pattern(32 << 20, 12);
    write(dir.path(), "int.bin", &data);
    let port = server.addr.port().to_string();
    let args = ["upload", "int.bin", "--limit-rate", "8M"];
    let mut up = Running::start(dir.path(), &support::at(&port, "c", &args));
    up.until_percent(20).await;
    up.interrupt();
    let (r, code) = up.finish().await;
    assert_eq!(code, Some(130), "{r:?}");
    assert_one_line_error(&r, "interrupted");
    assert!(
        r.stderr
            .contains("of 32 blocks of int.bin are on the server"),
        "{r:?}"
    );
    assert!(
        r.stderr.contains("rerun the same command to resume"),
        "{r:?}"
    );

    let again = run(&server, dir.path(), "c", &["upload", "int.bin"]).await;
    assert_ok(&again);
    assert!(again.stdout.contains("Resuming: "), "{again:?}");
    assert_eq!(md5_line(&again), Some(md5_hex(&data).as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_rate_holds_for_downloads() {
    let server = TestServer::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = pattern(6 << 20, 13);
    write(dir.path(), "slow.bin", &data);
    assert_ok(&run(&server, dir.path(), "r", &["upload", "slow.bin"]).await);
    let started = Instant::now();
    let down = run(
        &server,
        dir.path(),
        "r",
        &["download", "slow.bin", "-o", "back", "--limit-rate", "2M"],
    )
    .await;
    let took = started.elapsed();
    assert_ok(&down);
    assert!(std::fs::read(dir.path().join("back")).expect("back") == data);
    // 6 MiB at 2 MiB/s: three seconds, whatever the machine (a limit can
    // only make it slower); the first block may go at once.
    assert!(
        took >= Duration::from_millis(2400),
        "took {took:?}: {down:?}"
    );
}
