//! A file's content written from its staged blocks: at completion (one PUT
//! for a small file; a multipart upload for a large one), or — for large
//! uploads alone on their bucket — while the blocks arrive, by an
//! [`Assembler`] task, so completion has only the tail left. The md5 and
//! the chunk CRCs are computed over the content in order as it passes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use md5::{Digest, Md5};
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, UploadPart};
use step_core::plan::{block_len, total_blocks};
use tracing::warn;

use super::{Bucket, PART_MIN, Upload, other, store_err};
use crate::store::api::{PlanRecord, StoreError, StoreResult};
use crate::store::files::Key;
use crate::store::sums::ChunkSums;

/// Parts per file at most (AWS allows 10,000).
const MAX_PARTS: u64 = 9_000;
/// Bytes of staged blocks read back at once (small requests are slow on
/// some servers: Garage answers each in 45–90 ms, so depth matters).
const READ_AHEAD_BYTES: u64 = 2 << 20;

/// Staged blocks read back concurrently.
fn read_ahead(block_size: u64) -> usize {
    usize::try_from(READ_AHEAD_BYTES / block_size.max(1))
        .unwrap_or(64)
        .clamp(4, 64)
}
/// Multipart parts in flight at once during completion.
const PARTS_IN_FLIGHT: usize = 2;

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

/// Blocks kept in memory so they need not be read back from the bucket,
/// within a per-upload cap and a budget shared by the whole store.
#[derive(Debug)]
pub(super) struct Held {
    map: BTreeMap<u64, Bytes>,
    bytes: u64,
    cap: u64,
    total: Arc<AtomicU64>,
}

impl Held {
    pub(super) fn new(total: Arc<AtomicU64>, cap: u64) -> Held {
        Held {
            map: BTreeMap::new(),
            bytes: 0,
            cap,
            total,
        }
    }

    /// Keep block `i` if the budgets allow.
    pub(super) fn hold(&mut self, i: u64, b: Bytes) -> bool {
        let len = b.len() as u64;
        if self.map.contains_key(&i) || self.bytes + len > self.cap {
            return false;
        }
        let before = self.total.fetch_add(len, Ordering::Relaxed);
        if before + len > HELD_BYTES_TOTAL {
            self.total.fetch_sub(len, Ordering::Relaxed);
            return false;
        }
        self.bytes += len;
        self.map.insert(i, b);
        true
    }

    fn contains(&self, i: u64) -> bool {
        self.map.contains_key(&i)
    }

    pub(super) fn get(&self, i: u64) -> Option<Bytes> {
        self.map.get(&i).cloned()
    }

    pub(super) fn take(&mut self, i: u64) -> Option<Bytes> {
        let b = self.map.remove(&i)?;
        self.bytes -= b.len() as u64;
        self.total.fetch_sub(b.len() as u64, Ordering::Relaxed);
        Some(b)
    }

    /// Everything held (no longer counted against the budgets: consumed
    /// right away by the completion).
    fn take_all(&mut self) -> BTreeMap<u64, Bytes> {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        std::mem::take(&mut self.map)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A large file's content being written as a multipart upload, in order:
/// blocks `[0, next)` are hashed and in parts (sent, or in `part`), and
/// `held` keeps early blocks in memory (up to [`HELD_BYTES`]).
struct Progress {
    mp: Box<dyn MultipartUpload>,
    part_size: u64,
    next: u64,
    md5: Md5,
    crcs: ChunkSums,
    part: Vec<Bytes>,
    part_len: u64,
    in_flight: FuturesUnordered<UploadPart>,
    held: Held,
    read_ahead: usize,
    /// Early blocks known staged but not held (read back when reached).
    staged: BTreeSet<u64>,
}

/// Early blocks one upload's assembly keeps in memory, at most.
const HELD_BYTES: u64 = 32 << 20;
/// Large uploads whose parts are written while their blocks arrive, at
/// most; others are assembled at completion (with read-back). Bounds the
/// memory of part buffers: ~24 MiB each.
pub(super) const MAX_ASSEMBLERS: usize = 16;
/// Early blocks all assemblies keep in memory, at most.
const HELD_BYTES_TOTAL: u64 = 256 << 20;

impl Progress {
    fn new(mp: Box<dyn MultipartUpload>, plan: PlanRecord, held_total: Arc<AtomicU64>) -> Progress {
        Progress {
            mp,
            part_size: PART_MIN.max(plan.size.div_ceil(MAX_PARTS)),
            next: 0,
            md5: Md5::new(),
            crcs: ChunkSums::default(),
            part: Vec::new(),
            part_len: 0,
            in_flight: FuturesUnordered::new(),
            held: Held::new(held_total, HELD_BYTES),
            read_ahead: read_ahead(plan.block_size),
            staged: BTreeSet::new(),
        }
    }

    /// Append block `next`.
    async fn feed(&mut self, b: Bytes) -> StoreResult<()> {
        self.md5.update(&b);
        self.crcs.update(&b);
        self.part_len += b.len() as u64;
        self.part.push(b);
        self.next += 1;
        if self.part_len >= self.part_size {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> StoreResult<()> {
        let part = PutPayload::from_iter(std::mem::take(&mut self.part));
        self.part_len = 0;
        self.in_flight.push(self.mp.put_part(part));
        while self.in_flight.len() >= PARTS_IN_FLIGHT {
            if let Some(r) = self.in_flight.next().await {
                r.map_err(store_err)?;
            }
        }
        Ok(())
    }

    /// The last part, then the multipart's completion: the content is in
    /// place (not yet a file: no meta).
    async fn finish(mut self) -> StoreResult<(String, Vec<u32>)> {
        let done: StoreResult<()> = async {
            if !self.part.is_empty() {
                self.flush().await?;
            }
            while let Some(r) = self.in_flight.next().await {
                r.map_err(store_err)?;
            }
            self.mp.complete().await.map_err(store_err)?;
            Ok(())
        }
        .await;
        match done {
            Ok(()) => Ok((
                hex::encode(std::mem::take(&mut self.md5).finalize()),
                std::mem::take(&mut self.crcs).finish(),
            )),
            Err(e) => {
                self.abort().await;
                Err(e)
            }
        }
    }

    async fn abort(&mut self) {
        self.in_flight.clear();
        if let Err(e) = self.mp.abort().await {
            warn!(error = %e, "cannot abort a multipart upload");
        }
    }
}

/// A task that writes a large upload's parts while its blocks arrive, so
/// completion has only the tail left. Fed `(index, bytes)` of every block
/// once staged; blocks in order go straight into parts (never read back),
/// early ones are held in memory up to [`HELD_BYTES`] or read back when
/// the prefix reaches them. Only a cache: the staged blocks stay the truth
/// until the meta is written, so a lost or failed assembler costs time,
/// never data.
pub(super) struct Assembler {
    pub(super) tx: tokio::sync::mpsc::Sender<(u64, Bytes)>,
    pub(super) cancel: tokio_util::sync::CancellationToken,
    done: tokio::task::JoinHandle<StoreResult<Progress>>,
}

impl std::fmt::Debug for Assembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembler").finish_non_exhaustive()
    }
}

impl Assembler {
    fn start(
        store: Arc<dyn ObjectStore>,
        blocks_dir: Path,
        p: Progress,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Assembler {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, Bytes)>(64);
        let cancel = tokio_util::sync::CancellationToken::new();
        let stop = cancel.clone();
        let done = tokio::spawn(async move {
            let _permit = permit;
            let mut p = p;
            let run = async {
                // Blocks staged before it started (a reloaded upload).
                advance(&mut p, &store, &blocks_dir).await?;
                while let Some((i, b)) = rx.recv().await {
                    if i < p.next || p.held.contains(i) || p.staged.contains(&i) {
                        continue;
                    }
                    if i == p.next {
                        p.feed(b).await?;
                    } else if !p.held.hold(i, b) {
                        p.staged.insert(i);
                    }
                    advance(&mut p, &store, &blocks_dir).await?;
                }
                Ok::<(), StoreError>(())
            };
            let result = tokio::select! {
                r = run => r,
                () = stop.cancelled() => Err(other("upload discarded")),
            };
            match result {
                Ok(()) => Ok(p),
                Err(e) => {
                    p.abort().await;
                    Err(e)
                }
            }
        });
        Assembler { tx, cancel, done }
    }

    /// Hand over the last block (if any), wait for what was sent before,
    /// and take the progress made; `None` if the assembler failed.
    async fn finish(self, last: Option<(u64, Bytes)>) -> Option<Progress> {
        if let Some(b) = last {
            let _ = self.tx.send(b).await;
        }
        drop(self.tx);
        match self.done.await {
            Ok(Ok(p)) => Some(p),
            Ok(Err(e)) => {
                warn!(error = %e, "progressive assembly failed: assembling at completion");
                None
            }
            Err(e) => {
                warn!(error = %e, "progressive assembly stopped: assembling at completion");
                None
            }
        }
    }
}

/// Feed `p` the blocks that follow its prefix and that it holds or knows
/// staged, reading the staged ones back [`read_ahead`] at a time.
async fn advance(p: &mut Progress, store: &Arc<dyn ObjectStore>, dir: &Path) -> StoreResult<()> {
    loop {
        let mut run: Vec<(u64, Option<Bytes>)> = Vec::new();
        let mut i = p.next;
        while run.len() < 64 {
            if let Some(b) = p.held.take(i) {
                run.push((i, Some(b)));
            } else if p.staged.remove(&i) {
                run.push((i, None));
            } else {
                break;
            }
            i += 1;
        }
        if run.is_empty() {
            return Ok(());
        }
        let depth = p.read_ahead;
        let mut blocks = futures::stream::iter(run)
            .map(|(i, kept)| {
                let path = dir.clone().join(i.to_string().as_str());
                let store = Arc::clone(store);
                async move {
                    match kept {
                        Some(b) => Ok(b),
                        None => store.get(&path).await?.bytes().await,
                    }
                }
            })
            .buffered(depth);
        while let Some(b) = blocks.next().await {
            p.feed(b.map_err(store_err)?).await?;
        }
    }
}

/// The sums object: one little-endian u32 per chunk, nothing else (its
/// path carries the upload id, which ties it to the very content).
fn encode_sums(crcs: &[u32]) -> Vec<u8> {
    crcs.iter().flat_map(|c| c.to_le_bytes()).collect()
}

/// Why an assembly stopped.
enum AssembleError {
    /// A staged block is missing or has the wrong length (its index), or the
    /// block stream ended early.
    Missing(Option<u64>),
    Failed(StoreError),
}
use AssembleError::{Failed, Missing};
