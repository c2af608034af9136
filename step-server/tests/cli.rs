//! The `step-server` binary's command line: a taken port named by its
//! flag, the shortest password, human sizes.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn step_server(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_step-server"))
        .args(args)
        .env_remove("STEP_AUTH")
        .env_remove("STEP_DATA_DIR")
        .env_remove("STEP_PORT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn step-server");
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

#[test]
fn a_taken_port_names_the_flag() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port().to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8");
    let out = step_server(
        &[
            "--ip",
            "127.0.0.1",
            "--port",
            &port,
            "--data-dir",
            data,
            "--max-file-size",
            "1G",
        ],
        "",
    );
    assert!(!out.status.success());
    let said = text(&out);
    assert!(said.contains("--port (STEP_PORT)"), "{said}");
    assert!(said.contains("in use"), "{said}");
    assert_eq!(
        said.matches("cannot listen").count(),
        1,
        "said once: {said}"
    );
}

#[test]
fn user_add_refuses_a_short_password_and_takes_a_long_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8");
    let out = step_server(&["user", "add", "dan", "--data-dir", data], "1234567\n");
    assert!(!out.status.success());
    assert!(text(&out).contains("--min-password-len"), "{}", text(&out));
    let out = step_server(&["user", "add", "dan", "--data-dir", data], "12345678\n");
    assert!(out.status.success(), "{}", text(&out));
    let out = step_server(&["user", "list", "--data-dir", data], "");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "dan\n");
}

#[test]
fn help_has_headings() {
    let out = step_server(&["--help"], "");
    let said = text(&out);
    for heading in ["Listening:", "Storage:", "Tokens:", "Limits:", "Logging:"] {
        assert!(said.contains(heading), "no {heading:?}:\n{said}");
    }
    assert!(said.contains("[default: 8M]"), "{said}");
}
