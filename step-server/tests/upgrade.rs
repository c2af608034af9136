//! Upgrade of a bucket written in the layout of releases before fencing
//! (DATA records under `rec/`, file metas under `meta/`, no pointers in
//! Redis): step-server processes of this release started on it with
//! `--coord` serve every record and file, two starting at once migrate it
//! once, and a DELETE after the upgrade stays deleted at every later start.
//!
//! The earlier layout is written by a step-server without `--coord`, whose
//! layout is the one earlier releases used in coordinated mode too. The
//! bucket is on moto_server (a real S3 API over HTTP), and again on a
//! Garage node (whose LIST may lag); the coordinator is a real Redis.
//! Reported as ignored, with the reason, where moto_server, Garage or
//! redis-server is not installed; a failure instead under
//! `STEP_REQUIRE_ALL_TESTS`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value};
use step_core::client::{ClientError, SaveOptions, StepClient};
use step_core::digest::{md5_hex, password_for};
use step_tests::garage::Garage;
use step_tests::pattern;
use step_tests::prereq::{self, block_on_threads};
use step_tests::redis::Redis;
use tokio::process::{Child, Command};

const SECRET: &str = "upgrade-test-secret";
const BUCKET: &str = "upgrade";
const PATIENCE: Duration = Duration::from_secs(60);

struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn start_moto() -> Result<Moto, String> {
    prereq::command_works("moto_server", &["--help"])
        .map_err(|e| format!("moto_server is not installed ({e})"))?;
    let port = free_port();
    let child = std::process::Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start moto_server: {e}"))?;
    let moto = Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("moto_server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(moto)
}

/// An S3 server with a bucket, as the step-servers are to reach it.
struct S3 {
    endpoint: String,
    /// Credentials and region.
    env: Vec<(&'static str, String)>,
    storage: String,
    /// The server, stopped when dropped.
    _server: Box<dyn std::any::Any + Send>,
}

struct Setup {
    s3: S3,
    redis: Redis,
}

/// `PUT /bucket` (moto takes unsigned requests).
fn create_bucket(addr: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).map_err(|e| format!("moto: {e}"))?;
    write!(
        conn,
        "PUT /{BUCKET} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("moto: {e}"))?;
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    if answer.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!(
            "create bucket: {}",
            answer.lines().next().unwrap_or("")
        ))
    }
}

fn on_moto() -> Result<Setup, String> {
    let redis = Redis::start()?;
    let moto = start_moto()?;
    create_bucket(&moto.endpoint["http://".len()..])?;
    let s3 = S3 {
        endpoint: moto.endpoint.clone(),
        env: vec![
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ],
        storage: format!("s3://{BUCKET}/fenced"),
        _server: Box::new(moto),
    };
    Ok(Setup { s3, redis })
}

struct Instance {
    /// Killed when dropped.
    _child: Child,
    step: SocketAddr,
}

async fn instance(s: &Setup, coord: bool) -> Instance {
    let (port, health_port) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_step-server"));
    for (var, _) in std::env::vars() {
        if var.starts_with("STEP_") || var.starts_with("AWS_") {
            cmd.env_remove(var);
        }
    }
    let child = cmd
        .env("AWS_ENDPOINT_URL", &s.s3.endpoint)
        .envs(s.s3.env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["--ip", "127.0.0.1", "--port", &port.to_string()])
        .args(["--health-port", &health_port.to_string()])
        .args(["--storage", &s.s3.storage])
        .args(if coord {
            vec!["--coord".to_owned(), s.redis.url()]
        } else {
            Vec::new()
        })
        .arg("--data-dir")
        .arg(std::env::temp_dir())
        .args(["--token-secret", SECRET, "--log", "warn"])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn step-server");
    let health = format!("http://127.0.0.1:{health_port}/readyz");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("http client");
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Ok(r) = http.get(&health).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "an instance never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Instance {
        _child: child,
        step: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

async fn connect(inst: &Instance, token: &str) -> StepClient {
    let mut c = StepClient::connect(inst.step).await.expect("connect");
    c.set_timeout(Some(PATIENCE));
    c.set_token(token);
    c
}

fn on_garage() -> Result<Setup, String> {
    let redis = Redis::start()?;
    let garage = Garage::start()?;
    let s3 = S3 {
        endpoint: garage.endpoint.clone(),
        env: garage
            .aws_env()
            .into_iter()
            .filter(|(k, _)| *k != "AWS_ENDPOINT_URL")
            .collect(),
        storage: garage.storage_url("fenced"),
        _server: Box::new(garage),
    };
    Ok(Setup { s3, redis })
}

fn main() {
    let run = |s| block_on_threads(2, a_legacy_bucket_is_served_after_the_upgrade(s));
    prereq::main(vec![
        prereq::needs("on_moto", on_moto, run),
        prereq::needs("on_garage", on_garage, run),
    ]);
}

fn record(n: u64) -> Map<String, Value> {
    let mut rec = Map::new();
    rec.insert("n".into(), Value::from(n));
    rec
}

/// SAVE `key` and send every block.
async fn upload(c: &mut StepClient, key: &str, body: &[u8]) -> String {
    let opts = SaveOptions {
        block_size: Some(64 << 10),
        resume: false,
    };
    let plan = c
        .file_save(Some(key), body.len() as u64, opts)
        .await
        .expect("save");
    let mut md5 = None;
    for i in 0..plan.total_block {
        let start = (i * (64 << 10)) as usize;
        let end = (start + (64 << 10)).min(body.len());
        md5 = c
            .upload_block(&plan, i, Bytes::copy_from_slice(&body[start..end]))
            .await
            .expect("block");
    }
    md5.expect("complete")
}

/// Every record and file of `files`/`records` served by `inst`.
async fn serves(inst: &Instance, token: &str, files: &[(&str, Vec<u8>)], records: &[(&str, u64)]) {
    let mut c = connect(inst, token).await;
    for (key, n) in records {
        let got = c.data_get(key).await.expect("data get");
        assert_eq!(got["n"], Value::from(*n), "{key}");
    }
    for (key, body) in files {
        assert_eq!(
            c.file_get(key, None).await.expect("get").md5,
            md5_hex(body),
            "{key}"
        );
        assert_eq!(&step_tests::download(&mut c, key).await, body, "{key}");
    }
    let page = c.file_list(Default::default()).await.expect("list");
    let mut want: Vec<&str> = files.iter().map(|f| f.0).collect();
    want.sort_unstable();
    let got: Vec<&str> = page.files.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(got, want);
}

async fn a_legacy_bucket_is_served_after_the_upgrade(s: Setup) {
    // The earlier layout, written by a server without --coord.
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("a/empty", Vec::new()),
        ("a/small", pattern(1000, 1)),
        ("b/large", pattern(300_000, 2)),
    ];
    let records: Vec<(&str, u64)> = vec![("r0", 0), ("r1", 1), ("r2", 2)];
    let token = {
        let old = instance(&s, false).await;
        let mut login = StepClient::connect(old.step).await.expect("connect");
        let token = login
            .login("alice", &password_for("alice"))
            .await
            .expect("login");
        let mut c = connect(&old, &token).await;
        for (key, body) in &files {
            if body.is_empty() {
                let plan = c
                    .file_save(Some(key), 0, SaveOptions::default())
                    .await
                    .expect("save empty");
                assert_eq!(plan.total_block, 0);
            } else {
                assert_eq!(upload(&mut c, key, body).await, md5_hex(body));
            }
        }
        for (key, n) in &records {
            c.data_save(Some(key), record(*n)).await.expect("data save");
        }
        token
    };

    // Two servers of this release start on it at once.
    let (a, b) = tokio::join!(instance(&s, true), instance(&s, true));
    serves(&a, &token, &files, &records).await;
    serves(&b, &token, &files, &records).await;

    // Deleted after the upgrade: stays deleted, also for a server started
    // later.
    let mut c = connect(&a, &token).await;
    c.data_delete("r1").await.expect("data delete");
    c.file_delete("a/small").await.expect("file delete");
    drop((a, b));
    let later = instance(&s, true).await;
    let mut c = connect(&later, &token).await;
    assert!(matches!(
        c.data_get("r1").await,
        Err(ClientError::Refused { code: 404, .. })
    ));
    assert!(matches!(
        c.file_get("a/small", None).await,
        Err(ClientError::Refused { code: 404, .. })
    ));
    let files: Vec<_> = files.into_iter().filter(|f| f.0 != "a/small").collect();
    let records: Vec<_> = records.into_iter().filter(|r| r.0 != "r1").collect();
    serves(&later, &token, &files, &records).await;
}
