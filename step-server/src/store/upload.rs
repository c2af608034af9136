//! One unfinished upload: a sparse data file, a one-byte-per-block receipt
//! file and a small plan file, all under `uploads/<user>/<key>/`.
//!
//! Per block the work is O(1): one positioned write of the data, one of the
//! receipt byte, one bit in memory. The md5 of the contiguous prefix grows as
//! blocks arrive in order, so an in-order upload is never read back; blocks
//! that arrived early are read back once, when the prefix reaches them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use step_core::plan::{block_len, total_blocks};

use crate::error::StepError;

pub const DATA: &str = "data";
pub const RECEIPTS: &str = "blocks";
pub const PLAN: &str = "plan.json";

/// What SAVE decided, persisted so an upload survives a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub size: u64,
    pub block_size: u64,
}

impl PlanRecord {
    pub fn total(&self) -> u64 {
        total_blocks(self.size, self.block_size)
    }
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
    receipts: File,
    received: Vec<u64>,
    remaining: u64,
    hasher: Md5,
    hashed: u64,
    /// A block inside the hashed prefix was written again: hash from disk.
    rehash: bool,
    pub phase: Phase,
}

fn bit(bits: &[u64], i: u64) -> bool {
    bits[(i / 64) as usize] & (1 << (i % 64)) != 0
}

impl Upload {
    /// Start a fresh upload in `dir` (which must not exist yet).
    pub fn create(dir: PathBuf, plan: PlanRecord) -> io::Result<Upload> {
        fs::create_dir_all(&dir)?;
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(DATA))?;
        data.set_len(plan.size)?;
        let receipts = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(RECEIPTS))?;
        receipts.set_len(plan.total())?;
        // The plan file is written last and atomically: its presence marks
        // the directory as a usable upload.
        let tmp = dir.join("plan.tmp");
        fs::write(&tmp, serde_json::to_vec(&plan)?)?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, dir.join(PLAN))?;
        Ok(Self::assemble(dir, plan, data, receipts, None))
    }

    /// Reload an upload left on disk by an earlier run.
    pub fn load(dir: PathBuf) -> io::Result<Upload> {
        let plan: PlanRecord = serde_json::from_slice(&fs::read(dir.join(PLAN))?)?;
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(DATA))?;
        let receipts = OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join(RECEIPTS))?;
        if data.metadata()?.len() != plan.size || receipts.metadata()?.len() != plan.total() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "upload files do not match the plan",
            ));
        }
        let bytes = fs::read(dir.join(RECEIPTS))?;
        Ok(Self::assemble(dir, plan, data, receipts, Some(&bytes)))
    }

    fn assemble(
        dir: PathBuf,
        plan: PlanRecord,
        data: File,
        receipts: File,
        bytes: Option<&[u8]>,
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
            hasher: Md5::new(),
            hashed: 0,
            rehash: false,
            phase: Phase::Receiving,
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

    /// Check `index` and `len` against the plan (reference order: 405, 410, 406).
    pub fn check_block(&self, index: i64, len: u64) -> Result<u64, StepError> {
        let total = self.plan.total();
        if index >= 0 && index as u64 >= total {
            return Err(StepError::IndexTooLarge);
        }
        if index < 0 {
            return Err(StepError::IndexNegative);
        }
        let index = index as u64;
        let expected = block_len(self.plan.size, self.plan.block_size, index).unwrap_or(0);
        if len != expected {
            return Err(StepError::BlockSize { expected, got: len });
        }
        Ok(index)
    }

    /// Write one checked block. Returns true when it was the last one missing.
    pub fn write_block(&mut self, index: u64, data: &[u8]) -> io::Result<bool> {
        self.data.write_all_at(data, index * self.plan.block_size)?;
        if index < self.hashed {
            self.rehash = true;
        }
        if !self.is_received(index) {
            self.receipts.write_all_at(&[1], index)?;
            self.received[(index / 64) as usize] |= 1 << (index % 64);
            self.remaining -= 1;
        }
        if index == self.hashed && !self.rehash {
            self.hasher.update(data);
            self.hashed += 1;
            self.advance_hash()?;
        }
        Ok(self.remaining == 0)
    }

    /// Extend the hashed prefix over blocks that arrived early.
    fn advance_hash(&mut self) -> io::Result<()> {
        let mut buf = Vec::new();
        while self.hashed < self.plan.total() && self.is_received(self.hashed) {
            let len = block_len(self.plan.size, self.plan.block_size, self.hashed).unwrap_or(0);
            buf.resize(len as usize, 0);
            self.data
                .read_exact_at(&mut buf, self.hashed * self.plan.block_size)?;
            self.hasher.update(&buf);
            self.hashed += 1;
        }
        Ok(())
    }

    /// The md5 of the whole file: from the prefix hash where it covers
    /// everything, otherwise (after a restart or a rewritten block) by reading
    /// the data back.
    pub fn finish_md5(&mut self) -> io::Result<String> {
        if self.rehash {
            self.hasher = Md5::new();
            self.hashed = 0;
            self.rehash = false;
        }
        self.advance_hash()?;
        let hasher = std::mem::take(&mut self.hasher);
        Ok(hex::encode(hasher.finalize()))
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
            let mut up = Upload::create(tmp.path().join(format!("u{n}")), plan).expect("create");
            let mut done = false;
            for &i in order {
                assert!(!done, "completed early");
                let start = (i * 100) as usize;
                let end = (start + 100).min(body.len());
                let idx = up
                    .check_block(i as i64, (end - start) as u64)
                    .expect("check");
                done = up.write_block(idx, &body[start..end]).expect("write");
            }
            assert!(done);
            assert_eq!(up.finish_md5().expect("md5"), md5(&body), "order {order:?}");
        }
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
            let mut up = Upload::create(dir.clone(), plan).expect("create");
            up.write_block(0, &body[..100]).expect("w");
            up.write_block(2, &body[200..300]).expect("w");
        }
        let mut up = Upload::load(dir).expect("load");
        assert_eq!(up.missing().collect::<Vec<_>>(), vec![1, 3, 4]);
        for i in [1u64, 3, 4] {
            let s = (i * 100) as usize;
            let e = (s + 100).min(450);
            up.write_block(i, &body[s..e]).expect("w");
        }
        assert_eq!(up.remaining(), 0);
        assert_eq!(up.finish_md5().expect("md5"), md5(&body));
    }

    #[test]
    fn checks_follow_reference_order() {
        let tmp = tempfile::tempdir().expect("tmp");
        let up = Upload::create(
            tmp.path().join("u"),
            PlanRecord {
                size: 250,
                block_size: 100,
            },
        )
        .expect("c");
        assert!(matches!(
            up.check_block(3, 100),
            Err(StepError::IndexTooLarge)
        ));
        assert!(matches!(
            up.check_block(-1, 100),
            Err(StepError::IndexNegative)
        ));
        assert!(matches!(
            up.check_block(0, 99),
            Err(StepError::BlockSize { .. })
        ));
        assert!(matches!(
            up.check_block(2, 100),
            Err(StepError::BlockSize { .. })
        ));
        assert_eq!(up.check_block(2, 50).expect("ok"), 2);
    }
}
