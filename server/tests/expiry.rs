//! Expiry over real time: deadlines stamped by the leader, keys deleted through the log, every
//! node agreeing, and a restarted node too.

mod common;

use common::{wait_until, Cluster};
use std::time::Duration;

/// GET through node `id`: None if the node could not answer (an election), else its reply.
fn get(c: &Cluster, id: usize, key: &str) -> Option<Option<String>> {
    redis::cmd("GET").arg(key).query(&mut c.try_conn(id)?).ok()
}

fn dbsize(c: &Cluster, id: usize) -> Option<i64> {
    redis::cmd("DBSIZE").query(&mut c.try_conn(id)?).ok()
}

#[test]
fn expired_keys_vanish_on_every_node_and_are_deleted_through_the_log() {
    let mut c = Cluster::start(3);
    let mut con = c.conn(2);
    let _: () = redis::cmd("FLUSHALL").query(&mut con).unwrap(); // the harness's probe key
    let _: () = redis::cmd("SET").arg("short").arg("v").arg("PX").arg(400).query(&mut con).unwrap();
    let _: () = redis::cmd("SET").arg("long").arg("v").arg("EX").arg(100).query(&mut con).unwrap();
    let _: () = redis::cmd("SET").arg("plain").arg("v").query(&mut con).unwrap();
    for id in 1..=3 {
        assert_eq!(get(&c, id, "short").flatten().as_deref(), Some("v"), "node {id}");
    }
    // Gone from reads on every node, then from storage (the leader's sweep): DBSIZE counts
    // stored keys, expired or not, as Redis's does.
    let gone = wait_until(Duration::from_secs(5), || {
        (1..=3)
            .all(|id| get(&c, id, "short") == Some(None) && dbsize(&c, id) == Some(2))
            .then_some(())
    });
    assert!(gone.is_some(), "the expired key is still visible or stored");
    // Each node counts the key its sweep entry deleted, as Redis's INFO expired_keys.
    for id in 1..=3 {
        let info: String = redis::cmd("INFO").arg("stats").query(&mut c.conn(id)).unwrap();
        assert!(info.contains("\r\nexpired_keys:1\r\n"), "node {id}: {info}");
    }
    // The log's time keeps moving while keys have deadlines, so TTLs count down when idle
    // (this sleep is the idle time being measured).
    std::thread::sleep(Duration::from_millis(1500));
    for id in 1..=3 {
        let pttl: i64 = redis::cmd("PTTL").arg("long").query(&mut c.conn(id)).unwrap();
        assert!((90_000..=98_700).contains(&pttl), "node {id}: PTTL {pttl} after 1.5 s");
    }
    // A node down while a key expires agrees once back.
    let _: () = redis::cmd("SET").arg("k").arg("v").arg("PX").arg(500).query(&mut con).unwrap();
    c.kill(3);
    let expired =
        wait_until(Duration::from_secs(10), || (get(&c, 1, "k") == Some(None)).then_some(()));
    assert!(expired.is_some(), "the key did not expire while node 3 was down");
    c.start_node(3);
    let agreed = wait_until(Duration::from_secs(10), || {
        c.try_conn(3).and_then(|mut con| {
            let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con).ok()?;
            let n: i64 = redis::cmd("DBSIZE").query(&mut con).ok()?;
            (v.is_none() && n == 2).then_some(())
        })
    });
    assert!(agreed.is_some(), "the restarted node still holds the expired key");
    assert_eq!(get(&c, 3, "plain").flatten().as_deref(), Some("v"));
}
