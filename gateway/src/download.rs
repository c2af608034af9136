//! Streaming a STEP file to an HTTP client, whole or by range.
//!
//! One pooled connection pipelines DOWNLOADs of the blocks covering the
//! requested bytes. Backpressure: a request for the next block is sent only
//! when a credit is free, and credits come back as the HTTP body consumes
//! blocks, so a slow client holds at most `window` (+1, see below) blocks in
//! memory.
//!
//! Integrity. A download of the whole file (no Range, or one covering every
//! byte) is hashed on the way, and its last block is held back until the md5
//! is known: on a mismatch the body ends with an error instead of that block,
//! so hyper closes the connection short of its Content-Length and no client
//! ever sees a complete, clean response with wrong bytes. A partial range
//! cannot be checked against the whole-file md5; our server checks each block
//! against a per-4 KiB checksum at rest and refuses a bad one (`integrity`),
//! which aborts the body like any other mid-stream error. Against a reference
//! server a partial range is not verified.
//!
//! Stalls. A client that stops reading (or never reads) stops returning
//! credits; after [`STALL_FACTOR`] × the backend timeout without one, the
//! download gives up: its STEP connection is discarded (it may have answers
//! in flight) and the body ends with an error.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use step_core::Reason;
use step_core::client::{ClientError, DownloadPlan, StepClient, expect_ok};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, error, warn};

use crate::backend::{Backend, Conn};
use crate::conditional::{self, Current, Outcome};
use crate::error::GatewayError;

/// A download whose HTTP client takes no block for this many backend
/// timeouts (60 s with the default 15 s) is abandoned. Generous, because a
/// block is up to 512 KiB and a slow but honest client must get through; the
/// point is that a client that never reads cannot keep a pooled STEP
/// connection forever.
pub const STALL_FACTOR: u32 = 4;

/// Which bytes to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    Whole,
    /// Inclusive byte range.
    Part(u64, u64),
}

/// Interpret a `Range` header against a resource of `size` bytes. Several
/// ranges, or a header we cannot parse, mean the whole resource (RFC 9110
/// lets a server ignore Range); a well-formed but unsatisfiable range is 416.
/// A suffix longer than the resource means all of it (RFC 9110 §14.1.2).
pub fn parse_range(value: Option<&HeaderValue>, size: u64) -> Result<Span, GatewayError> {
    let Some(text) = value.and_then(|v| v.to_str().ok()) else {
        return Ok(Span::Whole);
    };
    if size == 0 {
        return Ok(Span::Whole);
    }
    let Ok(parsed) = http_range_header::parse_range_header(text) else {
        return Ok(Span::Whole);
    };
    match parsed.ranges.as_slice() {
        [one] => {
            if let http_range_header::StartPosition::FromLast(n) = one.start
                && n > size
            {
                return Ok(Span::Part(0, size - 1));
            }
        }
        _ => return Ok(Span::Whole),
    }
    match parsed.validate(size) {
        Ok(ranges) if ranges.len() == 1 => {
            let r = &ranges[0];
            Ok(Span::Part(*r.start(), *r.end()))
        }
        Ok(_) => Ok(Span::Whole),
        Err(_) => Err(GatewayError::RangeNotSatisfiable { size }),
    }
}

/// Answer GET or HEAD for `key`.
pub async fn respond(
    backend: Arc<Backend>,
    token: &str,
    key: &str,
    req: &HeaderMap,
    head: bool,
) -> Result<Response, GatewayError> {
    let mut conn = backend.conn(token).await?;
    let tp = backend.plan_for(&conn);
    let got = conn.file_get(key, tp.block_size).await;
    let plan = match backend.settle_keep(&mut conn, got) {
        // No file: If-Match cannot hold (RFC 9110 §13.1.1).
        Err(GatewayError::Step {
            status: step_core::Status::NotFound,
            reason: None,
            ..
        }) if req.contains_key(header::IF_MATCH) => {
            return Err(GatewayError::PreconditionFailed(
                "If-Match: there is no file under this key".into(),
            ));
        }
        other => other?,
    };
    let tag = conditional::etag(&plan.md5);
    let current = Current {
        etag: Some(&tag),
        modified: plan.last_modified,
    };
    let mut headers = HeaderMap::new();
    let mime = mime_guess::from_path(key).first_or_octet_stream();
    let put = |h: &mut HeaderMap, name, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    put(&mut headers, header::CONTENT_TYPE, mime.to_string());
    conditional::validator_headers(&mut headers, current);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    match conditional::evaluate(req, current, true) {
        Outcome::Proceed => {}
        Outcome::NotModified => {
            conn.mark_clean();
            return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
        }
        Outcome::Failed(why) => {
            conn.mark_clean();
            return Err(GatewayError::PreconditionFailed(why.into()));
        }
    }
    // A stale If-Range validator: the whole file, 200.
    let range = req
        .get(header::RANGE)
        .filter(|_| conditional::range_applies(req, current));
    let span = parse_range(range, plan.size)?;
    let (status, first, last) = match span {
        Span::Whole => (StatusCode::OK, 0, plan.size.saturating_sub(1)),
        Span::Part(a, b) => {
            put(
                &mut headers,
                header::CONTENT_RANGE,
                format!("bytes {a}-{b}/{}", plan.size),
            );
            (StatusCode::PARTIAL_CONTENT, a, b)
        }
    };
    let length = if plan.size == 0 { 0 } else { last - first + 1 };
    put(&mut headers, header::CONTENT_LENGTH, length.to_string());
    if head || length == 0 {
        conn.mark_clean();
        return Ok((status, headers, Body::empty()).into_response());
    }

    let window = tp.window.max(1);
    // Every byte of the file goes out: check it against the md5.
    let verify = first == 0 && last + 1 == plan.size;
    // A verified download holds its latest block back, so it needs one
    // credit more than its window or a window of 1 would wait forever.
    let credits = Arc::new(Semaphore::new(window + usize::from(verify)));
    let (tx, rx) = mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
    tokio::spawn(stream_blocks(
        backend,
        conn,
        plan,
        first,
        last,
        window,
        Arc::clone(&credits),
        tx,
        verify,
    ));
    let body = futures::stream::unfold(BodyFeed { rx, credits }, |mut feed| async move {
        let item = feed.rx.recv().await?;
        feed.credits.add_permits(1);
        Some((item, feed))
    });
    Ok((status, headers, Body::from_stream(body)).into_response())
}

/// The HTTP body's end of a download. Dropped (the client went away, or
/// hyper gave up on the response), it closes the credits, so the task feeding
/// it stops instead of waiting forever for room, and its connection is
/// discarded rather than returned mid-pipeline.
struct BodyFeed {
    rx: mpsc::UnboundedReceiver<Result<Bytes, std::io::Error>>,
    credits: Arc<Semaphore>,
}

impl Drop for BodyFeed {
    fn drop(&mut self) {
        self.credits.close();
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_blocks(
    backend: Arc<Backend>,
    mut conn: Conn,
    plan: DownloadPlan,
    first: u64,
    last: u64,
    window: usize,
    credits: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Result<Bytes, std::io::Error>>,
    verify: bool,
) {
    let started = Instant::now();
    let stall: Duration = backend.transfer_settings().backend_timeout() * STALL_FACTOR;
    let stalled = AtomicBool::new(false);
    let bs = plan.block_size.max(1);
    let (first_block, last_block) = (first / bs, last / bs);
    let token = conn.token().unwrap_or_default().to_owned();
    let gated = futures::stream::iter(first_block..=last_block).then(|i| {
        let credits = Arc::clone(&credits);
        let stalled = &stalled;
        let req = StepClient::<tokio::net::TcpStream>::download_request(&token, &plan, i);
        async move {
            match tokio::time::timeout(stall, credits.acquire()).await {
                // Closed credits: the HTTP body was dropped (client gone).
                Ok(permit) => permit
                    .map_err(|_| ClientError::Source("HTTP client went away".into()))?
                    .forget(),
                Err(_) => {
                    stalled.store(true, Ordering::Relaxed);
                    return Err(ClientError::Source(format!(
                        "the HTTP client took no data for {stall:?}"
                    )));
                }
            }
            Ok(req)
        }
    });
    let mut hasher = verify.then(Md5::new);
    // The latest block of a verified download, sent only once the next one
    // arrives or the md5 is known to match.
    let mut held: Option<Bytes> = None;
    let mut index = first_block;
    let mut sent = 0u64;
    let result = conn
        .pipeline(gated, window, |resp| {
            let resp = expect_ok(resp)?;
            let block_start = index * bs;
            let want = step_core::plan::block_len(plan.size, bs, index).unwrap_or(0);
            if resp.binary.len() as u64 != want {
                return Err(ClientError::Protocol(format!(
                    "block {index} has {} bytes, expected {want}",
                    resp.binary.len()
                )));
            }
            if let Some(h) = hasher.as_mut() {
                h.update(&resp.binary);
            }
            let lo = first.saturating_sub(block_start) as usize;
            let hi = ((last + 1).min(block_start + want) - block_start) as usize;
            let mut piece = resp.binary.slice(lo..hi);
            sent += piece.len() as u64;
            index += 1;
            if verify {
                match held.replace(piece) {
                    Some(previous) => piece = previous,
                    None => return Ok(()),
                }
            }
            tx.send(Ok(piece))
                .map_err(|_| ClientError::Source("HTTP client went away".into()))
        })
        .await;
    let metrics = &backend.metrics;
    match result {
        Ok(()) => {
            // The pipeline ran to its end: the connection is in sync.
            conn.mark_clean();
            if let Some(h) = hasher {
                let got = hex::encode(h.finalize());
                if !got.eq_ignore_ascii_case(&plan.md5) {
                    error!(key = %plan.key, expected = %plan.md5, %got,
                        "download md5 mismatch: stored bytes are corrupt; aborting the response before its last block");
                    metrics.download_integrity_failures.inc();
                    let _ = tx.send(Err(std::io::Error::other("md5 mismatch")));
                    return;
                }
            }
            if let Some(tail) = held.take() {
                let _ = tx.send(Ok(tail));
            }
            metrics.download_bytes.inc_by(sent);
            metrics
                .download_seconds
                .observe(started.elapsed().as_secs_f64());
            debug!(key = %plan.key, sent, "download streamed");
        }
        Err(ClientError::Source(e)) if stalled.load(Ordering::Relaxed) => {
            warn!(key = %plan.key, error = %e, "download stalled; giving its STEP connection back");
            metrics.download_stalls.inc();
            let _ = tx.send(Err(std::io::Error::other(e)));
        }
        Err(ClientError::Source(_)) => debug!(key = %plan.key, "client disconnected mid-download"),
        Err(e) => {
            if let ClientError::Refused {
                reason: Some(Reason::Integrity),
                ..
            } = &e
            {
                error!(key = %plan.key, error = %e, "the STEP server found stored bytes corrupt; aborting the response");
                metrics.download_integrity_failures.inc();
            } else {
                warn!(key = %plan.key, error = %e, "download failed mid-stream");
                metrics.backend_errors.inc();
            }
            let _ = tx.send(Err(std::io::Error::other(e.to_string())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("header")
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100).expect("ok"), Span::Whole);
        assert_eq!(
            parse_range(Some(&hv("bytes=0-9")), 100).expect("ok"),
            Span::Part(0, 9)
        );
        assert_eq!(
            parse_range(Some(&hv("bytes=90-")), 100).expect("ok"),
            Span::Part(90, 99)
        );
        assert_eq!(
            parse_range(Some(&hv("bytes=-10")), 100).expect("ok"),
            Span::Part(90, 99)
        );
        assert_eq!(
            parse_range(Some(&hv("bytes=50-500")), 100).expect("ok"),
            Span::Part(50, 99)
        );
        assert!(matches!(
            parse_range(Some(&hv("bytes=100-")), 100),
            Err(GatewayError::RangeNotSatisfiable { size: 100 })
        ));
        assert_eq!(
            parse_range(Some(&hv("bytes=0-1,5-6")), 100).expect("ok"),
            Span::Whole
        );
        assert_eq!(
            parse_range(Some(&hv("bytes=0-50,40-60")), 100).expect("ok"),
            Span::Whole
        );
        assert_eq!(
            parse_range(Some(&hv("bytes=-1000")), 100).expect("ok"),
            Span::Part(0, 99)
        );
        assert_eq!(
            parse_range(Some(&hv("items=0-1")), 100).expect("ok"),
            Span::Whole
        );
        assert_eq!(
            parse_range(Some(&hv("bytes=0-1")), 0).expect("ok"),
            Span::Whole
        );
    }
}
