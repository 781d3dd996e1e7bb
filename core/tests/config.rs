//! `Config::validate`: a node refuses to start with a configuration under which a rule of the
//! core could not hold (a timeout shorter than the heartbeat, a lease as long as the election
//! timeout) or a queue could never take anything. Each bad field is checked alone, on a
//! configuration that is otherwise valid, so a check that only fires when several fields are bad
//! at once fails here.

use raft_kv_core::{Config, NodeId, RaftNode, RestoredState};

fn valid() -> Config {
    Config::new(NodeId(1), vec![NodeId(1), NodeId(2), NodeId(3)], 7)
}

/// The error `validate` gives once `spoil` changed one field of a valid configuration.
fn refusal(spoil: impl Fn(&mut Config)) -> String {
    let mut cfg = valid();
    spoil(&mut cfg);
    let err = cfg.validate().expect_err("the spoiled configuration was accepted");
    // A node is never built from a configuration `validate` refuses.
    let built = RaftNode::new(cfg, RestoredState::default());
    assert!(built.is_err(), "RaftNode::new accepted what validate refused");
    err.0
}

#[test]
fn the_default_configuration_is_valid() {
    assert_eq!(valid().validate(), Ok(()));
    let node = RaftNode::new(valid(), RestoredState::default()).expect("valid");
    assert_eq!(node.id(), NodeId(1), "the node is the one configured");
}

#[test]
fn member_ids_must_be_distinct_non_zero_and_name_at_least_one_voter() {
    let ids = "member ids must be distinct and at least 1, with at least one voter";
    assert_eq!(refusal(|c| c.voters = vec![NodeId(1), NodeId(2), NodeId(2)]), ids);
    assert_eq!(refusal(|c| c.voters = vec![NodeId(1), NodeId(0)]), ids);
    assert_eq!(refusal(|c| c.voters.clear()), ids);
    assert_eq!(refusal(|c| c.id = NodeId(0)), "node id must be at least 1");
    // A joining node is not yet among the voters it starts with.
    let mut joining = valid();
    joining.id = NodeId(4);
    assert_eq!(joining.validate(), Ok(()));
}

#[test]
fn the_election_timeout_must_exceed_a_nonzero_heartbeat_interval() {
    let why = "election timeout must exceed the heartbeat interval";
    assert_eq!(refusal(|c| c.heartbeat_ticks = 0), why);
    assert_eq!(refusal(|c| c.election_ticks = c.heartbeat_ticks), why);
    let mut just = valid();
    just.election_ticks = just.heartbeat_ticks + 1;
    assert_eq!(just.validate(), Ok(()));
}

#[test]
fn a_lease_must_be_shorter_than_the_election_timeout() {
    let why = "a lease must be shorter than the election timeout";
    assert_eq!(refusal(|c| c.lease_ticks = c.election_ticks), why);
    let mut just = valid();
    just.lease_ticks = just.election_ticks - 1;
    assert_eq!(just.validate(), Ok(()));
}

#[test]
fn every_batch_and_queue_limit_must_be_at_least_one() {
    type Spoiler = (&'static str, fn(&mut Config));
    let spoilers: [Spoiler; 9] = [
        ("append_entries_max", |c| c.append_entries_max = 0),
        ("append_bytes_max", |c| c.append_bytes_max = 0),
        ("inflight_appends_max", |c| c.inflight_appends_max = 0),
        ("apply_batch_max", |c| c.apply_batch_max = 0),
        ("uncommitted_entries_max", |c| c.uncommitted_entries_max = 0),
        ("uncommitted_bytes_max", |c| c.uncommitted_bytes_max = 0),
        ("pending_reads_max", |c| c.pending_reads_max = 0),
        ("snapshot_entries", |c| c.snapshot_entries = 0),
        ("snapshot_bytes", |c| c.snapshot_bytes = 0),
    ];
    for (field, spoil) in spoilers {
        assert_eq!(
            refusal(spoil),
            "batch and queue limits must be at least 1",
            "{field} = 0 was not refused as a limit"
        );
    }
}
