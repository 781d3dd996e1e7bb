//! Peer transport: Raft messages over TCP as length-prefixed frames (see `codec`). One outgoing
//! connection per peer, re-established with backoff; incoming connections must open with a
//! `Hello` naming this cluster, and, when the cluster has a secret, pass a mutual challenge
//! and carry a MAC on every frame (`peer_auth`). Queues are bounded and a full queue drops the
//! message: Raft tolerates loss, and a stalled peer must not stall the node.

use crate::codec::{self, Hello, PeerFrame};
use crate::metrics::Metrics;
use crate::peer_auth::{ClusterSecret, FrameMac, Role, Session, TAG_BYTES};
use crate::tls::{Io, PeerTls};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use raft_kv_core::{Message, NodeId};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};
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
    /// With a secret, peers must prove they know it and every frame is authenticated.
    pub secret: Option<ClusterSecret>,
    /// With TLS, peer connections are encrypted and both ends verify the other's certificate.
    pub tls: Option<PeerTls>,
    /// Messages sent, received and dropped, per peer.
    pub metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TransportConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportConfig")
            .field("id", &self.id)
            .field("cluster_id", &self.cluster_id)
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("peer_queue_max", &self.peer_queue_max)
            .field("faults", &self.faults.is_some())
            .field("secret", &self.secret.is_some())
            .field("tls", &self.tls.is_some())
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
            secret: None,
            tls: None,
            metrics: Arc::new(Metrics::new()),
        }
    }
}

/// How long each side of a peer connection waits for the other's next handshake frame.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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
            self.cfg.metrics.peer_dropped(m.to.0);
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
        let to = m.to.0;
        if q.try_send(m).is_err() {
            debug!(node = %self.id, "peer queue full or closed; message dropped");
            self.cfg.metrics.peer_dropped(to);
        } else {
            self.cfg.metrics.peer_sent(to);
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

type PeerConn = Framed<Box<dyn Io>, LengthDelimitedCodec>;

/// The next frame from `conn`, decoded, within the handshake timeout.
async fn handshake_frame(conn: &mut PeerConn) -> Result<PeerFrame, String> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.next()).await {
        Err(_) => Err(format!("no answer within {HANDSHAKE_TIMEOUT:?}")),
        Ok(None) => Err("the connection was closed".into()),
        Ok(Some(Err(e))) => Err(format!("bad frame: {e}")),
        Ok(Some(Ok(bytes))) => codec::decode(&bytes).map_err(|e| format!("undecodable frame: {e}")),
    }
}

/// Why a connection to a peer could not be opened.
enum CallError {
    /// No TCP connection (the peer is down or unreachable): expected, retried quietly.
    Connect(std::io::Error),
    /// The peer answered but the handshake failed: a misconfiguration or an impostor.
    Handshake(String),
}

/// Opens a connection to `peer`: the hello, and with a secret the mutual challenge. Returns
/// the connection and the MAC its frames are sealed with.
async fn call(
    cfg: &TransportConfig,
    peer: NodeId,
    addr: SocketAddr,
) -> Result<(PeerConn, Option<FrameMac>), CallError> {
    let stream = TcpStream::connect(addr).await.map_err(CallError::Connect)?;
    let _ = stream.set_nodelay(true);
    let io: Box<dyn Io> = match &cfg.tls {
        Some(tls) => tls.connect(addr, stream).await.map_err(CallError::Handshake)?,
        None => Box::new(stream),
    };
    handshake_as_caller(cfg, peer, io).await.map_err(CallError::Handshake)
}

async fn handshake_as_caller(
    cfg: &TransportConfig,
    peer: NodeId,
    io: Box<dyn Io>,
) -> Result<(PeerConn, Option<FrameMac>), String> {
    let mut conn = Framed::new(io, codec(cfg.frame_bytes_max));
    let hello = Hello {
        cluster_id: cfg.cluster_id,
        from: cfg.id,
        addr: cfg.advertise.map(|a| a.to_string()),
    };
    let Some(secret) = &cfg.secret else {
        let frame = codec::encode(&PeerFrame::Hello(hello));
        conn.send(Bytes::from(frame)).await.map_err(|e| format!("send failed: {e}"))?;
        return Ok((conn, None));
    };
    let caller_nonce: [u8; 32] = rand::random();
    let frame = codec::encode(&PeerFrame::AuthHello { hello, nonce: caller_nonce });
    conn.send(Bytes::from(frame)).await.map_err(|e| format!("send failed: {e}"))?;
    let (acceptor_nonce, proof) = match handshake_frame(&mut conn).await? {
        PeerFrame::Challenge { nonce, proof } => (nonce, proof),
        _ => return Err("the peer answered the hello with something other than a challenge".into()),
    };
    let session = Session { caller: cfg.id, acceptor: peer, caller_nonce, acceptor_nonce };
    if !session.verify(secret, Role::Acceptor, &proof) {
        return Err("the peer failed to prove it knows the cluster secret (a different --cluster-secret-file, or not that node)".into());
    }
    let frame = codec::encode(&PeerFrame::Auth { proof: session.proof(secret, Role::Caller) });
    conn.send(Bytes::from(frame)).await.map_err(|e| format!("send failed: {e}"))?;
    Ok((conn, Some(session.frames(secret))))
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
        let (mut framed, mut mac) = match call(&cfg, peer, addr).await {
            Ok(c) => c,
            Err(e) => {
                if rx.is_closed() {
                    return; // replaced (the peer's address changed)
                }
                match e {
                    CallError::Connect(e) => {
                        debug!(node = %cfg.id, peer = %peer, %addr, error = %e, "connect failed")
                    }
                    CallError::Handshake(why) => {
                        warn!(node = %cfg.id, peer = %peer, %addr, error = %why, "peer connection refused")
                    }
                }
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
        if !connected_once {
            info!(node = %cfg.id, peer = %peer, %addr, authenticated = mac.is_some(), "connected to peer");
            connected_once = true;
        }
        backoff = cfg.reconnect_backoff_min;
        'conn: loop {
            let Some(first) = rx.recv().await else { return };
            let mut next = Some(first);
            let mut written = 0;
            while let Some(m) = next.take() {
                let mut frame = codec::encode(&PeerFrame::Raft(m));
                let tag = if mac.is_some() { TAG_BYTES } else { 0 };
                if frame.len() + tag > cfg.frame_bytes_max {
                    warn!(node = %cfg.id, peer = %peer, bytes = frame.len(), "message above the frame limit dropped");
                    cfg.metrics.peer_dropped(peer.0);
                } else {
                    // Sealed only when sent: the receiver counts the frames it gets.
                    if let Some(mac) = mac.as_mut() {
                        mac.seal(&mut frame);
                    }
                    if framed.feed(Bytes::from(frame)).await.is_err() {
                        break 'conn;
                    }
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

/// Answers a caller's hello: checks the cluster, and with a secret runs the mutual challenge.
/// Returns who called and the MAC its frames are sealed with, or why it is refused.
async fn answer(
    cfg: &TransportConfig,
    conn: &mut PeerConn,
) -> Result<(Hello, Option<FrameMac>), String> {
    let (hello, caller_nonce) = match handshake_frame(conn).await? {
        PeerFrame::Hello(h) => (h, None),
        PeerFrame::AuthHello { hello, nonce } => (hello, Some(nonce)),
        _ => return Err("the connection did not start with a hello".into()),
    };
    if hello.cluster_id != cfg.cluster_id {
        return Err(format!(
            "the peer belongs to another cluster (its id {}, ours {}: a different --cluster list)",
            hello.cluster_id, cfg.cluster_id
        ));
    }
    let (secret, caller_nonce) = match (&cfg.secret, caller_nonce) {
        (None, None) => return Ok((hello, None)),
        (Some(_), None) => {
            return Err(format!(
                "node {} did not authenticate (started without --cluster-secret-file, or not a member)",
                hello.from
            ))
        }
        (None, Some(_)) => {
            return Err(format!(
                "node {} authenticates with a cluster secret and this node has none (--cluster-secret-file)",
                hello.from
            ))
        }
        (Some(secret), Some(nonce)) => (secret, nonce),
    };
    let session = Session {
        caller: hello.from,
        acceptor: cfg.id,
        caller_nonce,
        acceptor_nonce: rand::random(),
    };
    let challenge = PeerFrame::Challenge {
        nonce: session.acceptor_nonce,
        proof: session.proof(secret, Role::Acceptor),
    };
    conn.send(Bytes::from(codec::encode(&challenge)))
        .await
        .map_err(|e| format!("send failed: {e}"))?;
    match handshake_frame(conn).await? {
        PeerFrame::Auth { proof } if session.verify(secret, Role::Caller, &proof) => {
            Ok((hello, Some(session.frames(secret))))
        }
        PeerFrame::Auth { .. } => Err(format!(
            "node {} failed to prove it knows the cluster secret (a different secret, or a forged or replayed handshake)",
            hello.from
        )),
        _ => Err("the caller answered the challenge with something other than its proof".into()),
    }
}

async fn receive_loop(
    cfg: TransportConfig,
    stream: TcpStream,
    addr: SocketAddr,
    inbound: mpsc::Sender<Message>,
    peers: PeerSender,
) {
    let io: Box<dyn Io> = match &cfg.tls {
        Some(tls) => match tls.accept(stream).await {
            Ok(io) => io,
            Err(why) => {
                warn!(node = %cfg.id, %addr, error = %why, "peer connection refused");
                return;
            }
        },
        None => Box::new(stream),
    };
    let mut frames = Framed::new(io, codec(cfg.frame_bytes_max));
    let (peer, mut mac) = match answer(&cfg, &mut frames).await {
        Ok((hello, mac)) => {
            // A node that joined after this one's membership was last applied is reached at
            // the address it gives (only once it proved it is a member, with a secret).
            if let Some(a) = hello.addr.as_deref().and_then(|a| a.parse().ok()) {
                peers.learn(hello.from, a);
            }
            (hello.from, mac)
        }
        Err(why) => {
            warn!(node = %cfg.id, %addr, error = %why, "peer connection refused");
            return;
        }
    };
    while let Some(frame) = frames.next().await {
        let sealed = match frame {
            Ok(b) => b,
            Err(e) => {
                warn!(node = %cfg.id, peer = %peer, error = %e, "bad frame from peer; connection closed");
                return;
            }
        };
        let bytes = match mac.as_mut() {
            None => &sealed[..],
            Some(mac) => match mac.open(&sealed) {
                Some(b) => b,
                None => {
                    warn!(node = %cfg.id, peer = %peer, %addr, "frame failed authentication (forged, altered or replayed); connection closed");
                    return;
                }
            },
        };
        match codec::decode::<PeerFrame>(bytes) {
            Ok(PeerFrame::Raft(m)) if m.from == peer && m.to == cfg.id => {
                cfg.metrics.peer_received(peer.0);
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
