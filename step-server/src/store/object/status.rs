//! The read-only status of a key's unfinished upload on the object store
//! ([`Files::upload_status`](crate::store::Files::upload_status)), read
//! without loading the key
//! for writing, taking its lease, refreshing its activity or removing
//! leftovers — so asking never changes what a later SAVE, block or sweep
//! sees.
//!
//! Alone on the bucket, a loaded key's memory is the truth; otherwise the
//! bucket is (its state object, and one LIST of the upload's staged
//! blocks). Coordinated, the coordinator is: it names the key's current
//! upload and the blocks every instance received.

use std::sync::atomic::Ordering;

use step_core::plan::{to_ranges, total_blocks};

use super::coord::Coord;
use super::io::lock;
use super::names::lease_name;
use super::{Bucket, UploadState};
use crate::store::api::{PlanRecord, StoreError, StoreResult, UnfinishedUpload};
use crate::store::files::Key;

fn missing_of(received: &[bool]) -> Vec<[u64; 2]> {
    to_ranges(
        received
            .iter()
            .enumerate()
            .filter(|(_, r)| !**r)
            .map(|(i, _)| i as u64),
    )
}

impl Bucket {
    /// The unfinished upload under `n` (this instance's lock on the key is
    /// taken only to read what it holds).
    pub(super) async fn upload_status(&self, n: &Key) -> StoreResult<UnfinishedUpload> {
        self.ensure_scanned().await?;
        if let Some(coord) = &self.coord {
            return self.status_coordinated(coord.as_ref(), n).await;
        }
        {
            let st = self.files.lock(n.id.clone()).await;
            if st.loaded {
                let up = st.upload.as_ref().ok_or(StoreError::NotFound)?;
                let last_ms = self
                    .ledger
                    .get(&n.id)
                    .map_or(0, |a| a.last_ms.load(Ordering::Relaxed));
                return Ok(UnfinishedUpload {
                    upload_id: up.id.clone(),
                    plan: up.plan,
                    missing: up.missing(),
                    last_active_unix: last_ms / 1000,
                });
            }
        }
        let state = self.live_state(n).await?;
        let plan = PlanRecord {
            size: state.size,
            block_size: state.block_size,
        };
        let total = total_blocks(plan.size, plan.block_size);
        let (received, last_ms) = self
            .received_listed(n, &state.upload_id, plan, total)
            .await?;
        let last_ms = last_ms.max(state.created_unix.saturating_mul(1000));
        Ok(UnfinishedUpload {
            upload_id: state.upload_id,
            plan,
            missing: missing_of(&received),
            last_active_unix: last_ms / 1000,
        })
    }

    /// The key's upload state, unless there is none or it is what a
    /// completion left behind (its file's meta exists; a replacing upload
    /// lives beside the file it replaces).
    async fn live_state(&self, n: &Key) -> StoreResult<UploadState> {
        let state = self
            .get_json::<UploadState>(&self.state_path(n))
            .await?
            .ok_or(StoreError::NotFound)?;
        let meta = self.current_meta(n).await?;
        let completed = meta.is_some_and(|meta| {
            state.replace.is_none() || meta.upload_id.as_deref() == Some(&state.upload_id)
        });
        if completed {
            return Err(StoreError::NotFound);
        }
        Ok(state)
    }

    async fn status_coordinated(
        &self,
        coord: &dyn Coord,
        n: &Key,
    ) -> StoreResult<UnfinishedUpload> {
        let upload_id = coord
            .current(&lease_name(n))
            .await?
            .ok_or(StoreError::NotFound)?;
        let known = lock(&self.plans).get(&upload_id).copied();
        let (plan, created_ms) = match known {
            Some(plan) => (plan, 0),
            None => match self.get_json::<UploadState>(&self.state_path(n)).await? {
                Some(s) if s.upload_id == upload_id => (
                    PlanRecord {
                        size: s.size,
                        block_size: s.block_size,
                    },
                    s.created_unix.saturating_mul(1000),
                ),
                // The coordinator ahead of the bucket (a SAVE between its
                // state and making it current): nothing to resume yet.
                _ => return Err(StoreError::NotFound),
            },
        };
        let total = total_blocks(plan.size, plan.block_size);
        let (received, last_ms) = coord.received(&upload_id, total).await?;
        Ok(UnfinishedUpload {
            upload_id,
            plan,
            missing: missing_of(&received),
            last_active_unix: last_ms.unwrap_or(created_ms).max(created_ms) / 1000,
        })
    }
}
