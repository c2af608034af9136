//! Replaced versions. A replace keeps the version it replaced readable by
//! its id (a download that began with it finishes with its bytes) for
//! [`StoreLimits::replaced_grace`](crate::store::StoreLimits), or until the
//! key is replaced again or deleted. Those this process replaced are
//! remembered here and removed by the sweep once their grace is over; the
//! backends remove older ones at the next replace (and the disk, at start).

use std::time::SystemTime;

use super::retired::version_id_ok;
use super::{Backend, FileStore, Key, unix_ms};
use crate::store::api::{FileMeta, StoreError, StoreResult};

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
