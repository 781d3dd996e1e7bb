//! Newtypes for the Raft vocabulary (node ids, terms, log indexes) and the log entry itself.
//! Pure data: no behaviour beyond ordering and display.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_newtype!(
    /// A cluster member. Ids start at 1; 0 means "none".
    NodeId
);
id_newtype!(
    /// A Raft term (§5.1). Term 0 exists only before the first election.
    Term
);
id_newtype!(
    /// A position in the replicated log. Index 0 is the empty prefix; the first entry is 1.
    LogIndex
);

impl LogIndex {
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl Term {
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

/// One replicated log entry. `data` is opaque to consensus; an empty `data` is the no-op a new
/// leader appends to commit entries of earlier terms (§5.4.2, §8).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub index: LogIndex,
    pub term: Term,
    pub data: Vec<u8>,
    /// A membership change: the membership from this entry on. It takes effect on every node
    /// as soon as the entry is in its log, committed or not (thesis §4.1), and is undone if a
    /// conflicting leader truncates it.
    pub membership: Option<Membership>,
    /// The leader's wall clock when it appended the entry, in milliseconds since the Unix
    /// epoch, never below the time of the entry before it. The state machine applies the entry
    /// at this time, so every replica decides expiry alike whatever its own clock says.
    pub time: u64,
}

impl Entry {
    pub fn new(index: LogIndex, term: Term, data: Vec<u8>) -> Entry {
        Entry { index, term, data, membership: None, time: 0 }
    }

    /// Bytes this entry adds to a message or batch, for size limits.
    pub fn size_bytes(&self) -> usize {
        let m = self.membership.as_ref().map_or(0, |m| {
            16 * (m.voters.len() + m.learners.len())
                + m.addrs.values().map(|a| a.len() + 8).sum::<usize>()
        });
        self.data.len() + 24 + m
    }
}

/// What must survive a crash besides the log: the current term and the vote cast in it (§5.1,
/// Figure 2 "persistent state on all servers").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
    /// This node's disk lost what it had acknowledged (it started empty in a cluster that
    /// already existed): it neither votes nor campaigns until it holds every entry committed
    /// before (`RaftNode`'s start-up). Durable, so a crash while catching up does not end it.
    pub recovering: bool,
}

/// The point a snapshot of the state machine was taken at: it holds every entry up to `index`,
/// whose term is `term` and time `time` (`Entry::time`). The log before it may be compacted
/// away.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SnapshotMeta {
    pub index: LogIndex,
    pub term: Term,
    pub time: u64,
}

/// Who is in the cluster: voters elect leaders and make up quorums; learners receive the log
/// but do not vote. `addrs` holds each member's Raft address, opaque to consensus.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub addrs: BTreeMap<NodeId, String>,
    /// How many changes made this membership (0: the one a cluster started with). A change is
    /// proposed against a version and refused at any other (`Input::ProposeMembership`), so a
    /// copy re-sent after a leader change, or delayed in the network, cannot undo a later
    /// change: a REMOVE of a node that rejoined since, an ADD of one removed since.
    pub version: u64,
    /// The term of the leader that made it: with `version`, unique among all memberships any
    /// log ever held (a truncated branch may have made another one with the same count).
    pub made_in: Term,
}

/// One single-server membership change (thesis §4.1): voters change by at most one at a time,
/// so any majority of the old voters and any majority of the new ones share a node.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MembershipChange {
    /// A new node, non-voting until promoted.
    AddLearner { id: NodeId, addr: String },
    /// A learner becomes a voter.
    Promote { id: NodeId },
    /// A voter or learner leaves.
    Remove { id: NodeId },
}

impl Membership {
    /// What a change is proposed against (`Input::ProposeMembership::based_on`).
    pub fn version_id(&self) -> (u64, Term) {
        (self.version, self.made_in)
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// Every member, voters first.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// The membership after `change`, or why it cannot be made. Repeating a change that is
    /// already in effect is no error.
    pub fn apply(&self, change: &MembershipChange) -> Result<Membership, String> {
        let mut next = self.clone();
        next.version = self.version + 1;
        match change {
            MembershipChange::AddLearner { id, addr } => {
                if id.0 == 0 {
                    return Err("node ids start at 1".into());
                }
                if self.voters.contains(id) {
                    return Err(format!("node {id} is already a voter"));
                }
                if let Some((other, _)) = self.addrs.iter().find(|(o, a)| *o != id && *a == addr) {
                    return Err(format!("node {other} already has address {addr}"));
                }
                next.learners.insert(*id);
                next.addrs.insert(*id, addr.clone());
            }
            MembershipChange::Promote { id } => {
                if self.voters.contains(id) {
                    return Ok(next);
                }
                if !next.learners.remove(id) {
                    return Err(format!("node {id} is not a member"));
                }
                next.voters.insert(*id);
            }
            MembershipChange::Remove { id } => {
                if !self.contains(*id) {
                    return Err(format!("node {id} is not a member"));
                }
                if self.voters.len() == 1 && self.voters.contains(id) {
                    return Err(format!("node {id} is the last voter"));
                }
                next.voters.remove(id);
                next.learners.remove(id);
                next.addrs.remove(id);
            }
        }
        Ok(next)
    }
}
