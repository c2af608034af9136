//! Hardening round 2 (issue 11), gateway side: each test reproduces one
//! defect over real sockets — reqwest or raw TCP against the gateway served
//! in-process on a free port, in front of a real step-server.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use gateway::config::{HttpArgs, TransferArgs};
use reqwest::StatusCode;
use serde_json::Value;
use step_tests::{TestConfig, TestServer, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod support;
use support::{Gateway, step_on};

/// Every wait on the gateway in these tests ends by this deadline.
const PATIENCE: Duration = Duration::from_secs(20);

/// The shared test gateway with the waits these tests were written for.
async fn gateway_with(
    backend: SocketAddr,
    tweak: impl FnOnce(&mut HttpArgs, &mut TransferArgs),
) -> Gateway {
    support::gateway_with(backend, |http, transfer| {
        transfer.backend_timeout = 5;
        transfer.pool_wait_ms = 2000;
        tweak(http, transfer);
    })
    .await
}

/// A raw HTTP/1.1 request head for a PUT of `len` bytes.
fn put_head(key: &str, len: usize) -> String {
    format!("PUT /files/{key} HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n")
}

/// Read one response head (or whatever comes before EOF).
async fn read_head(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Wait until the store under `root` holds something for `key` (the SAVE of
/// an upload arrived), checking each time the file system changes is not
/// portable, so look again every few ms — bounded by PATIENCE.
async fn wait_for_store_entry(root: &Path, key: &str) {
    fn holds(dir: &Path, key: &str) -> bool {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return false;
        };
        entries.flatten().any(|e| {
            e.file_name().to_string_lossy().contains(key)
                || (e.path().is_dir() && holds(&e.path(), key))
        })
    }
    let deadline = Instant::now() + PATIENCE;
    while !holds(root, key) {
        assert!(Instant::now() < deadline, "the SAVE of {key} never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- item 1

/// A client gives up on a slow PUT (its body ends early), the retry stores
/// the file; the first request's cleanup must not delete the retry's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_upload_cleanup_spares_the_file_another_request_stored() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |_, _| {}).await;
    let first = pattern(2 << 20, 1);
    let second = pattern(1 << 20, 2);
    let mut slow = TcpStream::connect(gw.addr).await.expect("connect");
    slow.write_all(put_head("raceone.bin", first.len()).as_bytes())
        .await
        .expect("head");
    slow.write_all(&first[..600 * 1024]).await.expect("part");
    wait_for_store_entry(step.data_dir(), "raceone.bin").await;

    let r = gw.put("/files/raceone.bin", second.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // The first client stops sending: its body ends short and it fails.
    slow.shutdown().await.expect("half-close");
    let head = tokio::time::timeout(PATIENCE, read_head(&mut slow))
        .await
        .expect("the failed upload is answered");
    assert!(head.starts_with("HTTP/1.1 4"), "{head}");

    let r = gw.get("/files/raceone.bin").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body").to_vec(), second);
}

/// The same with a client that simply disconnects mid-body: the handler is
/// dropped, and its cleanup (run for the dropped request) must be scoped too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_upload_cleanup_spares_the_file_another_request_stored() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |_, _| {}).await;
    let first = pattern(2 << 20, 3);
    let second = pattern(1 << 20, 4);
    let mut slow = TcpStream::connect(gw.addr).await.expect("connect");
    slow.write_all(put_head("racetwo.bin", first.len()).as_bytes())
        .await
        .expect("head");
    slow.write_all(&first[..600 * 1024]).await.expect("part");
    wait_for_store_entry(step.data_dir(), "racetwo.bin").await;
    let r = gw.put("/files/racetwo.bin", second.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let before = gw.counter("gateway_upload_cleanups_total").await;
    drop(slow);
    let deadline = Instant::now() + PATIENCE;
    while gw.counter("gateway_upload_cleanups_total").await <= before {
        assert!(
            Instant::now() < deadline,
            "the abandoned upload was never cleaned up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = gw.get("/files/racetwo.bin").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.expect("body").to_vec(), second);
}

// ---------------------------------------------------------------- item 3

/// A client dripping a PUT body: returns the response head the gateway
/// sends (the gateway must cut it), and how long that took.
async fn drip(addr: SocketAddr, key: String) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(put_head(&key, 8 << 20).as_bytes())
        .await
        .expect("head");
    let (mut rd, mut wr) = s.into_split();
    let reader = async move {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    let writer = async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if wr.write_all(b"x").await.is_err() {
                // Cut: wait for the reader to see the answer.
                std::future::pending::<()>().await;
            }
        }
    };
    let head = tokio::select! {
        h = reader => h,
        () = writer => unreachable!(),
    };
    (head, started.elapsed())
}

async fn slow_bodies_leave_the_pool_free(step: &TestServer, slow: usize, pool: usize) {
    let gw = gateway_with(step.addr, |h, t| {
        t.pool_size = pool;
        t.pool_wait_ms = 3000;
        h.body_min_bytes = 1024;
        h.body_interval_secs = 3;
    })
    .await;
    let drippers: Vec<_> = (0..slow)
        .map(|i| tokio::spawn(drip(gw.addr, format!("slow{i}.bin"))))
        .collect();
    // Let every dripper's request reach its handler before the honest one.
    let deadline = Instant::now() + PATIENCE;
    while gw.counter("gateway_http_connections_accepted_total").await < slow as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let body = pattern(3 << 20, 9);
    let honest = async |round: usize| {
        let started = Instant::now();
        let r = gw.get("/readyz").await;
        assert_eq!(r.status(), StatusCode::OK, "round {round}");
        println!(
            "/readyz with {slow} slow bodies dripping, pool of {pool}: {:?}",
            started.elapsed()
        );
        let path = format!("/files/honest{round}.bin");
        let r = gw.put(&path, body.clone()).await;
        assert_eq!(r.status(), StatusCode::CREATED, "round {round}");
        let r = gw.get(&path).await;
        assert_eq!(r.status(), StatusCode::OK, "round {round}");
        assert_eq!(r.bytes().await.expect("body").to_vec(), body);
    };
    for round in 0..3 {
        honest(round).await;
    }
    for d in drippers {
        let (head, took) = tokio::time::timeout(PATIENCE, d)
            .await
            .expect("a dripping body is cut")
            .expect("task");
        assert!(head.starts_with("HTTP/1.1 408"), "{head}");
        assert!(
            head.to_ascii_lowercase().contains("application/json"),
            "{head}"
        );
        assert!(took < Duration::from_secs(3 * 3), "cut after {took:?}");
    }
    // The pooled connections have now been idle for longer than a short
    // backend idle timeout: the gateway must notice, not fail.
    honest(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_do_not_starve_the_pool() {
    let step = TestServer::start().await;
    slow_bodies_leave_the_pool_free(&step, 12, 4).await;
}

/// The measurement: 32 slow bodies against the default pool of 32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_two_slow_bodies_leave_readyz_fast() {
    let step = TestServer::start().await;
    slow_bodies_leave_the_pool_free(&step, 32, 32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_do_not_starve_the_pool_of_a_backend_with_short_idle_timeout() {
    let step = TestServer::start_with(TestConfig {
        conn: step_server::ConnectionLimits {
            idle_timeout: Duration::from_secs(1),
            ..Default::default()
        },
        ..TestConfig::default()
    })
    .await;
    slow_bodies_leave_the_pool_free(&step, 12, 4).await;
}

// ---------------------------------------------------------------- item 4

/// Read until EOF (or an error, e.g. a reset); returns what came.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_header_dripping_connections_are_closed() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |h, _| {
        h.header_timeout_secs = 1;
    })
    .await;
    let mut idle = TcpStream::connect(gw.addr).await.expect("connect");
    let mut dripping = TcpStream::connect(gw.addr).await.expect("connect");
    let drip = async {
        for b in b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: "
            .iter()
            .cycle()
        {
            if dripping.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        read_to_close(&mut dripping).await
    };
    let (idle_got, drip_got) = tokio::time::timeout(Duration::from_secs(8), async {
        tokio::join!(read_to_close(&mut idle), drip)
    })
    .await
    .expect("both sockets are closed by the gateway");
    // Whatever came (a 408 or nothing), the connection ended.
    let _ = (idle_got, drip_got);

    // A keep-alive connection idle after its request is closed too.
    let mut kept = TcpStream::connect(gw.addr).await.expect("connect");
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("request");
    let got = tokio::time::timeout(Duration::from_secs(8), read_to_close(&mut kept))
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(got.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_makes_extra_clients_wait_not_fail() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |h, _| {
        h.http_max_connections = 8;
        h.header_timeout_secs = 2;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }
    // The 9th client waits until the idle ones are cut, then is served.
    let started = Instant::now();
    let r = gw.get("/healthz").await;
    assert_eq!(r.status(), StatusCode::OK);
    println!("healthz behind 8 idle sockets: {:?}", started.elapsed());
    assert!(gw.counter("gateway_http_connections_accepted_total").await >= 9);
    drop(idle);
}

// ---------------------------------------------------------------- item 8

/// A gateway whose backend stored `a.txt` ("before") and then restarted on
/// the same address and store with another secret: the gateway's cached
/// default-user token is stale now.
async fn gateway_after_backend_restart(
    secret: &[u8],
) -> (Gateway, tokio::task::JoinHandle<()>, tempfile::TempDir) {
    let parent = tempfile::tempdir().expect("tmp");
    let dir = parent.path().join("store");
    let step = TestServer::start_with(TestConfig {
        data_dir: Some(dir.clone()),
        ..TestConfig::default()
    })
    .await;
    let addr = step.addr;
    let gw = gateway_with(addr, |_, _| {}).await;
    assert_eq!(
        gw.put("/files/a.txt", b"before".to_vec()).await.status(),
        StatusCode::CREATED
    );
    step.shutdown().await;
    let step = step_on(addr, dir, secret).await;
    (gw, step, parent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_restart_with_new_secret_needs_no_client_retry() {
    let (gw, _step, _dir) = gateway_after_backend_restart(b"another secret entirely").await;
    let r = gw.put("/files/b.txt", b"after".to_vec()).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let r = gw.get("/files/a.txt").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("text"), "before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_restart_with_new_secret_get_first() {
    let (gw, _step, _dir) = gateway_after_backend_restart(b"yet another secret").await;
    let r = gw.get("/files/a.txt").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("text"), "before");
}

// ---------------------------------------------------------------- item 9

async fn json_error(r: reqwest::Response) -> (StatusCode, String) {
    let status = r.status();
    let text = r.text().await.expect("body");
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{status}: not a JSON error body ({e}): {text:?}"));
    assert!(
        body["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (
        status,
        body["error"].as_str().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_has_its_status_and_a_json_body() {
    let step = TestServer::start_with(TestConfig {
        limits: step_server::service::Limits {
            max_file_size: 1000,
            ..Default::default()
        },
        ..TestConfig::default()
    })
    .await;
    let gw = gateway_with(step.addr, |h, _| h.request_timeout = 1).await;

    // Above the server's maximum file size.
    let r = gw.put("/files/big.bin", vec![7; 5000]).await;
    assert_eq!(
        json_error(r).await,
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large".into())
    );
    // A method the route does not have.
    let r = gw
        .client
        .delete(gw.at("/healthz"))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(
        json_error(r).await,
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into())
    );
    // A URI too long.
    let long = format!("/files/{}", "k".repeat(40_000));
    let r = gw.get(&long).await;
    assert_eq!(
        json_error(r).await,
        (StatusCode::URI_TOO_LONG, "uri_too_long".into())
    );
    // A JSON body that never completes within --request-timeout.
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    s.write_all(
        b"POST /records HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .expect("head");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, s.read_to_end(&mut got)).await;
    let text = String::from_utf8_lossy(&got);
    let (head, body) = text.split_once("\r\n\r\n").expect("a response");
    assert!(
        head.starts_with("HTTP/1.1 408") || head.starts_with("HTTP/1.1 504"),
        "{head}"
    );
    let body: Value = serde_json::from_str(body).expect("JSON error body");
    assert!(body["error"].is_string(), "{body}");
}

/// A multipart upload that drips is cut with 408 too (its body error
/// passes through the multipart parser).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dripping_multipart_upload_is_cut_with_408() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |h, _| {
        h.body_min_bytes = 1024;
        h.body_interval_secs = 1;
    })
    .await;
    let mut s = TcpStream::connect(gw.addr).await.expect("connect");
    let head = "POST /upload HTTP/1.1\r\nHost: t\r\n\
        Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 100000\r\n\r\n\
        --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"drip.bin\"\r\n\r\n";
    s.write_all(head.as_bytes()).await.expect("head");
    let (mut rd, mut wr) = s.into_split();
    let writer = async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(b"x").await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    };
    let reader = async move {
        let mut got = Vec::new();
        let _ = rd.read_to_end(&mut got).await;
        String::from_utf8_lossy(&got).into_owned()
    };
    let text = tokio::time::timeout(PATIENCE, async {
        tokio::select! {
            t = reader => t,
            () = writer => unreachable!(),
        }
    })
    .await
    .expect("the dripping upload is answered");
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"error\":\"body_timeout\""), "{text}");
}

/// With the in-memory budget spent, multipart uploads spill to disk rather
/// than fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multipart_beyond_the_memory_budget_spools_instead_of_failing() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |h, _| h.max_buffered_bytes = 10).await;
    let body = pattern(100_000, 5);
    let part = reqwest::multipart::Part::bytes(body.clone()).file_name("budget.bin");
    let form = reqwest::multipart::Form::new().part("file", part);
    let r = gw
        .client
        .post(gw.at("/upload"))
        .multipart(form)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = gw.get("/files/budget.bin").await;
    assert_eq!(r.bytes().await.expect("body").to_vec(), body);
}
