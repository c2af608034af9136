//! Cancellation, as a server sees it: requests whose futures are dropped at
//! any await point (a client that hangs up, a `select!` that took another
//! branch, a timeout). Driven against any storage; each backend's tests
//! call [`cancel_everything`] and then show its lock map empty.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{PlanRecord, Replace, Storage, StoreError};

const BS: u64 = 1000;
const KEYS: usize = 3;
const ROUNDS: usize = 120;
const RACERS: usize = 4;

/// A future that is ready after it has been polled `n` times: with
/// `biased` `select!`, the operation beside it is dropped after exactly
/// `n` of its own polls.
async fn polls(n: usize) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

/// `op`, dropped after `n` polls (or at once, through a zero timeout, when
/// `n` is 0); what it answered if it got that far.
async fn cut<T>(n: usize, op: impl Future<Output = T>) -> Option<T> {
    if n == 0 {
        return tokio::time::timeout(Duration::ZERO, op).await.ok();
    }
    tokio::select! {
        biased;
        r = op => Some(r),
        () = polls(n) => None,
    }
}

fn body(round: usize) -> Vec<u8> {
    (0..(2 * BS as usize + round % 7))
        .map(|i| (i * 31 + round) as u8)
        .collect()
}

/// SAVE, then every block: the whole upload one request after another.
async fn upload(s: &dyn Storage, key: &str, body: &[u8], replace: bool) -> Result<(), StoreError> {
    let plan = PlanRecord {
        size: body.len() as u64,
        block_size: BS,
    };
    // Resumes the upload a cut-short attempt left, as its writer would.
    let own = s.upload_status("u", key).await.ok().map(|u| u.upload_id);
    let out = if replace {
        s.plan_replace("u", key, plan, own.as_deref(), Replace::default())
            .await?
    } else {
        s.plan_upload("u", key, plan, own.as_deref()).await?
    };
    for [from, to] in out.missing {
        for i in from..to {
            let start = (i * BS) as usize;
            let end = (start + BS as usize).min(body.len());
            let w = s.open_upload("u", key).await?;
            w.put_block(
                i,
                Bytes::copy_from_slice(&body[start..end]),
                out.upload_id.clone(),
            )
            .await?;
        }
    }
    Ok(())
}

/// One racer: SAVE, UPLOAD, DELETE (plain, scoped, conditional), replace
/// and sweeps on a few keys, each cut after a different number of polls.
async fn racer(s: Arc<dyn Storage>, me: usize) {
    for round in 0..ROUNDS {
        // Shared keys, where requests wait for each other's locks, and
        // keys used once, whose entry nobody else would ever clean up.
        let key = if round % 3 == 0 {
            format!("once-{me}-{round}")
        } else {
            format!("k{}", (round + me) % KEYS)
        };
        let n = (round * 7 + me * 3) % 23;
        let body = body(round);
        let s = &*s;
        // Whatever they answer, they answer with a storage error (a refusal
        // or a race lost), never a panic; only the locks are checked here.
        match round % 6 {
            0 | 1 => drop(cut(n, upload(s, &key, &body, false)).await),
            2 => drop(cut(n, upload(s, &key, &body, true)).await),
            3 => drop(cut(n, s.delete_file("u", &key, None)).await),
            4 => drop(
                cut(
                    n,
                    s.delete_file_if("u", &key, "00000000000000000000000000000000"),
                )
                .await,
            ),
            _ => drop(cut(n, s.sweep_expired(std::time::SystemTime::now())).await),
        }
    }
}

/// Race [`RACERS`] tasks of cancelled requests over a few keys, wait for
/// `settled` (work a cancelled request left running, where a store has
/// such), then delete what they left (uncancelled: the shared keys by
/// DELETE, the rest by a sweep from far in the future), so that nothing is
/// worth keeping.
pub(crate) async fn cancel_everything(s: Arc<dyn Storage>, settled: impl Future<Output = ()>) {
    let tasks: Vec<_> = (0..RACERS)
        .map(|me| tokio::spawn(racer(Arc::clone(&s), me)))
        .collect();
    for t in tasks {
        t.await.expect("a racer panicked");
    }
    settled.await;
    for k in 0..KEYS {
        // A replacing upload outlives the file it replaces: a second DELETE
        // takes it.
        loop {
            match s.delete_file("u", &format!("k{k}"), None).await {
                Ok(_) => {}
                Err(StoreError::NotFound) => break,
                Err(e) => panic!("cleanup of k{k}: {e}"),
            }
        }
    }
    let later = std::time::SystemTime::now() + Duration::from_secs(90 * 86_400);
    s.sweep_expired(later).await.expect("sweep");
}
