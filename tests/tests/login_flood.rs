//! A flood of wrong passwords does not lock anyone out: with 300 wrong
//! LOGINs in flight on the STEP port from one address, a correct LOGIN from
//! another address and a request with a valid token are answered promptly,
//! and the flood itself is answered (refused) rather than queued without
//! bound. A liveness check with a generous bound, not a benchmark
//! (`bench/login_flood.sh` measures).

use std::time::{Duration, Instant};

use step_core::message::field;
use step_core::{Kind, Message, Operation, StepClient};
use step_server::accounts::AuthMode;
use step_tests::{TestConfig, TestServer, connect_from};

const FLOOD: usize = 300;
/// Far above an idle LOGIN (tens of ms) and far below what a queue of 300
/// argon2 checks takes on two cores (seconds to tens of seconds).
const PROMPT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_login_and_a_token_are_served_during_300_wrong_logins() {
    let server = TestServer::start_with(TestConfig {
        auth: AuthMode::Accounts,
        ..TestConfig::default()
    })
    .await;
    server.add_account("alice", "alice pw").await;
    let mut alice = StepClient::connect(server.addr).await.expect("connect");
    alice.login("alice", "alice pw").await.expect("login");
    alice
        .data_save(Some("r"), serde_json::Map::new())
        .await
        .expect("record");

    // 300 connections from 127.0.0.2, each sending one wrong LOGIN at once.
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..FLOOD {
        let addr = server.addr;
        flood.spawn(async move {
            let mut c = connect_from("127.0.0.2", addr).await;
            let req = Message::request(Operation::Login, Kind::Auth)
                .with(field::USERNAME, format!("user{}", i % 7))
                .with(field::PASSWORD, "wrong");
            c.call(&req).await.map(|resp| {
                resp.get(field::REASON)
                    .and_then(|r| r.as_str())
                    .map(str::to_owned)
            })
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let mut honest = connect_from("127.0.0.1", server.addr).await;
    let login = tokio::time::timeout(PROMPT * 2, honest.login("alice", "alice pw"))
        .await
        .expect("the correct LOGIN is answered");
    let login_took = started.elapsed();
    login.expect("and succeeds");
    let started = Instant::now();
    tokio::time::timeout(PROMPT * 2, alice.data_get("r"))
        .await
        .expect("the token request is answered")
        .expect("and served");
    let token_took = started.elapsed();
    println!(
        "during {FLOOD} wrong LOGINs: correct LOGIN {login_took:?}, token request {token_took:?}"
    );
    assert!(login_took < PROMPT, "correct LOGIN took {login_took:?}");
    assert!(token_took < PROMPT, "token request took {token_took:?}");

    // Every wrong LOGIN was answered or closed, most refused unchecked.
    let mut unchecked = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while let Some(r) = tokio::time::timeout_at(deadline.into(), flood.join_next())
        .await
        .expect("the flood is answered within a minute")
    {
        // Refused before any hashing: paced, busy, or (past the cap on
        // one address's connections) closed at accept.
        match r.expect("join") {
            Ok(Some(reason)) if reason == "too_many_attempts" || reason == "busy" => unchecked += 1,
            Ok(_) => {}
            Err(e) if e.is_interruption() => unchecked += 1,
            Err(e) => panic!("a wrong LOGIN got {e}"),
        }
    }
    assert!(
        unchecked >= FLOOD - 40,
        "only {unchecked} of {FLOOD} refused before hashing"
    );
}
