//! Storing a byte stream of known size as a STEP file.
//!
//! The body is cut into plan-sized blocks as it arrives (zero-copy where a
//! body chunk holds a whole block), hashed on the way, and handed to one or
//! several pooled connections, each pipelining its blocks. Memory is bounded
//! by `connections × window` blocks, whatever the file size. The md5 the STEP
//! server reports must equal the md5 of the bytes received; if it does not,
//! the file is deleted and the request fails.
//!
//! In process (the embedded server) each byte is hashed once: the blocks
//! handed to the service are the very buffers read from the body (shared,
//! not copied), and the service hashes what it stores, so a second md5 here
//! could only ever agree; the server's md5 is the file's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};
use serde::Serialize;
use step_core::Problem;
use step_core::client::{SaveOptions, UploadPlan};
use step_core::digest::EMPTY_MD5;
use tracing::{info, warn};

use crate::backend::{Backend, Route, TransferPlan};
use crate::error::GatewayError;

/// What the gateway answers after storing a file.
#[derive(Debug, Clone, Serialize)]
pub struct Stored {
    pub key: String,
    pub size: u64,
    pub md5: String,
    pub url: String,
}

/// Path under which a stored file is served: each `/`-separated segment
/// escaped, empty ones kept (`/abs` and `a//b` are keys of their own).
pub fn file_url(key: &str) -> String {
    let mut out = String::from("/files/");
    for (i, segment) in key.split('/').enumerate() {
        if i > 0 {
            out.push('/');
        }
        push_segment(&mut out, segment);
    }
    out
}

/// Path under which a record is served: `/records/{key}` is one segment, so
/// a `/` in the key is escaped too.
pub fn record_url(key: &str) -> String {
    let mut out = String::from("/records/");
    push_segment(&mut out, key);
    out
}

/// Append one escaped path segment. `.` and `..` are escaped as well: as
/// they are, every client would resolve them away (RFC 3986 dot segments).
fn push_segment(out: &mut String, segment: &str) {
    match segment {
        "." => out.push_str("%2E"),
        ".." => out.push_str("%2E%2E"),
        _ => out.extend(url_escape(segment)),
    }
}

fn url_escape(s: &str) -> impl Iterator<Item = String> + '_ {
    s.bytes().map(|b| {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            (b as char).to_string()
        } else {
            format!("%{b:02X}")
        }
    })
}

/// Cuts a byte stream into blocks of `block_size`, hashing and counting.
struct Chunker<S> {
    body: S,
    pending: Bytes,
    buf: BytesMut,
    block_size: usize,
    index: u64,
    received: u64,
    expected: u64,
    ended: bool,
    hasher: Hasher,
}

/// The md5 of the body, computed as it is read.
enum Hasher {
    /// The server's md5 is taken as is (in process, see the module comment).
    Server,
    Inline(Md5),
    /// Chunks go to a blocking thread, which returns the digest once the
    /// sender is dropped.
    Thread {
        queue: tokio::sync::mpsc::Sender<Bytes>,
        done: tokio::task::JoinHandle<Md5>,
    },
}

impl Hasher {
    fn for_upload(backend: &Backend, size: u64) -> Self {
        if backend.is_in_process() {
            Hasher::Server
        } else if size >= THREAD_HASH_MIN {
            let (queue, done) = hash_thread();
            Hasher::Thread { queue, done }
        } else {
            Hasher::Inline(Md5::new())
        }
    }

    async fn update(&mut self, chunk: &Bytes) -> Result<(), GatewayError> {
        match self {
            Hasher::Server => {}
            Hasher::Inline(md5) => md5.update(chunk),
            Hasher::Thread { queue, .. } => queue
                .send(chunk.clone())
                .await
                .map_err(|_| GatewayError::Internal("md5 thread stopped".into()))?,
        }
        Ok(())
    }

    /// The md5 of the body; `None` when the server's is to be taken.
    async fn finish(self) -> Result<Option<String>, GatewayError> {
        let md5 = match self {
            Hasher::Server => return Ok(None),
            Hasher::Inline(md5) => md5,
            Hasher::Thread { queue, done } => {
                drop(queue);
                done.await
                    .map_err(|e| GatewayError::Internal(format!("md5 thread: {e}")))?
            }
        };
        Ok(Some(hex::encode(md5.finalize())))
    }
}

/// Bodies at least this large are hashed on a blocking thread: md5 runs at
/// under 1 GB/s per core, and inline it would run on the one task that also
/// reads the body and feeds every STEP connection of the upload.
const THREAD_HASH_MIN: u64 = 1 << 20;
/// Body chunks that may wait for that thread (hyper's are at most ~400 KiB).
const HASH_QUEUE_CHUNKS: usize = 8;

/// A thread hashing the chunks sent to it, in order, until the sender drops.
fn hash_thread() -> (
    tokio::sync::mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<Md5>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(HASH_QUEUE_CHUNKS);
    let done = tokio::task::spawn_blocking(move || {
        let mut md5 = Md5::new();
        while let Some(chunk) = rx.blocking_recv() {
            md5.update(&chunk);
        }
        md5
    });
    (tx, done)
}

impl<S> Chunker<S>
where
    S: Stream<Item = Result<Bytes, GatewayError>> + Unpin,
{
    fn fail(&mut self, e: GatewayError) -> Option<Result<(u64, Bytes), GatewayError>> {
        self.ended = true;
        self.pending = Bytes::new();
        self.buf.clear();
        Some(Err(e))
    }

    fn emit(&mut self, block: Bytes) -> Option<Result<(u64, Bytes), GatewayError>> {
        let i = self.index;
        self.index += 1;
        Some(Ok((i, block)))
    }

    async fn next_block(&mut self) -> Option<Result<(u64, Bytes), GatewayError>> {
        loop {
            if self.buf.is_empty() && self.pending.len() >= self.block_size {
                let block = self.pending.split_to(self.block_size);
                return self.emit(block);
            }
            if !self.pending.is_empty() {
                let take = (self.block_size - self.buf.len()).min(self.pending.len());
                self.buf.extend_from_slice(&self.pending.split_to(take));
                if self.buf.len() == self.block_size {
                    let block = self.buf.split().freeze();
                    return self.emit(block);
                }
                continue;
            }
            if self.ended {
                if self.buf.is_empty() {
                    return None;
                }
                let block = self.buf.split().freeze();
                return self.emit(block);
            }
            match self.body.next().await {
                Some(Ok(chunk)) => {
                    self.received += chunk.len() as u64;
                    if self.received > self.expected {
                        return self.fail(GatewayError::BadRequest(format!(
                            "the body is longer than the announced {} bytes",
                            self.expected
                        )));
                    }
                    if let Err(e) = self.hasher.update(&chunk).await {
                        return self.fail(e);
                    }
                    self.pending = chunk;
                }
                Some(Err(e)) => return self.fail(e),
                None => {
                    self.ended = true;
                    if self.received != self.expected {
                        return self.fail(GatewayError::BadRequest(format!(
                            "the body ended after {} of {} bytes",
                            self.received, self.expected
                        )));
                    }
                }
            }
        }
    }
}

/// What storing does to a key that holds a complete file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overwrite {
    /// Refuse (STEP 402, HTTP 409): create only.
    Never,
    /// Replace it atomically (STEP SAVE `replace`); behind a server without
    /// the `replace` extension this is [`Overwrite::Never`].
    Always,
    /// Replace only the version with this md5 (If-Match), checked by the
    /// STEP server where it swaps; needs the `replace` extension.
    IfMd5(String),
}

/// How long a connection sending an upload's blocks waits for the next
/// block before going back to the pool: a body arriving at network speed
/// keeps it; a slow one gives it back between blocks.
const LINGER: Duration = Duration::from_millis(50);

/// UPLOAD one block on a connection of its own (waiting for the pool).
async fn send_one(
    backend: &Backend,
    token: &str,
    plan: &UploadPlan,
    route: Route,
    (index, data): (u64, Bytes),
) -> Result<Option<String>, GatewayError> {
    send_last(backend, token, plan, route, (index, data), None).await
}

/// UPLOAD one block, with the file's md5 when it is the one held back to
/// complete the upload ([`StepClient::upload_last_block`]).
///
/// [`StepClient::upload_last_block`]: step_core::client::StepClient::upload_last_block
async fn send_last(
    backend: &Backend,
    token: &str,
    plan: &UploadPlan,
    route: Route,
    (index, data): (u64, Bytes),
    md5: Option<&str>,
) -> Result<Option<String>, GatewayError> {
    let mut conn = backend.conn_to(token, route).await?;
    let sent = conn.upload_last_block(plan, index, data, md5).await;
    sent.map_err(|e| backend.step_error(e))
}

/// SAVE `key` (asking for a plan) on a pooled connection that goes straight
/// back: nothing is held while the body arrives. A SAVE above the size the
/// server announced is refused here, before it is sent.
async fn begin(
    backend: &Backend,
    token: &str,
    key: &str,
    size: u64,
    overwrite: &Overwrite,
) -> Result<(UploadPlan, TransferPlan), GatewayError> {
    let mut conn = backend.conn(token).await?;
    let tp = backend.plan_for(&conn);
    if let Some(max) = conn.capabilities().max_file_size
        && size > max
    {
        return Err(GatewayError::TooLarge(format!(
            "The file's {size} bytes are more than the STEP server takes ({max} bytes at most); \
             nothing was stored. Upload a smaller file."
        )));
    }
    let opts = SaveOptions {
        block_size: tp.block_size,
        resume: false,
    };
    let replace = conn.capabilities().replace;
    let planned = match overwrite {
        Overwrite::Always if replace => conn.file_save_replace(key, size, opts, None).await,
        Overwrite::IfMd5(md5) if replace => {
            conn.file_save_replace(key, size, opts, Some(md5)).await
        }
        Overwrite::IfMd5(_) => {
            return Err(GatewayError::NotImplemented(
                "If-Match on PUT needs the STEP server's \"replace\" extension".into(),
            ));
        }
        // Behind a server without the extension a replace is a plain SAVE:
        // an existing key is refused (409), as documented.
        Overwrite::Never | Overwrite::Always => conn.file_save(Some(key), size, opts).await,
    };
    let plan = planned.map_err(|e| backend.step_error(e))?;
    Ok((plan, tp))
}

/// Removes the request's own unfinished upload unless disarmed: awaited on
/// the failure paths, and spawned from `Drop` when the request future is
/// dropped (the HTTP client went away and hyper cancelled the handler).
struct Cleanup {
    backend: Arc<Backend>,
    token: String,
    key: String,
    upload_id: Option<String>,
    armed: bool,
}

impl Cleanup {
    /// Clean up now (the request failed).
    async fn run(mut self, completed: bool) {
        self.armed = false;
        self.backend
            .discard_upload(&self.token, &self.key, self.upload_id.as_deref(), completed)
            .await;
    }

    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let backend = Arc::clone(&self.backend);
        let (token, key, id) = (
            std::mem::take(&mut self.token),
            std::mem::take(&mut self.key),
            self.upload_id.take(),
        );
        rt.spawn(async move {
            backend
                .discard_upload(&token, &key, id.as_deref(), false)
                .await;
        });
    }
}

/// Store `body` (exactly `size` bytes) as `key`. When `default` (the token
/// is the gateway's default user's) and the server refuses it — it
/// restarted with a new secret — SAVE is retried once with a fresh token;
/// no body byte has been read by then.
pub async fn store<S>(
    backend: &Arc<Backend>,
    token: &str,
    default: bool,
    key: &str,
    size: u64,
    body: S,
) -> Result<Stored, GatewayError>
where
    S: Stream<Item = Result<Bytes, GatewayError>> + Send + Unpin,
{
    store_with(backend, token, default, key, size, body, Overwrite::Never).await
}

/// [`store`], saying what happens to a complete file under `key`.
pub async fn store_with<S>(
    backend: &Arc<Backend>,
    token: &str,
    default: bool,
    key: &str,
    size: u64,
    body: S,
    overwrite: Overwrite,
) -> Result<Stored, GatewayError>
where
    S: Stream<Item = Result<Bytes, GatewayError>> + Send + Unpin,
{
    let started = Instant::now();
    let (token, (plan, tp)) = match begin(backend, token, key, size, &overwrite).await {
        Err(GatewayError::Step {
            problem: Problem::BadToken,
            ..
        }) if default => {
            let fresh = backend
                .renew_default_token(token)
                .await?
                .map(|public| public.token)
                .ok_or_else(|| GatewayError::Unauthorized("a token is required".into()))?;
            let begun = begin(backend, &fresh, key, size, &overwrite).await?;
            (fresh, begun)
        }
        other => (token.to_owned(), other?),
    };
    let cleanup = Cleanup {
        backend: Arc::clone(backend),
        token: token.clone(),
        key: key.to_owned(),
        upload_id: plan.upload_id.clone(),
        armed: true,
    };
    let chunker = Chunker {
        body,
        pending: Bytes::new(),
        buf: BytesMut::new(),
        block_size: plan.block_size.max(1) as usize,
        index: 0,
        received: 0,
        expected: size,
        ended: false,
        hasher: Hasher::for_upload(backend, size),
    };
    let (server_md5, hashed) = match send_body(backend, &token, &plan, tp, chunker).await {
        Ok(sent) => sent,
        Err(e) => {
            cleanup.run(false).await;
            return Err(e);
        }
    };
    let Some(stored) = server_md5 else {
        cleanup.run(false).await;
        return Err(GatewayError::BadGateway(
            "every block was acknowledged but the file was not completed".into(),
        ));
    };
    let received = hashed.unwrap_or_else(|| stored.clone());
    if !stored.eq_ignore_ascii_case(&received) {
        warn!(%key, %received, %stored, "md5 mismatch after upload; deleting");
        // This request's own upload just completed: it is removed.
        cleanup.run(true).await;
        return Err(GatewayError::Md5Mismatch { received, stored });
    }
    cleanup.disarm();
    let secs = started.elapsed().as_secs_f64();
    backend.metrics.upload_bytes.inc_by(size);
    backend.metrics.upload_seconds.observe(secs);
    info!(%key, size, md5 = %received, secs, "stored");
    Ok(Stored {
        url: file_url(key),
        key: key.to_owned(),
        size,
        md5: received,
    })
}

/// Send the body's blocks, holding back the one that completes the upload
/// (the last) until every other is acknowledged; it then goes with the
/// body's md5, so the server completes the upload only if what it received
/// is what was read — bytes damaged on the way never replace a file (it
/// refuses with `md5_mismatch`, and the key keeps what it held). Returns
/// the md5 the server reported and the body's (none in process).
async fn send_body<S>(
    backend: &Backend,
    token: &str,
    plan: &UploadPlan,
    tp: TransferPlan,
    mut chunker: Chunker<S>,
) -> Result<(Option<String>, Option<String>), GatewayError>
where
    S: Stream<Item = Result<Bytes, GatewayError>> + Send + Unpin,
{
    if plan.total_block == 0 {
        // Nothing to send; the body must still be empty.
        return match chunker.next_block().await {
            None => Ok((Some(EMPTY_MD5.to_owned()), None)),
            Some(Err(e)) => Err(e),
            Some(Ok(_)) => Err(GatewayError::BadRequest("unexpected body".into())),
        };
    }
    let last_index = plan.total_block - 1;
    let mut last = None;
    let blocks = futures::stream::unfold((&mut chunker, &mut last), |(c, last)| async move {
        match c.next_block().await? {
            Ok((i, block)) if i == last_index => {
                *last = Some((i, block));
                // The chunker has read the whole body: nothing follows.
                c.next_block().await.map(|b| (b, (c, last)))
            }
            b => Some((b, (c, last))),
        }
    });
    let mut md5 = send_blocks(backend, token, plan, tp, blocks).await?;
    let hashed = chunker.hasher.finish().await?;
    if let Some(block) = last {
        let sent = send_last(backend, token, plan, tp.route, block, hashed.as_deref()).await;
        md5 = match sent {
            // The row's words say it: damaged on the way, the old file kept.
            Err(
                e @ GatewayError::Step {
                    problem: Problem::Md5Mismatch,
                    ..
                },
            ) => {
                let sent = hashed.as_deref().unwrap_or_default();
                warn!(key = %plan.key, %sent, "the server received other bytes than were sent; the upload was refused");
                return Err(e);
            }
            sent => sent?.or(md5),
        };
    }
    Ok((md5, hashed))
}

/// Send `blocks` of `plan`, taking pooled connections only while there are
/// blocks to send: the body is read into a small queue with no connection
/// held; a worker takes a connection when a block is ready, pipelines what
/// is queued, and gives the connection back once the queue stays empty for
/// [`LINGER`]. Further workers (up to the fan-out) find blocks only when
/// they queue up faster than one connection drains them. Returns the md5 the
/// server reported when the file completed. The first error of `blocks`
/// (the body's) wins over the workers' (which it makes stop).
pub(crate) async fn send_blocks<S>(
    backend: &Backend,
    token: &str,
    plan: &UploadPlan,
    tp: TransferPlan,
    blocks: S,
) -> Result<Option<String>, GatewayError>
where
    S: Stream<Item = Result<(u64, Bytes), GatewayError>>,
{
    let window = tp.window.max(1);
    let (tx, rx) = async_channel::bounded::<(u64, Bytes)>(window);
    let feed = step_core::transfer::feed(blocks, &tx);
    let worker = |rx: async_channel::Receiver<(u64, Bytes)>,
                  tx: async_channel::Sender<(u64, Bytes)>,
                  primary: bool| async move {
        let mut md5 = None;
        while let Ok(first) = rx.recv().await {
            // Only the first worker waits for a pooled connection; the
            // others take an idle one or leave the block to the first (a
            // fan-out is an optimisation, never a reason to wait or fail).
            let conn = if primary {
                backend.conn_to(token, tp.route).await
            } else {
                match backend.extra_conns(token, 1, tp.route).await.pop() {
                    Some(c) => Ok(c),
                    None => match tx.send(first).await {
                        Ok(()) => return Ok(md5),
                        // The feed is done and the channel closed: this
                        // block is ours to send after all.
                        Err(async_channel::SendError(block)) => {
                            return send_one(backend, token, plan, tp.route, block)
                                .await
                                .map(|m| m.or(md5));
                        }
                    },
                }
            };
            let mut conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    rx.close();
                    return Err(e);
                }
            };
            let more = futures::stream::unfold(rx.clone(), |rx| async move {
                match tokio::time::timeout(LINGER, rx.recv()).await {
                    Ok(Ok(block)) => Some((Ok(block), rx)),
                    _ => None,
                }
            });
            let queued = futures::stream::once(async { Ok(first) }).chain(more);
            match conn.upload_blocks(plan, queued, window, |_| {}).await {
                Ok(Some(m)) => md5 = Some(m),
                Ok(None) => {}
                Err(e) => {
                    rx.close();
                    return Err(backend.step_error(e));
                }
            }
        }
        Ok(md5)
    };
    let workers: Vec<_> = (0..tp.fan_out.max(1))
        .map(|i| worker(rx.clone(), tx.clone(), i == 0))
        .collect();
    drop(rx);
    let (fed, results) = futures::join!(feed, futures::future::join_all(workers));
    fed?;
    let mut md5 = None;
    for r in results {
        if let Some(m) = r? {
            md5 = Some(m);
        }
    }
    Ok(md5)
}

/// A body of known `size` against `--max-upload`.
pub(crate) fn check_size(st: &crate::AppState, size: u64) -> Result<(), GatewayError> {
    if st.http.max_upload > 0 && size > st.http.max_upload {
        return Err(GatewayError::TooLarge(format!(
            "The file's {size} bytes are more than this gateway's upload limit of {} bytes; \
             nothing was stored. Upload a smaller file.",
            st.http.max_upload
        )));
    }
    Ok(())
}

/// [`check_size`] for a body whose length is not known beforehand: what
/// was read so far is not the file's size, so only the limit is named.
pub(crate) fn check_read_so_far(st: &crate::AppState, read: u64) -> Result<(), GatewayError> {
    if st.http.max_upload > 0 && read > st.http.max_upload {
        return Err(GatewayError::TooLarge(format!(
            "The file is larger than this gateway's upload limit of {} bytes; nothing was \
             stored. Upload a smaller file.",
            st.http.max_upload
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunker(
        parts: Vec<&'static [u8]>,
        bs: usize,
        expected: u64,
    ) -> Chunker<impl Stream<Item = Result<Bytes, GatewayError>> + Unpin> {
        Chunker {
            body: futures::stream::iter(parts.into_iter().map(|p| Ok(Bytes::from_static(p)))),
            pending: Bytes::new(),
            buf: BytesMut::new(),
            block_size: bs,
            index: 0,
            received: 0,
            expected,
            ended: false,
            hasher: Hasher::Inline(Md5::new()),
        }
    }

    async fn collect<S: Stream<Item = Result<Bytes, GatewayError>> + Unpin>(
        mut c: Chunker<S>,
    ) -> Result<Vec<(u64, Vec<u8>)>, String> {
        let mut out = Vec::new();
        while let Some(b) = c.next_block().await {
            let (i, data) = b.map_err(|e| e.to_string())?;
            out.push((i, data.to_vec()));
        }
        Ok(out)
    }

    #[tokio::test]
    async fn rechunks_any_split_into_plan_blocks() {
        let blocks = collect(chunker(
            vec![b"ab", b"cdefg", b"", b"hijklmnop", b"q"],
            4,
            17,
        ))
        .await
        .expect("ok");
        let joined: Vec<Vec<u8>> = blocks.iter().map(|(_, b)| b.clone()).collect();
        assert_eq!(
            joined,
            vec![
                b"abcd".to_vec(),
                b"efgh".to_vec(),
                b"ijkl".to_vec(),
                b"mnop".to_vec(),
                b"q".to_vec()
            ]
        );
        assert_eq!(
            blocks.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4]
        );
        let exact = collect(chunker(vec![b"abcdefgh"], 4, 8)).await.expect("ok");
        assert_eq!(exact.len(), 2);
    }

    #[tokio::test]
    async fn short_and_long_bodies_fail() {
        assert!(collect(chunker(vec![b"abc"], 4, 5)).await.is_err());
        assert!(collect(chunker(vec![b"abcdef"], 4, 5)).await.is_err());
    }

    #[test]
    fn urls_escape_each_segment() {
        assert_eq!(file_url("otter.jpg"), "/files/otter.jpg");
        assert_eq!(file_url("pics/my otter.jpg"), "/files/pics/my%20otter.jpg");
        assert_eq!(file_url("/abs"), "/files//abs");
        assert_eq!(file_url("a//b/"), "/files/a//b/");
        assert_eq!(record_url("pets/otter 1"), "/records/pets%2Fotter%201");
        assert_eq!(file_url("a/../b/./c.d"), "/files/a/%2E%2E/b/%2E/c.d");
        assert_eq!(record_url(".."), "/records/%2E%2E");
    }
}
