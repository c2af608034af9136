//! The real `gateway` binary in a child process, its log (stdout, a pipe,
//! so not a terminal) collected line by line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub struct GatewayProc {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Log lines read so far.
    pub log: Vec<String>,
    /// What the gateway printed as the URL to open, e.g. `http://127.0.0.1:PORT/`.
    pub url: String,
}

impl GatewayProc {
    /// Start the binary with `args` (plus `envs`) and wait for the line
    /// announcing the URL to open.
    pub fn start(args: &[&str], envs: &[(&str, &str)]) -> GatewayProc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_gateway"))
            .args(args)
            .envs(envs.iter().copied())
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn gateway");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut proc = GatewayProc {
            child,
            lines,
            log: Vec::new(),
            url: String::new(),
        };
        loop {
            let line = proc
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("gateway did not start ({e}); log: {:#?}", proc.log));
            proc.log.push(line.clone());
            if let Some(at) = line.find("gateway listening: open ") {
                let rest = &line[at + "gateway listening: open ".len()..];
                let end = rest
                    .find(|c: char| c == '"' || c.is_whitespace())
                    .unwrap_or(rest.len());
                proc.url = rest[..end].to_owned();
                return proc;
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Read the log until a line contains `needle` (at most 30 s).
    pub fn wait_for(&mut self, needle: &str) {
        if self.log.iter().any(|l| l.contains(needle)) {
            return;
        }
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("no {needle:?} in the log ({e}): {:#?}", self.log));
            self.log.push(line.clone());
            if line.contains(needle) {
                return;
            }
        }
    }

    /// Read what the log says within `wait`, and return the whole log so far.
    pub fn settle(&mut self, wait: Duration) -> &[String] {
        let until = std::time::Instant::now() + wait;
        while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => self.log.push(line),
                Err(_) => break,
            }
        }
        &self.log
    }

    /// The URL of `path` (which starts with `/`).
    pub fn at(&self, path: &str) -> String {
        format!("{}{}", self.url.trim_end_matches('/'), path)
    }

    /// SIGTERM, wait for the exit, and return the whole log.
    pub fn stop(mut self) -> Vec<String> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
        // The pipe closes with the process: this ends.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(10)) {
            self.log.push(line);
        }
        std::mem::take(&mut self.log)
    }
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
