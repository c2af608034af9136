//! Who a request acts for, and whether it may: the gateway's side of the
//! one trust model ([`step_core::access`]).
//!
//! Every route declares what it does ([`crate::route_table::ROUTE_KINDS`]);
//! [`authorize`], a layer over every route, resolves the caller of each
//! route that needs one and calls [`decide`] before the handler runs:
//!
//! * `Authorization: Bearer <token>` — a STEP token, used as it is. In
//!   process its scope is known here; over `--backend` the STEP server
//!   decides again for every request it forwards, so a read-only token is
//!   refused either way.
//! * `Authorization: Basic base64(user:password)` (`curl -u alice:secret`) —
//!   the gateway logs in to the STEP server as that user. The token is cached
//!   per user and password digest (never the password) for half its TTL, so
//!   a burst of requests costs one password check on the server; the cache
//!   is bounded ([`BASIC_CACHE_ENTRIES`]). Logins are paced per client
//!   address (by the embedded server, or here in front of `--backend`) and
//!   use a lane of connections of their own.
//! * Neither — the public identity, with what `--anonymous` asks for and
//!   the STEP server grants (its token comes from an anonymous LOGIN, never
//!   from a password).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use step_core::Problem;
use step_core::access::{Access, Anonymous, Refusal, Scope, decide};

use crate::AppState;
use crate::access_log::RequestUser;
use crate::backend::token_reuse;
use crate::error::GatewayError;
use crate::route_table::RouteKind;

/// The address of the HTTP client a request came from, set on every
/// request by the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The caller of a request: the STEP token it acts with, who that is, and
/// what it may do where the gateway knows.
#[derive(Debug, Clone)]
pub struct Auth {
    pub token: String,
    /// The token is the public identity's: a refusal (the server restarted
    /// with a new secret) renews it and retries.
    pub default: bool,
    pub user: String,
    /// What the token allows, where the gateway knows (anonymous, Basic,
    /// in process); `None`: a Bearer token the STEP server checks.
    pub scope: Option<Scope>,
    /// Set for a Basic login (to renew its token when refused).
    basic: Option<BasicLogin>,
}

/// A cached Basic login: the user and a digest of the password.
type BasicKey = (String, [u8; 32]);

#[derive(Debug, Clone)]
struct CachedLogin {
    token: String,
    renew_at: Instant,
    /// The backend's connection-loss count when it was minted: a backend
    /// that went away may come back with a new secret.
    losses: u64,
}

/// Most Basic logins cached at once; beyond, the least used are dropped.
pub const BASIC_CACHE_ENTRIES: usize = 10_000;

/// Tokens of Basic logins, keyed by user and a digest of the password
/// salted with a per-process secret: the cache holds no password, nor
/// anything that tells one more cheaply than asking the server.
#[derive(Debug)]
pub struct BasicLogins {
    salt: [u8; 32],
    cache: quick_cache::sync::Cache<BasicKey, CachedLogin>,
}

impl Default for BasicLogins {
    fn default() -> Self {
        let mut salt = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut salt);
        Self {
            salt,
            cache: quick_cache::sync::Cache::new(BASIC_CACHE_ENTRIES),
        }
    }
}

impl BasicLogins {
    fn key(&self, user: &str, password: &str) -> BasicKey {
        let mut h = Sha256::new();
        h.update(self.salt);
        h.update(password.as_bytes());
        (user.to_owned(), h.finalize().into())
    }

    /// The token for `user:password`: cached, or from a LOGIN now. Requests
    /// with the same credentials arriving meanwhile wait for that one LOGIN
    /// (the cache's placeholder) rather than each costing a password check.
    async fn token(
        &self,
        st: &AppState,
        user: &str,
        password: &str,
        client: Option<IpAddr>,
    ) -> Result<(String, BasicKey), GatewayError> {
        let key = self.key(user, password);
        let losses = st.backend.connection_losses();
        let usable = |c: &CachedLogin| Instant::now() < c.renew_at && c.losses == losses;
        // A stale entry is dropped and looked up again (once: a second
        // stale one is another request's fresh login gone stale at once).
        for _ in 0..2 {
            match self.cache.get_value_or_guard_async(&key).await {
                Ok(c) if usable(&c) => return Ok((c.token, key)),
                Ok(c) => {
                    self.forget(&key, &c.token);
                }
                Err(guard) => {
                    let c = login(st, user, password, losses, client).await?;
                    let _ = guard.insert(c.clone());
                    return Ok((c.token, key));
                }
            }
        }
        let c = login(st, user, password, losses, client).await?;
        Ok((c.token, key))
    }

    fn forget(&self, key: &BasicKey, stale: &str) {
        self.cache.remove_if(key, |c| c.token == stale);
    }
}

async fn login(
    st: &AppState,
    user: &str,
    password: &str,
    losses: u64,
    client: Option<IpAddr>,
) -> Result<CachedLogin, GatewayError> {
    // In process the embedded server paces logins by the client's address;
    // in front of --backend the server sees only this gateway's, so the
    // gateway paces them here, before the server spends a password check.
    if !st.backend.is_in_process()
        && let Some(ip) = client
        && let Err(wait) = st.login_pacer.attempt(&step_server::auth::source_key(ip))
    {
        return Err(GatewayError::TooManyAttempts(wait.as_secs().max(1)));
    }
    let minted = Instant::now();
    match st.backend.login_caps(user, password, client).await {
        Ok((token, caps)) => Ok(CachedLogin {
            token,
            renew_at: minted + token_reuse(caps.token_ttl),
            losses,
        }),
        Err(GatewayError::Step {
            problem: Problem::WrongPassword,
            ..
        }) => Err(GatewayError::Unauthorized(
            "wrong user or password (HTTP Basic): check both and try again".into(),
        )),
        Err(e) => Err(e),
    }
}

/// A Basic login of this request: where its token is cached, and the
/// password (sent with the request) to log in again if the token is refused.
#[derive(Clone)]
struct BasicLogin {
    key: BasicKey,
    password: String,
}

impl std::fmt::Debug for BasicLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicLogin")
            .field("user", &self.key.0)
            .finish_non_exhaustive()
    }
}

fn unauthorized(text: &str) -> GatewayError {
    GatewayError::Unauthorized(text.into())
}

/// `user:password` from a Basic credential.
fn basic_credentials(encoded: &str) -> Result<(String, String), GatewayError> {
    let bad = || unauthorized("Basic credentials must be base64 of \"user:password\"");
    let decoded = STANDARD.decode(encoded.trim()).map_err(|_| bad())?;
    let text = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, password) = text.split_once(':').ok_or_else(bad)?;
    if user.is_empty() {
        return Err(bad());
    }
    Ok((user.to_owned(), password.to_owned()))
}

/// The user a token names (not verified: the STEP server does that).
fn token_user(token: &str) -> String {
    step_core::token::claimed_user(token).unwrap_or_else(|| "-".into())
}

impl Auth {
    /// Who the request acts for: its credential, or the public identity.
    async fn resolve(
        headers: &HeaderMap,
        st: &AppState,
        client: Option<IpAddr>,
    ) -> Result<Auth, GatewayError> {
        if let Some(value) = headers.get(header::AUTHORIZATION) {
            let text = value.to_str().unwrap_or_default().trim();
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
                let scope = st.backend.scope_of(rest).await?;
                return Ok(Auth {
                    token: rest.to_owned(),
                    default: false,
                    user: token_user(rest),
                    scope,
                    basic: None,
                });
            }
            if scheme.eq_ignore_ascii_case("basic") && !rest.is_empty() {
                let (user, password) = basic_credentials(rest)?;
                let (token, key) = st.logins.token(st, &user, &password, client).await?;
                return Ok(Auth {
                    token,
                    default: false,
                    user,
                    scope: Some(Scope::Full),
                    basic: Some(BasicLogin { key, password }),
                });
            }
            return Err(unauthorized(
                "Authorization must be \"Bearer <token>\" or \"Basic <base64 user:password>\"",
            ));
        }
        if st.anonymous == Anonymous::None {
            return Err(needs_credentials("credentials are required here"));
        }
        match st.backend.default_token().await {
            Ok(Some(public)) => Ok(Auth {
                token: public.token,
                default: true,
                user: public.user,
                scope: Some(public.scope),
                basic: None,
            }),
            Ok(None) => Err(needs_credentials("credentials are required here")),
            Err(GatewayError::Step {
                problem: Problem::NoAnonymous | Problem::WrongPassword,
                ..
            }) => Err(needs_credentials(
                "this server does not serve anonymous callers",
            )),
            Err(e) => Err(e),
        }
    }

    /// After the server refused this request's token: a fresh one where the
    /// gateway made it (anonymous, Basic), else `None`.
    pub async fn renewed(&self, st: &AppState) -> Result<Option<String>, GatewayError> {
        if self.default {
            let public = st.backend.renew_default_token(&self.token).await?;
            return Ok(public.map(|p| p.token));
        }
        if let Some(basic) = &self.basic {
            st.logins.forget(&basic.key, &self.token);
            let (token, _) = st
                .logins
                .token(st, &self.user, &basic.password, None)
                .await?;
            return Ok(Some(token));
        }
        Ok(None)
    }

    /// [`decide`] for this caller and `access`, as an HTTP answer: an
    /// anonymous caller is asked for credentials (401), a credential that
    /// cannot do it is refused (403).
    fn may(&self, access: Access) -> Result<(), GatewayError> {
        // A Bearer token whose scope only the STEP server knows is decided
        // there, for every request forwarded.
        let scope = self.scope.unwrap_or(Scope::Full);
        match decide(Some(scope), access) {
            Ok(()) => Ok(()),
            Err(Refusal::ReadOnly) if self.default => {
                Err(needs_credentials("anonymous requests may only read here"))
            }
            Err(Refusal::ReadOnly) => Err(GatewayError::ReadOnly(
                "this token may only read: log in as a user to write".into(),
            )),
            Err(other) => Err(GatewayError::ReadOnly(other.to_string())),
        }
    }
}

/// A 401 that says how to send credentials.
fn needs_credentials(what: &str) -> GatewayError {
    GatewayError::Unauthorized(format!(
        "{what}: send HTTP Basic (curl -u user:password) or a token from POST /login \
         (Authorization: Bearer <token>)"
    ))
}

/// The layer over every route: look up what the route does, resolve its
/// caller, [`decide`], and hand the caller to the handler. A route with no
/// declared kind is refused (fail closed).
pub async fn authorize(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let Some(path) = req.extensions().get::<MatchedPath>().cloned() else {
        // No route matched: the fallback answers 404.
        return next.run(req).await;
    };
    let access = match crate::route_table::kind_of(req.method(), path.as_str()) {
        Some(RouteKind::Open) | Some(RouteKind::OtherMethod) => return next.run(req).await,
        Some(RouteKind::Needs(access)) => access,
        None => {
            tracing::error!(route = %path.as_str(), method = %req.method(), "a route without a declared access kind");
            return GatewayError::Internal(
                "this route declares no access kind; it is refused until it does".into(),
            )
            .into_response();
        }
    };
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0.ip());
    let auth = match Auth::resolve(req.headers(), &st, client).await {
        Ok(auth) => auth,
        Err(e) => return e.into_response(),
    };
    if let Some(slot) = req.extensions().get::<RequestUser>() {
        slot.set(auth.user.as_str());
    }
    if let Err(e) = auth.may(access) {
        return e.into_response();
    }
    req.extensions_mut().insert(auth);
    next.run(req).await
}

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        _state: &Arc<AppState>,
    ) -> Result<Self, GatewayError> {
        parts.extensions.get::<Auth>().cloned().ok_or_else(|| {
            GatewayError::Internal(
                "the route's caller was not resolved: its access kind says it needs none".into(),
            )
        })
    }
}

/// Middleware: a 401 to a script's request keeps only the Bearer
/// challenge. A Basic challenge makes browsers open their own password
/// dialog over the page, which has its own sign-in form (and while that
/// dialog waits, the page's request never ends). A script's request is one
/// marked `X-Requested-With: XMLHttpRequest` (as the page sends), or any
/// request a browser makes from a page rather than a navigation
/// (`Sec-Fetch-Mode` other than `navigate`): fetch, XHR, images, media.
pub async fn script_challenge(req: Request, next: Next) -> Response {
    let h = req.headers();
    let marked = h
        .get("x-requested-with")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"xmlhttprequest"));
    let from_page = h
        .get("sec-fetch-mode")
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"navigate"));
    let script = marked || from_page;
    let mut resp = next.run(req).await;
    if script && resp.status() == StatusCode::UNAUTHORIZED {
        let h = resp.headers_mut();
        h.remove(header::WWW_AUTHENTICATE);
        h.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        let enc = |s: &str| STANDARD.encode(s);
        assert_eq!(
            basic_credentials(&enc("alice:se:cret")).expect("ok"),
            ("alice".into(), "se:cret".into())
        );
        assert_eq!(
            basic_credentials(&enc("bob:")).expect("ok"),
            ("bob".into(), String::new())
        );
        for bad in [enc("nocolon"), enc(":pw"), "%%%".into()] {
            assert!(basic_credentials(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_names_its_user() {
        let key = step_core::token::TokenKey::new(b"s", 60);
        assert_eq!(
            token_user(&key.mint("alice.smith", 1_000_000)),
            "alice.smith"
        );
        assert_eq!(token_user("garbage"), "-");
    }
}
