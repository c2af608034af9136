//! A TCP proxy in front of a server, for tests: it counts the connections it
//! accepts (so a test can tell a reused connection from a new one) and can
//! hold the server's bytes back for as long as a test needs (so a client's
//! wait for an answer times out without depending on timing).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

#[derive(Debug)]
pub struct Proxy {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    hold: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listen on 127.0.0.1 (free port), forwarding each connection to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (hold, held) = watch::channel(false);
        let count = Arc::clone(&accepted);
        let task = tokio::spawn(async move {
            // Dropped with this task, which aborts every connection's task.
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                conns.spawn(forward(client, target, held.clone()));
                while conns.try_join_next().is_some() {}
            }
        });
        Proxy {
            addr,
            accepted,
            hold,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// While on, nothing the server sends reaches the clients (it is read
    /// and kept until `hold(false)`).
    pub fn hold(&self, on: bool) {
        self.hold.send_replace(on);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(client: TcpStream, target: SocketAddr, mut held: watch::Receiver<bool>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, mut server_wr) = server.into_split();
    let up = async {
        let _ = tokio::io::copy(&mut client_rd, &mut server_wr).await;
        let _ = server_wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = server_rd.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if held.wait_for(|on| !*on).await.is_err() {
                break;
            }
            if client_wr.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_wr.shutdown().await;
    };
    tokio::join!(up, down);
}
