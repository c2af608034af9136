//! Accepting connections and serving requests on them.
//!
//! Shaped like mini-redis: [`run`] takes a bound listener and a shutdown
//! future; a semaphore permit is taken *before* `accept`, so the connection cap
//! holds even under a flood; each connection is a task that reads requests,
//! answers them in order and flushes only when no further request is already
//! buffered, so pipelined requests are answered in batches.
//!
//! A request is read in two steps ([`RequestCodec`]): its header and JSON part
//! first, which the service checks ([`Service::admit`]); only an admitted
//! FILE UPLOAD has its binary part read, and only once the connection holds
//! that many bytes of the server-wide frame budget (a semaphore counting
//! bytes; released when the block has been handled). Every other request's
//! binary part — an unauthenticated one, a malformed one, a refused one — is
//! read and dropped in small pieces, never stored. Skipping rather than
//! closing keeps a well-behaved client's pipeline in sync (an honest client
//! whose token expired gets its 403s and can log in again on the same
//! connection); it costs the server no memory, and the bytes skipped are at
//! most the codec's binary cap per request, which the peer had to send.
//!
//! A new connection has `first_request_timeout` (10 s) to send its first
//! request's header and JSON part, and one source address (an IPv6 /64) may
//! hold at most `max_per_source` connections (further ones are closed at
//! accept): silent sockets neither hold a slot for the whole idle timeout nor
//! let one address take every slot, so honest clients keep being served.
//!
//! JSON parts must be read before anything can be checked, so those longer
//! than [`UNBUDGETED_JSON`] wait for a share of a JSON budget of their own
//! before a byte of them is buffered. It is separate from the block budget so
//! that unauthenticated peers trickling large JSON parts can delay only other
//! large JSON parts, never uploads; ordinary requests are far below the
//! threshold and never wait.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use step_core::{Message, RequestCodec, RequestPart, StepCodec};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::binding::ConnState;
use crate::service::{Admission, Reply, Service};

/// Connection-level settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    pub max_connections: usize,
    /// A connection with no complete request for this long is closed; so is
    /// one whose peer has not taken a response for this long.
    pub idle_timeout: Duration,
    pub codec: StepCodec,
    /// Bytes of binary parts buffered at once, server-wide (see the module
    /// docs). Raised to the codec's binary cap if below it.
    pub frame_budget: usize,
    /// Bytes of JSON parts longer than [`UNBUDGETED_JSON`] buffered at once,
    /// server-wide. Raised to the codec's JSON cap if below it.
    pub json_budget: usize,
    /// A new connection's first request must bring its header and JSON
    /// part within this (at most the idle timeout).
    pub first_request_timeout: Duration,
    /// Connections one source address (an IPv6 /64) may hold at once.
    pub max_per_source: usize,
}

/// Default of [`ConnectionLimits::frame_budget`]: 32 of the largest blocks.
pub const DEFAULT_FRAME_BUDGET: usize = 256 << 20;
/// Default of [`ConnectionLimits::json_budget`]: 64 of the largest JSON parts.
pub const DEFAULT_JSON_BUDGET: usize = 64 << 20;
/// JSON parts up to this long are read without budget: every ordinary
/// request is far smaller, and at the default connection cap this is at most
/// 256 MiB in all.
pub const UNBUDGETED_JSON: usize = 16 << 10;

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: 16384,
            idle_timeout: Duration::from_secs(300),
            codec: StepCodec::default(),
            frame_budget: DEFAULT_FRAME_BUDGET,
            json_budget: DEFAULT_JSON_BUDGET,
            first_request_timeout: DEFAULT_FIRST_REQUEST_TIMEOUT,
            max_per_source: DEFAULT_MAX_PER_SOURCE,
        }
    }
}

/// Default of [`ConnectionLimits::first_request_timeout`], as long as a
/// TLS handshake may take.
pub const DEFAULT_FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default of [`ConnectionLimits::max_per_source`].
pub const DEFAULT_MAX_PER_SOURCE: usize = 128;

/// Connections open per source address: each accepted connection holds a
/// [`SourceSlot`] that gives its count back when dropped. Holds at most one
/// entry per open connection.
#[derive(Debug, Default)]
struct Sources {
    open: std::sync::Mutex<std::collections::HashMap<[u8; 8], usize>>,
}

/// One connection's place in [`Sources`].
#[derive(Debug)]
struct SourceSlot {
    sources: Arc<Sources>,
    key: [u8; 8],
}

impl Sources {
    /// A slot for a connection from `ip`, unless it holds `max` already.
    fn take(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<SourceSlot> {
        let key = crate::auth::source_key(ip);
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            sources: Arc::clone(self),
            key,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.sources.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Serve STEP on `listener` until `shutdown` resolves; then stop accepting,
/// let every connection finish the request it is on, and return.
pub async fn run(
    listener: TcpListener,
    service: Arc<Service>,
    limits: ConnectionLimits,
    shutdown: impl Future,
) {
    run_with_tls(listener, None, service, limits, shutdown).await;
}

/// [`run`], and STEP over TLS on a second listener when `tls` is given: one
/// service, one connection cap and one set of budgets for both.
pub async fn run_with_tls(
    listener: TcpListener,
    tls: Option<(TcpListener, TlsAcceptor)>,
    service: Arc<Service>,
    limits: ConnectionLimits,
    shutdown: impl Future,
) {
    let shared = Shared {
        permits: Arc::new(Semaphore::new(limits.max_connections)),
        budget: Arc::new(Budgets {
            blocks: budget("frame", limits.frame_budget, limits.codec.max_binary()),
            json: budget("JSON", limits.json_budget, limits.codec.max_json()),
        }),
        stop: CancellationToken::new(),
        tracker: TaskTracker::new(),
        next_id: AtomicU64::new(1),
        sources: Arc::new(Sources::default()),
        service,
        limits,
    };
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "Server is ready");
    }
    let tls_loop = async {
        match &tls {
            Some((listener, acceptor)) => {
                if let Ok(addr) = listener.local_addr() {
                    info!(%addr, "Server is ready for STEP over TLS");
                }
                accept_loop(listener, Some(acceptor), &shared).await;
            }
            None => std::future::pending().await,
        }
    };

    tokio::select! {
        () = accept_loop(&listener, None, &shared) => {}
        () = tls_loop => {}
        _ = shutdown => info!("shutting down: no new connections, finishing requests in flight"),
    }
    shared.stop.cancel();
    shared.tracker.close();
    shared.tracker.wait().await;
    info!("all connections closed");
}

/// What every accept loop of one server shares.
#[derive(Debug)]
struct Shared {
    permits: Arc<Semaphore>,
    budget: Arc<Budgets>,
    stop: CancellationToken,
    tracker: TaskTracker,
    next_id: AtomicU64,
    sources: Arc<Sources>,
    service: Arc<Service>,
    limits: ConnectionLimits,
}

async fn accept_loop(listener: &TcpListener, tls: Option<&TlsAcceptor>, shared: &Shared) {
    loop {
        let permit = match Arc::clone(&shared.permits).acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                error!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(source_slot) = shared.sources.take(peer.ip(), shared.limits.max_per_source) else {
            // Closed at once: its slot goes back with the permit.
            debug!(%peer, "connection refused: too many from this address");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let service = Arc::clone(&shared.service);
        let budget = Arc::clone(&shared.budget);
        let stop = shared.stop.clone();
        let limits = shared.limits;
        let tls = tls.cloned();
        let span = info_span!("conn", id, %peer, tls = tls.is_some());
        shared.tracker.spawn(
            async move {
                match tls {
                    None => serve_connection(stream, peer, service, budget, limits, stop).await,
                    Some(acceptor) => {
                        let wait = crate::tls::HANDSHAKE_TIMEOUT.min(limits.idle_timeout);
                        let handshake = tokio::select! {
                            () = stop.cancelled() => None,
                            r = tokio::time::timeout(wait, acceptor.accept(stream)) => Some(r),
                        };
                        match handshake {
                            Some(Ok(Ok(tls_stream))) => {
                                serve_connection(tls_stream, peer, service, budget, limits, stop)
                                    .await
                            }
                            Some(Ok(Err(e))) => debug!(%peer, error = %e, "TLS handshake failed"),
                            Some(Err(_)) => debug!(%peer, "TLS handshake timed out"),
                            None => {}
                        }
                    }
                }
                drop(source_slot);
                drop(permit);
            }
            .instrument(span),
        );
    }
}

/// The server-wide byte budgets, as semaphores counting bytes.
#[derive(Debug)]
struct Budgets {
    blocks: Arc<Semaphore>,
    json: Arc<Semaphore>,
}

/// A budget of `configured` bytes, raised if needed so that the largest
/// single part (`largest`) fits: a part larger than the whole budget would
/// wait forever.
fn budget(what: &str, configured: usize, largest: usize) -> Arc<Semaphore> {
    let bytes = configured.max(largest).min(Semaphore::MAX_PERMITS);
    if bytes != configured {
        warn!(
            configured,
            used = bytes,
            "{what} budget adjusted to hold one largest part"
        );
    }
    Arc::new(Semaphore::new(bytes))
}

/// `bytes` of `budget`. When they are not free at once, the answers this
/// connection has already produced are flushed first (a pipelining client
/// must not wait for them while this request waits for budget); then wait,
/// unless the server stops first.
async fn take_share<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, RequestCodec>,
    limits: &ConnectionLimits,
    budget: &Arc<Semaphore>,
    bytes: usize,
    stop: &CancellationToken,
) -> Result<OwnedSemaphorePermit, Closing> {
    // Frame headers announce u32 lengths, capped by the codec below the budget.
    let bytes = u32::try_from(bytes).map_err(|_| "bad frame")?;
    if let Ok(share) = Arc::clone(budget).try_acquire_many_owned(bytes) {
        return Ok(share);
    }
    flush(framed, limits).await?;
    tokio::select! {
        () = stop.cancelled() => Err("server shutting down"),
        share = Arc::clone(budget).acquire_many_owned(bytes) => {
            share.map_err(|_| "server shutting down")
        }
    }
}

/// Why a connection ends when its peer does not take what it is sent.
const STALLED: Closing = "peer stopped reading";

/// Send what is buffered, waiting at most as long as a read may.
async fn flush<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, RequestCodec>,
    limits: &ConnectionLimits,
) -> Result<(), Closing> {
    let flush = SinkExt::<Message>::flush(framed);
    match tokio::time::timeout(limits.idle_timeout, flush).await {
        Err(_) => Err(STALLED),
        Ok(Err(e)) => {
            debug!(error = %e, "flush failed");
            Err("write failed")
        }
        Ok(Ok(())) => Ok(()),
    }
}

/// Give back the read and write buffers of a connection that has nothing
/// buffered: it may stay quiet for minutes, and ten thousand quiet
/// connections should not hold 16 KiB each (measured: 11.4 KB of RSS per idle
/// connection before, 2.6 KB after). The next request allocates again: one
/// allocation and one extra read for its header.
fn release_buffers<S: AsyncRead + AsyncWrite + Unpin>(framed: &mut Framed<S, RequestCodec>) {
    if framed.read_buffer().is_empty() {
        *framed.read_buffer_mut() = BytesMut::new();
    }
    if framed.write_buffer().is_empty() {
        *framed.write_buffer_mut() = BytesMut::new();
    }
}

/// Why a connection loop ends.
type Closing = &'static str;

/// The next piece of a request, within `wait`, unless the server stops
/// first.
async fn next_part<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, RequestCodec>,
    wait: Duration,
    stop: &CancellationToken,
) -> Result<RequestPart, Closing> {
    let next = tokio::select! {
        () = stop.cancelled() => return Err("server shutting down"),
        next = tokio::time::timeout(wait, framed.next()) => next,
    };
    match next {
        Err(_) => Err("idle timeout"),
        Ok(None) => Err("closed by peer"),
        Ok(Some(Err(e))) => {
            warn!(error = %e, "unreadable frame; closing");
            Err("bad frame")
        }
        Ok(Some(Ok(part))) => Ok(part),
    }
}

/// What one connection reads requests with.
struct Reader<'a> {
    service: &'a Service,
    budget: &'a Budgets,
    limits: &'a ConnectionLimits,
    stop: &'a CancellationToken,
    peer: SocketAddr,
    /// What the connection remembers between requests.
    conn: &'a ConnState,
}

/// Read one request and answer it: the reply, or why the connection ends.
/// Its header and JSON part must arrive within `head_wait`.
async fn next_reply<S: AsyncRead + AsyncWrite + Unpin>(
    framed: &mut Framed<S, RequestCodec>,
    r: &Reader<'_>,
    head_wait: Duration,
) -> Result<Reply, Closing> {
    let (service, budget, limits, stop) = (r.service, r.budget, r.limits, r.stop);
    let head_by = tokio::time::Instant::now() + head_wait;
    let left = || head_by.saturating_duration_since(tokio::time::Instant::now());
    let mut part = next_part(framed, left(), stop).await?;
    // Held until the request is answered (its parsed JSON lives that long).
    let mut _json_share = None;
    if let RequestPart::LargeHead { json_len } = part {
        _json_share = Some(take_share(framed, limits, &budget.json, json_len, stop).await?);
        part = next_part(framed, left(), stop).await?;
    }
    let RequestPart::Head { json, binary_len } = part else {
        // A body comes only after read_body(), which is always followed by
        // reading it below.
        error!("request body without a head; closing");
        return Err("bad frame");
    };
    // Not raced against `stop`: a request that has arrived is finished.
    let request = match service.admit_from(json, Some(r.peer.ip())).await {
        // The codec skips the binary part, if any, before the next head.
        Admission::Answer(reply) => return Ok(reply),
        Admission::Proceed(request) => request,
    };
    if !request.wants_body() || binary_len == 0 {
        return Ok(service.serve(request, Bytes::new(), r.conn).await);
    }
    // Wait for budget before reading a byte of the block: under load an
    // honest client's block waits in its own socket buffers. (Always JSON
    // share first, then block share: no cycle, no deadlock.)
    let share = take_share(framed, limits, &budget.blocks, binary_len, stop).await?;
    framed.codec_mut().read_body();
    let RequestPart::Body(body) = next_part(framed, limits.idle_timeout, stop).await? else {
        error!("expected a request body; closing");
        return Err("bad frame");
    };
    let reply = service.serve(request, body, r.conn).await;
    // The block has been handled (written or refused) and dropped.
    drop(share);
    Ok(reply)
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    peer: SocketAddr,
    service: Arc<Service>,
    budget: Arc<Budgets>,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    info!(%peer, "new connection");
    let codec = RequestCodec::new(limits.codec).with_json_allowance(UNBUDGETED_JSON);
    let mut framed = Framed::new(stream, codec);
    release_buffers(&mut framed);
    let mut requests = 0u64;
    let conn = ConnState::new();
    let reader = Reader {
        conn: &conn,
        service: &service,
        budget: &budget,
        limits: &limits,
        stop: &stop,
        peer,
    };
    // A peer that stops reading would otherwise hold its slot (and a task)
    // forever: every write waits at most as long as a read may.
    let reason = loop {
        let head_wait = if requests == 0 {
            limits.first_request_timeout.min(limits.idle_timeout)
        } else {
            limits.idle_timeout
        };
        let reply = match next_reply(&mut framed, &reader, head_wait).await {
            Ok(reply) => reply,
            Err(reason) => break reason,
        };
        requests += 1;
        match tokio::time::timeout(limits.idle_timeout, framed.feed(reply.message)).await {
            Err(_) => break STALLED,
            Ok(Err(e)) => {
                warn!(error = %e, "cannot send response");
                break "write failed";
            }
            Ok(Ok(())) => {}
        }
        if reply.close {
            break "BYE";
        }
        // Flush unless the next request is already here; in particular
        // before skipping a refused request's binary part, so the refusal
        // reaches the client while it is still sending.
        if !framed.codec().head_buffered(framed.read_buffer()) {
            if let Err(reason) = flush(&mut framed, &limits).await {
                break reason;
            }
            release_buffers(&mut framed);
        }
    };
    if reason != STALLED {
        let _ = flush(&mut framed, &limits).await;
        let _ = tokio::time::timeout(limits.idle_timeout, framed.get_mut().shutdown()).await;
    }
    info!(%peer, requests, reason, "connection closed");
}
