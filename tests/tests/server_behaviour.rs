//! The reference server's defects, each pinned by a test against a real
//! socket, plus the extensions and limits our server adds.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Map, Value, json};
use step_core::client::{ClientError, SaveOptions, StepClient};
use step_core::digest::{EMPTY_MD5, md5_hex, password_for};
use step_core::message::field;
use step_core::token::mint_reference_style;
use step_core::{Kind, Message, Operation, Status};
use step_server::ConnectionLimits;
use step_tests::{TestConfig, TestServer, blocks, download, login, pattern};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upload `body` under `key` with the given window; returns the reported md5.
async fn upload(c: &mut StepClient, key: &str, body: &[u8], window: usize) -> Option<String> {
    let plan = c
        .file_save(Some(key), body.len() as u64, SaveOptions::default())
        .await
        .expect("plan");
    let bs = plan.block_size as usize;
    let stream = futures::stream::iter(blocks(body, bs).into_iter().map(Ok));
    c.upload_blocks(&plan.key, stream, window, |_| {})
        .await
        .expect("upload")
}

fn refusal(e: ClientError) -> (Status, String) {
    let status = e
        .status()
        .unwrap_or_else(|| panic!("expected a STEP refusal, got {e}"));
    (status, e.to_string())
}

/// Every path under `dir`, recursively.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read_dir") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[tokio::test]
async fn hostile_keys_and_usernames_stay_inside_the_data_dir() {
    let parent = tempfile::tempdir().expect("tmp");
    let data_dir = parent.path().join("store");
    let server = TestServer::start_with(TestConfig {
        data_dir: Some(data_dir.clone()),
        ..TestConfig::default()
    })
    .await;
    let long = "k".repeat(1000);
    let keys = [
        "../escape",
        "../../../../../../tmp/pwned",
        "/abs/path/otter.jpg",
        "pics/otter.jpg",
        "a\\b\\c",
        "nul\0byte",
        "ctl\x01\x1f\x7f",
        "..",
        ".",
        "über/🦦.jpg",
        "~",
        "%2E%2E",
        long.as_str(),
    ];
    for user in ["../../root", "/etc", "a\\b", "ü.ser", "plain"] {
        let mut c = login(server.addr, user).await;
        for (n, key) in keys.iter().enumerate() {
            let body = pattern(1000 + n * 7, n as u8);
            let md5 = upload(&mut c, key, &body, 4).await;
            assert_eq!(
                md5.as_deref(),
                Some(md5_hex(&body).as_str()),
                "{user} {key:?}"
            );
            c.data_save(Some(key), Map::from_iter([("n".to_string(), json!(n))]))
                .await
                .expect("data save");
        }
        // Read back: keys never collide with one another.
        for (n, key) in keys.iter().enumerate() {
            assert_eq!(
                download(&mut c, key).await,
                pattern(1000 + n * 7, n as u8),
                "{user} {key:?}"
            );
            assert_eq!(c.data_get(key).await.expect("data get")["n"], json!(n));
        }
    }
    // Nothing was created beside the store, and nothing inside it escapes.
    let siblings: Vec<_> = std::fs::read_dir(parent.path())
        .expect("ls")
        .map(|e| e.expect("e").file_name())
        .collect();
    assert_eq!(siblings, vec![std::ffi::OsString::from("store")]);
    assert!(!std::path::Path::new("/tmp/pwned").exists());
    for p in walk(&data_dir) {
        let canon = p.canonicalize().expect("canonical");
        assert!(
            canon.starts_with(data_dir.canonicalize().expect("root")),
            "{}",
            p.display()
        );
        assert!(p.file_name().expect("name").len() <= 255);
    }
}

#[tokio::test]
async fn keys_that_cannot_be_stored_get_a_clear_410() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "keys").await;
    let too_long = "x".repeat(1025);
    for key in ["", too_long.as_str()] {
        let (status, msg) = refusal(
            c.file_save(Some(key), 10, SaveOptions::default())
                .await
                .expect_err("refused"),
        );
        assert_eq!(status, Status::FieldMissing, "{msg}");
        assert!(msg.contains("key"), "{msg}");
        let (status, _) = refusal(
            c.data_save(Some(key), Map::new())
                .await
                .expect_err("refused"),
        );
        assert_eq!(status, Status::FieldMissing);
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_even_split_byte_by_byte() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "pipe").await;
    let token = c.token().expect("token").to_owned();
    // 200 mixed requests, up to 32 in flight.
    let body = pattern(20480 * 10 + 5, 3);
    let plan = c
        .file_save(
            Some("pipelined.bin"),
            body.len() as u64,
            SaveOptions::default(),
        )
        .await
        .expect("plan");
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for (i, chunk) in body.chunks(20480).enumerate() {
        requests.push(
            c.upload_request(&plan.key, i as u64, Bytes::copy_from_slice(chunk))
                .expect("req"),
        );
        expected.push(("UPLOAD", 200, Some(i as i64)));
        let get = Message::request(Operation::Get, Kind::Data)
            .with(field::TOKEN, token.as_str())
            .with(field::KEY, format!("none{i}"));
        requests.push(get);
        expected.push(("GET", 404, None));
    }
    let mut seen = Vec::new();
    c.pipeline(
        futures::stream::iter(requests.into_iter().map(Ok)),
        32,
        |resp| {
            seen.push(resp);
            Ok(())
        },
    )
    .await
    .expect("pipeline");
    assert_eq!(seen.len(), expected.len());
    for (resp, (op, status, index)) in seen.iter().zip(&expected) {
        assert_eq!(resp.get("operation"), Some(&json!(op)));
        assert_eq!(resp.status_code(), Some(*status as u64));
        if let Some(i) = index {
            assert_eq!(resp.get("block_index"), Some(&json!(i)));
        }
    }
    assert_eq!(
        seen[seen.len() - 2].get("md5"),
        Some(&json!(md5_hex(&body)))
    );

    // The same kind of stream written one byte at a time on a raw socket.
    let mut wire = Vec::new();
    let mut codec = step_core::StepCodec::default();
    for i in 0..5 {
        let m = Message::request(Operation::Save, Kind::Data)
            .with(field::TOKEN, token.as_str())
            .with(field::KEY, format!("split{i}"))
            .with_binary(Bytes::from(vec![i as u8; 300]));
        let mut buf = bytes::BytesMut::new();
        tokio_util::codec::Encoder::encode(&mut codec, &m, &mut buf).expect("encode");
        wire.extend_from_slice(&buf);
    }
    let raw = TcpStream::connect(server.addr).await.expect("connect");
    raw.set_nodelay(true).expect("nodelay");
    let mut framed = tokio_util::codec::Framed::new(raw, step_core::StepCodec::default());
    for b in &wire {
        framed
            .get_mut()
            .write_all(std::slice::from_ref(b))
            .await
            .expect("write");
    }
    for i in 0..5 {
        let frame = framed.next().await.expect("answer").expect("frame");
        let m = Message::from_frame(frame).expect("json");
        assert_eq!(m.status_code(), Some(200));
        assert_eq!(m.get("key"), Some(&json!(format!("split{i}"))));
    }
}

#[tokio::test]
async fn zero_byte_files_complete_at_once() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "zero").await;
    let req = c
        .request(Operation::Save, Kind::File)
        .expect("req")
        .with(field::KEY, "empty.txt")
        .with(field::SIZE, 0);
    let resp = c.call(&req).await.expect("call");
    assert_eq!(resp.status_code(), Some(200));
    assert_eq!(resp.get("total_block"), Some(&json!(0)));
    assert_eq!(resp.get("md5"), Some(&json!(EMPTY_MD5)));
    let plan = c.file_get("empty.txt", None).await.expect("get");
    assert_eq!(
        (plan.size, plan.total_block, plan.md5.as_str()),
        (0, 0, EMPTY_MD5)
    );
    let (status, _) = refusal(
        c.file_save(Some("empty.txt"), 0, SaveOptions::default())
            .await
            .expect_err("exists"),
    );
    assert_eq!(status, Status::KeyExists);
    c.file_delete("empty.txt").await.expect("delete");
}

#[tokio::test]
async fn file_delete_answers_with_operation_delete() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "del").await;
    upload(&mut c, "gone.bin", &pattern(100, 1), 1).await;
    let req = c
        .request(Operation::Delete, Kind::File)
        .expect("req")
        .with(field::KEY, "gone.bin");
    let resp = c.call(&req).await.expect("call");
    assert_eq!(resp.status_code(), Some(200));
    assert_eq!(resp.get("operation"), Some(&json!("DELETE")));
    let again = c.call(&req).await.expect("call");
    assert_eq!(
        (again.status_code(), again.get("operation")),
        (Some(404), Some(&json!("DELETE")))
    );
    let dl = c
        .request(Operation::Download, Kind::File)
        .expect("req")
        .with(field::KEY, "gone.bin")
        .with(field::BLOCK_INDEX, 0);
    assert_eq!(
        c.call(&dl).await.expect("call").get("operation"),
        Some(&json!("DOWNLOAD"))
    );
}

#[tokio::test]
async fn uploads_survive_a_restart_and_resume() {
    let server = TestServer::start().await;
    let body = pattern(20480 * 40 + 123, 9);
    let token;
    let id;
    {
        let mut c = login(server.addr, "resumer").await;
        token = c.token().expect("token").to_owned();
        let plan = c
            .file_save(Some("big.bin"), body.len() as u64, SaveOptions::default())
            .await
            .expect("plan");
        id = plan.upload_id.clone().expect("upload_id");
        let first: Vec<_> = blocks(&body, 20480)
            .into_iter()
            .filter(|(i, _)| i % 3 != 0)
            .collect();
        let md5 = c
            .upload_blocks(
                &plan.key,
                futures::stream::iter(first.into_iter().map(Ok)),
                8,
                |_| {},
            )
            .await
            .expect("up");
        assert_eq!(md5, None);
    }
    let (dir, keep) = server.stop_keep_data().await;
    let server = TestServer::start_with(TestConfig {
        data_dir: Some(dir),
        ..TestConfig::default()
    })
    .await;
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    c.set_token(token); // same secret: tokens outlive the restart
    assert!(matches!(
        c.file_get("big.bin", None).await.map_err(refusal),
        Err((Status::NotFound, _))
    ));
    let plan = c
        .file_save_own("big.bin", body.len() as u64, None, &id, false)
        .await
        .expect("resume plan");
    assert!(plan.resumed);
    let missing: Vec<u64> = step_core::plan::from_ranges(&plan.missing).collect();
    assert_eq!(
        missing,
        (0..41).filter(|i| i % 3 == 0).collect::<Vec<u64>>()
    );
    let rest: Vec<_> = blocks(&body, 20480)
        .into_iter()
        .filter(|(i, _)| missing.contains(i))
        .collect();
    let md5 = c
        .upload_blocks(
            &plan.key,
            futures::stream::iter(rest.into_iter().map(Ok)),
            8,
            |_| {},
        )
        .await
        .expect("up");
    assert_eq!(md5.as_deref(), Some(md5_hex(&body).as_str()));
    assert_eq!(download(&mut c, "big.bin").await, body);
    drop(keep);
}

#[tokio::test]
async fn a_plain_save_of_an_unfinished_upload_starts_over() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "restart").await;
    let old = pattern(50_000, 1);
    let new = pattern(50_000, 2);
    let plan = c
        .file_save(Some("f"), 50_000, SaveOptions::default())
        .await
        .expect("plan");
    c.upload_block(&plan.key, 0, Bytes::copy_from_slice(&old[..20480]))
        .await
        .expect("block");
    c.upload_block(&plan.key, 1, Bytes::copy_from_slice(&old[20480..40960]))
        .await
        .expect("block");
    // A reference client re-SAVEs and re-sends all blocks of different content.
    let plan = c
        .file_save(Some("f"), 50_000, SaveOptions::default())
        .await
        .expect("plan again");
    assert_eq!(plan.missing, vec![[0, 3]]);
    assert_eq!(
        c.upload_block(&plan.key, 2, Bytes::copy_from_slice(&new[40960..]))
            .await
            .expect("b2"),
        None
    );
    assert_eq!(
        c.upload_block(&plan.key, 0, Bytes::copy_from_slice(&new[..20480]))
            .await
            .expect("b0"),
        None
    );
    let md5 = c
        .upload_block(&plan.key, 1, Bytes::copy_from_slice(&new[20480..40960]))
        .await
        .expect("b1");
    assert_eq!(md5.as_deref(), Some(md5_hex(&new).as_str()));
    assert_eq!(download(&mut c, "f").await, new);
}

#[tokio::test]
async fn md5_is_right_for_any_order_repeats_and_several_connections() {
    let server = TestServer::start().await;
    let body = pattern(20480 * 25 + 77, 5);
    let mut a = login(server.addr, "multi").await;
    let plan = a
        .file_save(
            Some("spread.bin"),
            body.len() as u64,
            SaveOptions::default(),
        )
        .await
        .expect("plan");
    let all = blocks(&body, 20480);
    // Rewrite a block inside the hashed prefix with the same bytes: still right.
    a.upload_block(&plan.key, 0, all[0].1.clone())
        .await
        .expect("b0");
    a.upload_block(&plan.key, 1, all[1].1.clone())
        .await
        .expect("b1");
    a.upload_block(&plan.key, 0, all[0].1.clone())
        .await
        .expect("b0 again");
    let mut tasks = Vec::new();
    for conn in 0..4usize {
        let mine: Vec<_> = all
            .iter()
            .skip(2)
            .filter(|(i, _)| (*i as usize) % 4 == conn)
            .rev()
            .cloned()
            .collect();
        let token = a.token().expect("token").to_owned();
        let addr = server.addr;
        let key = plan.key.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = StepClient::connect(addr).await.expect("connect");
            c.set_token(token);
            c.upload_blocks(
                &key,
                futures::stream::iter(mine.into_iter().map(Ok)),
                4,
                |_| {},
            )
            .await
            .expect("upload")
        }));
    }
    let mut reported = Vec::new();
    for t in tasks {
        if let Some(m) = t.await.expect("join") {
            reported.push(m);
        }
    }
    assert_eq!(
        reported,
        vec![md5_hex(&body)],
        "exactly one block completes the file"
    );
    assert_eq!(download(&mut a, "spread.bin").await, body);
}

#[tokio::test]
async fn tokens_are_keyed_and_expire() {
    let server = TestServer::start().await;
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    // Minted the reference's way with its public salt: a forgery here.
    c.set_token(mint_reference_style("victim", "20261125093000"));
    let (status, msg) = refusal(c.data_get("x").await.expect_err("forged"));
    assert_eq!(status, Status::BadToken, "{msg}");
    // A token of another deployment.
    let other = step_core::token::TokenKey::new(b"another secret", 3600);
    c.set_token(
        other.mint(
            "victim",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_secs(),
        ),
    );
    assert_eq!(
        refusal(c.data_get("x").await.expect_err("foreign")).0,
        Status::BadToken
    );

    // A token of this deployment past its longest lifetime (ttl + one
    // ten-minute issue unit) is refused, and says why. (TTL 0 is refused at
    // start-up now: a token must live at least its TTL.)
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let mut e = StepClient::connect(server.addr).await.expect("connect");
    e.set_token(
        step_core::token::TokenKey::new(step_tests::TEST_SECRET, 86_400)
            .mint("late", now - 86_400 - 600 - 1),
    );
    let (status, msg) = refusal(e.data_get("x").await.expect_err("expired"));
    assert_eq!(status, Status::BadToken);
    assert!(msg.contains("expired"), "{msg}");

    // A good token works, and only for its own user's keys.
    let mut alice = login(server.addr, "alice").await;
    upload(&mut alice, "secret.txt", b"alice's", 1).await;
    let mut bob = login(server.addr, "bob").await;
    assert_eq!(
        refusal(
            bob.file_get("secret.txt", None)
                .await
                .expect_err("isolated")
        )
        .0,
        Status::NotFound
    );
}

#[tokio::test]
async fn login_refuses_bad_usernames_and_announces_capabilities() {
    let server = TestServer::start().await;
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    let long = "u".repeat(300);
    for (user, pass, status) in [
        ("", password_for(""), Status::FieldMissing),
        (long.as_str(), password_for(&long), Status::FieldMissing),
        ("ok", "wrong".into(), Status::WrongPassword),
    ] {
        let (got, _) = refusal(c.login(user, &pass).await.expect_err("refused"));
        assert_eq!(got, status, "{user:?}");
    }
    let req = Message::request(Operation::Login, Kind::Auth)
        .with(field::USERNAME, 42)
        .with(field::PASSWORD, "x");
    assert_eq!(c.call(&req).await.expect("call").status_code(), Some(410));
    c.login("ok", &password_for("ok")).await.expect("login");
    let caps = c.capabilities();
    assert!(
        caps.pipelining && caps.resume && caps.max_block_size >= 1 << 20,
        "{caps:?}"
    );
}

#[tokio::test]
async fn wrong_field_types_get_status_codes_not_crashes() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "types").await;
    c.file_save(Some("t.bin"), 100, SaveOptions::default())
        .await
        .expect("plan");
    let save = |size: Value| {
        c.request(Operation::Save, Kind::File)
            .expect("req")
            .with(field::KEY, "typed")
            .with(field::SIZE, size)
    };
    let cases: Vec<(Message, u64)> = vec![
        (save(json!("100")), 402),
        (save(json!(-1)), 402),
        (save(json!(1.5)), 402),
        (save(json!(u64::MAX)), 402),
        (save(json!(1u64 << 41)), 402),
        (
            c.request(Operation::Save, Kind::File)
                .expect("req")
                .with(field::KEY, 5)
                .with(field::SIZE, 1),
            410,
        ),
        (
            c.request(Operation::Upload, Kind::File)
                .expect("req")
                .with(field::KEY, "t.bin")
                .with(field::BLOCK_INDEX, "0"),
            410,
        ),
        (
            c.request(Operation::Upload, Kind::File)
                .expect("req")
                .with(field::KEY, "t.bin")
                .with(field::BLOCK_INDEX, 0.0),
            410,
        ),
        (c.request(Operation::Get, Kind::File).expect("req"), 410),
        (
            c.request(Operation::Download, Kind::File)
                .expect("req")
                .with(field::KEY, "t.bin")
                .with(field::BLOCK_INDEX, 0),
            404,
        ),
        (
            c.request(Operation::Upload, Kind::Data)
                .expect("req")
                .with(field::KEY, "x"),
            408,
        ),
        (c.request(Operation::Save, Kind::Auth).expect("req"), 409),
    ];
    for (req, status) in cases {
        let resp = c.call(&req).await.expect("answered");
        assert_eq!(
            resp.status_code(),
            Some(status),
            "{:?} -> {:?}",
            req.fields,
            resp.fields
        );
        assert!(!resp.status_msg().is_empty());
    }
    // The connection is still in sync afterwards.
    c.data_save(Some("after"), Map::new())
        .await
        .expect("still fine");
}

#[tokio::test]
async fn huge_headers_and_garbage_close_only_that_connection() {
    let server = TestServer::start().await;
    let mut bystander = login(server.addr, "bystander").await;
    for junk in [
        &[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0][..],
        &[0, 0, 0, 2, 0xff, 0xff, 0xff, 0xff][..],
    ] {
        let mut raw = TcpStream::connect(server.addr).await.expect("connect");
        raw.write_all(junk).await.expect("write");
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
            .await
            .expect("closed promptly");
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "connection must close without an answer"
        );
        bystander
            .data_save(None, Map::new())
            .await
            .expect("others unaffected");
    }
    // Invalid JSON / non-object JSON in a well-framed message: 400, and the
    // connection stays usable.
    let raw = TcpStream::connect(server.addr).await.expect("connect");
    let mut framed = tokio_util::codec::Framed::new(raw, step_core::StepCodec::default());
    for text in [&b"{not json"[..], b"[1,2,3]", b"\xff\xfe\xfd", b"\"str\""] {
        futures::SinkExt::send(
            &mut framed,
            step_core::Frame {
                json: Bytes::copy_from_slice(text),
                binary: Bytes::new(),
            },
        )
        .await
        .expect("send");
        let m = Message::from_frame(framed.next().await.expect("answer").expect("frame"))
            .expect("json");
        assert_eq!(m.status_code(), Some(400));
    }
}

#[tokio::test]
async fn bye_is_answered_and_closes() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "leaver").await;
    let resp = c
        .call(&c.request(Operation::Bye, Kind::Auth).expect("req"))
        .await
        .expect("answer");
    assert_eq!(resp.status_code(), Some(200));
    assert!(matches!(c.recv().await, Err(ClientError::Closed)));
}

#[tokio::test]
async fn larger_block_sizes_are_honoured_within_the_cap() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "big").await;
    let body = pattern(3 * 1024 * 1024 + 11, 8);
    let plan = c
        .file_save(
            Some("mb.bin"),
            body.len() as u64,
            SaveOptions {
                block_size: Some(1 << 20),
                resume: false,
            },
        )
        .await
        .expect("plan");
    assert_eq!((plan.block_size, plan.total_block), (1 << 20, 4));
    let md5 = c
        .upload_blocks(
            &plan.key,
            futures::stream::iter(blocks(&body, 1 << 20).into_iter().map(Ok)),
            4,
            |_| {},
        )
        .await
        .expect("upload");
    assert_eq!(md5.as_deref(), Some(md5_hex(&body).as_str()));
    // Downloads default to 20480-byte blocks; a client may ask for more.
    assert_eq!(
        c.file_get("mb.bin", None).await.expect("plan").block_size,
        20480
    );
    let big = c.file_get("mb.bin", Some(1 << 20)).await.expect("plan");
    let mut out = Vec::new();
    c.download_blocks(&big, 0..big.total_block, 4, |_, b| {
        out.extend_from_slice(&b);
        Ok(())
    })
    .await
    .expect("download");
    assert_eq!(out, body);
    // Proposals outside [20480, cap] fall back to the default.
    let small = c
        .file_save(
            Some("s"),
            100_000,
            SaveOptions {
                block_size: Some(100),
                resume: false,
            },
        )
        .await
        .expect("plan");
    assert_eq!(small.block_size, 20480);
    let huge = c
        .file_save(
            Some("h"),
            100_000,
            SaveOptions {
                block_size: Some(1 << 40),
                resume: false,
            },
        )
        .await
        .expect("plan");
    assert_eq!(huge.block_size, 20480);
}

#[tokio::test]
async fn idle_connections_are_closed_and_the_cap_holds() {
    let conn = ConnectionLimits {
        max_connections: 2,
        idle_timeout: Duration::from_secs(1),
        ..ConnectionLimits::default()
    };
    let server = TestServer::start_with(TestConfig {
        conn,
        ..TestConfig::default()
    })
    .await;
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("closed by the idle timeout");
    assert!(matches!(r, Ok(0) | Err(_)));

    let mut a = login(server.addr, "a").await;
    let _b = login(server.addr, "b").await;
    // A third client connects (the kernel backlog accepts) but is not served
    // while two are open: the server takes a slot before accept(), so the
    // connection waits in the kernel's accept queue. That is the event waited
    // for, not a fixed time after which "not served yet" would prove nothing.
    let third = tokio::spawn({
        let addr = server.addr;
        async move { login(addr, "c").await }
    });
    step_tests::wait::until(
        "the third connection to wait in the accept queue",
        Duration::from_secs(10),
        || step_tests::wait::accept_queue(server.addr) == Some(1),
    )
    .await;
    a.data_save(None, Map::new()).await.expect("a still served");
    // The server has run meanwhile (it answered a), and still has not taken it.
    assert_eq!(
        step_tests::wait::accept_queue(server.addr),
        Some(1),
        "accepted beyond the cap"
    );
    assert!(!third.is_finished(), "served beyond the cap");
    drop(a);
    tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot frees")
        .expect("join");
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "inflight").await;
    let body = pattern(4 << 20, 4);
    let plan = c
        .file_save(
            Some("last.bin"),
            body.len() as u64,
            SaveOptions {
                block_size: Some(4 << 20),
                resume: false,
            },
        )
        .await
        .expect("plan");
    // Send the block, then shut the server down before reading the answer.
    c.send(
        &c.upload_request(&plan.key, 0, Bytes::from(body.clone()))
            .expect("req"),
    )
    .await
    .expect("send");
    // Shut down once the request has arrived: once the server has read every
    // byte sent to it, the whole frame is in and being handled (a fixed wait
    // could stop it first, or long after the answer went out).
    let addr = server.addr;
    step_tests::wait::until(
        "the server to read the whole request",
        Duration::from_secs(10),
        || step_tests::wait::unread_by(addr) == Some(0),
    )
    .await;
    let stopping = tokio::spawn(server.shutdown());
    let resp = c.recv().await.expect("answer before close");
    assert_eq!(resp.get("md5"), Some(&json!(md5_hex(&body))));
    assert!(matches!(c.recv().await, Err(ClientError::Closed)));
    tokio::time::timeout(Duration::from_secs(5), stopping)
        .await
        .expect("shutdown completes")
        .expect("join");
}

#[tokio::test]
async fn crash_leftovers_are_cleaned_on_start() {
    let parent = tempfile::tempdir().expect("tmp");
    let dir = parent.path().join("store");
    let server = TestServer::start_with(TestConfig {
        data_dir: Some(dir.clone()),
        ..TestConfig::default()
    })
    .await;
    let mut c = login(server.addr, "crash").await;
    upload(&mut c, "kept.bin", &pattern(5000, 1), 2).await;
    drop(c);
    server.shutdown().await;
    // What a crash mid-write can leave: a half-written temp file, and an
    // upload directory with no plan file.
    std::fs::write(dir.join("tmp").join("half-written"), b"partial").expect("write");
    std::fs::create_dir_all(dir.join("uploads").join("crash").join("broken")).expect("mkdir");
    let server = TestServer::start_with(TestConfig {
        data_dir: Some(dir.clone()),
        ..TestConfig::default()
    })
    .await;
    assert_eq!(std::fs::read_dir(dir.join("tmp")).expect("ls").count(), 0);
    let mut c = login(server.addr, "crash").await;
    assert_eq!(download(&mut c, "kept.bin").await, pattern(5000, 1));
    assert_eq!(
        refusal(
            c.upload_block("broken", 0, Bytes::from_static(b"x"))
                .await
                .expect_err("none")
        )
        .0,
        Status::WrongOperation
    );
}

#[tokio::test]
async fn spread_transfers_over_several_connections_are_byte_identical() {
    let server = TestServer::start().await;
    let body = pattern(5 * 1024 * 1024 + 3, 12);
    let mut first = login(server.addr, "spread").await;
    let token = first.token().expect("token").to_owned();
    let mut others = Vec::new();
    for _ in 0..3 {
        let mut c = StepClient::connect(server.addr).await.expect("connect");
        c.set_token(token.clone());
        others.push(c);
    }
    let plan = first
        .file_save(
            Some("spread5m"),
            body.len() as u64,
            SaveOptions {
                block_size: Some(256 * 1024),
                resume: false,
            },
        )
        .await
        .expect("plan");
    let acked = std::sync::atomic::AtomicU64::new(0);
    let md5 = {
        let mut clients: Vec<&mut StepClient> = std::iter::once(&mut first)
            .chain(others.iter_mut())
            .collect();
        let stream =
            futures::stream::iter(blocks(&body, plan.block_size as usize).into_iter().map(Ok));
        step_core::transfer::upload_spread(&mut clients, &plan.key, stream, 4, &|n| {
            acked.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        })
        .await
        .expect("upload")
    };
    assert_eq!(md5.as_deref(), Some(md5_hex(&body).as_str()));
    assert_eq!(acked.into_inner(), body.len() as u64);

    let dplan = first
        .file_get("spread5m", Some(128 * 1024))
        .await
        .expect("plan");
    let out = std::sync::Mutex::new(vec![0u8; body.len()]);
    {
        let mut clients: Vec<&mut StepClient> = std::iter::once(&mut first)
            .chain(others.iter_mut())
            .collect();
        step_core::transfer::download_spread(&mut clients, &dplan, 4, &|i, b| {
            let start = (i * dplan.block_size) as usize;
            out.lock().expect("lock")[start..start + b.len()].copy_from_slice(&b);
            Ok(())
        })
        .await
        .expect("download");
    }
    assert_eq!(out.into_inner().expect("lock"), body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guessing_is_paced_while_valid_tokens_are_not() {
    let limits = step_server::service::Limits {
        token_failures_per_sec: 20,
        ..Default::default()
    };
    let server = TestServer::start_with(TestConfig {
        limits,
        ..TestConfig::default()
    })
    .await;
    let mut guesser = StepClient::connect(server.addr).await.expect("connect");
    guesser.set_token(mint_reference_style("victim", "20261125093000"));
    let guesses: Vec<_> = (0..100)
        .map(|i| {
            Ok(guesser
                .request(Operation::Get, Kind::Data)
                .expect("req")
                .with(field::KEY, format!("k{i}")))
        })
        .collect();
    let started = std::time::Instant::now();
    let (pacing, paced) = tokio::sync::oneshot::channel();
    let flood = tokio::spawn(async move {
        let mut refused = 0;
        let mut pacing = Some(pacing);
        guesser
            .pipeline(futures::stream::iter(guesses), 100, |resp| {
                assert_eq!(resp.status_code(), Some(403));
                refused += 1;
                // Past the burst of 20: the pacer is holding the rest back.
                if refused == 21
                    && let Some(tx) = pacing.take()
                {
                    let _ = tx.send(());
                }
                Ok(())
            })
            .await
            .expect("pipeline");
        (refused, std::time::Instant::now())
    });
    // Meanwhile (once the guesses are being paced, not after a fixed wait
    // that may come before the flood) an honest client is answered before
    // the guesses are.
    tokio::time::timeout(Duration::from_secs(30), paced)
        .await
        .expect("the guesses reach the pacer")
        .expect("the flood task is running");
    let mut honest = login(server.addr, "honest").await;
    honest
        .data_save(Some("fine"), Map::new())
        .await
        .expect("valid token served");
    let honest_done = std::time::Instant::now();
    let (refused, flood_done) = flood.await.expect("join");
    assert_eq!(refused, 100);
    assert!(
        honest_done < flood_done,
        "the honest request did not wait behind the guesses"
    );
    // 20 in the burst, 80 more at 20/s: at least ~4 s for the lot, leaving the honest client seconds to spare.
    assert!(
        started.elapsed() >= Duration::from_millis(3500),
        "guesses were not paced: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn upload_ids_keep_racing_uploads_of_one_key_apart() {
    let server = TestServer::start().await;
    let mut a = login(server.addr, "racer").await;
    let mut b = login(server.addr, "racer").await;
    let first = a
        .file_save(Some("race.bin"), 30_000, SaveOptions::default())
        .await
        .expect("plan a");
    assert!(first.upload_id.is_some(), "our server hands out upload ids");
    let second = b
        .file_save(Some("race.bin"), 30_000, SaveOptions::default())
        .await
        .expect("plan b");
    assert_ne!(first.upload_id, second.upload_id);
    // A's blocks belong to the superseded upload: refused, not mixed in.
    let stale = a
        .upload_block(&first, 0, Bytes::from(vec![b'a'; 20480]))
        .await
        .expect_err("stale");
    assert_eq!(stale.status(), Some(Status::WrongOperation));
    let body = [vec![b'b'; 20480], vec![b'b'; 9520]].concat();
    b.upload_block(&second, 0, Bytes::copy_from_slice(&body[..20480]))
        .await
        .expect("b0");
    let md5 = b
        .upload_block(&second, 1, Bytes::copy_from_slice(&body[20480..]))
        .await
        .expect("b1");
    assert_eq!(md5.as_deref(), Some(md5_hex(&body).as_str()));
    // Without an id (a reference client) the key alone still works.
    let plain = a
        .file_save(Some("plain.bin"), 10, SaveOptions::default())
        .await
        .expect("plan");
    assert!(
        a.upload_block(plain.key.as_str(), 0, Bytes::from(vec![1u8; 10]))
            .await
            .expect("upload")
            .is_some()
    );
}
