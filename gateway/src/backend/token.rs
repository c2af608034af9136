//! The public identity's token (what anonymous callers act with), minted
//! once and reused until half its life is gone or the server may have
//! restarted.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use step_core::access::{Anonymous, Scope};
use step_core::digest::password_for;
use step_core::{Problem, StepClient};

use super::Backend;
use crate::error::GatewayError;

/// The public identity's token and when to stop reusing it.
#[derive(Debug)]
pub(super) struct CachedToken {
    public: PublicToken,
    renew_at: Instant,
    /// The connection-loss count when it was minted.
    losses: u64,
}

/// The public identity as the server granted it: its token, whose files
/// it acts on, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicToken {
    pub token: String,
    pub user: String,
    pub scope: Scope,
}

/// The user a server without the anonymous extension (the reference) is
/// asked to log in as for anonymous callers: the name our servers reserve
/// for the public identity, with the reference's password rule.
const REFERENCE_PUBLIC_USER: &str = "anonymous";

/// The longest a default-user token is reused before logging in again.
const DEFAULT_TOKEN_REUSE: Duration = Duration::from_secs(600);

/// How long a token the server says lives `token_ttl` seconds is reused:
/// half its life, so it is renewed well before it expires (clocks and the
/// token format's rounding need not be trusted to the second); at most
/// [`DEFAULT_TOKEN_REUSE`], which also applies when the server does not say.
pub fn token_reuse(token_ttl: Option<u64>) -> Duration {
    match token_ttl {
        Some(ttl) => Duration::from_secs(ttl / 2).min(DEFAULT_TOKEN_REUSE),
        None => DEFAULT_TOKEN_REUSE,
    }
}

impl Backend {
    /// The public identity's token, logging in when there is none or it is
    /// due for renewal (half the TTL the server announced); `None` when the
    /// gateway lets anonymous callers do nothing.
    pub async fn default_token(&self) -> Result<Option<PublicToken>, GatewayError> {
        if self.anonymous == Anonymous::None {
            return Ok(None);
        }
        // Held across the LOGIN on purpose: concurrent requests wait for the
        // one login instead of each minting a token.
        let mut cached = self.default_token.lock().await;
        let losses = self.connection_losses();
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.renew_at
            && c.losses == losses
        {
            return Ok(Some(c.public.clone()));
        }
        let minted = Instant::now();
        // No password is checked: a pooled connection will do (the login
        // lane is for password checks, which may be slow under a flood).
        let mut c = self.conn("").await?;
        let public = self.mint_public(&mut c).await?;
        let caps = c.capabilities();
        self.shared.learn(caps);
        *cached = Some(CachedToken {
            public: public.clone(),
            renew_at: minted + token_reuse(caps.token_ttl),
            losses: self.connection_losses(),
        });
        Ok(Some(public))
    }

    /// An anonymous LOGIN on `c`; a server without the extension (the
    /// reference, where anyone is anyone) answers a LOGIN without a
    /// username with 410, and the public user logs in by its rule there.
    async fn mint_public(&self, c: &mut StepClient) -> Result<PublicToken, GatewayError> {
        match c.login_anonymous(self.anonymous).await {
            Ok(login) => Ok(PublicToken {
                token: login.token,
                user: login.user,
                scope: login.scope,
            }),
            Err(e) if e.problem() == Some(Problem::FieldMissing) => {
                let user = REFERENCE_PUBLIC_USER;
                let token = c
                    .login(user, &password_for(user))
                    .await
                    .map_err(|e| self.step_error(e))?;
                Ok(PublicToken {
                    token,
                    user: user.to_owned(),
                    scope: self.anonymous.scope().unwrap_or(Scope::Read),
                })
            }
            Err(e) => Err(self.step_error(e)),
        }
    }

    /// After the server refused the default token `stale`: forget it (unless
    /// another request already replaced it) and return a fresh one.
    pub async fn renew_default_token(
        &self,
        stale: &str,
    ) -> Result<Option<PublicToken>, GatewayError> {
        {
            let mut cached = self.default_token.lock().await;
            if cached.as_ref().is_some_and(|c| c.public.token == stale) {
                *cached = None;
            }
        }
        self.default_token().await
    }

    /// Forget the cached default token (after the server refused it).
    pub async fn forget_default_token(&self) {
        *self.default_token.lock().await = None;
    }

    /// Connections lost to the backend so far: a change means it may have
    /// restarted (with a new token secret), so cached tokens are renewed.
    pub fn connection_losses(&self) -> u64 {
        self.shared.losses.load(Ordering::Relaxed)
    }
}

/// A refusal of a token as the gateway's error.
pub(super) fn refusal(answer: step_core::Message) -> GatewayError {
    match step_core::client::expect_ok(answer) {
        Err(e) => e.into(),
        Ok(_) => GatewayError::Internal("a token refusal said 200".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_token_is_renewed_well_before_it_expires() {
        assert_eq!(token_reuse(None), DEFAULT_TOKEN_REUSE);
        assert_eq!(token_reuse(Some(86_400)), DEFAULT_TOKEN_REUSE);
        assert_eq!(token_reuse(Some(120)), Duration::from_secs(60));
        assert_eq!(token_reuse(Some(1)), Duration::ZERO);
    }
}
