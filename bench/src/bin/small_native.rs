//! `small_native`: upload throughput of a STEP server (small files: group
//! commit, issue 13; large ones through a cluster, issue 16).
//! `--concurrency` clients, each on its own connection, upload files of
//! `--size` bytes to fresh keys for `--seconds` (or `--count` files each);
//! every upload is SAVE then its blocks, timed from SAVE to the completion's
//! answer, whose md5 must be the file's. Prints one `key=value` line:
//! uploads per second, MB/s, p50/p99 latency and errors. Starts nothing
//! itself: point it at a running server.
//!
//! Every file has content of its own (a stamp every 4 KiB): a store that
//! keeps content-addressed blocks (Garage) would otherwise skip writing
//! every file after the first.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use step_core::client::{ClientError, SaveOptions, StepClient};
use step_core::digest::{md5_hex, password_for};

#[derive(Parser, Debug)]
#[command(about = "Concurrent small uploads against a STEP server: req/s and latency")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:1379")]
    addr: String,
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Bytes per file.
    #[arg(long, default_value_t = 10 << 10)]
    size: usize,
    /// How long to upload for.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Files per client instead of a duration: each client uploads exactly
    /// this many.
    #[arg(long)]
    count: Option<u64>,
    /// Block size to propose in SAVE (the server's default when absent).
    #[arg(long)]
    block_size: Option<u64>,
    /// Blocks in flight per upload.
    #[arg(long, default_value_t = 4)]
    window: usize,
    /// Longest one upload may take, seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Prefix of the users' names (one user per client), so runs against
    /// the same server do not collide.
    #[arg(long, default_value = "small")]
    user: String,
}

/// What one client did: each upload's latency, and its errors.
#[derive(Default)]
struct Run {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

/// Distance between the stamps that make each file's content its own.
const STAMP_EVERY: usize = 4096;

/// `base` with `(client, n)` and the offset written every [`STAMP_EVERY`]
/// bytes, and its md5, computed before the clock starts.
fn distinct(base: &[u8], client: usize, n: u64) -> (Bytes, String) {
    let mut body = base.to_vec();
    for (i, chunk) in body.chunks_mut(STAMP_EVERY).enumerate() {
        let stamp = [client as u64, n, i as u64];
        for (dst, word) in chunk.chunks_mut(8).zip(stamp) {
            dst.copy_from_slice(&word.to_le_bytes()[..dst.len()]);
        }
    }
    let md5 = md5_hex(&body);
    (Bytes::from(body), md5)
}

async fn upload(
    c: &mut StepClient,
    args: &Args,
    key: &str,
    body: &Bytes,
    want: &str,
) -> Result<(), ClientError> {
    let opts = SaveOptions {
        block_size: args.block_size,
        ..SaveOptions::default()
    };
    let plan = c.file_save(Some(key), body.len() as u64, opts).await?;
    let blocks: Vec<_> = (0..plan.total_block)
        .map(|i| {
            let start = (i * plan.block_size) as usize;
            let end = (start + plan.block_size as usize).min(body.len());
            Ok((i, body.slice(start..end)))
        })
        .collect();
    let md5 = c
        .upload_blocks(
            key,
            futures::stream::iter(blocks),
            args.window.max(1),
            |_| {},
        )
        .await?;
    if body.is_empty() || md5.as_deref() == Some(want) {
        Ok(())
    } else {
        Err(ClientError::Protocol(format!(
            "{key}: completion answered {md5:?}"
        )))
    }
}

async fn client(args: Arc<Args>, id: usize, base: Arc<Vec<u8>>, until: Instant) -> Run {
    let mut run = Run::default();
    let user = format!("{}{id}", args.user);
    let mut c = match StepClient::connect(args.addr.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            run.errors += 1;
            run.first_error = Some(format!("connect: {e}"));
            return run;
        }
    };
    if let Err(e) = c.login(&user, &password_for(&user)).await {
        run.errors += 1;
        run.first_error = Some(format!("login: {e}"));
        return run;
    }
    // Keys unique across runs against one server.
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut n = 0u64;
    let more = |n: u64| match args.count {
        Some(count) => n < count,
        None => Instant::now() < until,
    };
    while more(n) {
        let key = format!("b{stamp}-{n}");
        let (body, want) = distinct(&base, id, n);
        n += 1;
        let began = Instant::now();
        let limit = Duration::from_secs(args.timeout);
        match tokio::time::timeout(limit, upload(&mut c, &args, &key, &body, &want)).await {
            Ok(Ok(())) => run.latencies.push(began.elapsed()),
            Ok(Err(e)) => {
                run.errors += 1;
                run.first_error.get_or_insert_with(|| e.to_string());
                // The connection may be out of step: stop this client.
                return run;
            }
            Err(_) => {
                run.errors += 1;
                run.first_error
                    .get_or_insert_with(|| "upload timed out".into());
                return run;
            }
        }
    }
    run
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Arc::new(Args::parse());
    let base = Arc::new(step_bench::noise(args.size, 1));
    let began = Instant::now();
    let until = began + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|id| tokio::spawn(client(Arc::clone(&args), id, Arc::clone(&base), until)))
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(run) => {
                latencies.extend(run.latencies);
                errors += run.errors;
                first_error = first_error.or(run.first_error);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    let elapsed = began.elapsed().as_secs_f64();
    latencies.sort();
    println!(
        "small_native: concurrency={} size={} uploads={} elapsed_s={elapsed:.1} req_per_s={:.1} \
         p50_ms={:.2} p99_ms={:.2} errors={errors} mb_per_s={:.1} block_size={}",
        args.concurrency,
        args.size,
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        (latencies.len() * args.size) as f64 / elapsed / 1e6,
        args.block_size.unwrap_or(step_core::DEFAULT_BLOCK_SIZE),
    );
    if let Some(e) = first_error {
        println!("  first error: {e}");
    }
    if errors == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
