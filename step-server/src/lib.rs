//! The native STEP v1.1 server.
//!
//! * [`server::run`] — accept loop and per-connection request loop.
//! * [`service::Service`] — answers one request (checks, auth, dispatch).
//! * [`store::Storage`] — the storage interface; [`store::DiskStore`] keeps
//!   records and files on local disk.
//! * [`config`] — command-line flags and environment variables (parsing only).
//! * [`compose`] — the composition root: flags to storage, coordinator,
//!   accounts and service.
//! * [`error::StepError`] — failures and their STEP status codes.
//! * [`logging`] — log set-up shared with the gateway.
//! * [`tls`] — certificates for TLS listeners (reloaded on SIGHUP).

pub mod accounts;
pub mod auth;
pub mod binding;
pub mod compose;
pub mod config;
pub mod error;
pub mod health;
pub mod limits;
pub mod logging;
pub mod request;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod users;

pub use server::{ConnectionLimits, run, run_with_tls};
pub use service::Service;

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Raise the open-file limit to its hard maximum: each connection is a file
/// descriptor, and the default soft limit (1024) is far below what one
/// server can hold.
pub fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "cannot raise the open-file limit");
    }
}
