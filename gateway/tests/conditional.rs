//! Conditional requests, one row per case: the request's method and
//! validator headers → the status and what body comes back, over real
//! sockets (reqwest). `{E}` is the file's entity tag, `{L}` its
//! Last-Modified, `{L-1d}` / `{L+1d}` a day before / after. Every row gets
//! a file of its own (or none, for the rows on an absent key).
//!
//! The README's table of conditional-request cases is this table.

mod support;

use reqwest::StatusCode;
use step_core::digest::md5_hex;
use step_tests::{TestServer, pattern};
use support::gateway;

/// What the body of the answer must be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Body {
    /// The whole file.
    Whole,
    /// Bytes 0-9.
    First10,
    /// Nothing (304, HEAD, 204).
    Empty,
    /// A JSON error with this `error` code.
    Error(&'static str),
}

struct Case {
    name: &'static str,
    method: &'static str,
    exists: bool,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    body: Body,
}

const fn case(
    name: &'static str,
    method: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    body: Body,
) -> Case {
    Case {
        name,
        method,
        exists: true,
        headers,
        status,
        body,
    }
}

const fn absent(
    name: &'static str,
    method: &'static str,
    headers: &'static [(&'static str, &'static str)],
    status: u16,
    body: Body,
) -> Case {
    Case {
        exists: false,
        ..case(name, method, headers, status, body)
    }
}

use Body::{Empty, Error, First10, Whole};

const PF: Body = Error("precondition_failed");

const CASES: &[Case] = &[
    case("no conditions", "GET", &[], 200, Whole),
    case(
        "If-None-Match: current",
        "GET",
        &[("if-none-match", "{E}")],
        304,
        Empty,
    ),
    case(
        "If-None-Match: weak current",
        "GET",
        &[("if-none-match", "W/{E}")],
        304,
        Empty,
    ),
    case(
        "If-None-Match: other",
        "GET",
        &[("if-none-match", "\"0\"")],
        200,
        Whole,
    ),
    case(
        "If-None-Match: list with current",
        "GET",
        &[("if-none-match", "\"0\", {E}")],
        304,
        Empty,
    ),
    case(
        "If-None-Match: *",
        "GET",
        &[("if-none-match", "*")],
        304,
        Empty,
    ),
    case(
        "If-Match: current",
        "GET",
        &[("if-match", "{E}")],
        200,
        Whole,
    ),
    case("If-Match: other", "GET", &[("if-match", "\"0\"")], 412, PF),
    case(
        "If-Match: weak current (strong comparison)",
        "GET",
        &[("if-match", "W/{E}")],
        412,
        PF,
    ),
    case("If-Match: *", "GET", &[("if-match", "*")], 200, Whole),
    case(
        "If-Modified-Since: Last-Modified",
        "GET",
        &[("if-modified-since", "{L}")],
        304,
        Empty,
    ),
    case(
        "If-Modified-Since: a day later",
        "GET",
        &[("if-modified-since", "{L+1d}")],
        304,
        Empty,
    ),
    case(
        "If-Modified-Since: a day before",
        "GET",
        &[("if-modified-since", "{L-1d}")],
        200,
        Whole,
    ),
    case(
        "If-Modified-Since: not a date (ignored)",
        "GET",
        &[("if-modified-since", "yesterday")],
        200,
        Whole,
    ),
    case(
        "If-Unmodified-Since: a day before",
        "GET",
        &[("if-unmodified-since", "{L-1d}")],
        412,
        PF,
    ),
    case(
        "If-Unmodified-Since: Last-Modified",
        "GET",
        &[("if-unmodified-since", "{L}")],
        200,
        Whole,
    ),
    case(
        "If-None-Match: other wins over If-Modified-Since",
        "GET",
        &[("if-none-match", "\"0\""), ("if-modified-since", "{L}")],
        200,
        Whole,
    ),
    case(
        "If-Match: current wins over If-Unmodified-Since",
        "GET",
        &[("if-match", "{E}"), ("if-unmodified-since", "{L-1d}")],
        200,
        Whole,
    ),
    case(
        "If-Match: other before If-None-Match",
        "GET",
        &[("if-match", "\"0\""), ("if-none-match", "{E}")],
        412,
        PF,
    ),
    case("Range", "GET", &[("range", "bytes=0-9")], 206, First10),
    case(
        "Range, If-Range: current",
        "GET",
        &[("range", "bytes=0-9"), ("if-range", "{E}")],
        206,
        First10,
    ),
    case(
        "Range, If-Range: stale entity tag",
        "GET",
        &[("range", "bytes=0-9"), ("if-range", "\"0\"")],
        200,
        Whole,
    ),
    case(
        "Range, If-Range: weak current",
        "GET",
        &[("range", "bytes=0-9"), ("if-range", "W/{E}")],
        200,
        Whole,
    ),
    case(
        "Range, If-Range: Last-Modified",
        "GET",
        &[("range", "bytes=0-9"), ("if-range", "{L}")],
        206,
        First10,
    ),
    case(
        "Range, If-Range: older date",
        "GET",
        &[("range", "bytes=0-9"), ("if-range", "{L-1d}")],
        200,
        Whole,
    ),
    case(
        "Range, If-None-Match: current",
        "GET",
        &[("range", "bytes=0-9"), ("if-none-match", "{E}")],
        304,
        Empty,
    ),
    case(
        "HEAD If-None-Match: current",
        "HEAD",
        &[("if-none-match", "{E}")],
        304,
        Empty,
    ),
    case(
        "HEAD If-Match: other",
        "HEAD",
        &[("if-match", "\"0\"")],
        412,
        Empty,
    ),
    case(
        "HEAD If-Modified-Since: Last-Modified",
        "HEAD",
        &[("if-modified-since", "{L}")],
        304,
        Empty,
    ),
    case(
        "DELETE If-Match: other",
        "DELETE",
        &[("if-match", "\"0\"")],
        412,
        PF,
    ),
    case(
        "DELETE If-Unmodified-Since: a day before",
        "DELETE",
        &[("if-unmodified-since", "{L-1d}")],
        412,
        PF,
    ),
    case(
        "DELETE If-Match: current",
        "DELETE",
        &[("if-match", "{E}")],
        204,
        Empty,
    ),
    case(
        "DELETE If-Unmodified-Since: Last-Modified",
        "DELETE",
        &[("if-unmodified-since", "{L}")],
        204,
        Empty,
    ),
    case(
        "PUT If-None-Match: * on a file",
        "PUT",
        &[("if-none-match", "*")],
        412,
        PF,
    ),
    case(
        "PUT If-Match: other",
        "PUT",
        &[("if-match", "\"0\"")],
        412,
        PF,
    ),
    case(
        "PUT If-Match: current",
        "PUT",
        &[("if-match", "{E}")],
        201,
        Body::Error(""),
    ),
    case(
        "PUT, no conditions (replace)",
        "PUT",
        &[],
        201,
        Body::Error(""),
    ),
    absent("GET of nothing", "GET", &[], 404, Error("not_found")),
    absent(
        "GET of nothing, If-Match: *",
        "GET",
        &[("if-match", "*")],
        412,
        PF,
    ),
    absent(
        "GET of nothing, If-None-Match: *",
        "GET",
        &[("if-none-match", "*")],
        404,
        Error("not_found"),
    ),
    absent(
        "PUT If-None-Match: * on nothing",
        "PUT",
        &[("if-none-match", "*")],
        201,
        Body::Error(""),
    ),
    absent(
        "PUT If-Match: * on nothing",
        "PUT",
        &[("if-match", "*")],
        412,
        PF,
    ),
    absent(
        "DELETE If-Match: * on nothing",
        "DELETE",
        &[("if-match", "*")],
        412,
        PF,
    ),
];

#[tokio::test]
async fn conditional_request_table() {
    let step = TestServer::start().await;
    let gw = gateway(step.addr).await;
    let content = pattern(50_000, 5);
    let tag = format!("\"{}\"", md5_hex(&content));
    let mut failures = Vec::new();
    for (n, c) in CASES.iter().enumerate() {
        let key = format!("row{n}");
        let url = gw.at(&format!("/files/{key}"));
        let mut last_modified = String::new();
        if c.exists {
            gw.store(&key, content.clone()).await;
            let r = gw.client.head(&url).send().await.expect("HEAD");
            last_modified = r.headers()["last-modified"]
                .to_str()
                .expect("date")
                .to_owned();
            assert_eq!(r.headers()["cache-control"], "private, no-cache");
        }
        let date = |shift: i64| {
            let t =
                httpdate::parse_http_date(&last_modified).expect("Last-Modified is an HTTP-date");
            let day = std::time::Duration::from_secs(86_400);
            let t = if shift < 0 { t - day } else { t + day };
            httpdate::fmt_http_date(t)
        };
        let fill = |v: &str| {
            let mut v = v.replace("{E}", &tag);
            if c.exists {
                v = v
                    .replace("{L-1d}", &date(-1))
                    .replace("{L+1d}", &date(1))
                    .replace("{L}", &last_modified);
            }
            v
        };
        let method = reqwest::Method::from_bytes(c.method.as_bytes()).expect("method");
        let mut req = gw.client.request(method, &url);
        for (name, value) in c.headers {
            req = req.header(*name, fill(value));
        }
        if c.method == "PUT" {
            req = req.body(b"new".to_vec());
        }
        let r = req.send().await.expect("send");
        let status = r.status();
        let headers = r.headers().clone();
        let body = r.bytes().await.expect("body");
        let body_ok = match c.body {
            Whole => body.as_ref() == content.as_slice(),
            First10 => body.as_ref() == &content[..10],
            Empty => body.is_empty(),
            Error("") => true,
            Error(code) => {
                serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v["error"] == code)
            }
        };
        if status != StatusCode::from_u16(c.status).expect("status") || !body_ok {
            failures.push(format!(
                "{}: {} → {status} {:?}, expected {} {:?}",
                c.name,
                c.method,
                String::from_utf8_lossy(&body[..body.len().min(120)]),
                c.status,
                c.body
            ));
        }
        // The validators come with every answer about an existing file.
        if c.exists && matches!(status.as_u16(), 200 | 206 | 304) {
            assert_eq!(headers["etag"], tag.as_str(), "{}", c.name);
            assert_eq!(
                headers["last-modified"],
                last_modified.as_str(),
                "{}",
                c.name
            );
        }
    }
    // The table as Markdown (`--nocapture`), for the README.
    println!("| case | file | request | answer |\n|---|---|---|---|");
    for c in CASES {
        let headers: Vec<String> = c.headers.iter().map(|(n, v)| format!("{n}: {v}")).collect();
        let body = match c.body {
            Whole => "whole file".to_owned(),
            First10 => "bytes 0-9".to_owned(),
            Empty => "no body".to_owned(),
            Error("") => "JSON".to_owned(),
            Error(code) => format!("`{code}`"),
        };
        let headers = if headers.is_empty() {
            String::new()
        } else {
            format!("`{}`", headers.join("`, `"))
        };
        let file = if c.exists { "exists" } else { "absent" };
        println!(
            "| {} | {file} | `{}` {headers} | {} {body} |",
            c.name, c.method, c.status
        );
    }
    assert!(
        failures.is_empty(),
        "{} row(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // A DELETE that succeeded on its condition deleted; a refused one kept.
    for (n, c) in CASES.iter().enumerate() {
        if c.method == "DELETE" && c.exists {
            let kept = gw.get(&format!("/files/row{n}")).await.status() == StatusCode::OK;
            assert_eq!(kept, c.status == 412, "{}", c.name);
        }
    }
}
