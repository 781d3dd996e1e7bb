//! The message-level fault layer the simulation plugs into every node's transport: loss,
//! delay (hence reordering), duplication and one-way link cuts. madsim's simulated TCP never
//! loses, reorders or duplicates bytes, so these faults are injected above it, per Raft message.
//! One instance serves all nodes; its RNG is seeded by the run, and madsim runs every task on
//! one thread in a seed-determined order, so the faults are deterministic too.

use raft_kv_core::{Message, NodeId};
use raft_kv_runtime::transport::{Fate, MessageFaults};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

/// Probabilities per message; all zero when healed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MessageChaos {
    pub loss: f64,
    pub duplicate: f64,
    pub delay: f64,
    /// Upper bound of an injected delay.
    pub delay_max: Duration,
}

pub struct NetFaults {
    state: Mutex<State>,
}

struct State {
    rng: StdRng,
    chaos: MessageChaos,
    /// (from, to): messages on these links are dropped.
    cut: BTreeSet<(NodeId, NodeId)>,
}

impl NetFaults {
    pub fn new(seed: u64) -> NetFaults {
        NetFaults {
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                chaos: MessageChaos::default(),
                cut: BTreeSet::new(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_chaos(&self, chaos: MessageChaos) {
        self.state().chaos = chaos;
    }

    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.state().cut.insert((from, to));
    }

    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.state().cut.contains(&(from, to))
    }

    pub fn uncut(&self, from: NodeId, to: NodeId) {
        self.state().cut.remove(&(from, to));
    }

    /// Removes every fault.
    pub fn heal(&self) {
        let mut s = self.state();
        s.chaos = MessageChaos::default();
        s.cut.clear();
    }
}

impl MessageFaults for NetFaults {
    fn fate(&self, m: &Message) -> Fate {
        let mut s = self.state();
        if s.cut.contains(&(m.from, m.to)) {
            return Fate::Drop;
        }
        let c = s.chaos;
        if c == MessageChaos::default() {
            return Fate::Deliver;
        }
        let roll: f64 = s.rng.gen();
        let delay_max_us = c.delay_max.as_micros().max(1) as u64;
        let after = Duration::from_micros(s.rng.gen_range(0..delay_max_us));
        if roll < c.loss {
            Fate::Drop
        } else if roll < c.loss + c.duplicate {
            Fate::Duplicate(after)
        } else if roll < c.loss + c.duplicate + c.delay {
            Fate::Delay(after)
        } else {
            Fate::Deliver
        }
    }
}
