//! Who a request is: LOGIN (a password, or the public identity), tokens,
//! their revocation, and login pacing. [`Authority`] produces an
//! [`Identity`]; what that identity may do is decided by
//! [`step_core::access::decide`], which the service calls for every request.
//!
//! * **Passwords.** Open mode: md5(username), the course's rule. Accounts
//!   mode: the account's argon2id hash, checked by a bounded [`Verifier`].
//!   Before any hashing, a LOGIN must pass two keyed pacers (per source
//!   address, per user name; `governor`, memory bounded by construction):
//!   beyond them it is refused at once with reason `too_many_attempts` and
//!   `retry_after`, never held asleep on its connection; a full hashing
//!   queue refuses at once with reason `busy`. Token checks never touch
//!   any of this.
//! * **The public identity.** [`PUBLIC_NAME`] is reserved: no password
//!   logs in as it in either mode. A LOGIN carrying `anonymous` (our
//!   extension, announced in capabilities) gets a token for the public user
//!   (`--public-user`, by default [`PUBLIC_NAME`]) whose scope is what
//!   `--anonymous` allows, marked public in its MAC so the current mode caps
//!   it. In open mode the md5 rule is refused for the public user too.
//! * **Revocation.** Each account has an epoch, bound into its tokens;
//!   `user passwd` sets a new one and `user remove` deletes the account.
//!   Every token check compares against the stored epoch through a short
//!   per-instance cache ([`EPOCH_CACHE_TTL`]), so every instance on the
//!   storage stops accepting the old tokens within that time.

use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::Value;
use step_core::access::{Anonymous, Identity};
use step_core::message::field;
use step_core::token::{Grant, TokenError, TokenKey};
use step_core::{Kind, Message, Operation, Problem, Status, digest};
use tracing::{error, info, warn};

use crate::accounts::{AuthMode, Busy, HashError, Verifier};
use crate::store::{Storage, StoreError};

/// The reserved name of the public identity's default namespace: no
/// password ever logs in as it, and no account of that name is created.
pub const PUBLIC_NAME: &str = "anonymous";

/// How long an instance trusts an account epoch it read: a password change
/// or removal ends the account's tokens on every instance within this.
pub const EPOCH_CACHE_TTL: Duration = Duration::from_secs(2);
/// Accounts whose epoch is cached at once.
const EPOCH_CACHE_ENTRIES: usize = 10_000;

/// What anonymous callers may do, and whose files they act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    pub anonymous: Anonymous,
    /// The public user: [`PUBLIC_NAME`], or a real account (accounts mode)
    /// that publishes with its own password.
    pub user: String,
}

impl Default for Public {
    fn default() -> Self {
        Self {
            anonymous: Anonymous::None,
            user: PUBLIC_NAME.to_owned(),
        }
    }
}

/// Bounds on password logins (accounts mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// LOGINs per minute from one source address (IPv6: one /64), in a
    /// burst of as many.
    pub per_source_per_min: u32,
    /// LOGINs per minute for one user name, in a burst of as many.
    pub per_user_per_min: u32,
    /// Password checks waiting beyond those running; more are busy.
    pub queue: usize,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            per_source_per_min: 30,
            per_user_per_min: 30,
            queue: 32,
        }
    }
}

/// Keys a keyed pacer distinguishes at most: keys are hashed (with a
/// per-process random key, so collisions cannot be aimed) into this many
/// buckets, which bounds the pacer's memory whatever peers send.
const PACER_BUCKETS: u64 = 1 << 16;
/// Checks between sweeps of buckets that have refilled.
const PACER_SWEEP_EVERY: u64 = 4096;

/// Attempts per key per minute, in a burst of as many (GCRA, `governor`);
/// beyond, refused with the time until the next is allowed.
#[derive(Debug)]
pub struct AttemptPacer {
    limiter: DefaultKeyedRateLimiter<u16>,
    hasher: std::collections::hash_map::RandomState,
    checks: AtomicU64,
}

impl AttemptPacer {
    pub fn per_minute(n: u32) -> Self {
        let n = NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::dashmap(Quota::per_minute(n)),
            hasher: std::collections::hash_map::RandomState::new(),
            checks: AtomicU64::new(0),
        }
    }

    /// Count an attempt for `key`: `Err(wait)` when it must wait first.
    pub fn attempt<K: Hash + ?Sized>(&self, key: &K) -> Result<(), Duration> {
        let bucket = (self.hasher.hash_one(key) % PACER_BUCKETS) as u16;
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PACER_SWEEP_EVERY)
        {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&bucket)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The pacing key of a source address: the address, or an IPv6 address's
/// /64 (one host usually has the whole /64).
pub fn source_key(ip: IpAddr) -> [u8; 8] {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            [4, 0, 0, 0, o[0], o[1], o[2], o[3]]
        }
        IpAddr::V6(v6) => {
            let mut k = [0u8; 8];
            k.copy_from_slice(&v6.octets()[..8]);
            k
        }
    }
}

/// Seconds to announce for a wait (at least one).
fn whole_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Paces an event server-wide to a rate, with a burst of one second's worth
/// (GCRA): within the rate nothing waits; beyond it each event waits for its
/// slot. Only refused tokens pass through here, so valid ones never wait.
#[derive(Debug)]
struct Pacer {
    interval: Duration,
    burst: Duration,
    next: std::sync::Mutex<tokio::time::Instant>,
}

impl Pacer {
    fn new(per_sec: u32) -> Self {
        Self {
            interval: Duration::from_secs(1) / per_sec.max(1),
            burst: Duration::from_secs(1),
            next: std::sync::Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait_turn(&self) {
        let now = tokio::time::Instant::now();
        let allowed_at = {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot.checked_sub(self.burst).unwrap_or(now)
        };
        if allowed_at > now {
            tokio::time::sleep_until(allowed_at).await;
        }
    }
}

/// An account's epoch as last read, and when.
#[derive(Debug, Clone, Copy)]
struct CachedEpoch {
    epoch: Option<u64>,
    read_at: std::time::Instant,
}

/// A refused token: the 403 (or, the storage unreadable, `unavailable`)
/// and whether it counts as a guess (a token was presented) and so waits
/// in the refusal pacer.
#[derive(Debug)]
pub struct TokenRefusal {
    pub message: Message,
    pub guess: bool,
}

/// How LOGIN checks passwords.
#[derive(Debug)]
enum Passwords {
    Open,
    Accounts(Arc<Verifier>),
}

/// Authentication for one service: see the module docs.
#[derive(Debug)]
pub struct Authority {
    tokens: TokenKey,
    passwords: Passwords,
    public: Public,
    store: Arc<dyn Storage>,
    epochs: quick_cache::sync::Cache<String, CachedEpoch>,
    by_source: AttemptPacer,
    by_user: AttemptPacer,
    refusals: Pacer,
    max_username_len: usize,
}

/// A LOGIN refused as the table's row says.
fn login_refusal(problem: Problem, text: impl Into<String>) -> Message {
    problem.login_response(text)
}

/// A LOGIN answered.
fn login_ok() -> Message {
    Message::response(
        Operation::Login.as_str(),
        Kind::Auth.as_str(),
        Status::Ok,
        "Login successfully",
    )
}

/// A LOGIN refused for now, with our `reason` and `retry_after`.
fn retry_later(problem: Problem, wait: Duration, text: String) -> Message {
    login_refusal(problem, text).with(field::RETRY_AFTER, whole_secs(wait))
}

impl Authority {
    pub fn new(
        store: Arc<dyn Storage>,
        tokens: TokenKey,
        token_failures_per_sec: u32,
        login: LoginLimits,
        max_username_len: usize,
    ) -> Self {
        Self {
            tokens,
            passwords: Passwords::Open,
            public: Public::default(),
            store,
            epochs: quick_cache::sync::Cache::new(EPOCH_CACHE_ENTRIES),
            by_source: AttemptPacer::per_minute(login.per_source_per_min),
            by_user: AttemptPacer::per_minute(login.per_user_per_min),
            refusals: Pacer::new(token_failures_per_sec),
            max_username_len,
        }
    }

    /// Passwords checked as `mode` says; `queue` password checks may wait.
    pub fn set_mode(&mut self, mode: AuthMode, queue: usize) -> Result<(), HashError> {
        self.passwords = match mode {
            AuthMode::Open => Passwords::Open,
            AuthMode::Accounts => Passwords::Accounts(Verifier::new(queue)?),
        };
        Ok(())
    }

    pub fn set_public(&mut self, public: Public) {
        self.public = public;
    }

    pub fn public(&self) -> &Public {
        &self.public
    }

    pub fn mode(&self) -> AuthMode {
        match self.passwords {
            Passwords::Open => AuthMode::Open,
            Passwords::Accounts(_) => AuthMode::Accounts,
        }
    }

    pub fn token_ttl(&self) -> u64 {
        self.tokens.ttl_secs()
    }

    /// Answer a LOGIN (`kind` already parsed) from `peer`, announcing `caps`.
    pub async fn login(
        &self,
        msg: &Message,
        kind: Kind,
        peer: Option<IpAddr>,
        caps: Value,
    ) -> Message {
        if kind != Kind::Auth {
            return login_refusal(Problem::TypeNotAllowed, "Type of LOGIN has to be AUTH.");
        }
        if msg.get(field::ANONYMOUS).is_some() {
            return self.login_public(msg, caps).await;
        }
        let (username, password) = match self.credentials(msg) {
            Ok(c) => c,
            Err(refusal) => return refusal,
        };
        if username == PUBLIC_NAME
            || (self.mode() == AuthMode::Open && username == self.public.user)
        {
            info!(%username, "login refused: the public identity has no password");
            return login_refusal(
                Problem::WrongPassword,
                format!(
                    "\"{username}\" is the public identity: it has no password. Log in as \
                     yourself, or send LOGIN with \"anonymous\" for what anonymous callers may do."
                ),
            );
        }
        let epoch = match &self.passwords {
            Passwords::Open => {
                if !digest::password_matches(username, password) {
                    info!(%username, "login refused: wrong password");
                    return login_refusal(Problem::WrongPassword, "Password error for login.");
                }
                0
            }
            Passwords::Accounts(verifier) => {
                match self.check_account(verifier, username, password, peer).await {
                    Ok(epoch) => epoch,
                    Err(refusal) => return refusal,
                }
            }
        };
        info!(%username, "login");
        login_ok()
            .with(
                field::TOKEN,
                self.tokens
                    .mint_with(username, now_unix(), Grant::user(epoch)),
            )
            .with(field::CAPABILITIES, caps)
    }

    fn credentials<'m>(&self, msg: &'m Message) -> Result<(&'m str, &'m str), Message> {
        let username = match msg.str_field(field::USERNAME) {
            Ok(Some(u)) if !u.is_empty() && u.len() <= self.max_username_len => u,
            Ok(None) => {
                return Err(login_refusal(
                    Problem::FieldMissing,
                    "\"username\" has to be a field for LOGIN",
                ));
            }
            _ => {
                return Err(login_refusal(
                    Problem::FieldMissing,
                    format!(
                        "\"username\" must be a non-empty string of at most {} bytes",
                        self.max_username_len
                    ),
                ));
            }
        };
        match msg.str_field(field::PASSWORD) {
            Ok(Some(p)) => Ok((username, p)),
            Ok(None) => Err(login_refusal(
                Problem::FieldMissing,
                "\"password\" has to be a field for LOGIN",
            )),
            Err(e) => Err(login_refusal(Problem::FieldMissing, e.to_string())),
        }
    }

    /// Accounts mode: paced, then the account's hash checked; its epoch.
    async fn check_account(
        &self,
        verifier: &Verifier,
        username: &str,
        password: &str,
        peer: Option<IpAddr>,
    ) -> Result<u64, Message> {
        if let Some(ip) = peer
            && let Err(wait) = self.by_source.attempt(&source_key(ip))
        {
            warn!(%username, "login refused unchecked: too many attempts from this address");
            return Err(retry_later(
                Problem::TooManyAttempts,
                wait,
                format!(
                    "Too many login attempts from your address; retry in {} s.",
                    whole_secs(wait)
                ),
            ));
        }
        if let Err(wait) = self.by_user.attempt(username) {
            warn!(%username, "login refused unchecked: too many attempts for this user");
            return Err(retry_later(
                Problem::TooManyAttempts,
                wait,
                format!(
                    "Too many login attempts for this user; retry in {} s.",
                    whole_secs(wait)
                ),
            ));
        }
        let account = match self.store.account_get(username).await {
            Ok(a) => a,
            Err(e) => {
                error!(%username, error = %e, "login refused: cannot read the accounts");
                return Err(login_refusal(
                    Problem::Unavailable,
                    "Login is unavailable: the server cannot read its accounts.",
                ));
            }
        };
        let stored = account.as_ref().map(|a| a.password_hash.as_str());
        match verifier.verify(stored, password).await {
            Ok(true) => Ok(account.map_or(0, |a| a.epoch)),
            Ok(false) => {
                // One answer for an unknown user and a wrong password; the
                // log (peer in the connection's span) tells them apart.
                warn!(%username, known = stored.is_some(), "login refused: wrong user or password");
                Err(login_refusal(
                    Problem::WrongPassword,
                    "Password error for login.",
                ))
            }
            Err(Busy) => {
                warn!(%username, "login refused unchecked: every password check is taken");
                Err(retry_later(
                    Problem::Busy,
                    Duration::from_secs(1),
                    "The server is busy checking other logins; retry in 1 s.".into(),
                ))
            }
        }
    }

    /// LOGIN as the public identity: the scope asked for, at most what the
    /// anonymous mode allows.
    async fn login_public(&self, msg: &Message, caps: Value) -> Message {
        let want = match msg.str_field(field::ANONYMOUS) {
            Ok(Some("read")) => Anonymous::Read,
            Ok(Some("write")) => Anonymous::Write,
            _ => {
                return login_refusal(
                    Problem::FieldMissing,
                    "\"anonymous\" must be \"read\" or \"write\"",
                );
            }
        };
        let Some(scope) = want.min(self.public.anonymous).scope() else {
            // With what the server can do: a gateway's first connection
            // learns it this way, whatever the modes, at no password check.
            return login_refusal(
                Problem::NoAnonymous,
                "Anonymous access is off on this server: log in with a user name and password.",
            )
            .with(field::CAPABILITIES, caps);
        };
        let user = self.public.user.as_str();
        let epoch = match self.epoch_of(user).await {
            Ok(Some(epoch)) => epoch,
            Ok(None) => {
                error!(public_user = %user, "anonymous login refused: the public user has no account");
                return login_refusal(
                    Problem::NoAnonymous,
                    "Anonymous access is unavailable: the public user has no account.",
                );
            }
            Err(e) => {
                error!(error = %e, "anonymous login refused: cannot read the accounts");
                return login_refusal(
                    Problem::Unavailable,
                    "Login is unavailable: the server cannot read its accounts.",
                );
            }
        };
        let grant = Grant {
            scope,
            epoch,
            public: true,
        };
        login_ok()
            .with(field::TOKEN, self.tokens.mint_with(user, now_unix(), grant))
            .with(field::USERNAME, user)
            .with(field::SCOPE, scope.as_str())
            .with(field::CAPABILITIES, caps)
    }

    /// The epoch `user`'s tokens must carry now; `None`: no such account
    /// (its tokens are void). Read through the short cache.
    async fn epoch_of(&self, user: &str) -> Result<Option<u64>, StoreError> {
        if self.mode() == AuthMode::Open || user == PUBLIC_NAME {
            return Ok(Some(0));
        }
        let fresh = |c: &CachedEpoch| c.read_at.elapsed() < EPOCH_CACHE_TTL;
        for _ in 0..2 {
            match self.epochs.get_value_or_guard_async(user).await {
                Ok(c) if fresh(&c) => return Ok(c.epoch),
                Ok(c) => {
                    self.epochs.remove_if(user, |now| now.read_at == c.read_at);
                }
                Err(guard) => {
                    let epoch = self.store.account_get(user).await?.map(|a| a.epoch);
                    let _ = guard.insert(CachedEpoch {
                        epoch,
                        read_at: std::time::Instant::now(),
                    });
                    return Ok(epoch);
                }
            }
        }
        Ok(self.store.account_get(user).await?.map(|a| a.epoch))
    }

    /// The identity `token` proves, or why not.
    pub async fn identify(&self, token: &str, op: Operation) -> Result<Identity, TokenRefusal> {
        let refuse = |text: String| TokenRefusal {
            message: Problem::BadToken.token_response(op.as_str(), text),
            guess: true,
        };
        let claim = TokenKey::claim(token).map_err(|e| refuse(e.to_string()))?;
        let epoch = match self.epoch_of(&claim.user).await {
            Ok(Some(epoch)) => epoch,
            Ok(None) => {
                return Err(refuse(
                    "Token is no longer valid: its account is gone. Please login again.".into(),
                ));
            }
            Err(e) => {
                error!(error = %e, "cannot read the accounts to check a token");
                let mut r = refuse("The server cannot check tokens now; retry.".into());
                // A token check refuses with 403 only, whatever the reason.
                r.message =
                    Problem::Unavailable.token_response(op.as_str(), r.message.status_msg());
                r.guess = false;
                return Err(r);
            }
        };
        let grant = match self.tokens.check(&claim, now_unix(), epoch) {
            Ok(grant) => grant,
            Err(TokenError::Signature) if epoch != 0 => {
                // Wrong, or minted under an earlier epoch: the same to a
                // guesser, and a person needs only to log in again.
                return Err(refuse(
                    "Token is wrong, or was ended by a password change. Please login again.".into(),
                ));
            }
            Err(e) => return Err(refuse(e.to_string())),
        };
        let scope = if grant.public || claim.user == PUBLIC_NAME {
            // The public identity has what the mode allows now, whatever
            // it had when the token was minted.
            match Anonymous::of_scope(grant.scope)
                .min(self.public.anonymous)
                .scope()
            {
                Some(scope) => scope,
                None => {
                    return Err(refuse(
                        "Anonymous access is off on this server: log in with a user name and \
                         password."
                            .into(),
                    ));
                }
            }
        } else {
            grant.scope
        };
        Ok(Identity {
            user: claim.user,
            scope,
        })
    }

    /// [`Authority::identify`] for a request's `token` field, the refusal
    /// paced when it is a guess.
    pub async fn authenticate(&self, msg: &Message, op: Operation) -> Result<Identity, Message> {
        let refusal = match msg.get(field::TOKEN) {
            None => TokenRefusal {
                message: Problem::BadToken.token_response(op.as_str(), "No token."),
                guess: false,
            },
            Some(Value::String(t)) => match self.identify(t, op).await {
                Ok(identity) => return Ok(identity),
                Err(r) => r,
            },
            Some(_) => TokenRefusal {
                message: Problem::BadToken.token_response(op.as_str(), "Token format is wrong."),
                guess: true,
            },
        };
        // Why, never the token: a token is a credential.
        tracing::debug!(%op, reason = refusal.message.status_msg(), "token refused");
        // Only a presented token can be a guess. A request with no token at
        // all (health probes) is refused at once, so a guessing flood cannot
        // make the service look dead.
        if refusal.guess {
            self.refusals.wait_turn().await;
        }
        Err(refusal.message)
    }

    /// The scope anonymous callers get here, if any (for capabilities).
    pub fn anonymous(&self) -> Option<Anonymous> {
        self.public.anonymous.scope().map(|_| self.public.anonymous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pacer_allows_its_burst_then_says_how_long_to_wait() {
        let pacer = AttemptPacer::per_minute(3);
        for _ in 0..3 {
            assert!(pacer.attempt("alice").is_ok());
        }
        let wait = pacer.attempt("alice").expect_err("paced");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(pacer.attempt("bob").is_ok(), "other keys are apart");
        assert_eq!(whole_secs(Duration::from_millis(1)), 1);
        assert_eq!(whole_secs(Duration::from_secs(3)), 3);
    }

    #[test]
    fn sources_are_addresses_or_ipv6_slash_64s() {
        let v4: IpAddr = "192.0.2.7".parse().expect("ip");
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!(source_key(v4), source_key(mapped));
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().expect("ip");
        let c: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert_eq!(source_key(a), source_key(b));
        assert_ne!(source_key(a), source_key(c));
    }
}
