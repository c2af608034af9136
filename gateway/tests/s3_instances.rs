//! Instances on one bucket: the gateway binary (with its embedded
//! step-server) keeping everything in a real S3 server — a Garage node on
//! free loopback ports (`step_tests::garage`) — through `--storage s3://`.
//!
//! An instance is killed with SIGKILL in the middle of an upload; a second
//! one, started with an EMPTY local data directory on the same bucket, serves
//! the file the first completed and resumes the unfinished upload: the blocks
//! acknowledged before the kill are not asked for again, and the md5 and the
//! bytes come out right.
//!
//! Reported as ignored, with the reason, where Garage is not installed
//! (tests/garage/install.sh installs it); a failure instead under
//! `STEP_REQUIRE_ALL_TESTS` (see `step_tests::prereq`).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::StatusCode;
use serde_json::{Value, json};
use step_core::client::{SaveOptions, StepClient};
use step_core::digest::{md5_hex, password_for};
use step_tests::garage::Garage;
use step_tests::pattern;
use step_tests::prereq::{self, block_on_threads};
use tokio::process::{Child, Command};

const SECRET: &str = "s3-instances-test-secret";
const BLOCK: usize = 1 << 20;
const SIZE: usize = 24 * BLOCK + 12_345;
/// Every wait on an instance ends by this bound.
const PATIENCE: Duration = Duration::from_secs(60);

fn main() {
    prereq::main(vec![prereq::needs(
        "a_killed_instance_is_resumed_by_one_with_an_empty_data_dir",
        Garage::start,
        |garage| {
            block_on_threads(
                2,
                a_killed_instance_is_resumed_by_one_with_an_empty_data_dir(garage),
            )
        },
    )]);
}

struct Instance {
    child: Child,
    http: String,
    step: SocketAddr,
    _data_dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The gateway binary on free ports, its local data directory new and
/// empty, everything else in the bucket.
async fn instance(garage: &Garage) -> Instance {
    let data_dir = tempfile::tempdir().expect("data dir");
    let (http_port, step_port) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (var, _) in std::env::vars() {
        if var.starts_with("GATEWAY_") || var.starts_with("STEP_") || var.starts_with("AWS_") {
            cmd.env_remove(var);
        }
    }
    let child = cmd
        .envs(garage.aws_env())
        .args(["--bind", "127.0.0.1", "--port", &http_port.to_string()])
        .args([
            "--step-ip",
            "127.0.0.1",
            "--step-port",
            &step_port.to_string(),
        ])
        .arg("--data-dir")
        .arg(data_dir.path())
        .args(["--storage", &garage.storage_url("instances")])
        .args(["--token-secret", SECRET, "--log", "warn"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the gateway binary");
    let mut inst = Instance {
        child,
        http: format!("http://127.0.0.1:{http_port}"),
        step: SocketAddr::from(([127, 0, 0, 1], step_port)),
        _data_dir: data_dir,
    };
    let client = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ready = client
            .get(format!("{}/readyz", inst.http))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ready {
            return inst;
        }
        if let Some(status) = inst.child.try_wait().expect("try_wait") {
            panic!("the instance exited at start: {status}");
        }
        assert!(Instant::now() < deadline, "the instance never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn client(inst: &Instance) -> StepClient {
    let mut c = StepClient::connect(inst.step).await.expect("connect");
    c.set_timeout(Some(PATIENCE));
    c.login("alice", &password_for("alice"))
        .await
        .expect("login");
    c
}

fn block(body: &[u8], i: u64) -> Bytes {
    let start = i as usize * BLOCK;
    Bytes::copy_from_slice(&body[start..(start + BLOCK).min(body.len())])
}

async fn http_get(inst: &Instance, key: &str) -> (StatusCode, Vec<u8>) {
    let client = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("client");
    let login: Value = client
        .post(format!("{}/login", inst.http))
        .json(&json!({"username": "alice"}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("login answer");
    let token = login["token"].as_str().expect("token");
    let r = client
        .get(format!("{}/files/{key}", inst.http))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    let status = r.status();
    (status, r.bytes().await.expect("body").to_vec())
}

async fn a_killed_instance_is_resumed_by_one_with_an_empty_data_dir(garage: Garage) {
    let body = pattern(SIZE, 7);
    let small = pattern(50_000, 8);
    let opts = |resume| SaveOptions {
        block_size: Some(BLOCK as u64),
        resume,
    };

    let mut first = instance(&garage).await;
    let mut c = client(&first).await;
    let plan = c
        .file_save(Some("small.bin"), small.len() as u64, opts(false))
        .await
        .expect("plan small");
    let md5 = c
        .upload_block(&plan, 0, Bytes::from(small.clone()))
        .await
        .expect("small block");
    assert_eq!(md5, Some(md5_hex(&small)));

    let plan = c
        .file_save(Some("big.bin"), SIZE as u64, opts(false))
        .await
        .expect("plan big");
    let half = plan.total_block / 2;
    let blocks = futures::stream::iter((0..half).map(|i| Ok((i, block(&body, i)))));
    let done = c
        .upload_blocks(&plan, blocks, 4, |_| {})
        .await
        .expect("first half");
    assert_eq!(done, None, "complete after half the blocks");
    // Every block of the first half was acknowledged: now kill -9.
    first.child.start_kill().expect("SIGKILL");
    first.child.wait().await.expect("reaped");
    drop(c);

    let second = instance(&garage).await;
    let (status, got) = http_get(&second, "small.bin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == small, "small.bin read back differs");

    let mut c = client(&second).await;
    let id = plan.upload_id.as_deref().expect("upload_id");
    let resumed = c
        .file_save_own("big.bin", SIZE as u64, Some(BLOCK as u64), id, false)
        .await
        .expect("resume");
    assert!(resumed.resumed, "the unfinished upload was not found");
    assert_eq!(
        resumed.missing,
        vec![[half, plan.total_block]],
        "blocks acknowledged before the kill are kept"
    );
    let rest = futures::stream::iter((half..plan.total_block).map(|i| Ok((i, block(&body, i)))));
    let md5 = c
        .upload_blocks(&resumed, rest, 4, |_| {})
        .await
        .expect("second half");
    assert_eq!(md5, Some(md5_hex(&body)));
    let (status, got) = http_get(&second, "big.bin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == body, "big.bin read back differs");
}
