use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgAction, CommandFactory, FromArgMatches};
use gateway::config::GatewayArgs;
use gateway::metrics::Metrics;
use gateway::{AppState, backend::Backend};
use step_core::conn::tls::{self, TlsClient};
use step_server::compose::Composer;
use step_server::config::{ServerCommand, listen_error};
use tokio_util::sync::CancellationToken;
use tracing::info;

const HEALTH_CHECK: &str = "health-check";

#[tokio::main]
async fn main() -> ExitCode {
    let matches = GatewayArgs::command()
        .arg(
            Arg::new(HEALTH_CHECK)
                .long(HEALTH_CHECK)
                .action(ArgAction::SetTrue)
                .help(
                    "Probe the gateway these flags describe (--bind/--port; all interfaces means \
                     loopback) instead of serving: GET /readyz must answer 200. Exits 0 if so, \
                     1 otherwise (for container health checks)",
                ),
        )
        .get_matches();
    let args = GatewayArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if matches.get_flag(HEALTH_CHECK) {
        return health_check(&args).await;
    }
    if let Some(ServerCommand::User(cmd)) = &args.command {
        // The embedded server's accounts: `step-server user`'s commands,
        // over the store the same flags name.
        let open = || Composer::new(&args.embedded).open_accounts();
        return match step_server::users::run(cmd, &args.embedded, open).await {
            Ok(out) => {
                print!("{out}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("gateway user: {e}");
                ExitCode::FAILURE
            }
        };
    }
    step_server::logging::init(&args.log, args.log_format);
    step_server::raise_fd_limit();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        // Said once, on stderr: the log may not be set up to show it, and
        // saying it twice on a terminal reads as two failures.
        Err(e) => {
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: GatewayArgs) -> Result<(), String> {
    args.check_exposure()?;
    let anonymous = args.http.anonymous_wanted();
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            step_server::shutdown_signal().await;
            stop.cancel();
        }
    });

    let (backend, embedded) = step_backend(&args, anonymous, &stop).await?;
    let state = AppState::with_login_pace(
        backend,
        args.http.clone(),
        args.embedded.login_attempts_per_source,
    );
    let addr = args.http_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| listen_error("for HTTP", addr, "--port (GATEWAY_PORT)", &e))?;
    let tls = step_server::tls::from_flags(args.tls_cert.as_deref(), args.tls_key.as_deref())?;
    let acceptor = match &tls {
        Some(files) => {
            files.reload_on_sighup();
            Some(files.acceptor()?)
        }
        None => None,
    };
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let url = format!("{scheme}://{}/", step_server::compose::reachable(local));
    info!(addr = %local, "gateway listening: open {url}");
    info!("try: curl -T FILE {url}files/NAME, then curl -o FILE {url}files/NAME");
    let result = gateway::serve_tls(listener, state, acceptor, {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    })
    .await
    .map_err(|e| format!("HTTP server failed: {e}"));
    stop.cancel();
    if let Some(task) = embedded {
        let _ = task.await;
    }
    info!("gateway stopped");
    result
}

/// The STEP side: with `--backend`, pools to those servers; without, the
/// embedded server composed from the flags — native STEP on --step-port,
/// HTTP requests calling its service in process, over the same store —
/// and its serving task.
async fn step_backend(
    args: &GatewayArgs,
    anonymous: step_core::access::Anonymous,
    stop: &CancellationToken,
) -> Result<(Backend, Option<tokio::task::JoinHandle<()>>), String> {
    let metrics = Metrics::new();
    if let Some(list) = &args.backend {
        info!(backend = %list, embedded = false, "STEP backend");
        let mut backends = Vec::new();
        for addr in backend_list(list)? {
            let tls = backend_tls(args, &addr)?;
            backends.push((addr, tls));
        }
        let backend = Backend::with_backends(backends, args.transfer.clone(), anonymous, metrics);
        return Ok((backend, None));
    }
    let addr = args.step_addr()?;
    step_server::compose::warn_if_open(args.embedded.auth, addr);
    let composed = Composer::new(&args.embedded)
        .start(anonymous)
        .await
        .map_err(|e| e.to_string())?;
    let metrics = metrics.with_store(composed.upkeep());
    let service = std::sync::Arc::clone(&composed.service);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| listen_error("for STEP", addr, "--step-port (STEP_PORT)", &e))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    info!(backend = %format!("127.0.0.1:{}", local.port()), embedded = true, "STEP backend");
    let stop = stop.clone();
    let serving = tokio::spawn(composed.serve(listener, async move {
        stop.cancelled().await;
    }));
    let backend = Backend::in_process(service, args.transfer.clone(), anonymous, metrics);
    Ok((backend, Some(serving)))
}

/// The STEP servers of `--backend a:1379,b:1379` (one, or several
/// interchangeable ones over one store).
fn backend_list(flag: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = flag
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect();
    if list.is_empty() {
        return Err("--backend names no STEP server".into());
    }
    if list.len() > gateway::backend::MAX_BACKENDS {
        return Err(format!(
            "--backend names {} STEP servers; at most {} are supported",
            list.len(),
            gateway::backend::MAX_BACKENDS
        ));
    }
    Ok(list)
}

/// What --backend-tls and --backend-ca-cert ask for; the name the backend's
/// certificate must carry is --backend-tls-name, else the host of
/// `backend_addr` (one of --backend's).
fn backend_tls(args: &GatewayArgs, backend_addr: &str) -> Result<Option<TlsClient>, String> {
    let t = &args.transfer;
    if !t.backend_tls {
        return Ok(None);
    }
    if args.backend.is_none() {
        return Err("--backend-tls needs --backend (the embedded server speaks plain STEP)".into());
    }
    let pem = match &t.backend_ca_cert {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read --backend-ca-cert {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let host = match &t.backend_tls_name {
        Some(name) => name.clone(),
        None => backend_addr
            .rsplit_once(':')
            .map_or(backend_addr, |(host, _)| host)
            .to_owned(),
    };
    Ok(Some(TlsClient {
        config: tls::client_config(pem.as_deref())?,
        server_name: tls::server_name(&host)?,
    }))
}

/// `--health-check`: `GET /readyz` over plain HTTP/1.1 (ready means the STEP
/// backend answers), so a `FROM scratch` image needs no curl.
async fn health_check(args: &GatewayArgs) -> ExitCode {
    let addr = match args.http_addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("gateway: {e}");
            return ExitCode::from(2);
        }
    };
    let target = step_server::compose::reachable(addr);
    // With TLS, the probe trusts exactly the gateway's own certificate.
    let tls = match &args.tls_cert {
        Some(cert) => match step_server::tls::pinned_client(cert) {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("gateway: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let probe = async {
        let stream = tokio::net::TcpStream::connect(target).await?;
        match &tls {
            Some(tls) => {
                let connector =
                    tokio_rustls::TlsConnector::from(std::sync::Arc::clone(&tls.config));
                let stream = connector.connect(tls.server_name.clone(), stream).await?;
                get_readyz(stream, target).await
            }
            None => get_readyz(stream, target).await,
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Ok(answer)) => {
            let answer = String::from_utf8_lossy(&answer);
            let status = answer.lines().next().unwrap_or_default();
            if status.split_whitespace().nth(1) == Some("200") {
                ExitCode::SUCCESS
            } else {
                let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
                eprintln!("gateway: health check: {target}/readyz: {status} {body}");
                ExitCode::FAILURE
            }
        }
        Ok(Err(e)) => {
            eprintln!("gateway: health check: {target}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("gateway: health check: {target} did not answer within 5 s");
            ExitCode::FAILURE
        }
    }
}

/// `GET /readyz` on `stream`; the answer as read (at most 64 KiB).
async fn get_readyz<S>(mut stream: S, target: std::net::SocketAddr) -> std::io::Result<Vec<u8>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::new();
    (&mut stream).take(64 * 1024).read_to_end(&mut head).await?;
    Ok(head)
}
