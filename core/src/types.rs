//! Newtypes for the Raft vocabulary (node ids, terms, log indexes) and the log entry itself.
//! Pure data: no behaviour beyond ordering and display.

use serde::{Deserialize, Serialize};
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
}

impl Entry {
    /// Bytes this entry adds to a message or batch, for size limits.
    pub fn size_bytes(&self) -> usize {
        self.data.len() + 24
    }
}

/// What must survive a crash besides the log: the current term and the vote cast in it (§5.1,
/// Figure 2 "persistent state on all servers").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub voted_for: Option<NodeId>,
}

/// The point a snapshot of the state machine was taken at: it holds every entry up to `index`,
/// whose term is `term`. The log before it may be compacted away.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct SnapshotMeta {
    pub index: LogIndex,
    pub term: Term,
}
