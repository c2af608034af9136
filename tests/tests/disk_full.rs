//! Disk full (issue 7): a store on an 8 MiB tmpfs that the test mounts (as
//! root). Where mounting is not allowed each test is reported as ignored with
//! the reason (a failure under `STEP_REQUIRE_ALL_TESTS`; `step_tests::prereq`).
//!
//! What must hold: a SAVE that cannot fit is refused with a clear status and
//! message; an upload that fills the disk half-way gets the same clear error
//! on the block that did not fit; nothing is ever marked complete that is not;
//! the server keeps serving everything else; deleting the unfinished upload
//! gives the space back (as `df` sees it), after which uploads work again.

use std::path::{Path, PathBuf};
use std::process::Command;

use bytes::Bytes;
use serde_json::{Map, json};
use step_core::Status;
use step_core::client::{ClientError, SaveOptions, StepClient};
use step_core::digest::{md5_hex, password_for};
use step_tests::prereq::{self, block_on};
use step_tests::{TestConfig, TestServer, download, pattern};

fn main() {
    prereq::main(vec![
        prereq::needs(
            "a_full_disk_gives_clear_errors_and_the_space_back",
            || Tmpfs::mount("8m"),
            |fs| block_on(a_full_disk_gives_clear_errors_and_the_space_back(fs)),
        ),
        prereq::needs(
            "completing_on_a_full_disk_is_all_or_nothing",
            || Tmpfs::mount("2m"),
            |fs| block_on(completing_on_a_full_disk_is_all_or_nothing(fs)),
        ),
    ]);
}

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 256 << 10;

/// A tmpfs mounted on a temp directory, unmounted on drop.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let parent = tempfile::tempdir().map_err(|e| e.to_string())?;
        let dir = parent.path().join("fs");
        std::fs::create_dir(&dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed (needs root and CAP_SYS_ADMIN): {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs {
            dir,
            _parent: parent,
        })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy, so a failing test with files still open cannot leave it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Bytes available to us on the file system holding `dir`, as `df` reports.
fn df_avail(dir: &Path) -> u64 {
    let out = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df output")
}

fn opts() -> SaveOptions {
    SaveOptions {
        block_size: Some(BLOCK),
        resume: false,
    }
}

/// Upload `body` block by block; the first refusal is returned with the
/// index it happened at.
async fn upload(c: &mut StepClient, key: &str, body: &[u8]) -> Result<String, (u64, ClientError)> {
    let mut md5 = None;
    for (i, chunk) in body.chunks(BLOCK as usize).enumerate() {
        md5 = c
            .upload_block(key, i as u64, Bytes::copy_from_slice(chunk))
            .await
            .map_err(|e| (i as u64, e))?;
    }
    Ok(md5.expect("the last block completes the file"))
}

fn assert_no_space(e: &ClientError, what: &str) {
    match e {
        ClientError::Refused { code, message, .. } => {
            assert_eq!(
                Status::from_code(*code),
                Some(Status::BlockSizeMismatch),
                "{what}: {message}"
            );
            assert!(
                message.contains("out of storage space"),
                "{what}: {message}"
            );
        }
        other => panic!("{what}: expected a refusal, got {other}"),
    }
}

async fn a_full_disk_gives_clear_errors_and_the_space_back(fs: Tmpfs) {
    let store = fs.dir.join("store");
    let server = TestServer::start_with(TestConfig {
        data_dir: Some(store.clone()),
        ..TestConfig::default()
    })
    .await;
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    c.login("filler", &password_for("filler"))
        .await
        .expect("login");
    c.data_save(Some("before"), Map::from_iter([("n".into(), json!(1))]))
        .await
        .expect("record");

    // 1. A file that cannot fit at all: refused at SAVE, nothing planned.
    let e = c
        .file_save(Some("huge"), 32 * MIB, opts())
        .await
        .expect_err("32 MiB cannot fit on 8 MiB");
    assert_no_space(&e, "SAVE of 32 MiB");
    let e = c
        .upload_block("huge", 0, Bytes::from(vec![0u8; BLOCK as usize]))
        .await
        .expect_err("nothing planned");
    assert_eq!(e.status(), Some(Status::WrongOperation), "{e}");

    // 2. Two uploads that each fit but not together: the space promised to
    //    the first is reserved, so the second is refused at SAVE (issue 11).
    let a = pattern(5 * MIB as usize, 1);
    c.file_save(Some("a"), a.len() as u64, opts())
        .await
        .expect("a fits");
    let e = c
        .file_save(Some("b"), 5 * MIB, opts())
        .await
        .expect_err("5 MiB more cannot fit beside a's 5 MiB");
    assert_no_space(&e, "SAVE beyond the unreserved space");
    assert_eq!(
        upload(&mut c, "a", &a).await.expect("a completes"),
        md5_hex(&a)
    );
    //    An upload that fits when planned, but whose space is then taken by
    //    something else (records here), fills the disk half-way and gets the
    //    clear error on the block that did not fit.
    let b = pattern(5 * MIB as usize / 2, 2);
    c.file_save(Some("b"), b.len() as u64, opts())
        .await
        .expect("b fits on its own");
    let filler = "f".repeat(3000);
    for i in 0..256 {
        c.data_save(
            Some(&format!("ballast{i}")),
            Map::from_iter([("x".into(), json!(filler))]),
        )
        .await
        .expect("ballast");
    }
    let before_b = df_avail(&fs.dir);
    let (at, e) = upload(&mut c, "b", &b)
        .await
        .expect_err("b cannot complete");
    assert_no_space(&e, &format!("UPLOAD of block {at} of b"));
    assert!(at > 0, "the first blocks of b fitted");
    let full = df_avail(&fs.dir);
    assert!(full < before_b, "b's blocks took space");

    // Nothing incomplete is reported complete.
    for key in ["b", "huge"] {
        let e = c.file_get(key, None).await.expect_err("not complete");
        assert_eq!(e.status(), Some(Status::NotFound), "{key}: {e}");
    }
    // A retried block still fails cleanly while the disk is full.
    let e = c
        .upload_block(
            "b",
            at,
            Bytes::copy_from_slice(&b[(at * BLOCK) as usize..][..BLOCK as usize]),
        )
        .await
        .expect_err("still full");
    assert_no_space(&e, "retried block");

    // 3. The server keeps serving: reads, records, other connections.
    assert_eq!(download(&mut c, "a").await, a);
    assert_eq!(c.data_get("before").await.expect("record")["n"], json!(1));
    let mut other = StepClient::connect(server.addr).await.expect("connect");
    other
        .login("other", &password_for("other"))
        .await
        .expect("login while full");

    // 4. Deleting the unfinished upload gives its space back.
    let e = c
        .file_delete("b")
        .await
        .expect_err("an unfinished upload answers 404 when discarded");
    assert_eq!(e.status(), Some(Status::NotFound), "{e}");
    let after = df_avail(&fs.dir);
    assert!(
        after + 64 * 1024 >= before_b,
        "space back after delete: {after} available, {before_b} before b"
    );
    assert!(after > full);

    // 5. And uploads work again.
    let small = pattern(MIB as usize + 17, 3);
    c.file_save(Some("small"), small.len() as u64, opts())
        .await
        .expect("small fits");
    assert_eq!(
        upload(&mut c, "small", &small).await.expect("completes"),
        md5_hex(&small)
    );
    assert_eq!(download(&mut c, "small").await, small);
    c.data_save(Some("after"), Map::new())
        .await
        .expect("records too");

    drop(c);
    drop(other);
    server.shutdown().await;
    drop(fs);
}

/// The disk fills exactly when the last block is in: the data fits, the
/// file's metadata does not. The file must not become complete (nor half
/// published), and once a page is free a retried block completes it intact.
async fn completing_on_a_full_disk_is_all_or_nothing(fs: Tmpfs) {
    let server = TestServer::start_with(TestConfig {
        data_dir: Some(fs.dir.join("store")),
        ..TestConfig::default()
    })
    .await;
    let mut c = StepClient::connect(server.addr).await.expect("connect");
    c.login("edge", &password_for("edge")).await.expect("login");
    let body = pattern(3 * BLOCK as usize, 4);
    let blocks: Vec<Bytes> = body
        .chunks(BLOCK as usize)
        .map(Bytes::copy_from_slice)
        .collect();
    c.file_save(Some("c"), body.len() as u64, opts())
        .await
        .expect("plan");
    for i in 0..2 {
        c.upload_block("c", i, blocks[i as usize].clone())
            .await
            .expect("block");
    }
    // Ballast records of one page each, until exactly the last block fits.
    let page = 4096;
    let ballast = (df_avail(&fs.dir) - BLOCK) / page;
    let filler = "f".repeat(3000);
    for i in 0..ballast {
        c.data_save(
            Some(&format!("ballast{i}")),
            Map::from_iter([("x".into(), json!(filler))]),
        )
        .await
        .expect("ballast");
    }
    assert_eq!(
        df_avail(&fs.dir),
        BLOCK,
        "only the last block's pages are left"
    );

    let e = c
        .upload_block("c", 2, blocks[2].clone())
        .await
        .expect_err("no page left for the metadata");
    assert_no_space(&e, "the completing block");
    let e = c.file_get("c", None).await.expect_err("not complete");
    assert_eq!(e.status(), Some(Status::NotFound), "{e}");

    // One page free: still not enough for the metadata and the checksums,
    // and still nothing half done.
    c.data_delete("ballast0").await.expect("free a page");
    let e = c
        .upload_block("c", 2, blocks[2].clone())
        .await
        .expect_err("no page left for the checksums");
    assert_no_space(&e, "the completing block, one page free");
    let e = c.file_get("c", None).await.expect_err("not complete");
    assert_eq!(e.status(), Some(Status::NotFound), "{e}");

    // Two pages free: a retried block completes the file, intact.
    c.data_delete("ballast1").await.expect("free another page");
    let md5 = c
        .upload_block("c", 2, blocks[2].clone())
        .await
        .expect("completes now");
    assert_eq!(md5.as_deref(), Some(md5_hex(&body).as_str()));
    assert_eq!(download(&mut c, "c").await, body);
    c.file_delete("c").await.expect("delete");
    assert!(df_avail(&fs.dir) >= 3 * BLOCK, "the file's space is back");

    drop(c);
    server.shutdown().await;
    drop(fs);
}
