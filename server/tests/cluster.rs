//! Real 3-node clusters of `raft-kv` processes: the README walkthrough, failover under writes,
//! restarts with data intact, and the failures of the C++ raft-kv this replaces.

mod common;

use common::{wait_until, Cluster};
use redis::Commands;
use std::io::{Read, Write};
use std::time::Duration;

#[test]
fn readme_walkthrough_with_node2_killed_and_restarted() {
    let mut c = Cluster::start(3);
    let mut n1 = c.conn(1);
    let _: () = redis::cmd("DEL").arg("__probe").query(&mut n1).unwrap();
    assert_eq!(
        redis::cmd("SET").arg("mykey").arg("myvalue").query::<String>(&mut n1).unwrap(),
        "OK"
    );
    assert_eq!(n1.get::<_, String>("mykey").unwrap(), "myvalue");

    c.kill(2);
    assert_eq!(
        redis::cmd("SET").arg("mykey").arg("new-value").query::<String>(&mut c.conn(1)).unwrap(),
        "OK"
    );
    c.start_node(2);

    // The restarted node catches up by itself; its reads are linearizable, so the first answer
    // it gives is already the new value.
    let mut n2 = c.conn(2);
    let keys: Vec<String> =
        wait_until(Duration::from_secs(20), || redis::cmd("KEYS").arg("*").query(&mut n2).ok())
            .unwrap();
    assert_eq!(keys, vec!["mykey".to_string()]);
    assert_eq!(n2.get::<_, String>("mykey").unwrap(), "new-value");
}

#[test]
fn every_node_accepts_writes_and_serves_linearizable_reads() {
    let c = Cluster::start(3);
    for writer in 1..=3 {
        let key = format!("k{writer}");
        let _: () = c.conn(writer).set(&key, writer).unwrap();
        // Read-your-writes through every other node, immediately.
        for reader in 1..=3 {
            assert_eq!(
                c.conn(reader).get::<_, i64>(&key).unwrap(),
                writer as i64,
                "read {key} via node {reader}"
            );
        }
    }
    let n: i64 = c.conn(2).incr("counter", 5).unwrap();
    assert_eq!(n, 5);
    assert_eq!(c.conn(3).decr::<_, _, i64>("counter", 2).unwrap(), 3);
    assert_eq!(c.conn(1).del::<_, i64>(&["k1", "k2", "missing"]).unwrap(), 2);
    assert_eq!(c.conn(3).exists::<_, i64>(&["k1", "k3", "k3"]).unwrap(), 2);
}

#[test]
fn killing_the_leader_during_writes_loses_no_acknowledged_write() {
    let mut c = Cluster::start(3);
    let leader = c.leader(1).expect("leader known");
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let other = (1..=3).find(|i| *i != leader && *i != follower).unwrap();

    let mut acked = Vec::new();
    let mut con = c.conn(follower);
    for i in 0..400 {
        if i == 150 {
            c.kill(leader);
        }
        let r: redis::RedisResult<String> =
            redis::cmd("SET").arg(format!("w{i}")).arg(i).query(&mut con);
        match r {
            Ok(ok) => {
                assert_eq!(ok, "OK");
                acked.push(i);
            }
            // A timeout is indeterminate: the write may or may not have happened.
            Err(_) => con = wait_until(Duration::from_secs(10), || c.try_conn(follower)).unwrap(),
        }
    }
    assert!(acked.len() > 300, "only {} of 400 writes acknowledged", acked.len());
    assert!(acked.iter().any(|i| *i > 200), "no write acknowledged after the leader died");

    c.start_node(leader);
    for reader in [follower, other, leader] {
        let mut con = c.conn(reader);
        for i in &acked {
            let v: Option<i64> =
                wait_until(Duration::from_secs(20), || con.get(format!("w{i}")).ok()).unwrap();
            assert_eq!(v, Some(*i as i64), "acknowledged write w{i} missing on node {reader}");
        }
    }
}

#[test]
fn a_full_restart_keeps_every_key() {
    let mut c = Cluster::start(3);
    let mut con = c.conn(1);
    for i in 0..200 {
        let _: () = con.set(format!("key{i}"), format!("value{i}")).unwrap();
    }
    // Mixed ways of stopping: SIGTERM for one node, SIGKILL for the others.
    c.terminate(1);
    c.kill(2);
    c.kill(3);
    for id in 1..=3 {
        c.start_node(id);
    }
    c.wait_writable();
    for id in 1..=3 {
        let mut con = c.conn(id);
        for i in 0..200 {
            assert_eq!(
                con.get::<_, String>(format!("key{i}")).unwrap(),
                format!("value{i}"),
                "node {id}"
            );
        }
    }
}

#[test]
fn a_node_stopped_with_sigterm_rejoins_and_catches_up() {
    let mut c = Cluster::start(3);
    c.terminate(3);
    let _: () = c.conn(1).set("while-down", "yes").unwrap();
    c.start_node(3);
    let v: String =
        wait_until(Duration::from_secs(20), || c.conn(3).get("while-down").ok()).unwrap();
    assert_eq!(v, "yes");
}

#[test]
fn without_a_quorum_requests_fail_fast_instead_of_hanging_or_reading_stale_data() {
    // A node that has known no leader for half the request timeout (cut off, or removed
    // without hearing of it) answers CLUSTERDOWN at once: clients try another node instead of
    // waiting out the request timeout there, again and again. (20 s here: the first request
    // is answered after 10 s; waiting out the timeout would pass the client's 15 s.)
    let mut c = Cluster::start_with(3, &["--request-timeout-ms", "20000"]);
    let _: () = c.conn(1).set("k", "before").unwrap();
    c.kill(2);
    c.kill(3);
    let mut con = c.conn(1);
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let set: redis::RedisResult<()> = con.set("k", "after");
        let get: redis::RedisResult<Option<String>> = con.get("k");
        let set = set.expect_err("a write without quorum must fail");
        let get = get.expect_err("a read without quorum must not return possibly stale data");
        assert_eq!(set.code(), Some("CLUSTERDOWN"), "{set}");
        assert_eq!(get.code(), Some("CLUSTERDOWN"), "{get}");
        assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    }
}

#[test]
fn a_follower_that_fell_behind_never_serves_a_stale_read() {
    let c = Cluster::start(3);
    let leader = c.leader(1).expect("leader known");
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let _: () = c.conn(follower).set("k", "old").unwrap();
    // Freeze the follower (SIGSTOP): it misses the next write entirely.
    let pid = c.procs[follower - 1].as_ref().unwrap().id().to_string();
    assert!(std::process::Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let _: () = c.conn(leader).set("k", "new").unwrap();
    // The GET is already waiting in the socket when the follower wakes up, next to the
    // Raft messages that bring it up to date: it must not be answered from the state the
    // follower had when it froze.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", c.redis_ports[follower - 1])).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap();
    assert!(std::process::Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    let mut reply = [0u8; 9];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"$3\r\nnew\r\n", "{:?}", String::from_utf8_lossy(&reply));
}

/// A field of node `id`'s INFO.
fn info_field(c: &Cluster, id: usize, field: &str) -> Option<u64> {
    let mut con = c.try_conn(id)?;
    let info: String = redis::cmd("INFO").query(&mut con).ok()?;
    let line = info.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line[field.len() + 1..].trim().parse().ok()
}

const COMPACTING: &[&str] = &[
    "--snapshot-entries",
    "50",
    "--snapshot-keep-entries",
    "10",
    "--snapshot-chunk-bytes",
    "4096",
];

#[test]
fn a_wiped_node_catches_up_from_a_snapshot_streamed_in_chunks() {
    let mut c = Cluster::start_with(3, COMPACTING);
    c.kill(3);
    let mut con = c.conn(1);
    // About 300 KB of state: many chunks of 4 KB.
    let value = "v".repeat(1000);
    for i in 0..300 {
        let _: () = con.set(format!("key{i}"), format!("{i}:{value}")).unwrap();
    }
    let leader = c.leader(1).expect("a leader");
    // The leader keeps the entries of a follower it heard from in the last election timeout:
    // it compacts past node 3 once it has been silent that long.
    let compacted = wait_until(Duration::from_secs(10), || {
        info_field(&c, leader, "snapshot_index").filter(|i| *i > 200)
    });
    let compacted = compacted.expect("the leader compacted its log past 200");

    // Node 3 loses its disk and comes back empty.
    std::fs::remove_dir_all(c.data_dir(3)).unwrap();
    c.start_node(3);
    let applied = info_field(&c, leader, "applied_index").unwrap();
    let caught_up = wait_until(Duration::from_secs(30), || {
        (info_field(&c, 3, "applied_index")? >= applied).then_some(())
    });
    assert!(caught_up.is_some(), "node 3 did not catch up to {applied}");
    assert!(info_field(&c, 3, "snapshot_index").unwrap() >= compacted, "installed a snapshot");

    // Reads through node 3 are served from its own state machine (after ReadIndex), so it
    // holds every key. Node 2 is stopped so node 3's acknowledgements are needed too.
    c.kill(2);
    c.wait_writable();
    let mut con = c.conn(3);
    for i in (0..300).step_by(7) {
        let v: String = con.get(format!("key{i}")).unwrap();
        assert_eq!(v, format!("{i}:{value}"), "key{i}");
    }
}

#[test]
fn nodes_restart_from_snapshot_and_log_after_compaction() {
    let mut c = Cluster::start_with(3, COMPACTING);
    let mut con = c.conn(2);
    for i in 0..240 {
        let _: () = con.set(format!("k{i}"), i).unwrap();
        let _: i64 = con.incr("counter", 1).unwrap();
    }
    for id in 1..=3 {
        let s = info_field(&c, id, "snapshot_index").unwrap();
        assert!(s > 0, "node {id} compacted (snapshot_index {s})");
    }
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.start_node(id);
    }
    c.wait_writable();
    let mut con = c.conn(3);
    let counter: i64 = con.get("counter").unwrap();
    assert_eq!(counter, 240);
    for i in (0..240).step_by(11) {
        let v: i64 = con.get(format!("k{i}")).unwrap();
        assert_eq!(v, i);
    }
}

#[test]
fn raft_transfer_leader_hands_leadership_to_the_chosen_node() {
    let c = Cluster::start(3);
    let leader = c.leader(1).expect("a leader");
    let target = if leader == 3 { 2 } else { 3 };
    let via = 6 - leader - target; // the third node: asked through a follower
    let mut con = c.conn(via);
    let reply: String =
        redis::cmd("RAFT.TRANSFER-LEADER").arg(target).query(&mut con).expect("transfer");
    assert_eq!(reply, "OK");
    for id in 1..=3 {
        let seen = wait_until(Duration::from_secs(5), || (c.leader(id)? == target).then_some(()));
        assert!(seen.is_some(), "node {id} follows node {target}");
    }
    let _: () = c.conn(leader).set("after-transfer", "1").unwrap();
    let v: String = c.conn(target).get("after-transfer").unwrap();
    assert_eq!(v, "1");

    let err = redis::cmd("RAFT.TRANSFER-LEADER").arg(9).query::<String>(&mut con).unwrap_err();
    assert_eq!(err.detail(), Some("node 9 is not a voting member"), "{err:?}");
    let err = redis::cmd("RAFT.TRANSFER-LEADER").arg("x").query::<String>(&mut con).unwrap_err();
    assert_eq!(err.detail(), Some("node id must be a positive integer"), "{err:?}");
    // Asking for the node that already leads is a no-op.
    let reply: String = redis::cmd("RAFT.TRANSFER-LEADER").arg(target).query(&mut con).unwrap();
    assert_eq!(reply, "OK");
}

fn info_text(c: &Cluster, id: usize) -> String {
    let mut con = c.conn(id);
    redis::cmd("INFO").query(&mut con).unwrap()
}

#[test]
fn with_a_clock_drift_bound_the_leader_serves_reads_from_its_lease() {
    let mut c = Cluster::start_with(3, &["--lease-max-clock-drift", "0.1"]);
    let leader = c.leader(1).expect("a leader");
    assert!(info_text(&c, leader).contains("read_mode:lease"));
    let held = wait_until(Duration::from_secs(5), || {
        (info_field(&c, leader, "lease_remaining_ticks")? > 0).then_some(())
    });
    assert!(held.is_some(), "the leader holds a lease");
    let mut con = c.conn(leader);
    let _: () = con.set("leased", "1").unwrap();
    for id in 1..=3 {
        let v: String = c.conn(id).get("leased").unwrap();
        assert_eq!(v, "1", "node {id}");
    }
    // The leader goes; the next one takes over once its own lease is acknowledged.
    c.kill(leader);
    let other = if leader == 1 { 2 } else { 1 };
    let v: Option<String> =
        wait_until(Duration::from_secs(20), || c.try_conn(other)?.get("leased").ok());
    assert_eq!(v.as_deref(), Some("1"));
    let _: () = c.conn(other).set("leased", "2").unwrap();
    let v: String = c.conn(other).get("leased").unwrap();
    assert_eq!(v, "2");
    // Without the flag every read goes through ReadIndex.
    let plain = Cluster::start(1);
    assert!(info_text(&plain, 1).contains("read_mode:readindex"));
}

#[test]
fn info_reports_server_clients_raft_members_and_keyspace() {
    let c = Cluster::start(3);
    let leader = c.leader(1).expect("a leader");
    let _: () = c.conn(leader).set("some-key", "v").unwrap();
    let info = info_text(&c, leader);
    for section in ["# Server", "# Clients", "# Raft", "# Keyspace"] {
        assert!(info.contains(section), "{section} missing:\n{info}");
    }
    assert!(info.contains("role:leader"), "{info}");
    assert!(info.contains(&format!("leader_id:{leader}")), "{info}");
    assert!(info.contains(&format!("leader_raft_addr:127.0.0.1:{}", c.raft_ports[leader - 1])));
    assert!(info.contains("members:3"), "{info}");
    // The leader knows every follower's match index and lag.
    let followers: Vec<&str> =
        info.lines().filter(|l| l.contains(":id=") && !l.contains("state=self")).collect();
    assert_eq!(followers.len(), 2, "{info}");
    for f in followers {
        assert!(f.contains("role=voter") && f.contains(",match=") && f.contains(",lag="), "{f}");
    }
    assert!(info.contains("connected_clients:"), "{info}");
    assert!(info.contains("db0:keys="), "{info}");

    // INFO <section> returns just that section.
    let mut con = c.conn(leader);
    let raft: String = redis::cmd("INFO").arg("raft").query(&mut con).unwrap();
    assert!(raft.starts_with("# Raft") && !raft.contains("# Server"), "{raft}");
    let clients: String = redis::cmd("INFO").arg("CLIENTS").query(&mut con).unwrap();
    let n: u64 = clients
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("connected_clients");
    assert!(n >= 1, "{clients}");
}

#[test]
fn a_value_larger_than_a_peer_frame_reaches_a_lagging_node_through_a_snapshot() {
    // Issue 13.5: a snapshot chunk held whole items, so a value over the 64 MiB peer frame
    // could never be sent and the transfer started over forever. Strings reach 512 MiB.
    let compacting = ["--snapshot-entries", "20", "--snapshot-keep-entries", "2"];
    let mut c = Cluster::start_with(3, &compacting);
    c.kill(3);
    let mut con = c.conn(1);
    // Five writes of 15 MiB (an argument may hold 16 MiB) at their offsets: 75 MiB. SETRANGE,
    // not APPEND, so a write answered CLUSTERDOWN (the two nodes left lose their leader
    // under such writes on a loaded 2-core machine, a write "may or may not have been
    // applied") can be sent again, as a client would, without changing the result.
    let piece = vec![b'x'; 15 << 20];
    for round in 0..5 {
        let offset = round * piece.len();
        let len = wait_until(Duration::from_secs(60), || {
            con.setrange::<_, _, usize>("big", offset as isize, &piece[..]).ok()
        });
        assert_eq!(len, Some(offset + piece.len()), "the write at {offset} never succeeded");
    }
    // Enough writes after it that the log is compacted past where node 3 stopped.
    for i in 0..60 {
        let done =
            wait_until(Duration::from_secs(60), || con.set::<_, _, ()>(format!("k{i}"), i).ok());
        assert!(done.is_some(), "SET k{i} never succeeded");
    }
    c.start_node(3);
    let mut con3 = c.conn(3);
    let len = wait_until(Duration::from_secs(60), || {
        con3.strlen::<_, usize>("big").ok().filter(|n| *n == 5 * piece.len())
    });
    assert_eq!(len, Some(5 * piece.len()), "node 3 never received the 75 MiB value");
    assert_eq!(con3.get::<_, i64>("k59").unwrap(), 59);
    let tail: Vec<u8> = redis::cmd("GETRANGE").arg("big").arg(-3).arg(-1).query(&mut con3).unwrap();
    assert_eq!(tail, b"xxx");
}
