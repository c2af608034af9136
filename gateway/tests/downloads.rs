//! Downloads through the gateway that must not look clean when they are not:
//! bytes corrupted at rest never reach a client as a complete response, and a
//! client that never reads its body does not keep a pooled STEP connection.
//! Real sockets throughout: a step-server, the gateway on a free port, reqwest,
//! curl and hand-written HTTP over raw TCP.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use gateway::config::TransferArgs;
use reqwest::StatusCode;
use step_core::token::TokenKey;
use step_server::service::{Limits, Service};
use step_server::store::{DiskStore, Storage};
use step_tests::{TEST_SECRET, TestServer, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

mod support;
use support::Gateway;

/// Every wait on the gateway in these tests is bounded by this (generous: the
/// machine may be loaded); none of them is expected to come close.
const BOUND: Duration = Duration::from_secs(90);

async fn gateway_with(backend: SocketAddr, tweak: impl FnOnce(&mut TransferArgs)) -> Gateway {
    support::gateway_with(backend, |_, transfer| {
        transfer.pool_wait_ms = 2000;
        tweak(transfer);
    })
    .await
}

/// The value of an unlabelled series in Prometheus text.
fn series(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// The stored content of `key` under the server's data directory, found by
/// name rather than by knowing how users map to directories.
fn stored_file(data_dir: &Path, key: &str) -> PathBuf {
    let files = data_dir.join("files");
    for user in std::fs::read_dir(&files).expect("files/ exists") {
        let candidate = user.expect("dir entry").path().join(key);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!("no stored file for {key} under {}", files.display());
}

/// Flip 4 bytes of `key`'s stored content at `offset`, as a failing disk would.
fn corrupt_at_rest(data_dir: &Path, key: &str, offset: u64) {
    use std::os::unix::fs::FileExt;
    let path = stored_file(data_dir, key);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open stored file");
    let mut four = [0u8; 4];
    file.read_exact_at(&mut four, offset).expect("read");
    for b in &mut four {
        *b ^= 0xA5;
    }
    file.write_all_at(&four, offset).expect("write");
    file.sync_all().expect("sync");
}

/// GET with reqwest, reading the body chunk by chunk: the status, the
/// Content-Length, the bytes that arrived and whether the body ended in an error.
async fn reqwest_get(
    gw: &Gateway,
    path: &str,
    range: Option<&str>,
) -> (StatusCode, u64, Vec<u8>, bool) {
    // A connection of its own: after a body cut short the gateway closes its
    // connection, and a pooled one could be picked just as it closes.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let mut req = client.get(gw.at(path));
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let resp = tokio::time::timeout(BOUND, req.send())
        .await
        .expect("response headers in time")
        .expect("GET");
    let status = resp.status();
    let length = resp.content_length().unwrap_or(0);
    let mut body = Vec::new();
    let mut failed = false;
    let mut stream = resp.bytes_stream();
    loop {
        match tokio::time::timeout(BOUND, stream.next()).await {
            Ok(Some(Ok(chunk))) => body.extend_from_slice(&chunk),
            Ok(Some(Err(_))) => {
                failed = true;
                break;
            }
            Ok(None) => break,
            Err(_) => panic!("{path}: the body neither ended nor failed in {BOUND:?}"),
        }
    }
    (status, length, body, failed)
}

/// curl's exit code for a GET of `url` (None when curl is not installed).
async fn curl_exit(url: String, range: Option<String>) -> Option<i32> {
    tokio::task::spawn_blocking(move || {
        let mut cmd = std::process::Command::new("curl");
        cmd.args([
            "--silent",
            "--show-error",
            "--max-time",
            "60",
            "--output",
            "/dev/null",
        ]);
        if let Some(r) = range {
            cmd.args(["--range", &r]);
        }
        let out = cmd.arg(&url).output().ok()?;
        eprintln!(
            "curl {url}: {:?} {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        out.status.code()
    })
    .await
    .expect("curl task")
}

/// Item 2: a whole-file GET of bytes corrupted at rest must never complete.
/// Corruption in the first block (found only at the end, by the md5) and in
/// the last block (found before it goes out) both abort the response; reqwest
/// sees a body error and fewer bytes than Content-Length, curl exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_get_of_bytes_corrupted_at_rest_never_completes() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |_| {}).await;
    corrupted_whole_gets_never_complete(&gw, step.data_dir()).await;
}

/// The same in process, where the gateway does not hash what it serves: the
/// store's own check of every block it reads must catch both corruptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_get_in_process_of_bytes_corrupted_at_rest_never_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Storage> = DiskStore::open(dir.path()).expect("store");
    let service = Arc::new(
        Service::new(store, TokenKey::new(TEST_SECRET, 86_400), Limits::default()).with_public(
            step_server::auth::Public {
                anonymous: step_core::access::Anonymous::Write,
                ..Default::default()
            },
        ),
    );
    let gw = support::gateway_in_process(service, |_, transfer| transfer.pool_wait_ms = 2000).await;
    corrupted_whole_gets_never_complete(&gw, dir.path()).await;
}

async fn corrupted_whole_gets_never_complete(gw: &Gateway, data_dir: &Path) {
    let size = 3 * 1024 * 1024 + 17;
    let body = pattern(size, 7);
    for (key, offset) in [("head.bin", 100u64), ("tail.bin", size as u64 - 10)] {
        gw.store(key, body.clone()).await;
        corrupt_at_rest(data_dir, key, offset);
    }
    // An intact file still downloads whole (the tail held back is released).
    gw.store("intact.bin", body.clone()).await;
    let (status, length, got, failed) = reqwest_get(gw, "/files/intact.bin", None).await;
    assert_eq!(
        (status, length, failed),
        (StatusCode::OK, size as u64, false)
    );
    assert!(got == body, "intact download has the stored bytes");
    // So does `bytes=0-`, which is the whole file and verified the same way.
    let (status, _, got, failed) = reqwest_get(gw, "/files/intact.bin", Some("bytes=0-")).await;
    assert_eq!((status, failed), (StatusCode::PARTIAL_CONTENT, false));
    assert!(got == body, "bytes=0- has the stored bytes");

    let mut failures = 0;
    for key in ["head.bin", "tail.bin"] {
        let path = format!("/files/{key}");
        let (status, length, got, failed) = reqwest_get(gw, &path, None).await;
        assert!(
            !(status == StatusCode::OK && !failed && got.len() as u64 == length),
            "{key}: a corrupted file came out as a complete, clean 200 ({} bytes)",
            got.len()
        );
        assert!(
            failed || !status.is_success(),
            "{key}: {status}, body did not fail"
        );
        assert!(
            (got.len() as u64) < size as u64,
            "{key}: all {} bytes went out",
            got.len()
        );
        failures += 1;

        let (status, _, got, failed) = reqwest_get(gw, &path, Some("bytes=0-")).await;
        assert!(
            failed || !status.is_success(),
            "{key} bytes=0-: {status}, body did not fail"
        );
        assert!(
            (got.len() as u64) < size as u64,
            "{key} bytes=0-: all bytes went out"
        );
        failures += 1;

        match curl_exit(gw.at(&path), None).await {
            Some(code) => {
                assert_ne!(code, 0, "{key}: curl exited 0 on a corrupted download");
                failures += 1;
            }
            None => eprintln!("curl is not installed: the curl half of this test did not run"),
        }
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        series(&metrics, "gateway_download_integrity_failures_total"),
        Some(f64::from(failures)),
        "{metrics}"
    );
}

/// Item 2, ranges: a Range over a block corrupted at rest must fail instead of
/// answering 206 with wrong bytes. The whole-file md5 cannot check a range; our
/// server checks a CRC per 4 KiB at rest on DOWNLOAD and refuses a bad block
/// (406, reason `integrity`), and the gateway aborts the response then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_over_a_block_corrupted_at_rest_fails() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |_| {}).await;
    let body = pattern(1024 * 1024, 9);
    gw.store("range.bin", body).await;
    corrupt_at_rest(step.data_dir(), "range.bin", 600_000);
    let range = "bytes=590000-610000";
    let (status, _, got, failed) = reqwest_get(&gw, "/files/range.bin", Some(range)).await;
    assert!(
        failed || !status.is_success(),
        "a range over corrupted bytes answered {status} with {} bytes and no error",
        got.len()
    );
    if let Some(code) = curl_exit(gw.at("/files/range.bin"), Some("590000-610000".into())).await {
        assert_ne!(code, 0, "curl exited 0 on a corrupted range");
    }
    let metrics = gw.metrics().await;
    assert!(
        series(&metrics, "gateway_download_integrity_failures_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

/// A STEP server holding one file, `rot.bin` (3 blocks of 20 KiB), whose
/// middle block fails its at-rest check: DOWNLOAD of block 1 answers 406 with
/// reason `integrity`, as our server does for a block whose checksum fails.
async fn rotten_backend() -> (SocketAddr, Vec<u8>) {
    use futures::SinkExt;
    use serde_json::{Value, json};
    use step_core::message::field;
    use step_core::{Message, Status, StepCodec};
    const BS: usize = 20 * 1024;
    let content = pattern(3 * BS, 5);
    let md5 = step_core::digest::md5_hex(&content);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = content.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let (content, md5) = (served.clone(), md5.clone());
            tokio::spawn(async move {
                let mut framed = tokio_util::codec::Framed::new(socket, StepCodec::default());
                while let Some(Ok(frame)) = framed.next().await {
                    let Ok(req) = Message::from_frame(frame) else {
                        break;
                    };
                    let text =
                        |f: &str| req.get(f).and_then(Value::as_str).unwrap_or("").to_owned();
                    let (op, kind) = (text("operation"), text("type"));
                    let mut resp = Message::response(&op, &kind, Status::Ok, "ok");
                    match (op.as_str(), kind.as_str()) {
                        ("LOGIN", _) => {
                            resp.set(field::TOKEN, "ZmFrZQ==");
                            resp.set(
                                field::CAPABILITIES,
                                json!({"pipelining": true, "resume": false, "max_block_size": BS}),
                            );
                        }
                        ("GET", "FILE") if text("key") == "rot.bin" => {
                            for (k, v) in [
                                ("key", json!("rot.bin")),
                                ("size", json!(content.len())),
                                ("block_size", json!(BS)),
                                ("total_block", json!(3)),
                                ("md5", json!(md5)),
                            ] {
                                resp.set(k, v);
                            }
                        }
                        ("DOWNLOAD", _) => {
                            let i = req.get("block_index").and_then(Value::as_u64).unwrap_or(99)
                                as usize;
                            resp.set("block_index", json!(i));
                            if i == 1 {
                                resp.set(field::STATUS, 406);
                                resp.set(field::REASON, "integrity");
                            } else if let Some(block) = content.chunks(BS).nth(i) {
                                resp = resp.with_binary(bytes::Bytes::copy_from_slice(block));
                            } else {
                                resp.set(field::STATUS, 404);
                            }
                        }
                        _ => resp.set(field::STATUS, 403),
                    }
                    if framed.send(resp).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, content)
}

/// Item 2, ranges, gateway side: when the server refuses a block as corrupt
/// at rest (406, reason `integrity`), a Range over it fails (body error, curl
/// non-zero) instead of completing a 206; ranges over good blocks still work;
/// the failure is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_over_a_block_the_server_refuses_as_corrupt_fails() {
    let (addr, content) = rotten_backend().await;
    let gw = gateway_with(addr, |_| {}).await;
    let (status, _, got, failed) = reqwest_get(&gw, "/files/rot.bin", Some("bytes=0-100")).await;
    assert_eq!((status, failed), (StatusCode::PARTIAL_CONTENT, false));
    assert!(got == content[..=100], "a good block is served");

    let mut failures = 0;
    for range in ["bytes=20480-30000", "bytes=100-30000", "bytes=30000-"] {
        let (status, length, got, failed) = reqwest_get(&gw, "/files/rot.bin", Some(range)).await;
        assert!(
            failed || !status.is_success(),
            "{range}: {status} with {} of {length} bytes and no error",
            got.len()
        );
        failures += 1;
    }
    let (status, _, _, failed) = reqwest_get(&gw, "/files/rot.bin", None).await;
    assert!(
        failed || !status.is_success(),
        "whole file: {status}, no error"
    );
    failures += 1;
    if let Some(code) = curl_exit(gw.at("/files/rot.bin"), Some("100-30000".into())).await {
        assert_ne!(code, 0, "curl exited 0 on a range over a refused block");
        failures += 1;
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        series(&metrics, "gateway_download_integrity_failures_total"),
        Some(f64::from(failures)),
        "{metrics}"
    );
}

/// A raw HTTP/1.1 GET over a socket with a tiny receive buffer, read only up
/// to the end of the response headers: the gateway has its pooled connection
/// by then, and the body is never read.
async fn unread_get(gw: &Gateway, path: &str) -> (TcpStream, u64, usize) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(gw.addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    let end = loop {
        let n = tokio::time::timeout(BOUND, stream.read(&mut buf))
            .await
            .expect("response headers in time")
            .expect("read");
        assert!(n > 0, "the gateway closed before answering");
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        assert!(head.len() < 64 * 1024, "no end of headers");
    };
    let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    (stream, length, head.len() - end)
}

/// Item 3, downloads: clients that send GET and never read the body must not
/// hold pooled STEP connections forever. With a pool of 2 taken by two unread
/// downloads, normal requests wait (event: a connection comes free, bounded by
/// a long pool wait) and succeed once the gateway gives up on the stalled
/// bodies; the pool then shows nothing in use, and the stalled clients, when
/// they finally read, get a cut-off body rather than a complete one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_download_bodies_give_their_connections_back() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |t| {
        t.pool_size = 2;
        // Long enough that only a freed connection, never the wait running
        // out, lets the normal requests below through.
        t.pool_wait_ms = BOUND.as_millis() as u64;
        // Small blocks and window: the stall shows after few buffered bytes.
        t.block_size = 20 * 1024;
        t.window = 2;
    })
    .await;
    let size = 8 * 1024 * 1024;
    let body = pattern(size, 3);
    gw.store("big.bin", body.clone()).await;
    gw.store("small.txt", b"still served\n".to_vec()).await;

    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(unread_get(&gw, "/files/big.bin").await);
    }
    // Both pooled connections are on loan to the unread downloads now.
    let metrics = gw.metrics().await;
    assert_eq!(
        series(&metrics, "gateway_pool_in_use"),
        Some(2.0),
        "{metrics}"
    );

    let normal = |path: &'static str| {
        let gw = &gw;
        async move {
            let r = gw.client.get(gw.at(path)).send().await.expect("GET");
            let status = r.status();
            (status, r.bytes().await.expect("body"))
        }
    };
    // Longer than the pool wait, so on a gateway that never frees the
    // connections the requests fail with their 503 rather than this timeout.
    let (a, b) = tokio::time::timeout(BOUND + Duration::from_secs(30), async {
        tokio::join!(normal("/files/small.txt"), normal("/files/small.txt"))
    })
    .await
    .expect("normal downloads finished in time");
    for (status, got) in [a, b] {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&got[..], b"still served\n");
    }
    // One freed connection can serve both normal requests in turn; the
    // other stalled download gives its connection back on its own clock.
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let metrics = gw.metrics().await;
        let stalls = series(&metrics, "gateway_download_stalls_total");
        let in_use = series(&metrics, "gateway_pool_in_use");
        if stalls == Some(2.0) && in_use == Some(0.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both stalled downloads should give their connections back:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    for (mut stream, length, already) in stalled {
        let mut rest = Vec::new();
        tokio::time::timeout(BOUND, stream.read_to_end(&mut rest))
            .await
            .expect("the stalled response ends once read")
            .ok();
        let got = (already + rest.len()) as u64;
        assert!(
            got < length,
            "a stalled download completed ({got} of {length} bytes)"
        );
    }
}

// ------------------------------------------------ what schemathesis found

/// A multipart body with the file part first, then `tail`, as raw bytes.
fn form_with_tail(file_name: &str, tail: &[u8]) -> Vec<u8> {
    let mut body = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\nhello\r\n"
    )
    .into_bytes();
    body.extend_from_slice(tail);
    body
}

/// Item 12: the contract forbids part names with control characters (other
/// than tab, CR, LF, which the encoding escapes). A form carrying one after
/// the file part was stored anyway (201); now the whole form is read before
/// anything is stored, so it is refused (400) and nothing is kept. A
/// well-formed extra part after the file is still fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_part_names_with_control_characters_are_refused() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |_| {}).await;
    let post = |body: Vec<u8>| {
        gw.client
            .post(gw.at("/upload"))
            .header("content-type", "multipart/form-data; boundary=XyZ")
            .body(body)
            .send()
    };
    for (name, bad) in [
        ("ctl1.txt", &b"a\x01b"[..]),
        ("ctl2.txt", b"del\x7f"),
        ("ctl3.txt", b"\x1b[0m"),
    ] {
        let mut tail = b"--XyZ\r\nContent-Disposition: form-data; name=\"".to_vec();
        tail.extend_from_slice(bad);
        tail.extend_from_slice(b"\"\r\n\r\nv\r\n--XyZ--\r\n");
        let r = post(form_with_tail(name, &tail)).await.expect("POST");
        assert_eq!(
            r.status(),
            StatusCode::BAD_REQUEST,
            "{name}: part name {bad:?}"
        );
        let got = gw
            .client
            .get(gw.at(&format!("/files/{name}")))
            .send()
            .await
            .expect("GET");
        assert_eq!(got.status(), StatusCode::NOT_FOUND, "{name} was stored");
    }
    let ok = form_with_tail(
        "fine.txt",
        b"--XyZ\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--XyZ--\r\n",
    );
    let r = post(ok).await.expect("POST");
    assert_eq!(r.status(), StatusCode::CREATED);
    let got = gw
        .client
        .get(gw.at("/files/fine.txt"))
        .send()
        .await
        .expect("GET");
    assert_eq!(got.bytes().await.expect("body").as_ref(), b"hello");
}

/// Item 12: HEAD with an unsatisfiable Range answers 416 like GET (with
/// `Content-Range: bytes */size` and no body), as openapi.yaml lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_with_an_unsatisfiable_range_is_416() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |_| {}).await;
    gw.store("h.bin", pattern(1000, 1)).await;
    let r = gw
        .client
        .head(gw.at("/files/h.bin"))
        .header("range", "bytes=5000-")
        .send()
        .await
        .expect("HEAD");
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.headers()["content-range"], "bytes */1000");
    assert!(r.bytes().await.expect("no body").is_empty());
    let spec = gw
        .client
        .get(gw.at("/openapi.yaml"))
        .send()
        .await
        .expect("GET");
    let spec = spec.text().await.expect("spec");
    let head = &spec[spec.find("operationId: headFile").expect("headFile")..];
    let head = &head[..head.find("operationId: deleteFile").expect("deleteFile")];
    assert!(head.contains("'416'"), "HEAD /files/{{key}} lists 416");
}
