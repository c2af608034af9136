//! Running the real `step-client` binary in the CLI tests: its output, and
//! the assertions every test makes on it.

#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::Stdio;

use step_tests::TestServer;
use tokio::process::Command;

pub const BIN: &str = env!("CARGO_BIN_EXE_step-client");

#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn of(out: std::process::Output) -> Run {
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The client with no STEP_* variables from the environment leaking in.
pub fn client(dir: &Path) -> Command {
    isolated(Command::new(BIN), dir)
}

/// `cmd` run in `dir`, with no STEP_* variables from the environment and
/// its own state directory (`dir/.step-state`): each test directory is a
/// machine of its own.
pub fn isolated(mut cmd: Command, dir: &Path) -> Command {
    cmd.current_dir(dir).kill_on_drop(true);
    for var in [
        "STEP_SERVER",
        "STEP_PORT",
        "STEP_ID",
        "STEP_PASSWORD",
        "STEP_TIMEOUT",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("STEP_STATE_DIR", dir.join(".step-state"));
    cmd
}

pub async fn run_raw(dir: &Path, args: &[&str]) -> Run {
    let out = client(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run step-client");
    Run::of(out)
}

/// `args` for the server on 127.0.0.1:`port` as `user`.
pub fn at<'a>(port: &'a str, user: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut all = vec!["--server-ip", "127.0.0.1", "--port", port, "--id", user];
    all.extend_from_slice(args);
    all
}

/// Run against `server` as `user`.
pub async fn run(server: &TestServer, dir: &Path, user: &str, args: &[&str]) -> Run {
    run_at(server.addr, dir, user, args).await
}

/// Run against the server (or proxy) at `addr` as `user`.
pub async fn run_at(addr: std::net::SocketAddr, dir: &Path, user: &str, args: &[&str]) -> Run {
    let port = addr.port().to_string();
    run_raw(dir, &at(&port, user, args)).await
}

pub fn assert_ok(r: &Run) {
    assert!(r.ok, "step-client failed: {r:?}");
}

/// A failure must be exactly one line on stderr, with no panic or debug dump.
pub fn assert_one_line_error(r: &Run, needle: &str) {
    assert!(!r.ok, "step-client should have failed: {r:?}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one line on stderr: {r:?}");
    assert!(lines[0].starts_with("step-client: error: "), "{r:?}");
    assert!(lines[0].contains(needle), "want {needle:?} in {r:?}");
    assert!(!r.stderr.contains("panicked"), "{r:?}");
}

pub fn md5_line(r: &Run) -> Option<&str> {
    r.stdout.lines().find_map(|l| l.strip_prefix("MD5: "))
}

pub fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write test file");
    p
}

/// Which way a [`CutProxy`] counts bytes before it cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toward {
    /// Bytes the client sends (an upload dies mid-way).
    Server,
    /// Bytes the server sends (a download dies mid-way).
    Client,
}

/// A TCP proxy to a server that closes each connection (both sockets, as a
/// server that died would) once `limit` bytes went one way; `pass_all`
/// lifts the limit for the connections that follow. It keeps what every
/// connection's client sent, for tests that read the requests.
#[derive(Debug)]
pub struct CutProxy {
    pub addr: std::net::SocketAddr,
    limit: std::sync::Arc<std::sync::atomic::AtomicU64>,
    sent: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(upstream: std::net::SocketAddr, toward: Toward, limit: u64) -> CutProxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limit = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(limit));
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (shared_limit, shared_sent) = (limit.clone(), sent.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let limit = shared_limit.load(Ordering::SeqCst);
                let log = {
                    let mut all = shared_sent.lock().expect("lock");
                    all.push(Vec::new());
                    (shared_sent.clone(), all.len() - 1)
                };
                conns.spawn(cut_forward(client, upstream, toward, limit, log));
                while conns.try_join_next().is_some() {}
            }
        });
        CutProxy {
            addr,
            limit,
            sent,
            task,
        }
    }

    /// Connections accepted from now on are not cut.
    pub fn pass_all(&self) {
        self.limit
            .store(u64::MAX, std::sync::atomic::Ordering::SeqCst);
    }

    /// What the client sent on each connection so far, in accept order.
    pub fn sent(&self) -> Vec<Vec<u8>> {
        self.sent.lock().expect("lock").clone()
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type SentLog = (std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>, usize);

async fn cut_forward(
    client: tokio::net::TcpStream,
    upstream: std::net::SocketAddr,
    toward: Toward,
    limit: u64,
    (log, slot): SentLog,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async {
        let mut left = if toward == Toward::Server {
            limit
        } else {
            u64::MAX
        };
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match cr.read(&mut buf[..want]).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            log.lock().expect("lock")[slot].extend_from_slice(&buf[..n]);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            left -= n as u64;
        }
    };
    let down = async {
        let mut limited = (&mut sr).take(if toward == Toward::Client {
            limit
        } else {
            u64::MAX
        });
        let _ = tokio::io::copy(&mut limited, &mut cw).await;
    };
    // Whichever side stops first, both sockets close here.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// The JSON part of each STEP frame in `bytes` (a client's side of a
/// connection), in order; a cut-short last frame is left out.
pub fn frames_json(bytes: &[u8]) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while bytes.len() >= at + 8 {
        let word = |i: usize| {
            u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]) as usize
        };
        let (json, binary) = (word(at), word(at + 4));
        let end = at + 8 + json + binary;
        if end > bytes.len() {
            break;
        }
        if let Ok(v) = serde_json::from_slice(&bytes[at + 8..at + 8 + json]) {
            out.push(v);
        }
        at = end;
    }
    out
}

/// A gateway (the real one, in this process) in front of the STEP server
/// at `step`, with `flags`; its base URL.
pub async fn start_gateway(step: std::net::SocketAddr, flags: &[&str]) -> String {
    use clap::Parser;
    let backend_addr = step.to_string();
    let mut argv = vec![
        "gateway",
        "--backend",
        &backend_addr,
        "--backend-timeout",
        "5",
    ];
    argv.extend_from_slice(flags);
    let args = gateway::config::GatewayArgs::try_parse_from(argv).expect("gateway flags");
    let anonymous = args.http.anonymous_wanted();
    let backend = gateway::backend::Backend::new(
        backend_addr,
        args.transfer,
        anonymous,
        gateway::metrics::Metrics::new(),
    );
    let state = gateway::AppState::new(backend, args.http);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(gateway::serve(
        listener,
        state,
        std::future::pending::<()>(),
    ));
    format!("http://{addr}")
}

/// "Uploading k:  30% (...)" → 30.
pub fn percent_of(line: &str) -> Option<u32> {
    let (_, rest) = line.split_once(": ")?;
    rest.trim_start().split_once('%')?.0.parse().ok()
}

/// The client running in the background, its stdout read line by line.
#[derive(Debug)]
pub struct Running {
    child: tokio::process::Child,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    stdout: String,
}

impl Running {
    /// Start the client in `dir` with `args`.
    pub fn start(dir: &Path, args: &[&str]) -> Running {
        use tokio::io::AsyncBufReadExt;
        let mut child = client(dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn step-client");
        let stdout = child.stdout.take().expect("stdout");
        Running {
            child,
            lines: tokio::io::BufReader::new(stdout).lines(),
            stdout: String::new(),
        }
    }

    /// Wait for a progress line at `percent` % or more (a throttled
    /// transfer gets there in seconds).
    pub async fn until_percent(&mut self, percent: u32) {
        let reached = tokio::time::timeout(std::time::Duration::from_secs(120), async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                self.stdout.push_str(&line);
                self.stdout.push('\n');
                if percent_of(&line).is_some_and(|p| p >= percent) {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(reached, "never reported {percent}%: {}", self.stdout);
    }

    /// Ctrl-C, as a terminal sends it.
    pub fn interrupt(&self) {
        let pid = self.child.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill -INT");
        assert!(sent.success());
    }

    /// Killed, as a crash would (no clean-up).
    pub async fn crash(mut self) {
        self.child.kill().await.expect("kill");
        let _ = self.child.wait().await;
    }

    /// Its output once it ends (within a minute), and its exit status.
    pub async fn finish(mut self) -> (Run, Option<i32>) {
        while let Ok(Some(line)) = self.lines.next_line().await {
            self.stdout.push_str(&line);
            self.stdout.push('\n');
        }
        let out = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            self.child.wait_with_output(),
        )
        .await
        .expect("step-client ends")
        .expect("wait");
        let code = out.status.code();
        let run = Run {
            ok: out.status.success(),
            stdout: self.stdout,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        (run, code)
    }
}
