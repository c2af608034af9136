//! Per-key async locks, kept in a map only while someone uses them.
//!
//! [`LockMap::lock`] hands out a [`KeyGuard`]; the map's entry for a key
//! lives exactly as long as some guard or some waiter for it exists, or its
//! value still holds something ([`Idle`]). However the holder's future ends
//! — answered, failed with `?`, or dropped (a cancelled request, a
//! `select!` that took another branch) — the guard's or the waiter's drop
//! frees the entry: no code path has to remember to.
//!
//! The count of users is kept under the map's own mutex, never inferred
//! from `Arc` counts, so the order in which a cancelled future drops its
//! pieces does not matter.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::OwnedMutexGuard;

/// Whether a key's value holds nothing worth keeping once nobody uses the
/// key: then its entry goes.
pub trait Idle {
    fn idle(&self) -> bool;
}

impl Idle for () {
    fn idle(&self) -> bool {
        true
    }
}

struct Entry<V> {
    /// Guards and waiters for this key.
    users: usize,
    lock: Arc<tokio::sync::Mutex<V>>,
}

type Table<K, V> = Arc<Mutex<HashMap<K, Entry<V>>>>;

/// One async mutex per key, each holding a `V`.
pub struct LockMap<K, V = ()> {
    table: Table<K, V>,
}

impl<K, V> std::fmt::Debug for LockMap<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockMap").finish_non_exhaustive()
    }
}

impl<K, V> Default for LockMap<K, V> {
    fn default() -> Self {
        LockMap {
            table: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

fn table<K, V>(t: &Mutex<HashMap<K, Entry<V>>>) -> MutexGuard<'_, HashMap<K, Entry<V>>> {
    // A panic elsewhere must not take every key's lock down with it.
    t.lock().unwrap_or_else(|p| p.into_inner())
}

impl<K, V> LockMap<K, V>
where
    K: Eq + Hash + Clone,
    V: Default + Idle,
{
    pub fn new() -> Self {
        Self::default()
    }

    /// Lock `key`, waiting while another guard holds it.
    pub async fn lock(&self, key: K) -> KeyGuard<K, V> {
        let ticket = self.ticket(key);
        let guard = Arc::clone(&ticket.lock).lock_owned().await;
        KeyGuard {
            guard,
            _ticket: ticket,
        }
    }

    #[cfg(test)]
    /// Keys with an entry now (tests: after every user is gone, only keys
    /// whose value is not idle remain).
    pub fn len(&self) -> usize {
        table(&self.table).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn ticket(&self, key: K) -> Ticket<K, V> {
        let mut t = table(&self.table);
        let entry = t.entry(key.clone()).or_insert_with(|| Entry {
            users: 0,
            lock: Arc::default(),
        });
        entry.users += 1;
        Ticket {
            table: Arc::clone(&self.table),
            lock: Arc::clone(&entry.lock),
            key,
        }
    }
}

/// One user of a key's entry: counted from its making to its drop.
struct Ticket<K: Eq + Hash, V: Idle> {
    table: Table<K, V>,
    key: K,
    lock: Arc<tokio::sync::Mutex<V>>,
}

impl<K: Eq + Hash, V: Idle> Drop for Ticket<K, V> {
    fn drop(&mut self) {
        let mut t = table(&self.table);
        let Some(entry) = t.get_mut(&self.key) else {
            return;
        };
        if !Arc::ptr_eq(&entry.lock, &self.lock) {
            return;
        }
        entry.users -= 1;
        // Nobody holds the lock now (every holder has a ticket, and a
        // guard lets go of the lock before its ticket goes).
        if entry.users == 0 && entry.lock.try_lock().is_ok_and(|v| v.idle()) {
            t.remove(&self.key);
        }
    }
}

/// A key locked for one operation; derefs to the key's value.
pub struct KeyGuard<K: Eq + Hash, V: Idle> {
    // Declared first, so dropped first: the lock is free when the ticket
    // decides whether the entry goes.
    guard: OwnedMutexGuard<V>,
    _ticket: Ticket<K, V>,
}

impl<K: Eq + Hash, V: Idle> std::ops::Deref for KeyGuard<K, V> {
    type Target = V;
    fn deref(&self) -> &V {
        &self.guard
    }
}

impl<K: Eq + Hash, V: Idle> std::ops::DerefMut for KeyGuard<K, V> {
    fn deref_mut(&mut self) -> &mut V {
        &mut self.guard
    }
}

impl<K: Eq + Hash, V: Idle + std::fmt::Debug> std::fmt::Debug for KeyGuard<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("KeyGuard").field(&*self.guard).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[derive(Default, Debug)]
    struct Kept(Option<u32>);

    impl Idle for Kept {
        fn idle(&self) -> bool {
            self.0.is_none()
        }
    }

    #[tokio::test]
    async fn an_entry_lives_while_it_is_used_or_holds_something() {
        let map: LockMap<&str, Kept> = LockMap::new();
        {
            let mut g = map.lock("a").await;
            assert_eq!(map.len(), 1);
            g.0 = Some(7);
        }
        assert_eq!(map.len(), 1, "a value worth keeping keeps its entry");
        {
            let mut g = map.lock("a").await;
            assert_eq!(g.0, Some(7), "the same entry");
            g.0 = None;
        }
        assert!(map.is_empty(), "idle and unused: gone");
    }

    #[tokio::test]
    async fn one_holder_at_a_time() {
        let map: Arc<LockMap<u8>> = Arc::new(LockMap::new());
        let g = map.lock(1).await;
        let other = map.lock(2).await;
        drop(other);
        let waiter = tokio::spawn({
            let map = Arc::clone(&map);
            async move {
                let _g = map.lock(1).await;
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(g);
        waiter.await.expect("the waiter gets the lock");
        assert!(map.is_empty());
    }

    /// Waiters dropped before, while and after the holder lets go, and
    /// holders dropped mid-operation: whatever the order, nothing stays.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_waiters_and_holders_leave_nothing_behind() {
        let map: Arc<LockMap<u8>> = Arc::new(LockMap::new());
        for round in 0..200u32 {
            let key = (round % 3) as u8;
            let holder = map.lock(key).await;
            let mut tasks = Vec::new();
            for n in 0..4u32 {
                let map = Arc::clone(&map);
                tasks.push(tokio::spawn(async move {
                    let wait = Duration::from_micros(u64::from((round * 7 + n * 13) % 50));
                    let _ = tokio::time::timeout(wait, async {
                        let _g = map.lock(key).await;
                        tokio::task::yield_now().await;
                    })
                    .await;
                }));
            }
            tokio::select! {
                _ = map.lock(key) => unreachable!("held"),
                () = tokio::task::yield_now() => {}
            }
            if round % 2 == 0 {
                drop(holder);
                for t in tasks {
                    t.await.expect("task");
                }
            } else {
                for t in &tasks {
                    t.abort();
                }
                drop(holder);
                for t in tasks {
                    let _ = t.await;
                }
            }
        }
        assert!(map.is_empty(), "{} entries left", map.len());
    }
}
