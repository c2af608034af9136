//! The periodic sweeper: upkeep of whatever store stands behind the
//! service (idle unfinished uploads, replaced versions past their grace).

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

use super::api::Upkeep;

/// Run [`Upkeep::sweep_expired`] every `period` on the current tokio
/// runtime, for whatever implementation stands behind `storage`, until the
/// last holder of the storage (the service) lets go of it: the task keeps
/// only a weak reference. `None` outside a runtime.
pub fn spawn_sweeper(
    storage: Arc<dyn Upkeep>,
    period: Duration,
) -> Option<tokio::task::JoinHandle<()>> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    // Weak: the sweeper must not keep the storage (and so the server's
    // state) alive after the service is gone.
    let storage: Weak<dyn Upkeep> = Arc::downgrade(&storage);
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
    use crate::store::api::{StoreResult, UnfinishedStats};
    use async_trait::async_trait;
    use tokio::sync::mpsc;

    /// A storage that only reports its sweeps.
    #[derive(Debug)]
    struct Sweeps(mpsc::UnboundedSender<()>);

    #[async_trait]
    impl Upkeep for Sweeps {
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
        let storage: Arc<dyn Upkeep> = Arc::new(Sweeps(tx));
        let sweeper =
            spawn_sweeper(Arc::clone(&storage), Duration::from_millis(5)).expect("in a runtime");
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
}
