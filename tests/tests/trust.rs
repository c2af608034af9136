//! The trust model over real STEP connections: every operation against
//! every kind of identity (a user, the public identity read-only and with
//! write, no token), the public identity that no password obtains,
//! revocation by a password change or an account's removal on every
//! instance sharing the storage, and the connection limits that keep silent
//! sockets from holding the server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use step_core::access::{Access, Anonymous, Scope, decide, of_step};
use step_core::digest::password_for;
use step_core::message::field;
use step_core::{Kind, Message, Operation, StepClient};
use step_server::ConnectionLimits;
use step_server::accounts::{AuthMode, hash_password};
use step_server::auth::Public;
use step_server::store::object::ObjectStorage;
use step_server::store::{Account, Storage, StoreLimits};
use step_tests::{TestConfig, TestServer, connect_from, tcp_from};

fn public_mode(anonymous: Anonymous) -> Public {
    Public {
        anonymous,
        ..Public::default()
    }
}

async fn server(auth: AuthMode, anonymous: Anonymous) -> TestServer {
    let server = TestServer::start_with(TestConfig {
        auth,
        public: public_mode(anonymous),
        ..TestConfig::default()
    })
    .await;
    server.add_account("alice", "alice pw").await;
    server
}

/// LOGIN's raw answer on a fresh connection.
async fn login_answer(addr: std::net::SocketAddr, req: Message) -> Message {
    let mut c = StepClient::connect(addr).await.expect("connect");
    c.call(&req).await.expect("answer")
}

fn password_login(user: &str, password: &str) -> Message {
    Message::request(Operation::Login, Kind::Auth)
        .with(field::USERNAME, user)
        .with(field::PASSWORD, password)
}

fn anonymous_login(want: &str) -> Message {
    Message::request(Operation::Login, Kind::Auth).with(field::ANONYMOUS, want)
}

/// One request of each operation a client can send, in an order that
/// makes each one meaningful when allowed (a file to read, then delete).
fn every_operation(token: &str) -> Vec<(Operation, Kind, Message)> {
    let req = |op: Operation, kind: Kind| Message::request(op, kind).with(field::TOKEN, token);
    vec![
        (
            Operation::Save,
            Kind::Data,
            req(Operation::Save, Kind::Data).with(field::KEY, "rec"),
        ),
        (
            Operation::Get,
            Kind::Data,
            req(Operation::Get, Kind::Data).with(field::KEY, "seed-rec"),
        ),
        (
            Operation::Save,
            Kind::File,
            req(Operation::Save, Kind::File)
                .with(field::KEY, "new.bin")
                .with(field::SIZE, 3),
        ),
        (
            Operation::Upload,
            Kind::File,
            req(Operation::Upload, Kind::File)
                .with(field::KEY, "new.bin")
                .with(field::BLOCK_INDEX, 0)
                .with_binary(bytes::Bytes::from_static(b"abc")),
        ),
        (
            Operation::Get,
            Kind::File,
            req(Operation::Get, Kind::File).with(field::KEY, "seed.bin"),
        ),
        (
            Operation::Download,
            Kind::File,
            req(Operation::Download, Kind::File)
                .with(field::KEY, "seed.bin")
                .with(field::BLOCK_INDEX, 0),
        ),
        (
            Operation::List,
            Kind::File,
            req(Operation::List, Kind::File),
        ),
        (
            Operation::Delete,
            Kind::File,
            req(Operation::Delete, Kind::File).with(field::KEY, "seed.bin"),
        ),
        (
            Operation::Delete,
            Kind::Data,
            req(Operation::Delete, Kind::Data).with(field::KEY, "seed-rec"),
        ),
    ]
}

/// A file and a record for `user` to read and delete (written with a full
/// token of that user, minted as its LOGIN would).
async fn seed(addr: std::net::SocketAddr, token: &str) {
    let mut c = StepClient::connect(addr).await.expect("connect");
    c.set_token(token.to_owned());
    c.data_save(Some("seed-rec"), serde_json::Map::new())
        .await
        .expect("record");
    let plan = c
        .file_save(Some("seed.bin"), 3, Default::default())
        .await
        .expect("plan");
    let stream = futures::stream::iter([Ok((0u64, bytes::Bytes::from_static(b"xyz")))]);
    c.upload_blocks(&plan.key, stream, 1, |_| {})
        .await
        .expect("upload");
}

/// Run every operation with `token` and check each answer against the one
/// decision for `scope` (`None`: no valid identity).
async fn check_row(addr: std::net::SocketAddr, who: &str, token: &str, scope: Option<Scope>) {
    let mut c = StepClient::connect(addr).await.expect("connect");
    for (op, kind, req) in every_operation(token) {
        let resp = c.call(&req).await.expect("answer");
        let access = of_step(op, kind).expect("needs an identity");
        let status = resp.status_code();
        let reason = resp.get(field::REASON).and_then(|r| r.as_str());
        match decide(scope, access) {
            Ok(()) => assert_eq!(status, Some(200), "{who}: {op} {kind} allowed: {resp:?}"),
            Err(_) => {
                assert_eq!(status, Some(403), "{who}: {op} {kind} refused: {resp:?}");
                if scope.is_some() {
                    assert_eq!(reason, Some("read_only"), "{who}: {op} {kind}: {resp:?}");
                }
            }
        }
    }
}

/// The table: in both modes, every operation as a user, as the public
/// identity under `read` and under `write`, and with no token; each answer
/// is the one [`decide`] gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_step_operation_is_decided_by_the_callers_scope() {
    for mode in [AuthMode::Open, AuthMode::Accounts] {
        for anonymous in [Anonymous::Read, Anonymous::Write] {
            let password = match mode {
                AuthMode::Open => password_for("alice"),
                AuthMode::Accounts => "alice pw".into(),
            };
            // Something to read and delete for alice and in the public
            // area, written while anonymous callers could write.
            let first = server(mode, Anonymous::Write).await;
            let alice = login_answer(first.addr, password_login("alice", &password)).await;
            let alice = alice
                .get(field::TOKEN)
                .and_then(|t| t.as_str())
                .expect("token");
            seed(first.addr, alice).await;
            let public = login_answer(first.addr, anonymous_login("write")).await;
            let public = public
                .get(field::TOKEN)
                .and_then(|t| t.as_str())
                .expect("token");
            seed(first.addr, public).await;
            let (dir, _keep) = first.stop_keep_data().await;
            let s = TestServer::start_with(TestConfig {
                auth: mode,
                public: public_mode(anonymous),
                data_dir: Some(dir),
                ..TestConfig::default()
            })
            .await;

            let alice = login_answer(s.addr, password_login("alice", &password)).await;
            let alice = alice
                .get(field::TOKEN)
                .and_then(|t| t.as_str())
                .expect("token");
            check_row(s.addr, &format!("{mode} alice"), alice, Some(Scope::Full)).await;

            let public = login_answer(s.addr, anonymous_login("write")).await;
            assert_eq!(public.status_code(), Some(200), "{public:?}");
            let scope = anonymous.scope().expect("a scope");
            assert_eq!(
                public.get(field::SCOPE).and_then(|v| v.as_str()),
                Some(scope.as_str())
            );
            assert_eq!(
                public.get(field::USERNAME).and_then(|v| v.as_str()),
                Some("anonymous")
            );
            let public = public
                .get(field::TOKEN)
                .and_then(|t| t.as_str())
                .expect("token");
            let who = format!("{mode} public under {anonymous}");
            check_row(s.addr, &who, public, Some(scope)).await;
            check_row(s.addr, &format!("{mode} no token"), "", None).await;
        }
    }
    // No request is ever Admin over the network.
    assert!(decide(Some(Scope::Full), Access::Admin).is_err());
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// The public identity is a mode, not a credential: neither the md5 rule
/// nor an account of that name logs in as it, in either mode; only an
/// anonymous LOGIN gets its token, and with anonymous access off, nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_obtains_the_public_identity() {
    for mode in [AuthMode::Open, AuthMode::Accounts] {
        let s = server(mode, Anonymous::Read).await;
        // The README used to suggest exactly this account.
        s.add_account("anonymous", &password_for("anonymous")).await;
        let resp = login_answer(
            s.addr,
            password_login("anonymous", &password_for("anonymous")),
        )
        .await;
        assert_eq!(resp.status_code(), Some(401), "{mode}: {resp:?}");
        assert!(resp.get(field::TOKEN).is_none());
        assert!(resp.status_msg().contains("public identity"), "{resp:?}");
        // Asking for write gets read: the server decides.
        let resp = login_answer(s.addr, anonymous_login("write")).await;
        assert_eq!(
            resp.get(field::SCOPE).and_then(|v| v.as_str()),
            Some("read")
        );
        // Capabilities say so.
        let caps = step_core::client::Capabilities::from_login(&resp);
        assert_eq!(caps.anonymous, Some(Anonymous::Read));
        let resp = login_answer(s.addr, anonymous_login("sideways")).await;
        assert_eq!(resp.status_code(), Some(410), "{resp:?}");
    }
    let off = server(AuthMode::Open, Anonymous::None).await;
    let resp = login_answer(off.addr, anonymous_login("read")).await;
    assert_eq!(resp.status_code(), Some(401), "{resp:?}");
    assert_eq!(
        resp.get(field::REASON).and_then(|v| v.as_str()),
        Some("no_anonymous")
    );
    let caps = step_core::client::Capabilities::from_login(&resp);
    assert!(caps.pipelining && caps.anonymous.is_none(), "{caps:?}");
    // A token for the public user minted before (by an older server, or
    // under anonymous write) has only what the mode allows now.
    let key = step_core::token::TokenKey::new(step_tests::TEST_SECRET, 86_400);
    let old = key.mint("anonymous", now());
    check_row(off.addr, "old public token, anonymous off", &old, None).await;
    let read = server(AuthMode::Open, Anonymous::Read).await;
    let mut c = StepClient::connect(read.addr).await.expect("connect");
    c.set_token(old);
    let refused = c.file_delete("anything").await.expect_err("read-only now");
    assert!(refused.to_string().contains("may only read"), "{refused}");
}

/// `--public-user`: anonymous callers read a real account's files, which
/// that account writes with its own password; in open mode the md5 rule is
/// refused for the public user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_user_publishes_with_its_own_password() {
    let s = TestServer::start_with(TestConfig {
        auth: AuthMode::Accounts,
        public: Public {
            anonymous: Anonymous::Read,
            user: "press".into(),
        },
        ..TestConfig::default()
    })
    .await;
    s.add_account("press", "press pw").await;
    let mut press = StepClient::connect(s.addr).await.expect("connect");
    press
        .login("press", "press pw")
        .await
        .expect("press logs in");
    press
        .data_save(Some("notice"), serde_json::Map::new())
        .await
        .expect("press writes");
    let mut anon = StepClient::connect(s.addr).await.expect("connect");
    let login = anon
        .login_anonymous(Anonymous::Write)
        .await
        .expect("anonymous");
    assert_eq!((login.user.as_str(), login.scope), ("press", Scope::Read));
    anon.data_get("notice")
        .await
        .expect("anonymous reads press's");
    let refused = anon
        .data_delete("notice")
        .await
        .expect_err("anonymous may not write");
    assert!(refused.to_string().contains("may only read"), "{refused}");

    let open = TestServer::start_with(TestConfig {
        public: Public {
            anonymous: Anonymous::Read,
            user: "press".into(),
        },
        ..TestConfig::default()
    })
    .await;
    let resp = login_answer(open.addr, password_login("press", &password_for("press"))).await;
    assert_eq!(resp.status_code(), Some(401), "{resp:?}");
}

/// Two instances on one storage: a password change, then a removal, end
/// the old password and every token minted before on both, within the
/// epoch cache's two seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_or_removal_ends_old_tokens_on_every_instance() {
    let bucket = Arc::new(object_store::memory::InMemory::new());
    let storage = || -> Arc<dyn Storage> {
        Arc::new(ObjectStorage::new(
            Arc::clone(&bucket) as Arc<dyn object_store::ObjectStore>,
            "",
            StoreLimits::default(),
        ))
    };
    let start = |storage: Arc<dyn Storage>| {
        TestServer::start_with(TestConfig {
            auth: AuthMode::Accounts,
            storage: Some(storage),
            ..TestConfig::default()
        })
    };
    let admin = storage();
    admin
        .account_create(&Account {
            name: "alice".into(),
            password_hash: hash_password("old pw").expect("hash"),
            epoch: step_server::users::new_epoch(),
        })
        .await
        .expect("add");
    let (one, two) = (start(storage()).await, start(storage()).await);
    let mut on_one = StepClient::connect(one.addr).await.expect("connect");
    on_one.login("alice", "old pw").await.expect("login");
    let token = on_one.token().expect("token").to_owned();
    let mut on_two = StepClient::connect(two.addr).await.expect("connect");
    on_two.set_token(token.clone());
    on_two
        .data_save(Some("r"), serde_json::Map::new())
        .await
        .expect("a token from one works on two");

    // `step-server user passwd alice`, as the command does it.
    step_server::users::set_password(
        admin.as_ref(),
        "alice",
        hash_password("new pw").expect("hash"),
    )
    .await
    .expect("passwd");
    for (name, c) in [("one", &mut on_one), ("two", &mut on_two)] {
        let refused_at = refused_within(c, Duration::from_secs(10)).await;
        assert!(
            refused_at < Duration::from_secs(5),
            "instance {name}: {refused_at:?}"
        );
    }
    for s in [&one, &two] {
        let old = login_answer(s.addr, password_login("alice", "old pw")).await;
        assert_eq!(old.status_code(), Some(401), "{old:?}");
    }
    let mut fresh = StepClient::connect(two.addr).await.expect("connect");
    fresh
        .login("alice", "new pw")
        .await
        .expect("the new password works");
    let mut fresh_on_one = StepClient::connect(one.addr).await.expect("connect");
    fresh_on_one.set_token(fresh.token().expect("token").to_owned());

    // `step-server user remove alice`.
    admin.account_delete("alice").await.expect("remove");
    for c in [&mut fresh, &mut fresh_on_one] {
        let refused_at = refused_within(c, Duration::from_secs(10)).await;
        assert!(refused_at < Duration::from_secs(5), "{refused_at:?}");
    }
    let gone = login_answer(one.addr, password_login("alice", "new pw")).await;
    assert_eq!(gone.status_code(), Some(401), "{gone:?}");
}

/// How long until `c`'s token is refused (polling a DATA GET).
async fn refused_within(c: &mut StepClient, bound: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let req = c
            .request(Operation::Get, Kind::Data)
            .expect("token")
            .with(field::KEY, "r");
        let resp = c.call(&req).await.expect("answer");
        if resp.status_code() == Some(403) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < bound,
            "still accepted after {bound:?}: {resp:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 200 silent sockets from one address on a server of 200 slots: a new
/// LOGIN from elsewhere is answered promptly (the per-address cap keeps
/// slots free), and the silent sockets are closed after the first-request
/// deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_do_not_hold_the_server() {
    let s = TestServer::start_with(TestConfig {
        conn: ConnectionLimits {
            max_connections: 200,
            first_request_timeout: Duration::from_secs(2),
            ..ConnectionLimits::default()
        },
        ..TestConfig::default()
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tcp_from("127.0.0.2", s.addr).await.expect("connect"));
    }
    let started = Instant::now();
    let mut c = connect_from("127.0.0.1", s.addr).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        c.call(&password_login("bob", &password_for("bob"))),
    )
    .await
    .expect("answered promptly")
    .expect("answer");
    assert_eq!(resp.status_code(), Some(200), "{resp:?}");
    let waited = started.elapsed();
    // The silent ones are closed by the server: each read sees EOF (or a
    // reset), and none is kept past the first-request deadline by much.
    let closed = async {
        for sock in &mut silent {
            let mut buf = [0u8; 1];
            let _ = tokio::io::AsyncReadExt::read(sock, &mut buf).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), closed)
        .await
        .expect("every silent socket is closed");
    println!("LOGIN beside 200 silent sockets answered in {waited:?}");
}
