//! Slow and silent clients cannot exhaust the server (issue 7).
//!
//! With a small connection cap and a short idle timeout: connections that
//! send nothing, one that drips a frame a byte a second, and one that sends
//! requests but never reads the answers are all closed by the server, and
//! normal clients are served meanwhile or as soon as a slot frees.
//!
//! The waits below are upper bounds on "eventually" (several times the idle
//! timeout), never measurements.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Map;
use step_core::client::{SaveOptions, StepClient};
use step_core::digest::{md5_hex, password_for};
use step_core::message::field;
use step_core::{Kind, Message, Operation, StepCodec};
use step_server::ConnectionLimits;
use step_tests::{TestConfig, TestServer, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Encoder;

const IDLE: Duration = Duration::from_secs(1);
/// Generous bound for anything that should happen after about one `IDLE`.
const EVENTUALLY: Duration = Duration::from_secs(20);

async fn server(max_connections: usize) -> TestServer {
    TestServer::start_with(TestConfig {
        conn: ConnectionLimits {
            max_connections,
            idle_timeout: IDLE,
            ..ConnectionLimits::default()
        },
        ..TestConfig::default()
    })
    .await
}

/// A normal client's whole session: login, a record, a small file up and down.
async fn normal_session(addr: SocketAddr, user: &str) {
    let mut c = StepClient::connect(addr).await.expect("connect");
    c.login(user, &password_for(user)).await.expect("login");
    c.data_save(None, Map::new()).await.expect("data save");
    let body = pattern(50_000, 3);
    let plan = c
        .file_save(None, body.len() as u64, SaveOptions::default())
        .await
        .expect("plan");
    let blocks = body
        .chunks(plan.block_size as usize)
        .enumerate()
        .map(|(i, b)| Ok((i as u64, Bytes::copy_from_slice(b))));
    let md5 = c
        .upload_blocks(&plan.key, futures::stream::iter(blocks), 4, |_| {})
        .await
        .expect("upload");
    assert_eq!(md5.as_deref(), Some(md5_hex(&body).as_str()));
}

/// Wait until the server closes `stream`: EOF or reset, whatever was unread.
async fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 64 << 10];
    let deadline = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn normal_clients_are_served_while_silent_and_dripping_ones_hold_slots() {
    // Six slots: four silent connections and one drip leave one for everyone else.
    let server = server(6).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // A frame whose header announces 50 JSON bytes, sent a byte a second: at
    // that pace it would take 58 s, far past the idle timeout.
    let drip_sent = Arc::new(AtomicUsize::new(0));
    let drip = tokio::spawn({
        let addr = server.addr;
        let sent = Arc::clone(&drip_sent);
        async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            let mut frame = vec![0, 0, 0, 50, 0, 0, 0, 0];
            frame.extend_from_slice(&[b' '; 50]);
            for b in frame {
                if s.write_all(&[b]).await.is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::SeqCst);
                // Stop as soon as the server has closed on us.
                let mut probe = [0u8; 1];
                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut probe)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    _ => {}
                }
            }
            false
        }
    });
    // Meanwhile, normal sessions one after the other in the free slot.
    for i in 0..3 {
        tokio::time::timeout(
            EVENTUALLY,
            normal_session(server.addr, &format!("normal{i}")),
        )
        .await
        .expect("a normal client is served while the slow ones hold their slots");
    }
    let closed = tokio::time::timeout(EVENTUALLY, drip)
        .await
        .expect("the drip ends")
        .expect("join");
    assert!(closed, "the dripping connection was closed by the server");
    let sent = drip_sent.load(Ordering::SeqCst);
    assert!(
        sent < 58,
        "closed before its frame was complete ({sent} bytes sent)"
    );
    for s in &mut silent {
        assert!(closed_by_server(s).await, "silent connection closed");
    }
}

#[tokio::test]
async fn a_flood_of_silent_connections_only_delays_normal_clients() {
    let server = server(4).await;
    let mut silent = Vec::new();
    for _ in 0..8 {
        // The kernel accepts beyond the cap; the server takes them in turn.
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    // Every slot is taken now; this client waits, then is served once the
    // idle timeout has dropped silent connections (twice over: 8 > 4).
    tokio::time::timeout(EVENTUALLY * 2, normal_session(server.addr, "patient"))
        .await
        .expect("served once the silent connections are dropped");
    for s in &mut silent {
        assert!(closed_by_server(s).await, "silent connection closed");
    }
}

#[tokio::test]
async fn a_client_that_never_reads_its_answers_loses_its_slot() {
    // One slot only: while the non-reader holds it, nobody else is served.
    let server = server(1).await;
    let body = pattern(8 << 20, 5);
    let token = {
        let mut c = StepClient::connect(server.addr).await.expect("connect");
        let token = c
            .login("hoarder", &password_for("hoarder"))
            .await
            .expect("login");
        let plan = c
            .file_save(
                Some("big"),
                body.len() as u64,
                SaveOptions {
                    block_size: Some(1 << 20),
                    resume: false,
                },
            )
            .await
            .expect("plan");
        let blocks = body
            .chunks(1 << 20)
            .enumerate()
            .map(|(i, b)| Ok((i as u64, Bytes::copy_from_slice(b))));
        c.upload_blocks(&plan.key, futures::stream::iter(blocks), 4, |_| {})
            .await
            .expect("upload");
        token
    };
    // 64 MiB of answers asked for, none read: far more than the socket
    // buffers hold, so the server's writes stall.
    let mut hoarder = TcpStream::connect(server.addr).await.expect("connect");
    let mut requests = bytes::BytesMut::new();
    let mut codec = StepCodec::default();
    for i in 0..64u64 {
        let req = Message::request(Operation::Download, Kind::File)
            .with(field::TOKEN, token.as_str())
            .with(field::KEY, "big")
            .with(field::BLOCK_INDEX, i % 8)
            .with(field::BLOCK_SIZE, 1 << 20);
        codec.encode(&req, &mut requests).expect("encode");
    }
    hoarder.write_all(&requests).await.expect("send requests");

    tokio::time::timeout(EVENTUALLY, normal_session(server.addr, "next"))
        .await
        .expect("served once the stalled connection is dropped");
    // The hoarder got far less than it asked for before the server hung up.
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match tokio::time::timeout(EVENTUALLY, hoarder.read(&mut buf)).await {
            Err(_) => panic!("the stalled connection was never closed"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got += n,
        }
    }
    assert!(got < 64 << 20, "received {got} bytes");
}
