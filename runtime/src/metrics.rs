//! The node's Prometheus metrics (issue 16): names, types and labels as
//! `docs/design/metrics.md` fixes them, one registry per node (no global state: the simulation
//! runs many nodes in one process). The node task, the connections, the transport, the sync
//! task and the snapshot streams update them; the binary serves `encode` on `/metrics`, and
//! `health` on `/readyz`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of every duration histogram: 100 us to 10 s, with 0.5 s among them
/// (the slow-fsync alert's threshold).
pub const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram_family<L: Clone + std::hash::Hash + Eq>() -> HistogramFamily<L> {
    Family::new_with_constructor(histogram as fn() -> Histogram)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Peer {
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandName {
    pub command: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorKind {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadMode {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ColumnFamily {
    pub cf: String,
}

/// Why a node is not ready (`/readyz`), or None when it is.
pub type NotReady = Option<String>;

/// INFO commandstats' line of one command.
#[derive(Clone, Copy, Debug, Default)]
pub struct CommandStat {
    pub calls: u64,
    pub usec: u64,
    /// Answered an error.
    pub failed: u64,
}

/// One SLOWLOG entry, as Redis keeps it.
#[derive(Clone, Debug)]
pub struct SlowEntry {
    pub id: u64,
    /// Unix seconds when the command finished.
    pub time: u64,
    pub usec: u64,
    /// At most 32 arguments (the last one then says how many more), each cut to 128 bytes.
    pub args: Vec<bytes::Bytes>,
    /// The client's address, and its name (CLIENT SETNAME; empty: none) as the command ended.
    pub client: String,
    pub client_name: bytes::Bytes,
}

/// LATENCY LATEST's record of one event.
#[derive(Clone, Copy, Debug, Default)]
pub struct LatencyEvent {
    /// Unix seconds of the latest sample.
    pub time: u64,
    pub latest_ms: u64,
    pub max_ms: u64,
}

/// What Redis's own monitoring reads (INFO stats, commandstats, errorstats, SLOWLOG,
/// LATENCY): kept beside the Prometheus metrics, in Redis's shapes.
#[derive(Default)]
pub struct RedisStats {
    pub commands: std::collections::BTreeMap<&'static str, CommandStat>,
    pub errors: std::collections::BTreeMap<String, u64>,
    pub total_commands: u64,
    pub total_errors: u64,
    pub keyspace_hits: u64,
    pub keyspace_misses: u64,
    /// (ms since the metrics' origin, total_commands): the last 16 samples, 100 ms apart.
    ops_samples: std::collections::VecDeque<(u64, u64)>,
    pub slowlog: std::collections::VecDeque<SlowEntry>,
    next_slow_id: u64,
    pub latency: std::collections::BTreeMap<&'static str, LatencyEvent>,
}

impl RedisStats {
    /// INFO's instantaneous_ops_per_sec: commands per second over the samples (about 1.6 s).
    pub fn ops_per_sec(&self) -> u64 {
        match (self.ops_samples.front(), self.ops_samples.back()) {
            (Some((t0, n0)), Some((t1, n1))) if t1 > t0 => (n1 - n0) * 1000 / (t1 - t0),
            _ => 0,
        }
    }
}

/// A finished command, as the metrics note it (`Metrics::command`).
pub struct Done<'a> {
    pub name: &'static str,
    pub took: std::time::Duration,
    pub error: Option<&'a str>,
    /// Whether it looked a key up and found it (Some(true)), found nothing (Some(false)), or
    /// is no lookup (None): INFO's keyspace_hits and keyspace_misses.
    pub lookup: Option<bool>,
    /// Its arguments as SLOWLOG keeps them (`slow_args`), and its client (None: not kept).
    pub args: Option<&'a [bytes::Bytes]>,
    pub client: &'a str,
    /// The client's name (CLIENT SETNAME) when the command ended; None: none.
    pub client_name: Option<&'a bytes::Bytes>,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// SLOWLOG's form of a command's arguments: Redis keeps 32 at most and 128 bytes of each.
/// Copies: a slice would keep the request's whole buffer (a 1 MB value) alive until the
/// command is answered.
pub fn slow_args(args: &[bytes::Bytes]) -> Vec<bytes::Bytes> {
    const ARGS_MAX: usize = 32;
    const BYTES_MAX: usize = 128;
    let shown = if args.len() > ARGS_MAX { ARGS_MAX - 1 } else { args.len() };
    let mut out: Vec<bytes::Bytes> = args[..shown]
        .iter()
        .map(|a| {
            if a.len() > BYTES_MAX {
                let mut v = a[..BYTES_MAX].to_vec();
                v.extend_from_slice(format!("... ({} more bytes)", a.len() - BYTES_MAX).as_bytes());
                bytes::Bytes::from(v)
            } else {
                bytes::Bytes::copy_from_slice(a)
            }
        })
        .collect();
    if args.len() > ARGS_MAX {
        out.push(bytes::Bytes::from(format!("... ({} more arguments)", args.len() - shown)));
    }
    out
}

pub struct Metrics {
    registry: Registry,
    pub has_leader: Gauge,
    pub is_leader: Gauge,
    pub term: Gauge,
    pub leader_changes: Counter,
    pub is_member: Gauge,
    pub ready: Gauge,
    pub commit_index: Gauge,
    pub applied_index: Gauge,
    pub last_index: Gauge,
    pub follower_lag: Family<Peer, Gauge>,
    pub proposals_committed: Counter,
    pub proposals_applied: Counter,
    pub proposals_pending: Gauge,
    pub proposals_failed: Family<Reason, Counter>,
    pub fsync_seconds: Histogram,
    pub apply_seconds: Histogram,
    pub reads: Family<ReadMode, Counter>,
    pub read_seconds: HistogramFamily<ReadMode>,
    pub snapshot_sends: Counter,
    pub snapshot_sent_bytes: Counter,
    pub snapshot_installs: Counter,
    pub snapshot_installed_bytes: Counter,
    pub peer_sent: Family<Peer, Counter>,
    pub peer_received: Family<Peer, Counter>,
    pub peer_dropped: Family<Peer, Counter>,
    pub client_connections: Gauge,
    pub client_connections_total: Counter,
    /// Clients refused at once: past `clients_max`, or by protected mode (INFO's
    /// rejected_connections, which Redis counts for both).
    pub client_connections_rejected: Counter,
    pub commands: Family<CommandName, Counter>,
    pub command_seconds: HistogramFamily<CommandName>,
    pub command_errors: Family<ErrorKind, Counter>,
    pub storage_bytes: Family<ColumnFamily, Gauge>,
    pub storage_keys: Gauge,
    /// Why the node is not ready (None: ready), as the node task last judged it.
    health: Mutex<NotReady>,
    /// When the node task last went round its loop, in ms of `tokio::time::Instant` since
    /// `origin` (`/livez`).
    alive_ms: AtomicU64,
    origin: tokio::time::Instant,
    pub redis: Mutex<RedisStats>,
    /// CONFIG slowlog-log-slower-than (microseconds; negative: off, 0: every command).
    pub slowlog_slower_than: std::sync::atomic::AtomicI64,
    /// CONFIG slowlog-max-len.
    pub slowlog_max_len: AtomicU64,
    /// CONFIG latency-monitor-threshold (milliseconds; 0: off).
    pub latency_threshold_ms: AtomicU64,
    peak_rss: AtomicU64,
    /// Keys this node deleted by expiry, as the leader's sweep entries (`ExpireDue`) applied
    /// (INFO's expired_keys).
    pub expired_keys: AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        macro_rules! reg {
            ($name:expr, $help:expr, $m:expr) => {{
                let m = $m;
                r.register($name, $help, m.clone());
                m
            }};
            ($name:expr, $help:expr, $unit:expr, $m:expr) => {{
                let m = $m;
                r.register_with_unit($name, $help, $unit, m.clone());
                m
            }};
        }
        Metrics {
            has_leader: reg!("raftkv_server_has_leader", "1 if this node knows a leader", Gauge::default()),
            is_leader: reg!("raftkv_server_is_leader", "1 if this node leads", Gauge::default()),
            term: reg!("raftkv_server_term", "The current Raft term", Gauge::default()),
            leader_changes: reg!(
                "raftkv_server_leader_changes_seen",
                "Times the leader this node knows changed",
                Counter::default()
            ),
            is_member: reg!(
                "raftkv_server_is_member",
                "1 if this node is a voter or learner of the membership it knows",
                Gauge::default()
            ),
            ready: reg!("raftkv_server_ready", "1 when /readyz answers 200", Gauge::default()),
            commit_index: reg!("raftkv_raft_commit_index", "Highest index known committed", Gauge::default()),
            applied_index: reg!("raftkv_raft_applied_index", "Highest index applied", Gauge::default()),
            last_index: reg!("raftkv_raft_last_index", "Last index in the log", Gauge::default()),
            follower_lag: reg!(
                "raftkv_raft_follower_lag_entries",
                "On the leader: its last index minus the follower's match index",
                Family::default()
            ),
            proposals_committed: reg!(
                "raftkv_proposals_committed",
                "Entries this node saw committed",
                Counter::default()
            ),
            proposals_applied: reg!("raftkv_proposals_applied", "Entries applied", Counter::default()),
            proposals_pending: reg!(
                "raftkv_proposals_pending",
                "Writes this node proposed or forwarded that are not answered yet",
                Gauge::default()
            ),
            proposals_failed: reg!(
                "raftkv_proposals_failed",
                "Writes answered with an error that says they were not applied or may not have been",
                Family::default()
            ),
            fsync_seconds: reg!(
                "raftkv_disk_wal_fsync_duration",
                "One fsync of the Raft log",
                Unit::Seconds,
                histogram()
            ),
            apply_seconds: reg!(
                "raftkv_apply_duration",
                "Applying one batch of committed entries, its storage write included",
                Unit::Seconds,
                histogram()
            ),
            reads: reg!("raftkv_reads", "Linearizable reads served, by mode", Family::default()),
            read_seconds: reg!(
                "raftkv_read_duration",
                "From a read's arrival at the node task to its answer",
                Unit::Seconds,
                histogram_family()
            ),
            snapshot_sends: reg!("raftkv_snapshot_sends", "Snapshots sent in full", Counter::default()),
            snapshot_sent_bytes: reg!(
                "raftkv_snapshot_sent",
                "Bytes of snapshot sent",
                Unit::Bytes,
                Counter::default()
            ),
            snapshot_installs: reg!("raftkv_snapshot_installs", "Snapshots installed", Counter::default()),
            snapshot_installed_bytes: reg!(
                "raftkv_snapshot_installed",
                "Bytes of snapshot received and installed",
                Unit::Bytes,
                Counter::default()
            ),
            peer_sent: reg!(
                "raftkv_peer_messages_sent",
                "Raft messages handed to a peer's connection",
                Family::default()
            ),
            peer_received: reg!(
                "raftkv_peer_messages_received",
                "Raft messages received from a peer",
                Family::default()
            ),
            peer_dropped: reg!(
                "raftkv_peer_messages_dropped",
                "Raft messages dropped (queue full or no connection)",
                Family::default()
            ),
            client_connections: reg!(
                "raftkv_client_connections",
                "Client connections open",
                Gauge::default()
            ),
            client_connections_total: reg!(
                "raftkv_client_connections_accepted",
                "Client connections accepted",
                Counter::default()
            ),
            client_connections_rejected: reg!(
                "raftkv_client_connections_rejected",
                "Client connections refused at once: past --maxclients, or by protected mode",
                Counter::default()
            ),
            commands: reg!("raftkv_commands", "Commands answered", Family::default()),
            command_seconds: reg!(
                "raftkv_command_duration",
                "From a command's parse to its reply",
                Unit::Seconds,
                histogram_family()
            ),
            command_errors: reg!(
                "raftkv_command_errors",
                "Error replies, by their first word",
                Family::default()
            ),
            storage_bytes: reg!(
                "raftkv_storage",
                "RocksDB's live SST size estimate per column family",
                Unit::Bytes,
                Family::default()
            ),
            storage_keys: reg!("raftkv_storage_keys", "RocksDB's estimate of the keys", Gauge::default()),
            registry: r,
            health: Mutex::new(Some("starting".into())),
            alive_ms: AtomicU64::new(0),
            origin: tokio::time::Instant::now(),
            redis: Mutex::new(RedisStats::default()),
            slowlog_slower_than: std::sync::atomic::AtomicI64::new(10_000),
            slowlog_max_len: AtomicU64::new(128),
            latency_threshold_ms: AtomicU64::new(0),
            peak_rss: AtomicU64::new(0),
            expired_keys: AtomicU64::new(0),
        }
    }

    /// The metrics in Prometheus's text format (OpenMetrics 1.0, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The node task's judgement of its readiness (`/readyz`).
    pub fn set_health(&self, not_ready: NotReady) {
        self.ready.set(not_ready.is_none() as i64);
        *self.health.lock().unwrap_or_else(|e| e.into_inner()) = not_ready;
    }

    pub fn health(&self) -> NotReady {
        self.health.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The node task is alive: it went round its loop now.
    pub fn beat(&self) {
        self.alive_ms.store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the node task last went round its loop.
    pub fn since_beat(&self) -> std::time::Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        std::time::Duration::from_millis(now.saturating_sub(self.alive_ms.load(Ordering::Relaxed)))
    }

    /// Notes a command answered: its count and time, its error's kind, the lookups it made,
    /// and the slow log and latency monitor when it took long enough.
    pub fn command(&self, d: Done<'_>) {
        let label = CommandName { command: d.name.to_string() };
        self.commands.get_or_create(&label).inc();
        self.command_seconds.get_or_create(&label).observe(d.took.as_secs_f64());
        let kind = d.error.map(|e| e.split(' ').next().unwrap_or("ERR").to_string());
        if let Some(kind) = &kind {
            self.command_errors.get_or_create(&ErrorKind { kind: kind.clone() }).inc();
        }
        let usec = d.took.as_micros() as u64;
        let slower_than = self.slowlog_slower_than.load(Ordering::Relaxed);
        let slow = slower_than >= 0 && usec >= slower_than as u64;
        let latency_ms = self.latency_threshold_ms.load(Ordering::Relaxed);
        let mut r = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        r.total_commands += 1;
        let stat = r.commands.entry(d.name).or_default();
        stat.calls += 1;
        stat.usec += usec;
        if let Some(kind) = kind {
            stat.failed += 1;
            r.total_errors += 1;
            *r.errors.entry(kind).or_default() += 1;
        }
        match d.lookup {
            Some(true) => r.keyspace_hits += 1,
            Some(false) => r.keyspace_misses += 1,
            None => {}
        }
        if let (true, Some(args)) = (slow, d.args) {
            let id = r.next_slow_id;
            r.next_slow_id += 1;
            let entry = SlowEntry {
                id,
                time: unix_now(),
                usec,
                args: args.to_vec(),
                client: d.client.to_string(),
                client_name: d.client_name.cloned().unwrap_or_default(),
            };
            r.slowlog.push_front(entry);
            let max = self.slowlog_max_len.load(Ordering::Relaxed) as usize;
            r.slowlog.truncate(max);
        }
        if latency_ms > 0 && usec / 1000 >= latency_ms {
            let e = r.latency.entry("command").or_default();
            e.time = unix_now();
            e.latest_ms = usec / 1000;
            e.max_ms = e.max_ms.max(e.latest_ms);
        }
    }

    /// Notes one fsync for the latency monitor (Redis's `fsync-always` event).
    pub fn fsync_latency(&self, took: std::time::Duration) {
        let threshold = self.latency_threshold_ms.load(Ordering::Relaxed);
        let ms = took.as_millis() as u64;
        if threshold > 0 && ms >= threshold {
            let mut r = self.redis.lock().unwrap_or_else(|e| e.into_inner());
            let e = r.latency.entry("fsync-always").or_default();
            e.time = unix_now();
            e.latest_ms = ms;
            e.max_ms = e.max_ms.max(ms);
        }
    }

    /// The largest resident size seen (INFO's used_memory_peak), `now` included.
    pub fn peak_rss(&self, now: u64) -> u64 {
        self.peak_rss.fetch_max(now, Ordering::Relaxed).max(now)
    }

    /// Samples the command count for instantaneous_ops_per_sec (every 100 ms).
    pub fn sample_ops(&self) {
        let now = self.origin.elapsed().as_millis() as u64;
        let mut r = self.redis.lock().unwrap_or_else(|e| e.into_inner());
        let total = r.total_commands;
        r.ops_samples.push_back((now, total));
        while r.ops_samples.len() > 16 {
            r.ops_samples.pop_front();
        }
    }

    pub fn peer_sent(&self, peer: u64) {
        self.peer_sent.get_or_create(&Peer { peer: peer.to_string() }).inc();
    }

    pub fn peer_received(&self, peer: u64) {
        self.peer_received.get_or_create(&Peer { peer: peer.to_string() }).inc();
    }

    pub fn peer_dropped(&self, peer: u64) {
        self.peer_dropped.get_or_create(&Peer { peer: peer.to_string() }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_contracts() {
        let m = Metrics::new();
        m.leader_changes.inc();
        m.fsync_seconds.observe(0.003);
        m.command(Done {
            name: "set",
            took: std::time::Duration::from_millis(1),
            error: Some("WRONGTYPE Operation"),
            lookup: None,
            args: None,
            client: "",
            client_name: None,
        });
        m.peer_sent(2);
        m.client_connections_total.inc();
        m.snapshot_sent_bytes.inc_by(10);
        m.storage_bytes.get_or_create(&ColumnFamily { cf: "default".into() }).set(5);
        let text = m.encode();
        for line in [
            "raftkv_server_leader_changes_seen_total 1",
            "raftkv_disk_wal_fsync_duration_seconds_bucket{le=\"0.005\"} 1",
            "raftkv_commands_total{command=\"set\"} 1",
            "raftkv_command_errors_total{kind=\"WRONGTYPE\"} 1",
            "raftkv_peer_messages_sent_total{peer=\"2\"} 1",
            "raftkv_client_connections_accepted_total 1",
            "raftkv_client_connections 0",
            "raftkv_snapshot_sent_bytes_total 10",
            "raftkv_storage_bytes{cf=\"default\"} 5",
            "raftkv_server_ready 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        // Every name of the contract is there.
        let contract = include_str!("../../docs/design/metrics.md");
        for name in contract
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .map(|l| &l[..l.find('`').unwrap()])
        {
            assert!(
                text.contains(&format!("# TYPE {name} "))
                    || text.contains(&format!("# TYPE {} ", name.trim_end_matches("_total"))),
                "{name} is not exported:\n{text}"
            );
        }
    }
}
