#!/usr/bin/env python3
"""Writes to collections of a million members cost what writes to small ones cost, and a
follower installs a snapshot holding them. Started by bench/collections.sh (which builds the
binary): a local 3-node cluster (snapshots every 2,000 entries), a hash, a list, a set and a
sorted set of BIG members each (1,000,000) and of 10 each; then, per type, redis-benchmark
writes to the big one and to the small one at -c 50 (throughput, p50, p99, side by side);
then a follower is killed, its data directory wiped and it is started again: the time until it
has installed the leader's snapshot and caught up, and its peak RSS. Writes collections.txt to
BENCH_OUT (bench/results). Loopback only; every process it starts is stopped by its PID.
"""

import csv
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (shares its process handling and cluster)

OUT = Path(os.environ.get("BENCH_OUT", Path(__file__).resolve().parent / "results"))
BIG = int(os.environ.get("BIG", "1000000"))
N = int(os.environ.get("N", "20000"))
PER_COMMAND = 1000


def resp(*args):
    out = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
    return b"".join(out)


def fill(port, key, kind, count):
    """Writes `count` members into `key` in commands of PER_COMMAND, pipelined 16 deep."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(120)
    sent, answered, buf = 0, 0, b""
    commands = []
    for start in range(0, count, PER_COMMAND):
        ids = range(start, min(start + PER_COMMAND, count))
        if kind == "hash":
            args = ["HSET", key] + [x for i in ids for x in (f"f{i}", "v")]
        elif kind == "list":
            args = ["RPUSH", key] + [f"e{i}" for i in ids]
        elif kind == "set":
            args = ["SADD", key] + [f"m{i}" for i in ids]
        else:
            args = ["ZADD", key] + [x for i in ids for x in (i, f"m{i}")]
        commands.append(resp(*args))
    while answered < len(commands):
        while sent < len(commands) and sent - answered < 16:
            s.sendall(commands[sent])
            sent += 1
        data = s.recv(65536)
        if not data:
            raise SystemExit("collections: the connection closed while filling")
        buf += data
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            if line.startswith(b"-"):
                raise SystemExit(f"collections: {key}: {line.decode()}")
            answered += 1
    s.close()


def write_cost(port, args, r):
    """redis-benchmark of one custom write at -c 50: (req/s, p50 ms, p99 ms)."""
    out = subprocess.run(["redis-benchmark", "-p", str(port), "-n", str(N), "-c", "50", "-r",
                          str(r), "--csv", *args], capture_output=True, text=True, timeout=900)
    for row in csv.reader(out.stdout.splitlines()):
        if row and row[0] != "test":
            return float(row[1]), float(row[4]), float(row[6])
    raise SystemExit(f"collections: no result for {args}: {out.stderr[-300:]}")


def main():
    bench.BIN = sys.argv[1]
    bench.in_workdir(run, OUT, "raft-kv-coll-")


def run(work):
    c = bench.Cluster("coll", 15790, work, ["--snapshot-entries", "2000"])
    for port in c.redis:
        bench.wait_writable(port)
    lead = c.leader()
    port = c.port(lead)
    lines = [f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores: writes to collections of "
             f"{BIG} members and of 10, redis-benchmark -c 50 -n {N}, through the leader"]
    t0 = time.monotonic()
    for kind, key in (("hash", "big:h"), ("list", "big:l"), ("set", "big:s"), ("zset", "big:z")):
        fill(port, key, kind, BIG)
        fill(port, key.replace("big", "small"), kind, 10)
    lines.append(f"filled 4 x {BIG} members in {time.monotonic() - t0:.0f} s "
                 f"({PER_COMMAND} per command)")
    lines.append(f"{'write':34} {'req/s':>9} {'p50 ms':>7} {'p99 ms':>7}")
    tests = [
        ("HSET {k} f__rand_int__ x", "h"),
        ("RPUSH {k} x", "l"),
        ("SADD {k} m__rand_int__", "s"),
        ("ZADD {k} __rand_int__ m__rand_int__", "z"),
    ]
    for template, suffix in tests:
        for size in ("big", "small"):
            key = f"{size}:{suffix}"
            r = BIG if size == "big" else 10
            args = template.format(k=key).split(" ")
            rps, p50, p99 = write_cost(port, args, r)
            lines.append(f"{' '.join(args):34} {rps:>9.0f} {p50:>7.3f} {p99:>7.3f}")
            print(lines[-1], flush=True)
    sizes = {k: bench.cli(port, cmd, k) for k, cmd in
             (("big:h", "hlen"), ("big:l", "llen"), ("big:s", "scard"), ("big:z", "zcard"))}
    lines.append(f"sizes after: {sizes}")
    # A follower with a wiped disk catches up from the leader's snapshot.
    foll = lead % 3 + 1
    c.nodes[foll].kill()
    c.nodes[foll].wait()
    shutil.rmtree(work / f"coll{foll}")
    target = int(bench.info_raft(port).get("commit_index", "0"))
    t0 = time.monotonic()
    c.start_node(foll)

    def caught_up():
        return int(bench.info_raft(c.port(foll)).get("applied_index", "0") or 0) >= target
    bench.wait_until("the wiped follower catching up", caught_up, 1800)
    took = time.monotonic() - t0
    hwm = round(bench.rss_mb(c.nodes[foll].pid, "VmHWM"))
    same = all(bench.cli(c.port(foll), cmd, k) == v for k, v in sizes.items()
               for cmd in [{"big:h": "hlen", "big:l": "llen", "big:s": "scard",
                            "big:z": "zcard"}[k]])
    lines.append(f"a follower wiped and restarted caught up (snapshot install) in {took:.1f} s, "
                 f"peak RSS {hwm} MB; its sizes equal the leader's: {same}")
    text = "\n".join(lines)
    print("\n" + text)
    (OUT / "collections.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
