//! Request handling: one STEP request in, one response out.
//!
//! [`Service::handle`] applies the reference's order of checks (envelope,
//! LOGIN, token) and then dispatches to thin per-operation handlers that call
//! the [`Storage`] interface. Protocol rules live here, not in the storage:
//! wire values are checked (a block's index and length against the upload's
//! plan) before anything reaches it. Failures are [`StepError`]s, turned into
//! responses in one place; storage failures become them in one place too.

use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use step_core::access::{self, Identity, Refusal};
use step_core::client::Capabilities;
use step_core::message::{Rejection, RequestHead, field};
use step_core::plan::{block_len, total_blocks};
use step_core::token::TokenKey;
use step_core::{DEFAULT_BLOCK_SIZE, Frame, Kind, Message, Operation, Reason, Status};
use tracing::{Instrument, debug, info};

use crate::accounts::{AuthMode, HashError};
use crate::auth::{Authority, LoginLimits, Public};
use crate::binding::ConnState;
use crate::error::StepError;
use crate::store::{Deleted, PlanRecord, Replace, Storage, StoreError};

/// Caps the server enforces on what peers send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_key_len: usize,
    pub max_username_len: usize,
    pub max_file_size: u64,
    pub max_block_size: u64,
    /// Token refusals answered per second, server-wide, beyond a burst of as
    /// many; further refusals wait their turn. Bounds online token guessing.
    pub token_failures_per_sec: u32,
    /// Announced in LOGIN's capabilities: seconds an unfinished upload
    /// lives without activity (the store's `upload_expiry` enforces it).
    pub upload_expiry_secs: u64,
    /// Pacing and bounded hashing of password LOGINs (accounts mode).
    pub login: LoginLimits,
    /// Extensions served and announced.
    pub extensions: Extensions,
}

/// Extension operations the server serves and announces in LOGIN's
/// capabilities; all on by default. One turned off is answered as the
/// reference answers it, so this server can stand in for one without it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extensions {
    /// FILE LIST.
    pub list: bool,
    /// FILE SAVE `replace` / `if_md5`, DELETE `if_md5`.
    pub replace: bool,
}

impl Default for Extensions {
    fn default() -> Self {
        Self {
            list: true,
            replace: true,
        }
    }
}

mod list;

pub use list::{LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT};

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_len: 1024,
            max_username_len: 256,
            token_failures_per_sec: 1000,
            login: LoginLimits::default(),
            max_file_size: 1 << 40,
            max_block_size: step_core::codec::DEFAULT_MAX_BINARY as u64,
            upload_expiry_secs: 86_400,
            extensions: Extensions::default(),
        }
    }
}

/// A response and whether the connection ends after it.
#[derive(Debug)]
pub struct Reply {
    pub message: Message,
    pub close: bool,
}

impl From<Message> for Reply {
    fn from(message: Message) -> Self {
        Reply {
            message,
            close: false,
        }
    }
}

/// Everything a connection needs to answer requests.
#[derive(Debug)]
pub struct Service {
    store: Arc<dyn Storage>,
    limits: Limits,
    auth: Authority,
}

/// Who a request acts for: whoever its token names (over the wire, from
/// `peer`), or an identity an in-process caller already checked with
/// [`Service::identity_of`].
#[derive(Debug, Clone, Copy)]
enum Caller<'a> {
    Token { peer: Option<IpAddr> },
    Checked(&'a Identity),
}

/// What [`Service::admit`] decided about a request from its JSON part.
#[derive(Debug)]
pub enum Admission {
    /// Answered already; its binary part (if any) is not needed.
    Answer(Reply),
    /// Authenticated and not refused yet: [`Service::serve`] answers it.
    Proceed(Admitted),
}

/// An authenticated, authorized request waiting for [`Service::serve`].
#[derive(Debug)]
pub struct Admitted {
    msg: Message,
    op: Operation,
    kind: Kind,
    user: String,
}

impl Admitted {
    /// Whether answering needs the request's binary part: only FILE UPLOAD
    /// stores one; every other request's binary part is skipped unread.
    pub fn wants_body(&self) -> bool {
        (self.op, self.kind) == (Operation::Upload, Kind::File)
    }
}

/// Maps a storage failure for `key` to the request's failure.
fn in_store(key: &str) -> impl FnOnce(StoreError) -> StepError + '_ {
    move |e| StepError::from_store(e, key)
}

/// Check a block's wire index and length against its upload's plan, in the
/// reference's order: 405 (index too large), 410 (negative), 406 (wrong
/// length). Only an index that passes reaches the storage.
fn check_block(plan: PlanRecord, index: i64, len: u64) -> Result<u64, StepError> {
    let total = total_blocks(plan.size, plan.block_size);
    if index >= 0 && index as u64 >= total {
        return Err(StepError::IndexTooLarge);
    }
    let Ok(index) = u64::try_from(index) else {
        return Err(StepError::IndexNegative);
    };
    let expected = block_len(plan.size, plan.block_size, index).unwrap_or(0);
    if len != expected {
        return Err(StepError::BlockSize { expected, got: len });
    }
    Ok(index)
}

/// A request its caller's credential does not allow: 403, as for a token
/// that cannot do it, with our `reason`.
fn refused_access(op: Operation, kind: Kind, refusal: Refusal) -> Message {
    let text = match refusal {
        Refusal::ReadOnly => {
            format!("This token may only read; {op} {kind} writes. Log in as a user to write.")
        }
        other => other.to_string(),
    };
    let m = Message::response(op.as_str(), kind.as_str(), Status::BadToken, text);
    match refusal {
        Refusal::ReadOnly => m.with(field::REASON, Reason::ReadOnly.as_str()),
        _ => m,
    }
}

fn ok(op: Operation, kind: Kind, msg: impl Into<String>) -> Message {
    Message::response(op.as_str(), kind.as_str(), Status::Ok, msg)
}

fn refuse(op: Operation, kind: Kind, e: &StepError) -> Message {
    let m = Message::response(op.as_str(), kind.as_str(), e.status(), e.to_string());
    match e.reason() {
        Some(reason) => m.with(field::REASON, reason.as_str()),
        None => m,
    }
}

impl Service {
    /// The storage this service keeps everything in.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.store
    }

    /// A service in open mode with anonymous access off.
    pub fn new(storage: Arc<dyn Storage>, tokens: TokenKey, limits: Limits) -> Self {
        let auth = Authority::new(
            Arc::clone(&storage),
            tokens,
            limits.token_failures_per_sec,
            limits.login,
            limits.max_username_len,
        );
        Self {
            store: storage,
            limits,
            auth,
        }
    }

    /// The service with LOGIN checking passwords as `mode` says (a new
    /// service is in open mode).
    pub fn with_auth(mut self, mode: AuthMode) -> Result<Self, HashError> {
        self.auth.set_mode(mode, self.limits.login.queue)?;
        Ok(self)
    }

    /// The service with anonymous callers allowed what `public` says (a
    /// new service allows them nothing).
    pub fn with_public(mut self, public: Public) -> Self {
        self.auth.set_public(public);
        self
    }

    pub fn auth_mode(&self) -> AuthMode {
        self.auth.mode()
    }

    /// What anonymous callers may do here, and as whom.
    pub fn public(&self) -> &Public {
        self.auth.public()
    }

    pub fn store(&self) -> &Arc<dyn Storage> {
        &self.store
    }

    pub fn capabilities(&self) -> Capabilities {
        Capabilities {
            pipelining: true,
            resume: true,
            max_block_size: self.limits.max_block_size,
            token_ttl: Some(self.auth.token_ttl()),
            max_file_size: Some(self.limits.max_file_size),
            upload_expiry: Some(self.limits.upload_expiry_secs),
            list: self.limits.extensions.list,
            replace: self.limits.extensions.replace,
            upload_status: true,
            upload_md5: true,
            anonymous: self.auth.anonymous(),
        }
    }

    /// Answer one frame (JSON and binary part already read) as the only
    /// request of its connection.
    pub async fn handle(&self, frame: Frame) -> Reply {
        match self.admit_from(frame.json, None).await {
            Admission::Answer(reply) => reply,
            Admission::Proceed(request) => {
                self.serve(request, frame.binary, &ConnState::new()).await
            }
        }
    }

    /// Everything that can be decided from a request's JSON part alone, before
    /// its binary part is read: envelope, LOGIN, token, BYE, and for UPLOAD
    /// the key. A request answered here never has its binary part buffered
    /// (the connection skips it); only an admitted FILE UPLOAD needs one
    /// ([`Admitted::wants_body`]).
    pub async fn admit(&self, json: Bytes) -> Admission {
        self.admit_from(json, None).await
    }

    /// [`Service::admit`] for a request from `peer` (its address paces
    /// password LOGINs).
    pub async fn admit_from(&self, json: Bytes, peer: Option<IpAddr>) -> Admission {
        let msg = match Message::from_frame(Frame {
            json,
            binary: Bytes::new(),
        }) {
            Ok(m) => m,
            Err(e) => {
                return Admission::Answer(
                    Message::response(
                        "ERROR",
                        "ERROR",
                        Status::CompulsoryFieldMissing,
                        e.to_string(),
                    )
                    .into(),
                );
            }
        };
        self.admit_message(msg, Caller::Token { peer }).await
    }

    /// Answer a request given as a message (in process, no frame), its
    /// token checked as over the wire; `peer` is whom it comes from (an
    /// HTTP client's address), for LOGIN's pacing.
    pub async fn serve_message(&self, msg: Message, peer: Option<IpAddr>) -> Message {
        self.answer(msg, Caller::Token { peer }, &ConnState::new())
            .await
    }

    /// Answer `msg` for `identity` (from [`Service::identity_of`]) in
    /// process: every rule of a request over the wire applies — envelope,
    /// extensions, LOGIN, the access decision, the UPLOAD checks — except
    /// the token, which is not read again. `conn` is the state of the
    /// caller's session, as a connection's is over the wire.
    pub async fn serve_as(&self, identity: &Identity, msg: Message, conn: &ConnState) -> Message {
        self.answer(msg, Caller::Checked(identity), conn).await
    }

    async fn answer(&self, msg: Message, caller: Caller<'_>, conn: &ConnState) -> Message {
        let binary = msg.binary.clone();
        match self.admit_message(msg, caller).await {
            Admission::Answer(reply) => reply.message,
            Admission::Proceed(request) => self.serve(request, binary, conn).await.message,
        }
    }

    async fn admit_message(&self, msg: Message, caller: Caller<'_>) -> Admission {
        let head = match RequestHead::parse(&msg) {
            Ok(h) => h,
            Err(rejection) => return Admission::Answer(rejection.into_message().into()),
        };
        let (op, kind) = (head.operation, head.kind);
        if op == Operation::List && !self.limits.extensions.list {
            return Admission::Answer(
                Rejection::unknown_operation(op.as_str())
                    .into_message()
                    .into(),
            );
        }
        let peer = match caller {
            Caller::Token { peer } => peer,
            Caller::Checked(_) => None,
        };
        if op == Operation::Login {
            let caps = self.capabilities().to_json();
            return Admission::Answer(self.auth.login(&msg, kind, peer, caps).await.into());
        }
        let identity = match caller {
            Caller::Checked(identity) => identity.clone(),
            Caller::Token { .. } => match self.auth.authenticate(&msg, op).await {
                Ok(identity) => identity,
                Err(refusal) => return Admission::Answer(refusal.into()),
            },
        };
        // The one decision: what this operation does against what the
        // caller's credential allows.
        if let Some(access) = access::of_step(op, kind)
            && let Err(refusal) = access::decide(Some(identity.scope), access)
        {
            info!(user = %identity.user, %op, %kind, "refused: {refusal}");
            return Admission::Answer(refused_access(op, kind, refusal).into());
        }
        self.admit_as(msg, op, kind, identity.user)
    }

    /// [`Service::admit`] past the token: `user` is who the request acts for.
    fn admit_as(&self, msg: Message, op: Operation, kind: Kind, user: String) -> Admission {
        if op == Operation::Bye {
            info!(%user, "client said BYE");
            return Admission::Answer(Reply {
                message: ok(op, kind, "Bye."),
                close: true,
            });
        }
        // The first of UPLOAD's checks (the reference's order) needs no
        // store; the rest need the plan and come with the body.
        if (op, kind) == (Operation::Upload, Kind::File)
            && let Err(e) = self.key(&msg, "FILE uploading")
        {
            return Admission::Answer(refuse(op, kind, &e).into());
        }
        Admission::Proceed(Admitted {
            msg,
            op,
            kind,
            user,
        })
    }

    /// Answer an admitted request; `binary` is its binary part (empty unless
    /// [`Admitted::wants_body`]); `conn` is its connection's state.
    pub async fn serve(&self, request: Admitted, binary: Bytes, conn: &ConnState) -> Reply {
        let Admitted {
            mut msg,
            op,
            kind,
            user,
        } = request;
        msg.binary = binary;
        let span = tracing::debug_span!("request", %user, %op, %kind);
        let result = async {
            match kind {
                Kind::Data => self.data(op, &user, msg).await,
                Kind::File => self.file(op, &user, msg, conn).await,
                Kind::Auth => Err(StepError::TypeNotAllowed(format!(
                    "Type AUTH is not allowed for {op}."
                ))),
            }
        }
        .instrument(span)
        .await;
        match result {
            Ok(m) => m.into(),
            Err(e) => {
                debug!(status = e.status().code(), error = %e, "refused");
                refuse(op, kind, &e).into()
            }
        }
    }

    /// The identity `token` proves, checked as a request's token is (a
    /// refusal is paced like any guess): an in-process caller checks a
    /// token once and then serves every request of its exchange with
    /// [`Service::serve_as`].
    pub async fn identity_of(&self, token: &str) -> Result<Identity, Message> {
        let msg = Message::request(Operation::Login, Kind::Auth).with(field::TOKEN, token);
        self.auth.authenticate(&msg, Operation::Login).await
    }

    fn key<'m>(&self, msg: &'m Message, what: &str) -> Result<&'m str, StepError> {
        match msg.str_field(field::KEY) {
            Ok(Some(k)) => self.check_key(k),
            Ok(None) => Err(StepError::Invalid(format!(
                "Field \"key\" is missing for {what}."
            ))),
            Err(e) => Err(StepError::Invalid(e.to_string())),
        }
    }

    /// The given key, or a fresh uuid4 when there is none.
    fn key_or_new(&self, msg: &Message) -> Result<String, StepError> {
        match msg.str_field(field::KEY) {
            Ok(Some(k)) => self.check_key(k).map(str::to_owned),
            Ok(None) => Ok(uuid::Uuid::new_v4().to_string()),
            Err(e) => Err(StepError::Invalid(e.to_string())),
        }
    }

    fn check_key<'k>(&self, key: &'k str) -> Result<&'k str, StepError> {
        if key.is_empty() || key.len() > self.limits.max_key_len {
            return Err(StepError::Invalid(format!(
                "\"key\" must be a non-empty string of at most {} bytes",
                self.limits.max_key_len
            )));
        }
        Ok(key)
    }

    fn block_index(msg: &Message) -> Result<i64, StepError> {
        match msg.int_field(field::BLOCK_INDEX) {
            Ok(Some(i)) => Ok(i),
            Ok(None) => Err(StepError::Invalid(
                "The \"block_index\" is compulsory.".into(),
            )),
            Err(e) => Err(StepError::Invalid(e.to_string())),
        }
    }

    /// The block size a request proposes (extension), or the default.
    fn block_size(&self, msg: &Message) -> u64 {
        match msg.int_field(field::BLOCK_SIZE) {
            Ok(Some(bs))
                if bs >= DEFAULT_BLOCK_SIZE as i64 && bs as u64 <= self.limits.max_block_size =>
            {
                bs as u64
            }
            _ => DEFAULT_BLOCK_SIZE,
        }
    }

    async fn data(&self, op: Operation, user: &str, msg: Message) -> Result<Message, StepError> {
        let kind = Kind::Data;
        match op {
            Operation::Save => {
                let key = self.key_or_new(&msg)?;
                let mut record = msg.fields;
                for name in field::ENVELOPE {
                    record.remove(name);
                }
                record.insert(field::KEY.into(), Value::String(key.clone()));
                self.store
                    .record_create(user, &key, record)
                    .await
                    .map_err(in_store(&key))?;
                info!(%user, %key, "record saved");
                Ok(ok(op, kind, format!("Data is saved with key \"{key}\"")).with(field::KEY, key))
            }
            Operation::Get => {
                let key = self.key(&msg, "DATA GET")?;
                let mut record = self
                    .store
                    .record_get(user, key)
                    .await
                    .map_err(in_store(key))?;
                let envelope = ok(op, kind, "OK");
                record.extend(envelope.fields);
                Ok(Message::new(record))
            }
            Operation::Delete => {
                let key = self.key(&msg, "DATA delete")?;
                self.store
                    .record_delete(user, key)
                    .await
                    .map_err(in_store(key))?;
                info!(%user, %key, "record deleted");
                Ok(ok(op, kind, format!("The \"key\" {key} is deleted.")).with(field::KEY, key))
            }
            _ => Err(StepError::OperationNotAllowed(format!(
                "Operation {op} is not allowed for DATA."
            ))),
        }
    }

    async fn file(
        &self,
        op: Operation,
        user: &str,
        msg: Message,
        conn: &ConnState,
    ) -> Result<Message, StepError> {
        match op {
            Operation::Save => self.file_save(user, &msg, conn).await,
            Operation::Upload => self.file_upload(user, msg, conn).await,
            Operation::Get => self.file_get(user, &msg).await,
            Operation::Download => self.file_download(user, &msg).await,
            Operation::Delete => self.file_delete(user, &msg).await,
            Operation::List => self.file_list(user, &msg).await,
            _ => Err(StepError::OperationNotAllowed(format!(
                "Operation {op} is not allowed for FILE."
            ))),
        }
    }

    async fn file_save(
        &self,
        user: &str,
        msg: &Message,
        conn: &ConnState,
    ) -> Result<Message, StepError> {
        let key = self.key_or_new(msg)?;
        let size = match msg.int_field(field::SIZE) {
            Ok(None) => return Err(StepError::SizeMissing),
            Err(e) => return Err(StepError::SizeInvalid(e.to_string())),
            Ok(Some(s)) if s < 0 => {
                return Err(StepError::SizeInvalid("it must not be negative".into()));
            }
            Ok(Some(s)) if s as u64 > self.limits.max_file_size => {
                return Err(StepError::TooLarge(format!(
                    "{s} bytes exceeds this server's limit of {}",
                    self.limits.max_file_size
                )));
            }
            Ok(Some(s)) => s as u64,
        };
        let plan = PlanRecord {
            size,
            block_size: self.block_size(msg),
        };
        let resume = msg.bool_field(field::RESUME);
        // Only the upload the SAVE names is resumed: its id is the proof
        // that the writer is the one who started it.
        let own = resume
            .then(|| msg.str_field(field::UPLOAD_ID).ok().flatten())
            .flatten();
        let replace = match self.replace_of(msg)? {
            Some(replace) => self.store.plan_replace(user, &key, plan, own, replace),
            None => self.store.plan_upload(user, &key, plan, own),
        };
        let outcome = replace.await.map_err(in_store(&key))?;
        if let Some(id) = outcome
            .upload_id
            .as_deref()
            .filter(|_| outcome.md5.is_none())
        {
            conn.bind(user, &key, id);
        }
        let total = total_blocks(size, plan.block_size);
        info!(%user, %key, size, total_block = total, block_size = plan.block_size, resumed = outcome.resumed, "upload plan");
        let mut m = ok(Operation::Save, Kind::File, "This is the upload plan.")
            .with(field::KEY, key)
            .with(field::SIZE, size)
            .with(field::TOTAL_BLOCK, total)
            .with(field::BLOCK_SIZE, plan.block_size);
        if resume {
            m.set(field::RESUMED, outcome.resumed);
            m.set(field::MISSING_RANGES, serde_json::json!(outcome.missing));
        }
        if let Some(md5) = outcome.md5 {
            m.set(field::MD5, md5);
        }
        if let Some(id) = outcome.upload_id {
            m.set(field::UPLOAD_ID, id);
        }
        Ok(m)
    }

    /// A SAVE's `replace` extension (with its `if_md5`), when this server
    /// serves it; otherwise the fields are ignored, as the reference would.
    fn replace_of(&self, msg: &Message) -> Result<Option<Replace>, StepError> {
        if !self.limits.extensions.replace || !msg.bool_field(field::REPLACE) {
            return Ok(None);
        }
        Ok(Some(Replace {
            if_md5: self.if_md5(msg)?,
        }))
    }

    fn if_md5(&self, msg: &Message) -> Result<Option<String>, StepError> {
        Self::md5_of(msg, field::IF_MD5)
    }

    /// The md5 in field `name`, if any, lower case.
    fn md5_of(msg: &Message, name: &'static str) -> Result<Option<String>, StepError> {
        match msg.str_field(name) {
            Ok(None) => Ok(None),
            Ok(Some(m)) if m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Ok(Some(m.to_ascii_lowercase()))
            }
            Ok(Some(_)) => Err(StepError::Invalid(format!(
                "\"{name}\" must be 32 hexadecimal digits"
            ))),
            Err(e) => Err(StepError::Invalid(e.to_string())),
        }
    }

    async fn file_upload(
        &self,
        user: &str,
        msg: Message,
        conn: &ConnState,
    ) -> Result<Message, StepError> {
        let key = self.key(&msg, "FILE uploading")?.to_owned();
        let mut upload = self
            .store
            .open_upload(user, &key)
            .await
            .map_err(in_store(&key))?;
        let index = Self::block_index(&msg)?;
        let named = match msg.str_field(field::UPLOAD_ID) {
            Ok(id) => id.map(str::to_owned),
            Err(e) => return Err(StepError::Invalid(e.to_string())),
        };
        // A block that names no upload is for the one its connection is
        // bound to (`binding`), so it never lands in another writer's.
        let upload_id = conn.target(user, &key, named, upload.upload_id());
        // A block for another upload is refused as such before it is
        // checked against this upload's plan, which a racing SAVE made.
        if let (Some(want), Some(current)) = (upload_id.as_deref(), upload.upload_id())
            && want != current
        {
            return Err(StepError::Superseded(key));
        }
        let checked = check_block(upload.plan(), index, msg.binary.len() as u64)?;
        // Our extension: the whole file's md5 as the writer computed it; an
        // upload without it is never completed (the key keeps its file).
        if let Some(want) = Self::md5_of(&msg, field::MD5)? {
            upload.expect_md5(want);
        }
        let md5 = upload
            .put_block(checked, msg.binary, upload_id)
            .await
            .map_err(in_store(&key))?;
        debug!(%user, %key, index, "block stored");
        let mut m = ok(
            Operation::Upload,
            Kind::File,
            format!("The block {index} is uploaded."),
        )
        .with(field::KEY, key)
        .with(field::BLOCK_INDEX, index);
        if let Some(md5) = md5 {
            m.set(field::MD5, md5);
        }
        Ok(m)
    }

    async fn file_get(&self, user: &str, msg: &Message) -> Result<Message, StepError> {
        let key = self.key(msg, "FILE GET")?;
        if msg.bool_field(field::UPLOAD_STATUS) {
            return self.upload_status(user, key).await;
        }
        let meta = self.store.head(user, key).await.map_err(in_store(key))?;
        let block_size = self.block_size(msg);
        // Extensions: the version (DOWNLOADs may name it, so they are never
        // served from a newer one) and when it became complete.
        let mut m = ok(Operation::Get, Kind::File, "OK. This is the download plan.")
            .with(field::KEY, key)
            .with(field::SIZE, meta.size)
            .with(field::TOTAL_BLOCK, total_blocks(meta.size, block_size))
            .with(field::BLOCK_SIZE, block_size)
            .with(field::MD5, meta.md5);
        if let Some(id) = meta.upload_id {
            m.set(field::UPLOAD_ID, id);
        }
        if meta.completed_unix > 0 {
            m.set(field::LAST_MODIFIED, meta.completed_unix);
        }
        Ok(m)
    }

    /// FILE GET with `upload_status` (extension): the key's unfinished
    /// upload — its id, plan and missing blocks — read only, so a client
    /// may ask as often as it likes without resuming, refreshing or
    /// superseding anything.
    async fn upload_status(&self, user: &str, key: &str) -> Result<Message, StepError> {
        let found = self.store.upload_status(user, key).await;
        let up = found.map_err(|e| match e {
            StoreError::NotFound => StepError::NoUpload(key.to_owned()),
            e => StepError::from_store(e, key),
        })?;
        let total = total_blocks(up.plan.size, up.plan.block_size);
        Ok(
            ok(Operation::Get, Kind::File, "This is the unfinished upload.")
                .with(field::KEY, key)
                .with(field::SIZE, up.plan.size)
                .with(field::TOTAL_BLOCK, total)
                .with(field::BLOCK_SIZE, up.plan.block_size)
                .with(field::UPLOAD_ID, up.upload_id)
                .with(field::MISSING_RANGES, serde_json::json!(up.missing))
                .with(field::LAST_ACTIVE, up.last_active_unix),
        )
    }

    async fn file_download(&self, user: &str, msg: &Message) -> Result<Message, StepError> {
        let key = self.key(msg, "FILE downloading")?;
        // Our extension: the version a download began with, so a replace
        // under way never mixes two versions in one download.
        let version = match msg.str_field(field::UPLOAD_ID) {
            Ok(id) => id,
            Err(e) => return Err(StepError::Invalid(e.to_string())),
        };
        let meta = match version {
            Some(id) => self.store.head_version(user, key, id).await,
            None => self.store.head(user, key).await,
        }
        .map_err(in_store(key))?;
        let index = Self::block_index(msg)?;
        let block_size = self.block_size(msg);
        if index < 0 {
            return Err(StepError::IndexNegative);
        }
        let Some(len) = block_len(meta.size, block_size, index as u64) else {
            return Err(StepError::Invalid(
                "The \"block_index\" exceed the max index.".into(),
            ));
        };
        let data = self
            .store
            .read(user, &meta, index as u64 * block_size, len)
            .await
            .map_err(|e| match (e, version) {
                // Removed between its head and this read.
                (StoreError::NotFound, Some(_)) => StepError::Replaced(key.to_owned()),
                (e, _) => StepError::from_store(e, key),
            })?;
        debug!(%user, %key, index, "block sent");
        Ok(ok(Operation::Download, Kind::File, "An available block.")
            .with(field::KEY, key)
            .with(field::BLOCK_INDEX, index)
            .with(field::SIZE, len)
            .with_binary(data))
    }

    async fn file_delete(&self, user: &str, msg: &Message) -> Result<Message, StepError> {
        let key = self.key(msg, "FILE delete")?;
        // Our extension: DELETE of one upload only (its own cleanup), never
        // of what another upload stored under the key meanwhile.
        let upload_id = match msg.str_field(field::UPLOAD_ID) {
            Ok(id) => id,
            Err(e) => return Err(StepError::Invalid(e.to_string())),
        };
        let if_md5 = if self.limits.extensions.replace {
            self.if_md5(msg)?
        } else {
            None
        };
        let deleted = match &if_md5 {
            Some(md5) => self.store.delete_file_if(user, key, md5).await,
            None => self.store.delete_file(user, key, upload_id).await,
        };
        match deleted.map_err(in_store(key))? {
            Deleted::File => {
                info!(%user, %key, "file deleted");
                Ok(ok(
                    Operation::Delete,
                    Kind::File,
                    format!("The \"key\" {key} is deleted."),
                )
                .with(field::KEY, key))
            }
            Deleted::UnfinishedUpload => {
                info!(%user, %key, "unfinished upload discarded");
                Err(StepError::Unfinished(format!(
                    "{key} (the temporary files are deleted)"
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_checks_follow_reference_order() {
        let plan = PlanRecord {
            size: 250,
            block_size: 100,
        };
        assert!(matches!(
            check_block(plan, 3, 100),
            Err(StepError::IndexTooLarge)
        ));
        assert!(matches!(
            check_block(plan, 3, 7),
            Err(StepError::IndexTooLarge)
        ));
        assert!(matches!(
            check_block(plan, -1, 100),
            Err(StepError::IndexNegative)
        ));
        assert!(matches!(
            check_block(plan, i64::MIN, 100),
            Err(StepError::IndexNegative)
        ));
        assert!(matches!(
            check_block(plan, 0, 99),
            Err(StepError::BlockSize { .. })
        ));
        assert!(matches!(
            check_block(plan, 2, 100),
            Err(StepError::BlockSize { .. })
        ));
        assert_eq!(check_block(plan, 2, 50).expect("ok"), 2);
        assert_eq!(check_block(plan, 0, 100).expect("ok"), 0);
    }
}
