//! UPLOAD `md5` (extension): the whole file's md5 as its writer computed
//! it. An upload whose bytes do not have it is never completed: it is
//! discarded, the UPLOAD that would have completed it is refused (406,
//! `md5_mismatch`), and the key keeps the file it held.

use bytes::Bytes;
use serde_json::Value;
use step_core::client::{SaveOptions, StepClient};
use step_core::digest::md5_hex;
use step_core::message::field;
use step_core::{Kind, Message, Operation};
use step_tests::{TestServer, download, login, pattern};

const BS: usize = 20_480;

async fn replace_plan(c: &mut StepClient, key: &str, size: usize) -> String {
    let req = c
        .request(Operation::Save, Kind::File)
        .expect("token")
        .with(field::KEY, key)
        .with(field::SIZE, size as u64)
        .with(field::REPLACE, true);
    let resp = c.call(&req).await.expect("SAVE");
    assert_eq!(
        resp.get("status").and_then(Value::as_u64),
        Some(200),
        "{resp:?}"
    );
    resp.get(field::UPLOAD_ID)
        .and_then(Value::as_str)
        .expect("upload_id")
        .to_owned()
}

async fn block(
    c: &mut StepClient,
    key: &str,
    id: &str,
    body: &[u8],
    i: usize,
    md5: Option<&str>,
) -> Message {
    let end = ((i + 1) * BS).min(body.len());
    let mut req = c
        .upload_request(key, i as u64, Bytes::copy_from_slice(&body[i * BS..end]))
        .expect("request")
        .with(field::UPLOAD_ID, id);
    if let Some(md5) = md5 {
        req.set(field::MD5, md5);
    }
    c.call(&req).await.expect("UPLOAD answered")
}

fn status(m: &Message) -> u64 {
    m.get("status").and_then(Value::as_u64).unwrap_or(0)
}

async fn with_old(c: &mut StepClient, old: &[u8]) {
    c.file_save(Some("k"), old.len() as u64, SaveOptions::default())
        .await
        .expect("plan");
    let blocks = step_tests::blocks(old, BS).into_iter().map(Ok);
    c.upload_blocks("k", futures::stream::iter(blocks), 4, |_| {})
        .await
        .expect("old file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_without_its_md5_leaves_the_old_file() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "u").await;
    let (old, new) = (pattern(2 * BS + 5, 1), pattern(3 * BS, 2));
    with_old(&mut c, &old).await;
    let wrong = md5_hex(b"not these bytes");

    // The md5 comes with the block that completes the upload.
    let id = replace_plan(&mut c, "k", new.len()).await;
    for i in 0..2 {
        assert_eq!(status(&block(&mut c, "k", &id, &new, i, None).await), 200);
    }
    let refused = block(&mut c, "k", &id, &new, 2, Some(&wrong)).await;
    assert_eq!(status(&refused), 406, "{refused:?}");
    assert_eq!(
        refused.get(field::REASON).and_then(Value::as_str),
        Some("md5_mismatch"),
        "{refused:?}"
    );
    assert!(download(&mut c, "k").await == old, "the old file stays");
    let gone = c.file_upload_status("k").await.expect_err("discarded");
    assert_eq!(gone.status().map(|s| s.code()), Some(404));

    // The md5 came earlier: the completing block is refused all the same.
    let id = replace_plan(&mut c, "k", new.len()).await;
    assert_eq!(
        status(&block(&mut c, "k", &id, &new, 0, Some(&wrong)).await),
        200
    );
    assert_eq!(status(&block(&mut c, "k", &id, &new, 1, None).await), 200);
    let refused = block(&mut c, "k", &id, &new, 2, None).await;
    assert_eq!(status(&refused), 406, "{refused:?}");
    assert!(download(&mut c, "k").await == old, "the old file stays");

    // The right md5: replaced.
    let id = replace_plan(&mut c, "k", new.len()).await;
    let right = md5_hex(&new);
    for i in 0..2 {
        assert_eq!(status(&block(&mut c, "k", &id, &new, i, None).await), 200);
    }
    let done = block(&mut c, "k", &id, &new, 2, Some(&right.to_uppercase())).await;
    assert_eq!(status(&done), 200, "{done:?}");
    assert_eq!(
        done.get(field::MD5).and_then(Value::as_str),
        Some(right.as_str())
    );
    assert!(download(&mut c, "k").await == new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_announces_upload_md5() {
    let server = TestServer::start().await;
    let c = login(server.addr, "u").await;
    assert!(c.capabilities().upload_md5);
}
