//! Prometheus metrics, rendered as text at `GET /metrics`.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use step_server::store::Upkeep;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// One STEP server of `--backend`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendLabels {
    pub backend: String,
}

/// Every metric the gateway keeps. Cloning shares the same series.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub upload_bytes: Counter,
    pub download_bytes: Counter,
    pub upload_seconds: Histogram,
    pub download_seconds: Histogram,
    pub backend_errors: Counter,
    pub pool_waits: Counter,
    pub download_integrity_failures: Counter,
    pub download_stalls: Counter,
    pool_size: Gauge,
    pool_in_use: Gauge,
    pool_waiting: Gauge,
    /// Cleanups of failed or abandoned uploads (each scoped to its upload).
    pub upload_cleanups: Counter,
    /// HTTP connections accepted.
    pub http_connections: Counter,
    backend_up: Family<BackendLabels, Gauge>,
    backend_requests: Family<BackendLabels, Counter>,
    /// The embedded server's store, whose unfinished uploads are reported
    /// (a separate step-server's are not visible from here).
    store: Option<Arc<dyn Upkeep>>,
    unfinished_uploads: Gauge,
    unfinished_bytes_planned: Gauge,
    unfinished_bytes_received: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    // Long on purpose: a flat list of every metric, each registered once.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("gateway");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let upload_bytes = Counter::default();
        r.register(
            "upload_bytes",
            "File bytes stored through the gateway",
            upload_bytes.clone(),
        );
        let download_bytes = Counter::default();
        r.register(
            "download_bytes",
            "File bytes served by the gateway",
            download_bytes.clone(),
        );
        let upload_seconds = Histogram::new(exponential_buckets(0.001, 4.0, 10));
        r.register(
            "upload_duration_seconds",
            "Time to store one uploaded file",
            upload_seconds.clone(),
        );
        let download_seconds = Histogram::new(exponential_buckets(0.001, 4.0, 10));
        r.register(
            "download_duration_seconds",
            "Time to stream one file",
            download_seconds.clone(),
        );
        let backend_errors = Counter::default();
        r.register(
            "backend_errors",
            "STEP backend failures (connect, IO, timeouts, protocol)",
            backend_errors.clone(),
        );
        let pool_waits = Counter::default();
        r.register(
            "pool_waits",
            "Requests that found no idle STEP connection",
            pool_waits.clone(),
        );
        let download_integrity_failures = Counter::default();
        r.register(
            "download_integrity_failures",
            "Downloads aborted because the stored bytes failed a checksum (whole-file md5, or the server's per-block check)",
            download_integrity_failures.clone(),
        );
        let download_stalls = Counter::default();
        r.register(
            "download_stalls",
            "Downloads abandoned because the HTTP client took no block for the stall timeout",
            download_stalls.clone(),
        );
        let pool_size = Gauge::default();
        r.register("pool_size", "STEP connections open", pool_size.clone());
        let pool_in_use = Gauge::default();
        r.register(
            "pool_in_use",
            "STEP connections in use",
            pool_in_use.clone(),
        );
        let pool_waiting = Gauge::default();
        r.register(
            "pool_waiting",
            "Requests waiting for a STEP connection",
            pool_waiting.clone(),
        );
        let upload_cleanups = Counter::default();
        r.register(
            "upload_cleanups",
            "Failed or abandoned uploads cleaned up (only their own unfinished upload)",
            upload_cleanups.clone(),
        );
        let http_connections = Counter::default();
        r.register(
            "http_connections_accepted",
            "HTTP connections accepted",
            http_connections.clone(),
        );
        let backend_up = Family::<BackendLabels, Gauge>::default();
        r.register(
            "backend_up",
            "Whether each STEP backend answered its health probes (1) or not (0)",
            backend_up.clone(),
        );
        let backend_requests = Family::<BackendLabels, Counter>::default();
        r.register(
            "backend_sessions",
            "STEP connections lent to requests, by backend",
            backend_requests.clone(),
        );
        let unfinished_uploads = Gauge::default();
        r.register(
            "unfinished_uploads",
            "Unfinished uploads held by the embedded STEP server",
            unfinished_uploads.clone(),
        );
        let unfinished_bytes_planned = Gauge::default();
        r.register(
            "unfinished_bytes_planned",
            "Bytes announced by the embedded server's unfinished uploads",
            unfinished_bytes_planned.clone(),
        );
        let unfinished_bytes_received = Gauge::default();
        r.register(
            "unfinished_bytes_received",
            "Bytes received so far by the embedded server's unfinished uploads",
            unfinished_bytes_received.clone(),
        );
        Self {
            registry: Arc::new(r),
            requests,
            upload_bytes,
            download_bytes,
            upload_seconds,
            download_seconds,
            backend_errors,
            pool_waits,
            download_integrity_failures,
            download_stalls,
            pool_size,
            pool_in_use,
            pool_waiting,
            upload_cleanups,
            http_connections,
            backend_up,
            backend_requests,
            store: None,
            unfinished_uploads,
            unfinished_bytes_planned,
            unfinished_bytes_received,
        }
    }

    /// The up gauge of backend `addr`.
    pub fn backend_up(&self, addr: &str) -> Gauge {
        self.backend_up
            .get_or_create(&BackendLabels {
                backend: addr.to_owned(),
            })
            .clone()
    }

    /// The session counter of backend `addr`.
    pub fn backend_requests(&self, addr: &str) -> Counter {
        self.backend_requests
            .get_or_create(&BackendLabels {
                backend: addr.to_owned(),
            })
            .clone()
    }

    /// Also report the unfinished uploads of `store` (the embedded server's).
    pub fn with_store(mut self, store: Arc<dyn Upkeep>) -> Self {
        self.store = Some(store);
        self
    }

    /// The exposition text, with pool gauges read now.
    pub fn render(&self, pool: deadpool::Status) -> String {
        self.pool_size.set(pool.size as i64);
        self.pool_in_use
            .set(pool.size.saturating_sub(pool.available) as i64);
        self.pool_waiting.set(pool.waiting as i64);
        if let Some(store) = &self.store {
            let u = store.unfinished_stats();
            let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
            self.unfinished_uploads.set(gauge(u.count));
            self.unfinished_bytes_planned.set(gauge(u.bytes_planned));
            self.unfinished_bytes_received.set(gauge(u.bytes_received));
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
