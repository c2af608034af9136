//! Coordination of several instances over one bucket (`--coord`).
//!
//! One instance needs none of this: its per-key async locks decide "first
//! SAVE wins", create-only records and "exactly one completion". Several
//! instances on one bucket cannot decide those from the bucket alone (S3
//! servers such as Garage ignore conditional PUTs, and LIST may lag), so the
//! state that must be atomic lives in a coordination engine, and the bucket
//! keeps everything else:
//!
//! - a **lease** per key (and per record key), held across instances by
//!   whoever SAVEs, completes, deletes or creates a record there. It expires
//!   ([`LEASE_TTL`]) unless its holder renews it ([`LEASE_RENEW`]), so a
//!   crashed holder blocks a key for seconds, not forever; a holder checks it
//!   still holds the lease ([`Lease::check`]) right before each commit point;
//! - a **pointer** per record and per file to its current version (objects
//!   never overwritten, `fenced.rs`), moved only by [`Lease::swap`], in one
//!   step with checking the lease: a holder that stalled past expiry with a
//!   write in flight cannot replace what the next holder committed (a check
//!   before the write could not stop a write already on its way);
//! - the key's **current upload** id, set by SAVE (under the lease) and
//!   cleared by completion or DELETE;
//! - per upload, the **blocks received** (a bitmap) and their count, updated
//!   by every block in one atomic step that also checks the upload is still
//!   the key's current one ([`Coord::mark_block`]): the block that brings the
//!   count to the total is the one that completes the file, whichever
//!   instance it reached.
//!
//! Implementations: [`RedisCoord`] (Redis 7; what `--coord redis://…`
//! selects) and [`MemoryCoord`] (one process; for tests that run several
//! storages side by side as separate instances). An engine that cannot be
//! reached makes the operation fail with [`StoreError::Unavailable`] (STEP
//! 406 `reason: "unavailable"`, HTTP 503 at the gateway); nothing is
//! acknowledged that was not recorded, and requests succeed again once the
//! engine is back, without a restart.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::store::api::{StoreError, StoreResult};

mod memory;
pub use memory::MemoryCoord;

/// A lease lives this long unless renewed.
pub const LEASE_TTL: Duration = Duration::from_secs(10);
/// Its holder renews it this often (three chances before it expires).
pub const LEASE_RENEW: Duration = Duration::from_secs(3);
/// Waiting for a lease another instance holds gives up after this long.
const LEASE_WAIT: Duration = Duration::from_secs(30);
/// Answers from the engine, at most this long.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a block's [`Coord::mark_block`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// The upload is no longer the key's current one (completed, deleted or
    /// replaced by another SAVE): the block belongs to nothing.
    NotCurrent,
    /// Recorded. `first`: this index had not been received before;
    /// `count`: blocks of the upload received so far.
    Marked { first: bool, count: u64 },
}

/// Exclusive use of one name across instances, until dropped (which
/// releases it in the background).
#[async_trait]
pub trait Lease: Send + Sync + Debug {
    /// Fails unless this lease is still held: called before every commit
    /// point, so a holder that lost it (stalled past [`LEASE_TTL`], engine
    /// lost its data) writes nothing more.
    async fn check(&self) -> StoreResult<()>;
    /// Point `pointer` at `new` (`None`: at nothing) if it still points at
    /// `expected`, in one step with checking this lease is still held: the
    /// commit point of a record or a file's meta. A holder that lost the
    /// lease (stalled past [`LEASE_TTL`]) fails here, whatever it wrote
    /// before under a name of its own.
    async fn swap(
        &self,
        pointer: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> StoreResult<()>;
    /// Make `upload_id` the current upload of `key` (`None`: no upload), in
    /// one step with checking this lease (`key`'s) is still held, as
    /// [`Self::swap`]: a SAVE that stalled past its lease is not made
    /// current over a later one.
    async fn set_current(&self, key: &str, upload_id: Option<&str>) -> StoreResult<()>;
}

/// The coordination engine, as the object store uses it. Names are opaque
/// strings chosen by the store (already unique per bucket and prefix).
#[async_trait]
pub trait Coord: Send + Sync + Debug {
    /// Take `name`'s lease, waiting while another holder has it.
    async fn lease(&self, name: &str) -> StoreResult<Box<dyn Lease>>;
    /// The current upload of `key`, if any.
    async fn current(&self, key: &str) -> StoreResult<Option<String>>;
    /// Record block `index` of `upload_id`, atomically with checking that
    /// it is still `key`'s current upload.
    async fn mark_block(&self, key: &str, upload_id: &str, index: u64) -> StoreResult<Mark>;
    /// Which of `total` blocks of `upload_id` were received, and when the
    /// last one came (ms since the epoch; `None`: none yet).
    async fn received(&self, upload_id: &str, total: u64) -> StoreResult<(Vec<bool>, Option<u64>)>;
    /// Forget what was recorded about `upload_id` (completed or discarded).
    async fn forget(&self, upload_id: &str) -> StoreResult<()>;
    /// Whether the engine answers (readiness).
    async fn ping(&self) -> StoreResult<()>;
    /// The version `pointer` names (set by [`Lease::swap`]).
    async fn pointer(&self, pointer: &str) -> StoreResult<Option<String>>;
    /// Several pointers in one request (listings, the sweep).
    async fn pointers(&self, pointers: &[String]) -> StoreResult<Vec<Option<String>>>;
}

fn lost_lease() -> StoreError {
    StoreError::Unavailable("lost the key's lease to another instance".into())
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
    )
    .unwrap_or(u64::MAX)
}

// ------------------------------------------------------------------ Redis

/// Coordination in Redis 7. Keys (under `step:<namespace>:`): `lease:<name>`
/// (holder's token, with a TTL), `ptr:<name>` (the current version of a
/// record or a file, no TTL), `cur:<key>` (current upload id), and per
/// upload `bits:<id>` (a bitmap of received blocks) and `up:<id>` (a hash:
/// `count`, `last_ms`). Per-upload keys and `cur:` expire
/// `state_ttl` after their last block or SAVE (the upload expiry, doubled),
/// so nothing leaks when an instance dies mid-way; the bucket stays the
/// truth for what exists and a SAVE puts `cur:` back from it.
///
/// Durability is Redis's: with AOF and `appendfsync always` an acknowledged
/// block's mark survives an engine crash; with less, a lost mark only makes
/// that block "missing" again (SAVE says so and the client resends it).
pub struct RedisCoord {
    client: redis::Client,
    /// Connected at first use, so a server starts (and answers "unavailable")
    /// while the engine is down; reconnects by itself afterwards.
    conn: tokio::sync::OnceCell<ConnectionManager>,
    ns: String,
    state_ttl_ms: u64,
    url: String,
    /// The per-block script, its SHA1 computed once (sent by EVALSHA).
    mark: Script,
}

impl Debug for RedisCoord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCoord")
            .field("url", &self.url)
            .field("ns", &self.ns)
            .finish()
    }
}

fn engine_err(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("coordination engine: {e}"))
}

/// Renew a lease if `ARGV[1]` still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Release a lease if `ARGV[1]` still holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// Whether `ARGV[1]` holds the lease.
const HOLDS: &str = r"return redis.call('GET', KEYS[1]) == ARGV[1] and 1 or 0";

/// KEYS: lease, pointer. ARGV: token, expected ('' for none), new ('' for
/// none). 1: swapped; -1: the lease is not the token's; -2: the pointer
/// moved.
const SWAP: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then
  return -2
end
if ARGV[3] == '' then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[3])
end
return 1";

/// KEYS: lease, cur, up (of the upload). ARGV: token, upload id ('' for
/// none), ttl ms. 1: set; -1: the lease is not the token's.
const SET_CURRENT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if ARGV[2] == '' then
  redis.call('DEL', KEYS[2])
  return 1
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('HSETNX', KEYS[3], 'count', 0)
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return 1";

/// KEYS: cur, bits, up. ARGV: upload id, index, ttl ms, now ms.
const MARK: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return {-1, 0}
end
local old = redis.call('SETBIT', KEYS[2], ARGV[2], 1)
local n
if old == 0 then
  n = redis.call('HINCRBY', KEYS[3], 'count', 1)
else
  n = tonumber(redis.call('HGET', KEYS[3], 'count') or '0')
end
redis.call('HSET', KEYS[3], 'last_ms', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {old, n}";

impl RedisCoord {
    /// The engine at `url` (`redis://[user:password@]host[:port][/db]`),
    /// connected at first use. Keys go under `namespace` (the bucket and
    /// prefix), so deployments may share one Redis.
    pub fn new(url: &str, namespace: &str, state_ttl: Duration) -> Result<Self, String> {
        let client = redis::Client::open(url).map_err(|e| e.to_string())?;
        Ok(RedisCoord {
            client,
            conn: tokio::sync::OnceCell::new(),
            ns: format!("step:{namespace}:"),
            state_ttl_ms: u64::try_from(state_ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(60_000),
            url: redact(url),
            mark: Script::new(MARK),
        })
    }

    fn k(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.ns)
    }

    async fn conn(&self) -> StoreResult<ConnectionManager> {
        self.conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(ENGINE_TIMEOUT))
                    .set_response_timeout(Some(ENGINE_TIMEOUT))
                    .set_number_of_retries(2)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_with_config(self.client.clone(), config)
                    .await
                    .map_err(engine_err)
            })
            .await
            .cloned()
    }
}

/// `url` without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[async_trait]
impl Coord for RedisCoord {
    async fn lease(&self, name: &str) -> StoreResult<Box<dyn Lease>> {
        let key = self.k("lease", name);
        let token = uuid::Uuid::new_v4().simple().to_string();
        let ttl_ms = LEASE_TTL.as_millis() as u64;
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        // Another instance holds the key only while it runs one SAVE,
        // completion or DELETE of it: rare, and short. Retrying with a
        // growing pause costs far less than a wake-up channel per key.
        let mut pause = Duration::from_millis(2);
        let mut conn = self.conn().await?;
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms)
                .query_async(&mut conn)
                .await
                .map_err(engine_err)?;
            if taken.is_some() {
                break;
            }
            if tokio::time::Instant::now() + pause > deadline {
                return Err(StoreError::Unavailable(format!(
                    "the key stayed busy on another instance for {} s",
                    LEASE_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        let lost = Arc::new(AtomicBool::new(false));
        let stop = CancellationToken::new();
        tokio::spawn(renew(
            conn.clone(),
            key.clone(),
            token.clone(),
            Arc::clone(&lost),
            stop.clone(),
        ));
        Ok(Box::new(RedisLease {
            conn,
            key,
            token,
            ns: self.ns.clone(),
            state_ttl_ms: self.state_ttl_ms,
            lost,
            stop,
        }))
    }

    async fn current(&self, key: &str) -> StoreResult<Option<String>> {
        let mut conn = self.conn().await?;
        conn.get(self.k("cur", key)).await.map_err(engine_err)
    }

    async fn mark_block(&self, key: &str, upload_id: &str, index: u64) -> StoreResult<Mark> {
        let mut conn = self.conn().await?;
        let (old, n): (i64, i64) = self
            .mark
            .key(self.k("cur", key))
            .key(self.k("bits", upload_id))
            .key(self.k("up", upload_id))
            .arg(upload_id)
            .arg(index)
            .arg(self.state_ttl_ms)
            .arg(now_ms())
            .invoke_async(&mut conn)
            .await
            .map_err(engine_err)?;
        Ok(if old < 0 {
            Mark::NotCurrent
        } else {
            Mark::Marked {
                first: old == 0,
                count: u64::try_from(n).unwrap_or(0),
            }
        })
    }

    async fn received(&self, upload_id: &str, total: u64) -> StoreResult<(Vec<bool>, Option<u64>)> {
        let mut conn = self.conn().await?;
        let (bits, last): (Option<Vec<u8>>, Option<u64>) = redis::pipe()
            .cmd("GET")
            .arg(self.k("bits", upload_id))
            .cmd("HGET")
            .arg(self.k("up", upload_id))
            .arg("last_ms")
            .query_async(&mut conn)
            .await
            .map_err(engine_err)?;
        let bits = bits.unwrap_or_default();
        let received = (0..total)
            .map(|i| {
                // Redis numbers bits from the most significant of byte 0.
                bits.get((i / 8) as usize)
                    .is_some_and(|b| b & (0x80 >> (i % 8)) != 0)
            })
            .collect();
        Ok((received, last))
    }

    async fn forget(&self, upload_id: &str) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        conn.del::<_, ()>(&[self.k("bits", upload_id), self.k("up", upload_id)])
            .await
            .map_err(engine_err)
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.conn().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(engine_err)
    }

    async fn pointer(&self, pointer: &str) -> StoreResult<Option<String>> {
        let mut conn = self.conn().await?;
        conn.get(self.k("ptr", pointer)).await.map_err(engine_err)
    }

    async fn pointers(&self, pointers: &[String]) -> StoreResult<Vec<Option<String>>> {
        if pointers.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn().await?;
        let keys: Vec<String> = pointers.iter().map(|p| self.k("ptr", p)).collect();
        redis::cmd("MGET")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .map_err(engine_err)
    }
}

/// Keep `key` ours until `stop`; on a failed or refused renewal, say the
/// lease is `lost` (the holder then stops at its next commit point).
async fn renew(
    mut conn: ConnectionManager,
    key: String,
    token: String,
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let script = Script::new(RENEW);
    let mut tick = tokio::time::interval(LEASE_RENEW);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let renewed: Result<i64, _> = script
            .key(&key)
            .arg(&token)
            .arg(LEASE_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        match renewed {
            Ok(1) => {}
            Ok(_) => {
                warn!(lease = %key, "lease taken over by another instance");
                lost.store(true, Ordering::Release);
                return;
            }
            Err(e) => {
                // Not lost yet: it may still be ours when the engine answers
                // again. `check` asks the engine itself.
                warn!(lease = %key, error = %e, "cannot renew a lease");
            }
        }
    }
}

struct RedisLease {
    conn: ConnectionManager,
    key: String,
    token: String,
    /// The engine's key prefix (`step:<namespace>:`), for pointers.
    ns: String,
    state_ttl_ms: u64,
    lost: Arc<AtomicBool>,
    stop: CancellationToken,
}

impl Debug for RedisLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLease")
            .field("key", &self.key)
            .finish()
    }
}

#[async_trait]
impl Lease for RedisLease {
    async fn check(&self) -> StoreResult<()> {
        if self.lost.load(Ordering::Acquire) {
            return Err(lost_lease());
        }
        let mut conn = self.conn.clone();
        let holds: i64 = Script::new(HOLDS)
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut conn)
            .await
            .map_err(engine_err)?;
        if holds == 1 {
            Ok(())
        } else {
            Err(lost_lease())
        }
    }

    async fn swap(
        &self,
        pointer: &str,
        expected: Option<&str>,
        new: Option<&str>,
    ) -> StoreResult<()> {
        // Not short-cut by `lost`: the engine's answer is the one that
        // counts, and it is a single round trip either way.
        let mut conn = self.conn.clone();
        let swapped: i64 = Script::new(SWAP)
            .key(&self.key)
            .key(format!("{}ptr:{pointer}", self.ns))
            .arg(&self.token)
            .arg(expected.unwrap_or(""))
            .arg(new.unwrap_or(""))
            .invoke_async(&mut conn)
            .await
            .map_err(engine_err)?;
        match swapped {
            1 => Ok(()),
            -1 => Err(lost_lease()),
            _ => Err(StoreError::Unavailable(
                "the key changed under its lease".into(),
            )),
        }
    }

    async fn set_current(&self, key: &str, upload_id: Option<&str>) -> StoreResult<()> {
        let mut conn = self.conn.clone();
        let set: i64 = Script::new(SET_CURRENT)
            .key(&self.key)
            .key(format!("{}cur:{key}", self.ns))
            .key(format!("{}up:{}", self.ns, upload_id.unwrap_or("")))
            .arg(&self.token)
            .arg(upload_id.unwrap_or(""))
            .arg(self.state_ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(engine_err)?;
        if set == 1 { Ok(()) } else { Err(lost_lease()) }
    }
}

impl Drop for RedisLease {
    fn drop(&mut self) {
        self.stop.cancel();
        let mut conn = self.conn.clone();
        let key = std::mem::take(&mut self.key);
        let token = std::mem::take(&mut self.token);
        // Dropped outside a runtime only at shutdown: the lease then
        // expires by itself.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let released: Result<i64, _> = Script::new(RELEASE)
                    .key(&key)
                    .arg(&token)
                    .invoke_async(&mut conn)
                    .await;
                if let Err(e) = released {
                    warn!(lease = %key, error = %e, "cannot release a lease; it expires by itself");
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn urls_are_logged_without_their_password() {
        assert_eq!(
            redact("redis://:secret@redis:6379/0"),
            "redis://…@redis:6379/0"
        );
        assert_eq!(redact("redis://redis:6379"), "redis://redis:6379");
    }
}
