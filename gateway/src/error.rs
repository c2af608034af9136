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
use step_core::{Reason, Status};

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The STEP server refused the request.
    #[error("{message}")]
    Step {
        status: Status,
        message: String,
        /// Why, when our server said (the `reason` field); it decides the
        /// HTTP status before the STEP status does.
        reason: Option<Reason>,
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

/// STEP status → HTTP status, in one table.
pub fn http_status_for(step: Status) -> StatusCode {
    match step {
        Status::Ok => StatusCode::OK,
        Status::KeyExists | Status::WrongOperation | Status::WrongDirection => StatusCode::CONFLICT,
        Status::NotFound => StatusCode::NOT_FOUND,
        Status::BadToken | Status::WrongPassword => StatusCode::UNAUTHORIZED,
        Status::CompulsoryFieldMissing | Status::FieldMissing | Status::TypeNotAllowed => {
            StatusCode::BAD_REQUEST
        }
        // The gateway computes block indexes and sizes itself: the server
        // disagreeing with them is a backend fault, not the caller's.
        Status::IndexTooLarge | Status::BlockSizeMismatch | Status::Earth => {
            StatusCode::BAD_GATEWAY
        }
    }
}

/// Our server's refusal reason → HTTP status; it is more precise than the
/// STEP status it comes with (a SAVE above max_file_size is a 402 "key
/// exists" to reference clients, but 413 here).
pub fn http_status_for_reason(reason: Reason) -> StatusCode {
    match reason {
        Reason::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        // A per-user cap on unfinished uploads is storage the user cannot
        // have now (RFC 4918 §11.5), like a full disk; not a rate (429).
        Reason::NoSpace | Reason::Quota => StatusCode::INSUFFICIENT_STORAGE,
        Reason::Integrity => StatusCode::BAD_GATEWAY,
        // What reached the server is not what the gateway sent.
        Reason::Md5Mismatch => StatusCode::BAD_GATEWAY,
        Reason::Superseded => StatusCode::CONFLICT,
        Reason::OtherUpload => StatusCode::NOT_FOUND,
        // The store refused an `if_md5`: the version the request named is
        // not (or no longer) the current one.
        Reason::Precondition => StatusCode::PRECONDITION_FAILED,
        // Only mid-download (the version being read was replaced); the
        // response is already under way, so this is what gets logged.
        Reason::Replaced => StatusCode::CONFLICT,
        // The server's storage or coordination engine is down: retry later.
        Reason::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Reason::ReadOnly => StatusCode::FORBIDDEN,
        // Every password check is taken: retry in a moment.
        Reason::Busy => StatusCode::SERVICE_UNAVAILABLE,
        Reason::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
        Reason::NoAnonymous => StatusCode::UNAUTHORIZED,
    }
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::Step {
                reason: Some(reason),
                ..
            } => http_status_for_reason(*reason),
            GatewayError::Step { status, .. } => http_status_for(*status),
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
            GatewayError::Step {
                reason: Some(Reason::Precondition),
                ..
            } => "precondition_failed",
            GatewayError::Step {
                reason: Some(reason),
                ..
            } => reason.as_str(),
            GatewayError::Step { status, .. } => match status {
                Status::KeyExists => "key_exists",
                Status::NotFound => "not_found",
                Status::BadToken => "bad_token",
                Status::WrongPassword => "wrong_password",
                Status::WrongOperation | Status::WrongDirection => "conflict",
                Status::CompulsoryFieldMissing | Status::FieldMissing | Status::TypeNotAllowed => {
                    "bad_request"
                }
                _ => "backend_refused",
            },
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
            } => match Status::from_code(code) {
                Some(status) => GatewayError::Step {
                    status,
                    message,
                    reason,
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
            .insert(crate::access_log::ErrorCause(self.to_string()));
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
                    reason: Some(Reason::Unavailable),
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
                reason: Some(Reason::TooManyAttempts | Reason::Busy),
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

    #[test]
    fn every_step_status_has_an_http_status() {
        for s in Status::ALL {
            let code = http_status_for(*s);
            assert!(code.is_success() || code.is_client_error() || code.is_server_error());
        }
        assert_eq!(http_status_for(Status::KeyExists), StatusCode::CONFLICT);
        assert_eq!(http_status_for(Status::NotFound), StatusCode::NOT_FOUND);
        assert_eq!(http_status_for(Status::BadToken), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn client_errors_map_to_gateway_errors() {
        let refused = ClientError::Refused {
            operation: "SAVE".into(),
            code: 402,
            message: "exists".into(),
            reason: None,
        };
        assert_eq!(GatewayError::from(refused).status(), StatusCode::CONFLICT);
        for (reason, status) in [
            (Reason::TooLarge, StatusCode::PAYLOAD_TOO_LARGE),
            (Reason::NoSpace, StatusCode::INSUFFICIENT_STORAGE),
            (Reason::Quota, StatusCode::INSUFFICIENT_STORAGE),
            (Reason::Integrity, StatusCode::BAD_GATEWAY),
            (Reason::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
        ] {
            let refused = ClientError::Refused {
                operation: "SAVE".into(),
                code: 402,
                message: "no".into(),
                reason: Some(reason),
            };
            let e = GatewayError::from(refused);
            assert_eq!(e.status(), status, "{reason:?}");
            assert_eq!(e.code(), reason.as_str());
        }
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
