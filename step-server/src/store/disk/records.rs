//! DATA records on disk: one JSON file each, `data/<user>/<key>`, created
//! by a hard link from a durable temp file (a link never replaces: of two
//! racing creates one wins).

use std::fs;
use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};

use super::{Area, Disk, DiskStore, blocking, json_err, not_found_ok};
use crate::store::api::{Records, StoreError, StoreResult};

impl Disk {
    fn record_create(&self, user: &str, key: &str, record: &Map<String, Value>) -> StoreResult<()> {
        let bytes = serde_json::to_vec(record).map_err(json_err)?;
        let dest = self.at(Area::Data, &Disk::encoded(user, key));
        if self.create_exclusive(&dest, &bytes)? {
            Ok(())
        } else {
            Err(StoreError::Exists)
        }
    }

    fn record_get(&self, user: &str, key: &str) -> StoreResult<Map<String, Value>> {
        match fs::read(self.at(Area::Data, &Disk::encoded(user, key))) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(json_err),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    fn record_delete(&self, user: &str, key: &str) -> StoreResult<()> {
        if not_found_ok(fs::remove_file(
            self.at(Area::Data, &Disk::encoded(user, key)),
        ))? {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }
}

#[async_trait]
impl Records for DiskStore {
    async fn record_create(
        &self,
        user: &str,
        key: &str,
        record: Map<String, Value>,
    ) -> StoreResult<()> {
        let disk = Arc::clone(self.backend());
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || disk.record_create(&user, &key, &record)).await
    }

    async fn record_get(&self, user: &str, key: &str) -> StoreResult<Map<String, Value>> {
        let disk = Arc::clone(self.backend());
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || disk.record_get(&user, &key)).await
    }

    async fn record_delete(&self, user: &str, key: &str) -> StoreResult<()> {
        let disk = Arc::clone(self.backend());
        let (user, key) = (user.to_owned(), key.to_owned());
        blocking(move || disk.record_delete(&user, &key)).await
    }
}
