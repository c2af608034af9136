//! The client side of the wire: frame encoding, a blocking connection with
//! deadline-bounded reads, and `read_frame`, which turns whatever the server
//! sends (or doesn't) into an [`Observation`].
//!
//! Blocking std sockets are used on purpose: each case runs on its own
//! blocking thread, so its steps stay strictly sequential and the timing of
//! "no answer within 2 s" is the same as in the Python runner.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::pyvalue::dumps;

/// How long an expected answer may take.
pub const ANSWER_WAIT: Duration = Duration::from_secs(10);
/// Silence for this long means "no answer".
pub const NONE_WAIT: Duration = Duration::from_secs(2);
/// Once a header arrived, the rest of the frame must follow within this.
pub const BODY_WAIT: Duration = Duration::from_secs(10);
/// Sanity bounds on announced lengths, as in `replay.py`.
const MAX_JSON_LEN: u64 = 64 << 20;
const MAX_BIN_LEN: u64 = 1 << 31;

// --------------------------------------------------------------------------- encoding

/// What the JSON length field of an outgoing frame should count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonLen {
    /// Correct framing: UTF-8 bytes.
    Bytes,
    /// What reference clients do: characters (code points).
    Chars,
    /// A fixed (possibly wrong) number, to provoke the server.
    Fixed(u32),
}

impl JsonLen {
    /// Parse a step's `json_len` (absent means "bytes"). Anything else goes
    /// through Python's `int()`, which accepts ints, floats (truncated) and
    /// numeric strings.
    pub fn from_spec(v: Option<&Value>) -> Result<JsonLen, String> {
        let n: i128 = match v {
            None => return Ok(JsonLen::Bytes),
            Some(Value::String(s)) if s == "bytes" => return Ok(JsonLen::Bytes),
            Some(Value::String(s)) if s == "chars" => return Ok(JsonLen::Chars),
            Some(Value::String(s)) => s
                .trim()
                .replace('_', "")
                .parse()
                .map_err(|_| format!("json_len {s:?} is not bytes, chars or an integer"))?,
            Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => i128::from(i),
                (None, Some(f)) if f.is_finite() => f.trunc() as i128,
                _ => return Err(format!("json_len {n} is not an integer")),
            },
            Some(Value::Bool(b)) => i128::from(*b),
            Some(other) => {
                return Err(format!(
                    "json_len {other} is not bytes, chars or an integer"
                ));
            }
        };
        u32::try_from(n)
            .map(JsonLen::Fixed)
            .map_err(|_| format!("json_len {n} does not fit the u32 header"))
    }
}

/// `replay.encode_frame`: header + JSON + binary. A string request is sent as
/// its text verbatim (to send malformed JSON); anything else is serialised as
/// Python's `json.dumps(obj, ensure_ascii=False)` would. Returns the frame and
/// the JSON part's byte length (stream cuts are placed relative to it).
pub fn encode_frame(
    request: &Value,
    binary: &[u8],
    json_len: JsonLen,
) -> Result<(Vec<u8>, usize), String> {
    let text = match request {
        Value::String(s) => s.clone(),
        other => dumps(other),
    };
    let body = text.as_bytes();
    let jl = match json_len {
        JsonLen::Bytes => {
            u32::try_from(body.len()).map_err(|_| "JSON part too long".to_string())?
        }
        JsonLen::Chars => {
            u32::try_from(text.chars().count()).map_err(|_| "JSON part too long".to_string())?
        }
        JsonLen::Fixed(n) => n,
    };
    let bl = u32::try_from(binary.len()).map_err(|_| "binary part too long".to_string())?;
    let mut frame = Vec::with_capacity(8 + body.len() + binary.len());
    frame.extend_from_slice(&jl.to_be_bytes());
    frame.extend_from_slice(&bl.to_be_bytes());
    frame.extend_from_slice(body);
    frame.extend_from_slice(binary);
    Ok((frame, body.len()))
}

// --------------------------------------------------------------------------- observations

/// Which unit the server's JSON length header turned out to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonUnits {
    Bytes,
    Chars,
}

/// One complete answer frame.
#[derive(Debug, Clone)]
pub struct Message {
    pub json: Value,
    pub binary: Vec<u8>,
    pub json_len_header: u32,
    /// Bytes actually occupied by the JSON part.
    pub json_bytes: usize,
    pub json_chars: usize,
    pub units: JsonUnits,
}

/// What one read saw: `replay.read_frame`'s `kind` and details.
#[derive(Debug, Clone)]
pub enum Observation {
    Message(Message),
    /// Nothing arrived within the wait, and the connection is still open.
    None,
    /// The server closed before a complete header (possibly after a few stray bytes).
    Closed {
        stray_bytes: usize,
    },
    /// Something arrived that is not a valid frame.
    BadFrame {
        why: String,
    },
}

impl Observation {
    pub fn kind(&self) -> &'static str {
        match self {
            Observation::Message(_) => "message",
            Observation::None => "none",
            Observation::Closed { .. } => "closed",
            Observation::BadFrame { .. } => "bad_frame",
        }
    }
}

// --------------------------------------------------------------------------- connection

#[derive(Debug, PartialEq, Eq)]
enum Fill {
    Ok,
    Eof,
    Timeout,
}

/// One client connection with its receive buffer.
#[derive(Debug)]
pub struct Conn {
    sock: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl Conn {
    /// `socket.create_connection(..., timeout=ANSWER_WAIT)`: the timeout
    /// also bounds every send.
    pub fn connect(addr: SocketAddr) -> std::io::Result<Conn> {
        let sock = TcpStream::connect_timeout(&addr, ANSWER_WAIT)?;
        sock.set_write_timeout(Some(ANSWER_WAIT))?;
        // Frames are written whole; Nagle would only add latency between steps.
        sock.set_nodelay(true)?;
        Ok(Conn {
            sock,
            buf: Vec::new(),
            eof: false,
        })
    }

    /// Send bytes; `cuts` = `[(offset, pause)]` splits the write with sleeps
    /// (to exercise the server's handling of frames arriving in pieces).
    /// Returns false on a send error — which, like the Python runner, the
    /// caller ignores: the following read reports what the server did.
    pub fn send(&mut self, data: &[u8], cuts: &[(usize, Duration)]) -> bool {
        let mut cuts = cuts.to_vec();
        cuts.sort();
        let mut pos = 0;
        for (off, pause) in cuts {
            // Python slicing clamps out-of-range offsets; so do we.
            let end = off.clamp(pos.min(data.len()), data.len());
            if self
                .sock
                .write_all(&data[pos.min(data.len())..end])
                .is_err()
            {
                return false;
            }
            std::thread::sleep(pause);
            pos = off;
        }
        self.sock.write_all(&data[pos.min(data.len())..]).is_ok()
    }

    /// Shut down the sending side only (errors ignored, as in Python).
    pub fn half_close(&mut self) {
        let _ = self.sock.shutdown(Shutdown::Write);
    }

    /// Read until the buffer holds at least `n` bytes, EOF, or the deadline.
    fn fill(&mut self, n: usize, deadline: Instant) -> Fill {
        let mut chunk = vec![0u8; 65536];
        while self.buf.len() < n {
            if self.eof {
                return Fill::Eof;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Fill::Timeout;
            }
            if self.sock.set_read_timeout(Some(left)).is_err() {
                self.eof = true;
                return Fill::Eof;
            }
            match self.sock.read(&mut chunk) {
                Ok(0) => {
                    self.eof = true;
                    return Fill::Eof;
                }
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Fill::Timeout;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // Resets and other errors end the stream, as OSError does in Python.
                Err(_) => {
                    self.eof = true;
                    return Fill::Eof;
                }
            }
        }
        Fill::Ok
    }

    /// `replay.Conn.read_frame`: wait up to `wait` for a header, then up to
    /// BODY_WAIT for the rest.
    ///
    /// The JSON part is first decoded as exactly the header's byte count. If
    /// that does not parse, the reference server's bug is tried: the header
    /// counting characters. Such a frame is still consumed whole (keeping the
    /// stream in sync for later reads) and reported with `units: Chars`, which
    /// the strict-framing check then rejects.
    pub fn read_frame(&mut self, wait: Duration) -> Observation {
        let st = self.fill(8, Instant::now() + wait);
        if self.buf.len() < 8 {
            if st == Fill::Eof {
                return Observation::Closed {
                    stray_bytes: self.buf.len(),
                };
            }
            if self.buf.is_empty() {
                return Observation::None;
            }
            return Observation::BadFrame {
                why: format!("partial header ({} bytes)", self.buf.len()),
            };
        }
        let jl = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        let bl = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]);
        let deadline = Instant::now() + BODY_WAIT;
        if u64::from(jl) > MAX_JSON_LEN || u64::from(bl) > MAX_BIN_LEN {
            return Observation::BadFrame {
                why: format!("absurd lengths {jl}/{bl}"),
            };
        }
        let jl_us = jl as usize;
        let bl_us = bl as usize;
        if self.fill(8 + jl_us, deadline) != Fill::Ok {
            return Observation::BadFrame {
                why: format!("json part truncated (header {jl})"),
            };
        }
        let (json, json_bytes, units) = match parse_json_object(&self.buf[8..8 + jl_us]) {
            Some(obj) => (obj, jl_us, JsonUnits::Bytes),
            None => match self.find_char_counted_json(jl_us, deadline) {
                Ok((obj, n)) => (obj, n, JsonUnits::Chars),
                Err(obs) => return obs,
            },
        };
        if self.fill(8 + json_bytes + bl_us, deadline) != Fill::Ok {
            return Observation::BadFrame {
                why: "binary part truncated".into(),
            };
        }
        let json_chars = String::from_utf8_lossy(&self.buf[8..8 + json_bytes])
            .chars()
            .count();
        let binary = self.buf[8 + json_bytes..8 + json_bytes + bl_us].to_vec();
        self.buf.drain(..8 + json_bytes + bl_us);
        Observation::Message(Message {
            json,
            binary,
            json_len_header: jl,
            json_bytes,
            json_chars,
            units,
        })
    }

    /// The fallback of `read_frame`: extend the JSON part until its decoded
    /// text has exactly `jl` characters, and parse that. Returns the value and
    /// the number of bytes the JSON part really occupies.
    fn find_char_counted_json(
        &mut self,
        jl: usize,
        deadline: Instant,
    ) -> Result<(Value, usize), Observation> {
        let mut n = jl;
        let mut parsed = None;
        while n <= 4 * jl + 4 {
            if self.fill(8 + n, deadline) != Fill::Ok {
                return Err(Observation::BadFrame {
                    why: "json part truncated (char-count header)".into(),
                });
            }
            let text = match std::str::from_utf8(&self.buf[8..8 + n]) {
                Ok(t) => t,
                // error_len() == None: the bytes end inside a UTF-8 sequence
                // (Python's "unexpected end of data"): take one more byte.
                Err(e) if e.error_len().is_none() => {
                    n += 1;
                    continue;
                }
                Err(_) => {
                    return Err(Observation::BadFrame {
                        why: "invalid utf-8 in json part".into(),
                    });
                }
            };
            let chars = text.chars().count();
            if chars < jl {
                n += jl - chars;
                continue;
            }
            if chars == jl {
                parsed = parse_json_object(text.as_bytes());
            }
            break;
        }
        match parsed {
            Some(v) => Ok((v, n)),
            None => {
                let head = String::from_utf8_lossy(&self.buf[8..8 + jl.min(200)]).into_owned();
                Err(Observation::BadFrame {
                    why: format!("json part does not parse: {head:?}"),
                })
            }
        }
    }
}

/// `json.loads(bytes.decode("utf-8"))`, where a JSON `null` also counts as
/// "did not parse" (the Python runner tests `obj is None`).
fn parse_json_object(bytes: &[u8]) -> Option<Value> {
    let text = std::str::from_utf8(bytes).ok()?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Null) | Err(_) => None,
        Ok(v) => Some(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::net::TcpListener;

    #[test]
    fn frames_are_encoded_as_python_does() {
        let req = json!({"operation": "LOGIN", "username": "é"});
        let (frame, jb) = encode_frame(&req, b"xy", JsonLen::Bytes).expect("encode");
        let text = r#"{"operation": "LOGIN", "username": "é"}"#;
        assert_eq!(jb, text.len());
        assert_eq!(&frame[..4], &(text.len() as u32).to_be_bytes());
        assert_eq!(&frame[4..8], &2u32.to_be_bytes());
        assert_eq!(&frame[8..8 + jb], text.as_bytes());
        assert_eq!(&frame[8 + jb..], b"xy");
        let (frame, _) = encode_frame(&req, b"", JsonLen::Chars).expect("encode");
        assert_eq!(&frame[..4], &(text.chars().count() as u32).to_be_bytes());
        let (frame, _) = encode_frame(&json!("{oops"), b"", JsonLen::Fixed(99)).expect("encode");
        assert_eq!(&frame[..4], &99u32.to_be_bytes());
        assert_eq!(&frame[8..], b"{oops");
        assert_eq!(
            JsonLen::from_spec(Some(&json!("12"))),
            Ok(JsonLen::Fixed(12))
        );
        assert!(JsonLen::from_spec(Some(&json!(-1))).is_err());
    }

    /// A one-shot fake server: accepts one connection, writes `bytes`, then
    /// either closes or holds the connection open for `hold`.
    fn fake_server(bytes: Vec<u8>, hold: Option<Duration>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            s.write_all(&bytes).expect("write");
            if let Some(h) = hold {
                std::thread::sleep(h);
            }
        });
        addr
    }

    fn frame(jl: u32, json: &str, binary: &[u8]) -> Vec<u8> {
        let mut f = jl.to_be_bytes().to_vec();
        f.extend_from_slice(&(binary.len() as u32).to_be_bytes());
        f.extend_from_slice(json.as_bytes());
        f.extend_from_slice(binary);
        f
    }

    #[test]
    fn char_counted_header_is_detected_and_stream_stays_in_sync() {
        let text = r#"{"k": "héllo"}"#; // 14 chars, 15 bytes
        let mut bytes = frame(text.chars().count() as u32, text, b"BIN");
        bytes.extend(frame(11, r#"{"next": 1}"#, b""));
        let mut c = Conn::connect(fake_server(bytes, None)).expect("connect");
        match c.read_frame(Duration::from_secs(5)) {
            Observation::Message(m) => {
                assert_eq!(m.units, JsonUnits::Chars);
                assert_eq!(
                    (m.json_len_header, m.json_bytes, m.json_chars),
                    (14, 15, 14)
                );
                assert_eq!(m.json, json!({"k": "héllo"}));
                assert_eq!(m.binary, b"BIN");
            }
            other => panic!("expected a message, got {other:?}"),
        }
        match c.read_frame(Duration::from_secs(5)) {
            Observation::Message(m) => {
                assert_eq!(m.units, JsonUnits::Bytes);
                assert_eq!(m.json, json!({"next": 1}));
            }
            other => panic!("expected a message, got {other:?}"),
        }
        assert!(matches!(
            c.read_frame(Duration::from_secs(5)),
            Observation::Closed { stray_bytes: 0 }
        ));
    }

    #[test]
    fn silence_garbage_and_close_are_told_apart() {
        let mut c =
            Conn::connect(fake_server(Vec::new(), Some(Duration::from_secs(3)))).expect("connect");
        let t = Instant::now();
        assert!(matches!(
            c.read_frame(Duration::from_millis(300)),
            Observation::None
        ));
        assert!(t.elapsed() >= Duration::from_millis(300));

        let mut c = Conn::connect(fake_server(vec![0, 0, 0], None)).expect("connect");
        assert!(matches!(
            c.read_frame(Duration::from_secs(5)),
            Observation::Closed { stray_bytes: 3 }
        ));

        let mut c = Conn::connect(fake_server(frame(5, "nope!", b""), None)).expect("connect");
        let obs = c.read_frame(Duration::from_secs(5));
        assert!(
            matches!(&obs, Observation::BadFrame { why } if why.contains("does not parse")),
            "{obs:?}"
        );

        let mut c = Conn::connect(fake_server(frame(4, "null", b""), None)).expect("connect");
        assert_eq!(
            c.read_frame(Duration::from_secs(5)).kind(),
            "bad_frame",
            "null is not an answer"
        );

        let mut c =
            Conn::connect(fake_server(frame(20, r#"{"a": 1}"#, b""), None)).expect("connect");
        assert_eq!(
            c.read_frame(Duration::from_secs(5)).kind(),
            "bad_frame",
            "truncated JSON part"
        );
    }
}
