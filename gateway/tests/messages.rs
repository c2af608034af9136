//! What a person reads in an error body, over real sockets: the refusal
//! table's words for a STEP refusal (never the reference's protocol
//! phrasing), and the gateway's own refusals saying what happened and what
//! to do. The codes stay the same.

mod support;

use reqwest::StatusCode;
use serde_json::Value;
use step_core::Problem;
use step_tests::TestServer;
use support::{gateway, gateway_with};

async fn error_of(r: reqwest::Response) -> (StatusCode, Value) {
    let status = r.status();
    (status, r.json().await.expect("a JSON error body"))
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

/// The body of a STEP refusal is its table row's: status, code, words.
fn assert_row(status: StatusCode, body: &Value, row: Problem) {
    assert_eq!(status.as_u16(), row.http_status(), "{body}");
    assert_eq!(body["error"], row.code(), "{body}");
    assert_eq!(body["step_status"], row.step_status().code(), "{body}");
    assert_eq!(message(body), row.words(), "{body}");
}

#[tokio::test]
async fn step_refusals_read_as_the_table_says() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    let record = serde_json::json!({"title": "otter"});
    let put = || gw.client.put(gw.at("/records/otter")).json(&record).send();
    assert!(put().await.expect("PUT").status().is_success());
    // Was `The "key" otter is existing.`
    let (status, body) = error_of(put().await.expect("PUT again")).await;
    assert_row(status, &body, Problem::KeyExists);
    // Was `The key nothing-here is not existing.`
    let (status, body) = error_of(gw.get("/records/nothing-here").await).await;
    assert_row(status, &body, Problem::NotFound);
    // Was `Password error for login.`
    let login = gw
        .client
        .post(gw.at("/login"))
        .json(&serde_json::json!({"username": "alice", "password": "not hers"}))
        .send()
        .await
        .expect("POST /login");
    let (status, body) = error_of(login).await;
    assert_row(status, &body, Problem::WrongPassword);
}

#[tokio::test]
async fn an_upload_that_is_not_a_form_says_how_to_send_one() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    for content_type in [None, Some("text/plain"), Some("multipart/form-data")] {
        let mut req = gw.client.post(gw.at("/upload")).body("just bytes");
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let (status, body) = error_of(req.send().await.expect("POST")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{content_type:?}: {body}");
        assert_eq!(body["error"], "bad_request");
        let text = message(&body);
        // Was "Invalid `boundary` for `multipart/form-data` request".
        assert!(!text.contains("boundary"), "{content_type:?}: {text}");
        assert!(text.contains("curl -F file=@"), "{content_type:?}: {text}");
    }
}

#[tokio::test]
async fn a_multipart_upload_over_the_limit_names_the_limit_not_a_size() {
    let step = TestServer::start().await;
    let gw = gateway_with(step.addr, |http, _| http.max_upload = 1000).await;
    let r = gw.multipart("big.bin", vec![7; 300_000]).await;
    let (status, body) = error_of(r).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "too_large");
    let text = message(&body);
    // Was "<bytes read so far> bytes exceeds this gateway's upload limit":
    // a number that is not the file's size. The only number is the limit.
    let numbers: Vec<&str> = text
        .split(|c: char| !c.is_ascii_digit())
        .filter(|n| !n.is_empty())
        .collect();
    assert_eq!(numbers, ["1000"], "{text}");
    assert!(text.contains("smaller"), "{text}");
}
