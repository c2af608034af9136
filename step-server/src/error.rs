//! The server's one error type, and its one mapping to STEP status codes.

use step_core::{Reason, Status};

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
    /// A per-user cap on unfinished uploads was reached.
    #[error("{0}")]
    Quota(String),
    /// A DELETE scoped to an upload found something else under the key.
    #[error("The \"key\" {0} holds another upload's file or upload; nothing was deleted.")]
    OtherUpload(String),
    #[error("Storage error; the request was not carried out.")]
    Io(#[source] std::io::Error),
}

impl From<std::io::Error> for StepError {
    fn from(e: std::io::Error) -> Self {
        // ENOSPC / EDQUOT: say so plainly, the client can do something about it.
        match e.raw_os_error() {
            Some(28) | Some(122) => StepError::NoSpace,
            _ => StepError::Io(e),
        }
    }
}

impl StepError {
    /// The one place where failures become STEP status codes.
    pub fn status(&self) -> Status {
        match self {
            StepError::Missing(_) | StepError::Invalid(_) | StepError::IndexNegative => {
                Status::FieldMissing
            }
            StepError::KeyExists(_)
            | StepError::SizeMissing
            | StepError::SizeInvalid(_)
            | StepError::TooLarge(_) => Status::KeyExists,
            StepError::NotFound(_) | StepError::Unfinished(_) | StepError::OtherUpload(_) => {
                Status::NotFound
            }
            StepError::NotPlanned(_) | StepError::AlreadyComplete(_) | StepError::Superseded(_) => {
                Status::WrongOperation
            }
            StepError::IndexTooLarge => Status::IndexTooLarge,
            StepError::OperationNotAllowed(_) => Status::WrongOperation,
            StepError::TypeNotAllowed(_) => Status::TypeNotAllowed,
            StepError::BlockSize { .. } => Status::BlockSizeMismatch,
            // STEP has no server-error code; 406 ("block cannot be taken") is
            // the closest a reference client understands as "this upload failed".
            // Integrity and quota likewise: the block or the upload cannot be
            // taken, which a reference client treats as a failed transfer.
            StepError::NoSpace
            | StepError::Io(_)
            | StepError::Integrity(_)
            | StepError::Quota(_) => Status::BlockSizeMismatch,
        }
    }

    /// The `reason` extension sent with [`StepError::status`]: what the
    /// status alone cannot say. Reference clients ignore it.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            StepError::NoSpace => Some(Reason::NoSpace),
            StepError::TooLarge(_) => Some(Reason::TooLarge),
            StepError::Superseded(_) => Some(Reason::Superseded),
            StepError::Integrity(_) => Some(Reason::Integrity),
            StepError::Quota(_) => Some(Reason::Quota),
            StepError::OtherUpload(_) => Some(Reason::OtherUpload),
            _ => None,
        }
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
        ];
        for (e, status, reason) in cases {
            assert_eq!(e.status(), status, "{e}");
            assert_eq!(e.reason(), Some(reason), "{e}");
        }
        for e in [
            StepError::NotFound(k()),
            StepError::KeyExists(k()),
            StepError::SizeInvalid(k()),
            StepError::Io(std::io::Error::other("x")),
        ] {
            assert_eq!(e.reason(), None, "{e}");
        }
        let enospc = StepError::from(std::io::Error::from_raw_os_error(28));
        assert_eq!(enospc.reason(), Some(Reason::NoSpace));
    }
}
