//! A file's content written from its staged blocks at completion: one PUT
//! for a small file, the rest of a multipart upload for a large one (what
//! its assembler has not written yet), then its sums. The staged blocks
//! stay the truth until the meta exists, so a lost or failed assembler
//! costs time, never data.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::StreamExt;
use md5::{Digest, Md5};
use object_store::{ObjectStoreExt, PutPayload};
use step_core::plan::{block_len, total_blocks};
use tracing::warn;

use super::assembly::{
    AssembleError, Assembler, Failed, Missing, PART_MIN, Progress, encode_sums, read_ahead,
};
use super::io::{other, store_err};
use super::{Bucket, Upload};
use crate::store::api::{PlanRecord, StoreResult};
use crate::store::files::Key;
use crate::store::sums::ChunkSums;

impl Bucket {
    /// The content of the full upload `up` of `n`, written under its own
    /// name with its sums; returns its md5. `last` is the block that
    /// completed it, if it was just staged.
    pub(super) async fn seal_upload(
        &self,
        n: &Key,
        up: &mut Upload,
        last: Option<(u64, Bytes)>,
    ) -> StoreResult<String> {
        let progress = match up.assembler.take() {
            Some(a) => a.finish(last).await,
            None => None,
        };
        let (md5, crcs) = match self.assemble(n, up, progress).await {
            Ok(done) => done,
            Err(Missing(Some(index))) => {
                // Lost from the bucket behind our back: to be sent again.
                if let Some(r) = up.received.get_mut(index as usize) {
                    *r = false;
                    up.remaining += 1;
                }
                return Err(other(format!(
                    "staged block {index} is missing; SAVE again to resume"
                )));
            }
            Err(Missing(None)) => return Err(other("completion failed")),
            Err(Failed(e)) => return Err(e),
        };
        self.store
            .put(
                &self.sums_path(n, &up.id),
                PutPayload::from(encode_sums(&crcs)),
            )
            .await
            .map_err(store_err)?;
        Ok(md5)
    }

    /// Read the staged blocks back in order and write them as the file's
    /// content; returns the md5 and the chunk CRCs computed as they pass.
    async fn assemble(
        &self,
        n: &Key,
        up: &mut Upload,
        progress: Option<Progress>,
    ) -> Result<(String, Vec<u32>), AssembleError> {
        let plan = up.plan;
        let total = total_blocks(plan.size, plan.block_size);
        let dest = self.content_path(n, &up.id);
        let held = up.held.take_all();
        let up: &Upload = up;
        let mut blocks = self.staged_blocks(n, &up.id, plan, 0..total, held);
        let mut md5 = Md5::new();
        let mut crcs = ChunkSums::default();
        let mut next = |r: Option<Result<(u64, Bytes), (u64, object_store::Error)>>| match r {
            None => Err(Missing(None)),
            Some(Ok((i, b))) => {
                if Some(b.len() as u64) != block_len(plan.size, plan.block_size, i) {
                    return Err(Missing(Some(i)));
                }
                md5.update(&b);
                crcs.update(&b);
                Ok(b)
            }
            Some(Err((i, object_store::Error::NotFound { .. }))) => Err(Missing(Some(i))),
            Some(Err((_, e))) => Err(Failed(store_err(e))),
        };
        if plan.size <= PART_MIN {
            let mut parts = Vec::with_capacity(total as usize);
            for _ in 0..total {
                parts.push(next(blocks.next().await)?);
            }
            drop(blocks);
            self.store
                .put(&dest, PutPayload::from_iter(parts))
                .await
                .map_err(|e| Failed(store_err(e)))?;
            return Ok((hex::encode(md5.finalize()), crcs.finish()));
        }
        drop(blocks);
        let mut p = match progress {
            Some(p) => p,
            None => Progress::new(
                self.store
                    .put_multipart(&dest)
                    .await
                    .map_err(|e| Failed(store_err(e)))?,
                plan,
                Arc::clone(&self.held_total),
            ),
        };
        let result = self.assemble_rest(n, up, &mut p).await;
        match result {
            Ok(()) => p.finish().await.map_err(Failed),
            Err(e) => {
                p.abort().await;
                Err(e)
            }
        }
    }

    /// Blocks `range` of upload `id`, in order: from `held` where kept, else
    /// read back from the bucket (a few GETs ahead).
    fn staged_blocks<'a>(
        &'a self,
        n: &'a Key,
        id: &'a str,
        plan: PlanRecord,
        range: std::ops::Range<u64>,
        mut held: BTreeMap<u64, Bytes>,
    ) -> impl futures::Stream<Item = Result<(u64, Bytes), (u64, object_store::Error)>> + 'a {
        futures::stream::iter(range)
            .map(move |i| {
                let kept = held.remove(&i);
                let path = self.block_path(n, id, i);
                async move {
                    if let Some(b) = kept {
                        return Ok((i, b));
                    }
                    match self.store.get(&path).await {
                        Ok(r) => r.bytes().await.map(|b| (i, b)).map_err(|e| (i, e)),
                        Err(e) => Err((i, e)),
                    }
                }
            })
            .buffered(read_ahead(plan.block_size))
    }

    /// Feed `p` every block it has not seen: from memory when it holds
    /// them, else read back from the bucket.
    async fn assemble_rest(
        &self,
        n: &Key,
        up: &Upload,
        p: &mut Progress,
    ) -> Result<(), AssembleError> {
        let plan = up.plan;
        let total = total_blocks(plan.size, plan.block_size);
        let held = p.held.take_all();
        let mut blocks = self.staged_blocks(n, &up.id, plan, p.next..total, held);
        while let Some(r) = blocks.next().await {
            let b = match r {
                Ok((i, b)) => {
                    if Some(b.len() as u64) != block_len(plan.size, plan.block_size, i) {
                        return Err(Missing(Some(i)));
                    }
                    b
                }
                Err((i, object_store::Error::NotFound { .. })) => return Err(Missing(Some(i))),
                Err((_, e)) => return Err(Failed(store_err(e))),
            };
            p.feed(b).await.map_err(Failed)?;
        }
        if p.next != total {
            return Err(Missing(None));
        }
        Ok(())
    }

    /// Start a large upload's multipart upload and the task writing its
    /// parts, `staged` being the blocks already in the bucket. `None` if the
    /// store refuses: then it is all done at completion.
    pub(super) async fn start_assembler(
        &self,
        n: &Key,
        upload_id: &str,
        plan: PlanRecord,
        staged: BTreeSet<u64>,
    ) -> Option<Assembler> {
        let Ok(permit) = Arc::clone(&self.assemblers).try_acquire_owned() else {
            return None;
        };
        match self
            .store
            .put_multipart(&self.content_path(n, upload_id))
            .await
        {
            Ok(mp) => {
                let mut p = Progress::new(mp, plan, Arc::clone(&self.held_total));
                p.staged = staged;
                Some(Assembler::start(
                    Arc::clone(&self.store),
                    self.blocks_dir(n, upload_id),
                    p,
                    permit,
                ))
            }
            Err(e) => {
                warn!(error = %e, "cannot start a multipart upload: assembling at completion");
                None
            }
        }
    }
}
