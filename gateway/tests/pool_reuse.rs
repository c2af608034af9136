//! Early ends cost no reconnect: behind a connection-counting proxy, with a
//! pool of one STEP connection, an abandoned download, a 416, a 404 and a
//! PUT whose client vanished mid-body all leave that one connection usable
//! (the pool reads whatever answers were still owed before lending it
//! again), and normal requests after them are served on it.

use std::time::Duration;

use reqwest::StatusCode;
use step_tests::proxy::Proxy;
use step_tests::{TestServer, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

mod support;
use support::Gateway;

/// Every wait on the gateway is bounded by this (generous: the machine may
/// be loaded); none is expected to come close.
const BOUND: Duration = Duration::from_secs(90);

/// Send raw HTTP/1.1 `head` (and `body`) over a socket with a tiny receive
/// buffer, read up to the end of the response headers, and return the
/// socket and the status line.
async fn raw(gw: &Gateway, head: String, body: &[u8]) -> (TcpStream, String) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let mut stream = socket.connect(gw.addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("head");
    stream.write_all(body).await.expect("body");
    if head.starts_with("PUT") {
        // The client vanishes mid-body: no answer to wait for.
        return (stream, String::new());
    }
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        let n = tokio::time::timeout(BOUND, stream.read(&mut buf))
            .await
            .expect("response headers in time")
            .expect("read");
        assert!(n > 0, "the gateway closed before answering");
        got.extend_from_slice(&buf[..n]);
        if got.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
        assert!(got.len() < 64 * 1024, "no end of headers");
    }
    let status = String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    (stream, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_errors_and_vanished_clients_cost_no_reconnect() {
    let step = TestServer::start().await;
    let proxy = Proxy::start(step.addr).await;
    let gw = support::gateway_with(proxy.addr, |_, t| {
        t.pool_size = 1;
        // Requests queue for the one connection rather than fail.
        t.pool_wait_ms = BOUND.as_millis() as u64;
        t.backend_timeout = 15;
        t.block_size = 64 * 1024;
        t.window = 4;
    })
    .await;
    let big = pattern(8 * 1024 * 1024, 7);
    gw.store("big.bin", big.clone()).await;

    // A download abandoned after its headers, with blocks in flight.
    let (stream, status) = raw(
        &gw,
        format!("GET /files/big.bin HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr),
        b"",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    drop(stream);

    let r = gw.get_range("/files/big.bin", "bytes=99999999-").await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        gw.get("/files/missing.bin").await.status(),
        StatusCode::NOT_FOUND
    );

    // A PUT whose client goes away a quarter into its body.
    let (stream, _) = raw(
        &gw,
        format!(
            "PUT /files/vanished.bin HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            gw.addr,
            4 * 1024 * 1024
        ),
        &pattern(1024 * 1024, 8),
    )
    .await;
    drop(stream);

    // Normal requests after all that, on the same connection.
    let (status, _, got) = gw.get_bytes("/files/big.bin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == big, "the whole file comes back intact");
    gw.store("after.txt", b"fine\n".to_vec()).await;
    let (status, _, got) = gw.get_bytes("/files/after.txt").await;
    assert_eq!((status, &got[..]), (StatusCode::OK, &b"fine\n"[..]));
    assert_eq!(
        proxy.connections(),
        1,
        "every request above was served on the one backend connection"
    );
}
