//! HTTP validators and conditional requests (RFC 9110 §8.8, §13), in one
//! place: the `ETag` and `Last-Modified` a file is served with, and what
//! `If-Match`, `If-None-Match`, `If-Modified-Since`, `If-Unmodified-Since`
//! and `If-Range` make of a request.
//!
//! A file's entity tag is its md5 in quotes: strong, since equal md5s mean
//! equal bytes. `Last-Modified` is when the file became complete, which our
//! STEP server's FILE GET answers carry (`last_modified`); behind a server
//! that does not say (the reference) no `Last-Modified` is sent and the
//! date conditions are ignored, as RFC 9110 prescribes without one.

use std::time::{Duration, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, header};

/// The entity tag of a file with md5 `md5`.
pub fn etag(md5: &str) -> String {
    format!("\"{md5}\"")
}

/// `secs` (Unix) as an RFC 3339 UTC timestamp, e.g. `2026-11-29T18:30:00Z`.
pub fn rfc3339(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}

/// `secs` (Unix) as an HTTP-date (IMF-fixdate), for `Last-Modified`.
pub fn http_date(secs: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs))
}

fn header_text<'h>(h: &'h HeaderMap, name: &header::HeaderName) -> Option<&'h str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The entity tags of a list header (`If-Match`, `If-None-Match`), over
/// all its lines; `None` when the header is absent.
fn tags(h: &HeaderMap, name: &header::HeaderName) -> Option<Vec<String>> {
    let mut values = h.get_all(name).iter().peekable();
    values.peek()?;
    Some(
        values
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect(),
    )
}

/// Strong comparison (If-Match, If-Range): a weak tag never matches.
fn strong_match(candidate: &str, current: &str) -> bool {
    !candidate.starts_with("W/") && candidate == current
}

/// Weak comparison (If-None-Match): `W/` is ignored on either side.
fn weak_match(candidate: &str, current: &str) -> bool {
    candidate.trim_start_matches("W/") == current.trim_start_matches("W/")
}

fn date(h: &HeaderMap, name: &header::HeaderName) -> Option<u64> {
    let t = httpdate::parse_http_date(header_text(h, name)?.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// The current state of the resource a request targets.
#[derive(Debug, Clone, Copy)]
pub struct Current<'a> {
    /// Its entity tag; `None` when there is no file under the key.
    pub etag: Option<&'a str>,
    /// When it was last modified (Unix seconds), when known.
    pub modified: Option<u64>,
}

/// What the preconditions of a request make of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Carry the method out.
    Proceed,
    /// 304 Not Modified (GET/HEAD only).
    NotModified,
    /// 412 Precondition Failed.
    Failed(&'static str),
}

/// Evaluate the preconditions of a request in the order of RFC 9110
/// §13.2.2: If-Match (else If-Unmodified-Since), then If-None-Match (else
/// If-Modified-Since, GET/HEAD only). `safe` is GET or HEAD. If-Range is
/// separate ([`range_applies`]): it decides only whether Range is used.
pub fn evaluate(h: &HeaderMap, current: Current<'_>, safe: bool) -> Outcome {
    // Step 1 / 2.
    if let Some(list) = tags(h, &header::IF_MATCH) {
        let hit = match current.etag {
            None => false,
            Some(tag) => list.iter().any(|t| t == "*" || strong_match(t, tag)),
        };
        if !hit {
            return Outcome::Failed(
                "If-Match: the file's current entity tag is not among those given",
            );
        }
    } else if let Some(since) = date(h, &header::IF_UNMODIFIED_SINCE)
        && let Some(modified) = current.modified
        && current.etag.is_some()
        && modified > since
    {
        return Outcome::Failed("If-Unmodified-Since: the file was modified after that date");
    }
    // Step 3 / 4.
    if let Some(list) = tags(h, &header::IF_NONE_MATCH) {
        let hit = match current.etag {
            None => false,
            Some(tag) => list.iter().any(|t| t == "*" || weak_match(t, tag)),
        };
        if hit {
            return if safe {
                Outcome::NotModified
            } else {
                Outcome::Failed("If-None-Match: a file matching it exists")
            };
        }
    } else if safe
        && let Some(since) = date(h, &header::IF_MODIFIED_SINCE)
        && let Some(modified) = current.modified
        && current.etag.is_some()
        && modified <= since
    {
        return Outcome::NotModified;
    }
    Outcome::Proceed
}

/// Whether a `Range` header is to be honoured (RFC 9110 §13.1.5): always
/// without `If-Range`; with it, only when its validator — an entity tag
/// (strong comparison) or an HTTP-date (exactly the last modification) —
/// still describes the file. Otherwise the whole file is sent, 200.
pub fn range_applies(h: &HeaderMap, current: Current<'_>) -> bool {
    let Some(value) = header_text(h, &header::IF_RANGE).map(str::trim) else {
        // Present but not text: not a validator that can match.
        return h.get(header::IF_RANGE).is_none();
    };
    if value.starts_with('"') || value.starts_with("W/") {
        return current.etag.is_some_and(|tag| strong_match(value, tag));
    }
    match (httpdate::parse_http_date(value), current.modified) {
        (Ok(t), Some(modified)) => t
            .duration_since(UNIX_EPOCH)
            .is_ok_and(|d| d.as_secs() == modified),
        _ => false,
    }
}

/// The validators and caching rules a file is served with: `ETag`,
/// `Last-Modified` (when known) and `Cache-Control: private, no-cache` —
/// files can be replaced and belong to a user, so shared caches keep none
/// and clients revalidate (cheaply, with 304) before reusing a copy.
pub fn validator_headers(headers: &mut HeaderMap, current: Current<'_>) {
    if let Some(tag) = current.etag
        && let Ok(v) = HeaderValue::from_str(tag)
    {
        headers.insert(header::ETAG, v);
    }
    if let Some(secs) = current.modified
        && let Ok(v) = HeaderValue::from_str(&http_date(secs))
    {
        headers.insert(header::LAST_MODIFIED, v);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
}

/// Whether a request carries a precondition that needs the current file
/// to be evaluated (on PUT and DELETE, which do not fetch it otherwise).
pub fn has_preconditions(h: &HeaderMap) -> bool {
    [
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_UNMODIFIED_SINCE,
    ]
    .iter()
    .any(|name| h.contains_key(name))
}

/// `If-None-Match: *`: the request may only create (PUT).
pub fn create_only(h: &HeaderMap) -> bool {
    tags(h, &header::IF_NONE_MATCH).is_some_and(|list| list.iter().any(|t| t == "*"))
}
