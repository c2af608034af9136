//! The web page at `GET /`: folders, search, previews, uploads (resumable
//! through `/tus/`), downloads and deletes. Plain HTML, CSS and JavaScript
//! modules compiled into the binary ([`ASSETS`]); nothing is fetched from
//! elsewhere at run time and nothing is built.
//!
//! The page holds a token, so it runs under a strict policy ([`PAGE_CSP`]:
//! its own scripts, style sheet and API, no inline script or style, never
//! framed), and every other response of the gateway is inert in a browser
//! ([`inert_by_default`]); user content has its own ([`crate::download`]).

use std::sync::Arc;

use axum::extract::{Path, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use md5::{Digest, Md5};

use crate::AppState;
use crate::error::GatewayError;

const INDEX: &str = include_str!("../assets/index.html");

/// The page's files under `/assets/`: name, type, content.
pub const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/api.js"),
    ),
    (
        "files.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/files.js"),
    ),
    (
        "uploads.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/uploads.js"),
    ),
    (
        "dialogs.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/dialogs.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../assets/style.css"),
    ),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../assets/icon.svg"),
    ),
];

/// The page's Content-Security-Policy: its own scripts and style sheet and
/// requests to its own origin, nothing inline, no frames around it. Images
/// and media may also come from `blob:` URLs the page made itself from
/// bytes it fetched (a signed-in user's previews): an image or a video
/// runs nothing.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob:; media-src 'self' blob:; connect-src 'self'; form-action 'self'; \
    base-uri 'none'; frame-ancestors 'none'";

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
        .route("/assets/{name}", get(asset_named))
}

async fn index(headers: HeaderMap) -> Response {
    asset(&headers, INDEX, "text/html; charset=utf-8")
}

async fn asset_named(headers: HeaderMap, Path(name): Path<String>) -> Response {
    match ASSETS.iter().find(|(n, _, _)| *n == name) {
        Some((_, kind, body)) => asset(&headers, body, kind),
        None => GatewayError::NotFound("no such file of the page".into()).into_response(),
    }
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
    // The page's own links and form posts name no other site.
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
}
