//! `coord_bench`: the coordination operations of issue 16 against Redis,
//! PostgreSQL and etcd, with the same client concurrency for all three.
//!
//! `--op block` is the per-block bookkeeping (the hot path): check that the
//! key's current upload is ours, set the block's mark, count it once, keep
//! the upload's state alive; the answer is `(old, n)` and the block that makes
//! `n == total` with `old == 0` completes the file. `--op lease` is one
//! per-key lease acquired and released (SAVE, completion, DELETE, DATA SAVE).
//!
//! With `--events FILE` (the kill test) every acknowledged mark is
//! remembered; after the run the marks are read back from the engine and the
//! ones acknowledged before the `kill` line of FILE are counted as kept or
//! lost. FILE holds `kill <unix ms>` and `restart <unix ms>` lines written by
//! whoever killed and restarted the engine (bench/coord_bench.sh).
//!
//! Starts nothing itself; prints one `key=value` line.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Engine {
    Redis,
    Postgres,
    Etcd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Op {
    Block,
    Lease,
}

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Per-block marks and leases against Redis, PostgreSQL or etcd: ops/s and latency"
)]
struct Args {
    #[arg(long, value_enum)]
    engine: Engine,
    /// redis://127.0.0.1:6379, a tokio-postgres config string
    /// ("host=127.0.0.1 port=5432 user=bench dbname=postgres") or
    /// http://127.0.0.1:2379 (etcd's JSON gateway).
    #[arg(long)]
    addr: String,
    #[arg(long, value_enum, default_value = "block")]
    op: Op,
    /// Clients, each with its own connection and its own uploads.
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Blocks per upload: after this many marks a worker starts a new upload.
    #[arg(long, default_value_t = 1000)]
    blocks: u32,
    #[arg(long, default_value = "")]
    label: String,
    /// Kill test: remember acknowledged marks, check them afterwards against
    /// the kill/restart times in this file.
    #[arg(long)]
    events: Option<PathBuf>,
    /// Per operation (and per reconnect attempt) timeout.
    #[arg(long, default_value_t = 2000)]
    op_timeout_ms: u64,
    /// Prefix of every name, so runs against one engine do not collide.
    #[arg(long, default_value = "r")]
    run: String,
}

const LEASE_MS: u64 = 10_000;
// Upload state lives a day without a block, as the design's PEXPIRE would.
const STATE_TTL_MS: u64 = 86_400_000;

const BLOCK_LUA: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then return -1 end
local old = redis.call('SETBIT', KEYS[2], ARGV[2], 1)
local n
if old == 0 then n = redis.call('INCR', KEYS[3]) else n = tonumber(redis.call('GET', KEYS[3]) or '0') end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return {old, n}
";
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

// One table per concept; the per-block operation is one function call, one
// transaction. FOR SHARE keeps a concurrent SAVE (which would take the cur
// row FOR UPDATE to replace it) from slipping between check and mark.
const PG_SCHEMA: &str = r"
CREATE TABLE IF NOT EXISTS step_cur (user_key text PRIMARY KEY, upload_id text NOT NULL);
CREATE TABLE IF NOT EXISTS step_blocks (upload_id text NOT NULL, idx int NOT NULL, PRIMARY KEY (upload_id, idx));
CREATE TABLE IF NOT EXISTS step_counts (upload_id text PRIMARY KEY, n int NOT NULL, expires timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS step_leases (name text PRIMARY KEY, token text NOT NULL, expires timestamptz NOT NULL);
CREATE OR REPLACE FUNCTION step_mark(p_key text, p_upload text, p_idx int, p_ttl_ms bigint) RETURNS int[] AS $$
DECLARE
  cur text;
  inserted int;
  n int;
BEGIN
  SELECT upload_id INTO cur FROM step_cur WHERE user_key = p_key FOR SHARE;
  IF cur IS DISTINCT FROM p_upload THEN RETURN ARRAY[-1]; END IF;
  INSERT INTO step_blocks VALUES (p_upload, p_idx) ON CONFLICT DO NOTHING;
  GET DIAGNOSTICS inserted = ROW_COUNT;
  IF inserted = 1 THEN
    INSERT INTO step_counts VALUES (p_upload, 1, now() + p_ttl_ms * interval '1 millisecond')
      ON CONFLICT (upload_id) DO UPDATE SET n = step_counts.n + 1, expires = EXCLUDED.expires
      RETURNING step_counts.n INTO n;
    RETURN ARRAY[0, n];
  END IF;
  UPDATE step_counts SET expires = now() + p_ttl_ms * interval '1 millisecond'
    WHERE upload_id = p_upload RETURNING step_counts.n INTO n;
  RETURN ARRAY[1, coalesce(n, 0)];
END $$ LANGUAGE plpgsql;
";

enum Conn {
    Redis(redis::aio::MultiplexedConnection),
    Postgres(tokio_postgres::Client),
    Etcd(reqwest::Client),
}

/// What one per-block call answered.
enum Mark {
    Stale,
    Set { old: bool, n: i64 },
}

struct Ctx {
    args: Args,
    block: redis::Script,
    release: redis::Script,
}

async fn connect(ctx: &Ctx) -> Result<Conn, Error> {
    let t = Duration::from_millis(ctx.args.op_timeout_ms);
    match ctx.args.engine {
        Engine::Redis => {
            let client = redis::Client::open(ctx.args.addr.as_str())?;
            let c = tokio::time::timeout(t, client.get_multiplexed_async_connection()).await??;
            Ok(Conn::Redis(c))
        }
        Engine::Postgres => {
            let (client, conn) = tokio::time::timeout(
                t,
                tokio_postgres::connect(&ctx.args.addr, tokio_postgres::NoTls),
            )
            .await??;
            tokio::spawn(conn);
            Ok(Conn::Postgres(client))
        }
        Engine::Etcd => Ok(Conn::Etcd(
            reqwest::Client::builder()
                .timeout(t)
                .pool_max_idle_per_host(1)
                .build()?,
        )),
    }
}

fn b64(s: &str) -> String {
    B64.encode(s)
}

async fn etcd(ctx: &Ctx, c: &reqwest::Client, path: &str, body: Value) -> Result<Value, Error> {
    let r = c
        .post(format!("{}{path}", ctx.args.addr))
        .json(&body)
        .send()
        .await?;
    let status = r.status();
    let v: Value = r.json().await?;
    if !status.is_success() {
        return Err(format!("etcd {status}: {v}").into());
    }
    Ok(v)
}

fn etcd_count(resp: &Value) -> i64 {
    // proto3 JSON leaves zeros out and writes int64 as strings.
    match &resp["count"] {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

fn etcd_prefix_end(prefix: &str) -> String {
    // Prefixes here end in '/', whose successor is '0'.
    let mut p = prefix.to_owned();
    p.pop();
    p.push('0');
    p
}

/// Names of one upload in every engine.
struct Upload {
    id: String,
    user_key: String,
    /// etcd lease the upload's keys hang on (the PEXPIRE equivalent).
    etcd_lease: String,
}

async fn begin_upload(ctx: &Ctx, conn: &mut Conn, up: &mut Upload) -> Result<(), Error> {
    match conn {
        Conn::Redis(c) => {
            let _: () = redis::cmd("SET")
                .arg(format!("step:cur:{}", up.user_key))
                .arg(&up.id)
                .query_async(c)
                .await?;
        }
        Conn::Postgres(c) => {
            c.execute(
                "INSERT INTO step_cur VALUES ($1, $2) ON CONFLICT (user_key) DO UPDATE SET upload_id = EXCLUDED.upload_id",
                &[&up.user_key, &up.id],
            )
            .await?;
        }
        Conn::Etcd(c) => {
            let g = etcd(
                ctx,
                c,
                "/v3/lease/grant",
                json!({"TTL": STATE_TTL_MS / 1000}),
            )
            .await?;
            up.etcd_lease = g["ID"].as_str().unwrap_or_default().to_owned();
            etcd(
                ctx,
                c,
                "/v3/kv/put",
                json!({"key": b64(&format!("step/cur/{}", up.user_key)), "value": b64(&up.id), "lease": up.etcd_lease}),
            )
            .await?;
        }
    }
    Ok(())
}

async fn mark(ctx: &Ctx, conn: &mut Conn, up: &Upload, idx: u32) -> Result<Mark, Error> {
    match conn {
        Conn::Redis(c) => {
            let v: redis::Value = ctx
                .block
                .key(format!("step:cur:{}", up.user_key))
                .key(format!("step:bits:{}", up.id))
                .key(format!("step:count:{}", up.id))
                .arg(&up.id)
                .arg(idx)
                .arg(STATE_TTL_MS)
                .invoke_async(c)
                .await?;
            match v {
                redis::Value::Int(-1) => Ok(Mark::Stale),
                redis::Value::Array(a) => match a.as_slice() {
                    [redis::Value::Int(old), redis::Value::Int(n)] => Ok(Mark::Set {
                        old: *old == 1,
                        n: *n,
                    }),
                    _ => Err(format!("unexpected answer {a:?}").into()),
                },
                other => Err(format!("unexpected answer {other:?}").into()),
            }
        }
        Conn::Postgres(c) => {
            let row = c
                .query_one(
                    "SELECT step_mark($1, $2, $3, $4)",
                    &[&up.user_key, &up.id, &(idx as i32), &(STATE_TTL_MS as i64)],
                )
                .await?;
            let a: Vec<i32> = row.try_get(0)?;
            match a.as_slice() {
                [-1] => Ok(Mark::Stale),
                [old, n] => Ok(Mark::Set {
                    old: *old == 1,
                    n: i64::from(*n),
                }),
                _ => Err(format!("unexpected answer {a:?}").into()),
            }
        }
        Conn::Etcd(c) => {
            // One txn: cur is ours and the block is new -> put the mark and
            // count the marks (a range in a write txn sees its own put);
            // otherwise read cur and count, to tell a stale upload from a
            // repeated block.
            let cur = b64(&format!("step/cur/{}", up.user_key));
            let prefix = format!("step/bits/{}/", up.id);
            let block = b64(&format!("{prefix}{idx:08}"));
            let count = json!({"request_range": {"key": b64(&prefix), "range_end": b64(&etcd_prefix_end(&prefix)), "count_only": true}});
            let v = etcd(
                ctx,
                c,
                "/v3/kv/txn",
                json!({
                    "compare": [
                        {"key": cur, "target": "VALUE", "result": "EQUAL", "value": b64(&up.id)},
                        {"key": block, "target": "CREATE", "result": "EQUAL", "create_revision": "0"},
                    ],
                    "success": [
                        {"request_put": {"key": block, "value": b64("1"), "lease": up.etcd_lease}},
                        count,
                    ],
                    "failure": [{"request_range": {"key": cur}}, count],
                }),
            )
            .await?;
            let r = v["responses"].as_array().ok_or("txn without responses")?;
            let n = etcd_count(&r.get(1).ok_or("txn without count")?["response_range"]);
            if v["succeeded"].as_bool() == Some(true) {
                return Ok(Mark::Set { old: false, n });
            }
            let kvs = &r.first().ok_or("txn without cur")?["response_range"]["kvs"];
            let cur_val = kvs[0]["value"]
                .as_str()
                .map(|s| B64.decode(s))
                .transpose()?;
            if cur_val.as_deref() == Some(up.id.as_bytes()) {
                Ok(Mark::Set { old: true, n })
            } else {
                Ok(Mark::Stale)
            }
        }
    }
}

async fn lease_pair(ctx: &Ctx, conn: &mut Conn, name: &str, token: &str) -> Result<bool, Error> {
    match conn {
        Conn::Redis(c) => {
            let key = format!("step:lease:{name}");
            let got: Option<String> = redis::cmd("SET")
                .arg(&key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(LEASE_MS)
                .query_async(c)
                .await?;
            if got.is_none() {
                return Ok(false);
            }
            let n: i64 = ctx.release.key(&key).arg(token).invoke_async(c).await?;
            Ok(n == 1)
        }
        Conn::Postgres(c) => {
            let got = c
                .query_opt(
                    "INSERT INTO step_leases VALUES ($1, $2, now() + $3::float8 * interval '1 millisecond') \
                     ON CONFLICT (name) DO UPDATE SET token = EXCLUDED.token, expires = EXCLUDED.expires \
                     WHERE step_leases.expires < now() RETURNING token",
                    &[&name, &token, &(LEASE_MS as f64)],
                )
                .await?;
            if got.is_none() {
                return Ok(false);
            }
            let n = c
                .execute(
                    "DELETE FROM step_leases WHERE name = $1 AND token = $2",
                    &[&name, &token],
                )
                .await?;
            Ok(n == 1)
        }
        Conn::Etcd(c) => {
            // etcd's own lock recipe: a lease with the TTL, a create-only put
            // on it, and revoking the lease to release (the key goes with it).
            let g = etcd(ctx, c, "/v3/lease/grant", json!({"TTL": LEASE_MS / 1000})).await?;
            let id = g["ID"].as_str().ok_or("lease grant without ID")?.to_owned();
            let key = b64(&format!("step/lease/{name}"));
            let v = etcd(
                ctx,
                c,
                "/v3/kv/txn",
                json!({
                    "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
                    "success": [{"request_put": {"key": key, "value": b64(token), "lease": id}}],
                }),
            )
            .await?;
            etcd(ctx, c, "/v3/lease/revoke", json!({"ID": id})).await?;
            Ok(v["succeeded"].as_bool() == Some(true))
        }
    }
}

/// Every acknowledged mark of one upload: index → when it was acknowledged
/// (unix ms).
type Acked = BTreeMap<u32, u64>;

#[derive(Default)]
struct Run {
    latencies_us: Vec<u32>,
    errors: BTreeMap<String, u64>,
    /// (unix ms, ok) of every attempt, for the outage's edges.
    attempts: Vec<(u64, bool)>,
    completed: u64,
    wrong: u64,
    marks: Vec<(String, Acked, i64)>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn short(e: &Error) -> String {
    let s = e.to_string();
    let s: String = s.chars().take(90).collect();
    s.replace(['=', '\n'], " ")
}

async fn worker(ctx: Arc<Ctx>, w: usize, stop: Arc<AtomicBool>) -> Run {
    let mut run = Run::default();
    let record = ctx.args.events.is_some();
    let t = Duration::from_millis(ctx.args.op_timeout_ms);
    let mut conn: Option<Conn> = None;
    let mut seq = 0u64;
    let mut up: Option<(Upload, u32, Acked, i64)> = None;
    let mut pair = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect(&ctx).await {
                Ok(c) => conn.insert(c),
                Err(e) => {
                    *run.errors
                        .entry(format!("connect: {}", short(&e)))
                        .or_default() += 1;
                    run.attempts.push((now_ms(), false));
                    // Bench client backoff while the engine is down.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let result: Result<(), Error> = match ctx.args.op {
            Op::Lease => {
                pair += 1;
                let token = format!("{w}-{pair}");
                match tokio::time::timeout(
                    t,
                    lease_pair(&ctx, c, &format!("{}/{w}", ctx.args.run), &token),
                )
                .await
                {
                    Ok(Ok(true)) => Ok(()),
                    Ok(Ok(false)) => Err("lease not acquired or not released".into()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("timeout".into()),
                }
            }
            Op::Block => {
                if up.is_none() {
                    seq += 1;
                    let mut u = Upload {
                        id: format!("{}-{w}-{seq}", ctx.args.run),
                        user_key: format!("bench/{}-{w}-{seq}", ctx.args.run),
                        etcd_lease: String::new(),
                    };
                    match tokio::time::timeout(t, begin_upload(&ctx, c, &mut u)).await {
                        Ok(Ok(())) => up = Some((u, 0, Acked::new(), 0)),
                        Ok(Err(e)) => {
                            *run.errors.entry(short(&e)).or_default() += 1;
                            conn = None;
                            continue;
                        }
                        Err(_) => {
                            *run.errors.entry("timeout".into()).or_default() += 1;
                            conn = None;
                            continue;
                        }
                    }
                }
                let Some((u, idx, acked, last_n)) = up.as_mut() else {
                    continue;
                };
                let started = Instant::now();
                match tokio::time::timeout(t, mark(&ctx, c, u, *idx)).await {
                    Ok(Ok(Mark::Set { old, n })) => {
                        run.latencies_us.push(started.elapsed().as_micros() as u32);
                        if record {
                            acked.insert(*idx, now_ms());
                        }
                        *last_n = n;
                        if !old && n == i64::from(ctx.args.blocks) {
                            run.completed += 1;
                        }
                        *idx += 1;
                        if *idx == ctx.args.blocks
                            && let Some((u, _, acked, n)) = up.take()
                            && record
                        {
                            run.marks.push((u.id, acked, n));
                        }
                        run.attempts.push((now_ms(), true));
                        continue;
                    }
                    Ok(Ok(Mark::Stale)) => {
                        // The engine lost the upload's cur key: this
                        // upload can never complete; start another.
                        run.wrong += 1;
                        if let Some((u, _, acked, n)) = up.take()
                            && record
                        {
                            run.marks.push((u.id, acked, n));
                        }
                        run.attempts.push((now_ms(), false));
                        continue;
                    }
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err("timeout".into()),
                }
            }
        };
        match result {
            Ok(()) => {
                run.latencies_us.push(started.elapsed().as_micros() as u32);
                run.attempts.push((now_ms(), true));
            }
            Err(e) => {
                *run.errors.entry(short(&e)).or_default() += 1;
                run.attempts.push((now_ms(), false));
                // A failed connection is not reused: the next attempt
                // reconnects, as a coordination client would.
                conn = None;
            }
        }
    }
    if let Some((u, _, acked, n)) = up.take()
        && record
    {
        run.marks.push((u.id, acked, n));
    }
    run
}

/// The marks of one upload as the engine has them now, and its count.
async fn read_back(ctx: &Ctx, conn: &mut Conn, upload: &str) -> Result<(Vec<u32>, i64), Error> {
    match conn {
        Conn::Redis(c) => {
            let bits: Option<Vec<u8>> = redis::cmd("GET")
                .arg(format!("step:bits:{upload}"))
                .query_async(c)
                .await?;
            let n: Option<i64> = redis::cmd("GET")
                .arg(format!("step:count:{upload}"))
                .query_async(c)
                .await?;
            let mut set = Vec::new();
            for (i, byte) in bits.unwrap_or_default().iter().enumerate() {
                for b in 0..8 {
                    // SETBIT numbers bits from the most significant one.
                    if byte & (0x80 >> b) != 0 {
                        set.push((i * 8 + b) as u32);
                    }
                }
            }
            Ok((set, n.unwrap_or(0)))
        }
        Conn::Postgres(c) => {
            let rows = c
                .query(
                    "SELECT idx FROM step_blocks WHERE upload_id = $1",
                    &[&upload],
                )
                .await?;
            let set = rows
                .iter()
                .map(|r| r.try_get::<_, i32>(0).map(|v| v as u32))
                .collect::<Result<_, _>>()?;
            let n = c
                .query_opt("SELECT n FROM step_counts WHERE upload_id = $1", &[&upload])
                .await?
                .map(|r| r.try_get::<_, i32>(0))
                .transpose()?
                .unwrap_or(0);
            Ok((set, i64::from(n)))
        }
        Conn::Etcd(c) => {
            let prefix = format!("step/bits/{upload}/");
            let v = etcd(
                ctx,
                c,
                "/v3/kv/range",
                json!({"key": b64(&prefix), "range_end": b64(&etcd_prefix_end(&prefix)), "keys_only": true}),
            )
            .await?;
            let mut set = Vec::new();
            for kv in v["kvs"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let key = B64.decode(kv["key"].as_str().unwrap_or_default())?;
                let key = String::from_utf8_lossy(&key);
                if let Some(i) = key.strip_prefix(&prefix).and_then(|s| s.parse().ok()) {
                    set.push(i);
                }
            }
            let n = set.len() as i64;
            Ok((set, n))
        }
    }
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i.min(sorted.len() - 1)]) / 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let ctx = Arc::new(Ctx {
        block: redis::Script::new(BLOCK_LUA),
        release: redis::Script::new(RELEASE_LUA),
        args: args.clone(),
    });
    if args.engine == Engine::Postgres {
        let Conn::Postgres(c) = connect(&ctx).await? else {
            return Err("not postgres".into());
        };
        // Several runs create the schema at once: one at a time.
        c.batch_execute(&format!(
            "SELECT pg_advisory_lock(16); {PG_SCHEMA} SELECT pg_advisory_unlock(16);"
        ))
        .await?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|w| tokio::spawn(worker(ctx.clone(), w, stop.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs_f64(args.secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Run::default();
    for t in tasks {
        let r = t.await?;
        all.latencies_us.extend(r.latencies_us);
        for (k, v) in r.errors {
            *all.errors.entry(k).or_default() += v;
        }
        all.attempts.extend(r.attempts);
        all.completed += r.completed;
        all.wrong += r.wrong;
        all.marks.extend(r.marks);
    }
    let wall = t0.elapsed().as_secs_f64();
    all.latencies_us.sort_unstable();
    let ok = all.latencies_us.len();
    let errors: u64 = all.errors.values().sum();
    let mut line = format!(
        "label={} engine={:?} op={:?} concurrency={} ops={ok} ops_per_s={:.1} p50_ms={:.3} p99_ms={:.3} errors={errors}",
        args.label,
        args.engine,
        args.op,
        args.concurrency,
        ok as f64 / wall,
        pct(&all.latencies_us, 0.5),
        pct(&all.latencies_us, 0.99),
    )
    .to_lowercase();
    if args.op == Op::Block {
        line += &format!(" completed={} stale={}", all.completed, all.wrong);
    }
    if let Some(path) = &args.events {
        line += &kill_report(&ctx, path, &mut all).await?;
    }
    if let Some((e, n)) = all.errors.iter().max_by_key(|(_, n)| **n) {
        line += &format!(" top_error={n}x:{}", e.replace(' ', "_"));
    }
    println!("{line}");
    Ok(())
}

/// The kill test's half of the line: the outage as the clients saw it and
/// the acknowledged marks that did or did not survive the restart.
async fn kill_report(ctx: &Ctx, path: &PathBuf, all: &mut Run) -> Result<String, Error> {
    // The killer writes `ready` once the engine answers again; the clients
    // may stop before that, and the read-back needs the engine.
    let deadline = Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = std::fs::read_to_string(path)?;
        if events.lines().any(|l| l.starts_with("ready ")) || Instant::now() > deadline {
            break events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at = |what: &str| -> Option<u64> {
        events
            .lines()
            .find_map(|l| l.strip_prefix(what)?.trim().parse().ok())
    };
    // `killed`: every process of the engine is gone; anything acknowledged
    // before it was acknowledged by the engine that died.
    let (Some(kill), Some(restart)) = (at("killed "), at("restart ")) else {
        return Err(format!("{} has no killed and restart lines", path.display()).into());
    };
    all.attempts.sort_unstable();
    let last_ok_before = all
        .attempts
        .iter()
        .rev()
        .find(|(t, ok)| *ok && *t <= kill)
        .map(|a| a.0);
    let kill_cmd = at("kill ").unwrap_or(kill);
    let first_err = all
        .attempts
        .iter()
        .find(|(t, ok)| !*ok && *t >= kill_cmd)
        .map(|a| a.0);
    let first_ok_after = all
        .attempts
        .iter()
        .find(|(t, ok)| *ok && *t > kill)
        .map(|a| a.0);
    let ms =
        |a: Option<u64>, b: u64| a.map_or("none".to_owned(), |a| (a as i64 - b as i64).to_string());
    // Read every upload back; a fresh connection, retried until the engine
    // answers (it was restarted before this run ended).
    let mut conn = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while conn.is_none() && Instant::now() < deadline {
        conn = connect(ctx).await.ok();
        if conn.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut conn = conn.ok_or("engine did not come back within 30 s")?;
    let (mut before, mut lost_before, mut after, mut lost_after, mut count_mismatch) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut by_upload: HashMap<String, (Acked, i64)> = HashMap::new();
    for (id, acked, n) in std::mem::take(&mut all.marks) {
        by_upload.insert(id, (acked, n));
    }
    for (id, (acked, _)) in &by_upload {
        let (set, n) = read_back(ctx, &mut conn, id).await?;
        if n != set.len() as i64 {
            count_mismatch += 1;
        }
        let set: std::collections::HashSet<u32> = set.into_iter().collect();
        for (idx, when) in acked {
            let kept = set.contains(idx);
            if *when <= kill {
                before += 1;
                lost_before += u64::from(!kept);
            } else {
                after += 1;
                lost_after += u64::from(!kept);
            }
        }
    }
    Ok(format!(
        " down_ms={} first_error_after_kill_ms={} first_ok_after_kill_ms={} first_ok_after_restart_ms={} \
         outage_seen_ms={} acked_before_kill={before} lost_before_kill={lost_before} acked_after_kill={after} \
         lost_after_kill={lost_after} uploads_count_mismatch={count_mismatch}",
        restart - kill,
        ms(first_err, kill_cmd),
        ms(first_ok_after, kill),
        ms(first_ok_after, restart),
        match (last_ok_before, first_ok_after) {
            (Some(a), Some(b)) => (b - a).to_string(),
            _ => "none".into(),
        },
    ))
}
