//! Membership (learners added, promoted, removed), leadership transfer, and what INFO reports.

use super::*;

/// A learner within this many entries of the commit index is promoted to voter.
const PROMOTE_LAG_MAX: u64 = 100;

/// After a promotion was proposed and answered, the next waits this long: a promotion
/// refused (another change pending, a transfer running) is retried this often.
const PROMOTE_RETRY: Duration = Duration::from_millis(200);

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
                let answer = match pairs.iter().find(|(k, _)| !self.config.contains_key(k)) {
                    Some((k, _)) => Reply::error(format!(
                        "ERR Unknown option or number of arguments for CONFIG SET - '{k}'"
                    )),
                    None => {
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
            info!(node = %self.id, voters = ?m.voters.iter().map(|v| v.0).collect::<Vec<_>>(), learners = ?m.learners.iter().map(|v| v.0).collect::<Vec<_>>(), "membership changed");
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

    /// INFO: `# Server`, `# Clients`, `# Raft` and `# Keyspace`, or the named ones.
    pub(super) fn info(&self, sections: &[String]) -> Reply {
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
                "# Clients\r\nconnected_clients:{connected}\r\nmaxclients:{}\r\nblocked_clients:{}\r\npending_requests:{}\r\n\r\n",
                self.info.clients_max,
                self.blocked.len(),
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
