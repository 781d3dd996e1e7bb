//! Every binary encoding raft-kv writes to the network or the disk: peer frames, log entry
//! payloads, stored hard state and entries. Each starts with a format version byte, so changing
//! the encoding (bincode today) is a change to this file only. Decoding never panics and never
//! allocates more than the input can justify.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use raft_kv_core::kv::Command;
use raft_kv_core::{Message, NodeId};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Bumped whenever any encoding below changes incompatibly.
/// 2: log entries carry a membership change, peer hellos the caller's address.
/// 3: commands carry SET's options and the new string and keyspace writes.
/// 4: memberships carry a version, forwarded membership changes the version they were asked
///    against, and start-up probe answers the voters' addresses.
/// 5: hashes stored field by field (and lists, sets, sorted sets element by element): a
///    collection's key holds its metadata, its elements a column family of their own.
pub const FORMAT_VERSION: u8 = 5;

/// Decoding stops at this many bytes, whatever lengths the input claims.
pub const DECODE_LIMIT_BYTES: usize = 1 << 30;

type Cfg = Configuration<LittleEndian, Varint, Limit<DECODE_LIMIT_BYTES>>;

fn config() -> Cfg {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty input")]
    Empty,
    #[error("format version {found} is not supported (this build reads version {FORMAT_VERSION})")]
    Version { found: u8 },
    #[error("malformed data: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the value")]
    Trailing(usize),
}

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("encoding plain data into a Vec cannot fail");
    out
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::Version { found: version });
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| CodecError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

/// The first frame on a peer connection: who is calling, and for which cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub cluster_id: u64,
    pub from: NodeId,
    /// The caller's Raft address, so a node that does not know it yet can answer.
    pub addr: Option<String>,
}

/// One frame on a peer connection. (New variants go last: a variant's number is its encoding.)
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    Hello(Hello),
    Raft(Message),
    /// The first frame when the cluster has a secret (`peer_auth`): the hello and the caller's
    /// nonce.
    AuthHello {
        hello: Hello,
        nonce: [u8; 32],
    },
    /// The acceptor's answer to an `AuthHello`: its nonce and its proof.
    Challenge {
        nonce: [u8; 32],
        proof: [u8; 32],
    },
    /// The caller's proof, after it checked the acceptor's.
    Auth {
        proof: [u8; 32],
    },
}

/// The payload of a log entry: a client write and who is waiting for its result. `incarnation`
/// distinguishes runs of the same node, so a restarted node never answers a request of its
/// previous life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub origin: NodeId,
    pub incarnation: u64,
    pub request: u64,
    pub command: Command,
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_kv_core::{Entry, LogIndex, MessageBody, Term};

    #[test]
    fn round_trips_and_refuses_foreign_bytes() {
        let m = PeerFrame::Raft(Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(3),
            body: MessageBody::Heartbeat { commit: LogIndex(4), read_round: 5 },
        });
        let bytes = encode(&m);
        assert_eq!(decode::<PeerFrame>(&bytes).unwrap(), m);
        assert!(matches!(decode::<PeerFrame>(&[]), Err(CodecError::Empty)));
        assert!(matches!(decode::<PeerFrame>(&[9, 0]), Err(CodecError::Version { found: 9 })));
        assert!(decode::<PeerFrame>(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(decode::<PeerFrame>(&longer), Err(CodecError::Trailing(1))));
    }

    #[test]
    fn a_claimed_huge_length_does_not_allocate() {
        // Version byte, then an entry whose data claims ~2^60 bytes.
        let mut bytes = vec![FORMAT_VERSION, 1, 1];
        bytes.push(255);
        bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(decode::<Entry>(&bytes).is_err());
    }
}
