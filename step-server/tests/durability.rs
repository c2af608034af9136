//! Durability of acknowledged files (group commit, `store/disk/commit.rs`):
//! 32 clients upload small files of random sizes to the real `step-server`
//! binary, recording every file whose completion was acknowledged; the
//! server is then killed with SIGKILL in the middle of that load.
//!
//! - `acknowledged_files_survive_kill_9`: a restart on the same directory
//!   serves every acknowledged file whole (FILE GET md5 and size, and the
//!   downloaded bytes).
//! - `acknowledged_files_survive_a_lost_page_cache`: the store is on an ext4
//!   image attached to a loop device. After the kill, and with the file
//!   system still mounted and nothing synced, the image's backing file is
//!   copied: the loop driver writes that file only when ext4 submits a
//!   write to its device, so the copy holds exactly what reached the "disk"
//!   and none of the mounted file system's page cache — a power cut. The
//!   copy is checked with `e2fsck -fy`, mounted on a second loop device, and
//!   a new server on it must serve every acknowledged file. Needs root,
//!   `losetup`, `mkfs.ext4`, `e2fsck` and free loop devices; without them it
//!   is reported ignored with the reason (`step_tests::prereq`).

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{Rng, RngCore};
use step_core::client::{SaveOptions, StepClient};
use step_core::digest::{md5_hex, password_for};
use step_tests::prereq::{self, Trial, block_on_threads};
use support::ServerProc;

fn main() {
    prereq::main(vec![
        Trial::test("acknowledged_files_survive_kill_9", || {
            block_on_threads(2, acknowledged_files_survive_kill_9());
            Ok(())
        }),
        prereq::needs(
            "acknowledged_files_survive_a_lost_page_cache",
            LoopFs::check_tools,
            |()| block_on_threads(2, acknowledged_files_survive_a_lost_page_cache()),
        ),
    ]);
}

const UPLOADERS: usize = 32;
const MAX_SIZE: usize = 48 << 10;
/// How long the load runs before the kill (at least; see `MIN_ACKED`).
const LOAD: Duration = Duration::from_secs(3);
/// Acknowledged files wanted before the kill, however slow the machine.
const MIN_ACKED: usize = 100;
/// Bound on any one request: a dead server must not hang the test.
const REQUEST: Duration = Duration::from_secs(30);
const USER: &str = "durable";

/// A file the server acknowledged as complete.
struct Acked {
    key: String,
    body: Vec<u8>,
    md5: String,
}

#[derive(Default)]
struct Load {
    acked: Mutex<Vec<Acked>>,
    count: AtomicUsize,
    stop: AtomicBool,
}

async fn upload_one(c: &mut StepClient, key: &str, body: &[u8]) -> Result<Option<String>, String> {
    let plan = c
        .file_save(Some(key), body.len() as u64, SaveOptions::default())
        .await
        .map_err(|e| e.to_string())?;
    let blocks: Vec<_> = body
        .chunks(plan.block_size as usize)
        .enumerate()
        .map(|(i, b)| Ok((i as u64, Bytes::copy_from_slice(b))))
        .collect();
    c.upload_blocks(key, futures::stream::iter(blocks), 4, |_| {})
        .await
        .map_err(|e| e.to_string())
}

/// One client uploading files until told to stop or the server goes away.
async fn uploader(addr: std::net::SocketAddr, id: usize, load: Arc<Load>) {
    let Ok(Ok(mut c)) = tokio::time::timeout(REQUEST, StepClient::connect(addr)).await else {
        return;
    };
    if !matches!(
        tokio::time::timeout(REQUEST, c.login(USER, &password_for(USER))).await,
        Ok(Ok(_))
    ) {
        return;
    }
    let mut n = 0usize;
    while !load.stop.load(Ordering::SeqCst) {
        let (size, body) = {
            let mut rng = rand::rng();
            let size = rng.random_range(1..=MAX_SIZE);
            let mut body = vec![0u8; size];
            rng.fill_bytes(&mut body);
            (size, body)
        };
        let key = format!("w{id}/f{n}-{size}");
        n += 1;
        match tokio::time::timeout(REQUEST, upload_one(&mut c, &key, &body)).await {
            Ok(Ok(Some(md5))) => {
                assert_eq!(md5, md5_hex(&body), "{key}: the server's md5");
                load.acked
                    .lock()
                    .expect("acked")
                    .push(Acked { key, body, md5 });
                load.count.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Ok(None)) => panic!("{key}: every block sent, no completion"),
            // The server was killed under it (or timed out): done.
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

/// Run the load against `server`, kill -9 it mid-load, and return what was
/// acknowledged before the kill.
async fn load_then_kill(server: ServerProc) -> Vec<Acked> {
    let load = Arc::new(Load::default());
    let tasks: Vec<_> = (0..UPLOADERS)
        .map(|id| tokio::spawn(uploader(server.addr, id, Arc::clone(&load))))
        .collect();
    let began = Instant::now();
    tokio::time::sleep(LOAD).await;
    // A slow machine gets more time to acknowledge enough files.
    while load.count.load(Ordering::SeqCst) < MIN_ACKED {
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "only {} files acknowledged in 60 s",
            load.count.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Uploads are in flight: kill -9 right now.
    server.kill9();
    load.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        if let Err(e) = t.await
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
    load.acked
        .lock()
        .map(|mut acked| std::mem::take(&mut *acked))
        .expect("acked")
}

/// Every acknowledged file is served whole by `addr`; returns how many.
async fn verify_all(addr: std::net::SocketAddr, acked: &[Acked]) -> usize {
    let mut c = StepClient::connect(addr).await.expect("connect");
    tokio::time::timeout(REQUEST, c.login(USER, &password_for(USER)))
        .await
        .expect("login in time")
        .expect("login");
    let mut lost = Vec::new();
    for a in acked {
        let plan = match tokio::time::timeout(REQUEST, c.file_get(&a.key, None))
            .await
            .expect("FILE GET in time")
        {
            Ok(plan) => plan,
            Err(e) => {
                lost.push(format!("{}: FILE GET: {e}", a.key));
                continue;
            }
        };
        if plan.md5 != a.md5 || plan.size != a.body.len() as u64 {
            lost.push(format!(
                "{}: FILE GET says {} bytes md5 {}",
                a.key, plan.size, plan.md5
            ));
            continue;
        }
        let mut got = Vec::with_capacity(a.body.len());
        let downloaded = tokio::time::timeout(
            REQUEST,
            c.download_blocks(&plan, 0..plan.total_block, 4, |_, b| {
                got.extend_from_slice(&b);
                Ok(())
            }),
        )
        .await
        .expect("DOWNLOAD in time");
        match downloaded {
            Ok(()) if got == a.body => {}
            Ok(()) => lost.push(format!("{}: downloaded bytes differ", a.key)),
            Err(e) => lost.push(format!("{}: DOWNLOAD: {e}", a.key)),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged files lost or damaged, e.g.:\n{}",
        lost.len(),
        acked.len(),
        lost.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
    acked.len()
}

async fn acknowledged_files_survive_kill_9() {
    let tmp = tempfile::tempdir().expect("tmp");
    let data = tmp.path().join("store");
    let log = tmp.path().join("server.log");
    let began = Instant::now();
    let acked = load_then_kill(ServerProc::start(&data, &log, &[]).await).await;
    let server = ServerProc::start(&data, &log, &[]).await;
    let verified = verify_all(server.addr, &acked).await;
    eprintln!(
        "kill -9: {verified} acknowledged files, all served whole after the restart ({:.1} s)",
        began.elapsed().as_secs_f64()
    );
}

async fn acknowledged_files_survive_a_lost_page_cache() {
    let began = Instant::now();
    let fs = LoopFs::create().expect("ext4 image on a loop device");
    let data = fs.first.mountpoint().join("store");
    let log = fs.dir.path().join("server.log");
    let acked = load_then_kill(ServerProc::start(&data, &log, &[]).await).await;
    // Nothing is synced between the kill and this copy: the image as the
    // loop driver left it, without ext4's page cache.
    let copy = fs.dir.path().join("copy.img");
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(&fs.image)
        .arg(&copy));
    let fsck = Command::new("e2fsck")
        .args(["-f", "-y"])
        .arg(&copy)
        .output()
        .expect("run e2fsck");
    // 0: clean, 1: errors fixed (a journal replayed counts too); more is
    // damage e2fsck could not repair.
    let code = fsck.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 1,
        "e2fsck -fy on the copy exited {code}:\n{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let second = Attached::mount(&copy, &fs.dir.path().join("second")).expect("mount the copy");
    let server = ServerProc::start(&second.mountpoint().join("store"), &log, &[]).await;
    let verified = verify_all(server.addr, &acked).await;
    drop(server);
    eprintln!(
        "lost page cache: {verified} acknowledged files, all served whole from the unsynced copy \
         (e2fsck exit {code}; {:.1} s)",
        began.elapsed().as_secs_f64()
    );
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An ext4 image in a temp directory, attached and mounted.
struct LoopFs {
    image: PathBuf,
    first: Attached,
    dir: tempfile::TempDir,
}

impl LoopFs {
    fn check_tools() -> Result<(), String> {
        prereq::command_works("losetup", &["--version"])?;
        prereq::command_works("mkfs.ext4", &["-V"])?;
        prereq::command_works("e2fsck", &["-V"])?;
        prereq::command_works("cp", &["--version"])?;
        // Root, and loop devices this machine lets us use: try one.
        let probe = LoopFs::create().map_err(|e| format!("cannot use a loop device: {e}"))?;
        drop(probe);
        Ok(())
    }

    fn create() -> Result<LoopFs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = dir.path().join("fs.img");
        // Sparse: only what ext4 writes takes space.
        std::fs::File::create(&image)
            .and_then(|f| f.set_len(256 << 20))
            .map_err(|e| e.to_string())?;
        // One inode per 4 KiB: every small file takes three.
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-i", "4096"])
            .arg(&image)
            .output()
            .map_err(|e| format!("mkfs.ext4: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mkfs.ext4 failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let first = Attached::mount(&image, &dir.path().join("first"))?;
        Ok(LoopFs { image, first, dir })
    }
}

/// An image attached to a loop device and mounted; unmounted and detached
/// on drop, whatever happened (a failed assertion included).
struct Attached {
    device: String,
    mountpoint: PathBuf,
    mounted: bool,
}

impl Attached {
    fn mount(image: &Path, mountpoint: &Path) -> Result<Attached, String> {
        std::fs::create_dir_all(mountpoint).map_err(|e| e.to_string())?;
        let out = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(image)
            .output()
            .map_err(|e| format!("losetup: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup --find --show failed (needs root and a free loop device): {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let mut attached = Attached {
            device: String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            mountpoint: mountpoint.to_owned(),
            mounted: false,
        };
        let out = Command::new("mount")
            .args(["-t", "ext4"])
            .arg(&attached.device)
            .arg(mountpoint)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount {} failed: {}",
                attached.device,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        attached.mounted = true;
        Ok(attached)
    }

    fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.mounted {
            let plain = Command::new("umount").arg(&self.mountpoint).status();
            if !plain.is_ok_and(|s| s.success()) {
                // Something still has it open: detach it from the tree now,
                // the kernel finishes when the last user goes.
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&self.mountpoint)
                    .status();
            }
        }
        // After a lazy unmount the device is still busy: autoclear frees it
        // once the file system lets go.
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}
