//! Uploading a file: plan (resuming when the server can), stream the blocks
//! the server lacks, then check the server's md5 against our own.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use md5::{Digest, Md5};
use step_core::client::SaveOptions;
use step_core::digest::finish_hex;
use step_core::plan::{block_len, total_blocks};
use step_core::transfer::upload_spread;
use step_core::{ClientError, StepClient};

use crate::args::{ConnArgs, TuneArgs};
use crate::error::{CliError, Subject};
use crate::progress::{Mode, Progress, summary};
use crate::say;
use crate::session::{Session, Tuning, bounded, watched};

/// Blocks read ahead of the network; the transfer keeps its own window of
/// blocks in flight on top, so memory stays a few dozen blocks.
const READ_AHEAD: usize = 4;

pub async fn run(
    conn: &ConnArgs,
    tune: &TuneArgs,
    path: &Path,
    key: Option<String>,
) -> Result<(), CliError> {
    let mode = Mode::pick(conn.quiet);
    // Check the file before touching the network: a typo should not cost a login.
    let file = std::fs::File::open(path).map_err(|e| CliError::unreadable(path.into(), &e))?;
    let meta = file
        .metadata()
        .map_err(|e| CliError::unreadable(path.into(), &e))?;
    if !meta.is_file() {
        return Err(CliError::FileUnreadable {
            path: path.into(),
            reason: "not a regular file".into(),
        });
    }
    let size = meta.len();
    let key = match key {
        Some(k) => k,
        None => default_key(path)?,
    };

    let mut session = Session::open(conn).await?;
    if mode != Mode::Quiet {
        say(format_args!("Token: {}", session.token));
    }
    let caps = session.caps;
    if size == 0 && !caps.pipelining {
        // The reference server's handler dies on a 0-byte plan and never answers.
        return Err(CliError::Unsupported(
            "this server announces no extensions, and the reference server never answers an empty upload; nothing was sent".into(),
        ));
    }
    let tuning = Tuning::new(caps, tune);
    let opts = SaveOptions {
        block_size: tuning.block_size,
        resume: caps.resume,
    };
    let (addr, timeout) = (session.addr.clone(), session.timeout);
    let plan = bounded(
        &addr,
        timeout,
        Subject::File(&key),
        session.client.file_save(Some(&key), size, opts),
    )
    .await?;
    if plan.size != size
        || plan.block_size == 0
        || plan.total_block != total_blocks(size, plan.block_size)
    {
        return Err(CliError::Protocol {
            addr,
            reason: format!(
                "its plan ({} bytes in {} blocks of {}) does not fit a {size}-byte file",
                plan.size, plan.total_block, plan.block_size
            ),
        });
    }
    let missing = normalize(&plan.missing, plan.total_block);
    let missing_blocks: u64 = missing.iter().map(|r| r[1] - r[0]).sum();
    let present = plan.total_block - missing_blocks;
    if plan.resumed && mode != Mode::Quiet {
        say(format_args!(
            "Resuming: {present} of {} blocks already on the server",
            plan.total_block
        ));
    }
    let already = size - ranges_bytes(&missing, size, plan.block_size);

    let connections = Tuning::connections(caps, tune, size - already, plan.block_size);
    let extra = session.extra_connections(connections - 1).await;
    let mut clients = vec![session.client];
    clients.extend(extra);

    let label = format!("Uploading {key}");
    let progress = Progress::new(mode, &label, size, already);
    let started = Instant::now();
    let (tx, rx) = async_channel::bounded::<Result<(u64, Bytes), ClientError>>(READ_AHEAD);
    let reader = {
        let job = ReadJob {
            path: path.to_path_buf(),
            size,
            block_size: plan.block_size,
            wanted: missing,
            rate: tune.limit_rate,
        };
        tokio::task::spawn_blocking(move || job.run(file, &tx))
    };
    let on_block = |n: u64| progress.inc(n);
    let mut refs: Vec<&mut StepClient> = clients.iter_mut().collect();
    // A throttled block can take longer than --timeout to go out whole.
    let stall = timeout.saturating_add(tune.limit_rate.map_or(Duration::ZERO, |rate| {
        Duration::from_secs_f64(2.0 * plan.block_size as f64 / rate as f64)
    }));
    let outcome = watched(
        &addr,
        stall,
        || progress.done(),
        upload_spread(&mut refs, &plan, rx, tuning.window, &on_block),
    )
    .await;
    let local = reader.await.map_err(|e| CliError::FileUnreadable {
        path: path.into(),
        reason: e.to_string(),
    });
    let server_md5 = match outcome {
        Ok(Ok(md5)) => md5,
        Ok(Err(e)) => {
            progress.abandon();
            return Err(CliError::from_client(e, &addr, Subject::File(&key)));
        }
        Err(e) => {
            progress.abandon();
            return Err(e);
        }
    };
    // A read error stops the block stream early, so it outranks the
    // (then incomplete) upload's result.
    let local = match local? {
        Ok(Some(md5)) => md5,
        Ok(None) => {
            return Err(CliError::Protocol {
                addr,
                reason: "the upload stopped before every block was sent".into(),
            });
        }
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
            let client = &mut clients[0];
            bounded(
                &addr,
                timeout,
                Subject::File(&key),
                client.file_get(&key, None),
            )
            .await?
            .md5
        }
    };
    if !server_md5.eq_ignore_ascii_case(&local) {
        return Err(CliError::Md5Mismatch {
            what: key,
            local,
            server: server_md5,
            hint: if plan.resumed {
                "; the server kept blocks of an earlier, different file under this key: delete it and upload again"
            } else {
                ""
            },
        });
    }
    if mode != Mode::Quiet {
        say(format_args!(
            "Uploaded {key}: {missing_blocks} of {} blocks sent, {}",
            plan.total_block,
            summary(size - already, started)
        ));
    }
    say(format_args!("MD5: {server_md5}"));
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

/// Reads the file front to back on a blocking thread, hashing every block
/// and sending those the server lacks. Reading all of it even when resuming
/// is what gives us the local md5 in the same single pass.
#[derive(Debug)]
struct ReadJob {
    path: PathBuf,
    size: u64,
    block_size: u64,
    wanted: Vec<[u64; 2]>,
    rate: Option<u64>,
}

impl ReadJob {
    /// `Ok(Some(md5))` after the whole file; `Ok(None)` when the upload side
    /// stopped listening (it has its own error to report).
    fn run(
        self,
        mut file: std::fs::File,
        tx: &async_channel::Sender<Result<(u64, Bytes), ClientError>>,
    ) -> Result<Option<String>, CliError> {
        let mut hasher = Md5::new();
        let started = Instant::now();
        let mut sent = 0u64;
        let mut ranges = self.wanted.iter().peekable();
        for index in 0..total_blocks(self.size, self.block_size) {
            let len = block_len(self.size, self.block_size, index).unwrap_or(0);
            let mut buf = vec![0u8; usize::try_from(len).unwrap_or(usize::MAX)];
            file.read_exact(&mut buf).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    CliError::FileChanged {
                        path: self.path.clone(),
                    }
                } else {
                    CliError::unreadable(self.path.clone(), &e)
                }
            })?;
            hasher.update(&buf);
            while ranges.next_if(|r| r[1] <= index).is_some() {}
            let wanted = ranges.peek().is_some_and(|r| r[0] <= index);
            if !wanted {
                continue;
            }
            if let Some(rate) = self.rate {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            sent += len;
            if tx.send_blocking(Ok((index, Bytes::from(buf)))).is_err() {
                return Ok(None);
            }
        }
        let mut extra = [0u8; 1];
        match file.read(&mut extra) {
            Ok(0) => {}
            Ok(_) => {
                return Err(CliError::FileChanged {
                    path: self.path.clone(),
                });
            }
            Err(e) => return Err(CliError::unreadable(self.path.clone(), &e)),
        }
        Ok(Some(finish_hex(hasher)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn collect(job: ReadJob, file: std::fs::File) -> (Result<Option<String>, CliError>, Vec<u64>) {
        let (tx, rx) = async_channel::unbounded();
        let md5 = job.run(file, &tx);
        drop(tx);
        let mut got = Vec::new();
        while let Ok(Ok((i, _))) = rx.try_recv() {
            got.push(i);
        }
        (md5, got)
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
