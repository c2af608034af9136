//! [`ObjectStorage`]: the storage interface over any
//! [`object_store::ObjectStore`] (AWS S3 and S3-compatible servers such as
//! Garage; `object_store`'s in-memory store for fast tests), under a key
//! prefix. Everything lives in the bucket; nothing is kept locally but
//! caches, so a second instance on an empty directory serves every file and
//! resumes every unfinished upload.
//!
//! # Layout under the prefix
//!
//! ```text
//! rec/<user>/<key>                   DATA record (JSON), create-only
//! meta/<user>/<key>                  complete file's FileMeta (JSON): THE completion marker
//! file/<user>/<key>/<upload_id>      complete file's content (absent for size 0)
//! file/<user>/<key>/<upload_id>.sums its CRC32C per 4 KiB (see "Integrity")
//! up/<user>/<key>/state              unfinished upload: id, plan (JSON)
//! up/<user>/<key>/b-<upload_id>/<i>  block i of that upload, staged as its own object
//! acct/<user>                        login account (JSON; see `object/accounts.rs`)
//! ```
//!
//! Coordinated (`--coord`), what decides a record or a file is never
//! overwritten (see `fenced.rs`): a record is `recv/<user>/<key>/<version>`,
//! a file version's meta `file/<user>/<key>/<upload_id>.v`, the coordinator
//! points at the current ones, and `meta/<user>/<key>` is only an (empty)
//! index entry for listings. A bucket in the earlier layout is migrated
//! once before anything is served from it (`migrate.rs`).
//!
//! `<user>` and `<key>` are encoded into segments of lowercase letters that
//! keep key order (see `names.rs`).
//!
//! # Where what is
//!
//! The rules of an upload are the lifecycle's (`store/files/`); this
//! backend carries them out in the bucket: `backend.rs` (the lifecycle's
//! calls), `load.rs` (what a key holds, read back from the bucket),
//! `blocks.rs` (a block's way in), `assembly.rs` (a file's content written
//! from its blocks), `listing.rs`, `records.rs`, `accounts.rs`, and
//! `coord.rs` and `fenced.rs` (several instances on one bucket).
//!
//! # What decides what
//!
//! Existence is never decided by LIST (Garage may show deleted keys) nor by
//! conditional PUTs (Garage ignores them): "first SAVE wins", create-only
//! records and "exactly one completion" are decided under an in-process
//! per-key async lock, then checked with a HEAD/GET of a known object. This
//! holds for one instance per bucket and prefix. LIST serves only listings,
//! finding which blocks are staged when an upload is reloaded (a block LIST
//! misses just shows as missing, and the client sends it again), and upkeep.
//!
//! Several instances on one bucket and prefix need a coordinator
//! ([`coord`], `--coord`): each SAVE, completion, DELETE and record
//! creation then also holds the key's lease, and reloads the key from the
//! bucket under it (another instance may have changed it); the key's current
//! upload and its received blocks are the coordinator's (each block is
//! marked there after it is staged, atomically with checking its upload is
//! still current; the mark that completes the count completes the file).
//! A coordinated upload keeps no blocks in memory and runs no assembler
//! (blocks reach several instances, and a repeat through another one may
//! change staged bytes): completion reads every staged block back once
//! (+1 GET per content byte against the table below). Per-user caps on
//! unfinished uploads and idle expiry are counted per instance (each counts
//! the uploads it planned, loaded or found at start).
//!
//! A file is complete exactly when its meta object exists. Completion writes
//! the content first (one PUT, or a multipart upload's completion: one
//! request), then its sums, then the meta, then removes the upload's state and staged
//! blocks. A completion cancelled after the meta finishes the cleanup at
//! the next block or SAVE. A crash before the meta leaves content nobody points at (under a
//! fresh `upload_id`, so it never replaces a file; removed with the key on
//! DELETE) and an upload whose blocks are all staged: the next SAVE-resume or
//! block completes it. A crash after the meta leaves a stale upload state,
//! dropped when the key is next loaded. An abandoned multipart upload is
//! aborted on error; one cut off by a crash is invisible and should be
//! reaped by the bucket's lifecycle rule (AbortIncompleteMultipartUpload).
//!
//! # Blocks and S3's part rules
//!
//! Every block is acknowledged only once durable: it is PUT as its own
//! object (a repeat with the same bytes is not written again; one with
//! other bytes replaces the staged block, as the reference's last write
//! wins). The staged blocks are the truth until the file's meta exists.
//!
//! A file of at most `PART_MIN` is written at completion with one PUT;
//! its blocks are kept in memory as they come (within a budget shared by
//! the store, `HELD_BYTES_TOTAL`), and those that are not (staged before
//! a restart, or past the budget) are read back, `read_ahead` at a time.
//!
//! A larger file is written as a multipart upload whose parts are runs of
//! consecutive blocks of at least `PART_MIN` bytes (8 MiB, raised for
//! files over 72 GiB so there are at most ~9,000 parts; only the last part is
//! smaller) — within AWS's rules (≥ 5 MiB but the last, ≤ 10,000 parts),
//! not depending on Garage's looser ones. The parts are written *while the
//! blocks arrive*: SAVE starts the multipart upload and an assembler task
//! (`Assembler`) that each staged block is handed to; blocks that extend
//! the contiguous prefix go straight into the next part (never read back),
//! early ones are held in memory (up to `HELD_BYTES` per upload and
//! `HELD_BYTES_TOTAL` in all) or, past that, read back when the prefix
//! reaches them. Memory per large upload being received: up to
//! `PARTS_IN_FLIGHT` parts being sent plus the one being filled (24 MiB),
//! plus what it holds; at most `MAX_ASSEMBLERS` run at once (an upload
//! that finds none free gets one at a later block if one frees, else is
//! assembled at completion with read-back). An idle upload keeps its
//! assembler (and its part buffer) until it completes or expires. Completion then has only
//! the tail to write. The assembler is a cache: an upload reloaded by a new
//! instance gets a new one at its next block, which reads back what was
//! staged before, in order, while the rest arrives; if it fails, completion
//! assembles from the staged blocks, as for small files. A multipart upload
//! no longer wanted is aborted, or — cut off by a crash — left invisible for the
//! bucket's lifecycle rule (AbortIncompleteMultipartUpload) to reap.
//!
//! The md5 and the chunk CRCs are computed over the content in order as it
//! goes into the file, so they need no saved state: after a restart they
//! are computed again from the staged blocks (md-5 0.10 in this workspace
//! cannot save a running hash's state; with md-5 0.11 the prefix's state
//! could be kept in the bucket next to the multipart's part list, which
//! `object_store`'s `ObjectStore` trait does not expose — its
//! `MultipartStore` does). S3's ETag is never used as an md5.
//!
//! # Cost per byte of content (measured by the tests, see
//! `bytes_crossing_and_written_per_content_byte`)
//!
//! | upload | PUT (server → store) | GET (store → server) | written |
//! |---|---|---|---|
//! | ≤ 8 MiB, any order | 2 (staged, file) | 0 | 2 |
//! | ≤ 8 MiB, instance restarted half-way | 2 | 0.5 (what was staged before) | 2 |
//! | large, in order or shuffled within 32 MiB | 2 (staged, part) | 0 | 2 |
//! | large, reversed (40 MiB) | 2 | 0.2 (past the 32 MiB held) | 2 |
//! | large, in order, instance restarted half-way | 2.4 (lost parts) | 0.5 (what was staged before) | 2 (+ lost parts) |
//!
//! plus 4 bytes per 4 KiB of sums and the small JSON objects; each staged
//! block is deleted once the file is complete, so the bucket ends with one
//! copy. A repeat of a staged block costs one GET of it (unless held); one
//! with other bytes also a PUT, and the file is then assembled from the
//! staged blocks at completion. For a large
//! upload completion waits only for the last part and the multipart's
//! completion.
//!
//! # Integrity of ranged reads
//!
//! As on disk, completion also computes one CRC32C per 4 KiB chunk of the
//! content (in the same pass as the md5) and writes them as a sums object
//! (`file/<user>/<key>/<upload_id>.sums`, before the meta). A ranged read
//! GETs the covering chunks and their CRCs concurrently (no extra round
//! trip) and refuses bytes that fail (`StoreError::Integrity`); a file
//! without sums is served unverified. The sums add 4 bytes per 4 KiB
//! (0.1%) to what is written.
//!
//! # Accounting
//!
//! Unfinished uploads are accounted for in memory (planned and received
//! bytes, last activity) for `unfinished_stats`, per-user caps and
//! expiry. A fresh instance learns about uploads already in the bucket with
//! one LIST of `up/` (and a GET per upload state) before its first SAVE,
//! block or DELETE, or at the first sweep — so stats read before that are
//! those of this instance only. Idle time after a restart comes from the

mod accounts;
mod assembly;
mod backend;
mod blocks;
pub mod coord;
mod fenced;
mod io;
mod load;
mod migrate;
mod names;
mod read;
mod records;
mod seal;
mod status;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::stream::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};
use step_core::plan::to_ranges;

use super::api::{PlanRecord, Replace, StoreError, StoreResult};
use super::files::{FileStore, Key, KeyId, Ledger};
use super::keylock::{self, Idle, LockMap};
use super::limits::StoreLimits;
pub use assembly::PART_MIN;
use assembly::{Assembler, Held, MAX_ASSEMBLERS};
use coord::{Coord, Lease};
use io::{other, store_err};
pub use migrate::Migrated;

/// Coordinated: plans of uploads kept in memory, at most.
const KNOWN_PLANS: usize = 4096;

/// The storage interface on an object store: the upload lifecycle over a
/// [`Bucket`], with the bucket's records and accounts; see the module docs.
pub type ObjectStorage = FileStore<Bucket>;

// ------------------------------------------------------------------ state

/// An unfinished upload as kept in the bucket (`up/<user>/<key>/state`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct UploadState {
    upload_id: String,
    size: u64,
    block_size: u64,
    user: String,
    key: String,
    #[serde(default)]
    created_unix: u64,
    /// A replacing upload (SAVE with `replace`) and its condition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replace: Option<Replace>,
}

/// An unfinished upload as known in memory.
#[derive(Debug)]
struct Upload {
    id: String,
    plan: PlanRecord,
    received: Vec<bool>,
    remaining: u64,
    /// Assembling the file as blocks arrive (large uploads; lost with the
    /// instance, and started again at the next block after a reload).
    assembler: Option<Assembler>,
    /// An assembler was started (once per upload and instance: one that
    /// failed is not retried, completion does the work).
    assembler_tried: bool,
    /// A small upload's blocks, kept so completion need not read them back.
    held: Held,
    /// Replaces the key's complete file at completion (SAVE `replace`).
    replace: Option<Replace>,
}

impl Drop for Upload {
    fn drop(&mut self) {
        // Discarded (or completed without it): its multipart goes too.
        if let Some(a) = &self.assembler {
            a.cancel.cancel();
        }
    }
}

impl Upload {
    fn missing(&self) -> Vec<[u64; 2]> {
        to_ranges(
            self.received
                .iter()
                .enumerate()
                .filter(|(_, r)| !**r)
                .map(|(i, _)| i as u64),
        )
    }
}

/// What this instance knows of one key, guarded by the key's async lock:
/// the lock that serialises SAVE, completion and DELETE of that key (its
/// whole point; the object I/O done under it is that key's own). The
/// key's entry in the lock map stays while it caches an upload.
#[derive(Debug, Default)]
struct KeyState {
    /// `upload` reflects the bucket (loaded since this entry was made).
    loaded: bool,
    upload: Option<Upload>,
    /// With a coordinator: the key's lease, held for the operation under
    /// way; checked before each commit point.
    lease: Option<Box<dyn Lease>>,
}

impl Idle for KeyState {
    fn idle(&self) -> bool {
        self.upload.is_none()
    }
}

/// A key locked by [`Bucket::lock_key`]: however the operation ends (error,
/// cancellation), the key's lease goes with the guard, and so does the
/// key's entry in the lock map once nobody uses it and it holds no upload.
/// Coordinated, the entry also forgets what it loaded: the next holder
/// reloads anyway, and an upload completed by another instance must not
/// stay in this one's memory.
struct KeyGuard(keylock::KeyGuard<KeyId, KeyState>);

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if self.0.lease.take().is_some() {
            self.0.upload = None;
            self.0.loaded = false;
        }
    }
}

impl std::fmt::Debug for KeyGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyGuard")
            .field("loaded", &self.0.loaded)
            .field("upload", &self.0.upload.as_ref().map(|u| &u.id))
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for KeyGuard {
    type Target = KeyState;
    fn deref(&self) -> &KeyState {
        &self.0
    }
}

impl std::ops::DerefMut for KeyGuard {
    fn deref_mut(&mut self) -> &mut KeyState {
        &mut self.0
    }
}

/// A key locked for one operation of the lifecycle.
#[derive(Debug)]
pub struct HeldKey {
    names: Key,
    state: KeyGuard,
    /// A change is under way: until it ends well, what `state` caches may
    /// be behind the bucket (an error or a cancellation part-way), so the
    /// key is reloaded by its next user.
    changing: bool,
}

impl HeldKey {
    fn new(names: &Key, state: KeyGuard) -> HeldKey {
        HeldKey {
            names: names.clone(),
            state,
            changing: false,
        }
    }
}

impl Drop for HeldKey {
    fn drop(&mut self) {
        if self.changing {
            self.state.loaded = false;
        }
    }
}

/// An object store under a prefix, as the lifecycle's backend.
#[derive(Debug)]
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    root: Path,
    limits: StoreLimits,
    /// Per-key locks, each with what this instance knows of the key.
    files: LockMap<KeyId, KeyState>,
    /// Per-key locks of records (and accounts).
    records: LockMap<KeyId>,
    ledger: Ledger,
    /// Uploads already in the bucket have been accounted for.
    scanned: tokio::sync::OnceCell<()>,
    /// Bytes of early blocks held by all assemblies.
    held_total: Arc<AtomicU64>,
    /// Assemblers that may run at once (each buffers up to three parts).
    assemblers: Arc<tokio::sync::Semaphore>,
    /// Several instances on this bucket: what must be atomic across them
    /// (see `coord.rs`). `None`: this instance is alone, its own locks
    /// decide.
    coord: Option<Arc<dyn Coord>>,
    /// Coordinated: plans of uploads by id (ids are never reused), so a
    /// block needs no GET of its upload's state.
    plans: Mutex<HashMap<String, PlanRecord>>,
    /// Coordinated: when objects nobody points at were last looked for
    /// (a LIST of every record and file, so not at every sweep).
    orphans_swept: Mutex<Option<std::time::Instant>>,
    /// Coordinated: the bucket's layout is known to be current (see
    /// `migrate.rs`); nothing resolves a record or a file before.
    layout: tokio::sync::OnceCell<()>,
    /// [`ObjectStorage::upgrade`] drives the migration: requests only wait.
    layout_driven: std::sync::atomic::AtomicBool,
    /// Tests: conversions a migration makes before it fails (`u64::MAX`:
    /// no limit).
    #[cfg(test)]
    migrate_budget: AtomicU64,
}

impl FileStore<Bucket> {
    /// Storage on `store` under `prefix` (`""` for the bucket's root).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, limits: StoreLimits) -> ObjectStorage {
        Self::coordinated(store, prefix, limits, None)
    }

    /// Storage on `store` under `prefix`, one of several instances sharing
    /// it through `coord` (`None`: alone, as [`Self::new`]).
    pub fn coordinated(
        store: Arc<dyn ObjectStore>,
        prefix: &str,
        limits: StoreLimits,
        coord: Option<Arc<dyn Coord>>,
    ) -> ObjectStorage {
        FileStore::with_backend(Bucket {
            store,
            root: Path::from(prefix),
            limits,
            files: LockMap::new(),
            records: LockMap::new(),
            ledger: Ledger::default(),
            scanned: tokio::sync::OnceCell::new(),
            held_total: Arc::new(AtomicU64::new(0)),
            assemblers: Arc::new(tokio::sync::Semaphore::new(MAX_ASSEMBLERS)),
            coord,
            plans: Mutex::new(HashMap::new()),
            orphans_swept: Mutex::new(None),
            layout: tokio::sync::OnceCell::new(),
            layout_driven: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            migrate_budget: AtomicU64::new(u64::MAX),
        })
    }

    /// On a fresh `object_store` in-memory store (tests).
    pub fn in_memory() -> ObjectStorage {
        Self::new(
            Arc::new(object_store::memory::InMemory::new()),
            "",
            StoreLimits::default(),
        )
    }

    /// Account for the unfinished uploads already in the bucket now rather
    /// than before the first request that needs it.
    pub async fn recover(&self) -> StoreResult<()> {
        self.backend().ensure_scanned().await
    }

    /// Coordinated: migrate the bucket from an earlier release's layout if
    /// it holds one (one instance does it, others wait for it; see
    /// `migrate.rs`). Until it is done, requests that resolve a record or
    /// a file answer "unavailable". Alone: nothing to do.
    pub async fn upgrade(&self) -> StoreResult<Migrated> {
        self.backend().upgrade_layout().await
    }

    /// The object store underneath.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.backend().store
    }
}

impl Bucket {
    // -------------------------------------------------------------- paths

    fn path(&self, parts: &[&str]) -> Path {
        let mut p = self.root.clone();
        for part in parts {
            p = p.clone().join(*part);
        }
        p
    }

    fn rec_path(&self, n: &Key) -> Path {
        self.path(&["rec", &n.id.0, &n.id.1])
    }
    fn meta_dir(&self, us: &str) -> Path {
        self.path(&["meta", us])
    }
    fn meta_path(&self, n: &Key) -> Path {
        self.path(&["meta", &n.id.0, &n.id.1])
    }
    fn content_dir(&self, n: &Key) -> Path {
        self.path(&["file", &n.id.0, &n.id.1])
    }
    fn content_path(&self, n: &Key, upload_id: &str) -> Path {
        self.path(&["file", &n.id.0, &n.id.1, upload_id])
    }
    /// A replaced version's meta, kept beside its content while it may
    /// still be read (see [`Files::head_version`](crate::store::Files::head_version)).
    fn retired_meta_path(&self, n: &Key, upload_id: &str) -> Path {
        self.path(&["file", &n.id.0, &n.id.1, &format!("{upload_id}.meta")])
    }
    /// The content's chunk CRCs (see [`encode_sums`]).
    fn sums_path(&self, n: &Key, upload_id: &str) -> Path {
        self.path(&["file", &n.id.0, &n.id.1, &format!("{upload_id}.sums")])
    }
    fn state_path(&self, n: &Key) -> Path {
        self.path(&["up", &n.id.0, &n.id.1, "state"])
    }
    fn blocks_dir(&self, n: &Key, upload_id: &str) -> Path {
        self.path(&["up", &n.id.0, &n.id.1, &format!("b-{upload_id}")])
    }
    fn block_path(&self, n: &Key, upload_id: &str, index: u64) -> Path {
        self.path(&[
            "up",
            &n.id.0,
            &n.id.1,
            &format!("b-{upload_id}"),
            &index.to_string(),
        ])
    }

    // -------------------------------------------------------------- object I/O

    async fn get_bytes(&self, path: &Path) -> StoreResult<Option<Bytes>> {
        match self.store.get(path).await {
            Ok(r) => Ok(Some(r.bytes().await.map_err(store_err)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &Path,
    ) -> StoreResult<Option<T>> {
        match self.get_bytes(path).await? {
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| other(format!("corrupt object {path}: {e}"))),
            None => Ok(None),
        }
    }

    async fn put_json<T: Serialize>(&self, path: &Path, value: &T) -> StoreResult<()> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Other(Box::new(e)))?;
        self.store
            .put(path, PutPayload::from(bytes))
            .await
            .map_err(store_err)?;
        Ok(())
    }

    async fn exists(&self, path: &Path) -> StoreResult<bool> {
        match self.store.head(path).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(store_err(e)),
        }
    }

    async fn delete_paths(&self, paths: Vec<Path>) -> StoreResult<()> {
        let stream = futures::stream::iter(paths.into_iter().map(Ok)).boxed();
        let mut deleted = self.store.delete_stream(stream);
        while let Some(r) = deleted.next().await {
            match r {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
        }
        Ok(())
    }

    /// Delete every object under `dir` (found by LIST: what it misses is
    /// left for the sweep).
    async fn delete_dir(&self, dir: &Path) -> StoreResult<()> {
        let paths: Vec<Path> = self
            .store
            .list(Some(dir))
            .map_ok(|m| m.location)
            .try_collect()
            .await
            .map_err(store_err)?;
        self.delete_paths(paths).await
    }

    // -------------------------------------------------------------- key locks

    /// Lock a key for one operation: this instance's lock, then, with a
    /// coordinator, the key's lease (and the key is reloaded: another
    /// instance may have changed it). The lease goes with the guard.
    async fn lock_key(&self, n: &Key) -> StoreResult<KeyGuard> {
        let mut state = KeyGuard(self.files.lock(n.id.clone()).await);
        if let Some(coord) = &self.coord {
            self.ensure_layout().await?;
            state.lease = Some(coord.lease(&names::lease_name(n)).await?);
            state.loaded = false;
        }
        Ok(state)
    }

    /// With a coordinator, a record key's lease: records are create-only
    /// across instances too.
    async fn record_lease(&self, n: &Key) -> StoreResult<Option<Box<dyn Lease>>> {
        match &self.coord {
            Some(coord) => coord.lease(&names::record_lease_name(n)).await.map(Some),
            None => Ok(None),
        }
    }

    /// Before a commit point: fails if the key's lease was lost (so an
    /// instance that stalled past it writes nothing the next holder did
    /// not expect). Alone, there is nothing to check.
    async fn check_lease(&self, st: &KeyState) -> StoreResult<()> {
        match &st.lease {
            Some(lease) => lease.check().await,
            None if self.coord.is_some() => Err(other("a commit point outside the key's lease")),
            None => Ok(()),
        }
    }
}
