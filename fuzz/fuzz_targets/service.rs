//! `Service::handle` on a real store in a temp directory.
//!
//! Input: 1 control byte, then the JSON part; the binary part is the last
//! `ctl & 0x7f` bytes. When bit 7 of the control byte is set and the JSON is an
//! object, a valid token for user "fuzz" is put in, so the fuzzer gets past
//! authentication into the DATA and FILE handlers (it cannot forge the HMAC).
//! The store persists across inputs, so sequences of SAVE/UPLOAD/GET build on
//! one another. Properties: nothing panics (libFuzzer aborts on a panic, also
//! one inside `spawn_blocking`); every reply is a RESPONSE with a status from
//! the table and encodes as ASCII JSON within the default caps.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use step_core::codec::{Frame, StepCodec};
use step_core::message::field;
use step_core::token::TokenKey;
use step_core::{Message, Status};
use step_server::Service;
use step_server::service::Limits;
use step_server::store::Store;
use tokio_util::codec::Encoder;

struct World {
    rt: tokio::runtime::Runtime,
    service: Arc<Service>,
    token: String,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        // fuzz/run.sh removes these directories after a run.
        let dir = std::env::temp_dir().join(format!("step-fuzz-service-{}", std::process::id()));
        let store = Store::open(&dir).expect("open store");
        let tokens = TokenKey::new(b"fuzz-secret", 86_400);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let token = tokens.mint("fuzz", now);
        // Small caps: sparse files stay small and every cap is reachable.
        let limits = Limits {
            max_key_len: 64,
            max_username_len: 64,
            max_file_size: 1 << 20,
            max_block_size: 64 << 10,
            ..Limits::default()
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        World {
            rt,
            service: Arc::new(Service::new(store, tokens, limits)),
            token,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let w = world();
    let bin_len = usize::from(ctl & 0x7f).min(rest.len());
    let (json, binary) = rest.split_at(rest.len() - bin_len);
    let mut json = Bytes::copy_from_slice(json);
    if ctl & 0x80 != 0
        && let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(&json)
    {
        fields.insert(field::TOKEN.into(), Value::String(w.token.clone()));
        json = Bytes::from(serde_json::to_vec(&fields).expect("serialise"));
    }
    let frame = Frame {
        json,
        binary: Bytes::copy_from_slice(binary),
    };
    let reply = w.rt.block_on(w.service.handle(frame));
    let msg = reply.message;
    assert_eq!(
        msg.get(field::DIRECTION),
        Some(&Value::String("RESPONSE".into()))
    );
    let code = msg.status_code().expect("numeric status");
    assert!(
        Status::from_code(code).is_some(),
        "status {code} is not in the table"
    );
    let mut out = BytesMut::new();
    StepCodec::default()
        .encode(&msg, &mut out)
        .expect("reply fits the default caps");
    let json_len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
    assert!(out[8..8 + json_len].is_ascii());
    let _ = Message::from_frame(Frame {
        json: out.split_off(8).split_to(json_len).freeze(),
        binary: Bytes::new(),
    })
    .expect("reply parses");
});
