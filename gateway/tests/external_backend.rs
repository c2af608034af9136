//! The gateway binary in front of a STEP server in another process's
//! place: the one `STEP_EXTERNAL_BACKEND` names (e.g. the reference Python
//! server run by hand), or, without the variable, a step-server started here
//! on a free port. A malformed variable is reported as ignored with the
//! reason (a failure under `STEP_REQUIRE_ALL_TESTS`; see `step_tests::prereq`).

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use step_core::digest::md5_hex;
use step_tests::prereq::{self, block_on_threads};
use step_tests::{TestServer, pattern};
use tokio::process::{Child, Command};

fn main() {
    prereq::main(vec![prereq::needs(
        "external_backend_flows",
        || match std::env::var("STEP_EXTERNAL_BACKEND") {
            Err(_) => Ok(None),
            Ok(addr) => addr
                .parse::<SocketAddr>()
                .map(Some)
                .map_err(|e| format!("STEP_EXTERNAL_BACKEND={addr} is not host:port ({e})")),
        },
        |addr| {
            block_on_threads(2, async move {
                match addr {
                    Some(addr) => external_backend_flows(addr).await,
                    None => {
                        let server = TestServer::start().await;
                        external_backend_flows(server.addr).await;
                    }
                }
            })
        },
    )]);
}

/// The gateway binary on a free port, in front of `backend`.
struct Gateway {
    url: String,
    client: reqwest::Client,
    _child: Child,
}

impl Gateway {
    async fn start(backend: SocketAddr, extra: &[&str]) -> Gateway {
        let client = reqwest::Client::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_gateway"));
            // Only the flags below decide how it runs.
            for (var, _) in std::env::vars() {
                if var.starts_with("GATEWAY_") || var.starts_with("STEP_") {
                    cmd.env_remove(var);
                }
            }
            let mut child = cmd
                .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--backend", &backend.to_string(), "--log", "warn"])
                .args(extra)
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn the gateway binary");
            let url = format!("http://127.0.0.1:{port}");
            for _ in 0..100 {
                let healthy = client
                    .get(format!("{url}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if healthy {
                    return Gateway {
                        url,
                        client,
                        _child: child,
                    };
                }
                if child.try_wait().expect("try_wait").is_some() {
                    break; // exited: most likely the port was taken meanwhile
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = child.kill().await;
        }
        panic!("the gateway binary did not come up");
    }

    fn at(&self, path: &str) -> String {
        format!("{}{path}", self.url)
    }

    async fn multipart(&self, name: &str, body: Vec<u8>) -> reqwest::Response {
        let part = reqwest::multipart::Part::bytes(body).file_name(name.to_owned());
        let form = reqwest::multipart::Form::new().part("file", part);
        self.client
            .post(self.at("/upload"))
            .multipart(form)
            .send()
            .await
            .expect("send")
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.at(path)).send().await.expect("GET")
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(self.at(path))
            .send()
            .await
            .expect("DELETE")
    }

    async fn get_bytes(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Vec<u8>) {
        let r = self.get(path).await;
        let (s, h) = (r.status(), r.headers().clone());
        (s, h, r.bytes().await.expect("body").to_vec())
    }
}

/// The basic flows against the external server. The gateway must fall back
/// to stop-and-wait and 20480-byte blocks against the reference.
async fn external_backend_flows(addr: SocketAddr) {
    let gw = Gateway::start(addr, &["--backend-timeout", "30", "--pool-wait-ms", "300"]).await;
    let tag = std::process::id();
    let body = pattern(1_000_000 + 7, 9);
    let name = format!("ext-{tag}.bin");
    let r = gw.multipart(&name, body.clone()).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{:?}", r.text().await);
    let (status, _, got) = gw.get_bytes(&format!("/files/{name}")).await;
    assert_eq!((status, md5_hex(&got)), (StatusCode::OK, md5_hex(&body)));
    let put = format!("ext-put-{tag}.bin");
    let r = gw
        .client
        .put(gw.at(&format!("/files/{put}")))
        .body(body.clone())
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = gw
        .client
        .get(gw.at(&format!("/files/{put}")))
        .header("range", "bytes=20000-50000")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        r.bytes().await.expect("body").to_vec(),
        body[20000..=50000].to_vec()
    );
    assert_eq!(
        gw.delete(&format!("/files/{put}")).await.status(),
        StatusCode::NO_CONTENT
    );
    let r = gw
        .client
        .put(gw.at(&format!("/records/rec-{tag}")))
        .json(&json!({"v": 1}))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    let v: Value = gw
        .get(&format!("/records/rec-{tag}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(v["v"], 1);
    assert_eq!(gw.get("/readyz").await.status(), StatusCode::OK);
    eprintln!("external backend {addr}: all flows passed");
}
