//! Messages, their reserved fields and the status-code table (the
//! refusals, and the `reason`s beside the codes, are [`crate::problem`]'s).
//!
//! Requests are parsed once, at the edge: [`RequestHead::parse`] applies the
//! reference's order of checks (EARTH, compulsory fields, direction, operation,
//! type) and yields typed values or the exact rejection the reference gives.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::problem::Problem;
/// Where it was first defined; the refusal table defines it now.
pub use crate::problem::Reason;
pub use crate::status::Status;

/// Reserved field names.
pub mod field {
    pub const OPERATION: &str = "operation";
    pub const TYPE: &str = "type";
    pub const DIRECTION: &str = "direction";
    pub const STATUS: &str = "status";
    pub const STATUS_MSG: &str = "status_msg";
    pub const USERNAME: &str = "username";
    pub const PASSWORD: &str = "password";
    pub const TOKEN: &str = "token";
    pub const KEY: &str = "key";
    pub const SIZE: &str = "size";
    pub const BLOCK_INDEX: &str = "block_index";
    pub const BLOCK_SIZE: &str = "block_size";
    pub const TOTAL_BLOCK: &str = "total_block";
    pub const MD5: &str = "md5";
    /// The envelope of a message: never part of a DATA record's content.
    pub const ENVELOPE: [&str; 6] = [OPERATION, TYPE, DIRECTION, TOKEN, STATUS, STATUS_MSG];
    // Extensions: extra fields, ignored by reference peers.
    pub const CAPABILITIES: &str = "capabilities";
    pub const RESUME: &str = "resume";
    pub const MISSING_RANGES: &str = "missing_ranges";
    pub const RESUMED: &str = "resumed";
    /// Names one upload of a key (SAVE answer); an UPLOAD carrying it is
    /// refused with 408 once another SAVE has started the key over.
    pub const UPLOAD_ID: &str = "upload_id";
    /// Why our server refused a request, as a [`crate::problem::Reason`] (error
    /// responses only; the status stays the reference's).
    pub const REASON: &str = "reason";
    // FILE LIST (extension operation): request fields, then answer fields.
    pub const PREFIX: &str = "prefix";
    pub const AFTER: &str = "after";
    pub const LIMIT: &str = "limit";
    pub const FILES: &str = "files";
    pub const NEXT: &str = "next";
    /// When a file became complete, Unix seconds (listing entries).
    pub const LAST_MODIFIED: &str = "last_modified";
    /// FILE SAVE extension: plan an upload that replaces a complete file
    /// atomically when it completes.
    pub const REPLACE: &str = "replace";
    /// A precondition on the current file's md5 (SAVE with `replace`,
    /// DELETE): refused with reason `precondition` when it differs.
    pub const IF_MD5: &str = "if_md5";
    /// FILE GET extension: ask about the key's unfinished upload instead
    /// of its complete file, without changing anything.
    pub const UPLOAD_STATUS: &str = "upload_status";
    /// When an unfinished upload last received a SAVE or a block, Unix
    /// seconds (its expiry counts from then).
    pub const LAST_ACTIVE: &str = "last_active";
    /// LOGIN as the public identity: what the caller asks for (`read`,
    /// `write`); no username or password.
    pub const ANONYMOUS: &str = "anonymous";
    /// What a LOGIN's token allows (`read`, `full`).
    pub const SCOPE: &str = "scope";
    /// LOGIN refusals that may pass: seconds after which to retry.
    pub const RETRY_AFTER: &str = "retry_after";
}

macro_rules! wire_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl FromStr for $name {
            type Err = ();
            /// Case-sensitive, as the reference compares.
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($text => Ok($name::$variant),)+ _ => Err(()) }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// The `operation` of a request.
    Operation {
        Save = "SAVE",
        Delete = "DELETE",
        Get = "GET",
        Upload = "UPLOAD",
        Download = "DOWNLOAD",
        Bye = "BYE",
        Login = "LOGIN",
        // Extension: FILE LIST. Reference clients never send it; with any
        // other type it is answered as the reference answers an unknown
        // operation (see [`RequestHead::parse`]).
        List = "LIST",
    }
);

wire_enum!(
    /// The `type` of a request.
    Kind {
        File = "FILE",
        Data = "DATA",
        Auth = "AUTH",
    }
);

wire_enum!(
    /// The `direction` of a message.
    Direction {
        Request = "REQUEST",
        Response = "RESPONSE",
    }
);

/// One frame off the wire, JSON not yet parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Frame {
    pub json: Bytes,
    pub binary: Bytes,
}

/// Refusals as messages: the table ([`Problem`]) knows no messages, so the
/// wire form of each row is made here.
impl Problem {
    /// A response refusing `operation` `kind` this way, saying `status_msg`.
    pub fn response(self, operation: &str, kind: &str, status_msg: impl Into<String>) -> Message {
        self.response_as(self.step_status(), operation, kind, status_msg)
    }

    /// A LOGIN refused this way: the reference's own refusals with their
    /// status, ours with 401 and the reason, since 401 is the only refusal
    /// a reference client expects of LOGIN.
    pub fn login_response(self, status_msg: impl Into<String>) -> Message {
        let status = match self.reason() {
            Some(_) => Status::WrongPassword,
            None => self.step_status(),
        };
        self.response_as(status, "LOGIN", "AUTH", status_msg)
    }

    /// `operation` refused at its token check: always the reference's 403
    /// (type AUTH), with the reason when the row has one.
    pub fn token_response(self, operation: &str, status_msg: impl Into<String>) -> Message {
        self.response_as(Status::BadToken, operation, "AUTH", status_msg)
    }

    /// [`Problem::response`] with `status` instead of the row's.
    pub fn response_as(
        self,
        status: Status,
        operation: &str,
        kind: &str,
        status_msg: impl Into<String>,
    ) -> Message {
        let m = Message::response(operation, kind, status, status_msg);
        match self.reason() {
            Some(reason) => m.with(field::REASON, reason.as_str()),
            None => m,
        }
    }
}

/// A frame whose JSON part did not parse as an object.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("JSON part is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("JSON part is not an object")]
    NotObject,
}

/// A field present with the wrong JSON type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field \"{field}\" must be {expected}")]
pub struct FieldTypeError {
    pub field: &'static str,
    pub expected: &'static str,
}

/// A STEP message: its JSON object (every field, known or not) and binary part.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Message {
    pub fields: Map<String, Value>,
    pub binary: Bytes,
}

impl Message {
    pub fn new(fields: Map<String, Value>) -> Self {
        Self {
            fields,
            binary: Bytes::new(),
        }
    }

    /// A request skeleton: operation, type and direction REQUEST.
    pub fn request(operation: Operation, kind: Kind) -> Self {
        let mut m = Self::default();
        m.set(field::OPERATION, operation.as_str());
        m.set(field::TYPE, kind.as_str());
        m.set(field::DIRECTION, Direction::Request.as_str());
        m
    }

    /// A response skeleton. Labels are strings because error responses use
    /// values outside the request enums (`ERROR`, `3BODY`, `DANGEROUS`).
    pub fn response(
        operation: &str,
        kind: &str,
        status: Status,
        status_msg: impl Into<String>,
    ) -> Self {
        let mut m = Self::default();
        m.set(field::OPERATION, operation);
        m.set(field::TYPE, kind);
        m.set(field::DIRECTION, Direction::Response.as_str());
        m.set(field::STATUS, status.code());
        m.set(field::STATUS_MSG, status_msg.into());
        m
    }

    pub fn from_frame(frame: Frame) -> Result<Self, MessageError> {
        match serde_json::from_slice::<Value>(&frame.json)? {
            Value::Object(fields) => Ok(Self {
                fields,
                binary: frame.binary,
            }),
            _ => Err(MessageError::NotObject),
        }
    }

    pub fn with_binary(mut self, binary: Bytes) -> Self {
        self.binary = binary;
        self
    }

    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.set(name, value);
        self
    }

    pub fn set(&mut self, name: &str, value: impl Into<Value>) {
        self.fields.insert(name.to_owned(), value.into());
    }

    pub fn get(&self, name: &str) -> Option<&Value> {
        self.fields.get(name)
    }

    /// A string field; `Ok(None)` when absent.
    pub fn str_field(&self, name: &'static str) -> Result<Option<&str>, FieldTypeError> {
        match self.fields.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(FieldTypeError {
                field: name,
                expected: "a string",
            }),
        }
    }

    /// An integer field; `Ok(None)` when absent. Floats and strings are refused
    /// rather than guessed at.
    pub fn int_field(&self, name: &'static str) -> Result<Option<i64>, FieldTypeError> {
        match self.fields.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            // Larger than i64::MAX: certainly out of any range we accept.
            Some(Value::Number(n)) if n.is_u64() => Ok(Some(i64::MAX)),
            Some(_) => Err(FieldTypeError {
                field: name,
                expected: "an integer",
            }),
        }
    }

    pub fn bool_field(&self, name: &str) -> bool {
        matches!(self.fields.get(name), Some(Value::Bool(true)))
    }

    /// The status code of a response, if it has a numeric one.
    pub fn status_code(&self) -> Option<u64> {
        self.fields.get(field::STATUS).and_then(Value::as_u64)
    }

    pub fn status_msg(&self) -> &str {
        self.fields
            .get(field::STATUS_MSG)
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// What a request is, once its envelope has passed the reference's checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    pub operation: Operation,
    pub kind: Kind,
}

/// A request refused before dispatch, with the labels the reference answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub operation: String,
    pub kind: String,
    pub status: Status,
    pub status_msg: String,
}

impl Rejection {
    fn error(status: Status, status_msg: String) -> Self {
        Self {
            operation: "ERROR".into(),
            kind: "ERROR".into(),
            status,
            status_msg,
        }
    }

    /// What the reference answers to an operation it does not know.
    pub fn unknown_operation(operation: &str) -> Self {
        Self::error(
            Status::WrongOperation,
            format!("Operation {operation} is not allowed"),
        )
    }

    pub fn into_message(self) -> Message {
        Message::response(&self.operation, &self.kind, self.status, self.status_msg)
    }
}

impl RequestHead {
    /// Steps 1–5 of the reference's order of checks.
    pub fn parse(msg: &Message) -> Result<RequestHead, Rejection> {
        let text = |name: &str| msg.fields.get(name).map(value_text);
        let direction = text(field::DIRECTION);
        if direction.as_deref() == Some("EARTH") {
            return Err(Rejection {
                operation: "3BODY".into(),
                kind: "DANGEROUS".into(),
                status: Status::Earth,
                status_msg: "DO NOT ANSWER! DO NOT ANSWER! DO NOT ANSWER!".into(),
            });
        }
        let operation = text(field::OPERATION);
        let kind = text(field::TYPE);
        for (name, value) in [
            (field::OPERATION, &operation),
            (field::DIRECTION, &direction),
            (field::TYPE, &kind),
        ] {
            if value.is_none() {
                return Err(Rejection::error(
                    Status::CompulsoryFieldMissing,
                    format!("Compulsory field {name} is missing."),
                ));
            }
        }
        let (Some(operation), Some(direction), Some(kind)) = (operation, direction, kind) else {
            unreachable!("checked above");
        };
        if direction != Direction::Request.as_str() {
            return Err(Rejection::error(
                Status::WrongDirection,
                "Wrong direction. Should be \"REQUEST\"".into(),
            ));
        }
        // LIST exists only as FILE LIST: with any other type it stays the
        // unknown operation it is to the reference.
        let Some(operation) = operation
            .parse::<Operation>()
            .ok()
            .filter(|op| *op != Operation::List || kind == Kind::File.as_str())
        else {
            return Err(Rejection::unknown_operation(&operation));
        };
        let Ok(kind) = kind.parse::<Kind>() else {
            return Err(Rejection::error(
                Status::TypeNotAllowed,
                format!("Type {kind} is not allowed"),
            ));
        };
        Ok(RequestHead { operation, kind })
    }
}

/// A field's value as text: strings as themselves, anything else as its JSON.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_carries_the_rows_status_and_reason() {
        let m = Problem::Quota.response("SAVE", "FILE", "cap");
        assert_eq!(m.status_code(), Some(406));
        assert_eq!(m.get(field::REASON).and_then(|v| v.as_str()), Some("quota"));
        let m = Problem::KeyExists.response("SAVE", "FILE", "exists");
        assert_eq!(m.status_code(), Some(402));
        assert!(m.get(field::REASON).is_none());
        let m = Problem::Unavailable.response_as(Status::WrongPassword, "LOGIN", "AUTH", "x");
        assert_eq!(m.status_code(), Some(401));
        assert_eq!(
            m.get(field::REASON).and_then(|v| v.as_str()),
            Some("unavailable")
        );
    }
    use serde_json::json;

    fn msg(v: Value) -> Message {
        match v {
            Value::Object(m) => Message::new(m),
            _ => panic!("object"),
        }
    }

    #[test]
    fn enums_parse_case_sensitively_and_display_back() {
        for op in Operation::ALL {
            assert_eq!(op.as_str().parse::<Operation>(), Ok(*op));
        }
        assert!("save".parse::<Operation>().is_err());
        assert_eq!("FILE".parse::<Kind>(), Ok(Kind::File));
        assert!("request".parse::<Direction>().is_err());
    }

    #[test]
    fn status_table_is_complete_and_unique() {
        let codes: Vec<u16> = Status::ALL.iter().map(|s| s.code()).collect();
        assert_eq!(
            codes,
            [
                200, 333, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410
            ]
        );
        for s in Status::ALL {
            assert_eq!(Status::from_code(u64::from(s.code())), Some(*s));
        }
        assert_eq!(Status::from_code(999), None);
    }

    #[test]
    fn head_checks_follow_reference_order() {
        let earth = RequestHead::parse(&msg(json!({"direction": "EARTH"}))).expect_err("earth");
        assert_eq!(
            (earth.status, earth.operation.as_str()),
            (Status::Earth, "3BODY")
        );
        let missing = RequestHead::parse(&msg(json!({}))).expect_err("missing");
        assert_eq!(missing.status, Status::CompulsoryFieldMissing);
        assert!(missing.status_msg.contains("operation"));
        let missing_type = RequestHead::parse(&msg(json!({"operation": "X", "direction": "Y"})))
            .expect_err("type");
        assert!(missing_type.status_msg.contains("type"));
        let dir = RequestHead::parse(&msg(
            json!({"operation": "X", "direction": "Y", "type": "Z"}),
        ))
        .expect_err("dir");
        assert_eq!(dir.status, Status::WrongDirection);
        let op = RequestHead::parse(&msg(
            json!({"operation": "X", "direction": "REQUEST", "type": "Z"}),
        ))
        .expect_err("op");
        assert_eq!(op.status, Status::WrongOperation);
        let ty = RequestHead::parse(&msg(
            json!({"operation": "GET", "direction": "REQUEST", "type": "Z"}),
        ))
        .expect_err("type");
        assert_eq!(
            (ty.status, ty.kind.as_str()),
            (Status::TypeNotAllowed, "ERROR")
        );
        let ok = RequestHead::parse(&msg(
            json!({"operation": "GET", "direction": "REQUEST", "type": "FILE"}),
        ))
        .expect("ok");
        assert_eq!(
            ok,
            RequestHead {
                operation: Operation::Get,
                kind: Kind::File
            }
        );
        // LIST is an operation only with type FILE; otherwise it is refused
        // exactly as any unknown operation.
        for ty in ["DATA", "AUTH", "Z"] {
            let list = RequestHead::parse(&msg(
                json!({"operation": "LIST", "direction": "REQUEST", "type": ty}),
            ))
            .expect_err("not a FILE LIST");
            assert_eq!(
                (
                    list.status,
                    list.operation.as_str(),
                    list.status_msg.as_str()
                ),
                (
                    Status::WrongOperation,
                    "ERROR",
                    "Operation LIST is not allowed"
                )
            );
        }
        let list = RequestHead::parse(&msg(
            json!({"operation": "LIST", "direction": "REQUEST", "type": "FILE"}),
        ))
        .expect("FILE LIST");
        assert_eq!(list.operation, Operation::List);
        // Non-string values are compared by their JSON text, never panicked on.
        let num = RequestHead::parse(&msg(
            json!({"operation": 5, "direction": "REQUEST", "type": []}),
        ))
        .expect_err("num");
        assert_eq!(num.status, Status::WrongOperation);
    }

    #[test]
    fn typed_fields_refuse_wrong_types() {
        let m = msg(json!({"size": "12", "block_index": 1.5, "key": 7, "n": 3, "big": u64::MAX}));
        assert!(m.int_field("size").is_err());
        assert!(m.int_field("block_index").is_err());
        assert!(m.str_field("key").is_err());
        assert_eq!(m.int_field("n"), Ok(Some(3)));
        assert_eq!(m.int_field("big"), Ok(Some(i64::MAX)));
        assert_eq!(m.int_field("absent"), Ok(None));
    }

    #[test]
    fn unknown_fields_survive() {
        let m = msg(json!({"operation": "SAVE", "nested": {"a": [1, null]}, "x": "y"}));
        let frame = Frame {
            json: Bytes::from(crate::json::to_ascii_vec(&m.fields).expect("ser")),
            binary: Bytes::new(),
        };
        assert_eq!(Message::from_frame(frame).expect("parse"), m);
    }

    #[test]
    fn non_object_json_is_refused() {
        for text in [&b"[1,2]"[..], b"3", b"\"s\"", b"{", b"\xff\xfe"] {
            let frame = Frame {
                json: Bytes::copy_from_slice(text),
                binary: Bytes::new(),
            };
            assert!(Message::from_frame(frame).is_err());
        }
    }
}
