//! The pipelined client over a real step-server: however an exchange ends
//! early — a response stream dropped mid-pipeline, a refusal mid-window, a
//! call dropped or timed out while its answer is on the way — the same
//! connection goes on, because the client counts the answers it is owed and
//! reads them before the next exchange. Only owed answers that never come
//! break it. Answers are held back deterministically by a proxy
//! ([`step_tests::proxy::Proxy`]), never by racing a short timer.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, json};
use step_core::Status;
use step_core::client::{ClientError, SaveOptions, StepClient, UploadPlan};
use step_core::digest::md5_hex;
use step_tests::proxy::Proxy;
use step_tests::{TestServer, blocks, download, login, pattern};

/// Every wait on the server is bounded by this (generous: the machine may be
/// loaded); none is expected to come close.
const BOUND: Duration = Duration::from_secs(60);

/// A server, a client logged in as `user` (waits bounded by [`BOUND`]),
/// and an upload plan for `key`: `n` blocks of 20 KiB of pattern `seed`.
async fn planned(
    user: &str,
    key: &str,
    n: usize,
    seed: u8,
) -> (TestServer, StepClient, Vec<u8>, UploadPlan) {
    let server = TestServer::start().await;
    let mut c = login(server.addr, user).await;
    c.set_timeout(Some(BOUND));
    let body = pattern(20480 * n, seed);
    let plan = c
        .file_save(Some(key), body.len() as u64, SaveOptions::default())
        .await
        .expect("plan");
    (server, c, body, plan)
}

fn record(n: u64) -> Map<String, serde_json::Value> {
    let mut m = Map::new();
    m.insert("n".into(), json!(n));
    m
}

#[tokio::test]
async fn a_stream_dropped_mid_pipeline_leaves_the_same_connection_usable() {
    let (_server, mut c, body, plan) = planned("dropper", "d.bin", 16, 1).await;
    let all = blocks(&body, plan.block_size as usize);
    let requests: Vec<_> = all
        .iter()
        .map(|(i, b)| c.upload_request(&plan, *i, b.clone()).expect("request"))
        .collect();

    let mut responses = c.responses(futures::stream::iter(requests), 8);
    for _ in 0..3 {
        let resp = responses
            .next()
            .await
            .expect("an answer")
            .expect("answered");
        assert_eq!(resp.status_code(), Some(200));
    }
    drop(responses);
    let owed = c.in_flight();
    assert!(
        (1..=8).contains(&owed),
        "a window of 8 leaves 1..=8 answers owed, not {owed}"
    );
    assert!(!c.is_broken());

    // Every block handed to the dropped stream reaches the server; the
    // rest go out on the same connection, after its owed answers are read.
    let sent = 3 + owed as usize;
    let md5 = c
        .upload_blocks(
            &plan,
            futures::stream::iter(all[sent..].iter().cloned().map(Ok)),
            8,
            |_| {},
        )
        .await
        .expect("the same connection finishes the upload");
    assert_eq!(c.in_flight(), 0);
    assert_eq!(md5.as_deref(), Some(md5_hex(&body).as_str()));
    assert_eq!(download(&mut c, "d.bin").await, body);
}

#[tokio::test]
async fn a_refusal_mid_window_and_the_pipeline_goes_on() {
    let (_server, mut c, body, plan) = planned("refused", "r.bin", 8, 2).await;
    let all = blocks(&body, plan.block_size as usize);
    let requests: Vec<_> = all
        .iter()
        .map(|(i, b)| {
            // Block 3 has the wrong length: refused with 406 mid-window.
            let data = if *i == 3 { b.slice(..100) } else { b.clone() };
            c.upload_request(&plan, *i, data).expect("request")
        })
        .collect();
    let statuses: Vec<_> = c
        .responses(futures::stream::iter(requests), 8)
        .map(|r| r.expect("an answer").status_code())
        .collect()
        .await;
    let refused = Some(u64::from(Status::BlockSizeMismatch.code()));
    let expected: Vec<_> = (0..8)
        .map(|i| if i == 3 { refused } else { Some(200) })
        .collect();
    assert_eq!(statuses, expected);
    assert_eq!(c.in_flight(), 0);

    let md5 = c
        .upload_block(&plan, 3, all[3].1.clone())
        .await
        .expect("block 3 again, on the same connection");
    assert_eq!(md5.as_deref(), Some(md5_hex(&body).as_str()));
    assert_eq!(download(&mut c, "r.bin").await, body);
}

/// The old rule (a client stopped by a refusal mid-pipeline refused to go
/// on) is gone: the refusal is the caller's error, the connection drains
/// the rest of the window and serves the next request.
#[tokio::test]
async fn a_pipeline_stopped_by_a_refusal_leaves_the_connection_usable() {
    let (_server, mut c, body, plan) = planned("stopped", "s.bin", 8, 3).await;
    let mut all = blocks(&body, plan.block_size as usize);
    let good0 = all[0].1.clone();
    all[0].1 = Bytes::from(vec![0u8; 100]);
    let err = c
        .upload_blocks(
            &plan,
            futures::stream::iter(all.into_iter().map(Ok)),
            8,
            |_| {},
        )
        .await
        .expect_err("406");
    assert_eq!(err.status(), Some(Status::BlockSizeMismatch));
    assert!(!c.is_broken());
    let missing = c.data_get("x").await.expect_err("no such record");
    assert_eq!(missing.status(), Some(Status::NotFound), "{missing}");
    let md5 = c.upload_block(&plan, 0, good0).await.expect("block 0");
    assert_eq!(md5.as_deref(), Some(md5_hex(&body).as_str()));
}

#[tokio::test]
async fn a_dropped_call_is_drained_before_the_next() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "impatient").await;
    c.set_timeout(Some(BOUND));
    let save = c
        .request(step_core::Operation::Save, step_core::Kind::Data)
        .expect("request")
        .with("key", "first")
        .with("n", 1);
    {
        // One poll sends the request; the server, a task of this
        // single-threaded runtime, cannot have answered yet.
        let mut call = std::pin::pin!(c.call(&save));
        assert!(futures::poll!(call.as_mut()).is_pending());
    }
    assert_eq!(c.in_flight(), 1);
    let got = c
        .data_get("first")
        .await
        .expect("its own answer, not the dropped call's");
    assert_eq!(got.get("n"), Some(&json!(1)));
    assert_eq!(c.in_flight(), 0);
}

#[tokio::test]
async fn a_timed_out_call_is_drained_before_the_next() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let mut c = login(proxy.addr, "late").await;
    proxy.hold(true);
    c.set_timeout(Some(Duration::from_millis(200)));
    let err = c
        .data_save(Some("late"), record(2))
        .await
        .expect_err("the answer is held back");
    assert!(matches!(err, ClientError::TimedOut(_)), "{err}");
    assert_eq!(c.in_flight(), 1);
    assert!(!c.is_broken());

    proxy.hold(false);
    c.set_timeout(Some(BOUND));
    let got = c.data_get("late").await.expect("served after the drain");
    assert_eq!(got.get("n"), Some(&json!(2)));
    assert_eq!(c.in_flight(), 0);
    assert_eq!(proxy.connections(), 1, "no reconnect");
}

#[tokio::test]
async fn a_drain_that_times_out_breaks_the_connection() {
    let server = TestServer::start().await;
    let proxy = Proxy::start(server.addr).await;
    let mut c = login(proxy.addr, "never").await;
    proxy.hold(true);
    c.set_timeout(Some(Duration::from_millis(200)));
    let err = c.data_save(Some("k"), record(3)).await.expect_err("held");
    assert!(matches!(err, ClientError::TimedOut(_)), "{err}");
    assert!(!c.is_broken());
    // The next call first waits for the owed answer, which never comes.
    let err = c.data_get("k").await.expect_err("the drain times out");
    assert!(matches!(err, ClientError::TimedOut(_)), "{err}");
    assert!(c.is_broken());
    assert!(!c.is_idle());

    proxy.hold(false);
    c.set_timeout(Some(BOUND));
    let err = c.data_get("k").await.expect_err("broken for good");
    assert!(matches!(err, ClientError::Broken(_)), "{err}");
    let mut fresh = login(proxy.addr, "never").await;
    let got = fresh.data_get("k").await.expect("a new connection works");
    assert_eq!(got.get("n"), Some(&json!(3)));
}
