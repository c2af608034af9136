//! Crash and resume (issue 7): the real `step-server` binary is killed with
//! SIGKILL twice in the middle of a 100 MiB upload, restarted on the same
//! data directory each time, and the upload is resumed to the end.
//!
//! What must hold: every block acknowledged before a kill is still there
//! after the restart (a resume SAVE does not ask for it again); a FILE GET
//! polled throughout never reports the file complete before its last block
//! has been sent; temp files left behind are cleaned at start; the finished
//! file is byte-identical (md5 and bytes) to what was sent; tokens survive the
//! restarts because the secret is given with --token-secret.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use step_core::client::{ClientError, SaveOptions, StepClient, UploadPlan};
use step_core::digest::{md5_hex, password_for};
use step_core::plan::from_ranges;
use support::{ServerProc, pattern};

const SECRET: &str = "crash-test-secret-6d1f";
const SIZE: usize = 100 << 20;
const BLOCK: usize = 1 << 20;
const BLOCKS: u64 = (SIZE / BLOCK) as u64;
const KEY: &str = "big.bin";

fn block(body: &[u8], i: u64) -> Bytes {
    let start = i as usize * BLOCK;
    Bytes::copy_from_slice(&body[start..(start + BLOCK).min(body.len())])
}

/// Polls FILE GET on its own connection until the file is complete,
/// reconnecting across restarts. Fails the test if the file is reported complete before
/// `final_sent` is set.
struct Monitor {
    task: tokio::task::JoinHandle<(u64, Option<String>)>,
}

impl Monitor {
    fn start(
        addr: Arc<std::sync::Mutex<SocketAddr>>,
        token: String,
        final_sent: Arc<AtomicBool>,
    ) -> Monitor {
        let task = tokio::spawn({
            async move {
                let mut polls = 0u64;
                let mut conn: Option<StepClient> = None;
                loop {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if conn.is_none() {
                        let a = *addr.lock().expect("addr");
                        if let Ok(mut c) = StepClient::connect(a).await {
                            c.set_token(token.clone());
                            conn = Some(c);
                        }
                        continue;
                    }
                    let Some(c) = conn.as_mut() else { continue };
                    let done_before = final_sent.load(Ordering::SeqCst);
                    match c.file_get(KEY, None).await {
                        Ok(plan) => {
                            assert!(
                                done_before || final_sent.load(Ordering::SeqCst),
                                "FILE GET reported the file complete before its last block was sent"
                            );
                            return (polls, Some(plan.md5));
                        }
                        Err(ClientError::Refused { code: 404, .. }) => polls += 1,
                        Err(ClientError::Refused { code, message, .. }) => {
                            panic!("FILE GET answered {code}: {message}")
                        }
                        // The server was killed: reconnect to its successor.
                        Err(_) => conn = None,
                    }
                }
            }
        });
        Monitor { task }
    }
}

/// Upload `indexes` with a window of 8; stop (returning what was
/// acknowledged) once `kill_after` blocks in total are acknowledged, or at the
/// end. Responses come in request order, so the acknowledged blocks are
/// exactly the first ones sent.
async fn upload_some(
    client: &mut StepClient,
    body: &[u8],
    indexes: &[u64],
    acked: &AtomicU64,
    kill_at: u64,
    kill: &tokio::sync::Notify,
) -> Result<Option<String>, ClientError> {
    let stream = futures::stream::iter(indexes.iter().map(|&i| Ok((i, block(body, i)))));
    client
        .upload_blocks(KEY, stream, 8, |_| {
            if acked.fetch_add(1, Ordering::SeqCst) + 1 == kill_at {
                kill.notify_one();
            }
        })
        .await
}

/// SAVE resuming the key's unfinished upload: the writer names it (here
/// by asking the server for its id; a real client keeps the id its first
/// SAVE was given), as a resume must.
async fn resume(c: &mut StepClient) -> Result<UploadPlan, ClientError> {
    match c.file_upload_status(KEY).await {
        Ok(up) => {
            c.file_save_own(KEY, SIZE as u64, Some(BLOCK as u64), &up.upload_id, false)
                .await
        }
        Err(_) => {
            let opts = SaveOptions {
                block_size: Some(BLOCK as u64),
                resume: true,
            };
            c.file_save(Some(KEY), SIZE as u64, opts).await
        }
    }
}

/// Run one upload phase against `server`, kill -9 it after `kill_at` blocks in
/// total are acknowledged, and return the indexes acknowledged in this phase.
async fn phase_killed_at(
    server: ServerProc,
    token: &str,
    body: &[u8],
    kill_at: u64,
    total_acked: &AtomicU64,
) -> Vec<u64> {
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    c.set_token(token);
    let plan = resume(&mut c).await.expect("plan");
    let missing: Vec<u64> = from_ranges(&plan.missing).collect();
    let before = total_acked.load(Ordering::SeqCst);
    let kill = tokio::sync::Notify::new();
    let upload = upload_some(&mut c, body, &missing, total_acked, kill_at, &kill);
    tokio::pin!(upload);
    tokio::select! {
        r = &mut upload => panic!("upload ended before the kill: {:?}", r.map(|_| ())),
        () = kill.notified() => {}
    }
    // Requests are still in flight: kill -9 right now.
    server.kill9();
    let r = upload.await;
    assert!(r.is_err(), "the upload cannot finish on a dead server");
    let acked_here = (total_acked.load(Ordering::SeqCst) - before) as usize;
    missing[..acked_here].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_upload_then_resume_gives_a_byte_identical_file() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("store");
    let log = tmp.path().join("server.log");
    let body = pattern(SIZE, 42);
    let want_md5 = md5_hex(&body);

    let first = ServerProc::start(&data, &log, &["--token-secret", SECRET]).await;
    let addr = Arc::new(std::sync::Mutex::new(first.addr));
    let token = {
        let mut c = StepClient::connect(first.addr).await.expect("connect");
        c.login("crasher", &password_for("crasher"))
            .await
            .expect("login")
    };
    let final_sent = Arc::new(AtomicBool::new(false));
    let monitor = Monitor::start(Arc::clone(&addr), token.clone(), Arc::clone(&final_sent));
    let acked = AtomicU64::new(0);
    let mut acknowledged: Vec<u64> = Vec::new();
    let mut next = Some(first);

    // Two crashes: at half and at three quarters of the blocks; then the end.
    for kill_at in [BLOCKS / 2, BLOCKS * 3 / 4, 0] {
        let server = match next.take() {
            Some(s) => s,
            None => {
                let s = ServerProc::start(&data, &log, &["--token-secret", SECRET]).await;
                *addr.lock().expect("addr") = s.addr;
                assert_eq!(
                    std::fs::read_dir(data.join("tmp")).expect("ls tmp").count(),
                    0,
                    "temp files are cleaned at start"
                );
                s
            }
        };
        if kill_at == 0 {
            next = Some(server);
            break;
        }
        acknowledged.extend(phase_killed_at(server, &token, &body, kill_at, &acked).await);
        // What a crash mid-write can leave in tmp/; the restart must clean it.
        std::fs::write(data.join("tmp").join("half-written"), b"partial").expect("plant");
    }
    let server = next.expect("restarted server");
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    c.set_token(token.as_str()); // same secret: the token outlived two restarts
    let plan = resume(&mut c).await.expect("resume plan");
    assert!(plan.resumed, "the unfinished upload is reused");
    let missing: Vec<u64> = from_ranges(&plan.missing).collect();
    for i in &acknowledged {
        assert!(
            !missing.contains(i),
            "block {i} was acknowledged, then lost"
        );
    }
    // Blocks in flight at a kill (window 8) may or may not have been written.
    let held = BLOCKS as usize - missing.len();
    assert!(
        held >= acknowledged.len() && held <= acknowledged.len() + 2 * 8,
        "the server holds the {} acknowledged blocks and at most those in flight, not {held}",
        acknowledged.len()
    );
    let (last, rest) = missing.split_last().expect("something left to send");
    let never = tokio::sync::Notify::new();
    let md5 = upload_some(&mut c, &body, rest, &acked, u64::MAX, &never)
        .await
        .expect("all but the last block");
    assert_eq!(md5, None, "not complete with a block missing");
    assert!(c.file_get(KEY, None).await.is_err(), "not complete yet");
    final_sent.store(true, Ordering::SeqCst);
    let md5 = c
        .upload_block(KEY, *last, block(&body, *last))
        .await
        .expect("last block");
    assert_eq!(md5.as_deref(), Some(want_md5.as_str()));

    // The monitor saw only 404s until the end (it asserts that itself).
    let (polls, seen) = tokio::time::timeout(Duration::from_secs(30), monitor.task)
        .await
        .expect("the monitor sees the file complete")
        .expect("monitor");
    assert!(polls > 0, "the monitor polled while the upload ran");
    assert_eq!(seen.as_deref(), Some(want_md5.as_str()));

    // Download it all and compare.
    let dplan = c.file_get(KEY, Some(BLOCK as u64)).await.expect("plan");
    assert_eq!(
        (dplan.size, dplan.md5.as_str()),
        (SIZE as u64, want_md5.as_str())
    );
    let mut out = vec![0u8; SIZE];
    c.download_blocks(&dplan, 0..dplan.total_block, 8, |i, b| {
        let start = i as usize * BLOCK;
        out[start..start + b.len()].copy_from_slice(&b);
        Ok(())
    })
    .await
    .expect("download");
    assert_eq!(md5_hex(&out), want_md5);
    assert!(out == body, "byte-identical");
    drop(server);
}
