//! The storage contract (`step_tests::contract`) against the local disk
//! store: one test per case.

use std::any::Any;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use step_server::store::{DiskStore, Storage, StoreLimits};
use step_tests::contract::{Features, Instance, Subject};

/// Each instance is a fresh directory; reopening opens it again.
#[derive(Debug)]
struct Disk;

struct Place {
    _tmp: tempfile::TempDir,
    root: PathBuf,
}

fn place(p: &(dyn Any + Send + Sync)) -> &Place {
    p.downcast_ref::<Place>().expect("a disk place")
}

#[async_trait]
impl Subject for Disk {
    async fn fresh(&self, limits: StoreLimits) -> Instance {
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("store");
        let storage: Arc<dyn Storage> = DiskStore::open_with(&root, limits).expect("open");
        Instance {
            storage,
            place: Box::new(Place { _tmp: tmp, root }),
        }
    }

    async fn reopen(&self, p: &(dyn Any + Send + Sync), limits: StoreLimits) -> Arc<dyn Storage> {
        DiskStore::open_with(&place(p).root, limits).expect("reopen")
    }

    fn features(&self) -> Features {
        Features {
            no_space: true,
            quota: true,
            integrity: true,
        }
    }

    async fn corrupt(&self, p: &(dyn Any + Send + Sync), user: &str, key: &str, offset: u64) {
        use std::os::unix::fs::FileExt;
        // Names as the disk store encodes them (the keys used here need no
        // encoding).
        let path = place(p).root.join("files").join(user).join(key);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .expect("stored file");
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, offset).expect("read");
        file.write_all_at(&[b[0] ^ 0xFF], offset).expect("write");
    }
}

step_tests::storage_contract!(Disk);
