//! Object names: users and keys encoded into path segments of lowercase
//! letters only — nothing `object_store`'s `Path` rejects or escapes, never
//! `.`/`..`, never empty. Key segments keep byte order and prefixes (a hex
//! variant), so LIST of `meta/<user>/` returns files in key order and a key
//! prefix is a segment prefix; keys over [`KEY_ORDERED_BYTES`] keep those
//! first bytes in order and end in a hash (object names must stay short:
//! 1024 bytes on AWS, about 470 on Garage), and the listing re-sorts those
//! few by their real key. Users over [`USER_PLAIN_BYTES`] are hashed.

use sha2::{Digest, Sha256};

use crate::store::files::Key;

/// Key bytes kept in order in a key's segment; longer keys end in a hash.
/// Small enough that a whole object name stays well under what S3 servers
/// take: AWS allows 1024 bytes, Garage on LMDB about 470 (its index key,
/// with the bucket id, is limited to 511 bytes; found by the contract suite).
pub(super) const KEY_ORDERED_BYTES: usize = 96;
/// Users up to this many bytes are kept readable-ish; longer ones hashed.
const USER_PLAIN_BYTES: usize = 32;

/// Order-preserving hex with the alphabet `b..=q`: every byte is two
/// letters, so byte order is string order; `a` (below) and `x`, `z` (above)
/// stay free for bounds and markers.
fn nibbles(bytes: &[u8], out: &mut String) {
    for b in bytes {
        out.push(char::from(b'b' + (b >> 4)));
        out.push(char::from(b'b' + (b & 0x0f)));
    }
}

/// A user's path segment (injective; order does not matter for users).
pub(super) fn user_seg(user: &str) -> String {
    let mut out = String::with_capacity(1 + 2 * USER_PLAIN_BYTES);
    if user.len() <= USER_PLAIN_BYTES {
        out.push('u');
        nibbles(user.as_bytes(), &mut out);
    } else {
        out.push('x');
        nibbles(&Sha256::digest(user.as_bytes()), &mut out);
    }
    out
}

/// The part of a key segment that sorts: `k` and the first
/// [`KEY_ORDERED_BYTES`] bytes of `key`.
pub(super) fn key_seg_ordered(key: &[u8]) -> String {
    let head = &key[..key.len().min(KEY_ORDERED_BYTES)];
    let mut out = String::with_capacity(2 + 2 * head.len() + 64);
    out.push('k');
    nibbles(head, &mut out);
    out
}

/// A key's path segment: injective, in key order for keys up to
/// [`KEY_ORDERED_BYTES`]; longer keys sharing those first bytes form a
/// group (`<ordered>x<hash>`) that sorts after all of them but in hash order.
pub(super) fn key_seg(key: &str) -> String {
    let mut out = key_seg_ordered(key.as_bytes());
    if key.len() > KEY_ORDERED_BYTES {
        out.push('x');
        nibbles(&Sha256::digest(key.as_bytes()), &mut out);
    }
    out
}

/// `user`'s `key` with its segments.
pub(super) fn names(user: &str, key: &str) -> Key {
    Key {
        user: user.to_owned(),
        key: key.to_owned(),
        id: (user_seg(user), key_seg(key)),
    }
}

/// A file key's name at the coordinator (its lease, its current upload,
/// its pointer to the current version).
pub(super) fn lease_name(n: &Key) -> String {
    file_pointer(&n.id.0, &n.id.1)
}

/// [`lease_name`] from a user's and a key's segments.
pub(super) fn file_pointer(us: &str, ks: &str) -> String {
    format!("f/{us}/{ks}")
}

/// A record key's name at the coordinator (its lease, its pointer).
pub(super) fn record_lease_name(n: &Key) -> String {
    record_pointer(&n.id.0, &n.id.1)
}

/// [`record_lease_name`] from a user's and a key's segments.
pub(super) fn record_pointer(us: &str, ks: &str) -> String {
    format!("r/{us}/{ks}")
}
