//! A bucket in the layout of releases before fencing, as their servers left
//! it (written by this release alone, whose layout is unchanged, and one
//! file and record written object by object from the old format), served
//! by coordinated instances of this release.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde_json::{Map, Value, json};
use step_core::digest::md5_hex;
use step_core::plan::total_blocks;

use super::super::coord::{Coord, MemoryCoord};
use super::super::names::{key_seg, user_seg};
use super::super::{ObjectStorage, StoreLimits};
use super::{LAYOUT_FENCED, LAYOUT_MARKER, MIGRATION_LEASE, Migrated};
use crate::store::api::{Files, PlanRecord, Records, StoreError, Upkeep};

const BS: u64 = 20480;
const PREFIX: &str = "pre/fix";

fn body(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn record(n: u64) -> Map<String, Value> {
    let Value::Object(m) = json!({"n": n, "text": format!("record {n}")}) else {
        unreachable!()
    };
    m
}

async fn upload(s: &ObjectStorage, user: &str, key: &str, data: &[u8]) {
    let plan = PlanRecord {
        size: data.len() as u64,
        block_size: BS,
    };
    let out = s.plan_upload(user, key, plan, None).await.expect("plan");
    if out.md5.is_some() {
        return;
    }
    for i in 0..total_blocks(data.len() as u64, BS) {
        let w = s.open_upload(user, key).await.expect("open");
        let start = (i * BS) as usize;
        let end = (start + BS as usize).min(data.len());
        w.put_block(i, Bytes::copy_from_slice(&data[start..end]), None)
            .await
            .expect("block");
    }
}

/// What the legacy bucket holds: files (user, key, content) and records
/// (user, key, n).
struct Legacy {
    files: Vec<(&'static str, String, Vec<u8>)>,
    records: Vec<(&'static str, String, u64)>,
}

/// A bucket as servers of the earlier release left it: most through this
/// release alone (the same layout), and one file and one record written
/// object by object as the earlier release stored them.
async fn legacy_bucket() -> (Arc<InMemory>, Legacy) {
    let mem = Arc::new(InMemory::new());
    let alone = ObjectStorage::new(
        Arc::clone(&mem) as Arc<dyn ObjectStore>,
        PREFIX,
        StoreLimits::default(),
    );
    let mut legacy = Legacy {
        files: Vec::new(),
        records: Vec::new(),
    };
    for (i, len) in [0usize, 1, 5000, 3 * BS as usize + 7]
        .into_iter()
        .enumerate()
    {
        let user = if i % 2 == 0 { "ann" } else { "bob" };
        let key = format!("dir/file-{i}");
        let data = body(len, i as u32);
        upload(&alone, user, &key, &data).await;
        legacy.files.push((user, key, data));
    }
    for n in 0..3u64 {
        let key = format!("rec-{n}");
        alone
            .record_create("ann", &key, record(n))
            .await
            .expect("record");
        legacy.records.push(("ann", key, n));
    }
    // Written object by object, in the earlier release's format.
    let (us, ks) = (user_seg("bob"), key_seg("by-hand"));
    let data = body(12_345, 77);
    let meta = json!({
        "key": "by-hand", "size": data.len(), "md5": md5_hex(&data),
        "upload_id": "0123456789abcdef0123456789abcdef", "completed_unix": 1_700_000_000u64,
    });
    let put = |parts: Vec<&str>, bytes: Vec<u8>| {
        let mem = Arc::clone(&mem);
        let path = Path::from_iter(PREFIX.split('/').chain(parts));
        async move { mem.put(&path, PutPayload::from(bytes)).await.expect("put") }
    };
    put(
        vec!["file", &us, &ks, "0123456789abcdef0123456789abcdef"],
        data.clone(),
    )
    .await;
    put(vec!["meta", &us, &ks], meta.to_string().into_bytes()).await;
    put(
        vec!["rec", &us, &key_seg("hand-rec")],
        serde_json::to_vec(&record(99)).expect("json"),
    )
    .await;
    legacy.files.push(("bob", "by-hand".into(), data));
    legacy.records.push(("bob", "hand-rec".into(), 99));
    (mem, legacy)
}

fn node(mem: &Arc<InMemory>, coord: &MemoryCoord) -> ObjectStorage {
    ObjectStorage::coordinated(
        Arc::clone(mem) as Arc<dyn ObjectStore>,
        PREFIX,
        StoreLimits::default(),
        Some(Arc::new(coord.clone()) as Arc<dyn Coord>),
    )
}

/// Every legacy record and file is served by `s`: content, md5, listing.
async fn serves_all(s: &ObjectStorage, legacy: &Legacy) {
    for (user, key, n) in &legacy.records {
        assert_eq!(
            s.record_get(user, key).await.expect("record"),
            record(*n),
            "{key}"
        );
    }
    for (user, key, data) in &legacy.files {
        let meta = s.head(user, key).await.expect("head");
        assert_eq!(meta.size, data.len() as u64, "{key}");
        assert_eq!(meta.md5, md5_hex(data), "{key}");
        let got = s.read(user, &meta, 0, meta.size).await.expect("read");
        assert_eq!(got.as_ref(), data.as_slice(), "{key}");
    }
    for user in ["ann", "bob"] {
        let mut want: Vec<&str> = legacy
            .files
            .iter()
            .filter(|f| f.0 == user)
            .map(|f| f.1.as_str())
            .collect();
        want.sort_unstable();
        let page = s.list_files(user, "", None, 100).await.expect("list");
        let got: Vec<&str> = page.files.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(got, want, "{user}");
    }
}

/// No object of the earlier layout is left: no `rec/`, only empty `meta/`.
async fn no_legacy_left(mem: &Arc<InMemory>) {
    let recs = mem
        .list(Some(&Path::from(format!("{PREFIX}/rec"))))
        .collect::<Vec<_>>()
        .await;
    assert!(recs.is_empty(), "{recs:?}");
    let metas: Vec<_> = mem
        .list(Some(&Path::from(format!("{PREFIX}/meta"))))
        .map(|m| m.expect("list"))
        .collect()
        .await;
    assert!(!metas.is_empty());
    assert!(metas.iter().all(|m| m.size == 0), "{metas:?}");
}

#[tokio::test]
async fn a_legacy_bucket_is_served_after_the_upgrade_and_deletes_stay() {
    let (mem, legacy) = legacy_bucket().await;
    let coord = MemoryCoord::new();
    let a = node(&mem, &coord);
    // Its sweep before the upgrade takes nothing: the legacy files'
    // content has no pointer yet.
    let far = SystemTime::now() + Duration::from_secs(30 * 86_400);
    a.sweep_expired(far).await.expect("sweep");
    // Any request migrates first (the server also starts it at once).
    serves_all(&a, &legacy).await;
    no_legacy_left(&mem).await;
    assert_eq!(
        coord
            .pointer(LAYOUT_MARKER)
            .await
            .expect("marker")
            .as_deref(),
        Some(LAYOUT_FENCED)
    );
    let b = node(&mem, &coord);
    assert_eq!(b.upgrade().await.expect("upgrade"), Migrated::default());
    serves_all(&b, &legacy).await;

    // Deleted after the upgrade: gone for good, on every instance, at every
    // later start, and after the sweep.
    a.record_delete("ann", "rec-1")
        .await
        .expect("delete record");
    a.delete_file("ann", "dir/file-2", None)
        .await
        .expect("delete file");
    b.sweep_expired(far).await.expect("sweep");
    let c = node(&mem, &coord);
    assert_eq!(c.upgrade().await.expect("upgrade"), Migrated::default());
    assert!(matches!(
        c.record_get("ann", "rec-1").await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        c.head("ann", "dir/file-2").await,
        Err(StoreError::NotFound)
    ));
    let rest = Legacy {
        files: legacy
            .files
            .into_iter()
            .filter(|f| f.1 != "dir/file-2")
            .collect(),
        records: legacy
            .records
            .into_iter()
            .filter(|r| r.1 != "rec-1")
            .collect(),
    };
    serves_all(&c, &rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_starting_at_once_migrate_once() {
    let (mem, legacy) = legacy_bucket().await;
    let coord = MemoryCoord::new();
    let nodes: Vec<ObjectStorage> = (0..3).map(|_| node(&mem, &coord)).collect();
    let done = futures::future::join_all(nodes.iter().map(ObjectStorage::upgrade)).await;
    let done: Vec<Migrated> = done.into_iter().map(|d| d.expect("upgrade")).collect();
    let converted = done.iter().filter(|d| **d != Migrated::default()).count();
    assert_eq!(converted, 1, "{done:?}");
    let total = done.iter().fold(Migrated::default(), |t, d| Migrated {
        records: t.records + d.records,
        files: t.files + d.files,
    });
    assert_eq!(
        total,
        Migrated {
            records: legacy.records.len() as u64,
            files: legacy.files.len() as u64,
        }
    );
    // One object per record: nothing converted twice.
    let recv = mem
        .list(Some(&Path::from(format!("{PREFIX}/recv"))))
        .collect::<Vec<_>>()
        .await;
    assert_eq!(recv.len(), legacy.records.len());
    for n in &nodes {
        serves_all(n, &legacy).await;
    }
}

#[tokio::test]
async fn a_migration_cut_short_completes_at_the_next_start() {
    let (mem, legacy) = legacy_bucket().await;
    let coord = MemoryCoord::new();
    let a = node(&mem, &coord);
    // Killed after its second conversion: that key has its pointer but
    // keeps its legacy object.
    a.backend().migrate_budget.store(1, Ordering::Release);
    assert!(a.upgrade().await.is_err());
    assert_eq!(coord.pointer(LAYOUT_MARKER).await.expect("marker"), None);
    assert_eq!(coord.leases_held(), 0, "its lease went with it");
    // Until the bucket is migrated, it is "unavailable", never empty.
    assert!(matches!(
        a.record_get("ann", "rec-0").await,
        Err(StoreError::Unavailable(_))
    ));
    drop(a);
    let b = node(&mem, &coord);
    let done = b.upgrade().await.expect("upgrade");
    assert_eq!(
        done,
        Migrated {
            records: legacy.records.len() as u64 - 2,
            files: legacy.files.len() as u64,
        }
    );
    no_legacy_left(&mem).await;
    serves_all(&b, &legacy).await;
    let recv = mem
        .list(Some(&Path::from(format!("{PREFIX}/recv"))))
        .collect::<Vec<_>>()
        .await;
    assert_eq!(recv.len(), legacy.records.len(), "nothing converted twice");
}

#[tokio::test]
async fn while_another_instance_migrates_requests_answer_unavailable() {
    let (mem, legacy) = legacy_bucket().await;
    let coord = MemoryCoord::new();
    // Another instance holds the migration lease.
    let migrating = coord.lease(MIGRATION_LEASE).await.expect("lease");
    let a = node(&mem, &coord);
    let Err(StoreError::Unavailable(why)) = a.record_get("ann", "rec-0").await else {
        panic!("served before the upgrade");
    };
    assert!(why.contains("upgraded"), "{why}");
    assert!(matches!(
        a.list_files("ann", "", None, 10).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(a.ready().await.is_err(), "not ready while upgrading");
    drop(migrating);
    a.upgrade().await.expect("upgrade");
    a.ready().await.expect("ready");
    serves_all(&a, &legacy).await;
}

#[tokio::test]
async fn a_key_written_by_this_release_wins_over_its_legacy_object() {
    let (mem, legacy) = legacy_bucket().await;
    let coord = MemoryCoord::new();
    let a = node(&mem, &coord);
    let newer = body(777, 5);
    a.upgrade().await.expect("upgrade");
    a.delete_file("ann", "dir/file-0", None)
        .await
        .expect("delete");
    upload(&a, "ann", "dir/file-0", &newer).await;
    // A legacy meta for the same key appears again (an old server still
    // running): the pointer wins when the migration runs again.
    let (us, ks) = (user_seg("ann"), key_seg("dir/file-0"));
    let old = json!({"key": "dir/file-0", "size": 0, "md5": md5_hex(b""), "upload_id": "old"});
    mem.put(
        &Path::from_iter(PREFIX.split('/').chain(["meta", &us, &ks])),
        PutPayload::from(old.to_string().into_bytes()),
    )
    .await
    .expect("put");
    coord
        .lease("x")
        .await
        .expect("lease")
        .swap(LAYOUT_MARKER, Some(LAYOUT_FENCED), None)
        .await
        .expect("unmark");
    let b = node(&mem, &coord);
    assert_eq!(b.upgrade().await.expect("upgrade"), Migrated::default());
    let meta = b.head("ann", "dir/file-0").await.expect("head");
    assert_eq!(meta.md5, md5_hex(&newer));
    no_legacy_left(&mem).await;
    drop(legacy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_waiting_for_another_ones_migration_answers_unavailable_meanwhile() {
    let (mem, legacy) = legacy_bucket().await;
    let coord = MemoryCoord::new();
    // Another server is migrating (holds the lease).
    let other = coord.lease(MIGRATION_LEASE).await.expect("lease");
    let a = node(&mem, &coord);
    let driver = {
        let a = a.clone();
        tokio::spawn(async move { a.upgrade().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let Err(StoreError::Unavailable(why)) = a.head("ann", "dir/file-0").await else {
        panic!("served before the upgrade");
    };
    assert!(why.contains("upgraded"), "{why}");
    assert!(
        !driver.is_finished(),
        "the start-up task waits for the lease"
    );
    // The other server stops without finishing: this one takes over.
    drop(other);
    let done = driver.await.expect("task").expect("upgrade");
    assert_eq!(done.files, legacy.files.len() as u64);
    serves_all(&a, &legacy).await;
}
