//! HTTP handlers: thin translations between HTTP and [`Backend`] calls.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Multipart, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use step_core::Problem;
use step_core::digest::password_for;
use step_core::message::field;
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tokio::sync::OwnedSemaphorePermit;

use crate::AppState;
use crate::clash::{self, ClashQuery, OnClash};
use crate::conditional;
use crate::error::GatewayError;
use crate::upload::{self, Overwrite, Stored};

pub use crate::auth::Auth;

pub use crate::route_table::{ROUTE_KINDS, RouteKind, kind_of};

impl AppState {
    /// Run `op` with the request's token; when the gateway made the token
    /// (anonymous or Basic) and the server refuses it (it restarted with a
    /// new secret, or the token expired), log in again and run `op` once more.
    pub(crate) async fn with_token<T, F, Fut>(&self, auth: &Auth, op: F) -> Result<T, GatewayError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, GatewayError>>,
    {
        match op(auth.token.clone()).await {
            // Refused as a token (not for what it may do): perhaps stale.
            Err(
                e @ GatewayError::Step {
                    problem: Problem::BadToken,
                    ..
                },
            ) => match auth.renewed(self).await? {
                Some(fresh) => op(fresh).await,
                None => Err(e),
            },
            other => other,
        }
    }
}

fn json_body(body: Result<Json<Value>, JsonRejection>) -> Result<Value, GatewayError> {
    body.map(|Json(v)| v).map_err(|e| match e {
        JsonRejection::MissingJsonContentType(_) => GatewayError::BadRequest(e.body_text()),
        JsonRejection::BytesRejection(_) => GatewayError::TooLarge(e.body_text()),
        _ => GatewayError::Unprocessable(e.body_text()),
    })
}

/// The `{key}` of a route. A path that does not decode (invalid UTF-8 in its
/// percent-encoding) is answered like every other error, in JSON.
#[derive(Debug, Clone)]
pub struct Key(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Key {
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, GatewayError> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(key)) => Ok(Key(key)),
            Err(e) if e.status().is_server_error() => Err(GatewayError::Internal(e.body_text())),
            Err(e) => Err(GatewayError::BadRequest(e.body_text())),
        }
    }
}

// ------------------------------------------------------------------ auth

#[derive(Debug, Deserialize)]
struct LoginBody {
    username: String,
    password: Option<String>,
}

pub async fn login(
    State(st): State<Arc<AppState>>,
    client: Option<axum::Extension<crate::auth::ClientAddr>>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, GatewayError> {
    let body: LoginBody = serde_json::from_value(json_body(body)?).map_err(|e| {
        GatewayError::Unprocessable(format!(
            "expected {{\"username\": ..., \"password\": ...}}: {e}"
        ))
    })?;
    let password = body
        .password
        .unwrap_or_else(|| password_for(&body.username));
    let client = client.map(|c| c.0.0.ip());
    let token = st.backend.login(&body.username, &password, client).await?;
    Ok(Json(
        json!({"token": token, "token_type": "Bearer", "username": body.username}),
    ))
}

// ------------------------------------------------------------------ files

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    key: Option<String>,
    /// What a name clash does (see `clash.rs`).
    overwrite: Option<bool>,
    rename: Option<bool>,
}

fn created(stored: Stored) -> Response {
    let location = HeaderValue::from_str(&stored.url).ok();
    let mut resp = (StatusCode::CREATED, Json(stored)).into_response();
    if let Some(loc) = location {
        resp.headers_mut().insert(header::LOCATION, loc);
    }
    resp
}

pub(crate) type ByteStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, GatewayError>> + Send>>;

/// A body of not-yet-known length, held in memory while small and in a temp
/// file beyond the spool threshold.
pub(crate) enum Spooled {
    /// The bytes and their share of --max-buffered-bytes.
    Memory(Bytes, Option<OwnedSemaphorePermit>),
    File(tokio::fs::File, u64, tempfile::TempPath),
}

/// What must live until a spooled upload has been stored (held, never read).
#[allow(dead_code)]
pub(crate) enum KeepUntilDone {
    Permit(OwnedSemaphorePermit),
    Path(tempfile::TempPath),
}

impl Spooled {
    pub(crate) fn len(&self) -> u64 {
        match self {
            Spooled::Memory(b, _) => b.len() as u64,
            Spooled::File(_, n, _) => *n,
        }
    }

    /// The bytes from the start again, keeping the spool (an upload that
    /// lost its name to another tries the next one with them).
    pub(crate) async fn replay(&self) -> Result<ByteStream, GatewayError> {
        match self {
            Spooled::Memory(b, _) => Ok(Box::pin(futures::stream::iter([Ok(b.clone())]))),
            Spooled::File(f, _, _) => {
                let io = |e: std::io::Error| {
                    GatewayError::Internal(format!("reading the spooled upload: {e}"))
                };
                let mut f = f.try_clone().await.map_err(io)?;
                f.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
                let s = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).map_err(io);
                Ok(Box::pin(s))
            }
        }
    }

    pub(crate) fn into_stream(self) -> (ByteStream, Option<KeepUntilDone>) {
        match self {
            Spooled::Memory(b, permit) => (
                Box::pin(futures::stream::iter([Ok(b)])),
                permit.map(KeepUntilDone::Permit),
            ),
            Spooled::File(f, _, path) => {
                let s = tokio_util::io::ReaderStream::with_capacity(f, 256 * 1024).map_err(|e| {
                    GatewayError::Internal(format!("reading the spooled upload: {e}"))
                });
                (Box::pin(s), Some(KeepUntilDone::Path(path)))
            }
        }
    }
}

pub(crate) async fn spool<S>(st: &AppState, mut chunks: S) -> Result<Spooled, GatewayError>
where
    S: Stream<Item = Result<Bytes, GatewayError>> + Unpin,
{
    let mut mem = BytesMut::new();
    // The memory held is counted against the gateway-wide budget; when the
    // budget is spent, this upload goes to disk like a large one.
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut file: Option<(tokio::fs::File, tempfile::TempPath)> = None;
    let mut total = 0u64;
    let io = |e: std::io::Error| GatewayError::Internal(format!("spooling the upload: {e}"));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        total += chunk.len() as u64;
        crate::upload::check_read_so_far(st, total)?;
        if file.is_none()
            && mem.len() + chunk.len() <= st.http.spool_threshold
            && let Ok(more) = u32::try_from(chunk.len())
            && let Ok(more) = Arc::clone(&st.buffered).try_acquire_many_owned(more)
        {
            match permit.as_mut() {
                Some(p) => p.merge(more),
                None => permit = Some(more),
            }
            mem.extend_from_slice(&chunk);
            continue;
        }
        if file.is_none() {
            let dir = st.http.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
            let named = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
            let (std_file, path) = named.into_parts();
            let mut f = tokio::fs::File::from_std(std_file);
            f.write_all(&mem).await.map_err(io)?;
            mem = BytesMut::new();
            permit = None;
            file = Some((f, path));
        }
        if let Some((f, _)) = file.as_mut() {
            f.write_all(&chunk).await.map_err(io)?;
        }
    }
    match file {
        None => Ok(Spooled::Memory(mem.freeze(), permit)),
        Some((mut f, path)) => {
            f.flush().await.map_err(io)?;
            f.seek(std::io::SeekFrom::Start(0)).await.map_err(io)?;
            Ok(Spooled::File(f, total, path))
        }
    }
}

async fn store_spooled(
    st: &AppState,
    auth: &Auth,
    key: &str,
    spooled: Spooled,
    overwrite: Overwrite,
) -> Result<Stored, GatewayError> {
    let size = spooled.len();
    let (stream, _keep_until_done) = spooled.into_stream();
    upload::store_with(
        &st.backend,
        &auth.token,
        auth.default,
        key,
        size,
        stream,
        overwrite,
    )
    .await
    .map_err(|e| clash::explain(e, key))
}

/// Store `spooled` under the first free name of `key` (see `clash.rs`).
async fn store_renamed(
    st: &Arc<AppState>,
    auth: &Auth,
    key: &str,
    spooled: Spooled,
) -> Result<Stored, GatewayError> {
    let spooled = &spooled;
    clash::with_free_name(st, auth, key, |name| async move {
        let stream = spooled.replay().await?;
        upload::store_with(
            &st.backend,
            &auth.token,
            auth.default,
            &name,
            spooled.len(),
            stream,
            Overwrite::Never,
        )
        .await
    })
    .await
}

/// Store a spooled upload as the request's clash choice says.
async fn store_choice(
    st: &Arc<AppState>,
    auth: &Auth,
    key: &str,
    spooled: Spooled,
    on_clash: OnClash,
) -> Result<Stored, GatewayError> {
    match on_clash {
        OnClash::Rename => store_renamed(st, auth, key, spooled).await,
        OnClash::Replace => store_spooled(st, auth, key, spooled, Overwrite::Always).await,
        OnClash::Refuse => store_spooled(st, auth, key, spooled, Overwrite::Never).await,
    }
}

fn multipart_error(e: &axum::extract::multipart::MultipartError) -> GatewayError {
    if crate::body::is_too_slow(e) {
        GatewayError::BodyTimeout(e.body_text())
    } else {
        GatewayError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

/// `POST /upload` (multipart/form-data): the first file part (one with a
/// file name) is stored under `?key=`, else its file name, else a fresh
/// uuid.
pub async fn upload_multipart(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    query: Result<Query<UploadQuery>, QueryRejection>,
    form: Result<Multipart, MultipartRejection>,
) -> Result<Response, GatewayError> {
    let Query(q) = query.map_err(|e| GatewayError::BadRequest(e.body_text()))?;
    // The framework's words ("Invalid `boundary`") are about the protocol.
    let mut form = form.map_err(|_| {
        GatewayError::BadRequest(
            "The request is not a multipart form, so it carries no file. Send the file as a \
             form field, e.g. curl -F file=@otter.jpg, or PUT the raw file to /files/{key}."
                .into(),
        )
    })?;
    let bad = |e: axum::extract::multipart::MultipartError| multipart_error(&e);
    while let Some(part) = form.next_field().await.map_err(bad)? {
        let file_name = part.file_name().map(str::to_owned);
        if file_name.is_none() {
            // A text field is never the file: a form that types its
            // content (as a forged one can) is refused, not stored.
            if part.name() == Some("file") {
                return Err(GatewayError::BadRequest(
                    "the form's \"file\" field is text, not a file: send the file as a file \
                     part, e.g. curl -F file=@otter.jpg"
                        .into(),
                ));
            }
            continue;
        }
        let key = q
            .key
            .clone()
            .filter(|k| !k.is_empty())
            .or(file_name.filter(|n| !n.is_empty()))
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let chunks = part.map_err(|e| multipart_error(&e));
        let spooled = spool(&st, chunks).await?;
        // Read (and skip) the rest of the form before storing anything: a
        // body that is not well-formed multipart to its end — e.g. a part
        // name with control characters, which openapi.yaml forbids — is
        // refused as a whole rather than half-accepted.
        while form.next_field().await.map_err(bad)?.is_some() {}
        let clash = ClashQuery {
            overwrite: q.overwrite,
            rename: q.rename,
        };
        let on_clash = clash.choice(OnClash::Refuse)?;
        let stored = store_choice(&st, &auth, &key, spooled, on_clash).await?;
        return Ok(created(stored));
    }
    Err(GatewayError::BadRequest(
        "no file in the form: send it as a file field, e.g. curl -F file=@otter.jpg".into(),
    ))
}

/// The current file under `key` as the conditional rules see it; `None`
/// when there is none.
async fn current_file(
    st: &AppState,
    auth: &Auth,
    key: &str,
) -> Result<Option<step_core::client::DownloadPlan>, GatewayError> {
    st.with_token(auth, |t| {
        let (backend, key) = (Arc::clone(&st.backend), key.to_owned());
        async move { backend.file_current(&t, key).await }
    })
    .await
}

/// Evaluate a write's preconditions (PUT, DELETE) against the current
/// file: 412 when they fail; else the md5 an If-Match pinned (so the STEP
/// server checks it again where it swaps or deletes).
async fn write_preconditions(
    st: &AppState,
    auth: &Auth,
    key: &str,
    headers: &HeaderMap,
) -> Result<Option<String>, GatewayError> {
    if !conditional::has_preconditions(headers) {
        return Ok(None);
    }
    let current = current_file(st, auth, key).await?;
    let tag = current.as_ref().map(|p| conditional::etag(&p.md5));
    let state = conditional::Current {
        etag: tag.as_deref(),
        modified: current.as_ref().and_then(|p| p.last_modified),
    };
    if let conditional::Outcome::Failed(why) = conditional::evaluate(headers, state, false) {
        return Err(GatewayError::PreconditionFailed(why.into()));
    }
    Ok(current
        .filter(|_| headers.contains_key(header::IF_MATCH))
        .map(|p| p.md5))
}

/// `PUT /files/{key}`: the raw body is the file, streamed straight through
/// when Content-Length is given, spooled when it is not. An existing file is
/// replaced atomically; `If-None-Match: *` (or `?overwrite=false`) makes it
/// create-only, `If-Match` replaces only the version it names (412
/// otherwise), and `?rename=true` stores it under a free name instead
/// (spooled first, so it can move on to the next name).
pub async fn put_file(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    Key(key): Key,
    query: Result<Query<ClashQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, GatewayError> {
    let Query(q) = query.map_err(|e| GatewayError::BadRequest(e.body_text()))?;
    let on_clash = q.clash_choice_for_put(&headers)?;
    if on_clash == OnClash::Rename {
        let spooled = spool(&st, Box::pin(body_chunks(body))).await?;
        return store_renamed(&st, &auth, &key, spooled).await.map(created);
    }
    let pinned = write_preconditions(&st, &auth, &key, &headers).await?;
    let create_only = conditional::create_only(&headers);
    let overwrite = match pinned {
        Some(md5) => Overwrite::IfMd5(md5),
        None if create_only || on_clash == OnClash::Refuse => Overwrite::Never,
        None => Overwrite::Always,
    };
    let conditional = create_only || matches!(overwrite, Overwrite::IfMd5(_));
    let stored = put_body(&st, &auth, &key, &headers, body, overwrite).await;
    match stored {
        // Created by someone else since the precondition was evaluated.
        Err(GatewayError::Step {
            problem: Problem::KeyExists,
            ..
        }) if create_only => Err(GatewayError::PreconditionFailed(
            "If-None-Match: *: a file exists under this key".into(),
        )),
        // Another write of the key won the race (its SAVE superseded this
        // upload, or it completed first): the condition no longer holds.
        Err(GatewayError::Step {
            problem: Problem::WrongOperation | Problem::Superseded | Problem::Precondition,
            ..
        }) if conditional => Err(GatewayError::PreconditionFailed(
            "another write of this key came first; the condition no longer holds".into(),
        )),
        other => other.map(created),
    }
}

fn body_chunks(body: Body) -> impl Stream<Item = Result<Bytes, GatewayError>> {
    body.into_data_stream().map_err(|e| {
        if crate::body::is_too_slow(&e) {
            GatewayError::BodyTimeout(e.to_string())
        } else {
            GatewayError::BadRequest(format!("reading the request body: {e}"))
        }
    })
}

async fn put_body(
    st: &Arc<AppState>,
    auth: &Auth,
    key: &str,
    headers: &HeaderMap,
    body: Body,
    overwrite: Overwrite,
) -> Result<Stored, GatewayError> {
    let chunks = body_chunks(body);
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match length {
        Some(size) => {
            crate::upload::check_size(st, size)?;
            let chunks = Box::pin(chunks);
            upload::store_with(
                &st.backend,
                &auth.token,
                auth.default,
                key,
                size,
                chunks,
                overwrite,
            )
            .await
            .map_err(|e| clash::explain(e, key))
        }
        None => {
            let spooled = spool(st, Box::pin(chunks)).await?;
            store_spooled(st, auth, key, spooled, overwrite).await
        }
    }
}

/// `GET` and `HEAD /files/{key}` (HEAD: the same headers, no body).
pub async fn get_file(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    Key(key): Key,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, GatewayError> {
    let head = method == Method::HEAD;
    st.with_token(&auth, |token| {
        let (backend, key, headers) = (Arc::clone(&st.backend), key.clone(), headers.clone());
        async move { crate::download::respond(backend, &token, &key, &headers, head).await }
    })
    .await
}

/// `DELETE /files/{key}`; with `If-Match`, only the version it names (the
/// STEP server checks the md5 where it deletes, so a newer one is never
/// deleted).
pub async fn delete_file(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    Key(key): Key,
    headers: HeaderMap,
) -> Result<StatusCode, GatewayError> {
    let pinned = write_preconditions(&st, &auth, &key, &headers).await?;
    st.with_token(&auth, |t| {
        let (key, pinned) = (key.clone(), pinned.clone());
        let backend = Arc::clone(&st.backend);
        async move {
            match pinned {
                Some(md5) => backend.file_delete_if(&t, key, md5).await,
                None => backend.file_delete(&t, key).await,
            }
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ records

/// Field names STEP reserves for itself; a record cannot use them.
fn reserved() -> impl Iterator<Item = &'static str> {
    field::ENVELOPE.into_iter().chain([field::KEY])
}

fn record_from(body: Value) -> Result<Map<String, Value>, GatewayError> {
    let Value::Object(map) = body else {
        return Err(GatewayError::Unprocessable(
            "a record must be a JSON object".into(),
        ));
    };
    if let Some(bad) = reserved().find(|f| map.contains_key(*f)) {
        return Err(GatewayError::Unprocessable(format!(
            "field \"{bad}\" is reserved by STEP and cannot be part of a record"
        )));
    }
    Ok(map)
}

async fn save_record(
    st: &AppState,
    auth: &Auth,
    key: Option<String>,
    body: Value,
) -> Result<Response, GatewayError> {
    let record = record_from(body)?;
    let key = st
        .with_token(auth, |t| {
            let (key, record) = (key.clone(), record.clone());
            let backend = Arc::clone(&st.backend);
            async move { backend.data_save(&t, key, record).await }
        })
        .await?;
    let url = upload::record_url(&key);
    let mut resp = (StatusCode::CREATED, Json(json!({"key": key, "url": url}))).into_response();
    if let Ok(v) = HeaderValue::from_str(&url) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    Ok(resp)
}

pub async fn create_record(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, GatewayError> {
    let body = json_body(body)?;
    save_record(&st, &auth, None, body).await
}

pub async fn put_record(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    Key(key): Key,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Response, GatewayError> {
    let body = json_body(body)?;
    save_record(&st, &auth, Some(key), body).await
}

pub async fn get_record(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    Key(key): Key,
) -> Result<Json<Value>, GatewayError> {
    let record = st
        .with_token(&auth, |t| {
            let key = key.clone();
            let backend = Arc::clone(&st.backend);
            async move { backend.data_get(&t, key).await }
        })
        .await?;
    Ok(Json(Value::Object(record)))
}

pub async fn delete_record(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    Key(key): Key,
) -> Result<StatusCode, GatewayError> {
    st.with_token(&auth, |t| {
        let key = key.clone();
        let backend = Arc::clone(&st.backend);
        async move { backend.data_delete(&t, key).await }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ------------------------------------------------------------------ operations

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

pub async fn readyz(State(st): State<Arc<AppState>>) -> Result<Json<Value>, GatewayError> {
    Ok(Json(st.backend.ready().await?))
}

pub async fn metrics(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let text = st.backend.metrics.render(st.backend.pool_status());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

pub async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/yaml")], crate::OPENAPI)
}

pub async fn not_found() -> GatewayError {
    GatewayError::NotFound("no such route; see /openapi.yaml".into())
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use axum::http::Request;
    use clap::Parser;
    use tower::ServiceExt;

    use super::*;
    use crate::backend::Backend;
    use crate::config::GatewayArgs;
    use crate::metrics::Metrics;

    /// The router over a backend nobody listens on: requests that get past
    /// their extractors end in 503.
    fn app() -> axum::Router {
        let args = GatewayArgs::try_parse_from(["gateway", "--pool-wait-ms", "200"])
            .expect("default flags");
        let backend = Backend::new(
            "127.0.0.1:9".into(),
            args.transfer,
            step_core::access::Anonymous::None,
            Metrics::new(),
        );
        crate::app(AppState::new(backend, args.http))
    }

    async fn send(req: Request<Body>) -> (StatusCode, Option<String>, Value) {
        let resp = app().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let kind = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = to_bytes(resp.into_body(), 1 << 20).await.expect("body");
        (
            status,
            kind,
            serde_json::from_slice(&body).unwrap_or(Value::Null),
        )
    }

    fn request(method: &str, uri: &str, auth: &str) -> axum::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, auth)
    }

    #[tokio::test]
    async fn extractor_rejections_are_json_errors() {
        let cases = [
            request("GET", "/files/%FF", "Bearer t").body(Body::empty()),
            request("DELETE", "/records/%C3", "Bearer t").body(Body::empty()),
            request("POST", "/upload", "Bearer t")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from("x")),
            request("POST", "/upload?key=a&key=b", "Bearer t")
                .header(header::CONTENT_TYPE, "multipart/form-data; boundary=X")
                .body(Body::from("--X--\r\n")),
        ];
        for req in cases {
            let req = req.expect("request");
            let what = format!("{} {}", req.method(), req.uri());
            let (status, kind, body) = send(req).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
            assert_eq!(kind.as_deref(), Some("application/json"), "{what}");
            assert_eq!(body["error"], "bad_request", "{what}: {body}");
        }
    }

    #[tokio::test]
    async fn bearer_scheme_is_case_insensitive() {
        // Basic credentials are a login to the (here unreachable) backend.
        for auth in ["Bearer t", "bearer t", "BEARER  t", "Basic dTpw"] {
            let req = request("GET", "/files/x", auth).body(Body::empty());
            let (status, _, body) = send(req.expect("request")).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{auth}: {body}");
        }
        for auth in [
            "Basic",
            "Basic !!",
            "Bearer",
            "Bearer ",
            "Bearertoken",
            "Digest x",
        ] {
            let req = request("GET", "/files/x", auth).body(Body::empty());
            let (status, _, body) = send(req.expect("request")).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth}: {body}");
            assert_eq!(body["error"], "unauthorized", "{auth}");
        }
    }
}
