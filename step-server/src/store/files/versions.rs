//! Replaced versions. A replace keeps the version it replaced readable by
//! its id (a download that began with it finishes with its bytes) for
//! [`StoreLimits::replaced_grace`](crate::store::StoreLimits), or until the
//! key is replaced again or deleted. Those this process replaced are
//! remembered here and removed by the sweep once their grace is over; the
//! backends remove older ones at the next replace (and the disk, at start).

use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::{Backend, FileStore, Key, unix_ms};
use crate::store::api::{FileMeta, StoreError, StoreResult};

/// Version ids are ours (hex); anything else a client sends names nothing.
pub fn version_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Versions replaced by this process, with when (ms).
#[derive(Debug, Default)]
pub(super) struct Retired(Mutex<Vec<(Key, String, u64)>>);

impl Retired {
    fn list(&self) -> MutexGuard<'_, Vec<(Key, String, u64)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn push(&self, key: &Key, id: &str) {
        self.list()
            .push((key.clone(), id.to_owned(), unix_ms(SystemTime::now())));
    }

    /// Take those retired at `cutoff_ms` or before.
    fn due(&self, cutoff_ms: u64) -> Vec<(Key, String)> {
        let mut list = self.list();
        let (due, keep) = list.drain(..).partition(|r| r.2 <= cutoff_ms);
        *list = keep;
        due.into_iter().map(|(k, id, _)| (k, id)).collect()
    }
}

impl<B: Backend> FileStore<B> {
    /// Version `id` of `key`: the current file's meta, or a replaced one
    /// still kept.
    pub(super) async fn version(&self, key: Key, id: &str) -> StoreResult<FileMeta> {
        let current = self.backend.current(&key).await?;
        if let Some(meta) = current
            .as_ref()
            .filter(|m| m.upload_id.as_deref() == Some(id))
        {
            return Ok(meta.clone());
        }
        if version_id_ok(id)
            && let Some(meta) = self.backend.kept_version(&key, id).await?
        {
            return Ok(meta);
        }
        Err(if current.is_some() {
            StoreError::Replaced
        } else {
            StoreError::NotFound
        })
    }

    /// Remove the versions replaced more than the grace period before
    /// `now` (unless one became current again, which fresh ids never do,
    /// but costs nothing to check).
    pub(super) async fn sweep_retired(&self, now: SystemTime) -> StoreResult<()> {
        let b = &*self.backend;
        let grace = u64::try_from(b.limits().replaced_grace.as_millis()).unwrap_or(u64::MAX);
        for (key, old) in self.retired.due(unix_ms(now).saturating_sub(grace)) {
            let mut held = b.lock(&key).await?;
            let current = b.current(&key).await?;
            if current.as_ref().and_then(|m| m.upload_id.as_deref()) == Some(old.as_str()) {
                continue;
            }
            b.drop_version(&mut held, &old, current.as_ref()).await?;
        }
        Ok(())
    }
}
