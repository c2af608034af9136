//! Several interchangeable STEP servers (`--backend a,b,c`), one pool each:
//! which backend a session comes from — the least loaded that is up, the
//! one a request's earlier blocks went to, or any but those a download lost
//! — and the load count each session holds while on loan.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use super::pool::Pool;

/// The STEP servers of `--backend`, one pool each.
#[derive(Debug)]
pub(super) struct Members {
    pub list: Vec<Member>,
    /// Where the next tie between equally loaded backends starts.
    pub turn: AtomicUsize,
}

/// One STEP server of `--backend`.
#[derive(Debug)]
pub(super) struct Member {
    pub pool: Pool,
    /// The login lane ([`super::LOGIN_LANE`] connections).
    pub logins: Pool,
    /// What the health probes last concluded (always true with one backend:
    /// it is then used whatever the probes say, as before there were several).
    pub up: AtomicBool,
    /// Probes failed in a row.
    pub failures: AtomicU32,
    /// Sessions on loan from this backend: the load requests are balanced on.
    pub in_flight: AtomicUsize,
}

impl Member {
    pub fn new(pool: Pool, logins: Pool) -> Self {
        Self {
            pool,
            logins,
            // Up until probes say otherwise: requests need not wait for the
            // first round.
            up: AtomicBool::new(true),
            failures: AtomicU32::new(0),
            in_flight: AtomicUsize::new(0),
        }
    }

    pub fn addr(&self) -> &str {
        &self.pool.manager().addr
    }
}

/// Which backend a session may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    /// The least loaded backend that is up.
    #[default]
    Any,
    /// This backend only (a request's later blocks, where its first went).
    On(usize),
    /// Any backend that is up, except these (a bit per backend): those a
    /// download already lost its connection to.
    Avoid(u64),
}

/// The most backends `--backend` takes (a [`Route::Avoid`] bit each).
pub const MAX_BACKENDS: usize = 64;

/// Backend `index`'s bit in a [`Route::Avoid`] mask (none past [`MAX_BACKENDS`]).
pub fn bit(index: usize) -> u64 {
    u32::try_from(index)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(0)
}

/// A session's claim on its backend's load count, released when dropped.
#[derive(Debug)]
pub struct Lease {
    members: Arc<Members>,
    pub(super) index: usize,
}

impl Lease {
    /// Count one more session on backend `index` (counted while waiting for
    /// a connection too: a backend whose pool is exhausted is loaded, and
    /// the next request had better go elsewhere).
    pub(super) fn take(members: &Arc<Members>, index: usize) -> Self {
        members.list[index]
            .in_flight
            .fetch_add(1, Ordering::Relaxed);
        Lease {
            members: Arc::clone(members),
            index,
        }
    }

    /// The address of the backend this lease counts on.
    pub(super) fn addr(&self) -> &str {
        self.members.list[self.index].addr()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(m) = self.members.list.get(self.index) {
            m.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The backends `route` allows, in the order to try them. One backend is
/// always tried, up or not (as when there was only ever one). Otherwise the
/// ones up, least loaded first; ties take turns.
pub(super) fn candidates(members: &Members, route: Route) -> Vec<usize> {
    let n = members.list.len();
    if n == 1 {
        return match route {
            Route::Avoid(mask) if mask & bit(0) != 0 => Vec::new(),
            _ => vec![0],
        };
    }
    let avoid = match route {
        Route::On(i) => return if i < n { vec![i] } else { Vec::new() },
        Route::Any => 0,
        Route::Avoid(mask) => mask,
    };
    let start = members.turn.fetch_add(1, Ordering::Relaxed) % n;
    let mut up: Vec<(usize, usize, usize)> = members
        .list
        .iter()
        .enumerate()
        .filter(|(i, m)| avoid & bit(*i) == 0 && m.up.load(Ordering::Relaxed))
        .map(|(i, m)| (m.in_flight.load(Ordering::Relaxed), (i + n - start) % n, i))
        .collect();
    up.sort_unstable();
    up.into_iter().map(|(_, _, i)| i).collect()
}

#[cfg(test)]
pub(super) mod tests {
    use std::time::Duration;

    use super::super::pool::{Shared, StepManager};
    use super::*;

    pub fn members(n: usize) -> Members {
        let manager = |i: usize| {
            let addr = format!("127.0.0.1:{}", 1000 + i);
            StepManager::new(addr, None, Duration::from_secs(1), Shared::default())
        };
        let list = (0..n)
            .map(|i| {
                let pool = Pool::builder(manager(i)).build().expect("pool");
                let logins = Pool::builder(manager(i)).build().expect("pool");
                Member::new(pool, logins)
            })
            .collect();
        Members {
            list,
            turn: AtomicUsize::new(0),
        }
    }

    #[test]
    fn least_loaded_up_backend_first_ties_take_turns() {
        let m = members(3);
        // Idle backends: each call starts one further along.
        let firsts: Vec<usize> = (0..6).map(|_| candidates(&m, Route::Any)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        m.list[0].in_flight.store(2, Ordering::Relaxed);
        m.list[1].in_flight.store(1, Ordering::Relaxed);
        assert_eq!(candidates(&m, Route::Any), [2, 1, 0]);
        // Down ones are left out; avoided ones too.
        m.list[2].up.store(false, Ordering::Relaxed);
        assert_eq!(candidates(&m, Route::Any), [1, 0]);
        assert_eq!(candidates(&m, Route::Avoid(bit(1))), [0]);
        assert!(candidates(&m, Route::Avoid(bit(0) | bit(1))).is_empty());
        // A pinned request goes where it was pinned, up or not.
        assert_eq!(candidates(&m, Route::On(2)), [2]);
        assert!(candidates(&m, Route::On(7)).is_empty());
        // One backend is always tried, as before there could be several.
        let one = members(1);
        one.list[0].up.store(false, Ordering::Relaxed);
        assert_eq!(candidates(&one, Route::Any), [0]);
        assert_eq!(bit(63), 1 << 63);
        assert_eq!(bit(64), 0);
    }
}
