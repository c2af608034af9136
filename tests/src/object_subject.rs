//! The object-store [`Storage`] implementation as a contract-suite
//! [`Subject`]: on `object_store`'s in-memory store, or on any other object
//! store (a real S3 server).

use std::any::Any;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use step_server::store::object::ObjectStorage;
use step_server::store::object::coord::{Coord, MemoryCoord};
use step_server::store::{Storage, StoreLimits};

use crate::contract::{Features, Instance, Subject};

/// Makes the object store each fresh instance lives on.
type MakeStore = dyn Fn() -> Arc<dyn ObjectStore> + Send + Sync;
/// Makes the coordinator a fresh place's instances share (given the
/// place's prefix, unique per place).
type MakeCoord = dyn Fn(&str) -> Arc<dyn Coord> + Send + Sync;

pub struct ObjectSubject {
    make: Box<MakeStore>,
    coord: Option<Box<MakeCoord>>,
}

impl std::fmt::Debug for ObjectSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectSubject").finish_non_exhaustive()
    }
}

/// Where an instance lives: its store and its prefix (a fresh one per
/// instance, so instances on one bucket never meet).
struct Place {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    /// Coordinated: a reopened instance is another instance on the same
    /// bucket and coordinator (as with `--coord`).
    coord: Option<Arc<dyn Coord>>,
}

fn place(p: &(dyn Any + Send + Sync)) -> &Place {
    p.downcast_ref::<Place>().expect("an object-store place")
}

impl ObjectSubject {
    pub fn in_memory() -> Self {
        Self::on(|| Arc::new(InMemory::new()))
    }

    /// Instances on the stores `make` returns (e.g. one bucket of a real S3
    /// server, each instance under a prefix of its own).
    pub fn on(make: impl Fn() -> Arc<dyn ObjectStore> + Send + Sync + 'static) -> Self {
        Self {
            make: Box::new(make),
            coord: None,
        }
    }

    /// Every instance coordinated through the coordinator `coord` makes for
    /// its place, as several step-servers with `--coord` are.
    pub fn coordinated(
        mut self,
        coord: impl Fn(&str) -> Arc<dyn Coord> + Send + Sync + 'static,
    ) -> Self {
        self.coord = Some(Box::new(coord));
        self
    }

    /// On the in-memory store, coordinated in memory.
    pub fn coordinated_in_memory() -> Self {
        Self::in_memory().coordinated(|_| Arc::new(MemoryCoord::new()))
    }

    async fn open(place: &Place, limits: StoreLimits) -> Arc<dyn Storage> {
        let storage = ObjectStorage::coordinated(
            Arc::clone(&place.store),
            &place.prefix,
            limits,
            place.coord.clone(),
        );
        // As a step-server does at start.
        storage.upgrade().await.expect("upgrade");
        storage.recover().await.expect("recover");
        Arc::new(storage)
    }
}

#[async_trait]
impl Subject for ObjectSubject {
    async fn fresh(&self, limits: StoreLimits) -> Instance {
        let prefix = format!("contract-{}", uuid::Uuid::new_v4().simple());
        let place = Place {
            store: (self.make)(),
            coord: self.coord.as_ref().map(|make| make(&prefix)),
            prefix,
        };
        Instance {
            storage: Self::open(&place, limits).await,
            place: Box::new(place),
        }
    }

    async fn reopen(&self, p: &(dyn Any + Send + Sync), limits: StoreLimits) -> Arc<dyn Storage> {
        Self::open(place(p), limits).await
    }

    fn features(&self) -> Features {
        Features {
            // An object store has no notion of free space.
            no_space: false,
            quota: true,
            integrity: true,
        }
    }

    /// The content object of `(user, key)` is the one named by its upload
    /// id (a uuid) under the prefix: found by listing, without knowing how
    /// names are encoded, then rewritten with one byte flipped.
    async fn corrupt(&self, p: &(dyn Any + Send + Sync), user: &str, key: &str, offset: u64) {
        let place = place(p);
        let storage = Self::open(place, StoreLimits::default()).await;
        let meta = storage.head(user, key).await.expect("head");
        let id = meta.upload_id.expect("an upload id");
        let objects: Vec<_> = place
            .store
            .list(Some(&Path::from(place.prefix.as_str())))
            .try_collect()
            .await
            .expect("list");
        let content = objects
            .iter()
            .find(|o| o.location.filename() == Some(id.as_str()))
            .expect("the content object")
            .location
            .clone();
        let mut bytes = place
            .store
            .get(&content)
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes")
            .to_vec();
        bytes[offset as usize] ^= 0xFF;
        place
            .store
            .put(&content, Bytes::from(bytes).into())
            .await
            .expect("put");
    }
}
