//! Who a request acts for, and what it may do: the gateway's HTTP rules for
//! authentication, in one place.
//!
//! * `Authorization: Bearer <token>` — a STEP token from `POST /login`, used
//!   as it is (the STEP server checks it and scopes everything to its user).
//! * `Authorization: Basic base64(user:password)` (`curl -u alice:secret`) —
//!   the gateway logs in to the STEP server as that user. The token is cached
//!   per user and password digest (never the password) for half its TTL, so
//!   a burst of requests costs one password check on the server; the cache
//!   is bounded ([`BASIC_CACHE_ENTRIES`]).
//! * Neither — the anonymous user (`--default-user`, `anonymous`), allowed
//!   what `--anonymous none|read|write` says: `read` is GET and HEAD (and
//!   OPTIONS), everything else is a write.
//!
//! Every route that touches files or records takes [`Auth`] as an
//! extractor. The resolved user is also recorded in the request's
//! [`RequestUser`] slot, so the access log names the user.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use step_core::Status;

use crate::AppState;
use crate::access_log::RequestUser;
use crate::backend::token_reuse;
use crate::error::GatewayError;

/// `--anonymous`: what requests without credentials may do.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Anonymous {
    /// Nothing: 401 with a `WWW-Authenticate` challenge.
    None,
    /// GET and HEAD only, as the anonymous user.
    Read,
    /// Everything, as the anonymous user (the README's bare curl works).
    #[default]
    Write,
}

/// What a request is about to do, from its method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
}

impl Action {
    pub fn of(method: &Method) -> Action {
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            Action::Read
        } else {
            Action::Write
        }
    }
}

/// The caller of a request: the STEP token it acts with, and who that is.
#[derive(Debug, Clone)]
pub struct Auth {
    pub token: String,
    /// The token is the gateway's anonymous (default) user's: a refusal
    /// (the server restarted with a new secret) renews it and retries.
    pub default: bool,
    pub user: String,
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
                    let c = login(st, user, password, losses).await?;
                    let _ = guard.insert(c.clone());
                    return Ok((c.token, key));
                }
            }
        }
        let c = login(st, user, password, losses).await?;
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
) -> Result<CachedLogin, GatewayError> {
    let minted = Instant::now();
    match st.backend.login_caps(user, password).await {
        Ok((token, caps)) => Ok(CachedLogin {
            token,
            renew_at: minted + token_reuse(caps.token_ttl),
            losses,
        }),
        Err(GatewayError::Step {
            status: Status::WrongPassword,
            ..
        }) => Err(GatewayError::Unauthorized(
            "wrong user or password (HTTP Basic)".into(),
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
    async fn resolve(parts: &Parts, st: &AppState) -> Result<Auth, GatewayError> {
        if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
            let text = value.to_str().unwrap_or_default().trim();
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, rest) = text.split_once(' ').unwrap_or((text, ""));
            let rest = rest.trim();
            if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
                return Ok(Auth {
                    token: rest.to_owned(),
                    default: false,
                    user: token_user(rest),
                    basic: None,
                });
            }
            if scheme.eq_ignore_ascii_case("basic") && !rest.is_empty() {
                let (user, password) = basic_credentials(rest)?;
                let (token, key) = st.logins.token(st, &user, &password).await?;
                return Ok(Auth {
                    token,
                    default: false,
                    user,
                    basic: Some(BasicLogin { key, password }),
                });
            }
            return Err(unauthorized(
                "Authorization must be \"Bearer <token>\" or \"Basic <base64 user:password>\"",
            ));
        }
        let allowed = match (st.anonymous, Action::of(&parts.method)) {
            (Anonymous::Write, _) | (Anonymous::Read, Action::Read) => true,
            (Anonymous::Read, Action::Write) | (Anonymous::None, _) => false,
        };
        if !allowed {
            let what = if st.anonymous == Anonymous::Read {
                "anonymous requests may only read here"
            } else {
                "credentials are required here"
            };
            return Err(GatewayError::Unauthorized(format!(
                "{what}: send HTTP Basic (curl -u user:password) or a token from POST /login \
                 (Authorization: Bearer <token>)"
            )));
        }
        let token = match st.backend.default_token().await {
            Err(GatewayError::Step {
                status: Status::WrongPassword,
                ..
            }) => {
                return Err(GatewayError::Unauthorized(format!(
                    "the STEP server refuses the anonymous user {:?} (accounts mode with no \
                     account for it): send HTTP Basic (curl -u user:password) or a token",
                    st.http.default_user
                )));
            }
            other => other?,
        };
        match token {
            Some(token) => Ok(Auth {
                token,
                default: true,
                user: st.http.default_user.clone(),
                basic: None,
            }),
            None => Err(unauthorized("a token is required")),
        }
    }

    /// After the server refused this request's token: a fresh one where the
    /// gateway made it (anonymous, Basic), else `None`.
    pub async fn renewed(&self, st: &AppState) -> Result<Option<String>, GatewayError> {
        if self.default {
            return st.backend.renew_default_token(&self.token).await;
        }
        if let Some(basic) = &self.basic {
            st.logins.forget(&basic.key, &self.token);
            let (token, _) = st.logins.token(st, &self.user, &basic.password).await?;
            return Ok(Some(token));
        }
        Ok(None)
    }
}

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, GatewayError> {
        let auth = Auth::resolve(parts, state).await?;
        if let Some(slot) = parts.extensions.get::<RequestUser>() {
            slot.set(auth.user.as_str());
        }
        Ok(auth)
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
    fn reads_are_get_and_head() {
        assert_eq!(Action::of(&Method::GET), Action::Read);
        assert_eq!(Action::of(&Method::HEAD), Action::Read);
        for m in [Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
            assert_eq!(Action::of(&m), Action::Write, "{m}");
        }
    }

    #[tokio::test]
    async fn the_extractor_records_the_user_for_the_access_log() {
        use clap::Parser;
        let args = crate::config::GatewayArgs::try_parse_from(["gateway", "--pool-wait-ms", "100"])
            .expect("flags");
        let backend = crate::backend::Backend::new(
            "127.0.0.1:9".into(),
            args.transfer,
            None,
            crate::metrics::Metrics::new(),
        );
        let state = AppState::new(backend, args.http);
        let token = step_core::token::TokenKey::new(b"s", 60).mint("alice", 1_000_000);
        let slot = RequestUser::default();
        let (mut parts, ()) = axum::http::Request::builder()
            .uri("/files/x")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .extension(slot.clone())
            .body(())
            .expect("request")
            .into_parts();
        let auth = Auth::from_request_parts(&mut parts, &state)
            .await
            .expect("a bearer token needs no backend");
        assert_eq!(auth.user, "alice");
        assert_eq!(slot.get(), Some("alice"));
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
