#!/usr/bin/env bash
# Runs every test: core unit tests, runtime and server tests (real raft-kv processes, real
# RocksDB, a real Redis client), then the madsim simulations over SIM_SEEDS seeds (default 500).
# MADSIM_TEST_SEED=N replays one seed exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
target=${CARGO_TARGET_DIR:-$PWD/target}

echo "== formatting (cargo fmt --check)"
cargo fmt --all --check

echo "== lints: clippy with warnings denied; the core stays sans-IO (disallowed methods and types, core/clippy.toml)"
cargo clippy -q --workspace --all-targets -- -D warnings

echo "== unit and integration tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

echo "== deployment examples (promtool check/test of deploy/prometheus, the dashboard's queries, the systemd unit)"
./scripts/check-deploy.sh

echo "== simulation tests (madsim)"
# The madsim build has its own target dir so switching RUSTFLAGS does not rebuild the other.
# cluster_basics: directed scenarios, SIM_BASICS_SEEDS seeds each (MADSIM_TEST_SEED=N replays).
# chaos: SIM_SEEDS seeded chaos runs checked for linearizability and invariants (SIM_SEED=S
# replays one), the planted bugs each caught, and one seed run twice with identical traces.
if [[ -n ${MADSIM_TEST_SEED:-} ]]; then
  basics=1
else
  basics=${SIM_BASICS_SEEDS:-200}
fi
export RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$target/sim"
# The simulation's own code compiles only under madsim: linted here.
cargo clippy -q -p raft-kv-sim --all-targets -- -D warnings
status=0
MADSIM_TEST_NUM=$basics cargo test -p raft-kv-sim --no-fail-fast --test cluster_basics || status=1
SIM_SEEDS=${SIM_SEEDS:-15000} cargo test -p raft-kv-sim --no-fail-fast --test chaos \
  -- --test-threads 1 --nocapture || status=1
exit $status
