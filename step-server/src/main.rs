use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Arg, ArgAction, CommandFactory, FromArgMatches};
use step_core::message::field;
use step_core::{Kind, Message, Operation, StepClient};
use step_server::compose::Composer;
use step_server::config::{ListenArgs, ServerArgs, listen_error};
use step_server::users::ServerCommand;

const HEALTH_CHECK: &str = "health-check";

#[tokio::main]
async fn main() -> ExitCode {
    let matches = ServerArgs::command()
        .arg(
            Arg::new(HEALTH_CHECK)
                .long(HEALTH_CHECK)
                .action(ArgAction::SetTrue)
                .help(
                    "Probe the server these flags describe (--ip/--port; all interfaces means \
                     loopback) instead of serving: a token-less GET must be refused with 403. \
                     Exits 0 if so, 1 otherwise (for container health checks)",
                ),
        )
        .get_matches();
    let args = ServerArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if matches.get_flag(HEALTH_CHECK) {
        return health_check(&args.listen).await;
    }
    if let Some(ServerCommand::User(cmd)) = &args.command {
        return user_command(cmd, &args).await;
    }
    step_server::logging::init(&args.log, args.log_format);
    step_server::raise_fd_limit();
    let addr = match args.listen.addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("step-server: {e}");
            return ExitCode::from(2);
        }
    };
    step_server::compose::warn_if_open(args.service.auth, addr);
    let composed = match Composer::new(&args.service).start(args.anonymous).await {
        Ok(built) => built,
        Err(e) => {
            eprintln!("step-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            let why = listen_error("for STEP", addr, "--port (STEP_PORT)", &e);
            eprintln!("step-server: {why}");
            return ExitCode::FAILURE;
        }
    };
    let tls = match tls_listener(&args).await {
        Ok(t) => t,
        Err(e) => {
            eprintln!("step-server: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(port) = args.health_port {
        let addr = SocketAddr::new(addr.ip(), port);
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => {
                let storage = composed.service.storage().clone();
                tokio::spawn(step_server::health::serve(l, storage));
            }
            Err(e) => {
                let flag = "--health-port (STEP_HEALTH_PORT)";
                let why = listen_error("for health checks", addr, flag, &e);
                eprintln!("step-server: {why}");
                return ExitCode::FAILURE;
            }
        }
    }
    step_server::run_with_tls(
        listener,
        tls,
        composed.service,
        composed.limits,
        step_server::shutdown_signal(),
    )
    .await;
    ExitCode::SUCCESS
}

/// `step-server user ...`: the accounts in the store the flags name.
async fn user_command(cmd: &step_server::users::UserCommand, args: &ServerArgs) -> ExitCode {
    let open = || Composer::new(&args.service).open_accounts();
    match step_server::users::run(cmd, &args.service, open).await {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("step-server user: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The TLS listener of --tls-port, its certificate reloaded on SIGHUP.
async fn tls_listener(
    args: &ServerArgs,
) -> Result<Option<(tokio::net::TcpListener, tokio_rustls::TlsAcceptor)>, String> {
    let Some(port) = args.tls.tls_port else {
        return Ok(None);
    };
    let files =
        step_server::tls::from_flags(args.tls.tls_cert.as_deref(), args.tls.tls_key.as_deref())?
            .ok_or("--tls-port needs --tls-cert and --tls-key")?;
    let acceptor = files.acceptor()?;
    files.reload_on_sighup();
    let addr = ListenArgs {
        port,
        ..args.listen.clone()
    }
    .addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| listen_error("for STEP over TLS", addr, "--tls-port (STEP_TLS_PORT)", &e))?;
    Ok(Some((listener, acceptor)))
}

/// `--health-check`: one STEP round trip, the same probe the gateway's
/// `/readyz` makes (a token-less request every STEP server answers with 403).
async fn health_check(listen: &ListenArgs) -> ExitCode {
    let addr = match listen.addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("step-server: {e}");
            return ExitCode::from(2);
        }
    };
    let target = step_server::compose::reachable(addr);
    let probe = async {
        let mut client = StepClient::connect(target).await?;
        let request = Message::request(Operation::Get, Kind::Data).with(field::KEY, "healthcheck");
        client.call(&request).await
    };
    match tokio::time::timeout(Duration::from_secs(5), probe).await {
        Ok(Ok(resp)) if resp.status_code() == Some(403) => ExitCode::SUCCESS,
        Ok(Ok(resp)) => {
            eprintln!(
                "step-server: health check: {target} answered status {:?}, not 403",
                resp.status_code()
            );
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("step-server: health check: {target}: {e}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("step-server: health check: {target} did not answer within 5 s");
            ExitCode::FAILURE
        }
    }
}
