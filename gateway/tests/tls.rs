//! HTTPS with real clients: curl against the gateway binary serving
//! `--tls-cert/--tls-key` (upload and download, md5 identical; no trust
//! without the CA; a plaintext request is closed, not hung), a certificate
//! renewed and reloaded on SIGHUP, and the gateway in front of a STEP
//! server's TLS port (`--backend-tls --backend-ca-cert`). Without curl the
//! tests are reported as ignored (see `step_tests::prereq`).

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use step_core::digest::md5_hex;
use step_tests::prereq::{self, command_works};
use step_tests::tls::{TestPki, TlsTestServer};
use support::proc::GatewayProc;

fn main() {
    let curl = || command_works("curl", &["--version"]);
    prereq::main(vec![
        prereq::needs("curl_over_https_uploads_and_downloads", curl, |()| {
            curl_over_https_uploads_and_downloads()
        }),
        prereq::needs("sighup_reloads_a_renewed_certificate", curl, |()| {
            sighup_reloads_a_renewed_certificate()
        }),
        prereq::needs("gateway_reaches_a_tls_backend", curl, |()| {
            prereq::block_on_threads(2, gateway_reaches_a_tls_backend())
        }),
        prereq::Trial::test("a_silent_client_gets_no_endless_handshake", || {
            a_silent_client_gets_no_endless_handshake();
            Ok(())
        }),
    ]);
}

/// A client that connects to the HTTPS port and never starts the handshake
/// is closed after --header-timeout-secs, its connection slot freed.
fn a_silent_client_gets_no_endless_handshake() {
    use std::io::Read;
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let gw = https_gateway(&pki, &data, &["--header-timeout-secs", "1"]);
    let addr = gw.url.trim_start_matches("https://").trim_end_matches('/');
    let mut silent = std::net::TcpStream::connect(addr).expect("connect");
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = silent.read(&mut buf);
    assert!(
        matches!(n, Ok(0))
            || n.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "closed by the gateway: {n:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("run curl")
}

/// The gateway binary serving HTTPS with `pki`'s certificate (embedded STEP
/// server over `data`), with `extra` flags.
fn https_gateway(pki: &TestPki, data: &Path, extra: &[&str]) -> GatewayProc {
    let mut args = vec![
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--step-ip",
        "127.0.0.1",
        "--step-port",
        "0",
        "--data-dir",
        data.to_str().expect("path"),
        "--tls-cert",
        pki.cert.to_str().expect("path"),
        "--tls-key",
        pki.key.to_str().expect("path"),
    ];
    args.extend_from_slice(extra);
    GatewayProc::start(&args, &[])
}

/// `curl -T` then `curl -o` through `base`, trusting `ca`; the copy must be
/// byte-identical.
fn round_trip(base: &str, ca: Option<&Path>, dir: &Path, key: &str, data: &[u8]) {
    let file = dir.join(key);
    std::fs::write(&file, data).expect("write");
    let mut trust = vec![];
    if let Some(ca) = ca {
        trust = vec!["--cacert", ca.to_str().expect("path")];
    }
    let url = format!("{}/files/{key}", base.trim_end_matches('/'));
    let put = curl(
        &[
            &trust[..],
            &["-f", "-T", file.to_str().expect("path"), &url],
        ]
        .concat(),
    );
    assert!(put.status.success(), "upload: {put:?}");
    let copy = dir.join(format!("{key}.copy"));
    let get = curl(
        &[
            &trust[..],
            &["-f", "-o", copy.to_str().expect("path"), &url],
        ]
        .concat(),
    );
    assert!(get.status.success(), "download: {get:?}");
    let back = std::fs::read(&copy).expect("read copy");
    assert_eq!(md5_hex(&back), md5_hex(data));
}

fn curl_over_https_uploads_and_downloads() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("dir");
    let gw = https_gateway(&pki, &dir.path().join("data"), &[]);
    assert!(gw.url.starts_with("https://127.0.0.1:"), "{}", gw.url);
    let data = step_tests::pattern(3 << 20, 9);
    round_trip(&gw.url, Some(&pki.ca), dir.path(), "tls.bin", &data);

    // Without the CA, curl refuses the certificate (exit 60).
    let untrusted = curl(&["-f", &gw.at("/healthz")]);
    assert_eq!(untrusted.status.code(), Some(60), "{untrusted:?}");

    // Plain HTTP to the HTTPS port: closed at once, not left hanging.
    let started = Instant::now();
    let plain = curl(&[&gw.at("/healthz").replacen("https://", "http://", 1)]);
    assert!(!plain.status.success(), "{plain:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "{plain:?}");

    // The container health check speaks TLS to it, trusting its own certificate.
    let port = gw
        .url
        .rsplit(':')
        .next()
        .expect("port")
        .trim_end_matches('/');
    let health = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args([
            "--health-check",
            "--bind",
            "127.0.0.1",
            "--port",
            port,
            "--tls-cert",
            pki.cert.to_str().expect("path"),
            "--tls-key",
            pki.key.to_str().expect("path"),
        ])
        .output()
        .expect("health check");
    assert!(health.status.success(), "{health:?}");

    let log = gw.stop();
    assert!(log.iter().any(|l| l.contains("status=201")), "{log:#?}");
}

fn sighup_reloads_a_renewed_certificate() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("dir");
    let mut gw = https_gateway(&pki, &dir.path().join("data"), &[]);
    let health = gw.at("/healthz");
    let ca = pki.ca.to_str().expect("path").to_owned();
    assert!(curl(&["-f", "--cacert", &ca, &health]).status.success());

    let ca2 = pki.renew();
    let ca2 = ca2.to_str().expect("path");
    let hup = Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    gw.wait_for("TLS certificate reloaded");
    let renewed = curl(&["-f", "--cacert", ca2, &health]);
    assert!(
        renewed.status.success(),
        "new certificate served: {renewed:?}"
    );
    let old = curl(&["-f", "--cacert", &ca, &health]);
    assert_eq!(
        old.status.code(),
        Some(60),
        "old CA no longer fits: {old:?}"
    );
}

async fn gateway_reaches_a_tls_backend() {
    let pki = TestPki::new();
    let server = TlsTestServer::start(&pki).await;
    let dir = tempfile::tempdir().expect("dir");
    let backend = server.tls_addr.to_string();
    let args = [
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--backend",
        &backend,
        "--backend-tls",
        "--backend-ca-cert",
        pki.ca.to_str().expect("path"),
    ];
    // The child runs while this runtime keeps serving the STEP server.
    let (gw, dir_path) = (GatewayProc::start(&args, &[]), dir.path().to_owned());
    let base = gw.url.clone();
    let data = step_tests::pattern(2 << 20, 5);
    let expected = data.clone();
    tokio::task::spawn_blocking(move || round_trip(&base, None, &dir_path, "via-tls.bin", &data))
        .await
        .expect("round trip");
    // The file is in the TLS server's store: read back on its plain port.
    let mut c = step_core::StepClient::connect(server.addr)
        .await
        .expect("connect");
    c.login_anonymous(step_core::access::Anonymous::Read)
        .await
        .expect("the public identity");
    assert_eq!(step_tests::download(&mut c, "via-tls.bin").await, expected);

    // A wrong name for the backend's certificate: refused, so not ready.
    let wrong = [
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--backend",
        &backend,
        "--backend-tls",
        "--backend-ca-cert",
        pki.ca.to_str().expect("path"),
        "--backend-tls-name",
        "not-the-server.example",
    ];
    let gw2 = GatewayProc::start(&wrong, &[]);
    let url = gw2.at("/readyz");
    let r = tokio::task::spawn_blocking(move || curl(&["-f", &url]))
        .await
        .expect("curl");
    assert_eq!(r.status.code(), Some(22), "503 expected: {r:?}");
    drop(gw);
}
