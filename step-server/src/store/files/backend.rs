//! What a store provides to the upload lifecycle: where bytes and metadata
//! go, how they are made durable, how a key is locked. The rules (when
//! SAVE resumes, what completion checks, what a DELETE may take, what the
//! sweeper removes) are the lifecycle's; a backend only carries them out.
//!
//! Calls marked "under the key's lock" get the [`Backend::Held`] their
//! operation took with [`Backend::lock`]; everything a key's state changes
//! by happens under it. The others only read.

use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;

use super::ledger::{KeyId, Ledger};
use super::listing::PageRule;
use crate::store::api::{FileMeta, ListPage, PlanRecord, Replace, StoreResult, UnfinishedUpload};
use crate::store::limits::StoreLimits;

/// A key as one store knows it: the names a client gave and the store's
/// own encoding of them. A key found by the sweeper from its [`KeyId`]
/// alone has empty names (they are only for logs there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub user: String,
    pub key: String,
    pub id: KeyId,
}

/// An unfinished upload, as the lifecycle sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfinished {
    pub id: String,
    pub plan: PlanRecord,
    /// A replacing upload's condition (SAVE `replace`).
    pub replace: Option<Replace>,
    /// Blocks not received yet.
    pub remaining: u64,
}

/// An unfinished upload opened for blocks ([`Backend::open`]).
pub trait Sink: Send + Sync + Debug + 'static {
    fn plan(&self) -> PlanRecord;
    fn upload_id(&self) -> &str;
}

/// What a block did ([`Backend::receive`]).
#[derive(Debug)]
pub enum Received<H> {
    /// Stored; the upload still misses blocks.
    Stored,
    /// Every block is in: complete the upload under `held` (the key's
    /// lock). `last` is the block that filled it, where the backend can use
    /// it without reading it back.
    Full { held: H, last: Option<(u64, Bytes)> },
}

/// A store's half of the upload lifecycle (see the module docs).
#[async_trait]
pub trait Backend: Send + Sync + Debug + Sized + 'static {
    /// A key locked for one operation: this process's lock on it, and
    /// where several processes share the store, the key's lease. Dropping
    /// it unlocks, however the operation ended.
    type Held: Send;
    /// An unfinished upload opened for blocks.
    type Sink: Sink;
    /// A completion's content, in place but not yet the key's file.
    type Sealed: Send;

    fn limits(&self) -> &StoreLimits;
    fn ledger(&self) -> &Ledger;
    /// `user`'s `key` in this store's encoding.
    fn key(&self, user: &str, key: &str) -> Key;
    /// The key known only by its id (the sweeper's).
    fn key_of(&self, id: &KeyId) -> Key {
        Key {
            user: String::new(),
            key: String::new(),
            id: id.clone(),
        }
    }
    /// Run one whole operation of the lifecycle where this backend's calls
    /// may be made: a store whose calls block runs it on a thread for
    /// blocking work; an async one just awaits it.
    async fn run<T: Send + 'static>(
        &self,
        op: BoxFuture<'static, StoreResult<T>>,
    ) -> StoreResult<T>;

    // ------------------------------------------------------------ reading

    /// The key's complete file, if any.
    async fn current(&self, key: &Key) -> StoreResult<Option<FileMeta>>;
    /// The meta of a replaced version still kept (`id` is one of ours).
    async fn kept_version(&self, key: &Key, id: &str) -> StoreResult<Option<FileMeta>>;
    /// Whether the key holds an unfinished upload.
    async fn has_upload(&self, key: &Key) -> StoreResult<bool>;
    /// The key's unfinished upload, read only: nothing is resumed,
    /// refreshed, loaded for writing or cleaned up, so asking never changes
    /// what a later SAVE, block or sweep sees.
    async fn status(&self, key: &Key) -> StoreResult<Option<UnfinishedUpload>>;
    /// `len` bytes at `offset` of the file `meta` describes, verified.
    async fn read(&self, user: &str, meta: &FileMeta, offset: u64, len: u64) -> StoreResult<Bytes>;
    /// One page of `user`'s complete files, as `rule` says.
    async fn list(&self, user: &str, rule: PageRule<'_>) -> StoreResult<ListPage>;
    /// Whether the store answers now.
    async fn ready(&self) -> StoreResult<()> {
        Ok(())
    }

    // ------------------------------------------------------------ the key's lock

    async fn lock(&self, key: &Key) -> StoreResult<Self::Held>;
    /// Before each commit point: fails when the lock no longer holds (a
    /// lease that lapsed), so nothing is written that a later holder did
    /// not expect.
    async fn fence(&self, _held: &Self::Held) -> StoreResult<()> {
        Ok(())
    }

    // ------------------------------------------------------------ uploads (under the key's lock)

    /// The key's unfinished upload, loaded from the store if need be.
    async fn unfinished(&self, held: &mut Self::Held) -> StoreResult<Option<Unfinished>>;
    /// Block ranges the loaded upload still misses, `[start, end)`.
    async fn missing(&self, held: &mut Self::Held) -> StoreResult<Vec<[u64; 2]>>;
    /// Start a new upload (the key has none now); its accounts are
    /// reserved already. Returns its id.
    async fn create(
        &self,
        held: &mut Self::Held,
        plan: PlanRecord,
        replace: Option<Replace>,
    ) -> StoreResult<String>;
    /// Remove the unfinished upload `id`, with anything a failed completion
    /// of it wrote; its blocks are refused from now on.
    async fn discard(&self, held: &mut Self::Held, id: &str) -> StoreResult<()>;

    // ------------------------------------------------------------ blocks

    /// The key's unfinished upload opened for blocks, if there is one.
    async fn open(&self, key: &Key) -> StoreResult<Option<Self::Sink>>;
    /// Store block `index` (checked against the sink's plan by the service)
    /// in the upload `sink` opened, if it is still the key's current one —
    /// and the one `named` (the id the client sent), when given.
    async fn receive(
        &self,
        key: &Key,
        sink: &Self::Sink,
        index: u64,
        data: Bytes,
        named: Option<&str>,
    ) -> StoreResult<Received<Self::Held>>;

    // ------------------------------------------------------------ completion (under the key's lock)

    /// The content of the full upload `up`, in place under its own name,
    /// with its md5; not yet the key's file.
    async fn seal(
        &self,
        held: &mut Self::Held,
        up: &Unfinished,
        last: Option<(u64, Bytes)>,
    ) -> StoreResult<(String, Self::Sealed)>;
    /// An empty file's content, likewise.
    async fn seal_empty(&self, held: &mut Self::Held) -> StoreResult<Self::Sealed>;
    /// Make `meta` (with the `sealed` content) the key's file in one step
    /// for readers, durably. When it replaces `current`, that version stays
    /// readable by its id ([`Self::kept_version`]) and versions replaced
    /// before it go.
    async fn publish(
        &self,
        held: &mut Self::Held,
        sealed: Self::Sealed,
        meta: &FileMeta,
        current: Option<&FileMeta>,
    ) -> StoreResult<()>;
    /// After [`Self::publish`]: the completed upload `id`'s own state goes.
    async fn finish(&self, held: &mut Self::Held, id: &str) -> StoreResult<()>;
    /// Remove the key's complete file, every version of it (the meta
    /// first: from then on the key holds no file).
    async fn remove_file(&self, held: &mut Self::Held) -> StoreResult<()>;
    /// Remove what [`Self::seal`] made of upload `id` when it is not
    /// published after all (its md5 is not the one its writer sent), after
    /// the upload was discarded. Nothing by default: a store whose sealed
    /// content lives in the upload goes with it.
    async fn unseal(&self, _held: &mut Self::Held, _id: &str) -> StoreResult<()> {
        Ok(())
    }
    /// Remove the replaced version `id` of the key, whose file is now
    /// `current` (another version, or none).
    async fn drop_version(
        &self,
        held: &mut Self::Held,
        id: &str,
        current: Option<&FileMeta>,
    ) -> StoreResult<()>;

    // ------------------------------------------------------------ upkeep

    /// Account for the unfinished uploads the store holds, before a sweep.
    async fn scan(&self) -> StoreResult<()> {
        Ok(())
    }
    /// Remove what belongs to no upload any more and is older than
    /// `cutoff_ms` (e.g. blocks that landed after their upload went).
    async fn sweep_leftovers(&self, _cutoff_ms: u64) -> StoreResult<()> {
        Ok(())
    }
}
