//! [`ObjectStorage`] against `object_store`'s in-memory store, through a
//! decorator that counts the bytes crossing to and from the store and keeps
//! the size of every multipart part.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::memory::InMemory;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
    PutMultipartOptions, PutOptions, PutResult, UploadPart,
};
use step_core::digest::md5_hex;

use super::io::lock;
use super::names::{KEY_ORDERED_BYTES, key_seg, names, user_seg};
use super::*;
use crate::store::api::{Deleted, Files, Records, UnfinishedStats, Upkeep};
use crate::store::sums::CHUNK;
use serde_json::{Map, Value};
use std::time::SystemTime;
use step_core::digest::EMPTY_MD5;
use step_core::plan::total_blocks;

const BS: u64 = 20480;

/// Counts what crosses between the server and the store.
#[derive(Debug, Default)]
struct Counters {
    put_bytes: AtomicU64,
    got_bytes: AtomicU64,
    /// Sizes of every multipart part, in order of put_part calls, by object.
    parts: Mutex<Vec<(Path, u64)>>,
    /// Requests by kind (PUT, GET, HEAD, DELETE, LIST).
    requests: Mutex<std::collections::BTreeMap<&'static str, u64>>,
}

impl Counters {
    fn count(&self, kind: &'static str) {
        *lock(&self.requests).entry(kind).or_default() += 1;
    }

    /// The requests counted since the last call.
    fn take(&self) -> std::collections::BTreeMap<&'static str, u64> {
        std::mem::take(&mut *lock(&self.requests))
    }
}

#[derive(Debug)]
struct Recording {
    inner: Arc<InMemory>,
    counters: Arc<Counters>,
    /// Every call yields to the runtime first, so requests interleave (and
    /// can be cancelled) inside one store operation.
    yields: bool,
}

impl Recording {
    async fn turn(&self) {
        if self.yields {
            tokio::task::yield_now().await;
        }
    }
}

impl fmt::Display for Recording {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Recording({})", self.inner)
    }
}

#[derive(Debug)]
struct RecordingUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    counters: Arc<Counters>,
}

#[async_trait]
impl MultipartUpload for RecordingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let len = data.content_length() as u64;
        self.counters.put_bytes.fetch_add(len, Ordering::Relaxed);
        lock(&self.counters.parts).push((self.location.clone(), len));
        self.inner.put_part(data)
    }
    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }
    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for Recording {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.turn().await;
        self.counters.count("PUT");
        self.counters
            .put_bytes
            .fetch_add(payload.content_length() as u64, Ordering::Relaxed);
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.turn().await;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(RecordingUpload {
            inner,
            location: location.clone(),
            counters: Arc::clone(&self.counters),
        }))
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.turn().await;
        self.counters
            .count(if options.head { "HEAD" } else { "GET" });
        let r = self.inner.get_opts(location, options).await?;
        if !r.meta.location.as_ref().is_empty() {
            self.counters
                .got_bytes
                .fetch_add(r.range.end - r.range.start, Ordering::Relaxed);
        }
        Ok(r)
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let counters = Arc::clone(&self.counters);
        let counted = futures::StreamExt::inspect(locations, move |_| counters.count("DELETE"));
        self.inner.delete_stream(Box::pin(counted))
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counters.count("LIST");
        self.inner.list(prefix)
    }
    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counters.count("LIST");
        self.inner.list_with_offset(prefix, offset)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn recording() -> (Arc<InMemory>, Arc<Counters>, ObjectStorage) {
    recording_with(false)
}

fn recording_with(yields: bool) -> (Arc<InMemory>, Arc<Counters>, ObjectStorage) {
    let mem = Arc::new(InMemory::new());
    let counters = Arc::new(Counters::default());
    let store = Arc::new(Recording {
        inner: Arc::clone(&mem),
        counters: Arc::clone(&counters),
        yields,
    });
    let storage = ObjectStorage::new(store, "pre/fix", StoreLimits::default());
    (mem, counters, storage)
}

fn over(mem: &Arc<InMemory>) -> ObjectStorage {
    ObjectStorage::new(
        Arc::clone(mem) as Arc<dyn ObjectStore>,
        "pre/fix",
        StoreLimits::default(),
    )
}

fn body(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

fn plan_of(len: usize) -> PlanRecord {
    PlanRecord {
        size: len as u64,
        block_size: BS,
    }
}

fn block(data: &[u8], i: u64) -> Bytes {
    let start = (i * BS) as usize;
    let end = (start + BS as usize).min(data.len());
    Bytes::copy_from_slice(&data[start..end])
}

async fn put(s: &ObjectStorage, user: &str, key: &str, data: &[u8], i: u64) -> Option<String> {
    let w = s.open_upload(user, key).await.expect("open");
    w.put_block(i, block(data, i), None).await.expect("block")
}

/// Upload `data` in order; returns the md5 the last block reported.
async fn upload(s: &ObjectStorage, user: &str, key: &str, data: &[u8]) -> String {
    let out = s
        .plan_upload(user, key, plan_of(data.len()), None)
        .await
        .expect("plan");
    if let Some(md5) = out.md5 {
        return md5;
    }
    let total = total_blocks(data.len() as u64, BS);
    let mut md5 = None;
    for i in 0..total {
        let got = put(s, user, key, data, i).await;
        assert_eq!(
            got.is_some(),
            i + 1 == total,
            "only the last block completes"
        );
        md5 = got;
    }
    md5.expect("complete")
}

/// A fixed permutation of `0..n` (deterministic, far from in order).
fn shuffled(n: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

#[test]
fn segments_are_safe_injective_and_keep_key_order() {
    let long_a = format!("{}a", "z".repeat(300));
    let long_b = format!("{}b", "z".repeat(300));
    let keys = [
        "", ".", "..", "/", "a/b", "a", "ab", "a\u{0}", "é", "~x", "%2E", &long_a, &long_b,
    ];
    let mut segs = std::collections::HashSet::new();
    for k in keys {
        let s = key_seg(k);
        assert!(
            !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase()),
            "{s}"
        );
        assert!(segs.insert(s.clone()), "injective");
        // Survives object_store's Path unchanged, as one segment.
        let p = Path::from("x").join(s.as_str());
        assert_eq!(p.filename(), Some(s.as_str()));
        let u = user_seg(k);
        assert!(u.bytes().all(|b| b.is_ascii_lowercase()));
    }
    let short: Vec<&str> = vec!["", "a", "a\u{0}", "ab", "b", "é", "\u{10FFFF}"];
    for w in short.windows(2) {
        assert!(key_seg(w[0]) < key_seg(w[1]), "{:?} < {:?}", w[0], w[1]);
    }
    let kilo = "é".repeat(512);
    assert!(key_seg(&kilo).len() < 600 && user_seg(&kilo).len() < 140);
}

#[tokio::test]
async fn records_are_create_only() {
    let s = ObjectStorage::in_memory();
    let mut rec = Map::new();
    rec.insert("v".into(), Value::from(1));
    for key in ["k", "..", "a/b/../c", "", "ünï", &"x".repeat(1000)] {
        s.record_create("u", key, rec.clone())
            .await
            .expect("create");
        assert!(matches!(
            s.record_create("u", key, Map::new()).await,
            Err(StoreError::Exists)
        ));
        assert_eq!(s.record_get("u", key).await.expect("get"), rec);
        assert!(matches!(
            s.record_get("other", key).await,
            Err(StoreError::NotFound)
        ));
        s.record_delete("u", key).await.expect("delete");
        assert!(matches!(
            s.record_get("u", key).await,
            Err(StoreError::NotFound)
        ));
        assert!(matches!(
            s.record_delete("u", key).await,
            Err(StoreError::NotFound)
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_record_creates_one_wins() {
    let s = ObjectStorage::in_memory();
    let tries = (0..16).map(|i| {
        let s = s.clone();
        tokio::spawn(async move {
            let mut rec = Map::new();
            rec.insert("who".into(), Value::from(i));
            s.record_create("u", "k", rec).await
        })
    });
    let results = futures::future::join_all(tries).await;
    let won = results.iter().filter(|r| matches!(r, Ok(Ok(())))).count();
    let lost = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(StoreError::Exists))))
        .count();
    assert_eq!((won, lost), (1, 15));
}

#[tokio::test]
async fn size_zero_completes_at_save() {
    let s = ObjectStorage::in_memory();
    let out = s
        .plan_upload("u", "empty", plan_of(0), None)
        .await
        .expect("plan");
    assert_eq!(out.md5.as_deref(), Some(EMPTY_MD5));
    assert!(out.missing.is_empty() && out.upload_id.is_none());
    let meta = s.head("u", "empty").await.expect("head");
    assert_eq!((meta.size, meta.md5.as_str()), (0, EMPTY_MD5));
    assert!(s.read("u", &meta, 0, 0).await.expect("read").is_empty());
    assert!(matches!(
        s.plan_upload("u", "empty", plan_of(0), None).await,
        Err(StoreError::Exists)
    ));
    assert!(matches!(
        s.open_upload("u", "empty").await,
        Err(StoreError::AlreadyComplete)
    ));
    assert_eq!(
        s.delete_file("u", "empty", None).await.expect("del"),
        Deleted::File
    );
    assert!(matches!(
        s.head("u", "empty").await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn in_order_small_upload_reads_back() {
    let s = ObjectStorage::in_memory();
    let data = body(50_000, 1);
    assert!(matches!(s.head("u", "f").await, Err(StoreError::NotFound)));
    assert!(matches!(
        s.open_upload("u", "f").await,
        Err(StoreError::NotPlanned)
    ));
    let out = s
        .plan_upload("u", "f", plan_of(data.len()), None)
        .await
        .expect("plan");
    assert_eq!(out.missing, vec![[0, 3]]);
    assert!(matches!(
        s.head("u", "f").await,
        Err(StoreError::Unfinished)
    ));
    assert_eq!(s.unfinished_stats().count, 1);
    put(&s, "u", "f", &data, 0).await;
    put(&s, "u", "f", &data, 1).await;
    assert_eq!(
        s.unfinished_stats(),
        UnfinishedStats {
            count: 1,
            bytes_planned: 50_000,
            bytes_received: 40_960
        }
    );
    let md5 = put(&s, "u", "f", &data, 2).await.expect("md5");
    assert_eq!(md5, md5_hex(&data));
    assert_eq!(s.unfinished_stats(), UnfinishedStats::default());
    let meta = s.head("u", "f").await.expect("head");
    assert_eq!(meta.size, 50_000);
    assert_eq!(meta.upload_id, out.upload_id);
    for (off, len) in [(0u64, 50_000u64), (20480, 20480), (49_999, 1), (7, 3)] {
        let got = s.read("u", &meta, off, len).await.expect("read");
        assert_eq!(got.as_ref(), &data[off as usize..(off + len) as usize]);
    }
    assert!(s.read("u", &meta, 49_999, 2).await.is_err());
    // A repeat after completion.
    let w = s.open_upload("u", "f").await;
    assert!(matches!(w, Err(StoreError::AlreadyComplete)));
    // Nothing of the upload is left in the bucket.
    let left: Vec<_> = s
        .object_store()
        .list(Some(&Path::from("up")))
        .try_collect()
        .await
        .expect("list");
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn out_of_order_repeated_large_upload_uses_lawful_parts() {
    let (mem, counters, s) = recording();
    let len = 12 << 20;
    let data = body(len, 7);
    let total = total_blocks(len as u64, BS);
    let out = s
        .plan_upload("u", "big", plan_of(len), None)
        .await
        .expect("plan");
    let upload_id = out.upload_id.expect("id");
    let order = shuffled(total);
    let mut md5s = Vec::new();
    for (n, &i) in order.iter().enumerate() {
        let w = s.open_upload("u", "big").await.expect("open");
        if let Some(m) = w
            .put_block(i, block(&data, i), Some(upload_id.clone()))
            .await
            .expect("block")
        {
            md5s.push(m);
        }
        // Every tenth block is sent twice.
        if n % 10 == 0 && n + 1 < order.len() {
            assert_eq!(put(&s, "u", "big", &data, i).await, None);
        }
    }
    assert_eq!(
        md5s,
        vec![md5_hex(&data)],
        "exactly one block reports the md5"
    );
    let meta = s.head("u", "big").await.expect("head");
    assert_eq!(
        (meta.size, meta.md5.as_str()),
        (len as u64, md5s[0].as_str())
    );
    let got = s.read("u", &meta, 0, len as u64).await.expect("read");
    assert!(got.as_ref() == data.as_slice());
    // What reached the store: parts of ≥ 5 MiB but the last, one object.
    let parts = lock(&counters.parts).clone();
    assert!(parts.len() >= 2, "{parts:?}");
    let (last, rest) = parts.split_last().expect("parts");
    assert!(rest.iter().all(|(_, n)| *n >= 5 << 20));
    assert!(last.1 <= PART_MIN + BS);
    assert_eq!(parts.iter().map(|p| p.1).sum::<u64>(), len as u64);
    let content: Vec<_> = mem
        .list(Some(&Path::from("pre/fix/file")))
        .try_collect()
        .await
        .expect("list");
    let sizes: Vec<u64> = content.iter().map(|m| m.size).collect();
    assert_eq!(
        sizes,
        vec![len as u64, (len as u64 / CHUNK) * 4],
        "content, sums"
    );
}

/// Bytes put and got per byte of content, printed (run with --nocapture);
/// asserted at what the module docs say.
#[tokio::test]
async fn bytes_crossing_and_written_per_content_byte() {
    #[derive(Clone, Copy)]
    enum Order {
        Forward,
        Shuffled,
        Reversed,
    }
    use Order::*;
    // name, size, order, restart half-way, (put, got) per byte expected.
    for (name, len, order, restart, want_put, want_got) in [
        // Small files keep their blocks in memory for the one PUT.
        ("small, in order", 1 << 20, Forward, false, 2.0, 0.0),
        ("small, shuffled", 1 << 20, Shuffled, false, 2.0, 0.0),
        // ... but what came before a restart is read back.
        ("small, in order, restart", 1 << 20, Forward, true, 2.0, 0.5),
        ("large, in order", 20 << 20, Forward, false, 2.0, 0.0),
        ("large, shuffled", 20 << 20, Shuffled, false, 2.0, 0.0),
        // 32 MiB of early blocks are held; the other 8 MiB read back.
        ("large, reversed", 40 << 20, Reversed, false, 2.0, 0.2),
        // The new instance reads back what was staged before it (half) and
        // takes the rest as it comes; the first one's part (8 of its 10
        // MiB) is lost with it.
        (
            "large, in order, restart",
            20 << 20,
            Forward,
            true,
            2.4,
            0.5,
        ),
    ] {
        let (mem, counters, mut s) = recording();
        let data = body(len, 3);
        let total = total_blocks(len as u64, BS);
        s.plan_upload("u", "f", plan_of(len), None)
            .await
            .expect("plan");
        let base_put = counters.put_bytes.load(Ordering::Relaxed);
        let indexes: Vec<u64> = match order {
            Forward => (0..total).collect(),
            Shuffled => shuffled(total),
            Reversed => (0..total).rev().collect(),
        };
        for (n, i) in indexes.into_iter().enumerate() {
            if restart && n as u64 == total / 2 {
                s = ObjectStorage::new(
                    Arc::clone(s.object_store()),
                    "pre/fix",
                    StoreLimits::default(),
                );
                s.plan_upload(
                    "u",
                    "f",
                    plan_of(len),
                    s.upload_status("u", "f")
                        .await
                        .ok()
                        .map(|u| u.upload_id)
                        .as_deref(),
                )
                .await
                .expect("resume");
            }
            put(&s, "u", "f", &data, i).await;
        }
        let put_bytes = counters.put_bytes.load(Ordering::Relaxed) - base_put;
        // (Includes a state object's few hundred bytes after the restart.)
        let got_bytes = counters.got_bytes.load(Ordering::Relaxed);
        let meta = s.head("u", "f").await.expect("head");
        assert_eq!(meta.md5, md5_hex(&data), "{name}");
        let meta_bytes = serde_json::to_vec(&meta).expect("json").len() as u64;
        let sums_bytes = (len as u64).div_ceil(CHUNK) * 4;
        let content_put = (put_bytes - meta_bytes - sums_bytes) as f64 / len as f64;
        let got = got_bytes as f64 / len as f64;
        println!("{name}: {len} B: put {content_put:.3}/B, got {got:.3}/B");
        assert!(
            (content_put - want_put).abs() < 0.01,
            "{name}: put {content_put}"
        );
        assert!((got - want_got).abs() < 0.01, "{name}: got {got}");
        assert_eq!(
            s.backend().held_total.load(Ordering::Relaxed),
            0,
            "{name}: memory budget returned"
        );
        let stored: u64 = mem
            .list(None)
            .map_ok(|m| m.size)
            .try_fold(0, |a, b| async move { Ok(a + b) })
            .await
            .expect("list");
        assert_eq!(
            stored,
            len as u64 + sums_bytes + meta_bytes,
            "{name}: only the file is left"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_blocks_complete_exactly_once() {
    let (_, counters, s) = recording();
    // Large enough for parts written while blocks arrive.
    let len = 12 << 20;
    let data = Arc::new(body(len, 11));
    let total = total_blocks(len as u64, BS);
    s.plan_upload("u", "c", plan_of(len), None)
        .await
        .expect("plan");
    // Every block twice, all at once.
    let tasks = (0..2 * total).map(|n| {
        let (s, data) = (s.clone(), Arc::clone(&data));
        tokio::spawn(async move {
            let i = n % total;
            let w = s.open_upload("u", "c").await?;
            w.put_block(i, block(&data, i), None).await
        })
    });
    let results = futures::future::join_all(tasks).await;
    let mut md5s = Vec::new();
    for r in results {
        match r.expect("task") {
            Ok(Some(m)) => md5s.push(m),
            Ok(None) | Err(StoreError::AlreadyComplete) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert_eq!(md5s, vec![md5_hex(data.as_slice())]);
    let meta = s.head("u", "c").await.expect("head");
    let got = s.read("u", &meta, 0, len as u64).await.expect("read");
    assert!(got.as_ref() == data.as_slice());
    let parts = lock(&counters.parts).clone();
    let (_, rest) = parts.split_last().expect("parts");
    assert!(rest.iter().all(|(_, n)| *n >= 5 << 20), "{parts:?}");
}

#[tokio::test]
async fn a_new_save_supersedes_and_blocks_never_mix() {
    let s = ObjectStorage::in_memory();
    let a = body(60_000, 1);
    let b = body(60_000, 2);
    let first = s
        .plan_upload("u", "k", plan_of(a.len()), None)
        .await
        .expect("a");
    let id_a = first.upload_id.expect("id");
    let w_a = s.open_upload("u", "k").await.expect("open");
    put(&s, "u", "k", &a, 0).await;
    let second = s
        .plan_upload("u", "k", plan_of(b.len()), None)
        .await
        .expect("b");
    let id_b = second.upload_id.expect("id");
    assert_ne!(id_a, id_b);
    assert!(!second.resumed);
    assert_eq!(second.missing, vec![[0, 3]], "a's block is not b's");
    // A block naming a, or through a handle opened on a, is refused.
    let w = s.open_upload("u", "k").await.expect("open");
    assert!(matches!(
        w.put_block(1, block(&a, 1), Some(id_a.clone())).await,
        Err(StoreError::Superseded)
    ));
    assert!(matches!(
        w_a.put_block(1, block(&a, 1), None).await,
        Err(StoreError::NotPlanned)
    ));
    // Resume with the same plan keeps b.
    let again = s
        .plan_upload(
            "u",
            "k",
            plan_of(b.len()),
            s.upload_status("u", "k")
                .await
                .ok()
                .map(|u| u.upload_id)
                .as_deref(),
        )
        .await
        .expect("resume");
    assert!(again.resumed);
    assert_eq!(again.upload_id.as_deref(), Some(id_b.as_str()));
    let mut md5 = None;
    for i in 0..3 {
        let w = s.open_upload("u", "k").await.expect("open");
        md5 = w
            .put_block(i, block(&b, i), Some(id_b.clone()))
            .await
            .expect("block");
    }
    assert_eq!(md5, Some(md5_hex(&b)));
    assert!(matches!(
        s.plan_upload(
            "u",
            "k",
            plan_of(b.len()),
            s.upload_status("u", "k")
                .await
                .ok()
                .map(|u| u.upload_id)
                .as_deref()
        )
        .await,
        Err(StoreError::Exists)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_saves_leave_one_upload() {
    let s = ObjectStorage::in_memory();
    let tries = (0..8).map(|_| {
        let s = s.clone();
        tokio::spawn(async move { s.plan_upload("u", "r", plan_of(50_000), None).await })
    });
    let ids: Vec<String> = futures::future::join_all(tries)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("plan").upload_id.expect("id"))
        .collect();
    assert_eq!(s.unfinished_stats().count, 1);
    // Only the last SAVE's upload is in the bucket; a reload agrees.
    let fresh = ObjectStorage::new(Arc::clone(s.object_store()), "", StoreLimits::default());
    let out = fresh
        .plan_upload(
            "u",
            "r",
            plan_of(50_000),
            fresh
                .upload_status("u", "r")
                .await
                .ok()
                .map(|u| u.upload_id)
                .as_deref(),
        )
        .await
        .expect("resume");
    assert!(out.resumed);
    let current = out.upload_id.expect("id");
    assert!(ids.contains(&current));
    let states: Vec<_> = s
        .object_store()
        .list(Some(&Path::from("up")))
        .try_collect()
        .await
        .expect("list");
    assert_eq!(states.len(), 1, "one state, no blocks: {states:?}");
}

#[tokio::test]
async fn scoped_deletes() {
    let s = ObjectStorage::in_memory();
    let data = body(30_000, 5);
    let out = s
        .plan_upload("u", "d", plan_of(data.len()), None)
        .await
        .expect("plan");
    let id = out.upload_id.expect("id");
    put(&s, "u", "d", &data, 0).await;
    assert!(matches!(
        s.delete_file("u", "d", Some("nope")).await,
        Err(StoreError::OtherUpload)
    ));
    assert_eq!(
        s.delete_file("u", "d", Some(&id)).await.expect("del"),
        Deleted::UnfinishedUpload
    );
    assert!(matches!(s.head("u", "d").await, Err(StoreError::NotFound)));
    assert!(matches!(
        s.delete_file("u", "d", Some(&id)).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.unfinished_stats(), UnfinishedStats::default());
    let md5 = upload(&s, "u", "d", &data).await;
    let meta = s.head("u", "d").await.expect("head");
    assert_eq!(meta.md5, md5);
    let id = meta.upload_id.clone().expect("id");
    assert!(matches!(
        s.delete_file("u", "d", Some("nope")).await,
        Err(StoreError::OtherUpload)
    ));
    assert_eq!(
        s.delete_file("u", "d", Some(&id)).await.expect("del"),
        Deleted::File
    );
    assert!(matches!(
        s.read("u", &meta, 0, 10).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.delete_file("u", "d", None).await,
        Err(StoreError::NotFound)
    ));
    // Unscoped delete of an unfinished upload.
    s.plan_upload("u", "d", plan_of(10), None)
        .await
        .expect("plan");
    assert_eq!(
        s.delete_file("u", "d", None).await.expect("del"),
        Deleted::UnfinishedUpload
    );
    let left: Vec<_> = s
        .object_store()
        .list(None)
        .try_collect()
        .await
        .expect("list");
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_second_instance_serves_files_and_resumes_uploads() {
    let mem = Arc::new(InMemory::new());
    let data = body(300_000, 9);
    let half = body(200_000, 4);
    let md5 = {
        let s = over(&mem);
        let md5 = upload(&s, "u", "done", &data).await;
        s.plan_upload("u", "half", plan_of(half.len()), None)
            .await
            .expect("plan");
        for i in [0u64, 2, 3, 7] {
            put(&s, "u", "half", &half, i).await;
        }
        md5
        // Dropped without any shutdown: like a kill -9 (nothing local).
    };
    let s = over(&mem);
    let meta = s.head("u", "done").await.expect("head");
    assert_eq!(meta.md5, md5);
    let got = s.read("u", &meta, 100, 250_000).await.expect("read");
    assert_eq!(got.as_ref(), &data[100..250_100]);
    assert!(matches!(
        s.head("u", "half").await,
        Err(StoreError::Unfinished)
    ));
    s.recover().await.expect("recover");
    assert_eq!(
        s.unfinished_stats(),
        UnfinishedStats {
            count: 1,
            bytes_planned: 200_000,
            bytes_received: 4 * BS
        }
    );
    let out = s
        .plan_upload(
            "u",
            "half",
            plan_of(half.len()),
            s.upload_status("u", "half")
                .await
                .ok()
                .map(|u| u.upload_id)
                .as_deref(),
        )
        .await
        .expect("resume");
    assert!(out.resumed);
    assert_eq!(out.missing, vec![[1, 2], [4, 7], [8, 10]]);
    let mut md5 = None;
    for i in step_core::plan::from_ranges(&out.missing) {
        md5 = put(&s, "u", "half", &half, i).await;
    }
    assert_eq!(md5, Some(md5_hex(&half)));
    let page = s.list_files("u", "", None, 10).await.expect("list");
    assert_eq!(
        page.files
            .iter()
            .map(|f| f.key.as_str())
            .collect::<Vec<_>>(),
        ["done", "half"]
    );
}

#[tokio::test]
async fn a_completion_cut_short_is_finished_on_resume_or_repeat() {
    let mem = Arc::new(InMemory::new());
    let data = body(100_000, 2);
    let id = {
        let s = over(&mem);
        let out = s
            .plan_upload("u", "cut", plan_of(data.len()), None)
            .await
            .expect("plan");
        for i in 0..4 {
            put(&s, "u", "cut", &data, i).await;
        }
        out.upload_id.expect("id")
    };
    // The last block was staged, then the server died before completing.
    let s = over(&mem);
    let last = s.backend().block_path(&names("u", "cut"), &id, 4);
    mem.put(&last, PutPayload::from(block(&data, 4)))
        .await
        .expect("stage");
    assert!(matches!(
        s.head("u", "cut").await,
        Err(StoreError::Unfinished)
    ));
    let out = s
        .plan_upload(
            "u",
            "cut",
            plan_of(data.len()),
            s.upload_status("u", "cut")
                .await
                .ok()
                .map(|u| u.upload_id)
                .as_deref(),
        )
        .await
        .expect("resume");
    assert_eq!(out.md5, Some(md5_hex(&data)));
    assert!(out.missing.is_empty());
    assert_eq!(s.head("u", "cut").await.expect("head").md5, md5_hex(&data));

    // Same, finished by a repeated block instead of a SAVE.
    let id = {
        let s = over(&mem);
        let out = s
            .plan_upload("u", "cut2", plan_of(data.len()), None)
            .await
            .expect("plan");
        for i in 0..4 {
            put(&s, "u", "cut2", &data, i).await;
        }
        out.upload_id.expect("id")
    };
    let s = over(&mem);
    let last = s.backend().block_path(&names("u", "cut2"), &id, 4);
    mem.put(&last, PutPayload::from(block(&data, 4)))
        .await
        .expect("stage");
    assert_eq!(put(&s, "u", "cut2", &data, 1).await, Some(md5_hex(&data)));
}

#[tokio::test]
async fn leftovers_of_a_completed_upload_never_show() {
    let mem = Arc::new(InMemory::new());
    let data = body(30_000, 6);
    let s = over(&mem);
    let md5 = upload(&s, "u", "x", &data).await;
    let meta = s.head("u", "x").await.expect("head");
    // A crash after the meta, before the cleanup: state and a block remain.
    let n = names("u", "x");
    let upload_id = meta.upload_id.clone().expect("id");
    let state = UploadState {
        upload_id: upload_id.clone(),
        size: 30_000,
        block_size: BS,
        user: "u".into(),
        key: "x".into(),
        created_unix: 0,
        replace: None,
    };
    s.backend()
        .put_json(&s.backend().state_path(&n), &state)
        .await
        .expect("state");
    mem.put(
        &s.backend().block_path(&n, &upload_id, 0),
        PutPayload::from(block(&data, 0)),
    )
    .await
    .expect("block");
    let s = over(&mem);
    assert_eq!(s.head("u", "x").await.expect("head").md5, md5);
    assert!(matches!(
        s.open_upload("u", "x").await,
        Err(StoreError::AlreadyComplete)
    ));
    let left: Vec<_> = mem
        .list(Some(&Path::from("pre/fix/up")))
        .try_collect()
        .await
        .expect("list");
    assert!(left.is_empty(), "cleaned when loaded: {left:?}");
}

#[tokio::test]
async fn listing_in_key_order_with_pagination_and_prefix() {
    let s = ObjectStorage::in_memory();
    let long = "L".repeat(KEY_ORDERED_BYTES);
    let mut keys: Vec<String> = [
        "a", "a/b", "a/c", "ab", "b", "", "é", "a\u{0}", "zz", "a.b", "..",
    ]
    .iter()
    .map(|k| k.to_string())
    .collect();
    // Long keys sharing their first 256 bytes: a group sorted by hash.
    for tail in ["z", "a", "m", "b", "aa", ""] {
        keys.push(format!("{long}{tail}"));
    }
    keys.push(format!("{}x", "L".repeat(KEY_ORDERED_BYTES - 1)));
    for (i, k) in keys.iter().enumerate() {
        upload(&s, "u", k, &body(10 + i, i as u32)).await;
    }
    upload(&s, "other", "a", b"x").await;
    s.plan_upload("u", "a-unfinished", plan_of(100), None)
        .await
        .expect("plan");
    let mut expected = keys.clone();
    expected.sort();
    for (prefix, limit) in [
        ("", 1),
        ("", 3),
        ("", 100),
        ("a", 2),
        (&long[..], 2),
        ("LL", 4),
        ("nope", 5),
    ] {
        let mut seen = Vec::new();
        let mut after: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = s
                .list_files("u", prefix, after.as_deref(), limit)
                .await
                .expect("list");
            assert!(page.files.len() <= limit);
            pages += 1;
            assert!(pages < 100);
            seen.extend(page.files.iter().map(|f| f.key.clone()));
            match page.next {
                Some(n) => {
                    assert_eq!(Some(&n), page.files.last().map(|f| &f.key));
                    after = Some(n);
                }
                None => break,
            }
        }
        let want: Vec<String> = expected
            .iter()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        assert_eq!(seen, want, "prefix {prefix:?} limit {limit}");
    }
    let page = s.list_files("u", "a", Some("a/b"), 2).await.expect("list");
    let want: Vec<&str> = expected
        .iter()
        .filter(|k| k.starts_with('a') && k.as_str() > "a/b")
        .take(2)
        .map(String::as_str)
        .collect();
    assert_eq!(
        page.files
            .iter()
            .map(|f| f.key.as_str())
            .collect::<Vec<_>>(),
        want
    );
    let meta = &s
        .list_files("other", "", None, 10)
        .await
        .expect("list")
        .files;
    assert_eq!(meta.len(), 1);
    assert_eq!(meta[0].md5, md5_hex(b"x"));
}

#[tokio::test]
async fn idle_uploads_expire_and_stray_blocks_go() {
    let mem = Arc::new(InMemory::new());
    let limits = StoreLimits {
        upload_expiry: Duration::from_secs(3600),
        ..StoreLimits::default()
    };
    let s = ObjectStorage::new(Arc::clone(&mem) as Arc<dyn ObjectStore>, "", limits);
    let data = body(60_000, 1);
    s.plan_upload("u", "idle", plan_of(data.len()), None)
        .await
        .expect("plan");
    put(&s, "u", "idle", &data, 0).await;
    // A block of a superseded upload, landed after its discard.
    let stray = s.backend().block_path(&names("u", "idle"), "0123", 0);
    mem.put(&stray, PutPayload::from_static(b"stale"))
        .await
        .expect("stray");
    assert_eq!(s.sweep_expired(SystemTime::now()).await.expect("sweep"), 0);
    assert_eq!(s.unfinished_stats().count, 1);
    let later = SystemTime::now() + Duration::from_secs(7200);
    assert_eq!(s.sweep_expired(later).await.expect("sweep"), 1);
    assert_eq!(s.unfinished_stats(), UnfinishedStats::default());
    let left: Vec<_> = mem.list(None).try_collect().await.expect("list");
    assert!(left.is_empty(), "{left:?}");
    assert!(matches!(
        s.head("u", "idle").await,
        Err(StoreError::NotFound)
    ));
    // A fresh instance learns idle time from the bucket.
    s.plan_upload("u", "idle2", plan_of(10), None)
        .await
        .expect("plan");
    let fresh = ObjectStorage::new(Arc::clone(&mem) as Arc<dyn ObjectStore>, "", limits);
    assert_eq!(
        fresh.sweep_expired(SystemTime::now()).await.expect("sweep"),
        0
    );
    assert_eq!(fresh.sweep_expired(later).await.expect("sweep"), 1);
}

#[tokio::test]
async fn per_user_caps_on_unfinished_uploads() {
    let limits = StoreLimits {
        max_unfinished_uploads_per_user: 2,
        max_unfinished_bytes_per_user: 1000,
        ..StoreLimits::default()
    };
    let s = ObjectStorage::new(Arc::new(InMemory::new()), "p", limits);
    s.plan_upload("u", "a", plan_of(400), None)
        .await
        .expect("a");
    assert!(matches!(
        s.plan_upload("u", "b", plan_of(700), None).await,
        Err(StoreError::Quota(_))
    ));
    s.plan_upload("u", "b", plan_of(500), None)
        .await
        .expect("b");
    assert!(matches!(
        s.plan_upload("u", "c", plan_of(1), None).await,
        Err(StoreError::Quota(_))
    ));
    s.plan_upload("v", "c", plan_of(1), None)
        .await
        .expect("other user");
}

#[tokio::test]
async fn object_store_errors_map_to_store_errors() {
    assert!(matches!(
        store_err(object_store::Error::NotFound {
            path: "x".into(),
            source: "gone".into()
        }),
        StoreError::NotFound
    ));
    assert!(matches!(
        store_err(object_store::Error::Generic {
            store: "S3",
            source: "connection refused".into()
        }),
        StoreError::Unavailable(_)
    ));
    assert!(matches!(
        store_err(object_store::Error::NotImplemented {
            operation: "x".into(),
            implementer: "y".into()
        }),
        StoreError::Other(_)
    ));
}

#[tokio::test]
async fn ranged_reads_are_verified_against_the_sums() {
    let mem = Arc::new(InMemory::new());
    let s = over(&mem);
    let data = body(100_000, 8);
    upload(&s, "u", "v", &data).await;
    let meta = s.head("u", "v").await.expect("head");
    let n = names("u", "v");
    let content = s
        .backend()
        .content_path(&n, meta.upload_id.as_deref().expect("id"));
    // Rot one byte at rest.
    let mut rotten = data.clone();
    rotten[50_000] ^= 1;
    mem.put(&content, PutPayload::from(rotten))
        .await
        .expect("rot");
    let bad = s.read("u", &meta, 40_960, 20_480).await;
    assert!(
        matches!(bad, Err(StoreError::Integrity { offset: 49_152 })),
        "{bad:?}"
    );
    // Ranges not covering the bad chunk are served.
    let ok = s.read("u", &meta, 0, 20_480).await.expect("read");
    assert_eq!(ok.as_ref(), &data[..20_480]);
    let ok = s.read("u", &meta, 61_440, 38_560).await.expect("read");
    assert_eq!(ok.as_ref(), &data[61_440..]);
    // A shortened object is refused too.
    mem.put(&content, PutPayload::from(data[..90_000].to_vec()))
        .await
        .expect("cut");
    assert!(matches!(
        s.read("u", &meta, 81_920, 18_080).await,
        Err(StoreError::Integrity { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_superseded_or_deleted_large_upload_leaves_nothing_behind() {
    let (mem, _, s) = recording();
    let len = 12 << 20;
    let old = body(len, 21);
    let new = body(len, 22);
    let total = total_blocks(len as u64, BS);
    for round in 0..2 {
        s.plan_upload("u", "big", plan_of(len), None)
            .await
            .expect("plan");
        // Parts written (in order) and early blocks held (from the end).
        for i in (0..total / 2).chain((total * 3 / 4..total).rev()) {
            put(&s, "u", "big", &old, i).await;
        }
        if round == 1 {
            assert_eq!(
                s.delete_file("u", "big", None).await.expect("delete"),
                Deleted::UnfinishedUpload
            );
        }
    }
    // A new SAVE supersedes (round 0) or follows the delete (round 1).
    let md5 = upload(&s, "u", "big", &new).await;
    assert_eq!(md5, md5_hex(&new));
    let meta = s.head("u", "big").await.expect("head");
    let got = s.read("u", &meta, 0, len as u64).await.expect("read");
    assert!(got.as_ref() == new.as_slice());
    let objects: Vec<_> = mem.list(None).try_collect().await.expect("list");
    let id = meta.upload_id.expect("id");
    assert_eq!(objects.len(), 3, "meta, content, sums: {objects:?}");
    assert!(
        objects
            .iter()
            .all(|o| o.location.as_ref().contains("/meta/") || o.location.as_ref().contains(&id)),
        "{objects:?}"
    );
}

/// Storage on a real S3 endpoint, under a fresh prefix: the bucket named by
/// `STEP_TEST_S3_BUCKET`, endpoint and credentials from the standard AWS
/// variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...).
fn s3_from_env() -> (Arc<dyn ObjectStore>, String) {
    let bucket = std::env::var("STEP_TEST_S3_BUCKET").expect("STEP_TEST_S3_BUCKET");
    let store = object_store::aws::AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_allow_http(true)
        .build()
        .expect("s3");
    let prefix = format!("step-test-{}", uuid::Uuid::new_v4().simple());
    (Arc::new(store), prefix)
}

/// The same scenarios over HTTP against an S3 server (e.g. moto, which
/// enforces AWS's 5 MiB minimum part size, or Garage). Run with
/// `STEP_TEST_S3_BUCKET=... AWS_ENDPOINT_URL=... cargo test -p step-server
/// --lib store::object -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs an S3 endpoint: STEP_TEST_S3_BUCKET and the AWS_* variables"]
async fn on_a_real_s3_server() {
    let (store, prefix) = s3_from_env();
    let s = ObjectStorage::new(Arc::clone(&store), &prefix, StoreLimits::default());
    // Records.
    let mut rec = Map::new();
    rec.insert("v".into(), Value::from("x"));
    s.record_create("u", "r", rec.clone())
        .await
        .expect("record");
    assert!(matches!(
        s.record_create("u", "r", rec.clone()).await,
        Err(StoreError::Exists)
    ));
    assert_eq!(s.record_get("u", "r").await.expect("get"), rec);
    // Size 0 and a small file.
    let out = s
        .plan_upload("u", "empty", plan_of(0), None)
        .await
        .expect("plan");
    assert_eq!(out.md5.as_deref(), Some(EMPTY_MD5));
    let small = body(70_000, 1);
    assert_eq!(upload(&s, "u", "small", &small).await, md5_hex(&small));
    // Large, shuffled and repeated, blocks in parallel: parts while they
    // arrive, then the tail.
    let len = 12 << 20;
    let data = Arc::new(body(len, 2));
    let total = total_blocks(len as u64, BS);
    s.plan_upload("u", "big", plan_of(len), None)
        .await
        .expect("plan");
    let order = shuffled(total);
    let mut md5s = Vec::new();
    for chunk in order.chunks(16) {
        let tasks = chunk.iter().map(|&i| {
            let (s, data) = (s.clone(), Arc::clone(&data));
            tokio::spawn(async move {
                let w = s.open_upload("u", "big").await?;
                w.put_block(i, block(&data, i), None).await
            })
        });
        for r in futures::future::join_all(tasks).await {
            if let Some(m) = r.expect("task").expect("block") {
                md5s.push(m);
            }
        }
    }
    assert_eq!(md5s, vec![md5_hex(data.as_slice())]);
    let meta = s.head("u", "big").await.expect("head");
    let got = s.read("u", &meta, 0, len as u64).await.expect("read");
    assert!(got.as_ref() == data.as_slice());
    let got = s.read("u", &meta, 5_000_000, 20_480).await.expect("read");
    assert_eq!(got.as_ref(), &data[5_000_000..5_020_480]);
    // Half an upload, then a second instance resumes and completes it from
    // what is staged (its parts are all written at completion).
    let other = body(len, 3);
    s.plan_upload("u", "half", plan_of(len), None)
        .await
        .expect("plan");
    for i in 0..total / 2 {
        put(&s, "u", "half", &other, i).await;
    }
    drop(s);
    let s = ObjectStorage::new(Arc::clone(&store), &prefix, StoreLimits::default());
    assert_eq!(s.head("u", "big").await.expect("head").md5, md5s[0]);
    let out = s
        .plan_upload(
            "u",
            "half",
            plan_of(len),
            s.upload_status("u", "half")
                .await
                .ok()
                .map(|u| u.upload_id)
                .as_deref(),
        )
        .await
        .expect("resume");
    assert!(out.resumed);
    assert_eq!(out.missing, vec![[total / 2, total]]);
    let mut md5 = None;
    for i in total / 2..total {
        md5 = put(&s, "u", "half", &other, i).await;
    }
    assert_eq!(md5, Some(md5_hex(&other)));
    // Listing in key order over S3's LIST (start-after), long keys too.
    let long = "L".repeat(KEY_ORDERED_BYTES);
    let mut keys: Vec<String> = vec!["big".into(), "empty".into(), "half".into(), "small".into()];
    for tail in ["z", "a", "m"] {
        let k = format!("{long}{tail}");
        upload(&s, "u", &k, b"tiny").await;
        keys.push(k);
    }
    keys.sort();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = s
            .list_files("u", "", after.as_deref(), 2)
            .await
            .expect("list");
        seen.extend(page.files.iter().map(|f| f.key.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, keys);
    // Clean up what the test wrote.
    for k in &keys {
        s.delete_file("u", k, None).await.expect("delete");
    }
    s.record_delete("u", "r").await.expect("delete");
    let left: Vec<_> = store
        .list(Some(&Path::from(prefix.as_str())))
        .try_collect()
        .await
        .expect("list");
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn content_of_a_failed_completion_goes_with_its_upload() {
    let mem = Arc::new(InMemory::new());
    let s = over(&mem);
    let data = body(30_000, 4);
    let out = s
        .plan_upload("u", "f", plan_of(data.len()), None)
        .await
        .expect("plan");
    let id = out.upload_id.expect("id");
    put(&s, "u", "f", &data, 0).await;
    // A completion that wrote the content and failed before the meta.
    let n = names("u", "f");
    mem.put(
        &s.backend().content_path(&n, &id),
        PutPayload::from(data.clone()),
    )
    .await
    .expect("content");
    assert!(matches!(
        s.head("u", "f").await,
        Err(StoreError::Unfinished)
    ));
    assert_eq!(
        s.delete_file("u", "f", None).await.expect("delete"),
        Deleted::UnfinishedUpload
    );
    let left: Vec<_> = mem.list(None).try_collect().await.expect("list");
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_assembler_limit_uploads_complete_the_simple_way() {
    let (_, counters, s) = recording();
    let len = (PART_MIN + 3 * BS) as usize;
    for k in 0..MAX_ASSEMBLERS {
        s.plan_upload("u", &format!("k{k}"), plan_of(len), None)
            .await
            .expect("plan");
    }
    assert_eq!(s.backend().assemblers.available_permits(), 0);
    let data = body(len, 30);
    let md5 = upload(&s, "u", "extra", &data).await;
    assert_eq!(md5, md5_hex(&data));
    let meta = s.head("u", "extra").await.expect("head");
    let got = s.read("u", &meta, 0, len as u64).await.expect("read");
    assert!(got.as_ref() == data.as_slice());
    // Assembled at completion from what was staged: read back once, in
    // lawful parts.
    assert!(counters.got_bytes.load(Ordering::Relaxed) >= len as u64);
    let parts = lock(&counters.parts).clone();
    let (_, rest) = parts.split_last().expect("parts");
    assert!(rest.iter().all(|(_, n)| *n >= 5 << 20), "{parts:?}");
}

// ------------------------------------------------------------ several instances

/// `n` instances on one bucket, coordinated through one in-memory
/// coordinator, as `--coord` makes several step-servers.
fn cluster(n: usize) -> (coord::MemoryCoord, Vec<ObjectStorage>) {
    let mem: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let coord = coord::MemoryCoord::new();
    let nodes = (0..n)
        .map(|_| {
            ObjectStorage::coordinated(
                Arc::clone(&mem),
                "pre/fix",
                StoreLimits::default(),
                Some(Arc::new(coord.clone()) as Arc<dyn Coord>),
            )
        })
        .collect();
    (coord, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_spread_over_instances_complete_exactly_once() {
    let (_, nodes) = cluster(3);
    // Small (one PUT at completion) and large (multipart from read-back).
    for len in [150_000usize, 9 << 20] {
        let key = format!("spread-{len}");
        let data = Arc::new(body(len, 21));
        let total = total_blocks(len as u64, BS);
        nodes[0]
            .plan_upload("u", &key, plan_of(len), None)
            .await
            .expect("plan");
        // Every block twice, in shuffled order, each to another instance, all at once.
        let order: Vec<u64> = shuffled(total).into_iter().chain(shuffled(total)).collect();
        let tasks = order.into_iter().enumerate().map(|(n, i)| {
            let (s, data, key) = (nodes[n % 3].clone(), Arc::clone(&data), key.clone());
            tokio::spawn(async move {
                let w = s.open_upload("u", &key).await?;
                w.put_block(i, block(&data, i), None).await
            })
        });
        let mut md5s = Vec::new();
        for r in futures::future::join_all(tasks).await {
            match r.expect("task") {
                Ok(Some(m)) => md5s.push(m),
                Ok(None) | Err(StoreError::AlreadyComplete) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(md5s, vec![md5_hex(data.as_slice())], "{len} bytes");
        for s in &nodes {
            let meta = s.head("u", &key).await.expect("head");
            let got = s.read("u", &meta, 0, len as u64).await.expect("read");
            assert!(got.as_ref() == data.as_slice());
        }
        // The staged blocks are gone: one copy in the bucket.
        let left: Vec<_> = nodes[0]
            .object_store()
            .list(Some(&Path::from("pre/fix/up")))
            .try_collect()
            .await
            .expect("list");
        assert!(left.is_empty(), "{left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_uploads_of_one_key_on_three_instances_have_one_winner() {
    for round in 0..5u32 {
        let (_, nodes) = cluster(3);
        let bodies: Vec<Arc<Vec<u8>>> = (0..3)
            .map(|n| Arc::new(body(70_000, round * 3 + n)))
            .collect();
        let tasks = (0..3).map(|n| {
            let (s, data) = (nodes[n].clone(), Arc::clone(&bodies[n]));
            tokio::spawn(async move {
                let out = s
                    .plan_upload("u", "race", plan_of(data.len()), None)
                    .await?;
                let id = out.upload_id.clone();
                let mut md5 = None;
                for i in 0..total_blocks(data.len() as u64, BS) {
                    let w = s.open_upload("u", "race").await?;
                    md5 = w.put_block(i, block(&data, i), id.clone()).await?;
                }
                Ok::<_, StoreError>(md5)
            })
        });
        let mut won = Vec::new();
        for (n, r) in futures::future::join_all(tasks)
            .await
            .into_iter()
            .enumerate()
        {
            match r.expect("task") {
                Ok(Some(md5)) => won.push((n, md5)),
                Ok(None) => panic!("instance {n} finished its blocks without an md5"),
                Err(
                    StoreError::Superseded
                    | StoreError::Exists
                    | StoreError::NotPlanned
                    | StoreError::AlreadyComplete,
                ) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(won.len(), 1, "round {round}: {won:?}");
        let (n, md5) = &won[0];
        assert_eq!(md5, &md5_hex(bodies[*n].as_slice()));
        let meta = nodes[(n + 1) % 3].head("u", "race").await.expect("head");
        assert_eq!(&meta.md5, md5);
        let got = nodes[(n + 2) % 3]
            .read("u", &meta, 0, meta.size)
            .await
            .expect("read");
        assert!(
            got.as_ref() == bodies[*n].as_slice(),
            "the winner's bytes, not a mix"
        );
        // A complete key is never replaced by a plain SAVE on any instance.
        for s in &nodes {
            assert!(matches!(
                s.plan_upload("u", "race", plan_of(10), None).await,
                Err(StoreError::Exists)
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_record_creates_on_three_instances_have_one_winner() {
    let (_, nodes) = cluster(3);
    for round in 0..10 {
        let key = format!("rec-{round}");
        let tasks = (0..6).map(|n| {
            let (s, key) = (nodes[n % 3].clone(), key.clone());
            tokio::spawn(async move {
                let mut rec = Map::new();
                rec.insert("writer".into(), Value::from(n));
                s.record_create("u", &key, rec).await.map(|()| n)
            })
        });
        let mut winners = Vec::new();
        for r in futures::future::join_all(tasks).await {
            match r.expect("task") {
                Ok(n) => winners.push(n),
                Err(StoreError::Exists) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "{winners:?}");
        let rec = nodes[2].record_get("u", &key).await.expect("get");
        assert_eq!(rec["writer"], Value::from(winners[0]));
    }
}

#[tokio::test]
async fn an_upload_left_by_a_vanished_instance_resumes_through_another() {
    let (_, mut nodes) = cluster(2);
    let data = body(200_000, 5);
    let total = total_blocks(data.len() as u64, BS);
    let first = nodes[0]
        .plan_upload("u", "k", plan_of(data.len()), None)
        .await
        .expect("plan");
    for i in (0..total).step_by(2) {
        assert_eq!(put(&nodes[0], "u", "k", &data, i).await, None);
    }
    // The first instance is gone (its memory with it).
    drop(nodes.remove(0));
    let s = &nodes[0];
    let again = s
        .plan_upload(
            "u",
            "k",
            plan_of(data.len()),
            s.upload_status("u", "k")
                .await
                .ok()
                .map(|u| u.upload_id)
                .as_deref(),
        )
        .await
        .expect("resume");
    assert!(again.resumed);
    assert_eq!(again.upload_id, first.upload_id);
    let odd: Vec<[u64; 2]> = (1..total).step_by(2).map(|i| [i, i + 1]).collect();
    assert_eq!(again.missing, odd);
    let mut md5 = None;
    for i in (1..total).step_by(2) {
        md5 = md5.or(put(s, "u", "k", &data, i).await);
    }
    assert_eq!(md5, Some(md5_hex(&data)));
}

#[tokio::test]
async fn without_the_coordinator_nothing_is_acknowledged_and_it_recovers_by_itself() {
    let (coord, nodes) = cluster(2);
    let data = body(100_000, 9);
    let total = total_blocks(data.len() as u64, BS);
    nodes[0]
        .plan_upload("u", "k", plan_of(data.len()), None)
        .await
        .expect("plan");
    for i in 0..total - 1 {
        assert_eq!(put(&nodes[i as usize % 2], "u", "k", &data, i).await, None);
    }
    coord.set_down(true);
    let last = total - 1;
    let refused = async {
        let w = nodes[1].open_upload("u", "k").await?;
        w.put_block(last, block(&data, last), None).await
    }
    .await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable(_))),
        "{refused:?}"
    );
    assert!(matches!(
        nodes[0].plan_upload("u", "k2", plan_of(10), None).await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        nodes[0].record_create("u", "r", Map::new()).await,
        Err(StoreError::Unavailable(_))
    ));
    // Reads resolve through the coordinator's pointer too.
    assert!(matches!(
        nodes[0].head("u", "k").await,
        Err(StoreError::Unavailable(_))
    ));
    // Back: the same upload goes on, on either instance, and completes once.
    coord.set_down(false);
    let again = nodes[1]
        .plan_upload(
            "u",
            "k",
            plan_of(data.len()),
            nodes[1]
                .upload_status("u", "k")
                .await
                .ok()
                .map(|u| u.upload_id)
                .as_deref(),
        )
        .await
        .expect("resume");
    assert_eq!(again.missing, vec![[last, total]]);
    assert_eq!(
        put(&nodes[0], "u", "k", &data, last).await,
        Some(md5_hex(&data))
    );
}

/// Requests cut off at every await point, alone and racing on a few keys,
/// leave no entry in the key locks (nor, coordinated, a lease held).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_requests_leave_no_lock_behind() {
    let (_, _, s) = recording_with(true);
    crate::store::cancel_tests::cancel_everything(Arc::new(s.clone()), async {}).await;
    assert_eq!(
        s.backend().files.len(),
        0,
        "file keys still locked or cached"
    );
    assert_eq!(s.backend().records.len(), 0);

    let (coord, instances) = cluster(2);
    let racing = instances
        .iter()
        .map(|s| crate::store::cancel_tests::cancel_everything(Arc::new(s.clone()), async {}));
    futures::future::join_all(racing).await;
    for s in &instances {
        assert_eq!(s.backend().files.len(), 0, "coordinated: file keys left");
    }
    assert_eq!(coord.leases_held(), 0, "a lease outlived its request");
}

// ------------------------------------------------------------ requests per operation

/// The coordinator, counting its round trips (every call is one request to
/// Redis; a lease is one to take and one to release).
#[derive(Debug, Clone)]
struct CountingCoord {
    inner: coord::MemoryCoord,
    calls: Arc<AtomicU64>,
}

#[derive(Debug)]
struct CountingLease {
    inner: Box<dyn Lease>,
    calls: Arc<AtomicU64>,
}

impl Drop for CountingLease {
    fn drop(&mut self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Lease for CountingLease {
    async fn check(&self) -> StoreResult<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.check().await
    }
    async fn swap(&self, p: &str, expected: Option<&str>, new: Option<&str>) -> StoreResult<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.swap(p, expected, new).await
    }
    async fn set_current(&self, key: &str, upload_id: Option<&str>) -> StoreResult<()> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.set_current(key, upload_id).await
    }
}

impl CountingCoord {
    fn tick(&self) {
        self.calls.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Coord for CountingCoord {
    async fn lease(&self, name: &str) -> StoreResult<Box<dyn Lease>> {
        self.tick();
        Ok(Box::new(CountingLease {
            inner: self.inner.lease(name).await?,
            calls: Arc::clone(&self.calls),
        }))
    }
    async fn current(&self, key: &str) -> StoreResult<Option<String>> {
        self.tick();
        self.inner.current(key).await
    }
    async fn mark_block(&self, key: &str, upload_id: &str, index: u64) -> StoreResult<coord::Mark> {
        self.tick();
        self.inner.mark_block(key, upload_id, index).await
    }
    async fn received(&self, upload_id: &str, total: u64) -> StoreResult<(Vec<bool>, Option<u64>)> {
        self.tick();
        self.inner.received(upload_id, total).await
    }
    async fn forget(&self, upload_id: &str) -> StoreResult<()> {
        self.tick();
        self.inner.forget(upload_id).await
    }
    async fn ping(&self) -> StoreResult<()> {
        self.tick();
        self.inner.ping().await
    }
    async fn pointer(&self, p: &str) -> StoreResult<Option<String>> {
        self.tick();
        self.inner.pointer(p).await
    }
    async fn pointers(&self, p: &[String]) -> StoreResult<Vec<Option<String>>> {
        self.tick();
        self.inner.pointers(p).await
    }
}

/// Bucket requests and coordinator round trips per operation on a small
/// file and a record, alone and coordinated (printed with `--nocapture`;
/// the numbers in the report come from here).
#[tokio::test]
async fn requests_per_small_file() {
    for coordinated in [false, true] {
        let mem = Arc::new(InMemory::new());
        let counters = Arc::new(Counters::default());
        let store = Arc::new(Recording {
            inner: Arc::clone(&mem),
            counters: Arc::clone(&counters),
            yields: false,
        });
        let calls = Arc::new(AtomicU64::new(0));
        let coord = coordinated.then(|| {
            Arc::new(CountingCoord {
                inner: coord::MemoryCoord::new(),
                calls: Arc::clone(&calls),
            }) as Arc<dyn Coord>
        });
        let s = ObjectStorage::coordinated(store, "pre/fix", StoreLimits::default(), coord);
        s.recover().await.expect("scan");
        let data = body(10_000, 3);
        let mut rows = Vec::new();
        let mut row = |what: &str| {
            rows.push(format!(
                "{what:<22} {:?} coordinator: {}",
                counters.take(),
                calls.swap(0, Ordering::Relaxed)
            ));
        };
        row("start");
        s.record_create("u", "r", Map::new()).await.expect("record");
        row("DATA SAVE");
        s.record_get("u", "r").await.expect("record");
        row("DATA GET");
        s.record_delete("u", "r").await.expect("record");
        row("DATA DELETE");
        let out = s
            .plan_upload("u", "k", plan_of(data.len()), None)
            .await
            .expect("plan");
        row("FILE SAVE");
        let w = s.open_upload("u", "k").await.expect("open");
        w.put_block(0, block(&data, 0), out.upload_id)
            .await
            .expect("block");
        row("UPLOAD (completes)");
        let meta = s.head("u", "k").await.expect("head");
        row("HEAD");
        s.read("u", &meta, 0, meta.size).await.expect("read");
        row("read");
        s.list_files("u", "", None, 100).await.expect("list");
        row("LIST (1 file)");
        let out = s
            .plan_replace(
                "u",
                "k",
                plan_of(data.len()),
                None,
                Replace { if_md5: None },
            )
            .await
            .expect("plan");
        let w = s.open_upload("u", "k").await.expect("open");
        w.put_block(0, block(&data, 0), out.upload_id)
            .await
            .expect("block");
        row("replace (SAVE+UPLOAD)");
        s.delete_file("u", "k", None).await.expect("delete");
        row("FILE DELETE");
        println!(
            "{}:\n  {}",
            if coordinated { "coordinated" } else { "alone" },
            rows.join("\n  ")
        );
    }
}
