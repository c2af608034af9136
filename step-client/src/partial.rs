//! A download's partial file and its state, kept beside the target.
//!
//! Blocks go into `.NAME.part` at their offsets, and each block's index is
//! appended to `.NAME.part.state` once its bytes are written; the state's
//! first line names the remote version (key, size, md5, block size). A run
//! that stops keeps both, and the next run of the same command fetches only
//! the blocks the state lacks. Blocks are written with positional writes and
//! recorded with appends, so the connections of a download never wait on a
//! lock for each other. The partial takes the target's name only after the
//! whole file's md5 matched and its bytes reached the disk.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use step_core::client::DownloadPlan;
use step_core::plan::block_len;

use crate::error::CliError;

/// Dirty bytes after which writing them out starts in the background, so
/// the sync before the rename has little left to do (with gigabytes of RAM
/// the kernel would otherwise hold the whole file until then).
const FLUSH_EVERY: u64 = 64 << 20;

/// What [`PartFile::adopt`] found beside the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adopted {
    /// Nothing to resume.
    Fresh,
    /// A partial of another version of the file: thrown away.
    Changed,
    /// A partial of this version, `have` blocks of it already here.
    Resumed { have: u64 },
}

/// The partial file a download is written into and its state file; both
/// removed unless kept for a later run or persisted.
#[derive(Debug)]
pub struct PartFile {
    target: PathBuf,
    pub path: PathBuf,
    state_path: PathBuf,
    file: File,
    /// Locked while this run owns the partial: two runs of one download
    /// would write over each other.
    state: File,
    /// The state again, opened to append: one block's record per write.
    records: File,
    /// The remote version the partial belongs to (the state's first line).
    header: Option<Value>,
    /// Blocks the state lists as written, by index (of `header`'s block size).
    done: Vec<AtomicBool>,
    /// Bytes written since the last background flush began.
    unflushed: AtomicU64,
    flushing: Arc<AtomicBool>,
    /// This run started from blocks an earlier run left.
    pub resumed: bool,
    kept: bool,
    persisted: bool,
}

impl PartFile {
    /// Open (or create) the partial and state files beside `target` and read
    /// what an earlier run left.
    pub fn open(target: &Path) -> Result<PartFile, CliError> {
        let fail = |e: std::io::Error| CliError::write(target.to_path_buf(), &e);
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join(format!(".{name}.part"));
        let state_path = dir.join(format!(".{name}.part.state"));
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(p)
        };
        let existed = state_path.exists();
        let mut state = open(&state_path).map_err(fail)?;
        match state.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(CliError::Usage(format!(
                    "another download to {} is running",
                    target.display()
                )));
            }
            Err(TryLockError::Error(e)) => return Err(fail(e)),
        }
        let records = OpenOptions::new()
            .append(true)
            .open(&state_path)
            .map_err(fail)?;
        let file = open(&path).map_err(fail)?;
        let mut text = Vec::new();
        state.read_to_end(&mut text).map_err(fail)?;
        let (header, done) = parse_state(&text);
        Ok(PartFile {
            target: target.to_path_buf(),
            path,
            state_path,
            file,
            state,
            records,
            header,
            done: done.into_iter().map(AtomicBool::new).collect(),
            unflushed: AtomicU64::new(0),
            flushing: Arc::new(AtomicBool::new(false)),
            resumed: false,
            // What an earlier run left stays until this run has seen the
            // plan (a failed FILE GET decides nothing about it).
            kept: existed,
            persisted: false,
        })
    }

    pub fn previous_block_size(&self) -> Option<u64> {
        self.header.as_ref()?.get("block_size")?.as_u64()
    }

    /// Take over what an earlier run left if it is of `plan`'s version,
    /// with its blocks counted in `plan`'s block size; else start over.
    pub fn adopt(&mut self, plan: &DownloadPlan) -> Result<Adopted, CliError> {
        self.kept = false;
        let Some(header) = self.header.take() else {
            self.reset(plan)?;
            return Ok(Adopted::Fresh);
        };
        let same = header.get("key").and_then(Value::as_str) == Some(plan.key.as_str())
            && header.get("size").and_then(Value::as_u64) == Some(plan.size)
            && header
                .get("md5")
                .and_then(Value::as_str)
                .is_some_and(|m| m.eq_ignore_ascii_case(&plan.md5));
        let old_bs = header
            .get("block_size")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if !same || old_bs == 0 {
            self.reset(plan)?;
            return Ok(Adopted::Changed);
        }
        let old = self.done_flags();
        // A block of the plan is here when every old block it overlaps is.
        let done: Vec<bool> = (0..plan.total_block)
            .map(|i| {
                let len = block_len(plan.size, plan.block_size, i).unwrap_or(0);
                let (start, end) = (i * plan.block_size, i * plan.block_size + len);
                let (first, last) = (start / old_bs, end.saturating_sub(1) / old_bs);
                len > 0
                    && (first..=last).all(|j| {
                        usize::try_from(j)
                            .ok()
                            .and_then(|j| old.get(j))
                            .copied()
                            .unwrap_or(false)
                    })
            })
            .collect();
        let have = done.iter().filter(|d| **d).count() as u64;
        self.header = Some(header_of(plan));
        if old_bs != plan.block_size {
            // Rewrite the state in the new block size.
            self.write_state(&done)?;
        }
        self.done = done.into_iter().map(AtomicBool::new).collect();
        self.resumed = have > 0;
        Ok(Adopted::Resumed { have })
    }

    /// Start over for `plan`: empty partial, state with only its header.
    pub fn reset(&mut self, plan: &DownloadPlan) -> Result<(), CliError> {
        let fail = |e: std::io::Error| CliError::write(self.target.clone(), &e);
        self.file.set_len(0).map_err(fail)?;
        self.file.set_len(plan.size).map_err(fail)?;
        self.header = Some(header_of(plan));
        let done = vec![false; usize::try_from(plan.total_block).unwrap_or(0)];
        self.write_state(&done)?;
        self.done = done.into_iter().map(AtomicBool::new).collect();
        self.resumed = false;
        Ok(())
    }

    /// Replace the state file's contents: the header, then `done`'s blocks.
    fn write_state(&mut self, done: &[bool]) -> Result<(), CliError> {
        let fail = |e: std::io::Error| CliError::write(self.target.clone(), &e);
        let mut text = self
            .header
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default();
        text.push('\n');
        for (i, _) in done.iter().enumerate().filter(|(_, d)| **d) {
            text.push_str(&format!("{i}\n"));
        }
        self.state.set_len(0).map_err(fail)?;
        self.state.seek(SeekFrom::Start(0)).map_err(fail)?;
        self.state.write_all(text.as_bytes()).map_err(fail)
    }

    pub fn done_flags(&self) -> Vec<bool> {
        self.done
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .collect()
    }

    pub fn missing(&self) -> Vec<u64> {
        (0u64..)
            .zip(&self.done)
            .filter(|(_, d)| !d.load(Ordering::Relaxed))
            .map(|(i, _)| i)
            .collect()
    }

    pub fn blocks_here(&self) -> u64 {
        self.done
            .iter()
            .filter(|d| d.load(Ordering::Relaxed))
            .count() as u64
    }

    pub fn have_bytes(&self, plan: &DownloadPlan) -> u64 {
        (0u64..)
            .zip(&self.done)
            .filter(|(_, d)| d.load(Ordering::Relaxed))
            .map(|(i, _)| block_len(plan.size, plan.block_size, i).unwrap_or(0))
            .sum()
    }

    /// A second handle on the partial, for reading blocks back.
    pub fn reader(&self) -> Result<File, CliError> {
        self.file
            .try_clone()
            .map_err(|e| CliError::write(self.target.clone(), &e))
    }

    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Write block `index` and only then record it in the state (appended
    /// in one write, so a torn record is at most an unfinished last line,
    /// which is ignored).
    pub fn write_block(&self, index: u64, block_size: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.write_all_at(data, index * block_size)?;
        (&self.records).write_all(format!("{index}\n").as_bytes())?;
        if let Some(d) = usize::try_from(index).ok().and_then(|i| self.done.get(i)) {
            d.store(true, Ordering::Relaxed);
        }
        let len = data.len() as u64;
        if self.unflushed.fetch_add(len, Ordering::Relaxed) + len >= FLUSH_EVERY {
            self.flush_in_background();
        }
        Ok(())
    }

    /// Start writing the dirty pages out; at most one such flush at a time,
    /// and the download never waits for it (a failure shows at the sync
    /// before the rename).
    fn flush_in_background(&self) {
        if self.flushing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(file) = self.file.try_clone() else {
            self.flushing.store(false, Ordering::Release);
            return;
        };
        self.unflushed.store(0, Ordering::Relaxed);
        let flushing = Arc::clone(&self.flushing);
        let flush = move || {
            let _ = file.sync_data();
            flushing.store(false, Ordering::Release);
        };
        if std::thread::Builder::new()
            .name("step-client-flush".into())
            .spawn(flush)
            .is_err()
        {
            self.flushing.store(false, Ordering::Release);
        }
    }

    /// Keep the partial and its state for the next run.
    pub fn keep(&mut self) {
        self.kept = true;
    }

    /// Make the bytes durable, then give the partial the target's name:
    /// after a crash the target holds the whole file or does not exist.
    /// Returns how long the sync took.
    pub fn persist(&mut self) -> Result<Duration, CliError> {
        let fail = |e: std::io::Error| CliError::write(self.target.clone(), &e);
        let started = Instant::now();
        self.file.sync_data().map_err(fail)?;
        let synced = started.elapsed();
        std::fs::rename(&self.path, &self.target).map_err(fail)?;
        self.persisted = true;
        let _ = std::fs::remove_file(&self.state_path);
        Ok(synced)
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.kept && !self.persisted {
            let _ = std::fs::remove_file(&self.path);
            let _ = std::fs::remove_file(&self.state_path);
        }
    }
}

/// The state's first line: which remote version the partial holds.
fn header_of(plan: &DownloadPlan) -> Value {
    json!({
        "key": plan.key,
        "size": plan.size,
        "md5": plan.md5,
        "block_size": plan.block_size,
    })
}

/// The header and the written blocks of a state file. Lines that do not
/// parse (a torn last record) count for nothing; a header that does not
/// parse means there is nothing to resume.
fn parse_state(text: &[u8]) -> (Option<Value>, Vec<bool>) {
    let text = String::from_utf8_lossy(text);
    // Only complete lines: the last record may have been cut short.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => return (None, Vec::new()),
    };
    let mut lines = complete.split('\n');
    let header: Option<Value> = lines
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .filter(Value::is_object);
    let Some(header) = header else {
        return (None, Vec::new());
    };
    let total = match (
        header.get("size").and_then(Value::as_u64),
        header.get("block_size").and_then(Value::as_u64),
    ) {
        (Some(size), Some(bs)) => step_core::plan::total_blocks(size, bs),
        _ => return (None, Vec::new()),
    };
    let mut done = vec![false; usize::try_from(total).unwrap_or(0)];
    for i in lines.filter_map(|l| l.parse::<usize>().ok()) {
        if let Some(d) = done.get_mut(i) {
            *d = true;
        }
    }
    (Some(header), done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan_of(data: &[u8]) -> DownloadPlan {
        DownloadPlan {
            key: "t.bin".into(),
            size: data.len() as u64,
            total_block: 1,
            block_size: 20480,
            md5: step_core::digest::md5_hex(data),
            upload_id: None,
            last_modified: None,
        }
    }

    #[test]
    fn part_file_is_removed_unless_persisted_or_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let target = dir.path().join("t.bin");
        let plan = plan_of(b"abc");
        let mut part = PartFile::open(&target).expect("open");
        assert_eq!(part.adopt(&plan).expect("adopt"), Adopted::Fresh);
        part.write_block(0, plan.block_size, b"abc").expect("write");
        let (part_path, state_path) = (part.path.clone(), part.state_path.clone());
        drop(part);
        assert!(!part_path.exists() && !state_path.exists());

        let mut part = PartFile::open(&target).expect("open");
        part.adopt(&plan).expect("adopt");
        part.write_block(0, plan.block_size, b"abc").expect("write");
        part.keep();
        drop(part);
        assert!(part_path.exists() && state_path.exists());
        let mut part = PartFile::open(&target).expect("reopen");
        assert!(
            PartFile::open(&target).is_err(),
            "a second run on one target is refused"
        );
        assert_eq!(
            part.adopt(&plan).expect("adopt"),
            Adopted::Resumed { have: 1 }
        );
        assert!(part.missing().is_empty());
        part.persist().expect("persist");
        drop(part);
        assert!(target.exists() && !state_path.exists());
        assert_eq!(std::fs::read(&target).expect("target"), b"abc");
    }

    #[test]
    fn a_torn_last_record_counts_for_nothing() {
        let header = r#"{"key":"k","size":100,"md5":"x","block_size":10}"#;
        let (h, done) = parse_state(format!("{header}\n3\n7\n9").as_bytes());
        assert!(h.is_some());
        let have: Vec<usize> = (0..)
            .zip(&done)
            .filter(|(_, d)| **d)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(have, [3, 7]);
        assert_eq!(parse_state(header.as_bytes()).0, None);
        assert_eq!(parse_state(b"garbage\n1\n").0, None);
    }
}
