//! Completion's renames, replaced versions and removal of a key's file.
//!
//! A completion's content is sealed (digests taken, a file of 1 MiB or more
//! synced on its own), its meta and checksums are staged in `tmp/`
//! unsynced, then the committer (see `commit.rs`) syncs the file system for
//! the whole batch, performs the renames below in order, syncs again and
//! only then answers. All of it under the key's lock: nothing else changes
//! the key meanwhile.

use std::fs;
use std::io;
use std::path::PathBuf;

use tracing::debug;

use super::{
    Area, Disk, DiskHeld, entries, json_err, lock, not_found_ok, sync_dir, upload, write_temp,
};
use crate::store::api::{FileMeta, StoreError, StoreResult};
use crate::store::files::{Key, KeyId, Unfinished, version_id_ok};
use crate::store::sums;

/// Files of at least this size sync their own data before joining a batch:
/// their writeback then happens while they are still the only ones waiting
/// for it, not in a `syncfs` a batch of small files waits on.
const OWN_SYNC_MIN: u64 = 1 << 20;

/// A completion's content, in place under its own name (an upload's data
/// file, or an empty temp file), with its chunk checksums.
#[derive(Debug)]
pub struct Sealed {
    content: PathBuf,
    crcs: Vec<u32>,
    /// The content is a temp file of its own (an empty file's): removed if
    /// it is never placed.
    temp: bool,
}

/// A completion's meta and checksums, written to `tmp/` (not synced: the
/// batch's first sync does that) and waiting to be renamed into place.
/// Whatever is not renamed is removed when this is dropped.
#[derive(Debug)]
struct Staged {
    meta: FileMeta,
    meta_tmp: PathBuf,
    sums_tmp: PathBuf,
    placed: bool,
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_file(&self.meta_tmp);
            let _ = fs::remove_file(&self.sums_tmp);
        }
    }
}

/// Where a completion's files go: everything the committer's step needs,
/// owned (it runs on the committer's thread).
#[derive(Debug)]
struct Place {
    content: PathBuf,
    /// The key's first version's names.
    files: PathBuf,
    sums: PathBuf,
    meta: PathBuf,
    /// The key's later versions.
    versions: PathBuf,
    tmp: PathBuf,
    current: Option<FileMeta>,
}

impl Disk {
    /// The full upload `up`'s digests, its data made durable if large.
    pub(super) fn seal_upload(
        &self,
        held: &DiskHeld,
        up: &Unfinished,
    ) -> StoreResult<(String, Sealed)> {
        let slot = lock(&self.open)
            .get(&held.key.id)
            .filter(|s| s.id == up.id)
            .cloned()
            .ok_or(StoreError::NotPlanned)?;
        let mut u = lock(&slot.upload);
        let (md5, crcs) = u.finish_digests()?;
        if u.plan.size >= OWN_SYNC_MIN {
            u.sync_data()?;
        }
        let content = u.data_path();
        Ok((
            md5,
            Sealed {
                content,
                crcs,
                temp: false,
            },
        ))
    }

    /// An empty file's content: an empty temp file.
    pub(super) fn seal_nothing(&self) -> StoreResult<Sealed> {
        let content = write_temp(&self.root.join("tmp"), &[], false)?;
        Ok(Sealed {
            content,
            crcs: Vec::new(),
            temp: true,
        })
    }

    /// Make `sealed` the key's file `meta` in the next group commit, and
    /// wait until that is durable.
    pub(super) fn publish_sealed(
        &self,
        held: &DiskHeld,
        sealed: Sealed,
        meta: &FileMeta,
        current: Option<&FileMeta>,
    ) -> StoreResult<()> {
        let id = &held.key.id;
        let place = Place {
            content: sealed.content.clone(),
            files: self.at(Area::Files, id),
            sums: self.at(Area::Sums, id),
            meta: self.at(Area::Meta, id),
            versions: self.version_dir(id),
            tmp: self.root.join("tmp"),
            current: current.cloned(),
        };
        let placed = self
            .stage(meta.clone(), &sealed.crcs)
            .and_then(|staged| self.committer.commit(move || place.apply(staged))?);
        if placed.is_err() && sealed.temp {
            let _ = fs::remove_file(&sealed.content);
        }
        placed
    }

    /// Write a completion's meta and checksums to `tmp/`, unsynced: the
    /// first sync of its batch makes them durable.
    fn stage(&self, meta: FileMeta, crcs: &[u32]) -> StoreResult<Staged> {
        // Written before anything moves: on a full disk this is the step
        // that fails, and then nothing has changed (the upload keeps its data
        // and completes on a retried block). Renames need no space.
        let tmp = self.root.join("tmp");
        let meta_tmp = write_temp(&tmp, &serde_json::to_vec(&meta).map_err(json_err)?, false)?;
        let sums_tmp = match sums::encode(meta.size, &meta.md5, crcs)
            .and_then(|bytes| write_temp(&tmp, &bytes, false))
        {
            Ok(p) => p,
            Err(e) => {
                let _ = fs::remove_file(&meta_tmp);
                return Err(e.into());
            }
        };
        Ok(Staged {
            meta,
            meta_tmp,
            sums_tmp,
            placed: false,
        })
    }

    /// After publishing: the completed upload's directory goes, and it is
    /// no longer open.
    pub(super) fn finish_upload(&self, held: &DiskHeld, id: &str) -> StoreResult<()> {
        let slot = lock(&self.open).get(&held.key.id).cloned();
        let Some(slot) = slot.filter(|s| s.id == id) else {
            return Ok(());
        };
        let mut up = lock(&slot.upload);
        upload::remove_dir(&up.dir)?;
        up.phase = upload::Phase::Complete;
        drop(up);
        let mut open = lock(&self.open);
        if open
            .get(&held.key.id)
            .is_some_and(|s| std::sync::Arc::ptr_eq(s, &slot))
        {
            open.remove(&held.key.id);
        }
        Ok(())
    }

    /// Remove the key's complete file, every version of it.
    pub(super) fn remove_every_version(&self, id: &KeyId) -> StoreResult<()> {
        // Meta first: from that instant the file is no longer complete.
        not_found_ok(fs::remove_file(self.at(Area::Meta, id)))?;
        not_found_ok(fs::remove_file(self.at(Area::Files, id)))?;
        not_found_ok(fs::remove_file(self.at(Area::Sums, id)))?;
        match fs::remove_dir_all(self.version_dir(id)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Remove the replaced version `old` of `key`, whose file is now
    /// `current`.
    pub(super) fn remove_version(
        &self,
        key: &Key,
        old: &str,
        current: Option<&FileMeta>,
    ) -> StoreResult<()> {
        if !version_id_ok(old) {
            return Ok(());
        }
        let dir = self.version_dir(&key.id);
        let was_first = !dir.join(old).exists();
        for name in [old.to_owned(), format!("{old}.sums"), format!("{old}.meta")] {
            not_found_ok(fs::remove_file(dir.join(name)))?;
        }
        // The key's first version in files/, once the current one lives
        // under versions/.
        let current_id = current.and_then(|c| c.upload_id.as_deref());
        if was_first && current_id.is_some_and(|c| version_id_ok(c) && dir.join(c).exists()) {
            not_found_ok(fs::remove_file(self.at(Area::Files, &key.id)))?;
            not_found_ok(fs::remove_file(self.at(Area::Sums, &key.id)))?;
        }
        debug!(user = %key.user, key = %key.key, version = %old, "removed a replaced version");
        Ok(())
    }
}

impl Place {
    /// The committer's step: runs after a sync made the content and
    /// `staged` durable, before the sync that makes these renames durable.
    fn apply(self, staged: Staged) -> StoreResult<()> {
        match &self.current {
            Some(current) => self.version(staged, current),
            None => self.first(staged),
        }
    }

    /// A key's first version. Content is renamed first, then the
    /// checksums, then the meta: a crash in between leaves an orphan content
    /// file (overwritten later) or checksums of no file (removed at `open`);
    /// a crash that kept only the meta's rename leaves a meta without
    /// content, which `open` removes (`drop_orphan_metas`). The content a
    /// surviving meta names is whole either way: it was synced before.
    fn first(&self, mut staged: Staged) -> StoreResult<()> {
        for d in [&self.files, &self.sums, &self.meta] {
            if let Some(parent) = d.parent() {
                fs::create_dir_all(parent)?;
            }
        }
        fs::rename(&self.content, &self.files).and_then(|()| {
            let placed = fs::rename(&staged.sums_tmp, &self.sums)
                .and_then(|()| fs::rename(&staged.meta_tmp, &self.meta));
            if placed.is_err() {
                // Content without meta is not a file, and nothing would ever
                // delete it: put it back.
                let _ = fs::rename(&self.files, &self.content);
                let _ = fs::remove_file(&self.sums);
            }
            placed
        })?;
        staged.placed = true;
        Ok(())
    }

    /// A new version replacing `current`, in one step for readers: content
    /// and checksums go to their own names under `versions/`, `current`'s
    /// meta is kept there too (downloads under way read it by id), then the
    /// new meta is renamed over the key's. Nothing a reader may have open is
    /// renamed over, so a reader sees the old version or the new one, never
    /// a mix nor nothing. Versions replaced before `current` are removed
    /// now.
    fn version(&self, mut staged: Staged, current: &FileMeta) -> StoreResult<()> {
        let id = staged
            .meta
            .upload_id
            .clone()
            .filter(|id| version_id_ok(id))
            .ok_or_else(|| StoreError::Other("a new version needs an id".into()))?;
        let dir = &self.versions;
        fs::create_dir_all(dir)?;
        let old = current
            .upload_id
            .as_deref()
            .filter(|old| version_id_ok(old) && *old != id);
        // The new version's content and sums (synced by the batch), and
        // the kept meta (written now, after that sync: synced here), must be
        // in place on disk before the meta that names them: a crash keeping
        // only the meta's rename would leave the key naming a version it
        // does not have. The committer's second sync makes the meta's
        // rename durable.
        let placed = (|| -> io::Result<()> {
            if let Some(old) = old {
                let bytes = serde_json::to_vec(current).map_err(io::Error::other)?;
                let kept = write_temp(&self.tmp, &bytes, true)?;
                fs::rename(&kept, dir.join(format!("{old}.meta")))?;
            }
            fs::rename(&staged.sums_tmp, dir.join(format!("{id}.sums")))?;
            fs::rename(&self.content, dir.join(&id))?;
            sync_dir(dir)?;
            fs::rename(&staged.meta_tmp, &self.meta)?;
            Ok(())
        })();
        // On failure the new version's files stay unreferenced; `open`
        // removes them (and `staged` its temp files).
        placed?;
        staged.placed = true;
        // Versions replaced before `current` go now; so does the key's first
        // version in files/ unless it is `current` itself.
        let current_is_first = old.is_some_and(|old| !dir.join(old).exists());
        for entry in entries(dir)? {
            let name = entry.file_name();
            let version = name.to_str().and_then(|n| n.split('.').next());
            if version != Some(id.as_str()) && version != old {
                not_found_ok(fs::remove_file(entry.path()))?;
            }
        }
        if !current_is_first {
            not_found_ok(fs::remove_file(&self.files))?;
            not_found_ok(fs::remove_file(&self.sums))?;
        }
        Ok(())
    }
}
