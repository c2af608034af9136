//! The md5 a writer sent with a block that did not complete its upload
//! (UPLOAD `md5`), kept until the upload completes. Our clients send it with
//! the block that completes the upload, so this only holds what other
//! writers send earlier: in memory, bounded, best effort.

use std::collections::HashMap;
use std::sync::Mutex;

/// Uploads whose expected md5 is kept at most; beyond, one is forgotten.
const MAX_KEPT: usize = 4096;

#[derive(Debug, Default)]
pub(super) struct Expected {
    by_upload: Mutex<HashMap<String, String>>,
}

impl Expected {
    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, String>) -> T) -> T {
        f(&mut self.by_upload.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Keep `md5` as what upload `id` must have when it completes.
    pub(super) fn keep(&self, id: &str, md5: String) {
        self.with(|m| {
            if m.len() >= MAX_KEPT && !m.contains_key(id) {
                let Some(any) = m.keys().next().cloned() else {
                    return;
                };
                m.remove(&any);
            }
            m.insert(id.to_owned(), md5);
        });
    }

    /// What upload `id` must have, forgotten now.
    pub(super) fn take(&self, id: &str) -> Option<String> {
        self.with(|m| m.remove(id))
    }
}
