use std::process::ExitCode;

use clap::Parser;
use gateway::config::GatewayArgs;
use gateway::metrics::Metrics;
use gateway::{AppState, app, backend::Backend};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = GatewayArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    step_server::raise_fd_limit();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: GatewayArgs) -> Result<(), String> {
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            step_server::shutdown_signal().await;
            stop.cancel();
        }
    });

    // With no --backend, the product runs whole in this process: native STEP
    // on --step-port and HTTP on --port, over the same store.
    let mut embedded = None;
    let backend_addr = match &args.backend {
        Some(addr) => addr.clone(),
        None => {
            let addr = args.step_addr()?;
            let (service, limits) = args.embedded.build().map_err(|e| {
                format!(
                    "cannot open the store at {}: {e}",
                    args.embedded.data_dir.display()
                )
            })?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot listen for STEP on {addr}: {e}"))?;
            let local = listener.local_addr().map_err(|e| e.to_string())?;
            let stop = stop.clone();
            embedded = Some(tokio::spawn(step_server::run(
                listener,
                service,
                limits,
                async move {
                    stop.cancelled().await;
                },
            )));
            format!("127.0.0.1:{}", local.port())
        }
    };
    info!(backend = %backend_addr, embedded = embedded.is_some(), "STEP backend");

    let default_user = (!args.http.require_auth && !args.http.default_user.is_empty())
        .then(|| args.http.default_user.clone());
    let backend = Backend::new(
        backend_addr,
        args.transfer.clone(),
        default_user,
        Metrics::new(),
    );
    let state = AppState::new(backend, args.http.clone());
    let addr = args.http_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for HTTP on {addr}: {e}"))?;
    info!(%addr, "gateway listening");
    let serve = axum::serve(listener, app(state)).with_graceful_shutdown({
        let stop = stop.clone();
        async move { stop.cancelled().await }
    });
    let result = serve.await.map_err(|e| format!("HTTP server failed: {e}"));
    stop.cancel();
    if let Some(task) = embedded {
        let _ = task.await;
    }
    info!("gateway stopped");
    result
}
