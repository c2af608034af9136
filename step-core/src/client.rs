//! An async STEP client with a bounded pipelining window.
//!
//! One [`StepClient`] owns one [`Link`]: a connection to a STEP server
//! ([`StepClient::connect`]) or a channel to a service in this process
//! ([`StepClient::over`] with [`crate::link::serve_in_process`]); it
//! treats both alike. [`StepClient::call`] is a plain round trip;
//! [`StepClient::responses`] keeps up to `window` requests in flight and
//! yields the responses in request order (STEP answers in order, so
//! matching is positional). A window of 1 is stop-and-wait, which is what
//! the reference server needs.
//!
//! The client counts the answers it is owed ([`StepClient::in_flight`]), so an
//! exchange abandoned anywhere — a dropped future, a refusal that stopped the
//! caller, one call's timeout — leaves the connection usable: the next
//! exchange first reads what is still owed ([`StepClient::settle`]). Only an
//! I/O or framing failure, or owed answers that never come, break it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{Map, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, ToSocketAddrs};

pub use crate::answers::{
    Capabilities, DownloadPlan, FilePage, ListQuery, ListedFile, PublicLogin, SaveOptions,
    UploadAck, UploadPlan, UploadStatus, UploadTarget,
};
use crate::answers::{KeyAnswer, LoginAnswer, PublicAnswer};
use crate::codec::StepCodec;
use crate::conn::Connection;
pub use crate::error::{ClientError, decode, expect_ok};
use crate::exchange::Exchange;
pub use crate::link::Link;
use crate::link::Wire;
use crate::message::{Kind, Message, Operation, field};
use crate::pipeline::Responses;

/// One connection to a STEP server, or a link to one in this process.
#[derive(Debug)]
pub struct StepClient {
    exchange: Exchange,
    token: Option<String>,
    capabilities: Capabilities,
}

impl StepClient {
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

    /// A client speaking frames over `io`.
    pub fn new<T>(io: T, codec: StepCodec) -> Self
    where
        T: AsyncRead + AsyncWrite + Send + std::fmt::Debug + 'static,
    {
        Self::over(Wire::new(io, codec))
    }

    /// A client over `link` (not logged in, the reference's capabilities).
    pub fn over(link: impl Link + 'static) -> Self {
        Self {
            exchange: Exchange::new(Box::new(link)),
            token: None,
            capabilities: Capabilities::default(),
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
        self.exchange.set_timeout(timeout);
    }

    /// Answers the server still owes this connection: requests sent (or
    /// queued for sending) whose answers have not been read. Exact whatever
    /// future was dropped where.
    pub fn in_flight(&self) -> u64 {
        self.exchange.in_flight()
    }

    /// Whether an I/O or framing failure (or a drain that timed out) made
    /// this connection unusable; it must then be replaced.
    pub fn is_broken(&self) -> bool {
        self.exchange.is_broken()
    }

    /// Whether the connection is ready for a new request without waiting:
    /// usable, no answer owed, nothing unread, not closed by the server.
    /// Never blocks; an unsolicited frame found here breaks the connection.
    pub fn is_idle(&mut self) -> bool {
        self.exchange.is_idle()
    }

    /// Read and drop every answer still owed (after an abandoned exchange),
    /// each under the timeout; runs by itself before every exchange. A
    /// failure or a timeout here breaks the connection: its answers can no
    /// longer be told apart.
    pub async fn settle(&mut self) -> Result<(), ClientError> {
        self.exchange.settle().await
    }

    /// Send one message (flushed), without settling first: with
    /// [`StepClient::recv`], for callers that match answers themselves.
    pub async fn send(&mut self, msg: &Message) -> Result<(), ClientError> {
        self.exchange.send(msg.clone()).await
    }

    /// Read one message. A timeout leaves the answer owed (drained by the
    /// next exchange); a failure to read breaks the connection.
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        self.exchange.recv().await
    }

    /// One round trip (after settling what earlier exchanges left owed); the
    /// response is returned whatever its status.
    pub async fn call(&mut self, msg: &Message) -> Result<Message, ClientError> {
        self.exchange.call(msg.clone()).await
    }

    /// [`StepClient::call`] with a message the caller gives up.
    pub async fn call_owned(&mut self, msg: Message) -> Result<Message, ClientError> {
        self.exchange.call(msg).await
    }

    /// Send every request of `requests`, keeping at most `window` of them
    /// unanswered, and yield the responses in request order. Answers owed
    /// to earlier exchanges are read and dropped first. Dropping the stream
    /// anywhere leaves the connection usable (see [`StepClient::in_flight`]).
    pub fn responses<S>(
        &mut self,
        requests: S,
        window: usize,
    ) -> Responses<'_, impl Stream<Item = Result<Message, ClientError>> + use<S>>
    where
        S: Stream<Item = Message>,
    {
        Responses::new(&mut self.exchange, requests.map(Ok), window)
    }

    /// [`StepClient::responses`] over a fallible source: its first error is
    /// yielded as soon as it comes, and ends the stream.
    pub fn try_responses<S>(&mut self, requests: S, window: usize) -> Responses<'_, S>
    where
        S: Stream<Item = Result<Message, ClientError>>,
    {
        Responses::new(&mut self.exchange, requests, window)
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
        let resp = expect_ok(self.call_owned(req).await?)?;
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
        let resp = expect_ok(self.call_owned(req).await?)?;
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
        let resp = expect_ok(self.call_owned(req).await?)?;
        decode(resp).map(|KeyAnswer { key }| key)
    }

    /// DATA GET; returns the record without the response's envelope fields.
    pub async fn data_get(&mut self, key: &str) -> Result<Map<String, Value>, ClientError> {
        let req = self
            .request(Operation::Get, Kind::Data)?
            .with(field::KEY, key);
        let mut resp = expect_ok(self.call_owned(req).await?)?;
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
        expect_ok(self.call_owned(req).await?).map(drop)
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
        decode(expect_ok(self.call_owned(req).await?)?)
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
        let ack: UploadAck = decode(expect_ok(self.call_owned(req).await?)?)?;
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
        let ack: UploadAck = decode(expect_ok(self.call_owned(req).await?)?)?;
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
        decode(expect_ok(self.call_owned(req).await?)?)
    }

    /// FILE GET with `upload_status` (our server's extension, announced as
    /// `upload_status`): the unfinished upload under `key`, read only;
    /// refused 404 when the key holds none.
    pub async fn file_upload_status(&mut self, key: &str) -> Result<UploadStatus, ClientError> {
        let req = self
            .request(Operation::Get, Kind::File)?
            .with(field::KEY, key)
            .with(field::UPLOAD_STATUS, true);
        decode(expect_ok(self.call_owned(req).await?)?)
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
        decode(expect_ok(self.call_owned(req).await?)?)
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
        let resp = expect_ok(self.call_owned(req).await?)?;
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
        expect_ok(self.call_owned(req).await?).map(drop)
    }

    /// FILE DELETE only while the file has md5 `if_md5` (our server's
    /// extension, with `replace`): decided atomically by the store, so a
    /// newer version is never deleted (refused, reason `precondition`).
    pub async fn file_delete_if(&mut self, key: &str, if_md5: &str) -> Result<(), ClientError> {
        let req = self
            .request(Operation::Delete, Kind::File)?
            .with(field::KEY, key)
            .with(field::IF_MD5, if_md5);
        expect_ok(self.call_owned(req).await?).map(drop)
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
        expect_ok(self.call_owned(req).await?).map(drop)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
