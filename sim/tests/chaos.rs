//! Seeded chaos simulations of the real runtime, checked for linearizability and invariants.
//!
//! - `SIM_SEEDS=N` runs N seeds (default 1000; scripts/test.sh asks for more), from `SIM_SEED_BASE` (default: drawn from the
//!   clock and printed, so every CI run explores new seeds).
//! - `SIM_SEED=S` replays seed S alone, exactly.
//! - A failing seed prints its replay command and fault schedule, and writes its history as
//!   text and as an HTML timeline under `target/sim-failures/` (or `SIM_FAILURE_DIR`).
//!
//! Build with `RUSTFLAGS="--cfg madsim"`; see scripts/sim.sh.
#![cfg(madsim)]

use raft_kv_core::reach::Path;
use raft_kv_core::PlantedBug;
use raft_kv_sim::run::{run, RunOptions, RunReport};
use raft_kv_sim::timeline;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a number"),
    }
}

/// `SIM_PLANTED=<bug>` (e.g. `LeaseIgnoresClockDrift`) replays a seed with that bug planted.
fn planted_from_env() -> Option<PlantedBug> {
    let name = std::env::var("SIM_PLANTED").ok()?;
    let bug = PlantedBug::ALL.into_iter().find(|b| format!("{b:?}") == name);
    Some(bug.unwrap_or_else(|| panic!("SIM_PLANTED={name:?} is none of {:?}", PlantedBug::ALL)))
}

/// The run options of `seed`; `SIM_CHECK_STEPS` raises the checker's budget per key.
fn options(seed: u64, planted: Option<PlantedBug>) -> RunOptions {
    let mut o = RunOptions { planted, ..RunOptions::new(seed) };
    if let Some(steps) = env_u64("SIM_CHECK_STEPS") {
        o.check.steps_per_key_max = steps;
    }
    o
}

fn failure_dir() -> PathBuf {
    std::env::var_os("SIM_FAILURE_DIR").map(PathBuf::from).unwrap_or_else(|| {
        let sim = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        sim.parent().unwrap_or(&sim).join("target/sim-failures")
    })
}

/// Writes the failing run's history, schedule and timeline; returns the directory.
fn write_artifacts(r: &RunReport, label: &str) -> PathBuf {
    let dir = failure_dir().join(format!("{label}seed-{}", r.seed));
    let _ = std::fs::create_dir_all(&dir);
    let mut text = format!("{}\n\nviolations:\n", r.summary());
    for v in &r.violations {
        text.push_str(&format!("  {v}\n"));
    }
    text.push_str(&format!("\ncheck: {}\n\nschedule:\n", r.check));
    for s in &r.schedule {
        text.push_str(&format!("  {s}\n"));
    }
    let highlight: Vec<usize> = r
        .check
        .failure
        .as_ref()
        .map(|f| f.history.iter().map(|o| o.id).collect())
        .unwrap_or_default();
    if let Some(f) = &r.check.failure {
        text.push_str(&format!("\nminimal failing history of key {}:\n", f.key));
        text.push_str(&timeline::render_text(&f.history));
    }
    let _ = std::fs::write(dir.join("report.txt"), text);
    let _ = std::fs::write(dir.join("history.txt"), timeline::render_text(&r.history));
    let title = format!("raft-kv simulation seed {}: {}", r.seed, r.summary());
    let _ = std::fs::write(
        dir.join("history.html"),
        timeline::render_html(&title, &r.history, &highlight),
    );
    if let Some(f) = &r.check.failure {
        let title = format!("seed {}: minimal failing history of key {}", r.seed, f.key);
        let ids: Vec<usize> = f.history.iter().map(|o| o.id).collect();
        let _ = std::fs::write(
            dir.join("minimal.html"),
            timeline::render_html(&title, &f.history, &ids),
        );
    }
    dir
}

fn explain(r: &RunReport, label: &str) -> String {
    let dir = write_artifacts(r, label);
    let mut s = format!("FAILED {}\n", r.summary());
    for v in &r.violations {
        s.push_str(&format!("  violation: {v}\n"));
    }
    if let Some(f) = &r.check.failure {
        s.push_str(&format!("  minimal failing history of key {}:\n", f.key));
        for o in &f.history {
            s.push_str(&format!("    {o}\n"));
        }
    }
    s.push_str("  fault schedule:\n");
    for line in r.schedule.iter().take(60) {
        s.push_str(&format!("    {line}\n"));
    }
    if r.schedule.len() > 60 {
        s.push_str(&format!("    ... {} more in {}\n", r.schedule.len() - 60, dir.display()));
    }
    s.push_str(&format!("  history and timeline: {}\n", dir.display()));
    s.push_str(&format!("  replay: SIM_SEED={} ./scripts/sim.sh\n", r.seed));
    s
}

/// Totals over many runs.
#[derive(Default)]
struct Totals {
    runs: u64,
    ops: u64,
    indeterminate: u64,
    /// Seeds with a key the checker gave up on (its step budget ran out).
    unknown: Vec<u64>,
    /// The slowest convergence after the clients stopped, and its seed.
    slowest_convergence: (f64, u64),
    compactions: u64,
    installs: u64,
    /// Runs in which some node installed a snapshot.
    runs_with_installs: u64,
    transfers: (u64, u64),
    memberships: (u64, u64),
    /// Disks damaged (each then refused by its node and rebuilt), and failed-sync stops.
    damaged: u64,
    self_stops: u64,
    /// Per rare path (`reach::Path::ALL`'s order): seeds that reached it, and passes in all.
    reach: Vec<(u64, u64)>,
    /// Seeds per enabled fault kind.
    kinds: BTreeMap<String, u64>,
    /// Runs with a liveness core phase: (killed, cut off).
    cores: (u64, u64),
    /// Seeds whose simulation panicked (a node's storage refused a write, an assertion in
    /// the core...), with the panic message: failures too.
    panicked: Vec<(u64, String)>,
}

/// Runs `seeds` on every core; returns the failing reports.
fn run_many_with_totals(
    seeds: Vec<u64>,
    planted: Option<PlantedBug>,
    stop_at_first: bool,
) -> (Vec<RunReport>, Totals) {
    let threads =
        std::thread::available_parallelism().map_or(2, |n| n.get()).min(seeds.len().max(1));
    let next = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let totals = Arc::new(Mutex::new(Totals::default()));
    let seeds = Arc::new(seeds);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (next, stop, failures, seeds, totals) =
                (next.clone(), stop.clone(), failures.clone(), seeds.clone(), totals.clone());
            std::thread::spawn(move || loop {
                if stop.load(Ordering::Relaxed) == 1 {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(&seed) = seeds.get(i) else { return };
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&options(seed, planted))
                }));
                let r = match outcome {
                    Ok(r) => r,
                    Err(e) => {
                        let msg = e
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        totals.lock().unwrap().panicked.push((seed, msg));
                        if stop_at_first {
                            stop.store(1, Ordering::Relaxed);
                        }
                        continue;
                    }
                };
                {
                    let mut t = totals.lock().unwrap();
                    t.runs += 1;
                    t.ops += r.history.len() as u64;
                    t.indeterminate += r.indeterminate() as u64;
                    t.compactions += r.compactions;
                    t.installs += r.installs;
                    t.runs_with_installs += (r.installs > 0) as u64;
                    t.transfers.0 += r.transfers.0;
                    t.transfers.1 += r.transfers.1;
                    t.memberships.0 += r.memberships.0;
                    t.memberships.1 += r.memberships.1;
                    t.reach.resize(Path::ALL.len(), (0, 0));
                    for (slot, n) in t.reach.iter_mut().zip(r.reach) {
                        slot.0 += (n > 0) as u64;
                        slot.1 += n;
                    }
                    for kind in r.swarm.kind_names() {
                        *t.kinds.entry(kind).or_default() += 1;
                    }
                    match &r.core {
                        Some(c) if c.crashed => t.cores.0 += 1,
                        Some(_) => t.cores.1 += 1,
                        None => {}
                    }
                    let count = |what: &str| r.schedule.iter().filter(|l| l.contains(what)).count();
                    t.damaged += count("; damage the") as u64 + count("; damage log") as u64;
                    t.self_stops += count("stopped itself") as u64;
                    if !r.check.unknown_keys.is_empty() {
                        t.unknown.push(seed);
                    }
                    let converged = r.converged_after.map_or(f64::INFINITY, |d| d.as_secs_f64());
                    if converged > t.slowest_convergence.0 {
                        t.slowest_convergence = (converged, seed);
                    }
                }
                if r.failed() {
                    if stop_at_first {
                        stop.store(1, Ordering::Relaxed);
                    }
                    failures.lock().unwrap().push(r);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a simulation thread panicked");
    }
    let mut f = std::mem::take(&mut *failures.lock().unwrap());
    f.sort_by_key(|r| r.seed);
    let mut t = std::mem::take(&mut *totals.lock().unwrap());
    t.unknown.sort_unstable();
    (f, t)
}

/// The reach table (issue 14.6): how many seeds enabled each fault kind, had a liveness core,
/// and passed each rare path. A path no seed reached is marked: nothing tested it.
fn print_reach(t: &Totals) {
    let kinds: Vec<String> = t.kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("chaos reach: seeds per fault kind: {}", kinds.join(", "));
    println!(
        "chaos reach: liveness core phases: {} with the others killed, {} with them cut off",
        t.cores.0, t.cores.1
    );
    println!("chaos reach: {:<28} {:>8} {:>10}", "path", "seeds", "passes");
    for (path, (seeds, passes)) in Path::ALL.iter().zip(&t.reach) {
        let mark = if *seeds == 0 { "  <- NOT REACHED" } else { "" };
        println!("chaos reach: {:<28} {seeds:>8} {passes:>10}{mark}", format!("{path:?}"));
    }
}

#[test]
fn chaos_histories_are_linearizable_and_invariants_hold() {
    if let Some(seed) = env_u64("SIM_SEED") {
        // RUST_LOG=info (or debug: every Raft message) shows the nodes' logs of the replay.
        if std::env::var_os("RUST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_ansi(false)
                .try_init();
        }
        let r = run(&options(seed, planted_from_env()));
        println!("{}", r.summary());
        for line in &r.schedule {
            println!("  {line}");
        }
        assert!(!r.failed(), "{}", explain(&r, ""));
        return;
    }
    let count = env_u64("SIM_SEEDS").unwrap_or(1000);
    let base = env_u64("SIM_SEED_BASE").unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos % 1_000_000_000 * 1000
    });
    println!(
        "chaos: {count} seeds from {base} (SIM_SEED_BASE={base} SIM_SEEDS={count} repeats this)"
    );
    let started = Instant::now();
    let (failures, totals) = run_many_with_totals((base..base + count).collect(), None, false);
    let secs = started.elapsed().as_secs_f64();
    println!(
        "chaos: {count} seeds in {secs:.1}s ({:.0} seeds/minute), {} failed; {} operations checked ({} indeterminate)",
        count as f64 * 60.0 / secs,
        failures.len(),
        totals.ops,
        totals.indeterminate,
    );
    println!(
        "chaos: slowest convergence after the clients stopped: {:.1}s (seed {})",
        totals.slowest_convergence.0, totals.slowest_convergence.1
    );
    println!(
        "chaos: {} log compactions; {} snapshots installed, in {} of the seeds; {} leadership transfers answered, {} of them done; {} membership changes answered, {} of them applied",
        totals.compactions,
        totals.installs,
        totals.runs_with_installs,
        totals.transfers.0,
        totals.transfers.1,
        totals.memberships.0,
        totals.memberships.1
    );
    println!(
        "chaos: {} disks damaged (each refused by its node at restart, then rebuilt from its peers); {} nodes stopped themselves (a failed sync, or damage met)",
        totals.damaged, totals.self_stops
    );
    print_reach(&totals);
    if !totals.unknown.is_empty() {
        // Not a failure: the search ran out of budget. Replay these with a larger budget.
        println!(
            "chaos: {} seed(s) had a key beyond the checker's step budget (unknown), e.g. {:?}",
            totals.unknown.len(),
            &totals.unknown[..totals.unknown.len().min(10)]
        );
    }
    if !failures.is_empty() || !totals.panicked.is_empty() {
        let mut text: Vec<String> = failures.iter().map(|r| explain(r, "")).collect();
        for (seed, msg) in &totals.panicked {
            text.push(format!(
                "PANICKED seed {seed}: {msg}\n  replay: SIM_SEED={seed} ./scripts/sim.sh"
            ));
        }
        panic!(
            "{} of {count} seeds failed:\n{}",
            failures.len() + totals.panicked.len(),
            text.join("\n")
        );
    }
}

/// Seeds that once failed, with what they found. Any change to what the simulation draws
/// from its RNG moves a seed off the schedule that failed, so each also has a directed test;
/// while the schedule holds, the seed is the end-to-end check.
const SEEDS_THAT_FAILED: &[(u64, &str)] = &[
    (
        418360421633,
        "two voters restarted blank, neither naming the other in its membership, probed each \
         other forever (directed test: \
         a_blank_node_learns_from_probe_answers_where_the_voters_it_never_knew_are)",
    ),
    (
        766236510475,
        "the two recovering voters held the longest logs, above the third's, and never \
         campaigned (directed test: a_recovering_node_with_the_most_up_to_date_log_campaigns)",
    ),
    (
        177983756055,
        "three of the five hosts were no members (one removed without hearing of it, two never \
         added); each held a client's request until its timeout, and one client drew them for \
         30 s (server test: \
         without_a_quorum_requests_fail_fast_instead_of_hanging_or_reading_stale_data)",
    ),
    (
        383809062312,
        "a wipe struck while another node's damaged disk waited to be refused and rebuilt: two \
         disks lost at once, and the refused node idled through the 30 s liveness window \
         (nemesis: may_lose_disk counts a damaged disk as lost; run: restarts a refused node \
         at once after the heal)",
    ),
    (383809063764, "the same with the damage struck first: a wipe while a damaged node was down"),
    (
        286329772648,
        "a forwarded proposal the network duplicated: the leader appended one copy and refused \
         the other for want of room, so the follower answered BUSY (not applied) for a write \
         that applied (core test: \
         a_duplicated_forwarded_proposal_is_neither_appended_twice_nor_refused)",
    ),
    (
        20234497481,
        "a wiped node, still asking the voters for their terms, acknowledged a deposed leader's          appends: that leader committed an entry of its old term on {itself, the wiped node},          where a later term's log without it then won (leader completeness) (core test:          a_wiped_node_answers_no_leader_until_every_voter_told_it_their_terms)",
    ),
    (
        31001624,
        "two leaders in term 3: a wiped node ended its probe on the answers of the voters an          uncommitted removal left (itself and node 2), took node 2's term 2, and voted again          in term 3, where node 1 already led with its lost vote (core test:          a_probe_answer_names_the_voters_before_an_uncommitted_membership_change_too; the          seed reproduces it only with the workload of 99ce063)",
    ),
];

#[test]
fn seeds_that_once_failed_pass() {
    let seeds = SEEDS_THAT_FAILED.iter().map(|(seed, _)| *seed).collect();
    let (failures, totals) = run_many_with_totals(seeds, None, false);
    let mut text: Vec<String> = failures.iter().map(|r| explain(r, "regression-")).collect();
    text.extend(totals.panicked.iter().map(|(seed, msg)| format!("seed {seed} panicked: {msg}")));
    assert!(text.is_empty(), "{}", text.join("\n"));
}

#[test]
fn one_seed_runs_identically_twice() {
    let seed = env_u64("SIM_SEED").unwrap_or(20261125);
    let a = run(&RunOptions::new(seed));
    let b = run(&RunOptions::new(seed));
    assert_eq!(a.history, b.history, "seed {seed}: the histories differ");
    assert_eq!(a.schedule, b.schedule, "seed {seed}: the fault schedules differ");
    assert_eq!(a.trace_hash, b.trace_hash, "seed {seed}: the event traces differ");
    assert!(!a.history.is_empty());
}

/// Seeds tried per planted bug before the simulation is declared toothless.
const PLANTED_SEEDS_MAX: u64 = 400;

fn assert_caught(bug: PlantedBug) {
    assert_caught_within(bug, PLANTED_SEEDS_MAX);
}

/// A bug that needs a rarer fault (a wiped disk in a fifth of the runs, at the right moment)
/// gets more seeds.
fn assert_caught_within(bug: PlantedBug, seeds: u64) {
    let base = env_u64("SIM_PLANTED_BASE").unwrap_or(1);
    let max = env_u64("SIM_PLANTED_SEEDS").unwrap_or(seeds);
    let started = Instant::now();
    let (failures, totals) = run_many_with_totals((base..base + max).collect(), Some(bug), true);
    if let Some((seed, msg)) = totals.panicked.first() {
        println!("planted {bug:?}: caught at seed {seed}, which panicked: {msg}");
        return;
    }
    let Some(first) = failures.first() else {
        panic!(
            "planted bug {bug:?} survived {max} seeds from {base}: the simulation cannot see it"
        );
    };
    let label = format!("planted-{bug:?}-");
    let _ = write_artifacts(first, &label);
    println!(
        "planted {bug:?}: caught at seed {} after {:.1}s: {}",
        first.seed,
        started.elapsed().as_secs_f64(),
        first.violations.first().cloned().unwrap_or_else(|| first.check.to_string())
    );
}

#[test]
fn planted_follower_local_reads_are_caught() {
    assert_caught(PlantedBug::FollowerLocalReads);
}

#[test]
fn planted_vote_without_log_check_is_caught() {
    assert_caught(PlantedBug::VoteWithoutLogCheck);
}

#[test]
fn planted_ack_before_sync_is_caught() {
    assert_caught(PlantedBug::AckBeforeSync);
}

#[test]
fn planted_ack_before_sync_completes_is_caught() {
    assert_caught(PlantedBug::AckBeforeSyncCompletes);
}

#[test]
fn planted_retry_applied_twice_is_caught() {
    assert_caught(PlantedBug::RetryAppliedTwice);
}

#[test]
fn planted_snapshot_dropping_sessions_is_caught() {
    assert_caught(PlantedBug::SnapshotDropsSessions);
}

#[test]
fn planted_lease_ignoring_clock_drift_is_caught() {
    assert_caught(PlantedBug::LeaseIgnoresClockDrift);
}

#[test]
fn planted_pipeline_reads_overtaking_writes_are_caught() {
    assert_caught(PlantedBug::PipelineReadsOvertakeWrites);
}

#[test]
fn planted_membership_changes_overlapping_are_caught() {
    assert_caught(PlantedBug::MembershipChangesOverlap);
}

#[test]
fn planted_wiped_disk_voting_is_caught() {
    assert_caught_within(PlantedBug::WipedDiskVotes, 20_000);
}

#[test]
fn planted_sync_error_ignored_is_caught() {
    assert_caught_within(PlantedBug::SyncErrorIgnored, 2_000);
}

#[test]
fn planted_lease_by_ticks_alone_is_caught() {
    assert_caught(PlantedBug::LeaseByTicksAlone);
}

#[test]
fn planted_damaged_data_trusted_is_caught() {
    assert_caught_within(PlantedBug::DamagedDataTrusted, 2_000);
}

#[test]
fn planted_disk_full_write_proposed_anyway_is_caught() {
    assert_caught_within(PlantedBug::DiskFullWriteProposedAnyway, 2_000);
}

#[test]
fn planted_busy_after_resubmit_is_caught() {
    assert_caught_within(PlantedBug::BusyAfterResubmit, 2_000);
}

#[test]
fn planted_pop_choice_by_node_is_caught() {
    assert_caught(PlantedBug::PopChoiceByNode);
}

#[test]
fn planted_collection_index_forgetting_is_caught() {
    assert_caught(PlantedBug::CollectionIndexForgets);
}
