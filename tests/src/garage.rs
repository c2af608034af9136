//! A real S3 server for the tests: one Garage node (replication 1) on free
//! loopback ports, in a temp directory, killed on drop.
//!
//! `garage server --single-node --default-bucket` does the setup itself
//! before it opens the S3 port: it assigns this node the whole layout,
//! imports the access key given in `GARAGE_DEFAULT_ACCESS_KEY` /
//! `GARAGE_DEFAULT_SECRET_KEY` and creates `GARAGE_DEFAULT_BUCKET` with read,
//! write and owner rights for that key. So the S3 port accepting connections
//! means the bucket is ready, and no `garage layout`/`key`/`bucket` command
//! has to be polled for.
//!
//! The binary is `$GARAGE_BIN`, else `garage` on `PATH`, else
//! `$CARGO_HOME/bin/garage` (where `tests/garage/install.sh` puts it). When it
//! is missing, [`Garage::start`] says so, and tests report that through
//! [`crate::prereq`] (ignored, or failed under `STEP_REQUIRE_ALL_TESTS`).
//!
//! Facts about Garage that matter to a store on it (checked by
//! `tests/tests/garage_smoke.rs`): conditional writes (`If-None-Match: *`,
//! `If-Match`) are ignored, so `PutMode::Create` overwrites; multipart parts
//! have no minimum size (AWS wants 5 MiB but the last). Measured by
//! `bench/garage_ceiling.sh`: it never sets TCP_NODELAY, so on a reused
//! connection a small GET's body (written after its headers) waits for the
//! client's delayed ACK, ~44 ms; PUT and HEAD answers are one write.

use std::fmt::Write as _;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{ObjectStore, RetryConfig};

/// The version `tests/garage/install.sh` installs, from
/// `tests/garage/VERSION` (its `--single-node` and `--default-bucket` flags
/// are what [`Garage::start`] relies on).
pub fn garage_version() -> &'static str {
    include_str!("../garage/VERSION").trim()
}

/// The S3 region Garage is configured with (requests are signed for it).
pub const REGION: &str = "garage";

/// How long a Garage may take to open its S3 port: a generous bound for a
/// loaded two-core machine, not a timing assertion (it takes well under a
/// second when idle).
const READY_WITHIN: Duration = Duration::from_secs(60);

/// A running Garage node with one bucket and one key that owns it.
#[derive(Debug)]
pub struct Garage {
    /// `http://127.0.0.1:PORT`, the S3 API.
    pub endpoint: String,
    pub s3_addr: SocketAddr,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    pub bucket: String,
    binary: PathBuf,
    child: Option<Child>,
    tmpdir: tempfile::TempDir,
}

/// Why one start attempt failed: worth another try on other ports, or not.
enum Attempt {
    /// A port taken between choosing it and Garage binding it.
    Retry(String),
    Fatal(String),
}

impl Garage {
    /// The `garage` binary to run, or why there is none: `$GARAGE_BIN` when
    /// set, else the first of `garage` on `PATH` and `$CARGO_HOME/bin/garage`
    /// that is the pinned major version.
    pub fn binary() -> Result<PathBuf, String> {
        if let Some(bin) = std::env::var_os("GARAGE_BIN") {
            let bin = PathBuf::from(bin);
            check_version(&bin)?;
            return Ok(bin);
        }
        let on_path = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("garage"))
                .find(|p| p.is_file())
        });
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
        let in_cargo = cargo_home
            .map(|c| c.join("bin/garage"))
            .filter(|p| p.is_file());
        let mut refused = Vec::new();
        let mut candidates: Vec<PathBuf> = on_path.into_iter().chain(in_cargo).collect();
        candidates.dedup();
        for bin in candidates {
            match check_version(&bin) {
                Ok(()) => return Ok(bin),
                Err(e) => refused.push(e),
            }
        }
        let version = garage_version();
        Err(format!(
            "garage {version} (the S3 server these tests run) is not installed{}: run tests/garage/install.sh \
             (cargo install garage --locked --version {version}, about 9 minutes on 2 cores), \
             or set GARAGE_BIN",
            if refused.is_empty() {
                String::new()
            } else {
                format!(" ({})", refused.join("; "))
            }
        ))
    }

    /// Start a fresh node on free loopback ports, with bucket `step-test`.
    pub fn start() -> Result<Garage, String> {
        let binary = Self::binary()?;
        let mut last = String::new();
        // Free ports are chosen by binding port 0 and letting go, so another
        // process can take one before Garage binds it: then try other ports.
        for _ in 0..3 {
            match Self::start_once(&binary) {
                Ok(garage) => return Ok(garage),
                Err(Attempt::Retry(e)) => last = e,
                Err(Attempt::Fatal(e)) => return Err(e),
            }
        }
        Err(last)
    }

    fn start_once(binary: &Path) -> Result<Garage, Attempt> {
        let fatal = |e: String| Attempt::Fatal(e);
        let tmpdir = tempfile::Builder::new()
            .prefix("step-garage.")
            .tempdir()
            .map_err(|e| fatal(format!("temp dir for garage: {e}")))?;
        let (s3_port, rpc_port) = two_free_ports().map_err(fatal)?;
        let s3_addr = SocketAddr::from(([127, 0, 0, 1], s3_port));
        let dir = tmpdir.path();
        let config = format!(
            r#"# Written by step-tests (tests/src/garage.rs): one node, loopback only.
metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "lmdb"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "{s3_addr}"
root_domain = ".s3.garage.localhost"
"#,
            dir = dir.display(),
            rpc_secret = random_hex(32).map_err(fatal)?,
        );
        std::fs::write(dir.join("garage.toml"), config)
            .map_err(|e| fatal(format!("writing garage.toml: {e}")))?;
        let mut garage = Garage {
            endpoint: format!("http://{s3_addr}"),
            s3_addr,
            region: REGION.to_owned(),
            // Garage's own formats (GK + 24 hex digits, 64 hex digits).
            access_key: format!("GK{}", random_hex(12).map_err(fatal)?),
            secret_key: random_hex(32).map_err(fatal)?,
            bucket: "step-test".to_owned(),
            binary: binary.to_owned(),
            child: None,
            tmpdir,
        };
        garage.spawn_and_wait().map_err(|e| {
            if e.contains("ddress already in use") {
                Attempt::Retry(e)
            } else {
                Attempt::Fatal(e)
            }
        })?;
        Ok(garage)
    }

    /// Start the server process (on this node's directory and ports) and wait
    /// for its S3 port.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("garage log file: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("garage log file: {e}"))?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &self.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &self.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", &self.bucket)
            .env(
                "RUST_LOG",
                std::env::var("STEP_GARAGE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "garage server exited ({status}) before serving S3: {}",
                    self.log_tail()
                ));
            }
            if TcpStream::connect_timeout(&self.s3_addr, Duration::from_secs(1)).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "garage did not open its S3 port {} within {READY_WITHIN:?}: {}",
                    self.s3_addr,
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kill the server (SIGKILL, as a crash): requests fail until
    /// [`Garage::restart`].
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same directory and ports, after
    /// [`Garage::kill`]: everything stored before is there.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.spawn_and_wait()
    }

    /// An S3 client for the bucket: path-style requests over plain HTTP,
    /// few retries (a test that kills Garage wants the error, not minutes of
    /// retrying).
    pub fn s3(&self) -> AmazonS3 {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_allow_http(true)
            .with_region(&self.region)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_bucket_name(&self.bucket)
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            })
            .build()
            .expect("an S3 client from a complete configuration")
    }

    /// [`Garage::s3`] as the interface the storage layer holds.
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(self.s3())
    }

    /// The standard AWS variables that point a server at this node (for a
    /// `step-server --storage s3://...` child process).
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    /// `s3://BUCKET/prefix` for `--storage`.
    pub fn storage_url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// Run `garage -c <this node's config> args...` (the admin CLI, over RPC).
    pub fn cli(&self, args: &[&str]) -> Result<Output, String> {
        Command::new(&self.binary)
            .arg("-c")
            .arg(self.config_path())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.binary.display()))
    }

    pub fn dir(&self) -> &Path {
        self.tmpdir.path()
    }

    fn config_path(&self) -> PathBuf {
        self.dir().join("garage.toml")
    }

    fn log_path(&self) -> PathBuf {
        self.dir().join("garage.log")
    }

    /// The end of Garage's log, on one line for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        let tail = text[start..]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        if tail.is_empty() {
            "(its log is empty)".to_owned()
        } else {
            format!("log: {tail}")
        }
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `garage --version` names the release [`Garage::start`] was written for
/// (another major version may lack the flags it uses).
fn check_version(binary: &Path) -> Result<(), String> {
    let out = Command::new(binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = garage_version();
    let major = version.split('.').next().unwrap_or_default();
    // "garage v2.5.0 [features: ...]" from a release build, "garage
    // cargo:2.5.0 [...]" from `cargo install`.
    let found = text
        .split_whitespace()
        .nth(1)
        .map(|v| v.trim_start_matches("cargo:").trim_start_matches('v'))
        .unwrap_or_default();
    if out.status.success() && found.split('.').next() == Some(major) {
        Ok(())
    } else {
        Err(format!(
            "{} --version says {:?}; these tests need Garage {major}.x (tests/garage/install.sh installs {version})",
            binary.display(),
            text.trim()
        ))
    }
}

/// Two distinct free TCP ports on 127.0.0.1 (both held while choosing).
fn two_free_ports() -> Result<(u16, u16), String> {
    let bind = || {
        TcpListener::bind("127.0.0.1:0")
            .and_then(|l| Ok((l.local_addr()?.port(), l)))
            .map_err(|e| format!("no free loopback port: {e}"))
    };
    let (a, _la) = bind()?;
    let (b, _lb) = bind()?;
    Ok((a, b))
}

/// `bytes` random bytes as lowercase hex, from the kernel.
fn random_hex(bytes: usize) -> Result<String, String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .map_err(|e| format!("reading /dev/urandom: {e}"))?;
    let mut out = String::with_capacity(bytes * 2);
    for b in buf {
        let _ = write!(out, "{b:02x}");
    }
    Ok(out)
}
