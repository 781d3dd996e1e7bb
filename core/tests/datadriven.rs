//! Raft scenarios as text (issue 14.3): each file in core/tests/testdata drives a small cluster
//! with commands (`campaign 1`, `stabilize`, `deliver-msgs drop=(3)`, ...) and holds the trace
//! those commands must print. A change in behaviour shows as a diff of that trace;
//! `REWRITE=1 cargo test -p raft-kv-core --test datadriven` writes the new one. The commands
//! are described in core/tests/datadriven/README.md.

mod common;
#[path = "datadriven/interaction.rs"]
mod interaction;

use interaction::Env;

#[test]
fn raft_scenarios() {
    // Every file here is parsed as a scenario (the crate parses before it excludes any), so
    // the README lives in core/tests/datadriven/.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testdata");
    let files = std::fs::read_dir(dir).expect("core/tests/testdata exists").count();
    assert!(files > 0, "no scenario in {dir}");

    let mut ran = 0;
    datadriven::walk(dir, |f| {
        assert!(f.filename.ends_with(".txt"), "not a scenario: {}", f.filename);
        let mut env = Env::default();
        f.run(|case| env.run(case));
        ran += 1;
    });
    // `walk` passes silently over files it cannot find; `RUN=name.txt` runs one file only.
    if std::env::var_os("RUN").is_none() {
        assert_eq!(ran, files, "every scenario file ran");
    } else {
        assert_eq!(ran, 1, "RUN names one scenario file");
    }
}
