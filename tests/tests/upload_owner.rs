//! An upload is only ever continued by its own writer.
//!
//! * A SAVE with `resume` continues the key's unfinished upload only when it
//!   names that upload (`upload_id`); without the id, or with another one,
//!   it starts over as a plain SAVE does (`resumed: false`).
//! * A connection that sends UPLOADs without `upload_id` (every course
//!   client) is bound, per key, to the upload its SAVE started, or — when it
//!   did not SAVE — to the key's upload at its first block. Once another SAVE
//!   started the key over, its next block is refused (408, `superseded`)
//!   before anything is written: its blocks never land in another writer's
//!   upload. Two connections of one client taking turns on one upload still
//!   work.
//!
//! Raw STEP over real sockets against a disk server.

use bytes::Bytes;
use serde_json::Value;
use step_core::client::StepClient;
use step_core::digest::md5_hex;
use step_core::message::field;
use step_core::{Kind, Message, Operation};
use step_tests::{TestServer, download, login, pattern};

const BS: usize = 20_480;

async fn save(c: &mut StepClient, key: &str, size: usize, resume: Option<Option<&str>>) -> Message {
    let mut req = c
        .request(Operation::Save, Kind::File)
        .expect("token")
        .with(field::KEY, key)
        .with(field::SIZE, size as u64);
    if let Some(id) = resume {
        req.set(field::RESUME, true);
        if let Some(id) = id {
            req.set(field::UPLOAD_ID, id);
        }
    }
    let resp = c.call(&req).await.expect("SAVE answered");
    assert_eq!(
        resp.get("status").and_then(Value::as_u64),
        Some(200),
        "{resp:?}"
    );
    resp
}

fn id_of(m: &Message) -> String {
    m.get(field::UPLOAD_ID)
        .and_then(Value::as_str)
        .expect("upload_id")
        .to_owned()
}

fn resumed(m: &Message) -> bool {
    m.get(field::RESUMED)
        .and_then(Value::as_bool)
        .expect("resumed")
}

/// UPLOAD block `i` of `body` without `upload_id`, as a course client does.
async fn block(c: &mut StepClient, key: &str, body: &[u8], i: usize) -> Message {
    let end = ((i + 1) * BS).min(body.len());
    let req = c
        .upload_request(key, i as u64, Bytes::copy_from_slice(&body[i * BS..end]))
        .expect("request");
    c.call(&req).await.expect("UPLOAD answered")
}

fn status(m: &Message) -> u64 {
    m.get("status").and_then(Value::as_u64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_continues_only_the_upload_it_names() {
    let server = TestServer::start().await;
    let (mut a, mut b) = (login(server.addr, "u").await, login(server.addr, "u").await);
    let body = pattern(3 * BS, 1);
    let first = save(&mut a, "k", body.len(), None).await;
    let x = id_of(&first);
    assert_eq!(status(&block(&mut a, "k", &body, 0).await), 200);

    // Same plan, no id: not a proof of ownership, so it starts over.
    let anon = save(&mut b, "k", body.len(), Some(None)).await;
    assert!(
        !resumed(&anon),
        "a resume naming no upload started over: {anon:?}"
    );
    let y = id_of(&anon);
    assert_ne!(x, y);

    // Same plan, someone else's (stale) id: starts over too.
    let stale = save(&mut a, "k", body.len(), Some(Some(&x))).await;
    assert!(
        !resumed(&stale),
        "a resume naming a stale upload started over: {stale:?}"
    );
    let z = id_of(&stale);
    assert_ne!(y, z);

    // The current upload's id: continued.
    let own = save(&mut a, "k", body.len(), Some(Some(&z))).await;
    assert!(resumed(&own), "{own:?}");
    assert_eq!(id_of(&own), z);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_upload_was_started_over_gets_superseded() {
    let server = TestServer::start().await;
    let (mut a, mut b) = (login(server.addr, "u").await, login(server.addr, "u").await);
    let (mine, theirs) = (pattern(4 * BS, 2), pattern(4 * BS, 3));
    save(&mut a, "k", mine.len(), None).await;
    for i in 0..2 {
        assert_eq!(status(&block(&mut a, "k", &mine, i).await), 200);
    }
    // B starts the key over (the reference's rule for a plain SAVE).
    save(&mut b, "k", theirs.len(), None).await;
    let refused = block(&mut a, "k", &mine, 2).await;
    assert_eq!(
        status(&refused),
        408,
        "A's block after B's SAVE: {refused:?}"
    );
    assert_eq!(
        refused.get(field::REASON).and_then(Value::as_str),
        Some("superseded"),
        "{refused:?}"
    );
    // Refused every time, also the block B has not sent yet.
    assert_eq!(status(&block(&mut a, "k", &mine, 3).await), 408);
    let mut md5 = None;
    for i in 0..4 {
        let r = block(&mut b, "k", &theirs, i).await;
        assert_eq!(status(&r), 200, "{r:?}");
        md5 = md5.or(r.get(field::MD5).and_then(Value::as_str).map(str::to_owned));
    }
    assert_eq!(md5.as_deref(), Some(md5_hex(&theirs).as_str()));
    assert!(download(&mut b, "k").await == theirs, "exactly B's bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_of_one_client_take_turns_on_one_upload() {
    let server = TestServer::start().await;
    let (mut a, mut b) = (login(server.addr, "u").await, login(server.addr, "u").await);
    let body = pattern(6 * BS + 7, 4);
    save(&mut a, "k", body.len(), None).await;
    let mut md5 = None;
    // B never SAVEd: its first block binds it to the key's upload.
    for i in 0..7 {
        let c = if i % 2 == 0 { &mut a } else { &mut b };
        let r = block(c, "k", &body, i).await;
        assert_eq!(status(&r), 200, "block {i}: {r:?}");
        md5 = md5.or(r.get(field::MD5).and_then(Value::as_str).map(str::to_owned));
    }
    assert_eq!(md5.as_deref(), Some(md5_hex(&body).as_str()));
    assert!(download(&mut a, "k").await == body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_save_on_the_same_connection_rebinds_it() {
    let server = TestServer::start().await;
    let mut a = login(server.addr, "u").await;
    let (first, second) = (pattern(3 * BS, 5), pattern(3 * BS, 6));
    save(&mut a, "k", first.len(), None).await;
    assert_eq!(status(&block(&mut a, "k", &first, 0).await), 200);
    // The client gave up and started over on the same connection.
    save(&mut a, "k", second.len(), None).await;
    for i in 0..3 {
        assert_eq!(status(&block(&mut a, "k", &second, i).await), 200);
    }
    assert!(download(&mut a, "k").await == second);
}
