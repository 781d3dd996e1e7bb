//! raft-kv's sans-IO core: the Raft consensus state machine and the replicated KV state machine.
//! Nothing here performs I/O, reads a clock, spawns threads or draws OS randomness; the runtime
//! feeds inputs and carries out the outputs.

mod display;
pub mod glob;
pub mod kv;
pub mod log;
pub mod message;
pub mod planted;
pub mod raft;
pub mod reach;
pub mod types;

pub use raft::lease_ticks_for_drift;

pub use message::{Message, MessageBody};
pub use planted::PlantedBug;
pub use raft::{
    Config, FollowerStatus, Input, RaftNode, ReadState, Ready, Rejection, RestoredState, Role,
    SnapshotAck, SnapshotChunk, Status,
};
pub use types::{
    Entry, HardState, LogIndex, Membership, MembershipChange, NodeId, SnapshotMeta, Term,
};
