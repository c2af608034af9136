//! What can go wrong talking to a STEP server, and reading its answers.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::codec::CodecError;
use crate::message::{Message, Status, field};
use crate::problem::{Problem, Reason};

/// What went wrong talking to a STEP server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the STEP server: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame from the STEP server: {0}")]
    Codec(#[from] CodecError),
    #[error("the STEP server closed the connection")]
    Closed,
    #[error("unexpected answer from the STEP server: {0}")]
    Protocol(String),
    #[error("{operation} refused with status {code}: {message}")]
    Refused {
        operation: String,
        code: u64,
        message: String,
        /// Our server's `reason` extension, when it sent one.
        reason: Option<Reason>,
    },
    #[error("the STEP server did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("not logged in")]
    NotLoggedIn,
    #[error("{0}")]
    Source(String),
    /// The caller's own handling of an answer failed (writing a downloaded
    /// block, say): not the server's fault, and the connection is fine.
    #[error("keeping what the STEP server sent failed: {0}")]
    Sink(#[source] std::io::Error),
    /// An earlier I/O or framing failure (or owed answers that never came)
    /// left the connection out of step; it must be replaced.
    #[error("the STEP connection is unusable after an earlier failure ({0}); reconnect")]
    Broken(String),
}

impl ClientError {
    /// The STEP status of a refusal.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Refused { code, .. } => Status::from_code(*code),
            _ => None,
        }
    }

    /// Our server's `reason` for a refusal, when it sent one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            ClientError::Refused { reason, .. } => *reason,
            _ => None,
        }
    }

    /// The row of the refusal table a refusal names.
    pub fn problem(&self) -> Option<Problem> {
        Problem::of(self.status()?, self.reason())
    }

    /// The connection broke or went silent (as opposed to a refusal or a
    /// malformed answer): the same request may well work on a new one.
    pub fn is_interruption(&self) -> bool {
        matches!(
            self,
            ClientError::Io(_)
                | ClientError::Closed
                | ClientError::TimedOut(_)
                | ClientError::Broken(_)
                | ClientError::Codec(CodecError::Truncated { .. } | CodecError::Io(_))
        )
    }
}

/// A successful answer's fields as `T` (unknown fields are ignored).
pub fn decode<T: DeserializeOwned>(resp: Message) -> Result<T, ClientError> {
    let operation = resp
        .get(field::OPERATION)
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    serde_json::from_value(Value::Object(resp.fields))
        .map_err(|e| ClientError::Protocol(format!("bad {operation} answer: {e}")))
}

/// `Ok(resp)` when the response has status 200, else the refusal as an error.
pub fn expect_ok(resp: Message) -> Result<Message, ClientError> {
    match resp.status_code() {
        Some(200) => Ok(resp),
        Some(code) => Err(ClientError::Refused {
            operation: resp
                .get(field::OPERATION)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
            code,
            message: resp.status_msg().to_owned(),
            reason: resp
                .get(field::REASON)
                .and_then(Value::as_str)
                .and_then(|r| r.parse().ok()),
        }),
        None => Err(ClientError::Protocol("response has no status".into())),
    }
}
