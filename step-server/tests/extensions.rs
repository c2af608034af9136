//! `--disable-extensions` on the real binary: a server started with it
//! neither announces nor serves FILE LIST and replace, answering as the
//! reference does; without it both are on.

mod support;

use serde_json::Value;
use step_core::client::{ListQuery, SaveOptions};
use step_core::digest::password_for;
use step_core::message::field;
use step_core::{Kind, Operation, Status, StepClient};
use support::ServerProc;

async fn client(server: &ServerProc) -> StepClient {
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    c.login("ext", &password_for("ext")).await.expect("login");
    c
}

#[tokio::test]
async fn extensions_are_on_by_default_and_can_be_turned_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("server.log");

    let on = ServerProc::start(&dir.path().join("on"), &log, &[]).await;
    let mut c = client(&on).await;
    let caps = c.capabilities();
    assert!(caps.list && caps.replace, "{caps:?}");
    assert!(
        c.file_list(ListQuery::default())
            .await
            .expect("list")
            .files
            .is_empty()
    );
    on.terminate();

    let off = ServerProc::start(
        &dir.path().join("off"),
        &log,
        &["--disable-extensions", "list,replace"],
    )
    .await;
    let mut c = client(&off).await;
    let caps = c.capabilities();
    assert!(!caps.list && !caps.replace, "{caps:?}");
    let req = c.request(Operation::List, Kind::File).expect("req");
    let resp = c.call(&req).await.expect("call");
    assert_eq!(resp.status_code(), Some(408));
    assert_eq!(resp.get(field::OPERATION), Some(&Value::from("ERROR")));
    let plan = c
        .file_save(Some("k"), 0, SaveOptions::default())
        .await
        .expect("empty file");
    assert_eq!(plan.total_block, 0);
    let err = c
        .file_save_replace("k", 0, SaveOptions::default(), None)
        .await
        .expect_err("a plain SAVE of a complete key");
    assert_eq!(err.status(), Some(Status::KeyExists));
    off.terminate();
}
