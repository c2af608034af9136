//! Loading vector files and `${var}` / `${fn:var}` substitution.
//!
//! Cases and steps are kept as JSON maps rather than typed structs: the
//! format is open-ended (`replay.py` reads keys with `.get(..., default)`),
//! and mirroring that keeps the harness faithful to unknown-but-legal
//! combinations instead of rejecting them at parse time.

use std::path::Path;
use std::sync::LazyLock;

use regex::{Captures, Regex};
use serde_json::{Map, Value};

use super::content::apply_fn;
use super::pyvalue::py_str;

/// Variables of one replay: the case's `vars` plus values saved from answers.
pub type Env = Map<String, Value>;

/// One conformance case as it appears on a line of a `.jsonl` file.
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    /// Where it came from, for messages: "public.jsonl:12".
    pub origin: String,
    pub vars: Map<String, Value>,
    pub steps: Vec<Map<String, Value>>,
}

/// Parse every non-blank line of a vector file.
pub fn load_file(path: &Path) -> Result<Vec<Case>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |f| f.to_string_lossy().into_owned(),
    );
    let mut cases = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let origin = format!("{file}:{}", i + 1);
        cases.push(parse_case(line, origin)?);
    }
    Ok(cases)
}

fn parse_case(line: &str, origin: String) -> Result<Case, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| format!("{origin}: not JSON: {e}"))?;
    let Value::Object(mut obj) = v else {
        return Err(format!("{origin}: a case must be a JSON object"));
    };
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(format!("{origin}: case without a string \"name\"")),
    };
    let vars = match obj.remove("vars") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(format!("{origin} ({name}): \"vars\" must be an object")),
    };
    if let Some((k, _)) = vars.iter().find(|(_, v)| !v.is_string()) {
        return Err(format!("{origin} ({name}): var {k:?} must be a string"));
    }
    let steps = match obj.remove("steps") {
        Some(Value::Array(a)) => a,
        _ => return Err(format!("{origin} ({name}): \"steps\" must be a list")),
    };
    let steps = steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| match s {
            Value::Object(m) => Ok(m),
            _ => Err(format!("{origin} ({name}): step {i} must be an object")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Case {
        name,
        origin,
        vars,
        steps,
    })
}

/// `replay.make_env`: the case's vars with every `{r}` replaced by `r`, a fresh
/// random hex string per replay so repeated runs never collide on the server.
pub fn make_env(case: &Case, r: &str) -> Env {
    case.vars
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(py_str(v).replace("{r}", r))))
        .collect()
}

/// 8 random hex digits, like Python's `secrets.token_hex(4)`.
pub fn fresh_r() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A placeholder that could not be filled: an unknown variable (usually one an
/// earlier step should have saved) or an unknown function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingVar(pub String);

static PLACEHOLDER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\$\{([A-Za-z0-9_]+)(?::([A-Za-z0-9_]+))?\}").expect("placeholder regex")
});

/// `replay.subst`: fill placeholders in every string of `v` (not in object
/// keys). A string that is exactly one placeholder becomes the variable's
/// value with its JSON type (so `"size": "${n}"` can send a number); a
/// placeholder inside a longer string is replaced by Python's `str(value)`.
pub fn subst(v: &Value, env: &Env) -> Result<Value, MissingVar> {
    match v {
        Value::String(s) => subst_str(s, env),
        Value::Array(items) => items
            .iter()
            .map(|x| subst(x, env))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        Value::Object(map) => map
            .iter()
            .map(|(k, x)| Ok((k.clone(), subst(x, env)?)))
            .collect::<Result<Map<_, _>, _>>()
            .map(Value::Object),
        other => Ok(other.clone()),
    }
}

fn subst_str(s: &str, env: &Env) -> Result<Value, MissingVar> {
    if let Some(caps) = PLACEHOLDER.captures(s)
        && caps
            .get(0)
            .is_some_and(|m| m.start() == 0 && m.end() == s.len())
    {
        return lookup(&caps, env);
    }
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    for caps in PLACEHOLDER.captures_iter(s) {
        let Some(m) = caps.get(0) else { continue };
        out.push_str(&s[last..m.start()]);
        out.push_str(&py_str(&lookup(&caps, env)?));
        last = m.end();
    }
    out.push_str(&s[last..]);
    Ok(Value::String(out))
}

fn lookup(caps: &Captures<'_>, env: &Env) -> Result<Value, MissingVar> {
    let a = caps.get(1).map_or("", |m| m.as_str());
    match caps.get(2) {
        None => env.get(a).cloned().ok_or_else(|| MissingVar(a.to_owned())),
        Some(var) => {
            let var = var.as_str();
            let value = env.get(var).ok_or_else(|| MissingVar(var.to_owned()))?;
            apply_fn(a, value).ok_or_else(|| MissingVar(format!("unknown function {a}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> Env {
        let Value::Object(m) = json!({"u": "cu.1", "n": 50000, "tok": "dG9r"}) else {
            unreachable!()
        };
        m
    }

    #[test]
    fn substitution_keeps_types_and_formats_like_python() {
        let e = env();
        assert_eq!(
            subst(&json!("${n}"), &e),
            Ok(json!(50000)),
            "whole-string placeholder keeps the type"
        );
        assert_eq!(subst(&json!("size=${n}"), &e), Ok(json!("size=50000")));
        assert_eq!(
            subst(&json!("${u}/${dots_to_underscores:u}"), &e),
            Ok(json!("cu.1/cu_1"))
        );
        assert_eq!(
            subst(
                &json!({"password": "${md5:u}", "list": ["${u}", 3, null], "${u}": "k"}),
                &e
            ),
            Ok(
                json!({"password": super::super::content::md5_hex(b"cu.1"), "list": ["cu.1", 3, null], "${u}": "k"})
            )
        );
        assert_eq!(
            subst(&json!("$u {u} ${}"), &e),
            Ok(json!("$u {u} ${}")),
            "non-placeholders stay"
        );
        assert_eq!(
            subst(&json!("${missing}"), &e),
            Err(MissingVar("missing".into()))
        );
        assert_eq!(
            subst(&json!("x${md5:missing}"), &e),
            Err(MissingVar("missing".into()))
        );
        assert_eq!(
            subst(&json!("${nofn:u}"), &e),
            Err(MissingVar("unknown function nofn".into()))
        );
    }

    #[test]
    fn env_replaces_r_in_every_var() {
        let case = parse_case(
            r#"{"name":"x","vars":{"u":"cu{r}","k":"a{r}b{r}"},"steps":[]}"#,
            "t:1".into(),
        )
        .expect("case parses");
        let e = make_env(&case, "0a1b2c3d");
        assert_eq!(e.get("u"), Some(&json!("cu0a1b2c3d")));
        assert_eq!(e.get("k"), Some(&json!("a0a1b2c3db0a1b2c3d")));
        let r = fresh_r();
        assert!(
            r.len() == 8 && r.chars().all(|c| c.is_ascii_hexdigit()),
            "{r}"
        );
    }
}
