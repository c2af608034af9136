//! Fenced commits, coordinated (`--coord`): what a DATA record or a file
//! is lives in objects that are never overwritten, each under a name of its
//! own (`recv/<user>/<key>/<version>`, `file/<user>/<key>/<upload_id>.v`),
//! and the coordinator holds the pointer to the current one. The pointer
//! moves only by [`Lease::swap`]: in one step with checking that the key's
//! lease is still ours and the pointer is still what we read. An instance
//! that stalled past its lease with a write in flight (a paused process, a
//! slow network) may still land that write, but under a name nobody points
//! at: it fails at the swap (the client gets "unavailable", never an
//! acknowledgement), and what a later holder committed stays. Such
//! leftovers are removed by the sweep once older than the upload expiry,
//! so a live holder's write (pointed at within seconds) is never taken;
//! finding them LISTs every record and file, so it is done every quarter
//! of the expiry rather than at every sweep.
//!
//! Readers resolve through the pointer: one coordinator read before the
//! object's GET (a listing reads a page's pointers in one request).
//! `meta/<user>/<key>` stays as an empty index entry for listings, written
//! with a key's first version (before its swap); an entry whose pointer is
//! unset is no file.

use std::collections::HashMap;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde_json::{Map, Value};
use tracing::{info, warn};

use super::coord::{Coord, Lease};
use super::io::{lock, other, store_err};
use super::names::{file_pointer, lease_name, record_lease_name, record_pointer};
use super::{Bucket, HeldKey};
use crate::store::api::{FileMeta, StoreError, StoreResult};
use crate::store::files::Key;

/// Objects by key (user and key segments), then by version: their paths
/// and newest change (ms).
type ByKey = HashMap<(String, String), HashMap<String, (Vec<Path>, u64)>>;

/// Suffix of a version's own meta object in its key's content directory.
pub(super) const VERSION_META: &str = "v";

impl Bucket {
    fn rec_version_path(&self, n: &Key, version: &str) -> Path {
        self.path(&["recv", &n.id.0, &n.id.1, version])
    }

    /// Version `upload_id`'s meta as committed (coordinated).
    pub(super) fn version_meta_path(&self, us: &str, ks: &str, upload_id: &str) -> Path {
        self.path(&["file", us, ks, &format!("{upload_id}.{VERSION_META}")])
    }

    /// The key's complete file: its meta object alone, or coordinated the
    /// version its pointer names.
    pub(super) async fn current_meta(&self, n: &Key) -> StoreResult<Option<FileMeta>> {
        let Some(coord) = &self.coord else {
            return self.get_json(&self.meta_path(n)).await;
        };
        self.ensure_layout().await?;
        match coord.pointer(&lease_name(n)).await? {
            Some(id) => {
                self.get_json(&self.version_meta_path(&n.id.0, &n.id.1, &id))
                    .await
            }
            None => Ok(None),
        }
    }

    /// Whether the key has a complete file (one HEAD, or coordinated one
    /// pointer read).
    pub(super) async fn is_complete(&self, n: &Key) -> StoreResult<bool> {
        match &self.coord {
            Some(coord) => {
                self.ensure_layout().await?;
                Ok(coord.pointer(&lease_name(n)).await?.is_some())
            }
            None => self.exists(&self.meta_path(n)).await,
        }
    }

    fn held_lease<'a>(&self, held: &'a HeldKey) -> StoreResult<&'a dyn Lease> {
        held.state
            .lease
            .as_deref()
            .ok_or_else(|| other("a commit point outside the key's lease"))
    }

    /// Coordinated publish: `meta`'s own object (and the replaced version's
    /// kept meta, and a first version's index entry) written, then the
    /// pointer moved from `current` to it under the lease.
    pub(super) async fn publish_fenced(
        &self,
        held: &HeldKey,
        current: Option<&FileMeta>,
        meta: &FileMeta,
    ) -> StoreResult<()> {
        let n = &held.names;
        let lease = self.held_lease(held)?;
        let new = meta
            .upload_id
            .as_deref()
            .ok_or_else(|| other("a version without an id"))?;
        let old = current.and_then(|c| c.upload_id.as_deref());
        let retire = async {
            match (current, old.filter(|o| *o != new)) {
                (Some(c), Some(old)) => self.put_json(&self.retired_meta_path(n, old), c).await,
                _ => Ok(()),
            }
        };
        let index = async {
            if current.is_some() {
                return Ok(());
            }
            self.store
                .put(&self.meta_path(n), PutPayload::default())
                .await
                .map(drop)
                .map_err(store_err)
        };
        let own_path = self.version_meta_path(&n.id.0, &n.id.1, new);
        let (own, retired, indexed) = futures::join!(self.put_json(&own_path, meta), retire, index);
        own?;
        retired?;
        indexed?;
        lease.swap(&lease_name(n), old, Some(new)).await
    }

    /// Coordinated: the key's file is no more (pointer unset under the
    /// lease), then its index entry and every version's objects go.
    pub(super) async fn remove_fenced(&self, coord: &dyn Coord, held: &HeldKey) -> StoreResult<()> {
        let n = &held.names;
        let lease = self.held_lease(held)?;
        let name = lease_name(n);
        match coord.pointer(&name).await? {
            Some(id) => lease.swap(&name, Some(&id), None).await?,
            None => lease.check().await?,
        }
        match self.store.delete(&self.meta_path(n)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_err(e)),
        }
        self.delete_dir(&self.content_dir(n)).await
    }

    // -------------------------------------------------------------- records

    pub(super) async fn record_create_fenced(
        &self,
        coord: &dyn Coord,
        lease: &dyn Lease,
        n: &Key,
        record: &Map<String, Value>,
    ) -> StoreResult<()> {
        self.ensure_layout().await?;
        let name = record_lease_name(n);
        if coord.pointer(&name).await?.is_some() {
            return Err(StoreError::Exists);
        }
        let version = uuid::Uuid::new_v4().simple().to_string();
        self.put_json(&self.rec_version_path(n, &version), record)
            .await?;
        lease.swap(&name, None, Some(&version)).await
    }

    pub(super) async fn record_get_fenced(
        &self,
        coord: &dyn Coord,
        n: &Key,
    ) -> StoreResult<Option<Map<String, Value>>> {
        self.ensure_layout().await?;
        match coord.pointer(&record_lease_name(n)).await? {
            Some(v) => self.get_json(&self.rec_version_path(n, &v)).await,
            None => Ok(None),
        }
    }

    pub(super) async fn record_delete_fenced(
        &self,
        coord: &dyn Coord,
        lease: &dyn Lease,
        n: &Key,
    ) -> StoreResult<()> {
        self.ensure_layout().await?;
        let name = record_lease_name(n);
        let Some(version) = coord.pointer(&name).await? else {
            return Err(StoreError::NotFound);
        };
        lease.swap(&name, Some(&version), None).await?;
        let path = self.rec_version_path(n, &version);
        if let Err(e) = self.store.delete(&path).await {
            // Nobody points at it any more: the sweep takes it.
            warn!(%path, error = %e, "cannot remove a deleted record's object yet");
        }
        Ok(())
    }

    // -------------------------------------------------------------- listing

    /// Coordinated listing: the current versions' metas of a page of index
    /// entries (`meta/<user>/<key>`), their pointers read in one request.
    pub(super) async fn listed_versions(
        &self,
        coord: &dyn Coord,
        us: &str,
        index: Vec<Path>,
    ) -> StoreResult<Vec<Path>> {
        self.ensure_layout().await?;
        let segs: Vec<String> = index
            .iter()
            .filter_map(|p| p.filename().map(str::to_owned))
            .collect();
        let names: Vec<String> = segs.iter().map(|ks| file_pointer(us, ks)).collect();
        let ids = coord.pointers(&names).await?;
        Ok(segs
            .iter()
            .zip(ids)
            .filter_map(|(ks, id)| Some(self.version_meta_path(us, ks, &id?)))
            .collect())
    }

    // -------------------------------------------------------------- sweep

    /// Whether to look for objects nobody points at now: at the first sweep,
    /// then every quarter of the upload expiry (they are removed only once
    /// as old as the expiry anyway).
    pub(super) fn orphan_sweep_due(&self) -> bool {
        let mut last = lock(&self.orphans_swept);
        let due = last.is_none_or(|t| t.elapsed() >= self.limits.upload_expiry / 4);
        if due {
            *last = Some(std::time::Instant::now());
        }
        due
    }

    /// Coordinated: objects of records and versions that were never
    /// committed (written by a holder that lost its lease) or whose commit
    /// was undone, once older than `cutoff_ms`. A version still readable
    /// by its id after a replace has its kept meta (`<id>.meta`) and stays
    /// for the retired-versions sweep.
    pub(super) async fn sweep_uncommitted(
        &self,
        coord: &dyn Coord,
        cutoff_ms: u64,
    ) -> StoreResult<()> {
        let mut orphans = self.uncommitted_records(coord, cutoff_ms).await?;
        orphans.extend(self.uncommitted_versions(coord, cutoff_ms).await?);
        if !orphans.is_empty() {
            info!(objects = orphans.len(), "removing objects nobody points at");
            self.delete_paths(orphans).await?;
        }
        Ok(())
    }

    /// `dir`'s objects grouped by their key (the two segments after `dir`)
    /// and then by version (the third, up to its first `.`): paths and the
    /// newest change (ms).
    async fn listed_by_key(&self, dir: &Path) -> StoreResult<ByKey> {
        let skip = dir.parts().count();
        let mut found = ByKey::new();
        let mut list = self.store.list(Some(dir));
        while let Some(m) = list.next().await {
            let m = m.map_err(store_err)?;
            let parts: Vec<String> = m
                .location
                .parts()
                .skip(skip)
                .map(|p| p.as_ref().to_owned())
                .collect();
            let [us, ks, name] = parts.as_slice() else {
                continue;
            };
            let version = name.split('.').next().unwrap_or_default().to_owned();
            let ms = u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0);
            let e = found
                .entry((us.clone(), ks.clone()))
                .or_default()
                .entry(version)
                .or_default();
            e.0.push(m.location);
            e.1 = e.1.max(ms);
        }
        Ok(found)
    }

    async fn uncommitted_records(
        &self,
        coord: &dyn Coord,
        cutoff_ms: u64,
    ) -> StoreResult<Vec<Path>> {
        let found = self.listed_by_key(&self.path(&["recv"])).await?;
        let keys: Vec<&(String, String)> = found.keys().collect();
        let names: Vec<String> = keys.iter().map(|(u, k)| record_pointer(u, k)).collect();
        let current = coord.pointers(&names).await?;
        let mut orphans = Vec::new();
        for (key, cur) in keys.into_iter().zip(current) {
            for (version, (paths, ms)) in &found[key] {
                if Some(version) != cur.as_ref() && *ms < cutoff_ms {
                    orphans.extend(paths.iter().cloned());
                }
            }
        }
        Ok(orphans)
    }

    async fn uncommitted_versions(
        &self,
        coord: &dyn Coord,
        cutoff_ms: u64,
    ) -> StoreResult<Vec<Path>> {
        let found = self.listed_by_key(&self.path(&["file"])).await?;
        let keys: Vec<&(String, String)> = found.keys().collect();
        let names: Vec<String> = keys.iter().map(|(u, k)| file_pointer(u, k)).collect();
        let current = coord.pointers(&names).await?;
        let mut orphans = Vec::new();
        for (key, cur) in keys.into_iter().zip(current) {
            for (version, (paths, ms)) in &found[key] {
                // A replaced version kept for its grace period (its key
                // still has a file).
                let kept = cur.is_some()
                    && paths
                        .iter()
                        .any(|p| p.filename().is_some_and(|f| f.ends_with(".meta")));
                if Some(version) != cur.as_ref() && !kept && *ms < cutoff_ms {
                    orphans.extend(paths.iter().cloned());
                }
            }
        }
        Ok(orphans)
    }
}
