//! Directed tests of the leader's replication mechanics (Raft paper §5.3, §7): how a follower
//! skips what it already committed, how the leader reads acknowledgements and rejections (stale
//! copies, a follower that lost its log, a follower whose log ends near the start of the
//! leader's compacted log), the window of appends in flight, lost-append and stalled-transfer
//! detection, compaction thresholds, pruning removed nodes, and the work a follower hands back
//! when it loses its leader. Each test states one rule and names the `cargo mutants` survivors
//! of `core/src/raft.rs` it closes (see `core/mutants.md`).

mod common;

use common::*;
use raft_kv_core::{
    Config, FollowerStatus, HardState, Input, LogIndex, MembershipChange, Message, MessageBody,
    NodeId, RaftNode, Ready, Rejection, RestoredState, Role, SnapshotMeta, Term,
};
use std::collections::BTreeSet;

// ---- helpers ----------------------------------------------------------------------------------

/// How leader `leader` sees follower `id`.
fn progress_of(c: &Cluster, leader: u64, id: u64) -> FollowerStatus {
    let followers = c.peer(leader).node.followers();
    followers.into_iter().find(|f| f.id == NodeId(id)).expect("a follower of the leader")
}

fn progress(id: u64, match_index: u64, state: &'static str) -> FollowerStatus {
    FollowerStatus { id: NodeId(id), match_index: LogIndex(match_index), state }
}

/// (prev_log_index, indexes carried) of each AppendEntries to `to` among `msgs`, in order.
fn appends_to<'a>(msgs: impl IntoIterator<Item = &'a Message>, to: u64) -> Vec<(u64, Vec<u64>)> {
    msgs.into_iter()
        .filter(|m| m.to == NodeId(to))
        .filter_map(|m| match &m.body {
            MessageBody::AppendEntries { prev_log_index, entries, .. } => {
                Some((prev_log_index.0, entries.iter().map(|e| e.index.0).collect()))
            }
            _ => None,
        })
        .collect()
}

fn is_append_to(to: u64) -> impl Fn(&Message) -> bool {
    move |m| m.to == NodeId(to) && matches!(m.body, MessageBody::AppendEntries { .. })
}

/// Removes the first queued message that matches, leaving the others queued in order.
fn take_queued(c: &mut Cluster, pred: impl Fn(&Message) -> bool) -> Message {
    let i = c.queue.iter().position(pred).expect("such a message is queued");
    c.queue.remove(i).expect("in range")
}

/// Delivers matching messages, their answers included, until none is queued.
fn settle_matching(c: &mut Cluster, pred: impl Fn(&Message) -> bool) {
    for _ in 0..SETTLE_ROUNDS_MAX {
        if c.deliver_matching(&pred) == 0 {
            return;
        }
    }
    panic!("messages still in flight after {SETTLE_ROUNDS_MAX} rounds");
}

fn propose(c: &mut Cluster, leader: u64, id: u64) {
    c.step(leader, Input::Propose { id, data: format!("v{id}").into_bytes() });
    c.process(leader);
}

fn vote_traffic(m: &Message) -> bool {
    matches!(
        m.body,
        MessageBody::PreVote { .. }
            | MessageBody::PreVoteResponse { .. }
            | MessageBody::RequestVote { .. }
            | MessageBody::RequestVoteResponse { .. }
    )
}

/// Ticks `id` alone until it leads, delivering only election traffic: its first appends stay
/// queued.
fn win_with_votes_only(c: &mut Cluster, id: u64) {
    for _ in 0..4 * ELECTION_TICKS {
        c.tick(id);
        settle_matching(c, vote_traffic);
        if c.status(id).role == Role::Leader {
            return;
        }
    }
    panic!("node {id} did not win an election");
}

/// Compacts every 4 entries, keeping none: not even for followers still active (these tests
/// are about the followers that need a snapshot).
fn compacting(cfg: &mut Config) {
    cfg.snapshot_entries = 4;
    cfg.snapshot_keep_entries = 0;
    cfg.compact_keeps_followers = false;
}

fn installs(c: &Cluster, id: u64) -> Vec<SnapshotMeta> {
    c.peer(id).readies.iter().filter_map(|r| r.install_snapshot).collect()
}

/// The snapshot indexes node `id` compacted to, in order.
fn compactions(c: &Cluster, id: u64) -> Vec<u64> {
    c.peer(id).readies.iter().filter_map(|r| r.compact.map(|m| m.index.0)).collect()
}

/// Snapshot transfers the leader started.
fn transfers_started(c: &Cluster, leader: u64) -> usize {
    c.peer(leader).readies.iter().map(|r| r.send_snapshots.len()).sum()
}

/// Term 2, a log compacted to 5@1 holding 6..=8 of term 2, applied to 6.
fn compacted_to_5() -> RestoredState {
    RestoredState {
        hard_state: HardState { term: Term(2), voted_for: None, recovering: false },
        membership: None,
        snapshot: SnapshotMeta { index: LogIndex(5), term: Term(1), time: 0 },
        entries: (6..=8).map(|i| entry(i, 2)).collect(),
        applied: LogIndex(6),
    }
}

/// Term 2, entries 1..=`last` of term 1 (the ones a node compacted to 5@1 stands for), all
/// applied.
fn uncompacted_to(last: u64) -> RestoredState {
    RestoredState {
        hard_state: HardState { term: Term(2), voted_for: None, recovering: false },
        membership: None,
        snapshot: SnapshotMeta::default(),
        entries: (1..=last).map(|i| entry(i, 1)).collect(),
        applied: LogIndex(last),
    }
}

// ---- the follower's side of AppendEntries (§5.3) ------------------------------------------

/// AppendEntries rules 2-4 (Figure 2, §5.3): a follower skips the part of an append at or below
/// its commit index (committed entries match the leader's, Log Matching) and takes the rest,
/// checked against the entry just before it. A delayed append from index 1 reaches a follower
/// that committed 1..=3: it checks 3@2, appends 4..=6 and acknowledges 6; an append entirely
/// below the commit index is acknowledged at the commit index.
///
/// Closes `handle_append`: `commit - prev` as `+` or `/`, `skip >= entries.len()` as `<`, and
/// `entries[skip - 1]` (the new prev's index and its term) as `skip + 1` or `skip / 1`.
#[test]
fn a_follower_skips_the_committed_part_of_an_append_and_checks_the_rest_5_3() {
    let committed_to_3 = RestoredState {
        hard_state: HardState { term: Term(3), voted_for: None, recovering: false },
        membership: None,
        snapshot: SnapshotMeta::default(),
        entries: log_of_terms(&[1, 1, 2]),
        applied: LogIndex(3),
    };
    let mut c = Cluster::restored(vec![committed_to_3; 3], |_| {});
    // The new prev's term (3@2) differs from the entries' after it, so taking the wrong one
    // fails the consistency check.
    let entries = vec![entry(2, 1), entry(3, 2), entry(4, 3), entry(5, 3), entry(6, 3)];
    let append = MessageBody::AppendEntries {
        prev_log_index: LogIndex(1),
        prev_log_term: Term(1),
        entries,
        leader_commit: LogIndex(6),
    };
    c.step(2, Input::Message(msg(1, 2, 3, append)));
    c.process(2);
    let new = vec![entry(4, 3), entry(5, 3), entry(6, 3)];
    assert_eq!(
        c.take_readies(2),
        vec![Ready {
            append: Some((LogIndex(4), new.clone())),
            messages: vec![msg(2, 1, 3, MessageBody::append_accepted(LogIndex(6)))],
            committed: new,
            ..Ready::default()
        }]
    );

    // Wholly at or below the commit index: nothing to check, acknowledged at the commit index.
    let old = MessageBody::AppendEntries {
        prev_log_index: LogIndex(1),
        prev_log_term: Term(1),
        entries: vec![entry(2, 1), entry(3, 2)],
        leader_commit: LogIndex(3),
    };
    c.step(2, Input::Message(msg(1, 2, 3, old)));
    c.process(2);
    assert_eq!(
        c.take_readies(2),
        vec![Ready {
            messages: vec![msg(2, 1, 3, MessageBody::append_accepted(LogIndex(6)))],
            ..Ready::default()
        }]
    );
}

// ---- the leader's side: acknowledgements and rejections (§5.3) ----------------------------

/// A rejection answers one AppendEntries; a copy of it (the network duplicates, or a delayed
/// one arrives late) may not move the leader again. While probing, a rejection of an earlier
/// probe (its index is not the current probe's prev) is ignored: it would unpause the probe
/// and send it twice. Once the follower caught up to the rejected index, a copy whose hint is
/// that index (at the match, so the follower did not lose anything) is ignored too.
///
/// Closes `handle_append_response`: `!lost` deleted in the Probe arm and in the Replicate arm,
/// and `hint < pr.match_index` as `<=`, `==` or `>`.
#[test]
fn a_copy_of_an_answered_rejection_moves_the_leader_no_further_5_3() {
    // Node 2 holds 3@2 of a deposed leader; node 1 holds 3@3 and wins term 4.
    let states = vec![
        restored(3, None, &[1, 1, 3]),
        restored(2, None, &[1, 1, 2]),
        restored(3, None, &[1, 1, 3]),
    ];
    let mut c = Cluster::restored(states, |cfg| cfg.append_entries_max = 1);
    win_with_votes_only(&mut c, 1);
    assert_eq!(c.status(1).term, Term(4));
    assert_eq!(appends_to(&c.queue, 2), vec![(3, vec![4])]);

    let first = take_queued(&mut c, is_append_to(2));
    c.deliver(first);
    let rejection = take_queued(&mut c, |m| m.from == NodeId(2));
    let expected = MessageBody::AppendEntriesResponse {
        success: false,
        index: LogIndex(3),
        hint: LogIndex(3),
        hint_term: Term(2),
    };
    assert_eq!(rejection, msg(2, 1, 4, expected));
    c.deliver(rejection.clone());
    assert_eq!(appends_to(&c.queue, 2), vec![(2, vec![3])], "probes below the conflict");
    assert_eq!(progress_of(&c, 1, 2), progress(2, 0, "probe"));

    // A copy while the probe at 2 is out: nothing is sent, nothing changes.
    let sent = c.sent.len();
    c.deliver(rejection.clone());
    assert_eq!(c.sent.len(), sent, "a copy of the first rejection sent {:?}", &c.sent[sent..]);
    assert_eq!(progress_of(&c, 1, 2), progress(2, 0, "probe"));

    // The probe succeeds: node 2 replaces 3@2 and acknowledges 3; the leader pipelines 4.
    let probe = take_queued(&mut c, is_append_to(2));
    c.deliver(probe);
    assert_eq!(c.deliver_matching(|m| m.from == NodeId(2)), 1);
    assert_eq!(progress_of(&c, 1, 2), progress(2, 3, "replicate"));
    assert_eq!(appends_to(&c.queue, 2), vec![(3, vec![4])]);

    // A copy now, its hint at the match: still nothing.
    let sent = c.sent.len();
    c.deliver(rejection);
    assert_eq!(c.sent.len(), sent, "a copy of the first rejection sent {:?}", &c.sent[sent..]);
    assert_eq!(progress_of(&c, 1, 2), progress(2, 3, "replicate"));

    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(4).is_some()));
}

/// A pipelined append that was lost makes the next one fail its consistency check (§5.3): the
/// rejection is new (its index is past the match), so the leader goes back to probing, from the
/// follower's last entry, its hint. The follower lost nothing it acknowledged (the hint is at
/// the match), so the match stands.
///
/// Closes `handle_append_response`: in the Replicate arm `index <= pr.match_index && !lost`
/// with `||` or with `>`, and `hint < pr.match_index` as `<=`.
#[test]
fn a_rejected_pipelined_append_sends_the_leader_back_to_probing_keeping_the_match_5_3() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    propose(&mut c, 1, 1);
    propose(&mut c, 1, 2);
    assert_eq!(appends_to(&c.queue, 2), vec![(1, vec![2]), (2, vec![3])]);
    // The network loses the first; the second fails the check at 2.
    take_queued(&mut c, is_append_to(2));
    let second = take_queued(&mut c, is_append_to(2));
    c.deliver(second);
    let term = c.status(1).term;
    let rejection = MessageBody::AppendEntriesResponse {
        success: false,
        index: LogIndex(2),
        hint: LogIndex(1),
        hint_term: term,
    };
    assert_eq!(take_queued(&mut c, |m| m.from == NodeId(2)), msg(2, 1, term.0, rejection.clone()));
    c.deliver(msg(2, 1, term.0, rejection));

    assert_eq!(progress_of(&c, 1, 2), progress(2, 1, "probe"));
    assert_eq!(appends_to(&c.queue, 2), vec![(1, vec![2, 3])], "resent from the hint");
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(3).is_some()));
}

/// A follower whose disk was wiped rejects an append below what it acknowledged, with a hint
/// below its match: it lost those entries, so the match counts for nothing and the leader
/// probes from the follower's (empty) log, however old the rejection's index looks.
///
/// Closes `handle_append_response`: `hint < pr.match_index` as `==` or `>` (the rejection
/// would be taken as stale and ignored, the leader still believing the follower holds 3).
#[test]
fn a_rejection_with_a_hint_below_the_match_resets_the_match_5_3() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    propose(&mut c, 1, 1);
    propose(&mut c, 1, 2);
    c.settle();
    assert_eq!(progress_of(&c, 1, 2), progress(2, 3, "replicate"));

    c.wipe(2, 3, |_| {});
    propose(&mut c, 1, 3);
    let append = take_queued(&mut c, is_append_to(2));
    c.deliver(append);
    let term = c.status(1).term.0;
    let rejection = MessageBody::AppendEntriesResponse {
        success: false,
        index: LogIndex(3),
        hint: LogIndex(0),
        hint_term: Term(0),
    };
    assert_eq!(take_queued(&mut c, |m| m.from == NodeId(2)), msg(2, 1, term, rejection.clone()));
    c.deliver(msg(2, 1, term, rejection));

    assert_eq!(progress_of(&c, 1, 2), progress(2, 0, "probe"));
    assert_eq!(appends_to(&c.queue, 2), vec![(0, vec![1, 2, 3, 4])], "the whole log again");
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(4).is_some()));
}

/// At most `inflight_appends_max` AppendEntries are in flight to one follower; each
/// acknowledgement frees its slot at once, and the next append goes out without waiting for
/// a heartbeat.
///
/// Closes `send_append`: `inflight.len() < max_inflight` as `<=`; and `handle_append_response`:
/// the in-flight queue popped while `*i <= index` as `>` (the window never reopens).
#[test]
fn at_most_the_configured_appends_are_in_flight_and_an_ack_frees_a_slot_5_3() {
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], |cfg| {
        cfg.inflight_appends_max = 2;
    });
    c.elect_and_converge(1);
    for id in 1..=4 {
        propose(&mut c, 1, id);
    }
    assert_eq!(appends_to(&c.queue, 2), vec![(1, vec![2]), (2, vec![3])], "a window of two");

    let first = take_queued(&mut c, is_append_to(2));
    c.deliver(first);
    assert_eq!(c.deliver_matching(|m| m.from == NodeId(2)), 1);
    assert_eq!(
        appends_to(&c.queue, 2),
        vec![(2, vec![3]), (3, vec![4, 5])],
        "the acknowledgement opened the window for the rest"
    );
    c.settle();
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(5).is_some()));
}

/// A follower told of a new commit index while entries it does not hold yet are in flight to
/// it gets a heartbeat (its commit capped at its match), not an empty AppendEntries at the
/// leader's last index: that would fail its consistency check and send the leader back to
/// probing for nothing.
///
/// Closes `send_commit`: `pr.match_index != last || !Replicate` with `&&`.
#[test]
fn a_follower_behind_the_leader_learns_the_commit_index_by_heartbeat_5_3() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    propose(&mut c, 1, 1);
    propose(&mut c, 1, 2);
    assert_eq!(appends_to(&c.queue, 2), vec![(1, vec![2]), (2, vec![3])]);
    // Node 2 gets the first append only so far; its acknowledgement commits index 2.
    let first = take_queued(&mut c, is_append_to(2));
    c.deliver(first);
    c.take_readies(1);
    assert_eq!(c.deliver_matching(|m| m.from == NodeId(2)), 1);
    assert_eq!(c.status(1).commit_index, LogIndex(2));

    let to_2: Vec<MessageBody> = c
        .take_readies(1)
        .into_iter()
        .flat_map(|r| r.messages)
        .filter(|m| m.to == NodeId(2))
        .map(|m| m.body)
        .collect();
    assert_eq!(to_2.len(), 1, "{to_2:?}");
    assert!(matches!(to_2[0], MessageBody::Heartbeat { commit: LogIndex(2), .. }), "{:?}", to_2[0]);
    assert_eq!(progress_of(&c, 1, 2), progress(2, 2, "replicate"));
    c.settle();
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(3).is_some()));
}

/// A follower whose heartbeat responses report a log that ends at its match lost nothing: an
/// idle leader sends heartbeats only, keeps every follower's match and keeps pipelining (no
/// append is judged lost when none is in flight).
///
/// Closes `handle_heartbeat_response`: `last < pr.match_index` as `<=`, and its `&&` as `||`;
/// and `detect_lost_appends`: `stalled_heartbeats >= STALLED_HEARTBEATS_MAX` as `<`.
#[test]
fn an_idle_leader_sends_only_heartbeats_and_keeps_every_match_5_3() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let last = c.status(1).last_index.0;
    let sent = c.sent.len();
    c.run_ticks(4 * HEARTBEAT_TICKS);
    let kinds: BTreeSet<&str> = c.sent[sent..].iter().map(|m| m.body.name()).collect();
    assert_eq!(kinds, BTreeSet::from(["Heartbeat", "HeartbeatResponse"]));
    for id in [2, 3] {
        assert_eq!(progress_of(&c, 1, id), progress(id, last, "replicate"));
    }
}

/// An append counts as lost only when heartbeat intervals pass with appends in flight and no
/// progress. A follower catching up on a long backlog, one acknowledgement at a time, is
/// behind at every heartbeat yet moving: it stays pipelined, and nothing is sent twice.
///
/// Closes `detect_lost_appends`: either `&&` of `!inflight.is_empty() && match ==
/// match_at_heartbeat && match < last` as `||`.
#[test]
fn a_follower_catching_up_one_ack_per_tick_is_not_judged_stalled_5_3() {
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], |cfg| {
        cfg.append_entries_max = 1;
    });
    c.elect_and_converge(1);
    let with_2 = |m: &Message| m.to == NodeId(2) || m.from == NodeId(2);
    let sent = c.sent.len();
    for id in 1..=10 {
        propose(&mut c, 1, id);
    }
    settle_matching(&mut c, |m| !with_2(m));
    assert_eq!(appends_to(&c.queue, 2).len(), 10, "one entry per append, all in flight");

    for tick in 0..8 {
        let next = take_queued(&mut c, is_append_to(2));
        c.deliver(next);
        let acked = c.deliver_matching(|m| {
            m.from == NodeId(2) && matches!(m.body, MessageBody::AppendEntriesResponse { .. })
        });
        assert_eq!(acked, 1);
        c.tick(1);
        settle_matching(&mut c, |m| !with_2(m));
        assert_eq!(
            progress_of(&c, 1, 2),
            progress(2, 2 + tick, "replicate"),
            "tick {tick}: a follower making progress was judged stalled"
        );
    }
    let appends = appends_to(&c.sent[sent..], 2);
    let prevs: BTreeSet<u64> = appends.iter().map(|(prev, _)| *prev).collect();
    assert_eq!(prevs.len(), appends.len(), "an append was sent twice: {appends:?}");
    c.settle();
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(11).is_some()));
}

// ---- snapshots and compaction (§7) --------------------------------------------------------

/// A follower whose log reaches exactly the start of the leader's compacted log (its hint is
/// the leader's snapshot index) is caught up from the log: the entry at the snapshot index is
/// known by its term, so no snapshot is needed.
///
/// Closes `handle_append_response`: `hint < log_start` as `<=` or `==`.
#[test]
fn a_follower_whose_log_reaches_the_leaders_log_start_catches_up_from_the_log_7() {
    let states = vec![compacted_to_5(), uncompacted_to(5), compacted_to_5()];
    let mut c = Cluster::restored(states, |_| {});
    c.elect(1);
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(9).is_some()));
    assert!(installs(&c, 2).is_empty());
    assert_eq!(transfers_started(&c, 1), 0);
    let appends = appends_to(&c.sent, 2);
    assert_eq!(appends[..2], [(8, vec![9]), (5, vec![6, 7, 8, 9])], "probe, then from 5");
}

/// A follower whose log ends before the start of the leader's compacted log (its hint is below
/// the snapshot index) needs entries the leader no longer holds: the leader streams a snapshot
/// right away instead of probing once more at its log start.
///
/// Closes `handle_append_response`: `index <= log_start || hint < log_start` with `&&`, and
/// `hint < log_start` as `==`.
#[test]
fn a_follower_whose_log_ends_before_the_leaders_log_start_gets_a_snapshot_at_once_7() {
    let states = vec![compacted_to_5(), uncompacted_to(3), compacted_to_5()];
    let mut c = Cluster::restored(states, |_| {});
    c.elect(1);
    assert!(c.run_until(8 * ELECTION_TICKS, |c| c.converged(9).is_some()));
    assert_eq!(installs(&c, 2).len(), 1);
    let first_chunk = c
        .sent
        .iter()
        .position(|m| m.to == NodeId(2) && matches!(m.body, MessageBody::SnapshotChunk { .. }))
        .expect("a snapshot was streamed");
    assert_eq!(appends_to(&c.sent[..first_chunk], 2), vec![(8, vec![9])], "one probe, no more");
}

/// Compaction (§7) waits until `snapshot_entries` applied entries have accumulated since the
/// last one, and then compacts to the applied index (nothing kept here): a leader applying one
/// entry at a time compacts at 4 and at 8, and at no other index.
///
/// Closes `maybe_compact`: `applied - snapshot >= snapshot_entries` as `<` or with `+`,
/// `bytes >= snapshot_bytes` as `<`, and `!due` with the `!` deleted.
#[test]
fn the_log_is_compacted_each_time_the_threshold_of_applied_entries_is_reached_7() {
    let mut c = Cluster::restored(vec![RestoredState::default()], compacting);
    c.elect(1);
    for id in 1..=7 {
        propose(&mut c, 1, id);
    }
    assert_eq!(c.status(1).applied_index, LogIndex(8));
    assert_eq!(compactions(&c, 1), vec![4, 8]);
}

/// A compaction keeps the last `snapshot_keep_entries` applied entries (their bytes, well under
/// half `snapshot_bytes`, allow it), so a follower slightly behind catches up from the log.
/// With more to keep than have been applied, a due compaction has nothing to drop and asks
/// the runtime for nothing.
///
/// Closes `maybe_compact`: `snapshot_bytes / 2` as `%` (nothing kept by bytes), and
/// `to > snapshot.index` as `>=` (a compaction to the current snapshot).
#[test]
fn a_compaction_keeps_the_configured_applied_entries_7() {
    let keep_6 = |cfg: &mut Config| {
        cfg.snapshot_entries = 4;
        cfg.snapshot_keep_entries = 6;
    };
    let mut c = Cluster::restored(vec![RestoredState::default()], keep_6);
    c.elect(1);
    for id in 1..=8 {
        propose(&mut c, 1, id);
    }
    assert_eq!(c.status(1).applied_index, LogIndex(9));
    // Due from 4 on; the first entry beyond the 6 kept is 1, at 7.
    assert_eq!(compactions(&c, 1), vec![1, 2, 3]);
    assert_eq!(c.status(1).snapshot_index, LogIndex(3));
}

/// Ticks every node once and delivers every message but the snapshot chunks to node 3, which
/// are held back in `held`, in the order sent.
fn tick_holding_chunks(c: &mut Cluster, held: &mut Vec<Message>) {
    let chunk_to_3 =
        |m: &Message| m.to == NodeId(3) && matches!(m.body, MessageBody::SnapshotChunk { .. });
    for id in c.ids() {
        c.step_id(id, Input::Tick);
        c.process_id(id);
    }
    for _ in 0..SETTLE_ROUNDS_MAX {
        let (late, now): (Vec<Message>, Vec<Message>) = c.queue.drain(..).partition(chunk_to_3);
        held.extend(late);
        c.queue = now.into();
        if c.queue.is_empty() {
            return;
        }
        c.deliver_round();
    }
    panic!("messages still in flight after {SETTLE_ROUNDS_MAX} rounds");
}

/// Node 3 was down while leader 1 compacted past it; back, it needs a snapshot, whose chunks
/// the caller holds back: the transfer has started once this returns.
fn start_a_held_transfer(c: &mut Cluster, held: &mut Vec<Message>) {
    c.elect_and_converge(1);
    c.crash(3);
    for id in 1..=12 {
        propose(c, 1, id);
        c.settle();
    }
    assert!(c.peer(1).stored_after.index.0 >= 8, "the leader compacted");
    c.down.remove(&NodeId(3));
    for _ in 0..10 * ELECTION_TICKS {
        if transfers_started(c, 1) > 0 {
            break;
        }
        tick_holding_chunks(c, held);
    }
    assert_eq!(transfers_started(c, 1), 1, "a transfer to node 3 started");
}

/// A snapshot transfer that is slow, not lost, is given time: the leader restarts a transfer
/// only after `SNAPSHOT_IDLE_HEARTBEATS_MAX` heartbeat intervals (120) without an
/// acknowledgement. Ten intervals of a delayed stream start nothing new, and the delayed
/// chunks then complete the one transfer.
///
/// Closes `detect_lost_appends`: `idle_heartbeats >= SNAPSHOT_IDLE_HEARTBEATS_MAX` as `<`.
#[test]
fn a_slow_snapshot_transfer_is_not_restarted_7() {
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], compacting);
    let mut held: Vec<Message> = Vec::new();
    start_a_held_transfer(&mut c, &mut held);
    for _ in 0..10 * HEARTBEAT_TICKS {
        tick_holding_chunks(&mut c, &mut held);
    }
    assert_eq!(transfers_started(&c, 1), 1, "a slow transfer was started over");
    assert_eq!(progress_of(&c, 1, 3).state, "snapshot");

    for m in std::mem::take(&mut held) {
        c.deliver(m);
    }
    c.settle();
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(13).is_some()));
    assert_eq!(installs(&c, 3).len(), 1);
    assert_eq!(transfers_started(&c, 1), 1);
}

/// Each acknowledgement of the snapshot being sent starts the idle count again: a stream that
/// delivers one chunk every 100 heartbeat intervals runs for 200, past the 120 allowed without
/// an acknowledgement, and is not restarted. (The leader also hands each acknowledgement to
/// its runtime, which paces the stream by them.)
///
/// Closes `step_message`'s SnapshotAck arm: `*sending == meta` as `!=`, and `role != Leader`
/// as `==`.
#[test]
fn each_acknowledged_chunk_gives_a_slow_snapshot_transfer_more_time_7() {
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], compacting);
    let mut held: Vec<Message> = Vec::new();
    start_a_held_transfer(&mut c, &mut held);
    for seq in 0..2 {
        for _ in 0..100 * HEARTBEAT_TICKS {
            tick_holding_chunks(&mut c, &mut held);
        }
        let chunk = held.remove(0);
        assert!(matches!(chunk.body, MessageBody::SnapshotChunk { seq: s, .. } if s == seq));
        c.deliver(chunk);
        c.settle();
        let acks: usize = c.peer(1).readies.iter().map(|r| r.snapshot_acks.len()).sum();
        assert_eq!(acks, seq as usize + 1, "the leader's runtime is told of each acknowledgement");
    }
    assert_eq!(transfers_started(&c, 1), 1, "a transfer acknowledged in time was started over");
}

/// A snapshot whose chunks all arrived is installed only while its sender still leads this
/// follower: once a newer leader was heard from, the old transfer is dropped (the new leader
/// sends what is needed), neither installed nor answered.
///
/// Closes `snapshot_received`: `role != Follower || leader != Some(from)` with `&&`.
#[test]
fn a_snapshot_completed_after_its_leader_was_replaced_is_not_installed_7() {
    let state = RestoredState {
        hard_state: HardState { term: Term(2), voted_for: None, recovering: false },
        ..RestoredState::default()
    };
    let mut node = RaftNode::new(config(3, 3), state).expect("valid");
    let meta = SnapshotMeta { index: LogIndex(5), term: Term(2), time: 0 };
    let chunk = MessageBody::SnapshotChunk { meta, seq: 0, data: Vec::new(), last: true };
    node.step(Input::Message(msg(1, 3, 2, chunk)));
    assert_eq!(node.ready().snapshot_chunks.len(), 1, "the chunk is handed to storage");

    // Node 2 won term 3 while the runtime stored the chunk.
    let heartbeat = MessageBody::Heartbeat { commit: LogIndex(0), read_round: 0 };
    node.step(Input::Message(msg(2, 3, 3, heartbeat)));
    node.ready();
    assert_eq!(node.status().leader, Some(NodeId(2)));

    node.step(Input::SnapshotReceived { from: NodeId(1), meta });
    node.check_invariants();
    assert_eq!(node.ready(), Ready::default());
    assert_eq!(node.status().snapshot_index, LogIndex(0));
}

/// A node that lost its disk (`recovering`) and is caught up by a snapshot ending in an entry
/// of the current leader's term holds everything committed: it is released with the install,
/// in the same `Ready`, not at some later append.
///
/// Closes `snapshot_received`: `commit_index >= meta.index` as `<` (no release at install).
#[test]
fn a_recovering_node_is_released_by_the_snapshot_that_catches_it_up_7() {
    let tune = |cfg: &mut Config| {
        cfg.check_empty_start = true;
        compacting(cfg);
    };
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], tune);
    assert!(c.run_until(20 * ELECTION_TICKS, |c| c.converged(1).is_some()));
    let leader = c.leaders_now()[0].0;
    let wiped = if leader == 3 { 2 } else { 3 };
    for id in 1..=10 {
        propose(&mut c, leader, id);
        c.settle();
    }
    c.wipe(wiped, 3, tune);
    let installed = c.run_until(20 * ELECTION_TICKS, |c| !installs(c, wiped).is_empty());
    assert!(installed, "the wiped node was sent a snapshot");

    let readies = &c.peer(wiped).readies;
    let at = readies.iter().position(|r| r.install_snapshot.is_some()).expect("installed");
    assert!(
        readies[..at].iter().any(|r| r.hard_state.is_some_and(|h| h.recovering)),
        "it knew it had lost its log"
    );
    let term = c.status(leader).term;
    assert_eq!(readies[at].install_snapshot.map(|m| m.term), Some(term));
    assert_eq!(
        readies[at].hard_state.map(|h| (h.term, h.recovering)),
        Some((term, false)),
        "released with the install"
    );
}

// ---- membership, limits, forwarding --------------------------------------------------------

/// Thesis §4.2.2: a removed node is replicated to until its removal is committed and it was
/// told so; then the leader stops (it no longer heartbeats a node that is no member).
///
/// Closes `prune_progress`: `p.match_index >= removal` as `<`.
#[test]
fn a_leader_stops_replicating_to_a_removed_node_once_it_knows_of_its_removal_4_2_2() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let remove = MembershipChange::Remove { id: NodeId(3) };
    let based_on = c.peer(1).node.membership().version_id();
    c.step(
        1,
        Input::ProposeMembership {
            id: 1,
            change: remove.clone(),
            data: conf_entry(&remove),
            based_on,
        },
    );
    c.process(1);
    c.settle();
    let removal = c.status(1).last_index;
    c.run_ticks(2 * HEARTBEAT_TICKS);
    assert!(c.status(3).commit_index >= removal, "node 3 knows its removal is committed");
    assert!(!c.peer(3).node.membership().contains(NodeId(3)));

    let followers: Vec<NodeId> = c.peer(1).node.followers().iter().map(|f| f.id).collect();
    assert_eq!(followers, vec![NodeId(2)]);
    let sent = c.sent.len();
    c.run_ticks(4 * HEARTBEAT_TICKS);
    assert!(c.sent[sent..].iter().all(|m| m.to != NodeId(3)), "node 3 is still sent to");
}

/// A follower hands proposals and reads it queued for its leader back to the runtime
/// (`NoLeader`) when it stops knowing that leader, rather than keeping them for a leader that
/// may never come: here a vote request of a leadership transfer, of the next term, arrives
/// before the follower passed them on.
///
/// Closes `fail_forwarded_work` replaced by `()`.
#[test]
fn a_follower_that_loses_its_leader_refuses_the_work_it_queued_for_it() {
    let mut c = Cluster::new(3);
    c.elect_and_converge(1);
    let st = c.status(3);
    c.step(2, Input::Propose { id: 7, data: b"x".to_vec() });
    c.step(2, Input::Read { id: 8 });
    let vote = MessageBody::RequestVote {
        last_log_index: st.last_index,
        last_log_term: st.term,
        transfer: true,
    };
    c.step(2, Input::Message(msg(3, 2, st.term.0 + 1, vote)));
    c.process(2);
    assert_eq!(c.status(2).leader, None);
    assert_eq!(c.peer(2).rejected, vec![(7, Rejection::NoLeader), (8, Rejection::NoLeader)]);
    let forwarded = c.queue.iter().any(|m| {
        m.from == NodeId(2)
            && matches!(m.body, MessageBody::Propose { .. } | MessageBody::ReadIndex { .. })
    });
    assert!(!forwarded, "refused and forwarded both");
}

/// A follower forwards queued proposals in messages of at most `append_bytes_max` bytes of
/// data: the bound is inclusive, so proposals that fill it exactly travel together.
///
/// Closes `ready_inner`: `bytes + data.len() > append_bytes_max` as `>=`.
#[test]
fn forwarded_proposals_that_fill_the_byte_bound_exactly_travel_in_one_message() {
    let mut c =
        Cluster::restored(vec![RestoredState::default(); 3], |cfg| cfg.append_bytes_max = 100);
    c.elect_and_converge(1);
    for (id, size) in [(1, 60), (2, 40), (3, 1)] {
        c.step(2, Input::Propose { id, data: vec![b'a'; size] });
    }
    let sent = c.sent.len();
    c.process(2);
    let batches: Vec<Vec<usize>> = c.sent[sent..]
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Propose { proposals } => {
                Some(proposals.iter().map(|(_, d)| d.len()).collect())
            }
            _ => None,
        })
        .collect();
    assert_eq!(batches, vec![vec![60, 40], vec![1]]);
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(4).is_some()));
}

/// A leader bounds the bytes of its uncommitted entries by `uncommitted_bytes_max`, inclusive:
/// an entry that brings them exactly to the bound is taken, the next one is refused (`Busy`).
///
/// Closes `too_much_uncommitted`: `bytes + entry.size_bytes() > uncommitted_bytes_max` as `>=`.
#[test]
fn uncommitted_entries_may_fill_the_byte_bound_exactly() {
    let mut cfg = config(1, 1);
    // Two entries of 10 bytes of data (34 bytes each, with the entry's 24).
    cfg.uncommitted_bytes_max = 68;
    let mut node = lone_leader(cfg);
    let mut step = |input: Input| step_checked(&mut node, input);
    for id in 1..=2 {
        let r = step(Input::Propose { id, data: vec![7; 10] });
        assert!(r.rejected.is_empty() && r.append.is_some(), "proposal {id}: {r:?}");
    }
    let refused = step(Input::Propose { id: 3, data: vec![7; 10] });
    assert_eq!(refused.rejected, vec![(3, Rejection::Busy)]);
}

/// Delivers rounds until nothing is in flight, dropping every AppendEntries to node 3 that
/// carries entries (its heartbeats, and its answers, still go).
fn settle_starving_3(c: &mut Cluster) {
    for _ in 0..100 {
        c.queue.retain(|m| {
            !(m.to == NodeId(3)
                && matches!(&m.body, MessageBody::AppendEntries { entries, .. } if !entries.is_empty()))
        });
        if c.queue.is_empty() {
            return;
        }
        c.deliver_round();
    }
    panic!("messages still in flight");
}

/// A leader keeps the entries a follower it hears from still needs (`compact_keeps_followers`):
/// a follower whose appends are lost, but which answers heartbeats, falls behind while the
/// leader passes its compaction threshold three times; it then catches up from the log, with
/// no snapshot. Once it is silent for election timeouts, the leader compacts past it.
///
/// Closes `followers_floor` (the role and flag checks, the silence and snapshot filters) and
/// its use in `maybe_compact`.
#[test]
fn a_leader_keeps_the_entries_a_follower_it_hears_from_still_needs_7() {
    let keep_followers = |cfg: &mut Config| {
        compacting(cfg);
        cfg.compact_keeps_followers = true;
    };
    let mut c = Cluster::restored(vec![RestoredState::default(); 3], keep_followers);
    c.elect_and_converge(1);
    for id in 1..=12 {
        propose(&mut c, 1, id);
        settle_starving_3(&mut c);
        c.tick(1);
        settle_starving_3(&mut c);
    }
    assert_eq!(c.status(1).commit_index, LogIndex(13));
    assert_eq!(c.status(3).commit_index, LogIndex(1), "node 3 holds only the no-op");
    assert!(compactions(&c, 2).len() >= 3, "node 2 compacted: {:?}", compactions(&c, 2));
    assert!(compactions(&c, 1).iter().all(|i| *i <= 1), "leader: {:?}", compactions(&c, 1));
    assert!(c.run_until(4 * ELECTION_TICKS, |c| c.converged(13).is_some()));
    assert_eq!(transfers_started(&c, 1), 0, "node 3 caught up from the log");
    assert!(installs(&c, 3).is_empty());

    // Node 3 goes silent: after a check-quorum round without it, the leader compacts.
    c.crash(3);
    c.run_ticks(3 * ELECTION_TICKS);
    for id in 13..=20 {
        propose(&mut c, 1, id);
        c.settle();
    }
    let last = compactions(&c, 1).last().copied().unwrap_or(0);
    assert!(last > 13, "the leader compacted past silent node 3: {:?}", compactions(&c, 1));
}
