//! Deterministic simulations of raft-kv under madsim (build with `RUSTFLAGS="--cfg madsim"`):
//! a harness that runs real runtime nodes on simulated hosts with in-memory storage, and a
//! small RESP client that talks to them over simulated TCP.

pub mod client;

#[cfg(madsim)]
pub mod cluster;
