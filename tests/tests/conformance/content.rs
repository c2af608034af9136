//! Generated content and the placeholder functions of `replay.py`: the
//! sha256 pattern blocks, Python-compatible base64 and the token mutators.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use md5::{Digest as _, Md5};
use serde_json::Value;
use sha2::Sha256;

use super::pyvalue::py_str;

/// `replay.pattern_bytes`: the bytes `offset .. offset + length` of the
/// endless stream `sha256("{seed}:0") || sha256("{seed}:1") || ...`.
/// Offsets may be negative in principle (Python floor-divides), so this
/// works in signed arithmetic like the original.
pub fn pattern_bytes(seed: &str, offset: i64, length: i64) -> Vec<u8> {
    if length <= 0 {
        return Vec::new();
    }
    let first = offset.div_euclid(32);
    let last = (offset + length + 31).div_euclid(32);
    let mut out = Vec::with_capacity(usize::try_from((last - first) * 32).unwrap_or(0));
    for i in first..last {
        out.extend_from_slice(&Sha256::digest(format!("{seed}:{i}").as_bytes()));
    }
    let start = usize::try_from(offset - first * 32).unwrap_or(0);
    let len = usize::try_from(length).unwrap_or(0);
    out[start..start + len].to_vec()
}

/// Hex md5 of some bytes, as Python's `hashlib.md5(b).hexdigest()`.
pub fn md5_hex(data: &[u8]) -> String {
    hex::encode(Md5::digest(data))
}

// --------------------------------------------------------------------------- base64

fn b64_value(c: u8) -> Option<u8> {
    match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    }
}

/// CPython 3.11's `binascii.a2b_base64(s, strict_mode=validate)`, which is
/// what `base64.b64decode(s, validate=...)` calls.
///
/// Its rules differ from the `base64` crate's in ways the token matchers can
/// observe: non-canonical trailing bits are accepted, `=` after a complete
/// quad is ignored ("QUJD=" decodes), input stops at the first complete pad
/// sequence, and without `validate` non-alphabet characters are skipped.
pub fn py_b64decode(s: &str, validate: bool) -> Result<Vec<u8>, String> {
    let data = s.as_bytes();
    if validate && data.first() == Some(&b'=') {
        return Err("Leading padding not allowed".into());
    }
    let mut out = Vec::with_capacity(data.len() / 4 * 3);
    let mut quad_pos = 0u8;
    let mut left: u8 = 0;
    let mut pads = 0u8;
    let mut padding_started = false;
    for (i, &c) in data.iter().enumerate() {
        if c == b'=' {
            padding_started = true;
            if quad_pos >= 2 {
                pads += 1;
                if quad_pos + pads >= 4 {
                    // A complete pad sequence ends the input.
                    if validate && i + 1 < data.len() {
                        return Err("Excess data after padding".into());
                    }
                    return Ok(out);
                }
            }
            continue;
        }
        let Some(v) = b64_value(c) else {
            if validate {
                return Err("Only base64 data is allowed".into());
            }
            continue;
        };
        if validate && padding_started {
            return Err("Discontinuous padding not allowed".into());
        }
        pads = 0;
        match quad_pos {
            0 => {
                quad_pos = 1;
                left = v;
            }
            1 => {
                quad_pos = 2;
                out.push((left << 2) | (v >> 4));
                left = v & 0x0f;
            }
            2 => {
                quad_pos = 3;
                out.push((left << 4) | (v >> 2));
                left = v & 0x03;
            }
            _ => {
                quad_pos = 0;
                out.push((left << 6) | v);
                left = 0;
            }
        }
    }
    match quad_pos {
        0 => Ok(out),
        1 => Err("Invalid base64-encoded string: number of data characters cannot be 1 more than a multiple of 4".into()),
        _ => Err("Incorrect padding".into()),
    }
}

/// `replay._b64text`: base64 of the UTF-8 text.
pub fn b64_text(s: &str) -> String {
    STANDARD.encode(s.as_bytes())
}

// --------------------------------------------------------------------------- tokens

/// `replay._decode_token`: strict base64, then strict UTF-8.
pub fn decode_token(tok: &str) -> Option<String> {
    let bytes = py_b64decode(tok, true).ok()?;
    String::from_utf8(bytes).ok()
}

/// `replay._flip_b64`: change one base64 digit near the end. Works on
/// characters, as Python string slicing does.
fn flip_b64(tok: &str) -> String {
    let body: Vec<char> = tok.trim_end_matches('=').chars().collect();
    if body.is_empty() {
        return "AAAA".into();
    }
    let n = body.len();
    // body[-2:-1] is the second-to-last character, or empty if n == 1.
    let c = if n >= 2 && body[n - 2] == 'A' {
        'B'
    } else {
        'A'
    };
    let mut out: String = body[..n.saturating_sub(2)].iter().collect();
    out.push(c);
    out.push(body[n - 1]);
    out.push_str(&tok[tok.trim_end_matches('=').len()..]);
    out
}

/// `replay.tok_other_user`: append "x" to the user part, keeping the signature.
pub fn tok_other_user(tok: &str) -> String {
    match decode_token(tok) {
        Some(text) if text.split('.').count() == 4 => {
            let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
            parts[0].push('x');
            b64_text(&parts.join("."))
        }
        _ => flip_b64(tok),
    }
}

/// `replay.tok_bad_sig`: change the last hex digit of the signature.
pub fn tok_bad_sig(tok: &str) -> String {
    match decode_token(tok) {
        Some(text) if text.split('.').count() == 4 => {
            let mut parts: Vec<String> = text.split('.').map(str::to_owned).collect();
            let sig = &mut parts[3];
            let last = if sig.ends_with('1') { '2' } else { '1' };
            sig.pop();
            sig.push(last);
            b64_text(&parts.join("."))
        }
        _ => flip_b64(tok),
    }
}

/// `replay.FUNCS[name](value)` for `${name:var}`; `None` for an unknown name.
pub fn apply_fn(name: &str, value: &Value) -> Option<Value> {
    let s = py_str(value);
    let out = match name {
        "md5" => md5_hex(s.as_bytes()),
        "md5_upper" => md5_hex(s.as_bytes()).to_uppercase(),
        "upper" => s.to_uppercase(),
        "b64" => b64_text(&s),
        "dots_to_underscores" => s.replace('.', "_"),
        "tok_other_user" => tok_other_user(&s),
        "tok_bad_sig" => tok_bad_sig(&s),
        _ => return None,
    };
    Some(Value::String(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_md5_matches_the_vectors() {
        // file_upload_multi_block uploads pattern "multi" in 20480-byte blocks;
        // the first block's md5 and the whole file's md5 are pinned by the vectors.
        let block0 = pattern_bytes("multi", 0, 20480);
        assert_eq!(block0.len(), 20480);
        assert_eq!(md5_hex(&block0), "eb19bc5f6411462a124f1f4768a34ea4");
        let whole = pattern_bytes("multi", 0, 50000);
        assert_eq!(md5_hex(&whole), "0af364d5ed5e33a817cd18c21f0e9ea7");
        // Slices at any offset are windows onto the same stream.
        assert_eq!(pattern_bytes("multi", 40960, 9040), whole[40960..]);
        assert_eq!(pattern_bytes("multi", 7, 100), whole[7..107]);
        // Values computed with replay.pattern_bytes.
        assert_eq!(
            md5_hex(&pattern_bytes("multi", 7, 100)),
            "62c4e6c86b5bca844bd3237373b070f2"
        );
        assert_eq!(
            hex::encode(pattern_bytes("x", 5, 10)),
            "7a1467892c8fac6f6eed"
        );
        assert!(pattern_bytes("multi", 0, 0).is_empty());
        assert!(pattern_bytes("multi", 0, -3).is_empty());
    }

    #[test]
    fn base64_decoding_matches_cpython_311() {
        let ok = |s: &str, v: bool| py_b64decode(s, v).expect(s);
        assert_eq!(ok("QUJD", true), b"ABC");
        assert_eq!(ok("QUI=", true), b"AB");
        assert_eq!(ok("QUJD=", true), b"ABC");
        assert_eq!(ok("QUJD====", true), b"ABC");
        assert_eq!(ok("QR==", true), b"A");
        assert_eq!(ok("", true), b"");
        for bad in [
            "QUI", "QQ=", "Q", "QQ==QQ==", "QU=I", "QQ", "=QUJD", "QU JD",
        ] {
            assert!(
                py_b64decode(bad, true).is_err(),
                "{bad:?} must not decode strictly"
            );
        }
        // Lenient mode (binary_b64, raw.b64) skips junk and stops at padding.
        assert_eq!(ok("QU JD\n", false), b"ABC");
        assert_eq!(ok("QQ==QQ==", false), b"A");
    }

    #[test]
    fn token_mutators_match_python() {
        // Expected strings computed with replay.tok_other_user / tok_bad_sig.
        let tok = b64_text("cu_x.20240101120000.login.0123456789abcdef0123456789abcdef");
        assert_eq!(
            tok,
            "Y3VfeC4yMDI0MDEwMTEyMDAwMC5sb2dpbi4wMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZg=="
        );
        assert_eq!(
            tok_other_user(&tok),
            "Y3VfeHguMjAyNDAxMDExMjAwMDAubG9naW4uMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="
        );
        assert_eq!(
            tok_bad_sig(&tok),
            "Y3VfeC4yMDI0MDEwMTEyMDAwMC5sb2dpbi4wMTIzNDU2Nzg5YWJjZGVmMDEyMzQ1Njc4OWFiY2RlMQ=="
        );
        assert_eq!(tok_bad_sig("bm90LWEtdG9rZW4="), "bm90LWEtdG9rZA4=");
        assert_eq!(tok_other_user("abc"), "aAc");
        assert_eq!(flip_b64("A"), "AA");
        assert_eq!(flip_b64("==="), "AAAA");
        assert_eq!(flip_b64("QUFB"), "QUAB");
    }

    #[test]
    fn placeholder_functions() {
        let s = |v: &str| Value::String(v.into());
        assert_eq!(
            apply_fn("md5", &s("cuabc")),
            Some(s("4006986457de39e02d60189fe9f60157"))
        );
        assert_eq!(
            apply_fn("md5_upper", &s("cuabc")),
            Some(s("4006986457DE39E02D60189FE9F60157"))
        );
        assert_eq!(apply_fn("b64", &s("a.b")), Some(s("YS5i")));
        assert_eq!(
            apply_fn("dots_to_underscores", &s("a.b.c")),
            Some(s("a_b_c"))
        );
        assert_eq!(apply_fn("upper", &s("ab")), Some(s("AB")));
        assert_eq!(
            apply_fn("md5", &serde_json::json!(12)),
            Some(s(&md5_hex(b"12")))
        );
        assert_eq!(apply_fn("nope", &s("x")), None);
    }
}
