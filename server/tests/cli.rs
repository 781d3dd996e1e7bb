//! Bad flags, a port in use, and a foreign or corrupt data directory are refused with a clear
//! message and a non-zero exit, before anything is written.

mod common;

use common::{free_ports, BIN};
use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN).args(args).env("RUST_LOG", "off").output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn bad_flags_are_refused_clearly() {
    let (ok, err) =
        run(&["--id", "4", "--cluster", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "--port", "1"]);
    assert!(!ok);
    assert!(err.contains("--id 4 is not in the cluster"), "{err}");
    let (ok, err) = run(&["--id", "1", "--cluster", "not-an-address", "--port", "1"]);
    assert!(!ok);
    assert!(err.contains("--cluster"), "{err}");
    let (ok, err) = run(&["--id", "1", "--cluster", "127.0.0.1:1,127.0.0.1:1", "--port", "1"]);
    assert!(!ok);
    assert!(err.contains("twice"), "{err}");
    let one = ["--id", "1", "--cluster", "127.0.0.1:1", "--port", "1"];
    let (ok, err) = run(&[&one[..], &["--lease-max-clock-drift", "5%"]].concat());
    assert!(!ok);
    assert!(err.contains("not a fraction between 0 and 1"), "{err}");
    let (ok, err) = run(&[&one[..], &["--protected-mode", "maybe"]].concat());
    assert!(!ok);
    assert!(err.contains("'maybe' is neither yes nor no"), "{err}");
    let (ok, err) = run(&[&one[..], &["--snapshot-entries", "0"]].concat());
    assert!(!ok);
    assert!(err.contains("--snapshot-entries"), "{err}");
    let (ok, err) = run(&["--id", "4", "--join", "127.0.0.1:1", "--port", "1"]);
    assert!(!ok);
    assert!(err.contains("--raft-addr"), "{err}");
    let (ok, err) =
        run(&[&one[..], &["--join", "127.0.0.1:1", "--raft-addr", "127.0.0.1:2"]].concat());
    assert!(!ok);
    assert!(err.contains("cannot be used with"), "{err}");
    let closed = free_ports(1)[0];
    let member = format!("127.0.0.1:{closed}");
    let (ok, err) =
        run(&["--id", "4", "--join", &member, "--raft-addr", "127.0.0.1:2", "--port", "1"]);
    assert!(!ok);
    assert!(err.contains(&format!("cannot connect to {member}")), "{err}");
}

#[test]
fn a_port_in_use_is_reported() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let raft = free_ports(1)[0];
    let dir = tempfile::tempdir().unwrap();
    let cluster = format!("127.0.0.1:{raft}");
    let (ok, err) = run(&[
        "--id",
        "1",
        "--cluster",
        &cluster,
        "--port",
        &port,
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("cannot listen for redis clients"), "{err}");
}

#[test]
fn a_data_dir_of_another_node_or_not_ours_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    let ports = free_ports(4);
    let cluster = format!("127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let data_s = data.to_str().unwrap();
    // Create the data directory as node 1 (it stays down: no quorum, but that is fine).
    let mut child = Command::new(BIN)
        .args([
            "--id",
            "1",
            "--cluster",
            &cluster,
            "--port",
            &ports[2].to_string(),
            "--data-dir",
            data_s,
        ])
        .env("RUST_LOG", "off")
        .spawn()
        .unwrap();
    common::wait_until(std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", ports[2])).ok()
    })
    .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();

    let (ok, err) = run(&[
        "--id",
        "2",
        "--cluster",
        &cluster,
        "--port",
        &ports[3].to_string(),
        "--data-dir",
        data_s,
    ]);
    assert!(!ok);
    assert!(err.contains("belongs to node 1"), "{err}");

    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("important.txt"), "not a database").unwrap();
    let (ok, err) = run(&[
        "--id",
        "1",
        "--cluster",
        &cluster,
        "--port",
        &ports[3].to_string(),
        "--data-dir",
        other.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("not a raft-kv data directory"), "{err}");
    assert_eq!(std::fs::read_to_string(other.join("important.txt")).unwrap(), "not a database");
}

#[test]
fn yes_no_flags_take_their_values() {
    // A bool flag with a value parser once parsed as a switch: `--protected-mode no` was
    // refused with "'true' is neither yes nor no".
    let c = common::Cluster::start_with(1, &["--protected-mode", "no"]);
    let mut con = c.conn(1);
    let pong: String = redis::cmd("PING").query(&mut con).unwrap();
    assert_eq!(pong, "PONG");
}

/// Starts a one-node cluster with `extra` flags, lets it elect itself and stops it; its stderr.
fn log_of(extra: &[&str]) -> String {
    let ports = free_ports(2);
    let dir = tempfile::tempdir().unwrap();
    let cluster = format!("127.0.0.1:{}", ports[0]);
    let port = ports[1].to_string();
    let mut child = Command::new(BIN)
        .args(["--id", "1", "--cluster", &cluster, "--port", &port])
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(extra)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its node task answers INFO: it logged "node started" as it spawned that task.
    common::wait_until(std::time::Duration::from_secs(10), || {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", ports[1])).ok()?;
        redis::cmd("INFO").query::<String>(&mut client.get_connection().ok()?).ok()
    })
    .expect("the node answered INFO");
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_log_written_to_a_pipe_has_no_colour_codes_and_json_is_one_object_per_line() {
    let text = log_of(&[]);
    assert!(text.contains("INFO") && text.contains("node started"), "{text}");
    assert!(!text.contains('\x1b'), "ANSI escapes in a piped log: {text:?}");
    let json = log_of(&["--log-format", "json"]);
    let lines: Vec<&str> = json.lines().collect();
    assert!(lines.len() >= 3, "{json}");
    for line in lines {
        assert!(line.starts_with("{\"timestamp\":\"") && line.ends_with('}'), "{line}");
        assert!(line.contains("\"level\":\"") && line.contains("\"fields\":{"), "{line}");
    }
    assert!(json.contains("\"message\":\"node started\""), "{json}");
    let (ok, err) =
        run(&["--id", "1", "--cluster", "127.0.0.1:1", "--port", "1", "--log-format", "xml"]);
    assert!(!ok);
    assert!(err.contains("possible values: text, json"), "{err}");
}
