//! The STEP status codes: the one list of what a response's `status` can be.

use std::fmt;

/// Every STEP status code, in one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Ok,
    Earth,
    CompulsoryFieldMissing,
    WrongPassword,
    KeyExists,
    BadToken,
    NotFound,
    IndexTooLarge,
    BlockSizeMismatch,
    WrongDirection,
    WrongOperation,
    TypeNotAllowed,
    FieldMissing,
}

impl Status {
    pub const ALL: &'static [Status] = &[
        Status::Ok,
        Status::Earth,
        Status::CompulsoryFieldMissing,
        Status::WrongPassword,
        Status::KeyExists,
        Status::BadToken,
        Status::NotFound,
        Status::IndexTooLarge,
        Status::BlockSizeMismatch,
        Status::WrongDirection,
        Status::WrongOperation,
        Status::TypeNotAllowed,
        Status::FieldMissing,
    ];

    pub fn code(self) -> u16 {
        match self {
            Status::Ok => 200,
            Status::Earth => 333,
            Status::CompulsoryFieldMissing => 400,
            Status::WrongPassword => 401,
            Status::KeyExists => 402,
            Status::BadToken => 403,
            Status::NotFound => 404,
            Status::IndexTooLarge => 405,
            Status::BlockSizeMismatch => 406,
            Status::WrongDirection => 407,
            Status::WrongOperation => 408,
            Status::TypeNotAllowed => 409,
            Status::FieldMissing => 410,
        }
    }

    /// What the code means, as STEP defines it.
    pub fn meaning(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Earth => "the EARTH easter egg",
            Status::CompulsoryFieldMissing => "compulsory field missing",
            Status::WrongPassword => "wrong password",
            Status::KeyExists => "key exists",
            Status::BadToken => "no token or bad token",
            Status::NotFound => "key not found",
            Status::IndexTooLarge => "block_index beyond the last block",
            Status::BlockSizeMismatch => "block length does not match the plan",
            Status::WrongDirection => "wrong direction",
            Status::WrongOperation => "operation not allowed",
            Status::TypeNotAllowed => "type not allowed",
            Status::FieldMissing => "field missing or invalid",
        }
    }

    pub fn from_code(code: u64) -> Option<Status> {
        Status::ALL
            .iter()
            .copied()
            .find(|s| u64::from(s.code()) == code)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.meaning())
    }
}
