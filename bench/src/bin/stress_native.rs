//! `stress_native`: many clients uploading at once to a STEP server, then
//! every file checked (issue 7's big concurrency run; `bench/stress_native.sh`
//! starts a server on loopback and runs this against it).
//!
//! Each of `--clients` clients logs in (users are shared by
//! `--clients-per-user` clients, so their keys share a namespace), uploads
//! `--uploads` files of pseudo-random sizes to keys of its own, and every
//! `--contended-every`th upload goes to a key all clients of its user upload
//! at the same moment with the same content (racers: 200, 402 or 408 are the
//! designed answers). Then every file is read back: FILE GET md5 and the
//! downloaded bytes must match what was sent. Errors are counted by kind; the
//! exit code is non-zero if there are any, or if the deadline passes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use step_core::client::{ClientError, SaveOptions, StepClient};
use step_core::digest::{md5_hex, password_for};

#[derive(Parser, Debug, Clone)]
#[command(about = "Concurrent uploads against a STEP server, every file verified")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:1379")]
    addr: String,
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Uploads per client.
    #[arg(long, default_value_t = 50)]
    uploads: usize,
    #[arg(long, default_value_t = 10)]
    clients_per_user: usize,
    /// Largest file, in bytes (sizes are spread from 0 up to this).
    #[arg(long, default_value_t = 256 << 10)]
    max_size: usize,
    /// Every Nth upload of a client goes to a key its user's clients share.
    #[arg(long, default_value_t = 10)]
    contended_every: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Give up (and fail) after this many seconds.
    #[arg(long, default_value_t = 600)]
    deadline: u64,
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 56) as u8
        })
        .collect()
}

/// A size for upload `n` of client `c`: block-boundary cases included.
fn size_for(c: usize, n: usize, max: usize) -> usize {
    let edges = [0, 1, 20_479, 20_480, 20_481, 40_960];
    let h = (c as u64)
        .wrapping_mul(0x9e37_79b9)
        .wrapping_add(n as u64 * 0x85eb_ca6b);
    if n.is_multiple_of(7) {
        edges[(h % edges.len() as u64) as usize].min(max)
    } else {
        (h % (max as u64 + 1)) as usize
    }
}

#[derive(Default)]
struct Tally {
    uploads: u64,
    bytes: u64,
    contended_won: u64,
    contended_lost: u64,
    contended_restarts: u64,
    verified: u64,
    errors: BTreeMap<String, u64>,
    examples: Vec<String>,
}

impl Tally {
    fn error(&mut self, kind: &str, detail: String) {
        *self.errors.entry(kind.to_owned()).or_default() += 1;
        if self.examples.len() < 20 {
            self.examples.push(detail);
        }
    }
}

type Shared = Arc<Mutex<Tally>>;

fn tally(t: &Shared) -> std::sync::MutexGuard<'_, Tally> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

async fn connect(addr: &str, user: &str) -> Result<StepClient, ClientError> {
    let mut c = StepClient::connect(addr).await?;
    c.login(user, &password_for(user)).await?;
    Ok(c)
}

async fn upload(
    c: &mut StepClient,
    key: &str,
    body: &[u8],
    window: usize,
) -> Result<Option<String>, ClientError> {
    let plan = c
        .file_save(Some(key), body.len() as u64, SaveOptions::default())
        .await?;
    if plan.total_block == 0 {
        return Ok(Some(step_core::digest::EMPTY_MD5.to_owned()));
    }
    let blocks: Vec<_> = body
        .chunks(plan.block_size as usize)
        .enumerate()
        .map(|(i, b)| Ok((i as u64, Bytes::copy_from_slice(b))))
        .collect();
    c.upload_blocks(key, futures::stream::iter(blocks), window, |_| {})
        .await
}

async fn verify(c: &mut StepClient, key: &str, body: &[u8]) -> Result<(), String> {
    let plan = c.file_get(key, None).await.map_err(|e| e.to_string())?;
    let want = md5_hex(body);
    if plan.md5 != want || plan.size != body.len() as u64 {
        return Err(format!(
            "FILE GET says {} bytes md5 {}",
            plan.size, plan.md5
        ));
    }
    let mut got = Vec::with_capacity(body.len());
    c.download_blocks(&plan, 0..plan.total_block, 8, |_, b| {
        got.extend_from_slice(&b);
        Ok(())
    })
    .await
    .map_err(|e| e.to_string())?;
    if got != body {
        return Err("downloaded bytes differ".into());
    }
    Ok(())
}

async fn client(args: Arc<Args>, id: usize, t: Shared, start: Arc<tokio::sync::Barrier>) {
    let user = format!("stress{}", id / args.clients_per_user.max(1));
    let mut c = match connect(&args.addr, &user).await {
        Ok(c) => c,
        Err(e) => {
            start.wait().await;
            tally(&t).error("login", format!("client {id}: {e}"));
            return;
        }
    };
    start.wait().await;
    let mut mine = Vec::new();
    for n in 0..args.uploads {
        let contended =
            args.contended_every > 0 && n % args.contended_every == args.contended_every - 1;
        let (key, body) = if contended {
            // Same key and content for every client of this user.
            let key = format!("shared-{n}");
            let seed = (id / args.clients_per_user.max(1)) as u64 * 1_000_003 + n as u64;
            (
                key,
                pattern(size_for(usize::MAX - n, n, args.max_size), seed),
            )
        } else {
            let key = format!("c{id}-u{n}");
            (
                key,
                pattern(size_for(id, n, args.max_size), (id * 100_000 + n) as u64),
            )
        };
        let mut restarts = 0;
        loop {
            match upload(&mut c, &key, &body, args.window).await {
                Ok(Some(md5)) if md5 == md5_hex(&body) => {
                    let mut g = tally(&t);
                    g.uploads += 1;
                    g.bytes += body.len() as u64;
                    if contended {
                        g.contended_won += 1;
                    }
                    break;
                }
                Ok(Some(md5)) => {
                    tally(&t).error("md5 mismatch", format!("{user}/{key}: server md5 {md5}"));
                    break;
                }
                // Racers: all blocks taken, someone else's completed it.
                Ok(None) if contended => {
                    tally(&t).contended_lost += 1;
                    break;
                }
                Ok(None) => {
                    tally(&t).error("no completion", format!("{user}/{key}"));
                    break;
                }
                Err(e) if contended && e.status().map(|s| s.code()) == Some(402) => {
                    tally(&t).contended_lost += 1;
                    break;
                }
                Err(e)
                    if contended && e.status().map(|s| s.code()) == Some(408) && restarts < 100 =>
                {
                    // Superseded by a racer's SAVE, or a racer completed the
                    // key: answers to blocks still in flight would desync this
                    // connection, so start afresh, and stop if the file is done.
                    restarts += 1;
                    tally(&t).contended_restarts += 1;
                    match connect(&args.addr, &user).await {
                        Ok(fresh) => c = fresh,
                        Err(e) => {
                            tally(&t).error("reconnect", format!("{user}: {e}"));
                            return;
                        }
                    }
                    if c.file_get(&key, None).await.is_ok() {
                        tally(&t).contended_lost += 1;
                        break;
                    }
                }
                Err(e) => {
                    let kind = match e.status() {
                        Some(s) => format!("status {}", s.code()),
                        None => "transport".to_owned(),
                    };
                    tally(&t).error(&kind, format!("{user}/{key}: {e}"));
                    // The connection may be out of step: continue on a new one.
                    match connect(&args.addr, &user).await {
                        Ok(fresh) => c = fresh,
                        Err(e) => {
                            tally(&t).error("reconnect", format!("{user}: {e}"));
                            return;
                        }
                    }
                    break;
                }
            }
        }
        mine.push((key, body));
    }
    for (key, body) in &mine {
        match verify(&mut c, key, body).await {
            Ok(()) => tally(&t).verified += 1,
            Err(e) => tally(&t).error("verify", format!("{user}/{key}: {e}")),
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Arc::new(Args::parse());
    let t: Shared = Arc::default();
    let start = Arc::new(tokio::sync::Barrier::new(args.clients));
    let began = Instant::now();
    let tasks: Vec<_> = (0..args.clients)
        .map(|id| {
            tokio::spawn(client(
                Arc::clone(&args),
                id,
                Arc::clone(&t),
                Arc::clone(&start),
            ))
        })
        .collect();
    let all = futures::future::join_all(tasks);
    let timed_out = tokio::time::timeout(Duration::from_secs(args.deadline), all)
        .await
        .is_err();
    let elapsed = began.elapsed().as_secs_f64();
    let g = tally(&t);
    let errors: u64 = g.errors.values().sum();
    println!(
        "stress: clients={} uploads_per_client={} completed={} contended_won={} contended_lost={} \
         contended_restarts={} verified={} bytes={} errors={} elapsed_s={elapsed:.1}{}",
        args.clients,
        args.uploads,
        g.uploads,
        g.contended_won,
        g.contended_lost,
        g.contended_restarts,
        g.verified,
        g.bytes,
        errors,
        if timed_out { " DEADLINE PASSED" } else { "" }
    );
    for (kind, n) in &g.errors {
        println!("  error {kind}: {n}");
    }
    for e in &g.examples {
        println!("  e.g. {e}");
    }
    let expected = (args.clients * args.uploads) as u64;
    if errors == 0 && !timed_out && g.verified == expected {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
