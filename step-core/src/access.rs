//! Who may do what: the one place that decides.
//!
//! Every STEP operation and every HTTP route declares what it does — reads,
//! writes or administers ([`Access`]) — and every caller carries what its
//! credential allows ([`Scope`]). [`decide`] is the only function that
//! compares the two; the STEP service calls it for every request, the
//! gateway for every route it can decide itself (anonymous callers, and in
//! process any token), and everything the gateway forwards is decided
//! again by the service, so a refusal never depends on which way a request
//! came in.
//!
//! Identities:
//! * a **user** logged in with a password (or, in open mode, the course's
//!   md5 rule): scope [`Scope::Full`] over that user's own files;
//! * the **public identity** (anonymous callers): never obtained with a
//!   password; the server mints its token with the scope its anonymous mode
//!   ([`Anonymous`]) allows, over the public user's files;
//! * nobody: no credential, and anonymous access is off.
//!
//! No network identity administers: account administration is
//! `step-server user …`, run by the operator on the storage itself, so
//! [`Access::Admin`] is refused to every caller that reaches a socket.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::message::{Kind, Operation};

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Reads state and changes nothing.
    Read,
    /// Creates, replaces or deletes the caller's files or records.
    Write,
    /// Manages accounts.
    Admin,
}

/// What a credential allows; bound into the token's MAC, so it holds
/// however the token was obtained and wherever it is presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read only (the public identity under `--anonymous read`).
    Read,
    /// Read and write the identity's own namespace.
    Full,
}

impl Scope {
    pub const ALL: [Scope; 2] = [Scope::Full, Scope::Read];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Full => "full",
        }
    }
}

/// What anonymous callers may do (`--anonymous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Anonymous {
    /// Nothing: a credential is required.
    None,
    /// Read the public user's files.
    Read,
    /// Read and write the public user's files.
    Write,
}

impl Anonymous {
    /// The scope of the public identity's token, if there is one.
    pub fn scope(self) -> Option<Scope> {
        match self {
            Anonymous::None => None,
            Anonymous::Read => Some(Scope::Read),
            Anonymous::Write => Some(Scope::Full),
        }
    }

    /// The mode a token of `scope` grants.
    pub fn of_scope(scope: Scope) -> Anonymous {
        match scope {
            Scope::Read => Anonymous::Read,
            Scope::Full => Anonymous::Write,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Anonymous::None => "none",
            Anonymous::Read => "read",
            Anonymous::Write => "write",
        }
    }
}

impl fmt::Display for Anonymous {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A verified caller: whose files it acts on, and what it may do there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub scope: Scope,
}

/// Why [`decide`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No identity: a credential is needed.
    #[error("credentials are required here")]
    Unauthenticated,
    /// A read-only identity asked to write.
    #[error("this credential may only read")]
    ReadOnly,
    /// Account administration is not a network operation.
    #[error("accounts are managed with `step-server user` on the server, not over the network")]
    NotAdministrator,
}

/// The decision: whether a caller with `scope` (`None`: no identity) may
/// perform an operation of kind `access`.
pub fn decide(scope: Option<Scope>, access: Access) -> Result<(), Refusal> {
    match (scope, access) {
        (None, _) => Err(Refusal::Unauthenticated),
        (Some(_), Access::Admin) => Err(Refusal::NotAdministrator),
        (Some(_), Access::Read) | (Some(Scope::Full), Access::Write) => Ok(()),
        (Some(Scope::Read), Access::Write) => Err(Refusal::ReadOnly),
    }
}

/// What a STEP request does; `None` for LOGIN, which needs no identity.
/// Declared by operation: a combination the service does not serve (DATA
/// UPLOAD) is classed by its operation and then refused by the service.
pub fn of_step(op: Operation, _kind: Kind) -> Option<Access> {
    match op {
        Operation::Login => None,
        Operation::Get | Operation::Download | Operation::List | Operation::Bye => {
            Some(Access::Read)
        }
        Operation::Save | Operation::Upload | Operation::Delete => Some(Access::Write),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole table: every scope (and none) against every kind.
    #[test]
    fn the_decision_table() {
        use Access::*;
        let table: [(Option<Scope>, Access, Result<(), Refusal>); 9] = [
            (None, Read, Err(Refusal::Unauthenticated)),
            (None, Write, Err(Refusal::Unauthenticated)),
            (None, Admin, Err(Refusal::Unauthenticated)),
            (Some(Scope::Read), Read, Ok(())),
            (Some(Scope::Read), Write, Err(Refusal::ReadOnly)),
            (Some(Scope::Read), Admin, Err(Refusal::NotAdministrator)),
            (Some(Scope::Full), Read, Ok(())),
            (Some(Scope::Full), Write, Ok(())),
            (Some(Scope::Full), Admin, Err(Refusal::NotAdministrator)),
        ];
        for (scope, access, want) in table {
            assert_eq!(decide(scope, access), want, "{scope:?} {access:?}");
        }
    }

    #[test]
    fn every_step_operation_declares_its_kind() {
        for op in Operation::ALL {
            for kind in Kind::ALL {
                let access = of_step(*op, *kind);
                match op {
                    Operation::Login => assert_eq!(access, None),
                    Operation::Save | Operation::Upload | Operation::Delete => {
                        assert_eq!(access, Some(Access::Write), "{op} {kind}")
                    }
                    _ => assert_eq!(access, Some(Access::Read), "{op} {kind}"),
                }
            }
        }
    }

    #[test]
    fn anonymous_modes_map_to_scopes_and_back() {
        assert_eq!(Anonymous::None.scope(), None);
        for mode in [Anonymous::Read, Anonymous::Write] {
            let scope = mode.scope().expect("a scope");
            assert_eq!(Anonymous::of_scope(scope), mode);
        }
        assert!(Anonymous::None < Anonymous::Read && Anonymous::Read < Anonymous::Write);
    }
}
