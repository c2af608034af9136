//! Shared support for the end-to-end tests: real servers on free ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use step_core::access::Anonymous;
use step_core::token::TokenKey;
use step_server::ConnectionLimits;
use step_server::accounts::{AuthMode, hash_password};
use step_server::auth::Public;
use step_server::service::{Limits, Service};
use step_server::store::{DiskStore, Storage};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod contract;
pub mod garage;
pub mod object_subject;
pub mod prereq;
pub mod proxy;
pub mod redis;
pub mod tls;
pub mod wait;

/// The token secret every test server uses unless told otherwise.
pub const TEST_SECRET: &[u8] = b"test-deployment-secret";

/// Knobs for [`TestServer::start_with`].
#[derive(Debug, Clone)]
pub struct TestConfig {
    pub token_ttl: u64,
    pub limits: Limits,
    pub conn: ConnectionLimits,
    /// Reuse this data directory (to test restarts) instead of a fresh one.
    pub data_dir: Option<PathBuf>,
    /// Serve this storage instead of a disk store in `data_dir`.
    pub storage: Option<Arc<dyn Storage>>,
    /// How LOGIN checks passwords (`--auth`).
    pub auth: AuthMode,
    /// What anonymous callers may do, as whom (`--anonymous`,
    /// `--public-user`): write by default, as the gateway's tests use it.
    pub public: Public,
}

impl Default for TestConfig {
    fn default() -> Self {
        Self {
            token_ttl: 86_400,
            limits: Limits::default(),
            conn: ConnectionLimits::default(),
            data_dir: None,
            storage: None,
            auth: AuthMode::Open,
            public: Public {
                anonymous: Anonymous::Write,
                ..Public::default()
            },
        }
    }
}

/// A `step-server` running in this process on 127.0.0.1 and a free port.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(TestConfig::default()).await
    }

    pub async fn start_with(cfg: TestConfig) -> TestServer {
        let (tmp, data_dir) = match cfg.data_dir {
            Some(d) => (None, d),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                let d = t.path().join("store");
                (Some(t), d)
            }
        };
        let store: Arc<dyn Storage> = match cfg.storage {
            Some(storage) => storage,
            None => DiskStore::open(&data_dir).expect("open store"),
        };
        let service = Arc::new(
            Service::new(store, TokenKey::new(TEST_SECRET, cfg.token_ttl), cfg.limits)
                .with_auth(cfg.auth)
                .expect("auth mode")
                .with_public(cfg.public),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(step_server::run(listener, service, cfg.conn, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            data_dir,
            _tmp: tmp,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Add the account `name` with `password` to this server's disk store
    /// (for `--auth accounts`), as `step-server user add` does.
    pub async fn add_account(&self, name: &str, password: &str) {
        let store = DiskStore::open_for_accounts(&self.data_dir).expect("open accounts");
        let account = step_server::store::Account {
            name: name.to_owned(),
            password_hash: hash_password(password).expect("hash"),
            epoch: step_server::users::new_epoch(),
        };
        store.account_create(&account).await.expect("add account");
    }

    /// Graceful shutdown; returns once every connection has finished.
    pub async fn shutdown(mut self) {
        self.stop_now().await;
    }

    async fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// Stop this server but keep its data directory for a successor.
    pub async fn stop_keep_data(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        self.stop_now().await;
        (self.data_dir.clone(), self._tmp.take())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Deterministic test content.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// A client logged in as `user` (password md5(user), as STEP defines it).
pub async fn login(addr: SocketAddr, user: &str) -> step_core::StepClient {
    let mut c = step_core::StepClient::connect(addr).await.expect("connect");
    c.login(user, &step_core::digest::password_for(user))
        .await
        .expect("login");
    c
}

/// A TCP connection to `addr` from the loopback address `source` (e.g.
/// `127.0.0.2`: Linux routes all of 127/8 to loopback), so a test can play
/// clients at different addresses.
pub async fn tcp_from(source: &str, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse().expect("an IPv4 address"), 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A STEP client connected to `addr` from the loopback address `source`.
pub async fn connect_from(source: &str, addr: SocketAddr) -> step_core::StepClient {
    let stream = tcp_from(source, addr).await.expect("connect");
    step_core::StepClient::new(
        step_core::Connection::Plain(stream),
        step_core::StepCodec::default(),
    )
}

/// `body` cut into numbered blocks of `block_size`.
pub fn blocks(body: &[u8], block_size: usize) -> Vec<(u64, bytes::Bytes)> {
    body.chunks(block_size)
        .enumerate()
        .map(|(i, c)| (i as u64, bytes::Bytes::copy_from_slice(c)))
        .collect()
}

/// The whole file `key`, checked against the md5 of its download plan.
pub async fn download(c: &mut step_core::StepClient, key: &str) -> Vec<u8> {
    let plan = c.file_get(key, None).await.expect("get plan");
    let mut out = Vec::with_capacity(plan.size as usize);
    c.download_blocks(&plan, 0..plan.total_block, 8, |_, b| {
        out.extend_from_slice(&b);
        Ok(())
    })
    .await
    .expect("download");
    assert_eq!(
        step_core::digest::md5_hex(&out),
        plan.md5,
        "downloaded bytes match the plan's md5"
    );
    out
}
