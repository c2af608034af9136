//! The STEP frame codec.
//!
//! ```text
//! | u32 BE json_len | u32 BE binary_len | json_len bytes JSON | binary_len bytes |
//! ```
//!
//! Both lengths are checked against caps as soon as the 8-byte header is in,
//! before anything is reserved, so a header announcing 4 GiB costs an error and
//! nothing else. Lengths are byte counts (see [`crate::json`] for why we can
//! always write them that way).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

pub use crate::message::Frame;
use crate::message::Message;

/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 8;
/// Default cap on the JSON part: DATA records are small.
pub const DEFAULT_MAX_JSON: usize = 1 << 20;
/// Default cap on the binary part: the largest block a peer may send.
pub const DEFAULT_MAX_BINARY: usize = 8 << 20;

/// Errors of the codec. Every decode error means the stream can no longer be
/// trusted to be in sync: the connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("JSON part of {len} bytes exceeds the cap of {max}")]
    JsonTooLong { len: u64, max: usize },
    #[error("binary part of {len} bytes exceeds the cap of {max}")]
    BinaryTooLong { len: u64, max: usize },
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error("cannot encode JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encodes and decodes STEP frames with hard caps on both lengths.
#[derive(Debug, Clone, Copy)]
pub struct StepCodec {
    max_json: usize,
    max_binary: usize,
}

impl Default for StepCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_JSON, DEFAULT_MAX_BINARY)
    }
}

impl StepCodec {
    pub fn new(max_json: usize, max_binary: usize) -> Self {
        Self {
            max_json,
            max_binary,
        }
    }

    pub fn max_json(&self) -> usize {
        self.max_json
    }

    pub fn max_binary(&self) -> usize {
        self.max_binary
    }

    fn check(&self, json_len: u64, binary_len: u64) -> Result<(), CodecError> {
        if json_len > self.max_json as u64 {
            return Err(CodecError::JsonTooLong {
                len: json_len,
                max: self.max_json,
            });
        }
        if binary_len > self.max_binary as u64 {
            return Err(CodecError::BinaryTooLong {
                len: binary_len,
                max: self.max_binary,
            });
        }
        Ok(())
    }
}

impl Decoder for StepCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        if src.len() < HEADER_LEN {
            return Ok(None);
        }
        let json_len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
        let binary_len = u32::from_be_bytes([src[4], src[5], src[6], src[7]]);
        self.check(u64::from(json_len), u64::from(binary_len))?;
        // Both lengths are capped, so this sum cannot overflow a usize.
        let total = HEADER_LEN + json_len as usize + binary_len as usize;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        src.advance(HEADER_LEN);
        let json = src.split_to(json_len as usize).freeze();
        let binary = src.split_to(binary_len as usize).freeze();
        Ok(Some(Frame { json, binary }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::Truncated {
                buffered: src.len(),
            }),
        }
    }
}

impl Encoder<Frame> for StepCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        self.check(frame.json.len() as u64, frame.binary.len() as u64)?;
        dst.reserve(HEADER_LEN + frame.json.len() + frame.binary.len());
        dst.put_u32(frame.json.len() as u32);
        dst.put_u32(frame.binary.len() as u32);
        dst.extend_from_slice(&frame.json);
        dst.extend_from_slice(&frame.binary);
        Ok(())
    }
}

impl Encoder<Message> for StepCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        Encoder::<&Message>::encode(self, &msg, dst)
    }
}

impl Encoder<&Message> for StepCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        let start = dst.len();
        dst.put_u64(0); // header, patched below once the JSON length is known
        crate::json::to_ascii_writer((&mut *dst).writer(), &msg.fields)?;
        let json_len = dst.len() - start - HEADER_LEN;
        if let Err(e) = self.check(json_len as u64, msg.binary.len() as u64) {
            dst.truncate(start);
            return Err(e);
        }
        dst[start..start + 4].copy_from_slice(&(json_len as u32).to_be_bytes());
        dst[start + 4..start + 8].copy_from_slice(&(msg.binary.len() as u32).to_be_bytes());
        dst.extend_from_slice(&msg.binary);
        Ok(())
    }
}

/// Largest piece the [`RequestCodec`] asks to have read at once while it
/// collects a binary part (beyond the body's own buffer).
pub const BODY_READ_CHUNK: usize = 64 << 10;
/// Largest piece the [`RequestCodec`] asks to have read at once while it
/// skips a binary part: small, because any number of connections may be
/// skipping at once.
pub const SKIP_READ_CHUNK: usize = 8 << 10;

/// One piece of a request off the wire, from [`RequestCodec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestPart {
    /// The header announced a JSON part longer than the codec's allowance
    /// ([`RequestCodec::with_json_allowance`]); nothing of it is buffered yet.
    /// It is read from the next poll on: a server takes `json_len` bytes of
    /// its budget before polling again. Yielded once per such frame, before
    /// its [`RequestPart::Head`].
    LargeHead { json_len: usize },
    /// A frame's JSON part and the announced length of its binary part, which
    /// is still unread. Unless [`RequestCodec::read_body`] is called before
    /// the next decode, that binary part is skipped: read and dropped in
    /// pieces of at most [`SKIP_READ_CHUNK`] bytes, never stored.
    Head { json: Bytes, binary_len: usize },
    /// The binary part of the previous head, after [`RequestCodec::read_body`].
    Body(Bytes),
}

#[derive(Debug, Default)]
enum ReadState {
    /// Waiting for a header and its JSON part.
    #[default]
    Head,
    /// As `Head`, for a frame whose large JSON part was announced already.
    AnnouncedHead,
    /// A head with a binary part was yielded; nothing decided yet.
    Undecided(usize),
    /// Dropping this many more bytes of a binary part.
    Skip(usize),
    /// Collecting a binary part of `len` bytes into a buffer of exactly that
    /// capacity.
    Body { len: usize, buf: BytesMut },
}

/// A server's decoder that splits each frame in two: the header and JSON part
/// first ([`RequestPart::Head`]), so the request can be checked before a byte
/// of its binary part is buffered; then, only if the caller asks for it, the
/// binary part ([`RequestPart::Body`]). Responses are encoded as by
/// [`StepCodec`], with the same caps.
#[derive(Debug)]
pub struct RequestCodec {
    caps: StepCodec,
    state: ReadState,
    json_allowance: usize,
}

impl Default for RequestCodec {
    fn default() -> Self {
        Self::new(StepCodec::default())
    }
}

impl RequestCodec {
    pub fn new(caps: StepCodec) -> Self {
        Self {
            caps,
            state: ReadState::Head,
            json_allowance: usize::MAX,
        }
    }

    /// JSON parts longer than `bytes` are announced with
    /// [`RequestPart::LargeHead`] before any of them is buffered.
    pub fn with_json_allowance(mut self, bytes: usize) -> Self {
        self.json_allowance = bytes;
        self
    }

    pub fn caps(&self) -> StepCodec {
        self.caps
    }

    /// Collect the binary part of the head just yielded (instead of skipping
    /// it); the next decoded item is its [`RequestPart::Body`]. Returns the
    /// body's length, or `None` when there is no binary part pending (none
    /// announced, or already decided).
    pub fn read_body(&mut self) -> Option<usize> {
        match self.state {
            ReadState::Undecided(len) => {
                self.state = ReadState::Body {
                    len,
                    buf: BytesMut::with_capacity(len),
                };
                Some(len)
            }
            _ => None,
        }
    }

    /// Whether the next head is already whole in `src` (no binary part still
    /// to skip or collect): a server flushes its answers only when not, so
    /// pipelined requests are answered in batches.
    pub fn head_buffered(&self, src: &BytesMut) -> bool {
        if !matches!(self.state, ReadState::Head | ReadState::AnnouncedHead)
            || src.len() < HEADER_LEN
        {
            return false;
        }
        let json = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        src.len() >= HEADER_LEN.saturating_add(json)
    }

    /// Make room to read the next piece of a binary part of which `remaining`
    /// bytes are still to come, at most `chunk`.
    fn reserve_chunk(src: &mut BytesMut, remaining: usize, chunk: usize) {
        src.reserve(remaining.min(chunk).saturating_sub(src.len()));
    }
}

impl Decoder for RequestCodec {
    type Item = RequestPart;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<RequestPart>, CodecError> {
        loop {
            match &mut self.state {
                ReadState::Head | ReadState::AnnouncedHead => {
                    if src.len() < HEADER_LEN {
                        src.reserve(HEADER_LEN - src.len());
                        return Ok(None);
                    }
                    let json_len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]);
                    let binary_len = u32::from_be_bytes([src[4], src[5], src[6], src[7]]);
                    self.caps
                        .check(u64::from(json_len), u64::from(binary_len))?;
                    if matches!(self.state, ReadState::Head)
                        && json_len as usize > self.json_allowance
                    {
                        self.state = ReadState::AnnouncedHead;
                        return Ok(Some(RequestPart::LargeHead {
                            json_len: json_len as usize,
                        }));
                    }
                    // Only the header and JSON part are waited for here; the
                    // binary part is not reserved (it may never be read).
                    let head = HEADER_LEN + json_len as usize;
                    if src.len() < head {
                        src.reserve(head - src.len());
                        return Ok(None);
                    }
                    src.advance(HEADER_LEN);
                    let json = src.split_to(json_len as usize).freeze();
                    let binary_len = binary_len as usize;
                    self.state = if binary_len > 0 {
                        ReadState::Undecided(binary_len)
                    } else {
                        ReadState::Head
                    };
                    return Ok(Some(RequestPart::Head { json, binary_len }));
                }
                // The caller did not ask for the body: skip it.
                ReadState::Undecided(len) => {
                    let len = *len;
                    self.state = ReadState::Skip(len);
                }
                ReadState::Skip(remaining) => {
                    let n = (*remaining).min(src.len());
                    src.advance(n);
                    *remaining -= n;
                    if *remaining > 0 {
                        Self::reserve_chunk(src, *remaining, SKIP_READ_CHUNK);
                        return Ok(None);
                    }
                    self.state = ReadState::Head;
                }
                ReadState::Body { len, buf } => {
                    let n = (*len - buf.len()).min(src.len());
                    buf.extend_from_slice(&src[..n]);
                    src.advance(n);
                    if buf.len() < *len {
                        Self::reserve_chunk(src, *len - buf.len(), BODY_READ_CHUNK);
                        return Ok(None);
                    }
                    let body = std::mem::take(buf).freeze();
                    self.state = ReadState::Head;
                    return Ok(Some(RequestPart::Body(body)));
                }
            }
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<RequestPart>, CodecError> {
        match self.decode(src)? {
            Some(part) => Ok(Some(part)),
            None if src.is_empty() && matches!(self.state, ReadState::Head) => Ok(None),
            None => {
                let collected = match &self.state {
                    ReadState::Body { buf, .. } => buf.len(),
                    _ => 0,
                };
                Err(CodecError::Truncated {
                    buffered: src.len() + collected,
                })
            }
        }
    }
}

impl Encoder<&Message> for RequestCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: &Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        Encoder::<&Message>::encode(&mut self.caps, msg, dst)
    }
}

impl Encoder<Message> for RequestCodec {
    type Error = CodecError;

    fn encode(&mut self, msg: Message, dst: &mut BytesMut) -> Result<(), CodecError> {
        Encoder::<&Message>::encode(&mut self.caps, &msg, dst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    fn encode_frame(json: &[u8], binary: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        StepCodec::default()
            .encode(
                Frame {
                    json: Bytes::copy_from_slice(json),
                    binary: Bytes::copy_from_slice(binary),
                },
                &mut buf,
            )
            .expect("encode");
        buf
    }

    #[test]
    fn round_trip_frame() {
        let mut buf = encode_frame(br#"{"a":1}"#, b"\x00\x01\x02");
        assert_eq!(&buf[..8], &[0, 0, 0, 7, 0, 0, 0, 3]);
        let frame = StepCodec::default()
            .decode(&mut buf)
            .expect("decode")
            .expect("frame");
        assert_eq!(&frame.json[..], br#"{"a":1}"#);
        assert_eq!(&frame.binary[..], b"\x00\x01\x02");
        assert!(buf.is_empty());
    }

    #[test]
    fn split_at_every_byte_boundary() {
        let mut stream = encode_frame(br#"{"operation":"SAVE"}"#, &[7u8; 37]);
        stream.extend_from_slice(&encode_frame(br#"{"b":"\u00e9"}"#, b""));
        let whole = stream.freeze();
        for cut in 0..=whole.len() {
            let mut codec = StepCodec::default();
            let mut buf = BytesMut::new();
            let mut frames = Vec::new();
            for part in [&whole[..cut], &whole[cut..]] {
                buf.extend_from_slice(part);
                while let Some(f) = codec.decode(&mut buf).expect("decode") {
                    frames.push(f);
                }
            }
            assert_eq!(frames.len(), 2, "cut at {cut}");
            assert_eq!(frames[0].binary.len(), 37);
            assert_eq!(&frames[1].json[..], br#"{"b":"\u00e9"}"#);
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let whole = encode_frame(br#"{"k":"v"}"#, &[1u8; 300]);
        let mut codec = StepCodec::default();
        let mut buf = BytesMut::new();
        let mut got = None;
        for (i, b) in whole.iter().enumerate() {
            buf.put_u8(*b);
            let f = codec.decode(&mut buf).expect("decode");
            if i + 1 < whole.len() {
                assert!(f.is_none());
            } else {
                got = f;
            }
        }
        assert_eq!(got.expect("frame").binary.len(), 300);
    }

    #[test]
    fn huge_headers_are_rejected_without_allocating() {
        for header in [
            [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0],
            [0, 0, 0, 2, 0xff, 0xff, 0xff, 0xff],
        ] {
            let mut buf = BytesMut::from(&header[..]);
            let cap_before = buf.capacity();
            let err = StepCodec::default()
                .decode(&mut buf)
                .expect_err("must fail");
            assert!(
                matches!(
                    err,
                    CodecError::JsonTooLong { .. } | CodecError::BinaryTooLong { .. }
                ),
                "{err}"
            );
            assert_eq!(buf.capacity(), cap_before, "nothing reserved");
        }
    }

    #[test]
    fn caps_are_inclusive_and_configurable() {
        let mut codec = StepCodec::new(10, 4);
        let mut ok = encode_frame(b"0123456789", b"abcd");
        assert!(codec.decode(&mut ok).expect("decode").is_some());
        let mut too_long = encode_frame(b"01234567890", b"");
        assert!(codec.decode(&mut too_long).is_err());
        let mut too_big = encode_frame(b"{}", b"abcde");
        assert!(codec.decode(&mut too_big).is_err());
        let mut out = BytesMut::new();
        let big = Message::new(Map::new()).with_binary(Bytes::from_static(b"abcde"));
        assert!(codec.encode(&big, &mut out).is_err());
        assert!(out.is_empty(), "a refused encode leaves nothing behind");
    }

    #[test]
    fn eof_mid_frame_is_an_error_and_clean_eof_is_not() {
        let mut codec = StepCodec::default();
        let mut empty = BytesMut::new();
        assert!(codec.decode_eof(&mut empty).expect("clean eof").is_none());
        let mut partial = encode_frame(b"{}", b"xyz");
        partial.truncate(9);
        assert!(matches!(
            codec.decode_eof(&mut partial),
            Err(CodecError::Truncated { buffered: 9 })
        ));
    }

    #[test]
    fn message_encoding_counts_bytes_and_escapes_non_ascii() {
        let mut fields = Map::new();
        fields.insert("key".into(), json!("otter-é-🦦.jpg"));
        let msg = Message::new(fields).with_binary(Bytes::from_static(b"hi"));
        let mut buf = BytesMut::new();
        StepCodec::default().encode(&msg, &mut buf).expect("encode");
        let json_len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let json = &buf[8..8 + json_len];
        assert!(json.is_ascii());
        assert_eq!(&buf[8 + json_len..], b"hi");
        let frame = StepCodec::default()
            .decode(&mut buf)
            .expect("decode")
            .expect("frame");
        let back = Message::from_frame(frame).expect("parse");
        assert_eq!(back, msg);
    }

    /// Decode `chunks` with a [`RequestCodec`] that reads the body of every
    /// head whose JSON is `read_me`; returns what it yielded.
    fn split_decode(chunks: &[&[u8]], read_me: &[u8]) -> Vec<RequestPart> {
        let mut codec = RequestCodec::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(part) = codec.decode(&mut buf).expect("decode") {
                if let RequestPart::Head { json, .. } = &part
                    && &json[..] == read_me
                {
                    codec.read_body();
                }
                out.push(part);
            }
        }
        assert!(codec.decode_eof(&mut buf).expect("clean end").is_none());
        out
    }

    #[test]
    fn request_codec_yields_heads_and_only_the_bodies_asked_for() {
        let mut stream = encode_frame(br#"{"skip":1}"#, &[1u8; 300]);
        stream.extend_from_slice(&encode_frame(br#"{"read":1}"#, &[2u8; 70]));
        stream.extend_from_slice(&encode_frame(br#"{"none":1}"#, b""));
        stream.extend_from_slice(&encode_frame(br#"{"skip":2}"#, &[3u8; 5]));
        let whole = stream.freeze();
        let expected = vec![
            RequestPart::Head {
                json: Bytes::from_static(br#"{"skip":1}"#),
                binary_len: 300,
            },
            RequestPart::Head {
                json: Bytes::from_static(br#"{"read":1}"#),
                binary_len: 70,
            },
            RequestPart::Body(Bytes::from(vec![2u8; 70])),
            RequestPart::Head {
                json: Bytes::from_static(br#"{"none":1}"#),
                binary_len: 0,
            },
            RequestPart::Head {
                json: Bytes::from_static(br#"{"skip":2}"#),
                binary_len: 5,
            },
        ];
        for cut in 0..=whole.len() {
            let got = split_decode(&[&whole[..cut], &whole[cut..]], br#"{"read":1}"#);
            assert_eq!(got, expected, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(split_decode(&bytes, br#"{"read":1}"#), expected);
    }

    #[test]
    fn request_codec_skips_without_buffering_the_body() {
        let mut codec = RequestCodec::default();
        let mut buf = encode_frame(br#"{"a":1}"#, b"");
        buf[4..8].copy_from_slice(&(DEFAULT_MAX_BINARY as u32).to_be_bytes());
        let head = codec.decode(&mut buf).expect("decode").expect("head");
        assert_eq!(
            head,
            RequestPart::Head {
                json: Bytes::from_static(br#"{"a":1}"#),
                binary_len: DEFAULT_MAX_BINARY
            }
        );
        // The body arrives in pieces and is dropped as it comes.
        let piece = vec![0u8; 100_000];
        let mut fed = 0;
        while fed < DEFAULT_MAX_BINARY {
            let n = piece.len().min(DEFAULT_MAX_BINARY - fed);
            buf.extend_from_slice(&piece[..n]);
            fed += n;
            assert!(codec.decode(&mut buf).expect("decode").is_none());
            assert!(buf.is_empty(), "nothing of the body is kept");
            assert!(buf.capacity() <= 2 * SKIP_READ_CHUNK + piece.len());
        }
        assert!(codec.decode_eof(&mut buf).expect("clean").is_none());
    }

    #[test]
    fn request_codec_announces_large_json_before_buffering_it() {
        let mut codec = RequestCodec::default().with_json_allowance(8);
        let mut buf = encode_frame(br#"{"a":"0123456789"}"#, b"xy");
        buf.extend_from_slice(&encode_frame(b"{}", b""));
        let whole = buf.clone();
        buf.truncate(HEADER_LEN);
        let cap_before = buf.capacity();
        assert_eq!(
            codec.decode(&mut buf).expect("decode"),
            Some(RequestPart::LargeHead { json_len: 18 })
        );
        assert_eq!(buf.capacity(), cap_before, "nothing reserved for it yet");
        // Once announced, the same frame proceeds as usual.
        assert!(codec.decode(&mut buf).expect("decode").is_none());
        buf.extend_from_slice(&whole[HEADER_LEN..]);
        assert!(matches!(
            codec.decode(&mut buf).expect("decode"),
            Some(RequestPart::Head { binary_len: 2, .. })
        ));
        // Small JSON parts are not announced.
        assert_eq!(
            codec.decode(&mut buf).expect("decode"),
            Some(RequestPart::Head {
                json: Bytes::from_static(b"{}"),
                binary_len: 0
            })
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn request_codec_caps_and_truncation() {
        let mut codec = RequestCodec::new(StepCodec::new(10, 4));
        let mut too_big = BytesMut::from(&[0u8, 0, 0, 2, 0, 0, 0, 5][..]);
        let cap_before = too_big.capacity();
        assert!(matches!(
            codec.decode(&mut too_big),
            Err(CodecError::BinaryTooLong { len: 5, .. })
        ));
        assert_eq!(too_big.capacity(), cap_before, "nothing reserved");

        let mut codec = RequestCodec::default();
        let mut partial = encode_frame(b"{}", b"xyz");
        partial.truncate(11);
        assert!(codec.decode(&mut partial).expect("head").is_some());
        assert_eq!(codec.read_body(), Some(3));
        assert!(matches!(
            codec.decode_eof(&mut partial),
            Err(CodecError::Truncated { buffered: 1 })
        ));
        // A whole next head is buffered only once any body before it is gone.
        let mut codec = RequestCodec::default();
        let mut two = encode_frame(b"{}", b"abc");
        two.extend_from_slice(&encode_frame(b"{}", b""));
        assert!(codec.head_buffered(&two));
        assert!(codec.decode(&mut two).expect("head").is_some());
        assert!(!codec.head_buffered(&two), "its body is still to skip");
        assert!(codec.decode(&mut two).expect("head").is_some());
        assert!(!codec.head_buffered(&two), "nothing left");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<u64>().prop_map(|n| json!(n)),
            ".*".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".*", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn random_messages_round_trip_through_any_split(
            fields in prop::collection::btree_map(".*", arb_json(), 0..8),
            binary in prop::collection::vec(any::<u8>(), 0..2048),
            cut in any::<prop::sample::Index>(),
        ) {
            let msg = Message::new(fields.into_iter().collect()).with_binary(Bytes::from(binary));
            let mut codec = StepCodec::default();
            let mut wire = BytesMut::new();
            codec.encode(&msg, &mut wire).expect("encode");
            let json_len = u32::from_be_bytes([wire[0], wire[1], wire[2], wire[3]]) as usize;
            prop_assert!(wire[8..8 + json_len].is_ascii());
            let cut = cut.index(wire.len() + 1);
            let mut buf = BytesMut::from(&wire[..cut]);
            let first = codec.decode(&mut buf).expect("decode");
            let frame = match first {
                Some(f) => f,
                None => {
                    buf.extend_from_slice(&wire[cut..]);
                    codec.decode(&mut buf).expect("decode").expect("whole frame")
                }
            };
            prop_assert!(buf.is_empty());
            let back = Message::from_frame(frame).expect("parse");
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
            let mut codec = StepCodec::new(256, 256);
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(frame)) = codec.decode(&mut buf) {
                if let Ok(msg) = Message::from_frame(frame) {
                    parse_like_the_server(&msg);
                }
            }
        }

        /// Well-framed JSON objects whose reserved fields hold any JSON value:
        /// the parser and accessors never panic, and a message survives our
        /// writer and the decoder unchanged.
        #[test]
        fn random_requests_parse_and_round_trip(
            fields in prop::collection::btree_map(reserved_or_any(), arb_json(), 0..10),
            binary in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let msg = Message::new(fields.into_iter().collect()).with_binary(Bytes::from(binary));
            let mut codec = StepCodec::default();
            let mut wire = BytesMut::new();
            codec.encode(&msg, &mut wire).expect("encode");
            let frame = codec.decode(&mut wire).expect("decode").expect("frame");
            let back = Message::from_frame(frame).expect("parse");
            parse_like_the_server(&back);
            prop_assert_eq!(back, msg);
        }
    }

    fn reserved_or_any() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(RESERVED).prop_map(str::to_owned),
            ".{0,12}",
        ]
    }

    const RESERVED: &[&str] = &[
        "operation",
        "type",
        "direction",
        "status",
        "status_msg",
        "username",
        "password",
        "token",
        "key",
        "size",
        "block_index",
        "block_size",
        "total_block",
        "md5",
        "resume",
    ];

    /// What the server does with a parsed frame before dispatch.
    fn parse_like_the_server(msg: &Message) {
        for &name in RESERVED {
            let _ = msg.str_field(name);
            let _ = msg.int_field(name);
            let _ = msg.bool_field(name);
        }
        let _ = msg.status_code();
        let _ = msg.status_msg();
        if let Err(rejection) = crate::message::RequestHead::parse(msg) {
            let mut out = BytesMut::new();
            StepCodec::default()
                .encode(&rejection.into_message(), &mut out)
                .expect("a rejection encodes");
        }
    }

    /// Inputs found by `cargo fuzz` (fuzz/run.sh), kept so they stay fixed.
    mod fuzz_regressions {
        use super::*;

        /// fuzz target `request`, crash-64b972321c343388625868e491abbb3e2ab51d60:
        /// a 78-digit number parsed to an f64 one ulp off the correctly rounded
        /// value, so a DATA record did not read back as it was written.
        /// Fixed by serde_json's `float_roundtrip` feature.
        #[test]
        fn long_decimal_floats_round_trip() {
            let number = format!("{}1", "4".repeat(77));
            let json = format!(r#"{{"o!px":[{number},{{"y":null}}]}}"#);
            let json = json.as_bytes();
            let mut wire = BytesMut::new();
            wire.put_u32(json.len() as u32);
            wire.put_u32(0);
            wire.extend_from_slice(json);
            let mut codec = StepCodec::default();
            let frame = codec.decode(&mut wire).expect("decode").expect("frame");
            let msg = Message::from_frame(frame).expect("parse");
            parse_like_the_server(&msg);
            let mut again = BytesMut::new();
            codec.encode(&msg, &mut again).expect("encode");
            let back = codec.decode(&mut again).expect("decode").expect("frame");
            assert_eq!(Message::from_frame(back).expect("parse"), msg);
            // Correctly rounded, as Rust's own parser (and Python's) does it.
            let exact: f64 = number.parse().expect("f64");
            assert_eq!(msg.fields["o!px"][0].as_f64(), Some(exact));
        }
    }
}
