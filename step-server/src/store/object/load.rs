//! What a key holds, read back from the bucket: at start (one LIST of
//! `up/` accounts for every unfinished upload), and whenever a key's cached
//! state is not known to be current (first use, after a failure, and
//! always under a coordinator, since another instance may have changed it).

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;
use step_core::plan::{block_len, total_blocks};
use tracing::{info, warn};

use super::assembly::Held;
use super::assembly::PART_MIN;
use super::coord::{Coord, Lease};
use super::io::{lock, other, store_err};
use super::names::lease_name;
use super::{Bucket, KNOWN_PLANS, KeyState, Upload, UploadState};
use crate::store::api::{PlanRecord, StoreResult};
use crate::store::files::{Activity, Key, KeyId};

/// What a LIST of `up/` found for one key.
#[derive(Debug, Default)]
pub(super) struct ScannedKey {
    pub(super) state: Option<(Path, u64)>,
    /// Per upload id: its staged blocks' paths, bytes, newest change (ms).
    pub(super) blocks: HashMap<String, (Vec<Path>, u64, u64)>,
}

impl Bucket {
    /// Account for the uploads in the bucket, once per instance.
    pub(super) async fn ensure_scanned(&self) -> StoreResult<()> {
        self.scanned
            .get_or_try_init(|| async {
                let found = self.scan_up().await?;
                let mut accounted = 0;
                for (id, k) in found {
                    let Some((state_path, state_ms)) = k.state else {
                        continue;
                    };
                    let Some(state) = self.get_json::<UploadState>(&state_path).await? else {
                        continue;
                    };
                    let (received, last) = k
                        .blocks
                        .get(&state.upload_id)
                        .map_or((0, 0), |b| (b.1, b.2));
                    let activity = Activity::new(received, std::time::UNIX_EPOCH);
                    activity
                        .last_ms
                        .store(last.max(state_ms), std::sync::atomic::Ordering::Relaxed);
                    self.ledger.found(&id, state.size, activity);
                    accounted += 1;
                }
                if accounted > 0 {
                    info!(
                        uploads = accounted,
                        "accounted for unfinished uploads in the bucket"
                    );
                }
                Ok(())
            })
            .await
            .map(|_| ())
    }

    /// One LIST of `up/`: every upload state and staged block.
    pub(super) async fn scan_up(&self) -> StoreResult<HashMap<KeyId, ScannedKey>> {
        let up = self.path(&["up"]);
        let prefix_parts = up.parts().count();
        let mut found: HashMap<KeyId, ScannedKey> = HashMap::new();
        let mut list = self.store.list(Some(&up));
        while let Some(m) = list.next().await {
            let m = m.map_err(store_err)?;
            let parts: Vec<String> = m
                .location
                .parts()
                .skip(prefix_parts)
                .map(|p| p.as_ref().to_owned())
                .collect();
            let ms = u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0);
            match parts.as_slice() {
                [us, ks, state] if state == "state" => {
                    found.entry((us.clone(), ks.clone())).or_default().state =
                        Some((m.location, ms));
                }
                [us, ks, dir, _index] if dir.starts_with("b-") => {
                    let e = found
                        .entry((us.clone(), ks.clone()))
                        .or_default()
                        .blocks
                        .entry(dir[2..].to_owned())
                        .or_default();
                    e.0.push(m.location);
                    e.1 += m.size;
                    e.2 = e.2.max(ms);
                }
                _ => warn!(path = %m.location, "unexpected object under up/"),
            }
        }
        Ok(found)
    }

    /// Bring a key's state up to date with the bucket, once.
    pub(super) async fn load(&self, n: &Key, st: &mut KeyState) -> StoreResult<()> {
        if st.loaded {
            return Ok(());
        }
        let Some(state) = self.get_json::<UploadState>(&self.state_path(n)).await? else {
            if let Some(lease) = &st.lease {
                // The bucket is the truth for what exists.
                lease.set_current(&lease_name(n), None).await?;
            }
            st.upload = None;
            st.loaded = true;
            self.ledger.remove(&n.id);
            return Ok(());
        };
        let current = self.current_meta(n).await?;
        if current.is_some_and(|meta| {
            state.replace.is_none() || meta.upload_id.as_deref() == Some(&state.upload_id)
        }) {
            // Completion got as far as the meta: the rest is leftovers. (A
            // replacing upload lives beside the file it replaces.)
            info!(user = %n.user, key = %n.key, "removing the leftovers of a completed upload");
            self.discard(n, st.lease.as_deref(), &state.upload_id)
                .await?;
            st.upload = None;
            st.loaded = true;
            return Ok(());
        }
        st.upload = Some(self.loaded_upload(n, st, state).await?);
        st.loaded = true;
        Ok(())
    }

    /// The unfinished upload `state` of `n`, with what has been received.
    async fn loaded_upload(
        &self,
        n: &Key,
        st: &KeyState,
        state: UploadState,
    ) -> StoreResult<Upload> {
        let plan = PlanRecord {
            size: state.size,
            block_size: state.block_size,
        };
        let total = total_blocks(plan.size, plan.block_size);
        let (received, last) = match &self.coord {
            Some(coord) => {
                self.received_coordinated(coord.as_ref(), n, st, &state.upload_id, total)
                    .await?
            }
            None => {
                self.received_listed(n, &state.upload_id, plan, total)
                    .await?
            }
        };
        let (mut remaining, mut bytes) = (total, 0);
        for (i, _) in received.iter().enumerate().filter(|(_, r)| **r) {
            remaining -= 1;
            bytes += block_len(plan.size, plan.block_size, i as u64).unwrap_or(0);
        }
        info!(user = %n.user, key = %n.key, remaining, "loaded unfinished upload from the bucket");
        // Coordinated, blocks may reach other instances: the latest counts.
        let last = last.max(state.created_unix.saturating_mul(1000));
        self.ledger.loaded(&n.id, plan.size, bytes, last);
        if self.coord.is_some() {
            self.remember_plan(&state.upload_id, plan);
        }
        Ok(Upload {
            id: state.upload_id,
            plan,
            received,
            remaining,
            assembler: None,
            // Coordinated, no assembler: blocks reach several instances.
            assembler_tried: self.coord.is_some(),
            held: self.small_held(plan),
            replace: state.replace,
        })
    }

    /// Which blocks of upload `upload_id` are staged, by one LIST of its
    /// blocks (alone on the bucket), and when the last one came (ms).
    pub(super) async fn received_listed(
        &self,
        n: &Key,
        upload_id: &str,
        plan: PlanRecord,
        total: u64,
    ) -> StoreResult<(Vec<bool>, u64)> {
        let mut received =
            vec![false; usize::try_from(total).map_err(|_| other("plan too large"))?];
        let mut last = 0;
        let mut list = self.store.list(Some(&self.blocks_dir(n, upload_id)));
        while let Some(m) = list.next().await {
            let m = m.map_err(store_err)?;
            let Some(index) = m.location.filename().and_then(|f| f.parse::<u64>().ok()) else {
                continue;
            };
            // A block of the wrong length is not this plan's: sent again.
            if block_len(plan.size, plan.block_size, index) == Some(m.size)
                && let Some(r) = received.get_mut(index as usize)
            {
                *r = true;
                last = last.max(u64::try_from(m.last_modified.timestamp_millis()).unwrap_or(0));
            }
        }
        Ok((received, last))
    }

    /// Which blocks of upload `upload_id` were received, coordinated: the
    /// coordinator's record (every instance marks there), not a LIST.
    /// Under the key's lease, the coordinator's current upload is first set
    /// to the bucket's (it may have lost it).
    async fn received_coordinated(
        &self,
        coord: &dyn Coord,
        n: &Key,
        st: &KeyState,
        upload_id: &str,
        total: u64,
    ) -> StoreResult<(Vec<bool>, u64)> {
        if total > u64::from(u32::MAX) {
            return Err(other("plan too large"));
        }
        let name = lease_name(n);
        if let Some(lease) = &st.lease
            && coord.current(&name).await?.as_deref() != Some(upload_id)
        {
            lease.set_current(&name, Some(upload_id)).await?;
        }
        let (received, last_ms) = coord.received(upload_id, total).await?;
        Ok((received, last_ms.unwrap_or(0)))
    }

    /// Keep `upload_id`'s plan for the blocks to come.
    pub(super) fn remember_plan(&self, upload_id: &str, plan: PlanRecord) {
        let mut plans = lock(&self.plans);
        // Entries outlive their uploads (completed on other instances):
        // start afresh rather than grow.
        if plans.len() >= KNOWN_PLANS {
            plans.clear();
        }
        plans.insert(upload_id.to_owned(), plan);
    }

    /// Coordinated `open_upload`: the coordinator names the key's current
    /// upload (one read), its plan is known or read from the bucket. `None`
    /// when the key has none (or a SAVE elsewhere is between writing its
    /// state and making it current: SAVE again).
    pub(super) async fn open_coordinated(
        &self,
        coord: &dyn Coord,
        n: &Key,
    ) -> StoreResult<Option<(String, PlanRecord)>> {
        let Some(current) = coord.current(&lease_name(n)).await? else {
            return Ok(None);
        };
        if let Some(plan) = lock(&self.plans).get(&current) {
            return Ok(Some((current, *plan)));
        }
        match self.get_json::<UploadState>(&self.state_path(n)).await? {
            Some(state) if state.upload_id == current => {
                let plan = PlanRecord {
                    size: state.size,
                    block_size: state.block_size,
                };
                self.remember_plan(&current, plan);
                Ok(Some((current, plan)))
            }
            _ => Ok(None),
        }
    }

    /// Remove an upload's state (first: from then on it is gone) and its
    /// staged blocks; coordinated, under the key's `lease`.
    pub(super) async fn discard(
        &self,
        n: &Key,
        lease: Option<&dyn Lease>,
        upload_id: &str,
    ) -> StoreResult<()> {
        self.ledger.remove(&n.id);
        match self.store.delete(&self.state_path(n)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(store_err(e)),
        }
        if let Some(coord) = &self.coord {
            // The upload just removed was the key's current.
            lease
                .ok_or_else(|| other("a commit point outside the key's lease"))?
                .set_current(&lease_name(n), None)
                .await?;
            coord.forget(upload_id).await?;
            lock(&self.plans).remove(upload_id);
        }
        self.delete_dir(&self.blocks_dir(n, upload_id)).await
    }

    /// Room to keep a small upload's blocks in memory (large ones keep them
    /// in their assembler).
    pub(super) fn small_held(&self, plan: PlanRecord) -> Held {
        // Coordinated, a block repeated through another instance may change
        // the staged bytes: completion reads them all back.
        let cap = if plan.size <= PART_MIN && self.coord.is_none() {
            PART_MIN
        } else {
            0
        };
        Held::new(Arc::clone(&self.held_total), cap)
    }

    /// Remove an unfinished upload: [`Self::discard`], and any content a
    /// failed completion of it wrote (never visible: it has no meta).
    pub(super) async fn discard_unfinished(
        &self,
        n: &Key,
        lease: Option<&dyn Lease>,
        upload_id: &str,
    ) -> StoreResult<()> {
        self.discard(n, lease, upload_id).await?;
        self.delete_paths(vec![
            self.content_path(n, upload_id),
            self.sums_path(n, upload_id),
        ])
        .await
    }
}
