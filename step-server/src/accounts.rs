//! Who may log in: the two `--auth` modes and the password hashes of
//! accounts mode.
//!
//! * `open` (the default): the reference's rule, password = md5(username) as
//!   hex, so every course client works unchanged — and anyone can act as
//!   anyone. Accounts in the storage are ignored.
//! * `accounts`: LOGIN succeeds only for an account in the storage
//!   ([`crate::store::Storage::account_get`]) whose argon2id hash the
//!   password matches. An unknown user and a wrong password get the same
//!   answer after the same work (an unknown user is checked against a dummy
//!   hash), so the answer does not tell which names exist.
//!
//! Tokens are the same in both modes (keyed with the token secret). In
//! accounts mode each also carries the account's epoch in its keyed digits,
//! so a password change (a new epoch) or the account's removal ends it
//! (see [`crate::auth`]); change the token secret to end every token at once.
//!
//! Password checks are bounded: a few hash at once ([`Verifier`]), a
//! bounded number wait, and beyond that a LOGIN is refused at once as busy
//! rather than queued — a flood of wrong passwords cannot grow a queue
//! that honest logins then wait behind.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use tokio::sync::Semaphore;
use tracing::error;

/// `--auth`: how LOGIN checks a password.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMode {
    /// password = md5(username), as the reference (course clients work).
    #[default]
    Open,
    /// Passwords checked against the accounts in the storage (argon2id).
    Accounts,
}

impl std::fmt::Display for AuthMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMode::Open => "open",
            AuthMode::Accounts => "accounts",
        })
    }
}

/// Why a password could not be hashed (the hasher's own failure: never the
/// password's fault, as any bytes are a password).
#[derive(Debug, thiserror::Error)]
#[error("cannot hash the password: {0}")]
pub struct HashError(String);

/// A new argon2id PHC string for `password` (argon2's default cost,
/// OWASP's minimum: 19 MiB, 2 passes; a random salt). CPU-heavy: run it
/// off the async threads.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    let salt = SaltString::encode_b64(&bytes).map_err(|e| HashError(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError(e.to_string()))
}

/// Whether `phc` is a hash [`PasswordVerifier`] can check (for imports).
pub fn is_valid_hash(phc: &str) -> bool {
    PasswordHash::new(phc).is_ok_and(|h| h.algorithm.as_str().starts_with("argon2"))
}

/// Checks passwords against hashes, a few at a time, off the async threads,
/// with a bounded number waiting.
#[derive(Debug)]
pub struct Verifier {
    /// Verifications running at once: argon2 takes a core for tens of
    /// milliseconds, so a login flood must not take every core.
    hashing: Arc<Semaphore>,
    /// Verifications running or waiting; none free means busy.
    admitted: Arc<Semaphore>,
    /// What an unknown user's password is checked against, so that a
    /// refusal costs the same whether or not the user exists.
    dummy: String,
}

/// Every password check is taken: retry in a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server is busy checking other passwords")]
pub struct Busy;

/// How many verifications run at once on this machine: half the cores
/// (at least one), so token requests keep the rest.
pub fn hashing_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}

impl Verifier {
    /// A verifier running [`hashing_slots`] at once with up to `queue` more
    /// waiting.
    pub fn new(queue: usize) -> Result<Arc<Verifier>, HashError> {
        let running = hashing_slots();
        let mut secret = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        Ok(Arc::new(Verifier {
            hashing: Arc::new(Semaphore::new(running)),
            admitted: Arc::new(Semaphore::new(running + queue)),
            dummy: hash_password(&hex::encode(secret))?,
        }))
    }

    /// Whether `password` matches `stored` (a PHC string); with no stored
    /// hash, the same work is done against the dummy and the answer is no.
    /// [`Busy`] at once when every slot, running or waiting, is taken.
    pub async fn verify(&self, stored: Option<&str>, password: &str) -> Result<bool, Busy> {
        let admitted = Arc::clone(&self.admitted)
            .try_acquire_owned()
            .map_err(|_| Busy)?;
        let exists = stored.is_some();
        let hash = stored.unwrap_or(&self.dummy).to_owned();
        let password = password.to_owned();
        let Ok(permit) = Arc::clone(&self.hashing).acquire_owned().await else {
            return Ok(false);
        };
        // The permits go with the work: a request cancelled while it runs
        // does not free its core for another verification early.
        let checked = tokio::task::spawn_blocking(move || {
            let _permits = (permit, admitted);
            match PasswordHash::new(&hash) {
                Ok(parsed) => Argon2::default()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok(),
                Err(e) => {
                    error!(error = %e, "a stored password hash cannot be read; that account cannot log in");
                    false
                }
            }
        })
        .await;
        Ok(exists && checked.unwrap_or(false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_their_password_only() {
        let v = Verifier::new(4).expect("verifier");
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(is_valid_hash(&h));
        assert!(!is_valid_hash("5f4dcc3b5aa765d61d8327deb882cf99"));
        assert_eq!(v.verify(Some(&h), "correct horse").await, Ok(true));
        assert_eq!(v.verify(Some(&h), "correct horse ").await, Ok(false));
        assert_eq!(v.verify(None, "correct horse").await, Ok(false));
        assert_eq!(v.verify(Some("not a hash"), "x").await, Ok(false));
        assert_ne!(h, hash_password("correct horse").expect("hash"), "salted");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn beyond_the_queue_a_check_is_refused_at_once() {
        let v = Verifier::new(0).expect("verifier");
        let h = hash_password("pw").expect("hash");
        let slots = hashing_slots();
        let running: Vec<_> = (0..slots)
            .map(|_| {
                let (v, h) = (Arc::clone(&v), h.clone());
                tokio::spawn(async move { v.verify(Some(&h), "pw").await })
            })
            .collect();
        // Wait until every slot is taken (the admitted count says so).
        while v.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(v.verify(Some(&h), "pw").await, Err(Busy));
        for r in running {
            assert_eq!(r.await.expect("join"), Ok(true));
        }
        assert_eq!(v.verify(Some(&h), "pw").await, Ok(true), "free again");
    }
}
