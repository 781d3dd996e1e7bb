//! Messages exchanged between Raft nodes. The runtime carries them over the network; the core
//! only produces and consumes them.

use crate::types::{Entry, LogIndex, NodeId, SnapshotMeta, Term};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term, except for `PreVote` (the term it would campaign in) and a granted
    /// `PreVoteResponse` (the term of the request it grants).
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Pre-vote (§9.6 of Ongaro's thesis): would you vote for me in `term`? Changes no state.
    PreVote {
        last_log_index: LogIndex,
        last_log_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// RequestVote RPC (§5.2, §5.4.1). `transfer`: the candidate campaigns because the leader
    /// handed leadership to it (thesis §3.10), so voters that still hear from that leader vote
    /// anyway.
    RequestVote {
        last_log_index: LogIndex,
        last_log_term: Term,
        transfer: bool,
    },
    RequestVoteResponse {
        granted: bool,
        /// The voter's wall clock: a new leader has a majority's clocks before its first entry
        /// (`RaftNode::cluster_time_ms`).
        clock_ms: u64,
    },
    /// AppendEntries RPC (§5.3).
    AppendEntries {
        prev_log_index: LogIndex,
        prev_log_term: Term,
        entries: Vec<Entry>,
        leader_commit: LogIndex,
    },
    /// On success `index` is the last index known to match the leader's log. On rejection it
    /// echoes the rejected `prev_log_index` and `hint` is where the leader should retry
    /// (fast backtracking, §5.3 "the follower can include the term of the conflicting entry").
    AppendEntriesResponse {
        success: bool,
        index: LogIndex,
        hint: LogIndex,
        hint_term: Term,
    },
    /// Leader liveness and commit propagation; `read_round` confirms leadership for ReadIndex.
    Heartbeat {
        commit: LogIndex,
        read_round: u64,
    },
    HeartbeatResponse {
        read_round: u64,
        last_log_index: LogIndex,
        /// The follower's wall clock (`Input::Clock`), from which the leader takes the time it
        /// stamps entries with (`RaftNode::cluster_time_ms`).
        clock_ms: u64,
    },
    /// A follower forwards client proposals to the leader it knows, each with the follower's
    /// id of it (told back if the leader refuses it: `ProposalsRefused`).
    Propose {
        proposals: Vec<(u64, Vec<u8>)>,
    },
    /// A follower asks the leader for a read index (§6.4 of Ongaro's thesis).
    ReadIndex {
        ids: Vec<u64>,
    },
    ReadIndexResponse {
        ids: Vec<u64>,
        index: LogIndex,
    },
    /// Chunk `seq` (from 0) of the leader's state machine at `meta`, for a follower whose next
    /// entries the leader has compacted away. The leader's runtime reads and sends the chunks;
    /// `data` is opaque to consensus.
    SnapshotChunk {
        meta: SnapshotMeta,
        seq: u64,
        data: Vec<u8>,
        last: bool,
    },
    /// The follower stored the chunks of `meta` before `next_seq`. `finished`: it needs no more
    /// of this snapshot (installed, or already past it).
    SnapshotAck {
        meta: SnapshotMeta,
        next_seq: u64,
        finished: bool,
    },
    /// A follower forwards a membership change to the leader.
    ProposeMembership {
        id: u64,
        change: crate::MembershipChange,
        data: Vec<u8>,
        based_on: (u64, Term),
    },
    /// The leader refused the forwarded membership change `id` (`pending`: another one is
    /// uncommitted; else it does not apply to the membership).
    MembershipRefused {
        id: u64,
        pending: bool,
    },
    /// A follower asks the leader to hand leadership to `to`.
    TransferLeader {
        to: NodeId,
    },
    /// The leader tells a caught-up follower to start an election now (thesis §3.10).
    TimeoutNow,
    /// A node that may have lost its disk (`Config::check_empty_start`) asks a voter where its
    /// log ends and who the voters are. `nonce` is this run's, so an answer to a probe sent
    /// before a restart is not taken for a new one. The answer carries the voter's term.
    StateProbe {
        nonce: u64,
    },
    StateProbeResponse {
        nonce: u64,
        last_index: LogIndex,
        last_term: Term,
        voters: Vec<NodeId>,
        /// The addresses of those voters that the answering node's membership holds: a node
        /// that restarted blank knows only the voters it was started with, and must reach
        /// every current one to finish its probe.
        addrs: Vec<(NodeId, String)>,
    },
    /// The leader did not append the forwarded proposals `ids`: it holds too much uncommitted
    /// (`Rejection::Busy`).
    ProposalsRefused {
        ids: Vec<u64>,
    },
}

impl MessageBody {
    /// A successful AppendEntries answer: the log matches the leader's up to `index`.
    pub fn append_accepted(index: LogIndex) -> MessageBody {
        MessageBody::AppendEntriesResponse {
            success: true,
            index,
            hint: LogIndex(0),
            hint_term: Term(0),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            MessageBody::PreVote { .. } => "PreVote",
            MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
            MessageBody::RequestVote { .. } => "RequestVote",
            MessageBody::RequestVoteResponse { .. } => "RequestVoteResponse",
            MessageBody::AppendEntries { .. } => "AppendEntries",
            MessageBody::AppendEntriesResponse { .. } => "AppendEntriesResponse",
            MessageBody::Heartbeat { .. } => "Heartbeat",
            MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
            MessageBody::Propose { .. } => "Propose",
            MessageBody::ReadIndex { .. } => "ReadIndex",
            MessageBody::ReadIndexResponse { .. } => "ReadIndexResponse",
            MessageBody::SnapshotChunk { .. } => "SnapshotChunk",
            MessageBody::SnapshotAck { .. } => "SnapshotAck",
            MessageBody::ProposeMembership { .. } => "ProposeMembership",
            MessageBody::MembershipRefused { .. } => "MembershipRefused",
            MessageBody::TransferLeader { .. } => "TransferLeader",
            MessageBody::TimeoutNow => "TimeoutNow",
            MessageBody::StateProbe { .. } => "StateProbe",
            MessageBody::StateProbeResponse { .. } => "StateProbeResponse",
            MessageBody::ProposalsRefused { .. } => "ProposalsRefused",
        }
    }
}
