//! A block's write into an unfinished upload on disk, under the key's lock
//! (so a SAVE, DELETE or completion of the key never runs beside it): one
//! positioned write of the data and one of its receipt byte (see
//! `upload.rs`).

use std::time::SystemTime;

use bytes::Bytes;

use super::upload::Phase;
use super::{Disk, DiskHeld, UploadSlot, lock};
use crate::store::api::{PlanRecord, StoreError, StoreResult};
use crate::store::files::Sink;

/// An unfinished upload opened for blocks.
#[derive(Debug)]
pub struct DiskUpload {
    slot: UploadSlot,
}

impl DiskUpload {
    pub(super) fn new(slot: UploadSlot) -> DiskUpload {
        DiskUpload { slot }
    }
}

impl Sink for DiskUpload {
    fn plan(&self) -> PlanRecord {
        self.slot.plan
    }

    fn upload_id(&self) -> &str {
        &self.slot.id
    }
}

impl Disk {
    /// Write one block (checked against the plan by the service); true when
    /// every block is in. With `named`, the block is refused unless it names
    /// the upload it would go into.
    pub(super) fn write_block(
        &self,
        held: &DiskHeld,
        sink: &DiskUpload,
        index: u64,
        data: &Bytes,
        named: Option<&str>,
    ) -> StoreResult<bool> {
        let mut up = lock(&sink.slot.upload);
        match &up.phase {
            Phase::Receiving => {}
            Phase::Complete => return Err(StoreError::AlreadyComplete),
            // Deleted, or superseded by a SAVE (the key has another upload).
            Phase::Discarded => {
                drop(up);
                let superseded = named.is_some() && lock(&self.open).contains_key(&held.key.id);
                return Err(if superseded {
                    StoreError::Superseded
                } else {
                    StoreError::NotPlanned
                });
            }
        }
        if named.is_some_and(|want| want != up.id) {
            return Err(StoreError::Superseded);
        }
        // The service checked the block against this plan; a block that
        // does not fit would write outside the data file or break the md5.
        if !up.fits(index, data.len() as u64) {
            return Err(StoreError::Other(
                format!(
                    "block {index} of {} bytes does not fit the plan",
                    data.len()
                )
                .into(),
            ));
        }
        // In use: the sweeper leaves it alone for another expiry period.
        up.activity.touch(SystemTime::now());
        Ok(up.write_block_shared(index, data)?)
    }
}
