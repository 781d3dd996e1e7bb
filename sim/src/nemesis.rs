//! The nemesis: faults chosen per seed, swarm style. Each seed enables a random subset of fault
//! kinds at random intensities, so across seeds every combination gets runs where it dominates
//! and runs where it is absent. Every action is written to a schedule, printed on failure.

use crate::client::{Client, Value};
use crate::cluster::{redis_addr, SimCluster};
use crate::faults::MessageChaos;
use raft_kv_core::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// Which faults a run injects, and how hard.
#[derive(Clone, Debug, PartialEq)]
pub struct Swarm {
    /// Symmetric partitions: random halves, the leader isolated, minority islands.
    pub partitions: bool,
    /// One-way link cuts.
    pub one_way: bool,
    /// Crash (losing unsynced writes) and restart.
    pub crashes: bool,
    /// Process kill and restart (unsynced writes survive in the OS).
    pub kills: bool,
    /// A node's disk is wiped (replaced) and it restarts empty under its old id.
    pub wipes: bool,
    /// Every running node crashes at once (a power loss of the whole cluster), each losing
    /// part of its unsynced writes: what a node acknowledged before its sync is gone.
    pub power_loss: bool,
    /// A node's disk fails every sync for a while (then it is crashed, losing what it never
    /// synced, and restarted): a correct node stops at the first failure.
    pub sync_failures: bool,
    /// A stopped node's disk comes back with one record damaged (a flipped bit): a correct
    /// node refuses it at start, and is rebuilt from its peers (the disk wiped).
    pub damage: bool,
    /// A node's disk is nearly full for a while: it takes no writes and no new entries.
    pub disk_full: bool,
    pub pauses: bool,
    /// Message loss, delay (reordering) and duplication.
    pub messages: bool,
    pub clock_skew: bool,
    /// Clients cut off from a node (their requests and replies wait in the network).
    pub client_cuts: bool,
    /// Leader churn: every new leader is crashed a few milliseconds after it appears, so
    /// terms pile up with partly replicated entries (where Figure 8's trap lives).
    pub leader_churn: bool,
    /// RAFT.TRANSFER-LEADER sent to a random node for a random target.
    pub transfers: bool,
    /// RAFT.NODE ADD of a spare host, or RAFT.NODE REMOVE of a member (the leader too), sent
    /// to a random node.
    pub membership: bool,
    /// Mean time between nemesis actions.
    pub interval: Duration,
    /// How long a fault lasts, at most.
    pub fault_max: Duration,
}

impl Swarm {
    pub fn choose(rng: &mut StdRng) -> Swarm {
        let mut s = Swarm {
            partitions: rng.gen_bool(0.5),
            one_way: rng.gen_bool(0.4),
            crashes: rng.gen_bool(0.5),
            kills: rng.gen_bool(0.3),
            power_loss: rng.gen_bool(0.3),
            wipes: rng.gen_bool(0.2),
            pauses: rng.gen_bool(0.3),
            messages: rng.gen_bool(0.5),
            clock_skew: rng.gen_bool(0.5),
            leader_churn: rng.gen_bool(0.3),
            client_cuts: rng.gen_bool(0.3),
            transfers: rng.gen_bool(0.4),
            membership: rng.gen_bool(0.4),
            sync_failures: rng.gen_bool(0.2),
            damage: rng.gen_bool(0.2),
            disk_full: rng.gen_bool(0.2),
            interval: Duration::from_millis(rng.gen_range(100..1500)),
            fault_max: Duration::from_millis(rng.gen_range(300..4000)),
        };
        // One in eight runs has no fault at all: the baseline must hold too.
        if rng.gen_bool(0.125) {
            s = Swarm { interval: s.interval, fault_max: s.fault_max, ..Swarm::none() };
        }
        s
    }

    pub fn none() -> Swarm {
        Swarm {
            partitions: false,
            one_way: false,
            crashes: false,
            kills: false,
            power_loss: false,
            wipes: false,
            pauses: false,
            messages: false,
            clock_skew: false,
            leader_churn: false,
            client_cuts: false,
            transfers: false,
            membership: false,
            sync_failures: false,
            damage: false,
            disk_full: false,
            interval: Duration::from_secs(1),
            fault_max: Duration::from_secs(1),
        }
    }

    fn kinds(&self) -> Vec<Kind> {
        let mut k = Vec::new();
        let flags = [
            (self.partitions, Kind::Partition),
            (self.one_way, Kind::OneWay),
            (self.crashes, Kind::Crash),
            (self.kills, Kind::Kill),
            (self.power_loss, Kind::PowerLoss),
            (self.wipes, Kind::Wipe),
            (self.pauses, Kind::Pause),
            (self.messages, Kind::Messages),
            (self.clock_skew, Kind::Skew),
            (self.leader_churn, Kind::Churn),
            (self.client_cuts, Kind::ClientCut),
            (self.transfers, Kind::Transfer),
            (self.membership, Kind::Membership),
            (self.sync_failures, Kind::SyncFail),
            (self.damage, Kind::Damage),
            (self.disk_full, Kind::DiskFull),
        ];
        for (on, kind) in flags {
            if on {
                k.push(kind);
            }
        }
        // Membership changes weigh three: a run sees only a few actions of each kind, and the
        // risky changes (two voters at once, from five) need a few changes before them.
        if self.membership {
            k.extend([Kind::Membership; 2]);
        }
        // A power loss needs a write in flight to find anything: it gets a second chance.
        if self.power_loss {
            k.push(Kind::PowerLoss);
        }
        k
    }
}

impl Swarm {
    /// The names of the fault kinds this swarm enables, each once.
    pub fn kind_names(&self) -> Vec<String> {
        let mut kinds: Vec<String> = Vec::new();
        for k in self.kinds() {
            let name = format!("{k:?}");
            if !kinds.contains(&name) {
                kinds.push(name);
            }
        }
        kinds
    }
}

impl fmt::Display for Swarm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds = self.kind_names();
        let kinds = if kinds.is_empty() { "none".to_string() } else { kinds.join(",") };
        write!(
            f,
            "faults [{kinds}] every ~{}ms lasting <= {}ms",
            self.interval.as_millis(),
            self.fault_max.as_millis()
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Partition,
    OneWay,
    Crash,
    Kill,
    PowerLoss,
    Wipe,
    Pause,
    Messages,
    Skew,
    Churn,
    ClientCut,
    Transfer,
    Membership,
    SyncFail,
    Damage,
    DiskFull,
}

/// A fault in force, undone at `until`.
enum Active {
    Partition,
    Cut(NodeId, NodeId),
    Down(NodeId),
    Paused(NodeId),
    Messages,
    Skew(NodeId),
    Churn,
    ClientCut(NodeId),
    /// The node's syncs fail.
    SyncFail(NodeId),
    /// The node's disk is nearly full.
    DiskFull(NodeId),
    /// Not a fault yet: at its time, the cluster is split the way membership changes from
    /// the first membership to the second could go wrong (`split_after_changes`).
    SplitAfterChanges(raft_kv_core::Membership, raft_kv_core::Membership),
}

/// A run's liveness core: the majority that must serve, and the nodes kept out meanwhile.
#[derive(Clone, Debug)]
pub struct Core {
    pub core: Vec<NodeId>,
    pub rest: Vec<NodeId>,
    /// Killed rather than cut off.
    pub crashed: bool,
}

pub struct Nemesis<'a> {
    cluster: &'a SimCluster,
    swarm: Swarm,
    rng: StdRng,
    start: Instant,
    active: Vec<(Instant, Active)>,
    /// The last leader churn saw, and when it will crash it.
    churn_target: Option<(raft_kv_core::Term, NodeId, Instant)>,
    /// A power loss waits for unsynced writes, until this time at most.
    power_loss_at: Option<Instant>,
    pub schedule: Vec<String>,
}

/// Clock rates the skew nemesis draws from (relative to true time).
pub const SKEW_RATE_MIN: f64 = 0.5;
pub const SKEW_RATE_MAX: f64 = 2.0;

/// The latest a skewed node's next tick may fire: two election timeouts of the simulation.
const STALL_MAX_US: u64 = 1_000_000;

/// How often the nemesis looks for a new leader during leader churn, and for unsynced writes
/// before a power loss.
const CHURN_POLL: Duration = Duration::from_millis(2);

/// A power loss waits at most this long for a committed entry synced on no majority.
const POWER_LOSS_WAIT_MAX: Duration = Duration::from_millis(500);

impl<'a> Nemesis<'a> {
    pub fn new(cluster: &'a SimCluster, swarm: Swarm, rng: StdRng, start: Instant) -> Self {
        Nemesis {
            cluster,
            swarm,
            rng,
            start,
            active: Vec::new(),
            churn_target: None,
            power_loss_at: None,
            schedule: Vec::new(),
        }
    }

    fn log(&mut self, what: String) {
        let at = self.start.elapsed().as_secs_f64() * 1000.0;
        self.cluster.invariants.fold(&what);
        self.schedule.push(format!("{at:>9.3}ms  {what}"));
    }

    fn fault_length(&mut self) -> Duration {
        let max = self.swarm.fault_max.as_micros().max(2) as u64;
        Duration::from_micros(self.rng.gen_range(max / 10..max))
    }

    /// Injects faults until simulated time `until`.
    pub async fn run_until(&mut self, until: Instant) {
        let kinds = self.swarm.kinds();
        if kinds.is_empty() {
            tokio::time::sleep_until(until).await;
            return;
        }
        // Clock skew is a property of a node for the whole run, then re-drawn now and then.
        if self.swarm.clock_skew {
            for id in self.cluster.ids() {
                self.skew(id);
            }
        }
        loop {
            let mean = self.swarm.interval.as_micros().max(2) as u64;
            let wait = Duration::from_micros(self.rng.gen_range(mean / 2..mean * 3 / 2));
            let next = Instant::now() + wait;
            if next >= until {
                self.sleep_until(until).await;
                return;
            }
            self.sleep_until(next).await;
            self.expire(false);
            let kind = *kinds.choose(&mut self.rng).expect("kinds is not empty");
            self.inject(kind);
        }
    }

    /// Sleeps until `next`, undoing each fault when its time is up, and while leader churn is
    /// on or a power loss waits for its moment, waking every `CHURN_POLL` to act.
    async fn sleep_until(&mut self, next: Instant) {
        loop {
            let polling = self.active.iter().any(|(_, a)| matches!(a, Active::Churn))
                || self.power_loss_at.is_some();
            let mut wake = next;
            if let Some(end) = self.active.iter().map(|(t, _)| *t).min() {
                wake = wake.min(end);
            }
            if polling {
                wake = wake.min(Instant::now() + CHURN_POLL);
            }
            tokio::time::sleep_until(wake).await;
            self.reap_self_stopped();
            self.expire(false);
            if polling {
                self.churn();
                self.maybe_power_loss();
            }
            if Instant::now() >= next {
                return;
            }
        }
    }

    /// Crashes every running node at once, each losing part of its unsynced writes, once a
    /// committed entry is synced on no majority (or the wait is over); all come back
    /// together.
    fn maybe_power_loss(&mut self) {
        let Some(deadline) = self.power_loss_at else { return };
        let c = self.cluster;
        let up: Vec<NodeId> =
            c.ids().into_iter().filter(|id| !c.is_down(*id) && !c.paused().contains(id)).collect();
        let unsynced: usize = up.iter().map(|id| c.storages[id].unsynced_writes()).sum();
        // The moment to strike: the newest entry some node applied (so committed, perhaps
        // acknowledged) is on disk on fewer nodes than a majority of the voters. Correct nodes
        // never let that happen (barring membership changes in flight); then the loss strikes
        // at the deadline.
        let majority = c.membership().voters.len() / 2 + 1;
        let newest =
            c.storages.values().filter_map(|s| s.entry(s.applied())).max_by_key(|e| e.index);
        let exposed = newest.is_some_and(|e| {
            let synced = c.storages.values().filter(|s| s.synced_holds(e.index, e.term)).count();
            synced < majority
        });
        if !exposed && Instant::now() < deadline {
            return;
        }
        self.power_loss_at = None;
        let until = Instant::now() + self.fault_length();
        let mut lost = 0;
        for &id in &up {
            let unsynced = c.storages[&id].unsynced_writes();
            let survivors = self.rng.gen_range(0..=unsynced);
            lost += c.crash(id, survivors);
            self.active.push((until, Active::Down(id)));
        }
        self.log(format!("power loss of nodes {up:?} (lost {lost} of {unsynced} unsynced writes)"));
    }

    /// Nodes that stopped at a failed sync are taken down (their host killed, so its ports
    /// are free) and restarted after a fault length.
    fn reap_self_stopped(&mut self) {
        for id in self.cluster.take_self_stopped() {
            self.cluster.kill(id);
            self.log(format!(
                "node {id} stopped itself (a failed sync, or a damaged disk now wiped)"
            ));
            self.hold(Active::Down(id));
        }
    }

    fn churn(&mut self) {
        // A crashed node's last report is forgotten, so this is a running leader.
        let Some((term, leader)) = self.cluster.invariants.leader() else { return };
        match self.churn_target {
            Some((t, id, at)) if t == term && id == leader => {
                if Instant::now() >= at {
                    let unsynced = self.cluster.storages[&leader].unsynced_writes();
                    let survivors = self.rng.gen_range(0..=unsynced);
                    self.cluster.crash(leader, survivors);
                    self.log(format!("churn: crash leader {leader} of term {term}"));
                    let back = Instant::now() + Duration::from_millis(self.rng.gen_range(20..400));
                    self.active.push((back, Active::Down(leader)));
                    self.churn_target = None;
                }
            }
            _ => {
                let after = Duration::from_micros(self.rng.gen_range(0..40_000));
                self.churn_target = Some((term, leader, Instant::now() + after));
            }
        }
    }

    /// Undoes faults whose time is up (all of them if `all`).
    fn expire(&mut self, all: bool) {
        let now = Instant::now();
        let (done, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.active).into_iter().partition(|(t, _)| all || *t <= now);
        self.active = keep;
        for (_, fault) in done {
            if all && matches!(fault, Active::SplitAfterChanges(..)) {
                continue; // healing everything: a split still to come is dropped
            }
            self.undo(fault);
        }
    }

    fn undo(&mut self, fault: Active) {
        let c = self.cluster;
        match fault {
            Active::Partition => {
                c.heal_partitions();
                self.log("heal partition".into());
            }
            Active::Cut(a, b) => {
                c.faults.uncut(a, b);
                self.log(format!("heal link {a}->{b}"));
            }
            Active::Down(id) => {
                if c.is_down(id) {
                    c.restart(id);
                    self.log(format!("restart node {id}"));
                }
            }
            Active::Paused(id) => {
                if c.paused().contains(&id) {
                    c.resume(id);
                    self.log(format!("resume node {id}"));
                }
            }
            Active::Messages => {
                c.faults.set_chaos(MessageChaos::default());
                self.log("message faults off".into());
            }
            Active::Skew(id) => {
                c.clocks[&id].set_rate(1.0);
                self.log(format!("clock of node {id} true again"));
            }
            Active::Churn => {
                self.churn_target = None;
                self.log("leader churn off".into());
            }
            Active::ClientCut(id) => {
                c.reconnect_clients(id);
                self.log(format!("clients reach node {id} again"));
            }
            Active::SyncFail(id) => {
                // The disk is replaced: what the node never synced is gone. A node that went
                // on as if its syncs had worked loses what it acknowledged.
                c.storages[&id].set_syncs_fail(false);
                if c.is_down(id) {
                    self.log(format!("syncs of node {id} work again"));
                } else {
                    let lost = c.crash(id, 0);
                    self.log(format!(
                        "syncs of node {id} work again; crash it (lost {lost} unsynced writes)"
                    ));
                    self.hold(Active::Down(id));
                }
            }
            Active::DiskFull(id) => {
                c.storages[&id].set_free_bytes(None);
                self.log(format!("disk of node {id} has room again"));
            }
            Active::SplitAfterChanges(from, to) => {
                if self.active.iter().any(|(_, a)| matches!(a, Active::Partition)) {
                    return;
                }
                let groups = self.split_after_changes(&from, &to);
                c.partition(&groups);
                self.hold(Active::Partition);
                let (a, b) = (from.members().collect::<Vec<_>>(), to.members().collect::<Vec<_>>());
                self.log(format!("partition {groups:?} after membership changes {a:?} -> {b:?}"));
            }
        }
    }

    /// Keeps `fault` in force for a random fault length.
    fn hold(&mut self, fault: Active) {
        let until = Instant::now() + self.fault_length();
        self.active.push((until, fault));
    }

    fn inject(&mut self, kind: Kind) {
        let c = self.cluster;
        let mut ids = c.ids();
        ids.shuffle(&mut self.rng);
        let mut up: Vec<NodeId> =
            ids.iter().copied().filter(|id| !c.is_down(*id) && !c.paused().contains(id)).collect();
        // Half the time a crash, kill or pause hits the leader: its faults matter most.
        if let Some((_, leader)) = c.invariants.leader() {
            if self.rng.gen_bool(0.5) && up.contains(&leader) {
                up.retain(|id| *id != leader);
                up.insert(0, leader);
            }
        }
        match kind {
            Kind::Partition => {
                if self.active.iter().any(|(_, a)| matches!(a, Active::Partition)) {
                    return;
                }
                let groups = self.partition_groups(&ids);
                c.partition(&groups);
                self.hold(Active::Partition);
                self.log(format!("partition {groups:?}"));
            }
            Kind::OneWay => {
                let (a, b) = (ids[0], ids[1]);
                if c.faults.is_cut(a, b) {
                    return;
                }
                c.faults.cut(a, b);
                self.hold(Active::Cut(a, b));
                self.log(format!("cut link {a}->{b}"));
            }
            Kind::SyncFail => {
                let Some(&id) = up.first() else { return };
                if self.active.iter().any(|(_, a)| matches!(a, Active::SyncFail(n) if *n == id)) {
                    return;
                }
                c.storages[&id].set_syncs_fail(true);
                self.hold(Active::SyncFail(id));
                self.log(format!("syncs of node {id} fail"));
            }
            Kind::Crash | Kind::Kill => {
                let Some(&id) = up.first() else { return };
                if kind == Kind::Crash {
                    let unsynced = c.storages[&id].unsynced_writes();
                    let survivors = self.rng.gen_range(0..=unsynced);
                    let lost = c.crash(id, survivors);
                    self.log(format!(
                        "crash node {id} (lost {lost} of {unsynced} unsynced writes)"
                    ));
                } else {
                    c.kill(id);
                    self.log(format!("kill node {id}"));
                }
                self.hold(Active::Down(id));
            }
            Kind::Wipe => {
                let Some(&id) = up.first() else { return };
                if !self.may_lose_disk(id) {
                    return;
                }
                c.wipe(id);
                self.log(format!("wipe node {id}'s disk"));
                self.hold(Active::Down(id));
            }
            Kind::DiskFull => {
                let Some(&id) = up.first() else { return };
                if self.active.iter().any(|(_, a)| matches!(a, Active::DiskFull(n) if *n == id)) {
                    return;
                }
                c.storages[&id].set_free_bytes(Some(0));
                self.hold(Active::DiskFull(id));
                self.log(format!("disk of node {id} nearly full"));
            }
            Kind::Damage => {
                // The disk comes back from a crash with a record damaged. The node refuses it
                // and is rebuilt from its peers (its disk wiped), so only where a wipe may
                // strike; one damaged disk at a time.
                let Some(&id) = up.first() else { return };
                if !self.may_lose_disk(id) || c.storages.values().any(|s| s.damaged()) {
                    return;
                }
                let unsynced = c.storages[&id].unsynced_writes();
                let survivors = self.rng.gen_range(0..=unsynced);
                let lost = c.crash(id, survivors);
                let what = c.storages[&id].damage(self.rng.gen());
                self.log(format!(
                    "crash node {id} (lost {lost} of {unsynced} unsynced writes); damage {}",
                    what.as_deref().unwrap_or("nothing (its disk is empty)")
                ));
                self.hold(Active::Down(id));
            }
            Kind::PowerLoss => {
                // Struck when a committed entry is on disk on no majority (or the wait
                // ends): a power loss while the disks are idle tests little.
                if self.power_loss_at.is_none() {
                    self.power_loss_at = Some(Instant::now() + POWER_LOSS_WAIT_MAX);
                }
            }
            Kind::Pause => {
                let Some(&id) = up.first() else { return };
                c.pause(id);
                self.hold(Active::Paused(id));
                self.log(format!("pause node {id}"));
            }
            Kind::Messages => {
                if self.active.iter().any(|(_, a)| matches!(a, Active::Messages)) {
                    return;
                }
                let chaos = MessageChaos {
                    loss: self.rng.gen_range(0.0..0.3),
                    duplicate: self.rng.gen_range(0.0..0.2),
                    delay: self.rng.gen_range(0.0..0.5),
                    // Now and then long enough to outlive an election or a request.
                    delay_max: Duration::from_millis(if self.rng.gen_bool(0.2) {
                        self.rng.gen_range(300..3000)
                    } else {
                        self.rng.gen_range(1..300)
                    }),
                };
                c.faults.set_chaos(chaos);
                self.hold(Active::Messages);
                self.log(format!(
                    "message faults: loss {:.2} duplicate {:.2} delay {:.2} up to {}ms",
                    chaos.loss,
                    chaos.duplicate,
                    chaos.delay,
                    chaos.delay_max.as_millis()
                ));
            }
            Kind::ClientCut => {
                let id = ids[0];
                if self.active.iter().any(|(_, a)| matches!(a, Active::ClientCut(n) if *n == id)) {
                    return;
                }
                c.cut_clients(id);
                self.hold(Active::ClientCut(id));
                self.log(format!("clients cut off from node {id}"));
            }
            Kind::Churn => {
                if self.active.iter().any(|(_, a)| matches!(a, Active::Churn)) {
                    return;
                }
                self.hold(Active::Churn);
                self.log("leader churn on".into());
            }
            Kind::Skew => match c.invariants.leader() {
                // Half the time the worst case for a leader lease: the leader's clock at the
                // slowest rate, every other clock at the fastest.
                Some((_, leader)) if self.rng.gen_bool(0.5) => {
                    let until = Instant::now() + self.fault_length();
                    for id in c.ids() {
                        let rate = if id == leader { SKEW_RATE_MIN } else { SKEW_RATE_MAX };
                        c.clocks[&id].set_rate(rate);
                        self.active.push((until, Active::Skew(id)));
                    }
                    self.log(format!(
                        "clock of leader {leader} at {SKEW_RATE_MIN}x, every other clock at {SKEW_RATE_MAX}x"
                    ));
                    // Half the time the leader's timer also fires late, as after a stalled
                    // task: its tick count lags its clock (issue 13.4).
                    if self.rng.gen_bool(0.5) {
                        let stall = Duration::from_micros(self.rng.gen_range(0..STALL_MAX_US));
                        c.clocks[&leader].shift(stall);
                        self.log(format!(
                            "ticks of leader {leader} late by {}ms",
                            stall.as_millis()
                        ));
                    }
                    // And half the time the rest of a lease attack: the slow leader cut off
                    // from its peers (not from clients) while the fast ones elect another.
                    let partitioned =
                        self.active.iter().any(|(_, a)| matches!(a, Active::Partition));
                    if !partitioned && self.rng.gen_bool(0.5) {
                        let rest: Vec<NodeId> =
                            c.ids().into_iter().filter(|id| *id != leader).collect();
                        let groups = vec![vec![leader], rest];
                        c.partition(&groups);
                        self.active.push((until, Active::Partition));
                        self.log(format!("partition {groups:?}"));
                    }
                }
                _ => {
                    let id = ids[0];
                    self.skew(id);
                    self.hold(Active::Skew(id));
                }
            },
            Kind::Membership => {
                // Now and then a burst of two changes through two nodes at once, as racing
                // operators or tools send them: the second must wait or be refused.
                let burst = if self.rng.gen_bool(0.5) { 2 } else { 1 };
                let from = c.membership();
                let mut m = from.clone();
                for k in 0..burst {
                    let Some((args, next)) = self.membership_action(&m, &ids, burst > 1) else {
                        break;
                    };
                    m = next;
                    let via = ids[k % ids.len()];
                    self.log(format!("ask node {via}: RAFT.NODE {}", args.join(" ")));
                    send_membership(c, via, args);
                }
                // Often a split soon after, while the changes (and the promotions of new
                // learners) are still being appended.
                if m != from && self.rng.gen_bool(if burst > 1 { 0.8 } else { 0.2 }) {
                    let after = Duration::from_micros(self.rng.gen_range(2_000..50_000));
                    self.active.push((Instant::now() + after, Active::SplitAfterChanges(from, m)));
                }
            }
            Kind::Transfer => {
                let (via, to) = (ids[0], *ids.choose(&mut self.rng).expect("not empty"));
                self.log(format!("ask node {via} to transfer leadership to node {to}"));
                let invariants = c.invariants.clone();
                c.client.spawn(async move {
                    let timeout = Duration::from_secs(10);
                    let Ok(mut con) = Client::connect(redis_addr(via), timeout).await else {
                        return;
                    };
                    let to = to.0.to_string();
                    match con.call(&[b"RAFT.TRANSFER-LEADER", to.as_bytes()]).await {
                        Ok(Value::Ok(s)) if s == "OK" => invariants.transfer_answered(true),
                        Ok(Value::Err(e))
                            if e.starts_with("ERR leadership transfer")
                                || e.starts_with("ERR node")
                                || e.starts_with("ERR the node is shutting down")
                                || e.starts_with("CLUSTERDOWN") =>
                        {
                            invariants.transfer_answered(false)
                        }
                        Ok(other) => invariants.report(format!(
                            "RAFT.TRANSFER-LEADER {to} via node {via} answered {other:?}"
                        )),
                        Err(_) => {} // the node or the link went down
                    }
                });
            }
        }
    }

    /// A membership change to ask for, and the membership it would give: grow while there is
    /// a spare, shrink while there are more members than at the start. In a `burst`, shrink
    /// whenever it may.
    /// Whether node `id` may lose its disk (wiped, or damaged and so rebuilt): no other disk is
    /// damaged, every committed entry stays on the disks of a majority of the voters without
    /// it, and a majority of them can vote. A second loss before the first node caught up could destroy the only copies;
    /// no system survives that.
    fn may_lose_disk(&self, id: NodeId) -> bool {
        let c = self.cluster;
        // A damaged disk not yet refused and rebuilt is as good as lost already.
        if c.storages.iter().any(|(n, s)| *n != id && s.damaged()) {
            return false;
        }
        let voters = c.membership().voters;
        let majority = voters.len() / 2 + 1;
        let newest =
            c.storages.values().filter_map(|s| s.entry(s.applied())).max_by_key(|e| e.index);
        let held = newest.map_or(voters.len(), |e| {
            let holds = |v: &NodeId| c.storages[v].synced_holds(e.index, e.term);
            voters.iter().filter(|v| **v != id && holds(v)).count()
        });
        // A wiped node votes again only once a leader caught it up, and a leader needs a
        // majority.
        let voting = voters.iter().filter(|v| **v != id && c.storages[v].may_vote()).count();
        held >= majority && voting >= majority
    }

    fn membership_action(
        &mut self,
        m: &raft_kv_core::Membership,
        ids: &[NodeId],
        burst: bool,
    ) -> Option<(Vec<String>, raft_kv_core::Membership)> {
        let outsiders: Vec<NodeId> = ids.iter().copied().filter(|id| !m.contains(*id)).collect();
        let initial = self.cluster.initial_voters.len();
        let members = m.voters.len() + m.learners.len();
        // A burst removes while it can: two voters at once is the riskiest change.
        let grow = !outsiders.is_empty()
            && if burst {
                members <= initial
            } else {
                m.voters.len() <= initial || self.rng.gen_bool(0.5)
            };
        let (args, change) = if grow {
            let id = outsiders[0];
            let addr =
                std::net::SocketAddr::new(crate::cluster::node_ip(id), crate::cluster::RAFT_PORT);
            let change = raft_kv_core::MembershipChange::AddLearner { id, addr: addr.to_string() };
            (vec!["ADD".into(), id.0.to_string(), addr.to_string()], change)
        } else if members > initial {
            let mut members: Vec<NodeId> = m.members().collect();
            members.shuffle(&mut self.rng);
            let id = members[0];
            (vec!["REMOVE".into(), id.0.to_string()], raft_kv_core::MembershipChange::Remove { id })
        } else {
            return None;
        };
        let next = m.apply(&change).unwrap_or_else(|_| m.clone());
        // A node that came back with nothing on disk votes again only once a leader caught it
        // up (`Config::check_empty_start`); a removal that leaves too few others able to vote
        // could leave no majority to elect that leader, for good. Operators face the same
        // rule: shrink the voters only while every one of them can vote.
        if matches!(change, raft_kv_core::MembershipChange::Remove { .. }) {
            let able = next.voters.iter().filter(|v| self.cluster.storages[v].may_vote()).count();
            if able < next.voters.len() / 2 + 1 {
                return None;
            }
        }
        Some((args, next))
    }

    /// Splits the hosts after membership changes from `from` towards `to` (new learners
    /// counted as the voters they will be promoted to): the leader with just a majority of `to`,
    /// newcomers first, and everyone else on the other side. Any majority of `to` must share a
    /// node with every majority of `from`'s voters only if the changes were made one at a
    /// time; otherwise both sides can elect and commit.
    fn split_after_changes(
        &mut self,
        from: &raft_kv_core::Membership,
        to: &raft_kv_core::Membership,
    ) -> Vec<Vec<NodeId>> {
        let mut ids = self.cluster.ids();
        ids.shuffle(&mut self.rng);
        let leader = self.cluster.invariants.leader().map(|(_, id)| id);
        let Some(leader) = leader.filter(|l| to.contains(*l)) else {
            let cut = ids.len() / 2;
            return vec![ids[..cut].to_vec(), ids[cut..].to_vec()];
        };
        let mut others: Vec<NodeId> = to.members().filter(|id| *id != leader).collect();
        others.shuffle(&mut self.rng);
        others.sort_by_key(|id| from.is_voter(*id)); // newcomers first (stable)
        let mut side = vec![leader];
        side.extend(others.into_iter().take(to.members().count() / 2));
        let rest = ids.into_iter().filter(|id| !side.contains(id)).collect();
        vec![side, rest]
    }

    fn skew(&mut self, id: NodeId) {
        let rate = self.rng.gen_range(SKEW_RATE_MIN..SKEW_RATE_MAX);
        // The clock's phase shifts too: its next tick fires late (now and then as late as
        // after a stalled task), while its monotonic clock runs on. A leader judges its lease
        // by that clock, so late ticks must not extend it (issue 13.4).
        let max = if self.rng.gen_bool(0.3) { STALL_MAX_US } else { 200_000 };
        let offset = Duration::from_micros(self.rng.gen_range(0..max));
        // Wall clocks (which stamp the log, and so decide expiry) up to 3 s apart.
        let wall = self.rng.gen_range(-3_000..=3_000);
        self.cluster.clocks[&id].set_rate(rate);
        self.cluster.clocks[&id].shift(offset);
        self.cluster.clocks[&id].set_wall_offset(wall);
        self.log(format!(
            "clock of node {id}: rate {rate:.2}x, next tick +{}ms, wall {wall:+}ms",
            offset.as_millis()
        ));
    }

    /// Random halves, the likely leader alone, or islands of at most a minority each.
    fn partition_groups(&mut self, shuffled: &[NodeId]) -> Vec<Vec<NodeId>> {
        let n = shuffled.len();
        match self.rng.gen_range(0..3) {
            0 => {
                let cut = n / 2;
                vec![shuffled[..cut].to_vec(), shuffled[cut..].to_vec()]
            }
            1 => {
                let leader = self.cluster.invariants.leader().map_or(shuffled[0], |(_, id)| id);
                let rest = shuffled.iter().copied().filter(|id| *id != leader).collect();
                vec![vec![leader], rest]
            }
            _ => {
                // Every node in an island of at most n/2: no quorum anywhere.
                let mut groups: Vec<Vec<NodeId>> = Vec::new();
                let mut i = 0;
                while i < n {
                    let size = self.rng.gen_range(1..=(n / 2).max(1)).min(n - i);
                    groups.push(shuffled[i..i + size].to_vec());
                    i += size;
                }
                groups
            }
        }
    }

    /// TigerBeetle's "liveness core": after the heal, a random majority of the voters is
    /// healed while the others stay crashed or cut off (from the core and from the clients),
    /// and the clients, talking only to the core, must each complete an operation within the
    /// liveness bound. The core is drawn from the voters that may vote by what their disks
    /// hold: a node with a blank disk (wiped, or never reached by a leader) waits for every
    /// voter to tell it their terms before it votes or answers a leader, so a majority that
    /// needs it rightly stalls while another voter is away. Not in runs with damaged disks (a
    /// damaged node is rebuilt blank at the heal) or membership changes (one still in flight
    /// could remove a core member).
    pub fn isolate_core(&mut self, rng: &mut StdRng) -> Option<Core> {
        if self.swarm.damage || self.swarm.membership {
            return None;
        }
        let voters: Vec<NodeId> = self.cluster.membership().voters.into_iter().collect();
        let size = voters.len() / 2 + 1;
        let able: Vec<NodeId> =
            voters.into_iter().filter(|id| self.cluster.storages[id].may_vote()).collect();
        if able.len() < size {
            return None;
        }
        let mut core: Vec<NodeId> = able.choose_multiple(rng, size).copied().collect();
        core.sort();
        let rest: Vec<NodeId> =
            self.cluster.ids().into_iter().filter(|id| !core.contains(id)).collect();
        let crashed = rng.gen_bool(0.5);
        if crashed {
            for &id in &rest {
                self.cluster.kill(id);
            }
        } else {
            self.cluster.partition(&[core.clone(), rest.clone()]);
            for &id in &rest {
                self.cluster.cut_clients(id);
            }
        }
        let how = if crashed { "killed" } else { "cut off" };
        self.log(format!("liveness core {core:?}: nodes {rest:?} stay {how}"));
        Some(Core { core, rest, crashed })
    }

    /// Ends a liveness core phase: the nodes kept out come back.
    pub fn end_core(&mut self, c: &Core) {
        if c.crashed {
            for &id in &c.rest {
                self.cluster.restart(id);
            }
        } else {
            self.cluster.heal_partitions();
            for &id in &c.rest {
                self.cluster.reconnect_clients(id);
            }
        }
        self.log(format!("liveness core ends: nodes {:?} are back", c.rest));
    }

    /// Ends every fault.
    pub fn heal(&mut self) {
        self.power_loss_at = None;
        self.reap_self_stopped();
        self.expire(true);
        self.cluster.heal_all();
        self.log("heal everything".into());
    }
}

/// Sends RAFT.NODE `args` to node `via` from the client host and checks the answer's shape.
fn send_membership(c: &SimCluster, via: NodeId, args: Vec<String>) {
    let invariants = c.invariants.clone();
    c.client.spawn(async move {
        let timeout = Duration::from_secs(10);
        let Ok(mut con) = Client::connect(redis_addr(via), timeout).await else { return };
        let mut argv: Vec<&[u8]> = vec![b"RAFT.NODE"];
        argv.extend(args.iter().map(|a| a.as_bytes()));
        // "ERR the node is shutting down": the node stopped at a failed sync meanwhile.
        const EXPECTED: [&str; 7] = [
            "ERR node",
            "ERR the membership change",
            "ERR the node is shutting down",
            "BUSY",
            "CLUSTERDOWN",
            "TIMEOUT",
            "TRYAGAIN",
        ];
        match con.call(&argv).await {
            Ok(Value::Ok(s)) if s == "OK" => invariants.membership_answered(true),
            Ok(Value::Err(e)) if EXPECTED.iter().any(|p| e.starts_with(p)) => {
                invariants.membership_answered(false)
            }
            Ok(other) => invariants
                .report(format!("RAFT.NODE {} via node {via} answered {other:?}", args.join(" "))),
            Err(_) => {} // the node or the link went down
        }
    });
}
