#!/usr/bin/env bash
# Writes to collections of a million members against writes to small ones, and a snapshot
# install holding them (bench/collections.py says what it measures). BIG=1000000 members per
# collection, N=20000 writes per measurement; results in bench/results/collections.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
target=${CARGO_TARGET_DIR:-target}
cargo build --release -q -p raft-kv
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 bench/collections.py "$target/release/raft-kv"
