//! Streaming snapshots between runtimes. The core decides who needs a snapshot and when one is
//! installed; this module moves the bytes: the leader reads its state machine chunk by chunk
//! from a consistent storage view and keeps a small window of chunks in flight, resending them
//! when acknowledgements stop; the follower stores chunks aside in order and reports them to its
//! core. Memory on both sides is bounded by the chunk size times the window, plus one item.
//!
//! The snapshot travels as one stream of items, each a little-endian u32 length and the item's
//! encoding, cut into chunks of `chunk_bytes` wherever the cut falls: an item larger than a peer
//! frame (a string of up to 512 MiB, a large hash) spans as many chunks as it needs, where a
//! chunk of whole items could not be sent at all.

use crate::codec;
use crate::storage::{SnapshotItem, SnapshotReader, Storage, StorageError};
use crate::transport::PeerSender;
use bytes::{Buf, BytesMut};
use raft_kv_core::reach;
use raft_kv_core::{
    planted, Input, Message, MessageBody, NodeId, PlantedBug, RaftNode, SnapshotAck, SnapshotChunk,
    SnapshotMeta, Term,
};
use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

/// Flow control of outgoing snapshots.
#[derive(Clone, Debug)]
pub struct SnapshotTuning {
    /// Bytes of state per chunk (one Raft message each).
    pub chunk_bytes: usize,
    /// Chunks sent and not yet acknowledged, per follower.
    pub window: usize,
    /// Unacknowledged chunks are sent again after this long without progress.
    pub resend_after: Duration,
    /// A transfer that resent this many times in a row without progress is dropped; the
    /// leader's core starts a new one.
    pub resends_max: u32,
}

impl Default for SnapshotTuning {
    fn default() -> Self {
        SnapshotTuning {
            chunk_bytes: 1 << 20,
            window: 4,
            resend_after: Duration::from_secs(1),
            resends_max: 5,
        }
    }
}

/// How often a transfer logs its progress.
const PROGRESS_LOG_EVERY: Duration = Duration::from_secs(1);

struct Transfer {
    meta: SnapshotMeta,
    reader: Box<dyn SnapshotReader>,
    /// The chunk after the last one read, so each chunk knows whether it is the last.
    ahead: Option<Vec<u8>>,
    /// Framed items read and not yet cut into chunks.
    stream: BytesMut,
    next_seq: u64,
    exhausted: bool,
    /// Sent and unacknowledged: (seq, data, last).
    window: VecDeque<(u64, Vec<u8>, bool)>,
    bytes_sent: u64,
    size_hint: u64,
    last_progress: Instant,
    last_log: Instant,
    resends: u32,
    started: Instant,
}

impl Transfer {
    /// The next `chunk_bytes` of the stream (fewer at its end); None once it is all read.
    fn read(&mut self, chunk_bytes: usize) -> Result<Option<Vec<u8>>, ReadError> {
        let chunk_bytes = chunk_bytes.max(1);
        while self.stream.len() < chunk_bytes && !self.exhausted {
            let items = self.reader.next_chunk(chunk_bytes)?;
            if items.is_empty() {
                self.exhausted = true;
            }
            for item in &items {
                frame_item(&mut self.stream, item)?;
            }
        }
        if self.stream.is_empty() {
            return Ok(None);
        }
        let n = chunk_bytes.min(self.stream.len());
        Ok(Some(self.stream.split_to(n).to_vec()))
    }
}

/// The leader's outgoing transfers, one per follower at most.
#[derive(Default)]
pub struct Outgoing {
    tuning: SnapshotTuning,
    transfers: BTreeMap<NodeId, Transfer>,
}

impl Outgoing {
    pub fn new(tuning: SnapshotTuning) -> Outgoing {
        Outgoing { tuning, transfers: BTreeMap::new() }
    }

    pub fn active(&self) -> usize {
        self.transfers.len()
    }

    /// Starts streaming the state machine, which stands at `meta`, to `to`; replaces an earlier
    /// transfer to it.
    pub fn start<S: Storage>(
        &mut self,
        storage: &S,
        peers: &PeerSender,
        from: NodeId,
        term: Term,
        to: NodeId,
        meta: SnapshotMeta,
    ) -> Result<(), StorageError> {
        let reader = storage.snapshot_reader()?;
        if reader.applied() != meta.index {
            // The core asks for the state it just handed out for applying; anything else is a
            // bug in the runtime, and the core will ask again.
            warn!(node = %from, to = %to, want = %meta.index, have = %reader.applied(), "snapshot view is at another index; transfer not started");
            return Ok(());
        }
        let now = Instant::now();
        let size_hint = reader.size_hint();
        info!(node = %from, to = %to, index = %meta.index, term = %meta.term, bytes = size_hint, "snapshot transfer started");
        let mut t = Transfer {
            meta,
            reader,
            ahead: None,
            stream: BytesMut::new(),
            next_seq: 0,
            exhausted: false,
            window: VecDeque::new(),
            bytes_sent: 0,
            size_hint,
            last_progress: now,
            last_log: now,
            resends: 0,
            started: now,
        };
        t.ahead = match t.read(self.tuning.chunk_bytes) {
            Ok(ahead) => ahead,
            Err(ReadError::Storage(e)) => return Err(e),
            Err(ReadError::ItemTooLarge(bytes)) => {
                error!(node = %from, to = %to, bytes, "a snapshot item is too large to send; transfer not started");
                return Ok(());
            }
        };
        if t.ahead.is_none() {
            // An empty state machine is one empty chunk.
            t.ahead = Some(Vec::new());
        }
        self.transfers.insert(to, t);
        self.fill(peers, from, term, to)
    }

    /// Sends chunks until the window is full or the snapshot is all sent.
    fn fill(
        &mut self,
        peers: &PeerSender,
        from: NodeId,
        term: Term,
        to: NodeId,
    ) -> Result<(), StorageError> {
        let chunk_bytes = self.tuning.chunk_bytes;
        let window = self.tuning.window;
        let Some(t) = self.transfers.get_mut(&to) else { return Ok(()) };
        while t.window.len() < window {
            let Some(data) = t.ahead.take() else { break };
            t.ahead = match t.read(chunk_bytes) {
                Ok(ahead) => ahead,
                Err(ReadError::Storage(e)) => return Err(e),
                Err(ReadError::ItemTooLarge(bytes)) => {
                    error!(node = %from, to = %to, bytes, "a snapshot item is too large to send; transfer dropped");
                    self.transfers.remove(&to);
                    return Ok(());
                }
            };
            let last = t.ahead.is_none();
            let seq = t.next_seq;
            t.next_seq += 1;
            t.bytes_sent += data.len() as u64;
            send_chunk(peers, from, term, to, t.meta, seq, data.clone(), last);
            t.window.push_back((seq, data, last));
        }
        let now = Instant::now();
        if now.duration_since(t.last_log) >= PROGRESS_LOG_EVERY {
            t.last_log = now;
            info!(node = %from, to = %to, index = %t.meta.index, sent_bytes = t.bytes_sent, total_bytes = t.size_hint, "snapshot transfer in progress");
        }
        Ok(())
    }

    /// A follower acknowledged chunks. Some(bytes sent) when it has the whole snapshot.
    pub fn on_ack(
        &mut self,
        peers: &PeerSender,
        term: Term,
        ack: SnapshotAck,
    ) -> Result<Option<u64>, StorageError> {
        let from = peers.id();
        let Some(t) = self.transfers.get_mut(&ack.from) else { return Ok(None) };
        if t.meta != ack.meta {
            return Ok(None); // about an earlier transfer
        }
        if ack.finished {
            let t = self.transfers.remove(&ack.from).expect("checked");
            info!(node = %from, to = %ack.from, index = %t.meta.index, sent_bytes = t.bytes_sent, elapsed_ms = t.started.elapsed().as_millis() as u64, "snapshot transfer finished");
            return Ok(Some(t.bytes_sent));
        }
        while t.window.front().is_some_and(|(seq, _, _)| *seq < ack.next_seq) {
            t.window.pop_front();
            t.last_progress = Instant::now();
            t.resends = 0;
        }
        self.fill(peers, from, term, ack.from).map(|()| None)
    }

    /// Resends stalled windows and drops transfers that stopped making progress.
    pub fn on_tick(&mut self, peers: &PeerSender, term: Term) {
        let now = Instant::now();
        let from = peers.id();
        let mut dropped = Vec::new();
        for (to, t) in self.transfers.iter_mut() {
            if now.duration_since(t.last_progress) < self.tuning.resend_after {
                continue;
            }
            if t.resends >= self.tuning.resends_max {
                dropped.push(*to);
                continue;
            }
            t.resends += 1;
            t.last_progress = now;
            debug!(node = %from, to = %to, chunks = t.window.len(), "resending snapshot chunks");
            for (seq, data, last) in &t.window {
                send_chunk(peers, from, term, *to, t.meta, *seq, data.clone(), *last);
            }
        }
        for to in dropped {
            warn!(node = %from, to = %to, "snapshot transfer stopped making progress; dropped");
            self.transfers.remove(&to);
        }
    }

    /// Leadership was lost: every transfer stops.
    pub fn clear(&mut self) {
        self.transfers.clear();
    }
}

#[allow(clippy::too_many_arguments)]
fn send_chunk(
    peers: &PeerSender,
    from: NodeId,
    term: Term,
    to: NodeId,
    meta: SnapshotMeta,
    seq: u64,
    data: Vec<u8>,
    last: bool,
) {
    let body = MessageBody::SnapshotChunk { meta, seq, data, last };
    peers.send(Message { from, to, term, body });
}

enum ReadError {
    Storage(StorageError),
    /// An item's encoding is over what a receiver decodes (`codec::DECODE_LIMIT_BYTES`).
    ItemTooLarge(usize),
}

impl From<StorageError> for ReadError {
    fn from(e: StorageError) -> Self {
        ReadError::Storage(e)
    }
}

/// Appends `item` to a snapshot stream: its length, then its encoding.
fn frame_item(stream: &mut BytesMut, item: &SnapshotItem) -> Result<(), ReadError> {
    let bytes = codec::encode(item);
    let len = u32::try_from(bytes.len())
        .ok()
        .filter(|l| *l as usize <= codec::DECODE_LIMIT_BYTES)
        .ok_or(ReadError::ItemTooLarge(bytes.len()))?;
    stream.extend_from_slice(&len.to_le_bytes());
    stream.extend_from_slice(&bytes);
    Ok(())
}

/// Items framed as a snapshot stream carries them (for a backup's chunks); an error names an
/// item too large to frame.
pub fn frame_items(items: &[SnapshotItem]) -> Result<BytesMut, String> {
    let mut out = BytesMut::new();
    for item in items {
        frame_item(&mut out, item).map_err(|e| match e {
            ReadError::ItemTooLarge(n) => format!("an item of {n} bytes is too large"),
            ReadError::Storage(e) => e.to_string(),
        })?;
    }
    Ok(out)
}

/// Takes every whole item off the front of a snapshot stream, leaving a partial one.
pub fn unframe_items(stream: &mut BytesMut) -> Result<Vec<SnapshotItem>, String> {
    let mut items = Vec::new();
    while stream.len() >= 4 {
        let len = u32::from_le_bytes([stream[0], stream[1], stream[2], stream[3]]) as usize;
        if len > codec::DECODE_LIMIT_BYTES {
            return Err(format!("an item claims {len} bytes"));
        }
        if stream.len() < 4 + len {
            break;
        }
        stream.advance(4);
        let bytes = stream.split_to(len);
        items.push(codec::decode(&bytes).map_err(|e| e.to_string())?);
    }
    Ok(items)
}

/// The follower's side: chunks of one snapshot, stored in order.
#[derive(Default)]
pub struct Incoming {
    current: Option<(NodeId, SnapshotMeta, u64)>,
    /// The stream received after the last whole item: the start of one that spans chunks.
    partial: BytesMut,
    /// Bytes of the transfer staged so far; after its last chunk, of the snapshot received
    /// (`take_received_bytes`, for the metrics).
    received: u64,
}

impl Incoming {
    /// The bytes of the last snapshot received (0 once taken).
    pub fn take_received_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.received)
    }

    /// Stores `chunk` if it is the next one expected, and tells the core. True if it completed
    /// a snapshot: the staging must not change until the core's answer (an install or not) is
    /// handled.
    pub fn on_chunk<S: Storage>(
        &mut self,
        storage: &mut S,
        raft: &mut RaftNode,
        chunk: SnapshotChunk,
    ) -> Result<bool, StorageError> {
        let SnapshotChunk { from, meta, seq, data, last } = chunk;
        let expected = match self.current {
            // A resent first chunk of the transfer under way is a duplicate, not a restart.
            Some((f, m, next)) if f == from && m == meta => next,
            Some(_) if seq == 0 => {
                // Another leader, or another position: what was staged is dropped.
                reach::hit(reach::Path::SnapshotStagingDropped);
                0
            }
            _ if seq == 0 => 0,
            _ => return Ok(false), // a transfer this node did not see start: wait for a restart
        };
        if seq != expected {
            if seq < expected {
                // A resent chunk already stored: the acknowledgement was lost.
                let next_seq = expected;
                raft.step(Input::SnapshotChunkStored { from, meta, next_seq });
            }
            return Ok(false);
        }
        if seq == 0 {
            self.partial.clear();
            self.received = 0;
        }
        self.received += data.len() as u64;
        self.partial.extend_from_slice(&data);
        let items = match unframe_items(&mut self.partial) {
            Ok(items) if !last || self.partial.is_empty() => items,
            Ok(_) | Err(_) => {
                // The leader starts the transfer over once acknowledgements stop.
                warn!(node = %raft.id(), from = %from, seq, "snapshot stream cannot be decoded; transfer abandoned");
                self.current = None;
                self.partial.clear();
                return Ok(false);
            }
        };
        let items = if planted::active(raft.config().planted, PlantedBug::SnapshotDropsSessions) {
            items.into_iter().filter(|i| matches!(i, SnapshotItem::Kv(..))).collect()
        } else {
            items
        };
        storage.stage_snapshot(seq == 0, &items)?;
        let next_seq = seq + 1;
        self.current = Some((from, meta, next_seq));
        raft.step(Input::SnapshotChunkStored { from, meta, next_seq });
        if last {
            self.current = None;
            info!(node = %raft.id(), from = %from, index = %meta.index, chunks = next_seq, "snapshot received");
            raft.step(Input::SnapshotReceived { from, meta });
        }
        Ok(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_kv_core::kv::Session;
    use raft_kv_core::Membership;

    fn items() -> Vec<SnapshotItem> {
        vec![
            SnapshotItem::Membership(Membership::default()),
            SnapshotItem::Kv(b"small".to_vec(), b"v".to_vec()),
            // Larger than every chunk below: it spans many of them.
            SnapshotItem::Kv(b"big".to_vec(), (0..50_000u32).map(|i| i as u8).collect()),
            SnapshotItem::Session(7, Session { incarnation: 3, last_request: 9 }),
            SnapshotItem::Kv(Vec::new(), Vec::new()),
        ]
    }

    #[test]
    fn items_cut_into_chunks_anywhere_come_out_whole_and_in_order() {
        let mut stream = BytesMut::new();
        for item in &items() {
            assert!(frame_item(&mut stream, item).is_ok());
        }
        let stream = stream.freeze();
        for chunk in [1, 3, 4, 5, 7, 40, 300, 4096, 1 << 20] {
            let mut partial = BytesMut::new();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                partial.extend_from_slice(piece);
                out.extend(unframe_items(&mut partial).expect("decodes"));
            }
            assert!(partial.is_empty(), "chunks of {chunk}: bytes left over");
            assert_eq!(out, items(), "chunks of {chunk}");
        }
    }

    #[test]
    fn a_stream_claiming_an_oversized_or_malformed_item_is_refused() {
        let mut huge = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        assert!(unframe_items(&mut huge).is_err(), "a length past the decode limit");
        let mut garbage = BytesMut::from(&3u32.to_le_bytes()[..]);
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(unframe_items(&mut garbage).is_err(), "bytes that are no item");
        let mut short = BytesMut::from(&10u32.to_le_bytes()[..]);
        short.extend_from_slice(&[1, 2]);
        assert_eq!(unframe_items(&mut short).map(|i| i.len()), Ok(0), "waits for the rest");
    }
}
