//! Key expiry: the node indexes every key's deadline as entries apply; the leader deletes
//! expired keys through the log, so every node removes them at the same log position.

use super::keymap::{KeyMap, KeySet};
use super::*;

/// Expired keys one sweep entry deletes at most.
const SWEEP_KEYS_MAX: usize = 256;

/// While keys with a deadline exist, the leader keeps the log's time (`Entry::time`, at which
/// reads decide expiry) at most this far behind its clock, with an empty sweep if need be.
const LOG_TIME_LAG_MAX_MS: u64 = 100;

/// Every key's deadline, by key and by time, and the keys that hold a collection, kept in step
/// with the applied state.
#[derive(Default)]
pub(super) struct Expiry {
    by_time: BTreeSet<(u64, Key)>,
    by_key: KeyMap<u64>,
    /// The keys holding a collection (live or expired): a write that replaces any other key
    /// need not read it first (`KvRead::may_hold_collection`).
    pub(super) collections: KeySet,
    /// The request id of the leader's sweep in flight.
    sweep: Option<u64>,
}

impl Expiry {
    /// Keeps the index in step with applied mutations.
    pub(super) fn note(&mut self, mutations: &[Mutation]) {
        for m in mutations {
            match m {
                Mutation::Put(k, v) => self.note_put(k, v),
                Mutation::Delete(k) => {
                    self.collections.remove(k);
                    if let Some(old) = self.by_key.remove(k) {
                        self.by_time.remove(&(old, k.clone()));
                    }
                }
                Mutation::Clear => self.clear(),
                Mutation::PutElement(..)
                | Mutation::DeleteElement(_)
                | Mutation::DeleteElements { .. }
                | Mutation::Session(..)
                | Mutation::Membership(_) => {}
            }
        }
    }

    /// Key `k` now holds the record `v`.
    fn note_put(&mut self, k: &[u8], v: &[u8]) {
        if kv::Record::is_collection(v) {
            if !self.collections.contains_key(k) {
                self.collections.insert(k.to_vec(), ());
            }
        } else {
            self.collections.remove(k);
        }
        let new = kv::Record::deadline_of(v);
        let old = match new {
            Some(t) => self.by_key.insert(k.to_vec(), t),
            None => self.by_key.remove(k),
        };
        if let Some(old) = old {
            self.by_time.remove(&(old, k.to_vec()));
        }
        if let Some(t) = new {
            self.by_time.insert((t, k.to_vec()));
        }
    }

    /// Keys with a deadline (INFO keyspace's `expires`).
    pub(super) fn len(&self) -> usize {
        self.by_key.len()
    }

    fn clear(&mut self) {
        self.by_key.clear();
        self.by_time.clear();
        self.collections.clear();
    }

    /// Keys whose deadline is before `now`: at most SWEEP_KEYS_MAX, and no more key bytes
    /// than `bytes_max`.
    fn due(&self, now: u64, bytes_max: usize) -> Vec<Key> {
        let mut bytes = 0;
        self.by_time
            .iter()
            .take_while(|(t, _)| *t < now)
            .take(SWEEP_KEYS_MAX)
            .take_while(|(_, k)| {
                bytes += k.len();
                bytes <= bytes_max
            })
            .map(|(_, k)| k.clone())
            .collect()
    }
}

/// Every key's deadline and the keys holding collections in the applied state of `storage`:
/// the key space read whole (not the collections' elements, which hold no deadline), in one
/// walk that copies only the keys it keeps.
fn read_deadlines<S: Storage>(storage: &S) -> Result<Expiry, StorageError> {
    let mut expiry = Expiry::default();
    storage.for_each_kv(&mut |k, v| {
        if kv::Record::is_collection(v) || kv::Record::deadline_of(v).is_some() {
            expiry.note_put(k, v);
        }
    })?;
    Ok(expiry)
}

/// The deadline index a node starts with (`NodeStart::deadlines`).
pub struct StartDeadlines(Expiry);

impl StartDeadlines {
    /// Reads every applied key once. At start this comes before the node's tasks start, so
    /// a value that fails its checksum stops the start before the node reaches any peer.
    pub fn read<S: Storage>(storage: &S) -> Result<StartDeadlines, StorageError> {
        read_deadlines(storage).map(StartDeadlines)
    }

    pub(super) fn into_expiry(self) -> Expiry {
        self.0
    }
}

impl<S: Storage> NodeTask<S> {
    /// Rebuilds the deadline and collection index from the applied state (after a snapshot
    /// installs).
    pub(super) fn rebuild_deadlines(&mut self) -> Result<(), StorageError> {
        let sweep = self.expiry.sweep;
        self.expiry = read_deadlines(&self.storage)?;
        self.expiry.sweep = sweep;
        Ok(())
    }

    /// The leader deletes expired keys through the log, and keeps the log's time fresh while
    /// keys with a deadline exist, one sweep entry at a time.
    pub(super) fn maybe_sweep(&mut self) {
        if self.expiry.sweep.is_some_and(|id| self.writes.contains_key(&id)) {
            return;
        }
        self.expiry.sweep = None;
        if self.raft.status().role != Role::Leader || self.expiry.by_time.is_empty() {
            return;
        }
        // The time the entry will carry: the voters' agreed clock, not this node's alone.
        let now = self.raft.cluster_time_ms();
        // No more key bytes than one proposal may carry.
        let keys = self.expiry.due(now, self.proposal_bytes_max / 2);
        if keys.is_empty() && now <= self.applied_time + LOG_TIME_LAG_MAX_MS {
            return;
        }
        let id = self.next_request;
        self.next_request += 1;
        let data = codec::encode(&Proposal {
            origin: self.id,
            incarnation: self.incarnation,
            request: id,
            command: kv::Command::ExpireDue { keys },
        });
        self.raft.step(Input::Propose { id, data: data.clone() });
        let (reply, _) = oneshot::channel();
        self.writes.insert(
            id,
            PendingWrite { data, reply, resubmitted: false, membership: None, block: None },
        );
        self.deadlines.push_back((Instant::now() + self.tuning.request_timeout, id));
        self.expiry.sweep = Some(id);
    }
}
