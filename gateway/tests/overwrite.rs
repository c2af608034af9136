//! Overwrite over real sockets (reqwest): `PUT /files/{key}` replaces
//! atomically, `If-None-Match: *` / `If-Match` make it conditional,
//! `POST /upload` stays create-only unless `?overwrite=true`; readers see
//! the old or the new file, never a mix; behind a STEP server without the
//! `replace` extension an existing key is 409 (and If-Match 501).

mod support;

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::Value;
use step_core::digest::md5_hex;
use step_server::service::{Extensions, Limits};
use step_tests::{TestConfig, TestServer, pattern};
use support::{Gateway, gateway, gateway_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn put_with(
    gw: &Gateway,
    key: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (StatusCode, Value) {
    let mut req = gw.client.put(gw.at(&format!("/files/{key}"))).body(body);
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let r = req.send().await.expect("PUT");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn etag(body: &[u8]) -> String {
    format!("\"{}\"", md5_hex(body))
}

#[tokio::test]
async fn put_replaces_and_conditions_decide() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    let (v1, v2, v3) = (pattern(3000, 1), pattern(5000, 2), pattern(10, 3));
    assert_eq!(
        put_with(&gw, "k", v1.clone(), &[]).await.0,
        StatusCode::CREATED
    );
    let (status, body) = put_with(&gw, "k", v2.clone(), &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["md5"], md5_hex(&v2));
    let (status, headers, got) = gw.get_bytes("/files/k").await;
    assert_eq!((status, got.as_slice()), (StatusCode::OK, v2.as_slice()));
    assert_eq!(headers["etag"], etag(&v2).as_str());

    // If-None-Match: * is create-only.
    let (status, body) = put_with(&gw, "k", v3.clone(), &[("if-none-match", "*")]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PRECONDITION_FAILED, Some("precondition_failed"))
    );
    let (status, _) = put_with(&gw, "fresh", v3.clone(), &[("if-none-match", "*")]).await;
    assert_eq!(status, StatusCode::CREATED);
    // If-Match replaces only the version it names.
    let stale = etag(&v1);
    let (status, _) = put_with(&gw, "k", v3.clone(), &[("if-match", &stale)]).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    let (status, _) = put_with(&gw, "absent", v3.clone(), &[("if-match", "*")]).await;
    assert_eq!(
        status,
        StatusCode::PRECONDITION_FAILED,
        "If-Match on nothing"
    );
    assert_eq!(
        gw.get("/files/absent").await.status(),
        StatusCode::NOT_FOUND
    );
    let current = etag(&v2);
    let (status, _) = put_with(&gw, "k", v3.clone(), &[("if-match", &current)]).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, _, got) = gw.get_bytes("/files/k").await;
    assert_eq!(got, v3);

    // POST /upload: create-only unless ?overwrite=true.
    let r = gw.multipart("k", v1.clone()).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let part = reqwest::multipart::Part::bytes(v1.clone()).file_name("k");
    let r = gw
        .client
        .post(gw.at("/upload?overwrite=true"))
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::CREATED);
    let (_, _, got) = gw.get_bytes("/files/k").await;
    assert_eq!(got, v1);
    // An empty body replaces too.
    assert_eq!(
        put_with(&gw, "k", Vec::new(), &[]).await.0,
        StatusCode::CREATED
    );
    assert_eq!(gw.get_bytes("/files/k").await.2, Vec::<u8>::new());
    let listed: Value = gw.get("/files?prefix=k").await.json().await.expect("json");
    assert_eq!(listed["files"].as_array().map(Vec::len), Some(1));
}

/// Two PUTs with the same If-Match race: exactly one wins, the other 412.
#[tokio::test]
async fn racing_if_match_puts_one_wins() {
    let step = TestServer::start().await;
    let gw = Arc::new(gateway(step.addr).await);
    for round in 0..6u8 {
        let key = format!("race{round}");
        let v1 = pattern(1000, round);
        gw.store(&key, v1.clone()).await;
        let tag = etag(&v1);
        let puts = (0..2u8).map(|i| {
            let (gw, key, tag) = (Arc::clone(&gw), key.clone(), tag.clone());
            // Large enough that the two uploads overlap.
            let body = pattern(600_000 + usize::from(i), 10 + i);
            tokio::spawn(async move {
                (
                    put_with(&gw, &key, body.clone(), &[("if-match", &tag)]).await,
                    body,
                )
            })
        });
        let results: Vec<_> = futures::future::join_all(puts)
            .await
            .into_iter()
            .map(|r| r.expect("task"))
            .collect();
        let won: Vec<_> = results
            .iter()
            .filter(|((s, _), _)| s.is_success())
            .collect();
        let lost: Vec<_> = results
            .iter()
            .filter(|((s, _), _)| *s == StatusCode::PRECONDITION_FAILED)
            .collect();
        assert_eq!(
            (won.len(), lost.len()),
            (1, 1),
            "round {round}: {:?}",
            results.iter().map(|((s, b), _)| (s, b)).collect::<Vec<_>>()
        );
        let (_, _, got) = gw.get_bytes(&format!("/files/{key}")).await;
        assert_eq!(got, won[0].1, "the winner's bytes are the file");
    }
}

/// A raw HTTP/1.1 GET over a socket with a tiny receive buffer, so the body
/// is fetched from the STEP server only as fast as this test reads it
/// (reqwest's socket would take megabytes ahead). Returns the stream, the
/// Content-Length and the body bytes read with the headers.
async fn slow_get(gw: &Gateway, path: &str) -> (TcpStream, usize, Vec<u8>) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(gw.addr).await.expect("connect");
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        gw.addr
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "closed before the headers");
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    (stream, length, head[end..].to_vec())
}

/// A download that began before a replace finishes with the old bytes (the
/// old version is kept for it); one whose version is gone (replaced twice)
/// is cut short; never a mix.
#[tokio::test]
async fn readers_see_old_or_new_never_a_mix() {
    let step = TestServer::start().await;
    // Small blocks and a window of one: the download fetches its blocks as
    // the client reads, long after the replace.
    let gw = gateway_with(step.addr, |_, t| {
        t.window = 1;
        t.block_size = 20480;
    })
    .await;
    // Larger than what the socket buffers between gateway and test can
    // hold ahead of the reader (a few MiB).
    let old = pattern(8 << 20, 7);
    let new = pattern(8 << 20, 8);
    for replaces in [1, 2] {
        gw.store("big", old.clone()).await;
        let (mut stream, length, mut got) = slow_get(&gw, "/files/big").await;
        assert_eq!(length, old.len());
        let mut buf = vec![0u8; 4096];
        while got.len() < 100_000 {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "cut short before any replace");
            got.extend_from_slice(&buf[..n]);
        }
        for i in 0..replaces {
            let v = if i == 0 {
                new.clone()
            } else {
                pattern(1 << 20, 9)
            };
            gw.store("big", v).await;
        }
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        // Never a mix: what arrived is the old file, whole or a prefix of it.
        assert!(
            old.starts_with(&got),
            "{replaces} replace(s): bytes of another version"
        );
        if replaces == 1 {
            assert_eq!(
                got.len(),
                old.len(),
                "kept for the download: old bytes, whole"
            );
        } else {
            assert!(
                got.len() < old.len(),
                "its version is gone: cut short, not mixed"
            );
        }
        // New readers get the current file, whole.
        let (_, h, now) = gw.get_bytes("/files/big").await;
        assert_eq!(h["etag"], etag(&now).as_str());
    }
}

#[tokio::test]
async fn without_the_replace_extension_put_of_an_existing_key_is_409() {
    let step = TestServer::start_with(TestConfig {
        limits: Limits {
            extensions: Extensions {
                replace: false,
                ..Extensions::default()
            },
            ..Limits::default()
        },
        ..TestConfig::default()
    })
    .await;
    let gw = gateway(step.addr).await;
    gw.store("k", b"one".to_vec()).await;
    let (status, body) = put_with(&gw, "k", b"two".to_vec(), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("key_exists"))
    );
    let (status, body) = put_with(&gw, "k", b"two".to_vec(), &[("if-match", &etag(b"one"))]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_IMPLEMENTED, Some("not_implemented"))
    );
    let (status, _) = put_with(&gw, "k", b"two".to_vec(), &[("if-none-match", "*")]).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(gw.get_bytes("/files/k").await.2, b"one");
}

/// A replacing PUT whose bytes are damaged between the gateway and the
/// STEP server (one bit of one UPLOAD flipped by a proxy) fails, and the
/// key keeps its old file: the server checks the gateway's md5 before the
/// new version takes the old one's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_damaged_on_the_way_leaves_the_old_file() {
    let step = TestServer::start().await;
    let proxy = step_tests::proxy::Proxy::start(step.addr).await;
    let gw = gateway_with(proxy.addr, |_, t| {
        t.block_size = 64 * 1024;
    })
    .await;
    let (v1, v2) = (pattern(300_000, 1), pattern(400_000, 2));
    assert_eq!(
        put_with(&gw, "k", v1.clone(), &[]).await.0,
        StatusCode::CREATED
    );
    proxy.flip_uploads(1);
    let (status, body) = put_with(&gw, "k", v2.clone(), &[]).await;
    assert_eq!(proxy.flips_left(), 0, "a block was damaged");
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_GATEWAY, Some("md5_mismatch")),
        "{body}"
    );
    // The table's words: damaged on the way, the old version kept.
    assert_eq!(
        body["message"].as_str(),
        Some(step_core::Problem::Md5Mismatch.words()),
        "{body}"
    );
    let (status, _, got) = gw.get_bytes("/files/k").await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == v1, "the old file stays");

    // Undamaged, the same PUT replaces it.
    let (status, body) = put_with(&gw, "k", v2.clone(), &[]).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, _, got) = gw.get_bytes("/files/k").await;
    assert!(got == v2);
}
