//! The bucket as the lifecycle's backend (see `store/files/backend.rs`):
//! what each of the lifecycle's calls does in the bucket.

use std::collections::BTreeSet;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::future::BoxFuture;
use object_store::ObjectStoreExt;
use step_core::plan::total_blocks;
use tracing::{info, warn};

use super::assembly::PART_MIN;
use super::blocks::ObjectUpload;
use super::io::{other, store_err};
use super::names::{lease_name, names};
use super::{Bucket, HeldKey, Upload, UploadState};
use crate::store::api::{
    FileMeta, ListPage, PlanRecord, Replace, StoreError, StoreResult, UnfinishedUpload, unix_now,
};
use crate::store::files::listing::PageRule;
use crate::store::files::{Backend, Key, Ledger, Received, Unfinished};
use crate::store::limits::StoreLimits;

impl HeldKey {
    /// Mark a change under way (see [`HeldKey::changing`]); `result` ends it.
    fn settle<T>(&mut self, result: StoreResult<T>) -> StoreResult<T> {
        self.changing = result.is_err();
        result
    }
}

#[async_trait]
impl Backend for Bucket {
    type Held = HeldKey;
    type Sink = ObjectUpload;
    /// The content and its sums are in the bucket already.
    type Sealed = ();

    fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn key(&self, user: &str, key: &str) -> Key {
        names(user, key)
    }

    async fn run<T: Send + 'static>(
        &self,
        op: BoxFuture<'static, StoreResult<T>>,
    ) -> StoreResult<T> {
        op.await
    }

    async fn current(&self, key: &Key) -> StoreResult<Option<FileMeta>> {
        self.current_meta(key).await
    }

    async fn kept_version(&self, key: &Key, id: &str) -> StoreResult<Option<FileMeta>> {
        self.get_json(&self.retired_meta_path(key, id)).await
    }

    /// An upload's state tells it apart from nothing (one HEAD, no lock).
    async fn has_upload(&self, key: &Key) -> StoreResult<bool> {
        self.exists(&self.state_path(key)).await
    }

    async fn status(&self, key: &Key) -> StoreResult<Option<UnfinishedUpload>> {
        match self.upload_status(key).await {
            Ok(status) => Ok(Some(status)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn read(&self, user: &str, meta: &FileMeta, offset: u64, len: u64) -> StoreResult<Bytes> {
        self.read_range(user, meta, offset, len).await
    }

    async fn list(&self, user: &str, rule: PageRule<'_>) -> StoreResult<ListPage> {
        self.list_files(user, rule).await
    }

    /// One HEAD in the bucket (a missing object is an answer) and, with a
    /// coordinator, one PING.
    async fn ready(&self) -> StoreResult<()> {
        self.exists(&self.path(&["ready"])).await?;
        if let Some(coord) = &self.coord {
            coord.ping().await?;
            // Not ready while the bucket is being upgraded.
            self.ensure_layout().await?;
        }
        Ok(())
    }

    async fn lock(&self, key: &Key) -> StoreResult<HeldKey> {
        self.ensure_scanned().await?;
        let state = self.lock_key(key).await?;
        Ok(HeldKey::new(key, state))
    }

    async fn fence(&self, held: &HeldKey) -> StoreResult<()> {
        self.check_lease(&held.state).await
    }

    async fn unfinished(&self, held: &mut HeldKey) -> StoreResult<Option<Unfinished>> {
        self.load(&held.names, &mut held.state).await?;
        Ok(held.state.upload.as_ref().map(|up| Unfinished {
            id: up.id.clone(),
            plan: up.plan,
            replace: up.replace.clone(),
            remaining: up.remaining,
        }))
    }

    async fn missing(&self, held: &mut HeldKey) -> StoreResult<Vec<[u64; 2]>> {
        Ok(held
            .state
            .upload
            .as_ref()
            .map(Upload::missing)
            .unwrap_or_default())
    }

    async fn create(
        &self,
        held: &mut HeldKey,
        plan: PlanRecord,
        replace: Option<Replace>,
    ) -> StoreResult<String> {
        held.changing = true;
        let created = self.create_upload(held, plan, replace).await;
        held.settle(created)
    }

    async fn discard(&self, held: &mut HeldKey, id: &str) -> StoreResult<()> {
        held.changing = true;
        // Dropped: its assembler (and multipart upload) go too.
        held.state.upload = None;
        let discarded = self
            .discard_unfinished(&held.names, held.state.lease.as_deref(), id)
            .await;
        held.settle(discarded)
    }

    async fn open(&self, key: &Key) -> StoreResult<Option<ObjectUpload>> {
        self.open_sink(key).await
    }

    async fn receive(
        &self,
        _key: &Key,
        sink: &ObjectUpload,
        index: u64,
        data: Bytes,
        named: Option<&str>,
    ) -> StoreResult<Received<HeldKey>> {
        self.receive_block(sink, index, data, named).await
    }

    async fn seal(
        &self,
        held: &mut HeldKey,
        up: &Unfinished,
        last: Option<(u64, Bytes)>,
    ) -> StoreResult<(String, ())> {
        held.changing = true;
        let HeldKey { names, state, .. } = &mut *held;
        let sealed = match state.upload.as_mut().filter(|u| u.id == up.id) {
            Some(upload) => self.seal_upload(names, upload, last).await,
            None => Err(other("the upload to complete is gone")),
        };
        held.settle(sealed.map(|md5| (md5, ())))
    }

    /// An empty file has no content object.
    async fn seal_empty(&self, _held: &mut HeldKey) -> StoreResult<()> {
        Ok(())
    }

    async fn publish(
        &self,
        held: &mut HeldKey,
        (): (),
        meta: &FileMeta,
        current: Option<&FileMeta>,
    ) -> StoreResult<()> {
        held.changing = true;
        let published = match &self.coord {
            Some(_) => match self.publish_fenced(held, current, meta).await {
                Ok(()) => {
                    self.remove_replaced(&held.names, current, meta).await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            None => self.swap_meta(&held.names, current, meta).await,
        };
        held.settle(published)
    }

    async fn finish(&self, held: &mut HeldKey, id: &str) -> StoreResult<()> {
        held.state.upload = None;
        if let Err(e) = self
            .discard(&held.names, held.state.lease.as_deref(), id)
            .await
        {
            // The file is complete; leftovers go when the key is next loaded.
            warn!(user = %held.names.user, key = %held.names.key, error = %e, "cannot remove a completed upload's blocks");
        }
        Ok(())
    }

    async fn remove_file(&self, held: &mut HeldKey) -> StoreResult<()> {
        held.changing = true;
        if let Some(coord) = &self.coord {
            let removed = self.remove_fenced(coord.as_ref(), held).await;
            return held.settle(removed);
        }
        let n = &held.names;
        // Meta first: from that instant the file is no longer complete.
        let removed = match self.store.delete(&self.meta_path(n)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                // Every version's content, and any a crashed completion left.
                self.delete_dir(&self.content_dir(n)).await
            }
            Err(e) => Err(store_err(e)),
        };
        held.settle(removed)
    }

    async fn unseal(&self, held: &mut HeldKey, id: &str) -> StoreResult<()> {
        let n = &held.names;
        self.delete_paths(vec![self.content_path(n, id), self.sums_path(n, id)])
            .await
    }

    async fn drop_version(
        &self,
        held: &mut HeldKey,
        id: &str,
        _current: Option<&FileMeta>,
    ) -> StoreResult<()> {
        let n = &held.names;
        self.delete_paths(vec![
            self.retired_meta_path(n, id),
            self.version_meta_path(&n.id.0, &n.id.1, id),
            self.content_path(n, id),
            self.sums_path(n, id),
        ])
        .await
    }

    async fn scan(&self) -> StoreResult<()> {
        self.ensure_scanned().await
    }

    /// Blocks of uploads that are no longer current (superseded, deleted
    /// while a block was in flight) once they are as old as the expiry.
    async fn sweep_leftovers(&self, cutoff_ms: u64) -> StoreResult<()> {
        let mut orphans = Vec::new();
        for (_, k) in self.scan_up().await? {
            let current = match &k.state {
                Some((p, _)) => self.get_json::<UploadState>(p).await?.map(|s| s.upload_id),
                None => None,
            };
            for (upload_id, (paths, _, last)) in k.blocks {
                if Some(&upload_id) != current.as_ref() && last < cutoff_ms {
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
        // Before the layout is current, a legacy file's content would look
        // like an object nobody points at.
        if let Some(coord) = &self.coord
            && self.layout.initialized()
            && self.orphan_sweep_due()
        {
            self.sweep_uncommitted(coord.as_ref(), cutoff_ms).await?;
        }
        Ok(())
    }
}

impl Bucket {
    /// A new upload's state in the bucket (from then on its blocks are
    /// taken), and in memory.
    async fn create_upload(
        &self,
        held: &mut HeldKey,
        plan: PlanRecord,
        replace: Option<Replace>,
    ) -> StoreResult<String> {
        let n = &held.names;
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
        self.put_json(&self.state_path(n), &state).await?;
        if self.coord.is_some() {
            // From here blocks of the new upload are taken by any instance;
            // a SAVE that lost its lease stops here, unacknowledged.
            held.state
                .lease
                .as_deref()
                .ok_or_else(|| other("a commit point outside the key's lease"))?
                .set_current(&lease_name(n), Some(&state.upload_id))
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
        held.state.upload = Some(Upload {
            id: state.upload_id.clone(),
            plan,
            received: vec![false; slots],
            remaining: total,
            assembler_tried: assembler.is_some() || plan.size <= PART_MIN || self.coord.is_some(),
            assembler,
            held: self.small_held(plan),
            replace,
        });
        Ok(state.upload_id)
    }

    /// Make `meta` the key's complete file in one step (one PUT of the meta
    /// object). When it replaces `current`, that version's meta is kept
    /// beside its content first, so downloads under way can still read it
    /// by its id until the grace period ends; versions replaced before it
    /// go now.
    async fn swap_meta(
        &self,
        n: &Key,
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
        self.remove_replaced(n, current, meta).await;
        Ok(())
    }

    /// After `meta` replaced `current`: the versions replaced before it go
    /// (everything in the key's content directory but the new version and
    /// the one just replaced). What cannot be removed now goes at the next
    /// replace or DELETE.
    async fn remove_replaced(&self, n: &Key, current: Option<&FileMeta>, meta: &FileMeta) {
        let Some(current) = current else {
            return;
        };
        let old = current.upload_id.as_deref();
        let keep: Vec<&str> = [meta.upload_id.as_deref(), old]
            .into_iter()
            .flatten()
            .collect();
        let mut stale = Vec::new();
        let mut list = self.store.list(Some(&self.content_dir(n)));
        while let Some(m) = list.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    warn!(user = %n.user, key = %n.key, error = %e, "cannot list replaced versions yet");
                    return;
                }
            };
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
    }
}
