//! The REST gateway: HTTP in front, STEP behind.
//!
//! * [`app`] — the axum router with its tower-http layers.
//! * [`routes`] — thin handlers.
//! * [`backend`] — the pool of STEP connections and the operations on it.
//! * [`upload`] / [`download`] — streaming files through in blocks.
//! * [`error::GatewayError`] — every failure and its HTTP response.
//! * [`metrics`] — Prometheus text at `/metrics`.
//! * [`access_log`] — one log line per request.

pub mod access_log;
pub mod archive;
pub mod auth;
pub mod backend;
pub mod body;
pub mod clash;
pub mod conditional;
pub mod config;
pub mod csrf;
pub mod download;
pub mod error;
pub mod listing;
pub mod metrics;
pub mod page;
pub mod route_table;
pub mod routes;
pub mod tus;
pub mod upload;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use step_core::access::Anonymous;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
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
    /// What token-less requests may ask for (`--anonymous`; `none` with
    /// `--require-auth`); the STEP server may grant less.
    pub anonymous: Anonymous,
    /// Tokens of HTTP Basic logins.
    pub logins: auth::BasicLogins,
    /// Basic logins per client address, in front of `--backend` (the
    /// server there sees only this gateway's address).
    pub login_pacer: step_server::auth::AttemptPacer,
    /// Bytes of multipart bodies held in memory, across all requests
    /// (--max-buffered-bytes); beyond it uploads spool to disk.
    pub buffered: Arc<Semaphore>,
    /// tus uploads' per-upload locks and kept partial blocks.
    pub tus: tus::Tails,
    /// Zip downloads being written (each holds a blocking thread).
    pub archives: Arc<Semaphore>,
}

impl AppState {
    /// The state with the default pace of Basic logins per client address.
    pub fn new(backend: Backend, http: HttpArgs) -> Arc<Self> {
        Self::with_login_pace(backend, http, 30)
    }

    /// `login_attempts_per_min`: Basic logins one client address may start
    /// per minute in front of `--backend` (`--login-attempts-per-source`).
    pub fn with_login_pace(
        backend: Backend,
        http: HttpArgs,
        login_attempts_per_min: u32,
    ) -> Arc<Self> {
        let buffered = Arc::new(Semaphore::new(
            http.max_buffered_bytes.min(Semaphore::MAX_PERMITS),
        ));
        let anonymous = http.anonymous_wanted();
        Arc::new(Self {
            backend: Arc::new(backend),
            http,
            anonymous,
            logins: auth::BasicLogins::default(),
            login_pacer: step_server::auth::AttemptPacer::per_minute(login_attempts_per_min),
            buffered,
            tus: tus::Tails::default(),
            archives: Arc::new(Semaphore::new(archive::MAX_CONCURRENT)),
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
                Method::PATCH,
                Method::OPTIONS,
            ])
            .allow_headers(Any)
            .expose_headers(Any),
    )
}

/// The gateway's router over `state`.
// Long on purpose: the flat table of every route and its layers, read in one place.
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
        .merge(tus::router())
        .layer(DefaultBodyLimit::disable())
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            body_min_rate,
        ));
    let small = Router::new()
        .merge(page::router())
        .route("/login", post(routes::login))
        .route("/records", post(routes::create_record))
        // The listing; `/files/` (an empty key) lists too.
        .route("/files", get(listing::list_files))
        .route("/files/", get(listing::list_files))
        // Folders and selections as one zip; the page's downloads.
        .route("/archive", get(archive::get_archive))
        .route("/download", post(archive::post_download))
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
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            request_timeout,
        ));
    let mut router = Router::new()
        .merge(files)
        .merge(small)
        // Every route: its caller resolved and the one decision made.
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::authorize,
        ))
        .fallback(routes::not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            archive::form_credentials,
        ))
        .layer(middleware::from_fn(limit_uri))
        .layer(middleware::from_fn_with_state(
            Arc::new(csrf::Policy::new(&state.http.cors_origins)),
            csrf::guard,
        ))
        .layer(middleware::from_fn(page::inert_by_default))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            record_metrics,
        ))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(middleware::from_fn(auth::script_challenge))
        .layer(middleware::from_fn(access_log::access_log))
        // Only the span: requests are logged by the access log, and errors
        // with their cause there (tower-http's own failure line would log
        // every 5xx at ERROR, e.g. each /readyz probe while the backend is down).
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!("http", method = %req.method(), uri = %req.uri(), request_id = %id)
                })
                .on_request(())
                .on_response(())
                .on_body_chunk(())
                .on_eos(())
                .on_failure(()),
        )
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid));
    if let Some(cors) = cors(&state.http.cors_origins) {
        router = router.layer(cors);
    }
    router.with_state(state)
}

/// Requests whose URI is longer than this are answered 414 (hyper's own
/// limit, 64 KiB, answers with an empty body before any handler runs). It
/// stays above the longest path a valid key makes: 1024 characters of up to
/// 4 bytes, percent-encoded, is 12 KiB.
pub const MAX_URI_LEN: usize = 16 * 1024;

/// Serve the gateway on `listener` until `shutdown` resolves, then let the
/// requests in progress finish.
///
/// Our own accept loop rather than `axum::serve`, for what that one cannot
/// do: at most `--http-max-connections` connections (a permit is taken
/// before accepting, so extra clients wait in the kernel's backlog instead
/// of failing, and descriptors are never exhausted), and hyper's header
/// read timeout, which also closes connections idle before a request
/// (new or kept alive).
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_tls(listener, state, None, shutdown).await
}

/// [`serve`], over TLS when `tls` is given (HTTPS). The handshake runs in the
/// connection's task, holding its connection permit, and must finish within
/// `--header-timeout-secs` like a request head.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::TokioIo;
    use hyper_util::service::TowerToHyperService;

    let router = app(Arc::clone(&state));
    let permits = Arc::new(Semaphore::new(state.http.http_max_connections.max(1)));
    let header_timeout = state.http.header_timeout();
    let tracker = TaskTracker::new();
    let stop = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // E.g. out of descriptors: back off briefly instead of
                    // spinning on an accept that keeps failing.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        state.backend.metrics.http_connections.inc();
        let _ = stream.set_nodelay(true);
        // Every request knows its client's address (login pacing).
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            router.clone(),
            move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(auth::ClientAddr(peer));
                req
            },
        ));
        let stop = stop.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let Some(acceptor) = tls else {
                return serve_http(TokioIo::new(stream), service, header_timeout, stop).await;
            };
            let handshake = tokio::select! {
                () = stop.cancelled() => return,
                r = tokio::time::timeout(header_timeout, acceptor.accept(stream)) => r,
            };
            match handshake {
                Ok(Ok(stream)) => {
                    serve_http(TokioIo::new(stream), service, header_timeout, stop).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
    stop.cancel();
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// HTTP/1.1 on one accepted connection (plain or TLS) until it ends or the
/// server stops (then gracefully: the request in progress finishes).
async fn serve_http<I, S>(
    io: I,
    service: hyper_util::service::TowerToHyperService<S>,
    header_timeout: Duration,
    stop: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<
            Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        }
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// 414 with the JSON error body for URIs over [`MAX_URI_LEN`].
async fn limit_uri(req: Request, next: Next) -> Response {
    let len = req.uri().path().len() + req.uri().query().map_or(0, |q| q.len() + 1);
    if len > MAX_URI_LEN {
        return GatewayError::UriTooLong(MAX_URI_LEN).into_response();
    }
    next.run(req).await
}

/// --request-timeout for non-streaming routes, answered with the JSON error
/// body (tower-http's TimeoutLayer answers with an empty one).
async fn request_timeout(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let secs = st.http.request_timeout.max(1);
    match tokio::time::timeout(Duration::from_secs(secs), next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => GatewayError::RequestTimeout(secs).into_response(),
    }
}

/// File bodies must keep up --body-min-bytes per --body-interval-secs.
async fn body_min_rate(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let (min, interval) = (st.http.body_min_bytes, st.http.body_interval());
    let req = req.map(|body| {
        axum::body::Body::from_stream(body::MinRate::new(body.into_data_stream(), min, interval))
    });
    next.run(req).await
}

async fn method_not_allowed() -> GatewayError {
    GatewayError::MethodNotAllowed
}
