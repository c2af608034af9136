//! Streaming a STEP file to an HTTP client, whole or by range.
//!
//! One pooled connection pipelines DOWNLOADs of the blocks covering the
//! requested bytes, and a task moves the blocks from its response stream to
//! the HTTP body through a bounded channel. Backpressure: the response stream
//! sends a request only when one of its `window` credits is free, and it is
//! polled only when the channel has room, so a slow client holds at most
//! `2 × window` (+1, see below) blocks in memory.
//!
//! Integrity. Over TCP, a download of the whole file (no Range, or one
//! covering every byte) is hashed on the way, and its last block is held
//! back until the md5 is known: on a mismatch the body ends with an error
//! instead of that block, so hyper closes the connection short of its
//! Content-Length and no client ever sees a complete, clean response with
//! wrong bytes. In process that hash is not computed: both of our stores
//! check every block they read against per-4 KiB checksums whose header
//! names the file's size and md5, and refuse a bad one (`integrity`), which
//! aborts the body like any other mid-stream error — the same check that
//! protects a partial range on every path. Against a reference server a
//! partial range is not verified.
//!
//! Presentation. The bytes are the user's, served from the gateway's own
//! origin (where the page keeps its token), so they must never run there:
//! every response carries `nosniff` and a sandboxing CSP that loads
//! nothing, and only passive media and plain text are shown `inline`;
//! everything else — HTML, SVG, XML, PDF, scripts, unknown types — is an
//! `attachment` the browser saves instead of opening ([`presentation`]).
//!
//! Stalls. A client that stops reading (or never reads) leaves the channel
//! full; after [`STALL_FACTOR`] × the backend timeout without room, the
//! download gives up and the body ends with an error. However a download
//! ends, its STEP connection goes back to the pool, which reads the answers
//! still in flight before lending it again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use md5::{Digest, Md5};
use step_core::Problem;
use step_core::client::{ClientError, DownloadPlan, StepClient, expect_ok};
use tokio::sync::mpsc;
use tracing::{debug, error, warn};

use crate::backend::{Backend, Route, Session};
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
    let plan = match got.map_err(|e| backend.step_error(e)) {
        // No file: If-Match cannot hold (RFC 9110 §13.1.1).
        Err(GatewayError::Step {
            problem: step_core::Problem::NotFound,
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
    let mut headers = presentation(key);
    let put = |h: &mut HeaderMap, name, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    conditional::validator_headers(&mut headers, current);
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));

    match conditional::evaluate(req, current, true) {
        Outcome::Proceed => {}
        Outcome::NotModified => {
            return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
        }
        Outcome::Failed(why) => {
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
        return Ok((status, headers, Body::empty()).into_response());
    }

    let window = tp.window.max(1);
    // Every byte of the file goes out: check it against the md5 — unless
    // the service is in this process, whose stores check every block they
    // read against checksums tied to this very file's md5: hashing it again
    // here was most of a download's CPU and held back its last block.
    let verify = first == 0 && last + 1 == plan.size && !backend.is_in_process();
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(window);
    tokio::spawn(stream_blocks(
        backend, conn, plan, first, last, window, tx, verify,
    ));
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    Ok((status, headers, Body::from_stream(body)).into_response())
}

/// What user content may do in a browser: nothing. A sandbox (an opaque
/// origin: no script, no storage, no cookies of ours, no forms), nothing
/// fetched; media documents may load their own URL, and the inline styles
/// browsers give image and text views are harmless.
pub const USER_CONTENT_CSP: &str =
    "sandbox; default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'";

/// Types a browser shows without running anything from them: raster
/// images, audio, video, plain text. Shown inline; every other type
/// (including SVG, HTML, XML, PDF and unknown ones) is an attachment.
const INLINE_TYPES: &[&str] = &[
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "image/avif",
    "image/bmp",
    "image/x-icon",
    "audio/mpeg",
    "audio/ogg",
    "audio/wav",
    "audio/webm",
    "audio/flac",
    "audio/aac",
    "audio/mp4",
    "audio/m4a",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "text/plain",
];

/// Bytes of a file name kept as they are in `filename*` (RFC 8187
/// attr-char); the rest is percent-encoded.
const ATTR_CHAR: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// The headers that say how a browser presents the file under `key`:
/// its type (guessed from the key; plain text as UTF-8), whether it is
/// shown or saved and under which name, and that it runs nothing.
pub fn presentation(key: &str) -> HeaderMap {
    let mime = mime_guess::from_path(key).first_or_octet_stream();
    let essence = mime.essence_str();
    let inline = INLINE_TYPES.contains(&essence);
    let kind = if essence == "text/plain" {
        "text/plain; charset=utf-8".to_owned()
    } else {
        essence.to_owned()
    };
    let name = key.rsplit('/').next().unwrap_or(key);
    // A quoted ASCII name for every client, and the exact one (RFC 8187)
    // where it differs.
    let plain: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c,
            _ => '_',
        })
        .collect();
    let mut disposition = format!(
        "{}; filename=\"{plain}\"",
        if inline { "inline" } else { "attachment" }
    );
    if plain != name {
        let exact = percent_encoding::utf8_percent_encode(name, ATTR_CHAR);
        disposition.push_str(&format!("; filename*=UTF-8''{exact}"));
    }
    let mut h = HeaderMap::new();
    for (name, value) in [
        (header::CONTENT_TYPE, kind),
        (header::CONTENT_DISPOSITION, disposition),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        (header::CONTENT_SECURITY_POLICY, USER_CONTENT_CSP.to_owned()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    h
}

/// Why a download stopped early.
enum Stop {
    /// The HTTP body was dropped: the client went away.
    ClientGone,
    /// The HTTP client took nothing for this long.
    Stalled(Duration),
    Step(ClientError),
}

#[allow(clippy::too_many_arguments)]
async fn stream_blocks(
    backend: Arc<Backend>,
    mut conn: Session,
    plan: DownloadPlan,
    first: u64,
    last: u64,
    window: usize,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    verify: bool,
) {
    let started = Instant::now();
    let stall: Duration = backend.transfer_settings().backend_timeout() * STALL_FACTOR;
    let bs = plan.block_size.max(1);
    let (first_block, last_block) = (first / bs, last / bs);
    let token = conn.token().unwrap_or_default().to_owned();
    let mut hasher = verify.then(Md5::new);
    // The latest block of a verified download, sent only once the next one
    // arrives or the md5 is known to match.
    let mut held: Option<Bytes> = None;
    let mut sent = 0u64;
    let mut next = first_block;
    // Backends this download lost its connection to (a bit each).
    let mut lost = 0u64;
    let result = loop {
        let mut block = Block {
            plan: &plan,
            first,
            last,
            hasher: &mut hasher,
            held: &mut held,
            sent: &mut sent,
            next: &mut next,
            tx: &tx,
            stall,
            verify,
        };
        let forwarded = forward(&mut conn, &token, &mut block, last_block, window).await;
        // The connection broke or went silent: the rest of the same version
        // (the plan names its upload) from another backend over the same
        // store, from the first block not yet taken. A refusal (the version
        // was replaced, a corrupt block) ends the body as before.
        let member = match (&forwarded, conn.member()) {
            (Err(Stop::Step(e)), Some(m)) if e.is_interruption() && backend.backend_count() > 1 => {
                m
            }
            _ => break forwarded,
        };
        lost |= crate::backend::bit(member);
        match backend.conn_to(&token, Route::Avoid(lost)).await {
            Ok(other) => {
                warn!(key = %plan.key, from_block = next, failed = member,
                    to = other.member().unwrap_or_default(),
                    "STEP backend lost mid-download; continuing on another");
                backend.metrics.backend_errors.inc();
                conn = other;
            }
            Err(_) => break forwarded,
        }
    };

    let metrics = &backend.metrics;
    match result {
        Ok(()) => {
            if let Some(h) = hasher {
                let got = hex::encode(h.finalize());
                if !got.eq_ignore_ascii_case(&plan.md5) {
                    error!(key = %plan.key, expected = %plan.md5, %got,
                        "download md5 mismatch: stored bytes are corrupt; aborting the response before its last block");
                    metrics.download_integrity_failures.inc();
                    let err = std::io::Error::other("md5 mismatch");
                    let _ = tokio::time::timeout(stall, tx.send(Err(err))).await;
                    return;
                }
            }
            if let Some(tail) = held.take() {
                // Bounded like every other block: a client that stopped
                // reading must not keep this task (or its connection).
                let _ = tokio::time::timeout(stall, tx.send(Ok(tail))).await;
            }
            metrics.download_bytes.inc_by(sent);
            metrics
                .download_seconds
                .observe(started.elapsed().as_secs_f64());
            debug!(key = %plan.key, sent, "download streamed");
        }
        Err(Stop::Stalled(stall)) => {
            warn!(key = %plan.key, ?stall, "download stalled: the HTTP client took no data");
            metrics.download_stalls.inc();
            // The channel is full: the error cannot be queued, and dropping
            // the sender ends the body short of its length anyway.
        }
        Err(Stop::ClientGone) => debug!(key = %plan.key, "client disconnected mid-download"),
        Err(Stop::Step(e)) => {
            if e.problem() == Some(Problem::Integrity) {
                error!(key = %plan.key, error = %e, "the STEP server found stored bytes corrupt; aborting the response");
                metrics.download_integrity_failures.inc();
            } else {
                warn!(key = %plan.key, error = %e, "download failed mid-stream");
                metrics.backend_errors.inc();
            }
            let err = std::io::Error::other(e.to_string());
            let _ = tokio::time::timeout(stall, tx.send(Err(err))).await;
        }
    }
}

/// A download's progress, carried from one backend to the next.
struct Block<'a> {
    plan: &'a DownloadPlan,
    first: u64,
    last: u64,
    hasher: &'a mut Option<Md5>,
    held: &'a mut Option<Bytes>,
    sent: &'a mut u64,
    /// The first block not yet taken from a backend.
    next: &'a mut u64,
    tx: &'a mpsc::Sender<Result<Bytes, std::io::Error>>,
    stall: Duration,
    verify: bool,
}

/// Pipeline DOWNLOADs of blocks `*b.next ..= last_block` on `conn` into the
/// HTTP body, advancing `*b.next` past each block taken.
async fn forward(
    conn: &mut Session,
    token: &str,
    b: &mut Block<'_>,
    last_block: u64,
    window: usize,
) -> Result<(), Stop> {
    let plan = b.plan;
    let bs = plan.block_size.max(1);
    let requests = futures::stream::iter(*b.next..=last_block)
        .map(|i| StepClient::download_request(token, plan, i));
    let mut responses = conn.responses(requests, window);
    while let Some(resp) = responses.next().await {
        let index = *b.next;
        let resp = resp.and_then(expect_ok).map_err(Stop::Step)?;
        let block_start = index * bs;
        let want = step_core::plan::block_len(plan.size, bs, index).unwrap_or(0);
        if resp.binary.len() as u64 != want {
            return Err(Stop::Step(ClientError::Protocol(format!(
                "block {index} has {} bytes, expected {want}",
                resp.binary.len()
            ))));
        }
        if let Some(h) = b.hasher.as_mut() {
            h.update(&resp.binary);
        }
        let lo = b.first.saturating_sub(block_start) as usize;
        let hi = ((b.last + 1).min(block_start + want) - block_start) as usize;
        let mut piece = resp.binary.slice(lo..hi);
        *b.sent += piece.len() as u64;
        *b.next += 1;
        if b.verify {
            match b.held.replace(piece) {
                Some(previous) => piece = previous,
                None => continue,
            }
        }
        match tokio::time::timeout(b.stall, b.tx.send(Ok(piece))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Stop::ClientGone),
            Err(_) => return Err(Stop::Stalled(b.stall)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("header")
    }

    #[test]
    fn only_passive_types_are_shown_inline() {
        let shown = |key: &str| {
            let h = presentation(key);
            let get = |n| {
                h.get(n)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned()
            };
            (get(header::CONTENT_TYPE), get(header::CONTENT_DISPOSITION))
        };
        for key in [
            "a.html", "b.htm", "c.svg", "d.xml", "e.pdf", "f.js", "g.mjs", "h", "i.swf",
        ] {
            assert!(
                shown(key).1.starts_with("attachment;"),
                "{key}: {:?}",
                shown(key)
            );
        }
        for key in ["a.png", "b.jpeg", "c.gif", "d.mp3", "e.mp4", "f.txt"] {
            assert!(
                shown(key).1.starts_with("inline;"),
                "{key}: {:?}",
                shown(key)
            );
        }
        assert_eq!(shown("x/notes.txt").0, "text/plain; charset=utf-8");
        assert_eq!(
            shown("a/b\\c\"d.txt").1,
            "inline; filename=\"b_c_d.txt\"; filename*=UTF-8''b%5Cc%22d.txt"
        );
        assert_eq!(shown("\r\n.png").1.lines().count(), 1);
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
