//! The storage boundary of a node: the Raft log, hard state and the applied key space. The
//! server implements it on RocksDB; `MemStorage` here serves the simulation and tests.

use raft_kv_core::kv::{Key, Mutation, Session, Value};
use raft_kv_core::{Entry, HardState, LogIndex, RestoredState};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage I/O failed: {0}")]
    Io(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// Synchronous storage, called only from the task that owns the node.
pub trait Storage: Send + 'static {
    /// Everything needed to restart the node: hard state, log, applied index.
    fn load(&mut self) -> Result<RestoredState, StorageError>;

    /// Makes `hard_state` and the log change durable before returning: entries from `from` on
    /// are replaced by `entries`.
    fn persist(
        &mut self,
        hard_state: Option<HardState>,
        append: Option<(LogIndex, &[Entry])>,
    ) -> Result<(), StorageError>;

    /// Writes the mutations of entry `index` and records `index` as applied, atomically. Need
    /// not be durable: after a crash the log replays from the last applied index that survived.
    fn apply(&mut self, index: LogIndex, mutations: &[Mutation]) -> Result<(), StorageError>;

    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError>;

    /// The applied client session of `origin` (see `kv::admit`).
    fn session(&self, origin: u64) -> Result<Option<Session>, StorageError>;

    /// Durably increments and returns this node's run counter: every start gets a number
    /// larger than any earlier start's, so its client sessions never collide with theirs.
    fn next_incarnation(&mut self) -> Result<u64, StorageError>;

    /// Keys matching the Redis glob `pattern`, in key order, at most `limit`.
    fn keys(&self, pattern: &[u8], limit: usize) -> Result<Vec<Key>, StorageError>;

    /// Number of keys, for INFO.
    fn key_count(&self) -> Result<u64, StorageError>;
}

/// In-memory storage. The state sits behind an `Arc` so a harness can keep it across a
/// simulated crash and restart of the node that uses it.
#[derive(Clone, Default)]
pub struct MemStorage {
    inner: Arc<Mutex<MemState>>,
}

#[derive(Default, Debug)]
struct MemState {
    hard_state: HardState,
    entries: Vec<Entry>,
    applied: LogIndex,
    kv: BTreeMap<Key, Value>,
    sessions: BTreeMap<u64, Session>,
    incarnation: u64,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The applied key space, for checks in tests.
    pub fn snapshot_kv(&self) -> BTreeMap<Key, Value> {
        self.state().kv.clone()
    }
}

impl Storage for MemStorage {
    fn load(&mut self) -> Result<RestoredState, StorageError> {
        let s = self.state();
        Ok(RestoredState {
            hard_state: s.hard_state,
            entries: s.entries.clone(),
            applied: s.applied,
        })
    }

    fn persist(
        &mut self,
        hard_state: Option<HardState>,
        append: Option<(LogIndex, &[Entry])>,
    ) -> Result<(), StorageError> {
        let mut s = self.state();
        if let Some(hs) = hard_state {
            s.hard_state = hs;
        }
        if let Some((from, entries)) = append {
            let keep = (from.0.saturating_sub(1) as usize).min(s.entries.len());
            s.entries.truncate(keep);
            s.entries.extend_from_slice(entries);
        }
        Ok(())
    }

    fn apply(&mut self, index: LogIndex, mutations: &[Mutation]) -> Result<(), StorageError> {
        let mut s = self.state();
        for m in mutations {
            match m {
                Mutation::Put(k, v) => s.kv.insert(k.clone(), v.clone()),
                Mutation::Delete(k) => s.kv.remove(k),
                Mutation::Session(origin, session) => {
                    s.sessions.insert(*origin, *session);
                    None
                }
            };
        }
        s.applied = index;
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        Ok(self.state().kv.get(key).cloned())
    }

    fn session(&self, origin: u64) -> Result<Option<Session>, StorageError> {
        Ok(self.state().sessions.get(&origin).copied())
    }

    fn next_incarnation(&mut self) -> Result<u64, StorageError> {
        let mut s = self.state();
        s.incarnation += 1;
        Ok(s.incarnation)
    }

    fn keys(&self, pattern: &[u8], limit: usize) -> Result<Vec<Key>, StorageError> {
        let s = self.state();
        Ok(s.kv
            .keys()
            .filter(|k| raft_kv_core::glob::matches(pattern, k))
            .take(limit)
            .cloned()
            .collect())
    }

    fn key_count(&self) -> Result<u64, StorageError> {
        Ok(self.state().kv.len() as u64)
    }
}
