//! What the service allows peers: caps, the extensions it serves, and
//! listing page sizes. Read by the request parser and the service alike.

use crate::auth::LoginLimits;

/// FILE LIST entries per page unless asked otherwise, and at most.
pub const LIST_DEFAULT_LIMIT: i64 = 100;
pub const LIST_MAX_LIMIT: i64 = 1000;

/// Caps the server enforces on what peers send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_key_len: usize,
    pub max_username_len: usize,
    pub max_file_size: u64,
    pub max_block_size: u64,
    /// Token refusals answered per second, server-wide, beyond a burst of as
    /// many; further refusals wait their turn. Bounds online token guessing.
    pub token_failures_per_sec: u32,
    /// Announced in LOGIN's capabilities: seconds an unfinished upload
    /// lives without activity (the store's `upload_expiry` enforces it).
    pub upload_expiry_secs: u64,
    /// Pacing and bounded hashing of password LOGINs (accounts mode).
    pub login: LoginLimits,
    /// Extensions served and announced.
    pub extensions: Extensions,
}

/// Extension operations the server serves and announces in LOGIN's
/// capabilities; all on by default. One turned off is answered as the
/// reference answers it, so this server can stand in for one without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extensions {
    /// FILE LIST.
    pub list: bool,
    /// FILE SAVE `replace` / `if_md5`, DELETE `if_md5`.
    pub replace: bool,
}

impl Default for Extensions {
    fn default() -> Self {
        Self {
            list: true,
            replace: true,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_len: 1024,
            max_username_len: 256,
            token_failures_per_sec: 1000,
            login: LoginLimits::default(),
            max_file_size: 1 << 40,
            max_block_size: step_core::codec::DEFAULT_MAX_BINARY as u64,
            upload_expiry_secs: 86_400,
            extensions: Extensions::default(),
        }
    }
}
