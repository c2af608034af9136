//! DATA records in the bucket: one JSON object each, `rec/<user>/<key>`.
//! "Create only" is decided under the record key's lock and checked with a
//! HEAD, never with a conditional PUT (Garage ignores them). Coordinated,
//! under the record key's lease too, and each record is an object of its
//! own that the coordinator points at (`fenced.rs`).

use async_trait::async_trait;
use object_store::ObjectStoreExt;
use serde_json::{Map, Value};

use super::ObjectStorage;
use super::io::store_err;
use super::names::names;
use crate::store::api::{Records, StoreError, StoreResult};

#[async_trait]
impl Records for ObjectStorage {
    async fn record_create(
        &self,
        user: &str,
        key: &str,
        record: Map<String, Value>,
    ) -> StoreResult<()> {
        let b = self.backend();
        let n = names(user, key);
        let _g = b.records.lock(n.id.clone()).await;
        let lease = b.record_lease(&n).await?;
        if let (Some(coord), Some(lease)) = (&b.coord, &lease) {
            return b
                .record_create_fenced(coord.as_ref(), lease.as_ref(), &n, &record)
                .await;
        }
        let path = b.rec_path(&n);
        if b.exists(&path).await? {
            return Err(StoreError::Exists);
        }
        if let Some(lease) = &lease {
            lease.check().await?;
        }
        b.put_json(&path, &record).await
    }

    async fn record_get(&self, user: &str, key: &str) -> StoreResult<Map<String, Value>> {
        let b = self.backend();
        let n = names(user, key);
        match &b.coord {
            Some(coord) => b.record_get_fenced(coord.as_ref(), &n).await,
            None => b.get_json(&b.rec_path(&n)).await,
        }?
        .ok_or(StoreError::NotFound)
    }

    async fn record_delete(&self, user: &str, key: &str) -> StoreResult<()> {
        let b = self.backend();
        let n = names(user, key);
        let _g = b.records.lock(n.id.clone()).await;
        let lease = b.record_lease(&n).await?;
        if let (Some(coord), Some(lease)) = (&b.coord, &lease) {
            return b
                .record_delete_fenced(coord.as_ref(), lease.as_ref(), &n)
                .await;
        }
        let path = b.rec_path(&n);
        if !b.exists(&path).await? {
            return Err(StoreError::NotFound);
        }
        if let Some(lease) = &lease {
            lease.check().await?;
        }
        b.store.delete(&path).await.map_err(store_err)
    }
}
