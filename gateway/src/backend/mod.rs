//! The STEP backend: the operations the routes use, each over a
//! [`Session`] — a [`StepClient`] on loan. Where sessions come from
//! ([`Source`]): a pool of TCP connections to each STEP server of
//! `--backend`, or the embedded server's service in this process. Either
//! way the session is the same client over a [`step_core::link::Link`]
//! (frames on a socket, or a channel to a task calling the service), so
//! nothing past getting a session depends on where the service is.
//! Protocol rules stay in the service.
//!
//! Which file for which behaviour:
//!
//! * `pool.rs` — making, checking and pooling TCP connections;
//! * `balance.rs` — several backends: which one a session comes from;
//! * `probe.rs` — health probes and the /readyz answer;
//! * `inprocess.rs` — sessions with the service in this process;
//! * `sessions.rs` — getting a session (pooled, login lane, in process);
//! * `token.rs` — the public identity's cached token;
//! * `ops.rs` — the STEP operations the routes call.

mod balance;
mod inprocess;
mod ops;
mod pool;
mod probe;
mod sessions;
mod token;

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::sync::atomic::AtomicU8;

use step_core::access::{Anonymous, Scope};
use step_core::client::{ClientError, StepClient};
use step_core::conn::tls::TlsClient;
use step_server::service::Service;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use balance::{Lease, MAX_BACKENDS, Route, bit};
pub use pool::{Conn, Pool, StepManager};
pub use probe::{PROBE_FAILURES_DOWN, PROBE_INTERVAL};
pub use token::{PublicToken, token_reuse};

use crate::config::TransferArgs;
use crate::error::GatewayError;
use crate::metrics::Metrics as GatewayMetrics;

/// Connections to each backend kept for LOGINs (a lane of their own), so
/// password checks never take the connections token requests need.
pub const LOGIN_LANE: usize = 4;

/// Where the gateway's sessions come from.
#[derive(Debug)]
enum Source {
    /// Pooled TCP connections to one or more interchangeable STEP servers.
    Pools(Arc<balance::Members>),
    /// The embedded server's service, in this process.
    Service(Arc<Service>),
}

/// A STEP session on loan: a client, pooled (back to its pool when
/// dropped, its backend's load count released) or made for this session.
pub struct Session {
    client: Box<dyn DerefMut<Target = StepClient> + Send>,
    lease: Option<Lease>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("client", &**self.client)
            .field("lease", &self.lease)
            .finish()
    }
}

impl Session {
    fn pooled(conn: Conn, lease: Lease) -> Self {
        Self {
            client: Box::new(conn),
            lease: Some(lease),
        }
    }

    fn owned(client: StepClient) -> Self {
        Self {
            client: Box::new(Box::new(client)),
            lease: None,
        }
    }

    /// The backend (index in `--backend`) this session talks to; `None` in
    /// process.
    pub fn member(&self) -> Option<usize> {
        self.lease.as_ref().map(|l| l.index)
    }

    /// The route that keeps later sessions of a request on this one's backend.
    pub fn route(&self) -> Route {
        self.member().map_or(Route::Any, Route::On)
    }
}

impl Deref for Session {
    type Target = StepClient;
    fn deref(&self) -> &StepClient {
        &self.client
    }
}

impl DerefMut for Session {
    fn deref_mut(&mut self) -> &mut StepClient {
        &mut self.client
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
    source: Source,
    settings: TransferArgs,
    /// What the gateway asks the server to let anonymous callers do.
    anonymous: Anonymous,
    /// The public identity's token while it may be reused.
    default_token: Mutex<Option<token::CachedToken>>,
    /// Shared with the pools' managers: losses and capabilities.
    shared: pool::Shared,
    /// What the last readiness probe found ([`probe::Readiness`] as u8):
    /// only a change is logged.
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
        let wait = std::time::Duration::from_millis(settings.pool_wait_ms);
        let shared = pool::Shared::default();
        let list: Vec<balance::Member> = addrs
            .into_iter()
            .map(|(addr, tls)| {
                let manager = |addr, tls| StepManager::new(addr, tls, timeout, shared.clone());
                let logins = manager(addr.clone(), tls.clone());
                let logins = pool::build(logins, LOGIN_LANE, wait, timeout);
                let size = settings.pool_size.max(1);
                let pool = pool::build(manager(addr, tls), size, wait, timeout);
                balance::Member::new(pool, logins)
            })
            .collect();
        for m in &list {
            metrics.backend_up(m.addr()).set(1);
        }
        let members = Arc::new(balance::Members {
            list,
            turn: Default::default(),
        });
        let source = Source::Pools(Arc::clone(&members));
        let backend = Self::with_source(source, settings, anonymous, metrics, shared);
        if members.list.len() >= 2 {
            let (metrics, stop) = (backend.metrics.clone(), backend.probes.clone());
            tokio::spawn(probe::probe_loop(members, metrics, stop));
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
        let shared = pool::Shared::default();
        shared.learn(service.capabilities());
        Self::with_source(
            Source::Service(service),
            settings,
            anonymous,
            metrics,
            shared,
        )
    }

    fn with_source(
        source: Source,
        settings: TransferArgs,
        anonymous: Anonymous,
        metrics: GatewayMetrics,
        shared: pool::Shared,
    ) -> Self {
        Self {
            source,
            settings,
            anonymous,
            default_token: Mutex::new(None),
            shared,
            readiness: AtomicU8::new(probe::Readiness::Unknown as u8),
            metrics,
            probes: CancellationToken::new(),
        }
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
        if let Source::Pools(members) = &self.source {
            for s in members.list.iter().map(|m| m.pool.status()) {
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
        match &self.source {
            Source::Service(service) => inprocess::scope_of(service, token).await.map(Some),
            Source::Pools(_) => Ok(None),
        }
    }

    /// Whether the STEP service runs in this process (the embedded server),
    /// whose stores check every block they read and which paces logins by
    /// the client's own address.
    pub fn is_in_process(&self) -> bool {
        matches!(self.source, Source::Service(_))
    }

    /// Where the STEP service is, for logs.
    fn describe(&self) -> String {
        match &self.source {
            Source::Pools(members) => members
                .list
                .iter()
                .map(balance::Member::addr)
                .collect::<Vec<_>>()
                .join(","),
            Source::Service(_) => "in process".into(),
        }
    }

    /// How many STEP servers `--backend` names (0 in process).
    pub fn backend_count(&self) -> usize {
        match &self.source {
            Source::Pools(members) => members.list.len(),
            Source::Service(_) => 0,
        }
    }

    pub fn transfer_settings(&self) -> &TransferArgs {
        &self.settings
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

    /// Transfer settings for a session's server.
    pub fn plan_for(&self, conn: &Session) -> TransferPlan {
        let caps = conn.capabilities();
        let route = conn.route();
        if !caps.pipelining {
            return TransferPlan {
                block_size: None,
                window: 1,
                fan_out: 1,
                route,
            };
        }
        let bs = self
            .settings
            .block_size
            .min(caps.max_block_size)
            .max(step_core::DEFAULT_BLOCK_SIZE);
        TransferPlan {
            block_size: Some(bs),
            window: self.settings.window.max(1),
            fan_out: self.settings.fan_out.max(1),
            route,
        }
    }
}
