//! Python semantics over `serde_json::Value`.
//!
//! The meaning of a vector is whatever `replay.py` does with it, and a few of
//! the things it does are Python-specific: `==` treats `1`, `1.0` and `True`
//! as equal (except where `_same` special-cases booleans), `str(v)` renders
//! non-strings as Python literals when a placeholder sits inside a longer
//! string, and requests are serialised by `json.dumps(..., ensure_ascii=False)`
//! with `", "`/`": "` separators (which matters for `json_len: "chars"` and for
//! the exact bytes the server sees). This module reproduces those behaviours.

use serde_json::{Number, Value};

// --------------------------------------------------------------------------- equality

/// A JSON number or boolean as Python sees it when comparing with `==`.
#[derive(Debug, Clone, Copy)]
enum PyNum {
    Int(i128),
    Float(f64),
}

fn py_num(v: &Value) -> Option<PyNum> {
    match v {
        // bool is a subclass of int in Python: True == 1.
        Value::Bool(b) => Some(PyNum::Int(i128::from(*b))),
        Value::Number(n) => Some(number_to_py(n)),
        _ => None,
    }
}

fn number_to_py(n: &Number) -> PyNum {
    if let Some(i) = n.as_i64() {
        PyNum::Int(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        PyNum::Int(i128::from(u))
    } else {
        // Without serde_json's arbitrary_precision every other number is an f64.
        PyNum::Float(n.as_f64().unwrap_or(f64::NAN))
    }
}

fn num_eq(a: PyNum, b: PyNum) -> bool {
    match (a, b) {
        (PyNum::Int(x), PyNum::Int(y)) => x == y,
        (PyNum::Float(x), PyNum::Float(y)) => x == y,
        // Python compares int and float exactly, not by rounding the int.
        (PyNum::Int(i), PyNum::Float(f)) | (PyNum::Float(f), PyNum::Int(i)) => {
            f.is_finite() && f.fract() == 0.0 && f.abs() < 1e38 && f as i128 == i
        }
    }
}

/// Python's `a == b` for values produced by `json.loads`.
pub fn py_eq(a: &Value, b: &Value) -> bool {
    if let (Some(x), Some(y)) = (py_num(a), py_num(b)) {
        return num_eq(x, y);
    }
    match (a, b) {
        (Value::Null, Value::Null) => true,
        (Value::String(x), Value::String(y)) => x == y,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| py_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| py_eq(v, w)))
        }
        _ => false,
    }
}

/// `replay._same`: like `==`, except that a boolean only equals a boolean
/// (so `"flag": true` in an expectation does not accept `1`). Only the top
/// level is special-cased; nested values use plain Python equality.
pub fn same(a: &Value, b: &Value) -> bool {
    if a.is_boolean() || b.is_boolean() {
        return a.is_boolean() && b.is_boolean() && a == b;
    }
    py_eq(a, b)
}

// --------------------------------------------------------------------------- str / repr

/// Python's `str(v)`: strings as they are, everything else as `repr`.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

/// Python's `repr(v)` for values produced by `json.loads`.
pub fn py_repr(v: &Value) -> String {
    let mut out = String::new();
    repr_into(v, &mut out);
    out
}

fn repr_into(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("None"),
        Value::Bool(true) => out.push_str("True"),
        Value::Bool(false) => out.push_str("False"),
        Value::Number(n) => out.push_str(&number_repr(n)),
        Value::String(s) => out.push_str(&str_repr(s)),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                repr_into(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&str_repr(k));
                out.push_str(": ");
                repr_into(item, out);
            }
            out.push('}');
        }
    }
}

fn number_repr(n: &Number) -> String {
    match number_to_py(n) {
        PyNum::Int(i) => i.to_string(),
        PyNum::Float(f) => float_repr(f),
    }
}

/// Python's `repr(float)`: the shortest round-trip digits, positional
/// notation with a trailing `.0` when the decimal exponent is in [-4, 16),
/// otherwise `d.ddde+XX`.
pub fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    // Rust's `{:e}` without a precision also prints the shortest digits
    // that round-trip, e.g. "-1.5e20" or "1e-5".
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => ("-", m),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    // Python's "decpt": value = 0.DIGITS * 10^decpt.
    let decpt = exp + 1;
    let body = if (-3..=16).contains(&decpt) {
        if decpt <= 0 {
            format!("0.{}{digits}", "0".repeat(decpt.unsigned_abs() as usize))
        } else {
            let point = decpt as usize;
            if digits.len() > point {
                format!("{}.{}", &digits[..point], &digits[point..])
            } else {
                format!("{digits}{}.0", "0".repeat(point - digits.len()))
            }
        }
    } else {
        let (head, tail) = digits.split_at(1);
        let esign = if exp < 0 { '-' } else { '+' };
        let frac = if tail.is_empty() {
            String::new()
        } else {
            format!(".{tail}")
        };
        format!("{head}{frac}e{esign}{:02}", exp.unsigned_abs())
    };
    format!("{sign}{body}")
}

/// Python's `repr(str)`: single quotes unless the text holds a `'` and no `"`.
fn str_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            // Approximates str.isprintable(): controls and non-space
            // whitespace (e.g. U+00A0) are escaped.
            c if c.is_control() || (c.is_whitespace() && c != ' ') => {
                let cp = u32::from(c);
                if cp < 0x100 {
                    out.push_str(&format!("\\x{cp:02x}"));
                } else if cp < 0x10000 {
                    out.push_str(&format!("\\u{cp:04x}"));
                } else {
                    out.push_str(&format!("\\U{cp:08x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

// --------------------------------------------------------------------------- json.dumps

/// `json.dumps(v, ensure_ascii=False)`.
pub fn dumps(v: &Value) -> String {
    let mut out = String::new();
    dump_into(v, &mut out);
    out
}

fn dump_into(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&number_repr(n)),
        Value::String(s) => dump_str(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dump_into(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                dump_str(k, out);
                out.push_str(": ");
                dump_into(item, out);
            }
            out.push('}');
        }
    }
}

fn dump_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn equality_follows_python() {
        assert!(py_eq(&json!(200), &json!(200.0)));
        assert!(
            py_eq(&json!([true]), &json!([1])),
            "nested bool == int as in Python"
        );
        assert!(!py_eq(
            &json!(9007199254740993u64),
            &json!(9007199254740992.0)
        ));
        assert!(py_eq(
            &json!({"a": 1, "b": [2]}),
            &json!({"b": [2.0], "a": 1})
        ));
        assert!(!py_eq(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(
            !same(&json!(true), &json!(1)),
            "top-level bool only equals bool"
        );
        assert!(!same(&json!(0), &json!(false)));
        assert!(same(&json!(true), &json!(true)));
        assert!(same(&json!(200), &json!(200.0)));
        assert!(!same(&json!("200"), &json!(200)));
    }

    #[test]
    fn dumps_matches_python() {
        // Expected text produced by CPython 3.11's json.dumps(..., ensure_ascii=False).
        let v = json!({"a": [1, 2.5, true, null, "é\n\"\\\u{1}"],
                       "b": {"c": 1e20, "d": 0.0001, "e": 1e-5, "f": 1234567890123456.0,
                             "g": 1e16, "h": -0.0}});
        assert_eq!(
            dumps(&v),
            r#"{"a": [1, 2.5, true, null, "é\n\"\\\u0001"], "b": {"c": 1e+20, "d": 0.0001, "e": 1e-05, "f": 1234567890123456.0, "g": 1e+16, "h": -0.0}}"#
        );
    }

    #[test]
    fn str_matches_python() {
        let v = json!({"a": [1, 2.5, true, null, "it's", "x\"y", "a'b\"c", "\n\u{1}é\u{a0}"]});
        assert_eq!(
            py_str(&v),
            r#"{'a': [1, 2.5, True, None, "it's", 'x"y', 'a\'b"c', '\n\x01é\xa0']}"#
        );
        assert_eq!(py_str(&json!("plain")), "plain");
        assert_eq!(py_str(&json!(50000)), "50000");
        assert_eq!(float_repr(0.1), "0.1");
        assert_eq!(float_repr(1.5e-7), "1.5e-07");
        assert_eq!(float_repr(123.0), "123.0");
    }
}
