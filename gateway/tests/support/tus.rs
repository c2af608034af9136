//! tus requests over reqwest for the tus tests: the protocol header on
//! every request, creation, a PATCH, the offset HEAD reports.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::{Method, RequestBuilder, StatusCode};
use step_tests::TestServer;

use super::Gateway;

/// The gateway's block size in these tests: small, so files of a few
/// blocks stay small.
pub const BLOCK: u64 = 65_536;

pub async fn gateway(step: &TestServer) -> Gateway {
    super::gateway_with(step.addr, |_, transfer| transfer.block_size = BLOCK).await
}

/// A request with `Tus-Resumable: 1.0.0`.
pub fn tus(gw: &Gateway, method: Method, path: &str) -> RequestBuilder {
    gw.client
        .request(method, gw.at(path))
        .header("Tus-Resumable", "1.0.0")
}

pub fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .expect("ascii")
        .to_owned()
}

/// POST /tus/ for `len` bytes named `name`; the upload's path.
pub async fn create(gw: &Gateway, name: &str, len: usize, auth: Option<&str>) -> String {
    let mut req = tus(gw, Method::POST, "/tus/")
        .header("Upload-Length", len.to_string())
        .header(
            "Upload-Metadata",
            format!("filename {}", STANDARD.encode(name)),
        );
    if let Some(token) = auth {
        req = req.bearer_auth(token);
    }
    let r = req.send().await.expect("POST /tus/");
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "tus-resumable"), "1.0.0");
    header(&r, "location")
}

/// A PATCH at `offset` of `path`, its body still to be given.
pub fn patch_request(gw: &Gateway, path: &str, offset: u64) -> RequestBuilder {
    tus(gw, Method::PATCH, path)
        .header("Upload-Offset", offset.to_string())
        .header("Content-Type", "application/offset+octet-stream")
}

/// PATCH `data` at `offset`, with `Upload-Checksum: md5 <checksum>` if given.
pub async fn patch(
    gw: &Gateway,
    path: &str,
    offset: u64,
    data: &[u8],
    checksum: Option<String>,
) -> reqwest::Response {
    let mut req = patch_request(gw, path, offset).body(data.to_vec());
    if let Some(sum) = checksum {
        req = req.header("Upload-Checksum", format!("md5 {sum}"));
    }
    req.send().await.expect("PATCH")
}

/// The offset HEAD reports (which must answer 200, not cached).
pub async fn offset(gw: &Gateway, path: &str) -> u64 {
    let r = tus(gw, Method::HEAD, path).send().await.expect("HEAD");
    assert_eq!(r.status(), StatusCode::OK, "HEAD {path}");
    assert_eq!(header(&r, "cache-control"), "no-store");
    header(&r, "upload-offset").parse().expect("a number")
}
