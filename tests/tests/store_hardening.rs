//! Issue 11, storage side: a DELETE scoped to one upload never removes what
//! another upload stored, and bytes corrupted at rest are never served as a
//! clean DOWNLOAD block. Over real sockets, with the real client.

use std::os::unix::fs::FileExt;

use bytes::Bytes;
use step_core::client::{ClientError, DownloadPlan, SaveOptions, StepClient, UploadTarget};
use step_core::digest::md5_hex;
use step_core::{Reason, Status};
use step_tests::{TestServer, blocks, download, login, pattern};

const BS: usize = 20480;

fn refusal(e: ClientError) -> (Status, Option<Reason>) {
    match e {
        ClientError::Refused { code, reason, .. } => (
            Status::from_code(code).unwrap_or_else(|| panic!("unknown status {code}")),
            reason,
        ),
        other => panic!("expected a STEP refusal, got {other}"),
    }
}

/// SAVE `key` (starting over) and upload the blocks `which` of `body`.
async fn upload_some(
    c: &mut StepClient,
    key: &str,
    body: &[u8],
    which: impl Fn(u64) -> bool,
) -> (String, Option<String>) {
    let plan = c
        .file_save(Some(key), body.len() as u64, SaveOptions::default())
        .await
        .expect("plan");
    let id = plan
        .upload_id
        .clone()
        .expect("our server hands out upload ids");
    let mut md5 = None;
    for (i, b) in blocks(body, plan.block_size as usize) {
        if which(i) {
            let target = UploadTarget {
                key,
                upload_id: Some(&id),
            };
            if let Some(m) = c.upload_block(target, i, b).await.expect("block") {
                md5 = Some(m);
            }
        }
    }
    (id, md5)
}

#[tokio::test]
async fn delete_with_an_upload_id_removes_only_that_upload() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "alice").await;
    let first = pattern(5 * BS + 123, 1);
    let second = pattern(4 * BS + 7, 2);

    // A starts, B starts the key over and completes: the key holds B's file.
    let (a, _) = upload_some(&mut c, "k", &first, |i| i < 2).await;
    let (b, md5) = upload_some(&mut c, "k", &second, |_| true).await;
    assert_eq!(md5.as_deref(), Some(md5_hex(&second).as_str()));

    // A's late cleanup must not touch B's file.
    let err = c.file_delete_upload("k", &a).await.expect_err("not A's");
    assert_eq!(
        refusal(err),
        (Status::NotFound, Some(Reason::OtherUpload)),
        "a DELETE scoped to another upload is refused"
    );
    assert_eq!(download(&mut c, "k").await, second, "B's file is intact");

    // B's own id removes B's complete file (the md5-mismatch cleanup).
    c.file_delete_upload("k", &b)
        .await
        .expect("B deletes its own file");
    let err = c.file_get("k", None).await.expect_err("gone");
    assert_eq!(refusal(err).0, Status::NotFound);

    // Nothing there at all: 404 without reason.
    let err = c.file_delete_upload("k", &b).await.expect_err("nothing");
    assert_eq!(refusal(err), (Status::NotFound, None));

    // An unfinished upload is deleted by its own id (404 "temporary files
    // deleted", as an unscoped DELETE of an unfinished upload answers) ...
    let (c1, _) = upload_some(&mut c, "u", &first, |i| i == 0).await;
    let err = c
        .file_delete_upload("u", &c1)
        .await
        .expect_err("unfinished");
    assert_eq!(refusal(err), (Status::NotFound, None));
    let again = c
        .file_save(
            Some("u"),
            first.len() as u64,
            SaveOptions {
                resume: true,
                ..SaveOptions::default()
            },
        )
        .await
        .expect("plan");
    assert!(!again.resumed, "the unfinished upload was deleted");

    // ... but not by the id of an upload it superseded.
    let (d, _) = upload_some(&mut c, "v", &first, |i| i == 0).await;
    let (e, _) = upload_some(&mut c, "v", &first, |i| i == 1).await;
    assert_ne!(d, e);
    let err = c.file_delete_upload("v", &d).await.expect_err("not D's");
    assert_eq!(refusal(err), (Status::NotFound, Some(Reason::OtherUpload)));
    let resumed = c
        .file_save_own("v", first.len() as u64, None, &e, false)
        .await
        .expect("plan");
    assert!(resumed.resumed, "E's upload survives D's DELETE");
    assert_eq!(resumed.upload_id.as_deref(), Some(e.as_str()));
    assert_eq!(resumed.missing, vec![[0, 1], [2, 6]]);
    server.shutdown().await;
}

/// The stored content file of `(user, key)` (plain names encode to themselves).
fn content_path(server: &TestServer, user: &str, key: &str) -> std::path::PathBuf {
    server.data_dir().join("files").join(user).join(key)
}

fn flip(path: &std::path::Path, offset: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open stored content");
    let mut b = [0u8; 4];
    f.read_exact_at(&mut b, offset).expect("read");
    for x in &mut b {
        *x ^= 0xA5;
    }
    f.write_all_at(&b, offset).expect("write");
    f.sync_all().expect("sync");
}

async fn block(c: &mut StepClient, plan: &DownloadPlan, i: u64) -> Result<Bytes, ClientError> {
    c.download_block(plan, i).await
}

#[tokio::test]
async fn bytes_corrupted_at_rest_are_refused_not_served() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "alice").await;
    let body = pattern(5 * BS + 1000, 3);
    let (_, md5) = upload_some(&mut c, "f", &body, |_| true).await;
    let md5 = md5.expect("complete");

    let path = content_path(&server, "alice", "f");
    flip(&path, 2 * BS as u64 + 100);
    // The last, partial chunk of the file too.
    flip(&path, body.len() as u64 - 6);

    let plan = c.file_get("f", None).await.expect("plan");
    assert_eq!(plan.md5, md5, "GET still answers the stored md5");
    for i in 0..plan.total_block {
        let got = block(&mut c, &plan, i).await;
        if i == 2 || i == plan.total_block - 1 {
            let err = got
                .map(|b| b.len())
                .expect_err("a corrupt block is not served");
            assert_eq!(
                refusal(err),
                (Status::BlockSizeMismatch, Some(Reason::Integrity)),
                "block {i}"
            );
        } else {
            let start = i as usize * BS;
            let end = (start + BS).min(body.len());
            assert_eq!(got.expect("clean block").as_ref(), &body[start..end]);
        }
    }

    // Block sizes that do not line up with the checksum chunks read the
    // chunks around them: 20481-byte block 2 covers the flipped bytes.
    let odd = c.file_get("f", Some(20481)).await.expect("plan");
    let err = block(&mut c, &odd, 2)
        .await
        .map(|b| b.len())
        .expect_err("corrupt");
    assert_eq!(
        refusal(err),
        (Status::BlockSizeMismatch, Some(Reason::Integrity))
    );
    let first = block(&mut c, &odd, 0).await.expect("clean");
    assert_eq!(first.as_ref(), &body[..20481]);
    // Block 1 ends inside the corrupt chunk: it cannot be vouched for either.
    let err = block(&mut c, &odd, 1)
        .await
        .map(|b| b.len())
        .expect_err("shares a corrupt chunk");
    assert_eq!(refusal(err).1, Some(Reason::Integrity));
    let fourth = block(&mut c, &odd, 3).await.expect("clean");
    assert_eq!(fourth.as_ref(), &body[3 * 20481..4 * 20481]);
    server.shutdown().await;
}

/// A block of an upload that another SAVE of the key started over, with
/// another size, is refused as superseded (408, reason `superseded`) rather
/// than as a block that fits neither plan: the service checks the upload id
/// before the block against the plan.
#[tokio::test]
async fn a_superseded_block_is_refused_as_superseded_whatever_the_new_plan() {
    let server = TestServer::start().await;
    let mut a = login(server.addr, "alice").await;
    let mut b = login(server.addr, "alice").await;
    let small = pattern(BS + 9, 3);
    let plan_a = a
        .file_save(Some("k"), small.len() as u64, SaveOptions::default())
        .await
        .expect("plan a");
    let id_a = plan_a.upload_id.expect("id");
    b.file_save(Some("k"), 5 * BS as u64, SaveOptions::default())
        .await
        .expect("plan b");
    // A's last block: 9 bytes, which B's plan (full blocks) would call a
    // wrong length; and A's block 1 of B's 5 would be in range.
    let (i, last) = blocks(&small, BS).remove(1);
    let target = UploadTarget {
        key: "k",
        upload_id: Some(&id_a),
    };
    let err = a.upload_block(target, i, last).await.expect_err("stale");
    assert_eq!(
        refusal(err),
        (Status::WrongOperation, Some(Reason::Superseded))
    );
    // Without an id (a reference client), on the connection that SAVEd the
    // superseded upload: refused the same way, its connection is bound to it.
    let (i, last) = blocks(&small, BS).remove(1);
    let err = a.upload_block("k", i, last).await.expect_err("stale");
    assert_eq!(
        refusal(err),
        (Status::WrongOperation, Some(Reason::Superseded))
    );
    // On a connection that never wrote the key, the block is for the key's
    // current upload and checked against its plan, as the reference does.
    let mut fresh = login(server.addr, "alice").await;
    let (i, last) = blocks(&small, BS).remove(1);
    let err = fresh
        .upload_block("k", i, last)
        .await
        .expect_err("wrong length");
    assert_eq!(refusal(err).0, Status::BlockSizeMismatch);
}
