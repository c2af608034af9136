//! tus 1.0.0 at /tus/, the protocol's edges over real HTTP (reqwest) against
//! the gateway served in-process in front of a real step-server: checksum
//! mismatch (460, nothing kept), wrong offset (409), termination, version
//! and media-type refusals, OPTIONS, creation-with-upload, expiration, and
//! that an upload URL grants nothing to another user.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest, Md5};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use step_tests::{TestServer, pattern};

mod support;
use support::tus::{BLOCK, create, gateway, header, offset, patch, tus};

fn md5_b64(data: &[u8]) -> String {
    STANDARD.encode(Md5::digest(data))
}

async fn error_code(r: reqwest::Response) -> String {
    let body: Value = r.json().await.expect("a JSON error");
    body["error"].as_str().expect("error code").to_owned()
}

#[tokio::test]
async fn checksum_mismatch_is_460_and_keeps_nothing() {
    let step = TestServer::start().await;
    let gw = gateway(&step).await;
    let body = pattern(150_000, 1);
    let path = create(&gw, "sum.bin", body.len(), None).await;
    let (a, b) = body.split_at(100_000);
    let r = patch(&gw, &path, 0, a, Some(md5_b64(a))).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "upload-offset"), "100000");
    // The second chunk with the first chunk's md5: refused, nothing stored,
    // the kept tail untouched.
    let r = patch(&gw, &path, 100_000, b, Some(md5_b64(a))).await;
    assert_eq!(r.status().as_u16(), 460);
    assert_eq!(error_code(r).await, "checksum_mismatch");
    assert_eq!(offset(&gw, &path).await, 100_000);
    // Another algorithm than md5: 400.
    let r = tus(&gw, Method::PATCH, &path)
        .header("Upload-Offset", "100000")
        .header("Content-Type", "application/offset+octet-stream")
        .header("Upload-Checksum", "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=")
        .body(b.to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = patch(&gw, &path, 100_000, b, Some(md5_b64(b))).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "upload-offset"), "150000");
    let (_, _, got) = gw.get_bytes("/files/sum.bin").await;
    assert_eq!(got, body);
    assert_eq!(offset(&gw, &path).await, 150_000);
    // The same bytes stored again under the key by another request: another
    // version, no longer this upload.
    assert_eq!(
        gw.delete("/files/sum.bin").await.status(),
        StatusCode::NO_CONTENT
    );
    gw.store("sum.bin", body.clone()).await;
    let r = tus(&gw, Method::HEAD, &path).send().await.expect("HEAD");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn wrong_offset_is_409_and_version_and_media_type_are_checked() {
    let step = TestServer::start().await;
    let gw = gateway(&step).await;
    let body = pattern(70_000, 2);
    let path = create(&gw, "off.bin", body.len(), None).await;
    let r = patch(&gw, &path, 10, &body[10..], None).await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(header(&r, "tus-resumable"), "1.0.0");
    assert_eq!(error_code(r).await, "offset_mismatch");
    // No Tus-Resumable: 412 with the versions spoken.
    let r = gw
        .client
        .patch(gw.at(&path))
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .body(body.clone())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    assert_eq!(header(&r, "tus-version"), "1.0.0");
    assert_eq!(error_code(r).await, "tus_version");
    let r = tus(&gw, Method::PATCH, &path)
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/octet-stream")
        .body(body.clone())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_code(r).await, "unsupported_media_type");
    // Past Upload-Length: 400, nothing stored.
    let mut long = body.clone();
    long.push(0);
    let r = patch(&gw, &path, 0, &long, None).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(offset(&gw, &path).await, 0);
    assert_eq!(
        patch(&gw, &path, 0, &body, None).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(offset(&gw, &path).await, body.len() as u64);
    // A URL that is not one of ours.
    let r = tus(&gw, Method::HEAD, "/tus/not-an-upload")
        .send()
        .await
        .expect("HEAD");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn termination_removes_the_upload() {
    let step = TestServer::start().await;
    let gw = gateway(&step).await;
    let body = pattern(200_000, 3);
    let path = create(&gw, "gone.bin", body.len(), None).await;
    assert_eq!(
        patch(&gw, &path, 0, &body[..90_000], None).await.status(),
        StatusCode::NO_CONTENT
    );
    let r = tus(&gw, Method::DELETE, &path)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = tus(&gw, Method::HEAD, &path).send().await.expect("HEAD");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = patch(&gw, &path, 90_000, &body[90_000..], None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = tus(&gw, Method::DELETE, &path)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Nothing was left under the key: a new upload of it starts afresh.
    assert_eq!(
        gw.get("/files/gone.bin").await.status(),
        StatusCode::NOT_FOUND
    );
    let again = create(&gw, "gone.bin", 5, None).await;
    assert_eq!(offset(&gw, &again).await, 0);
}

#[tokio::test]
async fn options_creation_with_upload_and_expiration() {
    let step = TestServer::start().await;
    let gw = gateway(&step).await;
    let r = gw
        .client
        .request(Method::OPTIONS, gw.at("/tus/"))
        .send()
        .await
        .expect("OPTIONS");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "tus-version"), "1.0.0");
    let ext = header(&r, "tus-extension");
    for e in [
        "creation",
        "creation-with-upload",
        "termination",
        "checksum",
        "expiration",
    ] {
        assert!(ext.split(',').any(|x| x == e), "{e} in {ext}");
    }
    assert_eq!(header(&r, "tus-checksum-algorithm"), "md5");
    assert!(header(&r, "tus-max-size").parse::<u64>().expect("number") > 0);

    // creation-with-upload, no filename: a generated key, told by HEAD.
    let body = pattern(100_000, 4);
    let r = tus(&gw, Method::POST, "/tus/")
        .header("Upload-Length", "100000")
        .header("Content-Type", "application/offset+octet-stream")
        .body(body[..70_000].to_vec())
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "upload-offset"), "70000");
    assert_eq!(header(&r, "step-block-size"), BLOCK.to_string());
    // The server's unfinished-upload expiry (24 h by default) from now.
    let expires = httpdate::parse_http_date(&header(&r, "upload-expires")).expect("HTTP date");
    let left = expires
        .duration_since(std::time::SystemTime::now())
        .expect("in the future")
        .as_secs();
    assert!((86_000..=86_400).contains(&left), "{left}");
    let path = header(&r, "location");
    let h = tus(&gw, Method::HEAD, &path).send().await.expect("HEAD");
    assert_eq!(header(&h, "upload-length"), "100000");
    let meta = header(&h, "upload-metadata");
    let key = String::from_utf8(
        STANDARD
            .decode(meta.strip_prefix("filename ").expect("filename"))
            .expect("base64"),
    )
    .expect("utf-8");
    assert!(uuid_like(&key), "{key}");
    let r = patch(&gw, &path, 70_000, &body[70_000..], None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers().get("upload-expires").is_none(), "complete");
    let (_, _, got) = gw.get_bytes(&format!("/files/{key}")).await;
    assert_eq!(got, body);
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

#[tokio::test]
async fn an_upload_url_grants_nothing_to_another_user() {
    let step = TestServer::start().await;
    let gw = gateway(&step).await;
    let login = |user: &'static str| {
        let gw = &gw;
        async move {
            let r: Value = gw
                .client
                .post(gw.at("/login"))
                .json(&serde_json::json!({"username": user}))
                .send()
                .await
                .expect("login")
                .json()
                .await
                .expect("json");
            r["token"].as_str().expect("token").to_owned()
        }
    };
    let (alice, bob) = (login("alice").await, login("bob").await);
    let body = pattern(150_000, 5);
    let path = create(&gw, "mine.bin", body.len(), Some(&alice)).await;
    let r = tus(&gw, Method::PATCH, &path)
        .bearer_auth(&alice)
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .body(body[..100_000].to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for method in [Method::HEAD, Method::DELETE] {
        let r = tus(&gw, method.clone(), &path)
            .bearer_auth(&bob)
            .send()
            .await
            .expect("bob");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "bob {method}");
    }
    let r = tus(&gw, Method::PATCH, &path)
        .bearer_auth(&bob)
        .header("Upload-Offset", "100000")
        .header("Content-Type", "application/offset+octet-stream")
        .body(body[100_000..].to_vec())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Bob's attempts left nothing of his behind, and alice's upload is whole.
    let r = gw
        .client
        .get(gw.at("/files/mine.bin"))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = tus(&gw, Method::HEAD, &path)
        .bearer_auth(&alice)
        .send()
        .await
        .expect("HEAD");
    assert_eq!(header(&r, "upload-offset"), "100000");
}
