//! Every refusal, in one table.
//!
//! A row is one way a request can be refused: the STEP status it is
//! answered with (the reference's code, which course clients print), our
//! `reason` extension when the status alone cannot say it, and what the
//! HTTP gateway makes of it — its status, its stable `error` code and the
//! words a person reads: what happened and what to do. The STEP service
//! refuses through a row, the gateway answers through the row a STEP
//! refusal names, and the command-line client reads refusals by row; so a
//! new reason is one new row here, and nothing else has to learn it.
//!
//! Two kinds of rows: the reference's own refusals, one per status code
//! and without a reason, and our reasons, each sent with the reference
//! status a reference client treats most nearly right. Several rows may
//! share an HTTP `error` code (the reference's 400, 409 and 410 are all
//! `bad_request`), but a code always means one HTTP status.

use std::fmt;
use std::str::FromStr;

use crate::status::Status;

macro_rules! refusal_table {
    (
        reference { $(
            $(#[$rm:meta])*
            $rv:ident : $rstatus:ident => $rhttp:literal $rcode:literal $rwords:literal;
        )+ }
        reasons { $(
            $(#[$m:meta])*
            $v:ident : $status:ident $reason:literal => $http:literal $code:literal $words:literal;
        )+ }
    ) => {
        /// The `reason` extension of an error response: what the
        /// reference's status codes cannot say, so a client (the gateway)
        /// can answer precisely. Reference peers ignore the field.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason { $($(#[$m])* $v),+ }

        /// One way a request is refused: a row of the table.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Problem {
            $($(#[$rm])* $rv,)+
            $($(#[$m])* $v,)+
        }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$v),+];

            /// The `reason` field's value.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$v => $reason),+ }
            }
        }

        impl FromStr for Reason {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($reason => Ok(Reason::$v),)+ _ => Err(()) }
            }
        }

        impl From<Reason> for Problem {
            fn from(r: Reason) -> Problem {
                match r { $(Reason::$v => Problem::$v),+ }
            }
        }

        impl Problem {
            pub const ALL: &'static [Problem] = &[$(Problem::$rv,)+ $(Problem::$v,)+];

            /// The STEP status a request refused this way is answered with.
            pub fn step_status(self) -> Status {
                match self {
                    $(Problem::$rv => Status::$rstatus,)+
                    $(Problem::$v => Status::$status,)+
                }
            }

            /// The `reason` sent with the status, if the row has one.
            pub fn reason(self) -> Option<Reason> {
                match self {
                    $(Problem::$rv => None,)+
                    $(Problem::$v => Some(Reason::$v),)+
                }
            }

            /// The HTTP status the gateway answers with.
            pub fn http_status(self) -> u16 {
                match self {
                    $(Problem::$rv => $rhttp,)+
                    $(Problem::$v => $http,)+
                }
            }

            /// The gateway's stable machine-readable `error` code.
            pub fn code(self) -> &'static str {
                match self {
                    $(Problem::$rv => $rcode,)+
                    $(Problem::$v => $code,)+
                }
            }

            /// What a person reads over HTTP: what happened, what to do.
            pub fn words(self) -> &'static str {
                match self {
                    $(Problem::$rv => $rwords,)+
                    $(Problem::$v => $words,)+
                }
            }
        }
    };
}

refusal_table! {
    reference {
        Earth: Earth => 502 "backend_refused"
            "The STEP server answered with its EARTH message instead of serving the request. \
             Try again; if it keeps happening, tell whoever runs the server.";
        CompulsoryFieldMissing: CompulsoryFieldMissing => 400 "bad_request"
            "The request lacks something the STEP server requires. Check it against the API \
             documentation and send it again.";
        WrongPassword: WrongPassword => 401 "wrong_password"
            "Wrong user name or password. Check both and sign in again.";
        KeyExists: KeyExists => 409 "key_exists"
            "Something is already stored under this name. Choose another name, or replace it: \
             for a file send overwrite=true (or rename=true to keep both).";
        BadToken: BadToken => 401 "bad_token"
            "Your sign-in is missing, has expired or is no longer valid. Sign in again \
             (POST /login, or HTTP Basic) and retry.";
        NotFound: NotFound => 404 "not_found"
            "Nothing is stored under this name (or its upload never finished). Check the name; \
             GET /files lists your files.";
        IndexTooLarge: IndexTooLarge => 502 "backend_refused"
            "The STEP server refused a block the gateway sent it; nothing of the request was \
             kept. Try again; if it keeps happening, tell whoever runs the server.";
        BlockSizeMismatch: BlockSizeMismatch => 502 "backend_refused"
            "The STEP server could not take what the gateway sent it; nothing of the request was \
             kept. Try again; if it keeps happening, tell whoever runs the server.";
        WrongDirection: WrongDirection => 409 "conflict"
            "The STEP server refused the request as out of order. Send it again.";
        WrongOperation: WrongOperation => 409 "conflict"
            "The STEP server does not allow this now: another upload of the same name may have \
             started or finished first. Look at what is stored under the name, then try again.";
        TypeNotAllowed: TypeNotAllowed => 400 "bad_request"
            "The STEP server does not take this kind of request. Check it against the API \
             documentation.";
        FieldMissing: FieldMissing => 400 "bad_request"
            "A value in the request is missing or not valid. Correct it and send the request \
             again.";
    }
    reasons {
        /// Storage is full (also a SAVE larger than the free space).
        NoSpace: BlockSizeMismatch "no_space" => 507 "no_space"
            "The server is out of storage space; nothing was stored. Delete files you no longer \
             need, or try again later.";
        /// A SAVE size above the server's `max_file_size`.
        TooLarge: KeyExists "too_large" => 413 "too_large"
            "The file is larger than this server accepts; nothing was stored. Upload a smaller \
             file.";
        /// The `upload_id` is no longer the key's current upload.
        Superseded: WrongOperation "superseded" => 409 "superseded"
            "Another upload of the same name started meanwhile and took this one's place; \
             nothing of this upload is kept. Look at what is stored under the name, and upload \
             again if you still want to.";
        /// Stored bytes failed their at-rest checksum.
        Integrity: BlockSizeMismatch "integrity" => 502 "integrity"
            "The stored file failed its integrity check and is not served. Tell whoever runs \
             the server; upload the file again if you have it.";
        /// The upload's bytes do not have the md5 its writer sent with them
        /// (UPLOAD `md5`): it was not completed and is discarded; the key
        /// keeps what it held.
        Md5Mismatch: BlockSizeMismatch "md5_mismatch" => 502 "md5_mismatch"
            "The file was damaged on the way to the STEP server, so it was not stored; whatever \
             the name held before is kept unchanged. Upload the file again.";
        /// A per-user cap on unfinished uploads was reached.
        Quota: BlockSizeMismatch "quota" => 507 "quota"
            "You have too many unfinished uploads on the server. Finish or cancel some (they \
             also expire when left idle), then try again.";
        /// A DELETE with `upload_id` found something other than that upload.
        OtherUpload: NotFound "other_upload" => 404 "other_upload"
            "The name now holds another upload's file; nothing was deleted. Look at what is \
             stored under it before deleting again.";
        /// An `if_md5` precondition did not hold.
        Precondition: WrongOperation "precondition" => 412 "precondition_failed"
            "The file has changed since you read it; nothing was changed. Read it again and \
             retry with its current ETag.";
        /// The version a DOWNLOAD named (`upload_id`) was replaced and is
        /// no longer kept.
        Replaced: NotFound "replaced" => 409 "replaced"
            "The file was replaced while it was being read. Download it again.";
        /// What the server keeps files in (its bucket, or the coordination
        /// engine several servers share) cannot be reached now; the request
        /// may succeed later, unchanged.
        Unavailable: BlockSizeMismatch "unavailable" => 503 "unavailable"
            "The server's storage cannot be reached just now; nothing was changed. Try again in \
             a moment.";
        /// The token may only read (the public identity under anonymous
        /// read); the request would write.
        ReadOnly: BadToken "read_only" => 403 "read_only"
            "You may only read here, and this request would change something. Sign in as a user \
             to write.";
        /// Too many password checks are running or queued: retry in a moment.
        Busy: WrongPassword "busy" => 503 "busy"
            "The server is busy checking other sign-ins. Try again in a moment.";
        /// Too many LOGINs from this address or for this user name lately.
        TooManyAttempts: WrongPassword "too_many_attempts" => 429 "too_many_attempts"
            "There were too many sign-in attempts lately. Wait a little, then try again.";
        /// Anonymous access is off on this server.
        NoAnonymous: WrongPassword "no_anonymous" => 401 "no_anonymous"
            "This server does not serve anonymous callers. Sign in with a user name and \
             password (HTTP Basic) or a token.";
    }
}

impl Problem {
    /// The row a STEP refusal names: its reason's, else the reference's
    /// row of its status; `None` for `Ok` (not a refusal).
    pub fn of(status: Status, reason: Option<Reason>) -> Option<Problem> {
        if let Some(reason) = reason {
            return Some(reason.into());
        }
        Problem::ALL
            .iter()
            .copied()
            .find(|p| p.reason().is_none() && p.step_status() == status)
    }

    /// Whether the refusal says the key holds nothing the request can act
    /// on (no file, or no longer the one the request meant): all the rows
    /// of the reference's 404.
    pub fn is_gone(self) -> bool {
        self.step_status() == Status::NotFound
    }

    /// Whether what the STEP server says with this refusal is what a
    /// person has to correct (a value of theirs that is not valid), so it
    /// is worth showing beside the words.
    pub fn detail_helps(self) -> bool {
        matches!(
            self,
            Problem::CompulsoryFieldMissing | Problem::FieldMissing | Problem::TypeNotAllowed
        )
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.words())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    #[test]
    fn every_row_is_complete_and_consistent() {
        let mut reasons = HashSet::new();
        let mut code_status: HashMap<&str, u16> = HashMap::new();
        let mut reference = HashMap::new();
        for &p in Problem::ALL {
            assert!(
                (400..600).contains(&p.http_status()),
                "{p:?}: {}",
                p.http_status()
            );
            assert_ne!(p.step_status(), Status::Ok, "{p:?}");
            let code = p.code();
            // Snake case; digits only after a letter (`md5_mismatch`).
            assert!(
                code.starts_with(|c: char| c.is_ascii_lowercase())
                    && code
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{p:?}: {code:?}"
            );
            // A code means one HTTP status, whichever row it comes from.
            let first = *code_status.entry(code).or_insert(p.http_status());
            assert_eq!(first, p.http_status(), "{p:?}: code {code}");
            let words = p.words();
            assert!(words.len() > 20 && words.ends_with('.'), "{p:?}: {words}");
            // What happened, then what to do: at least two sentences.
            assert!(
                words.matches(". ").count() + words.matches("; ").count() >= 1,
                "{p:?}"
            );
            match p.reason() {
                Some(r) => {
                    assert!(reasons.insert(r.as_str()), "{r} twice");
                    assert_eq!(r.as_str().parse::<Reason>(), Ok(r));
                    assert_eq!(Problem::of(p.step_status(), Some(r)), Some(p));
                }
                None => {
                    assert!(reference.insert(p.step_status(), p).is_none(), "{p:?}");
                    assert_eq!(Problem::of(p.step_status(), None), Some(p));
                }
            }
        }
        // Every refusal status of the reference has its row.
        for &s in Status::ALL {
            assert_eq!(reference.contains_key(&s), s != Status::Ok, "{s:?}");
        }
        assert_eq!(reasons.len(), Reason::ALL.len());
        assert_eq!(Problem::of(Status::Ok, None), None);
    }
}
