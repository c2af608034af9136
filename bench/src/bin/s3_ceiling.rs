//! `s3_ceiling`: what an S3 server sustains on this machine, measured with
//! the S3 client the server's store uses (`object_store`), so the numbers are
//! the ceiling for a store on that server (`bench/garage_ceiling.sh` starts a
//! Garage node on loopback and runs this against it).
//!
//! * `--mode big`: one multipart PUT of `--size` bytes in `--part-size`
//!   parts, `--concurrency` parts in flight; then one streamed GET of it, and
//!   a GET as `--concurrency` ranged GETs of one part each in flight.
//! * `--mode small`: `--count` PUTs of `--size` bytes each (distinct keys),
//!   `--concurrency` in flight; latency percentiles per PUT.
//!
//! Every part and every small object has distinct content: Garage stores
//! content-addressed blocks and would skip writing a block it already holds.
//! Endpoint, credentials and region come from the standard AWS variables
//! (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_REGION`, `AWS_ALLOW_HTTP`). One `key=value` line per measurement.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::MultipartStore;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Big,
    Small,
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Large multipart PUT/GET throughput and small PUT latency against an S3 server")]
struct Args {
    #[arg(long, value_enum)]
    mode: Mode,
    #[arg(long, env = "S3_BUCKET")]
    bucket: String,
    /// Bytes: of the one large object (big), of each object (small).
    #[arg(long, default_value_t = 1 << 30)]
    size: usize,
    /// Multipart part size (big), bytes.
    #[arg(long, default_value_t = 8 << 20)]
    part_size: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// PUTs per run (small).
    #[arg(long, default_value_t = 500)]
    count: usize,
    #[arg(long, default_value_t = 1)]
    runs: usize,
    /// Free text naming the series (e.g. `garage`, `garage+nodelay`).
    #[arg(long, default_value = "s3")]
    label: String,
}

fn client(bucket: &str) -> Result<AmazonS3, BoxError> {
    // The same precedence as the server's `--storage` (step_server::store::s3).
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Ok(url) = std::env::var("AWS_ENDPOINT_URL") {
        b = b.with_endpoint(url);
    }
    Ok(b.build()?)
}

fn mb_per_s(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e6
}

async fn big(s3: Arc<AmazonS3>, args: &Args, run: usize) -> Result<(), BoxError> {
    let path = Path::from(format!("ceiling/big/{}/{run}", args.label));
    let body = Bytes::from(step_bench::noise(args.size, 1 + run as u64));
    let part_size = args.part_size.max(1);
    let parts = args.size.div_ceil(part_size);

    let started = Instant::now();
    let id = s3.create_multipart(&path).await?;
    let mut ids: Vec<(usize, object_store::multipart::PartId)> = futures::stream::iter(0..parts)
        .map(|idx| {
            let (s3, path, id) = (s3.clone(), path.clone(), id.clone());
            let part = body.slice(idx * part_size..((idx + 1) * part_size).min(args.size));
            async move {
                let pid = s3.put_part(&path, &id, idx, PutPayload::from(part)).await?;
                Ok::<_, object_store::Error>((idx, pid))
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_collect()
        .await?;
    ids.sort_by_key(|(idx, _)| *idx);
    s3.complete_multipart(&path, &id, ids.into_iter().map(|(_, p)| p).collect())
        .await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "label={} run={run} op=multipart_put size={} part_size={part_size} parts={parts} concurrency={} secs={secs:.3} mb_per_s={:.1}",
        args.label,
        args.size,
        args.concurrency,
        mb_per_s(args.size, secs)
    );

    let started = Instant::now();
    let mut stream = s3.get(&path).await?.into_stream();
    let mut got = 0usize;
    while let Some(chunk) = stream.next().await {
        got += chunk?.len();
    }
    let secs = started.elapsed().as_secs_f64();
    if got != args.size {
        return Err(format!("GET returned {got} bytes, not {}", args.size).into());
    }
    println!(
        "label={} run={run} op=get size={} concurrency=1 secs={secs:.3} mb_per_s={:.1}",
        args.label,
        args.size,
        mb_per_s(args.size, secs)
    );

    let started = Instant::now();
    let got: usize = futures::stream::iter(0..parts)
        .map(|idx| {
            let (s3, path) = (s3.clone(), path.clone());
            let range = (idx * part_size) as u64..((idx + 1) * part_size).min(args.size) as u64;
            async move { s3.get_range(&path, range).await.map(|b| b.len()) }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_fold(0, |sum, n| async move { Ok(sum + n) })
        .await?;
    let secs = started.elapsed().as_secs_f64();
    if got != args.size {
        return Err(format!("ranged GETs returned {got} bytes, not {}", args.size).into());
    }
    println!(
        "label={} run={run} op=ranged_get size={} part_size={part_size} concurrency={} secs={secs:.3} mb_per_s={:.1}",
        args.label,
        args.size,
        args.concurrency,
        mb_per_s(args.size, secs)
    );
    s3.delete(&path).await?;
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

async fn small(s3: Arc<AmazonS3>, args: &Args, run: usize) -> Result<(), BoxError> {
    let prefix = format!("ceiling/small/{}/c{}/{run}", args.label, args.concurrency);
    // One distinct buffer per PUT, made before the clock starts.
    let bodies: Vec<Bytes> = (0..args.count)
        .map(|i| {
            Bytes::from(step_bench::noise(
                args.size,
                ((run as u64) << 32) | i as u64 | 1 << 62,
            ))
        })
        .collect();
    let started = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(bodies.into_iter().enumerate())
        .map(|(i, body)| {
            let s3 = s3.clone();
            let path = Path::from(format!("{prefix}/{i}"));
            async move {
                let t = Instant::now();
                s3.put(&path, PutPayload::from(body)).await?;
                Ok::<_, object_store::Error>(t.elapsed())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_collect()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    print_latencies("small_put", args, run, secs, latencies);

    // Read them back: a response with a body is where a server without
    // TCP_NODELAY can hold its second segment until the client ACKs.
    let started = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(0..args.count)
        .map(|i| {
            let s3 = s3.clone();
            let path = Path::from(format!("{prefix}/{i}"));
            let size = args.size;
            async move {
                let t = Instant::now();
                let got = s3.get(&path).await?.bytes().await?;
                if got.len() != size {
                    return Err(object_store::Error::Generic {
                        store: "s3_ceiling",
                        source: format!("GET {path}: {} bytes, not {size}", got.len()).into(),
                    });
                }
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_collect()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    print_latencies("small_get", args, run, secs, latencies);

    // HEAD: a response of headers only, written at once.
    let started = Instant::now();
    let latencies: Vec<Duration> = futures::stream::iter(0..args.count)
        .map(|i| {
            let s3 = s3.clone();
            let path = Path::from(format!("{prefix}/{i}"));
            async move {
                let t = Instant::now();
                s3.head(&path).await?;
                Ok::<_, object_store::Error>(t.elapsed())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .try_collect()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    print_latencies("small_head", args, run, secs, latencies);
    Ok(())
}

fn print_latencies(op: &str, args: &Args, run: usize, secs: f64, mut latencies: Vec<Duration>) {
    latencies.sort();
    println!(
        "label={} run={run} op={op} size={} count={} concurrency={} secs={secs:.3} ops_per_s={:.1} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        args.label,
        args.size,
        args.count,
        args.concurrency,
        args.count as f64 / secs,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
    );
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let s3 = Arc::new(client(&args.bucket)?);
    for run in 0..args.runs {
        match args.mode {
            Mode::Big => big(s3.clone(), &args, run).await?,
            Mode::Small => small(s3.clone(), &args, run).await?,
        }
    }
    Ok(())
}
