//! The token secret never shows (issue 7): not in the server's log at the
//! most verbose level, not in any response, not in command-line errors or
//! help, not in the configuration's `Debug`. Checked for the secret as
//! given and in hex and base64, the forms a careless log line would use.
//!
//! Constant-time comparison is a code property, not testable by timing here:
//! `step_core::token::TokenKey::verify` compares the keyed digits with
//! `subtle::ConstantTimeEq`; the other comparisons there (the public md5, the
//! password md5) involve only values anyone can compute.

mod support;

use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use clap::Parser;
use step_core::digest::password_for;
use step_core::message::field;
use step_core::token::{TokenKey, mint_reference_style};
use step_core::{Kind, Message, Operation, StepClient, StepCodec};
use step_server::config::ServerArgs;
use support::ServerProc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::Encoder;

const SECRET: &str = "s3cr3t-Th1s-Must-N0t-Leak-7f9c2a";

fn forms() -> Vec<String> {
    vec![
        SECRET.to_owned(),
        hex::encode(SECRET),
        STANDARD.encode(SECRET),
        // Long enough to be telling, short enough to catch a truncated print.
        SECRET[..16].to_owned(),
    ]
}

fn assert_clean(what: &str, text: &[u8]) {
    let text = String::from_utf8_lossy(text);
    for form in forms() {
        assert!(!text.contains(&form), "{what} contains the secret ({form})");
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Everything a session sends back, raw: JSON and binary parts.
async fn session(addr: std::net::SocketAddr) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut c = StepClient::connect(addr).await.expect("connect");
    let keyed = TokenKey::new(SECRET.as_bytes(), 86_400);
    let token = c
        .login("alice", &password_for("alice"))
        .await
        .expect("login");
    let mut requests = vec![
        Message::request(Operation::Login, Kind::Auth)
            .with(field::USERNAME, "alice")
            .with(field::PASSWORD, "wrong"),
        Message::request(Operation::Get, Kind::Data).with(field::KEY, "k"),
        Message::request(Operation::Save, Kind::File)
            .with(field::TOKEN, token.as_str())
            .with(field::KEY, "f")
            .with(field::SIZE, 5),
        Message::request(Operation::Upload, Kind::File)
            .with(field::TOKEN, token.as_str())
            .with(field::KEY, "f")
            .with(field::BLOCK_INDEX, 0)
            .with_binary(Bytes::from_static(b"hello")),
        Message::request(Operation::Get, Kind::File)
            .with(field::TOKEN, token.as_str())
            .with(field::KEY, "f"),
    ];
    for bad in [
        keyed.mint("alice", now() - 3 * 86_400), // expired
        mint_reference_style("alice", "20261125093000"),
        TokenKey::new(b"other", 86_400).mint("alice", now()),
        format!("{token}x"),
        SECRET.to_owned(), // the secret itself as a token: must not be echoed
    ] {
        requests.push(
            Message::request(Operation::Get, Kind::Data)
                .with(field::TOKEN, bad)
                .with(field::KEY, "k"),
        );
    }
    for req in &requests {
        let resp = c.call(req).await.expect("answer");
        seen.extend_from_slice(&step_core::json::to_ascii_vec(&resp.fields).expect("json"));
        seen.extend_from_slice(&resp.binary);
    }
    // Malformed input, for the error paths' log lines.
    let mut raw = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut frame = BytesMut::new();
    StepCodec::default()
        .encode(
            step_core::Frame {
                json: Bytes::from_static(b"{not json"),
                binary: Bytes::new(),
            },
            &mut frame,
        )
        .expect("encode");
    frame.extend_from_slice(&[0xff; 8]);
    raw.write_all(&frame).await.expect("write");
    let _ = raw.read_to_end(&mut seen).await;
    seen
}

#[tokio::test]
async fn the_token_secret_is_in_no_log_and_no_response() {
    let tmp = tempfile::tempdir().expect("tmp");
    let log = tmp.path().join("server.log");
    let server = ServerProc::start(
        &tmp.path().join("store"),
        &log,
        &["--token-secret", SECRET, "--log", "trace"],
    )
    .await;
    let responses = session(server.addr).await;
    server.terminate();
    let text = std::fs::read(&log).expect("log");
    assert!(
        String::from_utf8_lossy(&text).contains("login"),
        "the log was captured at all: {}",
        String::from_utf8_lossy(&text)
    );
    assert_clean("the server log at trace level", &text);
    assert_clean("the responses", &responses);

    // The same with the secret from a file.
    let secret_file = tmp.path().join("secret");
    std::fs::write(&secret_file, format!("{SECRET}\n")).expect("write");
    let log2 = tmp.path().join("server2.log");
    let server = ServerProc::start(
        &tmp.path().join("store"),
        &log2,
        &[
            "--token-secret-file",
            secret_file.to_str().expect("utf8 path"),
            "--log",
            "trace",
        ],
    )
    .await;
    let responses = session(server.addr).await;
    server.terminate();
    assert_clean(
        "the server log (secret from a file)",
        &std::fs::read(&log2).expect("log"),
    );
    assert_clean("the responses (secret from a file)", &responses);
}

#[test]
fn command_line_errors_help_and_debug_do_not_show_it() {
    let bin = env!("CARGO_BIN_EXE_step-server");
    for args in [
        vec!["--token-secret", SECRET, "--no-such-flag"],
        vec!["--token-secret", SECRET, "--token-ttl", "soon"],
        vec!["--token-secret", SECRET, "--port", "99999"],
        vec!["--help"],
    ] {
        let out = Command::new(bin)
            .args(&args)
            .env("STEP_TOKEN_SECRET", SECRET)
            .output()
            .expect("run");
        assert_clean(&format!("stderr of {args:?}"), &out.stderr);
        assert_clean(&format!("stdout of {args:?}"), &out.stdout);
    }
    let parsed =
        ServerArgs::try_parse_from(["step-server", "--token-secret", SECRET]).expect("parse");
    assert_clean(
        "Debug of the parsed flags",
        format!("{parsed:?}").as_bytes(),
    );
    assert_clean(
        "Debug of the parsed flags",
        format!("{parsed:#?}").as_bytes(),
    );
    let key = TokenKey::new(SECRET.as_bytes(), 60);
    assert_clean("Debug of the token key", format!("{key:?}").as_bytes());
}
