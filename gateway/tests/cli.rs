//! The `gateway` binary's command line: account management over the
//! embedded server's store, the shortest password, `--help` headings and
//! human sizes, a clear message when the port is taken, and a quiet start
//! in front of an accounts server.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::json;
use support::proc::GatewayProc;

/// `gateway ARGS`, with `stdin` as its input, run to its end.
fn gateway(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(args)
        .env_remove("STEP_AUTH")
        .env_remove("STEP_DATA_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the gateway binary");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `gateway user ...` over the store under `dir`, in accounts mode.
fn user(dir: &Path, cmd: &[&str], stdin: &str) -> Output {
    let mut args = vec!["user"];
    args.extend_from_slice(cmd);
    let data = dir.to_str().expect("utf-8 path");
    args.extend_from_slice(&["--data-dir", data, "--auth", "accounts"]);
    gateway(&args, stdin)
}

/// A gateway with its embedded server on free loopback ports.
fn embedded(dir: &Path, extra: &[&str]) -> GatewayProc {
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

async fn login(gw: &GatewayProc, name: &str, password: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(gw.at("/login"))
        .json(&json!({"username": name, "password": password}))
        .send()
        .await
        .expect("login")
        .status()
}

#[tokio::test(flavor = "multi_thread")]
async fn user_commands_manage_the_accounts_the_gateway_logs_in_against() {
    let dir = tempfile::tempdir().expect("tempdir");
    let added = user(dir.path(), &["add", "alice"], "first-secret\n");
    assert!(added.status.success(), "{}", text(&added));
    let listed = user(dir.path(), &["list"], "");
    assert!(listed.status.success(), "{}", text(&listed));
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "alice\n");
    let changed = user(dir.path(), &["passwd", "alice"], "second-secret\n");
    assert!(changed.status.success(), "{}", text(&changed));

    let gw = embedded(dir.path(), &["--auth", "accounts", "--anonymous", "none"]);
    assert_eq!(login(&gw, "alice", "second-secret").await, 200);
    assert!(!login(&gw, "alice", "first-secret").await.is_success());

    let removed = user(dir.path(), &["remove", "alice"], "");
    assert!(removed.status.success(), "{}", text(&removed));
    assert!(!login(&gw, "alice", "second-secret").await.is_success());
    let listed = user(dir.path(), &["list"], "");
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "");
}

#[test]
fn a_short_password_is_refused_naming_the_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = user(dir.path(), &["add", "bob"], "seven77\n");
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("too short"), "{said}");
    assert!(said.contains("--min-password-len"), "{said}");
    let listed = user(dir.path(), &["list"], "");
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "", "nothing added");
    // The setting is a flag like any other.
    let data = dir.path().to_str().expect("utf-8");
    let out = gateway(
        &[
            "user",
            "add",
            "bob",
            "--data-dir",
            data,
            "--min-password-len",
            "4",
        ],
        "four\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = user(dir.path(), &["passwd", "bob"], "short\n");
    assert!(!out.status.success(), "passwd checks too: {}", text(&out));
}

#[test]
fn help_is_grouped_and_sizes_read_as_people_write_them() {
    let help = gateway(&["--help"], "");
    let said = text(&help);
    for heading in [
        "HTTP listening:",
        "STEP backend:",
        "HTTP requests:",
        "Storage:",
        "Limits:",
        "Accounts and anonymous access:",
        "Logging:",
    ] {
        assert!(said.contains(heading), "no {heading:?} in --help:\n{said}");
    }
    assert!(
        said.contains("[default: 1T]"),
        "sizes shown as sizes:\n{said}"
    );
    assert!(said.contains("[default: 512K]"), "{said}");
    let dir = tempfile::tempdir().expect("tempdir");
    let gw = embedded(dir.path(), &["--max-file-size", "1G", "--block-size", "1M"]);
    drop(gw);
    let bad = gateway(&["--max-file-size", "1Q"], "");
    assert!(!bad.status.success());
    assert!(text(&bad).contains("--max-file-size"), "{}", text(&bad));
}

#[test]
fn a_taken_port_names_the_flag_once_and_fails() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8");
    let out = gateway(
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            &port,
            "--step-ip",
            "127.0.0.1",
            "--step-port",
            "0",
            "--data-dir",
            data,
        ],
        "",
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("--port"), "{said}");
    assert!(said.contains("in use"), "{said}");
    assert_eq!(
        said.matches("cannot listen").count(),
        1,
        "said once: {said}"
    );
    // The embedded STEP port names its own flag.
    let out = gateway(
        &[
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--step-ip",
            "127.0.0.1",
            "--step-port",
            &port,
            "--data-dir",
            data,
        ],
        "",
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("--step-port"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_in_front_of_an_accounts_server_starts_without_a_refused_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let added = user(dir.path(), &["add", "carol"], "carols-secret\n");
    assert!(added.status.success(), "{}", text(&added));
    let mut server = embedded(
        dir.path(),
        &["--auth", "accounts", "--anonymous", "none", "--log", "info"],
    );
    let step = server
        .log
        .iter()
        .find_map(|l| {
            let at = l.find("backend=")? + "backend=".len();
            let rest = &l[at..];
            Some(rest[..rest.find(char::is_whitespace).unwrap_or(rest.len())].to_owned())
        })
        .expect("the embedded STEP address in the log");
    let front_dir = tempfile::tempdir().expect("tempdir");
    let front = embedded(
        front_dir.path(),
        &["--backend", &step, "--anonymous", "none"],
    );
    let ready = reqwest::get(front.at("/readyz")).await.expect("readyz");
    assert_eq!(ready.status(), 200);
    assert_eq!(login(&front, "carol", "carols-secret").await, 200);
    let log = server.settle(Duration::from_millis(500));
    let refused: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("WARN") && (l.contains("login") || l.contains("probe")))
        .collect();
    assert!(refused.is_empty(), "{refused:#?}");
}
