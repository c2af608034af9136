//! Uploading a file: plan it (resuming this machine's own unfinished upload
//! of it, see [`crate::records`]), stream the blocks the server lacks while
//! another thread hashes the file, then check the server's md5 against ours.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use step_core::client::{SaveOptions, UploadPlan};
use step_core::plan::{block_len, total_blocks};
use step_core::transfer::upload_spread;
use step_core::{ClientError, Problem, StepClient};
use tokio_util::sync::CancellationToken;

use crate::args::{ConnArgs, TuneArgs};
use crate::error::{CliError, Subject};
use crate::hashing::{InOrderMd5, Layout};
use crate::progress::{Mode, Progress, human_bytes, summary};
use crate::records::{LocalFile, Record, Records};
use crate::say;
use crate::session::{Pace, Session, Tuning};

/// Blocks read ahead of the network; the transfer keeps its own window of
/// blocks in flight on top, so memory stays a few dozen blocks.
const READ_AHEAD: usize = 4;

/// What the user asked to upload.
#[derive(Debug)]
pub struct Request<'a> {
    pub path: &'a Path,
    pub key: Option<String>,
    pub overwrite: bool,
}

/// The local file, opened and identified before anything goes on the wire.
#[derive(Debug)]
struct Source {
    path: PathBuf,
    file: File,
    local: LocalFile,
}

impl Source {
    fn open(path: &Path) -> Result<Source, CliError> {
        let unreadable = |e: std::io::Error| CliError::unreadable(path.into(), &e);
        let file = File::open(path).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(CliError::FileUnreadable {
                path: path.into(),
                reason: "not a regular file".into(),
            });
        }
        let local = LocalFile::of(path, &file, &meta).map_err(unreadable)?;
        Ok(Source {
            path: path.to_path_buf(),
            file,
            local,
        })
    }

    fn size(&self) -> u64 {
        self.local.size
    }
}

/// What planning found.
#[derive(Debug)]
enum Planned {
    Upload(UploadPlan),
    /// The key holds this very file already, completed by an earlier run of
    /// this command whose last answer never arrived.
    Done {
        md5: String,
    },
}

pub async fn run(
    conn: &ConnArgs,
    tune: &TuneArgs,
    req: Request<'_>,
    cancel: &CancellationToken,
) -> Result<(), CliError> {
    let mode = Mode::pick(conn.quiet);
    // Check the file before touching the network: a typo should not cost a login.
    let src = Source::open(req.path)?;
    let key = match req.key {
        Some(k) => k,
        None => default_key(req.path)?,
    };
    let mut session = Session::open(conn, cancel).await?;
    if src.size() == 0 && !session.caps.pipelining {
        // The reference server's handler dies on a 0-byte plan and never answers.
        return Err(CliError::Unsupported(
            "this server announces no extensions, and the reference server never answers an empty upload; nothing was sent".into(),
        ));
    }
    let records = Records::new(
        conn.state_dir.as_deref(),
        &session.addr,
        &session.user,
        &key,
    );
    let tuning = Tuning::new(session.caps, tune);
    let planned = plan(
        &mut session,
        &key,
        &src,
        tuning,
        req.overwrite,
        records.as_ref(),
    )
    .await?;
    let plan = match planned {
        Planned::Upload(p) => p,
        Planned::Done { md5 } => {
            if mode != Mode::Quiet {
                say(format_args!(
                    "{key} is already on the server: an earlier run of this command finished it"
                ));
            }
            say(format_args!("MD5: {md5}"));
            return Ok(());
        }
    };
    let upload = Upload {
        key: &key,
        mode,
        verbose: conn.verbose,
        replace: req.overwrite && session.caps.replace,
        records: records.as_ref(),
    };
    upload.send(session, tune, src, plan).await
}

/// SAVE: resume our own unfinished upload of this very file if the record
/// says there is one (and the server agrees it is still there), else start
/// over. A key that holds a complete file is refused unless --overwrite.
async fn plan(
    s: &mut Session,
    key: &str,
    src: &Source,
    tuning: Tuning,
    overwrite: bool,
    records: Option<&Records>,
) -> Result<Planned, CliError> {
    let (caps, w, subject) = (s.caps, s.waits.clone(), Subject::File(key));
    let replace = overwrite && caps.replace;
    let size = src.size();
    let prior = records
        .and_then(Records::load)
        .filter(|r| r.key == key && r.file == src.local && r.replace == replace);
    if let Some(rec) = prior.filter(|_| caps.resume) {
        let id = rec.upload_id.as_str();
        let resuming = s
            .client
            .file_save_own(key, size, Some(rec.block_size), id, replace);
        match w.bounded(subject, resuming).await {
            // Ours, or started over (the server's word for "not yours").
            Ok(p) if !p.resumed || p.upload_id.as_deref() == Some(id) => {
                return Ok(Planned::Upload(p));
            }
            // A server that does not look at `upload_id` resumed whatever
            // unfinished upload the key had: not ours, so start over below.
            Ok(_) => {}
            Err(e @ CliError::KeyExists { .. }) => {
                return finished_earlier(s, key, src, &rec, records, e).await;
            }
            Err(e) => return Err(e),
        }
    }
    let opts = SaveOptions {
        block_size: tuning.block_size,
        resume: false,
    };
    let answer = if replace {
        w.bounded(subject, s.client.file_save_replace(key, size, opts, None))
            .await
    } else {
        w.bounded(subject, s.client.file_save(Some(key), size, opts))
            .await
    };
    match answer {
        Ok(p) => Ok(Planned::Upload(p)),
        Err(CliError::KeyExists { .. }) if overwrite => Err(CliError::CannotReplace {
            addr: s.addr.clone(),
            key: key.to_owned(),
        }),
        Err(e) => {
            if matches!(e, CliError::KeyExists { .. })
                && let Some(r) = records
            {
                r.clear();
            }
            Err(e)
        }
    }
}

/// The key holds a complete file although our record says the upload was
/// unfinished: if it is that upload's file (its id) with this file's md5,
/// an earlier run finished it and only its last answer was lost.
async fn finished_earlier(
    s: &mut Session,
    key: &str,
    src: &Source,
    rec: &Record,
    records: Option<&Records>,
    exists: CliError,
) -> Result<Planned, CliError> {
    if let Some(r) = records {
        r.clear();
    }
    let w = s.waits.clone();
    let there = w
        .bounded(Subject::File(key), s.client.file_get(key, None))
        .await?;
    if there.upload_id.as_deref() != Some(rec.upload_id.as_str()) {
        return Err(exists);
    }
    let file = src
        .file
        .try_clone()
        .map_err(|e| CliError::unreadable(src.path.clone(), &e))?;
    let (path, size) = (src.path.clone(), src.size());
    let hashed = tokio::task::spawn_blocking(move || md5_of(file, size, &path));
    let local = tokio::select! {
        () = w.cancel.cancelled() => return Err(CliError::Interrupted),
        h = hashed => h.map_err(|e| CliError::FileUnreadable { path: src.path.clone(), reason: e.to_string() })??,
    };
    if local.eq_ignore_ascii_case(&there.md5) {
        Ok(Planned::Done { md5: there.md5 })
    } else {
        Err(exists)
    }
}

/// The md5 of a whole file, read front to back.
fn md5_of(file: File, size: u64, path: &Path) -> Result<String, CliError> {
    let hasher = InOrderMd5::start(Layout {
        size,
        block_size: 1 << 20,
        file: None,
        on_disk: Vec::new(),
        hold: 0,
    })
    .map_err(|e| CliError::unreadable(path.into(), &e))?;
    let job = ReadJob {
        path: path.to_path_buf(),
        size,
        block_size: 1 << 20,
        wanted: Vec::new(),
        rate: None,
    };
    let (tx, _rx) = async_channel::bounded(1);
    job.run(file, &tx, &hasher)?;
    hasher
        .finish()
        .map_err(|e| CliError::unreadable(path.into(), &e))?
        .ok_or_else(|| CliError::FileChanged { path: path.into() })
}

/// One upload under way: where it goes and what it reports.
#[derive(Debug)]
struct Upload<'a> {
    key: &'a str,
    mode: Mode,
    verbose: bool,
    replace: bool,
    records: Option<&'a Records>,
}

impl Upload<'_> {
    async fn send(
        &self,
        session: Session,
        tune: &TuneArgs,
        src: Source,
        plan: UploadPlan,
    ) -> Result<(), CliError> {
        let (key, size) = (self.key, src.size());
        let w = session.waits.clone();
        check_plan(&plan, size, &w.addr)?;
        let missing = normalize(&plan.missing, plan.total_block);
        let missing_blocks: u64 = missing.iter().map(|r| r[1] - r[0]).sum();
        let present = plan.total_block - missing_blocks;
        if plan.resumed && self.mode != Mode::Quiet {
            say(format_args!(
                "Resuming: {present} of {} blocks already on the server",
                plan.total_block
            ));
        }
        self.remember(&session, &src, &plan);
        let already = size - ranges_bytes(&missing, size, plan.block_size);
        let caps = session.caps;
        let connections = Tuning::connections(caps, tune, size - already, plan.block_size);
        let window = Tuning::new(caps, tune).window;
        if self.verbose {
            eprintln!(
                "Sending {missing_blocks} blocks of {} over {connections} connection(s), {window} in flight on each",
                human_bytes(plan.block_size)
            );
        }
        let extra = session.extra_connections(connections - 1).await;
        let mut clients = vec![session.client];
        clients.extend(extra);

        let progress = Progress::new(self.mode, &format!("Uploading {key}"), size, already);
        let acked = AtomicU64::new(0);
        let started = Instant::now();
        let (tx, rx) = async_channel::bounded::<Result<(u64, Bytes), ClientError>>(READ_AHEAD);
        let hasher = InOrderMd5::start(Layout {
            size,
            block_size: plan.block_size,
            file: None,
            on_disk: Vec::new(),
            hold: 0,
        })
        .map_err(|e| CliError::unreadable(src.path.clone(), &e))?;
        let job = ReadJob {
            path: src.path.clone(),
            size,
            block_size: plan.block_size,
            wanted: missing,
            rate: tune.limit_rate,
        };
        let file = src.file;
        let reader = tokio::task::spawn_blocking(move || {
            job.run(file, &tx, &hasher)?;
            Ok::<_, CliError>(hasher.finish())
        });
        let on_block = |n: u64| {
            acked.fetch_add(1, Ordering::Relaxed);
            progress.inc(n);
        };
        // The block that completes the upload waits for the file's md5.
        let (rx, held) = hold_last(rx);
        let mut refs: Vec<&mut StepClient> = clients.iter_mut().collect();
        // A throttled block can take longer than --timeout to go out whole.
        let stall = w
            .timeout
            .saturating_add(tune.limit_rate.map_or(Duration::ZERO, |rate| {
                Duration::from_secs_f64(2.0 * plan.block_size as f64 / rate as f64)
            }));
        let outcome = w
            .watched(
                stall,
                || progress.done(),
                upload_spread(&mut refs, &plan, rx, window, &on_block),
            )
            .await;
        let kept = || {
            format!(
                "{} of {} blocks of {key} are on the server",
                present + acked.load(Ordering::Relaxed),
                plan.total_block
            )
        };
        let server_md5 = match outcome.and_then(|r| r.map_err(|e| self.refused(e, &w.addr))) {
            Ok(md5) => md5,
            Err(e) => {
                progress.abandon();
                return Err(self.failed(e, &mut clients[0], &w, &plan, kept()).await);
            }
        };
        // A read error stops the block stream early, so it outranks the
        // (then incomplete) upload's result.
        let local = match reader.await {
            Ok(Ok(Ok(Some(md5)))) => md5,
            Ok(Ok(Ok(None))) => {
                return Err(CliError::Protocol {
                    addr: w.addr.clone(),
                    reason: "the upload stopped before every block was sent".into(),
                });
            }
            Ok(Ok(Err(e))) => return Err(CliError::unreadable(src.path, &e)),
            Ok(Err(e)) => {
                progress.abandon();
                return Err(e);
            }
            Err(e) => {
                return Err(CliError::FileUnreadable {
                    path: src.path,
                    reason: e.to_string(),
                });
            }
        };
        let server_md5 = match self
            .send_last(&mut clients[0], &w, &plan, held, &local)
            .await
        {
            Ok(Some(n)) => {
                progress.inc(n.1);
                n.0.or(server_md5)
            }
            Ok(None) => server_md5,
            Err(e) => {
                progress.abandon();
                return Err(e);
            }
        };
        progress.finish();
        let server_md5 = match server_md5 {
            Some(m) => m,
            // An empty file completes at SAVE; other servers may leave md5 out
            // of the last UPLOAD answer. The download plan carries it either way.
            None => {
                let get = clients[0].file_get(key, None);
                w.bounded(Subject::File(key), get).await?.md5
            }
        };
        if let Some(r) = self.records {
            r.clear();
        }
        if !server_md5.eq_ignore_ascii_case(&local) {
            return Err(CliError::Md5Mismatch {
                what: key.to_owned(),
                local,
                server: server_md5,
                hint: "; the file changed while it was read, or bytes were damaged on the way: upload it again with --overwrite",
            });
        }
        if self.mode != Mode::Quiet {
            say(format_args!(
                "Uploaded {key}: {missing_blocks} of {} blocks sent, {}",
                plan.total_block,
                summary(size - already, started)
            ));
        }
        say(format_args!("MD5: {server_md5}"));
        Ok(())
    }

    /// Keep the upload's id while it is unfinished, so the same command run
    /// again resumes it; a single block has nothing worth resuming.
    fn remember(&self, session: &Session, src: &Source, plan: &UploadPlan) {
        let Some(records) = self.records else { return };
        let Some(id) = plan.upload_id.clone().filter(|_| plan.total_block > 1) else {
            records.clear();
            return;
        };
        let rec = Record {
            server: session.addr.clone(),
            user: session.user.clone(),
            key: self.key.to_owned(),
            upload_id: id,
            block_size: plan.block_size,
            replace: self.replace,
            file: src.local.clone(),
        };
        if records.load().as_ref() == Some(&rec) {
            return;
        }
        if let Err(e) = records.save(&rec) {
            eprintln!(
                "step-client: note: cannot keep the upload's state in {} ({}): an interrupted upload will start over",
                records.path().display(),
                crate::error::io_reason(&e)
            );
        }
    }

    /// Send the block held back ([`hold_last`]) with the file's md5: a
    /// server with `upload_md5` completes the upload only if what it
    /// received has it, and otherwise keeps what the key held (a file being
    /// replaced stays). Returns the server's md5 and the block's length.
    async fn send_last(
        &self,
        client: &mut StepClient,
        w: &crate::session::Waits,
        plan: &UploadPlan,
        held: tokio::task::JoinHandle<Option<(u64, Bytes)>>,
        local: &str,
    ) -> Result<Option<(Option<String>, u64)>, CliError> {
        let Some((index, data)) = held.await.ok().flatten() else {
            return Ok(None);
        };
        let len = data.len() as u64;
        let sent = client.upload_last_block(plan, index, data, Some(local));
        match tokio::time::timeout(w.timeout, sent).await {
            Ok(Ok(md5)) => Ok(Some((md5, len))),
            Ok(Err(e)) if e.problem() == Some(Problem::Md5Mismatch) => {
                if let Some(r) = self.records {
                    r.clear();
                }
                Err(CliError::Md5Mismatch {
                    what: self.key.to_owned(),
                    local: local.to_owned(),
                    server: "other bytes, refused".into(),
                    hint: "; bytes were damaged on the way, so the server kept what the key held: upload it again",
                })
            }
            Ok(Err(e)) => Err(self.refused(e, &w.addr)),
            Err(_) => Err(self.refused(ClientError::TimedOut(w.timeout), &w.addr)),
        }
    }

    fn refused(&self, e: ClientError, addr: &str) -> CliError {
        CliError::from_client(e, addr, Subject::File(self.key))
    }

    /// Put a failed transfer in the user's terms, and forget the upload
    /// when the server will not continue it.
    async fn failed(
        &self,
        e: CliError,
        client: &mut StepClient,
        w: &crate::session::Waits,
        plan: &UploadPlan,
        kept: String,
    ) -> CliError {
        let e = match e {
            CliError::Refused {
                problem: Some(Problem::WrongOperation),
                ..
            } => {
                // Refused as "not in progress": another upload completed the
                // key, or ours was deleted or expired.
                let there = w
                    .bounded(Subject::File(self.key), client.file_get(self.key, None))
                    .await;
                match there {
                    Ok(p) if p.upload_id != plan.upload_id => CliError::Superseded {
                        key: self.key.to_owned(),
                    },
                    _ => CliError::UploadGone {
                        key: self.key.to_owned(),
                    },
                }
            }
            e if e.is_interruption() => return e.stopped(kept),
            e => e,
        };
        if matches!(e, CliError::Superseded { .. } | CliError::UploadGone { .. })
            && let Some(r) = self.records
        {
            r.clear();
        }
        e
    }
}

/// Blocks read from the file, in the order they are sent.
type Blocks = async_channel::Receiver<Result<(u64, Bytes), ClientError>>;

/// Blocks of `rx` passed on as they come, but for the last one, which the
/// task returns once `rx` ends: it is sent after every other block is
/// acknowledged, with the file's md5. A read error is passed on at once.
fn hold_last(rx: Blocks) -> (Blocks, tokio::task::JoinHandle<Option<(u64, Bytes)>>) {
    let (tx, out) = async_channel::bounded(1);
    let task = tokio::spawn(async move {
        let mut last = None;
        while let Ok(item) = rx.recv().await {
            let pass = match item {
                Ok(block) => last.replace(block).map(Ok),
                Err(e) => Some(Err(e)),
            };
            if let Some(item) = pass
                && tx.send(item).await.is_err()
            {
                return None;
            }
        }
        last
    });
    (out, task)
}

/// The plan must describe this file, whatever the server sent.
fn check_plan(plan: &UploadPlan, size: u64, addr: &str) -> Result<(), CliError> {
    if plan.size != size
        || plan.block_size == 0
        || plan.total_block != total_blocks(size, plan.block_size)
    {
        return Err(CliError::Protocol {
            addr: addr.to_owned(),
            reason: format!(
                "its plan ({} bytes in {} blocks of {}) does not fit a {size}-byte file",
                plan.size, plan.total_block, plan.block_size
            ),
        });
    }
    Ok(())
}

/// The key a file goes under by default: its name, as the course clients do.
pub fn default_key(path: &Path) -> Result<String, CliError> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| CliError::Usage(format!("{} has no file name; pass --key", path.display())))
}

/// The server's missing ranges sorted, clipped to the plan and merged, so
/// counts made from them cannot exceed the file whatever the server sent.
fn normalize(ranges: &[[u64; 2]], total: u64) -> Vec<[u64; 2]> {
    let mut clipped: Vec<[u64; 2]> = ranges
        .iter()
        .map(|r| [r[0].min(total), r[1].min(total)])
        .filter(|r| r[0] < r[1])
        .collect();
    clipped.sort_unstable();
    let mut out: Vec<[u64; 2]> = Vec::with_capacity(clipped.len());
    for r in clipped {
        match out.last_mut() {
            Some(last) if r[0] <= last[1] => last[1] = last[1].max(r[1]),
            _ => out.push(r),
        }
    }
    out
}

/// Bytes covered by normalized block ranges (the last block may be short).
fn ranges_bytes(ranges: &[[u64; 2]], size: u64, block_size: u64) -> u64 {
    ranges
        .iter()
        .map(|r| {
            r[1].saturating_mul(block_size).min(size) - r[0].saturating_mul(block_size).min(size)
        })
        .sum()
}

/// Reads the file front to back on a blocking thread, handing every block
/// to the md5 thread and those the server lacks to the network. Reading
/// all of it even when resuming is what gives the local md5 in the same
/// single pass.
#[derive(Debug)]
struct ReadJob {
    path: PathBuf,
    size: u64,
    block_size: u64,
    wanted: Vec<[u64; 2]>,
    rate: Option<u64>,
}

impl ReadJob {
    /// Stops early, without error, when the network side stopped listening
    /// (it has its own error to report).
    fn run(
        self,
        file: File,
        tx: &async_channel::Sender<Result<(u64, Bytes), ClientError>>,
        md5: &InOrderMd5,
    ) -> Result<(), CliError> {
        let mut pace = self.rate.map(Pace::new);
        let mut ranges = self.wanted.iter().peekable();
        let mut file = file;
        for index in 0..total_blocks(self.size, self.block_size) {
            if tx.is_closed() {
                // The network side stopped (Ctrl-C, a lost connection).
                return Ok(());
            }
            let len = block_len(self.size, self.block_size, index).unwrap_or(0);
            let block = self.read_block(&mut file, len)?;
            md5.give(index, block.clone());
            while ranges.next_if(|r| r[1] <= index).is_some() {}
            let wanted = ranges.peek().is_some_and(|r| r[0] <= index);
            if !wanted {
                continue;
            }
            if let Some(wait) = pace.as_mut().and_then(|p| p.wait_before(len))
                && !sleep_unless_closed(wait, tx)
            {
                return Ok(());
            }
            if tx.send_blocking(Ok((index, block))).is_err() {
                return Ok(());
            }
        }
        let mut extra = [0u8; 1];
        match file.read(&mut extra) {
            Ok(0) => Ok(()),
            Ok(_) => Err(CliError::FileChanged {
                path: self.path.clone(),
            }),
            Err(e) => Err(CliError::unreadable(self.path.clone(), &e)),
        }
    }

    /// The next `len` bytes (into fresh memory, never zeroed first).
    fn read_block(&self, file: &mut File, len: u64) -> Result<Bytes, CliError> {
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        file.take(len)
            .read_to_end(&mut buf)
            .map_err(|e| CliError::unreadable(self.path.clone(), &e))?;
        if buf.len() as u64 != len {
            return Err(CliError::FileChanged {
                path: self.path.clone(),
            });
        }
        Ok(Bytes::from(buf))
    }
}

/// Sleep `wait` in short steps, giving up when the network side is gone
/// (Ctrl-C should not wait for a throttled block). False when it is gone.
fn sleep_unless_closed<T>(wait: Duration, tx: &async_channel::Sender<T>) -> bool {
    let until = Instant::now() + wait;
    while !tx.is_closed() {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn collect(job: ReadJob, file: File) -> (Result<Option<String>, CliError>, Vec<u64>) {
        let (tx, rx) = async_channel::unbounded();
        let md5 = InOrderMd5::start(Layout {
            size: job.size,
            block_size: job.block_size,
            file: None,
            on_disk: Vec::new(),
            hold: 0,
        })
        .expect("md5 thread");
        let read = job.run(file, &tx, &md5);
        drop(tx);
        let mut got = Vec::new();
        while let Ok(Ok((i, _))) = rx.try_recv() {
            got.push(i);
        }
        let out = read.map(|()| md5.finish().expect("md5"));
        (out, got)
    }

    fn temp_with(data: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().expect("temp");
        f.write_all(data).expect("write");
        f
    }

    #[test]
    fn sends_only_missing_blocks_but_hashes_everything() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let f = temp_with(&data);
        let job = ReadJob {
            path: f.path().into(),
            size: data.len() as u64,
            block_size: 20480,
            wanted: vec![[1, 2], [3, 5]],
            rate: None,
        };
        let (md5, got) = collect(job, f.reopen().expect("reopen"));
        assert_eq!(got, vec![1, 3, 4]);
        assert_eq!(
            md5.expect("read").as_deref(),
            Some(step_core::digest::md5_hex(&data).as_str())
        );
    }

    #[test]
    fn a_file_that_shrank_or_grew_is_reported() {
        let f = temp_with(&[7u8; 5000]);
        let job = |size| ReadJob {
            path: f.path().into(),
            size,
            block_size: 20480,
            wanted: vec![[0, 1]],
            rate: None,
        };
        let (r, _) = collect(job(6000), f.reopen().expect("reopen"));
        assert!(matches!(r, Err(CliError::FileChanged { .. })));
        let (r, _) = collect(job(4000), f.reopen().expect("reopen"));
        assert!(matches!(r, Err(CliError::FileChanged { .. })));
    }

    #[test]
    fn hostile_missing_ranges_are_tamed() {
        assert_eq!(
            normalize(&[[5, 9], [0, 2], [1, 3], [7, 100], [4, 4]], 10),
            vec![[0, 3], [5, 10]]
        );
        assert!(normalize(&[[20, 30]], 10).is_empty());
        // 10 blocks of 100 bytes, the last one 50.
        assert_eq!(ranges_bytes(&[[0, 3], [9, 10]], 950, 100), 350);
        assert_eq!(ranges_bytes(&[[0, 10]], 950, 100), 950);
    }

    #[test]
    fn keys_default_to_the_file_name() {
        assert_eq!(
            default_key(Path::new("dir/otter.jpg")).ok().as_deref(),
            Some("otter.jpg")
        );
        assert!(default_key(Path::new("/")).is_err());
    }
}
