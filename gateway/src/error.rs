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

/// The gateway's own error codes (every STEP refusal's is the refusal
/// table's, [`Problem`]): code, HTTP status, when. The table of codes in
/// docs/http-api.md is made from both, and a test keeps it so.
pub const OWN_CODES: &[(&str, u16, &str)] = &[
    (
        "bad_request",
        400,
        "malformed input: a missing JSON content type, a body that is not multipart, no file part, a body shorter or longer than its Content-Length, a repeated query parameter",
    ),
    (
        "unauthorized",
        401,
        "no credentials where the request needs them, wrong HTTP Basic credentials, or an `Authorization` header that is neither Bearer nor Basic",
    ),
    ("cross_site", 403, "a write sent by a page of another site"),
    (
        "read_only",
        403,
        "the caller may only read, and the route writes",
    ),
    ("not_found", 404, "no such route, or no file under the key"),
    (
        "method_not_allowed",
        405,
        "the route does not take the method",
    ),
    (
        "body_timeout",
        408,
        "the request body arrived slower than the minimum rate",
    ),
    (
        "offset_mismatch",
        409,
        "tus: `Upload-Offset` is not the upload's offset",
    ),
    (
        "precondition_failed",
        412,
        "`If-Match`, `If-None-Match: *` or `If-Unmodified-Since` does not hold",
    ),
    ("tus_version", 412, "tus: `Tus-Resumable: 1.0.0` is missing"),
    (
        "too_large",
        413,
        "a body above `--max-upload`, `--max-json-body`, or the STEP server's `max_file_size`",
    ),
    ("uri_too_long", 414, "a request URI over 16 KiB"),
    (
        "unsupported_media_type",
        415,
        "tus: a body that is not `application/offset+octet-stream`",
    ),
    ("range_not_satisfiable", 416, "a `Range` outside the file"),
    (
        "unprocessable",
        422,
        "a JSON body of the wrong shape, or a record using a reserved field",
    ),
    (
        "locked",
        423,
        "tus: another request on the same upload is still running",
    ),
    (
        "too_many_attempts",
        429,
        "too many HTTP Basic logins from the client lately",
    ),
    (
        "checksum_mismatch",
        460,
        "tus: the chunk's md5 differs from `Upload-Checksum`",
    ),
    ("internal", 500, "the gateway failed (logged)"),
    (
        "not_implemented",
        501,
        "the STEP server lacks the extension the request needs",
    ),
    (
        "bad_gateway",
        502,
        "the STEP server answered out of protocol, or refused the gateway's own login",
    ),
    (
        "md5_mismatch",
        502,
        "the md5 the STEP server stored differs from the bytes received; the file was removed",
    ),
    (
        "backend_unavailable",
        503,
        "the STEP server cannot be reached, or every connection to it stayed busy",
    ),
    (
        "backend_timeout",
        504,
        "the STEP server did not answer in time",
    ),
    (
        "timeout",
        504,
        "the request took longer than `--request-timeout`",
    ),
];

/// The table of every error code, HTTP status and meaning, as
/// docs/http-api.md has it between its `error-codes` markers.
pub fn codes_markdown() -> String {
    let mut rows: Vec<(u16, String, String)> = OWN_CODES
        .iter()
        .map(|(code, status, when)| (*status, format!("`{code}`"), (*when).to_owned()))
        .collect();
    for &p in Problem::ALL {
        let step = match p.reason() {
            Some(r) => format!("STEP {} `{r}`", p.step_status().code()),
            None => format!("STEP {}", p.step_status().code()),
        };
        rows.push((
            p.http_status(),
            format!("`{}`", p.code()),
            format!("{step}: {}", p.words()),
        ));
    }
    rows.sort();
    let mut out = String::from(
        "| HTTP | `error` | when; for a STEP refusal, the `message` |\n|---|---|---|\n",
    );
    for (status, code, when) in rows {
        out.push_str(&format!("| {status} | {code} | {when} |\n"));
    }
    out
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

    /// One of every error the gateway makes itself; the match makes a new
    /// variant a compile error here until it is listed (and given a code).
    fn own_samples() -> Vec<GatewayError> {
        let s = || String::from("x");
        let all = vec![
            GatewayError::NotFound(s()),
            GatewayError::Unauthorized(s()),
            GatewayError::CrossSite(s()),
            GatewayError::BadRequest(s()),
            GatewayError::Unprocessable(s()),
            GatewayError::TooLarge(s()),
            GatewayError::BodyTimeout(s()),
            GatewayError::RequestTimeout(1),
            GatewayError::MethodNotAllowed,
            GatewayError::UriTooLong(1),
            GatewayError::RangeNotSatisfiable { size: 1 },
            GatewayError::BackendUnavailable(s()),
            GatewayError::BackendTimeout,
            GatewayError::BadGateway(s()),
            GatewayError::Md5Mismatch {
                received: s(),
                stored: s(),
            },
            GatewayError::NotImplemented(s()),
            GatewayError::PreconditionFailed(s()),
            GatewayError::Internal(s()),
            GatewayError::TusVersion,
            GatewayError::UnsupportedMediaType(s()),
            GatewayError::OffsetMismatch {
                expected: 1,
                got: 2,
            },
            GatewayError::ChecksumMismatch,
            GatewayError::Locked(s()),
            GatewayError::ReadOnly(s()),
            GatewayError::TooManyAttempts(1),
        ];
        for e in &all {
            match e {
                GatewayError::Step { .. } => unreachable!("not the gateway's own"),
                GatewayError::NotFound(_)
                | GatewayError::Unauthorized(_)
                | GatewayError::CrossSite(_)
                | GatewayError::BadRequest(_)
                | GatewayError::Unprocessable(_)
                | GatewayError::TooLarge(_)
                | GatewayError::BodyTimeout(_)
                | GatewayError::RequestTimeout(_)
                | GatewayError::MethodNotAllowed
                | GatewayError::UriTooLong(_)
                | GatewayError::RangeNotSatisfiable { .. }
                | GatewayError::BackendUnavailable(_)
                | GatewayError::BackendTimeout
                | GatewayError::BadGateway(_)
                | GatewayError::Md5Mismatch { .. }
                | GatewayError::NotImplemented(_)
                | GatewayError::PreconditionFailed(_)
                | GatewayError::Internal(_)
                | GatewayError::TusVersion
                | GatewayError::UnsupportedMediaType(_)
                | GatewayError::OffsetMismatch { .. }
                | GatewayError::ChecksumMismatch
                | GatewayError::Locked(_)
                | GatewayError::ReadOnly(_)
                | GatewayError::TooManyAttempts(_) => {}
            }
        }
        all
    }

    #[test]
    fn every_code_has_one_http_status_and_is_listed() {
        let mut status_of = std::collections::HashMap::new();
        for (code, status, when) in OWN_CODES {
            assert!(!when.is_empty());
            assert!(status_of.insert(*code, *status).is_none(), "{code} twice");
        }
        for e in own_samples() {
            let listed = status_of.get(e.code()).copied();
            assert_eq!(listed, Some(e.status().as_u16()), "{e:?}");
        }
        // A code the gateway and the refusal table share means one status.
        for &p in Problem::ALL {
            let own = *status_of.entry(p.code()).or_insert(p.http_status());
            assert_eq!(own, p.http_status(), "{p:?}");
        }
        let openapi = crate::OPENAPI;
        for code in status_of.keys() {
            assert!(
                openapi.contains(&format!("            - {code}\n")),
                "openapi.yaml's Error.error enum lacks {code}"
            );
        }
    }

    #[test]
    fn the_documented_table_of_codes_is_the_table() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/http-api.md");
        let doc = std::fs::read_to_string(path).expect("docs/http-api.md");
        let (start, end) = ("<!-- error-codes -->\n", "<!-- /error-codes -->");
        let table = codes_markdown();
        let found = doc
            .split_once(start)
            .and_then(|(_, rest)| rest.split_once(end))
            .map(|(t, _)| t);
        if found != Some(table.as_str()) && std::env::var_os("UPDATE_DOCS").is_some() {
            let (head, rest) = doc.split_once(start).expect("start marker");
            let (_, tail) = rest.split_once(end).expect("end marker");
            std::fs::write(path, format!("{head}{start}{table}{end}{tail}")).expect("write");
            return;
        }
        assert_eq!(
            found,
            Some(table.as_str()),
            "docs/http-api.md's table of codes differs from the code; \
             run with UPDATE_DOCS=1 to rewrite it"
        );
    }
}
