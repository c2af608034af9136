//! The disk store's own cases (the shared ones are the contract suite's).

use std::fs;
use std::sync::Arc;

use bytes::Bytes;
use step_core::digest::EMPTY_MD5;

use super::*;
use crate::store::api::{Deleted, FileMeta, Files, PlanRecord, StoreError};

/// Requests cut off at every await point, racing on a few keys, leave no
/// key locked, no upload open and nothing in the accounts. A disk
/// operation runs to its end on its blocking thread even when its caller
/// goes: those are waited for before the cleanup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_leave_no_lock_behind() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = DiskStore::open(tmp.path().join("store")).expect("open");
    let disk = Arc::clone(store.backend());
    crate::store::cancel_tests::cancel_everything(store.clone(), disk.settled()).await;
    disk.settled().await;
    assert_eq!(disk.locks.len(), 0, "keys still locked");
    assert!(lock(&disk.open).is_empty(), "uploads still open");
    assert_eq!(disk.ledger.stats().count, 0);
}

async fn complete(store: &Arc<DiskStore>, user: &str, key: &str, body: &[u8]) -> FileMeta {
    let plan = PlanRecord {
        size: body.len() as u64,
        block_size: 20480,
    };
    store
        .plan_upload(user, key, plan, None)
        .await
        .expect("plan");
    for (i, block) in body.chunks(20480).enumerate() {
        let up = store.open_upload(user, key).await.expect("open");
        up.put_block(i as u64, Bytes::copy_from_slice(block), None)
            .await
            .expect("block");
    }
    store.head(user, key).await.expect("complete")
}

#[tokio::test]
async fn checksums_that_describe_no_complete_file_are_dropped_at_open() {
    let tmp = tempfile::tempdir().expect("tmp");
    let root = tmp.path().join("store");
    let body: Vec<u8> = (0..50_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let other: Vec<u8> = body.iter().map(|b| b ^ 0x5A).collect();
    {
        let store = DiskStore::open(&root).expect("open");
        let meta = complete(&store, "u", "a", &body).await;
        assert!(meta.upload_id.is_some());
        complete(&store, "u", "b", &other).await;
    }
    let sums_a = root.join("sums/u/a");
    let sums_b = root.join("sums/u/b");
    // A crash kept b's old sidecar under a (another file's sums), and
    // left a sidecar for a key whose meta never landed.
    fs::copy(&sums_b, &sums_a).expect("copy");
    fs::copy(&sums_b, root.join("sums/u/ghost")).expect("copy");
    let store = DiskStore::open(&root).expect("reopen");
    assert!(!sums_a.exists(), "a's mismatched sidecar is removed");
    assert!(
        !root.join("sums/u/ghost").exists(),
        "a stray sidecar is removed"
    );
    assert!(sums_b.exists(), "b's own sidecar stays");
    // a is served unverified (and right), never refused for b's sums.
    let meta = store.head("u", "a").await.expect("meta");
    let got = store.read("u", &meta, 20480, 20480).await.expect("read");
    assert_eq!(got.as_ref(), &body[20480..40960]);
    // b is still checked.
    let meta = store.head("u", "b").await.expect("meta");
    let got = store
        .read("u", &meta, 40960, 50_000 - 40960)
        .await
        .expect("read");
    assert_eq!(got.as_ref(), &other[40960..]);
}

#[tokio::test]
async fn a_meta_from_before_upload_ids_never_matches_a_scoped_delete() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = DiskStore::open(tmp.path().join("store")).expect("open");
    complete(&store, "u", "old", b"hello").await;
    // Rewrite the meta as an older server wrote it: no upload_id.
    let meta_path = store.backend().at(Area::Meta, &Disk::encoded("u", "old"));
    let mut meta: serde_json::Value =
        serde_json::from_slice(&fs::read(&meta_path).expect("read")).expect("json");
    let id = meta["upload_id"].as_str().expect("id").to_owned();
    meta.as_object_mut().expect("object").remove("upload_id");
    fs::write(&meta_path, serde_json::to_vec(&meta).expect("json")).expect("write");
    assert!(matches!(
        store.delete_file("u", "old", Some(&id)).await,
        Err(StoreError::OtherUpload)
    ));
    assert_eq!(
        store.delete_file("u", "old", None).await.expect("delete"),
        Deleted::File
    );
    assert!(
        !store
            .backend()
            .at(Area::Sums, &Disk::encoded("u", "old"))
            .exists(),
        "sums go with the file"
    );
}

/// The cost of a listing page over many files (run by hand, in release:
/// `cargo test --release -p step-server --lib listing_cost -- --ignored --nocapture`).
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn listing_cost() {
    let tmp = tempfile::tempdir().expect("tmp");
    let store = DiskStore::open(tmp.path().join("store")).expect("open");
    for n in [10_000usize, 100_000] {
        let user = format!("u{n}");
        let dir = store.root().join("meta").join(names::encode(&user));
        fs::create_dir_all(&dir).expect("dir");
        for i in 0..n {
            let meta = FileMeta {
                key: format!("photos/{i:07}.jpg"),
                size: 1,
                md5: EMPTY_MD5.to_owned(),
                upload_id: None,
                completed_unix: 0,
            };
            fs::write(
                dir.join(names::encode(&meta.key)),
                serde_json::to_vec(&meta).expect("json"),
            )
            .expect("write");
        }
        for (what, prefix, after) in [
            ("first page", "photos/", None),
            ("middle page", "photos/", Some("photos/0005000.jpg")),
            ("narrow prefix, whole", "photos/00000", None),
        ] {
            let t = std::time::Instant::now();
            let page = store
                .list_files(&user, prefix, after, 100)
                .await
                .expect("list");
            assert_eq!(page.files.len(), 100);
            eprintln!("{n} files, {what} of 100: {:?}", t.elapsed());
        }
    }
}
