//! tus 1.0.0 resumable uploads at `/tus/`: core, creation,
//! creation-with-upload, termination, checksum (md5) and expiration.
//!
//! Nothing about an upload is kept in gateway memory that the STEP server
//! does not also hold, apart from one optional partial block:
//!
//! * creation is a FILE SAVE (with the backend's block size); its plan —
//!   key, size, block size and the SAVE's `upload_id` — is the upload URL
//!   (`/tus/<base64url of it>`), so any gateway, also after a restart, finds
//!   the upload again. The user always comes from the request's own
//!   credentials: a URL names an upload, it grants nothing, and another
//!   user's SAVE finds no upload of that id;
//! * the offset is the server's: FILE GET `upload_status` (a read, our STEP
//!   extension) answers with the key's unfinished upload and the blocks it
//!   still misses, and the contiguous prefix of stored blocks is the offset.
//!   Finding an upload never changes it: a URL that does not name the
//!   key's current upload (its id and plan) is 404 and touches nothing;
//! * PATCH bytes become UPLOAD blocks as whole blocks arrive. A PATCH that
//!   ends inside a block leaves a tail (less than one block) that this
//!   process keeps, counted against `--max-buffered-bytes`, and reports in
//!   the offset; when it cannot be kept, or after a restart, the offset is
//!   the block-aligned one the server holds and the client resends from
//!   there. Every response names the block size (`Step-Block-Size`): chunks
//!   that are multiples of it never depend on a kept tail.
//!
//! Requests on one upload are serialised by a lock on what the URL names —
//! the user, key and upload id — not on the URL's text, which can be spelt
//! in more than one way.
//!
//! An `Upload-Checksum` chunk is spooled (memory or temp file, like a
//! multipart upload) and checked before any of it is stored, so a mismatch
//! (460) keeps nothing of it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use step_core::Problem;
use step_core::client::{SaveOptions, UploadPlan};
use tracing::{debug, info};

use crate::AppState;
use crate::backend::TransferPlan;
use crate::clash::{ClashQuery, OnClash};
use crate::error::GatewayError;
use crate::routes::{self, Auth};

pub const VERSION: &str = "1.0.0";
pub const EXTENSIONS: &str = "creation,creation-with-upload,termination,checksum,expiration";
/// The media type of PATCH bodies.
pub const OFFSET_STREAM: &str = "application/offset+octet-stream";

const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const TUS_VERSION: HeaderName = HeaderName::from_static("tus-version");
const TUS_EXTENSION: HeaderName = HeaderName::from_static("tus-extension");
const TUS_MAX_SIZE: HeaderName = HeaderName::from_static("tus-max-size");
const TUS_CHECKSUM_ALGORITHM: HeaderName = HeaderName::from_static("tus-checksum-algorithm");
const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");
const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
const UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");
/// Ours: the upload's block size. Offsets after a restart are multiples of
/// it (unless the upload is complete).
pub const STEP_BLOCK_SIZE: HeaderName = HeaderName::from_static("step-block-size");

mod blocks;
mod create;
mod tails;

use blocks::Blocks;
pub use create::create;
use tails::SlotGuard;
pub use tails::Tails;

/// The tus routes, to be served with the file routes' body handling (no
/// body-size limit, the minimum body rate).
pub fn router() -> axum::Router<Arc<AppState>> {
    axum::Router::new()
        .route("/tus/", post(create).options(options))
        .route(
            "/tus/{id}",
            patch(write).head(head).delete(terminate).options(options),
        )
        .layer(axum::middleware::from_fn(tus_headers))
}

/// Every tus response says which protocol it speaks and is not cached.
async fn tus_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(TUS_RESUMABLE, HeaderValue::from_static(VERSION));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

// ------------------------------------------------------------ upload URLs

/// What an upload URL carries: all any gateway needs to find the upload on
/// the STEP server again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRef {
    #[serde(rename = "k")]
    pub key: String,
    /// The SAVE's `upload_id`; none for an empty file (complete at once).
    #[serde(rename = "u")]
    pub upload_id: Option<String>,
    #[serde(rename = "n")]
    pub size: u64,
    #[serde(rename = "b")]
    pub block_size: u64,
}

impl UploadRef {
    pub fn encode(&self) -> String {
        // Serializing a struct of strings and integers cannot fail.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    pub fn decode(id: &str) -> Result<Self, GatewayError> {
        let gone = || GatewayError::NotFound("no such tus upload".into());
        let json = URL_SAFE_NO_PAD.decode(id).map_err(|_| gone())?;
        let r: Self = serde_json::from_slice(&json).map_err(|_| gone())?;
        if r.block_size == 0 {
            return Err(gone());
        }
        Ok(r)
    }

    pub fn location(&self) -> String {
        format!("/tus/{}", self.encode())
    }

    fn plan(&self) -> UploadPlan {
        let total_block = step_core::plan::total_blocks(self.size, self.block_size);
        UploadPlan {
            key: self.key.clone(),
            size: self.size,
            total_block,
            block_size: self.block_size,
            missing: vec![[0, total_block]],
            resumed: true,
            upload_id: self.upload_id.clone(),
        }
    }
}

// ------------------------------------------------------------ headers

fn require_version(headers: &HeaderMap) -> Result<(), GatewayError> {
    match headers.get(&TUS_RESUMABLE) {
        Some(v) if v.as_bytes() == VERSION.as_bytes() => Ok(()),
        _ => Err(GatewayError::TusVersion),
    }
}

fn u64_header(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, GatewayError> {
    let Some(v) = headers.get(name) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .map(Some)
        .ok_or_else(|| GatewayError::BadRequest(format!("{name} must be a non-negative integer")))
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs; the value of
/// `filename`, if any.
fn filename(headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    let Some(v) = headers.get(&UPLOAD_METADATA) else {
        return Ok(None);
    };
    let bad = |why: &str| GatewayError::BadRequest(format!("Upload-Metadata: {why}"));
    let text = v.to_str().map_err(|_| bad("not ASCII"))?;
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once(' ').unwrap_or((pair, ""));
        if name != "filename" {
            continue;
        }
        let raw = STANDARD
            .decode(value.trim())
            .map_err(|_| bad("the filename value is not base64"))?;
        let name = String::from_utf8(raw).map_err(|_| bad("the filename is not UTF-8"))?;
        return Ok(Some(name).filter(|n| !n.is_empty()));
    }
    Ok(None)
}

/// `Upload-Checksum: md5 <base64>`; other algorithms are refused (400).
fn checksum(headers: &HeaderMap) -> Result<Option<[u8; 16]>, GatewayError> {
    let Some(v) = headers.get(&UPLOAD_CHECKSUM) else {
        return Ok(None);
    };
    let bad = || {
        GatewayError::BadRequest(
            "Upload-Checksum must be \"md5 <base64 of the 16-byte digest>\" (md5 is the one algorithm supported)".into(),
        )
    };
    let text = v.to_str().map_err(|_| bad())?;
    let (algo, sum) = text.trim().split_once(' ').ok_or_else(bad)?;
    if !algo.eq_ignore_ascii_case("md5") {
        return Err(bad());
    }
    let raw = STANDARD.decode(sum.trim()).map_err(|_| bad())?;
    raw.try_into().map(Some).map_err(|_| bad())
}

fn content_type_is_offset_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(OFFSET_STREAM))
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

fn set(resp: &mut Response, name: HeaderName, value: impl ToString) {
    if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
        resp.headers_mut().insert(name, v);
    }
}

/// `Upload-Expires` for an upload the server just touched.
fn expires(resp: &mut Response, expiry: Option<u64>) {
    if let Some(secs) = expiry {
        let at = SystemTime::now() + Duration::from_secs(secs);
        set(resp, UPLOAD_EXPIRES, httpdate::fmt_http_date(at));
    }
}

fn no_resume() -> GatewayError {
    GatewayError::NotImplemented(
        "the STEP backend cannot resume uploads (no resume capability or upload ids), which tus needs"
            .into(),
    )
}

fn gone() -> GatewayError {
    GatewayError::NotFound(
        "no such tus upload (it expired, was terminated, or another upload of its key replaced it)"
            .into(),
    )
}

// ------------------------------------------------------------ the server's view

/// Where an upload stands on the STEP server.
#[derive(Debug)]
enum Found {
    Open {
        /// Bytes of the contiguous prefix of stored blocks.
        prefix: u64,
        tp: TransferPlan,
        /// Seconds an idle upload lives (the server's capability).
        expiry: Option<u64>,
        /// The upload's last SAVE or block, Unix seconds (0: unknown).
        last_active: u64,
    },
    Complete,
}

fn no_status() -> GatewayError {
    GatewayError::NotImplemented(
        "the STEP backend cannot report an unfinished upload without changing it (no \
         upload_status capability), which tus needs"
            .into(),
    )
}

/// Ask the server where `r` stands, changing nothing: the key's unfinished
/// upload when it is `r`'s (same id and plan), else the key's complete file
/// when `r` completed it, else 404.
async fn find(st: &AppState, token: &str, r: &UploadRef) -> Result<Found, GatewayError> {
    let Some(want_id) = r.upload_id.as_deref() else {
        // An empty file: complete at creation; it exists or it is gone.
        return complete_or_gone(st, token, r).await;
    };
    let mut conn = st.backend.conn(token).await?;
    let caps = conn.capabilities();
    if !caps.resume {
        return Err(no_resume());
    }
    if !caps.upload_status {
        return Err(no_status());
    }
    let tp = st.backend.plan_for(&conn);
    let status = conn.file_upload_status(&r.key).await;
    drop(conn);
    match status.map_err(|e| st.backend.step_error(e)) {
        Ok(s) if s.upload_id == want_id && s.size == r.size && s.block_size == r.block_size => {
            let prefix = s
                .missing
                .first()
                .map_or(r.size, |m| m[0].saturating_mul(r.block_size).min(r.size));
            Ok(Found::Open {
                prefix,
                tp,
                expiry: caps.upload_expiry,
                last_active: s.last_active,
            })
        }
        // Another upload of the key, or none: this one may have completed
        // (a replacing upload can be under way beside its file).
        Ok(_)
        | Err(GatewayError::Step {
            problem: Problem::NotFound,
            ..
        }) => complete_or_gone(st, token, r).await,
        Err(e) => Err(e),
    }
}

/// The key holds a complete file: this upload's when the server names the
/// same upload as its version (without versions, when the size matches).
async fn complete_or_gone(
    st: &AppState,
    token: &str,
    r: &UploadRef,
) -> Result<Found, GatewayError> {
    match st.backend.file_get(token, r.key.clone(), None).await {
        Ok(plan)
            if plan.size == r.size
                && match (&plan.upload_id, &r.upload_id) {
                    (Some(version), Some(ours)) => version == ours,
                    _ => true,
                } =>
        {
            Ok(Found::Complete)
        }
        Ok(_) => Err(gone()),
        Err(GatewayError::Step { problem, .. }) if problem.is_gone() => Err(gone()),
        Err(e) => Err(e),
    }
}

/// `find` with the request's token, renewed once when it is the default
/// user's and the server no longer takes it; returns the token that worked.
async fn find_as(
    st: &AppState,
    auth: &Auth,
    r: &UploadRef,
) -> Result<(String, Found), GatewayError> {
    st.with_token(auth, |t| async move {
        let found = find(st, &t, r).await?;
        Ok((t, found))
    })
    .await
}

// ------------------------------------------------------------ OPTIONS

pub async fn options(State(st): State<Arc<AppState>>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    set(&mut resp, TUS_VERSION, VERSION);
    set(&mut resp, TUS_EXTENSION, EXTENSIONS);
    set(&mut resp, TUS_CHECKSUM_ALGORITHM, "md5");
    if let Some(max) = max_size(&st).await {
        set(&mut resp, TUS_MAX_SIZE, max);
    }
    resp
}

/// The largest upload: this gateway's --max-upload and the server's
/// announced maximum, whichever is smaller (the server's only when it
/// answers).
async fn max_size(st: &AppState) -> Option<u64> {
    let gateway = (st.http.max_upload > 0).then_some(st.http.max_upload);
    let server = match st.backend.conn("").await {
        Ok(conn) => conn.capabilities().max_file_size,
        Err(_) => None,
    };
    match (gateway, server) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

// ------------------------------------------------------------ HEAD

pub async fn head(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    routes::Key(id): routes::Key,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    require_version(&headers)?;
    let r = UploadRef::decode(&id)?;
    let mut slot = st.tus.lock(&auth.user, &r).await?;
    let (_, found) = find_as(&st, &auth, &r).await?;
    let mut resp = StatusCode::OK.into_response();
    match found {
        Found::Complete => set(&mut resp, UPLOAD_OFFSET, r.size),
        Found::Open {
            prefix,
            expiry,
            last_active,
            ..
        } => {
            let tail = slot.take_tail(prefix);
            let kept = tail.as_ref().map_or(0, |t| t.bytes.len() as u64);
            slot.slot().tail = tail;
            set(&mut resp, UPLOAD_OFFSET, prefix + kept);
            // From its last write: asking does not keep an upload alive.
            if let Some(secs) = expiry.filter(|_| last_active > 0) {
                let at = SystemTime::UNIX_EPOCH + Duration::from_secs(last_active + secs);
                set(&mut resp, UPLOAD_EXPIRES, httpdate::fmt_http_date(at));
            }
        }
    }
    set(&mut resp, UPLOAD_LENGTH, r.size);
    set(&mut resp, STEP_BLOCK_SIZE, r.block_size);
    set(
        &mut resp,
        UPLOAD_METADATA,
        format!("filename {}", STANDARD.encode(r.key.as_bytes())),
    );
    Ok(resp)
}

// ------------------------------------------------------------ DELETE

/// Termination: the unfinished upload (or the file it completed) is
/// removed; anything else under its key is left alone.
pub async fn terminate(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    routes::Key(id): routes::Key,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    require_version(&headers)?;
    let r = UploadRef::decode(&id)?;
    let mut slot = st.tus.lock(&auth.user, &r).await?;
    // Found first: the server answers a FILE DELETE that discards an
    // unfinished upload with "not found" (as the reference does), so only
    // this tells a terminated upload from a missing one.
    let (token, _) = find_as(&st, &auth, &r).await?;
    let deleted = match r.upload_id.clone() {
        Some(uid) => {
            let key = r.key.clone();
            st.backend
                .call(&token, async |c| c.file_delete_upload(&key, &uid).await)
                .await
        }
        None => st.backend.file_delete(&token, r.key.clone()).await,
    };
    match deleted {
        Ok(())
        | Err(GatewayError::Step {
            problem: Problem::NotFound,
            ..
        }) => {
            slot.slot().tail = None;
            info!(key = %r.key, "tus upload terminated");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(e) => Err(e),
    }
}

// ------------------------------------------------------------ PATCH

/// Where an upload stands after a write.
#[derive(Debug, Clone, Copy)]
struct Progress {
    offset: u64,
    expiry: Option<u64>,
}

pub async fn write(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    routes::Key(id): routes::Key,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    require_version(&headers)?;
    if !content_type_is_offset_stream(&headers) {
        return Err(GatewayError::UnsupportedMediaType(format!(
            "PATCH bodies must be sent as Content-Type: {OFFSET_STREAM}"
        )));
    }
    let claimed = u64_header(&headers, &UPLOAD_OFFSET)?
        .ok_or_else(|| GatewayError::BadRequest("Upload-Offset is required".into()))?;
    let sum = checksum(&headers)?;
    let r = UploadRef::decode(&id)?;
    if let Some(len) = u64_header(&headers, &header::CONTENT_LENGTH)?
        && claimed.saturating_add(len) > r.size
    {
        return Err(GatewayError::BadRequest(format!(
            "{len} bytes at offset {claimed} go past Upload-Length {}",
            r.size
        )));
    }
    let slot = st.tus.lock(&auth.user, &r).await?;
    let (token, found) = find_as(&st, &auth, &r).await?;
    let p = spawn_write(&st, token, r.clone(), slot, found, claimed, sum, body).await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    set(&mut resp, UPLOAD_OFFSET, p.offset);
    set(&mut resp, STEP_BLOCK_SIZE, r.block_size);
    if p.offset < r.size {
        expires(&mut resp, p.expiry);
    }
    Ok(resp)
}

/// Run [`write_at`] on a task of its own: when the client goes away and
/// hyper drops the request, what arrived is still stored and the tail
/// recorded, so the offset a later HEAD reports is what the upload holds.
#[allow(clippy::too_many_arguments)]
async fn spawn_write(
    st: &Arc<AppState>,
    token: String,
    r: UploadRef,
    slot: SlotGuard,
    found: Found,
    claimed: u64,
    sum: Option<[u8; 16]>,
    body: Body,
) -> Result<Progress, GatewayError> {
    let st = Arc::clone(st);
    tokio::spawn(async move { write_at(&st, &token, &r, slot, found, claimed, sum, body).await })
        .await
        .map_err(|e| GatewayError::Internal(format!("tus write task: {e}")))?
}

#[allow(clippy::too_many_arguments)]
async fn write_at(
    st: &AppState,
    token: &str,
    r: &UploadRef,
    mut slot: SlotGuard,
    found: Found,
    claimed: u64,
    sum: Option<[u8; 16]>,
    body: Body,
) -> Result<Progress, GatewayError> {
    let (prefix, tp, expiry) = match found {
        Found::Complete if claimed == r.size => {
            return Ok(Progress {
                offset: r.size,
                expiry: None,
            });
        }
        Found::Complete => {
            return Err(GatewayError::OffsetMismatch {
                expected: r.size,
                got: claimed,
            });
        }
        Found::Open {
            prefix, tp, expiry, ..
        } => (prefix, tp, expiry),
    };
    let tail = slot.take_tail(prefix);
    let offset = prefix + tail.as_ref().map_or(0, |t| t.bytes.len() as u64);
    if claimed != offset {
        slot.slot().tail = tail;
        return Err(GatewayError::OffsetMismatch {
            expected: offset,
            got: claimed,
        });
    }
    let chunks = body.into_data_stream().map_err(|e| {
        if crate::body::is_too_slow(&e) {
            GatewayError::BodyTimeout(e.to_string())
        } else {
            GatewayError::BadRequest(format!("reading the request body: {e}"))
        }
    });
    // With a checksum nothing may be stored before the whole chunk is
    // checked: it is spooled first (memory or temp file, as multipart).
    let (chunks, _spooled): (routes::ByteStream, _) = match sum {
        None => (Box::pin(chunks), None),
        Some(want) => {
            let mut md5 = Md5::new();
            let hashed = chunks.inspect_ok(|c| md5.update(c));
            let spooled = routes::spool(st, Box::pin(hashed)).await;
            let spooled = match spooled {
                Ok(s) => s,
                Err(e) => {
                    slot.slot().tail = tail;
                    return Err(e);
                }
            };
            if md5.finalize().as_slice() != want {
                slot.slot().tail = tail;
                return Err(GatewayError::ChecksumMismatch);
            }
            let (stream, keep) = spooled.into_stream();
            (stream, keep)
        }
    };
    let mut blocks = Blocks {
        body: chunks,
        buf: tail
            .map(|t| BytesMut::from(t.bytes.as_ref()))
            .unwrap_or_default(),
        block_size: r.block_size as usize,
        index: prefix / r.block_size,
        pos: offset,
        size: r.size,
        ended: false,
        failure: None,
    };
    let plan = r.plan();
    let started = Instant::now();
    let stream = futures::stream::unfold(&mut blocks, |b| async move {
        b.next_block().await.map(|blk| (Ok(blk), b))
    });
    let sent = crate::upload::send_blocks(&st.backend, token, &plan, tp, stream).await;
    let md5 = match sent {
        Ok(m) => m,
        // Which blocks arrived is the server's to say: the next HEAD asks.
        Err(e) => return Err(e),
    };
    if let Some(md5) = md5 {
        info!(key = %r.key, size = r.size, %md5, secs = started.elapsed().as_secs_f64(), "tus upload complete");
        st.backend.metrics.upload_bytes.inc_by(r.size);
        return Ok(Progress {
            offset: r.size,
            expiry: None,
        });
    }
    let stored = blocks.index * r.block_size;
    // A tail that would reach the end (a last block held back) is dropped:
    // an offset equal to Upload-Length would say the upload is complete.
    let rest = blocks.buf.split().freeze();
    let rest = if stored + rest.len() as u64 >= r.size {
        Bytes::new()
    } else {
        rest
    };
    let kept = slot.keep(st, stored, rest);
    debug!(key = %r.key, stored, kept, "tus chunk written");
    if let Some(e) = blocks.failure {
        return Err(e);
    }
    Ok(Progress {
        offset: stored + kept,
        expiry,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_urls_round_trip_and_reject_garbage() {
        let r = UploadRef {
            key: "dir/ä b.txt".into(),
            upload_id: Some("0123abcd".into()),
            size: 12345,
            block_size: 524288,
        };
        let loc = r.location();
        assert!(loc.starts_with("/tus/"));
        assert!(
            loc[5..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(UploadRef::decode(&loc[5..]).expect("decodes"), r);
        for bad in ["", "!!", "e30", "bm90IGpzb24"] {
            assert!(UploadRef::decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn metadata_and_checksum_headers_parse() {
        let mut h = HeaderMap::new();
        h.insert(
            &UPLOAD_METADATA,
            HeaderValue::from_static("relativePath,filename b3R0ZXIuanBn , type aW1hZ2UvanBlZw=="),
        );
        assert_eq!(filename(&h).expect("ok").as_deref(), Some("otter.jpg"));
        h.insert(&UPLOAD_METADATA, HeaderValue::from_static("filename !!"));
        assert!(filename(&h).is_err());
        h.insert(
            &UPLOAD_CHECKSUM,
            HeaderValue::from_static("md5 1B2M2Y8AsgTpgAmY7PhCfg=="),
        );
        assert_eq!(
            checksum(&h).expect("ok").map(hex::encode).as_deref(),
            Some(step_core::digest::EMPTY_MD5)
        );
        h.insert(
            &UPLOAD_CHECKSUM,
            HeaderValue::from_static("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0="),
        );
        assert!(checksum(&h).is_err());
    }
}
