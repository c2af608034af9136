//! FILE SAVE: what a key takes, decided under its lock.
//!
//! 1. A plain SAVE of a key holding a complete file is refused
//!    ([`api::check_save`]); a replacing one only when its `if_md5` does not
//!    hold.
//! 2. With `resume` naming the key's unfinished upload (its id), of the
//!    same plan and condition, that upload is continued: its missing blocks
//!    are answered (one whose blocks are all in, its completion cut short,
//!    is completed now). The id is the proof of ownership: a resume naming
//!    no upload, or another one, starts over like a plain SAVE, so a writer
//!    never continues (and completes with its blocks) someone else's upload.
//! 3. Otherwise whatever unfinished upload the key holds is discarded.
//! 4. An empty file completes at once.
//! 5. The user's caps on unfinished uploads are reserved, then the backend
//!    starts the upload (and may refuse for its own reasons, e.g. space).

use super::complete::{Completed, Done};
use super::{Backend, FileStore, Key, SaveRequest, Unfinished};
use crate::store::api::{self, FileMeta, PlanOutcome, StoreResult, unix_now};
use step_core::digest::EMPTY_MD5;

/// Whether `req` continues the unfinished upload `up`: it names it.
fn resumes(req: &SaveRequest, up: &Unfinished) -> bool {
    req.resume.as_deref() == Some(up.id.as_str())
        && up.plan == req.plan
        && up.replace == req.replace
}

impl<B: Backend> FileStore<B> {
    pub(super) async fn save(&self, key: Key, req: SaveRequest) -> StoreResult<PlanOutcome> {
        let b = &*self.backend;
        let mut held = b.lock(&key).await?;
        let up = b.unfinished(&mut held).await?;
        let current = b.current(&key).await?;
        api::check_save(req.replace.as_ref(), current.as_ref())?;
        if let Some(up) = up.as_ref().filter(|up| resumes(&req, up)) {
            return self.resume(&key, &mut held, up).await;
        }
        if let Some(up) = up {
            b.fence(&held).await?;
            b.discard(&mut held, &up.id).await?;
            b.ledger().remove(&key.id);
        }
        if req.plan.size == 0 {
            let sealed = b.seal_empty(&mut held).await?;
            let meta = FileMeta {
                key: key.key.clone(),
                size: 0,
                md5: EMPTY_MD5.to_owned(),
                upload_id: Some(uuid::Uuid::new_v4().simple().to_string()),
                completed_unix: unix_now(),
            };
            self.switch(&key, &mut held, sealed, &meta, current.as_ref())
                .await?;
            return Ok(PlanOutcome {
                plan: req.plan,
                missing: Vec::new(),
                resumed: false,
                md5: Some(meta.md5),
                upload_id: None,
            });
        }
        b.ledger().reserve(&key.id, req.plan.size, b.limits())?;
        let created = match b.fence(&held).await {
            Ok(()) => b.create(&mut held, req.plan, req.replace).await,
            Err(e) => Err(e),
        };
        let upload_id = created.inspect_err(|_| b.ledger().remove(&key.id))?;
        Ok(PlanOutcome {
            plan: req.plan,
            missing: vec![[0, req.plan.total()]],
            resumed: false,
            md5: None,
            upload_id: Some(upload_id),
        })
    }

    async fn resume(
        &self,
        key: &Key,
        held: &mut B::Held,
        up: &Unfinished,
    ) -> StoreResult<PlanOutcome> {
        let (plan, upload_id) = (up.plan, Some(up.id.clone()));
        if up.remaining == 0 {
            // Every block is in; its completion was cut short: finish it.
            let md5 = match self.complete(key, held, &up.id, Done::default()).await? {
                Completed::Now(md5) | Completed::Already(md5) => Some(md5),
                Completed::NotFull => None,
            };
            return Ok(PlanOutcome {
                plan,
                missing: Vec::new(),
                resumed: true,
                md5,
                upload_id,
            });
        }
        self.backend.ledger().touch(&key.id, 0);
        Ok(PlanOutcome {
            plan,
            missing: self.backend.missing(held).await?,
            resumed: true,
            md5: None,
            upload_id,
        })
    }
}
