//! `idle_conns`: hold many idle STEP connections open to a server and check
//! that a new client is still answered promptly.
//!
//! Opens `--conns` TCP connections (each logs in once, so every one is a
//! served session, then goes quiet), reads the server's resident memory from
//! `/proc/<--server-pid>/status` before and after, then times `--probes` new
//! clients (connect + LOGIN + a one-block FILE upload) while all the idle
//! connections are still open. Prints `key=value` lines. The fd limit of this
//! process must allow `--conns` sockets (the bench script raises it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use step_core::client::{SaveOptions, StepClient};
use step_core::digest::password_for;
use tokio::sync::Semaphore;

#[derive(Parser, Debug)]
#[command(about = "Idle connections held open; server RSS and new-client latency")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:1379")]
    addr: String,
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    parallel: usize,
    /// PID of the server, for its resident memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// New clients timed while the idle ones are held.
    #[arg(long, default_value_t = 20)]
    probes: usize,
    /// Seconds to wait for any one answer.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// Seconds to keep the idle connections open after the probes.
    #[arg(long, default_value_t = 0)]
    hold: u64,
}

/// `VmRSS` and `VmHWM` of `pid` in KiB.
fn rss_kib(pid: Option<u32>) -> (u64, u64) {
    let Some(pid) = pid else { return (0, 0) };
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return (0, 0);
    };
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// One new client: connect, log in, upload one 10 KiB file. Seconds.
async fn probe(addr: &str, n: usize, timeout: Duration) -> Result<f64, String> {
    let body = Bytes::from(vec![n as u8; 10 * 1024]);
    let started = Instant::now();
    let mut c = StepClient::connect(addr).await.map_err(|e| e.to_string())?;
    c.set_timeout(Some(timeout));
    let user = format!("probe{}", std::process::id());
    c.login(&user, &password_for(&user))
        .await
        .map_err(|e| e.to_string())?;
    let key = format!("probe-{n}-{}", std::process::id());
    let plan = c
        .file_save(Some(&key), body.len() as u64, SaveOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let md5 = c
        .upload_block(&plan.key, 0, body)
        .await
        .map_err(|e| e.to_string())?;
    let secs = started.elapsed().as_secs_f64();
    if md5.is_none() {
        return Err("no md5 after the only block".into());
    }
    let _ = c.file_delete(&plan.key).await;
    Ok(secs)
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let timeout = Duration::from_secs(args.timeout);
    let (rss0, _) = rss_kib(args.server_pid);
    println!("phase=before server_rss_kib={rss0}");

    // Baseline latency with no idle connections.
    let mut base = Vec::new();
    for n in 0..args.probes {
        base.push(probe(&args.addr, n, timeout).await?);
    }

    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.parallel.max(1)));
    let mut tasks = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let gate = Arc::clone(&gate);
        let addr = args.addr.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.map_err(|e| e.to_string())?;
            let mut c = StepClient::connect(&addr)
                .await
                .map_err(|e| e.to_string())?;
            c.set_timeout(Some(timeout));
            let user = format!("idle{}", i % 100);
            c.login(&user, &password_for(&user))
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(c)
        }));
    }
    let mut held = Vec::with_capacity(args.conns);
    let mut errors = 0usize;
    let mut first_error = None;
    for t in tasks {
        match t.await {
            Ok(Ok(c)) => held.push(c),
            Ok(Err(e)) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.to_string());
            }
        }
    }
    let open_secs = started.elapsed().as_secs_f64();
    // Let the server settle (tasks parked, buffers as they stay).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss1, hwm1) = rss_kib(args.server_pid);
    println!(
        "phase=held conns={} errors={errors} open_secs={open_secs:.2} server_rss_kib={rss1} server_hwm_kib={hwm1} per_conn_bytes={:.0}",
        held.len(),
        (rss1.saturating_sub(rss0) * 1024) as f64 / held.len().max(1) as f64
    );
    if let Some(e) = first_error {
        println!("first_error={}", e.replace(char::is_whitespace, "_"));
    }

    let mut loaded = Vec::new();
    let mut probe_errors = 0usize;
    for n in 0..args.probes {
        match probe(&args.addr, args.probes + n, timeout).await {
            Ok(s) => loaded.push(s),
            Err(_) => probe_errors += 1,
        }
    }
    // The idle ones must still be alive and usable: one round trip on a few.
    let mut alive = 0usize;
    let step = (held.len() / 10).max(1);
    let mut checked = 0usize;
    for c in held.iter_mut().step_by(step) {
        checked += 1;
        let req = c.request(step_core::Operation::Get, step_core::Kind::Data)?;
        if let Ok(resp) = c.call(&req.with("key", "nothing-here")).await
            && resp.status_code().is_some()
        {
            alive += 1;
        }
    }
    base.sort_by(f64::total_cmp);
    loaded.sort_by(f64::total_cmp);
    let (rss2, _) = rss_kib(args.server_pid);
    println!(
        "phase=probe idle_conns={} probe_errors={probe_errors} base_p50_ms={:.3} base_max_ms={:.3} loaded_p50_ms={:.3} loaded_p99_ms={:.3} loaded_max_ms={:.3} idle_alive={alive}/{checked} server_rss_kib={rss2}",
        held.len(),
        quantile(&base, 0.5) * 1e3,
        quantile(&base, 1.0) * 1e3,
        quantile(&loaded, 0.5) * 1e3,
        quantile(&loaded, 0.99) * 1e3,
        quantile(&loaded, 1.0) * 1e3,
    );
    if args.hold > 0 {
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
    }
    drop(held);
    Ok(())
}
