#!/usr/bin/env bash
# The chaos simulation alone (madsim build, own target dir):
#   SIM_SEED=S ./scripts/sim.sh            replays seed S exactly, printing its fault schedule
#   SIM_SEEDS=100000 ./scripts/sim.sh      soaks (SIM_SEED_BASE=B picks the first seed)
#   ./scripts/sim.sh planted               the planted-bug tests only (any libtest filter works)
# A failing seed writes report.txt, history.txt and history.html (a timeline of every client's
# operations, the failing ones highlighted) under target/sim-failures/.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$PWD/target}
filter=${1:-chaos_histories}
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$target/sim" \
  cargo test -p raft-kv-sim --test chaos -- "$filter" --nocapture --test-threads 1
