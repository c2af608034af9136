//! The gateway's one error type and its one mapping to HTTP responses.
//!
//! Every error becomes a JSON body `{"error": <code>, "message": <text>}`
//! (plus `step_status` when the STEP server refused), with a fitting status.

use axum::Json;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use step_core::client::ClientError;
use step_core::codec::CodecError;
use step_core::{Problem, Status};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The STEP server refused the request: the row of the refusal table
    /// its status and reason name, which gives the HTTP status, the code
    /// and the words; `words` when the gateway can say it better for this
    /// request (naming the key, say).
    #[error("{}", step_message(*.problem, .said, .words.as_deref()))]
    Step {
        problem: Problem,
        /// The STEP status it came with (`step_status` in the body).
        status: Status,
        /// What the STEP server said: for the log, in protocol terms.
        said: String,
        words: Option<String>,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    /// A write sent by a browser on behalf of another site (see `csrf.rs`).
    #[error("{0}")]
    CrossSite(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    TooLarge(String),
    /// The request body did not keep up the minimum rate.
    #[error("{0}")]
    BodyTimeout(String),
    /// A non-streaming request took longer than --request-timeout.
    #[error("the request took longer than {0} s")]
    RequestTimeout(u64),
    #[error("this route does not allow the method")]
    MethodNotAllowed,
    #[error("the request URI is longer than {0} bytes")]
    UriTooLong(usize),
    #[error("range not satisfiable for a resource of {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("STEP backend unavailable: {0}")]
    BackendUnavailable(String),
    #[error("STEP backend did not answer in time")]
    BackendTimeout,
    #[error("STEP backend answered out of protocol: {0}")]
    BadGateway(String),
    #[error(
        "md5 mismatch: the gateway received {received}, the STEP server stored {stored}; the file was removed"
    )]
    Md5Mismatch { received: String, stored: String },
    /// The STEP backend lacks the extension the request needs (e.g. the
    /// reference server: no listing).
    #[error("{0}")]
    NotImplemented(String),
    /// A conditional request's precondition (If-Match, If-None-Match: *,
    /// If-Unmodified-Since) does not hold.
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Internal(String),
    // ---- tus (gateway/src/tus.rs)
    #[error("this server speaks tus 1.0.0: send Tus-Resumable: 1.0.0")]
    TusVersion,
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error(
        "Upload-Offset is {got} but the upload is at {expected}; HEAD it and continue from there"
    )]
    OffsetMismatch { expected: u64, got: u64 },
    #[error("the body's md5 does not match Upload-Checksum; the chunk was not kept")]
    ChecksumMismatch,
    #[error("{0}")]
    Locked(String),
    /// The caller's credential does not allow what the route does.
    #[error("{0}")]
    ReadOnly(String),
    /// Too many Basic logins from this client lately.
    #[error("too many login attempts from your address; retry in {0} s")]
    TooManyAttempts(u64),
}

/// What a person reads for a STEP refusal: the gateway's own words when
/// it has them, else the table's, with the server's specifics when they are
/// what the person has to correct.
fn step_message(problem: Problem, said: &str, words: Option<&str>) -> String {
    match words {
        Some(w) => w.to_owned(),
        None if problem.detail_helps() && !said.is_empty() => {
            format!("{} The STEP server said: {said}", problem.words())
        }
        None => problem.words().to_owned(),
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Step { problem, .. } => {
                StatusCode::from_u16(problem.http_status()).unwrap_or(StatusCode::BAD_GATEWAY)
            }
            GatewayError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            GatewayError::RequestTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            GatewayError::NotFound(_) => StatusCode::NOT_FOUND,
            GatewayError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            GatewayError::CrossSite(_) => StatusCode::FORBIDDEN,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            GatewayError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RangeNotSatisfiable { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            GatewayError::BackendUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::BadGateway(_) | GatewayError::Md5Mismatch { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            GatewayError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::TusVersion => StatusCode::PRECONDITION_FAILED,
            GatewayError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            GatewayError::OffsetMismatch { .. } => StatusCode::CONFLICT,
            // tus's checksum extension: "460 Checksum Mismatch".
            GatewayError::ChecksumMismatch => {
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST)
            }
            GatewayError::Locked(_) => StatusCode::LOCKED,
            GatewayError::ReadOnly(_) => StatusCode::FORBIDDEN,
            GatewayError::TooManyAttempts(_) => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::Step { problem, .. } => problem.code(),
            GatewayError::BodyTimeout(_) => "body_timeout",
            GatewayError::RequestTimeout(_) => "timeout",
            GatewayError::MethodNotAllowed => "method_not_allowed",
            GatewayError::UriTooLong(_) => "uri_too_long",
            GatewayError::NotFound(_) => "not_found",
            GatewayError::Unauthorized(_) => "unauthorized",
            GatewayError::CrossSite(_) => "cross_site",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::Unprocessable(_) => "unprocessable",
            GatewayError::TooLarge(_) => "too_large",
            GatewayError::RangeNotSatisfiable { .. } => "range_not_satisfiable",
            GatewayError::BackendUnavailable(_) => "backend_unavailable",
            GatewayError::BackendTimeout => "backend_timeout",
            GatewayError::BadGateway(_) => "bad_gateway",
            GatewayError::Md5Mismatch { .. } => "md5_mismatch",
            GatewayError::NotImplemented(_) => "not_implemented",
            GatewayError::PreconditionFailed(_) => "precondition_failed",
            GatewayError::Internal(_) => "internal",
            GatewayError::TusVersion => "tus_version",
            GatewayError::UnsupportedMediaType(_) => "unsupported_media_type",
            GatewayError::OffsetMismatch { .. } => "offset_mismatch",
            GatewayError::ChecksumMismatch => "checksum_mismatch",
            GatewayError::Locked(_) => "locked",
            GatewayError::ReadOnly(_) => "read_only",
            GatewayError::TooManyAttempts(_) => "too_many_attempts",
        }
    }

    /// A refusal of the table's row `problem`, in the gateway's `words`.
    pub fn refused(problem: Problem, words: impl Into<String>) -> Self {
        GatewayError::Step {
            problem,
            status: problem.step_status(),
            said: String::new(),
            words: Some(words.into()),
        }
    }

    /// The row of the refusal table, when the STEP server refused.
    pub fn problem(&self) -> Option<Problem> {
        match self {
            GatewayError::Step { problem, .. } => Some(*problem),
            _ => None,
        }
    }

    /// What the access log records: the message, and what the STEP server
    /// said when it refused.
    fn cause(&self) -> String {
        match self {
            GatewayError::Step { said, .. } if !said.is_empty() => {
                format!("{self} (STEP: {said})")
            }
            _ => self.to_string(),
        }
    }

    /// Whether the backend is at fault (counted in metrics).
    pub fn is_backend_fault(&self) -> bool {
        matches!(
            self,
            GatewayError::BackendUnavailable(_)
                | GatewayError::BackendTimeout
                | GatewayError::BadGateway(_)
                | GatewayError::Md5Mismatch { .. }
        )
    }
}

impl From<ClientError> for GatewayError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Refused {
                code,
                message,
                reason,
                ..
            } => match Status::from_code(code)
                .and_then(|status| Some((status, Problem::of(status, reason)?)))
            {
                Some((status, problem)) => GatewayError::Step {
                    problem,
                    status,
                    said: message,
                    words: None,
                },
                None => GatewayError::BadGateway(format!("unknown STEP status {code}: {message}")),
            },
            ClientError::TimedOut(_) => GatewayError::BackendTimeout,
            ClientError::Io(e) => GatewayError::BackendUnavailable(e.to_string()),
            ClientError::Closed => GatewayError::BackendUnavailable("connection closed".into()),
            ClientError::Broken(m) => GatewayError::BackendUnavailable(m),
            // The connection reset or closed mid-frame: the backend went
            // away (a restart, a crash), not a protocol breach.
            ClientError::Codec(e @ (CodecError::Io(_) | CodecError::Truncated { .. })) => {
                GatewayError::BackendUnavailable(e.to_string())
            }
            ClientError::Codec(e) => GatewayError::BadGateway(e.to_string()),
            ClientError::Protocol(m) => GatewayError::BadGateway(m),
            ClientError::NotLoggedIn => GatewayError::Unauthorized("no token".into()),
            ClientError::Source(m) => GatewayError::BadRequest(m),
            ClientError::Sink(e) => GatewayError::Internal(e.to_string()),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = json!({"error": self.code(), "message": self.to_string()});
        if let GatewayError::Step { status, .. } = &self {
            body["step_status"] = json!(status.code());
        }
        let mut resp = (status, Json(body)).into_response();
        resp.extensions_mut()
            .insert(crate::access_log::ErrorCause(self.cause()));
        if status == StatusCode::UNAUTHORIZED {
            // Both ways in (see auth.rs): Basic first, so browsers and
            // `curl --anyauth` offer it.
            let h = resp.headers_mut();
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"step\", charset=\"UTF-8\""),
            );
            h.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let GatewayError::RangeNotSatisfiable { size } = &self
            && let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
        if matches!(
            &self,
            GatewayError::BackendUnavailable(_)
                | GatewayError::Step {
                    problem: Problem::Unavailable,
                    ..
                }
        ) {
            // An outage or a full pool: the same request may well go
            // through in a moment, perhaps on another STEP backend.
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        let retry = match &self {
            GatewayError::TooManyAttempts(secs) => Some(*secs),
            // The server's own pace (per address or name), in front of it.
            GatewayError::Step {
                problem: Problem::TooManyAttempts | Problem::Busy,
                ..
            } => Some(1),
            _ => None,
        };
        if let Some(v) = retry.and_then(|s| HeaderValue::from_str(&s.to_string()).ok()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        if let GatewayError::TusVersion = &self {
            resp.headers_mut().insert(
                HeaderName::from_static("tus-version"),
                HeaderValue::from_static("1.0.0"),
            );
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u64, reason: Option<step_core::Reason>, said: &str) -> GatewayError {
        GatewayError::from(ClientError::Refused {
            operation: "SAVE".into(),
            code,
            message: said.into(),
            reason,
        })
    }

    async fn body_of(e: GatewayError) -> (StatusCode, serde_json::Value) {
        let resp = e.into_response();
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, serde_json::from_slice(&bytes).expect("JSON"))
    }

    #[tokio::test]
    async fn every_refusal_is_answered_from_its_table_row() {
        for &p in Problem::ALL {
            let said = "the server's own words";
            let e = refused(u64::from(p.step_status().code()), p.reason(), said);
            assert_eq!(e.problem(), Some(p));
            let (status, body) = body_of(e).await;
            assert_eq!(status.as_u16(), p.http_status(), "{p:?}");
            assert_eq!(body["error"], p.code(), "{p:?}");
            assert_eq!(body["step_status"], p.step_status().code(), "{p:?}");
            let message = body["message"].as_str().expect("message");
            assert!(message.starts_with(p.words()), "{p:?}: {message}");
            // The protocol's words stay in the log, not in the answer,
            // unless they name the value to correct.
            assert_eq!(message.contains(said), p.detail_helps(), "{p:?}: {message}");
        }
    }

    #[tokio::test]
    async fn a_few_refusals_read_in_the_users_terms() {
        let (status, body) = body_of(refused(402, None, "The \"key\" x is existing.")).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::CONFLICT, &"key_exists".into())
        );
        assert!(
            !body["message"]
                .as_str()
                .unwrap_or("")
                .contains("is existing"),
            "{body}"
        );
        let (status, body) = body_of(refused(401, None, "Password error for login.")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(body["error"], "wrong_password");
        assert!(
            !body["message"]
                .as_str()
                .unwrap_or("")
                .contains("Password error"),
            "{body}"
        );
        let (status, body) = body_of(refused(
            402,
            Some(step_core::Reason::TooLarge),
            "Invalid \"size\"",
        ))
        .await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::PAYLOAD_TOO_LARGE, &"too_large".into())
        );
        let (status, body) = body_of(refused(
            410,
            None,
            "\"key\" must be a non-empty string of at most 1024 bytes",
        ))
        .await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &"bad_request".into())
        );
        assert!(
            body["message"]
                .as_str()
                .unwrap_or("")
                .contains("at most 1024"),
            "{body}"
        );
    }

    #[test]
    fn client_errors_map_to_gateway_errors() {
        assert_eq!(
            refused(999, None, "?").code(),
            "bad_gateway",
            "an unknown status is the backend's fault"
        );
        assert_eq!(
            GatewayError::from(ClientError::TimedOut(std::time::Duration::from_secs(1))).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            GatewayError::from(ClientError::Closed).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
