//! The upload lifecycle, written once: the rules of FILE SAVE, UPLOAD,
//! completion, replace and versions, DELETE, expiry and listing, over the
//! thin [`Backend`] each store implements (the disk in `disk/`, any object
//! store in `object/`). A store is a [`FileStore`] over its backend, plus
//! its own [`Records`](crate::store::Records) and
//! [`Accounts`](crate::store::Accounts).
//!
//! Where each rule lives: `save.rs` (SAVE: check, resume, start over,
//! empty files, caps), `complete.rs` (completion: the replace condition,
//! the switch, versions retired), `remove.rs` (DELETE, scoped and
//! conditional), `versions.rs` and `retired.rs` (replaced versions: reading
//! them by id, sweeping them after the grace), `sweep.rs` (idle uploads),
//! `writer.rs` (UPLOAD's blocks), `ledger.rs` (the accounts of unfinished
//! uploads), `listing.rs` (the rules of a listing page), `backend.rs` (what
//! a store provides).
//!
//! Every operation runs whole inside [`Backend::run`] (the disk's calls
//! block, so it runs there on a thread for blocking work) and takes the
//! key's lock with [`Backend::lock`] before it looks at the key, so what
//! it decides still holds when it acts.

mod backend;
mod complete;
mod expected;
mod ledger;
pub mod listing;
mod remove;
mod retired;
mod save;
mod sweep;
mod versions;
mod writer;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

pub use backend::{Backend, Key, Received, Sink, Unfinished};
pub use ledger::{Activity, KeyId, Ledger, Writing, unix_ms};
pub use retired::version_id_ok;

use super::api::{
    Deleted, FileMeta, Files, ListPage, PlanOutcome, PlanRecord, Replace, StoreError, StoreResult,
    UnfinishedStats, UnfinishedUpload, Upkeep, UploadWriter,
};
use expected::Expected;
use listing::PageRule;
use retired::Retired;

/// What a SAVE asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveRequest {
    pub plan: PlanRecord,
    /// Continue the unfinished upload with this id, when it is the key's
    /// current one with the same plan (and condition), rather than start
    /// over: only a writer that knows an upload's id may continue it.
    pub resume: Option<String>,
    /// Replace the key's complete file at completion (SAVE `replace`).
    pub replace: Option<Replace>,
}

/// A store: the lifecycle over backend `B`. Cheap to clone.
pub struct FileStore<B> {
    backend: Arc<B>,
    retired: Arc<Retired>,
    /// Expected md5s sent before an upload's last block.
    expected: Arc<Expected>,
}

impl<B> Clone for FileStore<B> {
    fn clone(&self) -> Self {
        FileStore {
            backend: Arc::clone(&self.backend),
            retired: Arc::clone(&self.retired),
            expected: Arc::clone(&self.expected),
        }
    }
}

impl<B: std::fmt::Debug> std::fmt::Debug for FileStore<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("FileStore").field(&self.backend).finish()
    }
}

/// A block or completion for an upload that is no longer the key's
/// current one: superseded when the client named the one it meant.
fn not_current(named: bool) -> StoreError {
    if named {
        StoreError::Superseded
    } else {
        StoreError::NotPlanned
    }
}

impl<B: Backend> FileStore<B> {
    pub fn with_backend(backend: B) -> Self {
        FileStore {
            backend: Arc::new(backend),
            retired: Arc::default(),
            expected: Arc::default(),
        }
    }

    pub fn backend(&self) -> &Arc<B> {
        &self.backend
    }

    /// `op` on this store, where the backend's calls may be made.
    async fn run<T, F>(&self, op: impl FnOnce(Self) -> F + Send) -> StoreResult<T>
    where
        T: Send + 'static,
        F: Future<Output = StoreResult<T>> + Send + 'static,
    {
        self.backend.run(Box::pin(op(self.clone()))).await
    }

    async fn head_here(&self, key: Key) -> StoreResult<FileMeta> {
        match self.backend.current(&key).await? {
            Some(meta) => Ok(meta),
            None if self.backend.has_upload(&key).await? => Err(StoreError::Unfinished),
            None => Err(StoreError::NotFound),
        }
    }
}

#[async_trait]
impl<B: Backend> Files for FileStore<B> {
    async fn plan_upload(
        &self,
        user: &str,
        key: &str,
        plan: PlanRecord,
        resume: Option<&str>,
    ) -> StoreResult<PlanOutcome> {
        let req = SaveRequest {
            plan,
            resume: resume.map(str::to_owned),
            replace: None,
        };
        let key = self.backend.key(user, key);
        self.run(|s| async move { s.save(key, req).await }).await
    }

    async fn plan_replace(
        &self,
        user: &str,
        key: &str,
        plan: PlanRecord,
        resume: Option<&str>,
        replace: Replace,
    ) -> StoreResult<PlanOutcome> {
        let req = SaveRequest {
            plan,
            resume: resume.map(str::to_owned),
            replace: Some(replace),
        };
        let key = self.backend.key(user, key);
        self.run(|s| async move { s.save(key, req).await }).await
    }

    async fn open_upload(&self, user: &str, key: &str) -> StoreResult<Box<dyn UploadWriter>> {
        let key = self.backend.key(user, key);
        let writer = self
            .run(|s| async move { s.open_writer(key).await })
            .await?;
        Ok(Box::new(writer))
    }

    async fn head(&self, user: &str, key: &str) -> StoreResult<FileMeta> {
        let key = self.backend.key(user, key);
        self.run(|s| async move { s.head_here(key).await }).await
    }

    async fn head_version(&self, user: &str, key: &str, upload_id: &str) -> StoreResult<FileMeta> {
        let key = self.backend.key(user, key);
        let id = upload_id.to_owned();
        self.run(|s| async move { s.version(key, &id).await }).await
    }

    async fn upload_status(&self, user: &str, key: &str) -> StoreResult<UnfinishedUpload> {
        let key = self.backend.key(user, key);
        self.run(|s| async move { s.backend.status(&key).await?.ok_or(StoreError::NotFound) })
            .await
    }

    async fn read(&self, user: &str, meta: &FileMeta, offset: u64, len: u64) -> StoreResult<Bytes> {
        let (user, meta) = (user.to_owned(), meta.clone());
        self.run(|s| async move { s.backend.read(&user, &meta, offset, len).await })
            .await
    }

    async fn delete_file(
        &self,
        user: &str,
        key: &str,
        upload_id: Option<&str>,
    ) -> StoreResult<Deleted> {
        let key = self.backend.key(user, key);
        let id = upload_id.map(str::to_owned);
        self.run(|s| async move { s.delete(key, id.as_deref()).await })
            .await
    }

    async fn delete_file_if(&self, user: &str, key: &str, if_md5: &str) -> StoreResult<Deleted> {
        let key = self.backend.key(user, key);
        let md5 = if_md5.to_owned();
        self.run(|s| async move { s.delete_if(key, &md5).await })
            .await
    }

    async fn list_files(
        &self,
        user: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> StoreResult<ListPage> {
        let (user, prefix) = (user.to_owned(), prefix.to_owned());
        let after = after.map(str::to_owned);
        self.run(|s| async move {
            let rule = PageRule {
                prefix: &prefix,
                after: after.as_deref(),
                limit,
            };
            s.backend.list(&user, rule).await
        })
        .await
    }
}

#[async_trait]
impl<B: Backend> Upkeep for FileStore<B> {
    async fn ready(&self) -> StoreResult<()> {
        self.run(|s| async move { s.backend.ready().await }).await
    }

    fn unfinished_stats(&self) -> UnfinishedStats {
        self.backend.ledger().stats()
    }

    async fn sweep_expired(&self, now: SystemTime) -> StoreResult<usize> {
        self.run(move |s| async move { s.sweep(now).await }).await
    }
}
