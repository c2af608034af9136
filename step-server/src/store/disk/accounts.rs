//! Accounts on disk: one JSON file per account, `accounts/<name>` (the name
//! encoded as every user name is), written like everything else — to
//! `tmp/`, fsynced, then linked (create) or renamed (replace) into place —
//! and readable by the server's user only (mode 0600: the hashes are worth
//! guarding against offline guessing).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::sync::Arc;

use async_trait::async_trait;

use super::{Disk, DiskStore, blocking, json_err, lock, not_found_ok, sync_dir};
use crate::store::api::{Account, Accounts, StoreError, StoreResult};
use crate::store::names;

const DIR: &str = "accounts";

impl Disk {
    fn account_path(&self, name: &str) -> PathBuf {
        self.root.join(DIR).join(names::encode(name))
    }

    /// `account` as a durable, owner-only temp file.
    fn account_temp(&self, account: &Account) -> StoreResult<PathBuf> {
        let bytes = serde_json::to_vec(account).map_err(json_err)?;
        let path = self
            .root
            .join("tmp")
            .join(uuid::Uuid::new_v4().simple().to_string());
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(&bytes).and_then(|()| f.sync_all()));
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(e.into());
        }
        Ok(path)
    }

    fn account_get(&self, name: &str) -> StoreResult<Option<Account>> {
        read_account(&self.account_path(name))
    }

    fn account_create(&self, account: &Account) -> StoreResult<()> {
        let dest = self.account_path(&account.name);
        let dir = self.root.join(DIR);
        fs::create_dir_all(&dir)?;
        let tmp = self.account_temp(account)?;
        // A hard link never replaces: of two racing creates one wins.
        let linked = fs::hard_link(&tmp, &dest);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(sync_dir(&dir)?),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(StoreError::Exists),
            Err(e) => Err(e.into()),
        }
    }

    fn account_replace(&self, account: &Account) -> StoreResult<()> {
        let dest = self.account_path(&account.name);
        let tmp = self.account_temp(account)?;
        // Checked and renamed under one lock, so a replace racing a delete
        // never brings the account back.
        let placed = {
            let _g = lock(&self.accounts);
            if dest.exists() {
                fs::rename(&tmp, &dest).map(|()| true)
            } else {
                Ok(false)
            }
        };
        match placed {
            Ok(true) => Ok(sync_dir(&self.root.join(DIR))?),
            Ok(false) => {
                let _ = fs::remove_file(&tmp);
                Err(StoreError::NotFound)
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e.into())
            }
        }
    }

    fn account_delete(&self, name: &str) -> StoreResult<()> {
        let removed = {
            let _g = lock(&self.accounts);
            not_found_ok(fs::remove_file(self.account_path(name)))?
        };
        if !removed {
            return Err(StoreError::NotFound);
        }
        Ok(sync_dir(&self.root.join(DIR))?)
    }

    fn account_list(&self) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        // Long names are stored under a hash, so the name is read from the
        // file rather than decoded from its name.
        for entry in super::entries(&self.root.join(DIR))? {
            if let Some(account) = read_account(&entry.path())? {
                out.push(account.name);
            }
        }
        out.sort();
        Ok(out)
    }
}

#[async_trait]
impl Accounts for DiskStore {
    async fn account_get(&self, name: &str) -> StoreResult<Option<Account>> {
        let disk = Arc::clone(self.backend());
        let name = name.to_owned();
        blocking(move || disk.account_get(&name)).await
    }

    async fn account_create(&self, account: &Account) -> StoreResult<()> {
        let (disk, account) = (Arc::clone(self.backend()), account.clone());
        blocking(move || disk.account_create(&account)).await
    }

    async fn account_replace(&self, account: &Account) -> StoreResult<()> {
        let (disk, account) = (Arc::clone(self.backend()), account.clone());
        blocking(move || disk.account_replace(&account)).await
    }

    async fn account_delete(&self, name: &str) -> StoreResult<()> {
        let disk = Arc::clone(self.backend());
        let name = name.to_owned();
        blocking(move || disk.account_delete(&name)).await
    }

    async fn account_list(&self) -> StoreResult<Vec<String>> {
        let disk = Arc::clone(self.backend());
        blocking(move || disk.account_list()).await
    }
}

fn read_account(path: &Path) -> StoreResult<Option<Account>> {
    match File::open(path) {
        Ok(f) => serde_json::from_reader(io::BufReader::new(f))
            .map(Some)
            .map_err(json_err),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}
