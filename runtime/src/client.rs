//! Client connections: the Redis port. Each connection has a reader that parses pipelined
//! requests and a writer that sends the replies in request order, batching every reply that is
//! ready into one write. Both sides are bounded.
//!
//! Commands of one connection take effect in order, as in Redis: a run of writes is submitted
//! together (the log keeps their order) and so is a run of reads, but a read is submitted only
//! once every earlier write of the connection is answered (applied), and a write only once
//! every earlier read is answered. So `SET k 1; GET k; SET k 2` pipelined reads 1, never 2.

use crate::command::{self, ClientCommand, ConnectionCommand, ReadCommand, Reply, Request};
use crate::metrics::Metrics;
use crate::node::{ClientRequest, OutputBudget, RequestKind};
use crate::resp::{self, RequestLimits};
use bytes::{Bytes, BytesMut};
use raft_kv_core::kv::{Command, Query, TxOp};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::{debug, warn};

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub limits: RequestLimits,
    pub clients_max: usize,
    /// Requests of one connection whose replies are not yet written.
    pub pipeline_depth_max: usize,
    /// A deliberate bug for the simulation; ignored outside simulation builds.
    pub planted: Option<raft_kv_core::PlantedBug>,
    /// `--requirepass`: clients must AUTH (or HELLO ... AUTH) before anything else.
    pub requirepass: Option<String>,
    /// Redis's protected mode: without a password, only clients on the loopback interface
    /// are served (`refused_by_protected_mode`).
    pub protected_mode: bool,
    /// Bytes of requests (their arguments) handed to the node and not yet answered, over all
    /// connections; a request past it is answered BUSY at once.
    pub pending_request_bytes_max: usize,
    /// With TLS, clients connect with it (`--tls-cert-file` ...).
    pub tls: Option<crate::tls::ClientTls>,
    /// Bytes of replies a connection gathers per write, and may have waiting for its writer:
    /// past it the node holds the connection's reads back (`write_replies`, `OutputBudget`).
    pub output_bytes_max: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            limits: RequestLimits::default(),
            clients_max: 10_000,
            pipeline_depth_max: 1024,
            planted: None,
            requirepass: None,
            protected_mode: false,
            pending_request_bytes_max: 256 << 20,
            tls: None,
            output_bytes_max: 64 << 20,
        }
    }
}

/// What a client refused by protected mode reads before the connection closes: Redis's
/// message, with the remedies raft-kv has.
pub const PROTECTED_MODE_DENIED: &str = "-DENIED raft-kv is running in protected mode because protected mode is enabled and no password is set for the default user. In this mode connections are only accepted from the loopback interface. If you want to connect from external computers, you may adopt one of the following solutions: 1) Set up an authentication password for the default user: restart every node with the same '--requirepass PASSWORD'. 2) If you are sure the node is not reachable from the internet, restart it with the '--protected-mode no' option. NOTE: You only need to do one of the above things in order for the server to start accepting connections from the outside.\r\n";

/// Whether a client from `peer` is refused: protected mode is on, no password is set, and the
/// client is not on the loopback interface (an IPv4 address mapped into IPv6 counts as IPv4).
pub fn refused_by_protected_mode(cfg: &ClientConfig, peer: std::net::IpAddr) -> bool {
    cfg.protected_mode && cfg.requirepass.is_none() && !peer.to_canonical().is_loopback()
}

/// What the metrics note of a command: its name (a known command's, else `other`), when it
/// was parsed, and whether it was a write (`raftkv_proposals_failed_total`).
struct Stamp {
    name: &'static str,
    began: Instant,
    write: bool,
    /// A read that looks a key up (INFO's keyspace_hits and keyspace_misses).
    lookup: bool,
    /// The arguments and the client's name (CLIENT SETNAME) as the command ended, for
    /// SLOWLOG (None while it is off).
    args: Option<Vec<Bytes>>,
    client_name: Option<Bytes>,
}

/// The reads INFO counts as key lookups: a nil (or empty) answer is a miss.
const LOOKUPS: &[&str] = &[
    "get",
    "getrange",
    "strlen",
    "mget",
    "hget",
    "hmget",
    "hgetall",
    "hexists",
    "lindex",
    "lrange",
    "llen",
    "smembers",
    "sismember",
    "scard",
    "zscore",
    "zrange",
    "zcard",
    "exists",
    "type",
];

/// A reply to write, with the protocol the connection had chosen by then and the command's
/// stamp (None: no command, e.g. a protocol error).
type Queued = (Pending, u8, Option<Stamp>);

enum Pending {
    Ready(Reply),
    /// Handed to the node; the permit holds the request's bytes until the reply comes.
    Waiting(oneshot::Receiver<Reply>, Option<OwnedSemaphorePermit>),
}

/// The node's budget of pending request bytes (`ClientConfig::pending_request_bytes_max`),
/// shared by every connection.
#[derive(Clone)]
struct PendingBytes {
    permits: Arc<Semaphore>,
    max: usize,
}

impl PendingBytes {
    fn new(max: usize) -> PendingBytes {
        let max = max.clamp(1, u32::MAX as usize);
        PendingBytes { permits: Arc::new(Semaphore::new(max)), max }
    }

    /// Holds `bytes` (at most the whole budget, so any single request can pass alone); None if
    /// they are not free now.
    fn try_hold(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let n = bytes.clamp(1, self.max) as u32;
        self.permits.clone().try_acquire_many_owned(n).ok()
    }
}

/// Accepts clients, at most as many at once as `slots` has permits (`clients_max`).
pub async fn accept_loop(
    listener: TcpListener,
    node: mpsc::Sender<ClientRequest>,
    cfg: ClientConfig,
    slots: Arc<Semaphore>,
    metrics: Arc<Metrics>,
) {
    let mut next_conn: u64 = 0;
    let pending_bytes = PendingBytes::new(cfg.pending_request_bytes_max);
    let registry = Registry::default();
    loop {
        let (mut stream, addr) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "accepting a client failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if refused_by_protected_mode(&cfg, addr.ip()) {
            debug!(%addr, "client refused: protected mode");
            metrics.client_connections_rejected.inc();
            let _ = stream.write_all(PROTECTED_MODE_DENIED.as_bytes()).await;
            let _ = stream.flush().await;
            continue;
        }
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            metrics.client_connections_rejected.inc();
            let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
            let _ = stream.flush().await;
            continue;
        };
        let node = node.clone();
        let cfg = cfg.clone();
        next_conn += 1;
        let conn = next_conn;
        let laddr = stream.local_addr().ok();
        let entry = ClientEntry { addr, laddr, name: None, since: Instant::now(), protocol: 2 };
        registry.lock().expect("not poisoned").insert(conn, entry);
        let registry = registry.clone();
        let pending_bytes = pending_bytes.clone();
        let metrics = metrics.clone();
        metrics.client_connections.inc();
        metrics.client_connections_total.inc();
        // Without TCP_NODELAY a pipelining client waits on Nagle's algorithm for every reply
        // batch.
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let m = metrics.clone();
            match cfg.tls.clone() {
                None => serve(stream, node, cfg, conn, registry.clone(), pending_bytes, m).await,
                Some(tls) => match tls.accept(stream).await {
                    Ok(tls) => {
                        serve(tls, node, cfg, conn, registry.clone(), pending_bytes, m).await
                    }
                    Err(why) => debug!(%addr, error = %why, "client refused"),
                },
            }
            metrics.client_connections.dec();
            registry.lock().expect("not poisoned").remove(&conn);
            drop(permit);
            debug!(%addr, "client disconnected");
        });
    }
}

/// The node's client connections, for CLIENT LIST and CLIENT INFO.
type Registry = Arc<Mutex<BTreeMap<u64, ClientEntry>>>;

struct ClientEntry {
    addr: SocketAddr,
    laddr: Option<SocketAddr>,
    name: Option<Bytes>,
    since: Instant,
    protocol: u8,
}

impl ClientEntry {
    /// One line of CLIENT LIST, in Redis's field=value form.
    fn line(&self, id: u64) -> String {
        let name = self.name.as_ref().map(|n| String::from_utf8_lossy(n).into_owned());
        let laddr = self.laddr.map(|a| a.to_string()).unwrap_or_default();
        format!(
            "id={id} addr={} laddr={laddr} fd=-1 name={} age={} idle=0 flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 user=default redir=-1 resp={}\n",
            self.addr,
            name.unwrap_or_default(),
            self.since.elapsed().as_secs(),
            self.protocol
        )
    }
}

/// HELLO's reply: who this server is.
fn hello_reply(conn: u64, protocol: u8) -> Reply {
    let s = |v: &str| Reply::Bulk(Bytes::from(v.to_string()));
    Reply::Map(vec![
        (s("server"), s("redis")),
        (s("version"), s("7.0.0")),
        (s("proto"), Reply::Integer(protocol as i64)),
        (s("id"), Reply::Integer(conn as i64)),
        (s("mode"), s("standalone")),
        (s("role"), s("master")),
        (s("modules"), Reply::Array(Vec::new())),
    ])
}

const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Checks AUTH's or HELLO AUTH's credentials against `--requirepass`.
fn check_auth(
    requirepass: &Option<String>,
    user: Option<&[u8]>,
    password: &[u8],
) -> Result<(), Reply> {
    if user.is_some_and(|u| u != b"default") {
        return Err(Reply::error(WRONGPASS));
    }
    let Some(expected) = requirepass else {
        // Without a password the default user takes any (Redis's `nopass`); only the
        // one-argument form is an error.
        return match user {
            Some(_) => Ok(()),
            None => Err(Reply::error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")),
        };
    };
    if password != expected.as_bytes() {
        return Err(Reply::error(WRONGPASS));
    }
    Ok(())
}

/// Commands queued between MULTI and EXEC.
#[derive(Default)]
struct Transaction {
    ops: Vec<TxOp>,
    /// Bytes of keys and values queued (`Command::size_bytes`), bounded like a request.
    bytes: usize,
    /// A command was refused while queueing: EXEC will discard the block (EXECABORT).
    dirty: bool,
}

impl Transaction {
    /// Queues `request`; the reply to send now (QUEUED, or the error that dirtied the block).
    /// A block may hold at most `bytes_max` bytes of keys and values.
    fn queue(&mut self, request: Request, bytes_max: usize) -> Reply {
        let op = match request {
            // Inside MULTI a blocking pop does not block, as in Redis: it answers nil if empty.
            Request::Write(c) | Request::Blocking { command: c, .. } => TxOp::Write(c),
            Request::Read(ReadCommand::Query(q)) => TxOp::Query(q),
            Request::Read(ReadCommand::ElementScan { key, kind, cursor: 0, pattern, .. }) => {
                TxOp::Query(command::element_scan_whole(key, kind, pattern))
            }
            Request::Immediate(Reply::Error(e)) => {
                self.dirty = true;
                return Reply::Error(e);
            }
            Request::Immediate(r) => TxOp::Reply(r.into()),
            Request::Read(_) | Request::Admin(_) | Request::Connection(_) | Request::Quit => {
                self.dirty = true;
                return Reply::error("ERR this command is not supported inside MULTI");
            }
        };
        if self.bytes + op.size_bytes() > bytes_max {
            self.dirty = true;
            return Reply::error("ERR the MULTI block is larger than a request may be");
        }
        self.bytes += op.size_bytes();
        self.ops.push(op);
        Reply::Simple("QUEUED")
    }
}

/// Which kind of consensus request a connection has in flight.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Reads,
    Writes,
}

async fn serve<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static>(
    stream: S,
    node: mpsc::Sender<ClientRequest>,
    cfg: ClientConfig,
    conn: u64,
    registry: Registry,
    pending_bytes: PendingBytes,
    metrics: Arc<Metrics>,
) {
    let client: Arc<str> = registry
        .lock()
        .expect("not poisoned")
        .get(&conn)
        .map_or_else(|| Arc::from(""), |e| Arc::from(e.addr.to_string()));
    let (mut rd, wr) = tokio::io::split(stream);
    // Each reply goes with the protocol (RESP2 or RESP3) the connection had chosen by then.
    let (tx, rx) = mpsc::channel::<Queued>(cfg.pipeline_depth_max);
    // The writer counts the replies it has taken, so the reader can wait for a phase to end.
    let (answered_tx, mut answered) = watch::channel(0u64);
    let output = Arc::new(OutputBudget::new(cfg.output_bytes_max));
    let writer = tokio::spawn(write_replies(
        wr,
        rx,
        answered_tx,
        cfg.output_bytes_max,
        output.clone(),
        metrics.clone(),
        client,
    ));
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut submitted: u64 = 0;
    let mut phase: Option<Phase> = None;
    let mut name: Option<Bytes> = None;
    let mut protocol: u8 = 2;
    let mut authenticated = cfg.requirepass.is_none();
    let mut multi: Option<Transaction> = None;
    // WATCHed keys and what they held then (`kv::watch_value`).
    let mut watched: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    'conn: loop {
        loop {
            match resp::next_request(&mut buf, &cfg.limits) {
                Ok(Some(argv)) if argv.is_empty() => continue,
                Ok(Some(argv)) => {
                    let request_bytes: usize = argv.iter().map(|a| a.len()).sum();
                    let began = Instant::now();
                    let command_name = command::metric_name(&argv[0]);
                    let mut slow_args =
                        (metrics.slowlog_slower_than.load(std::sync::atomic::Ordering::Relaxed)
                            >= 0)
                            .then(|| crate::metrics::slow_args(&argv));
                    let parsed = command::parse(argv);
                    let allowed_before_auth = matches!(
                        parsed,
                        Request::Quit
                            | Request::Connection(
                                ConnectionCommand::Auth(..)
                                    | ConnectionCommand::Hello { .. }
                                    | ConnectionCommand::Reset
                            )
                    );
                    let parsed = if authenticated || allowed_before_auth {
                        parsed
                    } else {
                        Request::Immediate(Reply::error(NOAUTH))
                    };
                    let request = match (parsed, multi.as_mut()) {
                        (Request::Connection(ConnectionCommand::Auth(user, password)), _) => {
                            match check_auth(&cfg.requirepass, user.as_deref(), &password) {
                                Ok(()) => {
                                    authenticated = true;
                                    Request::Immediate(Reply::ok())
                                }
                                Err(e) => Request::Immediate(e),
                            }
                        }
                        (
                            Request::Connection(ConnectionCommand::Hello {
                                protocol: p,
                                auth,
                                name: n,
                            }),
                            _,
                        ) => {
                            let checked = match &auth {
                                Some((u, pw)) => check_auth(&cfg.requirepass, Some(u), pw),
                                None if authenticated => Ok(()),
                                None => Err(Reply::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")),
                            };
                            match checked {
                                Err(e) => Request::Immediate(e),
                                Ok(()) if n.as_ref().is_some_and(|n| !command::valid_client_name(n)) => {
                                    Request::Immediate(Reply::error("ERR Client names cannot contain spaces, newlines or special characters."))
                                }
                                Ok(()) => {
                                    authenticated = true;
                                    if let Some(p) = p {
                                        protocol = p;
                                    }
                                    if let Some(n) = n {
                                        name = (!n.is_empty()).then_some(n);
                                    }
                                    if let Some(e) = registry.lock().expect("not poisoned").get_mut(&conn) {
                                        e.protocol = protocol;
                                        e.name = name.clone();
                                    }
                                    Request::Immediate(hello_reply(conn, protocol))
                                }
                            }
                        }
                        (Request::Connection(ConnectionCommand::Reset), _) => {
                            multi = None;
                            watched.clear();
                            name = None;
                            protocol = 2;
                            authenticated = cfg.requirepass.is_none();
                            if let Some(e) = registry.lock().expect("not poisoned").get_mut(&conn) {
                                e.protocol = 2;
                                e.name = None;
                            }
                            Request::Immediate(Reply::Simple("RESET"))
                        }
                        (Request::Connection(ConnectionCommand::Multi), None) => {
                            multi = Some(Transaction::default());
                            Request::Immediate(Reply::ok())
                        }
                        (Request::Connection(ConnectionCommand::Multi), Some(_)) => {
                            Request::Immediate(Reply::error("ERR MULTI calls can not be nested"))
                        }
                        (Request::Connection(ConnectionCommand::Exec), None) => {
                            Request::Immediate(Reply::error("ERR EXEC without MULTI"))
                        }
                        (Request::Connection(ConnectionCommand::Discard), None) => {
                            Request::Immediate(Reply::error("ERR DISCARD without MULTI"))
                        }
                        (Request::Connection(ConnectionCommand::Discard), Some(_)) => {
                            multi = None;
                            watched.clear();
                            Request::Immediate(Reply::ok())
                        }
                        (Request::Connection(ConnectionCommand::Exec), Some(_)) => {
                            let t = multi.take().unwrap_or_default();
                            let watched = std::mem::take(&mut watched);
                            if t.dirty {
                                Request::Immediate(Reply::error(
                                    "EXECABORT Transaction discarded because of previous errors.",
                                ))
                            } else if t.ops.is_empty() && watched.is_empty() {
                                Request::Immediate(Reply::Array(Vec::new()))
                            } else {
                                Request::Write(Command::Multi { ops: t.ops, watched })
                            }
                        }
                        (Request::Connection(ConnectionCommand::Watch(_)), Some(_)) => {
                            Request::Immediate(Reply::error(
                                "ERR WATCH inside MULTI is not allowed",
                            ))
                        }
                        (Request::Connection(ConnectionCommand::Unwatch), Some(t)) => {
                            // Queued, as in Redis; EXEC forgets the watches anyway.
                            let ok = Request::Immediate(Reply::ok());
                            Request::Immediate(t.queue(ok, cfg.limits.request_bytes_max))
                        }
                        (Request::Connection(ConnectionCommand::Unwatch), None) => {
                            watched.clear();
                            Request::Immediate(Reply::ok())
                        }
                        (Request::Connection(ConnectionCommand::Watch(keys)), None) => {
                            // Read what the keys hold now, after every earlier request of
                            // the connection took effect; EXEC applies only if they still do.
                            if answered.wait_for(|n| *n >= submitted).await.is_err() {
                                break 'conn;
                            }
                            let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
                            let read = ReadCommand::Query(Query::Watch(keys.clone()));
                            let held = pending_bytes.try_hold(request_bytes);
                            let reply =
                                match dispatch(Request::Read(read), &node, conn, held, None).0 {
                                    Pending::Ready(r) => r,
                                    Pending::Waiting(rx, _held) => rx.await.unwrap_or_else(|_| {
                                        Reply::error("ERR the node is shutting down")
                                    }),
                                };
                            match reply {
                                Reply::Array(values) if values.len() == keys.len() => {
                                    // A key watched again keeps its first value, as in Redis.
                                    // What EXEC carries is bounded like a request.
                                    let mut next = watched.clone();
                                    let mut seen: std::collections::BTreeSet<Vec<u8>> =
                                        next.iter().map(|(k, _)| k.clone()).collect();
                                    for (k, v) in keys.into_iter().zip(values) {
                                        if !seen.insert(k.clone()) {
                                            continue;
                                        }
                                        let v = match v {
                                            Reply::Bulk(b) => Some(b.to_vec()),
                                            _ => None,
                                        };
                                        next.push((k, v));
                                    }
                                    let bytes: usize = next
                                        .iter()
                                        .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                                        .sum();
                                    if bytes > cfg.limits.request_bytes_max {
                                        Request::Immediate(Reply::error(
                                            "ERR the watched keys hold more than a request may",
                                        ))
                                    } else {
                                        watched = next;
                                        Request::Immediate(Reply::ok())
                                    }
                                }
                                Reply::Error(e) => Request::Immediate(Reply::Error(e)),
                                other => Request::Immediate(Reply::error(format!(
                                    "ERR internal: WATCH read {other:?}"
                                ))),
                            }
                        }
                        (Request::Quit, _) => Request::Quit,
                        (queued, Some(t)) => {
                            Request::Immediate(t.queue(queued, cfg.limits.request_bytes_max))
                        }
                        (
                            Request::Connection(ConnectionCommand::Client(
                                ClientCommand::Unblock { id, error },
                            )),
                            None,
                        ) => Request::Admin(command::AdminCommand::Unblock { client: id, error }),
                        (Request::Connection(ConnectionCommand::Monitor(m)), None) => {
                            Request::Immediate(monitor_reply(&metrics, m))
                        }
                        (Request::Connection(ConnectionCommand::Client(c)), None) => {
                            Request::Immediate(match c {
                                ClientCommand::Id => Reply::Integer(conn as i64),
                                ClientCommand::GetName => {
                                    name.clone().map_or(Reply::Null, Reply::Bulk)
                                }
                                ClientCommand::SetName(n) => {
                                    name = (!n.is_empty()).then_some(n);
                                    if let Some(e) =
                                        registry.lock().expect("not poisoned").get_mut(&conn)
                                    {
                                        e.name = name.clone();
                                    }
                                    Reply::ok()
                                }
                                ClientCommand::Info => {
                                    let reg = registry.lock().expect("not poisoned");
                                    let line =
                                        reg.get(&conn).map(|e| e.line(conn)).unwrap_or_default();
                                    Reply::Bulk(Bytes::from(line))
                                }
                                ClientCommand::List => {
                                    let reg = registry.lock().expect("not poisoned");
                                    let text: String =
                                        reg.iter().map(|(id, e)| e.line(*id)).collect();
                                    Reply::Bulk(Bytes::from(text))
                                }
                                ClientCommand::Unblock { .. } => unreachable!("sent to the node"),
                            })
                        }
                        (other, None) => other,
                    };
                    let next_phase = match &request {
                        Request::Write(_) | Request::Blocking { .. } => Some(Phase::Writes),
                        Request::Read(_) => Some(Phase::Reads),
                        _ => None,
                    };
                    let overtake = raft_kv_core::planted::active(
                        cfg.planted,
                        raft_kv_core::PlantedBug::PipelineReadsOvertakeWrites,
                    ) && next_phase == Some(Phase::Reads);
                    if next_phase.is_some() && phase.is_some() && next_phase != phase && !overtake {
                        // Wait until every earlier request of the connection is answered.
                        if answered.wait_for(|n| *n >= submitted).await.is_err() {
                            break 'conn;
                        }
                    }
                    if next_phase.is_some() {
                        phase = next_phase;
                    }
                    // An EXEC carries its whole MULTI block, not just its own arguments.
                    let bytes = match &request {
                        Request::Write(cmd) => request_bytes.max(cmd.size_bytes()),
                        _ => request_bytes,
                    };
                    // A blocking pop holds the connection: nothing after it runs before it is
                    // answered (Redis blocks the client).
                    let blocking = matches!(request, Request::Blocking { .. });
                    let held = match &request {
                        Request::Write(_)
                        | Request::Blocking { .. }
                        | Request::Read(_)
                        | Request::Admin(_) => match pending_bytes.try_hold(bytes) {
                            Some(p) => Some(p),
                            None => {
                                let busy = Reply::error(format!("BUSY the node holds {} bytes of pending requests, its limit; retry later", pending_bytes.max));
                                let stamp = Stamp {
                                    name: command_name,
                                    began,
                                    write: next_phase == Some(Phase::Writes),
                                    lookup: next_phase == Some(Phase::Reads)
                                        && LOOKUPS.contains(&command_name),
                                    client_name: slow_args.as_ref().and(name.clone()),
                                    args: slow_args.take(),
                                };
                                if tx
                                    .send((Pending::Ready(busy), protocol, Some(stamp)))
                                    .await
                                    .is_err()
                                {
                                    break 'conn;
                                }
                                submitted += 1;
                                continue;
                            }
                        },
                        _ => None,
                    };
                    let stamp = Stamp {
                        name: command_name,
                        began,
                        write: next_phase == Some(Phase::Writes),
                        lookup: next_phase == Some(Phase::Reads) && LOOKUPS.contains(&command_name),
                        client_name: slow_args.as_ref().and(name.clone()),
                        args: slow_args.take(),
                    };
                    let (pending, quit) = dispatch(request, &node, conn, held, Some(&output));
                    if tx.send((pending, protocol, Some(stamp))).await.is_err() {
                        break 'conn;
                    }
                    submitted += 1;
                    if quit {
                        break 'conn;
                    }
                    if blocking {
                        // Wait for its answer, and notice a client that leaves meanwhile: the
                        // writer (holding the reply's receiver) is stopped, so the node sees the
                        // receiver closed and lets the parked pop go. Input that arrives in the
                        // meantime waits in the buffer (up to a bound).
                        loop {
                            tokio::select! {
                                biased;
                                r = answered.wait_for(|n| *n >= submitted) => {
                                    if r.is_err() {
                                        break 'conn;
                                    }
                                    break;
                                }
                                r = rd.read_buf(&mut buf), if buf.len() < BLOCKED_INPUT_MAX => match r {
                                    Ok(0) | Err(_) => {
                                        writer.abort();
                                        return;
                                    }
                                    Ok(_) => {}
                                },
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send((Pending::Ready(Reply::Error(e.0)), protocol, None)).await;
                    break 'conn;
                }
            }
        }
        // The writer may have given up on the client (`write_replies`): then stop reading too.
        tokio::select! {
            biased;
            _ = tx.closed() => break,
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
    drop(tx);
    let _ = writer.await;
}

/// Turns one request into its (eventual) reply; true if the connection should close after it.
fn dispatch(
    request: Request,
    node: &mpsc::Sender<ClientRequest>,
    conn: u64,
    held: Option<OwnedSemaphorePermit>,
    output: Option<&Arc<OutputBudget>>,
) -> (Pending, bool) {
    let kind = match request {
        Request::Immediate(r) => return (Pending::Ready(r), false),
        Request::Quit => return (Pending::Ready(Reply::ok()), true),
        Request::Write(c) => RequestKind::Write(c),
        Request::Blocking { command, timeout_ms } => RequestKind::Blocking { command, timeout_ms },
        Request::Read(c) => RequestKind::Read(c),
        Request::Admin(c) => RequestKind::Admin(c),
        // Answered by the connection before it gets here.
        Request::Connection(_) => return (Pending::Ready(Reply::error("ERR internal")), false),
    };
    let (reply, rx) = oneshot::channel();
    let output = output.cloned();
    match node.try_send(ClientRequest { kind, reply, conn, output }) {
        Ok(()) => (Pending::Waiting(rx, held), false),
        Err(mpsc::error::TrySendError::Full(_)) => (
            Pending::Ready(Reply::error("BUSY the node's request queue is full; retry later")),
            false,
        ),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            (Pending::Ready(Reply::error("ERR the node is shutting down")), false)
        }
    }
}

/// Bytes of further input a connection blocked in a pop buffers before it stops reading.
const BLOCKED_INPUT_MAX: usize = 1 << 20;

/// The answer to a request the node took and then stopped (a failed sync, a shutdown)
/// without answering: a write in it may have committed.
const STOPPED_BEFORE_ANSWERING: &str =
    "ERR the node is shutting down and did not answer; a write may or may not have been applied";

/// A client that reads none of its replies for this long while the socket's buffers are full
/// is disconnected.
const OUTPUT_STALL_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes the connection's replies in request order, as each becomes ready, gathering those
/// ready into one write, up to `output_bytes_max` at a time (one reply alone may be larger).
/// While the client is slow to read, replies wait for the writer in the node's answers, and
/// past `output_bytes_max` of those the node holds the connection's reads back
/// (`OutputBudget`); a client that reads nothing for `OUTPUT_STALL_MAX` while the socket is
/// full is disconnected (Redis's `client-output-buffer-limit` disconnects at a size; here a
/// slow reader is throttled, and only one that stopped reading is cut off).
///
/// Each reply taken is noted in the metrics (`note`).
async fn write_replies<W: tokio::io::AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Queued>,
    answered: watch::Sender<u64>,
    output_bytes_max: usize,
    budget: Arc<OutputBudget>,
    metrics: Arc<Metrics>,
    client: Arc<str>,
) {
    use bytes::Buf;
    let mut out = BytesMut::with_capacity(16 * 1024);
    // Requests taken from the reader, oldest first: the front one's reply is written next.
    let mut queue: VecDeque<Queued> = VecDeque::new();
    loop {
        while let Ok(p) = rx.try_recv() {
            queue.push_back(p);
        }
        // Every reply that is ready, in order, while the buffer has room.
        while out.len() < output_bytes_max {
            let Some((front, _, _)) = queue.front_mut() else { break };
            let reply = match front {
                Pending::Ready(_) => None,
                Pending::Waiting(wait, _) => match wait.try_recv() {
                    Ok(r) => Some(r),
                    Err(oneshot::error::TryRecvError::Empty) => break,
                    Err(oneshot::error::TryRecvError::Closed) => {
                        Some(Reply::error(STOPPED_BEFORE_ANSWERING))
                    }
                },
            };
            let (pending, protocol, stamp) = queue.pop_front().expect("front exists");
            let reply = match (reply, pending) {
                (Some(r), _) => r,
                (None, Pending::Ready(r)) => r,
                (None, Pending::Waiting(..)) => unreachable!("a waiting reply was taken above"),
            };
            if let Some(s) = stamp {
                note(&metrics, &s, &reply, &client);
            }
            budget.release(reply.size_bytes());
            answered.send_modify(|n| *n += 1);
            resp::encode_reply(reply, protocol, &mut out);
        }
        if !out.is_empty() {
            match tokio::time::timeout(OUTPUT_STALL_MAX, wr.write(&out)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(n)) => {
                    out.advance(n);
                    if out.is_empty() && wr.flush().await.is_err() {
                        return;
                    }
                }
                Err(_) => {
                    warn!(
                        unwritten = out.len(),
                        "the client read none of its replies for {OUTPUT_STALL_MAX:?}; disconnected"
                    );
                    return;
                }
            }
            continue;
        }
        // Nothing to write: wait for the next reply, or the next request.
        match queue.front_mut() {
            Some((front @ Pending::Waiting(..), _, _)) => {
                let Pending::Waiting(wait, _) = front else { unreachable!() };
                let reply = wait.await.unwrap_or_else(|_| Reply::error(STOPPED_BEFORE_ANSWERING));
                *front = Pending::Ready(reply);
            }
            Some((Pending::Ready(_), _, _)) => {}
            None => match rx.recv().await {
                Some(p) => queue.push_back(p),
                None => return,
            },
        }
    }
}

/// SLOWLOG and LATENCY, answered from the node's records (`Metrics::redis`).
fn monitor_reply(metrics: &Metrics, m: command::MonitorCommand) -> Reply {
    use command::MonitorCommand as M;
    let bulk = |s: String| Reply::Bulk(Bytes::from(s));
    let lines = |l: &[&str]| Reply::Array(l.iter().map(|s| bulk(s.to_string())).collect());
    let mut r = metrics.redis.lock().unwrap_or_else(|e| e.into_inner());
    match m {
        M::SlowGet(count) => {
            let n = if count < 0 { r.slowlog.len() } else { (count as usize).min(r.slowlog.len()) };
            Reply::Array(
                r.slowlog
                    .iter()
                    .take(n)
                    .map(|e| {
                        Reply::Array(vec![
                            Reply::Integer(e.id as i64),
                            Reply::Integer(e.time as i64),
                            Reply::Integer(e.usec as i64),
                            Reply::Array(e.args.iter().cloned().map(Reply::Bulk).collect()),
                            bulk(e.client.clone()),
                            Reply::Bulk(e.client_name.clone()),
                        ])
                    })
                    .collect(),
            )
        }
        M::SlowLen => Reply::Integer(r.slowlog.len() as i64),
        M::SlowReset => {
            r.slowlog.clear();
            Reply::ok()
        }
        M::SlowHelp => lines(&[
            "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GET [<count>]",
            "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
            "    Entries are made of:",
            "    id, timestamp, time in microseconds, arguments array, client IP and port,",
            "    client name",
            "LEN",
            "    Return the length of the slowlog.",
            "RESET",
            "    Reset the slowlog.",
            "HELP",
            "    Prints this help.",
        ]),
        M::LatencyLatest => Reply::Array(
            r.latency
                .iter()
                .map(|(name, e)| {
                    Reply::Array(vec![
                        bulk(name.to_string()),
                        Reply::Integer(e.time as i64),
                        Reply::Integer(e.latest_ms as i64),
                        Reply::Integer(e.max_ms as i64),
                    ])
                })
                .collect(),
        ),
        M::LatencyReset(events) => {
            let before = r.latency.len();
            if events.is_empty() {
                r.latency.clear();
            } else {
                r.latency.retain(|name, _| !events.iter().any(|e| e.as_ref() == name.as_bytes()));
            }
            Reply::Integer((before - r.latency.len()) as i64)
        }
        M::LatencyHistory(event) => Reply::Array(
            r.latency
                .iter()
                .filter(|(name, _)| name.as_bytes() == event.as_ref())
                .map(|(_, e)| {
                    Reply::Array(vec![
                        Reply::Integer(e.time as i64),
                        Reply::Integer(e.latest_ms as i64),
                    ])
                })
                .collect(),
        ),
        M::LatencyDoctor => {
            bulk(if metrics.latency_threshold_ms.load(std::sync::atomic::Ordering::Relaxed) == 0 {
                "Latency monitoring is disabled on this node. CONFIG SET latency-monitor-threshold <milliseconds> enables it: commands and Raft log fsyncs that take at least that long are recorded (events \"command\" and \"fsync-always\")."
                .to_string()
            } else {
                let events: Vec<String> = r
                    .latency
                    .iter()
                    .map(|(n, e)| format!("{n}: latest {} ms, max {} ms", e.latest_ms, e.max_ms))
                    .collect();
                if events.is_empty() {
                    "No latency spike above the threshold was recorded.".to_string()
                } else {
                    events.join("\n")
                }
            })
        }
        M::LatencyHelp => lines(&[
            "LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "DOCTOR",
            "    Return a human readable latency analysis report.",
            "HISTORY <event>",
            "    Return time-latency samples for the <event> class.",
            "LATEST",
            "    Return the latest latency samples for all events.",
            "RESET [<event> ...]",
            "    Reset latency data of one or more <event> classes.",
            "    (default: reset all data for all event classes)",
            "HELP",
            "    Prints this help.",
        ]),
    }
}

/// Notes a command answered: its count and time, its error's kind, and for a write an error
/// that says it was not applied (TRYAGAIN, BUSY, CLUSTERDOWN, MISCONF) or may not have been
/// (TIMEOUT).
fn note(metrics: &Metrics, s: &Stamp, reply: &Reply, client: &str) {
    let error = match reply {
        Reply::Error(e) => Some(e.as_str()),
        _ => None,
    };
    let lookup = s.lookup.then_some(match reply {
        Reply::Null | Reply::NullArray | Reply::Error(_) => false,
        Reply::Array(v) | Reply::Set(v) => !v.is_empty(),
        Reply::Map(m) => !m.is_empty(),
        Reply::Integer(0) => !matches!(
            s.name,
            "exists" | "strlen" | "llen" | "scard" | "zcard" | "hexists" | "sismember"
        ),
        Reply::Simple("none") => false,
        _ => true,
    });
    metrics.command(crate::metrics::Done {
        name: s.name,
        took: s.began.elapsed(),
        error,
        lookup,
        args: s.args.as_deref(),
        client,
        client_name: s.client_name.as_ref(),
    });
    let reason = match error.and_then(|e| e.split(' ').next()) {
        Some("TRYAGAIN") => "not_applied",
        Some("TIMEOUT") => "timeout",
        Some("BUSY") => "busy",
        Some("CLUSTERDOWN") => "no_leader",
        Some("MISCONF") => "disk_full",
        _ => return,
    };
    if s.write {
        let label = crate::metrics::Reason { reason: reason.to_string() };
        metrics.proposals_failed.get_or_create(&label).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_mode_refuses_only_remote_clients_of_a_node_without_a_password() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let protected = ClientConfig { protected_mode: true, ..ClientConfig::default() };
        for local in ["127.0.0.1", "127.5.6.7", "::1", "::ffff:127.0.0.1"] {
            assert!(!refused_by_protected_mode(&protected, ip(local)), "{local}");
        }
        for remote in ["10.0.0.5", "192.168.1.2", "::ffff:10.0.0.5", "2001:db8::1"] {
            assert!(refused_by_protected_mode(&protected, ip(remote)), "{remote}");
        }
        let with_password = ClientConfig { requirepass: Some("pw".into()), ..protected.clone() };
        assert!(!refused_by_protected_mode(&with_password, ip("10.0.0.5")));
        let off = ClientConfig { protected_mode: false, ..ClientConfig::default() };
        assert!(!refused_by_protected_mode(&off, ip("10.0.0.5")));
        assert!(
            PROTECTED_MODE_DENIED.starts_with("-DENIED ")
                && PROTECTED_MODE_DENIED.ends_with("\r\n")
        );
        assert_eq!(PROTECTED_MODE_DENIED.matches("\r\n").count(), 1, "one RESP error line");
    }

    #[test]
    fn a_multi_block_past_the_size_limit_is_refused_and_aborts() {
        let mut t = Transaction::default();
        let write = || Request::Write(Command::set(vec![b'k'; 10], vec![b'v'; 40]));
        assert_eq!(t.queue(write(), 90), Reply::Simple("QUEUED"));
        assert!(matches!(t.queue(write(), 90), Reply::Error(_)));
        assert!(t.dirty, "EXEC must answer EXECABORT");
        assert_eq!(t.ops.len(), 1);
    }
}
