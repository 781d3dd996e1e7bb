#!/usr/bin/env python3
"""A bulk load, a backup taken while clients write, and a restore, at a million keys of every
type. Started by bench/bulk.sh (which builds the binary):

1. a local 3-node cluster (metrics on) takes KEYS (1,000,000) keys of each type (string, hash,
   list, set, sorted set; every tenth string with a TTL) through `redis-cli --pipe`, about 5.1
   commands per key: the time, the error replies, the leader changes and terms, the most a
   follower lagged (sampled from /metrics), the node task's slow-step warnings;
2. a follower is restarted: the time until it serves and has caught up;
3. while redis-benchmark writes SETs to the leader, `raft-kv backup` from a follower: time,
   bytes; `raft-kv check-backup`; `raft-kv restore` into three new data directories: time;
4. the restored cluster starts, elects a leader, takes a write, and a digest of every key
   but the benchmark's (`key:*`) of the source follower equals the restored cluster's.

Writes bulk.txt to BENCH_OUT (bench/results). Loopback only; every process it starts is stopped
by its PID; every loop is bounded.
"""

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (shares its process handling and cluster)

OUT = Path(os.environ.get("BENCH_OUT", Path(__file__).resolve().parent / "results"))
KEYS = int(os.environ.get("KEYS", "1000000"))
BASE = 16790


def resp(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def write_load(path, n):
    """The load: per key i a SET, HSET, RPUSH, SADD and ZADD; EXPIRE on every tenth string."""
    with open(path, "wb") as f:
        buf = []
        for i in range(n):
            buf.append(resp("SET", f"s:{i}", f"v{i}"))
            buf.append(resp("HSET", f"h:{i}", "f", i, "g", "x"))
            buf.append(resp("RPUSH", f"l:{i}", "a", i))
            buf.append(resp("SADD", f"st:{i}", "m", i))
            buf.append(resp("ZADD", f"z:{i}", 1, "m", 2, f"n{i}"))
            if i % 10 == 0:
                buf.append(resp("EXPIRE", f"s:{i}", 1000000))
            if len(buf) >= 10000:
                f.write(b"".join(buf))
                buf = []
        f.write(b"".join(buf))
    return n * 5 + (n + 9) // 10


class MetricsCluster(bench.Cluster):
    """bench.Cluster with each node's /metrics on its own port."""

    def start_node(self, i):
        self.extra = [a for a in self.extra if not a.startswith("--metrics-addr")]
        self.extra.append(f"--metrics-addr=127.0.0.1:{self.metrics_port(i)}")
        super().start_node(i)

    def metrics_port(self, i):
        return self.raft[i - 1] + 20


def scrape(port):
    """One node's metrics as {name{labels}: value}; {} if it does not answer in time."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
    return out


class Sampler(threading.Thread):
    """Samples every node's metrics each second: the most any follower lagged, and how many
    samples timed out (a node too busy to answer its metrics within 2 s)."""

    def __init__(self, ports):
        super().__init__(daemon=True)
        self.ports, self.stop_at, self.lag_max, self.missed = ports, None, 0, 0
        self.halt = threading.Event()

    def run(self):
        for _ in range(24 * 3600):  # bounded: a day of samples at most
            if self.halt.is_set():
                return
            for p in self.ports:
                m = scrape(p)
                if not m:
                    self.missed += 1
                for k, v in m.items():
                    if k.startswith("raftkv_raft_follower_lag_entries"):
                        self.lag_max = max(self.lag_max, int(v))
            self.halt.wait(1)


def leader_changes(c):
    return {i: int(scrape(c.metrics_port(i)).get("raftkv_server_leader_changes_seen_total", -1))
            for i in (1, 2, 3)}


def slow_warnings(work, name):
    n = 0
    for i in (1, 2, 3):
        p = work / f"{name}{i}.log"
        if p.exists():
            n += p.read_text(errors="replace").count("held up the node task")
    return n


class Reader:
    """A minimal pipelining RESP client for the digest."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.settimeout(120)
        self.f = self.s.makefile("rb")

    def send(self, cmds):
        self.s.sendall(b"".join(resp(*c) for c in cmds))

    def read(self):
        line = self.f.readline()[:-2]
        t, rest = line[:1], line[1:]
        if t in (b"+", b"-", b":"):
            return line
        if t == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2]
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise SystemExit(f"bulk: unexpected reply {line!r}")


READS = {b"s": ("GET",), b"h": ("HGETALL",), b"l": ("LRANGE", 0, -1), b"st": ("SMEMBERS",),
         b"z": ("ZRANGE", 0, -1, "WITHSCORES")}


def digest(port, skip=b"key:"):
    """(keys, sha256) over every key but `skip*`: its value as its type reads it (hash fields
    and set members sorted) and whether it has a TTL."""
    r = Reader(port)
    keys, cursor = [], b"0"
    for _ in range(10_000_000):
        r.send([("SCAN", cursor, "COUNT", 10000)])
        cursor, page = r.read()
        keys.extend(k for k in page if not k.startswith(skip))
        if cursor == b"0":
            break
    keys.sort()
    h = hashlib.sha256()
    for i in range(0, len(keys), 2000):
        batch = keys[i:i + 2000]
        cmds = []
        for k in batch:
            read = READS.get(k.split(b":")[0], ("TYPE",))
            cmds += [(read[0], k, *read[1:]), ("TTL", k)]
        r.send(cmds)
        for k in batch:
            v, ttl = r.read(), r.read()
            if isinstance(v, list) and k.startswith((b"h:", b"st:")):
                v = sorted(v)
            h.update(repr((k, v, int(ttl[1:]) > 0)).encode())
    return len(keys), h.hexdigest()


def last_line(done):
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[-1] if text else ""


def main():
    bench.BIN = sys.argv[1]
    bench.in_workdir(run, OUT, "raft-kv-bulk-")


def run(work):
    lines = [f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores: {KEYS} keys of each type, "
             f"3 nodes with --worker-threads 1"]

    def say(s):
        lines.append(s)
        print(s, flush=True)

    load = work / "load.resp"
    commands = write_load(load, KEYS)
    c = MetricsCluster("bulk", BASE, work)
    for port in c.redis:
        bench.wait_writable(port)
    lead = c.leader()
    term0 = bench.info_raft(c.port(lead)).get("term")
    changes0 = leader_changes(c)
    sampler = Sampler([c.metrics_port(i) for i in (1, 2, 3)])
    sampler.start()
    t0 = time.monotonic()
    with open(load, "rb") as f:
        pipe = subprocess.run(["redis-cli", "-p", str(c.port(lead)), "--pipe"], stdin=f,
                              capture_output=True, text=True, timeout=7200)
    took = time.monotonic() - t0
    sampler.halt.set()
    sampler.join()
    m = re.search(r"errors: (\d+), replies: (\d+)", pipe.stdout)
    errors, replies = (int(m[1]), int(m[2])) if m else (-1, -1)
    changes = leader_changes(c)
    moved = {i: changes[i] - changes0[i] for i in changes}
    say(f"load: {commands} commands by redis-cli --pipe in {took:.1f} s "
        f"({commands / took:.0f}/s): {replies} replies, {errors} errors")
    say(f"load: leader changes seen per node {moved} (term {term0} -> "
        f"{bench.info_raft(c.port(c.leader())).get('term')}); most a follower lagged "
        f"{sampler.lag_max} entries; metrics samples unanswered within 2 s: {sampler.missed}; "
        f"node-task slow-step warnings: {slow_warnings(work, 'bulk')}")
    if errors:
        kinds = sorted(set(l.split(" ")[0] for l in pipe.stdout.splitlines()
                           if l and not l.startswith(("All data", "Last reply", "errors:"))))
        say(f"load: error replies, by kind: {' '.join(kinds[:10])}")

    # A follower restarted after the load.
    lead = c.leader()
    foll = lead % 3 + 1
    bench.stop(c.nodes[foll])
    target = int(bench.info_raft(c.port(lead)).get("commit_index", "0"))
    t0 = time.monotonic()
    c.start_node(foll)

    def caught_up():
        return int(bench.info_raft(c.port(foll)).get("applied_index", "0") or 0) >= target
    bench.wait_until("the restarted follower catching up", caught_up, 600)
    say(f"restart: a follower stopped after the load served and caught up in "
        f"{time.monotonic() - t0:.1f} s, RSS {bench.rss_mb(c.nodes[foll].pid):.0f} MB")

    # A backup from a follower while a client writes to the leader.
    lead = c.leader()
    foll = lead % 3 + 1
    writer = bench.start(["redis-benchmark", "-p", str(c.port(lead)), "-t", "set", "-n",
                          "10000000", "-c", "10", "-r", "100000", "-q"],
                         open(work / "writer.log", "w"))
    time.sleep(1)
    out = work / "cluster.rkvb"
    t0 = time.monotonic()
    b = subprocess.run([bench.BIN, "backup", "--from", f"127.0.0.1:{c.port(foll)}", "--out",
                        str(out)], capture_output=True, text=True, timeout=3600)
    took = time.monotonic() - t0
    bench.stop(writer, signal.SIGINT)
    if b.returncode != 0 or not out.exists():
        raise SystemExit(f"bulk: backup failed: {b.stderr[-500:]}")
    say(f"backup: from a follower while redis-benchmark wrote SETs to the leader: "
        f"{took:.1f} s, {out.stat().st_size} bytes ({last_line(b)})")
    chk = subprocess.run([bench.BIN, "check-backup", str(out)], capture_output=True, text=True,
                         timeout=3600)
    if chk.returncode != 0:
        raise SystemExit(f"bulk: check-backup refused the file: {chk.stderr[-500:]}")
    say(f"check-backup: {last_line(chk)}")

    rest_raft = [BASE + 100 + i for i in (1, 2, 3)]
    dirs = [a for i in (1, 2, 3) for a in ("--data-dir", str(work / f"rest{i}"))]
    t0 = time.monotonic()
    r = subprocess.run([bench.BIN, "restore", str(out), "--cluster",
                        ",".join(f"127.0.0.1:{p}" for p in rest_raft), *dirs],
                       capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"bulk: restore failed: {r.stderr[-500:]}")
    say(f"restore: into 3 new data directories in {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()
    rc = MetricsCluster("rest", BASE + 100, work)
    for port in rc.redis:
        bench.wait_writable(port, 600)
    say(f"restored cluster: elected a leader and took a write {time.monotonic() - t0:.1f} s "
        f"after starting")

    t0 = time.monotonic()
    src = digest(c.port(foll))
    dst = digest(rc.port(rc.leader()))
    equal = src == dst
    say(f"digest (every key but the writer's key:*; values by type, TTL or not; "
        f"{time.monotonic() - t0:.0f} s): source follower {src[0]} keys {src[1][:16]}, "
        f"restored {dst[0]} keys {dst[1][:16]}: {'EQUAL' if equal else 'DIFFERENT'}")
    text = "\n".join(lines)
    (OUT / "bulk.txt").write_text(text + "\n")
    if not equal or errors:
        raise SystemExit("bulk: the restored cluster differs from its source, or the load had "
                         "errors (see above)")


if __name__ == "__main__":
    main()
