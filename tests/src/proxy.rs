//! A TCP proxy in front of a server, for tests: it counts the connections it
//! accepts (so a test can tell a reused connection from a new one) and can
//! hold the server's bytes back for as long as a test needs (so a client's
//! wait for an answer times out without depending on timing). It can also
//! damage what a client uploads: [`Proxy::flip_uploads`] flips one bit of
//! the block of the next FILE UPLOADs it forwards (bytes damaged on the
//! way, which only an end-to-end md5 catches).

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
    /// UPLOAD blocks still to damage.
    flips: Arc<AtomicUsize>,
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
        let flips = Arc::new(AtomicUsize::new(0));
        let damage = Arc::clone(&flips);
        let task = tokio::spawn(async move {
            // Dropped with this task, which aborts every connection's task.
            let mut conns = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                conns.spawn(forward(client, target, held.clone(), Arc::clone(&damage)));
                while conns.try_join_next().is_some() {}
            }
        });
        Proxy {
            addr,
            accepted,
            hold,
            flips,
            task,
        }
    }

    /// Flip one bit in the block of each of the next `n` FILE UPLOADs.
    pub fn flip_uploads(&self, n: usize) {
        self.flips.store(n, Ordering::SeqCst);
    }

    /// UPLOADs still to damage.
    pub fn flips_left(&self) -> usize {
        self.flips.load(Ordering::SeqCst)
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

/// Forward STEP frames from `rd` to `wr`, damaging UPLOAD blocks while
/// `flips` says so.
async fn forward_frames(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    flips: &AtomicUsize,
) {
    loop {
        let mut head = [0u8; 8];
        if rd.read_exact(&mut head).await.is_err() {
            break;
        }
        let n = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let m = u32::from_be_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let mut json = vec![0u8; n];
        let mut binary = vec![0u8; m];
        if rd.read_exact(&mut json).await.is_err() || rd.read_exact(&mut binary).await.is_err() {
            break;
        }
        let upload = serde_json::from_slice::<serde_json::Value>(&json)
            .is_ok_and(|v| v["operation"] == "UPLOAD");
        if upload
            && m > 0
            && flips
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                .is_ok()
        {
            binary[m / 2] ^= 0x01;
        }
        let sent = async {
            wr.write_all(&head).await?;
            wr.write_all(&json).await?;
            wr.write_all(&binary).await
        };
        if sent.await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

async fn forward(
    client: TcpStream,
    target: SocketAddr,
    mut held: watch::Receiver<bool>,
    flips: Arc<AtomicUsize>,
) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rd, mut client_wr) = client.into_split();
    let (mut server_rd, server_wr) = server.into_split();
    let up = forward_frames(client_rd, server_wr, &flips);
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
