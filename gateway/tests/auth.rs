//! HTTP Basic through the gateway, beyond the access table
//! (step-client/tests/access.rs): a cached Basic login outlives a backend
//! restart with a new token secret, and concurrent Basic requests share it.

mod support;

use reqwest::StatusCode;
use step_core::digest::password_for;
use step_tests::{TestConfig, TestServer};
use support::{gateway, step_on};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_basic_login_survives_a_backend_restart_with_a_new_secret() {
    let parent = tempfile::tempdir().expect("tmp");
    let dir = parent.path().join("store");
    let step = TestServer::start_with(TestConfig {
        data_dir: Some(dir.clone()),
        ..TestConfig::default()
    })
    .await;
    let addr = step.addr;
    let gw = gateway(addr).await;
    // Open mode: alice's password is md5("alice").
    let pw = password_for("alice");
    let put = gw
        .client
        .put(gw.at("/files/a.txt"))
        .basic_auth("alice", Some(&pw))
        .body("alice's")
        .send()
        .await
        .expect("put");
    assert_eq!(put.status(), StatusCode::CREATED);
    // A burst with the same credentials: all served (from one cached login).
    let burst = (0..16).map(|_| {
        gw.client
            .get(gw.at("/files/a.txt"))
            .basic_auth("alice", Some(&pw))
            .send()
    });
    for r in futures::future::join_all(burst).await {
        assert_eq!(r.expect("get").status(), StatusCode::OK);
    }
    // Anonymous does not see alice's file.
    assert_eq!(gw.get("/files/a.txt").await.status(), StatusCode::NOT_FOUND);

    step.shutdown().await;
    let _step = step_on(addr, dir, b"a new secret").await;
    let r = gw
        .client
        .get(gw.at("/files/a.txt"))
        .basic_auth("alice", Some(&pw))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK, "the stale token was replaced");
    assert_eq!(r.text().await.expect("text"), "alice's");
    let wrong = gw
        .client
        .get(gw.at("/files/a.txt"))
        .basic_auth("alice", Some("not md5"))
        .send()
        .await
        .expect("get");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
}

/// A 401 challenges with Basic and Bearer; to the page's scripts (marked
/// `X-Requested-With: XMLHttpRequest`) with Bearer only, so a browser does
/// not open its own password dialog over the page's sign-in form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripts_401_carries_no_basic_challenge() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    let challenges = |r: &reqwest::Response| -> Vec<String> {
        r.headers()
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| v.to_str().expect("ascii").to_owned())
            .collect()
    };
    let wrong = |script: bool| {
        let mut req = gw
            .client
            .get(gw.at("/files/a.txt"))
            .basic_auth("alice", Some("not md5"));
        if script {
            req = req.header("X-Requested-With", "XMLHttpRequest");
        }
        req.send()
    };
    let r = wrong(false).await.expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenges(&r),
        ["Basic realm=\"step\", charset=\"UTF-8\"", "Bearer"]
    );
    let r = wrong(true).await.expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenges(&r), ["Bearer"]);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"], "unauthorized", "{body}");
}
