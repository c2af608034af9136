//! Health: the background probes of several backends, and the /readyz
//! answer (logged only when it changes, so a probe polled against a dead
//! backend does not flood the log).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};
use step_core::client::{ClientError, StepClient};
use step_core::message::field;
use step_core::{Kind, Message, Operation};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::balance::{Member, Members};
use super::{Backend, Source};
use crate::error::GatewayError;
use crate::metrics::Metrics as GatewayMetrics;

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
pub(super) enum Readiness {
    Unknown = 0,
    Up = 1,
    Down = 2,
}

impl Backend {
    /// The /readyz answer. One backend (or the one in process) is probed
    /// now: a token-less request must come back with 403, which every STEP
    /// server (ours or the reference) sends. Of several, what the background
    /// probes last found: ready while any one is up, each listed.
    pub async fn ready(&self) -> Result<Value, GatewayError> {
        let Source::Pools(members) = &self.source else {
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
        let result = match self.conn("").await {
            Ok(mut c) => probe_on(&mut c).await.map_err(|e| self.step_error(e)),
            Err(e) => Err(e),
        };
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
}

/// The readiness probe on `c`: a token-less GET, which every STEP server
/// answers with 403 without touching its store.
async fn probe_on(c: &mut StepClient) -> Result<(), ClientError> {
    let probe = Message::request(Operation::Get, Kind::Data).with(field::KEY, "readyz");
    let resp = c.call_owned(probe).await?;
    match resp.status_code() {
        Some(403) => Ok(()),
        other => Err(ClientError::Protocol(format!(
            "unexpected status {other:?} to a token-less probe"
        ))),
    }
}

/// Probe every backend each [`PROBE_INTERVAL`] (all at once, each within
/// [`PROBE_TIMEOUT`]) until `stop`, each over a connection of its own — not
/// a pooled one, which a busy pool would make wait — kept from one probe to
/// the next (a new connection a second would be two log lines a second on
/// every server) and made again after a failure.
pub(super) async fn probe_loop(
    members: Arc<Members>,
    metrics: GatewayMetrics,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut links: Vec<Option<StepClient>> = members.list.iter().map(|_| None).collect();
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let metrics = &metrics;
        let round = futures::future::join_all(
            members
                .list
                .iter()
                .zip(links.iter_mut())
                .map(|(m, link)| probe_one(m, link, metrics)),
        );
        tokio::select! {
            () = stop.cancelled() => return,
            _ = round => {}
        }
    }
}

/// One probe of `m` over `link` (connected first when there is none).
async fn probe_one(m: &Member, link: &mut Option<StepClient>, metrics: &GatewayMetrics) {
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
    use super::super::balance::tests::members;
    use super::*;

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
}
