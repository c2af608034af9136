//! Our STEP extensions for file management, over a real socket: FILE LIST
//! (listing), FILE SAVE `replace` / `if_md5` (atomic overwrite), FILE GET's
//! version and DOWNLOAD of a version, FILE DELETE `if_md5`.

use std::collections::BTreeSet;

use serde_json::Value;
use step_core::client::{ListQuery, SaveOptions, StepClient};
use step_core::message::field;
use step_core::{Kind, Message, Operation, Status};
use step_server::service::{Extensions, Limits};
use step_tests::{TestConfig, TestServer, blocks, login, pattern};

/// Upload `body` under `key` (a plain SAVE); returns the md5 reported.
async fn upload(c: &mut StepClient, key: &str, body: &[u8]) -> String {
    let plan = c
        .file_save(Some(key), body.len() as u64, SaveOptions::default())
        .await
        .expect("plan");
    send_blocks(c, &plan, body).await
}

async fn send_blocks(
    c: &mut StepClient,
    plan: &step_core::client::UploadPlan,
    body: &[u8],
) -> String {
    if body.is_empty() {
        return step_core::digest::EMPTY_MD5.to_owned();
    }
    let stream = futures::stream::iter(blocks(body, plan.block_size as usize).into_iter().map(Ok));
    c.upload_blocks(plan, stream, 4, |_| {})
        .await
        .expect("upload")
        .expect("md5")
}

/// Every key of a listing of `prefix`, page by page of `limit`.
async fn list_all(c: &mut StepClient, prefix: &str, limit: u64) -> Vec<String> {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..1000 {
        let page = c
            .file_list(ListQuery {
                prefix,
                after: after.as_deref(),
                limit: Some(limit),
            })
            .await
            .expect("list");
        assert!(page.files.len() as u64 <= limit);
        keys.extend(page.files.into_iter().map(|f| f.key));
        match page.next {
            Some(next) => after = Some(next),
            None => return keys,
        }
    }
    panic!("listing never ended");
}

#[tokio::test]
async fn file_list_pages_filters_and_keeps_users_apart() {
    let server = TestServer::start().await;
    let mut alice = login(server.addr, "alice").await;
    assert!(alice.capabilities().list, "{:?}", alice.capabilities());
    let mut want = BTreeSet::new();
    for i in 0..23 {
        let key = format!("{}/{i:02}.txt", if i % 3 == 0 { "docs" } else { "img" });
        upload(&mut alice, &key, &pattern(10 + i, i as u8)).await;
        want.insert(key);
    }
    // An unfinished upload is not listed.
    alice
        .file_save(Some("docs/half"), 100_000, SaveOptions::default())
        .await
        .expect("plan");
    let mut bob = login(server.addr, "bob").await;
    upload(&mut bob, "docs/bobs", b"bob").await;

    for limit in [1, 4, 23, 1000] {
        let all = list_all(&mut alice, "", limit).await;
        assert_eq!(
            all,
            want.iter().cloned().collect::<Vec<_>>(),
            "limit {limit}"
        );
    }
    let docs = list_all(&mut alice, "docs/", 2).await;
    let want_docs: Vec<_> = want
        .iter()
        .filter(|k| k.starts_with("docs/"))
        .cloned()
        .collect();
    assert_eq!(docs, want_docs);
    assert_eq!(list_all(&mut bob, "", 100).await, ["docs/bobs"]);

    // Entries carry size, md5, completion time and version.
    let page = alice
        .file_list(ListQuery {
            prefix: "docs/00",
            ..ListQuery::default()
        })
        .await
        .expect("list");
    let f = &page.files[0];
    let body = pattern(10, 0);
    assert_eq!(
        (f.size, f.md5.as_str()),
        (10, step_core::digest::md5_hex(&body).as_str())
    );
    assert!(
        f.last_modified > 1_700_000_000 && f.upload_id.is_some(),
        "{f:?}"
    );
    assert_eq!(page.next, None);
}

#[tokio::test]
async fn file_list_wire_shape_and_refusals() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "shape").await;
    upload(&mut c, "a", b"x").await;
    let req = c.request(Operation::List, Kind::File).expect("req");
    let resp = c.call(&req).await.expect("call");
    assert_eq!(resp.status_code(), Some(200), "{resp:?}");
    assert_eq!(resp.get(field::OPERATION), Some(&Value::from("LIST")));
    assert_eq!(resp.get(field::NEXT), Some(&Value::Null));
    let files = resp
        .get(field::FILES)
        .and_then(Value::as_array)
        .expect("files");
    let entry = files[0].as_object().expect("object");
    let mut names: Vec<_> = entry.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["key", "last_modified", "md5", "size", "upload_id"]);

    for (limit, ok) in [
        (Value::from(0), false),
        (Value::from(1001), false),
        (Value::from("5"), false),
        (Value::from(1000), true),
    ] {
        let req = c
            .request(Operation::List, Kind::File)
            .expect("req")
            .with(field::LIMIT, limit.clone());
        let resp = c.call(&req).await.expect("call");
        let want = if ok {
            200
        } else {
            u64::from(Status::FieldMissing.code())
        };
        assert_eq!(resp.status_code(), Some(want), "limit {limit}: {resp:?}");
    }
    // No token: 403, as every other operation.
    let anon = Message::request(Operation::List, Kind::File);
    assert_eq!(c.call(&anon).await.expect("call").status_code(), Some(403));
    // LIST with another type is the unknown operation it is to the
    // reference: 408 ERROR/ERROR, before the token is looked at.
    for ty in [Kind::Data, Kind::Auth] {
        let req = Message::request(Operation::List, ty);
        let resp = c.call(&req).await.expect("call");
        assert_eq!(resp.status_code(), Some(408), "{resp:?}");
        assert_eq!(resp.get(field::OPERATION), Some(&Value::from("ERROR")));
    }
}

#[tokio::test]
async fn without_the_list_extension_list_is_an_unknown_operation() {
    let server = TestServer::start_with(TestConfig {
        limits: Limits {
            extensions: Extensions {
                list: false,
                ..Extensions::default()
            },
            ..Limits::default()
        },
        ..TestConfig::default()
    })
    .await;
    let mut c = login(server.addr, "nolist").await;
    assert!(!c.capabilities().list);
    let err = c
        .file_list(ListQuery::default())
        .await
        .expect_err("refused");
    assert_eq!(err.status(), Some(Status::WrongOperation), "{err}");
    let req = c.request(Operation::List, Kind::File).expect("req");
    let resp = c.call(&req).await.expect("call");
    assert_eq!(
        (
            resp.get(field::OPERATION),
            resp.get(field::TYPE),
            resp.status_msg()
        ),
        (
            Some(&Value::from("ERROR")),
            Some(&Value::from("ERROR")),
            "Operation LIST is not allowed"
        )
    );
}

fn reason(e: &step_core::ClientError) -> Option<step_core::Reason> {
    match e {
        step_core::ClientError::Refused { reason, .. } => *reason,
        _ => None,
    }
}

#[tokio::test]
async fn save_replace_swaps_atomically_and_old_downloads_finish_old() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "rep").await;
    assert!(c.capabilities().replace);
    let v1 = pattern(100_000, 1);
    let v2 = pattern(70_000, 2);
    let md5_1 = upload(&mut c, "f", &v1).await;
    // Plain SAVE of a complete key: the reference's 402.
    let err = c
        .file_save(Some("f"), 5, SaveOptions::default())
        .await
        .expect_err("exists");
    assert_eq!(err.status(), Some(Status::KeyExists));
    // The download plan names its version and completion time.
    let plan1 = c.file_get("f", None).await.expect("get");
    let id1 = plan1.upload_id.clone().expect("version");
    let req = c
        .request(Operation::Get, Kind::File)
        .expect("req")
        .with(field::KEY, "f");
    let resp = c.call(&req).await.expect("call");
    assert!(
        resp.get(field::LAST_MODIFIED)
            .and_then(Value::as_u64)
            .is_some_and(|t| t > 1_700_000_000)
    );
    // Refused conditions.
    let wrong = step_core::digest::md5_hex(b"other");
    let err = c
        .file_save_replace("f", 10, SaveOptions::default(), Some(&wrong))
        .await
        .expect_err("precondition");
    assert_eq!(
        (err.status(), reason(&err)),
        (
            Some(Status::WrongOperation),
            Some(step_core::Reason::Precondition)
        )
    );
    // A download begun before the replace: its first block now.
    let first = c.download_block(&plan1, 0).await.expect("block 0");
    let plan2 = c
        .file_save_replace("f", v2.len() as u64, SaveOptions::default(), Some(&md5_1))
        .await
        .expect("replace plan");
    // Still the old file while the new one is unfinished.
    assert_eq!(c.file_get("f", None).await.expect("get").md5, md5_1);
    let md5_2 = send_blocks(&mut c, &plan2, &v2).await;
    assert_eq!(md5_2, step_core::digest::md5_hex(&v2));
    // The old download finishes with old bytes only.
    let mut old = first.to_vec();
    for i in 1..plan1.total_block {
        old.extend_from_slice(&c.download_block(&plan1, i).await.expect("old block"));
    }
    assert_eq!(old, v1);
    // New GETs see the new file.
    let plan = c.file_get("f", None).await.expect("get");
    assert_eq!(
        (plan.md5.as_str(), plan.size),
        (md5_2.as_str(), v2.len() as u64)
    );
    assert_ne!(plan.upload_id.as_deref(), Some(id1.as_str()));
    assert_eq!(step_tests::download(&mut c, "f").await, v2);
    // A version that is not kept: 404, reason `replaced`.
    let gone = step_core::client::DownloadPlan {
        upload_id: Some("0123abcd".into()),
        ..plan.clone()
    };
    let err = c.download_block(&gone, 0).await.expect_err("gone");
    assert_eq!(
        (err.status(), reason(&err)),
        (Some(Status::NotFound), Some(step_core::Reason::Replaced))
    );
    // DELETE if_md5: another version's md5 is refused, the current one's
    // deletes.
    let err = c
        .file_delete_if("f", &md5_1)
        .await
        .expect_err("not current");
    assert_eq!(reason(&err), Some(step_core::Reason::Precondition));
    c.file_delete_if("f", &md5_2).await.expect("delete");
    assert_eq!(
        c.file_get("f", None).await.expect_err("gone").status(),
        Some(Status::NotFound)
    );
}

#[tokio::test]
async fn without_the_replace_extension_replace_is_ignored() {
    let server = TestServer::start_with(TestConfig {
        limits: Limits {
            extensions: Extensions {
                replace: false,
                ..Extensions::default()
            },
            ..Limits::default()
        },
        ..TestConfig::default()
    })
    .await;
    let mut c = login(server.addr, "norep").await;
    assert!(!c.capabilities().replace && c.capabilities().list);
    upload(&mut c, "f", b"one").await;
    let err = c
        .file_save_replace("f", 3, SaveOptions::default(), None)
        .await
        .expect_err("as a plain SAVE");
    assert_eq!(err.status(), Some(Status::KeyExists));
    // DELETE's if_md5 is ignored too: a plain DELETE.
    c.file_delete_if("f", &step_core::digest::md5_hex(b"x"))
        .await
        .expect("plain delete");
}

/// FILE GET `upload_status` (announced as `upload_status`): the key's
/// unfinished upload — id, plan, missing ranges, last activity — answered
/// without changing it: asked with another plan in mind it starts nothing
/// over (a SAVE with `resume` and a different plan would), the upload's
/// blocks still land, and a key with nothing or a complete file is 404.
#[tokio::test]
async fn file_get_upload_status_reads_the_unfinished_upload_and_changes_nothing() {
    let server = TestServer::start().await;
    let mut c = login(server.addr, "status").await;
    assert!(c.capabilities().upload_status, "announced");
    let bs = step_core::DEFAULT_BLOCK_SIZE;
    let body = pattern(bs as usize * 3 + 11, 9);
    let plan = c
        .file_save(
            Some("up.bin"),
            body.len() as u64,
            SaveOptions {
                block_size: Some(bs),
                resume: false,
            },
        )
        .await
        .expect("plan");
    let id = plan.upload_id.clone().expect("an upload id");
    let parts = blocks(&body, bs as usize);
    c.upload_block(&plan, 1, parts[1].1.clone())
        .await
        .expect("block 1");
    let status = c.file_upload_status("up.bin").await.expect("status");
    assert_eq!(status.upload_id, id);
    assert_eq!(
        (status.size, status.block_size, status.total_block),
        (body.len() as u64, bs, 4)
    );
    assert_eq!(status.missing, vec![[0, 1], [2, 4]]);
    assert!(status.last_active > 0);
    // The wire shape: operation GET, the fields reference clients know.
    let req = c
        .request(Operation::Get, Kind::File)
        .expect("req")
        .with(field::KEY, "up.bin")
        .with(field::UPLOAD_STATUS, true);
    let resp = c.call(&req).await.expect("call");
    assert_eq!(resp.status_code(), Some(200));
    assert_eq!(resp.get(field::OPERATION), Some(&Value::from("GET")));
    assert_eq!(resp.get(field::UPLOAD_ID), Some(&Value::from(id.as_str())));
    // Nothing there, another user's key, a complete file: 404.
    for (client_user, key) in [("status", "none.bin"), ("other", "up.bin")] {
        let mut who = login(server.addr, client_user).await;
        let e = who.file_upload_status(key).await.expect_err("no upload");
        assert_eq!(e.status(), Some(Status::NotFound), "{client_user} {key}");
    }
    upload(&mut c, "whole.bin", &body).await;
    let e = c
        .file_upload_status("whole.bin")
        .await
        .expect_err("complete");
    assert_eq!(e.status(), Some(Status::NotFound));
    // Still the same upload: its blocks complete it with the right md5.
    for i in [0, 2, 3] {
        let md5 = c
            .upload_block(&plan, i, parts[i as usize].1.clone())
            .await
            .expect("block");
        if i == 3 {
            assert_eq!(md5, Some(step_core::digest::md5_hex(&body)));
        }
    }
    let e = c.file_upload_status("up.bin").await.expect_err("completed");
    assert_eq!(e.status(), Some(Status::NotFound));
}
