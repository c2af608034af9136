//! FILE LIST (extension): one page of the caller's complete files.

use serde_json::Value;
use step_core::client::ListedFile;
use step_core::message::field;
use step_core::{Kind, Message, Operation};
use tracing::debug;

use super::{Service, in_store, ok};
use crate::error::StepError;
use crate::store::StoreError;

/// Bytes of entries one FILE LIST answer carries at most (its JSON, keys
/// escaped): a page is cut short, with `next`, rather than exceed what a
/// client's frame limit (1 MiB by default) takes.
const LIST_MAX_BYTES: usize = 256 << 10;

impl Service {
    /// FILE LIST (extension): one page of the caller's complete files.
    pub(super) async fn file_list(
        &self,
        user: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Message, StepError> {
        let page = self
            .store
            .list_files(user, prefix, after, limit)
            .await
            .map_err(in_store(prefix))?;
        let mut next = page.next;
        let mut files = Vec::with_capacity(page.files.len());
        let mut bytes = 0;
        let count = page.files.len();
        for (i, meta) in page.files.into_iter().enumerate() {
            let entry = serde_json::to_value(ListedFile {
                key: meta.key,
                size: meta.size,
                md5: meta.md5,
                last_modified: meta.completed_unix,
                upload_id: meta.upload_id,
            })
            .map_err(|e| StepError::Storage(StoreError::Other(Box::new(e))))?;
            bytes += step_core::json::to_ascii_vec(&entry).map_or(0, |v| v.len() + 1);
            let key = entry[field::KEY].as_str().map(str::to_owned);
            files.push(entry);
            if bytes > LIST_MAX_BYTES && i + 1 < count {
                // Cut short: the next page starts after this entry.
                next = key;
                break;
            }
        }
        debug!(%user, prefix, count = files.len(), "files listed");
        Ok(ok(Operation::List, Kind::File, "The files.")
            .with(field::FILES, Value::Array(files))
            .with(field::NEXT, next.map_or(Value::Null, Value::String)))
    }
}
