//! Throwaway certificates for the TLS tests (rcgen): a CA of their own and
//! a leaf for `localhost` and 127.0.0.1 signed by it, as PEM files in a
//! temp directory; and a step-server in this process with its TLS port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use step_core::token::TokenKey;
use step_server::Service;
use step_server::store::DiskStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::TEST_SECRET;

/// A CA and a server certificate it signed, as PEM files.
#[derive(Debug)]
pub struct TestPki {
    pub dir: tempfile::TempDir,
    /// The CA certificate: what clients trust (`curl --cacert`, `--ca-cert`).
    pub ca: PathBuf,
    /// The server's certificate chain and key (`--tls-cert`, `--tls-key`).
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca, cert, key) = (
            dir.path().join("ca.pem"),
            dir.path().join("server.pem"),
            dir.path().join("server.key"),
        );
        issue(&ca, &cert, &key, "STEP test CA");
        TestPki { dir, ca, cert, key }
    }

    /// Replace the server's certificate and key with ones signed by a new
    /// CA, written to `ca2.pem` (returned): a renewal for the reload tests.
    pub fn renew(&self) -> PathBuf {
        let ca2 = self.dir.path().join("ca2.pem");
        issue(&ca2, &self.cert, &self.key, "STEP test CA 2");
        ca2
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn issue(ca_path: &Path, cert_path: &Path, key_path: &Path, ca_name: &str) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, ca_name);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key"))
        .expect("CA certificate");
    let key = KeyPair::generate().expect("server key");
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
        .expect("server params");
    params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = params.signed_by(&key, &ca).expect("server certificate");
    std::fs::write(ca_path, ca.pem()).expect("write CA");
    // Written to temp names and renamed, so a reload never reads half a file.
    let tmp_cert = cert_path.with_extension("tmp-cert");
    let tmp_key = key_path.with_extension("tmp-key");
    std::fs::write(&tmp_cert, cert.pem()).expect("write cert");
    std::fs::write(&tmp_key, key.serialize_pem()).expect("write key");
    std::fs::rename(&tmp_cert, cert_path).expect("rename cert");
    std::fs::rename(&tmp_key, key_path).expect("rename key");
}

/// A step-server in this process: plaintext on `addr`, TLS on `tls_addr`
/// with `pki`'s certificate, over a disk store in its own temp directory.
#[derive(Debug)]
pub struct TlsTestServer {
    pub addr: SocketAddr,
    pub tls_addr: SocketAddr,
    pub data_dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
}

impl TlsTestServer {
    pub async fn start(pki: &TestPki) -> TlsTestServer {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let store = DiskStore::open(data_dir.path()).expect("store");
        let service = Arc::new(
            Service::new(
                store,
                TokenKey::new(TEST_SECRET, 86_400),
                step_server::service::Limits::default(),
            )
            .with_public(step_server::auth::Public {
                anonymous: step_core::access::Anonymous::Write,
                ..Default::default()
            }),
        );
        let files = step_server::tls::CertFiles::open(&pki.cert, &pki.key).expect("certificate");
        let acceptor = files.acceptor().expect("acceptor");
        let plain = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let tls = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (addr, tls_addr) = (
            plain.local_addr().expect("addr"),
            tls.local_addr().expect("addr"),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(step_server::run_with_tls(
            plain,
            Some((tls, acceptor)),
            service,
            step_server::ConnectionLimits::default(),
            async {
                let _ = stopped.await;
            },
        ));
        TlsTestServer {
            addr,
            tls_addr,
            data_dir,
            stop: Some(stop),
        }
    }
}

impl Drop for TlsTestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
