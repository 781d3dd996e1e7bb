//! Sets, member by member (`coll::SET_MEMBER` records with empty values): SADD, SREM and
//! SISMEMBER cost one member each; SINTER walks its smallest set and looks the members up in the
//! others. Members come back in byte order. SPOP's choice is made with the entry's generator
//! (`Ctx::rng`), so every replica pops the same members. Redis 7.0's replies (`t_set.c`).

use super::coll::{
    self, all_elements, element_key, open, read_coll, store_coll, Ctx, Refused, SplitMix64,
    SET_MEMBER,
};
use super::record::{Coll, Kind};
use super::{error, parse_i64, Key, KvRead, Mutation, WriteReply};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// A set write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetOp {
    Add {
        key: Key,
        members: Vec<Vec<u8>>,
    },
    Rem {
        key: Key,
        members: Vec<Vec<u8>>,
    },
    /// SPOP: `count` None answers one member (or nil), Some a set (empty for no key).
    Pop {
        key: Key,
        count: Option<u64>,
    },
    Move {
        from: Key,
        to: Key,
        member: Vec<u8>,
    },
    /// SINTERSTORE, SUNIONSTORE, SDIFFSTORE.
    Store {
        how: Combine,
        dest: Key,
        keys: Vec<Key>,
    },
}

/// How sets combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Combine {
    Inter,
    Union,
    Diff,
}

/// A set read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetQuery {
    /// SMEMBERS, SINTER, SUNION, SDIFF (SMEMBERS is SINTER of one key).
    Combine {
        how: Combine,
        keys: Vec<Key>,
    },
    /// SINTERCARD: `limit` 0 counts every member.
    InterCard {
        keys: Vec<Key>,
        limit: u64,
    },
    IsMember {
        key: Key,
        member: Vec<u8>,
    },
    MIsMember {
        key: Key,
        members: Vec<Vec<u8>>,
    },
    Card(Key),
    /// SSCAN: every member (matching `pattern`) at once, cursor 0.
    Scan {
        key: Key,
        pattern: Option<Vec<u8>>,
    },
}

fn bytes_of(v: &[Vec<u8>]) -> usize {
    v.iter().map(Vec::len).sum()
}

impl SetOp {
    pub fn size_bytes(&self) -> usize {
        16 + match self {
            SetOp::Add { key, members } | SetOp::Rem { key, members } => {
                key.len() + bytes_of(members)
            }
            SetOp::Pop { key, .. } => key.len(),
            SetOp::Move { from, to, member } => from.len() + to.len() + member.len(),
            SetOp::Store { dest, keys, .. } => dest.len() + bytes_of(keys),
        }
    }
}

impl SetQuery {
    pub fn size_bytes(&self) -> usize {
        16 + match self {
            SetQuery::Combine { keys, .. } | SetQuery::InterCard { keys, .. } => bytes_of(keys),
            SetQuery::IsMember { key, member } => key.len() + member.len(),
            SetQuery::MIsMember { key, members } => key.len() + bytes_of(members),
            SetQuery::Card(key) => key.len(),
            SetQuery::Scan { key, pattern } => key.len() + pattern.as_ref().map_or(0, Vec::len),
        }
    }
}

type Applied = (Vec<Mutation>, WriteReply);

fn member_key(id: u64, m: &[u8]) -> Vec<u8> {
    element_key(id, SET_MEMBER, m)
}

/// Notes member `m` added to `c`: its length, and whether it is an integer (OBJECT ENCODING's
/// intset holds only integers).
fn saw(c: &mut Coll, m: &[u8]) {
    c.saw(m.len());
    if parse_i64(m).is_none() {
        c.flags |= 1;
    }
}

/// Sets of at most this many members are sampled exactly (SPOP): every member equally likely.
const RANDOM_EXACT_MAX: u64 = 1024;

/// `n` distinct members of set `c` chosen by `rng` (all of them, in byte order, if `n` covers
/// the set). A set of at most `RANDOM_EXACT_MAX` members, or a draw of half of it or more, is
/// sampled exactly; a larger one by seeking to a random key between its first and last
/// member, which favours members after a gap in the key space (documented in the README).
pub fn choose<S: KvRead>(
    state: &S,
    c: &Coll,
    n: u64,
    rng: &mut SplitMix64,
) -> Result<Vec<Vec<u8>>, S::Error> {
    let exact = |state: &S, rng: &mut SplitMix64| -> Result<Vec<Vec<u8>>, S::Error> {
        let mut all: Vec<Vec<u8>> =
            all_elements(state, c.id, SET_MEMBER)?.into_iter().map(|(m, _)| m).collect();
        let n = (n as usize).min(all.len());
        for i in 0..n {
            let j = i + rng.below((all.len() - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(n);
        Ok(all)
    };
    if n >= c.size {
        return Ok(all_elements(state, c.id, SET_MEMBER)?.into_iter().map(|(m, _)| m).collect());
    }
    if c.size <= RANDOM_EXACT_MAX || n.saturating_mul(2) >= c.size {
        return exact(state, rng);
    }
    let (from, to) = coll::tag_range(c.id, SET_MEMBER);
    let (Some((first, _)), Some((last, _))) =
        (state.elements(&from, &to, false, 1)?.pop(), state.elements(&from, &to, true, 1)?.pop())
    else {
        return Ok(Vec::new());
    };
    let mut picked = Vec::new();
    let mut seen = BTreeSet::new();
    // Each try lands on a member; a draw of fewer than half the set needs about 2n tries.
    for _ in 0..n.saturating_mul(8).saturating_add(64) {
        let at = between(&first, &last, rng);
        let hit = match state.elements(&at, &to, false, 1)?.pop() {
            Some(e) => e,
            None => (first.clone(), Vec::new()),
        };
        if seen.insert(hit.0.clone()) {
            picked.push(hit.0[9..].to_vec());
            if picked.len() as u64 == n {
                return Ok(picked);
            }
        }
    }
    exact(state, rng)
}

/// A random key between `lo` and `hi` (`lo` < `hi`): their common prefix, then a uniform number
/// between the next eight bytes of each.
fn between(lo: &[u8], hi: &[u8], rng: &mut SplitMix64) -> Vec<u8> {
    let common = lo.iter().zip(hi).take_while(|(a, b)| a == b).count();
    let word = |k: &[u8]| {
        let mut w = [0u8; 8];
        for (i, b) in k.iter().skip(common).take(8).enumerate() {
            w[i] = *b;
        }
        u64::from_be_bytes(w)
    };
    let (a, b) = (word(lo), word(hi));
    let r = match (b - a).checked_add(1) {
        Some(span) => a + rng.below(span),
        None => rng.next_u64(),
    };
    let mut k = lo[..common].to_vec();
    k.extend_from_slice(&r.to_be_bytes());
    k
}

/// The members of the set at `key` (none: no key), or WRONGTYPE.
fn members<S: KvRead>(
    state: &S,
    key: &[u8],
    now: u64,
) -> Result<Result<Vec<Vec<u8>>, Refused>, S::Error> {
    Ok(match read_coll(state, key, now, Kind::Set)? {
        Ok(Some((c, _))) => {
            Ok(all_elements(state, c.id, SET_MEMBER)?.into_iter().map(|(m, _)| m).collect())
        }
        Ok(None) => Ok(Vec::new()),
        Err(r) => Err(r),
    })
}

/// Combines the sets at `keys` (a missing key is empty; another type is WRONGTYPE, checked for
/// every key first, as Redis does). `limit` stops an intersection early (0: none).
fn combine<S: KvRead>(
    state: &S,
    how: Combine,
    keys: &[Key],
    now: u64,
    limit: u64,
) -> Result<Result<BTreeSet<Vec<u8>>, Refused>, S::Error> {
    let mut sets = Vec::with_capacity(keys.len());
    for k in keys {
        match read_coll(state, k, now, Kind::Set)? {
            Ok(c) => sets.push(c.map(|(c, _)| c)),
            Err(r) => return Ok(Err(r)),
        }
    }
    let mut out = BTreeSet::new();
    match how {
        Combine::Union => {
            for c in sets.iter().flatten() {
                out.extend(all_elements(state, c.id, SET_MEMBER)?.into_iter().map(|(m, _)| m));
            }
        }
        Combine::Inter => {
            if sets.iter().any(Option::is_none) {
                return Ok(Ok(out));
            }
            let mut sets: Vec<Coll> = sets.into_iter().flatten().collect();
            sets.sort_by_key(|c| c.size);
            'members: for (m, _) in all_elements(state, sets[0].id, SET_MEMBER)? {
                for c in &sets[1..] {
                    if c.id != sets[0].id && state.element(&member_key(c.id, &m))?.is_none() {
                        continue 'members;
                    }
                }
                out.insert(m);
                if limit > 0 && out.len() as u64 >= limit {
                    break;
                }
            }
        }
        Combine::Diff => {
            let Some(Some(first)) = sets.first() else { return Ok(Ok(out)) };
            'diff: for (m, _) in all_elements(state, first.id, SET_MEMBER)? {
                for c in sets[1..].iter().flatten() {
                    if c.id == first.id || state.element(&member_key(c.id, &m))?.is_some() {
                        continue 'diff;
                    }
                }
                out.insert(m);
            }
        }
    }
    Ok(Ok(out))
}

fn set_reply(members: impl IntoIterator<Item = Vec<u8>>) -> WriteReply {
    WriteReply::Set(members.into_iter().map(WriteReply::Bulk).collect())
}

pub fn apply<S: KvRead>(op: &SetOp, state: &S, ctx: &mut Ctx) -> Result<Applied, S::Error> {
    let now = ctx.time;
    Ok(match op {
        SetOp::Add { key, members } => {
            let mut s = typed!(open(state, key, ctx, Kind::Set)?);
            let mut added = BTreeSet::new();
            for m in members {
                let k = member_key(s.coll.id, m);
                if added.contains(&k) || (s.existed && state.element(&k)?.is_some()) {
                    continue;
                }
                saw(&mut s.coll, m);
                s.muts.push(Mutation::PutElement(k.clone(), Vec::new()));
                added.insert(k);
            }
            if added.is_empty() {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            }
            s.coll.resize(s.coll.size + added.len() as u64);
            s.muts.push(typed!(store_coll(key, s.coll, s.expires_at, ctx)));
            (s.muts, WriteReply::Integer(added.len() as i64))
        }
        SetOp::Rem { key, members } => {
            let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::Set)?) else {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            };
            let mut gone = BTreeSet::new();
            for m in members {
                let k = member_key(c.id, m);
                if !gone.contains(&k) && state.element(&k)?.is_some() {
                    gone.insert(k);
                }
            }
            if gone.is_empty() {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            }
            let n = gone.len() as u64;
            let mut muts: Vec<Mutation> = gone.into_iter().map(Mutation::DeleteElement).collect();
            c.resize(c.size - n);
            muts.push(typed!(store_coll(key, c, t, ctx)));
            (muts, WriteReply::Integer(n as i64))
        }
        SetOp::Pop { key, count } => {
            let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::Set)?) else {
                let missing =
                    if count.is_some() { WriteReply::Set(Vec::new()) } else { WriteReply::Null };
                return Ok((Vec::new(), missing));
            };
            if *count == Some(0) {
                return Ok((Vec::new(), WriteReply::Set(Vec::new())));
            }
            let picked = choose(state, &c, count.unwrap_or(1), ctx.rng())?;
            let mut muts = if picked.len() as u64 == c.size {
                coll::drop_elements(state, &c)?
            } else {
                picked.iter().map(|m| Mutation::DeleteElement(member_key(c.id, m))).collect()
            };
            c.resize(c.size - picked.len() as u64);
            muts.push(typed!(store_coll(key, c, t, ctx)));
            let reply = match count {
                None => picked.into_iter().next().map_or(WriteReply::Null, WriteReply::Bulk),
                Some(_) => set_reply(picked),
            };
            (muts, reply)
        }
        SetOp::Move { from, to, member } => {
            // As Redis: no source answers 0 whatever the destination holds; then both types.
            let Some((mut src, src_t)) = typed!(read_coll(state, from, now, Kind::Set)?) else {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            };
            let dst = typed!(read_coll(state, to, now, Kind::Set)?);
            let k = member_key(src.id, member);
            if state.element(&k)?.is_none() {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            }
            if from == to {
                return Ok((Vec::new(), WriteReply::Integer(1)));
            }
            let mut muts = vec![Mutation::DeleteElement(k)];
            src.resize(src.size - 1);
            muts.push(typed!(store_coll(from, src, src_t, ctx)));
            let already = match &dst {
                Some((d, _)) => state.element(&member_key(d.id, member))?.is_some(),
                None => false,
            };
            if !already {
                let mut d = typed!(open(state, to, ctx, Kind::Set)?);
                saw(&mut d.coll, member);
                d.muts.push(Mutation::PutElement(member_key(d.coll.id, member), Vec::new()));
                d.coll.resize(d.coll.size + 1);
                muts.append(&mut d.muts);
                muts.push(typed!(store_coll(to, d.coll, d.expires_at, ctx)));
            }
            (muts, WriteReply::Integer(1))
        }
        SetOp::Store { how, dest, keys } => {
            let result = typed!(combine(state, *how, keys, now, 0)?);
            let mut muts = coll::retire(state, dest)?;
            if result.is_empty() {
                if state.get(dest)?.is_some() {
                    muts.push(Mutation::Delete(dest.clone()));
                }
                return Ok((muts, WriteReply::Integer(0)));
            }
            let Some(id) = ctx.next_id() else { return Ok(error(coll::ERR_TOO_MANY_WRITES)) };
            let mut c = Coll::new(Kind::Set, id);
            let n = result.len() as u64;
            for m in result {
                saw(&mut c, &m);
                muts.push(Mutation::PutElement(member_key(id, &m), Vec::new()));
            }
            c.resize(n);
            muts.push(typed!(store_coll(dest, c, None, ctx)));
            (muts, WriteReply::Integer(n as i64))
        }
    })
}

pub fn query<S: KvRead>(q: &SetQuery, state: &S, now: u64) -> Result<WriteReply, S::Error> {
    let set = |key: &[u8]| -> Result<Result<Option<Coll>, WriteReply>, S::Error> {
        Ok(match read_coll(state, key, now, Kind::Set)? {
            Ok(c) => Ok(c.map(|(c, _)| c)),
            Err((_, r)) => Err(r),
        })
    };
    macro_rules! set {
        ($key:expr) => {
            match set($key)? {
                Ok(c) => c,
                Err(r) => return Ok(r),
            }
        };
    }
    Ok(match q {
        SetQuery::Combine { how, keys } => match combine(state, *how, keys, now, 0)? {
            Ok(all) => set_reply(all),
            Err((_, r)) => r,
        },
        SetQuery::InterCard { keys, limit } => {
            match combine(state, Combine::Inter, keys, now, *limit)? {
                Ok(all) => WriteReply::Integer(all.len() as i64),
                Err((_, r)) => r,
            }
        }
        SetQuery::IsMember { key, member } => {
            let found = match set!(key) {
                Some(c) => state.element(&member_key(c.id, member))?.is_some(),
                None => false,
            };
            WriteReply::Integer(found as i64)
        }
        SetQuery::MIsMember { key, members } => {
            let c = set!(key);
            let mut out = Vec::with_capacity(members.len());
            for m in members {
                let found = match &c {
                    Some(c) => state.element(&member_key(c.id, m))?.is_some(),
                    None => false,
                };
                out.push(WriteReply::Integer(found as i64));
            }
            WriteReply::Array(out)
        }
        SetQuery::Card(key) => WriteReply::Integer(set!(key).map_or(0, |c| c.size as i64)),
        SetQuery::Scan { key, pattern } => {
            let all = match members(state, key, now)? {
                Ok(all) => all,
                Err((_, r)) => return Ok(r),
            };
            let items = all
                .into_iter()
                .filter(|m| pattern.as_ref().is_none_or(|p| crate::glob::matches(p, m)))
                .map(WriteReply::Bulk)
                .collect();
            WriteReply::Array(vec![WriteReply::Bulk(b"0".to_vec()), WriteReply::Array(items)])
        }
    })
}
