//! The server's one error type, and its one mapping to the refusal table
//! ([`Problem`]: STEP status and reason);
//! the storage layer's errors become it in one place too
//! ([`StepError::from_store`]).

use step_core::{Problem, Reason, Status};

use crate::store::StoreError;

/// Everything a request can fail with once it has passed authentication.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("Field \"{0}\" is missing.")]
    Missing(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("The \"key\" {0} is existing.")]
    KeyExists(String),
    #[error("The key {0} is not existing.")]
    NotFound(String),
    #[error("The key {0} is not completely uploaded.")]
    Unfinished(String),
    /// FILE GET `upload_status` of a key with no unfinished upload.
    #[error("The key {0} has no unfinished upload.")]
    NoUpload(String),
    #[error("The \"key\" {0} is not accepted for uploading.")]
    NotPlanned(String),
    #[error("The \"key\" {0} is completely uploaded.")]
    AlreadyComplete(String),
    #[error("The upload of \"key\" {0} was started over by another SAVE; SAVE again.")]
    Superseded(String),
    #[error("This file \"size\" has to be included")]
    SizeMissing,
    #[error("Invalid \"size\": {0}")]
    SizeInvalid(String),
    /// A SAVE size above the server's `max_file_size`: the reference's 402,
    /// with a reason, so a client can tell "too large" from "key exists".
    #[error("Invalid \"size\": {0}")]
    TooLarge(String),
    #[error("The \"block_index\" exceed the max index.")]
    IndexTooLarge,
    #[error("The \"block_index\" should >= 0.")]
    IndexNegative,
    #[error("The \"block_size\" is wrong: expected {expected} bytes, got {got}.")]
    BlockSize { expected: u64, got: u64 },
    #[error("{0}")]
    OperationNotAllowed(String),
    #[error("{0}")]
    TypeNotAllowed(String),
    #[error("The server is out of storage space.")]
    NoSpace,
    /// Stored bytes failed their at-rest checksum: the block is not served.
    #[error("The stored block of \"key\" {0} failed its integrity check; it is not served.")]
    Integrity(String),
    /// The upload's bytes do not have the md5 its writer sent (UPLOAD
    /// `md5`): not completed, discarded; the key keeps what it held.
    #[error(
        "The upload of \"key\" {0} does not have the md5 it was sent with; it is discarded and the key keeps what it held."
    )]
    Md5Mismatch(String),
    /// A per-user cap on unfinished uploads was reached.
    #[error("{0}")]
    Quota(String),
    /// A DELETE scoped to an upload found something else under the key.
    #[error("The \"key\" {0} holds another upload's file or upload; nothing was deleted.")]
    OtherUpload(String),
    /// An `if_md5` condition (SAVE with `replace`, DELETE) does not hold.
    #[error(
        "The file under \"key\" {0} does not have the md5 the request names; nothing was changed."
    )]
    Precondition(String),
    /// A DOWNLOAD names a version (`upload_id`) that was replaced and is
    /// no longer kept.
    #[error(
        "The version of \"key\" {0} being read was replaced and is no longer kept; GET it again."
    )]
    Replaced(String),
    /// The storage cannot be reached just now (an object store's 5xx or
    /// timeout); the request may succeed later.
    #[error("Storage is unavailable; the request was not carried out, try again later.")]
    Unavailable(String),
    #[error("Storage error; the request was not carried out.")]
    Storage(#[source] StoreError),
}

impl StepError {
    /// The one place where storage failures become request failures;
    /// `key` is the key the request named (for the message).
    pub fn from_store(e: StoreError, key: &str) -> StepError {
        let key = || key.to_owned();
        match e {
            StoreError::NotFound => StepError::NotFound(key()),
            StoreError::Exists => StepError::KeyExists(key()),
            StoreError::Unfinished => StepError::Unfinished(key()),
            StoreError::NotPlanned => StepError::NotPlanned(key()),
            StoreError::AlreadyComplete => StepError::AlreadyComplete(key()),
            StoreError::Superseded => StepError::Superseded(key()),
            StoreError::OtherUpload => StepError::OtherUpload(key()),
            StoreError::Integrity { .. } => StepError::Integrity(key()),
            StoreError::Quota(text) => StepError::Quota(text),
            StoreError::Precondition => StepError::Precondition(key()),
            StoreError::Md5Mismatch => StepError::Md5Mismatch(key()),
            StoreError::Replaced => StepError::Replaced(key()),
            StoreError::NoSpace => StepError::NoSpace,
            StoreError::Unavailable(text) => StepError::Unavailable(text),
            e @ StoreError::Other(_) => StepError::Storage(e),
        }
    }

    /// The row of the refusal table a failure is answered with: the one
    /// place where failures become STEP status codes and reasons.
    pub fn problem(&self) -> Problem {
        match self {
            StepError::Missing(_) | StepError::Invalid(_) | StepError::IndexNegative => {
                Problem::FieldMissing
            }
            StepError::KeyExists(_) | StepError::SizeMissing | StepError::SizeInvalid(_) => {
                Problem::KeyExists
            }
            StepError::TooLarge(_) => Problem::TooLarge,
            StepError::NotFound(_) | StepError::Unfinished(_) | StepError::NoUpload(_) => {
                Problem::NotFound
            }
            StepError::OtherUpload(_) => Problem::OtherUpload,
            StepError::Replaced(_) => Problem::Replaced,
            // Reference clients never send the conditions; the row's status
            // is "operation not allowed", the reason says which.
            StepError::Precondition(_) => Problem::Precondition,
            StepError::Superseded(_) => Problem::Superseded,
            StepError::NotPlanned(_)
            | StepError::AlreadyComplete(_)
            | StepError::OperationNotAllowed(_) => Problem::WrongOperation,
            StepError::IndexTooLarge => Problem::IndexTooLarge,
            StepError::TypeNotAllowed(_) => Problem::TypeNotAllowed,
            StepError::BlockSize { .. } => Problem::BlockSizeMismatch,
            StepError::NoSpace => Problem::NoSpace,
            StepError::Unavailable(_) => Problem::Unavailable,
            StepError::Integrity(_) => Problem::Integrity,
            StepError::Quota(_) => Problem::Quota,
            StepError::Md5Mismatch(_) => Problem::Md5Mismatch,
            // STEP has no server-error code; 406 ("block cannot be taken")
            // is the closest a reference client understands as "this
            // upload failed".
            StepError::Storage(_) => Problem::BlockSizeMismatch,
        }
    }

    /// The STEP status of [`StepError::problem`].
    pub fn status(&self) -> Status {
        self.problem().step_status()
    }

    /// The `reason` extension sent with the status: what the status alone
    /// cannot say. Reference clients ignore it.
    pub fn reason(&self) -> Option<Reason> {
        self.problem().reason()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_reason_has_its_error_and_status() {
        let k = || "k".to_owned();
        let cases = [
            (
                StepError::NoSpace,
                Status::BlockSizeMismatch,
                Reason::NoSpace,
            ),
            (
                StepError::TooLarge(k()),
                Status::KeyExists,
                Reason::TooLarge,
            ),
            (
                StepError::Superseded(k()),
                Status::WrongOperation,
                Reason::Superseded,
            ),
            (
                StepError::Integrity(k()),
                Status::BlockSizeMismatch,
                Reason::Integrity,
            ),
            (
                StepError::Quota(k()),
                Status::BlockSizeMismatch,
                Reason::Quota,
            ),
            (
                StepError::OtherUpload(k()),
                Status::NotFound,
                Reason::OtherUpload,
            ),
            (
                StepError::Precondition(k()),
                Status::WrongOperation,
                Reason::Precondition,
            ),
            (StepError::Replaced(k()), Status::NotFound, Reason::Replaced),
            (
                StepError::Unavailable("down".into()),
                Status::BlockSizeMismatch,
                Reason::Unavailable,
            ),
        ];
        for (e, status, reason) in cases {
            assert_eq!(e.status(), status, "{e}");
            assert_eq!(e.reason(), Some(reason), "{e}");
        }
        for e in [
            StepError::NotFound(k()),
            StepError::KeyExists(k()),
            StepError::SizeInvalid(k()),
            StepError::Storage(StoreError::Other("x".into())),
        ] {
            assert_eq!(e.reason(), None, "{e}");
        }
        let enospc = StoreError::from(std::io::Error::from_raw_os_error(28));
        assert_eq!(
            StepError::from_store(enospc, "k").reason(),
            Some(Reason::NoSpace)
        );
    }

    #[test]
    fn every_store_error_maps_to_its_status_and_names_the_key() {
        let cases = [
            (StoreError::NotFound, Status::NotFound, None),
            (StoreError::Exists, Status::KeyExists, None),
            (StoreError::Unfinished, Status::NotFound, None),
            (StoreError::NotPlanned, Status::WrongOperation, None),
            (StoreError::AlreadyComplete, Status::WrongOperation, None),
            (
                StoreError::Superseded,
                Status::WrongOperation,
                Some(Reason::Superseded),
            ),
            (
                StoreError::OtherUpload,
                Status::NotFound,
                Some(Reason::OtherUpload),
            ),
            (
                StoreError::Integrity { offset: 7 },
                Status::BlockSizeMismatch,
                Some(Reason::Integrity),
            ),
            (
                StoreError::Quota("cap".into()),
                Status::BlockSizeMismatch,
                Some(Reason::Quota),
            ),
            (
                StoreError::NoSpace,
                Status::BlockSizeMismatch,
                Some(Reason::NoSpace),
            ),
            (
                StoreError::Precondition,
                Status::WrongOperation,
                Some(Reason::Precondition),
            ),
            (
                StoreError::Replaced,
                Status::NotFound,
                Some(Reason::Replaced),
            ),
            (
                StoreError::Unavailable("down".into()),
                Status::BlockSizeMismatch,
                Some(Reason::Unavailable),
            ),
            (
                StoreError::Other("x".into()),
                Status::BlockSizeMismatch,
                None,
            ),
        ];
        for (store, status, reason) in cases {
            let named = matches!(
                store,
                StoreError::NotFound
                    | StoreError::Exists
                    | StoreError::Unfinished
                    | StoreError::NotPlanned
                    | StoreError::AlreadyComplete
                    | StoreError::Superseded
                    | StoreError::OtherUpload
                    | StoreError::Integrity { .. }
                    | StoreError::Precondition
                    | StoreError::Replaced
            );
            let e = StepError::from_store(store, "the-key");
            assert_eq!(e.status(), status, "{e}");
            assert_eq!(e.reason(), reason, "{e}");
            if named {
                assert!(e.to_string().contains("the-key"), "{e}");
            }
        }
    }
}
