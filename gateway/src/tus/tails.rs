//! Per upload, the lock that serialises its requests and the partial block
//! (less than one block) its last PATCH left, which this process keeps
//! and reports in the offset.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit};

use super::UploadRef;
use crate::AppState;
use crate::error::GatewayError;

/// How long a request waits for another request on the same upload (a
/// PATCH whose client went away is noticed when its body fails).
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// Tails kept at once, whatever their size (each also counts its bytes
/// against --max-buffered-bytes).
const MAX_TAILS: usize = 10_000;

/// Which upload a request is about: whose, under which key, which upload
/// (none: an empty file, complete at creation).
type UploadId = (String, String, Option<String>);

type SlotMap = Arc<Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<Slot>>>>>;

/// Per upload: the lock that serialises its requests and the partial block
/// its last PATCH left, if kept.
#[derive(Debug, Default)]
pub struct Tails {
    slots: SlotMap,
}

#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) tail: Option<Tail>,
}

/// Bytes after the last stored block, starting at `at` (block-aligned).
#[derive(Debug)]
pub(super) struct Tail {
    at: u64,
    pub(super) bytes: Bytes,
    _budget: OwnedSemaphorePermit,
}

/// One request's hold on an upload; the slot is forgotten when released
/// with no tail and nobody else waiting.
pub(super) struct SlotGuard {
    slots: SlotMap,
    id: UploadId,
    guard: Option<OwnedMutexGuard<Slot>>,
}

impl std::fmt::Debug for SlotGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotGuard")
            .field("key", &self.id.1)
            .finish()
    }
}

fn lock_map<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tails {
    /// Wait (up to [`LOCK_WAIT`]) until no other request of `user` works
    /// on upload `r`. Requests on one upload are serialised on purpose, I/O
    /// included: its offset is only meaningful between them.
    pub(super) async fn lock(&self, user: &str, r: &UploadRef) -> Result<SlotGuard, GatewayError> {
        let id = (user.to_owned(), r.key.clone(), r.upload_id.clone());
        let slot = Arc::clone(lock_map(&self.slots).entry(id.clone()).or_default());
        let guard = tokio::time::timeout(LOCK_WAIT, slot.lock_owned())
            .await
            .map_err(|_| {
                GatewayError::Locked(
                    "another request is writing this upload; try again shortly".into(),
                )
            })?;
        Ok(SlotGuard {
            slots: Arc::clone(&self.slots),
            id,
            guard: Some(guard),
        })
    }

    pub fn kept(&self) -> usize {
        lock_map(&self.slots).len()
    }
}

impl SlotGuard {
    pub(super) fn slot(&mut self) -> &mut Slot {
        self.guard.as_mut().expect("held until drop")
    }

    /// The kept tail, when it continues the server's prefix `at`.
    pub(super) fn take_tail(&mut self, at: u64) -> Option<Tail> {
        self.slot().tail.take().filter(|t| t.at == at)
    }

    /// Keep `bytes` (less than one block) after the stored prefix `at`, if
    /// the budget allows; returns how many bytes were kept.
    pub(super) fn keep(&mut self, st: &AppState, at: u64, bytes: Bytes) -> u64 {
        self.slot().tail = None;
        if bytes.is_empty() || lock_map(&self.slots).len() > MAX_TAILS {
            return 0;
        }
        let Ok(n) = u32::try_from(bytes.len()) else {
            return 0;
        };
        let Ok(budget) = Arc::clone(&st.buffered).try_acquire_many_owned(n) else {
            return 0;
        };
        let len = bytes.len() as u64;
        self.slot().tail = Some(Tail {
            at,
            bytes,
            _budget: budget,
        });
        len
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let Some(guard) = self.guard.take() else {
            return;
        };
        let empty = guard.tail.is_none();
        let slot = Arc::clone(OwnedMutexGuard::mutex(&guard));
        drop(guard);
        if !empty {
            return;
        }
        let mut map = lock_map(&self.slots);
        // The map's reference and ours: nobody else waits for it, and a new
        // waiter would need the map lock we hold.
        if Arc::strong_count(&slot) == 2 && map.get(&self.id).is_some_and(|s| Arc::ptr_eq(s, &slot))
        {
            map.remove(&self.id);
        }
    }
}
