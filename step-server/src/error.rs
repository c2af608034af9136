//! The server's one error type, and its one mapping to STEP status codes.

use step_core::Status;

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
            StepError::KeyExists(_) | StepError::SizeMissing | StepError::SizeInvalid(_) => {
                Status::KeyExists
            }
            StepError::NotFound(_) | StepError::Unfinished(_) => Status::NotFound,
            StepError::NotPlanned(_) | StepError::AlreadyComplete(_) | StepError::Superseded(_) => {
                Status::WrongOperation
            }
            StepError::IndexTooLarge => Status::IndexTooLarge,
            StepError::OperationNotAllowed(_) => Status::WrongOperation,
            StepError::TypeNotAllowed(_) => Status::TypeNotAllowed,
            StepError::BlockSize { .. } => Status::BlockSizeMismatch,
            // STEP has no server-error code; 406 ("block cannot be taken") is
            // the closest a reference client understands as "this upload failed".
            StepError::NoSpace | StepError::Io(_) => Status::BlockSizeMismatch,
        }
    }
}
