//! Reading complete files: ranged reads verified against their sums, and
//! listings (one ordered LIST of the user's metas, the page's metas fetched
//! a few at a time).

use std::pin::Pin;

use bytes::Bytes;
use futures::stream::{BoxStream, Peekable, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStoreExt};
use tracing::{debug, error};

use super::Bucket;
use super::io::{other, store_err};
use super::names::{KEY_ORDERED_BYTES, key_seg, key_seg_ordered, user_seg};
use crate::store::api::{FileMeta, ListPage, StoreError, StoreResult};
use crate::store::files::listing::PageRule;
use crate::store::sums::CHUNK;

/// Metadata objects fetched concurrently by a listing.
const LIST_FETCH: usize = 16;

type Listing = Peekable<BoxStream<'static, object_store::Result<ObjectMeta>>>;

/// The group a key segment sorts in: keys over [`KEY_ORDERED_BYTES`]
/// sharing their ordered head sort among themselves by hash.
fn group_of(seg: &str) -> &str {
    seg.split('x').next().unwrap_or("")
}

impl Bucket {
    /// `len` bytes at `offset` of the file `meta` describes. The chunks
    /// covering the range and their CRCs are two ranged GETs at once, so
    /// verifying costs no extra round trip; bytes that fail are refused.
    pub(super) async fn read_range(
        &self,
        user: &str,
        meta: &FileMeta,
        offset: u64,
        len: u64,
    ) -> StoreResult<Bytes> {
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= meta.size)
            .ok_or_else(|| other("read past the end of the file"))?;
        let Some(upload_id) = meta.upload_id.as_deref() else {
            return Err(StoreError::NotFound);
        };
        let n = super::names::names(user, &meta.key);
        let content = self.content_path(&n, upload_id);
        let sums = self.sums_path(&n, upload_id);
        let first = offset / CHUNK;
        let last = end.div_ceil(CHUNK);
        let start = first * CHUNK;
        let stop = (last * CHUNK).min(meta.size);
        let (bytes, crcs) = futures::join!(
            self.store.get_range(&content, start..stop),
            self.store.get_range(&sums, first * 4..last * 4)
        );
        let bytes = bytes.map_err(store_err)?;
        if bytes.len() as u64 != stop - start {
            return Err(StoreError::Integrity { offset });
        }
        match crcs {
            Ok(crcs) => {
                if crcs.len() as u64 != (last - first) * 4 {
                    return Err(StoreError::Integrity { offset });
                }
                for (i, (chunk, want)) in bytes
                    .chunks(CHUNK as usize)
                    .zip(crcs.chunks_exact(4))
                    .enumerate()
                {
                    let want = u32::from_le_bytes([want[0], want[1], want[2], want[3]]);
                    if crc32c::crc32c(chunk) != want {
                        let at = start + i as u64 * CHUNK;
                        error!(user, key = %meta.key, offset = at, "stored bytes fail their checksum: refused");
                        return Err(StoreError::Integrity { offset: at });
                    }
                }
            }
            Err(object_store::Error::NotFound { .. }) => {
                debug!(user, key = %meta.key, "no checksums kept for this file: served unverified");
            }
            Err(e) => return Err(store_err(e)),
        }
        let from = (offset - start) as usize;
        Ok(bytes.slice(from..from + len as usize))
    }

    /// One page of `user`'s complete files (the rules: [`PageRule`]). Key
    /// segments sort as keys do, so the LIST starts at the page's first
    /// candidate and stops past the prefix; keys long enough to end in a
    /// hash are fetched a whole group at a time and sorted by their key.
    pub(super) async fn list_files(&self, user: &str, rule: PageRule<'_>) -> StoreResult<ListPage> {
        let dir = self.meta_dir(&user_seg(user));
        // Every key starting with `prefix` has a segment starting with this.
        let pre_seg = key_seg_ordered(rule.prefix.as_bytes());
        let mut list: Listing = match list_offset(&pre_seg, rule.after) {
            Some(o) => self
                .store
                .list_with_offset(Some(&dir), &dir.clone().join(o.as_str())),
            None => self.store.list(Some(&dir)),
        }
        .peekable();
        let mut files: Vec<FileMeta> = Vec::new();
        let mut ended = false;
        while files.len() < rule.keep() && !ended {
            let want = rule.keep() - files.len();
            let mut batch;
            (batch, ended) = next_batch(&mut list, &dir, &pre_seg, want).await?;
            if let Some(coord) = &self.coord {
                // The entries are an index: each key's file is the
                // version its pointer names.
                batch = self
                    .listed_versions(coord.as_ref(), &user_seg(user), batch)
                    .await?;
            }
            let metas: Vec<Option<FileMeta>> = futures::stream::iter(batch)
                .map(|p| async move { self.get_json::<FileMeta>(&p).await })
                .buffered(LIST_FETCH)
                .try_collect()
                .await?;
            files.extend(metas.into_iter().flatten().filter(|m| rule.wants(&m.key)));
        }
        Ok(rule.page(files))
    }
}

/// Where the LIST starts (exclusive): just below `pre_seg` (its last
/// letter lowered, then above any continuation), or `after`'s place.
fn list_offset(pre_seg: &str, after: Option<&str>) -> Option<String> {
    let mut offset: Option<String> = (pre_seg.len() > 1).then(|| {
        let mut s = pre_seg.to_owned();
        if let Some(c) = s.pop() {
            s.push(char::from(c as u8 - 1));
        }
        s.push_str("zz");
        s
    });
    if let Some(a) = after {
        // A long `after` is in a group sorted by hash: start at the group
        // and let the key filter drop what is not after it.
        let a_seg = if a.len() > KEY_ORDERED_BYTES {
            key_seg_ordered(a.as_bytes())
        } else {
            key_seg(a)
        };
        if offset.as_ref().is_none_or(|o| a_seg > *o) {
            offset = Some(a_seg);
        }
    }
    offset
}

/// The next `want` candidates' paths (more if the last one's hash group
/// goes on: a page never ends inside a group), and whether the listing
/// ended.
async fn next_batch(
    list: &mut Listing,
    dir: &Path,
    pre_seg: &str,
    want: usize,
) -> StoreResult<(Vec<Path>, bool)> {
    let mut batch: Vec<Path> = Vec::new();
    loop {
        let Some(m) = Pin::new(&mut *list).next().await else {
            return Ok((batch, true));
        };
        let m = m.map_err(store_err)?;
        let Some(seg) = m.location.filename().map(str::to_owned) else {
            continue;
        };
        if m.location.parts().count() != dir.parts().count() + 1 {
            continue;
        }
        if !seg.starts_with(pre_seg) {
            if seg.as_str() > pre_seg {
                return Ok((batch, true));
            }
            continue;
        }
        batch.push(m.location);
        if batch.len() >= want {
            let same_group_next = match Pin::new(&mut *list).peek().await {
                Some(Ok(next)) => next
                    .location
                    .filename()
                    .is_some_and(|f| f.contains('x') && group_of(f) == group_of(&seg)),
                _ => false,
            };
            if !same_group_next {
                return Ok((batch, false));
            }
        }
    }
}
