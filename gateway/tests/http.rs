//! The gateway end to end: real HTTP (reqwest) against `app(state)` on a
//! free port, in front of a real step-server on another.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use step_core::digest::md5_hex;
use step_tests::{TestConfig, TestServer, pattern};
use tokio::net::TcpListener;

mod support;
use support::{gateway, gateway_with, step_on};

async fn error_code(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let body: Value = r.json().await.expect("JSON error body");
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (
        status,
        body["error"].as_str().expect("error code").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_upload_download_range_head_delete() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    let body = pattern(3 * 1024 * 1024 + 17, 1);
    let r = gw.multipart("otter.jpg", body.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(r.headers()["location"], "/files/otter.jpg");
    let stored: Value = r.json().await.expect("json");
    assert_eq!(
        stored,
        json!({"key": "otter.jpg", "size": body.len(), "md5": md5_hex(&body), "url": "/files/otter.jpg"})
    );

    let (status, headers, got) = gw.get_bytes("/files/otter.jpg").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, body);
    assert_eq!(headers["content-type"], "image/jpeg");
    assert_eq!(headers["content-length"], body.len().to_string().as_str());
    assert_eq!(headers["etag"], format!("\"{}\"", md5_hex(&body)).as_str());
    assert_eq!(headers["accept-ranges"], "bytes");

    for (range, lo, hi) in [
        ("bytes=0-0", 0, 0),
        ("bytes=1000-600000", 1000, 600_000),
        ("bytes=-5", body.len() - 5, body.len() - 1),
        ("bytes=3145000-", 3_145_000, body.len() - 1),
    ] {
        let r = gw.get_range("/files/otter.jpg", range).await;
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            r.headers()["content-range"],
            format!("bytes {lo}-{hi}/{}", body.len()).as_str()
        );
        assert_eq!(
            r.bytes().await.expect("body").to_vec(),
            body[lo..=hi].to_vec(),
            "{range}"
        );
    }
    let r = gw.get_range("/files/otter.jpg", "bytes=99999999-").await;
    assert_eq!(
        r.headers()["content-range"],
        format!("bytes */{}", body.len()).as_str()
    );
    assert_eq!(
        error_code(r).await,
        (
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable".into()
        )
    );

    let head = gw
        .client
        .head(gw.at("/files/otter.jpg"))
        .send()
        .await
        .expect("head");
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(
        head.headers()["content-length"],
        body.len().to_string().as_str()
    );
    assert_eq!(head.headers()["etag"], headers["etag"]);
    let cached = gw
        .client
        .get(gw.at("/files/otter.jpg"))
        .header("if-none-match", headers["etag"].clone())
        .send()
        .await
        .expect("get");
    assert_eq!(cached.status(), StatusCode::NOT_MODIFIED);

    let again = gw.multipart("otter.jpg", b"other".to_vec()).await;
    assert_eq!(
        error_code(again).await,
        (StatusCode::CONFLICT, "key_exists".into())
    );
    let del = gw.delete("/files/otter.jpg").await;
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let gone = gw.get("/files/otter.jpg").await;
    assert_eq!(
        error_code(gone).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let gone = gw.delete("/files/otter.jpg").await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_streams_and_chunked_or_large_bodies_spool() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |http, _| http.spool_threshold = 64 * 1024).await;
    // With Content-Length: streamed straight through.
    let body = pattern(9 * 1024 * 1024 + 5, 2);
    let r = gw
        .client
        .put(gw.at("/files/dir/sub/big.iso"))
        .body(body.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["key"].as_str(), v["md5"].as_str()),
        (Some("dir/sub/big.iso"), Some(md5_hex(&body).as_str()))
    );
    assert_eq!(gw.get_bytes("/files/dir/sub/big.iso").await.2, body);
    // Chunked (no Content-Length): spooled to learn the size first.
    let small = pattern(300_000, 3);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        small.chunks(7000).map(|c| Ok(c.to_vec())).collect();
    let r = gw
        .client
        .put(gw.at("/files/chunked.bin"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(gw.get_bytes("/files/chunked.bin").await.2, small);
    // Multipart above the spool threshold, and an empty file.
    assert_eq!(
        gw.multipart("spooled.bin", small.clone()).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(gw.get_bytes("/files/spooled.bin").await.2, small);
    let r = gw.multipart("empty.txt", Vec::new()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["md5"], "d41d8cd98f00b204e9800998ecf8427e");
    let (status, headers, got) = gw.get_bytes("/files/empty.txt").await;
    assert_eq!((status, got.len()), (StatusCode::OK, 0));
    assert_eq!(headers["content-length"], "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_get_clear_errors() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |http, _| http.max_upload = 1000).await;
    let r = gw
        .client
        .put(gw.at("/files/too-big"))
        .body(vec![0u8; 1001])
        .send()
        .await
        .expect("put");
    assert_eq!(
        error_code(r).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large".into())
    );
    let r = gw.multipart("too-big", vec![0u8; 5000]).await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large".into())
    );
    let form = reqwest::multipart::Form::new().text("note", "no file here");
    let r = gw
        .client
        .post(gw.at("/upload"))
        .multipart(form)
        .send()
        .await
        .expect("post");
    assert_eq!(
        error_code(r).await,
        (StatusCode::BAD_REQUEST, "bad_request".into())
    );
    let r = gw
        .client
        .post(gw.at("/upload"))
        .header("content-type", "multipart/form-data; boundary=x")
        .body("garbage")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    // Nothing half-stored is visible afterwards.
    let r = gw.get("/files/too-big").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = gw.get("/no/such/route").await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_round_trip_with_errors() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    let key = gw
        .post_record(&json!({"name": "otter", "n": 3, "tags": ["a", "b"], "é": "ü"}))
        .await;
    let got = gw.get_json(&format!("/records/{key}")).await;
    assert_eq!(got["name"], "otter");
    assert_eq!(got["tags"], json!(["a", "b"]));
    assert_eq!(got["é"], "ü");
    let r = gw
        .client
        .put(gw.at("/records/mine"))
        .json(&json!({"v": 1}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = gw
        .client
        .put(gw.at("/records/mine"))
        .json(&json!({"v": 2}))
        .send()
        .await
        .expect("put");
    assert_eq!(
        error_code(r).await,
        (StatusCode::CONFLICT, "key_exists".into())
    );
    for bad in [
        json!([1, 2]),
        json!({"token": "x"}),
        json!({"type": "FILE"}),
        json!("s"),
    ] {
        let r = gw
            .client
            .post(gw.at("/records"))
            .json(&bad)
            .send()
            .await
            .expect("post");
        assert_eq!(
            error_code(r).await.0,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{bad}"
        );
    }
    let r = gw
        .client
        .post(gw.at("/records"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(
        r.status(),
        StatusCode::UNPROCESSABLE_ENTITY
            .min(StatusCode::BAD_REQUEST)
            .max(r.status())
    );
    assert!(r.status().is_client_error());
    let r = gw
        .client
        .post(gw.at("/records"))
        .header("content-type", "application/json")
        .body(format!("{{\"a\":\"{}\"}}", "x".repeat(300 * 1024)))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        gw.delete("/records/mine").await.status(),
        StatusCode::NO_CONTENT
    );
    let r = gw.get("/records/mine").await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::NOT_FOUND, "not_found".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_tokens_isolate_users_and_auth_can_be_required() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    let r = gw
        .client
        .post(gw.at("/login"))
        .json(&json!({"username": "alice"}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::OK);
    let alice = r.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let r = gw
        .client
        .post(gw.at("/login"))
        .json(&json!({"username": "bob", "password": "wrong"}))
        .send()
        .await
        .expect("login");
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "wrong_password".into())
    );
    let r = gw
        .client
        .post(gw.at("/login"))
        .json(&json!({"user": "x"}))
        .send()
        .await
        .expect("login");
    assert_eq!(error_code(r).await.0, StatusCode::UNPROCESSABLE_ENTITY);

    let r = gw
        .client
        .put(gw.at("/files/private.txt"))
        .bearer_auth(&alice)
        .body("alice only")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = gw
        .client
        .get(gw.at("/files/private.txt"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("get");
    assert_eq!(r.text().await.expect("text"), "alice only");
    // The default user is somebody else.
    assert_eq!(
        gw.get("/files/private.txt").await.status(),
        StatusCode::NOT_FOUND
    );
    for bad in ["Bearer not-a-token", "Bearer ", "Basic abc"] {
        let r = gw
            .client
            .get(gw.at("/files/private.txt"))
            .header("authorization", bad)
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad}");
        assert!(r.headers().contains_key("www-authenticate"));
    }

    let strict = gateway_with(step.addr, |http, _| http.require_auth = true).await;
    let r = strict.get("/files/private.txt").await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    let r = strict
        .client
        .get(strict.at("/files/private.txt"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_down_then_back_recovers_without_restart() {
    let parent = tempfile::tempdir().expect("tmp");
    let dir = parent.path().join("store");
    let step = TestServer::start_with(TestConfig {
        data_dir: Some(dir.clone()),
        ..TestConfig::default()
    })
    .await;
    let addr = step.addr;
    let gw = gateway(addr).await;
    assert_eq!(
        gw.client
            .put(gw.at("/files/a.txt"))
            .body("before")
            .send()
            .await
            .expect("put")
            .status(),
        StatusCode::CREATED
    );
    assert_eq!(gw.get("/readyz").await.status(), StatusCode::OK);
    step.shutdown().await;
    for path in ["/readyz", "/files/a.txt"] {
        let r = gw.get(path).await;
        assert_eq!(
            error_code(r).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "backend_unavailable".into()
            ),
            "{path}"
        );
    }
    assert_eq!(gw.get("/healthz").await.status(), StatusCode::OK);
    // Back on the same port and store, with a new token secret (as a server
    // without a configured secret gets at each start): the gateway reconnects
    // and logs its default user in again by itself.
    let _step = step_on(addr, dir, b"a new secret").await;
    let r = gw.get("/files/a.txt").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("text"), "before");
    assert_eq!(gw.get("/readyz").await.status(), StatusCode::OK);
    let metrics = gw.get("/metrics").await.text().await.expect("text");
    assert!(
        metrics.contains("gateway_backend_errors_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_backend_gives_504_and_no_backend_503() {
    // Accepts connections, never answers.
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent_addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let gw = gateway_with(silent_addr, |_, t| t.backend_timeout = 1).await;
    let started = std::time::Instant::now();
    let r = gw.get("/records/x").await;
    assert_eq!(
        error_code(r).await,
        (StatusCode::GATEWAY_TIMEOUT, "backend_timeout".into())
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the backend timeout"
    );

    // Nothing listening at all.
    let closed = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .local_addr()
        .expect("addr");
    let gw = gateway(closed).await;
    let r = gw
        .client
        .put(gw.at("/files/x"))
        .body("x")
        .send()
        .await
        .expect("put");
    assert_eq!(
        error_code(r).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable".into()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_answers_503_then_recovers() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |_, t| {
        t.pool_size = 1;
        t.pool_wait_ms = 200;
        t.window = 1;
    })
    .await;
    let body = pattern(8 * 1024 * 1024, 4);
    assert_eq!(
        gw.client
            .put(gw.at("/files/held.bin"))
            .body(body)
            .send()
            .await
            .expect("put")
            .status(),
        StatusCode::CREATED
    );
    // A download whose body is not read holds the only connection.
    let held = gw.get("/files/held.bin").await;
    assert_eq!(held.status(), StatusCode::OK);
    let r = gw.get("/records/any").await;
    assert_eq!(
        error_code(r).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "backend_unavailable".into()
        )
    );
    drop(held);
    let mut ok = false;
    for _ in 0..50 {
        let r = gw.get("/records/any").await;
        if r.status() == StatusCode::NOT_FOUND {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "the connection came back to the pool (or was replaced)");
}

/// A STEP server that accepts every block but reports a wrong md5, and
/// remembers whether the gateway then deleted the file.
async fn lying_backend() -> (SocketAddr, Arc<std::sync::atomic::AtomicBool>) {
    use futures::{SinkExt, StreamExt};
    use step_core::message::field;
    use step_core::{Message, Status, StepCodec};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let deleted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = Arc::clone(&deleted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let flag = Arc::clone(&flag);
            tokio::spawn(async move {
                let mut framed = tokio_util::codec::Framed::new(socket, StepCodec::default());
                let mut total = 0u64;
                let mut seen = 0u64;
                while let Some(Ok(frame)) = framed.next().await {
                    let req = Message::from_frame(frame).expect("json");
                    let op = req
                        .get("operation")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    let kind = req
                        .get("type")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned();
                    let mut resp = Message::response(&op, &kind, Status::Ok, "ok");
                    match op.as_str() {
                        "LOGIN" => {
                            resp.set(field::TOKEN, "ZmFrZQ==");
                            resp.set(field::CAPABILITIES, json!({"pipelining": true, "resume": false, "max_block_size": 1 << 20}));
                        }
                        "SAVE" => {
                            let size = req.get("size").and_then(Value::as_u64).unwrap_or(0);
                            let bs = req
                                .get("block_size")
                                .and_then(Value::as_u64)
                                .unwrap_or(20480);
                            total = size.div_ceil(bs);
                            for (k, v) in [
                                ("size", json!(size)),
                                ("block_size", json!(bs)),
                                ("total_block", json!(total)),
                            ] {
                                resp.set(k, v);
                            }
                            resp.set("key", req.get("key").cloned().unwrap_or(json!("k")));
                        }
                        "UPLOAD" => {
                            seen += 1;
                            resp.set(
                                "block_index",
                                req.get("block_index").cloned().unwrap_or(json!(0)),
                            );
                            if seen == total {
                                resp.set("md5", "00000000000000000000000000000000");
                            }
                        }
                        "DELETE" => flag.store(true, std::sync::atomic::Ordering::SeqCst),
                        _ => resp.set(field::STATUS, 404),
                    }
                    if framed.send(resp).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, deleted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_mismatch_fails_loudly_and_removes_the_file() {
    let (addr, deleted) = lying_backend().await;
    let gw = gateway(addr).await;
    let body = pattern(2 * 1024 * 1024 + 1, 6);
    let r = gw
        .client
        .put(gw.at("/files/liar.bin"))
        .body(body)
        .send()
        .await
        .expect("put");
    let status = r.status();
    let v: Value = r.json().await.expect("json");
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{v}");
    assert_eq!(v["error"], "md5_mismatch");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("00000000000000000000000000000000")),
        "{v}"
    );
    assert!(
        deleted.load(std::sync::atomic::Ordering::SeqCst),
        "the mismatching file was deleted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_dying_mid_upload_fails_cleanly_then_recovers() {
    let parent = tempfile::tempdir().expect("tmp");
    let dir = parent.path().join("store");
    let step = TestServer::start_with(TestConfig {
        data_dir: Some(dir.clone()),
        ..TestConfig::default()
    })
    .await;
    let addr = step.addr;
    let gw = gateway(addr).await;
    // A body that trickles in, so the backend can die in the middle of it.
    let chunk = pattern(256 * 1024, 7);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let size = 64 * chunk.len();
    let before = step_tests::wait::dir_bytes(&dir);
    let upload = {
        let req = gw
            .client
            .put(gw.at("/files/interrupted.bin"))
            .header("content-length", size)
            .body(reqwest::Body::wrap_stream(futures::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|item| (item, rx)) },
            )));
        tokio::spawn(async move { req.send().await })
    };
    for _ in 0..8 {
        tx.send(Ok(chunk.clone())).await.expect("feed");
    }
    // The backend dies once the upload has begun there (its store grew: the
    // SAVE's file or the first blocks), not after a fixed wait that may come
    // before the upload reached it.
    step_tests::wait::until(
        "the upload to reach the backend's store",
        Duration::from_secs(10),
        || step_tests::wait::dir_bytes(&dir) > before,
    )
    .await;
    step.shutdown().await;
    // Keep feeding until the gateway stops reading; then it must answer.
    let started = std::time::Instant::now();
    for _ in 8..64 {
        if tx.send(Ok(chunk.clone())).await.is_err() {
            break;
        }
    }
    drop(tx);
    let resp = tokio::time::timeout(Duration::from_secs(20), upload)
        .await
        .expect("the gateway answers within its timeouts")
        .expect("join");
    match resp {
        Ok(r) => {
            let (status, code) = error_code(r).await;
            assert!(status.is_server_error(), "{status} {code}");
            assert!(
                ["backend_unavailable", "backend_timeout", "bad_gateway"].contains(&code.as_str()),
                "{code}"
            );
        }
        // The gateway may also cut the request body off once it has
        // answered; either way nothing hangs.
        Err(e) => assert!(
            e.is_request() || e.is_body() || e.is_connect() || e.is_timeout(),
            "{e}"
        ),
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    // The server comes back; the half-finished key is not a file.
    let _step = step_on(addr, dir, step_tests::TEST_SECRET).await;
    let r = gw.get("/files/interrupted.bin").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = gw
        .client
        .put(gw.at("/files/interrupted.bin"))
        .body(pattern(1000, 1))
        .send()
        .await
        .expect("put");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "recovered without restarting the gateway"
    );
}

/// A smaller in-suite version of the mixed stress run: clients uploading
/// through the gateway and the native port at once, every file checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_gateway_and_native_clients_lose_nothing() {
    let step = TestServer::start().await;
    let gw = Arc::new(gateway(step.addr).await);
    let mut tasks = Vec::new();
    for client in 0..12u8 {
        let gw = Arc::clone(&gw);
        let addr = step.addr;
        tasks.push(tokio::spawn(async move {
            let mut native = if client % 2 == 1 {
                let mut c = step_core::StepClient::connect(addr).await.expect("connect");
                c.login("mixed", &step_core::digest::password_for("mixed"))
                    .await
                    .expect("login");
                Some(c)
            } else {
                None
            };
            let token: String = match &native {
                Some(c) => c.token().expect("token").to_owned(),
                None => {
                    let r = gw
                        .client
                        .post(gw.at("/login"))
                        .json(&json!({"username": "mixed"}))
                        .send()
                        .await
                        .expect("login");
                    r.json::<Value>().await.expect("json")["token"]
                        .as_str()
                        .expect("token")
                        .to_owned()
                }
            };
            for n in 0..5u8 {
                let body = pattern(
                    50_000 + usize::from(client) * 1000 + usize::from(n),
                    client.wrapping_mul(7).wrapping_add(n),
                );
                let key = format!("m-{client}-{n}");
                match native.as_mut() {
                    Some(c) => {
                        let plan = c
                            .file_save(Some(&key), body.len() as u64, Default::default())
                            .await
                            .expect("plan");
                        let blocks: Vec<_> = body
                            .chunks(plan.block_size as usize)
                            .enumerate()
                            .map(|(i, b)| Ok((i as u64, bytes::Bytes::copy_from_slice(b))))
                            .collect();
                        let md5 = c
                            .upload_blocks(&plan, futures::stream::iter(blocks), 4, |_| {})
                            .await
                            .expect("upload");
                        assert_eq!(md5.as_deref(), Some(md5_hex(&body).as_str()));
                    }
                    None => {
                        let r = gw
                            .client
                            .put(gw.at(&format!("/files/{key}")))
                            .bearer_auth(&token)
                            .body(body.clone())
                            .send()
                            .await
                            .expect("put");
                        assert_eq!(r.status(), StatusCode::CREATED);
                    }
                }
                // Read back through the other door.
                let r = gw
                    .client
                    .get(gw.at(&format!("/files/{key}")))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("get");
                assert_eq!(r.status(), StatusCode::OK);
                assert_eq!(r.bytes().await.expect("body").to_vec(), body, "{key}");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
}
