//! Cleaning up at start what a crash may have left (no request can be
//! under way yet): metas whose content is missing, checksums of no complete
//! file, versions that are not current, unusable upload directories; then
//! the unfinished uploads on disk are accounted for, and those idle beyond
//! the expiry removed.

use std::fs::{self, File};
use std::io;
use std::time::SystemTime;

use tracing::warn;

use super::{Area, Disk, entries, not_found_ok, upload};
use crate::store::api::FileMeta;
use crate::store::files::{Activity, unix_ms};
use crate::store::sums;

impl Disk {
    pub(super) fn drop_orphan_metas(&self) -> io::Result<()> {
        let meta_root = self.root.join(Area::Meta.dir());
        for user in fs::read_dir(&meta_root)? {
            let user = user?;
            for entry in fs::read_dir(user.path())? {
                let entry = entry?;
                let content = self
                    .root
                    .join(Area::Files.dir())
                    .join(user.file_name())
                    .join(entry.file_name());
                // A replaced key's content lives under versions/.
                let versioned = || -> io::Result<bool> {
                    let meta: FileMeta = serde_json::from_slice(&fs::read(entry.path())?)
                        .map_err(io::Error::other)?;
                    Ok(meta.upload_id.is_some_and(|id| {
                        self.root
                            .join(Area::Versions.dir())
                            .join(user.file_name())
                            .join(entry.file_name())
                            .join(id)
                            .exists()
                    }))
                };
                if !content.exists() && !versioned().unwrap_or(false) {
                    warn!(meta = %entry.path().display(), "removing metadata of a file whose content is missing");
                    fs::remove_file(entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// At start (no reader can be under way): remove under `versions/`
    /// everything but the current version of each key — replaced versions,
    /// and new ones a crash cut off before their meta — and a key's first
    /// version in `files/` once it was replaced.
    pub(super) fn drop_replaced_versions(&self) -> io::Result<()> {
        let root = self.root.join(Area::Versions.dir());
        for user in entries(&root)? {
            for key in entries(&user.path())? {
                let meta_path = self
                    .root
                    .join(Area::Meta.dir())
                    .join(user.file_name())
                    .join(key.file_name());
                let current = match fs::read(&meta_path) {
                    Ok(bytes) => serde_json::from_slice::<FileMeta>(&bytes)
                        .ok()
                        .and_then(|m| m.upload_id),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                    Err(e) => return Err(e),
                };
                let dir = key.path();
                let keep: Vec<String> = current
                    .iter()
                    .flat_map(|c| [c.clone(), format!("{c}.sums")])
                    .collect();
                for entry in entries(&dir)? {
                    if !entry
                        .file_name()
                        .to_str()
                        .is_some_and(|n| keep.iter().any(|k| k == n))
                    {
                        fs::remove_file(entry.path())?;
                    }
                }
                let kept = current.as_ref().is_some_and(|c| dir.join(c).exists());
                if kept {
                    // The key's first version was replaced: it goes too.
                    for area in [Area::Files, Area::Sums] {
                        let first = self
                            .root
                            .join(area.dir())
                            .join(user.file_name())
                            .join(key.file_name());
                        not_found_ok(fs::remove_file(first))?;
                    }
                } else {
                    let _ = fs::remove_dir(&dir);
                }
            }
        }
        Ok(())
    }

    /// Remove checksum sidecars that do not describe a complete file: left
    /// by a crash between their rename and the meta's, or kept from an older
    /// file when a crash lost the newer one's rename. Such a file is then
    /// served unverified, never refused for another file's sums.
    pub(super) fn drop_stray_sums(&self) -> io::Result<()> {
        let sums_root = self.root.join(Area::Sums.dir());
        for user in entries(&sums_root)? {
            for entry in entries(&user.path())? {
                let meta_path = self
                    .root
                    .join(Area::Meta.dir())
                    .join(user.file_name())
                    .join(entry.file_name());
                let keep = match fs::read(&meta_path) {
                    Ok(bytes) => match serde_json::from_slice::<FileMeta>(&bytes) {
                        Ok(meta) => {
                            sums::matches(&File::open(entry.path())?, meta.size, &meta.md5)?
                        }
                        Err(_) => false,
                    },
                    Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                    Err(e) => return Err(e),
                };
                if !keep {
                    warn!(sums = %entry.path().display(), "removing checksums that describe no complete file");
                    fs::remove_file(entry.path())?;
                }
            }
        }
        Ok(())
    }

    /// Account for every unfinished upload on disk; unusable ones are removed.
    pub(super) fn index_uploads(&self) -> io::Result<()> {
        let uploads_root = self.root.join(Area::Uploads.dir());
        for user in entries(&uploads_root)? {
            let Ok(user_name) = user.file_name().into_string() else {
                continue;
            };
            for entry in entries(&user.path())? {
                let Ok(key_name) = entry.file_name().into_string() else {
                    continue;
                };
                match upload::scan(&entry.path()) {
                    Ok(found) => {
                        let activity = Activity::new(found.received, found.modified);
                        self.ledger.found(
                            &(user_name.clone(), key_name),
                            found.plan.size,
                            activity,
                        );
                    }
                    Err(e) => {
                        warn!(upload = %entry.path().display(), error = %e, "discarding unreadable unfinished upload");
                        upload::remove_dir(&entry.path())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Remove the uploads found on disk that were idle beyond the expiry
    /// as of `now`; returns how many.
    pub(super) fn expire_at_open(&self, now: SystemTime) -> usize {
        let expiry = u64::try_from(self.limits.upload_expiry.as_millis()).unwrap_or(u64::MAX);
        let idle = self.ledger.idle(unix_ms(now).saturating_sub(expiry));
        for id in &idle {
            self.ledger.remove(id);
            if let Err(e) = upload::remove_dir(&self.upload_dir(id)) {
                warn!(error = %e, "cannot remove an expired upload's files");
            }
        }
        idle.len()
    }
}
