//! RocksDB storage for a node: column families for the Raft log, Raft metadata and the KV data.
//! Log and hard-state writes are synced before `persist` returns; applying an entry writes its
//! KV changes and the applied index in one atomic batch. Every byte read back is validated:
//! a corrupt or foreign data directory is refused with a clear error, never a panic.

use raft_kv_core::kv::{Key, Mutation, Session, Value};
use raft_kv_core::{Entry, HardState, LogIndex, RestoredState};
use raft_kv_runtime::codec;
use raft_kv_runtime::storage::{Storage, StorageError};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, IteratorMode, Options, WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

const CF_LOG: &str = "raft_log";
const CF_META: &str = "raft_meta";
const CF_KV: &str = "kv";

const KEY_IDENTITY: &[u8] = b"identity";
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_APPLIED: &[u8] = b"applied_index";
const KEY_INCARNATION: &[u8] = b"incarnation";

fn session_key(origin: u64) -> Vec<u8> {
    let mut k = b"session/".to_vec();
    k.extend_from_slice(&origin.to_be_bytes());
    k
}

/// Which node of which cluster a data directory belongs to; written once when it is created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub cluster_id: u64,
    pub node_id: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open data directory {path}: {source}")]
    Open { path: PathBuf, source: rocksdb::Error },
    #[error(
        "data directory {path} belongs to node {found_node} of cluster {found_cluster:#x}, but this is node {node} of cluster {cluster:#x} (a different --id or --cluster); refusing to start. Use another --data-dir, or remove it to start this node empty"
    )]
    Foreign { path: PathBuf, found_node: u64, found_cluster: u64, node: u64, cluster: u64 },
    #[error("data directory {path} is not a raft-kv data directory or is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

pub struct RocksStorage {
    db: DB,
    sync: WriteOptions,
    nosync: WriteOptions,
}

fn log_key(index: LogIndex) -> [u8; 8] {
    index.0.to_be_bytes()
}

fn io(e: rocksdb::Error) -> StorageError {
    StorageError::Io(e.to_string())
}

impl RocksStorage {
    /// Opens (or creates) the data directory of `identity`.
    pub fn open(path: &Path, identity: Identity) -> Result<RocksStorage, OpenError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let existed = path.join("CURRENT").exists();
        if path.exists()
            && !existed
            && path.read_dir().map(|mut d| d.next().is_some()).unwrap_or(true)
        {
            return Err(OpenError::Corrupt {
                path: path.to_owned(),
                reason: "the directory is not empty and holds no RocksDB database".into(),
            });
        }
        if existed {
            // Refuse a database that lacks our column families rather than silently adding them.
            let cfs = DB::list_cf(&opts, path)
                .map_err(|source| OpenError::Open { path: path.to_owned(), source })?;
            for cf in [CF_LOG, CF_META, CF_KV] {
                if !cfs.iter().any(|c| c == cf) {
                    return Err(OpenError::Corrupt {
                        path: path.to_owned(),
                        reason: format!("column family {cf} is missing"),
                    });
                }
            }
        }
        let cfs =
            [CF_LOG, CF_META, CF_KV].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|source| OpenError::Open { path: path.to_owned(), source })?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        let storage = RocksStorage { db, sync, nosync: WriteOptions::default() };
        let corrupt = |reason: String| OpenError::Corrupt { path: path.to_owned(), reason };
        match storage
            .db
            .get_cf(storage.cf(CF_META), KEY_IDENTITY)
            .map_err(|e| corrupt(e.to_string()))?
        {
            Some(bytes) => {
                let found: Identity =
                    codec::decode(&bytes).map_err(|e| corrupt(format!("identity record: {e}")))?;
                if found != identity {
                    return Err(OpenError::Foreign {
                        path: path.to_owned(),
                        found_node: found.node_id,
                        found_cluster: found.cluster_id,
                        node: identity.node_id,
                        cluster: identity.cluster_id,
                    });
                }
            }
            None if existed => return Err(corrupt("the identity record is missing".into())),
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(storage.cf(CF_META), KEY_IDENTITY, codec::encode(&identity));
                storage.db.write_opt(batch, &storage.sync).map_err(|e| corrupt(e.to_string()))?;
            }
        }
        Ok(storage)
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column families are checked at open")
    }
}

impl Storage for RocksStorage {
    fn load(&mut self) -> Result<RestoredState, StorageError> {
        let meta = self.cf(CF_META);
        let hard_state = match self.db.get_cf(meta, KEY_HARD_STATE).map_err(io)? {
            Some(b) => codec::decode::<HardState>(&b)
                .map_err(|e| StorageError::Corrupt(format!("hard state: {e}")))?,
            None => HardState::default(),
        };
        let applied = match self.db.get_cf(meta, KEY_APPLIED).map_err(io)? {
            Some(b) => {
                let raw: [u8; 8] = b
                    .as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("applied index is not 8 bytes".into()))?;
                LogIndex(u64::from_be_bytes(raw))
            }
            None => LogIndex(0),
        };
        let mut entries = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::Start) {
            let (k, v) = item.map_err(io)?;
            let entry = codec::decode::<Entry>(&v)
                .map_err(|e| StorageError::Corrupt(format!("log entry: {e}")))?;
            if *k != log_key(entry.index) {
                return Err(StorageError::Corrupt(format!(
                    "log entry {} is stored under another index",
                    entry.index
                )));
            }
            entries.push(entry);
        }
        let restored = RestoredState { hard_state, entries, applied };
        raft_kv_runtime::storage::validate(&restored)?;
        Ok(restored)
    }

    fn persist(
        &mut self,
        hard_state: Option<HardState>,
        append: Option<(LogIndex, &[Entry])>,
    ) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        if let Some(hs) = hard_state {
            batch.put_cf(self.cf(CF_META), KEY_HARD_STATE, codec::encode(&hs));
        }
        if let Some((from, entries)) = append {
            let log = self.cf(CF_LOG);
            batch.delete_range_cf(log, log_key(from), log_key(LogIndex(u64::MAX)));
            batch.delete_cf(log, log_key(LogIndex(u64::MAX)));
            for e in entries {
                batch.put_cf(log, log_key(e.index), codec::encode(e));
            }
        }
        self.db.write_opt(batch, &self.sync).map_err(io)
    }

    fn apply(&mut self, index: LogIndex, mutations: &[Mutation]) -> Result<(), StorageError> {
        let kv = self.cf(CF_KV);
        let mut batch = WriteBatch::default();
        for m in mutations {
            match m {
                Mutation::Put(k, v) => batch.put_cf(kv, k, v),
                Mutation::Delete(k) => batch.delete_cf(kv, k),
                Mutation::Session(origin, session) => {
                    batch.put_cf(self.cf(CF_META), session_key(*origin), codec::encode(session))
                }
            }
        }
        batch.put_cf(self.cf(CF_META), KEY_APPLIED, index.0.to_be_bytes());
        self.db.write_opt(batch, &self.nosync).map_err(io)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        self.db.get_cf(self.cf(CF_KV), key).map_err(io)
    }

    fn session(&self, origin: u64) -> Result<Option<Session>, StorageError> {
        match self.db.get_cf(self.cf(CF_META), session_key(origin)).map_err(io)? {
            Some(b) => codec::decode(&b)
                .map(Some)
                .map_err(|e| StorageError::Corrupt(format!("session record: {e}"))),
            None => Ok(None),
        }
    }

    fn next_incarnation(&mut self) -> Result<u64, StorageError> {
        let meta = self.cf(CF_META);
        let current = match self.db.get_cf(meta, KEY_INCARNATION).map_err(io)? {
            Some(b) => u64::from_be_bytes(
                b.as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Corrupt("incarnation is not 8 bytes".into()))?,
            ),
            None => 0,
        };
        let next = current + 1;
        let mut batch = WriteBatch::default();
        batch.put_cf(meta, KEY_INCARNATION, next.to_be_bytes());
        self.db.write_opt(batch, &self.sync).map_err(io)?;
        Ok(next)
    }

    fn keys(&self, pattern: &[u8], limit: usize) -> Result<Vec<Key>, StorageError> {
        let mut out = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_KV), IteratorMode::Start) {
            let (k, _) = item.map_err(io)?;
            if raft_kv_core::glob::matches(pattern, &k) {
                out.push(k.to_vec());
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    fn key_count(&self) -> Result<u64, StorageError> {
        Ok(self
            .db
            .property_int_value_cf(self.cf(CF_KV), "rocksdb.estimate-num-keys")
            .map_err(io)?
            .unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_kv_core::Term;

    fn id(node: u64) -> Identity {
        Identity { cluster_id: 7, node_id: node }
    }

    fn entry(i: u64, t: u64) -> Entry {
        Entry { index: LogIndex(i), term: Term(t), data: vec![i as u8] }
    }

    #[test]
    fn restart_restores_log_hard_state_and_applied_kv() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RocksStorage::open(dir.path(), id(1)).unwrap();
            let hs = HardState { term: Term(2), voted_for: Some(raft_kv_core::NodeId(1)) };
            s.persist(Some(hs), Some((LogIndex(1), &[entry(1, 1), entry(2, 1), entry(3, 2)])))
                .unwrap();
            // A conflicting suffix replaces entries from 3 on.
            s.persist(None, Some((LogIndex(3), &[entry(3, 2)]))).unwrap();
            s.apply(LogIndex(1), &[Mutation::Put(b"k".to_vec(), b"v\0".to_vec())]).unwrap();
            s.apply(LogIndex(2), &[Mutation::Delete(b"missing".to_vec())]).unwrap();
        }
        let mut s = RocksStorage::open(dir.path(), id(1)).unwrap();
        let r = s.load().unwrap();
        assert_eq!(r.hard_state.term, Term(2));
        assert_eq!(r.entries, vec![entry(1, 1), entry(2, 1), entry(3, 2)]);
        assert_eq!(r.applied, LogIndex(2));
        assert_eq!(s.get(b"k").unwrap(), Some(b"v\0".to_vec()));
        assert_eq!(s.keys(b"*", 10).unwrap(), vec![b"k".to_vec()]);
    }

    #[test]
    fn a_foreign_or_non_raft_kv_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(RocksStorage::open(dir.path(), id(1)).unwrap());
        let err = RocksStorage::open(dir.path(), id(2)).err().expect("must refuse");
        assert!(matches!(err, OpenError::Foreign { found_node: 1, node: 2, .. }), "{err}");

        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("notes.txt"), "hello").unwrap();
        let err = RocksStorage::open(other.path(), id(1)).err().expect("must refuse");
        assert!(matches!(err, OpenError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn a_corrupt_log_entry_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = RocksStorage::open(dir.path(), id(1)).unwrap();
            s.persist(
                Some(HardState { term: Term(1), voted_for: None }),
                Some((LogIndex(1), &[entry(1, 1)])),
            )
            .unwrap();
            s.db.put_cf(s.cf(CF_LOG), log_key(LogIndex(2)), b"\x01garbage").unwrap();
        }
        let mut s = RocksStorage::open(dir.path(), id(1)).unwrap();
        assert!(matches!(s.load(), Err(StorageError::Corrupt(_))));
    }
}
