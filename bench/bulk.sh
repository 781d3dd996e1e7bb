#!/usr/bin/env bash
# A bulk load of KEYS=1000000 keys of every type, a follower restart after it, a backup taken
# from a follower while a client writes, a restore into a new cluster and a digest of both
# (bench/bulk.py says what it measures). Results in bench/results/bulk.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p raft-kv
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/bulk.py "$target/release/raft-kv"
