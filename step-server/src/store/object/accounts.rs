//! Accounts in the bucket: one JSON object per account, `acct/<user>` (the
//! name encoded as every user segment is). As for records, "create only" and
//! "replace only what exists" are decided under the in-process per-name lock
//! and checked with a HEAD, never with conditional PUTs (Garage ignores
//! them); the running server only reads accounts, so the lock is needed only
//! between management commands of one process.

use futures::StreamExt;
use object_store::ObjectStoreExt;

use super::{Inner, ObjectStorage, store_err, user_seg};
use crate::store::api::{Account, StoreError, StoreResult};

impl Inner {
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

impl ObjectStorage {
    pub(super) async fn account_get_impl(&self, name: &str) -> StoreResult<Option<Account>> {
        let inner = &self.inner;
        inner.get_json(&inner.account_path(name)).await
    }

    pub(super) async fn account_put_impl(
        &self,
        account: &Account,
        create: bool,
    ) -> StoreResult<()> {
        let inner = &self.inner;
        let path = inner.account_path(&account.name);
        inner
            .with_account_lock(&account.name, async {
                match (inner.exists(&path).await?, create) {
                    (true, true) => Err(StoreError::Exists),
                    (false, false) => Err(StoreError::NotFound),
                    _ => inner.put_json(&path, account).await,
                }
            })
            .await
    }

    pub(super) async fn account_delete_impl(&self, name: &str) -> StoreResult<()> {
        let inner = &self.inner;
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

    pub(super) async fn account_list_impl(&self) -> StoreResult<Vec<String>> {
        let inner = &self.inner;
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
