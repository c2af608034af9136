//! Issue 11 item 7: unfinished uploads are collected (idle ones expire) and
//! capped per user; the free-space check at SAVE counts what unfinished
//! uploads were promised. Over real sockets; the sweep is called directly
//! with a chosen "now", so nothing here waits on the clock.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use step_core::client::{ClientError, SaveOptions, StepClient, UploadTarget};
use step_core::token::TokenKey;
use step_core::{Reason, Status};
use step_server::ConnectionLimits;
use step_server::service::{Limits, Service};
use step_server::store::{Files, Storage, Store, StoreLimits, UnfinishedStats, Upkeep};
use step_tests::{TEST_SECRET, blocks, download, login, pattern};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const BS: usize = 20480;

struct Server {
    addr: SocketAddr,
    store: Arc<Store>,
    _stop: oneshot::Sender<()>,
    _tmp: tempfile::TempDir,
}

async fn start_in(tmp: tempfile::TempDir, store_limits: StoreLimits, limits: Limits) -> Server {
    let store = Store::open_with(tmp.path().join("store"), store_limits).expect("open store");
    let service = Arc::new(Service::new(
        Arc::clone(&store) as Arc<dyn Storage>,
        TokenKey::new(TEST_SECRET, 86_400),
        limits,
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(step_server::run(
        listener,
        service,
        ConnectionLimits::default(),
        async {
            let _ = stopped.await;
        },
    ));
    Server {
        addr,
        store,
        _stop: stop,
        _tmp: tmp,
    }
}

/// Expire idle uploads as of `now`; how many went.
async fn sweep(server: &Server, now: SystemTime) -> usize {
    server.store.sweep_expired(now).await.expect("sweep")
}

async fn start(store_limits: StoreLimits) -> Server {
    let tmp = tempfile::tempdir().expect("tmp");
    start_in(tmp, store_limits, Limits::default()).await
}

fn refusal(e: ClientError) -> (Status, Option<Reason>) {
    match e {
        ClientError::Refused { code, reason, .. } => (
            Status::from_code(code).unwrap_or_else(|| panic!("unknown status {code}")),
            reason,
        ),
        other => panic!("expected a STEP refusal, got {other}"),
    }
}

fn resume() -> SaveOptions {
    SaveOptions {
        resume: true,
        ..SaveOptions::default()
    }
}

/// SAVE `key` for `body` and upload its first block; returns the upload id.
async fn start_upload(c: &mut StepClient, key: &str, body: &[u8]) -> String {
    let plan = c
        .file_save(Some(key), body.len() as u64, SaveOptions::default())
        .await
        .expect("plan");
    let id = plan.upload_id.expect("upload id");
    let (i, b) = blocks(body, BS).remove(0);
    let target = UploadTarget {
        key,
        upload_id: Some(&id),
    };
    c.upload_block(target, i, b).await.expect("first block");
    id
}

#[tokio::test]
async fn an_idle_upload_expires_and_its_key_starts_over() {
    let server = start(StoreLimits {
        upload_expiry: Duration::from_secs(1),
        ..StoreLimits::default()
    })
    .await;
    let mut c = login(server.addr, "alice").await;
    let body = pattern(3 * BS + 5, 1);
    let id = start_upload(&mut c, "idle", &body).await;
    assert_eq!(
        server.store.unfinished_stats(),
        UnfinishedStats {
            count: 1,
            bytes_planned: body.len() as u64,
            bytes_received: BS as u64,
        }
    );

    // Just used: not expired as of now.
    assert_eq!(sweep(&server, SystemTime::now()).await, 0);
    // Idle for longer than the expiry: gone.
    let later = SystemTime::now() + Duration::from_secs(2);
    assert_eq!(sweep(&server, later).await, 1);
    assert_eq!(server.store.unfinished_stats(), UnfinishedStats::default());

    // A block for it is refused as for any upload that is not planned ...
    let (i, b) = blocks(&body, BS).remove(1);
    let target = UploadTarget {
        key: "idle",
        upload_id: Some(&id),
    };
    let err = c.upload_block(target, i, b).await.expect_err("expired");
    assert_eq!(refusal(err).0, Status::WrongOperation);
    // ... and SAVE with resume answers a fresh plan.
    let plan = c
        .file_save(Some("idle"), body.len() as u64, resume())
        .await
        .expect("plan");
    assert!(!plan.resumed);
    assert_eq!(plan.missing, vec![[0, 4]]);
}

#[tokio::test]
async fn an_upload_being_written_is_not_expired() {
    let server = start(StoreLimits {
        upload_expiry: Duration::from_secs(1),
        ..StoreLimits::default()
    })
    .await;
    let mut c = login(server.addr, "alice").await;
    let body = pattern(3 * BS, 2);
    start_upload(&mut c, "busy", &body).await;

    // A request holding the upload (between finding it and writing its
    // block) keeps it, however idle it looks.
    let handle = server
        .store
        .open_upload("alice", "busy")
        .await
        .expect("open");
    let much_later = SystemTime::now() + Duration::from_secs(86_400);
    assert_eq!(sweep(&server, much_later).await, 0);
    let before = SystemTime::now();
    let second = bytes::Bytes::copy_from_slice(&body[BS..2 * BS]);
    assert_eq!(
        handle.put_block(1, second, None).await.expect("write"),
        None
    );

    // Each block renews it: one expiry after that block, it is still kept.
    assert_eq!(sweep(&server, before + Duration::from_secs(1)).await, 0);
    let (i, b) = blocks(&body, BS).remove(2);
    let md5 = c.upload_block("busy", i, b).await.expect("last block");
    assert!(md5.is_some(), "completes");
    assert_eq!(download(&mut c, "busy").await, body);
}

#[tokio::test]
async fn uploads_left_on_disk_expire_when_the_store_opens() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("store");
    {
        let store = Store::open(&dir).expect("open");
        let upload = store
            .plan_upload(
                "alice",
                "old",
                step_server::store::PlanRecord {
                    size: 100,
                    block_size: BS as u64,
                },
                None,
            )
            .await
            .expect("plan");
        assert!(upload.upload_id.is_some());
        store
            .plan_upload(
                "alice",
                "fresh",
                step_server::store::PlanRecord {
                    size: 100,
                    block_size: BS as u64,
                },
                None,
            )
            .await
            .expect("plan");
    }
    // "old" was last written two days ago.
    let two_days_ago = SystemTime::now() - Duration::from_secs(2 * 86_400);
    for entry in std::fs::read_dir(dir.join("uploads/alice/old")).expect("dir") {
        let f = std::fs::File::options()
            .write(true)
            .open(entry.expect("entry").path())
            .expect("open");
        f.set_modified(two_days_ago).expect("mtime");
    }
    let store = Store::open(&dir).expect("reopen");
    assert_eq!(
        store.unfinished_stats().count,
        1,
        "only the fresh one stays"
    );
    assert!(!dir.join("uploads/alice/old").exists());
    assert!(dir.join("uploads/alice/fresh").exists());
}

#[tokio::test]
async fn per_user_caps_refuse_with_reason_quota() {
    let server = start(StoreLimits {
        max_unfinished_uploads_per_user: 2,
        max_unfinished_bytes_per_user: 10 * BS as u64,
        ..StoreLimits::default()
    })
    .await;
    let mut alice = login(server.addr, "alice").await;
    let small = pattern(2 * BS, 3);
    let a_id = start_upload(&mut alice, "a", &small).await;
    start_upload(&mut alice, "b", &small).await;
    let err = alice
        .file_save(Some("c"), small.len() as u64, SaveOptions::default())
        .await
        .expect_err("third unfinished upload");
    assert_eq!(
        refusal(err),
        (Status::BlockSizeMismatch, Some(Reason::Quota))
    );
    // Starting one of her own keys over is not a new upload.
    alice
        .file_save(Some("b"), small.len() as u64, SaveOptions::default())
        .await
        .expect("start b over");

    // Another user is unaffected.
    let mut bob = login(server.addr, "bob").await;
    start_upload(&mut bob, "c", &small).await;

    // Finishing one frees its place.
    let plan = alice
        .file_save_own("a", small.len() as u64, None, &a_id, false)
        .await
        .expect("resume a");
    assert!(plan.resumed);
    let (i, b) = blocks(&small, BS).remove(1);
    alice.upload_block("a", i, b).await.expect("finish a");
    start_upload(&mut alice, "c", &small).await;

    // The byte cap: bob has 2 blocks' worth planned, 9 more would pass 10.
    let err = bob
        .file_save(Some("big"), 9 * BS as u64, SaveOptions::default())
        .await
        .expect_err("beyond the byte cap");
    assert_eq!(
        refusal(err),
        (Status::BlockSizeMismatch, Some(Reason::Quota))
    );
    bob.file_save(Some("big"), 8 * BS as u64, SaveOptions::default())
        .await
        .expect("within the byte cap");
}

#[tokio::test]
async fn space_promised_to_unfinished_uploads_is_reserved() {
    let tmp = tempfile::tempdir().expect("tmp");
    let free = {
        let st = free_bytes(tmp.path());
        st * 6 / 10
    };
    let server = start_in(
        tmp,
        StoreLimits {
            max_unfinished_bytes_per_user: u64::MAX,
            ..StoreLimits::default()
        },
        Limits {
            max_file_size: u64::MAX,
            ..Limits::default()
        },
    )
    .await;
    let mut c = login(server.addr, "alice").await;
    // The data files are sparse: the first SAVE takes no space yet, but the
    // second must not be promised the same free space again.
    c.file_save(Some("one"), free, SaveOptions::default())
        .await
        .expect("fits");
    let err = c
        .file_save(Some("two"), free, SaveOptions::default())
        .await
        .expect_err("the space is promised to the first");
    assert_eq!(
        refusal(err),
        (Status::BlockSizeMismatch, Some(Reason::NoSpace))
    );
    let stats = server.store.unfinished_stats();
    assert_eq!((stats.count, stats.bytes_planned), (1, free));
}

/// Bytes free for the server on the file system holding `path`.
fn free_bytes(path: &std::path::Path) -> u64 {
    let out = std::process::Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(path)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the available bytes")
}
