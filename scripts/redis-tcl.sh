#!/usr/bin/env bash
# Redis's own TCL tests (`tests/` of Debian's redis 7.0.15 source package) in external-server
# mode, against a follower of a local 3-node raft-kv cluster and against redis-server, side by
# side (issue 15). The tags that need a debug, replication or persistence server are skipped;
# so is the check of OBJECT ENCODING (TCL_IGNORE_ENCODING=0 keeps it), which raft-kv does not
# answer yet.
#
#   scripts/redis-tcl.sh [unit ...]      default: unit/type/hash; e.g. unit/type/list
#
# The first run adds a deb-src line for Debian's suite (root, apt-get) and fetches the sources
# into $HOME/.cache/raft-kv/redis-tcl. Logs: $HOME/.cache/raft-kv/redis-tcl/logs/. Loopback
# only; every process it starts is stopped on exit. Exits 1 when raft-kv passes fewer tests of
# a unit than redis-server (a unit stops at its first exception, e.g. an unknown command).
set -euo pipefail
cd "$(dirname "$0")/.."
units=("${@:-unit/type/hash}")
cache=${REDIS_TCL_DIR:-$HOME/.cache/raft-kv/redis-tcl}
src=$cache/redis-7.0.15
logs=$cache/logs
mkdir -p "$cache" "$logs"

if ! command -v tclsh >/dev/null || ! command -v redis-server >/dev/null; then
  apt-get update -qq
  # Debian starts a redis-server service on port 6379 when it installs one; it is left alone.
  apt-get install -y tcl redis-server
fi
if [[ ! -f $src/runtest ]]; then
  if ! grep -rqs '^Types: deb-src\|^deb-src ' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    codename=$(. /etc/os-release && echo "$VERSION_CODENAME")
    cat >/etc/apt/sources.list.d/raft-kv-deb-src.sources <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $codename $codename-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  apt-get update -qq
  (cd "$cache" && apt-get source --download-only redis && tar xzf redis_7.0.15.orig.tar.gz) || {
    echo "redis-tcl: could not fetch Debian's redis 7.0.15 sources into $cache" >&2
    exit 1
  }
fi

# The target dir CI uses (.ci/run), where RocksDB is already built.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/raft-kv/target}
cargo build -q -p raft-kv

redis_port=46380
for port in "$redis_port" 46391 46392 46393 46401 46402 46403; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "redis-tcl: port $port is in use; the tests would run against (and flush) whatever is there" >&2
    exit 1
  fi
done

work=$(mktemp -d)
pids=()
stop() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap stop EXIT
trap 'exit 130' INT TERM
bin=$work/raft-kv
cp "$CARGO_TARGET_DIR/debug/raft-kv" "$bin"

redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
  --dir "$work" >"$logs/redis-server.log" 2>&1 &
pids+=($!)
peers=127.0.0.1:46401,127.0.0.1:46402,127.0.0.1:46403
for i in 1 2 3; do
  "$bin" --id "$i" --cluster "$peers" --port "4639$i" --data-dir "$work/node$i" \
    --worker-threads 1 >"$logs/node$i.log" 2>&1 &
  pids+=($!)
done
# A follower that knows its leader: the node the tests talk to forwards writes and confirms
# reads. (Every node says follower until an election.)
follower=
for _ in $(seq 1 100); do
  for i in 1 2 3; do
    info=$(redis-cli -p "4639$i" INFO raft 2>/dev/null || true)
    if grep -q '^role:follower' <<<"$info" && ! grep -q '^leader_id:none' <<<"$info" &&
      grep -q '^leader_id:' <<<"$info"; then
      follower=4639$i
    fi
  done
  [[ -n $follower ]] && redis-cli -p "$redis_port" PING >/dev/null 2>&1 && break
  sleep 0.1
done
[[ -n $follower ]] || { echo "redis-tcl: the cluster did not elect a leader" >&2; exit 1; }
for pid in "${pids[@]}"; do
  kill -0 "$pid" 2>/dev/null || { echo "redis-tcl: a server exited at start (logs: $logs)" >&2; exit 1; }
done

args=(--singledb --clients 1 --tags -needs:debug --tags -needs:repl --tags -needs:save
  --tags -needs:config-maxmemory --tags -needs:reset --tags -external:skip)
[[ ${TCL_IGNORE_ENCODING:-1} == 1 ]] && args+=(--ignore-encoding)

run() { # side port unit
  local log
  log="$logs/$1-${3//\//-}.log"
  (cd "$src" && timeout 1200 ./runtest --host 127.0.0.1 --port "$2" --single "$3" "${args[@]}") \
    2>&1 | sed 's/\x1b\[[0-9;]*m//g' >"$log" || true
  echo "$log"
}
count() { grep -c "^\[$1\]" "$2" || true; }

printf '%-22s %8s %8s %8s  %s\n' unit redis raft-kv ratio "raft-kv: first failures"
status=0
for unit in "${units[@]}"; do
  redis_log=$(run redis "$redis_port" "$unit")
  rkv_log=$(run raft-kv "$follower" "$unit")
  r=$(count ok "$redis_log")
  k=$(count ok "$rkv_log")
  ratio=$(awk -v k="$k" -v r="$r" 'BEGIN { printf "%.0f%%", r ? 100 * k / r : 0 }')
  printf '%-22s %8s %8s %8s\n' "$unit" "$r" "$k" "$ratio"
  grep -E '^\[(err|exception)\]' "$rkv_log" | head -5 | sed 's/^/    /'
  [[ $k -ge $r ]] || status=1
done
echo "logs: $logs"
exit $status
