//! `GET /files`: the caller's complete files, a page at a time — all of
//! them in key order, one folder level (`delimiter`), or those whose name
//! contains some text (`q`).
//!
//! STEP's FILE LIST gives keys in order after a given key, under a prefix.
//! Both views are built on it here, and neither reads a whole tree:
//!
//! * a folder level: when a key lies below a sub-folder, the folder is
//!   reported once and the scan jumps past every key below it (the next
//!   LIST starts after the largest key the folder can hold), so a level
//!   costs one LIST per sub-folder plus its own files, whatever is inside;
//! * a search: keys are matched as they are read, case-insensitively, and
//!   one request reads at most [`SEARCH_SCAN`] keys; if the page is not
//!   full by then, it ends early with a cursor and the client asks again
//!   (the page does, while the person keeps looking). With a delimiter too,
//!   the search stays on that one level: its files and sub-folders whose
//!   names match.
//!
//! The cursor is the key the scan stopped after, so pages follow each
//! other exactly however the request is shaped.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use step_core::client::FilePage;

use crate::AppState;
use crate::auth::Auth;
use crate::error::GatewayError;

/// Entries per listing page unless `?limit=` says otherwise, and at most.
pub const LIST_DEFAULT_LIMIT: u64 = 100;
pub const LIST_MAX_LIMIT: u64 = 1000;

/// Keys one search request reads at most before it answers with what it
/// found and a cursor to go on from.
pub const SEARCH_SCAN: u64 = 20_000;

/// The longest search text.
pub const MAX_QUERY_CHARS: usize = 256;

/// The longest delimiter.
pub const MAX_DELIMITER_CHARS: usize = 16;

/// Keys FILE LIST gives per request while scanning.
const SCAN_PAGE: u64 = 1000;

/// Query of `GET /files`.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    #[serde(default)]
    prefix: String,
    limit: Option<u64>,
    cursor: Option<String>,
    /// Report keys below this separator (after the prefix) as one folder.
    delimiter: Option<String>,
    /// Only keys whose part after the prefix contains this, ignoring case
    /// (with `delimiter`: files and sub-folders of that level).
    q: Option<String>,
}

/// One file in `GET /files`.
#[derive(Debug, Serialize)]
pub struct ListedFile {
    key: String,
    size: u64,
    md5: String,
    /// What `GET /files/{key}` sends as `ETag`.
    etag: String,
    /// RFC 3339, UTC.
    last_modified: String,
}

/// A folder of a `delimiter` listing: keys below it exist.
#[derive(Debug, Serialize)]
pub struct ListedFolder {
    /// The folder's full prefix, ending with the delimiter.
    prefix: String,
}

/// `GET /files`.
#[derive(Debug, Serialize)]
pub struct Listing {
    files: Vec<ListedFile>,
    /// Sub-folders (with `delimiter`); always empty without it.
    folders: Vec<ListedFolder>,
    /// Pass as `?cursor=` for the next page; null on the last.
    next_cursor: Option<String>,
}

/// What a listing request asks for, checked.
#[derive(Debug, Clone)]
pub struct Scan {
    pub prefix: String,
    pub delimiter: Option<String>,
    /// Lower-cased search text.
    pub needle: Option<String>,
    pub limit: u64,
}

impl Scan {
    fn from_params(q: &ListParams) -> Result<Scan, GatewayError> {
        let limit = q.limit.unwrap_or(LIST_DEFAULT_LIMIT);
        if !(1..=LIST_MAX_LIMIT).contains(&limit) {
            return Err(GatewayError::BadRequest(format!(
                "limit must be from 1 to {LIST_MAX_LIMIT}"
            )));
        }
        let needle = q.q.as_deref().filter(|t| !t.is_empty());
        if needle.is_some_and(|t| t.chars().count() > MAX_QUERY_CHARS) {
            return Err(GatewayError::BadRequest(format!(
                "the search text is longer than {MAX_QUERY_CHARS} characters"
            )));
        }
        let delimiter = q.delimiter.clone().filter(|d| !d.is_empty());
        if delimiter
            .as_ref()
            .is_some_and(|d| d.chars().count() > MAX_DELIMITER_CHARS)
        {
            return Err(GatewayError::BadRequest(format!(
                "the delimiter is at most {MAX_DELIMITER_CHARS} characters (folders use \"/\")"
            )));
        }
        Ok(Scan {
            prefix: q.prefix.clone(),
            delimiter,
            needle: needle.map(str::to_lowercase),
            limit,
        })
    }

    fn matches(&self, key: &str) -> bool {
        match &self.needle {
            None => true,
            Some(needle) => key
                .get(self.prefix.len()..)
                .unwrap_or(key)
                .to_lowercase()
                .contains(needle.as_str()),
        }
    }

    /// The folder (full prefix with the delimiter) `key` lies below, if any.
    fn folder_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        let d = self.delimiter.as_deref()?;
        let rest = key.get(self.prefix.len()..)?;
        let at = rest.find(d)?;
        key.get(..self.prefix.len() + at + d.len())
    }
}

/// A key after which FILE LIST gives no key that starts with `folder`
/// (unless the key itself does — see [`skip_past`]): no UTF-8 text sorts
/// after U+10FFFF, so only keys continuing with that very character can.
fn past(folder: &str) -> String {
    format!("{folder}\u{10FFFF}")
}

/// The longest `after` a STEP server takes (its default key length).
const MAX_AFTER_BYTES: usize = 1024;

/// Where to continue after `key`, found below `folder`: past the whole
/// folder, or just past `key` when it sorts even later (a key that
/// continues with U+10FFFF) or when the jump would be longer than a key
/// can be, so the scan always moves on.
fn skip_past(folder: &str, key: &str) -> String {
    let jump = past(folder);
    if key.as_bytes() >= jump.as_bytes() || jump.len() > MAX_AFTER_BYTES {
        key.to_owned()
    } else {
        jump
    }
}

/// What a scan found, and where the next page starts (`None`: the end).
#[derive(Debug, Default)]
pub struct Found {
    pub files: Vec<step_core::client::ListedFile>,
    pub folders: Vec<String>,
    pub next: Option<String>,
}

impl Found {
    fn len(&self) -> u64 {
        (self.files.len() + self.folders.len()) as u64
    }
}

/// One page of `scan`, starting after `cursor`.
pub async fn scan(
    st: &AppState,
    auth: &Auth,
    scan: &Scan,
    cursor: Option<String>,
) -> Result<Found, GatewayError> {
    let mut found = Found::default();
    let mut after = cursor;
    // Keys up to this one lie in a folder already reported.
    let mut inside: Option<String> = None;
    let mut read = 0u64;
    loop {
        let want = if scan.needle.is_some() || scan.delimiter.is_some() {
            SCAN_PAGE
        } else {
            scan.limit - found.len()
        };
        let page = list_page(st, auth, &scan.prefix, after.clone(), want).await?;
        let more = page.next.is_some();
        let count = page.files.len();
        for (i, f) in page.files.into_iter().enumerate() {
            read += 1;
            if inside
                .as_deref()
                .is_some_and(|end| f.key.as_bytes() <= end.as_bytes())
            {
                continue;
            }
            inside = None;
            after = Some(f.key.clone());
            if let Some(folder) = scan.folder_of(&f.key) {
                let end = skip_past(folder, &f.key);
                if scan.matches(folder.trim_end_matches(scan.delimiter.as_deref().unwrap_or(""))) {
                    found.folders.push(folder.to_owned());
                }
                after = Some(end.clone());
                inside = Some(end);
            } else if scan.matches(&f.key) {
                found.files.push(f);
            }
            if found.len() == scan.limit {
                let last = i + 1 == count && !more;
                found.next = if last { None } else { after };
                return Ok(found);
            }
        }
        if !more {
            return Ok(found);
        }
        if scan.needle.is_some() && read >= SEARCH_SCAN {
            // Not full, but enough work for one request: the client asks
            // again from here.
            found.next = after;
            return Ok(found);
        }
    }
}

async fn list_page(
    st: &AppState,
    auth: &Auth,
    prefix: &str,
    after: Option<String>,
    limit: u64,
) -> Result<FilePage, GatewayError> {
    st.with_token(auth, |t| {
        let backend = Arc::clone(&st.backend);
        let (prefix, after) = (prefix.to_owned(), after.clone());
        async move { backend.file_list(&t, prefix, after, limit).await }
    })
    .await
}

/// `GET /files` (and `GET /files/`).
pub async fn list_files(
    State(st): State<Arc<AppState>>,
    auth: Auth,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Listing>, GatewayError> {
    let Query(q) = query.map_err(|e| GatewayError::BadRequest(e.body_text()))?;
    let request = Scan::from_params(&q)?;
    let found = scan(&st, &auth, &request, q.cursor.clone()).await?;
    Ok(Json(Listing {
        files: found
            .files
            .into_iter()
            .map(|f| ListedFile {
                etag: crate::conditional::etag(&f.md5),
                last_modified: crate::conditional::rfc3339(f.last_modified),
                key: f.key,
                size: f.size,
                md5: f.md5,
            })
            .collect(),
        folders: found
            .folders
            .into_iter()
            .map(|prefix| ListedFolder { prefix })
            .collect(),
        next_cursor: found.next,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(prefix: &str, delimiter: Option<&str>, q: Option<&str>) -> Scan {
        Scan {
            prefix: prefix.into(),
            delimiter: delimiter.map(Into::into),
            needle: q.map(str::to_lowercase),
            limit: 10,
        }
    }

    #[test]
    fn a_key_below_a_subfolder_names_that_folder() {
        let s = scan("docs/", Some("/"), None);
        assert_eq!(s.folder_of("docs/a/b/c.txt"), Some("docs/a/"));
        assert_eq!(s.folder_of("docs/readme.txt"), None);
        let root = scan("", Some("/"), None);
        assert_eq!(root.folder_of("x/y"), Some("x/"));
        assert_eq!(root.folder_of("/abs"), Some("/"));
    }

    #[test]
    fn jumping_past_a_folder_always_moves_on() {
        assert!(past("a/").as_str() > "a/zzzz\u{FFFF}");
        assert!(past("a/").as_str() < "a0");
        let odd = "a/\u{10FFFF}x";
        assert_eq!(skip_past("a/", odd), odd);
        assert_eq!(skip_past("a/", "a/b"), past("a/"));
        let long = format!("{}/", "x".repeat(1022));
        let key = format!("{long}y");
        assert_eq!(skip_past(&long, &key), key, "a jump no server takes");
    }

    #[test]
    fn a_search_on_one_level_matches_folder_names() {
        let s = scan("docs/", Some("/"), Some("OLD"));
        let folder = s.folder_of("docs/Old Stuff/x.txt").expect("a folder");
        assert!(s.matches(folder.trim_end_matches('/')));
        let folder = s.folder_of("docs/new/old.txt").expect("a folder");
        assert!(!s.matches(folder.trim_end_matches('/')));
    }

    #[test]
    fn search_ignores_case_and_looks_below_the_prefix_only() {
        let s = scan("docs/", None, Some("ÄPFEL"));
        assert!(s.matches("docs/grüne äpfel.txt"));
        assert!(!s.matches("docs/birnen.txt"));
        let s = scan("docs/", None, Some("docs"));
        assert!(!s.matches("docs/x.txt"));
        assert!(s.matches("docs/old docs.txt"));
    }
}
