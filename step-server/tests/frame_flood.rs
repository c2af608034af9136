//! Frame floods against the real `step-server` binary (issue 11, item 5).
//!
//! * Many connections each announce a near-maximal binary part behind a JSON
//!   part that is refused (no token, a wrong token): each gets its 403 as
//!   soon as its JSON is in, while it is still sending; the binary parts are
//!   dropped unbuffered, so the server's peak RSS (VmHWM of the child
//!   process) stays far below the sum of the announced sizes; the connections
//!   stay in sync (a request after the skipped binary is answered); an honest
//!   client keeps working meanwhile.
//! * With a frame budget of two blocks, concurrent honest uploads all
//!   complete: the budget is back-pressure, not failure.
//!
//! `STEP_FLOOD_CONNECTIONS` (default 100) sets the flood's size, e.g. 1000
//! for a measurement; the measured peak RSS is printed.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use step_core::client::{SaveOptions, StepClient};
use step_core::digest::{md5_hex, password_for};
use step_core::message::field;
use step_core::{Kind, Message, Operation, StepCodec};
use support::{ServerProc, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

/// Just under the default binary cap (8 MiB).
const NEAR_MAX: usize = (8 << 20) - 1;
/// Generous bound for "promptly" on a loaded two-core machine.
const PROMPTLY: Duration = Duration::from_secs(5);
const MIB: u64 = 1 << 20;

/// A field of `/proc/<pid>/status`, in KiB.
fn proc_status_kib(pid: u32, name: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /proc/{pid}/status"))
}

/// Header and JSON part of a frame announcing `binary_len` bytes.
fn head(msg: &Message, binary_len: usize) -> BytesMut {
    let mut out = BytesMut::new();
    StepCodec::default().encode(msg, &mut out).expect("encode");
    out[4..8].copy_from_slice(&(binary_len as u32).to_be_bytes());
    out
}

/// Read one response frame from a raw socket.
async fn read_response(s: &mut TcpStream, buf: &mut BytesMut) -> Message {
    let mut codec = StepCodec::default();
    loop {
        if let Some(frame) = codec.decode(buf).expect("response frame") {
            return Message::from_frame(frame).expect("response json");
        }
        let n = s.read_buf(buf).await.expect("read");
        assert!(n > 0, "server closed the connection");
    }
}

/// One flooding connection: announce a near-maximal binary part behind a
/// refused JSON part, expect the 403 while still sending, send the rest,
/// then check the connection is still in sync. Returns the 403's latency.
async fn flood_one(addr: SocketAddr, i: usize) -> Duration {
    let mut req = Message::request(Operation::Upload, Kind::File)
        .with(field::KEY, format!("flood-{i}"))
        .with(field::BLOCK_INDEX, 0);
    if i % 2 == 1 {
        // A presented but wrong token (paced, within the default burst).
        req.set(field::TOKEN, "bm90LWEtdG9rZW4=");
    }
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    s.write_all(&head(&req, NEAR_MAX)).await.expect("head");
    let chunk = vec![0x5a; 64 << 10];
    s.write_all(&chunk).await.expect("first piece");
    let mut buf = BytesMut::new();
    let answer = tokio::time::timeout(PROMPTLY, read_response(&mut s, &mut buf))
        .await
        .unwrap_or_else(|_| panic!("connection {i}: no answer within {PROMPTLY:?} of the JSON"));
    let latency = started.elapsed();
    assert_eq!(answer.status_code(), Some(403), "connection {i}");
    // Trickle the rest (the server must drop it, not keep it).
    let mut left = NEAR_MAX - chunk.len();
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n]).await.expect("rest of the binary");
        left -= n;
        if left % (1 << 20) < chunk.len() {
            tokio::task::yield_now().await;
        }
    }
    // In sync: the next request (a token-less GET) is answered as such.
    let probe = Message::request(Operation::Get, Kind::Data).with(field::KEY, "after");
    s.write_all(&head(&probe, 0)).await.expect("probe");
    let answer = tokio::time::timeout(Duration::from_secs(60), read_response(&mut s, &mut buf))
        .await
        .unwrap_or_else(|_| panic!("connection {i}: no answer after the skipped binary"));
    assert_eq!(answer.status_code(), Some(403));
    assert_eq!(
        answer.status_msg(),
        "No token.",
        "connection {i} out of sync"
    );
    latency
}

async fn honest_session(addr: SocketAddr, user: &str, size: usize, seed: u8) {
    let mut c = StepClient::connect(addr).await.expect("connect");
    c.set_timeout(Some(Duration::from_secs(120)));
    c.login(user, &password_for(user)).await.expect("login");
    let body = pattern(size, seed);
    let plan = c
        .file_save(
            Some("honest.bin"),
            body.len() as u64,
            SaveOptions::default(),
        )
        .await
        .expect("plan");
    let bs = plan.block_size as usize;
    let blocks = body
        .chunks(bs)
        .enumerate()
        .map(|(i, b)| Ok((i as u64, Bytes::copy_from_slice(b))))
        .collect::<Vec<_>>();
    let md5 = c
        .upload_blocks(&plan.key, futures::stream::iter(blocks), 8, |_| {})
        .await
        .expect("upload");
    assert_eq!(md5.as_deref(), Some(md5_hex(&body).as_str()));
    let dplan = c.file_get("honest.bin", None).await.expect("get");
    let mut back = Vec::new();
    c.download_blocks(&dplan, 0..dplan.total_block, 8, |_, b| {
        back.extend_from_slice(&b);
        Ok(())
    })
    .await
    .expect("download");
    assert!(back == body, "{user}: downloaded bytes differ");
}

fn tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_frames_are_answered_at_once_and_never_buffered() {
    let connections: usize = std::env::var("STEP_FLOOD_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("server.log");
    let server = ServerProc::start(&tmp.path().join("data"), &log, &["--log", "warn"]).await;
    let pid = server.child.id();
    let rss_before = proc_status_kib(pid, "VmRSS");

    let floods: Vec<_> = (0..connections)
        .map(|i| tokio::spawn(flood_one(server.addr, i)))
        .collect();
    // An honest client meanwhile: a 3 MiB file up and down.
    tokio::time::timeout(
        Duration::from_secs(120),
        honest_session(server.addr, "honest", 3 << 20, 7),
    )
    .await
    .expect("the honest client is served during the flood");
    let mut worst = Duration::ZERO;
    for f in futures::stream::iter(floods)
        .buffer_unordered(usize::MAX)
        .collect::<Vec<_>>()
        .await
    {
        let latency = f.unwrap_or_else(|e| panic!("flood task: {e}; server log:\n{}", tail(&log)));
        worst = worst.max(latency);
    }
    let peak = proc_status_kib(pid, "VmHWM");
    let rss_after = proc_status_kib(pid, "VmRSS");
    let announced = connections as u64 * NEAR_MAX as u64;
    eprintln!(
        "frame flood: {connections} connections x {NEAR_MAX} B announced ({} MiB): \
         server VmRSS before {} MiB, peak (VmHWM) {} MiB, after {} MiB; slowest 403 {worst:?}",
        announced / MIB,
        rss_before / 1024,
        peak / 1024,
        rss_after / 1024,
    );
    assert!(
        peak * 1024 < 200 * MIB,
        "peak RSS {} MiB under a flood announcing {} MiB",
        peak / 1024,
        announced / MIB
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_frame_budget_is_back_pressure_not_failure() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("server.log");
    // Room for two default blocks at a time, server-wide.
    let server = ServerProc::start(
        &tmp.path().join("data"),
        &log,
        &[
            "--log",
            "warn",
            "--max-block-size",
            "20480",
            "--frame-budget",
            "40960",
        ],
    )
    .await;
    let sessions: Vec<_> = (0..8)
        .map(|i| {
            let addr = server.addr;
            tokio::spawn(async move {
                honest_session(addr, &format!("user{i}"), 40 * 20480 + 17, i as u8).await;
            })
        })
        .collect();
    for s in sessions {
        tokio::time::timeout(Duration::from_secs(120), s)
            .await
            .expect("every upload completes")
            .unwrap_or_else(|e| panic!("session: {e}; server log:\n{}", tail(&log)));
    }
}

/// Unauthenticated connections announcing maximal JSON parts and sending
/// all of them but the last byte: only the JSON budget's worth (64 MiB by
/// default) is ever buffered; the rest wait unread, and an honest client's
/// ordinary requests do not wait at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_json_parts_wait_for_the_json_budget() {
    const CONNECTIONS: usize = 300;
    const JSON_LEN: usize = 1 << 20; // the default --max-json
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("server.log");
    // All 300 from one address are held (what is measured is the JSON
    // budget, not the cap on one address's connections).
    let server = ServerProc::start(
        &tmp.path().join("data"),
        &log,
        &["--log", "warn", "--max-connections-per-source", "1000"],
    )
    .await;
    let pid = server.child.id();
    let rss_before = proc_status_kib(pid, "VmRSS");
    let mut floods = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        floods.push(tokio::spawn(async move {
            let mut frame = BytesMut::with_capacity(8 + JSON_LEN);
            frame.extend_from_slice(&(JSON_LEN as u32).to_be_bytes());
            frame.extend_from_slice(&0u32.to_be_bytes());
            frame.extend_from_slice(b"{\"pad\":\"");
            frame.resize(8 + JSON_LEN - 1, b'x');
            // Kernel buffers take what the server does not read; a
            // connection waiting for budget may never take it all.
            let _ = tokio::time::timeout(Duration::from_secs(10), s.write_all(&frame)).await;
            s
        }));
    }
    let mut held = Vec::new();
    for f in floods {
        held.push(f.await.expect("flood task"));
    }
    tokio::time::timeout(
        Duration::from_secs(60),
        honest_session(server.addr, "honest", 200_000, 5),
    )
    .await
    .expect("ordinary requests do not wait for the JSON budget");
    let peak = proc_status_kib(pid, "VmHWM");
    eprintln!(
        "JSON flood: {CONNECTIONS} connections x {JSON_LEN} B JSON parts (all but one byte sent): \
         server VmRSS before {} MiB, peak {} MiB",
        rss_before / 1024,
        peak / 1024
    );
    assert!(
        peak * 1024 < 150 * MIB,
        "peak RSS {} MiB: JSON parts buffered beyond the budget",
        peak / 1024
    );
    // Once they are gone, a long JSON part (a large DATA record) is served.
    drop(held);
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    c.set_timeout(Some(Duration::from_secs(60)));
    c.login("big", &password_for("big")).await.expect("login");
    let mut record = serde_json::Map::new();
    record.insert("pad".into(), "y".repeat(600_000).into());
    c.data_save(Some("big"), record)
        .await
        .expect("a 600 KB record");
    assert_eq!(
        c.data_get("big").await.expect("get")["pad"]
            .as_str()
            .map(str::len),
        Some(600_000)
    );
}

/// Run the binary with flags that must be refused: it exits non-zero within
/// a few seconds (instead of serving) and its stderr names `flag`.
fn assert_refused_at_start_up(args: &[&str], env: &[(&str, &str)], flag: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_step-server"))
        .args(["--ip", "127.0.0.1", "--port", "0", "--data-dir"])
        .arg(tmp.path())
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{args:?} {env:?}: the server started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(stderr.contains(flag), "{stderr}");
}

/// The budget must hold at least one block: refused at start-up, clearly.
#[test]
fn a_budget_below_one_block_is_refused_at_start_up() {
    assert_refused_at_start_up(
        &["--max-block-size", "65536", "--frame-budget", "1000"],
        &[],
        "--frame-budget",
    );
}

/// A TTL the token format cannot express is refused at start-up.
#[test]
fn an_inexpressible_token_ttl_is_refused_at_start_up() {
    for ttl in ["0", "100000000"] {
        assert_refused_at_start_up(&[], &[("STEP_TOKEN_TTL", ttl)], "--token-ttl");
    }
}

/// At the default connection cap (16384, or `STEP_FLOOD_CONNECTIONS`): all
/// but one connection announce a near-maximal binary part behind a refused JSON
/// part, sends 128 KiB of it, gets its 403 and then holds the connection
/// open mid-frame; the server's peak RSS is printed and must stay far below
/// what buffering would take. Ignored by default: it opens 16384 sockets
/// on each side and takes about a minute on two cores.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement at the default connection cap (16384 sockets each side): run with --ignored"]
async fn refused_frames_held_open_at_the_connection_cap() {
    let connections: usize = std::env::var("STEP_FLOOD_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16384);
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("server.log");
    let server = ServerProc::start(&tmp.path().join("data"), &log, &["--log", "warn"]).await;
    let pid = server.child.id();
    let rss_before = proc_status_kib(pid, "VmRSS");
    let started = Instant::now();
    // All but one slot: the honest client below takes the last.
    let opened: Vec<_> = futures::stream::iter(0..connections.saturating_sub(1))
        .map(|i| {
            let addr = server.addr;
            async move {
                let req = Message::request(Operation::Upload, Kind::File)
                    .with(field::KEY, format!("held-{i}"))
                    .with(field::BLOCK_INDEX, 0);
                let mut s = TcpStream::connect(addr).await.expect("connect");
                s.write_all(&head(&req, NEAR_MAX)).await.expect("head");
                s.write_all(&[0x5a; 128 << 10])
                    .await
                    .expect("part of the binary");
                let mut buf = BytesMut::new();
                let answer =
                    tokio::time::timeout(Duration::from_secs(60), read_response(&mut s, &mut buf))
                        .await
                        .unwrap_or_else(|_| panic!("connection {i}: no answer"));
                assert_eq!(answer.status_code(), Some(403));
                s
            }
        })
        .buffer_unordered(512)
        .collect()
        .await;
    let peak = proc_status_kib(pid, "VmHWM");
    let rss_now = proc_status_kib(pid, "VmRSS");
    eprintln!(
        "held frame flood: {} connections each mid-way through an announced {NEAR_MAX} B binary \
         ({} GiB announced) after {:?}: server VmRSS before {} MiB, now {} MiB, peak {} MiB",
        opened.len(),
        (opened.len() as u64 * NEAR_MAX as u64) >> 30,
        started.elapsed(),
        rss_before / 1024,
        rss_now / 1024,
        peak / 1024,
    );
    // Still serving an honest client with all of them open.
    honest_session(server.addr, "honest", 1 << 20, 9).await;
    drop(opened);
    assert!(peak * 1024 < 1024 * MIB, "peak RSS {} MiB", peak / 1024);
}

/// `step-server --health-check` (a token-less GET) passes promptly while a
/// token-guessing flood keeps the refusal pacer saturated (issue 11, item 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_passes_during_a_guessing_flood() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let log = tmp.path().join("server.log");
    let server = ServerProc::start(
        &tmp.path().join("data"),
        &log,
        &["--log", "warn", "--token-failures-per-sec", "2"],
    )
    .await;
    let (answered_tx, mut answered) = tokio::sync::mpsc::unbounded_channel();
    let mut floods = Vec::new();
    // Each connection has one guess in the pacer at a time: 20 of them keep
    // 20 refusals (10 s at 2/s) queued ahead of any newcomer.
    for conn in 0..20 {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        let answered_tx = answered_tx.clone();
        floods.push(tokio::spawn(async move {
            let mut wire = BytesMut::new();
            for i in 0..20 {
                let guess = Message::request(Operation::Get, Kind::Data)
                    .with(field::TOKEN, format!("guess-{conn}-{i}"))
                    .with(field::KEY, "k");
                wire.extend_from_slice(&head(&guess, 0));
            }
            s.write_all(&wire).await.expect("guesses");
            let mut buf = BytesMut::new();
            loop {
                let answer = read_response(&mut s, &mut buf).await;
                assert_eq!(answer.status_code(), Some(403));
                let _ = answered_tx.send(());
            }
        }));
    }
    // The one-second burst (2 refusals) is spent; the rest wait their turn.
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(30), answered.recv())
            .await
            .expect("the burst is answered");
    }
    let addr = server.addr.to_string();
    let (ip, port) = addr.rsplit_once(':').expect("addr");
    for _ in 0..3 {
        let started = Instant::now();
        let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_step-server"))
            .args(["--health-check", "--ip", ip, "--port", port])
            .status()
            .await
            .expect("run --health-check");
        let took = started.elapsed();
        eprintln!("--health-check during a guessing flood: {status} in {took:?}");
        assert!(status.success(), "health check failed after {took:?}");
        assert!(took < Duration::from_secs(2), "health check took {took:?}");
    }
    for f in floods {
        f.abort();
    }
}
