//! The gateway's log as an operator sees it: the real binary, its output on
//! a pipe. No colour codes off a terminal (and under NO_COLOR on one), one
//! access line per request with its fields, `--log-format json` one object a
//! line, and a dead backend polled through /readyz logged once, not per probe.

mod support;

use std::process::Command;

use serde_json::Value;
use step_tests::prereq::{self, Trial, command_works};
use support::proc::GatewayProc;

fn main() {
    prereq::main(vec![
        Trial::test(
            "text_log_has_no_colour_codes_and_one_access_line_per_request",
            || {
                prereq::block_on(text_log_has_no_colour_codes_and_one_access_line_per_request());
                Ok(())
            },
        ),
        Trial::test(
            "json_log_is_one_object_per_line_with_the_access_fields",
            || {
                prereq::block_on(json_log_is_one_object_per_line_with_the_access_fields());
                Ok(())
            },
        ),
        Trial::test("readyz_against_a_dead_backend_logs_the_outage_once", || {
            prereq::block_on(readyz_against_a_dead_backend_logs_the_outage_once());
            Ok(())
        }),
        prereq::needs(
            "colours_only_on_a_terminal_and_never_under_no_color",
            || command_works("script", &["--version"]),
            |()| colours_only_on_a_terminal_and_never_under_no_color(),
        ),
    ]);
}

/// A gateway with its own STEP server and store, on free loopback ports.
fn embedded(dir: &std::path::Path, extra: &[&str]) -> GatewayProc {
    let data = dir.to_str().expect("utf-8 path");
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
        data,
    ];
    args.extend_from_slice(extra);
    GatewayProc::start(&args, &[])
}

/// A 201 (PUT) and a 404 (GET of a missing key), each with a request id.
async fn two_requests(gw: &GatewayProc) {
    let client = reqwest::Client::new();
    let put = client
        .put(gw.at("/files/logged.bin"))
        .header("x-request-id", "req-put-1")
        .body(vec![7u8; 1000])
        .send()
        .await
        .expect("PUT");
    assert_eq!(put.status(), 201);
    let put_len = put.bytes().await.expect("body").len();
    let get = client
        .get(gw.at("/files/missing.bin"))
        .header("x-request-id", "req-get-2")
        .send()
        .await
        .expect("GET");
    assert_eq!(get.status(), 404);
    let get_len = get.bytes().await.expect("body").len();
    assert!(put_len > 0 && get_len > 0);
    // With a token, the line names its user.
    let login: serde_json::Value = client
        .post(gw.at("/login"))
        .json(&serde_json::json!({"username": "alice.b"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("token");
    let token = login["token"].as_str().expect("token");
    let get = client
        .get(gw.at("/files/logged.bin"))
        .bearer_auth(token)
        .header("x-request-id", "req-token-3")
        .send()
        .await
        .expect("GET");
    assert_eq!(get.status(), 404, "alice.b has no such file");
}

fn no_escape_codes(log: &[String]) {
    for line in log {
        assert!(
            !line.contains("\x1b["),
            "colour code in a piped log: {line:?}"
        );
    }
}

async fn text_log_has_no_colour_codes_and_one_access_line_per_request() {
    let dir = tempfile::tempdir().expect("dir");
    let gw = embedded(dir.path(), &[]);
    assert!(gw.url.starts_with("http://127.0.0.1:"), "{}", gw.url);
    two_requests(&gw).await;
    let log = gw.stop();
    assert!(
        log.iter().any(|l| l.contains("curl -T FILE ")),
        "no curl example at start-up: {log:#?}"
    );
    no_escape_codes(&log);
    let access: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("gateway::access"))
        .collect();
    assert_eq!(access.len(), 4, "one access line per request: {log:#?}");
    let with_token = access
        .iter()
        .find(|l| l.contains("request_id=req-token-3"))
        .expect("token line");
    assert!(with_token.contains("user=\"alice.b\""), "{with_token}");
    let put = access
        .iter()
        .find(|l| l.contains("request_id=req-put-1"))
        .expect("PUT line");
    for field in [
        "method=PUT",
        "path=/files/logged.bin",
        "status=201",
        "bytes=",
        "duration_ms=",
        "user=\"anonymous\"",
    ] {
        assert!(put.contains(field), "{field} missing in {put}");
    }
    let get = access
        .iter()
        .find(|l| l.contains("request_id=req-get-2"))
        .expect("GET line");
    for field in [
        "method=GET",
        "path=/files/missing.bin",
        "status=404",
        "user=\"anonymous\"",
    ] {
        assert!(get.contains(field), "{field} missing in {get}");
    }
}

async fn json_log_is_one_object_per_line_with_the_access_fields() {
    let dir = tempfile::tempdir().expect("dir");
    let gw = embedded(dir.path(), &["--log-format", "json"]);
    two_requests(&gw).await;
    let log = gw.stop();
    let objects: Vec<Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(objects.iter().all(Value::is_object));
    let access: Vec<&Value> = objects
        .iter()
        .filter(|o| o["target"] == "gateway::access")
        .collect();
    assert_eq!(access.len(), 4, "{log:#?}");
    let by_id = |id: &str| {
        *access
            .iter()
            .find(|o| o["request_id"] == id)
            .unwrap_or_else(|| panic!("no access line for {id}: {log:#?}"))
    };
    let put = by_id("req-put-1");
    assert_eq!(put["method"], "PUT");
    assert_eq!(put["path"], "/files/logged.bin");
    assert_eq!(put["status"], 201);
    assert_eq!(put["user"], "anonymous");
    assert!(put["bytes"].as_u64().is_some_and(|b| b > 0), "{put}");
    assert!(put["duration_ms"].as_f64().is_some(), "{put}");
    assert_eq!(put["level"], "INFO");
    let get = by_id("req-get-2");
    assert_eq!(get["status"], 404);
    assert_eq!(get["method"], "GET");
    assert!(get["error"].as_str().is_some(), "a 404 says why: {get}");
}

async fn readyz_against_a_dead_backend_logs_the_outage_once() {
    // A port nothing listens on, kept bound (never listening) for the whole
    // test, so no other server started meanwhile can take it: connections
    // to it are refused.
    let dead = tokio::net::TcpSocket::new_v4().expect("socket");
    dead.bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let dead_addr = dead.local_addr().expect("addr").to_string();
    let gw = GatewayProc::start(
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--backend",
            &dead_addr,
            "--log-format",
            "json",
        ],
        &[],
    );
    let client = reqwest::Client::new();
    for _ in 0..20 {
        let r = client.get(gw.at("/readyz")).send().await.expect("readyz");
        assert_eq!(r.status(), 503);
    }
    let log = gw.stop();
    let objects: Vec<Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let loud: Vec<&Value> = objects
        .iter()
        .filter(|o| o["level"] == "WARN" || o["level"] == "ERROR")
        .collect();
    assert!(loud.len() <= 2, "20 probes of a dead backend: {loud:#?}");
    assert!(
        loud.iter()
            .any(|o| o["message"] == "STEP backend is down" && o["error"].is_string()),
        "the outage and its cause are logged: {log:#?}"
    );
    // Every probe still has its access line, with the 503's cause.
    let probes = objects
        .iter()
        .filter(|o| o["target"] == "gateway::access" && o["status"] == 503)
        .filter(|o| {
            o["error"]
                .as_str()
                .is_some_and(|e| e.contains("unavailable"))
        })
        .count();
    assert_eq!(probes, 20, "{log:#?}");
}

/// Under a pseudo-terminal (`script`), text logs are coloured, unless
/// NO_COLOR is set.
fn colours_only_on_a_terminal_and_never_under_no_color() {
    let dir = tempfile::tempdir().expect("dir");
    let run = |no_color: bool| {
        // The gateway exits by itself once `timeout` interrupts it, so
        // `script` ends with it; its log is what the terminal showed.
        let inner = format!(
            "timeout -s INT 3 {} --bind 127.0.0.1 --port 0 --step-ip 127.0.0.1 --step-port 0 --data-dir {}",
            env!("CARGO_BIN_EXE_gateway"),
            dir.path().display()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &inner, "/dev/null"])
            .env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().expect("run script");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("gateway listening"), "{text}");
        text
    };
    assert!(run(false).contains("\x1b["), "a terminal gets colours");
    assert!(!run(true).contains("\x1b["), "NO_COLOR means none");
}
