//! The HTTP routes the page stands on, over real sockets (reqwest) in front
//! of a real step-server: folder levels and search in `GET /files`, zips of
//! folders and selections (`GET /archive`, `POST /download`), one rule for
//! name clashes on the three upload routes, and 401s that never make a
//! browser open its own password dialog over the page.

mod support;

use std::collections::BTreeMap;
use std::io::Read;

use reqwest::StatusCode;
use serde_json::Value;
use step_core::digest::md5_hex;
use step_tests::{TestServer, pattern};
use support::{Gateway, gateway};

/// `/files/{key}`, each segment escaped ("." and ".." too), as the page
/// spells it.
fn file_path(key: &str) -> String {
    let segments: Vec<String> = key
        .split('/')
        .map(|s| match s {
            "." => "%2E".to_owned(),
            ".." => "%2E%2E".to_owned(),
            s => s.replace('%', "%25").replace(' ', "%20"),
        })
        .collect();
    format!("/files/{}", segments.join("/"))
}

fn url(gw: &Gateway, path: &str, pairs: &[(&str, &str)]) -> reqwest::Url {
    let mut url = reqwest::Url::parse(&gw.at(path)).expect("url");
    for (k, v) in pairs {
        url.query_pairs_mut().append_pair(k, v);
    }
    url
}

async fn list(gw: &Gateway, pairs: &[(&str, &str)]) -> Value {
    let r = gw
        .client
        .get(url(gw, "/files", pairs))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::OK, "{pairs:?}");
    r.json().await.expect("json")
}

fn keys(page: &Value) -> Vec<String> {
    page["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["key"].as_str().expect("key").to_owned())
        .collect()
}

fn folders(page: &Value) -> Vec<String> {
    page["folders"]
        .as_array()
        .expect("folders")
        .iter()
        .map(|f| f["prefix"].as_str().expect("prefix").to_owned())
        .collect()
}

/// Every entry (folders as `F:prefix`) of a listing, following cursors.
async fn walk(gw: &Gateway, pairs: &[(&str, &str)], limit: u64) -> (Vec<String>, usize) {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let limit = limit.to_string();
        let mut p: Vec<(&str, &str)> = pairs.to_vec();
        p.push(("limit", &limit));
        if let Some(c) = &cursor {
            p.push(("cursor", c));
        }
        let page = list(gw, &p).await;
        pages += 1;
        out.extend(folders(&page).into_iter().map(|f| format!("F:{f}")));
        out.extend(keys(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (out, pages),
        }
        assert!(pages < 500, "no end");
    }
}

async fn tree(gw: &Gateway) {
    for key in [
        "docs/readme.txt",
        "docs/Report 2024.PDF",
        "docs/old/a.txt",
        "docs/old/b.txt",
        "docs/old/deep/c.txt",
        "docs/pics/otter.jpg",
        "docs/zz.txt",
        "top.txt",
        "music/x.mp3",
    ] {
        gw.store(key, key.as_bytes().to_vec()).await;
    }
}

#[tokio::test]
async fn a_folder_level_lists_its_files_and_subfolders_only() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    tree(&gw).await;
    let root = list(&gw, &[("delimiter", "/")]).await;
    assert_eq!(folders(&root), ["docs/", "music/"]);
    assert_eq!(keys(&root), ["top.txt"]);
    let docs = list(&gw, &[("prefix", "docs/"), ("delimiter", "/")]).await;
    assert_eq!(folders(&docs), ["docs/old/", "docs/pics/"]);
    assert_eq!(
        keys(&docs),
        ["docs/Report 2024.PDF", "docs/readme.txt", "docs/zz.txt"]
    );
    assert!(docs["next_cursor"].is_null(), "{docs}");
    // Page by page, one entry at a time: the same entries, each once.
    let (paged, pages) = walk(&gw, &[("prefix", "docs/"), ("delimiter", "/")], 1).await;
    let mut want: Vec<String> = ["F:docs/old/", "F:docs/pics/"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    want.extend(keys(&docs));
    let mut got = paged.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "{paged:?}");
    assert!(pages >= 5, "{pages} pages");
    // Without delimiter, as before: every key below the prefix.
    let flat = list(&gw, &[("prefix", "docs/old/")]).await;
    assert_eq!(
        keys(&flat),
        ["docs/old/a.txt", "docs/old/b.txt", "docs/old/deep/c.txt"]
    );
    assert_eq!(folders(&flat), Vec::<String>::new());
}

#[tokio::test]
async fn a_large_subfolder_is_one_entry() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    // 1,500 files below one folder, two files beside it.
    let mut tasks = Vec::new();
    for i in 0..1500 {
        let client = gw.client.clone();
        let at = gw.at(&format!("/files/big/f{i:05}"));
        tasks.push(tokio::spawn(async move {
            let r = client.put(at).body("x").send().await.expect("PUT");
            assert_eq!(r.status(), StatusCode::CREATED);
        }));
        if tasks.len() == 32 {
            for t in tasks.drain(..) {
                t.await.expect("task");
            }
        }
    }
    for t in tasks {
        t.await.expect("task");
    }
    gw.store("a.txt", b"a".to_vec()).await;
    gw.store("zz.txt", b"z".to_vec()).await;
    let page = list(&gw, &[("delimiter", "/"), ("limit", "10")]).await;
    assert_eq!(folders(&page), ["big/"]);
    assert_eq!(keys(&page), ["a.txt", "zz.txt"]);
    assert!(page["next_cursor"].is_null(), "{page}");
}

#[tokio::test]
async fn search_finds_substrings_in_any_case_and_says_when_nothing_matches() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    tree(&gw).await;
    let hits = list(&gw, &[("q", "REPORT")]).await;
    assert_eq!(keys(&hits), ["docs/Report 2024.PDF"]);
    let hits = list(&gw, &[("q", ".txt"), ("prefix", "docs/")]).await;
    assert_eq!(
        keys(&hits),
        [
            "docs/old/a.txt",
            "docs/old/b.txt",
            "docs/old/deep/c.txt",
            "docs/readme.txt",
            "docs/zz.txt"
        ]
    );
    // Matched below the prefix only: every key here contains "docs/".
    assert_eq!(
        keys(&list(&gw, &[("q", "docs"), ("prefix", "docs/")]).await).len(),
        0
    );
    let none = list(&gw, &[("q", "no such thing")]).await;
    assert_eq!(keys(&none).len(), 0);
    assert!(none["next_cursor"].is_null());
    // Paged: two at a time, all of them, once.
    let (paged, _) = walk(&gw, &[("q", "T")], 2).await;
    assert_eq!(paged.len(), 8, "{paged:?}");
    // With a delimiter, the search stays on one level: files and folders.
    let level = list(&gw, &[("q", "O"), ("prefix", "docs/"), ("delimiter", "/")]).await;
    assert_eq!(folders(&level), ["docs/old/"]);
    assert_eq!(keys(&level), ["docs/Report 2024.PDF"]);
}

// ------------------------------------------------------------ archives

fn unzip(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).expect("a zip");
    let mut out = BTreeMap::new();
    for i in 0..zip.len() {
        let mut f = zip.by_index(i).expect("entry");
        let mut data = Vec::new();
        f.read_to_end(&mut data).expect("read entry");
        out.insert(f.name().expect("a name").into_owned(), data);
    }
    out
}

async fn get_zip(gw: &Gateway, pairs: &[(&str, &str)]) -> (reqwest::header::HeaderMap, Vec<u8>) {
    let r = gw
        .client
        .get(url(gw, "/archive", pairs))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::OK, "{pairs:?}");
    let h = r.headers().clone();
    (h, r.bytes().await.expect("body").to_vec())
}

#[tokio::test]
async fn a_folder_downloads_as_one_zip_named_by_the_keys_below_it() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    tree(&gw).await;
    let big = pattern(3 << 20, 7);
    gw.store("docs/old/big.bin", big.clone()).await;
    let (h, body) = get_zip(&gw, &[("prefix", "docs/old/")]).await;
    assert_eq!(h["content-type"], "application/zip");
    let disposition = h["content-disposition"].to_str().expect("ascii");
    assert!(
        disposition.starts_with("attachment; filename=\"old.zip\""),
        "{disposition}"
    );
    let files = unzip(&body);
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["a.txt", "b.txt", "big.bin", "deep/c.txt"]
    );
    assert_eq!(files["deep/c.txt"], b"docs/old/deep/c.txt");
    assert_eq!(md5_hex(&files["big.bin"]), md5_hex(&big));
    // The whole tree.
    let (_, body) = get_zip(&gw, &[]).await;
    assert_eq!(unzip(&body).len(), 10);
    // Nothing there: 404, in words.
    let r = gw
        .client
        .get(url(&gw, "/archive", &[("prefix", "nothing/")]))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_selection_downloads_as_one_zip() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    tree(&gw).await;
    let (_, body) = get_zip(
        &gw,
        &[
            ("prefix", "docs/"),
            ("key", "docs/readme.txt"),
            ("key", "docs/old/a.txt"),
            ("folder", "docs/pics/"),
            ("key", "docs/gone.txt"),
        ],
    )
    .await;
    let files = unzip(&body);
    assert_eq!(
        files.keys().collect::<Vec<_>>(),
        ["old/a.txt", "pics/otter.jpg", "readme.txt"]
    );
    // A key outside the prefix the names are made from is refused.
    let r = gw
        .client
        .get(url(
            &gw,
            "/archive",
            &[("prefix", "docs/"), ("key", "top.txt")],
        ))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn names_that_could_escape_the_folder_are_made_safe() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    // Named in the query: a URL path cannot carry ".." segments.
    for key in [
        "../evil.txt",
        "/abs.txt",
        "a/../../up.txt",
        "ok/fine.txt",
        "x\\y",
        "x%5Cy",
    ] {
        let part = reqwest::multipart::Part::bytes(key.as_bytes().to_vec()).file_name("x");
        let r = gw
            .client
            .post(url(&gw, "/upload", &[("key", key)]))
            .multipart(reqwest::multipart::Form::new().part("file", part))
            .send()
            .await
            .expect("POST");
        assert_eq!(r.status(), StatusCode::CREATED, "{key}");
    }
    let (_, body) = get_zip(&gw, &[]).await;
    let files = unzip(&body);
    for name in files.keys() {
        let parts: Vec<&str> = name.split('/').collect();
        assert!(
            !parts
                .iter()
                .any(|p| *p == ".." || *p == "." || p.is_empty()),
            "{name} could escape"
        );
        assert!(!name.starts_with('/'), "{name}");
    }
    assert_eq!(files["ok/fine.txt"], b"ok/fine.txt");
    // A made-safe name that equals a real one: both kept, under two names.
    assert_eq!(files["x%5Cy"], b"x%5Cy");
    assert_eq!(files["x%5Cy (1)"], b"x\\y");
    assert_eq!(files.len(), 6, "{:?}", files.keys());
    // A key named twice is in the zip once.
    let (_, body) = get_zip(&gw, &[("key", "ok/fine.txt"), ("key", "ok/fine.txt")]).await;
    assert_eq!(unzip(&body).len(), 1);
}

#[tokio::test]
async fn the_pages_download_form_carries_its_token() {
    let step = TestServer::start().await;
    let gw = support::gateway_with(step.addr, |http, _| http.require_auth = true).await;
    let alice = gw.token("alice").await;
    for key in ["pics/a.png", "pics/b.txt"] {
        let r = gw
            .client
            .put(gw.at(&format!("/files/{key}")))
            .bearer_auth(&alice)
            .body(key.to_owned())
            .send()
            .await
            .expect("PUT");
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let form = |pairs: Vec<(&'static str, String)>| {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        gw.client
            .post(gw.at("/download"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    // Without the token: 401, and no Basic challenge for a page's request.
    let r = form(vec![("prefix", "pics/".into())]).await.expect("POST");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = form(vec![("token", alice.clone()), ("prefix", "pics/".into())])
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .expect("ascii")
            .contains("pics.zip")
    );
    let files = unzip(&r.bytes().await.expect("body"));
    assert_eq!(files.keys().collect::<Vec<_>>(), ["a.png", "b.txt"]);
    // One key: that file itself, saved (an image too, which GET shows inline).
    let r = form(vec![
        ("token", alice.clone()),
        ("prefix", "pics/".into()),
        ("key", "pics/a.png".into()),
    ])
    .await
    .expect("POST");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .expect("ascii")
            .starts_with("attachment")
    );
    assert_eq!(r.bytes().await.expect("body"), "pics/a.png");
}

// ------------------------------------------------------------ name clashes

async fn multipart(gw: &Gateway, query: &str, name: &str, body: &str) -> reqwest::Response {
    let part = reqwest::multipart::Part::bytes(body.as_bytes().to_vec()).file_name(name.to_owned());
    let form = reqwest::multipart::Form::new().part("file", part);
    gw.client
        .post(gw.at(&format!("/upload{query}")))
        .multipart(form)
        .send()
        .await
        .expect("POST /upload")
}

async fn text(gw: &Gateway, key: &str) -> String {
    let r = gw.get(&file_path(key)).await;
    assert_eq!(r.status(), StatusCode::OK, "{key}");
    r.text().await.expect("text")
}

#[tokio::test]
async fn keep_both_gives_the_upload_a_free_name_on_every_route() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    gw.store("notes.txt", b"first".to_vec()).await;
    // Refused by default, in words that say what to do.
    let r = multipart(&gw, "", "notes.txt", "second").await;
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"], "key_exists");
    let msg = body["message"].as_str().expect("message");
    assert!(
        msg.contains("overwrite=true") && msg.contains("rename=true"),
        "{msg}"
    );
    // Keep both: POST /upload, PUT, tus creation.
    let r = multipart(&gw, "?rename=true", "notes.txt", "second").await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let stored: Value = r.json().await.expect("json");
    assert_eq!(stored["key"], "notes (1).txt");
    let r = gw
        .client
        .put(gw.at("/files/notes.txt?rename=true"))
        .body("third")
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::CREATED);
    let stored: Value = r.json().await.expect("json");
    assert_eq!(stored["key"], "notes (2).txt");
    let r = support::tus::tus(&gw, reqwest::Method::POST, "/tus/?rename=true")
        .header("Upload-Length", "6")
        .header("Upload-Metadata", format!("filename {}", b64("notes.txt")))
        .send()
        .await
        .expect("tus POST");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(
        support::tus::header(&r, "upload-metadata"),
        format!("filename {}", b64("notes (3).txt"))
    );
    let at = support::tus::header(&r, "location");
    let r = support::tus::patch(&gw, &at, 0, b"fourth", None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(text(&gw, "notes.txt").await, "first");
    assert_eq!(text(&gw, "notes (1).txt").await, "second");
    assert_eq!(text(&gw, "notes (2).txt").await, "third");
    assert_eq!(text(&gw, "notes (3).txt").await, "fourth");
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test]
async fn concurrent_keep_both_uploads_never_share_a_name() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    gw.store("same.bin", b"original".to_vec()).await;
    let mut tasks = Vec::new();
    for i in 0..6usize {
        let client = gw.client.clone();
        let at = gw.at("/upload?rename=true");
        tasks.push(tokio::spawn(async move {
            let body = pattern(300_000 + i * 1000, i as u8);
            let part = reqwest::multipart::Part::bytes(body.clone()).file_name("same.bin");
            let form = reqwest::multipart::Form::new().part("file", part);
            let r = client.post(at).multipart(form).send().await.expect("POST");
            assert_eq!(r.status(), StatusCode::CREATED);
            let v: Value = r.json().await.expect("json");
            (v["key"].as_str().expect("key").to_owned(), md5_hex(&body))
        }));
    }
    let mut names = BTreeMap::new();
    for t in tasks {
        let (key, md5) = t.await.expect("task");
        assert!(
            names.insert(key.clone(), md5).is_none(),
            "{key} given twice"
        );
    }
    assert_eq!(names.len(), 6);
    for (key, md5) in &names {
        let (status, _, body) = gw.get_bytes(&file_path(key)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&md5_hex(&body), md5, "{key} holds its own upload's bytes");
    }
    assert_eq!(text(&gw, "same.bin").await, "original");
}

#[tokio::test]
async fn replace_and_refuse_are_the_same_words_on_every_route() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    gw.store("a.txt", b"old".to_vec()).await;
    // PUT replaces by default; overwrite=false refuses like the others.
    let r = gw
        .client
        .put(gw.at("/files/a.txt?overwrite=false"))
        .body("new")
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = support::tus::tus(&gw, reqwest::Method::POST, "/tus/")
        .header("Upload-Length", "3")
        .header("Upload-Metadata", format!("filename {}", b64("a.txt")))
        .send()
        .await
        .expect("tus POST");
    assert_eq!(r.status(), StatusCode::CONFLICT);
    assert_eq!(text(&gw, "a.txt").await, "old");
    // tus with overwrite=true replaces when the upload completes.
    let r = support::tus::tus(&gw, reqwest::Method::POST, "/tus/?overwrite=true")
        .header("Upload-Length", "3")
        .header("Upload-Metadata", format!("filename {}", b64("a.txt")))
        .send()
        .await
        .expect("tus POST");
    assert_eq!(r.status(), StatusCode::CREATED);
    let at = support::tus::header(&r, "location");
    assert_eq!(
        text(&gw, "a.txt").await,
        "old",
        "readers get the old file meanwhile"
    );
    let r = support::tus::patch(&gw, &at, 0, b"new", None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(text(&gw, "a.txt").await, "new");
    let r = multipart(&gw, "?overwrite=true&rename=true", "a.txt", "x").await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_browsers_request_gets_no_basic_challenge() {
    let step = TestServer::start().await;
    let gw = support::gateway_with(step.addr, |http, _| http.require_auth = true).await;
    let challenges = |r: &reqwest::Response| {
        r.headers()
            .get_all("www-authenticate")
            .iter()
            .map(|v| v.to_str().unwrap_or_default().to_owned())
            .collect::<Vec<_>>()
    };
    // A wrong password at the page's sign-in (fetch: Sec-Fetch-Mode cors).
    let r = gw
        .client
        .post(gw.at("/login"))
        .header("sec-fetch-mode", "cors")
        .header("sec-fetch-site", "same-origin")
        .json(&serde_json::json!({"username": "alice", "password": "wrong"}))
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenges(&r), ["Bearer"]);
    // An image or a listing fetched by the page.
    for mode in ["no-cors", "cors", "same-origin"] {
        let r = gw
            .client
            .get(gw.at("/files"))
            .header("sec-fetch-mode", mode)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(challenges(&r), ["Bearer"], "{mode}");
    }
    // A person who opens a URL, and curl: offered Basic.
    let r = gw
        .client
        .get(gw.at("/files"))
        .header("sec-fetch-mode", "navigate")
        .send()
        .await
        .expect("GET");
    assert!(
        challenges(&r)[0].starts_with("Basic"),
        "{:?}",
        challenges(&r)
    );
    let r = gw.get("/files").await;
    assert!(challenges(&r)[0].starts_with("Basic"));
}
