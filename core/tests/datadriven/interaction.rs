//! The interaction environment of the scenario files: a cluster of `RaftNode`s whose every
//! `Ready` the script asks for and sees (`process-ready`, `stabilize`), and a network whose
//! messages it delivers, drops or loses (`deliver-msgs`, `isolate`, `crash`). Storage and the
//! `Ready` contract are common/mod.rs's `Cluster` (its `handle`, with the per-node and
//! cluster-wide safety checks); this file only decides when things happen and prints them.
//! Every loop has a limit; a scenario that hits one prints an error instead of hanging.

use crate::common::{membership_of, Cluster};
use datadriven::TestCase;
use raft_kv_core::{
    Config, Entry, HardState, Input, LogIndex, Membership, MembershipChange, Message, NodeId,
    RaftNode, RestoredState, Role, SnapshotMeta, Term,
};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Rounds (every node's `Ready`, then every queued message) `stabilize` runs before giving up.
const STABILIZE_ROUNDS_MAX: usize = 64;
/// Ticks `campaign` gives a follower to start one: its timeout is below twice the minimum.
const CAMPAIGN_TICKS_MAX: u32 = 2 * crate::common::ELECTION_TICKS;

type Result<T> = std::result::Result<T, String>;

/// Config knobs a scenario may set on `add-nodes`, for every node it adds.
#[derive(Clone, Copy, Debug, Default)]
struct Tune {
    append_entries_max: Option<usize>,
    snapshot_entries: Option<u64>,
    snapshot_keep_entries: Option<u64>,
    keep_followers: Option<bool>,
}

impl Tune {
    fn apply(&self, cfg: &mut Config) {
        if let Some(n) = self.append_entries_max {
            cfg.append_entries_max = n;
        }
        if let Some(n) = self.snapshot_entries {
            cfg.snapshot_entries = n;
        }
        if let Some(n) = self.snapshot_keep_entries {
            cfg.snapshot_keep_entries = n;
        }
        if let Some(b) = self.keep_followers {
            cfg.compact_keeps_followers = b;
        }
    }
}

#[derive(Default)]
pub struct Env {
    cluster: Option<Cluster>,
    /// Voters the cluster started with; nodes added later join as non-members.
    voters_count: u64,
    tune: Tune,
    /// Ids of proposals, reads and membership changes, so `Rejected` lines can be matched.
    last_request_id: u64,
}

/// A directive's arguments: bare numbers are node ids, one bare word is the command's datum
/// (`propose 1 x`), the rest are named. Each is taken once; a leftover one is an error.
struct Args {
    ids: Vec<u64>,
    word: Option<String>,
    named: BTreeMap<String, Vec<String>>,
}

impl Args {
    fn parse(case: &TestCase) -> Result<Args> {
        let mut ids = Vec::new();
        let mut words = Vec::new();
        let mut named = BTreeMap::new();
        for (k, v) in &case.args {
            match (k.parse::<u64>(), v.is_empty()) {
                (Ok(id), true) => ids.push(id),
                (Err(_), true) => words.push(k.clone()),
                _ => {
                    named.insert(k.clone(), v.clone());
                }
            }
        }
        ids.sort_unstable();
        if words.len() > 1 {
            return Err(format!("more than one bare word: {words:?}"));
        }
        Ok(Args { ids, word: words.pop(), named })
    }

    fn take_list(&mut self, name: &str) -> Result<Option<Vec<u64>>> {
        let Some(vals) = self.named.remove(name) else { return Ok(None) };
        let parsed: std::result::Result<Vec<u64>, _> = vals.iter().map(|v| v.parse()).collect();
        parsed.map(Some).map_err(|_| format!("{name}: expected numbers, got {vals:?}"))
    }

    fn take_u64(&mut self, name: &str) -> Result<Option<u64>> {
        match self.take_list(name)? {
            None => Ok(None),
            Some(v) if v.len() == 1 => Ok(Some(v[0])),
            Some(v) => Err(format!("{name}: expected one number, got {v:?}")),
        }
    }

    fn take_str(&mut self, name: &str) -> Result<Option<String>> {
        match self.named.remove(name) {
            None => Ok(None),
            Some(v) if v.len() == 1 => Ok(Some(v[0].clone())),
            Some(v) => Err(format!("{name}: expected one value, got {v:?}")),
        }
    }

    fn one_id(&mut self) -> Result<u64> {
        match self.ids[..] {
            [id] => Ok(id),
            _ => Err(format!("expected one node id, got {:?}", self.ids)),
        }
    }

    fn finish(self) -> Result<()> {
        if let Some(w) = self.word {
            return Err(format!("unexpected argument {w}"));
        }
        if let Some(k) = self.named.keys().next() {
            return Err(format!("unexpected argument {k}"));
        }
        Ok(())
    }
}

impl Env {
    /// Runs one directive; errors are part of the output, so a scenario can show them.
    pub fn run(&mut self, case: &mut TestCase) -> String {
        match self.dispatch(case) {
            Ok(out) => out,
            Err(e) => format!("error: {e}\n"),
        }
    }

    fn dispatch(&mut self, case: &TestCase) -> Result<String> {
        let mut args = Args::parse(case)?;
        let out = match case.directive.as_str() {
            "add-nodes" => self.add_nodes(&mut args, &case.input)?,
            "campaign" => self.campaign(args.one_id()?)?,
            "tick" => {
                let n = args.take_u64("n")?.unwrap_or(1);
                self.tick(&args.ids, n)?
            }
            "tick-heartbeat" => self.tick(&args.ids, u64::from(crate::common::HEARTBEAT_TICKS))?,
            "tick-election" => self.tick(&args.ids, u64::from(crate::common::ELECTION_TICKS))?,
            "propose" => {
                let id = args.one_id()?;
                let data = args.word.take().ok_or("propose: what? (propose 1 x)")?;
                self.request(id, |rid| Input::Propose { id: rid, data: data.into_bytes() })?
            }
            "read" => self.request(args.one_id()?, |rid| Input::Read { id: rid })?,
            "propose-conf" => self.propose_conf(&mut args)?,
            "transfer-leader" => {
                let id = args.one_id()?;
                let to = args.take_u64("to")?.ok_or("transfer-leader: to=?")?;
                self.live(id)?;
                self.c()?.step(id, Input::TransferLeader { to: NodeId(to) });
                String::new()
            }
            "process-ready" => self.process_ready(&args.ids)?,
            "deliver-msgs" => {
                let drop = args.take_list("drop")?.unwrap_or_default();
                let kind = args.take_str("type")?;
                self.deliver_msgs(&args.ids, &drop, kind.as_deref())?
            }
            "stabilize" => {
                let quiet = args.word.take_if(|w| w.as_str() == "quiet").is_some();
                let out = self.stabilize(&args.ids)?;
                match out.lines().find(|l| l.starts_with("error:")) {
                    Some(error) if quiet => format!("{error}\n"),
                    _ if quiet => String::new(),
                    _ => out,
                }
            }
            "status" => self.status(&args.ids)?,
            "raft-log" => self.raft_log(args.one_id()?)?,
            "isolate" => {
                let id = args.one_id()?;
                self.c()?.isolate(id);
                String::new()
            }
            "cut" => {
                let id = args.one_id()?;
                for to in args.take_list("from")?.ok_or("cut: from=(ids)?")? {
                    self.c()?.cut_both(id, to);
                }
                String::new()
            }
            "heal" => {
                self.c()?.heal();
                String::new()
            }
            "crash" => self.crash(args.one_id()?)?,
            "restart" => self.restart(args.one_id()?)?,
            other => return Err(format!("unknown command {other}")),
        };
        args.finish()?;
        Ok(out)
    }

    fn c(&mut self) -> Result<&mut Cluster> {
        self.cluster.as_mut().ok_or_else(|| "no nodes yet: add-nodes first".to_string())
    }

    fn ids_or_all(&mut self, ids: &[u64]) -> Result<Vec<NodeId>> {
        let c = self.c()?;
        if ids.is_empty() {
            return Ok(c.ids());
        }
        for id in ids {
            if !c.peers.contains_key(&NodeId(*id)) {
                return Err(format!("no node {id}"));
            }
        }
        Ok(ids.iter().map(|id| NodeId(*id)).collect())
    }

    fn live(&mut self, id: u64) -> Result<()> {
        let c = self.c()?;
        if !c.peers.contains_key(&NodeId(id)) {
            return Err(format!("no node {id}"));
        }
        if c.down.contains(&NodeId(id)) {
            return Err(format!("node {id} is down"));
        }
        Ok(())
    }

    // ---- building the cluster -------------------------------------------------------------

    /// `add-nodes N [append-max=K] [snapshot-entries=K] [keep=K]`: a new cluster of N voters,
    /// each restored from an input line `ID term=T [vote=V] [log=(t1,t2,...)]` if it has one
    /// (else empty). On an existing cluster: N new nodes that join as non-members.
    fn add_nodes(&mut self, args: &mut Args, input: &str) -> Result<String> {
        let n = args.one_id()?;
        if self.cluster.is_some() {
            if !input.trim().is_empty() || !args.named.is_empty() {
                return Err("joining nodes start empty, with the cluster's config".into());
            }
            let (voters_count, tune) = (self.voters_count, self.tune);
            let c = self.c()?;
            let first = c.ids().last().map_or(1, |id| id.0 + 1);
            for id in first..first + n {
                c.join(id, voters_count, |cfg| tune.apply(cfg));
            }
            return self.status(&[]);
        }
        self.tune = Tune {
            append_entries_max: args.take_u64("append-max")?.map(|n| n as usize),
            snapshot_entries: args.take_u64("snapshot-entries")?,
            snapshot_keep_entries: args.take_u64("keep")?,
            keep_followers: args.take_u64("keep-followers")?.map(|n| n != 0),
        };
        let mut states = vec![RestoredState::default(); n as usize];
        for line in input.lines().filter(|l| !l.trim().is_empty()) {
            let (id, state) = parse_restored(line)?;
            let slot = states.get_mut((id as usize).wrapping_sub(1)).ok_or("id out of range")?;
            *slot = state;
        }
        let tune = self.tune;
        self.voters_count = n;
        self.cluster = Some(Cluster::restored(states, |cfg| tune.apply(cfg)));
        self.status(&[])
    }

    // ---- inputs ---------------------------------------------------------------------------

    /// Ticks a follower until its election timeout fires (a pre-vote campaign, or a vote if it
    /// alone makes a quorum). Its `Ready` is left for the script to process.
    fn campaign(&mut self, id: u64) -> Result<String> {
        self.live(id)?;
        let c = self.c()?;
        if c.status(id).role != Role::Follower {
            return Err(format!("node {id} is not a follower"));
        }
        for ticks in 1..=CAMPAIGN_TICKS_MAX {
            c.step(id, Input::Tick);
            if c.status(id).role != Role::Follower {
                return Ok(format!("{id} campaigns after {ticks} ticks\n{}", status_line(c, id)));
            }
        }
        Err(format!("node {id} did not campaign within {CAMPAIGN_TICKS_MAX} ticks"))
    }

    fn tick(&mut self, ids: &[u64], n: u64) -> Result<String> {
        if ids.is_empty() {
            return Err("tick which nodes?".into());
        }
        let mut out = String::new();
        for id in ids {
            self.live(*id)?;
            let c = self.c()?;
            for _ in 0..n {
                c.step(*id, Input::Tick);
            }
            out.push_str(&status_line(c, *id));
        }
        Ok(out)
    }

    /// A client request with the next id, stepped on node `id`.
    fn request(&mut self, id: u64, input: impl FnOnce(u64) -> Input) -> Result<String> {
        self.live(id)?;
        self.last_request_id += 1;
        let rid = self.last_request_id;
        self.c()?.step(id, input(rid));
        Ok(format!("id={rid}\n"))
    }

    /// `propose-conf ID add-learner=N | promote=N | remove=N`, against the membership node ID
    /// knows.
    fn propose_conf(&mut self, args: &mut Args) -> Result<String> {
        let id = args.one_id()?;
        let change = if let Some(n) = args.take_u64("add-learner")? {
            MembershipChange::AddLearner { id: NodeId(n), addr: format!("n{n}") }
        } else if let Some(n) = args.take_u64("promote")? {
            MembershipChange::Promote { id: NodeId(n) }
        } else if let Some(n) = args.take_u64("remove")? {
            MembershipChange::Remove { id: NodeId(n) }
        } else {
            return Err("propose-conf: add-learner=, promote= or remove=?".into());
        };
        self.live(id)?;
        let based_on = self.c()?.peer(id).node.membership().version_id();
        let data = crate::common::conf_entry(&change);
        self.request(id, |rid| Input::ProposeMembership { id: rid, change, data, based_on })
    }

    // ---- readies and messages -------------------------------------------------------------

    /// Takes node `id`'s `Ready`, prints it, and handles it as the runtime would (persist,
    /// send, apply, report `Persisted`). False if it was empty.
    fn process_one(&mut self, id: NodeId, out: &mut String, show_empty: bool) -> Result<bool> {
        let c = self.c()?;
        let ready = c.peers.get_mut(&id).expect("known node").node.ready();
        c.check(id);
        if ready.is_empty() && !show_empty {
            return Ok(false);
        }
        writeln!(out, "> {id} ready").expect("string");
        for line in ready.to_string().lines() {
            writeln!(out, "  {line}").expect("string");
        }
        if ready.is_empty() {
            return Ok(false);
        }
        let before = c.queue.len();
        c.handle(id, &ready);
        // Snapshot chunks, which the runtime streams itself (`Ready::send_snapshots`).
        let streamed: Vec<String> =
            c.queue.iter().skip(before + ready.messages.len()).map(|m| m.to_string()).collect();
        if !streamed.is_empty() {
            writeln!(out, "  Streams:").expect("string");
            for m in streamed {
                writeln!(out, "    {m}").expect("string");
            }
        }
        Ok(true)
    }

    /// One `Ready` of each node named (every live node if none), even an empty one if named.
    fn process_ready(&mut self, ids: &[u64]) -> Result<String> {
        let mut out = String::new();
        for id in self.ids_or_all(ids)? {
            if self.c()?.down.contains(&id) {
                if !ids.is_empty() {
                    return Err(format!("node {id} is down"));
                }
                continue;
            }
            self.process_one(id, &mut out, !ids.is_empty())?;
        }
        Ok(out)
    }

    /// Steps `m` on its recipient unless the link is cut or either end is down (then it is
    /// lost). The recipient's `Ready` waits for the script.
    fn deliver(&mut self, m: Message, out: &mut String) -> Result<()> {
        let c = self.c()?;
        let lost = c.cut.contains(&(m.from, m.to))
            || c.down.contains(&m.from)
            || c.down.contains(&m.to)
            || !c.peers.contains_key(&m.to);
        if lost {
            writeln!(out, "lost {m}").expect("string");
        } else {
            writeln!(out, "{m}").expect("string");
            c.step_id(m.to, Input::Message(m));
        }
        Ok(())
    }

    /// `deliver-msgs [IDs] [drop=(IDs)] [type=Name]`: delivers the queued messages to the
    /// nodes named (to every node if none and no `drop`), and drops those to the `drop` ones;
    /// `type` limits both to one kind of message. The rest stay queued, in order.
    fn deliver_msgs(&mut self, ids: &[u64], drop: &[u64], kind: Option<&str>) -> Result<String> {
        let all = ids.is_empty() && drop.is_empty();
        let of_kind = |m: &Message| kind.is_none_or(|k| m.body.name() == k);
        let c = self.c()?;
        let queued: Vec<Message> = c.queue.drain(..).collect();
        let mut out = String::new();
        let mut now = Vec::new();
        for m in queued {
            if !of_kind(&m) {
                self.c()?.queue.push_back(m);
            } else if drop.contains(&m.to.0) {
                writeln!(out, "dropped {m}").expect("string");
            } else if all || ids.contains(&m.to.0) {
                now.push(m);
            } else {
                self.c()?.queue.push_back(m);
            }
        }
        for m in now {
            self.deliver(m, &mut out)?;
        }
        Ok(out)
    }

    /// Rounds of: every node's `Ready` (of the nodes named, or all), then every message queued
    /// to those nodes, until a round finds nothing to do. Delivered messages are not printed
    /// again (they are in their sender's `Ready`); lost ones are. `stabilize quiet` prints
    /// nothing but an error, for the set-up steps of a scenario about something else.
    fn stabilize(&mut self, ids: &[u64]) -> Result<String> {
        let nodes = self.ids_or_all(ids)?;
        let mut out = String::new();
        for _ in 0..STABILIZE_ROUNDS_MAX {
            let mut busy = false;
            for id in &nodes {
                if !self.c()?.down.contains(id) {
                    busy |= self.process_one(*id, &mut out, false)?;
                }
            }
            let c = self.c()?;
            let queued: Vec<Message> = c.queue.drain(..).collect();
            let (now, later): (Vec<Message>, Vec<Message>) =
                queued.into_iter().partition(|m| nodes.contains(&m.to));
            c.queue.extend(later);
            busy |= !now.is_empty();
            for m in now {
                let mut line = String::new();
                self.deliver(m, &mut line)?;
                if line.starts_with("lost") {
                    out.push_str(&line);
                }
            }
            if !busy {
                return Ok(out);
            }
        }
        writeln!(out, "error: still busy after {STABILIZE_ROUNDS_MAX} rounds").expect("string");
        Ok(out)
    }

    // ---- faults ---------------------------------------------------------------------------

    /// The node stops; what it had not persisted is gone, and so are the messages in flight
    /// to and from it.
    fn crash(&mut self, id: u64) -> Result<String> {
        self.live(id)?;
        let c = self.c()?;
        c.crash(id);
        let before = c.queue.len();
        c.queue.retain(|m| m.from != NodeId(id) && m.to != NodeId(id));
        Ok(format!("{} messages lost\n", before - c.queue.len()))
    }

    /// The node starts again from what it had made durable: hard state, snapshot, log, and
    /// the state machine applied so far.
    fn restart(&mut self, id: u64) -> Result<String> {
        let c = self.c()?;
        let nid = NodeId(id);
        if !c.down.contains(&nid) {
            return Err(format!("node {id} is not down"));
        }
        let peer = c.peers.get_mut(&nid).expect("known node");
        let restored = RestoredState {
            hard_state: peer.hard_state,
            membership: Some(membership_of(&peer.initial, &peer.sm)),
            snapshot: peer.stored_after,
            entries: peer.stored.clone(),
            applied: peer.applied_index,
        };
        let cfg = peer.node.config().clone();
        peer.node = RaftNode::new(cfg, restored).map_err(|e| e.to_string())?;
        peer.commit_checked = peer.applied_index;
        peer.staging.clear();
        peer.staging_meta = None;
        peer.reads_waiting.clear();
        c.down.remove(&nid);
        c.check(nid);
        Ok(status_line(c, id))
    }

    // ---- inspection -----------------------------------------------------------------------

    fn status(&mut self, ids: &[u64]) -> Result<String> {
        let nodes = self.ids_or_all(ids)?;
        let c = self.c()?;
        let mut out = String::new();
        for id in nodes {
            out.push_str(&status_line(c, id.0));
        }
        Ok(out)
    }

    /// The node's durable log: the snapshot it starts after, then one entry a line.
    fn raft_log(&mut self, id: u64) -> Result<String> {
        self.ids_or_all(&[id])?;
        let peer = self.c()?.peer(id);
        let mut out = String::new();
        if peer.stored_after.index > LogIndex(0) {
            writeln!(out, "snapshot {}", peer.stored_after).expect("string");
        }
        for e in &peer.stored {
            writeln!(out, "{e}").expect("string");
        }
        if out.is_empty() {
            out.push_str("<empty>\n");
        }
        Ok(out)
    }
}

/// `1 leader term=2 commit=3 applied=3 last=3 voters=(1,2,3) v0/t0`, then for a leader one
/// line per follower: `  2 match=3 replicate`.
fn status_line(c: &Cluster, id: u64) -> String {
    let node = &c.peer(id).node;
    let st = node.status();
    let mut out = format!("{id} {} term={}", st.role.name(), st.term);
    if c.down.contains(&NodeId(id)) {
        out.push_str(" DOWN");
    }
    if let (Some(leader), false) = (st.leader, st.role == Role::Leader) {
        write!(out, " leader={leader}").expect("string");
    }
    write!(out, " commit={} applied={} last={}", st.commit_index, st.applied_index, st.last_index)
        .expect("string");
    if st.snapshot_index > LogIndex(0) {
        write!(out, " snap={}", st.snapshot_index).expect("string");
    }
    writeln!(out, " {}", node.membership()).expect("string");
    if st.role == Role::Leader {
        for f in node.followers() {
            writeln!(out, "  {} match={} {}", f.id, f.match_index, f.state).expect("string");
        }
    }
    out
}

/// `ID term=T [vote=V] [log=(t1,t2,...)]`: a node restored with entries 1.. of those terms
/// (no data: the traces show them as `index/term`).
fn parse_restored(line: &str) -> Result<(u64, RestoredState)> {
    let mut words = line.split_whitespace();
    let id: u64 = words.next().and_then(|w| w.parse().ok()).ok_or("a line starts with an id")?;
    let mut hs = HardState::default();
    let mut entries = Vec::new();
    for w in words {
        let (k, v) = w.split_once('=').ok_or_else(|| format!("expected key=value: {w}"))?;
        let num = |s: &str| s.parse::<u64>().map_err(|_| format!("not a number: {s}"));
        match k {
            "term" => hs.term = Term(num(v)?),
            "vote" => hs.voted_for = Some(NodeId(num(v)?)),
            "log" => {
                let terms = v.trim_start_matches('(').trim_end_matches(')');
                for (i, t) in terms.split(',').filter(|t| !t.is_empty()).enumerate() {
                    entries.push(Entry::new(LogIndex(i as u64 + 1), Term(num(t)?), Vec::new()));
                }
            }
            _ => return Err(format!("unknown key {k}")),
        }
    }
    let state = RestoredState {
        hard_state: hs,
        membership: None::<Membership>,
        snapshot: SnapshotMeta::default(),
        entries,
        applied: LogIndex(0),
    };
    Ok((id, state))
}
