//! Moving a whole file over several connections at once.
//!
//! A big file goes faster over a few connections, each with its own
//! pipelining window: the server writes blocks of one upload from several
//! tasks at once, and a single stalled round trip no longer idles the
//! transfer. Blocks are handed out through one bounded channel, so memory
//! stays at `connections × window` blocks whatever the file size, and a fast
//! connection simply takes more blocks.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::client::{ClientError, DownloadPlan, StepClient, UploadTarget};

/// Upload `blocks` (index, data) to `key` over every client in `clients`
/// (each already holding a token), `window` blocks in flight on each.
/// Returns the md5 the server reported when the file completed.
pub async fn upload_spread<'a, S>(
    clients: &mut [&mut StepClient],
    target: impl Into<UploadTarget<'a>>,
    blocks: S,
    window: usize,
    on_block: &(dyn Fn(u64) + Sync),
) -> Result<Option<String>, ClientError>
where
    S: Stream<Item = Result<(u64, Bytes), ClientError>>,
{
    let window = window.max(1);
    let target = target.into();
    let (tx, rx) = async_channel::bounded::<(u64, Bytes)>(clients.len().max(1) * window);
    let feed = feed(blocks, &tx);
    let workers = clients.iter_mut().map(|client| {
        let rx = rx.clone();
        async move {
            let result = client
                .upload_blocks(target, rx.clone().map(Ok), window, on_block)
                .await;
            if result.is_err() {
                // Stop the feeder and the other workers: the upload failed.
                rx.close();
            }
            result
        }
    });
    let (fed, results) = futures::join!(feed, futures::future::join_all(workers));
    // The source's own error first: the workers then only saw the feed end.
    fed?;
    let mut md5 = None;
    for r in results {
        if let Some(m) = r? {
            md5 = Some(m);
        }
    }
    Ok(md5)
}

/// Move `blocks` into `tx` until they end, the first error (returned), or
/// every receiver gone; then close `tx`, so the workers draining it end.
/// The source's error is the caller's to report first: the workers only see
/// the channel close.
pub async fn feed<T, E>(
    blocks: impl Stream<Item = Result<T, E>>,
    tx: &async_channel::Sender<T>,
) -> Result<(), E> {
    let mut blocks = std::pin::pin!(blocks);
    let mut fed = Ok(());
    while let Some(item) = blocks.next().await {
        match item {
            Ok(block) => {
                if tx.send(block).await.is_err() {
                    break; // every worker stopped
                }
            }
            Err(e) => {
                fed = Err(e);
                break;
            }
        }
    }
    tx.close();
    fed
}

/// Download every block of `plan` over every client in `clients`, `window`
/// in flight on each. `on_block(index, data)` is called as blocks arrive,
/// in no particular order across connections.
pub async fn download_spread(
    clients: &mut [&mut StepClient],
    plan: &DownloadPlan,
    window: usize,
    on_block: &(dyn Fn(u64, Bytes) -> Result<(), ClientError> + Sync),
) -> Result<(), ClientError> {
    spread(clients, plan, plan.total_block, &|n| n, window, on_block).await
}

/// Like [`download_spread`] for only the blocks `indexes` (a resumed
/// download fetches what it lacks).
pub async fn download_spread_indexes(
    clients: &mut [&mut StepClient],
    plan: &DownloadPlan,
    indexes: &[u64],
    window: usize,
    on_block: &(dyn Fn(u64, Bytes) -> Result<(), ClientError> + Sync),
) -> Result<(), ClientError> {
    let count = indexes.len() as u64;
    let nth = |n: u64| indexes[usize::try_from(n).unwrap_or(usize::MAX)];
    spread(clients, plan, count, &nth, window, on_block).await
}

/// The `count` blocks `nth(0..count)`, handed out one at a time to whichever
/// connection asks next.
async fn spread(
    clients: &mut [&mut StepClient],
    plan: &DownloadPlan,
    count: u64,
    nth: &(dyn Fn(u64) -> u64 + Sync),
    window: usize,
    on_block: &(dyn Fn(u64, Bytes) -> Result<(), ClientError> + Sync),
) -> Result<(), ClientError> {
    let next = AtomicU64::new(0);
    let workers = clients.iter_mut().map(|client| {
        let next = &next;
        async move {
            let indexes = std::iter::from_fn(|| {
                let n = next.fetch_add(1, Ordering::Relaxed);
                (n < count).then(|| nth(n))
            });
            let result = client
                .download_blocks(plan, indexes, window, on_block)
                .await;
            if result.is_err() {
                next.store(count, Ordering::Relaxed);
            }
            result
        }
    });
    for r in futures::future::join_all(workers).await {
        r?;
    }
    Ok(())
}
