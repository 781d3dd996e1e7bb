//! The task that owns one Raft node: it collects every ready input (ticks, peer messages,
//! client requests, finished syncs), steps the core with all of them, then handles the output
//! batch once: one storage write for the whole batch, synced beside the task (group commit,
//! see `durability`), messages sent, committed entries applied, replies released. Everything
//! else talks to it through bounded channels.
//!
//! Where each part lives: this module runs the loop, takes client requests and hands each
//! `Ready` out; when a log write is durable and which messages wait for it is
//! `crate::durability`; how a committed entry changes the state machine is `apply`; where a
//! read waits and is served is `reads`; key expiry is `expiry`; membership, leadership
//! transfer, INFO and CONFIG are `admin`.

mod admin;
mod apply;
mod backup;
mod blocking;
mod expiry;
mod keymap;
mod reads;

use apply::ApplyBatch;
use blocking::{Block, Blocked};
use expiry::Expiry;
pub use expiry::StartDeadlines;
use reads::{PendingRead, ReadQueue};

use crate::codec::{self, Proposal};
use crate::command::{AdminCommand, ReadCommand, Reply};
use crate::durability::Durability;
use crate::metrics::Metrics;
use crate::snapshot::{Incoming, Outgoing, SnapshotTuning};
use crate::storage::{Storage, StorageError};
use crate::transport::PeerSender;
use bytes::Bytes;
use raft_kv_core::kv::{self, Key, KvRead, Mutation, Value};
use raft_kv_core::{
    planted, Input, LogIndex, Membership, MembershipChange, Message, MessageBody, NodeId,
    PlantedBug, RaftNode, Ready, Rejection, Role, Status,
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
    /// The connection's budget of replies not yet taken by its writer: a read served while
    /// it is spent is answered with an error instead of its (maybe large) value.
    pub output: Option<Arc<OutputBudget>>,
}

/// Bytes of replies a client connection has been given and its writer has not yet taken
/// (`client::write_replies`). The node charges each read's reply; the writer gives them back.
#[derive(Debug)]
pub struct OutputBudget {
    held: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl OutputBudget {
    pub fn new(max: usize) -> OutputBudget {
        OutputBudget { held: 0.into(), max }
    }

    pub fn spent(&self) -> bool {
        self.held.load(std::sync::atomic::Ordering::Relaxed) > self.max
    }

    pub fn charge(&self, bytes: usize) {
        self.held.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// Gives back `bytes` (never below zero: a reply not charged may be given back).
    pub fn release(&self, bytes: usize) {
        let _ = self.held.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |h| Some(h.saturating_sub(bytes)),
        );
    }
}

pub enum RequestKind {
    Write(kv::Command),
    /// A blocking pop (`blocking`): `timeout_ms` 0 waits for ever.
    Blocking {
        command: kv::Command,
        timeout_ms: u64,
    },
    Read(ReadCommand),
    Admin(AdminCommand),
}

/// Rounds of `ready` handled per loop iteration; each round can only be caused by the previous
/// one (a persisted ack that commits, a commit that releases reads), so a few suffice.
const READY_ROUNDS_MAX: usize = 8;

/// Storage work on the node task this long holds up heartbeats, elections and every client of
/// the node: logged with the step that took it.
const SLOW_STEP: Duration = Duration::from_millis(200);

/// What woke the node task.
enum Wake {
    Tick,
    Synced(Option<Result<u64, StorageError>>),
    Peer(Option<Message>),
    Client(Option<ClientRequest>),
}

/// Where one turn of the node task's loop spent its time.
struct Took {
    began: Instant,
    last: Instant,
    steps: [(&'static str, Duration); 6],
    len: usize,
}

impl Took {
    fn start() -> Took {
        let now = Instant::now();
        Took { began: now, last: now, steps: [("", Duration::ZERO); 6], len: 0 }
    }

    fn mark(&mut self, step: &'static str) {
        let now = Instant::now();
        if let Some(slot) = self.steps.get_mut(self.len) {
            *slot = (step, now - self.last);
            self.len += 1;
        }
        self.last = now;
    }

    fn total(&self) -> Duration {
        self.last - self.began
    }
}

impl std::fmt::Display for Took {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (step, d)) in self.steps[..self.len].iter().enumerate() {
            write!(f, "{}{step} {} ms", if i == 0 { "" } else { ", " }, d.as_millis())?;
        }
        Ok(())
    }
}

/// Overdue ticks stepped at once after the task was busy or stalled, as a fraction of the
/// shortest election timeout: half of it. The rest of a longer stall is not counted. A stall
/// of this node's own task is not silence of its leader (the heartbeats sent meanwhile wait
/// in the channel, read after the ticks); counted whole, a follower that spent a second on
/// its own work campaigned the moment it resumed, and the other follower, held up by the same
/// entries, granted it: three leader changes in one bulk load. Nothing safe rests on tick
/// counts alone: a lease and the promise behind it are also judged by the clock (`step_timed`).
const TICK_CATCH_UP_DIVISOR: u32 = 2;

pub(super) const CLUSTERDOWN_NO_LEADER: &str =
    "CLUSTERDOWN no leader: the cluster cannot reach a quorum";
const CLUSTERDOWN_MAYBE_APPLIED: &str =
    "CLUSTERDOWN no leader: the cluster cannot reach a quorum; the write may or may not have been applied";
/// The one CLUSTERDOWN after which a client knows its write did not happen.
const CLUSTERDOWN_NOT_APPLIED: &str =
    "CLUSTERDOWN no leader: the cluster cannot reach a quorum; the write was not applied";

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
    /// While its disk has less free than this (`Storage::free_bytes`), the node takes no new
    /// log entries: it answers client writes MISCONF and drops appends and snapshot chunks
    /// (the leader retries them as after a lost message). 0: no reserve.
    pub disk_reserve_bytes: u64,
    /// A read that walks a collection of at least this many elements (`kv::Query::walks`) is
    /// served off the node task, from a view of the applied state taken when it is served
    /// (`Storage::state_view`): a long walk holding the task would stop heartbeats, and a
    /// leader that misses them is deposed. The simulation sets it low, so the path runs there.
    pub offload_elements_min: u64,
    /// A turn of the node task takes no further round of `ready` (committed entries to apply,
    /// messages to send) once its rounds took this long; the rest waits for the next turn, a
    /// tick away at most, after the ticks and messages that came meanwhile. Eight rounds of
    /// 1024 collection writes each held a follower's task 250-420 ms in a bulk load. The
    /// simulation sets it to zero for half its seeds (one round per turn), as its clock does
    /// not move while the task works.
    pub ready_turn_budget: Duration,
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
            disk_reserve_bytes: 0,
            offload_elements_min: 4096,
            ready_turn_budget: Duration::from_millis(50),
        }
    }
}

struct PendingWrite {
    data: Vec<u8>,
    /// Submitted to the core more than once (after a leader change or a missing leader): an
    /// earlier copy may be in some log, so any failure is indeterminate.
    resubmitted: bool,
    /// A membership change (proposed with `Input::ProposeMembership`).
    /// With the membership version it was asked against, the same for every re-submission.
    membership: Option<(MembershipChange, (u64, raft_kv_core::Term))>,
    reply: oneshot::Sender<Reply>,
    /// A blocking pop: parked instead of answered when it finds nothing to pop.
    block: Option<Block>,
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
    /// Blocking pops waiting for something to pop.
    blocked: Blocked,
    /// Reads until they are served (`reads`).
    reads: ReadQueue,
    /// Requests refused for want of a leader, re-submitted once one is known.
    awaiting_leader: Vec<u64>,
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
    /// Since when this node has known no leader (None: it knows one).
    leaderless_since: Option<Instant>,
    /// How many probe-learned addresses the transport was given (`follow_membership`).
    known_probe_addrs: usize,
    wall_clock: WallClock,
    mono_clock: MonoClock,
    /// Time of the last applied entry (`Entry::time`): expiry is decided at it.
    applied_time: u64,
    /// Keys with a deadline: the leader sweeps them (`expiry`).
    expiry: Expiry,
    /// What CONFIG GET reports (CONFIG SET changes it): this node's only.
    config: BTreeMap<String, Bytes>,
    /// The last `HardState::recovering` written, to log when it changes.
    recovering: bool,
    /// The free bytes of the disk while they are under the reserve (`NodeTuning::
    /// disk_reserve_bytes`): the node takes no new log entries.
    disk_low: Option<u64>,
    /// SCAN cursors handed out: where each walk stopped.
    scan_cursors: BTreeMap<u64, Key>,
    /// HSCAN/SSCAN/ZSCAN cursors: the element record where each walk stopped.
    elem_cursors: BTreeMap<u64, Vec<u8>>,
    /// RANDOMKEY's choices: seeded from the node and its run, so a simulation replays them.
    rng: rand::rngs::StdRng,
    next_scan_cursor: u64,
    metrics: Arc<Metrics>,
    /// Ticks since start: the gauges are set every `GAUGE_TICKS`.
    ticks: u64,
    /// The followers whose lag the metrics show (while this node leads).
    lagging_peers: Vec<u64>,
    /// Backups being read (RAFT.BACKUP), by id: each a view of the state where it started.
    backups: BTreeMap<u64, backup::Backup>,
    next_backup: u64,
    /// Storage errors met by reads served off the task (`serve_off_task`): they stop the
    /// node as errors met on it do. The receiver is taken by `run`.
    /// One error is enough to stop: later ones are dropped (`try_send`), so it holds one.
    offload_failed: (mpsc::Sender<StorageError>, Option<mpsc::Receiver<StorageError>>),
}

/// The node's gauges (`metrics`) are refreshed every this many ticks (100 ms by default).
const GAUGE_TICKS: u64 = 10;

/// `/readyz`: a node whose applied index is more than this many entries behind its commit
/// index is not ready.
pub const READY_LAG_MAX: u64 = 1000;

/// The first request id of run `incarnation`. Ids differ between runs too (each run counts
/// up from its own 2^40-wide range, repeating only after 2^24 runs, hours apart when
/// incarnations are milliseconds), so a reply to an earlier run's request (a
/// ReadIndexResponse still in flight) never matches a new one.
fn first_request(incarnation: u64) -> u64 {
    (incarnation & ((1 << 24) - 1)) << 40
}

/// A callback on every change of a node's role, term or leader.
pub type StatusHook = Arc<dyn Fn(&Status) + Send + Sync>;

/// What a node task starts from besides its Raft node, storage and peers.
/// A wall clock: milliseconds since the Unix epoch.
pub type WallClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// A monotonic clock: microseconds from any origin, never decreasing.
pub type MonoClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The process's monotonic clock, counted from its first call.
pub fn system_mono_clock() -> MonoClock {
    let origin = Instant::now();
    Arc::new(move || origin.elapsed().as_micros() as u64)
}

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
    /// Judges leader leases (`Input::Now`).
    pub mono_clock: MonoClock,
    /// Every applied key's deadline, read at start.
    pub deadlines: StartDeadlines,
    pub metrics: Arc<Metrics>,
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
            mono_clock,
            deadlines,
            metrics,
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
            next_request: first_request(incarnation),
            proposal_bytes_max,
            writes: BTreeMap::new(),
            blocked: Blocked::default(),
            reads: ReadQueue::default(),
            awaiting_leader: Vec::new(),
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
            leaderless_since: None,
            known_probe_addrs: 0,
            wall_clock,
            mono_clock,
            applied_time,
            expiry: deadlines.into_expiry(),
            config: crate::command::CONFIG_DEFAULTS
                .iter()
                .map(|(k, v)| (k.to_string(), Bytes::from_static(v.as_bytes())))
                .collect(),
            recovering: false,
            disk_low: None,
            scan_cursors: BTreeMap::new(),
            elem_cursors: BTreeMap::new(),
            rng: rand::SeedableRng::seed_from_u64(id.0 ^ incarnation.rotate_left(32)),
            next_scan_cursor: 0,
            metrics,
            ticks: 0,
            lagging_peers: Vec::new(),
            backups: BTreeMap::new(),
            next_backup: 1,
            offload_failed: {
                let (tx, rx) = mpsc::channel(1);
                (tx, Some(rx))
            },
            tuning,
        }
    }

    /// Steps `input` right after the monotonic clock's reading: a lease is judged at the
    /// moment of the read (or of the message that may confirm or serve one), never by a tick
    /// count that lags after a stall (issue 13.4).
    fn step_timed(&mut self, input: Input) {
        self.raft.step(Input::Now((self.mono_clock)()));
        self.raft.step(input);
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
        // The last turn was reported slow: the ticks it made overdue are not a second stall.
        let mut reported = false;
        let mut offload_failed = self.offload_failed.1.take().expect("run once");
        loop {
            // `biased`: tokio's random branch order draws from a thread-local RNG that outlives
            // a simulation run, which would make runs of the same seed differ. Each branch
            // first tells the core the time: entries appended now are stamped with it.
            let wake = tokio::select! {
                biased;
                _ = tokio::time::sleep_until(next_tick) => Wake::Tick,
                Some(e) = offload_failed.recv() => return Err(e),
                s = synced.recv() => Wake::Synced(s),
                // While too many messages wait for a sync, input waits in the channels.
                m = peer_rx.recv(), if !self.durable.full() => Wake::Peer(m),
                c = client_rx.recv(), if !self.durable.full() => Wake::Client(c),
            };
            let mut took = Took::start();
            match wake {
                Wake::Tick => {
                    next_tick += tick_period();
                    self.raft.step(Input::Clock((self.wall_clock)()));
                    self.step_timed(Input::Tick);
                    self.on_tick();
                }
                Wake::Synced(Some(write)) => {
                    self.raft.step(Input::Clock((self.wall_clock)()));
                    self.on_synced(write?);
                }
                Wake::Synced(None) => {
                    return Err(StorageError::Io("the WAL sync task stopped".into()))
                }
                Wake::Peer(Some(m)) => {
                    self.raft.step(Input::Clock((self.wall_clock)()));
                    self.on_message(m);
                }
                Wake::Client(Some(c)) => {
                    self.raft.step(Input::Clock((self.wall_clock)()));
                    self.on_client(c);
                }
                Wake::Peer(None) | Wake::Client(None) => return Ok(()),
            }
            took.mark("input");
            // Ticks that fell due while the task was busy come first, so elections and
            // heartbeats keep time; a stall's are counted up to a bound.
            let catch_up = (self.raft.config().election_ticks / TICK_CATCH_UP_DIVISOR).max(1);
            let mut overdue = 0;
            while Instant::now() >= next_tick {
                next_tick += tick_period();
                overdue += 1;
            }
            if overdue > catch_up {
                raft_kv_core::reach::hit(raft_kv_core::reach::Path::StallTicksDropped);
            }
            for _ in 0..overdue.min(catch_up) {
                self.step_timed(Input::Tick);
                self.on_tick();
            }
            took.mark("ticks");
            // Group commit: everything already queued joins this batch.
            for _ in 0..self.tuning.inputs_per_batch_max {
                if self.durable.full() {
                    break;
                }
                let mut took = false;
                if let Ok(m) = peer_rx.try_recv() {
                    self.on_message(m);
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
            took.mark("batch");
            self.handle_ready()?;
            took.mark("ready");
            if self.observe_status() {
                self.handle_ready()?;
            }
            if self.blocked.has_woken() {
                self.propose_woken();
                self.handle_ready()?;
            }
            took.mark("after");
            // A slow turn, or a stall between turns (the thread busy with other tasks, or not
            // scheduled): heartbeats and elections waited for it.
            let slow = took.total() >= SLOW_STEP;
            if slow || (overdue > catch_up && !reported) {
                warn!(node = %self.id, took_ms = took.total().as_millis() as u64, steps = %took, overdue_ticks = overdue, "the node task was held up");
            }
            reported = slow;
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
            info!(node = %self.id, term = %s.term, role = s.role.name(), leader = ?s.leader.map(|l| l.0), commit = %s.commit_index, "raft state changed");
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
            self.refresh_gauges();
        }
        let Some(leader) = s.leader else {
            self.leaderless_since.get_or_insert_with(Instant::now);
            return false;
        };
        self.leaderless_since = None;
        let mut ids = if self.last_leader != Some((s.term, leader)) {
            self.last_leader = Some((s.term, leader));
            self.metrics.leader_changes.inc();
            self.awaiting_leader.clear();
            self.writes.keys().copied().chain(self.reads.ids()).collect()
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
                    Some((change, based_on)) => Input::ProposeMembership {
                        id,
                        change: change.clone(),
                        data,
                        based_on: *based_on,
                    },
                    None => Input::Propose { id, data },
                });
                resubmitted = true;
            } else if self.reads.contains(id) {
                self.step_timed(Input::Read { id });
                self.reads.asked(id, self.raft.lease_remaining() > 0);
                resubmitted = true;
            }
        }
        resubmitted
    }

    /// Steps a peer's message, unless it would add to a disk under its reserve.
    fn on_message(&mut self, m: Message) {
        if self.disk_low.is_some() {
            let grows_log = match &m.body {
                MessageBody::AppendEntries { entries, .. } => !entries.is_empty(),
                MessageBody::SnapshotChunk { .. } | MessageBody::Propose { .. } => true,
                _ => false,
            };
            if grows_log {
                return;
            }
        }
        self.step_timed(Input::Message(m));
    }

    /// Sets the gauges from the node's state, judges its readiness (`/readyz`) and tells
    /// `/livez` the task is alive.
    fn refresh_gauges(&mut self) {
        let m = self.metrics.clone();
        m.sample_ops();
        let s = self.raft.status();
        let leader = s.role == Role::Leader;
        let member = self.raft.membership().contains(self.id);
        m.beat();
        m.has_leader.set(s.leader.is_some() as i64);
        m.is_leader.set(leader as i64);
        m.term.set(s.term.0 as i64);
        m.is_member.set(member as i64);
        m.commit_index.set(s.commit_index.0 as i64);
        m.applied_index.set(self.applied.0 as i64);
        m.last_index.set(s.last_index.0 as i64);
        m.proposals_pending.set(self.writes.len() as i64);
        if !leader {
            m.follower_lag.clear();
        } else {
            // Set in place (a scrape never sees the series missing); a follower gone from the
            // membership loses its series.
            let followers = self.raft.followers();
            let gone: Vec<u64> = self
                .lagging_peers
                .iter()
                .copied()
                .filter(|p| !followers.iter().any(|f| f.id.0 == *p))
                .collect();
            for p in gone {
                m.follower_lag.remove(&crate::metrics::Peer { peer: p.to_string() });
            }
            self.lagging_peers = followers.iter().map(|f| f.id.0).collect();
            for f in followers {
                let lag = s.last_index.0.saturating_sub(f.match_index.0);
                m.follower_lag
                    .get_or_create(&crate::metrics::Peer { peer: f.id.0.to_string() })
                    .set(lag as i64);
            }
        }
        let behind = s.commit_index.0.saturating_sub(self.applied.0);
        let not_ready = if !member {
            Some("not a member of the cluster".to_string())
        } else if s.leader.is_none() {
            Some("no leader".to_string())
        } else if behind > READY_LAG_MAX {
            Some(format!(
                "applied index {} is {behind} entries behind commit {}",
                self.applied, s.commit_index
            ))
        } else {
            None
        };
        m.set_health(not_ready);
        if self.ticks % (GAUGE_TICKS * 10) == 1 {
            for (cf, bytes) in self.storage.sizes() {
                m.storage_bytes
                    .get_or_create(&crate::metrics::ColumnFamily { cf })
                    .set(bytes as i64);
            }
            if let Ok(keys) = self.storage.key_count_estimate() {
                m.storage_keys.set(keys as i64);
            }
        }
    }

    /// Checks the disk's free space against the reserve; logs when it crosses it.
    fn check_disk(&mut self) {
        let reserve = self.tuning.disk_reserve_bytes;
        if reserve == 0 {
            return;
        }
        let low = self.storage.free_bytes().filter(|free| *free < reserve);
        match (self.disk_low, low) {
            (None, Some(free)) => {
                warn!(node = %self.id, free_bytes = free, reserve_bytes = reserve,
                "disk nearly full: taking no writes and no new log entries until space is freed")
            }
            (Some(_), None) => {
                info!(node = %self.id, "disk space back above the reserve: taking writes again")
            }
            _ => {}
        }
        self.disk_low = low;
    }

    fn on_client(&mut self, mut c: ClientRequest) {
        // A blocking pop goes as a write that remembers how to wait.
        let mut block = None;
        if let RequestKind::Blocking { command, timeout_ms } = c.kind {
            let deadline =
                (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms));
            block =
                Some(Block { command: command.clone(), deadline, woken: false, client: c.conn });
            c.kind = RequestKind::Write(command);
        }
        let waiting = self.writes.len() + self.reads.len() + self.blocked.len();
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
        if self.leaderless_too_long() {
            // Not handed to consensus: the client knows for sure that nothing happened.
            let msg = match c.kind {
                RequestKind::Read(_) => Some(CLUSTERDOWN_NO_LEADER),
                RequestKind::Write(_) => Some(CLUSTERDOWN_NOT_APPLIED),
                _ => None,
            };
            if let Some(msg) = msg {
                let _ = c.reply.send(Reply::error(msg));
                return;
            }
        }
        let id = self.next_request;
        self.next_request += 1;
        match c.kind {
            RequestKind::Admin(cmd) => {
                self.on_admin(id, cmd, c.reply);
                return;
            }
            RequestKind::Blocking { .. } => unreachable!("turned into a write above"),
            RequestKind::Write(cmd) => {
                if let Some(free) = self.disk_low {
                    let msg = format!(
                        "MISCONF this node's disk is nearly full ({free} bytes free, under the reserve of {} bytes): it takes no writes until space is freed",
                        self.tuning.disk_reserve_bytes
                    );
                    let planted = self.raft.config().planted;
                    if planted::active(planted, PlantedBug::DiskFullWriteProposedAnyway) {
                        let data = codec::encode(&Proposal {
                            origin: self.id,
                            incarnation: self.incarnation,
                            request: id,
                            command: cmd,
                        });
                        self.raft.step(Input::Propose { id, data });
                    }
                    let _ = c.reply.send(Reply::error(msg));
                    return;
                }
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
                let w = PendingWrite {
                    data,
                    reply: c.reply,
                    resubmitted: false,
                    membership: None,
                    block,
                };
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
                self.step_timed(Input::Read { id });
                let read = PendingRead {
                    conn: c.conn,
                    cmd,
                    reply: c.reply,
                    output: c.output,
                    arrived: Instant::now(),
                    // The core serves a read from the lease exactly while it holds one.
                    lease: self.raft.lease_remaining() > 0,
                };
                self.reads.insert(id, read);
            }
        }
        self.deadlines.push_back((Instant::now() + self.tuning.request_timeout, id));
    }

    fn on_tick(&mut self) {
        self.ticks += 1;
        if self.ticks % GAUGE_TICKS == 1 {
            self.refresh_gauges();
        }
        self.blocked.expire(Instant::now());
        self.expire_backups();
        self.check_disk();
        self.fail_fast_without_leader();
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
                    CLUSTERDOWN_MAYBE_APPLIED
                } else {
                    "TIMEOUT the write was not confirmed in time; it may or may not have been applied"
                };
                let _ = w.reply.send(Reply::error(msg));
            }
            if let Some(r) = self.reads.take(id) {
                let msg = if no_leader {
                    CLUSTERDOWN_NO_LEADER
                } else {
                    "TIMEOUT the read could not be confirmed by a quorum in time"
                };
                let _ = r.reply.send(Reply::error(msg));
            }
        }
    }

    /// Requests wait for a leader through an election, but not for one that may never come:
    /// once this node has known none for a while (`leaderless_too_long`: cut off from the majority, or
    /// removed without hearing of it), every request it holds is answered CLUSTERDOWN at once
    /// (and new ones as they come, `on_client`), so clients try another node instead of
    /// waiting out their timeout here.
    fn fail_fast_without_leader(&mut self) {
        if !self.leaderless_too_long() || (self.writes.is_empty() && self.reads.len() == 0) {
            return;
        }
        self.awaiting_leader.clear();
        for (_, w) in std::mem::take(&mut self.writes) {
            // It may be in a log already, or forwarded to a leader before that one was lost.
            let _ = w.reply.send(Reply::error(CLUSTERDOWN_MAYBE_APPLIED));
        }
        let ids: Vec<u64> = self.reads.ids().collect();
        for id in ids {
            if let Some(r) = self.reads.take(id) {
                let _ = r.reply.send(Reply::error(CLUSTERDOWN_NO_LEADER));
            }
        }
    }

    /// This node has known no leader for half the request timeout, and at least two election
    /// timeouts: longer than an election takes, even on a loaded machine.
    fn leaderless_too_long(&self) -> bool {
        let elections = self.tuning.tick * self.raft.config().election_ticks * 2;
        let patience = elections.max(self.tuning.request_timeout / 2);
        self.leaderless_since.is_some_and(|since| since.elapsed() >= patience)
    }

    fn handle_ready(&mut self) -> Result<(), StorageError> {
        // Reads that timed out may have held up ready ones.
        self.release_reads()?;
        let began = Instant::now();
        for round in 0..READY_ROUNDS_MAX {
            if round > 0 && began.elapsed() >= self.tuning.ready_turn_budget {
                raft_kv_core::reach::hit(raft_kv_core::reach::Path::ReadyRoundsDeferred);
                break;
            }
            let rd = self.raft.ready();
            if rd.is_empty() {
                break;
            }
            self.handle_one_ready(rd)?;
        }
        Ok(())
    }

    fn note_slow(&self, step: &'static str, began: Instant) {
        let took = began.elapsed();
        if took >= SLOW_STEP {
            warn!(node = %self.id, step, took_ms = took.as_millis() as u64, "storage work held up the node task");
        }
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
            self.blocked.wake_all();
            self.durable.log_replaced();
            self.sessions.clear();
            info!(node = %self.id, index = %meta.index, term = %meta.term, "snapshot installed");
            self.metrics.snapshot_installs.inc();
            self.metrics.snapshot_installed_bytes.inc_by(self.incoming.take_received_bytes());
            self.applied = meta.index;
            self.applied_time = meta.time;
            self.rebuild_deadlines()?;
            self.settle_writes_in_snapshot()?;
            if let Some(m) = self.storage.membership()? {
                self.raft.step(Input::SnapshotMembership(m));
            }
        }
        if let Some(hs) = hard_state.filter(|hs| hs.recovering != self.recovering) {
            self.recovering = hs.recovering;
            if hs.recovering {
                warn!(node = %self.id, term = %hs.term, "this node started with nothing on disk in a cluster that has data (a wiped or new disk): it votes only for candidates at least as up-to-date as every voter was when it asked, and campaigns only with such a log itself");
            } else {
                info!(node = %self.id, term = %hs.term, "caught up with the leader after starting with nothing on disk; voting as usual");
            }
        }
        // 1. Written now, durable once the sync task syncs it (`on_synced`).
        if hard_state.is_some() || append.is_some() {
            let append_ref = append.as_ref().map(|(from, e)| (*from, e.as_slice()));
            let began = Instant::now();
            self.storage.write_log(hard_state, append_ref)?;
            self.note_slow("log write", began);
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
        let began = (!committed.is_empty()).then(Instant::now);
        self.metrics.proposals_committed.inc_by(committed.len() as u64);
        for entry in committed {
            self.apply(&entry, &mut batch)?;
        }
        if !batch.entries.is_empty() {
            self.storage.apply_batch(&batch.entries)?;
            self.metrics.proposals_applied.inc_by(batch.entries.len() as u64);
        }
        if let Some(t) = began {
            self.metrics.apply_seconds.observe(t.elapsed().as_secs_f64());
            self.note_slow("apply", t);
        }
        for (reply, r) in batch.replies {
            let _ = reply.send(r);
        }
        if let Some(meta) = compact {
            let began = Instant::now();
            self.storage.compact(meta)?;
            self.note_slow("log compaction", began);
            info!(node = %self.id, term = %meta.term, index = %meta.index, "log compacted: the applied state stands for the entries up to index");
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
                    if let Some(bytes) = self.outgoing.on_ack(&self.peers, term, ack)? {
                        self.metrics.snapshot_sends.inc();
                        self.metrics.snapshot_sent_bytes.inc_by(bytes);
                    }
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
            self.reads.confirmed(r.id, r.index, self.applied);
        }
        self.reads.applied(self.applied);
        self.release_reads()?;
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
                        let msg = "BUSY another membership change is in progress or took effect since; retry later";
                        let _ = w.reply.send(Reply::error(msg));
                    }
                }
                Rejection::Busy => {
                    let msg = "BUSY too many requests in flight; retry later";
                    // A resubmitted write may already be in the log: it stays pending until it
                    // applies or its deadline gives the indeterminate answer.
                    let planted =
                        planted::active(self.raft.config().planted, PlantedBug::BusyAfterResubmit);
                    if self.writes.get(&id).is_some_and(|w| !w.resubmitted || planted) {
                        let w = self.writes.remove(&id).expect("checked");
                        let _ = w.reply.send(Reply::error(msg));
                    }
                    if let Some(r) = self.reads.take(id) {
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
}
