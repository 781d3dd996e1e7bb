//! Invariants checked continuously while a simulation runs, from what the nodes write to
//! storage and report of their role:
//! - Election Safety: at most one leader per term;
//! - committed entries never change: once a node applied index i, its log never holds another
//!   entry at i (a stale node may hold a conflicting entry it has not applied: that is normal);
//! - Leader Completeness: a node that becomes leader holds every entry applied anywhere so far;
//! - State Machine Safety: every node's apply of index i applies the same entry and produces
//!   the same mutations;
//! - snapshots: a node compacts its log, or installs a snapshot, only at an index applied
//!   somewhere with the same term.
//!
//! It also folds every observation into a trace hash, so two runs of one seed can be compared.

use raft_kv_core::kv::{Key, Mutation, Session, Value};
use raft_kv_core::{
    Entry, HardState, LogIndex, NodeId, RestoredState, Role, SnapshotMeta, Status, Term,
};
use raft_kv_runtime::storage::{
    LogSync, MemStorage, SnapshotItem, SnapshotReader, StateView, Storage, StorageError,
};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

/// Stops recording after this many, so a broken run stays readable.
const VIOLATIONS_MAX: usize = 20;

#[derive(Default)]
pub struct Invariants {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    leaders: BTreeMap<Term, NodeId>,
    /// The latest status each node reported.
    status: BTreeMap<NodeId, Status>,
    /// index -> (term, digest of data) of the entry applied there.
    committed: BTreeMap<LogIndex, (Term, u64)>,
    /// index -> the highest term any node had reported when it was first applied: the term
    /// it was committed in is no higher.
    committed_by: BTreeMap<LogIndex, Term>,
    max_term: Term,
    /// index -> digest of the mutations applying it produced.
    applied: BTreeMap<LogIndex, u64>,
    /// The highest index each node ever applied (it survives the node's crashes: the log
    /// entries up to it are synced).
    applied_max: BTreeMap<NodeId, LogIndex>,
    storages: BTreeMap<NodeId, MemStorage>,
    violations: Vec<String>,
    trace: u64,
    compactions: u64,
    installs: u64,
    /// Leadership transfers asked for, and those answered OK.
    transfers: (u64, u64),
    /// Membership changes answered, and those answered OK.
    memberships: (u64, u64),
}

fn digest<T: Hash>(t: &T) -> u64 {
    // DefaultHasher::new() has fixed keys: stable across runs and processes.
    let mut h = DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

impl State {
    fn violation(&mut self, what: String) {
        if self.violations.len() < VIOLATIONS_MAX {
            self.violations.push(what);
        }
    }

    fn fold<T: Hash>(&mut self, t: &T) {
        self.trace = digest(&(self.trace, t));
    }

    /// A leader holds every entry committed in an earlier term than its own (§5.4). (A stale
    /// node can still win an old term late, so entries committed since are not required.)
    fn check_leader_completeness(&mut self, node: NodeId, term: Term) {
        let Some(storage) = self.storages.get(&node).cloned() else { return };
        // Entries up to the node's snapshot are in its state machine (checked when it was
        // taken or installed).
        let start = storage.snapshot_meta().index;
        let missing = self.committed.range(start.next()..).find(|(i, (t, d))| {
            self.committed_by.get(*i).is_some_and(|by| *by < term)
                && storage.entry(**i).is_none_or(|e| e.term != *t || digest(&e.data) != *d)
        });
        if let Some((i, (t, _))) = missing {
            let msg = format!(
                "leader completeness: node {node} became leader of term {term} without committed index {i} (term {t})"
            );
            self.violation(msg);
        }
    }

    /// A snapshot at `meta` stands for the applied log up to its index.
    fn check_snapshot(&mut self, node: NodeId, meta: SnapshotMeta, what: &str) {
        match self.committed.get(&meta.index) {
            Some(&(term, _)) if term == meta.term => {}
            Some(&(term, _)) => self.violation(format!(
                "node {node} {what} a snapshot at index {} of term {}, but term {term} was committed there",
                meta.index, meta.term
            )),
            None => self.violation(format!(
                "node {node} {what} a snapshot at index {}, which no node applied",
                meta.index
            )),
        }
    }

    fn check_entry(&mut self, node: NodeId, e: &Entry, what: &str) {
        if let Some(&(term, d)) = self.committed.get(&e.index) {
            if (term, d) != (e.term, digest(&e.data)) {
                self.violation(format!(
                    "committed entry changed: node {node} {what} index {} term {} but term {term} was committed there",
                    e.index, e.term
                ));
            }
        }
    }
}

impl Invariants {
    pub fn new() -> Arc<Invariants> {
        Arc::new(Invariants::default())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets the invariants read `node`'s log.
    pub fn register(&self, node: NodeId, storage: MemStorage) {
        self.state().storages.insert(node, storage);
    }

    /// Called on every role, term or leader change of a node.
    pub fn on_status(&self, s: &Status) {
        let mut st = self.state();
        st.fold(&(s.id.0, s.term.0, s.role.name(), s.leader.map(|l| l.0)));
        st.status.insert(s.id, s.clone());
        st.max_term = st.max_term.max(s.term);
        if s.role == Role::Leader {
            st.check_leader_completeness(s.id, s.term);
            match st.leaders.get(&s.term).copied() {
                Some(other) if other != s.id => {
                    let msg = format!("two leaders in term {}: nodes {other} and {}", s.term, s.id);
                    st.violation(msg);
                }
                _ => {
                    st.leaders.insert(s.term, s.id);
                }
            }
        }
    }

    /// Among running nodes, the one whose last report is leading the highest term, with it.
    pub fn leader(&self) -> Option<(Term, NodeId)> {
        let st = self.state();
        st.status.values().filter(|s| s.role == Role::Leader).map(|s| (s.term, s.id)).max()
    }

    /// A stopped node's disk was wiped: what it applied is gone with it (what other nodes
    /// applied still binds them all).
    pub fn forget_disk(&self, node: NodeId) {
        self.state().applied_max.remove(&node);
    }

    /// Forgets what a stopped node last reported, so it is not taken for a leader.
    pub fn forget_status(&self, node: NodeId) {
        self.state().status.remove(&node);
    }

    pub fn violations(&self) -> Vec<String> {
        self.state().violations.clone()
    }

    /// A violation found outside this module (liveness, convergence).
    pub fn report(&self, what: String) {
        self.state().violation(what);
    }

    pub fn fold<T: Hash>(&self, t: &T) {
        self.state().fold(t);
    }

    pub fn trace_hash(&self) -> u64 {
        self.state().trace
    }

    /// A leadership transfer was answered; `ok` if the target took over.
    pub fn transfer_answered(&self, ok: bool) {
        let mut st = self.state();
        st.transfers.0 += 1;
        st.transfers.1 += ok as u64;
    }

    /// A membership change was answered; `ok` if it applied.
    pub fn membership_answered(&self, ok: bool) {
        let mut st = self.state();
        st.memberships.0 += 1;
        st.memberships.1 += ok as u64;
    }

    /// (answered, applied) membership changes.
    pub fn membership_counts(&self) -> (u64, u64) {
        self.state().memberships
    }

    /// (asked, succeeded) leadership transfers.
    pub fn transfer_counts(&self) -> (u64, u64) {
        self.state().transfers
    }

    /// (log compactions, snapshots installed) so far, on all nodes.
    pub fn snapshot_counts(&self) -> (u64, u64) {
        let st = self.state();
        (st.compactions, st.installs)
    }
}

/// A node's storage as the simulation sees it: `MemStorage`, with every write checked against
/// the invariants.
pub struct CheckedStorage {
    pub inner: MemStorage,
    pub node: NodeId,
    pub invariants: Arc<Invariants>,
}

impl Storage for CheckedStorage {
    fn load(&mut self) -> Result<RestoredState, StorageError> {
        self.inner.load()
    }

    fn write_log(
        &mut self,
        hard_state: Option<HardState>,
        append: Option<(LogIndex, &[Entry])>,
    ) -> Result<(), StorageError> {
        if let Some((from, entries)) = append {
            let mut st = self.invariants.state();
            let applied_max = st.applied_max.get(&self.node).copied().unwrap_or_default();
            for e in entries.iter().take_while(|e| e.index <= applied_max) {
                st.check_entry(self.node, e, "overwrote its applied");
            }
            // Entries past the new end are dropped: none this node applied.
            let new_end = from.0 + entries.len() as u64;
            let mut i = new_end;
            while i <= applied_max.0 {
                let Some(old) = self.inner.entry(LogIndex(i)) else { break };
                if st.committed.get(&old.index).map(|c| c.0) == Some(old.term) {
                    st.violation(format!(
                        "committed entry dropped: node {} truncated index {} (term {})",
                        self.node, old.index, old.term
                    ));
                    break;
                }
                i += 1;
            }
        }
        self.inner.write_log(hard_state, append)
    }

    fn log_sync(&self) -> Arc<dyn LogSync> {
        self.inner.log_sync()
    }

    fn apply(&mut self, index: LogIndex, mutations: &[Mutation]) -> Result<(), StorageError> {
        {
            let mut st = self.invariants.state();
            match self.inner.entry(index) {
                Some(e) => {
                    st.check_entry(self.node, &e, "applied");
                    let by = st.max_term;
                    if let std::collections::btree_map::Entry::Vacant(v) = st.committed.entry(index)
                    {
                        v.insert((e.term, digest(&e.data)));
                        st.committed_by.insert(index, by);
                    }
                }
                None => st.violation(format!(
                    "node {} applied index {index} that its log does not hold",
                    self.node
                )),
            }
            let d = digest(&mutations);
            match st.applied.get(&index).copied() {
                Some(other) if other != d => st.violation(format!(
                    "state machines diverged: node {} applying index {index} produced other mutations than an earlier apply of it",
                    self.node
                )),
                Some(_) => {}
                None => {
                    st.applied.insert(index, d);
                }
            }
            st.fold(&(self.node.0, index.0, d));
            let max = st.applied_max.entry(self.node).or_default();
            *max = (*max).max(index);
        }
        self.inner.apply(index, mutations)
    }

    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        self.inner.get(key)
    }

    fn element(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        self.inner.element(key)
    }

    fn elements(
        &self,
        from: &[u8],
        to: &[u8],
        rev: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, StorageError> {
        self.inner.elements(from, to, rev, limit)
    }

    fn session(&self, origin: u64) -> Result<Option<Session>, StorageError> {
        self.inner.session(origin)
    }

    fn membership(&self) -> Result<Option<raft_kv_core::Membership>, StorageError> {
        self.inner.membership()
    }

    fn next_incarnation(&mut self, at_least: u64) -> Result<u64, StorageError> {
        self.inner.next_incarnation(at_least)
    }

    fn key_count(&self) -> Result<u64, StorageError> {
        self.inner.key_count()
    }

    fn free_bytes(&self) -> Option<u64> {
        self.inner.free_bytes()
    }

    fn scan(&self, after: Option<&[u8]>, limit: usize) -> Result<Vec<(Key, Value)>, StorageError> {
        self.inner.scan(after, limit)
    }

    fn snapshot_reader(&self) -> Result<Box<dyn SnapshotReader>, StorageError> {
        self.inner.snapshot_reader()
    }

    fn state_view(&self) -> Result<Box<dyn StateView>, StorageError> {
        self.inner.state_view()
    }

    fn compact(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        {
            let mut st = self.invariants.state();
            st.check_snapshot(self.node, meta, "compacted its log to");
            st.compactions += 1;
            st.fold(&("compact", self.node.0, meta));
        }
        self.inner.compact(meta)
    }

    fn stage_snapshot(&mut self, first: bool, items: &[SnapshotItem]) -> Result<(), StorageError> {
        self.inner.stage_snapshot(first, items)
    }

    fn install_snapshot(&mut self, meta: SnapshotMeta) -> Result<(), StorageError> {
        {
            let mut st = self.invariants.state();
            st.check_snapshot(self.node, meta, "installed");
            let applied = st.applied_max.get(&self.node).copied().unwrap_or_default();
            if meta.index <= self.inner.applied() {
                st.violation(format!(
                    "node {} installed a snapshot at {} over its state applied to {}",
                    self.node,
                    meta.index,
                    self.inner.applied()
                ));
            }
            st.installs += 1;
            st.fold(&("install", self.node.0, meta));
            st.applied_max.insert(self.node, applied.max(meta.index));
        }
        self.inner.install_snapshot(meta)
    }
}
