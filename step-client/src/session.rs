//! A logged-in session: the first connection, what the server announced, and
//! how hard a transfer may push it.

use std::future::Future;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use step_core::client::Capabilities;
use step_core::conn::tls::{self, TlsClient};
use step_core::digest::password_for;
use step_core::plan::total_blocks;
use step_core::{ClientError, DEFAULT_BLOCK_SIZE, StepClient};

use tokio_util::sync::CancellationToken;

use crate::args::{ConnArgs, TuneArgs};
use crate::error::{CliError, Subject, io_reason};
use crate::progress::human_bytes;

/// Requests in flight per connection when the server pipelines.
pub const DEFAULT_WINDOW: usize = 16;
/// Connections for one transfer unless --connections says otherwise: one
/// connection with a window of 1 MiB blocks fills a LAN and most WAN paths,
/// and its blocks arrive in order, so neither end has to hold early blocks
/// back or read them again to hash them (measured: a 1 GiB download costs
/// about a quarter less CPU over one connection than over four).
pub const DEFAULT_CONNECTIONS: usize = 1;
/// Block size asked for when the server offers larger blocks.
pub const PREFERRED_BLOCK_SIZE: u64 = 1 << 20;
const MAX_WINDOW: usize = 1024;
const MAX_CONNECTIONS: usize = 64;

#[derive(Debug)]
pub struct Session {
    pub addr: String,
    host: String,
    port: u16,
    pub user: String,
    pub client: StepClient,
    pub token: String,
    pub caps: Capabilities,
    /// How every wait of this session is bounded (--timeout, Ctrl-C).
    pub waits: Waits,
    /// Set with --tls: every connection of the session speaks TLS.
    tls: Option<TlsClient>,
}

/// How long any wait on the server may last, and the Ctrl-C that ends
/// every wait at once (so the command can say what it kept).
#[derive(Debug, Clone)]
pub struct Waits {
    pub addr: String,
    pub timeout: Duration,
    pub cancel: CancellationToken,
}

impl Session {
    /// Connect and log in with the id as username and --password /
    /// STEP_PASSWORD. Without one, md5(id) first (the open servers' rule, so
    /// course-style servers need nothing); if that is refused and stdin is a
    /// terminal — the server has accounts — the password is asked for and
    /// the login tried once more on the same connection.
    pub async fn open(conn: &ConnArgs, cancel: &CancellationToken) -> Result<Session, CliError> {
        let user = conn
            .id
            .clone()
            .ok_or_else(|| CliError::Usage("no user id: pass -id ID (or set STEP_ID)".into()))?;
        let password = conn.password.clone().unwrap_or_else(|| password_for(&user));
        let timeout = Duration::from_secs(conn.timeout.max(1));
        let addr = if conn.server_ip.contains(':') {
            format!("[{}]:{}", conn.server_ip, conn.port)
        } else {
            format!("{}:{}", conn.server_ip, conn.port)
        };
        let waits = Waits {
            addr: addr.clone(),
            timeout,
            cancel: cancel.clone(),
        };
        let tls = tls_client(conn)?;
        let plain = tls.is_none();
        let client = tokio::select! {
            () = cancel.cancelled() => return Err(CliError::Interrupted),
            c = connect(&conn.server_ip, conn.port, &addr, timeout, tls.as_ref()) => c?,
        };
        let mut session = Session {
            client,
            addr,
            host: conn.server_ip.clone(),
            port: conn.port,
            user,
            token: String::new(),
            caps: Capabilities::default(),
            waits: waits.clone(),
            tls,
        };
        let subject = Subject::Login(&session.user);
        let first = waits
            .bounded(subject, session.client.login(&session.user, &password))
            .await;
        let first = match first {
            // What a TLS port does with plain STEP: it closes without a word.
            Err(CliError::Connection { .. }) if plain => Err(CliError::ClosedAtLogin {
                addr: session.addr.clone(),
            }),
            other => other,
        };
        let token = match first {
            Err(CliError::WrongPassword { .. })
                if conn.password.is_none() && std::io::stdin().is_terminal() =>
            {
                let asked = rpassword::prompt_password(format!("Password for {}: ", session.user))
                    .map_err(|e| CliError::Usage(format!("cannot read the password: {e}")))?;
                waits
                    .bounded(subject, session.client.login(&session.user, &asked))
                    .await?
            }
            other => other?,
        };
        session.caps = session.client.capabilities();
        session.token = token;
        if conn.verbose {
            eprintln!("Token: {}", session.token);
            eprintln!("Server {} offers: {}", session.addr, offers(session.caps));
        }
        Ok(session)
    }

    /// `n` more connections sharing this session's token (tokens are not
    /// tied to a connection). A connection that fails to open is skipped:
    /// the transfer then runs on fewer, not at all is worse.
    pub async fn extra_connections(&self, n: usize) -> Vec<StepClient> {
        let opened = futures::future::join_all((0..n).map(|_| {
            connect(
                &self.host,
                self.port,
                &self.addr,
                self.waits.timeout,
                self.tls.as_ref(),
            )
        }))
        .await;
        opened
            .into_iter()
            .filter_map(Result::ok)
            .map(|mut c| {
                c.set_token(self.token.clone());
                c.set_capabilities(self.caps);
                c
            })
            .collect()
    }
}

/// What --tls and --ca-cert ask for: the CA file's certificates (else the
/// system's roots) and the server's name as typed in --server-ip.
fn tls_client(conn: &ConnArgs) -> Result<Option<TlsClient>, CliError> {
    if !conn.tls {
        if conn.ca_cert.is_some() {
            return Err(CliError::Usage("--ca-cert needs --tls".into()));
        }
        return Ok(None);
    }
    let pem = match &conn.ca_cert {
        Some(path) => Some(std::fs::read(path).map_err(|e| CliError::FileUnreadable {
            path: path.clone(),
            reason: io_reason(&e),
        })?),
        None => None,
    };
    let config = tls::client_config(pem.as_deref()).map_err(CliError::Usage)?;
    let server_name = tls::server_name(&conn.server_ip).map_err(CliError::Usage)?;
    Ok(Some(TlsClient {
        config,
        server_name,
    }))
}

/// What the server announced, in a few words (for --verbose).
fn offers(caps: Capabilities) -> String {
    let mut out: Vec<String> = Vec::new();
    if caps.pipelining {
        out.push("pipelining".into());
    }
    if caps.resume {
        out.push("resume".into());
    }
    if caps.max_block_size > 0 {
        out.push(format!("blocks up to {}", human_bytes(caps.max_block_size)));
    }
    if caps.list {
        out.push("listing".into());
    }
    if caps.replace {
        out.push("replace".into());
    }
    if out.is_empty() {
        "no extensions (a reference server: one request at a time, 20 KiB blocks)".into()
    } else {
        out.join(", ")
    }
}

impl Waits {
    fn timed_out(&self, after: Duration) -> CliError {
        CliError::Timeout {
            addr: self.addr.clone(),
            secs: after.as_secs(),
        }
    }

    /// One request, bounded by --timeout and Ctrl-C, its failure put in
    /// the user's terms.
    pub async fn bounded<T>(
        &self,
        subject: Subject<'_>,
        request: impl Future<Output = Result<T, ClientError>>,
    ) -> Result<T, CliError> {
        tokio::select! {
            () = self.cancel.cancelled() => Err(CliError::Interrupted),
            answer = tokio::time::timeout(self.timeout, request) => match answer {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(CliError::from_client(e, &self.addr, subject)),
                Err(_) => Err(self.timed_out(self.timeout)),
            },
        }
    }

    /// Run a transfer until it ends, Ctrl-C, or `activity()` stops moving
    /// for `stall`: a whole transfer may take hours, but a silent server
    /// should not hang us.
    pub async fn watched<T>(
        &self,
        stall: Duration,
        activity: impl Fn() -> u64,
        transfer: impl Future<Output = T>,
    ) -> Result<T, CliError> {
        let mut transfer = std::pin::pin!(transfer);
        let mut seen = activity();
        loop {
            tokio::select! {
                out = &mut transfer => return Ok(out),
                () = self.cancel.cancelled() => return Err(CliError::Interrupted),
                () = tokio::time::sleep(stall) => {
                    let now = activity();
                    if now == seen {
                        return Err(self.timed_out(stall));
                    }
                    seen = now;
                }
            }
        }
    }
}

/// Run `f`, which blocks the thread, from code a runtime polls: the
/// runtime's other tasks move to another thread meanwhile where they can.
pub fn block_here<R>(f: impl FnOnce() -> R) -> R {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Keeps a transfer under --limit-rate: how long to wait before the next
/// `len` bytes may go, so that the bytes moved so far never run ahead of
/// the rate (the first block goes at once).
#[derive(Debug)]
pub struct Pace {
    rate: u64,
    started: Instant,
    moved: u64,
}

impl Pace {
    pub fn new(rate: u64) -> Pace {
        Pace {
            rate: rate.max(1),
            started: Instant::now(),
            moved: 0,
        }
    }

    pub fn wait_before(&mut self, len: u64) -> Option<Duration> {
        let elapsed = self.started.elapsed();
        self.wait_at(len, elapsed)
    }

    fn wait_at(&mut self, len: u64, elapsed: Duration) -> Option<Duration> {
        let due = Duration::from_secs_f64(self.moved as f64 / self.rate as f64);
        self.moved += len;
        due.checked_sub(elapsed).filter(|d| !d.is_zero())
    }
}

async fn connect(
    host: &str,
    port: u16,
    addr: &str,
    timeout: Duration,
    tls: Option<&TlsClient>,
) -> Result<StepClient, CliError> {
    let connect = async {
        match tls {
            Some(tls) => StepClient::connect_tls((host, port), tls).await,
            None => StepClient::connect((host, port)).await,
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(ClientError::Io(e))) => Err(CliError::Unreachable {
            addr: addr.to_owned(),
            reason: io_reason(&e),
        }),
        Ok(Err(e)) => Err(CliError::Unreachable {
            addr: addr.to_owned(),
            reason: e.to_string(),
        }),
        Err(_) => Err(CliError::Timeout {
            addr: addr.to_owned(),
            secs: timeout.as_secs(),
        }),
    }
}

/// How a transfer uses the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    pub window: usize,
    /// Block size to ask for; `None` leaves the server's default (20480),
    /// the only size a server announcing nothing understands.
    pub block_size: Option<u64>,
}

impl Tuning {
    pub fn new(caps: Capabilities, tune: &TuneArgs) -> Tuning {
        // A server that does not announce pipelining may be the reference,
        // which desyncs when a frame of a pipeline arrives split.
        let window = if caps.pipelining {
            tune.window.unwrap_or(DEFAULT_WINDOW).clamp(1, MAX_WINDOW)
        } else {
            1
        };
        let block_size = (caps.max_block_size >= DEFAULT_BLOCK_SIZE).then(|| {
            tune.block_size
                .unwrap_or(PREFERRED_BLOCK_SIZE)
                .clamp(DEFAULT_BLOCK_SIZE, caps.max_block_size)
        });
        Tuning { window, block_size }
    }

    /// Connections for a file of `size` bytes in blocks of `block_size`.
    pub fn connections(caps: Capabilities, tune: &TuneArgs, size: u64, block_size: u64) -> usize {
        // The reference server races on its log file when two connections
        // finish an upload at once, so a server announcing nothing gets one.
        if !caps.pipelining {
            return 1;
        }
        let wanted = tune.connections.unwrap_or(DEFAULT_CONNECTIONS);
        let blocks = usize::try_from(total_blocks(size, block_size)).unwrap_or(usize::MAX);
        wanted.clamp(1, MAX_CONNECTIONS).min(blocks.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: Capabilities = Capabilities {
        pipelining: true,
        resume: true,
        max_block_size: 8 << 20,
        token_ttl: None,
        max_file_size: None,
        upload_expiry: None,
        list: true,
        replace: true,
        upload_status: true,
        upload_md5: true,
        anonymous: None,
    };

    #[test]
    fn reference_server_gets_stop_and_wait() {
        let tune = TuneArgs {
            window: Some(32),
            connections: Some(8),
            block_size: Some(1 << 20),
            limit_rate: None,
        };
        let caps = Capabilities::default();
        let t = Tuning::new(caps, &tune);
        assert_eq!(
            t,
            Tuning {
                window: 1,
                block_size: None
            }
        );
        assert_eq!(Tuning::connections(caps, &tune, 1 << 30, 20480), 1);
    }

    #[test]
    fn our_server_gets_the_fast_defaults() {
        let tune = TuneArgs::default();
        let t = Tuning::new(OURS, &tune);
        assert_eq!(t.window, DEFAULT_WINDOW);
        assert_eq!(t.block_size, Some(PREFERRED_BLOCK_SIZE));
        assert_eq!(Tuning::connections(OURS, &tune, 1 << 30, 1 << 20), 1);
        let spread = TuneArgs {
            connections: Some(4),
            ..TuneArgs::default()
        };
        assert_eq!(Tuning::connections(OURS, &spread, 100 << 20, 1 << 20), 4);
        assert_eq!(Tuning::connections(OURS, &spread, 2 << 20, 1 << 20), 2);
    }

    #[test]
    fn pace_holds_bytes_to_the_rate() {
        let mut pace = Pace::new(1 << 20);
        let ms = Duration::from_millis;
        assert_eq!(
            pace.wait_at(1 << 20, ms(0)),
            None,
            "the first block goes at once"
        );
        assert_eq!(pace.wait_at(1 << 20, ms(100)), Some(ms(900)));
        assert_eq!(
            pace.wait_at(1 << 19, ms(2500)),
            None,
            "behind schedule: no wait"
        );
        assert_eq!(pace.wait_at(1, ms(2500)), None);
    }

    #[test]
    fn flags_are_clamped_to_what_the_server_offers() {
        let small = Capabilities {
            max_block_size: 65536,
            ..OURS
        };
        let tune = TuneArgs {
            window: Some(0),
            connections: Some(10),
            block_size: Some(1 << 30),
            limit_rate: None,
        };
        let t = Tuning::new(small, &tune);
        assert_eq!(t.window, 1);
        assert_eq!(t.block_size, Some(65536));
        // Never more connections than blocks.
        assert_eq!(Tuning::connections(small, &tune, 3 * 65536, 65536), 3);
        let tiny = TuneArgs {
            block_size: Some(1),
            ..TuneArgs::default()
        };
        assert_eq!(
            Tuning::new(OURS, &tiny).block_size,
            Some(DEFAULT_BLOCK_SIZE)
        );
    }
}
