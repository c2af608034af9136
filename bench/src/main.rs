//! `step-bench upload`: time an upload of generated content to a STEP server.
//!
//! Content is generated in memory (so the disk of the client is not what is
//! measured) and checked against the md5 the server reports. Prints one line of
//! `key=value` pairs per run, easy to collect from a script.

use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use step_core::client::{SaveOptions, StepClient};
use step_core::digest::{md5_hex, password_for};

#[derive(Parser, Debug)]
#[command(about = "Upload throughput against a STEP server")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:1379")]
    addr: String,
    /// Bytes to upload.
    #[arg(long, default_value_t = 100 << 20)]
    size: u64,
    /// Upload exactly this many blocks of `--block-size` (default 20480)
    /// instead of `--size` bytes (the original study's 515-block run).
    #[arg(long, conflicts_with = "size")]
    blocks: Option<u64>,
    /// Requests in flight per connection (1 = stop-and-wait).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Connections to spread blocks over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Block size to propose (the server's plan decides).
    #[arg(long)]
    block_size: Option<u64>,
    /// Label printed with the result.
    #[arg(long, default_value = "run")]
    label: String,
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Seconds to wait for any one answer before giving up on the run.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
}

fn content(size: u64) -> Bytes {
    let mut x: u64 = 0x243f_6a88_85a3_08d3;
    let mut out = Vec::with_capacity(size as usize);
    while (out.len() as u64) < size {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(size as usize);
    Bytes::from(out)
}

type BoxError = Box<dyn std::error::Error>;

/// One timed upload: connect and log in (untimed), then SAVE and every
/// block (timed), md5 checked. Returns the seconds and the block size used.
async fn one_run(
    args: &Args,
    body: &Bytes,
    expected: &str,
    run: usize,
) -> Result<(f64, usize), BoxError> {
    let timeout = Some(std::time::Duration::from_secs(args.timeout));
    let user = format!("bench{}", std::process::id());
    let mut clients = Vec::new();
    let mut first = StepClient::connect(&args.addr).await?;
    // The reference server can stall for good after a short read; a
    // stalled run is reported, not waited on forever.
    first.set_timeout(timeout);
    let token = first.login(&user, &password_for(&user)).await?;
    for _ in 1..args.connections.max(1) {
        let mut c = StepClient::connect(&args.addr).await?;
        c.set_token(token.clone());
        c.set_timeout(timeout);
        clients.push(c);
    }
    // ASCII only: the reference server mis-frames anything else.
    let key = format!(
        "{}-{run}-{}",
        args.label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect::<String>(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    );
    let started = Instant::now();
    let plan = first
        .file_save(
            Some(&key),
            args.size,
            SaveOptions {
                block_size: args.block_size,
                resume: false,
            },
        )
        .await?;
    let bs = plan.block_size as usize;
    let blocks = futures::stream::iter((0..plan.total_block).map(|i| {
        Ok((
            i,
            body.slice(i as usize * bs..((i as usize + 1) * bs).min(body.len())),
        ))
    }));
    let mut all: Vec<&mut StepClient> = std::iter::once(&mut first)
        .chain(clients.iter_mut())
        .collect();
    let md5 = step_core::transfer::upload_spread(&mut all, &plan.key, blocks, args.window, &|_| {})
        .await?;
    let secs = started.elapsed().as_secs_f64();
    if md5.as_deref() != Some(expected) {
        return Err(format!("md5 mismatch: server {md5:?}, expected {expected}").into());
    }
    let _ = first.file_delete(&plan.key).await;
    Ok((secs, bs))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let mut args = Args::parse();
    if let Some(n) = args.blocks {
        let bs = *args.block_size.get_or_insert(step_core::DEFAULT_BLOCK_SIZE);
        args.size = n * bs;
    }
    let body = content(args.size);
    let expected = md5_hex(&body);
    let mut failed = 0;
    for run in 0..args.runs {
        match one_run(&args, &body, &expected, run).await {
            Ok((secs, bs)) => println!(
                "label={} run={run} size={} block_size={bs} window={} connections={} secs={secs:.6} mb_per_s={:.1}",
                args.label,
                args.size,
                args.window,
                args.connections,
                args.size as f64 / secs / 1e6
            ),
            Err(e) => {
                failed += 1;
                // One line, so scripts can count failures per label.
                let why = e.to_string().replace(char::is_whitespace, "_");
                println!(
                    "label={} run={run} size={} error={why}",
                    args.label, args.size
                );
            }
        }
    }
    if failed > 0 {
        return Err(format!("{failed} of {} runs failed", args.runs).into());
    }
    Ok(())
}
