//! The rules of a listing page, for every store: a user's complete files
//! whose keys start with `prefix`, in key (byte) order, strictly after
//! `after`, at most `limit`; `next` is the last key of a page that is not
//! the last one. A store finds candidates its own way (a directory read, an
//! ordered LIST) and offers them here.

use crate::store::api::{FileMeta, ListPage};

/// What one page asks for.
#[derive(Debug, Clone, Copy)]
pub struct PageRule<'a> {
    pub prefix: &'a str,
    pub after: Option<&'a str>,
    pub limit: usize,
}

impl PageRule<'_> {
    /// Whether `key` belongs in the listing at all.
    pub fn wants(&self, key: &str) -> bool {
        key.starts_with(self.prefix) && self.after.is_none_or(|a| key > a)
    }

    /// Candidates a store keeps to decide the page: one more than the
    /// limit tells whether another page follows.
    pub fn keep(&self) -> usize {
        self.limit.saturating_add(1)
    }

    /// The page from `files`: wanted ones, in key order, of which at most
    /// [`Self::keep`] were found.
    pub fn page(&self, mut files: Vec<FileMeta>) -> ListPage {
        files.retain(|m| self.wants(&m.key));
        files.sort_by(|a, b| a.key.cmp(&b.key));
        let more = files.len() > self.limit;
        files.truncate(self.limit);
        let next = more.then(|| match files.last() {
            Some(m) => m.key.clone(),
            // limit 0: nothing taken, everything after `after` remains.
            None => self.after.unwrap_or_default().to_owned(),
        });
        ListPage { files, next }
    }
}
