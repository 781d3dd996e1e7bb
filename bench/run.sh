#!/usr/bin/env bash
# Measures raft-kv against redis-server on this machine, in one run: redis-benchmark
# -t set,get -n $N -c 50, without and with -P 16, against
#   redis          redis-server, no persistence (the speed of light)
#   redis-aof      redis-server with appendfsync always (durable, like raft-kv)
#   raft-kv-lead   the leader of a local 3-node raft-kv cluster (every write replicated + fsynced)
#   raft-kv-foll   a follower of it (writes forwarded, reads confirmed with the leader)
#   lease-lead     the leader of a second cluster started with --lease-max-clock-drift 0.05
#   lease-foll     a follower of it (reads answered from the leader's lease, no quorum round)
# and prints throughput, p50 and p99 with ratios against redis. Loopback only; stops by itself.
# BENCH_PROFILE=dev uses the debug build (faster to build, slower to run). N=100000 by default.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
N=${N:-100000}
profile=${BENCH_PROFILE:-release}
target=${CARGO_TARGET_DIR:-target}
if [[ $profile == release ]]; then
  cargo build --release -q -p raft-kv
  bin="$target/release/raft-kv"
else
  cargo build -q -p raft-kv
  bin="$target/debug/raft-kv"
fi
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

redis-server --port 64780 --save '' --appendonly no --dir "$work" --logfile "$work/redis.log" &
pids+=($!)
redis-server --port 64781 --save '' --appendonly yes --appendfsync always --dir "$work" \
  --appendfilename aof --logfile "$work/redis-aof.log" &
pids+=($!)
cluster=127.0.0.1:14791,127.0.0.1:14792,127.0.0.1:14793
lease_cluster=127.0.0.1:14801,127.0.0.1:14802,127.0.0.1:14803
for id in 1 2 3; do
  RUST_LOG=warn "$bin" --id $id --cluster $cluster --port 6479$id --data-dir "$work/node$id" \
    >"$work/node$id.log" 2>&1 &
  pids+=($!)
  RUST_LOG=warn "$bin" --id $id --cluster $lease_cluster --port 6480$id \
    --data-dir "$work/lease$id" --lease-max-clock-drift 0.05 >"$work/lease$id.log" 2>&1 &
  pids+=($!)
done

wait_ok() { # port: wait (bounded) until a SET succeeds
  for _ in $(seq 1 200); do
    [[ $(redis-cli -p "$1" set __bench_probe 1 2>/dev/null) == OK ]] && return 0
    sleep 0.1
  done
  echo "bench: port $1 never accepted a write" >&2
  exit 1
}
for p in 64780 64781 64791 64792 64793 64801 64802 64803; do wait_ok $p; done
leader=$(redis-cli -p 64791 info raft | tr -d '\r' | sed -n 's/^leader_id://p')
follower=$(( leader % 3 + 1 ))
lease_leader=$(redis-cli -p 64801 info raft | tr -d '\r' | sed -n 's/^leader_id://p')
lease_follower=$(( lease_leader % 3 + 1 ))

declare -A rps p50 p99
run() { # name port pipeline
  local out
  out=$(redis-benchmark -p "$2" -t set,get -n "$N" -c 50 -P "$3" --csv 2>/dev/null)
  while IFS=, read -r test r _avg _min p50v _p95 p99v _max; do
    test=${test//\"/}
    [[ $test == SET || $test == GET ]] || continue
    rps["$1,$3,$test"]=${r//\"/}
    p50["$1,$3,$test"]=${p50v//\"/}
    p99["$1,$3,$test"]=${p99v//\"/}
  done <<<"$out"
}
targets=(redis redis-aof raft-kv-lead raft-kv-foll lease-lead lease-foll)
declare -A port=([redis]=64780 [redis-aof]=64781 [raft-kv-lead]=$((64790 + leader))
  [raft-kv-foll]=$((64790 + follower)) [lease-lead]=$((64800 + lease_leader))
  [lease-foll]=$((64800 + lease_follower)))
for pl in 1 16; do
  for t in "${targets[@]}"; do run "$t" "${port[$t]}" "$pl"; done
done

echo
echo "redis-benchmark -n $N -c 50, $profile build, $(nproc) cores; ratio = raft-kv or redis-aof / redis"
printf '%-14s %-4s %-3s %12s %7s %9s %9s\n' target test -P 'req/s' ratio 'p50 ms' 'p99 ms'
for pl in 1 16; do
  for test in SET GET; do
    base=${rps["redis,$pl,$test"]:-0}
    for t in "${targets[@]}"; do
      r=${rps["$t,$pl,$test"]:-0}
      ratio=$(awk -v a="$r" -v b="$base" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
      printf '%-14s %-4s %-3s %12s %7s %9s %9s\n' "$t" "$test" "$pl" "$r" "$ratio" \
        "${p50["$t,$pl,$test"]:--}" "${p99["$t,$pl,$test"]:--}"
    done
  done
done
