//! Peer authentication (issue 13, section 4), against real processes: a frame forged on a
//! Raft port changes a cluster without `--cluster-secret-file` and changes nothing with one;
//! a replayed frame and a replayed handshake are refused and logged.

mod common;

use common::{wait_until, Cluster};
use raft_kv_core::{Message, MessageBody, NodeId, Term};
use raft_kv_runtime::codec::{self, Hello, PeerFrame};
use raft_kv_runtime::peer_auth::{ClusterSecret, Role, Session};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

const SECRET: &str = "a secret shared by the test's nodes";

fn start(secret: bool) -> Cluster {
    if !secret {
        return Cluster::start(3);
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    let path = path.to_str().unwrap().to_string();
    let c = Cluster::start_with(3, &["--cluster-secret-file", &path]);
    // The nodes read the file at start-up only.
    drop(dir);
    c
}

fn cluster_id(c: &Cluster) -> u64 {
    let addrs: BTreeMap<NodeId, SocketAddr> = c
        .raft_ports
        .iter()
        .enumerate()
        .map(|(i, p)| (NodeId(i as u64 + 1), format!("127.0.0.1:{p}").parse().unwrap()))
        .collect();
    raft_kv_runtime::cluster_id(&addrs)
}

fn info_field(c: &Cluster, id: usize, field: &str) -> Option<u64> {
    let mut con = c.try_conn(id)?;
    let info: String = redis::cmd("INFO").arg("raft").query(&mut con).ok()?;
    let line = info.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line[field.len() + 1..].trim().parse().ok()
}

/// A leader and a follower that agree on it, and the term.
fn leader_and_follower(c: &Cluster) -> (usize, usize, u64) {
    wait_until(Duration::from_secs(20), || {
        let leader = c.leader(1)?;
        let follower = (1..=3).find(|&i| i != leader)?;
        (c.leader(follower)? == leader).then_some(())?;
        Some((leader, follower, info_field(c, follower, "term")?))
    })
    .expect("a leader known to a follower")
}

fn write_frame(s: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    s.write_all(&(payload.len() as u32).to_be_bytes())?;
    s.write_all(payload)
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len)?;
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut buf)?;
    Ok(buf)
}

fn raft_conn(c: &Cluster, id: usize) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", c.raft_ports[id - 1])).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// The leader's TimeoutNow, forged: a follower that takes it campaigns at once.
fn timeout_now(leader: usize, follower: usize, term: u64) -> Vec<u8> {
    codec::encode(&PeerFrame::Raft(Message {
        from: NodeId(leader as u64),
        to: NodeId(follower as u64),
        term: Term(term),
        body: MessageBody::TimeoutNow,
    }))
}

/// Sends a plain hello claiming to be the leader, then its forged TimeoutNow; true if the
/// follower's term moved within 3 s.
fn forge_timeout_now(c: &Cluster) -> bool {
    let (leader, follower, term) = leader_and_follower(c);
    let mut s = raft_conn(c, follower);
    let hello = Hello { cluster_id: cluster_id(c), from: NodeId(leader as u64), addr: None };
    // Either write may fail once the node closes the connection: that is the point.
    let _ = write_frame(&mut s, &codec::encode(&PeerFrame::Hello(hello)));
    let _ = write_frame(&mut s, &timeout_now(leader, follower, term));
    wait_until(Duration::from_secs(3), || {
        info_field(c, follower, "term").filter(|&t| t > term).map(|_| ())
    })
    .is_some()
}

fn log_of(c: &Cluster, id: usize) -> String {
    std::fs::read_to_string(c.dir.path().join(format!("node{id}.log"))).unwrap_or_default()
}

#[test]
fn without_a_secret_a_forged_frame_on_the_raft_port_moves_the_cluster() {
    // The attack the secret stops: anyone who reaches a Raft port speaks for a member.
    let c = start(false);
    assert!(forge_timeout_now(&c), "a forged TimeoutNow should start an election here");
}

#[test]
fn with_a_secret_a_forged_frame_changes_nothing_and_is_logged() {
    let c = start(true);
    assert!(!forge_timeout_now(&c), "a forged frame moved the term of a cluster with a secret");
    let refused = wait_until(Duration::from_secs(5), || {
        (1..=3).find(|&i| log_of(&c, i).contains("did not authenticate"))
    });
    assert!(
        refused.is_some(),
        "the refused connection is not logged: {}",
        (1..=3).map(|i| log_of(&c, i)).collect::<Vec<_>>().join("\n---\n")
    );
    c.wait_writable();
}

#[test]
fn with_a_secret_a_replayed_frame_or_handshake_is_refused_and_logged() {
    let c = start(true);
    let secret = ClusterSecret::new(SECRET.as_bytes()).unwrap();
    let (leader, follower, term) = leader_and_follower(&c);
    let (caller, acceptor) = (NodeId(leader as u64), NodeId(follower as u64));

    // A genuine handshake (the test knows the secret), recorded.
    let mut s = raft_conn(&c, follower);
    let hello = Hello { cluster_id: cluster_id(&c), from: caller, addr: None };
    let caller_nonce = [42u8; 32];
    let auth_hello = codec::encode(&PeerFrame::AuthHello { hello, nonce: caller_nonce });
    write_frame(&mut s, &auth_hello).unwrap();
    let (acceptor_nonce, proof) = match codec::decode(&read_frame(&mut s).unwrap()).unwrap() {
        PeerFrame::Challenge { nonce, proof } => (nonce, proof),
        other => panic!("expected a challenge, got {other:?}"),
    };
    let session = Session { caller, acceptor, caller_nonce, acceptor_nonce };
    assert!(session.verify(&secret, Role::Acceptor, &proof), "the node's proof does not check");
    let auth = codec::encode(&PeerFrame::Auth { proof: session.proof(&secret, Role::Caller) });
    write_frame(&mut s, &auth).unwrap();

    // A frame sealed for this connection (a stale TimeoutNow: harmless), then the same frame
    // again: the replay closes the connection.
    let mut frames = session.frames(&secret);
    let mut sealed = timeout_now(leader, follower, 0);
    frames.seal(&mut sealed);
    write_frame(&mut s, &sealed).unwrap();
    let _ = write_frame(&mut s, &sealed);
    let mut byte = [0u8; 1];
    assert!(
        matches!(s.read(&mut byte), Ok(0) | Err(_)),
        "a replayed frame left the connection open"
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            log_of(&c, follower).contains("frame failed authentication").then_some(())
        })
        .is_some(),
        "the replayed frame is not logged"
    );

    // The recorded handshake replayed on a new connection: the node's fresh nonce makes the
    // recorded proof worthless.
    let mut s = raft_conn(&c, follower);
    write_frame(&mut s, &auth_hello).unwrap();
    match codec::decode(&read_frame(&mut s).unwrap()).unwrap() {
        PeerFrame::Challenge { nonce, .. } => assert_ne!(nonce, acceptor_nonce),
        other => panic!("expected a challenge, got {other:?}"),
    }
    let _ = write_frame(&mut s, &auth);
    let _ = write_frame(&mut s, &sealed);
    assert!(matches!(s.read(&mut byte), Ok(0) | Err(_)), "a replayed handshake was accepted");
    assert!(
        wait_until(Duration::from_secs(5), || {
            log_of(&c, follower)
                .contains("failed to prove it knows the cluster secret")
                .then_some(())
        })
        .is_some(),
        "the replayed handshake is not logged"
    );

    assert_eq!(info_field(&c, follower, "term"), Some(term), "the term moved");
    c.wait_writable();
}

#[test]
fn a_node_with_another_secret_is_refused_and_a_bad_secret_file_stops_the_start() {
    let mut c = start(true);
    let dir = tempfile::tempdir().unwrap();

    // Node 3 restarted with another secret: its peers refuse it, the other two stay writable.
    let other = dir.path().join("other");
    std::fs::write(&other, "another secret, long enough\n").unwrap();
    c.kill(3);
    let kept = c.extra_args.clone();
    c.extra_args = vec!["--cluster-secret-file".into(), other.to_str().unwrap().into()];
    c.start_node(3);
    c.extra_args = kept;
    assert!(
        wait_until(Duration::from_secs(10), || {
            (1..=2)
                .any(|i| log_of(&c, i).contains("failed to prove it knows the cluster secret"))
                .then_some(())
        })
        .is_some(),
        "no member logged the node with the wrong secret"
    );
    let mut con = c.conn(1);
    let _: () = redis::cmd("SET").arg("k").arg("v").query(&mut con).unwrap();
    let mut con3 = c.conn(3);
    let r: redis::RedisResult<String> = redis::cmd("SET").arg("k").arg("w").query(&mut con3);
    assert!(r.is_err(), "the node with the wrong secret took part in a write: {r:?}");

    // A bad secret file is refused before anything is created.
    let short = dir.path().join("short");
    std::fs::write(&short, "too short\n").unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["--id", "1", "--cluster", &c.cluster_arg(), "--port", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--cluster-secret-file")
        .arg(&short)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("at least 16"), "{err}");
    assert!(!dir.path().join("data").exists(), "a refused start created the data directory");
    let missing = std::process::Command::new(common::BIN)
        .args(["--id", "1", "--cluster", &c.cluster_arg(), "--port", "0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--cluster-secret-file")
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&missing.stderr);
    assert!(err.contains("cannot read the cluster secret file"), "{err}");
    assert!(!dir.path().join("data").exists(), "a refused start created the data directory");
}
