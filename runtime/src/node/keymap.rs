//! A map of keys kept as many small hash tables. A hash table grows by doubling and moves
//! every entry at once: on the node task, a set of 1,835,008 keys took 535 ms to grow and one
//! of 3,670,016 took 1.18 s (measured alone; longer beside a busy cluster), long enough that
//! during a bulk load the followers stopped hearing from the leader and elected another, at
//! exactly those sizes of the collection index. Split over `SHARDS` tables, each grows on its
//! own: the slowest insert of 3.7M keys took 1.7 ms.

use raft_kv_core::kv::Key;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};

const SHARDS: usize = 1024;

pub(super) struct KeyMap<V> {
    /// Empty until the first insert (an empty table allocates nothing).
    shards: Vec<HashMap<Key, V>>,
    len: usize,
}

/// The keys of a set; the value is nothing.
pub(super) type KeySet = KeyMap<()>;

impl<V> Default for KeyMap<V> {
    fn default() -> Self {
        KeyMap { shards: Vec::new(), len: 0 }
    }
}

/// The shard of `key`: a fixed hash (each shard's table hashes with its own random keys), so
/// a run of the simulation picks the same shards every time.
fn shard(key: &[u8]) -> usize {
    (BuildHasherDefault::<DefaultHasher>::default().hash_one(key) % SHARDS as u64) as usize
}

impl<V> KeyMap<V> {
    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn contains_key(&self, key: &[u8]) -> bool {
        !self.shards.is_empty() && self.shards[shard(key)].contains_key(key)
    }

    pub(super) fn insert(&mut self, key: Key, value: V) -> Option<V> {
        if self.shards.is_empty() {
            self.shards.resize_with(SHARDS, HashMap::new);
        }
        let old = self.shards[shard(&key)].insert(key, value);
        self.len += usize::from(old.is_none());
        old
    }

    pub(super) fn remove(&mut self, key: &[u8]) -> Option<V> {
        if self.shards.is_empty() {
            return None;
        }
        let old = self.shards[shard(key)].remove(key);
        self.len -= usize::from(old.is_some());
        old
    }

    pub(super) fn clear(&mut self) {
        self.shards = Vec::new();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_inserts_and_removes_once_each() {
        let mut m = KeyMap::default();
        assert_eq!(m.remove(b"a"), None);
        assert!(!m.contains_key(b"a"));
        for i in 0..5000u32 {
            assert_eq!(m.insert(i.to_be_bytes().to_vec(), i), None);
        }
        assert_eq!(m.insert(7u32.to_be_bytes().to_vec(), 70), Some(7));
        assert_eq!(m.len(), 5000);
        assert!(m.contains_key(&7u32.to_be_bytes()));
        assert_eq!(m.remove(&7u32.to_be_bytes()), Some(70));
        assert_eq!(m.remove(&7u32.to_be_bytes()), None);
        assert!(!m.contains_key(&7u32.to_be_bytes()));
        assert_eq!(m.len(), 4999);
        assert!(m.shards.iter().filter(|s| !s.is_empty()).count() > SHARDS / 2);
        m.clear();
        assert_eq!(m.len(), 0);
        assert!(!m.contains_key(&8u32.to_be_bytes()));
    }
}
