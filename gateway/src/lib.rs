//! The REST gateway: HTTP in front, STEP behind.
//!
//! * [`app`] — the axum router with its tower-http layers.
//! * [`routes`] — thin handlers.
//! * [`backend`] — the pool of STEP connections and the operations on it.
//! * [`upload`] / [`download`] — streaming files through in blocks.
//! * [`error::GatewayError`] — every failure and its HTTP response.
//! * [`metrics`] — Prometheus text at `/metrics`.

pub mod backend;
pub mod config;
pub mod download;
pub mod error;
pub mod metrics;
pub mod routes;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::backend::Backend;
use crate::config::HttpArgs;
use crate::error::GatewayError;
use crate::metrics::RequestLabels;

/// The REST contract, served at `/openapi.yaml`.
pub const OPENAPI: &str = include_str!("../../openapi.yaml");

/// Everything the handlers share.
#[derive(Debug)]
pub struct AppState {
    pub backend: Arc<Backend>,
    pub http: HttpArgs,
    pub require_auth: bool,
}

impl AppState {
    pub fn new(backend: Backend, http: HttpArgs) -> Arc<Self> {
        let require_auth = http.require_auth || http.default_user.is_empty();
        Arc::new(Self {
            backend: Arc::new(backend),
            http,
            require_auth,
        })
    }
}

async fn record_metrics(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let resp = next.run(req).await;
    st.backend
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: resp.status().as_u16(),
        })
        .inc();
    resp
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    GatewayError::Internal("the gateway hit an internal error; it has been logged".into())
        .into_response()
}

fn cors(origins: &[String]) -> Option<CorsLayer> {
    let origins: Vec<&String> = origins.iter().filter(|o| !o.trim().is_empty()).collect();
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o.trim() == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim()).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::PUT,
                Method::POST,
                Method::DELETE,
            ])
            .allow_headers(Any)
            .expose_headers(Any),
    )
}

/// The gateway's router over `state`.
pub fn app(state: Arc<AppState>) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    // Files stream for as long as they take; their size limit is enforced by
    // the handlers (413), not by a body-buffering limit.
    let files = Router::new()
        .route("/upload", post(routes::upload_multipart))
        .route(
            "/files/{*key}",
            put(routes::put_file)
                .get(routes::get_file)
                .head(routes::get_file)
                .delete(routes::delete_file),
        )
        .layer(DefaultBodyLimit::disable());
    let small = Router::new()
        .route("/login", post(routes::login))
        .route("/records", post(routes::create_record))
        .route(
            "/records/{key}",
            put(routes::put_record)
                .get(routes::get_record)
                .delete(routes::delete_record),
        )
        .route("/healthz", get(routes::healthz))
        .route("/readyz", get(routes::readyz))
        .route("/metrics", get(routes::metrics))
        .route("/openapi.yaml", get(routes::openapi))
        .layer(DefaultBodyLimit::max(state.http.max_json_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(state.http.request_timeout.max(1)),
        ));
    let mut router = Router::new()
        .merge(files)
        .merge(small)
        .fallback(routes::not_found)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            record_metrics,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("http", method = %req.method(), uri = %req.uri(), request_id = %id)
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid));
    if let Some(cors) = cors(&state.http.cors_origins) {
        router = router.layer(cors);
    }
    router.with_state(state)
}

/// Serve the gateway on `listener` until `shutdown` resolves, then let the
/// requests in progress finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
