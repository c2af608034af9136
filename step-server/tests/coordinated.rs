//! Three step-server processes on one bucket of a real S3 server (a Garage
//! node, `step_tests::garage`), coordinated through a real Redis (AOF,
//! `appendfsync always`; `step_tests::redis`) with `--coord`, sharing one
//! token secret: interchangeable instances, as `deploy/cluster/` runs them.
//!
//! - a token from one instance works on every instance; one upload's
//!   blocks, each on a new connection to another instance, in shuffled
//!   order with repeats: exactly one answer carries the md5, and it is right;
//! - three uploads of one key racing on three instances: one winner, its
//!   bytes whole; three DATA SAVEs of one key likewise;
//! - an instance killed (SIGKILL) mid-upload: the client's SAVE-resume on
//!   another gets exactly the missing blocks and completes, byte-identical;
//! - Redis killed mid-upload: blocks and SAVEs are refused (406, reason
//!   `unavailable`), `/readyz` answers 503, nothing completes; Redis started
//!   again on its data: the same upload resumes with exactly the blocks not
//!   acknowledged and completes — no step-server restarted.
//!
//! Reported as ignored, with the reason, where Garage or redis-server is
//! not installed; a failure instead under `STEP_REQUIRE_ALL_TESTS`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use step_core::client::{ClientError, SaveOptions, StepClient, UploadPlan};
use step_core::digest::{md5_hex, password_for};
use step_core::message::Reason;
use step_tests::garage::Garage;
use step_tests::pattern;
use step_tests::prereq::{self, block_on_threads};
use step_tests::redis::Redis;
use tokio::process::{Child, Command};

const SECRET: &str = "coordinated-test-secret";
const BLOCK: u64 = 64 << 10;
const PATIENCE: Duration = Duration::from_secs(60);

struct Cluster {
    garage: Garage,
    redis: Redis,
}

fn start() -> Result<Cluster, String> {
    // Redis first: it is the quicker to say it is missing.
    let redis = Redis::start()?;
    let garage = Garage::start()?;
    Ok(Cluster { garage, redis })
}

fn main() {
    prereq::main(vec![prereq::needs(
        "three_instances_on_one_bucket_act_as_one_server",
        start,
        |c| block_on_threads(2, three_instances_on_one_bucket_act_as_one_server(c)),
    )]);
}

struct Instance {
    child: Child,
    step: SocketAddr,
    health: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

async fn instance(c: &Cluster) -> Instance {
    let (port, health_port) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_step-server"));
    for (var, _) in std::env::vars() {
        if var.starts_with("STEP_") || var.starts_with("AWS_") {
            cmd.env_remove(var);
        }
    }
    let data_dir = std::env::temp_dir();
    let child = cmd
        .envs(c.garage.aws_env())
        .args(["--ip", "127.0.0.1", "--port", &port.to_string()])
        .args(["--health-port", &health_port.to_string()])
        .args(["--storage", &c.garage.storage_url("coordinated")])
        .args(["--coord", &c.redis.url()])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--token-secret", SECRET, "--log", "warn"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn step-server");
    let inst = Instance {
        child,
        step: SocketAddr::from(([127, 0, 0, 1], port)),
        health: format!("http://127.0.0.1:{health_port}/readyz"),
    };
    let deadline = Instant::now() + PATIENCE;
    while ready(&inst).await != Some(200) {
        assert!(Instant::now() < deadline, "an instance never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    inst
}

/// `/readyz`'s status, if it answers.
async fn ready(inst: &Instance) -> Option<u16> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    match client.get(&inst.health).send().await {
        Ok(r) => Some(r.status().as_u16()),
        Err(_) => None,
    }
}

/// A client of `inst` holding `token` (issued by any instance).
async fn connect(inst: &Instance, token: Option<&str>) -> StepClient {
    let mut c = StepClient::connect(inst.step).await.expect("connect");
    c.set_timeout(Some(PATIENCE));
    match token {
        Some(t) => c.set_token(t),
        None => {
            c.login("alice", &password_for("alice"))
                .await
                .expect("login");
        }
    }
    c
}

fn opts(resume: bool) -> SaveOptions {
    SaveOptions {
        block_size: Some(BLOCK),
        resume,
    }
}

fn block(body: &[u8], i: u64) -> Bytes {
    let start = (i * BLOCK) as usize;
    Bytes::copy_from_slice(&body[start..(start + BLOCK as usize).min(body.len())])
}

fn is_unavailable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Refused {
            code: 406,
            reason: Some(Reason::Unavailable),
            ..
        }
    )
}

/// A pseudo-random permutation of `0..n` (fixed seed).
fn shuffled(n: u64, seed: u64) -> Vec<u64> {
    let mut v: Vec<u64> = (0..n).collect();
    let mut x = seed | 1;
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
    v
}

async fn three_instances_on_one_bucket_act_as_one_server(mut c: Cluster) {
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(instance(&c).await);
    }
    let mut first = connect(&nodes[0], None).await;
    let token = first.token().expect("a token").to_owned();

    // Blocks spread over the instances, a new connection each.
    let body = pattern(21 * BLOCK as usize + 777, 3);
    let plan = first
        .file_save(Some("spread.bin"), body.len() as u64, opts(false))
        .await
        .expect("plan");
    let order: Vec<u64> = shuffled(plan.total_block, 7)
        .into_iter()
        .chain([0, 5, 9])
        .collect();
    let mut md5s = Vec::new();
    for (n, i) in order.into_iter().enumerate() {
        let mut c = connect(&nodes[n % 3], Some(&token)).await;
        match c.upload_block(&plan, i, block(&body, i)).await {
            Ok(Some(md5)) => md5s.push(md5),
            Ok(None) => {}
            // A repeat after completion.
            Err(ClientError::Refused { code: 408, .. }) => {}
            Err(e) => panic!("block {i}: {e}"),
        }
    }
    assert_eq!(
        md5s,
        vec![md5_hex(&body)],
        "exactly one answer carries the md5"
    );
    for node in &nodes {
        let mut c = connect(node, Some(&token)).await;
        let got = c.file_get("spread.bin", None).await.expect("get");
        assert_eq!(got.md5, md5_hex(&body));
    }

    // Three uploads of one key racing on three instances.
    let bodies: Vec<Arc<Vec<u8>>> = (0..3)
        .map(|n| Arc::new(pattern(6 * BLOCK as usize + 100, 10 + n as u8)))
        .collect();
    let racers = nodes.iter().zip(&bodies).map(|(node, data)| {
        let (addr, token, data) = (node.step, token.clone(), Arc::clone(data));
        tokio::spawn(async move {
            let mut c = StepClient::connect(addr).await?;
            c.set_timeout(Some(PATIENCE));
            c.set_token(&token);
            let plan: UploadPlan = c
                .file_save(Some("race.bin"), data.len() as u64, opts(false))
                .await?;
            let mut md5 = None;
            for i in 0..plan.total_block {
                md5 = c.upload_block(&plan, i, block(&data, i)).await?;
            }
            Ok::<_, ClientError>(md5)
        })
    });
    let mut winners = Vec::new();
    for (n, r) in futures::future::join_all(racers)
        .await
        .into_iter()
        .enumerate()
    {
        match r.expect("task") {
            Ok(Some(md5)) => winners.push((n, md5)),
            Ok(None) => panic!("racer {n} sent every block and got no md5"),
            Err(ClientError::Refused {
                code: 402 | 408, ..
            }) => {}
            Err(e) => panic!("racer {n}: {e}"),
        }
    }
    assert_eq!(winners.len(), 1, "{winners:?}");
    let (n, md5) = &winners[0];
    assert_eq!(md5, &md5_hex(bodies[*n].as_slice()));
    let mut reader = connect(&nodes[(n + 1) % 3], Some(&token)).await;
    assert_eq!(
        &reader.file_get("race.bin", None).await.expect("get").md5,
        md5
    );

    // Three DATA SAVEs of one key.
    let savers = nodes.iter().enumerate().map(|(n, node)| {
        let (addr, token) = (node.step, token.clone());
        tokio::spawn(async move {
            let mut c = StepClient::connect(addr).await?;
            c.set_token(&token);
            let mut rec = serde_json::Map::new();
            rec.insert("writer".into(), n.into());
            c.data_save(Some("rec"), rec).await.map(|_| n)
        })
    });
    let mut saved = Vec::new();
    for r in futures::future::join_all(savers).await {
        match r.expect("task") {
            Ok(n) => saved.push(n),
            Err(ClientError::Refused { code: 402, .. }) => {}
            Err(e) => panic!("DATA SAVE: {e}"),
        }
    }
    assert_eq!(saved.len(), 1, "{saved:?}");
    let rec = reader.data_get("rec").await.expect("data get");
    assert_eq!(rec["writer"], serde_json::Value::from(saved[0]));

    // An instance killed mid-upload; the client resumes through another.
    let body = pattern(12 * BLOCK as usize + 5, 4);
    let mut a = connect(&nodes[0], Some(&token)).await;
    let plan = a
        .file_save(Some("killed.bin"), body.len() as u64, opts(false))
        .await
        .expect("plan");
    for i in 0..6 {
        assert_eq!(
            a.upload_block(&plan, i, block(&body, i))
                .await
                .expect("block"),
            None
        );
    }
    let mut dead = nodes.remove(0);
    dead.child.start_kill().expect("SIGKILL");
    dead.child.wait().await.expect("reaped");
    drop(a);
    let mut b = connect(&nodes[0], Some(&token)).await;
    let id = plan.upload_id.as_deref().expect("upload_id");
    let again = b
        .file_save_own("killed.bin", body.len() as u64, Some(BLOCK), id, false)
        .await
        .expect("resume");
    assert!(again.resumed);
    assert_eq!(again.missing, vec![[6, plan.total_block]]);
    let mut md5 = None;
    for i in 6..plan.total_block {
        md5 = b
            .upload_block(&again, i, block(&body, i))
            .await
            .expect("block");
    }
    assert_eq!(md5, Some(md5_hex(&body)));

    // Redis killed mid-upload, then back.
    let body = pattern(8 * BLOCK as usize + 9, 5);
    let plan = b
        .file_save(Some("engine.bin"), body.len() as u64, opts(false))
        .await
        .expect("plan");
    for i in 0..4 {
        b.upload_block(&plan, i, block(&body, i))
            .await
            .expect("block");
    }
    c.redis.kill();
    let mut other = connect(&nodes[1], Some(&token)).await;
    for i in 4..8 {
        let e = other
            .upload_block(&plan, i, block(&body, i))
            .await
            .expect_err("a block without the engine");
        assert!(is_unavailable(&e), "block {i}: {e}");
    }
    let e = other
        .file_save(Some("engine2.bin"), 10, opts(false))
        .await
        .expect_err("a SAVE without the engine");
    assert!(is_unavailable(&e), "{e}");
    assert_eq!(ready(&nodes[1]).await, Some(503));
    assert!(
        matches!(
            other.file_get("engine.bin", None).await,
            Err(ClientError::Refused { .. })
        ),
        "nothing completes without the engine"
    );
    c.redis.restart().expect("redis back");
    let deadline = Instant::now() + PATIENCE;
    let id = plan.upload_id.clone().expect("upload_id");
    let again = loop {
        match other
            .file_save_own("engine.bin", body.len() as u64, Some(BLOCK), &id, false)
            .await
        {
            Ok(p) => break p,
            Err(e) if is_unavailable(&e) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("resume after the engine came back: {e}"),
        }
    };
    assert_eq!(
        again.missing,
        vec![[4, plan.total_block]],
        "acknowledged marks survived"
    );
    let mut md5 = None;
    for i in 4..plan.total_block {
        md5 = other
            .upload_block(&again, i, block(&body, i))
            .await
            .expect("block");
    }
    assert_eq!(md5, Some(md5_hex(&body)));
    // The instance that saw nothing of the outage is ready again too (its
    // connection to the engine is made again at its next use).
    let deadline = Instant::now() + PATIENCE;
    while ready(&nodes[0]).await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "an instance stayed unready after the engine came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
