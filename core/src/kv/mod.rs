//! The replicated key-value state machine: a pure function from (current state, command) to
//! (mutations, reply). The runtime writes the mutations and the applied index atomically; no
//! clock, randomness or I/O is read here, so every replica applying the same log agrees.

use serde::{Deserialize, Serialize};

/// Unwraps a typed read, or returns its refusal (WRONGTYPE, ...) from the `apply` it is in.
/// Defined before the type modules, so each of them uses it.
macro_rules! typed {
    ($read:expr) => {
        match $read {
            Ok(v) => v,
            Err(reply) => return Ok(reply),
        }
    };
}

pub mod coll;
mod hashes;
mod layered;
pub mod lists;
mod record;
pub mod sets;
pub mod sort;
#[cfg(test)]
mod tests_coll;
pub mod zsets;

pub use coll::Ctx;
pub use layered::{Layered, PendingChanges};
pub use lists::{ListOp, ListQuery};
pub use record::{Coll, Data, Kind, Record};
pub use sets::{Combine, SetOp, SetQuery};
pub use sort::Sort;
pub use zsets::{ZOp, ZQuery};

pub type Key = Vec<u8>;
pub type Value = Vec<u8>;

/// A write that goes through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// SET with its NX/XX condition, GET flag and expiry (GETSET is `SET key value GET`,
    /// SETEX and PSETEX are SETs with an expiry).
    Set {
        key: Key,
        value: Value,
        cond: SetCond,
        get: bool,
        expiry: Expiry,
    },
    /// GETEX with an option (without one it is a read).
    GetEx {
        key: Key,
        expiry: Expiry,
    },
    /// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT: `amount` seconds (or milliseconds with `millis`)
    /// from the entry's time, or since the epoch with `absolute`.
    Expire {
        key: Key,
        amount: i64,
        millis: bool,
        absolute: bool,
        cond: ExpireCond,
    },
    Persist {
        key: Key,
    },
    /// Proposed by the leader: deletes those of `keys` whose deadline passed at the entry's
    /// time (checked again here: a key may have been set anew since).
    ExpireDue {
        keys: Vec<Key>,
    },
    Del {
        keys: Vec<Key>,
    },
    MSet {
        pairs: Vec<(Key, Value)>,
    },
    /// MSETNX (and SETNX, with one pair): all or none, only if no key exists.
    MSetNx {
        pairs: Vec<(Key, Value)>,
    },
    GetDel {
        key: Key,
    },
    IncrBy {
        key: Key,
        delta: i64,
    },
    /// The increment as the client wrote it (a float is parsed at apply, identically on
    /// every replica; it is checked when the command is parsed).
    IncrByFloat {
        key: Key,
        delta: Vec<u8>,
    },
    Append {
        key: Key,
        value: Value,
    },
    SetRange {
        key: Key,
        offset: u64,
        value: Value,
    },
    /// RENAME, or RENAMENX with `nx`.
    Rename {
        from: Key,
        to: Key,
        nx: bool,
    },
    Copy {
        from: Key,
        to: Key,
        replace: bool,
    },
    /// FLUSHDB / FLUSHALL: every key (not sessions or membership).
    FlushAll,
    /// HSET (count of new fields), HMSET (`reply_ok`), HSETNX (`nx`, one pair).
    HSet {
        key: Key,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
        nx: bool,
        reply_ok: bool,
    },
    HDel {
        key: Key,
        fields: Vec<Vec<u8>>,
    },
    HIncrBy {
        key: Key,
        field: Vec<u8>,
        delta: i64,
    },
    /// The increment as the client wrote it (see `IncrByFloat`).
    HIncrByFloat {
        key: Key,
        field: Vec<u8>,
        delta: Vec<u8>,
    },
    /// A list write (LPUSH, LPOP, LMOVE, ...).
    List(ListOp),
    /// A set write (SADD, SPOP, SMOVE, SINTERSTORE, ...).
    Sets(SetOp),
    /// A sorted set write (ZADD, ZPOPMIN, ZUNIONSTORE, ...).
    ZSet(ZOp),
    /// SORT ... STORE.
    Sort(Sort),
    /// MULTI ... EXEC: every command in order, atomically, in one entry, unless a `watched`
    /// key no longer holds what WATCH read (its live record, encoded; None: absent).
    Multi {
        ops: Vec<TxOp>,
        watched: Vec<(Key, Option<Vec<u8>>)>,
    },
    /// A cluster membership change: applied by the runtime (it changes who replicates), not
    /// by `apply`.
    Membership(crate::MembershipChange),
}

/// What a write does to a key's time to live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expiry {
    /// The key no longer expires (SET without KEEPTTL, GETEX PERSIST).
    Clear,
    /// KEEPTTL: as before.
    Keep,
    /// This many milliseconds after the entry's time (EX, PX).
    In(u64),
    /// At this time, in milliseconds since the Unix epoch (EXAT, PXAT).
    At(u64),
}

/// EXPIRE's NX / XX / GT / LT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpireCond {
    Always,
    /// NX: only if the key has no expiry.
    NoExpiry,
    /// XX: only if it has one.
    HasExpiry,
    /// GT: only if later than the current one (no expiry counts as infinitely late).
    Later,
    /// LT: only if earlier.
    Earlier,
    /// XX LT: only if it has one, and the new one is earlier.
    HasExpiryAndEarlier,
}

/// SET's condition on the key's existence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetCond {
    Always,
    /// NX: only if the key does not exist.
    IfAbsent,
    /// XX: only if it exists.
    IfPresent,
}

impl Command {
    /// The keys a blocking pop waits on (none for other commands).
    pub fn waits_on(&self) -> Vec<&[u8]> {
        match self {
            Command::List(op) => op.waits_on(),
            Command::ZSet(op) => op.waits_on(),
            _ => Vec::new(),
        }
    }

    /// A plain `SET key value`.
    pub fn set(key: Key, value: Value) -> Command {
        Command::Set { key, value, cond: SetCond::Always, get: false, expiry: Expiry::Clear }
    }

    /// Bytes of user data carried, for request size limits.
    pub fn size_bytes(&self) -> usize {
        let pairs = |p: &[(Key, Value)]| p.iter().map(|(k, v)| k.len() + v.len()).sum();
        match self {
            Command::Set { key, value, .. } => key.len() + value.len(),
            Command::Del { keys } => keys.iter().map(Vec::len).sum(),
            Command::MSet { pairs: p } | Command::MSetNx { pairs: p } => pairs(p),
            Command::GetDel { key }
            | Command::GetEx { key, .. }
            | Command::Expire { key, .. }
            | Command::Persist { key } => key.len() + 8,
            Command::ExpireDue { keys } => keys.iter().map(Vec::len).sum(),
            Command::IncrBy { key, .. } => key.len() + 8,
            Command::IncrByFloat { key, delta } => key.len() + delta.len(),
            Command::Append { key, value } => key.len() + value.len(),
            Command::SetRange { key, value, .. } => key.len() + 8 + value.len(),
            Command::Rename { from, to, .. } | Command::Copy { from, to, .. } => {
                from.len() + to.len()
            }
            Command::FlushAll => 0,
            Command::Multi { ops, watched } => {
                watched.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum::<usize>()
                    + ops.iter().map(TxOp::size_bytes).sum::<usize>()
            }
            Command::HSet { key, pairs: p, .. } => key.len() + pairs(p),
            Command::HDel { key, fields } => key.len() + fields.iter().map(Vec::len).sum::<usize>(),
            Command::HIncrBy { key, field, .. } => key.len() + field.len() + 8,
            Command::HIncrByFloat { key, field, delta } => key.len() + field.len() + delta.len(),
            Command::List(op) => op.size_bytes(),
            Command::Sets(op) => op.size_bytes(),
            Command::ZSet(op) => op.size_bytes(),
            Command::Sort(s) => s.size_bytes(),
            Command::Membership(_) => 64,
        }
    }
}

/// The outcome of a write or a query, as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteReply {
    Ok,
    /// A simple string other than OK (TYPE's `string`, PING's `PONG`).
    Status(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// A null bulk string (a condition that did not hold, a missing old value).
    Null,
    Array(Vec<WriteReply>),
    /// A set (RESP3); RESP2 sends it as an array.
    Set(Vec<WriteReply>),
    /// A double (RESP3), by its bits; RESP2 sends Redis 7.0's `%.17g` text as a bulk string.
    Double(u64),
    /// Pairs: arrays of two in RESP3, one flat array in RESP2 (ZRANGE ... WITHSCORES).
    Pairs(Vec<(WriteReply, WriteReply)>),
    /// A map (RESP3); RESP2 sends it as a flat array of keys and values.
    Map(Vec<(WriteReply, WriteReply)>),
    /// A null array (EXEC aborted by WATCH).
    NullArray,
    Error(String),
}

/// A read of the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    Get(Key),
    /// Keys of another type read as nil.
    MGet(Vec<Key>),
    /// EXISTS and TOUCH: existing keys, each repeat counted.
    Exists(Vec<Key>),
    StrLen(Key),
    /// GETRANGE / SUBSTR, with Redis's index rules (`get_range`).
    GetRange {
        key: Key,
        start: i64,
        end: i64,
    },
    Type(Key),
    /// TTL, PTTL (`millis`), EXPIRETIME, PEXPIRETIME (`absolute`).
    Ttl {
        key: Key,
        millis: bool,
        absolute: bool,
    },
    HGet {
        key: Key,
        field: Vec<u8>,
    },
    HMGet {
        key: Key,
        fields: Vec<Vec<u8>>,
    },
    HExists {
        key: Key,
        field: Vec<u8>,
    },
    HLen(Key),
    HStrLen {
        key: Key,
        field: Vec<u8>,
    },
    /// HGETALL (both), HKEYS (`fields`), HVALS (`values`).
    HGetAll {
        key: Key,
        fields: bool,
        values: bool,
    },
    /// WATCH: each key's `watch_value`, as bulk strings or nils.
    Watch(Vec<Key>),
    /// HSCAN: every field (matching `pattern`) at once, cursor 0.
    HScan {
        key: Key,
        pattern: Option<Vec<u8>>,
    },
    List(ListQuery),
    Sets(SetQuery),
    ZSet(ZQuery),
    /// SORT, SORT_RO.
    Sort(Sort),
}

impl WriteReply {
    /// Bytes of data it carries, for size limits.
    pub fn size_bytes(&self) -> usize {
        match self {
            WriteReply::Status(s) | WriteReply::Error(s) => s.len(),
            WriteReply::Bulk(b) => b.len(),
            WriteReply::Array(items) | WriteReply::Set(items) => {
                items.iter().map(WriteReply::size_bytes).sum()
            }
            WriteReply::Map(pairs) | WriteReply::Pairs(pairs) => {
                pairs.iter().map(|(k, v)| k.size_bytes() + v.size_bytes()).sum()
            }
            WriteReply::Double(_) => 24,
            WriteReply::Ok | WriteReply::Integer(_) | WriteReply::Null | WriteReply::NullArray => 8,
        }
    }
}

impl Query {
    /// Bytes of keys and fields it carries, for size limits.
    pub fn size_bytes(&self) -> usize {
        let all = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>();
        8 + match self {
            Query::Get(k) | Query::StrLen(k) | Query::Type(k) | Query::HLen(k) => k.len(),
            Query::GetRange { key, .. } | Query::Ttl { key, .. } | Query::HGetAll { key, .. } => {
                key.len()
            }
            Query::MGet(keys) | Query::Exists(keys) | Query::Watch(keys) => all(keys),
            Query::HGet { key, field }
            | Query::HExists { key, field }
            | Query::HStrLen { key, field } => key.len() + field.len(),
            Query::HMGet { key, fields } => key.len() + all(fields),
            Query::HScan { key, pattern } => key.len() + pattern.as_ref().map_or(0, Vec::len),
            Query::List(q) => q.size_bytes(),
            Query::Sets(q) => q.size_bytes(),
            Query::ZSet(q) => q.size_bytes(),
            Query::Sort(s) => s.size_bytes(),
        }
    }
}

/// How much of a collection a read walks (`Query::walks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Walk {
    Whole,
    /// Ranks `start..=stop`, Redis's index rules (negative from the end).
    Ranks(i64, i64),
    /// At most this many elements.
    UpTo(u64),
}

impl Walk {
    /// The elements walked in a collection of `size`.
    pub fn elements(self, size: u64) -> u64 {
        match self {
            Walk::Whole => size,
            Walk::UpTo(n) => n.min(size),
            Walk::Ranks(start, stop) => {
                let len = size as i64;
                let at = |i: i64| if i < 0 { i.saturating_add(len) } else { i };
                let (start, stop) = (at(start).max(0), at(stop).min(len - 1));
                if start > stop {
                    0
                } else {
                    (stop - start + 1) as u64
                }
            }
        }
    }
}

impl Query {
    /// The keys of the collections this query walks, and how much of each: a runtime serves
    /// a read that walks many elements off its main task.
    pub fn walks(&self) -> Vec<(&[u8], Walk)> {
        fn all(ks: &[Key]) -> Vec<(&[u8], Walk)> {
            ks.iter().map(|k| (k.as_slice(), Walk::Whole)).collect()
        }
        fn whole(k: &Key) -> Vec<(&[u8], Walk)> {
            vec![(k.as_slice(), Walk::Whole)]
        }
        match self {
            Query::HGetAll { key, .. } | Query::HScan { key, .. } => whole(key),
            Query::List(ListQuery::Range { key, start, stop }) => {
                vec![(key.as_slice(), Walk::Ranks(*start, *stop))]
            }
            Query::List(ListQuery::Pos { key, .. }) => whole(key),
            Query::Sets(SetQuery::Combine { keys, .. } | SetQuery::InterCard { keys, .. }) => {
                all(keys)
            }
            Query::Sets(SetQuery::Scan { key, .. }) => whole(key),
            Query::ZSet(ZQuery::Range { key, spec, .. }) => {
                let walk = match (&spec.range, spec.limit) {
                    (zsets::Range::Rank(a, b), _) => Walk::Ranks(*a, *b),
                    (_, Some((offset, count))) if offset >= 0 && count >= 0 => {
                        Walk::UpTo((offset as u64).saturating_add(count as u64))
                    }
                    _ => Walk::Whole,
                };
                vec![(key.as_slice(), walk)]
            }
            Query::ZSet(ZQuery::Scan { key, .. } | ZQuery::Rank { key, .. }) => whole(key),
            Query::ZSet(ZQuery::Combine(c)) => all(&c.keys),
            Query::ZSet(ZQuery::InterCard { keys, .. }) => all(keys),
            Query::Sort(s) => whole(&s.key),
            _ => Vec::new(),
        }
    }
}

impl TxOp {
    /// Bytes of data it carries, for size limits.
    pub fn size_bytes(&self) -> usize {
        match self {
            TxOp::Write(c) => c.size_bytes(),
            TxOp::Query(q) => q.size_bytes(),
            TxOp::Reply(r) => r.size_bytes(),
        }
    }
}

/// One command of a MULTI block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxOp {
    Write(Command),
    Query(Query),
    /// A command whose reply does not depend on the data (PING, ECHO).
    Reply(WriteReply),
}

/// Stored bytes that are no `Record`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("a stored value is no record of this build")]
pub struct NotARecord;

/// The live record stored as `raw`, at time `now`: None if absent or expired.
pub fn live(raw: Option<Value>, now: u64) -> Result<Option<Record>, NotARecord> {
    match raw {
        None => Ok(None),
        Some(b) => {
            let r = Record::decode(&b).ok_or(NotARecord)?;
            Ok(r.live_at(now).then_some(r))
        }
    }
}

/// A change to the stored state machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    Put(Key, Value),
    Delete(Key),
    /// An element of a collection (see `coll`), in the element space.
    PutElement(Vec<u8>, Value),
    DeleteElement(Vec<u8>),
    /// Every element in `[from, to)`: a dead collection's, when it has many.
    DeleteElements {
        from: Vec<u8>,
        to: Vec<u8>,
    },
    /// Every key goes (FLUSHALL); sessions and membership stay.
    Clear,
    /// The client session of an origin node (see `admit`).
    Session(u64, Session),
    /// The cluster membership after an applied change.
    Membership(crate::Membership),
}

/// Exactly-once application of retried writes (Raft paper §8, thesis §6.3). Each node proposes
/// the writes of its clients as one session per run ("incarnation", strictly increasing across
/// restarts) with increasing request numbers; a node re-proposes its unapplied writes when the
/// leader changes, since a forwarded proposal may have been lost with the old leader. A
/// request is applied only if it is newer than the last one applied for its session, so a
/// duplicate never applies twice. Requests arrive in order (one FIFO connection to one leader,
/// retries re-sent in order), so a request is only skipped out of order when an older one was
/// lost; its client then gets an error saying it was not applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Session {
    pub incarnation: u64,
    pub last_request: u64,
}

/// Decides whether request `request` of run `incarnation` applies, given its origin's session:
/// the updated session if it does, None for a duplicate or a request of a superseded run.
pub fn admit(session: Option<Session>, incarnation: u64, request: u64) -> Option<Session> {
    match session {
        Some(s) if incarnation < s.incarnation => None,
        Some(s) if incarnation == s.incarnation && request <= s.last_request => None,
        _ => Some(Session { incarnation, last_request: request }),
    }
}

/// Read access to the state the command applies to.
pub trait KvRead {
    type Error;
    fn get(&self, key: &[u8]) -> Result<Option<Value>, Self::Error>;
    /// An element record (see `coll`).
    fn element(&self, key: &[u8]) -> Result<Option<Value>, Self::Error>;
    /// Up to `limit` element records with keys in `[from, to)`, in key order, or from the
    /// last backwards with `rev`.
    fn elements(
        &self,
        from: &[u8],
        to: &[u8],
        rev: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, Self::Error>;
    /// The error for a stored value that is no `Record`.
    fn corrupt(key: &[u8]) -> Self::Error;
    /// False only when `key` surely holds no collection (live or expired), so a write that
    /// replaces it need not read it first: the runtime keeps the keys that do in memory.
    fn may_hold_collection(&self, _key: &[u8]) -> bool {
        true
    }
}

/// The live record of `key` at `now`.
fn read<S: KvRead>(state: &S, key: &[u8], now: u64) -> Result<Option<Record>, S::Error> {
    live(state.get(key)?, now).map_err(|NotARecord| S::corrupt(key))
}

fn put(key: &[u8], r: Record) -> Mutation {
    Mutation::Put(key.to_vec(), r.encode())
}

pub const ERR_NOT_INTEGER: &str = "ERR value is not an integer or out of range";
pub const ERR_OVERFLOW: &str = "ERR increment or decrement would overflow";
pub const ERR_NOT_FLOAT: &str = "ERR value is not a valid float";
pub const ERR_NAN: &str = "ERR increment would produce NaN or Infinity";
pub const ERR_NO_SUCH_KEY: &str = "ERR no such key";
pub const ERR_WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
pub const ERR_HASH_NOT_INTEGER: &str = "ERR hash value is not an integer";
pub const ERR_HASH_NOT_FLOAT: &str = "ERR hash value is not a float";
pub const ERR_STRING_TOO_LONG: &str =
    "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

/// Longest string a write may build (APPEND, SETRANGE), as Redis's default proto-max-bulk-len.
pub const STRING_BYTES_MAX: u64 = 512 * 1024 * 1024;

fn error(msg: &str) -> (Vec<Mutation>, WriteReply) {
    (Vec::new(), WriteReply::Error(msg.into()))
}

/// The deadline `expiry` gives a key written at `now` that had `old` (its previous deadline).
fn deadline(expiry: Expiry, now: u64, old: Option<u64>) -> Option<u64> {
    match expiry {
        Expiry::Clear => None,
        Expiry::Keep => old,
        Expiry::In(ms) => Some(now.saturating_add(ms)),
        Expiry::At(t) => Some(t),
    }
}

/// Writes `r` at `now`, or deletes the key if its deadline already passed (Redis sets and
/// drops it at once: the write still succeeds).
fn store(key: &[u8], r: Record, now: u64) -> Mutation {
    if r.live_at(now) {
        put(key, r)
    } else {
        Mutation::Delete(key.to_vec())
    }
}

/// Writes string `r` at `key`, retiring a collection stored there (an expired one: a live one
/// is WRONGTYPE for the commands that come here).
fn put_string<S: KvRead>(state: &S, key: &[u8], r: Record) -> Result<Vec<Mutation>, S::Error> {
    let mut muts = coll::retire(state, key)?;
    muts.push(put(key, r));
    Ok(muts)
}

/// MSET's writes: each key a string with no deadline.
fn put_strings<S: KvRead>(state: &S, pairs: &[(Key, Value)]) -> Result<Vec<Mutation>, S::Error> {
    let mut muts = Vec::new();
    for (k, v) in pairs {
        muts.extend(put_string(state, k, Record::string(v.clone(), None))?);
    }
    Ok(muts)
}

/// A live string's bytes and deadline, None if absent, or the WRONGTYPE reply.
type StrRead = Result<Option<(Vec<u8>, Option<u64>)>, (Vec<Mutation>, WriteReply)>;

fn read_str<S: KvRead>(state: &S, key: &[u8], now: u64) -> Result<StrRead, S::Error> {
    Ok(match read(state, key, now)? {
        None => Ok(None),
        Some(Record { data: Data::Str(v), expires_at }) => Ok(Some((v, expires_at))),
        Some(_) => Err(error(ERR_WRONGTYPE)),
    })
}

/// INCRBYFLOAT's arithmetic: `current` (None: 0) plus `delta`, as text; `not_float` is the
/// error for a current value that is no float.
fn add_float(
    current: Option<&[u8]>,
    delta: &[u8],
    not_float: &str,
) -> Result<Vec<u8>, (Vec<Mutation>, WriteReply)> {
    let current = match current {
        None => 0.0,
        Some(v) => parse_f64(v).ok_or_else(|| error(not_float))?,
    };
    let delta = parse_f64(delta).ok_or_else(|| error(ERR_NOT_FLOAT))?;
    let n = current + delta;
    if !n.is_finite() {
        return Err(error(ERR_NAN));
    }
    Ok(format_f64(n).into_bytes())
}

/// Applies `cmd` to `state` at `now` (the entry's time, `Entry::time`: every replica applies
/// at the same time). Later mutations in the list win over earlier ones for the same key.
pub fn apply<S: KvRead>(
    cmd: &Command,
    state: &S,
    ctx: &mut Ctx,
) -> Result<(Vec<Mutation>, WriteReply), S::Error> {
    match cmd {
        Command::Multi { ops, watched } => apply_multi(ops, watched, state, ctx),
        other => apply_one(other, state, ctx),
    }
}

/// MULTI ... EXEC: each command sees the ones before it (they write to an overlay of the
/// state), and a command's error does not stop the others, as in Redis.
fn apply_multi<S: KvRead>(
    ops: &[TxOp],
    watched: &[(Key, Option<Vec<u8>>)],
    state: &S,
    ctx: &mut Ctx,
) -> Result<(Vec<Mutation>, WriteReply), S::Error> {
    let now = ctx.time;
    for (k, then) in watched {
        if watch_value(state, k, now)? != *then {
            return Ok((Vec::new(), WriteReply::NullArray));
        }
    }
    let mut changes = PendingChanges::default();
    let mut muts = Vec::new();
    let mut replies = Vec::with_capacity(ops.len());
    for op in ops {
        let overlay = Layered { base: state, pending: Some(&changes) };
        let reply = match op {
            TxOp::Write(c) => {
                let (m, r) = apply_one(c, &overlay, ctx)?;
                changes.record(&m);
                muts.extend(m);
                r
            }
            TxOp::Query(q) => query(q, &overlay, now)?,
            TxOp::Reply(r) => r.clone(),
        };
        replies.push(reply);
    }
    Ok((muts, WriteReply::Array(replies)))
}

fn apply_one<S: KvRead>(
    cmd: &Command,
    state: &S,
    ctx: &mut Ctx,
) -> Result<(Vec<Mutation>, WriteReply), S::Error> {
    let now = ctx.time;
    Ok(match cmd {
        Command::Set { key, value, cond, get, expiry } => {
            // The old record matters to GET, NX/XX and KEEPTTL, and a collection stored there
            // (live or expired) takes its elements with it; a plain SET over a key that holds
            // no collection reads nothing.
            let uses_old = *get || *cond != SetCond::Always || *expiry == Expiry::Keep;
            let stored = if uses_old || state.may_hold_collection(key) {
                coll::stored(state, key)?
            } else {
                None
            };
            let old = stored.clone().filter(|r| r.live_at(now));
            if *get && old.as_ref().is_some_and(|r| !matches!(r.data, Data::Str(_))) {
                return Ok(error(ERR_WRONGTYPE));
            }
            let holds = match cond {
                SetCond::Always => true,
                SetCond::IfAbsent => old.is_none(),
                SetCond::IfPresent => old.is_some(),
            };
            let mut muts = Vec::new();
            if holds {
                muts = coll::retire_record(state, stored.as_ref())?;
                let expires_at = deadline(*expiry, now, old.as_ref().and_then(|r| r.expires_at));
                muts.push(store(key, Record::string(value.clone(), expires_at), now));
            }
            let reply = match (get, old) {
                (true, Some(Record { data: Data::Str(v), .. })) => WriteReply::Bulk(v),
                (true, _) => WriteReply::Null,
                (false, _) if holds => WriteReply::Ok,
                (false, _) => WriteReply::Null,
            };
            (muts, reply)
        }
        Command::GetEx { key, expiry } => match typed!(read_str(state, key, now)?) {
            None => (Vec::new(), WriteReply::Null),
            Some((v, old)) => {
                let expires_at = deadline(*expiry, now, old);
                (vec![store(key, Record::string(v.clone(), expires_at), now)], WriteReply::Bulk(v))
            }
        },
        Command::MSet { pairs } => (put_strings(state, pairs)?, WriteReply::Ok),
        Command::MSetNx { pairs } => {
            for (k, _) in pairs {
                if read(state, k, now)?.is_some() {
                    return Ok((Vec::new(), WriteReply::Integer(0)));
                }
            }
            (put_strings(state, pairs)?, WriteReply::Integer(1))
        }
        Command::Del { keys } => {
            // Each distinct existing key counts once, as in Redis (`DEL a a` deletes 1). An
            // expired key is deleted too, but not counted.
            let mut seen = std::collections::BTreeSet::new();
            let (mut n, mut muts) = (0, Vec::new());
            for k in keys {
                if seen.insert(k.as_slice()) {
                    if let Some(r) = coll::stored(state, k)? {
                        n += r.live_at(now) as i64;
                        muts.extend(coll::retire_record(state, Some(&r))?);
                        muts.push(Mutation::Delete(k.to_vec()));
                    }
                }
            }
            (muts, WriteReply::Integer(n))
        }
        Command::GetDel { key } => match typed!(read_str(state, key, now)?) {
            Some((v, _)) => (vec![Mutation::Delete(key.clone())], WriteReply::Bulk(v)),
            None => (Vec::new(), WriteReply::Null),
        },
        Command::IncrBy { key, delta } => {
            let old = typed!(read_str(state, key, now)?);
            let current = match &old {
                None => 0,
                Some((v, _)) => match parse_i64(v) {
                    Some(n) => n,
                    None => return Ok(error(ERR_NOT_INTEGER)),
                },
            };
            match current.checked_add(*delta) {
                Some(n) => {
                    let r = Record::string(n.to_string().into_bytes(), old.and_then(|(_, t)| t));
                    (put_string(state, key, r)?, WriteReply::Integer(n))
                }
                None => error(ERR_OVERFLOW),
            }
        }
        Command::IncrByFloat { key, delta } => {
            let old = typed!(read_str(state, key, now)?);
            let text =
                match add_float(old.as_ref().map(|(v, _)| v.as_slice()), delta, ERR_NOT_FLOAT) {
                    Ok(text) => text,
                    Err(reply) => return Ok(reply),
                };
            let r = Record::string(text.clone(), old.and_then(|(_, t)| t));
            (put_string(state, key, r)?, WriteReply::Bulk(text))
        }
        Command::Append { key, value } => {
            let (mut v, t) = typed!(read_str(state, key, now)?).unwrap_or_default();
            if v.len() as u64 + value.len() as u64 > STRING_BYTES_MAX {
                return Ok(error(ERR_STRING_TOO_LONG));
            }
            v.extend_from_slice(value);
            let len = v.len() as i64;
            (put_string(state, key, Record::string(v, t))?, WriteReply::Integer(len))
        }
        Command::SetRange { key, offset, value } => {
            let old = typed!(read_str(state, key, now)?);
            let len = old.as_ref().map_or(0, |(v, _)| v.len());
            if value.is_empty() {
                return Ok((Vec::new(), WriteReply::Integer(len as i64)));
            }
            if offset.saturating_add(value.len() as u64) > STRING_BYTES_MAX {
                return Ok(error(ERR_STRING_TOO_LONG));
            }
            let (mut v, t) = old.unwrap_or_default();
            let end = *offset as usize + value.len();
            if v.len() < end {
                v.resize(end, 0);
            }
            v[*offset as usize..end].copy_from_slice(value);
            let len = v.len() as i64;
            (put_string(state, key, Record::string(v, t))?, WriteReply::Integer(len))
        }
        Command::Rename { from, to, nx } => {
            let Some(r) = read(state, from, now)? else { return Ok(error(ERR_NO_SUCH_KEY)) };
            if from == to {
                let reply = if *nx { WriteReply::Integer(0) } else { WriteReply::Ok };
                return Ok((Vec::new(), reply));
            }
            if *nx && read(state, to, now)?.is_some() {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            }
            let reply = if *nx { WriteReply::Integer(1) } else { WriteReply::Ok };
            // A collection keeps its id, so its elements stay where they are: O(1).
            let mut muts = coll::retire(state, to)?;
            muts.push(Mutation::Delete(from.clone()));
            muts.push(put(to, r));
            (muts, reply)
        }
        Command::Copy { from, to, replace } => {
            let Some(r) = read(state, from, now)? else {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            };
            if !replace && read(state, to, now)?.is_some() {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            }
            if from == to {
                // Redis refuses this in the command's parsing; here it changes nothing.
                return Ok((Vec::new(), WriteReply::Integer(1)));
            }
            let mut muts = coll::retire(state, to)?;
            let r = match r.data {
                Data::Coll(c) => {
                    // The copy's elements under a new id: O(n), as in Redis.
                    let Some(id) = ctx.next_id() else {
                        return Ok(error(coll::ERR_TOO_MANY_WRITES));
                    };
                    muts.extend(coll::copy_elements(state, &c, id)?);
                    Record { data: Data::Coll(Coll { id, ..c }), ..r }
                }
                Data::Str(_) => r,
            };
            muts.push(put(to, r));
            (muts, WriteReply::Integer(1))
        }
        Command::Expire { key, amount, millis, absolute, cond } => {
            let name = match (absolute, millis) {
                (false, false) => "expire",
                (false, true) => "pexpire",
                (true, false) => "expireat",
                (true, true) => "pexpireat",
            };
            let invalid = || error(&format!("ERR invalid expire time in '{name}' command"));
            let ms = if *millis { Some(*amount) } else { amount.checked_mul(1000) };
            let base = if *absolute { 0 } else { now as i64 };
            // As Redis: an overflow is refused before the key is looked at.
            let Some(when) = ms.and_then(|ms| ms.checked_add(base)) else {
                return Ok(invalid());
            };
            let Some(r) = read(state, key, now)? else {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            };
            let allowed = match (cond, r.expires_at) {
                (ExpireCond::Always, _) => true,
                (ExpireCond::NoExpiry, current) => current.is_none(),
                (ExpireCond::HasExpiry, current) => current.is_some(),
                (ExpireCond::Later, current) => current.is_some_and(|c| when > c as i64),
                (ExpireCond::Earlier, current) => current.is_none_or(|c| when < c as i64),
                (ExpireCond::HasExpiryAndEarlier, current) => {
                    current.is_some_and(|c| when < c as i64)
                }
            };
            if !allowed {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            }
            if when <= now as i64 {
                let mut muts = coll::retire_record(state, Some(&r))?;
                muts.push(Mutation::Delete(key.clone()));
                return Ok((muts, WriteReply::Integer(1)));
            }
            let r = Record { expires_at: Some(when as u64), ..r };
            (vec![put(key, r)], WriteReply::Integer(1))
        }
        Command::Persist { key } => match read(state, key, now)? {
            Some(r) if r.expires_at.is_some() => {
                (vec![put(key, Record { expires_at: None, ..r })], WriteReply::Integer(1))
            }
            _ => (Vec::new(), WriteReply::Integer(0)),
        },
        Command::ExpireDue { keys } => {
            let mut muts = Vec::new();
            for k in keys {
                if let Some(r) = coll::stored(state, k)?.filter(|r| !r.live_at(now)) {
                    muts.extend(coll::retire_record(state, Some(&r))?);
                    muts.push(Mutation::Delete(k.clone()));
                }
            }
            (muts, WriteReply::Ok)
        }
        Command::FlushAll => (vec![Mutation::Clear], WriteReply::Ok),
        Command::HSet { key, pairs, nx, reply_ok } => {
            hashes::hset(state, key, pairs, *nx, *reply_ok, ctx)?
        }
        Command::HDel { key, fields } => hashes::hdel(state, key, fields, ctx)?,
        Command::HIncrBy { key, field, delta } => {
            hashes::hincr(state, key, field, Ok(*delta), ctx)?
        }
        Command::HIncrByFloat { key, field, delta } => {
            hashes::hincr(state, key, field, Err(delta), ctx)?
        }
        Command::List(op) => lists::apply(op, state, ctx)?,
        Command::Sets(op) => sets::apply(op, state, ctx)?,
        Command::ZSet(op) => zsets::apply(op, state, ctx)?,
        Command::Sort(s) => match &s.store {
            Some(dest) => sort::apply(s, dest, state, ctx)?,
            None => (Vec::new(), sort::query(s, state, now)?),
        },
        Command::Multi { .. } => error("ERR MULTI calls can not be nested"),
        Command::Membership(_) => {
            (Vec::new(), WriteReply::Error("ERR membership changes are applied by the node".into()))
        }
    })
}

/// What WATCH remembers of `key`: its live record, encoded (None: absent or expired).
pub fn watch_value<S: KvRead>(
    state: &S,
    key: &[u8],
    now: u64,
) -> Result<Option<Vec<u8>>, S::Error> {
    Ok(read(state, key, now)?.map(|r| r.encode()))
}

/// GETRANGE's slice of `v`: negative indexes count from the end, both ends inclusive and
/// clamped, empty when start is past end (Redis 7's `getrangeCommand`).
pub fn get_range(v: &[u8], start: i64, end: i64) -> Vec<u8> {
    let len = v.len() as i64;
    let (mut start, mut end) = (start, end);
    if start < 0 {
        start += len;
    }
    if end < 0 {
        end += len;
    }
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if len == 0 || start > end {
        return Vec::new();
    }
    v[start as usize..=end as usize].to_vec()
}

/// Answers `q` from `state` at `now`.
pub fn query<S: KvRead>(q: &Query, state: &S, now: u64) -> Result<WriteReply, S::Error> {
    let bulk = |v: Option<Vec<u8>>| v.map_or(WriteReply::Null, WriteReply::Bulk);
    macro_rules! typed {
        ($read:expr) => {
            match $read {
                Ok(v) => v,
                Err((_, reply)) => return Ok(reply),
            }
        };
    }
    Ok(match q {
        Query::Watch(keys) => {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                out.push(bulk(watch_value(state, k, now)?));
            }
            WriteReply::Array(out)
        }
        Query::HScan { key, pattern } => {
            hashes::query(state, key, now, hashes::HashQuery::Scan(pattern.as_deref()))?
        }
        Query::Get(k) => bulk(typed!(read_str(state, k, now)?).map(|(v, _)| v)),
        Query::MGet(keys) => {
            let mut out = Vec::with_capacity(keys.len());
            for k in keys {
                let v = read_str(state, k, now)?.ok().flatten().map(|(v, _)| v);
                out.push(bulk(v));
            }
            WriteReply::Array(out)
        }
        Query::Exists(keys) => {
            let mut n = 0;
            for k in keys {
                if read(state, k, now)?.is_some() {
                    n += 1;
                }
            }
            WriteReply::Integer(n)
        }
        Query::StrLen(k) => {
            WriteReply::Integer(typed!(read_str(state, k, now)?).map_or(0, |(v, _)| v.len() as i64))
        }
        Query::GetRange { key, start, end } => {
            let (v, _) = typed!(read_str(state, key, now)?).unwrap_or_default();
            WriteReply::Bulk(get_range(&v, *start, *end))
        }
        Query::Type(k) => {
            WriteReply::Status(read(state, k, now)?.map_or("none", |r| r.type_name()).into())
        }
        Query::Ttl { key, millis, absolute } => match read(state, key, now)? {
            None => WriteReply::Integer(-2),
            Some(Record { expires_at: None, .. }) => WriteReply::Integer(-1),
            Some(Record { expires_at: Some(t), .. }) => {
                let ms = if *absolute { t } else { t.saturating_sub(now) } as i64;
                WriteReply::Integer(if *millis { ms } else { (ms + 500) / 1000 })
            }
        },
        Query::HGet { key, field } => {
            hashes::query(state, key, now, hashes::HashQuery::Get(field))?
        }
        Query::HMGet { key, fields } => {
            hashes::query(state, key, now, hashes::HashQuery::MGet(fields))?
        }
        Query::HExists { key, field } => {
            hashes::query(state, key, now, hashes::HashQuery::Exists(field))?
        }
        Query::HLen(key) => hashes::query(state, key, now, hashes::HashQuery::Len)?,
        Query::List(q) => lists::query(q, state, now)?,
        Query::Sets(q) => sets::query(q, state, now)?,
        Query::ZSet(q) => zsets::query(q, state, now)?,
        Query::Sort(s) => sort::query(s, state, now)?,
        Query::HStrLen { key, field } => {
            hashes::query(state, key, now, hashes::HashQuery::StrLen(field))?
        }
        Query::HGetAll { key, fields, values } => hashes::query(
            state,
            key,
            now,
            hashes::HashQuery::All { fields: *fields, values: *values },
        )?,
    })
}

/// Parses a float as Redis's `string2ld` accepts it: no spaces, not NaN, at most 5120 bytes.
pub fn parse_f64(s: &[u8]) -> Option<f64> {
    if s.is_empty() || s.len() > 5120 {
        return None;
    }
    let text = std::str::from_utf8(s).ok()?;
    if text.starts_with(|c: char| c.is_ascii_whitespace())
        || text.ends_with(|c: char| c.is_ascii_whitespace())
    {
        return None;
    }
    let v: f64 = text.parse().ok()?;
    (!v.is_nan()).then_some(v)
}

/// A float as INCRBYFLOAT answers it: plain decimal, no exponent, no trailing zeros. (Redis
/// computes in `long double`; this is the shortest text that reads back as the same `f64`.)
pub fn format_f64(v: f64) -> String {
    if v == 0.0 {
        return "0".into(); // never "-0"
    }
    format!("{v}")
}

/// Parses an integer exactly as Redis's `string2ll`: optional '-', no '+', no spaces, no
/// leading zeros, at most 20 bytes, within i64.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s[0] {
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    if digits.is_empty()
        || !(b'1'..=b'9').contains(&digits[0])
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    let mut v: i64 = 0;
    for d in digits {
        let d = (d - b'0') as i64;
        v = v.checked_mul(10)?;
        v = if neg { v.checked_sub(d)? } else { v.checked_add(d)? };
    }
    Some(v)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Keys, elements, and the next entry's index.
    #[derive(Default)]
    pub(super) struct Map(
        pub(super) BTreeMap<Key, Value>,
        pub(super) BTreeMap<Vec<u8>, Value>,
        pub(super) u64,
    );

    impl KvRead for Map {
        type Error = std::convert::Infallible;
        fn get(&self, key: &[u8]) -> Result<Option<Value>, Self::Error> {
            Ok(self.0.get(key).cloned())
        }
        fn element(&self, key: &[u8]) -> Result<Option<Value>, Self::Error> {
            Ok(self.1.get(key).cloned())
        }
        fn elements(
            &self,
            from: &[u8],
            to: &[u8],
            rev: bool,
            limit: usize,
        ) -> Result<Vec<(Vec<u8>, Value)>, Self::Error> {
            if from >= to {
                return Ok(Vec::new());
            }
            let range = self
                .1
                .range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Excluded(to)));
            let it: Box<dyn Iterator<Item = (&Vec<u8>, &Value)>> =
                if rev { Box::new(range.rev()) } else { Box::new(range) };
            Ok(it.take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        fn corrupt(key: &[u8]) -> Self::Error {
            panic!("corrupt value at {key:?}")
        }
    }

    impl Map {
        pub(super) fn run(&mut self, cmd: Command) -> WriteReply {
            self.run_at(cmd, 1_000)
        }

        pub(super) fn run_at(&mut self, cmd: Command, now: u64) -> WriteReply {
            self.2 += 1;
            let (muts, reply) = apply(&cmd, self, &mut Ctx::new(now, self.2, 1)).unwrap();
            for m in muts {
                match m {
                    Mutation::Put(k, v) => self.0.insert(k, v),
                    Mutation::Delete(k) => self.0.remove(&k),
                    Mutation::PutElement(k, v) => self.1.insert(k, v),
                    Mutation::DeleteElement(k) => self.1.remove(&k),
                    Mutation::DeleteElements { from, to } => {
                        self.1.retain(|k, _| !(from <= *k && *k < to));
                        None
                    }
                    Mutation::Clear => {
                        self.0.clear();
                        self.1.clear();
                        None
                    }
                    Mutation::Session(..) | Mutation::Membership(_) => None,
                };
            }
            reply
        }
    }

    impl Map {
        fn value(&self, k: &[u8]) -> Vec<u8> {
            match Record::decode(&self.0[k]).expect("a record").data {
                Data::Str(v) => v,
                Data::Coll(_) => panic!("a collection"),
            }
        }

        fn record(&self, k: &[u8]) -> Option<Record> {
            self.0.get(k).map(|b| Record::decode(b).expect("a record"))
        }
    }

    fn b(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn a_session_admits_each_request_once_and_refuses_old_runs() {
        let s1 = admit(None, 3, 1).unwrap();
        assert_eq!(s1, Session { incarnation: 3, last_request: 1 });
        assert_eq!(admit(Some(s1), 3, 1), None, "duplicate");
        let s2 = admit(Some(s1), 3, 5).unwrap();
        assert_eq!(admit(Some(s2), 3, 4), None, "older than the last applied");
        assert_eq!(admit(Some(s2), 2, 9), None, "a superseded run");
        assert_eq!(admit(Some(s2), 4, 1), Some(Session { incarnation: 4, last_request: 1 }));
    }

    #[test]
    fn del_counts_distinct_existing_keys() {
        let mut m = Map::default();
        m.run(Command::MSet { pairs: vec![(b("a"), b("1")), (b("b"), b("2"))] });
        let reply = m.run(Command::Del { keys: vec![b("a"), b("a"), b("c"), b("b")] });
        assert_eq!(reply, WriteReply::Integer(2));
        assert!(m.0.is_empty());
    }

    #[test]
    fn incr_parses_like_redis_and_refuses_overflow() {
        let mut m = Map::default();
        assert_eq!(m.run(Command::IncrBy { key: b("n"), delta: 5 }), WriteReply::Integer(5));
        assert_eq!(m.run(Command::IncrBy { key: b("n"), delta: -7 }), WriteReply::Integer(-2));
        m.run(Command::set(b("s"), b("01")));
        assert_eq!(
            m.run(Command::IncrBy { key: b("s"), delta: 1 }),
            WriteReply::Error(ERR_NOT_INTEGER.into())
        );
        m.run(Command::set(b("max"), i64::MAX.to_string().into_bytes()));
        assert_eq!(
            m.run(Command::IncrBy { key: b("max"), delta: 1 }),
            WriteReply::Error(ERR_OVERFLOW.into())
        );
        assert_eq!(m.value(b"max"), i64::MAX.to_string().into_bytes());
    }

    #[test]
    fn parse_i64_matches_string2ll() {
        for ok in ["0", "1", "-1", "9223372036854775807", "-9223372036854775808"] {
            assert_eq!(parse_i64(ok.as_bytes()), Some(ok.parse().unwrap()), "{ok}");
        }
        for bad in ["", "+1", " 1", "1 ", "01", "-0", "-", "9223372036854775808", "1.5", "abc"] {
            assert_eq!(parse_i64(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn append_creates_or_extends_and_returns_the_length() {
        let mut m = Map::default();
        assert_eq!(m.run(Command::Append { key: b("a"), value: b("xy") }), WriteReply::Integer(2));
        assert_eq!(m.run(Command::Append { key: b("a"), value: b("z") }), WriteReply::Integer(3));
        assert_eq!(m.value(b"a"), b("xyz"));
    }

    #[test]
    fn values_with_nul_bytes_are_kept_exactly() {
        let mut m = Map::default();
        m.run(Command::set(b("k\0ey"), vec![0, 1, 0, 255]));
        assert_eq!(m.value(b"k\0ey"), vec![0, 1, 0, 255]);
    }

    #[test]
    fn records_round_trip_and_foreign_bytes_are_refused() {
        let mut c = Coll::new(Kind::List, 7 << 20 | 3);
        c.resize(3);
        c.saw(70);
        c.head -= 1;
        for r in [
            Record::string(b("v"), None),
            Record::string(vec![0, 1], Some(7)),
            Record { data: Data::Coll(c), expires_at: Some(9) },
            Record { data: Data::Coll(Coll::new(Kind::ZSet, 1)), expires_at: None },
        ] {
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
        // Format 4's whole hash (type 1) is no record of this build.
        for bad in
            [&b""[..], &[2, 0], &[0], &[0, 1, 1, 2], &[0, 2], &[1, 0, 0, 0, 0, 9, 1], &[6, 0]]
        {
            assert_eq!(Record::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn expiry_is_decided_at_the_entry_time_and_kept_or_cleared_as_redis_does() {
        let mut m = Map::default();
        let set = |expiry| Command::Set {
            key: b("k"),
            value: b("v"),
            cond: SetCond::Always,
            get: false,
            expiry,
        };
        m.run_at(set(Expiry::In(100)), 1_000);
        assert_eq!(m.record(b"k").unwrap().expires_at, Some(1_100));
        // Alive through its deadline's millisecond, gone after.
        assert_eq!(m.run_at(Command::GetDel { key: b("x") }, 1_100), WriteReply::Null);
        assert_eq!(
            m.run_at(Command::IncrBy { key: b("k"), delta: 1 }, 1_100),
            WriteReply::Error(ERR_NOT_INTEGER.into())
        );
        assert_eq!(
            m.run_at(
                Command::Set {
                    key: b("k"),
                    value: b("v"),
                    cond: SetCond::Always,
                    get: true,
                    expiry: Expiry::Keep
                },
                1_101
            ),
            WriteReply::Null,
            "expired at 1101: GET sees no old value"
        );
        assert_eq!(m.record(b"k").unwrap().expires_at, None, "KEEPTTL of an expired key");
        // INCR and APPEND keep the deadline; SET clears it.
        m.run_at(Command::set(b("n"), b("1")), 0);
        let expire = |amount, cond| Command::Expire {
            key: b("n"),
            amount,
            millis: true,
            absolute: false,
            cond,
        };
        assert_eq!(m.run_at(expire(500, ExpireCond::Always), 1_000), WriteReply::Integer(1));
        m.run_at(Command::IncrBy { key: b("n"), delta: 1 }, 1_001);
        m.run_at(Command::Append { key: b("n"), value: b("0") }, 1_002);
        assert_eq!(m.record(b"n").unwrap(), Record::string(b("20"), Some(1_500)));
        // GT needs a later deadline, LT an earlier one, NX none, XX one.
        assert_eq!(m.run_at(expire(400, ExpireCond::Later), 1_000), WriteReply::Integer(0));
        assert_eq!(m.run_at(expire(400, ExpireCond::Earlier), 1_000), WriteReply::Integer(1));
        assert_eq!(m.run_at(expire(900, ExpireCond::NoExpiry), 1_000), WriteReply::Integer(0));
        assert_eq!(m.run_at(Command::Persist { key: b("n") }, 1_000), WriteReply::Integer(1));
        assert_eq!(m.run_at(expire(900, ExpireCond::HasExpiry), 1_000), WriteReply::Integer(0));
        assert_eq!(m.run_at(expire(900, ExpireCond::Later), 1_000), WriteReply::Integer(0));
        // A deadline already past deletes the key.
        assert_eq!(m.run_at(expire(0, ExpireCond::Always), 1_000), WriteReply::Integer(1));
        assert!(m.record(b"n").is_none());
        // The leader's sweep deletes only keys still expired at its entry's time.
        m.run_at(set(Expiry::In(10)), 0);
        m.run_at(Command::set(b("p"), b("v")), 0);
        let due = Command::ExpireDue { keys: vec![b("k"), b("p"), b("none")] };
        m.run_at(due.clone(), 5);
        assert!(m.record(b"k").is_some());
        m.run_at(due, 11);
        assert!(m.record(b"k").is_none());
        assert!(m.record(b"p").is_some(), "a key without a deadline stays");
    }
}
