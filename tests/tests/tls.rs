//! step-server's TLS port with clients that are not ours: Python's `ssl`
//! module doing a STEP LOGIN (and a token-less GET) over TLS, trusting only
//! the test CA; and a plaintext STEP client on the TLS port, which must be
//! closed at once rather than left waiting. Without python3 the Python test
//! is reported as ignored (see `step_tests::prereq`).

use std::time::{Duration, Instant};

use step_core::StepClient;
use step_core::digest::password_for;
use step_tests::prereq::{self, Trial, command_works};
use step_tests::tls::{TestPki, TlsTestServer};

fn main() {
    prereq::main(vec![
        prereq::needs(
            "python_ssl_logs_in_over_tls",
            || command_works("python3", &["--version"]),
            |()| prereq::block_on_threads(2, python_ssl_logs_in_over_tls()),
        ),
        Trial::test(
            "a_plaintext_client_on_the_tls_port_is_closed_at_once",
            || {
                prereq::block_on_threads(2, a_plaintext_client_on_the_tls_port_is_closed_at_once());
                Ok(())
            },
        ),
    ]);
}

/// STEP framing by hand, as the course's clients do it, over `ssl`.
const PYTHON: &str = r#"
import json, socket, ssl, struct, sys
host, port, ca, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
ctx = ssl.create_default_context(cafile=ca)
def call(s, msg):
    body = json.dumps(msg).encode()
    s.sendall(struct.pack(">II", len(body), 0) + body)
    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise SystemExit("closed")
            buf += chunk
        return buf
    n, m = struct.unpack(">II", read(8))
    answer = json.loads(read(n))
    read(m)
    return answer
with socket.create_connection((host, port), timeout=10) as raw:
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        login = call(s, {"operation": "LOGIN", "type": "AUTH", "direction": "REQUEST",
                         "username": user, "password": password})
        get = call(s, {"operation": "GET", "type": "DATA", "direction": "REQUEST", "key": "x"})
        print(json.dumps({"version": s.version(), "login": login, "get": get}))
"#;

async fn python_ssl_logs_in_over_tls() {
    let pki = TestPki::new();
    let server = TlsTestServer::start(&pki).await;
    let port = server.tls_addr.port().to_string();
    let ca = pki.ca.to_str().expect("path").to_owned();
    let out = tokio::process::Command::new("python3")
        .args([
            "-c",
            PYTHON,
            "127.0.0.1",
            &port,
            &ca,
            "alice",
            &password_for("alice"),
        ])
        .output()
        .await
        .expect("python3");
    assert!(out.status.success(), "{out:?}");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(answer["login"]["status"], 200, "{answer}");
    assert!(answer["login"]["token"].is_string(), "{answer}");
    assert_eq!(answer["get"]["status"], 403, "token-less GET: {answer}");
    assert!(
        answer["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("TLSv1.")),
        "{answer}"
    );
}

async fn a_plaintext_client_on_the_tls_port_is_closed_at_once() {
    let pki = TestPki::new();
    let server = TlsTestServer::start(&pki).await;
    let started = Instant::now();
    let mut client = StepClient::connect(server.tls_addr).await.expect("connect");
    client.set_timeout(Some(Duration::from_secs(30)));
    let answer = client.login("bob", &password_for("bob")).await;
    assert!(
        answer.is_err(),
        "plaintext STEP on the TLS port: {answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed, not left waiting: {:?}",
        started.elapsed()
    );
    // The plaintext port is unaffected.
    let mut plain = step_tests::login(server.addr, "bob").await;
    assert!(plain.token().is_some());
    let _ = plain.login("bob", &password_for("bob")).await;
}
