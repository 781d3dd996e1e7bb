//! The Raft consensus state machine for one node (Ongaro & Ousterhout, "In Search of an
//! Understandable Consensus Algorithm", and Ongaro's thesis for pre-vote and ReadIndex).
//!
//! Sans-IO: the runtime feeds `Input`s through `step` and drains a `Ready` of outputs, handled in
//! this order: write the hard state and entries, then send the messages, then apply the
//! committed entries, then serve the reads (once applied up to their index); it reports
//! `Input::Persisted` once the writes are durable. Messages must wait until every write before
//! them is durable, except a leader's once its term and vote are (Raft thesis §10.2.1: a leader
//! counts itself in a commit quorum only up to its persisted index). No clock, I/O, threads or
//! global randomness are touched here.

use crate::log::RaftLog;
use crate::message::{Message, MessageBody};
use crate::reach::{self, Path};
use crate::types::{
    Entry, HardState, LogIndex, Membership, MembershipChange, NodeId, SnapshotMeta, Term,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Static configuration of a node. All limits are validated by `validate`.
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The voters a new cluster starts with (storage's membership, once there is one, wins).
    /// Every node of a cluster must start from the same voters (the log's membership changes
    /// apply on top of them), a node that joins later included: it is no member until added.
    pub voters: Vec<NodeId>,
    /// Minimum election timeout; each timeout is drawn from [election_ticks, 2 * election_ticks).
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    /// Per AppendEntries message.
    pub append_entries_max: usize,
    pub append_bytes_max: usize,
    /// AppendEntries messages in flight to one follower while replicating optimistically.
    pub inflight_appends_max: usize,
    /// Committed entries handed out in one `Ready`.
    pub apply_batch_max: usize,
    /// A leader refuses proposals while this many entries are appended but not committed.
    pub uncommitted_entries_max: u64,
    /// ... or while its uncommitted entries hold this many bytes (counting the new one; an
    /// entry is always taken when nothing is uncommitted, whatever its size): the log is held
    /// in memory until compacted, and uncommitted entries cannot be compacted.
    pub uncommitted_bytes_max: usize,
    /// Read requests queued at a leader awaiting confirmation.
    pub pending_reads_max: usize,
    /// The log is compacted once this many applied entries, or this many bytes of entries,
    /// have accumulated since the last compaction.
    pub snapshot_entries: u64,
    pub snapshot_bytes: usize,
    /// Applied entries kept after a compaction, so a follower slightly behind catches up from
    /// the log instead of a snapshot; never more than half `snapshot_bytes` of them, so large
    /// entries do not keep the log (in memory, and on disk) at thousands of times their size.
    pub snapshot_keep_entries: u64,
    /// A leader also keeps the entries its followers heard from in the last election timeout
    /// still need (their match indexes), up to half `snapshot_bytes` of entries: a follower a
    /// few thousand entries behind a bulk load otherwise fell below the kept entries at each
    /// compaction and got a snapshot of the whole state (seconds to install) instead. Off in
    /// some simulation seeds, so followers just behind get snapshots there too.
    pub compact_keeps_followers: bool,
    /// Leader leases (thesis §6.4.1): for this many ticks after a heartbeat round a quorum
    /// acknowledged, the leader serves reads without another round. 0 turns leases off (every
    /// read confirms leadership with ReadIndex). Must be below the election timeout scaled by
    /// the worst clock-rate ratio between nodes: see `lease_ticks_for_drift`.
    pub lease_ticks: u32,
    /// The length of a tick in microseconds of the clock `Input::Now` reads. With leases on
    /// and this set, a lease also ends once that clock passed `lease_ticks * tick_us` since
    /// its round started, however far the tick count lags: a runtime that stalled (a slow
    /// fsync, a long command) sees its overdue ticks only after the inputs queued meanwhile.
    /// 0: leases are judged by ticks alone, for tests that drive no clock.
    pub tick_us: u64,
    /// A node that starts with an empty log cannot tell a new cluster from a disk that lost
    /// what it had acknowledged (wiped or replaced under the same id), and its vote for a
    /// candidate missing committed entries would lose them. So it neither votes nor
    /// campaigns until it knows: every voter answered that its log is empty too (nothing was
    /// ever committed; it then votes only in terms after theirs), or it learned that entries
    /// exist and then caught up with a leader (`HardState::recovering`). Off only in tests of
    /// other rules.
    pub check_empty_start: bool,
    /// Seeds the election-jitter RNG; the runtime chooses it.
    pub seed: u64,
    /// A deliberate bug for the simulation to catch; ignored outside simulation builds.
    pub planted: Option<crate::PlantedBug>,
}

impl Config {
    pub fn new(id: NodeId, voters: Vec<NodeId>, seed: u64) -> Config {
        Config {
            id,
            voters,
            election_ticks: 50,
            heartbeat_ticks: 5,
            append_entries_max: 512,
            append_bytes_max: 4 << 20,
            inflight_appends_max: 64,
            apply_batch_max: 1024,
            uncommitted_entries_max: 20_000,
            uncommitted_bytes_max: 64 << 20,
            pending_reads_max: 100_000,
            snapshot_entries: 100_000,
            snapshot_bytes: 64 << 20,
            snapshot_keep_entries: 1_000,
            compact_keeps_followers: true,
            lease_ticks: 0,
            tick_us: 0,
            check_empty_start: true,
            seed,
            planted: None,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id.0 == 0 {
            return Err(ConfigError("node id must be at least 1".into()));
        }
        // A node joining a running cluster is not a member until the change that adds it
        // applies, so `id` need not be among the voters.
        let unique: BTreeSet<_> = self.voters.iter().collect();
        if unique.len() != self.voters.len()
            || unique.iter().any(|v| v.0 == 0)
            || self.voters.is_empty()
        {
            return Err(ConfigError(
                "member ids must be distinct and at least 1, with at least one voter".into(),
            ));
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return Err(ConfigError("election timeout must exceed the heartbeat interval".into()));
        }
        if self.lease_ticks >= self.election_ticks {
            return Err(ConfigError("a lease must be shorter than the election timeout".into()));
        }
        if self.append_entries_max == 0
            || self.append_bytes_max == 0
            || self.inflight_appends_max == 0
            || self.apply_batch_max == 0
            || self.uncommitted_entries_max == 0
            || self.uncommitted_bytes_max == 0
            || self.pending_reads_max == 0
            || self.snapshot_entries == 0
            || self.snapshot_bytes == 0
        {
            return Err(ConfigError("batch and queue limits must be at least 1".into()));
        }
        Ok(())
    }
}

/// The longest safe lease when any node's clock may run up to `max_rate_ratio` times as fast
/// as any other's (1.0: perfect clocks). A follower that acknowledged a round refuses votes
/// for at least `election_ticks - 1` of its own ticks after it; the leader counts from the
/// start of the round and its tick count may lag real time by one tick, so the lease is
/// `(election_ticks - 1) / ratio - 1` of the leader's ticks. None if that leaves nothing.
pub fn lease_ticks_for_drift(election_ticks: u32, max_rate_ratio: f64) -> Option<u32> {
    if !(max_rate_ratio >= 1.0 && max_rate_ratio.is_finite()) {
        return None;
    }
    let ticks = ((election_ticks.saturating_sub(1)) as f64 / max_rate_ratio).floor() as u32;
    ticks.checked_sub(1).filter(|t| *t > 0)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid raft config: {0}")]
pub struct ConfigError(pub String);

/// Read ids a follower forwards in one message (8 bytes each).
const READ_IDS_PER_MESSAGE_MAX: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum VoteKind {
    PreVote,
    Vote,
    /// A RequestVote sent on the leader's TimeoutNow (thesis §3.10).
    Transfer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// What the runtime feeds in.
#[derive(Clone, Debug)]
pub enum Input {
    /// Logical time advanced by one tick.
    Tick,
    /// The runtime's wall clock, in milliseconds since the Unix epoch: the leader stamps the
    /// entries it appends with it (`Entry::time`). Consensus never reads it.
    Clock(u64),
    /// The node's monotonic clock, in microseconds from any origin (a smaller value than the
    /// last is ignored): leases are judged against it (`Config::tick_us`). A runtime steps it
    /// right before every input that may serve a read or start a lease round (`Read`,
    /// `Message`, `Tick`), so a lease is never judged by a stale time.
    Now(u64),
    Message(Message),
    /// A client proposal; `id` comes back in `Ready::rejected` if it cannot be accepted here.
    Propose {
        id: u64,
        data: Vec<u8>,
    },
    /// A linearizable read; comes back in `Ready::reads` with the index to wait for.
    Read {
        id: u64,
    },
    /// Hand leadership to `to` (forwarded to the leader if this node is not it). The new
    /// leader shows in `status()`; a transfer that does not finish within an election timeout
    /// is abandoned.
    TransferLeader {
        to: NodeId,
    },
    /// A membership change; `data` is the entry's payload for the runtime (its client session
    /// and reply). The leader computes the new membership and carries it in the entry, where
    /// it takes effect on every node that appends it. At most one is uncommitted at a time,
    /// and a leader takes one only after an entry of its own term committed.
    ProposeMembership {
        id: u64,
        change: MembershipChange,
        data: Vec<u8>,
        /// The `Membership::version_id` the change was asked against: the proposing node's
        /// when its client asked, kept for every re-submission. The leader refuses it at any
        /// other (`Rejection::MembershipChangePending`: retry against the new one).
        based_on: (u64, Term),
    },
    /// The snapshot just installed holds this membership (the log is empty after it).
    SnapshotMembership(Membership),
    /// Storage made the log durable up to `index`, whose entry has `term`.
    Persisted {
        index: LogIndex,
        term: Term,
    },
    /// The runtime stored the chunks of the snapshot `meta` from `from` before `next_seq`.
    SnapshotChunkStored {
        from: NodeId,
        meta: SnapshotMeta,
        next_seq: u64,
    },
    /// The runtime stored every chunk of the snapshot `meta`; the core decides whether it is
    /// installed (`Ready::install_snapshot`).
    SnapshotReceived {
        from: NodeId,
        meta: SnapshotMeta,
    },
}

/// A snapshot chunk for the runtime to store (follower side).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunk {
    pub from: NodeId,
    pub meta: SnapshotMeta,
    pub seq: u64,
    pub data: Vec<u8>,
    pub last: bool,
}

/// A follower's acknowledgement of snapshot chunks, for the runtime that sends them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotAck {
    pub from: NodeId,
    pub meta: SnapshotMeta,
    pub next_seq: u64,
    pub finished: bool,
}

/// Why a proposal or read was not taken; the runtime may retry later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No leader is known: an election is under way or there is no quorum.
    NoLeader,
    /// This leader lost its leadership before the read was confirmed.
    LeadershipLost,
    /// Too much uncommitted work is queued.
    Busy,
    /// The leader is handing leadership over; retry with the next leader.
    Transferring,
    /// A membership change is still uncommitted, or this leader has not yet committed an
    /// entry of its term.
    MembershipChangePending,
    /// The change does not apply to the current membership (removing a non-member...).
    MembershipInvalid,
}

/// Whose proposal: this node's own request `id`, or one a follower forwarded.
#[derive(Clone, Copy, Debug)]
enum Origin {
    Local(u64),
    Forwarded,
}

/// A read that became safe: serve it from state applied up to at least `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub id: u64,
    pub index: LogIndex,
}

/// The outputs of one or more steps, in the order they must be handled.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ready {
    /// First of all: replace the state machine and the whole stored log with the received
    /// snapshot, durably. The core's log already starts after it.
    pub install_snapshot: Option<SnapshotMeta>,
    /// Durable before any message of this `Ready` leaves (see the module comment).
    pub hard_state: Option<HardState>,
    /// Delete stored entries from this index on, then write these; durable before sending,
    /// but for a leader's messages (see the module comment).
    pub append: Option<(LogIndex, Vec<Entry>)>,
    pub messages: Vec<Message>,
    /// Apply in order after persisting.
    pub committed: Vec<Entry>,
    /// After applying: make the applied state durable and delete the stored log up to this
    /// snapshot's index (the core already dropped those entries).
    pub compact: Option<SnapshotMeta>,
    /// After applying: stream the state machine, which now stands at the given snapshot, to
    /// each of these followers (their next entries are compacted away). Replaces an earlier
    /// transfer to the same follower.
    pub send_snapshots: Vec<(NodeId, SnapshotMeta)>,
    /// Acknowledgements for the snapshot transfers this leader runs.
    pub snapshot_acks: Vec<SnapshotAck>,
    /// Received chunks to store; report each with `Input::SnapshotChunkStored`.
    pub snapshot_chunks: Vec<SnapshotChunk>,
    pub reads: Vec<ReadState>,
    pub rejected: Vec<(u64, Rejection)>,
}

impl Ready {
    pub fn is_empty(&self) -> bool {
        self.install_snapshot.is_none()
            && self.hard_state.is_none()
            && self.append.is_none()
            && self.messages.is_empty()
            && self.committed.is_empty()
            && self.compact.is_none()
            && self.send_snapshots.is_empty()
            && self.snapshot_acks.is_empty()
            && self.snapshot_chunks.is_empty()
            && self.reads.is_empty()
            && self.rejected.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReplicationState {
    /// One AppendEntries at a time until the follower's log position is found.
    Probe { paused: bool },
    /// Optimistic pipelining, at most `inflight_appends_max` messages in flight.
    Replicate,
    /// The follower needs entries the log no longer holds: a snapshot is being streamed to it.
    /// `idle_heartbeats` counts heartbeat intervals without an acknowledgement; too many and
    /// the transfer starts over.
    Snapshot { meta: SnapshotMeta, idle_heartbeats: u32 },
}

/// The leader's view of one follower (Figure 2 "volatile state on leaders").
#[derive(Clone, Debug)]
struct Progress {
    match_index: LogIndex,
    next_index: LogIndex,
    state: ReplicationState,
    /// Last index of each AppendEntries in flight, oldest first.
    inflight: VecDeque<LogIndex>,
    /// Heard from since the last check-quorum.
    recent_active: bool,
    /// Check-quorum rounds in a row it was not heard from.
    silent_rounds: u32,
    /// Highest read round this follower acknowledged.
    read_round: u64,
    /// `match_index` at the previous heartbeat interval, and how many intervals in a row found
    /// appends in flight but no progress: `STALLED_HEARTBEATS_MAX` of them means an append was
    /// lost. Counted on ticks, not on heartbeat responses: ReadIndex rounds send extra
    /// heartbeats, and a heartbeat is answered at once while an append waits for an fsync.
    match_at_heartbeat: LogIndex,
    stalled_heartbeats: u32,
    /// The highest commit index this follower was told about and holds.
    commit_sent: LogIndex,
    /// Its wall clock in its latest heartbeat response, and `now_us` when that arrived.
    clock: Option<(u64, u64)>,
}

const STALLED_HEARTBEATS_MAX: u32 = 3;

/// Check-quorum rounds (election timeouts) a removed node may stay silent before the leader
/// stops replicating to it (about 10 minutes at a 1 s timeout). Until then a node removed
/// while cut off hears of its removal as soon as it is back: a learner never campaigns, so
/// nothing else would tell it.
const REMOVED_SILENT_ROUNDS_MAX: u32 = 600;

/// Heartbeat intervals without a snapshot acknowledgement before a transfer starts over: 6 s
/// at the default timing, longer than the runtime's resends of a stalled window (5 x 1 s), so
/// a slow link is given time and a dropped transfer is restarted.
const SNAPSHOT_IDLE_HEARTBEATS_MAX: u32 = 120;

/// A read waiting at the leader for a quorum to confirm leadership.
#[derive(Clone, Copy, Debug)]
struct PendingRead {
    id: u64,
    /// The node that asked (this node for local clients).
    from: NodeId,
    index: LogIndex,
    round: u64,
}

pub struct RaftNode {
    cfg: Config,
    rng: StdRng,
    role: Role,
    /// Invariant: never decreases; persisted (in `hard_state`) before any message of this term.
    term: Term,
    voted_for: Option<NodeId>,
    /// Persisted with the term (`HardState::recovering`): this node lost what it had
    /// acknowledged and may not vote or campaign until it caught up with a leader.
    recovering: bool,
    /// True while this node, started blank (no term, no log), does not know yet whether
    /// entries exist: it takes part in no election (`Config::check_empty_start`).
    fresh: bool,
    /// While this node may have lost what it acknowledged: what it asked the voters.
    probe: Option<Probe>,
    /// A recovering node votes only for candidates whose log is at least this up-to-date.
    vote_floor: Option<(Term, LogIndex)>,
    /// Voters' addresses learned from probe answers, for a node started blank or recovering
    /// whose own membership does not name every current voter (`probe_addrs()`).
    probe_addrs: BTreeMap<NodeId, String>,
    /// (term, index): in that term, the leader's AppendEntries proved this log matches its
    /// own up to the index.
    verified: (Term, LogIndex),
    /// This process started blank or recovering: a leader may still count acknowledgements
    /// this node gave before it lost its disk (a stale match index), so a heartbeat's commit
    /// is trusted only as far as `verified`, and heartbeat responses report that far.
    started_suspect: bool,
    leader: Option<NodeId>,
    log: RaftLog,
    persisted_hard_state: HardState,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_election_ticks: u32,
    votes: BTreeMap<NodeId, bool>,
    /// Candidate only: the wall clocks granted votes carried, and `now_us` when each came.
    vote_clocks: BTreeMap<NodeId, (u64, u64)>,
    /// Leader only, one per other voter.
    progress: BTreeMap<NodeId, Progress>,
    /// Read rounds: a read registered in round r is confirmed when a quorum acks round >= r.
    read_round: u64,
    read_round_needed: bool,
    /// The tick and the time (`now_us`) this node last accepted a leader's AppendEntries,
    /// heartbeat or snapshot chunk at (with leases on, 0 from the start: it may have acknowledged a lease before it
    /// restarted). For an election timeout after it, the node grants no vote but a
    /// leadership transfer's (`in_leader_lease`), whatever term it learned meanwhile: a
    /// leader's lease counts on that promise (thesis §6.4.1).
    leader_heard_at: Option<(u64, u64)>,
    /// Ticks since start: the leader's clock for leases.
    ticks: u64,
    /// Leader only: the tick and the time (`now_us`) each unconfirmed round started at (kept
    /// when leases are on).
    round_started: VecDeque<(u64, u64, u64)>,
    /// Leader only: reads are served without a round while `ticks < lease_until` and, with a
    /// clock (`Config::tick_us`), `now_us < lease_until_us`.
    lease_until: u64,
    lease_until_us: u64,
    /// Leader only: set once it told a node to campaign (a transfer): that node's vote
    /// requests bypass the followers' wait, so no lease holds for the rest of the term.
    lease_revoked: bool,
    pending_reads: VecDeque<PendingRead>,
    /// Reads that arrived before the leader committed an entry of its term (§6.4 step 1).
    reads_awaiting_commit: Vec<(u64, NodeId)>,
    /// Followers and candidates batch forwarded work into one message per `ready`.
    forward_proposals: Vec<(u64, Vec<u8>)>,
    /// As leader, the highest forwarded proposal id taken or refused from each follower in
    /// this term. A follower's ids rise (its writes must reach the log in order), so a lower
    /// or equal one is a copy the network duplicated: neither appended nor refused again, or
    /// a refusal (BUSY: not applied) could answer for a copy that was appended.
    forwarded_high: BTreeMap<NodeId, u64>,
    forward_reads: Vec<u64>,
    msgs: Vec<Message>,
    reads: Vec<ReadState>,
    rejected: Vec<(u64, Rejection)>,
    install_snapshot: Option<SnapshotMeta>,
    /// Leader only: a membership change is taken only once the commit index reaches this
    /// (its first entry, or the last membership entry).
    pending_membership: LogIndex,
    /// The last `Input::Clock`.
    clock_ms: u64,
    /// The latest `Input::Now`.
    now_us: u64,
    /// Leader only: followers that need a snapshot, sent with the next `ready`.
    snapshot_wanted: Vec<NodeId>,
    /// Leader only: the node leadership is being handed to, ticks since the transfer began,
    /// and whether it was told to campaign.
    transfer: Option<(NodeId, u32, bool)>,
    snapshot_acks: Vec<SnapshotAck>,
    snapshot_chunks: Vec<SnapshotChunk>,
    /// What the previous invariant check saw, and how many steps were checked (debug builds
    /// check after every step).
    seen: Seen,
    checked_steps: u64,
}

/// The state a debug build compares across steps: none of it may go back, and a vote once
/// cast holds for the rest of its term (Figure 2, "persistent state on all servers").
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    hard_state: HardState,
    persisted: HardState,
    commit: LogIndex,
    applied: LogIndex,
}

/// What a node that may have lost its disk asked the voters (`Config::check_empty_start`).
#[derive(Clone, Debug)]
struct Probe {
    nonce: u64,
    /// The voters to hear from: those of the membership in the most up-to-date log that
    /// answered (this node's own until one does). A voter removed long ago never answers,
    /// so the voters of older memberships are not waited for.
    voters: BTreeSet<NodeId>,
    /// The most up-to-date answer so far: (last term, last index).
    newest: Option<(Term, LogIndex)>,
    /// Where each answering voter's log ended: (last term, last index).
    answers: BTreeMap<NodeId, (Term, LogIndex)>,
    /// The highest term an answer carried.
    term: Term,
}

/// What a node restores from storage at start-up.
#[derive(Clone, Debug, Default)]
pub struct RestoredState {
    pub hard_state: HardState,
    /// The membership of the applied state; None: the config's (a node that never applied a
    /// change). Membership entries in the log after it override it.
    pub membership: Option<Membership>,
    /// The snapshot the stored log starts after.
    pub snapshot: SnapshotMeta,
    /// The log from `snapshot.index + 1` on.
    pub entries: Vec<Entry>,
    pub applied: LogIndex,
}

/// How a leader sees one follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerStatus {
    pub id: NodeId,
    pub match_index: LogIndex,
    /// "probe" (finding where logs match), "replicate" or "snapshot" (receiving one).
    pub state: &'static str,
}

/// A snapshot of a node's volatile state, for INFO, logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    pub id: NodeId,
    pub role: Role,
    pub term: Term,
    pub leader: Option<NodeId>,
    pub commit_index: LogIndex,
    pub applied_index: LogIndex,
    pub last_index: LogIndex,
    pub snapshot_index: LogIndex,
}

impl RaftNode {
    pub fn new(cfg: Config, restored: RestoredState) -> Result<RaftNode, ConfigError> {
        cfg.validate()?;
        let membership = restored.membership.clone().unwrap_or_else(|| Membership {
            voters: cfg.voters.iter().copied().collect(),
            ..Membership::default()
        });
        if membership.voters.is_empty() {
            return Err(ConfigError("the stored membership has no voter".into()));
        }
        if restored.applied < restored.snapshot.index {
            return Err(ConfigError("stored applied index is below the stored snapshot".into()));
        }
        let log =
            RaftLog::restore(restored.snapshot, restored.entries, restored.applied, membership);
        if log.last_term() > restored.hard_state.term {
            return Err(ConfigError("stored log has a term above the stored current term".into()));
        }
        let mut node = RaftNode {
            rng: StdRng::seed_from_u64(cfg.seed),
            role: Role::Follower,
            term: restored.hard_state.term,
            voted_for: restored.hard_state.voted_for,
            recovering: restored.hard_state.recovering,
            fresh: false,
            probe: None,
            vote_floor: None,
            probe_addrs: BTreeMap::new(),
            verified: (Term(0), LogIndex(0)),
            started_suspect: false,
            leader: None,
            log,
            persisted_hard_state: restored.hard_state,
            election_elapsed: 0,
            leader_heard_at: None,
            heartbeat_elapsed: 0,
            randomized_election_ticks: cfg.election_ticks,
            votes: BTreeMap::new(),
            vote_clocks: BTreeMap::new(),
            progress: BTreeMap::new(),
            read_round: 0,
            read_round_needed: false,
            ticks: 0,
            round_started: VecDeque::new(),
            lease_until: 0,
            lease_until_us: 0,
            lease_revoked: false,
            pending_reads: VecDeque::new(),
            reads_awaiting_commit: Vec::new(),
            forward_proposals: Vec::new(),
            forwarded_high: BTreeMap::new(),
            forward_reads: Vec::new(),
            msgs: Vec::new(),
            reads: Vec::new(),
            rejected: Vec::new(),
            install_snapshot: None,
            pending_membership: LogIndex(0),
            clock_ms: 0,
            now_us: 0,
            snapshot_wanted: Vec::new(),
            transfer: None,
            snapshot_acks: Vec::new(),
            snapshot_chunks: Vec::new(),
            seen: Seen::default(),
            checked_steps: 0,
            cfg,
        };
        node.seen = node.observed();
        node.reset_election_timer();
        if node.lease_ticks() > 0 {
            node.leader_heard_at = Some((0, 0));
        }
        // Nothing on disk at all: a brand-new node, or one whose disk was wiped. (A node with a
        // term but no log is neither: its disk is intact and it never acknowledged an entry.)
        let blank = node.term == Term(0) && node.log.last_index() == LogIndex(0);
        if node.cfg.check_empty_start && (node.recovering || blank) {
            node.fresh = !node.recovering;
            node.started_suspect = true;
            node.probe = Some(Probe {
                nonce: node.rng.gen(),
                voters: node.log.membership().voters.clone(),
                newest: None,
                answers: BTreeMap::new(),
                term: Term(0),
            });
            node.probe_voters();
        }
        Ok(node)
    }

    /// Addresses of voters that probe answers named (empty unless this node started blank or
    /// recovering): the runtime connects to them, since a probe waits for every voter and this
    /// node's own membership may be older than the one they belong to.
    pub fn probe_addrs(&self) -> &BTreeMap<NodeId, String> {
        &self.probe_addrs
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Leader only: each follower's replication state, for INFO.
    pub fn followers(&self) -> Vec<FollowerStatus> {
        self.progress
            .iter()
            .map(|(id, p)| FollowerStatus {
                id: *id,
                match_index: p.match_index,
                state: match p.state {
                    ReplicationState::Probe { .. } => "probe",
                    ReplicationState::Replicate => "replicate",
                    ReplicationState::Snapshot { .. } => "snapshot",
                },
            })
            .collect()
    }

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }

    pub fn status(&self) -> Status {
        Status {
            id: self.cfg.id,
            role: self.role,
            term: self.term,
            leader: self.leader,
            commit_index: self.log.commit_index(),
            applied_index: self.log.applied_index(),
            last_index: self.log.last_index(),
            snapshot_index: self.log.snapshot().index,
        }
    }

    fn quorum(&self) -> usize {
        self.log.membership().voters.len() / 2 + 1
    }

    /// The membership in effect: the last one in the log.
    pub fn membership(&self) -> &Membership {
        self.log.membership()
    }

    /// The index of the membership in effect (`RaftLog::last_membership_index`): a node that
    /// holds the log up to it knows it is a member.
    pub fn membership_index(&self) -> LogIndex {
        self.log.last_membership_index()
    }

    fn is_voter(&self) -> bool {
        self.log.membership().is_voter(self.cfg.id)
    }

    fn hard_state(&self) -> HardState {
        HardState { term: self.term, voted_for: self.voted_for, recovering: self.recovering }
    }

    pub fn step(&mut self, input: Input) {
        self.step_inner(input);
        if cfg!(debug_assertions) {
            self.check_step();
        }
    }

    fn step_inner(&mut self, input: Input) {
        match input {
            Input::Tick => self.tick(),
            Input::Clock(ms) => self.clock_ms = ms,
            Input::Now(us) => self.now_us = self.now_us.max(us),
            Input::Message(m) => self.step_message(m),
            Input::Propose { id, data } => self.propose(id, data),
            Input::Read { id } => self.read(id, self.cfg.id),
            Input::Persisted { index, term } => {
                self.log.persisted_to(index, term);
                if self.role == Role::Leader {
                    self.maybe_commit();
                }
            }
            Input::SnapshotChunkStored { from, meta, next_seq } => {
                if self.leader == Some(from) {
                    let body = MessageBody::SnapshotAck { meta, next_seq, finished: false };
                    self.send(from, body);
                }
            }
            Input::SnapshotReceived { from, meta } => self.snapshot_received(from, meta),
            Input::TransferLeader { to } => self.transfer_leader(to),
            Input::ProposeMembership { id, change, data, based_on } => {
                self.propose_membership(id, None, change, data, based_on)
            }
            Input::SnapshotMembership(m) => {
                // The membership at the snapshot, which the log now starts after.
                if !m.voters.is_empty() {
                    self.log.set_base_membership(m);
                }
            }
        }
    }

    /// An entry this leader appends, stamped with its clock (never earlier than the log's
    /// last entry, so times never go back along the log, whoever leads).
    fn new_entry(&self, index: LogIndex, data: Vec<u8>) -> Entry {
        let mut e = Entry::new(index, self.term, data);
        e.time = self.cluster_time_ms();
        e
    }

    /// The time a leader stamps its entries with (`Entry::time`, which decides expiry on
    /// every node): of the voters' wall clocks (its own, and each follower's from its latest
    /// heartbeat response, advanced by the time since), the highest that a majority's reach,
    /// and never before the log's. One clock that jumps, ahead or behind, moves nothing: a
    /// leader whose clock leapt an hour would otherwise expire every deadline in that hour,
    /// for good (issue 13.9). Until it has heard from a majority it keeps the log's time.
    /// Other nodes answer their own clock.
    pub fn cluster_time_ms(&self) -> u64 {
        if self.role != Role::Leader {
            return self.clock_ms.max(self.log.last_time());
        }
        let mut clocks: Vec<u64> = self
            .voter_progress()
            .filter_map(|p| p.clock)
            .map(|(ms, at)| ms.saturating_add(self.now_us.saturating_sub(at) / 1000))
            .collect();
        if self.is_voter() {
            clocks.push(self.clock_ms);
        }
        clocks.sort_unstable_by(|a, b| b.cmp(a));
        // Short of a majority's clocks (a voter just added), the lowest known: never ahead.
        let agreed =
            clocks.get(self.quorum() - 1).or(clocks.last()).copied().unwrap_or(self.clock_ms);
        agreed.max(self.log.last_time())
    }

    // ---- membership changes (thesis §4) -----------------------------------------------------

    /// `from`: the node that forwarded it, told if it is refused (None: this node's own).
    fn propose_membership(
        &mut self,
        id: u64,
        from: Option<NodeId>,
        change: MembershipChange,
        data: Vec<u8>,
        based_on: (u64, Term),
    ) {
        if self.role != Role::Leader {
            match (self.leader, from) {
                (Some(leader), None) => {
                    // The origin learns the outcome when the entry applies, or is refused.
                    let body = MessageBody::ProposeMembership { id, change, data, based_on };
                    self.send(leader, body);
                }
                (None, None) => self.rejected.push((id, Rejection::NoLeader)),
                (_, Some(_)) => {} // forwarded to a node no longer leading: the origin retries
            }
            return;
        }
        let reject = |node: &mut RaftNode, why| {
            reach::hit(Path::MembershipChangeRefused);
            match from {
                None => node.rejected.push((id, why)),
                Some(to) => {
                    let pending = why != Rejection::MembershipInvalid;
                    node.send(to, MessageBody::MembershipRefused { id, pending });
                }
            }
        };
        if self.pending_membership > self.log.commit_index()
            && !crate::planted::active(
                self.cfg.planted,
                crate::PlantedBug::MembershipChangesOverlap,
            )
        {
            return reject(self, Rejection::MembershipChangePending);
        }
        if self.transfer.is_some() {
            return reject(self, Rejection::Transferring);
        }
        if based_on != self.log.membership().version_id()
            && !crate::planted::active(
                self.cfg.planted,
                crate::PlantedBug::MembershipChangesOverlap,
            )
        {
            // Asked against another membership: a copy of a change that took effect since, or
            // one whose node had not yet seen the latest. Either way not this one's to make.
            return reject(self, Rejection::MembershipChangePending);
        }
        let Ok(mut next) = self.log.membership().apply(&change) else {
            return reject(self, Rejection::MembershipInvalid);
        };
        next.made_in = self.term;
        let index = self.log.last_index().next();
        let mut entry = self.new_entry(index, data);
        entry.membership = Some(next);
        if self.too_much_uncommitted(&entry) {
            return reject(self, Rejection::Busy);
        }
        self.log.append(entry);
        self.pending_membership = index;
        self.membership_changed();
        self.maybe_commit();
    }

    /// The leader's log took a new membership: new members get replicated to. A node that
    /// left still is until the change commits and it was told so (`prune_progress`), so it
    /// applies its own removal.
    fn membership_changed(&mut self) {
        let me = self.cfg.id;
        let next = self.log.last_index().next();
        let members: Vec<NodeId> = self.log.membership().members().collect();
        for id in members.into_iter().filter(|id| *id != me) {
            self.progress.entry(id).or_insert_with(|| Self::new_progress(next));
        }
        if self.transfer.is_some_and(|(to, _, _)| !self.log.membership().is_voter(to)) {
            self.transfer = None;
        }
    }

    /// Stops replicating to nodes that left once their removal is committed and they were
    /// told so (or, with `unresponsive`, once silent for `REMOVED_SILENT_ROUNDS_MAX` rounds).
    fn prune_progress(&mut self, unresponsive: bool) {
        let removal = self.log.last_membership_index();
        if self.log.commit_index() < removal {
            return;
        }
        let m = self.log.membership();
        let gone: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(id, p)| {
                !m.contains(**id)
                    && ((p.match_index >= removal && p.commit_sent >= removal)
                        || (unresponsive && p.silent_rounds >= REMOVED_SILENT_ROUNDS_MAX))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            self.progress.remove(&id);
        }
    }

    /// A leader that removed itself manages the cluster until the change commits (thesis
    /// §4.2.2), then hands leadership to the most caught-up voter and steps down.
    fn maybe_step_down_after_removal(&mut self) {
        if self.role != Role::Leader
            || self.is_voter()
            || self.log.commit_index() < self.log.last_membership_index()
        {
            return;
        }
        let best = self
            .voter_progress_ids()
            .max_by_key(|(id, p)| (p.match_index, std::cmp::Reverse(*id)))
            .map(|(id, _)| id);
        if let Some(to) = best {
            self.send(to, MessageBody::TimeoutNow);
        }
        self.become_follower(self.term, None);
    }

    fn voter_progress_ids(&self) -> impl Iterator<Item = (NodeId, &Progress)> {
        let m = self.log.membership();
        self.progress.iter().filter(|(id, _)| m.is_voter(**id)).map(|(id, p)| (*id, p))
    }

    // ---- leadership transfer (thesis §3.10) -------------------------------------------------

    fn transfer_leader(&mut self, to: NodeId) {
        match self.role {
            Role::Leader => {
                if to == self.cfg.id || !self.log.membership().is_voter(to) {
                    return;
                }
                if self.transfer.is_some_and(|(t, _, _)| t == to) {
                    return;
                }
                self.transfer = Some((to, 0, false));
                self.maybe_send_timeout_now(to);
            }
            _ => {
                if let Some(leader) = self.leader {
                    self.send(leader, MessageBody::TransferLeader { to });
                }
            }
        }
    }

    /// Once the transferee holds the whole log, tells it to campaign (once per transfer).
    fn maybe_send_timeout_now(&mut self, peer: NodeId) {
        let Some((to, elapsed, false)) = self.transfer else { return };
        if to != peer {
            return;
        }
        let last = self.log.last_index();
        let caught_up = self.progress.get(&to).is_some_and(|p| p.match_index == last);
        if caught_up {
            self.transfer = Some((to, elapsed, true));
            self.lease_revoked = true;
            reach::hit(Path::TransferTimeoutNow);
            self.send(to, MessageBody::TimeoutNow);
        }
    }

    /// Every chunk of `meta` is stored: install it unless the log got there meanwhile.
    fn snapshot_received(&mut self, from: NodeId, meta: SnapshotMeta) {
        if self.role != Role::Follower || self.leader != Some(from) {
            return; // its leader is gone; a new one will send what it needs
        }
        if self.log.term(meta.index) == Some(meta.term) {
            // The log already holds the snapshot's last entry, and maybe entries after it
            // that this node acknowledged: keep them (Figure 13, step 6), the snapshot only
            // tells that its index is committed.
            self.log.commit_to(meta.index);
        } else if meta.index > self.log.commit_index() {
            reach::hit(Path::SnapshotInstalled);
            self.log.restore_snapshot(meta);
            self.install_snapshot = Some(meta);
        }
        // The leader's committed state up to `meta.index` is this node's now.
        if self.log.commit_index() >= meta.index {
            self.verified_to(meta.index);
            self.maybe_release(meta.index);
        }
        self.answer_snapshot(from, meta);
    }

    /// Tells the leader streaming `meta` that this node holds the state up to its index (or
    /// further), so transfer and probing are over.
    fn answer_snapshot(&mut self, to: NodeId, meta: SnapshotMeta) {
        let next_seq = u64::MAX;
        self.send(to, MessageBody::SnapshotAck { meta, next_seq, finished: true });
        let body = MessageBody::append_accepted(self.log.commit_index());
        self.send(to, body);
    }

    /// Collects everything the runtime must do now; see the module comment for the order.
    pub fn ready(&mut self) -> Ready {
        let rd = self.ready_inner();
        if cfg!(debug_assertions) {
            self.check_step();
        }
        rd
    }

    fn ready_inner(&mut self) -> Ready {
        if self.role == Role::Leader {
            if self.read_round_needed {
                self.read_round_needed = false;
                self.start_round();
                self.broadcast_heartbeat();
            }
            let peers: Vec<NodeId> = self.progress.keys().copied().collect();
            let mut sent_append = BTreeSet::new();
            for peer in peers {
                if self.send_append(peer) {
                    sent_append.insert(peer);
                }
            }
            // A follower that holds committed entries it has not been told about learns now,
            // not at the next heartbeat: the one that proposed them waits to reply.
            let commit = self.log.commit_index();
            let behind: Vec<NodeId> = self
                .progress
                .iter()
                .filter(|(p, pr)| {
                    !sent_append.contains(*p) && commit.min(pr.match_index) > pr.commit_sent
                })
                .map(|(p, _)| *p)
                .collect();
            for peer in behind {
                self.send_commit(peer);
            }
        } else if let Some(leader) = self.leader {
            // In messages of at most `append_bytes_max` bytes of proposals (one proposal at
            // least), as AppendEntries: everything queued at a leader change would otherwise
            // go in one message, past the transport's frame limit, and be dropped whole.
            let mut batch: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut bytes = 0;
            for (id, data) in std::mem::take(&mut self.forward_proposals) {
                if !batch.is_empty() && bytes + data.len() > self.cfg.append_bytes_max {
                    let proposals = std::mem::take(&mut batch);
                    self.send(leader, MessageBody::Propose { proposals });
                    bytes = 0;
                }
                bytes += data.len();
                batch.push((id, data));
            }
            if !batch.is_empty() {
                self.send(leader, MessageBody::Propose { proposals: batch });
            }
            let ids = std::mem::take(&mut self.forward_reads);
            for ids in ids.chunks(READ_IDS_PER_MESSAGE_MAX) {
                self.send(leader, MessageBody::ReadIndex { ids: ids.to_vec() });
            }
        }
        let hs = self.hard_state();
        let hard_state = (hs != self.persisted_hard_state).then(|| {
            self.persisted_hard_state = hs;
            hs
        });
        let append = self.log.take_unstable();
        let committed = self.log.take_committed(self.cfg.apply_batch_max);
        // The runtime streams the state machine as it stands after applying `committed`.
        let applied = self.log.applied_index();
        let at = SnapshotMeta {
            index: applied,
            term: self.log.term(applied).expect("held"),
            time: self.log.time(applied).expect("held"),
        };
        let mut send_snapshots = Vec::new();
        for peer in std::mem::take(&mut self.snapshot_wanted) {
            if let Some(pr) = self.progress.get_mut(&peer) {
                pr.state = ReplicationState::Snapshot { meta: at, idle_heartbeats: 0 };
                send_snapshots.push((peer, at));
            }
        }
        Ready {
            install_snapshot: self.install_snapshot.take(),
            hard_state,
            append,
            messages: std::mem::take(&mut self.msgs),
            committed,
            compact: self.maybe_compact(),
            send_snapshots,
            snapshot_acks: std::mem::take(&mut self.snapshot_acks),
            snapshot_chunks: std::mem::take(&mut self.snapshot_chunks),
            reads: std::mem::take(&mut self.reads),
            rejected: std::mem::take(&mut self.rejected),
        }
    }

    /// Compacts the log once enough applied entries or bytes have piled up since the last
    /// compaction, keeping `snapshot_keep_entries` applied entries (at most half
    /// `snapshot_bytes` of them) for followers just behind.
    fn maybe_compact(&mut self) -> Option<SnapshotMeta> {
        let snapshot = self.log.snapshot();
        let applied = self.log.applied_index();
        let due = applied.0 - snapshot.index.0 >= self.cfg.snapshot_entries
            || self.log.bytes() >= self.cfg.snapshot_bytes;
        if !due {
            return None;
        }
        let keep_bytes = self.cfg.snapshot_bytes / 2;
        let by_count = LogIndex(applied.0.saturating_sub(self.cfg.snapshot_keep_entries));
        let by_bytes = if self.log.bytes() > keep_bytes {
            self.log.keep_within_bytes(applied, keep_bytes)
        } else {
            snapshot.index // all held entries are within the bytes kept
        };
        let to = by_count.min(self.followers_floor()).max(by_bytes).min(self.log.persisted_index());
        (to > snapshot.index).then(|| self.log.compact(to))
    }

    /// As leader, the lowest match index of the followers heard from in the last election
    /// timeout that are not being sent a snapshot (`Config::compact_keeps_followers`).
    fn followers_floor(&self) -> LogIndex {
        if self.role != Role::Leader || !self.cfg.compact_keeps_followers {
            return LogIndex(u64::MAX);
        }
        self.progress
            .iter()
            .filter(|(id, p)| {
                **id != self.cfg.id
                    && p.silent_rounds == 0
                    && !matches!(p.state, ReplicationState::Snapshot { .. })
            })
            .map(|(_, p)| p.match_index)
            .min()
            .unwrap_or(LogIndex(u64::MAX))
    }

    // ---- time -------------------------------------------------------------------------------

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let e = self.cfg.election_ticks;
        self.randomized_election_ticks = self.rng.gen_range(e..2 * e);
    }

    fn tick(&mut self) {
        self.ticks += 1;
        self.election_elapsed = self.election_elapsed.saturating_add(1);
        if self.probe.is_some() && self.ticks.is_multiple_of(u64::from(self.cfg.heartbeat_ticks)) {
            self.probe_voters();
        }
        if self.role == Role::Leader {
            self.heartbeat_elapsed += 1;
            if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks {
                self.heartbeat_elapsed = 0;
                self.detect_lost_appends();
                if self.lease_ticks() > 0 {
                    // Every heartbeat is a round, so acknowledgements keep extending the lease.
                    self.start_round();
                }
                self.broadcast_heartbeat();
                self.prune_progress(false);
            }
            if let Some((to, elapsed, sent)) = self.transfer {
                // Abandoned after an election timeout: the transferee is down or too slow.
                self.transfer =
                    (elapsed + 1 < self.cfg.election_ticks).then_some((to, elapsed + 1, sent));
            }
            if self.election_elapsed >= self.cfg.election_ticks {
                self.election_elapsed = 0;
                self.check_quorum();
            }
        } else if self.election_elapsed >= self.randomized_election_ticks {
            // A campaign is a vote for itself: not while a promise not to vote holds.
            if self.may_campaign() && !self.in_leader_lease() {
                self.campaign_pre_vote();
            } else if self.leader.is_some() {
                // A learner (or a node removed without hearing of it) that stopped hearing
                // from its leader forgets it, so its clients are told there is none instead
                // of waiting on requests forwarded into the void.
                self.leader = None;
                self.reset_election_timer();
                self.fail_forwarded_work();
            }
        }
    }

    /// Check-quorum: a leader that has not heard from a quorum for an election timeout steps
    /// down, so its clients fail fast and a partitioned leader stops serving.
    fn check_quorum(&mut self) {
        self.prune_progress(true);
        let active =
            self.is_voter() as usize + self.voter_progress().filter(|p| p.recent_active).count();
        for p in self.progress.values_mut() {
            p.silent_rounds = if p.recent_active { 0 } else { p.silent_rounds.saturating_add(1) };
            p.recent_active = false;
        }
        if active < self.quorum() {
            reach::hit(Path::CheckQuorumStepDown);
            self.become_follower(self.term, None);
        }
    }

    // ---- elections (§5.2) -------------------------------------------------------------------

    fn campaign_pre_vote(&mut self) {
        self.role = Role::PreCandidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.cfg.id, true);
        self.reset_election_timer();
        self.fail_forwarded_work();
        if self.votes_granted() >= self.quorum() {
            self.campaign();
            return;
        }
        let body = MessageBody::PreVote {
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
        };
        for peer in self.other_voters() {
            self.send_with_term(peer, self.term.next(), body.clone());
        }
    }

    fn campaign(&mut self) {
        self.campaign_as(false);
    }

    fn campaign_as(&mut self, transfer: bool) {
        self.term = self.term.next();
        self.voted_for = Some(self.cfg.id);
        self.role = Role::Candidate;
        self.leader = None;
        self.votes.clear();
        self.votes.insert(self.cfg.id, true);
        self.vote_clocks.clear();
        self.reset_election_timer();
        if self.votes_granted() >= self.quorum() {
            self.become_leader();
            return;
        }
        let body = MessageBody::RequestVote {
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            transfer,
        };
        for peer in self.other_voters() {
            self.send(peer, body.clone());
        }
    }

    /// Granted votes of the voters of the membership in effect (a candidate removing itself
    /// does not count its own).
    fn votes_granted(&self) -> usize {
        let m = self.log.membership();
        self.votes.iter().filter(|(id, g)| **g && m.is_voter(**id)).count()
    }

    /// Voters campaign; so does a voter whose own removal is in its log but not committed: a
    /// removed leader that stepped down before it committed may be the only node holding it,
    /// and nobody else can win until it does (it then leads to commit it, and hands over).
    fn may_campaign(&self) -> bool {
        if self.fresh {
            return false;
        }
        // A recovering node campaigns only with a log it would vote for itself: at least as
        // up-to-date as every voter's was when it asked (`vote_floor`). Otherwise it could
        // lack what it acknowledged before it lost its disk; with it, it may be the only
        // node that can win (the others' logs below the floors of the recovering voters).
        if self.recovering
            && !(self.probe.is_none()
                && self.may_vote_for((self.log.last_term(), self.log.last_index())))
        {
            return false;
        }
        self.is_voter()
            || (self.log.last_membership_index() > self.log.commit_index()
                && self.log.previous_membership().is_voter(self.cfg.id))
    }

    /// Whether this node may grant a vote to a candidate whose log ends at `last` (term,
    /// index): a fresh node may not; a recovering one only to a candidate at least as
    /// up-to-date as every voter was when it asked (`Probe`).
    fn may_vote_for(&self, last: (Term, LogIndex)) -> bool {
        if crate::planted::active(self.cfg.planted, crate::PlantedBug::WipedDiskVotes) {
            return true;
        }
        if self.fresh {
            return false;
        }
        if self.recovering {
            return self.vote_floor.is_some_and(|floor| last >= floor);
        }
        true
    }

    /// A node that may have lost what it acknowledged asks every voter it knows of that has
    /// not answered yet.
    fn probe_voters(&mut self) {
        let Some(p) = &self.probe else { return };
        let waiting: Vec<NodeId> = p
            .voters
            .iter()
            .copied()
            .filter(|v| *v != self.cfg.id && !p.answers.contains_key(v))
            .collect();
        let nonce = p.nonce;
        if waiting.is_empty() {
            return self.probe_done();
        }
        for v in waiting {
            self.send(v, MessageBody::StateProbe { nonce });
        }
    }

    fn probe_answered(
        &mut self,
        from: NodeId,
        term: Term,
        nonce: u64,
        last: (Term, LogIndex),
        voters: Vec<NodeId>,
        addrs: Vec<(NodeId, String)>,
    ) {
        let Some(p) = &mut self.probe else { return };
        if nonce != p.nonce {
            return;
        }
        p.answers.insert(from, last);
        p.term = p.term.max(term);
        let newest = p.newest.is_none_or(|newest| last >= newest);
        if newest {
            p.newest = Some(last);
            p.voters = voters.into_iter().collect();
        }
        // Any answer's addresses may name a voter this node has no address for; the most
        // up-to-date answer's are the latest (a voter may have moved).
        for (id, addr) in addrs.into_iter().filter(|(id, _)| *id != self.cfg.id) {
            if newest {
                self.probe_addrs.insert(id, addr);
            } else {
                self.probe_addrs.entry(id).or_insert(addr);
            }
        }
        let done = p.voters.iter().all(|v| *v == self.cfg.id || p.answers.contains_key(v));
        if self.fresh && last.1 > LogIndex(0) {
            self.start_recovering();
        }
        if done {
            self.probe_done();
        }
    }

    /// Every voter answered. This node may have voted before its disk was wiped, in a term no
    /// later than the highest a voter reported (the candidate it voted for is one of them):
    /// it takes that term as one it already voted in. If every log was empty, nothing was
    /// ever committed and it lost nothing a vote could betray. Otherwise an entry committed
    /// with its lost acknowledgement is on some other voter, whose log every candidate it
    /// votes for must then be at least as up-to-date as (Leader Completeness, §5.4.3).
    fn probe_done(&mut self) {
        let Some(p) = self.probe.take() else { return };
        if p.term > self.term {
            self.become_follower(p.term, None);
            self.voted_for = Some(self.cfg.id);
        } else if p.term == self.term && self.voted_for.is_none() {
            self.voted_for = Some(self.cfg.id);
        }
        self.fresh = false;
        if self.recovering {
            self.vote_floor = p.answers.values().copied().max().or(Some((Term(0), LogIndex(0))));
        }
    }

    /// The current leader proved this log matches its own up to `index`.
    fn verified_to(&mut self, index: LogIndex) {
        if self.verified.0 != self.term {
            self.verified = (self.term, LogIndex(0));
        }
        self.verified.1 = self.verified.1.max(index);
    }

    /// A recovering node caught up: its log holds the current leader's up to `committed`, a
    /// committed index whose entry is of the leader's term, so every entry committed before
    /// this term (the leader holds them all) is here too. Written with those entries, the
    /// cleared flag is durable only once they are, and a vote waits for that sync. The leader
    /// is of a term at least the highest the voters reported (`probe_done` took that term,
    /// and terms never go back), so it is no older, deposed leader that may lack entries
    /// committed with this node's lost acknowledgements.
    fn maybe_release(&mut self, committed: LogIndex) {
        if self.recovering
            && self.probe.is_none()
            && committed <= self.log.last_index()
            && self.log.term(committed) == Some(self.term)
        {
            reach::hit(Path::RecoveringReleased);
            self.recovering = false;
            self.vote_floor = None;
        }
    }

    /// How far this node's log is known to match the current leader's. Its end, normally; for
    /// a process that started blank or recovering, only what the leader's AppendEntries of
    /// this term proved (`started_suspect`).
    fn held_for_leader(&self) -> LogIndex {
        // Committed entries match every current leader's log.
        let committed = self.log.commit_index();
        match self.started_suspect {
            false => self.log.last_index(),
            true if self.verified.0 == self.term => self.verified.1.max(committed),
            true => committed,
        }
        .min(self.log.last_index())
    }

    /// Entries exist, and this node may have lost some it acknowledged.
    fn start_recovering(&mut self) {
        self.fresh = false;
        self.recovering = true;
    }

    fn other_voters(&self) -> Vec<NodeId> {
        self.log.membership().voters.iter().copied().filter(|v| *v != self.cfg.id).collect()
    }

    fn new_progress(next_index: LogIndex) -> Progress {
        Progress {
            match_index: LogIndex(0),
            next_index,
            state: ReplicationState::Probe { paused: false },
            inflight: VecDeque::new(),
            recent_active: true,
            silent_rounds: 0,
            read_round: 0,
            match_at_heartbeat: LogIndex(0),
            stalled_heartbeats: 0,
            commit_sent: LogIndex(0),
            clock: None,
        }
    }

    /// The progress of the voters among the followers (learners do not count toward quorums).
    fn voter_progress(&self) -> impl Iterator<Item = &Progress> {
        let m = self.log.membership();
        self.progress.iter().filter(|(id, _)| m.is_voter(**id)).map(|(_, p)| p)
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.voted_for = None;
        }
        let was_leader = self.role == Role::Leader;
        self.role = Role::Follower;
        self.leader = leader;
        self.reset_election_timer();
        self.progress.clear();
        self.snapshot_wanted.clear();
        self.transfer = None;
        self.round_started.clear();
        self.lease_until = 0;
        self.lease_until_us = 0;
        self.lease_revoked = false;
        if was_leader {
            for r in std::mem::take(&mut self.pending_reads) {
                self.reject_read(r.id, r.from, Rejection::LeadershipLost);
            }
            for (id, from) in std::mem::take(&mut self.reads_awaiting_commit) {
                self.reject_read(id, from, Rejection::LeadershipLost);
            }
        }
        if leader.is_none() {
            self.fail_forwarded_work();
        }
    }

    fn reject_read(&mut self, id: u64, from: NodeId, why: Rejection) {
        // Remote reads are left to the asking node's timeout.
        if from == self.cfg.id {
            self.rejected.push((id, why));
        }
    }

    /// Work batched for a leader we no longer know goes back to the runtime.
    fn fail_forwarded_work(&mut self) {
        for (id, _) in std::mem::take(&mut self.forward_proposals) {
            self.rejected.push((id, Rejection::NoLeader));
        }
        for id in std::mem::take(&mut self.forward_reads) {
            self.rejected.push((id, Rejection::NoLeader));
        }
    }

    fn become_leader(&mut self) {
        assert_eq!(self.role, Role::Candidate);
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.forwarded_high.clear();
        // A recovering node wins only with a log at least as up-to-date as a majority's, so it
        // holds every committed entry (§5.4.3): it lost nothing it could still betray.
        self.recovering = false;
        self.vote_floor = None;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        let next_index = self.log.last_index().next();
        let me = self.cfg.id;
        self.progress = self
            .log
            .membership()
            .members()
            .filter(|p| *p != me)
            .map(|p| (p, Self::new_progress(next_index)))
            .collect();
        for (id, clock) in std::mem::take(&mut self.vote_clocks) {
            if let Some(p) = self.progress.get_mut(&id) {
                p.clock = Some(clock);
            }
        }
        // §5.4.2/§8: commit an entry of our own term, which commits everything before it and
        // lets ReadIndex start. No membership change is taken before it applies (the fix to
        // single-server changes in Ongaro's 2015 raft-dev post): the log may hold an
        // unapplied one from an earlier term.
        self.log.append(self.new_entry(next_index, Vec::new()));
        self.pending_membership = next_index;
        self.maybe_commit();
    }

    fn handle_vote_request(
        &mut self,
        m: &Message,
        kind: VoteKind,
        last_index: LogIndex,
        last_term: Term,
    ) {
        let pre_vote = kind == VoteKind::PreVote;
        // A vote already given is given again; a new one waits out a leader's lease, unless
        // that leader asked for it (a transfer revokes its lease).
        let promised = kind != VoteKind::Transfer && self.in_leader_lease();
        let can_vote = self.voted_for == Some(m.from)
            || (self.voted_for.is_none() && self.leader.is_none() && !promised)
            || (pre_vote && m.term > self.term && !promised);
        let log_ok = self.log.is_up_to_date(last_index, last_term)
            || crate::planted::active(self.cfg.planted, crate::PlantedBug::VoteWithoutLogCheck);
        let granted = can_vote && log_ok && self.may_vote_for((last_term, last_index));
        if can_vote && !log_ok {
            reach::hit(Path::VoteRefusedForLog);
        }
        if pre_vote {
            let term = if granted { m.term } else { self.term };
            self.send_with_term(m.from, term, MessageBody::PreVoteResponse { granted });
        } else {
            if granted {
                self.voted_for = Some(m.from);
                self.reset_election_timer();
            }
            let clock_ms = self.clock_ms;
            self.send(m.from, MessageBody::RequestVoteResponse { granted, clock_ms });
        }
    }

    fn handle_vote_response(&mut self, from: NodeId, granted: bool) {
        if !self.log.membership().is_voter(from) {
            return;
        }
        self.votes.insert(from, granted);
        let rejected = self.votes.values().filter(|g| !**g).count();
        if self.votes_granted() >= self.quorum() {
            match self.role {
                Role::PreCandidate => self.campaign(),
                Role::Candidate => self.become_leader(),
                _ => {}
            }
        } else if rejected >= self.quorum() {
            self.become_follower(self.term, None);
        }
    }

    // ---- messages ---------------------------------------------------------------------------

    fn in_leader_lease(&self) -> bool {
        // Heard from a live leader within the minimum election timeout (thesis §4.2.3): ignore
        // vote requests so a rejoining node cannot depose a healthy leader. With leases on this
        // is also the promise a leader's lease rests on, so it holds whether or not this node
        // still knows that leader: a higher term learned from a rejection or a response makes
        // it forget the leader, not the promise. A node that just started may have
        // acknowledged a lease before it stopped (`leader_heard_at`). The promise lasts an
        // election timeout by ticks and by the clock, whichever ends later: ticks counted late
        // after a stall would end it early. A leader keeps its own leadership.
        if self.role == Role::Leader {
            return true;
        }
        let timeout = u64::from(self.cfg.election_ticks);
        self.leader_heard_at.is_some_and(|(at, at_us)| {
            self.ticks < at + timeout
                || (self.cfg.tick_us > 0
                    && self.now_us < at_us.saturating_add(timeout * self.cfg.tick_us))
        })
    }

    // ---- leases (thesis §6.4.1) -------------------------------------------------------------

    fn lease_ticks(&self) -> u32 {
        if crate::planted::active(self.cfg.planted, crate::PlantedBug::LeaseIgnoresClockDrift)
            && self.cfg.lease_ticks > 0
        {
            return self.cfg.election_ticks;
        }
        self.cfg.lease_ticks
    }

    fn start_round(&mut self) {
        self.read_round += 1;
        if self.lease_ticks() > 0 {
            self.round_started.push_back((self.read_round, self.ticks, self.now_us));
        }
    }

    /// The leader may serve a read now without a round: it holds a lease, and it committed an
    /// entry of its term, so its commit index is the latest.
    fn lease_valid(&self) -> bool {
        self.role == Role::Leader
            && self.lease_ticks() > 0
            && !self.lease_revoked
            && self.ticks < self.lease_until
            && (self.cfg.tick_us == 0
                || self.now_us < self.lease_until_us
                || crate::planted::active(self.cfg.planted, crate::PlantedBug::LeaseByTicksAlone))
            && self.log.term(self.log.commit_index()) == Some(self.term)
    }

    /// Remaining lease ticks, for INFO (0: none).
    pub fn lease_remaining(&self) -> u64 {
        if self.lease_valid() {
            self.lease_until - self.ticks
        } else {
            0
        }
    }

    fn step_message(&mut self, m: Message) {
        // Messages from nodes outside this node's membership are processed too (thesis
        // §4.2.3): a joining node hears from a leader that joined after the membership it
        // applied, and a vote is granted by log and term alone; votes are counted only from
        // voters, and only voters campaign.
        if m.to != self.cfg.id || m.from == self.cfg.id || m.from.0 == 0 {
            return;
        }
        // Start-up probes are no Raft traffic: their terms change nothing.
        match m.body {
            MessageBody::StateProbe { nonce } => {
                // The voters the prober must hear from: this log's, and while its last
                // membership change is uncommitted here, those of the one before too. That
                // change may never take effect, and a voter it removes may hold a later term
                // (it may have been elected with the prober's lost vote): a prober that waited
                // only for the new voters could take an older term and vote twice in one.
                let ms = self.log.membership();
                let mut voters = ms.voters.clone();
                let mut addrs: BTreeMap<NodeId, String> = ms.addrs.clone();
                if self.log.last_membership_index() > self.log.commit_index() {
                    let before = self.log.previous_membership();
                    voters.extend(before.voters.iter().copied());
                    for (id, addr) in &before.addrs {
                        addrs.entry(*id).or_insert_with(|| addr.clone());
                    }
                }
                let body = MessageBody::StateProbeResponse {
                    nonce,
                    last_index: self.log.last_index(),
                    last_term: self.log.last_term(),
                    addrs: voters
                        .iter()
                        .filter_map(|v| Some((*v, addrs.get(v)?.clone())))
                        .collect(),
                    voters: voters.into_iter().collect(),
                };
                self.send(m.from, body);
                return;
            }
            MessageBody::StateProbeResponse { nonce, last_index, last_term, voters, addrs } => {
                let last = (last_term, last_index);
                return self.probe_answered(m.from, m.term, nonce, last, voters, addrs);
            }
            MessageBody::AppendEntries { .. }
            | MessageBody::Heartbeat { .. }
            | MessageBody::SnapshotChunk { .. }
                if self.fresh =>
            {
                // A leader exists, so the cluster is no new one: this empty log lost what
                // the node had (or it never had any), and it catches up before it votes.
                self.start_recovering();
            }
            // Until it knows, a fresh node takes part in no election: it neither grants a vote
            // nor adopts a term (a term on disk would make it look like an intact node that
            // never acknowledged anything, after a crash).
            _ if self.fresh => return,
            _ => {}
        }
        if self.probe.is_some()
            && matches!(
                m.body,
                MessageBody::AppendEntries { .. }
                    | MessageBody::Heartbeat { .. }
                    | MessageBody::SnapshotChunk { .. }
            )
        {
            // A node that lost its disk lost its term too: before the wipe it may have moved
            // past this leader's term (voted, or followed a newer leader), and its answer
            // would then complete a quorum no intact node of that quorum would give, for an
            // entry or a read round of a deposed leader (seed 20234497481: a stale leader
            // committed an entry with a wiped node's acknowledgement while a newer term's
            // log, lacking it, went on to win). It answers leaders once every voter has told
            // it their terms and it has taken the highest (`probe_done`).
            reach::hit(Path::LeaderIgnoredWhileProbing);
            return;
        }
        if self.role == Role::Leader
            && matches!(m.body, MessageBody::PreVote { .. } | MessageBody::RequestVote { .. })
            && !self.log.membership().contains(m.from)
            && !self.progress.contains_key(&m.from)
        {
            // A node removed while cut off, and pruned as unresponsive, never heard of its
            // removal: it still campaigns and its clients wait. Replicate to it again until it
            // has learned (`prune_progress`).
            let next = self.log.last_index().next();
            self.progress.insert(m.from, Self::new_progress(next));
        }
        if m.term > self.term {
            match m.body {
                MessageBody::PreVote { .. } | MessageBody::RequestVote { transfer: false, .. }
                    if self.in_leader_lease() =>
                {
                    reach::hit(Path::VoteIgnoredForLeader);
                    return;
                }
                MessageBody::PreVote { .. } => {}
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::SnapshotChunk { .. } => {
                    self.become_follower(m.term, Some(m.from));
                }
                _ => self.become_follower(m.term, None),
            }
        } else if m.term < self.term {
            match m.body {
                // A stale leader learns our term from the response and steps down.
                MessageBody::AppendEntries { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::SnapshotChunk { .. } => {
                    reach::hit(Path::StaleTermAnswered);
                    let body = MessageBody::AppendEntriesResponse {
                        success: false,
                        index: LogIndex(0),
                        hint: LogIndex(0),
                        hint_term: Term(0),
                    };
                    self.send(m.from, body);
                }
                MessageBody::PreVote { .. } => {
                    self.send(m.from, MessageBody::PreVoteResponse { granted: false });
                }
                _ => {}
            }
            return;
        }

        match m.body {
            MessageBody::PreVote { last_log_index, last_log_term } => {
                self.handle_vote_request(&m, VoteKind::PreVote, last_log_index, last_log_term)
            }
            MessageBody::RequestVote { last_log_index, last_log_term, transfer } => {
                let kind = if transfer { VoteKind::Transfer } else { VoteKind::Vote };
                self.handle_vote_request(&m, kind, last_log_index, last_log_term)
            }
            MessageBody::PreVoteResponse { granted } => {
                // A granted pre-vote carries the term we would campaign in.
                if self.role == Role::PreCandidate && (m.term == self.term.next() || !granted) {
                    self.handle_vote_response(m.from, granted);
                }
            }
            MessageBody::RequestVoteResponse { granted, clock_ms } => {
                if self.role == Role::Candidate {
                    if granted {
                        self.vote_clocks.insert(m.from, (clock_ms, self.now_us));
                    }
                    self.handle_vote_response(m.from, granted);
                }
            }
            MessageBody::AppendEntries {
                prev_log_index,
                prev_log_term,
                entries,
                leader_commit,
            } => {
                self.accept_leader(m.from);
                self.handle_append(m.from, prev_log_index, prev_log_term, &entries, leader_commit);
            }
            MessageBody::Heartbeat { commit, read_round } => {
                self.accept_leader(m.from);
                // The leader caps the commit at what it knows this node holds; after a wipe
                // that knowledge may be stale (entries from a deposed leader can sit where
                // the committed ones were), so such a node commits only as far as this
                // leader's AppendEntries proved, and reports that far: a leader whose match
                // is above it starts over (`handle_heartbeat_response`).
                let held = self.held_for_leader();
                self.log.commit_to(commit.min(held));
                let body = MessageBody::HeartbeatResponse {
                    read_round,
                    last_log_index: held,
                    clock_ms: self.clock_ms,
                };
                self.send(m.from, body);
            }
            MessageBody::AppendEntriesResponse { success, index, hint, hint_term } => {
                self.handle_append_response(m.from, success, index, hint, hint_term)
            }
            MessageBody::HeartbeatResponse { read_round, last_log_index, clock_ms } => {
                if let Some(p) = self.progress.get_mut(&m.from) {
                    p.clock = Some((clock_ms, self.now_us));
                }
                self.handle_heartbeat_response(m.from, read_round, last_log_index)
            }
            MessageBody::Propose { proposals } => {
                // A refusal for want of room goes back to the follower, which answers its
                // clients at once. One refused because leadership is being handed over, or
                // that reached a node no longer leading, is dropped: the follower re-sends it
                // when it learns of the next leader (told at once, it would re-send it to this
                // one again and again until the transfer ends).
                let mut busy = Vec::new();
                for (id, data) in proposals {
                    if self.forwarded_high.get(&m.from).is_some_and(|high| id <= *high) {
                        reach::hit(Path::DuplicateForwardSkipped);
                        continue; // a duplicate (see `forwarded_high`)
                    }
                    self.forwarded_high.insert(m.from, id);
                    if self.propose_as(Origin::Forwarded, data) == Some(Rejection::Busy) {
                        busy.push(id);
                    }
                }
                if !busy.is_empty() {
                    self.send(m.from, MessageBody::ProposalsRefused { ids: busy });
                }
            }
            MessageBody::ProposalsRefused { ids } => {
                self.rejected.extend(ids.into_iter().map(|id| (id, Rejection::Busy)));
            }
            MessageBody::ReadIndex { ids } => {
                for id in ids {
                    self.read(id, m.from);
                }
            }
            MessageBody::ReadIndexResponse { ids, index } => {
                for id in ids {
                    self.reads.push(ReadState { id, index });
                }
            }
            MessageBody::SnapshotChunk { meta, seq, data, last } => {
                self.accept_leader(m.from);
                if self.log.term(meta.index) == Some(meta.term) {
                    self.log.commit_to(meta.index);
                    self.answer_snapshot(m.from, meta);
                } else if meta.index <= self.log.commit_index() {
                    self.answer_snapshot(m.from, meta);
                } else {
                    let chunk = SnapshotChunk { from: m.from, meta, seq, data, last };
                    self.snapshot_chunks.push(chunk);
                }
            }
            MessageBody::ProposeMembership { id, change, data, based_on } => {
                if self.role == Role::Leader {
                    self.propose_membership(id, Some(m.from), change, data, based_on);
                }
            }
            MessageBody::MembershipRefused { id, pending } => {
                let why = if pending {
                    Rejection::MembershipChangePending
                } else {
                    Rejection::MembershipInvalid
                };
                self.rejected.push((id, why));
            }
            MessageBody::TransferLeader { to } => {
                if self.role == Role::Leader {
                    self.transfer_leader(to);
                }
            }
            // Answered before the term checks, above.
            MessageBody::StateProbe { .. } | MessageBody::StateProbeResponse { .. } => {}
            MessageBody::TimeoutNow => {
                // Only the leader of our term sends it; a stale one is filtered above.
                if self.role == Role::Follower
                    && self.leader == Some(m.from)
                    && self.is_voter()
                    && !self.fresh
                    && !self.recovering
                {
                    self.campaign_as(true);
                }
            }
            MessageBody::SnapshotAck { meta, next_seq, finished } => {
                if self.role != Role::Leader {
                    return;
                }
                let Some(pr) = self.progress.get_mut(&m.from) else { return };
                pr.recent_active = true;
                if let ReplicationState::Snapshot { meta: sending, idle_heartbeats } = &mut pr.state
                {
                    if *sending == meta {
                        *idle_heartbeats = 0;
                    }
                }
                self.snapshot_acks.push(SnapshotAck { from: m.from, meta, next_seq, finished });
            }
        }
    }

    /// A message of our term from `leader`: it won the election for this term (§5.2).
    fn accept_leader(&mut self, leader: NodeId) {
        if self.role != Role::Follower {
            assert_ne!(self.role, Role::Leader, "two leaders in term {}", self.term);
            self.become_follower(self.term, Some(leader));
        }
        debug_assert!(self.leader.is_none() || self.leader == Some(leader));
        self.leader = Some(leader);
        self.election_elapsed = 0;
        self.leader_heard_at = Some((self.ticks, self.now_us));
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev: LogIndex,
        prev_term: Term,
        entries: &[Entry],
        leader_commit: LogIndex,
    ) {
        // Entries must follow `prev` one by one; anything else is a malformed message (the
        // log's arithmetic relies on it), dropped rather than trusted.
        let contiguous =
            entries.iter().enumerate().all(|(i, e)| e.index.0 == prev.0 + 1 + i as u64);
        if !contiguous {
            return;
        }
        if prev < self.log.commit_index() {
            reach::hit(Path::StaleAppendSkipped);
            // Everything up to our commit index matches the leader's log (Log Matching), so the
            // stale part of the message is skipped.
            let skip = (self.log.commit_index().0 - prev.0) as usize;
            if skip >= entries.len() {
                let body = MessageBody::append_accepted(self.log.commit_index());
                self.send(from, body);
                return;
            }
            let new_prev = entries[skip - 1].index;
            let new_prev_term = entries[skip - 1].term;
            return self.handle_append(
                from,
                new_prev,
                new_prev_term,
                &entries[skip..],
                leader_commit,
            );
        }
        let body = match self.log.maybe_append(prev, prev_term, entries) {
            Some(last_new) => {
                self.log.commit_to(leader_commit.min(last_new));
                self.verified_to(last_new);
                if leader_commit <= last_new {
                    self.maybe_release(leader_commit);
                }
                MessageBody::append_accepted(last_new)
            }
            None => {
                reach::hit(Path::AppendRejected);
                let hint = self
                    .log
                    .last_index_with_term_at_most(prev.min(self.log.last_index()), prev_term);
                MessageBody::AppendEntriesResponse {
                    success: false,
                    index: prev,
                    hint,
                    hint_term: self.log.term(hint).unwrap_or(Term(0)),
                }
            }
        };
        self.send(from, body);
    }

    fn handle_append_response(
        &mut self,
        from: NodeId,
        success: bool,
        index: LogIndex,
        hint: LogIndex,
        hint_term: Term,
    ) {
        if self.role != Role::Leader {
            return;
        }
        let leader_last = self.log.last_index();
        let log_start = self.log.snapshot().index;
        let better = if success {
            None
        } else {
            let found = self.log.last_index_with_term_at_most(hint.min(leader_last), hint_term);
            Some(found)
        };
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        if success {
            if index > pr.match_index {
                pr.match_index = index;
            }
            pr.next_index = pr.next_index.max(index.next());
            while pr.inflight.front().is_some_and(|i| *i <= index) {
                pr.inflight.pop_front();
            }
            let resume = match pr.state {
                ReplicationState::Probe { .. } => true,
                // Installed (or already past it): replicate from the log again.
                ReplicationState::Snapshot { .. } => pr.match_index >= log_start,
                ReplicationState::Replicate => false,
            };
            if resume {
                pr.state = ReplicationState::Replicate;
                pr.inflight.clear();
                pr.next_index = pr.match_index.next();
            }
            self.maybe_commit();
            self.maybe_send_timeout_now(from);
        } else {
            let better = better.expect("computed for rejections");
            // Entries up to the match agree with ours (Log Matching), so a follower holding
            // them answers a hint at or above it. Below it, the follower lost what it
            // acknowledged (a wiped disk): that match counts for nothing now, however old
            // the rejection looks.
            let lost = hint < pr.match_index;
            let stale = match pr.state {
                ReplicationState::Snapshot { .. } => true, // from before the transfer
                ReplicationState::Replicate => index <= pr.match_index && !lost,
                ReplicationState::Probe { .. } => index != pr.next_index.prev() && !lost,
            };
            if stale {
                reach::hit(Path::StaleRejectionIgnored);
                return;
            }
            reach::hit(Path::ProbeAfterRejection);
            if lost {
                reach::hit(Path::FollowerLostItsLog);
                pr.match_index = LogIndex(0);
                pr.commit_sent = LogIndex(0);
            }
            pr.state = ReplicationState::Probe { paused: false };
            pr.inflight.clear();
            pr.next_index = if index <= log_start || hint < log_start {
                // The follower's log does not reach the start of ours: the entries it lacks
                // are compacted, so the next send finds no `prev` and streams a snapshot.
                log_start.max(pr.match_index.next())
            } else {
                better.next().max(pr.match_index.next()).min(leader_last.next())
            };
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_round: u64, last: LogIndex) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else { return };
        pr.recent_active = true;
        pr.read_round = pr.read_round.max(read_round);
        if last < pr.match_index && !matches!(pr.state, ReplicationState::Snapshot { .. }) {
            reach::hit(Path::FollowerLostItsLog);
            // Its log ends below what it acknowledged: it lost it (a wiped disk). Probe from
            // its end; its match counts for nothing now. (A response overtaken by a later
            // acknowledgement costs one probe.)
            pr.match_index = LogIndex(0);
            pr.commit_sent = LogIndex(0);
            pr.state = ReplicationState::Probe { paused: false };
            pr.inflight.clear();
            pr.next_index = last.next();
            return self.advance_reads();
        }
        if let ReplicationState::Probe { .. } = pr.state {
            // A lost probe is retried once the follower is heard from again.
            pr.state = ReplicationState::Probe { paused: false };
        }
        self.advance_reads();
    }

    /// Pipelined appends whose acknowledgements stopped coming were lost (or their
    /// acknowledgements were): fall back to probing from the last known match. A snapshot
    /// transfer that stopped being acknowledged starts over the same way.
    fn detect_lost_appends(&mut self) {
        let last = self.log.last_index();
        for pr in self.progress.values_mut() {
            if let ReplicationState::Snapshot { idle_heartbeats, .. } = &mut pr.state {
                *idle_heartbeats += 1;
                if *idle_heartbeats >= SNAPSHOT_IDLE_HEARTBEATS_MAX {
                    reach::hit(Path::SnapshotRestarted);
                    pr.state = ReplicationState::Probe { paused: false };
                    pr.next_index = pr.match_index.next();
                }
                continue;
            }
            if pr.state != ReplicationState::Replicate {
                continue;
            }
            let stalled = !pr.inflight.is_empty()
                && pr.match_index == pr.match_at_heartbeat
                && pr.match_index < last;
            pr.stalled_heartbeats = if stalled { pr.stalled_heartbeats + 1 } else { 0 };
            pr.match_at_heartbeat = pr.match_index;
            if pr.stalled_heartbeats >= STALLED_HEARTBEATS_MAX {
                reach::hit(Path::LostAppendsDetected);
                pr.stalled_heartbeats = 0;
                pr.state = ReplicationState::Probe { paused: false };
                pr.inflight.clear();
                pr.next_index = pr.match_index.next();
            }
        }
    }

    // ---- replication (§5.3) -----------------------------------------------------------------

    /// Sends the next AppendEntries to `peer` if its state allows; true if one was sent.
    fn send_append(&mut self, peer: NodeId) -> bool {
        let last = self.log.last_index();
        let commit = self.log.commit_index();
        let max_inflight = self.cfg.inflight_appends_max;
        let pr = self.progress.get_mut(&peer).expect("progress for every peer");
        let allowed = match pr.state {
            ReplicationState::Probe { paused } => !paused,
            ReplicationState::Replicate => {
                pr.next_index <= last && pr.inflight.len() < max_inflight
            }
            ReplicationState::Snapshot { .. } => false,
        };
        if !allowed {
            return false;
        }
        let prev = pr.next_index.prev();
        let Some(prev_term) = self.log.term(prev) else {
            // Compacted away: the follower gets a snapshot instead (its meta is set in `ready`).
            debug_assert!(prev < self.log.snapshot().index);
            reach::hit(Path::SnapshotStarted);
            pr.state =
                ReplicationState::Snapshot { meta: SnapshotMeta::default(), idle_heartbeats: 0 };
            pr.inflight.clear();
            self.snapshot_wanted.push(peer);
            return false;
        };
        let entries = self.log.entries_from(
            pr.next_index,
            self.cfg.append_entries_max,
            self.cfg.append_bytes_max,
        );
        let last_sent = entries.last().map_or(prev, |e| e.index);
        pr.commit_sent = pr.commit_sent.max(commit.min(last_sent));
        match pr.state {
            ReplicationState::Probe { .. } => pr.state = ReplicationState::Probe { paused: true },
            ReplicationState::Replicate => {
                pr.next_index = last_sent.next();
                pr.inflight.push_back(last_sent);
            }
            ReplicationState::Snapshot { .. } => unreachable!("not allowed to append"),
        }
        let body = MessageBody::AppendEntries {
            prev_log_index: prev,
            prev_log_term: prev_term,
            entries,
            leader_commit: commit,
        };
        self.send(peer, body);
        true
    }

    fn send_heartbeat(&mut self, peer: NodeId) {
        let commit = self.log.commit_index();
        let pr = self.progress.get_mut(&peer).expect("progress for every peer");
        // Never tell a follower to commit past what it is known to hold.
        let commit = commit.min(pr.match_index);
        pr.commit_sent = pr.commit_sent.max(commit);
        let body = MessageBody::Heartbeat { commit, read_round: self.read_round };
        self.send(peer, body);
    }

    /// Tells a follower the commit index. One that holds the whole log gets it as an empty
    /// AppendEntries carrying the leader's commit index itself: a node catching up after
    /// losing its disk may vote again only once it holds the log up to that index (a
    /// heartbeat's commit is capped at what the follower is known to hold, which tells it
    /// nothing about what it lacks).
    fn send_commit(&mut self, peer: NodeId) {
        let last = self.log.last_index();
        let commit = self.log.commit_index();
        let pr = self.progress.get_mut(&peer).expect("progress for every peer");
        if pr.match_index != last || !matches!(pr.state, ReplicationState::Replicate) {
            return self.send_heartbeat(peer);
        }
        pr.commit_sent = pr.commit_sent.max(commit);
        let prev_log_term = self.log.term(last).expect("the last entry is held");
        let body = MessageBody::AppendEntries {
            prev_log_index: last,
            prev_log_term,
            entries: Vec::new(),
            leader_commit: commit,
        };
        self.send(peer, body);
    }

    fn broadcast_heartbeat(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for peer in peers {
            self.send_heartbeat(peer);
        }
    }

    /// §5.3/§5.4.2: commit the highest index stored on a quorum, only if it is of our term.
    fn maybe_commit(&mut self) {
        let mut matched: Vec<LogIndex> = self.voter_progress().map(|p| p.match_index).collect();
        if self.is_voter() {
            matched.push(self.log.persisted_index());
        }
        if matched.len() < self.quorum() {
            return;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matched[self.quorum() - 1];
        if candidate > self.log.commit_index() && self.log.term(candidate) != Some(self.term) {
            reach::hit(Path::CommitWaitsForCurrentTerm);
        }
        if candidate > self.log.commit_index() && self.log.term(candidate) == Some(self.term) {
            let first_commit_of_term = self.log.term(self.log.commit_index()) != Some(self.term);
            self.log.commit_to(candidate);
            if first_commit_of_term {
                for (id, from) in std::mem::take(&mut self.reads_awaiting_commit) {
                    self.register_read(id, from);
                }
            }
            self.advance_reads();
            self.maybe_step_down_after_removal();
        }
    }

    // ---- client work ------------------------------------------------------------------------

    fn propose(&mut self, id: u64, data: Vec<u8>) {
        if let Some(why) = self.propose_as(Origin::Local(id), data) {
            self.rejected.push((id, why));
        }
    }

    /// Whether appending `entry` would leave more uncommitted than the limits allow, by count
    /// or by bytes (one entry is always taken when nothing is uncommitted, however large).
    fn too_much_uncommitted(&self, entry: &Entry) -> bool {
        let count = self.log.last_index().0 - self.log.commit_index().0;
        let bytes = self.log.uncommitted_bytes();
        count >= self.cfg.uncommitted_entries_max
            || (count > 0 && bytes + entry.size_bytes() > self.cfg.uncommitted_bytes_max)
    }

    /// Appends (as leader) or forwards a proposal; the rejection, if it is refused here.
    fn propose_as(&mut self, origin: Origin, data: Vec<u8>) -> Option<Rejection> {
        match self.role {
            // New entries would keep the transferee behind (thesis §3.10).
            Role::Leader if self.transfer.is_some() => Some(Rejection::Transferring),
            Role::Leader => {
                let index = self.log.last_index().next();
                let entry = self.new_entry(index, data);
                if self.too_much_uncommitted(&entry) {
                    reach::hit(Path::ProposalRefusedForRoom);
                    return Some(Rejection::Busy);
                }
                self.log.append(entry);
                // A single-voter cluster commits once its own write is persisted.
                self.maybe_commit();
                None
            }
            _ => match (self.leader, origin) {
                (Some(_), Origin::Local(id)) => {
                    self.forward_proposals.push((id, data));
                    None
                }
                (_, Origin::Local(_)) => Some(Rejection::NoLeader),
                // A forwarded proposal reached a non-leader: dropped; its origin re-sends it
                // once it learns of the new leader.
                (_, Origin::Forwarded) => None,
            },
        }
    }

    /// ReadIndex (thesis §6.4): record the commit index, confirm leadership with a quorum
    /// round, then the read may be served once applied up to that index.
    fn read(&mut self, id: u64, from: NodeId) {
        match self.role {
            Role::Leader => {
                if self.pending_reads.len() + self.reads_awaiting_commit.len()
                    >= self.cfg.pending_reads_max
                {
                    self.reject_read(id, from, Rejection::Busy);
                } else if self.lease_valid() {
                    reach::hit(Path::LeaseRead);
                    let index = self.log.commit_index();
                    if from == self.cfg.id {
                        self.reads.push(ReadState { id, index });
                    } else {
                        self.send(from, MessageBody::ReadIndexResponse { ids: vec![id], index });
                    }
                } else if self.log.term(self.log.commit_index()) != Some(self.term) {
                    reach::hit(Path::ReadWaitsForFirstCommit);
                    self.reads_awaiting_commit.push((id, from));
                } else {
                    self.register_read(id, from);
                }
            }
            _ if from != self.cfg.id => {} // not the leader: the asking node times out and retries
            _ => match self.leader {
                Some(_) => self.forward_reads.push(id),
                None => self.rejected.push((id, Rejection::NoLeader)),
            },
        }
    }

    fn register_read(&mut self, id: u64, from: NodeId) {
        let round = self.read_round + 1;
        self.pending_reads.push_back(PendingRead {
            id,
            from,
            index: self.log.commit_index(),
            round,
        });
        self.read_round_needed = true;
        self.advance_reads();
    }

    fn advance_reads(&mut self) {
        let mut rounds: Vec<u64> = self.voter_progress().map(|p| p.read_round).collect();
        if self.is_voter() {
            // The leader confirms itself; one removing itself does not count (thesis §4.2.2).
            rounds.push(u64::MAX);
        }
        if rounds.len() < self.quorum() {
            return;
        }
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        let confirmed = rounds[self.quorum() - 1];
        while self.round_started.front().is_some_and(|(r, _, _)| *r <= confirmed) {
            let (_, started, started_us) = self.round_started.pop_front().expect("checked");
            let lease = u64::from(self.lease_ticks());
            self.lease_until = self.lease_until.max(started + lease);
            let lease_us = lease.saturating_mul(self.cfg.tick_us);
            self.lease_until_us = self.lease_until_us.max(started_us.saturating_add(lease_us));
        }
        let mut remote: BTreeMap<NodeId, (Vec<u64>, LogIndex)> = BTreeMap::new();
        while self.pending_reads.front().is_some_and(|r| r.round <= confirmed) {
            let r = self.pending_reads.pop_front().expect("checked");
            if r.from == self.cfg.id {
                self.reads.push(ReadState { id: r.id, index: r.index });
            } else {
                let slot = remote.entry(r.from).or_insert((Vec::new(), r.index));
                slot.0.push(r.id);
                slot.1 = slot.1.max(r.index);
            }
        }
        for (to, (ids, index)) in remote {
            self.send(to, MessageBody::ReadIndexResponse { ids, index });
        }
    }

    // ---- plumbing ---------------------------------------------------------------------------

    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.send_with_term(to, self.term, body);
    }

    fn send_with_term(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.msgs.push(Message { from: self.cfg.id, to, term, body });
    }

    /// Checks the invariants that hold between any two steps. Debug builds (the tests, the
    /// simulation, the dev cluster) check after every `step` and `ready` (`check_step`): all
    /// of this but the log's linear walk every time, the whole of it every 64th time.
    pub fn check_invariants(&self) {
        self.log.check_invariants();
        self.check_node();
    }

    /// `check_invariants` but the log's linear-time checks.
    fn check_node(&self) {
        self.log.check_bounds();
        assert!(self.log.last_term() <= self.term);
        assert!(self.persisted_hard_state.term <= self.term);
        match self.role {
            Role::Leader => {
                assert_eq!(self.leader, Some(self.cfg.id));
                assert_eq!(self.voted_for, Some(self.cfg.id));
                self.check_progress();
            }
            _ => assert!(self.progress.is_empty()),
        }
    }

    /// The leader's view of each follower (Figure 2 "volatile state on leaders", §5.3): it
    /// never believes a follower holds more than the leader's own log, sends from just past
    /// what it knows the follower holds, and keeps at most `inflight_appends_max` appends in
    /// flight, each ending before `next_index`, in the order sent.
    fn check_progress(&self) {
        let last = self.log.last_index();
        for (id, pr) in &self.progress {
            assert!(pr.match_index <= last, "{id}: match {} past last {last}", pr.match_index);
            assert!(
                pr.match_index < pr.next_index,
                "{id}: match {} not below next {}",
                pr.match_index,
                pr.next_index
            );
            assert!(pr.next_index <= last.next(), "{id}: next {} past {last} + 1", pr.next_index);
            assert!(pr.inflight.len() <= self.cfg.inflight_appends_max, "{id}: too many in flight");
            if pr.state != ReplicationState::Replicate {
                assert!(pr.inflight.is_empty(), "{id}: appends in flight in {:?}", pr.state);
            }
            assert!(pr.inflight.iter().zip(pr.inflight.iter().skip(1)).all(|(a, b)| a <= b));
            if let Some(back) = pr.inflight.back() {
                assert!(*back < pr.next_index, "{id}: in flight to {back}, next {}", pr.next_index);
            }
            assert!(
                pr.commit_sent <= self.log.commit_index(),
                "{id}: told of an uncommitted index"
            );
        }
    }

    fn observed(&self) -> Seen {
        Seen {
            hard_state: self.hard_state(),
            persisted: self.persisted_hard_state,
            commit: self.log.commit_index(),
            applied: self.log.applied_index(),
        }
    }

    /// `check_invariants`, and what may not change from one step to the next: the term and
    /// the term handed to storage never go back, a vote cast stays cast for its term, and the
    /// commit and applied indexes never go back within a run.
    fn check_step(&mut self) {
        // The whole log is walked every 64th step (deterministically): after every step it
        // cost the simulation a sixth of its speed.
        self.checked_steps += 1;
        if self.checked_steps.is_multiple_of(64) {
            self.check_invariants();
        } else {
            self.check_node();
        }
        let (before, now) = (self.seen, self.observed());
        for (what, b, n) in [
            ("term", before.hard_state, now.hard_state),
            ("persisted term", before.persisted, now.persisted),
        ] {
            assert!(n.term >= b.term, "{what} went back from {} to {}", b.term, n.term);
            if n.term == b.term && b.voted_for.is_some() {
                assert_eq!(n.voted_for, b.voted_for, "{what}: the vote of term {} changed", b.term);
            }
        }
        assert!(
            now.commit >= before.commit,
            "commit went back from {} to {}",
            before.commit,
            now.commit
        );
        assert!(
            now.applied >= before.applied,
            "applied went back from {} to {}",
            before.applied,
            now.applied
        );
        self.seen = now;
    }
}
