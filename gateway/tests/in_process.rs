//! The gateway as it runs alone: HTTP requests call the embedded server's
//! service in process (no loopback socket, no probe LOGIN, no frames), while
//! the service's STEP port still serves native clients over the same store.
//! Files, ranges, 416, multipart, listing, records and tus go through the
//! in-process backend; a token refusal looks as it does over TCP.

use std::sync::Arc;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use step_core::digest::{md5_hex, password_for};
use step_core::token::TokenKey;
use step_server::ConnectionLimits;
use step_server::service::{Limits, Service};
use step_server::store::{DiskStore, Storage};
use step_tests::{TEST_SECRET, TestServer, download, pattern};
use tokio::net::TcpListener;

mod support;
use support::Gateway;

/// An embedded server: its service (for the gateway) and its STEP port.
struct Embedded {
    service: Arc<Service>,
    step: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

async fn embedded() -> Embedded {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Storage> = DiskStore::open(dir.path().join("store")).expect("store");
    let service = Arc::new(
        Service::new(store, TokenKey::new(TEST_SECRET, 86_400), Limits::default()).with_public(
            step_server::auth::Public {
                anonymous: step_core::access::Anonymous::Write,
                ..Default::default()
            },
        ),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let step = listener.local_addr().expect("addr");
    tokio::spawn(step_server::run(
        listener,
        Arc::clone(&service),
        ConnectionLimits::default(),
        std::future::pending::<()>(),
    ));
    Embedded {
        service,
        step,
        _dir: dir,
    }
}

async fn gateway(e: &Embedded) -> Gateway {
    support::gateway_in_process(Arc::clone(&e.service), |_, _| {}).await
}

fn series(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_ranges_multipart_listing_and_records_in_process() {
    let e = embedded().await;
    let gw = gateway(&e).await;
    let body = pattern(3 * 1024 * 1024 + 123, 1);
    // The md5 answered is the service's (in process each byte is hashed
    // once, by the server): it must be the body's.
    let r = gw.put("/files/dir/a.bin", body.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let stored: Value = r.json().await.expect("json");
    assert_eq!(stored["md5"], md5_hex(&body));
    let (status, headers, got) = gw.get_bytes("/files/dir/a.bin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == body, "the whole file comes back");
    assert_eq!(headers["etag"], format!("\"{}\"", md5_hex(&body)));

    let r = gw.get_range("/files/dir/a.bin", "bytes=1000-1999").await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(&r.bytes().await.expect("body")[..], &body[1000..2000]);
    let r = gw.get_range("/files/dir/a.bin", "bytes=99999999-").await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(gw.get("/files/none").await.status(), StatusCode::NOT_FOUND);

    let r = gw.multipart("m.txt", b"from a form\n".to_vec()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let (status, _, got) = gw.get_bytes("/files/m.txt").await;
    assert_eq!((status, &got[..]), (StatusCode::OK, &b"from a form\n"[..]));

    let page: Value = gw
        .get("/files?prefix=dir/")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(page["files"][0]["key"], "dir/a.bin");
    assert_eq!(page["files"][0]["size"], body.len());

    let key = gw.post_record(&json!({"name": "otter", "n": 3})).await;
    let got = gw.get_json(&format!("/records/{key}")).await;
    assert_eq!((&got["name"], &got["n"]), (&json!("otter"), &json!(3)));
    assert_eq!(
        gw.delete("/files/m.txt").await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(gw.get("/files/m.txt").await.status(), StatusCode::NOT_FOUND);

    // A native client on the embedded port reads the same store (the
    // gateway's anonymous requests act as the public identity, whose token
    // an anonymous LOGIN gives).
    let mut c = step_core::StepClient::connect(e.step)
        .await
        .expect("connect");
    c.login_anonymous(step_core::access::Anonymous::Write)
        .await
        .expect("login");
    assert!(download(&mut c, "dir/a.bin").await == body);
    let record = c.data_get(&key).await.expect("the record");
    assert_eq!(record.get("name"), Some(&json!("otter")));

    // No STEP connection was opened for any of it.
    let metrics = gw.metrics().await;
    assert_eq!(
        series(&metrics, "gateway_pool_size"),
        Some(0.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tus_in_process() {
    let e = embedded().await;
    let gw = gateway(&e).await;
    let body = pattern(700_000, 2);
    let tus = |method: Method, path: &str| {
        gw.client
            .request(method, gw.at(path))
            .header("Tus-Resumable", "1.0.0")
    };
    let r = tus(Method::POST, "/tus/")
        .header("Upload-Length", body.len().to_string())
        .header("Upload-Metadata", "filename dHVzLmJpbg==") // "tus.bin"
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"]
        .to_str()
        .expect("location")
        .to_owned();
    let path = location
        .strip_prefix(&gw.url)
        .unwrap_or(&location)
        .to_owned();
    for (from, to) in [(0, 300_001), (300_001, body.len())] {
        let r = tus(Method::PATCH, &path)
            .header("Upload-Offset", from.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(body[from..to].to_vec())
            .send()
            .await
            .expect("PATCH");
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(r.headers()["upload-offset"], to.to_string());
        let r = tus(Method::HEAD, &path).send().await.expect("HEAD");
        assert_eq!(r.headers()["upload-offset"], to.to_string());
    }
    let (status, _, got) = gw.get_bytes("/files/tus.bin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == body, "the tus upload is stored whole");
}

/// A refused token gets the same answer in process as over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_refusal_matches_the_tcp_backend() {
    let e = embedded().await;
    let inproc = gateway(&e).await;
    let step = TestServer::start().await;
    let tcp = support::gateway(step.addr).await;
    for gw in [&inproc, &tcp] {
        gw.store("x.txt", b"x".to_vec()).await;
    }
    let mut answers = Vec::new();
    for gw in [&inproc, &tcp] {
        let r = gw
            .client
            .get(gw.at("/files/x.txt"))
            .header("authorization", "Bearer bm90LWEtdG9rZW4=")
            .send()
            .await
            .expect("get");
        let status = r.status();
        let body: Value = r.json().await.expect("json error");
        answers.push((status, body["error"].clone()));
    }
    assert_eq!(answers[0].0, StatusCode::UNAUTHORIZED, "{answers:?}");
    assert_eq!(answers[0], answers[1]);

    // A real token works, and acts as its user in process too.
    let login: Value = inproc
        .client
        .post(inproc.at("/login"))
        .json(&json!({"username": "alice", "password": password_for("alice")}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("json");
    let token = login["token"].as_str().expect("token");
    let r = inproc
        .client
        .put(inproc.at("/files/mine.txt"))
        .bearer_auth(token)
        .body("alice's")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        inproc.get("/files/mine.txt").await.status(),
        StatusCode::NOT_FOUND
    );
}

/// Clients that go away mid-transfer cut no in-process request off midway:
/// after an abandoned download and a PUT whose client vanished mid-body,
/// the same key is stored and read whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_clients_in_process() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = embedded().await;
    let gw = gateway(&e).await;
    let body = pattern(8 * 1024 * 1024, 3);
    gw.store("big.bin", body.clone()).await;

    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut get = socket.connect(gw.addr).await.expect("connect");
    let head = format!("GET /files/big.bin HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr);
    get.write_all(head.as_bytes()).await.expect("GET");
    let mut first = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(90), get.read(&mut first))
        .await
        .expect("an answer in time")
        .expect("read");
    assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    drop(get);

    let mut put = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    let head = format!(
        "PUT /files/again.bin HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
        gw.addr,
        body.len()
    );
    put.write_all(head.as_bytes()).await.expect("PUT head");
    put.write_all(&body[..1024 * 1024])
        .await
        .expect("part of the body");
    drop(put);

    gw.store("again.bin", body.clone()).await;
    let (status, _, got) = gw.get_bytes("/files/again.bin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == body, "stored whole after the vanished PUT");
    let (status, _, got) = gw.get_bytes("/files/big.bin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == body, "read whole after the abandoned GET");
}
