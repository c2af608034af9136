//! The STEP v1.1 protocol, without IO of its own.
//!
//! * [`access`] — who may do what: operation kinds, token scopes, the decision.
//! * [`codec`] — the frame codec (`tokio_util::codec`), capped on both lengths.
//! * [`json`] — JSON encoding whose byte count equals its character count.
//! * [`message`] — messages, operations, types, directions and status codes.
//! * [`token`] — login tokens in the reference shape, keyed and expiring.
//! * [`digest`] — md5 helpers (passwords, file digests).
//! * [`problem`] — every refusal in one table: STEP status, reason, HTTP status, code, words.
//! * [`plan`] — block arithmetic shared by servers and clients.
//! * [`client`] — an async client with a bounded pipelining window.
//! * [`answers`] — what the server answers it, as types; [`error`] — its errors.
//! * [`link`] — what it speaks over: frames on a connection, or a channel to a
//!   service in this process.
//! * [`exchange`] — a link kept in step (answers owed, timeout, breakage).
//! * [`pipeline`] — its stream of responses, cancel-safe.
//! * [`conn`] — its connection: plain TCP, or TLS (feature `tls`).

pub mod access;
pub mod answers;
pub mod client;
pub mod codec;
pub mod conn;
pub mod digest;
pub mod error;
pub mod exchange;
pub mod json;
pub mod link;
pub mod message;
pub mod pipeline;
pub mod plan;
pub mod problem;
pub mod status;
pub mod token;
pub mod transfer;

pub use client::{ClientError, StepClient};
pub use codec::{CodecError, Frame, RequestCodec, RequestPart, StepCodec};
pub use conn::Connection;
pub use message::{Direction, Kind, Message, Operation, Status};
pub use problem::{Problem, Reason};

/// The TCP port STEP servers listen on.
pub const DEFAULT_PORT: u16 = 1379;
/// The block size the reference server plans with and reference clients hard-code.
pub const DEFAULT_BLOCK_SIZE: u64 = 20480;
