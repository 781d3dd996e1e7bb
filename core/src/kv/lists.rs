//! Lists, element by element: element `i` of a list is stored at sequence number `head + i`
//! (`coll::list_key`), so the elements are dense and a push or pop at either end, LINDEX and
//! LSET cost one element each; LINSERT and LREM move the elements after the change (LINSERT
//! the shorter side), as Redis's are O(n). Redis 7.0's replies and errors (`t_list.c`).

use super::coll::{self, list_key, open, read_coll, store_coll, Ctx, Refused};
use super::record::{Coll, Kind};
use super::{error, parse_i64, Key, KvRead, Mutation, WriteReply, ERR_NOT_INTEGER};
use serde::{Deserialize, Serialize};

/// A list write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListOp {
    /// LPUSH, RPUSH; LPUSHX, RPUSHX with `only_existing`.
    Push {
        key: Key,
        left: bool,
        elements: Vec<Vec<u8>>,
        only_existing: bool,
    },
    /// LPOP, RPOP: `count` None answers one element (or nil), Some an array (or a null array).
    Pop {
        key: Key,
        left: bool,
        count: Option<u64>,
    },
    /// LMPOP: the first of `keys` that holds a list gives up to `count` elements.
    MPop {
        keys: Vec<Key>,
        left: bool,
        count: u64,
    },
    /// BLPOP, BRPOP: the first of `keys` that holds a list gives one element, answered as
    /// `[key, element]` (a null array when none does: the node then holds the client).
    PopFirst {
        keys: Vec<Key>,
        left: bool,
    },
    /// LSET, the index as the client wrote it (Redis reads the key before the index).
    Set {
        key: Key,
        index: Vec<u8>,
        element: Vec<u8>,
    },
    /// LREM: `count` > 0 from the head, < 0 from the tail, 0 all.
    Rem {
        key: Key,
        count: i64,
        element: Vec<u8>,
    },
    Trim {
        key: Key,
        start: i64,
        stop: i64,
    },
    Insert {
        key: Key,
        before: bool,
        pivot: Vec<u8>,
        element: Vec<u8>,
    },
    /// LMOVE, RPOPLPUSH.
    Move {
        from: Key,
        to: Key,
        from_left: bool,
        to_left: bool,
    },
}

/// A list read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListQuery {
    Len(Key),
    /// LINDEX, the index as the client wrote it (Redis reads the key before the index).
    Index {
        key: Key,
        index: Vec<u8>,
    },
    Range {
        key: Key,
        start: i64,
        stop: i64,
    },
    /// LPOS: `rank` ≠ 0 (negative: from the tail), `count` None answers one position,
    /// `maxlen` 0 compares every element.
    Pos {
        key: Key,
        element: Vec<u8>,
        rank: i64,
        count: Option<u64>,
        maxlen: u64,
    },
}

impl ListOp {
    /// Bytes of data it carries, for size limits.
    pub fn size_bytes(&self) -> usize {
        let all = |v: &[Vec<u8>]| v.iter().map(Vec::len).sum::<usize>();
        16 + match self {
            ListOp::Push { key, elements, .. } => key.len() + all(elements),
            ListOp::Pop { key, .. } | ListOp::Trim { key, .. } => key.len(),
            ListOp::MPop { keys, .. } | ListOp::PopFirst { keys, .. } => all(keys),
            ListOp::Set { key, index, element } => key.len() + index.len() + element.len(),
            ListOp::Rem { key, element, .. } => key.len() + element.len(),
            ListOp::Insert { key, pivot, element, .. } => key.len() + pivot.len() + element.len(),
            ListOp::Move { from, to, .. } => from.len() + to.len(),
        }
    }

    /// The keys a blocked pop waits on (a write to one may let it pop).
    pub fn waits_on(&self) -> Vec<&[u8]> {
        match self {
            ListOp::MPop { keys, .. } | ListOp::PopFirst { keys, .. } => {
                keys.iter().map(Vec::as_slice).collect()
            }
            ListOp::Move { from, .. } => vec![from],
            _ => Vec::new(),
        }
    }
}

impl ListQuery {
    pub fn size_bytes(&self) -> usize {
        16 + match self {
            ListQuery::Len(key) | ListQuery::Range { key, .. } => key.len(),
            ListQuery::Index { key, index } => key.len() + index.len(),
            ListQuery::Pos { key, element, .. } => key.len() + element.len(),
        }
    }
}

type Applied = (Vec<Mutation>, WriteReply);

pub const ERR_OUT_OF_RANGE: &str = "ERR index out of range";
pub const ERR_RANK_ZERO: &str = "ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list";

/// Elements `[from, to)` of list `c` (positions from its head), first to last or, with `rev`,
/// last to first.
pub(super) fn read_range<S: KvRead>(
    state: &S,
    c: &Coll,
    from: u64,
    to: u64,
    rev: bool,
) -> Result<Vec<Vec<u8>>, S::Error> {
    if from >= to {
        return Ok(Vec::new());
    }
    let lo = list_key(c.id, c.head.wrapping_add(from));
    let hi = list_key(c.id, c.head.wrapping_add(to));
    let found = state.elements(&lo, &hi, rev, (to - from) as usize)?;
    Ok(found.into_iter().map(|(_, v)| v).collect())
}

/// The mutations deleting elements `[from, to)` of list `c` (points when few, else one range).
fn delete_range(c: &Coll, from: u64, to: u64) -> Vec<Mutation> {
    if from >= to {
        return Vec::new();
    }
    if to - from <= coll::DROP_POINTS_MAX {
        (from..to)
            .map(|i| Mutation::DeleteElement(list_key(c.id, c.head.wrapping_add(i))))
            .collect()
    } else {
        vec![Mutation::DeleteElements {
            from: list_key(c.id, c.head.wrapping_add(from)),
            to: list_key(c.id, c.head.wrapping_add(to)),
        }]
    }
}

/// Pops up to `n` elements from one end of `c` (changing it), in the order they come off.
fn pop_n<S: KvRead>(
    state: &S,
    c: &mut Coll,
    left: bool,
    n: u64,
    muts: &mut Vec<Mutation>,
) -> Result<Vec<Vec<u8>>, S::Error> {
    let n = n.min(c.size);
    let (from, to) = if left { (0, n) } else { (c.size - n, c.size) };
    let items = read_range(state, c, from, to, !left)?;
    muts.extend(delete_range(c, from, to));
    if left {
        c.head = c.head.wrapping_add(n);
    }
    c.resize(c.size - n);
    Ok(items)
}

/// Pushes `e` onto one end of `c` (changing it).
pub(super) fn push(c: &mut Coll, left: bool, e: &[u8], muts: &mut Vec<Mutation>) {
    let seq = if left {
        c.head = c.head.wrapping_sub(1);
        c.head
    } else {
        c.head.wrapping_add(c.size)
    };
    c.saw(e.len());
    c.resize(c.size + 1);
    muts.push(Mutation::PutElement(list_key(c.id, seq), e.to_vec()));
}

/// Redis's index into a list of `len`: negative from the end; None out of range.
fn position(index: i64, len: u64) -> Option<u64> {
    let i = if index < 0 { index.checked_add(len as i64)? } else { index };
    (i >= 0 && (i as u64) < len).then_some(i as u64)
}

/// LRANGE's and LTRIM's range `[from, to)` of a list of `len` (Redis's `addListRangeReply`).
fn span(start: i64, stop: i64, len: u64) -> (u64, u64) {
    let len_i = len as i64;
    let mut start = if start < 0 { start.saturating_add(len_i) } else { start };
    let mut stop = if stop < 0 { stop.saturating_add(len_i) } else { stop };
    if start < 0 {
        start = 0;
    }
    if start > stop || start >= len_i {
        return (0, 0);
    }
    if stop >= len_i {
        stop = len_i - 1;
    }
    (start as u64, stop as u64 + 1)
}

fn items(v: Vec<Vec<u8>>) -> WriteReply {
    WriteReply::Array(v.into_iter().map(WriteReply::Bulk).collect())
}

/// Writes `c` back (its key deleted when empty).
fn finish(key: &[u8], c: Coll, t: Option<u64>, ctx: &mut Ctx) -> Result<Mutation, Refused> {
    store_coll(key, c, t, ctx)
}

pub fn apply<S: KvRead>(op: &ListOp, state: &S, ctx: &mut Ctx) -> Result<Applied, S::Error> {
    let now = ctx.time;
    Ok(match op {
        ListOp::Push { key, left, elements, only_existing } => {
            if *only_existing && typed!(read_coll(state, key, now, Kind::List)?).is_none() {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            }
            let mut l = typed!(open(state, key, ctx, Kind::List)?);
            for e in elements {
                push(&mut l.coll, *left, e, &mut l.muts);
            }
            let len = l.coll.size as i64;
            l.muts.push(typed!(finish(key, l.coll, l.expires_at, ctx)));
            (l.muts, WriteReply::Integer(len))
        }
        ListOp::Pop { key, left, count } => {
            let missing = if count.is_some() { WriteReply::NullArray } else { WriteReply::Null };
            let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::List)?) else {
                return Ok((Vec::new(), missing));
            };
            if *count == Some(0) {
                return Ok((Vec::new(), WriteReply::Array(Vec::new())));
            }
            let mut muts = Vec::new();
            let popped = pop_n(state, &mut c, *left, count.unwrap_or(1), &mut muts)?;
            muts.push(typed!(finish(key, c, t, ctx)));
            let reply = match count {
                None => popped.into_iter().next().map_or(WriteReply::Null, WriteReply::Bulk),
                Some(_) => items(popped),
            };
            (muts, reply)
        }
        ListOp::MPop { keys, left, count } => {
            for key in keys {
                let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::List)?) else {
                    continue;
                };
                let mut muts = Vec::new();
                let popped = pop_n(state, &mut c, *left, *count, &mut muts)?;
                muts.push(typed!(finish(key, c, t, ctx)));
                return Ok((
                    muts,
                    WriteReply::Array(vec![WriteReply::Bulk(key.clone()), items(popped)]),
                ));
            }
            (Vec::new(), WriteReply::NullArray)
        }
        ListOp::PopFirst { keys, left } => {
            for key in keys {
                let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::List)?) else {
                    continue;
                };
                let mut muts = Vec::new();
                let e = pop_n(state, &mut c, *left, 1, &mut muts)?.pop().expect("not empty");
                muts.push(typed!(finish(key, c, t, ctx)));
                let reply = vec![WriteReply::Bulk(key.clone()), WriteReply::Bulk(e)];
                return Ok((muts, WriteReply::Array(reply)));
            }
            (Vec::new(), WriteReply::NullArray)
        }
        ListOp::Set { key, index, element } => {
            let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::List)?) else {
                return Ok(error(super::ERR_NO_SUCH_KEY));
            };
            let Some(index) = parse_i64(index) else { return Ok(error(ERR_NOT_INTEGER)) };
            let Some(i) = position(index, c.size) else { return Ok(error(ERR_OUT_OF_RANGE)) };
            c.saw(element.len());
            let mut muts =
                vec![Mutation::PutElement(list_key(c.id, c.head.wrapping_add(i)), element.clone())];
            muts.push(typed!(finish(key, c, t, ctx)));
            (muts, WriteReply::Ok)
        }
        ListOp::Rem { key, count, element } => {
            let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::List)?) else {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            };
            let all = read_range(state, &c, 0, c.size, false)?;
            let limit = if *count == 0 { u64::MAX } else { count.unsigned_abs() };
            let mut gone = vec![false; all.len()];
            let mut removed = 0;
            let order: Box<dyn Iterator<Item = usize>> =
                if *count < 0 { Box::new((0..all.len()).rev()) } else { Box::new(0..all.len()) };
            for i in order {
                if removed == limit {
                    break;
                }
                if all[i] == *element {
                    gone[i] = true;
                    removed += 1;
                }
            }
            if removed == 0 {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            }
            let first = gone.iter().position(|g| *g).expect("removed one") as u64;
            let kept: Vec<Vec<u8>> = all
                .into_iter()
                .zip(gone)
                .skip(first as usize)
                .filter(|(_, g)| !g)
                .map(|(e, _)| e)
                .collect();
            let mut muts = Vec::new();
            rewrite_tail(&mut c, first, kept, &mut muts);
            muts.push(typed!(finish(key, c, t, ctx)));
            (muts, WriteReply::Integer(removed as i64))
        }
        ListOp::Trim { key, start, stop } => {
            let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::List)?) else {
                return Ok((Vec::new(), WriteReply::Ok));
            };
            let (from, to) = span(*start, *stop, c.size);
            let mut muts = delete_range(&c, 0, from);
            muts.extend(delete_range(&c, to.max(from), c.size));
            c.head = c.head.wrapping_add(from);
            c.resize(to.saturating_sub(from));
            muts.push(typed!(finish(key, c, t, ctx)));
            (muts, WriteReply::Ok)
        }
        ListOp::Insert { key, before, pivot, element } => {
            let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::List)?) else {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            };
            let all = read_range(state, &c, 0, c.size, false)?;
            let Some(p) = all.iter().position(|e| e == pivot) else {
                return Ok((Vec::new(), WriteReply::Integer(-1)));
            };
            let at = if *before { p } else { p + 1 } as u64;
            let mut muts = Vec::new();
            c.saw(element.len());
            if at < c.size / 2 {
                // Move the elements before it one place towards the head.
                c.head = c.head.wrapping_sub(1);
                for (i, e) in all.iter().take(at as usize).enumerate() {
                    muts.push(Mutation::PutElement(
                        list_key(c.id, c.head.wrapping_add(i as u64)),
                        e.clone(),
                    ));
                }
            } else {
                for (i, e) in all.iter().enumerate().skip(at as usize) {
                    muts.push(Mutation::PutElement(
                        list_key(c.id, c.head.wrapping_add(i as u64 + 1)),
                        e.clone(),
                    ));
                }
            }
            muts.push(Mutation::PutElement(
                list_key(c.id, c.head.wrapping_add(at)),
                element.clone(),
            ));
            c.resize(c.size + 1);
            let len = c.size as i64;
            muts.push(typed!(finish(key, c, t, ctx)));
            (muts, WriteReply::Integer(len))
        }
        ListOp::Move { from, to, from_left, to_left } => {
            let Some((mut src, src_t)) = typed!(read_coll(state, from, now, Kind::List)?) else {
                return Ok((Vec::new(), WriteReply::Null));
            };
            let mut muts = Vec::new();
            if from == to {
                let e = pop_n(state, &mut src, *from_left, 1, &mut muts)?.pop().expect("not empty");
                push(&mut src, *to_left, &e, &mut muts);
                muts.push(typed!(finish(from, src, src_t, ctx)));
                return Ok((muts, WriteReply::Bulk(e)));
            }
            // As Redis: the destination's type is checked before anything is popped.
            typed!(read_coll(state, to, now, Kind::List)?);
            let mut dst = typed!(open(state, to, ctx, Kind::List)?);
            let e = pop_n(state, &mut src, *from_left, 1, &mut muts)?.pop().expect("not empty");
            muts.push(typed!(finish(from, src, src_t, ctx)));
            muts.append(&mut dst.muts);
            push(&mut dst.coll, *to_left, &e, &mut muts);
            muts.push(typed!(finish(to, dst.coll, dst.expires_at, ctx)));
            (muts, WriteReply::Bulk(e))
        }
    })
}

/// Replaces the elements of `c` from position `from` on with `tail` (LREM).
fn rewrite_tail(c: &mut Coll, from: u64, tail: Vec<Vec<u8>>, muts: &mut Vec<Mutation>) {
    let new_len = from + tail.len() as u64;
    for (i, e) in tail.into_iter().enumerate() {
        muts.push(Mutation::PutElement(list_key(c.id, c.head.wrapping_add(from + i as u64)), e));
    }
    muts.extend(delete_range(c, new_len, c.size));
    c.resize(new_len);
}

pub fn query<S: KvRead>(q: &ListQuery, state: &S, now: u64) -> Result<WriteReply, S::Error> {
    macro_rules! list {
        ($key:expr, $missing:expr) => {
            match read_coll(state, $key, now, Kind::List)? {
                Ok(Some((c, _))) => c,
                Ok(None) => return Ok($missing),
                Err((_, reply)) => return Ok(reply),
            }
        };
    }
    Ok(match q {
        ListQuery::Len(key) => WriteReply::Integer(list!(key, WriteReply::Integer(0)).size as i64),
        ListQuery::Index { key, index } => {
            let c = list!(key, WriteReply::Null);
            let Some(index) = parse_i64(index) else { return Ok(error(ERR_NOT_INTEGER).1) };
            match position(index, c.size) {
                Some(i) => state
                    .element(&list_key(c.id, c.head.wrapping_add(i)))?
                    .map_or(WriteReply::Null, WriteReply::Bulk),
                None => WriteReply::Null,
            }
        }
        ListQuery::Range { key, start, stop } => {
            let c = list!(key, WriteReply::Array(Vec::new()));
            let (from, to) = span(*start, *stop, c.size);
            items(read_range(state, &c, from, to, false)?)
        }
        ListQuery::Pos { key, element, rank, count, maxlen } => {
            let c = list!(
                key,
                if count.is_some() { WriteReply::Array(Vec::new()) } else { WriteReply::Null }
            );
            let from_tail = *rank < 0;
            let skip = rank.unsigned_abs() - 1;
            let scan = if *maxlen == 0 { c.size } else { (*maxlen).min(c.size) };
            let (lo, hi) = if from_tail { (c.size - scan, c.size) } else { (0, scan) };
            let mut found = Vec::new();
            let mut matches = 0u64;
            let want = match count {
                None | Some(0) => u64::MAX,
                Some(n) => *n,
            };
            // In pages: a match near the end it starts from is found without reading the rest.
            const PAGE: u64 = 1024;
            let mut done = 0;
            'scan: while done < hi - lo {
                let n = PAGE.min(hi - lo - done);
                let (a, b) =
                    if from_tail { (hi - done - n, hi - done) } else { (lo + done, lo + done + n) };
                let page = read_range(state, &c, a, b, from_tail)?;
                for (j, e) in page.iter().enumerate() {
                    if e == element {
                        matches += 1;
                        if matches > skip {
                            let at = if from_tail { b - 1 - j as u64 } else { a + j as u64 };
                            found.push(at);
                            if count.is_none() || found.len() as u64 >= want {
                                break 'scan;
                            }
                        }
                    }
                }
                done += n;
            }
            match count {
                None => found.first().map_or(WriteReply::Null, |i| WriteReply::Integer(*i as i64)),
                Some(_) => WriteReply::Array(
                    found.into_iter().map(|i| WriteReply::Integer(i as i64)).collect(),
                ),
            }
        }
    })
}
