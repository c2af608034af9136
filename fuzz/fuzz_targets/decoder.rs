//! The frame decoder on arbitrary bytes cut at arbitrary points.
//!
//! Input: 3 control bytes, then the byte stream. Control byte 0 picks the
//! caps (the defaults, or tiny ones so the cap checks are reached often),
//! bytes 1–2 seed where the stream is cut. Properties:
//! * decoding never panics;
//! * the stream cut anywhere decodes to the same frames and ends the same way
//!   (clean, truncated, or the same cap error) as the stream in one piece;
//! * decoded frames re-encode to exactly the bytes they came from;
//! * the server's `RequestCodec` (head first, then the body on request),
//!   asked for every body, yields the same frames from the cut stream.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use step_core::codec::{CodecError, Frame, RequestCodec, RequestPart, StepCodec};
use tokio_util::codec::{Decoder, Encoder};

#[derive(Debug, PartialEq, Eq)]
enum End {
    Clean,
    Truncated(usize),
    JsonTooLong(u64),
    BinaryTooLong(u64),
}

fn end_of(e: CodecError) -> End {
    match e {
        CodecError::Truncated { buffered } => End::Truncated(buffered),
        CodecError::JsonTooLong { len, .. } => End::JsonTooLong(len),
        CodecError::BinaryTooLong { len, .. } => End::BinaryTooLong(len),
        other => panic!("decoder produced an unexpected error: {other}"),
    }
}

/// Feed `chunks` in order, as a connection would, stopping at the first error.
fn decode_all(mut codec: StepCodec, chunks: &[&[u8]]) -> (Vec<Frame>, End) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, end_of(e)),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return (frames, End::Clean),
            Err(e) => return (frames, end_of(e)),
        }
    }
}

/// The same, through the server's two-step decoder, reading every body.
fn decode_in_parts(codec: StepCodec, chunks: &[&[u8]]) -> Vec<Frame> {
    let mut parts = RequestCodec::new(codec);
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut pending: Option<Bytes> = None;
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match parts.decode(&mut buf) {
                Ok(Some(RequestPart::Head { json, binary_len })) => {
                    assert!(pending.is_none(), "a head before the previous body");
                    if binary_len == 0 {
                        frames.push(Frame {
                            json,
                            binary: Bytes::new(),
                        });
                    } else {
                        assert_eq!(parts.read_body(), Some(binary_len));
                        pending = Some(json);
                    }
                }
                Ok(Some(RequestPart::Body(binary))) => {
                    let json = pending.take().expect("a body follows its head");
                    frames.push(Frame { json, binary });
                }
                Ok(None) => break,
                Err(_) => return frames,
            }
        }
    }
    frames
}

fn cuts(stream: &[u8], seed: u16) -> Vec<&[u8]> {
    let mut x = u32::from(seed) | 0x1_0000;
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        // Mostly small pieces (headers split mid-way), sometimes big ones.
        let n = if x % 4 == 0 {
            (x >> 8) as usize % 4096
        } else {
            (x >> 8) as usize % 9
        };
        let n = n.clamp(1, rest.len());
        let (a, b) = rest.split_at(n);
        out.push(a);
        rest = b;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((ctl, stream)) = data.split_first_chunk::<3>() else {
        return;
    };
    let codec = if ctl[0] < 128 {
        StepCodec::default()
    } else {
        StepCodec::new(usize::from(ctl[0] & 0x3f), usize::from(ctl[1] & 0x3f))
    };
    let (whole, end) = decode_all(codec, &[stream]);
    let (split, split_end) = decode_all(codec, &cuts(stream, u16::from_be_bytes([ctl[1], ctl[2]])));
    assert_eq!(whole, split, "cutting the stream changed the frames");
    assert_eq!(end, split_end, "cutting the stream changed how it ends");
    assert_eq!(
        decode_in_parts(codec, &cuts(stream, u16::from_be_bytes([ctl[2], ctl[1]]))),
        whole,
        "the two-step decoder disagrees"
    );

    let mut out = BytesMut::new();
    let mut enc = codec;
    for f in &whole {
        assert!(f.json.len() <= codec.max_json() && f.binary.len() <= codec.max_binary());
        enc.encode(f.clone(), &mut out)
            .expect("a decoded frame re-encodes");
    }
    assert_eq!(
        &out[..],
        &stream[..out.len()],
        "re-encoding is not byte-identical"
    );
    match end {
        End::Clean => assert_eq!(out.len(), stream.len()),
        End::Truncated(n) => assert_eq!(out.len() + n, stream.len()),
        End::JsonTooLong(len) => assert!(len > codec.max_json() as u64),
        End::BinaryTooLong(len) => assert!(len > codec.max_binary() as u64),
    }
});
