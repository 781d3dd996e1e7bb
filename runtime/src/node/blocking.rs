//! Blocking pops (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP). The
//! node the client talks to holds the wait; only the pop goes through the log, so two clients
//! never pop the same element and a failover neither loses nor duplicates one (the write
//! session's exactly-once rule holds for every attempt).
//!
//! A blocking pop is proposed like any write. When this node applies it and it found nothing
//! to pop, the client is not answered: its request is parked here. The node task serialises
//! this with every apply, so no write can slip between the empty pop and the parking unseen.
//! Every applied write to a key a parked pop waits on wakes the oldest such pop, which is
//! proposed again under a new request number; if another client popped first it parks again,
//! and a successful pop (which rewrites the key) wakes the next one. A parked pop whose
//! timeout passes is answered a null array, as Redis answers it; one whose client left is
//! dropped. A pop already proposed when its timeout passes still completes and answers, so
//! a popped element is never thrown away.

use super::*;

/// What a blocking write carries besides its proposal: enough to propose it again.
pub(super) struct Block {
    pub(super) command: kv::Command,
    /// None: wait for ever (timeout 0).
    pub(super) deadline: Option<Instant>,
    /// Proposed again after a write woke it: a key of another type then keeps a pop waiting
    /// (as Redis serves a blocked client only from a key of the type it waits for), where the
    /// first attempt answers WRONGTYPE.
    pub(super) woken: bool,
    /// The client (connection id) that waits, for CLIENT UNBLOCK.
    pub(super) client: u64,
}

impl Block {
    /// Whether `reply` to this pop means it found nothing it may pop, so it waits on. A woken
    /// BLMOVE/BRPOPLPUSH answers WRONGTYPE: Redis answers it so when its destination is of
    /// another type (the reply cannot tell that from a source of another type, which Redis
    /// would wait on; that case is answered too).
    pub(super) fn waits_on_after(&self, reply: &Reply) -> bool {
        let moves = matches!(self.command, kv::Command::List(kv::ListOp::Move { .. }));
        match reply {
            Reply::Null | Reply::NullArray => true,
            Reply::Error(e) => self.woken && !moves && e.starts_with("WRONGTYPE"),
            _ => false,
        }
    }
}

struct Parked {
    block: Block,
    reply: oneshot::Sender<Reply>,
}

/// The blocking pops this node holds.
#[derive(Default)]
pub(super) struct Blocked {
    next: u64,
    parked: BTreeMap<u64, Parked>,
    /// Who waits on each key, oldest first.
    by_key: BTreeMap<Key, VecDeque<u64>>,
    /// Woken, to be proposed again (`take_woken`).
    woken: Vec<(Block, oneshot::Sender<Reply>)>,
}

impl Blocked {
    pub(super) fn len(&self) -> usize {
        self.parked.len() + self.woken.len()
    }

    /// Holds `block`'s client until a write to one of its keys or its deadline.
    pub(super) fn park(&mut self, block: Block, reply: oneshot::Sender<Reply>) {
        let id = self.next;
        self.next += 1;
        for k in block.command.waits_on() {
            self.by_key.entry(k.to_vec()).or_default().push_back(id);
        }
        self.parked.insert(id, Parked { block, reply });
    }

    fn unpark(&mut self, id: u64) -> Option<Parked> {
        let p = self.parked.remove(&id)?;
        for k in p.block.command.waits_on() {
            if let Some(q) = self.by_key.get_mut(k) {
                q.retain(|i| *i != id);
                if q.is_empty() {
                    self.by_key.remove(k);
                }
            }
        }
        Some(p)
    }

    /// Wakes the oldest pop waiting on each key these applied mutations wrote.
    pub(super) fn note(&mut self, mutations: &[Mutation]) {
        if self.by_key.is_empty() {
            return;
        }
        for m in mutations {
            if let Mutation::Put(k, _) = m {
                self.wake_first(k);
            }
        }
    }

    /// Wakes the oldest pop waiting on `key`, if one does.
    fn wake_first(&mut self, key: &[u8]) {
        let Some(&id) = self.by_key.get(key).and_then(|q| q.front()) else { return };
        if let Some(p) = self.unpark(id) {
            self.woken.push((p.block, p.reply));
        }
    }

    /// Wakes the oldest pop waiting on each of `keys`: a woken pop that took nothing from
    /// them (it was answered an error, e.g. WRONGTYPE for its destination) passes the wake on,
    /// as Redis goes on to its next blocked client when one fails.
    pub(super) fn pass_on(&mut self, keys: &[&[u8]]) {
        for k in keys {
            self.wake_first(k);
        }
    }

    /// CLIENT UNBLOCK: answers `client`'s parked pop as a timeout would (a null array), or
    /// with `error` the UNBLOCKED error. A pop already proposed again after a wake is not
    /// parked: it completes (what it pops is answered, never lost), and this answers false.
    pub(super) fn unblock(&mut self, client: u64, error: bool) -> bool {
        let Some(id) = self.parked.iter().find(|(_, p)| p.block.client == client).map(|(i, _)| *i)
        else {
            return false;
        };
        let Some(p) = self.unpark(id) else { return false };
        let reply = if error {
            Reply::error("UNBLOCKED client unblocked via CLIENT UNBLOCK")
        } else {
            Reply::NullArray
        };
        let _ = p.reply.send(reply);
        true
    }

    /// Wakes every parked pop (the state changed without applying entries: a snapshot).
    pub(super) fn wake_all(&mut self) {
        let ids: Vec<u64> = self.parked.keys().copied().collect();
        for id in ids {
            if let Some(p) = self.unpark(id) {
                self.woken.push((p.block, p.reply));
            }
        }
    }

    pub(super) fn has_woken(&self) -> bool {
        !self.woken.is_empty()
    }

    pub(super) fn take_woken(&mut self) -> Vec<(Block, oneshot::Sender<Reply>)> {
        std::mem::take(&mut self.woken)
    }

    /// Answers the pops whose timeout passed by `now` (a null array), and lets go of those
    /// whose client left.
    pub(super) fn expire(&mut self, now: Instant) {
        let done: Vec<u64> = self
            .parked
            .iter()
            .filter(|(_, p)| p.block.deadline.is_some_and(|d| d <= now) || p.reply.is_closed())
            .map(|(id, _)| *id)
            .collect();
        for id in done {
            if let Some(p) = self.unpark(id) {
                let _ = p.reply.send(Reply::NullArray);
            }
        }
    }
}

impl<S: Storage> NodeTask<S> {
    /// Proposes the woken pops again, each under a new request number.
    pub(super) fn propose_woken(&mut self) {
        for (mut block, reply) in self.blocked.take_woken() {
            block.woken = true;
            if reply.is_closed() {
                continue;
            }
            let id = self.next_request;
            self.next_request += 1;
            let data = codec::encode(&Proposal {
                origin: self.id,
                incarnation: self.incarnation,
                request: id,
                command: block.command.clone(),
            });
            self.raft.step(Input::Propose { id, data: data.clone() });
            let w = PendingWrite {
                data,
                reply,
                resubmitted: false,
                membership: None,
                block: Some(block),
            };
            self.writes.insert(id, w);
            self.deadlines.push_back((Instant::now() + self.tuning.request_timeout, id));
        }
    }
}
