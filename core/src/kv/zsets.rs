//! Sorted sets, member by member: each member has two records, `m ‖ member → score` (ZSCORE,
//! and the member order BYLEX walks) and `o ‖ ord(score) ‖ member` (the score order ranges
//! walk), where `ord` makes byte order numeric order. ZADD of one member costs a few records
//! however large the set; a score range is one ordered walk; ZRANK and a rank range starting
//! far in are O(rank), as in Kvrocks. Redis 7.0's replies (`t_zset.c`): scores as `%.17g`.

use super::coll::{
    self, element_key, open, read_coll, store_coll, tag_range, Ctx, SET_MEMBER, ZSET_MEMBER,
    ZSET_ORDER,
};
use super::record::{Coll, Data, Kind};
use super::{error, Key, KvRead, Mutation, WriteReply};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A score as it travels in a command (its bits: commands are `Eq`).
pub type Score = u64;

/// ZADD's condition on existence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exist {
    Any,
    /// NX: only new members.
    New,
    /// XX: only existing members.
    Old,
}

/// ZADD's GT / LT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cmp {
    Any,
    Greater,
    Less,
}

/// One end of a score range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScoreBound {
    pub score: Score,
    pub exclusive: bool,
}

/// One end of a member (lex) range: `-`, `+`, `[m`, `(m`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LexBound {
    Min,
    Max,
    In(Vec<u8>),
    Ex(Vec<u8>),
}

/// Which members a range takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Range {
    /// By rank, Redis's index rules (negative from the end).
    Rank(i64, i64),
    Score(ScoreBound, ScoreBound),
    Lex(LexBound, LexBound),
}

/// ZRANGE's whole request: the range (min first, also for REV), direction and LIMIT.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeSpec {
    pub range: Range,
    pub rev: bool,
    /// LIMIT offset count (BYSCORE and BYLEX only).
    pub limit: Option<(i64, i64)>,
}

/// How ZUNIONSTORE, ZINTERSTORE and ZDIFFSTORE combine (`Combine` of sets), with their
/// options as the client wrote them: Redis checks the keys' types before it parses them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Combination {
    pub how: super::Combine,
    pub keys: Vec<Key>,
    pub options: Vec<Vec<u8>>,
}

/// A sorted set write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZOp {
    /// ZADD, and ZINCRBY (`incr`, one pair).
    Add {
        key: Key,
        pairs: Vec<(Score, Vec<u8>)>,
        exist: Exist,
        cmp: Cmp,
        ch: bool,
        incr: bool,
    },
    Rem {
        key: Key,
        members: Vec<Vec<u8>>,
    },
    /// ZPOPMIN, ZPOPMAX: `count` None pops one.
    Pop {
        key: Key,
        max: bool,
        count: Option<u64>,
    },
    /// ZMPOP: the first of `keys` that holds a sorted set.
    MPop {
        keys: Vec<Key>,
        max: bool,
        count: u64,
    },
    /// BZPOPMIN, BZPOPMAX: the first of `keys` that holds a sorted set gives one member,
    /// answered `[key, member, score]` (a null array when none does: the node holds the client).
    PopFirst {
        keys: Vec<Key>,
        max: bool,
    },
    /// ZREMRANGEBYRANK, ZREMRANGEBYSCORE, ZREMRANGEBYLEX.
    RemRange {
        key: Key,
        range: Range,
    },
    /// ZRANGESTORE.
    RangeStore {
        dest: Key,
        src: Key,
        spec: RangeSpec,
    },
    /// ZUNIONSTORE, ZINTERSTORE, ZDIFFSTORE.
    Store {
        dest: Key,
        combination: Combination,
    },
}

/// A sorted set read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ZQuery {
    Score {
        key: Key,
        member: Vec<u8>,
    },
    MScore {
        key: Key,
        members: Vec<Vec<u8>>,
    },
    Card(Key),
    /// ZCOUNT (a score range), ZLEXCOUNT (a lex range).
    Count {
        key: Key,
        range: Range,
    },
    Range {
        key: Key,
        spec: RangeSpec,
        with_scores: bool,
    },
    Rank {
        key: Key,
        member: Vec<u8>,
        rev: bool,
    },
    /// ZUNION, ZINTER, ZDIFF (`with_scores` is among the options).
    Combine(Combination),
    /// ZINTERCARD: `limit` 0 counts every member.
    InterCard {
        keys: Vec<Key>,
        limit: u64,
    },
    /// ZSCAN: every member and score (matching `pattern`) at once, cursor 0.
    Scan {
        key: Key,
        pattern: Option<Vec<u8>>,
    },
}

fn bytes_of(v: &[Vec<u8>]) -> usize {
    v.iter().map(Vec::len).sum()
}

impl ZOp {
    /// The keys a blocked pop waits on.
    pub fn waits_on(&self) -> Vec<&[u8]> {
        match self {
            ZOp::MPop { keys, .. } | ZOp::PopFirst { keys, .. } => {
                keys.iter().map(Vec::as_slice).collect()
            }
            _ => Vec::new(),
        }
    }

    pub fn size_bytes(&self) -> usize {
        32 + match self {
            ZOp::Add { key, pairs, .. } => {
                key.len() + pairs.iter().map(|(_, m)| m.len() + 8).sum::<usize>()
            }
            ZOp::Rem { key, members } => key.len() + bytes_of(members),
            ZOp::Pop { key, .. } | ZOp::RemRange { key, .. } => key.len(),
            ZOp::MPop { keys, .. } | ZOp::PopFirst { keys, .. } => bytes_of(keys),
            ZOp::RangeStore { dest, src, .. } => dest.len() + src.len(),
            ZOp::Store { dest, combination } => {
                dest.len() + bytes_of(&combination.keys) + bytes_of(&combination.options)
            }
        }
    }
}

impl ZQuery {
    pub fn size_bytes(&self) -> usize {
        32 + match self {
            ZQuery::Score { key, member } | ZQuery::Rank { key, member, .. } => {
                key.len() + member.len()
            }
            ZQuery::MScore { key, members } => key.len() + bytes_of(members),
            ZQuery::Card(key) | ZQuery::Count { key, .. } | ZQuery::Range { key, .. } => key.len(),
            ZQuery::Combine(c) => bytes_of(&c.keys) + bytes_of(&c.options),
            ZQuery::InterCard { keys, .. } => bytes_of(keys),
            ZQuery::Scan { key, pattern } => key.len() + pattern.as_ref().map_or(0, Vec::len),
        }
    }
}

pub const ERR_NAN: &str = "ERR resulting score is not a number (NaN)";

type Applied = (Vec<Mutation>, WriteReply);

/// A score's order key: byte order is numeric order (-0 as 0; NaN is never stored).
pub fn ord(score: f64) -> u64 {
    let b = if score == 0.0 { 0 } else { score.to_bits() };
    if b >> 63 == 1 {
        !b
    } else {
        b | 1 << 63
    }
}

/// The score of an order key.
pub fn unord(o: u64) -> f64 {
    f64::from_bits(if o >> 63 == 1 { o & !(1 << 63) } else { !o })
}

fn member_key(id: u64, m: &[u8]) -> Vec<u8> {
    element_key(id, ZSET_MEMBER, m)
}

fn order_key(id: u64, score: f64, m: &[u8]) -> Vec<u8> {
    let mut rest = ord(score).to_be_bytes().to_vec();
    rest.extend_from_slice(m);
    element_key(id, ZSET_ORDER, &rest)
}

/// The order key of `(score)` with no member: where that score's members begin.
fn order_at(id: u64, o: u64) -> Vec<u8> {
    element_key(id, ZSET_ORDER, &o.to_be_bytes())
}

fn score_of(v: &[u8]) -> f64 {
    f64::from_bits(u64::from_be_bytes(v.get(..8).and_then(|b| b.try_into().ok()).unwrap_or([0; 8])))
}

/// (member, score) of an order record's key.
fn decode_order(k: &[u8]) -> (Vec<u8>, f64) {
    let o = u64::from_be_bytes(k[9..17].try_into().expect("an order key"));
    (k[17..].to_vec(), unord(o))
}

/// A score as Redis 7.0 answers it (`addReplyDouble`: `%.17g`, `inf`, `-inf`).
pub fn format_score(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "inf" } else { "-inf" }.into();
    }
    if v == 0.0 {
        return if v.is_sign_negative() { "-0" } else { "0" }.into();
    }
    let sci = format!("{v:.16e}");
    let (mantissa, exp) = sci.split_once('e').expect("scientific");
    let exp: i32 = exp.parse().expect("an exponent");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::new();
    if v < 0.0 {
        out.push('-');
    }
    if !(-4..17).contains(&exp) {
        let d = digits.trim_end_matches('0');
        out.push_str(&d[..1]);
        if d.len() > 1 {
            out.push('.');
            out.push_str(&d[1..]);
        }
        out.push_str(&format!("e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs()));
    } else if exp >= 0 {
        let (int, frac) = digits.split_at(exp as usize + 1);
        out.push_str(int);
        let frac = frac.trim_end_matches('0');
        if !frac.is_empty() {
            out.push('.');
            out.push_str(frac);
        }
    } else {
        out.push_str("0.");
        out.push_str(&"0".repeat((-exp - 1) as usize));
        out.push_str(digits.trim_end_matches('0'));
    }
    out
}

/// A score in a reply (a double in RESP3, its `%.17g` text in RESP2).
fn score_reply(v: f64) -> WriteReply {
    WriteReply::Double(v.to_bits())
}

/// A score parsed as Redis's `getDoubleFromObject` does (ZADD, ZINCRBY, WEIGHTS): no spaces,
/// not empty, no overflow or underflow, not NaN.
pub fn parse_score(b: &[u8]) -> Option<f64> {
    let text = std::str::from_utf8(b).ok()?;
    if text.is_empty() || text.starts_with(|c: char| c.is_ascii_whitespace()) {
        return None;
    }
    let v: f64 = text.parse().ok()?;
    let lower = text.to_ascii_lowercase();
    let spelled_inf = lower.trim_start_matches(['+', '-']).starts_with("inf");
    if v.is_nan() || (v.is_infinite() && !spelled_inf) {
        return None;
    }
    let mantissa = lower.split('e').next().unwrap_or("");
    if v == 0.0 && mantissa.bytes().any(|c| (b'1'..=b'9').contains(&c)) {
        return None;
    }
    Some(v)
}

/// A range end parsed as Redis's `zslParseRange` does (`strtod`: leading spaces and an empty
/// string (0) accepted, overflow to infinity; NaN refused), after an optional `(`.
pub fn parse_score_bound(b: &[u8]) -> Option<ScoreBound> {
    let (exclusive, rest) = match b.split_first() {
        Some((b'(', rest)) => (true, rest),
        _ => (false, b),
    };
    let text = std::str::from_utf8(rest).ok()?.trim_start();
    let v: f64 = if text.is_empty() { 0.0 } else { text.parse().ok()? };
    (!v.is_nan()).then_some(ScoreBound { score: v.to_bits(), exclusive })
}

/// A lex range end: `-`, `+`, `[member` or `(member`.
pub fn parse_lex_bound(b: &[u8]) -> Option<LexBound> {
    match b.split_first()? {
        (b'-', []) => Some(LexBound::Min),
        (b'+', []) => Some(LexBound::Max),
        (b'[', m) => Some(LexBound::In(m.to_vec())),
        (b'(', m) => Some(LexBound::Ex(m.to_vec())),
        _ => None,
    }
}

/// The score of `member` in `c`.
fn score<S: KvRead>(state: &S, c: &Coll, member: &[u8]) -> Result<Option<f64>, S::Error> {
    Ok(state.element(&member_key(c.id, member))?.map(|v| score_of(&v)))
}

/// Writes `member` at `new` (replacing its record at `old`).
fn put_member(c: &Coll, member: &[u8], old: Option<f64>, new: f64, muts: &mut Vec<Mutation>) {
    if let Some(old) = old {
        muts.push(Mutation::DeleteElement(order_key(c.id, old, member)));
    }
    muts.push(Mutation::PutElement(member_key(c.id, member), new.to_bits().to_be_bytes().to_vec()));
    muts.push(Mutation::PutElement(order_key(c.id, new, member), Vec::new()));
}

fn delete_member(c: &Coll, member: &[u8], score: f64, muts: &mut Vec<Mutation>) {
    muts.push(Mutation::DeleteElement(member_key(c.id, member)));
    muts.push(Mutation::DeleteElement(order_key(c.id, score, member)));
}

/// Up to `limit` (member, score) pairs of the element records in `[from, to)`, after skipping
/// `skip`, in key order or backwards; `decode` reads one record (order records are in score
/// order, member records in member order).
fn walk<S: KvRead>(
    state: &S,
    from: &[u8],
    to: &[u8],
    rev: bool,
    mut skip: u64,
    limit: u64,
    decode: impl Fn(&[u8], &[u8]) -> (Vec<u8>, f64),
) -> Result<Vec<(Vec<u8>, f64)>, S::Error> {
    const PAGE: u64 = 1024;
    let (mut lo, mut hi) = (from.to_vec(), to.to_vec());
    let mut out = Vec::new();
    while (out.len() as u64) < limit {
        let want = if skip > 0 { PAGE } else { PAGE.min(limit - out.len() as u64) };
        let page = state.elements(&lo, &hi, rev, want as usize)?;
        let full = page.len() as u64 == want;
        if let Some((last, _)) = page.last() {
            if rev {
                hi = last.clone();
            } else {
                lo = last.clone();
                lo.push(0);
            }
        }
        for (k, v) in page {
            if skip > 0 {
                skip -= 1;
            } else if (out.len() as u64) < limit {
                out.push(decode(&k, &v));
            }
        }
        if !full {
            break;
        }
    }
    Ok(out)
}

/// `walk` over order records.
fn walk_order<S: KvRead>(
    state: &S,
    from: &[u8],
    to: &[u8],
    rev: bool,
    skip: u64,
    limit: u64,
) -> Result<Vec<(Vec<u8>, f64)>, S::Error> {
    walk(state, from, to, rev, skip, limit, |k, _| decode_order(k))
}

/// `walk` over member records.
fn walk_members<S: KvRead>(
    state: &S,
    from: &[u8],
    to: &[u8],
    rev: bool,
    skip: u64,
    limit: u64,
) -> Result<Vec<(Vec<u8>, f64)>, S::Error> {
    walk(state, from, to, rev, skip, limit, |k, v| (k[9..].to_vec(), score_of(v)))
}

/// The order keys `[from, to)` of a score range of `c` (empty when it holds nothing).
fn score_span(c: &Coll, min: ScoreBound, max: ScoreBound) -> (Vec<u8>, Vec<u8>) {
    let (lo_o, hi_o) = (ord(f64::from_bits(min.score)), ord(f64::from_bits(max.score)));
    let (_, end) = tag_range(c.id, ZSET_ORDER);
    let from = if min.exclusive {
        match lo_o.checked_add(1) {
            Some(o) => order_at(c.id, o),
            None => end.clone(),
        }
    } else {
        order_at(c.id, lo_o)
    };
    let to = if max.exclusive {
        order_at(c.id, hi_o)
    } else {
        match hi_o.checked_add(1) {
            Some(o) => order_at(c.id, o),
            None => end,
        }
    };
    (from, to)
}

/// The member keys `[from, to)` of a lex range of `c`.
fn lex_span(c: &Coll, min: &LexBound, max: &LexBound) -> (Vec<u8>, Vec<u8>) {
    let (start, end) = tag_range(c.id, ZSET_MEMBER);
    let after = |m: &[u8]| {
        let mut k = member_key(c.id, m);
        k.push(0);
        k
    };
    let from = match min {
        LexBound::Min => start.clone(),
        LexBound::Max => end.clone(),
        LexBound::In(m) => member_key(c.id, m),
        LexBound::Ex(m) => after(m),
    };
    let to = match max {
        LexBound::Min => start,
        LexBound::Max => end,
        LexBound::In(m) => after(m),
        LexBound::Ex(m) => member_key(c.id, m),
    };
    (from, to)
}

/// Redis's rank range `[from, to)` of a set of `len`.
fn rank_span(start: i64, stop: i64, len: u64) -> (u64, u64) {
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

/// The members a range takes, in the asked order, as (member, score).
fn select<S: KvRead>(
    state: &S,
    c: &Coll,
    spec: &RangeSpec,
) -> Result<Vec<(Vec<u8>, f64)>, S::Error> {
    let (offset, count) = match spec.limit {
        Some((offset, _)) if offset < 0 => return Ok(Vec::new()),
        Some((offset, count)) => (offset as u64, if count < 0 { u64::MAX } else { count as u64 }),
        None => (0, u64::MAX),
    };
    match &spec.range {
        Range::Rank(start, stop) => {
            let (from, to) = rank_span(*start, *stop, c.size);
            if from >= to {
                return Ok(Vec::new());
            }
            let (lo, hi) = tag_range(c.id, ZSET_ORDER);
            walk_order(state, &lo, &hi, spec.rev, from, to - from)
        }
        Range::Score(min, max) => {
            let (from, to) = score_span(c, *min, *max);
            if from >= to {
                return Ok(Vec::new());
            }
            walk_order(state, &from, &to, spec.rev, offset, count)
        }
        Range::Lex(min, max) => {
            let (from, to) = lex_span(c, min, max);
            if from >= to {
                return Ok(Vec::new());
            }
            walk_members(state, &from, &to, spec.rev, offset, count)
        }
    }
}

fn pairs_reply(items: Vec<(Vec<u8>, f64)>, with_scores: bool) -> WriteReply {
    if with_scores {
        WriteReply::Pairs(
            items.into_iter().map(|(m, s)| (WriteReply::Bulk(m), score_reply(s))).collect(),
        )
    } else {
        WriteReply::Array(items.into_iter().map(|(m, _)| WriteReply::Bulk(m)).collect())
    }
}

/// Writes a new sorted set at `dest` holding `members` (deleting `dest` when empty); the reply
/// is its size.
fn store_result<S: KvRead>(
    state: &S,
    dest: &[u8],
    members: BTreeMap<Vec<u8>, f64>,
    ctx: &mut Ctx,
) -> Result<Applied, S::Error> {
    let mut muts = coll::retire(state, dest)?;
    if members.is_empty() {
        if state.get(dest)?.is_some() {
            muts.push(Mutation::Delete(dest.to_vec()));
        }
        return Ok((muts, WriteReply::Integer(0)));
    }
    let Some(id) = ctx.next_id() else { return Ok(error(coll::ERR_TOO_MANY_WRITES)) };
    let mut c = Coll::new(Kind::ZSet, id);
    let n = members.len() as u64;
    for (m, s) in &members {
        c.saw(m.len());
        put_member(&c, m, None, *s, &mut muts);
    }
    c.resize(n);
    muts.push(typed!(store_coll(dest, c, None, ctx)));
    Ok((muts, WriteReply::Integer(n as i64)))
}

/// A source of ZUNIONSTORE and its kin: a sorted set, or a set (every score 1).
fn source_members<S: KvRead>(state: &S, c: &Coll) -> Result<Vec<(Vec<u8>, f64)>, S::Error> {
    Ok(match c.kind {
        Kind::Set => coll::all_elements(state, c.id, SET_MEMBER)?
            .into_iter()
            .map(|(m, _)| (m, 1.0))
            .collect(),
        _ => coll::all_elements(state, c.id, ZSET_MEMBER)?
            .into_iter()
            .map(|(m, v)| (m, score_of(&v)))
            .collect(),
    })
}

fn contains<S: KvRead>(state: &S, c: &Coll, m: &[u8]) -> Result<Option<f64>, S::Error> {
    Ok(match c.kind {
        Kind::Set => state.element(&element_key(c.id, SET_MEMBER, m))?.map(|_| 1.0),
        _ => score(state, c, m)?,
    })
}

#[derive(Clone, Copy)]
enum Aggregate {
    Sum,
    Min,
    Max,
}

/// What a combination makes: (members and scores, WITHSCORES given), or the reply refusing it.
type Combined = Result<(BTreeMap<Vec<u8>, f64>, bool), WriteReply>;

/// Runs a combination: the sources' types first (sets count, every score 1), then the
/// options, as Redis does. `limit` stops an intersection early (ZINTERCARD).
fn combine<S: KvRead>(
    state: &S,
    comb: &Combination,
    now: u64,
    store: bool,
    limit: u64,
) -> Result<Combined, S::Error> {
    let mut sources = Vec::with_capacity(comb.keys.len());
    for k in &comb.keys {
        let r = super::live(state.get(k)?, now).map_err(|_| S::corrupt(k))?;
        match r.map(|r| r.data) {
            None => sources.push(None),
            Some(Data::Coll(c)) if matches!(c.kind, Kind::Set | Kind::ZSet) => {
                sources.push(Some(c))
            }
            Some(_) => return Ok(Err(WriteReply::Error(super::ERR_WRONGTYPE.into()))),
        }
    }
    // Options: WEIGHTS (not for DIFF), AGGREGATE (not for DIFF), WITHSCORES (not for STORE).
    let diff = comb.how == super::Combine::Diff;
    let mut weights = vec![1.0; sources.len()];
    let mut aggregate = Aggregate::Sum;
    let mut with_scores = false;
    let opts = &comb.options;
    let mut i = 0;
    let syntax = || Ok(Err(WriteReply::Error("ERR syntax error".into())));
    while i < opts.len() {
        let left = opts.len() - i;
        let o = &opts[i];
        if !diff && o.eq_ignore_ascii_case(b"weights") && left > sources.len() {
            for (j, w) in weights.iter_mut().enumerate() {
                match parse_score(&opts[i + 1 + j]) {
                    Some(v) => *w = v,
                    None => {
                        return Ok(Err(WriteReply::Error("ERR weight value is not a float".into())))
                    }
                }
            }
            i += 1 + sources.len();
        } else if !diff && o.eq_ignore_ascii_case(b"aggregate") && left >= 2 {
            let a = &opts[i + 1];
            aggregate = if a.eq_ignore_ascii_case(b"sum") {
                Aggregate::Sum
            } else if a.eq_ignore_ascii_case(b"min") {
                Aggregate::Min
            } else if a.eq_ignore_ascii_case(b"max") {
                Aggregate::Max
            } else {
                return syntax();
            };
            i += 2;
        } else if !store && o.eq_ignore_ascii_case(b"withscores") {
            with_scores = true;
            i += 1;
        } else {
            return syntax();
        }
    }
    let weigh = |s: f64, w: f64| {
        let v = s * w;
        if v.is_nan() {
            0.0
        } else {
            v
        }
    };
    let fold = |acc: f64, v: f64| {
        let r = match aggregate {
            Aggregate::Sum => acc + v,
            Aggregate::Min => acc.min(v),
            Aggregate::Max => acc.max(v),
        };
        if r.is_nan() {
            0.0
        } else {
            r
        }
    };
    let mut out = BTreeMap::new();
    match comb.how {
        super::Combine::Union => {
            for (c, w) in sources.iter().zip(&weights) {
                let Some(c) = c else { continue };
                for (m, s) in source_members(state, c)? {
                    let v = weigh(s, *w);
                    out.entry(m).and_modify(|acc: &mut f64| *acc = fold(*acc, v)).or_insert(v);
                }
            }
        }
        super::Combine::Inter => {
            if sources.iter().any(Option::is_none) {
                return Ok(Ok((out, with_scores)));
            }
            let mut order: Vec<usize> = (0..sources.len()).collect();
            order.sort_by_key(|i| sources[*i].as_ref().map_or(0, |c| c.size));
            let first = sources[order[0]].expect("checked");
            'members: for (m, s) in source_members(state, &first)? {
                let mut acc = weigh(s, weights[order[0]]);
                for &j in &order[1..] {
                    let c = sources[j].expect("checked");
                    match contains(state, &c, &m)? {
                        Some(s) => acc = fold(acc, weigh(s, weights[j])),
                        None => continue 'members,
                    }
                }
                out.insert(m, acc);
                if limit > 0 && out.len() as u64 >= limit {
                    break;
                }
            }
        }
        super::Combine::Diff => {
            let Some(Some(first)) = sources.first() else { return Ok(Ok((out, with_scores))) };
            'diff: for (m, s) in source_members(state, first)? {
                for c in sources[1..].iter().flatten() {
                    if contains(state, c, &m)?.is_some() {
                        continue 'diff;
                    }
                }
                out.insert(m, s);
            }
        }
    }
    Ok(Ok((out, with_scores)))
}

/// Members and scores in score order (then member order), as ZUNION answers them.
fn by_score(members: BTreeMap<Vec<u8>, f64>) -> Vec<(Vec<u8>, f64)> {
    let mut v: Vec<(Vec<u8>, f64)> = members.into_iter().collect();
    v.sort_by(|a, b| ord(a.1).cmp(&ord(b.1)).then_with(|| a.0.cmp(&b.0)));
    v
}

/// Pops up to `n` of `c`'s lowest (or highest) members, changing it.
fn pop_n<S: KvRead>(
    state: &S,
    c: &mut Coll,
    max: bool,
    n: u64,
    muts: &mut Vec<Mutation>,
) -> Result<Vec<(Vec<u8>, f64)>, S::Error> {
    let (lo, hi) = tag_range(c.id, ZSET_ORDER);
    let popped = walk_order(state, &lo, &hi, max, 0, n.min(c.size))?;
    for (m, s) in &popped {
        delete_member(c, m, *s, muts);
    }
    c.resize(c.size - popped.len() as u64);
    Ok(popped)
}

pub fn apply<S: KvRead>(op: &ZOp, state: &S, ctx: &mut Ctx) -> Result<Applied, S::Error> {
    let now = ctx.time;
    Ok(match op {
        ZOp::Add { key, pairs, exist, cmp, ch, incr } => {
            if *exist == Exist::Old && typed!(read_coll(state, key, now, Kind::ZSet)?).is_none() {
                let reply = if *incr { WriteReply::Null } else { WriteReply::Integer(0) };
                return Ok((Vec::new(), reply));
            }
            let mut z = typed!(open(state, key, ctx, Kind::ZSet)?);
            let (mut added, mut updated) = (0i64, 0i64);
            let mut last = None;
            // Members named twice: the later pair sees the earlier one's effect.
            let mut now_holds: BTreeMap<&[u8], Option<f64>> = BTreeMap::new();
            for (bits, m) in pairs {
                let given = f64::from_bits(*bits);
                let old = match now_holds.get(m.as_slice()) {
                    Some(s) => *s,
                    None if z.existed => score(state, &z.coll, m)?,
                    None => None,
                };
                let new = match (old, incr) {
                    (Some(o), true) => o + given,
                    _ => given,
                };
                if new.is_nan() {
                    return Ok(error(ERR_NAN));
                }
                let allowed = match old {
                    None => *exist != Exist::Old,
                    Some(o) => {
                        *exist != Exist::New
                            && match cmp {
                                Cmp::Any => true,
                                Cmp::Greater => new > o,
                                Cmp::Less => new < o,
                            }
                    }
                };
                if !allowed {
                    last = None;
                    continue;
                }
                last = Some(new);
                match old {
                    None => {
                        added += 1;
                        z.coll.saw(m.len());
                        put_member(&z.coll, m, None, new, &mut z.muts);
                        z.coll.resize(z.coll.size + 1);
                    }
                    Some(o) if o != new => {
                        updated += 1;
                        put_member(&z.coll, m, Some(o), new, &mut z.muts);
                    }
                    Some(_) => {}
                }
                now_holds.insert(m, Some(new));
            }
            let reply = if *incr {
                last.map_or(WriteReply::Null, score_reply)
            } else {
                WriteReply::Integer(if *ch { added + updated } else { added })
            };
            if added + updated == 0 {
                return Ok((Vec::new(), reply));
            }
            z.muts.push(typed!(store_coll(key, z.coll, z.expires_at, ctx)));
            (z.muts, reply)
        }
        ZOp::Rem { key, members } => {
            let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::ZSet)?) else {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            };
            let mut muts = Vec::new();
            let mut gone = std::collections::BTreeSet::new();
            for m in members {
                if gone.contains(m) {
                    continue;
                }
                if let Some(s) = score(state, &c, m)? {
                    delete_member(&c, m, s, &mut muts);
                    gone.insert(m.clone());
                }
            }
            if gone.is_empty() {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            }
            c.resize(c.size - gone.len() as u64);
            muts.push(typed!(store_coll(key, c, t, ctx)));
            (muts, WriteReply::Integer(gone.len() as i64))
        }
        ZOp::Pop { key, max, count } => {
            let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::ZSet)?) else {
                return Ok((Vec::new(), WriteReply::Array(Vec::new())));
            };
            if *count == Some(0) {
                return Ok((Vec::new(), WriteReply::Array(Vec::new())));
            }
            let mut muts = Vec::new();
            let popped = pop_n(state, &mut c, *max, count.unwrap_or(1), &mut muts)?;
            muts.push(typed!(store_coll(key, c, t, ctx)));
            let reply = match count {
                Some(_) => pairs_reply(popped, true),
                None => WriteReply::Array(
                    popped
                        .into_iter()
                        .flat_map(|(m, s)| [WriteReply::Bulk(m), score_reply(s)])
                        .collect(),
                ),
            };
            (muts, reply)
        }
        ZOp::MPop { keys, max, count } => {
            for key in keys {
                let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::ZSet)?) else {
                    continue;
                };
                let mut muts = Vec::new();
                let popped = pop_n(state, &mut c, *max, *count, &mut muts)?;
                muts.push(typed!(store_coll(key, c, t, ctx)));
                let items = WriteReply::Array(
                    popped
                        .into_iter()
                        .map(|(m, s)| WriteReply::Array(vec![WriteReply::Bulk(m), score_reply(s)]))
                        .collect(),
                );
                return Ok((muts, WriteReply::Array(vec![WriteReply::Bulk(key.clone()), items])));
            }
            (Vec::new(), WriteReply::NullArray)
        }
        ZOp::PopFirst { keys, max } => {
            for key in keys {
                let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::ZSet)?) else {
                    continue;
                };
                let mut muts = Vec::new();
                let (m, s) = pop_n(state, &mut c, *max, 1, &mut muts)?.pop().expect("not empty");
                muts.push(typed!(store_coll(key, c, t, ctx)));
                let reply =
                    vec![WriteReply::Bulk(key.clone()), WriteReply::Bulk(m), score_reply(s)];
                return Ok((muts, WriteReply::Array(reply)));
            }
            (Vec::new(), WriteReply::NullArray)
        }
        ZOp::RemRange { key, range } => {
            let Some((mut c, t)) = typed!(read_coll(state, key, now, Kind::ZSet)?) else {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            };
            let spec = RangeSpec { range: range.clone(), rev: false, limit: None };
            let gone = select(state, &c, &spec)?;
            if gone.is_empty() {
                return Ok((Vec::new(), WriteReply::Integer(0)));
            }
            let n = gone.len() as u64;
            let mut muts = if n == c.size { coll::drop_elements(state, &c)? } else { Vec::new() };
            if n < c.size {
                for (m, s) in &gone {
                    delete_member(&c, m, *s, &mut muts);
                }
            }
            c.resize(c.size - n);
            muts.push(typed!(store_coll(key, c, t, ctx)));
            (muts, WriteReply::Integer(n as i64))
        }
        ZOp::RangeStore { dest, src, spec } => {
            let members = match typed!(read_coll(state, src, now, Kind::ZSet)?) {
                Some((c, _)) => select(state, &c, spec)?.into_iter().collect(),
                None => BTreeMap::new(),
            };
            store_result(state, dest, members, ctx)?
        }
        ZOp::Store { dest, combination } => match combine(state, combination, now, true, 0)? {
            Ok((members, _)) => store_result(state, dest, members, ctx)?,
            Err(reply) => (Vec::new(), reply),
        },
    })
}

pub fn query<S: KvRead>(q: &ZQuery, state: &S, now: u64) -> Result<WriteReply, S::Error> {
    macro_rules! zset {
        ($key:expr, $missing:expr) => {
            match read_coll(state, $key, now, Kind::ZSet)? {
                Ok(Some((c, _))) => c,
                Ok(None) => return Ok($missing),
                Err((_, r)) => return Ok(r),
            }
        };
    }
    Ok(match q {
        ZQuery::Score { key, member } => {
            let c = zset!(key, WriteReply::Null);
            score(state, &c, member)?.map_or(WriteReply::Null, score_reply)
        }
        ZQuery::MScore { key, members } => {
            let c = match read_coll(state, key, now, Kind::ZSet)? {
                Ok(c) => c.map(|(c, _)| c),
                Err((_, r)) => return Ok(r),
            };
            let mut out = Vec::with_capacity(members.len());
            for m in members {
                let s = match &c {
                    Some(c) => score(state, c, m)?,
                    None => None,
                };
                out.push(s.map_or(WriteReply::Null, score_reply));
            }
            WriteReply::Array(out)
        }
        ZQuery::Card(key) => WriteReply::Integer(zset!(key, WriteReply::Integer(0)).size as i64),
        ZQuery::Count { key, range } => {
            let c = zset!(key, WriteReply::Integer(0));
            let spec = RangeSpec { range: range.clone(), rev: false, limit: None };
            WriteReply::Integer(select(state, &c, &spec)?.len() as i64)
        }
        ZQuery::Range { key, spec, with_scores } => {
            let c = zset!(key, WriteReply::Array(Vec::new()));
            pairs_reply(select(state, &c, spec)?, *with_scores)
        }
        ZQuery::Rank { key, member, rev } => {
            let c = zset!(key, WriteReply::Null);
            let Some(s) = score(state, &c, member)? else { return Ok(WriteReply::Null) };
            // O(rank): count the order records before this member's.
            let (lo, _) = tag_range(c.id, ZSET_ORDER);
            let here = order_key(c.id, s, member);
            let before = count_keys(state, &lo, &here)?;
            WriteReply::Integer(if *rev { c.size - 1 - before } else { before } as i64)
        }
        ZQuery::Combine(comb) => match combine(state, comb, now, false, 0)? {
            Ok((members, with_scores)) => pairs_reply(by_score(members), with_scores),
            Err(reply) => reply,
        },
        ZQuery::InterCard { keys, limit } => {
            let comb =
                Combination { how: super::Combine::Inter, keys: keys.clone(), options: Vec::new() };
            match combine(state, &comb, now, true, *limit)? {
                Ok((members, _)) => WriteReply::Integer(members.len() as i64),
                Err(reply) => reply,
            }
        }
        ZQuery::Scan { key, pattern } => {
            let c = zset!(
                key,
                WriteReply::Array(vec![
                    WriteReply::Bulk(b"0".to_vec()),
                    WriteReply::Array(Vec::new())
                ])
            );
            let mut items = Vec::new();
            for (m, v) in coll::all_elements(state, c.id, ZSET_MEMBER)? {
                if pattern.as_ref().is_none_or(|p| crate::glob::matches(p, &m)) {
                    items.push(WriteReply::Bulk(m));
                    items.push(WriteReply::Bulk(d2string(score_of(&v)).into_bytes()));
                }
            }
            WriteReply::Array(vec![WriteReply::Bulk(b"0".to_vec()), WriteReply::Array(items)])
        }
    })
}

/// How many element keys lie in `[from, to)`.
fn count_keys<S: KvRead>(state: &S, from: &[u8], to: &[u8]) -> Result<u64, S::Error> {
    const PAGE: usize = 4096;
    let mut lo = from.to_vec();
    let mut n = 0;
    loop {
        let page = state.elements(&lo, to, false, PAGE)?;
        n += page.len() as u64;
        match page.last() {
            Some((last, _)) if page.len() == PAGE => {
                lo = last.clone();
                lo.push(0);
            }
            _ => return Ok(n),
        }
    }
}

/// A score as ZSCAN answers it (Redis's `d2string`: an integer without a fraction).
pub fn d2string(v: f64) -> String {
    if v.is_finite() && v == v.trunc() && v.abs() < 1e17 && v != 0.0 {
        return format!("{}", v as i64);
    }
    format_score(v)
}
