//! `--metrics-addr` on a real cluster: `/metrics` carries the contract's metrics
//! (docs/design/metrics.md), `/readyz` turns not ready on a follower cut off from the others
//! and ready again once they are back, and a real Prometheus (Debian's `prometheus`, started
//! here on loopback) scraping the three nodes sees exactly one leader again after the leader
//! is killed, and the leader-change counter move.

mod common;

use common::{free_ports, wait_until, Cluster};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

/// GET `path` from 127.0.0.1:`port`: (status, body). A test's HTTP client, nothing more.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.split(' ').nth(1)?.parse().ok()?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

fn metric(c: &Cluster, id: usize, line_start: &str) -> Option<f64> {
    let (_, body) = get(c.metrics_ports[id - 1], "/metrics")?;
    body.lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

fn signal(c: &Cluster, id: usize, sig: &str) {
    let pid = c.procs[id - 1].as_ref().expect("running").id();
    let ok = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status().unwrap();
    assert!(ok.success());
}

#[test]
fn metrics_health_and_a_follower_cut_off_turns_not_ready() {
    let c = Cluster::start_with_metrics(3);
    let leader = c.leader(1).expect("a leader");
    let f = (1..=3).find(|i| *i != leader).unwrap();
    let mut con = c.conn(f);
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    let _: String = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    let _: redis::RedisResult<()> = redis::cmd("LPUSH").arg("k").arg("x").query(&mut con);

    // The gauges are set every 100 ms: wait until they show the leader.
    wait_until(Duration::from_secs(5), || {
        (metric(&c, f, "raftkv_server_has_leader ")? == 1.0).then_some(())
    })
    .expect("the follower's gauges never showed a leader");
    let (status, body) = get(c.metrics_ports[f - 1], "/metrics").unwrap();
    assert_eq!(status, 200);
    for line in [
        "raftkv_server_has_leader 1",
        "raftkv_server_is_leader 0",
        "raftkv_server_is_member 1",
        "raftkv_command_errors_total{kind=\"WRONGTYPE\"} 1",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in:\n{body}");
    }
    // The cluster's start-up check wrote through some node too.
    for cmd in ["set", "get", "lpush"] {
        let n = metric(&c, f, &format!("raftkv_commands_total{{command=\"{cmd}\"}}"));
        assert!(n.is_some_and(|n| n >= 1.0), "{cmd}: {n:?}");
    }
    assert!(body.contains("# EOF"), "{body}");
    // Without --lease-max-clock-drift every read takes a ReadIndex round (a follower's, the
    // leader's answer).
    // (The reply goes before the count: wait for it.)
    let reads = wait_until(Duration::from_secs(5), || {
        metric(&c, f, "raftkv_reads_total{mode=\"read_index\"} ").filter(|n| *n >= 1.0)
    });
    assert!(reads.is_some(), "{body}");
    assert!(!body.contains("mode=\"lease\""), "{body}");
    let lead = get(c.metrics_ports[leader - 1], "/metrics").unwrap().1;
    assert!(lead.lines().any(|l| l == "raftkv_server_is_leader 1"), "{lead}");
    assert!(
        lead.lines()
            .any(|l| l.starts_with(&format!("raftkv_raft_follower_lag_entries{{peer=\"{f}\"}}"))),
        "{lead}"
    );
    assert!(metric(&c, leader, "raftkv_disk_wal_fsync_duration_seconds_count").unwrap() > 0.0);
    assert!(metric(&c, leader, "raftkv_proposals_applied_total").unwrap() >= 1.0);
    for id in 1..=3 {
        assert_eq!(get(c.metrics_ports[id - 1], "/livez").unwrap(), (200, "ok\n".into()));
        let ready = wait_until(Duration::from_secs(5), || {
            (get(c.metrics_ports[id - 1], "/readyz")?.0 == 200).then_some(())
        });
        assert!(ready.is_some(), "node {id} never ready");
    }
    assert_eq!(get(c.metrics_ports[f - 1], "/nope").unwrap().0, 404);

    // The follower cut off: the two others stopped (SIGSTOP), so it hears from no one.
    let others: Vec<usize> = (1..=3).filter(|i| *i != f).collect();
    for &o in &others {
        signal(&c, o, "STOP");
    }
    let not_ready = wait_until(Duration::from_secs(10), || {
        let (s, body) = get(c.metrics_ports[f - 1], "/readyz")?;
        (s == 503).then_some(body)
    });
    for &o in &others {
        signal(&c, o, "CONT");
    }
    let body = not_ready.expect("the cut-off follower stayed ready");
    assert!(body.starts_with("not ready: no leader"), "{body}");
    assert_eq!(get(c.metrics_ports[f - 1], "/livez").unwrap().0, 200, "cut off but alive");
    let back = wait_until(Duration::from_secs(10), || {
        (get(c.metrics_ports[f - 1], "/readyz")?.0 == 200).then_some(())
    });
    assert!(back.is_some(), "the follower did not turn ready after the others came back");
}

#[test]
fn reads_count_by_how_they_were_confirmed_and_served() {
    // A cluster whose leader holds a lease (every heartbeat renews it).
    let ports = free_ports(9);
    let mut c = Cluster {
        dir: tempfile::tempdir().unwrap(),
        raft_ports: ports[..3].to_vec(),
        redis_ports: ports[3..6].to_vec(),
        procs: (0..3).map(|_| None).collect(),
        extra_args: vec!["--lease-max-clock-drift".into(), "0.05".into()],
        metrics_ports: ports[6..].to_vec(),
    };
    for id in 1..=3 {
        c.start_node(id);
    }
    c.wait_writable();
    let leader = c.leader(1).expect("a leader");
    let f = (1..=3).find(|i| *i != leader).unwrap();
    let count = |id: usize, mode: &str| {
        metric(&c, id, &format!("raftkv_reads_total{{mode=\"{mode}\"}} ")).unwrap_or(0.0)
    };
    let mut con = c.conn(leader);
    // The leader's reads: by its lease, once it holds one.
    let by_lease = wait_until(Duration::from_secs(10), || {
        let _: Option<String> = redis::cmd("GET").arg("k").query(&mut con).ok()?;
        (count(leader, "lease") >= 1.0).then_some(())
    });
    assert!(by_lease.is_some(), "no read on the leader counted as a lease read");
    // A follower's: the leader's answer, a round trip whatever the leader used.
    let mut fcon = c.conn(f);
    let before = count(f, "read_index");
    let _: Option<String> = redis::cmd("GET").arg("k").query(&mut fcon).unwrap();
    // (The reply goes before the count: wait for it.)
    let counted = wait_until(Duration::from_secs(5), || {
        (count(f, "read_index") == before + 1.0).then_some(())
    });
    assert!(counted.is_some(), "{} read_index reads on the follower", count(f, "read_index"));
    assert_eq!(count(f, "lease"), 0.0);
    // A read that walks a large collection: off the node task.
    let fields: Vec<String> = (0..5000).map(|i| format!("f{i}")).collect();
    let mut hset = redis::cmd("HSET");
    hset.arg("big");
    for f in &fields {
        hset.arg(f).arg(1);
    }
    let _: i64 = hset.query(&mut con).unwrap();
    let all: std::collections::HashMap<String, String> =
        redis::cmd("HGETALL").arg("big").query(&mut con).unwrap();
    assert_eq!(all.len(), 5000);
    let off =
        wait_until(Duration::from_secs(5), || (count(leader, "off_task") == 1.0).then_some(()));
    assert!(off.is_some(), "{} off-task reads", count(leader, "off_task"));
}

#[test]
fn a_port_in_use_for_metrics_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ports = free_ports(2);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::BIN)
        .args(["--id", "1", "--cluster", &format!("127.0.0.1:{}", ports[0])])
        .args(["--port", &ports[1].to_string()])
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--metrics-addr", &taken.local_addr().unwrap().to_string()])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen for metrics (--metrics-addr)"), "{err}");
}

/// A Prometheus server scraping the three nodes every 200 ms, its data in `dir`.
struct Prometheus {
    child: std::process::Child,
    port: u16,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    fn start(dir: &std::path::Path, targets: &[u16]) -> Option<Prometheus> {
        if Command::new("prometheus").arg("--version").output().is_err() {
            return None;
        }
        let port = free_ports(1)[0];
        let targets: Vec<String> = targets.iter().map(|p| format!("'127.0.0.1:{p}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\nscrape_configs:\n  - job_name: raft-kv\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        let file = dir.join("prometheus.yml");
        std::fs::write(&file, config).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap();
        let p = Prometheus { child, port };
        wait_until(Duration::from_secs(30), || (get(port, "/-/ready")?.0 == 200).then_some(()))
            .expect("prometheus did not become ready");
        Some(p)
    }

    /// An instant PromQL query's single value (None: no result, or not one).
    fn value(&self, query: &str) -> Option<f64> {
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = get(self.port, &format!("/api/v1/query?query={q}"))?;
        if status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }
}

#[test]
fn prometheus_sees_one_leader_again_after_the_leader_is_killed() {
    let mut c = Cluster::start_with_metrics(3);
    let dir = tempfile::tempdir().unwrap();
    let Some(prom) = Prometheus::start(dir.path(), &c.metrics_ports) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus is not installed: CI must run this test against it (apt-get install prometheus)"
        );
        eprintln!("prometheus is not installed: skipped");
        return;
    };
    // (nodes up, leaders among them), once `up` nodes are up and one leads; else the last seen.
    let one_leader = |prom: &Prometheus, up: f64| {
        let mut seen = None;
        wait_until(Duration::from_secs(20), || {
            let now = prom.value("sum(up{job=\"raft-kv\"})")?;
            let leaders = prom.value("sum(raftkv_server_is_leader and on(instance) up == 1)")?;
            seen = Some((now, leaders));
            (now == up && leaders == 1.0).then_some(())
        })
        .map_or(seen, |()| Some((up, 1.0)))
    };
    assert_eq!(one_leader(&prom, 3.0), Some((3.0, 1.0)), "three nodes up and one leader");
    let leader = c.leader(1).expect("a leader");
    let survivors = format!(
        "sum(raftkv_server_leader_changes_seen_total{{instance!=\"127.0.0.1:{}\"}})",
        c.metrics_ports[leader - 1]
    );
    let changes_before = prom.value(&survivors).expect("the survivors' leader-change counters");
    c.kill(leader);
    // The dead node's series go stale; the two others elect a new leader.
    let seen = one_leader(&prom, 2.0);
    assert_eq!(seen, Some((2.0, 1.0)), "exactly one leader among the two nodes left");
    let changes_after = wait_until(Duration::from_secs(10), || {
        let v = prom.value(&survivors)?;
        (v > changes_before).then_some(v)
    });
    assert!(
        changes_after.is_some(),
        "the survivors' leader-change counters did not move (before: {changes_before})"
    );
}

#[test]
fn redis_exporter_scrapes_a_node_without_error() {
    let c = Cluster::start(3);
    let leader = c.leader(1).expect("a leader");
    let mut con = c.conn(leader);
    for i in 0..10 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg(i).query(&mut con).unwrap();
    }
    let _: () = redis::cmd("SET").arg("t").arg(1).arg("EX").arg(100).query(&mut con).unwrap();
    let _: Option<String> = redis::cmd("GET").arg("nothing").query(&mut con).unwrap();
    let port = free_ports(1)[0];
    let exporter = Command::new("prometheus-redis-exporter")
        .arg(format!("-redis.addr=redis://127.0.0.1:{}", c.redis_ports[leader - 1]))
        .arg(format!("-web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let Ok(mut exporter) = exporter else {
        assert!(
            std::env::var_os("CI").is_none(),
            "prometheus-redis-exporter is not installed: CI must run this test against it"
        );
        eprintln!("prometheus-redis-exporter is not installed: skipped");
        return;
    };
    let body = wait_until(Duration::from_secs(20), || {
        let (s, body) = get(port, "/metrics")?;
        (s == 200 && body.contains("redis_up")).then_some(body)
    });
    let _ = exporter.kill();
    let out = exporter.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    let body = body.unwrap_or_else(|| panic!("the exporter served no metrics; its log:\n{log}"));
    let value = |name: &str| -> Option<f64> {
        body.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
    };
    assert_eq!(value("redis_up "), Some(1.0), "{body}");
    // An error would be a series labelled with its text, valued 1.
    assert_eq!(value("redis_exporter_last_scrape_error{err=\"\"} "), Some(0.0), "{body}\n{log}");
    assert!(
        !body
            .lines()
            .any(|l| l.starts_with("redis_exporter_last_scrape_error{err=\"") && l.ends_with(" 1")),
        "{body}"
    );
    assert!(value("redis_commands_total{cmd=\"set\"} ").is_some_and(|n| n >= 11.0), "{body}");
    assert!(value("redis_memory_used_bytes ").is_some_and(|n| n > 0.0), "{body}");
    assert!(value("redis_db_keys{db=\"db0\"} ").is_some_and(|n| n >= 1.0), "{body}");
    assert_eq!(value("redis_db_keys_expiring{db=\"db0\"} "), Some(1.0), "{body}");
    assert!(value("redis_keyspace_misses_total ").is_some_and(|n| n >= 1.0), "{body}");
    // INFO cpu and the stats it reads as counters.
    assert!(value("redis_cpu_user_seconds_total ").is_some_and(|n| n > 0.0), "{body}");
    assert!(value("redis_cpu_sys_children_seconds_total ").is_some(), "{body}");
    assert_eq!(value("redis_rejected_connections_total "), Some(0.0), "{body}");
    assert!(value("redis_expired_keys_total ").is_some(), "{body}");
    assert!(!log.to_lowercase().contains("error"), "the exporter logged an error:\n{log}");
}

#[test]
fn info_sections_slowlog_and_commandstats_as_redis_tools_read_them() {
    let c = Cluster::start(3);
    let leader = c.leader(1).expect("a leader");
    let f = (1..=3).find(|i| *i != leader).unwrap();
    let mut con = c.conn(leader);
    let q = |con: &mut redis::Connection, args: &[&str]| -> redis::Value {
        redis::cmd(args[0]).arg(&args[1..]).query(con).unwrap_or(redis::Value::Nil)
    };
    q(&mut con, &["CONFIG", "SET", "slowlog-log-slower-than", "0"]);
    q(&mut con, &["CLIENT", "SETNAME", "info-test"]);
    q(&mut con, &["SET", "a", "1"]);
    q(&mut con, &["GET", "a"]);
    q(&mut con, &["GET", "missing"]);
    q(&mut con, &["LPUSH", "a", "x"]);
    let all: String = redis::cmd("INFO").arg("all").query(&mut con).unwrap();
    for section in [
        "# Server",
        "# Clients",
        "# Memory",
        "# Persistence",
        "# Stats",
        "# Replication",
        "# CPU",
        "# Commandstats",
        "# Errorstats",
        "# Keyspace",
        "# Raft",
    ] {
        assert!(all.contains(&format!("{section}\r\n")), "no {section}:\n{all}");
    }
    for line in ["role:master\r\n", "connected_slaves:2\r\n", "errorstat_WRONGTYPE:count=1\r\n"] {
        assert!(all.contains(line), "no {line:?}:\n{all}");
    }
    assert!(all.contains("cmdstat_set:calls="), "{all}");
    assert!(all.contains("cmdstat_lpush:calls=1,") && all.contains(",failed_calls=1\r\n"), "{all}");
    let field = |text: &str, name: &str| -> Option<u64> {
        text.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))?.trim().parse().ok())
    };
    assert!(field(&all, "keyspace_misses").is_some_and(|n| n >= 1), "{all}");
    assert!(field(&all, "keyspace_hits").is_some_and(|n| n >= 1), "{all}");
    assert!(field(&all, "used_memory").is_some_and(|n| n > 0), "{all}");
    assert!(field(&all, "total_commands_processed").is_some_and(|n| n >= 5), "{all}");
    // Seconds to the microsecond, as Redis writes getrusage's; the node has used some.
    let cpu = |name: &str| -> f64 {
        let v = all.lines().find_map(|l| l.strip_prefix(&format!("{name}:"))).expect(name);
        assert_eq!(v.split_once('.').map(|(_, us)| us.len()), Some(6), "{name}:{v}");
        v.parse().unwrap()
    };
    assert!(cpu("used_cpu_sys") + cpu("used_cpu_user") > 0.0, "{all}");
    assert!(cpu("used_cpu_sys_children") >= 0.0 && cpu("used_cpu_user_children") >= 0.0);
    assert_eq!(field(&all, "rejected_connections"), Some(0), "{all}");
    assert!(field(&all, "expired_keys").is_some(), "{all}");
    let default: String = redis::cmd("INFO").query(&mut con).unwrap();
    assert!(!default.contains("# Commandstats") && default.contains("# Stats"), "{default}");
    let repl: String = redis::cmd("INFO").arg("replication").query(&mut c.conn(f)).unwrap();
    assert!(
        repl.contains("role:slave\r\n") && repl.contains("master_link_status:up\r\n"),
        "{repl}"
    );

    // Every command is slow at threshold 0: the latest is first, with its arguments.
    let log: Vec<(i64, i64, i64, Vec<String>, String, String)> =
        redis::cmd("SLOWLOG").arg("GET").arg(2).query(&mut con).unwrap();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0].3, vec!["INFO".to_string()], "{log:?}");
    assert!(log[0].0 > log[1].0 && log[0].4.starts_with("127.0.0.1:"), "{log:?}");
    assert_eq!((log[0].5.as_str(), log[1].5.as_str()), ("info-test", "info-test"), "{log:?}");
    let n: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut con).unwrap();
    assert!(n >= 7, "{n}");
    q(&mut con, &["CONFIG", "SET", "slowlog-log-slower-than", "-1"]);
    q(&mut con, &["SLOWLOG", "RESET"]);
    q(&mut con, &["SET", "b", "2"]);
    let n: i64 = redis::cmd("SLOWLOG").arg("LEN").query(&mut con).unwrap();
    assert_eq!(n, 0, "off at -1");
}

#[test]
fn a_client_refused_for_maxclients_counts_in_info_and_metrics() {
    let ports = free_ports(3);
    let mut c = Cluster {
        dir: tempfile::tempdir().unwrap(),
        raft_ports: ports[..1].to_vec(),
        redis_ports: ports[1..2].to_vec(),
        procs: vec![None],
        extra_args: vec!["--maxclients".into(), "2".into()],
        metrics_ports: ports[2..].to_vec(),
    };
    c.start_node(1);
    c.wait_writable();
    // Two clients served (once wait_writable's has gone), a third refused.
    let mut con = c.conn(1);
    wait_until(Duration::from_secs(5), || {
        let info: String = redis::cmd("INFO").arg("clients").query(&mut con).ok()?;
        info.contains("\r\nconnected_clients:1\r\n").then_some(())
    })
    .expect("the start-up check's client never left");
    let mut other = c.conn(1);
    let pong: String = redis::cmd("PING").query(&mut other).unwrap();
    assert_eq!(pong, "PONG");
    // The start-up checks' connections may have overlapped and been refused too.
    let rejected = |con: &mut redis::Connection| -> u64 {
        let info: String = redis::cmd("INFO").arg("stats").query(con).unwrap();
        let v = info.lines().find_map(|l| l.strip_prefix("rejected_connections:"));
        v.unwrap_or_else(|| panic!("{info}")).trim().parse().unwrap()
    };
    let before = rejected(&mut con);
    let mut third = TcpStream::connect(("127.0.0.1", c.redis_ports[0])).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut refused = String::new();
    let _ = third.read_to_string(&mut refused);
    assert_eq!(refused, "-ERR max number of clients reached\r\n");
    assert_eq!(rejected(&mut con), before + 1);
    let n = metric(&c, 1, "raftkv_client_connections_rejected_total ");
    assert_eq!(n, Some((before + 1) as f64));
}
