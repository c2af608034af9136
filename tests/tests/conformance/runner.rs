//! Replaying one case: `replay.run_case` in "check" mode.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Map, Value};

use super::check::{allows, check};
use super::content::{pattern_bytes, py_b64decode};
use super::pyvalue::{py_eq, py_str};
use super::vectors::{Case, Env, MissingVar, fresh_r, make_env, subst};
use super::wire::{ANSWER_WAIT, Conn, JsonLen, NONE_WAIT, encode_frame};

/// Our server must count JSON lengths in bytes, so `--strict-framing` is
/// always on: a character-counted answer fails even if its content matches.
const STRICT_FRAMING: bool = true;

/// Why a case stopped early, other than a failed expectation.
#[derive(Debug)]
enum Abort {
    /// A `${var}` with no value: an earlier step did not answer as expected.
    Missing(MissingVar),
    /// The server could not be reached; replaces all other problems, as the
    /// Python runner reports only "connection error" then.
    Connect(std::io::Error),
    /// The vector itself is malformed (the Python runner would crash).
    Invalid(String),
}

impl From<MissingVar> for Abort {
    fn from(e: MissingVar) -> Self {
        Abort::Missing(e)
    }
}

fn invalid(msg: impl Into<String>) -> Abort {
    Abort::Invalid(msg.into())
}

/// The connections of one replay, opened lazily by name and closed (dropped)
/// when the replay ends.
struct Conns {
    addr: SocketAddr,
    open: HashMap<String, Conn>,
}

impl Conns {
    fn get(&mut self, name: &str) -> Result<&mut Conn, Abort> {
        match self.open.entry(name.to_owned()) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(e) => Ok(e.insert(Conn::connect(self.addr).map_err(Abort::Connect)?)),
        }
    }
}

/// Replay `case` against `addr` with fresh `{r}` values. Returns the
/// problems found; an empty list means the case passed.
pub fn run_case(case: &Case, addr: SocketAddr) -> Vec<String> {
    let mut env = make_env(case, &fresh_r());
    let mut conns = Conns {
        addr,
        open: HashMap::new(),
    };
    let mut problems = Vec::new();
    for (idx, step) in case.steps.iter().enumerate() {
        match run_step(step, &mut conns, &mut env) {
            Ok(None) => {}
            Ok(Some(p)) => {
                problems.push(format!("step {idx} ({}): {}", describe(step), p.join("; ")));
                break;
            }
            Err(Abort::Missing(MissingVar(v))) => {
                problems.push(format!(
                    "step {idx}: placeholder ${{{v}}} has no value (an earlier step did not answer as expected)"
                ));
                break;
            }
            Err(Abort::Connect(e)) => return vec![format!("connection error: {e}")],
            Err(Abort::Invalid(why)) => {
                problems.push(format!("step {idx}: invalid vector: {why}"));
                break;
            }
        }
    }
    problems
}

/// Perform one step's action and, if it expects something, read and check
/// one answer. `Ok(Some(problems))` means the expectation failed.
fn run_step(
    step: &Map<String, Value>,
    conns: &mut Conns,
    env: &mut Env,
) -> Result<Option<Vec<String>>, Abort> {
    let action = step
        .get("action")
        .map_or_else(|| "call".to_string(), py_str);
    let name = step.get("conn").map_or_else(|| "a".to_string(), py_str);
    match action.as_str() {
        // "call" and "send" write the same bytes; they differ only in whether
        // the vector gives an "expect" (handled below for every action).
        "call" | "send" => {
            let req = subst(
                step.get("request").ok_or_else(|| invalid("no request"))?,
                env,
            )?;
            let (data, _) =
                encode_frame(&req, &step_binary(step, env)?, json_len(step)?).map_err(invalid)?;
            conns.get(&name)?.send(&data, &[]);
        }
        "stream" => {
            let (data, cuts) = build_stream(step, env)?;
            conns.get(&name)?.send(&data, &cuts);
        }
        "raw" => {
            let data = build_raw(step, env)?;
            conns.get(&name)?.send(&data, &[]);
        }
        "half_close" => conns.get(&name)?.half_close(),
        "close" => {
            // Dropping the socket closes it; a later step on this name
            // opens a fresh connection.
            conns.open.remove(&name);
        }
        "sleep" => std::thread::sleep(seconds(step.get("seconds"), 0.2)?),
        "recv" => {}
        other => return Err(invalid(format!("unknown action {other}"))),
    }

    let expect = match step.get("expect") {
        None | Some(Value::Null) if action != "recv" => return Ok(None),
        // Python's `expect or {}`: any falsy expectation means "a message".
        None | Some(Value::Null) | Some(Value::Bool(false)) => Value::Object(Map::new()),
        Some(Value::Object(m)) if m.is_empty() => Value::Object(Map::new()),
        Some(Value::Array(a)) if a.is_empty() => Value::Object(Map::new()),
        Some(Value::String(s)) if s.is_empty() => Value::Object(Map::new()),
        Some(e) => e.clone(),
    };
    // A step that may legitimately get no answer waits only NONE_WAIT for it.
    let wait = if allows(&expect, "none") {
        NONE_WAIT
    } else {
        ANSWER_WAIT
    };
    let obs = conns.get(&name)?.read_frame(wait);
    let problems = check(&expect, &obs, env, STRICT_FRAMING)?;
    if !problems.is_empty() {
        return Ok(Some(problems));
    }
    if let (super::wire::Observation::Message(m), Some(Value::Object(save))) =
        (&obs, step.get("save"))
        && let Value::Object(j) = &m.json
    {
        for (var, field) in save {
            if let Some(v) = field.as_str().and_then(|f| j.get(f)) {
                env.insert(var.clone(), v.clone());
            }
        }
    }
    Ok(None)
}

/// `replay._describe`: "call SAVE/FILE", from the step's unsubstituted request.
fn describe(step: &Map<String, Value>) -> String {
    let action = step
        .get("action")
        .map_or_else(|| "call".to_string(), py_str);
    let req = match step.get("request") {
        Some(r) if !r.is_null() => Some(r),
        _ => step
            .get("frames")
            .and_then(Value::as_array)
            .and_then(|f| f.first())
            .and_then(|f| f.get("request")),
    };
    match req {
        Some(Value::Object(r)) => {
            let field = |k: &str| r.get(k).map_or_else(|| "None".to_string(), py_str);
            format!("{action} {}/{}", field("operation"), field("type"))
        }
        _ => action,
    }
}

fn json_len(spec: &Map<String, Value>) -> Result<JsonLen, Abort> {
    JsonLen::from_spec(spec.get("json_len")).map_err(invalid)
}

/// A duration in (possibly fractional) seconds, as `time.sleep` takes it.
fn seconds(v: Option<&Value>, default: f64) -> Result<Duration, Abort> {
    let s = match v {
        None => default,
        Some(v) => v
            .as_f64()
            .ok_or_else(|| invalid(format!("{v} is not a number of seconds")))?,
    };
    Duration::try_from_secs_f64(s).map_err(|_| invalid(format!("{s} is not a valid pause")))
}

fn int_field(spec: &Map<String, Value>, key: &str, default: i64) -> Result<i64, Abort> {
    match spec.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| invalid(format!("{key} {v} is not an integer"))),
    }
}

/// `replay.step_binary`: the binary part of a request.
fn step_binary(spec: &Map<String, Value>, env: &Env) -> Result<Vec<u8>, Abort> {
    if let Some(b64) = spec.get("binary_b64") {
        return py_b64decode(&py_str(b64), false).map_err(|e| invalid(format!("binary_b64: {e}")));
    }
    // `if not n`: absent, 0, null and false all mean "no binary part".
    let n = match spec.get("binary_len") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => 0,
        Some(_) => int_field(spec, "binary_len", 0)?,
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let seed = match spec.get("binary_pattern") {
        None => Value::String("zero".into()),
        Some(s) => subst(s, env)?,
    };
    if seed.as_str() == Some("zero") {
        return Ok(vec![
            0;
            usize::try_from(n)
                .map_err(|_| invalid("negative binary_len"))?
        ]);
    }
    Ok(pattern_bytes(
        &py_str(&seed),
        int_field(spec, "binary_offset", 0)?,
        n,
    ))
}

/// A pause in a stream: after this many bytes, sleep this long.
type Cut = (usize, Duration);

/// Action "stream": several frames written as one byte stream, optionally
/// paused at `cuts` (offsets into a frame's binary part) to make the server
/// see frames split across reads.
fn build_stream(step: &Map<String, Value>, env: &Env) -> Result<(Vec<u8>, Vec<Cut>), Abort> {
    let frames = step
        .get("frames")
        .and_then(Value::as_array)
        .ok_or_else(|| invalid("stream without frames"))?;
    let cut_specs: &[Value] = step
        .get("cuts")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice);
    let mut data = Vec::new();
    let mut cuts = Vec::new();
    for (fi, fr) in frames.iter().enumerate() {
        let Value::Object(fr) = fr else {
            return Err(invalid(format!("frame {fi} is not an object")));
        };
        let req = subst(
            fr.get("request")
                .ok_or_else(|| invalid(format!("frame {fi} has no request")))?,
            env,
        )?;
        let (frame, jb) =
            encode_frame(&req, &step_binary(fr, env)?, json_len(fr)?).map_err(invalid)?;
        for cut in cut_specs {
            let Value::Object(cut) = cut else {
                return Err(invalid("a cut is not an object"));
            };
            let frame_no = cut
                .get("frame")
                .ok_or_else(|| invalid("cut without frame"))?;
            if !py_eq(frame_no, &Value::from(fi)) {
                continue;
            }
            let off = cut
                .get("binary_offset")
                .and_then(Value::as_i64)
                .ok_or_else(|| invalid("cut without an integer binary_offset"))?;
            let at = (data.len() + 8 + jb) as i64 + off;
            let at =
                usize::try_from(at).map_err(|_| invalid("cut before the start of the stream"))?;
            cuts.push((at, seconds(cut.get("pause"), 0.3)?));
        }
        data.extend_from_slice(&frame);
    }
    Ok((data, cuts))
}

/// Action "raw": arbitrary bytes — an optional header, then text and/or base64.
fn build_raw(step: &Map<String, Value>, env: &Env) -> Result<Vec<u8>, Abort> {
    let Some(Value::Object(raw)) = step.get("raw") else {
        return Err(invalid("raw step without a raw object"));
    };
    let mut data = Vec::new();
    match raw.get("header") {
        None | Some(Value::Null) => {}
        Some(Value::Array(h)) if h.len() == 2 => {
            for n in h {
                let n = n
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| invalid(format!("header value {n} is not a u32")))?;
                data.extend_from_slice(&n.to_be_bytes());
            }
        }
        Some(other) => return Err(invalid(format!("raw header {other} is not [jlen, blen]"))),
    }
    if let Some(text) = raw.get("text") {
        match subst(text, env)? {
            Value::String(s) => data.extend_from_slice(s.as_bytes()),
            other => return Err(invalid(format!("raw text became {other}, not a string"))),
        }
    }
    if let Some(b64) = raw.get("b64") {
        data.extend(
            py_b64decode(&py_str(b64), false).map_err(|e| invalid(format!("raw b64: {e}")))?,
        );
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn binary_specs() {
        let env = Env::new();
        assert_eq!(step_binary(&obj(json!({})), &env).expect("ok"), b"");
        assert_eq!(
            step_binary(&obj(json!({"binary_len": 3})), &env).expect("ok"),
            vec![0; 3]
        );
        assert_eq!(
            step_binary(
                &obj(json!({"binary_len": 9, "binary_pattern": "multi", "binary_offset": 5})),
                &env
            )
            .expect("ok"),
            pattern_bytes("multi", 5, 9)
        );
        assert_eq!(
            step_binary(&obj(json!({"binary_b64": "QUJD", "binary_len": 7})), &env).expect("ok"),
            b"ABC"
        );
        assert!(matches!(
            step_binary(
                &obj(json!({"binary_len": 1, "binary_pattern": "${nope}"})),
                &env
            ),
            Err(Abort::Missing(_))
        ));
    }

    #[test]
    fn stream_cuts_land_inside_the_binary_part() {
        let step = obj(json!({"frames": [
            {"request": {"a": 1}},
            {"request": {"b": 2}, "binary_len": 10, "binary_pattern": "s"}],
            "cuts": [{"frame": 1, "binary_offset": 4, "pause": 0.05}, {"frame": 7, "binary_offset": 0}]}));
        let (data, cuts) = build_stream(&step, &Env::new()).expect("stream");
        let first = 8 + r#"{"a": 1}"#.len();
        let second_json = r#"{"b": 2}"#.len();
        assert_eq!(data.len(), first + 8 + second_json + 10);
        assert_eq!(
            cuts,
            vec![(first + 8 + second_json + 4, Duration::from_millis(50))]
        );
        assert_eq!(&data[first + 8 + second_json..], pattern_bytes("s", 0, 10));
    }

    #[test]
    fn malformed_steps_fail_the_case() {
        // These fail before any connection is needed, so no server is involved.
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let case = |steps: Value| Case {
            name: "t".into(),
            origin: "t:1".into(),
            vars: Map::new(),
            steps: match steps {
                Value::Array(a) => a.into_iter().map(obj).collect(),
                _ => panic!("steps"),
            },
        };
        let p = run_case(
            &case(json!([{"action": "sleep", "seconds": 0.01}, {"action": "explode"}])),
            addr,
        );
        assert_eq!(p, vec!["step 1: invalid vector: unknown action explode"]);
        let p = run_case(
            &case(json!([{"request": {"token": "${tok}"}, "expect": {}}])),
            addr,
        );
        assert_eq!(
            p,
            vec![
                "step 0: placeholder ${tok} has no value (an earlier step did not answer as expected)"
            ]
        );
        let p = run_case(&case(json!([{"action": "sleep"}])), addr);
        assert!(p.is_empty(), "a case without checks passes: {p:?}");
    }

    #[test]
    fn raw_and_describe() {
        let mut env = Env::new();
        env.insert("u".into(), json!("bob"));
        let step =
            obj(json!({"action": "raw", "raw": {"header": [3, 0], "text": "${u}", "b64": "AAE="}}));
        assert_eq!(
            build_raw(&step, &env).expect("raw"),
            [&[0, 0, 0, 3, 0, 0, 0, 0][..], b"bob", &[0, 1]].concat()
        );
        assert_eq!(
            describe(&obj(
                json!({"request": {"operation": "SAVE", "type": "FILE"}})
            )),
            "call SAVE/FILE"
        );
        assert_eq!(
            describe(&obj(
                json!({"action": "stream", "frames": [{"request": {"operation": "GET"}}]})
            )),
            "stream GET/None"
        );
        assert_eq!(describe(&obj(json!({"action": "sleep"}))), "sleep");
    }
}
