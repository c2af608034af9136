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
//! Tokens are the same in both modes (keyed with the token secret); a token
//! is checked by its key only, so a token minted before a mode switch, a
//! password change or an account's removal stays valid until it expires
//! (`--token-ttl`); change the token secret to revoke every token at once.

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

/// Checks passwords against hashes, a few at a time, off the async threads.
#[derive(Debug)]
pub struct Verifier {
    /// Verifications running at once: argon2 takes a core for tens of
    /// milliseconds, so a login flood must not take every core.
    permits: Arc<Semaphore>,
    /// What an unknown user's password is checked against, so that a
    /// refusal costs the same whether or not the user exists.
    dummy: String,
}

impl Verifier {
    /// A verifier running at most half the cores' worth at once (at least one).
    pub fn new() -> Result<Arc<Verifier>, HashError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut secret = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rng(), &mut secret);
        Ok(Arc::new(Verifier {
            permits: Arc::new(Semaphore::new((cores / 2).max(1))),
            dummy: hash_password(&hex::encode(secret))?,
        }))
    }

    /// Whether `password` matches `stored` (a PHC string); with no stored
    /// hash, the same work is done against the dummy and the answer is no.
    pub async fn verify(&self, stored: Option<&str>, password: &str) -> bool {
        let exists = stored.is_some();
        let hash = stored.unwrap_or(&self.dummy).to_owned();
        let password = password.to_owned();
        let Ok(permit) = Arc::clone(&self.permits).acquire_owned().await else {
            return false;
        };
        // The permit goes with the work: a request cancelled while it runs
        // does not free its core for another verification early.
        let checked = tokio::task::spawn_blocking(move || {
            let _permit = permit;
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
        exists && checked.unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_their_password_only() {
        let v = Verifier::new().expect("verifier");
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(is_valid_hash(&h));
        assert!(!is_valid_hash("5f4dcc3b5aa765d61d8327deb882cf99"));
        assert!(v.verify(Some(&h), "correct horse").await);
        assert!(!v.verify(Some(&h), "correct horse ").await);
        assert!(!v.verify(None, "correct horse").await);
        assert!(!v.verify(Some("not a hash"), "x").await);
        assert_ne!(h, hash_password("correct horse").expect("hash"), "salted");
    }
}
