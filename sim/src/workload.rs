//! Concurrent clients that issue GET, SET, DEL, INCR, APPEND, MSET, MGET, GETSET (three forms,
//! one a MULTI/EXEC block), hash commands, list commands (LPUSH, RPUSH of one or two
//! elements, LPOP and RPOP with and without a count, LRANGE, DEL), set commands (SADD of one or
//! two members, SREM, SPOP, SMEMBERS, SCARD, DEL) and sorted-set commands (ZADD of one or two
//! members, ZINCRBY, ZPOPMIN, ZRANGE ... WITHSCORES, ZREM, DEL), and on the collections now and
//! then MULTI SET DEL EXEC, over a small key set through the RESP front end of random nodes,
//! and record every operation with its invocation and completion in simulated time. A timeout,
//! a lost connection or an error that leaves the outcome open is recorded as indeterminate,
//! never as a failure. Strings, hashes, lists, sets and sorted sets live under keys of their
//! own (`k*`, `h*`, `l*`, `s*`, `z*`), so no command meets a key of another type; the one SET
//! on a collection's key is deleted in the same transaction, so that a SET over a collection
//! runs under faults without a string ever showing.

use crate::client::{Client, ClientError, Value};
use crate::cluster::redis_addr;
use crate::history::{Op, Operation, Ret};
use raft_kv_core::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// The list keys `l0`.. : as few as the hashes, so that list commands contend on a key.
const LIST_KEYS: usize = 2;

/// The set keys `s0`.. and the sorted-set keys `z0`..: as few, for the same reason.
const SET_KEYS: usize = 2;

/// The string `Op::Replace` stores over a collection, for the instant before its DEL.
const REPLACED: &str = "replaced";

/// Members `m0`.. of sets and sorted sets: a small pool, so that adds, removes and pops keep
/// meeting members already there or already gone, and a collection holds at most this many
/// (the checker's states are whole collections).
const MEMBERS: usize = 8;

#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    pub clients: usize,
    pub keys: usize,
    /// Pause between a client's operations, drawn from [0, think_max).
    pub think_max: Duration,
    /// How long a client waits for one reply before it gives up (indeterminate).
    pub reply_timeout: Duration,
    /// Probability that a step sends a pipeline of 2-3 commands in one write. Operations of
    /// one pipeline share their invocation time; `Operation::after` tells the checker their
    /// order.
    pub pipeline: f64,
    /// Clients 0..readers only read (GET, MGET, HGET, LRANGE, SMEMBERS, ZRANGE), as in
    /// read-mostly deployments: they keep reading through a leader change instead of blocking
    /// on a write.
    pub readers: usize,
}

/// The shared record of every operation.
pub struct Recorder {
    start: Instant,
    ops: Mutex<Vec<Operation>>,
    /// Replies no correct server could give (wrong type for the command).
    invalid: Mutex<Vec<String>>,
}

impl Recorder {
    pub fn new(start: Instant) -> Arc<Recorder> {
        Arc::new(Recorder { start, ops: Mutex::new(Vec::new()), invalid: Mutex::new(Vec::new()) })
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records `op` under the next id, which it returns.
    fn record(&self, mut op: Operation) -> usize {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let id = ops.len();
        op.id = id;
        ops.push(op);
        id
    }

    pub fn history(&self) -> Vec<Operation> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn invalid_replies(&self) -> Vec<String> {
        self.invalid.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// How a reply (or its absence) is classified.
enum Outcome {
    Done(Ret),
    /// Certainly not applied (e.g. refused before it reached the log): left out of the history.
    NotApplied,
    /// May or may not have taken effect.
    Unknown,
    /// A reply no correct server gives to this command (e.g. replies out of order).
    Invalid(String),
}

fn classify(op: &Op, reply: &Result<Value, ClientError>) -> Outcome {
    let v = match reply {
        Ok(v) => v,
        Err(_) => return Outcome::Unknown,
    };
    if let Value::Err(e) = v {
        // Only these errors promise that nothing was applied (see runtime/src/node/mod.rs).
        if e.starts_with("TRYAGAIN")
            || e.starts_with("BUSY")
            || e.starts_with("MISCONF")
            || (e.starts_with("CLUSTERDOWN") && e.ends_with("the write was not applied"))
        {
            return Outcome::NotApplied;
        }
        if *op == Op::Incr && e.starts_with("ERR value is not an integer") {
            return Outcome::Done(Ret::Incr(Err(())));
        }
        if e.starts_with("WRONGTYPE") {
            // Decided where the command was applied (or read), against the key's type.
            return Outcome::Done(Ret::WrongType);
        }
        return match op {
            // A failed read changed nothing.
            Op::Get | Op::LRange | Op::SMembers | Op::SCard | Op::ZRange => Outcome::NotApplied,
            _ => Outcome::Unknown,
        };
    }
    if *op == Op::Replace {
        // MULTI SET DEL EXEC: EXEC's array holds SET's reply, then DEL's.
        return match v {
            Value::Array(items) if items[..] == [Value::Ok("OK".into()), Value::Int(1)] => {
                Outcome::Done(Ret::Replaced)
            }
            _ => Outcome::Invalid(format!("{op} was answered {v:?}")),
        };
    }
    // MULTI GET SET EXEC: EXEC's array holds GET's reply, then SET's.
    let v = match (op, v) {
        (Op::GetSet(_), Value::Array(items))
            if items.len() == 2 && items[1] == Value::Ok("OK".into()) =>
        {
            &items[0]
        }
        _ => v,
    };
    let ret = match (op, v) {
        (Op::Get | Op::GetSet(_), Value::Bulk(b)) => {
            Ret::Get(Some(String::from_utf8_lossy(b).into_owned()))
        }
        (Op::Get | Op::GetSet(_), Value::Nil) => Ret::Get(None),
        (Op::Set(_), Value::Ok(s)) if s == "OK" => Ret::Set,
        (Op::Del, Value::Int(n)) => Ret::Del(*n),
        (Op::Incr, Value::Int(n)) => Ret::Incr(Ok(*n)),
        (Op::Append(_), Value::Int(n)) => Ret::Append(*n),
        (Op::LPush(_) | Op::RPush(_) | Op::RPush2(..), Value::Int(n)) => Ret::Int(*n),
        (Op::LPop | Op::RPop, Value::Bulk(b)) => {
            Ret::Bulk(Some(String::from_utf8_lossy(b).into_owned()))
        }
        (Op::LPop | Op::RPop, Value::Nil) => Ret::Bulk(None),
        (
            Op::SAdd(_)
            | Op::SAdd2(..)
            | Op::SRem(_)
            | Op::SCard
            | Op::ZAdd(..)
            | Op::ZAdd2(..)
            | Op::ZRem(_),
            Value::Int(n),
        ) => Ret::Int(*n),
        (Op::SPop | Op::ZIncrBy(..), Value::Bulk(b)) => {
            Ret::Bulk(Some(String::from_utf8_lossy(b).into_owned()))
        }
        (Op::SPop, Value::Nil) => Ret::Bulk(None),
        (Op::LRange | Op::SMembers | Op::ZRange | Op::ZPopMin, Value::Array(items)) => {
            let Some(texts) = bulk_strings(items) else {
                return Outcome::Invalid(format!("{op} was answered {v:?}"));
            };
            match op {
                Op::LRange => Ret::Items(texts),
                Op::SMembers => {
                    let mut members = texts;
                    members.sort_unstable();
                    Ret::Members(members)
                }
                // ZPOPMIN without a count pops one member: [member, score] or [].
                Op::ZPopMin if texts.len() > 2 => {
                    return Outcome::Invalid(format!("{op} was answered {v:?}"));
                }
                _ => match scored(texts) {
                    Some(pairs) => Ret::Scored(pairs),
                    None => return Outcome::Invalid(format!("{op} was answered {v:?}")),
                },
            }
        }
        (op, v) => return Outcome::Invalid(format!("{op} was answered {v:?}")),
    };
    Outcome::Done(ret)
}

/// The texts of an array of bulk strings; None if any item is something else.
fn bulk_strings(items: &[Value]) -> Option<Vec<String>> {
    items
        .iter()
        .map(|item| match item {
            Value::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect()
}

/// A flat member, score, member, score ... array as pairs; None if its length is odd.
fn scored(flat: Vec<String>) -> Option<Vec<(String, String)>> {
    if !flat.len().is_multiple_of(2) {
        return None;
    }
    let mut items = flat.into_iter();
    let mut pairs = Vec::new();
    while let (Some(member), Some(score)) = (items.next(), items.next()) {
        pairs.push((member, score));
    }
    Some(pairs)
}

/// One command on the wire. MSET and MGET touch several keys at once; the history records
/// them as one operation per key (a projection: each key's part must be linearizable, though
/// the atomicity across keys is not checked).
#[derive(Clone, Debug)]
enum Cmd {
    One(Op, String),
    /// A hash field as a register: HGET, HSET, HDEL, HINCRBY (GET, SET, DEL, INCR) on field
    /// `field` of hash `key`, recorded under the key `key/field`.
    Hash {
        op: Op,
        key: String,
        field: String,
    },
    /// GETSET in one of its three forms: GETSET, SET ... GET, MULTI GET SET EXEC.
    GetSet {
        key: String,
        value: String,
        form: u8,
    },
    MSet(Vec<(String, String)>),
    MGet(Vec<String>),
    /// LPOP or RPOP (the op) with a count of 1, which takes the server's counted path: the
    /// same pop, answered as an array of the one element or a null array for no list.
    CountedPop(Op, String),
}

impl Cmd {
    /// The commands sent: one, or for MULTI ... EXEC several (the last reply is the one).
    fn wire(&self) -> Vec<Vec<Vec<u8>>> {
        let b = |s: &str| s.as_bytes().to_vec();
        match self {
            Cmd::GetSet { key, value, form: 0 } => vec![vec![b("GETSET"), b(key), b(value)]],
            Cmd::GetSet { key, value, form: 1 } => {
                vec![vec![b("SET"), b(key), b(value), b("GET")]]
            }
            Cmd::GetSet { key, value, .. } => vec![
                vec![b("MULTI")],
                vec![b("GET"), b(key)],
                vec![b("SET"), b(key), b(value)],
                vec![b("EXEC")],
            ],
            Cmd::One(Op::Replace, key) => vec![
                vec![b("MULTI")],
                vec![b("SET"), b(key), b(REPLACED)],
                vec![b("DEL"), b(key)],
                vec![b("EXEC")],
            ],
            other => vec![other.argv()],
        }
    }

    fn argv(&self) -> Vec<Vec<u8>> {
        let b = |s: &str| s.as_bytes().to_vec();
        match self {
            Cmd::GetSet { .. } => Vec::new(),
            Cmd::Hash { op, key, field } => match op {
                Op::Get => vec![b("HGET"), b(key), b(field)],
                Op::Set(v) => vec![b("HSET"), b(key), b(field), b(v)],
                Op::Del => vec![b("HDEL"), b(key), b(field)],
                _ => vec![b("HINCRBY"), b(key), b(field), b("1")],
            },
            Cmd::One(op, key) => match op {
                Op::Get => vec![b("GET"), b(key)],
                Op::Set(v) => vec![b("SET"), b(key), b(v)],
                Op::Del => vec![b("DEL"), b(key)],
                Op::Incr => vec![b("INCR"), b(key)],
                Op::Append(v) => vec![b("APPEND"), b(key), b(v)],
                Op::GetSet(v) => vec![b("GETSET"), b(key), b(v)],
                Op::LPush(v) => vec![b("LPUSH"), b(key), b(v)],
                Op::RPush(v) => vec![b("RPUSH"), b(key), b(v)],
                Op::RPush2(x, y) => vec![b("RPUSH"), b(key), b(x), b(y)],
                Op::LPop => vec![b("LPOP"), b(key)],
                Op::RPop => vec![b("RPOP"), b(key)],
                Op::LRange => vec![b("LRANGE"), b(key), b("0"), b("-1")],
                Op::SAdd(m) => vec![b("SADD"), b(key), b(m)],
                Op::SAdd2(x, y) => vec![b("SADD"), b(key), b(x), b(y)],
                Op::SRem(m) => vec![b("SREM"), b(key), b(m)],
                Op::SPop => vec![b("SPOP"), b(key)],
                Op::SMembers => vec![b("SMEMBERS"), b(key)],
                Op::SCard => vec![b("SCARD"), b(key)],
                Op::ZAdd(m, score) => vec![b("ZADD"), b(key), b(&score.to_string()), b(m)],
                Op::ZAdd2(x, sx, y, sy) => {
                    vec![b("ZADD"), b(key), b(&sx.to_string()), b(x), b(&sy.to_string()), b(y)]
                }
                Op::ZIncrBy(m, by) => vec![b("ZINCRBY"), b(key), b(&by.to_string()), b(m)],
                Op::ZPopMin => vec![b("ZPOPMIN"), b(key)],
                Op::ZRange => vec![b("ZRANGE"), b(key), b("0"), b("-1"), b("WITHSCORES")],
                Op::ZRem(m) => vec![b("ZREM"), b(key), b(m)],
                // A MULTI block (`wire`).
                Op::Replace => Vec::new(),
            },
            Cmd::CountedPop(op, key) => {
                let name = if *op == Op::RPop { "RPOP" } else { "LPOP" };
                vec![b(name), b(key), b("1")]
            }
            Cmd::MSet(pairs) => {
                let mut argv = vec![b("MSET")];
                for (k, v) in pairs {
                    argv.push(b(k));
                    argv.push(b(v));
                }
                argv
            }
            Cmd::MGet(keys) => {
                let mut argv = vec![b("MGET")];
                argv.extend(keys.iter().map(|k| b(k)));
                argv
            }
        }
    }

    /// The per-key operations of the command and how `reply` classifies each.
    fn outcomes(&self, reply: &Result<Value, ClientError>) -> Vec<(String, Op, Outcome)> {
        match self {
            Cmd::One(op, key) => vec![(key.clone(), op.clone(), classify(op, reply))],
            Cmd::GetSet { key, value, .. } => {
                let op = Op::GetSet(value.clone());
                vec![(key.clone(), op.clone(), classify(&op, reply))]
            }
            Cmd::Hash { op, key, field } => {
                // HSET answers how many fields were new (0 or 1 here): as SET's OK for the
                // register; HINCRBY's error names the hash.
                let mapped = match (op, reply) {
                    (Op::Set(_), Ok(Value::Int(0 | 1))) => Some(Ok(Value::Ok("OK".into()))),
                    (Op::Incr, Ok(Value::Err(e))) if e.starts_with("ERR hash value is not") => {
                        Some(Ok(Value::Err("ERR value is not an integer or out of range".into())))
                    }
                    _ => None,
                };
                let reply = mapped.as_ref().unwrap_or(reply);
                vec![(format!("{key}/{field}"), op.clone(), classify(op, reply))]
            }
            Cmd::MSet(pairs) => {
                let outcome = |v: &str| classify(&Op::Set(v.to_string()), reply);
                pairs.iter().map(|(k, v)| (k.clone(), Op::Set(v.clone()), outcome(v))).collect()
            }
            Cmd::MGet(keys) => {
                let per_key: Vec<Outcome> = match reply {
                    Ok(Value::Array(items)) if items.len() == keys.len() => {
                        items.iter().map(|v| classify(&Op::Get, &Ok(v.clone()))).collect()
                    }
                    Ok(Value::Err(_)) | Err(_) => {
                        keys.iter().map(|_| classify(&Op::Get, reply)).collect()
                    }
                    Ok(v) => {
                        let what = format!("MGET of {} keys was answered {v:?}", keys.len());
                        keys.iter().map(|_| Outcome::Invalid(what.clone())).collect()
                    }
                };
                keys.iter().cloned().zip(per_key).map(|(k, o)| (k, Op::Get, o)).collect()
            }
            Cmd::CountedPop(op, key) => {
                let outcome = match reply {
                    Ok(Value::Array(items)) => match items.as_slice() {
                        [one @ Value::Bulk(_)] => classify(op, &Ok(one.clone())),
                        _ => Outcome::Invalid(format!("{op} {key} 1 was answered {items:?}")),
                    },
                    Ok(Value::Bulk(b)) => {
                        Outcome::Invalid(format!("{op} {key} 1 was answered a bare {b:?}"))
                    }
                    _ => classify(op, reply),
                };
                vec![(key.clone(), op.clone(), outcome)]
            }
        }
    }
}

/// The nodes the clients talk to, shared by all of them: every host, or, in a run's liveness
/// core phase, only the majority that must serve them.
pub struct Targets(Mutex<Vec<NodeId>>);

impl Targets {
    pub fn new(nodes: Vec<NodeId>) -> Arc<Targets> {
        Arc::new(Targets(Mutex::new(nodes)))
    }

    pub fn set(&self, nodes: Vec<NodeId>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = nodes;
    }

    fn get(&self) -> Vec<NodeId> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

pub struct ClientTask {
    pub id: usize,
    pub nodes: Arc<Targets>,
    pub opts: WorkloadOptions,
    pub rng: StdRng,
    pub recorder: Arc<Recorder>,
    conn: Option<(NodeId, Client)>,
    seq: u64,
}

impl ClientTask {
    pub fn new(
        id: usize,
        nodes: Arc<Targets>,
        opts: WorkloadOptions,
        seed: u64,
        recorder: Arc<Recorder>,
    ) -> ClientTask {
        let rng = StdRng::seed_from_u64(seed);
        ClientTask { id, nodes, opts, rng, recorder, conn: None, seq: 0 }
    }

    fn random_op(&mut self) -> Op {
        self.seq += 1;
        let tag = format!("{}.{}", self.id, self.seq);
        match self.rng.gen_range(0..100) {
            0..=39 => Op::Get,
            40..=64 => Op::Set(tag),
            65..=74 => Op::Del,
            75..=89 => Op::Incr,
            _ => Op::Append(format!("{tag},")),
        }
    }

    fn random_key(&mut self) -> String {
        format!("k{}", self.rng.gen_range(0..self.opts.keys.max(1)))
    }

    /// `op` on a field of one of two hashes (fields as many as keys).
    fn hash_cmd(&mut self, op: Op) -> Cmd {
        let key = format!("h{}", self.rng.gen_range(0..2));
        let field = format!("f{}", self.rng.gen_range(0..self.opts.keys.max(1)));
        Cmd::Hash { op, key, field }
    }

    /// A value no other operation writes: this client's id and next sequence number.
    fn next_tag(&mut self) -> String {
        self.seq += 1;
        format!("{}.{}", self.id, self.seq)
    }

    /// A command on one of the lists. Every pushed element is unique (client and sequence
    /// number), so a pop that loses or duplicates one shows in the history. Pops come about as
    /// often as pushed elements and DEL now and then, so lists stay short: the checker's states
    /// are whole lists, and long ones would run its search out of budget. As often as DEL, a
    /// string replaces the list and goes (`Op::Replace`): its elements must go too.
    fn list_cmd(&mut self) -> Cmd {
        let key = format!("l{}", self.rng.gen_range(0..LIST_KEYS));
        let op = match self.rng.gen_range(0..100) {
            0..=13 => Op::LPush(self.next_tag()),
            14..=27 => Op::RPush(self.next_tag()),
            28..=35 => Op::RPush2(self.next_tag(), self.next_tag()),
            36..=55 => Op::LPop,
            56..=75 => Op::RPop,
            76..=93 => Op::LRange,
            94..=96 => Op::Del,
            _ => Op::Replace,
        };
        if matches!(op, Op::LPop | Op::RPop) && self.rng.gen_bool(0.3) {
            return Cmd::CountedPop(op, key);
        }
        Cmd::One(op, key)
    }

    /// A member of the pool, and another one distinct from it.
    fn two_members(&mut self) -> (String, String) {
        let a = self.rng.gen_range(0..MEMBERS);
        let b = (a + self.rng.gen_range(1..MEMBERS)) % MEMBERS;
        (format!("m{a}"), format!("m{b}"))
    }

    fn member(&mut self) -> String {
        format!("m{}", self.rng.gen_range(0..MEMBERS))
    }

    /// A command on one of the sets. SPOP comes often, on sets that usually hold several
    /// members: its choice is where replicas could disagree (every replica must pop the member
    /// the entry chose). Adds about balance removals, so sets hover around half the pool. DEL
    /// and `Op::Replace` now and then, as on lists.
    fn set_cmd(&mut self) -> Cmd {
        let key = format!("s{}", self.rng.gen_range(0..SET_KEYS));
        let op = match self.rng.gen_range(0..100) {
            0..=21 => Op::SAdd(self.member()),
            22..=35 => {
                let (a, b) = self.two_members();
                Op::SAdd2(a, b)
            }
            36..=45 => Op::SRem(self.member()),
            46..=65 => Op::SPop,
            66..=85 => Op::SMembers,
            86..=94 => Op::SCard,
            95..=96 => Op::Del,
            _ => Op::Replace,
        };
        Cmd::One(op, key)
    }

    /// A command on one of the sorted sets: integer scores and increments only (small ones,
    /// negative too), so every score is exact and written alike by any correct server; ties
    /// are common, so the order by member within a score is exercised. DEL and `Op::Replace`
    /// now and then, as on lists.
    fn zset_cmd(&mut self) -> Cmd {
        let key = format!("z{}", self.rng.gen_range(0..SET_KEYS));
        let op = match self.rng.gen_range(0..100) {
            0..=19 => Op::ZAdd(self.member(), self.rng.gen_range(-3..=5)),
            20..=29 => {
                let (a, b) = self.two_members();
                Op::ZAdd2(a, self.rng.gen_range(-3..=5), b, self.rng.gen_range(-3..=5))
            }
            30..=44 => Op::ZIncrBy(self.member(), self.rng.gen_range(-2..=3)),
            45..=61 => Op::ZPopMin,
            62..=83 => Op::ZRange,
            84..=94 => Op::ZRem(self.member()),
            95..=96 => Op::Del,
            _ => Op::Replace,
        };
        Cmd::One(op, key)
    }

    /// Two distinct keys when there are two, for MSET and MGET.
    fn two_keys(&mut self) -> Vec<String> {
        let a = self.random_key();
        let b = self.random_key();
        if a == b {
            vec![a]
        } else {
            vec![a, b]
        }
    }

    fn random_cmd(&mut self) -> Cmd {
        if self.id < self.opts.readers {
            return match self.rng.gen_range(0..10) {
                0 => Cmd::MGet(self.two_keys()),
                1 => self.hash_cmd(Op::Get),
                2 => {
                    let key = format!("l{}", self.rng.gen_range(0..LIST_KEYS));
                    Cmd::One(Op::LRange, key)
                }
                3 => Cmd::One(Op::SMembers, format!("s{}", self.rng.gen_range(0..SET_KEYS))),
                4 => Cmd::One(Op::ZRange, format!("z{}", self.rng.gen_range(0..SET_KEYS))),
                _ => Cmd::One(Op::Get, self.random_key()),
            };
        }
        match self.rng.gen_range(0..100) {
            0..=4 => {
                let keys = self.two_keys();
                let pairs = keys
                    .into_iter()
                    .map(|k| {
                        self.seq += 1;
                        (k, format!("{}.{}", self.id, self.seq))
                    })
                    .collect();
                Cmd::MSet(pairs)
            }
            5..=9 => Cmd::MGet(self.two_keys()),
            18..=29 => {
                let op = match self.random_op() {
                    Op::Append(v) | Op::GetSet(v) => Op::Set(v),
                    op => op,
                };
                self.hash_cmd(op)
            }
            10..=17 => {
                self.seq += 1;
                let value = format!("{}.{}", self.id, self.seq);
                Cmd::GetSet { key: self.random_key(), value, form: self.rng.gen_range(0..3) }
            }
            30..=47 => self.list_cmd(),
            48..=59 => self.set_cmd(),
            60..=69 => self.zset_cmd(),
            _ => {
                let op = self.random_op();
                Cmd::One(op, self.random_key())
            }
        }
    }

    /// Issues one random command, or now and then a pipeline of several; true if one
    /// completed with a determinate result.
    pub async fn step(&mut self) -> bool {
        let n = if self.rng.gen_bool(self.opts.pipeline) { self.rng.gen_range(2..=3) } else { 1 };
        let cmds = (0..n).map(|_| self.random_cmd()).collect();
        self.issue_all(cmds).await
    }

    /// Sends `cmds` in one pipeline on the current connection (opening one first if needed)
    /// and records each with its own completion. True if any completed determinately.
    async fn issue_all(&mut self, cmds: Vec<Cmd>) -> bool {
        let nodes = self.nodes.get();
        if self.conn.as_ref().is_some_and(|(node, _)| !nodes.contains(node)) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let node = nodes[self.rng.gen_range(0..nodes.len())];
            match Client::connect(redis_addr(node), self.opts.reply_timeout).await {
                Ok(c) => self.conn = Some((node, c)),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return false;
                }
            }
        }
        let Some((node, conn)) = self.conn.as_mut() else { return false };
        let node = *node;
        let wire: Vec<Vec<Vec<u8>>> = cmds.iter().flat_map(Cmd::wire).collect();
        let call = self.recorder.now();
        let sent = conn.send(&wire).await;
        let mut broken = sent.is_err();
        let mut clusterdown = false;
        let mut any_determinate = false;
        // Per key, the last operation of this pipeline that completed: the next one on that
        // key must follow it (the checker sees one key at a time).
        let mut previous: BTreeMap<String, usize> = BTreeMap::new();
        for cmd in cmds {
            // A MULTI block answers +OK and +QUEUED first: the last reply is EXEC's.
            let mut reply = Err(ClientError::Closed);
            for _ in 0..cmd.wire().len() {
                reply = if broken { Err(ClientError::Closed) } else { conn.read().await };
                if reply.is_err() {
                    broken = true;
                }
            }
            let complete = self.recorder.now();
            if reply.is_err() {
                // The connection's state is unknown: a late reply must not answer a later
                // request, and the rest of the pipeline is unanswered.
                broken = true;
            }
            for (key, op, outcome) in cmd.outcomes(&reply) {
                let (ret, complete) = match outcome {
                    Outcome::Done(ret) => (ret, Some(complete)),
                    Outcome::Unknown => (Ret::Unknown, None),
                    Outcome::NotApplied => continue,
                    Outcome::Invalid(what) => {
                        let what = format!("client {} on node {node}: {what}", self.id);
                        self.recorder.invalid.lock().unwrap_or_else(|p| p.into_inner()).push(what);
                        broken = true;
                        (Ret::Unknown, None)
                    }
                };
                let determinate = complete.is_some();
                any_determinate |= determinate;
                let id = self.recorder.record(Operation {
                    id: 0,
                    client: self.id,
                    node: node.0,
                    op,
                    ret,
                    call,
                    complete,
                    after: if determinate { previous.get(&key).copied() } else { None },
                    key: key.clone(),
                });
                if determinate {
                    previous.insert(key, id);
                }
            }
            if matches!(&reply, Ok(Value::Err(e)) if e.starts_with("CLUSTERDOWN")) {
                // This node cannot reach a quorum; the next operation tries another.
                broken = true;
                clusterdown = true;
            }
        }
        if broken {
            self.conn = None;
        }
        if clusterdown {
            // As client libraries do, back off a little before trying another node.
            let pause = Duration::from_millis(self.rng.gen_range(50..250));
            tokio::time::sleep(pause).await;
        }
        any_determinate
    }

    /// Random operations until simulated time `until`.
    pub async fn run_until(&mut self, until: Instant) {
        while Instant::now() < until {
            self.step().await;
            let think = self.opts.think_max.as_micros().max(1) as u64;
            let pause = Duration::from_micros(self.rng.gen_range(0..think));
            tokio::time::sleep(pause).await;
        }
    }

    /// Liveness: random operations until one completes with a determinate result, by
    /// `deadline`. True if one did.
    pub async fn complete_one_by(&mut self, deadline: Instant) -> bool {
        while Instant::now() < deadline {
            if self.step().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}
