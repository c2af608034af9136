//! A gateway on a free loopback port in this process, served by the
//! production accept loop (`gateway::serve`: header and idle timeouts, the
//! connection cap), in front of a STEP server the test started.

#![allow(dead_code)] // each test file uses its own subset

pub mod proc;
pub mod python;
pub mod tus;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use gateway::backend::Backend;
use gateway::config::{GatewayArgs, HttpArgs, TransferArgs};
use gateway::metrics::Metrics;
use gateway::{AppState, serve};
use reqwest::StatusCode;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Gateway {
    pub addr: SocketAddr,
    pub url: String,
    stop: CancellationToken,
    pub client: reqwest::Client,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The gateway's defaults, with short backend waits (tests fail fast), as
/// adjusted by `tweak`.
pub async fn gateway_with(
    backend: SocketAddr,
    tweak: impl FnOnce(&mut HttpArgs, &mut TransferArgs),
) -> Gateway {
    gateway_multi(&[backend], tweak).await
}

/// [`gateway_with`] in front of several interchangeable STEP servers
/// (`--backend a,b,c`).
pub async fn gateway_multi(
    backends: &[SocketAddr],
    tweak: impl FnOnce(&mut HttpArgs, &mut TransferArgs),
) -> Gateway {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or("off".into()))
        .with_test_writer()
        .try_init();
    let args = GatewayArgs::try_parse_from(["gateway"]).expect("defaults");
    let (mut http, mut transfer) = (args.http, args.transfer);
    transfer.backend_timeout = 2;
    transfer.pool_wait_ms = 300;
    tweak(&mut http, &mut transfer);
    let anonymous = http.anonymous_wanted();
    let list = backends.iter().map(|a| (a.to_string(), None)).collect();
    let backend = Backend::with_backends(list, transfer, anonymous, Metrics::new());
    start(backend, http).await
}

/// The gateway as it runs alone: calling the embedded server's `service`
/// in process (no STEP socket between them).
pub async fn gateway_in_process(
    service: Arc<step_server::service::Service>,
    tweak: impl FnOnce(&mut HttpArgs, &mut TransferArgs),
) -> Gateway {
    let args = GatewayArgs::try_parse_from(["gateway"]).expect("defaults");
    let (mut http, mut transfer) = (args.http, args.transfer);
    tweak(&mut http, &mut transfer);
    let anonymous = http.anonymous_wanted();
    let backend = Backend::in_process(service, transfer, anonymous, Metrics::new());
    start(backend, http).await
}

async fn start(backend: Backend, http: HttpArgs) -> Gateway {
    let state = AppState::new(backend, http);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = serve(listener, state, async move { s.cancelled().await }).await;
    });
    Gateway {
        addr,
        url: format!("http://{addr}"),
        stop,
        // Every request of a test ends by this bound, whatever the gateway does.
        client: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(90))
            .build()
            .expect("client"),
    }
}

pub async fn gateway(backend: SocketAddr) -> Gateway {
    gateway_with(backend, |_, _| {}).await
}

impl Gateway {
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.at(path)).send().await.expect("GET")
    }

    pub async fn get_bytes(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let r = self.get(path).await;
        let (s, h) = (r.status(), r.headers().clone());
        (s, h, r.bytes().await.expect("body").to_vec())
    }

    pub async fn put(&self, path: &str, body: Vec<u8>) -> reqwest::Response {
        self.client
            .put(self.at(path))
            .body(body)
            .send()
            .await
            .expect("PUT")
    }

    /// `PUT /files/{key}`, which must answer 201.
    pub async fn store(&self, key: &str, body: Vec<u8>) {
        let r = self.put(&format!("/files/{key}"), body).await;
        assert_eq!(r.status(), StatusCode::CREATED, "PUT {key}");
    }

    /// `GET path` with a `Range` header.
    pub async fn get_range(&self, path: &str, range: &str) -> reqwest::Response {
        self.client
            .get(self.at(path))
            .header("Range", range)
            .send()
            .await
            .expect("GET with Range")
    }

    /// `POST /records` with `record`, which must answer 201: the key it chose.
    pub async fn post_record(&self, record: &serde_json::Value) -> String {
        let r = self
            .client
            .post(self.at("/records"))
            .json(record)
            .send()
            .await
            .expect("POST /records");
        assert_eq!(r.status(), StatusCode::CREATED, "POST /records");
        let answer: serde_json::Value = r.json().await.expect("json");
        answer["key"].as_str().expect("key").to_owned()
    }

    /// `GET path`, its body as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.get(path).await.json().await.expect("json")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.at(path))
            .send()
            .await
            .expect("DELETE")
    }

    pub async fn multipart(&self, name: &str, body: Vec<u8>) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(body).file_name(name.to_owned());
        let form = reqwest::multipart::Form::new().part("file", part);
        self.client
            .post(self.at("/upload"))
            .multipart(form)
            .send()
            .await
            .expect("send")
    }

    /// A token for `user` from `POST /login` (the STEP default password).
    pub async fn token(&self, user: &str) -> String {
        let login: serde_json::Value = self
            .client
            .post(self.at("/login"))
            .json(&serde_json::json!({ "username": user }))
            .send()
            .await
            .expect("POST /login")
            .json()
            .await
            .expect("a JSON answer");
        login["token"].as_str().expect("a token").to_owned()
    }

    pub async fn metrics(&self) -> String {
        self.get("/metrics").await.text().await.expect("metrics")
    }

    /// The value of counter `name` in /metrics (0 when absent).
    pub async fn counter(&self, name: &str) -> u64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }
}

/// A step-server on a given address with `secret`, over the store in `dir`:
/// a backend coming back where the old one was (perhaps with a new secret).
pub async fn step_on(
    addr: SocketAddr,
    dir: std::path::PathBuf,
    secret: &[u8],
) -> tokio::task::JoinHandle<()> {
    let store = step_server::store::Store::open(&dir).expect("store");
    let service = Arc::new(
        step_server::Service::new(
            store,
            step_core::token::TokenKey::new(secret, 86_400),
            step_server::service::Limits::default(),
        )
        .with_public(step_server::auth::Public {
            anonymous: step_core::access::Anonymous::Write,
            ..Default::default()
        }),
    );
    // The old server's socket may take a moment to go.
    let deadline = Instant::now() + Duration::from_secs(20);
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(Instant::now() < deadline, "rebind {addr}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    tokio::spawn(step_server::run(
        listener,
        service,
        step_server::ConnectionLimits::default(),
        std::future::pending::<()>(),
    ))
}
