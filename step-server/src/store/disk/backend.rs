//! The disk as the lifecycle's backend (see `store/files/backend.rs`), and
//! the uploads it keeps open.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use step_core::plan::to_ranges;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use tracing::{info, warn};

use super::blocks::DiskUpload;
use super::publish::Sealed;
use super::upload::{self, Phase, Upload};
use super::{Disk, DiskHeld, Slot, UploadSlot, lock};
use crate::store::api::{
    FileMeta, ListPage, PlanRecord, Replace, StoreError, StoreResult, UnfinishedUpload,
};
use crate::store::files::listing::PageRule;
use crate::store::files::{
    Activity, Backend, Key, KeyId, Ledger, Received, Unfinished, version_id_ok,
};
use crate::store::limits::StoreLimits;

/// Unfinished uploads kept open at once. Each holds two file descriptors;
/// beyond this, uploads nobody is writing to are closed (their state is on
/// disk and reloads on the next block), so abandoned uploads cannot exhaust
/// the server's descriptors.
const MAX_OPEN_UPLOADS: usize = 1024;

/// Close uploads nobody is writing to when too many are open.
fn evict_idle(open: &mut HashMap<KeyId, UploadSlot>) {
    if open.len() >= MAX_OPEN_UPLOADS {
        // Handles are only made under this map's lock: a count of one means
        // no request holds the upload.
        open.retain(|_, slot| Arc::strong_count(slot) > 1);
    }
}

impl Disk {
    /// The unfinished upload under `key`: open, or reopened from disk.
    /// Under the key's lock.
    pub(super) fn upload_slot(&self, key: &Key) -> StoreResult<Option<UploadSlot>> {
        let id = &key.id;
        if let Some(slot) = lock(&self.open).get(id) {
            return Ok(Some(Arc::clone(slot)));
        }
        let dir = self.upload_dir(id);
        if !dir.join(upload::PLAN).exists() {
            // Gone from disk: forget it.
            self.ledger.remove(id);
            return Ok(None);
        }
        let activity = self
            .ledger
            .get(id)
            .unwrap_or_else(|| Activity::new(0, SystemTime::now()));
        match Upload::load(dir.clone(), activity) {
            Ok(up) => {
                info!(user = %key.user, key = %key.key, remaining = up.remaining(), "reloaded unfinished upload from disk");
                self.ledger
                    .found(id, up.plan.size, Arc::clone(&up.activity));
                let slot = Arc::new(Slot::new(up));
                let mut open = lock(&self.open);
                evict_idle(&mut open);
                open.insert(id.clone(), Arc::clone(&slot));
                Ok(Some(slot))
            }
            Err(e) => {
                warn!(user = %key.user, key = %key.key, error = %e, "discarding unreadable unfinished upload");
                self.ledger.remove(id);
                upload::remove_dir(&dir)?;
                Ok(None)
            }
        }
    }

    /// Bytes the server may still write on the store's file system;
    /// unknown counts as unlimited (the writes will tell).
    fn available_space(&self) -> u64 {
        match rustix::fs::statvfs(&self.root) {
            Ok(st) => st.f_bavail.saturating_mul(st.f_frsize),
            Err(_) => u64::MAX,
        }
    }

    /// Start a new upload under `key` (see [`Backend::create`]).
    fn create_upload(
        &self,
        key: &Key,
        plan: PlanRecord,
        replace: Option<Replace>,
    ) -> StoreResult<String> {
        let dir = self.upload_dir(&key.id);
        // What a directory without a plan left (no upload: nobody could
        // delete what it holds).
        upload::remove_dir(&dir)?;
        // Refuse up front what cannot fit, with a clear NoSpace, instead of
        // failing blocks later: the free space must hold what every
        // unfinished upload (this one's reservation included) was promised
        // and has not written yet (their data files are sparse).
        if self.ledger.promised() > self.available_space() {
            return Err(StoreError::NoSpace);
        }
        let activity = self
            .ledger
            .get(&key.id)
            .unwrap_or_else(|| Activity::new(0, SystemTime::now()));
        let up = match Upload::create(dir.clone(), plan, replace, activity) {
            Ok(up) => up,
            Err(e) => {
                let _ = upload::remove_dir(&dir);
                return Err(e.into());
            }
        };
        let upload_id = up.id.clone();
        let mut open = lock(&self.open);
        evict_idle(&mut open);
        open.insert(key.id.clone(), Arc::new(Slot::new(up)));
        Ok(upload_id)
    }
}

#[async_trait]
impl Backend for Disk {
    type Held = DiskHeld;
    type Sink = DiskUpload;
    type Sealed = Sealed;

    fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn key(&self, user: &str, key: &str) -> Key {
        Key {
            user: user.to_owned(),
            key: key.to_owned(),
            id: Disk::encoded(user, key),
        }
    }

    /// On a thread for blocking work: every call below blocks on the file
    /// system (and a key's lock is waited for there too). Tracked, so a
    /// test can wait for operations whose callers went away.
    async fn run<T: Send + 'static>(
        &self,
        op: BoxFuture<'static, StoreResult<T>>,
    ) -> StoreResult<T> {
        self.tasks
            .spawn_blocking(move || futures::executor::block_on(op))
            .await
            .map_err(|e| StoreError::Other(Box::new(e)))?
    }

    async fn current(&self, key: &Key) -> StoreResult<Option<FileMeta>> {
        self.read_meta(&key.id)
    }

    async fn kept_version(&self, key: &Key, id: &str) -> StoreResult<Option<FileMeta>> {
        if !version_id_ok(id) {
            return Ok(None);
        }
        let kept = self.version_dir(&key.id).join(format!("{id}.meta"));
        match std::fs::read(kept) {
            Ok(bytes) => Ok(Some(
                serde_json::from_slice(&bytes).map_err(super::json_err)?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn has_upload(&self, key: &Key) -> StoreResult<bool> {
        Ok(lock(&self.open).contains_key(&key.id)
            || self.upload_dir(&key.id).join(upload::PLAN).exists())
    }

    /// From the open upload, or from its files without opening them for
    /// writing; the ledger knows every unfinished upload (indexed at open).
    async fn status(&self, key: &Key) -> StoreResult<Option<UnfinishedUpload>> {
        let Some(activity) = self.ledger.get(&key.id) else {
            return Ok(None);
        };
        let last_active_unix = activity.last_ms.load(Ordering::Relaxed) / 1000;
        let slot = lock(&self.open).get(&key.id).cloned();
        let (plan, id, missing) = match slot {
            Some(slot) => {
                let up = lock(&slot.upload);
                if !matches!(up.phase, Phase::Receiving) {
                    return Ok(None);
                }
                (up.plan, Some(up.id.clone()), to_ranges(up.missing()))
            }
            // Closed: its files say (a SAVE or DELETE racing this read
            // leaves them whole or gone).
            None => match upload::peek(&self.upload_dir(&key.id)) {
                Ok(found) => found,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e.into()),
            },
        };
        let upload_id = match id {
            Some(id) => id,
            // From before ids: it gets one when opened, as for a block.
            None => {
                let held = Backend::lock(self, key).await?;
                match self.upload_slot(&held.key)? {
                    Some(slot) => slot.id.clone(),
                    None => return Ok(None),
                }
            }
        };
        Ok(Some(UnfinishedUpload {
            upload_id,
            plan,
            missing,
            last_active_unix,
        }))
    }

    async fn read(&self, user: &str, meta: &FileMeta, offset: u64, len: u64) -> StoreResult<Bytes> {
        self.read_range(user, meta, offset, len)
    }

    async fn list(&self, user: &str, rule: PageRule<'_>) -> StoreResult<ListPage> {
        self.list_files(user, rule)
    }

    async fn lock(&self, key: &Key) -> StoreResult<DiskHeld> {
        Ok(DiskHeld {
            key: key.clone(),
            _lock: self.locks.lock(key.id.clone()).await,
        })
    }

    async fn unfinished(&self, held: &mut DiskHeld) -> StoreResult<Option<Unfinished>> {
        let Some(slot) = self.upload_slot(&held.key)? else {
            return Ok(None);
        };
        let up = lock(&slot.upload);
        Ok(matches!(up.phase, Phase::Receiving).then(|| Unfinished {
            id: up.id.clone(),
            plan: up.plan,
            replace: up.replace.clone(),
            remaining: up.remaining(),
        }))
    }

    async fn missing(&self, held: &mut DiskHeld) -> StoreResult<Vec<[u64; 2]>> {
        let Some(slot) = self.upload_slot(&held.key)? else {
            return Ok(Vec::new());
        };
        let up = lock(&slot.upload);
        Ok(to_ranges(up.missing()))
    }

    async fn create(
        &self,
        held: &mut DiskHeld,
        plan: PlanRecord,
        replace: Option<Replace>,
    ) -> StoreResult<String> {
        self.create_upload(&held.key, plan, replace)
    }

    /// Blocks for it are refused from now on (a writer that opened it finds
    /// it discarded).
    async fn discard(&self, held: &mut DiskHeld, _id: &str) -> StoreResult<()> {
        let known = lock(&self.open).remove(&held.key.id);
        if let Some(slot) = known {
            let mut up = lock(&slot.upload);
            if matches!(up.phase, Phase::Receiving) {
                up.phase = Phase::Discarded;
            }
        }
        upload::remove_dir(&self.upload_dir(&held.key.id))?;
        Ok(())
    }

    async fn open(&self, key: &Key) -> StoreResult<Option<DiskUpload>> {
        if let Some(slot) = lock(&self.open).get(&key.id) {
            return Ok(Some(DiskUpload::new(Arc::clone(slot))));
        }
        // Reopened from disk under the key's lock, never beside a SAVE or
        // DELETE of it.
        let held = Backend::lock(self, key).await?;
        Ok(self.upload_slot(&held.key)?.map(DiskUpload::new))
    }

    async fn receive(
        &self,
        key: &Key,
        sink: &DiskUpload,
        index: u64,
        data: Bytes,
        named: Option<&str>,
    ) -> StoreResult<Received<DiskHeld>> {
        let held = Backend::lock(self, key).await?;
        if self.write_block(&held, sink, index, &data, named)? {
            Ok(Received::Full { held, last: None })
        } else {
            Ok(Received::Stored)
        }
    }

    async fn seal(
        &self,
        held: &mut DiskHeld,
        up: &Unfinished,
        _last: Option<(u64, Bytes)>,
    ) -> StoreResult<(String, Sealed)> {
        self.seal_upload(held, up)
    }

    async fn seal_empty(&self, _held: &mut DiskHeld) -> StoreResult<Sealed> {
        self.seal_nothing()
    }

    async fn publish(
        &self,
        held: &mut DiskHeld,
        sealed: Sealed,
        meta: &FileMeta,
        current: Option<&FileMeta>,
    ) -> StoreResult<()> {
        self.publish_sealed(held, sealed, meta, current)
    }

    async fn finish(&self, held: &mut DiskHeld, id: &str) -> StoreResult<()> {
        self.finish_upload(held, id)
    }

    async fn remove_file(&self, held: &mut DiskHeld) -> StoreResult<()> {
        self.remove_every_version(&held.key.id)
    }

    async fn drop_version(
        &self,
        held: &mut DiskHeld,
        id: &str,
        current: Option<&FileMeta>,
    ) -> StoreResult<()> {
        self.remove_version(&held.key, id, current)
    }
}
