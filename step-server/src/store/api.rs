//! The storage interface: everything the service keeps, in the vocabulary it
//! speaks — users, keys, records, upload plans, blocks, completion, head,
//! ranged reads, deletes and listings — never paths, objects or wire values.
//!
//! Implementations: [`super::disk::DiskStore`] (local file system, the
//! default) and [`super::object::ObjectStorage`] (any `object_store` backend:
//! S3-compatible servers, and its in-memory store for fast tests). One
//! contract suite (`tests/tests/store_contract.rs`) runs against each.
//!
//! Protocol rules stay in the service: the service checks a block's index
//! and length against the plan ([`UploadWriter::plan`]) before handing over
//! an index it has validated; an implementation re-checks only what it needs
//! for its own safety.

use std::fmt::Debug;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// What the storage layer can fail with. The service maps each to a STEP
/// status (and `reason`) in one place.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Nothing under that key (record, file or upload).
    #[error("not found")]
    NotFound,
    /// The key is taken (records are create-only; a complete file is never
    /// replaced by a SAVE).
    #[error("already exists")]
    Exists,
    /// The key holds an unfinished upload, not a complete file.
    #[error("not completely uploaded")]
    Unfinished,
    /// No unfinished upload to put a block into.
    #[error("no upload planned")]
    NotPlanned,
    /// The upload is already complete.
    #[error("already complete")]
    AlreadyComplete,
    /// The block names an upload (`upload_id`) that is no longer the key's
    /// current one, or the plan changed under it.
    #[error("superseded by another upload")]
    Superseded,
    /// A DELETE scoped to one upload found something else under the key.
    #[error("the key holds another upload")]
    OtherUpload,
    /// Stored bytes failed their checksum at `offset`.
    #[error("stored bytes at offset {offset} failed their integrity check")]
    Integrity { offset: u64 },
    /// A per-user cap on unfinished uploads.
    #[error("{0}")]
    Quota(String),
    /// A condition on the current file (`if_md5`) does not hold.
    #[error("the file is not the version the condition names")]
    Precondition,
    /// The upload's bytes do not have the md5 its writer expects: it was
    /// not completed, and is discarded.
    #[error("the upload's md5 is not the one its writer sent")]
    Md5Mismatch,
    /// The version asked for was replaced and is no longer kept.
    #[error("that version of the file was replaced and is no longer kept")]
    Replaced,
    /// Out of space (also: a plan larger than the space left).
    #[error("out of storage space")]
    NoSpace,
    /// The backing service cannot be reached or refused to serve (e.g. S3
    /// 5xx, timeouts); the request may succeed later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// Anything else (I/O errors, corrupt metadata).
    #[error("storage error: {0}")]
    Other(#[source] Box<dyn std::error::Error + Send + Sync>),
}

pub type StoreResult<T> = Result<T, StoreError>;

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        // ENOSPC / EDQUOT: said plainly, a client can do something about it.
        match e.raw_os_error() {
            Some(28) | Some(122) => StoreError::NoSpace,
            _ => StoreError::Other(Box::new(e)),
        }
    }
}

/// Seconds since the Unix epoch, now (0 if the clock is before it).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What SAVE decided, persisted so an upload survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub size: u64,
    pub block_size: u64,
}

impl PlanRecord {
    /// Blocks in the plan.
    pub fn total(&self) -> u64 {
        step_core::plan::total_blocks(self.size, self.block_size)
    }
}

/// A complete file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub key: String,
    pub size: u64,
    pub md5: String,
    /// The upload that produced the file (its uploader may delete it by id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    /// When the file became complete, seconds since the Unix epoch
    /// (0 when unknown: files from before it was kept).
    #[serde(default)]
    pub completed_unix: u64,
}

/// What a replacing SAVE asks for ([`Files::plan_replace`]); kept with
/// the unfinished upload, so its completion checks it again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replace {
    /// Replace only the file with this md5 (and create nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_md5: Option<String>,
}

impl Replace {
    /// Whether a key whose complete file is `current` may take this
    /// replacement now (decided at SAVE, and again at completion under the
    /// store's lock).
    pub fn check(&self, current: Option<&FileMeta>) -> StoreResult<()> {
        match (&self.if_md5, current) {
            (None, _) => Ok(()),
            (Some(want), Some(meta)) if want.eq_ignore_ascii_case(&meta.md5) => Ok(()),
            (Some(_), _) => Err(StoreError::Precondition),
        }
    }
}

/// Whether a SAVE (plain, or replacing with `replace`) may plan an upload
/// of a key whose complete file is `current`: a plain one only when there
/// is none ([`StoreError::Exists`]).
pub fn check_save(replace: Option<&Replace>, current: Option<&FileMeta>) -> StoreResult<()> {
    match replace {
        None if current.is_some() => Err(StoreError::Exists),
        None => Ok(()),
        Some(r) => r.check(current),
    }
}

/// The result of a FILE SAVE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOutcome {
    pub plan: PlanRecord,
    /// Block indexes still needed, as `[start, end)` ranges.
    pub missing: Vec<[u64; 2]>,
    /// An unfinished upload was continued rather than started over.
    pub resumed: bool,
    /// Set when the file is complete already (size 0).
    pub md5: Option<String>,
    /// The upload's id; none when already complete.
    pub upload_id: Option<String>,
}

/// A key's unfinished upload as [`Files::upload_status`] reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnfinishedUpload {
    pub upload_id: String,
    pub plan: PlanRecord,
    /// Block indexes not yet received, as `[start, end)` ranges.
    pub missing: Vec<[u64; 2]>,
    /// The last SAVE or block, Unix seconds (the upload's expiry counts
    /// from it).
    pub last_active_unix: u64,
}

/// The result of a FILE DELETE that found something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    File,
    UnfinishedUpload,
}

/// Totals over every unfinished upload (for metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnfinishedStats {
    pub count: u64,
    pub bytes_planned: u64,
    pub bytes_received: u64,
}

/// One page of a listing of a user's complete files, in key order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub files: Vec<FileMeta>,
    /// Pass as `after` for the next page; `None` on the last page.
    pub next: Option<String>,
}

/// A login account (`--auth accounts`): its name and its password's
/// argon2id hash, a PHC string (`$argon2id$v=19$...`). The storage keeps it
/// as given; hashing and verifying are the service's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub password_hash: String,
    /// Bound into the account's tokens: a new one (password changed) ends
    /// every token minted before. Accounts written before epochs read as 0.
    #[serde(default)]
    pub epoch: u64,
}

/// An unfinished upload opened for one block (UPLOAD): the service reads the
/// plan, checks the block against it, then hands the block over.
#[async_trait]
pub trait UploadWriter: Send + Debug {
    /// The plan blocks are checked against.
    fn plan(&self) -> PlanRecord;
    /// The id of the upload this writer opened, where the implementation
    /// knows it without a round trip: lets the service refuse a block that
    /// names another upload as superseded before checking it against this
    /// upload's plan (a racing SAVE may have planned another size). `None`
    /// leaves that to [`Self::put_block`].
    fn upload_id(&self) -> Option<&str> {
        None
    }
    /// The whole file's md5 as its writer computed it (UPLOAD `md5`): the
    /// upload completes only if its bytes have it; otherwise it is
    /// discarded ([`StoreError::Md5Mismatch`]) and the key keeps what it
    /// held. Kept for the upload when this block does not complete it.
    fn expect_md5(&mut self, _md5: String) {}
    /// Write block `index` (already checked against [`Self::plan`]). With
    /// `upload_id`, the block is refused ([`StoreError::Superseded`]) unless
    /// it names this upload — checked atomically with the write, so blocks
    /// of two uploads of one key never mix. Returns the file's md5 when this
    /// block completed it (exactly one block's answer carries it).
    async fn put_block(
        self: Box<Self>,
        index: u64,
        data: Bytes,
        upload_id: Option<String>,
    ) -> StoreResult<Option<String>>;
}

/// DATA records: small JSON objects, create-only.
#[async_trait]
pub trait Records: Send + Sync + Debug {
    /// Store a record under a new key ([`StoreError::Exists`] if taken).
    async fn record_create(
        &self,
        user: &str,
        key: &str,
        record: Map<String, Value>,
    ) -> StoreResult<()>;
    async fn record_get(&self, user: &str, key: &str) -> StoreResult<Map<String, Value>>;
    async fn record_delete(&self, user: &str, key: &str) -> StoreResult<()>;
}

/// FILEs: uploads planned, written block by block and completed; complete
/// files read, replaced, listed and deleted.
#[async_trait]
pub trait Files: Send + Sync + Debug {
    /// SAVE: plan an upload (resume the unfinished upload `resume` names,
    /// when it is the key's current one with the same plan; otherwise start
    /// over). [`StoreError::Exists`] when the key
    /// holds a complete file; a size-0 plan completes at once.
    async fn plan_upload(
        &self,
        user: &str,
        key: &str,
        plan: PlanRecord,
        resume: Option<&str>,
    ) -> StoreResult<PlanOutcome>;
    /// SAVE with `replace`: like [`Self::plan_upload`], but a complete file
    /// under `key` does not refuse it; it stays the key's file, readable,
    /// until this upload completes and takes its place in one step. The
    /// replaced version stays readable by [`Self::head_version`] for
    /// [`super::StoreLimits::replaced_grace`] (or until the key is replaced
    /// again or deleted). With `if_md5`, only while the current file has that
    /// md5, checked now and again at completion
    /// ([`StoreError::Precondition`]; an upload refused at completion is
    /// discarded).
    async fn plan_replace(
        &self,
        user: &str,
        key: &str,
        plan: PlanRecord,
        resume: Option<&str>,
        replace: Replace,
    ) -> StoreResult<PlanOutcome>;
    /// UPLOAD, first half: the unfinished upload under `key`
    /// ([`StoreError::AlreadyComplete`], [`StoreError::NotPlanned`]).
    async fn open_upload(&self, user: &str, key: &str) -> StoreResult<Box<dyn UploadWriter>>;
    /// A complete file's metadata ([`StoreError::Unfinished`] for an
    /// unfinished upload, [`StoreError::NotFound`]).
    async fn head(&self, user: &str, key: &str) -> StoreResult<FileMeta>;
    /// The metadata of version `upload_id` of `key`: the current file's, or
    /// a replaced one still kept; [`StoreError::Replaced`] when it is gone
    /// and the key holds another, [`StoreError::NotFound`] when the key
    /// holds nothing.
    async fn head_version(&self, user: &str, key: &str, upload_id: &str) -> StoreResult<FileMeta>;
    /// `len` bytes at `offset` of the complete file `meta` describes,
    /// verified against the checksums kept with it where there are some.
    async fn read(&self, user: &str, meta: &FileMeta, offset: u64, len: u64) -> StoreResult<Bytes>;
    /// The unfinished upload under `key` (beside a complete file, for a
    /// replacing one), read only: nothing is resumed, refreshed, loaded
    /// for writing or cleaned up, so asking never changes what a later
    /// SAVE, block or expiry sweep sees. [`StoreError::NotFound`] when the
    /// key holds none.
    async fn upload_status(&self, user: &str, key: &str) -> StoreResult<UnfinishedUpload>;
    /// DELETE: the complete file or unfinished upload under `key`; with
    /// `upload_id`, only that upload (or the file it completed), else
    /// [`StoreError::OtherUpload`].
    async fn delete_file(
        &self,
        user: &str,
        key: &str,
        upload_id: Option<&str>,
    ) -> StoreResult<Deleted>;
    /// DELETE of the complete file under `key` only while its md5 is
    /// `if_md5` ([`StoreError::Precondition`] otherwise), decided under the
    /// same lock as a replacement's completion: a newer version is never
    /// deleted. An unfinished upload under the key is left alone.
    async fn delete_file_if(&self, user: &str, key: &str, if_md5: &str) -> StoreResult<Deleted>;
    /// Complete files of `user` whose keys start with `prefix`, in key
    /// order, after the key `after`, at most `limit`.
    async fn list_files(
        &self,
        user: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<ListPage>;
}

/// Login accounts (`--auth accounts`). They live with the files (disk or
/// bucket), so `step-server user …` and every server on the same storage
/// see the same ones.
#[async_trait]
pub trait Accounts: Send + Sync + Debug {
    /// The account called `name`, if there is one.
    async fn account_get(&self, name: &str) -> StoreResult<Option<Account>>;
    /// Add an account ([`StoreError::Exists`] if the name is taken).
    async fn account_create(&self, account: &Account) -> StoreResult<()>;
    /// Replace an account's password hash ([`StoreError::NotFound`] if
    /// there is no such account).
    async fn account_replace(&self, account: &Account) -> StoreResult<()>;
    /// Remove an account ([`StoreError::NotFound`] if there is none).
    async fn account_delete(&self, name: &str) -> StoreResult<()>;
    /// Every account's name, sorted.
    async fn account_list(&self) -> StoreResult<Vec<String>>;
}

/// What the server runs beside requests: readiness, metrics, sweeps.
#[async_trait]
pub trait Upkeep: Send + Sync + Debug {
    /// Whether the storage (and what it depends on) answers now: for a
    /// readiness probe. Local storage always does.
    async fn ready(&self) -> StoreResult<()> {
        Ok(())
    }
    fn unfinished_stats(&self) -> UnfinishedStats;
    /// Remove unfinished uploads idle since before `now − expiry`, and
    /// replaced versions past their grace; returns how many uploads went.
    /// Run periodically by the server.
    async fn sweep_expired(&self, now: SystemTime) -> StoreResult<usize>;
}

/// Everything the STEP service keeps, in one handle: what a store that has
/// all four concerns is. A part of the server (or a test double) that needs
/// only one takes that trait instead (`Arc<dyn Storage>` coerces to any).
pub trait Storage: Records + Files + Accounts + Upkeep {}

impl<T: Records + Files + Accounts + Upkeep + ?Sized> Storage for T {}
