//! Resumable downloads with the real binary: a download cut mid-way (a proxy
//! that closes the connection after a number of bytes) continues on the next
//! run of the same command, against a restarted server on the same data,
//! fetching only the blocks it lacks; a remote file that changed starts over;
//! a damaged partial is caught by the final md5 and downloaded again.

use std::net::SocketAddr;
use std::path::Path;

use step_tests::{TestConfig, TestServer, pattern};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

mod support;

use support::{Run, assert_ok, run_raw, write};

const SIZE: usize = 24 << 20;
/// The proxy passes this many bytes from the server, then cuts: about ten
/// of the 24 one-MiB blocks.
const CUT_AFTER: u64 = 10 << 20;

/// A TCP proxy to `upstream` that closes each connection once `limit` bytes
/// went from the server to the client.
async fn cutting_proxy(upstream: SocketAddr, limit: u64) -> SocketAddr {
    proxy(upstream, limit, false).await
}

/// A TCP proxy to `upstream` that passes `limit` bytes from the server, then
/// closes the connection (`stall` false) or holds it open, silent (`stall`).
async fn proxy(upstream: SocketAddr, limit: u64, stall: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (sr, mut sw) = server.into_split();
                let up = tokio::io::copy(&mut cr, &mut sw);
                let down = async {
                    let mut limited = sr.take(limit);
                    tokio::io::copy(&mut limited, &mut cw).await
                };
                tokio::select! {
                    _ = up => {}
                    _ = down => {
                        if stall {
                            // Nothing more, but the connection stays open.
                            std::future::pending::<()>().await;
                        }
                    }
                }
                // Both sockets close here, mid-frame.
            });
        }
    });
    addr
}

async fn client_at(addr: SocketAddr, dir: &Path, args: &[&str]) -> Run {
    let port = addr.port().to_string();
    let mut all = support::at(&port, "resumer", &["--connections", "1"]);
    all.extend_from_slice(args);
    run_raw(dir, &all).await
}

/// Upload `data` as `key`, then download it through a proxy that cuts the
/// connection: the run fails and leaves the partial and its state.
async fn interrupted(server: &TestServer, dir: &Path, key: &str, data: &[u8]) {
    write(dir, key, data);
    assert_ok(&client_at(server.addr, dir, &["upload", key]).await);
    std::fs::remove_file(dir.join(key)).expect("rm local");
    let proxy = cutting_proxy(server.addr, CUT_AFTER).await;
    let cut = client_at(proxy, dir, &["download", key]).await;
    support::assert_one_line_error(&cut, "connection lost");
    assert!(
        cut.stderr.contains(&format!(".{key}.part keeps")),
        "says what it kept: {cut:?}"
    );
    assert!(
        cut.stderr.contains("rerun the same command to resume"),
        "{cut:?}"
    );
    assert!(!dir.join(key).exists(), "nothing under the target's name");
    let part = std::fs::metadata(dir.join(format!(".{key}.part"))).expect("partial kept");
    assert!(part.len() > 0);
    assert!(dir.join(format!(".{key}.part.state")).exists());
}

/// `(have, fetched, total)` from a resumed run's output.
fn counts(r: &Run) -> (u64, u64, u64) {
    let have = r
        .stdout
        .lines()
        .find_map(|l| l.split_once(": ")?.1.split_once(" of ")?.0.parse().ok())
        .unwrap_or_else(|| panic!("no resume line: {r:?}"));
    let tail = r
        .stdout
        .split_once("(fetched ")
        .unwrap_or_else(|| panic!("no fetched count: {r:?}"))
        .1;
    let (fetched, rest) = tail.split_once(" of ").expect("of");
    let total = rest.split_once(' ').expect("blocks").0;
    (
        have,
        fetched.parse().expect("fetched"),
        total.parse().expect("total"),
    )
}

fn no_leftovers(dir: &Path, key: &str) {
    assert!(!dir.join(format!(".{key}.part")).exists());
    assert!(!dir.join(format!(".{key}.part.state")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_download_resumes_after_a_server_restart_fetching_only_what_is_missing() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start().await;
    let data = pattern(SIZE, 21);
    interrupted(&server, dir.path(), "big.bin", &data).await;

    // The server goes away and comes back on the same data directory.
    let (data_dir, tmp) = server.stop_keep_data().await;
    let server = TestServer::start_with(TestConfig {
        data_dir: Some(data_dir),
        ..TestConfig::default()
    })
    .await;
    let again = client_at(server.addr, dir.path(), &["download", "big.bin"]).await;
    assert_ok(&again);
    assert_eq!(
        std::fs::read(dir.path().join("big.bin")).expect("read"),
        data
    );
    println!("{}", again.stdout);
    let (have, fetched, total) = counts(&again);
    assert_eq!(total, 24, "{again:?}");
    assert!(
        have >= 5,
        "about ten blocks arrived before the cut: {again:?}"
    );
    assert_eq!(have + fetched, total, "{again:?}");
    assert!(fetched < total, "{again:?}");
    no_leftovers(dir.path(), "big.bin");
    drop(tmp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_remote_file_restarts_and_a_damaged_partial_is_downloaded_again() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start().await;

    // Changed on the server between the runs: other md5, same size.
    let old = pattern(SIZE, 1);
    interrupted(&server, dir.path(), "c.bin", &old).await;
    assert_ok(&client_at(server.addr, dir.path(), &["delete", "c.bin"]).await);
    let new = pattern(SIZE, 2);
    write(dir.path(), "c.bin", &new);
    assert_ok(&client_at(server.addr, dir.path(), &["upload", "c.bin"]).await);
    std::fs::remove_file(dir.path().join("c.bin")).expect("rm");
    let r = client_at(server.addr, dir.path(), &["download", "c.bin"]).await;
    assert_ok(&r);
    assert!(r.stdout.contains("changed on the server"), "{r:?}");
    assert!(
        !r.stdout.contains("fetched"),
        "a restart fetches everything: {r:?}"
    );
    assert_eq!(std::fs::read(dir.path().join("c.bin")).expect("read"), new);
    no_leftovers(dir.path(), "c.bin");

    // The partial damaged while it waited: a block the state lists as
    // written no longer holds the server's bytes.
    let data = pattern(SIZE, 3);
    interrupted(&server, dir.path(), "d.bin", &data).await;
    let part = dir.path().join(".d.bin.part");
    let mut bytes = std::fs::read(&part).expect("read partial");
    bytes[100] ^= 0xff;
    std::fs::write(&part, &bytes).expect("damage");
    let r = client_at(server.addr, dir.path(), &["download", "d.bin"]).await;
    assert_ok(&r);
    assert!(r.stdout.contains("was damaged"), "{r:?}");
    assert_eq!(std::fs::read(dir.path().join("d.bin")).expect("read"), data);
    no_leftovers(dir.path(), "d.bin");
}

/// Ctrl-C in the middle of a download (the transfer stalled, so the signal
/// lands mid-way for certain): the process dies without cleaning up, and the
/// same command then resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_mid_download_then_the_same_command_resumes() {
    let dir = tempfile::tempdir().expect("dir");
    let server = TestServer::start().await;
    let data = pattern(SIZE, 44);
    write(dir.path(), "int.bin", &data);
    assert_ok(&client_at(server.addr, dir.path(), &["upload", "int.bin"]).await);
    std::fs::remove_file(dir.path().join("int.bin")).expect("rm");

    let stalled = proxy(server.addr, CUT_AFTER, true).await;
    let port = stalled.port().to_string();
    let args = ["--connections", "1", "download", "int.bin"];
    let down = support::Running::start(dir.path(), &support::at(&port, "resumer", &args));
    let state = dir.path().join(".int.bin.part.state");
    // The header line and at least a few blocks recorded.
    step_tests::wait::until("blocks on disk", std::time::Duration::from_secs(60), || {
        std::fs::read_to_string(&state).is_ok_and(|t| t.lines().count() > 4)
    })
    .await;
    down.interrupt();
    let (r, code) = down.finish().await;
    assert_eq!(code, Some(130), "interrupted: {r:?}");
    // One line: what is kept, and how to go on.
    support::assert_one_line_error(&r, "interrupted");
    assert!(r.stderr.contains(".int.bin.part keeps"), "{r:?}");
    assert!(
        r.stderr.contains("rerun the same command to resume"),
        "{r:?}"
    );
    assert!(!dir.path().join("int.bin").exists());

    let again = client_at(server.addr, dir.path(), &["download", "int.bin"]).await;
    assert_ok(&again);
    let (have, fetched, total) = counts(&again);
    assert!(have > 0 && fetched < total, "{again:?}");
    assert_eq!(
        std::fs::read(dir.path().join("int.bin")).expect("read"),
        data
    );
    no_leftovers(dir.path(), "int.bin");
}
