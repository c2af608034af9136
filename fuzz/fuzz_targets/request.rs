//! The request parser: `Message::from_frame`, `RequestHead::parse` and the
//! typed field accessors, on an arbitrary JSON part and binary part.
//!
//! Input: 1 control byte (how much of the tail is the binary part), then the
//! bytes. Properties: nothing panics; a rejection becomes a response that
//! encodes as ASCII JSON; any message that parses re-encodes, decodes and
//! parses back to an equal message (our ASCII-escaping writer loses nothing).
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use step_core::Message;
use step_core::codec::{Frame, HEADER_LEN, StepCodec};
use step_core::message::{RequestHead, field};
use tokio_util::codec::{Decoder, Encoder};

const FIELDS: &[&str] = &[
    field::OPERATION,
    field::TYPE,
    field::DIRECTION,
    field::STATUS,
    field::STATUS_MSG,
    field::USERNAME,
    field::PASSWORD,
    field::TOKEN,
    field::KEY,
    field::SIZE,
    field::BLOCK_INDEX,
    field::BLOCK_SIZE,
    field::TOTAL_BLOCK,
    field::MD5,
    field::RESUME,
];

fn ascii_json_of(msg: &Message) -> Vec<u8> {
    let mut codec = StepCodec::new(64 << 20, 64 << 20);
    let mut out = BytesMut::new();
    codec
        .encode(msg, &mut out)
        .expect("a parsed message encodes");
    let json_len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
    let json = &out[HEADER_LEN..HEADER_LEN + json_len];
    assert!(
        json.is_ascii(),
        "responses must be ASCII so length = characters"
    );
    out.to_vec()
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let bin_len = usize::from(ctl).min(rest.len());
    let (json, binary) = rest.split_at(rest.len() - bin_len);
    let frame = Frame {
        json: Bytes::copy_from_slice(json),
        binary: Bytes::copy_from_slice(binary),
    };
    let Ok(msg) = Message::from_frame(frame) else {
        return;
    };
    for &name in FIELDS {
        let _ = msg.str_field(name);
        let _ = msg.int_field(name);
        let _ = msg.bool_field(name);
    }
    let _ = msg.status_code();
    let _ = msg.status_msg();
    match RequestHead::parse(&msg) {
        Ok(head) => {
            assert_eq!(
                msg.get(field::DIRECTION).and_then(|v| v.as_str()),
                Some("REQUEST")
            );
            assert_eq!(
                msg.get(field::OPERATION).and_then(|v| v.as_str()),
                Some(head.operation.as_str())
            );
            assert_eq!(
                msg.get(field::TYPE).and_then(|v| v.as_str()),
                Some(head.kind.as_str())
            );
        }
        Err(rejection) => {
            let resp = rejection.into_message();
            assert!(resp.status_code().is_some());
            ascii_json_of(&resp);
        }
    }
    // Round trip through our writer and the decoder.
    let wire = ascii_json_of(&msg);
    let mut buf = BytesMut::from(&wire[..]);
    let back = StepCodec::new(64 << 20, 64 << 20)
        .decode(&mut buf)
        .expect("decode")
        .expect("whole frame");
    assert!(buf.is_empty());
    let back = Message::from_frame(back).expect("our own JSON parses");
    assert_eq!(back, msg, "re-encoding changed the message");
});
