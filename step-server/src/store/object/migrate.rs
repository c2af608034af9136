//! Upgrade of a coordinated bucket from the layout of releases before
//! fencing: records at `rec/<user>/<key>` and file metas at
//! `meta/<user>/<key>`, both overwritten in place and read directly, with
//! no pointers at the coordinator. This release reads records and files
//! only through pointers (`fenced.rs`), so such a bucket would look empty,
//! and its sweep would take the content of every file as "nobody points at
//! it". So, coordinated, nothing that resolves a record or a file, and no
//! sweep, runs before the bucket's layout is known to be current
//! ([`Bucket::ensure_layout`]).
//!
//! The coordinator's marker pointer ([`LAYOUT_MARKER`]) says the bucket is
//! current: every later start costs one coordinator read. Without it, one
//! instance — the holder of the migration lease ([`MIGRATION_LEASE`]), so
//! several servers starting at once convert once — LISTs `rec/` and
//! `meta/` and converts each legacy object, then sets the marker:
//!
//! - a record: its bytes copied to `recv/<user>/<key>/<version>`, the
//!   pointer set to it *only if absent*, then `rec/<user>/<key>` removed;
//! - a file: its meta copied to `file/<user>/<key>/<upload_id>.v` (content
//!   and sums stay where they are, under the same `upload_id`), the pointer
//!   set to it only if absent, then `meta/<user>/<key>` overwritten with the
//!   empty index entry this release lists.
//!
//! Every step is idempotent, and every pointer is set by a swap under the
//! migration lease (an instance that stalled past it sets nothing), so a
//! migration cut short anywhere is completed by the next one: a converted
//! key's pointer is present, and only its legacy object is left to remove.
//! A pointer already present (a key written since by this release) wins
//! over the legacy object, whose leftovers the sweep takes. Meanwhile the
//! other instances answer "unavailable" (upgrading) rather than show a
//! store without those records and files.

use std::sync::atomic::Ordering;

use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use tracing::{info, warn};

use super::Bucket;
use super::coord::{Coord, Lease};
use super::io::store_err;
use super::names::{file_pointer, record_pointer};
use crate::store::api::{FileMeta, StoreError, StoreResult};

/// The coordinator's pointer that says the bucket's layout is current.
pub const LAYOUT_MARKER: &str = "m/layout";
/// Its value: records and file metas fenced behind pointers.
pub const LAYOUT_FENCED: &str = "fenced-1";
/// The lease of the one instance that migrates the bucket.
pub const MIGRATION_LEASE: &str = "m/migrate";
/// A request waits this long for a migration under way in this instance
/// before it answers "unavailable".
const UPGRADE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Meanwhile it looks for the marker this often.
const UPGRADE_POLL: std::time::Duration = std::time::Duration::from_millis(250);
/// Progress is logged every this many conversions.
const LOG_EVERY: u64 = 1000;

/// What one migration converted (zero when the bucket was current or
/// another instance did it).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub records: u64,
    pub files: u64,
}

fn upgrading() -> StoreError {
    StoreError::Unavailable(
        "the bucket is being upgraded from an earlier release's layout; retry shortly".into(),
    )
}

impl Bucket {
    /// Coordinated: fails ("unavailable", upgrading) until the bucket's
    /// layout is known to be current. A server migrates from its own task
    /// ([`Self::upgrade_layout`], started at start-up): a request only looks
    /// for the marker meanwhile, so no request's deadline cuts a migration
    /// short. Storage used without that task migrates at its first request.
    /// Alone (no coordinator): nothing to do.
    pub(super) async fn ensure_layout(&self) -> StoreResult<()> {
        let Some(coord) = &self.coord else {
            return Ok(());
        };
        if self.layout.initialized() {
            return Ok(());
        }
        if !self.layout_driven.load(Ordering::Acquire) {
            return match tokio::time::timeout(UPGRADE_WAIT, self.migrate_once()).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e @ StoreError::Unavailable(_))) => Err(e),
                // Whatever else stopped it, the store is not there yet.
                Ok(Err(e)) => {
                    warn!(error = %e, "the bucket's upgrade has not completed");
                    Err(upgrading())
                }
                Err(_) => Err(upgrading()),
            };
        }
        let deadline = tokio::time::Instant::now() + UPGRADE_WAIT;
        loop {
            if self.layout.initialized() {
                return Ok(());
            }
            if coord.pointer(LAYOUT_MARKER).await?.as_deref() == Some(LAYOUT_FENCED) {
                // Done by another instance; this one's task may still be
                // waiting for the lease (then it is told so there).
                let _ = self.layout.set(());
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(upgrading());
            }
            tokio::time::sleep(UPGRADE_POLL).await;
        }
    }

    /// Migrate the bucket if it holds the earlier layout, from the task
    /// that drives it (requests then only wait for it). Once per instance;
    /// cancel-safe: a migration cut short is resumed by the next call,
    /// here or on another instance.
    pub(super) async fn upgrade_layout(&self) -> StoreResult<Migrated> {
        self.layout_driven.store(true, Ordering::Release);
        self.migrate_once().await
    }

    async fn migrate_once(&self) -> StoreResult<Migrated> {
        let Some(coord) = &self.coord else {
            return Ok(Migrated::default());
        };
        let mut done = Migrated::default();
        self.layout
            .get_or_try_init(|| async {
                done = self.migrate(coord.as_ref()).await?;
                Ok::<(), StoreError>(())
            })
            .await?;
        Ok(done)
    }

    async fn migrate(&self, coord: &dyn Coord) -> StoreResult<Migrated> {
        if coord.pointer(LAYOUT_MARKER).await?.as_deref() == Some(LAYOUT_FENCED) {
            return Ok(Migrated::default());
        }
        // Waits while another instance migrates (or gives up after the
        // lease wait: the caller tries again).
        info!(
            "the bucket's layout is not marked current yet: taking the migration lease (waits while another server migrates)"
        );
        let lease = coord.lease(MIGRATION_LEASE).await?;
        let marker = coord.pointer(LAYOUT_MARKER).await?;
        if marker.as_deref() == Some(LAYOUT_FENCED) {
            return Ok(Migrated::default());
        }
        info!("checking the bucket for records and files of an earlier release's layout");
        let mut done = Migrated::default();
        self.migrate_records(coord, lease.as_ref(), &mut done)
            .await?;
        self.migrate_files(coord, lease.as_ref(), &mut done).await?;
        lease
            .swap(LAYOUT_MARKER, marker.as_deref(), Some(LAYOUT_FENCED))
            .await?;
        info!(
            records = done.records,
            files = done.files,
            "the bucket's layout is current"
        );
        Ok(done)
    }

    /// `dir`'s objects as (user segment, key segment, path, size).
    async fn legacy_objects(&self, dir: &str) -> StoreResult<Vec<(String, String, Path, u64)>> {
        let dir = self.path(&[dir]);
        let skip = dir.parts().count();
        let mut found = Vec::new();
        let mut list = self.store.list(Some(&dir));
        while let Some(m) = list.next().await {
            let m = m.map_err(store_err)?;
            let parts: Vec<String> = m
                .location
                .parts()
                .skip(skip)
                .map(|p| p.as_ref().to_owned())
                .collect();
            if let [us, ks] = parts.as_slice() {
                found.push((us.clone(), ks.clone(), m.location, m.size));
            }
        }
        Ok(found)
    }

    async fn migrate_records(
        &self,
        coord: &dyn Coord,
        lease: &dyn Lease,
        done: &mut Migrated,
    ) -> StoreResult<()> {
        for (us, ks, path, _) in self.legacy_objects("rec").await? {
            // LIST may show an object already removed (Garage).
            let Some(bytes) = self.get_bytes(&path).await? else {
                continue;
            };
            let pointer = record_pointer(&us, &ks);
            if coord.pointer(&pointer).await?.is_none() {
                let version = uuid::Uuid::new_v4().simple().to_string();
                self.store
                    .put(
                        &self.path(&["recv", &us, &ks, &version]),
                        PutPayload::from(bytes),
                    )
                    .await
                    .map_err(store_err)?;
                lease.swap(&pointer, None, Some(&version)).await?;
                done.records += 1;
                self.log_progress(done);
            }
            self.fail_point()?;
            self.remove_legacy(&path).await?;
        }
        Ok(())
    }

    async fn migrate_files(
        &self,
        coord: &dyn Coord,
        lease: &dyn Lease,
        done: &mut Migrated,
    ) -> StoreResult<()> {
        for (us, ks, path, size) in self.legacy_objects("meta").await? {
            if size == 0 {
                // This release's index entry.
                continue;
            }
            // LIST may show an object already removed or already made an
            // index entry (Garage): only what GET returns counts.
            let Some(bytes) = self.get_bytes(&path).await?.filter(|b| !b.is_empty()) else {
                continue;
            };
            let mut meta: FileMeta = serde_json::from_slice(&bytes)
                .map_err(|e| super::io::other(format!("corrupt legacy meta {path}: {e}")))?;
            let pointer = file_pointer(&us, &ks);
            if coord.pointer(&pointer).await?.is_none() {
                let id = match &meta.upload_id {
                    Some(id) => id.clone(),
                    None => {
                        // Content is found by its upload id: only an empty
                        // file can lack one.
                        if meta.size > 0 {
                            warn!(%path, "a legacy file without an upload id: its content cannot be found");
                        }
                        let id = uuid::Uuid::new_v4().simple().to_string();
                        meta.upload_id = Some(id.clone());
                        id
                    }
                };
                self.put_json(&self.version_meta_path(&us, &ks, &id), &meta)
                    .await?;
                lease.swap(&pointer, None, Some(&id)).await?;
                done.files += 1;
                self.log_progress(done);
            }
            self.fail_point()?;
            // The legacy meta becomes this release's (empty) index entry.
            lease.check().await?;
            self.store
                .put(&path, PutPayload::default())
                .await
                .map_err(store_err)?;
        }
        Ok(())
    }

    async fn remove_legacy(&self, path: &Path) -> StoreResult<()> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    fn log_progress(&self, done: &Migrated) {
        let n = done.records + done.files;
        if n.is_multiple_of(LOG_EVERY) {
            info!(
                records = done.records,
                files = done.files,
                "migrating the bucket from an earlier release's layout"
            );
        }
    }

    /// Tests: fail once this many conversions were made, as a migration
    /// killed midway would stop.
    #[cfg(test)]
    fn fail_point(&self) -> StoreResult<()> {
        let left = self.migrate_budget.load(Ordering::Acquire);
        if left == u64::MAX {
            return Ok(());
        }
        if left == 0 {
            return Err(super::io::other("migration stopped by the test"));
        }
        self.migrate_budget.store(left - 1, Ordering::Release);
        Ok(())
    }

    #[cfg(not(test))]
    fn fail_point(&self) -> StoreResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
