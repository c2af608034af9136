//! Cross-site request forgery: a page on another site must not make a
//! visitor's browser change anything here with credentials the browser
//! adds by itself (cached HTTP Basic) or with none (anonymous writes).
//!
//! Every request that is not a read (GET, HEAD, OPTIONS) is checked —
//! uploads, PUT, DELETE, tus, records and login alike — by what browsers
//! say about where a request comes from, which a page cannot forge:
//!
//! 1. `Sec-Fetch-Site: same-origin` (or `none`, the user's own action):
//!    allowed, also behind a proxy that rewrote the `Host` header;
//! 2. else an `Origin` header decides: the gateway's own origin (the
//!    request's `Host`) or one of `--cors-origins` is allowed (behind a
//!    proxy that rewrites `Host`, browsers without `Sec-Fetch-Site` need
//!    the public origin listed there); `*` there allows any origin only
//!    for requests that carry their own `Authorization: Bearer` token,
//!    which a browser never adds by itself; anything else — another site,
//!    another port, `null` — is refused;
//! 3. else `Sec-Fetch-Site: cross-site` or `same-site` is refused;
//! 4. a request with neither header is not from a browser page (curl,
//!    scripts, tus clients) and is allowed.
//!
//! A refusal is `403 cross_site` with the JSON error body, before any
//! handler runs.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::GatewayError;

/// Which origins besides the gateway's own may send writes.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `--cors-origins`, normalised ([`normalise`]).
    allowed: Vec<String>,
    /// `--cors-origins` has `*`.
    any_with_bearer: bool,
}

impl Policy {
    pub fn new(cors_origins: &[String]) -> Policy {
        let listed = cors_origins
            .iter()
            .map(|o| o.trim())
            .filter(|o| !o.is_empty());
        Policy {
            allowed: listed
                .clone()
                .filter(|o| *o != "*")
                .map(normalise)
                .collect(),
            any_with_bearer: listed.clone().any(|o| o == "*"),
        }
    }

    /// Why a request with these headers must be refused, if it must.
    pub fn refusal(&self, headers: &HeaderMap) -> Option<String> {
        let site = text(headers, "sec-fetch-site").map(str::to_ascii_lowercase);
        if matches!(site.as_deref(), Some("same-origin" | "none")) {
            return None;
        }
        if let Some(origin) = text(headers, header::ORIGIN.as_str()) {
            let origin = normalise(origin);
            let own = authority(&origin).is_some_and(|a| is_own(headers, a));
            if own
                || self.allowed.contains(&origin)
                || (self.any_with_bearer && has_bearer(headers))
            {
                return None;
            }
            return Some(format!(
                "this request changes data and comes from a page on another site ({origin}); \
                 the gateway takes such requests only from its own page, from the origins \
                 given with --cors-origins, and from programs that are not browsers \
                 (curl, scripts)"
            ));
        }
        match site.as_deref() {
            Some(s @ ("cross-site" | "same-site")) => Some(format!(
                "this request changes data and comes from a page on another site \
                 (Sec-Fetch-Site: {s}); open the gateway's own page, or use curl or a script"
            )),
            _ => None,
        }
    }
}

/// Middleware: every write passes [`Policy::refusal`] first.
pub async fn guard(State(policy): State<Arc<Policy>>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    match policy.refusal(req.headers()) {
        None => next.run(req).await,
        Some(why) => {
            tracing::debug!(method = %req.method(), uri = %req.uri(), "cross-site write refused");
            GatewayError::CrossSite(why).into_response()
        }
    }
}

fn text<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

fn has_bearer(headers: &HeaderMap) -> bool {
    text(headers, header::AUTHORIZATION.as_str()).is_some_and(|v| {
        v.split_once(' ').is_some_and(|(scheme, rest)| {
            scheme.eq_ignore_ascii_case("bearer") && !rest.trim().is_empty()
        })
    })
}

/// `scheme://host[:port]` lowercased, without a trailing slash or the
/// scheme's default port — the form browsers send, so that a listed origin
/// written either way compares equal.
fn normalise(origin: &str) -> String {
    let o = origin.trim().trim_end_matches('/').to_ascii_lowercase();
    for (scheme, port) in [("http://", ":80"), ("https://", ":443")] {
        if o.starts_with(scheme)
            && let Some(bare) = o.strip_suffix(port)
        {
            return bare.to_owned();
        }
    }
    o
}

/// The `host[:port]` of a normalised origin (none for `null`).
fn authority(origin: &str) -> Option<&str> {
    origin.split_once("://").map(|(_, a)| a)
}

/// Whether `authority` (`host[:port]`, lowercase) is the one this request
/// was sent to. (Only the `Host` header: a page cannot set it, while with
/// `--cors-origins '*'` it could add an `X-Forwarded-Host` of its choosing.)
fn is_own(headers: &HeaderMap, authority: &str) -> bool {
    text(headers, header::HOST.as_str()).is_some_and(|host| {
        let host = host
            .strip_suffix(":80")
            .or_else(|| host.strip_suffix(":443"))
            .unwrap_or(host);
        host.eq_ignore_ascii_case(authority)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn the_decision_table() {
        let p = Policy::new(&["https://App.example/".into(), "".into()]);
        let host = ("host", "gw.example:8080");
        let allowed: &[&[(&str, &str)]] = &[
            &[host],
            &[
                host,
                ("sec-fetch-site", "same-origin"),
                ("origin", "https://x.example"),
            ],
            &[host, ("sec-fetch-site", "none")],
            &[host, ("origin", "http://gw.example:8080")],
            &[
                host,
                ("origin", "https://app.example"),
                ("sec-fetch-site", "cross-site"),
            ],
            &[("host", "gw.example:80"), ("origin", "http://gw.example")],
            &[
                ("host", "GW.example:8080"),
                ("origin", "http://gw.example:8080"),
            ],
        ];
        for h in allowed {
            assert_eq!(p.refusal(&headers(h)), None, "{h:?}");
        }
        let refused: &[&[(&str, &str)]] = &[
            &[host, ("origin", "https://evil.example")],
            &[host, ("origin", "http://gw.example:8081")],
            &[host, ("origin", "null")],
            &[host, ("origin", "http://app.example")],
            &[host, ("sec-fetch-site", "cross-site")],
            &[host, ("sec-fetch-site", "same-site")],
            &[
                host,
                ("origin", "https://evil.example"),
                ("authorization", "Bearer t"),
            ],
            &[
                host,
                ("origin", "https://evil.example"),
                ("x-forwarded-host", "evil.example"),
            ],
        ];
        for h in refused {
            assert!(p.refusal(&headers(h)).is_some(), "{h:?}");
        }
        // `*`: any origin, but only with a token of its own.
        let any = Policy::new(&["*".into()]);
        let evil = ("origin", "https://evil.example");
        assert!(any.refusal(&headers(&[host, evil])).is_some());
        assert!(
            any.refusal(&headers(&[host, evil, ("authorization", "Basic dTpw")]))
                .is_some()
        );
        assert_eq!(
            any.refusal(&headers(&[host, evil, ("authorization", "bearer t")])),
            None
        );
    }
}
