//! `GET /files`: the caller's files, by prefix, a page at a time, over real
//! sockets (reqwest); 501 in front of a STEP server without the `list`
//! extension.

mod support;

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::Value;
use step_core::digest::md5_hex;
use step_server::service::{Extensions, Limits};
use step_tests::{TestConfig, TestServer, pattern};
use support::{Gateway, gateway, gateway_with};

async fn listing(gw: &Gateway, query: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut req = gw.client.get(gw.at(&format!("/files{query}")));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("GET /files");
    let status = r.status();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(ctype, "application/json", "{query}");
    (status, r.json().await.expect("json"))
}

/// Every key under `prefix`, following `next_cursor` with pages of `limit`.
async fn all_keys(gw: &Gateway, prefix: &str, limit: u64) -> Vec<String> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..1000 {
        let mut url = reqwest::Url::parse(&gw.at("/files")).expect("url");
        url.query_pairs_mut()
            .append_pair("prefix", prefix)
            .append_pair("limit", &limit.to_string());
        if let Some(c) = &cursor {
            url.query_pairs_mut().append_pair("cursor", c);
        }
        let r = gw.client.get(url).send().await.expect("GET");
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.expect("json");
        let files = page["files"].as_array().expect("files");
        assert!(files.len() as u64 <= limit, "{page}");
        keys.extend(
            files
                .iter()
                .map(|f| f["key"].as_str().expect("key").to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                return keys;
            }
        }
    }
    panic!("the listing never ended");
}

#[tokio::test]
async fn listing_pages_by_cursor_and_prefix() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    let mut want = BTreeSet::new();
    for i in 0..57u8 {
        let dir = ["a", "a/b", "c d", "é"][usize::from(i) % 4];
        let key = format!("{dir}/f{i:02}.bin");
        gw.store(&urlencode(&key), pattern(usize::from(i) * 7, i))
            .await;
        want.insert(key);
    }
    let want: Vec<String> = want.into_iter().collect();
    for limit in [1, 5, 56, 57, 1000] {
        let keys = all_keys(&gw, "", limit).await;
        assert_eq!(
            keys, want,
            "limit {limit}: no duplicates, nothing missed, key order"
        );
    }
    for prefix in ["a/", "a/b/", "c d/", "é/", "zzz"] {
        let keys = all_keys(&gw, prefix, 3).await;
        let expect: Vec<_> = want
            .iter()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect();
        assert_eq!(keys, expect, "prefix {prefix}");
    }

    // One entry in full: what GET sends as ETag, RFC 3339 time.
    let (status, page) = listing(&gw, "?prefix=a/f04&limit=1", None).await;
    assert_eq!(status, StatusCode::OK);
    let f = &page["files"][0];
    let body = pattern(28, 4);
    assert_eq!(f["key"], "a/f04.bin");
    assert_eq!(f["size"], 28);
    assert_eq!(f["md5"], md5_hex(&body));
    let r = gw.get("/files/a/f04.bin").await;
    let etag = r.headers()["etag"].to_str().expect("etag").to_owned();
    assert_eq!(f["etag"], etag);
    let lm = f["last_modified"].as_str().expect("time");
    let t = humantime::parse_rfc3339(lm).expect("RFC 3339");
    let age = std::time::SystemTime::now()
        .duration_since(t)
        .expect("past");
    assert!(age.as_secs() < 600 && lm.ends_with('Z'), "{lm}");
    let mut names: Vec<_> = f.as_object().expect("object").keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["etag", "key", "last_modified", "md5", "size"]);

    // `GET /files/` is the listing too; a key is never empty.
    let (status, slash) = listing_at(&gw, "/files/?limit=1000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(slash["files"].as_array().map(Vec::len), Some(57));
    // Default page size 100 (57 fit), bounds 1..=1000.
    let (_, default) = listing(&gw, "", None).await;
    assert_eq!(default["files"].as_array().map(Vec::len), Some(57));
    assert!(default["next_cursor"].is_null());
    for bad in ["?limit=0", "?limit=1001", "?limit=x", "?limit=-1"] {
        let (status, body) = listing(&gw, bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "bad_request", "{bad}");
    }
}

async fn listing_at(gw: &Gateway, path: &str) -> (StatusCode, Value) {
    let r = gw.get(path).await;
    (r.status(), r.json().await.expect("json"))
}

fn urlencode(key: &str) -> String {
    key.split('/')
        .map(|seg| {
            seg.bytes()
                .map(|b| match b {
                    b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'_' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::test]
async fn other_users_files_are_never_listed() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    let mut tokens = Vec::new();
    for user in ["alice", "bob"] {
        let r = gw
            .client
            .post(gw.at("/login"))
            .json(&serde_json::json!({"username": user}))
            .send()
            .await
            .expect("login");
        let v: Value = r.json().await.expect("json");
        tokens.push(v["token"].as_str().expect("token").to_owned());
    }
    for (i, t) in tokens.iter().enumerate() {
        for n in 0..3 {
            let r = gw
                .client
                .put(gw.at(&format!("/files/u{i}-{n}")))
                .bearer_auth(t)
                .body(vec![1u8; 5])
                .send()
                .await
                .expect("PUT");
            assert_eq!(r.status(), StatusCode::CREATED);
        }
    }
    gw.store("anon", b"x".to_vec()).await;
    for (i, t) in tokens.iter().enumerate() {
        let (status, page) = listing(&gw, "", Some(t)).await;
        assert_eq!(status, StatusCode::OK);
        let keys: Vec<_> = page["files"]
            .as_array()
            .expect("files")
            .iter()
            .map(|f| f["key"].as_str().expect("key").to_owned())
            .collect();
        assert_eq!(
            keys,
            (0..3).map(|n| format!("u{i}-{n}")).collect::<Vec<_>>()
        );
    }
    let (_, anon) = listing(&gw, "", None).await;
    assert_eq!(anon["files"].as_array().map(Vec::len), Some(1));
    let (status, body) = listing(&gw, "", Some("not-a-token")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

#[tokio::test]
async fn without_the_list_capability_listing_is_501() {
    // A real STEP server with the extension turned off: it neither
    // announces nor serves FILE LIST, as the reference server.
    let step = TestServer::start_with(TestConfig {
        limits: Limits {
            extensions: Extensions {
                list: false,
                ..Extensions::default()
            },
            ..Limits::default()
        },
        ..TestConfig::default()
    })
    .await;
    let gw = gateway_with(step.addr, |_, _| {}).await;
    gw.store("k", b"x".to_vec()).await;
    for path in ["", "?prefix=k&limit=5"] {
        let (status, body) = listing(&gw, path, None).await;
        assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
        assert_eq!(body["error"], "not_implemented");
        assert!(
            body["message"].as_str().is_some_and(|m| m.contains("list")),
            "{body}"
        );
    }
    // Files themselves still work.
    let (status, _, bytes) = gw.get_bytes("/files/k").await;
    assert_eq!((status, bytes.as_slice()), (StatusCode::OK, &b"x"[..]));
}
