//! Large collections on a real cluster: element cursors walk a collection of thousands of
//! members in pieces and return each member once.

mod common;

use common::Cluster;
use std::collections::BTreeSet;

/// Every element name an HSCAN/SSCAN/ZSCAN walk returns, and how many calls it took.
fn walk(con: &mut redis::Connection, cmd: &str, key: &str, step: usize) -> (Vec<String>, usize) {
    let (mut cursor, mut calls, mut names) = (0u64, 0, Vec::new());
    loop {
        let (next, items): (u64, Vec<String>) =
            redis::cmd(cmd).arg(key).arg(cursor).arg("COUNT").arg(50).query(con).unwrap();
        calls += 1;
        names.extend(items.into_iter().step_by(step));
        cursor = next;
        if cursor == 0 || calls > 1000 {
            return (names, calls);
        }
    }
}

#[test]
fn element_cursors_walk_a_large_collection_once_and_a_small_one_in_one_call() {
    let c = Cluster::start(3);
    let mut con = c.conn(2);
    let mut h = redis::cmd("HSET");
    h.arg("h");
    let mut s = redis::cmd("SADD");
    s.arg("s");
    let mut z = redis::cmd("ZADD");
    z.arg("z");
    for i in 0..1000 {
        h.arg(format!("f{i}")).arg(i);
        s.arg(format!("m{i}"));
        z.arg(i).arg(format!("m{i}"));
    }
    let _: i64 = h.query(&mut con).unwrap();
    let _: i64 = s.query(&mut con).unwrap();
    let _: i64 = z.query(&mut con).unwrap();
    for (cmd, key, step) in [("HSCAN", "h", 2), ("SSCAN", "s", 1), ("ZSCAN", "z", 2)] {
        let (names, calls) = walk(&mut con, cmd, key, step);
        let distinct: BTreeSet<&String> = names.iter().collect();
        assert_eq!((names.len(), distinct.len()), (1000, 1000), "{cmd}");
        assert!(calls >= 20, "{cmd} returned everything in {calls} calls");
    }
    let _: i64 = redis::cmd("SADD").arg("small").arg("a").arg("b").query(&mut con).unwrap();
    let (names, calls) = walk(&mut con, "SSCAN", "small", 1);
    assert_eq!((names.len(), calls), (2, 1));
    let zscan: (u64, Vec<String>) =
        redis::cmd("ZSCAN").arg("z").arg(0).arg("MATCH").arg("m99?").query(&mut con).unwrap();
    assert!(zscan.1.iter().all(|n| n.starts_with("m99") || n.parse::<u32>().is_ok()));
    let bad: redis::RedisResult<(u64, Vec<String>)> =
        redis::cmd("HSCAN").arg("h").arg(12345).query(&mut con);
    assert!(bad.unwrap_err().to_string().contains("invalid cursor"));
}

#[test]
fn reads_of_large_collections_served_off_the_node_task_see_the_connections_own_writes() {
    // 5,000 elements: above the 4,096 from which a walk is served from a view of the applied
    // state, off the node task (`serve_off_task`).
    let c = Cluster::start(3);
    let leader = c.leader(1).expect("a leader");
    for via in [leader, (1..=3).find(|i| *i != leader).unwrap()] {
        let mut con = c.conn(via);
        let _: i64 =
            redis::cmd("DEL").arg("bh").arg("bs").arg("bz").arg("bl").query(&mut con).unwrap();
        let (mut h, mut s, mut z, mut l) =
            (redis::cmd("HSET"), redis::cmd("SADD"), redis::cmd("ZADD"), redis::cmd("RPUSH"));
        h.arg("bh");
        s.arg("bs");
        z.arg("bz");
        l.arg("bl");
        for i in 0..5000 {
            h.arg(format!("f{i:05}")).arg(i);
            s.arg(format!("m{i:05}"));
            z.arg(i).arg(format!("m{i:05}"));
            l.arg(i);
        }
        for cmd in [h, s, z, l] {
            let n: i64 = cmd.query(&mut con).unwrap();
            assert_eq!(n, 5000);
        }
        // Each read comes right after a write on the same connection: it must see it.
        let mut pipe = redis::pipe();
        pipe.cmd("HSET").arg("bh").arg("new").arg("x").ignore();
        pipe.cmd("HGETALL").arg("bh");
        pipe.cmd("SADD").arg("bs").arg("new").ignore();
        pipe.cmd("SMEMBERS").arg("bs");
        pipe.cmd("ZADD").arg("bz").arg(-1).arg("new").ignore();
        pipe.cmd("ZRANGE").arg("bz").arg(0).arg(-1);
        pipe.cmd("RPUSH").arg("bl").arg("new").ignore();
        pipe.cmd("LRANGE").arg("bl").arg(0).arg(-1);
        pipe.cmd("SORT").arg("bl").arg("BY").arg("nosort").arg("LIMIT").arg(4999).arg(2);
        type Replies = (
            std::collections::HashMap<String, String>,
            BTreeSet<String>,
            Vec<String>,
            Vec<String>,
            Vec<String>,
        );
        let (hash, set, zset, tail, sorted): Replies = pipe.query(&mut con).unwrap();
        assert_eq!(hash.len(), 5001);
        assert_eq!(hash.get("new").map(String::as_str), Some("x"));
        assert_eq!(hash.get("f04999").map(String::as_str), Some("4999"));
        assert_eq!(set.len(), 5001);
        assert!(set.contains("new") && set.contains("m00000"));
        assert_eq!(zset.len(), 5001);
        assert_eq!(zset[..3], ["new", "m00000", "m00001"]);
        assert_eq!(tail.len(), 5001);
        assert_eq!(tail[4999..], ["4999", "new"]);
        assert_eq!(sorted, vec!["4999", "new"]);
    }
}
