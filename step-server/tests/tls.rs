//! The step-server binary with `--tls-port`: STEP over TLS beside the
//! plaintext port, and a renewed certificate taken on SIGHUP.

mod support;

use std::process::Command;
use std::time::Duration;

use step_core::StepClient;
use step_core::conn::tls::{TlsClient, client_config, server_name};
use step_core::digest::password_for;
use step_tests::tls::TestPki;
use step_tests::wait::until;
use support::ServerProc;

fn trusting(ca: &std::path::Path) -> TlsClient {
    TlsClient {
        config: client_config(Some(&std::fs::read(ca).expect("CA"))).expect("config"),
        server_name: server_name("localhost").expect("name"),
    }
}

#[tokio::test]
async fn tls_port_serves_step_and_reloads_its_certificate_on_sighup() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("dir");
    let log = dir.path().join("server.log");
    let tls_port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let port = tls_port.to_string();
    let server = ServerProc::start(
        &dir.path().join("data"),
        &log,
        &[
            "--tls-port",
            &port,
            "--tls-cert",
            pki.cert.to_str().expect("path"),
            "--tls-key",
            pki.key.to_str().expect("path"),
        ],
    )
    .await;
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    until("the TLS listener", Duration::from_secs(30), || {
        read_log().contains("Server is ready for STEP over TLS")
    })
    .await;
    let tls_addr = ("127.0.0.1", tls_port);

    let mut c = StepClient::connect_tls(tls_addr, &trusting(&pki.ca))
        .await
        .expect("TLS connect");
    c.login("carol", &password_for("carol"))
        .await
        .expect("login over TLS");
    let mut plain = StepClient::connect(server.addr).await.expect("plain");
    plain
        .login("carol", &password_for("carol"))
        .await
        .expect("plaintext port unchanged");

    let ca2 = pki.renew();
    let hup = Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .expect("kill -HUP");
    assert!(hup.success());
    until("the reload", Duration::from_secs(30), || {
        read_log().contains("TLS certificate reloaded")
    })
    .await;
    let mut renewed = StepClient::connect_tls(tls_addr, &trusting(&ca2))
        .await
        .expect("the renewed certificate is served");
    renewed
        .login("carol", &password_for("carol"))
        .await
        .expect("login");
    assert!(
        StepClient::connect_tls(tls_addr, &trusting(&pki.ca))
            .await
            .is_err(),
        "the old CA no longer fits"
    );
    // The connection opened before the reload keeps working.
    c.login("carol", &password_for("carol"))
        .await
        .expect("old connection");
    server.terminate();
}
