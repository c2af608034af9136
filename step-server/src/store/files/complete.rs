//! Completion: an upload whose blocks are all in becomes the key's file,
//! under the key's lock, in this order:
//!
//! 1. A key whose file already is this upload (completed by another
//!    block's answer, or cut short after the switch) only loses the
//!    upload's leftovers.
//! 2. The upload must still be the key's current one.
//! 3. A replacement's condition (`if_md5`) is checked against the key's
//!    file now: one that no longer holds never will, and the upload goes.
//! 4. The backend seals the content (in place under its own name, md5
//!    known). If its writer sent the md5 it expects and the content does
//!    not have it, the upload goes and the key keeps what it held: bytes
//!    damaged on the way never replace a good file. Otherwise the key's
//!    meta switches to it — the one step that changes what readers get.
//!    The version it replaced stays readable by its id for the grace
//!    period.
//! 5. The upload's accounts and state go.

use bytes::Bytes;
use tracing::info;

use super::{Backend, FileStore, Key, not_current};
use crate::store::api::{FileMeta, StoreError, StoreResult, unix_now};

/// What the block that completes an upload brings to its completion.
#[derive(Debug, Default)]
pub(super) struct Done {
    /// The client named the upload (`upload_id`).
    pub named: bool,
    /// The last block, when the backend seals with it.
    pub last: Option<(u64, Bytes)>,
    /// The file's md5 as its writer sent it with the block.
    pub md5: Option<String>,
}

/// What a completion found.
#[derive(Debug)]
pub(super) enum Completed {
    /// Completed now, with this md5: the one answer that carries it.
    Now(String),
    /// The key's file was this upload already.
    Already(String),
    /// The upload still misses blocks.
    NotFull,
}

impl<B: Backend> FileStore<B> {
    /// Complete upload `upload_id` of `key`.
    pub(super) async fn complete(
        &self,
        key: &Key,
        held: &mut B::Held,
        upload_id: &str,
        done: Done,
    ) -> StoreResult<Completed> {
        let Done { named, last, md5 } = done;
        let b = &*self.backend;
        let up = b.unfinished(held).await?;
        let current = b.current(key).await?;
        if let Some(meta) = current
            .as_ref()
            .filter(|m| m.upload_id.as_deref() == Some(upload_id))
        {
            if up.as_ref().is_some_and(|up| up.id == upload_id) {
                b.finish(held, upload_id).await?;
                b.ledger().remove(&key.id);
            }
            return Ok(Completed::Already(meta.md5.clone()));
        }
        let Some(up) = up.filter(|up| up.id == upload_id) else {
            return Err(not_current(named));
        };
        if up.remaining > 0 {
            return Ok(Completed::NotFull);
        }
        if let Some(Err(e)) = up.replace.as_ref().map(|r| r.check(current.as_ref())) {
            b.fence(held).await?;
            b.discard(held, &up.id).await?;
            b.ledger().remove(&key.id);
            info!(user = %key.user, key = %key.key, "replacement refused at completion: its condition no longer holds");
            return Err(e);
        }
        let expected = md5.or_else(|| self.expected.take(&up.id));
        let (md5, sealed) = b.seal(held, &up, last).await?;
        if let Some(want) = expected.filter(|want| !want.eq_ignore_ascii_case(&md5)) {
            drop(sealed);
            b.fence(held).await?;
            b.discard(held, &up.id).await?;
            b.unseal(held, &up.id).await?;
            b.ledger().remove(&key.id);
            info!(user = %key.user, key = %key.key, %md5, expected = %want, "upload refused at completion: not the md5 its writer sent");
            return Err(StoreError::Md5Mismatch);
        }
        let meta = FileMeta {
            key: key.key.clone(),
            size: up.plan.size,
            md5: md5.clone(),
            upload_id: Some(up.id.clone()),
            completed_unix: unix_now(),
        };
        self.switch(key, held, sealed, &meta, current.as_ref())
            .await?;
        b.ledger().remove(&key.id);
        b.finish(held, &up.id).await?;
        info!(user = %key.user, key = %key.key, size = meta.size, md5 = %md5, "file complete");
        Ok(Completed::Now(md5))
    }

    /// Make `meta` the key's file in place of `current` (step 4 above).
    pub(super) async fn switch(
        &self,
        key: &Key,
        held: &mut B::Held,
        sealed: B::Sealed,
        meta: &FileMeta,
        current: Option<&FileMeta>,
    ) -> StoreResult<()> {
        self.backend.fence(held).await?;
        self.backend.publish(held, sealed, meta, current).await?;
        if let Some(old) = current
            .and_then(|c| c.upload_id.as_deref())
            .filter(|old| Some(*old) != meta.upload_id.as_deref())
        {
            self.retired.push(key, old);
            info!(user = %key.user, key = %key.key, "file replaced");
        }
        Ok(())
    }
}
