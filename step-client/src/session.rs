//! A logged-in session: the first connection, what the server announced, and
//! how hard a transfer may push it.

use std::future::Future;
use std::io::IsTerminal;
use std::time::Duration;

use step_core::client::Capabilities;
use step_core::conn::tls::{self, TlsClient};
use step_core::digest::password_for;
use step_core::plan::total_blocks;
use step_core::{ClientError, DEFAULT_BLOCK_SIZE, StepClient};

use crate::args::{ConnArgs, TuneArgs};
use crate::error::{CliError, Subject, io_reason};

/// Requests in flight per connection when the server pipelines.
pub const DEFAULT_WINDOW: usize = 16;
/// Connections used for files above [`SPREAD_THRESHOLD`].
pub const DEFAULT_CONNECTIONS: usize = 4;
/// Smaller files gain nothing from extra connections (setup costs more).
pub const SPREAD_THRESHOLD: u64 = 8 << 20;
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
    pub timeout: Duration,
    /// Set with --tls: every connection of the session speaks TLS.
    tls: Option<TlsClient>,
}

impl Session {
    /// Connect and log in with the id as username and --password /
    /// STEP_PASSWORD. Without one, md5(id) first (the open servers' rule, so
    /// course-style servers need nothing); if that is refused and stdin is a
    /// terminal — the server has accounts — the password is asked for and
    /// the login tried once more on the same connection.
    pub async fn open(conn: &ConnArgs) -> Result<Session, CliError> {
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
        let tls = tls_client(conn)?;
        let mut session = Session {
            client: connect(&conn.server_ip, conn.port, &addr, timeout, tls.as_ref()).await?,
            addr,
            host: conn.server_ip.clone(),
            port: conn.port,
            user,
            token: String::new(),
            caps: Capabilities::default(),
            timeout,
            tls,
        };
        let first = bounded(
            &session.addr,
            timeout,
            Subject::Login(&session.user),
            session.client.login(&session.user, &password),
        )
        .await;
        let token = match first {
            Err(CliError::WrongPassword { .. })
                if conn.password.is_none() && std::io::stdin().is_terminal() =>
            {
                let asked = rpassword::prompt_password(format!("Password for {}: ", session.user))
                    .map_err(|e| CliError::Usage(format!("cannot read the password: {e}")))?;
                bounded(
                    &session.addr,
                    timeout,
                    Subject::Login(&session.user),
                    session.client.login(&session.user, &asked),
                )
                .await?
            }
            other => other?,
        };
        session.caps = session.client.capabilities();
        session.token = token;
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
                self.timeout,
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

/// One request, bounded by --timeout, its failure put in the user's terms.
pub async fn bounded<T>(
    addr: &str,
    timeout: Duration,
    subject: Subject<'_>,
    request: impl Future<Output = Result<T, ClientError>>,
) -> Result<T, CliError> {
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(CliError::from_client(e, addr, subject)),
        Err(_) => Err(CliError::Timeout {
            addr: addr.to_owned(),
            secs: timeout.as_secs(),
        }),
    }
}

/// Run a transfer, failing once `activity()` stops moving for `timeout`: a
/// whole transfer may take hours, but a silent server should not hang us.
pub async fn watched<T>(
    addr: &str,
    timeout: Duration,
    activity: impl Fn() -> u64,
    transfer: impl Future<Output = T>,
) -> Result<T, CliError> {
    let mut transfer = std::pin::pin!(transfer);
    let mut seen = activity();
    loop {
        tokio::select! {
            out = &mut transfer => return Ok(out),
            () = tokio::time::sleep(timeout) => {
                let now = activity();
                if now == seen {
                    return Err(CliError::Timeout { addr: addr.to_owned(), secs: timeout.as_secs() });
                }
                seen = now;
            }
        }
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
        let wanted = tune.connections.unwrap_or(if size > SPREAD_THRESHOLD {
            DEFAULT_CONNECTIONS
        } else {
            1
        });
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
        assert_eq!(Tuning::connections(OURS, &tune, 100 << 20, 1 << 20), 4);
        assert_eq!(Tuning::connections(OURS, &tune, 1 << 20, 1 << 20), 1);
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
