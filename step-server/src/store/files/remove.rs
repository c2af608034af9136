//! FILE DELETE, under the key's lock: the complete file (every version)
//! if there is one, else the unfinished upload. Scoped to an upload id, it
//! takes only that upload or the file it completed; conditional on an md5,
//! only the file with that md5 — decided under the same lock as a
//! replacement's completion, so a newer version is never deleted.

use super::{Backend, FileStore, Key};
use crate::store::api::{Deleted, StoreError, StoreResult};

impl<B: Backend> FileStore<B> {
    pub(super) async fn delete(&self, key: Key, scope: Option<&str>) -> StoreResult<Deleted> {
        let b = &*self.backend;
        let mut held = b.lock(&key).await?;
        let up = b.unfinished(&mut held).await?;
        if let Some(meta) = b.current(&key).await? {
            if scope.is_some_and(|want| meta.upload_id.as_deref() != Some(want)) {
                return Err(StoreError::OtherUpload);
            }
            b.fence(&held).await?;
            b.remove_file(&mut held).await?;
            return Ok(Deleted::File);
        }
        let Some(up) = up else {
            return Err(StoreError::NotFound);
        };
        if scope.is_some_and(|want| want != up.id) {
            return Err(StoreError::OtherUpload);
        }
        b.fence(&held).await?;
        b.discard(&mut held, &up.id).await?;
        b.ledger().remove(&key.id);
        Ok(Deleted::UnfinishedUpload)
    }

    /// DELETE `if_md5`: an unfinished upload under the key is left alone.
    pub(super) async fn delete_if(&self, key: Key, if_md5: &str) -> StoreResult<Deleted> {
        let b = &*self.backend;
        let mut held = b.lock(&key).await?;
        b.unfinished(&mut held).await?;
        let Some(meta) = b.current(&key).await? else {
            return Err(StoreError::NotFound);
        };
        if !meta.md5.eq_ignore_ascii_case(if_md5) {
            return Err(StoreError::Precondition);
        }
        b.fence(&held).await?;
        b.remove_file(&mut held).await?;
        Ok(Deleted::File)
    }
}
