//! Expiry: an unfinished upload with no SAVE or block for longer than
//! [`StoreLimits::upload_expiry`](crate::store::StoreLimits) is removed —
//! unless a request holds it open for a block, however idle it looks.
//! Idleness is read from the accounts, then checked again under the key's
//! lock (a block may have come meanwhile, through another instance too).

use std::time::SystemTime;

use tracing::info;

use super::{Backend, FileStore, unix_ms};
use crate::store::api::StoreResult;

impl<B: Backend> FileStore<B> {
    pub(super) async fn sweep(&self, now: SystemTime) -> StoreResult<usize> {
        let b = &*self.backend;
        b.scan().await?;
        self.sweep_retired(now).await?;
        let expiry = u64::try_from(b.limits().upload_expiry.as_millis()).unwrap_or(u64::MAX);
        let cutoff = unix_ms(now).saturating_sub(expiry);
        let mut swept = 0;
        for id in b.ledger().idle(cutoff) {
            let key = b.key_of(&id);
            let mut held = b.lock(&key).await?;
            match b.unfinished(&mut held).await? {
                Some(up) if b.ledger().is_idle(&id, cutoff) => {
                    b.fence(&held).await?;
                    b.discard(&mut held, &up.id).await?;
                    b.ledger().remove(&id);
                    info!(upload_id = %up.id, "expired an idle unfinished upload");
                    swept += 1;
                }
                Some(_) => {}
                // Gone from the store behind the accounts' back.
                None => b.ledger().remove(&id),
            }
        }
        b.sweep_leftovers(cutoff).await?;
        Ok(swept)
    }
}
