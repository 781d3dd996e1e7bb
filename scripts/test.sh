#!/usr/bin/env bash
# Runs every test: core unit tests, runtime and server tests (real raft-kv processes, real
# RocksDB, a real Redis client), then the madsim simulations over SIM_SEEDS seeds (default 500).
# MADSIM_TEST_SEED=N replays one seed exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
target=${CARGO_TARGET_DIR:-$PWD/target}

echo "== the core stays sans-IO (clippy disallowed-methods/types, see core/clippy.toml)"
cargo clippy -q -p raft-kv-core --all-targets -- -D clippy::disallowed_methods -D clippy::disallowed_types

echo "== unit and integration tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

echo "== simulation tests (madsim, ${SIM_SEEDS:-500} seeds per test)"
# The madsim build has its own target dir so switching RUSTFLAGS does not rebuild the other.
if [[ -n ${MADSIM_TEST_SEED:-} ]]; then
  seeds=1
else
  seeds=${SIM_SEEDS:-500}
fi
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="$target/sim" MADSIM_TEST_NUM=$seeds \
  cargo test -p raft-kv-sim --no-fail-fast --test cluster_basics
