//! One unfinished upload: a sparse data file, a one-byte-per-block receipt
//! file and a small plan file (the plan, the upload's id and a replace's
//! condition), all under `uploads/<user>/<key>/`. An upload of one block
//! has no receipt file: it completes with the block that would be its only
//! receipt, so a missing receipt file there means "nothing received".
//! Uploads written by older versions keep the id and the condition in files
//! of their own (`id`, `replace.json`), still read.
//!
//! Per block the work is O(1): one positioned write of the data, one of the
//! receipt byte, one bit in memory. The md5 of the contiguous prefix grows as
//! blocks arrive in order, so an in-order upload is never read back; blocks
//! that arrived early are read back once, when the prefix reaches them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::SystemTime;

use bytes::Bytes;
use md5::{Digest, Md5};
use step_core::plan::block_len;

use serde::{Deserialize, Serialize};

use crate::store::api::{PlanRecord, Replace};
use crate::store::files::Activity;
use crate::store::sums::ChunkSums;

pub const DATA: &str = "data";
/// Written bytes after which a background flush starts. Small enough that
/// the fsync at completion has little left (measured on 100 MiB uploads:
/// 8 MiB gave ~12% more than 32 MiB; 1 GiB unchanged).
const FLUSH_EVERY: u64 = 8 << 20;
pub const RECEIPTS: &str = "blocks";
pub const PLAN: &str = "plan.json";
/// The id, in uploads from before it moved into the plan file.
pub const ID: &str = "id";
/// A replacing upload's condition, in uploads from before it moved into the
/// plan file.
pub const REPLACE: &str = "replace.json";

/// What the plan file holds.
#[derive(Debug, Serialize, Deserialize)]
struct PlanFile {
    #[serde(flatten)]
    plan: PlanRecord,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    /// A replacing upload's condition (SAVE `replace`); absent for a plain one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replace: Option<Replace>,
}

fn read_plan(dir: &Path) -> io::Result<PlanFile> {
    Ok(serde_json::from_slice(&fs::read(dir.join(PLAN))?)?)
}

/// The receipt bytes of the upload in `dir`: none received when a
/// one-block upload has no receipt file.
fn read_receipts(dir: &Path, plan: &PlanRecord) -> io::Result<Vec<u8>> {
    match fs::read(dir.join(RECEIPTS)) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && plan.total() == 1 => Ok(vec![0]),
        other => other,
    }
}

/// Uploads at least this large hash on a thread of their own.
const THREAD_HASH_MIN: u64 = 16 << 20;
/// Bytes of blocks that may wait for that thread (memory per upload).
const HASH_QUEUE_BYTES: u64 = 4 << 20;

/// The md5 and the at-rest chunk CRCs of an upload's contiguous prefix:
/// every byte passes here once, in order, so the CRCs cost no extra pass.
#[derive(Debug, Default)]
struct Digests {
    md5: Md5,
    sums: ChunkSums,
}

impl Digests {
    fn update(&mut self, data: &[u8]) {
        self.md5.update(data);
        self.sums.update(data);
    }
}

/// The digests of an upload's contiguous prefix. Small uploads hash inline;
/// large ones on a thread of their own, fed in order through a bounded queue,
/// so hashing one block (md5 runs at under 1 GB/s per core) overlaps
/// receiving and writing the next ones instead of holding the upload's lock.
#[derive(Debug)]
enum PrefixHasher {
    Inline(Digests),
    Thread {
        queue: SyncSender<Bytes>,
        done: JoinHandle<Digests>,
    },
}

impl PrefixHasher {
    fn for_plan(plan: &PlanRecord) -> PrefixHasher {
        if plan.size >= THREAD_HASH_MIN {
            let blocks = (HASH_QUEUE_BYTES / plan.block_size.max(1)).max(2);
            PrefixHasher::threaded(blocks as usize)
        } else {
            PrefixHasher::Inline(Digests::default())
        }
    }

    /// A hashing thread with room for `blocks` queued blocks; inline if no
    /// thread can be started.
    fn threaded(blocks: usize) -> PrefixHasher {
        let (queue, rx) = sync_channel::<Bytes>(blocks);
        let spawned = std::thread::Builder::new()
            .name("step-md5".into())
            .spawn(move || {
                let mut digests = Digests::default();
                for block in rx {
                    digests.update(&block);
                }
                digests
            });
        match spawned {
            Ok(done) => PrefixHasher::Thread { queue, done },
            Err(_) => PrefixHasher::Inline(Digests::default()),
        }
    }

    /// Hash the next block of the prefix; `shared` is the same bytes when
    /// the caller holds them as `Bytes` (queued without a copy).
    fn update(&mut self, data: &[u8], shared: Option<&Bytes>) -> io::Result<()> {
        match self {
            PrefixHasher::Inline(digests) => digests.update(data),
            PrefixHasher::Thread { queue, .. } => {
                let block = shared
                    .cloned()
                    .unwrap_or_else(|| Bytes::copy_from_slice(data));
                queue
                    .send(block)
                    .map_err(|_| io::Error::other("md5 thread stopped"))?;
            }
        }
        Ok(())
    }

    /// The md5 (hex) and the chunk CRCs of everything hashed.
    fn finish(self) -> io::Result<(String, Vec<u32>)> {
        let digests = match self {
            PrefixHasher::Inline(digests) => digests,
            PrefixHasher::Thread { queue, done } => {
                drop(queue);
                done.join()
                    .map_err(|_| io::Error::other("md5 thread panicked"))?
            }
        };
        Ok((hex::encode(digests.md5.finalize()), digests.sums.finish()))
    }
}

/// What the store needs to know of an upload on disk, read without opening
/// it for writing (at start, to account for every unfinished upload).
#[derive(Debug)]
pub struct Scanned {
    pub plan: PlanRecord,
    pub received: u64,
    /// Newest modification time of its files: when it was last written.
    pub modified: SystemTime,
}

/// Read the state of the upload in `dir`; an error means it is unusable.
pub fn scan(dir: &Path) -> io::Result<Scanned> {
    let plan = read_plan(dir)?.plan;
    let receipts = read_receipts(dir, &plan)?;
    let data = fs::metadata(dir.join(DATA))?;
    if data.len() != plan.size || receipts.len() as u64 != plan.total() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "upload files do not match the plan",
        ));
    }
    let mut modified = data.modified()?;
    for name in [RECEIPTS, PLAN] {
        match fs::metadata(dir.join(name)) {
            Ok(m) => modified = modified.max(m.modified()?),
            Err(e) if e.kind() == io::ErrorKind::NotFound && name == RECEIPTS => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Scanned {
        received: received_bytes(&plan, &receipts),
        plan,
        modified,
    })
}

/// The plan, id and missing blocks of the upload in `dir`, read without
/// opening it for writing. The id is `None` for an upload from before ids
/// that has none on disk (it gets one when loaded).
pub fn peek(dir: &Path) -> io::Result<(PlanRecord, Option<String>, Vec<[u64; 2]>)> {
    let file = read_plan(dir)?;
    let receipts = read_receipts(dir, &file.plan)?;
    if receipts.len() as u64 != file.plan.total() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "upload files do not match the plan",
        ));
    }
    let id = match file.id {
        Some(id) => Some(id),
        None => fs::read_to_string(dir.join(ID)).ok(),
    };
    let missing =
        step_core::plan::to_ranges((0..file.plan.total()).filter(|&i| receipts[i as usize] == 0));
    Ok((file.plan, id, missing))
}

fn received_bytes(plan: &PlanRecord, receipts: &[u8]) -> u64 {
    receipts
        .iter()
        .enumerate()
        .filter(|(_, b)| **b != 0)
        .map(|(i, _)| block_len(plan.size, plan.block_size, i as u64).unwrap_or(0))
        .sum()
}

#[derive(Debug)]
pub enum Phase {
    Receiving,
    Complete,
    /// Deleted or superseded by a new SAVE: blocks for it are refused.
    Discarded,
}

#[derive(Debug)]
pub struct Upload {
    pub dir: PathBuf,
    pub plan: PlanRecord,
    data: File,
    /// None for a one-block upload.
    receipts: Option<File>,
    received: Vec<u64>,
    remaining: u64,
    hasher: PrefixHasher,
    hashed: u64,
    /// A block inside the hashed prefix was written again: hash from disk.
    rehash: bool,
    /// Bytes written since the last background flush was started.
    unflushed: u64,
    flushing: Arc<AtomicBool>,
    pub phase: Phase,
    /// Random name of this upload, different for every SAVE that starts one
    /// (kept on disk, so it survives eviction and restarts): UPLOADs that
    /// carry it are refused once another SAVE has started the key over.
    pub id: String,
    /// Shared with the store's accounting of unfinished uploads.
    pub activity: Arc<Activity>,
    /// Replaces the key's complete file at completion (SAVE `replace`).
    pub replace: Option<Replace>,
}

fn bit(bits: &[u64], i: u64) -> bool {
    bits[(i / 64) as usize] & (1 << (i % 64)) != 0
}

impl Upload {
    /// Start a fresh upload in `dir` (which must not exist yet).
    pub fn create(
        dir: PathBuf,
        plan: PlanRecord,
        replace: Option<Replace>,
        activity: Arc<Activity>,
    ) -> io::Result<Upload> {
        fs::create_dir_all(&dir)?;
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(DATA))?;
        data.set_len(plan.size)?;
        let receipts = if plan.total() > 1 {
            let receipts = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(dir.join(RECEIPTS))?;
            receipts.set_len(plan.total())?;
            Some(receipts)
        } else {
            None
        };
        let id = uuid::Uuid::new_v4().simple().to_string();
        // The plan file is written last: its presence marks the directory as
        // a usable upload. It is written in place, not renamed there: in this
        // process it is read only under the key's lock, which the caller
        // holds (a HEAD only asks whether it exists); and a plan torn by a
        // crash fails to parse, so `open`
        // discards the directory like any other half-written upload. It is
        // not fsynced (an fsync here cost every SAVE a journal commit,
        // milliseconds on a busy disk): the blocks and receipts of an
        // unfinished upload are not either.
        let file = PlanFile {
            plan,
            id: Some(id.clone()),
            replace: replace.clone(),
        };
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(dir.join(PLAN))?
            .write_all(&serde_json::to_vec(&file)?)?;
        let mut up = Self::assemble(dir, plan, data, receipts, None, id, activity);
        up.replace = replace;
        Ok(up)
    }

    /// Reload an upload left on disk by an earlier run (or closed to save
    /// descriptors); `activity` is the store's record of it, brought up to
    /// date with what is on disk.
    pub fn load(dir: PathBuf, activity: Arc<Activity>) -> io::Result<Upload> {
        let file = read_plan(&dir)?;
        let plan = file.plan;
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(DATA))?;
        let receipts = match OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(RECEIPTS))
        {
            Ok(f) => Some(f),
            Err(e) if e.kind() == io::ErrorKind::NotFound && plan.total() == 1 => None,
            Err(e) => return Err(e),
        };
        let receipts_len = match &receipts {
            Some(f) => f.metadata()?.len(),
            None => plan.total(),
        };
        if data.metadata()?.len() != plan.size || receipts_len != plan.total() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "upload files do not match the plan",
            ));
        }
        let bytes = read_receipts(&dir, &plan)?;
        // From before ids: a fresh one only makes holders of the old one
        // SAVE again.
        let id = file.id.unwrap_or_else(|| {
            fs::read_to_string(dir.join(ID))
                .unwrap_or_else(|_| uuid::Uuid::new_v4().simple().to_string())
        });
        activity
            .received
            .store(received_bytes(&plan, &bytes), Ordering::Relaxed);
        // An older upload's condition was written before its plan: a
        // replacing upload is never reloaded as a plain one.
        let replace = match file.replace {
            Some(r) => Some(r),
            None => match fs::read(dir.join(REPLACE)) {
                Ok(bytes) => Some(serde_json::from_slice(&bytes)?),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(e),
            },
        };
        let mut up = Self::assemble(dir, plan, data, receipts, Some(&bytes), id, activity);
        up.replace = replace;
        Ok(up)
    }

    fn assemble(
        dir: PathBuf,
        plan: PlanRecord,
        data: File,
        receipts: Option<File>,
        bytes: Option<&[u8]>,
        id: String,
        activity: Arc<Activity>,
    ) -> Upload {
        let total = plan.total();
        let mut received = vec![0u64; total.div_ceil(64) as usize];
        let mut remaining = total;
        if let Some(bytes) = bytes {
            for (i, b) in bytes.iter().enumerate() {
                if *b != 0 {
                    received[i / 64] |= 1 << (i % 64);
                    remaining -= 1;
                }
            }
        }
        Upload {
            dir,
            plan,
            data,
            receipts,
            received,
            remaining,
            hasher: PrefixHasher::for_plan(&plan),
            hashed: 0,
            rehash: false,
            unflushed: 0,
            flushing: Arc::new(AtomicBool::new(false)),
            phase: Phase::Receiving,
            id,
            activity,
            replace: None,
        }
    }

    pub fn is_received(&self, i: u64) -> bool {
        bit(&self.received, i)
    }

    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Indexes of blocks not yet received.
    pub fn missing(&self) -> impl Iterator<Item = u64> + '_ {
        (0..self.plan.total()).filter(|i| !self.is_received(*i))
    }

    /// Whether block `index` of `len` bytes is one of this plan's blocks
    /// (the service checked it; this guards the data file).
    pub fn fits(&self, index: u64, len: u64) -> bool {
        block_len(self.plan.size, self.plan.block_size, index) == Some(len)
    }

    /// Write one checked block. Returns true when it was the last one missing.
    #[cfg(test)]
    pub fn write_block(&mut self, index: u64, data: &[u8]) -> io::Result<bool> {
        self.write(index, data, None)
    }

    /// [`Upload::write_block`] for a block held as `Bytes` (the received
    /// frame): queued for hashing without a copy.
    pub fn write_block_shared(&mut self, index: u64, data: &Bytes) -> io::Result<bool> {
        self.write(index, data, Some(data))
    }

    fn write(&mut self, index: u64, data: &[u8], shared: Option<&Bytes>) -> io::Result<bool> {
        self.data.write_all_at(data, index * self.plan.block_size)?;
        self.unflushed += data.len() as u64;
        if self.unflushed >= FLUSH_EVERY {
            self.start_background_flush();
        }
        if index < self.hashed {
            self.rehash = true;
        }
        if !self.is_received(index) {
            if let Some(receipts) = &self.receipts {
                receipts.write_all_at(&[1], index)?;
            }
            self.received[(index / 64) as usize] |= 1 << (index % 64);
            self.remaining -= 1;
            self.activity
                .received
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        if index == self.hashed && !self.rehash {
            self.hasher.update(data, shared)?;
            self.hashed += 1;
            self.advance_hash()?;
        }
        Ok(self.remaining == 0)
    }

    /// Extend the hashed prefix over blocks that arrived early.
    fn advance_hash(&mut self) -> io::Result<()> {
        while self.hashed < self.plan.total() && self.is_received(self.hashed) {
            let len = block_len(self.plan.size, self.plan.block_size, self.hashed).unwrap_or(0);
            let mut buf = vec![0; len as usize];
            self.data
                .read_exact_at(&mut buf, self.hashed * self.plan.block_size)?;
            let buf = Bytes::from(buf);
            self.hasher.update(&buf, Some(&buf))?;
            self.hashed += 1;
        }
        Ok(())
    }

    /// The md5 and chunk CRCs of the whole file: from the prefix hash where
    /// it covers everything, otherwise (after a restart or a rewritten block)
    /// by reading the data back.
    pub fn finish_digests(&mut self) -> io::Result<(String, Vec<u32>)> {
        if self.rehash {
            self.hasher = PrefixHasher::Inline(Digests::default());
            self.hashed = 0;
            self.rehash = false;
        }
        self.advance_hash()?;
        // Whatever happens next (publishing can fail), the digests taken are
        // gone: a completion tried again reads the data back.
        self.rehash = true;
        std::mem::replace(&mut self.hasher, PrefixHasher::Inline(Digests::default())).finish()
    }

    /// Start writing dirty pages out while the upload goes on, so the fsync
    /// at completion has little left to do: with gigabytes of RAM the kernel
    /// would otherwise hold the whole file dirty until that fsync. At most one
    /// flush per upload runs at a time; the upload never waits for it.
    fn start_background_flush(&mut self) {
        if self.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            self.flushing.store(false, Ordering::Release);
            return;
        };
        let Ok(file) = self.data.try_clone() else {
            self.flushing.store(false, Ordering::Release);
            return;
        };
        self.unflushed = 0;
        let flushing = Arc::clone(&self.flushing);
        handle.spawn_blocking(move || {
            // Failure here is not fatal: completion fsyncs and reports errors.
            let _ = file.sync_data();
            flushing.store(false, Ordering::Release);
        });
    }

    /// Make the data durable before anything calls it complete.
    pub fn sync_data(&self) -> io::Result<()> {
        self.data.sync_data()
    }

    pub fn data_path(&self) -> PathBuf {
        self.dir.join(DATA)
    }
}

/// Remove an upload directory, tolerating its absence.
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn content(size: usize) -> Vec<u8> {
        (0..size).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn md5(b: &[u8]) -> String {
        hex::encode(Md5::digest(b))
    }

    impl Upload {
        /// The md5, after checking the CRCs that came with it.
        fn finish_md5(&mut self) -> String {
            let (md5, sums) = self.finish_digests().expect("digests");
            let mut data = vec![0; self.plan.size as usize];
            self.data.read_exact_at(&mut data, 0).expect("read back");
            let want: Vec<u32> = data
                .chunks(crate::store::sums::CHUNK as usize)
                .map(crc32c::crc32c)
                .collect();
            assert_eq!(sums, want, "chunk CRCs of the whole file");
            md5
        }
    }

    #[test]
    fn in_order_out_of_order_and_rewrites_all_give_the_right_md5() {
        let tmp = tempfile::tempdir().expect("tmp");
        let body = content(10 * 100 + 37);
        let plan = PlanRecord {
            size: body.len() as u64,
            block_size: 100,
        };
        let orders: [Vec<u64>; 4] = [
            (0..11).collect(),
            (0..11).rev().collect(),
            vec![3, 0, 1, 2, 7, 4, 5, 6, 10, 8, 9],
            vec![0, 1, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9, 10],
        ];
        for (n, order) in orders.iter().enumerate() {
            let mut up = Upload::create(
                tmp.path().join(format!("u{n}")),
                plan,
                None,
                Activity::new(0, SystemTime::now()),
            )
            .expect("create");
            let mut done = false;
            for &i in order {
                assert!(!done, "completed early");
                let start = (i * 100) as usize;
                let end = (start + 100).min(body.len());
                assert!(up.fits(i, (end - start) as u64));
                done = up.write_block(i, &body[start..end]).expect("write");
            }
            assert!(done);
            assert_eq!(up.finish_md5(), md5(&body), "order {order:?}");
        }
    }

    #[test]
    fn hashing_on_a_thread_gives_the_same_md5_in_any_order() {
        let tmp = tempfile::tempdir().expect("tmp");
        let body = content(10 * 100 + 37);
        let plan = PlanRecord {
            size: body.len() as u64,
            block_size: 100,
        };
        let orders: [Vec<u64>; 3] = [
            (0..11).collect(),
            vec![3, 0, 1, 2, 7, 4, 5, 6, 10, 8, 9],
            vec![0, 1, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9, 10],
        ];
        for (n, order) in orders.iter().enumerate() {
            let mut up = Upload::create(
                tmp.path().join(format!("t{n}")),
                plan,
                None,
                Activity::new(0, SystemTime::now()),
            )
            .expect("create");
            up.hasher = PrefixHasher::threaded(2);
            assert!(matches!(up.hasher, PrefixHasher::Thread { .. }));
            for &i in order {
                let start = (i * 100) as usize;
                let end = (start + 100).min(body.len());
                let block = Bytes::copy_from_slice(&body[start..end]);
                up.write_block_shared(i, &block).expect("write");
            }
            assert_eq!(up.remaining(), 0);
            assert_eq!(up.finish_md5(), md5(&body), "order {order:?}");
        }
    }

    #[test]
    fn a_one_block_upload_is_two_files_and_reloads() {
        let tmp = tempfile::tempdir().expect("tmp");
        let plan = PlanRecord {
            size: 10,
            block_size: 100,
        };
        let dir = tmp.path().join("one");
        let replace = Replace {
            if_md5: Some("abc".into()),
        };
        let id = Upload::create(
            dir.clone(),
            plan,
            Some(replace.clone()),
            Activity::new(0, SystemTime::now()),
        )
        .expect("create")
        .id;
        let mut names: Vec<_> = fs::read_dir(&dir)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().into_string().expect("name"))
            .collect();
        names.sort();
        assert_eq!(names, [DATA, PLAN], "no receipts, id or condition files");
        let scanned = scan(&dir).expect("scan");
        assert_eq!((scanned.plan, scanned.received), (plan, 0));
        let mut up = Upload::load(dir, Activity::new(0, SystemTime::UNIX_EPOCH)).expect("load");
        assert_eq!(
            (up.id.as_str(), up.replace.as_ref()),
            (id.as_str(), Some(&replace))
        );
        assert_eq!(up.missing().collect::<Vec<_>>(), vec![0]);
        assert!(up.write_block(0, &content(10)).expect("write"));
        assert_eq!(up.finish_md5(), md5(&content(10)));
    }

    #[test]
    fn an_upload_written_by_an_older_version_reloads_with_its_id_and_condition() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("old");
        fs::create_dir_all(&dir).expect("dir");
        let body = content(250);
        let mut data = vec![0u8; 250];
        data[..100].copy_from_slice(&body[..100]);
        fs::write(dir.join(DATA), &data).expect("data");
        fs::write(dir.join(RECEIPTS), [1u8, 0, 0]).expect("receipts");
        fs::write(dir.join(ID), "0123abcd").expect("id");
        fs::write(dir.join(REPLACE), br#"{"if_md5":"ff"}"#).expect("replace");
        fs::write(dir.join(PLAN), br#"{"size":250,"block_size":100}"#).expect("plan");
        let mut up = Upload::load(dir, Activity::new(0, SystemTime::UNIX_EPOCH)).expect("load");
        assert_eq!(up.plan.size, 250);
        assert_eq!(up.id, "0123abcd");
        assert_eq!(
            up.replace.as_ref().and_then(|r| r.if_md5.as_deref()),
            Some("ff")
        );
        assert_eq!(up.missing().collect::<Vec<_>>(), vec![1, 2]);
        up.write_block(1, &body[100..200]).expect("w");
        assert!(up.write_block(2, &body[200..]).expect("w"));
        assert_eq!(up.finish_md5(), md5(&body));
    }

    #[test]
    fn reload_keeps_receipts_and_hashes_from_disk() {
        let tmp = tempfile::tempdir().expect("tmp");
        let body = content(450);
        let plan = PlanRecord {
            size: 450,
            block_size: 100,
        };
        let dir = tmp.path().join("u");
        {
            let mut up =
                Upload::create(dir.clone(), plan, None, Activity::new(0, SystemTime::now()))
                    .expect("create");
            up.write_block(0, &body[..100]).expect("w");
            up.write_block(2, &body[200..300]).expect("w");
        }
        let activity = Activity::new(0, SystemTime::UNIX_EPOCH);
        let mut up = Upload::load(dir, Arc::clone(&activity)).expect("load");
        assert_eq!(activity.received.load(Ordering::Relaxed), 200);
        assert_eq!(up.missing().collect::<Vec<_>>(), vec![1, 3, 4]);
        for i in [1u64, 3, 4] {
            let s = (i * 100) as usize;
            let e = (s + 100).min(450);
            up.write_block(i, &body[s..e]).expect("w");
        }
        assert_eq!(up.remaining(), 0);
        assert_eq!(activity.received.load(Ordering::Relaxed), 450);
        assert_eq!(up.finish_md5(), md5(&body));
    }
}
