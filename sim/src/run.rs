//! One chaos run, fully determined by its seed: topology, workload, fault schedule and timings
//! are drawn from it, and madsim runs every task and message in a seed-determined order.
//!
//! Phases: clients and nemesis run together for the fault phase; then every fault heals (in a
//! quarter of the runs that allow it, only a majority of the voters: the others stay crashed
//! or cut off, and the clients talk only to that liveness core), each client must complete a
//! new operation within `LIVENESS_WITHIN`, and every node must reach
//! the same applied state within `CONVERGENCE_WITHIN`. Finally the history is checked for
//! linearizability, key by key.

use crate::check::{self, CheckOptions};
use crate::cluster::{ClusterOptions, SimCluster};
use crate::history::{Operation, Ret};
use crate::nemesis::{Core, Nemesis, Swarm};
use crate::workload::{ClientTask, Recorder, Targets, WorkloadOptions};
use raft_kv_core::reach::{self, Path};
use raft_kv_core::{NodeId, PlantedBug};
use raft_kv_runtime::node::NodeTuning;
use raft_kv_runtime::snapshot::SnapshotTuning;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

/// After the heal, every client must complete an operation within this.
pub const LIVENESS_WITHIN: Duration = Duration::from_secs(30);
/// After the clients stop, every node must hold the same applied state within this. Generous
/// because of madsim's TCP model: each write made into a partitioned link is delivered after
/// the heal on its own, after its own retry backoff and latency (several milliseconds each),
/// so a node that wrote thousands of messages into a partition needs tens of seconds of
/// simulated time to drain them (seed 900116: 3209 messages in a 2.4 s partition, converged
/// 21.7 s after its clients stopped).
pub const CONVERGENCE_WITHIN: Duration = Duration::from_secs(60);
/// The worst ratio between two nodes' clock rates under the skew nemesis.
pub const SKEW_RATE_RATIO_MAX: f64 = crate::nemesis::SKEW_RATE_MAX / crate::nemesis::SKEW_RATE_MIN;
/// Seeds the liveness core's draws (`Nemesis::isolate_core`).
const CORE_SALT: u64 = 0x6c69_7665_2063_6f72;
/// Clients keep their random workload going this long after the heal.
const AFTER_HEAL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub seed: u64,
    pub planted: Option<PlantedBug>,
    pub check: CheckOptions,
}

impl RunOptions {
    pub fn new(seed: u64) -> RunOptions {
        RunOptions { seed, planted: None, check: CheckOptions::default() }
    }
}

/// Everything a run observed.
pub struct RunReport {
    pub seed: u64,
    pub nodes: u64,
    pub clients: usize,
    pub keys: usize,
    pub swarm: Swarm,
    pub fault_phase: Duration,
    pub schedule: Vec<String>,
    pub history: Vec<Operation>,
    /// Invariant, liveness and convergence violations.
    pub violations: Vec<String>,
    pub check: check::Report,
    /// A hash of every status change, apply, nemesis action and operation, in order.
    pub trace_hash: u64,
    /// How long after the clients finished every node held the same state.
    pub converged_after: Option<Duration>,
    /// Replication and snapshot settings the seed chose.
    pub config: String,
    /// Log compactions and snapshot installs on all nodes.
    pub compactions: u64,
    pub installs: u64,
    /// Leadership transfers answered, and those that succeeded.
    pub transfers: (u64, u64),
    /// Membership changes answered, and those applied.
    pub memberships: (u64, u64),
    /// The liveness core phase, if this run had one.
    pub core: Option<Core>,
    /// How often the run passed each rare path (`raft_kv_core::reach::Path::ALL`'s order).
    pub reach: [u64; Path::ALL.len()],
}

impl RunReport {
    pub fn failed(&self) -> bool {
        !self.violations.is_empty() || !self.check.is_ok()
    }

    pub fn indeterminate(&self) -> usize {
        self.history.iter().filter(|o| o.ret == Ret::Unknown).count()
    }

    /// One line: what ran and what came of it.
    pub fn summary(&self) -> String {
        let verdict = if let Some(f) = &self.check.failure {
            format!("NOT LINEARIZABLE on key {}", f.key)
        } else if !self.violations.is_empty() {
            format!("{} violation(s)", self.violations.len())
        } else if !self.check.unknown_keys.is_empty() {
            let keys = self.check.unknown_keys.join(", ");
            format!("ok (key(s) {keys} beyond the checker's budget)")
        } else {
            "ok".to_string()
        };
        let core = self.core.as_ref().map_or(String::new(), |c| {
            let how = if c.crashed { "killed" } else { "cut off" };
            format!("; liveness core {:?} with {:?} {how}", c.core, c.rest)
        });
        let converged = self
            .converged_after
            .map_or("never".to_string(), |d| format!("{:.1}s", d.as_secs_f64()));
        format!(
            "seed {}: {} nodes, {} clients, {} keys, {} ops ({} indeterminate), {}s of faults: {}{core}; {}; {} compactions, {} snapshots installed; converged after {converged}; {}",
            self.seed,
            self.nodes,
            self.clients,
            self.keys,
            self.history.len(),
            self.indeterminate(),
            self.fault_phase.as_secs(),
            self.swarm,
            self.config,
            self.compactions,
            self.installs,
            verdict
        )
    }
}

/// Runs the simulation of `opts.seed` on a fresh madsim runtime.
pub fn run(opts: &RunOptions) -> RunReport {
    let rt = madsim::runtime::Runtime::with_seed_and_config(opts.seed, madsim::Config::default());
    let opts = opts.clone();
    // The simulation runs on this thread: its reach counts are this thread's from here.
    reach::take();
    let mut report = rt.block_on(simulate(opts));
    report.reach = reach::take();
    report
}

async fn simulate(opts: RunOptions) -> RunReport {
    let seed = opts.seed;
    let mut rng = StdRng::seed_from_u64(seed);
    let nodes = if rng.gen_bool(0.5) { 3 } else { 5 };
    let mut swarm = Swarm::choose(&mut rng);
    let request_timeout = Duration::from_millis(rng.gen_range(1000..5000));
    let fault_phase = Duration::from_secs(rng.gen_range(4..12));
    let clients = rng.gen_range(2..=6);
    let workload = WorkloadOptions {
        clients,
        readers: rng.gen_range(0..=clients / 2),
        keys: rng.gen_range(1..=4),
        think_max: Duration::from_millis(rng.gen_range(1..60)),
        reply_timeout: request_timeout + Duration::from_secs(1),
        pipeline: *[0.0, 0.05].choose(&mut rng).expect("not empty"),
    };
    let cluster_opts = ClusterOptions {
        nodes,
        // Runs with membership changes get two hosts that are not members yet.
        spares: if swarm.membership { 2 } else { 0 },
        seed,
        planted: opts.planted,
        request_timeout,
        append_entries_max: *[1, 2, 4, 16, 512].choose(&mut rng).expect("not empty"),
        inflight_appends_max: *[1, 4, 64].choose(&mut rng).expect("not empty"),
        // A quarter of the seeds give the leader room for only a few uncommitted entries, so
        // it refuses proposals (BUSY, definitely not applied), forwarded ones too.
        uncommitted_bytes_max: *[64 << 20, 64 << 20, 64 << 20, 400]
            .choose(&mut rng)
            .expect("not empty"),
        // Most seeds compact every few entries, so lagging and restarted nodes catch up from
        // snapshots streamed in many small chunks.
        snapshot_entries: *[4, 16, 64, 100_000].choose(&mut rng).expect("not empty"),
        snapshot_keep_entries: *[0, 2, 10].choose(&mut rng).expect("not empty"),
        // A quarter of the seeds keep the entries active followers need, as a real node does
        // (`Config::compact_keeps_followers`); the rest compact past them, so followers just
        // behind get snapshots too. By the seed's hash, not the RNG, like `ready_turn_budget`.
        compact_keeps_followers: seed.wrapping_mul(0xD6E8_FEB8_6659_FD93) >> 62 == 0,
        snapshot: SnapshotTuning {
            chunk_bytes: *[40, 300, 1 << 16].choose(&mut rng).expect("not empty"),
            window: rng.gen_range(1..=4),
            resend_after: Duration::from_millis(*[100, 500].choose(&mut rng).expect("not empty")),
            resends_max: 5,
        },
        // Half the seeds serve reads from leader leases, sized for the nemesis's worst clock
        // skew: rates from 0.5x to 2x, so one clock may run 4 times as fast as another.
        lease_ticks: if rng.gen_bool(0.5) {
            let election_ticks =
                raft_kv_core::Config::new(NodeId(1), vec![NodeId(1)], 0).election_ticks;
            raft_kv_core::lease_ticks_for_drift(election_ticks, SKEW_RATE_RATIO_MAX).expect("fits")
        } else {
            0
        },
        // A disk's sync latency, so crashes fall between writes and their syncs.
        sync_delay_max: Duration::from_micros(
            *[0, 1_000, 5_000, 20_000, 50_000].choose(&mut rng).expect("not empty"),
        ),
        peer_secret: rng.gen_bool(0.5),
        // An eighth of the seeds take one round of `ready` per turn of the node task (what a
        // busy task does once its budget is spent); chosen by the seed's hash, not the RNG, so
        // the draws after it, and the other seeds' runs, stay as they were. (They run at about half
        // the speed: the rounds a commit takes wait for ticks.)
        ready_turn_budget: if seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 61 == 7 {
            Duration::ZERO
        } else {
            NodeTuning::default().ready_turn_budget
        },
    };
    if cluster_opts.lease_ticks > 0 && rng.gen_bool(0.5) {
        // Half the lease seeds get what attacks a lease: skewed clocks and partitions.
        swarm.clock_skew = true;
        swarm.partitions = true;
    }
    let config = format!(
        "appends of {} x{}, {} B uncommitted at most, compact every {} keeping {}, chunks of {} B x{}, lease {} ticks, syncs after up to {:?}, peer secret {}, ready rounds per turn {}, compaction keeps followers {}",
        cluster_opts.append_entries_max,
        cluster_opts.inflight_appends_max,
        cluster_opts.uncommitted_bytes_max,
        cluster_opts.snapshot_entries,
        cluster_opts.snapshot_keep_entries,
        cluster_opts.snapshot.chunk_bytes,
        cluster_opts.snapshot.window,
        cluster_opts.lease_ticks,
        cluster_opts.sync_delay_max,
        cluster_opts.peer_secret,
        if cluster_opts.ready_turn_budget.is_zero() { "1" } else { "up to 8" },
        cluster_opts.compact_keeps_followers,
    );
    let cluster = SimCluster::start_with(cluster_opts);

    let start = Instant::now();
    let heal_at = start + fault_phase;
    let recorder = Recorder::new(start);
    let targets = Targets::new(cluster.ids());
    let mut clients = Vec::new();
    for id in 0..workload.clients {
        let mut task =
            ClientTask::new(id, targets.clone(), workload.clone(), rng.gen(), recorder.clone());
        clients.push(cluster.client.spawn(async move {
            task.run_until(heal_at + AFTER_HEAL).await;
            task.complete_one_by(heal_at + LIVENESS_WITHIN).await
        }));
    }

    let mut nemesis =
        Nemesis::new(&cluster, swarm.clone(), StdRng::seed_from_u64(rng.gen()), start);
    nemesis.run_until(heal_at).await;
    nemesis.heal();
    // A quarter of the runs that allow it heal only a majority first (a liveness core). Drawn
    // from its own generator, so the other runs of a seed are what they were before it.
    let mut core_rng = StdRng::seed_from_u64(seed ^ CORE_SALT);
    let core = if core_rng.gen_bool(0.25) { nemesis.isolate_core(&mut core_rng) } else { None };
    if let Some(c) = &core {
        targets.set(c.core.clone());
    }

    for (id, mut c) in clients.into_iter().enumerate() {
        // Meanwhile a node that refused its damaged disk at the heal's restart is rebuilt and
        // started again at once, as an operator would.
        let done = loop {
            tokio::select! {
                biased;
                r = &mut c => break r,
                _ = tokio::time::sleep(Duration::from_millis(100)) => restart_self_stopped(&cluster),
            }
        };
        match done {
            Ok(true) => {}
            Ok(false) => cluster.invariants.report(format!(
                "liveness: client {id} completed no operation within {}s of the heal{}",
                LIVENESS_WITHIN.as_secs(),
                core.as_ref().map_or(String::new(), |c| format!(
                    ", talking only to the majority {:?} while {:?} stayed {}",
                    c.core,
                    c.rest,
                    if c.crashed { "killed" } else { "cut off" }
                ))
            )),
            Err(e) => cluster.invariants.report(format!("client {id} task failed: {e}")),
        }
    }
    if let Some(c) = &core {
        nemesis.end_core(c);
        targets.set(cluster.ids());
    }
    let schedule = std::mem::take(&mut nemesis.schedule);
    let converged_after = converge(&cluster).await;

    for what in recorder.invalid_replies() {
        cluster.invariants.report(format!("invalid reply: {what}"));
    }
    let history = recorder.history();
    cluster.invariants.fold(&history);
    let check = check::check(&history, &opts.check);
    let (compactions, installs) = cluster.invariants.snapshot_counts();
    RunReport {
        config,
        compactions,
        installs,
        transfers: cluster.invariants.transfer_counts(),
        memberships: cluster.invariants.membership_counts(),
        core,
        reach: [0; Path::ALL.len()],
        seed,
        nodes,
        clients: workload.clients,
        keys: workload.keys,
        swarm,
        fault_phase,
        schedule,
        history,
        violations: cluster.invariants.violations(),
        check,
        trace_hash: cluster.invariants.trace_hash(),
        converged_after,
    }
}

/// After the heal: a node that refused its damaged disk had it wiped (the operator's repair)
/// and starts again.
fn restart_self_stopped(cluster: &SimCluster) {
    for id in cluster.take_self_stopped() {
        cluster.kill(id);
        cluster.restart(id);
    }
}

/// An element record whose collection no key holds (a write that replaced or deleted a
/// collection and left its elements behind), as a hex key; None when there is none.
fn leaked_element(
    kv: &BTreeMap<Vec<u8>, Vec<u8>>,
    elements: &BTreeMap<Vec<u8>, Vec<u8>>,
) -> Option<String> {
    let ids: std::collections::HashSet<u64> = kv
        .values()
        .filter_map(|v| match raft_kv_core::kv::Record::decode(v)?.data {
            raft_kv_core::kv::Data::Coll(c) => Some(c.id),
            raft_kv_core::kv::Data::Str(_) => None,
        })
        .collect();
    elements
        .keys()
        .find(|k| {
            k.len() < 8 || !ids.contains(&u64::from_be_bytes(k[..8].try_into().expect("8 bytes")))
        })
        .map(|k| k.iter().map(|b| format!("{b:02x}")).collect())
}

/// Waits until every node has applied the same index with the same key space; returns how
/// long that took (None: it did not, and a violation is recorded).
async fn converge(cluster: &SimCluster) -> Option<Duration> {
    let start = Instant::now();
    let deadline = start + CONVERGENCE_WITHIN;
    loop {
        restart_self_stopped(cluster);
        // Nodes removed (or never added) stop receiving the log: only members must agree.
        let members = cluster.membership();
        let storages: BTreeMap<_, _> =
            cluster.storages.iter().filter(|(id, _)| members.contains(**id)).collect();
        let applied: Vec<_> = storages.values().map(|s| s.applied()).collect();
        let same_index = applied.windows(2).all(|w| w[0] == w[1]);
        if same_index {
            let states: Vec<_> =
                storages.values().map(|s| (s.snapshot_kv(), s.snapshot_elements())).collect();
            if states.windows(2).all(|w| w[0] == w[1]) {
                if let Some(leak) = leaked_element(&states[0].0, &states[0].1) {
                    cluster.invariants.report(format!(
                        "leaked element: at applied index {} element record {leak} belongs to no collection",
                        applied[0]
                    ));
                    return None;
                }
                return Some(start.elapsed());
            }
            cluster.invariants.report(format!(
                "divergence: every node applied index {} but their key spaces (or elements) differ",
                applied[0]
            ));
            return None;
        }
        if Instant::now() >= deadline {
            let by_node: Vec<String> =
                storages.iter().map(|(id, s)| format!("node {id}: {}", s.applied())).collect();
            cluster.invariants.report(format!(
                "convergence: nodes did not reach the same applied index within {}s of the heal: {}",
                CONVERGENCE_WITHIN.as_secs(),
                by_node.join(", ")
            ));
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
