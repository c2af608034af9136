//! A name clash — an upload to a key that holds a file already — decided
//! by one rule on every upload route (`POST /upload`, `PUT /files/{key}`,
//! tus creation at `POST /tus/`):
//!
//! * `?overwrite=true` replaces the file (atomically: readers get the old
//!   one until the new one is complete);
//! * `?rename=true` keeps both: the upload gets the first free name of
//!   `notes.txt`, `notes (1).txt`, `notes (2).txt`, …;
//! * `?overwrite=false` refuses with 409 `key_exists`;
//! * neither: refused, except for `PUT`, which by HTTP's definition stores
//!   the body at the URL it names and so replaces (`If-None-Match: *` or
//!   `?overwrite=false` make it create-only).
//!
//! A free name has neither a file nor an unfinished upload (someone's
//! paused transfer keeps its name). Two uploads that pick the same free
//! name at once cannot both have it: the store takes one SAVE per key, the
//! other upload is refused (the key exists, or its upload was superseded)
//! and moves on to the next name with the bytes it spooled.

use std::sync::Arc;

use serde::Deserialize;
use step_core::Problem;

use crate::AppState;
use crate::auth::Auth;
use crate::error::GatewayError;

/// Names tried before a renaming upload gives up.
pub const MAX_RENAMES: u32 = 1000;

/// What an upload does when its key holds a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnClash {
    Refuse,
    Replace,
    Rename,
}

/// The clash parameters of an upload's query.
#[derive(Debug, Default, Deserialize)]
pub struct ClashQuery {
    pub overwrite: Option<bool>,
    pub rename: Option<bool>,
}

impl ClashQuery {
    /// The request's choice; `default` when it makes none.
    pub fn choice(&self, default: OnClash) -> Result<OnClash, GatewayError> {
        match (self.overwrite, self.rename) {
            (Some(true), Some(true)) => Err(GatewayError::BadRequest(
                "choose one: overwrite=true replaces the file, rename=true keeps both".into(),
            )),
            (Some(true), _) => Ok(OnClash::Replace),
            (_, Some(true)) => Ok(OnClash::Rename),
            (Some(false), _) => Ok(OnClash::Refuse),
            _ => Ok(default),
        }
    }

    /// `PUT`'s choice: it replaces unless told otherwise; `rename` does
    /// not combine with the conditional headers (they name one version of
    /// this very key).
    pub fn clash_choice_for_put(
        &self,
        headers: &axum::http::HeaderMap,
    ) -> Result<OnClash, GatewayError> {
        let choice = self.choice(OnClash::Replace)?;
        if choice == OnClash::Rename && crate::conditional::has_preconditions(headers) {
            return Err(GatewayError::BadRequest(
                "rename=true stores under a new name: it does not go with If-Match or \
                 If-None-Match"
                    .into(),
            ));
        }
        Ok(choice)
    }

    /// From a raw query string (tus creation has no other parameters).
    pub fn from_query(query: Option<&str>) -> Result<ClashQuery, GatewayError> {
        let mut q = ClashQuery::default();
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let slot = match name.as_ref() {
                "overwrite" => &mut q.overwrite,
                "rename" => &mut q.rename,
                _ => continue,
            };
            *slot = Some(match value.as_ref() {
                "true" => true,
                "false" => false,
                other => {
                    return Err(GatewayError::BadRequest(format!(
                        "{name} is true or false, not {other:?}"
                    )));
                }
            });
        }
        Ok(q)
    }
}

/// The `n`th name for `key`: the key itself, then `notes (1).txt`, … The
/// number goes before the extension (`.tar.gz` counts as one), and a name
/// that already ends in ` (k)` is counted on from its stem.
pub fn candidate(key: &str, n: u32) -> String {
    if n == 0 {
        return key.to_owned();
    }
    let (dir, name) = match key.rfind('/') {
        Some(i) => key.split_at(i + 1),
        None => ("", key),
    };
    let ext_at = [".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst"]
        .iter()
        .find(|e| name.len() > e.len() && name.to_ascii_lowercase().ends_with(*e))
        .map(|e| name.len() - e.len())
        .or_else(|| name.rfind('.').filter(|&i| i > 0));
    let (stem, ext) = name.split_at(ext_at.unwrap_or(name.len()));
    let stem = numbered(stem).unwrap_or(stem);
    format!("{dir}{stem} ({n}){ext}")
}

/// `notes` of `notes (3)`.
fn numbered(stem: &str) -> Option<&str> {
    let inner = stem.strip_suffix(')')?;
    let open = inner.rfind(" (")?;
    let digits = &inner[open + 2..];
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| &inner[..open])
}

/// Whether an upload lost its name to another at the last moment.
pub fn lost_race(e: &GatewayError) -> bool {
    matches!(e.problem(), Some(Problem::KeyExists | Problem::Superseded))
}

/// A refusal because the key is taken, in words that say what to do.
pub fn explain(e: GatewayError, key: &str) -> GatewayError {
    match e {
        GatewayError::Step {
            problem: Problem::KeyExists,
            ..
        } => GatewayError::refused(
            Problem::KeyExists,
            format!(
                "A file named {key:?} already exists. Send overwrite=true to replace it, or \
                 rename=true to keep both (the upload gets a free name such as {:?}).",
                candidate(key, 1)
            ),
        ),
        other => other,
    }
}

/// Whether `key` is free: no file, no unfinished upload.
async fn is_free(st: &AppState, token: &str, key: &str) -> Result<bool, GatewayError> {
    if st
        .backend
        .file_current(token, key.to_owned())
        .await?
        .is_some()
    {
        return Ok(false);
    }
    let mut conn = st.backend.conn(token).await?;
    if !conn.capabilities().upload_status {
        return Ok(true);
    }
    match conn.file_upload_status(key).await {
        Ok(_) => Ok(false),
        Err(e) => match st.backend.step_error(e) {
            GatewayError::Step {
                problem: Problem::NotFound,
                ..
            } => Ok(true),
            other => Err(other),
        },
    }
}

/// The first free name for `key` from candidate `from` on, and its number.
async fn free_name(
    st: &Arc<AppState>,
    auth: &Auth,
    key: &str,
    from: u32,
) -> Result<(String, u32), GatewayError> {
    for n in from..MAX_RENAMES {
        let name = candidate(key, n);
        let free = st
            .with_token(auth, |t| {
                let (st, name) = (Arc::clone(st), name.clone());
                async move { is_free(&st, &t, &name).await }
            })
            .await?;
        if free {
            return Ok((name, n));
        }
    }
    Err(GatewayError::refused(
        Problem::KeyExists,
        format!(
            "{key:?} and its first {MAX_RENAMES} numbered names are all taken. Choose another \
             name."
        ),
    ))
}

/// Runs `attempt` with the first free name for `key`, and with the next
/// free one each time another upload took the name at the same moment.
pub async fn with_free_name<T, F, Fut>(
    st: &Arc<AppState>,
    auth: &Auth,
    key: &str,
    attempt: F,
) -> Result<T, GatewayError>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Result<T, GatewayError>>,
{
    let mut from = 0;
    loop {
        let (name, n) = free_name(st, auth, key, from).await?;
        match attempt(name).await {
            Err(e) if lost_race(&e) && n + 1 < MAX_RENAMES => from = n + 1,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_names_go_before_the_extension() {
        assert_eq!(candidate("notes.txt", 0), "notes.txt");
        assert_eq!(candidate("notes.txt", 1), "notes (1).txt");
        assert_eq!(candidate("docs/notes.txt", 2), "docs/notes (2).txt");
        assert_eq!(candidate("backup.tar.gz", 1), "backup (1).tar.gz");
        assert_eq!(candidate("README", 3), "README (3)");
        assert_eq!(candidate(".bashrc", 1), ".bashrc (1)");
        assert_eq!(candidate("a.b/c", 1), "a.b/c (1)");
        assert_eq!(candidate("notes (1).txt", 2), "notes (2).txt");
        assert_eq!(candidate("v (x).txt", 1), "v (x) (1).txt");
    }

    #[test]
    fn one_choice_per_request() {
        let q = |o, r| ClashQuery {
            overwrite: o,
            rename: r,
        };
        assert_eq!(
            q(None, None).choice(OnClash::Refuse).ok(),
            Some(OnClash::Refuse)
        );
        assert_eq!(
            q(None, None).choice(OnClash::Replace).ok(),
            Some(OnClash::Replace)
        );
        assert_eq!(
            q(Some(false), None).choice(OnClash::Replace).ok(),
            Some(OnClash::Refuse)
        );
        assert_eq!(
            q(None, Some(true)).choice(OnClash::Refuse).ok(),
            Some(OnClash::Rename)
        );
        assert!(q(Some(true), Some(true)).choice(OnClash::Refuse).is_err());
    }
}
