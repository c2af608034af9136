//! `--auth accounts` over real STEP connections: passwords checked against
//! argon2id hashes in the storage (disk and the object store), unknown users
//! and wrong passwords answered alike, logins paced per address and name, open mode
//! unchanged; and, in both modes, no user reaching another's files.

use std::sync::Arc;

use step_core::client::{ClientError, SaveOptions, StepClient};
use step_core::digest::{md5_hex, password_for};
use step_core::message::field;
use step_core::{Kind, Message, Operation, Status};
use step_server::accounts::{AuthMode, hash_password};
use step_server::auth::LoginLimits;
use step_server::service::Limits;
use step_server::store::object::ObjectStorage;
use step_server::store::{Account, Storage};
use step_tests::{TestConfig, TestServer, blocks, connect_from, download, pattern};

async fn accounts_server(limits: Limits) -> TestServer {
    let server = TestServer::start_with(TestConfig {
        auth: AuthMode::Accounts,
        limits,
        ..TestConfig::default()
    })
    .await;
    server.add_account("alice", "alice's secret").await;
    server.add_account("bob", "bob's secret").await;
    server
}

/// LOGIN's raw answer (status and message), on a fresh connection.
async fn try_login(server: &TestServer, user: &str, password: &str) -> Message {
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    let req = Message::request(Operation::Login, Kind::Auth)
        .with(field::USERNAME, user)
        .with(field::PASSWORD, password);
    c.call(&req).await.expect("answer")
}

async fn logged_in(server: &TestServer, user: &str, password: &str) -> StepClient {
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    c.login(user, password).await.expect("login");
    c
}

async fn upload(c: &mut StepClient, key: &str, body: &[u8]) {
    let plan = c
        .file_save(Some(key), body.len() as u64, SaveOptions::default())
        .await
        .expect("plan");
    let stream = futures::stream::iter(blocks(body, plan.block_size as usize).into_iter().map(Ok));
    let md5 = c
        .upload_blocks(&plan.key, stream, 4, |_| {})
        .await
        .expect("upload");
    assert_eq!(md5.as_deref(), Some(md5_hex(body).as_str()));
}

fn status_of(e: ClientError) -> Status {
    e.status()
        .unwrap_or_else(|| panic!("expected a refusal: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_mode_checks_passwords_and_hides_which_users_exist() {
    let server = accounts_server(Limits::default()).await;
    let ok = try_login(&server, "alice", "alice's secret").await;
    assert_eq!(ok.status_code(), Some(200), "{ok:?}");
    assert!(ok.get(field::TOKEN).is_some());
    let wrong = try_login(&server, "alice", "bob's secret").await;
    let unknown = try_login(&server, "mallory", "anything").await;
    let course_rule = try_login(&server, "alice", &password_for("alice")).await;
    for refused in [&wrong, &unknown, &course_rule] {
        assert_eq!(refused.status_code(), Some(401), "{refused:?}");
        assert!(refused.get(field::TOKEN).is_none());
    }
    assert_eq!(
        wrong.status_msg(),
        unknown.status_msg(),
        "an unknown user reads as a wrong password"
    );
    // The token works as in open mode.
    let mut alice = logged_in(&server, "alice", "alice's secret").await;
    upload(&mut alice, "a.bin", &pattern(50_000, 1)).await;
    assert_eq!(download(&mut alice, "a.bin").await, pattern(50_000, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_keeps_the_reference_rule_and_ignores_accounts() {
    let server = TestServer::start().await;
    server.add_account("alice", "alice's secret").await;
    let course = try_login(&server, "alice", &password_for("alice")).await;
    assert_eq!(course.status_code(), Some(200), "{course:?}");
    let account = try_login(&server, "alice", "alice's secret").await;
    assert_eq!(account.status_code(), Some(401), "{account:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_live_in_the_object_store_too() {
    let storage = Arc::new(ObjectStorage::in_memory());
    storage
        .account_create(&Account {
            name: "carol".into(),
            password_hash: hash_password("carol's secret").expect("hash"),
            epoch: 1,
        })
        .await
        .expect("add");
    let server = TestServer::start_with(TestConfig {
        auth: AuthMode::Accounts,
        storage: Some(storage),
        ..TestConfig::default()
    })
    .await;
    let ok = try_login(&server, "carol", "carol's secret").await;
    assert_eq!(ok.status_code(), Some(200), "{ok:?}");
    let refused = try_login(&server, "carol", "nope").await;
    assert_eq!(refused.status_code(), Some(401), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_beyond_an_address_or_names_pace_are_refused_at_once() {
    let server = accounts_server(Limits {
        login: LoginLimits {
            per_source_per_min: 5,
            per_user_per_min: 8,
            ..LoginLimits::default()
        },
        ..Limits::default()
    })
    .await;
    // One guesser at 127.0.0.2: 20 pipelined guesses at alice.
    let guesses = 20;
    let mut guesser = connect_from("127.0.0.2", server.addr).await;
    let requests: Vec<_> = (0..guesses)
        .map(|i| {
            Ok(Message::request(Operation::Login, Kind::Auth)
                .with(field::USERNAME, "alice")
                .with(field::PASSWORD, format!("guess {i}")))
        })
        .collect();
    let mut answers = Vec::new();
    guesser
        .pipeline(futures::stream::iter(requests), guesses, |resp| {
            answers.push(resp);
            Ok(())
        })
        .await
        .expect("pipeline");
    let paced: Vec<&Message> = answers
        .iter()
        .filter(|a| a.get(field::REASON).and_then(|r| r.as_str()) == Some("too_many_attempts"))
        .collect();
    assert!(answers.iter().all(|a| a.status_code() == Some(401)));
    // The burst of 5 was checked; the other 15 were refused unchecked,
    // each saying when to retry.
    assert_eq!(paced.len(), 15, "{answers:?}");
    for a in &paced {
        let retry = a.get(field::RETRY_AFTER).and_then(|r| r.as_u64());
        assert!(matches!(retry, Some(1..=60)), "{a:?}");
        assert!(a.status_msg().contains("retry in"), "{a:?}");
    }
    // Another address is not paced by the guesser's; alice's name has 3
    // attempts left of its 8, and her own login is one of them.
    let honest = try_login(&server, "alice", "alice's secret").await;
    assert_eq!(honest.status_code(), Some(200), "{honest:?}");
    let bob = try_login(&server, "bob", "bob's secret").await;
    assert_eq!(bob.status_code(), Some(200), "{bob:?}");
    // Guessing alice from many addresses stops at her name's pace.
    for i in 3..9 {
        let mut c = connect_from(&format!("127.0.0.{i}"), server.addr).await;
        let req = Message::request(Operation::Login, Kind::Auth)
            .with(field::USERNAME, "alice")
            .with(field::PASSWORD, "guess");
        let _ = c.call(&req).await.expect("answer");
    }
    let mut c = connect_from("127.0.0.20", server.addr).await;
    let req = Message::request(Operation::Login, Kind::Auth)
        .with(field::USERNAME, "alice")
        .with(field::PASSWORD, "alice's secret");
    let resp = c.call(&req).await.expect("answer");
    assert_eq!(
        resp.get(field::REASON).and_then(|r| r.as_str()),
        Some("too_many_attempts"),
        "{resp:?}"
    );
}

/// Bob's files are out of Alice's reach in either mode: reading, planning,
/// deleting and writing the same key all act on Alice's own namespace.
async fn users_never_reach_each_other(server: &TestServer, alice_pw: &str, bob_pw: &str) {
    let mut bob = logged_in(server, "bob", bob_pw).await;
    let bobs = pattern(30_000, 7);
    upload(&mut bob, "bob.txt", &bobs).await;
    let mut alice = logged_in(server, "alice", alice_pw).await;
    assert_eq!(
        status_of(alice.file_get("bob.txt", None).await.expect_err("no plan")),
        Status::NotFound
    );
    let download_req = Message::request(Operation::Download, Kind::File)
        .with(field::TOKEN, alice.token().expect("token"))
        .with(field::KEY, "bob.txt")
        .with(field::BLOCK_INDEX, 0);
    let resp = alice.call(&download_req).await.expect("answer");
    assert_eq!(resp.status_code(), Some(404), "{resp:?}");
    assert!(resp.binary.is_empty(), "no byte of Bob's file");
    assert_eq!(
        status_of(alice.file_delete("bob.txt").await.expect_err("refused")),
        Status::NotFound
    );
    // "Replacing" it makes Alice's own file; Bob's stays as it was.
    upload(&mut alice, "bob.txt", &pattern(10, 8)).await;
    assert_eq!(download(&mut bob, "bob.txt").await, bobs);
    assert_eq!(download(&mut alice, "bob.txt").await, pattern(10, 8));
    // A token only ever acts for its own user: Bob's token used by Alice's
    // connection is Bob, and Alice's cannot be edited into Bob's.
    let forged = alice
        .token()
        .expect("token")
        .to_owned()
        .replace("YWxpY2", "Ym9i");
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    c.set_token(forged);
    assert_eq!(
        status_of(c.file_get("bob.txt", None).await.expect_err("refused")),
        Status::BadToken
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_never_reach_each_others_files_in_open_mode() {
    let server = TestServer::start().await;
    users_never_reach_each_other(&server, &password_for("alice"), &password_for("bob")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_never_reach_each_others_files_in_accounts_mode() {
    let server = accounts_server(Limits::default()).await;
    users_never_reach_each_other(&server, "alice's secret", "bob's secret").await;
}
