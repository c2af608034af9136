//! The access table of the README ("Who can do what"): for each `--auth`
//! mode and each kind of client — a course-style Python client
//! (tests/python/course_style_client.py: password = md5(username), as the
//! course's clients log in), this `step-client` binary, and curl through the
//! gateway — what login, upload, reading one's own file, reading another
//! user's file and deleting another user's file give. One trial per row
//! group; every client is the real one over real sockets, against a
//! step-server and a gateway in this process.
//!
//! Needs python3 and curl: without them the trials are reported as ignored
//! with the reason (failures under `STEP_REQUIRE_ALL_TESTS`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use step_core::access::Anonymous;
use step_core::digest::password_for;
use step_server::accounts::AuthMode;
use step_server::auth::Public;
use step_tests::prereq::{self, block_on_threads, command_works};
use step_tests::{TestConfig, TestServer, pattern};

const COURSE_CLIENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/python/course_style_client.py"
);

fn main() {
    let ready = || command_works("curl", &[]).and_then(|()| command_works("python3", &[]));
    let trial =
        |name: &str, body: fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>>| {
            prereq::needs(name, ready, move |()| block_on_threads(2, body()))
        };
    prereq::main(vec![
        trial("open_course_client", || Box::pin(open_course_client())),
        trial("accounts_course_client", || {
            Box::pin(accounts_course_client())
        }),
        trial("open_step_client", || Box::pin(open_step_client())),
        trial("accounts_step_client", || Box::pin(accounts_step_client())),
        prereq::needs(
            "accounts_step_client_prompts_on_a_terminal",
            || command_works("script", &["-V"]),
            |()| block_on_threads(2, accounts_step_client_prompts_on_a_terminal()),
        ),
        trial("open_curl", || Box::pin(open_curl())),
        trial("accounts_curl", || Box::pin(accounts_curl())),
        trial("anonymous_rights", || Box::pin(anonymous_rights())),
    ]);
}

// ------------------------------------------------------------------ setup

/// A step-server in `mode` (accounts: alice / "alice pw", bob / "bob pw"),
/// a gateway in front of it with `gateway_flags`, and a scratch directory.
struct Setup {
    server: TestServer,
    gateway: String,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new(mode: AuthMode, gateway_flags: &[&str]) -> Setup {
        Self::start(
            mode,
            Public {
                anonymous: Anonymous::Write,
                ..Public::default()
            },
            gateway_flags,
        )
        .await
    }

    /// [`Setup::new`], the server's anonymous mode `anonymous`.
    async fn with_anonymous(mode: AuthMode, anonymous: Anonymous, gateway_flags: &[&str]) -> Setup {
        Self::start(
            mode,
            Public {
                anonymous,
                ..Public::default()
            },
            gateway_flags,
        )
        .await
    }

    /// [`Setup::new`], anonymous callers reading `public_user`'s files.
    async fn with_public(mode: AuthMode, public_user: &str, gateway_flags: &[&str]) -> Setup {
        let public = Public {
            anonymous: Anonymous::Read,
            user: public_user.into(),
        };
        Self::start(mode, public, gateway_flags).await
    }

    async fn start(mode: AuthMode, public: Public, gateway_flags: &[&str]) -> Setup {
        let server = TestServer::start_with(TestConfig {
            auth: mode,
            public,
            ..TestConfig::default()
        })
        .await;
        server.add_account("alice", "alice pw").await;
        server.add_account("bob", "bob pw").await;
        let gateway = support::start_gateway(server.addr, gateway_flags).await;
        Setup {
            server,
            gateway,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A file in the scratch directory holding `body`.
    fn file(&self, name: &str, body: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, body).expect("write");
        p
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    // -------------------------------------------------------- course client

    /// The course-style client's status for `action` as `user`.
    async fn course(&self, user: &str, action: &str, args: &[&Path]) -> u64 {
        let out = tokio::process::Command::new("python3")
            .arg(COURSE_CLIENT)
            .args([
                "127.0.0.1",
                &self.server.addr.port().to_string(),
                user,
                action,
            ])
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .expect("python3");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|_| {
            panic!(
                "course client printed {stdout:?}, stderr {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        line["status"].as_u64().expect("status")
    }

    // -------------------------------------------------------- step-client

    /// `step-client` as `user` (password from STEP_PASSWORD when given).
    async fn step(&self, user: &str, password: Option<&str>, args: &[&str]) -> support::Run {
        let port = self.server.addr.port().to_string();
        let mut cmd = support::client(self.dir.path());
        cmd.args([
            "--server-ip",
            "127.0.0.1",
            "--port",
            &port,
            "--id",
            user,
            "-q",
        ])
        .args(args)
        .stdin(Stdio::null());
        if let Some(p) = password {
            cmd.env("STEP_PASSWORD", p);
        }
        support::Run::of(cmd.output().await.expect("step-client"))
    }

    // -------------------------------------------------------- curl

    /// curl through the gateway: the status and the body.
    async fn curl(&self, args: &[&str], path: &str) -> (u16, Vec<u8>) {
        let body = self.dir.path().join(format!("curl-{}", uuid()));
        let out = tokio::process::Command::new("curl")
            .args(["-sS", "-o"])
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(format!("{}{path}", self.gateway))
            .kill_on_drop(true)
            .output()
            .await
            .expect("curl");
        let code = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        (code, std::fs::read(&body).unwrap_or_default())
    }

    /// A token from `POST /login` (none when refused).
    async fn http_login(&self, user: &str, password: Option<&str>) -> Option<String> {
        let body = match password {
            Some(p) => serde_json::json!({"username": user, "password": p}),
            None => serde_json::json!({"username": user}),
        };
        let (code, out) = self
            .curl(
                &[
                    "-X",
                    "POST",
                    "-H",
                    "Content-Type: application/json",
                    "-d",
                    &body.to_string(),
                ],
                "/login",
            )
            .await;
        (code == 200).then(|| {
            let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
            v["token"].as_str().expect("token").to_owned()
        })
    }
}

/// A fresh number for each curl's body file.
fn uuid() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// A gateway in this process in front of `step`, with `flags`.
fn basic(user: &str, password: &str) -> String {
    format!("{user}:{password}")
}

// ------------------------------------------------------------------ course client

/// Open mode: the course client works as it always has, and still never
/// reaches Bob's files through Alice's login.
async fn open_course_client() {
    let s = Setup::new(AuthMode::Open, &[]).await;
    let (mine, bobs) = (
        s.file("mine", &pattern(50_000, 1)),
        s.file("bobs", &pattern(30_000, 2)),
    );
    assert_eq!(s.course("alice", "login", &[]).await, 200, "login");
    assert_eq!(
        s.course("bob", "upload", &[Path::new("b.txt"), &bobs])
            .await,
        200
    );
    assert_eq!(
        s.course("alice", "upload", &[Path::new("a.txt"), &mine])
            .await,
        200,
        "upload"
    );
    let got = s.path("got");
    assert_eq!(
        s.course("alice", "download", &[Path::new("a.txt"), &got])
            .await,
        200,
        "read own"
    );
    assert_eq!(std::fs::read(&got).expect("got"), pattern(50_000, 1));
    assert_eq!(
        s.course("alice", "download", &[Path::new("b.txt"), &got])
            .await,
        404,
        "read other's"
    );
    assert_eq!(
        s.course("alice", "delete", &[Path::new("b.txt")]).await,
        404,
        "delete other's"
    );
    assert_eq!(
        s.course("bob", "download", &[Path::new("b.txt"), &got])
            .await,
        200
    );
    assert_eq!(
        std::fs::read(&got).expect("got"),
        pattern(30_000, 2),
        "Bob's file intact"
    );
}

/// Accounts mode: the course client's md5(username) login is refused, so it
/// can do nothing — unless an account's password is that md5.
async fn accounts_course_client() {
    let s = Setup::new(AuthMode::Accounts, &[]).await;
    let mine = s.file("mine", &pattern(50_000, 1));
    let got = s.path("got");
    assert_eq!(s.course("alice", "login", &[]).await, 401, "login");
    assert_eq!(
        s.course("alice", "upload", &[Path::new("a.txt"), &mine])
            .await,
        401,
        "upload"
    );
    let bob = s
        .step(
            "bob",
            Some("bob pw"),
            &["upload", mine.to_str().expect("utf-8"), "--key", "b.txt"],
        )
        .await;
    support::assert_ok(&bob);
    assert_eq!(
        s.course("alice", "download", &[Path::new("b.txt"), &got])
            .await,
        401,
        "read other's"
    );
    assert_eq!(
        s.course("alice", "delete", &[Path::new("b.txt")]).await,
        401,
        "delete other's"
    );
    assert_eq!(
        s.course("bob", "delete", &[Path::new("b.txt")]).await,
        401,
        "even Bob's own"
    );
    // An account given the course rule's password works with it.
    s.server
        .add_account("legacy", &password_for("legacy"))
        .await;
    assert_eq!(
        s.course("legacy", "upload", &[Path::new("l.txt"), &mine])
            .await,
        200
    );
    assert_eq!(
        s.course("legacy", "download", &[Path::new("l.txt"), &got])
            .await,
        200
    );
}

// ------------------------------------------------------------------ step-client

async fn step_client_rows(s: &Setup, alice_pw: Option<&str>, bob_pw: Option<&str>) {
    let (mine, bobs) = (
        s.file("mine", &pattern(70_000, 3)),
        s.file("bobs", &pattern(20_000, 4)),
    );
    let up = s
        .step(
            "bob",
            bob_pw,
            &["upload", bobs.to_str().expect("utf-8"), "--key", "b.txt"],
        )
        .await;
    support::assert_ok(&up);
    let up = s
        .step(
            "alice",
            alice_pw,
            &["upload", mine.to_str().expect("utf-8"), "--key", "a.txt"],
        )
        .await;
    support::assert_ok(&up);
    let got = s.path("got");
    let got_s = got.to_str().expect("utf-8");
    let read = s
        .step(
            "alice",
            alice_pw,
            &["download", "a.txt", "-o", got_s, "--force"],
        )
        .await;
    support::assert_ok(&read);
    assert_eq!(std::fs::read(&got).expect("got"), pattern(70_000, 3));
    let other = s
        .step(
            "alice",
            alice_pw,
            &["download", "b.txt", "-o", got_s, "--force"],
        )
        .await;
    support::assert_one_line_error(&other, "is not on the server");
    let del = s.step("alice", alice_pw, &["delete", "b.txt"]).await;
    support::assert_one_line_error(&del, "is not on the server");
    let bob = s
        .step(
            "bob",
            bob_pw,
            &["download", "b.txt", "-o", got_s, "--force"],
        )
        .await;
    support::assert_ok(&bob);
    assert_eq!(
        std::fs::read(&got).expect("got"),
        pattern(20_000, 4),
        "Bob's file intact"
    );
}

async fn open_step_client() {
    let s = Setup::new(AuthMode::Open, &[]).await;
    step_client_rows(&s, None, None).await;
}

async fn accounts_step_client() {
    let s = Setup::new(AuthMode::Accounts, &[]).await;
    step_client_rows(&s, Some("alice pw"), Some("bob pw")).await;
    // Without the password (and no terminal to ask on), or with a wrong
    // one: refused, saying how to give it.
    for pw in [None, Some("wrong")] {
        let r = s.step("alice", pw, &["plan", "a.txt"]).await;
        support::assert_one_line_error(&r, "wrong user or password");
        assert!(r.stderr.contains("STEP_PASSWORD"), "{r:?}");
    }
}

/// With no password given and a terminal (util-linux `script` makes one),
/// the refused md5(id) login turns into a prompt; the typed password logs in.
async fn accounts_step_client_prompts_on_a_terminal() {
    let s = Setup::new(AuthMode::Accounts, &[]).await;
    let run = |typed: &'static str| {
        let cmd = format!(
            "{} --server-ip 127.0.0.1 --port {} --id alice -q plan nothing.txt",
            support::BIN,
            s.server.addr.port()
        );
        async move {
            let mut child = tokio::process::Command::new("script")
                .args(["-qec", &cmd, "/dev/null"])
                .env_remove("STEP_PASSWORD")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .expect("script");
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(typed.as_bytes()).await.expect("type");
            drop(stdin);
            let out =
                tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
                    .await
                    .expect("step-client ends")
                    .expect("wait");
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    // Logged in: the plan of a missing key is then "not on the server".
    let good = run("alice pw\n").await;
    assert!(good.contains("Password for alice:"), "{good}");
    assert!(good.contains("is not on the server"), "{good}");
    let bad = run("nope\n").await;
    assert!(bad.contains("Password for alice:"), "{bad}");
    assert!(bad.contains("wrong user or password"), "{bad}");
}

// ------------------------------------------------------------------ curl

/// Bob stores b.txt, Alice a.txt; Alice reads hers, not Bob's, and cannot
/// delete Bob's. `alice`/`bob` are curl's credential flags.
async fn curl_rows(s: &Setup, alice: &[&str], bob: &[&str]) {
    let (mine, bobs) = (
        s.file("mine", &pattern(40_000, 5)),
        s.file("bobs", &pattern(25_000, 6)),
    );
    let put = |who: &[&str], file: &Path| {
        let mut a: Vec<String> = who.iter().map(|x| (*x).to_owned()).collect();
        a.extend(["-T".to_owned(), file.to_str().expect("utf-8").to_owned()]);
        a
    };
    let args = put(bob, &bobs);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(s.curl(&args, "/files/b.txt").await.0, 201, "Bob uploads");
    let args = put(alice, &mine);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(s.curl(&args, "/files/a.txt").await.0, 201, "upload");
    let (code, body) = s.curl(alice, "/files/a.txt").await;
    assert_eq!((code, body == pattern(40_000, 5)), (200, true), "read own");
    assert_eq!(s.curl(alice, "/files/b.txt").await.0, 404, "read other's");
    let mut del: Vec<&str> = alice.to_vec();
    del.extend(["-X", "DELETE"]);
    assert_eq!(s.curl(&del, "/files/b.txt").await.0, 404, "delete other's");
    let (code, body) = s.curl(bob, "/files/b.txt").await;
    assert_eq!(
        (code, body == pattern(25_000, 6)),
        (200, true),
        "Bob's file intact"
    );
}

async fn open_curl() {
    let s = Setup::new(AuthMode::Open, &[]).await;
    // Login: POST /login with the username alone (md5 rule) gives a token.
    let alice = s.http_login("alice", None).await.expect("login");
    let bob = s.http_login("bob", None).await.expect("login");
    let (a, b) = (
        format!("Authorization: Bearer {alice}"),
        format!("Authorization: Bearer {bob}"),
    );
    curl_rows(&s, &["-H", &a], &["-H", &b]).await;
    // The README's bare curl: the anonymous user, with its own files.
    let f = s.file("anon", b"anonymous bytes");
    assert_eq!(
        s.curl(&["-T", f.to_str().expect("utf-8")], "/files/n.txt")
            .await
            .0,
        201
    );
    assert_eq!(
        s.curl(&[], "/files/a.txt").await.0,
        404,
        "anonymous is nobody else"
    );
}

async fn accounts_curl() {
    let s = Setup::new(AuthMode::Accounts, &["--anonymous", "none"]).await;
    let (a, b) = (basic("alice", "alice pw"), basic("bob", "bob pw"));
    curl_rows(&s, &["-u", &a], &["-u", &b]).await;
    // Login refused: wrong password, unknown user, the md5 rule.
    for creds in [
        basic("alice", "bob pw"),
        basic("mallory", "x"),
        basic("alice", &password_for("alice")),
    ] {
        assert_eq!(
            s.curl(&["-u", &creds], "/files/a.txt").await.0,
            401,
            "{creds}"
        );
    }
    assert_eq!(s.http_login("alice", None).await, None, "md5 rule refused");
    assert_eq!(s.http_login("alice", Some("wrong")).await, None);
    // POST /login with the password gives a Bearer token, as good as Basic.
    let token = s
        .http_login("alice", Some("alice pw"))
        .await
        .expect("login");
    let bearer = format!("Authorization: Bearer {token}");
    assert_eq!(s.curl(&["-H", &bearer], "/files/a.txt").await.0, 200);
    // No credentials: 401, challenging Basic and Bearer, JSON body.
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "-i", &format!("{}/files/a.txt", s.gateway)])
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 401"), "{text}");
    assert!(
        text.contains("www-authenticate: basic realm=\"step\""),
        "{text}"
    );
    assert!(text.contains("www-authenticate: bearer"), "{text}");
    assert!(text.contains("\"error\":\"unauthorized\""), "{text}");
    // Across protocols: what Bob stored over HTTP is his over STEP, and
    // Alice's step-client does not reach it either.
    let got = s.path("got");
    let got_s = got.to_str().expect("utf-8");
    let r = s
        .step(
            "bob",
            Some("bob pw"),
            &["download", "b.txt", "-o", got_s, "--force"],
        )
        .await;
    support::assert_ok(&r);
    assert_eq!(std::fs::read(&got).expect("got"), pattern(25_000, 6));
    let r = s
        .step(
            "alice",
            Some("alice pw"),
            &["download", "b.txt", "-o", got_s, "--force"],
        )
        .await;
    support::assert_one_line_error(&r, "is not on the server");
}

/// `--anonymous read` with a publishing account (`--public-user press`):
/// press uploads with its own password, token-less GET/HEAD read press's
/// files, every token-less write is refused, and nobody obtains the public
/// identity with a password — not the md5 rule, not `POST /login`, not
/// Basic, not step-client — in open or accounts mode.
async fn anonymous_rights() {
    let s = Setup::with_public(AuthMode::Accounts, "press", &["--anonymous", "read"]).await;
    s.server.add_account("press", "press pw").await;
    let f = s.file("pub", b"public bytes");
    let f_s = f.to_str().expect("utf-8");
    let r = s
        .step(
            "press",
            Some("press pw"),
            &["upload", f_s, "--key", "pub.txt"],
        )
        .await;
    support::assert_ok(&r);
    let (code, body) = s.curl(&[], "/files/pub.txt").await;
    assert_eq!(
        (code, body.as_slice()),
        (200, &b"public bytes"[..]),
        "anonymous GET"
    );
    assert_eq!(
        s.curl(&["-I"], "/files/pub.txt").await.0,
        200,
        "anonymous HEAD"
    );
    assert_eq!(
        s.curl(&["-T", f_s], "/files/new.txt").await.0,
        401,
        "anonymous PUT"
    );
    assert_eq!(
        s.curl(&["-X", "DELETE"], "/files/pub.txt").await.0,
        401,
        "anonymous DELETE"
    );
    let form = format!("file=@{f_s}");
    assert_eq!(
        s.curl(&["-F", &form], "/upload").await.0,
        401,
        "anonymous POST /upload"
    );
    assert_eq!(
        s.curl(
            &[
                "-X",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-d",
                "{}"
            ],
            "/records"
        )
        .await
        .0,
        401
    );
    // Alice (Basic) still writes.
    assert_eq!(
        s.curl(
            &["-u", &basic("alice", "alice pw"), "-T", f_s],
            "/files/new.txt"
        )
        .await
        .0,
        201
    );
    public_identity_has_no_password(&s).await;
    let (code, body) = s.curl(&[], "/files/pub.txt").await;
    assert_eq!(
        (code, body.as_slice()),
        (200, &b"public bytes"[..]),
        "intact"
    );

    // Open mode, the default public area: the same refusals.
    let s = Setup::new(AuthMode::Open, &["--anonymous", "read"]).await;
    public_identity_has_no_password(&s).await;

    // The STEP server allows no anonymous access: token-less requests get
    // 401 saying so, whatever the gateway asks for.
    let s = Setup::with_anonymous(AuthMode::Accounts, Anonymous::None, &[]).await;
    let (code, body) = s.curl(&[], "/files/x").await;
    assert_eq!(code, 401);
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("anonymous"), "{text}");
}

/// Every way of presenting a password for the public identity is refused.
async fn public_identity_has_no_password(s: &Setup) {
    let md5 = password_for("anonymous");
    assert_eq!(s.http_login("anonymous", None).await, None, "POST /login");
    assert_eq!(s.http_login("anonymous", Some(&md5)).await, None);
    let f = s.file("deface", b"<script>alert(1)</script>");
    let f_s = f.to_str().expect("utf-8");
    assert_eq!(
        s.curl(
            &["-u", &basic("anonymous", &md5), "-T", f_s],
            "/files/pub.txt"
        )
        .await
        .0,
        401,
        "Basic anonymous:md5"
    );
    assert_eq!(
        s.course("anonymous", "login", &[]).await,
        401,
        "course client"
    );
    let r = s
        .step(
            "anonymous",
            Some(&md5),
            &["upload", f_s, "--key", "pub.txt"],
        )
        .await;
    support::assert_one_line_error(&r, "refused the login");
}
