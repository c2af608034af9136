//! [`ObjectStorage`]: the [`Storage`] interface over any
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
//! `<user>` and `<key>` are encoded ([`user_seg`], [`key_seg`]) into
//! segments of lowercase letters only — nothing `object_store`'s `Path`
//! rejects or escapes, never `.`/`..`, never empty. Key segments preserve
//! byte order and prefixes (a hex variant), so LIST of `meta/<user>/`
//! returns files in key order and a key prefix is a segment prefix; keys
//! over [`KEY_ORDERED_BYTES`] keep those first bytes in order and end in a
//! hash (object names must stay short: 1024 bytes on AWS, about 470 on
//! Garage), and the listing re-sorts those few by their real key (see
//! [`Inner::list_files`]). Users over [`USER_PLAIN_BYTES`] are hashed.
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
//! A file of at most [`PART_MIN`] is written at completion with one PUT;
//! its blocks are kept in memory as they come (within a budget shared by
//! the store, [`HELD_BYTES_TOTAL`]), and those that are not (staged before
//! a restart, or past the budget) are read back, [`read_ahead`] at a time.
//!
//! A larger file is written as a multipart upload whose parts are runs of
//! consecutive blocks of at least [`PART_MIN`] bytes (8 MiB, raised for
//! files over 72 GiB so there are at most ~9,000 parts; only the last part is
//! smaller) — within AWS's rules (≥ 5 MiB but the last, ≤ 10,000 parts),
//! not depending on Garage's looser ones. The parts are written *while the
//! blocks arrive*: SAVE starts the multipart upload and an assembler task
//! ([`Assembler`]) that each staged block is handed to; blocks that extend
//! the contiguous prefix go straight into the next part (never read back),
//! early ones are held in memory (up to [`HELD_BYTES`] per upload and
//! [`HELD_BYTES_TOTAL`] in all) or, past that, read back when the prefix
//! reaches them. Memory per large upload being received: up to
//! [`PARTS_IN_FLIGHT`] parts being sent plus the one being filled (24 MiB),
//! plus what it holds; at most [`MAX_ASSEMBLERS`] run at once (an upload
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
//! trip) and refuses bytes that fail ([`StoreError::Integrity`]); a file
//! without sums is served unverified. The sums add 4 bytes per 4 KiB
//! (0.1%) to what is written.
//!
//! # Accounting
//!
//! Unfinished uploads are accounted for in memory (planned and received
//! bytes, last activity) for [`Storage::unfinished_stats`], per-user caps and
//! expiry. A fresh instance learns about uploads already in the bucket with
//! one LIST of `up/` (and a GET per upload state) before its first SAVE,
//! block or DELETE, or at the first sweep — so stats read before that are
//! those of this instance only. Idle time after a restart comes from the
//! objects' `last_modified`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, UploadPart};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Sha256;

use super::sums::{CHUNK, ChunkSums};
use step_core::digest::EMPTY_MD5;
use step_core::plan::{block_len, to_ranges, total_blocks};
use tracing::{debug, error, info, warn};

use super::StoreLimits;
use super::api::{
    Account, Deleted, FileMeta, ListPage, PlanOutcome, PlanRecord, Replace, Storage, StoreError,
    StoreResult, UnfinishedStats, UnfinishedUpload, UploadWriter, unix_now,
};
use coord::{Coord, Lease, Mark};

/// Smallest multipart part written (AWS requires 5 MiB but for the last).
pub const PART_MIN: u64 = 8 << 20;
/// Parts per file at most (AWS allows 10,000).
const MAX_PARTS: u64 = 9_000;
/// Bytes of staged blocks read back at once (small requests are slow on
/// some servers: Garage answers each in 45–90 ms, so depth matters).
const READ_AHEAD_BYTES: u64 = 2 << 20;

/// Staged blocks read back concurrently.
fn read_ahead(block_size: u64) -> usize {
    usize::try_from(READ_AHEAD_BYTES / block_size.max(1))
        .unwrap_or(64)
        .clamp(4, 64)
}
/// Multipart parts in flight at once during completion.
const PARTS_IN_FLIGHT: usize = 2;
/// Key bytes kept in order in a key's segment; longer keys end in a hash.
/// Small enough that a whole object name stays well under what S3 servers
/// take: AWS allows 1024 bytes, Garage on LMDB about 470 (its index key,
/// with the bucket id, is limited to 511 bytes; found by the contract suite).
const KEY_ORDERED_BYTES: usize = 96;
/// Users up to this many bytes are kept readable-ish; longer ones hashed.
const USER_PLAIN_BYTES: usize = 32;
/// Coordinated: plans of uploads kept in memory, at most.
const KNOWN_PLANS: usize = 4096;
/// Metadata objects fetched concurrently by a listing.
const LIST_FETCH: usize = 16;

// ------------------------------------------------------------------ names

/// Order-preserving hex with the alphabet `b..=q`: every byte is two
/// letters, so byte order is string order; `a` (below) and `x`, `z` (above)
/// stay free for bounds and markers.
fn nibbles(bytes: &[u8], out: &mut String) {
    for b in bytes {
        out.push(char::from(b'b' + (b >> 4)));
        out.push(char::from(b'b' + (b & 0x0f)));
    }
}

/// A user's path segment (injective; order does not matter for users).
fn user_seg(user: &str) -> String {
    let mut out = String::with_capacity(1 + 2 * USER_PLAIN_BYTES);
    if user.len() <= USER_PLAIN_BYTES {
        out.push('u');
        nibbles(user.as_bytes(), &mut out);
    } else {
        out.push('x');
        nibbles(&Sha256::digest(user.as_bytes()), &mut out);
    }
    out
}

/// The part of a key segment that sorts: `k` and the first
/// [`KEY_ORDERED_BYTES`] bytes of `key`.
fn key_seg_ordered(key: &[u8]) -> String {
    let head = &key[..key.len().min(KEY_ORDERED_BYTES)];
    let mut out = String::with_capacity(2 + 2 * head.len() + 64);
    out.push('k');
    nibbles(head, &mut out);
    out
}

/// A key's path segment: injective, in key order for keys up to
/// [`KEY_ORDERED_BYTES`]; longer keys sharing those first bytes form a
/// group (`<ordered>x<hash>`) that sorts after all of them but in hash order.
fn key_seg(key: &str) -> String {
    let mut out = key_seg_ordered(key.as_bytes());
    if key.len() > KEY_ORDERED_BYTES {
        out.push('x');
        nibbles(&Sha256::digest(key.as_bytes()), &mut out);
    }
    out
}

/// An upload's identity: its encoded user and key.
type Id = (String, String);

#[derive(Debug, Clone)]
struct Names {
    user: String,
    key: String,
    us: String,
    ks: String,
}

impl Names {
    fn new(user: &str, key: &str) -> Names {
        Names {
            user: user.to_owned(),
            key: key.to_owned(),
            us: user_seg(user),
            ks: key_seg(key),
        }
    }

    fn id(&self) -> Id {
        (self.us.clone(), self.ks.clone())
    }

    /// The key's name at the coordinator (its lease, its current upload).
    fn lease_name(&self) -> String {
        format!("f/{}/{}", self.us, self.ks)
    }

    /// A record key's lease name.
    fn record_lease_name(&self) -> String {
        format!("r/{}/{}", self.us, self.ks)
    }
}

// ------------------------------------------------------------------ errors

/// The one place `object_store` errors become [`StoreError`]s.
fn store_err(e: object_store::Error) -> StoreError {
    match e {
        object_store::Error::NotFound { .. } => StoreError::NotFound,
        // HTTP failures after retries: connection refused, 5xx, timeouts.
        object_store::Error::Generic { .. } => StoreError::Unavailable(e.to_string()),
        other => StoreError::Other(Box::new(other)),
    }
}

fn other(msg: impl Into<String>) -> StoreError {
    StoreError::Other(msg.into().into())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

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

/// What one key holds, guarded by the key's async lock: the lock that
/// serialises SAVE, completion and DELETE of that key (its whole point; the
/// object I/O done under it is that key's own).
#[derive(Debug, Default)]
struct KeyState {
    /// `upload` reflects the bucket (loaded since this entry was made).
    loaded: bool,
    upload: Option<Upload>,
    /// With a coordinator: the key's lease, held for the operation under
    /// way ([`ObjectStorage::hold`]); checked before each commit point.
    lease: Option<Box<dyn Lease>>,
}

type Slot = Arc<tokio::sync::Mutex<KeyState>>;

/// A key's slot locked by [`Inner::lock_key`]: however the operation ends
/// (error, cancellation), the key's lease goes with the guard.
/// Coordinated, the slot also forgets what it loaded: the next holder
/// reloads anyway, and an upload completed by another instance must not
/// stay in this one's memory.
struct KeyGuard(tokio::sync::OwnedMutexGuard<KeyState>);

impl Drop for KeyGuard {
    fn drop(&mut self) {
        if self.0.lease.take().is_some() {
            self.0.upload = None;
            self.0.loaded = false;
        }
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

/// Accounting of one unfinished upload (kept apart from the key locks so
/// that stats never wait for I/O).
#[derive(Debug, Clone, Copy)]
struct Pending {
    planned: u64,
    received: u64,
    last_ms: u64,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn ObjectStore>,
    root: Path,
    limits: StoreLimits,
    files: Mutex<HashMap<Id, Slot>>,
    records: Mutex<HashMap<Id, Arc<tokio::sync::Mutex<()>>>>,
    pending: Mutex<HashMap<Id, Pending>>,
    /// Uploads already in the bucket have been accounted for.
    scanned: tokio::sync::OnceCell<()>,
    /// Bytes of early blocks held by all assemblies.
    held_total: Arc<AtomicU64>,
    /// Assemblers that may run at once (each buffers up to three parts).
    assemblers: Arc<tokio::sync::Semaphore>,
    /// Versions replaced by this instance and kept for downloads under way,
    /// with when (ms): removed by the sweep after the grace period (and
    /// with the key's next replace or DELETE).
    retired: Mutex<Vec<(Names, String, u64)>>,
    /// Several instances on this bucket: what must be atomic across them
    /// (see `coord.rs`). `None`: this instance is alone, its own locks
    /// decide.
    coord: Option<Arc<dyn Coord>>,
    /// Coordinated: plans of uploads by id (ids are never reused), so a
    /// block needs no GET of its upload's state.
    plans: Mutex<HashMap<String, PlanRecord>>,
}

/// The [`Storage`] interface on an object store; see the module docs.
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    inner: Arc<Inner>,
}

/// A key's slot, locked for one operation ([`ObjectStorage::hold`]).
struct HeldKey {
    names: Names,
    id: Id,
    slot: Slot,
    state: KeyGuard,
}

impl ObjectStorage {
    /// Lock `user`'s `key` for one operation; end it with
    /// [`ObjectStorage::release`].
    async fn hold(&self, user: &str, key: &str) -> StoreResult<HeldKey> {
        self.inner.ensure_scanned().await?;
        let names = Names::new(user, key);
        let id = names.id();
        let slot = self.inner.file_slot(&id);
        let state = match self.inner.lock_key(&names, &slot).await {
            Ok(state) => state,
            Err(e) => {
                self.inner.release_slot(&id, slot);
                return Err(e);
            }
        };
        Ok(HeldKey {
            names,
            id,
            slot,
            state,
        })
    }

    /// End `held`'s operation with its `result`. After a failure the bucket
    /// may be ahead of what we think: the key is reloaded next time.
    fn release<T>(&self, held: HeldKey, result: StoreResult<T>) -> StoreResult<T> {
        let HeldKey {
            id,
            slot,
            mut state,
            ..
        } = held;
        if result.is_err() {
            state.loaded = false;
        }
        // The guard holds a clone of the slot: gone before release_slot
        // counts them.
        drop(state);
        self.inner.release_slot(&id, slot);
        result
    }

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
        ObjectStorage {
            inner: Arc::new(Inner {
                store,
                root: Path::from(prefix),
                limits,
                files: Mutex::new(HashMap::new()),
                records: Mutex::new(HashMap::new()),
                pending: Mutex::new(HashMap::new()),
                scanned: tokio::sync::OnceCell::new(),
                held_total: Arc::new(AtomicU64::new(0)),
                assemblers: Arc::new(tokio::sync::Semaphore::new(MAX_ASSEMBLERS)),
                retired: Mutex::new(Vec::new()),
                coord,
                plans: Mutex::new(HashMap::new()),
            }),
        }
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
        self.inner.ensure_scanned().await
    }

    /// The object store underneath.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.inner.store
    }
}

/// What a LIST of `up/` found for one key.
#[derive(Debug, Default)]
struct ScannedKey {
    state: Option<(Path, u64)>,
    /// Per upload id: its staged blocks' paths, bytes, newest change (ms).
    blocks: HashMap<String, (Vec<Path>, u64, u64)>,
}

impl Inner {
    // -------------------------------------------------------------- paths

    fn path(&self, parts: &[&str]) -> Path {
        let mut p = self.root.clone();
        for part in parts {
            p = p.clone().join(*part);
        }
        p
    }

    fn rec_path(&self, n: &Names) -> Path {
        self.path(&["rec", &n.us, &n.ks])
    }
    fn meta_dir(&self, us: &str) -> Path {
        self.path(&["meta", us])
    }
    fn meta_path(&self, n: &Names) -> Path {
        self.path(&["meta", &n.us, &n.ks])
    }
    fn content_dir(&self, n: &Names) -> Path {
        self.path(&["file", &n.us, &n.ks])
    }
    fn content_path(&self, n: &Names, upload_id: &str) -> Path {
        self.path(&["file", &n.us, &n.ks, upload_id])
    }
    /// A replaced version's meta, kept beside its content while it may
    /// still be read (see [`Storage::head_version`]).
    fn retired_meta_path(&self, n: &Names, upload_id: &str) -> Path {
        self.path(&["file", &n.us, &n.ks, &format!("{upload_id}.meta")])
    }
    /// The content's chunk CRCs (see [`encode_sums`]).
    fn sums_path(&self, n: &Names, upload_id: &str) -> Path {
        self.path(&["file", &n.us, &n.ks, &format!("{upload_id}.sums")])
    }
    fn state_path(&self, n: &Names) -> Path {
        self.path(&["up", &n.us, &n.ks, "state"])
    }
    fn blocks_dir(&self, n: &Names, upload_id: &str) -> Path {
        self.path(&["up", &n.us, &n.ks, &format!("b-{upload_id}")])
    }
    fn block_path(&self, n: &Names, upload_id: &str, index: u64) -> Path {
        self.path(&[
            "up",
            &n.us,
            &n.ks,
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

    // -------------------------------------------------------------- key slots

    /// Lock a key's `slot` for one operation: this instance's lock, then,
    /// with a coordinator, the key's lease (and the slot is reloaded: another
    /// instance may have changed the key). The lease goes when the caller
    /// sets `lease` back to `None` or drops the guard.
    async fn lock_key(&self, n: &Names, slot: &Slot) -> StoreResult<KeyGuard> {
        let mut state = KeyGuard(Arc::clone(slot).lock_owned().await);
        if let Some(coord) = &self.coord {
            state.lease = Some(coord.lease(&n.lease_name()).await?);
            state.loaded = false;
        }
        Ok(state)
    }

    fn file_slot(&self, id: &Id) -> Slot {
        Arc::clone(lock(&self.files).entry(id.clone()).or_default())
    }

    /// Forget a key's slot once nobody uses it and it holds no upload (the
    /// bucket stays the truth; the slot is reloaded when needed).
    fn release_slot(&self, id: &Id, slot: Slot) {
        let mut files = lock(&self.files);
        // Clones are made only under `files`: two references (the map's and
        // ours) mean nobody else holds it, nor can get it now.
        if Arc::strong_count(&slot) == 2
            && let Ok(st) = slot.try_lock()
            && st.upload.is_none()
            && files.get(id).is_some_and(|s| Arc::ptr_eq(s, &slot))
        {
            drop(st);
            files.remove(id);
        }
    }

    /// With a coordinator, a record key's lease: records are create-only
    /// across instances too.
    async fn record_lease(&self, n: &Names) -> StoreResult<Option<Box<dyn Lease>>> {
        match &self.coord {
            Some(coord) => coord.lease(&n.record_lease_name()).await.map(Some),
            None => Ok(None),
        }
    }

    fn record_lock(&self, id: &Id) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.records).entry(id.clone()).or_default())
    }

    fn release_record_lock(&self, id: &Id, l: Arc<tokio::sync::Mutex<()>>) {
        let mut records = lock(&self.records);
        if Arc::strong_count(&l) == 2 && files_ptr_eq(records.get(id), &l) {
            records.remove(id);
        }
    }

    // -------------------------------------------------------------- accounting

    async fn ensure_scanned(&self) -> StoreResult<()> {
        self.scanned
            .get_or_try_init(|| async {
                let found = self.scan().await?;
                let mut accounted = 0;
                for ((us, ks), k) in found {
                    let Some((state_path, state_ms)) = k.state else {
                        continue;
                    };
                    let Some(state) = self.get_json::<UploadState>(&state_path).await? else {
                        continue;
                    };
                    let (received, last) = k
                        .blocks
                        .get(&state.upload_id)
                        .map_or((0, 0), |b| (b.1, b.2));
                    lock(&self.pending).entry((us, ks)).or_insert(Pending {
                        planned: state.size,
                        received,
                        last_ms: last.max(state_ms),
                    });
                    accounted += 1;
                }
                if accounted > 0 {
                    info!(
                        uploads = accounted,
                        "accounted for unfinished uploads in the bucket"
                    );
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// One LIST of `up/`: every upload state and staged block.
    async fn scan(&self) -> StoreResult<HashMap<Id, ScannedKey>> {
        let up = self.path(&["up"]);
        let prefix_parts = up.parts().count();
        let mut found: HashMap<Id, ScannedKey> = HashMap::new();
        let mut list = self.store.list(Some(&up));
        while let Some(m) = list.next().await {
            let m = m.map_err(store_err)?;
            let parts: Vec<String> = m
                .location
                .parts()
                .skip(prefix_parts)
                .map(|p| p.as_ref().to_owned())
                .collect();
            let ms = u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0);
            match parts.as_slice() {
                [us, ks, state] if state == "state" => {
                    found.entry((us.clone(), ks.clone())).or_default().state =
                        Some((m.location, ms));
                }
                [us, ks, dir, _index] if dir.starts_with("b-") => {
                    let e = found
                        .entry((us.clone(), ks.clone()))
                        .or_default()
                        .blocks
                        .entry(dir[2..].to_owned())
                        .or_default();
                    e.0.push(m.location);
                    e.1 += m.size;
                    e.2 = e.2.max(ms);
                }
                _ => warn!(path = %m.location, "unexpected object under up/"),
            }
        }
        Ok(found)
    }

    fn touch(&self, id: &Id, received_more: u64) {
        if let Some(p) = lock(&self.pending).get_mut(id) {
            p.received += received_more;
            p.last_ms = unix_ms(SystemTime::now());
        }
    }

    // -------------------------------------------------------------- uploads

    /// Bring a key's slot up to date with the bucket, once.
    async fn load(&self, n: &Names, st: &mut KeyState) -> StoreResult<()> {
        if st.loaded {
            return Ok(());
        }
        let Some(state) = self.get_json::<UploadState>(&self.state_path(n)).await? else {
            if let Some(coord) = &self.coord
                && st.lease.is_some()
            {
                // The bucket is the truth for what exists.
                coord.set_current(&n.lease_name(), None).await?;
            }
            st.upload = None;
            st.loaded = true;
            lock(&self.pending).remove(&n.id());
            return Ok(());
        };
        let current = self.get_json::<FileMeta>(&self.meta_path(n)).await?;
        if current.is_some_and(|meta| {
            state.replace.is_none() || meta.upload_id.as_deref() == Some(&state.upload_id)
        }) {
            // Completion got as far as the meta: the rest is leftovers. (A
            // replacing upload lives beside the file it replaces.)
            info!(user = %n.user, key = %n.key, "removing the leftovers of a completed upload");
            self.discard(n, &state.upload_id).await?;
            st.upload = None;
            st.loaded = true;
            return Ok(());
        }
        let plan = PlanRecord {
            size: state.size,
            block_size: state.block_size,
        };
        let total = total_blocks(plan.size, plan.block_size);
        let (received, last) = match &self.coord {
            Some(coord) => {
                self.received_coordinated(coord.as_ref(), n, st, &state.upload_id, total)
                    .await?
            }
            None => {
                self.received_listed(n, &state.upload_id, plan, total)
                    .await?
            }
        };
        let (mut remaining, mut bytes) = (total, 0);
        for (i, _) in received.iter().enumerate().filter(|(_, r)| **r) {
            remaining -= 1;
            bytes += block_len(plan.size, plan.block_size, i as u64).unwrap_or(0);
        }
        info!(user = %n.user, key = %n.key, remaining, "loaded unfinished upload from the bucket");
        let last = last.max(state.created_unix.saturating_mul(1000));
        let mut pending = lock(&self.pending);
        let p = pending.entry(n.id()).or_insert(Pending {
            planned: plan.size,
            received: 0,
            last_ms: 0,
        });
        p.received = bytes;
        // Coordinated, blocks may reach other instances: the latest counts.
        p.last_ms = p.last_ms.max(last);
        drop(pending);
        if self.coord.is_some() {
            self.remember_plan(&state.upload_id, plan);
        }
        st.upload = Some(Upload {
            id: state.upload_id,
            plan,
            received,
            remaining,
            assembler: None,
            // Coordinated, no assembler: blocks reach several instances.
            assembler_tried: self.coord.is_some(),
            held: self.small_held(plan),
            replace: state.replace,
        });
        st.loaded = true;
        Ok(())
    }

    /// Which blocks of upload `upload_id` are staged, by one LIST of its
    /// blocks (alone on the bucket), and when the last one came (ms).
    async fn received_listed(
        &self,
        n: &Names,
        upload_id: &str,
        plan: PlanRecord,
        total: u64,
    ) -> StoreResult<(Vec<bool>, u64)> {
        let mut received =
            vec![false; usize::try_from(total).map_err(|_| other("plan too large"))?];
        let mut last = 0;
        let mut list = self.store.list(Some(&self.blocks_dir(n, upload_id)));
        while let Some(m) = list.next().await {
            let m = m.map_err(store_err)?;
            let Some(index) = m.location.filename().and_then(|f| f.parse::<u64>().ok()) else {
                continue;
            };
            // A block of the wrong length is not this plan's: sent again.
            if block_len(plan.size, plan.block_size, index) == Some(m.size)
                && let Some(r) = received.get_mut(index as usize)
            {
                *r = true;
                last = last.max(u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0));
            }
        }
        Ok((received, last))
    }

    /// Which blocks of upload `upload_id` were received, coordinated: the
    /// coordinator's record (every instance marks there), not a LIST.
    /// Under the key's lease, the coordinator's current upload is first set
    /// to the bucket's (it may have lost it).
    async fn received_coordinated(
        &self,
        coord: &dyn Coord,
        n: &Names,
        st: &KeyState,
        upload_id: &str,
        total: u64,
    ) -> StoreResult<(Vec<bool>, u64)> {
        if total > u64::from(u32::MAX) {
            return Err(other("plan too large"));
        }
        let name = n.lease_name();
        if st.lease.is_some() && coord.current(&name).await?.as_deref() != Some(upload_id) {
            coord.set_current(&name, Some(upload_id)).await?;
        }
        let (received, last_ms) = coord.received(upload_id, total).await?;
        Ok((received, last_ms.unwrap_or(0)))
    }

    /// Keep `upload_id`'s plan for the blocks to come.
    fn remember_plan(&self, upload_id: &str, plan: PlanRecord) {
        let mut plans = lock(&self.plans);
        // Entries outlive their uploads (completed on other instances):
        // start afresh rather than grow.
        if plans.len() >= KNOWN_PLANS {
            plans.clear();
        }
        plans.insert(upload_id.to_owned(), plan);
    }

    /// Coordinated [`Storage::open_upload`]: the coordinator names the key's
    /// current upload (one read), its plan is known or read from the bucket.
    async fn open_coordinated(
        &self,
        coord: &dyn Coord,
        n: &Names,
    ) -> StoreResult<(String, PlanRecord)> {
        let Some(current) = coord.current(&n.lease_name()).await? else {
            return Err(if self.exists(&self.meta_path(n)).await? {
                StoreError::AlreadyComplete
            } else {
                StoreError::NotPlanned
            });
        };
        if let Some(plan) = lock(&self.plans).get(&current) {
            return Ok((current, *plan));
        }
        match self.get_json::<UploadState>(&self.state_path(n)).await? {
            Some(state) if state.upload_id == current => {
                let plan = PlanRecord {
                    size: state.size,
                    block_size: state.block_size,
                };
                self.remember_plan(&current, plan);
                Ok((current, plan))
            }
            // A SAVE elsewhere between writing its state and making it
            // current, or the coordinator ahead of the bucket: SAVE again.
            _ => Err(StoreError::NotPlanned),
        }
    }

    /// Remove an upload's state (first: from then on it is gone) and its
    /// staged blocks.
    async fn discard(&self, n: &Names, upload_id: &str) -> StoreResult<()> {
        lock(&self.pending).remove(&n.id());
        match self.store.delete(&self.state_path(n)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_err(e)),
        }
        if let Some(coord) = &self.coord {
            // Under the key's lease: the upload just removed was its current.
            coord.set_current(&n.lease_name(), None).await?;
            coord.forget(upload_id).await?;
            lock(&self.plans).remove(upload_id);
        }
        self.delete_dir(&self.blocks_dir(n, upload_id)).await
    }

    /// Before a commit point: fails if the key's lease was lost (so an
    /// instance that stalled past it writes nothing the next holder did
    /// not expect). Alone, there is nothing to check.
    async fn fence(&self, st: &KeyState) -> StoreResult<()> {
        match &st.lease {
            Some(lease) => lease.check().await,
            None if self.coord.is_some() => Err(other("a commit point outside the key's lease")),
            None => Ok(()),
        }
    }

    /// Room to keep a small upload's blocks in memory (large ones keep them
    /// in their assembler).
    fn small_held(&self, plan: PlanRecord) -> Held {
        // Coordinated, a block repeated through another instance may change
        // the staged bytes: completion reads them all back.
        let cap = if plan.size <= PART_MIN && self.coord.is_none() {
            PART_MIN
        } else {
            0
        };
        Held::new(Arc::clone(&self.held_total), cap)
    }

    /// Remove an unfinished upload: [`Self::discard`], and any content a
    /// failed completion of it wrote (never visible: it has no meta).
    async fn discard_unfinished(&self, n: &Names, upload_id: &str) -> StoreResult<()> {
        self.discard(n, upload_id).await?;
        self.delete_paths(vec![
            self.content_path(n, upload_id),
            self.sums_path(n, upload_id),
        ])
        .await
    }

    /// Make the upload in `st` (all blocks staged) the complete file: content,
    /// then meta, then cleanup. Called under the key's lock.
    /// `last` is the block that completed it, if it was just staged.
    async fn complete(
        &self,
        n: &Names,
        st: &mut KeyState,
        last: Option<(u64, Bytes)>,
    ) -> StoreResult<String> {
        let Some(up) = st.upload.as_mut() else {
            return Err(StoreError::NotPlanned);
        };
        // A completion cut off (cancelled) after its meta: only cleanup left.
        let current = self.get_json::<FileMeta>(&self.meta_path(n)).await?;
        if let Some(meta) = &current
            && meta.upload_id.as_deref() == Some(up.id.as_str())
        {
            let id = up.id.clone();
            let md5 = meta.md5.clone();
            st.upload = None;
            self.discard(n, &id).await?;
            return Ok(md5);
        }
        // A replacement's condition, checked again under the key's lock: it
        // can never hold later either, so the upload goes.
        if let Some(replace) = &up.replace
            && let Err(e) = replace.check(current.as_ref())
        {
            let id = up.id.clone();
            st.upload = None;
            self.discard_unfinished(n, &id).await?;
            return Err(e);
        }
        let progress = match up.assembler.take() {
            Some(a) => a.finish(last).await,
            None => None,
        };
        let (md5, crcs) = match self.assemble(n, up, progress).await {
            Ok(done) => done,
            Err(Missing(Some(index))) => {
                // Lost from the bucket behind our back: to be sent again.
                if let Some(r) = up.received.get_mut(index as usize) {
                    *r = false;
                    up.remaining += 1;
                }
                return Err(other(format!(
                    "staged block {index} is missing; SAVE again to resume"
                )));
            }
            Err(Missing(None)) => return Err(other("completion failed")),
            Err(Failed(e)) => return Err(e),
        };
        self.store
            .put(
                &self.sums_path(n, &up.id),
                PutPayload::from(encode_sums(&crcs)),
            )
            .await
            .map_err(store_err)?;
        let meta = FileMeta {
            key: n.key.clone(),
            size: up.plan.size,
            md5: md5.clone(),
            upload_id: Some(up.id.clone()),
            completed_unix: unix_now(),
        };
        let id = up.id.clone();
        self.fence(st).await?;
        self.swap_meta(n, current.as_ref(), &meta).await?;
        st.upload = None;
        if let Err(e) = self.discard(n, &id).await {
            // The file is complete; leftovers go when the key is next loaded.
            warn!(user = %n.user, key = %n.key, error = %e, "cannot remove a completed upload's blocks");
        }
        info!(user = %n.user, key = %n.key, size = meta.size, md5 = %md5, "file complete");
        Ok(md5)
    }

    /// Read the staged blocks back in order and write them as the file's
    /// content; returns the md5 and the chunk CRCs computed as they pass.
    async fn assemble(
        &self,
        n: &Names,
        up: &mut Upload,
        progress: Option<Progress>,
    ) -> Result<(String, Vec<u32>), AssembleError> {
        let plan = up.plan;
        let total = total_blocks(plan.size, plan.block_size);
        let dest = self.content_path(n, &up.id);
        let held = up.held.take_all();
        let up: &Upload = up;
        let mut blocks = self.staged_blocks(n, &up.id, plan, 0..total, held);
        let mut md5 = Md5::new();
        let mut crcs = ChunkSums::default();
        let mut next = |r: Option<Result<(u64, Bytes), (u64, object_store::Error)>>| match r {
            None => Err(Missing(None)),
            Some(Ok((i, b))) => {
                if Some(b.len() as u64) != block_len(plan.size, plan.block_size, i) {
                    return Err(Missing(Some(i)));
                }
                md5.update(&b);
                crcs.update(&b);
                Ok(b)
            }
            Some(Err((i, object_store::Error::NotFound { .. }))) => Err(Missing(Some(i))),
            Some(Err((_, e))) => Err(Failed(store_err(e))),
        };
        if plan.size <= PART_MIN {
            let mut parts = Vec::with_capacity(total as usize);
            for _ in 0..total {
                parts.push(next(blocks.next().await)?);
            }
            drop(blocks);
            self.store
                .put(&dest, PutPayload::from_iter(parts))
                .await
                .map_err(|e| Failed(store_err(e)))?;
            return Ok((hex::encode(md5.finalize()), crcs.finish()));
        }
        drop(blocks);
        let mut p = match progress {
            Some(p) => p,
            None => Progress::new(
                self.store
                    .put_multipart(&dest)
                    .await
                    .map_err(|e| Failed(store_err(e)))?,
                plan,
                Arc::clone(&self.held_total),
            ),
        };
        let result = self.assemble_rest(n, up, &mut p).await;
        match result {
            Ok(()) => p.finish().await.map_err(Failed),
            Err(e) => {
                p.abort().await;
                Err(e)
            }
        }
    }

    /// Blocks `range` of upload `id`, in order: from `held` where kept, else
    /// read back from the bucket (a few GETs ahead).
    fn staged_blocks<'a>(
        &'a self,
        n: &'a Names,
        id: &'a str,
        plan: PlanRecord,
        range: std::ops::Range<u64>,
        mut held: BTreeMap<u64, Bytes>,
    ) -> impl futures::Stream<Item = Result<(u64, Bytes), (u64, object_store::Error)>> + 'a {
        futures::stream::iter(range)
            .map(move |i| {
                let kept = held.remove(&i);
                let path = self.block_path(n, id, i);
                async move {
                    if let Some(b) = kept {
                        return Ok((i, b));
                    }
                    match self.store.get(&path).await {
                        Ok(r) => r.bytes().await.map(|b| (i, b)).map_err(|e| (i, e)),
                        Err(e) => Err((i, e)),
                    }
                }
            })
            .buffered(read_ahead(plan.block_size))
    }

    /// Feed `p` every block it has not seen: from memory when it holds
    /// them, else read back from the bucket.
    async fn assemble_rest(
        &self,
        n: &Names,
        up: &Upload,
        p: &mut Progress,
    ) -> Result<(), AssembleError> {
        let plan = up.plan;
        let total = total_blocks(plan.size, plan.block_size);
        let held = p.held.take_all();
        let mut blocks = self.staged_blocks(n, &up.id, plan, p.next..total, held);
        while let Some(r) = blocks.next().await {
            let b = match r {
                Ok((i, b)) => {
                    if Some(b.len() as u64) != block_len(plan.size, plan.block_size, i) {
                        return Err(Missing(Some(i)));
                    }
                    b
                }
                Err((i, object_store::Error::NotFound { .. })) => return Err(Missing(Some(i))),
                Err((_, e)) => return Err(Failed(store_err(e))),
            };
            p.feed(b).await.map_err(Failed)?;
        }
        if p.next != total {
            return Err(Missing(None));
        }
        Ok(())
    }

    async fn plan_upload(
        &self,
        n: &Names,
        st: &mut KeyState,
        plan: PlanRecord,
        resume: bool,
        replace: Option<Replace>,
    ) -> StoreResult<PlanOutcome> {
        self.load(n, st).await?;
        let current = self.get_json::<FileMeta>(&self.meta_path(n)).await?;
        match &replace {
            None if current.is_some() => return Err(StoreError::Exists),
            None => {}
            Some(r) => r.check(current.as_ref())?,
        }
        if resume
            && let Some(up) = st.upload.as_ref()
            && up.plan == plan
            && up.replace == replace
        {
            let upload_id = up.id.clone();
            if up.remaining == 0 {
                // Every block staged, the completion cut short: finish it.
                let md5 = self.complete(n, st, None).await?;
                return Ok(PlanOutcome {
                    plan,
                    missing: Vec::new(),
                    resumed: true,
                    md5: Some(md5),
                    upload_id: Some(upload_id),
                });
            }
            self.touch(&n.id(), 0);
            return Ok(PlanOutcome {
                plan,
                missing: up.missing(),
                resumed: true,
                md5: None,
                upload_id: Some(upload_id),
            });
        }
        if let Some(old) = st.upload.take() {
            self.fence(st).await?;
            self.discard_unfinished(n, &old.id).await?;
        }
        if plan.size == 0 {
            let meta = FileMeta {
                key: n.key.clone(),
                size: 0,
                md5: EMPTY_MD5.to_owned(),
                upload_id: None,
                completed_unix: unix_now(),
            };
            self.fence(st).await?;
            self.swap_meta(n, current.as_ref(), &meta).await?;
            return Ok(PlanOutcome {
                plan,
                missing: Vec::new(),
                resumed: false,
                md5: Some(meta.md5),
                upload_id: None,
            });
        }
        {
            let pending = lock(&self.pending);
            let (count, planned) = pending
                .iter()
                .filter(|(other, _)| other.0 == n.us)
                .fold((0u64, 0u64), |(c, b), (_, p)| {
                    (c + 1, b.saturating_add(p.planned))
                });
            self.limits.admit_unfinished(count, planned, plan.size)?;
        }
        let total = total_blocks(plan.size, plan.block_size);
        let slots = usize::try_from(total).map_err(|_| other("plan too large"))?;
        if self.coord.is_some() && total > u64::from(u32::MAX) {
            // Beyond what one Redis bitmap indexes.
            return Err(other("plan too large: more than 2^32 blocks"));
        }
        let state = UploadState {
            upload_id: uuid::Uuid::new_v4().simple().to_string(),
            size: plan.size,
            block_size: plan.block_size,
            user: n.user.clone(),
            key: n.key.clone(),
            created_unix: unix_now(),
            replace: replace.clone(),
        };
        self.fence(st).await?;
        self.put_json(&self.state_path(n), &state).await?;
        if let Some(coord) = &self.coord {
            // From here blocks of the new upload are taken by any instance.
            coord
                .set_current(&n.lease_name(), Some(&state.upload_id))
                .await?;
            self.remember_plan(&state.upload_id, plan);
        }
        // Coordinated, blocks reach several instances: completion assembles
        // from the staged blocks (an assembler here would see only some).
        let assembler = if plan.size > PART_MIN && self.coord.is_none() {
            self.start_assembler(n, &state.upload_id, plan, BTreeSet::new())
                .await
        } else {
            None
        };
        lock(&self.pending).insert(
            n.id(),
            Pending {
                planned: plan.size,
                received: 0,
                last_ms: unix_ms(SystemTime::now()),
            },
        );
        st.upload = Some(Upload {
            id: state.upload_id.clone(),
            plan,
            received: vec![false; slots],
            remaining: total,
            assembler_tried: assembler.is_some() || plan.size <= PART_MIN || self.coord.is_some(),
            assembler,
            held: self.small_held(plan),
            replace,
        });
        Ok(PlanOutcome {
            plan,
            missing: vec![[0, total]],
            resumed: false,
            md5: None,
            upload_id: Some(state.upload_id),
        })
    }

    /// Start a large upload's multipart upload and the task writing its
    /// parts, `staged` being the blocks already in the bucket. `None` if the
    /// store refuses: then it is all done at completion.
    async fn start_assembler(
        &self,
        n: &Names,
        upload_id: &str,
        plan: PlanRecord,
        staged: BTreeSet<u64>,
    ) -> Option<Assembler> {
        let Ok(permit) = Arc::clone(&self.assemblers).try_acquire_owned() else {
            return None;
        };
        match self
            .store
            .put_multipart(&self.content_path(n, upload_id))
            .await
        {
            Ok(mp) => {
                let mut p = Progress::new(mp, plan, Arc::clone(&self.held_total));
                p.staged = staged;
                Some(Assembler::start(
                    Arc::clone(&self.store),
                    self.blocks_dir(n, upload_id),
                    p,
                    permit,
                ))
            }
            Err(e) => {
                warn!(error = %e, "cannot start a multipart upload: assembling at completion");
                None
            }
        }
    }

    /// Make `meta` the key's complete file in one step (one PUT of the meta
    /// object). When it replaces `current`, that version's meta is kept
    /// beside its content first, so downloads under way can still read it
    /// ([`Storage::head_version`]) until the grace period ends; versions
    /// replaced before it go now. Called under the key's lock.
    async fn swap_meta(
        &self,
        n: &Names,
        current: Option<&FileMeta>,
        meta: &FileMeta,
    ) -> StoreResult<()> {
        let old = current
            .and_then(|c| c.upload_id.clone())
            .filter(|old| Some(old) != meta.upload_id.as_ref());
        if let (Some(old), Some(current)) = (&old, current) {
            self.put_json(&self.retired_meta_path(n, old), current)
                .await?;
        }
        self.put_json(&self.meta_path(n), meta).await?;
        if current.is_none() {
            return Ok(());
        }
        // Earlier replaced versions: everything in the key's content
        // directory but the new version and the one just replaced.
        let keep: Vec<&str> = [meta.upload_id.as_deref(), old.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let mut stale = Vec::new();
        let mut list = self.store.list(Some(&self.content_dir(n)));
        while let Some(m) = list.next().await {
            let m = m.map_err(store_err)?;
            let version = m
                .location
                .filename()
                .and_then(|f| f.split('.').next())
                .unwrap_or_default();
            if !keep.contains(&version) {
                stale.push(m.location);
            }
        }
        drop(list);
        if let Err(e) = self.delete_paths(stale).await {
            warn!(user = %n.user, key = %n.key, error = %e, "cannot remove replaced versions yet");
        }
        if let Some(old) = old {
            lock(&self.retired).push((n.clone(), old, unix_ms(SystemTime::now())));
        }
        info!(user = %n.user, key = %n.key, "file replaced");
        Ok(())
    }

    /// See [`Storage::head_version`].
    async fn head_version(&self, n: &Names, upload_id: &str) -> StoreResult<FileMeta> {
        let current = self.get_json::<FileMeta>(&self.meta_path(n)).await?;
        if let Some(meta) = &current
            && meta.upload_id.as_deref() == Some(upload_id)
        {
            return Ok(meta.clone());
        }
        // Ids are ours (hex); anything else names no object.
        if !upload_id.is_empty()
            && upload_id.len() <= 64
            && upload_id.bytes().all(|b| b.is_ascii_alphanumeric())
            && let Some(meta) = self
                .get_json::<FileMeta>(&self.retired_meta_path(n, upload_id))
                .await?
        {
            return Ok(meta);
        }
        Err(if current.is_some() {
            StoreError::Replaced
        } else {
            StoreError::NotFound
        })
    }

    /// Remove the versions replaced more than the grace period ago (those
    /// this instance replaced; ones from before a restart go with the
    /// key's next replace or DELETE).
    async fn sweep_retired(&self, now: SystemTime) -> StoreResult<()> {
        let grace = u64::try_from(self.limits.replaced_grace.as_millis()).unwrap_or(u64::MAX);
        let cutoff = unix_ms(now).saturating_sub(grace);
        let due: Vec<(Names, String, u64)> = {
            let mut retired = lock(&self.retired);
            let (due, keep) = retired.drain(..).partition(|(_, _, at)| *at <= cutoff);
            *retired = keep;
            due
        };
        for (n, old, _) in due {
            let id = n.id();
            let slot = self.file_slot(&id);
            let st = match self.lock_key(&n, &slot).await {
                Ok(st) => st,
                Err(e) => {
                    self.release_slot(&id, slot);
                    return Err(e);
                }
            };
            let current = self.get_json::<FileMeta>(&self.meta_path(&n)).await;
            let result = match current {
                Ok(Some(meta)) if meta.upload_id.as_deref() == Some(old.as_str()) => Ok(()),
                Ok(_) => {
                    self.delete_paths(vec![
                        self.retired_meta_path(&n, &old),
                        self.content_path(&n, &old),
                        self.sums_path(&n, &old),
                    ])
                    .await
                }
                Err(e) => Err(e),
            };
            drop(st);
            self.release_slot(&id, slot);
            result?;
        }
        Ok(())
    }

    /// See [`Storage::delete_file_if`]; under the key's lock.
    async fn delete_file_if(
        &self,
        n: &Names,
        st: &mut KeyState,
        if_md5: &str,
    ) -> StoreResult<Deleted> {
        self.load(n, st).await?;
        let Some(meta) = self.get_json::<FileMeta>(&self.meta_path(n)).await? else {
            return Err(StoreError::NotFound);
        };
        if !meta.md5.eq_ignore_ascii_case(if_md5) {
            return Err(StoreError::Precondition);
        }
        self.fence(st).await?;
        match self.store.delete(&self.meta_path(n)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_err(e)),
        }
        // Every version's content; an unfinished upload stays.
        let mut paths = Vec::new();
        let mut list = self.store.list(Some(&self.content_dir(n)));
        while let Some(m) = list.next().await {
            paths.push(m.map_err(store_err)?.location);
        }
        drop(list);
        self.delete_paths(paths).await?;
        Ok(Deleted::File)
    }

    async fn delete_file(
        &self,
        n: &Names,
        st: &mut KeyState,
        upload_id: Option<&str>,
    ) -> StoreResult<Deleted> {
        self.load(n, st).await?;
        if let Some(meta) = self.get_json::<FileMeta>(&self.meta_path(n)).await? {
            if upload_id.is_some_and(|want| meta.upload_id.as_deref() != Some(want)) {
                return Err(StoreError::OtherUpload);
            }
            // Meta first: from that instant the file is no longer complete.
            self.fence(st).await?;
            match self.store.delete(&self.meta_path(n)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
            // Also any content a crashed completion left.
            self.delete_dir(&self.content_dir(n)).await?;
            return Ok(Deleted::File);
        }
        let Some(up) = st.upload.as_ref() else {
            return Err(StoreError::NotFound);
        };
        if upload_id.is_some_and(|want| want != up.id) {
            return Err(StoreError::OtherUpload);
        }
        let id = up.id.clone();
        st.upload = None;
        self.fence(st).await?;
        self.discard_unfinished(n, &id).await?;
        Ok(Deleted::UnfinishedUpload)
    }

    async fn list_files(
        &self,
        user: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<ListPage> {
        if limit == 0 {
            return Ok(ListPage {
                files: Vec::new(),
                next: after.map(str::to_owned),
            });
        }
        let dir = self.meta_dir(&user_seg(user));
        // Every key starting with `prefix` has a segment starting with this.
        let pre_seg = key_seg_ordered(prefix.as_bytes());
        // Exclusive lower bounds: just below `pre_seg` (its last letter
        // lowered, then above any continuation), and `after`'s place.
        let mut offset: Option<String> = (pre_seg.len() > 1).then(|| {
            let mut s = pre_seg.clone();
            if let Some(c) = s.pop() {
                s.push(char::from(c as u8 - 1));
            }
            s.push_str("zz");
            s
        });
        if let Some(a) = after {
            // A long `after` is in a group sorted by hash: start at the
            // group and let the key filter below drop what is not after it.
            let a_seg = if a.len() > KEY_ORDERED_BYTES {
                key_seg_ordered(a.as_bytes())
            } else {
                key_seg(a)
            };
            if offset.as_ref().is_none_or(|o| a_seg > *o) {
                offset = Some(a_seg);
            }
        }
        let mut list = match &offset {
            Some(o) => self
                .store
                .list_with_offset(Some(&dir), &dir.clone().join(o.as_str())),
            None => self.store.list(Some(&dir)),
        }
        .peekable();
        let group_of = |seg: &str| seg.split('x').next().unwrap_or("").to_owned();
        let mut files: Vec<FileMeta> = Vec::new();
        let mut ended = false;
        while files.len() <= limit && !ended {
            // A batch of candidates, never ending inside a group.
            let mut batch: Vec<Path> = Vec::new();
            loop {
                let Some(m) = std::pin::Pin::new(&mut list).next().await else {
                    ended = true;
                    break;
                };
                let m = m.map_err(store_err)?;
                let Some(seg) = m.location.filename().map(str::to_owned) else {
                    continue;
                };
                if m.location.parts().count() != dir.parts().count() + 1 {
                    continue;
                }
                if !seg.starts_with(&pre_seg) {
                    if seg > pre_seg {
                        ended = true;
                        break;
                    }
                    continue;
                }
                batch.push(m.location);
                if batch.len() > limit - files.len() {
                    let group = group_of(&seg);
                    let same_group_next = match std::pin::Pin::new(&mut list).peek().await {
                        Some(Ok(next)) => next
                            .location
                            .filename()
                            .is_some_and(|f| f.contains('x') && group_of(f) == group),
                        _ => false,
                    };
                    if !same_group_next {
                        break;
                    }
                }
            }
            let metas: Vec<Option<FileMeta>> = futures::stream::iter(batch)
                .map(|p| async move { self.get_json::<FileMeta>(&p).await })
                .buffered(LIST_FETCH)
                .try_collect()
                .await?;
            let mut got: Vec<FileMeta> = metas
                .into_iter()
                .flatten()
                .filter(|m| m.key.starts_with(prefix) && after.is_none_or(|a| m.key.as_str() > a))
                .collect();
            got.sort_by(|a, b| a.key.cmp(&b.key));
            files.extend(got);
        }
        let next = if files.len() > limit {
            files.truncate(limit);
            files.last().map(|m| m.key.clone())
        } else {
            None
        };
        Ok(ListPage { files, next })
    }

    async fn sweep_expired(&self, now: SystemTime) -> StoreResult<usize> {
        self.ensure_scanned().await?;
        self.sweep_retired(now).await?;
        let expiry_ms = u64::try_from(self.limits.upload_expiry.as_millis()).unwrap_or(u64::MAX);
        let cutoff = unix_ms(now).saturating_sub(expiry_ms);
        let idle: Vec<Id> = lock(&self.pending)
            .iter()
            .filter(|(_, p)| p.last_ms < cutoff)
            .map(|(id, _)| id.clone())
            .collect();
        let mut swept = 0;
        for id in idle {
            // Names from the state object (segments are not reversible).
            let probe = Names {
                user: String::new(),
                key: String::new(),
                us: id.0.clone(),
                ks: id.1.clone(),
            };
            let slot = self.file_slot(&id);
            let mut st = match self.lock_key(&probe, &slot).await {
                Ok(st) => st,
                Err(e) => {
                    self.release_slot(&id, slot);
                    return Err(e);
                }
            };
            let loaded = self.load(&probe, &mut st).await;
            // Rechecked under the key's lock (and, coordinated, with the
            // last block any instance took): a block may have come since.
            let still_idle = lock(&self.pending)
                .get(&id)
                .is_some_and(|p| p.last_ms < cutoff);
            if let Err(e) = loaded {
                drop(st);
                self.release_slot(&id, slot);
                return Err(e);
            }
            if still_idle && let Some(up) = st.upload.take() {
                self.fence(&st).await?;
                self.discard_unfinished(&probe, &up.id).await?;
                info!(upload_id = %up.id, "expired an idle unfinished upload");
                swept += 1;
            }
            drop(st);
            self.release_slot(&id, slot);
        }
        // Blocks of uploads that are no longer current (superseded, deleted
        // while a block was in flight) once they are as old as the expiry.
        let found = self.scan().await?;
        let mut orphans = Vec::new();
        for (_, k) in found {
            let current = match &k.state {
                Some((p, _)) => self.get_json::<UploadState>(p).await?.map(|s| s.upload_id),
                None => None,
            };
            for (upload_id, (paths, _, last)) in k.blocks {
                if Some(&upload_id) != current.as_ref() && last < cutoff {
                    orphans.extend(paths);
                }
            }
        }
        if !orphans.is_empty() {
            info!(
                objects = orphans.len(),
                "removing blocks of uploads that are gone"
            );
            self.delete_paths(orphans).await?;
        }
        Ok(swept)
    }
}

// ------------------------------------------------------------------ assembly

/// Blocks kept in memory so they need not be read back from the bucket,
/// within a per-upload cap and a budget shared by the whole store.
#[derive(Debug)]
struct Held {
    map: BTreeMap<u64, Bytes>,
    bytes: u64,
    cap: u64,
    total: Arc<AtomicU64>,
}

impl Held {
    fn new(total: Arc<AtomicU64>, cap: u64) -> Held {
        Held {
            map: BTreeMap::new(),
            bytes: 0,
            cap,
            total,
        }
    }

    /// Keep block `i` if the budgets allow.
    fn hold(&mut self, i: u64, b: Bytes) -> bool {
        let len = b.len() as u64;
        if self.map.contains_key(&i) || self.bytes + len > self.cap {
            return false;
        }
        let before = self.total.fetch_add(len, Ordering::Relaxed);
        if before + len > HELD_BYTES_TOTAL {
            self.total.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        self.bytes += len;
        self.map.insert(i, b);
        true
    }

    fn contains(&self, i: u64) -> bool {
        self.map.contains_key(&i)
    }

    fn get(&self, i: u64) -> Option<Bytes> {
        self.map.get(&i).cloned()
    }

    fn take(&mut self, i: u64) -> Option<Bytes> {
        let b = self.map.remove(&i)?;
        self.bytes -= b.len() as u64;
        self.total.fetch_sub(b.len() as u64, Ordering::Relaxed);
        Some(b)
    }

    /// Everything held (no longer counted against the budgets: consumed
    /// right away by the completion).
    fn take_all(&mut self) -> BTreeMap<u64, Bytes> {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        std::mem::take(&mut self.map)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A large file's content being written as a multipart upload, in order:
/// blocks `[0, next)` are hashed and in parts (sent, or in `part`), and
/// `held` keeps early blocks in memory (up to [`HELD_BYTES`]).
struct Progress {
    mp: Box<dyn MultipartUpload>,
    part_size: u64,
    next: u64,
    md5: Md5,
    crcs: ChunkSums,
    part: Vec<Bytes>,
    part_len: u64,
    in_flight: FuturesUnordered<UploadPart>,
    held: Held,
    read_ahead: usize,
    /// Early blocks known staged but not held (read back when reached).
    staged: BTreeSet<u64>,
}

/// Early blocks one upload's assembly keeps in memory, at most.
const HELD_BYTES: u64 = 32 << 20;
/// Large uploads whose parts are written while their blocks arrive, at
/// most; others are assembled at completion (with read-back). Bounds the
/// memory of part buffers: ~24 MiB each.
const MAX_ASSEMBLERS: usize = 16;
/// Early blocks all assemblies keep in memory, at most.
const HELD_BYTES_TOTAL: u64 = 256 << 20;

impl Progress {
    fn new(mp: Box<dyn MultipartUpload>, plan: PlanRecord, held_total: Arc<AtomicU64>) -> Progress {
        Progress {
            mp,
            part_size: PART_MIN.max(plan.size.div_ceil(MAX_PARTS)),
            next: 0,
            md5: Md5::new(),
            crcs: ChunkSums::default(),
            part: Vec::new(),
            part_len: 0,
            in_flight: FuturesUnordered::new(),
            held: Held::new(held_total, HELD_BYTES),
            read_ahead: read_ahead(plan.block_size),
            staged: BTreeSet::new(),
        }
    }

    /// Append block `next`.
    async fn feed(&mut self, b: Bytes) -> StoreResult<()> {
        self.md5.update(&b);
        self.crcs.update(&b);
        self.part_len += b.len() as u64;
        self.part.push(b);
        self.next += 1;
        if self.part_len >= self.part_size {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> StoreResult<()> {
        let part = PutPayload::from_iter(std::mem::take(&mut self.part));
        self.part_len = 0;
        self.in_flight.push(self.mp.put_part(part));
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            if let Some(r) = self.in_flight.next().await {
                r.map_err(store_err)?;
            }
        }
        Ok(())
    }

    /// The last part, then the multipart's completion: the content is in
    /// place (not yet a file: no meta).
    async fn finish(mut self) -> StoreResult<(String, Vec<u32>)> {
        let done: StoreResult<()> = async {
            if !self.part.is_empty() {
                self.flush().await?;
            }
            while let Some(r) = self.in_flight.next().await {
                r.map_err(store_err)?;
            }
            self.mp.complete().await.map_err(store_err)?;
            Ok(())
        }
        .await;
        match done {
            Ok(()) => Ok((
                hex::encode(std::mem::take(&mut self.md5).finalize()),
                std::mem::take(&mut self.crcs).finish(),
            )),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    async fn abort(&mut self) {
        self.in_flight.clear();
        if let Err(e) = self.mp.abort().await {
            warn!(error = %e, "cannot abort a multipart upload");
        }
    }
}

/// A task that writes a large upload's parts while its blocks arrive, so
/// completion has only the tail left. Fed `(index, bytes)` of every block
/// once staged; blocks in order go straight into parts (never read back),
/// early ones are held in memory up to [`HELD_BYTES`] or read back when
/// the prefix reaches them. Only a cache: the staged blocks stay the truth
/// until the meta is written, so a lost or failed assembler costs time,
/// never data.
struct Assembler {
    tx: tokio::sync::mpsc::Sender<(u64, Bytes)>,
    cancel: tokio_util::sync::CancellationToken,
    done: tokio::task::JoinHandle<StoreResult<Progress>>,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler").finish_non_exhaustive()
    }
}

impl Assembler {
    fn start(
        store: Arc<dyn ObjectStore>,
        blocks_dir: Path,
        p: Progress,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Assembler {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Bytes)>(64);
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        let done = tokio::spawn(async move {
            let _permit = permit;
            let mut p = p;
            let run = async {
                // Blocks staged before it started (a reloaded upload).
                advance(&mut p, &store, &blocks_dir).await?;
                while let Some((i, b)) = rx.recv().await {
                    if i < p.next || p.held.contains(i) || p.staged.contains(&i) {
                        continue;
                    }
                    if i == p.next {
                        p.feed(b).await?;
                    } else if !p.held.hold(i, b) {
                        p.staged.insert(i);
                    }
                    advance(&mut p, &store, &blocks_dir).await?;
                }
                Ok::<(), StoreError>(())
            };
            let result = tokio::select! {
                r = run => r,
                () = stop.cancelled() => Err(other("upload discarded")),
            };
            match result {
                Ok(()) => Ok(p),
                Err(e) => {
                    p.abort().await;
                    Err(e)
                }
            }
        });
        Assembler { tx, cancel, done }
    }

    /// Hand over the last block (if any), wait for what was sent before,
    /// and take the progress made; `None` if the assembler failed.
    async fn finish(self, last: Option<(u64, Bytes)>) -> Option<Progress> {
        if let Some(b) = last {
            let _ = self.tx.send(b).await;
        }
        drop(self.tx);
        match self.done.await {
            Ok(Ok(p)) => Some(p),
            Ok(Err(e)) => {
                warn!(error = %e, "progressive assembly failed: assembling at completion");
                None
            }
            Err(e) => {
                warn!(error = %e, "progressive assembly stopped: assembling at completion");
                None
            }
        }
    }
}

/// Feed `p` the blocks that follow its prefix and that it holds or knows
/// staged, reading the staged ones back [`read_ahead`] at a time.
async fn advance(p: &mut Progress, store: &Arc<dyn ObjectStore>, dir: &Path) -> StoreResult<()> {
    loop {
        let mut run: Vec<(u64, Option<Bytes>)> = Vec::new();
        let mut i = p.next;
        while run.len() < 64 {
            if let Some(b) = p.held.take(i) {
                run.push((i, Some(b)));
            } else if p.staged.remove(&i) {
                run.push((i, None));
            } else {
                break;
            }
            i += 1;
        }
        if run.is_empty() {
            return Ok(());
        }
        let depth = p.read_ahead;
        let mut blocks = futures::stream::iter(run)
            .map(|(i, kept)| {
                let path = dir.clone().join(i.to_string().as_str());
                let store = Arc::clone(store);
                async move {
                    match kept {
                        Some(b) => Ok(b),
                        None => store.get(&path).await?.bytes().await,
                    }
                }
            })
            .buffered(depth);
        while let Some(b) = blocks.next().await {
            p.feed(b.map_err(store_err)?).await?;
        }
    }
}

/// The sums object: one little-endian u32 per chunk, nothing else (its
/// path carries the upload id, which ties it to the very content).
fn encode_sums(crcs: &[u32]) -> Vec<u8> {
    crcs.iter().flat_map(|c| c.to_le_bytes()).collect()
}

fn files_ptr_eq<T>(a: Option<&Arc<T>>, b: &Arc<T>) -> bool {
    a.is_some_and(|a| Arc::ptr_eq(a, b))
}

/// Why an assembly stopped.
enum AssembleError {
    /// A staged block is missing or has the wrong length (its index), or the
    /// block stream ended early.
    Missing(Option<u64>),
    Failed(StoreError),
}
use AssembleError::{Failed, Missing};

// ------------------------------------------------------------------ the trait

#[async_trait]
impl Storage for ObjectStorage {
    async fn account_get(&self, name: &str) -> StoreResult<Option<Account>> {
        self.account_get_impl(name).await
    }

    async fn account_create(&self, account: &Account) -> StoreResult<()> {
        self.account_put_impl(account, true).await
    }

    async fn account_replace(&self, account: &Account) -> StoreResult<()> {
        self.account_put_impl(account, false).await
    }

    async fn account_delete(&self, name: &str) -> StoreResult<()> {
        self.account_delete_impl(name).await
    }

    async fn account_list(&self) -> StoreResult<Vec<String>> {
        self.account_list_impl().await
    }

    async fn record_create(
        &self,
        user: &str,
        key: &str,
        record: Map<String, Value>,
    ) -> StoreResult<()> {
        let n = Names::new(user, key);
        let id = n.id();
        let l = self.inner.record_lock(&id);
        let result = async {
            let _g = l.lock().await;
            let lease = self.inner.record_lease(&n).await?;
            let path = self.inner.rec_path(&n);
            if self.inner.exists(&path).await? {
                return Err(StoreError::Exists);
            }
            if let Some(lease) = &lease {
                lease.check().await?;
            }
            self.inner.put_json(&path, &record).await
        }
        .await;
        self.inner.release_record_lock(&id, l);
        result
    }

    async fn record_get(&self, user: &str, key: &str) -> StoreResult<Map<String, Value>> {
        let n = Names::new(user, key);
        self.inner
            .get_json(&self.inner.rec_path(&n))
            .await?
            .ok_or(StoreError::NotFound)
    }

    async fn record_delete(&self, user: &str, key: &str) -> StoreResult<()> {
        let n = Names::new(user, key);
        let id = n.id();
        let l = self.inner.record_lock(&id);
        let result = async {
            let _g = l.lock().await;
            let lease = self.inner.record_lease(&n).await?;
            let path = self.inner.rec_path(&n);
            if !self.inner.exists(&path).await? {
                return Err(StoreError::NotFound);
            }
            if let Some(lease) = &lease {
                lease.check().await?;
            }
            self.inner.store.delete(&path).await.map_err(store_err)
        }
        .await;
        self.inner.release_record_lock(&id, l);
        result
    }

    async fn plan_upload(
        &self,
        user: &str,
        key: &str,
        plan: PlanRecord,
        resume: bool,
    ) -> StoreResult<PlanOutcome> {
        let mut h = self.hold(user, key).await?;
        let result = self
            .inner
            .plan_upload(&h.names, &mut h.state, plan, resume, None)
            .await;
        self.release(h, result)
    }

    async fn plan_replace(
        &self,
        user: &str,
        key: &str,
        plan: PlanRecord,
        resume: bool,
        replace: Replace,
    ) -> StoreResult<PlanOutcome> {
        let mut h = self.hold(user, key).await?;
        let result = self
            .inner
            .plan_upload(&h.names, &mut h.state, plan, resume, Some(replace))
            .await;
        self.release(h, result)
    }

    async fn head_version(&self, user: &str, key: &str, upload_id: &str) -> StoreResult<FileMeta> {
        self.inner
            .head_version(&Names::new(user, key), upload_id)
            .await
    }

    async fn delete_file_if(&self, user: &str, key: &str, if_md5: &str) -> StoreResult<Deleted> {
        let mut h = self.hold(user, key).await?;
        let result = self
            .inner
            .delete_file_if(&h.names, &mut h.state, if_md5)
            .await;
        self.release(h, result)
    }

    async fn open_upload(&self, user: &str, key: &str) -> StoreResult<Box<dyn UploadWriter>> {
        self.inner.ensure_scanned().await?;
        let n = Names::new(user, key);
        let id = n.id();
        let slot = self.inner.file_slot(&id);
        let result = match &self.inner.coord {
            Some(coord) => self.inner.open_coordinated(coord.as_ref(), &n).await,
            None => {
                let mut st = slot.lock().await;
                match self.inner.load(&n, &mut st).await {
                    Err(e) => Err(e),
                    Ok(()) => match st.upload.as_ref() {
                        Some(up) => Ok((up.id.clone(), up.plan)),
                        None if self.inner.exists(&self.inner.meta_path(&n)).await? => {
                            Err(StoreError::AlreadyComplete)
                        }
                        None => Err(StoreError::NotPlanned),
                    },
                }
            }
        };
        match result {
            Ok((upload_id, plan)) => Ok(Box::new(ObjectUpload {
                inner: Arc::clone(&self.inner),
                names: n,
                slot,
                upload_id,
                plan,
            })),
            Err(e) => {
                self.inner.release_slot(&id, slot);
                Err(e)
            }
        }
    }

    async fn upload_status(&self, user: &str, key: &str) -> StoreResult<UnfinishedUpload> {
        self.inner.ensure_scanned().await?;
        let n = Names::new(user, key);
        let id = n.id();
        let slot = self.inner.file_slot(&id);
        let result = self.inner.upload_status(&n, &slot).await;
        self.inner.release_slot(&id, slot);
        result
    }

    async fn head(&self, user: &str, key: &str) -> StoreResult<FileMeta> {
        let n = Names::new(user, key);
        if let Some(meta) = self.inner.get_json(&self.inner.meta_path(&n)).await? {
            return Ok(meta);
        }
        // An upload's state tells it apart from nothing (a GET, no lock).
        if self.inner.exists(&self.inner.state_path(&n)).await? {
            Err(StoreError::Unfinished)
        } else {
            Err(StoreError::NotFound)
        }
    }

    async fn read(&self, user: &str, meta: &FileMeta, offset: u64, len: u64) -> StoreResult<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= meta.size)
            .ok_or_else(|| other("read past the end of the file"))?;
        let Some(upload_id) = meta.upload_id.as_deref() else {
            return Err(StoreError::NotFound);
        };
        let n = Names::new(user, &meta.key);
        let content = self.inner.content_path(&n, upload_id);
        let sums = self.inner.sums_path(&n, upload_id);
        // The chunks covering the range, and their CRCs: two ranged GETs
        // at once, so verifying costs no extra round trip.
        let first = offset / CHUNK;
        let last = end.div_ceil(CHUNK);
        let start = first * CHUNK;
        let stop = (last * CHUNK).min(meta.size);
        let store = &self.inner.store;
        let (bytes, crcs) = futures::join!(
            store.get_range(&content, start..stop),
            store.get_range(&sums, first * 4..last * 4)
        );
        let bytes = bytes.map_err(store_err)?;
        if bytes.len() as u64 != stop - start {
            return Err(StoreError::Integrity { offset });
        }
        match crcs {
            Ok(crcs) => {
                if crcs.len() as u64 != (last - first) * 4 {
                    return Err(StoreError::Integrity { offset });
                }
                for (i, (chunk, want)) in bytes
                    .chunks(CHUNK as usize)
                    .zip(crcs.chunks_exact(4))
                    .enumerate()
                {
                    let want = u32::from_le_bytes([want[0], want[1], want[2], want[3]]);
                    if crc32c::crc32c(chunk) != want {
                        let at = start + i as u64 * CHUNK;
                        error!(user, key = %meta.key, offset = at, "stored bytes fail their checksum: refused");
                        return Err(StoreError::Integrity { offset: at });
                    }
                }
            }
            Err(object_store::Error::NotFound { .. }) => {
                debug!(user, key = %meta.key, "no checksums kept for this file: served unverified");
            }
            Err(e) => return Err(store_err(e)),
        }
        let from = (offset - start) as usize;
        Ok(bytes.slice(from..from + len as usize))
    }

    async fn delete_file(
        &self,
        user: &str,
        key: &str,
        upload_id: Option<&str>,
    ) -> StoreResult<Deleted> {
        let mut h = self.hold(user, key).await?;
        let result = self
            .inner
            .delete_file(&h.names, &mut h.state, upload_id)
            .await;
        self.release(h, result)
    }

    async fn list_files(
        &self,
        user: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<ListPage> {
        self.inner.list_files(user, prefix, after, limit).await
    }

    /// One HEAD in the bucket (a missing object is an answer) and, with a
    /// coordinator, one PING.
    async fn ready(&self) -> StoreResult<()> {
        self.inner.exists(&self.inner.path(&["ready"])).await?;
        if let Some(coord) = &self.inner.coord {
            coord.ping().await?;
        }
        Ok(())
    }

    fn unfinished_stats(&self) -> UnfinishedStats {
        let pending = lock(&self.inner.pending);
        let mut stats = UnfinishedStats::default();
        for p in pending.values() {
            stats.count += 1;
            stats.bytes_planned += p.planned;
            stats.bytes_received += p.received;
        }
        stats
    }

    async fn sweep_expired(&self, now: SystemTime) -> StoreResult<usize> {
        self.inner.sweep_expired(now).await
    }
}

/// An unfinished upload opened for one block.
#[derive(Debug)]
struct ObjectUpload {
    inner: Arc<Inner>,
    names: Names,
    slot: Slot,
    /// The upload this handle was opened on.
    upload_id: String,
    plan: PlanRecord,
}

impl ObjectUpload {
    async fn put(
        &self,
        index: u64,
        data: Bytes,
        want: Option<String>,
    ) -> StoreResult<Option<String>> {
        let inner = &self.inner;
        let n = &self.names;
        let expected = block_len(self.plan.size, self.plan.block_size, index)
            .ok_or_else(|| other(format!("block {index} is outside the plan")))?;
        if data.len() as u64 != expected {
            return Err(other(format!(
                "block {index} has {} bytes, the plan says {expected}",
                data.len()
            )));
        }
        if let Some(coord) = &inner.coord {
            return self
                .put_coordinated(coord.as_ref(), index, data, want)
                .await;
        }
        let earlier = {
            let mut st = self.slot.lock().await;
            inner.load(n, &mut st).await?;
            let up = self.current(&st, want.as_deref()).await?;
            if up.received[index as usize] {
                Some(up.held.get(index))
            } else {
                None
            }
        };
        if let Some(held) = earlier {
            return self.repeat(index, data, want, held).await;
        }
        // Not under the lock: blocks of one upload are staged concurrently.
        // A block landing in an upload discarded meanwhile is under that
        // upload's id, never mixed with another's; the sweep removes it.
        let path = inner.block_path(n, &self.upload_id, index);
        inner
            .store
            .put(&path, PutPayload::from_bytes(data.clone()))
            .await
            .map_err(store_err)?;
        let mut st = self.slot.lock().await;
        inner.load(n, &mut st).await?;
        let up = match self.current(&st, want.as_deref()).await {
            Ok(_) => st.upload.as_mut().ok_or(StoreError::NotPlanned)?,
            Err(e) => {
                let _ = inner.store.delete(&path).await;
                return Err(e);
            }
        };
        if !up.received[index as usize] {
            up.received[index as usize] = true;
            up.remaining -= 1;
            inner.touch(&n.id(), expected);
            up.held.hold(index, data.clone());
        }
        if up.remaining == 0 {
            return inner
                .complete(n, &mut st, Some((index, data)))
                .await
                .map(Some);
        }
        if up.assembler.is_none()
            && !up.assembler_tried
            && up.plan.size > PART_MIN
            && inner.assemblers.available_permits() > 0
        {
            // Reloaded (or none was free at SAVE): write the parts of what
            // is staged in the background from now on, rather than all at
            // completion.
            up.assembler_tried = true;
            let staged = up
                .received
                .iter()
                .enumerate()
                .filter(|(i, r)| **r && *i as u64 != index)
                .map(|(i, _)| i as u64)
                .collect();
            up.assembler = inner.start_assembler(n, &up.id, up.plan, staged).await;
        }
        let feed = up.assembler.as_ref().map(|a| a.tx.clone());
        drop(st);
        // After the lock: the assembler may be busy writing a part, and a
        // completion waits for every block sent to it before.
        if let Some(tx) = feed {
            let _ = tx.send((index, data)).await;
        }
        Ok(None)
    }

    /// [`Self::put`] with a coordinator: stage the block (a repeat simply
    /// writes it again: the last bytes win), then mark it received at the
    /// coordinator, atomically with checking the upload is still current.
    /// The mark that brings the count to the total completes the file,
    /// under the key's lease; so does a repeat once all are in (a
    /// completion cut short by a crash), and whichever comes second finds
    /// the file complete and answers without the md5.
    async fn put_coordinated(
        &self,
        coord: &dyn Coord,
        index: u64,
        data: Bytes,
        want: Option<String>,
    ) -> StoreResult<Option<String>> {
        let inner = &self.inner;
        let n = &self.names;
        if want.as_deref().is_some_and(|w| w != self.upload_id) {
            return Err(StoreError::Superseded);
        }
        let len = data.len() as u64;
        let path = inner.block_path(n, &self.upload_id, index);
        inner
            .store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map_err(store_err)?;
        let name = n.lease_name();
        match coord.mark_block(&name, &self.upload_id, index).await? {
            Mark::NotCurrent => {
                let _ = inner.store.delete(&path).await;
                return Err(match coord.current(&name).await? {
                    Some(_) if want.is_some() => StoreError::Superseded,
                    Some(_) => StoreError::NotPlanned,
                    None if inner.exists(&inner.meta_path(n)).await? => StoreError::AlreadyComplete,
                    None => StoreError::NotPlanned,
                });
            }
            Mark::Marked { first, count } => {
                if first {
                    inner.touch(&n.id(), len);
                }
                if count < total_blocks(self.plan.size, self.plan.block_size) {
                    return Ok(None);
                }
            }
        }
        let mut st = inner.lock_key(n, &self.slot).await?;
        let result = async {
            inner.load(n, &mut st).await?;
            match st.upload.as_ref() {
                Some(up) if up.id == self.upload_id && up.remaining == 0 => {
                    inner.complete(n, &mut st, None).await.map(Some)
                }
                Some(up) if up.id == self.upload_id => Ok(None),
                _ => match inner.get_json::<FileMeta>(&inner.meta_path(n)).await? {
                    // Completed by another block's (or SAVE's) answer.
                    Some(meta) if meta.upload_id.as_deref() == Some(self.upload_id.as_str()) => {
                        Ok(None)
                    }
                    _ if want.is_some() => Err(StoreError::Superseded),
                    _ => Err(StoreError::NotPlanned),
                },
            }
        }
        .await;
        if result.is_err() {
            st.loaded = false;
        }
        result
    }

    /// A block staged already. The reference keeps the last bytes written at
    /// an index, so: the same bytes again (the usual resend) change nothing;
    /// other bytes replace the staged block, and since the assembler may
    /// have consumed the old ones, the file is then assembled from the staged
    /// blocks at completion. Either way a repeat completes an upload whose
    /// completion was cut short.
    async fn repeat(
        &self,
        index: u64,
        data: Bytes,
        want: Option<String>,
        held: Option<Bytes>,
    ) -> StoreResult<Option<String>> {
        let inner = &self.inner;
        let n = &self.names;
        let path = inner.block_path(n, &self.upload_id, index);
        let before = match held {
            Some(b) => Some(b),
            // Not under the lock: one GET of one block.
            None => match inner.store.get(&path).await {
                Ok(r) => Some(r.bytes().await.map_err(store_err)?),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(store_err(e)),
            },
        };
        let changed = before.as_ref() != Some(&data);
        if changed {
            inner
                .store
                .put(&path, PutPayload::from_bytes(data.clone()))
                .await
                .map_err(store_err)?;
        }
        let mut st = self.slot.lock().await;
        inner.load(n, &mut st).await?;
        self.current(&st, want.as_deref()).await?;
        let up = st.upload.as_mut().ok_or(StoreError::NotPlanned)?;
        if changed {
            if let Some(a) = up.assembler.take() {
                a.cancel.cancel();
            }
            up.assembler_tried = true;
            if up.held.take(index).is_some() {
                up.held.hold(index, data);
            }
        }
        inner.touch(&n.id(), 0);
        if up.remaining == 0 {
            return inner.complete(n, &mut st, None).await.map(Some);
        }
        Ok(None)
    }

    /// The key's upload, if it is still the one this handle was opened on
    /// (and the one the client names).
    async fn current<'a>(&self, st: &'a KeyState, want: Option<&str>) -> StoreResult<&'a Upload> {
        match st.upload.as_ref() {
            Some(up) if want.is_some_and(|w| w != up.id) => Err(StoreError::Superseded),
            Some(up) if up.id == self.upload_id => Ok(up),
            Some(_) => Err(if want.is_some() {
                StoreError::Superseded
            } else {
                StoreError::NotPlanned
            }),
            None if self
                .inner
                .exists(&self.inner.meta_path(&self.names))
                .await? =>
            {
                Err(StoreError::AlreadyComplete)
            }
            None => Err(StoreError::NotPlanned),
        }
    }
}

#[async_trait]
impl UploadWriter for ObjectUpload {
    fn plan(&self) -> PlanRecord {
        self.plan
    }

    fn upload_id(&self) -> Option<&str> {
        Some(&self.upload_id)
    }

    async fn put_block(
        self: Box<Self>,
        index: u64,
        data: Bytes,
        upload_id: Option<String>,
    ) -> StoreResult<Option<String>> {
        let result = self.put(index, data, upload_id).await;
        let ObjectUpload {
            inner, names, slot, ..
        } = *self;
        inner.release_slot(&names.id(), slot);
        result
    }
}

mod accounts;
pub mod coord;
mod status;
#[cfg(test)]
mod tests;
