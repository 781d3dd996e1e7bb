//! Bugs planted on purpose, to prove that the simulation catches real mistakes: a simulation
//! that cannot fail proves nothing. A bug is honoured only in simulation builds
//! (`--cfg madsim`); every other build ignores the setting, and the server never sets it.

/// One deliberate mistake, each of a kind Raft implementations have shipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PlantedBug {
    /// A voter grants its vote without checking that the candidate's log is at least as up to
    /// date as its own (§5.4.1): a leader can be elected without committed entries.
    VoteWithoutLogCheck,
    /// A follower answers reads from its own applied state instead of through ReadIndex.
    FollowerLocalReads,
    /// Storage reports appends and votes durable without syncing them (the C++ raft-kv's
    /// never-fsync): a crash loses what the node already acknowledged.
    AckBeforeSync,
    /// A node sends its messages before the WAL sync that covers its writes completes, as a
    /// leader may, instead of only a leader's: a follower acknowledges entries (and a voter
    /// its vote) that a crash can still take back.
    AckBeforeSyncCompletes,
    /// Writes re-submitted after a leader change skip the session check (`kv::admit`), so a
    /// write that reached the old leader's log applies twice.
    RetryAppliedTwice,
    /// A connection submits a pipelined read without waiting for the writes before it to
    /// be answered, so the read can miss its own connection's write (a bug this project had).
    PipelineReadsOvertakeWrites,
    /// A follower installing a snapshot drops the client sessions in it, so a write retried
    /// after the install is no longer recognised as a duplicate and applies twice there.
    SnapshotDropsSessions,
    /// The leader's lease lasts a whole election timeout, as if every clock ran at the same
    /// rate: a follower with a faster clock can vote for a new leader while the old one still
    /// serves reads from its lease.
    LeaseIgnoresClockDrift,
    /// The leader accepts a membership change while the previous one (or its own first entry)
    /// is still uncommitted, and whatever membership it was asked against; thesis §4.1 allows
    /// one at a time. Two single-server steps away
    /// from the committed membership, the old and the new majorities need not overlap, and
    /// both sides of a partition can commit.
    MembershipChangesOverlap,
    /// A node decides whether a key expired by its own clock when it serves a read, instead of
    /// at the time of the log position it reads: nodes whose clocks differ disagree.
    ExpiryByLocalClock,
    /// A node that comes back with a wiped disk votes at once (`Config::check_empty_start`
    /// ignored): its empty log is up to date against any candidate, so a node missing writes
    /// the wiped one had acknowledged can win and lose them.
    WipedDiskVotes,
    /// The leader judges its lease by its tick count alone (`Config::tick_us` ignored): after
    /// its task stalled, or its timer fired late, the count lags real time and the lease
    /// outlives the followers' promise not to vote.
    LeaseByTicksAlone,
    /// A failed WAL sync is taken for a successful one (PostgreSQL's "fsyncgate"): the node
    /// goes on acknowledging writes its disk never made durable, which a crash then takes
    /// back. A correct node stops at the failed sync and restarts from what is durable.
    SyncErrorIgnored,
    /// Storage uses a record whose checksum fails as if it were sound: the log replays up to
    /// a damaged entry and silently ends there (RocksDB's default, point-in-time WAL
    /// recovery), dropping entries the node acknowledged; a damaged value is served. A correct
    /// node refuses a damaged disk and is rebuilt from its peers.
    DamagedDataTrusted,
    /// A node whose disk is nearly full checks it only after proposing a write: the write
    /// goes into the log while its client is told MISCONF, which promises that it did not.
    DiskFullWriteProposedAnyway,
    /// A write the leader refused for want of room is answered BUSY (definitely not applied)
    /// even when it was re-sent after a leader change, so an earlier copy of it may already be
    /// in the log and apply.
    BusyAfterResubmit,
    /// SPOP's member is chosen by each node on its own (seeded by its id) instead of by the
    /// entry, so the replicas pop different members and diverge.
    PopChoiceByNode,
    /// The node applies entries as if no key held a collection (its in-memory index of them,
    /// `Expiry::collections`, empty), so a SET over a list, set or sorted set does not read the
    /// old record and leaves the collection's element records behind for ever.
    CollectionIndexForgets,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 18] = [
        PlantedBug::VoteWithoutLogCheck,
        PlantedBug::FollowerLocalReads,
        PlantedBug::AckBeforeSync,
        PlantedBug::AckBeforeSyncCompletes,
        PlantedBug::RetryAppliedTwice,
        PlantedBug::PipelineReadsOvertakeWrites,
        PlantedBug::SnapshotDropsSessions,
        PlantedBug::LeaseIgnoresClockDrift,
        PlantedBug::MembershipChangesOverlap,
        PlantedBug::ExpiryByLocalClock,
        PlantedBug::WipedDiskVotes,
        PlantedBug::LeaseByTicksAlone,
        PlantedBug::SyncErrorIgnored,
        PlantedBug::DamagedDataTrusted,
        PlantedBug::DiskFullWriteProposedAnyway,
        PlantedBug::BusyAfterResubmit,
        PlantedBug::PopChoiceByNode,
        PlantedBug::CollectionIndexForgets,
    ];
}

/// Whether `bug` is planted in this build and run.
pub fn active(planted: Option<PlantedBug>, bug: PlantedBug) -> bool {
    cfg!(madsim) && planted == Some(bug)
}
