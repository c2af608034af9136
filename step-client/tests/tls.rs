//! `step-client --tls --ca-cert` against a step-server's TLS port: upload
//! and download byte-identical; without the CA (system roots) the
//! certificate is refused; --tls against the plaintext port fails cleanly.

use std::path::Path;

use step_tests::pattern;
use step_tests::tls::{TestPki, TlsTestServer};

mod support;

use support::{Run, assert_ok, md5_line, run_raw, write};

async fn over_tls(port: u16, dir: &Path, extra: &[&str], args: &[&str]) -> Run {
    let port = port.to_string();
    let mut all = vec![
        "--server-ip",
        "127.0.0.1",
        "--port",
        &port,
        "--id",
        "tls-user",
        "--tls",
    ];
    all.extend_from_slice(extra);
    all.extend_from_slice(args);
    run_raw(dir, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_over_tls() {
    let pki = TestPki::new();
    let server = TlsTestServer::start(&pki).await;
    let dir = tempfile::tempdir().expect("dir");
    let data = pattern(5 << 20, 8);
    write(dir.path(), "secret.bin", &data);
    let ca = pki.ca.to_str().expect("path");
    let port = server.tls_addr.port();

    let up = over_tls(
        port,
        dir.path(),
        &["--ca-cert", ca],
        &["upload", "secret.bin"],
    )
    .await;
    assert_ok(&up);
    let down = over_tls(
        port,
        dir.path(),
        &["--ca-cert", ca],
        &["download", "secret.bin", "-o", "back.bin"],
    )
    .await;
    assert_ok(&down);
    assert_eq!(md5_line(&up), md5_line(&down));
    assert_eq!(
        std::fs::read(dir.path().join("back.bin")).expect("read"),
        data
    );

    // The system's roots do not know the test CA.
    let untrusted = over_tls(port, dir.path(), &[], &["plan", "secret.bin"]).await;
    assert!(!untrusted.ok, "{untrusted:?}");
    assert!(untrusted.stderr.contains("certificate"), "{untrusted:?}");

    // TLS spoken to the plaintext port: an error, not a hang.
    let plain = over_tls(
        server.addr.port(),
        dir.path(),
        &["--ca-cert", ca, "--timeout", "20"],
        &["plan", "secret.bin"],
    )
    .await;
    assert!(!plain.ok, "{plain:?}");
    assert!(!plain.stderr.contains("did not answer"), "{plain:?}");

    // Plain STEP spoken to the TLS port: named as such, with the flag to add.
    let tport = port.to_string();
    let plain_args = support::at(&tport, "tls-user", &["plan", "secret.bin"]);
    let r = support::run_raw(dir.path(), &plain_args).await;
    support::assert_one_line_error(&r, "if it is a TLS port, add --tls");
}
