//! Raft paper scenarios (Ongaro & Ousterhout §5, §8; Ongaro's thesis §6.4, §9.6) driven through a
//! small deterministic in-process cluster. The harness follows the `Ready` contract exactly
//! (persist, send, apply, serve reads, report `Persisted`), checks every node's invariants after
//! every step, and checks the cluster-wide ones: at most one leader per term, and committed
//! entries never change on any node (state-machine safety). No clock, no threads; every loop has
//! a limit.

mod common;

use common::*;
use raft_kv_core::{
    Config, Entry, HardState, Input, LogIndex, Membership, MembershipChange, Message, MessageBody,
    NodeId, RaftNode, ReadState, Ready, Rejection, RestoredState, Role, SnapshotMeta, Term,
};
use std::collections::BTreeSet;

// ---- elections (§5.2, §5.4.1) ---------------------------------------------------------------

#[test]
fn three_nodes_elect_exactly_one_leader_whose_first_entry_is_a_noop_5_2_8() {
    let mut c = Cluster::new(3);
    let converged = c.run_until(20 * ELECTION_TICKS, |c| c.converged(1).is_some());
    assert!(converged, "no leader emerged");

    let leaders = c.leaders_now();
    assert_eq!(leaders.len(), 1, "exactly one leader: {leaders:?}");
    let leader = leaders[0];
    let term = c.peers[&leader].node.status().term;
    for id in c.ids() {
        let st = c.peers[&id].node.status();
        assert_eq!(st.term, term);
        assert_eq!(st.leader, Some(leader));
        if id != leader {
            assert_eq!(st.role, Role::Follower);
        }
        // §8: the leader's first entry is an empty no-op of its own term, committed everywhere.
        assert_eq!(c.peers[&id].stored, vec![noop(1, term.0)]);
        assert_eq!(c.peers[&id].applied, vec![noop(1, term.0)]);
    }
    assert_eq!(c.leaders.len(), 1, "one election won in total: {:?}", c.leaders);
}

#[test]
fn a_less_up_to_date_log_cannot_win_an_election_5_4_1() {
    // Node 1 missed entry 2 of term 1.
    let states =
        vec![restored(1, None, &[1]), restored(1, None, &[1, 1]), restored(1, None, &[1, 1])];
    let mut c = Cluster::restored(states, |_| {});

    for _ in 0..5 * ELECTION_TICKS {
        c.tick(1);
        c.settle();
        assert_ne!(c.status(1).role, Role::Leader);
        assert_ne!(c.status(1).role, Role::Candidate, "pre-votes are refused, so no real campaign");
    }
    let pre_votes = c.sent.iter().filter(|m| m.from == NodeId(1)).count();
    assert!(pre_votes >= 4, "node 1 kept asking: {pre_votes} pre-votes");
    for id in 1..=3 {
        assert_eq!(c.status(id).term, Term(1), "refused pre-votes leave every term alone");
    }

    // A real RequestVote from the stale log: the voter adopts the term (§5.1) but refuses its vote.
    c.take_readies(2);
    c.step(
        2,
        Input::Message(msg(
            1,
            2,
            2,
            MessageBody::RequestVote {
                last_log_index: LogIndex(1),
                last_log_term: Term(1),
                transfer: false,
            },
        )),
    );
    c.process(2);
    assert_eq!(c.take_readies(2), vec![vote_ready(2, 1, 2, false)]);
    c.settle();

    // A node holding the longer log wins, and node 1 catches up to it.
    c.elect_and_converge(2);
    let term = c.status(2).term.0;
    assert_eq!(c.stored(1), &[entry(1, 1), entry(2, 1), noop(3, term)]);
}

#[test]
fn hard_state_is_persisted_in_the_same_ready_as_the_vote_messages_5_2() {
    let mut c = Cluster::new(3);
    tick_until_it_campaigns(&mut c, 1);
    assert_eq!(c.status(1).role, Role::PreCandidate);
    let pre_vote = MessageBody::PreVote { last_log_index: LogIndex(0), last_log_term: Term(0) };
    // A pre-vote changes no durable state: nothing to persist before sending it.
    assert_eq!(
        c.take_readies(1),
        vec![Ready {
            messages: vec![msg(1, 2, 1, pre_vote.clone()), msg(1, 3, 1, pre_vote)],
            ..Ready::default()
        }]
    );

    c.deliver_round();
    for id in [2, 3] {
        assert_eq!(
            c.take_readies(id),
            vec![Ready {
                messages: vec![msg(id, 1, 1, MessageBody::PreVoteResponse { granted: true })],
                ..Ready::default()
            }]
        );
    }

    // The first grant makes a quorum: the candidate's new term and self-vote travel in the same
    // Ready as its RequestVotes, so the runtime makes them durable before sending.
    c.deliver_round();
    let vote = MessageBody::RequestVote {
        last_log_index: LogIndex(0),
        last_log_term: Term(0),
        transfer: false,
    };
    let voted_for_1 = HardState { term: Term(1), voted_for: Some(NodeId(1)), recovering: false };
    assert_eq!(
        c.take_readies(1),
        vec![Ready {
            hard_state: Some(voted_for_1),
            messages: vec![msg(1, 2, 1, vote.clone()), msg(1, 3, 1, vote)],
            ..Ready::default()
        }]
    );
    assert_eq!(c.peer(1).hard_state, voted_for_1);

    // Each voter's grant travels with its durable vote.
    c.deliver_round();
    for id in [2, 3] {
        assert_eq!(
            c.take_readies(id),
            vec![Ready {
                hard_state: Some(voted_for_1),
                messages: vec![msg(
                    id,
                    1,
                    1,
                    MessageBody::RequestVoteResponse { granted: true, clock_ms: 0 }
                )],
                ..Ready::default()
            }]
        );
        assert_eq!(c.peer(id).hard_state, voted_for_1);
    }

    // The new leader persists its no-op together with the AppendEntries that carry it.
    c.deliver_round();
    assert_eq!(c.status(1).role, Role::Leader);
    let append = |to| {
        msg(
            1,
            to,
            1,
            MessageBody::AppendEntries {
                prev_log_index: LogIndex(0),
                prev_log_term: Term(0),
                entries: vec![noop(1, 1)],
                leader_commit: LogIndex(0),
            },
        )
    };
    assert_eq!(
        c.take_readies(1),
        vec![Ready {
            append: Some((LogIndex(1), vec![noop(1, 1)])),
            messages: vec![append(2), append(3)],
            ..Ready::default()
        }]
    );
}

/// RequestVote rule 2 (Figure 2, §5.4.1): "at least as up-to-date" compares the last terms
/// first, and the lengths only when the last terms are equal. A longer log that ends in an
/// older term is refused; a shorter one that ends in a newer term gets the vote.
#[test]
fn the_last_term_decides_which_log_is_more_up_to_date_before_the_length_5_4_1() {
    // Voter 2 holds [1, 2]; node 1 holds [1, 1, 1] (longer, older last term), node 3 holds [3]
    // (shorter, newer last term).
    let states =
        vec![restored(2, None, &[1, 1, 1]), restored(2, None, &[1, 2]), restored(3, None, &[3])];
    let mut c = Cluster::restored(states, |_| {});
    let vote = |last_index, last_term| MessageBody::RequestVote {
        last_log_index: LogIndex(last_index),
        last_log_term: Term(last_term),
        transfer: false,
    };

    c.step(2, Input::Message(msg(1, 2, 3, vote(3, 1))));
    c.process(2);
    assert_eq!(
        c.take_readies(2),
        vec![vote_ready(2, 1, 3, false)],
        "a longer log ending in an older term is less up-to-date"
    );

    c.step(2, Input::Message(msg(3, 2, 4, vote(1, 3))));
    c.process(2);
    assert_eq!(
        c.take_readies(2),
        vec![vote_ready(2, 3, 4, true)],
        "a shorter log ending in a newer term is more up-to-date"
    );
}

/// RequestVote rule 2 (Figure 2): "if votedFor is null or candidateId" — one vote per term.
/// Node 2, with no leader, grants node 1 its vote in term 2, grants it again to the same
/// candidate (a retry), and refuses node 3, whose log is as up-to-date, in the same term.
#[test]
fn a_voter_grants_one_candidate_per_term_5_2() {
    let states = vec![restored(1, None, &[1]); 3];
    let mut c = Cluster::restored(states, |_| {});
    let vote = MessageBody::RequestVote {
        last_log_index: LogIndex(1),
        last_log_term: Term(1),
        transfer: false,
    };
    c.step(2, Input::Message(msg(1, 2, 2, vote.clone())));
    c.process(2);
    assert_eq!(c.take_readies(2), vec![vote_ready(2, 1, 2, true)]);
    c.step(2, Input::Message(msg(1, 2, 2, vote.clone())));
    c.process(2);
    let again = MessageBody::RequestVoteResponse { granted: true, clock_ms: 0 };
    assert_eq!(
        c.take_readies(2),
        vec![Ready { messages: vec![msg(2, 1, 2, again)], ..Ready::default() }],
        "the same candidate asking again gets the same answer"
    );
    c.step(2, Input::Message(msg(3, 2, 2, vote)));
    c.process(2);
    let refused = MessageBody::RequestVoteResponse { granted: false, clock_ms: 0 };
    assert_eq!(
        c.take_readies(2),
        vec![Ready { messages: vec![msg(2, 3, 2, refused)], ..Ready::default() }],
        "a second candidate of the same term is refused"
    );
    assert_eq!(c.peer(2).hard_state.voted_for, Some(NodeId(1)));
}

/// RequestVote rule 1 (Figure 2): a vote request of an older term is not granted, and changes
/// neither the term nor the vote. This implementation does not answer it at all (as etcd does):
/// the stale candidate learns the newer term elsewhere, e.g. from the refusal of its next
/// pre-vote, which does carry it.
/// A pre-vote asks whether the voter would vote in a term after its own (thesis §9.6): asked
/// for the term it is in, where it already voted for another node, it refuses.
#[test]
fn a_pre_vote_for_a_term_the_voter_already_voted_in_is_refused_9_6() {
    let mut c = Cluster::restored(vec![restored(5, Some(3), &[1]); 3], |_| {});
    let body = MessageBody::PreVote { last_log_index: LogIndex(9), last_log_term: Term(5) };
    c.step(2, Input::Message(msg(1, 2, 5, body)));
    c.process(2);
    let answer = c.sent.iter().find(|m| m.from == NodeId(2)).expect("answered");
    assert_eq!(answer.body, MessageBody::PreVoteResponse { granted: false });
}

/// A node acts only on messages addressed to it and sent by another node with an id (ids start
/// at 1): a misrouted message, one that claims to come from the node itself, or one from id 0,
/// changes nothing, however high its term.
#[test]
fn a_node_ignores_messages_not_addressed_to_it_or_claiming_to_be_from_itself_or_node_0() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let term = c.status(2).term.0;
    // A heartbeat of a higher term would make the node follow its sender in that term.
    let beat = || MessageBody::Heartbeat { commit: LogIndex(0), read_round: 0 };
    let strays =
        [msg(3, 1, term + 5, beat()), msg(2, 2, term + 5, beat()), msg(0, 2, term + 5, beat())];
    for m in strays {
        let sent = c.sent.len();
        c.step(2, Input::Message(m.clone()));
        c.process(2);
        assert_eq!(c.status(2).term.0, term, "took the term of {m:?}");
        assert_eq!(c.sent.len(), sent, "answered {m:?}");
    }
}

#[test]
fn a_vote_request_of_an_older_term_is_not_granted_and_changes_nothing_5_1() {
    // Node 1's log is more up-to-date than node 2's: only its term is stale.
    let states = vec![
        restored(2, Some(1), &[1, 1, 2]),
        restored(3, None, &[1, 1]),
        restored(3, Some(3), &[1, 1]),
    ];
    let mut c = Cluster::restored(states, |_| {});
    let vote = |last_index, last_term| MessageBody::RequestVote {
        last_log_index: LogIndex(last_index),
        last_log_term: Term(last_term),
        transfer: false,
    };

    c.step(2, Input::Message(msg(1, 2, 2, vote(3, 2))));
    c.process(2);
    assert_eq!(c.take_readies(2), vec![], "no vote, no durable change, no answer");
    assert_eq!(c.status(2).term, Term(3));
    assert_eq!(c.status(2).role, Role::Follower);

    // Its vote in term 3 is still free.
    c.step(2, Input::Message(msg(3, 2, 3, vote(2, 1))));
    c.process(2);
    assert_eq!(c.take_readies(2), vec![vote_ready(2, 3, 3, true)]);
}

/// Followers (Figure 2): a follower campaigns once an election timeout elapses "without
/// receiving AppendEntries RPC from current leader or granting vote to candidate", so granting
/// a vote restarts the timer: the candidate it voted for gets a whole timeout to win.
#[test]
fn granting_a_vote_restarts_the_election_timer_5_2() {
    // Node 2 knows no leader and has not voted in term 1, so a vote of term 1 changes no term
    // (a new term would restart the timer by itself).
    let states = || vec![restored(1, None, &[]); 3];
    // The tick its timer would fire at (drawn from [e, 2e) by its seeded RNG): an identical
    // node, ticked alone, shows it.
    let fires_at = {
        let mut twin = Cluster::restored(states(), |_| {});
        (1..=2 * ELECTION_TICKS)
            .find(|_| {
                twin.tick(2);
                twin.status(2).role != Role::Follower
            })
            .expect("the twin campaigns within two election timeouts")
    };
    let mut c = Cluster::restored(states(), |_| {});
    for _ in 1..fires_at {
        c.tick(2);
    }
    assert_eq!(c.status(2).role, Role::Follower, "one tick before its timer fires");

    let vote = MessageBody::RequestVote {
        last_log_index: LogIndex(0),
        last_log_term: Term(0),
        transfer: false,
    };
    c.step(2, Input::Message(msg(1, 2, 1, vote)));
    c.process(2);
    let granted = msg(2, 1, 1, MessageBody::RequestVoteResponse { granted: true, clock_ms: 0 });
    assert_eq!(c.sent.last(), Some(&granted));

    let sent_before = c.sent.len();
    for _ in 1..ELECTION_TICKS {
        c.tick(2);
        assert_eq!(c.status(2).role, Role::Follower, "campaigned within a timeout of its vote");
    }
    let campaigned = c.sent[sent_before..]
        .iter()
        .any(|m| matches!(m.body, MessageBody::PreVote { .. } | MessageBody::RequestVote { .. }));
    assert!(!campaigned);
    assert_eq!(c.status(2).term, Term(1));
}

/// Candidates (Figure 2, §5.2): "if AppendEntries RPC received from new leader: convert to
/// follower". Node 2 campaigns in term 1 and loses to node 1, which won the same term with
/// node 3's vote.
#[test]
fn a_candidate_that_hears_from_the_leader_of_its_term_becomes_its_follower_5_2() {
    let mut c = Cluster::new(3);
    tick_until_it_campaigns(&mut c, 2);
    assert_eq!(c.status(2).role, Role::PreCandidate);
    c.deliver_round(); // the pre-votes
    c.deliver_round(); // the grants: node 2 campaigns
    assert_eq!(c.status(2).role, Role::Candidate);
    assert_eq!(c.status(2).term, Term(1));
    c.queue.clear(); // its RequestVotes are lost

    // Node 1 wins term 1 with node 3 while cut off from node 2.
    c.cut_both(1, 2);
    win_with_votes_only(&mut c, 1);
    c.heal();
    assert_eq!(c.status(1).term, Term(1));
    assert_eq!(c.status(2).role, Role::Candidate, "node 2 still campaigns in term 1");

    let to_2 =
        |m: &Message| m.to == NodeId(2) && matches!(m.body, MessageBody::AppendEntries { .. });
    assert_eq!(c.deliver_matching(to_2), 1);
    let st = c.status(2);
    assert_eq!((st.role, st.term, st.leader), (Role::Follower, Term(1), Some(NodeId(1))));
    assert_eq!(c.stored(2), &[noop(1, 1)]);
    assert_eq!(c.peer(2).hard_state.voted_for, Some(NodeId(2)), "its vote of term 1 stands");
    c.settle();
    assert_eq!(c.status(2).commit_index, LogIndex(1));
}

fn campaign_messages(c: &Cluster, from: u64, since: usize) -> Vec<&Message> {
    c.sent[since..]
        .iter()
        .filter(|m| m.from == NodeId(from))
        .filter(|m| matches!(m.body, MessageBody::PreVote { .. } | MessageBody::RequestVote { .. }))
        .collect()
}

/// Figure 2, Candidates: on becoming a candidate it resets its election timer, and if the
/// timeout elapses without a winner it starts a new election (after a pre-vote, §9.6).
#[test]
fn a_candidate_whose_election_times_out_starts_another_5_2() {
    let mut c = Cluster::new(3);
    tick_until_it_campaigns(&mut c, 2);
    // The pre-vote's answers are slow: most of a timeout passes before they arrive.
    for _ in 0..ELECTION_TICKS - 1 {
        c.tick(2);
    }
    c.deliver_round(); // the pre-votes
    c.deliver_round(); // the grants: node 2 campaigns, and its timer starts again
    assert_eq!((c.status(2).role, c.status(2).term), (Role::Candidate, Term(1)));
    c.queue.clear(); // its RequestVotes are lost
    let since = c.sent.len();
    for _ in 0..ELECTION_TICKS - 1 {
        c.tick(2);
    }
    assert!(campaign_messages(&c, 2, since).is_empty(), "campaigned again before a timeout");
    for _ in 0..ELECTION_TICKS {
        c.tick(2);
    }
    let again = campaign_messages(&c, 2, since);
    assert!(!again.is_empty(), "no new election within the longest timeout");
    assert!(again.iter().all(|m| m.term == Term(2)), "the next election is for term 2");
}

/// Figure 2, Followers: a follower becomes a candidate only if its election timeout elapses
/// without hearing from the leader; while the leader's appends and heartbeats arrive, it never
/// campaigns, and once they stop it does.
#[test]
fn a_follower_campaigns_only_once_its_leader_falls_silent_5_2() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let term = c.status(1).term;
    let since = c.sent.len();
    for i in 0..10 * ELECTION_TICKS {
        if i % 7 == 0 {
            propose_on(&mut c, 1, u64::from(i), 1);
        }
        c.tick_all();
    }
    for id in 2..=3 {
        assert!(campaign_messages(&c, id, since).is_empty(), "node {id} campaigned");
    }
    assert_eq!(c.status(1).term, term);
    c.crash(1);
    let since = c.sent.len();
    c.run_ticks(2 * ELECTION_TICKS);
    let campaigned = (2..=3).filter(|id| !campaign_messages(&c, *id, since).is_empty()).count();
    assert!(campaigned > 0, "no follower campaigned after the leader fell silent");
}

// ---- log replication (§5.3) -----------------------------------------------------------------

#[test]
fn a_divergent_follower_is_backtracked_and_its_conflicting_suffix_truncated_5_3() {
    // Figure 7: the leader-to-be (a follower in term 6) and follower (f), which led terms 2 and 3
    // and holds entries nobody else has.
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let follower_log = [1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3];
    let states = vec![
        restored(6, None, &leader_log),
        restored(3, None, &follower_log),
        restored(6, None, &leader_log),
    ];
    let mut c = Cluster::restored(states, |_| {});
    c.elect_and_converge(1);
    let term = c.status(1).term;
    assert_eq!(term, Term(7));

    // One rejection: the follower answers with the last index whose term is at most the leader's
    // prev_log_term, and the leader skips its whole divergent suffix in one round trip.
    let rejections: Vec<&Message> = c
        .sent
        .iter()
        .filter(|m| matches!(m.body, MessageBody::AppendEntriesResponse { success: false, .. }))
        .collect();
    assert_eq!(
        rejections,
        vec![&msg(
            2,
            1,
            7,
            MessageBody::AppendEntriesResponse {
                success: false,
                index: LogIndex(10),
                hint: LogIndex(10),
                hint_term: Term(3),
            }
        )]
    );
    let appends_to_2: Vec<(LogIndex, Term)> = c
        .sent
        .iter()
        .filter(|m| m.to == NodeId(2))
        .filter_map(|m| match m.body {
            MessageBody::AppendEntries { prev_log_index, prev_log_term, .. } => {
                Some((prev_log_index, prev_log_term))
            }
            _ => None,
        })
        .collect();
    assert_eq!(appends_to_2[..2], [(LogIndex(10), Term(6)), (LogIndex(3), Term(1))]);

    // The follower dropped everything after index 3 in one write and took the leader's entries.
    let truncations: Vec<LogIndex> =
        c.peer(2).readies.iter().filter_map(|r| r.append.as_ref().map(|(from, _)| *from)).collect();
    assert_eq!(truncations, vec![LogIndex(4)]);
    let mut expected = log_of_terms(&leader_log);
    expected.push(noop(11, 7));
    for id in 1..=3 {
        assert_eq!(c.stored(id), expected.as_slice(), "node {id}");
        assert_eq!(c.status(id).commit_index, LogIndex(11));
    }
}

/// AppendEntries rule 5 (Figure 2): the follower commits up to min(leaderCommit, index of the
/// last new entry), not to the end of its own log. What lies past the entries the message
/// carried may not be the leader's: here the follower's 3@2, left by a deposed leader, while
/// the leader's committed index 3 holds 3@3 (an append carrying less than the leader's whole
/// log: a size limit, or a reordered older message).
#[test]
fn a_follower_commits_no_further_than_the_last_entry_the_append_carried_5_3() {
    let states = vec![
        restored(3, Some(1), &[1, 1, 3]),
        restored(2, None, &[1, 1, 2]),
        restored(3, Some(1), &[1, 1, 3]),
    ];
    let mut c = Cluster::restored(states, |_| {});
    let append = |prev: u64, prev_term: u64, entries: Vec<Entry>| MessageBody::AppendEntries {
        prev_log_index: LogIndex(prev),
        prev_log_term: Term(prev_term),
        entries,
        leader_commit: LogIndex(3),
    };

    c.step(2, Input::Message(msg(1, 2, 3, append(1, 1, vec![entry(2, 1)]))));
    c.process(2);
    assert_eq!(
        c.take_readies(2),
        vec![Ready {
            hard_state: Some(HardState { term: Term(3), voted_for: None, recovering: false }),
            messages: vec![msg(2, 1, 3, MessageBody::append_accepted(LogIndex(2)))],
            committed: vec![entry(1, 1), entry(2, 1)],
            ..Ready::default()
        }]
    );
    assert_eq!(c.status(2).commit_index, LogIndex(2), "committed past the entries received");
    assert_eq!(c.stored(2), &[entry(1, 1), entry(2, 1), entry(3, 2)], "no conflict, no truncation");

    // The leader's next append replaces 3@2, and only then is index 3 committed.
    c.step(2, Input::Message(msg(1, 2, 3, append(2, 1, vec![entry(3, 3)]))));
    c.process(2);
    assert_eq!(c.stored(2), &[entry(1, 1), entry(2, 1), entry(3, 3)]);
    assert_eq!(c.status(2).commit_index, LogIndex(3));
    assert_eq!(c.peer(2).applied, vec![entry(1, 1), entry(2, 1), entry(3, 3)]);
}

/// AppendEntries rule 1 and "all servers" (Figure 2, §5.1): an append from a leader of an
/// older term is refused, the refusal carries the receiver's newer term, and the stale leader,
/// on seeing that term, steps down to follower.
#[test]
fn a_stale_leader_is_refused_and_steps_down_on_the_newer_term_of_the_refusal_5_1() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let old = c.status(1).term;
    // Node 1 is cut off and, never ticked, never notices; nodes 2 and 3 elect a new leader.
    c.isolate(1);
    let new_leader = |c: &Cluster| [2, 3].into_iter().find(|id| c.status(*id).role == Role::Leader);
    let mut new = None;
    for _ in 0..4 * ELECTION_TICKS {
        c.tick(2);
        c.tick(3);
        c.settle();
        new = new_leader(&c);
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("nodes 2 and 3 elect a leader");
    let term = c.status(new).term;
    assert!(term > old);
    assert_eq!(c.status(1).role, Role::Leader, "node 1 still believes it leads");

    // Healed, node 1 replicates a proposal in its old term.
    c.heal();
    c.step(1, Input::Propose { id: 1, data: b"stale".to_vec() });
    c.process(1);
    let appends = c
        .queue
        .iter()
        .filter(|m| m.term == old && matches!(m.body, MessageBody::AppendEntries { .. }))
        .count();
    assert_eq!(appends, 2);
    let logs_before: Vec<Vec<Entry>> = [2, 3].iter().map(|id| c.stored(*id).to_vec()).collect();
    c.deliver_round();
    let refusal = MessageBody::AppendEntriesResponse {
        success: false,
        index: LogIndex(0),
        hint: LogIndex(0),
        hint_term: Term(0),
    };
    for (i, id) in [2, 3].into_iter().enumerate() {
        assert!(c.queue.contains(&msg(id, 1, term.0, refusal.clone())), "node {id}'s refusal");
        assert_eq!(c.stored(id), logs_before[i].as_slice(), "node {id} appended nothing");
        assert_eq!((c.status(id).term, c.status(id).leader), (term, Some(NodeId(new))));
    }

    c.deliver_round();
    assert_eq!(c.status(1).role, Role::Follower);
    assert_eq!(c.status(1).term, term);
    assert_eq!(c.leaders_now(), vec![NodeId(new)]);
    // It then follows the new leader, and its stale entry is gone.
    let commit = c.status(new).commit_index.0;
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(commit) == Some(NodeId(new))));
    assert!(c.stored(1).iter().all(|e| e.data != b"stale".to_vec()));
}

// ---- commitment (§5.4.2, Figure 8) ----------------------------------------------------------

/// Figure 8 (c): S1 leads term 4 and has replicated its term-2 entry at index 2 to S3 and S4, a
/// majority with itself, while its own no-op 3@4 is on no follower yet. S5 holds 2@3. Appends
/// carry one entry each so index 2 and 3 travel separately.
fn figure_8_c() -> Cluster {
    let states = vec![
        restored(3, None, &[1, 2]),
        restored(3, None, &[1, 2]),
        restored(3, None, &[1]),
        restored(3, None, &[1]),
        restored(3, Some(5), &[1, 3]),
    ];
    let mut c = Cluster::restored(states, |cfg| cfg.append_entries_max = 1);
    c.cut_both(1, 2);
    c.cut_both(1, 5);

    tick_until_it_campaigns(&mut c, 1);
    for _ in 0..8 {
        if c.status(1).role == Role::Leader {
            break;
        }
        c.deliver_round();
    }
    assert_eq!(c.status(1).role, Role::Leader);
    assert_eq!(c.status(1).term, Term(4));
    assert_eq!(c.stored(1), &[entry(1, 1), entry(2, 2), noop(3, 4)]);

    for _ in 0..8 {
        if c.stored(3).len() == 2 && c.stored(4).len() == 2 {
            break;
        }
        c.deliver_round();
    }
    for id in [3, 4] {
        assert_eq!(c.stored(id), &[entry(1, 1), entry(2, 2)]);
    }
    // S1 hears that index 2 is on S3 and S4: stored on 3 of 5 servers, but of an older term.
    c.deliver_round();
    assert_eq!(c.status(1).commit_index, LogIndex(0), "2@2 must not commit by counting replicas");
    c
}

#[test]
fn an_entry_of_an_older_term_commits_only_with_one_of_the_current_term_5_4_2() {
    let mut c = figure_8_c();
    // Figure 8 (e): once 3@4 reaches a majority, both entries commit together.
    for _ in 0..8 {
        if c.queue.is_empty() {
            break;
        }
        c.deliver_round();
        let commit = c.status(1).commit_index;
        assert!(commit == LogIndex(0) || commit == LogIndex(3), "committed {commit} alone");
    }
    assert_eq!(c.status(1).commit_index, LogIndex(3));
    assert_eq!(c.stored(3), &[entry(1, 1), entry(2, 2), noop(3, 4)]);

    // Healed, S5's conflicting 2@3 is replaced; every node ends with the leader's log.
    c.heal();
    let converged = c.run_until(6 * ELECTION_TICKS, |c| c.converged(3) == Some(NodeId(1)));
    assert!(converged);
    assert_eq!(c.stored(5), &[entry(1, 1), entry(2, 2), noop(3, 4)]);
}

#[test]
fn an_old_term_entry_on_a_majority_may_still_be_overwritten_figure_8_5_4_2() {
    let mut c = figure_8_c();
    // Figure 8 (d): S1 crashes before 3@4 spreads (S2 is down too). S5's log is more up-to-date
    // than S3's and S4's, so it wins and overwrites 2@2 on them: committing 2@2 in (c) would have
    // lost a committed entry. The harness checks no committed entry ever changes.
    c.crash(1);
    c.crash(2);
    let overwritten = c.run_until(20 * ELECTION_TICKS, |c| {
        c.status(5).role == Role::Leader && c.converged(3) == Some(NodeId(5))
    });
    assert!(overwritten, "S5 did not take over");
    let term = c.status(5).term.0;
    assert!(term >= 5);
    for id in [3, 4, 5] {
        assert_eq!(c.stored(id), &[entry(1, 1), entry(2, 3), noop(3, term)], "node {id}");
    }
    assert_eq!(c.committed.get(&LogIndex(2)), Some(&entry(2, 3)));
}

// ---- linearizable reads (thesis §6.4) -------------------------------------------------------

fn heartbeat_round(m: &Message) -> Option<u64> {
    match m.body {
        MessageBody::Heartbeat { read_round, .. } => Some(read_round),
        _ => None,
    }
}

#[test]
fn a_leader_read_is_released_after_a_quorum_acks_a_new_round_6_4() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let commit = c.status(1).commit_index;

    // A heartbeat goes out before the read arrives...
    for _ in 0..HEARTBEAT_TICKS {
        c.tick(1);
    }
    let old_rounds: BTreeSet<u64> = c.queue.iter().filter_map(heartbeat_round).collect();
    assert_eq!(old_rounds.len(), 1);
    let old_round = *old_rounds.first().expect("one round");

    c.step(1, Input::Read { id: 7 });
    c.process(1);
    let new_round_to: Vec<NodeId> = c
        .queue
        .iter()
        .filter(|m| heartbeat_round(m) == Some(old_round + 1))
        .map(|m| m.to)
        .collect();
    assert_eq!(new_round_to, vec![NodeId(2), NodeId(3)], "the read starts a new round");

    // ...and acknowledging it says nothing about leadership at the time of the read.
    assert_eq!(c.deliver_matching(|m| heartbeat_round(m) == Some(old_round)), 2);
    assert_eq!(c.deliver_matching(|m| matches!(m.body, MessageBody::HeartbeatResponse { .. })), 2);
    assert!(c.peer(1).readies.iter().all(|r| r.reads.is_empty()));

    // One follower's ack of the new round plus the leader itself is a quorum of three.
    assert_eq!(c.deliver_matching(|m| m.to == NodeId(2) && heartbeat_round(m).is_some()), 1);
    assert!(c.peer(1).readies.iter().all(|r| r.reads.is_empty()));
    c.take_readies(1);
    assert_eq!(c.deliver_matching(|m| m.from == NodeId(2)), 1);
    let released: Vec<ReadState> = c.take_readies(1).into_iter().flat_map(|r| r.reads).collect();
    assert_eq!(released, vec![ReadState { id: 7, index: commit }]);
    assert_eq!(c.peer(1).reads_served, vec![ReadState { id: 7, index: commit }]);
    assert_eq!(commit, c.status(1).commit_index);
    c.settle();
}

#[test]
fn a_follower_read_is_forwarded_and_returns_as_a_read_state_6_4() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let commit = c.status(1).commit_index;

    c.take_readies(2);
    c.step(2, Input::Read { id: 9 });
    c.process(2);
    assert_eq!(
        c.take_readies(2),
        vec![Ready {
            messages: vec![msg(2, 1, 1, MessageBody::ReadIndex { ids: vec![9] })],
            ..Ready::default()
        }]
    );
    c.settle();
    let released: Vec<ReadState> = c.take_readies(2).into_iter().flat_map(|r| r.reads).collect();
    assert_eq!(released, vec![ReadState { id: 9, index: commit }]);
    assert_eq!(c.peer(2).reads_served, vec![ReadState { id: 9, index: commit }]);
    assert!(c.peer(1).reads_served.is_empty());
}

#[test]
fn a_leader_cut_off_from_the_majority_never_releases_a_read_6_4() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.isolate(1);
    c.step(1, Input::Read { id: 11 });
    c.process(1);
    c.run_ticks(4 * ELECTION_TICKS);

    assert_ne!(c.status(1).role, Role::Leader);
    assert!(c.peer(1).readies.iter().all(|r| r.reads.is_empty()), "a read was released");
    assert!(c.peer(1).reads_served.is_empty() && c.peer(1).reads_waiting.is_empty());
    assert_eq!(c.peer(1).rejected, vec![(11, Rejection::LeadershipLost)]);
}

/// Elects `id` delivering only election messages: it leads, but the AppendEntries carrying its
/// no-op stay queued, so no entry of its term commits.
fn win_with_votes_only(c: &mut Cluster, id: u64) {
    let votes = |m: &Message| {
        matches!(
            m.body,
            MessageBody::PreVote { .. }
                | MessageBody::PreVoteResponse { .. }
                | MessageBody::RequestVote { .. }
                | MessageBody::RequestVoteResponse { .. }
        )
    };
    for _ in 0..4 * ELECTION_TICKS {
        c.tick(id);
        for _ in 0..4 {
            c.deliver_matching(votes);
        }
        if c.status(id).role == Role::Leader {
            return;
        }
    }
    panic!("node {id} did not win an election");
}

fn heartbeat_traffic(m: &Message) -> bool {
    matches!(m.body, MessageBody::Heartbeat { .. } | MessageBody::HeartbeatResponse { .. })
}

/// ReadIndex step 1 (thesis §6.4): a new leader's commit index may lag what the last leader
/// committed until it commits an entry of its own term, so it holds reads until then, however
/// many heartbeat rounds a quorum acknowledges meanwhile. Here entries 1 and 2 may have been
/// committed (and their writes acknowledged) in term 1, yet the new leader's commit index is 0.
#[test]
fn a_new_leader_releases_no_read_before_an_entry_of_its_term_commits_6_4() {
    let mut c = Cluster::restored(vec![restored(1, None, &[1, 1]); 3], |_| {});
    win_with_votes_only(&mut c, 1);
    assert_eq!(c.status(1).commit_index, LogIndex(0));

    c.step(1, Input::Read { id: 5 });
    c.process(1);
    // Heartbeats go round and are answered; the no-op's AppendEntries never arrive.
    let sent_before = c.sent.len();
    for _ in 0..3 * HEARTBEAT_TICKS {
        c.tick(1);
        for _ in 0..4 {
            c.deliver_matching(heartbeat_traffic);
        }
    }
    let answers = c.sent[sent_before..]
        .iter()
        .filter(|m| matches!(m.body, MessageBody::HeartbeatResponse { .. }))
        .count();
    assert!(answers >= 6, "the followers answered every heartbeat: {answers}");
    assert_eq!(c.status(1).role, Role::Leader);
    assert_eq!(c.status(1).commit_index, LogIndex(0));
    assert!(c.peer(1).readies.iter().all(|r| r.reads.is_empty()), "released before its no-op");
    assert!(c.peer(1).rejected.is_empty());

    // The no-op commits, with entries 1 and 2; the read is released at its index.
    c.settle();
    assert_eq!(c.status(1).commit_index, LogIndex(3));
    assert_eq!(c.peer(1).reads_served, vec![ReadState { id: 5, index: LogIndex(3) }]);
}

/// The bound on queued reads (`pending_reads_max`) counts the reads a new leader holds until
/// its first commit as well as those waiting for a round: past it, a read is refused as busy.
#[test]
fn a_leader_refuses_reads_past_its_queue_bound_counting_those_held_for_its_first_commit() {
    let mut c = Cluster::restored(vec![restored(1, None, &[1, 1]); 3], |cfg| {
        cfg.pending_reads_max = 2;
    });
    win_with_votes_only(&mut c, 1);
    for id in 1..=3 {
        c.step(1, Input::Read { id });
        c.process(1);
    }
    assert_eq!(c.peer(1).rejected, vec![(3, Rejection::Busy)]);
    c.settle();
    let served: Vec<u64> = c.peer(1).reads_served.iter().map(|r| r.id).collect();
    assert_eq!(served, vec![1, 2], "the two queued reads are served once the no-op commits");
}

/// A single voter is its own quorum: its reads need no other node's answer.
#[test]
fn a_single_node_cluster_serves_reads_6_4() {
    let mut c = Cluster::new(1);
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(1).is_some()), "no leader");
    c.step(1, Input::Read { id: 9 });
    c.process(1);
    c.settle();
    assert_eq!(c.peer(1).reads_served, vec![ReadState { id: 9, index: LogIndex(1) }]);
}

/// A ReadIndex request that reaches a node that is not the leader (the asker's idea of the
/// leader is stale) is dropped: the asker times out and asks again. It is not taken as the
/// node's own read, to be forwarded and served there.
#[test]
fn a_follower_drops_a_read_request_meant_for_the_leader_6_4() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let term = c.status(2).term.0;
    let sent = c.sent.len();
    c.step(2, Input::Message(msg(3, 2, term, MessageBody::ReadIndex { ids: vec![5] })));
    c.process(2);
    assert_eq!(c.sent.len(), sent, "the follower passed on a read not its own");
    c.settle();
    assert!(c.peer(2).reads_served.is_empty() && c.peer(2).rejected.is_empty());
}

// ---- pre-vote and check-quorum (thesis §9.6, §6.2) ------------------------------------------

#[test]
fn a_rejoining_partitioned_node_does_not_disrupt_the_leader_with_pre_vote_9_6() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let term = c.status(1).term;

    c.isolate(3);
    for id in 0..3 {
        c.step(1, Input::Propose { id, data: vec![b'w', id as u8] });
        c.process(1);
    }
    let sent_before = c.sent.len();
    c.run_ticks(10 * ELECTION_TICKS);
    let pre_votes = c.sent[sent_before..]
        .iter()
        .filter(|m| m.from == NodeId(3) && matches!(m.body, MessageBody::PreVote { .. }))
        .count();
    assert!(pre_votes >= 4, "the partitioned node kept campaigning: {pre_votes} pre-votes");
    assert_eq!(c.status(3).term, term, "pre-vote kept the isolated node's term");
    assert_eq!(c.status(1).role, Role::Leader);

    c.heal();
    let caught_up = c.run_until(5 * ELECTION_TICKS, |c| c.converged(4) == Some(NodeId(1)));
    assert!(caught_up, "node 3 did not rejoin");
    c.run_ticks(2 * ELECTION_TICKS);
    for id in 1..=3 {
        assert_eq!(c.status(id).term, term, "node {id}");
        assert_eq!(c.status(id).leader, Some(NodeId(1)), "node {id}");
    }
    assert_eq!(c.leaders.len(), 1, "no other election was won: {:?}", c.leaders);
}

#[test]
fn a_leader_cut_off_from_all_followers_steps_down_within_two_election_timeouts_6_2() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.isolate(1);

    let mut ticks = 0;
    for _ in 0..4 * ELECTION_TICKS {
        if c.status(1).role != Role::Leader {
            break;
        }
        c.tick_all();
        ticks += 1;
    }
    assert_eq!(c.status(1).role, Role::Follower);
    assert_eq!(c.status(1).leader, None);
    assert!(ticks <= 2 * ELECTION_TICKS, "stepped down after {ticks} ticks");

    // Its clients now fail fast instead of waiting on a leader that cannot commit.
    c.step(1, Input::Propose { id: 1, data: b"x".to_vec() });
    c.process(1);
    assert_eq!(c.peer(1).rejected, vec![(1, Rejection::NoLeader)]);
}

// ---- client proposals (§5.3, §8) ------------------------------------------------------------

#[test]
fn a_single_node_commits_only_after_its_own_write_is_persisted_5_3() {
    let mut node = RaftNode::new(config(1, 1), RestoredState::default()).expect("valid");
    let step = |node: &mut RaftNode, input: Input| {
        node.step(input);
        node.check_invariants();
        node.ready()
    };

    let mut became_leader = None;
    for _ in 0..2 * ELECTION_TICKS {
        let ready = step(&mut node, Input::Tick);
        if !ready.is_empty() {
            became_leader = Some(ready);
            break;
        }
    }
    assert_eq!(
        became_leader,
        Some(Ready {
            hard_state: Some(HardState {
                term: Term(1),
                voted_for: Some(NodeId(1)),
                recovering: false
            }),
            append: Some((LogIndex(1), vec![noop(1, 1)])),
            ..Ready::default()
        })
    );
    assert_eq!(node.status().role, Role::Leader);
    assert_eq!(node.status().commit_index, LogIndex(0), "the no-op is not durable yet");
    assert!(step(&mut node, Input::Tick).is_empty());

    let ready = step(&mut node, Input::Persisted { index: LogIndex(1), term: Term(1) });
    assert_eq!(ready, Ready { committed: vec![noop(1, 1)], ..Ready::default() });

    let x = Entry::new(LogIndex(2), Term(1), b"x".to_vec());
    let ready = step(&mut node, Input::Propose { id: 1, data: b"x".to_vec() });
    assert_eq!(ready, Ready { append: Some((LogIndex(2), vec![x.clone()])), ..Ready::default() });
    for _ in 0..3 * ELECTION_TICKS {
        assert!(step(&mut node, Input::Tick).is_empty(), "nothing commits before persistence");
    }
    // A report about a different write at that index changes nothing.
    assert!(step(&mut node, Input::Persisted { index: LogIndex(2), term: Term(0) }).is_empty());
    assert_eq!(node.status().commit_index, LogIndex(1));

    let ready = step(&mut node, Input::Persisted { index: LogIndex(2), term: Term(1) });
    assert_eq!(ready, Ready { committed: vec![x], ..Ready::default() });
    assert_eq!(node.status().commit_index, LogIndex(2));
    assert_eq!(node.status().applied_index, LogIndex(2));
}

#[test]
fn a_leader_bounds_the_bytes_of_its_uncommitted_entries() {
    // Issue 13.8: the count limit alone let 20,000 entries of up to 32 MiB wait uncommitted in
    // memory. One entry is always taken when nothing is uncommitted, whatever its size.
    let mut cfg = config(1, 1);
    cfg.uncommitted_bytes_max = 200;
    let mut node = lone_leader(cfg);
    let mut step = |input: Input| step_checked(&mut node, input);

    let big = step(Input::Propose { id: 1, data: vec![7; 300] });
    assert!(big.rejected.is_empty() && big.append.is_some(), "{big:?}");
    let refused = step(Input::Propose { id: 2, data: vec![7; 10] });
    assert_eq!(refused.rejected, vec![(2, Rejection::Busy)]);
    assert!(refused.append.is_none());
    assert!(!step(Input::Persisted { index: LogIndex(2), term: Term(1) }).committed.is_empty());

    // 34 bytes each (10 of data, 24 of entry): five fit in 200, the sixth does not.
    for id in 3..=7 {
        let r = step(Input::Propose { id, data: vec![7; 10] });
        assert!(r.rejected.is_empty(), "proposal {id}: {r:?}");
    }
    assert_eq!(
        step(Input::Propose { id: 8, data: vec![7; 10] }).rejected,
        vec![(8, Rejection::Busy)]
    );
    assert!(!step(Input::Persisted { index: LogIndex(7), term: Term(1) }).committed.is_empty());
    assert!(step(Input::Propose { id: 9, data: vec![7; 10] }).rejected.is_empty());
}

#[test]
fn a_follower_forwards_proposals_and_a_leaderless_node_rejects_them_5_3() {
    let mut c = Cluster::new(3);
    c.step(2, Input::Propose { id: 1, data: b"early".to_vec() });
    c.process(2);
    assert_eq!(
        c.take_readies(2),
        vec![Ready { rejected: vec![(1, Rejection::NoLeader)], ..Ready::default() }]
    );
    assert!(c.queue.is_empty());

    c.elect_and_converge(1);
    let term = c.status(1).term;
    c.take_readies(2);
    c.step(2, Input::Propose { id: 2, data: b"set x 1".to_vec() });
    c.process(2);
    assert_eq!(
        c.take_readies(2),
        vec![Ready {
            messages: vec![msg(
                2,
                1,
                term.0,
                MessageBody::Propose { proposals: vec![(2, b"set x 1".to_vec())] }
            )],
            ..Ready::default()
        }]
    );
    let applied = c.run_until(4 * ELECTION_TICKS, |c| c.converged(2).is_some());
    assert!(applied);
    let expected = vec![noop(1, term.0), Entry::new(LogIndex(2), term, b"set x 1".to_vec())];
    for id in 1..=3 {
        assert_eq!(c.peer(id).applied, expected, "node {id}");
    }
    assert_eq!(c.peer(2).rejected, vec![(1, Rejection::NoLeader)]);
}

#[test]
fn a_leader_tells_the_follower_which_forwarded_proposals_it_refused_for_want_of_room() {
    // Before, a forwarded proposal the leader refused (past its uncommitted bytes) was dropped
    // and its client waited for the request timeout, to be told only that the write may or
    // may not have happened.
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], |cfg| {
        cfg.uncommitted_bytes_max = 150;
    });
    c.elect_and_converge(1);
    c.step(2, Input::Propose { id: 10, data: vec![b'a'; 100] });
    c.step(2, Input::Propose { id: 11, data: vec![b'b'; 100] });
    c.process(2);
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(2).is_some()));
    assert_eq!(c.peer(2).rejected, vec![(11, Rejection::Busy)]);
    for id in 1..=3 {
        assert_eq!(c.peer(id).applied.last().map(|e| e.data.clone()), Some(vec![b'a'; 100]));
    }
}

#[test]
fn a_duplicated_forwarded_proposal_is_neither_appended_twice_nor_refused() {
    // With room for one entry, a copy of a forwarded proposal the network duplicated was
    // refused (BUSY, "not applied") while the first copy committed: found by the simulation
    // (seed 286329772648, message duplication and 400 bytes of uncommitted room).
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], |cfg| {
        cfg.uncommitted_bytes_max = 150;
    });
    c.elect_and_converge(1);
    let term = c.status(1).term.0;
    let propose = MessageBody::Propose { proposals: vec![(7, vec![b'a'; 100])] };
    c.step(1, Input::Message(msg(2, 1, term, propose.clone())));
    c.step(1, Input::Message(msg(2, 1, term, propose)));
    c.process(1);
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(2).is_some()));
    assert!(
        !c.sent.iter().any(|m| matches!(m.body, MessageBody::ProposalsRefused { .. })),
        "a copy was refused"
    );
    assert_eq!(c.peer(1).applied.len(), 2, "the no-op and one copy");
    assert!(c.peer(2).rejected.is_empty());
}

#[test]
fn a_follower_forwards_what_it_queued_in_messages_of_bounded_size() {
    // Issue 13.6: every write queued at a follower (all of them are re-sent at a leader
    // change) went to the leader in one message, dropped whole past the transport's frame
    // limit. Now no message holds more than append_bytes_max bytes of proposals, unless one
    // proposal alone does.
    let mut c =
        Cluster::restored(vec![RestoredState::default(); 3], |cfg| cfg.append_bytes_max = 100);
    c.elect_and_converge(1);
    let mut sizes = vec![30; 10];
    sizes.insert(4, 250);
    for (i, size) in sizes.iter().enumerate() {
        let data = vec![b'a' + i as u8; *size];
        c.step(2, Input::Propose { id: i as u64, data });
    }
    let sent_before = c.sent.len();
    c.process(2);
    let batches: Vec<Vec<usize>> = c.sent[sent_before..]
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Propose { proposals } => {
                Some(proposals.iter().map(|(_, d)| d.len()).collect())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        batches,
        vec![vec![30, 30, 30], vec![30], vec![250], vec![30, 30, 30], vec![30, 30, 30]],
        "in order, each message within the bound"
    );
    let applied = c.run_until(4 * ELECTION_TICKS, |c| c.peer(1).applied.len() == 1 + sizes.len());
    assert!(applied, "every proposal committed");
    let lens: Vec<usize> = c.peer(1).applied[1..].iter().map(|e| e.data.len()).collect();
    assert_eq!(lens, sizes, "in the order they were proposed");
}

#[test]
fn entries_carry_the_time_a_majority_of_clocks_agree_on() {
    // Issue 13.9: one clock that leaps (the leader's here) must not move the log's time,
    // which decides expiry everywhere; two that agree do.
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let set_clocks = |c: &mut Cluster, ms: [u64; 3]| {
        for (i, t) in ms.iter().enumerate() {
            c.step(i as u64 + 1, Input::Clock(*t));
        }
        c.run_ticks(HEARTBEAT_TICKS);
    };
    set_clocks(&mut c, [3_600_000 + 1_000, 1_000, 900]);
    propose_on(&mut c, 1, 1, 1);
    let t = c.stored(1).last().expect("appended").time;
    assert_eq!(t, 1_000, "the leader's leap alone moves nothing");
    set_clocks(&mut c, [3_600_000 + 2_000, 3_600_000 + 2_000, 2_000]);
    propose_on(&mut c, 1, 2, 1);
    let t = c.stored(1).last().expect("appended").time;
    assert_eq!(t, 3_600_000 + 2_000, "a majority's clocks decide");
    set_clocks(&mut c, [5_000, 5_000, 5_000]);
    propose_on(&mut c, 1, 3, 1);
    let t = c.stored(1).last().expect("appended").time;
    assert_eq!(t, 3_600_000 + 2_000, "and the log's time never goes back");
}

/// A follower's clock, as the leader knows it, is the one its last heartbeat response carried,
/// advanced by the leader's elapsed time (`Input::Now`, microseconds) since that response
/// arrived: followers that stopped answering still count with the time that passed since.
#[test]
fn a_followers_clock_is_advanced_by_the_time_since_its_last_answer() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.step(1, Input::Now(1_000_000));
    for id in 1..=3 {
        c.step(id, Input::Clock(1_000));
    }
    c.run_ticks(HEARTBEAT_TICKS);
    c.isolate(1);
    // Five seconds later by the leader's clock, which has also leapt an hour ahead: the
    // followers' clocks, not heard from since, are taken to be five seconds on.
    c.step(1, Input::Now(6_000_000));
    c.step(1, Input::Clock(3_600_000));
    c.step(1, Input::Propose { id: 1, data: b"t".to_vec() });
    c.process(1);
    let t = c.stored(1).last().expect("appended").time;
    assert_eq!(t, 6_000, "the followers' clocks advanced by the 5 s since they answered");
}

#[test]
fn a_lost_append_while_pipelining_is_resent_after_heartbeats_show_no_progress_5_3() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let term = c.status(1).term;
    c.step(1, Input::Propose { id: 1, data: b"x".to_vec() });
    c.process(1);
    // The network loses the AppendEntries to node 2; node 3 gets its copy, so it commits.
    let before = c.queue.len();
    c.queue.retain(|m| !(m.to == NodeId(2) && matches!(m.body, MessageBody::AppendEntries { .. })));
    assert_eq!(c.queue.len(), before - 1, "exactly one append to node 2 was in flight");
    c.settle();
    assert_eq!(c.status(1).commit_index, LogIndex(2));
    // No further proposal comes: heartbeats alone must reveal the loss and resend the entry.
    let caught_up = c.run_until(4 * ELECTION_TICKS, |c| c.peer(2).applied.len() == 2);
    assert!(caught_up, "node 2 never received the lost entry");
    assert_eq!(c.peer(2).applied[1], Entry::new(LogIndex(2), term, b"x".to_vec()));
    assert_eq!(c.status(1).term, term, "recovering must not cost an election");
}

// ---- log compaction and snapshots (§7) ------------------------------------------------------

/// Compacts every 4 entries, keeping none: not even for followers still active (these tests
/// are about the followers that need a snapshot).
fn compacting(cfg: &mut Config) {
    cfg.snapshot_entries = 4;
    cfg.snapshot_keep_entries = 0;
    cfg.compact_keeps_followers = false;
}

fn propose_on(c: &mut Cluster, leader: u64, from: u64, count: u64) {
    for i in from..from + count {
        c.step(leader, Input::Propose { id: i, data: format!("v{i}").into_bytes() });
        c.process(leader);
        c.settle();
    }
}

fn installs(c: &mut Cluster, id: u64) -> Vec<SnapshotMeta> {
    c.take_readies(id).iter().filter_map(|r| r.install_snapshot).collect()
}

#[test]
fn every_node_compacts_its_applied_log_past_the_threshold_7() {
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], compacting);
    c.elect_and_converge(1);
    propose_on(&mut c, 1, 1, 10);
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(11).is_some()));
    for id in 1..=3 {
        let p = c.peer(id);
        assert!(p.stored_after.index.0 >= 8, "node {id} compacted to {:?}", p.stored_after);
        assert_eq!(p.node.status().snapshot_index, p.stored_after.index);
        assert_eq!(p.sm.len(), 11, "node {id}: the state machine keeps everything");
    }
    assert!(installs(&mut c, 2).is_empty(), "followers in step need no snapshot");
}

#[test]
fn the_entries_kept_after_a_compaction_are_bounded_by_bytes_too_7() {
    // 1,000 entries are to be kept, but at most half of 8 KB: a compaction of entries of 1 KB
    // keeps at most 4, and the log never holds 8 KB for long (before: it was never compacted).
    let big = |cfg: &mut Config| {
        cfg.snapshot_entries = 1_000;
        cfg.snapshot_bytes = 8 << 10;
        cfg.snapshot_keep_entries = 1_000;
    };
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], big);
    c.elect_and_converge(1);
    for i in 0..30u64 {
        c.step(1, Input::Propose { id: i + 1, data: vec![i as u8; 1024] });
        c.process(1);
        c.settle();
    }
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(31).is_some()));
    for id in 1..=3 {
        let p = c.peer(id);
        assert!(p.stored_after.index.0 >= 23, "node {id} kept the log after {:?}", p.stored_after);
        assert_eq!(p.sm.len(), 31, "node {id}: the state machine keeps everything");
    }
}

#[test]
fn a_follower_behind_the_compacted_log_installs_a_snapshot_and_rejoins_7() {
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], compacting);
    c.elect_and_converge(1);
    c.crash(3);
    propose_on(&mut c, 1, 1, 12);
    let leader_start = c.peer(1).stored_after.index;
    assert!(leader_start.0 >= 8, "the leader compacted to {leader_start}");
    assert_eq!(c.peer(3).sm.len(), 1, "node 3 holds only the no-op");

    c.down.clear();
    assert!(c.run_until(8 * ELECTION_TICKS, |c| c.converged(13).is_some()));
    assert_eq!(c.peer(3).sm, c.peer(1).sm, "node 3's state machine is the leader's");
    let installed = installs(&mut c, 3);
    assert_eq!(installed.len(), 1, "one snapshot installed: {installed:?}");
    assert!(installed[0].index >= leader_start);
    assert!(c.peer(3).applied.len() < 13, "node 3 did not apply every entry itself");
    // Each stored chunk was acknowledged to the leader (whose runtime paces the stream by the
    // acknowledgements), in order, and the last one as finished.
    let acks: Vec<(NodeId, u64, bool)> = c
        .sent
        .iter()
        .filter(|m| m.from == NodeId(3))
        .filter_map(|m| match m.body {
            MessageBody::SnapshotAck { meta, next_seq, finished } if meta == installed[0] => {
                Some((m.to, next_seq, finished))
            }
            _ => None,
        })
        .collect();
    let chunks = installed[0].index.0;
    let mut expected: Vec<(NodeId, u64, bool)> =
        (1..=chunks).map(|seq| (NodeId(1), seq, false)).collect();
    expected.push((NodeId(1), u64::MAX, true));
    assert_eq!(acks, expected, "one acknowledgement per chunk, then the install's");

    // It keeps replicating from the log afterwards.
    propose_on(&mut c, 1, 100, 2);
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(15).is_some()));
    assert_eq!(c.peer(3).sm, c.peer(1).sm);
}

#[test]
fn a_snapshot_transfer_cut_off_midway_starts_over_7() {
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], compacting);
    c.elect_and_converge(1);
    c.crash(3);
    propose_on(&mut c, 1, 1, 12);
    c.down.clear();
    // Node 3 answers heartbeats, the leader starts streaming, and every chunk after the first
    // is lost.
    let mut chunks = 0;
    // The leader gives a stalled transfer 120 heartbeat intervals (240 ticks here).
    for _ in 0..30 * ELECTION_TICKS {
        for id in c.ids() {
            c.step_id(id, Input::Tick);
            c.process_id(id);
        }
        for _ in 0..SETTLE_ROUNDS_MAX {
            let lost =
                |m: &Message| matches!(&m.body, MessageBody::SnapshotChunk { seq, .. } if *seq > 0);
            let before = c.queue.len();
            c.queue.retain(|m| !lost(m));
            chunks += before - c.queue.len();
            if c.queue.is_empty() {
                break;
            }
            c.deliver_round();
        }
    }
    assert!(chunks > 0, "a transfer was started and cut");
    let started =
        |c: &Cluster| c.peer(1).readies.iter().map(|r| r.send_snapshots.len()).sum::<usize>();
    assert!(started(&c) >= 2, "the stalled transfer started over ({} starts)", started(&c));
    assert_eq!(c.peer(3).sm.len(), 1, "nothing installed from a partial snapshot");

    // With the network whole again, the next attempt completes.
    assert!(c.run_until(60 * ELECTION_TICKS, |c| c.converged(13).is_some()));
    assert_eq!(c.peer(3).sm, c.peer(1).sm);
}

#[test]
fn a_snapshot_the_follower_already_holds_is_not_installed_7() {
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], compacting);
    c.elect_and_converge(1);
    propose_on(&mut c, 1, 1, 6);
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(7).is_some()));
    let term = c.status(1).term.0;
    // A chunk of an old snapshot, delayed in the network, arrives after the follower caught up.
    let meta = SnapshotMeta { index: LogIndex(3), term: Term(term), time: 0 };
    let body =
        MessageBody::SnapshotChunk { meta, seq: 0, data: encode_entry(&noop(1, term)), last: true };
    c.deliver(msg(1, 2, term, body));
    assert!(installs(&mut c, 2).is_empty());
    let answered = c.queue.iter().any(|m| {
        m.from == NodeId(2) && matches!(m.body, MessageBody::SnapshotAck { finished: true, .. })
    });
    assert!(answered, "the leader is told the follower needs no more of it");
    c.settle();
    assert_eq!(c.converged(7), Some(NodeId(1)));
}

#[test]
fn a_node_restarts_from_its_snapshot_and_the_log_after_it_7() {
    let entries: Vec<Entry> = (6..=8).map(|i| entry(i, 2)).collect();
    let state = RestoredState {
        hard_state: HardState { term: Term(2), voted_for: None, recovering: false },
        membership: None,
        snapshot: SnapshotMeta { index: LogIndex(5), term: Term(1), time: 0 },
        entries,
        applied: LogIndex(6),
    };
    let node = RaftNode::new(config(1, 3), state.clone()).expect("valid");
    let st = node.status();
    assert_eq!(
        (st.snapshot_index, st.applied_index, st.commit_index, st.last_index),
        (LogIndex(5), LogIndex(6), LogIndex(6), LogIndex(8))
    );
    node.check_invariants();

    let below = RestoredState { applied: LogIndex(4), ..state };
    assert!(RaftNode::new(config(1, 3), below).is_err(), "applied below the snapshot is refused");
}

#[test]
fn a_new_leader_streams_a_snapshot_to_a_follower_whose_log_ends_before_its_own_7() {
    // Nodes 1 and 2 compacted to index 5; node 3 lost its log. Node 1's first probe of node 3
    // is rejected with a hint before the compacted prefix, which must lead to a snapshot, not
    // to probing index 5 forever.
    let compacted = RestoredState {
        hard_state: HardState { term: Term(2), voted_for: None, recovering: false },
        membership: None,
        snapshot: SnapshotMeta { index: LogIndex(5), term: Term(1), time: 0 },
        entries: (6..=8).map(|i| entry(i, 2)).collect(),
        applied: LogIndex(6),
    };
    let empty = RestoredState {
        hard_state: HardState { term: Term(2), voted_for: None, recovering: false },
        ..RestoredState::default()
    };
    let mut c = Cluster::restored(vec![compacted.clone(), compacted, empty], |_| {});
    c.elect(1);
    assert!(c.run_until(8 * ELECTION_TICKS, |c| c.converged(9).is_some()));
    assert_eq!(installs(&mut c, 3).len(), 1);
    assert_eq!(c.peer(3).sm, c.peer(1).sm);
    assert_eq!(c.peer(3).sm.len(), 9);
}

// ---- leadership transfer (thesis §3.10) -----------------------------------------------------

#[test]
fn leadership_moves_to_the_chosen_follower_asked_through_any_node_3_10() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let term = c.status(1).term;
    // Asked through follower 2, which forwards to the leader.
    c.step(2, Input::TransferLeader { to: NodeId(3) });
    c.process(2);
    c.settle();
    assert_eq!(c.status(3).role, Role::Leader, "node 3 leads at once, without a timeout");
    assert_eq!(c.status(3).term, term.next(), "one election, no pre-vote round");
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(2).is_some()));
    assert_eq!(c.converged(2), Some(NodeId(3)));
}

#[test]
fn a_transfer_first_brings_the_transferee_up_to_date_and_holds_new_proposals_3_10() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.cut_both(1, 3);
    propose_on(&mut c, 1, 1, 3);
    assert!(c.status(3).last_index < c.status(1).last_index);
    c.step(1, Input::TransferLeader { to: NodeId(3) });
    c.process(1);
    // While handing over, the leader takes no new entries: they would keep node 3 behind.
    c.step(1, Input::Propose { id: 99, data: b"late".to_vec() });
    c.process(1);
    assert_eq!(c.peer(1).rejected, vec![(99, Rejection::Transferring)]);
    c.heal();
    let moved = c.run_until(4 * ELECTION_TICKS, |c| c.status(3).role == Role::Leader);
    assert!(moved, "node 3 took over once caught up");
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(5).is_some()));
    let leader_log_has_all = (2..=4).all(|i| c.peer(3).sm.iter().any(|e| e.index == LogIndex(i)));
    assert!(leader_log_has_all);
}

/// Whether leader `id` takes a proposal now (it is refused while a transfer is under way).
fn takes_proposal(c: &mut Cluster, id: u64, proposal: u64) -> bool {
    c.step(id, Input::Propose { id: proposal, data: b"p".to_vec() });
    c.process(id);
    !c.peer(id).rejected.iter().any(|(p, _)| *p == proposal)
}

/// Leader 1 asked to hand over to node 3, which is down, one tick short of an election timeout
/// ago.
fn transfer_to_a_dead_node_almost_abandoned() -> Cluster {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.crash(3);
    c.step(1, Input::TransferLeader { to: NodeId(3) });
    c.process(1);
    c.run_ticks(ELECTION_TICKS - 1);
    c
}

/// A transfer the transferee never answers is abandoned after exactly one election timeout of
/// the leader's ticks (thesis §3.10: "if the transfer does not complete within an election
/// timeout, the leader aborts the transfer and resumes accepting client requests"): proposals
/// are refused on the last tick of it and taken on the next.
#[test]
fn a_transfer_to_a_dead_node_is_abandoned_after_an_election_timeout_3_10() {
    let mut c = transfer_to_a_dead_node_almost_abandoned();
    assert_eq!(c.status(1).role, Role::Leader);
    assert!(!takes_proposal(&mut c, 1, 7), "still handing over after {} ticks", ELECTION_TICKS - 1);
    c.run_ticks(1);
    assert!(takes_proposal(&mut c, 1, 8), "the transfer is abandoned after an election timeout");
    c.settle();
    assert!(c.run_until(2 * ELECTION_TICKS, |c| c.status(1).commit_index == LogIndex(2)));
}

/// A leader asked to hand leadership to itself, or to a node that is not a voter, does
/// nothing: it keeps taking proposals (a transfer would refuse them for an election timeout).
#[test]
fn a_transfer_to_the_leader_itself_or_to_a_non_voter_is_ignored_3_10() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.step(1, Input::TransferLeader { to: NodeId(1) });
    c.process(1);
    assert!(takes_proposal(&mut c, 1, 1), "a transfer to itself held proposals");
    c.step(1, Input::TransferLeader { to: NodeId(9) });
    c.process(1);
    assert!(takes_proposal(&mut c, 1, 2), "a transfer to a non-member held proposals");
    c.settle();
    assert_eq!(c.status(1).role, Role::Leader);
}

/// A transfer asked while another is under way replaces it when it names another node (the
/// first transferee may be dead), and does not restart it when it names the same one.
#[test]
fn a_second_transfer_to_another_node_replaces_the_first_3_10() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.crash(3);
    c.step(1, Input::TransferLeader { to: NodeId(3) });
    c.process(1);
    c.run_ticks(2);
    c.step(1, Input::TransferLeader { to: NodeId(2) });
    c.process(1);
    c.settle();
    assert_eq!(c.status(2).role, Role::Leader, "node 2 took over at once");
}

#[test]
fn a_repeated_transfer_request_does_not_restart_the_transfer_3_10() {
    let mut c = transfer_to_a_dead_node_almost_abandoned();
    // Asked again for the same node: the clock of the first request still runs.
    c.step(1, Input::TransferLeader { to: NodeId(3) });
    c.process(1);
    c.run_ticks(1);
    assert!(takes_proposal(&mut c, 1, 1), "the repeated request restarted the transfer");
}

// ---- leader leases (thesis §6.4.1) ----------------------------------------------------------

fn leasing(cfg: &mut Config) {
    cfg.lease_ticks = raft_kv_core::lease_ticks_for_drift(ELECTION_TICKS, 1.0).expect("fits");
}

fn read_released_at_once(c: &mut Cluster, id: u64, read: u64) -> bool {
    c.step(id, Input::Read { id: read });
    c.process(id);
    c.peer(id).reads_served.iter().chain(&c.peer(id).reads_waiting).any(|r| r.id == read)
}

/// INFO's `role:` field and the logs show these words; tools that parse INFO depend on them.
#[test]
fn each_role_has_the_name_info_shows() {
    let names = [Role::Follower, Role::PreCandidate, Role::Candidate, Role::Leader].map(Role::name);
    assert_eq!(names, ["follower", "pre-candidate", "candidate", "leader"]);
}

#[test]
fn the_lease_of_a_drift_bound_is_shorter_than_the_election_timeout() {
    use raft_kv_core::lease_ticks_for_drift as lease;
    assert_eq!(lease(50, 1.0), Some(48));
    assert_eq!(lease(50, 2.0), Some(23));
    assert_eq!(lease(50, 4.0), Some(11));
    assert_eq!(lease(50, 0.5), None, "a ratio below 1 is meaningless");
    assert_eq!(lease(50, f64::NAN), None);
    assert_eq!(lease(2, 1.0), None, "nothing left");
    let mut cfg = config(1, 3);
    cfg.lease_ticks = ELECTION_TICKS;
    assert!(cfg.validate().is_err());
}

/// A 3-node cluster with leases, converged on whichever node won (with leases on, fresh nodes
/// refuse votes for their first election timeout, so every node must tick): (leader, the
/// other two).
fn leasing_cluster() -> (Cluster, u64, u64, u64) {
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], leasing);
    assert!(c.run_until(20 * ELECTION_TICKS, |c| c.converged(1).is_some()), "no leader");
    let l = c.converged(1).expect("converged").0;
    let others: Vec<u64> = (1..=3).filter(|i| *i != l).collect();
    (c, l, others[0], others[1])
}

#[test]
fn a_leader_holding_a_lease_serves_reads_without_a_round_6_4_1() {
    let (mut c, l, f, _) = leasing_cluster();
    c.run_ticks(HEARTBEAT_TICKS);
    let sent_before = c.sent.len();
    assert!(read_released_at_once(&mut c, l, 1), "released without a round");
    assert_eq!(c.sent.len(), sent_before, "no heartbeat was needed");
    // A follower's read is answered from the lease too.
    c.step(f, Input::Read { id: 2 });
    c.process(f);
    c.settle();
    assert!(c.peer(f).reads_served.iter().any(|r| r.id == 2));
}

/// A lease read is answered from the leader's commit index, which is known to be the latest
/// only once the leader committed an entry of its term (thesis §6.4.1 with §6.4 step 1): until
/// then the leader serves no read from its lease, even with a quorum's acknowledgement of its
/// heartbeat round in hand. Entries 1 and 2 may have been committed in term 1; the new leader's
/// commit index is 0.
/// A lease is counted from the moment the leader started the round a quorum acknowledged, not
/// from the acknowledgement (thesis §6.4.1: "the leader starts its lease timer when it sends the
/// heartbeats"): acknowledgements that arrive late buy a shorter lease.
#[test]
fn a_lease_is_counted_from_the_start_of_the_round_not_its_acknowledgement_6_4_1() {
    let (mut c, l, _, _) = leasing_cluster();
    let lease_ticks = u64::from(c.peer(l).node.config().lease_ticks);
    c.settle();
    // The leader alone ticks until it starts a round, whose heartbeats wait in the network.
    let rounds = |c: &Cluster| c.queue.iter().filter_map(heartbeat_round).count();
    let mut started = false;
    for _ in 0..HEARTBEAT_TICKS {
        c.tick(l);
        if rounds(&c) > 0 {
            started = true;
            break;
        }
    }
    assert!(started, "no round within a heartbeat interval");
    // One tick later (no new round: the interval is two ticks), the acknowledgements arrive.
    c.tick(l);
    assert_eq!(rounds(&c), 2, "one round to each follower");
    c.settle();
    assert_eq!(c.peer(l).node.lease_remaining(), lease_ticks - 1);
}

#[test]
fn a_new_leader_serves_no_lease_read_before_an_entry_of_its_term_commits_6_4_1() {
    let mut c = Cluster::restored(vec![restored(1, None, &[1, 1]); 3], leasing);
    // With leases on, a node that just started votes only after an election timeout (it may
    // have acknowledged a lease before it stopped).
    for _ in 0..ELECTION_TICKS {
        c.tick(2);
        c.tick(3);
    }
    c.queue.clear(); // the pre-votes of one whose timer fired first
    win_with_votes_only(&mut c, 1);

    // A heartbeat round, acknowledged by both followers: it starts a lease.
    for _ in 0..HEARTBEAT_TICKS {
        c.tick(1);
    }
    for _ in 0..4 {
        c.deliver_matching(heartbeat_traffic);
    }
    assert_eq!(c.status(1).role, Role::Leader);
    assert_eq!(c.status(1).commit_index, LogIndex(0));
    assert!(!read_released_at_once(&mut c, 1, 5), "a lease read before the no-op committed");
    assert_eq!(c.peer(1).node.lease_remaining(), 0, "INFO shows no lease either");

    // The no-op commits: the held read is released, and the lease now answers at once.
    c.settle();
    assert_eq!(c.status(1).commit_index, LogIndex(3));
    assert_eq!(c.peer(1).reads_served, vec![ReadState { id: 5, index: LogIndex(3) }]);
    assert!(c.peer(1).node.lease_remaining() > 0);
    let sent_before = c.sent.len();
    assert!(read_released_at_once(&mut c, 1, 6));
    assert_eq!(c.sent.len(), sent_before, "served from the lease, without a round");
}

#[test]
fn an_isolated_leader_stops_serving_lease_reads_before_anyone_else_can_lead_6_4_1() {
    let (mut c, l, f, g) = leasing_cluster();
    c.run_ticks(HEARTBEAT_TICKS);
    c.isolate(l);
    // The last round acknowledged started less than a heartbeat ago, and its lease is the
    // configured one (shorter than the election timeout by the drift bound), not longer.
    let lease = c.peer(l).node.lease_remaining();
    let lease_ticks = u64::from(c.peer(l).node.config().lease_ticks);
    assert!(lease > lease_ticks - u64::from(HEARTBEAT_TICKS), "lease {lease} of {lease_ticks}");
    assert!(lease <= lease_ticks, "a lease of {lease} ticks, longer than the {lease_ticks} set");
    for _ in 0..lease {
        assert_ne!(c.status(f).role, Role::Leader, "a new leader while the lease holds");
        assert_ne!(c.status(g).role, Role::Leader, "a new leader while the lease holds");
        c.tick_all();
    }
    assert_eq!(c.peer(l).node.lease_remaining(), 0);
    assert!(!read_released_at_once(&mut c, l, 3), "the expired lease answers nothing");
    let new = c.run_until(8 * ELECTION_TICKS, |c| {
        c.status(f).role == Role::Leader || c.status(g).role == Role::Leader
    });
    assert!(new, "the others elect a new leader");
    assert!(!c.peer(l).reads_served.iter().any(|r| r.id == 3));
}

#[test]
fn a_higher_term_learned_from_a_rejection_does_not_cancel_a_promise_not_to_vote_6_4_1() {
    // Issue 13.3, five nodes: F acks the leader's heartbeat (the leader's lease counts on F),
    // then learns term T+1 from a pre-vote rejection, and C asks for its vote in T+1. Had F
    // granted it, C could win with F and two others and commit while the old leader still
    // served lease reads without C's writes.
    let mut c = Cluster::restored(vec![RestoredState::default(); 5], leasing);
    assert!(c.run_until(20 * ELECTION_TICKS, |c| c.converged(1).is_some()), "no leader");
    let l = c.converged(1).expect("converged").0;
    let others: Vec<u64> = (1..=5).filter(|i| *i != l).collect();
    let (f, cand, rejecter) = (others[0], others[1], others[2]);
    c.run_ticks(HEARTBEAT_TICKS);
    assert!(c.peer(l).node.lease_remaining() > 0, "the leader holds a lease");
    let t = c.status(f).term.0;
    let last = c.stored(l).last().expect("the leader's first entry");
    let (last_term, last_index) = (last.term, last.index);
    c.step(
        f,
        Input::Message(msg(rejecter, f, t + 1, MessageBody::PreVoteResponse { granted: false })),
    );
    c.process(f);
    assert_eq!(c.status(f).term.0, t + 1, "the higher term is adopted");
    let sent_before = c.sent.len();
    let vote = MessageBody::RequestVote {
        last_log_index: last_index,
        last_log_term: last_term,
        transfer: false,
    };
    c.step(f, Input::Message(msg(cand, f, t + 1, vote)));
    c.process(f);
    let granted = c.sent[sent_before..].iter().any(|m| {
        m.from == NodeId(f)
            && matches!(m.body, MessageBody::RequestVoteResponse { granted: true, .. })
    });
    assert!(!granted, "node {f} voted while the lease it acknowledged may still hold");
}

#[test]
fn a_lease_ends_by_the_clock_even_when_the_ticks_lag_6_4_1() {
    // Issue 13.4: a leader whose task stalled sees its overdue ticks only after the reads
    // queued meanwhile. The clock read at the moment of the read decides.
    const TICK_US: u64 = 10_000;
    let tune = |cfg: &mut Config| {
        leasing(cfg);
        cfg.tick_us = TICK_US;
    };
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], tune);
    // Every node's clock and ticks advance together, as the runtime's do.
    let mut now = 0;
    let elected = (0..20 * ELECTION_TICKS).any(|_| {
        now += TICK_US;
        for id in 1..=3 {
            c.step(id, Input::Now(now));
        }
        c.tick_all();
        c.converged(1).is_some()
    });
    assert!(elected, "no leader");
    let l = c.converged(1).expect("converged").0;
    // A round starts at `now` and the followers acknowledge it.
    c.run_ticks(HEARTBEAT_TICKS);
    let lease = c.peer(l).node.lease_remaining();
    assert!(lease > 0, "the leader holds a lease by its ticks");
    let lease_ticks = c.peer(l).node.config().lease_ticks as u64;
    c.step(l, Input::Now(now + lease_ticks * TICK_US - 1));
    assert!(read_released_at_once(&mut c, l, 1), "within the lease by the clock too");
    // It ends the moment the clock reaches the round's start plus the lease.
    c.step(l, Input::Now(now + lease_ticks * TICK_US));
    assert_eq!(c.peer(l).node.lease_remaining(), 0, "the lease outlived its last microsecond");
    // The clock moved past the lease; not one tick was counted meanwhile.
    c.step(l, Input::Now(now + lease_ticks * TICK_US + 2 * HEARTBEAT_TICKS as u64 * TICK_US));
    assert_eq!(c.peer(l).node.lease_remaining(), 0, "INFO shows no lease either");
    assert!(!read_released_at_once(&mut c, l, 2), "the lease ended by the clock");
    // It is served after a round confirms leadership, as any read without a lease.
    c.settle();
    assert!(c.peer(l).reads_served.iter().chain(&c.peer(l).reads_waiting).any(|r| r.id == 2));
}

/// Whether `voter` grants `asker` a pre-vote for the term after its own, asked with a log
/// more up-to-date than any in the cluster (so only the promise can refuse it).
fn grants_pre_vote(c: &mut Cluster, voter: u64, asker: u64) -> bool {
    let term = c.status(voter).term.0 + 1;
    let body = MessageBody::PreVote { last_log_index: LogIndex(1_000), last_log_term: Term(term) };
    let sent = c.sent.len();
    c.step(voter, Input::Message(msg(asker, voter, term, body)));
    c.process(voter);
    c.queue.clear();
    c.sent[sent..].iter().any(|m| {
        m.from == NodeId(voter) && matches!(m.body, MessageBody::PreVoteResponse { granted: true })
    })
}

/// A follower that heard from a leader refuses votes for exactly one minimum election timeout
/// of its own ticks after (thesis §4.2.3), and grants them once it has passed.
#[test]
fn a_follower_refuses_votes_for_one_election_timeout_after_it_last_heard_the_leader_4_2_3() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    // Only the leader ticks, so node 2 hears its heartbeat at the tick count it has now.
    for _ in 0..HEARTBEAT_TICKS {
        c.tick(1);
    }
    c.settle();
    c.crash(1);
    assert!(!grants_pre_vote(&mut c, 2, 3), "granted while it hears from a leader");
    for _ in 0..ELECTION_TICKS - 1 {
        c.tick(2);
    }
    assert!(!grants_pre_vote(&mut c, 2, 3), "granted before an election timeout passed");
    c.tick(2);
    assert!(grants_pre_vote(&mut c, 2, 3), "still refused after an election timeout");
}

/// With a tick length set, the promise also lasts until the node's clock (`Input::Now`)
/// passed an election timeout since it heard the leader: ticks counted late after a stall
/// must not end it early.
#[test]
fn a_follower_keeps_its_promise_until_its_clock_passed_an_election_timeout_4_2_3() {
    const TICK_US: u64 = 1_000;
    const HEARD_US: u64 = 50_000;
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], |cfg| cfg.tick_us = TICK_US);
    c.elect_and_converge(1);
    c.step(2, Input::Now(HEARD_US));
    c.run_ticks(HEARTBEAT_TICKS);
    c.crash(1);
    // Its ticks pass the timeout with the clock standing still.
    for _ in 0..2 * ELECTION_TICKS {
        c.tick(2);
    }
    assert!(!grants_pre_vote(&mut c, 2, 3), "the ticks alone ended the promise");
    let timeout_us = u64::from(ELECTION_TICKS) * TICK_US;
    c.step(2, Input::Now(HEARD_US + timeout_us - 1));
    assert!(!grants_pre_vote(&mut c, 2, 3), "granted a microsecond early");
    c.step(2, Input::Now(HEARD_US + timeout_us));
    assert!(grants_pre_vote(&mut c, 2, 3), "still refused once the clock passed the timeout");
}

#[test]
fn a_leader_ignores_a_pre_vote_from_a_node_that_stopped_hearing_from_it_4_2_3() {
    // Review of issue 13.3's change: the promise was kept by the tick a node last heard a
    // leader, which a leader itself never does. Long after its election, the leader granted
    // the pre-vote of a follower that had missed some heartbeats, then its vote: deposed.
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.run_ticks(3 * ELECTION_TICKS);
    let t = c.status(1).term.0;
    let last = c.stored(1).last().expect("the leader's first entry").clone();
    let sent_before = c.sent.len();
    let pre_vote = MessageBody::PreVote { last_log_index: last.index, last_log_term: last.term };
    c.step(1, Input::Message(msg(3, 1, t + 1, pre_vote)));
    let vote = MessageBody::RequestVote {
        last_log_index: last.index,
        last_log_term: last.term,
        transfer: false,
    };
    c.step(1, Input::Message(msg(3, 1, t + 1, vote)));
    c.process(1);
    let granted = c.sent[sent_before..].iter().any(|m| {
        matches!(
            m.body,
            MessageBody::PreVoteResponse { granted: true }
                | MessageBody::RequestVoteResponse { granted: true, .. }
        )
    });
    assert!(!granted, "the leader gave its vote away");
    assert_eq!(c.status(1).role, Role::Leader);
    assert_eq!(c.status(1).term.0, t);
}

#[test]
fn a_leadership_transfer_revokes_the_lease_3_10_6_4_1() {
    let (mut c, l, f, g) = leasing_cluster();
    c.run_ticks(HEARTBEAT_TICKS);
    assert!(c.peer(l).node.lease_remaining() > 0);
    c.cut_both(f, g);
    c.step(l, Input::TransferLeader { to: NodeId(f) });
    c.process(l);
    assert_eq!(c.peer(l).node.lease_remaining(), 0, "node {f} may win any moment now");
}

#[test]
fn with_leases_a_restarted_node_votes_only_after_an_election_timeout_6_4_1() {
    let mut cfg = config(2, 3);
    leasing(&mut cfg);
    let mut node = RaftNode::new(cfg, RestoredState::default()).expect("valid");
    let vote = MessageBody::RequestVote {
        last_log_index: LogIndex(0),
        last_log_term: Term(0),
        transfer: false,
    };
    node.step(Input::Message(msg(1, 2, 1, vote.clone())));
    let ready = node.ready();
    assert!(ready.messages.is_empty(), "ignored: it may have acked a lease before restarting");
    for _ in 0..ELECTION_TICKS {
        node.step(Input::Tick);
    }
    node.ready();
    node.step(Input::Message(msg(1, 2, 1, vote)));
    let granted = node
        .ready()
        .messages
        .iter()
        .any(|m| m.body == MessageBody::RequestVoteResponse { granted: true, clock_ms: 0 });
    assert!(granted);
}

// ---- membership changes (thesis §4) ---------------------------------------------------------

/// `what`, proposed through `via` against the membership `via` knows.
fn proposal(c: &Cluster, via: u64, id: u64, what: &MembershipChange) -> Input {
    let based_on = c.peer(via).node.membership().version_id();
    Input::ProposeMembership { id, change: what.clone(), data: conf_entry(what), based_on }
}

fn change(c: &mut Cluster, via: u64, id: u64, what: &MembershipChange) {
    c.step(via, proposal(c, via, id, what));
    c.process(via);
    c.settle();
}

fn add(id: u64) -> MembershipChange {
    MembershipChange::AddLearner { id: NodeId(id), addr: format!("n{id}") }
}

fn voters(c: &Cluster, id: u64) -> Vec<u64> {
    c.peer(id).node.membership().voters.iter().map(|v| v.0).collect()
}

#[test]
fn a_learner_receives_the_log_but_neither_votes_nor_counts_toward_commit_4_2_1() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.join(4, 3, |_| {});
    change(&mut c, 1, 100, &add(4));
    propose_on(&mut c, 1, 1, 2);
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(4).is_some()));
    assert_eq!(c.peer(4).sm, c.peer(1).sm, "the learner holds the whole state");
    assert_eq!(voters(&c, 4), vec![1, 2, 3]);
    assert!(c.peer(1).node.membership().learners.contains(&NodeId(4)));
    // Two of three voters commit without the learner; the learner never campaigns.
    c.crash(3);
    c.crash(4);
    propose_on(&mut c, 1, 10, 1);
    assert_eq!(c.status(1).commit_index, LogIndex(5));
    c.down.remove(&NodeId(4));
    c.isolate(4);
    c.run_ticks(6 * ELECTION_TICKS);
    assert_eq!(c.status(4).role, Role::Follower, "a learner never campaigns");
    assert_eq!(c.status(4).term, c.status(1).term);
}

#[test]
fn a_promoted_learner_votes_and_counts_and_only_one_change_is_pending_at_once_4_1() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.join(4, 3, |_| {});
    // Two changes in a row: the second waits for the first to apply.
    let promote = proposal(&c, 1, 101, &MembershipChange::Promote { id: NodeId(4) });
    c.step(1, proposal(&c, 1, 100, &add(4)));
    c.step(1, promote);
    c.process(1);
    assert_eq!(c.peer(1).rejected, vec![(101, Rejection::MembershipChangePending)]);
    c.settle();
    change(&mut c, 1, 102, &MembershipChange::Promote { id: NodeId(4) });
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(3).is_some()));
    for id in 1..=4 {
        assert_eq!(voters(&c, id), vec![1, 2, 3, 4], "node {id}");
    }
    // Four voters: a commit needs three of them.
    c.crash(3);
    c.crash(4);
    c.step(1, Input::Propose { id: 7, data: b"needs 3 of 4".to_vec() });
    c.process(1);
    c.run_ticks(2 * HEARTBEAT_TICKS);
    assert_eq!(c.status(1).commit_index, LogIndex(3), "1 and 2 are not a quorum of 4");
    c.down.remove(&NodeId(4));
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.status(1).commit_index == LogIndex(4)));
}

/// One membership change at a time (thesis §4.1): a leader takes a change only once the last
/// one committed, even one asked against the membership that last change made (which the
/// `based_on` check lets through).
#[test]
fn a_second_change_waits_for_the_first_to_commit_even_when_based_on_it_4_1() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.join(4, 3, |_| {});
    c.step(1, proposal(&c, 1, 100, &add(4)));
    c.process(1);
    let last = c.status(1).last_index;
    assert!(c.status(1).commit_index < last, "the first change is not committed");
    assert!(c.peer(1).node.membership().learners.contains(&NodeId(4)), "but in effect");

    // Asked against the membership the first change made: up to date, and still refused.
    let promote = MembershipChange::Promote { id: NodeId(4) };
    c.step(1, proposal(&c, 1, 101, &promote));
    c.process(1);
    assert_eq!(c.peer(1).rejected, vec![(101, Rejection::MembershipChangePending)]);
    assert_eq!(c.status(1).last_index, last, "nothing appended");

    // Once the first commits, the same change is taken.
    c.settle();
    change(&mut c, 1, 102, &promote);
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(3).is_some()));
    assert_eq!(voters(&c, 1), vec![1, 2, 3, 4]);
}

#[test]
fn a_removed_leader_hands_over_at_once_and_the_rest_carry_on_4_2_2() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let term = c.status(1).term;
    change(&mut c, 2, 100, &MembershipChange::Remove { id: NodeId(1) });
    c.settle();
    // Not one tick passed: the old leader told the most caught-up voter to campaign at once.
    let new = c.status(2).role == Role::Leader || c.status(3).role == Role::Leader;
    assert!(new, "no remaining voter took over without waiting for a timeout");
    let leader = if c.status(2).role == Role::Leader { 2 } else { 3 };
    assert_eq!(c.status(leader).term, term.next(), "handed over, not timed out");
    assert_eq!(voters(&c, leader), vec![2, 3]);
    assert_ne!(c.status(1).role, Role::Leader);
    // The old leader never campaigns again, and the two left commit on their own.
    c.crash(1);
    propose_on(&mut c, leader, 1, 1);
    let other = 5 - leader;
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.peer(other).sm.len() == c.peer(leader).sm.len()));
}

#[test]
fn a_new_leader_takes_no_membership_change_before_its_first_entry_applies() {
    let mut c = Cluster::new(3);
    // Node 1 wins, but only votes get through: its no-op stays uncommitted.
    win_with_votes_only(&mut c, 1);
    assert_eq!(c.status(1).commit_index, LogIndex(0));
    c.join(4, 3, |_| {});
    c.step(1, proposal(&c, 1, 1, &add(4)));
    c.process(1);
    assert_eq!(c.peer(1).rejected, vec![(1, Rejection::MembershipChangePending)]);
}

#[test]
fn membership_changes_that_cannot_apply_are_refused() {
    let m = Membership {
        voters: [NodeId(1), NodeId(2)].into(),
        learners: [NodeId(3)].into(),
        addrs: [(NodeId(1), "a".into()), (NodeId(2), "b".into()), (NodeId(3), "c".into())].into(),
        version: 7,
        made_in: Term(2),
    };
    let err = |c: MembershipChange| m.apply(&c).unwrap_err();
    assert_eq!(
        err(MembershipChange::AddLearner { id: NodeId(1), addr: "x".into() }),
        "node 1 is already a voter"
    );
    assert_eq!(
        err(MembershipChange::AddLearner { id: NodeId(4), addr: "b".into() }),
        "node 2 already has address b"
    );
    assert_eq!(err(MembershipChange::Promote { id: NodeId(9) }), "node 9 is not a member");
    assert_eq!(err(MembershipChange::Remove { id: NodeId(9) }), "node 9 is not a member");
    let one = m.apply(&MembershipChange::Remove { id: NodeId(2) }).unwrap();
    assert_eq!(
        one.apply(&MembershipChange::Remove { id: NodeId(1) }).unwrap_err(),
        "node 1 is the last voter"
    );
    let promoted = m.apply(&MembershipChange::Promote { id: NodeId(3) }).unwrap();
    assert_eq!(promoted.voters.len(), 3);
    assert_eq!(promoted.version, 8, "every change makes a new version");
    // Repeating a change in effect is no error, and still a change of version.
    let again = promoted.apply(&MembershipChange::Promote { id: NodeId(3) }).unwrap();
    assert_eq!(again, Membership { version: 9, ..promoted });
}

#[test]
fn a_snapshot_of_an_index_the_follower_holds_keeps_the_entries_after_it_7() {
    // Follower 2 holds and acknowledged entries up to 6 but has not heard they are committed;
    // a snapshot at 4 (streamed while those acknowledgements were in flight) must not throw
    // 5 and 6 away: the leader counts them as stored on node 2.
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.cut_both(1, 3);
    for i in 1..=5 {
        c.step(1, Input::Propose { id: i, data: format!("v{i}").into_bytes() });
        c.process(1);
    }
    c.deliver_matching(|m| m.to == NodeId(2));
    c.cut.insert((NodeId(1), NodeId(2)));
    c.settle();
    assert_eq!(c.status(1).commit_index, LogIndex(6), "committed with node 2's acks");
    assert_eq!(c.status(2).last_index, LogIndex(6));
    assert!(c.status(2).commit_index < LogIndex(4));
    let term = c.status(1).term.0;
    let meta = SnapshotMeta { index: LogIndex(4), term: Term(term), time: 0 };
    let body =
        MessageBody::SnapshotChunk { meta, seq: 0, data: encode_entry(&noop(1, term)), last: true };
    c.step(2, Input::Message(msg(1, 2, term, body)));
    c.process(2);
    assert!(installs(&mut c, 2).is_empty(), "nothing installed");
    assert_eq!(c.status(2).last_index, LogIndex(6), "entries after the snapshot kept");
    assert_eq!(c.status(2).commit_index, LogIndex(4));
    c.heal();
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(6).is_some()));
}

#[test]
fn append_entries_that_do_not_follow_prev_one_by_one_are_dropped() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let term = c.status(1).term.0;
    let last = c.status(2).last_index;
    let gap = MessageBody::AppendEntries {
        prev_log_index: last,
        prev_log_term: Term(term),
        entries: vec![entry(last.0 + 2, term)],
        leader_commit: LogIndex(0),
    };
    c.deliver(msg(1, 2, term, gap));
    assert_eq!(c.status(2).last_index, last, "nothing appended, no panic");
}

fn with_membership(mut e: Entry, voters: &[u64]) -> Entry {
    e.membership = Some(Membership {
        voters: voters.iter().map(|v| NodeId(*v)).collect(),
        ..Membership::default()
    });
    e
}

#[test]
fn a_restarted_node_counts_with_the_last_membership_in_its_log_not_the_applied_one_4_1() {
    // Node 3 restarts having stored two removals it never applied (or lost the applies):
    // it must campaign as a member of {1,2,3}, not of the five it last applied. Otherwise it
    // could win with the removed nodes 4 and 5 while 1 leads {1,2,3}.
    let entries = vec![
        entry(1, 1),
        with_membership(entry(2, 1), &[1, 2, 3, 4]),
        with_membership(entry(3, 1), &[1, 2, 3]),
    ];
    let state = RestoredState {
        hard_state: HardState { term: Term(1), voted_for: None, recovering: false },
        membership: Some(Membership {
            voters: (1..=5).map(NodeId).collect(),
            ..Membership::default()
        }),
        entries,
        applied: LogIndex(1),
        snapshot: SnapshotMeta::default(),
    };
    let mut node = RaftNode::new(config(3, 5), state).expect("valid");
    assert_eq!(node.membership().voters, [NodeId(1), NodeId(2), NodeId(3)].into());
    // Campaigning, it asks only the voters of {1,2,3}.
    for _ in 0..2 * ELECTION_TICKS {
        node.step(Input::Tick);
        let asked: BTreeSet<NodeId> = node
            .ready()
            .messages
            .iter()
            .filter(|m| matches!(m.body, MessageBody::PreVote { .. }))
            .map(|m| m.to)
            .collect();
        if !asked.is_empty() {
            assert_eq!(asked, [NodeId(1), NodeId(2)].into());
            return;
        }
    }
    panic!("node 3 never campaigned");
}

#[test]
fn a_change_re_sent_after_it_took_effect_cannot_undo_a_later_one() {
    // Issue 13.7: REMOVE 3 asked through node 2 takes effect; node 3 is added back and
    // promoted; then a copy of the REMOVE arrives again (re-sent at a leader change, or
    // delayed in the network). It was asked against a membership long gone: refused.
    let mut c = Cluster::new(4);
    c.elect_and_converge(1);
    let remove = proposal(&c, 2, 1, &MembershipChange::Remove { id: NodeId(3) });
    c.step(2, remove.clone());
    c.process(2);
    c.settle();
    assert!(!c.peer(1).node.membership().contains(NodeId(3)), "the first copy applied");
    let addr = MembershipChange::AddLearner { id: NodeId(3), addr: "node3".into() };
    change(&mut c, 1, 2, &addr);
    change(&mut c, 1, 3, &MembershipChange::Promote { id: NodeId(3) });
    assert!(c.peer(1).node.membership().is_voter(NodeId(3)), "node 3 is back");
    let version = c.peer(1).node.membership().version;

    c.step(2, remove);
    c.process(2);
    c.settle();
    assert!(c.peer(1).node.membership().is_voter(NodeId(3)), "the stale copy removed node 3");
    assert_eq!(c.peer(1).node.membership().version, version);
    assert!(c.peer(2).rejected.contains(&(1, Rejection::MembershipChangePending)));
}

#[test]
fn a_membership_entry_truncated_by_a_new_leader_is_undone_4_1() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.join(4, 3, |_| {});
    // Node 1 appends "add 4" but only node 1 holds it; then node 2 leads and overwrites it.
    c.isolate(1);
    c.step(1, proposal(&c, 1, 9, &add(4)));
    c.process(1);
    assert!(c.peer(1).node.membership().learners.contains(&NodeId(4)));
    let truncated = c.peer(1).node.membership().version_id();
    c.crash(1);
    c.heal();
    let new = c.run_until(8 * ELECTION_TICKS, |c| {
        c.status(2).role == Role::Leader || c.status(3).role == Role::Leader
    });
    assert!(new);
    let leader = if c.status(2).role == Role::Leader { 2 } else { 3 };
    propose_on(&mut c, leader, 1, 1);
    c.down.remove(&NodeId(1));
    assert!(c
        .run_until(8 * ELECTION_TICKS, |c| c.peer(1).node.status().leader == Some(NodeId(leader))
            && c.peer(1).node.status().last_index == c.peer(leader).node.status().last_index));
    assert!(c.peer(1).node.membership().learners.is_empty(), "the truncated change is undone");

    // The new leader makes another change with as many changes behind it as the truncated one
    // had. A change asked against the truncated membership must not pass for one asked
    // against this one (a counter alone would let it).
    change(&mut c, leader, 11, &add(4));
    let now = c.peer(leader).node.membership().version_id();
    assert_eq!(now.0, truncated.0, "the same count of changes");
    assert_ne!(now, truncated);
    let remove = MembershipChange::Remove { id: NodeId(3) };
    let stale = Input::ProposeMembership {
        id: 12,
        change: remove.clone(),
        data: conf_entry(&remove),
        based_on: truncated,
    };
    c.step(leader, stale);
    c.process(leader);
    c.settle();
    assert!(
        c.peer(leader).node.membership().is_voter(NodeId(3)),
        "a change for the truncated branch applied"
    );
}

#[test]
fn a_leader_removing_itself_confirms_no_read_on_its_own_4_2_2() {
    // Voters {1,2}; 1 leads and removes itself, so the voters become {2}. Until that commits
    // 1 still leads, but only node 2 can confirm a read: 1 may no longer be the leader of
    // anything (2 can win alone and take writes).
    let mut c = Cluster::new(2);
    c.elect_and_converge(1);
    c.cut.insert((NodeId(2), NodeId(1)));
    change(&mut c, 1, 100, &MembershipChange::Remove { id: NodeId(1) });
    assert_eq!(c.status(1).role, Role::Leader, "the removal is not committed yet");
    c.step(1, Input::Read { id: 7 });
    c.process(1);
    c.run_ticks(2 * HEARTBEAT_TICKS);
    let released = c.peer(1).reads_served.iter().chain(&c.peer(1).reads_waiting).any(|r| r.id == 7);
    assert!(!released, "a read confirmed by the leader alone");
}

#[test]
fn a_leader_that_stepped_down_before_its_removal_committed_still_gets_it_committed_4_2_2() {
    // Voters {1,2}; 1 appends its own removal while cut off from 2, and steps down (check
    // quorum). Only node 1 holds the change, and node 2 cannot win without node 1's vote
    // (node 1's log is longer): node 1 must campaign once more to commit it.
    let mut c = Cluster::new(2);
    c.elect_and_converge(1);
    c.cut_both(1, 2);
    change(&mut c, 1, 100, &MembershipChange::Remove { id: NodeId(1) });
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.status(1).role != Role::Leader));
    c.heal();
    let done = c.run_until(20 * ELECTION_TICKS, |c| {
        c.status(2).role == Role::Leader && voters(c, 2) == vec![2] && voters(c, 1) == vec![2]
    });
    assert!(done, "node 2 leads the one-voter cluster: {:?} {:?}", c.status(1), c.status(2));
    propose_on(&mut c, 2, 1, 1);
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.status(2).commit_index == c.status(2).last_index));
}

#[test]
fn a_node_removed_while_cut_off_learns_its_removal_when_it_campaigns_4_2_3() {
    removed_while_cut_off_learns_its_removal(false);
}

#[test]
fn a_node_removed_while_cut_off_learns_its_removal_after_it_was_compacted_4_2_3_7() {
    removed_while_cut_off_learns_its_removal(true);
}

fn removed_while_cut_off_learns_its_removal(compact: bool) {
    let tune = |cfg: &mut Config| {
        if compact {
            compacting(cfg);
        }
    };
    let mut c = Cluster::restored(vec![RestoredState::default(); 5], tune);
    c.elect_and_converge(1);
    c.isolate(5);
    change(&mut c, 1, 100, &MembershipChange::Remove { id: NodeId(5) });
    assert_eq!(voters(&c, 1), vec![1, 2, 3, 4]);
    if compact {
        // The removal entry is compacted away on the leader: node 5 must get a snapshot.
        propose_on(&mut c, 1, 1, 8);
        assert!(c.peer(1).stored_after.index.0 > 3, "compacted past the removal");
    }
    // The leader keeps trying a silent removed node for 600 check-quorum rounds, then stops.
    let replicating = |c: &Cluster| c.peer(1).node.followers().iter().any(|f| f.id == NodeId(5));
    c.run_ticks(4 * ELECTION_TICKS);
    assert!(replicating(&c), "dropped after 4 silent rounds");
    c.run_ticks(600 * ELECTION_TICKS);
    assert!(!replicating(&c), "still replicating after 600 silent rounds");
    assert_eq!(voters(&c, 5), vec![1, 2, 3, 4, 5], "node 5 never heard of its removal");
    c.heal();
    // Node 5 campaigns (pre-vote) and the leader replicates its removal to it, without
    // dropping it again before it has learned.
    assert!(c.run_until(6 * ELECTION_TICKS, replicating), "node 5's campaign went unheard");
    for _ in 0..6 * ELECTION_TICKS {
        if voters(&c, 5) == vec![1, 2, 3, 4] {
            break;
        }
        assert!(replicating(&c), "the leader stopped replicating before node 5 learned");
        c.run_ticks(1);
    }
    assert_eq!(voters(&c, 5), vec![1, 2, 3, 4]);
    let term = c.status(1).term;
    c.run_ticks(4 * ELECTION_TICKS);
    assert_eq!(c.status(1).role, Role::Leader);
    assert_eq!(c.status(1).term, term);
    assert_eq!(c.status(5).role, Role::Follower, "a removed node no longer campaigns");
}

#[test]
fn a_learner_removed_while_cut_off_learns_its_removal_when_back_4_2_3() {
    // A learner never campaigns: only the leader's replication can tell it.
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    c.join(4, 3, |_| {});
    change(&mut c, 1, 100, &add(4));
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.peer(4).node.membership().contains(NodeId(4))));
    c.isolate(4);
    change(&mut c, 1, 101, &MembershipChange::Remove { id: NodeId(4) });
    c.run_ticks(20 * ELECTION_TICKS);
    assert!(c.peer(4).node.membership().contains(NodeId(4)), "cut off: not told yet");
    c.heal();
    assert!(
        c.run_until(6 * ELECTION_TICKS, |c| !c.peer(4).node.membership().contains(NodeId(4))),
        "the removed learner never heard of its removal"
    );
}

// ---- start-up on an empty log (Config::check_empty_start) ------------------------------------

fn checking_empty_start(cfg: &mut Config) {
    cfg.check_empty_start = true;
}

fn sent_kind(c: &Cluster, from: u64, name: &str) -> usize {
    c.sent.iter().filter(|m| m.from == NodeId(from) && m.body.name() == name).count()
}

#[test]
fn a_blank_node_neither_campaigns_nor_votes_until_every_voter_says_its_log_is_empty() {
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], checking_empty_start);
    c.crash(3);
    c.run_ticks(10 * ELECTION_TICKS);
    assert!(c.leaders_now().is_empty(), "a voter never answered: no election");
    for id in 1..=2 {
        assert_eq!(sent_kind(&c, id, "PreVote"), 0, "node {id} campaigned while fresh");
        assert!(sent_kind(&c, id, "StateProbe") > 0, "node {id} asked the others");
    }
    // Node 3 starts: every log is empty, so nothing can have been lost.
    c.down.remove(&NodeId(3));
    let formed = c.run_until(20 * ELECTION_TICKS, |c| c.converged(1).is_some());
    assert!(formed, "the new cluster formed once every voter answered");
}

/// A probing node asks the voters that have not answered once per heartbeat interval, not on
/// every tick.
#[test]
fn a_blank_node_repeats_its_probe_once_per_heartbeat_interval() {
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], checking_empty_start);
    c.crash(2);
    c.crash(3);
    c.process(1); // the probe it sends on start
    let before = sent_kind(&c, 1, "StateProbe");
    for _ in 0..4 * HEARTBEAT_TICKS {
        c.tick(1);
    }
    assert_eq!(sent_kind(&c, 1, "StateProbe") - before, 4 * 2, "one probe per voter per interval");
}

#[test]
fn a_blank_node_learns_from_probe_answers_where_the_voters_it_never_knew_are() {
    // Node 3 was started with voters {1,2,3}; nodes 4 and 5 joined since. Restarted blank, it
    // must reach them too (a probe waits for every voter), and only an answer says where.
    let mut cfg = config(3, 3);
    checking_empty_start(&mut cfg);
    let mut node = RaftNode::new(cfg, RestoredState::default()).expect("valid");
    node.ready();
    assert!(node.probe_addrs().is_empty());
    let voters = vec![NodeId(1), NodeId(2), NodeId(3), NodeId(4), NodeId(5)];
    let addrs: Vec<(NodeId, String)> =
        voters.iter().map(|v| (*v, format!("10.0.0.{}:7000", v.0))).collect();
    let nonce = node
        .ready()
        .messages
        .into_iter()
        .chain((0..HEARTBEAT_TICKS).flat_map(|_| {
            node.step(Input::Tick);
            node.ready().messages
        }))
        .find_map(|m| match m.body {
            MessageBody::StateProbe { nonce } => Some(nonce),
            _ => None,
        })
        .expect("the blank node probes");
    node.step(Input::Message(msg(
        1,
        3,
        4,
        MessageBody::StateProbeResponse {
            nonce,
            last_index: LogIndex(9),
            last_term: Term(4),
            voters: voters.clone(),
            addrs,
        },
    )));
    let learned: Vec<u64> = node.probe_addrs().keys().map(|id| id.0).collect();
    assert_eq!(learned, vec![1, 2, 4, 5], "every voter but itself, with its address");
    assert_eq!(node.probe_addrs()[&NodeId(5)], "10.0.0.5:7000");
    // The probe now waits for nodes 4 and 5 as well.
    let mut asked = BTreeSet::new();
    for _ in 0..HEARTBEAT_TICKS {
        node.step(Input::Tick);
        for m in node.ready().messages {
            if matches!(m.body, MessageBody::StateProbe { .. }) {
                asked.insert(m.to.0);
            }
        }
    }
    assert_eq!(asked, BTreeSet::from([2, 4, 5]), "asks every voter that has not answered");
}

#[test]
fn a_voter_whose_disk_was_wiped_does_not_vote_until_it_caught_up_with_a_leader() {
    // The scenario of issue 13: W commits on {1,3} while 2 lags; 3's disk is wiped and it
    // restarts empty; 1 crashes; 2 campaigns. Had 3 voted for 2, W would be lost.
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], checking_empty_start);
    let formed = c.run_until(20 * ELECTION_TICKS, |c| c.converged(1).is_some());
    assert!(formed);
    let leader = c.leaders_now()[0].0;
    let (lagging, wiped) = match leader {
        1 => (2, 3),
        2 => (3, 1),
        _ => (1, 2),
    };
    c.cut_both(leader, lagging);
    propose_on(&mut c, leader, 1, 1);
    let w = c.stored(leader).last().cloned().expect("W appended");
    assert!(c.stored(wiped).contains(&w) && !c.stored(lagging).contains(&w));
    assert!(
        c.peer(leader).node.status().commit_index >= w.index,
        "W committed on {{leader, wiped}}"
    );

    c.wipe(wiped, 3, checking_empty_start);
    c.crash(leader);
    c.heal();
    c.run_ticks(10 * ELECTION_TICKS);
    for id in [lagging, wiped] {
        assert_ne!(c.status(id).role, Role::Leader, "no leader without W (node {id})");
    }
    assert!(
        c.peer(wiped).hard_state.recovering,
        "the wiped node knows, durably, that it lost data"
    );
    assert_eq!(sent_kind(&c, wiped, "PreVote") + sent_kind(&c, wiped, "RequestVote"), 0);

    // The node holding W comes back: it leads, the wiped node catches up and may vote again.
    c.down.remove(&NodeId(leader));
    let back = c.run_until(20 * ELECTION_TICKS, |c| {
        !c.peer(wiped).hard_state.recovering && c.stored(wiped).contains(&w)
    });
    assert!(back, "the wiped node caught up and was released");
    for id in 1..=3 {
        assert!(c.stored(id).contains(&w) || id == lagging && c.status(id).last_index < w.index);
    }
    assert_eq!(c.leaders_now(), vec![NodeId(leader)], "only the node holding W could lead");
}

#[test]
fn a_recovering_node_with_the_most_up_to_date_log_campaigns() {
    // CI seed 766236510475: nodes 2 and 3 restarted blank and caught up from a leader that
    // then failed; each holds more than node 1, so node 1 is below both vote floors, and the
    // two recovering nodes never campaigned: no leader, ever. One whose log meets its own
    // floor may campaign (it would vote for itself), and wins.
    let recovering = |terms: &[u64]| {
        let mut r = restored(2, None, terms);
        r.hard_state.recovering = true;
        r
    };
    let states =
        vec![restored(2, None, &[1, 2]), recovering(&[1, 2, 2, 2]), recovering(&[1, 2, 2])];
    let mut c = Cluster::restored(states, checking_empty_start);
    let elected = c.run_until(30 * ELECTION_TICKS, |c| !c.leaders_now().is_empty());
    assert!(elected, "no leader: the recovering nodes never campaigned");
    assert_eq!(c.leaders_now(), vec![NodeId(2)], "only node 2's log meets every floor");
    let caught_up = c.run_until(20 * ELECTION_TICKS, |c| c.converged(3).is_some());
    assert!(caught_up, "the others follow it");
    assert!((1..=3).all(|id| !c.peer(id).hard_state.recovering), "every node was released");
}

#[test]
fn a_leader_stops_counting_a_follower_that_lost_its_log() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    propose_on(&mut c, 1, 1, 3);
    let last = c.status(1).last_index;
    assert_eq!(
        c.peer(1).node.followers().iter().find(|f| f.id == NodeId(3)).unwrap().match_index,
        last
    );
    // Node 3's disk is wiped; it comes back empty (without the start-up check, so only the
    // leader's side is tested here).
    c.wipe(3, 3, |_| {});
    let caught_up = c.run_until(10 * ELECTION_TICKS, |c| c.stored(3).len() as u64 == last.0);
    assert!(caught_up, "the leader noticed the empty log and sent it everything again");
}

#[test]
fn a_wiped_node_answers_no_leader_until_every_voter_told_it_their_terms() {
    // CI seed 20234497481: leader 1 of term T stalls, cut off; 2 and 3 elect a leader of a
    // later term and commit entries. 3's disk is wiped, so it forgets that later term; cut off
    // from 2, it hears from the deposed 1. Had it acknowledged 1's appends (and it did), 1
    // would commit an entry of term T on {1, 3}, at an index where 2 committed another.
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], checking_empty_start);
    assert!(c.run_until(20 * ELECTION_TICKS, |c| c.converged(1).is_some()));
    let stale = c.leaders_now()[0].0;
    let stale_term = c.status(stale).term;
    let others: Vec<u64> = (1..=3).filter(|id| *id != stale).collect();
    c.isolate(stale);
    // The stale leader's task stalls: only the others count time, and elect a new leader.
    let mut new_leader = None;
    for _ in 0..30 * ELECTION_TICKS {
        for &id in &others {
            c.tick(id);
        }
        c.settle();
        new_leader = others.iter().copied().find(|id| c.status(*id).role == Role::Leader);
        if new_leader.is_some() {
            break;
        }
    }
    let new_leader = new_leader.expect("the two others elect a leader");
    let wiped = others.iter().copied().find(|id| *id != new_leader).expect("two others");
    assert!(c.status(new_leader).term > stale_term);
    propose_on(&mut c, new_leader, 1, 2);
    assert_eq!(c.status(stale).role, Role::Leader, "the stalled leader does not know yet");
    c.step(stale, Input::Propose { id: 100, data: b"stale".to_vec() });
    c.process(stale);
    let stale_entry = c.stored(stale).last().cloned().expect("appended");
    assert_eq!(stale_entry.term, stale_term);

    c.wipe(wiped, 3, checking_empty_start);
    c.heal();
    c.isolate(new_leader);
    let sent_before = c.sent.len();
    c.run_ticks(5 * ELECTION_TICKS);
    let answers = c.sent[sent_before..]
        .iter()
        .filter(|m| m.from == NodeId(wiped) && m.to == NodeId(stale))
        .filter(|m| {
            matches!(
                m.body,
                MessageBody::AppendEntriesResponse { .. } | MessageBody::HeartbeatResponse { .. }
            )
        })
        .count();
    assert_eq!(answers, 0, "the wiped node answered the deposed leader while it could not know");
    assert!(
        c.status(stale).commit_index < stale_entry.index,
        "the deposed leader committed its entry of term {stale_term}"
    );

    // Every voter reachable again: the wiped node learns the latest term and catches up.
    c.heal();
    let caught_up = c.run_until(30 * ELECTION_TICKS, |c| {
        !c.peer(wiped).hard_state.recovering
            && c.converged(c.status(new_leader).commit_index.0).is_some()
    });
    assert!(caught_up, "the wiped node caught up once every voter answered");
}

#[test]
fn a_wiped_node_caught_up_by_a_snapshot_is_released_and_stops_asking_for_more() {
    let tune = |cfg: &mut Config| {
        checking_empty_start(cfg);
        compacting(cfg);
    };
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], tune);
    let formed = c.run_until(20 * ELECTION_TICKS, |c| c.converged(1).is_some());
    assert!(formed);
    let leader = c.leaders_now()[0].0;
    let wiped = if leader == 3 { 2 } else { 3 };
    propose_on(&mut c, leader, 1, 10);
    c.wipe(wiped, 3, tune);
    let leader_last = c.status(leader).last_index;
    let released = c.run_until(20 * ELECTION_TICKS, |c| {
        c.status(wiped).applied_index == leader_last && !c.peer(wiped).hard_state.recovering
    });
    assert!(released, "caught up from a snapshot and released");
    // Caught up, it is sent no snapshot again (its heartbeat responses report what the
    // snapshot proved, so the leader keeps its match).
    let installs_before = installs(&mut c, wiped).len();
    assert!(installs_before >= 1, "it caught up through a snapshot");
    c.run_ticks(5 * ELECTION_TICKS);
    assert_eq!(installs(&mut c, wiped).len(), 0, "no snapshot after it caught up");
}
