//! An S3 server (moto_server or a Garage node) and a Redis for tests that
//! run several coordinated step-server processes on one bucket. Each returns
//! Err with the reason where its program is not installed (`prereq` reports
//! it as ignored, or a failure under `STEP_REQUIRE_ALL_TESTS`).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use step_core::client::StepClient;
use step_tests::garage::Garage;
use step_tests::prereq;
use step_tests::redis::Redis;
use tokio::process::{Child, Command};

/// How long a test waits for a server to start or answer.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
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
pub struct S3 {
    pub endpoint: String,
    /// Credentials and region.
    pub env: Vec<(&'static str, String)>,
    pub storage: String,
    /// The server, stopped when dropped.
    _server: Box<dyn std::any::Any + Send>,
}

pub struct Setup {
    pub s3: S3,
    pub redis: Redis,
}

/// `PUT /bucket` (moto takes unsigned requests).
fn create_bucket(addr: &str, bucket: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).map_err(|e| format!("moto: {e}"))?;
    write!(
        conn,
        "PUT /{bucket} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
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

/// Redis and moto_server with `bucket`, the store under its `fenced/` prefix.
pub fn on_moto(bucket: &str) -> Result<Setup, String> {
    let redis = Redis::start()?;
    let moto = start_moto()?;
    create_bucket(&moto.endpoint["http://".len()..], bucket)?;
    let s3 = S3 {
        endpoint: moto.endpoint.clone(),
        env: vec![
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ],
        storage: format!("s3://{bucket}/fenced"),
        _server: Box::new(moto),
    };
    Ok(Setup { s3, redis })
}

/// Redis and a one-node Garage, the store under its `fenced/` prefix.
pub fn on_garage() -> Result<Setup, String> {
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

/// A step-server process on the bucket, killed when dropped.
pub struct Instance {
    pub child: Child,
    pub step: SocketAddr,
}

impl Instance {
    pub fn pid(&self) -> String {
        self.child.id().expect("running").to_string()
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }
}

/// Starts a step-server on `s`'s bucket reaching S3 at `endpoint` (a proxy
/// or the server itself), coordinated through its Redis when `coord`, and
/// waits until it is ready.
pub async fn instance(s: &Setup, endpoint: &str, coord: bool, secret: &str) -> Instance {
    let (port, health_port) = (free_port(), free_port());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_step-server"));
    for (var, _) in std::env::vars() {
        if var.starts_with("STEP_") || var.starts_with("AWS_") {
            cmd.env_remove(var);
        }
    }
    let child = cmd
        .env("AWS_ENDPOINT_URL", endpoint)
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
        .args(["--token-secret", secret, "--log", "warn"])
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
        child,
        step: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

pub async fn connect(inst: &Instance, token: &str) -> StepClient {
    let mut c = StepClient::connect(inst.step).await.expect("connect");
    c.set_timeout(Some(PATIENCE));
    c.set_token(token);
    c
}
