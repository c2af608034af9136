//! The local-disk implementation of [`Storage`]: DATA records and FILE
//! content on one file system. Layout under the data root:
//!
//! ```text
//! data/<user>/<key>            DATA record (JSON)
//! files/<user>/<key>           complete file content
//! meta/<user>/<key>            complete file's size and md5 (JSON)
//! sums/<user>/<key>            complete file's CRC32C per 4 KiB (see `sums.rs`)
//! uploads/<user>/<key>/        unfinished upload (see `upload.rs`)
//! accounts/<user>              login account (see `accounts.rs`)
//! versions/<user>/<key>/<id>   content of version <id> of a replaced key,
//!                   <id>.sums  its checksums,
//!                   <id>.meta  the meta of a replaced version still kept
//! tmp/                         temp files, emptied at start
//! ```
//!
//! Replacing a file (SAVE `replace`): the new version's content and sums go
//! to their own names under `versions/` (nothing a reader has open is ever
//! renamed over), then its meta is renamed over the key's meta — the one
//! step that switches readers from the old version to the new. A key's
//! first version keeps its content in `files/`; every later one lives under
//! `versions/`. The replaced version stays readable by its id (a download
//! that began with it) for the grace period, and goes with the key's next
//! replace, its DELETE, the sweeper after the grace, or a restart.
//!
//! Names are encoded by [`names::encode`](super::names::encode), so no key or user reaches outside
//! its directory. Every file that becomes visible is written to `tmp/` (or,
//! for a file's content, in its upload's directory), made durable, then
//! linked or renamed into place. A file is complete exactly when its meta
//! exists; the meta is renamed into place only after the content is durable.
//!
//! Completing a file (its last block, or an empty file's SAVE) is a group
//! commit (see `commit.rs`): the completion writes its meta and checksums to
//! `tmp/` without syncing anything (a file of 1 MiB or more first syncs its
//! own data, so a big file's writeback does not hold up a batch of small
//! ones) and queues its renames. The store's committer thread takes every
//! completion queued, syncs the file system once (all their contents, metas
//! and checksums durable), performs their renames in order under `swap`,
//! syncs once more (the renames durable) and only then answers them: an
//! acknowledged file survives a crash, and a crash before the answer leaves
//! either the old state or the new one, never a meta whose content is not
//! on disk. A small upload thus costs no fsync of its own: two `syncfs`
//! calls shared by everything in its batch. A replace keeps its ordered
//! directory sync inside the batch (see [`Disk::publish_version`]).
//!
//! Crash leftovers are cleaned at `open`: `tmp/` is emptied, a meta whose
//! content is missing is removed (`drop_orphan_metas`), checksums that
//! describe no complete file are removed (`drop_stray_sums`), versions that
//! are not current are removed (`drop_replaced_versions`), and an upload
//! directory whose plan is missing or unreadable is discarded
//! (`index_uploads`).
//!
//! Unfinished uploads are accounted for in memory (planned and received
//! bytes, last use), so SAVE can enforce per-user caps and reserve the space
//! promised to them, and a sweeper can expire the idle ones.

mod accounts;
mod commit;
mod upload;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value};
use step_core::digest::EMPTY_MD5;
use tracing::{debug, error, info, warn};

use super::api::{
    self, Account, Deleted, FileMeta, ListPage, PlanOutcome, PlanRecord, Replace, Storage,
    StoreError, StoreResult, UnfinishedStats, UnfinishedUpload, UploadWriter,
};
use super::{StoreLimits, names, sums};
use commit::Committer;
use upload::{Activity, Phase, Upload};

/// An open upload. Its plan and id are fixed for its life (a new SAVE makes
/// a new upload), so they are kept outside its lock: opening an upload for a
/// block reads them without waiting for a block being written.
#[derive(Debug)]
struct Slot {
    plan: PlanRecord,
    id: String,
    upload: Mutex<Upload>,
}

impl Slot {
    fn new(up: Upload) -> Slot {
        Slot {
            plan: up.plan,
            id: up.id.clone(),
            upload: Mutex::new(up),
        }
    }
}

type UploadSlot = Arc<Slot>;

/// An upload's identity in the registry: the encoded user and key, i.e. its
/// directory names (injective, and known for uploads found on disk).
type Id = (String, String);

fn id_of(user: &str, key: &str) -> Id {
    (names::encode(user), names::encode(key))
}

/// One unfinished upload, on disk and possibly open.
#[derive(Debug)]
struct Pending {
    planned: u64,
    activity: Arc<Activity>,
    /// Open and shared by every connection writing it; `None` when closed
    /// (reopened from disk on the next block).
    slot: Option<UploadSlot>,
}

impl Pending {
    fn promised(&self) -> u64 {
        self.planned
            .saturating_sub(self.activity.received.load(Ordering::Relaxed))
    }
}

/// Every unfinished upload the store has.
#[derive(Debug, Default)]
struct Registry {
    pending: HashMap<Id, Pending>,
}

impl Registry {
    /// Close uploads nobody is writing to when too many are open.
    fn evict_idle(&mut self) {
        if self.pending.len() < MAX_OPEN_UPLOADS {
            return;
        }
        let open = self.pending.values().filter(|p| p.slot.is_some()).count();
        if open >= MAX_OPEN_UPLOADS {
            for p in self.pending.values_mut() {
                if p.slot.as_ref().is_some_and(|s| Arc::strong_count(s) == 1) {
                    p.slot = None;
                }
            }
        }
    }

    /// Mark an entry's open upload (if any) discarded: blocks for it are
    /// refused. Waits for a block being written to it; one that completed
    /// the upload leaves it complete.
    fn discard(p: &Pending) {
        if let Some(slot) = &p.slot {
            let mut up = lock(&slot.upload);
            if matches!(up.phase, Phase::Receiving) {
                up.phase = Phase::Discarded;
            }
        }
    }
}

/// The server's storage on one local file system.
#[derive(Debug)]
pub struct DiskStore {
    /// Shared with the blocking tasks that do the file-system work, and with
    /// the upload writers handed out (they publish completed files).
    disk: Arc<Disk>,
}

#[derive(Debug)]
struct Disk {
    root: PathBuf,
    limits: StoreLimits,
    /// Unfinished uploads. Lock order: registry, then an upload's slot,
    /// then `swap`.
    registry: Mutex<Registry>,
    /// Serialises an account's replace with its delete.
    accounts: Mutex<()>,
    /// Held while a key's complete file changes (completion, replace,
    /// DELETE, removing replaced versions): a condition checked under it
    /// still holds when the change is made.
    swap: Mutex<()>,
    /// Versions replaced since start, kept for downloads under way:
    /// (user, key, version id, when in ms). See [`Disk::sweep_retired`].
    retired: Mutex<Vec<(String, String, String, u64)>>,
    /// Makes completions durable in batches (see `commit.rs`).
    committer: Committer<StoreResult<Placed>>,
}

/// What a queued completion's step did.
#[derive(Debug)]
enum Placed {
    Done,
    /// Its condition no longer held when its turn came: nothing changed.
    Refused(StoreError),
}

/// Files of at least this size sync their own data before joining a batch:
/// their writeback then happens while they are still the only ones waiting
/// for it, not in a `syncfs` a batch of small files waits on.
const OWN_SYNC_MIN: u64 = 1 << 20;

/// A completion's meta and checksums, written to `tmp/` (not synced: the
/// batch's first sync does that) and waiting to be renamed into place.
/// Whatever is not renamed is removed when this is dropped.
#[derive(Debug)]
struct Staged {
    meta: FileMeta,
    meta_tmp: PathBuf,
    sums_tmp: PathBuf,
    placed: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_file(&self.meta_tmp);
            let _ = fs::remove_file(&self.sums_tmp);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the store down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Unfinished uploads kept open at once. Each holds two file descriptors;
/// beyond this, uploads nobody is writing to are closed (their state is on
/// disk and reloads on the next block), so abandoned uploads cannot exhaust
/// the server's descriptors.
const MAX_OPEN_UPLOADS: usize = 1024;

fn not_found_ok(r: io::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// `len` bytes of `file` from `offset`, read into memory nobody zeroed first:
/// a zero-filled buffer per block was a tenth of a download's server CPU.
/// Fewer bytes than asked is `UnexpectedEof`.
fn read_exact_at(file: &File, mut offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let got = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), offset)?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        offset += got as u64;
    }
    // The allocation may be larger than asked, and a read may then go past.
    buf.truncate(len);
    Ok(buf)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Version ids are ours (hex); anything else a client sends names no file.
fn version_name_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

#[derive(Clone, Copy)]
enum Area {
    Data,
    Files,
    Meta,
    Sums,
    Uploads,
    Versions,
}

impl Area {
    fn dir(self) -> &'static str {
        match self {
            Area::Data => "data",
            Area::Files => "files",
            Area::Meta => "meta",
            Area::Sums => "sums",
            Area::Uploads => "uploads",
            Area::Versions => "versions",
        }
    }
}

/// The entries of `dir` (none if it does not exist).
fn entries(dir: &Path) -> io::Result<Vec<fs::DirEntry>> {
    match fs::read_dir(dir) {
        Ok(rd) => rd.collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Run file-system work off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> StoreResult<T> + Send + 'static,
) -> StoreResult<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Other(Box::new(e)))?
}

fn json_err(e: serde_json::Error) -> StoreError {
    StoreError::Other(Box::new(e))
}

impl DiskStore {
    /// Open (creating if needed) a store at `root` with default limits.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Arc<DiskStore>> {
        Self::open_with(root, StoreLimits::default())
    }

    /// Open (creating if needed) a store at `root`, cleaning what an earlier
    /// crash may have left (temp files, metas whose content is missing,
    /// checksums of no file), accounting for the unfinished uploads on disk
    /// and removing those idle beyond the expiry.
    pub fn open_with(root: impl Into<PathBuf>, limits: StoreLimits) -> io::Result<Arc<DiskStore>> {
        let root = root.into();
        for area in [
            Area::Data,
            Area::Files,
            Area::Meta,
            Area::Sums,
            Area::Uploads,
            Area::Versions,
        ] {
            fs::create_dir_all(root.join(area.dir()))?;
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        let disk = Disk::new(root, limits)?;
        disk.drop_replaced_versions()?;
        disk.drop_orphan_metas()?;
        disk.drop_stray_sums()?;
        disk.index_uploads()?;
        let expired = disk.sweep_expired(SystemTime::now());
        if expired > 0 {
            info!(expired, "removed unfinished uploads idle beyond the expiry");
        }
        Ok(Arc::new(DiskStore {
            disk: Arc::new(disk),
        }))
    }

    /// The store at `root` for account management only (`step-server
    /// user`): nothing is cleaned, indexed or swept, so it is safe next to
    /// a server running on the same directory. Only the account operations
    /// are meant for it.
    pub fn open_for_accounts(root: impl Into<PathBuf>) -> io::Result<Arc<DiskStore>> {
        let root = root.into();
        fs::create_dir_all(root.join("tmp"))?;
        Ok(Arc::new(DiskStore {
            disk: Arc::new(Disk::new(root, StoreLimits::default())?),
        }))
    }

    pub fn root(&self) -> &Path {
        &self.disk.root
    }

    pub fn limits(&self) -> StoreLimits {
        self.disk.limits
    }
}

impl Disk {
    fn new(root: PathBuf, limits: StoreLimits) -> io::Result<Disk> {
        // syncfs needs any descriptor on the file system: the root's, kept
        // open for the store's life.
        let fs_handle = File::open(&root)?;
        let committer = Committer::new("step-commit", move || {
            rustix::fs::syncfs(&fs_handle).map_err(io::Error::from)
        })?;
        Ok(Disk {
            root,
            limits,
            registry: Mutex::new(Registry::default()),
            accounts: Mutex::new(()),
            swap: Mutex::new(()),
            retired: Mutex::new(Vec::new()),
            committer,
        })
    }

    fn drop_orphan_metas(&self) -> io::Result<()> {
        let meta_root = self.root.join(Area::Meta.dir());
        for user in fs::read_dir(&meta_root)? {
            let user = user?;
            for entry in fs::read_dir(user.path())? {
                let entry = entry?;
                let content = self
                    .root
                    .join(Area::Files.dir())
                    .join(user.file_name())
                    .join(entry.file_name());
                // A replaced key's content lives under versions/.
                let versioned = || -> io::Result<bool> {
                    let meta: FileMeta = serde_json::from_slice(&fs::read(entry.path())?)
                        .map_err(io::Error::other)?;
                    Ok(meta.upload_id.is_some_and(|id| {
                        self.root
                            .join(Area::Versions.dir())
                            .join(user.file_name())
                            .join(entry.file_name())
                            .join(id)
                            .exists()
                    }))
                };
                if !content.exists() && !versioned().unwrap_or(false) {
                    warn!(meta = %entry.path().display(), "removing metadata of a file whose content is missing");
                    fs::remove_file(entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// At start (no reader can be under way): remove under `versions/`
    /// everything but the current version of each key — replaced versions,
    /// and new ones a crash cut off before their meta — and a key's first
    /// version in `files/` once it was replaced.
    fn drop_replaced_versions(&self) -> io::Result<()> {
        let root = self.root.join(Area::Versions.dir());
        for user in entries(&root)? {
            for key in entries(&user.path())? {
                let meta_path = self
                    .root
                    .join(Area::Meta.dir())
                    .join(user.file_name())
                    .join(key.file_name());
                let current = match fs::read(&meta_path) {
                    Ok(bytes) => serde_json::from_slice::<FileMeta>(&bytes)
                        .ok()
                        .and_then(|m| m.upload_id),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                let dir = key.path();
                let keep: Vec<String> = current
                    .iter()
                    .flat_map(|c| [c.clone(), format!("{c}.sums")])
                    .collect();
                for entry in entries(&dir)? {
                    if !entry
                        .file_name()
                        .to_str()
                        .is_some_and(|n| keep.iter().any(|k| k == n))
                    {
                        fs::remove_file(entry.path())?;
                    }
                }
                let kept = current.as_ref().is_some_and(|c| dir.join(c).exists());
                if kept {
                    // The key's first version was replaced: it goes too.
                    for area in [Area::Files, Area::Sums] {
                        let first = self
                            .root
                            .join(area.dir())
                            .join(user.file_name())
                            .join(key.file_name());
                        not_found_ok(fs::remove_file(first))?;
                    }
                } else {
                    let _ = fs::remove_dir(&dir);
                }
            }
        }
        Ok(())
    }

    /// Remove checksum sidecars that do not describe a complete file: left
    /// by a crash between their rename and the meta's, or kept from an older
    /// file when a crash lost the newer one's rename. Such a file is then
    /// served unverified, never refused for another file's sums.
    fn drop_stray_sums(&self) -> io::Result<()> {
        let sums_root = self.root.join(Area::Sums.dir());
        for user in entries(&sums_root)? {
            for entry in entries(&user.path())? {
                let meta_path = self
                    .root
                    .join(Area::Meta.dir())
                    .join(user.file_name())
                    .join(entry.file_name());
                let keep = match fs::read(&meta_path) {
                    Ok(bytes) => match serde_json::from_slice::<FileMeta>(&bytes) {
                        Ok(meta) => {
                            sums::matches(&File::open(entry.path())?, meta.size, &meta.md5)?
                        }
                        Err(_) => false,
                    },
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(e),
                };
                if !keep {
                    warn!(sums = %entry.path().display(), "removing checksums that describe no complete file");
                    fs::remove_file(entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// Account for every unfinished upload on disk; unusable ones are removed.
    fn index_uploads(&self) -> io::Result<()> {
        let uploads_root = self.root.join(Area::Uploads.dir());
        let mut reg = lock(&self.registry);
        for user in entries(&uploads_root)? {
            let Ok(user_name) = user.file_name().into_string() else {
                continue;
            };
            for entry in entries(&user.path())? {
                let Ok(key_name) = entry.file_name().into_string() else {
                    continue;
                };
                match upload::scan(&entry.path()) {
                    Ok(found) => {
                        reg.pending.insert(
                            (user_name.clone(), key_name),
                            Pending {
                                planned: found.plan.size,
                                activity: Activity::new(found.received, found.modified),
                                slot: None,
                            },
                        );
                    }
                    Err(e) => {
                        warn!(upload = %entry.path().display(), error = %e, "discarding unreadable unfinished upload");
                        upload::remove_dir(&entry.path())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Remove unfinished uploads with no SAVE or block for longer than the
    /// expiry, as of `now`; returns how many. An upload a request is using
    /// at this moment is never removed. The periodic sweeper calls this;
    /// tests call it with a `now` of their choosing.
    fn sweep_expired(&self, now: SystemTime) -> usize {
        let expiry_ms = u64::try_from(self.limits.upload_expiry.as_millis()).unwrap_or(u64::MAX);
        let cutoff = upload::unix_ms(now).saturating_sub(expiry_ms);
        let mut doomed = Vec::new();
        {
            let mut reg = lock(&self.registry);
            reg.pending.retain(|id, p| {
                if p.activity.last_ms.load(Ordering::Relaxed) >= cutoff {
                    return true;
                }
                if let Some(slot) = &p.slot {
                    // Handles are only made under the registry lock: a count
                    // of one means no request holds it, nor can get it now.
                    if Arc::strong_count(slot) > 1 {
                        return true;
                    }
                    match slot.upload.try_lock() {
                        Ok(mut up) => up.phase = Phase::Discarded,
                        Err(TryLockError::Poisoned(p)) => p.into_inner().phase = Phase::Discarded,
                        Err(TryLockError::WouldBlock) => return true,
                    }
                }
                doomed.push(id.clone());
                false
            });
            // Moved aside under the lock (a rename, no data), so a SAVE of
            // the same key that follows cannot have its new upload removed.
            doomed.retain_mut(|id| {
                let dir = self.root.join(Area::Uploads.dir()).join(&id.0).join(&id.1);
                let aside = self.root.join("tmp").join(uuid::Uuid::new_v4().simple().to_string());
                match fs::rename(&dir, &aside) {
                    Ok(()) => {
                        id.1 = aside.to_string_lossy().into_owned();
                        true
                    }
                    Err(e) => {
                        if e.kind() != io::ErrorKind::NotFound {
                            warn!(upload = %dir.display(), error = %e, "cannot remove an expired upload");
                        }
                        false
                    }
                }
            });
        }
        for (user, aside) in &doomed {
            info!(user = %user, "expired an idle unfinished upload");
            if let Err(e) = upload::remove_dir(Path::new(aside)) {
                warn!(error = %e, "cannot remove an expired upload's files");
            }
        }
        doomed.len()
    }

    /// Count, planned bytes and received bytes of every unfinished upload.
    fn unfinished_stats(&self) -> UnfinishedStats {
        let reg = lock(&self.registry);
        let mut stats = UnfinishedStats::default();
        for p in reg.pending.values() {
            stats.count += 1;
            stats.bytes_planned += p.planned;
            stats.bytes_received += p.activity.received.load(Ordering::Relaxed);
        }
        stats
    }

    fn path(&self, area: Area, user: &str, key: &str) -> PathBuf {
        self.root
            .join(area.dir())
            .join(names::encode(user))
            .join(names::encode(key))
    }

    fn version_dir(&self, user: &str, key: &str) -> PathBuf {
        self.path(Area::Versions, user, key)
    }

    /// Where version `id` of `(user, key)` keeps its content and checksums:
    /// its own files under `versions/` once the key was replaced, else the
    /// key's first version's in `files/` and `sums/`.
    fn located(&self, user: &str, key: &str, id: Option<&str>) -> (PathBuf, PathBuf) {
        if let Some(id) = id.filter(|id| version_name_ok(id)) {
            let dir = self.version_dir(user, key);
            let content = dir.join(id);
            if content.exists() {
                return (content, dir.join(format!("{id}.sums")));
            }
        }
        (
            self.path(Area::Files, user, key),
            self.path(Area::Sums, user, key),
        )
    }

    fn temp_file(&self) -> io::Result<(PathBuf, File)> {
        let path = self
            .root
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, file))
    }

    /// Write `bytes` durably to a temp file and return its path.
    fn write_temp(&self, bytes: &[u8]) -> io::Result<PathBuf> {
        self.write_temp_with(bytes, true)
    }

    /// Write `bytes` to a temp file, synced if `durable` (else a later sync
    /// must cover it before it is renamed anywhere), and return its path.
    fn write_temp_with(&self, bytes: &[u8], durable: bool) -> io::Result<PathBuf> {
        let (path, mut file) = self.temp_file()?;
        let mut result = file.write_all(bytes);
        if durable {
            result = result.and_then(|()| file.sync_all());
        }
        if let Err(e) = result {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    /// Put `bytes` at `dest` unless something is there already (returns false).
    fn create_exclusive(&self, dest: &Path, bytes: &[u8]) -> io::Result<bool> {
        let parent = dest.parent().ok_or_else(|| io::Error::other("no parent"))?;
        fs::create_dir_all(parent)?;
        let tmp = self.write_temp(bytes)?;
        let linked = fs::hard_link(&tmp, dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(parent)?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    // ------------------------------------------------------------------ DATA

    fn record_create(&self, user: &str, key: &str, record: &Map<String, Value>) -> StoreResult<()> {
        let bytes = serde_json::to_vec(record).map_err(json_err)?;
        if self.create_exclusive(&self.path(Area::Data, user, key), &bytes)? {
            Ok(())
        } else {
            Err(StoreError::Exists)
        }
    }

    fn record_get(&self, user: &str, key: &str) -> StoreResult<Map<String, Value>> {
        match fs::read(self.path(Area::Data, user, key)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(json_err),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    fn record_delete(&self, user: &str, key: &str) -> StoreResult<()> {
        if not_found_ok(fs::remove_file(self.path(Area::Data, user, key)))? {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }

    // ------------------------------------------------------------------ FILE

    fn read_meta(&self, user: &str, key: &str) -> StoreResult<Option<FileMeta>> {
        match fs::read(self.path(Area::Meta, user, key)) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(json_err)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The upload slot for `(user, key)`: in memory, or reloaded from disk.
    fn upload_slot(&self, user: &str, key: &str) -> StoreResult<Option<UploadSlot>> {
        let mut reg = lock(&self.registry);
        self.upload_slot_locked(&mut reg, user, key)
    }

    fn upload_slot_locked(
        &self,
        reg: &mut Registry,
        user: &str,
        key: &str,
    ) -> StoreResult<Option<UploadSlot>> {
        let id = id_of(user, key);
        if let Some(slot) = reg.pending.get(&id).and_then(|p| p.slot.as_ref()) {
            return Ok(Some(Arc::clone(slot)));
        }
        let dir = self.path(Area::Uploads, user, key);
        if !dir.join(upload::PLAN).exists() {
            // Gone from disk under us: forget it.
            reg.pending.remove(&id);
            return Ok(None);
        }
        let activity = match reg.pending.get(&id) {
            Some(p) => Arc::clone(&p.activity),
            None => Activity::new(0, SystemTime::now()),
        };
        match Upload::load(dir.clone(), activity) {
            Ok(up) => {
                info!(
                    user,
                    key,
                    remaining = up.remaining(),
                    "reloaded unfinished upload from disk"
                );
                let entry = Pending {
                    planned: up.plan.size,
                    activity: Arc::clone(&up.activity),
                    slot: None,
                };
                let slot = Arc::new(Slot::new(up));
                reg.evict_idle();
                reg.pending.insert(
                    id,
                    Pending {
                        slot: Some(Arc::clone(&slot)),
                        ..entry
                    },
                );
                Ok(Some(slot))
            }
            Err(e) => {
                warn!(user, key, error = %e, "discarding unreadable unfinished upload");
                reg.pending.remove(&id);
                upload::remove_dir(&dir)?;
                Ok(None)
            }
        }
    }

    /// FILE SAVE: plan an upload of `size` bytes in blocks of `block_size`.
    fn file_plan_blocking(
        self: &Arc<Self>,
        user: &str,
        key: &str,
        plan: PlanRecord,
        resume: bool,
        replace: Option<Replace>,
    ) -> StoreResult<PlanOutcome> {
        api::check_save(replace.as_ref(), self.read_meta(user, key)?.as_ref())?;
        let id = id_of(user, key);
        if resume && let Some(slot) = self.upload_slot(user, key)? {
            let up = lock(&slot.upload);
            if matches!(up.phase, Phase::Receiving) && up.plan == plan && up.replace == replace {
                up.activity.touch(SystemTime::now());
                let missing = step_core::plan::to_ranges(up.missing());
                return Ok(PlanOutcome {
                    plan,
                    missing,
                    resumed: true,
                    md5: None,
                    upload_id: Some(up.id.clone()),
                });
            }
        }
        // Start over: whatever was there is superseded.
        let dir = self.path(Area::Uploads, user, key);
        let upload_id = {
            let mut reg = lock(&self.registry);
            if let Some(old) = reg.pending.remove(&id) {
                Registry::discard(&old);
            }
            upload::remove_dir(&dir)?;
            // Checked again under the lock: a block may have completed the
            // key since the check above (`discard` waited for it), and a
            // complete key takes no new upload (but a replacing one).
            api::check_save(replace.as_ref(), self.read_meta(user, key)?.as_ref())?;
            if plan.size == 0 {
                drop(reg);
                let md5 = self.complete_empty(user, key, replace.as_ref())?;
                return Ok(PlanOutcome {
                    plan,
                    missing: Vec::new(),
                    resumed: false,
                    md5: Some(md5),
                    upload_id: None,
                });
            }
            // Per-user caps first: they stop one user from reserving the
            // disk (or the inodes) with SAVEs alone.
            let (count, planned) = reg
                .pending
                .iter()
                .filter(|(other, _)| other.0 == id.0)
                .fold((0u64, 0u64), |(n, b), (_, p)| {
                    (n + 1, b.saturating_add(p.planned))
                });
            self.limits.admit_unfinished(count, planned, plan.size)?;
            // Refuse up front what cannot fit, with a clear NoSpace, instead
            // of failing blocks later: the free space must hold this upload
            // and what every unfinished upload was promised and has not
            // written yet (their data files are sparse).
            let promised = reg
                .pending
                .values()
                .fold(0u64, |sum, p| sum.saturating_add(p.promised()));
            if plan.size.saturating_add(promised) > self.available_space() {
                return Err(StoreError::NoSpace);
            }
            let up = match Upload::create(dir.clone(), plan, replace) {
                Ok(up) => up,
                Err(e) => {
                    // A directory without a plan is no upload: nobody could
                    // delete what it holds.
                    let _ = upload::remove_dir(&dir);
                    return Err(e.into());
                }
            };
            let upload_id = up.id.clone();
            reg.evict_idle();
            reg.pending.insert(
                id,
                Pending {
                    planned: plan.size,
                    activity: Arc::clone(&up.activity),
                    slot: Some(Arc::new(Slot::new(up))),
                },
            );
            upload_id
        };
        let total = plan.total();
        Ok(PlanOutcome {
            plan,
            missing: vec![[0, total]],
            resumed: false,
            md5: None,
            upload_id: Some(upload_id),
        })
    }

    /// Bytes the server may still write on the store's file system;
    /// unknown counts as unlimited (the writes will tell).
    fn available_space(&self) -> u64 {
        match rustix::fs::statvfs(&self.root) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            Err(_) => u64::MAX,
        }
    }

    fn complete_empty(
        self: &Arc<Self>,
        user: &str,
        key: &str,
        replace: Option<&Replace>,
    ) -> StoreResult<String> {
        let (tmp, file) = self.temp_file()?;
        drop(file);
        let meta = FileMeta {
            key: key.to_owned(),
            size: 0,
            md5: EMPTY_MD5.to_owned(),
            upload_id: Some(uuid::Uuid::new_v4().simple().to_string()),
            completed_unix: api::unix_now(),
        };
        let placed = self.stage(meta, &[]).and_then(|staged| {
            let replace = replace.cloned();
            self.commit_publish(user, key, tmp.clone(), staged, move |current| {
                api::check_save(replace.as_ref(), current)
            })
        });
        match placed {
            Ok(Placed::Done) => Ok(EMPTY_MD5.to_owned()),
            Ok(Placed::Refused(e)) | Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Write a completion's meta and checksums to `tmp/`, unsynced: the
    /// first sync of its batch makes them durable.
    fn stage(&self, meta: FileMeta, crcs: &[u32]) -> StoreResult<Staged> {
        // Written before anything moves: on a full disk this is the step
        // that fails, and then nothing has changed (the upload keeps its data
        // and completes on a retried block). Renames need no space.
        let meta_tmp =
            self.write_temp_with(&serde_json::to_vec(&meta).map_err(json_err)?, false)?;
        let sums_tmp = match sums::encode(meta.size, &meta.md5, crcs)
            .and_then(|bytes| self.write_temp_with(&bytes, false))
        {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_file(&meta_tmp);
                return Err(e.into());
            }
        };
        Ok(Staged {
            meta,
            meta_tmp,
            sums_tmp,
            placed: false,
        })
    }

    /// Complete `(user, key)` with `content` and `staged` in the next group
    /// commit, and wait until that is durable. `content` must be durable
    /// already or written before this call (the batch's first sync covers
    /// it). `check` is the completion's condition on the key's complete file,
    /// decided under `swap` right before the renames: when it fails nothing
    /// is changed and [`Placed::Refused`] says why.
    fn commit_publish(
        self: &Arc<Self>,
        user: &str,
        key: &str,
        content: PathBuf,
        staged: Staged,
        check: impl FnOnce(Option<&FileMeta>) -> StoreResult<()> + Send + 'static,
    ) -> StoreResult<Placed> {
        let disk = Arc::clone(self);
        let (user, key) = (user.to_owned(), key.to_owned());
        self.committer.commit(move || {
            let _swap = lock(&disk.swap);
            let current = disk.read_meta(&user, &key)?;
            if let Err(e) = check(current.as_ref()) {
                return Ok(Placed::Refused(e));
            }
            disk.publish(&user, &key, &content, staged, current.as_ref())?;
            Ok(Placed::Done)
        })?
    }

    /// Make `content` the complete file `(user, key)` described by
    /// `staged`. Runs on the committer's thread, after a sync made `content`
    /// and `staged` durable and before the sync that makes these renames
    /// durable; the caller holds `swap`. Content is renamed first, then the
    /// checksums, then the meta: a crash in between leaves an orphan content
    /// file (overwritten later) or checksums of no file (removed at `open`);
    /// a crash that kept only the meta's rename leaves a meta without
    /// content, which `open` removes (`drop_orphan_metas`). The content a
    /// surviving meta names is whole either way: it was synced before.
    ///
    /// With `current` (a replace), see [`Self::publish_version`] instead.
    fn publish(
        &self,
        user: &str,
        key: &str,
        content: &Path,
        mut staged: Staged,
        current: Option<&FileMeta>,
    ) -> StoreResult<()> {
        if let Some(current) = current {
            return self.publish_version(user, key, content, staged, current);
        }
        let dest = self.path(Area::Files, user, key);
        let sums_dest = self.path(Area::Sums, user, key);
        let meta_dest = self.path(Area::Meta, user, key);
        for d in [&dest, &sums_dest, &meta_dest] {
            if let Some(parent) = d.parent() {
                fs::create_dir_all(parent)?;
            }
        }
        fs::rename(content, &dest).and_then(|()| {
            let placed = fs::rename(&staged.sums_tmp, &sums_dest)
                .and_then(|()| fs::rename(&staged.meta_tmp, &meta_dest));
            if placed.is_err() {
                // Content without meta is not a file, and nothing would ever
                // delete it: put it back.
                let _ = fs::rename(&dest, content);
                let _ = fs::remove_file(&sums_dest);
            }
            placed
        })?;
        staged.placed = true;
        Ok(())
    }

    /// Make `content` the new version `meta` of `(user, key)`, replacing
    /// `current`, in one step for readers: content and checksums go to
    /// their own names under `versions/`, `current`'s meta is kept there
    /// too (downloads under way read it by id), then the new meta is renamed
    /// over the key's. Nothing a reader may have open is renamed over, so a
    /// reader sees the old version or the new one, never a mix nor nothing.
    /// Versions replaced before `current` are removed now. The caller holds
    /// `swap`.
    fn publish_version(
        &self,
        user: &str,
        key: &str,
        content: &Path,
        mut staged: Staged,
        current: &FileMeta,
    ) -> StoreResult<()> {
        let id = staged
            .meta
            .upload_id
            .as_deref()
            .filter(|id| version_name_ok(id))
            .ok_or_else(|| StoreError::Other("a new version needs an id".into()))?;
        let dir = self.version_dir(user, key);
        fs::create_dir_all(&dir)?;
        let meta_dest = self.path(Area::Meta, user, key);
        let old = current
            .upload_id
            .as_deref()
            .filter(|old| version_name_ok(old) && *old != id);
        // The new version's content and sums (synced by the batch), and
        // the kept meta (written now, after that sync: synced here), must be
        // in place on disk before the meta that names them: a crash keeping
        // only the meta's rename would leave the key naming a version it
        // does not have. The committer's second sync makes the meta's
        // rename durable.
        let placed = (|| -> io::Result<()> {
            if let Some(old) = old {
                let kept =
                    self.write_temp(&serde_json::to_vec(current).map_err(io::Error::other)?)?;
                fs::rename(&kept, dir.join(format!("{old}.meta")))?;
            }
            fs::rename(&staged.sums_tmp, dir.join(format!("{id}.sums")))?;
            fs::rename(content, dir.join(id))?;
            sync_dir(&dir)?;
            fs::rename(&staged.meta_tmp, &meta_dest)?;
            Ok(())
        })();
        // On failure the new version's files stay unreferenced; `open`
        // removes them (and `staged` its temp files).
        placed?;
        staged.placed = true;
        // Versions replaced before `current` go now; so does the key's first
        // version in files/ unless it is `current` itself.
        let current_is_first = old.is_some_and(|old| !dir.join(old).exists());
        for entry in entries(&dir)? {
            let name = entry.file_name();
            let version = name.to_str().and_then(|n| n.split('.').next());
            if version != Some(id) && version != old {
                not_found_ok(fs::remove_file(entry.path()))?;
            }
        }
        if !current_is_first {
            not_found_ok(fs::remove_file(self.path(Area::Files, user, key)))?;
            not_found_ok(fs::remove_file(self.path(Area::Sums, user, key)))?;
        }
        if let Some(old) = old {
            lock(&self.retired).push((
                user.to_owned(),
                key.to_owned(),
                old.to_owned(),
                upload::unix_ms(SystemTime::now()),
            ));
        }
        info!(user, key, "file replaced");
        Ok(())
    }

    /// See [`Storage::head_version`].
    fn head_version(&self, user: &str, key: &str, id: &str) -> StoreResult<FileMeta> {
        let current = self.read_meta(user, key)?;
        if let Some(meta) = &current
            && meta.upload_id.as_deref() == Some(id)
        {
            return Ok(meta.clone());
        }
        if version_name_ok(id) {
            let kept = self.version_dir(user, key).join(format!("{id}.meta"));
            match fs::read(kept) {
                Ok(bytes) => return serde_json::from_slice(&bytes).map_err(json_err),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(if current.is_some() {
            StoreError::Replaced
        } else {
            StoreError::NotFound
        })
    }

    /// Remove the versions replaced more than the grace period before `now`
    /// (unless one became current again, which cannot happen with fresh ids
    /// but costs nothing to check).
    fn sweep_retired(&self, now: SystemTime) -> StoreResult<()> {
        let grace = u64::try_from(self.limits.replaced_grace.as_millis()).unwrap_or(u64::MAX);
        let cutoff = upload::unix_ms(now).saturating_sub(grace);
        let due: Vec<_> = {
            let mut retired = lock(&self.retired);
            let (due, keep) = retired.drain(..).partition(|r| r.3 <= cutoff);
            *retired = keep;
            due
        };
        for (user, key, old, _) in due {
            let _swap = lock(&self.swap);
            let Some(current) = self.read_meta(&user, &key)? else {
                continue;
            };
            let current_id = current.upload_id.as_deref().unwrap_or_default();
            if current_id == old {
                continue;
            }
            let dir = self.version_dir(&user, &key);
            let was_first = !dir.join(&old).exists();
            for name in [old.clone(), format!("{old}.sums"), format!("{old}.meta")] {
                not_found_ok(fs::remove_file(dir.join(name)))?;
            }
            // The key's first version in files/, once the current one lives
            // under versions/.
            if was_first && version_name_ok(current_id) && dir.join(current_id).exists() {
                not_found_ok(fs::remove_file(self.path(Area::Files, &user, &key)))?;
                not_found_ok(fs::remove_file(self.path(Area::Sums, &user, &key)))?;
            }
            debug!(%user, %key, version = %old, "removed a replaced version");
        }
        Ok(())
    }

    /// See [`Storage::delete_file_if`].
    fn delete_if_blocking(&self, user: &str, key: &str, if_md5: &str) -> StoreResult<Deleted> {
        let swap = lock(&self.swap);
        let Some(meta) = self.read_meta(user, key)? else {
            return Err(StoreError::NotFound);
        };
        if !meta.md5.eq_ignore_ascii_case(if_md5) {
            return Err(StoreError::Precondition);
        }
        self.remove_file_locked(user, key, &swap)?;
        Ok(Deleted::File)
    }

    /// UPLOAD, first half: the unfinished upload under `key`.
    fn open_upload(self: &Arc<Self>, user: &str, key: &str) -> StoreResult<DiskUpload> {
        // A replacing upload lives beside the complete file it replaces; a
        // completed upload's slot is gone.
        let Some(slot) = self.upload_slot(user, key)? else {
            return Err(if self.read_meta(user, key)?.is_some() {
                StoreError::AlreadyComplete
            } else {
                StoreError::NotPlanned
            });
        };
        Ok(DiskUpload {
            disk: Arc::clone(self),
            user: user.to_owned(),
            key: key.to_owned(),
            slot,
        })
    }

    /// The unfinished upload under `key`, read only: from its open slot, or
    /// from its files without opening them for writing. The registry knows
    /// every unfinished upload (indexed at open).
    fn upload_status(&self, user: &str, key: &str) -> StoreResult<UnfinishedUpload> {
        let (slot, activity) = match lock(&self.registry).pending.get(&id_of(user, key)) {
            Some(p) => (p.slot.clone(), Arc::clone(&p.activity)),
            None => return Err(StoreError::NotFound),
        };
        let last_active_unix = activity.last_ms.load(Ordering::Relaxed) / 1000;
        let (plan, id, missing) = match slot {
            Some(slot) => {
                let up = lock(&slot.upload);
                if !matches!(up.phase, Phase::Receiving) {
                    return Err(StoreError::NotFound);
                }
                let missing = step_core::plan::to_ranges(up.missing());
                (up.plan, Some(up.id.clone()), missing)
            }
            // Closed: its files say (a SAVE or DELETE racing this read
            // leaves them whole or gone).
            None => match upload::peek(&self.path(Area::Uploads, user, key)) {
                Ok(found) => found,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
                Err(e) => return Err(e.into()),
            },
        };
        let upload_id = match id {
            Some(id) => id,
            // From before ids: it gets one when opened, as for a block.
            None => match self.upload_slot(user, key)? {
                Some(slot) => lock(&slot.upload).id.clone(),
                None => return Err(StoreError::NotFound),
            },
        };
        Ok(UnfinishedUpload {
            upload_id,
            plan,
            missing,
            last_active_unix,
        })
    }

    /// FILE GET / DOWNLOAD: a complete file's metadata.
    fn head(&self, user: &str, key: &str) -> StoreResult<FileMeta> {
        match self.read_meta(user, key)? {
            Some(meta) => Ok(meta),
            None if self.upload_slot(user, key)?.is_some() => Err(StoreError::Unfinished),
            None => Err(StoreError::NotFound),
        }
    }

    /// Read `len` bytes at `offset` of the complete file `meta` describes,
    /// checked against its chunk checksums: bytes that fail are refused with
    /// [`StoreError::Integrity`], never returned. Files stored before
    /// checksums were kept are read unchecked.
    fn read(&self, user: &str, meta: &FileMeta, offset: u64, len: u64) -> StoreResult<Bytes> {
        // Content first, then its checksums: a replace renames nothing over
        // either, and a key's first version's pair is checked against
        // `meta` below.
        let (path, sums_path) = self.located(user, &meta.key, meta.upload_id.as_deref());
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let side = match File::open(&sums_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                debug!(%user, key = %meta.key, "no checksums kept for this file: served unverified");
                return Ok(Bytes::from(read_exact_at(&file, offset, len as usize)?));
            }
            Err(e) => return Err(e.into()),
        };
        // The checksums must be this file's: opened after a DELETE and a
        // new upload of the key, they describe another one.
        if !sums::matches(&side, meta.size, &meta.md5)? {
            return Err(StoreError::NotFound);
        }
        let (first, start, end) = sums::covering(offset, len, meta.size);
        let buf = match read_exact_at(&file, start, (end - start) as usize) {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                error!(%user, key = %meta.key, offset, "stored file is shorter than its meta says: block refused");
                return Err(StoreError::Integrity { offset });
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(bad) = sums::verify(&side, first, &buf)? {
            error!(%user, key = %meta.key, offset, chunk_offset = bad, "stored bytes fail their checksum: block refused");
            return Err(StoreError::Integrity { offset: bad });
        }
        let from = (offset - start) as usize;
        Ok(Bytes::from(buf).slice(from..from + len as usize))
    }

    /// Remove the complete file `(user, key)`; false if there was none.
    fn remove_file_of(&self, user: &str, key: &str) -> StoreResult<bool> {
        let swap = lock(&self.swap);
        self.remove_file_locked(user, key, &swap)
    }

    /// [`Self::remove_file_of`] for a caller holding `swap`: every version.
    fn remove_file_locked(
        &self,
        user: &str,
        key: &str,
        _swap: &MutexGuard<'_, ()>,
    ) -> StoreResult<bool> {
        // Meta first: from that instant the file is no longer complete.
        if !not_found_ok(fs::remove_file(self.path(Area::Meta, user, key)))? {
            return Ok(false);
        }
        not_found_ok(fs::remove_file(self.path(Area::Files, user, key)))?;
        not_found_ok(fs::remove_file(self.path(Area::Sums, user, key)))?;
        match fs::remove_dir_all(self.version_dir(user, key)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(true)
    }

    fn delete_blocking(&self, user: &str, key: &str) -> StoreResult<Deleted> {
        if self.remove_file_of(user, key)? {
            return Ok(Deleted::File);
        }
        let mut reg = lock(&self.registry);
        let known = reg.pending.remove(&id_of(user, key));
        if let Some(old) = &known {
            Registry::discard(old);
        }
        let dir = self.path(Area::Uploads, user, key);
        let on_disk = dir.exists();
        upload::remove_dir(&dir)?;
        if known.is_some() || on_disk {
            Ok(Deleted::UnfinishedUpload)
        } else {
            Err(StoreError::NotFound)
        }
    }

    /// DELETE scoped to one upload: the unfinished upload with that id, or
    /// the complete file it produced; anything else under the key is left
    /// alone ([`StoreError::OtherUpload`]). Decided and done under the
    /// registry lock and the upload's own lock, which completion holds while
    /// it publishes: a completion cannot slip in between the check and the
    /// delete, and a new SAVE of the key waits for both.
    fn delete_upload_blocking(&self, user: &str, key: &str, want: &str) -> StoreResult<Deleted> {
        let mut reg = lock(&self.registry);
        let slot = self.upload_slot_locked(&mut reg, user, key)?;
        let up = slot.as_ref().map(|s| lock(&s.upload));
        if let Some(meta) = self.read_meta(user, key)? {
            if meta.upload_id.as_deref() != Some(want) {
                return Err(StoreError::OtherUpload);
            }
            self.remove_file_of(user, key)?;
            return Ok(Deleted::File);
        }
        let Some(mut up) = up else {
            return Err(StoreError::NotFound);
        };
        if !matches!(up.phase, Phase::Receiving) {
            // Completed and deleted, or discarded, just now: nothing there.
            return Err(StoreError::NotFound);
        }
        if up.id != want {
            return Err(StoreError::OtherUpload);
        }
        up.phase = Phase::Discarded;
        drop(up);
        reg.pending.remove(&id_of(user, key));
        upload::remove_dir(&self.path(Area::Uploads, user, key))?;
        Ok(Deleted::UnfinishedUpload)
    }

    /// The complete files of `user` (see [`Storage::list_files`]). Keys come
    /// from the meta directory's names, decoded: one `readdir`, no file
    /// read, except for names too long to be kept readable (stored as a
    /// hash), whose meta is read for its key. The encoding does not keep
    /// key order, so every name is decoded and the page picked from them
    /// (O(n log limit) for n files of the user); only the page's metas are
    /// read.
    fn list_files(
        &self,
        user: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<ListPage> {
        let dir = self.root.join(Area::Meta.dir()).join(names::encode(user));
        let wanted = |key: &str| key.starts_with(prefix) && after.is_none_or(|a| key > a);
        // Keys in the page so far: the `limit + 1` smallest wanted keys
        // (the one more tells whether another page follows).
        let mut best: std::collections::BinaryHeap<(String, std::ffi::OsString)> =
            std::collections::BinaryHeap::new();
        // Readable names of keys with this prefix start with its encoding:
        // the others are passed over without decoding.
        let name_prefix = names::encode_prefix(prefix);
        for entry in entries(&dir)? {
            let name = entry.file_name();
            if let Some(readable) = name.to_str().filter(|n| !n.starts_with('~'))
                && !readable.starts_with(&name_prefix)
            {
                continue;
            }
            let key = match name.to_str().and_then(names::decode) {
                Some(key) => key,
                // Hashed (or foreign) name: the meta says which key it holds.
                None => match fs::read(entry.path()) {
                    Ok(bytes) => match serde_json::from_slice::<FileMeta>(&bytes) {
                        Ok(meta) if names::encode(&meta.key) == name.to_string_lossy() => meta.key,
                        _ => {
                            warn!(meta = %entry.path().display(), "skipping unreadable metadata in a listing");
                            continue;
                        }
                    },
                    // Deleted meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e.into()),
                },
            };
            if !wanted(&key) {
                continue;
            }
            if best.len() <= limit {
                best.push((key, name));
            } else if best.peek().is_some_and(|(top, _)| key < *top) {
                best.pop();
                best.push((key, name));
            }
        }
        let mut page = best.into_sorted_vec();
        let more = page.len() > limit;
        page.truncate(limit);
        let mut files = Vec::with_capacity(page.len());
        for (_, name) in &page {
            match fs::read(dir.join(name)) {
                Ok(bytes) => {
                    files.push(serde_json::from_slice::<FileMeta>(&bytes).map_err(json_err)?)
                }
                // Deleted since the directory was read: not in the page.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        let next = if more {
            Some(match page.last() {
                Some((key, _)) => key.clone(),
                // limit 0: nothing taken, everything after `after` remains.
                None => after.unwrap_or_default().to_owned(),
            })
        } else {
            None
        };
        Ok(ListPage { files, next })
    }
}

#[async_trait]
impl Storage for DiskStore {
    async fn account_get(&self, name: &str) -> StoreResult<Option<Account>> {
        let disk = Arc::clone(&self.disk);
        let name = name.to_owned();
        blocking(move || disk.account_get(&name)).await
    }

    async fn account_create(&self, account: &Account) -> StoreResult<()> {
        let (disk, account) = (Arc::clone(&self.disk), account.clone());
        blocking(move || disk.account_create(&account)).await
    }

    async fn account_replace(&self, account: &Account) -> StoreResult<()> {
        let (disk, account) = (Arc::clone(&self.disk), account.clone());
        blocking(move || disk.account_replace(&account)).await
    }

    async fn account_delete(&self, name: &str) -> StoreResult<()> {
        let disk = Arc::clone(&self.disk);
        let name = name.to_owned();
        blocking(move || disk.account_delete(&name)).await
    }

    async fn account_list(&self) -> StoreResult<Vec<String>> {
        let disk = Arc::clone(&self.disk);
        blocking(move || disk.account_list()).await
    }

    async fn record_create(
        &self,
        user: &str,
        key: &str,
        record: Map<String, Value>,
    ) -> StoreResult<()> {
        let disk = Arc::clone(&self.disk);
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || disk.record_create(&user, &key, &record)).await
    }

    async fn record_get(&self, user: &str, key: &str) -> StoreResult<Map<String, Value>> {
        let disk = Arc::clone(&self.disk);
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || disk.record_get(&user, &key)).await
    }

    async fn record_delete(&self, user: &str, key: &str) -> StoreResult<()> {
        let disk = Arc::clone(&self.disk);
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || disk.record_delete(&user, &key)).await
    }

    async fn plan_upload(
        &self,
        user: &str,
        key: &str,
        plan: PlanRecord,
        resume: bool,
    ) -> StoreResult<PlanOutcome> {
        let disk = Arc::clone(&self.disk);
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || disk.file_plan_blocking(&user, &key, plan, resume, None)).await
    }

    async fn plan_replace(
        &self,
        user: &str,
        key: &str,
        plan: PlanRecord,
        resume: bool,
        replace: Replace,
    ) -> StoreResult<PlanOutcome> {
        let disk = Arc::clone(&self.disk);
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || disk.file_plan_blocking(&user, &key, plan, resume, Some(replace))).await
    }

    async fn head_version(&self, user: &str, key: &str, upload_id: &str) -> StoreResult<FileMeta> {
        let disk = Arc::clone(&self.disk);
        let (user, key, id) = (user.to_owned(), key.to_owned(), upload_id.to_owned());
        blocking(move || disk.head_version(&user, &key, &id)).await
    }

    async fn delete_file_if(&self, user: &str, key: &str, if_md5: &str) -> StoreResult<Deleted> {
        let disk = Arc::clone(&self.disk);
        let (user, key, md5) = (user.to_owned(), key.to_owned(), if_md5.to_owned());
        blocking(move || disk.delete_if_blocking(&user, &key, &md5)).await
    }

    async fn open_upload(&self, user: &str, key: &str) -> StoreResult<Box<dyn UploadWriter>> {
        let disk = Arc::clone(&self.disk);
        let (user, key) = (user.to_owned(), key.to_owned());
        let upload = blocking(move || disk.open_upload(&user, &key)).await?;
        Ok(Box::new(upload))
    }

    async fn head(&self, user: &str, key: &str) -> StoreResult<FileMeta> {
        let disk = Arc::clone(&self.disk);
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || disk.head(&user, &key)).await
    }

    async fn read(&self, user: &str, meta: &FileMeta, offset: u64, len: u64) -> StoreResult<Bytes> {
        let disk = Arc::clone(&self.disk);
        let (user, meta) = (user.to_owned(), meta.clone());
        blocking(move || disk.read(&user, &meta, offset, len)).await
    }

    async fn upload_status(&self, user: &str, key: &str) -> StoreResult<UnfinishedUpload> {
        let disk = Arc::clone(&self.disk);
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || disk.upload_status(&user, &key)).await
    }

    async fn delete_file(
        &self,
        user: &str,
        key: &str,
        upload_id: Option<&str>,
    ) -> StoreResult<Deleted> {
        let disk = Arc::clone(&self.disk);
        let (user, key) = (user.to_owned(), key.to_owned());
        let upload_id = upload_id.map(str::to_owned);
        blocking(move || match upload_id {
            Some(want) => disk.delete_upload_blocking(&user, &key, &want),
            None => disk.delete_blocking(&user, &key),
        })
        .await
    }

    async fn list_files(
        &self,
        user: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<ListPage> {
        let disk = Arc::clone(&self.disk);
        let (user, prefix) = (user.to_owned(), prefix.to_owned());
        let after = after.map(str::to_owned);
        blocking(move || disk.list_files(&user, &prefix, after.as_deref(), limit)).await
    }

    fn unfinished_stats(&self) -> UnfinishedStats {
        self.disk.unfinished_stats()
    }

    async fn sweep_expired(&self, now: SystemTime) -> StoreResult<usize> {
        let disk = Arc::clone(&self.disk);
        blocking(move || {
            disk.sweep_retired(now)?;
            Ok(disk.sweep_expired(now))
        })
        .await
    }
}

/// An unfinished upload on disk that blocks can be written to.
#[derive(Debug)]
struct DiskUpload {
    disk: Arc<Disk>,
    user: String,
    key: String,
    slot: UploadSlot,
}

#[async_trait]
impl UploadWriter for DiskUpload {
    fn plan(&self) -> PlanRecord {
        self.slot.plan
    }

    fn upload_id(&self) -> Option<&str> {
        Some(&self.slot.id)
    }

    async fn put_block(
        self: Box<Self>,
        index: u64,
        data: Bytes,
        upload_id: Option<String>,
    ) -> StoreResult<Option<String>> {
        blocking(move || self.put_block_blocking(index, &data, upload_id.as_deref())).await
    }
}

impl DiskUpload {
    /// Take this upload out of the registry (it completed or went), unless
    /// a new SAVE has put another there already.
    fn forget_slot(&self) {
        let id = id_of(&self.user, &self.key);
        let mut reg = lock(&self.disk.registry);
        if reg
            .pending
            .get(&id)
            .and_then(|p| p.slot.as_ref())
            .is_some_and(|s| Arc::ptr_eq(s, &self.slot))
        {
            reg.pending.remove(&id);
        }
    }

    /// Write one block (checked against the plan by the service). With
    /// `upload_id`, the block is refused unless it names the upload it would
    /// go into: checked under the same lock as the write, so blocks of two
    /// uploads of one key never mix.
    fn put_block_blocking(
        &self,
        index: u64,
        data: &Bytes,
        upload_id: Option<&str>,
    ) -> StoreResult<Option<String>> {
        let mut up = lock(&self.slot.upload);
        match &up.phase {
            Phase::Receiving => {}
            Phase::Complete => return Err(StoreError::AlreadyComplete),
            Phase::Discarded => return Err(StoreError::NotPlanned),
        }
        if upload_id.is_some_and(|want| want != up.id) {
            return Err(StoreError::Superseded);
        }
        // The service checked the block against this plan; a block that
        // does not fit would write outside the data file or break the md5.
        if !up.fits(index, data.len() as u64) {
            return Err(StoreError::Other(
                format!(
                    "block {index} of {} bytes does not fit the plan",
                    data.len()
                )
                .into(),
            ));
        }
        // In use: the sweeper leaves it alone for another expiry period.
        up.activity.touch(SystemTime::now());
        if !up.write_block_shared(index, data)? {
            return Ok(None);
        }
        let (md5, crcs) = up.finish_digests()?;
        if up.plan.size >= OWN_SYNC_MIN {
            up.sync_data()?;
        }
        let meta = FileMeta {
            key: self.key.clone(),
            size: up.plan.size,
            md5: md5.clone(),
            upload_id: Some(up.id.clone()),
            completed_unix: api::unix_now(),
        };
        let size = meta.size;
        let staged = self.disk.stage(meta, &crcs)?;
        // A replacement's condition, checked again where the swap is made:
        // it cannot hold later either, so the upload goes.
        let replace = up.replace.clone();
        let placed = self.disk.commit_publish(
            &self.user,
            &self.key,
            up.data_path(),
            staged,
            move |current| match &replace {
                Some(replace) => replace.check(current),
                None => Ok(()),
            },
        )?;
        if let Placed::Refused(e) = placed {
            up.phase = Phase::Discarded;
            upload::remove_dir(&up.dir)?;
            drop(up);
            self.forget_slot();
            info!(user = %self.user, key = %self.key, "replacement refused at completion: its condition no longer holds");
            return Err(e);
        }
        upload::remove_dir(&up.dir)?;
        up.phase = Phase::Complete;
        // Lock order is registry, then slot: release the slot first.
        drop(up);
        self.forget_slot();
        info!(user = %self.user, key = %self.key, size, md5 = %md5, "file complete");
        Ok(Some(md5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn complete(store: &Arc<DiskStore>, user: &str, key: &str, body: &[u8]) -> FileMeta {
        let plan = PlanRecord {
            size: body.len() as u64,
            block_size: 20480,
        };
        store
            .plan_upload(user, key, plan, false)
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
        let meta_path = store.disk.path(Area::Meta, "u", "old");
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
            !store.disk.path(Area::Sums, "u", "old").exists(),
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
}
