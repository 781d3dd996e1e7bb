//! SORT and SORT_RO, as Redis 7.0's `sort.c` does them: the elements of a list, set or sorted
//! set, ordered as numbers or bytes (ALPHA), by themselves or by the keys a BY pattern names,
//! cut by LIMIT, mapped through GET patterns, answered or stored as a list (STORE, a write that
//! goes through the log: it reads other keys, all on the replica applying it, so every replica
//! stores the same list).
//!
//! Differences from Redis, on purpose: a set's members come in byte order where Redis gives its
//! hash table's order (BY with no `*`, no STORE); ALPHA compares bytes, as Redis does under the C
//! locale.

use super::coll::{self, retire, store_coll, Ctx, SET_MEMBER, ZSET_ORDER};
use super::record::{Coll, Data, Kind, Record};
use super::{error, hashes, lists, read, Key, KvRead, Mutation, WriteReply, ERR_WRONGTYPE};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// SORT's options, as parsed (Redis checks them before reading the key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sort {
    pub key: Key,
    /// BY with a pattern holding `*`: the weights are the keys it names.
    pub by: Option<Vec<u8>>,
    /// BY with a pattern holding no `*`: no sorting at all (the native order).
    pub nosort: bool,
    /// LIMIT offset count.
    pub limit: Option<(i64, i64)>,
    /// GET patterns, in order (`#` is the element itself).
    pub get: Vec<Vec<u8>>,
    pub desc: bool,
    pub alpha: bool,
    /// STORE destination (SORT only).
    pub store: Option<Key>,
}

pub const ERR_NOT_DOUBLE: &str = "ERR One or more scores can't be converted into double";

impl Sort {
    pub fn size_bytes(&self) -> usize {
        let opt = |v: &Option<Vec<u8>>| v.as_ref().map_or(0, Vec::len);
        self.key.len()
            + opt(&self.by)
            + opt(&self.store)
            + self.get.iter().map(Vec::len).sum::<usize>()
            + 16
    }
}

/// The value a pattern names for element `e` (Redis's `lookupKeyByPattern`): `#` is `e`; the
/// first `*` is replaced by `e`; `key->field` reads a hash field; a pattern with no `*`, a
/// missing key or one of another type names nothing.
fn lookup<S: KvRead>(
    state: &S,
    pattern: &[u8],
    e: &[u8],
    now: u64,
) -> Result<Option<Vec<u8>>, S::Error> {
    if pattern == b"#" {
        return Ok(Some(e.to_vec()));
    }
    let Some(star) = pattern.iter().position(|&b| b == b'*') else { return Ok(None) };
    let rest = &pattern[star + 1..];
    let (post, field) = match rest.windows(2).position(|w| w == b"->") {
        Some(f) if f + 2 < rest.len() => (&rest[..f], Some(&rest[f + 2..])),
        _ => (rest, None),
    };
    let mut key = pattern[..star].to_vec();
    key.extend_from_slice(e);
    key.extend_from_slice(post);
    Ok(match field {
        Some(f) => match hashes::query(state, &key, now, hashes::HashQuery::Get(f))? {
            WriteReply::Bulk(v) => Some(v),
            _ => None,
        },
        None => match read(state, &key, now)? {
            Some(Record { data: Data::Str(v), .. }) => Some(v),
            _ => None,
        },
    })
}

/// A weight as Redis reads it with `strtod`, the whole string taken: leading spaces allowed,
/// the empty string is 0, NaN and values out of a double's range are refused.
fn weight(b: &[u8]) -> Option<f64> {
    if b.is_empty() {
        return Some(0.0);
    }
    let s = std::str::from_utf8(b).ok()?;
    let t = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let v: f64 = t.parse().ok()?;
    let unsigned = t.trim_start_matches(['+', '-']);
    let mantissa = unsigned.split(['e', 'E']).next().unwrap_or("");
    let named = unsigned.starts_with(['i', 'I', 'n', 'N']);
    let overflow = v.is_infinite() && !named;
    let underflow = (v == 0.0 && mantissa.bytes().any(|c| (b'1'..=b'9').contains(&c)))
        || (v != 0.0 && v.abs() < f64::MIN_POSITIVE);
    (!v.is_nan() && !overflow && !underflow).then_some(v)
}

/// The elements of the collection `c`, in its own order (a list's, a sorted set's by score, a
/// set's by bytes).
fn elements<S: KvRead>(state: &S, c: &Coll) -> Result<Vec<Vec<u8>>, S::Error> {
    Ok(match c.kind {
        Kind::List => lists::read_range(state, c, 0, c.size, false)?,
        Kind::Set => {
            coll::all_elements(state, c.id, SET_MEMBER)?.into_iter().map(|(m, _)| m).collect()
        }
        _ => coll::all_elements(state, c.id, ZSET_ORDER)?
            .into_iter()
            .map(|(rest, _)| rest[8..].to_vec())
            .collect(),
    })
}

/// What SORT answers: one value per element kept, or one per element and GET pattern (None: no
/// value there), or the error reply.
type Sorted = Result<Vec<Option<Vec<u8>>>, WriteReply>;

fn run<S: KvRead>(s: &Sort, state: &S, now: u64) -> Result<Sorted, S::Error> {
    let c = match read(state, &s.key, now)? {
        None => None,
        Some(Record { data: Data::Coll(c), .. }) if c.kind != Kind::Hash => Some(c),
        Some(_) => return Ok(Err(WriteReply::Error(ERR_WRONGTYPE.into()))),
    };
    let kind = c.as_ref().map_or(Kind::List, |c| c.kind);
    let (mut nosort, mut alpha, mut by) = (s.nosort, s.alpha, s.by.as_deref());
    if nosort && kind == Kind::Set && s.store.is_some() {
        // Redis sorts a set stored by SORT, so every replica of its stores the same list.
        (nosort, alpha, by) = (false, true, None);
    }
    let mut items = match &c {
        Some(c) => elements(state, c)?,
        None => Vec::new(),
    };
    if nosort {
        if s.desc && kind != Kind::Set {
            items.reverse();
        }
    } else {
        // (weight as a number, weight as bytes, element)
        let mut keyed = Vec::with_capacity(items.len());
        for e in items {
            let w = match by {
                Some(p) => lookup(state, p, &e, now)?,
                None => None,
            };
            let score = if alpha {
                0.0
            } else {
                match (by, &w) {
                    (Some(_), None) => Some(0.0),
                    (Some(_), Some(w)) => weight(w),
                    (None, _) => weight(&e),
                }
                .unwrap_or(f64::NAN)
            };
            if score.is_nan() {
                return Ok(Err(WriteReply::Error(ERR_NOT_DOUBLE.into())));
            }
            keyed.push((score, w, e));
        }
        keyed.sort_by(|a, b| {
            let cmp = if !alpha {
                a.0.partial_cmp(&b.0).unwrap_or(Ordering::Equal).then_with(|| a.2.cmp(&b.2))
            } else if by.is_some() {
                a.1.cmp(&b.1)
            } else {
                a.2.cmp(&b.2)
            };
            if s.desc {
                cmp.reverse()
            } else {
                cmp
            }
        });
        items = keyed.into_iter().map(|(_, _, e)| e).collect();
    }
    let len = items.len() as i64;
    let (offset, count) = s.limit.unwrap_or((0, -1));
    let mut start = offset.max(0).min(len);
    let count = count.max(-1).min(len);
    let mut end = if count < 0 { len - 1 } else { start + count - 1 };
    if start >= len {
        (start, end) = (len - 1, len - 2);
    }
    end = end.min(len - 1);
    let kept = if end >= start { &items[start as usize..=end as usize] } else { &[][..] };
    let mut out = Vec::with_capacity(kept.len() * s.get.len().max(1));
    for e in kept {
        if s.get.is_empty() {
            out.push(Some(e.clone()));
        }
        for p in &s.get {
            out.push(lookup(state, p, e, now)?);
        }
    }
    Ok(Ok(out))
}

/// SORT and SORT_RO without STORE.
pub fn query<S: KvRead>(s: &Sort, state: &S, now: u64) -> Result<WriteReply, S::Error> {
    Ok(match run(s, state, now)? {
        Ok(values) => WriteReply::Array(
            values.into_iter().map(|v| v.map_or(WriteReply::Null, WriteReply::Bulk)).collect(),
        ),
        Err(reply) => reply,
    })
}

/// SORT ... STORE: whatever the destination held is replaced by a list of the values (a
/// missing one stored as the empty string), with no time to live; no values delete it.
pub fn apply<S: KvRead>(
    s: &Sort,
    dest: &[u8],
    state: &S,
    ctx: &mut Ctx,
) -> Result<(Vec<Mutation>, WriteReply), S::Error> {
    let values = match run(s, state, ctx.time)? {
        Ok(values) => values,
        Err(reply) => return Ok((Vec::new(), reply)),
    };
    let mut muts = retire(state, dest)?;
    let n = values.len() as u64;
    if n == 0 {
        if state.get(dest)?.is_some() {
            muts.push(Mutation::Delete(dest.to_vec()));
        }
        return Ok((muts, WriteReply::Integer(0)));
    }
    let Some(id) = ctx.next_id() else { return Ok(error(coll::ERR_TOO_MANY_WRITES)) };
    let mut c = Coll::new(Kind::List, id);
    for v in values {
        lists::push(&mut c, false, &v.unwrap_or_default(), &mut muts);
    }
    muts.push(typed!(store_coll(dest, c, None, ctx)));
    Ok((muts, WriteReply::Integer(n as i64)))
}

#[cfg(test)]
mod tests {
    use super::weight;

    #[test]
    fn weights_are_read_as_strtod_reads_them_whole() {
        assert_eq!(weight(b""), Some(0.0));
        assert_eq!(weight(b"  1.5"), Some(1.5));
        assert_eq!(weight(b"-inf"), Some(f64::NEG_INFINITY));
        assert_eq!(weight(b"1e3"), Some(1000.0));
        for bad in [&b" "[..], b"1 ", b"abc", b"nan", b"1e400", b"1e-400", b"\xff"] {
            assert_eq!(weight(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
