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
    check_caught_up(c, id);
}

/// Node `id` catches up and serves every key of the test from its own state.
fn check_caught_up(c: &Cluster, id: usize) {
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
fn with_rebuild_a_node_moves_its_damaged_directory_aside_and_catches_up_by_itself() {
    let mut c = Cluster::start_with(3, &["--on-damaged-data-dir", "rebuild"]);
    write_keys_and_wait_for(&c, 3);
    c.kill(3);
    flip_middle_byte(&files(&c.data_dir(3), ".log")[0]);
    c.start_node(3);
    check_caught_up(&c, 3);
    let kept = std::fs::read_dir(c.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("node3.damaged-"));
    assert!(kept, "the damaged directory is kept beside the new one");
    let log = std::fs::read_to_string(c.dir.path().join("node3.log")).unwrap();
    assert!(log.contains("damaged data directory moved aside"), "node 3 said: {log}");
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

/// A tmpfs mounted at a path for the test's life (the test runs as root, as CI does).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(at.to_owned())
    }

    fn free_bytes(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.0).unwrap();
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: detached even while a node still has files open there (the cluster, dropped
        // after this, kills it).
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_node_whose_disk_fills_takes_no_writes_and_catches_up_once_space_is_freed() {
    const RESERVE: u64 = 48 << 20;
    let mut c = Cluster::start_with(3, &["--disk-reserve-bytes", &RESERVE.to_string()]);
    // Node 3's data directory moves to a small disk of its own (it comes back empty and
    // catches up, as a node whose disk was replaced).
    c.kill(3);
    std::fs::remove_dir_all(c.data_dir(3)).unwrap();
    let disk = Tmpfs::mount(&c.data_dir(3), 160 << 20);
    c.start_node(3);
    write_keys_and_wait_for(&c, 3);

    // Something else fills the disk to under the reserve.
    let fill = disk.free_bytes() - RESERVE / 2;
    let filler_file = c.data_dir(3).join("filler");
    std::fs::write(&filler_file, vec![0u8; fill as usize]).unwrap();

    // Node 3 answers writes with Redis's persistence error, and changes nothing.
    let mut con3 = c.conn(3);
    let err = wait_until(Duration::from_secs(5), || {
        con3.set::<_, _, ()>("refused", "x").err().map(|e| e.to_string())
    })
    .expect("node 3 refuses writes");
    assert!(err.contains("MISCONF") && err.contains("disk is nearly full"), "{err}");
    // The cluster stays writable through the others; node 3 takes no new entries meanwhile.
    let applied_before = info_field(&c, 3, "applied_index").unwrap();
    let mut con1 = c.conn(1);
    let value = "v".repeat(10_000);
    for i in 0..200 {
        let _: () = con1.set(format!("late{i}"), &value).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    let applied_low = info_field(&c, 3, "applied_index").unwrap();
    assert!(
        applied_low <= applied_before + 2,
        "node 3 kept taking entries on a full disk: {applied_before} -> {applied_low}"
    );
    assert!(disk.free_bytes() > 0, "the disk filled up to the last byte");
    let mut probe = c.conn(1);
    assert_eq!(probe.get::<_, Option<String>>("refused").unwrap(), None, "the refused write");

    // Space comes back: node 3 catches up by itself and serves every key.
    std::fs::remove_file(&filler_file).unwrap();
    let leader = c.leader(1).expect("a leader");
    let commit = info_field(&c, leader, "commit_index").unwrap();
    wait_until(Duration::from_secs(30), || {
        (info_field(&c, 3, "applied_index")? >= commit).then_some(())
    })
    .expect("node 3 catches up once space is freed");
    let _: () = con3.set("accepted", "y").unwrap();
    for i in (0..200).step_by(17) {
        let v: String = con3.get(format!("late{i}")).unwrap();
        assert_eq!(v, value);
    }
    c.kill(3);
}

/// Fills the disk at `dir` to its last byte; returns the file that holds the space.
fn fill_up(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 1 << 16];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn a_node_that_meets_a_full_disk_stops_saying_so_and_comes_back_once_space_is_freed() {
    // No reserve: the disk fills to its last byte under the node.
    let mut c = Cluster::start_with(3, &["--disk-reserve-bytes", "0"]);
    c.kill(3);
    std::fs::remove_dir_all(c.data_dir(3)).unwrap();
    let _disk = Tmpfs::mount(&c.data_dir(3), 64 << 20);
    c.start_node(3);
    write_keys_and_wait_for(&c, 3);
    let filler = fill_up(&c.data_dir(3));

    // The cluster keeps taking writes through the others; node 3 meets the full disk and
    // stops, saying why.
    let mut con1 = c.conn(1);
    let value = "v".repeat(100_000);
    let mut written = 0;
    let status = wait_until(Duration::from_secs(60), || {
        let _: () = con1.set(format!("late{written}"), &value).unwrap();
        written += 1;
        c.procs[2].as_mut().unwrap().try_wait().ok().flatten()
    })
    .expect("node 3 went on with a full disk");
    assert!(!status.success());
    c.procs[2] = None;
    let log = std::fs::read_to_string(c.dir.path().join("node3.log")).unwrap();
    assert!(log.contains("is full") && log.contains("Free space"), "node 3 said: {log}");
    assert!(!log.contains("panicked"), "node 3 panicked: {log}");

    // Space comes back; started again, node 3 catches up and serves every write.
    std::fs::remove_file(filler).unwrap();
    c.start_node(3);
    let leader = c.leader(1).expect("a leader");
    let commit = info_field(&c, leader, "commit_index").unwrap();
    wait_until(Duration::from_secs(30), || {
        (info_field(&c, 3, "applied_index")? >= commit).then_some(())
    })
    .expect("node 3 catches up once space is freed");
    let mut con3 = c.conn(3);
    for i in (0..written).step_by(7) {
        let v: String = con3.get(format!("late{i}")).unwrap();
        assert_eq!(v, value);
    }
    for i in 0..KEYS {
        let v: String = con3.get(format!("key{i}")).unwrap();
        assert_eq!(v, format!("value{i}"));
    }
}
