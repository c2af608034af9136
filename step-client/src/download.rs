//! Downloading a file, resumably (see [`crate::partial`] for what is kept
//! between runs). Blocks are written once, where they belong, as they
//! arrive; a thread of its own hashes them in order meanwhile
//! ([`crate::hashing`]), so the file is never read back. Run again after an
//! interruption (a cut connection, a server restart, Ctrl-C), the same
//! command fetches only the blocks the partial lacks; a remote file that
//! changed meanwhile (other md5 or size) starts over from zero. The partial
//! takes the target's name only once the md5 of the whole file matches the
//! plan, so a wrong file is never left behind: when a resumed partial fails
//! that check (its bytes were damaged while it waited), it is thrown away
//! and the file downloaded again from zero, once; a fresh download that
//! fails it is an error and leaves nothing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use step_core::client::DownloadPlan;
use step_core::transfer::download_spread_indexes;
use step_core::{ClientError, StepClient};
use tokio_util::sync::CancellationToken;

use crate::args::{ConnArgs, TuneArgs};
use crate::error::{CliError, Subject};
use crate::hashing::{InOrderMd5, Layout};
use crate::partial::{Adopted, PartFile};
use crate::progress::{Mode, Progress, human_bytes, summary};
use crate::say;
use crate::session::{Pace, Session, Tuning, Waits, block_here};

/// Early blocks held in memory for the md5 at most; a block further ahead
/// is read back from the partial when its turn comes.
const HOLD: usize = 64 << 20;

pub async fn run(
    conn: &ConnArgs,
    tune: &TuneArgs,
    (key, output, force): (&str, Option<PathBuf>, bool),
    cancel: &CancellationToken,
) -> Result<(), CliError> {
    let mode = Mode::pick(conn.quiet);
    let target = target_path(key, output)?;
    if !force && target.exists() {
        return Err(CliError::TargetExists { path: target });
    }
    let mut session = Session::open(conn, cancel).await?;
    let caps = session.caps;
    let tuning = Tuning::new(caps, tune);
    let w = session.waits.clone();
    let mut part = PartFile::open(&target)?;
    // Ask for the block size the partial was made with, so its blocks count
    // as they are (the server may still answer with another one).
    let ask = match (tuning.block_size, part.previous_block_size()) {
        (Some(_), Some(previous)) => Some(previous),
        (wanted, _) => wanted,
    };
    let plan = w
        .bounded(Subject::File(key), session.client.file_get(key, ask))
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
    let missing_bytes = plan.size - part.have_bytes(&plan);
    let connections = Tuning::connections(caps, tune, missing_bytes, plan.block_size);
    if conn.verbose {
        eprintln!(
            "Fetching {} of {} blocks of {} over {connections} connection(s), {} in flight on each",
            part.missing().len(),
            plan.total_block,
            human_bytes(plan.block_size),
            tuning.window
        );
    }
    let extra = session.extra_connections(connections - 1).await;
    let mut clients = vec![session.client];
    clients.extend(extra);

    let started = Instant::now();
    let mut fetched = 0u64;
    let mut restarted = false;
    let fetch = Fetch {
        plan: &plan,
        key,
        mode,
        waits: &w,
        window: tuning.window,
        rate: tune.limit_rate,
    };
    loop {
        fetched += part.missing().len() as u64;
        let local = match fetch.run(&mut clients, &part).await {
            Ok(md5) => md5,
            Err(e) if e.is_interruption() && part.blocks_here() > 0 => {
                part.keep();
                let kept = format!(
                    "{} keeps {} of {} blocks",
                    part.path.display(),
                    part.blocks_here(),
                    plan.total_block
                );
                return Err(e.stopped(kept));
            }
            Err(e) => return Err(e),
        };
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
    let synced = part.persist()?;
    if conn.verbose {
        eprintln!(
            "Synced {} to disk in {:.0} ms",
            target.display(),
            synced.as_secs_f64() * 1e3
        );
    }
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

/// Fetching the blocks a partial lacks.
#[derive(Debug)]
struct Fetch<'a> {
    plan: &'a DownloadPlan,
    key: &'a str,
    mode: Mode,
    waits: &'a Waits,
    window: usize,
    rate: Option<u64>,
}

impl Fetch<'_> {
    /// Download what `part` lacks into it; the md5 of the whole file.
    async fn run(&self, clients: &mut [StepClient], part: &PartFile) -> Result<String, CliError> {
        let plan = self.plan;
        let missing = part.missing();
        let label = format!("Downloading {}", self.key);
        let progress = Progress::new(self.mode, &label, plan.size, part.have_bytes(plan));
        let md5 = InOrderMd5::start(Layout {
            size: plan.size,
            block_size: plan.block_size,
            file: Some(part.reader()?),
            on_disk: part.done_flags(),
            hold: HOLD,
        })
        .map_err(|e| CliError::write(part.target().to_path_buf(), &e))?;
        let pace = self.rate.map(|r| Mutex::new(Pace::new(r)));
        // Each block is written where it belongs, then hashed in order by
        // the md5 thread; nothing here waits on a lock for I/O.
        let on_block = |index: u64, data: Bytes| -> Result<(), ClientError> {
            part.write_block(index, plan.block_size, &data)
                .map_err(ClientError::Sink)?;
            let len = data.len() as u64;
            md5.give(index, data);
            progress.inc(len);
            let wait = pace
                .as_ref()
                .and_then(|p| p.lock().unwrap_or_else(|e| e.into_inner()).wait_before(len));
            if let Some(wait) = wait {
                // Reading stops meanwhile, and TCP holds the sender back.
                block_here(|| std::thread::sleep(wait));
            }
            Ok(())
        };
        let mut refs: Vec<&mut StepClient> = clients.iter_mut().collect();
        let stall = self.waits.timeout.saturating_add(
            self.rate.map_or(std::time::Duration::ZERO, |rate| {
                std::time::Duration::from_secs_f64(2.0 * plan.block_size as f64 / rate as f64)
            }),
        );
        let outcome = self
            .waits
            .watched(
                stall,
                || progress.done(),
                download_spread_indexes(&mut refs, plan, &missing, self.window, &on_block),
            )
            .await;
        let outcome = outcome.and_then(|r| {
            r.map_err(|e| match e {
                ClientError::Sink(e) => CliError::write(part.target().to_path_buf(), &e),
                e => CliError::from_client(e, &self.waits.addr, Subject::File(self.key)),
            })
        });
        if let Err(e) = outcome {
            progress.abandon();
            return Err(e);
        }
        progress.finish();
        md5.finish()
            .map_err(|e| CliError::write(part.target().to_path_buf(), &e))?
            .ok_or_else(|| CliError::Protocol {
                addr: self.waits.addr.clone(),
                reason: "the download ended before every block arrived".into(),
            })
    }
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
}
