//! Gateway configuration: clap flags with environment-variable fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use step_server::config::ServiceArgs;
use step_server::logging::LogFormat;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "gateway",
    version,
    about = "REST gateway in front of a STEP server; with no --backend it runs one in-process"
)]
pub struct GatewayArgs {
    /// Address the HTTP server binds.
    #[arg(long, env = "GATEWAY_BIND", default_value = "0.0.0.0")]
    pub bind: String,
    /// HTTP port.
    #[arg(long, env = "GATEWAY_PORT", default_value_t = 8080)]
    pub port: u16,
    /// host:port of a separate STEP server, or several comma-separated
    /// (interchangeable servers over one shared store: health-checked, the
    /// least loaded one used). When absent, a step-server runs in this
    /// process (on --step-ip/--step-port) over the --data-dir store.
    #[arg(long, env = "STEP_BACKEND")]
    pub backend: Option<String>,
    /// Address the embedded STEP server listens on.
    #[arg(long, env = "STEP_IP", default_value = "0.0.0.0")]
    pub step_ip: String,
    /// Port of the embedded STEP server.
    #[arg(long, env = "STEP_PORT", default_value_t = step_core::DEFAULT_PORT)]
    pub step_port: u16,
    /// PEM certificate chain: serve HTTPS instead of HTTP (re-read on SIGHUP).
    #[arg(long, env = "GATEWAY_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert (re-read on SIGHUP).
    #[arg(long, env = "GATEWAY_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub transfer: TransferArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Storage and token flags of the embedded step-server.
    #[command(flatten)]
    pub embedded: ServiceArgs,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "GATEWAY_LOG", default_value = "info")]
    pub log: String,
    /// Log line format: `text`, or `json` (one object per line, for log shippers).
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How the gateway talks to the STEP backend.
#[derive(clap::Args, Debug, Clone)]
pub struct TransferArgs {
    /// Pooled TCP connections to the STEP server.
    #[arg(long, env = "GATEWAY_POOL_SIZE", default_value_t = 32)]
    pub pool_size: usize,
    /// Milliseconds a request waits for a pooled connection before a 503.
    #[arg(long, env = "GATEWAY_POOL_WAIT_MS", default_value_t = 2000)]
    pub pool_wait_ms: u64,
    /// Seconds to wait for any one STEP answer (connect included) before a 504.
    #[arg(long, env = "GATEWAY_BACKEND_TIMEOUT", default_value_t = 15)]
    pub backend_timeout: u64,
    /// STEP requests in flight per connection (pipelining window), when the
    /// server announces pipelining; otherwise 1.
    #[arg(long, env = "GATEWAY_WINDOW", default_value_t = 8)]
    pub window: usize,
    /// Connections one large upload is spread over.
    #[arg(long, env = "GATEWAY_FAN_OUT", default_value_t = 4)]
    pub fan_out: usize,
    /// Block size proposed to servers that accept larger blocks.
    #[arg(long, env = "GATEWAY_BLOCK_SIZE", default_value_t = 512 * 1024)]
    pub block_size: u64,
    /// Speak TLS to the --backend (a step-server's --tls-port).
    #[arg(long, env = "GATEWAY_BACKEND_TLS", default_value_t = false)]
    pub backend_tls: bool,
    /// PEM file of the CA certificate(s) the backend's certificate must chain
    /// to (default: the system's roots).
    #[arg(long, env = "GATEWAY_BACKEND_CA_CERT", requires = "backend_tls")]
    pub backend_ca_cert: Option<PathBuf>,
    /// Name the backend's certificate must carry (default: --backend's host).
    #[arg(long, env = "GATEWAY_BACKEND_TLS_NAME", requires = "backend_tls")]
    pub backend_tls_name: Option<String>,
}

/// The HTTP side.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// Requests without a token act as this user. Empty disables it.
    #[arg(long, env = "GATEWAY_DEFAULT_USER", default_value = "anonymous")]
    pub default_user: String,
    /// Refuse requests without a token (401) instead of using the default
    /// user: the same as `--anonymous none`.
    #[arg(long, env = "GATEWAY_REQUIRE_AUTH", default_value_t = false)]
    pub require_auth: bool,
    /// What requests without credentials may do, as the default user:
    /// `none` (401), `read` (GET/HEAD only) or `write` (everything).
    #[arg(long, env = "GATEWAY_ANONYMOUS", value_enum, default_value_t = crate::auth::Anonymous::Write)]
    pub anonymous: crate::auth::Anonymous,
    /// Largest upload in bytes (0 = unlimited).
    #[arg(long, env = "GATEWAY_MAX_UPLOAD", default_value_t = 0)]
    pub max_upload: u64,
    /// Largest JSON request body in bytes.
    #[arg(long, env = "GATEWAY_MAX_JSON", default_value_t = 256 * 1024)]
    pub max_json_body: usize,
    /// Multipart files up to this size are held in memory; larger ones are
    /// spooled to a temp file (STEP needs the size before the first block).
    #[arg(long, env = "GATEWAY_SPOOL_THRESHOLD", default_value_t = 4 * 1024 * 1024)]
    pub spool_threshold: usize,
    /// Directory for spooled multipart uploads (default: the system temp dir).
    #[arg(long, env = "GATEWAY_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Seconds a non-streaming request may take.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout: u64,
    /// A file body must bring at least --body-min-bytes every
    /// --body-interval-secs, or the request is cut with 408: a client
    /// dripping bytes holds memory and a connection slot, so it must keep up
    /// a minimum rate (the last, shorter stretch of a body is exempt).
    #[arg(long, env = "GATEWAY_BODY_MIN_BYTES", default_value_t = 1024)]
    pub body_min_bytes: u64,
    /// See --body-min-bytes.
    #[arg(long, env = "GATEWAY_BODY_INTERVAL_SECS", default_value_t = 30)]
    pub body_interval_secs: u64,
    /// Seconds a connection may wait before sending a complete request head:
    /// from accept, or from the end of the previous response on a keep-alive
    /// connection (so it is the idle timeout too). Then it is closed.
    #[arg(long, env = "GATEWAY_HEADER_TIMEOUT_SECS", default_value_t = 30)]
    pub header_timeout_secs: u64,
    /// Open HTTP connections at most; further clients wait in the kernel's
    /// accept queue until one closes.
    #[arg(long, env = "GATEWAY_HTTP_MAX_CONNECTIONS", default_value_t = 4096)]
    pub http_max_connections: usize,
    /// Bytes of multipart uploads held in memory across all requests; beyond
    /// it, uploads spool to disk even when under --spool-threshold.
    #[arg(long, env = "GATEWAY_MAX_BUFFERED_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub max_buffered_bytes: usize,
    /// Allowed CORS origins, comma-separated; `*` for any. Empty: no CORS headers.
    #[arg(
        long,
        env = "GATEWAY_CORS_ORIGINS",
        default_value = "",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
}

impl GatewayArgs {
    pub fn http_addr(&self) -> Result<SocketAddr, String> {
        parse_addr(&self.bind, self.port)
    }

    pub fn step_addr(&self) -> Result<SocketAddr, String> {
        parse_addr(&self.step_ip, self.step_port)
    }
}

impl HttpArgs {
    pub fn body_interval(&self) -> Duration {
        Duration::from_secs(self.body_interval_secs.max(1))
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs.max(1))
    }
}

impl TransferArgs {
    pub fn backend_timeout(&self) -> Duration {
        Duration::from_secs(self.backend_timeout.max(1))
    }
}

fn parse_addr(ip: &str, port: u16) -> Result<SocketAddr, String> {
    let ip = if ip.is_empty() { "0.0.0.0" } else { ip };
    format!("{ip}:{port}")
        .parse()
        .or_else(|_| format!("[{ip}]:{port}").parse())
        .map_err(|_| format!("invalid address {ip:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn flags_are_consistent_and_defaults_run() {
        GatewayArgs::command().debug_assert();
        let args = GatewayArgs::try_parse_from(["gateway"]).expect("no flags needed");
        assert_eq!(args.port, 8080);
        assert_eq!(args.step_port, 1379);
        assert!(args.backend.is_none());
        assert_eq!(args.http.default_user, "anonymous");
    }
}
