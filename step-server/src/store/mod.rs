//! Storage: DATA records and FILE content on local disk.
//!
//! Everything the server keeps goes through [`Store`], whose methods speak in
//! users, keys, records, plans and blocks — never paths — so an object store
//! can stand behind the same methods later. Layout under the data root:
//!
//! ```text
//! data/<user>/<key>            DATA record (JSON)
//! files/<user>/<key>           complete file content
//! meta/<user>/<key>            complete file's size and md5 (JSON)
//! uploads/<user>/<key>/        unfinished upload (see `upload.rs`)
//! tmp/                         temp files, emptied at start
//! ```
//!
//! Names are encoded by [`names::encode`], so no key or user reaches outside
//! its directory. Every file that becomes visible is written to `tmp/`,
//! fsynced, then linked or renamed into place. A file is complete exactly when
//! its meta exists; the meta is written only after the content is durable.

mod names;
mod upload;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use step_core::digest::EMPTY_MD5;
use tracing::{info, warn};

use crate::error::StepError;
pub use upload::PlanRecord;
use upload::{Phase, Upload};

/// A complete file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    pub key: String,
    pub size: u64,
    pub md5: String,
}

/// The result of a FILE SAVE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanOutcome {
    pub plan: PlanRecord,
    /// Block indexes still needed.
    pub missing: Vec<[u64; 2]>,
    /// An unfinished upload was continued rather than started over.
    pub resumed: bool,
    /// Set when the file is already complete (size 0).
    pub md5: Option<String>,
    /// The upload's id (`upload_id` extension); none when already complete.
    pub upload_id: Option<String>,
}

/// The result of a FILE DELETE that found something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleted {
    File,
    UnfinishedUpload,
}

type UploadSlot = Arc<Mutex<Upload>>;

/// The server's storage on one local file system.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Unfinished uploads in use, shared by every connection that writes them.
    uploads: Mutex<HashMap<(String, String), UploadSlot>>,
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

fn evict_idle(uploads: &mut HashMap<(String, String), UploadSlot>) {
    if uploads.len() >= MAX_OPEN_UPLOADS {
        uploads.retain(|_, slot| Arc::strong_count(slot) > 1);
    }
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
    Uploads,
}

impl Area {
    fn dir(self) -> &'static str {
        match self {
            Area::Data => "data",
            Area::Files => "files",
            Area::Meta => "meta",
            Area::Uploads => "uploads",
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StepError> + Send + 'static,
) -> Result<T, StepError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StepError::Io(io::Error::other(e)))?
}

impl Store {
    /// Open (creating if needed) a store at `root`, cleaning what an earlier
    /// crash may have left: temp files and metas whose content is missing.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Arc<Store>> {
        let root = root.into();
        for area in [Area::Data, Area::Files, Area::Meta, Area::Uploads] {
            fs::create_dir_all(root.join(area.dir()))?;
        }
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        let store = Store {
            root,
            uploads: Mutex::new(HashMap::new()),
        };
        store.drop_orphan_metas()?;
        Ok(Arc::new(store))
    }

    pub fn root(&self) -> &Path {
        &self.root
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
                if !content.exists() {
                    warn!(meta = %entry.path().display(), "removing metadata of a file whose content is missing");
                    fs::remove_file(entry.path())?;
                }
            }
        }
        Ok(())
    }

    fn path(&self, area: Area, user: &str, key: &str) -> PathBuf {
        self.root
            .join(area.dir())
            .join(names::encode(user))
            .join(names::encode(key))
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
        let (path, mut file) = self.temp_file()?;
        let result = file.write_all(bytes).and_then(|()| file.sync_all());
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

    /// Store a record under a new key; `KeyExists` if the key is taken.
    pub async fn data_save(
        self: &Arc<Self>,
        user: &str,
        key: &str,
        record: Map<String, Value>,
    ) -> Result<(), StepError> {
        let this = Arc::clone(self);
        let path = self.path(Area::Data, user, key);
        let key = key.to_owned();
        blocking(move || {
            let bytes = serde_json::to_vec(&record).map_err(io::Error::from)?;
            if this.create_exclusive(&path, &bytes)? {
                Ok(())
            } else {
                Err(StepError::KeyExists(key))
            }
        })
        .await
    }

    pub async fn data_get(&self, user: &str, key: &str) -> Result<Map<String, Value>, StepError> {
        let path = self.path(Area::Data, user, key);
        let key = key.to_owned();
        blocking(move || match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| StepError::Io(io::Error::from(e)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StepError::NotFound(key)),
            Err(e) => Err(e.into()),
        })
        .await
    }

    pub async fn data_delete(&self, user: &str, key: &str) -> Result<(), StepError> {
        let path = self.path(Area::Data, user, key);
        let key = key.to_owned();
        blocking(move || {
            if not_found_ok(fs::remove_file(&path))? {
                Ok(())
            } else {
                Err(StepError::NotFound(key))
            }
        })
        .await
    }

    // ------------------------------------------------------------------ FILE

    fn read_meta(&self, user: &str, key: &str) -> Result<Option<FileMeta>, StepError> {
        match fs::read(self.path(Area::Meta, user, key)) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).map_err(io::Error::from)?,
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The upload slot for `(user, key)`: in memory, or reloaded from disk.
    fn upload_slot(&self, user: &str, key: &str) -> Result<Option<UploadSlot>, StepError> {
        let id = (user.to_owned(), key.to_owned());
        let mut uploads = lock(&self.uploads);
        if let Some(slot) = uploads.get(&id) {
            return Ok(Some(Arc::clone(slot)));
        }
        let dir = self.path(Area::Uploads, user, key);
        if !dir.join(upload::PLAN).exists() {
            return Ok(None);
        }
        match Upload::load(dir.clone()) {
            Ok(up) => {
                info!(
                    user,
                    key,
                    remaining = up.remaining(),
                    "reloaded unfinished upload from disk"
                );
                let slot = Arc::new(Mutex::new(up));
                evict_idle(&mut uploads);
                uploads.insert(id, Arc::clone(&slot));
                Ok(Some(slot))
            }
            Err(e) => {
                warn!(user, key, error = %e, "discarding unreadable unfinished upload");
                upload::remove_dir(&dir)?;
                Ok(None)
            }
        }
    }

    /// FILE SAVE: plan an upload of `size` bytes in blocks of `block_size`.
    pub async fn file_plan(
        self: &Arc<Self>,
        user: &str,
        key: &str,
        plan: PlanRecord,
        resume: bool,
    ) -> Result<PlanOutcome, StepError> {
        let this = Arc::clone(self);
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || this.file_plan_blocking(&user, &key, plan, resume)).await
    }

    fn file_plan_blocking(
        &self,
        user: &str,
        key: &str,
        plan: PlanRecord,
        resume: bool,
    ) -> Result<PlanOutcome, StepError> {
        if self.read_meta(user, key)?.is_some() {
            return Err(StepError::KeyExists(key.to_owned()));
        }
        let id = (user.to_owned(), key.to_owned());
        if resume && let Some(slot) = self.upload_slot(user, key)? {
            let up = lock(&slot);
            if matches!(up.phase, Phase::Receiving) && up.plan == plan {
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
            let mut uploads = lock(&self.uploads);
            if let Some(old) = uploads.remove(&id) {
                lock(&old).phase = Phase::Discarded;
            }
            upload::remove_dir(&dir)?;
            if plan.size == 0 {
                drop(uploads);
                let md5 = self.complete_empty(user, key)?;
                return Ok(PlanOutcome {
                    plan,
                    missing: Vec::new(),
                    resumed: false,
                    md5: Some(md5),
                    upload_id: None,
                });
            }
            // Refuse up front what cannot fit, with a clear NoSpace, instead
            // of failing blocks later. Advisory: nothing is reserved, because
            // a reservation would let anyone who can log in fill the disk
            // with SAVEs alone; uploads racing for the last space still get
            // NoSpace on the block that does not fit.
            if plan.size > self.available_space() {
                return Err(StepError::NoSpace);
            }
            let up = match Upload::create(dir.clone(), plan) {
                Ok(up) => up,
                Err(e) => {
                    // A directory without a plan is no upload: nobody could
                    // delete what it holds.
                    let _ = upload::remove_dir(&dir);
                    return Err(e.into());
                }
            };
            let upload_id = up.id.clone();
            evict_idle(&mut uploads);
            uploads.insert(id, Arc::new(Mutex::new(up)));
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

    fn complete_empty(&self, user: &str, key: &str) -> Result<String, StepError> {
        let (tmp, file) = self.temp_file()?;
        file.sync_all()?;
        let meta = FileMeta {
            key: key.to_owned(),
            size: 0,
            md5: EMPTY_MD5.to_owned(),
        };
        self.publish(user, key, &tmp, &meta)?;
        Ok(meta.md5)
    }

    /// Make `content` (already durable) the complete file `(user, key)`
    /// described by `meta`. Content is renamed first, then the meta: a crash
    /// in between leaves an orphan content file (overwritten later); a crash
    /// that kept only the meta's rename leaves a meta without content, which
    /// `open` removes.
    fn publish(
        &self,
        user: &str,
        key: &str,
        content: &Path,
        meta: &FileMeta,
    ) -> Result<(), StepError> {
        let dest = self.path(Area::Files, user, key);
        let meta_dest = self.path(Area::Meta, user, key);
        for d in [&dest, &meta_dest] {
            if let Some(parent) = d.parent() {
                fs::create_dir_all(parent)?;
            }
        }
        // The meta is written before anything moves: on a full disk this is
        // the step that fails, and then nothing has changed (the upload keeps
        // its data and completes on a retried block). Renames need no space.
        let tmp = self.write_temp(&serde_json::to_vec(meta).map_err(io::Error::from)?)?;
        let moved = fs::rename(content, &dest).and_then(|()| {
            let placed = fs::rename(&tmp, &meta_dest);
            if placed.is_err() {
                // Content without meta is not a file, and nothing would ever
                // delete it: put it back.
                let _ = fs::rename(&dest, content);
            }
            placed
        });
        if let Err(e) = moved {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        // Both renames made durable together, before anyone is told the file
        // is complete: one journal commit rather than one per rename. Should
        // a crash keep the meta's rename but lose the content's, `open`
        // removes that meta (`drop_orphan_metas`), as it always has.
        for parent in [dest.parent(), meta_dest.parent()].into_iter().flatten() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// UPLOAD, first half: the unfinished upload `key` refers to (408s).
    pub async fn open_upload(
        self: &Arc<Self>,
        user: &str,
        key: &str,
    ) -> Result<UploadHandle, StepError> {
        let this = Arc::clone(self);
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || {
            if this.read_meta(&user, &key)?.is_some() {
                return Err(StepError::AlreadyComplete(key));
            }
            match this.upload_slot(&user, &key)? {
                Some(slot) => Ok(UploadHandle {
                    store: Arc::clone(&this),
                    user,
                    key,
                    slot,
                }),
                None => Err(StepError::NotPlanned(key)),
            }
        })
        .await
    }

    /// FILE GET / DOWNLOAD: a complete file's metadata (404s).
    pub async fn file_meta(self: &Arc<Self>, user: &str, key: &str) -> Result<FileMeta, StepError> {
        let this = Arc::clone(self);
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || match this.read_meta(&user, &key)? {
            Some(meta) => Ok(meta),
            None if this.upload_slot(&user, &key)?.is_some() => Err(StepError::Unfinished(key)),
            None => Err(StepError::NotFound(key)),
        })
        .await
    }

    /// Read `len` bytes at `offset` of a complete file.
    pub async fn file_read(
        &self,
        user: &str,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Bytes, StepError> {
        let path = self.path(Area::Files, user, key);
        let key = key.to_owned();
        blocking(move || {
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(StepError::NotFound(key));
                }
                Err(e) => return Err(e.into()),
            };
            let mut buf = vec![0u8; len as usize];
            file.read_exact_at(&mut buf, offset)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    /// FILE DELETE.
    pub async fn file_delete(
        self: &Arc<Self>,
        user: &str,
        key: &str,
    ) -> Result<Deleted, StepError> {
        let this = Arc::clone(self);
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || {
            // Meta first: from that instant the file is no longer complete.
            if not_found_ok(fs::remove_file(this.path(Area::Meta, &user, &key)))? {
                not_found_ok(fs::remove_file(this.path(Area::Files, &user, &key)))?;
                return Ok(Deleted::File);
            }
            let id = (user.clone(), key.clone());
            let mut uploads = lock(&this.uploads);
            let known = uploads.remove(&id);
            if let Some(old) = &known {
                lock(old).phase = Phase::Discarded;
            }
            let dir = this.path(Area::Uploads, &user, &key);
            let on_disk = dir.exists();
            upload::remove_dir(&dir)?;
            if known.is_some() || on_disk {
                Ok(Deleted::UnfinishedUpload)
            } else {
                Err(StepError::NotFound(key))
            }
        })
        .await
    }
}

/// An unfinished upload that blocks can be written to.
#[derive(Debug)]
pub struct UploadHandle {
    store: Arc<Store>,
    user: String,
    key: String,
    slot: UploadSlot,
}

impl UploadHandle {
    /// UPLOAD, second half: check and write one block. Returns the file's md5
    /// when this block completed it. With `upload_id`, the block is refused
    /// unless it names the upload it would go into: checked under the same
    /// lock as the write, so blocks of two uploads of one key never mix.
    pub async fn put_block(
        self,
        index: i64,
        data: Bytes,
        upload_id: Option<String>,
    ) -> Result<Option<String>, StepError> {
        blocking(move || self.put_block_blocking(index, &data, upload_id.as_deref())).await
    }

    fn put_block_blocking(
        &self,
        index: i64,
        data: &Bytes,
        upload_id: Option<&str>,
    ) -> Result<Option<String>, StepError> {
        let mut up = lock(&self.slot);
        match &up.phase {
            Phase::Receiving => {}
            Phase::Complete => return Err(StepError::AlreadyComplete(self.key.clone())),
            Phase::Discarded => return Err(StepError::NotPlanned(self.key.clone())),
        }
        if upload_id.is_some_and(|want| want != up.id) {
            return Err(StepError::Superseded(self.key.clone()));
        }
        let index = up.check_block(index, data.len() as u64)?;
        if !up.write_block_shared(index, data)? {
            return Ok(None);
        }
        let md5 = up.finish_md5()?;
        up.sync_data()?;
        let meta = FileMeta {
            key: self.key.clone(),
            size: up.plan.size,
            md5: md5.clone(),
        };
        self.store
            .publish(&self.user, &self.key, &up.data_path(), &meta)?;
        upload::remove_dir(&up.dir)?;
        up.phase = Phase::Complete;
        // Lock order is registry, then slot: release the slot first.
        drop(up);
        let id = (self.user.clone(), self.key.clone());
        let mut uploads = lock(&self.store.uploads);
        if uploads.get(&id).is_some_and(|s| Arc::ptr_eq(s, &self.slot)) {
            uploads.remove(&id);
        }
        info!(user = %self.user, key = %self.key, size = meta.size, md5 = %md5, "file complete");
        Ok(Some(md5))
    }
}
