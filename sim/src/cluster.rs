//! A cluster of real raft-kv runtime nodes on madsim hosts. Each node's storage, clock and fault
//! layer live in the harness, so the simulation can crash a node (losing its unsynced writes),
//! restart it with what survived, pause it, skew its clock and cut its links.

use crate::faults::NetFaults;
use crate::invariants::{CheckedStorage, Invariants};
use madsim::net::NetSim;
use madsim::runtime::{Handle, NodeHandle};
use raft_kv_core::{NodeId, PlantedBug};
use raft_kv_runtime::snapshot::SnapshotTuning;
use raft_kv_runtime::storage::{MemStorage, Storage};
use raft_kv_runtime::{NodeOptions, SimHooks};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const RAFT_PORT: u16 = 7000;
pub const REDIS_PORT: u16 = 6379;

/// The length of one tick of an unskewed node.
pub const TICK: Duration = Duration::from_millis(10);

pub fn node_ip(id: NodeId) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, id.0 as u8))
}

pub fn redis_addr(id: NodeId) -> SocketAddr {
    SocketAddr::new(node_ip(id), REDIS_PORT)
}

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Voters at the start.
    pub nodes: u64,
    /// Further hosts, running but not members: the nemesis adds them with RAFT.NODE ADD.
    pub spares: u64,
    pub seed: u64,
    pub planted: Option<PlantedBug>,
    /// How long a node waits for consensus before answering a request with an error.
    pub request_timeout: Duration,
    /// Entries per AppendEntries; small values split catch-up into many messages.
    pub append_entries_max: usize,
    pub inflight_appends_max: usize,
    /// Bytes a leader holds uncommitted; small values make it refuse proposals (BUSY), its
    /// own and forwarded ones, under a normal load.
    pub uncommitted_bytes_max: usize,
    /// Log compaction thresholds and snapshot streaming; tiny values make nodes compact and
    /// install snapshots all the time.
    pub snapshot_entries: u64,
    pub snapshot_keep_entries: u64,
    /// `Config::compact_keeps_followers`.
    pub compact_keeps_followers: bool,
    pub snapshot: SnapshotTuning,
    /// Leader lease length in ticks; 0: ReadIndex for every read.
    pub lease_ticks: u32,
    /// Each WAL sync first waits a uniform draw of up to this (a disk's latency), so crashes
    /// land between writes and their syncs; 0: syncs start at once.
    pub sync_delay_max: Duration,
    /// Peers authenticate with a cluster secret (`peer_auth`): the handshake and the frame
    /// MACs run under every fault.
    pub peer_secret: bool,
    /// `NodeTuning::ready_turn_budget`: zero takes one round of `ready` per turn of the
    /// node task.
    pub ready_turn_budget: Duration,
}

impl ClusterOptions {
    pub fn new(nodes: u64, seed: u64) -> ClusterOptions {
        let raft = raft_kv_core::Config::new(NodeId(1), vec![NodeId(1)], 0);
        ClusterOptions {
            nodes,
            spares: 0,
            seed,
            planted: None,
            request_timeout: Duration::from_secs(5),
            append_entries_max: raft.append_entries_max,
            inflight_appends_max: raft.inflight_appends_max,
            uncommitted_bytes_max: raft.uncommitted_bytes_max,
            snapshot_entries: raft.snapshot_entries,
            snapshot_keep_entries: raft.snapshot_keep_entries,
            compact_keeps_followers: raft.compact_keeps_followers,
            snapshot: SnapshotTuning::default(),
            lease_ticks: 0,
            sync_delay_max: Duration::ZERO,
            peer_secret: false,
            ready_turn_budget: raft_kv_runtime::node::NodeTuning::default().ready_turn_budget,
        }
    }
}

/// A node's clock: the rate its ticks advance at relative to real (simulated) time, and a
/// phase offset applied to its next tick.
pub struct SkewClock {
    /// Rate in parts per million (1_000_000 = true time).
    rate_ppm: AtomicU64,
    /// Added once to the next tick.
    offset_us: AtomicU64,
    /// The node's wall clock (which stamps the entries it appends as leader) is this far
    /// from the simulation's.
    wall_offset_ms: AtomicI64,
    /// The node's monotonic clock (which judges its leases) runs at `rate_ppm`: its reading
    /// when the rate last changed, and the true time then.
    mono_base: Mutex<Option<(madsim::time::Instant, f64)>>,
}

impl SkewClock {
    fn new() -> Arc<SkewClock> {
        Arc::new(SkewClock {
            rate_ppm: AtomicU64::new(1_000_000),
            offset_us: AtomicU64::new(0),
            wall_offset_ms: AtomicI64::new(0),
            mono_base: Mutex::new(None),
        })
    }

    /// From now on the node's ticks run `rate` times as fast as true time.
    pub fn set_rate(&self, rate: f64) {
        let mut base = self.mono_base.lock().unwrap_or_else(|p| p.into_inner());
        let now = madsim::time::Instant::now();
        *base = Some((now, self.mono_us_at(&mut base, now)));
        self.rate_ppm.store((rate * 1e6) as u64, Ordering::Relaxed);
    }

    /// The node's monotonic clock in microseconds: true time scaled by the node's rate, so
    /// its leases run as fast or as slow as its ticks. (The phase shift of `shift` delays
    /// ticks only: a timer that fires late, as after a stalled task.)
    pub fn mono_us(&self) -> u64 {
        let mut base = self.mono_base.lock().unwrap_or_else(|p| p.into_inner());
        self.mono_us_at(&mut base, madsim::time::Instant::now()) as u64
    }

    fn mono_us_at(
        &self,
        base: &mut Option<(madsim::time::Instant, f64)>,
        now: madsim::time::Instant,
    ) -> f64 {
        let (since, at) = *base.get_or_insert((now, 0.0));
        at + now.duration_since(since).as_secs_f64() * 1e6 * self.rate()
    }

    pub fn rate(&self) -> f64 {
        self.rate_ppm.load(Ordering::Relaxed) as f64 / 1e6
    }

    /// Delays the node's next tick by `offset`, shifting its clock's phase.
    pub fn shift(&self, offset: Duration) {
        self.offset_us.store(offset.as_micros() as u64, Ordering::Relaxed);
    }

    /// Sets the node's wall clock `ms` milliseconds ahead of true time (behind if negative).
    pub fn set_wall_offset(&self, ms: i64) {
        self.wall_offset_ms.store(ms, Ordering::Relaxed);
    }

    /// The node's wall clock, in milliseconds since the Unix epoch (simulated: deterministic).
    pub fn wall_ms(&self) -> u64 {
        let now = raft_kv_runtime::node::system_clock_ms() as i64;
        now.saturating_add(self.wall_offset_ms.load(Ordering::Relaxed)).max(0) as u64
    }

    fn next_period(&self) -> Duration {
        let rate = self.rate_ppm.load(Ordering::Relaxed).max(1) as f64 / 1e6;
        let offset = Duration::from_micros(self.offset_us.swap(0, Ordering::Relaxed));
        TICK.div_f64(rate) + offset
    }
}

pub struct SimCluster {
    pub initial_voters: Vec<NodeId>,
    pub handle: Handle,
    pub nodes: BTreeMap<NodeId, NodeHandle>,
    pub storages: BTreeMap<NodeId, MemStorage>,
    pub clocks: BTreeMap<NodeId, Arc<SkewClock>>,
    pub faults: Arc<NetFaults>,
    pub invariants: Arc<Invariants>,
    /// The host clients run on.
    pub client: NodeHandle,
    down: Mutex<BTreeSet<NodeId>>,
    /// Nodes that stopped themselves (at a failed sync) and still hold their host: the
    /// nemesis kills and later restarts them (`take_self_stopped`).
    self_stopped: Arc<Mutex<BTreeSet<NodeId>>>,
    paused: Mutex<BTreeSet<NodeId>>,
}

/// Stops every node and the client host when the cluster goes: a madsim runtime dropped with
/// tasks still pending never frees them, nor what they hold (about 1 MB per chaos run).
impl Drop for SimCluster {
    fn drop(&mut self) {
        for node in self.nodes.values() {
            self.handle.kill(node.id());
        }
        self.handle.kill(self.client.id());
    }
}

impl SimCluster {
    /// Starts `n` healthy nodes; `seed` derives every node's RNG seed.
    pub fn start(n: u64, seed: u64) -> SimCluster {
        SimCluster::start_with(ClusterOptions::new(n, seed))
    }

    pub fn start_with(opts: ClusterOptions) -> SimCluster {
        let handle = Handle::current();
        let addrs: BTreeMap<NodeId, SocketAddr> = (1..=opts.nodes + opts.spares)
            .map(|i| (NodeId(i), SocketAddr::new(node_ip(NodeId(i)), RAFT_PORT)))
            .collect();
        let voters: Vec<NodeId> = (1..=opts.nodes).map(NodeId).collect();
        let cluster_id = 0x5151_0000 ^ opts.seed;
        let faults = Arc::new(NetFaults::new(opts.seed ^ 0xfa17));
        let invariants = Invariants::new();
        let mut nodes = BTreeMap::new();
        let mut storages = BTreeMap::new();
        let mut clocks = BTreeMap::new();
        let self_stopped: Arc<Mutex<BTreeSet<NodeId>>> = Arc::default();
        for &id in addrs.keys() {
            let storage = match opts.planted {
                Some(PlantedBug::AckBeforeSync) => MemStorage::never_syncing(),
                Some(PlantedBug::DamagedDataTrusted) => MemStorage::trusting_damage(),
                _ => MemStorage::new(),
            };
            let clock = SkewClock::new();
            storages.insert(id, storage.clone());
            invariants.register(id, storage.clone());
            clocks.insert(id, clock.clone());
            let addrs = addrs.clone();
            let voters = voters.clone();
            let faults = faults.clone();
            let invariants = invariants.clone();
            let opts = opts.clone();
            let self_stopped = self_stopped.clone();
            let restarts = Arc::new(AtomicU64::new(0));
            let node = handle
                .create_node()
                .name(format!("node{id}"))
                .ip(node_ip(id))
                .init(move || {
                    let disk = storage.clone();
                    let self_stopped = self_stopped.clone();
                    let forget_disk = invariants.clone();
                    let storage = CheckedStorage {
                        inner: storage.clone(),
                        node: id,
                        invariants: invariants.clone(),
                    };
                    let run = restarts.fetch_add(1, Ordering::Relaxed);
                    let mut raft = raft_kv_core::Config::new(
                        id,
                        voters.clone(),
                        opts.seed ^ (id.0 << 32) ^ run,
                    );
                    // Every node, spares included, starts from the same membership: the
                    // voters. A spare is no member until RAFT.NODE ADD applies.
                    let known: BTreeMap<NodeId, SocketAddr> = addrs
                        .iter()
                        .filter(|(n, _)| voters.contains(n))
                        .map(|(n, a)| (*n, *a))
                        .collect();
                    raft.planted = opts.planted;
                    raft.append_entries_max = opts.append_entries_max;
                    raft.inflight_appends_max = opts.inflight_appends_max;
                    raft.uncommitted_bytes_max = opts.uncommitted_bytes_max;
                    raft.snapshot_entries = opts.snapshot_entries;
                    raft.snapshot_keep_entries = opts.snapshot_keep_entries;
                    raft.compact_keeps_followers = opts.compact_keeps_followers;
                    raft.lease_ticks = opts.lease_ticks;
                    let mut node_opts = NodeOptions::new(raft, known, addrs[&id], redis_addr(id));
                    // One cluster id for members and spares alike.
                    node_opts.transport.cluster_id = cluster_id;
                    node_opts.tuning.request_timeout = opts.request_timeout;
                    // The disk counts as nearly full while the nemesis reports 0 bytes free.
                    node_opts.tuning.disk_reserve_bytes = 1;
                    node_opts.tuning.snapshot = opts.snapshot.clone();
                    // Collections here hold at most eight members: reads of those with three
                    // or more go off the node task (`serve_off_task`), as a large one's would.
                    node_opts.tuning.offload_elements_min = 3;
                    node_opts.tuning.ready_turn_budget = opts.ready_turn_budget;
                    node_opts.client.planted = opts.planted;
                    node_opts.transport.faults = Some(faults.clone());
                    if opts.peer_secret {
                        node_opts.transport.secret = Some(
                            raft_kv_runtime::peer_auth::ClusterSecret::new(
                                b"the simulated cluster's secret",
                            )
                            .expect("long enough"),
                        );
                    }
                    let clock = clock.clone();
                    let on_status = invariants.clone();
                    let sync_delay: Option<raft_kv_runtime::durability::SyncDelay> =
                        (!opts.sync_delay_max.is_zero()).then(|| {
                            let max = opts.sync_delay_max;
                            let rng = Mutex::new(StdRng::seed_from_u64(
                                opts.seed ^ (id.0 << 48) ^ (run << 8) ^ 0x5c,
                            ));
                            Arc::new(move || {
                                let mut rng = rng.lock().unwrap_or_else(|p| p.into_inner());
                                max.mul_f64(rng.gen::<f64>())
                            }) as raft_kv_runtime::durability::SyncDelay
                        });
                    node_opts.hooks = SimHooks {
                        tick_period: Some(Arc::new({
                            let clock = clock.clone();
                            move || clock.next_period()
                        })),
                        wall_clock: Some(Arc::new({
                            let clock = clock.clone();
                            move || clock.wall_ms()
                        })),
                        mono_clock: Some(Arc::new(move || clock.mono_us())),
                        on_status: Some(Arc::new(move |s| on_status.on_status(s))),
                        sync_delay,
                    };
                    async move {
                        use raft_kv_runtime::storage::{DAMAGE_FAULT, SYNC_FAULT};
                        let failed = match raft_kv_runtime::start(node_opts, storage).await {
                            Ok(node) => match node.task.await {
                                Ok(Err(e)) => Some(e.to_string()),
                                _ => None,
                            },
                            Err(e) => Some(e.to_string()),
                        };
                        if let Some(e) = failed {
                            if e.contains(DAMAGE_FAULT) {
                                // The node refused its damaged disk, as it must. The
                                // operator's repair (README): the directory moved aside, and
                                // the node started again (`take_self_stopped`), empty, to
                                // catch up from its peers.
                                disk.wipe();
                                forget_disk.forget_disk(id);
                            } else if !e.contains(SYNC_FAULT) {
                                panic!("node {id} failed: {e}");
                            }
                            // Or the node stopped at a failed sync (or could not start for
                            // one), as it must: it comes back (`Nemesis`) from what its disk
                            // holds, its unsynced writes lost. Until the nemesis (or, after the
                            // heal, `converge`) restarts the host (`take_self_stopped`) it
                            // idles.
                            disk.crash(0);
                            self_stopped.lock().unwrap().insert(id);
                            std::future::pending::<()>().await;
                        }
                    }
                })
                .build();
            nodes.insert(id, node);
        }
        let client =
            handle.create_node().name("client").ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1))).build();
        SimCluster {
            initial_voters: voters,
            handle,
            nodes,
            storages,
            clocks,
            faults,
            invariants,
            client,
            down: Mutex::new(BTreeSet::new()),
            self_stopped,
            paused: Mutex::new(BTreeSet::new()),
        }
    }

    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// The membership applied by the node that applied the most.
    pub fn membership(&self) -> raft_kv_core::Membership {
        let from =
            self.storages.iter().max_by_key(|(id, s)| (s.applied(), std::cmp::Reverse(**id)));
        let stored = from.and_then(|(_, s)| s.membership().ok().flatten());
        stored.unwrap_or_else(|| raft_kv_core::Membership {
            voters: self.initial_voters.iter().copied().collect(),
            ..Default::default()
        })
    }

    /// Stops the node at once, keeping all it wrote (a process kill: the OS keeps the page
    /// cache).
    pub fn kill(&self, id: NodeId) {
        self.handle.kill(self.nodes[&id].id());
        self.invariants.forget_status(id);
        self.down.lock().unwrap().insert(id);
        self.paused.lock().unwrap().remove(&id);
    }

    /// Stops the node and loses its unsynced writes except the first `survivors` (power loss).
    /// Returns how many writes were lost.
    pub fn crash(&self, id: NodeId, survivors: usize) -> usize {
        self.kill(id);
        self.storages[&id].crash(survivors)
    }

    /// Stops the node and wipes its disk: it restarts empty, under the same id.
    pub fn wipe(&self, id: NodeId) {
        self.kill(id);
        self.storages[&id].wipe();
        self.invariants.forget_disk(id);
    }

    /// Starts a stopped node again (or kills and restarts a running one) from its storage.
    pub fn restart(&self, id: NodeId) {
        self.handle.restart(self.nodes[&id].id());
        self.down.lock().unwrap().remove(&id);
        self.paused.lock().unwrap().remove(&id);
    }

    /// The nodes that stopped themselves since the last call.
    pub fn take_self_stopped(&self) -> Vec<NodeId> {
        std::mem::take(&mut *self.self_stopped.lock().unwrap()).into_iter().collect()
    }

    pub fn is_down(&self, id: NodeId) -> bool {
        self.down.lock().unwrap().contains(&id)
    }

    pub fn down(&self) -> Vec<NodeId> {
        self.down.lock().unwrap().iter().copied().collect()
    }

    pub fn pause(&self, id: NodeId) {
        self.handle.pause(self.nodes[&id].id());
        self.paused.lock().unwrap().insert(id);
    }

    pub fn resume(&self, id: NodeId) {
        self.handle.resume(self.nodes[&id].id());
        self.paused.lock().unwrap().remove(&id);
    }

    pub fn paused(&self) -> Vec<NodeId> {
        self.paused.lock().unwrap().iter().copied().collect()
    }

    /// Cuts the network so nodes talk only within their group (both directions). Clients
    /// still reach every node.
    pub fn partition(&self, groups: &[Vec<NodeId>]) {
        let net = NetSim::current();
        for (gi, a) in groups.iter().enumerate() {
            for (gj, b) in groups.iter().enumerate() {
                if gi == gj {
                    continue;
                }
                for x in a {
                    for y in b {
                        net.clog_link(self.nodes[x].id(), self.nodes[y].id());
                    }
                }
            }
        }
    }

    /// Reconnects every pair of nodes.
    pub fn heal_partitions(&self) {
        let net = NetSim::current();
        for a in self.nodes.values() {
            for b in self.nodes.values() {
                if a.id() != b.id() {
                    net.unclog_link(a.id(), b.id());
                }
            }
        }
    }

    /// Cuts the clients off from node `id` (both directions): their requests and replies
    /// wait in the network until `reconnect_clients`.
    pub fn cut_clients(&self, id: NodeId) {
        let net = NetSim::current();
        net.clog_link(self.client.id(), self.nodes[&id].id());
        net.clog_link(self.nodes[&id].id(), self.client.id());
    }

    pub fn reconnect_clients(&self, id: NodeId) {
        let net = NetSim::current();
        net.unclog_link(self.client.id(), self.nodes[&id].id());
        net.unclog_link(self.nodes[&id].id(), self.client.id());
    }

    /// Ends every fault: partitions, client cuts and message faults healed, clocks true,
    /// paused nodes resumed, stopped nodes restarted.
    pub fn heal_all(&self) {
        self.heal_partitions();
        for &id in self.nodes.keys() {
            self.reconnect_clients(id);
        }
        self.faults.heal();
        for c in self.clocks.values() {
            c.set_rate(1.0);
        }
        for id in self.paused() {
            self.resume(id);
        }
        for id in self.down() {
            self.restart(id);
        }
    }
}
