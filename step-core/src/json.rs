//! JSON text whose length in bytes equals its length in characters.
//!
//! The reference server and most Python clients write the JSON length header as
//! `len(str)` — a character count. Escaping every non-ASCII character as
//! `\uXXXX` makes that count equal the byte count, so our frames read correctly
//! whichever way the peer counts.

use std::io;

use serde::Serialize;
use serde_json::ser::{CharEscape, CompactFormatter, Formatter, Serializer};

/// A compact formatter that escapes every non-ASCII character.
#[derive(Debug, Default, Clone, Copy)]
pub struct AsciiFormatter;

impl Formatter for AsciiFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            if ch.is_ascii() {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for unit in ch.encode_utf16(&mut units) {
                write!(writer, "\\u{unit:04x}")?;
            }
            start = i + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W>(&mut self, writer: &mut W, escape: CharEscape) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        CompactFormatter.write_char_escape(writer, escape)
    }
}

/// Serialise `value` as ASCII-only compact JSON into `writer`.
pub fn to_ascii_writer<W: io::Write, T: Serialize + ?Sized>(
    writer: W,
    value: &T,
) -> serde_json::Result<()> {
    let mut ser = Serializer::with_formatter(writer, AsciiFormatter);
    value.serialize(&mut ser)
}

/// Serialise `value` as ASCII-only compact JSON.
pub fn to_ascii_vec<T: Serialize + ?Sized>(value: &T) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    to_ascii_writer(&mut out, value)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn non_ascii_is_escaped_and_round_trips() {
        let v = json!({"key": "otter 🦦 café \u{0} \"q\" \\ \n", "ü": [1, "ß"]});
        let bytes = to_ascii_vec(&v).expect("serialise");
        assert!(bytes.is_ascii());
        let text = std::str::from_utf8(&bytes).expect("utf8");
        assert_eq!(text.chars().count(), bytes.len());
        assert!(text.contains("\\ud83e\\udda6"), "{text}");
        let back: serde_json::Value = serde_json::from_slice(&bytes).expect("parse");
        assert_eq!(back, v);
    }

    #[test]
    fn ascii_output_matches_serde_compact() {
        let v = json!({"operation": "SAVE", "n": 1.5, "b": null, "t": true});
        assert_eq!(
            to_ascii_vec(&v).expect("ser"),
            serde_json::to_vec(&v).expect("ser")
        );
    }
}
