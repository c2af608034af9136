//! What a STEP server answers, as types: capabilities, upload and download
//! plans, listings, and what a client asks with.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::message::{Message, field};

/// What a server says it can do (LOGIN response extension). A reference server
/// announces nothing, which means: one request in flight, 20480-byte blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    pub pipelining: bool,
    pub resume: bool,
    pub max_block_size: u64,
    /// Seconds a freshly minted token is valid for, at least.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ttl: Option<u64>,
    /// Largest file size a SAVE may announce.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_file_size: Option<u64>,
    /// Seconds an unfinished upload may go without a SAVE or block before
    /// the server removes it (tus's Upload-Expires is derived from it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_expiry: Option<u64>,
    /// FILE LIST is served (extension operation).
    // Announced only when on: absent means off to every reader.
    #[serde(skip_serializing_if = "is_false")]
    pub list: bool,
    /// FILE SAVE takes `replace` (and `if_md5`): an atomic replace of a
    /// complete file; FILE GET names the version (`upload_id`) and
    /// DOWNLOAD may ask for it.
    #[serde(skip_serializing_if = "is_false")]
    pub replace: bool,
    /// FILE GET takes `upload_status`: the key's unfinished upload (its
    /// id, plan and missing blocks), answered without changing anything.
    #[serde(skip_serializing_if = "is_false")]
    pub upload_status: bool,
    /// UPLOAD takes `md5`, the whole file's expected md5: an upload whose
    /// bytes do not have it is refused at completion (`md5_mismatch`) and
    /// the key keeps what it held.
    #[serde(skip_serializing_if = "is_false")]
    pub upload_md5: bool,
    /// What anonymous callers may do here (`read`, `write`), when anything:
    /// a LOGIN with `anonymous` then mints the public identity's token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<crate::access::Anonymous>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Capabilities {
    /// What a LOGIN answer announces; nothing (a reference server) or
    /// something unreadable means the reference server's defaults.
    pub fn from_login(resp: &Message) -> Self {
        resp.get(field::CAPABILITIES)
            .and_then(|caps| Self::deserialize(caps).ok())
            .unwrap_or_default()
    }

    pub fn to_json(self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

/// An upload plan (FILE SAVE response).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "SaveAnswer")]
pub struct UploadPlan {
    pub key: String,
    pub size: u64,
    pub total_block: u64,
    pub block_size: u64,
    /// Blocks the server still needs, as `[start, end)` ranges. Without the
    /// resume extension: every block.
    pub missing: Vec<[u64; 2]>,
    pub resumed: bool,
    /// Identifies this upload (our server's extension): blocks sent with it
    /// are refused once another SAVE has restarted the key, so two uploads
    /// racing on one key cannot mix their blocks.
    pub upload_id: Option<String>,
}

/// A FILE SAVE answer as sent: without the resume extension there are no
/// `missing_ranges`, which means every block.
#[derive(Deserialize)]
struct SaveAnswer {
    key: String,
    size: u64,
    total_block: u64,
    block_size: u64,
    missing_ranges: Option<Vec<[u64; 2]>>,
    #[serde(default)]
    resumed: bool,
    upload_id: Option<String>,
}

impl From<SaveAnswer> for UploadPlan {
    fn from(a: SaveAnswer) -> Self {
        let missing = match a.missing_ranges {
            Some(m) => m,
            None if a.total_block > 0 => vec![[0, a.total_block]],
            None => Vec::new(),
        };
        UploadPlan {
            key: a.key,
            size: a.size,
            total_block: a.total_block,
            block_size: a.block_size,
            missing,
            resumed: a.resumed,
            upload_id: a.upload_id,
        }
    }
}

/// The unfinished upload under a key (FILE GET with `upload_status`, our
/// server's extension): read only, nothing is resumed or refreshed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UploadStatus {
    pub key: String,
    pub size: u64,
    pub total_block: u64,
    pub block_size: u64,
    pub upload_id: String,
    /// Blocks the server still needs, as `[start, end)` ranges.
    #[serde(rename = "missing_ranges")]
    pub missing: Vec<[u64; 2]>,
    /// When it last received a SAVE or a block, Unix seconds (0: unknown).
    #[serde(default)]
    pub last_active: u64,
}

/// A FILE UPLOAD answer: the file's md5 once this block completed it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UploadAck {
    pub md5: Option<String>,
}

/// A LOGIN answer (capabilities are read leniently, see
/// [`Capabilities::from_login`]).
#[derive(Deserialize)]
pub(crate) struct LoginAnswer {
    pub(crate) token: String,
}

/// An anonymous LOGIN's answer: the public identity's token, whose files
/// it acts on, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicLogin {
    pub token: String,
    pub user: String,
    pub scope: crate::access::Scope,
}

#[derive(Deserialize)]
pub(crate) struct PublicAnswer {
    pub(crate) token: String,
    pub(crate) username: Option<String>,
    pub(crate) scope: Option<crate::access::Scope>,
}

/// A DATA SAVE answer.
#[derive(Deserialize)]
pub(crate) struct KeyAnswer {
    pub(crate) key: String,
}

/// Where UPLOADs go: a key, and the upload id when the server gave one.
#[derive(Debug, Clone, Copy)]
pub struct UploadTarget<'a> {
    pub key: &'a str,
    pub upload_id: Option<&'a str>,
}

impl<'a> From<&'a str> for UploadTarget<'a> {
    fn from(key: &'a str) -> Self {
        UploadTarget {
            key,
            upload_id: None,
        }
    }
}

impl<'a> From<&'a String> for UploadTarget<'a> {
    fn from(key: &'a String) -> Self {
        UploadTarget {
            key,
            upload_id: None,
        }
    }
}

impl<'a> From<&'a UploadPlan> for UploadTarget<'a> {
    fn from(plan: &'a UploadPlan) -> Self {
        UploadTarget {
            key: &plan.key,
            upload_id: plan.upload_id.as_deref(),
        }
    }
}

/// A download plan (FILE GET response).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DownloadPlan {
    pub key: String,
    pub size: u64,
    pub total_block: u64,
    pub block_size: u64,
    pub md5: String,
    /// The version of the file this plan describes (our server's
    /// extension); DOWNLOADs of the plan carry it, so they are refused
    /// (reason `replaced`) rather than served from a newer version.
    pub upload_id: Option<String>,
    /// When the file became complete, Unix seconds (our server's extension).
    pub last_modified: Option<u64>,
}

/// One complete file in a FILE LIST answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListedFile {
    pub key: String,
    pub size: u64,
    pub md5: String,
    /// When the file became complete, Unix seconds (0: unknown).
    pub last_modified: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
}

/// One page of a FILE LIST answer (the answer's `files` and `next`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePage {
    pub files: Vec<ListedFile>,
    #[serde(default)]
    /// Pass back as `after` for the next page; `None` on the last one.
    pub next: Option<String>,
}

/// What a FILE LIST asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListQuery<'a> {
    pub prefix: &'a str,
    pub after: Option<&'a str>,
    /// Entries per page (the server's default, 100, when `None`).
    pub limit: Option<u64>,
}

/// Options of a FILE SAVE beyond key and size (our server's extensions).
#[derive(Debug, Clone, Copy, Default)]
pub struct SaveOptions {
    pub block_size: Option<u64>,
    pub resume: bool,
}
