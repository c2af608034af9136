//! The storage contract: what every [`Storage`] implementation must do, run
//! through the interface only, so one suite proves the local disk, the
//! in-memory object store and a real S3 server alike.
//!
//! An implementation plugs in as a [`Subject`]: it makes fresh, empty
//! storages (each case gets its own), opens one again as a restarted server
//! would, and declares which optional behaviours it has ([`Features`]).
//! [`storage_contract!`](crate::storage_contract) then makes one test per
//! case, so a failure names its case: `storage_contract!(my_subject())` in a
//! test file (see `tests/tests/store_contract*.rs`).
//!
//! Cases assert on results and [`StoreError`] variants only — never on
//! paths, objects or timings.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use step_core::digest::{EMPTY_MD5, md5_hex};
use step_core::plan::total_blocks;
use step_server::store::{
    Account, Deleted, FileMeta, ListPage, PlanOutcome, PlanRecord, Replace, Storage, StoreError,
    StoreLimits, UnfinishedUpload,
};

/// One storage made for one case.
pub struct Instance {
    pub storage: Arc<dyn Storage>,
    /// What the subject needs to open the same storage again (a directory,
    /// a bucket); kept until the case ends.
    pub place: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

/// Optional behaviours: the cases for them run only where declared.
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// A plan larger than the space left is refused with
    /// [`StoreError::NoSpace`] (given per-user caps that allow it).
    pub no_space: bool,
    /// Per-user caps of [`StoreLimits`] are enforced
    /// ([`StoreError::Quota`]).
    pub quota: bool,
    /// Stored bytes are checked on read, and [`Subject::corrupt`] can
    /// alter them ([`StoreError::Integrity`]).
    pub integrity: bool,
}

/// An implementation under test.
#[async_trait]
pub trait Subject: Send + Sync {
    /// A fresh, empty storage with these limits.
    async fn fresh(&self, limits: StoreLimits) -> Instance;
    /// The storage at `place` opened again, as by a restarted server (the
    /// case has dropped every handle to the previous one).
    async fn reopen(
        &self,
        place: &(dyn Any + Send + Sync),
        limits: StoreLimits,
    ) -> Arc<dyn Storage>;
    fn features(&self) -> Features;
    /// Flip stored bytes of the complete file `(user, key)` at `offset`,
    /// behind the storage's back (only with [`Features::integrity`]).
    async fn corrupt(&self, place: &(dyn Any + Send + Sync), user: &str, key: &str, offset: u64) {
        let _ = (place, user, key, offset);
        panic!("Features::integrity needs Subject::corrupt");
    }
}

/// Every case, by name, in the order [`run_contract`] runs them.
pub const CASES: &[&str] = &[
    "records",
    "plans",
    "empty_file",
    "blocks_in_order",
    "blocks_out_of_order",
    "repeated_blocks",
    "resume_in_process",
    "resume_after_reopen",
    "racing_uploads_are_kept_apart",
    "racing_uploads_one_completes",
    "delete_complete",
    "delete_unfinished",
    "listing",
    "listing_pages",
    "head",
    "ranged_reads",
    "every_error",
    "users_are_apart",
    "expiry_and_stats",
    "no_space",
    "quota",
    "integrity",
    "accounts",
    "replace",
    "replace_conditions",
    "replace_after_reopen",
    "upload_status",
];

/// Run every case against `subject`, in order (each with its own storage).
pub async fn run_contract(subject: &dyn Subject) {
    for case in CASES {
        run_case(subject, case).await;
    }
}

/// Run the case called `name`.
pub async fn run_case(subject: &dyn Subject, name: &str) {
    match name {
        "records" => records(subject).await,
        "plans" => plans(subject).await,
        "empty_file" => empty_file(subject).await,
        "blocks_in_order" => blocks_in_order(subject).await,
        "blocks_out_of_order" => blocks_out_of_order(subject).await,
        "repeated_blocks" => repeated_blocks(subject).await,
        "resume_in_process" => resume_in_process(subject).await,
        "resume_after_reopen" => resume_after_reopen(subject).await,
        "racing_uploads_are_kept_apart" => racing_uploads_are_kept_apart(subject).await,
        "racing_uploads_one_completes" => racing_uploads_one_completes(subject).await,
        "delete_complete" => delete_complete(subject).await,
        "delete_unfinished" => delete_unfinished(subject).await,
        "listing" => listing(subject).await,
        "listing_pages" => listing_pages(subject).await,
        "head" => head(subject).await,
        "ranged_reads" => ranged_reads(subject).await,
        "every_error" => every_error(subject).await,
        "users_are_apart" => users_are_apart(subject).await,
        "expiry_and_stats" => expiry_and_stats(subject).await,
        "no_space" => no_space(subject).await,
        "quota" => quota(subject).await,
        "integrity" => integrity(subject).await,
        "accounts" => accounts(subject).await,
        "replace" => replace(subject).await,
        "replace_conditions" => replace_conditions(subject).await,
        "replace_after_reopen" => replace_after_reopen(subject).await,
        "upload_status" => upload_status(subject).await,
        other => panic!("no contract case {other:?}"),
    }
}

/// One test per contract case for the subject `$subject` (an expression,
/// evaluated per test): a failure names its case.
#[macro_export]
macro_rules! storage_contract {
    ($subject:expr) => {
        $crate::storage_contract!(@cases $subject;
            records, plans, empty_file, blocks_in_order, blocks_out_of_order,
            repeated_blocks, resume_in_process, resume_after_reopen,
            racing_uploads_are_kept_apart, racing_uploads_one_completes,
            delete_complete, delete_unfinished, listing, listing_pages, head,
            ranged_reads, every_error, users_are_apart, expiry_and_stats,
            no_space, quota, integrity, accounts, replace,
            replace_conditions, replace_after_reopen, upload_status);
    };
    (@cases $subject:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                let subject = $subject;
                $crate::contract::run_case(&subject, stringify!($case)).await;
            }
        )*
        #[test]
        fn every_contract_case_has_a_test() {
            let made: &[&str] = &[$(stringify!($case)),*];
            assert_eq!(made, $crate::contract::CASES);
        }
    };
}

// ---------------------------------------------------------------- helpers

/// Small blocks, so files of a few blocks stay small.
const BS: u64 = 1000;

fn body(len: usize, seed: u8) -> Vec<u8> {
    crate::pattern(len, seed)
}

fn plan_of(size: u64) -> PlanRecord {
    PlanRecord {
        size,
        block_size: BS,
    }
}

fn block(body: &[u8], i: u64) -> Bytes {
    let start = (i * BS) as usize;
    let end = (start + BS as usize).min(body.len());
    Bytes::copy_from_slice(&body[start..end])
}

fn record(n: i64) -> Map<String, Value> {
    Map::from_iter([("n".to_owned(), json!(n)), ("s".to_owned(), json!("x"))])
}

async fn fresh(subject: &dyn Subject) -> Instance {
    subject.fresh(StoreLimits::default()).await
}

/// Write block `i` of `body` into the upload under `key`.
async fn put(
    s: &dyn Storage,
    user: &str,
    key: &str,
    body: &[u8],
    i: u64,
    upload_id: Option<&str>,
) -> Result<Option<String>, StoreError> {
    let writer = s.open_upload(user, key).await?;
    writer
        .put_block(i, block(body, i), upload_id.map(str::to_owned))
        .await
}

/// Plan `key` for `body` and write every block in `order`; returns the
/// outcome of the plan and what each block answered.
async fn upload_in(
    s: &dyn Storage,
    user: &str,
    key: &str,
    body: &[u8],
    order: &[u64],
) -> (PlanOutcome, Vec<Option<String>>) {
    let outcome = s
        .plan_upload(user, key, plan_of(body.len() as u64), None)
        .await
        .expect("plan");
    let id = outcome.upload_id.clone();
    let mut answers = Vec::new();
    for &i in order {
        answers.push(
            put(s, user, key, body, i, id.as_deref())
                .await
                .unwrap_or_else(|e| panic!("block {i} of {key}: {e}")),
        );
    }
    (outcome, answers)
}

/// Store `body` under `key`, blocks in order; returns its metadata.
async fn complete(s: &dyn Storage, user: &str, key: &str, body: &[u8]) -> FileMeta {
    let total = total_blocks(body.len() as u64, BS);
    let order: Vec<u64> = (0..total).collect();
    let (_, answers) = upload_in(s, user, key, body, &order).await;
    if !body.is_empty() {
        assert_eq!(
            answers.last().cloned().flatten().as_deref(),
            Some(md5_hex(body).as_str()),
            "the last block completes {key}"
        );
    }
    s.head(user, key).await.expect("complete file")
}

async fn read_all(s: &dyn Storage, user: &str, meta: &FileMeta) -> Vec<u8> {
    s.read(user, meta, 0, meta.size)
        .await
        .expect("read")
        .to_vec()
}

fn keys(page: &ListPage) -> Vec<&str> {
    page.files.iter().map(|f| f.key.as_str()).collect()
}

#[track_caller]
fn assert_err<T: std::fmt::Debug>(
    r: Result<T, StoreError>,
    want: impl Fn(&StoreError) -> bool,
    what: &str,
) {
    match r {
        Err(e) if want(&e) => {}
        other => panic!("{what}: got {other:?}"),
    }
}

// ---------------------------------------------------------------- cases

/// Records are create-only, read back as stored, deleted once.
pub async fn records(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    s.record_create("alice", "r", record(1))
        .await
        .expect("create");
    assert_eq!(s.record_get("alice", "r").await.expect("get"), record(1));
    assert_err(
        s.record_create("alice", "r", record(2)).await,
        |e| matches!(e, StoreError::Exists),
        "second create",
    );
    assert_eq!(
        s.record_get("alice", "r").await.expect("get"),
        record(1),
        "a refused create changes nothing"
    );
    assert_err(
        s.record_get("alice", "missing").await,
        |e| matches!(e, StoreError::NotFound),
        "get of a missing record",
    );
    s.record_delete("alice", "r").await.expect("delete");
    assert_err(
        s.record_get("alice", "r").await,
        |e| matches!(e, StoreError::NotFound),
        "get after delete",
    );
    assert_err(
        s.record_delete("alice", "r").await,
        |e| matches!(e, StoreError::NotFound),
        "second delete",
    );
    s.record_create("alice", "r", record(3))
        .await
        .expect("create again after delete");
    assert_eq!(s.record_get("alice", "r").await.expect("get"), record(3));
    // Records and files are apart: a record is no file, and is not listed.
    assert_err(
        s.head("alice", "r").await,
        |e| matches!(e, StoreError::NotFound),
        "a record is not a file",
    );
    let page = s.list_files("alice", "", None, 10).await.expect("list");
    assert!(page.files.is_empty(), "records are not listed: {page:?}");
}

/// A fresh plan covers every block; a plan on a complete key is refused.
pub async fn plans(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let plan = plan_of(4 * BS + 1);
    let out = s.plan_upload("alice", "p", plan, None).await.expect("plan");
    assert_eq!(out.plan, plan);
    assert_eq!(out.missing, vec![[0, 5]]);
    assert!(!out.resumed);
    assert_eq!(out.md5, None);
    let id = out.upload_id.expect("an upload id");
    let writer = s.open_upload("alice", "p").await.expect("open");
    assert_eq!(writer.plan(), plan, "the writer checks blocks against it");
    if let Some(current) = writer.upload_id() {
        assert_eq!(current, id);
    }
    drop(writer);
    // Without resume a SAVE starts over, with a new id.
    let again = s.plan_upload("alice", "p", plan, None).await.expect("plan");
    assert!(!again.resumed);
    assert_ne!(again.upload_id.as_deref(), Some(id.as_str()));
    // A complete key refuses plans, with or without resume.
    let body = body(1500, 1);
    complete(s, "alice", "done", &body).await;
    let done_id = s.head("alice", "done").await.expect("head").upload_id;
    for resume in [None, done_id.as_deref()] {
        assert_err(
            s.plan_upload("alice", "done", plan_of(1500), resume).await,
            |e| matches!(e, StoreError::Exists),
            "plan on a complete key",
        );
    }
}

/// A size-0 plan completes at once, with the empty md5.
pub async fn empty_file(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let out = s
        .plan_upload("alice", "empty", plan_of(0), None)
        .await
        .expect("plan");
    assert_eq!(out.md5.as_deref(), Some(EMPTY_MD5));
    assert!(out.missing.is_empty());
    let meta = s.head("alice", "empty").await.expect("complete at once");
    assert_eq!((meta.size, meta.md5.as_str()), (0, EMPTY_MD5));
    assert_eq!(meta.key, "empty");
    assert_err(
        s.open_upload("alice", "empty").await,
        |e| matches!(e, StoreError::AlreadyComplete),
        "blocks for an empty file",
    );
    let page = s.list_files("alice", "", None, 10).await.expect("list");
    assert_eq!(keys(&page), vec!["empty"]);
}

/// Blocks in order: exactly the last one completes, with the md5; the file
/// then reads back whole and refuses further blocks.
pub async fn blocks_in_order(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let body = body(5 * BS as usize + 17, 2);
    let before = step_server::store::api::unix_now();
    let (out, answers) = upload_in(s, "alice", "f", &body, &[0, 1, 2, 3, 4, 5]).await;
    assert!(answers[..5].iter().all(Option::is_none), "{answers:?}");
    assert_eq!(answers[5].as_deref(), Some(md5_hex(&body).as_str()));
    let meta = s.head("alice", "f").await.expect("head");
    assert_eq!(meta.key, "f");
    assert_eq!(meta.size, body.len() as u64);
    assert_eq!(meta.md5, md5_hex(&body));
    assert_eq!(meta.upload_id, out.upload_id, "the upload that made it");
    assert!(meta.completed_unix >= before, "completion time kept");
    assert_eq!(read_all(s, "alice", &meta).await, body);
    assert_err(
        s.open_upload("alice", "f").await,
        |e| matches!(e, StoreError::AlreadyComplete),
        "a block after completion",
    );
}

/// Blocks in any order give the same file and md5.
pub async fn blocks_out_of_order(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let body = body(7 * BS as usize + 3, 3);
    let orders: [&[u64]; 3] = [
        &[7, 6, 5, 4, 3, 2, 1, 0],
        &[3, 0, 7, 1, 5, 2, 6, 4],
        &[1, 2, 3, 4, 5, 6, 7, 0],
    ];
    for (n, order) in orders.iter().enumerate() {
        let key = format!("ooo-{n}");
        let (_, answers) = upload_in(s, "alice", &key, &body, order).await;
        let done: Vec<_> = answers.iter().flatten().collect();
        assert_eq!(done.len(), 1, "one completion, order {order:?}");
        assert_eq!(answers.last().cloned().flatten(), Some(md5_hex(&body)));
        let meta = s.head("alice", &key).await.expect("head");
        assert_eq!(meta.md5, md5_hex(&body));
        assert_eq!(read_all(s, "alice", &meta).await, body, "order {order:?}");
    }
}

/// A block sent again (a client's retry) changes nothing; the upload
/// completes once.
pub async fn repeated_blocks(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let body = body(4 * BS as usize + 10, 4);
    let (_, answers) = upload_in(s, "alice", "rep", &body, &[0, 0, 1, 3, 1, 0, 3, 2, 4]).await;
    let done: Vec<_> = answers.iter().flatten().collect();
    assert_eq!(done, vec![&md5_hex(&body)], "{answers:?}");
    assert!(
        answers.last().cloned().flatten().is_some(),
        "the last completes"
    );
    let meta = s.head("alice", "rep").await.expect("head");
    assert_eq!(read_all(s, "alice", &meta).await, body);
    // A block rewritten with other bytes before completion: the last
    // bytes written are the file's, and the md5 is theirs.
    let other = body.iter().map(|b| b ^ 0x55).collect::<Vec<_>>();
    let mut mixed = body.clone();
    mixed[..BS as usize].copy_from_slice(&other[..BS as usize]);
    let out = s
        .plan_upload("alice", "rewrite", plan_of(body.len() as u64), None)
        .await
        .expect("plan");
    let id = out.upload_id.as_deref();
    put(s, "alice", "rewrite", &body, 0, id).await.expect("b0");
    put(s, "alice", "rewrite", &body, 1, id).await.expect("b1");
    put(s, "alice", "rewrite", &other, 0, id)
        .await
        .expect("b0 again, other bytes");
    put(s, "alice", "rewrite", &body, 2, id).await.expect("b2");
    put(s, "alice", "rewrite", &body, 3, id).await.expect("b3");
    let md5 = put(s, "alice", "rewrite", &body, 4, id).await.expect("b4");
    assert_eq!(md5, Some(md5_hex(&mixed)));
    let meta = s.head("alice", "rewrite").await.expect("head");
    assert_eq!(read_all(s, "alice", &meta).await, mixed);
}

/// SAVE with resume continues an unfinished upload with the same plan
/// (same id, the missing ranges), and starts over for another plan.
pub async fn resume_in_process(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let body = body(6 * BS as usize, 5);
    let plan = plan_of(body.len() as u64);
    let (out, _) = upload_in(s, "alice", "res", &body, &[0, 2, 3]).await;
    let resumed = s
        .plan_upload("alice", "res", plan, out.upload_id.as_deref())
        .await
        .expect("resume");
    assert!(resumed.resumed);
    assert_eq!(resumed.missing, vec![[1, 2], [4, 6]]);
    assert_eq!(resumed.upload_id, out.upload_id, "the same upload");
    for i in [5, 1, 4] {
        put(s, "alice", "res", &body, i, resumed.upload_id.as_deref())
            .await
            .expect("block");
    }
    let meta = s.head("alice", "res").await.expect("complete");
    assert_eq!(meta.md5, md5_hex(&body));
    // Another plan for an unfinished key: started over, nothing kept.
    let (first, _) = upload_in(s, "alice", "res2", &body, &[0, 1]).await;
    let other = s
        .plan_upload("alice", "res2", plan_of(3 * BS), first.upload_id.as_deref())
        .await
        .expect("plan");
    assert!(!other.resumed);
    assert_eq!(other.missing, vec![[0, 3]]);
    // Only the upload a resume names is continued: its id proves whose it
    // is. Naming none, or another, starts over as a plain SAVE does.
    for named in [None, Some("not-its-id"), first.upload_id.as_deref()] {
        let again = s
            .plan_upload("alice", "res2", plan_of(3 * BS), named)
            .await
            .expect("plan");
        assert!(!again.resumed, "resume naming {named:?}");
        assert_ne!(again.upload_id, other.upload_id, "resume naming {named:?}");
    }
    let current = s.upload_status("alice", "res2").await.expect("status");
    let own = s
        .plan_upload("alice", "res2", plan_of(3 * BS), Some(&current.upload_id))
        .await
        .expect("plan");
    assert!(own.resumed);
    assert_eq!(own.upload_id.as_deref(), Some(current.upload_id.as_str()));
}

/// An unfinished upload survives a restart: reopened, SAVE with resume
/// answers what is missing, and the rest completes it with the right md5.
pub async fn resume_after_reopen(subject: &dyn Subject) {
    let limits = StoreLimits::default();
    let inst = subject.fresh(limits).await;
    let body = body(6 * BS as usize + 5, 6);
    let plan = plan_of(body.len() as u64);
    let (out, _) = upload_in(&*inst.storage, "alice", "r", &body, &[0, 1, 4]).await;
    let done = complete(&*inst.storage, "alice", "kept", &body[..2500]).await;
    let Instance { storage, place } = inst;
    drop(storage);
    let s = subject.reopen(&*place, limits).await;
    let s = &*s;
    assert_err(
        s.head("alice", "r").await,
        |e| matches!(e, StoreError::Unfinished),
        "an unfinished upload after reopen",
    );
    assert_eq!(s.unfinished_stats().count, 1, "accounted for at reopen");
    assert_eq!(
        s.head("alice", "kept").await.expect("complete file kept"),
        done
    );
    let resumed = s
        .plan_upload("alice", "r", plan, out.upload_id.as_deref())
        .await
        .expect("resume");
    assert!(resumed.resumed, "resumed after reopen");
    assert_eq!(resumed.missing, vec![[2, 4], [5, 7]]);
    assert_eq!(resumed.upload_id, out.upload_id);
    let mut md5 = None;
    for i in [6, 2, 5, 3] {
        md5 = put(s, "alice", "r", &body, i, resumed.upload_id.as_deref())
            .await
            .expect("block");
    }
    assert_eq!(md5, Some(md5_hex(&body)));
    let meta = s.head("alice", "r").await.expect("complete");
    assert_eq!(read_all(s, "alice", &meta).await, body);
    assert_eq!(s.unfinished_stats().count, 0);
}

/// Two uploads of one key: the second SAVE supersedes the first, whose
/// blocks are refused rather than mixed in; without an id a block goes to
/// the key's current upload.
pub async fn racing_uploads_are_kept_apart(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let a = body(3 * BS as usize, 7);
    let b = body(3 * BS as usize, 8);
    let plan = plan_of(a.len() as u64);
    let first = s.plan_upload("alice", "k", plan, None).await.expect("a");
    let ida = first.upload_id.clone().expect("id");
    put(s, "alice", "k", &a, 0, Some(&ida)).await.expect("a0");
    // A writer opened for A before B's SAVE.
    let stale = s.open_upload("alice", "k").await.expect("open");
    let second = s.plan_upload("alice", "k", plan, None).await.expect("b");
    let idb = second.upload_id.clone().expect("id");
    assert_ne!(ida, idb);
    assert_err(
        put(s, "alice", "k", &a, 1, Some(&ida)).await,
        |e| matches!(e, StoreError::Superseded),
        "A's block after B's SAVE",
    );
    assert_err(
        stale.put_block(1, block(&a, 1), Some(ida.clone())).await,
        |e| matches!(e, StoreError::Superseded | StoreError::NotPlanned),
        "A's block through a writer opened before B's SAVE",
    );
    put(s, "alice", "k", &b, 0, Some(&idb)).await.expect("b0");
    put(s, "alice", "k", &b, 1, None).await.expect("b1, no id");
    let md5 = put(s, "alice", "k", &b, 2, Some(&idb)).await.expect("b2");
    assert_eq!(md5, Some(md5_hex(&b)));
    let meta = s.head("alice", "k").await.expect("head");
    assert_eq!(meta.upload_id.as_deref(), Some(idb.as_str()));
    assert_eq!(read_all(s, "alice", &meta).await, b, "only B's bytes");
    assert_err(
        put(s, "alice", "k", &a, 2, Some(&ida)).await,
        |e| matches!(e, StoreError::AlreadyComplete | StoreError::Superseded),
        "A's block after B completed",
    );
}

/// Racers SAVE one key and send all their blocks with their upload id, at
/// once: exactly one upload completes, and the file is its bytes.
pub async fn racing_uploads_one_completes(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let racers = 6u8;
    let size = 8 * BS as usize + 100;
    let bodies: Vec<Vec<u8>> = (0..racers).map(|r| body(size, 40 + r)).collect();
    for round in 0..3 {
        let key = format!("race-{round}");
        let start = Arc::new(tokio::sync::Barrier::new(racers as usize));
        let mut tasks = Vec::new();
        for (r, body) in bodies.iter().enumerate() {
            let (s, key, body, start) = (
                Arc::clone(&inst.storage),
                key.clone(),
                body.clone(),
                Arc::clone(&start),
            );
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let out = match s
                    .plan_upload("alice", &key, plan_of(body.len() as u64), None)
                    .await
                {
                    Ok(out) => out,
                    Err(StoreError::Exists) => return None,
                    Err(e) => panic!("plan: {e}"),
                };
                let id = out.upload_id;
                let mut md5 = None;
                for i in 0..total_blocks(body.len() as u64, BS) {
                    match put(&*s, "alice", &key, &body, i, id.as_deref()).await {
                        Ok(m) => md5 = m,
                        Err(
                            StoreError::Superseded
                            | StoreError::NotPlanned
                            | StoreError::AlreadyComplete,
                        ) => return None,
                        Err(e) => panic!("block {i}: {e}"),
                    }
                    tokio::task::yield_now().await;
                }
                Some((r, md5.expect("all blocks of an upload taken, yet no md5")))
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            if let Some(w) = t.await.expect("racer") {
                winners.push(w);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let (r, md5) = &winners[0];
        assert_eq!(*md5, md5_hex(&bodies[*r]));
        let meta = inst.storage.head("alice", &key).await.expect("head");
        assert_eq!(&meta.md5, md5);
        assert_eq!(read_all(&*inst.storage, "alice", &meta).await, bodies[*r]);
        assert_eq!(
            inst.storage.unfinished_stats().count,
            0,
            "nothing left over"
        );
    }
}

/// DELETE of a complete file, unscoped and scoped to its upload.
pub async fn delete_complete(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let body = body(2500, 9);
    complete(s, "alice", "d", &body).await;
    assert_eq!(
        s.delete_file("alice", "d", None).await.expect("delete"),
        Deleted::File
    );
    assert_err(
        s.head("alice", "d").await,
        |e| matches!(e, StoreError::NotFound),
        "head after delete",
    );
    assert_err(
        s.delete_file("alice", "d", None).await,
        |e| matches!(e, StoreError::NotFound),
        "second delete",
    );
    assert!(
        s.list_files("alice", "", None, 10)
            .await
            .expect("list")
            .files
            .is_empty()
    );
    // Scoped: only by the id of the upload that made it.
    let meta = complete(s, "alice", "d", &body).await;
    let id = meta.upload_id.clone().expect("made by an upload");
    assert_err(
        s.delete_file("alice", "d", Some("not-its-upload")).await,
        |e| matches!(e, StoreError::OtherUpload),
        "delete by another upload's id",
    );
    assert_eq!(s.head("alice", "d").await.expect("kept"), meta);
    assert_eq!(
        s.delete_file("alice", "d", Some(&id))
            .await
            .expect("delete"),
        Deleted::File
    );
    assert_err(
        s.delete_file("alice", "d", Some(&id)).await,
        |e| matches!(e, StoreError::NotFound),
        "scoped delete of nothing",
    );
    // The key is free again.
    let again = complete(s, "alice", "d", &body[..10]).await;
    assert_eq!(read_all(s, "alice", &again).await, &body[..10]);
}

/// DELETE of an unfinished upload, unscoped and scoped.
pub async fn delete_unfinished(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let body = body(3 * BS as usize, 10);
    upload_in(s, "alice", "u", &body, &[0]).await;
    let stale = s.open_upload("alice", "u").await.expect("open");
    assert_eq!(
        s.delete_file("alice", "u", None).await.expect("delete"),
        Deleted::UnfinishedUpload
    );
    assert_err(
        s.open_upload("alice", "u").await,
        |e| matches!(e, StoreError::NotPlanned),
        "block after delete",
    );
    assert_err(
        stale.put_block(1, block(&body, 1), None).await,
        |e| matches!(e, StoreError::NotPlanned | StoreError::Superseded),
        "block through a writer opened before the delete",
    );
    assert_err(
        s.head("alice", "u").await,
        |e| matches!(e, StoreError::NotFound),
        "head after delete",
    );
    assert_eq!(s.unfinished_stats().count, 0);
    // Scoped: only that upload goes.
    let (out, _) = upload_in(s, "alice", "u", &body, &[0]).await;
    let id = out.upload_id.expect("id");
    assert_err(
        s.delete_file("alice", "u", Some("another")).await,
        |e| matches!(e, StoreError::OtherUpload),
        "scoped delete of another upload",
    );
    let resumed = s
        .plan_upload("alice", "u", plan_of(body.len() as u64), Some(&id))
        .await
        .expect("still there");
    assert!(resumed.resumed);
    assert_eq!(
        s.delete_file("alice", "u", Some(&id))
            .await
            .expect("delete"),
        Deleted::UnfinishedUpload
    );
    assert_err(
        s.delete_file("alice", "u", Some(&id)).await,
        |e| matches!(e, StoreError::NotFound),
        "second scoped delete",
    );
    assert_err(
        s.delete_file("alice", "nothing", None).await,
        |e| matches!(e, StoreError::NotFound),
        "delete of nothing",
    );
}

/// Listing: a user's complete files only, in key (byte) order, filtered by
/// prefix, whatever the keys hold.
pub async fn listing(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let long = format!("b/{}", "z".repeat(300));
    let mut stored = vec![
        "a".to_owned(),
        "b/1".to_owned(),
        "b/2".to_owned(),
        "b-1".to_owned(),
        "b.x".to_owned(),
        "b/über".to_owned(),
        "b/🦦".to_owned(),
        ".hidden".to_owned(),
        "B".to_owned(),
        "b%2F3".to_owned(),
        "c d".to_owned(),
        long.clone(),
    ];
    for (n, key) in stored.iter().enumerate() {
        complete(s, "alice", key, &body(10 + n, n as u8)).await;
    }
    // Not listed: unfinished uploads, records, other users' files.
    upload_in(s, "alice", "b/unfinished", &body(3 * BS as usize, 1), &[0]).await;
    s.record_create("alice", "b/record", record(1))
        .await
        .expect("record");
    complete(s, "bob", "b/bobs", b"bob").await;
    stored.sort();
    let all = s.list_files("alice", "", None, 100).await.expect("list");
    assert_eq!(keys(&all), stored, "every complete file, in byte order");
    assert_eq!(all.next, None);
    for meta in &all.files {
        assert_eq!(&s.head("alice", &meta.key).await.expect("head"), meta);
    }
    let b: Vec<&str> = stored
        .iter()
        .map(String::as_str)
        .filter(|k| k.starts_with("b/"))
        .collect();
    let page = s.list_files("alice", "b/", None, 100).await.expect("list");
    assert_eq!(keys(&page), b, "prefix b/");
    assert!(b.contains(&long.as_str()) && b.len() == 5, "{b:?}");
    let page = s.list_files("alice", "b/ü", None, 100).await.expect("list");
    assert_eq!(keys(&page), vec!["b/über"]);
    let page = s
        .list_files("alice", "nope", None, 100)
        .await
        .expect("list");
    assert_eq!((page.files.len(), page.next), (0, None));
    let page = s.list_files("nobody", "", None, 100).await.expect("list");
    assert_eq!((page.files.len(), page.next), (0, None));
    let bob = s.list_files("bob", "", None, 100).await.expect("list");
    assert_eq!(keys(&bob), vec!["b/bobs"]);
    // After deletes and completions, the listing follows.
    s.delete_file("alice", "a", None).await.expect("delete");
    put(
        s,
        "alice",
        "b/unfinished",
        &body(3 * BS as usize, 1),
        1,
        None,
    )
    .await
    .expect("b1");
    put(
        s,
        "alice",
        "b/unfinished",
        &body(3 * BS as usize, 1),
        2,
        None,
    )
    .await
    .expect("b2");
    let page = s.list_files("alice", "b/u", None, 100).await.expect("list");
    assert_eq!(keys(&page), vec!["b/unfinished"], "complete now");
    let all = s.list_files("alice", "", None, 100).await.expect("list");
    assert!(!keys(&all).contains(&"a"));
}

/// Pagination: pages of `limit` in key order, `next` the cursor to pass as
/// `after`, `None` exactly on the last page.
pub async fn listing_pages(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let names: Vec<String> = (0..7).map(|i| format!("p/{i:02}")).collect();
    for (n, key) in names.iter().enumerate() {
        complete(s, "alice", key, &body(5, n as u8)).await;
    }
    complete(s, "alice", "q", b"q").await;
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = s
            .list_files("alice", "p/", after.as_deref(), 3)
            .await
            .expect("page");
        pages += 1;
        assert!(page.files.len() <= 3);
        seen.extend(page.files.iter().map(|f| f.key.clone()));
        match page.next {
            Some(next) => {
                assert_eq!(Some(&next), seen.last(), "next is the page's last key");
                after = Some(next);
            }
            None => break,
        }
        assert!(pages < 10, "pagination ends");
    }
    assert_eq!(seen, names);
    assert_eq!(pages, 3, "3 + 3 + 1");
    // A page that ends exactly at the last file is the last page.
    let page = s.list_files("alice", "p/", None, 7).await.expect("page");
    assert_eq!((page.files.len(), page.next), (7, None));
    let page = s.list_files("alice", "p/", None, 6).await.expect("page");
    assert_eq!(page.next.as_deref(), Some("p/05"));
    // `after` need not be a stored key, and is exclusive.
    let page = s
        .list_files("alice", "", Some("p/035"), 2)
        .await
        .expect("page");
    assert_eq!(keys(&page), vec!["p/04", "p/05"]);
    assert_eq!(page.next.as_deref(), Some("p/05"));
    let page = s
        .list_files("alice", "", Some("p/06"), 10)
        .await
        .expect("page");
    assert_eq!((keys(&page), page.next.as_deref()), (vec!["q"], None));
    let page = s
        .list_files("alice", "", Some("q"), 10)
        .await
        .expect("page");
    assert_eq!((page.files.len(), page.next), (0, None));
}

/// HEAD: a complete file's meta; an unfinished upload is `Unfinished`,
/// nothing is `NotFound`.
pub async fn head(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let body = body(3 * BS as usize, 11);
    upload_in(s, "alice", "h", &body, &[0, 2]).await;
    assert_err(
        s.head("alice", "h").await,
        |e| matches!(e, StoreError::Unfinished),
        "head of an unfinished upload",
    );
    assert_err(
        s.head("alice", "none").await,
        |e| matches!(e, StoreError::NotFound),
        "head of nothing",
    );
    put(s, "alice", "h", &body, 1, None).await.expect("last");
    let meta = s.head("alice", "h").await.expect("complete");
    assert_eq!(meta.md5, md5_hex(&body));
}

/// Ranged reads: any offset and length inside the file, across blocks.
pub async fn ranged_reads(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let body = body(20_000 + 123, 12);
    let meta = complete(s, "alice", "big", &body).await;
    for (offset, len) in [
        (0u64, 1u64),
        (0, 20_123),
        (999, 2),
        (4095, 4098),
        (10_000, 10_123),
        (20_122, 1),
    ] {
        let got = s.read("alice", &meta, offset, len).await.expect("read");
        assert_eq!(
            got.as_ref(),
            &body[offset as usize..(offset + len) as usize],
            "offset {offset} len {len}"
        );
    }
    // The meta of a file deleted since: not found, never other bytes.
    s.delete_file("alice", "big", None).await.expect("delete");
    assert_err(
        s.read("alice", &meta, 0, 10).await,
        |e| matches!(e, StoreError::NotFound),
        "read after delete",
    );
    let other = body.iter().rev().copied().collect::<Vec<_>>();
    complete(s, "alice", "big", &other).await;
    assert_err(
        s.read("alice", &meta, 0, 10).await,
        |e| matches!(e, StoreError::NotFound),
        "read with an old meta after the key was stored again",
    );
}

/// Every error the interface names is reachable through it (the optional
/// ones in their own cases).
pub async fn every_error(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let body = body(2 * BS as usize, 13);
    assert_err(
        s.record_get("alice", "x").await,
        |e| matches!(e, StoreError::NotFound),
        "NotFound",
    );
    s.record_create("alice", "x", record(1))
        .await
        .expect("create");
    assert_err(
        s.record_create("alice", "x", record(1)).await,
        |e| matches!(e, StoreError::Exists),
        "Exists",
    );
    assert_err(
        s.open_upload("alice", "f").await,
        |e| matches!(e, StoreError::NotPlanned),
        "NotPlanned",
    );
    let (out, _) = upload_in(s, "alice", "f", &body, &[0]).await;
    assert_err(
        s.head("alice", "f").await,
        |e| matches!(e, StoreError::Unfinished),
        "Unfinished",
    );
    assert_err(
        put(s, "alice", "f", &body, 1, Some("stale")).await,
        |e| matches!(e, StoreError::Superseded),
        "Superseded",
    );
    assert_err(
        s.delete_file("alice", "f", Some("stale")).await,
        |e| matches!(e, StoreError::OtherUpload),
        "OtherUpload",
    );
    put(s, "alice", "f", &body, 1, out.upload_id.as_deref())
        .await
        .expect("complete");
    assert_err(
        s.open_upload("alice", "f").await,
        |e| matches!(e, StoreError::AlreadyComplete),
        "AlreadyComplete",
    );
    assert_err(
        s.plan_upload("alice", "f", plan_of(1), None).await,
        |e| matches!(e, StoreError::Exists),
        "Exists (file)",
    );
}

/// Users are apart: the same key of two users is two things.
pub async fn users_are_apart(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let (a, b) = (body(1500, 14), body(1700, 15));
    complete(s, "alice", "same", &a).await;
    assert_err(
        s.head("bob", "same").await,
        |e| matches!(e, StoreError::NotFound),
        "bob has no file",
    );
    complete(s, "bob", "same", &b).await;
    let ma = s.head("alice", "same").await.expect("alice");
    let mb = s.head("bob", "same").await.expect("bob");
    assert_eq!(read_all(s, "alice", &ma).await, a);
    assert_eq!(read_all(s, "bob", &mb).await, b);
    // Users whose names a careless encoding would confuse.
    for user in ["a/b", "a%2Fb", "..", ".a"] {
        s.record_create(user, "r", record(user.len() as i64))
            .await
            .expect("create");
    }
    for user in ["a/b", "a%2Fb", "..", ".a"] {
        assert_eq!(
            s.record_get(user, "r").await.expect("get"),
            record(user.len() as i64)
        );
    }
    s.delete_file("bob", "same", None).await.expect("delete");
    assert_eq!(s.head("alice", "same").await.expect("kept"), ma);
}

/// Unfinished uploads are counted, and those idle beyond the expiry are
/// swept (their blocks then refused); complete files are never swept.
pub async fn expiry_and_stats(subject: &dyn Subject) {
    let limits = StoreLimits {
        upload_expiry: Duration::from_secs(60),
        ..StoreLimits::default()
    };
    let inst = subject.fresh(limits).await;
    let s = &*inst.storage;
    let body = body(3 * BS as usize + 1, 16);
    let (idle, _) = upload_in(s, "alice", "idle", &body, &[0]).await;
    upload_in(s, "bob", "idle", &body, &[0, 3]).await;
    complete(s, "alice", "done", &body).await;
    let stats = s.unfinished_stats();
    assert_eq!(stats.count, 2);
    assert_eq!(stats.bytes_planned, 2 * body.len() as u64);
    // alice: block 0; bob: block 0 and the 1-byte last block.
    assert_eq!(stats.bytes_received, BS + BS + 1);
    assert_eq!(s.sweep_expired(SystemTime::now()).await.expect("sweep"), 0);
    let later = SystemTime::now() + Duration::from_secs(120);
    assert_eq!(s.sweep_expired(later).await.expect("sweep"), 2);
    assert_eq!(s.unfinished_stats(), Default::default());
    assert_err(
        s.open_upload("alice", "idle").await,
        |e| matches!(e, StoreError::NotPlanned),
        "block for a swept upload",
    );
    assert_err(
        s.head("alice", "idle").await,
        |e| matches!(e, StoreError::NotFound),
        "head of a swept upload",
    );
    s.head("alice", "done").await.expect("complete files stay");
    let out = s
        .plan_upload(
            "alice",
            "idle",
            plan_of(body.len() as u64),
            idle.upload_id.as_deref(),
        )
        .await
        .expect("plan");
    assert!(!out.resumed, "a swept upload starts over");
}

fn skipped(case: &str) {
    eprintln!("contract case {case}: not declared by this subject (Features), skipped");
}

/// A plan larger than the space left: `NoSpace` (opt-in).
pub async fn no_space(subject: &dyn Subject) {
    if !subject.features().no_space {
        return skipped("no_space");
    }
    let inst = subject
        .fresh(StoreLimits {
            max_unfinished_bytes_per_user: u64::MAX,
            ..StoreLimits::default()
        })
        .await;
    let s = &*inst.storage;
    assert_err(
        s.plan_upload("alice", "huge", plan_of(1 << 60), None).await,
        |e| matches!(e, StoreError::NoSpace),
        "NoSpace",
    );
    assert_eq!(s.unfinished_stats().count, 0, "nothing planned");
    complete(s, "alice", "small", b"still fine").await;
}

/// Per-user caps on unfinished uploads: `Quota` (opt-in).
pub async fn quota(subject: &dyn Subject) {
    if !subject.features().quota {
        return skipped("quota");
    }
    let inst = subject
        .fresh(StoreLimits {
            max_unfinished_uploads_per_user: 2,
            max_unfinished_bytes_per_user: 10 * BS,
            ..StoreLimits::default()
        })
        .await;
    let s = &*inst.storage;
    let plan = plan_of(2 * BS);
    s.plan_upload("alice", "a", plan, None).await.expect("a");
    s.plan_upload("alice", "b", plan, None).await.expect("b");
    assert_err(
        s.plan_upload("alice", "c", plan, None).await,
        |e| matches!(e, StoreError::Quota(_)),
        "Quota (count)",
    );
    s.plan_upload("alice", "b", plan, None)
        .await
        .expect("starting one's own key over is no new upload");
    s.plan_upload("bob", "c", plan, None)
        .await
        .expect("another user is apart");
    assert_err(
        s.plan_upload("bob", "big", plan_of(9 * BS), None).await,
        |e| matches!(e, StoreError::Quota(_)),
        "Quota (bytes)",
    );
    s.plan_upload("bob", "big", plan_of(8 * BS), None)
        .await
        .expect("within the byte cap");
}

/// Stored bytes altered behind the storage's back are refused on read:
/// `Integrity` (opt-in).
pub async fn integrity(subject: &dyn Subject) {
    if !subject.features().integrity {
        return skipped("integrity");
    }
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let body = body(12 * BS as usize, 17);
    let meta = complete(s, "alice", "rot", &body).await;
    subject.corrupt(&*inst.place, "alice", "rot", 1500).await;
    assert_err(
        s.read("alice", &meta, 1000, 1000).await,
        |e| matches!(e, StoreError::Integrity { .. }),
        "Integrity",
    );
    assert_eq!(
        s.read("alice", &meta, 11_000, 1000)
            .await
            .expect("elsewhere")
            .as_ref(),
        &body[11_000..],
        "ranges far from the damage still read"
    );
}

// ---------------------------------------------------------------- accounts

fn account(name: &str, hash: &str) -> Account {
    Account {
        name: name.to_owned(),
        password_hash: hash.to_owned(),
        epoch: 3,
    }
}

/// Accounts: created once, replaced only when they exist, deleted once,
/// listed by name in order, apart from the users' files and records, and
/// still there after a reopen (durable), names of any shape included.
pub async fn accounts(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    assert_eq!(s.account_get("alice").await.expect("get"), None);
    assert_eq!(s.account_list().await.expect("list"), Vec::<String>::new());
    s.account_create(&account("alice", "h1"))
        .await
        .expect("create");
    assert_eq!(
        s.account_get("alice").await.expect("get"),
        Some(account("alice", "h1"))
    );
    assert_err(
        s.account_create(&account("alice", "h2")).await,
        |e| matches!(e, StoreError::Exists),
        "second create",
    );
    assert_eq!(
        s.account_get("alice")
            .await
            .expect("get")
            .map(|a| a.password_hash),
        Some("h1".to_owned()),
        "a refused create changes nothing"
    );
    s.account_replace(&account("alice", "h3"))
        .await
        .expect("replace");
    assert_eq!(
        s.account_get("alice").await.expect("get"),
        Some(account("alice", "h3"))
    );
    assert_err(
        s.account_replace(&account("bob", "h")).await,
        |e| matches!(e, StoreError::NotFound),
        "replace of a missing account",
    );
    assert_eq!(s.account_get("bob").await.expect("get"), None);
    // Names a careless encoding would confuse or could not store.
    let long = "n".repeat(256);
    let odd = ["a/b", "a%2Fb", "..", ".a", "\u{fc}ber", long.as_str()];
    for name in odd {
        s.account_create(&account(name, name))
            .await
            .unwrap_or_else(|e| panic!("create {name:?}: {e}"));
    }
    // A user's files and records are not accounts, nor the other way round.
    s.record_create("carol", "r", record(1))
        .await
        .expect("record");
    complete(s, "carol", "f", &body(1200, 21)).await;
    let mut want: Vec<String> = odd.iter().map(|n| (*n).to_owned()).collect();
    want.push("alice".into());
    want.sort();
    assert_eq!(s.account_list().await.expect("list"), want);
    assert_eq!(s.account_get("carol").await.expect("get"), None);
    let page = s.list_files("alice", "", None, 10).await.expect("list");
    assert!(page.files.is_empty(), "an account has no files: {page:?}");
    for name in odd {
        assert_eq!(
            s.account_get(name).await.expect("get"),
            Some(account(name, name)),
            "{name:?}"
        );
    }
    s.account_delete("a/b").await.expect("delete");
    assert_eq!(s.account_get("a/b").await.expect("get"), None);
    assert_err(
        s.account_delete("a/b").await,
        |e| matches!(e, StoreError::NotFound),
        "second delete",
    );
    assert_err(
        s.account_replace(&account("a/b", "h")).await,
        |e| matches!(e, StoreError::NotFound),
        "replace after delete",
    );
    s.account_create(&account("a/b", "again"))
        .await
        .expect("create again after delete");
    // Durable: a restarted server finds them as they were.
    let Instance { storage, place } = inst;
    drop(storage);
    let s = subject.reopen(&*place, StoreLimits::default()).await;
    assert_eq!(
        s.account_get("alice").await.expect("get"),
        Some(account("alice", "h3"))
    );
    assert_eq!(
        s.account_get("a/b").await.expect("get"),
        Some(account("a/b", "again"))
    );
    assert_eq!(s.account_list().await.expect("list"), want);
}

// ---------------------------------------------------------------- replace

/// Plan a replacement of `key` by `body` (condition `if_md5`) and write
/// every block; returns the plan's outcome and the last block's answer.
async fn replace_with(
    s: &dyn Storage,
    user: &str,
    key: &str,
    body: &[u8],
    if_md5: Option<&str>,
) -> Result<(PlanOutcome, Option<String>), StoreError> {
    let replace = Replace {
        if_md5: if_md5.map(str::to_owned),
    };
    let out = s
        .plan_replace(user, key, plan_of(body.len() as u64), None, replace)
        .await?;
    let mut md5 = out.md5.clone();
    for i in 0..total_blocks(body.len() as u64, BS) {
        md5 = put(s, user, key, body, i, out.upload_id.as_deref()).await?;
    }
    Ok((out, md5))
}

/// A replace keeps the old file whole and readable until the new one is
/// complete, then swaps in one step; the replaced version stays readable
/// by its id for the grace period, then goes (also at the next replace).
pub async fn replace(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let v1 = body(3 * BS as usize + 7, 41);
    let v2 = body(2 * BS as usize + 3, 42);
    let m1 = complete(s, "alice", "f", &v1).await;
    let id1 = m1.upload_id.clone().expect("an id");
    assert_err(
        s.plan_upload("alice", "f", plan_of(9), None).await,
        |e| matches!(e, StoreError::Exists),
        "a plain SAVE of a complete key",
    );
    // Half-way through the replacement, the key is still the old file.
    let replace = Replace::default();
    let out = s
        .plan_replace("alice", "f", plan_of(v2.len() as u64), None, replace)
        .await
        .expect("replace plan");
    let id2 = out.upload_id.clone().expect("an id");
    assert_ne!(id1, id2);
    assert_eq!(out.missing, vec![[0, 3]]);
    assert_eq!(
        put(s, "alice", "f", &v2, 2, Some(&id2)).await.expect("b2"),
        None
    );
    assert_eq!(s.head("alice", "f").await.expect("old file"), m1);
    assert_eq!(read_all(s, "alice", &m1).await, v1);
    let listed = s.list_files("alice", "", None, 10).await.expect("list");
    assert_eq!(listed.files, vec![m1.clone()], "the old file is listed");
    put(s, "alice", "f", &v2, 0, Some(&id2)).await.expect("b0");
    let md5 = put(s, "alice", "f", &v2, 1, Some(&id2)).await.expect("b1");
    assert_eq!(md5, Some(md5_hex(&v2)));
    // Swapped: the key is the new file, whole.
    let m2 = s.head("alice", "f").await.expect("new file");
    assert_eq!(
        (m2.size, m2.md5.as_str()),
        (v2.len() as u64, md5_hex(&v2).as_str())
    );
    assert_eq!(m2.upload_id.as_deref(), Some(id2.as_str()));
    assert_eq!(read_all(s, "alice", &m2).await, v2);
    assert_eq!(s.head_version("alice", "f", &id2).await.expect("v2"), m2);
    assert_eq!(s.unfinished_stats().count, 0);
    let listed = s.list_files("alice", "", None, 10).await.expect("list");
    assert_eq!(listed.files, vec![m2.clone()]);
    // The replaced version, by its id, still reads whole (a download that
    // began before the swap finishes with the old bytes).
    let old = s.head_version("alice", "f", &id1).await.expect("kept");
    assert_eq!(old, m1);
    assert_eq!(read_all(s, "alice", &old).await, v1);
    assert_eq!(
        s.read("alice", &old, BS, 7).await.expect("ranged").to_vec(),
        v1[BS as usize..BS as usize + 7].to_vec()
    );
    for bogus in ["nope", "../x", ""] {
        assert_err(
            s.head_version("alice", "f", bogus).await,
            |e| matches!(e, StoreError::Replaced),
            "a version that never was",
        );
    }
    // After the grace period the sweeper removes it.
    let later = SystemTime::now() + StoreLimits::default().replaced_grace + Duration::from_secs(60);
    s.sweep_expired(later).await.expect("sweep");
    let gone = match s.head_version("alice", "f", &id1).await {
        Err(StoreError::Replaced) => true,
        Ok(meta) => s.read("alice", &meta, 0, meta.size).await.is_err(),
        Err(e) => panic!("after the grace: {e}"),
    };
    assert!(gone, "a replaced version is removed after the grace period");
    assert_eq!(read_all(s, "alice", &m2).await, v2, "the current one stays");
    // Replaced again: the version before is kept, the one before that goes.
    let v3 = body(BS as usize, 43);
    let (_, md5) = replace_with(s, "alice", "f", &v3, None).await.expect("v3");
    assert_eq!(md5, Some(md5_hex(&v3)));
    let m3 = s.head("alice", "f").await.expect("v3");
    assert_eq!(read_all(s, "alice", &m3).await, v3);
    let kept = s.head_version("alice", "f", &id2).await.expect("v2 kept");
    assert_eq!(read_all(s, "alice", &kept).await, v2);
    let (_, md5) = replace_with(s, "alice", "f", &v1, None).await.expect("v4");
    assert_eq!(md5, Some(md5_hex(&v1)));
    let gone = match s.head_version("alice", "f", &id2).await {
        Err(StoreError::Replaced) => true,
        Ok(meta) => s.read("alice", &meta, 0, meta.size).await.is_err(),
        Err(e) => panic!("two replaces later: {e}"),
    };
    assert!(gone, "a version two replaces old is removed");
    // An empty file replaces and is replaced like any other.
    let (out, md5) = replace_with(s, "alice", "f", b"", None)
        .await
        .expect("empty");
    assert_eq!((md5.as_deref(), out.missing.len()), (Some(EMPTY_MD5), 0));
    assert_eq!(s.head("alice", "f").await.expect("empty").size, 0);
    replace_with(s, "alice", "f", &v2, None)
        .await
        .expect("after empty");
    let m = s.head("alice", "f").await.expect("v2 again");
    assert_eq!(read_all(s, "alice", &m).await, v2);
    // A replace of a key with nothing creates it; DELETE takes every version.
    replace_with(s, "alice", "new", &v3, None)
        .await
        .expect("create");
    assert_eq!(
        s.head("alice", "new").await.expect("made").md5,
        md5_hex(&v3)
    );
    let before = s
        .head("alice", "f")
        .await
        .expect("f")
        .upload_id
        .expect("id");
    replace_with(s, "alice", "f", &v1, None)
        .await
        .expect("one more");
    assert_eq!(
        s.delete_file("alice", "f", None).await.expect("delete"),
        Deleted::File
    );
    for id in [before.as_str(), id1.as_str()] {
        assert_err(
            s.head_version("alice", "f", id).await,
            |e| matches!(e, StoreError::NotFound),
            "versions of a deleted key",
        );
    }
    complete(s, "alice", "f", &v3).await;
    let m = s.head("alice", "f").await.expect("fresh");
    assert_eq!(
        read_all(s, "alice", &m).await,
        v3,
        "a fresh file after DELETE"
    );
}

/// `if_md5` on replace and DELETE: checked at SAVE and again where the
/// swap happens, so a condition that stopped holding never replaces or
/// deletes a newer file.
pub async fn replace_conditions(subject: &dyn Subject) {
    let inst = fresh(subject).await;
    let s = &*inst.storage;
    let v1 = body(2 * BS as usize, 51);
    let v2 = body(2 * BS as usize + 1, 52);
    let m1 = complete(s, "alice", "c", &v1).await;
    let wrong = md5_hex(b"something else");
    for (key, md5) in [("c", wrong.as_str()), ("absent", m1.md5.as_str())] {
        assert_err(
            replace_with(s, "alice", key, &v2, Some(md5)).await,
            |e| matches!(e, StoreError::Precondition),
            "if_md5 that does not hold at SAVE",
        );
    }
    assert_eq!(s.head("alice", "c").await.expect("unchanged"), m1);
    assert_err(
        s.head("alice", "absent").await,
        |e| matches!(e, StoreError::NotFound),
        "nothing created",
    );
    // Holds at SAVE, not at completion (the file was deleted and stored
    // anew meanwhile): refused, the upload goes, the newer file stays.
    let out = s
        .plan_replace(
            "alice",
            "c",
            plan_of(v2.len() as u64),
            None,
            Replace {
                if_md5: Some(m1.md5.clone()),
            },
        )
        .await
        .expect("plan");
    let id = out.upload_id.clone().expect("id");
    put(s, "alice", "c", &v2, 0, Some(&id)).await.expect("b0");
    assert_eq!(
        s.delete_file("alice", "c", None).await.expect("del"),
        Deleted::File
    );
    let other = body(5, 53);
    replace_with(s, "alice", "c", &other, None)
        .await
        .expect("someone else's file");
    let m_other = s.head("alice", "c").await.expect("other");
    // That SAVE superseded the conditional upload: its blocks are refused.
    assert_err(
        put(s, "alice", "c", &v2, 1, Some(&id)).await,
        |e| {
            matches!(
                e,
                StoreError::Superseded | StoreError::NotPlanned | StoreError::AlreadyComplete
            )
        },
        "a superseded conditional upload",
    );
    // A conditional upload whose file changes without a new SAVE: DELETE
    // with a matching md5, then the last block.
    let out = s
        .plan_replace(
            "alice",
            "c",
            plan_of(v2.len() as u64),
            None,
            Replace {
                if_md5: Some(m_other.md5.clone()),
            },
        )
        .await
        .expect("plan");
    let id = out.upload_id.clone().expect("id");
    put(s, "alice", "c", &v2, 0, Some(&id)).await.expect("b0");
    put(s, "alice", "c", &v2, 1, Some(&id)).await.expect("b1");
    assert_err(
        s.delete_file_if("alice", "c", &wrong).await,
        |e| matches!(e, StoreError::Precondition),
        "DELETE if_md5 of another version",
    );
    assert_eq!(s.head("alice", "c").await.expect("kept"), m_other);
    assert_eq!(
        s.delete_file_if("alice", "c", &m_other.md5)
            .await
            .expect("delete"),
        Deleted::File
    );
    assert_err(
        put(s, "alice", "c", &v2, 2, Some(&id)).await,
        |e| matches!(e, StoreError::Precondition),
        "completion of a replacement whose file is gone",
    );
    assert_err(
        s.head("alice", "c").await,
        |e| matches!(e, StoreError::NotFound),
        "nothing stored, and the refused upload is gone",
    );
    assert_eq!(s.unfinished_stats().count, 0);
    assert_err(
        s.delete_file_if("alice", "c", &m_other.md5).await,
        |e| matches!(e, StoreError::NotFound),
        "DELETE if_md5 of nothing",
    );
    // A condition that holds at completion replaces.
    let m1 = complete(s, "alice", "c", &v1).await;
    let (_, md5) = replace_with(s, "alice", "c", &v2, Some(&m1.md5.to_uppercase()))
        .await
        .expect("conditional replace");
    assert_eq!(md5, Some(md5_hex(&v2)));
}

/// A replacing upload survives a restart as a replacing upload: resumed
/// with the same condition, the old file still there until it completes.
pub async fn replace_after_reopen(subject: &dyn Subject) {
    let limits = StoreLimits::default();
    let inst = subject.fresh(limits).await;
    let v1 = body(2 * BS as usize, 61);
    let v2 = body(3 * BS as usize, 62);
    let m1 = complete(&*inst.storage, "alice", "r", &v1).await;
    let replace = Replace {
        if_md5: Some(m1.md5.clone()),
    };
    let plan = plan_of(v2.len() as u64);
    let out = inst
        .storage
        .plan_replace("alice", "r", plan, None, replace.clone())
        .await
        .expect("plan");
    put(
        &*inst.storage,
        "alice",
        "r",
        &v2,
        1,
        out.upload_id.as_deref(),
    )
    .await
    .expect("b1");
    let Instance { storage, place } = inst;
    drop(storage);
    let s = subject.reopen(&*place, limits).await;
    let s = &*s;
    assert_eq!(s.head("alice", "r").await.expect("old file"), m1);
    assert_eq!(read_all(s, "alice", &m1).await, v1);
    let resumed = s
        .plan_replace("alice", "r", plan, out.upload_id.as_deref(), replace)
        .await
        .expect("resume");
    assert!(resumed.resumed);
    assert_eq!(resumed.missing, vec![[0, 1], [2, 3]]);
    assert_eq!(resumed.upload_id, out.upload_id);
    put(s, "alice", "r", &v2, 0, resumed.upload_id.as_deref())
        .await
        .expect("b0");
    let md5 = put(s, "alice", "r", &v2, 2, resumed.upload_id.as_deref())
        .await
        .expect("b2");
    assert_eq!(md5, Some(md5_hex(&v2)));
    let m2 = s.head("alice", "r").await.expect("new");
    assert_eq!(read_all(s, "alice", &m2).await, v2);
}

/// The unfinished upload under a key, read only: its id, plan and missing
/// blocks, the same from a reopened storage (a restart, or another
/// instance), and asking makes, resumes and removes nothing: the upload
/// completes afterwards with the right md5, a key with nothing stays
/// empty, and the stats count what they counted.
pub async fn upload_status(subject: &dyn Subject) {
    let limits = StoreLimits::default();
    let inst = subject.fresh(limits).await;
    let s = &*inst.storage;
    let nothing = |r: Result<UnfinishedUpload, StoreError>, what: &str| {
        assert_err(r, |e| matches!(e, StoreError::NotFound), what);
    };
    nothing(s.upload_status("alice", "u").await, "a key with nothing");
    assert_eq!(s.unfinished_stats().count, 0, "asking made no upload");
    assert_err(
        s.head("alice", "u").await,
        |e| matches!(e, StoreError::NotFound),
        "still nothing under the key",
    );
    let body = body(5 * BS as usize + 3, 51);
    let plan = plan_of(body.len() as u64);
    let before = step_server::store::api::unix_now();
    let (out, _) = upload_in(s, "alice", "u", &body, &[0, 2, 5]).await;
    let id = out.upload_id.clone().expect("an upload id");
    let status = s.upload_status("alice", "u").await.expect("its status");
    let after = step_server::store::api::unix_now();
    assert_eq!(status.upload_id, id);
    assert_eq!(status.plan, plan);
    assert_eq!(status.missing, vec![[1, 2], [3, 5]]);
    assert!(
        (before.saturating_sub(1)..=after + 1).contains(&status.last_active_unix),
        "last active {} not within [{before}, {after}]",
        status.last_active_unix
    );
    assert_eq!(
        s.upload_status("alice", "u").await.expect("again"),
        status,
        "asking again changes nothing"
    );
    assert_eq!(s.unfinished_stats().count, 1);
    nothing(s.upload_status("bob", "u").await, "another user's key");
    complete(s, "alice", "done", &body[..1500]).await;
    nothing(s.upload_status("alice", "done").await, "a complete file");

    let Instance { storage, place } = inst;
    drop(storage);
    let s = subject.reopen(&*place, limits).await;
    let s = &*s;
    let reopened = s.upload_status("alice", "u").await.expect("after reopen");
    assert_eq!(
        (&reopened.upload_id, reopened.plan, &reopened.missing),
        (&status.upload_id, status.plan, &status.missing),
        "the same upload after reopen"
    );
    // Blocks keep going to the upload that was asked about.
    let mut md5 = None;
    for i in [4, 1, 3] {
        md5 = put(s, "alice", "u", &body, i, Some(&id))
            .await
            .unwrap_or_else(|e| panic!("block {i}: {e}"));
        if i == 1 {
            let partway = s.upload_status("alice", "u").await.expect("part way");
            assert_eq!(partway.missing, vec![[3, 4]]);
        }
    }
    assert_eq!(md5, Some(md5_hex(&body)), "completed with the right md5");
    nothing(s.upload_status("alice", "u").await, "a completed upload");
    assert_eq!(s.unfinished_stats().count, 0);

    // A replacing upload beside the complete file is the key's unfinished
    // upload; the file stays the key's file.
    let m1 = s.head("alice", "u").await.expect("complete");
    let out = s
        .plan_replace("alice", "u", plan_of(2 * BS), None, Replace::default())
        .await
        .expect("replace plan");
    let replacing = s.upload_status("alice", "u").await.expect("replacing");
    assert_eq!(Some(replacing.upload_id), out.upload_id);
    assert_eq!(replacing.missing, vec![[0, 2]]);
    assert_eq!(s.head("alice", "u").await.expect("still the file"), m1);
}
