//! Downloading a file: blocks go into a temporary file beside the target,
//! which only takes the target's name once its md5 matches the plan. An
//! interrupted or corrupt download therefore never leaves a wrong file behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use md5::{Digest, Md5};
use step_core::digest::finish_hex;
use step_core::transfer::download_spread;
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
    let plan = bounded(
        &addr,
        timeout,
        Subject::File(key),
        session.client.file_get(key, tuning.block_size),
    )
    .await?;
    let connections = Tuning::connections(caps, tune, plan.size, plan.block_size);
    let extra = session.extra_connections(connections - 1).await;
    let mut clients = vec![session.client];
    clients.extend(extra);

    let mut part = PartFile::create(&target)?;
    let label = format!("Downloading {key}");
    let progress = Progress::new(mode, &label, plan.size, 0);
    let started = Instant::now();
    let write_error: Mutex<Option<std::io::Error>> = Mutex::new(None);
    let sink = Mutex::new(&mut part.file);
    // Written in place on the runtime thread: a block into the page cache
    // costs less than the round trip that brought it, and the transfer's
    // windows already bound how much waits.
    let on_block = |index: u64, data: Bytes| -> Result<(), ClientError> {
        let mut file = sink.lock().unwrap_or_else(|p| p.into_inner());
        let written = file
            .seek(SeekFrom::Start(index * plan.block_size))
            .and_then(|_| file.write_all(&data));
        if let Err(e) = written {
            *write_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            // The text is never shown: the stashed io error is reported instead.
            return Err(ClientError::Source("local write failed".into()));
        }
        progress.inc(data.len() as u64);
        Ok(())
    };
    let mut refs: Vec<&mut StepClient> = clients.iter_mut().collect();
    let outcome = watched(
        &addr,
        timeout,
        || progress.done(),
        download_spread(&mut refs, &plan, tuning.window, &on_block),
    )
    .await;
    if let Some(e) = write_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        progress.abandon();
        return Err(CliError::write(target, &e));
    }
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            progress.abandon();
            return Err(CliError::from_client(e, &addr, Subject::File(key)));
        }
        Err(e) => {
            progress.abandon();
            return Err(e);
        }
    }
    progress.finish();
    let local = part.finish(&target)?;
    if !local.eq_ignore_ascii_case(&plan.md5) {
        return Err(CliError::Md5Mismatch {
            what: key.to_owned(),
            local,
            server: plan.md5,
            hint: "; nothing was saved",
        });
    }
    part.persist(&target)?;
    if mode != Mode::Quiet {
        say(format_args!(
            "Downloaded {key} to {}: {}",
            target.display(),
            summary(plan.size, started)
        ));
    }
    say(format_args!("MD5: {}", plan.md5));
    Ok(())
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

/// The temporary file a download is written into; removed unless persisted.
#[derive(Debug)]
struct PartFile {
    path: PathBuf,
    file: File,
    kept: bool,
}

impl PartFile {
    fn create(target: &Path) -> Result<PartFile, CliError> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join(format!(".{name}.{}.part", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| CliError::write(target.to_path_buf(), &e))?;
        Ok(PartFile {
            path,
            file,
            kept: false,
        })
    }

    /// Flush to disk and hash what was written.
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
        self.kept = true;
        Ok(())
    }
}

impl Drop for PartFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
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

    #[test]
    fn part_file_is_removed_unless_persisted() {
        let dir = tempfile::tempdir().expect("dir");
        let target = dir.path().join("t.bin");
        let mut part = PartFile::create(&target).expect("create");
        part.file.write_all(b"abc").expect("write");
        assert_eq!(
            part.finish(&target).ok().as_deref(),
            Some(step_core::digest::md5_hex(b"abc").as_str())
        );
        let part_path = part.path.clone();
        drop(part);
        assert!(!part_path.exists());
        let mut part = PartFile::create(&target).expect("create");
        part.persist(&target).expect("persist");
        drop(part);
        assert!(target.exists());
    }
}
