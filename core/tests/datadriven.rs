//! Raft scenarios as text (issue 14.3): each file in core/tests/testdata drives a small cluster
//! with commands (`campaign 1`, `stabilize`, `deliver-msgs drop=(3)`, ...) and holds the trace
//! those commands must print. A change in behaviour shows as a diff of that trace;
//! `REWRITE=1 cargo test -p raft-kv-core --test datadriven` writes the new one. The commands
//! are described in core/tests/testdata/README.md.

mod common;
#[path = "datadriven/interaction.rs"]
mod interaction;

use interaction::Env;

#[test]
fn raft_scenarios() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testdata");
    let is_scenario = |name: &str| name.ends_with(".txt");
    let files = std::fs::read_dir(dir)
        .expect("core/tests/testdata exists")
        .filter(|e| e.as_ref().is_ok_and(|e| is_scenario(&e.file_name().to_string_lossy())))
        .count();
    assert!(files > 0, "no scenario in {dir}");

    let mut ran = 0;
    datadriven::walk_exclusive(
        dir,
        |f| {
            let mut env = Env::default();
            f.run(|case| env.run(case));
            ran += 1;
        },
        |f| !is_scenario(&f.filename),
    );
    // `walk` passes silently over files it cannot find; `RUN=name.txt` runs one file only.
    if std::env::var_os("RUN").is_none() {
        assert_eq!(ran, files, "every scenario file ran");
    } else {
        assert_eq!(ran, 1, "RUN names one scenario file");
    }
}
