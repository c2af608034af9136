//! The local disk as a store: DATA records and FILE content on one file
//! system, the upload lifecycle's rules (`store/files/`) carried out by the
//! [`Disk`] backend. Layout under the data root:
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
//! Names are encoded by `names::encode`, so no key or user reaches outside
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
//! and checksums durable), performs their renames in order,
//! syncs once more (the renames durable) and only then answers them: an
//! acknowledged file survives a crash, and a crash before the answer leaves
//! either the old state or the new one, never a meta whose content is not
//! on disk. A small upload thus costs no fsync of its own: two `syncfs`
//! calls shared by everything in its batch. A replace keeps its ordered
//! directory sync inside the batch (see `publish.rs`).
//!
//! Crash leftovers are cleaned at `open`: `tmp/` is emptied, a meta whose
//! content is missing is removed (`drop_orphan_metas`), checksums that
//! describe no complete file are removed (`drop_stray_sums`), versions that
//! are not current are removed (`drop_replaced_versions`), and an upload
//! directory whose plan is missing or unreadable is discarded
//! (`index_uploads`).
//!
//! Unfinished uploads are accounted for in memory (the lifecycle's ledger:
//! planned and received bytes, last use), so SAVE can enforce per-user caps
//! and reserve the space promised to them, and a sweeper can expire the
//! idle ones.
//!
//! Every call of the lifecycle blocks on the file system: [`Disk`] runs
//! each whole operation on a thread for blocking work (one hop per SAVE,
//! block or DELETE, as a plain blocking store would), under the key's lock
//! from the shared lock map. Where what is: `backend.rs` (the lifecycle's
//! calls; the open uploads), `blocks.rs` (a block's write), `publish.rs`
//! (completion's renames, versions, removal), `read.rs` (reads and
//! listings), `recover.rs` (cleaning up at start), `upload.rs` (one
//! unfinished upload's files), `commit.rs` (group commit), `records.rs`,
//! `accounts.rs`.

mod accounts;
mod backend;
mod blocks;
mod commit;
mod publish;
mod read;
mod records;
mod recover;
mod upload;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio_util::task::TaskTracker;
use tracing::info;

use super::api::{FileMeta, StoreError, StoreResult};
use super::files::{FileStore, Key, KeyId, Ledger};
use super::keylock::{KeyGuard, LockMap};
use super::limits::StoreLimits;
use super::names;
use commit::Committer;
use upload::Upload;

/// The store on the local disk: the upload lifecycle over a [`Disk`], with
/// the disk's records and accounts.
pub type DiskStore = FileStore<Disk>;

/// An open upload. Its plan and id are fixed for its life (a new SAVE makes
/// a new upload), so they are kept outside its lock.
#[derive(Debug)]
struct Slot {
    plan: super::api::PlanRecord,
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

/// A key locked for one operation.
#[derive(Debug)]
pub struct DiskHeld {
    key: Key,
    _lock: KeyGuard<KeyId, ()>,
}

/// One file system, as the lifecycle's backend.
#[derive(Debug)]
pub struct Disk {
    root: PathBuf,
    limits: StoreLimits,
    ledger: Ledger,
    /// Per-key locks: every change of a key's file or upload (SAVE, block,
    /// completion, DELETE, sweeps) happens under its key's.
    locks: LockMap<KeyId>,
    /// Unfinished uploads open now (the others are on disk only, reopened
    /// at their next use). Lock order: a key's lock, then this, then a
    /// slot's.
    open: Mutex<HashMap<KeyId, UploadSlot>>,
    /// Serialises an account's replace with its delete.
    accounts: Mutex<()>,
    /// Makes completions durable in batches (see `commit.rs`).
    committer: Committer<StoreResult<()>>,
    /// The operations running on threads for blocking work.
    tasks: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take the store down with it.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn not_found_ok(r: io::Result<()>) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
    const ALL: [Area; 6] = [
        Area::Data,
        Area::Files,
        Area::Meta,
        Area::Sums,
        Area::Uploads,
        Area::Versions,
    ];

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

/// Write `bytes` to a new temp file in `tmp`, synced if `durable` (else a
/// later sync must cover it before it is renamed anywhere).
fn write_temp(tmp: &Path, bytes: &[u8], durable: bool) -> io::Result<PathBuf> {
    use std::io::Write;
    let path = tmp.join(uuid::Uuid::new_v4().simple().to_string());
    let mut file = File::options().write(true).create_new(true).open(&path)?;
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

impl FileStore<Disk> {
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
        for area in Area::ALL {
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
        let expired = disk.expire_at_open(SystemTime::now());
        if expired > 0 {
            info!(expired, "removed unfinished uploads idle beyond the expiry");
        }
        Ok(Arc::new(FileStore::with_backend(disk)))
    }

    /// The store at `root` for account management only (`step-server
    /// user`): nothing is cleaned, indexed or swept, so it is safe next to
    /// a server running on the same directory. Only the account operations
    /// are meant for it.
    pub fn open_for_accounts(root: impl Into<PathBuf>) -> io::Result<Arc<DiskStore>> {
        let root = root.into();
        fs::create_dir_all(root.join("tmp"))?;
        Ok(Arc::new(FileStore::with_backend(Disk::new(
            root,
            StoreLimits::default(),
        )?)))
    }

    pub fn root(&self) -> &Path {
        &self.backend().root
    }

    pub fn limits(&self) -> StoreLimits {
        self.backend().limits
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
            ledger: Ledger::default(),
            locks: LockMap::new(),
            open: Mutex::new(HashMap::new()),
            accounts: Mutex::new(()),
            committer,
            tasks: TaskTracker::new(),
        })
    }

    /// Once every operation started so far has ended (tests: requests whose
    /// callers went away still run to their end).
    #[cfg(test)]
    async fn settled(&self) {
        self.tasks.close();
        self.tasks.wait().await;
        self.tasks.reopen();
    }

    /// `user` and `key` as their directory names.
    fn encoded(user: &str, key: &str) -> KeyId {
        (names::encode(user), names::encode(key))
    }

    fn at(&self, area: Area, id: &KeyId) -> PathBuf {
        self.root.join(area.dir()).join(&id.0).join(&id.1)
    }

    fn upload_dir(&self, id: &KeyId) -> PathBuf {
        self.at(Area::Uploads, id)
    }

    fn read_meta(&self, id: &KeyId) -> StoreResult<Option<FileMeta>> {
        match fs::read(self.at(Area::Meta, id)) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(json_err)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Put `bytes` at `dest` unless something is there already (returns false).
    fn create_exclusive(&self, dest: &Path, bytes: &[u8]) -> io::Result<bool> {
        let parent = dest.parent().ok_or_else(|| io::Error::other("no parent"))?;
        fs::create_dir_all(parent)?;
        let tmp = write_temp(&self.root.join("tmp"), bytes, true)?;
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
}

#[cfg(test)]
mod tests;
