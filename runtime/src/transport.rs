//! Peer transport: Raft messages over TCP as length-prefixed frames (see `codec`). One outgoing
//! connection per peer, re-established with backoff; incoming connections must open with a
//! `Hello` naming this cluster. Queues are bounded and a full queue drops the message: Raft
//! tolerates loss, and a stalled peer must not stall the node.

use crate::codec::{self, Hello, PeerFrame};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use raft_kv_core::{Message, NodeId};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};
use tracing::{debug, info, warn};

/// What happens to one outgoing message. Only the simulation's fault layer chooses anything but
/// `Deliver`: simulated TCP never loses, duplicates or reorders, so message-level faults are
/// injected here, above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Deliver,
    Drop,
    /// Queued after this long; messages delayed by different amounts overtake each other.
    Delay(Duration),
    /// Delivered now and once more after this long.
    Duplicate(Duration),
}

/// A fault layer between the node and its peer queues (simulation only).
pub trait MessageFaults: Send + Sync {
    fn fate(&self, m: &Message) -> Fate;
}

#[derive(Clone)]
pub struct TransportConfig {
    pub id: NodeId,
    pub cluster_id: u64,
    /// Largest frame sent or accepted.
    pub frame_bytes_max: usize,
    /// Messages queued per peer while its connection is busy or down.
    pub peer_queue_max: usize,
    pub reconnect_backoff_min: Duration,
    pub reconnect_backoff_max: Duration,
    /// None in production.
    pub faults: Option<Arc<dyn MessageFaults>>,
    /// The address peers reach this node at, told in the hello.
    pub advertise: Option<SocketAddr>,
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("id", &self.id)
            .field("cluster_id", &self.cluster_id)
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("peer_queue_max", &self.peer_queue_max)
            .field("faults", &self.faults.is_some())
            .finish_non_exhaustive()
    }
}

impl TransportConfig {
    pub fn new(id: NodeId, cluster_id: u64) -> Self {
        TransportConfig {
            id,
            cluster_id,
            frame_bytes_max: 64 << 20,
            peer_queue_max: 4096,
            reconnect_backoff_min: Duration::from_millis(20),
            reconnect_backoff_max: Duration::from_secs(1),
            faults: None,
            advertise: None,
        }
    }
}

/// Messages written per flush on one connection.
const FRAMES_PER_FLUSH_MAX: usize = 256;

/// The node's handle for sending: never blocks.
#[derive(Clone)]
pub struct PeerSender {
    id: NodeId,
    peers: Arc<Mutex<Peers>>,
    faults: Option<Arc<dyn MessageFaults>>,
    cfg: TransportConfig,
}

#[derive(Default)]
struct Peers {
    queues: BTreeMap<NodeId, mpsc::Sender<Message>>,
    addrs: BTreeMap<NodeId, SocketAddr>,
}

impl PeerSender {
    /// The node these messages come from.
    pub fn id(&self) -> NodeId {
        self.id
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, Peers> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Follows a membership change: new members get a sender task and a member whose address
    /// changed is reconnected. Removed members keep theirs: this node's applied membership
    /// may lag the cluster's (a member it thinks removed may be back, and lead), and the core
    /// sends nothing to a node it does not replicate to anyway.
    pub fn set_peers(&self, members: &BTreeMap<NodeId, SocketAddr>) {
        let mut p = self.peers();
        for (&peer, &addr) in members {
            self.add(&mut p, peer, addr);
        }
    }

    /// A peer introduced itself with its address.
    fn learn(&self, peer: NodeId, addr: SocketAddr) {
        let mut p = self.peers();
        if !p.queues.contains_key(&peer) {
            self.add(&mut p, peer, addr);
        }
    }

    fn add(&self, p: &mut Peers, peer: NodeId, addr: SocketAddr) {
        if peer == self.id || p.addrs.get(&peer) == Some(&addr) {
            return;
        }
        info!(node = %self.id, peer = %peer, %addr, "peer added");
        let (tx, rx) = mpsc::channel(self.cfg.peer_queue_max);
        p.queues.insert(peer, tx);
        p.addrs.insert(peer, addr);
        tokio::spawn(send_loop(self.cfg.clone(), peer, addr, rx));
    }

    pub fn send(&self, m: Message) {
        let Some(q) = self.peers().queues.get(&m.to).cloned() else {
            warn!(node = %self.id, to = %m.to, "message for an unknown peer dropped");
            return;
        };
        let q = &q;
        let fate = self.faults.as_ref().map_or(Fate::Deliver, |f| f.fate(&m));
        match fate {
            Fate::Deliver => self.enqueue(q, m),
            Fate::Drop => {}
            Fate::Delay(after) => Self::enqueue_later(self.id, q.clone(), m, after),
            Fate::Duplicate(after) => {
                Self::enqueue_later(self.id, q.clone(), m.clone(), after);
                self.enqueue(q, m);
            }
        }
    }

    fn enqueue(&self, q: &mpsc::Sender<Message>, m: Message) {
        if q.try_send(m).is_err() {
            debug!(node = %self.id, "peer queue full or closed; message dropped");
        }
    }

    fn enqueue_later(id: NodeId, q: mpsc::Sender<Message>, m: Message, after: Duration) {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            if q.try_send(m).is_err() {
                debug!(node = %id, "peer queue full or closed; delayed message dropped");
            }
        });
    }
}

fn codec(frame_bytes_max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(frame_bytes_max).new_codec()
}

/// Starts the listener and one sender task per peer; inbound messages go to `inbound`.
pub fn start(
    cfg: TransportConfig,
    listener: TcpListener,
    peers: &BTreeMap<NodeId, SocketAddr>,
    inbound: mpsc::Sender<Message>,
) -> PeerSender {
    let sender = PeerSender {
        id: cfg.id,
        peers: Arc::new(Mutex::new(Peers::default())),
        faults: cfg.faults.clone(),
        cfg: cfg.clone(),
    };
    sender.set_peers(peers);
    tokio::spawn(accept_loop(cfg, listener, inbound, sender.clone()));
    sender
}

async fn send_loop(
    cfg: TransportConfig,
    peer: NodeId,
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Message>,
) {
    let mut backoff = cfg.reconnect_backoff_min;
    let mut connected_once = false;
    loop {
        let stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(e) => {
                if rx.is_closed() {
                    return; // replaced (the peer's address changed)
                }
                debug!(node = %cfg.id, peer = %peer, %addr, error = %e, "connect failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(cfg.reconnect_backoff_max);
                // Messages queued while the peer is down are stale; keep the freshest.
                while rx.len() > cfg.peer_queue_max / 2 {
                    if rx.try_recv().is_err() {
                        break;
                    }
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut framed = FramedWrite::new(stream, codec(cfg.frame_bytes_max));
        let hello = codec::encode(&PeerFrame::Hello(Hello {
            cluster_id: cfg.cluster_id,
            from: cfg.id,
            addr: cfg.advertise.map(|a| a.to_string()),
        }));
        if framed.send(Bytes::from(hello)).await.is_err() {
            continue;
        }
        if !connected_once {
            info!(node = %cfg.id, peer = %peer, %addr, "connected to peer");
            connected_once = true;
        }
        backoff = cfg.reconnect_backoff_min;
        'conn: loop {
            let Some(first) = rx.recv().await else { return };
            let mut next = Some(first);
            let mut written = 0;
            while let Some(m) = next.take() {
                let frame = codec::encode(&PeerFrame::Raft(m));
                if frame.len() > cfg.frame_bytes_max {
                    warn!(node = %cfg.id, peer = %peer, bytes = frame.len(), "message above the frame limit dropped");
                } else if framed.feed(Bytes::from(frame)).await.is_err() {
                    break 'conn;
                }
                written += 1;
                if written < FRAMES_PER_FLUSH_MAX {
                    next = rx.try_recv().ok();
                }
            }
            if SinkExt::<Bytes>::flush(&mut framed).await.is_err() {
                break 'conn;
            }
        }
        debug!(node = %cfg.id, peer = %peer, "peer connection lost; reconnecting");
    }
}

async fn accept_loop(
    cfg: TransportConfig,
    listener: TcpListener,
    inbound: mpsc::Sender<Message>,
    peers: PeerSender,
) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let _ = stream.set_nodelay(true);
                tokio::spawn(receive_loop(
                    cfg.clone(),
                    stream,
                    from,
                    inbound.clone(),
                    peers.clone(),
                ));
            }
            Err(e) => {
                warn!(node = %cfg.id, error = %e, "accepting a peer connection failed");
                tokio::time::sleep(cfg.reconnect_backoff_min).await;
            }
        }
    }
}

async fn receive_loop(
    cfg: TransportConfig,
    stream: TcpStream,
    addr: SocketAddr,
    inbound: mpsc::Sender<Message>,
    peers: PeerSender,
) {
    let mut frames = FramedRead::new(stream, codec(cfg.frame_bytes_max));
    let peer = match frames.next().await {
        Some(Ok(bytes)) => match codec::decode::<PeerFrame>(&bytes) {
            Ok(PeerFrame::Hello(h)) if h.cluster_id == cfg.cluster_id => {
                // A node that joined after this one's membership was last applied is reached
                // at the address it gives.
                if let Some(a) = h.addr.as_deref().and_then(|a| a.parse().ok()) {
                    peers.learn(h.from, a);
                }
                h.from
            }
            Ok(PeerFrame::Hello(h)) => {
                warn!(node = %cfg.id, %addr, their_cluster = h.cluster_id, our_cluster = cfg.cluster_id,
                    "peer belongs to another cluster (different --cluster list); connection refused");
                return;
            }
            Ok(_) | Err(_) => {
                warn!(node = %cfg.id, %addr, "peer connection did not start with a valid hello; closed");
                return;
            }
        },
        _ => return,
    };
    while let Some(frame) = frames.next().await {
        let bytes = match frame {
            Ok(b) => b,
            Err(e) => {
                warn!(node = %cfg.id, peer = %peer, error = %e, "bad frame from peer; connection closed");
                return;
            }
        };
        match codec::decode::<PeerFrame>(&bytes) {
            Ok(PeerFrame::Raft(m)) if m.from == peer && m.to == cfg.id => {
                if inbound.send(m).await.is_err() {
                    return;
                }
            }
            Ok(_) => {
                warn!(node = %cfg.id, peer = %peer, "unexpected frame from peer; connection closed");
                return;
            }
            Err(e) => {
                warn!(node = %cfg.id, peer = %peer, error = %e, "undecodable frame from peer; connection closed");
                return;
            }
        }
    }
}
