#!/usr/bin/env bash
# Builds raft-kv and runs the Procfile's 3-node cluster in the foreground; Ctrl-C stops it.
# A tiny Procfile runner, so no goreman or honcho is needed. Extra arguments are ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build -p raft-kv
target=${CARGO_TARGET_DIR:-target}
export RAFT_KV_BIN="$target/debug/raft-kv"
pids=()
stop() {
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT
while IFS= read -r line; do
  [[ $line =~ ^([A-Za-z0-9_-]+):[[:space:]]*(.*)$ ]] || continue
  name=${BASH_REMATCH[1]}
  cmd=${BASH_REMATCH[2]}
  bash -c "exec $cmd" > >(sed -u "s/^/$name | /") 2>&1 &
  pids+=($!)
  echo "started $name (pid $!)"
done < Procfile
echo "cluster up: redis-cli -p 63791 / 63792 / 63793; Ctrl-C stops it"
wait
