#!/usr/bin/env bash
# Measures raft-kv against redis-server on this machine, in one run (bench/bench.py does it):
#   redis          redis-server, no persistence (the speed of light)
#   redis-aof      redis-server with appendfsync always (durable, like raft-kv)
#   raft-kv-lead   the leader of a local 3-node raft-kv cluster (every write replicated + fsynced)
#   raft-kv-foll   a follower of it (writes forwarded, reads confirmed with the leader)
#   lease-lead     the leader of a second cluster started with --lease-max-clock-drift 0.05
#   lease-foll     a follower of it (reads answered from the leader's lease, no quorum round)
# redis-benchmark -t set / -t get with 100-byte values over 100,000 keys: -c 50 without and
# with -P 16, then -c 1, 10, 200 and 1000 (CLIENTS); ROUNDS interleaved rounds (3), medians
# with their spread, ratios to both redis-servers, p50/p99, and the CPU time every process of
# a target spent per request (from /proc). Then BIG_N (1,000,000) SETs into the cluster: each
# node's RSS, a follower killed with -9 (time to serve and to catch up), all three killed
# with -9 (time to serve, peak RSS while starting). Writes results.csv, results.txt and
# clients.svg (throughput and p99 by clients) to bench/results (BENCH_OUT). N=100000 requests
# per run; TARGETS=redis,raft-kv-lead measures a subset, BIG_N=0 skips the restarts.
# BENCH_PROFILE=dev uses the debug build. Loopback only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
profile=${BENCH_PROFILE:-release}
target=${CARGO_TARGET_DIR:-target}
if [[ $profile == release ]]; then
  cargo build --release -q -p raft-kv
  bin="$target/release/raft-kv"
else
  cargo build -q -p raft-kv
  bin="$target/debug/raft-kv"
fi
# -c 1000 needs a descriptor per connection in redis-benchmark and in the servers.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/bench.py "$bin"
