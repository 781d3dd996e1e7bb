//! Membership changes with real processes: a running cluster grows to five nodes and shrinks
//! back to three while a client writes, and a node whose disk was wiped is removed and joins
//! again, catching up from a snapshot.

mod common;

use common::{free_ports, wait_until, Cluster, BIN};
use redis::Commands;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A node started with --join, on its own ports and data directory.
struct Joiner {
    redis_port: u16,
    child: Child,
}

impl Drop for Joiner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn join(c: &Cluster, id: usize, via: usize, extra: &[&str]) -> Joiner {
    let ports = free_ports(2);
    let data = c.dir.path().join(format!("joiner{id}"));
    let child = Command::new(BIN)
        .args(["--id", &id.to_string(), "--join"])
        .arg(format!("127.0.0.1:{}", c.redis_ports[via - 1]))
        .arg("--raft-addr")
        .arg(format!("127.0.0.1:{}", ports[0]))
        .arg("--port")
        .arg(ports[1].to_string())
        .arg("--data-dir")
        .arg(data)
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn raft-kv --join");
    Joiner { redis_port: ports[1], child }
}

fn info_of(port: u16) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(2)).ok()?;
    con.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    redis::cmd("INFO").arg("raft").query(&mut con).ok()
}

/// (voters, learners) as the node on `port` reports them.
fn members(port: u16) -> Option<(Vec<u64>, Vec<u64>)> {
    let info = info_of(port)?;
    let (mut voters, mut learners) = (Vec::new(), Vec::new());
    for line in info.lines().filter(|l| l.contains(":id=")) {
        let id: u64 = line.split(":id=").nth(1)?.split(',').next()?.parse().ok()?;
        if line.contains("role=voter") {
            voters.push(id);
        } else {
            learners.push(id);
        }
    }
    Some((voters, learners))
}

fn leader_port(c: &Cluster) -> u16 {
    let leader = wait_until(Duration::from_secs(20), || {
        c.running().into_iter().find_map(|id| c.leader(id)).filter(|l| *l <= c.redis_ports.len())
    })
    .expect("a leader among the first nodes");
    c.redis_ports[leader - 1]
}

fn node_cmd(port: u16, args: &[&str]) -> redis::RedisResult<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
    let mut con = client.get_connection_with_timeout(Duration::from_secs(5))?;
    con.set_read_timeout(Some(Duration::from_secs(15)))?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query(&mut con)
}

/// Writes through node 1 until stopped; returns the keys whose SET was acknowledged.
fn writer(c: &Cluster) -> (Arc<AtomicBool>, std::thread::JoinHandle<Vec<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let port = c.redis_ports[0];
    let flag = stop.clone();
    let handle = std::thread::spawn(move || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        let mut con = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
        con.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        let mut acked = Vec::new();
        for i in 0..100_000 {
            if flag.load(Ordering::Relaxed) {
                break;
            }
            let key = format!("w{i}");
            if con.set::<_, _, ()>(&key, i).is_ok() {
                acked.push(key);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        acked
    });
    (stop, handle)
}

#[test]
fn a_cluster_grows_to_five_and_shrinks_back_to_three_while_a_client_writes() {
    let c = Cluster::start(3);
    let (stop, handle) = writer(&c);

    let n4 = join(&c, 4, 2, &[]);
    let n5 = join(&c, 5, 3, &[]);
    let grown = wait_until(Duration::from_secs(30), || {
        let (voters, learners) = members(leader_port(&c))?;
        (voters == vec![1, 2, 3, 4, 5] && learners.is_empty()).then_some(())
    });
    assert!(
        grown.is_some(),
        "nodes 4 and 5 joined and were promoted: {:?}",
        members(leader_port(&c))
    );
    // The new nodes serve clients like any other.
    let v: Option<String> = wait_until(Duration::from_secs(10), || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", n4.redis_port)).ok()?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(2)).ok()?;
        con.get("w0").ok()
    });
    assert_eq!(v.as_deref(), Some("0"));

    // Shrink back, through different nodes; the second removal goes to a new node.
    assert_eq!(node_cmd(c.redis_ports[0], &["RAFT.NODE", "REMOVE", "4"]).unwrap(), "OK");
    let removed = wait_until(Duration::from_secs(20), || {
        node_cmd(n5.redis_port, &["RAFT.NODE", "REMOVE", "5"]).ok()
    });
    assert_eq!(removed.as_deref(), Some("OK"));
    let shrunk = wait_until(Duration::from_secs(20), || {
        let (voters, learners) = members(leader_port(&c))?;
        (voters == vec![1, 2, 3] && learners.is_empty()).then_some(())
    });
    assert!(shrunk.is_some(), "{:?}", members(leader_port(&c)));
    // Refused changes are errors, and change nothing.
    // (Through a follower the leader refuses it; the leader itself also says why.)
    let err = node_cmd(c.redis_ports[1], &["RAFT.NODE", "REMOVE", "9"]).unwrap_err().to_string();
    assert!(err.contains("does not apply") || err.contains("node 9 is not a member"), "{err}");
    let err = node_cmd(leader_port(&c), &["RAFT.NODE", "REMOVE", "9"]).unwrap_err();
    assert!(err.to_string().contains("node 9 is not a member"), "{err}");
    let err = node_cmd(c.redis_ports[1], &["RAFT.NODE", "ADD", "8", "nowhere"]).unwrap_err();
    assert!(err.to_string().contains("not a Raft address"), "{err}");

    stop.store(true, Ordering::Relaxed);
    let acked = handle.join().unwrap();
    assert!(acked.len() > 50, "the writer made progress throughout: {}", acked.len());
    drop((n4, n5));
    for id in 1..=3 {
        let mut con = c.conn(id);
        for key in &acked {
            let v: Option<String> = con.get(key).unwrap();
            assert!(v.is_some(), "node {id} lost acknowledged {key}");
        }
    }
}

#[test]
fn a_wiped_node_is_removed_and_rejoins_catching_up_from_a_snapshot() {
    let compacting = ["--snapshot-entries", "50", "--snapshot-keep-entries", "5"];
    let mut c = Cluster::start_with(3, &compacting);
    let mut con = c.conn(1);
    for i in 0..300 {
        let _: () = con.set(format!("key{i}"), i).unwrap();
    }
    // Node 3's disk is lost: it leaves the cluster and comes back as a new member.
    c.kill(3);
    std::fs::remove_dir_all(c.data_dir(3)).unwrap();
    let removed = wait_until(Duration::from_secs(20), || {
        node_cmd(c.redis_ports[0], &["RAFT.NODE", "REMOVE", "3"]).ok()
    });
    assert_eq!(removed.as_deref(), Some("OK"));
    for i in 300..400 {
        let _: () = con.set(format!("key{i}"), i).unwrap();
    }
    let n6 = join(&c, 6, 1, &compacting);
    let caught_up = wait_until(Duration::from_secs(30), || {
        let info = info_of(n6.redis_port)?;
        let snapshot: u64 =
            info.lines().find_map(|l| l.strip_prefix("snapshot_index:"))?.trim().parse().ok()?;
        let (voters, _) = members(leader_port(&c))?;
        (snapshot > 0 && voters == vec![1, 2, 6]).then_some(())
    });
    assert!(caught_up.is_some(), "node 6 installed a snapshot and became a voter");
    // With node 2 down, nodes 1 and 6 are the quorum: node 6 serves every key from its state.
    c.kill(2);
    let client = redis::Client::open(format!("redis://127.0.0.1:{}/", n6.redis_port)).unwrap();
    let mut con6 = client.get_connection_with_timeout(Duration::from_secs(5)).unwrap();
    con6.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    for i in (0..400).step_by(13) {
        let v: Option<i64> =
            wait_until(Duration::from_secs(20), || con6.get(format!("key{i}")).ok());
        assert_eq!(v, Some(i), "key{i}");
    }
}

#[test]
fn a_joined_node_restarts_from_its_data_directory_without_the_member_it_joined_through() {
    let mut c = Cluster::start(3);
    let n4 = join(&c, 4, 3, &[]);
    let promoted = wait_until(Duration::from_secs(30), || {
        (members(leader_port(&c))?.0 == vec![1, 2, 3, 4]).then_some(())
    });
    assert!(promoted.is_some());
    let _: () = c.conn(1).set("before", "1").unwrap();
    // Node 4 stops; the node it joined through is gone when it comes back.
    let port = n4.redis_port;
    let raft_port = find_raft_port(&c, 4);
    drop(n4);
    c.kill(3);
    let back = Command::new(BIN)
        .args(["--id", "4", "--join"])
        .arg(format!("127.0.0.1:{}", c.redis_ports[2]))
        .arg("--raft-addr")
        .arg(format!("127.0.0.1:{raft_port}"))
        .arg("--port")
        .arg(port.to_string())
        .arg("--data-dir")
        .arg(c.dir.path().join("joiner4"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _guard = Joiner { redis_port: port, child: back };
    let v: Option<String> = wait_until(Duration::from_secs(20), || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).ok()?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(2)).ok()?;
        con.get("before").ok()
    });
    assert_eq!(v.as_deref(), Some("1"), "node 4 is back, serving with nodes 1 and 2");
    // An id the cluster started with cannot join.
    let out = Command::new(BIN)
        .args(["--id", "2", "--join"])
        .arg(format!("127.0.0.1:{}", c.redis_ports[0]))
        .args(["--raft-addr", "127.0.0.1:1", "--port", "1", "--data-dir"])
        .arg(c.dir.path().join("bad"))
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("one of the ids the cluster started with"), "{err}");
}

/// The Raft address node `id` has, as the leader's INFO lists it.
fn find_raft_port(c: &Cluster, id: u64) -> u16 {
    let info = info_of(leader_port(c)).unwrap();
    let line = info.lines().find(|l| l.contains(&format!(":id={id},"))).unwrap();
    let addr = line.split("raft_addr=").nth(1).unwrap().split(',').next().unwrap();
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn a_node_joins_a_cluster_that_requires_a_password() {
    let c = Cluster::start_with(3, &["--requirepass", "pw"]);
    let _: () = c.conn(1).set("before-join", "v").unwrap();
    let joiner = join(&c, 4, 2, &["--requirepass", "pw"]);
    let url = format!("redis://:pw@127.0.0.1:{}/", joiner.redis_port);
    // Node 4 is added (it had to authenticate to ask), catches up and serves reads.
    let read = wait_until(Duration::from_secs(30), || {
        let client = redis::Client::open(url.as_str()).ok()?;
        let mut con = client.get_connection_with_timeout(Duration::from_secs(2)).ok()?;
        con.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let info: String = redis::cmd("INFO").arg("raft").query(&mut con).ok()?;
        if !info.lines().any(|l| l.contains(":id=4,") && l.contains("role=voter")) {
            return None;
        }
        redis::cmd("GET").arg("before-join").query::<Option<String>>(&mut con).ok()?
    });
    assert_eq!(read.as_deref(), Some("v"), "the joined node never served the cluster's data");
}
