//! The composition root: from parsed flags ([`ServiceArgs`]) to a running
//! service. Opens the storage (disk, or an object store with its optional
//! coordinator), starts the sweeper of idle uploads, builds the service
//! and its connection limits, imports `--accounts-file`. The clap structs
//! in [`crate::config`] only parse; an embedding program (the gateway)
//! composes through [`Composer`] and talks to the result through
//! [`Service`], nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use step_core::StepCodec;
use step_core::access::Anonymous;
use step_core::token::TokenKey;
use tracing::{info, warn};

use crate::accounts::AuthMode;
use crate::auth::{LoginLimits, Public};
use crate::config::{Extension, ServiceArgs};
use crate::server::ConnectionLimits;
use crate::service::{Extensions, Limits, Service};
use crate::store::object::ObjectStorage;
use crate::store::object::coord::{Coord, RedisCoord};
use crate::store::s3::{StorageChoice, object_store_from_env};
use crate::store::{self, DiskStore, Storage, StoreLimits, Upkeep};

/// Builds what [`ServiceArgs`] describe.
#[derive(Debug, Clone, Copy)]
pub struct Composer<'a> {
    args: &'a ServiceArgs,
}

/// A composed service: what answers requests, and the limits its
/// connections are served under.
#[derive(Debug, Clone)]
pub struct Composed {
    pub service: Arc<Service>,
    pub limits: ConnectionLimits,
}

impl Composed {
    /// The storage's upkeep view (unfinished uploads, for metrics).
    pub fn upkeep(&self) -> Arc<dyn Upkeep> {
        self.service.store().clone()
    }

    /// Serve native STEP on `listener` until `shutdown` resolves.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        crate::run(listener, self.service, self.limits, shutdown).await
    }
}

impl<'a> Composer<'a> {
    pub fn new(args: &'a ServiceArgs) -> Self {
        Self { args }
    }

    fn secret(&self) -> std::io::Result<Vec<u8>> {
        // An empty secret would sign every token with a key anyone knows.
        let non_empty = |secret: &[u8], from: &str| {
            if secret.is_empty() {
                Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!(
                        "the token secret from {from} is empty; set a real one or leave it unset for a random one"
                    ),
                ))
            } else {
                Ok(secret.to_vec())
            }
        };
        if let Some(path) = &self.args.token_secret_file {
            let text = std::fs::read_to_string(path)?;
            return non_empty(text.trim().as_bytes(), &path.display().to_string());
        }
        if let Some(s) = &self.args.token_secret {
            return non_empty(s.as_bytes(), "--token-secret / STEP_TOKEN_SECRET");
        }
        warn!("no token secret configured: using a random one; tokens will not survive a restart");
        let mut secret = vec![0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Ok(secret)
    }

    /// The storage `--storage` names: local disk under `--data-dir`, or an
    /// S3 bucket (credentials and endpoint from the standard AWS variables).
    fn open_storage(&self, limits: StoreLimits) -> std::io::Result<Arc<dyn Storage>> {
        match &self.args.storage {
            StorageChoice::Disk if self.args.coord.is_some() => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "--coord / STEP_COORD needs --storage s3://…: a disk store cannot be shared by several servers",
            )),
            StorageChoice::Disk => {
                let disk = DiskStore::open_with(&self.args.data_dir, limits).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!(
                            "cannot open the store at {}: {e}",
                            self.args.data_dir.display()
                        ),
                    )
                })?;
                Ok(disk)
            }
            StorageChoice::S3 { bucket, prefix } => {
                let objects = object_store_from_env(bucket, prefix).map_err(|e| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
                })?;
                let coord = match &self.args.coord {
                    None => None,
                    Some(url) => {
                        let namespace = format!("{bucket}/{prefix}");
                        // Coordinator records outlive an idle upload's expiry
                        // (the bucket decides; they only must not vanish first).
                        let coord = RedisCoord::new(url, &namespace, limits.upload_expiry * 2)
                            .map_err(|e| {
                                std::io::Error::new(
                                    std::io::ErrorKind::InvalidInput,
                                    format!("--coord / STEP_COORD: {e}"),
                                )
                            })?;
                        info!(engine = ?coord, "coordinating with other step-servers on this bucket");
                        Some(Arc::new(coord) as Arc<dyn Coord>)
                    }
                };
                let storage = ObjectStorage::coordinated(objects, "", limits, coord);
                // Count the unfinished uploads already in the bucket now
                // rather than at the first request that needs them.
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let recovering = storage.clone();
                    rt.spawn(async move {
                        upgrade_until_done(&recovering).await;
                        if let Err(e) = recovering.recover().await {
                            warn!(error = %e, "cannot list the bucket's unfinished uploads yet");
                        }
                    });
                }
                Ok(Arc::new(storage))
            }
        }
    }

    /// Open the storage and build the request service and connection limits.
    /// Inside a tokio runtime, also start the sweeper of idle unfinished
    /// uploads (it stops when the service, the storage's holder, is dropped).
    /// Settings that cannot work are refused here, with a message that says
    /// which flag to change, before anything is opened.
    pub fn build(&self) -> std::io::Result<Composed> {
        self.build_with(Anonymous::None)
    }

    /// [`Self::build`], anonymous callers allowed `anonymous` over
    /// `--public-user`'s files.
    pub fn build_with(&self, anonymous: Anonymous) -> std::io::Result<Composed> {
        let invalid = |text: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, text);
        if let Err(e) = TokenKey::try_new(b"check", self.args.token_ttl) {
            return Err(invalid(format!("--token-ttl / STEP_TOKEN_TTL: {e}")));
        }
        if self.args.max_block_size > u64::from(u32::MAX) {
            return Err(invalid(format!(
                "--max-block-size / STEP_MAX_BLOCK_SIZE: {} exceeds what a frame header can announce ({})",
                self.args.max_block_size,
                u32::MAX
            )));
        }
        if self.args.frame_budget < self.args.max_block_size {
            return Err(invalid(format!(
                "--frame-budget / STEP_FRAME_BUDGET ({}) must be at least --max-block-size ({}): \
                 a block larger than the whole budget could never be read",
                self.args.frame_budget, self.args.max_block_size
            )));
        }
        if self.args.json_budget < self.args.max_json as u64
            || self.args.max_json as u64 > u64::from(u32::MAX)
        {
            return Err(invalid(format!(
                "--json-budget / STEP_JSON_BUDGET ({}) must be at least --max-json ({}), \
                 which a frame header can announce only up to {}",
                self.args.json_budget,
                self.args.max_json,
                u32::MAX
            )));
        }
        let store_limits = StoreLimits {
            upload_expiry: Duration::from_secs(self.args.upload_expiry.max(1)),
            max_unfinished_bytes_per_user: self.args.max_unfinished_bytes_per_user,
            max_unfinished_uploads_per_user: self.args.max_unfinished_uploads_per_user,
            replaced_grace: Duration::from_secs(self.args.replaced_grace),
        };
        let storage = self.open_storage(store_limits)?;
        let _sweeper = store::spawn_sweeper(storage.clone(), store_limits.sweep_period());
        let tokens = TokenKey::try_new(&self.secret()?, self.args.token_ttl)
            .map_err(|e| invalid(format!("--token-ttl / STEP_TOKEN_TTL: {e}")))?;
        let max_binary = usize::try_from(self.args.max_block_size).unwrap_or(usize::MAX);
        let limits = Limits {
            max_key_len: self.args.max_key_len,
            max_username_len: 256,
            max_file_size: self.args.max_file_size,
            max_block_size: self.args.max_block_size,
            token_failures_per_sec: self.args.token_failures_per_sec,
            upload_expiry_secs: self.args.upload_expiry.max(1),
            login: LoginLimits {
                per_source_per_min: self.args.login_attempts_per_source,
                per_user_per_min: self.args.login_attempts_per_user,
                queue: self.args.login_queue,
            },
            extensions: Extensions {
                list: !self.args.disable_extensions.contains(&Extension::List),
                replace: !self.args.disable_extensions.contains(&Extension::Replace),
            },
        };
        let conn = ConnectionLimits {
            max_connections: self.args.max_connections.max(1),
            idle_timeout: Duration::from_secs(self.args.idle_timeout.max(1)),
            codec: StepCodec::new(self.args.max_json, max_binary),
            frame_budget: usize::try_from(self.args.frame_budget).unwrap_or(usize::MAX),
            json_budget: usize::try_from(self.args.json_budget).unwrap_or(usize::MAX),
            first_request_timeout: Duration::from_secs(self.args.first_request_timeout.max(1)),
            max_per_source: self.args.max_connections_per_source.max(1),
        };
        let service = Service::new(storage, tokens, limits)
            .with_auth(self.args.auth)
            .map_err(std::io::Error::other)?
            .with_public(Public {
                anonymous,
                user: self.args.public_user.clone(),
            });
        Ok(Composed {
            service: Arc::new(service),
            limits: conn,
        })
    }

    /// [`Self::build`], then the accounts of `--accounts-file` imported: what
    /// a server does at start.
    pub async fn start(&self, anonymous: Anonymous) -> std::io::Result<Composed> {
        self.check_public(anonymous)?;
        let built = self.build_with(anonymous)?;
        if let Some(path) = &self.args.accounts_file {
            let n = crate::users::import_accounts_file(built.service.store().as_ref(), path)
                .await
                .map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("--accounts-file {}: {e}", path.display()),
                    )
                })?;
            tracing::info!(accounts = n, file = %path.display(), "accounts imported");
        }
        Ok(built)
    }

    /// `--public-user` must be usable: a name other than the reserved one
    /// is a real account, which open mode has none of.
    fn check_public(&self, anonymous: Anonymous) -> std::io::Result<()> {
        let user = &self.args.public_user;
        if user.is_empty() || user.len() > 256 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "--public-user / STEP_PUBLIC_USER must be 1 to 256 bytes",
            ));
        }
        if user != crate::auth::PUBLIC_NAME
            && self.args.auth == AuthMode::Open
            && anonymous != Anonymous::None
        {
            warn!(
                public_user = %user,
                "--public-user names an ordinary user in open mode: nobody can log in as it \
                 any more (the md5 rule is refused for the public user); publish there with \
                 --auth accounts and an account of that name"
            );
        }
        Ok(())
    }

    /// The storage for account management only (`step-server user`): on
    /// disk, opened without the start-up cleanup a server does, so it is
    /// safe next to a running server on the same directory.
    pub fn open_accounts(&self) -> std::io::Result<Arc<dyn Storage>> {
        match &self.args.storage {
            StorageChoice::Disk => Ok(DiskStore::open_for_accounts(&self.args.data_dir)?),
            StorageChoice::S3 { .. } => self.open_storage(StoreLimits::default()),
        }
    }
}

/// An address to reach a server bound to `addr` from this host: a wildcard
/// bind (`0.0.0.0`, `::`) is reached on loopback.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        let ip: std::net::IpAddr = if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, addr.port())
    } else {
        addr
    }
}

/// The clear warning open mode deserves when `addr` is reachable from other
/// hosts: whoever reaches it can log in as anyone.
pub fn warn_if_open(mode: AuthMode, addr: SocketAddr) {
    if mode == AuthMode::Open && !addr.ip().is_loopback() {
        warn!(
            %addr,
            "STEP is in open mode (--auth open) on an address other hosts may reach: anyone who \
             can connect can log in as any user and read, replace or delete their files. Use \
             --auth accounts (STEP_AUTH=accounts) with `step-server user add NAME`, or listen \
             on 127.0.0.1"
        );
    }
}

/// Coordinated: migrate the bucket from an earlier release's layout if it
/// holds one, trying again while the coordinator or the bucket cannot be
/// reached (requests answer "unavailable" meanwhile). Alone: returns at
/// once.
async fn upgrade_until_done(storage: &ObjectStorage) {
    let mut pause = Duration::from_secs(1);
    loop {
        match storage.upgrade().await {
            Ok(m) if m.records + m.files > 0 => {
                info!(
                    records = m.records,
                    files = m.files,
                    "bucket migrated to this release's layout"
                );
                return;
            }
            Ok(_) => return,
            Err(e) => {
                warn!(error = %e, "cannot check or migrate the bucket's layout yet; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::ServerArgs;

    #[test]
    fn an_empty_secret_is_refused() {
        let empty =
            ServerArgs::try_parse_from(["step-server", "--token-secret", ""]).expect("parses");
        assert!(
            Composer::new(&empty.service).secret().is_err(),
            "an empty secret is refused"
        );
    }

    #[test]
    fn a_ttl_set_by_hand_is_refused_before_the_store_is_opened() {
        // Built by hand (an embedding program): refused by build(), too.
        let mut args = ServerArgs::try_parse_from(["step-server"]).expect("parse");
        let dir = std::env::temp_dir().join(format!("step-config-test-{}", std::process::id()));
        args.service.data_dir = dir.clone();
        args.service.token_ttl = 0;
        let err = Composer::new(&args.service)
            .build()
            .expect_err("ttl 0 refused");
        assert!(err.to_string().contains("--token-ttl"), "{err}");
        assert!(!dir.exists(), "refused before the store is opened");
    }
    #[test]
    fn a_coordinator_is_refused_beside_the_disk_store_and_a_bad_url_is_named() {
        let dir = std::env::temp_dir().join(format!("step-coord-test-{}", std::process::id()));
        let mut args =
            ServerArgs::try_parse_from(["step-server", "--coord", "redis://127.0.0.1:1"])
                .expect("parse");
        args.service.data_dir = dir.clone();
        let err = Composer::new(&args.service)
            .build()
            .expect_err("a disk store cannot be shared");
        assert!(err.to_string().contains("--coord"), "{err}");
        assert!(!dir.exists(), "refused before the store is opened");
        let err = RedisCoord::new("http://not-redis", "ns", Duration::from_secs(60))
            .expect_err("not a redis URL");
        assert!(!err.is_empty());
    }

    #[test]
    fn a_frame_budget_below_one_block_is_refused() {
        let args = ServerArgs::try_parse_from([
            "step-server",
            "--max-block-size",
            "1048576",
            "--frame-budget",
            "1048575",
        ])
        .expect("parse");
        let err = Composer::new(&args.service).build().expect_err("refused");
        assert!(err.to_string().contains("--frame-budget"), "{err}");
    }
}
