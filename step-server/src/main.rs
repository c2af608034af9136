use std::process::ExitCode;

use clap::Parser;
use step_server::config::ServerArgs;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let args = ServerArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    step_server::raise_fd_limit();
    let addr = match args.listen.addr() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("step-server: {e}");
            return ExitCode::from(2);
        }
    };
    let (service, limits) = match args.service.build() {
        Ok(built) => built,
        Err(e) => {
            eprintln!(
                "step-server: cannot open the store at {}: {e}",
                args.service.data_dir.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("step-server: cannot listen on {addr}: {e}");
            return ExitCode::FAILURE;
        }
    };
    step_server::run(listener, service, limits, step_server::shutdown_signal()).await;
    ExitCode::SUCCESS
}
