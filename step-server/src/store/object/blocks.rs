//! A block's way in. Every block is acknowledged only once durable: it is
//! PUT as its own object under its upload's id (a block landing in an
//! upload discarded meanwhile is never mixed with another's; the sweep
//! removes it), outside the key's lock, so blocks of one upload are staged
//! concurrently.
//!
//! Alone on the bucket, the block is then marked received under the key's
//! lock, and large uploads hand it to their assembler. Coordinated, it is
//! marked at the coordinator, atomically with checking its upload is still
//! the key's current one; only the mark that fills the upload takes the
//! key's lease, for the completion.

use std::collections::BTreeSet;

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload};
use step_core::plan::{block_len, total_blocks};

use super::assembly::PART_MIN;
use super::coord::{Coord, Mark};
use super::io::{other, store_err};
use super::names::lease_name;
use super::{Bucket, HeldKey, KeyGuard, KeyState, Upload};
use crate::store::api::{PlanRecord, StoreError, StoreResult};
use crate::store::files::{Key, Received, Sink};

/// An unfinished upload opened for one block.
#[derive(Debug)]
pub struct ObjectUpload {
    names: Key,
    /// The upload this handle was opened on.
    upload_id: String,
    plan: PlanRecord,
}

impl Sink for ObjectUpload {
    fn plan(&self) -> PlanRecord {
        self.plan
    }

    fn upload_id(&self) -> &str {
        &self.upload_id
    }
}

type Receipt = StoreResult<Received<HeldKey>>;

impl Bucket {
    /// The key's unfinished upload, opened for blocks: coordinated, the one
    /// the coordinator names (no lock); else the one loaded under the lock.
    pub(super) async fn open_sink(&self, n: &Key) -> StoreResult<Option<ObjectUpload>> {
        self.ensure_scanned().await?;
        let found = match &self.coord {
            Some(coord) => self.open_coordinated(coord.as_ref(), n).await?,
            None => {
                let mut st = self.files.lock(n.id.clone()).await;
                self.load(n, &mut st).await?;
                st.upload.as_ref().map(|up| (up.id.clone(), up.plan))
            }
        };
        Ok(found.map(|(upload_id, plan)| ObjectUpload {
            names: n.clone(),
            upload_id,
            plan,
        }))
    }

    /// Stage block `index` of `sink`'s upload and mark it received.
    pub(super) async fn receive_block(
        &self,
        sink: &ObjectUpload,
        index: u64,
        data: Bytes,
        named: Option<&str>,
    ) -> Receipt {
        let plan = sink.plan;
        let expected = block_len(plan.size, plan.block_size, index)
            .ok_or_else(|| other(format!("block {index} is outside the plan")))?;
        if data.len() as u64 != expected {
            return Err(other(format!(
                "block {index} has {} bytes, the plan says {expected}",
                data.len()
            )));
        }
        if let Some(coord) = &self.coord {
            return self
                .receive_coordinated(coord.as_ref(), sink, index, data, named)
                .await;
        }
        let n = &sink.names;
        let earlier = {
            let st = self.lock_current(sink, named).await?;
            let up = st.upload.as_ref().ok_or(StoreError::NotPlanned)?;
            up.received[index as usize].then(|| up.held.get(index))
        };
        if let Some(held) = earlier {
            return self.repeat(sink, index, data, named, held).await;
        }
        let path = self.block_path(n, &sink.upload_id, index);
        self.store
            .put(&path, PutPayload::from_bytes(data.clone()))
            .await
            .map_err(store_err)?;
        let mut st = match self.lock_current(sink, named).await {
            Ok(st) => st,
            Err(e) => {
                let _ = self.store.delete(&path).await;
                return Err(e);
            }
        };
        let up = st.upload.as_mut().ok_or(StoreError::NotPlanned)?;
        if !up.received[index as usize] {
            up.received[index as usize] = true;
            up.remaining -= 1;
            self.ledger.touch(&n.id, expected);
            up.held.hold(index, data.clone());
        }
        if up.remaining == 0 {
            return Ok(Received::Full {
                held: HeldKey::new(n, st),
                last: Some((index, data)),
            });
        }
        self.feed_assembler(n, st, index, data).await;
        Ok(Received::Stored)
    }

    /// Hand a staged block of a large upload to its assembler, starting one
    /// for an upload that has none yet (reloaded, or none was free at SAVE):
    /// its parts are then written in the background from now on, rather
    /// than all at completion.
    async fn feed_assembler(&self, n: &Key, mut st: KeyGuard, index: u64, data: Bytes) {
        let Some(up) = st.upload.as_mut() else {
            return;
        };
        if up.assembler.is_none()
            && !up.assembler_tried
            && up.plan.size > PART_MIN
            && self.assemblers.available_permits() > 0
        {
            up.assembler_tried = true;
            let staged: BTreeSet<u64> = up
                .received
                .iter()
                .enumerate()
                .filter(|(i, r)| **r && *i as u64 != index)
                .map(|(i, _)| i as u64)
                .collect();
            up.assembler = self.start_assembler(n, &up.id, up.plan, staged).await;
        }
        let feed = up.assembler.as_ref().map(|a| a.tx.clone());
        drop(st);
        // After the lock: the assembler may be busy writing a part, and a
        // completion waits for every block sent to it before.
        if let Some(tx) = feed {
            let _ = tx.send((index, data)).await;
        }
    }

    /// [`Self::receive_block`] with a coordinator: stage the block (a repeat
    /// simply writes it again: the last bytes win), then mark it received
    /// at the coordinator, atomically with checking the upload is still
    /// current. The mark that brings the count to the total completes the
    /// file, under the key's lease; so does a repeat once all are in (a
    /// completion cut short by a crash), and whichever comes second finds
    /// the file complete and answers without the md5.
    async fn receive_coordinated(
        &self,
        coord: &dyn Coord,
        sink: &ObjectUpload,
        index: u64,
        data: Bytes,
        named: Option<&str>,
    ) -> Receipt {
        let n = &sink.names;
        if named.is_some_and(|w| w != sink.upload_id) {
            return Err(StoreError::Superseded);
        }
        let len = data.len() as u64;
        let path = self.block_path(n, &sink.upload_id, index);
        self.store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map_err(store_err)?;
        let name = lease_name(n);
        match coord.mark_block(&name, &sink.upload_id, index).await? {
            Mark::NotCurrent => {
                let _ = self.store.delete(&path).await;
                Err(match coord.current(&name).await? {
                    Some(_) if named.is_some() => StoreError::Superseded,
                    Some(_) => StoreError::NotPlanned,
                    None if self.is_complete(n).await? => StoreError::AlreadyComplete,
                    None => StoreError::NotPlanned,
                })
            }
            Mark::Marked { first, count } => {
                if first {
                    self.ledger.touch(&n.id, len);
                }
                if count < total_blocks(sink.plan.size, sink.plan.block_size) {
                    return Ok(Received::Stored);
                }
                let st = self.lock_key(n).await?;
                Ok(Received::Full {
                    held: HeldKey::new(n, st),
                    last: None,
                })
            }
        }
    }

    /// A block staged already. The reference keeps the last bytes written at
    /// an index, so: the same bytes again (the usual resend) change nothing;
    /// other bytes replace the staged block, and since the assembler may
    /// have consumed the old ones, the file is then assembled from the staged
    /// blocks at completion. Either way a repeat completes an upload whose
    /// completion was cut short.
    async fn repeat(
        &self,
        sink: &ObjectUpload,
        index: u64,
        data: Bytes,
        named: Option<&str>,
        held: Option<Bytes>,
    ) -> Receipt {
        let n = &sink.names;
        let path = self.block_path(n, &sink.upload_id, index);
        let before = match held {
            Some(b) => Some(b),
            // Not under the lock: one GET of one block.
            None => match self.store.get(&path).await {
                Ok(r) => Some(r.bytes().await.map_err(store_err)?),
                Err(object_store::Error::NotFound { .. }) => None,
                Err(e) => return Err(store_err(e)),
            },
        };
        let changed = before.as_ref() != Some(&data);
        if changed {
            self.store
                .put(&path, PutPayload::from_bytes(data.clone()))
                .await
                .map_err(store_err)?;
        }
        let mut st = self.lock_current(sink, named).await?;
        let up = st.upload.as_mut().ok_or(StoreError::NotPlanned)?;
        if changed {
            if let Some(a) = up.assembler.take() {
                a.cancel.cancel();
            }
            up.assembler_tried = true;
            if up.held.take(index).is_some() {
                up.held.hold(index, data);
            }
        }
        self.ledger.touch(&n.id, 0);
        if up.remaining == 0 {
            return Ok(Received::Full {
                held: HeldKey::new(n, st),
                last: None,
            });
        }
        Ok(Received::Stored)
    }

    /// The key, locked (this instance's lock) with its upload loaded, if
    /// that is still the one `sink` was opened on (and the one named).
    async fn lock_current(
        &self,
        sink: &ObjectUpload,
        named: Option<&str>,
    ) -> StoreResult<KeyGuard> {
        let mut st = KeyGuard(self.files.lock(sink.names.id.clone()).await);
        self.load(&sink.names, &mut st).await?;
        self.current_upload(sink, &st, named).await?;
        Ok(st)
    }

    /// The key's upload, if it is still the one `sink` was opened on (and
    /// the one the client names).
    async fn current_upload<'a>(
        &self,
        sink: &ObjectUpload,
        st: &'a KeyState,
        named: Option<&str>,
    ) -> StoreResult<&'a Upload> {
        match st.upload.as_ref() {
            Some(up) if named.is_some_and(|w| w != up.id) => Err(StoreError::Superseded),
            Some(up) if up.id == sink.upload_id => Ok(up),
            Some(_) => Err(if named.is_some() {
                StoreError::Superseded
            } else {
                StoreError::NotPlanned
            }),
            None if self.is_complete(&sink.names).await? => Err(StoreError::AlreadyComplete),
            None => Err(StoreError::NotPlanned),
        }
    }
}
