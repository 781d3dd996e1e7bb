//! Parsing of the list, set and sorted set commands, with Redis 7.0's argument errors in
//! Redis's order (`t_list.c`, `t_set.c`, `t_zset.c`): what is parsed before the key is read is
//! refused here; what Redis checks after reading the key travels as the client wrote it.

use crate::command::{ReadCommand, Reply, Request};
use bytes::Bytes;
use raft_kv_core::kv::zsets::{
    parse_lex_bound, parse_score, parse_score_bound, Cmp, Combination, Exist, Range, RangeSpec,
};
use raft_kv_core::kv::{
    parse_i64, Combine, Command, ListOp, ListQuery, Query, SetOp, SetQuery, Sort, ZOp, ZQuery,
    ERR_NOT_FLOAT, ERR_NOT_INTEGER,
};

/// The list, set and sorted set commands: name and Redis's arity.
pub const COMMANDS: &[(&str, i32)] = &[
    ("lpush", -3),
    ("rpush", -3),
    ("lpushx", -3),
    ("rpushx", -3),
    ("lpop", -2),
    ("rpop", -2),
    ("llen", 2),
    ("lrange", 4),
    ("lindex", 3),
    ("lset", 4),
    ("lrem", 4),
    ("ltrim", 4),
    ("linsert", 5),
    ("lpos", -3),
    ("lmove", 5),
    ("rpoplpush", 3),
    ("lmpop", -4),
    ("blpop", -3),
    ("brpop", -3),
    ("blmove", 6),
    ("brpoplpush", 4),
    ("blmpop", -5),
    ("bzpopmin", -3),
    ("bzpopmax", -3),
    ("bzmpop", -5),
    ("sort", -2),
    ("sort_ro", -2),
    ("sadd", -3),
    ("srem", -3),
    ("smembers", 2),
    ("sismember", 3),
    ("smismember", -3),
    ("scard", 2),
    ("spop", -2),
    ("srandmember", -2),
    ("smove", 4),
    ("sinter", -2),
    ("sunion", -2),
    ("sdiff", -2),
    ("sinterstore", -3),
    ("sunionstore", -3),
    ("sdiffstore", -3),
    ("sintercard", -3),
    ("sscan", -3),
    ("zadd", -4),
    ("zincrby", 4),
    ("zrem", -3),
    ("zscore", 3),
    ("zmscore", -3),
    ("zcard", 2),
    ("zcount", 4),
    ("zlexcount", 4),
    ("zrange", -4),
    ("zrangebyscore", -4),
    ("zrevrangebyscore", -4),
    ("zrangebylex", -4),
    ("zrevrangebylex", -4),
    ("zrevrange", -4),
    ("zrangestore", -5),
    ("zrank", 3),
    ("zrevrank", 3),
    ("zpopmin", -2),
    ("zpopmax", -2),
    ("zmpop", -4),
    ("zunionstore", -4),
    ("zinterstore", -4),
    ("zdiffstore", -4),
    ("zunion", -3),
    ("zinter", -3),
    ("zdiff", -3),
    ("zintercard", -3),
    ("zremrangebyscore", 4),
    ("zremrangebyrank", 4),
    ("zremrangebylex", 4),
    ("zrandmember", -2),
    ("zscan", -3),
];

/// The read-only ones (COMMAND INFO's flag).
pub const READ_ONLY: &[&str] = &[
    "llen",
    "lrange",
    "lindex",
    "lpos",
    "smembers",
    "sismember",
    "smismember",
    "scard",
    "srandmember",
    "sinter",
    "sunion",
    "sdiff",
    "sintercard",
    "sscan",
    "zscore",
    "zmscore",
    "zcard",
    "zcount",
    "zlexcount",
    "zrange",
    "zrangebyscore",
    "zrevrangebyscore",
    "zrangebylex",
    "zrevrangebylex",
    "zrevrange",
    "zrank",
    "zrevrank",
    "zunion",
    "zinter",
    "zdiff",
    "zintercard",
    "zrandmember",
    "zscan",
];

fn err(msg: &str) -> Reply {
    Reply::error(msg)
}

fn syntax() -> Reply {
    err("ERR syntax error")
}

/// Redis's `getLongFromObjectOrReply` with no message.
fn long(b: &[u8]) -> Result<i64, Reply> {
    parse_i64(b).ok_or_else(|| err(ERR_NOT_INTEGER))
}

/// Redis's `getRangeLongFromObjectOrReply(min, LONG_MAX, msg)`: `msg` for anything else.
fn at_least(b: &[u8], min: i64, msg: &str) -> Result<u64, Reply> {
    match parse_i64(b) {
        Some(n) if n >= min => Ok(n as u64),
        _ => Err(err(msg)),
    }
}

const ERR_POSITIVE: &str = "ERR value is out of range, must be positive";

/// LEFT or RIGHT: true for LEFT.
fn side(b: &[u8]) -> Result<bool, Reply> {
    if b.eq_ignore_ascii_case(b"left") {
        Ok(true)
    } else if b.eq_ignore_ascii_case(b"right") {
        Ok(false)
    } else {
        Err(syntax())
    }
}

fn wrong_arity(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{name}' command"))
}

/// Parses `name` (lowercase, arity checked) if it is one of `COMMANDS`.
pub fn parse(name: &str, args: &[Bytes]) -> Option<Request> {
    let k = |i: usize| args[i].to_vec();
    let all = |from: usize| args[from..].iter().map(|a| a.to_vec()).collect::<Vec<_>>();
    let write = |c: Command| Request::Write(c);
    let lwrite = |op: ListOp| Request::Write(Command::List(op));
    let sread = |q: SetQuery| Request::Read(ReadCommand::Query(Query::Sets(q)));
    let read = |q: ListQuery| Request::Read(ReadCommand::Query(Query::List(q)));
    let parsed: Result<Request, Reply> = (|| {
        Ok(match name {
            "lpush" | "rpush" | "lpushx" | "rpushx" => lwrite(ListOp::Push {
                key: k(0),
                left: name.starts_with('l'),
                elements: all(1),
                only_existing: name.ends_with('x'),
            }),
            "lpop" | "rpop" => {
                if args.len() > 2 {
                    return Err(wrong_arity(name));
                }
                let count = match args.get(1) {
                    Some(c) => Some(at_least(c, 0, ERR_POSITIVE)?),
                    None => None,
                };
                lwrite(ListOp::Pop { key: k(0), left: name == "lpop", count })
            }
            "llen" => read(ListQuery::Len(k(0))),
            "lrange" => {
                let (start, stop) = (long(&args[1])?, long(&args[2])?);
                read(ListQuery::Range { key: k(0), start, stop })
            }
            "lindex" => read(ListQuery::Index { key: k(0), index: k(1) }),
            "lset" => lwrite(ListOp::Set { key: k(0), index: k(1), element: k(2) }),
            "lrem" => lwrite(ListOp::Rem { key: k(0), count: long(&args[1])?, element: k(2) }),
            "ltrim" => {
                let (start, stop) = (long(&args[1])?, long(&args[2])?);
                lwrite(ListOp::Trim { key: k(0), start, stop })
            }
            "linsert" => {
                let before = if args[1].eq_ignore_ascii_case(b"before") {
                    true
                } else if args[1].eq_ignore_ascii_case(b"after") {
                    false
                } else {
                    return Err(syntax());
                };
                lwrite(ListOp::Insert { key: k(0), before, pivot: k(2), element: k(3) })
            }
            "lpos" => {
                let (mut rank, mut count, mut maxlen) = (1, None, 0);
                let mut i = 2;
                while i < args.len() {
                    let more = i + 1 < args.len();
                    let opt = &args[i];
                    if opt.eq_ignore_ascii_case(b"rank") && more {
                        rank = long(&args[i + 1])?;
                        if rank == 0 {
                            return Err(err(raft_kv_core::kv::lists::ERR_RANK_ZERO));
                        }
                    } else if opt.eq_ignore_ascii_case(b"count") && more {
                        count = Some(at_least(&args[i + 1], 0, "ERR COUNT can't be negative")?);
                    } else if opt.eq_ignore_ascii_case(b"maxlen") && more {
                        maxlen = at_least(&args[i + 1], 0, "ERR MAXLEN can't be negative")?;
                    } else {
                        return Err(syntax());
                    }
                    i += 2;
                }
                read(ListQuery::Pos { key: k(0), element: k(1), rank, count, maxlen })
            }
            "lmove" => {
                let (from_left, to_left) = (side(&args[2])?, side(&args[3])?);
                lwrite(ListOp::Move { from: k(0), to: k(1), from_left, to_left })
            }
            "rpoplpush" => {
                lwrite(ListOp::Move { from: k(0), to: k(1), from_left: false, to_left: true })
            }
            "lmpop" => {
                let (keys, left, count) = mpop_args(args, (b"left", b"right"))?;
                lwrite(ListOp::MPop { keys, left, count })
            }
            "blpop" | "brpop" => {
                let (keys, timeout) = keys_then_timeout(args)?;
                blocking(Command::List(ListOp::PopFirst { keys, left: name == "blpop" }), timeout)
            }
            "bzpopmin" | "bzpopmax" => {
                let (keys, timeout) = keys_then_timeout(args)?;
                blocking(Command::ZSet(ZOp::PopFirst { keys, max: name == "bzpopmax" }), timeout)
            }
            "blmove" => {
                let timeout = timeout_ms(&args[4])?;
                let (from_left, to_left) = (side(&args[2])?, side(&args[3])?);
                blocking(
                    Command::List(ListOp::Move { from: k(0), to: k(1), from_left, to_left }),
                    timeout,
                )
            }
            "brpoplpush" => {
                let timeout = timeout_ms(&args[2])?;
                let op = ListOp::Move { from: k(0), to: k(1), from_left: false, to_left: true };
                blocking(Command::List(op), timeout)
            }
            "blmpop" => {
                let timeout = timeout_ms(&args[0])?;
                let (keys, left, count) = mpop_args(&args[1..], (b"left", b"right"))?;
                blocking(Command::List(ListOp::MPop { keys, left, count }), timeout)
            }
            "bzmpop" => {
                let timeout = timeout_ms(&args[0])?;
                match zparse("zmpop", &args[1..])? {
                    Request::Write(command) => blocking(command, timeout),
                    other => other,
                }
            }
            "sort" | "sort_ro" => sort(name == "sort_ro", args)?,
            "sadd" | "srem" => {
                let (key, members) = (k(0), all(1));
                write(Command::Sets(if name == "sadd" {
                    SetOp::Add { key, members }
                } else {
                    SetOp::Rem { key, members }
                }))
            }
            "smembers" => sread(SetQuery::Combine { how: Combine::Inter, keys: vec![k(0)] }),
            "sinter" | "sunion" | "sdiff" => {
                sread(SetQuery::Combine { how: combine(name), keys: all(0) })
            }
            "sinterstore" | "sunionstore" | "sdiffstore" => {
                write(Command::Sets(SetOp::Store { how: combine(name), dest: k(0), keys: all(1) }))
            }
            "sintercard" => {
                let numkeys = at_least(&args[0], 1, "ERR numkeys should be greater than 0")?;
                if numkeys > (args.len() - 1) as u64 {
                    return Err(err("ERR Number of keys can't be greater than number of args"));
                }
                let n = numkeys as usize;
                let mut limit = 0;
                let mut i = 1 + n;
                while i < args.len() {
                    if args[i].eq_ignore_ascii_case(b"limit") && i + 1 < args.len() {
                        limit = at_least(&args[i + 1], 0, "ERR LIMIT can't be negative")?;
                        i += 2;
                    } else {
                        return Err(syntax());
                    }
                }
                sread(SetQuery::InterCard {
                    keys: args[1..1 + n].iter().map(|a| a.to_vec()).collect(),
                    limit,
                })
            }
            "sismember" => sread(SetQuery::IsMember { key: k(0), member: k(1) }),
            "smismember" => sread(SetQuery::MIsMember { key: k(0), members: all(1) }),
            "scard" => sread(SetQuery::Card(k(0))),
            "spop" => {
                let count = match args.len() {
                    1 => None,
                    2 => Some(at_least(&args[1], 0, ERR_POSITIVE)?),
                    _ => return Err(syntax()),
                };
                write(Command::Sets(SetOp::Pop { key: k(0), count }))
            }
            "srandmember" => {
                let count = match args.len() {
                    1 => None,
                    2 => match parse_i64(&args[1]) {
                        Some(i64::MIN) => return Err(err("ERR value is out of range, value must between -9223372036854775807 and 9223372036854775807")),
                        Some(n) => Some(n),
                        None => return Err(err(ERR_NOT_INTEGER)),
                    },
                    _ => return Err(syntax()),
                };
                Request::Read(ReadCommand::SRandMember { key: k(0), count })
            }
            "smove" => write(Command::Sets(SetOp::Move { from: k(0), to: k(1), member: k(2) })),
            "sscan" => crate::command::element_scan(args, raft_kv_core::kv::Kind::Set),
            _ if name.starts_with('z') => return zparse(name, args),
            _ => return Err(Reply::Null),
        })
    })();
    match parsed {
        Ok(r) => Some(r),
        Err(Reply::Null) => None,
        Err(reply) => Some(Request::Immediate(reply)),
    }
}

/// SORT's options, parsed as Redis's `sortCommandGeneric` does (an option missing its
/// arguments is a syntax error; SORT_RO takes no STORE).
fn sort(readonly: bool, args: &[Bytes]) -> Result<Request, Reply> {
    let mut s = Sort {
        key: args[0].to_vec(),
        by: None,
        nosort: false,
        limit: None,
        get: Vec::new(),
        desc: false,
        alpha: false,
        store: None,
    };
    let mut j = 1;
    while j < args.len() {
        let (opt, left) = (&args[j], args.len() - j - 1);
        if opt.eq_ignore_ascii_case(b"asc") {
            s.desc = false;
        } else if opt.eq_ignore_ascii_case(b"desc") {
            s.desc = true;
        } else if opt.eq_ignore_ascii_case(b"alpha") {
            s.alpha = true;
        } else if opt.eq_ignore_ascii_case(b"limit") && left >= 2 {
            s.limit = Some((long(&args[j + 1])?, long(&args[j + 2])?));
            j += 2;
        } else if !readonly && opt.eq_ignore_ascii_case(b"store") && left >= 1 {
            s.store = Some(args[j + 1].to_vec());
            j += 1;
        } else if opt.eq_ignore_ascii_case(b"by") && left >= 1 {
            let pattern = args[j + 1].to_vec();
            if !pattern.contains(&b'*') {
                s.nosort = true;
            }
            s.by = Some(pattern);
            j += 1;
        } else if opt.eq_ignore_ascii_case(b"get") && left >= 1 {
            s.get.push(args[j + 1].to_vec());
            j += 1;
        } else {
            return Err(syntax());
        }
        j += 1;
    }
    Ok(if s.store.is_some() {
        Request::Write(Command::Sort(s))
    } else {
        Request::Read(ReadCommand::Query(Query::Sort(s)))
    })
}

const ERR_NOT_SCORE_RANGE: &str = "ERR min or max is not a float";
const ERR_NOT_LEX_RANGE: &str = "ERR min or max not valid string range item";

fn score_range(min: &[u8], max: &[u8]) -> Result<Range, Reply> {
    match (parse_score_bound(min), parse_score_bound(max)) {
        (Some(a), Some(b)) => Ok(Range::Score(a, b)),
        _ => Err(err(ERR_NOT_SCORE_RANGE)),
    }
}

fn lex_range(min: &[u8], max: &[u8]) -> Result<Range, Reply> {
    match (parse_lex_bound(min), parse_lex_bound(max)) {
        (Some(a), Some(b)) => Ok(Range::Lex(a, b)),
        _ => Err(err(ERR_NOT_LEX_RANGE)),
    }
}

#[derive(PartialEq)]
enum By {
    Auto,
    Rank,
    Score,
    Lex,
}

/// The ZRANGE family (`zrangeGenericCommand`): `args` from the source key on; `by` and `rev`
/// fixed by the older commands' names. Returns the source key, the spec and WITHSCORES.
fn range_args(
    args: &[Bytes],
    mut by: By,
    rev: Option<bool>,
    store: bool,
) -> Result<(Vec<u8>, RangeSpec, bool), Reply> {
    let mut rev_opt = rev;
    let (mut with_scores, mut limit) = (false, None);
    let mut j = 3;
    while j < args.len() {
        let a = &args[j];
        let left = args.len() - j - 1;
        if !store && a.eq_ignore_ascii_case(b"withscores") {
            with_scores = true;
        } else if a.eq_ignore_ascii_case(b"limit") && left >= 2 {
            limit = Some((long(&args[j + 1])?, long(&args[j + 2])?));
            j += 2;
        } else if rev_opt.is_none() && a.eq_ignore_ascii_case(b"rev") {
            rev_opt = Some(true);
        } else if by == By::Auto && a.eq_ignore_ascii_case(b"bylex") {
            by = By::Lex;
        } else if by == By::Auto && a.eq_ignore_ascii_case(b"byscore") {
            by = By::Score;
        } else {
            return Err(syntax());
        }
        j += 1;
    }
    let rev = rev_opt.unwrap_or(false);
    if by == By::Auto {
        by = By::Rank;
    }
    if limit.is_some() && by == By::Rank {
        return Err(err(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if with_scores && by == By::Lex {
        return Err(err("ERR syntax error, WITHSCORES not supported in combination with BYLEX"));
    }
    // BYSCORE and BYLEX with REV take the range as max, min.
    let (lo, hi) = if rev && by != By::Rank { (&args[2], &args[1]) } else { (&args[1], &args[2]) };
    let range = match by {
        By::Score => score_range(lo, hi)?,
        By::Lex => lex_range(lo, hi)?,
        _ => Range::Rank(long(lo)?, long(hi)?),
    };
    Ok((args[0].to_vec(), RangeSpec { range, rev, limit }, with_scores))
}

/// `numkeys key [key ...] options...` of ZUNION and its kin: numkeys checked here, the options
/// left for after the keys' types (as Redis).
fn combination(name: &str, how: Combine, args: &[Bytes]) -> Result<Combination, Reply> {
    let n = long(&args[0])?;
    if n < 1 {
        return Err(err(&format!("ERR at least 1 input key is needed for '{name}' command")));
    }
    if n as u64 > (args.len() - 1) as u64 {
        return Err(syntax());
    }
    let n = n as usize;
    let keys = args[1..1 + n].iter().map(|a| a.to_vec()).collect();
    let options = args[1 + n..].iter().map(|a| a.to_vec()).collect();
    Ok(Combination { how, keys, options })
}

/// The sorted set commands.
fn zparse(name: &str, args: &[Bytes]) -> Result<Request, Reply> {
    let k = |i: usize| args[i].to_vec();
    let all = |from: usize| args[from..].iter().map(|a| a.to_vec()).collect::<Vec<_>>();
    let write = |op: ZOp| Request::Write(Command::ZSet(op));
    let read = |q: ZQuery| Request::Read(ReadCommand::Query(Query::ZSet(q)));
    Ok(match name {
        "zadd" | "zincrby" => {
            let (mut exist, mut cmp_gt, mut cmp_lt, mut ch, mut incr) =
                (None, false, false, false, name == "zincrby");
            let (mut nx, mut xx) = (false, false);
            let mut at = 1;
            if name == "zadd" {
                while at < args.len() {
                    let o = &args[at];
                    if o.eq_ignore_ascii_case(b"nx") {
                        nx = true;
                    } else if o.eq_ignore_ascii_case(b"xx") {
                        xx = true;
                    } else if o.eq_ignore_ascii_case(b"ch") {
                        ch = true;
                    } else if o.eq_ignore_ascii_case(b"incr") {
                        incr = true;
                    } else if o.eq_ignore_ascii_case(b"gt") {
                        cmp_gt = true;
                    } else if o.eq_ignore_ascii_case(b"lt") {
                        cmp_lt = true;
                    } else {
                        break;
                    }
                    at += 1;
                }
            }
            let rest = &args[at..];
            if rest.is_empty() || !rest.len().is_multiple_of(2) {
                return Err(syntax());
            }
            if nx && xx {
                return Err(err("ERR XX and NX options at the same time are not compatible"));
            }
            if ((cmp_gt || cmp_lt) && nx) || (cmp_gt && cmp_lt) {
                return Err(err(
                    "ERR GT, LT, and/or NX options at the same time are not compatible",
                ));
            }
            if incr && rest.len() > 2 {
                return Err(err("ERR INCR option supports a single increment-element pair"));
            }
            if nx {
                exist = Some(Exist::New);
            } else if xx {
                exist = Some(Exist::Old);
            }
            let mut pairs = Vec::with_capacity(rest.len() / 2);
            for p in rest.chunks(2) {
                let Some(score) = parse_score(&p[0]) else { return Err(err(ERR_NOT_FLOAT)) };
                pairs.push((score.to_bits(), p[1].to_vec()));
            }
            let cmp = if cmp_gt {
                Cmp::Greater
            } else if cmp_lt {
                Cmp::Less
            } else {
                Cmp::Any
            };
            write(ZOp::Add { key: k(0), pairs, exist: exist.unwrap_or(Exist::Any), cmp, ch, incr })
        }
        "zrem" => write(ZOp::Rem { key: k(0), members: all(1) }),
        "zscore" => read(ZQuery::Score { key: k(0), member: k(1) }),
        "zmscore" => read(ZQuery::MScore { key: k(0), members: all(1) }),
        "zcard" => read(ZQuery::Card(k(0))),
        "zcount" => read(ZQuery::Count { key: k(0), range: score_range(&args[1], &args[2])? }),
        "zlexcount" => read(ZQuery::Count { key: k(0), range: lex_range(&args[1], &args[2])? }),
        "zrange" | "zrangebyscore" | "zrevrangebyscore" | "zrangebylex" | "zrevrangebylex"
        | "zrevrange" => {
            let (by, rev) = match name {
                "zrange" => (By::Auto, None),
                "zrangebyscore" => (By::Score, Some(false)),
                "zrevrangebyscore" => (By::Score, Some(true)),
                "zrangebylex" => (By::Lex, Some(false)),
                "zrevrangebylex" => (By::Lex, Some(true)),
                _ => (By::Rank, Some(true)),
            };
            let (key, spec, with_scores) = range_args(args, by, rev, false)?;
            read(ZQuery::Range { key, spec, with_scores })
        }
        "zrangestore" => {
            let (src, spec, _) = range_args(&args[1..], By::Auto, None, true)?;
            write(ZOp::RangeStore { dest: k(0), src, spec })
        }
        "zrank" | "zrevrank" => {
            read(ZQuery::Rank { key: k(0), member: k(1), rev: name == "zrevrank" })
        }
        "zpopmin" | "zpopmax" => {
            let count = match args.len() {
                1 => None,
                2 => Some(at_least(&args[1], 0, ERR_POSITIVE)?),
                _ => return Err(syntax()),
            };
            write(ZOp::Pop { key: k(0), max: name == "zpopmax", count })
        }
        "zmpop" => {
            let (keys, max, count) = mpop_args(args, (b"max", b"min"))?;
            write(ZOp::MPop { keys, max, count })
        }
        "zunionstore" | "zinterstore" | "zdiffstore" => {
            let how = combine(name);
            write(ZOp::Store { dest: k(0), combination: combination(name, how, &args[1..])? })
        }
        "zunion" | "zinter" | "zdiff" => {
            let how = combine(name);
            read(ZQuery::Combine(combination(name, how, args)?))
        }
        "zintercard" => {
            let c = combination(name, Combine::Inter, args)?;
            let mut limit = 0;
            let mut i = 0;
            while i < c.options.len() {
                if c.options[i].eq_ignore_ascii_case(b"limit") && i + 1 < c.options.len() {
                    limit = at_least(&c.options[i + 1], 0, "ERR LIMIT can't be negative")?;
                    i += 2;
                } else {
                    return Err(syntax());
                }
            }
            read(ZQuery::InterCard { keys: c.keys, limit })
        }
        "zremrangebyscore" => {
            write(ZOp::RemRange { key: k(0), range: score_range(&args[1], &args[2])? })
        }
        "zremrangebylex" => {
            write(ZOp::RemRange { key: k(0), range: lex_range(&args[1], &args[2])? })
        }
        "zremrangebyrank" => {
            let (start, stop) = (long(&args[1])?, long(&args[2])?);
            write(ZOp::RemRange { key: k(0), range: Range::Rank(start, stop) })
        }
        "zrandmember" => {
            let key = k(0);
            let Some(raw) = args.get(1) else {
                return Ok(Request::Read(ReadCommand::ZRandMember {
                    key,
                    count: None,
                    with_scores: false,
                }));
            };
            let count = match parse_i64(raw) {
                None => return Err(err(ERR_NOT_INTEGER)),
                Some(i64::MIN) => {
                    return Err(err(&format!(
                        "ERR value is out of range, value must between {} and {}",
                        -i64::MAX,
                        i64::MAX
                    )))
                }
                Some(n) => n,
            };
            let with_scores = match &args[2..] {
                [] => false,
                [w] if w.eq_ignore_ascii_case(b"withscores") => true,
                _ => return Err(syntax()),
            };
            if with_scores && !(-i64::MAX / 2..=i64::MAX / 2).contains(&count) {
                return Err(err("ERR value is out of range"));
            }
            Request::Read(ReadCommand::ZRandMember { key, count: Some(count), with_scores })
        }
        "zscan" => crate::command::element_scan(args, raft_kv_core::kv::Kind::ZSet),
        _ => return Err(Reply::Null),
    })
}

fn combine(name: &str) -> Combine {
    match &name[1..4] {
        "int" => Combine::Inter,
        "uni" => Combine::Union,
        _ => Combine::Diff,
    }
}

/// A blocking pop's request.
fn blocking(command: Command, timeout_ms: u64) -> Request {
    Request::Blocking { command, timeout_ms }
}

/// A blocking command's timeout in seconds (a float; 0 waits for ever), in milliseconds,
/// with Redis's errors.
fn timeout_ms(b: &[u8]) -> Result<u64, Reply> {
    let secs = raft_kv_core::kv::parse_f64(b)
        .filter(|v| v.is_finite())
        .ok_or_else(|| err("ERR timeout is not a float or out of range"))?;
    let ms = (secs * 1000.0).ceil();
    if ms < 0.0 {
        return Err(err("ERR timeout is negative"));
    }
    Ok(ms.min(u64::MAX as f64) as u64)
}

/// `key [key ...] timeout` (BLPOP, BZPOPMIN).
fn keys_then_timeout(args: &[Bytes]) -> Result<(Vec<Vec<u8>>, u64), Reply> {
    let (last, keys) = args.split_last().expect("arity checked");
    let timeout = timeout_ms(last)?;
    Ok((keys.iter().map(|a| a.to_vec()).collect(), timeout))
}

/// LMPOP's `numkeys key [key ...] LEFT|RIGHT [COUNT count]`.
/// LMPOP's and ZMPOP's `numkeys key [key ...] WHERE [COUNT count]`, where WHERE is one of
/// `ends` (true for the first: LEFT, MAX).
fn mpop_args(args: &[Bytes], ends: (&[u8], &[u8])) -> Result<(Vec<Vec<u8>>, bool, u64), Reply> {
    let numkeys = at_least(&args[0], 1, "ERR numkeys should be greater than 0")?;
    let where_at = usize::try_from(numkeys).ok().and_then(|n| n.checked_add(1));
    let Some(where_at) = where_at.filter(|w| *w < args.len()) else { return Err(syntax()) };
    let end = &args[where_at];
    let first = if end.eq_ignore_ascii_case(ends.0) {
        true
    } else if end.eq_ignore_ascii_case(ends.1) {
        false
    } else {
        return Err(syntax());
    };
    let mut count = None;
    let mut i = where_at + 1;
    while i < args.len() {
        if count.is_none() && args[i].eq_ignore_ascii_case(b"count") && i + 1 < args.len() {
            count = Some(at_least(&args[i + 1], 1, "ERR count should be greater than 0")?);
            i += 2;
        } else {
            return Err(syntax());
        }
    }
    let keys = args[1..where_at].iter().map(|a| a.to_vec()).collect();
    Ok((keys, first, count.unwrap_or(1)))
}
