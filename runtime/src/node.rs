//! The task that owns one Raft node: it collects every ready input (ticks, peer messages,
//! client requests, finished syncs), steps the core with all of them, then handles the output
//! batch once: one storage write for the whole batch, synced beside the task (group commit,
//! see `durability`), messages sent, committed entries applied, replies released. Everything
//! else talks to it through bounded channels.

use crate::codec::{self, Proposal};
use crate::command::{AdminCommand, ReadCommand, Reply};
use crate::durability::Durability;
use crate::snapshot::{Incoming, Outgoing, SnapshotTuning};
use crate::storage::{SnapshotItem, Storage, StorageError};
use crate::transport::PeerSender;
use bytes::Bytes;
use raft_kv_core::kv::{self, Key, KvRead, Mutation, Value};
use raft_kv_core::{
    planted, Input, LogIndex, Membership, MembershipChange, Message, NodeId, PlantedBug, RaftNode,
    Ready, Rejection, Role, Status,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// A client request handed to the node task.
pub struct ClientRequest {
    pub kind: RequestKind,
    pub reply: oneshot::Sender<Reply>,
    /// The client connection it came from: its reads are served in the order it sent them.
    pub conn: u64,
}

pub enum RequestKind {
    Write(kv::Command),
    Read(ReadCommand),
    Admin(AdminCommand),
}

/// Most keys KEYS returns; past it the client is told to narrow the pattern.
pub const KEYS_RESULT_MAX: usize = 1_000_000;

/// Rounds of `ready` handled per loop iteration; each round can only be caused by the previous
/// one (a persisted ack that commits, a commit that releases reads), so a few suffice.
const READY_ROUNDS_MAX: usize = 8;

/// A learner within this many entries of the commit index is promoted to voter.
const PROMOTE_LAG_MAX: u64 = 100;

/// After a promotion was proposed and answered, the next waits this long: a promotion
/// refused (another change pending, a transfer running) is retried this often.
const PROMOTE_RETRY: Duration = Duration::from_millis(200);

/// Keys KEYS reads from storage at a time.
const KEYS_BATCH: usize = 4096;

/// Keys one SCAN call examines at most, whatever its COUNT.
const SCAN_COUNT_MAX: usize = 100_000;

/// SCAN cursors a node remembers; the oldest are forgotten (and answered `invalid cursor`).
const SCAN_CURSORS_MAX: usize = 10_000;

/// Expired keys one sweep entry deletes at most.
const SWEEP_KEYS_MAX: usize = 256;

/// While keys with a deadline exist, the leader keeps the log's time (`Entry::time`, at which
/// reads decide expiry) at most this far behind its clock, with an empty sweep if need be.
const LOG_TIME_LAG_MAX_MS: u64 = 100;

/// Overdue ticks stepped at once after a stall; a longer stall resumes ticking from there.
const TICK_CATCH_UP_MAX: usize = 100_000;

/// Timing and limits of the node task.
#[derive(Clone, Debug)]
pub struct NodeTuning {
    /// Length of one core tick.
    pub tick: Duration,
    /// A client request not answered within this gets an error (indeterminate for writes).
    pub request_timeout: Duration,
    /// Inputs taken off the channels per loop iteration (the group-commit batch).
    pub inputs_per_batch_max: usize,
    /// Client requests waiting for consensus at once; more are refused with BUSY.
    pub pending_requests_max: usize,
    /// Messages waiting for a WAL sync at once; past it the node takes no input until one
    /// finishes.
    pub held_messages_max: usize,
    pub snapshot: SnapshotTuning,
}

impl Default for NodeTuning {
    fn default() -> Self {
        NodeTuning {
            tick: Duration::from_millis(10),
            request_timeout: Duration::from_secs(5),
            inputs_per_batch_max: 4096,
            pending_requests_max: 100_000,
            held_messages_max: 65_536,
            snapshot: SnapshotTuning::default(),
        }
    }
}

struct PendingWrite {
    data: Vec<u8>,
    /// Submitted to the core more than once (after a leader change or a missing leader): an
    /// earlier copy may be in some log, so any failure is indeterminate.
    resubmitted: bool,
    /// A membership change (proposed with `Input::ProposeMembership`).
    membership: Option<MembershipChange>,
    reply: oneshot::Sender<Reply>,
}

struct PendingRead {
    conn: u64,
    cmd: ReadCommand,
    reply: oneshot::Sender<Reply>,
}

/// Read access for the KV state machine: the node's storage, under the changes of the
/// entries applied earlier in the same batch and not yet written.
struct Applied<'a, S>(&'a S, Option<&'a ApplyBatch>);

impl<S: Storage> KvRead for Applied<'_, S> {
    type Error = StorageError;
    fn get(&self, key: &[u8]) -> Result<Option<Value>, StorageError> {
        match self.1.and_then(|batch| batch.changes.lookup(key)) {
            Some(v) => Ok(v),
            None => self.0.get(key),
        }
    }
    fn corrupt(key: &[u8]) -> StorageError {
        corrupt_value(key)
    }
}

/// The committed entries of one `Ready`, applied in memory and written to storage as one
/// batch (`Storage::apply_batch`); their replies go once it is written.
#[derive(Default)]
struct ApplyBatch {
    entries: Vec<(LogIndex, Vec<Mutation>)>,
    /// What the batch did to the keys so far.
    changes: kv::PendingChanges,
    replies: Vec<(oneshot::Sender<Reply>, Reply)>,
}

impl ApplyBatch {
    fn push(&mut self, index: LogIndex, mutations: Vec<Mutation>) {
        self.changes.record(&mutations);
        self.entries.push((index, mutations));
    }
}

fn corrupt_value(key: &[u8]) -> StorageError {
    StorageError::Corrupt(format!(
        "the value of key {:?} is no record",
        String::from_utf8_lossy(key)
    ))
}

pub struct NodeTask<S: Storage> {
    id: NodeId,
    raft: RaftNode,
    storage: S,
    /// Which log writes are synced, and the messages waiting for them.
    durable: Durability,
    /// The applied client sessions read so far, by origin node (`Storage::session`), kept as
    /// the batches apply: every entry needs its origin's, and a storage read costs.
    sessions: HashMap<u64, Option<kv::Session>>,
    peers: PeerSender,
    tuning: NodeTuning,
    /// Distinguishes this run's requests from a previous run's in the log.
    incarnation: u64,
    next_request: u64,
    /// Larger writes are refused: their log entry could not be sent to peers.
    proposal_bytes_max: usize,
    writes: BTreeMap<u64, PendingWrite>,
    reads: BTreeMap<u64, PendingRead>,
    /// Requests refused for want of a leader, re-submitted once one is known.
    awaiting_leader: Vec<u64>,
    /// Confirmed reads waiting for the apply index to reach theirs.
    reads_awaiting_apply: BTreeMap<LogIndex, Vec<u64>>,
    /// Reads that may be served, waiting for reads their connection sent before them.
    reads_ready: BTreeSet<u64>,
    /// Unanswered reads of each client connection.
    conn_reads: BTreeMap<u64, BTreeSet<u64>>,
    /// (deadline, request) in arrival order, so deadlines are ascending.
    deadlines: VecDeque<(Instant, u64)>,
    applied: LogIndex,
    last_status: Option<(Role, raft_kv_core::Term, Option<NodeId>)>,
    /// The leader requests were last submitted to.
    last_leader: Option<(raft_kv_core::Term, NodeId)>,
    info: InfoContext,
    /// Told every role, term or leader change (the simulation checks invariants with it).
    on_status: Option<StatusHook>,
    /// Snapshots this leader streams to followers, and the one this follower receives.
    outgoing: Outgoing,
    incoming: Incoming,
    /// RAFT.TRANSFER-LEADER requests: (target, deadline, reply), answered once the target leads.
    transfers: Vec<(NodeId, Instant, oneshot::Sender<Reply>)>,
    /// The leader proposes no promotion before this (one at a time).
    promote_after: Instant,
    /// The membership the transport was last set up for.
    known_membership: Membership,
    wall_clock: WallClock,
    /// Time of the last applied entry (`Entry::time`): expiry is decided at it.
    applied_time: u64,
    /// Keys with a deadline, by deadline, and each one's: the leader sweeps them.
    deadlines_by_time: BTreeSet<(u64, Key)>,
    key_deadlines: HashMap<Key, u64>,
    /// The request id of the leader's sweep in flight.
    sweep: Option<u64>,
    /// What CONFIG GET reports (CONFIG SET changes it): this node's only.
    config: BTreeMap<String, Bytes>,
    /// SCAN cursors handed out: where each walk stopped.
    scan_cursors: BTreeMap<u64, Key>,
    /// RANDOMKEY's choices: seeded from the node and its run, so a simulation replays them.
    rng: rand::rngs::StdRng,
    next_scan_cursor: u64,
}

/// A callback on every change of a node's role, term or leader.
pub type StatusHook = Arc<dyn Fn(&Status) + Send + Sync>;

/// What a node task starts from besides its Raft node, storage and peers.
/// A wall clock: milliseconds since the Unix epoch.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system's wall clock, in milliseconds since the Unix epoch (0 before it).
pub fn system_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub struct NodeStart {
    /// This run's number (`Storage::next_incarnation`).
    pub incarnation: u64,
    /// Tracks the writes the sync task (`durability::sync_loop`) makes durable.
    pub durable: Durability,
    /// The applied index restored from storage, and its entry's time.
    pub applied: LogIndex,
    pub applied_time: u64,
    /// Larger writes are refused: their log entry could not be sent to peers.
    pub proposal_bytes_max: usize,
    pub info: InfoContext,
    /// Stamps the entries this node appends as leader (`Entry::time`).
    pub wall_clock: WallClock,
}

/// What INFO reports beyond the Raft state.
pub struct InfoContext {
    /// The `# Server` section's fixed lines.
    pub server: String,
    pub raft_addrs: BTreeMap<NodeId, std::net::SocketAddr>,
    /// Permits of the client accept loop: in use = connected clients.
    pub client_slots: Arc<tokio::sync::Semaphore>,
    pub clients_max: usize,
    pub started: Instant,
    pub cluster_id: u64,
}

impl<S: Storage> NodeTask<S> {
    pub fn new(
        raft: RaftNode,
        storage: S,
        peers: PeerSender,
        tuning: NodeTuning,
        start: NodeStart,
    ) -> Self {
        let NodeStart {
            incarnation,
            durable,
            applied,
            applied_time,
            proposal_bytes_max,
            info,
            wall_clock,
        } = start;
        let id = raft.id();
        NodeTask {
            id,
            raft,
            storage,
            durable,
            sessions: HashMap::new(),
            peers,
            incarnation,
            // Request ids are unique across runs too, so a reply to an earlier run's request
            // (a ReadIndexResponse still in flight) can never match a new one.
            next_request: incarnation << 40,
            proposal_bytes_max,
            writes: BTreeMap::new(),
            reads: BTreeMap::new(),
            awaiting_leader: Vec::new(),
            reads_awaiting_apply: BTreeMap::new(),
            reads_ready: BTreeSet::new(),
            conn_reads: BTreeMap::new(),
            deadlines: VecDeque::new(),
            applied,
            last_status: None,
            last_leader: None,
            info,
            on_status: None,
            outgoing: Outgoing::new(tuning.snapshot.clone()),
            incoming: Incoming::default(),
            transfers: Vec::new(),
            promote_after: Instant::now(),
            known_membership: Membership::default(),
            wall_clock,
            applied_time,
            deadlines_by_time: BTreeSet::new(),
            key_deadlines: HashMap::new(),
            sweep: None,
            config: crate::command::CONFIG_DEFAULTS
                .iter()
                .map(|(k, v)| (k.to_string(), Bytes::from_static(v.as_bytes())))
                .collect(),
            scan_cursors: BTreeMap::new(),
            rng: rand::SeedableRng::seed_from_u64(id.0 ^ incarnation.rotate_left(32)),
            next_scan_cursor: 0,
            tuning,
        }
    }

    pub fn with_status_hook(mut self, hook: Option<StatusHook>) -> Self {
        self.on_status = hook;
        self
    }

    /// Runs until both input channels close or storage fails. `synced` reports each sync
    /// of the sync task (`durability::sync_loop`).
    pub async fn run(
        mut self,
        mut peer_rx: mpsc::Receiver<Message>,
        mut client_rx: mpsc::Receiver<ClientRequest>,
        mut synced: mpsc::Receiver<Result<u64, StorageError>>,
        mut tick_period: impl FnMut() -> Duration,
    ) -> Result<(), StorageError> {
        let mut next_tick = Instant::now() + tick_period();
        loop {
            // `biased`: tokio's random branch order draws from a thread-local RNG that outlives
            // a simulation run, which would make runs of the same seed differ. Each branch
            // first tells the core the time: entries appended now are stamped with it.
            tokio::select! {
                biased;
                _ = tokio::time::sleep_until(next_tick) => {
                    next_tick += tick_period();
                    self.raft.step(Input::Clock((self.wall_clock)()));
                    self.raft.step(Input::Tick);
                    self.on_tick();
                }
                s = synced.recv() => match s {
                    Some(write) => {
                        self.raft.step(Input::Clock((self.wall_clock)()));
                        self.on_synced(write?);
                    }
                    None => return Err(StorageError::Io("the WAL sync task stopped".into())),
                },
                // While too many messages wait for a sync, input waits in the channels.
                m = peer_rx.recv(), if !self.durable.full() => match m {
                    Some(m) => {
                        self.raft.step(Input::Clock((self.wall_clock)()));
                        self.raft.step(Input::Message(m));
                    }
                    None => return Ok(()),
                },
                c = client_rx.recv(), if !self.durable.full() => match c {
                    Some(c) => {
                        self.raft.step(Input::Clock((self.wall_clock)()));
                        self.on_client(c);
                    }
                    None => return Ok(()),
                },
            }
            // Ticks that fell due while the task was busy or stalled come first: a lease must
            // never be judged by a clock that lags.
            for _ in 0..TICK_CATCH_UP_MAX {
                if Instant::now() < next_tick {
                    break;
                }
                next_tick += tick_period();
                self.raft.step(Input::Tick);
                self.on_tick();
            }
            // Group commit: everything already queued joins this batch.
            for _ in 0..self.tuning.inputs_per_batch_max {
                if self.durable.full() {
                    break;
                }
                let mut took = false;
                if let Ok(m) = peer_rx.try_recv() {
                    self.raft.step(Input::Message(m));
                    took = true;
                }
                if let Ok(c) = client_rx.try_recv() {
                    self.on_client(c);
                    took = true;
                }
                if !took {
                    break;
                }
            }
            self.handle_ready()?;
            if self.observe_status() {
                self.handle_ready()?;
            }
        }
    }

    /// Logs role changes and re-submits requests. When a new leader appears, every unanswered
    /// request goes again, since requests forwarded to the old leader may have been lost with
    /// it; while a leader is known, requests refused for want of one go again. Reads are
    /// idempotent and writes are applied at most once (`kv::admit`). True if anything went.
    fn observe_status(&mut self) -> bool {
        let s = self.raft.status();
        let now = (s.role, s.term, s.leader);
        if self.last_status != Some(now) {
            info!(node = %self.id, term = %s.term, role = s.role.name(), leader = ?s.leader.map(|l| l.0), "raft state changed");
            self.last_status = Some(now);
            if !self.transfers.is_empty() {
                let (done, waiting) = std::mem::take(&mut self.transfers)
                    .into_iter()
                    .partition(|(to, _, _)| s.leader == Some(*to));
                self.transfers = waiting;
                for (to, _, reply) in done {
                    info!(node = %self.id, to = %to, term = %s.term, "leadership transfer finished");
                    let _ = reply.send(Reply::ok());
                }
            }
            if s.role != Role::Leader && self.outgoing.active() > 0 {
                info!(node = %self.id, transfers = self.outgoing.active(), "no longer leader; snapshot transfers stopped");
                self.outgoing.clear();
            }
            if let Some(hook) = &self.on_status {
                hook(&s);
            }
        }
        let Some(leader) = s.leader else { return false };
        let mut ids = if self.last_leader != Some((s.term, leader)) {
            self.last_leader = Some((s.term, leader));
            self.awaiting_leader.clear();
            self.writes.keys().chain(self.reads.keys()).copied().collect()
        } else {
            std::mem::take(&mut self.awaiting_leader)
        };
        // Writes of one node must reach the log in request order (see `kv::admit`).
        ids.sort_unstable();
        let mut resubmitted = false;
        for id in ids {
            if let Some(w) = self.writes.get_mut(&id) {
                w.resubmitted = true;
                let data = w.data.clone();
                self.raft.step(match &w.membership {
                    Some(change) => Input::ProposeMembership { id, change: change.clone(), data },
                    None => Input::Propose { id, data },
                });
                resubmitted = true;
            } else if self.reads.contains_key(&id) {
                self.raft.step(Input::Read { id });
                resubmitted = true;
            }
        }
        resubmitted
    }

    fn on_client(&mut self, c: ClientRequest) {
        let waiting = self.writes.len() + self.reads.len();
        if waiting >= self.tuning.pending_requests_max && !matches!(c.kind, RequestKind::Admin(_)) {
            let _ = c.reply.send(Reply::error("BUSY too many requests in flight; retry later"));
            return;
        }
        let member = self.raft.membership().contains(self.id);
        if !member && matches!(c.kind, RequestKind::Read(_) | RequestKind::Write(_)) {
            let msg = "CLUSTERDOWN this node is not a member of the cluster (yet or any more)";
            let _ = c.reply.send(Reply::error(msg));
            return;
        }
        let id = self.next_request;
        self.next_request += 1;
        match c.kind {
            RequestKind::Admin(AdminCommand::NodeAdd { id: node, addr }) => {
                let change =
                    MembershipChange::AddLearner { id: NodeId(node), addr: addr.to_string() };
                info!(node = %self.id, add = node, %addr, "membership change requested");
                self.propose_membership(id, change, c.reply);
                return;
            }
            RequestKind::Admin(AdminCommand::NodeRemove(node)) => {
                info!(node = %self.id, remove = node, "membership change requested");
                self.propose_membership(id, MembershipChange::Remove { id: NodeId(node) }, c.reply);
                return;
            }
            RequestKind::Admin(AdminCommand::Info(sections)) => {
                let _ = c.reply.send(self.info(&sections));
                return;
            }
            RequestKind::Admin(AdminCommand::ConfigGet(patterns)) => {
                let mut out = Vec::new();
                for (k, v) in &self.config {
                    let matches = patterns.iter().any(|p| {
                        raft_kv_core::glob::matches(&p.to_ascii_lowercase(), k.as_bytes())
                    });
                    if matches {
                        out.push((Reply::Bulk(Bytes::from(k.clone())), Reply::Bulk(v.clone())));
                    }
                }
                let _ = c.reply.send(Reply::Map(out));
                return;
            }
            RequestKind::Admin(AdminCommand::ConfigSet(pairs)) => {
                let reply = match pairs.iter().find(|(k, _)| !self.config.contains_key(k)) {
                    Some((k, _)) => Reply::error(format!(
                        "ERR Unknown option or number of arguments for CONFIG SET - '{k}'"
                    )),
                    None => {
                        self.config.extend(pairs);
                        Reply::ok()
                    }
                };
                let _ = c.reply.send(reply);
                return;
            }
            RequestKind::Admin(AdminCommand::TransferLeader(to)) => {
                self.transfer_leader(NodeId(to), c.reply);
                return;
            }
            RequestKind::Write(cmd) => {
                if cmd.size_bytes() > self.proposal_bytes_max {
                    let msg = format!(
                        "ERR the write is too large to replicate ({} bytes of keys and values, at most {})",
                        cmd.size_bytes(),
                        self.proposal_bytes_max
                    );
                    let _ = c.reply.send(Reply::error(msg));
                    return;
                }
                let data = codec::encode(&Proposal {
                    origin: self.id,
                    incarnation: self.incarnation,
                    request: id,
                    command: cmd,
                });
                self.raft.step(Input::Propose { id, data: data.clone() });
                let w = PendingWrite { data, reply: c.reply, resubmitted: false, membership: None };
                self.writes.insert(id, w);
            }
            RequestKind::Read(cmd) => {
                let planted = self.raft.config().planted;
                if planted::active(planted, PlantedBug::FollowerLocalReads)
                    && self.raft.status().role == Role::Follower
                {
                    let reply = self
                        .execute_read(&cmd)
                        .unwrap_or_else(|e| Reply::error(format!("ERR {e}")));
                    let _ = c.reply.send(reply);
                    return;
                }
                self.raft.step(Input::Read { id });
                self.reads.insert(id, PendingRead { conn: c.conn, cmd, reply: c.reply });
                self.conn_reads.entry(c.conn).or_default().insert(id);
            }
        }
        self.deadlines.push_back((Instant::now() + self.tuning.request_timeout, id));
    }

    /// Proposes a membership change as request `id` of this node's session; the reply comes
    /// when it applies (or fails to).
    fn propose_membership(
        &mut self,
        id: u64,
        change: MembershipChange,
        reply: oneshot::Sender<Reply>,
    ) {
        // A leader knows the latest membership and answers a change that cannot apply at
        // once; a follower's may lag, so it leaves the check to the leader.
        if self.raft.status().role == Role::Leader {
            if let Err(e) = self.raft.membership().apply(&change) {
                let _ = reply.send(Reply::error(format!("ERR {e}")));
                return;
            }
        }
        let data = codec::encode(&Proposal {
            origin: self.id,
            incarnation: self.incarnation,
            request: id,
            command: kv::Command::Membership(change.clone()),
        });
        self.raft.step(Input::ProposeMembership { id, change: change.clone(), data: data.clone() });
        let w = PendingWrite { data, reply, resubmitted: false, membership: Some(change) };
        self.writes.insert(id, w);
        self.deadlines.push_back((Instant::now() + self.tuning.request_timeout, id));
    }

    /// The leader promotes a learner once it holds the log up to the commit index (less a
    /// little, so a busy cluster does not keep it a learner forever).
    fn maybe_promote_learner(&mut self) {
        let now = Instant::now();
        if now < self.promote_after || self.writes.values().any(|w| w.membership.is_some()) {
            return;
        }
        let status = self.raft.status();
        if status.role != Role::Leader {
            return;
        }
        let learners = &self.raft.membership().learners;
        let commit = status.commit_index.0;
        let ready = self
            .raft
            .followers()
            .into_iter()
            .find(|f| learners.contains(&f.id) && f.match_index.0 + PROMOTE_LAG_MAX >= commit);
        let Some(f) = ready else { return };
        self.promote_after = now + PROMOTE_RETRY;
        info!(node = %self.id, learner = %f.id, match_index = %f.match_index, commit, "learner caught up; promoting it to voter");
        let id = self.next_request;
        self.next_request += 1;
        let (reply, _) = oneshot::channel();
        self.propose_membership(id, MembershipChange::Promote { id: f.id }, reply);
    }

    /// The membership in effect (the last in the log) changed: log it, and let the transport
    /// reach every member.
    fn follow_membership(&mut self) {
        if self.raft.membership() == &self.known_membership {
            return;
        }
        let m = self.raft.membership().clone();
        info!(node = %self.id, voters = ?m.voters.iter().map(|v| v.0).collect::<Vec<_>>(), learners = ?m.learners.iter().map(|v| v.0).collect::<Vec<_>>(), "membership changed");
        let mut peers = BTreeMap::new();
        for (id, addr) in &m.addrs {
            match addr.parse() {
                Ok(a) => {
                    peers.insert(*id, a);
                }
                Err(_) => {
                    error!(node = %self.id, peer = %id, addr, "member address cannot be parsed; no messages to it")
                }
            }
        }
        self.peers.set_peers(&peers);
        self.known_membership = m;
    }

    fn transfer_leader(&mut self, to: NodeId, reply: oneshot::Sender<Reply>) {
        let status = self.raft.status();
        if !self.raft.membership().is_voter(to) {
            let _ = reply.send(Reply::error(format!("ERR node {to} is not a voting member")));
        } else if status.leader == Some(to) {
            let _ = reply.send(Reply::ok());
        } else if status.leader.is_none() {
            let msg = "CLUSTERDOWN no leader: the cluster cannot reach a quorum";
            let _ = reply.send(Reply::error(msg));
        } else {
            info!(node = %self.id, to = %to, leader = ?status.leader.map(|l| l.0), "leadership transfer requested");
            self.raft.step(Input::TransferLeader { to });
            let deadline = Instant::now() + self.tuning.request_timeout;
            self.transfers.push((to, deadline, reply));
        }
    }

    /// Keeps the deadline index in step with applied mutations.
    fn note_deadlines(&mut self, mutations: &[Mutation]) {
        for m in mutations {
            match m {
                Mutation::Put(k, v) => {
                    let new = kv::Record::deadline_of(v);
                    let old = match new {
                        Some(t) => self.key_deadlines.insert(k.clone(), t),
                        None => self.key_deadlines.remove(k),
                    };
                    if let Some(old) = old {
                        self.deadlines_by_time.remove(&(old, k.clone()));
                    }
                    if let Some(t) = new {
                        self.deadlines_by_time.insert((t, k.clone()));
                    }
                }
                Mutation::Delete(k) => {
                    if let Some(old) = self.key_deadlines.remove(k) {
                        self.deadlines_by_time.remove(&(old, k.clone()));
                    }
                }
                Mutation::Clear => {
                    self.key_deadlines.clear();
                    self.deadlines_by_time.clear();
                }
                Mutation::Session(..) | Mutation::Membership(_) => {}
            }
        }
    }

    /// Rebuilds the deadline index from the applied state (at start, after a snapshot).
    pub fn rebuild_deadlines(&mut self) -> Result<(), StorageError> {
        self.key_deadlines.clear();
        self.deadlines_by_time.clear();
        let mut reader = self.storage.snapshot_reader()?;
        loop {
            let items = reader.next_chunk(1 << 20)?;
            if items.is_empty() {
                return Ok(());
            }
            let puts: Vec<Mutation> = items
                .into_iter()
                .filter_map(|i| match i {
                    SnapshotItem::Kv(k, v) if kv::Record::deadline_of(&v).is_some() => {
                        Some(Mutation::Put(k, v))
                    }
                    _ => None,
                })
                .collect();
            self.note_deadlines(&puts);
        }
    }

    /// The leader deletes expired keys through the log, and keeps the log's time fresh while
    /// keys with a deadline exist, one sweep entry at a time.
    fn maybe_sweep(&mut self) {
        if self.sweep.is_some_and(|id| self.writes.contains_key(&id)) {
            return;
        }
        self.sweep = None;
        if self.raft.status().role != Role::Leader || self.deadlines_by_time.is_empty() {
            return;
        }
        let now = (self.wall_clock)();
        // At most SWEEP_KEYS_MAX keys, and no more key bytes than one proposal may carry.
        let mut bytes = 0;
        let keys: Vec<Key> = self
            .deadlines_by_time
            .iter()
            .take_while(|(t, _)| *t < now)
            .take(SWEEP_KEYS_MAX)
            .take_while(|(_, k)| {
                bytes += k.len();
                bytes <= self.proposal_bytes_max / 2
            })
            .map(|(_, k)| k.clone())
            .collect();
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
        self.writes.insert(id, PendingWrite { data, reply, resubmitted: false, membership: None });
        self.deadlines.push_back((Instant::now() + self.tuning.request_timeout, id));
        self.sweep = Some(id);
    }

    fn on_tick(&mut self) {
        self.maybe_promote_learner();
        self.maybe_sweep();
        if !self.transfers.is_empty() {
            let now = Instant::now();
            let (late, waiting) =
                std::mem::take(&mut self.transfers).into_iter().partition(|(_, d, _)| *d <= now);
            self.transfers = waiting;
            for (to, _, reply) in late {
                let msg = format!("ERR leadership transfer to node {to} did not finish in time (is it running and caught up?)");
                let _ = reply.send(Reply::error(msg));
            }
        }
        if self.outgoing.active() > 0 {
            match self.leader_term() {
                Some(term) => self.outgoing.on_tick(&self.peers, term),
                None => self.outgoing.clear(),
            }
        }
        let now = Instant::now();
        while let Some(&(deadline, id)) = self.deadlines.front() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_front();
            let no_leader = self.raft.status().leader.is_none();
            if let Some(w) = self.writes.remove(&id) {
                // Whatever happened, the write was handed to consensus: it may still commit.
                let msg = if no_leader {
                    "CLUSTERDOWN no leader: the cluster cannot reach a quorum; the write may or may not have been applied"
                } else {
                    "TIMEOUT the write was not confirmed in time; it may or may not have been applied"
                };
                let _ = w.reply.send(Reply::error(msg));
            }
            if let Some(r) = self.take_read(id) {
                let msg = if no_leader {
                    "CLUSTERDOWN no leader: the cluster cannot reach a quorum"
                } else {
                    "TIMEOUT the read could not be confirmed by a quorum in time"
                };
                let _ = r.reply.send(Reply::error(msg));
            }
        }
    }

    fn handle_ready(&mut self) -> Result<(), StorageError> {
        // Reads that timed out may have held up ready ones.
        self.release_reads()?;
        for _ in 0..READY_ROUNDS_MAX {
            let rd = self.raft.ready();
            if rd.is_empty() {
                break;
            }
            self.handle_one_ready(rd)?;
        }
        Ok(())
    }

    fn handle_one_ready(&mut self, rd: Ready) -> Result<(), StorageError> {
        let Ready {
            install_snapshot,
            hard_state,
            append,
            messages,
            committed,
            compact,
            send_snapshots,
            snapshot_acks,
            snapshot_chunks,
            reads,
            rejected,
        } = rd;
        // The transport must know a member the log just added before messages go to it.
        self.follow_membership();
        // 0. A received snapshot replaces the state machine and the log, durably.
        if let Some(meta) = install_snapshot {
            self.storage.install_snapshot(meta)?;
            self.durable.log_replaced();
            self.sessions.clear();
            info!(node = %self.id, index = %meta.index, term = %meta.term, "snapshot installed");
            self.applied = meta.index;
            self.applied_time = meta.time;
            self.rebuild_deadlines()?;
            self.settle_writes_in_snapshot()?;
            if let Some(m) = self.storage.membership()? {
                self.raft.step(Input::SnapshotMembership(m));
            }
        }
        // 1. Written now, durable once the sync task syncs it (`on_synced`).
        if hard_state.is_some() || append.is_some() {
            let append_ref = append.as_ref().map(|(from, e)| (*from, e.as_slice()));
            self.storage.write_log(hard_state, append_ref)?;
            let appended = append
                .as_ref()
                .map(|(from, e)| (*from, e.last().map(|last| (last.index, last.term))));
            self.durable.wrote(hard_state.is_some(), appended);
        }
        // 2. Messages: a leader's leave before its own entries are durable (thesis §10.2.1; it
        // counts itself in a quorum only once they are), though not before its term and vote
        // are; any other node's wait for every write before them, since they may acknowledge
        // what those writes hold (`Durability::gate`).
        let leader = self.raft.status().role == Role::Leader;
        let planted =
            planted::active(self.raft.config().planted, PlantedBug::AckBeforeSyncCompletes);
        let now = self.durable.gate(messages, leader, planted);
        self.send_messages(now);
        // 3. Apply, then compact the log the state machine now stands for, then stream that
        // state to followers that need it.
        let mut batch = ApplyBatch::default();
        for entry in committed {
            self.apply(&entry, &mut batch)?;
        }
        if !batch.entries.is_empty() {
            self.storage.apply_batch(&batch.entries)?;
        }
        for (reply, r) in batch.replies {
            let _ = reply.send(r);
        }
        if let Some(meta) = compact {
            self.storage.compact(meta)?;
            debug!(node = %self.id, index = %meta.index, "log compacted");
        }
        // Only a leader streams, stamped with its term: a node that stepped down in this batch
        // (the core gathered these while it led) would send chunks under the new term, which
        // the receiver takes for another leader of that term.
        match self.leader_term() {
            Some(term) => {
                for (to, meta) in send_snapshots {
                    self.outgoing.start(&self.storage, &self.peers, self.id, term, to, meta)?;
                }
                for ack in snapshot_acks {
                    self.outgoing.on_ack(&self.peers, term, ack)?;
                }
            }
            None => self.outgoing.clear(),
        }
        for chunk in snapshot_chunks {
            if self.incoming.on_chunk(&mut self.storage, &mut self.raft, chunk)? {
                // A snapshot is complete and its install comes with the next ready: later
                // chunks (resends, or a newer transfer starting over) would change what is
                // staged under it. They are dropped; their senders resend or start over.
                break;
            }
        }
        // 4. Reads, served once applied far enough.
        for r in reads {
            if r.index <= self.applied {
                self.serve_read(r.id)?;
            } else {
                self.reads_awaiting_apply.entry(r.index).or_default().push(r.id);
            }
        }
        self.serve_applied_reads()?;
        for (id, why) in rejected {
            match why {
                Rejection::NoLeader | Rejection::LeadershipLost | Rejection::Transferring => {
                    self.awaiting_leader.push(id)
                }
                Rejection::MembershipInvalid => {
                    // A resubmitted change may be refused because its first copy took effect:
                    // it stays pending until that copy applies here, or its deadline.
                    if self.writes.get(&id).is_some_and(|w| !w.resubmitted) {
                        let w = self.writes.remove(&id).expect("checked");
                        let msg = "ERR the membership change does not apply to the cluster's current membership";
                        let _ = w.reply.send(Reply::error(msg));
                    }
                }
                Rejection::MembershipChangePending => {
                    if self.writes.get(&id).is_some_and(|w| !w.resubmitted) {
                        let w = self.writes.remove(&id).expect("checked");
                        let msg = "BUSY another membership change is in progress; retry later";
                        let _ = w.reply.send(Reply::error(msg));
                    }
                }
                Rejection::Busy => {
                    let msg = "BUSY too many requests in flight; retry later";
                    // A resubmitted write may already be in the log: it stays pending until it
                    // applies or its deadline gives the indeterminate answer.
                    if self.writes.get(&id).is_some_and(|w| !w.resubmitted) {
                        let w = self.writes.remove(&id).expect("checked");
                        let _ = w.reply.send(Reply::error(msg));
                    }
                    if let Some(r) = self.take_read(id) {
                        let _ = r.reply.send(Reply::error(msg));
                    }
                }
            }
        }
        Ok(())
    }

    /// The term this node leads in, if it leads.
    fn leader_term(&self) -> Option<raft_kv_core::Term> {
        let s = self.raft.status();
        (s.role == Role::Leader).then_some(s.term)
    }

    fn send_messages(&mut self, messages: Vec<Message>) {
        for m in messages {
            debug!(node = %self.id, to = %m.to, term = %m.term, kind = m.body.name(), "send");
            self.peers.send(m);
        }
    }

    /// The sync task made every write up to `write` durable: the core learns how far its log
    /// is, and the messages that waited for it leave.
    fn on_synced(&mut self, write: u64) {
        let synced = self.durable.synced(write);
        for (index, term) in synced.persisted {
            self.raft.step(Input::Persisted { index, term });
        }
        self.send_messages(synced.released);
    }

    /// The node skipped applying the entries a snapshot covers, so it cannot tell which of its
    /// pending writes they held: those up to the last request of this run the snapshot's
    /// session records were applied or overtaken, and get an indeterminate answer. Later ones
    /// are still ahead in the log or not in it, and stay pending.
    fn settle_writes_in_snapshot(&mut self) -> Result<(), StorageError> {
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

    /// The applied session of `origin`, from the cache or storage.
    fn session(&mut self, origin: u64) -> Result<Option<kv::Session>, StorageError> {
        if let Some(s) = self.sessions.get(&origin) {
            return Ok(*s);
        }
        let s = self.storage.session(origin)?;
        self.sessions.insert(origin, s);
        Ok(s)
    }

    /// Applies `entry` into `batch`, which the caller writes.
    fn apply(
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
                                    let read = Applied(&self.storage, Some(&*batch));
                                    let (m, r) = kv::apply(command, &read, entry.time)?;
                                    (m, r.into())
                                }
                            };
                            mutations.extend(membership);
                            mutations.push(Mutation::Session(p.origin.0, session));
                            self.sessions.insert(p.origin.0, Some(session));
                            self.note_deadlines(&mutations);
                            batch.push(index, mutations);
                            if let Some(w) = mine.then(|| self.writes.remove(&p.request)).flatten()
                            {
                                batch.replies.push((w.reply, reply));
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

    fn serve_applied_reads(&mut self) -> Result<(), StorageError> {
        while let Some(entry) = self.reads_awaiting_apply.first_entry() {
            if *entry.key() > self.applied {
                break;
            }
            for id in entry.remove() {
                self.serve_read(id)?;
            }
        }
        Ok(())
    }

    /// The read may be served: it is confirmed and applied far enough. It is, once every read
    /// submitted before it was (`release_reads`).
    fn serve_read(&mut self, id: u64) -> Result<(), StorageError> {
        if self.reads.contains_key(&id) {
            self.reads_ready.insert(id);
        }
        self.release_reads()
    }

    /// Serves ready reads, each after the reads its connection sent before it. Reads are
    /// confirmed out of order (a lease answers at once while an earlier read waits for its
    /// round; a late answer comes from a deposed leader), and each is served from the state
    /// applied when it is served: out of order, a pipelined read could see an older state
    /// than the read before it.
    fn release_reads(&mut self) -> Result<(), StorageError> {
        let ready: Vec<u64> = self.reads_ready.iter().copied().collect();
        for id in ready {
            let Some(conn) = self.reads.get(&id).map(|r| r.conn) else {
                self.reads_ready.remove(&id);
                continue;
            };
            let first = self.conn_reads.get(&conn).and_then(|s| s.first()).copied();
            if first == Some(id) {
                let r = self.take_read(id).expect("listed");
                let reply = self.execute_read(&r.cmd)?;
                let _ = r.reply.send(reply);
            }
        }
        Ok(())
    }

    fn take_read(&mut self, id: u64) -> Option<PendingRead> {
        let r = self.reads.remove(&id)?;
        self.reads_ready.remove(&id);
        if let Some(ids) = self.conn_reads.get_mut(&r.conn) {
            ids.remove(&id);
            if ids.is_empty() {
                self.conn_reads.remove(&r.conn);
            }
        }
        Some(r)
    }

    /// The live record stored as `value` under `key`, as of the applied state (None if
    /// expired); a value that is no record is a storage error.
    fn live_record(&self, key: &[u8], value: &[u8]) -> Result<Option<kv::Record>, StorageError> {
        kv::live(Some(value.to_vec()), self.read_time()).map_err(|_| corrupt_value(key))
    }

    /// The time reads decide expiry at: the applied entry's (`Entry::time`), so every node
    /// agrees at every log position whatever its own clock.
    fn read_time(&self) -> u64 {
        if planted::active(self.raft.config().planted, PlantedBug::ExpiryByLocalClock) {
            return (self.wall_clock)();
        }
        self.applied_time
    }

    fn execute_read(&mut self, cmd: &ReadCommand) -> Result<Reply, StorageError> {
        Ok(match cmd {
            ReadCommand::Scan { cursor, pattern, count, type_name } => {
                self.scan(*cursor, pattern.as_deref(), *count, type_name.as_deref())?
            }
            ReadCommand::RandomKey => {
                // From a random point of the key order to the end, then from the start: the
                // first live key.
                let mut probe = [0u8; 8];
                rand::Rng::fill(&mut self.rng, &mut probe);
                let mut found = Reply::Null;
                'search: for mut after in [Some(probe.to_vec()), None] {
                    loop {
                        let batch = self.storage.scan(after.as_deref(), 64)?;
                        for (k, v) in &batch {
                            if self.live_record(k, v)?.is_some() {
                                found = Reply::Bulk(Bytes::from(k.clone()));
                                break 'search;
                            }
                        }
                        match batch.last() {
                            Some((k, _)) if batch.len() == 64 => after = Some(k.clone()),
                            _ => break,
                        }
                    }
                }
                found
            }
            ReadCommand::Query(q) => {
                kv::query(q, &Applied(&self.storage, None), self.read_time())?.into()
            }
            ReadCommand::DbSize => Reply::Integer(self.storage.key_count()? as i64),
            ReadCommand::Keys(pattern) => {
                // The whole key space in batches, as SCAN walks it.
                let mut live = Vec::new();
                let mut after: Option<Key> = None;
                loop {
                    let batch = self.storage.scan(after.as_deref(), KEYS_BATCH)?;
                    for (k, v) in &batch {
                        if raft_kv_core::glob::matches(pattern, k)
                            && self.live_record(k, v)?.is_some()
                        {
                            live.push(Reply::Bulk(Bytes::from(k.clone())));
                        }
                    }
                    if live.len() > KEYS_RESULT_MAX {
                        break Reply::error(format!("ERR KEYS would return more than {KEYS_RESULT_MAX} keys; use a narrower pattern"));
                    }
                    match batch.last() {
                        Some((k, _)) if batch.len() == KEYS_BATCH => after = Some(k.clone()),
                        _ => break Reply::Array(live),
                    }
                }
            }
        })
    }

    /// One SCAN step: about `count` stored keys after where `cursor` stopped (0: the start),
    /// those live and matching returned, and the next cursor (0 at the end). Cursors are this
    /// node's: the key each stopped at is remembered (the newest `SCAN_CURSORS_MAX`; a cursor
    /// can be sent again), so a walk is stable however keys come and go, and returns every key
    /// that exists throughout.
    fn scan(
        &mut self,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: usize,
        type_name: Option<&str>,
    ) -> Result<Reply, StorageError> {
        let after = match cursor {
            0 => None,
            c => match self.scan_cursors.get(&c).cloned() {
                Some(k) => Some(k),
                None => return Ok(Reply::error("ERR invalid cursor")),
            },
        };
        let batch = self.storage.scan(after.as_deref(), count.min(SCAN_COUNT_MAX))?;
        let mut keys = Vec::new();
        for (k, v) in &batch {
            let Some(r) = self.live_record(k, v)? else { continue };
            if pattern.is_some_and(|p| !raft_kv_core::glob::matches(p, k))
                || type_name.is_some_and(|t| t != r.type_name())
            {
                continue;
            }
            keys.push(Reply::Bulk(Bytes::from(k.clone())));
        }
        let next = match batch.last() {
            Some((last, _)) if batch.len() == count.min(SCAN_COUNT_MAX) => {
                self.next_scan_cursor += 1;
                let id = (self.id.0 << 40) | (self.next_scan_cursor & ((1 << 40) - 1));
                self.scan_cursors.insert(id, last.clone());
                while self.scan_cursors.len() > SCAN_CURSORS_MAX {
                    self.scan_cursors.pop_first();
                }
                id
            }
            _ => 0,
        };
        Ok(Reply::Array(vec![Reply::Bulk(Bytes::from(next.to_string())), Reply::Array(keys)]))
    }

    /// INFO: `# Server`, `# Clients`, `# Raft` and `# Keyspace`, or the named ones.
    fn info(&self, sections: &[String]) -> Reply {
        let all = sections.is_empty()
            || sections.iter().any(|s| matches!(s.as_str(), "all" | "default" | "everything"));
        let wanted = |name: &str| all || sections.iter().any(|s| s == name);
        let mut out = String::new();
        if wanted("server") {
            out.push_str(&self.info.server);
            let uptime = self.info.started.elapsed().as_secs();
            out.push_str(&format!("uptime_in_seconds:{uptime}\r\n\r\n"));
        }
        if wanted("clients") {
            let connected = self.info.clients_max - self.info.client_slots.available_permits();
            out.push_str(&format!(
                "# Clients\r\nconnected_clients:{connected}\r\nmaxclients:{}\r\nblocked_clients:0\r\npending_requests:{}\r\n\r\n",
                self.info.clients_max,
                self.writes.len() + self.reads.len()
            ));
        }
        if wanted("raft") {
            out.push_str(&self.info_raft());
        }
        if wanted("keyspace") {
            let keys = match self.storage.key_count_estimate() {
                Ok(n) => n,
                Err(e) => {
                    warn!(node = %self.id, error = %e, "key count for INFO failed");
                    0
                }
            };
            out.push_str("# Keyspace\r\n");
            if keys > 0 {
                out.push_str(&format!("db0:keys={keys},expires=0,avg_ttl=0\r\n"));
            }
            out.push_str("\r\n");
        }
        Reply::Bulk(Bytes::from(out))
    }

    fn info_raft(&self) -> String {
        let Status {
            id,
            role,
            term,
            leader,
            commit_index,
            applied_index,
            last_index,
            snapshot_index,
        } = self.raft.status();
        let membership = self.raft.membership();
        let addr = |n: NodeId| match membership.addrs.get(&n) {
            Some(a) => a.clone(),
            None => self.info.raft_addrs.get(&n).map_or("?".into(), |a| a.to_string()),
        };
        let (leader_id, leader_addr) =
            leader.map_or(("none".to_string(), String::new()), |l| (l.to_string(), addr(l)));
        let cfg = self.raft.config();
        let mut out = format!(
            "# Raft\r\ncluster_id:{:x}\r\nnode_id:{id}\r\nrole:{}\r\nterm:{term}\r\nleader_id:{leader_id}\r\nleader_raft_addr:{leader_addr}\r\ncommit_index:{commit_index}\r\napplied_index:{applied_index}\r\nlast_log_index:{last_index}\r\nsnapshot_index:{snapshot_index}\r\nsnapshot_transfers_sending:{}\r\nread_mode:{}\r\nlease_remaining_ticks:{}\r\nmembers:{}\r\n",
            self.info.cluster_id,
            role.name(),
            self.outgoing.active(),
            if cfg.lease_ticks > 0 { "lease" } else { "readindex" },
            self.raft.lease_remaining(),
            membership.voters.len() + membership.learners.len(),
        );
        // The voters the cluster started with: a joining node starts from them too.
        let bootstrap: Vec<String> = cfg
            .voters
            .iter()
            .filter_map(|v| self.info.raft_addrs.get(v).map(|a| format!("{v}={a}")))
            .collect();
        out.push_str(&format!("bootstrap_voters:{}\r\n", bootstrap.join(",")));
        // One line per member, as Redis lists replicas: the leader knows how far each is.
        let followers = self.raft.followers();
        for (i, m) in membership.members().enumerate() {
            let role = if membership.is_voter(m) { "voter" } else { "learner" };
            let mut line = format!("member{i}:id={m},raft_addr={},role={role}", addr(m));
            if m == id {
                line.push_str(&format!(",match={last_index},lag=0,state=self"));
            } else if let Some(f) = followers.iter().find(|f| f.id == m) {
                let lag = last_index.0.saturating_sub(f.match_index.0);
                line.push_str(&format!(",match={},lag={lag},state={}", f.match_index, f.state));
            }
            out.push_str(&line);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out
    }
}
