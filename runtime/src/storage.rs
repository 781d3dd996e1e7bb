//! The storage boundary of a node: the Raft log, hard state and the applied key space. The
//! server implements it on RocksDB; `MemStorage` here serves the simulation and tests.

use raft_kv_core::kv::{Key, Mutation, Session, Value};
use raft_kv_core::{Entry, HardState, LogIndex, Membership, RestoredState, SnapshotMeta};
use serde::{Deserialize, Serialize};
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

    /// Writes `hard_state` and the log change (entries from `from` on are replaced by
    /// `entries`) without waiting for the disk: they are durable once a `LogSync::sync` that
    /// began after this returned has returned. Writes reach the disk in order, as RocksDB's
    /// write-ahead log does: a crash keeps a prefix of them.
    fn write_log(
        &mut self,
        hard_state: Option<HardState>,
        append: Option<(LogIndex, &[Entry])>,
    ) -> Result<(), StorageError>;

    /// What makes the writes durable; the runtime calls it beside the node task, so the node
    /// goes on stepping while the disk syncs.
    fn log_sync(&self) -> Arc<dyn LogSync>;

    /// `write_log`, then a sync: durable when it returns.
    fn persist(
        &mut self,
        hard_state: Option<HardState>,
        append: Option<(LogIndex, &[Entry])>,
    ) -> Result<(), StorageError> {
        self.write_log(hard_state, append)?;
        self.log_sync().sync()
    }

    /// Writes the mutations of entry `index` and records `index` as applied, atomically. Need
    /// not be durable: after a crash the log replays from the last applied index that survived.
    fn apply(&mut self, index: LogIndex, mutations: &[Mutation]) -> Result<(), StorageError>;

    /// `apply` of several entries in order, as one atomic write where the storage can.
    fn apply_batch(&mut self, entries: &[(LogIndex, Vec<Mutation>)]) -> Result<(), StorageError> {
        for (index, mutations) in entries {
            self.apply(*index, mutations)?;
        }
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError>;

    /// An applied element record (`kv::coll`).
    fn element(&self, key: &[u8]) -> Result<Option<Value>, StorageError>;

    /// Up to `limit` applied element records with keys in `[from, to)`, in key order, or from
    /// the last backwards with `rev`.
    fn elements(
        &self,
        from: &[u8],
        to: &[u8],
        rev: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, StorageError>;

    /// The applied client session of `origin` (see `kv::admit`).
    fn session(&self, origin: u64) -> Result<Option<Session>, StorageError>;

    /// The applied membership; None before the first change.
    fn membership(&self) -> Result<Option<Membership>, StorageError>;

    /// Durably advances and returns this node's run number: one above the stored one and at
    /// least `at_least`. Every start gets a number larger than any earlier start's on this
    /// disk, so its client sessions never collide with theirs; `at_least` (the wall clock)
    /// keeps that when the disk was wiped and the count starts over.
    fn next_incarnation(&mut self, at_least: u64) -> Result<u64, StorageError>;

    /// Bytes free for this storage on its disk (None: unknown), checked against the node's
    /// disk reserve (`NodeTuning::disk_reserve_bytes`). No default: a wrapper that forgot to
    /// pass it on would hide a full disk (the simulation's did, until its planted bug showed
    /// it).
    fn free_bytes(&self) -> Option<u64>;

    /// Number of keys, exact (DBSIZE).
    fn key_count(&self) -> Result<u64, StorageError>;

    /// Number of keys, perhaps estimated but cheap (INFO, which tools poll).
    fn key_count_estimate(&self) -> Result<u64, StorageError> {
        self.key_count()
    }

    /// Bytes on disk by part (a RocksDB column family), for the metrics; none if unknown.
    fn sizes(&self) -> Vec<(String, u64)> {
        Vec::new()
    }

    /// Up to `limit` keys and their values in key order, starting after `after` (from the
    /// first with None): SCAN's walk, stable while keys come and go.
    fn scan(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<(Key, Value)>, StorageError>;

    /// Calls `f` with every key and its value, in key order, as the applied state holds them
    /// now: what a node reads at start (`StartDeadlines`). The default pages through `scan`;
    /// a storage that can walk its keys without copying each overrides it.
    fn for_each_kv(&self, f: &mut dyn FnMut(&[u8], &[u8])) -> Result<(), StorageError> {
        const PAGE: usize = 4096;
        let mut after: Option<Key> = None;
        loop {
            let page = self.scan(after.as_deref(), PAGE)?;
            for (k, v) in &page {
                f(k, v);
            }
            if page.len() < PAGE {
                return Ok(());
            }
            after = page.into_iter().last().map(|(k, _)| k);
        }
    }

    /// A consistent view of the applied state (keys and client sessions) as it stands now,
    /// read in chunks while writes go on.
    fn snapshot_reader(&self) -> Result<Box<dyn SnapshotReader>, StorageError>;

    /// The applied keys and elements as they stand now, to read off the node task while it
    /// goes on applying (a read of a large collection). No default: a wrapper that forgot it
    /// would serve its inner storage's view unchecked.
    fn state_view(&self) -> Result<Box<dyn StateView>, StorageError>;

    /// Makes the applied state durable and deletes the log up to `meta.index`, which is
    /// applied; a restart then begins from `meta` and the log after it.
    fn compact(&mut self, meta: SnapshotMeta) -> Result<(), StorageError>;

    /// Stores received snapshot items aside, `first` discarding what an earlier transfer left.
    fn stage_snapshot(&mut self, first: bool, items: &[SnapshotItem]) -> Result<(), StorageError>;

    /// Replaces the applied state with the staged snapshot and the whole log with `meta`,
    /// durably and atomically: after a crash the node holds either its old state or the
    /// snapshot, never a mixture.
    fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), StorageError>;
}

/// Makes every storage write made before the call durable (an fsync of the write-ahead log).
/// Blocking; called off the node task, concurrently with its further writes.
pub trait LogSync: Send + Sync + 'static {
    fn sync(&self) -> Result<(), StorageError>;
}

/// One record of a snapshot stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotItem {
    Kv(Key, Value),
    /// An element record of a collection (`kv::coll`).
    Element(Vec<u8>, Value),
    Session(u64, Session),
    Membership(Membership),
}

impl SnapshotItem {
    pub fn size_bytes(&self) -> usize {
        match self {
            SnapshotItem::Kv(k, v) | SnapshotItem::Element(k, v) => k.len() + v.len() + 16,
            SnapshotItem::Session(..) => 24,
            SnapshotItem::Membership(m) => 64 + m.addrs.values().map(String::len).sum::<usize>(),
        }
    }
}

/// A point-in-time view of the applied keys and elements (`Storage::state_view`): the reads
/// of `Storage` with the same meaning, unaffected by later writes.
pub trait StateView: Send {
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError>;
    fn element(&self, key: &[u8]) -> Result<Option<Value>, StorageError>;
    fn elements(
        &self,
        from: &[u8],
        to: &[u8],
        rev: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, StorageError>;
}

/// MemStorage's view: a copy of its maps (the simulation's collections are small).
struct MemView {
    kv: BTreeMap<Key, Value>,
    elements: BTreeMap<Vec<u8>, Value>,
    /// A damaged value, met when read.
    damaged: Option<Key>,
}

impl StateView for MemView {
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        if self.damaged.as_deref() == Some(key) {
            return Err(StorageError::Corrupt(format!(
                "{DAMAGE_FAULT}: the value of a key fails its checksum"
            )));
        }
        Ok(self.kv.get(key).cloned())
    }

    fn element(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        Ok(self.elements.get(key).cloned())
    }

    fn elements(
        &self,
        from: &[u8],
        to: &[u8],
        rev: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, StorageError> {
        Ok(range_of(&self.elements, from, to, rev, limit))
    }
}

/// Up to `limit` entries of `map` in `[from, to)`, forwards or backwards.
fn range_of(
    map: &BTreeMap<Vec<u8>, Value>,
    from: &[u8],
    to: &[u8],
    rev: bool,
    limit: usize,
) -> Vec<(Vec<u8>, Value)> {
    use std::ops::Bound;
    if from >= to {
        return Vec::new();
    }
    let range = map.range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)));
    let pick = |(k, v): (&Vec<u8>, &Value)| (k.clone(), v.clone());
    if rev {
        range.rev().take(limit).map(pick).collect()
    } else {
        range.take(limit).map(pick).collect()
    }
}

/// Reads one snapshot in order, chunk by chunk; memory stays bounded by the chunk size.
pub trait SnapshotReader: Send {
    /// The applied index of the state being read.
    fn applied(&self) -> LogIndex;
    /// About `bytes_max` of the next items (at least one, if any remain); empty at the end.
    fn next_chunk(&mut self, bytes_max: usize) -> Result<Vec<SnapshotItem>, StorageError>;
    /// Roughly how many bytes the whole snapshot holds, for progress logs.
    fn size_hint(&self) -> u64;
}

/// Checks what a storage loaded before the node trusts it: the log is contiguous from just
/// after the snapshot with terms that never decrease, the applied index is between the
/// snapshot and the log's end, and no entry has a term above the stored current term. Every
/// `Storage` runs this on load.
pub fn validate(restored: &RestoredState) -> Result<(), StorageError> {
    let entries = &restored.entries;
    let start = restored.snapshot.index.0;
    for (i, e) in entries.iter().enumerate() {
        let expected = LogIndex(start + i as u64 + 1);
        if e.index != expected {
            return Err(StorageError::Corrupt(format!(
                "log is not contiguous: expected entry {expected}, found {}",
                e.index
            )));
        }
        let before = if i > 0 { entries[i - 1].term } else { restored.snapshot.term };
        if before > e.term {
            return Err(StorageError::Corrupt(format!("log terms decrease at entry {}", e.index)));
        }
    }
    let last = start + entries.len() as u64;
    if restored.applied.0 > last || restored.applied.0 < start {
        return Err(StorageError::Corrupt(format!(
            "applied index {} is outside the log, which holds {}..={last} after snapshot {start}",
            restored.applied,
            start + 1,
        )));
    }
    if restored.snapshot.term > restored.hard_state.term {
        return Err(StorageError::Corrupt(
            "the snapshot has a term above the stored current term".into(),
        ));
    }
    if entries.last().is_some_and(|e| e.term > restored.hard_state.term) {
        return Err(StorageError::Corrupt(
            "the log has a term above the stored current term".into(),
        ));
    }
    Ok(())
}

/// In-memory storage that keeps what was written apart from what was synced, like a disk
/// under a page cache: `write_log` and `apply` only write, `LogSync::sync` syncs everything
/// written before it (as one RocksDB WAL fsync does). `crash` then loses exactly the unsynced
/// suffix, or part of it. The state sits behind an `Arc` so a harness keeps it across a
/// simulated crash and restart of the node that uses it.
#[derive(Clone, Default)]
pub struct MemStorage {
    inner: Arc<Mutex<MemState>>,
}

#[derive(Default, Debug)]
struct MemState {
    /// What the node reads: every write so far.
    written: Image,
    /// What survives a crash.
    synced: Image,
    /// Writes not yet synced, oldest first.
    unsynced: Vec<Write>,
    /// A failing disk (the simulation's nemesis): every sync fails until it is repaired.
    syncs_fail: bool,
    incarnation: u64,
    /// `PlantedBug::AckBeforeSync`: a sync returns without syncing.
    never_sync: bool,
    /// `PlantedBug::DamagedDataTrusted`: records that fail their checksum are used anyway.
    trust_damage: bool,
    /// What `free_bytes` reports (None: unknown, as with no disk).
    free_bytes: Option<u64>,
}

#[derive(Clone, Default, Debug)]
struct Image {
    hard_state: HardState,
    /// The log starts after it: `entries[i].index == snapshot.index + 1 + i`.
    snapshot: SnapshotMeta,
    entries: Vec<Entry>,
    applied: LogIndex,
    kv: BTreeMap<Key, Value>,
    /// Collections' element records (RocksDB: their own column family).
    elements: BTreeMap<Vec<u8>, Value>,
    sessions: BTreeMap<u64, Session>,
    membership: Option<Membership>,
    /// Snapshot items received, not yet installed.
    staged: Vec<SnapshotItem>,
    /// A record whose bytes changed on the disk after they were written (`MemStorage::damage`),
    /// so its checksum no longer matches: RocksDB finds such a record by its block or WAL
    /// checksum when it reads it. None once the record is overwritten.
    damage: Option<Damage>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Damage {
    /// The log entry at this index, and with RocksDB's default WAL recovery everything after.
    Entry(LogIndex),
    /// The applied value of this key (its bytes in the map are the damaged ones).
    Value(Key),
}

/// One atomic write (a RocksDB write batch).
#[derive(Clone, Debug)]
enum Write {
    Persist { hard_state: Option<HardState>, append: Option<(LogIndex, Vec<Entry>)> },
    Apply { index: LogIndex, mutations: Vec<Mutation> },
    Compact { meta: SnapshotMeta },
    Stage { first: bool, items: Vec<SnapshotItem> },
    Install { meta: SnapshotMeta },
}

impl Image {
    /// A write of `key` replaces its damaged record, if it was that one.
    fn overwritten(&mut self, key: &[u8]) {
        if matches!(&self.damage, Some(Damage::Value(k)) if k.as_slice() == key) {
            self.damage = None;
        }
    }

    /// The `n`th (modulo their count) key that holds a string, if any: a flipped bit in its
    /// bytes still reads as a string, another one.
    fn string_key(&self, n: u64) -> Option<Key> {
        let strings: Vec<&Key> = self
            .kv
            .iter()
            .filter(|(_, v)| {
                raft_kv_core::kv::Record::decode(v)
                    .is_some_and(|r| matches!(r.data, raft_kv_core::kv::Data::Str(_)))
            })
            .map(|(k, _)| k)
            .collect();
        let i = n.checked_rem(strings.len() as u64)?;
        Some(strings[i as usize].clone())
    }

    fn write(&mut self, w: &Write) {
        match w {
            Write::Persist { hard_state, append } => {
                if let Some(hs) = hard_state {
                    self.hard_state = *hs;
                }
                if let Some((from, entries)) = append {
                    if matches!(self.damage, Some(Damage::Entry(i)) if i >= *from) {
                        self.damage = None;
                    }
                    let keep = from.0.saturating_sub(self.snapshot.index.0 + 1) as usize;
                    self.entries.truncate(keep.min(self.entries.len()));
                    self.entries.extend_from_slice(entries);
                }
            }
            Write::Compact { meta } => {
                if matches!(self.damage, Some(Damage::Entry(i)) if i <= meta.index) {
                    self.damage = None;
                }
                let n = (meta.index.0 - self.snapshot.index.0) as usize;
                self.entries.drain(..n.min(self.entries.len()));
                self.snapshot = *meta;
            }
            Write::Stage { first, items } => {
                if *first {
                    self.staged.clear();
                }
                self.staged.extend_from_slice(items);
            }
            Write::Install { meta } => {
                self.damage = None;
                self.kv.clear();
                self.elements.clear();
                self.sessions.clear();
                self.membership = None;
                for item in std::mem::take(&mut self.staged) {
                    match item {
                        SnapshotItem::Kv(k, v) => {
                            self.kv.insert(k, v);
                        }
                        SnapshotItem::Element(k, v) => {
                            self.elements.insert(k, v);
                        }
                        SnapshotItem::Session(origin, s) => {
                            self.sessions.insert(origin, s);
                        }
                        SnapshotItem::Membership(m) => self.membership = Some(m),
                    }
                }
                self.entries.clear();
                self.snapshot = *meta;
                self.applied = meta.index;
            }
            Write::Apply { index, mutations } => {
                for m in mutations {
                    match m {
                        Mutation::Put(k, v) => {
                            self.overwritten(k);
                            self.kv.insert(k.clone(), v.clone());
                        }
                        Mutation::Delete(k) => {
                            self.overwritten(k);
                            self.kv.remove(k);
                        }
                        Mutation::PutElement(k, v) => {
                            self.elements.insert(k.clone(), v.clone());
                        }
                        Mutation::DeleteElement(k) => {
                            self.elements.remove(k);
                        }
                        Mutation::DeleteElements { from, to } => {
                            self.elements.retain(|k, _| !(from <= k && k < to));
                        }
                        Mutation::Clear => {
                            self.damage =
                                self.damage.take().filter(|d| !matches!(d, Damage::Value(_)));
                            self.kv.clear();
                            self.elements.clear();
                        }
                        Mutation::Session(origin, session) => {
                            self.sessions.insert(*origin, *session);
                        }
                        Mutation::Membership(m) => self.membership = Some(m.clone()),
                    }
                }
                self.applied = *index;
            }
        }
    }
}

impl MemState {
    /// The error a read of damaged data meets, unless the planted bug trusts it.
    fn check_value(&self, key: &[u8]) -> Result<(), StorageError> {
        match &self.written.damage {
            Some(Damage::Value(k)) if k.as_slice() == key && !self.trust_damage => {
                Err(StorageError::Corrupt(format!(
                    "{DAMAGE_FAULT}: the value of a key fails its checksum"
                )))
            }
            _ => Ok(()),
        }
    }

    /// The error a read of every value meets if one is damaged.
    fn check_every_value(&self) -> Result<(), StorageError> {
        match &self.written.damage {
            Some(Damage::Value(k)) => self.check_value(k),
            _ => Ok(()),
        }
    }

    fn write(&mut self, w: Write, sync: bool) {
        self.written.write(&w);
        self.unsynced.push(w);
        if sync {
            self.sync();
        }
    }

    fn sync(&mut self) {
        if !self.never_sync {
            for w in std::mem::take(&mut self.unsynced) {
                self.synced.write(&w);
            }
        }
    }
}

impl LogSync for MemStorage {
    fn sync(&self) -> Result<(), StorageError> {
        let mut s = self.state();
        if s.syncs_fail {
            return Err(StorageError::Io(format!("{SYNC_FAULT}: fsync failed")));
        }
        s.sync();
        Ok(())
    }
}

/// How a failure `MemStorage::set_syncs_fail` injected names itself.
pub const SYNC_FAULT: &str = "injected disk fault";

/// How a record `MemStorage::damage` damaged names itself when a read finds it.
pub const DAMAGE_FAULT: &str = "injected damage: checksum mismatch";

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }

    /// Storage whose syncs do nothing (`PlantedBug::AckBeforeSync`), for the simulation.
    pub fn never_syncing() -> MemStorage {
        let s = MemStorage::default();
        s.state().never_sync = true;
        s
    }

    /// Storage that uses damaged records as if they were sound
    /// (`PlantedBug::DamagedDataTrusted`), for the simulation: the log replays up to a damaged
    /// entry and silently ends there (RocksDB's default WAL recovery), a damaged value is
    /// served.
    pub fn trusting_damage() -> MemStorage {
        let s = MemStorage::default();
        s.state().trust_damage = true;
        s
    }

    fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The applied key space, for checks in tests.
    pub fn snapshot_kv(&self) -> BTreeMap<Key, Value> {
        self.state().written.kv.clone()
    }

    /// The applied element records, for checks in tests.
    pub fn snapshot_elements(&self) -> BTreeMap<Vec<u8>, Value> {
        self.state().written.elements.clone()
    }

    /// The applied index, for checks in tests.
    pub fn applied(&self) -> LogIndex {
        self.state().written.applied
    }

    /// The written log entry at `index`, if any.
    pub fn entry(&self, index: LogIndex) -> Option<Entry> {
        let s = self.state();
        let i = index.0.checked_sub(s.written.snapshot.index.0 + 1)? as usize;
        s.written.entries.get(i).cloned()
    }

    /// The snapshot the written log starts after.
    pub fn snapshot_meta(&self) -> SnapshotMeta {
        self.state().written.snapshot
    }

    /// Simulates a power loss of a stopped node: of the unsynced writes, only the first
    /// `survivors` reached the disk (a torn last write is discarded whole, as RocksDB's WAL
    /// discards a record whose checksum fails). Returns how many writes were lost.
    pub fn crash(&self, survivors: usize) -> usize {
        let mut s = self.state();
        let unsynced = std::mem::take(&mut s.unsynced);
        let lost = unsynced.len().saturating_sub(survivors);
        for w in unsynced.iter().take(survivors) {
            s.synced.write(w);
        }
        s.written = s.synced.clone();
        lost
    }

    /// Simulates a stopped node whose disk was wiped (or replaced): everything it wrote is
    /// gone, synced or not.
    pub fn wipe(&self) {
        let mut s = self.state();
        let (never_sync, trust_damage) = (s.never_sync, s.trust_damage);
        *s = MemState { never_sync, trust_damage, ..MemState::default() };
    }

    /// Damages one record on the disk of a stopped node, as a flipped bit would (call it after
    /// `crash`): `pick` chooses a log entry after the applied index when there is one and
    /// `pick` is odd, else an applied value, else any entry. Returns what was damaged.
    pub fn damage(&self, pick: u64) -> Option<String> {
        let mut s = self.state();
        let d = &s.synced;
        let first = d.snapshot.index.0 + 1;
        let last = d.snapshot.index.0 + d.entries.len() as u64;
        let unapplied = (d.applied.0 + 1).max(first);
        let damage = if pick % 2 == 1 && unapplied <= last {
            Damage::Entry(LogIndex(unapplied + pick / 2 % (last - unapplied + 1)))
        } else if let Some(key) = d.string_key(pick / 2) {
            Damage::Value(key)
        } else if first <= last {
            Damage::Entry(LogIndex(first + pick / 2 % (last - first + 1)))
        } else {
            return None;
        };
        let what = match &damage {
            Damage::Entry(i) => format!("log entry {i}"),
            Damage::Value(k) => {
                // A bit of the string flips (or a byte is added to an empty one); a checksum
                // over the record would no longer match.
                let v = s.synced.kv.get_mut(k).expect("chosen among the keys");
                let header = if v.get(1) == Some(&1) { 10 } else { 2 };
                let len = v.len();
                match v.last_mut() {
                    Some(b) if len > header => *b ^= 1,
                    _ => v.push(b'x'),
                }
                format!("the value of {}", String::from_utf8_lossy(k))
            }
        };
        s.synced.damage = Some(damage);
        s.written = s.synced.clone();
        Some(what)
    }

    /// Whether the disk holds a damaged record not yet overwritten.
    pub fn damaged(&self) -> bool {
        self.state().written.damage.is_some()
    }

    /// Whether entry `index` of `term` would survive a power loss now: it is synced, or
    /// compacted into a synced snapshot.
    pub fn synced_holds(&self, index: LogIndex, term: raft_kv_core::Term) -> bool {
        let s = self.state();
        let synced = &s.synced;
        if index <= synced.snapshot.index {
            return true;
        }
        let i = (index.0 - synced.snapshot.index.0 - 1) as usize;
        synced.entries.get(i).is_some_and(|e| e.term == term)
    }

    /// Whether the node may vote by what it wrote: not blank (no term, no log: it may be a
    /// wiped node still asking the others) and not recovering (`HardState::recovering`).
    pub fn may_vote(&self) -> bool {
        let s = self.state();
        let w = &s.written;
        let blank = w.hard_state.term.0 == 0 && w.entries.is_empty() && w.snapshot.index.0 == 0;
        !blank && !w.hard_state.recovering
    }

    /// Writes not yet synced.
    pub fn unsynced_writes(&self) -> usize {
        self.state().unsynced.len()
    }

    /// Sets the free space the storage reports (the simulation's filling disk).
    pub fn set_free_bytes(&self, free: Option<u64>) {
        self.state().free_bytes = free;
    }

    /// Makes every sync fail (`SYNC_FAULT`), or work again.
    pub fn set_syncs_fail(&self, fail: bool) {
        self.state().syncs_fail = fail;
    }
}

impl Storage for MemStorage {
    fn load(&mut self) -> Result<RestoredState, StorageError> {
        let s = self.state();
        let mut entries = s.written.entries.clone();
        if let Some(Damage::Entry(i)) = s.written.damage {
            if !s.trust_damage {
                return Err(StorageError::Corrupt(format!(
                    "{DAMAGE_FAULT}: log entry {i} fails its checksum"
                )));
            }
            // RocksDB's point-in-time recovery: the log ends before the bad record.
            entries.truncate((i.0 - s.written.snapshot.index.0 - 1) as usize);
        }
        let restored = RestoredState {
            hard_state: s.written.hard_state,
            membership: s.written.membership.clone(),
            snapshot: s.written.snapshot,
            entries,
            applied: s.written.applied,
        };
        validate(&restored)?;
        Ok(restored)
    }

    fn write_log(
        &mut self,
        hard_state: Option<HardState>,
        append: Option<(LogIndex, &[Entry])>,
    ) -> Result<(), StorageError> {
        let mut s = self.state();
        if let Some((from, entries)) = append {
            // RocksDB keys entries by index; here they sit by position, so refuse what would
            // misplace them (a gap, or entries out of order) instead of storing it.
            let start = s.written.snapshot.index.0;
            let len = start + s.written.entries.len() as u64;
            let in_order = entries.iter().enumerate().all(|(i, e)| e.index.0 == from.0 + i as u64);
            if from.0 <= start || from.0 > len + 1 || !in_order {
                return Err(StorageError::Corrupt(format!(
                    "append of {} entries at {from} to a log of {len} leaves a gap or is out of order",
                    entries.len()
                )));
            }
        }
        let append = append.map(|(from, e)| (from, e.to_vec()));
        s.write(Write::Persist { hard_state, append }, false);
        Ok(())
    }

    fn log_sync(&self) -> Arc<dyn LogSync> {
        Arc::new(self.clone())
    }

    fn apply(&mut self, index: LogIndex, mutations: &[Mutation]) -> Result<(), StorageError> {
        self.state().write(Write::Apply { index, mutations: mutations.to_vec() }, false);
        Ok(())
    }

    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        let s = self.state();
        s.check_value(key)?;
        Ok(s.written.kv.get(key).cloned())
    }

    fn element(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        Ok(self.state().written.elements.get(key).cloned())
    }

    fn elements(
        &self,
        from: &[u8],
        to: &[u8],
        rev: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, StorageError> {
        Ok(range_of(&self.state().written.elements, from, to, rev, limit))
    }

    fn state_view(&self) -> Result<Box<dyn StateView>, StorageError> {
        let s = self.state();
        let damaged = match &s.written.damage {
            Some(Damage::Value(k)) if !s.trust_damage => Some(k.clone()),
            _ => None,
        };
        Ok(Box::new(MemView {
            kv: s.written.kv.clone(),
            elements: s.written.elements.clone(),
            damaged,
        }))
    }

    fn session(&self, origin: u64) -> Result<Option<Session>, StorageError> {
        Ok(self.state().written.sessions.get(&origin).copied())
    }

    fn membership(&self) -> Result<Option<Membership>, StorageError> {
        Ok(self.state().written.membership.clone())
    }

    fn next_incarnation(&mut self, at_least: u64) -> Result<u64, StorageError> {
        // Written and synced at once (RocksDB: a synced put in the meta column family, which
        // makes every earlier write durable too).
        let mut s = self.state();
        s.sync();
        s.incarnation = (s.incarnation + 1).max(at_least);
        Ok(s.incarnation)
    }

    fn scan(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<(Key, Value)>, StorageError> {
        use std::ops::Bound;
        let s = self.state();
        let from = match after {
            Some(k) => Bound::Excluded(k.to_vec()),
            None => Bound::Unbounded,
        };
        let found: Vec<(Key, Value)> = s
            .written
            .kv
            .range((from, Bound::Unbounded))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, _) in &found {
            s.check_value(k)?;
        }
        Ok(found)
    }

    fn key_count(&self) -> Result<u64, StorageError> {
        Ok(self.state().written.kv.len() as u64)
    }

    fn free_bytes(&self) -> Option<u64> {
        self.state().free_bytes
    }

    fn snapshot_reader(&self) -> Result<Box<dyn SnapshotReader>, StorageError> {
        let s = self.state();
        // Read whole at once here, so a damaged value anywhere is met now.
        s.check_every_value()?;
        let kv = s.written.kv.iter().map(|(k, v)| SnapshotItem::Kv(k.clone(), v.clone()));
        let elements =
            s.written.elements.iter().map(|(k, v)| SnapshotItem::Element(k.clone(), v.clone()));
        let sessions = s.written.sessions.iter().map(|(o, x)| SnapshotItem::Session(*o, *x));
        let membership = s.written.membership.clone().map(SnapshotItem::Membership);
        let items: Vec<SnapshotItem> =
            kv.chain(elements).chain(sessions).chain(membership).collect();
        let size = items.iter().map(|i| i.size_bytes() as u64).sum();
        Ok(Box::new(MemSnapshot { applied: s.written.applied, items: items.into(), size }))
    }

    fn compact(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let mut s = self.state();
        let w = &s.written;
        let held = meta.index > w.snapshot.index
            && meta.index <= w.applied
            && meta.index.0 <= w.snapshot.index.0 + w.entries.len() as u64;
        if !held {
            return Err(StorageError::Corrupt(format!(
                "compaction to {} outside the applied log (snapshot {}, applied {})",
                meta.index, w.snapshot.index, w.applied
            )));
        }
        s.write(Write::Compact { meta }, true);
        Ok(())
    }

    fn stage_snapshot(&mut self, first: bool, items: &[SnapshotItem]) -> Result<(), StorageError> {
        self.state().write(Write::Stage { first, items: items.to_vec() }, false);
        Ok(())
    }

    fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        self.state().write(Write::Install { meta }, true);
        Ok(())
    }
}

/// A copy of the state taken at once: the simulation's data is small.
struct MemSnapshot {
    applied: LogIndex,
    items: std::collections::VecDeque<SnapshotItem>,
    size: u64,
}

impl SnapshotReader for MemSnapshot {
    fn applied(&self) -> LogIndex {
        self.applied
    }

    fn next_chunk(&mut self, bytes_max: usize) -> Result<Vec<SnapshotItem>, StorageError> {
        let mut out = Vec::new();
        let mut bytes = 0;
        while let Some(item) = self.items.front() {
            if !out.is_empty() && bytes + item.size_bytes() > bytes_max {
                break;
            }
            bytes += item.size_bytes();
            out.push(self.items.pop_front().expect("checked"));
        }
        Ok(out)
    }

    fn size_hint(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_kv_core::Term;

    fn term1() -> HardState {
        HardState { term: Term(1), ..HardState::default() }
    }

    fn entry(i: u64) -> Entry {
        Entry::new(LogIndex(i), Term(1), vec![i as u8])
    }

    #[test]
    fn a_crash_keeps_synced_writes_and_loses_the_unsynced_suffix() {
        let mut s = MemStorage::new();
        s.persist(Some(term1()), Some((LogIndex(1), &[entry(1), entry(2)]))).unwrap();
        s.apply(LogIndex(1), &[Mutation::Put(b"a".to_vec(), b"1".to_vec())]).unwrap();
        s.apply(LogIndex(2), &[Mutation::Put(b"b".to_vec(), b"2".to_vec())]).unwrap();
        assert_eq!(s.get(b"b").unwrap(), Some(b"2".to_vec()));
        assert_eq!(s.crash(1), 1, "the second apply is lost");
        assert_eq!(s.applied(), LogIndex(1));
        assert_eq!(s.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(s.get(b"b").unwrap(), None);
        assert_eq!(s.load().unwrap().entries.len(), 2, "synced entries survive");
    }

    #[test]
    fn a_sync_makes_earlier_writes_durable_too() {
        let mut s = MemStorage::new();
        s.apply(LogIndex(1), &[Mutation::Put(b"a".to_vec(), b"1".to_vec())]).unwrap();
        s.persist(Some(term1()), Some((LogIndex(1), &[entry(1)]))).unwrap();
        assert_eq!(s.unsynced_writes(), 0);
        s.crash(0);
        assert_eq!(s.get(b"a").unwrap(), Some(b"1".to_vec()));
    }

    #[test]
    fn an_append_that_would_leave_a_gap_is_refused_and_changes_nothing() {
        let mut s = MemStorage::new();
        s.persist(Some(term1()), Some((LogIndex(1), &[entry(1)]))).unwrap();
        assert!(s.persist(None, Some((LogIndex(3), &[entry(3)]))).is_err());
        assert!(s.persist(None, Some((LogIndex(2), &[entry(3)]))).is_err());
        assert_eq!(s.load().unwrap().entries.len(), 1);
    }

    #[test]
    fn a_log_write_is_durable_only_once_a_later_sync_returns() {
        let mut s = MemStorage::new();
        let sync = s.log_sync();
        s.write_log(Some(term1()), Some((LogIndex(1), &[entry(1)]))).unwrap();
        sync.sync().unwrap();
        s.write_log(None, Some((LogIndex(2), &[entry(2)]))).unwrap();
        assert_eq!(s.load().unwrap().entries.len(), 2, "the node reads what it wrote");
        s.crash(0);
        assert_eq!(s.load().unwrap().entries, vec![entry(1)]);
    }

    #[test]
    fn never_syncing_storage_loses_acknowledged_appends() {
        let mut s = MemStorage::never_syncing();
        s.persist(None, Some((LogIndex(1), &[entry(1)]))).unwrap();
        s.crash(0);
        assert!(s.load().unwrap().entries.is_empty());
    }

    fn string(v: &str) -> Vec<u8> {
        raft_kv_core::kv::Record::string(v.as_bytes().to_vec(), None).encode()
    }

    #[test]
    fn a_damaged_record_is_refused_where_it_is_read_until_overwritten() {
        let mut s = MemStorage::new();
        s.persist(Some(term1()), Some((LogIndex(1), &[entry(1), entry(2)]))).unwrap();
        s.apply(LogIndex(1), &[Mutation::Put(b"a".to_vec(), string("1"))]).unwrap();
        s.crash(usize::MAX);
        // Pick odd: the unapplied entry 2.
        assert_eq!(s.damage(1).as_deref(), Some("log entry 2"));
        let err = s.load().unwrap_err().to_string();
        assert!(err.contains(DAMAGE_FAULT), "{err}");
        // An append that replaces entry 2 rewrites the record.
        s.persist(None, Some((LogIndex(2), &[entry(2)]))).unwrap();
        assert_eq!(s.load().unwrap().entries.len(), 2);

        assert_eq!(s.damage(0).as_deref(), Some("the value of a"));
        assert!(s.get(b"a").is_err());
        assert!(s.scan(None, 10).is_err());
        assert!(s.snapshot_reader().is_err());
        assert!(s.get(b"b").unwrap().is_none(), "other keys read fine");
        s.apply(LogIndex(2), &[Mutation::Put(b"a".to_vec(), string("2"))]).unwrap();
        assert_eq!(s.get(b"a").unwrap(), Some(string("2")));
        assert!(!s.damaged());
    }

    #[test]
    fn storage_that_trusts_damage_replays_up_to_a_damaged_entry_and_serves_a_damaged_value() {
        let mut s = MemStorage::trusting_damage();
        s.persist(Some(term1()), Some((LogIndex(1), &[entry(1), entry(2), entry(3)]))).unwrap();
        s.apply(LogIndex(1), &[Mutation::Put(b"a".to_vec(), string("1"))]).unwrap();
        s.crash(usize::MAX);
        assert_eq!(s.damage(1).as_deref(), Some("log entry 2"));
        assert_eq!(s.load().unwrap().entries, vec![entry(1)], "entries 2 and 3 silently gone");
        s.persist(None, Some((LogIndex(2), &[entry(2)]))).unwrap();
        s.damage(0);
        assert_eq!(s.get(b"a").unwrap(), Some(string("0")), "a flipped bit: '1' reads '0'");
    }
}
