//! What one STEP connection remembers between its requests: for each key
//! it wrote to, the upload its blocks belong to.
//!
//! Course clients send UPLOADs without `upload_id`. Without this, a block
//! goes to whatever upload the key has when it arrives, so a client whose
//! upload another writer's SAVE started over would fill that writer's
//! upload with its own blocks — and the file would hold a mix nobody wrote.
//! The connection instead binds a key to an upload: its SAVE binds it to
//! the upload that SAVE started (or resumed); a connection that did not
//! SAVE is bound at its first block to the key's upload then (a client
//! sending one upload over several connections). A block whose key's
//! upload is no longer the bound one is refused as superseded.
//!
//! Bounded: a connection remembers [`MAX_KEYS`] keys, forgetting the one
//! bound longest ago; a forgotten key is bound again at its next block, as
//! on a fresh connection.

use std::collections::VecDeque;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Mutex;

/// Keys one connection remembers.
pub const MAX_KEYS: usize = 64;

/// One connection's bindings. Its requests are answered in order over TCP;
/// in process (the gateway) several may run at once, hence the lock (held
/// only to read or change the list, never across an await).
#[derive(Debug, Default)]
pub struct ConnState {
    /// (hash of user and key, upload id), oldest first. A hash rather than
    /// the names keeps the state small whatever the key's length; a
    /// collision could only refuse this connection's own block.
    bound: Mutex<VecDeque<(u64, String)>>,
    /// Seeded per connection: nobody outside can aim for a collision.
    seed: RandomState,
}

impl ConnState {
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, user: &str, key: &str) -> u64 {
        self.seed.hash_one((user, key))
    }

    fn with<T>(&self, f: impl FnOnce(&mut VecDeque<(u64, String)>) -> T) -> T {
        f(&mut self.bound.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The upload `user`'s `key` is bound to on this connection.
    pub fn bound(&self, user: &str, key: &str) -> Option<String> {
        let h = self.slot(user, key);
        self.with(|b| b.iter().find(|(k, _)| *k == h).map(|(_, id)| id.clone()))
    }

    /// Bind `user`'s `key` to upload `id` (in place of any earlier one).
    pub fn bind(&self, user: &str, key: &str, id: &str) {
        let h = self.slot(user, key);
        self.with(|b| {
            b.retain(|(k, _)| *k != h);
            if b.len() >= MAX_KEYS {
                b.pop_front();
            }
            b.push_back((h, id.to_owned()));
        });
    }

    /// The upload a block of `user`'s `key` is for: the one it names
    /// (`named`), else the one this connection is bound to, else — binding
    /// the key now — the key's current upload.
    pub fn target(
        &self,
        user: &str,
        key: &str,
        named: Option<String>,
        current: Option<&str>,
    ) -> Option<String> {
        if named.is_some() {
            return named;
        }
        if let Some(id) = self.bound(user, key) {
            return Some(id);
        }
        let current = current?;
        self.bind(user, key, current);
        Some(current.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_per_user_and_key_and_forgets_the_oldest() {
        let c = ConnState::new();
        assert_eq!(c.target("u", "k", None, Some("a")).as_deref(), Some("a"));
        // Bound: the key's upload changing does not move the binding.
        assert_eq!(c.target("u", "k", None, Some("b")).as_deref(), Some("a"));
        assert_eq!(c.target("v", "k", None, Some("b")).as_deref(), Some("b"));
        assert_eq!(
            c.target("u", "k", Some("n".into()), Some("b")).as_deref(),
            Some("n")
        );
        c.bind("u", "k", "c");
        assert_eq!(c.bound("u", "k").as_deref(), Some("c"));
        for i in 0..MAX_KEYS {
            c.bind("u", &format!("other{i}"), "x");
        }
        assert_eq!(c.bound("u", "k"), None, "the oldest is forgotten");
        assert_eq!(c.with(|b| b.len()), MAX_KEYS);
    }
}
