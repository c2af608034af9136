//! Every route and method the gateway serves, and what each does: the table
//! authorization decides by ([`crate::auth::authorize`]), kept apart from
//! the handlers so that deciding needs none of them.

use axum::http::Method;
use step_core::access::Access;

/// What a route does, as the one decision ([`step_core::access::decide`])
/// needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// Needs no caller: the page and its assets, sign-in, probes, the
    /// contract, CORS and tus discovery.
    Open,
    /// Needs a caller allowed this kind of access.
    Needs(Access),
    /// A method the route does not serve: answered 405 before anything.
    OtherMethod,
}

/// Every route and method the gateway serves, and what it does. The router
/// and this table must agree: a route missing here is refused
/// ([`crate::auth::authorize`]), and a test walks the table over HTTP.
/// HEAD is GET's kind unless listed.
pub const ROUTE_KINDS: &[(&str, &str, RouteKind)] = &[
    ("POST", "/upload", RouteKind::Needs(Access::Write)),
    ("PUT", "/files/{*key}", RouteKind::Needs(Access::Write)),
    ("GET", "/files/{*key}", RouteKind::Needs(Access::Read)),
    ("DELETE", "/files/{*key}", RouteKind::Needs(Access::Write)),
    ("GET", "/files", RouteKind::Needs(Access::Read)),
    ("GET", "/files/", RouteKind::Needs(Access::Read)),
    // Zips of folders and selections; the page's downloads (a form post
    // that only reads: its token comes from the form, see archive.rs).
    ("GET", "/archive", RouteKind::Needs(Access::Read)),
    ("POST", "/download", RouteKind::Needs(Access::Read)),
    ("POST", "/records", RouteKind::Needs(Access::Write)),
    ("PUT", "/records/{key}", RouteKind::Needs(Access::Write)),
    ("GET", "/records/{key}", RouteKind::Needs(Access::Read)),
    ("DELETE", "/records/{key}", RouteKind::Needs(Access::Write)),
    ("POST", "/tus/", RouteKind::Needs(Access::Write)),
    ("OPTIONS", "/tus/", RouteKind::Open),
    ("HEAD", "/tus/{id}", RouteKind::Needs(Access::Read)),
    ("PATCH", "/tus/{id}", RouteKind::Needs(Access::Write)),
    ("DELETE", "/tus/{id}", RouteKind::Needs(Access::Write)),
    ("OPTIONS", "/tus/{id}", RouteKind::Open),
    ("POST", "/login", RouteKind::Open),
    ("GET", "/", RouteKind::Open),
    ("GET", "/assets/{name}", RouteKind::Open),
    ("GET", "/healthz", RouteKind::Open),
    ("GET", "/readyz", RouteKind::Open),
    ("GET", "/metrics", RouteKind::Open),
    ("GET", "/openapi.yaml", RouteKind::Open),
];

/// The kind of `method` on the route `path` (its pattern); `None` when the
/// route is not in [`ROUTE_KINDS`] at all.
pub fn kind_of(method: &Method, path: &str) -> Option<RouteKind> {
    let on_path = || ROUTE_KINDS.iter().filter(move |(_, p, _)| *p == path);
    let find = |m: &str| on_path().find(|(mm, _, _)| *mm == m).map(|(_, _, k)| *k);
    let found =
        find(method.as_str()).or_else(|| (method == Method::HEAD).then(|| find("GET")).flatten());
    match found {
        Some(kind) => Some(kind),
        None if on_path().next().is_some() => Some(RouteKind::OtherMethod),
        None => None,
    }
}
