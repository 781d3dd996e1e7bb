//! The deterministic in-process cluster the core's tests drive: every `Ready` handled as the
//! runtime would (persist, send, apply, serve reads, report `Persisted`), every node's invariants
//! checked after every step, and the cluster-wide ones (at most one leader per term; committed
//! entries never change on any node). No clock, no threads; every loop has a limit.

#![allow(dead_code)] // each test binary uses its own part of the harness

use raft_kv_core::{
    Config, Entry, HardState, Input, LogIndex, Membership, MembershipChange, Message, MessageBody,
    NodeId, RaftNode, ReadState, Ready, Rejection, RestoredState, Role, SnapshotMeta, Term,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub const ELECTION_TICKS: u32 = 10;
pub const HEARTBEAT_TICKS: u32 = 2;
/// Readies one `process` may drain before the node is declared stuck in a loop.
pub const READIES_PER_PROCESS_MAX: usize = 64;
/// Delivery rounds one `settle` may take before the network is declared stuck in a loop.
pub const SETTLE_ROUNDS_MAX: usize = 256;
/// Messages in flight at once; more means a node is flooding the network.
pub const QUEUE_MESSAGES_MAX: usize = 10_000;

pub fn config(id: u64, voters_count: u64) -> Config {
    let voters = (1..=voters_count).map(NodeId).collect();
    let mut cfg = Config::new(NodeId(id), voters, 0x5eed_0000 + id);
    // The start-up probe of an empty log has its own tests (`a_blank_node_*`).
    cfg.check_empty_start = false;
    cfg.election_ticks = ELECTION_TICKS;
    cfg.heartbeat_ticks = HEARTBEAT_TICKS;
    cfg
}

/// Entry data is a function of (index, term), so logs that agree on both agree on the entry, as
/// Log Matching requires of real logs.
pub fn entry(index: u64, term: u64) -> Entry {
    Entry::new(LogIndex(index), Term(term), vec![index as u8, term as u8])
}

pub fn noop(index: u64, term: u64) -> Entry {
    Entry::new(LogIndex(index), Term(term), Vec::new())
}

pub fn log_of_terms(terms: &[u64]) -> Vec<Entry> {
    terms.iter().enumerate().map(|(i, t)| entry(i as u64 + 1, *t)).collect()
}

pub fn restored(term: u64, voted_for: Option<u64>, terms: &[u64]) -> RestoredState {
    RestoredState {
        hard_state: HardState {
            term: Term(term),
            voted_for: voted_for.map(NodeId),
            recovering: false,
        },
        membership: None,
        entries: log_of_terms(terms),
        applied: LogIndex(0),
        snapshot: SnapshotMeta::default(),
    }
}

/// A snapshot chunk of the harness's state machine: one applied entry per chunk.
pub fn encode_entry(e: &Entry) -> Vec<u8> {
    bincode::serde::encode_to_vec(e, bincode::config::standard()).expect("encodable")
}

pub fn decode_entry(b: &[u8]) -> Entry {
    bincode::serde::decode_from_slice(b, bincode::config::standard()).expect("decodable").0
}

pub fn msg(from: u64, to: u64, term: u64, body: MessageBody) -> Message {
    Message { from: NodeId(from), to: NodeId(to), term: Term(term), body }
}

/// Ticks node `id` alone until its election timeout makes it campaign (a pre-vote first).
pub fn tick_until_it_campaigns(c: &mut Cluster, id: u64) {
    for _ in 0..2 * ELECTION_TICKS {
        c.tick(id);
        if c.status(id).role != Role::Follower {
            break;
        }
    }
}

/// The `Ready` of a voter answering `candidate`'s vote request of `term`: its term (and its
/// vote, if granted) made durable, and the answer that travels with it.
pub fn vote_ready(voter: u64, candidate: u64, term: u64, granted: bool) -> Ready {
    Ready {
        hard_state: Some(HardState {
            term: Term(term),
            voted_for: granted.then_some(NodeId(candidate)),
            recovering: false,
        }),
        messages: vec![msg(
            voter,
            candidate,
            term,
            MessageBody::RequestVoteResponse { granted, clock_ms: 0 },
        )],
        ..Ready::default()
    }
}

/// One node plus what its runtime would hold: durable state, applied entries, served reads.
pub struct Peer {
    pub node: RaftNode,
    pub hard_state: HardState,
    /// The durable log: `stored[i].index == stored_after + 1 + i`.
    pub stored: Vec<Entry>,
    /// The durable snapshot the stored log starts after.
    pub stored_after: SnapshotMeta,
    pub applied_index: LogIndex,
    /// Entries applied since start, in order (not those installed from a snapshot).
    pub applied: Vec<Entry>,
    /// The state machine: every entry up to `applied_index`, applied or installed.
    pub sm: Vec<Entry>,
    /// Snapshot chunks received so far, and of which snapshot.
    pub staging: Vec<Entry>,
    pub staging_meta: Option<SnapshotMeta>,
    /// The membership the node started with; membership entries change it when applied.
    pub initial: Membership,
    /// Reads released by the node but not yet applied up to their index.
    pub reads_waiting: Vec<ReadState>,
    pub reads_served: Vec<ReadState>,
    pub rejected: Vec<(u64, Rejection)>,
    /// Every non-empty `Ready` handled, for exact assertions.
    pub readies: Vec<Ready>,
    /// Commit index already checked against the cluster's committed entries.
    pub commit_checked: LogIndex,
}

pub struct Cluster {
    pub peers: BTreeMap<NodeId, Peer>,
    pub queue: VecDeque<Message>,
    /// Directed links that drop every message.
    pub cut: BTreeSet<(NodeId, NodeId)>,
    /// Crashed nodes: never ticked, their messages dropped both ways.
    pub down: BTreeSet<NodeId>,
    /// Every message a node handed to the network, delivered or not.
    pub sent: Vec<Message>,
    /// At most one leader per term (§5.2 Election Safety).
    pub leaders: BTreeMap<Term, NodeId>,
    /// The entry committed at each index, on whichever node first committed it (§5.4.3).
    pub committed: BTreeMap<LogIndex, Entry>,
}

/// The harness's encoding of a membership change entry: `conf add 4`, `conf promote 4`,
/// `conf remove 2`.
pub fn conf_entry(change: &MembershipChange) -> Vec<u8> {
    match change {
        MembershipChange::AddLearner { id, .. } => format!("conf add {id}"),
        MembershipChange::Promote { id } => format!("conf promote {id}"),
        MembershipChange::Remove { id } => format!("conf remove {id}"),
    }
    .into_bytes()
}

/// The membership a state machine of `entries` holds: that of the last membership entry.
pub fn membership_of(initial: &Membership, entries: &[Entry]) -> Membership {
    entries.iter().rev().find_map(|e| e.membership.clone()).unwrap_or_else(|| initial.clone())
}

pub fn stored_entry(peer: &Peer, index: LogIndex) -> Option<&Entry> {
    let i = index.0.checked_sub(peer.stored_after.index.0 + 1)?;
    peer.stored.get(i as usize)
}

/// Two stored logs end at the same index and agree wherever both hold an entry.
pub fn logs_agree(a: &Peer, b: &Peer) -> bool {
    let last = |p: &Peer| p.stored_after.index.0 + p.stored.len() as u64;
    if last(a) != last(b) {
        return false;
    }
    let from = a.stored_after.index.0.max(b.stored_after.index.0) + 1;
    (from..=last(a)).all(|i| stored_entry(a, LogIndex(i)) == stored_entry(b, LogIndex(i)))
}

impl Cluster {
    pub fn new(voters_count: u64) -> Cluster {
        Cluster::restored(vec![RestoredState::default(); voters_count as usize], |_| {})
    }

    /// Node `i + 1` restarts from `states[i]`; `tune` adjusts every node's config.
    pub fn restored(states: Vec<RestoredState>, tune: impl Fn(&mut Config)) -> Cluster {
        let voters_count = states.len() as u64;
        let mut cluster = Cluster {
            peers: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            down: BTreeSet::new(),
            sent: Vec::new(),
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
        };
        for (i, state) in states.into_iter().enumerate() {
            let id = NodeId(i as u64 + 1);
            let mut cfg = config(id.0, voters_count);
            tune(&mut cfg);
            cluster.add_peer(id, cfg, state);
        }
        cluster
    }

    /// A new node `id`, not yet a member, of a cluster that started with `voters_count` voters.
    pub fn join(&mut self, id: u64, voters_count: u64, tune: impl Fn(&mut Config)) {
        let mut cfg = config(id, voters_count);
        tune(&mut cfg);
        self.add_peer(NodeId(id), cfg, RestoredState::default());
    }

    pub fn add_peer(&mut self, id: NodeId, cfg: Config, state: RestoredState) {
        let cluster = self;
        {
            let initial = Membership {
                voters: cfg.voters.iter().copied().collect(),
                ..Membership::default()
            };
            let node = RaftNode::new(cfg, state.clone()).expect("valid config and state");
            // A restored snapshot at (i, t) stands for entries 1..=i of term t.
            let snap = state.snapshot;
            let mut sm: Vec<Entry> = (1..=snap.index.0).map(|i| entry(i, snap.term.0)).collect();
            sm.extend_from_slice(&state.entries[..(state.applied.0 - snap.index.0) as usize]);
            for e in &sm {
                cluster.record_committed(e);
            }
            let peer = Peer {
                node,
                hard_state: state.hard_state,
                sm,
                stored: state.entries,
                stored_after: snap,
                applied_index: state.applied,
                applied: Vec::new(),
                staging: Vec::new(),
                staging_meta: None,
                initial,
                reads_waiting: Vec::new(),
                reads_served: Vec::new(),
                rejected: Vec::new(),
                readies: Vec::new(),
                commit_checked: state.applied,
            };
            cluster.peers.insert(id, peer);
            cluster.check(id);
        }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.peers.keys().copied().collect()
    }

    pub fn peer(&self, id: u64) -> &Peer {
        &self.peers[&NodeId(id)]
    }

    pub fn status(&self, id: u64) -> raft_kv_core::Status {
        self.peer(id).node.status()
    }

    pub fn stored(&self, id: u64) -> &[Entry] {
        &self.peer(id).stored
    }

    pub fn take_readies(&mut self, id: u64) -> Vec<Ready> {
        std::mem::take(&mut self.peers.get_mut(&NodeId(id)).expect("known node").readies)
    }

    /// Nodes currently in the leader role (a deposed leader may not know it yet).
    pub fn leaders_now(&self) -> Vec<NodeId> {
        self.ids()
            .into_iter()
            .filter(|id| self.peers[id].node.status().role == Role::Leader)
            .collect()
    }

    /// The single leader that every live node follows, with every live node's commit index at
    /// least `commit` and the log identical everywhere.
    pub fn converged(&self, commit: u64) -> Option<NodeId> {
        let live: Vec<NodeId> =
            self.ids().into_iter().filter(|id| !self.down.contains(id)).collect();
        let leader = self.peers[&live[0]].node.status().leader?;
        let leader_peer = self.peers.get(&leader)?;
        let all = live.iter().all(|id| {
            let st = self.peers[id].node.status();
            st.leader == Some(leader)
                && st.commit_index >= LogIndex(commit)
                && st.applied_index == st.commit_index
                && self.peers[id].sm == leader_peer.sm
                && logs_agree(&self.peers[id], leader_peer)
        });
        all.then_some(leader)
    }

    // ---- checks -----------------------------------------------------------------------------

    pub fn check(&mut self, id: NodeId) {
        let peer = &self.peers[&id];
        peer.node.check_invariants();
        let st = peer.node.status();
        assert_eq!(st.id, id);
        assert!(st.commit_index >= peer.commit_checked, "node {id}: commit index went backwards");
        if st.role == Role::Leader {
            let first = *self.leaders.entry(st.term).or_insert(id);
            assert_eq!(first, id, "two leaders in term {}: {first} and {id}", st.term);
        }
    }

    pub fn record_committed(&mut self, e: &Entry) {
        let first = self.committed.entry(e.index).or_insert_with(|| e.clone());
        assert_eq!(
            first, e,
            "state-machine safety: two different entries committed at {}",
            e.index
        );
    }

    // ---- driving ----------------------------------------------------------------------------

    pub fn step(&mut self, id: u64, input: Input) {
        self.step_id(NodeId(id), input);
    }

    pub fn step_id(&mut self, id: NodeId, input: Input) {
        assert!(!self.down.contains(&id), "stepping crashed node {id}");
        self.peers.get_mut(&id).expect("known node").node.step(input);
        self.check(id);
    }

    /// Drains `ready()` until the node has nothing left to do, handling each in contract order.
    pub fn process(&mut self, id: u64) {
        self.process_id(NodeId(id));
    }

    pub fn process_id(&mut self, id: NodeId) {
        for _ in 0..READIES_PER_PROCESS_MAX {
            let ready = self.peers.get_mut(&id).expect("known node").node.ready();
            self.check(id);
            if ready.is_empty() {
                return;
            }
            self.handle(id, &ready);
            self.peers.get_mut(&id).expect("known node").readies.push(ready);
        }
        panic!("node {id} still produces work after {READIES_PER_PROCESS_MAX} readies");
    }

    pub fn handle(&mut self, id: NodeId, ready: &Ready) {
        let peer = self.peers.get_mut(&id).expect("known node");

        // 1. Persist the hard state and the log.
        if let Some(hs) = ready.hard_state {
            assert!(hs.term >= peer.hard_state.term, "node {id}: persisted term went backwards");
            if hs.term == peer.hard_state.term && peer.hard_state.voted_for.is_some() {
                assert_eq!(hs.voted_for, peer.hard_state.voted_for, "node {id}: vote changed");
            }
            peer.hard_state = hs;
        }
        // 0. Install a received snapshot: state machine and log replaced.
        if let Some(meta) = ready.install_snapshot {
            assert_eq!(
                peer.staging_meta,
                Some(meta),
                "node {id}: installs a snapshot not received"
            );
            assert_eq!(peer.staging.len() as u64, meta.index.0, "node {id}: snapshot incomplete");
            assert!(meta.index > peer.applied_index, "node {id}: snapshot behind its state");
            peer.sm = std::mem::take(&mut peer.staging);
            peer.staging_meta = None;
            peer.applied_index = meta.index;
            peer.stored.clear();
            peer.stored_after = meta;
            peer.commit_checked = peer.commit_checked.max(meta.index);
            let installed = peer.sm.clone();
            for e in &installed {
                self.record_committed(e);
            }
        }
        let peer = self.peers.get_mut(&id).expect("known node");
        if let Some((from, entries)) = &ready.append {
            assert!(*from > peer.commit_checked, "node {id}: overwrites committed index {from}");
            let offset = peer.stored_after.index.0;
            assert!(
                from.0 > offset && from.0 <= offset + peer.stored.len() as u64 + 1,
                "append leaves a gap"
            );
            peer.stored.truncate((from.0 - offset) as usize - 1);
            for (i, e) in entries.iter().enumerate() {
                assert_eq!(e.index.0, from.0 + i as u64, "node {id}: append not contiguous");
                assert!(e.term <= peer.hard_state.term, "node {id}: entry above the stored term");
            }
            peer.stored.extend(entries.iter().cloned());
        }
        let st = peer.node.status();
        let offset = peer.stored_after.index.0;
        assert_eq!(
            st.last_index.0,
            offset + peer.stored.len() as u64,
            "node {id}: storage lags the log"
        );
        let newly_committed = peer.stored
            [(peer.commit_checked.0 - offset) as usize..(st.commit_index.0 - offset) as usize]
            .to_vec();
        peer.commit_checked = st.commit_index;
        for e in &newly_committed {
            self.record_committed(e);
        }

        // 2. Send, now that everything a message may depend on is durable.
        let peer = &self.peers[&id];
        for m in &ready.messages {
            assert_eq!(m.from, id);
            match m.body {
                // A pre-vote carries the term it would campaign in and changes no state.
                MessageBody::PreVote { .. } | MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::RequestVoteResponse { granted: true, .. } => {
                    assert_eq!(
                        peer.hard_state.term, m.term,
                        "vote sent before its term is durable"
                    );
                    assert_eq!(peer.hard_state.voted_for, Some(m.to), "vote sent before durable");
                }
                MessageBody::AppendEntriesResponse { success: true, index, .. } => {
                    let durable = peer.stored_after.index.0 + peer.stored.len() as u64;
                    assert!(index.0 <= durable, "ack of entries not durable");
                    assert!(m.term <= peer.hard_state.term);
                }
                _ => assert!(m.term <= peer.hard_state.term, "node {id}: term sent before durable"),
            }
        }
        self.sent.extend(ready.messages.iter().cloned());
        self.queue.extend(ready.messages.iter().cloned());
        assert!(self.queue.len() <= QUEUE_MESSAGES_MAX, "message queue overflow");

        // 3. Apply.
        let peer = self.peers.get_mut(&id).expect("known node");
        for e in &ready.committed {
            assert_eq!(e.index, peer.applied_index.next(), "node {id}: apply out of order");
            assert_eq!(stored_entry(peer, e.index), Some(e), "node {id}: applies unstored entry");
            assert_eq!(self.committed.get(&e.index), Some(e), "node {id}: applies uncommitted");
            peer.applied_index = e.index;
            peer.applied.push(e.clone());
            peer.sm.push(e.clone());
        }
        let installed_membership =
            ready.install_snapshot.map(|_| membership_of(&peer.initial, &peer.sm));

        // 3b. Compact: the state machine stands for the entries up to the snapshot.
        if let Some(meta) = ready.compact {
            assert!(meta.index <= peer.applied_index, "node {id}: compacts unapplied entries");
            assert!(meta.index > peer.stored_after.index, "node {id}: compaction goes backwards");
            assert_eq!(stored_entry(peer, meta.index).map(|e| e.term), Some(meta.term));
            let n = (meta.index.0 - peer.stored_after.index.0) as usize;
            peer.stored.drain(..n);
            peer.stored_after = meta;
        }

        // 3c. Stream the state machine to followers whose entries are compacted away: one
        // chunk per entry, all at once (the harness has no flow control).
        let term = peer.node.status().term;
        for (to, meta) in &ready.send_snapshots {
            assert_eq!(meta.index, peer.applied_index, "node {id}: snapshot of another state");
            let count = peer.sm.len();
            for (seq, e) in peer.sm.iter().enumerate() {
                let body = MessageBody::SnapshotChunk {
                    meta: *meta,
                    seq: seq as u64,
                    data: encode_entry(e),
                    last: seq + 1 == count,
                };
                let m = Message { from: id, to: *to, term, body };
                self.sent.push(m.clone());
                self.queue.push_back(m);
            }
        }

        // 3d. Store received chunks, in order.
        let mut stored_chunks = Vec::new();
        for c in &ready.snapshot_chunks {
            if c.seq == 0 {
                peer.staging.clear();
                peer.staging_meta = Some(c.meta);
            }
            if peer.staging_meta == Some(c.meta) && c.seq == peer.staging.len() as u64 {
                peer.staging.push(decode_entry(&c.data));
                stored_chunks.push((c.from, c.meta, peer.staging.len() as u64, c.last));
            }
        }

        // 4. Serve reads once applied up to their index.
        peer.reads_waiting.extend(ready.reads.iter().copied());
        let applied = peer.applied_index;
        let (now, later): (Vec<ReadState>, Vec<ReadState>) =
            peer.reads_waiting.drain(..).partition(|r| r.index <= applied);
        peer.reads_served.extend(now);
        peer.reads_waiting = later;
        peer.rejected.extend(ready.rejected.iter().copied());

        // 5. Report the write durable, and the chunks stored.
        if let Some((_, entries)) = &ready.append {
            if let Some(last) = entries.last() {
                self.step_id(id, Input::Persisted { index: last.index, term: last.term });
            }
        }
        if let Some(m) = installed_membership {
            self.step_id(id, Input::SnapshotMembership(m));
        }
        for (from, meta, next_seq, last) in stored_chunks {
            self.step_id(id, Input::SnapshotChunkStored { from, meta, next_seq });
            if last {
                self.step_id(id, Input::SnapshotReceived { from, meta });
            }
        }
    }

    pub fn tick(&mut self, id: u64) {
        self.step(id, Input::Tick);
        self.process(id);
    }

    pub fn deliver(&mut self, m: Message) {
        let (from, to) = (m.from, m.to);
        if self.cut.contains(&(from, to)) || self.down.contains(&from) || self.down.contains(&to) {
            return;
        }
        self.step_id(to, Input::Message(m));
        self.process_id(to);
    }

    /// Delivers every message queued now; replies queue for the next round.
    pub fn deliver_round(&mut self) {
        let batch: Vec<Message> = self.queue.drain(..).collect();
        for m in batch {
            self.deliver(m);
        }
    }

    /// Delivers the queued messages that match; the others stay queued.
    pub fn deliver_matching(&mut self, pred: impl Fn(&Message) -> bool) -> usize {
        let (now, later): (Vec<Message>, Vec<Message>) = self.queue.drain(..).partition(pred);
        self.queue = later.into();
        let delivered = now.len();
        for m in now {
            self.deliver(m);
        }
        delivered
    }

    /// Delivers rounds until no message is in flight.
    pub fn settle(&mut self) {
        for _ in 0..SETTLE_ROUNDS_MAX {
            if self.queue.is_empty() {
                return;
            }
            self.deliver_round();
        }
        panic!("messages still in flight after {SETTLE_ROUNDS_MAX} rounds");
    }

    /// One tick on every live node, then the network settles.
    pub fn tick_all(&mut self) {
        for id in self.ids() {
            if !self.down.contains(&id) {
                self.step_id(id, Input::Tick);
                self.process_id(id);
            }
        }
        self.settle();
    }

    pub fn run_ticks(&mut self, ticks: u32) {
        for _ in 0..ticks {
            self.tick_all();
        }
    }

    /// Ticks every live node until `pred` holds; false if it still does not after `ticks_max`.
    pub fn run_until(&mut self, ticks_max: u32, pred: impl Fn(&Cluster) -> bool) -> bool {
        for _ in 0..ticks_max {
            if pred(self) {
                return true;
            }
            self.tick_all();
        }
        pred(self)
    }

    /// Ticks only `id` (so no other node competes) until it leads.
    pub fn elect(&mut self, id: u64) {
        for _ in 0..4 * ELECTION_TICKS {
            self.tick(id);
            self.settle();
            if self.status(id).role == Role::Leader {
                return;
            }
        }
        panic!("node {id} did not win an election");
    }

    /// Elects `id` and waits until every node follows it and has applied its no-op.
    pub fn elect_and_converge(&mut self, id: u64) {
        self.elect(id);
        let converged = self.run_until(4 * ELECTION_TICKS, |c| c.converged(1).is_some());
        assert!(converged, "cluster did not converge on leader {id}");
        assert_eq!(self.converged(1), Some(NodeId(id)));
    }

    pub fn cut_both(&mut self, a: u64, b: u64) {
        self.cut.insert((NodeId(a), NodeId(b)));
        self.cut.insert((NodeId(b), NodeId(a)));
    }

    pub fn isolate(&mut self, id: u64) {
        for other in self.ids() {
            if other != NodeId(id) {
                self.cut_both(id, other.0);
            }
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn crash(&mut self, id: u64) {
        self.down.insert(NodeId(id));
    }

    /// Node `id`'s disk is wiped: it restarts blank under its id, with `tune`d config.
    pub fn wipe(&mut self, id: u64, voters_count: u64, tune: impl Fn(&mut Config)) {
        self.peers.remove(&NodeId(id));
        let mut cfg = config(id, voters_count);
        tune(&mut cfg);
        self.add_peer(NodeId(id), cfg, RestoredState::default());
        self.down.remove(&NodeId(id));
    }
}

/// A single-voter node, configured by `cfg`, that has won its first election and committed its
/// no-op (index 1), driven by hand: each input through `step_checked`.
pub fn lone_leader(cfg: Config) -> RaftNode {
    let mut node = RaftNode::new(cfg, RestoredState::default()).expect("valid");
    for _ in 0..2 * ELECTION_TICKS {
        if !step_checked(&mut node, Input::Tick).is_empty() {
            break;
        }
    }
    let noop = step_checked(&mut node, Input::Persisted { index: LogIndex(1), term: Term(1) });
    assert!(!noop.committed.is_empty(), "the lone voter commits its no-op once persisted");
    node
}

/// Steps `input` into `node`, checks its invariants, and returns its next `Ready`.
pub fn step_checked(node: &mut RaftNode, input: Input) -> Ready {
    node.step(input);
    node.check_invariants();
    node.ready()
}
