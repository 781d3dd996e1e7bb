//! raft-kv's runtime: drives one sans-IO core node on tokio, or on madsim when built with
//! `--cfg madsim`. It owns timers, the peer transport, the storage boundary and the RESP front
//! end; the same code runs in production and in the simulation.

pub mod client;
pub mod codec;
pub mod command;
pub mod durability;
pub mod metrics;
pub mod node;
mod parse_coll;
pub mod peer_auth;
pub mod resp;
pub mod snapshot;
pub mod storage;
pub mod tls;
pub mod transport;

use client::ClientConfig;
use node::{NodeTask, NodeTuning, StatusHook};
use raft_kv_core::{NodeId, RaftNode};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use storage::{Storage, StorageError};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, info_span, Instrument};
use transport::TransportConfig;

/// Everything needed to start one node.
#[derive(Clone, Debug)]
pub struct NodeOptions {
    pub raft: raft_kv_core::Config,
    /// Every voter's Raft address, this node's included.
    pub raft_addrs: BTreeMap<NodeId, SocketAddr>,
    pub raft_listen: SocketAddr,
    pub redis_listen: SocketAddr,
    pub tuning: NodeTuning,
    pub client: ClientConfig,
    pub transport: TransportConfig,
    /// Client requests queued for the node task.
    pub client_queue_max: usize,
    /// Peer messages queued for the node task.
    pub peer_queue_max: usize,
    /// Simulation hooks; none in production.
    pub hooks: SimHooks,
    /// The node's metrics (`--metrics-addr` serves them).
    pub metrics: Arc<metrics::Metrics>,
}

/// Where the simulation reaches into a node: its clock and its role changes. (Its network
/// faults sit in `TransportConfig::faults`.)
#[derive(Clone, Default)]
pub struct SimHooks {
    /// The length of each successive tick, called once per tick; None: `tuning.tick`. The
    /// simulation skews each node's clock rate and phase with it.
    pub tick_period: Option<Arc<dyn Fn() -> Duration + Send + Sync>>,
    /// The node's wall clock in milliseconds since the Unix epoch; None: the system's. The
    /// simulation offsets each node's.
    pub wall_clock: Option<node::WallClock>,
    /// The node's monotonic clock, which judges leases; None: the system's. The simulation
    /// runs each node's at its clock's rate.
    pub mono_clock: Option<node::MonoClock>,
    pub on_status: Option<StatusHook>,
    /// The wait before each WAL sync (a disk's latency); None: none. The simulation draws
    /// it, so crashes land between a write and its sync.
    pub sync_delay: Option<durability::SyncDelay>,
}

impl std::fmt::Debug for SimHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHooks")
            .field("tick_period", &self.tick_period.is_some())
            .field("wall_clock", &self.wall_clock.is_some())
            .field("mono_clock", &self.mono_clock.is_some())
            .field("on_status", &self.on_status.is_some())
            .field("sync_delay", &self.sync_delay.is_some())
            .finish()
    }
}

impl NodeOptions {
    pub fn new(
        raft: raft_kv_core::Config,
        raft_addrs: BTreeMap<NodeId, SocketAddr>,
        raft_listen: SocketAddr,
        redis_listen: SocketAddr,
    ) -> NodeOptions {
        let transport = TransportConfig::new(raft.id, cluster_id(&raft_addrs));
        NodeOptions {
            raft,
            raft_addrs,
            raft_listen,
            redis_listen,
            tuning: NodeTuning::default(),
            client: ClientConfig::default(),
            transport,
            client_queue_max: 16_384,
            peer_queue_max: 16_384,
            metrics: Arc::new(metrics::Metrics::new()),
            hooks: SimHooks::default(),
        }
    }
}

/// A stable identity of the cluster layout: nodes refuse peers (and data directories) from
/// another one.
pub fn cluster_id(raft_addrs: &BTreeMap<NodeId, SocketAddr>) -> u64 {
    // FNV-1a: tiny, stable across builds and platforms.
    let mut h: u64 = 0xcbf29ce484222325;
    for (id, addr) in raft_addrs {
        for b in format!("{id}={addr},").bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    h
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Config(#[from] raft_kv_core::raft::ConfigError),
}

pub struct RunningNode {
    pub redis_addr: SocketAddr,
    pub raft_addr: SocketAddr,
    pub metrics: Arc<metrics::Metrics>,
    /// Ends with an error if storage fails; the process should then exit.
    pub task: JoinHandle<Result<(), StorageError>>,
}

/// Binds both ports, restores the node from `storage` and starts its tasks.
pub async fn start<S: Storage>(
    opts: NodeOptions,
    mut storage: S,
) -> Result<RunningNode, StartError> {
    let raft_listener = TcpListener::bind(opts.raft_listen).await.map_err(|source| {
        StartError::Bind { what: "raft peers", addr: opts.raft_listen, source }
    })?;
    let redis_listener = TcpListener::bind(opts.redis_listen).await.map_err(|source| {
        StartError::Bind { what: "redis clients", addr: opts.redis_listen, source }
    })?;
    let raft_addr = raft_listener.local_addr().unwrap_or(opts.raft_listen);
    let redis_addr = redis_listener.local_addr().unwrap_or(opts.redis_listen);

    let wall_clock =
        opts.hooks.wall_clock.clone().unwrap_or_else(|| Arc::new(node::system_clock_ms));
    // Milliseconds of the wall clock: above the runs before a wipe of this disk too, as long
    // as the clock did not go back (and if it did, the node moves past its old runs as soon as
    // it applies one of their entries: `NodeTask::apply`).
    let incarnation = storage.next_incarnation(wall_clock())?;
    let mut restored = storage.load()?;
    // Reads every applied value once, so one that fails its checksum stops the start here.
    let read = std::time::Instant::now();
    let deadlines = node::StartDeadlines::read(&storage)?;
    tracing::info!(node = %opts.raft.id, took_ms = read.elapsed().as_millis() as u64, "key space read (deadlines and collections indexed)");
    if restored.membership.is_none() {
        // A node that never applied a membership change starts from its command line.
        restored.membership = Some(raft_kv_core::Membership {
            voters: opts.raft.voters.iter().copied().collect(),
            addrs: opts.raft_addrs.iter().map(|(id, a)| (*id, a.to_string())).collect(),
            ..Default::default()
        });
    }
    let bootstrap_addrs: Vec<(NodeId, String)> = restored
        .membership
        .iter()
        .flat_map(|m| m.addrs.iter())
        .map(|(id, a)| (*id, a.clone()))
        .collect();
    let applied = restored.applied;
    // The time of the applied entry: in the log, or the snapshot's if that is where it ends.
    let applied_time = restored
        .entries
        .iter()
        .find(|e| e.index == applied)
        .map_or(restored.snapshot.time, |e| e.time);
    info!(node = %opts.raft.id, term = %restored.hard_state.term, applied = %applied,
        log_entries = restored.entries.len(), incarnation, "restored from storage");
    let mut raft_cfg = opts.raft.clone();
    if raft_cfg.tick_us == 0 {
        // Leases are judged by the monotonic clock in units of this node's tick.
        raft_cfg.tick_us = opts.tuning.tick.as_micros().max(1) as u64;
    }
    let raft = RaftNode::new(raft_cfg, restored)?;
    // Peers: every member of the membership in effect (the last in the log) and of the
    // applied one.
    let latest = raft.membership().addrs.iter().map(|(id, a)| (*id, a.clone()));
    let peer_addrs: BTreeMap<NodeId, SocketAddr> = bootstrap_addrs
        .into_iter()
        .chain(latest)
        .filter_map(|(id, a)| Some((id, a.parse().ok()?)))
        .collect();

    let (peer_tx, peer_rx) = mpsc::channel(opts.peer_queue_max);
    let (client_tx, client_rx) = mpsc::channel(opts.client_queue_max);
    let metrics = opts.metrics.clone();
    let mut transport_cfg = opts.transport.clone();
    transport_cfg.metrics = metrics.clone();
    if transport_cfg.advertise.is_none() {
        transport_cfg.advertise =
            Some(opts.raft_addrs.get(&opts.raft.id).copied().unwrap_or(raft_addr));
    }
    let peers = transport::start(transport_cfg, raft_listener, &peer_addrs, peer_tx);
    let client_slots = Arc::new(tokio::sync::Semaphore::new(opts.client.clients_max));
    tokio::spawn(client::accept_loop(
        redis_listener,
        client_tx,
        opts.client.clone(),
        client_slots.clone(),
        metrics.clone(),
    ));

    let info = node::InfoContext {
        server: format!(
            "# Server\r\nredis_version:7.0.0\r\nraft_kv_version:{}\r\nprocess_id:{}\r\ntcp_port:{}\r\nraft_addr:{}\r\n",
            env!("CARGO_PKG_VERSION"),
            std::process::id(),
            redis_addr.port(),
            raft_addr
        ),
        raft_addrs: opts.raft_addrs.clone(),
        client_slots,
        clients_max: opts.client.clients_max,
        started: tokio::time::Instant::now(),
        cluster_id: opts.transport.cluster_id,
    };
    let tick = opts.tuning.tick;
    let tick_period = opts.hooks.tick_period.clone();
    // Half a frame: the entry, its encoding and the AppendEntries around it must fit in one.
    let proposal_bytes_max = opts.transport.frame_bytes_max / 2;
    let (sync_request, sync_requests) = tokio::sync::watch::channel(0);
    let (synced_tx, synced_rx) = mpsc::channel(4);
    tokio::spawn(durability::sync_loop(
        storage.log_sync(),
        sync_requests,
        synced_tx,
        opts.hooks.sync_delay.clone(),
        opts.raft.planted,
        metrics.clone(),
        opts.raft.id,
    ));
    let start = node::NodeStart {
        incarnation,
        durable: durability::Durability::new(sync_request, opts.tuning.held_messages_max),
        applied,
        applied_time,
        proposal_bytes_max,
        info,
        wall_clock,
        mono_clock: opts.hooks.mono_clock.clone().unwrap_or_else(node::system_mono_clock),
        deadlines,
        metrics: metrics.clone(),
    };
    let task = NodeTask::new(raft, storage, peers, opts.tuning, start)
        .with_status_hook(opts.hooks.on_status.clone());
    let span = info_span!("node", node = opts.raft.id.0);
    let period = move || tick_period.as_ref().map_or(tick, |f| f());
    let task = tokio::spawn(task.run(peer_rx, client_rx, synced_rx, period).instrument(span));
    info!(node = %opts.raft.id, %redis_addr, %raft_addr, "node started");
    Ok(RunningNode { redis_addr, raft_addr, metrics, task })
}
