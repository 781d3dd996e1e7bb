//! TLS on the client and peer ports (issue 13, section 4), against real processes and the real
//! `redis-cli --tls`: a 3-node cluster whose clients and peers all speak TLS (and authenticate
//! with a cluster secret) replicates, serves and takes a joining node; a plain client, a
//! client without a certificate or with one from another CA, and a plain peer are refused.

mod common;

use common::{pki, wait_until, Cluster};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p
}

/// A cluster started with `extra`, not waited on through the (plain) redis crate.
fn start_tls_cluster(extra: &[String]) -> Cluster {
    let ports = common::free_ports(6);
    let mut c = Cluster {
        dir: tempfile::tempdir().unwrap(),
        raft_ports: ports[..3].to_vec(),
        redis_ports: ports[3..].to_vec(),
        procs: (0..3).map(|_| None).collect(),
        extra_args: extra.to_vec(),
        metrics_ports: Vec::new(),
    };
    for id in 1..=3 {
        c.start_node(id);
    }
    c
}

/// `redis-cli` against node `id`: (succeeded, stdout + stderr).
fn cli(c: &Cluster, id: usize, tls: &[&Path], args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &c.redis_ports[id - 1].to_string()]);
    if let [ca, rest @ ..] = tls {
        cmd.arg("--tls").arg("--cacert").arg(ca);
        if let [cert, key] = rest {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
    }
    let out =
        cmd.args(args).output().expect("redis-cli is installed (apt-get install redis-tools)");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && !text.contains("ERR") && !text.contains("rror"), text)
}

#[test]
fn a_cluster_with_tls_on_clients_and_peers_serves_redis_cli_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    // The cluster secret too: both layers together, a joining node included.
    let secret = write(dir.path(), "secret", "a secret for the TLS test's nodes\n");
    let flags: Vec<String> = [
        "--cluster-secret-file",
        secret.to_str().unwrap(),
        "--tls-cert-file",
        p.node_cert.to_str().unwrap(),
        "--tls-key-file",
        p.node_key.to_str().unwrap(),
        "--tls-ca-cert-file",
        p.ca.to_str().unwrap(),
        "--tls-cluster",
        "yes",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let c = start_tls_cluster(&flags);
    let tls: [&Path; 3] = [&p.ca, &p.client_cert, &p.client_key];

    // Writable through every node (a follower forwards to the leader over TLS), and what one
    // node wrote another reads.
    for id in 1..=3 {
        let key = format!("k{id}");
        let done = wait_until(Duration::from_secs(20), || {
            let (ok, out) = cli(&c, id, &tls, &["SET", &key, "over-tls"]);
            (ok && out.trim() == "OK").then_some(())
        });
        assert!(
            done.is_some(),
            "node {id} never took a write over TLS: {:?}",
            cli(&c, id, &tls, &["SET", &key, "v"])
        );
    }
    let (ok, out) = cli(&c, 3, &tls, &["GET", "k1"]);
    assert!(ok && out.trim() == "over-tls", "{out}");

    // A plain client, and a TLS client without a certificate, get nothing.
    let (ok, out) = cli(&c, 1, &[], &["PING"]);
    assert!(!ok || !out.contains("PONG"), "a plain client was served: {out}");
    let (ok, out) = cli(&c, 1, &[&p.ca], &["PING"]);
    assert!(!ok || !out.contains("PONG"), "a client without a certificate was served: {out}");
    // Nor one whose certificate another CA signed.
    let rogue_dir = tempfile::tempdir().unwrap();
    let rogue = pki(rogue_dir.path());
    let (ok, out) = cli(&c, 1, &[&p.ca, &rogue.client_cert, &rogue.client_key], &["PING"]);
    assert!(!ok || !out.contains("PONG"), "a client certified by another CA was served: {out}");
    let (ok, out) = cli(&c, 1, &tls, &["PING"]);
    assert!(ok && out.contains("PONG"), "{out}");

    // A fourth node joins through a member's TLS client port and replicates over TLS.
    let ports = common::free_ports(2);
    let mut joiner = Command::new(common::BIN)
        .args(["--id", "4", "--join", &format!("127.0.0.1:{}", c.redis_ports[1])])
        .args(["--raft-addr", &format!("127.0.0.1:{}", ports[0]), "--port", &ports[1].to_string()])
        .arg("--data-dir")
        .arg(c.dir.path().join("joiner4"))
        .args(&flags)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(c.dir.path().join("joiner4.log")).unwrap())
        .spawn()
        .unwrap();
    let joined = wait_until(Duration::from_secs(30), || {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &ports[1].to_string(), "--tls", "--cacert"])
            .arg(&p.ca)
            .arg("--cert")
            .arg(&p.client_cert)
            .arg("--key")
            .arg(&p.client_key)
            .args(["GET", "k1"]);
        let out = cmd.output().ok()?;
        (String::from_utf8_lossy(&out.stdout).trim() == "over-tls").then_some(())
    });
    let _ = joiner.kill();
    let _ = joiner.wait();
    assert!(
        joined.is_some(),
        "the node joining over TLS never served the cluster's data: {}",
        std::fs::read_to_string(c.dir.path().join("joiner4.log")).unwrap_or_default()
    );

    // A plain connection to a Raft port is refused before any frame is read, and logged.
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", c.raft_ports[0])).unwrap();
    let _ = s.write_all(b"\x00\x00\x00\x05hello");
    let refused = wait_until(Duration::from_secs(10), || {
        let log = std::fs::read_to_string(c.dir.path().join("node1.log")).unwrap_or_default();
        log.contains("TLS handshake failed").then_some(())
    });
    assert!(refused.is_some(), "the plain peer connection is not logged as refused");
}

#[test]
fn bad_tls_files_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let bogus = write(dir.path(), "bogus.pem", "not a certificate\n");
    let run = |cert: &Path, key: &Path, ca: &Path| {
        let out = Command::new(common::BIN)
            .args(["--id", "1", "--cluster", "127.0.0.1:1", "--port", "0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--tls-cert-file")
            .arg(cert)
            .arg("--tls-key-file")
            .arg(key)
            .arg("--tls-ca-cert-file")
            .arg(ca)
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&bogus, &p.node_key, &p.ca);
    assert!(err.contains("bogus.pem"), "{err}");
    let err = run(&p.node_cert, &p.client_key, &p.ca);
    assert!(err.contains("do not make a usable certificate and key"), "{err}");
    let err = run(&p.node_cert, &p.node_key, &dir.path().join("missing.pem"));
    assert!(err.contains("missing.pem"), "{err}");
    assert!(!dir.path().join("data").exists(), "a refused start created the data directory");
    // A TLS flag alone is refused by the parser.
    let out = Command::new(common::BIN)
        .args(["--id", "1", "--cluster", "127.0.0.1:1", "--port", "0", "--tls-cert-file"])
        .arg(&p.node_cert)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--tls-key-file"));
}
