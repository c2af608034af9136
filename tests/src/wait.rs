//! Waiting on an observable event in a test, never on a fixed time: a test
//! that sleeps "long enough" and then asserts can pass without the event it
//! depends on having happened (or fail on a slow machine).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

/// Poll `cond` until it holds; panics naming `what` after `limit` (a
/// generous bound for a loaded machine, not a timing assertion).
pub async fn until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited {limit:?} for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Bytes in the regular files under `dir` (0 if it does not exist): shows
/// that a server has written something, whatever its store's layout.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// The rows of /proc/net/tcp (Linux; IPv4 sockets): local and remote
/// address as /proc prints them, state, tx_queue and rx_queue.
fn tcp_table() -> Vec<(String, String, String, u64, u64)> {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return Vec::new();
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            // sl local_address rem_address st tx_queue:rx_queue ...
            let cols: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = cols.get(4)?.split_once(':')?;
            Some((
                (*cols.get(1)?).to_owned(),
                (*cols.get(2)?).to_owned(),
                (*cols.get(3)?).to_owned(),
                u64::from_str_radix(tx, 16).ok()?,
                u64::from_str_radix(rx, 16).ok()?,
            ))
        })
        .collect()
}

/// `addr` as /proc/net/tcp prints it: the in-memory u32, i.e. little-endian hex.
fn proc_addr(addr: SocketAddr) -> Option<String> {
    let IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    Some(format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        addr.port()
    ))
}

const LISTEN: &str = "0A";
const ESTABLISHED: &str = "01";

/// How many connections wait in the kernel's accept queue of the IPv4
/// listener on `addr` (for a listening socket, rx_queue is that queue's
/// length). None if no such listener is found.
pub fn accept_queue(addr: SocketAddr) -> Option<u64> {
    let local = proc_addr(addr)?;
    tcp_table()
        .into_iter()
        .find(|(l, _, st, _, _)| *l == local && st == LISTEN)
        .map(|(_, _, _, _, rx)| rx)
}

/// Bytes sent to the server on `addr` over loopback that its process has not
/// read yet: unacknowledged in the clients' send queues plus unread in the
/// server's receive queues. 0 means the server has read all it was sent.
pub fn unread_by(addr: SocketAddr) -> Option<u64> {
    let server = proc_addr(addr)?;
    Some(
        tcp_table()
            .into_iter()
            .filter(|(_, _, st, _, _)| st == ESTABLISHED)
            .map(|(l, r, _, tx, rx)| {
                if l == server {
                    rx
                } else if r == server {
                    tx
                } else {
                    0
                }
            })
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_written_as_proc_net_tcp_does() {
        let addr: SocketAddr = "127.0.0.1:1379".parse().expect("addr");
        assert_eq!(proc_addr(addr).as_deref(), Some("0100007F:0563"));
    }

    #[tokio::test]
    async fn a_connection_not_accepted_is_seen_in_the_accept_queue() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        assert_eq!(accept_queue(addr), Some(0));
        let _waiting = tokio::net::TcpStream::connect(addr).await.expect("connect");
        until(
            "the connection in the queue",
            Duration::from_secs(10),
            || accept_queue(addr) == Some(1),
        )
        .await;
        let (_accepted, _) = listener.accept().await.expect("accept");
        assert_eq!(accept_queue(addr), Some(0));
        assert_eq!(unread_by(addr), Some(0));
    }
}
