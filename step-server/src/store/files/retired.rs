//! Version ids, and the versions this process replaced, with when: the
//! sweep removes them once their grace is over (see `versions.rs`).

use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use super::backend::Key;
use super::ledger::unix_ms;

/// Version ids are ours (hex); anything else a client sends names nothing.
pub fn version_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// Versions replaced by this process, with when (ms).
#[derive(Debug, Default)]
pub(super) struct Retired(Mutex<Vec<(Key, String, u64)>>);

impl Retired {
    fn list(&self) -> MutexGuard<'_, Vec<(Key, String, u64)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn push(&self, key: &Key, id: &str) {
        self.list()
            .push((key.clone(), id.to_owned(), unix_ms(SystemTime::now())));
    }

    /// Take those retired at `cutoff_ms` or before.
    pub(super) fn due(&self, cutoff_ms: u64) -> Vec<(Key, String)> {
        let mut list = self.list();
        let (due, keep) = list.drain(..).partition(|r| r.2 <= cutoff_ms);
        *list = keep;
        due.into_iter().map(|(k, id, _)| (k, id)).collect()
    }
}
