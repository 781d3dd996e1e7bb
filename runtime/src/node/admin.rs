//! Membership (learners added, promoted, removed), leadership transfer, and what INFO reports.

use super::*;

/// A learner within this many entries of the commit index is promoted to voter.
const PROMOTE_LAG_MAX: u64 = 100;

/// After a promotion was proposed and answered, the next waits this long: a promotion
/// refused (another change pending, a transfer running) is retried this often.
const PROMOTE_RETRY: Duration = Duration::from_millis(200);

/// This process's resident memory (Linux's /proc/self/statm; 0 elsewhere).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// CPU seconds this process used, as Redis's INFO cpu reports getrusage's: (system, user,
/// system of waited-for children, user of waited-for children). Read from Linux's
/// /proc/self/stat, in clock ticks of 1/100 s (USER_HZ, 100 on x86 and ARM), so to 10 ms;
/// zeros elsewhere. (getrusage itself needs the libc crate, which the runtime does not take.)
fn cpu_seconds() -> [f64; 4] {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold anything:
    // utime, stime, cutime and cstime are the 14th to 17th of the line, the 12th to 15th
    // after it.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let secs = |i: usize| ticks(i) as f64 / 100.0;
    [secs(12), secs(11), secs(14), secs(13)]
}

/// Bytes as Redis writes them for people: 1.50M.
fn human(b: u64) -> String {
    match b {
        b if b >= 1 << 30 => format!("{:.2}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.2}M", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.2}K", b as f64 / (1u64 << 10) as f64),
        b => format!("{b}B"),
    }
}

impl<S: Storage> NodeTask<S> {
    /// A request about the cluster or this node rather than the data: `id` is its request id
    /// if it becomes a proposal.
    pub(super) fn on_admin(&mut self, id: u64, cmd: AdminCommand, reply: oneshot::Sender<Reply>) {
        match cmd {
            AdminCommand::NodeAdd { id: node, addr } => {
                let change =
                    MembershipChange::AddLearner { id: NodeId(node), addr: addr.to_string() };
                info!(node = %self.id, add = node, %addr, "membership change requested");
                self.propose_membership(id, change, reply);
            }
            AdminCommand::NodeRemove(node) => {
                info!(node = %self.id, remove = node, "membership change requested");
                self.propose_membership(id, MembershipChange::Remove { id: NodeId(node) }, reply);
            }
            AdminCommand::BackupNext(backup) => self.backup_next(backup, reply),
            AdminCommand::BackupAbort(backup) => {
                let found = self.backups.remove(&backup).is_some();
                let _ = reply.send(Reply::Integer(found as i64));
            }
            AdminCommand::Unblock { client, error } => {
                let n = self.blocked.unblock(client, error);
                let _ = reply.send(Reply::Integer(n as i64));
            }
            AdminCommand::Info(sections) => {
                let _ = reply.send(self.info(&sections));
            }
            AdminCommand::ConfigGet(patterns) => {
                let mut out = Vec::new();
                for (k, v) in &self.config {
                    let matches = patterns.iter().any(|p| {
                        raft_kv_core::glob::matches(&p.to_ascii_lowercase(), k.as_bytes())
                    });
                    if matches {
                        out.push((Reply::Bulk(Bytes::from(k.clone())), Reply::Bulk(v.clone())));
                    }
                }
                let _ = reply.send(Reply::Map(out));
            }
            AdminCommand::ConfigSet(pairs) => {
                let numeric = |k: &str| {
                    matches!(
                        k,
                        "slowlog-log-slower-than" | "slowlog-max-len" | "latency-monitor-threshold"
                    )
                };
                // Redis's bounds: -1 (off) and up for the slow log's threshold, 0 and up else.
                let least = |k: &str| if k == "slowlog-log-slower-than" { -1 } else { 0 };
                let bad_number = pairs
                    .iter()
                    .find(|(k, v)| numeric(k) && kv::parse_i64(v).is_none_or(|n| n < least(k)));
                let answer = match pairs.iter().find(|(k, _)| !self.config.contains_key(k)) {
                    Some((k, _)) => Reply::error(format!(
                        "ERR Unknown option or number of arguments for CONFIG SET - '{k}'"
                    )),
                    None if bad_number.is_some() => {
                        let (k, v) = bad_number.expect("checked");
                        let why = match kv::parse_i64(v) {
                            None => "argument couldn't be parsed into an integer".to_string(),
                            Some(_) => format!(
                                "argument must be between {} and 9223372036854775807 inclusive",
                                least(k)
                            ),
                        };
                        Reply::error(format!(
                            "ERR CONFIG SET failed (possibly related to argument '{k}') - {why}"
                        ))
                    }
                    None => {
                        use std::sync::atomic::Ordering::Relaxed;
                        for (k, v) in pairs.iter() {
                            let n = kv::parse_i64(v).unwrap_or(0);
                            match k.as_str() {
                                "slowlog-log-slower-than" => {
                                    self.metrics.slowlog_slower_than.store(n, Relaxed)
                                }
                                "slowlog-max-len" => {
                                    self.metrics.slowlog_max_len.store(n as u64, Relaxed)
                                }
                                "latency-monitor-threshold" => {
                                    self.metrics.latency_threshold_ms.store(n as u64, Relaxed)
                                }
                                _ => {}
                            }
                        }
                        for (k, v) in pairs {
                            let twin = crate::command::CONFIG_ALIASES.iter().find_map(|(a, b)| {
                                (k == *a).then_some(*b).or((k == *b).then_some(*a))
                            });
                            if let Some(twin) = twin {
                                self.config.insert(twin.to_string(), v.clone());
                            }
                            self.config.insert(k, v);
                        }
                        Reply::ok()
                    }
                };
                let _ = reply.send(answer);
            }
            AdminCommand::TransferLeader(to) => {
                self.transfer_leader(NodeId(to), reply);
            }
        }
    }

    /// Proposes a membership change as request `id` of this node's session; the reply comes
    /// when it applies (or fails to).
    pub(super) fn propose_membership(
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
        let based_on = self.raft.membership().version_id();
        let input =
            Input::ProposeMembership { id, change: change.clone(), data: data.clone(), based_on };
        self.raft.step(input);
        let membership = Some((change, based_on));
        let w = PendingWrite { data, reply, resubmitted: false, membership, block: None };
        self.writes.insert(id, w);
        self.deadlines.push_back((Instant::now() + self.tuning.request_timeout, id));
    }

    /// The leader promotes a learner once it holds the log up to the commit index (less a
    /// little, so a busy cluster does not keep it a learner forever), and at least up to the
    /// membership in effect, the one that made it a learner: a voter that holds nothing would
    /// count in every quorum while it could not restart as a member (it would ask to join
    /// again), and a young cluster's commit index is within the lag from the start.
    pub(super) fn maybe_promote_learner(&mut self) {
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
        let membership = self.raft.membership_index();
        let ready = self.raft.followers().into_iter().find(|f| {
            learners.contains(&f.id)
                && f.match_index >= membership
                && f.match_index.0 + PROMOTE_LAG_MAX >= commit
        });
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
    /// A node probing at start-up (it started blank or recovering) also reaches the voters
    /// the probe answers named, which its own membership may not.
    pub(super) fn follow_membership(&mut self) {
        let probe_addrs = self.raft.probe_addrs();
        if self.raft.membership() == &self.known_membership
            && probe_addrs.len() == self.known_probe_addrs
        {
            return;
        }
        self.known_probe_addrs = probe_addrs.len();
        let m = self.raft.membership().clone();
        if m != self.known_membership {
            let s = self.raft.status();
            info!(node = %self.id, term = %s.term, index = %s.last_index, voters = ?m.voters.iter().map(|v| v.0).collect::<Vec<_>>(), learners = ?m.learners.iter().map(|v| v.0).collect::<Vec<_>>(), "membership changed");
        }
        let mut peers = BTreeMap::new();
        let learned = probe_addrs.iter().filter(|(id, _)| !m.addrs.contains_key(id));
        for (id, addr) in m.addrs.iter().chain(learned) {
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

    pub(super) fn transfer_leader(&mut self, to: NodeId, reply: oneshot::Sender<Reply>) {
        let status = self.raft.status();
        if !self.raft.membership().is_voter(to) {
            let _ = reply.send(Reply::error(format!("ERR node {to} is not a voting member")));
        } else if status.leader == Some(to) {
            let _ = reply.send(Reply::ok());
        } else if status.leader.is_none() {
            let _ = reply.send(Reply::error(CLUSTERDOWN_NO_LEADER));
        } else {
            info!(node = %self.id, to = %to, leader = ?status.leader.map(|l| l.0), "leadership transfer requested");
            self.raft.step(Input::TransferLeader { to });
            let deadline = Instant::now() + self.tuning.request_timeout;
            self.transfers.push((to, deadline, reply));
        }
    }

    /// INFO: Redis's sections in Redis's field names where they mean the same (a leader is a
    /// `master`, its followers its `slave`s), and `# Raft`. No section, or `default`: all but
    /// commandstats; `all` or `everything`: all.
    pub(super) fn info(&self, sections: &[String]) -> Reply {
        let every = sections.iter().any(|s| matches!(s.as_str(), "all" | "everything"));
        let default = sections.is_empty() || sections.iter().any(|s| s == "default");
        let wanted = |name: &str| {
            every || sections.iter().any(|s| s == name) || (default && name != "commandstats")
        };
        let mut out = String::new();
        let r = self.metrics.redis.lock().unwrap_or_else(|e| e.into_inner());
        if wanted("server") {
            out.push_str(&self.info.server);
            let uptime = self.info.started.elapsed().as_secs();
            let now_us = (self.wall_clock)() * 1000;
            out.push_str(&format!(
                "redis_mode:standalone\r\nos:{} {}\r\narch_bits:64\r\nmultiplexing_api:epoll\r\nrun_id:{:016x}{:024x}\r\nserver_time_usec:{now_us}\r\nuptime_in_seconds:{uptime}\r\nuptime_in_days:{}\r\nhz:{}\r\nconfig_file:\r\n\r\n",
                std::env::consts::OS,
                std::env::consts::ARCH,
                self.info.cluster_id,
                (self.id.0 as u128) << 64 | self.incarnation as u128,
                uptime / 86_400,
                1000 / self.tuning.tick.as_millis().max(1),
            ));
        }
        if wanted("clients") {
            let connected = self.info.clients_max - self.info.client_slots.available_permits();
            out.push_str(&format!(
                "# Clients\r\nconnected_clients:{connected}\r\ncluster_connections:0\r\nmaxclients:{}\r\nblocked_clients:{}\r\ntracking_clients:0\r\npending_requests:{}\r\n\r\n",
                self.info.clients_max,
                self.blocked.len(),
                self.writes.len() + self.reads.len()
            ));
        }
        if wanted("memory") {
            let rss = resident_bytes();
            let storage: u64 = self.storage.sizes().iter().map(|(_, b)| b).sum();
            out.push_str(&format!(
                "# Memory\r\nused_memory:{rss}\r\nused_memory_human:{}\r\nused_memory_rss:{rss}\r\nused_memory_rss_human:{}\r\nused_memory_peak:{}\r\nmaxmemory:0\r\nmaxmemory_human:0B\r\nmaxmemory_policy:noeviction\r\nmem_fragmentation_ratio:1.00\r\nmem_allocator:mimalloc\r\nstorage_bytes:{storage}\r\n\r\n",
                human(rss),
                human(rss),
                self.metrics.peak_rss(rss),
            ));
        }
        if wanted("persistence") {
            let s = self.raft.status();
            let since = s.applied_index.0.saturating_sub(s.snapshot_index.0);
            out.push_str(&format!(
                "# Persistence\r\nloading:0\r\nasync_loading:0\r\nrdb_changes_since_last_save:{since}\r\nrdb_bgsave_in_progress:0\r\nrdb_last_bgsave_status:ok\r\naof_enabled:{}\r\naof_rewrite_in_progress:0\r\naof_last_write_status:ok\r\nappendfsync:always\r\nraft_log_first_index:{}\r\nraft_log_last_index:{}\r\n\r\n",
                (self.config.get("appendonly").map(|v| &v[..]) == Some(&b"yes"[..])) as u8,
                s.snapshot_index.0 + 1,
                s.last_index,
            ));
        }
        if wanted("stats") {
            out.push_str(&format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\ninstantaneous_ops_per_sec:{}\r\nrejected_connections:{}\r\nexpired_keys:{}\r\nevicted_keys:0\r\nkeyspace_hits:{}\r\nkeyspace_misses:{}\r\npubsub_channels:0\r\npubsub_patterns:0\r\ntotal_error_replies:{}\r\nraft_proposals_applied:{}\r\n\r\n",
                self.metrics.client_connections_total.get(),
                r.total_commands,
                r.ops_per_sec(),
                self.metrics.client_connections_rejected.get(),
                self.metrics.expired_keys.load(std::sync::atomic::Ordering::Relaxed),
                r.keyspace_hits,
                r.keyspace_misses,
                r.total_errors,
                self.metrics.proposals_applied.get(),
            ));
        }
        if wanted("replication") {
            out.push_str(&self.info_replication());
        }
        if wanted("cpu") {
            let [sys, user, sys_children, user_children] = cpu_seconds();
            out.push_str(&format!(
                "# CPU\r\nused_cpu_sys:{sys:.6}\r\nused_cpu_user:{user:.6}\r\nused_cpu_sys_children:{sys_children:.6}\r\nused_cpu_user_children:{user_children:.6}\r\n\r\n"
            ));
        }
        if wanted("commandstats") {
            out.push_str("# Commandstats\r\n");
            for (name, c) in &r.commands {
                let per = if c.calls > 0 { c.usec as f64 / c.calls as f64 } else { 0.0 };
                out.push_str(&format!(
                    "cmdstat_{name}:calls={},usec={},usec_per_call={per:.2},rejected_calls=0,failed_calls={}\r\n",
                    c.calls, c.usec, c.failed
                ));
            }
            out.push_str("\r\n");
        }
        if wanted("errorstats") {
            out.push_str("# Errorstats\r\n");
            for (kind, n) in &r.errors {
                out.push_str(&format!("errorstat_{kind}:count={n}\r\n"));
            }
            out.push_str("\r\n");
        }
        drop(r);
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
                out.push_str(&format!(
                    "db0:keys={keys},expires={},avg_ttl=0\r\n",
                    self.expiry.len()
                ));
            }
            out.push_str("\r\n");
        }
        Reply::Bulk(Bytes::from(out))
    }

    /// INFO replication: the leader as a Redis master with its followers as replicas (their
    /// offset is their match index), a follower as a replica of the leader.
    fn info_replication(&self) -> String {
        let s = self.raft.status();
        let membership = self.raft.membership();
        let host_port = |n: NodeId| {
            let a = membership
                .addrs
                .get(&n)
                .cloned()
                .or_else(|| self.info.raft_addrs.get(&n).map(|a| a.to_string()))
                .unwrap_or_default();
            match a.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.to_string()),
                None => (a, String::new()),
            }
        };
        let mut out = String::from("# Replication\r\n");
        if s.role == Role::Leader {
            let followers = self.raft.followers();
            out.push_str(&format!("role:master\r\nconnected_slaves:{}\r\n", followers.len()));
            for (i, f) in followers.iter().enumerate() {
                let (ip, port) = host_port(f.id);
                let lag = s.last_index.0.saturating_sub(f.match_index.0);
                out.push_str(&format!(
                    "slave{i}:ip={ip},port={port},state=online,offset={},lag={lag}\r\n",
                    f.match_index
                ));
            }
        } else {
            out.push_str("role:slave\r\n");
            match s.leader {
                Some(l) => {
                    let (ip, port) = host_port(l);
                    out.push_str(&format!(
                        "master_host:{ip}\r\nmaster_port:{port}\r\nmaster_link_status:up\r\n"
                    ));
                }
                None => {
                    out.push_str("master_host:\r\nmaster_port:0\r\nmaster_link_status:down\r\n")
                }
            }
            out.push_str(&format!("slave_repl_offset:{}\r\n", self.applied));
        }
        out.push_str(&format!("master_repl_offset:{}\r\n\r\n", s.commit_index));
        out
    }

    pub(super) fn info_raft(&self) -> String {
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
