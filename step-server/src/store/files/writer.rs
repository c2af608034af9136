//! FILE UPLOAD: the unfinished upload under a key, opened for one block.
//! The service reads the plan and checks the block against it, then hands
//! the block over; the block that fills the upload completes it (in the
//! same operation, under the key's lock the backend took for it).

use async_trait::async_trait;
use bytes::Bytes;

use super::complete::{Completed, Done};
use super::{Backend, FileStore, Key, Received, Sink, Writing};
use crate::store::api::{PlanRecord, StoreError, StoreResult, UploadWriter};

/// An open upload; while it exists the sweeper leaves the upload alone.
pub(super) struct Writer<B: Backend> {
    store: FileStore<B>,
    key: Key,
    sink: B::Sink,
    /// The file's md5 as the writer sent it with this block.
    expected: Option<String>,
    _writing: Option<Writing>,
}

impl<B: Backend> std::fmt::Debug for Writer<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("key", &self.key)
            .field("sink", &self.sink)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> FileStore<B> {
    pub(super) async fn open_writer(&self, key: Key) -> StoreResult<Writer<B>> {
        match self.backend.open(&key).await? {
            Some(sink) => Ok(Writer {
                _writing: self.backend.ledger().writing(&key.id),
                store: self.clone(),
                key,
                sink,
                expected: None,
            }),
            None if self.backend.current(&key).await?.is_some() => Err(StoreError::AlreadyComplete),
            None => Err(StoreError::NotPlanned),
        }
    }
}

#[async_trait]
impl<B: Backend> UploadWriter for Writer<B> {
    fn plan(&self) -> PlanRecord {
        self.sink.plan()
    }

    fn upload_id(&self) -> Option<&str> {
        Some(self.sink.upload_id())
    }

    fn expect_md5(&mut self, md5: String) {
        self.expected = Some(md5);
    }

    async fn put_block(
        self: Box<Self>,
        index: u64,
        data: Bytes,
        upload_id: Option<String>,
    ) -> StoreResult<Option<String>> {
        let store = self.store.clone();
        store
            .run(move |s| async move {
                let named = upload_id.as_deref();
                let b = &*s.backend;
                let id = self.sink.upload_id();
                match b.receive(&self.key, &self.sink, index, data, named).await? {
                    Received::Stored => {
                        if let Some(md5) = self.expected {
                            s.expected.keep(id, md5);
                        }
                        Ok(None)
                    }
                    Received::Full { mut held, last } => {
                        let done = Done {
                            named: named.is_some(),
                            last,
                            md5: self.expected,
                        };
                        match s.complete(&self.key, &mut held, id, done).await? {
                            Completed::Now(md5) => Ok(Some(md5)),
                            Completed::Already(_) | Completed::NotFull => Ok(None),
                        }
                    }
                }
            })
            .await
    }
}
