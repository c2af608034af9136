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

/// Checks passwords against hashes on a few threads of its own, with a
/// bounded queue in front of them.
///
/// Dedicated threads rather than the runtime's blocking pool: each argon2
/// check allocates its 19 MiB on the thread that runs it, and the allocator
/// keeps that memory per thread; on a pool of hundreds of threads a login
/// flood grew the server to gigabytes. Here memory stays at one check's
/// worth per hashing thread.
#[derive(Debug)]
pub struct Verifier {
    /// Checks waiting for a hashing thread; full means busy.
    jobs: async_channel::Sender<Check>,
    /// What an unknown user's password is checked against, so that a
    /// refusal costs the same whether or not the user exists.
    dummy: String,
}

/// One password check for a hashing thread.
struct Check {
    hash: String,
    password: String,
    answer: tokio::sync::oneshot::Sender<bool>,
}

/// Every password check is taken: retry in a moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server is busy checking other passwords")]
pub struct Busy;

/// How many passwords are checked at once on this machine: half the cores
/// (at least one), so token requests keep the rest.
pub fn hashing_slots() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).max(1)
}

/// Whether `password` matches the PHC string `hash` (CPU-heavy).
fn matches(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(e) => {
            error!(error = %e, "a stored password hash cannot be read; that account cannot log in");
            false
        }
    }
}

impl Verifier {
    /// A verifier with [`hashing_slots`] hashing threads and up to `queue`
    /// checks waiting (at least one). The threads end with the verifier.
    pub fn new(queue: usize) -> Result<Arc<Verifier>, HashError> {
        let mut secret = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        let (jobs, waiting) = async_channel::bounded::<Check>(queue.max(1));
        for i in 0..hashing_slots() {
            let waiting = waiting.clone();
            std::thread::Builder::new()
                .name(format!("password-check-{i}"))
                .spawn(move || {
                    while let Ok(check) = waiting.recv_blocking() {
                        // Nobody waits for a check whose LOGIN went away.
                        if !check.answer.is_closed() {
                            let _ = check.answer.send(matches(&check.hash, &check.password));
                        }
                    }
                })
                .map_err(|e| HashError(format!("cannot start a password-check thread: {e}")))?;
        }
        Ok(Arc::new(Verifier {
            jobs,
            dummy: hash_password(&hex::encode(secret))?,
        }))
    }

    /// Whether `password` matches `stored` (a PHC string); with no stored
    /// hash, the same work is done against the dummy and the answer is no.
    /// [`Busy`] at once when the queue is full.
    pub async fn verify(&self, stored: Option<&str>, password: &str) -> Result<bool, Busy> {
        let (answer, checked) = tokio::sync::oneshot::channel();
        let check = Check {
            hash: stored.unwrap_or(&self.dummy).to_owned(),
            password: password.to_owned(),
            answer,
        };
        self.jobs.try_send(check).map_err(|_| Busy)?;
        Ok(stored.is_some() && checked.await.unwrap_or(false))
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
        let v = Verifier::new(1).expect("verifier");
        let h = hash_password("pw").expect("hash");
        // Far more at once than the hashing threads and the queue of one
        // take: each check takes milliseconds, submitting them microseconds.
        let all: Vec<_> = (0..64)
            .map(|_| {
                let (v, h) = (Arc::clone(&v), h.clone());
                tokio::spawn(async move { v.verify(Some(&h), "pw").await })
            })
            .collect();
        let (mut checked, mut busy) = (0, 0);
        for r in all {
            match r.await.expect("join") {
                Ok(true) => checked += 1,
                Ok(false) => panic!("a right password was refused"),
                Err(Busy) => busy += 1,
            }
        }
        // How many get in depends on whether a hashing thread has taken
        // the first check off the queue before the others arrive; at
        // least one always does, and the rest are refused, never queued.
        assert!(checked >= 1, "{checked} checked");
        assert_eq!(checked + busy, 64);
        assert!(busy > 0, "none refused as busy");
        assert_eq!(v.verify(Some(&h), "pw").await, Ok(true), "free again");
    }
}
