//! Streaming a STEP file to an HTTP client, whole or by range.
//!
//! One pooled connection pipelines DOWNLOADs of the blocks covering the
//! requested bytes. Backpressure: a request for the next block is sent only
//! when a credit is free, and credits come back as the HTTP body consumes
//! blocks, so a slow client holds at most `window` blocks in memory. A full
//! download is hashed on the way; if it does not match the plan's md5 the
//! body is cut short with an error rather than completed.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use step_core::client::{ClientError, DownloadPlan, StepClient, expect_ok};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, warn};

use crate::backend::{Backend, Conn};
use crate::error::GatewayError;

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

fn etag(md5: &str) -> String {
    format!("\"{md5}\"")
}

fn if_none_match_hits(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t == tag || t.strip_prefix("W/") == Some(tag)
        })
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
    let plan = backend.settle_keep(&mut conn, got)?;
    let tag = etag(&plan.md5);
    let mut headers = HeaderMap::new();
    let mime = mime_guess::from_path(key).first_or_octet_stream();
    let put = |h: &mut HeaderMap, name, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    put(&mut headers, header::CONTENT_TYPE, mime.to_string());
    put(&mut headers, header::ETAG, tag.clone());
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    if if_none_match_hits(req, &tag) {
        conn.mark_clean();
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    let span = parse_range(req.get(header::RANGE), plan.size)?;
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
    let credits = Arc::new(Semaphore::new(window));
    let (tx, rx) = mpsc::unbounded_channel::<Result<Bytes, std::io::Error>>();
    let verify = span == Span::Whole;
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
    let bs = plan.block_size.max(1);
    let (first_block, last_block) = (first / bs, last / bs);
    let token = conn.token().unwrap_or_default().to_owned();
    let gated = futures::stream::iter(first_block..=last_block).then(|i| {
        let credits = Arc::clone(&credits);
        let req = StepClient::<tokio::net::TcpStream>::download_request(&token, &plan, i);
        async move {
            credits
                .acquire()
                .await
                .map_err(|_| ClientError::Closed)?
                .forget();
            Ok(req)
        }
    });
    let mut hasher = verify.then(Md5::new);
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
            let piece = resp.binary.slice(lo..hi);
            sent += piece.len() as u64;
            index += 1;
            tx.send(Ok(piece))
                .map_err(|_| ClientError::Source("HTTP client went away".into()))
        })
        .await;
    match result {
        Ok(()) => {
            if let Some(h) = hasher {
                let got = hex::encode(h.finalize());
                if !got.eq_ignore_ascii_case(&plan.md5) {
                    warn!(key = %plan.key, expected = %plan.md5, %got, "download md5 mismatch; cutting the response short");
                    let _ = tx.send(Err(std::io::Error::other("md5 mismatch")));
                    return;
                }
            }
            conn.mark_clean();
            backend.metrics.download_bytes.inc_by(sent);
            backend
                .metrics
                .download_seconds
                .observe(started.elapsed().as_secs_f64());
            debug!(key = %plan.key, sent, "download streamed");
        }
        Err(ClientError::Source(_)) => debug!(key = %plan.key, "client disconnected mid-download"),
        Err(e) => {
            warn!(key = %plan.key, error = %e, "download failed mid-stream");
            backend.metrics.backend_errors.inc();
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

    #[test]
    fn etags_match() {
        let mut h = HeaderMap::new();
        h.insert(header::IF_NONE_MATCH, hv("\"abc\", \"def\""));
        assert!(if_none_match_hits(&h, "\"def\""));
        assert!(!if_none_match_hits(&h, "\"xyz\""));
    }
}
