//! `list`: the user's complete files, page after page of FILE LIST (our
//! server's extension), as a table for people or a JSON array for scripts.

use chrono::{Local, TimeZone};
use step_core::Problem;
use step_core::client::{ListQuery, ListedFile};
use tokio_util::sync::CancellationToken;

use crate::args::ConnArgs;
use crate::error::{CliError, Subject};
use crate::progress::human_bytes;
use crate::say;
use crate::session::Session;

/// Entries asked for per FILE LIST (the server's most).
const PAGE: u64 = 1000;

pub async fn run(
    conn: &ConnArgs,
    prefix: Option<&str>,
    json: bool,
    cancel: &CancellationToken,
) -> Result<(), CliError> {
    let mut s = Session::open(conn, cancel).await?;
    let cannot = || CliError::CannotList {
        addr: s.addr.clone(),
    };
    if !s.caps.list {
        return Err(cannot());
    }
    let prefix = prefix.unwrap_or("");
    let w = s.waits.clone();
    let (mut count, mut bytes) = (0u64, 0u64);
    let mut after: Option<String> = None;
    if json {
        say("[");
    }
    loop {
        let query = ListQuery {
            prefix,
            after: after.as_deref(),
            limit: Some(PAGE),
        };
        let page = match w.bounded(Subject::List, s.client.file_list(query)).await {
            Ok(page) => page,
            // Announced but refused as an unknown operation: as good as absent.
            Err(CliError::Refused {
                problem: Some(Problem::WrongOperation),
                ..
            }) => return Err(cannot()),
            Err(e) => return Err(e),
        };
        for file in &page.files {
            if json {
                let text = serde_json::to_string(file).unwrap_or_default();
                let comma = if count > 0 { "," } else { " " };
                say(format_args!("{comma}{text}"));
            } else {
                say(row(file));
            }
            count += 1;
            bytes = bytes.saturating_add(file.size);
        }
        match page.next {
            // A server that repeats a cursor would loop forever.
            Some(next) if Some(&next) != after.as_ref() && !page.files.is_empty() => {
                after = Some(next);
            }
            _ => break,
        }
    }
    if json {
        say("]");
    } else if count == 0 {
        match prefix {
            "" => say("No files on the server yet"),
            p => say(format_args!("No files under {p:?}")),
        }
    } else if !conn.quiet {
        let files = if count == 1 { "file" } else { "files" };
        say(format_args!(
            "{count} {files}, {} in all",
            human_bytes(bytes)
        ));
    }
    Ok(())
}

/// `   1.5 MiB  2026-12-05 14:03  docs/report.pdf`: size, local time the
/// file was completed, key (quoted when it holds control characters, so
/// one file stays one line).
fn row(file: &ListedFile) -> String {
    let when = Local
        .timestamp_opt(i64::try_from(file.last_modified).unwrap_or(0), 0)
        .single()
        .filter(|_| file.last_modified > 0)
        .map_or_else(
            || "-".repeat(16),
            |t| t.format("%Y-%m-%d %H:%M").to_string(),
        );
    let key = if file.key.chars().any(char::is_control) {
        format!("{:?}", file.key)
    } else {
        file.key.clone()
    };
    format!("{:>10}  {when}  {key}", human_bytes(file.size))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(key: &str, size: u64, last_modified: u64) -> ListedFile {
        ListedFile {
            key: key.into(),
            size,
            md5: String::new(),
            last_modified,
            upload_id: None,
        }
    }

    #[test]
    fn rows_line_up_and_stay_one_line() {
        let r = row(&listed("docs/a.txt", 1536, 1_764_892_800));
        assert!(r.starts_with("   1.5 KiB  20"), "{r}");
        assert!(r.ends_with("  docs/a.txt"), "{r}");
        let r = row(&listed("evil\nname", 0, 0));
        assert!(r.contains("----------------"), "unknown date: {r}");
        assert!(r.ends_with("\"evil\\nname\""), "{r}");
        assert_eq!(r.lines().count(), 1);
    }
}
