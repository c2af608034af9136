//! The pieces that write a large file's content as a multipart upload in
//! order ([`Progress`]), while its blocks arrive ([`Assembler`], a task for
//! an upload alone on its bucket, so completion has only the tail left),
//! keeping early blocks in memory within budgets ([`Held`]). The md5 and
//! the chunk CRCs are computed over the content in order as it passes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use md5::{Digest, Md5};
use object_store::path::Path;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutPayload, UploadPart};
use tracing::warn;

use super::io::{other, store_err};
use crate::store::api::{PlanRecord, StoreError, StoreResult};
use crate::store::sums::ChunkSums;

/// Parts per file at most (AWS allows 10,000).
const MAX_PARTS: u64 = 9_000;
/// Smallest multipart part written (AWS requires 5 MiB but for the last).
pub const PART_MIN: u64 = 8 << 20;
/// Bytes of staged blocks read back at once (small requests are slow on
/// some servers: Garage answers each in 45–90 ms, so depth matters).
const READ_AHEAD_BYTES: u64 = 2 << 20;

/// Staged blocks read back concurrently.
pub(super) fn read_ahead(block_size: u64) -> usize {
    usize::try_from(READ_AHEAD_BYTES / block_size.max(1))
        .unwrap_or(64)
        .clamp(4, 64)
}
/// Multipart parts in flight at once during completion.
const PARTS_IN_FLIGHT: usize = 2;

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

    pub(super) fn contains(&self, i: u64) -> bool {
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
    pub(super) fn take_all(&mut self) -> BTreeMap<u64, Bytes> {
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
pub(super) struct Progress {
    pub(super) mp: Box<dyn MultipartUpload>,
    pub(super) part_size: u64,
    pub(super) next: u64,
    pub(super) md5: Md5,
    pub(super) crcs: ChunkSums,
    pub(super) part: Vec<Bytes>,
    pub(super) part_len: u64,
    pub(super) in_flight: FuturesUnordered<UploadPart>,
    pub(super) held: Held,
    pub(super) read_ahead: usize,
    /// Early blocks known staged but not held (read back when reached).
    pub(super) staged: BTreeSet<u64>,
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
    pub(super) fn new(
        mp: Box<dyn MultipartUpload>,
        plan: PlanRecord,
        held_total: Arc<AtomicU64>,
    ) -> Progress {
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
    pub(super) async fn feed(&mut self, b: Bytes) -> StoreResult<()> {
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
    pub(super) async fn finish(mut self) -> StoreResult<(String, Vec<u32>)> {
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

    pub(super) async fn abort(&mut self) {
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
    pub(super) fn start(
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
    pub(super) async fn finish(self, last: Option<(u64, Bytes)>) -> Option<Progress> {
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
pub(super) fn encode_sums(crcs: &[u32]) -> Vec<u8> {
    crcs.iter().flat_map(|c| c.to_le_bytes()).collect()
}

/// Why an assembly stopped.
pub(super) enum AssembleError {
    /// A staged block is missing or has the wrong length (its index), or the
    /// block stream ended early.
    Missing(Option<u64>),
    Failed(StoreError),
}
pub(super) use AssembleError::{Failed, Missing};
