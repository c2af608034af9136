//! Folders and selections as one zip, streamed: `GET /archive` (scripts,
//! links) and `POST /download` (the page: its token travels in the form,
//! since a download the browser saves by itself cannot carry a header).
//!
//! Memory stays flat whatever the archive's size: files are read one after
//! the other, each through the ordinary download path (`download.rs`, with
//! its own bounded window), into a bounded channel; the `zip` crate writes
//! stored entries with data descriptors on a blocking thread (it is a
//! synchronous writer) into another bounded channel that is the HTTP body.
//! Whoever stops first — the client, the writer, a failed file — ends the
//! other two: the body then stops short, so a broken archive never looks
//! complete.
//!
//! Names in the zip are the keys with the request's `prefix` taken off,
//! exactly, unless a name could escape the folder it is unpacked into
//! (`..`, `.`, an absolute or empty segment, a backslash, a drive letter, a
//! control character): such parts are percent-encoded ([`entry_name`]).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::debug;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::AppState;
use crate::auth::Auth;
use crate::error::GatewayError;
use crate::listing::{self, Scan};

/// Most keys and folders one request may name.
pub const MAX_ITEMS: usize = 10_000;

/// The longest prefix, key or folder a selection names (a key is at most
/// 1024 bytes on a STEP server with default limits).
pub const MAX_NAME_CHARS: usize = 1024;

/// Archives written at once; beyond, 503 (each holds a blocking thread).
pub const MAX_CONCURRENT: usize = 16;

/// What to put in an archive.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Selection {
    /// Taken off every name in the zip; everything below it when nothing
    /// else is named.
    pub prefix: String,
    pub keys: Vec<String>,
    /// Everything below each (full prefixes, e.g. `docs/old/`).
    pub folders: Vec<String>,
    /// The page's credential (`POST /download` only).
    pub token: Option<String>,
}

impl Selection {
    /// From `prefix`, `key` and `folder` pairs (a query or a form).
    pub fn parse(pairs: &[u8]) -> Result<Selection, GatewayError> {
        let mut s = Selection::default();
        let mut prefix = None;
        for (name, value) in form_urlencoded::parse(pairs) {
            match name.as_ref() {
                "prefix" if prefix.is_some() => {
                    return Err(GatewayError::BadRequest("give prefix at most once".into()));
                }
                "prefix" => prefix = Some(value.into_owned()),
                "key" => s.keys.push(value.into_owned()),
                "folder" => s.folders.push(value.into_owned()),
                "token" => s.token = Some(value.into_owned()).filter(|t| !t.is_empty()),
                _ => {}
            }
        }
        s.prefix = prefix.unwrap_or_default();
        let too_long = std::iter::once(&s.prefix)
            .chain(&s.keys)
            .chain(&s.folders)
            .find(|k| k.chars().count() > MAX_NAME_CHARS);
        if let Some(k) = too_long {
            return Err(GatewayError::BadRequest(format!(
                "{:?}… is longer than a key can be ({MAX_NAME_CHARS} characters)",
                k.chars().take(40).collect::<String>()
            )));
        }
        if s.keys.len() + s.folders.len() > MAX_ITEMS {
            return Err(GatewayError::BadRequest(format!(
                "a download can name at most {MAX_ITEMS} files and folders; download their \
                 folder instead"
            )));
        }
        let outside = s
            .keys
            .iter()
            .chain(&s.folders)
            .find(|k| !k.starts_with(&s.prefix) || k.len() == s.prefix.len());
        if let Some(k) = outside {
            return Err(GatewayError::BadRequest(format!(
                "{k:?} is not inside the folder {:?} the download is named after",
                s.prefix
            )));
        }
        // Each file once: a key named twice, a key inside a named folder, a
        // folder inside another named folder come with the first.
        let mut seen = std::collections::HashSet::new();
        s.folders.retain(|f| seen.insert(f.clone()));
        let folders = s.folders.clone();
        s.folders.retain(|f| {
            !folders
                .iter()
                .any(|outer| outer != f && f.starts_with(outer.as_str()))
        });
        let folders = s.folders.clone();
        s.keys.retain(|k| {
            seen.insert(k.clone()) && !folders.iter().any(|f| k.starts_with(f.as_str()))
        });
        Ok(s)
    }

    fn whole_prefix(&self) -> bool {
        self.keys.is_empty() && self.folders.is_empty()
    }

    /// The archive's file name: the folder's own name, else `files.zip`.
    pub fn file_name(&self) -> String {
        let folder = match (
            self.whole_prefix(),
            self.folders.as_slice(),
            self.keys.len(),
        ) {
            (true, _, _) => self.prefix.as_str(),
            (false, [one], 0) => one.as_str(),
            _ => "",
        };
        let name = folder
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        if name.is_empty() {
            "files.zip".into()
        } else {
            format!("{name}.zip")
        }
    }
}

/// The name of `key` in an archive of `prefix`: the rest of the key, with
/// every part that could place the file outside the folder it is unpacked
/// into percent-encoded. `None` for the prefix itself.
pub fn entry_name(prefix: &str, key: &str) -> Option<String> {
    let rest = key.strip_prefix(prefix)?;
    if rest.is_empty() {
        return None;
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    let mut out = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        let safe = match *seg {
            // A trailing slash: a folder entry, kept as it is.
            "" if i == last && i > 0 => String::new(),
            "" => "%2F".into(),
            "." => "%2E".into(),
            ".." => "%2E%2E".into(),
            s => {
                let mut t = String::with_capacity(s.len());
                for (j, c) in s.chars().enumerate() {
                    match c {
                        '\\' => t.push_str("%5C"),
                        ':' if i == 0 && j == 1 => t.push_str("%3A"),
                        c if c.is_control() => {
                            let mut buf = [0u8; 4];
                            for b in c.encode_utf8(&mut buf).bytes() {
                                t.push_str(&format!("%{b:02X}"));
                            }
                        }
                        c => t.push(c),
                    }
                }
                t
            }
        };
        out.push(safe);
    }
    Some(out.join("/"))
}

// ------------------------------------------------------------ routes

/// `GET /archive?prefix=P[&key=K…][&folder=F…]`.
pub async fn get_archive(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    req: Request,
) -> Result<Response, GatewayError> {
    let sel = Selection::parse(req.uri().query().unwrap_or_default().as_bytes())?;
    archive(st, auth, sel).await
}

/// `POST /download` (a form: `token`, `prefix`, `key`…, `folder`…): one
/// key alone is that file, saved; anything else a zip as `GET /archive`.
pub async fn post_download(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    body: Bytes,
) -> Result<Response, GatewayError> {
    let sel = Selection::parse(&body)?;
    if let ([key], true) = (sel.keys.as_slice(), sel.folders.is_empty()) {
        return save_one(&st, &auth, key).await;
    }
    archive(st, auth, sel).await
}

/// One file, as an attachment whatever its type.
async fn save_one(st: &AppState, auth: &Auth, key: &str) -> Result<Response, GatewayError> {
    let mut resp = st
        .with_token(auth, |t| {
            let backend = Arc::clone(&st.backend);
            async move { crate::download::respond(backend, &t, key, &HeaderMap::new(), false).await }
        })
        .await?;
    let h = resp.headers_mut();
    if let Some(v) = h
        .get(header::CONTENT_DISPOSITION)
        .and_then(|v| v.to_str().ok())
        && let Some(rest) = v.strip_prefix("inline")
        && let Ok(v) = HeaderValue::from_str(&format!("attachment{rest}"))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

/// Middleware: a `POST /download` form's `token` becomes the request's
/// bearer credential (when it carries none), so the one place that checks
/// credentials sees it like any other. The form is small: at most
/// `--max-json-body` bytes.
pub async fn form_credentials(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::POST
        || req.uri().path() != "/download"
        || req.headers().contains_key(header::AUTHORIZATION)
    {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, st.http.max_json_body).await {
        Ok(b) => b,
        Err(_) => {
            return GatewayError::TooLarge(format!(
                "a download form is at most {} bytes; download the folder instead",
                st.http.max_json_body
            ))
            .into_response();
        }
    };
    let token = form_urlencoded::parse(&bytes)
        .find(|(k, v)| k == "token" && !v.is_empty())
        .map(|(_, v)| v.into_owned());
    if let Some(v) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
        parts.headers.insert(header::AUTHORIZATION, v);
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

// ------------------------------------------------------------ the archive

/// What the reader sends the zip writer.
enum Part {
    File {
        name: String,
        size: u64,
        modified: Option<SystemTime>,
    },
    Folder(String),
    Data(Bytes),
    /// Stop: the archive is broken (the body ends with an error).
    Fail(String),
    /// Write the central directory: the archive is complete.
    End,
}

async fn archive(st: Arc<AppState>, auth: Auth, sel: Selection) -> Result<Response, GatewayError> {
    if sel.whole_prefix() && !has_files(&st, &auth, &sel.prefix).await? {
        return Err(GatewayError::NotFound(if sel.prefix.is_empty() {
            "there are no files to download".into()
        } else {
            format!("there are no files in the folder {:?}", sel.prefix)
        }));
    }
    let permit = Arc::clone(&st.archives).try_acquire_owned().map_err(|_| {
        GatewayError::BackendUnavailable(
            "too many folder downloads are running; try again in a moment".into(),
        )
    })?;
    let name = sel.file_name();
    let (parts_tx, parts_rx) = mpsc::channel::<Part>(4);
    let (out_tx, out_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        write_zip(parts_rx, out_tx);
    });
    tokio::spawn(async move {
        let last = match read_all(&st, &auth, &sel, &parts_tx).await {
            Ok(()) => Part::End,
            Err(e) => {
                debug!(error = %e, "archive stopped");
                Part::Fail(e.to_string())
            }
        };
        let _ = parts_tx.send(last).await;
    });
    let body = futures::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zip"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    let plain: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let exact = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{plain}\"; filename*=UTF-8''{exact}"
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}

async fn has_files(st: &AppState, auth: &Auth, prefix: &str) -> Result<bool, GatewayError> {
    let scan = Scan {
        prefix: prefix.to_owned(),
        delimiter: None,
        needle: None,
        limit: 1,
    };
    Ok(!listing::scan(st, auth, &scan, None).await?.files.is_empty())
}

/// Every file of `sel`, in order, into `tx`.
async fn read_all(
    st: &AppState,
    auth: &Auth,
    sel: &Selection,
    tx: &mpsc::Sender<Part>,
) -> Result<(), GatewayError> {
    for key in &sel.keys {
        send_file(st, auth, &sel.prefix, key, tx).await?;
    }
    let whole = [sel.prefix.clone()];
    let folders = if sel.whole_prefix() {
        &whole[..]
    } else {
        &sel.folders[..]
    };
    for folder in folders {
        let scan = Scan {
            prefix: folder.clone(),
            delimiter: None,
            needle: None,
            limit: listing::LIST_MAX_LIMIT,
        };
        let mut cursor = None;
        loop {
            let page = listing::scan(st, auth, &scan, cursor).await?;
            for f in &page.files {
                send_file(st, auth, &sel.prefix, &f.key, tx).await?;
            }
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
    }
    Ok(())
}

fn gone() -> GatewayError {
    GatewayError::Internal("the download was stopped".into())
}

/// One file's entry and bytes; a file deleted meanwhile is left out.
async fn send_file(
    st: &AppState,
    auth: &Auth,
    prefix: &str,
    key: &str,
    tx: &mpsc::Sender<Part>,
) -> Result<(), GatewayError> {
    let Some(name) = entry_name(prefix, key) else {
        return Ok(());
    };
    let got = st
        .with_token(auth, |t| {
            let backend = Arc::clone(&st.backend);
            async move { crate::download::respond(backend, &t, key, &HeaderMap::new(), false).await }
        })
        .await;
    let resp = match got {
        Ok(resp) => resp,
        Err(GatewayError::Step { problem, .. }) if problem.is_gone() => return Ok(()),
        Err(e) => return Err(e),
    };
    let h = resp.headers();
    let size = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0u64);
    let modified = h
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    if name.ends_with('/') && size == 0 {
        return tx.send(Part::Folder(name)).await.map_err(|_| gone());
    }
    let name = if name.ends_with('/') {
        format!("{}%2F", name.trim_end_matches('/'))
    } else {
        name
    };
    tx.send(Part::File {
        name,
        size,
        modified,
    })
    .await
    .map_err(|_| gone())?;
    let mut body = resp.into_body().into_data_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            GatewayError::BackendUnavailable(format!("reading {key} for the archive: {e}"))
        })?;
        tx.send(Part::Data(chunk)).await.map_err(|_| gone())?;
    }
    Ok(())
}

/// The HTTP body as a `Write` for the zip writer. Once the archive has
/// failed (or the client left), writes are swallowed: dropping the zip
/// writer then cannot send a central directory that would make a broken
/// archive look whole.
struct Out {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    broken: Arc<AtomicBool>,
}

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.broken.load(Ordering::Relaxed) {
            return Ok(buf.len());
        }
        if self
            .tx
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .is_err()
        {
            self.broken.store(true, Ordering::Relaxed);
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the client went away",
            ));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn zip_time(t: Option<SystemTime>) -> zip::DateTime {
    let secs = t
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let at = time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // Zip times run from 1980 to 2107; outside, the nearest end.
    zip::DateTime::try_from(time::PrimitiveDateTime::new(at.date(), at.time())).unwrap_or_else(
        |_| {
            if at.year() < 1980 {
                zip::DateTime::default()
            } else {
                zip::DateTime::default_for_write()
            }
        },
    )
}

/// The writer thread: parts in, zip bytes out.
fn write_zip(mut parts: mpsc::Receiver<Part>, out: mpsc::Sender<Result<Bytes, std::io::Error>>) {
    let broken = Arc::new(AtomicBool::new(false));
    let mut zip = ZipWriter::new_stream(Out {
        tx: out.clone(),
        broken: Arc::clone(&broken),
    });
    let stored = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .unix_permissions(0o644);
    let fail = |why: String| {
        let _ = out.blocking_send(Err(std::io::Error::other(why)));
        broken.store(true, Ordering::Relaxed);
    };
    // Names already in the archive: two keys can make one name (a made-safe
    // name can equal a real one), and a zip must not hold it twice.
    let mut names = std::collections::HashSet::new();
    let mut unique = |name: String| {
        let mut n = 0;
        loop {
            let candidate = crate::clash::candidate(&name, n);
            if names.insert(candidate.clone()) {
                return candidate;
            }
            n += 1;
        }
    };
    while let Some(part) = parts.blocking_recv() {
        let done = match part {
            Part::File {
                name,
                size,
                modified,
            } => {
                let opts = stored
                    .last_modified_time(zip_time(modified))
                    .large_file(size >= u64::from(u32::MAX));
                zip.start_file(unique(name), opts)
                    .map_err(|e| e.to_string())
            }
            Part::Folder(name) => zip
                .add_directory(unique(name), stored.unix_permissions(0o755))
                .map_err(|e| e.to_string()),
            Part::Data(bytes) => zip.write_all(&bytes).map_err(|e| e.to_string()),
            Part::Fail(why) => Err(why),
            Part::End => {
                if let Err(e) = zip.finish() {
                    fail(e.to_string());
                }
                return;
            }
        };
        if let Err(why) = done {
            fail(why);
            return;
        }
    }
    fail("the archive's reader stopped".into());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_keys_below_the_prefix() {
        assert_eq!(
            entry_name("docs/", "docs/a/b.txt").as_deref(),
            Some("a/b.txt")
        );
        assert_eq!(
            entry_name("", "notes (1).txt").as_deref(),
            Some("notes (1).txt")
        );
        assert_eq!(entry_name("docs/", "docs/"), None);
        assert_eq!(entry_name("docs/", "other"), None);
        assert_eq!(entry_name("", "x/").as_deref(), Some("x/"));
    }

    #[test]
    fn no_name_escapes_the_folder() {
        for (key, want) in [
            ("../evil.txt", "%2E%2E/evil.txt"),
            ("a/../../x", "a/%2E%2E/%2E%2E/x"),
            ("/etc/passwd", "%2F/etc/passwd"),
            ("a//b", "a/%2F/b"),
            ("./x", "%2E/x"),
            ("C:/win.ini", "C%3A/win.ini"),
            ("a\\..\\b", "a%5C..%5Cb"),
            ("tab\there", "tab%09here"),
        ] {
            let name = entry_name("", key).expect("a name");
            assert_eq!(name, want, "{key}");
            assert!(
                !name
                    .split('/')
                    .any(|s| s == ".." || s == "." || s.is_empty())
                    || name.ends_with('/'),
                "{key}: {name}"
            );
        }
    }

    #[test]
    fn a_selection_stays_inside_its_prefix() {
        let s = Selection::parse(
            b"prefix=docs%2F&key=docs%2Fa&folder=docs%2Fsub%2F&key=docs%2Fsub%2Fx",
        )
        .expect("ok");
        assert_eq!(s.keys, ["docs/a"]);
        assert_eq!(s.folders, ["docs/sub/"]);
        assert!(Selection::parse(b"prefix=docs%2F&key=other").is_err());
        assert!(Selection::parse(b"prefix=a&prefix=b").is_err());
        assert_eq!(
            Selection::parse(b"prefix=docs%2Fold%2F")
                .expect("ok")
                .file_name(),
            "old.zip"
        );
        assert_eq!(Selection::parse(b"").expect("ok").file_name(), "files.zip");
        let one = Selection::parse(b"prefix=&folder=pics%2F").expect("ok");
        assert_eq!(one.file_name(), "pics.zip");
    }
}
