//! Login tokens.
//!
//! Shape (the reference's, which clients echo and one client re-checks):
//! `base64("<user>.<14 digits>.login.<md5 hex>")`, where the md5 covers
//! `"<user>.<14 digits>.login"` followed by the reference's public salt.
//!
//! The public md5 proves nothing — anyone can compute it — so the 14 digits
//! carry what does: 4 digits of issue time (ten-minute units since the Unix
//! epoch, modulo 10 000, about 69 days) and 10 digits of HMAC-SHA256 under a
//! per-deployment secret over the user and the full issue time. A token
//! verifies only if both the public md5 and the keyed digits match and it has
//! not expired. Tokens minted the reference's way (a date in those digits) fail
//! the keyed check. Ten keyed digits (~33 bits) are all the reference's shape
//! leaves room for: forging needs ~5·10^9 online guesses on average, each a
//! round trip the server sees (and throttles, see the server's auth limiter);
//! no offline attack applies because the secret never leaves the server.
//!
//! Lifetime: the token only records its ten-minute issue unit, so expiry is
//! counted from the *end* of that unit: a token is valid until
//! `end of issue unit + ttl`, i.e. for at least `ttl` and less than
//! `ttl + 600` seconds after it was minted. `ttl` is therefore the guaranteed
//! minimum (what LOGIN announces as `token_ttl`), and every TTL from 1 s to
//! [`MAX_TTL_SECS`] works; 0 and longer TTLs cannot be expressed and are
//! refused by [`TokenKey::try_new`].
//!
//! User part: the username with `%` written `%25` and `.` written `%2E` (the
//! part may not contain dots, they separate the parts). The encoding is
//! injective, so `alice.smith` and `alice_smith` are different users (the
//! reference's `.`→`_` made them one); names without `.` or `%` keep exactly
//! the reference's shape. The public md5 covers the parts as they appear, so a
//! client that re-checks it still accepts our tokens.
//!
//! What the token allows ([`Scope`]) and the account's epoch (bumped by a
//! password change, gone with the account) are bound into the keyed digits
//! without changing the shape: a verifier recomputes the digits for each
//! scope under the account's current epoch, so a read-only token cannot be
//! turned into a full one, and a token minted before a password change or
//! an account's removal stops verifying. A full-scope token of epoch 0 (open
//! mode, and accounts made before epochs) is keyed exactly as before.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::access::Scope;
use crate::digest::md5_hex;

/// The reference server's salt. It is public; tokens signed only with it are
/// forgeries as far as we are concerned.
pub const PUBLIC_SALT: &str = "kjh20)*(1";

const TIME_DIGITS: u32 = 4;
const MAC_DIGITS: u32 = 10;
/// Seconds in one unit of the issue-time digits.
const UNIT_SECS: u64 = 600;
const TIME_MODULUS: u64 = 10u64.pow(TIME_DIGITS);
const MAC_MODULUS: u64 = 10u64.pow(MAC_DIGITS);
/// Longest lifetime the issue-time counter can express unambiguously, with a
/// day of margin.
pub const MAX_TTL_SECS: u64 = TIME_MODULUS * UNIT_SECS - 86_400;

/// What a token grants beyond naming its user: its scope and the epoch of
/// its account (0 in open mode), both bound into its keyed digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Grant {
    pub scope: Scope,
    pub epoch: u64,
    /// Minted for the public identity (an anonymous LOGIN), not for a
    /// password: the server caps it by its current anonymous mode.
    pub public: bool,
}

impl Grant {
    /// A full token of epoch 0: what open mode mints for everyone.
    pub const FULL: Grant = Grant {
        scope: Scope::Full,
        epoch: 0,
        public: false,
    };

    /// A password login's grant under the account's `epoch`.
    pub fn user(epoch: u64) -> Grant {
        Grant {
            scope: Scope::Full,
            epoch,
            public: false,
        }
    }
}

/// A token taken apart and its public md5 checked, not yet verified: the
/// user it names (to look up that account's epoch) and what the keyed
/// check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The username, decoded from the user part.
    pub user: String,
    part: String,
    counter: u64,
    keyed: String,
}

/// Why a token was refused. The messages match the reference's wording.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("Token format is wrong.")]
    Format,
    #[error("Token is wrong.")]
    Signature,
    #[error("Token has expired. Please login again.")]
    Expired,
}

/// Mints and verifies tokens with one deployment's secret.
#[derive(Clone)]
pub struct TokenKey {
    mac: Hmac<Sha256>,
    ttl_secs: u64,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("TokenKey")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// The user part of a token: `%` → `%25`, `.` → `%2E`, nothing else changed.
/// Injective, unlike the reference's `.` → `_`.
pub fn user_part(username: &str) -> String {
    let mut out = String::with_capacity(username.len());
    for c in username.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            c => out.push(c),
        }
    }
    out
}

/// The username a token's user part names: the inverse of [`user_part`].
/// Any other `%` sequence (which [`user_part`] never writes) is refused, so
/// each user part names exactly one user.
pub fn username_of(part: &str) -> Option<String> {
    let mut out = String::with_capacity(part.len());
    let mut rest = part;
    while let Some(at) = rest.find(['%', '.']) {
        out.push_str(&rest[..at]);
        let tail = &rest[at..];
        if let Some(after) = tail.strip_prefix("%25") {
            out.push('%');
            rest = after;
        } else if let Some(after) = tail.strip_prefix("%2E") {
            out.push('.');
            rest = after;
        } else {
            return None;
        }
    }
    out.push_str(rest);
    Some(out)
}

/// The username a token names, unverified: for logs, never for access
/// decisions (only [`TokenKey::verify`] says whether the token is valid).
pub fn claimed_user(token: &str) -> Option<String> {
    let raw = STANDARD.decode(token.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    username_of(text.split('.').next()?)
}

/// A TTL the token format cannot express.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "token ttl of {0} s cannot be expressed: it must be between 1 and {MAX_TTL_SECS} seconds (about 68 days)"
)]
pub struct TtlError(pub u64);

/// The md5 the reference (and clients that re-check) expect as the 4th part.
pub fn public_signature(first_three: &str) -> String {
    md5_hex(format!("{first_three}{PUBLIC_SALT}"))
}

/// A token exactly as the reference server would mint it, for tests and
/// comparisons: `stamp` is its `YYYYmmddHHMMSS` (dots in the name become `_`,
/// as the reference does).
pub fn mint_reference_style(username: &str, stamp: &str) -> String {
    let payload = format!("{}.{stamp}.login", username.replace('.', "_"));
    let sig = public_signature(&payload);
    STANDARD.encode(format!("{payload}.{sig}"))
}

impl TokenKey {
    /// `ttl_secs` is clamped to `1..=`[`MAX_TTL_SECS`]; configuration should
    /// use [`TokenKey::try_new`], which refuses what it cannot express.
    pub fn new(secret: &[u8], ttl_secs: u64) -> Self {
        Self {
            mac: Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length"),
            ttl_secs: ttl_secs.clamp(1, MAX_TTL_SECS),
        }
    }

    /// Like [`TokenKey::new`], but a TTL outside `1..=`[`MAX_TTL_SECS`] is an
    /// error instead of being clamped.
    pub fn try_new(secret: &[u8], ttl_secs: u64) -> Result<Self, TtlError> {
        if !(1..=MAX_TTL_SECS).contains(&ttl_secs) {
            return Err(TtlError(ttl_secs));
        }
        Ok(Self::new(secret, ttl_secs))
    }

    /// The guaranteed minimum lifetime of a freshly minted token.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    fn keyed_digits(&self, user: &str, unit: u64, grant: Grant) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"step-token-v2\0");
        mac.update(user.as_bytes());
        mac.update(b"\0");
        mac.update(&unit.to_be_bytes());
        if grant != Grant::FULL {
            mac.update(b"\0");
            mac.update(grant.scope.as_str().as_bytes());
            mac.update(if grant.public {
                b"\0public"
            } else {
                b"\0user\0\0"
            });
            mac.update(&grant.epoch.to_be_bytes());
        }
        let out = mac.finalize().into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        format!(
            "{:0width$}",
            u64::from_be_bytes(first) % MAC_MODULUS,
            width = MAC_DIGITS as usize
        )
    }

    /// A full token of epoch 0 for `username`, issued at `now_unix`
    /// (seconds): what open mode mints.
    pub fn mint(&self, username: &str, now_unix: u64) -> String {
        self.mint_with(username, now_unix, Grant::FULL)
    }

    /// A token for `username` granting `grant`, issued at `now_unix`.
    pub fn mint_with(&self, username: &str, now_unix: u64, grant: Grant) -> String {
        let user = user_part(username);
        let unit = now_unix / UNIT_SECS;
        let stamp = format!(
            "{:0width$}{}",
            unit % TIME_MODULUS,
            self.keyed_digits(&user, unit, grant),
            width = TIME_DIGITS as usize
        );
        let payload = format!("{user}.{stamp}.login");
        let sig = public_signature(&payload);
        STANDARD.encode(format!("{payload}.{sig}"))
    }

    /// Take `token` apart and check what anyone can check (shape, public
    /// md5); the keyed digits are [`TokenKey::check`]ed once the account's
    /// epoch is known.
    pub fn claim(token: &str) -> Result<Claim, TokenError> {
        let raw = STANDARD
            .decode(token.trim())
            .map_err(|_| TokenError::Format)?;
        let text = String::from_utf8(raw).map_err(|_| TokenError::Format)?;
        let parts: Vec<&str> = text.split('.').collect();
        let [part, stamp, login, sig] = parts[..] else {
            return Err(TokenError::Format);
        };
        let payload = format!("{part}.{stamp}.login");
        if login != "login" || !sig.eq_ignore_ascii_case(&public_signature(&payload)) {
            return Err(TokenError::Signature);
        }
        let digits = (TIME_DIGITS + MAC_DIGITS) as usize;
        if stamp.len() != digits || !stamp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(TokenError::Signature);
        }
        let (time_digits, keyed) = stamp.split_at(TIME_DIGITS as usize);
        let counter: u64 = time_digits.parse().map_err(|_| TokenError::Signature)?;
        let user = username_of(part).ok_or(TokenError::Format)?;
        Ok(Claim {
            user,
            part: part.to_owned(),
            counter,
            keyed: keyed.to_owned(),
        })
    }

    /// The grant `claim` was minted with, if its keyed digits match under
    /// the account's current `epoch` and it has not expired. Each scope,
    /// for a user and for the public identity, is tried (four HMACs at most).
    pub fn check(&self, claim: &Claim, now_unix: u64, epoch: u64) -> Result<Grant, TokenError> {
        // The latest unit not after now whose counter matches.
        let now_unit = now_unix / UNIT_SECS;
        let back = (now_unit % TIME_MODULUS + TIME_MODULUS - claim.counter) % TIME_MODULUS;
        let Some(unit) = now_unit.checked_sub(back) else {
            return Err(TokenError::Signature);
        };
        let grants = [false, true].into_iter().flat_map(|public| {
            Scope::ALL.into_iter().map(move |scope| Grant {
                scope,
                epoch,
                public,
            })
        });
        let found = grants.into_iter().find(|&grant| {
            let expected = self.keyed_digits(&claim.part, unit, grant);
            bool::from(expected.as_bytes().ct_eq(claim.keyed.as_bytes()))
        });
        let Some(grant) = found else {
            return Err(TokenError::Signature);
        };
        // Counted from the end of the issue unit: at least `ttl` after minting.
        if now_unix >= (unit + 1) * UNIT_SECS + self.ttl_secs {
            return Err(TokenError::Expired);
        }
        Ok(grant)
    }

    /// The username a token of epoch 0 belongs to, whatever its scope, if
    /// the token is ours, intact and unexpired (tools and tests; the server
    /// checks [`TokenKey::claim`]s against the account's epoch).
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<String, TokenError> {
        let claim = Self::claim(token)?;
        self.check(&claim, now_unix, 0)?;
        Ok(claim.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_795_000_000;

    fn decode(token: &str) -> String {
        String::from_utf8(STANDARD.decode(token).expect("b64")).expect("utf8")
    }

    #[test]
    fn has_reference_shape_and_passes_public_recheck() {
        let key = TokenKey::new(b"secret", 86_400);
        for (name, part) in [
            ("alice", "alice"),
            ("alice_smith", "alice_smith"),
            ("alice.smith", "alice%2Esmith"),
            ("100%.sure", "100%25%2Esure"),
        ] {
            let token = key.mint(name, NOW);
            let text = decode(&token);
            let parts: Vec<&str> = text.split('.').collect();
            assert_eq!(parts.len(), 4, "{name}");
            assert_eq!(parts[0], part);
            assert_eq!(parts[1].len(), 14);
            assert!(parts[1].bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(parts[2], "login");
            // What the re-checking client computes:
            assert_eq!(parts[3], public_signature(&parts[..3].join(".")));
            assert_eq!(key.verify(&token, NOW + 5), Ok(name.to_owned()));
        }
    }

    #[test]
    fn user_parts_are_injective_and_decode_back() {
        let names = [
            "alice.smith",
            "alice_smith",
            "alice%2Esmith",
            "alice%252Esmith",
            "%",
            ".",
            "..",
            "%2E",
            "a.b%c",
            "über.ß",
        ];
        let parts: std::collections::HashSet<String> = names.iter().map(|n| user_part(n)).collect();
        assert_eq!(parts.len(), names.len(), "no two names share a user part");
        for name in names {
            let part = user_part(name);
            assert!(!part.contains('.'), "{part}");
            assert_eq!(username_of(&part).as_deref(), Some(name));
        }
        for foreign in ["a%2e", "a%", "a%41", "a.b", "%2"] {
            assert_eq!(username_of(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn a_token_lives_at_least_its_ttl() {
        let key = TokenKey::new(b"secret", 60);
        // Minted at the last second of an issue unit.
        let last_second = (NOW / UNIT_SECS + 1) * UNIT_SECS - 1;
        let token = key.mint("bob", last_second);
        assert!(key.verify(&token, last_second).is_ok(), "valid when minted");
        assert!(
            key.verify(&token, last_second + 59).is_ok(),
            "valid 59 s later"
        );
        assert!(key.verify(&token, last_second + 60).is_ok(), "and at ttl");
        assert_eq!(
            key.verify(&token, last_second + 61),
            Err(TokenError::Expired)
        );
        // Minted at the first second of a unit: at most ttl + 600 s.
        let first_second = NOW / UNIT_SECS * UNIT_SECS;
        let token = key.mint("bob", first_second);
        assert!(key.verify(&token, first_second + 659).is_ok());
        assert_eq!(
            key.verify(&token, first_second + 660),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn expires_after_ttl() {
        let key = TokenKey::new(b"secret", 3600);
        let token = key.mint("bob", NOW);
        let issued_unit_end = (NOW / UNIT_SECS + 1) * UNIT_SECS;
        assert!(key.verify(&token, NOW + 3600).is_ok());
        assert!(key.verify(&token, issued_unit_end + 3599).is_ok());
        assert_eq!(
            key.verify(&token, issued_unit_end + 3600),
            Err(TokenError::Expired)
        );
        assert_eq!(
            key.verify(&token, NOW + 40 * 86_400),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn another_secret_or_reference_minting_is_refused() {
        let ours = TokenKey::new(b"deployment-a", 86_400);
        let theirs = TokenKey::new(b"deployment-b", 86_400);
        let token = theirs.mint("carol", NOW);
        assert_eq!(ours.verify(&token, NOW), Err(TokenError::Signature));
        let forged = mint_reference_style("carol", "20261125093000");
        assert_eq!(ours.verify(&forged, NOW), Err(TokenError::Signature));
        // A forger who keeps our time digits but guesses the keyed digits fails too.
        let real = decode(&ours.mint("carol", NOW));
        let mut parts: Vec<String> = real.split('.').map(String::from).collect();
        parts[0] = "mallory".into();
        parts[3] = public_signature(&parts[..3].join("."));
        let moved = STANDARD.encode(parts.join("."));
        assert_eq!(ours.verify(&moved, NOW), Err(TokenError::Signature));
    }

    #[test]
    fn tampering_is_refused() {
        let key = TokenKey::new(b"k", 86_400);
        let text = decode(&key.mint("dave", NOW));
        let mut chars: Vec<char> = text.chars().collect();
        let last = chars.len() - 1;
        chars[last] = if chars[last] == '1' { '2' } else { '1' };
        let tampered = STANDARD.encode(chars.into_iter().collect::<String>());
        assert_eq!(key.verify(&tampered, NOW), Err(TokenError::Signature));
        for bad in [
            "",
            "!!!",
            "bm90LWEtdG9rZW4=", /* not-a-token */
            &STANDARD.encode([0xff, 0xfe]),
        ] {
            assert_eq!(key.verify(bad, NOW), Err(TokenError::Format), "{bad}");
        }
    }

    #[test]
    fn survives_counter_wraparound() {
        let key = TokenKey::new(b"k", 86_400);
        // Issued one unit before the counter wraps.
        let issued = (TIME_MODULUS * 300 - 1) * UNIT_SECS;
        let token = key.mint("erin", issued);
        assert_eq!(key.verify(&token, issued + 120), Ok("erin".into()));
        assert_eq!(key.verify(&token, issued + 86_400), Ok("erin".into()));
    }

    #[test]
    fn scope_and_epoch_are_bound_into_the_keyed_digits() {
        let key = TokenKey::new(b"k", 86_400);
        let read = Grant {
            scope: Scope::Read,
            epoch: 7,
            public: true,
        };
        let token = key.mint_with("pub", NOW, read);
        let claim = TokenKey::claim(&token).expect("claim");
        assert_eq!(claim.user, "pub");
        assert_eq!(key.check(&claim, NOW, 7), Ok(read));
        assert_eq!(key.check(&claim, NOW, 8), Err(TokenError::Signature));
        assert_eq!(key.check(&claim, NOW, 0), Err(TokenError::Signature));
        let full = key.mint_with("pub", NOW, Grant::user(7));
        let claim = TokenKey::claim(&full).expect("claim");
        assert_eq!(key.check(&claim, NOW, 7), Ok(Grant::user(7)));
        let public_full = Grant {
            public: true,
            ..Grant::user(7)
        };
        let claim = TokenKey::claim(&key.mint_with("pub", NOW, public_full)).expect("claim");
        assert_eq!(key.check(&claim, NOW, 7), Ok(public_full));
        // The same shape as every other token, and the old keying for the
        // full scope of epoch 0.
        assert_eq!(decode(&token).split('.').count(), 4);
        assert_eq!(key.mint("pub", NOW), key.mint_with("pub", NOW, Grant::FULL));
        // A read token cannot be edited into a full one: the digits differ
        // and only the secret computes them.
        assert_ne!(decode(&token), decode(&full));
    }

    #[test]
    fn debug_hides_secret() {
        let key = TokenKey::new(b"super-secret-value", 10);
        assert!(!format!("{key:?}").contains("super"));
    }

    #[test]
    fn inexpressible_ttls_are_refused_by_try_new_and_clamped_by_new() {
        assert_eq!(TokenKey::new(b"k", u64::MAX).ttl_secs(), MAX_TTL_SECS);
        assert_eq!(TokenKey::new(b"k", 0).ttl_secs(), 1);
        for bad in [0, MAX_TTL_SECS + 1, u64::MAX] {
            let err = TokenKey::try_new(b"k", bad).expect_err("refused");
            assert_eq!(err, TtlError(bad));
            assert!(err.to_string().contains("between 1 and"), "{err}");
        }
        for good in [1, 60, 599, 600, 86_400, MAX_TTL_SECS] {
            let key = TokenKey::try_new(b"k", good).expect("accepted");
            assert_eq!(key.ttl_secs(), good);
            // The longest lifetime is still unambiguous for the counter.
            let token = key.mint("x", NOW);
            assert!(key.verify(&token, NOW + good).is_ok(), "{good}");
        }
    }
}
