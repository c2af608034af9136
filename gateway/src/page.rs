//! The web page at `GET /`: upload (file picker, drag and drop, resumable
//! through `/tus/`), the listing with download and delete. Plain HTML, CSS
//! and JavaScript compiled into the binary; nothing is fetched from
//! elsewhere at run time.
//!
//! The page holds a token, so it runs under a strict policy ([`PAGE_CSP`]:
//! its own script, style sheet and API, no inline script or style, never
//! framed), and every other response of the gateway is inert in a browser
//! ([`inert_by_default`]); user content has its own ([`crate::download`]).

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use md5::{Digest, Md5};

use crate::AppState;

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE: &str = include_str!("../assets/style.css");

/// The page's Content-Security-Policy: its own script and style sheet and
/// requests to its own origin, nothing inline, no frames around it.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; \
    frame-ancestors 'none'";

/// The policy of every response that sets none of its own (JSON answers,
/// errors, the spec): a browser that opens one runs and loads nothing.
pub const DEFAULT_CSP: &str = "default-src 'none'; frame-ancestors 'none'; sandbox";

/// Middleware: `nosniff` and [`DEFAULT_CSP`] on every response that did
/// not choose its own.
pub async fn inert_by_default(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.entry(header::X_CONTENT_TYPE_OPTIONS)
        .or_insert(HeaderValue::from_static("nosniff"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(DEFAULT_CSP));
    resp
}

pub fn router() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(app_js))
        .route("/assets/style.css", get(style))
}

async fn index(headers: HeaderMap) -> Response {
    asset(&headers, INDEX, "text/html; charset=utf-8")
}

async fn app_js(headers: HeaderMap) -> Response {
    asset(&headers, APP_JS, "text/javascript; charset=utf-8")
}

async fn style(headers: HeaderMap) -> Response {
    asset(&headers, STYLE, "text/css; charset=utf-8")
}

/// An embedded file with a strong ETag (its md5). `no-cache`: browsers keep
/// it but revalidate each time (a 304 costs a few bytes), so a new gateway
/// version's page is never mixed with an old script.
fn asset(headers: &HeaderMap, body: &'static str, kind: &'static str) -> Response {
    let etag = format!("\"{}\"", hex::encode(Md5::digest(body.as_bytes())));
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, kind)], body).into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(PAGE_CSP),
    );
    // For browsers that predate frame-ancestors.
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    resp
}
