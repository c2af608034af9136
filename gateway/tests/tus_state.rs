//! tus uploads whose state only their writes change, over real HTTP
//! (reqwest) against the gateway in front of a real step-server:
//!
//! * a HEAD (a read, allowed to anonymous readers) and a PATCH or DELETE of
//!   a URL that does not name the key's current upload answer 404 and
//!   leave another client's upload in progress alone;
//! * HEAD reports the right offset (with and without a kept tail) and
//!   refreshes nothing (its `Upload-Expires` does not move);
//! * one upload is one lock however its URL is spelt: a re-encoded URL gets
//!   no second PATCH while one is running;
//! * a chunked PATCH longer than `Upload-Length` is refused like one whose
//!   `Content-Length` says so, storing none of the excess and never
//!   completing the file; the upload resumes at its right offset.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use step_tests::{TestServer, pattern};

mod support;
use support::Gateway;
use support::tus::{BLOCK, create, gateway, header, offset, patch_request, tus};

async fn patch(gw: &Gateway, path: &str, offset: u64, data: &[u8]) -> reqwest::Response {
    support::tus::patch(gw, path, offset, data, None).await
}

async fn head(gw: &Gateway, path: &str) -> reqwest::Response {
    tus(gw, Method::HEAD, path).send().await.expect("HEAD")
}

/// The JSON an upload URL carries.
fn url_json(path: &str) -> Value {
    let id = path.strip_prefix("/tus/").expect("a tus URL");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(id).expect("base64url")).expect("JSON")
}

/// An upload URL for `json` exactly as written.
fn url_of(json: &str) -> String {
    format!("/tus/{}", URL_SAFE_NO_PAD.encode(json))
}

/// `path` with its fields changed by `edit`.
fn forged(path: &str, edit: impl FnOnce(&mut Value)) -> String {
    let mut v = url_json(path);
    edit(&mut v);
    url_of(&v.to_string())
}

#[tokio::test]
async fn a_head_patch_or_delete_of_a_made_up_url_touches_nothing() {
    let step = TestServer::start().await;
    let gw = gateway(&step).await;
    // Another client's 2 MiB upload, half sent (both anonymous: the
    // default --anonymous write).
    let body = pattern(2 << 20, 7);
    let half = body.len() / 2;
    let path = create(&gw, "shared.bin", body.len(), None).await;
    let r = patch(&gw, &path, 0, &body[..half]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(offset(&gw, &path).await, half as u64);
    // URLs for the same key that are not its upload: a made-up id with
    // another plan, the real id with another size, the real id with
    // another block size.
    let made_up = url_of(&format!(
        r#"{{"k":"shared.bin","u":"0123456789abcdef0123456789abcdef","n":12345,"b":{BLOCK}}}"#
    ));
    let wrong_size = forged(&path, |v| v["n"] = 999.into());
    let wrong_block = forged(&path, |v| v["b"] = (BLOCK * 2).into());
    for url in [&made_up, &wrong_size, &wrong_block] {
        let r = head(&gw, url).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "HEAD {url}");
        let r = patch(&gw, url, 0, b"0123456789").await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "PATCH {url}");
        let r = tus(&gw, Method::DELETE, url).send().await.expect("DELETE");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "DELETE {url}");
        // The real upload is where it was after each.
        assert_eq!(offset(&gw, &path).await, half as u64, "after {url}");
    }
    let r = patch(&gw, &path, half as u64, &body[half..]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "upload-offset"), body.len().to_string());
    let (status, _, got) = gw.get_bytes("/files/shared.bin").await;
    assert_eq!(status, StatusCode::OK);
    assert!(got == body, "the upload's own bytes");
}

#[tokio::test]
async fn head_reports_the_offset_and_refreshes_nothing() {
    let step = TestServer::start().await;
    let gw = gateway(&step).await;
    let body = pattern(300_000, 8);
    let path = create(&gw, "head.bin", body.len(), None).await;
    // One block stored and a tail this gateway keeps.
    let r = patch(&gw, &path, 0, &body[..100_000]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let first = head(&gw, &path).await;
    assert_eq!(header(&first, "upload-offset"), "100000");
    assert_eq!(header(&first, "upload-length"), "300000");
    let expires = header(&first, "upload-expires");
    // A read moves nothing: a second later the expiry is the same (a
    // refreshed upload would expire a second later).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = head(&gw, &path).await;
    assert_eq!(header(&again, "upload-offset"), "100000");
    assert_eq!(header(&again, "upload-expires"), expires);
    // Another gateway keeps no tail: the stored, block-aligned prefix.
    let other = gateway(&step).await;
    assert_eq!(offset(&other, &path).await, BLOCK);
    let r = patch(&other, &path, BLOCK, &body[BLOCK as usize..]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "upload-offset"), "300000");
    assert_eq!(offset(&gw, &path).await, 300_000);
    assert_eq!(offset(&other, &path).await, 300_000);
    let (_, _, got) = gw.get_bytes("/files/head.bin").await;
    assert!(got == body);
}

#[tokio::test]
async fn a_re_encoded_url_gets_no_second_concurrent_patch() {
    let step = TestServer::start().await;
    let gw = gateway(&step).await;
    let body = pattern(200_000, 9);
    let path = create(&gw, "twice.bin", body.len(), None).await;
    // The same upload, its JSON written in another order.
    let v = url_json(&path);
    let respelt = url_of(&format!(
        r#"{{"b":{},"n":{},"u":{},"k":{}}}"#,
        v["b"], v["n"], v["u"], v["k"]
    ));
    assert_ne!(respelt, path);
    assert_eq!(url_json(&respelt), v);
    // PATCH 1 sends a little, then waits (holding the upload) until told.
    let (go, wait) = tokio::sync::oneshot::channel::<()>();
    let (head_part, rest) = (Bytes::copy_from_slice(&body[..1000]), body[1000..].to_vec());
    let chunks = futures::stream::unfold((0, Some(wait)), move |(i, wait)| {
        let (head_part, rest) = (head_part.clone(), rest.clone());
        async move {
            match i {
                0 => Some((Ok::<_, std::io::Error>(head_part), (1, wait))),
                1 => {
                    let _ = wait?.await;
                    Some((Ok(Bytes::from(rest)), (2, None)))
                }
                _ => None,
            }
        }
    });
    let first = tokio::spawn(
        patch_request(&gw, &path, 0)
            .header("Content-Length", body.len().to_string())
            .body(reqwest::Body::wrap_stream(chunks))
            .send(),
    );
    // PATCH 1 holds the upload once a HEAD of its URL has to wait for it.
    let mut held = false;
    for _ in 0..100 {
        let probe = tus(&gw, Method::HEAD, &path)
            .timeout(Duration::from_millis(700))
            .send()
            .await;
        if probe.as_ref().is_err_and(reqwest::Error::is_timeout) {
            held = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(held, "the first PATCH never took the upload");
    // The same upload under the other spelling, at the same offset: tus
    // refuses a concurrent write (423 after waiting, or 409 had the first
    // finished meanwhile) — never a second accepted PATCH.
    let second = patch(&gw, &respelt, 0, &body).await;
    assert!(
        matches!(second.status().as_u16(), 409 | 423),
        "a second concurrent PATCH: {}",
        second.status()
    );
    go.send(()).expect("the first PATCH waits");
    let first = first.await.expect("task").expect("PATCH 1");
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&first, "upload-offset"), "200000");
    let (_, _, got) = gw.get_bytes("/files/twice.bin").await;
    assert!(got == body);
}

/// A PATCH whose body (chunked: no Content-Length) is `chunks`.
async fn chunked(gw: &Gateway, path: &str, offset: u64, chunks: Vec<Vec<u8>>) -> reqwest::Response {
    let stream = futures::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Bytes::from(c))),
    );
    patch_request(gw, path, offset)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("PATCH")
}

#[tokio::test]
async fn a_chunked_patch_past_upload_length_is_refused_and_commits_no_excess() {
    let step = TestServer::start().await;
    let gw = gateway(&step).await;
    let body = pattern(100_000, 10);
    let b = BLOCK as usize;
    let excess = b"0123456789".to_vec();
    // The excess in a chunk of its own after exactly Upload-Length bytes;
    // in the same chunk as the last bytes; announced by Content-Length.
    let with_tail = [&body[b..], &excess[..]].concat();
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "own chunk",
            vec![body[..b].to_vec(), body[b..].to_vec(), excess.clone()],
        ),
        ("same chunk", vec![body[..b].to_vec(), with_tail.clone()]),
    ];
    for (i, (what, chunks)) in cases.into_iter().enumerate() {
        let key = format!("long{i}.bin");
        let path = create(&gw, &key, body.len(), None).await;
        let r = chunked(&gw, &path, 0, chunks).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what}");
        let err: Value = r.json().await.expect("JSON error");
        assert_eq!(err["error"], "bad_request", "{what}");
        // The whole block before the excess is kept; the file is not
        // complete, nothing past its length exists.
        assert_eq!(offset(&gw, &path).await, BLOCK, "{what}");
        assert_eq!(
            gw.get(&format!("/files/{key}")).await.status(),
            StatusCode::NOT_FOUND,
            "{what}: never completed"
        );
        let r = patch(&gw, &path, BLOCK, &body[b..]).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{what}");
        assert_eq!(header(&r, "upload-offset"), "100000");
        let (_, _, got) = gw.get_bytes(&format!("/files/{key}")).await;
        assert!(got == body, "{what}: exactly the upload's bytes");
    }
    // Announced by Content-Length: refused before anything is read.
    let path = create(&gw, "long-cl.bin", body.len(), None).await;
    let r = patch(&gw, &path, 0, &[&body[..], &excess[..]].concat()).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(offset(&gw, &path).await, 0);
}
