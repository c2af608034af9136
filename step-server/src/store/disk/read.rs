//! Reading complete files on disk: ranged reads checked against the
//! file's chunk checksums, and listings (one directory read of the user's
//! metas; the names decode to keys).

use std::collections::BinaryHeap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::path::PathBuf;

use bytes::Bytes;
use tracing::{debug, error, warn};

use super::{Area, Disk, entries, json_err};
use crate::store::api::{FileMeta, ListPage, StoreError, StoreResult};
use crate::store::files::listing::PageRule;
use crate::store::files::{KeyId, version_id_ok};
use crate::store::{names, sums};

/// `len` bytes of `file` from `offset`, read into memory nobody zeroed first:
/// a zero-filled buffer per block was a tenth of a download's server CPU.
/// Fewer bytes than asked is `UnexpectedEof`.
fn read_exact_at(file: &File, mut offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let got = rustix::io::pread(file, rustix::buffer::spare_capacity(&mut buf), offset)?;
        if got == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        offset += got as u64;
    }
    // The allocation may be larger than asked, and a read may then go past.
    buf.truncate(len);
    Ok(buf)
}

impl Disk {
    pub(super) fn version_dir(&self, id: &KeyId) -> PathBuf {
        self.at(Area::Versions, id)
    }

    /// Where version `version` of the key `id` keeps its content and
    /// checksums: its own files under `versions/` once the key was
    /// replaced, else the key's first version's in `files/` and `sums/`.
    pub(super) fn located(&self, id: &KeyId, version: Option<&str>) -> (PathBuf, PathBuf) {
        if let Some(v) = version.filter(|v| version_id_ok(v)) {
            let dir = self.version_dir(id);
            let content = dir.join(v);
            if content.exists() {
                return (content, dir.join(format!("{v}.sums")));
            }
        }
        (self.at(Area::Files, id), self.at(Area::Sums, id))
    }

    /// Read `len` bytes at `offset` of the complete file `meta` describes,
    /// checked against its chunk checksums: bytes that fail are refused with
    /// [`StoreError::Integrity`], never returned. Files stored before
    /// checksums were kept are read unchecked.
    pub(super) fn read_range(
        &self,
        user: &str,
        meta: &FileMeta,
        offset: u64,
        len: u64,
    ) -> StoreResult<Bytes> {
        // Content first, then its checksums: a replace renames nothing over
        // either, and a key's first version's pair is checked against
        // `meta` below.
        let id = Disk::encoded(user, &meta.key);
        let (path, sums_path) = self.located(&id, meta.upload_id.as_deref());
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StoreError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let side = match File::open(&sums_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                debug!(%user, key = %meta.key, "no checksums kept for this file: served unverified");
                return Ok(Bytes::from(read_exact_at(&file, offset, len as usize)?));
            }
            Err(e) => return Err(e.into()),
        };
        // The checksums must be this file's: opened after a DELETE and a
        // new upload of the key, they describe another one.
        if !sums::matches(&side, meta.size, &meta.md5)? {
            return Err(StoreError::NotFound);
        }
        let (first, start, end) = sums::covering(offset, len, meta.size);
        let buf = match read_exact_at(&file, start, (end - start) as usize) {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                error!(%user, key = %meta.key, offset, "stored file is shorter than its meta says: block refused");
                return Err(StoreError::Integrity { offset });
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(bad) = sums::verify(&side, first, &buf)? {
            error!(%user, key = %meta.key, offset, chunk_offset = bad, "stored bytes fail their checksum: block refused");
            return Err(StoreError::Integrity { offset: bad });
        }
        let from = (offset - start) as usize;
        Ok(Bytes::from(buf).slice(from..from + len as usize))
    }

    /// The complete files of `user` (the rules: [`PageRule`]). Keys come
    /// from the meta directory's names, decoded: one `readdir`, no file
    /// read, except for names too long to be kept readable (stored as a
    /// hash), whose meta is read for its key. The encoding does not keep
    /// key order, so every name is decoded and the page picked from them
    /// (O(n log limit) for n files of the user); only the page's metas are
    /// read.
    pub(super) fn list_files(&self, user: &str, rule: PageRule<'_>) -> StoreResult<ListPage> {
        let dir = self.root.join(Area::Meta.dir()).join(names::encode(user));
        // The `limit + 1` smallest wanted keys so far, with their names.
        let mut best: BinaryHeap<(String, OsString)> = BinaryHeap::new();
        // Readable names of keys with this prefix start with its encoding:
        // the others are passed over without decoding.
        let name_prefix = names::encode_prefix(rule.prefix);
        for entry in entries(&dir)? {
            let name = entry.file_name();
            if let Some(readable) = name.to_str().filter(|n| !n.starts_with('~'))
                && !readable.starts_with(&name_prefix)
            {
                continue;
            }
            let Some(key) = key_of(&entry, &name)? else {
                continue;
            };
            if !rule.wants(&key) {
                continue;
            }
            if best.len() < rule.keep() {
                best.push((key, name));
            } else if best.peek().is_some_and(|(top, _)| key < *top) {
                best.pop();
                best.push((key, name));
            }
        }
        let mut files = Vec::with_capacity(best.len());
        for (_, name) in best.into_sorted_vec() {
            match fs::read(dir.join(name)) {
                Ok(bytes) => {
                    files.push(serde_json::from_slice::<FileMeta>(&bytes).map_err(json_err)?)
                }
                // Deleted since the directory was read: not in the page.
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(rule.page(files))
    }
}

/// The key a meta file `entry` called `name` holds: decoded from the name,
/// or for a hashed (or foreign) name, read from the meta. `None` for one
/// deleted meanwhile or unreadable.
fn key_of(entry: &fs::DirEntry, name: &OsString) -> StoreResult<Option<String>> {
    if let Some(key) = name.to_str().and_then(names::decode) {
        return Ok(Some(key));
    }
    match fs::read(entry.path()) {
        Ok(bytes) => match serde_json::from_slice::<FileMeta>(&bytes) {
            Ok(meta) if names::encode(&meta.key) == name.to_string_lossy() => Ok(Some(meta.key)),
            _ => {
                warn!(meta = %entry.path().display(), "skipping unreadable metadata in a listing");
                Ok(None)
            }
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}
