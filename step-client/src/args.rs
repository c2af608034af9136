//! The command line: the course handout's single-dash flags, clap for the rest.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Native STEP v1.1 client.
///
/// With `-f FILE` and no subcommand it uploads, as the course's Python client
/// does: `step-client -server_ip 127.0.0.1 -id 123456 -f otter.jpg`.
#[derive(Parser, Debug)]
#[command(name = "step-client", version)]
pub struct Cli {
    #[command(flatten)]
    pub conn: ConnArgs,
    #[command(flatten)]
    pub tune: TuneArgs,
    /// File to upload when no subcommand is given.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Key to store the upload under (default: the file's name).
    #[arg(long, value_name = "KEY")]
    pub key: Option<String>,
    /// Replace the file if the key already holds one (with -f).
    #[arg(long)]
    pub overwrite: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Server address (name or IP).
    #[arg(
        long = "server-ip",
        env = "STEP_SERVER",
        default_value = "127.0.0.1",
        global = true
    )]
    pub server_ip: String,
    /// Server port.
    #[arg(long, env = "STEP_PORT", default_value_t = step_core::DEFAULT_PORT, global = true)]
    pub port: u16,
    /// User id; also the password's source (md5 of the id) on servers in
    /// open mode.
    #[arg(long, alias = "username", env = "STEP_ID", global = true)]
    pub id: Option<String>,
    /// Password, for servers with accounts (`--auth accounts`). Prefer
    /// STEP_PASSWORD or the prompt (asked when the md5(id) login is refused
    /// and stdin is a terminal): a flag shows in `ps` and shell history.
    #[arg(long, env = "STEP_PASSWORD", hide_env_values = true, global = true)]
    pub password: Option<String>,
    /// Speak STEP over TLS (a server's --tls-port), verifying its certificate
    /// against --server-ip's name.
    #[arg(long, env = "STEP_TLS", global = true)]
    pub tls: bool,
    /// PEM file of the CA certificate(s) to trust with --tls (default: the
    /// system's root certificates).
    #[arg(long, env = "STEP_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Print only results and errors: no progress.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also print the login token, what the server offers and how the
    /// transfer uses it (on stderr).
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Where unfinished uploads are remembered, so that running the same
    /// command again resumes them (default: the user's state directory,
    /// e.g. ~/.local/state/step-client).
    #[arg(long, env = "STEP_STATE_DIR", value_name = "DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Seconds to wait for the server to connect or answer before giving up.
    #[arg(
        long,
        env = "STEP_TIMEOUT",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=31_536_000),
        global = true
    )]
    pub timeout: u64,
}

/// Transfer tuning; left unset, each is chosen from what the server announces.
#[derive(Args, Debug, Clone, Default)]
pub struct TuneArgs {
    /// Requests in flight per connection (forced to 1 on servers that do not
    /// announce pipelining, such as the reference server).
    #[arg(long, global = true)]
    pub window: Option<usize>,
    /// Connections for one transfer (forced to 1 on servers that do not
    /// announce pipelining).
    #[arg(long, global = true)]
    pub connections: Option<usize>,
    /// Block size in bytes, for servers that offer larger blocks (clamped to
    /// 20480..=the server's maximum).
    #[arg(long, global = true)]
    pub block_size: Option<u64>,
    /// Cap the transfer rate of uploads and downloads, e.g. 500K or 8M
    /// (bytes per second).
    #[arg(long, value_parser = parse_rate, value_name = "RATE", global = true)]
    pub limit_rate: Option<u64>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Upload a file (the default when -f is given).
    Upload(UploadArgs),
    /// Download a file by key; its md5 is checked against the server's plan.
    Download {
        key: String,
        /// Where to save it (default: the key's file name in the current directory).
        #[arg(short, long, value_name = "PATH")]
        output: Option<PathBuf>,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Delete files by key.
    Delete {
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// List your files: size, when each was completed, name.
    List {
        /// Only keys starting with this, such as `docs/`.
        prefix: Option<String>,
        /// Print a JSON array (key, size, md5, last_modified in Unix seconds).
        #[arg(long)]
        json: bool,
    },
    /// Show a file's download plan (size, blocks, md5).
    Plan { key: String },
    /// DATA records: small JSON objects kept per user.
    #[command(subcommand)]
    Data(DataCommand),
}

#[derive(Args, Debug)]
pub struct UploadArgs {
    /// File to upload.
    #[arg(value_name = "FILE", required_unless_present = "file_flag")]
    pub file: Option<PathBuf>,
    /// File to upload (the handout's spelling).
    #[arg(
        short = 'f',
        long = "file",
        id = "file_flag",
        value_name = "FILE",
        conflicts_with = "file"
    )]
    pub file_flag: Option<PathBuf>,
    /// Key to store it under (default: the file's name).
    #[arg(long)]
    pub key: Option<String>,
    /// Replace the file if the key already holds one.
    #[arg(long)]
    pub overwrite: bool,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Store a JSON object; prints its key.
    Save {
        /// Key (default: one the server picks).
        #[arg(long)]
        key: Option<String>,
        /// The record, a JSON object such as '{"name": "otter"}'.
        json: String,
    },
    /// Print a record as JSON.
    Get { key: String },
    /// Delete a record.
    Delete { key: String },
}

/// The single-dash and underscore spellings the course clients accept, and
/// what clap knows them as.
const SPELLINGS: &[(&str, &str)] = &[
    ("-server_ip", "--server-ip"),
    ("--server_ip", "--server-ip"),
    ("-id", "--id"),
    ("-username", "--id"),
    ("-port", "--port"),
    ("-key", "--key"),
    ("-file", "--file"),
    ("--f", "--file"),
];

/// Rewrite the handout's spellings so clap can parse them. Only whole flag
/// tokens (or `flag=value`) are touched, and nothing after `--`, so values
/// that merely look like flags survive.
pub fn normalize_args<I>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = OsString>,
{
    let mut out = Vec::new();
    let mut done = false;
    for arg in args {
        if done {
            out.push(arg);
            continue;
        }
        let Some(text) = arg.to_str() else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            done = true;
            out.push(arg);
            continue;
        }
        let (name, value) = match text.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (text, None),
        };
        match SPELLINGS.iter().find(|(from, _)| *from == name) {
            Some((_, to)) => out.push(match value {
                Some(v) => OsString::from(format!("{to}={v}")),
                None => OsString::from(*to),
            }),
            None => out.push(arg),
        }
    }
    out
}

/// What to say when the command line does not parse: clap's own words,
/// except for a lone word that names a file (`step-client otter.jpg`), which
/// gets a hint in one line. Returns the exit status.
pub fn explain(err: &clap::Error) -> std::process::ExitCode {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let word = match (err.kind(), err.get(ContextKind::InvalidSubcommand)) {
        (ErrorKind::InvalidSubcommand, Some(ContextValue::String(w))) => Some(w.as_str()),
        _ => None,
    };
    match word.filter(|w| looks_like_a_file(w)) {
        Some(w) => {
            eprintln!(
                "step-client: error: {w:?} is not a command; did you mean `step-client upload {w}`?"
            );
            std::process::ExitCode::from(2)
        }
        None => {
            let _ = err.print();
            std::process::ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2))
        }
    }
}

/// An existing path, or a word shaped like a file name: no command has a
/// dot or a slash in it.
fn looks_like_a_file(word: &str) -> bool {
    word.contains(['.', '/']) || std::path::Path::new(word).exists()
}

/// `500K`, `8M`, `1G` (powers of 1024) or plain bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, mult) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                _ => return Err(format!("unknown unit in {s:?} (use K, M or G)")),
            };
            (&s[..i], mult)
        }
        _ => (s, 1),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a rate such as 500K or 8M"))?;
    match n.checked_mul(mult) {
        Some(0) => Err("the rate must be above zero".into()),
        Some(r) => Ok(r),
        None => Err(format!("{s:?} is too large")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(normalize_args(args.iter().map(OsString::from)))
    }

    #[test]
    fn handout_invocation_parses() {
        let cli = parse(&[
            "step-client",
            "-server_ip",
            "10.0.0.7",
            "-id",
            "123456",
            "-f",
            "otter.jpg",
        ])
        .expect("parses");
        assert_eq!(cli.conn.server_ip, "10.0.0.7");
        assert_eq!(cli.conn.id.as_deref(), Some("123456"));
        assert_eq!(cli.file, Some(PathBuf::from("otter.jpg")));
        assert!(cli.command.is_none());
        assert_eq!(cli.conn.port, 1379);
    }

    #[test]
    fn course_client_spellings_parse() {
        let cli = parse(&[
            "step-client",
            "--server_ip=1.2.3.4",
            "-port",
            "4000",
            "--id",
            "u",
            "--f",
            "a.bin",
        ])
        .expect("parses");
        assert_eq!(cli.conn.server_ip, "1.2.3.4");
        assert_eq!(cli.conn.port, 4000);
        assert_eq!(cli.file, Some(PathBuf::from("a.bin")));
    }

    #[test]
    fn subcommands_take_global_flags_anywhere() {
        let cli = parse(&[
            "step-client",
            "download",
            "k",
            "-o",
            "out",
            "-id",
            "7",
            "--force",
        ])
        .expect("parses");
        assert_eq!(cli.conn.id.as_deref(), Some("7"));
        match cli.command {
            Some(Command::Download { key, output, force }) => {
                assert_eq!(key, "k");
                assert_eq!(output, Some(PathBuf::from("out")));
                assert!(force);
            }
            other => panic!("wrong command {other:?}"),
        }
        let cli = parse(&[
            "step-client",
            "-id",
            "7",
            "upload",
            "-f",
            "x",
            "--key",
            "y",
            "--overwrite",
        ])
        .expect("parses");
        assert!(matches!(
            cli.command,
            Some(Command::Upload(UploadArgs {
                file_flag: Some(_),
                overwrite: true,
                ..
            }))
        ));
        assert!(parse(&["step-client", "upload"]).is_err());
        assert!(
            parse(&["step-client", "delete"]).is_err(),
            "delete needs a key"
        );
        let cli = parse(&["step-client", "list", "docs/", "--json", "-v"]).expect("parses");
        assert!(cli.conn.verbose);
        assert!(matches!(
            cli.command,
            Some(Command::List { json: true, .. })
        ));
        assert!(parse(&["step-client", "-q", "-v", "list"]).is_err());
    }

    #[test]
    fn values_after_double_dash_are_untouched() {
        let out = normalize_args(["a", "data", "save", "--", "-id"].map(OsString::from));
        assert_eq!(out.last().map(|s| s.as_os_str()), Some("-id".as_ref()));
    }

    #[test]
    fn only_file_like_words_get_the_upload_hint() {
        assert!(looks_like_a_file("otter.jpg"));
        assert!(looks_like_a_file("dir/x"));
        assert!(!looks_like_a_file("lsit"));
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("500K"), Ok(500 << 10));
        assert_eq!(parse_rate("8m"), Ok(8 << 20));
        assert_eq!(parse_rate("1234"), Ok(1234));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("5X").is_err());
    }
}
