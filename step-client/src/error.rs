//! Every failure a user can meet, each worded as one line that says what to do.

use std::io;
use std::path::PathBuf;

use step_core::{ClientError, CodecError, Problem};

/// What a transfer stopped by Ctrl-C says first.
const INTERRUPTED: &str = "interrupted";

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
    #[error("{what} {key:?} already exists on the server; {hint}")]
    KeyExists {
        what: &'static str,
        key: String,
        hint: &'static str,
    },
    #[error(
        "the server at {addr} cannot replace files (it does not offer the replace extension): \
         delete {key:?} first (step-client delete {key}), then upload it again"
    )]
    CannotReplace { addr: String, key: String },
    #[error(
        "the server at {addr} cannot list files (it does not offer the FILE LIST extension, \
         as the course's reference server does not); name the files you want instead"
    )]
    CannotList { addr: String },
    #[error(
        "{addr} is an HTTP server, not a STEP server: give the STEP server's port (1379 unless it \
         was started with another --port); a gateway's web address is for a browser or curl"
    )]
    HttpServer { addr: String },
    #[error(
        "{addr} speaks TLS: add --tls (and --ca-cert FILE if its certificate is not from a \
         public authority)"
    )]
    TlsServer { addr: String },
    #[error(
        "{addr} closed the connection without answering the login: if it is a TLS port, add \
         --tls; otherwise the server is turning connections away (at its limit, or stopping)"
    )]
    ClosedAtLogin { addr: String },
    #[error(
        "another upload to {key:?} took its place on the server (the same account uploaded other \
         bytes under this name meanwhile); nothing of this upload is kept: see what is there with \
         `step-client list`, and upload again with --overwrite to replace it"
    )]
    Superseded { key: String },
    #[error(
        "the unfinished upload of {key:?} is gone from the server (deleted, or expired after \
         being left idle); run the same command again to start over"
    )]
    UploadGone { key: String },
    #[error("{cause}: {kept} — rerun the same command to resume")]
    Stopped { cause: String, kept: String },
    #[error("interrupted")]
    Interrupted,
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
        /// The row of the refusal table it names.
        problem: Option<Problem>,
    },
    #[error("connection lost to {addr} ({reason})")]
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
    List,
}

/// The first four bytes of an HTTP answer (`HTTP/1.1 ...`) read as a STEP
/// frame's JSON length.
const HTTP_AS_LENGTH: u64 = u32::from_be_bytes(*b"HTTP") as u64;

impl CliError {
    /// Turn a protocol-level failure into the user's terms.
    // Long on purpose: a flat table from each protocol failure to its words.
    pub fn from_client(err: ClientError, addr: &str, subject: Subject<'_>) -> CliError {
        if let ClientError::Codec(CodecError::JsonTooLong { len, .. }) = &err {
            // A TLS record starts with its type (0x15 alert, 0x16
            // handshake) and version 3.x.
            if *len == HTTP_AS_LENGTH {
                return CliError::HttpServer {
                    addr: addr.to_owned(),
                };
            } else if matches!(len >> 16, 0x1503 | 0x1603) {
                return CliError::TlsServer {
                    addr: addr.to_owned(),
                };
            }
        }
        match (err.problem(), subject) {
            (Some(Problem::WrongPassword), Subject::Login(user)) => {
                return CliError::WrongPassword {
                    user: user.to_owned(),
                };
            }
            (Some(Problem::KeyExists), Subject::File(key)) => {
                return CliError::KeyExists {
                    what: "file",
                    key: key.to_owned(),
                    hint: "pass --overwrite to replace it, or --key to store it under another name",
                };
            }
            (Some(Problem::KeyExists), Subject::Data(key)) => {
                return CliError::KeyExists {
                    what: "record",
                    key: key.to_owned(),
                    hint: "delete it first or choose another --key",
                };
            }
            (Some(Problem::Superseded), Subject::File(key)) => {
                return CliError::Superseded {
                    key: key.to_owned(),
                };
            }
            // The reference also answers 404 for an upload that never
            // finished; our reasons of 404 say more than "not found".
            (Some(p), Subject::File(key)) if p.is_gone() => {
                return CliError::NotFound {
                    what: "file",
                    key: key.to_owned(),
                };
            }
            (Some(p), Subject::Data(key)) if p.is_gone() => {
                return CliError::NotFound {
                    what: "record",
                    key: key.to_owned(),
                };
            }
            _ => {}
        }
        let addr = addr.to_owned();
        let problem = err.problem();
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
                problem,
            },
            ClientError::Io(e) => CliError::Connection {
                addr,
                reason: io_reason(&e),
            },
            ClientError::Closed | ClientError::Codec(CodecError::Truncated { .. }) => {
                CliError::Connection {
                    addr,
                    reason: "the server closed the connection".into(),
                }
            }
            ClientError::Codec(CodecError::Io(e)) => CliError::Connection {
                addr,
                reason: io_reason(&e),
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

    /// Ctrl-C, in either form: the process exits with 130 as shells expect.
    pub fn is_interrupt(&self) -> bool {
        match self {
            CliError::Interrupted => true,
            CliError::Stopped { cause, .. } => cause == INTERRUPTED,
            _ => false,
        }
    }

    /// The connection broke or went silent mid-way: what arrived is worth
    /// keeping, and the same command may well work now.
    pub fn is_interruption(&self) -> bool {
        matches!(
            self,
            CliError::Connection { .. } | CliError::Timeout { .. } | CliError::Interrupted
        )
    }

    /// A transfer stopped by `self` (an interruption), with what was kept.
    pub fn stopped(self, kept: String) -> CliError {
        let cause = match self {
            CliError::Interrupted => INTERRUPTED.to_owned(),
            CliError::Connection { addr, reason } => {
                format!("connection lost to {addr} ({reason})")
            }
            CliError::Timeout { addr, secs } => {
                format!("connection lost: {addr} sent nothing for {secs} s")
            }
            other => return other,
        };
        CliError::Stopped { cause, kept }
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
            "file \"k\" already exists on the server; pass --overwrite to replace it, or --key to \
             store it under another name"
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
            "connection lost to h:1 (the server closed the connection)"
        );
        let pipe = ClientError::Codec(CodecError::Io(io::Error::from(io::ErrorKind::BrokenPipe)));
        let e = CliError::from_client(pipe, "h:1", Subject::File("k")).stopped("3 of 9".into());
        assert_eq!(
            e.to_string(),
            "connection lost to h:1 (broken pipe): 3 of 9 — rerun the same command to resume"
        );
        assert!(!e.is_interrupt());
        assert!(CliError::Interrupted.stopped(String::new()).is_interrupt());
    }

    #[test]
    fn other_protocols_are_named() {
        let frame = |first: &[u8; 4]| {
            ClientError::Codec(CodecError::JsonTooLong {
                len: u64::from(u32::from_be_bytes(*first)),
                max: 1 << 20,
            })
        };
        let http = CliError::from_client(frame(b"HTTP"), "h:80", Subject::Login("u"));
        assert!(matches!(http, CliError::HttpServer { .. }), "{http}");
        let tls = CliError::from_client(frame(&[0x15, 3, 3, 0]), "h:1", Subject::Login("u"));
        assert!(matches!(tls, CliError::TlsServer { .. }), "{tls}");
        let other = CliError::from_client(frame(b"\0\x10\0\0"), "h:1", Subject::Login("u"));
        assert!(matches!(other, CliError::Protocol { .. }), "{other}");
    }
}
