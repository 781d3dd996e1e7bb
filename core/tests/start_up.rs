//! Directed tests of the start-up rules for a node whose disk may have lost what it
//! acknowledged (`Config::check_empty_start`): the probe of every voter, the term and vote it
//! takes from the answers, what a wiped node may commit from a heartbeat, and the election
//! rules next to them. Each drives one `RaftNode` by hand and asserts its exact outputs; each
//! doc comment names the surviving mutants of `core/src/raft.rs` (see `core/mutants.md`) it
//! closes.

mod common;
use common::*;

use raft_kv_core::{
    Entry, HardState, Input, LogIndex, Membership, Message, MessageBody, NodeId, RaftNode, Ready,
    Rejection, RestoredState, Role, Term,
};
use std::collections::{BTreeMap, BTreeSet};

/// One node driven by hand, with the hard state its runtime would hold on disk.
struct Solo {
    node: RaftNode,
    durable: HardState,
}

impl Solo {
    /// Node `id` of voters `1..=voters_count`, restarted from `state`.
    fn new(id: u64, voters_count: u64, state: RestoredState, check_empty_start: bool) -> Solo {
        let mut cfg = config(id, voters_count);
        cfg.check_empty_start = check_empty_start;
        let durable = state.hard_state;
        let node = RaftNode::new(cfg, state).expect("valid config and state");
        node.check_invariants();
        Solo { node, durable }
    }

    /// Node `id` started on a blank disk, with the start-up probe on; returns the nonce of the
    /// probe it sent to every other voter.
    fn blank(id: u64, voters_count: u64) -> (Solo, u64) {
        Solo::probing(id, voters_count, RestoredState::default())
    }

    /// Node `id` restarted from `state` with the start-up probe on, which `state` makes it
    /// run; returns the nonce of the probe it sent to every other voter.
    fn probing(id: u64, voters_count: u64, state: RestoredState) -> (Solo, u64) {
        let mut solo = Solo::new(id, voters_count, state, true);
        let ready = solo.ready();
        let probed: BTreeSet<u64> = ready.messages.iter().map(|m| m.to.0).collect();
        let others: BTreeSet<u64> = (1..=voters_count).filter(|v| *v != id).collect();
        assert_eq!(probed, others, "the node asks every other voter at once");
        let nonce = ready
            .messages
            .iter()
            .find_map(|m| match m.body {
                MessageBody::StateProbe { nonce } => Some(nonce),
                _ => None,
            })
            .expect("a probe");
        (solo, nonce)
    }

    fn id(&self) -> u64 {
        self.node.status().id.0
    }

    /// The node's output, handled as a runtime would: the hard state made durable, appended
    /// entries reported persisted.
    fn ready(&mut self) -> Ready {
        let ready = self.node.ready();
        self.node.check_invariants();
        if let Some(hs) = ready.hard_state {
            self.durable = hs;
        }
        if let Some(last) = ready.append.as_ref().and_then(|(_, entries)| entries.last()) {
            self.node.step(Input::Persisted { index: last.index, term: last.term });
            self.node.check_invariants();
        }
        ready
    }

    fn step(&mut self, input: Input) -> Ready {
        self.node.step(input);
        self.node.check_invariants();
        self.ready()
    }

    /// Delivers a message of `term` from `from` and returns the node's output.
    fn receive(&mut self, from: u64, term: u64, body: MessageBody) -> Ready {
        let m = msg(from, self.id(), term, body);
        self.step(Input::Message(m))
    }

    /// Voter `from`, at `term` with a log ending at (`last_term`, `last_index`), answers the
    /// probe `nonce`, naming `voters` (each at address `10.0.0.<id>`).
    fn probe_answer(
        &mut self,
        nonce: u64,
        from: u64,
        term: u64,
        (last_term, last_index): (u64, u64),
        voters: &[u64],
    ) -> Ready {
        let addrs = voters.iter().map(|v| (NodeId(*v), format!("10.0.0.{v}"))).collect();
        self.probe_answer_with(nonce, from, term, (last_term, last_index), voters, addrs)
    }

    fn probe_answer_with(
        &mut self,
        nonce: u64,
        from: u64,
        term: u64,
        (last_term, last_index): (u64, u64),
        voters: &[u64],
        addrs: Vec<(NodeId, String)>,
    ) -> Ready {
        let body = MessageBody::StateProbeResponse {
            nonce,
            last_index: LogIndex(last_index),
            last_term: Term(last_term),
            voters: voters.iter().copied().map(NodeId).collect(),
            addrs,
        };
        self.receive(from, term, body)
    }

    /// The voters this node probes over the next probe interval.
    fn probed_next(&mut self) -> BTreeSet<u64> {
        let mut probed = BTreeSet::new();
        for _ in 0..HEARTBEAT_TICKS {
            for m in self.step(Input::Tick).messages {
                if matches!(m.body, MessageBody::StateProbe { .. }) {
                    probed.insert(m.to.0);
                }
            }
        }
        probed
    }
}

fn hard_state(term: u64, voted_for: Option<u64>, recovering: bool) -> HardState {
    HardState { term: Term(term), voted_for: voted_for.map(NodeId), recovering }
}

fn heartbeat(commit: u64) -> MessageBody {
    MessageBody::Heartbeat { commit: LogIndex(commit), read_round: 0 }
}

fn heartbeat_answer(last: u64) -> MessageBody {
    MessageBody::HeartbeatResponse { read_round: 0, last_log_index: LogIndex(last), clock_ms: 0 }
}

fn vote_request(last_term: u64, last_index: u64) -> MessageBody {
    MessageBody::RequestVote {
        last_log_index: LogIndex(last_index),
        last_log_term: Term(last_term),
        transfer: false,
    }
}

fn vote_granted(ready: &Ready) -> Option<bool> {
    ready.messages.iter().find_map(|m| match m.body {
        MessageBody::RequestVoteResponse { granted, .. } => Some(granted),
        _ => None,
    })
}

/// The messages of a `Ready` that sends exactly one.
fn only(from: u64, to: u64, term: u64, body: MessageBody) -> Vec<Message> {
    vec![msg(from, to, term, body)]
}

/// A recovering node restarted (its flag durable) at `term`, having voted for `voted_for`,
/// with a log of `terms`.
fn recovering(term: u64, voted_for: Option<u64>, terms: &[u64]) -> RestoredState {
    let mut state = restored(term, voted_for, terms);
    state.hard_state.recovering = true;
    state
}

fn membership(voters: &[u64], version: u64) -> Membership {
    Membership {
        voters: voters.iter().copied().map(NodeId).collect(),
        version,
        made_in: Term(1),
        ..Membership::default()
    }
}

fn membership_entry(index: u64, term: u64, m: Membership) -> Entry {
    let mut e = entry(index, term);
    e.membership = Some(m);
    e
}

// ---- the probe (`probe_answered`, `probe_done`) -----------------------------------------------

/// The voters a probe answer names.
fn answered_voters(ready: &Ready) -> BTreeSet<u64> {
    ready
        .messages
        .iter()
        .find_map(|m| match &m.body {
            MessageBody::StateProbeResponse { voters, .. } => {
                Some(voters.iter().map(|v| v.0).collect())
            }
            _ => None,
        })
        .expect("a probe answer")
}

/// A voter whose last membership change is not committed names the voters of the membership
/// before it too: the change may never take effect, and a voter it removes may hold a later
/// term. (Chaos seed 31001624: node 2's uncommitted removal of node 1 let a wiped node 3 end
/// its probe without node 1, which led term 3 with node 3's lost vote; node 3 took term 2 and
/// voted again in term 3, for node 2: two leaders in term 3.) Once the change commits, only
/// the new voters.
#[test]
fn a_probe_answer_names_the_voters_before_an_uncommitted_membership_change_too() {
    let mut state = restored(2, None, &[1, 2]);
    state.entries.push(membership_entry(3, 2, membership(&[2, 3], 2)));
    let mut n = Solo::new(2, 3, state, false);
    let ready = n.receive(3, 0, MessageBody::StateProbe { nonce: 7 });
    assert_eq!(answered_voters(&ready), BTreeSet::from([1, 2, 3]));
    n.receive(3, 2, heartbeat(3));
    assert_eq!(n.node.status().commit_index, LogIndex(3), "the change committed");
    let ready = n.receive(3, 0, MessageBody::StateProbe { nonce: 8 });
    assert_eq!(answered_voters(&ready), BTreeSet::from([2, 3]));
}

/// The most up-to-date answer decides which voters the probe waits for and where they are,
/// whichever order the answers come in: an older answer (an older membership, an old address)
/// neither ends the probe early nor overwrites a newer address. Closes
/// `probe_answered`: `last >= newest` with `<`.
#[test]
fn the_most_up_to_date_probe_answer_names_the_voters_to_wait_for_and_their_addresses() {
    let addrs = |pairs: &[(u64, &str)]| -> Vec<(NodeId, String)> {
        pairs.iter().map(|(id, a)| (NodeId(*id), a.to_string())).collect()
    };
    // Node 2 moved and node 4 joined since the membership node 1's older log ends with.
    let older = addrs(&[(1, "a1"), (2, "a2-old"), (3, "a3")]);
    let newer = addrs(&[(1, "a1"), (2, "a2-new"), (3, "a3"), (4, "a4")]);
    for newer_first in [false, true] {
        let (mut n, nonce) = Solo::blank(3, 3);
        let answer_older = |n: &mut Solo| {
            n.probe_answer_with(nonce, 1, 2, (2, 5), &[1, 2, 3], older.clone());
        };
        let answer_newer = |n: &mut Solo| {
            n.probe_answer_with(nonce, 2, 3, (3, 7), &[1, 2, 3, 4], newer.clone());
        };
        if newer_first {
            answer_newer(&mut n);
            answer_older(&mut n);
        } else {
            answer_older(&mut n);
            answer_newer(&mut n);
        }
        let learned: BTreeMap<u64, &str> =
            n.node.probe_addrs().iter().map(|(id, a)| (id.0, a.as_str())).collect();
        let expected = BTreeMap::from([(1, "a1"), (2, "a2-new"), (4, "a4")]);
        assert_eq!(learned, expected, "newer answer first: {newer_first}");
        assert_eq!(
            n.probed_next(),
            BTreeSet::from([4]),
            "the probe still waits for node 4 (newer answer first: {newer_first})"
        );
    }
}

/// The probe ends on the answer that completes it, not at the next probe interval: at once the
/// node takes the voters' highest term as one it voted in, and answers the leader it ignored
/// while probing. Closes `probe_answered`: `*v == self.cfg.id || ...` with `!=` and with `&&`
/// (the probe would never end on an answer, only when the next tick found nobody waiting).
#[test]
fn a_wiped_node_answers_its_leader_as_soon_as_the_last_voter_answered_its_probe() {
    let (mut n, nonce) = Solo::blank(3, 3);
    let ready = n.receive(1, 4, heartbeat(0));
    assert!(ready.messages.is_empty(), "a leader is ignored while probing");
    n.probe_answer(nonce, 1, 4, (4, 9), &[1, 2, 3]);
    assert_eq!(n.durable, hard_state(0, None, true), "entries exist: it lost what it had");
    let ready = n.receive(1, 4, heartbeat(0));
    assert!(ready.is_empty(), "still ignored while a voter has not answered");
    let ready = n.probe_answer(nonce, 2, 4, (4, 9), &[1, 2, 3]);
    assert_eq!(ready.hard_state, Some(hard_state(4, Some(3), true)), "the probe ended");
    let ready = n.receive(1, 4, heartbeat(0));
    assert_eq!(ready.messages, only(3, 1, 4, heartbeat_answer(0)));
}

/// If every voter's log is empty, nothing was ever committed and a blank node lost nothing: it
/// does not become recovering (durably) and may vote as any node. Closes `probe_answered`:
/// `self.fresh && last.1 > LogIndex(0)` with `||` and with `>=`.
#[test]
fn a_blank_node_whose_voters_all_have_empty_logs_is_not_recovering() {
    let (mut n, nonce) = Solo::blank(3, 3);
    n.probe_answer(nonce, 1, 0, (0, 0), &[1, 2, 3]);
    n.probe_answer(nonce, 2, 0, (0, 0), &[1, 2, 3]);
    assert_eq!(n.durable, hard_state(0, Some(3), false));
    let ready = n.receive(1, 1, vote_request(0, 0));
    assert_eq!(ready.hard_state, Some(hard_state(1, Some(1), false)));
    assert_eq!(vote_granted(&ready), Some(true));
}

/// A wiped node may have voted before the wipe in any term up to the highest a voter reports
/// (its candidate is one of them): it takes that term, durably, as one it already voted in,
/// so it cannot vote twice in it. Closes `probe_done`: `p.term > self.term` with `==` and with
/// `<` (the node would stay at term 0 with no vote).
#[test]
fn a_wiped_node_takes_the_highest_term_a_voter_reported_as_one_it_voted_in() {
    let (mut n, nonce) = Solo::blank(3, 3);
    n.probe_answer(nonce, 1, 4, (4, 9), &[1, 2, 3]);
    n.probe_answer(nonce, 2, 6, (4, 9), &[1, 2, 3]);
    assert_eq!(n.durable, hard_state(6, Some(3), true));
    // Node 2's log is as up-to-date as any, but this node may have voted for another in term 6.
    let ready = n.receive(2, 6, vote_request(4, 9));
    assert_eq!(vote_granted(&ready), Some(false));
}

/// A recovering node that restarted (its disk intact since the wipe) with a vote in the term
/// the voters report keeps that vote: it grants it again to the same candidate. Closes
/// `probe_done`: `p.term > self.term` with `>=`, and `p.term == self.term &&
/// self.voted_for.is_none()` with `||` (each would replace the vote by one for itself).
#[test]
fn a_recovering_node_keeps_the_vote_it_gave_in_the_term_the_voters_report() {
    let (mut n, nonce) = Solo::probing(3, 3, recovering(5, Some(2), &[1, 5]));
    n.probe_answer(nonce, 1, 5, (5, 2), &[1, 2, 3]);
    n.probe_answer(nonce, 2, 5, (5, 2), &[1, 2, 3]);
    assert_eq!(n.durable, hard_state(5, Some(2), true));
    let ready = n.receive(2, 5, vote_request(5, 2));
    assert_eq!(vote_granted(&ready), Some(true), "its vote of term 5, given again");
}

/// A recovering node that restarted at the term the voters report, without a vote in it, takes
/// it as a term it voted in (it may have voted before the wipe it is recovering from). Closes
/// `probe_done`: `p.term == self.term` with `!=`.
#[test]
fn a_recovering_node_without_a_vote_in_the_term_the_voters_report_takes_it_as_voted() {
    let (mut n, nonce) = Solo::probing(3, 3, recovering(5, None, &[1, 5]));
    n.probe_answer(nonce, 1, 5, (5, 2), &[1, 2, 3]);
    let ready = n.probe_answer(nonce, 2, 5, (5, 2), &[1, 2, 3]);
    assert_eq!(ready.hard_state, Some(hard_state(5, Some(3), true)));
    let ready = n.receive(2, 5, vote_request(5, 2));
    assert_eq!(vote_granted(&ready), Some(false));
}

// ---- a fresh node (`step_message`'s `self.fresh` guards) --------------------------------------

/// A blank node that hears from a leader knows entries exist: it marks itself recovering,
/// durably and at once, and stays so even if the probe answers (sent before that leader was
/// elected) say every log is empty. Closes `step_message`: the guard `self.fresh` of the
/// AppendEntries/Heartbeat/SnapshotChunk arm with `false`.
#[test]
fn a_blank_node_that_hears_from_a_leader_is_recovering_whatever_the_probe_says() {
    let (mut n, nonce) = Solo::blank(3, 3);
    let append = MessageBody::AppendEntries {
        prev_log_index: LogIndex(0),
        prev_log_term: Term(0),
        entries: vec![noop(1, 2)],
        leader_commit: LogIndex(0),
    };
    let ready = n.receive(1, 2, append);
    assert_eq!(ready.hard_state, Some(hard_state(0, None, true)));
    assert!(ready.messages.is_empty(), "not answered while probing");
    n.probe_answer(nonce, 1, 0, (0, 0), &[1, 2, 3]);
    n.probe_answer(nonce, 2, 0, (0, 0), &[1, 2, 3]);
    assert_eq!(n.durable, hard_state(0, Some(3), true));
}

/// Until its probe ends, a blank node takes part in no election: it neither answers a vote
/// request nor takes the candidate's term (a term on disk would make it look, after a crash,
/// like an intact node that never acknowledged anything). Closes `step_message`: the guard
/// `_ if self.fresh => return` with `false`.
#[test]
fn a_fresh_node_neither_answers_a_vote_request_nor_takes_its_term() {
    let (mut n, _nonce) = Solo::blank(3, 3);
    assert!(n.receive(1, 5, vote_request(4, 9)).is_empty());
    let pre_vote = MessageBody::PreVote { last_log_index: LogIndex(9), last_log_term: Term(4) };
    assert!(n.receive(2, 6, pre_vote).is_empty());
    assert_eq!(n.node.status().term, Term(0));
    assert_eq!(n.durable, hard_state(0, None, false));
}

// `maybe_release`'s three `&&` -> `||` mutants have no test here: they are equivalent. Its
// body is a no-op on a node not recovering (a vote floor exists only while recovering); it is
// never called while the probe runs (appends, heartbeats and chunks are dropped then, so the
// node knows no leader and `snapshot_received` returns); and
// `self.log.term(committed) == Some(self.term)` implies `committed <= self.log.last_index()`.

// ---- what a wiped node commits from a heartbeat (`held_for_leader`, `verified_to`) ------------

/// An intact follower commits what a heartbeat says is committed, up to its log's end, and
/// reports that end. Closes `held_for_leader` with `Default::default()`.
#[test]
fn a_follower_commits_what_a_heartbeat_says_and_reports_its_log_end() {
    let mut n = Solo::new(3, 3, restored(2, None, &[1, 1, 2]), false);
    let ready = n.receive(1, 2, heartbeat(3));
    assert_eq!(n.node.status().commit_index, LogIndex(3));
    assert_eq!(ready.messages, only(3, 1, 2, heartbeat_answer(3)));
}

/// A wiped node whose probe ended, then caught up by the leader of the term, up to index 3.
fn wiped_node_caught_up_to_3() -> Solo {
    let (mut n, nonce) = Solo::blank(3, 3);
    n.probe_answer(nonce, 1, 2, (2, 3), &[1, 2, 3]);
    n.probe_answer(nonce, 2, 2, (2, 3), &[1, 2, 3]);
    assert_eq!(n.durable, hard_state(2, Some(3), true));
    let append = MessageBody::AppendEntries {
        prev_log_index: LogIndex(0),
        prev_log_term: Term(0),
        entries: vec![entry(1, 1), entry(2, 1), noop(3, 2)],
        leader_commit: LogIndex(0),
    };
    let ready = n.receive(1, 2, append);
    assert_eq!(ready.messages, only(3, 1, 2, MessageBody::append_accepted(LogIndex(3))));
    assert_eq!(n.node.status().commit_index, LogIndex(0));
    n
}

/// A wiped node commits from its leader's heartbeat as far as that leader's AppendEntries of
/// this term proved its log matches, and reports that far. Closes `verified_to` with `()` and
/// `self.verified.0 != self.term` with `==`; `held_for_leader`: the guard
/// `self.verified.0 == self.term` with `false`, and `==` with `!=`.
#[test]
fn a_wiped_node_commits_from_a_heartbeat_what_this_terms_appends_proved() {
    let mut n = wiped_node_caught_up_to_3();
    let ready = n.receive(1, 2, heartbeat(3));
    assert_eq!(n.node.status().commit_index, LogIndex(3));
    assert_eq!(ready.messages, only(3, 1, 2, heartbeat_answer(3)));
}

/// What a deposed leader's AppendEntries proved counts for nothing under the next leader: the
/// entries may be the deposed leader's, where the new one committed others, and the new
/// leader's idea of this node's log may date from before the wipe. Until the new leader's own
/// appends prove a match, the node commits nothing more from its heartbeats and reports only
/// its commit index. Closes `held_for_leader`: the guard `self.verified.0 == self.term` with
/// `true` (and `==` with `!=`).
#[test]
fn what_a_deposed_leader_proved_counts_for_nothing_under_the_next_leader() {
    let mut n = wiped_node_caught_up_to_3();
    let ready = n.receive(2, 3, heartbeat(3));
    assert_eq!(n.node.status().commit_index, LogIndex(0));
    assert_eq!(ready.messages, only(3, 2, 3, heartbeat_answer(0)));
}

// ---- elections next to the start-up rules (`step_message`, `may_campaign`) --------------------

/// A pre-vote of a term older than the node's is refused with the node's term, so the
/// pre-candidate learns it is behind. Closes `step_message`: deleting the `PreVote` arm of the
/// `m.term < self.term` match.
#[test]
fn a_pre_vote_for_an_older_term_is_refused_with_the_current_term() {
    let mut n = Solo::new(1, 3, restored(5, None, &[1, 5]), false);
    let pre_vote = MessageBody::PreVote { last_log_index: LogIndex(9), last_log_term: Term(2) };
    let ready = n.receive(2, 3, pre_vote);
    let refusal = MessageBody::PreVoteResponse { granted: false };
    assert_eq!(ready.messages, only(1, 2, 5, refusal));
}

/// A follower that learns of a new leader from that leader's message of a higher term keeps
/// the proposals it was about to forward and sends them to the new leader (its clients are not
/// told "no leader" while there is one). Closes `step_message`: deleting the
/// AppendEntries/Heartbeat/SnapshotChunk arm of the `m.term > self.term` match (the node would
/// take the term with no leader, failing the forwarded work).
#[test]
fn a_follower_forwards_its_waiting_proposals_to_a_new_leader_of_a_higher_term() {
    let mut n = Solo::new(3, 3, restored(2, None, &[1, 2]), false);
    n.receive(1, 2, heartbeat(2));
    assert_eq!(n.node.status().leader, Some(NodeId(1)));
    n.node.step(Input::Propose { id: 7, data: b"x".to_vec() });
    let ready = n.receive(2, 3, heartbeat(2));
    assert_eq!(ready.rejected, Vec::<(u64, Rejection)>::new());
    let forwarded: Vec<&Message> =
        ready.messages.iter().filter(|m| matches!(m.body, MessageBody::Propose { .. })).collect();
    let proposal = msg(3, 2, 3, MessageBody::Propose { proposals: vec![(7, b"x".to_vec())] });
    assert_eq!(forwarded, vec![&proposal]);
}

/// Only a pre-candidate counts pre-vote answers: late refusals reaching a follower do not make
/// it forget its leader. Closes `step_message`: `self.role == Role::PreCandidate && (...)`
/// with `||`.
#[test]
fn a_follower_ignores_late_pre_vote_refusals() {
    let mut n = Solo::new(3, 3, restored(6, None, &[1, 6]), false);
    n.receive(1, 6, heartbeat(0));
    for from in [1, 2] {
        n.receive(from, 6, MessageBody::PreVoteResponse { granted: false });
    }
    assert_eq!(n.node.status().role, Role::Follower);
    assert_eq!(n.node.status().leader, Some(NodeId(1)));
}

/// A pre-candidate refused by a majority stops (it would lose the election). Closes
/// `step_message`: `m.term == self.term.next() || !granted` with the `!` deleted (refusals,
/// which carry the voter's own term, would be ignored).
#[test]
fn a_pre_candidate_refused_by_a_majority_becomes_a_follower() {
    let mut n = Solo::new(1, 3, restored(5, None, &[1, 5]), false);
    for _ in 0..2 * ELECTION_TICKS {
        n.step(Input::Tick);
        if n.node.status().role != Role::Follower {
            break;
        }
    }
    assert_eq!(n.node.status().role, Role::PreCandidate);
    n.receive(2, 5, MessageBody::PreVoteResponse { granted: false });
    assert_eq!(n.node.status().role, Role::PreCandidate, "one refusal is no majority");
    n.receive(3, 5, MessageBody::PreVoteResponse { granted: false });
    assert_eq!(n.node.status().role, Role::Follower);
    assert_eq!(n.node.status().term, Term(5));
}

/// Only its own leader can make a follower campaign at once (a leadership transfer); a
/// TimeoutNow from another node of the same term is ignored. Closes `step_message`: each `&&`
/// of the TimeoutNow condition (`role == Follower && leader == Some(from) && is_voter() &&
/// !fresh && !recovering`) with `||`.
#[test]
fn only_its_own_leader_can_make_a_follower_campaign_at_once() {
    let mut n = Solo::new(3, 3, restored(2, None, &[1, 2]), false);
    n.receive(1, 2, heartbeat(0));
    let ready = n.receive(2, 2, MessageBody::TimeoutNow);
    assert!(ready.is_empty(), "ignored: {ready:?}");
    assert_eq!(n.node.status().role, Role::Follower);
    // Its leader's does.
    let ready = n.receive(1, 2, MessageBody::TimeoutNow);
    assert_eq!(n.node.status().role, Role::Candidate);
    assert_eq!(ready.hard_state, Some(hard_state(3, Some(3), false)));
}

/// A node whose removal is committed never campaigns, though the membership before it named
/// it a voter: only a removal not yet committed lets it (it may hold the only copy). Closes
/// `may_campaign`: `last_membership_index() > commit_index()` with `>=`, and `... &&
/// previous_membership().is_voter(..)` with `||`.
#[test]
fn a_node_whose_removal_is_committed_never_campaigns() {
    let mut state = restored(1, None, &[]);
    state.entries = vec![
        membership_entry(1, 1, membership(&[1, 2, 3], 0)),
        membership_entry(2, 1, membership(&[1, 2], 1)),
    ];
    state.applied = LogIndex(2);
    state.membership = Some(membership(&[1, 2], 1));
    let mut n = Solo::new(3, 3, state, false);
    for _ in 0..4 * ELECTION_TICKS {
        let ready = n.step(Input::Tick);
        assert!(ready.messages.is_empty(), "a removed node campaigned: {:?}", ready.messages);
    }
    assert_eq!(n.node.status().role, Role::Follower);
}

/// The membership index is that of the last membership entry the log holds (the snapshot's
/// index when there is none). Closes `RaftNode::membership_index` with `Default::default()`.
#[test]
fn the_membership_index_is_that_of_the_last_membership_entry_held() {
    let mut state = restored(1, None, &[1]);
    state.entries.push(membership_entry(2, 1, membership(&[1, 2], 1)));
    state.entries.push(entry(3, 1));
    let n = Solo::new(1, 3, state, false);
    assert_eq!(n.node.membership_index(), LogIndex(2));
    let n = Solo::new(1, 3, restored(1, None, &[1, 1]), false);
    assert_eq!(n.node.membership_index(), LogIndex(0));
}

/// A node reports the id it was configured with (the runtime routes by it). Closes
/// `RaftNode::id` with `Default::default()`.
#[test]
fn a_node_reports_the_id_it_was_configured_with() {
    let n = Solo::new(3, 3, RestoredState::default(), false);
    assert_eq!(n.node.id(), NodeId(3));
}
