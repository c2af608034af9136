//! User content never runs in the gateway's origin, and other sites cannot
//! make a browser change anything: over real HTTP (reqwest) against the
//! gateway in front of a real step-server.
//!
//! * `GET`/`HEAD /files/{key}` (whole, ranged, revalidated) send `nosniff`,
//!   a sandboxing CSP that loads nothing, and `Content-Disposition`:
//!   `inline` only for passive media and plain text, `attachment` for
//!   everything that can carry script (HTML, SVG, XML, PDF, JavaScript,
//!   unknown types);
//! * the page forbids framing and inline script, and its own requests work;
//! * a state-changing request from another origin (`Origin`,
//!   `Sec-Fetch-Site`) is 403 with the JSON error body on every route —
//!   upload, PUT, DELETE, tus, records, login — and changes nothing, while
//!   the gateway's own pages, the origins of `--cors-origins` and clients
//!   that send neither header (curl, scripts) go through;
//! * a multipart `file` field that is text, not a file, is refused.
//!
//! The browser side of the same (scripts that do not run, a forged form
//! that is refused) is in `browser.rs`.

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use step_tests::TestServer;

mod support;
use support::Gateway;

fn h(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
        .unwrap_or_default()
}

/// The headers every response carrying user bytes must have.
fn assert_inert(headers: &HeaderMap, what: &str) {
    assert_eq!(h(headers, "x-content-type-options"), "nosniff", "{what}");
    let csp = h(headers, "content-security-policy");
    for part in ["sandbox", "default-src 'none'"] {
        assert!(csp.contains(part), "{what}: CSP {csp:?} lacks {part}");
    }
    assert!(!csp.contains("script-src"), "{what}: CSP {csp:?}");
}

#[tokio::test]
async fn user_content_is_served_inert() {
    let step = TestServer::start().await;
    let gw = support::gateway(step.addr).await;
    let script = b"<script>alert(document.domain)</script>".to_vec();
    // key, Content-Type, how it is shown.
    let cases = [
        ("page.html", "text/html", "attachment"),
        ("pic.svg", "image/svg+xml", "attachment"),
        ("data.xml", "text/xml", "attachment"),
        ("doc.pdf", "application/pdf", "attachment"),
        ("app.js", "text/javascript", "attachment"),
        ("page.xhtml", "application/xhtml+xml", "attachment"),
        ("no-extension", "application/octet-stream", "attachment"),
        ("x.unknownext", "application/octet-stream", "attachment"),
        ("style.css", "text/css", "attachment"),
        ("notes.json", "application/json", "attachment"),
        ("photo.png", "image/png", "inline"),
        ("photo.JPG", "image/jpeg", "inline"),
        ("anim.gif", "image/gif", "inline"),
        ("pic.webp", "image/webp", "inline"),
        ("song.mp3", "audio/mpeg", "inline"),
        ("clip.mp4", "video/mp4", "inline"),
        ("clip.webm", "video/webm", "inline"),
        ("readme.txt", "text/plain; charset=utf-8", "inline"),
    ];
    for (key, kind, shown) in cases {
        gw.store(key, script.clone()).await;
        let (status, headers, body) = gw.get_bytes(&format!("/files/{key}")).await;
        assert_eq!(status, StatusCode::OK, "{key}");
        assert_eq!(body, script, "{key}: the bytes as stored");
        assert_eq!(h(&headers, "content-type"), kind, "{key}");
        let disposition = h(&headers, "content-disposition");
        assert!(
            disposition.starts_with(&format!("{shown}; filename=\"{key}\"")),
            "{key}: {disposition}"
        );
        assert_inert(&headers, key);
        // HEAD, a range and a revalidation say the same.
        let head = gw
            .client
            .head(gw.at(&format!("/files/{key}")))
            .send()
            .await
            .expect("HEAD");
        assert_eq!(h(head.headers(), "content-disposition"), disposition);
        assert_inert(head.headers(), &format!("HEAD {key}"));
        let part = gw.get_range(&format!("/files/{key}"), "bytes=0-3").await;
        assert_eq!(part.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(h(part.headers(), "content-disposition"), disposition);
        assert_inert(part.headers(), &format!("range of {key}"));
        let etag = h(&headers, "etag");
        let again = gw
            .client
            .get(gw.at(&format!("/files/{key}")))
            .header("If-None-Match", etag)
            .send()
            .await
            .expect("GET");
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_inert(again.headers(), &format!("304 of {key}"));
    }
    // A name that is not plain ASCII: a safe fallback and the exact name.
    gw.store("dir/r%C3%A9sum%C3%A9%20%22q%22.html", script.clone())
        .await;
    let (_, headers, _) = gw
        .get_bytes("/files/dir/r%C3%A9sum%C3%A9%20%22q%22.html")
        .await;
    assert_eq!(
        h(&headers, "content-disposition"),
        "attachment; filename=\"r_sum_ _q_.html\"; \
         filename*=UTF-8''r%C3%A9sum%C3%A9%20%22q%22.html"
    );
}

#[tokio::test]
async fn every_response_is_inert_and_the_page_cannot_be_framed() {
    let step = TestServer::start().await;
    let gw = support::gateway(step.addr).await;
    for path in ["/", "/assets/app.js", "/assets/style.css"] {
        let r = gw.get(path).await;
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let csp = h(r.headers(), "content-security-policy");
        for part in [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            "form-action 'self'",
        ] {
            assert!(csp.contains(part), "{path}: CSP {csp:?} lacks {part}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(h(r.headers(), "x-frame-options"), "DENY", "{path}");
        assert_eq!(h(r.headers(), "x-content-type-options"), "nosniff");
    }
    // The page holds no inline script or style: all of it is in the two
    // assets the CSP allows.
    let page = gw.get("/").await.text().await.expect("page");
    assert!(!page.contains("<script>") && !page.contains("style="));
    for handler in [
        "onclick=",
        "onload=",
        "onerror=",
        "onsubmit=",
        "javascript:",
    ] {
        assert!(!page.contains(handler), "inline {handler}");
    }
    // JSON answers and errors: nosniff, not frameable, nothing runs.
    for path in ["/files", "/files/none", "/healthz", "/no-such-route"] {
        let r = gw.get(path).await;
        assert_eq!(
            h(r.headers(), "x-content-type-options"),
            "nosniff",
            "{path}"
        );
        let csp = h(r.headers(), "content-security-policy");
        assert!(
            csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
            "{path}: {csp:?}"
        );
    }
}

/// A request the way a browser on `origin` sends it (`Sec-Fetch-Site` as
/// a browser would set it for the gateway at `gw`).
fn from(gw: &Gateway, method: Method, path: &str, origin: Option<&str>) -> reqwest::RequestBuilder {
    let mut req = gw.client.request(method, gw.at(path));
    if let Some(origin) = origin {
        let site = if origin == gw.url {
            "same-origin"
        } else if origin.starts_with("http://127.0.0.1:") {
            "same-site"
        } else {
            "cross-site"
        };
        req = req.header("Origin", origin).header("Sec-Fetch-Site", site);
    }
    req
}

/// Every state-changing route, as a request that would succeed from the
/// gateway's own page (each on a fresh key of `tag`).
fn writes(gw: &Gateway, origin: Option<&str>, tag: &str) -> Vec<(String, reqwest::RequestBuilder)> {
    let part = || reqwest::multipart::Part::bytes(b"forged".to_vec()).file_name("f.bin");
    vec![
        (
            "POST /upload".into(),
            from(
                gw,
                Method::POST,
                &format!("/upload?key={tag}-mp&overwrite=true"),
                origin,
            )
            .multipart(reqwest::multipart::Form::new().part("file", part())),
        ),
        (
            "PUT /files".into(),
            from(gw, Method::PUT, &format!("/files/{tag}-put"), origin).body("forged"),
        ),
        (
            "DELETE /files".into(),
            from(gw, Method::DELETE, "/files/victim.txt", origin),
        ),
        (
            "POST /tus/".into(),
            from(gw, Method::POST, "/tus/", origin)
                .header("Tus-Resumable", "1.0.0")
                .header("Upload-Length", "6"),
        ),
        (
            "POST /records".into(),
            from(gw, Method::POST, "/records", origin).json(&json!({"n": 1})),
        ),
        (
            "PUT /records".into(),
            from(gw, Method::PUT, &format!("/records/{tag}-rec"), origin).json(&json!({"n": 1})),
        ),
        (
            "DELETE /records".into(),
            from(gw, Method::DELETE, "/records/victim", origin),
        ),
        (
            "POST /login".into(),
            from(gw, Method::POST, "/login", origin).json(&json!({"username": "mallory"})),
        ),
    ]
}

async fn victim_intact(gw: &Gateway) {
    let (status, _, body) = gw.get_bytes("/files/victim.txt").await;
    assert_eq!(status, StatusCode::OK, "victim.txt deleted");
    assert_eq!(body, b"alice's words");
    let r = gw.get("/records/victim").await;
    assert_eq!(r.status(), StatusCode::OK, "record deleted");
}

#[tokio::test]
async fn writes_from_other_sites_are_refused_and_change_nothing() {
    let step = TestServer::start().await;
    let gw = support::gateway_with(step.addr, |http, _| {
        http.cors_origins = vec!["https://app.example".into()];
    })
    .await;
    gw.store("victim.txt", b"alice's words".to_vec()).await;
    let r = gw
        .client
        .put(gw.at("/records/victim"))
        .json(&json!({"n": 0}))
        .send()
        .await
        .expect("PUT record");
    assert_eq!(r.status(), StatusCode::CREATED);
    let port = gw.addr.port();
    let other_port = format!("http://127.0.0.1:{}", port.wrapping_add(1).max(1));
    let by_name = format!("http://localhost:{port}");
    for origin in [
        "https://evil.example",
        other_port.as_str(),
        by_name.as_str(),
        "null",
        "http://app.example",
    ] {
        for (what, req) in writes(&gw, Some(origin), "x") {
            let r = req.send().await.expect("send");
            assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what} from {origin}");
            let err: Value = r.json().await.expect("a JSON error");
            assert_eq!(err["error"], "cross_site", "{what} from {origin}");
            let msg = err["message"].as_str().unwrap_or_default();
            assert!(msg.contains("another site"), "{what}: {msg}");
        }
    }
    // Sec-Fetch-Site alone (a browser that sent no Origin) is enough.
    let r = gw
        .client
        .delete(gw.at("/files/victim.txt"))
        .header("Sec-Fetch-Site", "cross-site")
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    victim_intact(&gw).await;
    for key in ["x-mp", "x-put", "x-rec"] {
        assert_eq!(
            gw.get(&format!("/files/{key}")).await.status(),
            StatusCode::NOT_FOUND,
            "{key}"
        );
    }
    // Reads from anywhere are fine: they change nothing.
    let r = from(
        &gw,
        Method::GET,
        "/files/victim.txt",
        Some("https://evil.example"),
    )
    .send()
    .await
    .expect("GET");
    assert_eq!(r.status(), StatusCode::OK);

    // The gateway's own page, an origin of --cors-origins, a browser that
    // says same-origin (behind a proxy that rewrote Host), and curl or a
    // script (no such headers) go through.
    let own = gw.url.clone();
    for (tag, origin) in [
        ("own", Some(own.as_str())),
        ("cors", Some("https://app.example")),
        ("script", None),
    ] {
        for (what, req) in writes(&gw, origin, tag) {
            let r = req.send().await.expect("send");
            assert_ne!(r.status(), StatusCode::FORBIDDEN, "{what} from {origin:?}");
            assert!(
                r.status().is_success() || r.status() == StatusCode::NOT_FOUND,
                "{what} from {origin:?}: {}",
                r.status()
            );
            if what.starts_with("DELETE") {
                // Put it back for the next origin.
                gw.store("victim.txt", b"alice's words".to_vec()).await;
                let _ = gw
                    .client
                    .put(gw.at("/records/victim"))
                    .json(&json!({"n": 0}))
                    .send()
                    .await;
            }
        }
    }
    let r = gw
        .client
        .put(gw.at("/files/proxied"))
        .header("Origin", "https://files.example")
        .header("Sec-Fetch-Site", "same-origin")
        .body("x")
        .send()
        .await
        .expect("PUT");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "same-origin behind a proxy"
    );
}

#[tokio::test]
async fn a_text_field_named_file_is_not_a_file() {
    let step = TestServer::start().await;
    let gw = support::gateway(step.addr).await;
    let form = reqwest::multipart::Form::new().text("file", "<script>x</script>");
    let r = gw
        .client
        .post(gw.at("/upload?key=typed.html"))
        .multipart(form)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let err: Value = r.json().await.expect("JSON");
    assert_eq!(err["error"], "bad_request");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or_default()
            .contains("file=@"),
        "{err}"
    );
    assert_eq!(
        gw.get("/files/typed.html").await.status(),
        StatusCode::NOT_FOUND
    );
    // A file part (curl -F file=@x) is stored as before.
    let r = gw.multipart("real.txt", b"hello".to_vec()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}
