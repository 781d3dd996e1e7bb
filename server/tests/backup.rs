//! `raft-kv backup` and `raft-kv restore` on real clusters: a backup taken from a follower while
//! a client writes holds the state of one moment (every key of every type equal after a
//! restore into a new 3-node cluster, and a prefix of the client's writes), a backup cut
//! short or altered is refused before anything is written, and a node whose client port
//! speaks TLS only is backed up with `--tls` (and refused without it, leaving no file).

mod common;

use common::{free_ports, wait_until, Cluster, BIN};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Every key's type and value, read as a client sees them (collections whole, TTLs as present
/// or not).
fn dump(con: &mut redis::Connection, skip_prefix: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) =
            redis::cmd("SCAN").arg(cursor).arg("COUNT").arg(1000).query(con).unwrap();
        for k in keys.into_iter().filter(|k| !k.starts_with(skip_prefix)) {
            let t: String = redis::cmd("TYPE").arg(&k).query(con).unwrap();
            let v = match t.as_str() {
                "string" => {
                    format!("{:?}", redis::cmd("GET").arg(&k).query::<String>(con).unwrap())
                }
                "hash" => format!(
                    "{:?}",
                    redis::cmd("HGETALL").arg(&k).query::<BTreeMap<String, String>>(con).unwrap()
                ),
                "list" => format!(
                    "{:?}",
                    redis::cmd("LRANGE").arg(&k).arg(0).arg(-1).query::<Vec<String>>(con).unwrap()
                ),
                "set" => format!(
                    "{:?}",
                    redis::cmd("SMEMBERS")
                        .arg(&k)
                        .query::<std::collections::BTreeSet<String>>(con)
                        .unwrap()
                ),
                "zset" => format!(
                    "{:?}",
                    redis::cmd("ZRANGE")
                        .arg(&k)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query::<Vec<String>>(con)
                        .unwrap()
                ),
                other => panic!("{k} has type {other}"),
            };
            let ttl: i64 = redis::cmd("TTL").arg(&k).query(con).unwrap();
            out.insert(k, format!("{t} {v} ttl:{}", ttl > 0));
        }
        cursor = next;
        if cursor == 0 {
            return out;
        }
    }
}

fn tool(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).env("RUST_LOG", "off").output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn a_backup_taken_while_a_client_writes_restores_into_a_new_cluster_key_for_key() {
    let source = Cluster::start(3);
    let leader = source.leader(1).expect("a leader");
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let mut con = source.conn(leader);
    // Every type, and a collection large enough to span chunks and go off the node task.
    let mut pipe = redis::pipe();
    for i in 0..2000 {
        pipe.cmd("SET").arg(format!("s:{i}")).arg(format!("v{i}")).ignore();
    }
    pipe.cmd("SET").arg("ttl").arg("x").arg("EX").arg(1000).ignore();
    for c in 0..20 {
        for i in 0..50 {
            pipe.cmd("HSET").arg(format!("h:{c}")).arg(format!("f{i}")).arg(i).ignore();
            pipe.cmd("RPUSH").arg(format!("l:{c}")).arg(i).ignore();
            pipe.cmd("SADD").arg(format!("set:{c}")).arg(format!("m{i}")).ignore();
            pipe.cmd("ZADD").arg(format!("z:{c}")).arg(i).arg(format!("m{i}")).ignore();
        }
    }
    let big: Vec<String> = (0..30_000).map(|i| format!("member-{i:06}")).collect();
    pipe.cmd("SADD").arg("bigset").arg(&big).ignore();
    let _: () = pipe.query(&mut con).unwrap();

    // A client writes w:0, w:1, ... one at a time while the backup is taken.
    let (stop, acked) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let mut wcon = source.conn(leader);
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) && i < 100_000 {
                let _: () =
                    redis::cmd("SET").arg(format!("w:{i}")).arg(i).query(&mut wcon).unwrap();
                i += 1;
                acked.store(i, Ordering::Relaxed);
            }
        })
    };
    common::wait_until(std::time::Duration::from_secs(10), || {
        (acked.load(Ordering::Relaxed) >= 50).then_some(())
    })
    .expect("the writer got going");
    let before = acked.load(Ordering::Relaxed);
    let file = source.dir.path().join("backup.rkv");
    let from = format!("127.0.0.1:{}", source.redis_ports[follower - 1]);
    let (ok, text) = tool(&["backup", "--from", &from, "--out", file.to_str().unwrap()]);
    assert!(ok, "{text}");
    let after = acked.load(Ordering::Relaxed) + 1;
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    assert!(text.contains("backup of 127.0.0.1:"), "{text}");
    let (ok, text) = tool(&["check-backup", file.to_str().unwrap()]);
    assert!(ok && text.contains("a whole backup at index"), "{text}");

    // A new cluster from it.
    let ports = free_ports(6);
    let mut restored = Cluster {
        dir: tempfile::tempdir().unwrap(),
        raft_ports: ports[..3].to_vec(),
        redis_ports: ports[3..].to_vec(),
        procs: (0..3).map(|_| None).collect(),
        extra_args: Vec::new(),
        metrics_ports: Vec::new(),
    };
    let cluster = restored.cluster_arg();
    let dirs: Vec<String> = (1..=3).map(|i| restored.data_dir(i).display().to_string()).collect();
    let mut args = vec!["restore", file.to_str().unwrap(), "--cluster", &cluster];
    for d in &dirs {
        args.extend(["--data-dir", d.as_str()]);
    }
    let (ok, text) = tool(&args);
    assert!(ok, "{text}");
    // Restoring over them again is refused: they are not empty.
    let (ok, again) = tool(&args);
    assert!(!ok && again.contains("exists and is not empty"), "{again}");
    for id in 1..=3 {
        restored.start_node(id);
    }
    restored.wait_writable();

    let want = dump(&mut source.conn(follower), "w:");
    let mut rcon = restored.conn(1);
    let got = dump(&mut rcon, "w:");
    assert_eq!(want.len(), got.len());
    assert_eq!(want, got, "the restored cluster differs");
    assert_eq!(want.get("ttl").map(String::as_str), Some("string \"x\" ttl:true"));
    // The client's writes: a prefix, at least those answered before the backup began and at
    // most those begun before it ended.
    let writes: Vec<String> = redis::cmd("KEYS").arg("w:*").query(&mut rcon).unwrap();
    let n = writes.len() as u64;
    assert!(
        n >= before && n <= after,
        "{n} writes restored, {before} acknowledged before, {after} begun by the end"
    );
    for i in 0..n {
        let v: Option<u64> = redis::cmd("GET").arg(format!("w:{i}")).query(&mut rcon).unwrap();
        assert_eq!(v, Some(i), "w:{i} missing: not a prefix");
    }
    // The restored cluster takes writes.
    let _: () = redis::cmd("SET").arg("new").arg("1").query(&mut rcon).unwrap();
}

#[test]
fn a_backup_cut_short_or_altered_is_refused_and_nothing_is_written() {
    let source = Cluster::start(3);
    let mut con = source.conn(1);
    for i in 0..200 {
        let _: () = redis::cmd("SET").arg(format!("k{i}")).arg(i).query(&mut con).unwrap();
    }
    let file = source.dir.path().join("b.rkv");
    let from = format!("127.0.0.1:{}", source.redis_ports[0]);
    let (ok, text) = tool(&["backup", "--from", &from, "--out", file.to_str().unwrap()]);
    assert!(ok, "{text}");
    let bytes = std::fs::read(&file).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dirs: Vec<String> =
        (1..=3).map(|i| out.path().join(format!("n{i}")).display().to_string()).collect();
    let cluster = "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("cut", bytes[..bytes.len() / 2].to_vec(), "cut short"),
        (
            "flipped",
            {
                let mut b = bytes.clone();
                let mid = b.len() / 2;
                b[mid] ^= 0x40;
                b
            },
            "damaged",
        ),
        ("foreign", b"hello, not a backup at all".to_vec(), "not a raft-kv backup"),
    ];
    for (name, content, want) in cases {
        let bad = out.path().join(name);
        std::fs::write(&bad, content).unwrap();
        let mut args = vec!["restore", bad.to_str().unwrap(), "--cluster", cluster];
        for d in &dirs {
            args.extend(["--data-dir", d.as_str()]);
        }
        let (ok, text) = tool(&args);
        assert!(!ok && text.contains(want), "{name}: {text}");
        for d in &dirs {
            assert!(!std::path::Path::new(d).exists(), "{name}: {d} was written");
        }
        let (ok, text) = tool(&["check-backup", bad.to_str().unwrap()]);
        assert!(!ok && text.contains(want), "{name}: {text}");
    }
    // A node that is not there.
    let closed = free_ports(1)[0];
    let (ok, text) =
        tool(&["backup", "--from", &format!("127.0.0.1:{closed}"), "--out", "/tmp/never"]);
    assert!(!ok && text.contains("cannot connect"), "{text}");
}

#[test]
fn a_node_that_speaks_tls_only_is_backed_up_with_tls_and_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let common::Pki { ca, node_cert, node_key, client_cert, client_key } = common::pki(dir.path());
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let ports = free_ports(2);
    // One node, its client port TLS only (and clients must present a certificate: the
    // default --tls-auth-clients yes).
    let mut c = Cluster {
        dir: tempfile::tempdir().unwrap(),
        raft_ports: ports[..1].to_vec(),
        redis_ports: ports[1..].to_vec(),
        procs: vec![None],
        extra_args: vec![
            "--tls-cert-file".into(),
            path(&node_cert),
            "--tls-key-file".into(),
            path(&node_key),
            "--tls-ca-cert-file".into(),
            path(&ca),
        ],
        metrics_ports: Vec::new(),
    };
    c.start_node(1);
    let from = format!("127.0.0.1:{}", c.redis_ports[0]);
    // Data written over TLS with redis-cli, once the node leads.
    let written = wait_until(Duration::from_secs(20), || {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &c.redis_ports[0].to_string(), "--tls"])
            .args(["--cacert", &path(&ca), "--cert", &path(&client_cert)])
            .args(["--key", &path(&client_key), "MSET", "a", "1", "b", "2", "c", "3"])
            .output()
            .expect("redis-cli is installed (apt-get install redis-tools)");
        (String::from_utf8_lossy(&out.stdout).trim() == "OK").then_some(())
    });
    assert!(written.is_some(), "the TLS node never took a write");

    let file = c.dir.path().join("tls.rkv");
    let out = file.to_str().unwrap();
    let (ok, text) = tool(&[
        "backup",
        "--from",
        &from,
        "--out",
        out,
        "--tls",
        "--cacert",
        &path(&ca),
        "--cert",
        &path(&client_cert),
        "--key",
        &path(&client_key),
    ]);
    assert!(ok && text.contains(": 1 chunks,"), "{text}");
    let (ok, text) = tool(&["check-backup", out]);
    assert!(ok && text.contains("a whole backup at index"), "{text}");
    std::fs::remove_file(&file).unwrap();

    // Plain RESP to the TLS port: refused with a hint, and no file (nor FILE.partial) left.
    let (ok, text) = tool(&["backup", "--from", &from, "--out", out]);
    assert!(!ok && text.contains("does its client port speak TLS?"), "{text}");
    assert!(!file.exists() && !c.dir.path().join("tls.rkv.partial").exists());
    // --tls needs the three files.
    let (ok, text) = tool(&["backup", "--from", &from, "--out", out, "--tls"]);
    assert!(!ok && text.contains("--cacert"), "{text}");
    assert!(!file.exists());
}
