//! Upgrade of a bucket written in the layout of releases before fencing
//! (DATA records under `rec/`, file metas under `meta/`, no pointers in
//! Redis): step-server processes of this release started on it with
//! `--coord` serve every record and file, two starting at once migrate it
//! once, and a DELETE after the upgrade stays deleted at every later start.
//!
//! The earlier layout is written by a step-server without `--coord`, whose
//! layout is the one earlier releases used in coordinated mode too. The
//! bucket is on moto_server (a real S3 API over HTTP), and again on a
//! Garage node (whose LIST may lag); the coordinator is a real Redis.
//! Reported as ignored, with the reason, where moto_server, Garage or
//! redis-server is not installed; a failure instead under
//! `STEP_REQUIRE_ALL_TESTS`.

use bytes::Bytes;
use serde_json::{Map, Value};
use step_core::client::{ClientError, SaveOptions, StepClient};
use step_core::digest::{md5_hex, password_for};
use step_tests::pattern;
use step_tests::prereq::{self, block_on_threads};

mod support;
use support::s3::{Instance, Setup, connect, instance, on_garage, on_moto};

const SECRET: &str = "upgrade-test-secret";
const BUCKET: &str = "upgrade";

fn main() {
    let run = |s| block_on_threads(2, a_legacy_bucket_is_served_after_the_upgrade(s));
    prereq::main(vec![
        prereq::needs("on_moto", || on_moto(BUCKET), run),
        prereq::needs("on_garage", on_garage, run),
    ]);
}

fn record(n: u64) -> Map<String, Value> {
    let mut rec = Map::new();
    rec.insert("n".into(), Value::from(n));
    rec
}

/// SAVE `key` and send every block.
async fn upload(c: &mut StepClient, key: &str, body: &[u8]) -> String {
    let opts = SaveOptions {
        block_size: Some(64 << 10),
        resume: false,
    };
    let plan = c
        .file_save(Some(key), body.len() as u64, opts)
        .await
        .expect("save");
    let mut md5 = None;
    for i in 0..plan.total_block {
        let start = (i * (64 << 10)) as usize;
        let end = (start + (64 << 10)).min(body.len());
        md5 = c
            .upload_block(&plan, i, Bytes::copy_from_slice(&body[start..end]))
            .await
            .expect("block");
    }
    md5.expect("complete")
}

/// Every record and file of `files`/`records` served by `inst`.
async fn serves(inst: &Instance, token: &str, files: &[(&str, Vec<u8>)], records: &[(&str, u64)]) {
    let mut c = connect(inst, token).await;
    for (key, n) in records {
        let got = c.data_get(key).await.expect("data get");
        assert_eq!(got["n"], Value::from(*n), "{key}");
    }
    for (key, body) in files {
        assert_eq!(
            c.file_get(key, None).await.expect("get").md5,
            md5_hex(body),
            "{key}"
        );
        assert_eq!(&step_tests::download(&mut c, key).await, body, "{key}");
    }
    let page = c.file_list(Default::default()).await.expect("list");
    let mut want: Vec<&str> = files.iter().map(|f| f.0).collect();
    want.sort_unstable();
    let got: Vec<&str> = page.files.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(got, want);
}

async fn a_legacy_bucket_is_served_after_the_upgrade(s: Setup) {
    // The earlier layout, written by a server without --coord.
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a/empty", Vec::new()),
        ("a/small", pattern(1000, 1)),
        ("b/large", pattern(300_000, 2)),
    ];
    let records: Vec<(&str, u64)> = vec![("r0", 0), ("r1", 1), ("r2", 2)];
    let token = {
        let old = instance(&s, &s.s3.endpoint, false, SECRET).await;
        let mut login = StepClient::connect(old.step).await.expect("connect");
        let token = login
            .login("alice", &password_for("alice"))
            .await
            .expect("login");
        let mut c = connect(&old, &token).await;
        for (key, body) in &files {
            if body.is_empty() {
                let plan = c
                    .file_save(Some(key), 0, SaveOptions::default())
                    .await
                    .expect("save empty");
                assert_eq!(plan.total_block, 0);
            } else {
                assert_eq!(upload(&mut c, key, body).await, md5_hex(body));
            }
        }
        for (key, n) in &records {
            c.data_save(Some(key), record(*n)).await.expect("data save");
        }
        token
    };

    // Two servers of this release start on it at once.
    let (a, b) = tokio::join!(
        instance(&s, &s.s3.endpoint, true, SECRET),
        instance(&s, &s.s3.endpoint, true, SECRET)
    );
    serves(&a, &token, &files, &records).await;
    serves(&b, &token, &files, &records).await;

    // Deleted after the upgrade: stays deleted, also for a server started
    // later.
    let mut c = connect(&a, &token).await;
    c.data_delete("r1").await.expect("data delete");
    c.file_delete("a/small").await.expect("file delete");
    drop((a, b));
    let later = instance(&s, &s.s3.endpoint, true, SECRET).await;
    let mut c = connect(&later, &token).await;
    assert!(matches!(
        c.data_get("r1").await,
        Err(ClientError::Refused { code: 404, .. })
    ));
    assert!(matches!(
        c.file_get("a/small", None).await,
        Err(ClientError::Refused { code: 404, .. })
    ));
    let files: Vec<_> = files.into_iter().filter(|f| f.0 != "a/small").collect();
    let records: Vec<_> = records.into_iter().filter(|r| r.0 != "r1").collect();
    serves(&later, &token, &files, &records).await;
}
