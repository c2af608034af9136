//! The accounts of unfinished uploads, kept in memory by every store: bytes
//! planned and received, when each was last used, and whether a request is
//! writing to it. SAVE reserves against the per-user caps here, metrics add
//! it up, the sweeper asks it which uploads are idle. Apart from the key
//! locks, so that none of this waits for I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::store::api::{StoreResult, UnfinishedStats};
use crate::store::limits::StoreLimits;

/// A key's identity inside one store: its user and key as that store
/// encodes them (injective, and what it files them under).
pub type KeyId = (String, String);

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What the accounts see of one upload without its key's lock: bytes
/// received and last use, updated by whoever writes a block.
#[derive(Debug, Default)]
pub struct Activity {
    pub received: AtomicU64,
    /// Milliseconds since the Unix epoch of the last SAVE or block.
    pub last_ms: AtomicU64,
    /// Requests holding the upload open for a block ([`Writing`]).
    writers: AtomicUsize,
}

impl Activity {
    pub fn new(received: u64, last: SystemTime) -> Arc<Activity> {
        Arc::new(Activity {
            received: AtomicU64::new(received),
            last_ms: AtomicU64::new(unix_ms(last)),
            writers: AtomicUsize::new(0),
        })
    }

    /// Used now: the sweeper leaves it for another expiry.
    pub fn touch(&self, now: SystemTime) {
        self.last_ms.fetch_max(unix_ms(now), Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Entry {
    planned: u64,
    activity: Arc<Activity>,
}

impl Entry {
    /// Bytes planned and not received yet.
    fn promised(&self) -> u64 {
        self.planned
            .saturating_sub(self.activity.received.load(Ordering::Relaxed))
    }

    fn idle_since(&self, cutoff_ms: u64) -> bool {
        self.activity.last_ms.load(Ordering::Relaxed) < cutoff_ms
            && self.activity.writers.load(Ordering::Acquire) == 0
    }
}

/// Every unfinished upload a store knows of, by key.
#[derive(Debug, Default)]
pub struct Ledger {
    entries: Mutex<HashMap<KeyId, Entry>>,
}

/// A request holding an upload open for a block: the sweeper leaves the
/// upload alone, however idle it looks, until this is dropped.
#[derive(Debug)]
pub struct Writing(Arc<Activity>);

impl Drop for Writing {
    fn drop(&mut self) {
        self.0.writers.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Ledger {
    fn entries(&self) -> MutexGuard<'_, HashMap<KeyId, Entry>> {
        // A panic elsewhere must not take the accounts down with it.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count a new upload of `planned` bytes under `id`, if its user's
    /// caps allow one more (checked and counted in one step, so racing
    /// SAVEs of one user cannot both pass the last place).
    pub fn reserve(
        &self,
        id: &KeyId,
        planned: u64,
        limits: &StoreLimits,
    ) -> StoreResult<Arc<Activity>> {
        let mut entries = self.entries();
        let (count, bytes) = entries
            .iter()
            .filter(|(other, _)| other.0 == id.0 && other.1 != id.1)
            .fold((0u64, 0u64), |(n, b), (_, e)| {
                (n + 1, b.saturating_add(e.planned))
            });
        limits.admit_unfinished(count, bytes, planned)?;
        let activity = Activity::new(0, SystemTime::now());
        entries.insert(
            id.clone(),
            Entry {
                planned,
                activity: Arc::clone(&activity),
            },
        );
        Ok(activity)
    }

    /// Count an upload found in the store (at start, or loaded), keeping
    /// what is counted already; returns its activity.
    pub fn found(&self, id: &KeyId, planned: u64, activity: Arc<Activity>) -> Arc<Activity> {
        let mut entries = self.entries();
        let e = entries
            .entry(id.clone())
            .or_insert(Entry { planned, activity });
        Arc::clone(&e.activity)
    }

    /// An upload loaded from the store: `received` bytes of it are there,
    /// the last of them at `last_ms` (the latest known use counts).
    pub fn loaded(&self, id: &KeyId, planned: u64, received: u64, last_ms: u64) {
        let mut entries = self.entries();
        let e = entries.entry(id.clone()).or_insert_with(|| Entry {
            planned,
            activity: Arc::default(),
        });
        e.planned = planned;
        e.activity.received.store(received, Ordering::Relaxed);
        e.activity.last_ms.fetch_max(last_ms, Ordering::Relaxed);
    }

    pub fn get(&self, id: &KeyId) -> Option<Arc<Activity>> {
        self.entries().get(id).map(|e| Arc::clone(&e.activity))
    }

    /// The upload under `id` completed or went.
    pub fn remove(&self, id: &KeyId) {
        self.entries().remove(id);
    }

    /// A SAVE or block used the upload now; `received` more bytes of it.
    pub fn touch(&self, id: &KeyId, received: u64) {
        if let Some(e) = self.entries().get(id) {
            e.activity.received.fetch_add(received, Ordering::Relaxed);
            e.activity.touch(SystemTime::now());
        }
    }

    /// Mark the upload under `id` as being written until the guard goes.
    pub fn writing(&self, id: &KeyId) -> Option<Writing> {
        let activity = Arc::clone(&self.entries().get(id)?.activity);
        activity.writers.fetch_add(1, Ordering::AcqRel);
        Some(Writing(activity))
    }

    /// Totals, for metrics.
    pub fn stats(&self) -> UnfinishedStats {
        let mut stats = UnfinishedStats::default();
        for e in self.entries().values() {
            stats.count += 1;
            stats.bytes_planned += e.planned;
            stats.bytes_received += e.activity.received.load(Ordering::Relaxed);
        }
        stats
    }

    /// Bytes planned by every unfinished upload and not received yet: what
    /// a store with sparse files has promised beyond what it holds.
    pub fn promised(&self) -> u64 {
        self.entries()
            .values()
            .fold(0u64, |sum, e| sum.saturating_add(e.promised()))
    }

    /// Uploads not used since `cutoff_ms` and not being written.
    pub fn idle(&self, cutoff_ms: u64) -> Vec<KeyId> {
        self.entries()
            .iter()
            .filter(|(_, e)| e.idle_since(cutoff_ms))
            .map(|(id, _)| id.clone())
            .collect()
    }

    pub fn is_idle(&self, id: &KeyId, cutoff_ms: u64) -> bool {
        self.entries()
            .get(id)
            .is_some_and(|e| e.idle_since(cutoff_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn id(user: &str, key: &str) -> KeyId {
        (user.to_owned(), key.to_owned())
    }

    #[test]
    fn caps_count_other_keys_of_the_same_user() {
        let limits = StoreLimits {
            max_unfinished_uploads_per_user: 2,
            max_unfinished_bytes_per_user: 100,
            ..StoreLimits::default()
        };
        let l = Ledger::default();
        l.reserve(&id("u", "a"), 40, &limits).expect("a");
        l.reserve(&id("u", "a"), 40, &limits)
            .expect("a again is no new one");
        l.reserve(&id("u", "b"), 40, &limits).expect("b");
        assert!(matches!(
            l.reserve(&id("u", "c"), 1, &limits),
            Err(StoreError::Quota(_))
        ));
        l.reserve(&id("v", "c"), 100, &limits)
            .expect("another user");
        assert_eq!(l.stats().count, 3);
        assert_eq!(l.promised(), 180);
    }

    #[test]
    fn an_upload_being_written_is_never_idle() {
        let l = Ledger::default();
        let a = l
            .reserve(&id("u", "a"), 10, &StoreLimits::default())
            .expect("a");
        let later = unix_ms(SystemTime::now()) + 1000;
        assert_eq!(l.idle(later), vec![id("u", "a")]);
        let w = l.writing(&id("u", "a")).expect("known");
        assert!(l.idle(later).is_empty());
        assert!(!l.is_idle(&id("u", "a"), later));
        drop(w);
        assert!(l.is_idle(&id("u", "a"), later));
        a.touch(SystemTime::now() + std::time::Duration::from_secs(5));
        assert!(!l.is_idle(&id("u", "a"), later));
    }
}
