//! Hostile input on the STEP port (issue 7), as one table of cases.
//!
//! Every case runs on a fresh connection: it writes bytes (well-formed or
//! not) and states what must come back — a documented status code, or the
//! connection closed without an answer. After each case the runner checks:
//! no panic anywhere in the process (a panic hook counts them), a bystander
//! connection opened before the first case still gets answers, a new
//! connection can still log in, and nothing exists outside the data
//! directory (its parent is walked; every path inside must resolve inside).
//!
//! `cargo test -p step-tests --test hostile_input -- --nocapture` prints one
//! line per class and `hostile: N cases, N passed`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Buf, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};
use step_core::client::{SaveOptions, StepClient};
use step_core::digest::{EMPTY_MD5, md5_hex, password_for};
use step_core::message::field;
use step_core::token::{TokenKey, mint_reference_style, public_signature};
use step_core::{Kind, Message, Operation, Status, StepCodec};
use step_tests::{TEST_SECRET, TestConfig, TestServer, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Decoder, Encoder};

const MAX_JSON: usize = step_core::codec::DEFAULT_MAX_JSON;
const MAX_BINARY: usize = step_core::codec::DEFAULT_MAX_BINARY;
/// How long an expected answer or close may take.
const WAIT: Duration = Duration::from_secs(10);

static PANICS: AtomicUsize = AtomicUsize::new(0);

type Check = Box<dyn Fn(&Message) -> Result<(), String> + Send + Sync>;

enum Step {
    Write(Vec<u8>),
    /// Half-close our side: the server sees end of stream.
    ShutdownWrite,
    /// The next response has this status.
    Status(u64),
    /// The next response has this status and passes the check.
    Check(u64, Check),
    /// The server closes the connection without answering.
    Closed,
}

struct Case {
    class: &'static str,
    name: String,
    steps: Vec<Step>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A frame with whatever lengths we like (they may lie).
fn raw_frame(json_len: u32, binary_len: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&json_len.to_be_bytes());
    out.extend_from_slice(&binary_len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// An honest frame around `json` and `binary`.
fn frame(json: &[u8], binary: &[u8]) -> Vec<u8> {
    let mut body = json.to_vec();
    body.extend_from_slice(binary);
    raw_frame(json.len() as u32, binary.len() as u32, &body)
}

fn wire(msg: &Message) -> Vec<u8> {
    let mut out = BytesMut::new();
    StepCodec::new(64 << 20, 64 << 20)
        .encode(msg, &mut out)
        .expect("encode");
    out.to_vec()
}

/// Builds requests for one user, with a token minted by the test secret.
#[derive(Clone)]
struct As {
    token: String,
}

impl As {
    fn user(name: &str) -> As {
        As {
            token: TokenKey::new(TEST_SECRET, 86_400).mint(name, now()),
        }
    }

    fn req(&self, op: Operation, kind: Kind) -> Message {
        Message::request(op, kind).with(field::TOKEN, self.token.as_str())
    }

    fn file(&self, op: Operation, key: &str) -> Message {
        self.req(op, Kind::File).with(field::KEY, key)
    }

    fn data(&self, op: Operation, key: &str) -> Message {
        self.req(op, Kind::Data).with(field::KEY, key)
    }

    fn save(&self, key: &str, size: u64) -> Vec<u8> {
        wire(&self.file(Operation::Save, key).with(field::SIZE, size))
    }

    fn upload(&self, key: &str, index: impl Into<Value>, data: &[u8]) -> Vec<u8> {
        wire(
            &self
                .file(Operation::Upload, key)
                .with(field::BLOCK_INDEX, index)
                .with_binary(bytes::Bytes::copy_from_slice(data)),
        )
    }

    fn download(&self, key: &str, index: impl Into<Value>) -> Vec<u8> {
        wire(
            &self
                .file(Operation::Download, key)
                .with(field::BLOCK_INDEX, index),
        )
    }
}

fn w(bytes: Vec<u8>) -> Step {
    Step::Write(bytes)
}

fn st(code: u64) -> Step {
    Step::Status(code)
}

fn check(code: u64, f: impl Fn(&Message) -> Result<(), String> + Send + Sync + 'static) -> Step {
    Step::Check(code, Box::new(f))
}

fn field_is(name: &'static str, want: Value) -> impl Fn(&Message) -> Result<(), String> {
    move |m| match m.get(name) {
        Some(v) if *v == want => Ok(()),
        other => Err(format!("{name} is {other:?}, expected {want}")),
    }
}

fn msg_contains(text: &'static str) -> impl Fn(&Message) -> Result<(), String> {
    move |m| {
        if m.status_msg().contains(text) {
            Ok(())
        } else {
            Err(format!("status_msg {:?} lacks {text:?}", m.status_msg()))
        }
    }
}

fn binary_is(want: Vec<u8>) -> impl Fn(&Message) -> Result<(), String> {
    move |m| {
        if m.binary[..] == want[..] {
            Ok(())
        } else {
            Err(format!(
                "binary of {} bytes differs from the {} expected",
                m.binary.len(),
                want.len()
            ))
        }
    }
}

/// Paths that hostile keys aim at outside the store; none may ever exist.
fn escape_targets() -> Vec<PathBuf> {
    let pid = std::process::id();
    vec![
        PathBuf::from(format!("/tmp/step-hostile-rel-{pid}")),
        PathBuf::from(format!("/tmp/step-hostile-abs-{pid}")),
    ]
}

fn cases(mallory: &As, victim: &As) -> Vec<Case> {
    let mut out = Vec::new();
    let mut add = |class: &'static str, name: &str, steps: Vec<Step>| {
        out.push(Case {
            class,
            name: name.to_owned(),
            steps,
        });
    };
    let m = mallory;
    let tok = m.token.clone();

    // ---------------------------------------------------------------- garbage
    let c = "garbage bytes";
    add(
        c,
        "an HTTP request",
        vec![
            w(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
            Step::Closed,
        ],
    );
    add(
        c,
        "a TLS ClientHello",
        vec![
            w(vec![
                0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0, 0, 0,
            ]),
            Step::Closed,
        ],
    );
    add(c, "64 bytes of 0xff", vec![w(vec![0xff; 64]), Step::Closed]);
    add(
        c,
        "4 KiB of random bytes",
        vec![w(pattern(4096, 1)), Step::Closed],
    );
    add(
        c,
        "an all-zero header (empty JSON part)",
        vec![w(vec![0; 8]), st(400)],
    );
    add(
        c,
        "printable junk inside a valid frame",
        vec![w(frame(b"hello world", b"")), st(400)],
    );
    add(
        c,
        "a valid request, then garbage on the same connection",
        vec![
            w(wire(&m.data(Operation::Get, "nothing-here"))),
            st(404),
            w(vec![0xfe; 16]),
            Step::Closed,
        ],
    );

    // ------------------------------------------------------ truncated frames
    let c = "truncated frames, then close";
    add(
        c,
        "3 header bytes",
        vec![w(vec![0, 0, 0]), Step::ShutdownWrite, Step::Closed],
    );
    add(
        c,
        "header announcing 100 JSON bytes, 10 sent",
        vec![
            w(raw_frame(100, 0, br#"{"operati"#)),
            Step::ShutdownWrite,
            Step::Closed,
        ],
    );
    let upload = m.upload("t", 0, &[7; 1000]);
    add(
        c,
        "UPLOAD whose binary part stops half-way",
        vec![
            w(upload[..upload.len() - 500].to_vec()),
            Step::ShutdownWrite,
            Step::Closed,
        ],
    );
    let mut two = wire(&m.data(Operation::Get, "nothing-here"));
    let second = wire(&m.data(Operation::Get, "nothing-here"));
    two.extend_from_slice(&second[..second.len() / 2]);
    add(
        c,
        "a whole request then half of the next",
        vec![w(two), Step::ShutdownWrite, st(404), Step::Closed],
    );

    // ----------------------------------------------------- huge length headers
    let c = "huge length headers";
    for (name, json_len, bin_len) in [
        ("JSON length 4 GiB - 1", u32::MAX, 0),
        ("binary length 4 GiB - 1", 2, u32::MAX),
        ("both lengths 2 GiB", 1 << 31, 1 << 31),
        ("JSON length one past the cap", MAX_JSON as u32 + 1, 0),
        ("binary length one past the cap", 2, MAX_BINARY as u32 + 1),
    ] {
        add(
            c,
            name,
            vec![w(raw_frame(json_len, bin_len, b"{}")), Step::Closed],
        );
    }
    // At the caps exactly: accepted and answered.
    let filler = "x".repeat(MAX_JSON - 200);
    let at_cap = wire(
        &m.data(Operation::Save, "at-the-json-cap")
            .with("filler", filler.as_str()),
    );
    assert!(at_cap.len() - 8 <= MAX_JSON && at_cap.len() - 8 > MAX_JSON - 300);
    add(c, "JSON part just under the cap", vec![w(at_cap), st(200)]);
    add(
        c,
        "binary part exactly at the cap",
        vec![
            w(wire(
                &m.data(Operation::Get, "nothing-here")
                    .with_binary(bytes::Bytes::from(vec![1u8; MAX_BINARY])),
            )),
            st(404),
        ],
    );

    // ------------------------------------------------- invalid UTF-8 and JSON
    let c = "invalid UTF-8 / JSON";
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_field = format!(r#"{{"a":{}1{}}}"#, "[".repeat(5000), "]".repeat(5000));
    let invalid: Vec<(&str, Vec<u8>)> = vec![
        ("unterminated object", b"{not json".to_vec()),
        ("bytes that are not UTF-8", b"\xff\xfe\xfd".to_vec()),
        (
            "invalid UTF-8 inside a string",
            [
                &br#"{"operation":"GET","type":"DATA","direction":"REQUEST","key":"a"#[..],
                b"\xff",
                b"b\"}",
            ]
            .concat(),
        ),
        ("overlong UTF-8 encoding", b"{\"k\":\"\xc0\xaf\"}".to_vec()),
        ("UTF-16 with BOM", b"\xff\xfe{\x00}\x00".to_vec()),
        ("UTF-8 BOM before the object", b"\xef\xbb\xbf{}".to_vec()),
        ("trailing garbage", b"{} x".to_vec()),
        ("two objects", b"{}{}".to_vec()),
        ("100 000 nested arrays", deep.into_bytes()),
        ("5 000 nested arrays in a field", deep_field.into_bytes()),
        ("NaN literal", br#"{"size":NaN}"#.to_vec()),
        ("lone surrogate escape", br#"{"key":"\ud800"}"#.to_vec()),
        ("empty JSON part", Vec::new()),
        ("number too large for f64", br#"{"size":1e400}"#.to_vec()),
    ];
    for (name, json) in invalid {
        add(c, name, vec![w(frame(&json, b"")), st(400)]);
    }
    // A reference client counts characters: "é" is 1 character, 2 bytes, so
    // the frame is one byte short; the stray byte then starts a "frame".
    let text = format!(
        r#"{{"operation":"SAVE","type":"DATA","direction":"REQUEST","token":"{tok}","key":"é"}}"#
    );
    let mut misframed = raw_frame(text.chars().count() as u32, 0, text.as_bytes());
    misframed.truncate(8 + text.len());
    add(
        c,
        "non-ASCII framed by character count (the reference's trap)",
        vec![w(misframed), Step::ShutdownWrite, st(400), Step::Closed],
    );

    // -------------------------------------------------- JSON that is not an object
    let c = "JSON that is not an object";
    for json in ["[]", "[1,2]", "3", "\"str\"", "null", "true", "-0.5e3"] {
        add(c, json, vec![w(frame(json.as_bytes(), b"")), st(400)]);
    }

    // -------------------------------------------------------- wrong field types
    let c = "wrong field types";
    for (name, size) in [
        ("size as a string", json!("100")),
        ("negative size", json!(-1)),
        ("float size", json!(1.5)),
        ("integral float size", json!(1000.0)),
        ("size above the cap (2 TiB)", json!(1u64 << 41)),
        ("size u64::MAX", json!(u64::MAX)),
        ("size null", Value::Null),
        ("size true", json!(true)),
        ("size an array", json!([100])),
        ("size an object", json!({"n": 100})),
    ] {
        add(
            c,
            name,
            vec![
                w(wire(
                    &m.file(Operation::Save, "typed").with(field::SIZE, size),
                )),
                st(402),
                // Nothing was planned.
                w(m.upload("typed", 0, b"x")),
                st(408),
            ],
        );
    }
    for (name, index) in [
        ("block_index as a string", json!("0")),
        ("block_index a float", json!(0.0)),
        ("block_index null", Value::Null),
        ("block_index true", json!(true)),
        ("block_index an array", json!([0])),
    ] {
        add(
            c,
            &format!("UPLOAD with {name}"),
            vec![
                w(m.save("typed-index", 10)),
                st(200),
                w(m.upload("typed-index", index.clone(), &[0; 10])),
                st(410),
            ],
        );
        add(
            c,
            &format!("DOWNLOAD with {name}"),
            vec![w(m.download("done.bin", index)), st(410)],
        );
    }
    for (name, key) in [
        ("key a number", json!(5)),
        ("key null", Value::Null),
        ("key an array", json!(["a"])),
        ("key an object", json!({"a": 1})),
    ] {
        add(
            c,
            &format!("FILE SAVE with {name}"),
            vec![
                w(wire(
                    &m.req(Operation::Save, Kind::File)
                        .with(field::KEY, key.clone())
                        .with(field::SIZE, 1),
                )),
                st(410),
            ],
        );
        add(
            c,
            &format!("DATA GET with {name}"),
            vec![
                w(wire(
                    &m.req(Operation::Get, Kind::Data).with(field::KEY, key),
                )),
                st(410),
            ],
        );
    }
    for (name, token) in [
        ("token a number", json!(123)),
        ("token null", Value::Null),
        ("token an array", json!([tok.clone()])),
    ] {
        add(
            c,
            name,
            vec![
                w(wire(
                    &Message::request(Operation::Get, Kind::Data)
                        .with(field::TOKEN, token)
                        .with(field::KEY, "k"),
                )),
                st(403),
            ],
        );
    }
    for (name, fields, status) in [
        ("operation a number", json!({"operation": 5}), 408),
        ("type a number", json!({"type": 5}), 409),
        ("direction a number", json!({"direction": 5}), 407),
        ("direction null", json!({"direction": null}), 407),
        ("operation lower-case", json!({"operation": "get"}), 408),
    ] {
        let mut req = m.data(Operation::Get, "k");
        if let Value::Object(f) = fields {
            req.fields.extend(f);
        }
        add(c, name, vec![w(wire(&req)), st(status)]);
    }
    for (name, user, pass) in [
        ("username a number", json!(42), json!("x")),
        ("password a number", json!("u"), json!(42)),
        ("password null", json!("u"), Value::Null),
    ] {
        add(
            c,
            name,
            vec![
                w(wire(
                    &Message::request(Operation::Login, Kind::Auth)
                        .with(field::USERNAME, user)
                        .with(field::PASSWORD, pass),
                )),
                st(410),
            ],
        );
    }
    add(
        c,
        "upload_id a number",
        vec![
            w(m.save("typed-id", 3)),
            st(200),
            w(wire(
                &m.file(Operation::Upload, "typed-id")
                    .with(field::BLOCK_INDEX, 0)
                    .with(field::UPLOAD_ID, 7)
                    .with_binary(bytes::Bytes::from_static(b"abc")),
            )),
            st(410),
        ],
    );
    add(
        c,
        "block_size a string falls back to 20480",
        vec![
            w(wire(
                &m.file(Operation::Save, "typed-bs")
                    .with(field::SIZE, 100)
                    .with(field::BLOCK_SIZE, "big"),
            )),
            check(200, field_is(field::BLOCK_SIZE, json!(20480))),
        ],
    );

    // ------------------------------------------------------------ duplicate keys
    let c = "duplicate JSON keys (last wins, as in Python)";
    let dup = |body: &str| frame(format!("{{{body}}}").as_bytes(), b"");
    add(
        c,
        "key twice in DATA SAVE",
        vec![
            w(dup(&format!(
                r#""operation":"SAVE","type":"DATA","direction":"REQUEST","token":"{tok}","key":"dup-a","key":"dup-b""#
            ))),
            check(200, field_is(field::KEY, json!("dup-b"))),
            w(wire(&m.data(Operation::Get, "dup-a"))),
            st(404),
        ],
    );
    add(
        c,
        "a forged token, then a valid one",
        vec![
            w(dup(&format!(
                r#""operation":"GET","type":"DATA","direction":"REQUEST","token":"AAAA","token":"{tok}","key":"dup-b""#
            ))),
            st(200),
        ],
    );
    add(
        c,
        "a valid token, then a forged one",
        vec![
            w(dup(&format!(
                r#""operation":"GET","type":"DATA","direction":"REQUEST","token":"{tok}","token":"AAAA","key":"dup-b""#
            ))),
            st(403),
        ],
    );
    add(
        c,
        "direction EARTH, then REQUEST",
        vec![
            w(dup(&format!(
                r#""direction":"EARTH","operation":"GET","type":"DATA","direction":"REQUEST","token":"{tok}","key":"none""#
            ))),
            st(404),
        ],
    );
    add(
        c,
        "size 100, then -1",
        vec![
            w(dup(&format!(
                r#""operation":"SAVE","type":"FILE","direction":"REQUEST","token":"{tok}","key":"dup-size","size":100,"size":-1"#
            ))),
            st(402),
        ],
    );

    // ------------------------------------------------ long keys and usernames
    let c = "extremely long keys and usernames";
    for (name, len, status) in [
        ("key of 1024 bytes (the cap)", 1024, 200),
        ("key of 1025 bytes", 1025, 410),
        ("key of 100 KiB", 100 << 10, 410),
        (
            "key of ~1 MiB (just under the JSON cap)",
            MAX_JSON - 300,
            410,
        ),
    ] {
        let key = "k".repeat(len);
        add(
            c,
            &format!("DATA SAVE, {name}"),
            vec![w(wire(&m.data(Operation::Save, &key))), st(status)],
        );
        add(
            c,
            &format!("FILE SAVE, {name}"),
            vec![w(m.save(&key, 10)), st(status)],
        );
    }
    let wide = "é".repeat(500); // 1000 bytes, 3000 characters once escaped
    add(
        c,
        "key of 500 two-byte characters",
        vec![
            w(wire(&m.data(Operation::Save, &wide))),
            check(200, field_is(field::KEY, json!(wide.clone()))),
            w(wire(&m.data(Operation::Get, &wide))),
            st(200),
        ],
    );
    for (name, len, status) in [
        ("username of 256 bytes (the cap)", 256, 200),
        ("username of 257 bytes", 257, 410),
        ("username of 100 KiB", 100 << 10, 410),
    ] {
        let user = "u".repeat(len);
        add(
            c,
            &format!("LOGIN, {name}"),
            vec![
                w(wire(
                    &Message::request(Operation::Login, Kind::Auth)
                        .with(field::USERNAME, user.as_str())
                        .with(field::PASSWORD, password_for(&user)),
                )),
                st(status),
            ],
        );
    }

    // --------------------------------------- keys with .., /, \, NUL, control, unicode
    let c = "keys with .. / \\ NUL control chars unicode";
    let pid = std::process::id();
    let rel = format!("../../../../../../../../tmp/step-hostile-rel-{pid}");
    let abs = format!("/tmp/step-hostile-abs-{pid}");
    let keys: Vec<String> = vec![
        "..".into(),
        ".".into(),
        "../x".into(),
        rel,
        abs,
        "a/b/c".into(),
        "a\\b\\c".into(),
        "C:\\Windows\\system32".into(),
        "nul\0byte".into(),
        "\x01\x02\x1b[31mred".into(),
        "line\nbreak\r\n".into(),
        "tab\there".into(),
        "\x7f".into(),
        "🦦.jpg".into(),
        "über/straße".into(),
        "\u{202e}gpj.exe".into(),
        "~".into(),
        "%2e%2e%2f".into(),
        "con".into(),
        " ".into(),
    ];
    for (n, key) in keys.iter().enumerate() {
        let body = pattern(5 + n, n as u8);
        add(
            c,
            &format!("key {key:?}"),
            vec![
                w(wire(&m.data(Operation::Save, key))),
                check(200, field_is(field::KEY, json!(key))),
                w(wire(&m.data(Operation::Get, key))),
                check(200, field_is(field::KEY, json!(key))),
                w(m.save(key, body.len() as u64)),
                check(200, field_is(field::KEY, json!(key))),
                w(m.upload(key, 0, &body)),
                check(200, field_is(field::MD5, json!(md5_hex(&body)))),
                w(m.download(key, 0)),
                check(200, binary_is(body.clone())),
            ],
        );
    }
    for user in [
        "../../../../tmp/step-hostile-rel",
        "/etc",
        "a\\b",
        "..",
        "\0",
    ] {
        let who = As::user(user);
        add(
            c,
            &format!("username {user:?}"),
            vec![
                w(wire(
                    &Message::request(Operation::Login, Kind::Auth)
                        .with(field::USERNAME, user)
                        .with(field::PASSWORD, password_for(user)),
                )),
                st(200),
                w(wire(&who.data(Operation::Save, "rec"))),
                st(200),
                w(who.save("f", 3)),
                st(200),
                w(who.upload("f", 0, b"abc")),
                check(200, field_is(field::MD5, json!(md5_hex(b"abc")))),
            ],
        );
    }

    // ------------------------------------------------------------------ tokens
    let c = "tokens: another user's, tampered, expired, reference salt";
    add(
        c,
        "no token",
        vec![
            w(wire(
                &Message::request(Operation::Get, Kind::Data).with(field::KEY, "k"),
            )),
            check(403, msg_contains("No token")),
        ],
    );
    add(
        c,
        "empty token",
        vec![
            w(wire(
                &Message::request(Operation::Get, Kind::Data)
                    .with(field::TOKEN, "")
                    .with(field::KEY, "k"),
            )),
            st(403),
        ],
    );
    // Mallory's own valid token against the victim's keys: a separate namespace.
    for (name, req, status) in [
        ("DATA GET", m.data(Operation::Get, "victim-rec"), 404),
        ("DATA DELETE", m.data(Operation::Delete, "victim-rec"), 404),
        ("FILE GET", m.file(Operation::Get, "victim.bin"), 404),
        (
            "DOWNLOAD",
            m.file(Operation::Download, "victim.bin")
                .with(field::BLOCK_INDEX, 0),
            404,
        ),
        ("FILE DELETE", m.file(Operation::Delete, "victim.bin"), 404),
        (
            "UPLOAD into the victim's unfinished upload",
            m.file(Operation::Upload, "victim-partial")
                .with(field::BLOCK_INDEX, 1)
                .with_binary(bytes::Bytes::from(vec![0u8; 20480])),
            408,
        ),
        (
            "a request naming the victim in \"username\"",
            m.data(Operation::Get, "victim-rec")
                .with(field::USERNAME, "victim"),
            404,
        ),
    ] {
        add(
            c,
            &format!("another user's token: {name}"),
            vec![
                w(wire(&req)),
                st(status),
                // And the victim's things are untouched.
                w(wire(&victim.data(Operation::Get, "victim-rec"))),
                st(200),
                w(wire(&victim.file(Operation::Get, "victim.bin"))),
                st(200),
            ],
        );
    }
    let decoded = String::from_utf8(STANDARD.decode(&tok).expect("b64")).expect("utf8");
    let parts: Vec<&str> = decoded.split('.').collect();
    let reencode = |p: &[&str]| {
        let payload = p[..3].join(".");
        STANDARD.encode(format!("{payload}.{}", public_signature(&payload)))
    };
    let mut flipped = tok.clone().into_bytes();
    flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
    let mut keyed = parts[1].to_owned().into_bytes();
    keyed[13] = if keyed[13] == b'0' { b'1' } else { b'0' };
    let keyed = String::from_utf8(keyed).expect("ascii");
    let mut earlier = parts[1].to_owned().into_bytes();
    earlier[4] = if earlier[4] == b'0' { b'1' } else { b'0' };
    let earlier = String::from_utf8(earlier).expect("ascii");
    let key = TokenKey::new(TEST_SECRET, 86_400);
    let bad_tokens: Vec<(&str, String, Option<&'static str>)> = vec![
        (
            "a base64 character flipped",
            String::from_utf8(flipped).expect("ascii"),
            None,
        ),
        (
            "user part changed to the victim, public md5 recomputed",
            reencode(&["victim", parts[1], "login"]),
            None,
        ),
        (
            "user part \"../../x\", public md5 recomputed",
            reencode(&["../../x", parts[1], "login"]),
            None,
        ),
        (
            "one keyed digit changed, public md5 recomputed",
            reencode(&[parts[0], &keyed, "login"]),
            None,
        ),
        (
            "issue minute changed, public md5 recomputed",
            reencode(&[parts[0], &earlier, "login"]),
            None,
        ),
        (
            "md5 part stripped",
            STANDARD.encode(parts[..3].join(".")),
            None,
        ),
        (
            "a fifth part",
            STANDARD.encode(format!("{decoded}.x")),
            None,
        ),
        ("extra padding", format!("{tok}=="), None),
        ("not base64", "!!!!".into(), None),
        (
            "base64 of bytes that are not UTF-8",
            STANDARD.encode([0xff, 0xfe, 0x00]),
            None,
        ),
        ("100 KiB of base64", "QUFB".repeat(25 << 10), None),
        (
            "expired (issued two days ago, TTL one day)",
            key.mint("mallory", now() - 2 * 86_400),
            Some("expired"),
        ),
        (
            "issued an hour in the future",
            key.mint("mallory", now() + 3600),
            None,
        ),
        (
            "another deployment's secret",
            TokenKey::new(b"some other deployment", 86_400).mint("mallory", now()),
            None,
        ),
        (
            "reference salt, reference date stamp",
            mint_reference_style("mallory", "20261125093000"),
            None,
        ),
        (
            "reference salt, for the victim",
            mint_reference_style("victim", "20250101000000"),
            None,
        ),
        (
            "reference salt, our 14-digit shape",
            mint_reference_style("victim", parts[1]),
            None,
        ),
    ];
    for (name, token, text) in bad_tokens {
        let req = Message::request(Operation::Get, Kind::Data)
            .with(field::TOKEN, token)
            .with(field::KEY, "victim-rec");
        let step = match text {
            Some(t) => check(403, msg_contains(t)),
            None => st(403),
        };
        add(c, name, vec![w(wire(&req)), step]);
    }
    add(
        c,
        "surrounding whitespace is tolerated (trimmed)",
        vec![
            w(wire(
                &Message::request(Operation::Get, Kind::Data)
                    .with(field::TOKEN, format!(" {tok}\n"))
                    .with(field::KEY, "dup-b"),
            )),
            st(200),
        ],
    );

    // -------------------------------------------------------------- wrong order
    let c = "operations in the wrong order";
    add(
        c,
        "UPLOAD before SAVE",
        vec![w(m.upload("never-planned", 0, b"abc")), st(408)],
    );
    add(
        c,
        "DOWNLOAD and GET of an unfinished file",
        vec![
            w(m.save("unfinished", 50_000)),
            st(200),
            w(m.upload("unfinished", 0, &[1; 20480])),
            st(200),
            w(m.download("unfinished", 0)),
            st(404),
            w(wire(&m.file(Operation::Get, "unfinished"))),
            st(404),
        ],
    );
    add(
        c,
        "UPLOAD and SAVE after completion",
        vec![
            w(m.save("finished", 3)),
            st(200),
            w(m.upload("finished", 0, b"xyz")),
            check(200, field_is(field::MD5, json!(md5_hex(b"xyz")))),
            w(m.upload("finished", 0, b"abc")),
            st(408),
            w(m.save("finished", 3)),
            st(402),
            w(m.download("finished", 0)),
            check(200, binary_is(b"xyz".to_vec())),
        ],
    );
    add(
        c,
        "UPLOAD after the unfinished upload was deleted",
        vec![
            w(m.save("discarded", 10)),
            st(200),
            w(wire(&m.file(Operation::Delete, "discarded"))),
            st(404),
            w(m.upload("discarded", 0, &[0; 10])),
            st(408),
        ],
    );
    add(
        c,
        "UPLOAD naming an upload that is not the current one",
        vec![
            w(m.save("stale-id", 3)),
            check(200, |m: &Message| match m.get(field::UPLOAD_ID) {
                Some(Value::String(id)) if !id.is_empty() => Ok(()),
                other => Err(format!("upload_id is {other:?}")),
            }),
            w(wire(
                &m.file(Operation::Upload, "stale-id")
                    .with(field::BLOCK_INDEX, 0)
                    .with(field::UPLOAD_ID, "0123456789abcdef")
                    .with_binary(bytes::Bytes::from_static(b"abc")),
            )),
            st(408),
            // The block went nowhere: the upload is still waiting for it.
            w(wire(&m.file(Operation::Get, "stale-id"))),
            st(404),
        ],
    );
    add(
        c,
        "DATA GET after DATA DELETE",
        vec![
            w(wire(&m.data(Operation::Save, "short-lived"))),
            st(200),
            w(wire(&m.data(Operation::Delete, "short-lived"))),
            st(200),
            w(wire(&m.data(Operation::Get, "short-lived"))),
            st(404),
        ],
    );
    let mut bye_then_more = wire(&m.req(Operation::Bye, Kind::Auth));
    bye_then_more.extend(wire(&m.data(Operation::Get, "dup-b")));
    add(
        c,
        "a request pipelined after BYE",
        vec![w(bye_then_more), st(200), Step::Closed],
    );
    add(
        c,
        "FILE GET without key (crashes the reference)",
        vec![w(wire(&m.req(Operation::Get, Kind::File))), st(410)],
    );
    add(
        c,
        "SAVE of size 0 (crashes the reference)",
        vec![
            w(m.save("empty", 0)),
            check(200, field_is(field::MD5, json!(EMPTY_MD5))),
        ],
    );
    add(
        c,
        "SAVE typed AUTH",
        vec![w(wire(&m.req(Operation::Save, Kind::Auth))), st(409)],
    );
    add(
        c,
        "LOGIN typed FILE",
        vec![
            w(wire(
                &Message::request(Operation::Login, Kind::File)
                    .with(field::USERNAME, "u")
                    .with(field::PASSWORD, password_for("u")),
            )),
            st(409),
        ],
    );
    add(
        c,
        "a RESPONSE sent to the server",
        vec![
            w(wire(&Message::response("GET", "DATA", Status::Ok, "hi"))),
            st(407),
        ],
    );
    add(
        c,
        "EARTH",
        vec![w(frame(br#"{"direction":"EARTH"}"#, b"")), st(333)],
    );

    // ----------------------------------------------------------- block sizes
    let c = "blocks of the wrong size";
    let body = pattern(50_000, 9); // blocks of 20480, 20480, 9040
    for (n, (name, index, len)) in [
        ("first block one byte short", 0, 20479),
        ("first block one byte long", 0, 20481),
        ("first block empty", 0, 0),
        ("last block full-size", 2, 20480),
        ("last block one byte short", 2, 9039),
        ("a block of 8 MiB (the binary cap)", 1, MAX_BINARY),
    ]
    .into_iter()
    .enumerate()
    {
        let key = format!("sizes-{n}");
        let mut steps = vec![
            w(m.save(&key, body.len() as u64)),
            st(200),
            w(m.upload(&key, index, &vec![0xee; len])),
            st(406),
        ];
        // The refused block left no trace: the real content completes right.
        for (i, chunk) in body.chunks(20480).enumerate() {
            steps.push(w(m.upload(&key, i as u64, chunk)));
            steps.push(if i == 2 {
                check(200, field_is(field::MD5, json!(md5_hex(&body))))
            } else {
                st(200)
            });
        }
        add(c, name, steps);
    }

    // -------------------------------------------- out-of-range and repeated indexes
    let c = "out-of-range and repeated block indexes";
    for (name, index, status) in [
        ("UPLOAD index = total_block", json!(3), 405),
        ("UPLOAD index 2^40", json!(1u64 << 40), 405),
        ("UPLOAD index i64::MAX", json!(i64::MAX), 405),
        ("UPLOAD index u64::MAX", json!(u64::MAX), 405),
        ("UPLOAD index -1", json!(-1), 410),
        ("UPLOAD index i64::MIN", json!(i64::MIN), 410),
        ("UPLOAD index 1e20", json!(1e20), 410),
    ] {
        add(
            c,
            name,
            vec![
                w(m.save("ranges", 50_000)),
                st(200),
                w(m.upload("ranges", index, &[0; 20480])),
                st(status),
            ],
        );
    }
    for (name, index) in [
        ("DOWNLOAD index = total_block", json!(1)),
        ("DOWNLOAD index -1", json!(-1)),
        ("DOWNLOAD index u64::MAX", json!(u64::MAX)),
        ("DOWNLOAD index i64::MIN", json!(i64::MIN)),
    ] {
        add(c, name, vec![w(m.download("done.bin", index)), st(410)]);
    }
    let mut steps = vec![w(m.save("repeats", body.len() as u64)), st(200)];
    for (i, chunk) in [
        (0u64, &body[..20480]),
        (0, &body[..20480]),
        (2, &body[40960..]),
    ] {
        steps.push(w(m.upload("repeats", i, chunk)));
        steps.push(st(200));
    }
    steps.push(w(m.upload("repeats", 1, &body[20480..40960])));
    steps.push(check(200, field_is(field::MD5, json!(md5_hex(&body)))));
    steps.push(w(m.upload("repeats", 1, &body[20480..40960])));
    steps.push(st(408));
    add(c, "the same block twice, then the rest", steps);
    let mut steps = vec![w(m.save("rewrites", body.len() as u64)), st(200)];
    steps.push(w(m.upload("rewrites", 0, &[0x55; 20480])));
    steps.push(st(200));
    for (i, chunk) in body.chunks(20480).enumerate() {
        steps.push(w(m.upload("rewrites", i as u64, chunk)));
        steps.push(if i == 2 {
            check(200, field_is(field::MD5, json!(md5_hex(&body))))
        } else {
            st(200)
        });
    }
    steps.push(w(m.download("rewrites", 0)));
    steps.push(check(200, binary_is(body[..20480].to_vec())));
    add(c, "block 0 written with other bytes first", steps);

    out
}

/// Read responses until one whole frame is in, EOF, or `WAIT` passes.
async fn next_frame(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Option<Message>, String> {
    let mut codec = StepCodec::new(64 << 20, 64 << 20);
    loop {
        if let Some(f) = codec.decode(buf).map_err(|e| format!("bad frame: {e}"))? {
            return Message::from_frame(f)
                .map(Some)
                .map_err(|e| format!("bad JSON: {e}"));
        }
        let n = match tokio::time::timeout(WAIT, stream.read_buf(buf)).await {
            Err(_) => return Err(format!("nothing within {WAIT:?}")),
            Ok(Err(_)) => 0, // reset counts as closed
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(format!("closed mid-frame ({} bytes)", buf.remaining()))
            };
        }
    }
}

async fn run_case(addr: std::net::SocketAddr, case: &Case) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut buf = BytesMut::new();
    let mut write_failed = None;
    for (n, step) in case.steps.iter().enumerate() {
        match step {
            Step::Write(bytes) => {
                // The server may close before it has read everything we
                // send: that is only a failure if an answer was expected.
                if let Err(e) = stream.write_all(bytes).await {
                    write_failed = Some(format!("write at step {n}: {e}"));
                }
            }
            Step::ShutdownWrite => {
                let _ = stream.shutdown().await;
            }
            Step::Status(code) | Step::Check(code, _) => {
                let got = next_frame(&mut stream, &mut buf)
                    .await
                    .map_err(|e| format!("step {n}: {e}"))?;
                let Some(msg) = got else {
                    return Err(format!(
                        "step {n}: connection closed, expected status {code}{}",
                        write_failed
                            .as_deref()
                            .map_or(String::new(), |w| format!(" ({w})"))
                    ));
                };
                if msg.status_code() != Some(*code) {
                    return Err(format!(
                        "step {n}: status {:?} ({}), expected {code}",
                        msg.status_code(),
                        msg.status_msg()
                    ));
                }
                if let Step::Check(_, f) = step {
                    f(&msg).map_err(|e| format!("step {n}: {e}"))?;
                }
            }
            Step::Closed => match next_frame(&mut stream, &mut buf).await {
                Ok(None) => {}
                Ok(Some(m)) => {
                    return Err(format!(
                        "step {n}: expected close, got status {:?} ({})",
                        m.status_code(),
                        m.status_msg()
                    ));
                }
                Err(e) => return Err(format!("step {n}: expected close: {e}")),
            },
        }
    }
    Ok(())
}

/// Every path under `dir`, recursively, without following links.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let p = entry.expect("entry").path();
        let meta = std::fs::symlink_metadata(&p).expect("lstat");
        if meta.is_dir() {
            walk(&p, out);
        }
        out.push(p);
    }
}

fn containment(parent: &Path, store: &Path) -> Result<(), String> {
    let names: Vec<_> = std::fs::read_dir(parent)
        .map_err(|e| e.to_string())?
        .map(|e| e.map(|e| e.file_name()).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    if names != [std::ffi::OsString::from("store")] {
        return Err(format!("beside the store: {names:?}"));
    }
    let root = store.canonicalize().map_err(|e| e.to_string())?;
    let mut paths = Vec::new();
    walk(store, &mut paths);
    for p in paths {
        let meta = std::fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
        if meta.file_type().is_symlink() {
            return Err(format!("symlink in the store: {}", p.display()));
        }
        let canon = p.canonicalize().map_err(|e| e.to_string())?;
        if !canon.starts_with(&root) {
            return Err(format!("{} resolves outside the store", p.display()));
        }
        if p.file_name().is_some_and(|n| n.len() > 255) {
            return Err(format!("name longer than 255 bytes: {}", p.display()));
        }
    }
    for target in escape_targets() {
        if target.exists() {
            return Err(format!("{} was created", target.display()));
        }
    }
    Ok(())
}

async fn still_serving(server: &TestServer, bystander: &mut StepClient) -> Result<(), String> {
    bystander
        .data_get("bystander-rec")
        .await
        .map_err(|e| format!("bystander connection: {e}"))?;
    let mut fresh = StepClient::connect(server.addr)
        .await
        .map_err(|e| format!("new connection: {e}"))?;
    fresh
        .login("newcomer", &password_for("newcomer"))
        .await
        .map_err(|e| format!("new login: {e}"))?;
    Ok(())
}

/// Random well-framed requests, with a valid token half the time, all on one
/// connection: each gets exactly one answer with a status from the table.
async fn random_requests(addr: std::net::SocketAddr, token: &str, n: usize) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(0x5739);
    let names = [
        "operation",
        "type",
        "direction",
        "token",
        "key",
        "size",
        "block_index",
        "block_size",
        "username",
        "password",
        "resume",
        "status",
        "md5",
        "x",
    ];
    let values = [
        json!("SAVE"),
        json!("UPLOAD"),
        json!("GET"),
        json!("DOWNLOAD"),
        json!("DELETE"),
        json!("LOGIN"),
        json!("FILE"),
        json!("DATA"),
        json!("AUTH"),
        json!("REQUEST"),
        json!("../r"),
        json!(""),
        json!(0),
        json!(1),
        json!(-1),
        json!(20480),
        json!(1.5),
        json!(u64::MAX),
        json!(null),
        json!(true),
        json!([1]),
        json!({"a": "b"}),
    ];
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    for i in 0..n {
        let mut fields = Map::new();
        fields.insert("operation".into(), values[rng.random_range(0..5)].clone());
        fields.insert("type".into(), values[rng.random_range(6..8)].clone());
        fields.insert("direction".into(), json!("REQUEST"));
        if rng.random_bool(0.5) {
            fields.insert("token".into(), json!(token));
        }
        fields.insert("key".into(), json!(format!("r{}", rng.random_range(0..4))));
        for _ in 0..rng.random_range(0..5) {
            let name = names[rng.random_range(0..names.len())];
            fields.insert(
                name.into(),
                values[rng.random_range(0..values.len())].clone(),
            );
        }
        let len = [0, 1, 9040, 20480][rng.random_range(0..4)];
        let msg = Message::new(fields).with_binary(bytes::Bytes::from(vec![i as u8; len]));
        stream
            .write_all(&wire(&msg))
            .await
            .map_err(|e| e.to_string())?;
        let resp = next_frame(&mut stream, &mut buf)
            .await?
            .ok_or_else(|| format!("request {i} closed the connection: {:?}", msg.fields))?;
        let code = resp.status_code().unwrap_or(0);
        if Status::from_code(code).is_none() {
            return Err(format!("request {i}: status {code} not in the table"));
        }
        if resp.get(field::OPERATION) == Some(&json!("BYE")) {
            // A well-formed BYE ends the connection: start a new one.
            stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            buf.clear();
        }
    }
    Ok(())
}

#[tokio::test]
async fn hostile_input_table() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        previous(info);
    }));

    let parent = tempfile::tempdir().expect("tmp");
    let store = parent.path().join("store");
    let server = TestServer::start_with(TestConfig {
        data_dir: Some(store.clone()),
        ..TestConfig::default()
    })
    .await;

    // Fixtures: the victim's things, a complete file of mallory's, a bystander.
    let mut victim = StepClient::connect(server.addr).await.expect("connect");
    victim
        .login("victim", &password_for("victim"))
        .await
        .expect("login");
    victim
        .data_save(Some("victim-rec"), Map::new())
        .await
        .expect("rec");
    let plan = victim
        .file_save(Some("victim.bin"), 5, SaveOptions::default())
        .await
        .expect("plan");
    victim
        .upload_block(&plan.key, 0, bytes::Bytes::from_static(b"hello"))
        .await
        .expect("block");
    victim
        .file_save(Some("victim-partial"), 50_000, SaveOptions::default())
        .await
        .expect("partial plan");
    let mut mallory = StepClient::connect(server.addr).await.expect("connect");
    mallory
        .login("mallory", &password_for("mallory"))
        .await
        .expect("login");
    let plan = mallory
        .file_save(Some("done.bin"), 10, SaveOptions::default())
        .await
        .expect("plan");
    mallory
        .upload_block(&plan.key, 0, bytes::Bytes::from_static(b"0123456789"))
        .await
        .expect("block");
    let mut bystander = StepClient::connect(server.addr).await.expect("connect");
    bystander
        .login("bystander", &password_for("bystander"))
        .await
        .expect("login");
    bystander
        .data_save(Some("bystander-rec"), Map::new())
        .await
        .expect("rec");

    let table = cases(&As::user("mallory"), &As::user("victim"));
    let mut per_class: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for case in &table {
        let panics_before = PANICS.load(Ordering::SeqCst);
        let mut result = run_case(server.addr, case).await;
        if result.is_ok() && PANICS.load(Ordering::SeqCst) != panics_before {
            result = Err("a panic happened in the server".into());
        }
        if result.is_ok() {
            result = still_serving(&server, &mut bystander).await;
        }
        if result.is_ok() {
            result = containment(parent.path(), &store);
        }
        let entry = per_class.entry(case.class).or_default();
        entry.0 += 1;
        match result {
            Ok(()) => entry.1 += 1,
            Err(e) => failures.push(format!("[{}] {}: {e}", case.class, case.name)),
        }
    }

    // Random well-framed requests, counted as cases too.
    let random = 300;
    let panics_before = PANICS.load(Ordering::SeqCst);
    let mut result = random_requests(server.addr, &As::user("mallory").token, random).await;
    if result.is_ok() && PANICS.load(Ordering::SeqCst) != panics_before {
        result = Err("a panic happened in the server".into());
    }
    let result = match result {
        Ok(()) => still_serving(&server, &mut bystander).await,
        Err(e) => Err(e),
    };
    let result = result.and_then(|()| containment(parent.path(), &store));
    let entry = per_class.entry("random well-framed requests").or_default();
    entry.0 += random;
    match result {
        Ok(()) => entry.1 += random,
        Err(e) => failures.push(format!("[random well-framed requests] {e}")),
    }

    let (total, passed) = per_class
        .values()
        .fold((0, 0), |(t, p), (ct, cp)| (t + ct, p + cp));
    for (class, (n, ok)) in &per_class {
        println!("hostile [{class}]: {n} cases, {ok} passed");
    }
    println!("hostile: {total} cases, {passed} passed");
    assert!(
        failures.is_empty(),
        "{} failing:\n{}",
        failures.len(),
        failures.join("\n")
    );
    server.shutdown().await;
}
