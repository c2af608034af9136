//! Fencing in coordinated mode (`--coord`): a step-server that stalled
//! (SIGSTOP) while its write to the bucket was in flight, and resumed after
//! its lease had lapsed, must never replace what a later holder committed.
//!
//! Two step-server processes on one bucket and one real Redis; the bucket
//! on moto_server (a real S3 API over HTTP), and again on a Garage node
//! (which ignores conditional writes, so only fencing can help). Server A's S3 traffic goes through an
//! HTTP-aware TCP proxy that holds A's PUTs of DATA records and file metas.
//! With three of A's writes held (a DATA SAVE, and two completions), A is
//! stopped past the lease; B then SAVEs the same record (acknowledged),
//! replaces the first file with its own upload and deletes the second
//! key's upload. A is resumed and its writes released: none of them is
//! acknowledged, and both servers serve B's record and file, and no file
//! for the deleted key.
//!
//! Reported as ignored, with the reason, where moto_server, Garage or
//! redis-server is not installed; a failure instead under
//! `STEP_REQUIRE_ALL_TESTS`.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Map, Value};
use step_core::client::{ClientError, SaveOptions, StepClient};
use step_core::digest::{md5_hex, password_for};
use step_core::message::Reason;
use step_tests::garage::Garage;
use step_tests::pattern;
use step_tests::prereq::{self, block_on_threads};
use step_tests::redis::Redis;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::watch;

const SECRET: &str = "fencing-test-secret";
const BUCKET: &str = "fence";
const PATIENCE: Duration = Duration::from_secs(60);
/// Longer than a lease lives unrenewed (`coord::LEASE_TTL`, 10 s).
const PAST_THE_LEASE: Duration = Duration::from_secs(12);

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
    let run = |s| {
        block_on_threads(
            2,
            a_writer_whose_lease_lapsed_never_replaces_a_later_commit(s),
        )
    };
    prereq::main(vec![
        prereq::needs("on_moto", on_moto, run),
        prereq::needs("on_garage", on_garage, run),
    ]);
}

// ------------------------------------------------------------------ proxy

/// Holds, while on, every request whose request line `matches`.
struct Gate {
    hold: watch::Sender<bool>,
    held: AtomicUsize,
}

/// A PUT of a DATA record or of a file's meta, in any layout (`rec/`,
/// `recv/`, `meta/`, `….meta`).
fn is_commit_put(line: &str) -> bool {
    let mut parts = line.split(' ');
    let (Some("PUT"), Some(path)) = (parts.next(), parts.next()) else {
        return false;
    };
    let path = path.split('?').next().unwrap_or_default();
    path.contains("/rec/")
        || path.contains("/recv/")
        || path.contains("/meta/")
        || path.ends_with(".meta")
}

/// An HTTP/1.1 proxy to `target` that parses requests (Content-Length
/// bodies, as object_store sends them) so it can hold chosen ones.
async fn start_proxy(target: SocketAddr, gate: Arc<Gate>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(forward(client, target, Arc::clone(&gate)));
        }
    });
    addr
}

async fn forward(client: TcpStream, target: SocketAddr, gate: Arc<Gate>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let down = async {
        let _ = tokio::io::copy(&mut server_rd, &mut client_wr).await;
        let _ = client_wr.shutdown().await;
    };
    let up = async {
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let head_end = loop {
                if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                match client_rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            assert!(
                !head
                    .to_ascii_lowercase()
                    .contains("transfer-encoding: chunked"),
                "the proxy only parses Content-Length bodies"
            );
            let body_len: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + body_len {
                match client_rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let request: Vec<u8> = buf.drain(..head_end + body_len).collect();
            let line = head.lines().next().unwrap_or_default();
            if *gate.hold.borrow() && is_commit_put(line) {
                gate.held.fetch_add(1, Ordering::SeqCst);
                let mut rx = gate.hold.subscribe();
                let _ = rx.wait_for(|on| !*on).await;
            }
            if server_wr.write_all(&request).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(up, down);
}

// ------------------------------------------------------------------ servers

struct Instance {
    child: Child,
    step: SocketAddr,
}

impl Instance {
    fn pid(&self) -> String {
        self.child.id().expect("running").to_string()
    }

    fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig}");
    }
}

async fn instance(s: &Setup, endpoint: &str) -> Instance {
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
        .args(["--coord", &s.redis.url()])
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
        child,
        step: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

async fn connect(inst: &Instance, token: &str) -> StepClient {
    let mut c = StepClient::connect(inst.step).await.expect("connect");
    c.set_timeout(Some(PATIENCE));
    c.set_token(token);
    c
}

fn record(who: &str) -> Map<String, Value> {
    let mut rec = Map::new();
    rec.insert("writer".into(), Value::from(who));
    rec
}

fn opts() -> SaveOptions {
    SaveOptions {
        block_size: Some(64 << 10),
        resume: false,
    }
}

/// SAVE `key` and send its one block: the block's answer carries the md5
/// when it completed the file.
async fn upload_one(
    c: &mut StepClient,
    key: &str,
    body: &[u8],
) -> Result<Option<String>, ClientError> {
    let plan = c.file_save(Some(key), body.len() as u64, opts()).await?;
    c.upload_block(&plan, 0, Bytes::copy_from_slice(body)).await
}

fn is_refusal(r: &Result<impl std::fmt::Debug, ClientError>) -> bool {
    matches!(
        r,
        Err(ClientError::Refused {
            code: 406,
            reason: Some(Reason::Unavailable),
            ..
        })
    )
}

async fn a_writer_whose_lease_lapsed_never_replaces_a_later_commit(s: Setup) {
    let s3_addr: SocketAddr = s.s3.endpoint["http://".len()..]
        .trim_end_matches('/')
        .parse()
        .expect("S3 address");
    let gate = Arc::new(Gate {
        hold: watch::channel(false).0,
        held: AtomicUsize::new(0),
    });
    let proxy = start_proxy(s3_addr, Arc::clone(&gate)).await;
    let a = instance(&s, &format!("http://{proxy}")).await;
    let b = instance(&s, &s.s3.endpoint).await;
    let mut login = StepClient::connect(a.step).await.expect("connect");
    let token = login
        .login("alice", &password_for("alice"))
        .await
        .expect("login");

    // A's three writes, each held at its commit PUT.
    gate.hold.send_replace(true);
    let a_body = pattern(60_000, 1);
    let (a_rec, a_doc, a_gone) = {
        let mk = || {
            let (addr, token) = (a.step, token.clone());
            async move {
                let mut c = StepClient::connect(addr).await.expect("connect");
                c.set_timeout(Some(PATIENCE));
                c.set_token(&token);
                c
            }
        };
        let (mut c1, mut c2, mut c3) = (mk().await, mk().await, mk().await);
        let body2 = a_body.clone();
        let body3 = a_body.clone();
        (
            tokio::spawn(async move { c1.data_save(Some("rec"), record("a")).await }),
            tokio::spawn(async move { upload_one(&mut c2, "doc", &body2).await }),
            tokio::spawn(async move { upload_one(&mut c3, "gone", &body3).await }),
        )
    };
    let deadline = Instant::now() + PATIENCE;
    while gate.held.load(Ordering::SeqCst) < 3 {
        if a_doc.is_finished() {
            panic!("doc: {:?}", a_doc.await);
        }
        assert!(
            Instant::now() < deadline,
            "A's commit PUTs never came: {} held; {:?} {:?} {:?}",
            gate.held.load(Ordering::SeqCst),
            a_rec.is_finished(),
            a_doc.is_finished(),
            a_gone.is_finished()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A stalls past its leases; B takes the keys over.
    a.signal("-STOP");
    tokio::time::sleep(PAST_THE_LEASE).await;
    let mut cb = connect(&b, &token).await;
    cb.data_save(Some("rec"), record("b"))
        .await
        .expect("B's DATA SAVE once A's lease lapsed");
    let b_body = pattern(50_000, 2);
    let b_md5 = upload_one(&mut cb, "doc", &b_body)
        .await
        .expect("B's upload");
    assert_eq!(b_md5.as_deref(), Some(md5_hex(&b_body).as_str()));
    // An unfinished upload's DELETE answers 404 ("the temporary files are
    // deleted").
    match cb.file_delete("gone").await {
        Ok(()) | Err(ClientError::Refused { code: 404, .. }) => {}
        Err(e) => panic!("B's DELETE: {e}"),
    }

    // A resumes; its writes land.
    a.signal("-CONT");
    gate.hold.send_replace(false);
    let a_rec = a_rec.await.expect("task");
    let a_doc = a_doc.await.expect("task");
    let a_gone = a_gone.await.expect("task");
    let mut wrong = Vec::new();
    if !is_refusal(&a_rec) {
        wrong.push(format!("A's DATA SAVE: {a_rec:?}"));
    }
    if !is_refusal(&a_doc) {
        wrong.push(format!("A's completion of doc: {a_doc:?}"));
    }
    if !is_refusal(&a_gone) {
        wrong.push(format!("A's completion of gone: {a_gone:?}"));
    }
    let mut c = connect(&b, &token).await;
    if c.data_get("rec").await.expect("data get")["writer"] != "b" {
        wrong.push("B's record was replaced".into());
    }
    if c.file_get("doc", None).await.expect("doc").md5 != md5_hex(&b_body) {
        wrong.push("B's file was replaced".into());
    }
    if c.file_get("gone", None).await.is_ok() {
        wrong.push("a file came back after B's DELETE".into());
    }
    assert!(wrong.is_empty(), "{wrong:#?}");

    // Every server serves what B committed.
    for inst in [&a, &b] {
        let mut c = connect(inst, &token).await;
        let rec = c.data_get("rec").await.expect("data get");
        assert_eq!(rec["writer"], Value::from("b"));
        assert_eq!(step_tests::download(&mut c, "doc").await, b_body);
        match c.file_get("gone", None).await {
            Err(ClientError::Refused { code: 404, .. }) => {}
            other => panic!("gone: {other:?}"),
        }
        let page = c.file_list(Default::default()).await.expect("list");
        let keys: Vec<&str> = page.files.iter().map(|f| f.key.as_str()).collect();
        assert_eq!(keys, ["doc"]);
        assert_eq!(page.files[0].md5, md5_hex(&b_body));
    }
}
