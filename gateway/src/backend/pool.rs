//! Pooled TCP connections to one STEP server: how they are made (TLS when
//! configured, the capabilities probed once), checked before each loan, and
//! how a pool of them is built.
//!
//! Pooled connections belong to no user: every request carries its own token
//! (set on the connection just before use). A connection always goes back to
//! the pool, however its use ended — an early error, a refusal, a request
//! future dropped mid-pipeline: the client counts the answers it is still
//! owed, and the pool's recycle check reads them (under the backend
//! timeout) before the connection is lent again. Only a connection that
//! broke (an IO or framing failure, owed answers that never came) or that
//! the server closed fails that check and is replaced.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Object, RecycleError, RecycleResult};
use step_core::access::Anonymous;
use step_core::client::{Capabilities, ClientError, StepClient};
use step_core::conn::tls::TlsClient;
use step_core::message::field;
use step_core::{Kind, Message, Operation};
use tracing::debug;

/// What every pool of a gateway shares: connection losses (a hint that the
/// server restarted) and what the server announced.
#[derive(Debug, Clone, Default)]
pub(super) struct Shared {
    /// Bumped whenever a connection is found dead: the server may have
    /// restarted (perhaps with a new token secret), so cached tokens are
    /// suspect.
    pub losses: Arc<AtomicU64>,
    /// What the server announced: at the first connection's probe, then at
    /// every LOGIN that succeeded.
    pub caps: Arc<std::sync::Mutex<Option<Capabilities>>>,
    /// The capabilities have been probed once: later connections take
    /// them as they are (renewed by every user's LOGIN).
    pub probed: Arc<AtomicBool>,
}

impl Shared {
    pub fn known_caps(&self) -> Option<Capabilities> {
        *self.caps.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn learn(&self, caps: Capabilities) {
        *self.caps.lock().unwrap_or_else(|p| p.into_inner()) = Some(caps);
    }
}

/// Creates and checks pooled STEP connections.
#[derive(Debug)]
pub struct StepManager {
    pub(super) addr: String,
    /// Set for a TLS backend (--backend-tls).
    tls: Option<TlsClient>,
    timeout: Duration,
    shared: Shared,
}

impl StepManager {
    pub(super) fn new(
        addr: String,
        tls: Option<TlsClient>,
        timeout: Duration,
        shared: Shared,
    ) -> Self {
        Self {
            addr,
            tls,
            timeout,
            shared,
        }
    }

    /// A new connection (TLS when configured), not logged in, whose
    /// exchanges each wait at most `timeout`.
    pub(super) async fn connect(&self, timeout: Duration) -> Result<StepClient, ClientError> {
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
        if !self.shared.probed.load(Ordering::Relaxed) {
            // What the server can do comes with a LOGIN answer; an anonymous
            // one costs no password check, and our server announces its
            // capabilities even when it refuses it. A server without the
            // extension (the reference) refuses it and announces nothing:
            // the reference's defaults then apply.
            let probe = Message::request(Operation::Login, Kind::Auth)
                .with(field::ANONYMOUS, Anonymous::Read.as_str());
            let resp = client.call_owned(probe).await?;
            self.shared.learn(Capabilities::from_login(&resp));
            self.shared.probed.store(true, Ordering::Relaxed);
        }
        if let Some(caps) = self.shared.known_caps() {
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
            self.shared.losses.fetch_add(1, Ordering::Relaxed);
            Err(RecycleError::message("connection closed or broken"))
        }
    }
}

pub type Pool = managed::Pool<StepManager>;

/// A pooled connection on loan; dropped, it goes back to the pool.
pub type Conn = Object<StepManager>;

/// A pool of at most `size` connections made by `manager`, each connect and
/// exchange within `timeout`, a loan waited for at most `wait`.
pub(super) fn build(manager: StepManager, size: usize, wait: Duration, timeout: Duration) -> Pool {
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(timeout))
        // Recycling may read answers an abandoned exchange left owed, each
        // within the backend timeout.
        .recycle_timeout(Some(timeout * 2))
        .build()
        .expect("a runtime is configured, so building cannot fail")
}
