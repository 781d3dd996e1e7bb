//! Deterministic simulations of raft-kv under madsim (build with `RUSTFLAGS="--cfg madsim"`):
//! a harness that runs real runtime nodes on simulated hosts with in-memory storage, and a
//! small RESP client that talks to them over simulated TCP.

pub mod check;
pub mod client;
pub mod history;
pub mod timeline;

#[cfg(madsim)]
pub mod cluster;
pub mod faults;
#[cfg(madsim)]
pub mod invariants;
#[cfg(madsim)]
pub mod nemesis;
#[cfg(madsim)]
pub mod run;
#[cfg(madsim)]
pub mod workload;
