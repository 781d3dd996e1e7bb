#!/usr/bin/env python3
"""Measures raft-kv against redis-server in one run, on this machine, and writes the results.

Started by bench/run.sh (which builds the binary); see the header there for what is measured.
Every process it starts is stopped by its PID when it ends; every loop is bounded.
"""

import csv
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = sys.argv[1]
OUT = Path(os.environ.get("BENCH_OUT", Path(__file__).resolve().parent / "results"))
N = int(os.environ.get("N", "100000"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
CLIENTS = [int(c) for c in os.environ.get("CLIENTS", "1,10,50,200,1000").split(",")]
BIG_N = int(os.environ.get("BIG_N", "1000000"))
# Collection tests at -c 50 (redis-benchmark's names); COLL_TESTS= skips them.
COLL_TESTS = [t for t in os.environ.get("COLL_TESTS", "lpush,lpop,sadd,zadd,lrange_100").split(",")
              if t]
# A comma-separated subset of the targets, for quick looks; the default measures all six.
ONLY = [t for t in os.environ.get("TARGETS", "").split(",") if t]
TICKS = os.sysconf("SC_CLK_TCK")

procs = []  # every process this script started


def start(args, log):
    p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(p)
    return p


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def cli(port, *args, timeout=5):
    try:
        r = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True,
                           text=True, timeout=timeout)
        return r.stdout.strip()
    except subprocess.TimeoutExpired:
        return ""


def wait_until(what, cond, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise SystemExit(f"bench: {what} did not happen within {seconds} s")


def info_raft(port):
    out = cli(port, "info", "raft", timeout=2)
    return dict(l.split(":", 1) for l in out.replace("\r", "").splitlines() if ":" in l)


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError):
            pass
    return total / TICKS


def rss_mb(pid, field="VmRSS"):
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Cluster:
    """A local 3-node raft-kv cluster; `extra` are further flags for every node."""

    def __init__(self, name, base_port, work, extra=()):
        self.name, self.work, self.extra = name, work, list(extra)
        self.raft = [base_port + i for i in (1, 2, 3)]
        self.redis = [base_port + 10 + i for i in (1, 2, 3)]
        self.nodes = {}
        for i in (1, 2, 3):
            self.start_node(i)

    def start_node(self, i):
        cluster = ",".join(f"127.0.0.1:{p}" for p in self.raft)
        log = open(self.work / f"{self.name}{i}.log", "a")
        env_args = [BIN, "--id", str(i), "--cluster", cluster, "--port", str(self.redis[i - 1]),
                    "--data-dir", str(self.work / f"{self.name}{i}"), "--worker-threads", "1",
                    *self.extra]
        self.nodes[i] = start(env_args, log)

    def pids(self):
        return [p.pid for p in self.nodes.values()]

    def leader(self):
        def ask():
            lid = info_raft(self.redis[0]).get("leader_id", "none")
            return int(lid) if lid.isdigit() else None
        return wait_until(f"{self.name} electing a leader", ask, 30)

    def port(self, node):
        return self.redis[node - 1]


def wait_writable(port, seconds=60):
    wait_until(f"port {port} accepting a write",
               lambda: cli(port, "set", "__bench_probe", "1", timeout=2) == "OK", seconds)


def benchmark(port, test, clients, pipeline, n, pids):
    """One redis-benchmark run; its throughput, latencies and the CPU the targets spent."""
    before = cpu_seconds(pids)
    r = subprocess.run(["redis-benchmark", "-p", str(port), "-t", test, "-n", str(n), "-c",
                        str(clients), "-P", str(pipeline), "-d", "100", "-r", "100000", "--csv"],
                       capture_output=True, text=True, timeout=900)
    cpu = cpu_seconds(pids) - before
    for row in csv.reader(r.stdout.splitlines()):
        # LRANGE_100's row is named "LRANGE_100 (first 100 elements)".
        if row and row[0].upper().split(" ")[0] == test.upper():
            rps = float(row[1])
            errors = r.stderr.count("Error") + r.stdout.count("Error")
            return {"rps": rps, "p50": float(row[4]), "p99": float(row[6]),
                    "cpu_us_per_op": 1e6 * cpu / n, "errors": errors}
    return {"rps": 0.0, "p50": 0.0, "p99": 0.0, "cpu_us_per_op": 0.0,
            "errors": 1, "stderr": r.stderr[-300:]}


def in_workdir(run, out, prefix):
    """Runs `run(work)` in a new directory; then stops every process started and removes it."""
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        run(work)
    finally:
        for p in procs:
            stop(p, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


def main():
    in_workdir(run, OUT, "raft-kv-bench-")


def run(work):
    redis = start(["redis-server", "--port", "64780", "--save", "", "--appendonly", "no",
                   "--dir", str(work), "--maxclients", "10000"], open(work / "redis.log", "w"))
    aof = start(["redis-server", "--port", "64781", "--save", "", "--appendonly", "yes",
                 "--appendfsync", "always", "--appendfilename", "aof", "--dir", str(work),
                 "--maxclients", "10000"], open(work / "redis-aof.log", "w"))
    plain = Cluster("node", 14790, work)
    lease = Cluster("lease", 14830, work, ["--lease-max-clock-drift", "0.05"])
    for port in (64780, 64781, *plain.redis, *lease.redis):
        wait_writable(port)
    lead, lease_lead = plain.leader(), lease.leader()
    foll, lease_foll = lead % 3 + 1, lease_lead % 3 + 1
    targets = {
        "redis": (64780, [redis.pid]),
        "redis-aof": (64781, [aof.pid]),
        "raft-kv-lead": (plain.port(lead), plain.pids()),
        "raft-kv-foll": (plain.port(foll), plain.pids()),
        "lease-lead": (lease.port(lease_lead), lease.pids()),
        "lease-foll": (lease.port(lease_foll), lease.pids()),
    }
    if ONLY:
        targets = {k: v for k, v in targets.items() if k in ONLY}
    rows = []  # (round, target, test, clients, pipeline, result)
    grid = [(t, c, p) for p in (1, 16) for t in ("set", "get") for c in (50,)]
    grid += [(t, c, 1) for c in CLIENTS if c != 50 for t in ("set", "get")]
    grid += [(t, 50, 1) for t in COLL_TESTS]
    for rnd in range(1, ROUNDS + 1):
        for test, clients, pipeline in grid:
            n = N if clients > 1 else max(N // 20, 1000)
            for name, (port, pids) in targets.items():
                res = benchmark(port, test, clients, pipeline, n, pids)
                rows.append((rnd, name, test.upper(), clients, pipeline, res))
                print(f"round {rnd} {name:13} {test.upper()} -c {clients:<4} -P {pipeline:<2} "
                      f"{res['rps']:>11.0f}/s p99 {res['p99']:.3f} ms "
                      f"cpu {res['cpu_us_per_op']:.1f} us/op errors {res['errors']}", flush=True)
    suite = default_suite(plain.port(foll)) if "raft-kv-foll" in targets else None
    durability = restarts(plain, work, lead) if BIG_N > 0 else None
    report(rows, durability, suite)


def default_suite(port):
    """redis-benchmark with no -t (its whole default suite) against a follower: the tests that
    answered errors. XADD is expected among them: streams are not served."""
    r = subprocess.run(["redis-benchmark", "-p", str(port), "-n", "2000", "-c", "20", "--csv"],
                       capture_output=True, text=True, timeout=900)
    tests = [row[0] for row in csv.reader(r.stdout.splitlines()) if row and row[0] != "test"]
    failed = sorted({line.split(" ")[0] for line in r.stdout.splitlines() + r.stderr.splitlines()
                     if "ERR" in line or "Error" in line})
    return {"tests": tests, "errors": r.stderr.count("ERR") + r.stdout.count("ERR"),
            "error_lines": (r.stderr + r.stdout).count("\n"), "failed": failed,
            "stderr": r.stderr[-400:]}


def restarts(c, work, lead):
    """BIG_N SETs of 100-byte values into the plain cluster, then RSS, a follower's restart
    and catch-up, and every node's restart after kill -9."""
    port = c.port(lead)
    subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-n", str(BIG_N), "-c", "50",
                    "-P", "16", "-d", "100", "-r", str(BIG_N), "-q"], capture_output=True,
                   timeout=1800)
    out = {"writes": BIG_N}
    out["rss_mb_after"] = [round(rss_mb(p.pid)) for p in c.nodes.values()]
    foll = lead % 3 + 1
    c.nodes[foll].kill()
    c.nodes[foll].wait()
    # Writes while it is down, so it has something to catch up with.
    subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-n", "20000", "-c", "50",
                    "-d", "100", "-r", str(BIG_N), "-q"], capture_output=True, timeout=600)
    t0 = time.monotonic()
    c.start_node(foll)
    wait_writable(c.port(foll))
    out["follower_serving_s"] = round(time.monotonic() - t0, 2)
    target = int(info_raft(port).get("commit_index", "0"))

    def caught_up():
        return int(info_raft(c.port(foll)).get("applied_index", "0") or 0) >= target
    wait_until("the restarted follower catching up", caught_up, 120)
    out["follower_caught_up_s"] = round(time.monotonic() - t0, 2)
    for i in (1, 2, 3):
        c.nodes[i].kill()
        c.nodes[i].wait()
    t0 = time.monotonic()
    for i in (1, 2, 3):
        c.start_node(i)
    for i in (1, 2, 3):
        wait_writable(c.port(i))
    out["all_serving_s"] = round(time.monotonic() - t0, 2)
    out["rss_mb_peak_starting"] = [round(rss_mb(p.pid, "VmHWM")) for p in c.nodes.values()]
    return out


def report(rows, durability, suite=None):
    stamp = time.strftime("%Y-%m-%d")
    with open(OUT / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["date", "round", "target", "test", "clients", "pipeline", "rps", "p50_ms",
                    "p99_ms", "cpu_us_per_op", "errors"])
        for rnd, name, test, c, p, r in rows:
            w.writerow([stamp, rnd, name, test, c, p, r["rps"], r["p50"], r["p99"],
                        round(r["cpu_us_per_op"], 2), r["errors"]])
    med = {}
    for _, name, test, c, p, r in rows:
        med.setdefault((name, test, c, p), []).append(r)

    def m(key, field):
        vals = [r[field] for r in med.get(key, [])]
        return statistics.median(vals) if vals else 0.0

    def spread(key):
        vals = [r["rps"] for r in med.get(key, [])]
        mid = statistics.median(vals) if vals else 0
        return (max(vals) - min(vals)) / mid * 100 if mid else 0

    lines = [f"{stamp}, {os.cpu_count()} cores, release build, {ROUNDS} interleaved rounds "
             f"(medians; spread = (max-min)/median of the rounds' throughput); ratio to "
             f"redis-server and to redis-server appendfsync always (aof) of the same run",
             f"{'target':13} {'test':4} {'-c':>4} {'-P':>3} {'req/s':>10} {'spread':>7} "
             f"{'/redis':>7} {'/aof':>6} {'p50 ms':>7} {'p99 ms':>7} {'cpu us/op':>9} {'err':>4}"]
    keys = sorted(med, key=lambda k: (k[3], k[2] != 50, k[2], k[1] != "SET",
                                      list(dict.fromkeys(r[1] for r in rows)).index(k[0])))
    for key in keys:
        name, test, c, p = key
        rps = m(key, "rps")
        base, aof = m(("redis", test, c, p), "rps"), m(("redis-aof", test, c, p), "rps")
        errors = sum(r["errors"] for r in med[key])
        lines.append(f"{name:13} {test:4} {c:>4} {p:>3} {rps:>10.0f} {spread(key):>6.0f}% "
                     f"{rps / base if base else 0:>7.2f} {rps / aof if aof else 0:>6.2f} "
                     f"{m(key, 'p50'):>7.3f} {m(key, 'p99'):>7.3f} "
                     f"{m(key, 'cpu_us_per_op'):>9.1f} {errors:>4}")
    lines.append("")
    if durability:
        lines.append("after {writes} SETs of 100-byte values (-P 16): RSS per node {rss_mb_after} MB; "
                 "a follower killed (-9) and restarted served in {follower_serving_s} s and "
                 "caught up in {follower_caught_up_s} s; all three killed (-9) and restarted "
                 "served in {all_serving_s} s, peak RSS while starting {rss_mb_peak_starting} MB"
                     .format(**durability))
    if suite:
        lines.append(f"redis-benchmark with no -t against a follower ({len(suite['tests'])} tests: "
                     f"{', '.join(suite['tests'])}): error replies {suite['errors']}; "
                     f"stderr tail: {suite['stderr'].strip()!r}")
    text = "\n".join(lines)
    print("\n" + text)
    (OUT / "results.txt").write_text(text + "\n")
    chart(med, m)


def chart(med, m):
    """Throughput and p99 against the number of clients (-P 1), one line per target."""
    targets = ["redis", "redis-aof", "raft-kv-lead", "raft-kv-foll", "lease-lead", "lease-foll"]
    colors = ["#444", "#999", "#c0392b", "#e67e22", "#2471a3", "#5dade2"]
    clients = sorted({k[2] for k in med if k[3] == 1})
    W, H, L, T, PW, PH, GAP = 980, 640, 70, 40, 400, 240, 80
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>']

    def x_of(c, x0):
        lo, hi = math.log10(clients[0]), math.log10(clients[-1])
        return x0 + (math.log10(c) - lo) / ((hi - lo) or 1) * PW

    for row, test in enumerate(("SET", "GET")):
        for col, (field, label) in enumerate((("rps", "requests/s"), ("p99", "p99 ms"))):
            x0, y0 = L + col * (PW + GAP), T + row * (PH + GAP)
            vals = [m((t, test, c, 1), field) for t in targets for c in clients]
            top = max(vals + [1e-9]) * 1.1
            svg.append(f'<text x="{x0}" y="{y0 - 12}" font-size="13">{test} -P 1: {label} by '
                       f'clients</text>')
            svg.append(f'<rect x="{x0}" y="{y0}" width="{PW}" height="{PH}" fill="none" '
                       f'stroke="#ccc"/>')
            for i in range(5):
                v = top * i / 4
                y = y0 + PH - PH * i / 4
                fmt = f"{v:.0f}" if field == "rps" else f"{v:.2f}"
                svg.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end">{fmt}</text>')
            for c in clients:
                svg.append(f'<text x="{x_of(c, x0)}" y="{y0 + PH + 14}" '
                           f'text-anchor="middle">{c}</text>')
            for t, color in zip(targets, colors):
                pts = [(x_of(c, x0), y0 + PH - PH * m((t, test, c, 1), field) / top)
                       for c in clients if (t, test, c, 1) in med]
                if pts:
                    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
                    svg.append(f'<polyline points="{path}" fill="none" stroke="{color}" '
                               f'stroke-width="2"/>')
    for i, (t, color) in enumerate(zip(targets, colors)):
        x = L + i * 150
        svg.append(f'<rect x="{x}" y="{H - 22}" width="12" height="12" fill="{color}"/>')
        svg.append(f'<text x="{x + 16}" y="{H - 12}">{t}</text>')
    svg.append("</svg>")
    (OUT / "clients.svg").write_text("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
