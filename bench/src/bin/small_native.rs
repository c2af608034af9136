//! `small_native`: small-file upload throughput of a STEP server (group
//! commit, issue 13). `--concurrency` clients, each on its own connection,
//! upload files of `--size` bytes to fresh keys for `--seconds`; every
//! upload is SAVE then its blocks, timed from SAVE to the completion's
//! answer. Prints one `key=value` line: uploads per second, p50/p99 latency
//! and errors. Starts nothing itself: point it at a running server.

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

async fn upload(c: &mut StepClient, key: &str, body: &Bytes) -> Result<(), ClientError> {
    let plan = c
        .file_save(Some(key), body.len() as u64, SaveOptions::default())
        .await?;
    let blocks: Vec<_> = (0..plan.total_block)
        .map(|i| {
            let start = (i * plan.block_size) as usize;
            let end = (start + plan.block_size as usize).min(body.len());
            Ok((i, body.slice(start..end)))
        })
        .collect();
    let md5 = c
        .upload_blocks(key, futures::stream::iter(blocks), 4, |_| {})
        .await?;
    if body.is_empty() || md5.as_deref() == Some(md5_hex(body).as_str()) {
        Ok(())
    } else {
        Err(ClientError::Protocol(format!(
            "{key}: completion answered {md5:?}"
        )))
    }
}

async fn client(args: Arc<Args>, id: usize, body: Bytes, until: Instant) -> Run {
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
    while Instant::now() < until {
        let key = format!("b{stamp}-{n}");
        n += 1;
        let began = Instant::now();
        match tokio::time::timeout(Duration::from_secs(60), upload(&mut c, &key, &body)).await {
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
    let body = Bytes::from(
        (0..args.size)
            .map(|i| (i.wrapping_mul(31) ^ (i >> 8)) as u8)
            .collect::<Vec<u8>>(),
    );
    let began = Instant::now();
    let until = began + Duration::from_secs(args.seconds);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|id| tokio::spawn(client(Arc::clone(&args), id, body.clone(), until)))
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
         p50_ms={:.2} p99_ms={:.2} errors={errors}",
        args.concurrency,
        args.size,
        latencies.len(),
        latencies.len() as f64 / elapsed,
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
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
