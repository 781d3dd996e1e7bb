//! Where a node's log writes become durable. The node task writes the hard state and log
//! entries to storage without waiting for the disk and goes on stepping; a sync task beside it
//! syncs the write-ahead log and reports which write it covered. Until then, every message
//! that may claim what those writes hold (an AppendEntries acknowledgement, a vote, a
//! candidate's own vote request) is held here, and the core hears `Input::Persisted` only for
//! what is synced. A leader's own messages leave at once (Raft thesis §10.2.1): the leader
//! counts itself in a commit quorum only once its entries are synced.

use crate::storage::{LogSync, StorageError};
use raft_kv_core::{LogIndex, Message, MessageBody, Term};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The simulation's disk latency: the wait before each sync.
pub type SyncDelay = Arc<dyn Fn() -> Duration + Send + Sync>;

/// The node task's side: which writes are made, which are synced, and what waits for them.
pub struct Durability {
    /// Number of the last log write. Invariant: `synced <= written`.
    written: u64,
    /// Number of the last write a sync covered.
    synced: u64,
    /// Number of the last write that held a hard state (term, vote): until it is synced, not
    /// even a leader's messages may leave (a single voter wins its election, and sends to its
    /// learners, without waiting for anyone's vote).
    hard_state_written: u64,
    /// The sync task reads the latest `written` here: requests coalesce.
    request: watch::Sender<u64>,
    /// The last entry of each unsynced write, by write number (ascending). Bounded by the
    /// writes made between two syncs, each of which appends an entry the core still counts as
    /// uncommitted work (it refuses proposals past its limit).
    appended: VecDeque<(u64, LogIndex, Term)>,
    /// Messages waiting for the write they were sent after (ascending).
    held: VecDeque<(u64, Vec<Message>)>,
    /// Messages held at once, at most; past it the node stops taking input until a sync
    /// (the channels then push back on peers and clients).
    held_max: usize,
    held_len: usize,
}

/// What a finished sync made durable.
pub struct Synced {
    /// The log is durable up to each of these (the last entry of each covered write).
    pub persisted: Vec<(LogIndex, Term)>,
    /// Messages that may leave now, in the order they were made.
    pub released: Vec<Message>,
}

impl Durability {
    pub fn new(request: watch::Sender<u64>, held_max: usize) -> Durability {
        Durability {
            written: 0,
            synced: 0,
            hard_state_written: 0,
            request,
            appended: VecDeque::new(),
            held: VecDeque::new(),
            held_max,
            held_len: 0,
        }
    }

    /// A write was made: `hard_state` if it held one, `append` the first index it wrote (the
    /// stored log is replaced from there) and its last entry. Asks for a sync.
    pub fn wrote(
        &mut self,
        hard_state: bool,
        append: Option<(LogIndex, Option<(LogIndex, Term)>)>,
    ) {
        self.written += 1;
        if hard_state {
            self.hard_state_written = self.written;
        }
        if let Some((from, last)) = append {
            // Entries from `from` on are replaced: a report of an earlier write must not
            // vouch for them (the same index and term may be written again, unsynced).
            self.appended.retain(|&(_, index, _)| index < from);
            if let Some((index, term)) = last {
                self.appended.push_back((self.written, index, term));
            }
        }
        // The sync task ends only with the node task, so nobody listening is no error.
        let _ = self.request.send(self.written);
    }

    /// Whether some write is not yet synced.
    pub fn pending(&self) -> bool {
        self.synced < self.written
    }

    /// A snapshot install replaced the stored log, durably: no earlier write's report may
    /// vouch for entries any more.
    pub fn log_replaced(&mut self) {
        self.appended.clear();
    }

    /// Of the messages a node made, those that may leave now; the rest are held until every
    /// write made so far is synced. `leader`: they come from a leader, which may send before
    /// its entries are durable (it counts itself in a quorum only once they are), but not
    /// before its term and vote are. `planted`: `PlantedBug::AckBeforeSyncCompletes`.
    pub fn gate(&mut self, messages: Vec<Message>, leader: bool, planted: bool) -> Vec<Message> {
        let leader_may_send = leader && self.synced >= self.hard_state_written;
        if !self.pending() || leader_may_send || planted {
            return messages;
        }
        let (held, now): (Vec<Message>, Vec<Message>) =
            messages.into_iter().partition(vouches_for_storage);
        if !held.is_empty() {
            self.held_len += held.len();
            match self.held.back_mut() {
                Some((w, msgs)) if *w == self.written => msgs.extend(held),
                _ => self.held.push_back((self.written, held)),
            }
        }
        now
    }

    /// Too many messages wait for a sync to take more input.
    pub fn full(&self) -> bool {
        self.held_len >= self.held_max
    }

    /// The sync task reports `write` synced.
    pub fn synced(&mut self, write: u64) -> Synced {
        assert!(write <= self.written, "a sync reported write {write} of {}", self.written);
        self.synced = self.synced.max(write);
        let mut persisted = Vec::new();
        while let Some(&(w, index, term)) = self.appended.front() {
            if w > self.synced {
                break;
            }
            self.appended.pop_front();
            persisted.push((index, term));
        }
        let mut released = Vec::new();
        while self.held.front().is_some_and(|(w, _)| *w <= self.synced) {
            let (_, msgs) = self.held.pop_front().expect("checked");
            self.held_len -= msgs.len();
            released.extend(msgs);
        }
        Synced { persisted, released }
    }
}

/// Whether a message may vouch for what this node stored: an acknowledgement, a vote, a vote
/// request (the candidate voted for itself), a snapshot acknowledgement. Work forwarded to
/// the leader (proposals, read-index requests, membership and transfer requests), and a
/// leader's refusal of forwarded proposals, vouch for nothing and need not wait.
fn vouches_for_storage(m: &Message) -> bool {
    !matches!(
        m.body,
        MessageBody::Propose { .. }
            | MessageBody::ProposalsRefused { .. }
            | MessageBody::ReadIndex { .. }
            | MessageBody::ProposeMembership { .. }
            | MessageBody::TransferLeader { .. }
    )
}

/// A WAL fsync at least this long is logged (and counted by the metrics' histogram).
const SLOW_FSYNC: std::time::Duration = std::time::Duration::from_millis(500);

/// Syncs the storage whenever the node task made writes since the last sync, and reports the
/// last write each sync covered. Ends when the node task does.
pub async fn sync_loop(
    sync: Arc<dyn LogSync>,
    mut requests: watch::Receiver<u64>,
    done: mpsc::Sender<Result<u64, StorageError>>,
    delay: Option<SyncDelay>,
    planted: Option<raft_kv_core::PlantedBug>,
    metrics: Arc<crate::metrics::Metrics>,
    node: raft_kv_core::NodeId,
) {
    while requests.changed().await.is_ok() {
        // Every write numbered up to `write` was made before this sync begins.
        let write = *requests.borrow_and_update();
        if let Some(delay) = &delay {
            tokio::time::sleep(delay()).await;
        }
        let sync = sync.clone();
        // A task in the simulation (where blocking is simulated time), a blocking-pool thread
        // on tokio: the fsync never stalls the node task's thread.
        let began = tokio::time::Instant::now();
        #[allow(deprecated)]
        let result = match tokio::task::spawn_blocking(move || sync.sync()).await {
            Ok(r) => r.map(|()| write),
            Err(e) => Err(StorageError::Io(format!("the WAL sync task failed: {e}"))),
        };
        let took = began.elapsed();
        metrics.fsync_seconds.observe(took.as_secs_f64());
        metrics.fsync_latency(took);
        if took >= SLOW_FSYNC {
            tracing::warn!(
                node = node.0,
                up_to_write = write,
                took_ms = took.as_millis() as u64,
                "slow WAL fsync: the disk took over 500 ms; writes wait for it"
            );
        }
        // A failed sync stops the node: what it wrote may never reach the disk, whatever a
        // later sync says (the kernel may have dropped the pages), so nothing after it can be
        // acknowledged. The planted bug goes on as if it had worked.
        let ignore = raft_kv_core::planted::PlantedBug::SyncErrorIgnored;
        let result = match result {
            Err(_) if raft_kv_core::planted::active(planted, ignore) => Ok(write),
            r => r,
        };
        let failed = result.is_err();
        if done.send(result).await.is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_kv_core::NodeId;

    fn msg(n: u64) -> Message {
        Message { from: NodeId(1), to: NodeId(n), term: Term(1), body: MessageBody::TimeoutNow }
    }

    /// A `Durability` holding at most `held_max` messages, and what its sync task would see.
    fn durability(held_max: usize) -> (Durability, watch::Receiver<u64>) {
        let (tx, rx) = watch::channel(0);
        (Durability::new(tx, held_max), rx)
    }

    /// A write of entries `from..=last`, all of term 1.
    fn append(from: u64, last: u64) -> Option<(LogIndex, Option<(LogIndex, Term)>)> {
        Some((LogIndex(from), Some((LogIndex(last), Term(1)))))
    }

    #[test]
    fn held_messages_leave_only_once_the_writes_before_them_are_synced() {
        let (mut d, rx) = durability(100);
        assert_eq!(d.gate(vec![msg(2)], false, false), vec![msg(2)], "nothing to wait for");
        d.wrote(false, append(1, 3));
        assert_eq!(d.gate(vec![msg(2)], false, false), vec![]);
        assert_eq!(d.gate(vec![msg(4)], true, false), vec![msg(4)], "a leader's go now");
        let forward = Message { body: MessageBody::Propose { proposals: vec![] }, ..msg(1) };
        assert_eq!(d.gate(vec![forward.clone()], false, false), vec![forward]);
        d.wrote(false, append(4, 5));
        assert_eq!(d.gate(vec![msg(3)], false, false), vec![]);
        assert_eq!(*rx.borrow(), 2, "the sync task sees the latest write");
        let s = d.synced(1);
        assert_eq!(s.persisted, vec![(LogIndex(3), Term(1))]);
        assert_eq!(s.released, vec![msg(2)]);
        assert!(d.pending());
        let s = d.synced(2);
        assert_eq!(s.persisted, vec![(LogIndex(5), Term(1))]);
        assert_eq!(s.released, vec![msg(3)]);
        assert!(!d.pending());
    }

    #[test]
    fn not_even_a_leader_sends_before_its_term_is_durable() {
        // A single voter campaigns and leads in one step: its first messages (to learners)
        // carry a term that is not on disk yet.
        let (mut d, _rx) = durability(100);
        d.wrote(true, append(7, 7));
        d.wrote(false, append(8, 8));
        assert_eq!(d.gate(vec![msg(2)], true, false), vec![]);
        assert_eq!(d.synced(1).released, vec![], "held for every write before it");
        assert_eq!(d.gate(vec![msg(3)], true, false), vec![msg(3)], "the term is durable now");
        assert_eq!(d.synced(2).released, vec![msg(2)]);
    }

    #[test]
    fn a_replaced_entry_is_not_vouched_for_by_an_earlier_write() {
        let (mut d, _rx) = durability(100);
        d.wrote(false, append(5, 10));
        // Entries from 9 on are written again (the same index and term may come back).
        d.wrote(false, append(9, 10));
        assert_eq!(d.synced(1).persisted, vec![], "write 1 no longer vouches for 10");
        assert_eq!(d.synced(2).persisted, vec![(LogIndex(10), Term(1))]);
        d.wrote(false, append(11, 12));
        d.log_replaced();
        assert_eq!(d.synced(3).persisted, vec![]);
    }

    #[test]
    fn a_full_hold_is_reported() {
        let (mut d, _rx) = durability(2);
        d.wrote(false, None);
        d.gate(vec![msg(2)], false, false);
        assert!(!d.full());
        d.gate(vec![msg(3)], false, false);
        assert!(d.full());
        assert_eq!(d.synced(1).released.len(), 2);
        assert!(!d.full());
    }
}
