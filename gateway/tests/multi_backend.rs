//! One gateway in front of several interchangeable STEP servers (`--backend
//! a,b,c`): requests spread over them, a backend killed with SIGKILL is
//! routed around and reported down by /readyz, all of them down is a 503
//! JSON answer, one restarted is used again, and a download whose backend
//! dies mid-body continues on another, byte for byte.
//!
//! The STEP servers are real processes: the gateway binary with no
//! --backend runs a step-server on --step-port (its own HTTP port only seeds
//! the store here). They share ONE disk store and one token secret. A disk
//! store is not made for several writers, so the files are stored through
//! the first server alone, before the others start; from then on the tests
//! only read — which is what they prove things about: routing, health and
//! failover, with the same upload (version) visible on every backend as it
//! is over a shared S3 bucket.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use step_tests::garage::Garage;
use step_tests::pattern;
use step_tests::prereq::{self, Trial};
use step_tests::redis::Redis;
use support::{Gateway, gateway_multi};
use tokio::process::{Child, Command};

const SECRET: &str = "multi-backend-test-secret";
/// Every wait on a process or on the gateway's view of it ends by this bound.
const PATIENCE: Duration = Duration::from_secs(30);

fn main() {
    let mut trials: Vec<Trial> = Vec::new();
    trials.push(prereq::needs(
        "over_one_bucket_writes_spread_and_everything_survives_killed_backends",
        || Ok((Redis::start()?, Garage::start()?)),
        |(redis, garage)| {
            prereq::block_on_threads(
                2,
                over_one_bucket_writes_spread_and_everything_survives_killed_backends((
                    garage, redis,
                )),
            )
        },
    ));
    let tests: [(&str, fn()); 5] = [
        (
            "requests_spread_over_backends_and_avoid_a_killed_one",
            || prereq::block_on_threads(2, requests_spread_over_backends_and_avoid_a_killed_one()),
        ),
        (
            "all_backends_down_is_503_json_and_one_restarted_serves_again",
            || {
                prereq::block_on_threads(
                    2,
                    all_backends_down_is_503_json_and_one_restarted_serves_again(),
                )
            },
        ),
        (
            "a_download_whose_backend_is_killed_mid_body_completes_byte_identical",
            || {
                prereq::block_on_threads(
                    2,
                    a_download_whose_backend_is_killed_mid_body_completes_byte_identical(),
                )
            },
        ),
        (
            "a_ranged_download_whose_backend_is_killed_mid_body_completes",
            || {
                prereq::block_on_threads(
                    2,
                    a_ranged_download_whose_backend_is_killed_mid_body_completes(),
                )
            },
        ),
        (
            "a_put_whose_backend_is_killed_mid_body_is_503_and_its_retry_succeeds",
            || {
                prereq::block_on_threads(
                    2,
                    a_put_whose_backend_is_killed_mid_body_is_503_and_its_retry_succeeds(),
                )
            },
        ),
    ];
    trials.extend(tests.into_iter().map(|(name, body)| {
        Trial::test(name, move || {
            body();
            Ok(())
        })
    }));
    prereq::main(trials);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Where a step-server keeps everything besides its data dir: a bucket.
#[derive(Clone)]
struct S3 {
    url: String,
    env: Vec<(&'static str, String)>,
    /// The coordination engine the servers on the bucket share (`--coord`).
    coord: String,
}

/// A step-server process (the gateway binary, embedded mode).
struct Step {
    child: Child,
    addr: SocketAddr,
    http_port: u16,
    dir: PathBuf,
    s3: Option<S3>,
}

impl Step {
    async fn start(dir: &Path, step_port: u16, http_port: u16) -> Step {
        Step::start_on(dir, step_port, http_port, None).await
    }

    async fn start_on(dir: &Path, step_port: u16, http_port: u16, s3: Option<S3>) -> Step {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
        for (var, _) in std::env::vars() {
            if var.starts_with("GATEWAY_") || var.starts_with("STEP_") || var.starts_with("AWS_") {
                cmd.env_remove(var);
            }
        }
        if let Some(s3) = &s3 {
            cmd.envs(s3.env.iter().map(|(k, v)| (k, v)))
                .args(["--storage", &s3.url])
                .args(["--coord", &s3.coord]);
        }
        let child = cmd
            .args(["--bind", "127.0.0.1", "--port", &http_port.to_string()])
            .args(["--step-ip", "127.0.0.1"])
            .args(["--step-port", &step_port.to_string()])
            .arg("--data-dir")
            .arg(dir)
            .args(["--token-secret", SECRET, "--log", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn a step-server (the gateway binary, embedded)");
        let mut step = Step {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], step_port)),
            http_port,
            dir: dir.to_owned(),
            s3,
        };
        step.wait_serving().await;
        step
    }

    async fn wait_serving(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if step_core::StepClient::connect(self.addr).await.is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!("the step-server on {} exited at start: {status}", self.addr);
            }
            assert!(
                Instant::now() < deadline,
                "the step-server on {} never listened",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// kill -9 (this child's pid), and reap it: its sockets are closed when
    /// this returns.
    async fn kill(&mut self) {
        self.child.start_kill().expect("SIGKILL the step-server");
        self.child.wait().await.expect("reap the step-server");
    }

    /// A new process on the same ports and store.
    async fn restart(&mut self) {
        let port = self.addr.port();
        *self = Step::start_on(&self.dir.clone(), port, self.http_port, self.s3.clone()).await;
    }
}

/// Three step-servers over one store holding `files` (stored through the
/// first, before the others start).
struct Cluster {
    steps: Vec<Step>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(files: &[(&str, &[u8])]) -> Cluster {
        let dir = tempfile::tempdir().expect("data dir");
        let first = Step::start(dir.path(), free_port(), free_port()).await;
        let client = reqwest::Client::builder()
            .timeout(PATIENCE)
            .build()
            .expect("client");
        for (key, body) in files {
            let url = format!("http://127.0.0.1:{}/files/{key}", first.http_port);
            let r = client.put(url).body(body.to_vec()).send().await;
            let status = r.expect("seed PUT").status();
            assert_eq!(status, StatusCode::CREATED, "seeding {key}");
        }
        let mut steps = vec![first];
        for _ in 0..2 {
            steps.push(Step::start(dir.path(), free_port(), free_port()).await);
        }
        Cluster { steps, _dir: dir }
    }

    /// Three step-servers, each over a store of its own: for writes, which
    /// one disk store cannot take from several servers.
    async fn separate() -> (Cluster, Vec<tempfile::TempDir>) {
        Cluster::each_own_dir(None).await
    }

    /// Three step-servers over one bucket, each with an empty data dir of
    /// its own: the deployment `--backend a,b,c` is for.
    async fn on_s3(s3: S3) -> (Cluster, Vec<tempfile::TempDir>) {
        Cluster::each_own_dir(Some(s3)).await
    }

    async fn each_own_dir(s3: Option<S3>) -> (Cluster, Vec<tempfile::TempDir>) {
        let dir = tempfile::tempdir().expect("data dir");
        let mut dirs = Vec::new();
        let mut steps = Vec::new();
        for _ in 0..3 {
            let d = tempfile::tempdir().expect("data dir");
            steps.push(Step::start_on(d.path(), free_port(), free_port(), s3.clone()).await);
            dirs.push(d);
        }
        (Cluster { steps, _dir: dir }, dirs)
    }

    fn addrs(&self) -> Vec<SocketAddr> {
        self.steps.iter().map(|s| s.addr).collect()
    }
}

/// `/readyz`'s status and JSON.
async fn readyz(gw: &Gateway) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let r = gw.get("/readyz").await;
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.json().await.expect("readyz JSON"))
}

/// Whether /readyz (200) lists backend `addr` as `up`.
fn listed(ready: &Value, addr: SocketAddr) -> Option<bool> {
    ready["backends"]
        .as_array()?
        .iter()
        .find(|b| b["address"] == addr.to_string())?["up"]
        .as_bool()
}

/// Poll /readyz until `cond` holds of its answer (at most [`PATIENCE`]).
async fn until_ready(gw: &Gateway, what: &str, cond: impl Fn(StatusCode, &Value) -> bool) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (status, _, body) = readyz(gw).await;
        if cond(status, &body) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /readyz still answers {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A labelled series of /metrics, by backend (0 when absent).
async fn per_backend(gw: &Gateway, metric: &str, addr: SocketAddr) -> u64 {
    let prefix = format!("{metric}{{backend=\"{addr}\"}} ");
    gw.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

const SESSIONS: &str = "gateway_backend_sessions_total";

async fn get_ok(gw: &Gateway, key: &str, want: &[u8]) {
    let (status, _, body) = gw.get_bytes(&format!("/files/{key}")).await;
    assert_eq!(status, StatusCode::OK, "GET {key}");
    assert!(
        body == want,
        "GET {key}: {} bytes, not the stored ones",
        body.len()
    );
}

/// Proves the choice (ties between idle backends take turns, so sequential
/// requests reach every one) and that a killed backend costs no request:
/// its dead pooled connections are noticed at checkout and the connect that
/// follows is refused, so the request goes to the next backend; once the
/// probes mark it down it gets no more sessions at all.
async fn requests_spread_over_backends_and_avoid_a_killed_one() {
    let body = pattern(300_000, 1);
    let mut cluster = Cluster::start(&[("f.bin", &body)]).await;
    let addrs = cluster.addrs();
    let gw = gateway_multi(&addrs, |_, _| {}).await;
    let (status, _, ready) = readyz(&gw).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ready["status"], "ready");
    for a in &addrs {
        assert_eq!(listed(&ready, *a), Some(true), "{ready}");
    }
    for _ in 0..30 {
        get_ok(&gw, "f.bin", &body).await;
    }
    for a in &addrs {
        let n = per_backend(&gw, SESSIONS, *a).await;
        assert!(n >= 5, "backend {a} lent only {n} sessions for 30 GETs");
    }

    let dead = addrs[0];
    cluster.steps[0].kill().await;
    // At once, before any probe could notice: every request still succeeds.
    for _ in 0..30 {
        get_ok(&gw, "f.bin", &body).await;
    }
    until_ready(&gw, "the killed backend reported down", |s, b| {
        s == StatusCode::OK && listed(b, dead) == Some(false)
    })
    .await;
    let (_, _, ready) = readyz(&gw).await;
    assert_eq!(listed(&ready, addrs[1]), Some(true), "{ready}");
    assert_eq!(listed(&ready, addrs[2]), Some(true), "{ready}");
    assert_eq!(per_backend(&gw, "gateway_backend_up", dead).await, 0);
    assert_eq!(per_backend(&gw, "gateway_backend_up", addrs[1]).await, 1);
    let before = per_backend(&gw, SESSIONS, dead).await;
    for _ in 0..10 {
        get_ok(&gw, "f.bin", &body).await;
    }
    assert_eq!(
        per_backend(&gw, SESSIONS, dead).await,
        before,
        "a backend marked down was still lent to requests"
    );
}

/// With every backend dead, /readyz and requests (read and write) answer
/// 503 with the JSON error body and Retry-After, without hanging; one
/// backend started again is found by the probes and serves.
async fn all_backends_down_is_503_json_and_one_restarted_serves_again() {
    let body = pattern(100_000, 2);
    let mut cluster = Cluster::start(&[("g.bin", &body)]).await;
    let addrs = cluster.addrs();
    let gw = gateway_multi(&addrs, |_, _| {}).await;
    get_ok(&gw, "g.bin", &body).await;
    for step in &mut cluster.steps {
        step.kill().await;
    }
    // Straight away (probes or not), nothing is served: 503, never a hang.
    let r = gw.get("/files/g.bin").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    until_ready(&gw, "all backends reported down", |s, _| {
        s == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (_, headers, err) = readyz(&gw).await;
    assert_eq!(err["error"], "backend_unavailable", "{err}");
    assert!(headers.contains_key("retry-after"));
    for r in [
        gw.get("/files/g.bin").await,
        gw.put("/files/new.bin", vec![7; 1000]).await,
        gw.get("/records/nothing").await,
    ] {
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.headers().contains_key("retry-after"));
        let err: Value = r.json().await.expect("a JSON error body");
        assert_eq!(err["error"], "backend_unavailable", "{err}");
    }

    cluster.steps[1].restart().await;
    until_ready(&gw, "the restarted backend reported up", |s, b| {
        s == StatusCode::OK && listed(b, addrs[1]) == Some(true)
    })
    .await;
    let (_, _, ready) = readyz(&gw).await;
    assert_eq!(listed(&ready, addrs[0]), Some(false), "{ready}");
    assert_eq!(listed(&ready, addrs[2]), Some(false), "{ready}");
    get_ok(&gw, "g.bin", &body).await;
}

/// Start `range` (None: the whole file) of `key`, take at least 1 MiB,
/// kill the backend serving it (the one /readyz shows a session on), and
/// read the rest: it must equal `want`, and a second backend must have been
/// lent a session after the kill (so the bytes did come from another one).
async fn kill_mid_body(
    gw: &Gateway,
    cluster: &mut Cluster,
    key: &str,
    range: Option<&str>,
) -> Vec<u8> {
    let addrs = cluster.addrs();
    let mut req = gw.client.get(gw.at(&format!("/files/{key}")));
    if let Some(r) = range {
        req = req.header("Range", r);
    }
    let mut resp = req.send().await.expect("GET");
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut got = Vec::new();
    while got.len() < 1 << 20 {
        let chunk = resp.chunk().await.expect("body").expect("more body");
        got.extend_from_slice(&chunk);
    }
    // The download holds its session while the client does not read.
    let (_, _, ready) = readyz(gw).await;
    let serving: Vec<usize> = (0..addrs.len())
        .filter(|&i| {
            ready["backends"]
                .as_array()
                .and_then(|l| l.iter().find(|b| b["address"] == addrs[i].to_string()))
                .is_some_and(|b| b["in_flight"] == 1)
        })
        .collect();
    assert_eq!(serving.len(), 1, "one backend serves the download: {ready}");
    let victim = serving[0];
    let mut lent = 0;
    for a in &addrs {
        lent += per_backend(gw, SESSIONS, *a).await;
    }
    cluster.steps[victim].kill().await;
    while let Some(chunk) = resp.chunk().await.expect("the rest of the body") {
        got.extend_from_slice(&chunk);
    }
    let mut after = 0;
    for a in &addrs {
        after += per_backend(gw, SESSIONS, *a).await;
    }
    assert!(
        after > lent,
        "no other backend was asked for the rest: the body was already buffered before the kill"
    );
    got
}

async fn a_download_whose_backend_is_killed_mid_body_completes_byte_identical() {
    let body = pattern(8 << 20, 3);
    let mut cluster = Cluster::start(&[("big.bin", &body)]).await;
    // One 64 KiB block in flight and one queued: the download is far from
    // done when the client pauses.
    let gw = gateway_multi(&cluster.addrs(), |_, t| {
        t.window = 1;
        t.block_size = 64 * 1024;
    })
    .await;
    let got = kill_mid_body(&gw, &mut cluster, "big.bin", None).await;
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the body differs from the stored file");
}

async fn a_ranged_download_whose_backend_is_killed_mid_body_completes() {
    let body = pattern(8 << 20, 4);
    let mut cluster = Cluster::start(&[("big.bin", &body)]).await;
    let gw = gateway_multi(&cluster.addrs(), |_, t| {
        t.window = 1;
        t.block_size = 64 * 1024;
    })
    .await;
    let (a, b) = (100_001usize, 7_999_999usize);
    let got = kill_mid_body(
        &gw,
        &mut cluster,
        "big.bin",
        Some(&format!("bytes={a}-{b}")),
    )
    .await;
    assert!(
        got == body[a..=b],
        "the ranged body differs ({} bytes)",
        got.len()
    );
}

/// A PUT is not moved to another backend once its body is under way (its
/// blocks stay where its SAVE went): its backend dying mid-body is a 503
/// with the JSON body and Retry-After — never a 2xx, never a hang — and the
/// client's retry is stored by a backend that is up. (Each backend has a
/// store of its own here, so the retry's own answer is what is checked.)
async fn a_put_whose_backend_is_killed_mid_body_is_503_and_its_retry_succeeds() {
    let (mut cluster, _dirs) = Cluster::separate().await;
    let addrs = cluster.addrs();
    let gw = gateway_multi(&addrs, |_, t| t.block_size = 64 * 1024).await;
    let body = pattern(4 << 20, 5);
    // The default user's login first, so the PUT's are the only sessions.
    assert_eq!(
        gw.get("/files/absent").await.status(),
        StatusCode::NOT_FOUND
    );
    let mut before = Vec::new();
    for a in &addrs {
        before.push(per_backend(&gw, SESSIONS, *a).await);
    }
    let (feed, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let put = gw
        .client
        .put(gw.at("/files/up.bin"))
        .header("Content-Length", body.len().to_string())
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let put = tokio::spawn(put);
    feed.send(Ok(body[..1 << 20].to_vec())).await.expect("feed");
    // The backend the upload went to: the one lending it sessions.
    let deadline = Instant::now() + PATIENCE;
    let victim = loop {
        let mut grew = Vec::new();
        for (i, a) in addrs.iter().enumerate() {
            if per_backend(&gw, SESSIONS, *a).await > before[i] {
                grew.push(i);
            }
        }
        assert!(
            grew.len() <= 1,
            "the upload's blocks went to several backends"
        );
        // Its SAVE and at least one block's session.
        if let [one] = grew[..]
            && per_backend(&gw, SESSIONS, addrs[one]).await >= before[one] + 2
        {
            break one;
        }
        assert!(
            Instant::now() < deadline,
            "the upload never reached a backend"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    cluster.steps[victim].kill().await;
    // The rest of the body may no longer be read: the answer can come first.
    let _ = feed.send(Ok(body[1 << 20..].to_vec())).await;
    drop(feed);
    match put.await.expect("PUT task") {
        Ok(r) => {
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(r.headers().contains_key("retry-after"));
            let err: Value = r.json().await.expect("a JSON error body");
            assert_eq!(err["error"], "backend_unavailable", "{err}");
        }
        // The gateway answered and closed while the body was still coming.
        Err(e) => assert!(!e.is_timeout(), "the PUT hung: {e}"),
    }
    // The retry on a new HTTP connection, as `curl --retry` makes one: the
    // first PUT's may be closing (it was answered before its body ended).
    let fresh = reqwest::Client::builder()
        .timeout(PATIENCE)
        .build()
        .expect("client");
    let r = fresh
        .put(gw.at("/files/up.bin"))
        .body(body.clone())
        .send()
        .await
        .expect("the retried PUT");
    assert_eq!(r.status(), StatusCode::CREATED, "the retry");
    let stored: Value = r.json().await.expect("JSON");
    assert_eq!(
        stored["md5"].as_str(),
        Some(step_core::digest::md5_hex(&body).as_str()),
        "{stored}"
    );
}

/// Over one S3 bucket (a Garage node) — the deployment several backends are
/// for — every backend writes: PUTs spread over them and each file reads
/// back through whichever backend a GET lands on. A killed backend costs no
/// request, writes included (the connect fails before anything is sent);
/// a download whose backend is killed mid-body finishes on another from
/// the same upload (`upload_id`), byte for byte.
async fn over_one_bucket_writes_spread_and_everything_survives_killed_backends(
    (garage, mut redis): (Garage, Redis),
) {
    let s3 = S3 {
        url: garage.storage_url("multi"),
        env: garage.aws_env(),
        coord: redis.url(),
    };
    let (mut cluster, _dirs) = Cluster::on_s3(s3).await;
    let addrs = cluster.addrs();
    let gw = gateway_multi(&addrs, |_, t| {
        t.window = 1;
        t.block_size = 64 * 1024;
    })
    .await;
    let files: Vec<(String, Vec<u8>)> = (0..6u8)
        .map(|i| (format!("s3-{i}.bin"), pattern(200_000 + usize::from(i), i)))
        .collect();
    for (key, body) in &files {
        gw.store(key, body.clone()).await;
    }
    for a in &addrs {
        let n = per_backend(&gw, SESSIONS, *a).await;
        assert!(n >= 2, "backend {a} lent only {n} sessions for 6 PUTs");
    }
    for (key, body) in &files {
        get_ok(&gw, key, body).await;
    }

    cluster.steps[0].kill().await;
    let late = pattern(300_000, 9);
    for i in 0..6 {
        gw.store(&format!("late-{i}.bin"), late.clone()).await;
    }
    for (key, body) in &files {
        get_ok(&gw, key, body).await;
    }
    get_ok(&gw, "late-5.bin", &late).await;

    let big = pattern(8 << 20, 10);
    gw.store("big.bin", big.clone()).await;
    let got = kill_mid_body(&gw, &mut cluster, "big.bin", None).await;
    assert!(got == big, "the body differs from the stored file");

    // The coordination engine down: writes are refused with 503 JSON and
    // Retry-After (never a 2xx); back, the same request succeeds with no
    // server restarted.
    redis.kill();
    let r = gw.put("/files/engine.bin", late.clone()).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers()["retry-after"], "1");
    let e: serde_json::Value = r.json().await.expect("JSON error body");
    assert_eq!(e["error"], "unavailable", "{e}");
    redis.restart().expect("redis back");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let r = gw.put("/files/engine.bin", late.clone()).await;
        if r.status() == StatusCode::CREATED {
            break;
        }
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            Instant::now() < deadline,
            "writes never came back after the engine did"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    get_ok(&gw, "engine.bin", &late).await;
    drop(garage);
    drop(redis);
}
