//! A client history: every operation a simulated client issued, with its invocation and
//! completion times in simulated time and what it returned. Keys, values, list elements and
//! set members are short ASCII strings chosen by the workload, so histories print and render
//! readably.

use std::fmt;

/// What a client asked for, on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Set(String),
    Del,
    Incr,
    Append(String),
    /// Sets a new value and returns the old one (GETSET, SET ... GET, or MULTI GET SET EXEC):
    /// answered like a GET.
    GetSet(String),
    /// LPUSH of one element: answered with the list's new length.
    LPush(String),
    /// RPUSH of one element: answered with the list's new length.
    RPush(String),
    /// RPUSH of two elements in one command: both land together or neither does, so a reader
    /// that sees the first without the second has seen a torn write.
    RPush2(String, String),
    /// LPOP of one element (LPOP k, or LPOP k 1): answered with it, or nil for no list.
    LPop,
    /// RPOP of one element, likewise.
    RPop,
    /// LRANGE k 0 -1: the whole list, empty for no list.
    LRange,
    /// SADD of one member: answered with how many members were new (0 or 1).
    SAdd(String),
    /// SADD of two members in one command: both land together or neither does.
    SAdd2(String, String),
    /// SREM of one member: answered with how many were removed (0 or 1).
    SRem(String),
    /// SPOP without a count: answered with the member it removed, or nil for no set. The
    /// server chooses the member, so any member of the set is a correct answer.
    SPop,
    /// SMEMBERS: every member, empty for no set.
    SMembers,
    /// SCARD: the number of members, 0 for no set.
    SCard,
    /// ZADD of one member with an integer score: answered with how many members were new.
    ZAdd(String, i64),
    /// ZADD of two members in one command: both land together or neither does.
    ZAdd2(String, i64, String, i64),
    /// ZINCRBY by an integer: answered with the member's new score (as text, "3").
    ZIncrBy(String, i64),
    /// ZPOPMIN without a count: the member of the lowest (score, member), with its score, or
    /// nothing for no sorted set.
    ZPopMin,
    /// ZRANGE k 0 -1 WITHSCORES: every member with its score, by (score, member).
    ZRange,
    /// ZREM of one member: answered with how many were removed (0 or 1).
    ZRem(String),
    /// MULTI, SET of a string, DEL, EXEC, on a list, set or sorted set key: whatever the key
    /// held is replaced by a string that goes at once, so the key is gone and EXEC answers
    /// `[OK, 1]`. The collection's elements must go with it (the SET over it reads it only if
    /// the node's index of collections says it may hold one), and the string must never show.
    Replace,
}

/// What the client saw.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// GET's value (None: the key did not exist).
    Get(Option<String>),
    /// SET's `+OK`.
    Set,
    /// DEL's count of deleted keys (0 or 1 for one key).
    Del(i64),
    /// INCR's new value, or Err if the server said the value is not an integer.
    Incr(Result<i64, ()>),
    /// APPEND's new length.
    Append(i64),
    /// A push's new list length; how many members SADD added, SREM or ZREM removed, ZADD
    /// added; SCARD's count.
    Int(i64),
    /// A pop's element, SPOP's member (None: there was no list or set); ZINCRBY's new score.
    Bulk(Option<String>),
    /// LRANGE's elements, head first.
    Items(Vec<String>),
    /// SMEMBERS's members, sorted in byte order whatever order they came in (a set has none),
    /// duplicates kept: a member answered twice is an answer no set gives.
    Members(Vec<String>),
    /// (member, score) pairs as ZRANGE ... WITHSCORES (in its order) and ZPOPMIN answer
    /// them, scores as the server wrote them.
    Scored(Vec<(String, String)>),
    /// EXEC's `[OK, 1]` for `Op::Replace`: the SET and the DEL both ran.
    Replaced,
    /// WRONGTYPE: the key holds a value of another type, so the command changed nothing. The
    /// workload keeps strings, hashes, lists, sets and sorted sets under different keys (the
    /// string `Op::Replace` stores is deleted in the same transaction), so a correct store
    /// never gives it there.
    WrongType,
    /// Timed out, connection lost, or an error that leaves the outcome open: the operation may
    /// or may not have taken effect, at any time after its invocation.
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    /// Position in the whole history.
    pub id: usize,
    /// The simulated client that issued it; a client issues one operation at a time.
    pub client: usize,
    /// The node the client sent it to.
    pub node: u64,
    pub key: String,
    pub op: Op,
    pub ret: Ret,
    /// Invocation, in nanoseconds of simulated time since the run began.
    pub call: u64,
    /// Completion; None exactly when `ret` is `Ret::Unknown` (it never returned).
    pub complete: Option<u64>,
    /// The operation sent just before this one in the same pipeline (one write, one
    /// connection): Redis executes a connection's commands in order, so this one must take
    /// effect after that one, although their intervals overlap. Set only between operations
    /// that both completed.
    pub after: Option<usize>,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Get => write!(f, "GET"),
            Op::Set(v) => write!(f, "SET {v}"),
            Op::Del => write!(f, "DEL"),
            Op::Incr => write!(f, "INCR"),
            Op::Append(v) => write!(f, "APPEND {v}"),
            Op::GetSet(v) => write!(f, "GETSET {v}"),
            Op::LPush(v) => write!(f, "LPUSH {v}"),
            Op::RPush(v) => write!(f, "RPUSH {v}"),
            Op::RPush2(a, b) => write!(f, "RPUSH {a} {b}"),
            Op::LPop => write!(f, "LPOP"),
            Op::RPop => write!(f, "RPOP"),
            Op::LRange => write!(f, "LRANGE"),
            Op::SAdd(m) => write!(f, "SADD {m}"),
            Op::SAdd2(a, b) => write!(f, "SADD {a} {b}"),
            Op::SRem(m) => write!(f, "SREM {m}"),
            Op::SPop => write!(f, "SPOP"),
            Op::SMembers => write!(f, "SMEMBERS"),
            Op::SCard => write!(f, "SCARD"),
            Op::ZAdd(m, score) => write!(f, "ZADD {score} {m}"),
            Op::ZAdd2(a, x, b, y) => write!(f, "ZADD {x} {a} {y} {b}"),
            Op::ZIncrBy(m, by) => write!(f, "ZINCRBY {by} {m}"),
            Op::ZPopMin => write!(f, "ZPOPMIN"),
            Op::ZRange => write!(f, "ZRANGE"),
            Op::ZRem(m) => write!(f, "ZREM {m}"),
            Op::Replace => write!(f, "MULTI SET DEL"),
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ret::Get(Some(v)) | Ret::Bulk(Some(v)) => write!(f, "{v:?}"),
            Ret::Get(None) | Ret::Bulk(None) => write!(f, "nil"),
            Ret::Set => write!(f, "OK"),
            Ret::Del(n) | Ret::Append(n) | Ret::Incr(Ok(n)) | Ret::Int(n) => write!(f, "{n}"),
            Ret::Incr(Err(())) => write!(f, "ERR not an integer"),
            Ret::Items(items) | Ret::Members(items) => write!(f, "{items:?}"),
            Ret::Scored(pairs) => {
                let flat: Vec<String> = pairs.iter().map(|(m, s)| format!("{m}={s}")).collect();
                write!(f, "[{}]", flat.join(", "))
            }
            Ret::Replaced => write!(f, "[OK, 1]"),
            Ret::WrongType => write!(f, "WRONGTYPE"),
            Ret::Unknown => write!(f, "?"),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |ns: u64| ns as f64 / 1e6;
        let end = self.complete.map_or("never".to_string(), |c| format!("{:.3}ms", ms(c)));
        write!(
            f,
            "#{} client {} node {} [{:.3}ms, {end}] {} {} -> {}",
            self.id,
            self.client,
            self.node,
            ms(self.call),
            self.op,
            self.key,
            self.ret
        )
    }
}
