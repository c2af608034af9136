//! [`MemoryCoord`]: coordination within one process, for tests.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::{Coord, Lease, Mark, lost_lease, now_ms};
use crate::store::api::{StoreError, StoreResult};

/// Coordination within one process: several [`super::ObjectStorage`]s
/// sharing one `MemoryCoord` (and one bucket) behave as separate instances
/// would with [`RedisCoord`]. Leases never expire by themselves here (a
/// holder cannot vanish without dropping its lease); [`MemoryCoord::lapse`]
/// makes them lapse as a stalled holder's would.
#[derive(Debug, Default, Clone)]
pub struct MemoryCoord {
    state: Arc<Mutex<MemoryState>>,
    /// Woken when a lease is released or lapses.
    freed: Arc<tokio::sync::Notify>,
}

#[derive(Debug, Default)]
struct MemoryState {
    current: HashMap<String, String>,
    uploads: HashMap<String, (Vec<bool>, u64, Option<u64>)>,
    /// Held leases: name, holder's token.
    leases: HashMap<String, u64>,
    tokens: u64,
    pointers: HashMap<String, String>,
    /// When set, every operation fails as an unreachable engine would.
    down: bool,
}

impl MemoryCoord {
    pub fn new() -> MemoryCoord {
        MemoryCoord::default()
    }

    /// Leases held now (tests).
    #[cfg(test)]
    pub fn leases_held(&self) -> usize {
        self.lock().leases.len()
    }

    /// Make the engine unreachable (`true`) or reachable again (tests).
    pub fn set_down(&self, down: bool) {
        self.lock().down = down;
    }

    /// Every lease held now lapses, as if its holder had stalled past
    /// [`LEASE_TTL`]: others may take them, and their holders' commits
    /// fail (tests).
    pub fn lapse(&self) {
        self.lock().leases.clear();
        self.freed.notify_waiters();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn up(&self) -> StoreResult<std::sync::MutexGuard<'_, MemoryState>> {
        let st = self.lock();
        if st.down {
            Err(StoreError::Unavailable("coordination engine: down".into()))
        } else {
            Ok(st)
        }
    }

    /// Take `name`'s lease if it is free: the holder's token.
    fn try_lease(&self, name: &str) -> StoreResult<Option<u64>> {
        let mut st = self.up()?;
        if st.leases.contains_key(name) {
            return Ok(None);
        }
        st.tokens += 1;
        let token = st.tokens;
        st.leases.insert(name.to_owned(), token);
        Ok(Some(token))
    }
}

#[derive(Debug)]
struct MemoryLease {
    name: String,
    token: u64,
    coord: MemoryCoord,
}

impl MemoryLease {
    fn held<'a>(&self, st: &'a mut MemoryState) -> StoreResult<&'a mut MemoryState> {
        if st.leases.get(&self.name) == Some(&self.token) {
            Ok(st)
        } else {
            Err(lost_lease())
        }
    }
}

impl Drop for MemoryLease {
    fn drop(&mut self) {
        let mut st = self.coord.lock();
        if st.leases.get(&self.name) == Some(&self.token) {
            st.leases.remove(&self.name);
        }
        drop(st);
        self.coord.freed.notify_waiters();
    }
}

#[async_trait]
impl Lease for MemoryLease {
    async fn check(&self) -> StoreResult<()> {
        let mut st = self.coord.up()?;
        self.held(&mut st).map(|_| ())
    }

    async fn swap(
        &self,
        pointer: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> StoreResult<()> {
        let mut guard = self.coord.up()?;
        let st = self.held(&mut guard)?;
        if st.pointers.get(pointer).map(String::as_str) != expected {
            return Err(StoreError::Unavailable(
                "the key changed under its lease".into(),
            ));
        }
        match new {
            Some(v) => st.pointers.insert(pointer.to_owned(), v.to_owned()),
            None => st.pointers.remove(pointer),
        };
        Ok(())
    }

    async fn set_current(&self, key: &str, upload_id: Option<&str>) -> StoreResult<()> {
        let mut guard = self.coord.up()?;
        let st = self.held(&mut guard)?;
        match upload_id {
            Some(id) => {
                st.current.insert(key.to_owned(), id.to_owned());
                st.uploads.entry(id.to_owned()).or_default();
            }
            None => {
                st.current.remove(key);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Coord for MemoryCoord {
    async fn lease(&self, name: &str) -> StoreResult<Box<dyn Lease>> {
        loop {
            // Registered before trying, so a release in between wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(token) = self.try_lease(name)? {
                return Ok(Box::new(MemoryLease {
                    name: name.to_owned(),
                    token,
                    coord: self.clone(),
                }));
            }
            freed.await;
        }
    }

    async fn current(&self, key: &str) -> StoreResult<Option<String>> {
        Ok(self.up()?.current.get(key).cloned())
    }

    async fn mark_block(&self, key: &str, upload_id: &str, index: u64) -> StoreResult<Mark> {
        let mut st = self.up()?;
        if st.current.get(key).map(String::as_str) != Some(upload_id) {
            return Ok(Mark::NotCurrent);
        }
        let (bits, count, last) = st.uploads.entry(upload_id.to_owned()).or_default();
        let i = usize::try_from(index).map_err(|_| StoreError::Other("index too large".into()))?;
        if bits.len() <= i {
            bits.resize(i + 1, false);
        }
        let first = !bits[i];
        bits[i] = true;
        if first {
            *count += 1;
        }
        *last = Some(now_ms());
        Ok(Mark::Marked {
            first,
            count: *count,
        })
    }

    async fn received(&self, upload_id: &str, total: u64) -> StoreResult<(Vec<bool>, Option<u64>)> {
        let st = self.up()?;
        let (bits, last) = st
            .uploads
            .get(upload_id)
            .map_or((&[][..], None), |(b, _, l)| (b.as_slice(), *l));
        Ok((
            (0..total)
                .map(|i| bits.get(i as usize).copied().unwrap_or(false))
                .collect(),
            last,
        ))
    }

    async fn forget(&self, upload_id: &str) -> StoreResult<()> {
        self.up()?.uploads.remove(upload_id);
        Ok(())
    }

    async fn ping(&self) -> StoreResult<()> {
        self.up().map(|_| ())
    }

    async fn pointer(&self, pointer: &str) -> StoreResult<Option<String>> {
        Ok(self.up()?.pointers.get(pointer).cloned())
    }

    async fn pointers(&self, pointers: &[String]) -> StoreResult<Vec<Option<String>>> {
        let st = self.up()?;
        Ok(pointers
            .iter()
            .map(|p| st.pointers.get(p).cloned())
            .collect())
    }
}
