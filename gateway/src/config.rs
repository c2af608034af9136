//! Gateway configuration: clap flags with environment-variable fallbacks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use step_core::access::Anonymous;
use step_server::config::{ServerCommand, ServiceArgs, parse_size, parse_size_usize};
use step_server::logging::LogFormat;

#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "gateway",
    version,
    about = "REST gateway in front of a STEP server; with no --backend it runs one in-process"
)]
pub struct GatewayArgs {
    /// Address the HTTP server binds: loopback unless opened up knowingly
    /// (`0.0.0.0` for every interface; anonymous write beyond loopback
    /// then needs an explicit `--anonymous write`).
    #[arg(long, env = "GATEWAY_BIND", default_value = "127.0.0.1", help_heading = HTTP_LISTEN)]
    pub bind: String,
    /// HTTP port.
    #[arg(long, env = "GATEWAY_PORT", default_value_t = 8080, help_heading = HTTP_LISTEN)]
    pub port: u16,
    /// host:port of a separate STEP server, or several comma-separated
    /// (interchangeable servers over one shared store: health-checked, the
    /// least loaded one used). When absent, a step-server runs in this
    /// process (on --step-ip/--step-port) over the --data-dir store.
    #[arg(long, env = "STEP_BACKEND", help_heading = BACKEND)]
    pub backend: Option<String>,
    /// Address the embedded STEP server listens on (loopback unless opened
    /// up, as --bind).
    #[arg(long, env = "STEP_IP", default_value = "127.0.0.1", help_heading = EMBEDDED)]
    pub step_ip: String,
    /// Port of the embedded STEP server.
    #[arg(long, env = "STEP_PORT", default_value_t = step_core::DEFAULT_PORT, help_heading = EMBEDDED)]
    pub step_port: u16,
    /// PEM certificate chain: serve HTTPS instead of HTTP (re-read on SIGHUP).
    #[arg(long, env = "GATEWAY_TLS_CERT", requires = "tls_key", help_heading = HTTP_LISTEN)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert (re-read on SIGHUP).
    #[arg(long, env = "GATEWAY_TLS_KEY", requires = "tls_cert", help_heading = HTTP_LISTEN)]
    pub tls_key: Option<PathBuf>,
    #[command(flatten)]
    pub transfer: TransferArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    /// Storage and token flags of the embedded step-server.
    #[command(flatten)]
    pub embedded: ServiceArgs,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "GATEWAY_LOG", default_value = "info", help_heading = LOGGING)]
    pub log: String,
    /// Log line format: `text`, or `json` (one object per line, for log shippers).
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text,
          help_heading = LOGGING)]
    pub log_format: LogFormat,
    /// With no subcommand, serve. `user ...` manages the embedded server's
    /// accounts (the same store and commands as `step-server user`).
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
}

// Headings of `--help` for the gateway's own flags (the embedded server's
// bring theirs).
const HTTP_LISTEN: &str = "HTTP listening";
const BACKEND: &str = "STEP backend";
const EMBEDDED: &str = "Embedded STEP server (no --backend)";
const HTTP: &str = "HTTP requests";
const LOGGING: &str = step_server::config::LOGGING;

/// How the gateway talks to the STEP backend.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = BACKEND)]
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
    #[arg(long, env = "GATEWAY_BLOCK_SIZE", default_value = "512K", value_parser = parse_size)]
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
#[command(next_help_heading = HTTP)]
pub struct HttpArgs {
    /// Refuse requests without credentials (401): the same as
    /// `--anonymous none`.
    #[arg(long, env = "GATEWAY_REQUIRE_AUTH", default_value_t = false)]
    pub require_auth: bool,
    /// What requests without credentials may do, as the public identity:
    /// `none` (401), `read` (the read routes) or `write` (every route).
    /// Default `write`, allowed only while the gateway (and its embedded
    /// STEP port) listen on loopback; beyond, give it explicitly. With
    /// --backend the STEP server grants at most its own --anonymous.
    #[arg(long, env = "GATEWAY_ANONYMOUS", value_parser = step_server::config::anonymous_parser())]
    pub anonymous: Option<Anonymous>,
    /// Largest upload, a size such as 10G (0 = unlimited).
    #[arg(long, env = "GATEWAY_MAX_UPLOAD", default_value = "0", value_parser = parse_size)]
    pub max_upload: u64,
    /// Largest JSON request body (a size, e.g. 256K).
    #[arg(long, env = "GATEWAY_MAX_JSON", default_value = "256K", value_parser = parse_size_usize)]
    pub max_json_body: usize,
    /// Multipart files up to this size are held in memory; larger ones are
    /// spooled to a temp file (STEP needs the size before the first block).
    #[arg(long, env = "GATEWAY_SPOOL_THRESHOLD", default_value = "4M", value_parser = parse_size_usize)]
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
    #[arg(long, env = "GATEWAY_BODY_MIN_BYTES", default_value = "1K", value_parser = parse_size)]
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
    #[arg(long, env = "GATEWAY_MAX_BUFFERED_BYTES", default_value = "256M",
          value_parser = parse_size_usize)]
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

    /// Anonymous write reachable from other hosts must be asked for: the
    /// default `write` is refused at start on a non-loopback --bind (or, for
    /// the embedded server, --step-ip) unless --anonymous is given.
    pub fn check_exposure(&self) -> Result<(), String> {
        if self.http.anonymous.is_some() || self.http.anonymous_wanted() != Anonymous::Write {
            return Ok(());
        }
        let mut exposed = vec![("--bind", self.http_addr()?)];
        if self.backend.is_none() {
            exposed.push(("--step-ip", self.step_addr()?));
        }
        match exposed.iter().find(|(_, a)| !a.ip().is_loopback()) {
            None => Ok(()),
            Some((flag, addr)) => Err(format!(
                "refusing to let anyone on the network write without credentials: {flag} {} \
                 is not loopback and anonymous write is only the default. Say what you \
                 want: --anonymous write (GATEWAY_ANONYMOUS=write) to allow it knowingly, \
                 --anonymous read or none, or listen on 127.0.0.1",
                addr.ip()
            )),
        }
    }
}

impl HttpArgs {
    /// What anonymous callers are to get: `--anonymous` (default write),
    /// none with `--require-auth`.
    pub fn anonymous_wanted(&self) -> Anonymous {
        if self.require_auth {
            Anonymous::None
        } else {
            self.anonymous.unwrap_or(Anonymous::Write)
        }
    }

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
        assert_eq!(args.http.anonymous_wanted(), Anonymous::Write);
        assert!(args.http_addr().expect("addr").ip().is_loopback());
        assert!(args.step_addr().expect("addr").ip().is_loopback());
        assert_eq!(args.check_exposure(), Ok(()));
    }

    #[test]
    fn anonymous_write_beyond_loopback_must_be_asked_for() {
        let refused = |argv: &[&str]| {
            let args = GatewayArgs::try_parse_from(argv).expect("flags");
            args.check_exposure().expect_err("refused")
        };
        let err = refused(&["gateway", "--bind", "0.0.0.0"]);
        assert!(err.contains("--anonymous write"), "{err}");
        assert!(refused(&["gateway", "--step-ip", "0.0.0.0"]).contains("--step-ip"));
        for ok in [
            &["gateway", "--bind", "0.0.0.0", "--anonymous", "write"][..],
            &["gateway", "--bind", "0.0.0.0", "--anonymous", "read"],
            &["gateway", "--bind", "0.0.0.0", "--require-auth"],
            &["gateway", "--bind", "::1"],
            &[
                "gateway",
                "--bind",
                "0.0.0.0",
                "--backend",
                "s:1379",
                "--anonymous",
                "none",
            ],
            // With --backend there is no embedded STEP port to expose.
            &["gateway", "--step-ip", "0.0.0.0", "--backend", "s:1379"],
        ] {
            let args = GatewayArgs::try_parse_from(ok).expect("flags");
            assert_eq!(args.check_exposure(), Ok(()), "{ok:?}");
        }
    }
}
