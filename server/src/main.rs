//! The `raft-kv` binary: parses the command line, opens the node's RocksDB data directory and
//! runs the node until it is stopped or its storage fails.

#[cfg(not(madsim))]
mod backup;
#[cfg(not(madsim))]
mod http;
#[cfg(not(madsim))]
mod rocks;

/// mimalloc: the Rust side allocates per request (frames, entries, replies); glibc's malloc
/// and free took about 7% of a node's CPU under redis-benchmark.
#[cfg(not(madsim))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{bail, Context};
use clap::Parser;
use raft_kv_core::NodeId;
use raft_kv_runtime::peer_auth::ClusterSecret;
use raft_kv_runtime::storage::StorageError;
use raft_kv_runtime::tls::{ClientAuth, ClientTls, PeerTls, TlsFiles};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// A Raft-replicated key-value store that speaks the Redis protocol.
#[derive(Parser, Debug, Clone)]
#[command(name = "raft-kv", version)]
struct Args {
    /// This node's id: its 1-based position in --cluster, or with --join any id not in use.
    #[arg(long)]
    id: u64,
    /// Raft addresses of the nodes a new cluster starts with, comma-separated, in id order.
    #[arg(long, value_delimiter = ',', required_unless_present = "join", conflicts_with = "join")]
    cluster: Vec<SocketAddr>,
    /// Join a running cluster through the Redis address of one of its members: this node
    /// asks it to add it (RAFT.NODE ADD), catches up as a learner and is promoted to voter.
    #[arg(long, requires = "raft_addr")]
    join: Option<String>,
    /// This node's Raft address (with --join; otherwise its entry in --cluster).
    #[arg(long)]
    raft_addr: Option<SocketAddr>,
    /// Port for Redis clients.
    #[arg(long)]
    port: u16,
    /// Address to listen on, for Redis clients and Raft peers.
    #[arg(long, default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Data directory [default: data/node<ID>].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Length of one Raft tick; elections time out after 50-100 ticks, heartbeats every 5.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1000))]
    tick_ms: u64,
    /// A client request that is not answered within this gets an error.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    request_timeout_ms: u64,
    /// Largest argument a client may send (Redis's proto-max-bulk-len).
    #[arg(long, default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range(1..=(512 << 20)))]
    max_bulk_bytes: u64,
    /// Bytes of client requests a node holds for consensus at once (over all connections);
    /// a request past it is answered BUSY.
    #[arg(long, default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(1..=(1 << 32) - 1))]
    max_pending_request_bytes: u64,
    /// Bytes of log entries a leader holds uncommitted (in memory until committed and
    /// compacted); a write past it is answered BUSY. One entry is always taken when nothing
    /// is uncommitted.
    #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    max_uncommitted_bytes: u64,
    /// Bytes kept free on the data directory's disk: below it the node takes no writes
    /// (answered "-MISCONF ...") and no new log entries, so RocksDB never meets a full disk,
    /// and it catches up once space is freed. 0: no reserve.
    #[arg(long, default_value_t = 128 << 20)]
    disk_reserve_bytes: u64,
    /// Clients served at once, as Redis's maxclients; one more reads "-ERR max number of
    /// clients reached" and is disconnected.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    maxclients: u64,
    /// Bytes of replies a client may leave unread; past it (unless it is one reply alone)
    /// the client is disconnected, as with Redis's client-output-buffer-limit.
    #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    client_output_buffer_limit: u64,
    /// Compact the log (the state machine stands for it) once this many entries have been
    /// applied since the last compaction.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_entries: u64,
    /// ... or once the log holds this many bytes.
    #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1..=(1 << 40)))]
    snapshot_bytes: u64,
    /// Applied entries kept after a compaction, so a follower slightly behind catches up from
    /// the log rather than from a snapshot. A leader also keeps what the followers it hears from
    /// still need, up to half --snapshot-bytes of entries.
    #[arg(long, default_value_t = 1_000)]
    snapshot_keep_entries: u64,
    /// Bytes of state per snapshot chunk sent to a follower (one message each; 4 in flight).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(64..=(16 << 20)))]
    snapshot_chunk_bytes: u64,
    /// Serve reads from a leader lease (no round trip to a quorum per read), assuming no
    /// node's clock runs more than this fraction faster than another's (0.05: 5%). Without
    /// it every read confirms leadership with ReadIndex.
    #[arg(long, value_parser = parse_drift)]
    lease_max_clock_drift: Option<f64>,
    /// Threads that run client connections, peer links and the node [default: one per core].
    /// Nodes sharing a machine (the Procfile's three) do best with 1 each: every thread more
    /// is more context switches per request.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    worker_threads: Option<u64>,
    /// Clients must authenticate (AUTH <password>, or HELLO ... AUTH default <password>)
    /// before any other command, as with Redis's requirepass.
    #[arg(long)]
    requirepass: Option<String>,
    /// A file holding the cluster's shared secret (at least 16 bytes; trailing whitespace is
    /// ignored). Peers then prove to each other that they know it when they connect, and
    /// every Raft frame is authenticated: without it anyone who reaches a Raft port can
    /// speak for a member. Every member needs the same file; keep it readable by its owner
    /// only.
    #[arg(long)]
    cluster_secret_file: Option<PathBuf>,
    /// As Redis's protected-mode: without --requirepass, only clients on the loopback
    /// interface are served; others read a DENIED error. Matters with a --bind other than
    /// loopback.
    #[arg(long, default_value = "yes", value_parser = parse_yes_no, action = clap::ArgAction::Set)]
    protected_mode: bool,
    /// What the node does with a data directory whose checksums fail: `refuse` exits and says
    /// how to repair it; `rebuild` does that repair itself: it moves the directory aside (to
    /// DIR.damaged-UNIXTIME, kept for inspection) and starts empty, catching up from its peers
    /// as a node whose disk was replaced.
    #[arg(long, value_enum, default_value_t = OnDamage::Refuse)]
    on_damaged_data_dir: OnDamage,
    /// The node's certificate chain (PEM). With --tls-key-file and --tls-ca-cert-file, the
    /// client port speaks TLS only (redis-cli --tls).
    #[arg(long, requires_all = ["tls_key_file", "tls_ca_cert_file"])]
    tls_cert_file: Option<PathBuf>,
    /// The private key of --tls-cert-file (PEM).
    #[arg(long, requires_all = ["tls_cert_file", "tls_ca_cert_file"])]
    tls_key_file: Option<PathBuf>,
    /// The CA that signs the certificates of clients (with --tls-auth-clients) and peers.
    #[arg(long, requires_all = ["tls_cert_file", "tls_key_file"])]
    tls_ca_cert_file: Option<PathBuf>,
    /// As Redis's tls-auth-clients: clients must present a certificate the CA signed (yes),
    /// may (optional), or need not (no).
    #[arg(long, default_value = "yes", value_parser = parse_client_auth, requires = "tls_cert_file")]
    tls_auth_clients: ClientAuth,
    /// As Redis's tls-cluster: the Raft port speaks TLS too, each peer presenting its
    /// certificate and verifying the other's against --tls-ca-cert-file (and the address it
    /// dialled against the certificate's IP addresses).
    #[arg(long, default_value = "no", value_parser = parse_yes_no, action = clap::ArgAction::Set, requires = "tls_cert_file")]
    tls_cluster: bool,
    /// How the log (on stderr) is written: `text` for people (coloured only on a terminal),
    /// `json` for log shippers (one JSON object per line: timestamp, level, message, fields,
    /// spans).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Serve plain HTTP on this address: /metrics (Prometheus), /livez and /readyz. Off by
    /// default; it has no authentication, so bind it where only the monitoring reaches.
    #[arg(long)]
    metrics_addr: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr, as a daemon's do: stdout stays free, and one redirect keeps both the log and
/// a fatal error. Colour codes only when stderr is a terminal (a file or a pipe gets plain
/// text). `RUST_LOG` filters, as tracing's EnvFilter reads it (default `info`).
fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).init(),
    }
}

fn parse_client_auth(s: &str) -> Result<ClientAuth, String> {
    match s {
        "yes" => Ok(ClientAuth::Required),
        "optional" => Ok(ClientAuth::Optional),
        "no" => Ok(ClientAuth::None),
        _ => Err(format!("'{s}' is none of yes, optional, no")),
    }
}

fn parse_yes_no(s: &str) -> Result<bool, String> {
    match s {
        "yes" => Ok(true),
        "no" => Ok(false),
        _ => Err(format!("'{s}' is neither yes nor no")),
    }
}

/// The client port's TLS and the peer port's, from the `--tls-*` files (both checked now, so a
/// bad file stops the start before anything is written).
fn tls_config(args: &Args) -> anyhow::Result<Option<(ClientTls, PeerTls)>> {
    let (Some(cert), Some(key), Some(ca)) =
        (&args.tls_cert_file, &args.tls_key_file, &args.tls_ca_cert_file)
    else {
        return Ok(None);
    };
    let files = TlsFiles { cert, key, ca };
    let client = ClientTls::new(&files, args.tls_auth_clients).map_err(anyhow::Error::msg)?;
    let peer = PeerTls::new(&files).map_err(anyhow::Error::msg)?;
    // `--join` asks a member through its client port, which then speaks TLS.
    let _ = CLUSTER_TLS.set(peer.clone());
    Ok(Some((client, peer)))
}

/// Reads `--cluster-secret-file`.
fn read_cluster_secret(path: &Path) -> anyhow::Result<ClusterSecret> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the cluster secret file {}", path.display()))?;
    let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(0, |i| i + 1);
    let secret = ClusterSecret::new(&bytes[..end])
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(file = %path.display(), "the cluster secret file is readable by other users; chmod 600 it");
            }
        }
    }
    Ok(secret)
}

fn parse_drift(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if (0.0..=1.0).contains(&d) => Ok(d),
        _ => Err(format!("'{s}' is not a fraction between 0 and 1 (0.05 means 5%)")),
    }
}

/// `raft-kv backup` and `raft-kv restore`: tools beside the server (issue 16).
#[derive(Parser, Debug)]
#[command(name = "raft-kv", version)]
enum Tool {
    /// Copies a running cluster's data, at a linearizable point, to a file (through RESP,
    /// from any node: it confirms the point as it confirms a read). A progress bar on a
    /// terminal.
    Backup {
        /// A node's Redis address, HOST:PORT.
        #[arg(long)]
        from: String,
        /// The backup file (written as FILE.partial, renamed once complete).
        #[arg(long)]
        out: PathBuf,
        /// The cluster's --requirepass, if it has one.
        #[arg(long)]
        password: Option<String>,
        /// Connect with TLS, as redis-cli --tls, to a node whose client port speaks it
        /// (--tls-cert-file). The tool presents --cert (as a node with --tls-auth-clients yes
        /// wants), so --cacert, --cert and --key are all needed.
        #[arg(long, requires_all = ["cacert", "cert", "key"])]
        tls: bool,
        /// With --tls: the CA that signed the node's certificate (PEM). The certificate must
        /// name the IP address dialled, as a member's must for --join.
        #[arg(long, requires = "tls")]
        cacert: Option<PathBuf>,
        /// With --tls: the tool's certificate (PEM), signed by the node's --tls-ca-cert-file.
        #[arg(long, requires = "tls")]
        cert: Option<PathBuf>,
        /// With --tls: the private key of --cert (PEM).
        #[arg(long, requires = "tls")]
        key: Option<PathBuf>,
    },
    /// Creates the data directories of a new cluster holding a backup's data (checked whole
    /// first: a cut or damaged file is refused and nothing is written). Start the new
    /// cluster's nodes with the same --cluster and these --data-dir.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// The new cluster's Raft addresses, comma-separated, in id order.
        #[arg(long, value_delimiter = ',', required = true)]
        cluster: Vec<SocketAddr>,
        /// One new data directory per node, in id order (must not exist, or be empty).
        #[arg(long = "data-dir", required = true)]
        data_dirs: Vec<PathBuf>,
    },
    /// Checks a backup file whole and says what it holds.
    CheckBackup { file: PathBuf },
}

/// Runs a tool (`raft-kv backup|restore|check-backup ...`).
#[cfg(not(madsim))]
fn run_tool() -> ExitCode {
    let tool = Tool::parse();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("raft-kv: error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match tool {
        Tool::Backup { from, out, password, tls: _, cacert, cert, key } => {
            let tls = match (&cacert, &cert, &key) {
                (Some(ca), Some(cert), Some(key)) => {
                    PeerTls::new(&TlsFiles { cert, key, ca }).map(Some).map_err(anyhow::Error::msg)
                }
                _ => Ok(None),
            };
            tls.and_then(|tls| {
                rt.block_on(backup::backup(&from, &out, password.as_deref(), tls.as_ref()))
            })
            .map(|s| {
                println!(
                    "backup of {from} at index {}: {} chunks, {} bytes, written to {}",
                    s.index,
                    s.chunks,
                    s.bytes,
                    out.display()
                )
            })
        }
        Tool::Restore { file, cluster, data_dirs } => {
            backup::restore(&file, &cluster, &data_dirs).map(|s| {
                println!(
                    "restored {} (index {}, {} bytes) into {} data directories: start each node with --cluster {} --id N --data-dir <its directory>",
                    file.display(),
                    s.index,
                    s.bytes,
                    data_dirs.len(),
                    cluster.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")
                )
            })
        }
        Tool::CheckBackup { file } => backup::check(&file).map(|s| {
            println!("{}: a whole backup at index {}, {} chunks, {} bytes", file.display(), s.index, s.chunks, s.bytes)
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raft-kv: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(madsim))]
fn main() -> ExitCode {
    if matches!(std::env::args().nth(1).as_deref(), Some("backup" | "restore" | "check-backup")) {
        return run_tool();
    }
    let args = Args::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = args.worker_threads {
        runtime.worker_threads(n as usize);
    }
    match runtime.build() {
        Ok(rt) => rt.block_on(serve_main(args)),
        Err(e) => {
            eprintln!("raft-kv: error: cannot start the runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(madsim))]
async fn serve_main(args: Args) -> ExitCode {
    if let Some(pw) = &args.requirepass {
        let _ = CLUSTER_PASSWORD.set(pw.clone());
    }
    init_logging(args.log_format);
    let mut result = run(args.clone()).await;
    let damaged = match &result {
        Err(e) if args.on_damaged_data_dir == OnDamage::Rebuild => {
            damaged_dir(e).inspect(|_| {
                tracing::warn!(error = %format!("{e:#}"), "rebuilding the node from its peers (--on-damaged-data-dir rebuild)");
            })
        }
        _ => None,
    };
    if let Some((dir, running)) = damaged {
        result = match move_aside(&dir) {
            // Its tasks still hold the ports: the process ends, and its supervisor starts it
            // again, empty.
            Ok(to) if running => Err(anyhow::anyhow!(
                "the node stopped at damaged data; its data directory was moved aside to {}: start the node again with the same command and it starts empty, catching up from its peers",
                to.display()
            )),
            Ok(to) => {
                tracing::warn!(moved_to = %to.display(), "damaged data directory moved aside; starting empty");
                run(args).await
            }
            Err(e) => Err(e),
        };
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raft-kv: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum OnDamage {
    Refuse,
    Rebuild,
}

/// A data directory whose checksums fail, met at start or (`running`) while serving.
#[derive(Debug, thiserror::Error)]
#[error("{}data directory {} is damaged: {reason}. {}", if *running { "the node stopped: " } else { "" }, path.display(), rocks::repair_advice(path))]
struct DamagedDir {
    path: PathBuf,
    reason: String,
    running: bool,
}

/// The damaged data directory `e` reports, and whether the node was already serving.
fn damaged_dir(e: &anyhow::Error) -> Option<(PathBuf, bool)> {
    if let Some(d) = e.downcast_ref::<DamagedDir>() {
        return Some((d.path.clone(), d.running));
    }
    match e.downcast_ref::<rocks::OpenError>() {
        Some(rocks::OpenError::Damaged { path, .. }) => Some((path.clone(), false)),
        _ => None,
    }
}

/// `--on-damaged-data-dir rebuild`: moves the damaged directory aside; returns where to.
fn move_aside(dir: &Path) -> anyhow::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut to = PathBuf::from(format!("{}.damaged-{secs}", dir.display()));
    let mut n = 1;
    while to.exists() {
        to = PathBuf::from(format!("{}.damaged-{secs}-{n}", dir.display()));
        n += 1;
    }
    std::fs::rename(dir, &to).with_context(|| {
        format!(
            "cannot move the damaged data directory {} aside to {}",
            dir.display(),
            to.display()
        )
    })?;
    Ok(to)
}

/// Whether a storage error is a full disk (ENOSPC, as RocksDB words it).
fn is_disk_full(e: &StorageError) -> bool {
    let text = e.to_string();
    text.contains("No space left on device") || text.contains("NoSpace")
}

#[cfg(madsim)]
fn main() {
    // The binary runs on real tokio only; the simulation drives the runtime directly.
}

/// What a joining node learns from a member: the cluster's id and the voters it started
/// with (every node replays membership changes from the same start).
#[cfg(not(madsim))]
struct ClusterInfo {
    cluster_id: u64,
    bootstrap: BTreeMap<NodeId, SocketAddr>,
}

#[cfg(not(madsim))]
async fn cluster_info(member: &str) -> anyhow::Result<ClusterInfo> {
    let info = redis_call(member, &["INFO", "raft"]).await?;
    let field = |name: &str| {
        info.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).map(str::trim).with_context(
            || format!("{member} answered INFO without {name}; is it a raft-kv node?"),
        )
    };
    let cluster_id = u64::from_str_radix(field("cluster_id")?, 16)
        .with_context(|| format!("{member} reported a malformed cluster_id"))?;
    let mut bootstrap = BTreeMap::new();
    for pair in field("bootstrap_voters")?.split(',') {
        let (id, addr) = pair.split_once('=').context("malformed bootstrap_voters")?;
        let id = NodeId(id.parse().context("malformed bootstrap_voters")?);
        bootstrap.insert(id, addr.parse().context("malformed bootstrap_voters")?);
    }
    Ok(ClusterInfo { cluster_id, bootstrap })
}

/// `--requirepass`: the cluster's members want it too, so `--join` authenticates with it.
#[cfg(not(madsim))]
static CLUSTER_PASSWORD: std::sync::OnceLock<String> = std::sync::OnceLock::new();
/// `--tls-*`: how `--join` reaches a member's client port.
#[cfg(not(madsim))]
static CLUSTER_TLS: std::sync::OnceLock<PeerTls> = std::sync::OnceLock::new();

/// One command to a Redis server (with `--requirepass` and the `--tls-*` files, as a member
/// wants them); the reply as text, an error reply as an error of its text alone.
#[cfg(not(madsim))]
async fn redis_call(addr: &str, args: &[&str]) -> anyhow::Result<String> {
    use redis_protocol::resp2::types::BytesFrame;
    let io = async {
        let password = CLUSTER_PASSWORD.get().map(String::as_str);
        let mut conn = backup::Conn::open(addr, password, CLUSTER_TLS.get()).await?;
        match conn.request(args).await? {
            Ok(BytesFrame::SimpleString(b) | BytesFrame::BulkString(b)) => {
                Ok(String::from_utf8_lossy(&b).into_owned())
            }
            Ok(other) => bail!("{addr} answered {other:?}"),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(30), io)
        .await
        .with_context(|| format!("{addr} did not answer within 30 s"))?
}

/// Asks `member` to add this node, retrying while another membership change is in progress.
#[cfg(not(madsim))]
async fn request_join(member: &str, id: u64, raft_addr: SocketAddr) -> anyhow::Result<()> {
    let (id_s, addr_s) = (id.to_string(), raft_addr.to_string());
    for _ in 0..60 {
        match redis_call(member, &["RAFT.NODE", "ADD", &id_s, &addr_s]).await {
            Ok(_) => return Ok(()),
            // Refused because the id is taken: by this very node (a restart that lost the
            // membership record) only if the address is ours.
            Err(e) if e.to_string().contains("already a voter") => {
                let members = redis_call(member, &["INFO", "raft"]).await?;
                let ours = format!(":id={id},raft_addr={raft_addr},");
                if members.lines().any(|l| l.contains(&ours)) {
                    return Ok(());
                }
                bail!("node id {id} is already a voter at another address; pick an unused id");
            }
            Err(e) if e.to_string().starts_with("BUSY") || e.to_string().starts_with("TIMEOUT") => {
                tracing::info!(error = %e, "join not taken yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.context(format!("{member} refused to add node {id}"))),
        }
    }
    bail!("{member} kept refusing to add node {id}")
}

#[cfg(not(madsim))]
async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(member) = args.join.clone() {
        return run_joining(args, member).await;
    }
    let n = args.cluster.len() as u64;
    if args.id == 0 || args.id > n {
        bail!(
            "--id {} is not in the cluster: --cluster lists {} node(s), so ids are 1..={}",
            args.id,
            n,
            n
        );
    }
    let raft_addrs: BTreeMap<NodeId, SocketAddr> =
        args.cluster.iter().enumerate().map(|(i, a)| (NodeId(i as u64 + 1), *a)).collect();
    let mut seen = std::collections::BTreeSet::new();
    for a in &args.cluster {
        if !seen.insert(a) {
            bail!("--cluster lists {a} twice");
        }
    }
    let id = NodeId(args.id);
    let own = raft_addrs[&id];
    let cluster_id = raft_kv_runtime::cluster_id(&raft_addrs);
    serve(args, id, raft_addrs, cluster_id, own, None).await
}

/// Starts a node that joins a running cluster through `member`.
#[cfg(not(madsim))]
async fn run_joining(args: Args, member: String) -> anyhow::Result<()> {
    let raft_addr = args.raft_addr.context("--join needs --raft-addr")?;
    if args.id == 0 {
        bail!("--id must be at least 1");
    }
    let id = NodeId(args.id);
    let data_dir = data_dir(&args);
    // A node that joined before restarts from what its data directory remembers, whether or
    // not the member it joined through is up; it asks to be added only if it is not a member.
    if let Some(j) = rocks::RocksStorage::joined(&data_dir)? {
        if j.identity.node_id != args.id {
            bail!(
                "data directory {} belongs to node {}, not {}",
                data_dir.display(),
                j.identity.node_id,
                args.id
            );
        }
        let mut bootstrap = BTreeMap::new();
        for (id, addr) in &j.bootstrap {
            bootstrap.insert(NodeId(*id), addr.parse().context("stored bootstrap address")?);
        }
        let join = (!j.member).then_some((member, raft_addr));
        return serve(args, id, bootstrap, j.identity.cluster_id, raft_addr, join).await;
    }
    // The member's client port may speak TLS: load the files (and refuse bad ones) first.
    tls_config(&args)?;
    let info = cluster_info(&member).await?;
    if info.bootstrap.contains_key(&id) {
        bail!(
            "--id {} is one of the ids the cluster started with (node at {}); pick an unused id",
            args.id,
            info.bootstrap[&id]
        );
    }
    serve(args, id, info.bootstrap, info.cluster_id, raft_addr, Some((member, raft_addr))).await
}

#[cfg(not(madsim))]
fn data_dir(args: &Args) -> PathBuf {
    args.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("data/node{}", args.id)))
}

/// Opens the data directory and runs the node until it is stopped.
#[cfg(not(madsim))]
async fn serve(
    args: Args,
    id: NodeId,
    raft_addrs: BTreeMap<NodeId, SocketAddr>,
    cluster_id: u64,
    own: SocketAddr,
    join: Option<(String, SocketAddr)>,
) -> anyhow::Result<()> {
    let secret = args.cluster_secret_file.as_deref().map(read_cluster_secret).transpose()?;
    let tls = tls_config(&args)?;
    let data_dir = data_dir(&args);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;

    let opened = std::time::Instant::now();
    let mut storage =
        rocks::RocksStorage::open(&data_dir, rocks::Identity { cluster_id, node_id: args.id })?;
    tracing::info!(node = args.id, data_dir = %data_dir.display(), took_ms = opened.elapsed().as_millis() as u64, "data directory opened");
    if join.is_some() {
        let bootstrap = raft_addrs.iter().map(|(id, a)| (id.0, a.to_string())).collect();
        storage.remember_bootstrap(&bootstrap)?;
    }

    let voters = raft_addrs.keys().copied().collect();
    let mut raft = raft_kv_core::Config::new(id, voters, rand::random());
    raft.snapshot_entries = args.snapshot_entries;
    raft.snapshot_bytes = args.snapshot_bytes as usize;
    raft.snapshot_keep_entries = args.snapshot_keep_entries;
    raft.uncommitted_bytes_max = args.max_uncommitted_bytes as usize;
    if let Some(drift) = args.lease_max_clock_drift {
        raft.lease_ticks = raft_kv_core::lease_ticks_for_drift(raft.election_ticks, 1.0 + drift)
            .context("--lease-max-clock-drift leaves no lease at all")?;
    }
    let mut opts = raft_kv_runtime::NodeOptions::new(
        raft,
        raft_addrs,
        SocketAddr::new(args.bind, own.port()),
        SocketAddr::new(args.bind, args.port),
    );
    opts.transport.cluster_id = cluster_id;
    opts.transport.advertise = Some(own);
    if secret.is_none() && !own.ip().is_loopback() {
        tracing::warn!(raft = %own, "no --cluster-secret-file: anyone who reaches this Raft port can speak for a member");
    }
    opts.transport.secret = secret;
    if let Some((client_tls, peer_tls)) = tls {
        opts.client.tls = Some(client_tls);
        if args.tls_cluster {
            opts.transport.tls = Some(peer_tls);
        }
    }
    opts.tuning.tick = Duration::from_millis(args.tick_ms);
    opts.tuning.request_timeout = Duration::from_millis(args.request_timeout_ms);
    opts.tuning.disk_reserve_bytes = args.disk_reserve_bytes;
    opts.tuning.snapshot.chunk_bytes = args.snapshot_chunk_bytes as usize;
    opts.client.limits.bulk_bytes_max = args.max_bulk_bytes as usize;
    opts.client.pending_request_bytes_max = args.max_pending_request_bytes as usize;
    opts.client.output_bytes_max = args.client_output_buffer_limit as usize;
    opts.client.clients_max = args.maxclients as usize;
    opts.client.requirepass = args.requirepass.clone();
    opts.client.protected_mode = args.protected_mode;
    if args.protected_mode && args.requirepass.is_none() && !args.bind.is_loopback() {
        tracing::warn!(bind = %args.bind, "protected mode: no --requirepass, so only clients on the loopback interface are served");
    }
    opts.client.limits.request_bytes_max =
        opts.client.limits.request_bytes_max.max(2 * args.max_bulk_bytes as usize);

    // Bound before the node starts, so a port in use stops the start with a clear error.
    let metrics_listener = match args.metrics_addr {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    let node = match raft_kv_runtime::start(opts, storage).await {
        Ok(node) => node,
        Err(raft_kv_runtime::StartError::Storage(StorageError::Corrupt(reason))) => {
            return Err(DamagedDir { path: data_dir, reason, running: false }.into());
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(node = args.id, data_dir = %data_dir.display(), redis = %node.redis_addr, raft = %node.raft_addr, "raft-kv ready");
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr().ok();
        tracing::info!(node = args.id, metrics = ?addr, "serving /metrics, /livez and /readyz");
        tokio::spawn(http::serve(listener, node.metrics.clone()));
    }
    if let Some((member, raft_addr)) = join {
        request_join(&member, args.id, raft_addr).await?;
        tracing::info!(node = args.id, via = %member, "added to the cluster as a learner; promoted to voter once caught up");
    }

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = node.task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(StorageError::Corrupt(reason))) => {
                Err(DamagedDir { path: data_dir.clone(), reason, running: true }.into())
            }
            Ok(Err(e)) if is_disk_full(&e) => Err(anyhow::anyhow!(
                "the node stopped: the disk of data directory {} is full ({e}). Nothing it acknowledged is lost: it acknowledges only what it synced. Free space and start it again with the same command: it catches up from its peers. Keep --disk-reserve-bytes free so the node stops taking writes before the disk fills",
                data_dir.display()
            )),
            Ok(Err(e)) => Err(anyhow::Error::new(e).context("the node stopped")),
            Err(e) => Err(anyhow::anyhow!("the node task failed: {e}")),
        },
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; stopping");
            Ok(())
        }
        _ = term.recv() => {
            tracing::info!("terminated; stopping");
            Ok(())
        }
    }
}
