//! The `raft-kv` binary: parses the command line, opens the node's RocksDB data directory and
//! runs the node until it is stopped or its storage fails.

#[cfg(not(madsim))]
mod rocks;

use anyhow::{bail, Context};
use clap::Parser;
use raft_kv_core::NodeId;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A Raft-replicated key-value store that speaks the Redis protocol.
#[derive(Parser, Debug)]
#[command(name = "raft-kv", version)]
struct Args {
    /// This node's id: its 1-based position in --cluster.
    #[arg(long)]
    id: u64,
    /// Raft addresses of every node, comma-separated, in id order.
    #[arg(long, value_delimiter = ',', required = true)]
    cluster: Vec<SocketAddr>,
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
    /// Compact the log (the state machine stands for it) once this many entries have been
    /// applied since the last compaction.
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_entries: u64,
    /// ... or once the log holds this many bytes.
    #[arg(long, default_value_t = 64 << 20, value_parser = clap::value_parser!(u64).range(1..=(1 << 40)))]
    snapshot_bytes: u64,
    /// Applied entries kept after a compaction, so a follower slightly behind catches up from
    /// the log rather than from a snapshot.
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
}

fn parse_drift(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if (0.0..=1.0).contains(&d) => Ok(d),
        _ => Err(format!("'{s}' is not a fraction between 0 and 1 (0.05 means 5%)")),
    }
}

#[cfg(not(madsim))]
#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raft-kv: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(madsim)]
fn main() {
    // The binary runs on real tokio only; the simulation drives the runtime directly.
}

#[cfg(not(madsim))]
async fn run(args: Args) -> anyhow::Result<()> {
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
    let data_dir =
        args.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("data/node{}", args.id)));
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;

    let cluster_id = raft_kv_runtime::cluster_id(&raft_addrs);
    let storage =
        rocks::RocksStorage::open(&data_dir, rocks::Identity { cluster_id, node_id: args.id })?;

    let voters = raft_addrs.keys().copied().collect();
    let mut raft = raft_kv_core::Config::new(id, voters, rand::random());
    raft.snapshot_entries = args.snapshot_entries;
    raft.snapshot_bytes = args.snapshot_bytes as usize;
    raft.snapshot_keep_entries = args.snapshot_keep_entries;
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
    opts.tuning.tick = Duration::from_millis(args.tick_ms);
    opts.tuning.request_timeout = Duration::from_millis(args.request_timeout_ms);
    opts.tuning.snapshot.chunk_bytes = args.snapshot_chunk_bytes as usize;
    opts.client.limits.bulk_bytes_max = args.max_bulk_bytes as usize;
    opts.client.limits.request_bytes_max =
        opts.client.limits.request_bytes_max.max(2 * args.max_bulk_bytes as usize);

    let node = raft_kv_runtime::start(opts, storage).await?;
    tracing::info!(node = args.id, data_dir = %data_dir.display(), redis = %node.redis_addr, raft = %node.raft_addr, "raft-kv ready");

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = node.task => match r {
            Ok(Ok(())) => Ok(()),
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
