//! A Redis server of the tests' own (Debian's `redis-server`), on a Unix
//! socket in a temporary directory (no port to race for), with AOF on and
//! `appendfsync always` — the durability the README asks of a deployment.
//! It can be killed (as a crash) and started again on the same data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a fresh or restarted server may take to answer.
const READY_WITHIN: Duration = Duration::from_secs(20);

pub struct Redis {
    binary: PathBuf,
    child: Option<Child>,
    tmpdir: tempfile::TempDir,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("socket", &self.socket())
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// `redis-server` on PATH (or `$REDIS_SERVER`), or why not.
    pub fn binary() -> Result<PathBuf, String> {
        let candidate = std::env::var_os("REDIS_SERVER")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("redis-server"));
        match Command::new(&candidate)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => Ok(candidate),
            _ => Err(format!(
                "{} is not installed (Debian package redis-server; .ci/run installs it)",
                candidate.display()
            )),
        }
    }

    /// Start a fresh server.
    pub fn start() -> Result<Redis, String> {
        let binary = Self::binary()?;
        let tmpdir = tempfile::Builder::new()
            .prefix("step-redis.")
            .tempdir()
            .map_err(|e| format!("temp dir for redis: {e}"))?;
        let mut redis = Redis {
            binary,
            child: None,
            tmpdir,
        };
        redis.spawn_and_wait()?;
        Ok(redis)
    }

    fn dir(&self) -> &Path {
        self.tmpdir.path()
    }

    fn socket(&self) -> PathBuf {
        self.dir().join("redis.sock")
    }

    /// The URL `--coord` takes for this server.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let _ = std::fs::remove_file(self.socket());
        let log = std::fs::File::create(self.dir().join("redis.log"))
            .map_err(|e| format!("redis log file: {e}"))?;
        let child = Command::new(&self.binary)
            .args(["--port", "0", "--unixsocket"])
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--dir"])
            .arg(self.dir())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("redis-server exited ({status}) before serving"));
            }
            if std::os::unix::net::UnixStream::connect(self.socket()).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "redis-server did not answer within {READY_WITHIN:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill the server (SIGKILL, as a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start it again on the same data (after [`Redis::kill`]).
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn_and_wait()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
