//! Tokens end to end: who a token names (issue 11, item 11), how long it lives
//! (item 10) and that refusing a missing token never waits in the pacer that
//! slows token guessing (item 6).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value, json};
use step_core::client::{SaveOptions, StepClient};
use step_core::message::field;
use step_core::token::{TokenKey, mint_reference_style};
use step_core::{Kind, Message, Operation};
use step_server::service::Limits;
use step_tests::{TEST_SECRET, TestConfig, TestServer, download, login};
use tokio::sync::Notify;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn record(owner: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("owner".into(), json!(owner));
    m
}

#[tokio::test]
async fn dotted_and_underscored_names_are_different_users() {
    let server = TestServer::start().await;
    let mut dotted = login(server.addr, "alice.smith").await;
    let mut underscored = login(server.addr, "alice_smith").await;

    // The same DATA key for both: neither sees (or blocks) the other's record.
    dotted
        .data_save(Some("shared-key"), record("alice.smith"))
        .await
        .expect("alice.smith saves");
    underscored
        .data_save(Some("shared-key"), record("alice_smith"))
        .await
        .expect("alice_smith saves the same key in her own namespace");
    assert_eq!(
        dotted.data_get("shared-key").await.expect("get")["owner"],
        json!("alice.smith")
    );
    assert_eq!(
        underscored.data_get("shared-key").await.expect("get")["owner"],
        json!("alice_smith")
    );

    // The same FILE key for both, different contents.
    for (c, body) in [
        (&mut dotted, b"dotted".as_slice()),
        (&mut underscored, b"underscored".as_slice()),
    ] {
        let plan = c
            .file_save(Some("f.txt"), body.len() as u64, SaveOptions::default())
            .await
            .expect("plan");
        c.upload_block(&plan.key, 0, Bytes::copy_from_slice(body))
            .await
            .expect("upload");
    }
    assert_eq!(download(&mut dotted, "f.txt").await, b"dotted");
    assert_eq!(download(&mut underscored, "f.txt").await, b"underscored");

    // A third name that would collide under any lossy encoding of '.'/'%'.
    let mut percent = login(server.addr, "alice%2Esmith").await;
    assert!(
        percent.data_get("shared-key").await.is_err(),
        "alice%2Esmith sees nothing of alice.smith's"
    );
}

#[tokio::test]
async fn our_tokens_still_pass_the_public_md5_recheck() {
    use base64::Engine as _;
    let server = TestServer::start().await;
    for user in ["plain", "alice.smith", "100%.sure"] {
        let mut c = StepClient::connect(server.addr).await.expect("connect");
        let token = c
            .login(user, &step_core::digest::password_for(user))
            .await
            .expect("login");
        let text = String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(&token)
                .expect("base64"),
        )
        .expect("utf8");
        let parts: Vec<&str> = text.split('.').collect();
        assert_eq!(parts.len(), 4, "{user}: four dot-separated parts");
        assert_eq!(parts[2], "login");
        // What the re-checking public client computes.
        assert_eq!(
            parts[3],
            step_core::token::public_signature(&parts[..3].join(".")),
            "{user}"
        );
        if user == "plain" {
            assert_eq!(parts[0], "plain", "names without '.'/'%' keep their shape");
        }
    }
}

#[tokio::test]
async fn a_short_ttl_token_is_valid_right_after_login() {
    let server = TestServer::start_with(TestConfig {
        token_ttl: 2,
        ..TestConfig::default()
    })
    .await;
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    c.login("shortlived", &step_core::digest::password_for("shortlived"))
        .await
        .expect("login");
    assert_eq!(
        c.capabilities().token_ttl,
        Some(2),
        "the announced lifetime is the configured minimum"
    );
    c.data_save(Some("k"), Map::new())
        .await
        .expect("a freshly minted token is not expired");
    // Still valid for the whole announced lifetime (a single wait to just
    // before its end: expiry is time itself).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    c.data_get("k").await.expect("valid within its ttl");
}

#[tokio::test]
async fn a_token_past_its_longest_lifetime_is_refused() {
    let server = TestServer::start_with(TestConfig {
        token_ttl: 2,
        ..TestConfig::default()
    })
    .await;
    // Minted by the same deployment long enough ago that no rounding of the
    // issue time keeps it alive: ttl + one whole issue unit (600 s) + 1.
    let old = TokenKey::new(TEST_SECRET, 2).mint("late", now() - 2 - 600 - 1);
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    let req = Message::request(Operation::Get, Kind::Data)
        .with(field::TOKEN, old)
        .with(field::KEY, "k");
    let resp = c.call(&req).await.expect("answer");
    assert_eq!(resp.status_code(), Some(403));
    assert!(
        resp.status_msg().contains("expired"),
        "{}",
        resp.status_msg()
    );
}

/// The health probe of `step-server --health-check` and the gateway's
/// /readyz: a GET with no token at all.
async fn tokenless_probe(addr: std::net::SocketAddr) -> Message {
    let mut c = StepClient::connect(addr).await.expect("connect");
    let req = Message::request(Operation::Get, Kind::Data).with(field::KEY, "healthcheck");
    c.call(&req).await.expect("probe answered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probe_is_not_paced_behind_a_guessing_flood() {
    let server = TestServer::start_with(TestConfig {
        limits: Limits {
            token_failures_per_sec: 2,
            ..Limits::default()
        },
        ..TestConfig::default()
    })
    .await;
    let answered = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(Notify::new());
    let mut floods = Vec::new();
    // Each connection has one guess in the pacer at a time: 20 of them keep
    // 20 refusals (10 s at 2/s) queued ahead of any newcomer.
    for conn in 0..20 {
        let (answered, progress) = (Arc::clone(&answered), Arc::clone(&progress));
        let mut guesser = StepClient::connect(server.addr).await.expect("connect");
        guesser.set_token(mint_reference_style("victim", "20261125093000"));
        let guesses: Vec<_> = (0..20)
            .map(|i| {
                Ok(guesser
                    .request(Operation::Get, Kind::Data)
                    .expect("req")
                    .with(field::KEY, format!("c{conn}-k{i}")))
            })
            .collect();
        floods.push(tokio::spawn(async move {
            let _ = guesser
                .pipeline(futures::stream::iter(guesses), 20, |resp| {
                    assert_eq!(resp.status_code(), Some(403));
                    answered.fetch_add(1, Ordering::SeqCst);
                    progress.notify_one();
                    Ok(())
                })
                .await;
        }));
    }
    // Saturated: the one-second burst (2 refusals) is spent and 400 guesses
    // are behind it, about 200 s of pacing.
    tokio::time::timeout(Duration::from_secs(30), async {
        while answered.load(Ordering::SeqCst) < 2 {
            progress.notified().await;
        }
    })
    .await
    .expect("the flood's burst was answered");

    for _ in 0..3 {
        let started = Instant::now();
        let resp = tokio::time::timeout(Duration::from_secs(10), tokenless_probe(server.addr))
            .await
            .expect("the probe is answered at all");
        let took = started.elapsed();
        assert_eq!(resp.status_code(), Some(403));
        assert!(
            took < Duration::from_secs(1),
            "a token-less request waited {took:?} behind the guessing flood"
        );
        eprintln!("health probe under a refusal flood answered in {took:?}");
    }
    assert!(
        answered.load(Ordering::SeqCst) < 400,
        "the flood is still being paced"
    );
    for f in floods {
        f.abort();
    }
}
