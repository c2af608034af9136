//! The trust model over HTTP (reqwest, real sockets), in front of a real
//! step-server over TCP (`--backend`) and in process:
//! * every route of the route table, as each kind of caller (a user, the
//!   public identity read-only, a read-only Bearer token, nobody), gets what
//!   the one decision says;
//! * the public identity cannot be had with a password (`POST /login`,
//!   Basic `anonymous:md5("anonymous")`), in open and accounts mode;
//! * a password change or removal ends a cached Basic login and old Bearer
//!   tokens within seconds;
//! * 100 clients looping on wrong Basic passwords do not make a valid
//!   Bearer token's requests fail.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gateway::routes::{ROUTE_KINDS, RouteKind};
use reqwest::{Method, StatusCode};
use step_core::access::{Access, Anonymous, Scope};
use step_core::digest::password_for;
use step_server::accounts::{AuthMode, hash_password};
use step_server::auth::Public;
use step_tests::{TestConfig, TestServer};
use support::Gateway;

async fn step(auth: AuthMode, anonymous: Anonymous) -> TestServer {
    let s = TestServer::start_with(TestConfig {
        auth,
        public: Public {
            anonymous,
            ..Public::default()
        },
        ..TestConfig::default()
    })
    .await;
    s.add_account("alice", "alice pw").await;
    s
}

/// The public identity's read-only token, straight from the STEP server.
async fn read_token(s: &TestServer) -> String {
    let mut c = step_core::StepClient::connect(s.addr)
        .await
        .expect("connect");
    let login = c.login_anonymous(Anonymous::Read).await.expect("anonymous");
    assert_eq!(login.scope, Scope::Read);
    login.token
}

/// Alice's token from `POST /login` with her password.
async fn alice_token(gw: &Gateway) -> String {
    let login = gw
        .client
        .post(gw.at("/login"))
        .json(&serde_json::json!({"username": "alice", "password": "alice pw"}))
        .send()
        .await
        .expect("login");
    let answer: serde_json::Value = login.json().await.expect("json");
    answer["token"].as_str().expect("token").to_owned()
}

/// A tus upload of one byte started by alice (`password` hers): its path.
async fn tus_upload(gw: &Gateway, password: &str) -> String {
    let r = gw
        .client
        .post(gw.at("/tus/"))
        .basic_auth("alice", Some(password))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1")
        .header(
            "Upload-Metadata",
            format!("filename {}", STANDARD.encode("tus.txt")),
        )
        .send()
        .await
        .expect("POST /tus/");
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().expect("ascii").to_owned();
    match location.find("/tus/") {
        Some(at) => location[at..].to_owned(),
        None => location,
    }
}

/// A concrete request for each (method, route) of the table; `tus` is a
/// real upload's path for the `/tus/{id}` routes.
fn concrete(gw: &Gateway, method: &str, route: &str, tus: &str) -> reqwest::RequestBuilder {
    let path = if route == "/tus/{id}" {
        tus.to_owned()
    } else {
        route
            .replace("{*key}", "t.txt")
            .replace("{key}", "r1")
            .replace("{name}", "app.js")
    };
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let req = gw
        .client
        .request(method.clone(), gw.at(&path))
        .header("Tus-Resumable", "1.0.0");
    match (method.as_str(), route) {
        ("POST", "/upload") => req.multipart(reqwest::multipart::Form::new().part(
            "file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("u.txt"),
        )),
        ("POST" | "PUT", "/records" | "/records/{key}") => req.json(&serde_json::json!({"a": 1})),
        ("POST", "/login") => req.json(&serde_json::json!({"username": "nobody", "password": "x"})),
        ("POST", "/tus/") => req.header("Upload-Length", "1").header(
            "Upload-Metadata",
            format!("filename {}", STANDARD.encode("tus.txt")),
        ),
        ("PATCH", _) => req
            .header("Upload-Offset", "0")
            .header("Content-Type", "application/offset+octet-stream")
            .body("x"),
        (_, "/files/{*key}") => req.body("x"),
        _ => req,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    User,
    PublicRead,
    ReadBearer,
    Nobody,
}

/// Walk the route table as `caller`: every route that needs an identity
/// is refused (401 for the anonymous, 403 for a read-only token) exactly
/// when the decision says so, and served otherwise.
async fn walk(gw: &Gateway, caller: Caller, token: &str, alice_pw: &str) {
    let tus = tus_upload(gw, alice_pw).await;
    for (method, route, kind) in ROUTE_KINDS {
        let mut req = concrete(gw, method, route, &tus);
        match caller {
            Caller::User => req = req.basic_auth("alice", Some(alice_pw)),
            Caller::ReadBearer => req = req.bearer_auth(token),
            Caller::PublicRead | Caller::Nobody => {}
        }
        let r = req.send().await.expect("send");
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        let what = format!("{caller:?} {method} {route}: {status} {body}");
        let refused = match (kind, caller) {
            // Needs no caller: whatever it answers (POST /login with a
            // wrong password is 401), it is not refused for who asks.
            (RouteKind::Open | RouteKind::OtherMethod, _) => {
                assert!(
                    status != StatusCode::FORBIDDEN && !status.is_server_error(),
                    "{what}"
                );
                continue;
            }
            (RouteKind::Needs(_), Caller::Nobody) => Some(StatusCode::UNAUTHORIZED),
            (RouteKind::Needs(Access::Write), Caller::PublicRead) => Some(StatusCode::UNAUTHORIZED),
            (RouteKind::Needs(Access::Write), Caller::ReadBearer) => Some(StatusCode::FORBIDDEN),
            (RouteKind::Needs(Access::Admin), _) => Some(StatusCode::FORBIDDEN),
            (RouteKind::Needs(_), _) => None,
        };
        match refused {
            // Over TCP the gateway does not know a bearer token's scope; a
            // tus write first looks its upload up, and alice's upload is not
            // in the public identity's namespace: 404 before anything could
            // be written (in process the scope refuses it first).
            Some(StatusCode::FORBIDDEN)
                if *route == "/tus/{id}"
                    && matches!(caller, Caller::ReadBearer)
                    && status == StatusCode::NOT_FOUND => {}
            Some(want) => {
                assert_eq!(status, want, "{what}");
                let code = if want == StatusCode::FORBIDDEN {
                    "read_only"
                } else {
                    "unauthorized"
                };
                assert!(*method == "HEAD" || body.contains(code), "{what}");
            }
            None => assert!(
                status != StatusCode::UNAUTHORIZED
                    && status != StatusCode::FORBIDDEN
                    && !status.is_server_error(),
                "{what}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_is_decided_by_its_kind_and_the_callers_scope() {
    for mode in [AuthMode::Open, AuthMode::Accounts] {
        let s = step(mode, Anonymous::Read).await;
        let token = read_token(&s).await;
        let over_tcp = support::gateway(s.addr).await;
        let pw = match mode {
            AuthMode::Open => password_for("alice"),
            AuthMode::Accounts => "alice pw".to_owned(),
        };
        walk(&over_tcp, Caller::User, "", &pw).await;
        walk(&over_tcp, Caller::PublicRead, "", &pw).await;
        walk(&over_tcp, Caller::ReadBearer, &token, &pw).await;
        let strict = support::gateway_with(s.addr, |http, _| http.require_auth = true).await;
        walk(&strict, Caller::Nobody, "", &pw).await;
    }
}

/// In process the gateway knows a Bearer token's scope and refuses before
/// anything reaches the service; the answers are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_the_same_table_holds() {
    let dir = tempfile::tempdir().expect("tmp");
    let store: Arc<dyn step_server::store::Storage> =
        step_server::store::DiskStore::open(dir.path()).expect("store");
    let service = Arc::new(
        step_server::Service::new(
            store,
            step_core::token::TokenKey::new(step_tests::TEST_SECRET, 86_400),
            step_server::service::Limits::default(),
        )
        .with_public(Public {
            anonymous: Anonymous::Read,
            ..Public::default()
        }),
    );
    let token = {
        let msg = step_core::Message::request(step_core::Operation::Login, step_core::Kind::Auth)
            .with(step_core::message::field::ANONYMOUS, "read");
        let resp = service.serve_message(msg, None).await;
        resp.get("token")
            .and_then(|t| t.as_str())
            .expect("token")
            .to_owned()
    };
    let gw = support::gateway_in_process(Arc::clone(&service), |_, _| {}).await;
    let pw = password_for("alice");
    walk(&gw, Caller::User, "", &pw).await;
    walk(&gw, Caller::PublicRead, "", &pw).await;
    walk(&gw, Caller::ReadBearer, &token, &pw).await;
}

/// No password obtains the public identity through the gateway either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_identity_cannot_be_logged_into() {
    for mode in [AuthMode::Open, AuthMode::Accounts] {
        let s = step(mode, Anonymous::Read).await;
        // What the README once suggested for accounts mode.
        s.add_account("anonymous", &password_for("anonymous")).await;
        let gw =
            support::gateway_with(s.addr, |http, _| http.anonymous = Some(Anonymous::Read)).await;
        for body in [
            serde_json::json!({"username": "anonymous"}),
            serde_json::json!({"username": "anonymous", "password": password_for("anonymous")}),
        ] {
            let r = gw
                .client
                .post(gw.at("/login"))
                .json(&body)
                .send()
                .await
                .expect("login");
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{mode}: {body}");
        }
        let r = gw
            .client
            .put(gw.at("/files/defaced.html"))
            .basic_auth("anonymous", Some(password_for("anonymous")))
            .body("<script>")
            .send()
            .await
            .expect("put");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{mode}");
        let r = gw
            .client
            .put(gw.at("/files/defaced.html"))
            .body("x")
            .send()
            .await
            .expect("put");
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "{mode}: anonymous read only"
        );
        assert_eq!(
            gw.get("/files/defaced.html").await.status(),
            StatusCode::NOT_FOUND
        );
    }
}

/// `user passwd` then `user remove`: a cached Basic login and Bearer
/// tokens minted before stop working through the gateway within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_ends_cached_basic_logins_and_tokens() {
    let s = step(AuthMode::Accounts, Anonymous::None).await;
    let gw = support::gateway_with(s.addr, |http, _| http.anonymous = Some(Anonymous::None)).await;
    let basic = |pw: &'static str| {
        gw.client
            .put(gw.at("/files/a.txt"))
            .basic_auth("alice", Some(pw))
            .body("alice's")
    };
    assert_eq!(
        basic("alice pw").send().await.expect("put").status(),
        StatusCode::CREATED
    );
    let token = alice_token(&gw).await;
    let store = step_server::store::DiskStore::open_for_accounts(s.data_dir()).expect("accounts");
    step_server::users::set_password(
        store.as_ref(),
        "alice",
        hash_password("new pw").expect("hash"),
    )
    .await
    .expect("passwd");
    let started = Instant::now();
    let ended = |r: &reqwest::Response| r.status() == StatusCode::UNAUTHORIZED;
    loop {
        let by_basic = basic("alice pw").send().await.expect("put");
        let by_token = gw
            .client
            .get(gw.at("/files/a.txt"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        if ended(&by_basic) && ended(&by_token) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "still accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "old password and token refused {:?} after passwd",
        started.elapsed()
    );
    let r = gw
        .client
        .get(gw.at("/files/a.txt"))
        .basic_auth("alice", Some("new pw"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    step_server::store::Accounts::account_delete(store.as_ref(), "alice")
        .await
        .expect("remove");
    let started = Instant::now();
    loop {
        let r = gw
            .client
            .get(gw.at("/files/a.txt"))
            .basic_auth("alice", Some("new pw"))
            .send()
            .await
            .expect("get");
        if ended(&r) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "still accepted after remove"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 100 clients at another address looping on wrong Basic passwords for
/// four seconds: alice's Bearer requests meanwhile are never refused with
/// 503 (logins have their own lane) and stay prompt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_basic_floods_do_not_starve_bearer_requests() {
    let s = step(AuthMode::Accounts, Anonymous::None).await;
    let gw = support::gateway_with(s.addr, |http, _| http.anonymous = Some(Anonymous::None)).await;
    let token = alice_token(&gw).await;
    let put = gw
        .client
        .put(gw.at("/files/a.txt"))
        .bearer_auth(&token)
        .body("alice's")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), StatusCode::CREATED);

    let attacker = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().expect("ip")))
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let until = Instant::now() + Duration::from_secs(4);
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..100 {
        let (attacker, url) = (attacker.clone(), gw.at("/files/a.txt"));
        flood.spawn(async move {
            let mut statuses = Vec::new();
            while Instant::now() < until {
                let r = attacker
                    .get(&url)
                    .basic_auth("alice", Some(format!("guess {i}")))
                    .send()
                    .await;
                if let Ok(r) = r {
                    statuses.push(r.status());
                }
            }
            statuses
        });
    }
    let mut slowest = Duration::ZERO;
    let mut served = 0;
    while Instant::now() < until {
        let started = Instant::now();
        let r = gw
            .client
            .get(gw.at("/files/a.txt"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "alice's Bearer request during the flood"
        );
        slowest = slowest.max(started.elapsed());
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut answers = std::collections::BTreeMap::new();
    while let Some(r) = flood.join_next().await {
        for status in r.expect("join") {
            *answers.entry(status.as_u16()).or_insert(0u32) += 1;
        }
    }
    println!("alice: {served} requests, slowest {slowest:?}; flood answers {answers:?}");
    assert!(
        slowest < Duration::from_secs(2),
        "slowest Bearer request {slowest:?}"
    );
    // The flood was answered: wrong password, paced, or lane busy.
    assert!(
        answers.keys().all(|s| [401, 429, 503].contains(s)),
        "{answers:?}"
    );
    assert!(answers.get(&429).copied().unwrap_or(0) > 0, "{answers:?}");
}

/// The gateway binary with `args`, no GATEWAY_/STEP_ variable from the
/// environment, in `dir`.
fn gateway_binary(dir: &std::path::Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (var, _) in std::env::vars() {
        if var.starts_with("GATEWAY_") || var.starts_with("STEP_") {
            cmd.env_remove(var);
        }
    }
    cmd.current_dir(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

fn free_port() -> String {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
        .to_string()
}

/// Anonymous write beyond loopback is a decision: without `--anonymous`,
/// a non-loopback `--bind` or `--step-ip` is refused at start, saying how
/// to open up knowingly, before anything listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_write_beyond_loopback_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    for flags in [&["--bind", "0.0.0.0"][..], &["--step-ip", "0.0.0.0"]] {
        let (port, step_port) = (free_port(), free_port());
        let mut args = vec!["--port", &port, "--step-port", &step_port];
        args.extend_from_slice(flags);
        let out = tokio::time::timeout(
            Duration::from_secs(30),
            gateway_binary(dir.path(), &args).output(),
        )
        .await
        .expect("exits")
        .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flags:?}: {stderr}");
        assert!(stderr.contains("--anonymous write"), "{flags:?}: {stderr}");
        assert!(
            !dir.path().join("step-data").exists(),
            "refused before the store is opened"
        );
    }
}

/// The README's first command as written: `gateway` with no flags (here
/// only free ports), then `curl -F file=@x localhost:PORT/upload`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_first_command_still_works() {
    step_tests::prereq::command_works("curl", &["--version"]).expect("this test runs curl");
    let dir = tempfile::tempdir().expect("tmp");
    let (port, step_port) = (free_port(), free_port());
    let _gw = gateway_binary(dir.path(), &["--port", &port, "--step-port", &step_port])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    std::fs::write(dir.path().join("x"), b"otter").expect("file");
    let url = format!("localhost:{port}/upload");
    let started = Instant::now();
    loop {
        let out = tokio::process::Command::new("curl")
            .current_dir(dir.path())
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-F",
                "file=@x",
                &url,
            ])
            .output()
            .await
            .expect("curl");
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        if code == "201" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "curl got {code}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got = reqwest::get(format!("http://127.0.0.1:{port}/files/x"))
        .await
        .expect("get");
    assert_eq!(got.text().await.expect("text"), "otter");
}
