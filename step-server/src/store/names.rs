//! Keys and usernames to file names.
//!
//! Any key string is storable — clients send `pics/otter.jpg`, `/home/me/x`,
//! `..`, unicode — so names are percent-encoded rather than refused: the only
//! bytes left as they are are ASCII letters, digits, `-`, `_` and a `.` that is
//! not first. The result can never be `.`/`..`, contain a separator or NUL, or
//! start with `~`; names too long for a file system become `~<sha256 hex>`,
//! a form no encoded name takes.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use sha2::{Digest, Sha256};

const KEEP: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');
/// Longest encoded name kept readable (file systems allow 255 bytes).
const MAX_READABLE: usize = 200;

/// A file-system-safe, injective name for `s`.
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    if let Some(rest) = s.strip_prefix('.') {
        out.push_str("%2E");
        out.extend(utf8_percent_encode(rest, KEEP));
    } else {
        out.extend(utf8_percent_encode(s, KEEP));
    }
    if out.len() > MAX_READABLE || out.is_empty() {
        return format!("~{}", hex::encode(Sha256::digest(s.as_bytes())));
    }
    out
}

/// What the readable encoding of every string starting with `prefix` starts
/// with (hashed encodings aside).
pub fn encode_prefix(prefix: &str) -> String {
    match prefix.strip_prefix('.') {
        Some(rest) => format!("%2E{}", utf8_percent_encode(rest, KEEP)),
        None => utf8_percent_encode(prefix, KEEP).to_string(),
    }
}

/// The string `name` is the encoding of, when it can be told from the name
/// alone: `None` for a hashed name (`~…`) and for anything [`encode`] does
/// not produce.
pub fn decode(name: &str) -> Option<String> {
    if name.starts_with('~') {
        return None;
    }
    let s = percent_decode_str(name).decode_utf8().ok()?.into_owned();
    // Only the one encoding of `s` decodes to it (rules out names encode
    // never makes, such as `a%2db` or a bare `.x`).
    (encode(&s) == name).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_stay_single_safe_components() {
        let long = "a".repeat(5000);
        for key in [
            "..",
            ".",
            "../../etc/passwd",
            "/abs/path",
            "a\\b",
            "nul\0byte",
            "tab\tnew\nline",
            "über/ß",
            "🦦.jpg",
            "~user",
            "%2E",
            "",
            long.as_str(),
        ] {
            let name = encode(key);
            assert!(!name.is_empty(), "{key:?}");
            assert!(name.len() <= 255, "{key:?}");
            assert!(name != "." && name != "..", "{key:?}");
            assert!(!name.contains(['/', '\\', '\0']), "{key:?} -> {name}");
            assert!(
                name.bytes().all(|b| b.is_ascii_graphic()),
                "{key:?} -> {name}"
            );
        }
    }

    #[test]
    fn readable_where_possible_and_injective() {
        assert_eq!(encode("otter.jpg"), "otter.jpg");
        assert_eq!(encode(".hidden"), "%2Ehidden");
        assert_eq!(encode("pics/otter.jpg"), "pics%2Fotter.jpg");
        let names = ["a/b", "a%2Fb", "a_b", "a.b", ".a", "%2Ea", "~x", "a b"];
        let encoded: std::collections::HashSet<_> = names.iter().map(|n| encode(n)).collect();
        assert_eq!(encoded.len(), names.len());
        assert!(encode(&"x".repeat(300)).starts_with('~'));
    }

    #[test]
    fn encodings_of_keys_with_a_prefix_start_with_its_encoding() {
        for (prefix, key) in [
            ("", "x"),
            (".", ".hidden"),
            (".h", ".hidden"),
            ("b/", "b/1"),
            ("b/ü", "b/über"),
            ("🦦", "🦦.jpg"),
            ("a b", "a b c"),
        ] {
            assert!(
                encode(key).starts_with(&encode_prefix(prefix)),
                "{prefix:?} {key:?}"
            );
        }
        assert!(!encode("b-1").starts_with(&encode_prefix("b/")));
    }

    #[test]
    fn decode_inverts_encode_except_for_hashed_names() {
        for key in [
            "otter.jpg",
            ".hidden",
            "pics/otter.jpg",
            "a%2Fb",
            "über/ß",
            "🦦.jpg",
            "~user",
            "..",
            "tab\tnew\nline",
        ] {
            assert_eq!(decode(&encode(key)).as_deref(), Some(key), "{key:?}");
        }
        assert_eq!(decode(&encode(&"x".repeat(300))), None, "hashed");
        for foreign in ["a%2fb", ".x", "a b", "%FF", "~abc"] {
            assert_eq!(decode(foreign), None, "{foreign:?}");
        }
    }
}
