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
use step_core::{Frame, Kind, Message, Operation, Problem, Status};
use tracing::{Instrument, debug, info};

use crate::accounts::{AuthMode, HashError};
use crate::auth::{Authority, Public};
use crate::binding::ConnState;
use crate::error::StepError;
use crate::request::{Later, Request};
use crate::store::{Deleted, PlanRecord, Replace, Storage, StoreError};

mod list;

pub use crate::limits::{Extensions, LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT, Limits};

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

/// An authenticated, authorized, parsed request waiting for
/// [`Service::serve`].
#[derive(Debug)]
pub struct Admitted {
    request: Request,
    op: Operation,
    kind: Kind,
    user: String,
}

impl Admitted {
    /// Whether answering needs the request's binary part: only FILE UPLOAD
    /// stores one; every other request's binary part is skipped unread.
    pub fn wants_body(&self) -> bool {
        self.request.wants_body()
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
    let problem = match refusal {
        Refusal::ReadOnly => Problem::ReadOnly,
        _ => Problem::BadToken,
    };
    problem.response(op.as_str(), kind.as_str(), text)
}

/// A FILE UPLOAD's block and what came with it; the fields whose refusal
/// the reference gives after its store call are checked by the handler.
struct Block {
    index: Later<i64>,
    upload_id: Later<Option<String>>,
    /// The whole file's md5 as its writer computed it (extension).
    md5: Later<Option<String>>,
    body: Bytes,
}

fn ok(op: Operation, kind: Kind, msg: impl Into<String>) -> Message {
    Message::response(op.as_str(), kind.as_str(), Status::Ok, msg)
}

fn refuse(op: Operation, kind: Kind, e: &StepError) -> Message {
    e.problem()
        .response(op.as_str(), kind.as_str(), e.to_string())
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
                    Problem::CompulsoryFieldMissing
                        .response("ERROR", "ERROR", e.to_string())
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
        // Parsed once, here; what needs no store is refused before the
        // binary part is read (the first of UPLOAD's checks, in the
        // reference's order: the rest need the plan and come with the body).
        match Request::parse(op, kind, msg, &self.limits) {
            Ok(request) => Admission::Proceed(Admitted {
                request,
                op,
                kind,
                user,
            }),
            Err(e) => {
                debug!(%user, %op, %kind, status = e.status().code(), error = %e, "refused");
                Admission::Answer(refuse(op, kind, &e).into())
            }
        }
    }

    /// Answer an admitted request; `binary` is its binary part (empty unless
    /// [`Admitted::wants_body`]); `conn` is its connection's state.
    pub async fn serve(&self, request: Admitted, binary: Bytes, conn: &ConnState) -> Reply {
        let Admitted {
            request,
            op,
            kind,
            user,
        } = request;
        let span = tracing::debug_span!("request", %user, %op, %kind);
        let result = self
            .dispatch(&user, request.with_body(binary), conn)
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

    async fn dispatch(
        &self,
        user: &str,
        request: Request,
        conn: &ConnState,
    ) -> Result<Message, StepError> {
        match request {
            Request::DataSave { key, record } => self.data_save(user, key, record).await,
            Request::DataGet { key } => self.data_get(user, &key).await,
            Request::DataDelete { key } => self.data_delete(user, &key).await,
            Request::FileSave {
                key,
                size,
                block_size,
                resume,
                upload_id,
                replace,
            } => {
                let plan = PlanRecord { size, block_size };
                let resume = resume.then_some(upload_id);
                self.file_save(user, key, plan, resume, replace, conn).await
            }
            Request::FileUpload {
                key,
                block_index,
                upload_id,
                md5,
                body,
            } => {
                let block = Block {
                    index: block_index,
                    upload_id,
                    md5,
                    body,
                };
                self.file_upload(user, key, block, conn).await
            }
            Request::FileGet {
                key,
                upload_status,
                block_size,
            } => match upload_status {
                true => self.upload_status(user, &key).await,
                false => self.file_get(user, &key, block_size).await,
            },
            Request::FileDownload {
                key,
                upload_id,
                block_index,
                block_size,
            } => {
                let version = upload_id.as_deref();
                self.file_download(user, &key, version, block_index, block_size)
                    .await
            }
            Request::FileDelete {
                key,
                upload_id,
                if_md5,
            } => self.file_delete(user, &key, upload_id, if_md5).await,
            Request::FileList {
                prefix,
                after,
                limit,
            } => self.file_list(user, &prefix, after.as_deref(), limit).await,
        }
    }

    async fn data_save(
        &self,
        user: &str,
        key: String,
        record: serde_json::Map<String, Value>,
    ) -> Result<Message, StepError> {
        let (op, kind) = (Operation::Save, Kind::Data);
        self.store
            .record_create(user, &key, record)
            .await
            .map_err(in_store(&key))?;
        info!(%user, %key, "record saved");
        Ok(ok(op, kind, format!("Data is saved with key \"{key}\"")).with(field::KEY, key))
    }

    async fn data_get(&self, user: &str, key: &str) -> Result<Message, StepError> {
        let mut record = self
            .store
            .record_get(user, key)
            .await
            .map_err(in_store(key))?;
        let envelope = ok(Operation::Get, Kind::Data, "OK");
        record.extend(envelope.fields);
        Ok(Message::new(record))
    }

    async fn data_delete(&self, user: &str, key: &str) -> Result<Message, StepError> {
        self.store
            .record_delete(user, key)
            .await
            .map_err(in_store(key))?;
        info!(%user, %key, "record deleted");
        Ok(ok(
            Operation::Delete,
            Kind::Data,
            format!("The \"key\" {key} is deleted."),
        )
        .with(field::KEY, key))
    }

    /// SAVE; `resume` is `Some` when it asks to resume, with the upload
    /// it names (none named: nothing is resumed).
    async fn file_save(
        &self,
        user: &str,
        key: String,
        plan: PlanRecord,
        resume: Option<Option<String>>,
        replace: Option<Replace>,
        conn: &ConnState,
    ) -> Result<Message, StepError> {
        let size = plan.size;
        // Only the upload the SAVE names is resumed: its id is the proof
        // that the writer is the one who started it.
        let own = resume.as_ref().and_then(Option::as_deref);
        let replace = match replace {
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
        if resume.is_some() {
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

    async fn file_upload(
        &self,
        user: &str,
        key: String,
        block: Block,
        conn: &ConnState,
    ) -> Result<Message, StepError> {
        let mut upload = self
            .store
            .open_upload(user, &key)
            .await
            .map_err(in_store(&key))?;
        let index = block.index?;
        let named = block.upload_id?;
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
        let checked = check_block(upload.plan(), index, block.body.len() as u64)?;
        // Our extension: the whole file's md5 as the writer computed it; an
        // upload without it is never completed (the key keeps its file).
        if let Some(want) = block.md5? {
            upload.expect_md5(want);
        }
        let md5 = upload
            .put_block(checked, block.body, upload_id)
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

    async fn file_get(&self, user: &str, key: &str, block_size: u64) -> Result<Message, StepError> {
        let meta = self.store.head(user, key).await.map_err(in_store(key))?;
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

    /// FILE DOWNLOAD; `version` (our extension) is the version the
    /// download began with, so a replace under way never mixes two
    /// versions in one download.
    async fn file_download(
        &self,
        user: &str,
        key: &str,
        version: Option<&str>,
        block_index: Later<i64>,
        block_size: u64,
    ) -> Result<Message, StepError> {
        let meta = match version {
            Some(id) => self.store.head_version(user, key, id).await,
            None => self.store.head(user, key).await,
        }
        .map_err(in_store(key))?;
        let index = block_index?;
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

    /// FILE DELETE; `upload_id` (our extension) deletes one upload only
    /// (its own cleanup), never what another upload stored meanwhile.
    async fn file_delete(
        &self,
        user: &str,
        key: &str,
        upload_id: Option<String>,
        if_md5: Option<String>,
    ) -> Result<Message, StepError> {
        let deleted = match &if_md5 {
            Some(md5) => self.store.delete_file_if(user, key, md5).await,
            None => {
                self.store
                    .delete_file(user, key, upload_id.as_deref())
                    .await
            }
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
