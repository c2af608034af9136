//! Unfinished uploads, remembered on this machine so that only one's own
//! upload is ever resumed.
//!
//! A SAVE answer names its upload (`upload_id`). While an upload of several
//! blocks runs, a small record is kept per (server, user, key) under the
//! state directory: that id, the plan's block size, and what identifies the
//! local file (its path, size, modification time and an md5 of its first
//! and last 64 KiB). Running the same command again resumes that upload —
//! and only that one, only for that file: another writer's unfinished upload
//! of the key, or this file changed since, starts over. The record goes once
//! the upload completes or the server refuses it for good.
//!
//! Records are written whole to a temporary file and renamed over the old
//! one, so a crash leaves the old record or the new one; one that does not
//! parse counts as none (the upload then starts over, which is always safe).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::{Deserialize, Serialize};
use step_core::digest::{Md5Hasher, finish_hex, md5_hex};

use md5::Digest;

/// Bytes sampled at each end of the file for its fingerprint.
const SAMPLE: u64 = 64 << 10;

/// What identifies a local file cheaply: a changed file almost always
/// differs in one of these (the md5 of the whole file, checked against the
/// server's at the end, catches the rest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalFile {
    pub path: PathBuf,
    pub size: u64,
    pub modified_ns: u128,
    /// md5 of the first and last [`SAMPLE`] bytes.
    pub sample_md5: String,
}

impl LocalFile {
    pub fn of(path: &Path, file: &File, meta: &std::fs::Metadata) -> io::Result<LocalFile> {
        let size = meta.len();
        let mut hasher = Md5Hasher::new();
        let head = size.min(SAMPLE);
        let tail_start = size.saturating_sub(SAMPLE).max(head);
        for (start, len) in [(0, head), (tail_start, size - tail_start)] {
            let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
            file.read_exact_at(&mut buf, start)?;
            hasher.update(&buf);
        }
        Ok(LocalFile {
            path: std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()),
            size,
            modified_ns: meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos()),
            sample_md5: finish_hex(hasher),
        })
    }
}

/// One unfinished upload of ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub server: String,
    pub user: String,
    pub key: String,
    pub upload_id: String,
    pub block_size: u64,
    /// Planned with `replace` (--overwrite): a resume must be too.
    pub replace: bool,
    pub file: LocalFile,
}

/// The records of one (server, user, key): where they live.
#[derive(Debug, Clone)]
pub struct Records {
    path: PathBuf,
}

impl Records {
    /// The record place for `key` of `user` on `server`, under `dir`
    /// (--state-dir), else the user's state directory (or cache directory
    /// where there is none); `None` when neither exists.
    pub fn new(dir: Option<&Path>, server: &str, user: &str, key: &str) -> Option<Records> {
        let base = match dir {
            Some(d) => d.to_path_buf(),
            None => dirs::state_dir()
                .or_else(dirs::cache_dir)?
                .join("step-client"),
        };
        // One file per (server, user, key), named by their digest: keys may
        // hold any character, and the name must stay short.
        let name = md5_hex(format!("{server}\n{user}\n{key}"));
        Some(Records {
            path: base.join("uploads").join(format!("{name}.json")),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record, if there is one that parses.
    pub fn load(&self) -> Option<Record> {
        let text = std::fs::read(&self.path).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Replace the record with `rec`, atomically.
    pub fn save(&self, rec: &Record) -> io::Result<()> {
        let dir = self.path.parent().unwrap_or_else(|| Path::new("."));
        std::fs::create_dir_all(dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer(&mut tmp, rec).map_err(io::Error::other)?;
        tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }

    /// Forget the upload (done, or refused for good).
    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(dir: &Path, data: &[u8]) -> (PathBuf, LocalFile) {
        let path = dir.join("f.bin");
        std::fs::write(&path, data).expect("write");
        let f = File::open(&path).expect("open");
        let meta = f.metadata().expect("meta");
        let local = LocalFile::of(&path, &f, &meta).expect("identify");
        (path, local)
    }

    #[test]
    fn a_record_round_trips_and_is_cleared() {
        let dir = tempfile::tempdir().expect("dir");
        let (_, file) = file_with(dir.path(), &[7u8; 200_000]);
        let records = Records::new(Some(dir.path()), "h:1", "u", "k/ü\n").expect("place");
        assert_eq!(records.load(), None);
        let rec = Record {
            server: "h:1".into(),
            user: "u".into(),
            key: "k/ü\n".into(),
            upload_id: "id-1".into(),
            block_size: 1 << 20,
            replace: false,
            file,
        };
        records.save(&rec).expect("save");
        assert_eq!(records.load(), Some(rec.clone()));
        let other = Records::new(Some(dir.path()), "h:1", "u", "k").expect("place");
        assert_eq!(other.load(), None, "another key has its own record");
        records.clear();
        assert_eq!(records.load(), None);
        std::fs::write(records.path(), b"{torn").expect("torn");
        assert_eq!(records.load(), None, "a torn record counts as none");
    }

    #[test]
    fn the_fingerprint_sees_changes_at_either_end() {
        let dir = tempfile::tempdir().expect("dir");
        let mut data = vec![1u8; 300_000];
        let (_, a) = file_with(dir.path(), &data);
        data[299_999] = 2;
        let (_, b) = file_with(dir.path(), &data);
        assert_ne!(a.sample_md5, b.sample_md5);
        data[0] = 2;
        let (_, c) = file_with(dir.path(), &data);
        assert_ne!(b.sample_md5, c.sample_md5);
        let (_, tiny) = file_with(dir.path(), b"abc");
        assert_eq!(tiny.sample_md5, md5_hex(b"abc"));
        assert_eq!(tiny.size, 3);
    }
}
