//! Downloading a file, resumably. Blocks go into a partial file beside the
//! target (`.NAME.part`), and each block's index is appended to a state file
//! (`.NAME.part.state`) once its bytes are written; the state's first line
//! names the remote version (key, size, md5, block size). Run again after an
//! interruption (a cut connection, a server restart, Ctrl-C), the same
//! command fetches only the blocks the state lacks; a remote file that
//! changed meanwhile (other md5 or size) starts over from zero. The partial
//! file takes the target's name only once the md5 of the whole file matches
//! the plan, so a wrong file is never left behind: when a resumed partial
//! fails that check (its bytes were damaged while it waited), it is thrown
//! away and the file downloaded again from zero, once; a fresh download that
//! fails it is an error and leaves nothing.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use md5::{Digest, Md5};
use serde_json::{Value, json};
use step_core::client::DownloadPlan;
use step_core::digest::finish_hex;
use step_core::plan::block_len;
use step_core::transfer::download_spread_indexes;
use step_core::{ClientError, StepClient};

use crate::args::{ConnArgs, TuneArgs};
use crate::error::{CliError, Subject};
use crate::progress::{Mode, Progress, summary};
use crate::say;
use crate::session::{Session, Tuning, bounded, watched};

pub async fn run(
    conn: &ConnArgs,
    tune: &TuneArgs,
    key: &str,
    output: Option<PathBuf>,
    force: bool,
) -> Result<(), CliError> {
    let mode = Mode::pick(conn.quiet);
    let target = target_path(key, output)?;
    if !force && target.exists() {
        return Err(CliError::TargetExists { path: target });
    }
    let mut session = Session::open(conn).await?;
    let caps = session.caps;
    let tuning = Tuning::new(caps, tune);
    let (addr, timeout) = (session.addr.clone(), session.timeout);
    let mut part = PartFile::open(&target)?;
    // Ask for the block size the partial was made with, so its blocks count
    // as they are (the server may still answer with another one).
    let ask = match (tuning.block_size, part.previous_block_size()) {
        (Some(_), Some(previous)) => Some(previous),
        (wanted, _) => wanted,
    };
    let plan = bounded(
        &addr,
        timeout,
        Subject::File(key),
        session.client.file_get(key, ask),
    )
    .await?;
    match part.adopt(&plan)? {
        Adopted::Fresh => {}
        Adopted::Changed => say(format_args!(
            "{key} changed on the server since the interrupted download: starting over"
        )),
        Adopted::Resumed { have } => say(format_args!(
            "Resuming {key}: {have} of {} blocks already downloaded",
            plan.total_block
        )),
    }
    let missing = part.missing();
    let missing_bytes: u64 = missing
        .iter()
        .map(|&i| block_len(plan.size, plan.block_size, i).unwrap_or(0))
        .sum();
    let connections = Tuning::connections(caps, tune, missing_bytes, plan.block_size);
    let extra = session.extra_connections(connections - 1).await;
    let mut clients = vec![session.client];
    clients.extend(extra);

    let started = Instant::now();
    let mut fetched = 0u64;
    let mut restarted = false;
    loop {
        let missing = part.missing();
        fetched += missing.len() as u64;
        let fetch = fetch(
            &mut clients,
            &mut part,
            &plan,
            &missing,
            (mode, key, &addr, timeout, tuning.window),
        )
        .await;
        if let Err(e) = fetch {
            if matches!(e, Fetch::Interrupted(_)) && part.has_blocks() {
                part.keep();
                if mode != Mode::Quiet {
                    say(format_args!(
                        "Download interrupted; {} keeps what arrived: run the same command again to resume",
                        part.path.display()
                    ));
                }
            }
            return Err(e.into_inner());
        }
        let local = part.finish(&target)?;
        if local.eq_ignore_ascii_case(&plan.md5) {
            break;
        }
        if part.resumed && !restarted {
            say(format_args!(
                "The partial download of {key} was damaged (md5 {local}, expected {}): downloading it again from zero",
                plan.md5
            ));
            restarted = true;
            part.reset(&plan)?;
            continue;
        }
        return Err(CliError::Md5Mismatch {
            what: key.to_owned(),
            local,
            server: plan.md5,
            hint: "; nothing was saved",
        });
    }
    part.persist(&target)?;
    if mode != Mode::Quiet {
        let resumed = if part.resumed {
            format!(" (fetched {fetched} of {} blocks)", plan.total_block)
        } else {
            String::new()
        };
        say(format_args!(
            "Downloaded {key} to {}: {}{resumed}",
            target.display(),
            summary(plan.size, started)
        ));
    }
    say(format_args!("MD5: {}", plan.md5));
    Ok(())
}

/// Why fetching the missing blocks stopped.
#[derive(Debug)]
enum Fetch {
    /// The connection broke or went silent: what arrived is worth keeping.
    Interrupted(CliError),
    /// Anything else (a refusal, a local write error).
    Failed(CliError),
}

impl Fetch {
    fn into_inner(self) -> CliError {
        match self {
            Fetch::Interrupted(e) | Fetch::Failed(e) => e,
        }
    }
}

/// Download `missing` into `part`.
async fn fetch(
    clients: &mut [StepClient],
    part: &mut PartFile,
    plan: &DownloadPlan,
    missing: &[u64],
    (mode, key, addr, timeout, window): (Mode, &str, &str, std::time::Duration, usize),
) -> Result<(), Fetch> {
    let label = format!("Downloading {key}");
    let progress = Progress::new(mode, &label, plan.size, part.have_bytes(plan));
    let sink = Mutex::new(&mut *part);
    // Written in place on the runtime thread: a block into the page cache
    // costs less than the round trip that brought it, and the transfer's
    // windows already bound how much waits.
    let on_block = |index: u64, data: Bytes| -> Result<(), ClientError> {
        let mut part = sink.lock().unwrap_or_else(|p| p.into_inner());
        part.write_block(index, plan.block_size, &data)
            .map_err(ClientError::Sink)?;
        progress.inc(data.len() as u64);
        Ok(())
    };
    let mut refs: Vec<&mut StepClient> = clients.iter_mut().collect();
    let outcome = watched(
        addr,
        timeout,
        || progress.done(),
        download_spread_indexes(&mut refs, plan, missing, window, &on_block),
    )
    .await;
    let target = sink
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .target
        .clone();
    match outcome {
        Ok(Ok(())) => {
            progress.finish();
            Ok(())
        }
        Ok(Err(ClientError::Sink(e))) => {
            progress.abandon();
            Err(Fetch::Failed(CliError::write(target, &e)))
        }
        Ok(Err(e)) => {
            progress.abandon();
            let interrupted = e.is_interruption();
            let e = CliError::from_client(e, addr, Subject::File(key));
            Err(if interrupted {
                Fetch::Interrupted(e)
            } else {
                Fetch::Failed(e)
            })
        }
        Err(e) => {
            progress.abandon();
            Err(Fetch::Interrupted(e))
        }
    }
}

/// What [`PartFile::adopt`] found beside the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Adopted {
    /// Nothing to resume.
    Fresh,
    /// A partial of another version of the file: thrown away.
    Changed,
    /// A partial of this version, `have` blocks of it already here.
    Resumed { have: u64 },
}

/// Where a download goes: `-o PATH` (into it when it is a directory), else
/// the key's last path component in the current directory. Only the last
/// component of a key is used, so a key such as `../x` cannot climb out.
pub fn target_path(key: &str, output: Option<PathBuf>) -> Result<PathBuf, CliError> {
    let name = || {
        Path::new(key)
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| CliError::Usage(format!("key {key:?} is not a file name; pass -o PATH")))
    };
    match output {
        Some(dir) if dir.is_dir() => Ok(dir.join(name()?)),
        Some(path) => Ok(path),
        None => name(),
    }
}

/// The partial file a download is written into and its state file; both
/// removed unless kept for a later run or persisted.
#[derive(Debug)]
struct PartFile {
    target: PathBuf,
    path: PathBuf,
    state_path: PathBuf,
    file: File,
    /// Locked while this run owns the partial: two runs of one download
    /// would write over each other.
    state: File,
    /// The remote version the partial belongs to (the state's first line).
    header: Option<Value>,
    /// Blocks the state lists as written, by index (of `header`'s block size).
    done: Vec<bool>,
    /// This run started from blocks an earlier run left.
    resumed: bool,
    kept: bool,
    persisted: bool,
}

impl PartFile {
    /// Open (or create) the partial and state files beside `target` and read
    /// what an earlier run left.
    fn open(target: &Path) -> Result<PartFile, CliError> {
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
            header,
            done,
            resumed: false,
            // What an earlier run left stays until this run has seen the
            // plan (a failed FILE GET decides nothing about it).
            kept: existed,
            persisted: false,
        })
    }

    fn previous_block_size(&self) -> Option<u64> {
        self.header.as_ref()?.get("block_size")?.as_u64()
    }

    /// Take over what an earlier run left if it is of `plan`'s version,
    /// with its blocks counted in `plan`'s block size; else start over.
    fn adopt(&mut self, plan: &DownloadPlan) -> Result<Adopted, CliError> {
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
        let old = std::mem::take(&mut self.done);
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
        self.done = done;
        self.resumed = have > 0;
        Ok(Adopted::Resumed { have })
    }

    /// Start over for `plan`: empty partial, state with only its header.
    fn reset(&mut self, plan: &DownloadPlan) -> Result<(), CliError> {
        let fail = |e: std::io::Error| CliError::write(self.target.clone(), &e);
        self.file.set_len(0).map_err(fail)?;
        self.file.set_len(plan.size).map_err(fail)?;
        self.header = Some(header_of(plan));
        let done = vec![false; usize::try_from(plan.total_block).unwrap_or(0)];
        self.write_state(&done)?;
        self.done = done;
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

    fn missing(&self) -> Vec<u64> {
        (0u64..)
            .zip(&self.done)
            .filter(|(_, d)| !**d)
            .map(|(i, _)| i)
            .collect()
    }

    fn has_blocks(&self) -> bool {
        self.done.iter().any(|d| *d)
    }

    fn have_bytes(&self, plan: &DownloadPlan) -> u64 {
        (0u64..)
            .zip(&self.done)
            .filter(|(_, d)| **d)
            .map(|(i, _)| block_len(plan.size, plan.block_size, i).unwrap_or(0))
            .sum()
    }

    /// Write block `index` and only then record it in the state (appended
    /// in one write, so a torn record is at most an unfinished last line,
    /// which is ignored).
    fn write_block(&mut self, index: u64, block_size: u64, data: &[u8]) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(index * block_size))?;
        self.file.write_all(data)?;
        self.state.seek(SeekFrom::End(0))?;
        self.state.write_all(format!("{index}\n").as_bytes())?;
        if let Some(d) = usize::try_from(index)
            .ok()
            .and_then(|i| self.done.get_mut(i))
        {
            *d = true;
        }
        Ok(())
    }

    /// Keep the partial and its state for the next run.
    fn keep(&mut self) {
        self.kept = true;
    }

    /// Flush to disk and hash the whole partial file.
    fn finish(&mut self, target: &Path) -> Result<String, CliError> {
        let fail = |e: std::io::Error| CliError::write(target.to_path_buf(), &e);
        self.file.sync_all().map_err(fail)?;
        self.file.seek(SeekFrom::Start(0)).map_err(fail)?;
        let mut hasher = Md5::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = self.file.read(&mut buf).map_err(fail)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(finish_hex(hasher))
    }

    fn persist(&mut self, target: &Path) -> Result<(), CliError> {
        std::fs::rename(&self.path, target)
            .map_err(|e| CliError::write(target.to_path_buf(), &e))?;
        self.persisted = true;
        let _ = std::fs::remove_file(&self.state_path);
        Ok(())
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

    #[test]
    fn targets() {
        assert_eq!(
            target_path("a.bin", None).ok(),
            Some(PathBuf::from("a.bin"))
        );
        assert_eq!(
            target_path("../../etc/x", None).ok(),
            Some(PathBuf::from("x"))
        );
        assert!(target_path("..", None).is_err());
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(
            target_path("k", Some(dir.path().into())).ok(),
            Some(dir.path().join("k"))
        );
        assert_eq!(
            target_path("k", Some("out.bin".into())).ok(),
            Some(PathBuf::from("out.bin"))
        );
    }

    #[test]
    fn part_file_is_removed_unless_persisted_or_kept() {
        let dir = tempfile::tempdir().expect("dir");
        let target = dir.path().join("t.bin");
        let plan = DownloadPlan {
            key: "t.bin".into(),
            size: 3,
            total_block: 1,
            block_size: 20480,
            md5: step_core::digest::md5_hex(b"abc"),
            upload_id: None,
            last_modified: None,
        };
        let mut part = PartFile::open(&target).expect("open");
        assert_eq!(part.adopt(&plan).expect("adopt"), Adopted::Fresh);
        part.write_block(0, plan.block_size, b"abc").expect("write");
        assert_eq!(
            part.finish(&target).ok().as_deref(),
            Some(plan.md5.as_str())
        );
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
        part.persist(&target).expect("persist");
        drop(part);
        assert!(target.exists() && !state_path.exists());
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
