//! Matching an [`Observation`] against a step's `expect`: `replay.check` and
//! `replay._value_ok`.

use regex::Regex;
use serde_json::{Map, Value};

use super::content::{decode_token, md5_hex, pattern_bytes};
use super::pyvalue::{py_eq, py_repr, py_str, same};
use super::vectors::{Env, MissingVar, subst};
use super::wire::{JsonUnits, Observation};

/// Expectation keys that are not response fields.
const EXPECT_CONTROL: &[&str] = &[
    "response",
    "any_of",
    "fields_present",
    "fields_absent",
    "binary_len",
    "binary_md5",
    "binary_pattern",
    "binary_offset",
    "note",
];

const UUID_RE: &str = "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}";

/// Python's `re.fullmatch(pattern, text)`. Rust's regex syntax agrees with
/// Python's for everything the vectors use (classes, repetition, escapes);
/// a pattern it cannot compile is reported rather than silently passing.
fn full_match(pattern: &str, text: &str) -> Result<bool, String> {
    let re = Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|e| format!("bad $regex /{pattern}/: {e}"))?;
    Ok(re.is_match(text))
}

/// A single-key object whose key starts with `$` is a matcher.
fn as_matcher(spec: &Value) -> Option<(&str, &Value)> {
    match spec {
        Value::Object(m) if m.len() == 1 => m
            .iter()
            .next()
            .filter(|(k, _)| k.starts_with('$'))
            .map(|(k, v)| (k.as_str(), v)),
        _ => None,
    }
}

/// `replay._value_ok`: `Ok(None)` when `actual` satisfies `spec`, else a reason.
pub fn value_ok(spec: &Value, actual: &Value, env: &Env) -> Result<Option<String>, MissingVar> {
    let Some((op, arg)) = as_matcher(spec) else {
        let want = subst(spec, env)?;
        return Ok((!same(&want, actual))
            .then(|| format!("expected {}, got {}", py_repr(&want), py_repr(actual))));
    };
    let reason = match op {
        "$info" | "$any" => None,
        "$one_of" => {
            let allowed = match arg {
                Value::Array(items) => items
                    .iter()
                    .map(|a| subst(a, env))
                    .collect::<Result<Vec<_>, _>>()?,
                other => {
                    return Ok(Some(format!(
                        "$one_of needs a list, got {}",
                        py_repr(other)
                    )));
                }
            };
            (!allowed.iter().any(|a| same(a, actual))).then(|| {
                format!(
                    "{} not in {}",
                    py_repr(actual),
                    py_repr(&Value::Array(allowed))
                )
            })
        }
        "$regex" => {
            let pattern = py_str(arg);
            match actual {
                Value::String(s) => match full_match(&pattern, s) {
                    Ok(true) => None,
                    Ok(false) => Some(format!("{} !~ /{pattern}/", py_repr(actual))),
                    Err(e) => Some(e),
                },
                _ => Some(format!("{} !~ /{pattern}/", py_repr(actual))),
            }
        }
        "$uuid" => match actual {
            Value::String(s) if full_match(UUID_RE, s) == Ok(true) => None,
            _ => Some(format!("{} is not a uuid", py_repr(actual))),
        },
        "$token_for" => token_for(&py_str(&subst(arg, env)?), actual),
        other => Some(format!("unknown matcher {other}")),
    };
    Ok(reason)
}

/// `$token_for`: `actual` is base64 of "<user>.<14 digits>.login.<32 lowercase
/// hex>", with dots in the user name replaced by underscores.
pub fn token_for(user: &str, actual: &Value) -> Option<String> {
    let user = user.replace('.', "_");
    let Some(text) = actual.as_str().and_then(decode_token) else {
        return Some(format!(
            "token {} is not base64 of utf-8 text",
            py_repr(actual)
        ));
    };
    // \d is Unicode-aware in both Python's `re` (str patterns) and Rust's regex.
    let pattern = format!(r"{}\.\d{{14}}\.login\.[0-9a-f]{{32}}", regex::escape(&user));
    match full_match(&pattern, &text) {
        Ok(true) => None,
        _ => Some(format!(
            "token decodes to {}, not '{user}.<14 digits>.login.<md5>'",
            py_repr(&Value::String(text))
        )),
    }
}

/// `replay._allows`: could this expectation be met by an observation of `kind`?
/// Decides how long to wait: a step that may get no answer waits only NONE_WAIT.
pub fn allows(expect: &Value, kind: &str) -> bool {
    if let Some(Value::Array(alts)) = expect.get("any_of") {
        return alts.iter().any(|a| allows(a, kind));
    }
    response_kind(expect) == kind
}

fn response_kind(expect: &Value) -> String {
    expect
        .get("response")
        .map_or_else(|| "message".to_string(), py_str)
}

/// `replay.check` with `--strict-framing` always on (our server must count
/// the JSON length in bytes). Returns the problems; empty means it matched.
/// An unfillable placeholder inside the expectation is an error (the Python
/// runner crashes there).
pub fn check(
    expect: &Value,
    obs: &Observation,
    env: &Env,
    strict_framing: bool,
) -> Result<Vec<String>, MissingVar> {
    if strict_framing
        && let Observation::Message(m) = obs
        && m.units == JsonUnits::Chars
    {
        return Ok(vec![format!(
            "JSON length header {} counts characters; the JSON part is {} bytes",
            m.json_len_header, m.json_bytes
        )]);
    }
    let Value::Object(exp) = expect else {
        return Ok(vec![format!(
            "expectation is not an object: {}",
            py_repr(expect)
        )]);
    };
    if let Some(alts) = exp.get("any_of") {
        let Value::Array(alts) = alts else {
            return Ok(vec![format!("any_of needs a list, got {}", py_repr(alts))]);
        };
        let mut reasons = Vec::new();
        for (i, alt) in alts.iter().enumerate() {
            let p = check(alt, obs, env, strict_framing)?;
            if p.is_empty() {
                return Ok(Vec::new());
            }
            reasons.push(format!("alt{i}: {}", p.join("; ")));
        }
        return Ok(vec![reasons.join(" | ")]);
    }
    let want = response_kind(expect);
    let msg = match obs {
        Observation::Message(m) if want == "message" => m,
        _ => {
            if obs.kind() == want {
                return Ok(Vec::new());
            }
            let got = match obs {
                Observation::Message(m) => {
                    let status = m
                        .json
                        .get("status")
                        .map_or_else(|| "?".to_string(), py_repr);
                    format!("a message (status {status})")
                }
                Observation::BadFrame { why } => format!("bad_frame ({why})"),
                other => other.kind().to_string(),
            };
            return Ok(vec![format!("expected {want}, got {got}")]);
        }
    };
    let Value::Object(j) = &msg.json else {
        return Ok(vec![format!(
            "answer is not a JSON object: {}",
            py_repr(&msg.json)
        )]);
    };
    let mut problems = Vec::new();
    check_fields(exp, j, env, &mut problems)?;
    check_binary(exp, &msg.binary, env, &mut problems)?;
    Ok(problems)
}

fn field_names(exp: &Map<String, Value>, key: &str) -> Vec<Value> {
    match exp.get(key) {
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    }
}

fn check_fields(
    exp: &Map<String, Value>,
    j: &Map<String, Value>,
    env: &Env,
    problems: &mut Vec<String>,
) -> Result<(), MissingVar> {
    for f in field_names(exp, "fields_present") {
        if !f.as_str().is_some_and(|f| j.contains_key(f)) {
            problems.push(format!("field {} missing", py_repr(&f)));
        }
    }
    for f in field_names(exp, "fields_absent") {
        if let Some(got) = f.as_str().and_then(|f| j.get(f)) {
            problems.push(format!(
                "field {} must be absent, got {}",
                py_repr(&f),
                py_repr(got)
            ));
        }
    }
    for (k, spec) in exp {
        if EXPECT_CONTROL.contains(&k.as_str()) {
            continue;
        }
        // `$info` documents what the reference said; it is never checked,
        // not even for presence.
        if matches!(as_matcher(spec), Some(("$info", _))) {
            continue;
        }
        let Some(actual) = j.get(k) else {
            problems.push(format!(
                "field {} missing",
                py_repr(&Value::String(k.clone()))
            ));
            continue;
        };
        if let Some(why) = value_ok(spec, actual, env)? {
            problems.push(format!("{k}: {why}"));
        }
    }
    Ok(())
}

fn check_binary(
    exp: &Map<String, Value>,
    b: &[u8],
    env: &Env,
    problems: &mut Vec<String>,
) -> Result<(), MissingVar> {
    let want_len = exp.get("binary_len");
    // Plain Python `!=` here (not `_same`), as in replay.check.
    if let Some(want) = want_len
        && !py_eq(want, &Value::from(b.len()))
    {
        problems.push(format!("binary length {} != {}", b.len(), py_repr(want)));
    }
    if let Some(want) = exp.get("binary_md5")
        && !py_eq(want, &Value::String(md5_hex(b)))
    {
        problems.push("binary md5 differs".into());
    }
    if let Some(seed) = exp.get("binary_pattern") {
        // Unlike a step's upload content, "zero" is not special here: the
        // Python runner always compares against the sha256 pattern.
        let seed = py_str(&subst(seed, env)?);
        let offset = exp
            .get("binary_offset")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let len = want_len.and_then(Value::as_i64).unwrap_or(b.len() as i64);
        if b != pattern_bytes(&seed, offset, len) {
            problems.push("binary content differs from what was uploaded".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::content::{b64_text, tok_bad_sig, tok_other_user};
    use super::super::wire::Message;
    use super::*;
    use serde_json::json;

    fn env() -> Env {
        let Value::Object(m) = json!({"u": "cu.ab", "k": "key1", "n": 3}) else {
            unreachable!()
        };
        m
    }

    fn msg(json: Value, binary: &[u8]) -> Observation {
        Observation::Message(Message {
            json,
            binary: binary.to_vec(),
            json_len_header: 0,
            json_bytes: 0,
            json_chars: 0,
            units: JsonUnits::Bytes,
        })
    }

    fn problems(expect: Value, obs: &Observation) -> Vec<String> {
        check(&expect, obs, &env(), true).expect("no missing vars")
    }

    #[test]
    fn token_for_accepts_well_formed_and_rejects_malformed() {
        let good = b64_text("cu_ab.20250102030405.login.0123456789abcdef0123456789abcdef");
        let e = env();
        let ok =
            |tok: &str| value_ok(&json!({"$token_for": "${u}"}), &json!(tok), &e).expect("vars");
        assert_eq!(
            ok(&good),
            None,
            "well-formed token for cu.ab (dots become underscores)"
        );
        for bad in [
            "not base64!".to_string(),
            b64_text("cu.ab.20250102030405.login.0123456789abcdef0123456789abcdef"), // dot kept
            b64_text("cu_ab.2025010203040.login.0123456789abcdef0123456789abcdef"),  // 13 digits
            b64_text("cu_ab.20250102030405.login.0123456789ABCDEF0123456789abcdef"), // upper hex
            b64_text("cu_ab.20250102030405.logout.0123456789abcdef0123456789abcdef"),
            b64_text("cu_ab.20250102030405.login.0123456789abcdef0123456789abcdef\n"),
            b64_text("xcu_ab.20250102030405.login.0123456789abcdef0123456789abcdef"),
            tok_other_user(&good),
            good.trim_end_matches('=').to_string(), // bad padding
        ] {
            assert!(ok(&bad).is_some(), "{bad:?} must be rejected");
        }
        // A signature change keeps the shape: still a well-formed token.
        assert_eq!(ok(&tok_bad_sig(&good)), None);
        assert!(
            value_ok(&json!({"$token_for": "${u}"}), &json!(5), &e)
                .expect("vars")
                .is_some()
        );
    }

    #[test]
    fn matchers() {
        let e = env();
        let v = |spec: Value, actual: Value| value_ok(&spec, &actual, &e).expect("vars");
        assert_eq!(v(json!({"$one_of": ["GET", "${k}"]}), json!("key1")), None);
        assert!(v(json!({"$one_of": ["GET", "DELETE"]}), json!("SAVE")).is_some());
        assert!(
            v(json!({"$one_of": [1]}), json!(true)).is_some(),
            "bool is not 1"
        );
        assert_eq!(v(json!({"$regex": "[a-z]+\\d"}), json!("abc1")), None);
        assert!(
            v(json!({"$regex": "[a-z]+"}), json!("abc1")).is_some(),
            "full match, not search"
        );
        assert!(
            v(json!({"$regex": "1"}), json!(1)).is_some(),
            "regex needs a string"
        );
        assert!(
            v(json!({"$regex": "("}), json!("x")).is_some(),
            "bad pattern fails"
        );
        assert_eq!(
            v(
                json!({"$uuid": true}),
                json!("0b5e6f4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b")
            ),
            None
        );
        assert!(
            v(
                json!({"$uuid": true}),
                json!("0B5E6F4E-1C2D-4E5F-8A9B-0C1D2E3F4A5B")
            )
            .is_some()
        );
        assert_eq!(v(json!({"$any": true}), json!(null)), None);
        assert_eq!(
            v(json!("${n}"), json!(3.0)),
            None,
            "substituted literal, Python equality"
        );
        assert!(v(json!("${k}"), json!("key2")).is_some());
        assert!(
            v(json!({"$nope": 1}), json!(1)).is_some(),
            "unknown matcher fails"
        );
        assert_eq!(
            v(json!({"a": 1, "b": 2}), json!({"b": 2, "a": 1})),
            None,
            "two keys: a literal"
        );
        assert!(value_ok(&json!("${zz}"), &json!(1), &e).is_err());
    }

    #[test]
    fn check_fields_binary_and_kinds() {
        let payload = pattern_bytes("p", 0, 40);
        let obs = msg(
            json!({"status": 200, "key": "key1", "status_msg": "hi", "md5": "x"}),
            &payload,
        );
        let base = json!({"status": 200, "key": "${k}", "status_msg": {"$info": "whatever"},
                          "fields_present": ["status", "key"], "binary_len": 40,
                          "binary_md5": md5_hex(&payload), "binary_pattern": "p", "binary_offset": 0});
        assert_eq!(problems(base.clone(), &obs), Vec::<String>::new());

        let mut e = base.clone();
        e["binary_len"] = json!(41);
        assert_eq!(problems(e, &obs).len(), 2, "length and content both differ");
        let mut e = base.clone();
        e["binary_pattern"] = json!("q");
        assert_eq!(
            problems(e, &obs),
            vec!["binary content differs from what was uploaded"]
        );
        let mut e = base.clone();
        e["fields_absent"] = json!(["md5"]);
        assert_eq!(
            problems(e, &obs),
            vec!["field 'md5' must be absent, got 'x'"]
        );
        let mut e = base.clone();
        e["token"] = json!({"$any": true});
        assert_eq!(problems(e, &obs), vec!["field 'token' missing"]);
        let mut e = base.clone();
        e["token"] = json!({"$info": "not checked, even when missing"});
        assert!(problems(e, &obs).is_empty());
        let mut e = base;
        e["status"] = json!(true);
        assert_eq!(problems(e, &obs), vec!["status: expected True, got 200"]);

        // Kinds.
        assert!(problems(json!({"response": "none"}), &Observation::None).is_empty());
        assert_eq!(
            problems(json!({}), &Observation::None),
            vec!["expected message, got none"]
        );
        assert_eq!(
            problems(json!({"response": "closed"}), &obs),
            vec!["expected closed, got a message (status 200)"]
        );
        assert!(
            problems(
                json!({"response": "closed"}),
                &Observation::Closed { stray_bytes: 0 }
            )
            .is_empty()
        );
        let any = json!({"any_of": [{"response": "none"}, {"status": 200}]});
        assert!(allows(&any, "none") && allows(&any, "message") && !allows(&any, "closed"));
        assert!(problems(any.clone(), &obs).is_empty());
        assert!(problems(any.clone(), &Observation::None).is_empty());
        assert_eq!(
            problems(any, &Observation::Closed { stray_bytes: 0 }),
            vec!["alt0: expected none, got closed | alt1: expected message, got closed"]
        );
        assert_eq!(
            problems(json!({}), &msg(json!([1]), b"")),
            vec!["answer is not a JSON object: [1]"]
        );
    }

    #[test]
    fn strict_framing_rejects_char_counted_answers() {
        let Observation::Message(mut m) = msg(json!({"status": 200}), b"") else {
            unreachable!()
        };
        m.units = JsonUnits::Chars;
        m.json_len_header = 14;
        m.json_bytes = 15;
        let obs = Observation::Message(m);
        assert_eq!(
            problems(json!({"status": 200}), &obs),
            vec!["JSON length header 14 counts characters; the JSON part is 15 bytes"]
        );
        // Even an any_of cannot excuse it, and it wins over other mismatches.
        assert_eq!(problems(json!({"any_of": [{}]}), &obs).len(), 1);
        assert!(
            check(&json!({"status": 200}), &obs, &env(), false)
                .expect("vars")
                .is_empty()
        );
    }
}
