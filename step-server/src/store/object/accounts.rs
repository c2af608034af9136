//! Accounts in the bucket: one JSON object per account, `acct/<user>` (the
//! name encoded as every user segment is). As for records, "create only" and
//! "replace only what exists" are decided under the in-process per-name lock
//! and checked with a HEAD, never with conditional PUTs (Garage ignores
//! them); the running server only reads accounts, so the lock is needed only
//! between management commands of one process.

use async_trait::async_trait;
use futures::StreamExt;
use object_store::ObjectStoreExt;

use super::io::store_err;
use super::names::user_seg;
use super::{Bucket, ObjectStorage};
use crate::store::api::{Account, Accounts, StoreError, StoreResult};

impl Bucket {
    fn account_path(&self, name: &str) -> object_store::path::Path {
        self.path(&["acct", &user_seg(name)])
    }

    /// Run `f` holding the lock for account `name` (the record locks'
    /// table; `acct` is no user segment, so the ids never meet).
    async fn with_account_lock<T>(
        &self,
        name: &str,
        f: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let _g = self.records.lock(("acct".to_owned(), user_seg(name))).await;
        f.await
    }
}

#[async_trait]
impl Accounts for ObjectStorage {
    async fn account_get(&self, name: &str) -> StoreResult<Option<Account>> {
        let inner = self.backend();
        inner.get_json(&inner.account_path(name)).await
    }

    async fn account_create(&self, account: &Account) -> StoreResult<()> {
        self.backend().account_put(account, true).await
    }

    async fn account_replace(&self, account: &Account) -> StoreResult<()> {
        self.backend().account_put(account, false).await
    }

    async fn account_delete(&self, name: &str) -> StoreResult<()> {
        let inner = self.backend();
        let path = inner.account_path(name);
        inner
            .with_account_lock(name, async {
                if !inner.exists(&path).await? {
                    return Err(StoreError::NotFound);
                }
                inner.store.delete(&path).await.map_err(store_err)
            })
            .await
    }

    async fn account_list(&self) -> StoreResult<Vec<String>> {
        let inner = self.backend();
        let dir = inner.path(&["acct"]);
        let mut list = inner.store.list(Some(&dir));
        let mut names = Vec::new();
        while let Some(m) = list.next().await {
            let m = m.map_err(store_err)?;
            // LIST may still show a deleted object: what counts is the GET.
            if let Some(account) = inner.get_json::<Account>(&m.location).await? {
                names.push(account.name);
            }
        }
        names.sort();
        Ok(names)
    }
}

impl Bucket {
    /// Create (`create`) or replace an account, deciding under its lock.
    async fn account_put(&self, account: &Account, create: bool) -> StoreResult<()> {
        let path = self.account_path(&account.name);
        self.with_account_lock(&account.name, async {
            match (self.exists(&path).await?, create) {
                (true, true) => Err(StoreError::Exists),
                (false, false) => Err(StoreError::NotFound),
                _ => self.put_json(&path, account).await,
            }
        })
        .await
    }
}
