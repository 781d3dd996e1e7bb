//! The in-memory view of one node's Raft log: entries, commit and apply positions, and which
//! suffix changed since it was last handed to storage. Touches nothing outside itself.

use crate::reach::{self, Path};
use crate::types::{Entry, LogIndex, Membership, SnapshotMeta, Term};

#[derive(Debug)]
pub struct RaftLog {
    /// Index and term of the entry just before `entries[0]`: (0, 0) for a log that starts at 1,
    /// else the snapshot the log was compacted to.
    offset: LogIndex,
    offset_term: Term,
    offset_time: u64,
    /// Sum of `size_bytes` over `entries`, for the snapshot threshold.
    bytes: usize,
    /// Sum of `size_bytes` over the entries after `commit`: a leader bounds it.
    uncommitted_bytes: usize,
    /// The membership at `offset`, or (after a restart) the applied one: either way what is
    /// in effect when no membership entry after it is held. Entries up to the applied index
    /// that are held agree with it, and are never truncated.
    base_membership: Membership,
    /// Indexes of the membership entries held, ascending: the last one is in effect.
    membership_entries: Vec<LogIndex>,
    /// Invariant: `entries[i].index == offset + 1 + i`, terms never decrease along the log.
    entries: Vec<Entry>,
    /// Highest index known committed. Invariant: `offset <= commit <= last_index()`, never
    /// decreases.
    commit: LogIndex,
    /// Highest index handed out for applying. Invariant: `applied <= commit`.
    applied: LogIndex,
    /// Highest index the runtime reported durable. Invariant: the entries up to it are the ones
    /// storage holds; lowered when a conflict truncates below it.
    persisted: LogIndex,
    /// Lowest index written or overwritten since the last `take_unstable`; storage must drop its
    /// entries from here on and write ours.
    unstable_from: Option<LogIndex>,
}

impl RaftLog {
    /// A log restored from storage. `applied` entries were already applied by the state machine,
    /// so they are also known committed.
    pub fn restore(
        snapshot: SnapshotMeta,
        entries: Vec<Entry>,
        applied: LogIndex,
        base_membership: Membership,
    ) -> Self {
        let SnapshotMeta { index: offset, term: offset_term, time: offset_time } = snapshot;
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.index.0, offset.0 + 1 + i as u64, "restored log is not contiguous");
        }
        let bytes = entries.iter().map(Entry::size_bytes).sum();
        let uncommitted_bytes =
            entries.iter().filter(|e| e.index > applied).map(Entry::size_bytes).sum();
        let membership_entries =
            entries.iter().filter(|e| e.membership.is_some()).map(|e| e.index).collect();
        let mut log = RaftLog {
            offset,
            offset_term,
            offset_time,
            bytes,
            uncommitted_bytes,
            base_membership,
            membership_entries,
            entries,
            commit: applied,
            applied,
            persisted: LogIndex(0),
            unstable_from: None,
        };
        log.persisted = log.last_index();
        assert!(applied >= offset && applied <= log.last_index(), "applied index outside the log");
        log
    }

    /// The membership in effect: that of the last membership entry held, else the base.
    pub fn membership(&self) -> &Membership {
        match self.membership_entries.last() {
            Some(i) => {
                let e = &self.entries[self.position(*i)];
                e.membership.as_ref().expect("listed as a membership entry")
            }
            None => &self.base_membership,
        }
    }

    /// The membership before the last membership entry held.
    pub fn previous_membership(&self) -> &Membership {
        match self.membership_entries.len() {
            0 | 1 => &self.base_membership,
            n => {
                let e = &self.entries[self.position(self.membership_entries[n - 2])];
                e.membership.as_ref().expect("listed as a membership entry")
            }
        }
    }

    /// The index of the last membership entry held; if it was compacted away, the snapshot
    /// index (the membership in effect is part of the state there). A node that holds the log
    /// up to this index holds the membership in effect.
    pub fn last_membership_index(&self) -> LogIndex {
        self.membership_entries.last().copied().unwrap_or(self.offset)
    }

    /// The membership at the snapshot the log starts after (a snapshot just installed).
    pub fn set_base_membership(&mut self, m: Membership) {
        self.base_membership = m;
    }

    fn note_appended(&mut self, entries: &[Entry]) {
        for e in entries.iter().filter(|e| e.membership.is_some()) {
            self.membership_entries.push(e.index);
        }
    }

    /// The snapshot the log starts after: entries up to it are compacted away.
    pub fn snapshot(&self) -> SnapshotMeta {
        SnapshotMeta { index: self.offset, term: self.offset_term, time: self.offset_time }
    }

    /// Bytes of the entries held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes of the entries held after the commit index.
    pub fn uncommitted_bytes(&self) -> usize {
        self.uncommitted_bytes
    }

    /// Drops the entries up to `index`, which must be applied and durable: the state machine
    /// now stands for them.
    pub fn compact(&mut self, index: LogIndex) -> SnapshotMeta {
        assert!(index <= self.applied, "compaction past the applied index");
        assert!(index <= self.persisted_index(), "compaction past the durable log");
        if index <= self.offset {
            return self.snapshot();
        }
        let term = self.term(index).expect("held");
        let time = self.time(index).expect("held");
        // The membership in effect at `index` becomes the base.
        if let Some(last) = self.membership_entries.iter().rev().find(|i| **i <= index) {
            let e = &self.entries[self.position(*last)];
            self.base_membership = e.membership.clone().expect("listed as a membership entry");
        }
        self.membership_entries.retain(|i| *i > index);
        let n = (index.0 - self.offset.0) as usize;
        self.bytes -= self.entries[..n].iter().map(Entry::size_bytes).sum::<usize>();
        self.entries.drain(..n);
        self.offset = index;
        self.offset_term = term;
        self.offset_time = time;
        self.snapshot()
    }

    /// The lowest index to compact to so that the entries after it, up to `upto`, hold at
    /// most `bytes_max` bytes (the offset if they all fit).
    pub fn keep_within_bytes(&self, upto: LogIndex, bytes_max: usize) -> LogIndex {
        let mut kept = 0;
        let mut i = upto.min(self.last_index());
        while i > self.offset {
            kept += self.entries[self.position(i)].size_bytes();
            if kept > bytes_max {
                return i;
            }
            i = LogIndex(i.0 - 1);
        }
        self.offset
    }

    /// Replaces the whole log with a snapshot received from the leader: the state machine is
    /// the snapshot's, and the log starts after it.
    pub fn restore_snapshot(&mut self, meta: SnapshotMeta) {
        assert!(meta.index > self.commit, "a snapshot must be ahead of the commit index");
        self.entries.clear();
        self.membership_entries.clear();
        self.bytes = 0;
        self.uncommitted_bytes = 0;
        self.offset = meta.index;
        self.offset_term = meta.term;
        self.offset_time = meta.time;
        self.commit = meta.index;
        self.applied = meta.index;
        self.persisted = meta.index;
        self.unstable_from = None;
    }

    pub fn last_index(&self) -> LogIndex {
        LogIndex(self.offset.0 + self.entries.len() as u64)
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.offset_term, |e| e.term)
    }

    /// The time of the last entry (`Entry::time`): the floor of the next one's.
    pub fn last_time(&self) -> u64 {
        self.entries.last().map_or(self.offset_time, |e| e.time)
    }

    /// The time of the entry at `index`, or None if the log does not hold it.
    pub fn time(&self, index: LogIndex) -> Option<u64> {
        if index == self.offset {
            return Some(self.offset_time);
        }
        self.held(index).map(|e| e.time)
    }

    /// The entry at `index`, if held (not compacted, not past the end).
    fn held(&self, index: LogIndex) -> Option<&Entry> {
        if index <= self.offset || index > self.last_index() {
            return None;
        }
        Some(&self.entries[(index.0 - self.offset.0 - 1) as usize])
    }

    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }

    pub fn applied_index(&self) -> LogIndex {
        self.applied
    }

    /// The term of the entry at `index`, or None if the log does not hold it.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.offset {
            return Some(self.offset_term);
        }
        self.held(index).map(|e| e.term)
    }

    fn position(&self, index: LogIndex) -> usize {
        debug_assert!(index > self.offset && index <= self.last_index().next());
        (index.0 - self.offset.0 - 1) as usize
    }

    /// Entries from `from` on, at most `max_entries` and about `max_bytes` (always at least one).
    pub fn entries_from(&self, from: LogIndex, max_entries: usize, max_bytes: usize) -> Vec<Entry> {
        if from > self.last_index() {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut bytes = 0;
        for e in &self.entries[self.position(from)..] {
            if !out.is_empty() && (out.len() >= max_entries || bytes + e.size_bytes() > max_bytes) {
                break;
            }
            bytes += e.size_bytes();
            out.push(e.clone());
        }
        out
    }

    /// §5.4.1: is a log ending at (`last_index`, `last_term`) at least as up-to-date as ours?
    pub fn is_up_to_date(&self, last_index: LogIndex, last_term: Term) -> bool {
        last_term > self.last_term()
            || (last_term == self.last_term() && last_index >= self.last_index())
    }

    /// Leader append of new entries at the end of the log.
    pub fn append(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index().next(), "append leaves a gap");
        assert!(entry.term >= self.last_term(), "append with a lower term");
        self.mark_unstable(entry.index);
        self.bytes += entry.size_bytes();
        self.uncommitted_bytes += entry.size_bytes();
        self.note_appended(std::slice::from_ref(&entry));
        self.entries.push(entry);
    }

    fn mark_unstable(&mut self, index: LogIndex) {
        self.unstable_from = Some(self.unstable_from.map_or(index, |u| u.min(index)));
    }

    /// Follower side of AppendEntries (§5.3): if our log holds `prev` with `prev_term`, merge
    /// `entries` (truncating at the first conflict, never truncating a matching suffix, since the
    /// message may be stale or duplicated) and return the last index now known to match the
    /// leader. None if the consistency check fails.
    pub fn maybe_append(
        &mut self,
        prev: LogIndex,
        prev_term: Term,
        entries: &[Entry],
    ) -> Option<LogIndex> {
        if self.term(prev) != Some(prev_term) {
            return None;
        }
        let last_new = LogIndex(prev.0 + entries.len() as u64);
        for (i, e) in entries.iter().enumerate() {
            debug_assert_eq!(e.index.0, prev.0 + 1 + i as u64);
            match self.term(e.index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    assert!(e.index > self.commit, "conflict at committed index {}", e.index);
                    reach::hit(Path::ConflictTruncated);
                    let pos = self.position(e.index);
                    let dropped = self.entries[pos..].iter().map(Entry::size_bytes).sum::<usize>();
                    self.bytes -= dropped;
                    // Past the commit index, as asserted above.
                    self.uncommitted_bytes -= dropped;
                    self.entries.truncate(pos);
                    self.membership_entries.retain(|i| *i < e.index);
                    self.persisted = self.persisted.min(e.index.prev());
                }
                None if e.index <= self.offset => continue,
                None => {}
            }
            self.mark_unstable(e.index);
            // Past the commit index: below it the entries match (or are compacted).
            let added = entries[i..].iter().map(Entry::size_bytes).sum::<usize>();
            self.bytes += added;
            self.uncommitted_bytes += added;
            self.note_appended(&entries[i..]);
            self.entries.extend_from_slice(&entries[i..]);
            break;
        }
        Some(last_new)
    }

    /// The last index at or before `index` whose term is <= `term`. Fast backtracking (§5.3, as
    /// in etcd's findConflictByTerm): a follower rejecting `prev` answers with this for the
    /// leader's `prev_log_term`, and the leader applies it again to the follower's answer, so a
    /// whole divergent term is skipped in one round trip.
    pub fn last_index_with_term_at_most(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut i = index.min(self.last_index());
        while i > self.offset {
            match self.term(i) {
                Some(t) if t <= term => return i,
                _ => i = i.prev(),
            }
        }
        self.offset
    }

    /// Storage reports the log durable up to `index`. Ignored if the entry there has since been
    /// replaced (the report is about an older write).
    pub fn persisted_to(&mut self, index: LogIndex, term: Term) {
        if self.term(index) == Some(term) && index > self.persisted {
            self.persisted = index;
        }
    }

    /// The last index that is both durable and still in the log.
    pub fn persisted_index(&self) -> LogIndex {
        match self.unstable_from {
            Some(u) => self.persisted.min(u.prev()),
            None => self.persisted,
        }
    }

    pub fn commit_to(&mut self, index: LogIndex) -> bool {
        if index <= self.commit {
            return false;
        }
        assert!(
            index <= self.last_index(),
            "commit {} beyond last index {}",
            index,
            self.last_index()
        );
        let from = self.position(self.commit.next());
        let to = self.position(index) + 1;
        self.uncommitted_bytes -=
            self.entries[from..to].iter().map(Entry::size_bytes).sum::<usize>();
        self.commit = index;
        true
    }

    /// Hands out the entries between `applied` and `commit`, at most `max_entries`, and records
    /// them as applied: the runtime applies each batch before it steps the node again.
    pub fn take_committed(&mut self, max_entries: usize) -> Vec<Entry> {
        if self.applied >= self.commit {
            return Vec::new();
        }
        let from = self.position(self.applied.next());
        let to = self.position(self.commit) + 1;
        let to = to.min(from + max_entries);
        let out = self.entries[from..to].to_vec();
        self.applied = out.last().expect("non-empty").index;
        out
    }

    /// The suffix changed since the last call: storage deletes its entries from the first index
    /// on and writes these.
    pub fn take_unstable(&mut self) -> Option<(LogIndex, Vec<Entry>)> {
        let from = self.unstable_from.take()?;
        let entries = if from > self.last_index() {
            Vec::new()
        } else {
            self.entries[self.position(from)..].to_vec()
        };
        Some((from, entries))
    }

    /// The checks of `check_invariants` that take constant time: the indexes' order, and
    /// the ends of the held entries.
    pub fn check_bounds(&self) {
        assert!(self.applied <= self.commit);
        assert!(self.commit <= self.last_index());
        assert!(self.commit >= self.offset);
        if let (Some(first), Some(last)) = (self.entries.first(), self.entries.last()) {
            assert_eq!(first.index, self.offset.next());
            assert!(first.term >= self.offset_term, "terms decrease at {}", first.index);
            assert_eq!(last.index.0, self.offset.0 + self.entries.len() as u64);
        }
    }

    /// Every invariant of the log, in time linear in the entries held.
    pub fn check_invariants(&self) {
        self.check_bounds();
        debug_assert_eq!(self.bytes, self.entries.iter().map(Entry::size_bytes).sum::<usize>());
        debug_assert_eq!(
            self.uncommitted_bytes,
            self.entries
                .iter()
                .filter(|e| e.index > self.commit)
                .map(Entry::size_bytes)
                .sum::<usize>()
        );
        let mut term = self.offset_term;
        for (i, e) in self.entries.iter().enumerate() {
            assert_eq!(e.index.0, self.offset.0 + 1 + i as u64);
            assert!(e.term >= term, "terms decrease at {}", e.index);
            term = e.term;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::NodeId;

    fn e(index: u64, term: u64) -> Entry {
        Entry::new(LogIndex(index), Term(term), vec![index as u8])
    }

    fn log_with(terms: &[u64]) -> RaftLog {
        let entries = terms.iter().enumerate().map(|(i, t)| e(i as u64 + 1, *t)).collect();
        RaftLog::restore(SnapshotMeta::default(), entries, LogIndex(0), Membership::default())
    }

    #[test]
    fn the_kept_suffix_is_bounded_by_bytes() {
        let log = log_with(&[1, 1, 1, 1]);
        let size = log.entries[0].size_bytes();
        assert_eq!(log.keep_within_bytes(LogIndex(4), 2 * size), LogIndex(2));
        assert_eq!(log.keep_within_bytes(LogIndex(4), 2 * size - 1), LogIndex(3));
        assert_eq!(log.keep_within_bytes(LogIndex(3), 10 * size), LogIndex(0));
        assert_eq!(log.keep_within_bytes(LogIndex(4), 0), LogIndex(4));
    }

    #[test]
    fn maybe_append_rejects_missing_prev_5_3() {
        let mut log = log_with(&[1, 1]);
        assert_eq!(log.maybe_append(LogIndex(3), Term(1), &[e(4, 1)]), None);
        assert_eq!(log.maybe_append(LogIndex(2), Term(2), &[e(3, 2)]), None);
    }

    #[test]
    fn maybe_append_truncates_only_at_a_conflict_5_3() {
        let mut log = log_with(&[1, 1, 1]);
        log.take_unstable();
        // A stale duplicate of entry 2 must not truncate entry 3.
        assert_eq!(log.maybe_append(LogIndex(1), Term(1), &[e(2, 1)]), Some(LogIndex(2)));
        assert_eq!(log.last_index(), LogIndex(3));
        assert!(log.take_unstable().is_none());
        // A conflicting entry 2 replaces the suffix.
        assert_eq!(log.maybe_append(LogIndex(1), Term(1), &[e(2, 2)]), Some(LogIndex(2)));
        assert_eq!(log.last_index(), LogIndex(2));
        assert_eq!(log.take_unstable(), Some((LogIndex(2), vec![e(2, 2)])));
    }

    #[test]
    fn last_index_with_term_at_most_finds_the_leaders_matching_prefix() {
        let log = log_with(&[1, 1, 3, 3]);
        assert_eq!(log.last_index_with_term_at_most(LogIndex(4), Term(2)), LogIndex(2));
        assert_eq!(log.last_index_with_term_at_most(LogIndex(4), Term(3)), LogIndex(4));
        assert_eq!(log.last_index_with_term_at_most(LogIndex(4), Term(0)), LogIndex(0));
    }

    fn voters(ids: &[u64]) -> Membership {
        Membership { voters: ids.iter().map(|i| NodeId(*i)).collect(), ..Membership::default() }
    }

    /// Entries 1..=6 of term 1 stamped 100 ms apart; 2, 4 and 6 change the membership.
    fn log_with_memberships() -> RaftLog {
        let entries = (1..=6)
            .map(|i| {
                let mut x = e(i, 1);
                x.time = 100 * i;
                x.membership = match i {
                    2 => Some(voters(&[1, 2])),
                    4 => Some(voters(&[1, 2, 3])),
                    6 => Some(voters(&[1, 2, 3, 4])),
                    _ => None,
                };
                x
            })
            .collect();
        RaftLog::restore(SnapshotMeta::default(), entries, LogIndex(0), voters(&[1]))
    }

    #[test]
    fn the_membership_in_effect_and_the_one_before_follow_truncation_and_compaction_4_1() {
        let mut log = log_with_memberships();
        assert_eq!(log.membership(), &voters(&[1, 2, 3, 4]));
        assert_eq!(log.previous_membership(), &voters(&[1, 2, 3]));
        // A conflicting leader replaces entry 6: the membership of entry 4 is back.
        assert_eq!(log.maybe_append(LogIndex(5), Term(1), &[e(6, 2)]), Some(LogIndex(6)));
        assert_eq!(log.membership(), &voters(&[1, 2, 3]));
        assert_eq!(log.previous_membership(), &voters(&[1, 2]));
        assert_eq!(log.last_membership_index(), LogIndex(4));
        // Compacted through entry 4, whose membership becomes the base.
        log.commit_to(LogIndex(5));
        log.take_committed(10);
        let snapshot = log.compact(LogIndex(4));
        assert_eq!(snapshot.time, 400, "the snapshot carries the time of its last entry");
        assert_eq!(log.time(LogIndex(4)), Some(400));
        assert_eq!(log.time(LogIndex(5)), Some(500));
        assert_eq!(log.membership(), &voters(&[1, 2, 3]));
        assert_eq!(log.last_membership_index(), LogIndex(4));
        // A later membership entry stays listed after a compaction before it.
        let mut log = log_with_memberships();
        log.commit_to(LogIndex(5));
        log.take_committed(10);
        log.compact(LogIndex(3));
        assert_eq!(log.membership(), &voters(&[1, 2, 3, 4]));
        assert_eq!(log.previous_membership(), &voters(&[1, 2, 3]));
        log.check_invariants();
    }

    #[test]
    fn an_append_carries_at_most_its_byte_budget_and_at_least_one_entry() {
        let log = log_with(&[1, 1, 1, 1]);
        let size = log.entries[0].size_bytes();
        assert_eq!(log.entries_from(LogIndex(1), 10, 2 * size).len(), 2);
        assert_eq!(log.entries_from(LogIndex(1), 10, 2 * size - 1).len(), 1);
        assert_eq!(log.entries_from(LogIndex(1), 10, 0).len(), 1);
        assert_eq!(log.entries_from(LogIndex(2), 2, 100 * size).len(), 2);
        assert_eq!(log.entries_from(LogIndex(1), 10, 100 * size).len(), 4);
    }

    #[test]
    fn take_committed_is_bounded_and_advances_applied() {
        let mut log = log_with(&[1, 1, 1]);
        log.commit_to(LogIndex(3));
        assert_eq!(log.take_committed(2), vec![e(1, 1), e(2, 1)]);
        assert_eq!(log.take_committed(2), vec![e(3, 1)]);
        assert!(log.take_committed(2).is_empty());
        log.check_invariants();
    }
}
