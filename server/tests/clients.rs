//! Real Redis clients against a 3-node cluster: the `redis` crate's typed API and pipelines,
//! and redis-benchmark's standard tests.

mod common;

use common::{wait_until, Cluster};
use redis::Commands;
use std::process::Command;

#[test]
fn the_redis_crate_drives_strings_hashes_expiry_and_pipelines_through_a_follower() {
    let c = Cluster::start(3);
    let leader = c.leader(1).expect("a leader");
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let mut con = c.conn(follower);

    let _: () = con.set("lib:s", "hello").unwrap();
    assert_eq!(con.get::<_, String>("lib:s").unwrap(), "hello");
    assert_eq!(con.append::<_, _, i64>("lib:s", " world").unwrap(), 11);
    assert_eq!(con.strlen::<_, i64>("lib:s").unwrap(), 11);
    assert_eq!(con.getrange::<_, String>("lib:s", 0, 4).unwrap(), "hello");
    assert_eq!(con.incr::<_, _, i64>("lib:n", 5).unwrap(), 5);
    assert_eq!(con.decr::<_, _, i64>("lib:n", 2).unwrap(), 3);
    assert_eq!(con.incr::<_, _, f64>("lib:f", 1.5).unwrap(), 1.5);
    let _: () = con.mset(&[("lib:a", "1"), ("lib:b", "2")]).unwrap();
    let got: Vec<Option<String>> = con.mget(&["lib:a", "lib:none", "lib:b"]).unwrap();
    assert_eq!(got, vec![Some("1".into()), None, Some("2".into())]);
    assert_eq!(con.getset::<_, _, String>("lib:a", "3").unwrap(), "1");
    assert!(!con.set_nx::<_, _, bool>("lib:a", "4").unwrap());
    assert_eq!(con.exists::<_, i64>(&["lib:a", "lib:b", "lib:none"]).unwrap(), 2);
    assert_eq!(con.del::<_, i64>(&["lib:a", "lib:b"]).unwrap(), 2);

    // Expiry.
    let _: () = con.set_ex("lib:e", "v", 100).unwrap();
    assert_eq!(con.ttl::<_, i64>("lib:e").unwrap(), 100);
    assert!(con.expire::<_, bool>("lib:e", 200).unwrap());
    assert_eq!(con.ttl::<_, i64>("lib:e").unwrap(), 200);
    assert!(con.persist::<_, bool>("lib:e").unwrap());
    assert_eq!(con.ttl::<_, i64>("lib:e").unwrap(), -1);
    let _: () = con.pset_ex("lib:gone", "v", 1).unwrap();
    let gone = wait_until(std::time::Duration::from_secs(5), || {
        con.get::<_, Option<String>>("lib:gone").ok()?.is_none().then_some(())
    });
    assert!(gone.is_some(), "a key set with PX 1 is still there after 5 s");

    // A pipeline: replies in order, each read after the writes before it.
    let mut pipe = redis::pipe();
    for i in 0..100 {
        pipe.set(format!("lib:p{i}"), i).ignore();
        pipe.incr("lib:p", 1);
        pipe.get(format!("lib:p{i}"));
    }
    let replies: Vec<i64> = pipe.query(&mut con).unwrap();
    let want: Vec<i64> = (0..100).flat_map(|i| [i + 1, i]).collect();
    assert_eq!(replies, want);

    // An atomic pipeline is MULTI ... EXEC: one log entry.
    let (a, b, s): (i64, i64, String) = redis::pipe()
        .atomic()
        .incr("lib:tx", 1)
        .incr("lib:tx", 1)
        .hset("lib:txh", "f", "v")
        .ignore()
        .hget("lib:txh", "f")
        .query(&mut con)
        .unwrap();
    assert_eq!((a, b, s.as_str()), (1, 2, "v"));
}

#[test]
fn redis_benchmark_runs_its_standard_tests_without_errors() {
    let Ok(probe) = Command::new("redis-benchmark").arg("--version").output() else {
        assert!(std::env::var_os("CI").is_none(), "redis-benchmark is not installed on CI");
        eprintln!("redis-benchmark is not installed: skipped");
        return;
    };
    assert!(probe.status.success());
    let c = Cluster::start(3);
    let port = c.redis_ports[0].to_string();
    let out = Command::new("redis-benchmark")
        .args(["-p", &port, "-t", "ping,set,get,incr,mset", "-n", "2000", "-c", "10", "--csv"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-benchmark failed:\n{stdout}\n{stderr}");
    for test in ["PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "MSET (10 keys)"] {
        assert!(stdout.contains(&format!("\"{test}\"")), "no {test} row in:\n{stdout}");
    }
    let errors = format!("{stdout}{stderr}");
    assert!(!errors.contains("ERR") && !errors.contains("Error"), "errors:\n{errors}");
}

#[test]
fn a_scan_returns_every_key_that_exists_throughout_while_others_come_and_go() {
    let c = Cluster::start(3);
    let mut writer = c.conn(1);
    let _: () = redis::cmd("FLUSHALL").query(&mut writer).unwrap();
    for chunk in (0..600).collect::<Vec<u32>>().chunks(100) {
        let pairs: Vec<(String, u32)> = chunk.iter().map(|i| (format!("st:{i:04}"), *i)).collect();
        let _: () = writer.mset(&pairs).unwrap();
    }
    let mut reader = c.conn(2);
    let mut cursor = "0".to_string();
    let mut seen = std::collections::BTreeSet::new();
    let mut steps = 0;
    loop {
        let (next, keys): (String, Vec<String>) = redis::cmd("SCAN")
            .arg(&cursor)
            .arg("MATCH")
            .arg("st:*")
            .arg("COUNT")
            .arg(37)
            .query(&mut reader)
            .unwrap();
        seen.extend(keys);
        // Between steps: every fifth key goes, and new ones arrive all over the key order.
        let _: i64 = writer.del(format!("st:{:04}", steps * 5)).unwrap();
        let _: () = writer.set(format!("st:{:04}x", steps * 7 % 600), 1).unwrap();
        steps += 1;
        assert!(steps < 100, "the walk does not end");
        if next == "0" {
            break;
        }
        cursor = next;
    }
    for i in (0..600).filter(|i| i % 5 != 0 || i / 5 >= steps) {
        assert!(
            seen.contains(&format!("st:{i:04}")),
            "st:{i:04} existed throughout but was missed"
        );
    }
    assert!(seen.iter().all(|k| k.starts_with("st:")));
}
