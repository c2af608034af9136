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
