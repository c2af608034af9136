//! Running the real `step-server` binary from its own integration tests.
#![allow(dead_code)] // each test file uses its own part

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct ServerProc {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ServerProc {
    /// Start the binary on 127.0.0.1 and a free port, retrying if the port
    /// was taken between choosing it and the server binding it. `extra`
    /// flags are appended; the server's output (its log is on stdout) and
    /// stderr are appended to `log`.
    pub async fn start(data_dir: &Path, log: &Path, extra: &[&str]) -> ServerProc {
        for _ in 0..10 {
            let port = {
                let l = TcpListener::bind("127.0.0.1:0").expect("bind");
                l.local_addr().expect("addr").port()
            };
            let output = File::options()
                .create(true)
                .append(true)
                .open(log)
                .expect("log file");
            let mut child = Command::new(env!("CARGO_BIN_EXE_step-server"))
                .args(["--ip", "127.0.0.1", "--port", &port.to_string()])
                .arg("--data-dir")
                .arg(data_dir)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(output.try_clone().expect("dup log"))
                .stderr(output)
                .spawn()
                .expect("spawn step-server");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            for _ in 0..200 {
                if tokio::net::TcpStream::connect(addr).await.is_ok() {
                    return ServerProc { child, addr };
                }
                if child.try_wait().expect("try_wait").is_some() {
                    break; // exited: most likely the port was taken
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("step-server did not start; see {}", log.display());
    }

    /// kill -9, and reap it.
    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// SIGTERM (graceful shutdown), and wait for the exit.
    pub fn terminate(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic test content (the same as `step_tests::pattern`).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}
pub mod s3;
