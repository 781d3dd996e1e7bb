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
