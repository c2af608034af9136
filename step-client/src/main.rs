//! `step-client`: the course's STEP client, native, resumable and quick.

mod args;
mod download;
mod error;
mod hashing;
mod list;
mod partial;
mod progress;
mod records;
mod session;
mod upload;

use std::fmt::Display;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use serde_json::Value;
use step_core::Problem;
use tokio_util::sync::CancellationToken;

use crate::args::{Cli, Command, ConnArgs, DataCommand, UploadArgs, normalize_args};
use crate::error::{CliError, Subject};
use crate::session::Session;

/// Print a line on stdout. A closed pipe (`| head`) is not worth a panic,
/// which is what `println!` would do.
pub fn say(line: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_args(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => return args::explain(&e),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("step-client: error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cancel = CancellationToken::new();
    runtime.spawn(on_ctrl_c(cancel.clone()));
    match runtime.block_on(run(cli, &cancel)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("step-client: error: {e}");
            match e {
                CliError::Usage(_) => ExitCode::from(2),
                e if e.is_interrupt() => ExitCode::from(130),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// The first Ctrl-C stops what runs, which then says what it kept; a
/// second one does not wait for that.
async fn on_ctrl_c(cancel: CancellationToken) {
    if tokio::signal::ctrl_c().await.is_ok() {
        cancel.cancel();
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("step-client: interrupted");
            std::process::exit(130);
        }
    }
}

async fn run(cli: Cli, cancel: &CancellationToken) -> Result<(), CliError> {
    let Cli {
        conn,
        tune,
        file,
        key,
        overwrite,
        command,
    } = cli;
    let upload = |file, key, overwrite| upload::Request {
        path: file,
        key,
        overwrite,
    };
    match command {
        None => match file {
            Some(file) => upload::run(&conn, &tune, upload(&file, key, overwrite), cancel).await,
            None => Err(CliError::Usage(
                "nothing to do: give -f FILE to upload, or a subcommand (see --help)".into(),
            )),
        },
        Some(_) if file.is_some() || key.is_some() || overwrite => Err(CliError::Usage(
            "-f, --key and --overwrite before a subcommand only go with an upload without one; put them after it"
                .into(),
        )),
        Some(Command::Upload(UploadArgs {
            file,
            file_flag,
            key,
            overwrite,
        })) => match file.or(file_flag) {
            Some(file) => upload::run(&conn, &tune, upload(&file, key, overwrite), cancel).await,
            None => Err(CliError::Usage("upload needs a FILE".into())),
        },
        Some(Command::Download { key, output, force }) => {
            download::run(&conn, &tune, (&key, output, force), cancel).await
        }
        Some(Command::Delete { keys }) => delete(&conn, &keys, cancel).await,
        Some(Command::List { prefix, json }) => {
            list::run(&conn, prefix.as_deref(), json, cancel).await
        }
        Some(Command::Plan { key }) => plan(&conn, &tune, &key, cancel).await,
        Some(Command::Data(cmd)) => data(&conn, cmd, cancel).await,
    }
}

/// Delete each key in turn; the first failure stops (the keys before it
/// are gone, as said).
async fn delete(
    conn: &ConnArgs,
    keys: &[String],
    cancel: &CancellationToken,
) -> Result<(), CliError> {
    let mut s = Session::open(conn, cancel).await?;
    let w = s.waits.clone();
    for key in keys {
        let deleting = async {
            match s.client.file_delete(key).await {
                // STEP discards an unfinished upload and still answers 404,
                // in the reference's words.
                Err(e)
                    if e.problem() == Some(Problem::NotFound)
                        && e.to_string().contains("not completely uploaded") =>
                {
                    Ok(false)
                }
                other => other.map(|()| true),
            }
        };
        let complete = w.bounded(Subject::File(key), deleting).await?;
        // Nothing of the key is left to resume.
        if let Some(r) = records::Records::new(conn.state_dir.as_deref(), &s.addr, &s.user, key) {
            r.clear();
        }
        if !conn.quiet {
            let what = if complete {
                ""
            } else {
                "the unfinished upload of "
            };
            say(format_args!("Deleted {what}{key}"));
        }
    }
    Ok(())
}

async fn plan(
    conn: &ConnArgs,
    tune: &args::TuneArgs,
    key: &str,
    cancel: &CancellationToken,
) -> Result<(), CliError> {
    let mut s = Session::open(conn, cancel).await?;
    // Only an explicit --block-size changes the plan shown: by default show
    // what any client would get.
    let block_size = tune
        .block_size
        .and(session::Tuning::new(s.caps, tune).block_size);
    let w = s.waits.clone();
    let p = w
        .bounded(Subject::File(key), s.client.file_get(key, block_size))
        .await?;
    say(format_args!("key: {}", p.key));
    say(format_args!("size: {}", p.size));
    say(format_args!("total_block: {}", p.total_block));
    say(format_args!("block_size: {}", p.block_size));
    say(format_args!("md5: {}", p.md5));
    Ok(())
}

async fn data(
    conn: &ConnArgs,
    cmd: DataCommand,
    cancel: &CancellationToken,
) -> Result<(), CliError> {
    // Parse before connecting: a quoting mistake should not cost a login.
    let record = match &cmd {
        DataCommand::Save { json, .. } => match serde_json::from_str::<Value>(json) {
            Ok(Value::Object(map)) => Some(map),
            Ok(_) => {
                return Err(CliError::Usage(
                    "the record must be a JSON object, such as '{\"name\": \"otter\"}'".into(),
                ));
            }
            Err(e) => {
                return Err(CliError::Usage(format!(
                    "the record is not valid JSON: {e}"
                )));
            }
        },
        _ => None,
    };
    let mut s = Session::open(conn, cancel).await?;
    let w = s.waits.clone();
    match cmd {
        DataCommand::Save { key, .. } => {
            let subject = Subject::Data(key.as_deref().unwrap_or(""));
            let record = record.unwrap_or_default();
            let saved = w
                .bounded(subject, s.client.data_save(key.as_deref(), record))
                .await?;
            say(format_args!("Key: {saved}"));
        }
        DataCommand::Get { key } => {
            let record = w
                .bounded(Subject::Data(&key), s.client.data_get(&key))
                .await?;
            let text = serde_json::to_string_pretty(&Value::Object(record))
                .unwrap_or_else(|_| "{}".into());
            say(text);
        }
        DataCommand::Delete { key } => {
            w.bounded(Subject::Data(&key), s.client.data_delete(&key))
                .await?;
            if !conn.quiet {
                say(format_args!("Deleted {key}"));
            }
        }
    }
    Ok(())
}
