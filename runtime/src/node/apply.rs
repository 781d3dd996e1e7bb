//! Where a committed entry changes the state machine: each entry of a `Ready` is decoded,
//! admitted against its origin's session (a retry applies once) and run by `kv::apply` on the
//! state the batch has made so far; the batch then lands as one storage write.

use super::*;
use crate::storage::StateView;

/// Read access for the KV state machine: the node's applied storage (or a view of it taken
/// for a read served off the task), and when applying, the keys that hold collections
/// (`Expiry::collections`; None: any key may). An entry applies to it under the changes of the
/// entries applied earlier in the same batch (`kv::Layered`).
pub(super) struct Stored<'a, V: ?Sized>(
    pub(super) &'a V,
    pub(super) Option<&'a super::keymap::KeySet>,
);

/// What `Stored` reads from: a storage, or a view of one.
pub(super) trait Reads {
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

/// Forwards `Reads` to a trait that has the same three reads.
macro_rules! reads_via {
    ($trait:path) => {
        fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
            <Self as $trait>::get(self, key)
        }
        fn element(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
            <Self as $trait>::element(self, key)
        }
        fn elements(
            &self,
            from: &[u8],
            to: &[u8],
            rev: bool,
            limit: usize,
        ) -> Result<Vec<(Vec<u8>, Value)>, StorageError> {
            <Self as $trait>::elements(self, from, to, rev, limit)
        }
    };
}

impl<S: Storage> Reads for S {
    reads_via!(Storage);
}

impl Reads for dyn StateView {
    reads_via!(StateView);
}

impl<V: Reads + ?Sized> KvRead for Stored<'_, V> {
    type Error = StorageError;
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        Reads::get(self.0, key)
    }
    fn element(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        Reads::element(self.0, key)
    }
    fn elements(
        &self,
        from: &[u8],
        to: &[u8],
        rev: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, StorageError> {
        Reads::elements(self.0, from, to, rev, limit)
    }
    fn corrupt(key: &[u8]) -> StorageError {
        corrupt_value(key)
    }
    fn may_hold_collection(&self, key: &[u8]) -> bool {
        self.1.is_none_or(|c| c.contains_key(key))
    }
}

/// The committed entries of one `Ready`, applied in memory and written to storage as one
/// batch (`Storage::apply_batch`); their replies go once it is written.
#[derive(Default)]
pub(super) struct ApplyBatch {
    pub(super) entries: Vec<(LogIndex, Vec<Mutation>)>,
    /// What the batch did to the keys so far.
    pub(super) changes: kv::PendingChanges,
    pub(super) replies: Vec<(oneshot::Sender<Reply>, Reply)>,
}

impl ApplyBatch {
    pub(super) fn push(&mut self, index: LogIndex, mutations: Vec<Mutation>) {
        self.changes.record(&mutations);
        self.entries.push((index, mutations));
    }
}

pub(super) fn corrupt_value(key: &[u8]) -> StorageError {
    StorageError::Corrupt(format!(
        "the value of key {:?} is no record",
        String::from_utf8_lossy(key)
    ))
}

impl<S: Storage> NodeTask<S> {
    /// The node skipped applying the entries a snapshot covers, so it cannot tell which of its
    /// pending writes they held: those up to the last request of this run the snapshot's
    /// session records were applied or overtaken, and get an indeterminate answer. Later ones
    /// are still ahead in the log or not in it, and stay pending.
    pub(super) fn settle_writes_in_snapshot(&mut self) -> Result<(), StorageError> {
        let Some(session) = self.storage.session(self.id.0)? else { return Ok(()) };
        if session.incarnation != self.incarnation {
            return Ok(());
        }
        let covered: Vec<u64> =
            self.writes.range(..=session.last_request).map(|(id, _)| *id).collect();
        for id in covered {
            let w = self.writes.remove(&id).expect("listed");
            let msg = "TIMEOUT this node caught up from a snapshot; the write may or may not have been applied";
            let _ = w.reply.send(Reply::error(msg));
        }
        Ok(())
    }

    /// The log holds a write of this node's from run `old`, later than this run's number:
    /// the disk was wiped and the wall clock had gone back, so this run's writes would be taken
    /// for an old run's and refused. Later requests go under a number above it; the pending
    /// ones get their answer when they apply (refused as overtaken).
    pub(super) fn outlive_run(&mut self, old: u64) -> Result<(), StorageError> {
        let next = self.storage.next_incarnation(old + 1)?;
        warn!(node = %self.id, old, run = self.incarnation, next, "this node's log holds writes of a later run than this one (a wiped disk and a clock that went back); continuing as run {next}");
        self.incarnation = next;
        self.next_request = first_request(next);
        Ok(())
    }

    /// The applied session of `origin`, from the cache or storage.
    pub(super) fn session(&mut self, origin: u64) -> Result<Option<kv::Session>, StorageError> {
        if let Some(s) = self.sessions.get(&origin) {
            return Ok(*s);
        }
        let s = self.storage.session(origin)?;
        self.sessions.insert(origin, s);
        Ok(s)
    }

    /// Applies `entry` into `batch`, which the caller writes.
    pub(super) fn apply(
        &mut self,
        entry: &raft_kv_core::Entry,
        batch: &mut ApplyBatch,
    ) -> Result<(), StorageError> {
        let (index, data) = (entry.index, entry.data.as_slice());
        // A membership entry took effect when it was appended; the state machine records it
        // whatever becomes of the request that carried it (a duplicate is still applied).
        let membership: Vec<Mutation> =
            entry.membership.iter().map(|m| Mutation::Membership(m.clone())).collect();
        if data.is_empty() {
            // A new leader's no-op.
            batch.push(index, membership);
        } else {
            match codec::decode::<Proposal>(data) {
                Ok(p) => {
                    tracing::trace!(node = %self.id, index = %index, origin = %p.origin, incarnation = p.incarnation, request = p.request, command = ?p.command, "apply");
                    let mine = p.origin == self.id && p.incarnation == self.incarnation;
                    if p.origin == self.id && p.incarnation > self.incarnation {
                        self.outlive_run(p.incarnation)?;
                    }
                    let session = self.session(p.origin.0)?;
                    let admitted = if planted::active(
                        self.raft.config().planted,
                        PlantedBug::RetryAppliedTwice,
                    ) {
                        Some(kv::Session { incarnation: p.incarnation, last_request: p.request })
                    } else {
                        kv::admit(session, p.incarnation, p.request)
                    };
                    match admitted {
                        Some(session) => {
                            let (mut mutations, reply) = match &p.command {
                                // The membership the leader computed is in the entry: every
                                // node applies the same one.
                                kv::Command::Membership(_) => match &entry.membership {
                                    Some(_) => (Vec::new(), Reply::ok()),
                                    None => (
                                        Vec::new(),
                                        Reply::error("ERR the membership change was malformed"),
                                    ),
                                },
                                command => {
                                    let forgotten = super::keymap::KeySet::default();
                                    let collections = if planted::active(
                                        self.raft.config().planted,
                                        PlantedBug::CollectionIndexForgets,
                                    ) {
                                        &forgotten
                                    } else {
                                        &self.expiry.collections
                                    };
                                    let base = Stored(&self.storage, Some(collections));
                                    let read =
                                        kv::Layered { base: &base, pending: Some(&batch.changes) };
                                    let mut ctx =
                                        kv::Ctx::new(entry.time, entry.index.0, entry.term.0);
                                    if planted::active(
                                        self.raft.config().planted,
                                        PlantedBug::PopChoiceByNode,
                                    ) {
                                        ctx.reseed(self.id.0 ^ entry.index.0);
                                    }
                                    let (m, r) = kv::apply(command, &read, &mut ctx)?;
                                    if let kv::Command::ExpireDue { .. } = command {
                                        // One Delete per key that expired (INFO's expired_keys).
                                        let n = m
                                            .iter()
                                            .filter(|m| matches!(m, Mutation::Delete(_)))
                                            .count();
                                        self.metrics.expired_keys.fetch_add(
                                            n as u64,
                                            std::sync::atomic::Ordering::Relaxed,
                                        );
                                    }
                                    (m, r.into())
                                }
                            };
                            mutations.extend(membership);
                            mutations.push(Mutation::Session(p.origin.0, session));
                            self.sessions.insert(p.origin.0, Some(session));
                            self.expiry.note(&mutations);
                            self.blocked.note(&mutations);
                            batch.push(index, mutations);
                            if let Some(w) = mine.then(|| self.writes.remove(&p.request)).flatten()
                            {
                                match w.block {
                                    // Nothing to pop: hold the client until a write.
                                    Some(b) if b.waits_on_after(&reply) => {
                                        self.blocked.park(b, w.reply)
                                    }
                                    Some(b) if b.woken && matches!(reply, Reply::Error(_)) => {
                                        self.blocked.pass_on(&b.command.waits_on());
                                        batch.replies.push((w.reply, reply));
                                    }
                                    _ => batch.replies.push((w.reply, reply)),
                                }
                            }
                        }
                        None => {
                            // A duplicate of an applied retry, or a request overtaken by a
                            // newer one: if it is still pending here, it was never applied.
                            // A membership change took effect anyway (see above).
                            let took_effect = !membership.is_empty();
                            batch.push(index, membership);
                            if let Some(w) = mine.then(|| self.writes.remove(&p.request)).flatten()
                            {
                                let msg = "TRYAGAIN the write was not applied: a newer write from this node overtook it during a leader change";
                                let reply =
                                    if took_effect { Reply::ok() } else { Reply::error(msg) };
                                batch.replies.push((w.reply, reply));
                            }
                        }
                    }
                }
                Err(e) => {
                    // Every replica decodes the same bytes the same way, so skipping keeps
                    // them identical; it can only come from a build with another format.
                    error!(node = %self.id, index = %index, error = %e, "committed entry cannot be decoded; skipped");
                    batch.push(index, membership);
                }
            }
        }
        self.applied = index;
        self.applied_time = entry.time;
        Ok(())
    }
}
