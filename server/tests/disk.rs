//! Disk faults on real processes: a data directory with a flipped byte is refused at start (a
//! node never votes for, serves or replicates data it cannot trust), and the documented repair
//! (move the directory aside, restart the node under its id) brings it back from its peers.

mod common;

use common::{wait_until, Cluster};
use redis::Commands;
use std::path::{Path, PathBuf};
use std::time::Duration;

const KEYS: usize = 300;

fn info_field(c: &Cluster, id: usize, field: &str) -> Option<u64> {
    let mut con = c.try_conn(id)?;
    let info: String = redis::cmd("INFO").arg("raft").query(&mut con).ok()?;
    let line = info.lines().find(|l| l.starts_with(&format!("{field}:")))?;
    line[field.len() + 1..].trim().parse().ok()
}

/// Writes the test's keys through node 1 and waits until node `id` applied them.
fn write_keys_and_wait_for(c: &Cluster, id: usize) {
    let mut con = c.conn(1);
    for i in 0..KEYS {
        let _: () = con.set(format!("key{i}"), format!("value{i}")).unwrap();
    }
    let leader = c.leader(1).expect("a leader");
    let commit = info_field(c, leader, "commit_index").unwrap();
    wait_until(Duration::from_secs(20), || {
        (info_field(c, id, "applied_index")? >= commit).then_some(())
    })
    .unwrap_or_else(|| panic!("node {id} did not apply {commit}"));
}

/// The files of `dir` whose names end with `suffix`, largest first.
fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .map(|e| (e.metadata().map_or(0, |m| m.len()), e.path()))
        .collect();
    found.sort_by(|a, b| b.cmp(a));
    found.into_iter().map(|(_, p)| p).collect()
}

/// Flips every bit of the byte in the middle of `path`.
fn flip_middle_byte(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    assert!(bytes.len() > 64, "{} holds only {} bytes", path.display(), bytes.len());
    let at = bytes.len() / 2;
    bytes[at] ^= 0xff;
    std::fs::write(path, bytes).unwrap();
}

/// Starts node `id` and expects it to refuse: it exits with a failure and says why and what to
/// do.
fn expect_refusal(c: &Cluster, id: usize) {
    let log = c.dir.path().join(format!("node{id}.log"));
    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    let mut child = c.command(id).spawn().unwrap();
    let status = wait_until(Duration::from_secs(30), || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("node {id} started on a corrupt data directory and kept running");
    };
    assert!(!status.success(), "node {id} exited with {status}");
    let text = std::fs::read_to_string(&log).unwrap_or_default()[before..].to_string();
    assert!(text.to_lowercase().contains("corrupt"), "node {id} did not say why: {text}");
    assert!(!text.contains("panicked"), "node {id} panicked: {text}");
    assert!(text.contains("move the directory aside"), "the refusal says how to repair: {text}");
}

/// The repair the README gives: the corrupt directory moved aside, the node restarted under
/// its id. It comes back empty, catches up from its peers, and serves every key.
fn repair_and_check(c: &mut Cluster, id: usize) {
    let dir = c.data_dir(id);
    std::fs::rename(&dir, dir.with_extension("corrupt")).unwrap();
    c.start_node(id);
    let leader = c.leader(1).expect("a leader");
    let commit = info_field(c, leader, "commit_index").unwrap();
    wait_until(Duration::from_secs(30), || {
        (info_field(c, id, "applied_index")? >= commit).then_some(())
    })
    .unwrap_or_else(|| panic!("node {id} did not catch up to {commit}"));
    // A read through node `id` is served from its own state machine (after ReadIndex).
    let mut con = c.conn(id);
    for i in 0..KEYS {
        let v: String = con.get(format!("key{i}")).unwrap();
        assert_eq!(v, format!("value{i}"));
    }
}

#[test]
fn a_flipped_byte_in_the_write_ahead_log_is_refused_not_replayed_up_to() {
    let mut c = Cluster::start(3);
    write_keys_and_wait_for(&c, 3);
    c.kill(3);
    let wal = files(&c.data_dir(3), ".log");
    assert!(!wal.is_empty(), "node 3 has a write-ahead log");
    flip_middle_byte(&wal[0]);
    expect_refusal(&c, 3);
    repair_and_check(&mut c, 3);
}

#[test]
fn a_flipped_byte_in_a_table_file_is_refused() {
    let mut c = Cluster::start(3);
    write_keys_and_wait_for(&c, 3);
    // A restart replays the write-ahead log into table files.
    c.kill(3);
    c.start_node(3);
    c.wait_writable();
    c.kill(3);
    let tables = files(&c.data_dir(3), ".sst");
    assert!(!tables.is_empty(), "node 3 has table files");
    for t in &tables {
        flip_middle_byte(t);
    }
    expect_refusal(&c, 3);
    repair_and_check(&mut c, 3);
}
