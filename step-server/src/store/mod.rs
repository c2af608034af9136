//! Storage: everything the server keeps, behind the interface in `api.rs`,
//! split by concern ([`Records`], [`Files`], [`Accounts`], [`Upkeep`];
//! [`Storage`] is all four), with the local disk ([`disk::DiskStore`]) as
//! the default store and any object store ([`object::ObjectStorage`]) as
//! the other.
//!
//! The service holds an `Arc<dyn Storage>` and speaks to it in users, keys,
//! records, plans and blocks; protocol rules (wire values, block checks,
//! STEP statuses) stay in the service. The rules of an upload live once,
//! in `files/`, over each store's thin backend (`disk/`, `object/`); what
//! else every store shares is here: the per-key lock map (`keylock.rs`),
//! the limits (`limits.rs`) and the periodic sweeper (`sweeper.rs`).
//! `docs/architecture.md` is the tour.

pub mod api;
#[cfg(test)]
mod cancel_tests;
pub mod disk;
pub mod files;
mod keylock;
mod limits;
mod names;
pub mod object;
pub mod s3;
mod sums;
mod sweeper;

pub use api::{
    Account, Accounts, Deleted, FileMeta, Files, ListPage, PlanOutcome, PlanRecord, Records,
    Replace, Storage, StoreError, StoreResult, UnfinishedStats, UnfinishedUpload, Upkeep,
    UploadWriter,
};
pub use disk::DiskStore;
pub use limits::StoreLimits;
pub use sweeper::spawn_sweeper;

/// The local-disk store under its historical name.
pub type Store = DiskStore;
