//! md5 helpers: STEP's password rule and file digests.

use md5::{Digest, Md5};

pub use md5::Md5 as Md5Hasher;

/// md5 of the empty input: the digest of a zero-byte file.
pub const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

/// Lower-case hex md5 of `data`.
pub fn md5_hex(data: impl AsRef<[u8]>) -> String {
    hex::encode(Md5::digest(data.as_ref()))
}

/// The password STEP expects for a user: md5 of the username, in hex.
pub fn password_for(username: &str) -> String {
    md5_hex(username.as_bytes())
}

/// Whether `password` is the STEP password of `username` (hex compared
/// case-insensitively, as the reference does).
pub fn password_matches(username: &str, password: &str) -> bool {
    password.eq_ignore_ascii_case(&password_for(username))
}

/// Finish a hasher into lower-case hex.
pub fn finish_hex(hasher: Md5) -> String {
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(md5_hex(b""), EMPTY_MD5);
        assert_eq!(password_for("123456"), "e10adc3949ba59abbe56e057f20f883e");
        assert!(password_matches(
            "123456",
            "E10ADC3949BA59ABBE56E057F20F883E"
        ));
        assert!(!password_matches("123456", "0123"));
        let mut h = Md5::new();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(finish_hex(h), md5_hex(b"abc"));
    }
}
