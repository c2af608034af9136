//! Configuration: clap flags, each with an environment-variable fallback and a
//! default that lets the binary run with no flags at all. These structs only
//! parse; what they describe is built in [`crate::compose`].

use std::net::SocketAddr;
use std::path::PathBuf;

use step_core::access::Anonymous;

use crate::accounts::AuthMode;
use crate::store::s3::StorageChoice;

// Headings of `--help`, one per concern.
pub const STORAGE: &str = "Storage";
pub const TOKENS: &str = "Tokens";
pub const LIMITS: &str = "Limits";
pub const UPLOADS: &str = "Unfinished uploads";
pub const ACCOUNTS: &str = "Accounts and anonymous access";
pub const CONNECTIONS: &str = "Connections";
pub const LOGGING: &str = "Logging";

/// Why listening on `addr` failed, for the person who started the server:
/// an address in use names `flag`, the setting to change.
pub fn listen_error(what: &str, addr: SocketAddr, flag: &str, e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::AddrInUse {
        format!(
            "cannot listen {what} on {addr}: the address is in use (something else \
             listens there); stop it or choose another port with {flag}"
        )
    } else {
        format!("cannot listen {what} on {addr}: {e}")
    }
}

/// A byte count as every size flag takes it: a number, optionally with a
/// binary unit — `K`, `M`, `G`, `T` (1024-based; `KiB`, `MB`... read the
/// same, a trailing `B` alone means bytes) — e.g. `512M`, `1G`, `1048576`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_uppercase();
    let shift = match unit.trim_end_matches('B').trim_end_matches('I') {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => {
            return Err(format!(
                "{text:?}: not a size (e.g. 1048576, 512K, 64M, 1G, 1T)"
            ));
        }
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: not a size (e.g. 1048576, 512K, 64M, 1G, 1T)"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?}: too large"))
}

/// [`parse_size`] for a size held in a `usize`.
pub fn parse_size_usize(text: &str) -> Result<usize, String> {
    usize::try_from(parse_size(text)?).map_err(|_| format!("{text:?}: too large"))
}

/// Where the STEP server listens. `--ip`/`--port` are the reference's flags.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Listening")]
pub struct ListenArgs {
    /// Address to listen on (empty means all interfaces, as in the reference).
    #[arg(long, env = "STEP_IP", default_value = "0.0.0.0")]
    pub ip: String,
    /// TCP port for STEP.
    #[arg(long, env = "STEP_PORT", default_value_t = step_core::DEFAULT_PORT)]
    pub port: u16,
}

impl ListenArgs {
    pub fn addr(&self) -> Result<SocketAddr, String> {
        let ip = if self.ip.is_empty() {
            "0.0.0.0"
        } else {
            &self.ip
        };
        format!("{ip}:{}", self.port)
            .parse()
            .or_else(|_| format!("[{ip}]:{}", self.port).parse())
            .map_err(|_| format!("invalid --ip {ip:?}"))
    }
}

/// Storage, tokens and limits: everything but the listening address, so an
/// embedding program (the gateway) can reuse these flags as they are.
/// `Debug` is written by hand so that printing the configuration can never
/// print the token secret.
#[derive(clap::Args, Clone)]
pub struct ServiceArgs {
    /// Directory holding records, files and unfinished uploads.
    #[arg(
        long,
        env = "STEP_DATA_DIR",
        default_value = "step-data",
        global = true,
        help_heading = STORAGE
    )]
    pub data_dir: PathBuf,
    /// Secret that signs tokens. When neither this nor --token-secret-file is
    /// given, a random one is made at start (tokens then die with the process).
    #[arg(long, env = "STEP_TOKEN_SECRET", hide_env_values = true, help_heading = TOKENS)]
    pub token_secret: Option<String>,
    /// File whose contents (trimmed) are the token secret.
    #[arg(long, env = "STEP_TOKEN_SECRET_FILE", help_heading = TOKENS)]
    pub token_secret_file: Option<PathBuf>,
    /// Token refusals answered per second, server-wide (beyond a one-second
    /// burst, further refusals wait): bounds online token guessing.
    #[arg(long, env = "STEP_TOKEN_FAILURES_PER_SEC", default_value_t = 1000, help_heading = TOKENS)]
    pub token_failures_per_sec: u32,
    /// Token lifetime in seconds: the least a freshly minted token is valid
    /// for (it may live up to 600 s longer). From 1 to 5913600 (about 68 days);
    /// other values are refused at start-up.
    #[arg(long, env = "STEP_TOKEN_TTL", default_value_t = 86_400, help_heading = TOKENS,
          value_parser = clap::value_parser!(u64).range(1..=step_core::token::MAX_TTL_SECS))]
    pub token_ttl: u64,
    /// Largest file a SAVE may announce (a size: 1048576, 512K, 64M, 1G, 1T).
    #[arg(long, env = "STEP_MAX_FILE_SIZE", default_value = "1T", value_parser = parse_size,
          help_heading = LIMITS)]
    pub max_file_size: u64,
    /// Largest block (binary part) accepted or planned (a size, e.g. 8M).
    #[arg(long, env = "STEP_MAX_BLOCK_SIZE", default_value = "8M", value_parser = parse_size,
          help_heading = LIMITS)]
    pub max_block_size: u64,
    /// Bytes of request binary parts (blocks) buffered at once, server-wide.
    /// A connection waits for its share before it reads a block, so honest
    /// clients get back-pressure, never failure. At least --max-block-size.
    #[arg(long, env = "STEP_FRAME_BUDGET", default_value = "256M", value_parser = parse_size,
          help_heading = LIMITS)]
    pub frame_budget: u64,
    /// Bytes of long JSON parts (above 16 KiB) buffered at once,
    /// server-wide; a connection waits for its share before reading one.
    /// At least --max-json.
    #[arg(long, env = "STEP_JSON_BUDGET", default_value = "64M", value_parser = parse_size,
          help_heading = LIMITS)]
    pub json_budget: u64,
    /// Largest JSON part accepted (a size, e.g. 1M).
    #[arg(long, env = "STEP_MAX_JSON", default_value = "1M", value_parser = parse_size_usize,
          help_heading = LIMITS)]
    pub max_json: usize,
    /// Longest key accepted, in bytes.
    #[arg(long, env = "STEP_MAX_KEY_LEN", default_value_t = 1024, help_heading = LIMITS)]
    pub max_key_len: usize,
    /// Most connections served at once; further clients wait in the backlog.
    #[arg(long, env = "STEP_MAX_CONNECTIONS", default_value_t = 16384, help_heading = CONNECTIONS)]
    pub max_connections: usize,
    /// Seconds a connection may go without a complete request, or without
    /// taking a response it is sent.
    #[arg(long, env = "STEP_IDLE_TIMEOUT", default_value_t = 300, help_heading = CONNECTIONS)]
    pub idle_timeout: u64,
    // --- Unfinished uploads (store): expiry and per-user caps. ---
    /// Seconds an unfinished upload may go without a SAVE or block before
    /// it is removed (checked periodically and at start).
    #[arg(long, env = "STEP_UPLOAD_EXPIRY", default_value_t = 86_400, help_heading = UPLOADS)]
    pub upload_expiry: u64,
    /// Bytes one user's unfinished uploads may plan in total; a SAVE beyond
    /// is refused (406, reason `quota`).
    #[arg(long, env = "STEP_MAX_UNFINISHED_BYTES_PER_USER", default_value = "64G",
          value_parser = parse_size, help_heading = UPLOADS)]
    pub max_unfinished_bytes_per_user: u64,
    /// Unfinished uploads one user may have at once; a SAVE beyond is
    /// refused (406, reason `quota`).
    #[arg(
        long,
        env = "STEP_MAX_UNFINISHED_UPLOADS_PER_USER",
        default_value_t = 1000
    ,
        help_heading = UPLOADS
    )]
    pub max_unfinished_uploads_per_user: u64,
    /// Where records, files and unfinished uploads live: `disk` (under
    /// --data-dir) or `s3://BUCKET[/PREFIX]`, with the endpoint, credentials
    /// and region from the standard AWS variables (AWS_ENDPOINT_URL,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP).
    #[arg(long, env = "STEP_STORAGE", default_value = "disk", help_heading = STORAGE,
          value_parser = StorageChoice::parse, global = true)]
    pub storage: StorageChoice,
    /// Coordination engine shared by several step-servers on one
    /// `--storage s3://` bucket and prefix: `redis://[user:password@]host[:port][/db]`
    /// (Redis 7; keep AOF on with `appendfsync always`, see the README's
    /// "Cluster"). Without it a server assumes it is alone on its bucket.
    #[arg(long, env = "STEP_COORD", global = true, hide_env_values = true, help_heading = STORAGE)]
    pub coord: Option<String>,
    // --- Accounts (issue 15); see `crate::accounts`. ---
    /// How LOGIN checks passwords: `open` (password = md5(username), the
    /// reference's rule: course clients work, anyone can log in as anyone)
    /// or `accounts` (argon2id hashes kept in the storage, managed with
    /// `step-server user ...`).
    #[arg(long, env = "STEP_AUTH", value_enum, default_value_t = AuthMode::Open, global = true,
          help_heading = ACCOUNTS)]
    pub auth: AuthMode,
    /// Accounts imported at start (created, or their password replaced),
    /// one `NAME:HASH` a line, HASH an argon2 PHC string as `step-server
    /// user hash` prints it; blank lines and `#` comments skipped. Meant for
    /// a Docker secret. Accounts not in the file are left as they are.
    #[arg(long, env = "STEP_ACCOUNTS_FILE", help_heading = ACCOUNTS)]
    pub accounts_file: Option<PathBuf>,
    /// Password LOGINs per minute from one source address (an IPv6 /64),
    /// in a burst of as many (accounts mode); beyond, refused at once with
    /// "too many attempts, retry in N s", before any password is checked.
    #[arg(long, env = "STEP_LOGIN_ATTEMPTS_PER_SOURCE", default_value_t = 30, help_heading = ACCOUNTS)]
    pub login_attempts_per_source: u32,
    /// Password LOGINs per minute for one user name, in a burst of as many
    /// (accounts mode); beyond, refused at once as above.
    #[arg(long, env = "STEP_LOGIN_ATTEMPTS_PER_USER", default_value_t = 30, help_heading = ACCOUNTS)]
    pub login_attempts_per_user: u32,
    /// Password checks that may wait beyond those running (half the cores);
    /// beyond, a LOGIN is refused at once as busy ("retry in 1 s").
    #[arg(long, env = "STEP_LOGIN_QUEUE", default_value_t = 32, help_heading = ACCOUNTS)]
    pub login_queue: usize,
    /// Shortest password `user add` and `user passwd` accept, in characters.
    #[arg(long, env = "STEP_MIN_PASSWORD_LEN", default_value_t = 8, global = true,
          help_heading = ACCOUNTS)]
    pub min_password_len: usize,
    /// The public user: whose files anonymous callers read (and, with
    /// anonymous write, write). `anonymous` (the default) is reserved: no
    /// password logs in as it. Another name must be an account (accounts
    /// mode), which publishes there with its own password.
    #[arg(long, env = "STEP_PUBLIC_USER", default_value = crate::auth::PUBLIC_NAME, help_heading = ACCOUNTS,
          alias = "default-user")]
    pub public_user: String,
    /// Seconds a new connection has to send its first request's header
    /// and JSON part; then it is closed (silent sockets free their slot).
    #[arg(long, env = "STEP_FIRST_REQUEST_TIMEOUT", default_value_t = 10, help_heading = CONNECTIONS)]
    pub first_request_timeout: u64,
    /// Connections one source address (an IPv6 /64) may hold at once;
    /// further ones from it are closed at accept.
    #[arg(long, env = "STEP_MAX_CONNECTIONS_PER_SOURCE", default_value_t = 128, help_heading = CONNECTIONS)]
    pub max_connections_per_source: usize,
    /// Seconds a replaced version of a file stays readable for downloads
    /// that began before the replace (also removed at the key's next
    /// replace or DELETE).
    #[arg(long, env = "STEP_REPLACED_GRACE", default_value_t = 900, help_heading = UPLOADS)]
    pub replaced_grace: u64,
    /// Extensions to turn off, comma-separated (`list`, `replace`): the
    /// server then neither announces nor serves them, answering as the
    /// reference does (to stand in for a server without them).
    #[arg(
        long,
        env = "STEP_DISABLE_EXTENSIONS",
        value_delimiter = ',',
        value_enum
    ,
        help_heading = LIMITS
    )]
    pub disable_extensions: Vec<Extension>,
}

/// An extension `--disable-extensions` can turn off.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    List,
    Replace,
}

impl std::fmt::Debug for ServiceArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceArgs")
            .field("data_dir", &self.data_dir)
            .field(
                "token_secret",
                &self.token_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("token_secret_file", &self.token_secret_file)
            .field("token_ttl", &self.token_ttl)
            .field("token_failures_per_sec", &self.token_failures_per_sec)
            .field("max_file_size", &self.max_file_size)
            .field("max_block_size", &self.max_block_size)
            .field("frame_budget", &self.frame_budget)
            .field("json_budget", &self.json_budget)
            .field("max_json", &self.max_json)
            .field("max_key_len", &self.max_key_len)
            .field("max_connections", &self.max_connections)
            .field("idle_timeout", &self.idle_timeout)
            .field("upload_expiry", &self.upload_expiry)
            .field(
                "max_unfinished_bytes_per_user",
                &self.max_unfinished_bytes_per_user,
            )
            .field(
                "max_unfinished_uploads_per_user",
                &self.max_unfinished_uploads_per_user,
            )
            .field("storage", &self.storage)
            // The URL may carry a password.
            .field("coord", &self.coord.as_ref().map(|_| "<set>"))
            .field("auth", &self.auth)
            .field("accounts_file", &self.accounts_file)
            .field("login_attempts_per_source", &self.login_attempts_per_source)
            .field("login_attempts_per_user", &self.login_attempts_per_user)
            .field("login_queue", &self.login_queue)
            .field("min_password_len", &self.min_password_len)
            .field("public_user", &self.public_user)
            .field("first_request_timeout", &self.first_request_timeout)
            .field(
                "max_connections_per_source",
                &self.max_connections_per_source,
            )
            .field("replaced_grace", &self.replaced_grace)
            .field("disable_extensions", &self.disable_extensions)
            .finish()
    }
}

/// STEP over TLS on a second port (the plaintext port stays as it is).
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "TLS")]
pub struct TlsListenArgs {
    /// Port for STEP over TLS (on --ip); off unless given. Needs --tls-cert and --tls-key.
    #[arg(long, env = "STEP_TLS_PORT", requires_all = ["tls_cert", "tls_key"])]
    pub tls_port: Option<u16>,
    /// PEM certificate chain for --tls-port (re-read on SIGHUP).
    #[arg(long, env = "STEP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert (re-read on SIGHUP).
    #[arg(long, env = "STEP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The whole `step-server` command line.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "step-server", version, about = "Native STEP v1.1 server")]
pub struct ServerArgs {
    #[command(flatten)]
    pub listen: ListenArgs,
    #[command(flatten)]
    pub tls: TlsListenArgs,
    #[command(flatten)]
    pub service: ServiceArgs,
    /// What callers without a password may do, over --public-user's files:
    /// `none`, `read` (GET, DOWNLOAD, LIST), `write` (also SAVE, UPLOAD,
    /// DELETE). They obtain the public identity's token with a LOGIN
    /// carrying `anonymous` (a gateway in front does that for them).
    #[arg(long, env = "STEP_ANONYMOUS", default_value = "none", help_heading = ACCOUNTS,
          value_parser = anonymous_parser())]
    pub anonymous: Anonymous,
    /// Port (on --ip) of a small HTTP endpoint for load balancers and
    /// orchestrators: `GET /healthz` (the process answers) and `GET /readyz`
    /// (200 only while the storage — and `--coord`'s engine — answer within
    /// 2 s; 503 with a JSON error otherwise). Off unless given.
    #[arg(long, env = "STEP_HEALTH_PORT", help_heading = "Listening")]
    pub health_port: Option<u16>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `step_server=debug`.
    #[arg(long, env = "STEP_LOG", default_value = "info", help_heading = LOGGING)]
    pub log: String,
    /// Log line format: `text`, or `json` (one object per line, for log shippers).
    #[arg(long, env = "STEP_LOG_FORMAT", value_enum, default_value_t = crate::logging::LogFormat::Text,
          help_heading = LOGGING)]
    pub log_format: crate::logging::LogFormat,
    /// With no subcommand, serve.
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum ServerCommand {
    /// Manage the accounts `--auth accounts` checks passwords against, in
    /// the storage --data-dir / --storage name.
    #[command(subcommand)]
    User(UserCommand),
}

/// `user add|remove|list|passwd|hash` (run by [`crate::users::run`]).
#[derive(clap::Subcommand, Debug, Clone)]
pub enum UserCommand {
    /// Add an account; its password from a prompt, or a line on stdin.
    Add { name: String },
    /// Remove an account (its files stay; its tokens end within seconds).
    Remove { name: String },
    /// List the accounts' names, one a line.
    List,
    /// Change an account's password (prompt, or a line on stdin); the
    /// old password and every token minted before end within seconds.
    Passwd { name: String },
    /// Print the argon2id hash of a password (prompt or stdin), for a line
    /// `NAME:HASH` of --accounts-file; stores nothing.
    Hash,
}

/// A clap parser for `--anonymous none|read|write`, listing the values.
pub fn anonymous_parser() -> impl clap::builder::TypedValueParser<Value = Anonymous> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["none", "read", "write"]).map(|v| match v.as_str() {
        "read" => Anonymous::Read,
        "write" => Anonymous::Write,
        _ => Anonymous::None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn the_flag_and_its_variable_reach_the_service_args() {
        let args = ServerArgs::try_parse_from(["step-server"]).expect("no flags needed");
        assert_eq!(
            args.service.storage,
            StorageChoice::Disk,
            "local disk by default"
        );
        let args = ServerArgs::try_parse_from(["step-server", "--storage", "s3://step/p"])
            .expect("parses");
        assert_eq!(
            args.service.storage,
            StorageChoice::S3 {
                bucket: "step".into(),
                prefix: object_store::path::Path::from("p"),
            }
        );
        let err = ServerArgs::try_parse_from(["step-server", "--storage", "s3://Step"])
            .expect_err("refused")
            .to_string();
        assert!(
            err.contains("--storage") && err.contains("lowercase"),
            "{err}"
        );
    }

    #[test]
    fn flags_are_consistent_and_defaults_run() {
        ServerArgs::command().debug_assert();
        let args = ServerArgs::try_parse_from(["step-server"]).expect("no flags needed");
        assert_eq!(args.listen.addr().expect("addr").port(), 1379);
        let reference_style =
            ServerArgs::try_parse_from(["step-server", "--ip", "", "--port", "1400"])
                .expect("reference flags");
        assert_eq!(
            reference_style.listen.addr().expect("addr").to_string(),
            "0.0.0.0:1400"
        );
    }

    #[test]
    fn sizes_take_units_and_defaults_match_the_codec() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1gib"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("10B"), Ok(10));
        assert!(parse_size("1X").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999T").is_err());
        let args = ServerArgs::try_parse_from(["step-server"]).expect("defaults");
        assert_eq!(args.service.max_file_size, 1 << 40);
        assert_eq!(
            args.service.max_block_size,
            step_core::codec::DEFAULT_MAX_BINARY as u64
        );
        assert_eq!(args.service.max_json, step_core::codec::DEFAULT_MAX_JSON);
        assert_eq!(args.service.max_unfinished_bytes_per_user, 64 << 30);
        let one_g = ServerArgs::try_parse_from(["step-server", "--max-file-size", "1G"])
            .expect("a human size");
        assert_eq!(one_g.service.max_file_size, 1 << 30);
    }

    #[test]
    fn inexpressible_token_ttls_are_refused_at_start_up() {
        for bad in ["0", "5913601", "99999999999"] {
            let err = ServerArgs::try_parse_from(["step-server", "--token-ttl", bad])
                .expect_err("refused");
            assert!(err.to_string().contains("--token-ttl"), "{err}");
        }
        for good in ["1", "60", "5913600"] {
            let args =
                ServerArgs::try_parse_from(["step-server", "--token-ttl", good]).expect("accepted");
            assert_eq!(args.service.token_ttl.to_string(), good);
        }
    }
}
