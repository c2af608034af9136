//! One access-log line per HTTP request, written when its response body has
//! been sent (or dropped): method, path, status, bytes sent, duration, user
//! and request id, plus the cause when the gateway answered with an error.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Frame, SizeHint};

/// The user a request acted as, filled in by whoever resolves the caller
/// (the `Auth` extractor) and read by the access log. A slot rather than a
/// plain extension because the extractor only sees its own copy of the
/// request's parts.
#[derive(Debug, Clone, Default)]
pub struct RequestUser(Arc<OnceLock<String>>);

impl RequestUser {
    /// Record the user; the first one set wins.
    pub fn set(&self, user: impl Into<String>) {
        let _ = self.0.set(user.into());
    }

    pub fn get(&self) -> Option<&str> {
        self.0.get().map(String::as_str)
    }
}

/// Why the gateway answered with an error, attached to the error response
/// (see `GatewayError::into_response`) so the access line can say it.
#[derive(Debug, Clone)]
pub struct ErrorCause(pub String);

/// Routes polled by orchestrators: their failures are expected while the
/// backend is down and are reported once per transition elsewhere, so their
/// access lines stay at INFO.
fn is_probe(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// The middleware: wraps the response body so that the line is written when
/// the body ends, with the bytes actually sent.
pub async fn access_log(mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let user = RequestUser::default();
    req.extensions_mut().insert(user.clone());
    let line = Line {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
        request_id: req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned(),
        user,
        started,
        status: StatusCode::OK,
        cause: None,
        bytes: 0,
    };
    let resp = next.run(req).await;
    let (parts, body) = resp.into_parts();
    let line = Line {
        status: parts.status,
        cause: parts.extensions.get::<ErrorCause>().map(|c| c.0.clone()),
        ..line
    };
    Response::from_parts(
        parts,
        Body::new(Logged {
            inner: body,
            line: Some(line),
        }),
    )
}

#[derive(Debug)]
struct Line {
    method: String,
    path: String,
    request_id: String,
    user: RequestUser,
    started: Instant,
    status: StatusCode,
    cause: Option<String>,
    bytes: u64,
}

impl Line {
    fn write(&self, complete: bool) {
        let duration_ms = (self.started.elapsed().as_secs_f64() * 1e6).round() / 1e3;
        let user = self.user.get().unwrap_or("-");
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "gateway::access",
                    method = %self.method,
                    path = %self.path,
                    status = self.status.as_u16(),
                    bytes = self.bytes,
                    duration_ms,
                    user,
                    request_id = %self.request_id,
                    complete,
                    error = self.cause.as_deref(),
                    "request"
                )
            };
        }
        if self.status.is_server_error() && !is_probe(&self.path) {
            line!(warn);
        } else {
            line!(info);
        }
    }
}

/// A response body that counts what is sent and writes the access line when
/// it ends or is dropped (a client gone mid-download: `complete=false`).
#[derive(Debug)]
struct Logged {
    inner: Body,
    line: Option<Line>,
}

impl HttpBody for Logged {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(line)) = (frame.data_ref(), self.line.as_mut()) {
                    line.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(line) = self.line.take() {
                    line.write(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(mut line) = self.line.take() {
                    line.cause
                        .get_or_insert_with(|| "response body failed".into());
                    line.write(false);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            // Ended without being read to the end: a HEAD answer, an empty
            // body hyper never polled, or a client that went away.
            let complete = self.inner.is_end_stream() || line.method == "HEAD";
            line.write(complete);
        }
    }
}
