//! Where a [`Session`] comes from: a pooled connection of the backend the
//! balancing picks (the next one when connecting to it fails), the login
//! lane for password checks, or the service in this process.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use deadpool::managed::{PoolError, TimeoutType, Timeouts};
use step_core::client::ClientError;
use tracing::{debug, warn};

use super::balance::{Lease, Members, Route, candidates};
use super::{Backend, Session, Source, inprocess};
use crate::error::GatewayError;

impl Backend {
    /// A session carrying `token` (empty: none, for LOGIN and probes), from
    /// the least loaded backend that is up; when connecting to it fails,
    /// from the next.
    pub async fn conn(&self, token: &str) -> Result<Session, GatewayError> {
        self.conn_to(token, Route::Any).await
    }

    /// [`Backend::conn`] from the backends `route` allows.
    pub async fn conn_to(&self, token: &str, route: Route) -> Result<Session, GatewayError> {
        let members = match &self.source {
            Source::Pools(members) => members,
            Source::Service(service) => {
                return Ok(Session::owned(inprocess::session(service, token).await?));
            }
        };
        let mut last = None;
        for index in candidates(members, route) {
            match self.checkout(members, index, token).await {
                Ok(session) => return Ok(session),
                // A refused login is the same answer on every backend.
                Err(e @ PoolError::Backend(ClientError::Refused { .. })) => {
                    return Err(self.pool_error(e));
                }
                Err(e) => {
                    if members.list.len() > 1 {
                        let addr = members.list[index].addr();
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
        let started = Instant::now();
        let status = member.pool.status();
        if status.available == 0 && status.size >= status.max_size {
            self.metrics.pool_waits.inc();
        }
        let lease = Lease::take(members, index);
        let conn = member.pool.get().await?;
        debug!(
            backend = %member.addr(),
            waited_ms = started.elapsed().as_millis() as u64,
            "got STEP connection"
        );
        Ok(self.lent(conn, lease, token))
    }

    /// A pooled connection on loan, carrying `token` and what the server
    /// last announced.
    fn lent(&self, mut conn: super::pool::Conn, lease: Lease, token: &str) -> Session {
        self.metrics.backend_requests(lease.addr()).inc();
        conn.set_token(token);
        // Connections made without the probe's login (a server with
        // accounts) take what the server announced at a user's login.
        if self.shared.probed.load(Ordering::Relaxed)
            && let Some(caps) = self.shared.known_caps()
        {
            conn.set_capabilities(caps);
        }
        Session::pooled(conn, lease)
    }

    /// Up to `n` more pooled connections to the backend `route` picks,
    /// without waiting for busy ones (none in process: one session there
    /// already answers a window of requests at once).
    pub async fn extra_conns(&self, token: &str, n: usize, route: Route) -> Vec<Session> {
        let mut out = Vec::new();
        let Source::Pools(members) = &self.source else {
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
            let lease = Lease::take(members, index);
            match member.pool.timeout_get(&no_wait).await {
                Ok(c) => out.push(self.lent(c, lease, token)),
                Err(_) => break,
            }
        }
        out
    }

    /// A session for a LOGIN: in process, the service paced by the HTTP
    /// `client`'s address; over TCP, a connection of the login lane, never
    /// one token requests need.
    pub(super) async fn login_session(
        &self,
        client: Option<IpAddr>,
    ) -> Result<Session, GatewayError> {
        let members = match &self.source {
            Source::Service(service) => {
                return Ok(Session::owned(inprocess::login_session(service, client)));
            }
            Source::Pools(members) => members,
        };
        let mut last = None;
        for index in candidates(members, Route::Any) {
            let lease = Lease::take(members, index);
            match members.list[index].logins.get().await {
                Ok(conn) => return Ok(Session::pooled(conn, lease)),
                Err(PoolError::Timeout(TimeoutType::Wait)) => {
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

    fn pool_error(&self, e: PoolError<ClientError>) -> GatewayError {
        self.metrics.backend_errors.inc();
        match e {
            PoolError::Timeout(TimeoutType::Wait) => {
                GatewayError::BackendUnavailable("all STEP connections are busy; try again".into())
            }
            PoolError::Timeout(_) => GatewayError::BackendTimeout,
            PoolError::Backend(e) => match GatewayError::from(e) {
                e @ GatewayError::Step { .. } => GatewayError::BadGateway(format!(
                    "STEP server refused the gateway's login: {e}"
                )),
                other => other,
            },
            other => GatewayError::BackendUnavailable(other.to_string()),
        }
    }
}
