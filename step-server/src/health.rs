//! `--health-port`: HTTP probes for load balancers (HAProxy's `httpchk`)
//! and orchestrators. A STEP health check only shows the process answers;
//! `/readyz` also shows it can reach what it keeps files in, so a balancer
//! takes an instance cut off from its bucket or coordinator out of service.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::warn;

use crate::store::Upkeep;

/// A probe of the storage gives up after this long (a balancer checks
/// every few seconds; a slow answer counts as down).
const READY_WITHIN: Duration = Duration::from_secs(2);

/// Serve the probes on `listener` until the process ends.
pub async fn serve(listener: TcpListener, storage: Arc<dyn Upkeep>) {
    let app = Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .with_state(storage);
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "the health endpoint stopped");
    }
}

async fn readyz(State(storage): State<Arc<dyn Upkeep>>) -> impl IntoResponse {
    let unavailable = |message: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "unavailable", "message": message})),
        )
    };
    match tokio::time::timeout(READY_WITHIN, storage.ready()).await {
        Ok(Ok(())) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Ok(Err(e)) => unavailable(e.to_string()),
        Err(_) => unavailable(format!(
            "the storage did not answer within {} s",
            READY_WITHIN.as_secs()
        )),
    }
}
