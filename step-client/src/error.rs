//! Every failure a user can meet, each worded as one line that says what to do.

use std::io;
use std::path::PathBuf;

use step_core::{ClientError, Status};

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the STEP server at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the STEP server at {addr} did not answer within {secs} s")]
    Timeout { addr: String, secs: u64 },
    #[error(
        "wrong user or password for {user:?} (the server refused the login); a server with \
         accounts needs the password: STEP_PASSWORD, --password, or run in a terminal to be asked"
    )]
    WrongPassword { user: String },
    #[error("{what} {key:?} already exists on the server; delete it first or choose another --key")]
    KeyExists { what: &'static str, key: String },
    #[error("{what} {key:?} is not on the server")]
    NotFound { what: &'static str, key: String },
    #[error("cannot read {}: {reason}", path.display())]
    FileUnreadable { path: PathBuf, reason: String },
    #[error("{} changed while it was being uploaded; upload it again", path.display())]
    FileChanged { path: PathBuf },
    #[error("{} already exists; pass --force to overwrite it", path.display())]
    TargetExists { path: PathBuf },
    #[error("disk full while writing {}; nothing was saved", path.display())]
    DiskFull { path: PathBuf },
    #[error("cannot write {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    #[error("md5 mismatch for {what}: local {local}, server {server}{hint}")]
    Md5Mismatch {
        what: String,
        local: String,
        server: String,
        hint: &'static str,
    },
    #[error("the server cannot take this: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Usage(String),
    #[error("{operation} refused by the server: {message} (status {code})")]
    Refused {
        operation: String,
        code: u64,
        message: String,
    },
    #[error("the connection to {addr} failed: {reason}")]
    Connection { addr: String, reason: String },
    #[error("the server at {addr} broke the protocol: {reason}")]
    Protocol { addr: String, reason: String },
}

/// What a failing request was about, so a bare status code can become a
/// sentence naming the key the user typed.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    Login(&'a str),
    File(&'a str),
    Data(&'a str),
}

impl CliError {
    /// Turn a protocol-level failure into the user's terms.
    pub fn from_client(err: ClientError, addr: &str, subject: Subject<'_>) -> CliError {
        match (err.status(), subject) {
            (Some(Status::WrongPassword), Subject::Login(user)) => {
                return CliError::WrongPassword {
                    user: user.to_owned(),
                };
            }
            (Some(Status::KeyExists), Subject::File(key)) => {
                return CliError::KeyExists {
                    what: "file",
                    key: key.to_owned(),
                };
            }
            (Some(Status::KeyExists), Subject::Data(key)) => {
                return CliError::KeyExists {
                    what: "record",
                    key: key.to_owned(),
                };
            }
            // The reference also answers 404 for an upload that never finished.
            (Some(Status::NotFound), Subject::File(key)) => {
                return CliError::NotFound {
                    what: "file",
                    key: key.to_owned(),
                };
            }
            (Some(Status::NotFound), Subject::Data(key)) => {
                return CliError::NotFound {
                    what: "record",
                    key: key.to_owned(),
                };
            }
            _ => {}
        }
        let addr = addr.to_owned();
        match err {
            ClientError::Refused {
                operation,
                code,
                message,
                ..
            } => CliError::Refused {
                operation,
                code,
                message: one_line(&message),
            },
            ClientError::Io(e) => CliError::Connection {
                addr,
                reason: io_reason(&e),
            },
            ClientError::Closed => CliError::Connection {
                addr,
                reason: "the server closed the connection".into(),
            },
            ClientError::Broken(why) => CliError::Connection {
                addr,
                reason: one_line(&why),
            },
            ClientError::Codec(e) => CliError::Protocol {
                addr,
                reason: one_line(&e.to_string()),
            },
            ClientError::Protocol(m) | ClientError::Source(m) => CliError::Protocol {
                addr,
                reason: one_line(&m),
            },
            ClientError::TimedOut(t) => CliError::Timeout {
                addr,
                secs: t.as_secs(),
            },
            // Callers that write what arrives report their own file's error
            // (`CliError::write`) before mapping the rest here.
            ClientError::Sink(e) => CliError::Protocol {
                addr,
                reason: one_line(&format!("local write failed: {e}")),
            },
            ClientError::NotLoggedIn => CliError::Protocol {
                addr,
                reason: "request sent before logging in".into(),
            },
        }
    }

    /// A local write failed: disk full is common enough to deserve its own words.
    pub fn write(path: PathBuf, e: &io::Error) -> CliError {
        match e.kind() {
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
                CliError::DiskFull { path }
            }
            _ => CliError::Write {
                path,
                reason: io_reason(e),
            },
        }
    }

    pub fn unreadable(path: PathBuf, e: &io::Error) -> CliError {
        CliError::FileUnreadable {
            path,
            reason: io_reason(e),
        }
    }
}

/// An io error's text without the "(os error N)" suffix users do not need.
pub fn io_reason(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(i) => text[..i].to_owned(),
        None => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// Server-supplied text may hold newlines; the error must stay one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u64) -> ClientError {
        ClientError::Refused {
            operation: "SAVE".into(),
            code,
            message: "multi\nline".into(),
            reason: None,
        }
    }

    #[test]
    fn statuses_become_sentences() {
        let e = CliError::from_client(refused(401), "a:1", Subject::Login("bob"));
        assert!(matches!(e, CliError::WrongPassword { .. }));
        let e = CliError::from_client(refused(402), "a:1", Subject::File("k"));
        assert_eq!(
            e.to_string(),
            "file \"k\" already exists on the server; delete it first or choose another --key"
        );
        let e = CliError::from_client(refused(404), "a:1", Subject::Data("k"));
        assert_eq!(e.to_string(), "record \"k\" is not on the server");
        let e = CliError::from_client(refused(406), "a:1", Subject::File("k"));
        assert_eq!(
            e.to_string(),
            "SAVE refused by the server: multi line (status 406)"
        );
    }

    #[test]
    fn io_errors_read_cleanly() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(io_reason(&e), "no such file or directory");
        let full = io::Error::from(io::ErrorKind::StorageFull);
        assert!(matches!(
            CliError::write("x".into(), &full),
            CliError::DiskFull { .. }
        ));
        let e = CliError::from_client(ClientError::Closed, "h:1", Subject::File("k"));
        assert_eq!(
            e.to_string(),
            "the connection to h:1 failed: the server closed the connection"
        );
    }
}
