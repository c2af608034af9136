//! The real `step-server` binary: `step-server user add|list|passwd|remove`
//! against a running server's data directory (password on stdin), LOGIN
//! following each change, refusals logged with user and peer,
//! `--accounts-file` imported at start, and the open-mode warning.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use step_core::StepClient;
use step_core::digest::password_for;
use support::ServerProc;

const BIN: &str = env!("CARGO_BIN_EXE_step-server");

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// `step-server --data-dir DIR ARGS`, `stdin` as its standard input.
fn cli(dir: &Path, args: &[&str], stdin: &str) -> Out {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(args)
        .env_remove("STEP_AUTH")
        .env_remove("STEP_DATA_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The log without its colour escapes (`ESC [ ... m`).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for e in chars.by_ref() {
                if e == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn login_status(server: &ServerProc, user: &str, password: &str) -> u64 {
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    match c.login(user, password).await {
        Ok(_) => 200,
        Err(e) => u64::from(e.status().expect("a refusal").code()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_commands_manage_the_accounts_a_running_server_checks() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, log) = (tmp.path().join("data"), tmp.path().join("server.log"));

    let added = cli(&dir, &["user", "add", "alice"], "first secret\n");
    assert!(added.ok, "{}", added.stderr);
    assert_eq!(added.stdout, "added user alice\n");
    let again = cli(&dir, &["user", "add", "alice"], "other\n");
    assert!(
        !again.ok && again.stderr.contains("exists"),
        "{}",
        again.stderr
    );
    let empty = cli(&dir, &["user", "add", "bob"], "\n");
    assert!(
        !empty.ok && empty.stderr.contains("empty password"),
        "{}",
        empty.stderr
    );
    let listed = cli(&dir, &["user", "list"], "");
    assert!(listed.ok, "{}", listed.stderr);
    assert_eq!(listed.stdout, "alice\n", "bob was not added");

    let server = ServerProc::start(&dir, &log, &["--auth", "accounts"]).await;
    assert_eq!(login_status(&server, "alice", "first secret").await, 200);
    assert_eq!(
        login_status(&server, "alice", &password_for("alice")).await,
        401,
        "the course rule is refused"
    );
    assert_eq!(login_status(&server, "bob", "anything").await, 401);

    // Changed while the server runs: the next LOGIN sees it.
    let passwd = cli(&dir, &["user", "passwd", "alice"], "second secret\r\n");
    assert!(passwd.ok, "{}", passwd.stderr);
    assert_eq!(login_status(&server, "alice", "second secret").await, 200);
    assert_eq!(login_status(&server, "alice", "first secret").await, 401);
    let nobody = cli(&dir, &["user", "passwd", "nobody"], "x\n");
    assert!(
        !nobody.ok && nobody.stderr.contains("no user"),
        "{}",
        nobody.stderr
    );

    let removed = cli(&dir, &["user", "remove", "alice"], "");
    assert!(removed.ok, "{}", removed.stderr);
    assert_eq!(login_status(&server, "alice", "second secret").await, 401);
    let twice = cli(&dir, &["user", "remove", "alice"], "");
    assert!(
        !twice.ok && twice.stderr.contains("no user"),
        "{}",
        twice.stderr
    );
    assert_eq!(cli(&dir, &["user", "list"], "").stdout, "");
    server.terminate();

    // Every refusal was logged at WARN with the user and the peer.
    let text = strip_ansi(&std::fs::read_to_string(&log).expect("log"));
    let refusals: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("login refused"))
        .collect();
    assert_eq!(refusals.len(), 4, "{text}");
    for line in &refusals {
        assert!(line.contains("WARN"), "{line}");
        assert!(line.contains("peer=127.0.0.1:"), "{line}");
        assert!(
            line.contains("username=alice") || line.contains("username=bob"),
            "{line}"
        );
        assert!(!line.contains("secret"), "no password in the log: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accounts_file_is_imported_at_start() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (dir, log) = (tmp.path().join("data"), tmp.path().join("server.log"));
    let hash = cli(&dir, &["user", "hash"], "from the file\n");
    assert!(hash.ok, "{}", hash.stderr);
    let hash = hash.stdout.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    // An existing account named in the file gets the file's password.
    assert!(cli(&dir, &["user", "add", "carol"], "old-password\n").ok);
    let file = tmp.path().join("accounts");
    std::fs::write(&file, format!("# comment\n\ncarol:{hash}\ndave:{hash}\n")).expect("write");
    let file_arg = file.to_str().expect("utf-8 path");
    let server = ServerProc::start(
        &dir,
        &log,
        &["--auth", "accounts", "--accounts-file", file_arg],
    )
    .await;
    assert_eq!(login_status(&server, "carol", "from the file").await, 200);
    assert_eq!(login_status(&server, "dave", "from the file").await, 200);
    assert_eq!(login_status(&server, "carol", "old-password").await, 401);
    server.terminate();

    // A bad line stops the start, naming the line, and changes nothing.
    std::fs::write(&file, "erin:$argon2id$x\nnot a line\n").expect("write");
    let out = Command::new(BIN)
        .args(["--ip", "127.0.0.1", "--port", "0", "--auth", "accounts"])
        .arg("--data-dir")
        .arg(&dir)
        .arg("--accounts-file")
        .arg(&file)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 1"), "{stderr}");
    assert_eq!(
        cli(&dir, &["user", "list"], "").stdout,
        "carol\ndave\n",
        "nothing imported"
    );
}

#[tokio::test]
async fn open_mode_warns_when_other_hosts_can_reach_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "--ip",
            "0.0.0.0",
            "--port",
            "0",
            "--log",
            "warn",
            "--token-secret",
            "s",
        ])
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .env_remove("STEP_AUTH")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn");
    let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut line),
    )
    .await
    .expect("a warning at start")
    .expect("read");
    assert!(
        line.contains("WARN") && line.contains("open mode"),
        "{line}"
    );
    assert!(line.contains("--auth accounts"), "says what to do: {line}");
    child.kill().await.expect("kill");

    // On loopback, or in accounts mode, no such warning: once the server
    // answers, everything it says at start has been said.
    for args in [
        ["--ip", "127.0.0.1", "--auth", "open"],
        ["--ip", "0.0.0.0", "--auth", "accounts"],
    ] {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = tokio::process::Command::new(BIN)
            .args(args)
            .args([
                "--port",
                &port.to_string(),
                "--log",
                "warn",
                "--token-secret",
                "s",
            ])
            .arg("--data-dir")
            .arg(tmp.path().join("data"))
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let up = async {
            while tokio::net::TcpStream::connect(addr).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), up)
            .await
            .expect("server up");
        let pid = child.id().expect("pid").to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let out = child.wait_with_output().await.expect("wait");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains("open mode"), "{args:?}: {text}");
    }
}
