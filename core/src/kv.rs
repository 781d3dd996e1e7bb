//! The replicated key-value state machine: a pure function from (current state, command) to
//! (mutations, reply). The runtime writes the mutations and the applied index atomically; no
//! clock, randomness or I/O is read here, so every replica applying the same log agrees.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type Key = Vec<u8>;
pub type Value = Vec<u8>;

/// A write that goes through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// SET with its NX/XX condition and GET flag (GETSET is `SET key value GET`).
    Set {
        key: Key,
        value: Value,
        cond: SetCond,
        get: bool,
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
    /// A cluster membership change: applied by the runtime (it changes who replicates), not
    /// by `apply`.
    Membership(crate::MembershipChange),
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
    /// A plain `SET key value`.
    pub fn set(key: Key, value: Value) -> Command {
        Command::Set { key, value, cond: SetCond::Always, get: false }
    }

    /// Bytes of user data carried, for request size limits.
    pub fn size_bytes(&self) -> usize {
        let pairs = |p: &[(Key, Value)]| p.iter().map(|(k, v)| k.len() + v.len()).sum();
        match self {
            Command::Set { key, value, .. } => key.len() + value.len(),
            Command::Del { keys } => keys.iter().map(Vec::len).sum(),
            Command::MSet { pairs: p } | Command::MSetNx { pairs: p } => pairs(p),
            Command::GetDel { key } => key.len(),
            Command::IncrBy { key, .. } => key.len() + 8,
            Command::IncrByFloat { key, delta } => key.len() + delta.len(),
            Command::Append { key, value } => key.len() + value.len(),
            Command::SetRange { key, value, .. } => key.len() + 8 + value.len(),
            Command::Rename { from, to, .. } | Command::Copy { from, to, .. } => {
                from.len() + to.len()
            }
            Command::FlushAll => 0,
            Command::Membership(_) => 64,
        }
    }
}

/// The outcome of applying a write, as the client sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteReply {
    Ok,
    Integer(i64),
    Bulk(Vec<u8>),
    /// A null bulk string (a condition that did not hold, a missing old value).
    Null,
    Error(String),
}

/// A change to the stored state machine.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Mutation {
    Put(Key, Value),
    Delete(Key),
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
}

pub const ERR_NOT_INTEGER: &str = "ERR value is not an integer or out of range";
pub const ERR_OVERFLOW: &str = "ERR increment or decrement would overflow";
pub const ERR_NOT_FLOAT: &str = "ERR value is not a valid float";
pub const ERR_NAN: &str = "ERR increment would produce NaN or Infinity";
pub const ERR_NO_SUCH_KEY: &str = "ERR no such key";
pub const ERR_STRING_TOO_LONG: &str =
    "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

/// Longest string a write may build (APPEND, SETRANGE), as Redis's default proto-max-bulk-len.
pub const STRING_BYTES_MAX: u64 = 512 * 1024 * 1024;

fn error(msg: &str) -> (Vec<Mutation>, WriteReply) {
    (Vec::new(), WriteReply::Error(msg.into()))
}

/// Applies `cmd` to `state`. Later mutations in the list win over earlier ones for the same key.
pub fn apply<S: KvRead>(cmd: &Command, state: &S) -> Result<(Vec<Mutation>, WriteReply), S::Error> {
    Ok(match cmd {
        Command::Set { key, value, cond, get } => {
            let old = state.get(key)?;
            let holds = match cond {
                SetCond::Always => true,
                SetCond::IfAbsent => old.is_none(),
                SetCond::IfPresent => old.is_some(),
            };
            let muts = if holds { vec![Mutation::Put(key.clone(), value.clone())] } else { vec![] };
            let reply = match (get, old) {
                (true, Some(v)) => WriteReply::Bulk(v),
                (true, None) => WriteReply::Null,
                (false, _) if holds => WriteReply::Ok,
                (false, _) => WriteReply::Null,
            };
            (muts, reply)
        }
        Command::MSet { pairs } => {
            let muts = pairs.iter().map(|(k, v)| Mutation::Put(k.clone(), v.clone())).collect();
            (muts, WriteReply::Ok)
        }
        Command::MSetNx { pairs } => {
            for (k, _) in pairs {
                if state.get(k)?.is_some() {
                    return Ok((Vec::new(), WriteReply::Integer(0)));
                }
            }
            let muts = pairs.iter().map(|(k, v)| Mutation::Put(k.clone(), v.clone())).collect();
            (muts, WriteReply::Integer(1))
        }
        Command::Del { keys } => {
            // Each distinct existing key counts once, as in Redis (`DEL a a` deletes 1).
            let mut seen = BTreeMap::new();
            for k in keys {
                if !seen.contains_key(k.as_slice()) {
                    seen.insert(k.as_slice(), state.get(k)?.is_some());
                }
            }
            let muts: Vec<Mutation> = seen
                .iter()
                .filter(|(_, exists)| **exists)
                .map(|(k, _)| Mutation::Delete(k.to_vec()))
                .collect();
            let n = muts.len() as i64;
            (muts, WriteReply::Integer(n))
        }
        Command::GetDel { key } => match state.get(key)? {
            Some(v) => (vec![Mutation::Delete(key.clone())], WriteReply::Bulk(v)),
            None => (Vec::new(), WriteReply::Null),
        },
        Command::IncrBy { key, delta } => {
            let current = match state.get(key)? {
                None => 0,
                Some(v) => match parse_i64(&v) {
                    Some(n) => n,
                    None => return Ok(error(ERR_NOT_INTEGER)),
                },
            };
            match current.checked_add(*delta) {
                Some(n) => (
                    vec![Mutation::Put(key.clone(), n.to_string().into_bytes())],
                    WriteReply::Integer(n),
                ),
                None => error(ERR_OVERFLOW),
            }
        }
        Command::IncrByFloat { key, delta } => {
            let current = match state.get(key)? {
                None => 0.0,
                Some(v) => match parse_f64(&v) {
                    Some(n) => n,
                    None => return Ok(error(ERR_NOT_FLOAT)),
                },
            };
            let Some(delta) = parse_f64(delta) else { return Ok(error(ERR_NOT_FLOAT)) };
            let n = current + delta;
            if !n.is_finite() {
                return Ok(error(ERR_NAN));
            }
            let text = format_f64(n).into_bytes();
            (vec![Mutation::Put(key.clone(), text.clone())], WriteReply::Bulk(text))
        }
        Command::Append { key, value } => {
            let mut new = state.get(key)?.unwrap_or_default();
            if new.len() as u64 + value.len() as u64 > STRING_BYTES_MAX {
                return Ok(error(ERR_STRING_TOO_LONG));
            }
            new.extend_from_slice(value);
            let len = new.len() as i64;
            (vec![Mutation::Put(key.clone(), new)], WriteReply::Integer(len))
        }
        Command::SetRange { key, offset, value } => {
            let old = state.get(key)?;
            let len = old.as_ref().map_or(0, Vec::len);
            if value.is_empty() {
                return Ok((Vec::new(), WriteReply::Integer(len as i64)));
            }
            if offset.saturating_add(value.len() as u64) > STRING_BYTES_MAX {
                return Ok(error(ERR_STRING_TOO_LONG));
            }
            let mut new = old.unwrap_or_default();
            let end = *offset as usize + value.len();
            if new.len() < end {
                new.resize(end, 0);
            }
            new[*offset as usize..end].copy_from_slice(value);
            let len = new.len() as i64;
            (vec![Mutation::Put(key.clone(), new)], WriteReply::Integer(len))
        }
        Command::Rename { from, to, nx } => {
            let Some(v) = state.get(from)? else { return Ok(error(ERR_NO_SUCH_KEY)) };
            let ok = |nx: bool| if nx { WriteReply::Integer(1) } else { WriteReply::Ok };
            if from == to {
                let reply = if *nx { WriteReply::Integer(0) } else { WriteReply::Ok };
                return Ok((Vec::new(), reply));
            }
            if *nx && state.get(to)?.is_some() {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            }
            (vec![Mutation::Delete(from.clone()), Mutation::Put(to.clone(), v)], ok(*nx))
        }
        Command::Copy { from, to, replace } => {
            let Some(v) = state.get(from)? else { return Ok((Vec::new(), WriteReply::Integer(0))) };
            if !replace && state.get(to)?.is_some() {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            }
            (vec![Mutation::Put(to.clone(), v)], WriteReply::Integer(1))
        }
        Command::FlushAll => (vec![Mutation::Clear], WriteReply::Ok),
        Command::Membership(_) => {
            (Vec::new(), WriteReply::Error("ERR membership changes are applied by the node".into()))
        }
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
mod tests {
    use super::*;

    #[derive(Default)]
    struct Map(BTreeMap<Key, Value>);

    impl KvRead for Map {
        type Error = std::convert::Infallible;
        fn get(&self, key: &[u8]) -> Result<Option<Value>, Self::Error> {
            Ok(self.0.get(key).cloned())
        }
    }

    impl Map {
        fn run(&mut self, cmd: Command) -> WriteReply {
            let (muts, reply) = apply(&cmd, self).unwrap();
            for m in muts {
                match m {
                    Mutation::Put(k, v) => self.0.insert(k, v),
                    Mutation::Delete(k) => self.0.remove(&k),
                    Mutation::Clear => {
                        self.0.clear();
                        None
                    }
                    Mutation::Session(..) | Mutation::Membership(_) => None,
                };
            }
            reply
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
        assert_eq!(m.0[&b("max")], i64::MAX.to_string().into_bytes());
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
        assert_eq!(m.0[&b("a")], b("xyz"));
    }

    #[test]
    fn values_with_nul_bytes_are_kept_exactly() {
        let mut m = Map::default();
        m.run(Command::set(b("k\0ey"), vec![0, 1, 0, 255]));
        assert_eq!(m.0[&b("k\0ey")], vec![0, 1, 0, 255]);
    }
}
