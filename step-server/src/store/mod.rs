//! Storage: everything the server keeps, behind one interface
//! ([`Storage`], in `api.rs`), with the local disk ([`disk::DiskStore`]) as
//! the default implementation.
//!
//! The service holds an `Arc<dyn Storage>` and speaks to it in users, keys,
//! records, plans and blocks; protocol rules (wire values, block checks,
//! STEP statuses) stay in the service. What is generic over every
//! implementation lives here: the limits on unfinished uploads and the
//! periodic sweeper of idle ones.

pub mod api;
pub mod disk;
mod names;
pub mod object;
pub mod s3;
mod sums;

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

pub use api::{
    Account, Deleted, FileMeta, ListPage, PlanOutcome, PlanRecord, Replace, Storage, StoreError,
    StoreResult, UnfinishedStats, UnfinishedUpload, UploadWriter,
};
pub use disk::DiskStore;

/// The local-disk store under its historical name.
pub type Store = DiskStore;

/// Limits on unfinished uploads.
#[derive(Debug, Clone, Copy)]
pub struct StoreLimits {
    /// An unfinished upload with no SAVE or block for this long is removed.
    pub upload_expiry: Duration,
    /// Bytes planned by one user's unfinished uploads, at most.
    pub max_unfinished_bytes_per_user: u64,
    /// Unfinished uploads of one user, at most.
    pub max_unfinished_uploads_per_user: u64,
    /// How long a replaced version of a file stays readable (for downloads
    /// that began before the replace); removed by the sweeper after that,
    /// or at the key's next replace or DELETE.
    pub replaced_grace: Duration,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self {
            upload_expiry: Duration::from_secs(86_400),
            max_unfinished_bytes_per_user: 64 << 30,
            max_unfinished_uploads_per_user: 1000,
            replaced_grace: Duration::from_secs(15 * 60),
        }
    }
}

impl StoreLimits {
    /// Whether a user with `count` unfinished uploads planning `planned`
    /// bytes may start one more of `size` bytes (the per-user caps, checked
    /// by every implementation at SAVE).
    pub fn admit_unfinished(&self, count: u64, planned: u64, size: u64) -> StoreResult<()> {
        if count >= self.max_unfinished_uploads_per_user {
            return Err(StoreError::Quota(format!(
                "{count} unfinished uploads already, the most one user may have; finish or delete one"
            )));
        }
        let total = planned.saturating_add(size);
        if total > self.max_unfinished_bytes_per_user {
            return Err(StoreError::Quota(format!(
                "unfinished uploads would total {total} bytes, above the {} one user may have",
                self.max_unfinished_bytes_per_user
            )));
        }
        Ok(())
    }

    /// How often the sweeper looks for idle uploads: a fraction of the
    /// expiry, so one is removed at most a quarter expiry late, but never
    /// more often than each second nor less often than each minute.
    pub fn sweep_period(&self) -> Duration {
        (self.upload_expiry / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// Run [`Storage::sweep_expired`] every `period` on the current tokio
/// runtime, for whatever implementation stands behind `storage`, until the
/// last holder of the storage (the service) lets go of it. `None` outside a
/// runtime.
pub fn spawn_sweeper(
    storage: &Arc<dyn Storage>,
    period: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    // Weak: the sweeper must not keep the storage (and so the server's
    // state) alive after the service is gone.
    let storage: Weak<dyn Storage> = Arc::downgrade(storage);
    Some(runtime.spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(storage) = storage.upgrade() else {
                return;
            };
            match storage.sweep_expired(SystemTime::now()).await {
                Ok(0) => {}
                Ok(n) => info!(expired = n, "removed idle unfinished uploads"),
                Err(e) => warn!(error = %e, "sweeping idle unfinished uploads failed"),
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use bytes::Bytes;
    use serde_json::{Map, Value};
    use tokio::sync::mpsc;

    /// A storage that only reports its sweeps.
    #[derive(Debug)]
    struct Sweeps(mpsc::UnboundedSender<()>);

    #[async_trait]
    impl Storage for Sweeps {
        async fn record_create(&self, _: &str, _: &str, _: Map<String, Value>) -> StoreResult<()> {
            Err(StoreError::NotFound)
        }
        async fn record_get(&self, _: &str, _: &str) -> StoreResult<Map<String, Value>> {
            Err(StoreError::NotFound)
        }
        async fn record_delete(&self, _: &str, _: &str) -> StoreResult<()> {
            Err(StoreError::NotFound)
        }
        async fn plan_upload(
            &self,
            _: &str,
            _: &str,
            _: PlanRecord,
            _: bool,
        ) -> StoreResult<PlanOutcome> {
            Err(StoreError::NotFound)
        }
        async fn plan_replace(
            &self,
            _: &str,
            _: &str,
            _: PlanRecord,
            _: bool,
            _: Replace,
        ) -> StoreResult<PlanOutcome> {
            Err(StoreError::NotFound)
        }
        async fn open_upload(&self, _: &str, _: &str) -> StoreResult<Box<dyn UploadWriter>> {
            Err(StoreError::NotPlanned)
        }
        async fn head_version(&self, _: &str, _: &str, _: &str) -> StoreResult<FileMeta> {
            Err(StoreError::NotFound)
        }
        async fn delete_file_if(&self, _: &str, _: &str, _: &str) -> StoreResult<Deleted> {
            Err(StoreError::NotFound)
        }
        async fn head(&self, _: &str, _: &str) -> StoreResult<FileMeta> {
            Err(StoreError::NotFound)
        }
        async fn upload_status(&self, _: &str, _: &str) -> StoreResult<UnfinishedUpload> {
            Err(StoreError::NotFound)
        }
        async fn read(&self, _: &str, _: &FileMeta, _: u64, _: u64) -> StoreResult<Bytes> {
            Err(StoreError::NotFound)
        }
        async fn delete_file(&self, _: &str, _: &str, _: Option<&str>) -> StoreResult<Deleted> {
            Err(StoreError::NotFound)
        }
        async fn list_files(
            &self,
            _: &str,
            _: &str,
            _: Option<&str>,
            _: usize,
        ) -> StoreResult<ListPage> {
            Err(StoreError::NotFound)
        }
        async fn account_get(&self, _: &str) -> StoreResult<Option<Account>> {
            Ok(None)
        }
        async fn account_create(&self, _: &Account) -> StoreResult<()> {
            Err(StoreError::NotFound)
        }
        async fn account_replace(&self, _: &Account) -> StoreResult<()> {
            Err(StoreError::NotFound)
        }
        async fn account_delete(&self, _: &str) -> StoreResult<()> {
            Err(StoreError::NotFound)
        }
        async fn account_list(&self) -> StoreResult<Vec<String>> {
            Ok(Vec::new())
        }
        fn unfinished_stats(&self) -> UnfinishedStats {
            UnfinishedStats::default()
        }
        async fn sweep_expired(&self, _: SystemTime) -> StoreResult<usize> {
            let _ = self.0.send(());
            Ok(0)
        }
    }

    #[tokio::test]
    async fn the_sweeper_sweeps_any_storage_until_its_holder_lets_go() {
        let bound = Duration::from_secs(10);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let storage: Arc<dyn Storage> = Arc::new(Sweeps(tx));
        let sweeper = spawn_sweeper(&storage, Duration::from_millis(5)).expect("in a runtime");
        for _ in 0..3 {
            tokio::time::timeout(bound, rx.recv())
                .await
                .expect("a sweep each period")
                .expect("sweeper alive");
        }
        drop(storage);
        // The next tick finds the storage gone and ends the task, which
        // drops the last sender and so closes the channel.
        tokio::time::timeout(bound, sweeper)
            .await
            .expect("the sweeper stops")
            .expect("cleanly");
        while let Ok(Some(())) = tokio::time::timeout(bound, rx.recv()).await {}
        assert!(rx.is_closed());
    }

    #[test]
    fn sweep_period_is_a_quarter_expiry_within_bounds() {
        let period = |secs| {
            StoreLimits {
                upload_expiry: Duration::from_secs(secs),
                ..StoreLimits::default()
            }
            .sweep_period()
        };
        assert_eq!(period(1), Duration::from_secs(1));
        assert_eq!(period(100), Duration::from_secs(25));
        assert_eq!(period(86_400), Duration::from_secs(60));
    }
}
