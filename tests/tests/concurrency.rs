//! Concurrency (issue 7), the in-suite size; `bench/stress_native.sh` runs
//! the big one (200 clients × 50 uploads).
//!
//! Semantics for several clients of one user uploading the same key at once
//! (a STEP key belongs to one user, so only the same user can contend):
//! * SAVE of an unfinished key starts it over (the reference's rule), so the
//!   uploads overlap; the first upload to *complete* wins the key;
//! * once complete, every SAVE of the key gets 402 and every UPLOAD 408;
//! * an upload superseded by another client's SAVE gets 408 on its next
//!   block, on the connection that sent that SAVE or any other block of it
//!   (with or without `upload_id`: a connection is bound to the upload its
//!   SAVE started), so blocks of two uploads never mix: the completed file
//!   is byte-identical to what one client sent, and that client is the one
//!   the server reported the md5 to;
//! * no status outside 200/402/408 happens.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use step_core::client::{ClientError, SaveOptions, StepClient, expect_ok};
use step_core::digest::md5_hex;
use step_core::message::field;
use step_core::{Kind, Operation};
use step_tests::{TestServer, download, login, pattern};

fn blocks(body: &[u8], bs: usize) -> Vec<Result<(u64, Bytes), ClientError>> {
    body.chunks(bs)
        .enumerate()
        .map(|(i, c)| Ok((i as u64, Bytes::copy_from_slice(c))))
        .collect()
}

async fn upload(c: &mut StepClient, key: &str, body: &[u8]) -> Result<Option<String>, ClientError> {
    let plan = c
        .file_save(Some(key), body.len() as u64, SaveOptions::default())
        .await?;
    if let Some(md5) = plan_md5(&plan) {
        return Ok(Some(md5));
    }
    let stream = futures::stream::iter(blocks(body, plan.block_size as usize));
    c.upload_blocks(&plan.key, stream, 4, |_| {}).await
}

/// A size-0 SAVE completes at once; its md5 is the empty one.
fn plan_md5(plan: &step_core::client::UploadPlan) -> Option<String> {
    (plan.total_block == 0).then(|| step_core::digest::EMPTY_MD5.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_upload_different_keys_at_once() {
    let server = TestServer::start().await;
    let sizes = [0usize, 1, 20_479, 20_480, 50_000, 300_001];
    let mut tasks = Vec::new();
    // 16 clients over 4 users: clients of one user share its namespace.
    for client in 0..16usize {
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            let user = format!("user{}", client % 4);
            let mut c = login(addr, &user).await;
            let mut errors = Vec::new();
            for (n, &size) in sizes.iter().enumerate() {
                let key = format!("c{client}-f{n}");
                let body = pattern(size, (client * 7 + n) as u8);
                match upload(&mut c, &key, &body).await {
                    Ok(Some(md5)) if md5 == md5_hex(&body) => {}
                    other => errors.push(format!("{key}: {other:?}")),
                }
            }
            for (n, &size) in sizes.iter().enumerate() {
                let key = format!("c{client}-f{n}");
                if download(&mut c, &key).await != pattern(size, (client * 7 + n) as u8) {
                    errors.push(format!("{key}: content differs"));
                }
            }
            errors
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        errors.extend(t.await.expect("join"));
    }
    assert!(errors.is_empty(), "{errors:#?}");
}

#[derive(Debug)]
enum Outcome {
    /// This client's block completed the file; the md5 the server reported.
    Won(String),
    /// The key was complete (402) by the time this client tried again.
    Lost,
    /// Without upload ids only: every block was taken, but the file was
    /// completed by someone else's block (so it may hold ours too).
    Absorbed,
}

/// SAVE `key`, then send every block of `body` (window 4), naming the upload
/// when `named`. Returns the md5 if one of our blocks completed the file.
async fn save_and_send(
    c: &mut StepClient,
    key: &str,
    body: &[u8],
    named: bool,
) -> Result<Option<String>, ClientError> {
    let save = c
        .request(Operation::Save, Kind::File)?
        .with(field::KEY, key)
        .with(field::SIZE, body.len() as u64);
    let plan = expect_ok(c.call(&save).await?)?;
    let upload_id = plan
        .get(field::UPLOAD_ID)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Protocol("SAVE answer lacks upload_id".into()))?;
    let bs = plan
        .get(field::BLOCK_SIZE)
        .and_then(Value::as_u64)
        .ok_or_else(|| ClientError::Protocol("no block_size".into()))?;
    let mut requests = Vec::new();
    for (i, chunk) in body.chunks(bs as usize).enumerate() {
        let mut req = c.upload_request(key, i as u64, Bytes::copy_from_slice(chunk))?;
        if named {
            req.set(field::UPLOAD_ID, upload_id.as_str());
        }
        requests.push(Ok(req));
    }
    let mut md5 = None;
    c.pipeline(futures::stream::iter(requests), 4, |resp| {
        let resp = expect_ok(resp)?;
        if let Some(m) = resp.get(field::MD5).and_then(Value::as_str) {
            md5 = Some(m.to_owned());
        }
        Ok(())
    })
    .await?;
    Ok(md5)
}

/// One racer: upload `body` to `key`, starting over whenever superseded.
async fn race(
    addr: SocketAddr,
    key: &str,
    body: &[u8],
    named: bool,
) -> Result<(Outcome, u32), String> {
    let mut restarts = 0;
    let mut c = login(addr, "racer").await;
    loop {
        match save_and_send(&mut c, key, body, named).await {
            Ok(Some(md5)) => return Ok((Outcome::Won(md5), restarts)),
            Ok(None) if named => {
                return Err("every named block accepted, yet no completion".into());
            }
            Ok(None) => return Ok((Outcome::Absorbed, restarts)),
            Err(e) => match e.status().map(|s| s.code()) {
                Some(402) => return Ok((Outcome::Lost, restarts)),
                Some(408) => {
                    // Superseded or completed meanwhile. Answers to blocks
                    // still in flight would be read as answers to the next
                    // request: continue on a fresh connection.
                    restarts += 1;
                    // Back off with jitter, or racers restarting at once
                    // supersede one another for ever.
                    let wait = rand::random_range(1..20u64) << restarts.min(5);
                    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                    let token = c.token().unwrap_or_default().to_owned();
                    c = StepClient::connect(addr).await.map_err(|e| e.to_string())?;
                    c.set_token(token);
                }
                _ => return Err(format!("undesigned error: {e}")),
            },
        }
        if restarts > 50 {
            return Err("no progress after 50 restarts".into());
        }
    }
}

/// Five rounds of `racers` clients of one user uploading different content
/// of one size to one key at once. Returns, per round, the racers'
/// outcomes, their bodies and the stored file.
async fn contest(named: bool, racers: usize) -> Vec<(Vec<Outcome>, Vec<Vec<u8>>, Vec<u8>)> {
    let server = TestServer::start().await;
    // Same size for every racer, so any block fits any racer's plan: the
    // worst case for mixing. 24 blocks each.
    let size = 20_480 * 23 + 999;
    let mut rounds = Vec::new();
    let mut restarts_total = 0;
    for round in 0..5u8 {
        let key = format!("contested-{round}");
        let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
            (0..racers)
                .map(|r| pattern(size, round * 16 + r as u8 + if named { 0 } else { 100 }))
                .collect(),
        );
        let start = Arc::new(tokio::sync::Barrier::new(racers));
        let mut tasks = Vec::new();
        for r in 0..racers {
            let (addr, key, bodies, start) = (
                server.addr,
                key.clone(),
                Arc::clone(&bodies),
                Arc::clone(&start),
            );
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                race(addr, &key, &bodies[r], named).await
            }));
        }
        let mut outcomes = Vec::new();
        for (r, t) in tasks.into_iter().enumerate() {
            let (outcome, restarts) = t
                .await
                .expect("join")
                .unwrap_or_else(|e| panic!("round {round}, racer {r}: {e}"));
            restarts_total += restarts;
            outcomes.push(outcome);
        }
        let mut c = login(server.addr, "racer").await;
        let stored = download(&mut c, &key).await;
        let plan = c.file_get(&key, None).await.expect("plan");
        assert_eq!(
            plan.md5,
            md5_hex(&stored),
            "round {round}: FILE GET md5 is the stored bytes'"
        );
        // Complete now: SAVE 402, UPLOAD 408.
        let e = c
            .file_save(Some(&key), size as u64, SaveOptions::default())
            .await
            .expect_err("complete");
        assert_eq!(e.status().map(|s| s.code()), Some(402));
        let e = c
            .upload_block(&key, 0, Bytes::from(vec![0u8; 20_480]))
            .await
            .expect_err("complete");
        assert_eq!(e.status().map(|s| s.code()), Some(408));
        let bodies = Arc::try_unwrap(bodies).unwrap_or_else(|a| (*a).clone());
        rounds.push((outcomes, bodies, stored));
    }
    println!(
        "racing uploads (upload_id {}): 5 rounds × {racers} racers, {restarts_total} restarts after being superseded",
        if named { "sent" } else { "not sent" }
    );
    rounds
}

/// With the `upload_id` extension: the file is exactly one racer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_uploads_that_name_their_upload_never_mix() {
    for (round, (outcomes, bodies, stored)) in contest(true, 6).await.into_iter().enumerate() {
        let winners: Vec<(usize, &String)> = outcomes
            .iter()
            .enumerate()
            .filter_map(|(r, o)| match o {
                Outcome::Won(md5) => Some((r, md5)),
                _ => None,
            })
            .collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: exactly one winner: {outcomes:?}"
        );
        let (winner, md5) = winners[0];
        assert_eq!(
            *md5,
            md5_hex(&bodies[winner]),
            "round {round}: the winner's own md5"
        );
        assert!(
            stored == bodies[winner],
            "round {round}: the stored file is byte-identical to the winner's"
        );
        assert!(
            outcomes.iter().all(|o| !matches!(o, Outcome::Absorbed)),
            "round {round}"
        );
    }
}

/// Without it (every reference client): the reference's semantics — SAVE
/// of an unfinished key starts it over, at most one block completes the
/// file, and the file is complete and self-consistent (its md5 is that of
/// its bytes, and the one reported). Each connection is bound to the
/// upload its SAVE started, so a racer's blocks are refused (408
/// `superseded`) once another SAVE started the key over: racing blocks of
/// equal size never mix, and the file is exactly one racer's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_uploads_without_upload_id_follow_the_reference() {
    for (round, (outcomes, bodies, stored)) in contest(false, 4).await.into_iter().enumerate() {
        assert!(
            bodies.contains(&stored),
            "round {round}: the file is exactly one racer's bytes"
        );
        assert!(
            outcomes.iter().all(|o| !matches!(o, Outcome::Absorbed)),
            "round {round}: no racer's blocks went into another's upload: {outcomes:?}"
        );
        let reported: Vec<&String> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Won(md5) => Some(md5),
                _ => None,
            })
            .collect();
        // Without upload ids a racer whose pipeline is cut short by a 408
        // (another racer's SAVE restarted the key under it) may stop before
        // reading the answer that carried the md5: at most one completion is
        // reported, and whatever was reported is the stored file's md5
        // (`contest` also checks FILE GET against the stored bytes).
        assert!(
            reported.len() <= 1,
            "round {round}: at most one completion: {outcomes:?}"
        );
        if let Some(md5) = reported.first() {
            assert_eq!(**md5, md5_hex(&stored), "round {round}");
        }
    }
}
