//! Requests parsed once, at the edge: a message that passed the envelope
//! checks becomes a [`Request`] with typed, validated fields, and the
//! service dispatches on it without asking the message for anything again.
//!
//! The refusals are exactly the ones the handlers gave when they read the
//! fields themselves, in the same order. Where the reference looks at the
//! store before it checks a field (UPLOAD's and DOWNLOAD's `block_index`),
//! the field is kept as a [`Later`] result that the handler takes after
//! its store call, so a request with two faults is refused for the one the
//! reference names.

use bytes::Bytes;
use serde_json::{Map, Value};
use step_core::message::field;
use step_core::{DEFAULT_BLOCK_SIZE, Kind, Message, Operation};

use crate::error::StepError;
use crate::limits::{LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT, Limits};
use crate::store::Replace;

/// A field whose refusal comes only after the handler's store call.
pub type Later<T> = Result<T, StepError>;

/// A STEP request, typed.
#[derive(Debug)]
pub enum Request {
    DataSave {
        key: String,
        /// The record: every field but the envelope, with `key`.
        record: Map<String, Value>,
    },
    DataGet {
        key: String,
    },
    DataDelete {
        key: String,
    },
    FileSave {
        key: String,
        size: u64,
        block_size: u64,
        resume: bool,
        /// The upload a resuming SAVE names: only that one is resumed (a
        /// value that is not a string names none).
        upload_id: Option<String>,
        /// The `replace` extension, when served and asked for.
        replace: Option<Replace>,
    },
    FileUpload {
        key: String,
        block_index: Later<i64>,
        upload_id: Later<Option<String>>,
        /// The whole file's md5 as its writer computed it (extension): the
        /// upload completes only if its bytes have it.
        md5: Later<Option<String>>,
        /// The block; filled in when the binary part has been read.
        body: Bytes,
    },
    FileGet {
        key: String,
        upload_status: bool,
        block_size: u64,
    },
    FileDownload {
        key: String,
        /// The version the download began with (extension).
        upload_id: Option<String>,
        block_index: Later<i64>,
        block_size: u64,
    },
    FileDelete {
        key: String,
        /// Delete only this upload (extension).
        upload_id: Option<String>,
        if_md5: Option<String>,
    },
    FileList {
        prefix: String,
        after: Option<String>,
        limit: usize,
    },
}

impl Request {
    /// The typed request of `msg` (`op` and `kind` from its envelope), or
    /// the refusal the service answers with.
    pub fn parse(
        op: Operation,
        kind: Kind,
        msg: Message,
        limits: &Limits,
    ) -> Result<Request, StepError> {
        let f = Fields { msg: &msg, limits };
        match (kind, op) {
            (Kind::Data, Operation::Save) => {
                let key = f.key_or_new()?;
                let mut record = msg.fields;
                for name in field::ENVELOPE {
                    record.remove(name);
                }
                record.insert(field::KEY.into(), Value::String(key.clone()));
                Ok(Request::DataSave { key, record })
            }
            (Kind::Data, Operation::Get) => Ok(Request::DataGet {
                key: f.key("DATA GET")?,
            }),
            (Kind::Data, Operation::Delete) => Ok(Request::DataDelete {
                key: f.key("DATA delete")?,
            }),
            (Kind::Data, _) => Err(StepError::OperationNotAllowed(format!(
                "Operation {op} is not allowed for DATA."
            ))),
            (Kind::File, Operation::Save) => f.file_save(),
            (Kind::File, Operation::Upload) => Ok(Request::FileUpload {
                key: f.key("FILE uploading")?,
                block_index: f.block_index(),
                upload_id: f.text(field::UPLOAD_ID),
                md5: f.md5(field::MD5),
                body: msg.binary.clone(),
            }),
            (Kind::File, Operation::Get) => Ok(Request::FileGet {
                key: f.key("FILE GET")?,
                upload_status: msg.bool_field(field::UPLOAD_STATUS),
                block_size: f.block_size(),
            }),
            (Kind::File, Operation::Download) => Ok(Request::FileDownload {
                key: f.key("FILE downloading")?,
                upload_id: f.text(field::UPLOAD_ID)?,
                block_index: f.block_index(),
                block_size: f.block_size(),
            }),
            (Kind::File, Operation::Delete) => Ok(Request::FileDelete {
                key: f.key("FILE delete")?,
                upload_id: f.text(field::UPLOAD_ID)?,
                if_md5: match limits.extensions.replace {
                    true => f.md5(field::IF_MD5)?,
                    false => None,
                },
            }),
            (Kind::File, Operation::List) => f.file_list(),
            (Kind::File, _) => Err(StepError::OperationNotAllowed(format!(
                "Operation {op} is not allowed for FILE."
            ))),
            (Kind::Auth, _) => Err(StepError::TypeNotAllowed(format!(
                "Type AUTH is not allowed for {op}."
            ))),
        }
    }

    /// Whether answering needs the request's binary part: only FILE UPLOAD
    /// stores one; every other request's binary part is skipped unread.
    pub fn wants_body(&self) -> bool {
        matches!(self, Request::FileUpload { .. })
    }

    /// The request with its binary part (a FILE UPLOAD's block).
    pub fn with_body(mut self, binary: Bytes) -> Self {
        if let Request::FileUpload { body, .. } = &mut self {
            *body = binary;
        }
        self
    }
}

/// A message's fields read under the server's limits.
struct Fields<'a> {
    msg: &'a Message,
    limits: &'a Limits,
}

impl Fields<'_> {
    fn key(&self, what: &str) -> Result<String, StepError> {
        match self.msg.str_field(field::KEY) {
            Ok(Some(k)) => self.check_key(k),
            Ok(None) => Err(StepError::Invalid(format!(
                "Field \"key\" is missing for {what}."
            ))),
            Err(e) => Err(StepError::Invalid(e.to_string())),
        }
    }

    /// The given key, or a fresh uuid4 when there is none.
    fn key_or_new(&self) -> Result<String, StepError> {
        match self.msg.str_field(field::KEY) {
            Ok(Some(k)) => self.check_key(k),
            Ok(None) => Ok(uuid::Uuid::new_v4().to_string()),
            Err(e) => Err(StepError::Invalid(e.to_string())),
        }
    }

    fn check_key(&self, key: &str) -> Result<String, StepError> {
        if key.is_empty() || key.len() > self.limits.max_key_len {
            return Err(StepError::Invalid(format!(
                "\"key\" must be a non-empty string of at most {} bytes",
                self.limits.max_key_len
            )));
        }
        Ok(key.to_owned())
    }

    /// An optional string field.
    fn text(&self, name: &'static str) -> Result<Option<String>, StepError> {
        match self.msg.str_field(name) {
            Ok(t) => Ok(t.map(str::to_owned)),
            Err(e) => Err(StepError::Invalid(e.to_string())),
        }
    }

    fn block_index(&self) -> Result<i64, StepError> {
        match self.msg.int_field(field::BLOCK_INDEX) {
            Ok(Some(i)) => Ok(i),
            Ok(None) => Err(StepError::Invalid(
                "The \"block_index\" is compulsory.".into(),
            )),
            Err(e) => Err(StepError::Invalid(e.to_string())),
        }
    }

    /// The block size a request proposes (extension), or the default.
    fn block_size(&self) -> u64 {
        match self.msg.int_field(field::BLOCK_SIZE) {
            Ok(Some(bs))
                if bs >= DEFAULT_BLOCK_SIZE as i64 && bs as u64 <= self.limits.max_block_size =>
            {
                bs as u64
            }
            _ => DEFAULT_BLOCK_SIZE,
        }
    }

    /// An md5 field (`if_md5`, UPLOAD's `md5`), lower case.
    fn md5(&self, name: &'static str) -> Result<Option<String>, StepError> {
        match self.msg.str_field(name) {
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

    fn file_save(&self) -> Result<Request, StepError> {
        let key = self.key_or_new()?;
        let max = self.limits.max_file_size;
        let size = match self.msg.int_field(field::SIZE) {
            Ok(None) => return Err(StepError::SizeMissing),
            Err(e) => return Err(StepError::SizeInvalid(e.to_string())),
            Ok(Some(s)) if s < 0 => {
                return Err(StepError::SizeInvalid("it must not be negative".into()));
            }
            Ok(Some(s)) if s as u64 > max => {
                return Err(StepError::TooLarge(format!(
                    "{s} bytes exceeds this server's limit of {max}"
                )));
            }
            Ok(Some(s)) => s as u64,
        };
        // The extension's fields are ignored, as the reference would,
        // when this server does not serve it.
        let replace = if self.limits.extensions.replace && self.msg.bool_field(field::REPLACE) {
            Some(Replace {
                if_md5: self.md5(field::IF_MD5)?,
            })
        } else {
            None
        };
        let resume = self.msg.bool_field(field::RESUME);
        // A resume's upload id is the writer's proof the upload is its own;
        // one that is not a string proves nothing, as none.
        let upload_id = match resume {
            true => self.msg.str_field(field::UPLOAD_ID).ok().flatten(),
            false => None,
        };
        Ok(Request::FileSave {
            key,
            size,
            block_size: self.block_size(),
            resume,
            upload_id: upload_id.map(str::to_owned),
            replace,
        })
    }

    /// FILE LIST's page: `prefix`, `after` (each at most a key long) and
    /// `limit`.
    fn file_list(&self) -> Result<Request, StepError> {
        let max = self.limits.max_key_len;
        let text = |name: &'static str| match self.msg.str_field(name) {
            Ok(Some(t)) if t.len() > max => Err(StepError::Invalid(format!(
                "\"{name}\" must be at most {max} bytes"
            ))),
            Ok(t) => Ok(t.map(str::to_owned)),
            Err(e) => Err(StepError::Invalid(e.to_string())),
        };
        let prefix = text(field::PREFIX)?.unwrap_or_default();
        let after = text(field::AFTER)?;
        let limit = match self.msg.int_field(field::LIMIT) {
            Ok(None) => LIST_DEFAULT_LIMIT,
            Ok(Some(n)) if (1..=LIST_MAX_LIMIT).contains(&n) => n,
            Ok(Some(n)) => {
                return Err(StepError::Invalid(format!(
                    "\"limit\" must be from 1 to {LIST_MAX_LIMIT}, not {n}"
                )));
            }
            Err(e) => return Err(StepError::Invalid(e.to_string())),
        };
        Ok(Request::FileList {
            prefix,
            after,
            limit: limit as usize,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn parse(op: Operation, kind: Kind, fields: Value) -> Result<Request, StepError> {
        let Value::Object(fields) = fields else {
            panic!("an object")
        };
        Request::parse(op, kind, Message::new(fields), &Limits::default())
    }

    #[test]
    fn fields_are_typed_once_with_the_refusals_the_handlers_gave() {
        let save = parse(
            Operation::Save,
            Kind::File,
            json!({"key": "k", "size": 5, "block_size": 1, "replace": true}),
        );
        let Ok(Request::FileSave {
            key,
            size,
            block_size,
            resume,
            upload_id,
            replace,
        }) = save
        else {
            panic!("a SAVE: {save:?}")
        };
        assert_eq!(upload_id, None);
        assert_eq!(
            (key.as_str(), size, block_size),
            ("k", 5, DEFAULT_BLOCK_SIZE)
        );
        assert!(!resume);
        assert_eq!(replace.map(|r| r.if_md5), Some(None));
        // The key is checked before the size, the size before `if_md5`.
        let e = parse(Operation::Save, Kind::File, json!({"key": 7, "size": "x"}));
        assert!(matches!(e, Err(StepError::Invalid(_))), "{e:?}");
        let e = parse(Operation::Save, Kind::File, json!({"size": -1}));
        assert!(matches!(e, Err(StepError::SizeInvalid(_))), "{e:?}");
        let e = parse(
            Operation::Save,
            Kind::File,
            json!({"size": 1, "replace": true, "if_md5": "x"}),
        );
        assert!(matches!(e, Err(StepError::Invalid(_))), "{e:?}");
        // Only a resume names the upload it continues; a value that is not
        // a string names none, as the handler took it.
        let named = |fields| match parse(Operation::Save, Kind::File, fields) {
            Ok(Request::FileSave { upload_id, .. }) => upload_id,
            other => panic!("a SAVE: {other:?}"),
        };
        assert_eq!(
            named(json!({"size": 1, "resume": true, "upload_id": "u1"})),
            Some("u1".into())
        );
        assert_eq!(named(json!({"size": 1, "upload_id": "u1"})), None);
        assert_eq!(
            named(json!({"size": 1, "resume": true, "upload_id": 7})),
            None
        );
        let e = parse(Operation::Get, Kind::Data, json!({}));
        assert_eq!(
            e.map(|_| ()).map_err(|e| e.to_string()),
            Err("Field \"key\" is missing for DATA GET.".into())
        );
        let e = parse(Operation::Bye, Kind::Auth, json!({}));
        assert!(matches!(e, Err(StepError::TypeNotAllowed(_))), "{e:?}");
    }

    #[test]
    fn what_the_reference_checks_after_the_store_waits_for_the_handler() {
        let up = parse(
            Operation::Upload,
            Kind::File,
            json!({"key": "k", "block_index": "one", "upload_id": 3, "md5": "x"}),
        );
        let Ok(Request::FileUpload {
            block_index,
            upload_id,
            md5,
            ..
        }) = up
        else {
            panic!("an UPLOAD: {up:?}")
        };
        assert!(block_index.is_err() && upload_id.is_err());
        assert_eq!(
            md5.map_err(|e| e.to_string()),
            Err("\"md5\" must be 32 hexadecimal digits".into())
        );
        assert!(up_wants_body(Operation::Upload, Kind::File));
        assert!(!up_wants_body(Operation::Get, Kind::File));
    }

    fn up_wants_body(op: Operation, kind: Kind) -> bool {
        parse(op, kind, json!({"key": "k"})).is_ok_and(|r| r.wants_body())
    }
}
