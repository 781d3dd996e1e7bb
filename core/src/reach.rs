//! Which rare paths a simulation run reached (issue 14.6). A checker only judges the paths
//! its runs take: a branch no seed reaches is a branch no seed tests. The simulation counts
//! each path here per run and prints, for every CI run, how many seeds reached each one, so a
//! path at zero is visible and gets a nemesis action that reaches it.
//!
//! Counting is for simulation builds only (`--cfg madsim`): elsewhere `hit` compiles to
//! nothing. The counts are per thread (a simulation runs on one thread, several run side by
//! side) and are only ever read by the harness, never by the code that counts them.

/// A path of interest in the core or the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Path {
    /// A follower deleted a conflicting suffix of its log (Figure 2, AppendEntries rule 3).
    ConflictTruncated,
    /// A follower refused an AppendEntries whose `prev` it does not hold (rule 2).
    AppendRejected,
    /// A follower skipped the part of an AppendEntries below its commit index (a stale or
    /// duplicated message).
    StaleAppendSkipped,
    /// A message of an older term was answered with ours, so its stale sender steps down.
    StaleTermAnswered,
    /// A leader moved a follower to probing after a rejection, with a better `next_index`.
    ProbeAfterRejection,
    /// A leader ignored a rejection that answered an append it had already moved past.
    StaleRejectionIgnored,
    /// A leader found a follower's log shorter than what it had acknowledged (a lost disk).
    FollowerLostItsLog,
    /// A leader found pipelined appends lost (no progress for several heartbeats).
    LostAppendsDetected,
    /// A leader began streaming a snapshot to a follower whose entries are compacted.
    SnapshotStarted,
    /// A snapshot transfer went unacknowledged too long and started over.
    SnapshotRestarted,
    /// A follower's staged snapshot was dropped for one from another leader or position, or
    /// for the log (a leader changed in the middle of a transfer).
    SnapshotStagingDropped,
    /// A follower installed a snapshot.
    SnapshotInstalled,
    /// A vote or pre-vote was refused because the candidate's log is behind (§5.4.1).
    VoteRefusedForLog,
    /// A vote or pre-vote of a higher term was ignored: the node heard from a live leader
    /// within an election timeout (its promise to a lease, §4.2.3, §6.4.1).
    VoteIgnoredForLeader,
    /// A leader held back a commit: a majority holds an entry, but of an earlier term (§5.4.2,
    /// Figure 8).
    CommitWaitsForCurrentTerm,
    /// A leader stepped down because a majority went silent (check-quorum).
    CheckQuorumStepDown,
    /// A read waited for the leader's first commit of its term (§6.4 step 1).
    ReadWaitsForFirstCommit,
    /// A read was served from the leader's lease, without a round.
    LeaseRead,
    /// A leader refused a proposal for want of room (BUSY).
    ProposalRefusedForRoom,
    /// A leader skipped a forwarded proposal the network had duplicated.
    DuplicateForwardSkipped,
    /// A membership change was refused: another was pending, or it was asked against an
    /// older membership.
    MembershipChangeRefused,
    /// A leadership transfer told its target to campaign.
    TransferTimeoutNow,
    /// A node that lost its disk was released by a leader and may vote again.
    RecoveringReleased,
    /// A node that lost its disk ignored a leader's message while it asked the voters for
    /// their terms.
    LeaderIgnoredWhileProbing,
    /// A read walking a large collection was served off the node task, from a view of the
    /// applied state (the runtime's `serve_off_task`).
    ReadServedOffTask,
    /// The node task stalled longer than its tick catch-up and left the rest of the stall's
    /// ticks uncounted (the runtime's `TICK_CATCH_UP_DIVISOR`).
    StallTicksDropped,
    /// A turn of the node task left further rounds of `ready` to its next turn (the runtime's
    /// `NodeTuning::ready_turn_budget`).
    ReadyRoundsDeferred,
}

impl Path {
    pub const ALL: [Path; 27] = [
        Path::ConflictTruncated,
        Path::AppendRejected,
        Path::StaleAppendSkipped,
        Path::StaleTermAnswered,
        Path::ProbeAfterRejection,
        Path::StaleRejectionIgnored,
        Path::FollowerLostItsLog,
        Path::LostAppendsDetected,
        Path::SnapshotStarted,
        Path::SnapshotRestarted,
        Path::SnapshotStagingDropped,
        Path::SnapshotInstalled,
        Path::VoteRefusedForLog,
        Path::VoteIgnoredForLeader,
        Path::CommitWaitsForCurrentTerm,
        Path::CheckQuorumStepDown,
        Path::ReadWaitsForFirstCommit,
        Path::LeaseRead,
        Path::ProposalRefusedForRoom,
        Path::DuplicateForwardSkipped,
        Path::MembershipChangeRefused,
        Path::TransferTimeoutNow,
        Path::RecoveringReleased,
        Path::LeaderIgnoredWhileProbing,
        Path::ReadServedOffTask,
        Path::StallTicksDropped,
        Path::ReadyRoundsDeferred,
    ];
}

#[cfg(madsim)]
thread_local! {
    static COUNTS: std::cell::RefCell<[u64; Path::ALL.len()]> =
        const { std::cell::RefCell::new([0; Path::ALL.len()]) };
}

/// Counts one pass along `path` (simulation builds only).
#[inline]
pub fn hit(path: Path) {
    #[cfg(madsim)]
    COUNTS.with(|c| c.borrow_mut()[path as usize] += 1);
    #[cfg(not(madsim))]
    let _ = path;
}

/// This thread's counts since the last call, in `Path::ALL`'s order; resets them.
pub fn take() -> [u64; Path::ALL.len()] {
    #[cfg(madsim)]
    return COUNTS.with(|c| std::mem::take(&mut *c.borrow_mut()));
    #[cfg(not(madsim))]
    [0; Path::ALL.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_path_is_listed_once_in_declaration_order() {
        for (i, p) in Path::ALL.iter().enumerate() {
            assert_eq!(*p as usize, i, "{p:?}");
        }
    }
}
