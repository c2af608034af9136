//! `step-client`: the course's STEP client, native, resumable and quick.

mod args;
mod download;
mod error;
mod progress;
mod session;
mod upload;

use std::fmt::Display;
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use serde_json::Value;

use crate::args::{Cli, Command, ConnArgs, DataCommand, UploadArgs, normalize_args};
use crate::error::{CliError, Subject};
use crate::session::{Session, bounded};

/// Print a line on stdout. A closed pipe (`| head`) is not worth a panic,
/// which is what `println!` would do.
pub fn say(line: impl Display) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(normalize_args(std::env::args_os()));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("step-client: error: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("step-client: error: {e}");
            match e {
                CliError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let Cli {
        conn,
        tune,
        file,
        key,
        command,
    } = cli;
    match command {
        None => match file {
            Some(file) => upload::run(&conn, &tune, &file, key).await,
            None => Err(CliError::Usage(
                "nothing to do: give -f FILE to upload, or a subcommand (see --help)".into(),
            )),
        },
        Some(_) if file.is_some() || key.is_some() => Err(CliError::Usage(
            "-f and --key before a subcommand only go with an upload without one; put them after it"
                .into(),
        )),
        Some(Command::Upload(UploadArgs {
            file,
            file_flag,
            key,
        })) => match file.or(file_flag) {
            Some(file) => upload::run(&conn, &tune, &file, key).await,
            None => Err(CliError::Usage("upload needs a FILE".into())),
        },
        Some(Command::Download { key, output, force }) => {
            download::run(&conn, &tune, &key, output, force).await
        }
        Some(Command::Delete { key }) => delete(&conn, &key).await,
        Some(Command::Plan { key }) => plan(&conn, &tune, &key).await,
        Some(Command::Data(cmd)) => data(&conn, cmd).await,
    }
}

async fn delete(conn: &ConnArgs, key: &str) -> Result<(), CliError> {
    let mut s = Session::open(conn).await?;
    bounded(
        &s.addr,
        s.timeout,
        Subject::File(key),
        s.client.file_delete(key),
    )
    .await?;
    if !conn.quiet {
        say(format_args!("Deleted {key}"));
    }
    Ok(())
}

async fn plan(conn: &ConnArgs, tune: &args::TuneArgs, key: &str) -> Result<(), CliError> {
    let mut s = Session::open(conn).await?;
    // Only an explicit --block-size changes the plan shown: by default show
    // what any client would get.
    let block_size = tune
        .block_size
        .and(session::Tuning::new(s.caps, tune).block_size);
    let p = bounded(
        &s.addr,
        s.timeout,
        Subject::File(key),
        s.client.file_get(key, block_size),
    )
    .await?;
    say(format_args!("key: {}", p.key));
    say(format_args!("size: {}", p.size));
    say(format_args!("total_block: {}", p.total_block));
    say(format_args!("block_size: {}", p.block_size));
    say(format_args!("md5: {}", p.md5));
    Ok(())
}

async fn data(conn: &ConnArgs, cmd: DataCommand) -> Result<(), CliError> {
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
    let mut s = Session::open(conn).await?;
    let (addr, timeout) = (s.addr.clone(), s.timeout);
    match cmd {
        DataCommand::Save { key, .. } => {
            let subject = Subject::Data(key.as_deref().unwrap_or(""));
            let saved = bounded(
                &addr,
                timeout,
                subject,
                s.client
                    .data_save(key.as_deref(), record.unwrap_or_default()),
            )
            .await?;
            say(format_args!("Key: {saved}"));
        }
        DataCommand::Get { key } => {
            let record =
                bounded(&addr, timeout, Subject::Data(&key), s.client.data_get(&key)).await?;
            let text = serde_json::to_string_pretty(&Value::Object(record))
                .unwrap_or_else(|_| "{}".into());
            say(text);
        }
        DataCommand::Delete { key } => {
            bounded(
                &addr,
                timeout,
                Subject::Data(&key),
                s.client.data_delete(&key),
            )
            .await?;
            if !conn.quiet {
                say(format_args!("Deleted {key}"));
            }
        }
    }
    Ok(())
}
