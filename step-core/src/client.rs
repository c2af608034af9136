//! An async STEP client with a bounded pipelining window.
//!
//! One [`StepClient`] owns one connection. [`StepClient::call`] is a plain
//! round trip; [`StepClient::responses`] keeps up to `window` requests in
//! flight and yields the responses in request order (STEP answers in order,
//! so matching is positional). A window of 1 is stop-and-wait, which is what
//! the reference server needs.
//!
//! The client counts the answers it is owed ([`StepClient::in_flight`]), so an
//! exchange abandoned anywhere — a dropped future, a refusal that stopped the
//! caller, one call's timeout — leaves the connection usable: the next
//! exchange first reads what is still owed ([`StepClient::settle`]). Only an
//! I/O or framing failure, or owed answers that never come, break it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll};

use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use futures::{SinkExt, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadHalf, WriteHalf};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::{FramedRead, FramedWrite};

use crate::codec::{CodecError, Frame, StepCodec};
use crate::conn::Connection;
use crate::message::{Kind, Message, Operation, Status, field};
use crate::pipeline::Responses;
use crate::problem::{Problem, Reason};

/// What went wrong talking to a STEP server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the STEP server: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame from the STEP server: {0}")]
    Codec(#[from] CodecError),
    #[error("the STEP server closed the connection")]
    Closed,
    #[error("unexpected answer from the STEP server: {0}")]
    Protocol(String),
    #[error("{operation} refused with status {code}: {message}")]
    Refused {
        operation: String,
        code: u64,
        message: String,
        /// Our server's `reason` extension, when it sent one.
        reason: Option<Reason>,
    },
    #[error("the STEP server did not answer within {0:?}")]
    TimedOut(std::time::Duration),
    #[error("not logged in")]
    NotLoggedIn,
    #[error("{0}")]
    Source(String),
    /// The caller's own handling of an answer failed (writing a downloaded
    /// block, say): not the server's fault, and the connection is fine.
    #[error("keeping what the STEP server sent failed: {0}")]
    Sink(#[source] std::io::Error),
    /// An earlier I/O or framing failure (or owed answers that never came)
    /// left the connection out of step; it must be replaced.
    #[error("the STEP connection is unusable after an earlier failure ({0}); reconnect")]
    Broken(String),
}

impl ClientError {
    /// The STEP status of a refusal.
    pub fn status(&self) -> Option<Status> {
        match self {
            ClientError::Refused { code, .. } => Status::from_code(*code),
            _ => None,
        }
    }

    /// Our server's `reason` for a refusal, when it sent one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            ClientError::Refused { reason, .. } => *reason,
            _ => None,
        }
    }

    /// The row of the refusal table a refusal names.
    pub fn problem(&self) -> Option<Problem> {
        Problem::of(self.status()?, self.reason())
    }

    /// The connection broke or went silent (as opposed to a refusal or a
    /// malformed answer): the same request may well work on a new one.
    pub fn is_interruption(&self) -> bool {
        matches!(
            self,
            ClientError::Io(_)
                | ClientError::Closed
                | ClientError::TimedOut(_)
                | ClientError::Broken(_)
                | ClientError::Codec(CodecError::Truncated { .. } | CodecError::Io(_))
        )
    }
}

/// What a server says it can do (LOGIN response extension). A reference server
/// announces nothing, which means: one request in flight, 20480-byte blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Capabilities {
    pub pipelining: bool,
    pub resume: bool,
    pub max_block_size: u64,
    /// Seconds a freshly minted token is valid for, at least.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_ttl: Option<u64>,
    /// Largest file size a SAVE may announce.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_file_size: Option<u64>,
    /// Seconds an unfinished upload may go without a SAVE or block before
    /// the server removes it (tus's Upload-Expires is derived from it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upload_expiry: Option<u64>,
    /// FILE LIST is served (extension operation).
    // Announced only when on: absent means off to every reader.
    #[serde(skip_serializing_if = "is_false")]
    pub list: bool,
    /// FILE SAVE takes `replace` (and `if_md5`): an atomic replace of a
    /// complete file; FILE GET names the version (`upload_id`) and
    /// DOWNLOAD may ask for it.
    #[serde(skip_serializing_if = "is_false")]
    pub replace: bool,
    /// FILE GET takes `upload_status`: the key's unfinished upload (its
    /// id, plan and missing blocks), answered without changing anything.
    #[serde(skip_serializing_if = "is_false")]
    pub upload_status: bool,
    /// UPLOAD takes `md5`, the whole file's expected md5: an upload whose
    /// bytes do not have it is refused at completion (`md5_mismatch`) and
    /// the key keeps what it held.
    #[serde(skip_serializing_if = "is_false")]
    pub upload_md5: bool,
    /// What anonymous callers may do here (`read`, `write`), when anything:
    /// a LOGIN with `anonymous` then mints the public identity's token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<crate::access::Anonymous>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Capabilities {
    /// What a LOGIN answer announces; nothing (a reference server) or
    /// something unreadable means the reference server's defaults.
    pub fn from_login(resp: &Message) -> Self {
        resp.get(field::CAPABILITIES)
            .and_then(|caps| Self::deserialize(caps).ok())
            .unwrap_or_default()
    }

    pub fn to_json(self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

/// An upload plan (FILE SAVE response).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "SaveAnswer")]
pub struct UploadPlan {
    pub key: String,
    pub size: u64,
    pub total_block: u64,
    pub block_size: u64,
    /// Blocks the server still needs, as `[start, end)` ranges. Without the
    /// resume extension: every block.
    pub missing: Vec<[u64; 2]>,
    pub resumed: bool,
    /// Identifies this upload (our server's extension): blocks sent with it
    /// are refused once another SAVE has restarted the key, so two uploads
    /// racing on one key cannot mix their blocks.
    pub upload_id: Option<String>,
}

/// A FILE SAVE answer as sent: without the resume extension there are no
/// `missing_ranges`, which means every block.
#[derive(Deserialize)]
struct SaveAnswer {
    key: String,
    size: u64,
    total_block: u64,
    block_size: u64,
    missing_ranges: Option<Vec<[u64; 2]>>,
    #[serde(default)]
    resumed: bool,
    upload_id: Option<String>,
}

impl From<SaveAnswer> for UploadPlan {
    fn from(a: SaveAnswer) -> Self {
        let missing = match a.missing_ranges {
            Some(m) => m,
            None if a.total_block > 0 => vec![[0, a.total_block]],
            None => Vec::new(),
        };
        UploadPlan {
            key: a.key,
            size: a.size,
            total_block: a.total_block,
            block_size: a.block_size,
            missing,
            resumed: a.resumed,
            upload_id: a.upload_id,
        }
    }
}

/// The unfinished upload under a key (FILE GET with `upload_status`, our
/// server's extension): read only, nothing is resumed or refreshed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UploadStatus {
    pub key: String,
    pub size: u64,
    pub total_block: u64,
    pub block_size: u64,
    pub upload_id: String,
    /// Blocks the server still needs, as `[start, end)` ranges.
    #[serde(rename = "missing_ranges")]
    pub missing: Vec<[u64; 2]>,
    /// When it last received a SAVE or a block, Unix seconds (0: unknown).
    #[serde(default)]
    pub last_active: u64,
}

/// A FILE UPLOAD answer: the file's md5 once this block completed it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct UploadAck {
    pub md5: Option<String>,
}

/// A LOGIN answer (capabilities are read leniently, see
/// [`Capabilities::from_login`]).
#[derive(Deserialize)]
struct LoginAnswer {
    token: String,
}

/// An anonymous LOGIN's answer: the public identity's token, whose files
/// it acts on, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicLogin {
    pub token: String,
    pub user: String,
    pub scope: crate::access::Scope,
}

#[derive(Deserialize)]
struct PublicAnswer {
    token: String,
    username: Option<String>,
    scope: Option<crate::access::Scope>,
}

/// A DATA SAVE answer.
#[derive(Deserialize)]
struct KeyAnswer {
    key: String,
}

/// Where UPLOADs go: a key, and the upload id when the server gave one.
#[derive(Debug, Clone, Copy)]
pub struct UploadTarget<'a> {
    pub key: &'a str,
    pub upload_id: Option<&'a str>,
}

impl<'a> From<&'a str> for UploadTarget<'a> {
    fn from(key: &'a str) -> Self {
        UploadTarget {
            key,
            upload_id: None,
        }
    }
}

impl<'a> From<&'a String> for UploadTarget<'a> {
    fn from(key: &'a String) -> Self {
        UploadTarget {
            key,
            upload_id: None,
        }
    }
}

impl<'a> From<&'a UploadPlan> for UploadTarget<'a> {
    fn from(plan: &'a UploadPlan) -> Self {
        UploadTarget {
            key: &plan.key,
            upload_id: plan.upload_id.as_deref(),
        }
    }
}

/// A download plan (FILE GET response).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct DownloadPlan {
    pub key: String,
    pub size: u64,
    pub total_block: u64,
    pub block_size: u64,
    pub md5: String,
    /// The version of the file this plan describes (our server's
    /// extension); DOWNLOADs of the plan carry it, so they are refused
    /// (reason `replaced`) rather than served from a newer version.
    pub upload_id: Option<String>,
    /// When the file became complete, Unix seconds (our server's extension).
    pub last_modified: Option<u64>,
}

/// One complete file in a FILE LIST answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ListedFile {
    pub key: String,
    pub size: u64,
    pub md5: String,
    /// When the file became complete, Unix seconds (0: unknown).
    pub last_modified: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
}

/// One page of a FILE LIST answer (the answer's `files` and `next`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePage {
    pub files: Vec<ListedFile>,
    #[serde(default)]
    /// Pass back as `after` for the next page; `None` on the last one.
    pub next: Option<String>,
}

/// What a FILE LIST asks for.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListQuery<'a> {
    pub prefix: &'a str,
    pub after: Option<&'a str>,
    /// Entries per page (the server's default, 100, when `None`).
    pub limit: Option<u64>,
}

/// Options of a FILE SAVE beyond key and size (our server's extensions).
#[derive(Debug, Clone, Copy, Default)]
pub struct SaveOptions {
    pub block_size: Option<u64>,
    pub resume: bool,
}

/// A STEP service answering in this process, for one user (whose token was
/// checked once, when the client was made): requests go to it as messages,
/// with no frames and no per-request token check.
pub trait LocalServe: Send + Sync + std::fmt::Debug {
    fn serve(self: std::sync::Arc<Self>, msg: Message) -> BoxFuture<'static, Message>;
}

/// What a client's requests travel over.
#[derive(Debug)]
pub(crate) enum Link<T> {
    Wire {
        reader: FramedRead<ReadHalf<T>, StepCodec>,
        writer: FramedWrite<WriteHalf<T>, StepCodec>,
    },
    Local(std::sync::Arc<dyn LocalServe>),
}

/// One connection to a STEP server (or a link to one in this process,
/// [`StepClient::local`]).
#[derive(Debug)]
pub struct StepClient<T = Connection> {
    pub(crate) link: Link<T>,
    token: Option<String>,
    capabilities: Capabilities,
    timeout: Option<Duration>,
    /// Answers owed: frames queued for sending minus frames read.
    owed: u64,
    /// Why the connection cannot be used any more, once it cannot.
    broken: Option<String>,
}

impl StepClient<Connection> {
    /// Connect over TCP with the default caps.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self::new(Connection::Plain(stream), StepCodec::default()))
    }

    /// Connect over TCP, then TLS: the server must prove `tls.server_name`
    /// with a certificate `tls.config` trusts. The caller bounds the wait
    /// (the handshake included), as for [`StepClient::connect`].
    #[cfg(feature = "tls")]
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        tls: &crate::conn::tls::TlsClient,
    ) -> Result<Self, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::clone(&tls.config));
        let stream = connector.connect(tls.server_name.clone(), stream).await?;
        Ok(Self::new(
            Connection::Tls(Box::new(stream)),
            StepCodec::default(),
        ))
    }
}

/// Have `serve` answer `msg` on a task of its own: like a request already
/// sent over a wire, it runs to its end even if the caller stops waiting
/// (so the service is never cut off midway through a request).
pub(crate) fn spawn_local(
    serve: &std::sync::Arc<dyn LocalServe>,
    msg: Message,
) -> impl std::future::Future<Output = Result<Message, ClientError>> + Send + 'static {
    let task = tokio::spawn(std::sync::Arc::clone(serve).serve(msg));
    async move {
        task.await
            .map_err(|e| ClientError::Protocol(format!("the in-process service failed: {e}")))
    }
}

fn no_wire() -> ClientError {
    ClientError::Protocol("an in-process client has no wire to send frames on".into())
}

/// A successful answer's fields as `T` (unknown fields are ignored).
pub fn decode<T: DeserializeOwned>(resp: Message) -> Result<T, ClientError> {
    let operation = resp
        .get(field::OPERATION)
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    serde_json::from_value(Value::Object(resp.fields))
        .map_err(|e| ClientError::Protocol(format!("bad {operation} answer: {e}")))
}

/// Run `fut` under an optional deadline.
async fn bounded<F: std::future::Future>(
    timeout: Option<Duration>,
    fut: F,
) -> Result<F::Output, ClientError> {
    match timeout {
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .map_err(|_| ClientError::TimedOut(t)),
        None => Ok(fut.await),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `Ok(resp)` when the response has status 200, else the refusal as an error.
pub fn expect_ok(resp: Message) -> Result<Message, ClientError> {
    match resp.status_code() {
        Some(200) => Ok(resp),
        Some(code) => Err(ClientError::Refused {
            operation: resp
                .get(field::OPERATION)
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_owned(),
            code,
            message: resp.status_msg().to_owned(),
            reason: resp
                .get(field::REASON)
                .and_then(Value::as_str)
                .and_then(|r| r.parse().ok()),
        }),
        None => Err(ClientError::Protocol("response has no status".into())),
    }
}

impl<T> StepClient<T> {
    /// A client whose requests `serve` answers in this process, carrying
    /// `token` (for what builds requests) and announcing `capabilities`.
    pub fn local(
        serve: std::sync::Arc<dyn LocalServe>,
        token: String,
        capabilities: Capabilities,
    ) -> Self {
        Self {
            link: Link::Local(serve),
            token: Some(token),
            capabilities,
            timeout: None,
            owed: 0,
            broken: None,
        }
    }
}

impl<T: AsyncRead + AsyncWrite> StepClient<T> {
    pub fn new(io: T, codec: StepCodec) -> Self {
        let (r, w) = tokio::io::split(io);
        Self {
            link: Link::Wire {
                reader: FramedRead::new(r, codec),
                writer: FramedWrite::new(w, codec),
            },
            token: None,
            capabilities: Capabilities::default(),
            timeout: None,
            owed: 0,
            broken: None,
        }
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Use a token obtained elsewhere (tokens are not tied to a connection).
    pub fn set_token(&mut self, token: impl Into<String>) {
        self.token = Some(token.into());
    }

    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    pub fn set_capabilities(&mut self, caps: Capabilities) {
        self.capabilities = caps;
    }

    /// A request of `operation`/`kind` carrying this client's token.
    pub fn request(&self, operation: Operation, kind: Kind) -> Result<Message, ClientError> {
        let token = self.token.as_deref().ok_or(ClientError::NotLoggedIn)?;
        Ok(Message::request(operation, kind).with(field::TOKEN, token))
    }

    /// Bound every wait for the server (a send that cannot make progress, an
    /// answer that does not come). `None` waits forever.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
    }

    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Answers the server still owes this connection: requests sent (or
    /// queued for sending) whose answers have not been read. Exact whatever
    /// future was dropped where.
    pub fn in_flight(&self) -> u64 {
        self.owed
    }

    pub(crate) fn owe(&mut self) {
        self.owed += 1;
    }

    /// Whether an I/O or framing failure (or a drain that timed out) made
    /// this connection unusable; it must then be replaced.
    pub fn is_broken(&self) -> bool {
        self.broken.is_some()
    }

    pub(crate) fn mark_broken(&mut self, why: &ClientError) {
        if self.broken.is_none() {
            self.broken = Some(why.to_string());
        }
    }

    pub(crate) fn check_usable(&self) -> Result<(), ClientError> {
        match &self.broken {
            Some(why) => Err(ClientError::Broken(why.clone())),
            None => Ok(()),
        }
    }

    /// Whether the connection is ready for a new request without waiting:
    /// usable, no answer owed, nothing unread, not closed by the server.
    /// Never blocks; an unsolicited frame found here breaks the connection.
    pub fn is_idle(&mut self) -> bool {
        let Link::Wire { reader, .. } = &mut self.link else {
            return true;
        };
        if self.broken.is_some() || self.owed > 0 || !reader.read_buffer().is_empty() {
            return false;
        }
        match reader.next().now_or_never() {
            None => true,
            Some(_) => {
                self.broken = Some("unsolicited data or a close from the server".into());
                false
            }
        }
    }

    /// Poll for the next frame, counting it as an answer received.
    pub(crate) fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Result<Frame, ClientError>> {
        let Link::Wire { reader, .. } = &mut self.link else {
            return Poll::Ready(Err(no_wire()));
        };
        match reader.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(frame))) => {
                self.owed = self.owed.saturating_sub(1);
                Poll::Ready(Ok(frame))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e.into())),
            Poll::Ready(None) => Poll::Ready(Err(ClientError::Closed)),
        }
    }

    /// Read and drop every answer still owed (after an abandoned exchange),
    /// each under the timeout; runs by itself before every exchange. A
    /// failure or a timeout here breaks the connection: its answers can no
    /// longer be told apart.
    pub async fn settle(&mut self) -> Result<(), ClientError> {
        self.check_usable()?;
        let timeout = self.timeout;
        let Link::Wire { writer, .. } = &mut self.link else {
            return Ok(());
        };
        let flushed = bounded(timeout, SinkExt::<Message>::flush(writer))
            .await
            .and_then(|r| r.map_err(ClientError::from));
        if let Err(e) = flushed {
            self.mark_broken(&e);
            return Err(e);
        }
        while self.owed > 0 {
            let frame = bounded(timeout, std::future::poll_fn(|cx| self.poll_frame(cx))).await;
            if let Err(e) = frame.and_then(|f| f) {
                self.mark_broken(&e);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Send one message (flushed), without settling first: with
    /// [`StepClient::recv`], for callers that match answers themselves.
    pub async fn send(&mut self, msg: &Message) -> Result<(), ClientError> {
        self.check_usable()?;
        let timeout = self.timeout;
        let Link::Wire { writer, .. } = &mut self.link else {
            return Err(no_wire());
        };
        // `feed` queues the frame within the poll that completes it, so the
        // count cannot miss a queued frame however this future is dropped.
        let queued = bounded(timeout, writer.feed(msg))
            .await
            .and_then(|r| r.map_err(ClientError::from));
        if let Err(e) = queued {
            if !matches!(e, ClientError::TimedOut(_)) {
                self.mark_broken(&e);
            }
            return Err(e);
        }
        self.owed += 1;
        let flushed = bounded(timeout, SinkExt::<Message>::flush(writer))
            .await
            .and_then(|r| r.map_err(ClientError::from));
        if let Err(e) = &flushed
            && !matches!(e, ClientError::TimedOut(_))
        {
            self.mark_broken(e);
        }
        flushed
    }

    /// Read one message. A timeout leaves the answer owed (drained by the
    /// next exchange); a failure to read breaks the connection.
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        self.check_usable()?;
        let timeout = self.timeout;
        let frame = bounded(timeout, std::future::poll_fn(|cx| self.poll_frame(cx))).await?;
        let frame = frame.inspect_err(|e| self.mark_broken(e))?;
        Message::from_frame(frame).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// One round trip (after settling what earlier exchanges left owed); the
    /// response is returned whatever its status.
    pub async fn call(&mut self, msg: &Message) -> Result<Message, ClientError> {
        if let Link::Local(serve) = &self.link {
            return spawn_local(serve, msg.clone()).await;
        }
        self.settle().await?;
        self.send(msg).await?;
        self.recv().await
    }

    /// Send every request of `requests`, keeping at most `window` of them
    /// unanswered, and yield the responses in request order. Answers owed
    /// to earlier exchanges are read and dropped first. Dropping the stream
    /// anywhere leaves the connection usable (see [`StepClient::in_flight`]).
    pub fn responses<S>(
        &mut self,
        requests: S,
        window: usize,
    ) -> Responses<'_, T, impl Stream<Item = Result<Message, ClientError>> + use<S, T>>
    where
        S: Stream<Item = Message>,
    {
        Responses::new(self, requests.map(Ok), window)
    }

    /// [`StepClient::responses`] over a fallible source: its first error is
    /// yielded as soon as it comes, and ends the stream.
    pub fn try_responses<S>(&mut self, requests: S, window: usize) -> Responses<'_, T, S>
    where
        S: Stream<Item = Result<Message, ClientError>>,
    {
        Responses::new(self, requests, window)
    }

    /// [`StepClient::try_responses`], handing each response to
    /// `on_response`. The first error (of the source, the connection or
    /// `on_response`) stops it; the connection stays usable unless the
    /// error broke it.
    pub async fn pipeline<S, F>(
        &mut self,
        requests: S,
        window: usize,
        mut on_response: F,
    ) -> Result<(), ClientError>
    where
        S: Stream<Item = Result<Message, ClientError>>,
        F: FnMut(Message) -> Result<(), ClientError>,
    {
        let mut responses = self.try_responses(requests, window);
        while let Some(resp) = responses.next().await {
            on_response(resp?)?;
        }
        Ok(())
    }

    /// LOGIN; keeps the token and whatever the server announces it can do.
    pub async fn login(&mut self, username: &str, password: &str) -> Result<String, ClientError> {
        let req = Message::request(Operation::Login, Kind::Auth)
            .with(field::USERNAME, username)
            .with(field::PASSWORD, password);
        let resp = expect_ok(self.call(&req).await?)?;
        let caps = Capabilities::from_login(&resp);
        let LoginAnswer { token } = decode(resp)?;
        self.capabilities = caps;
        self.token = Some(token.clone());
        Ok(token)
    }

    /// LOGIN as the public identity (our extension): no password; the
    /// server grants at most `want` and at most what its anonymous mode
    /// allows.
    pub async fn login_anonymous(
        &mut self,
        want: crate::access::Anonymous,
    ) -> Result<PublicLogin, ClientError> {
        let req =
            Message::request(Operation::Login, Kind::Auth).with(field::ANONYMOUS, want.as_str());
        let resp = expect_ok(self.call(&req).await?)?;
        let caps = Capabilities::from_login(&resp);
        let answer: PublicAnswer = decode(resp)?;
        // A server that leaves out whom or what (not ours) granted what
        // was asked for, as the public user.
        let login = PublicLogin {
            token: answer.token,
            user: answer.username.unwrap_or_else(|| "anonymous".into()),
            scope: match answer.scope {
                Some(scope) => scope,
                None => want.scope().ok_or_else(|| {
                    ClientError::Protocol("an anonymous LOGIN granted with nothing asked".into())
                })?,
            },
        };
        self.capabilities = caps;
        self.token = Some(login.token.clone());
        Ok(login)
    }

    /// DATA SAVE; returns the key (server-chosen when `key` is `None`).
    pub async fn data_save(
        &mut self,
        key: Option<&str>,
        record: Map<String, Value>,
    ) -> Result<String, ClientError> {
        let mut req = self.request(Operation::Save, Kind::Data)?;
        for (k, v) in record {
            req.fields.entry(k).or_insert(v);
        }
        if let Some(key) = key {
            req.set(field::KEY, key);
        }
        let resp = expect_ok(self.call(&req).await?)?;
        decode(resp).map(|KeyAnswer { key }| key)
    }

    /// DATA GET; returns the record without the response's envelope fields.
    pub async fn data_get(&mut self, key: &str) -> Result<Map<String, Value>, ClientError> {
        let req = self
            .request(Operation::Get, Kind::Data)?
            .with(field::KEY, key);
        let mut resp = expect_ok(self.call(&req).await?)?;
        for name in [
            field::OPERATION,
            field::TYPE,
            field::DIRECTION,
            field::STATUS,
            field::STATUS_MSG,
            field::TOKEN,
        ] {
            resp.fields.remove(name);
        }
        Ok(resp.fields)
    }

    pub async fn data_delete(&mut self, key: &str) -> Result<(), ClientError> {
        let req = self
            .request(Operation::Delete, Kind::Data)?
            .with(field::KEY, key);
        expect_ok(self.call(&req).await?).map(drop)
    }

    /// FILE SAVE: ask for an upload plan.
    pub async fn file_save(
        &mut self,
        key: Option<&str>,
        size: u64,
        opts: SaveOptions,
    ) -> Result<UploadPlan, ClientError> {
        self.save(key, size, opts, None, None).await
    }

    /// FILE SAVE resuming the caller's own upload `upload_id` (the id an
    /// earlier SAVE answer gave): sends `resume` with `upload_id`, so a
    /// server continues only that upload (when it is still the key's
    /// current one, with the same plan) and otherwise starts over
    /// (`resumed: false`). With `replace`, the upload replaces a complete
    /// file as [`Self::file_save_replace`] does (without `if_md5`). A
    /// server that ignores `upload_id` may resume another upload: the
    /// answer's `upload_id` tells.
    pub async fn file_save_own(
        &mut self,
        key: &str,
        size: u64,
        block_size: Option<u64>,
        upload_id: &str,
        replace: bool,
    ) -> Result<UploadPlan, ClientError> {
        let opts = SaveOptions {
            block_size,
            resume: true,
        };
        self.save(
            Some(key),
            size,
            opts,
            replace.then_some(None),
            Some(upload_id),
        )
        .await
    }

    /// FILE SAVE with `replace` (our server's extension): plan an upload
    /// that replaces the complete file under `key` atomically when it
    /// completes (or creates it). With `if_md5`, only while the current
    /// file has that md5 (checked at SAVE and again at completion); else
    /// refused with reason `precondition`.
    pub async fn file_save_replace(
        &mut self,
        key: &str,
        size: u64,
        opts: SaveOptions,
        if_md5: Option<&str>,
    ) -> Result<UploadPlan, ClientError> {
        self.save(Some(key), size, opts, Some(if_md5), None).await
    }

    async fn save(
        &mut self,
        key: Option<&str>,
        size: u64,
        opts: SaveOptions,
        replace: Option<Option<&str>>,
        upload_id: Option<&str>,
    ) -> Result<UploadPlan, ClientError> {
        let mut req = self
            .request(Operation::Save, Kind::File)?
            .with(field::SIZE, size);
        if let Some(key) = key {
            req.set(field::KEY, key);
        }
        if let Some(if_md5) = replace {
            req.set(field::REPLACE, true);
            if let Some(md5) = if_md5 {
                req.set(field::IF_MD5, md5);
            }
        }
        if let Some(bs) = opts.block_size {
            req.set(field::BLOCK_SIZE, bs);
        }
        if opts.resume {
            req.set(field::RESUME, true);
        }
        if let Some(id) = upload_id {
            req.set(field::UPLOAD_ID, id);
        }
        decode(expect_ok(self.call(&req).await?)?)
    }

    /// The UPLOAD request for one block.
    pub fn upload_request<'a>(
        &self,
        target: impl Into<UploadTarget<'a>>,
        index: u64,
        data: Bytes,
    ) -> Result<Message, ClientError> {
        let token = self.token.as_deref().ok_or(ClientError::NotLoggedIn)?;
        Ok(Self::upload_message(token, target.into(), index, data))
    }

    fn upload_message(token: &str, target: UploadTarget<'_>, index: u64, data: Bytes) -> Message {
        let mut m = Message::request(Operation::Upload, Kind::File)
            .with(field::TOKEN, token)
            .with(field::KEY, target.key)
            .with(field::BLOCK_INDEX, index);
        if let Some(id) = target.upload_id {
            m.set(field::UPLOAD_ID, id);
        }
        m.with_binary(data)
    }

    /// UPLOAD one block; returns the file's md5 when this block completed it.
    pub async fn upload_block<'a>(
        &mut self,
        target: impl Into<UploadTarget<'a>>,
        index: u64,
        data: Bytes,
    ) -> Result<Option<String>, ClientError> {
        let req = self.upload_request(target, index, data)?;
        let ack: UploadAck = decode(expect_ok(self.call(&req).await?)?)?;
        Ok(ack.md5)
    }

    /// UPLOAD the block that completes an upload with the whole file's md5
    /// as the writer computed it (`md5`, our server's `upload_md5`
    /// extension): such a server completes the upload only if its bytes
    /// have it, and otherwise refuses (`md5_mismatch`) and keeps what the
    /// key held. Send it once every other block is acknowledged. Returns
    /// the md5 the server reported.
    pub async fn upload_last_block<'a>(
        &mut self,
        target: impl Into<UploadTarget<'a>>,
        index: u64,
        data: Bytes,
        md5: Option<&str>,
    ) -> Result<Option<String>, ClientError> {
        let mut req = self.upload_request(target, index, data)?;
        if let Some(md5) = md5 {
            req.set(field::MD5, md5);
        }
        let ack: UploadAck = decode(expect_ok(self.call(&req).await?)?)?;
        Ok(ack.md5)
    }

    /// UPLOAD every block of `blocks` with up to `window` in flight; returns
    /// the md5 the server reported when the file completed (if it did), and
    /// calls `on_block` with each acknowledged block's length.
    pub async fn upload_blocks<'a, S>(
        &mut self,
        target: impl Into<UploadTarget<'a>>,
        blocks: S,
        window: usize,
        mut on_block: impl FnMut(u64),
    ) -> Result<Option<String>, ClientError>
    where
        S: Stream<Item = Result<(u64, Bytes), ClientError>>,
    {
        let token = self.token.clone().ok_or(ClientError::NotLoggedIn)?;
        let target = target.into();
        let lengths = Mutex::new(VecDeque::new());
        let requests = blocks.map(|b| {
            b.map(|(index, data)| {
                lock(&lengths).push_back(data.len() as u64);
                Self::upload_message(&token, target, index, data)
            })
        });
        let mut md5 = None;
        self.pipeline(requests, window, |resp| {
            let ack: UploadAck = decode(expect_ok(resp)?)?;
            if ack.md5.is_some() {
                md5 = ack.md5;
            }
            on_block(lock(&lengths).pop_front().unwrap_or(0));
            Ok(())
        })
        .await?;
        Ok(md5)
    }

    /// FILE GET: the download plan (optionally asking for another block size).
    pub async fn file_get(
        &mut self,
        key: &str,
        block_size: Option<u64>,
    ) -> Result<DownloadPlan, ClientError> {
        let mut req = self
            .request(Operation::Get, Kind::File)?
            .with(field::KEY, key);
        if let Some(bs) = block_size {
            req.set(field::BLOCK_SIZE, bs);
        }
        decode(expect_ok(self.call(&req).await?)?)
    }

    /// FILE GET with `upload_status` (our server's extension, announced as
    /// `upload_status`): the unfinished upload under `key`, read only;
    /// refused 404 when the key holds none.
    pub async fn file_upload_status(&mut self, key: &str) -> Result<UploadStatus, ClientError> {
        let req = self
            .request(Operation::Get, Kind::File)?
            .with(field::KEY, key)
            .with(field::UPLOAD_STATUS, true);
        decode(expect_ok(self.call(&req).await?)?)
    }

    /// FILE LIST (our server's extension, announced as `list`): one page of
    /// the caller's complete files in key order.
    pub async fn file_list(&mut self, query: ListQuery<'_>) -> Result<FilePage, ClientError> {
        let mut req = self
            .request(Operation::List, Kind::File)?
            .with(field::PREFIX, query.prefix);
        if let Some(after) = query.after {
            req.set(field::AFTER, after);
        }
        if let Some(limit) = query.limit {
            req.set(field::LIMIT, limit);
        }
        decode(expect_ok(self.call(&req).await?)?)
    }

    /// The DOWNLOAD request for block `index` of `plan`.
    pub fn download_request(token: &str, plan: &DownloadPlan, index: u64) -> Message {
        let mut req = Message::request(Operation::Download, Kind::File)
            .with(field::TOKEN, token)
            .with(field::KEY, plan.key.as_str())
            .with(field::BLOCK_INDEX, index);
        if plan.block_size != crate::DEFAULT_BLOCK_SIZE {
            req.set(field::BLOCK_SIZE, plan.block_size);
        }
        if let Some(id) = &plan.upload_id {
            req.set(field::UPLOAD_ID, id.as_str());
        }
        req
    }

    /// DOWNLOAD one block of a plan.
    pub async fn download_block(
        &mut self,
        plan: &DownloadPlan,
        index: u64,
    ) -> Result<Bytes, ClientError> {
        let token = self.token.as_deref().ok_or(ClientError::NotLoggedIn)?;
        let req = Self::download_request(token, plan, index);
        let resp = expect_ok(self.call(&req).await?)?;
        Ok(resp.binary)
    }

    /// DOWNLOAD the blocks `indexes` with up to `window` in flight, handing
    /// each to `on_block(index, data)` in order.
    pub async fn download_blocks(
        &mut self,
        plan: &DownloadPlan,
        indexes: impl Iterator<Item = u64>,
        window: usize,
        mut on_block: impl FnMut(u64, Bytes) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        let token = self.token.clone().ok_or(ClientError::NotLoggedIn)?;
        let order = Mutex::new(VecDeque::new());
        let requests = futures::stream::iter(indexes.map(|i| {
            lock(&order).push_back(i);
            Ok(Self::download_request(&token, plan, i))
        }));
        self.pipeline(requests, window, |resp| {
            let resp = expect_ok(resp)?;
            let index = lock(&order).pop_front().unwrap_or(0);
            let want = crate::plan::block_len(plan.size, plan.block_size, index).unwrap_or(0);
            if resp.binary.len() as u64 != want {
                return Err(ClientError::Protocol(format!(
                    "block {index} has {} bytes, expected {want}",
                    resp.binary.len()
                )));
            }
            on_block(index, resp.binary)
        })
        .await
    }

    pub async fn file_delete(&mut self, key: &str) -> Result<(), ClientError> {
        let req = self
            .request(Operation::Delete, Kind::File)?
            .with(field::KEY, key);
        expect_ok(self.call(&req).await?).map(drop)
    }

    /// FILE DELETE only while the file has md5 `if_md5` (our server's
    /// extension, with `replace`): decided atomically by the store, so a
    /// newer version is never deleted (refused, reason `precondition`).
    pub async fn file_delete_if(&mut self, key: &str, if_md5: &str) -> Result<(), ClientError> {
        let req = self
            .request(Operation::Delete, Kind::File)?
            .with(field::KEY, key)
            .with(field::IF_MD5, if_md5);
        expect_ok(self.call(&req).await?).map(drop)
    }

    /// FILE DELETE of one upload only (our server's extension): the
    /// unfinished upload `upload_id`, or the complete file it produced;
    /// anything else under `key` is left alone (404, reason `other_upload`).
    pub async fn file_delete_upload(
        &mut self,
        key: &str,
        upload_id: &str,
    ) -> Result<(), ClientError> {
        let req = self
            .request(Operation::Delete, Kind::File)?
            .with(field::KEY, key)
            .with(field::UPLOAD_ID, upload_id);
        expect_ok(self.call(&req).await?).map(drop)
    }
}
