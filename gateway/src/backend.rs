//! The STEP backend: the operations the routes use, over one of two
//! transports ([`Transport`]): a pool of TCP connections to a STEP server
//! (`--backend`), or the embedded server's service called in process. Either
//! way a route gets a [`Session`] and speaks STEP messages through it; the
//! in-process one checks the token once per session and then passes
//! messages to the service with no socket, no frames and no per-request
//! token check. Protocol rules stay in the service.
//!
//! Pooled connections belong to no user: every request carries its own token
//! (set on the connection just before use). A connection always goes back to
//! the pool, however its use ended — an early error, a refusal, a request
//! future dropped mid-pipeline: the client counts the answers it is still
//! owed, and the pool's recycle check reads them (under the backend
//! timeout) before the connection is lent again. Only a connection that
//! broke (an IO or framing failure, owed answers that never came) or that
//! the server closed fails that check and is replaced.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};
use serde_json::{Map, Value, json};
use step_core::access::{Anonymous, Identity, Scope};
use step_core::client::{
    Capabilities, ClientError, DownloadPlan, FilePage, ListQuery, LocalServe, StepClient, expect_ok,
};
use step_core::conn::tls::TlsClient;
use step_core::digest::password_for;
use step_core::message::field;
use step_core::{Kind, Message, Operation, Problem};
use step_server::binding::ConnState;
use step_server::service::Service;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::TransferArgs;
use crate::error::GatewayError;
use crate::metrics::Metrics as GatewayMetrics;

/// Connections to each backend kept for LOGINs (a lane of their own), so
/// password checks never take the connections token requests need.
pub const LOGIN_LANE: usize = 4;

/// Creates and checks pooled STEP connections.
#[derive(Debug)]
pub struct StepManager {
    addr: String,
    /// Set for a TLS backend (--backend-tls).
    tls: Option<TlsClient>,
    timeout: Duration,
    /// Bumped whenever a connection is found dead: the server may have
    /// restarted (perhaps with a new token secret), so cached tokens are
    /// suspect.
    losses: Arc<AtomicU64>,
    /// What the server announced: at the first connection's probe (an
    /// anonymous LOGIN, answered with capabilities whether granted or not),
    /// then at every LOGIN that succeeded.
    caps: Arc<std::sync::Mutex<Option<Capabilities>>>,
    /// The capabilities have been probed once: later connections take
    /// them as they are (renewed by every user's LOGIN).
    probed: Arc<AtomicBool>,
}

impl StepManager {
    fn known_caps(&self) -> Option<Capabilities> {
        *self.caps.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new connection (TLS when configured), not logged in, whose
    /// exchanges each wait at most `timeout`.
    async fn connect(&self, timeout: Duration) -> Result<StepClient, ClientError> {
        let connect = async {
            match &self.tls {
                Some(tls) => StepClient::connect_tls(self.addr.as_str(), tls).await,
                None => StepClient::connect(self.addr.as_str()).await,
            }
        };
        let mut client = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ClientError::TimedOut(timeout))??;
        client.set_timeout(Some(timeout));
        Ok(client)
    }
}

impl managed::Manager for StepManager {
    type Type = StepClient;
    type Error = ClientError;

    async fn create(&self) -> Result<StepClient, ClientError> {
        let mut client = self.connect(self.timeout).await?;
        if !self.probed.load(Ordering::Relaxed) {
            // What the server can do comes with a LOGIN answer; an anonymous
            // one costs no password check, and our server announces its
            // capabilities even when it refuses it. A server without the
            // extension (the reference) refuses it and announces nothing:
            // the reference's defaults then apply.
            let probe = Message::request(Operation::Login, Kind::Auth)
                .with(field::ANONYMOUS, Anonymous::Read.as_str());
            let resp = client.call(&probe).await?;
            let caps = Capabilities::from_login(&resp);
            *self.caps.lock().unwrap_or_else(|p| p.into_inner()) = Some(caps);
            self.probed.store(true, Ordering::Relaxed);
        }
        if let Some(caps) = self.known_caps() {
            client.set_capabilities(caps);
        }
        debug!(addr = %self.addr, caps = ?client.capabilities(), "new STEP connection");
        Ok(client)
    }

    async fn recycle(&self, client: &mut StepClient, _: &Metrics) -> RecycleResult<ClientError> {
        let owed = client.in_flight();
        let settled = client.settle().await;
        if settled.is_ok() && client.is_idle() {
            if owed > 0 {
                debug!(owed, "drained an abandoned exchange's answers");
            }
            Ok(())
        } else {
            self.losses.fetch_add(1, Ordering::Relaxed);
            Err(RecycleError::message("connection closed or broken"))
        }
    }
}

pub type Pool = managed::Pool<StepManager>;

/// A pooled connection on loan; dropped, it goes back to the pool.
pub type Conn = Object<StepManager>;

/// What the gateway reaches the STEP service over.
#[derive(Debug)]
enum Transport {
    /// Pooled TCP connections to one or more interchangeable STEP servers.
    Pools(Arc<Members>),
    /// The embedded server's service, in this process.
    InProcess(Arc<Service>),
}

/// The STEP servers of `--backend`, one pool each.
#[derive(Debug)]
struct Members {
    list: Vec<Member>,
    /// Where the next tie between equally loaded backends starts.
    turn: AtomicUsize,
}

/// One STEP server of `--backend`.
#[derive(Debug)]
struct Member {
    pool: Pool,
    /// The login lane ([`LOGIN_LANE`] connections).
    logins: Pool,
    /// What the health probes last concluded (always true with one backend:
    /// it is then used whatever the probes say, as before there were several).
    up: AtomicBool,
    /// Probes failed in a row.
    failures: AtomicU32,
    /// Sessions on loan from this backend: the load requests are balanced on.
    in_flight: AtomicUsize,
}

impl Member {
    fn addr(&self) -> &str {
        &self.pool.manager().addr
    }
}

/// Which backend a session may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    /// The least loaded backend that is up.
    #[default]
    Any,
    /// This backend only (a request's later blocks, where its first went).
    On(usize),
    /// Any backend that is up, except these (a bit per backend): those a
    /// download already lost its connection to.
    Avoid(u64),
}

/// The most backends `--backend` takes (a [`Route::Avoid`] bit each).
pub const MAX_BACKENDS: usize = 64;

/// Backend `index`'s bit in a [`Route::Avoid`] mask (none past [`MAX_BACKENDS`]).
pub fn bit(index: usize) -> u64 {
    u32::try_from(index)
        .ok()
        .and_then(|i| 1u64.checked_shl(i))
        .unwrap_or(0)
}

/// A session's claim on its backend's load count, released when dropped.
#[derive(Debug)]
pub struct Lease {
    members: Arc<Members>,
    index: usize,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(m) = self.members.list.get(self.index) {
            m.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A STEP session on loan, whichever the transport: a pooled connection
/// (back to the pool when dropped) or an in-process link to the service.
#[derive(Debug)]
pub enum Session {
    Tcp(Conn, Lease),
    Local(StepClient),
}

impl Session {
    /// The backend (index in `--backend`) this session talks to; `None` in
    /// process.
    pub fn member(&self) -> Option<usize> {
        match self {
            Session::Tcp(_, lease) => Some(lease.index),
            Session::Local(_) => None,
        }
    }

    /// The route that keeps later sessions of a request on this one's backend.
    pub fn route(&self) -> Route {
        self.member().map_or(Route::Any, Route::On)
    }
}

impl std::ops::Deref for Session {
    type Target = StepClient;
    fn deref(&self) -> &StepClient {
        match self {
            Session::Tcp(c, _) => c,
            Session::Local(c) => c,
        }
    }
}

impl std::ops::DerefMut for Session {
    fn deref_mut(&mut self) -> &mut StepClient {
        match self {
            Session::Tcp(c, _) => c,
            Session::Local(c) => c,
        }
    }
}

/// The service acting for one identity (token checked once, by
/// [`Service::identity_of`]), or for nobody: then each request's own token
/// is checked (LOGIN, the readiness probe), LOGINs paced by `client`, the
/// HTTP client's address.
#[derive(Debug)]
struct ServeAs {
    service: Arc<Service>,
    identity: Option<Identity>,
    client: Option<IpAddr>,
    /// The session's state, as a connection's over the wire.
    conn: ConnState,
}

impl LocalServe for ServeAs {
    fn serve(self: Arc<Self>, msg: Message) -> futures::future::BoxFuture<'static, Message> {
        Box::pin(async move {
            match &self.identity {
                Some(identity) => self.service.serve_as(identity, msg, &self.conn).await,
                None => self.service.serve_message(msg, self.client).await,
            }
        })
    }
}

/// Settings for one transfer, adapted to what the server announced.
#[derive(Debug, Clone, Copy)]
pub struct TransferPlan {
    pub block_size: Option<u64>,
    pub window: usize,
    pub fan_out: usize,
    /// Where the transfer's blocks go: the backend that planned it.
    pub route: Route,
}

/// The STEP side of the gateway.
#[derive(Debug)]
pub struct Backend {
    transport: Transport,
    settings: TransferArgs,
    /// What the gateway asks the server to let anonymous callers do.
    anonymous: Anonymous,
    /// The public identity's token while it may be reused.
    default_token: Mutex<Option<CachedToken>>,
    losses: Arc<AtomicU64>,
    /// Shared with the pool's manager (see [`StepManager`]).
    caps: Arc<std::sync::Mutex<Option<Capabilities>>>,
    probed: Arc<AtomicBool>,
    /// What the last readiness probe found ([`Readiness`] as u8): only a
    /// change is logged, so a probe polled against a dead backend does not
    /// flood the log.
    readiness: AtomicU8,
    pub metrics: GatewayMetrics,
    /// Stops the health probes (with several backends) when the backend goes.
    probes: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.probes.cancel();
    }
}

/// How often each of several backends is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Probes failed in a row before a backend counts as down (one success
/// brings it back).
pub const PROBE_FAILURES_DOWN: u32 = 2;
/// The longest a probe (connect included) may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a readiness probe last found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Readiness {
    Unknown = 0,
    Up = 1,
    Down = 2,
}

/// The public identity's token and when to stop reusing it.
#[derive(Debug)]
struct CachedToken {
    public: PublicToken,
    renew_at: Instant,
    /// The connection-loss count when it was minted.
    losses: u64,
}

/// The public identity as the server granted it: its token, whose files
/// it acts on, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicToken {
    pub token: String,
    pub user: String,
    pub scope: Scope,
}

/// The longest a default-user token is reused before logging in again.
const DEFAULT_TOKEN_REUSE: Duration = Duration::from_secs(600);

/// How long a token the server says lives `token_ttl` seconds is reused:
/// half its life, so it is renewed well before it expires (clocks and the
/// token format's rounding need not be trusted to the second); at most
/// [`DEFAULT_TOKEN_REUSE`], which also applies when the server does not say.
pub fn token_reuse(token_ttl: Option<u64>) -> Duration {
    match token_ttl {
        Some(ttl) => Duration::from_secs(ttl / 2).min(DEFAULT_TOKEN_REUSE),
        None => DEFAULT_TOKEN_REUSE,
    }
}

impl Backend {
    pub fn new(
        addr: String,
        settings: TransferArgs,
        anonymous: Anonymous,
        metrics: GatewayMetrics,
    ) -> Self {
        Self::with_tls(addr, None, settings, anonymous, metrics)
    }

    /// [`Backend::new`], speaking TLS to the backend when `tls` is given.
    pub fn with_tls(
        addr: String,
        tls: Option<TlsClient>,
        settings: TransferArgs,
        anonymous: Anonymous,
        metrics: GatewayMetrics,
    ) -> Self {
        Self::with_backends(vec![(addr, tls)], settings, anonymous, metrics)
    }

    /// Interchangeable STEP servers (`--backend a,b,c`), each with its TLS
    /// settings: a pool each, and with two or more, a task probing each
    /// every [`PROBE_INTERVAL`] (started here, so this must run inside a
    /// Tokio runtime; it stops when the backend is dropped).
    pub fn with_backends(
        addrs: Vec<(String, Option<TlsClient>)>,
        settings: TransferArgs,
        anonymous: Anonymous,
        metrics: GatewayMetrics,
    ) -> Self {
        let timeout = settings.backend_timeout();
        let losses = Arc::new(AtomicU64::new(0));
        let caps = Arc::new(std::sync::Mutex::new(None));
        let probed = Arc::new(AtomicBool::new(false));
        let list: Vec<Member> = addrs
            .into_iter()
            .map(|(addr, tls)| {
                let manager = |addr: String, tls: Option<TlsClient>| StepManager {
                    addr,
                    tls,
                    timeout,
                    losses: Arc::clone(&losses),
                    caps: Arc::clone(&caps),
                    probed: Arc::clone(&probed),
                };
                let pool = |manager: StepManager, size: usize| {
                    Pool::builder(manager)
                        .max_size(size)
                        .runtime(deadpool::Runtime::Tokio1)
                        .wait_timeout(Some(Duration::from_millis(settings.pool_wait_ms)))
                        .create_timeout(Some(timeout))
                        // Recycling may read answers an abandoned exchange
                        // left owed, each within the backend timeout.
                        .recycle_timeout(Some(timeout * 2))
                        .build()
                        .expect("a runtime is configured, so building cannot fail")
                };
                let logins = pool(manager(addr.clone(), tls.clone()), LOGIN_LANE);
                let pool = pool(manager(addr, tls), settings.pool_size.max(1));
                Member {
                    pool,
                    logins,
                    // Up until probes say otherwise: requests need not wait
                    // for the first round.
                    up: AtomicBool::new(true),
                    failures: AtomicU32::new(0),
                    in_flight: AtomicUsize::new(0),
                }
            })
            .collect();
        for m in &list {
            metrics.backend_up(m.addr()).set(1);
        }
        let members = Arc::new(Members {
            list,
            turn: AtomicUsize::new(0),
        });
        let backend = Self::with_transport(
            Transport::Pools(Arc::clone(&members)),
            settings,
            anonymous,
            metrics,
            losses,
            caps,
            probed,
        );
        if members.list.len() >= 2 {
            tokio::spawn(probe_loop(
                members,
                backend.metrics.clone(),
                backend.probes.clone(),
            ));
        }
        backend
    }

    /// The embedded server's `service`, called in process.
    pub fn in_process(
        service: Arc<Service>,
        settings: TransferArgs,
        anonymous: Anonymous,
        metrics: GatewayMetrics,
    ) -> Self {
        let caps = Arc::new(std::sync::Mutex::new(Some(service.capabilities())));
        Self::with_transport(
            Transport::InProcess(service),
            settings,
            anonymous,
            metrics,
            Arc::new(AtomicU64::new(0)),
            caps,
            Arc::new(AtomicBool::new(false)),
        )
    }

    fn with_transport(
        transport: Transport,
        settings: TransferArgs,
        anonymous: Anonymous,
        metrics: GatewayMetrics,
        losses: Arc<AtomicU64>,
        caps: Arc<std::sync::Mutex<Option<Capabilities>>>,
        probed: Arc<AtomicBool>,
    ) -> Self {
        Self {
            transport,
            settings,
            anonymous,
            default_token: Mutex::new(None),
            losses,
            caps,
            probed,
            readiness: AtomicU8::new(Readiness::Unknown as u8),
            metrics,
            probes: CancellationToken::new(),
        }
    }

    /// Connections lost to the backend so far: a change means it may have
    /// restarted (with a new token secret), so cached tokens are renewed.
    pub fn connection_losses(&self) -> u64 {
        self.losses.load(Ordering::Relaxed)
    }

    /// The pools' state, summed over the backends (all zero in process:
    /// there is no pool).
    pub fn pool_status(&self) -> deadpool::Status {
        let mut sum = deadpool::Status {
            max_size: 0,
            size: 0,
            available: 0,
            waiting: 0,
        };
        if let Transport::Pools(members) = &self.transport {
            for m in &members.list {
                let s = m.pool.status();
                sum.max_size += s.max_size;
                sum.size += s.size;
                sum.available += s.available;
                sum.waiting += s.waiting;
            }
        }
        sum
    }

    /// What a Bearer `token` allows, where this gateway can tell: in
    /// process, checked by the service (a refusal is the answer); over TCP
    /// `None`, the STEP server deciding for every request it is sent.
    pub async fn scope_of(&self, token: &str) -> Result<Option<Scope>, GatewayError> {
        let Transport::InProcess(service) = &self.transport else {
            return Ok(None);
        };
        match service.identity_of(token).await {
            Ok(identity) => Ok(Some(identity.scope)),
            Err(refusal) => Err(match expect_ok(refusal) {
                Err(e) => e.into(),
                Ok(_) => GatewayError::Internal("a token refusal said 200".into()),
            }),
        }
    }

    /// Whether the STEP service runs in this process (the embedded server).
    pub fn is_in_process(&self) -> bool {
        matches!(self.transport, Transport::InProcess(_))
    }

    /// Where the STEP service is, for logs.
    fn describe(&self) -> String {
        match &self.transport {
            Transport::Pools(members) => members
                .list
                .iter()
                .map(Member::addr)
                .collect::<Vec<_>>()
                .join(","),
            Transport::InProcess(_) => "in process".into(),
        }
    }

    /// How many STEP servers `--backend` names (0 in process).
    pub fn backend_count(&self) -> usize {
        match &self.transport {
            Transport::Pools(members) => members.list.len(),
            Transport::InProcess(_) => 0,
        }
    }

    /// A session carrying `token` (empty: none, for LOGIN and probes), from
    /// the least loaded backend that is up; when connecting to it fails,
    /// from the next.
    pub async fn conn(&self, token: &str) -> Result<Session, GatewayError> {
        self.conn_to(token, Route::Any).await
    }

    /// [`Backend::conn`] from the backends `route` allows.
    pub async fn conn_to(&self, token: &str, route: Route) -> Result<Session, GatewayError> {
        let members = match &self.transport {
            Transport::Pools(members) => members,
            Transport::InProcess(service) => return self.local(service, token).await,
        };
        let order = candidates(members, route);
        let mut last = None;
        for index in order {
            match self.checkout(members, index, token).await {
                Ok(session) => return Ok(session),
                // A refused login is the same answer on every backend.
                Err(e @ PoolError::Backend(ClientError::Refused { .. })) => {
                    return Err(self.pool_error(e));
                }
                Err(e) => {
                    let addr = members.list[index].addr();
                    if members.list.len() > 1 {
                        warn!(backend = %addr, error = %e, "no connection to a STEP backend; trying the next");
                    }
                    last = Some(self.pool_error(e));
                }
            }
        }
        Err(last.unwrap_or_else(|| {
            self.metrics.backend_errors.inc();
            GatewayError::BackendUnavailable("no STEP backend is up".into())
        }))
    }

    /// A pooled connection of backend `index`, counted in its load.
    async fn checkout(
        &self,
        members: &Arc<Members>,
        index: usize,
        token: &str,
    ) -> Result<Session, PoolError<ClientError>> {
        let member = &members.list[index];
        let pool = &member.pool;
        let started = Instant::now();
        let status = pool.status();
        if status.available == 0 && status.size >= status.max_size {
            self.metrics.pool_waits.inc();
        }
        // Counted while waiting too: a backend whose pool is exhausted is
        // loaded, and the next request had better go elsewhere.
        member.in_flight.fetch_add(1, Ordering::Relaxed);
        let lease = Lease {
            members: Arc::clone(members),
            index,
        };
        let mut conn = pool.get().await?;
        debug!(
            backend = %member.addr(),
            waited_ms = started.elapsed().as_millis() as u64,
            "got STEP connection"
        );
        self.metrics.backend_requests(member.addr()).inc();
        conn.set_token(token);
        self.learned_caps(&mut conn);
        Ok(Session::Tcp(conn, lease))
    }

    /// An in-process session: the token is checked here, once.
    async fn local(&self, service: &Arc<Service>, token: &str) -> Result<Session, GatewayError> {
        let identity = if token.is_empty() {
            None
        } else {
            match service.identity_of(token).await {
                Ok(identity) => Some(identity),
                Err(refusal) => {
                    return Err(match expect_ok(refusal) {
                        Err(e) => e.into(),
                        Ok(_) => GatewayError::Internal("a token refusal said 200".into()),
                    });
                }
            }
        };
        let serve = Arc::new(ServeAs {
            service: Arc::clone(service),
            identity,
            client: None,
            conn: ConnState::new(),
        });
        let client = StepClient::local(serve, token.to_owned(), service.capabilities());
        Ok(Session::Local(client))
    }

    /// Up to `n` more pooled connections to the backend `route` picks,
    /// without waiting for busy ones (none in process: one session there
    /// already answers a window of requests at once).
    pub async fn extra_conns(&self, token: &str, n: usize, route: Route) -> Vec<Session> {
        let mut out = Vec::new();
        let Transport::Pools(members) = &self.transport else {
            return out;
        };
        let Some(index) = candidates(members, route).first().copied() else {
            return out;
        };
        let member = &members.list[index];
        let no_wait = Timeouts {
            wait: Some(Duration::ZERO),
            ..member.pool.timeouts()
        };
        for _ in 0..n {
            member.in_flight.fetch_add(1, Ordering::Relaxed);
            let lease = Lease {
                members: Arc::clone(members),
                index,
            };
            match member.pool.timeout_get(&no_wait).await {
                Ok(mut c) => {
                    c.set_token(token);
                    self.learned_caps(&mut c);
                    self.metrics.backend_requests(member.addr()).inc();
                    out.push(Session::Tcp(c, lease));
                }
                Err(_) => break,
            }
        }
        out
    }

    fn pool_error(&self, e: PoolError<ClientError>) -> GatewayError {
        self.metrics.backend_errors.inc();
        match e {
            PoolError::Timeout(managed::TimeoutType::Wait) => {
                GatewayError::BackendUnavailable("all STEP connections are busy; try again".into())
            }
            PoolError::Timeout(_) => GatewayError::BackendTimeout,
            PoolError::Backend(e) => {
                let e = GatewayError::from(e);
                match e {
                    GatewayError::Step { .. } => GatewayError::BadGateway(format!(
                        "STEP server refused the gateway's login: {e}"
                    )),
                    other => other,
                }
            }
            other => GatewayError::BackendUnavailable(other.to_string()),
        }
    }

    /// Run `op` on a pooled connection (which goes back to the pool
    /// whatever happened).
    pub async fn call<T, F, Fut>(&self, token: &str, op: F) -> Result<T, GatewayError>
    where
        F: FnOnce(Session) -> Fut,
        Fut: Future<Output = (Session, Result<T, ClientError>)>,
    {
        let conn = self.conn(token).await?;
        let (_conn, result) = op(conn).await;
        result.map_err(|e| self.step_error(e))
    }

    /// A STEP exchange's error as the gateway's, counted unless it is a
    /// refusal (which is an answer like any other).
    pub fn step_error(&self, e: ClientError) -> GatewayError {
        if !matches!(e, ClientError::Refused { .. }) {
            warn!(error = %e, "STEP exchange failed");
            self.metrics.backend_errors.inc();
        }
        e.into()
    }

    /// Transfer settings for a connection's server.
    pub fn plan_for(&self, conn: &Session) -> TransferPlan {
        let caps = conn.capabilities();
        if caps.pipelining {
            let bs = self
                .settings
                .block_size
                .min(caps.max_block_size)
                .max(step_core::DEFAULT_BLOCK_SIZE);
            TransferPlan {
                block_size: Some(bs),
                window: self.settings.window.max(1),
                fan_out: self.settings.fan_out.max(1),
                route: conn.route(),
            }
        } else {
            TransferPlan {
                block_size: None,
                window: 1,
                fan_out: 1,
                route: conn.route(),
            }
        }
    }

    /// LOGIN; returns the token.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<String, GatewayError> {
        self.login_caps(username, password, client)
            .await
            .map(|(t, _)| t)
    }

    /// A session for a LOGIN: in process, the service paced by the HTTP
    /// `client`'s address; over TCP, a connection of the login lane, never
    /// one token requests need.
    async fn login_session(&self, client: Option<IpAddr>) -> Result<Session, GatewayError> {
        let members = match &self.transport {
            Transport::InProcess(service) => {
                let serve = Arc::new(ServeAs {
                    service: Arc::clone(service),
                    identity: None,
                    client,
                    conn: ConnState::new(),
                });
                let caps = service.capabilities();
                return Ok(Session::Local(StepClient::local(
                    serve,
                    String::new(),
                    caps,
                )));
            }
            Transport::Pools(members) => members,
        };
        let mut last = None;
        for index in candidates(members, Route::Any) {
            let member = &members.list[index];
            member.in_flight.fetch_add(1, Ordering::Relaxed);
            let lease = Lease {
                members: Arc::clone(members),
                index,
            };
            match member.logins.get().await {
                Ok(conn) => return Ok(Session::Tcp(conn, lease)),
                Err(PoolError::Timeout(managed::TimeoutType::Wait)) => {
                    self.metrics.backend_errors.inc();
                    last = Some(GatewayError::BackendUnavailable(
                        "every login connection is busy; retry in a moment".into(),
                    ));
                }
                Err(e) => last = Some(self.pool_error(e)),
            }
        }
        Err(last
            .unwrap_or_else(|| GatewayError::BackendUnavailable("no STEP backend is up".into())))
    }

    /// LOGIN; returns the token and what the server announced with it.
    pub async fn login_caps(
        &self,
        username: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<(String, Capabilities), GatewayError> {
        let mut c = self.login_session(client).await?;
        let token = c
            .login(username, password)
            .await
            .map_err(|e| self.step_error(e))?;
        let caps = c.capabilities();
        *self.caps.lock().unwrap_or_else(|p| p.into_inner()) = Some(caps);
        Ok((token, caps))
    }

    /// Connections made without the probe's login (a server with accounts)
    /// take what the server announced at a user's login.
    fn learned_caps(&self, conn: &mut StepClient) {
        if self.probed.load(Ordering::Relaxed)
            && let Some(caps) = *self.caps.lock().unwrap_or_else(|p| p.into_inner())
        {
            conn.set_capabilities(caps);
        }
    }

    /// The public identity's token, logging in when there is none or it is
    /// due for renewal (half the TTL the server announced); `None` when the
    /// gateway lets anonymous callers do nothing.
    pub async fn default_token(&self) -> Result<Option<PublicToken>, GatewayError> {
        if self.anonymous == Anonymous::None {
            return Ok(None);
        }
        // Held across the LOGIN on purpose: concurrent requests wait for the
        // one login instead of each minting a token.
        let mut cached = self.default_token.lock().await;
        let losses = self.losses.load(Ordering::Relaxed);
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.renew_at
            && c.losses == losses
        {
            return Ok(Some(c.public.clone()));
        }
        let minted = Instant::now();
        // No password is checked: a pooled connection will do (the login
        // lane is for password checks, which may be slow under a flood).
        let mut c = self.conn("").await?;
        let public = match c.login_anonymous(self.anonymous).await {
            Ok(login) => PublicToken {
                token: login.token,
                user: login.user,
                scope: login.scope,
            },
            // A server without the extension (the reference, where anyone
            // is anyone) answers a LOGIN without a username with 410: the
            // public user logs in by the reference's rule there.
            Err(e) if e.problem() == Some(Problem::FieldMissing) => {
                let user = step_server::auth::PUBLIC_NAME;
                let token = c
                    .login(user, &password_for(user))
                    .await
                    .map_err(|e| self.step_error(e))?;
                PublicToken {
                    token,
                    user: user.to_owned(),
                    scope: self.anonymous.scope().unwrap_or(Scope::Read),
                }
            }
            Err(e) => return Err(self.step_error(e)),
        };
        let caps = c.capabilities();
        *self.caps.lock().unwrap_or_else(|p| p.into_inner()) = Some(caps);
        *cached = Some(CachedToken {
            public: public.clone(),
            renew_at: minted + token_reuse(caps.token_ttl),
            losses: self.losses.load(Ordering::Relaxed),
        });
        Ok(Some(public))
    }

    /// After the server refused the default token `stale`: forget it (unless
    /// another request already replaced it) and return a fresh one.
    pub async fn renew_default_token(
        &self,
        stale: &str,
    ) -> Result<Option<PublicToken>, GatewayError> {
        {
            let mut cached = self.default_token.lock().await;
            if cached.as_ref().is_some_and(|c| c.public.token == stale) {
                *cached = None;
            }
        }
        self.default_token().await
    }

    /// Forget the cached default token (after the server refused it).
    pub async fn forget_default_token(&self) {
        *self.default_token.lock().await = None;
    }

    /// The /readyz answer. One backend (or the one in process) is probed
    /// now: a token-less request must come back with 403, which every STEP
    /// server (ours or the reference) sends. Of several, what the background
    /// probes last found: ready while any one is up, each listed.
    pub async fn ready(&self) -> Result<Value, GatewayError> {
        let Transport::Pools(members) = &self.transport else {
            return self.ready_now().await.map(|()| json!({"status": "ready"}));
        };
        if members.list.len() == 1 {
            self.ready_now().await?;
        }
        let list: Vec<Value> = members
            .list
            .iter()
            .map(|m| {
                json!({
                    "address": m.addr(),
                    "up": m.up.load(Ordering::Relaxed),
                    "in_flight": m.in_flight.load(Ordering::Relaxed),
                })
            })
            .collect();
        if members.list.iter().any(|m| m.up.load(Ordering::Relaxed)) {
            Ok(json!({"status": "ready", "backends": list}))
        } else {
            Err(GatewayError::BackendUnavailable(format!(
                "no STEP backend is up (probed: {})",
                self.describe()
            )))
        }
    }

    async fn ready_now(&self) -> Result<(), GatewayError> {
        let result = self.probe().await;
        let now = if result.is_ok() {
            Readiness::Up
        } else {
            Readiness::Down
        };
        let before = self.readiness.swap(now as u8, Ordering::Relaxed);
        if before != now as u8 {
            match &result {
                Ok(()) => info!(addr = %self.describe(), "STEP backend is up"),
                Err(e) => {
                    warn!(addr = %self.describe(), error = %e, "STEP backend is down")
                }
            }
        }
        result
    }

    async fn probe(&self) -> Result<(), GatewayError> {
        self.call("", |mut c| async move {
            let r = probe_on(&mut c).await;
            (c, r)
        })
        .await
    }

    pub async fn data_save(
        &self,
        token: &str,
        key: Option<String>,
        record: Map<String, Value>,
    ) -> Result<String, GatewayError> {
        self.call(token, |mut c| async move {
            let r = c.data_save(key.as_deref(), record).await;
            (c, r)
        })
        .await
    }

    pub async fn data_get(
        &self,
        token: &str,
        key: String,
    ) -> Result<Map<String, Value>, GatewayError> {
        self.call(token, |mut c| async move {
            let r = c.data_get(&key).await;
            (c, r)
        })
        .await
    }

    pub async fn data_delete(&self, token: &str, key: String) -> Result<(), GatewayError> {
        self.call(token, |mut c| async move {
            let r = c.data_delete(&key).await;
            (c, r)
        })
        .await
    }

    pub async fn file_get(
        &self,
        token: &str,
        key: String,
        block_size: Option<u64>,
    ) -> Result<DownloadPlan, GatewayError> {
        self.call(token, |mut c| async move {
            let r = c.file_get(&key, block_size).await;
            (c, r)
        })
        .await
    }

    /// One page of the caller's files (FILE LIST); 501 when the backend
    /// does not announce the extension (the reference server).
    pub async fn file_list(
        &self,
        token: &str,
        prefix: String,
        after: Option<String>,
        limit: u64,
    ) -> Result<FilePage, GatewayError> {
        let mut conn = self.conn(token).await?;
        if !conn.capabilities().list {
            return Err(GatewayError::NotImplemented(
                "the STEP backend does not list files (no \"list\" capability)".into(),
            ));
        }
        let query = ListQuery {
            prefix: &prefix,
            after: after.as_deref(),
            limit: Some(limit),
        };
        conn.file_list(query).await.map_err(|e| self.step_error(e))
    }

    /// FILE DELETE only while the file's md5 is `md5`: atomic (412 when it
    /// changed) against a server with the `replace` extension; a server
    /// without it ignores the condition (the caller checked it just before).
    pub async fn file_delete_if(
        &self,
        token: &str,
        key: String,
        md5: String,
    ) -> Result<(), GatewayError> {
        self.call(token, |mut c| async move {
            let r = c.file_delete_if(&key, &md5).await;
            (c, r)
        })
        .await
    }

    /// The file under `key` as a download plan, or `None` when there is
    /// none (to evaluate a write's preconditions).
    pub async fn file_current(
        &self,
        token: &str,
        key: String,
    ) -> Result<Option<DownloadPlan>, GatewayError> {
        match self.file_get(token, key, None).await {
            Ok(plan) => Ok(Some(plan)),
            Err(GatewayError::Step {
                problem: Problem::NotFound,
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn file_delete(&self, token: &str, key: String) -> Result<(), GatewayError> {
        self.call(token, |mut c| async move {
            let r = c.file_delete(&key).await;
            (c, r)
        })
        .await
    }

    /// Remove this request's own upload of `key` after it failed: only the
    /// upload `upload_id` names (unfinished, or complete when `completed` —
    /// the md5-mismatch case), never what another request stored meanwhile.
    ///
    /// Without an upload id (a reference server) nothing can be scoped, so
    /// a failed upload's unfinished file is left where it is (a later SAVE of
    /// the key restarts it); only a file this request itself just completed
    /// with a wrong md5 is deleted by key.
    pub async fn discard_upload(
        &self,
        token: &str,
        key: &str,
        upload_id: Option<&str>,
        completed: bool,
    ) {
        self.metrics.upload_cleanups.inc();
        let result = match upload_id {
            Some(id) => {
                let (key, id) = (key.to_owned(), id.to_owned());
                self.call(token, |mut c| async move {
                    let r = c.file_delete_upload(&key, &id).await;
                    (c, r)
                })
                .await
            }
            None if completed => self.file_delete(token, key.to_owned()).await,
            None => {
                debug!(%key, "no upload id: leaving the unfinished upload in place");
                return;
            }
        };
        match result {
            // Gone already, or the key now holds someone else's upload.
            Ok(()) => {}
            Err(GatewayError::Step { problem, .. }) if problem.is_gone() => {}
            Err(e) => warn!(%key, error = %e, "could not discard a failed upload"),
        }
    }

    pub fn transfer_settings(&self) -> &TransferArgs {
        &self.settings
    }
}

/// The readiness probe on `c`: a token-less GET, which every STEP server
/// answers with 403 without touching its store.
async fn probe_on(c: &mut StepClient) -> Result<(), ClientError> {
    let probe = Message::request(Operation::Get, Kind::Data).with(field::KEY, "readyz");
    let resp = c.call(&probe).await?;
    match resp.status_code() {
        Some(403) => Ok(()),
        other => Err(ClientError::Protocol(format!(
            "unexpected status {other:?} to a token-less probe"
        ))),
    }
}

/// The backends `route` allows, in the order to try them. One backend is
/// always tried, up or not (as when there was only ever one). Otherwise the
/// ones up, least loaded first; ties take turns.
fn candidates(members: &Members, route: Route) -> Vec<usize> {
    let n = members.list.len();
    if n == 1 {
        return match route {
            Route::Avoid(mask) if mask & bit(0) != 0 => Vec::new(),
            _ => vec![0],
        };
    }
    let avoid = match route {
        Route::On(i) => return if i < n { vec![i] } else { Vec::new() },
        Route::Any => 0,
        Route::Avoid(mask) => mask,
    };
    let start = members.turn.fetch_add(1, Ordering::Relaxed) % n;
    let mut up: Vec<(usize, usize, usize)> = members
        .list
        .iter()
        .enumerate()
        .filter(|(i, m)| avoid & bit(*i) == 0 && m.up.load(Ordering::Relaxed))
        .map(|(i, m)| (m.in_flight.load(Ordering::Relaxed), (i + n - start) % n, i))
        .collect();
    up.sort_unstable();
    up.into_iter().map(|(_, _, i)| i).collect()
}

/// Probe every backend each [`PROBE_INTERVAL`] (all at once, each within
/// [`PROBE_TIMEOUT`]) until `stop`, each over a connection of its own — not
/// a pooled one, which a busy pool would make wait — kept from one probe to
/// the next (a new connection a second would be two log lines a second on
/// every server) and made again after a failure.
async fn probe_loop(members: Arc<Members>, metrics: GatewayMetrics, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut links: Vec<Option<StepClient>> = members.list.iter().map(|_| None).collect();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let metrics = &metrics;
        let round = futures::future::join_all(members.list.iter().zip(links.iter_mut()).map(
            |(m, link)| async move {
                let probed = async {
                    let c = match link {
                        Some(c) => c,
                        None => link.insert(m.pool.manager().connect(PROBE_TIMEOUT).await?),
                    };
                    probe_on(c).await
                };
                let result = tokio::time::timeout(PROBE_TIMEOUT, probed)
                    .await
                    .unwrap_or(Err(ClientError::TimedOut(PROBE_TIMEOUT)));
                if result.is_err() {
                    *link = None;
                }
                record_probe(m, metrics, result);
            },
        ));
        tokio::select! {
            () = stop.cancelled() => return,
            _ = round => {}
        }
    }
}

fn record_probe(m: &Member, metrics: &GatewayMetrics, result: Result<(), ClientError>) {
    match result {
        Ok(()) => {
            m.failures.store(0, Ordering::Relaxed);
            if !m.up.swap(true, Ordering::Relaxed) {
                info!(backend = %m.addr(), "STEP backend is up");
                metrics.backend_up(m.addr()).set(1);
            }
        }
        Err(e) => {
            let failed = m.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            if failed >= PROBE_FAILURES_DOWN && m.up.swap(false, Ordering::Relaxed) {
                warn!(backend = %m.addr(), error = %e, "STEP backend is down");
                metrics.backend_up(m.addr()).set(0);
                // Its idle connections are most likely dead too; the ones on
                // loan fail (or finish) with their requests.
                m.pool.retain(|_, _| false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize) -> Members {
        let list = (0..n)
            .map(|i| {
                let manager = StepManager {
                    addr: format!("127.0.0.1:{}", 1000 + i),
                    tls: None,
                    timeout: Duration::from_secs(1),
                    losses: Arc::default(),
                    caps: Arc::default(),
                    probed: Arc::default(),
                };
                let logins = Pool::builder(StepManager {
                    addr: manager.addr.clone(),
                    tls: None,
                    timeout: Duration::from_secs(1),
                    losses: Arc::default(),
                    caps: Arc::default(),
                    probed: Arc::default(),
                })
                .build()
                .expect("pool");
                Member {
                    pool: Pool::builder(manager).build().expect("pool"),
                    logins,
                    up: AtomicBool::new(true),
                    failures: AtomicU32::new(0),
                    in_flight: AtomicUsize::new(0),
                }
            })
            .collect();
        Members {
            list,
            turn: AtomicUsize::new(0),
        }
    }

    #[test]
    fn least_loaded_up_backend_first_ties_take_turns() {
        let m = members(3);
        // Idle backends: each call starts one further along.
        let firsts: Vec<usize> = (0..6).map(|_| candidates(&m, Route::Any)[0]).collect();
        assert_eq!(firsts, [0, 1, 2, 0, 1, 2]);
        m.list[0].in_flight.store(2, Ordering::Relaxed);
        m.list[1].in_flight.store(1, Ordering::Relaxed);
        assert_eq!(candidates(&m, Route::Any), [2, 1, 0]);
        // Down ones are left out; avoided ones too.
        m.list[2].up.store(false, Ordering::Relaxed);
        assert_eq!(candidates(&m, Route::Any), [1, 0]);
        assert_eq!(candidates(&m, Route::Avoid(bit(1))), [0]);
        assert!(candidates(&m, Route::Avoid(bit(0) | bit(1))).is_empty());
        // A pinned request goes where it was pinned, up or not.
        assert_eq!(candidates(&m, Route::On(2)), [2]);
        assert!(candidates(&m, Route::On(7)).is_empty());
        // One backend is always tried, as before there could be several.
        let one = members(1);
        one.list[0].up.store(false, Ordering::Relaxed);
        assert_eq!(candidates(&one, Route::Any), [0]);
        assert_eq!(bit(63), 1 << 63);
        assert_eq!(bit(64), 0);
    }

    #[test]
    fn two_failed_probes_mark_down_one_success_up() {
        let m = members(2);
        let metrics = GatewayMetrics::new();
        let member = &m.list[0];
        let fail = || Err(ClientError::Closed);
        record_probe(member, &metrics, fail());
        assert!(
            member.up.load(Ordering::Relaxed),
            "one failure is not enough"
        );
        record_probe(member, &metrics, Ok(()));
        record_probe(member, &metrics, fail());
        assert!(
            member.up.load(Ordering::Relaxed),
            "a success resets the count"
        );
        record_probe(member, &metrics, fail());
        assert!(!member.up.load(Ordering::Relaxed));
        assert_eq!(metrics.backend_up(member.addr()).get(), 0);
        record_probe(member, &metrics, Ok(()));
        assert!(member.up.load(Ordering::Relaxed));
        assert_eq!(metrics.backend_up(member.addr()).get(), 1);
    }

    #[test]
    fn default_token_is_renewed_well_before_it_expires() {
        assert_eq!(token_reuse(None), DEFAULT_TOKEN_REUSE);
        assert_eq!(token_reuse(Some(86_400)), DEFAULT_TOKEN_REUSE);
        assert_eq!(token_reuse(Some(120)), Duration::from_secs(60));
        assert_eq!(token_reuse(Some(1)), Duration::ZERO);
    }
}
