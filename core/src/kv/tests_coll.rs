//! Collections element by element: what each write stores, what dies with a key, and the
//! merge of pending element changes over the state underneath.

use super::tests::Map;
use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn hset(key: &str, pairs: &[(&str, &str)]) -> Command {
    Command::HSet {
        key: b(key),
        pairs: pairs.iter().map(|(f, v)| (b(f), b(v))).collect(),
        nx: false,
        reply_ok: false,
    }
}

fn coll(m: &Map, key: &str) -> Coll {
    match Record::decode(&m.0[key.as_bytes()]).expect("a record").data {
        Data::Coll(c) => c,
        Data::Str(_) => panic!("a string"),
    }
}

fn hgetall(m: &Map, key: &str) -> WriteReply {
    query(&Query::HGetAll { key: b(key), fields: true, values: true }, m, 1_000).unwrap()
}

fn pairs(p: &[(&str, &str)]) -> WriteReply {
    WriteReply::Map(
        p.iter().map(|(f, v)| (WriteReply::Bulk(b(f)), WriteReply::Bulk(b(v)))).collect(),
    )
}

#[test]
fn a_hash_write_touches_its_field_and_the_metadata_only() {
    let mut m = Map::default();
    let fields: Vec<(String, String)> =
        (0..1000).map(|i| (format!("f{i:04}"), i.to_string())).collect();
    let refs: Vec<(&str, &str)> = fields.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
    assert_eq!(m.run(hset("h", &refs)), WriteReply::Integer(1000));
    assert_eq!(m.1.len(), 1000);
    let c = coll(&m, "h");
    assert_eq!((c.kind, c.size, c.peak), (Kind::Hash, 1000, 1000));
    // One more field: one element written, and the metadata.
    m.2 += 1;
    let (muts, reply) =
        apply(&hset("h", &[("new", "v")]), &m, &mut Ctx::new(1_000, m.2, 1)).unwrap();
    assert_eq!(reply, WriteReply::Integer(1));
    assert_eq!(muts.len(), 2, "{muts:?}");
    // An overwrite counts nothing but still changes the stamp (WATCH sees it).
    let before = watch_value(&m, b"h", 1_000).unwrap();
    assert_eq!(m.run(hset("h", &[("f0001", "x")])), WriteReply::Integer(0));
    assert_ne!(watch_value(&m, b"h", 1_000).unwrap(), before);
    assert_eq!(coll(&m, "h").size, 1000);
}

#[test]
fn fields_come_back_in_byte_order_and_the_last_of_a_repeated_field_wins() {
    let mut m = Map::default();
    assert_eq!(m.run(hset("h", &[("b", "1"), ("a", "2"), ("b", "3")])), WriteReply::Integer(2));
    assert_eq!(hgetall(&m, "h"), pairs(&[("a", "2"), ("b", "3")]));
    let del = Command::HDel { key: b("h"), fields: vec![b("a"), b("a"), b("zz")] };
    assert_eq!(m.run(del), WriteReply::Integer(1));
    let del = Command::HDel { key: b("h"), fields: vec![b("b")] };
    assert_eq!(m.run(del), WriteReply::Integer(1));
    assert!(m.0.is_empty() && m.1.is_empty(), "the last field takes the key with it");
}

#[test]
fn a_dead_hash_takes_its_fields_by_points_when_few_and_by_one_range_when_many() {
    for (n, range) in [(10, false), (64, false), (65, true)] {
        let mut m = Map::default();
        let fields: Vec<(String, String)> = (0..n).map(|i| (format!("f{i}"), "v".into())).collect();
        let refs: Vec<(&str, &str)> =
            fields.iter().map(|(f, v)| (f.as_str(), v.as_str())).collect();
        m.run(hset("h", &refs));
        m.2 += 1;
        let (muts, _) =
            apply(&Command::Del { keys: vec![b("h")] }, &m, &mut Ctx::new(1_000, m.2, 1)).unwrap();
        let ranges = muts.iter().filter(|m| matches!(m, Mutation::DeleteElements { .. })).count();
        let points = muts.iter().filter(|m| matches!(m, Mutation::DeleteElement(_))).count();
        assert_eq!((ranges, points), if range { (1, 0) } else { (0, n) }, "{n} fields");
        m.run(Command::Del { keys: vec![b("h")] });
        assert!(m.0.is_empty() && m.1.is_empty(), "{n} fields");
    }
}

#[test]
fn every_write_that_replaces_or_drops_a_hash_drops_its_fields() {
    let writes = [
        Command::set(b("h"), b("s")),
        Command::MSet { pairs: vec![(b("h"), b("s"))] },
        Command::Expire {
            key: b("h"),
            amount: -1,
            millis: false,
            absolute: false,
            cond: ExpireCond::Always,
        },
        Command::FlushAll,
        Command::Rename { from: b("o"), to: b("h"), nx: false },
        Command::Copy { from: b("o"), to: b("h"), replace: true },
    ];
    for w in writes {
        let mut m = Map::default();
        m.run(hset("h", &[("a", "1"), ("b", "2")]));
        m.run(Command::set(b("o"), b("s")));
        m.run(w.clone());
        assert!(m.1.is_empty(), "{w:?} left {:?}", m.1);
    }
    // An expired hash: the sweep, or a write of another type over it, drops its fields.
    for w in [
        Command::ExpireDue { keys: vec![b("h")] },
        Command::IncrBy { key: b("h"), delta: 1 },
        hset("h", &[("c", "3")]),
    ] {
        let mut m = Map::default();
        m.run_at(hset("h", &[("a", "1"), ("b", "2")]), 0);
        m.run_at(
            Command::Expire {
                key: b("h"),
                amount: 5,
                millis: true,
                absolute: false,
                cond: ExpireCond::Always,
            },
            0,
        );
        m.run_at(w.clone(), 100);
        let left: Vec<&Vec<u8>> = m.1.keys().collect();
        assert!(left.len() <= 1, "{w:?} left {left:?}");
        if let Some(k) = left.first() {
            assert!(k.ends_with(b"hc"), "only the new hash's field: {k:?}");
            assert_eq!(hgetall(&m, "h"), pairs(&[("c", "3")]));
        }
    }
}

#[test]
fn rename_moves_a_hash_in_one_write_and_copy_makes_an_independent_one() {
    let mut m = Map::default();
    m.run(hset("h", &[("a", "1"), ("b", "2")]));
    m.2 += 1;
    let rename = Command::Rename { from: b("h"), to: b("g"), nx: false };
    let (muts, _) = apply(&rename, &m, &mut Ctx::new(1_000, m.2, 1)).unwrap();
    assert_eq!(muts.len(), 2, "the metadata moves, the fields stay: {muts:?}");
    m.run(rename);
    assert_eq!(hgetall(&m, "g"), pairs(&[("a", "1"), ("b", "2")]));
    m.run(Command::Copy { from: b("g"), to: b("c"), replace: false });
    m.run(hset("c", &[("a", "changed")]));
    assert_eq!(hgetall(&m, "g"), pairs(&[("a", "1"), ("b", "2")]));
    assert_eq!(hgetall(&m, "c"), pairs(&[("a", "changed"), ("b", "2")]));
    m.run(Command::Del { keys: vec![b("g")] });
    assert_eq!(hgetall(&m, "c"), pairs(&[("a", "changed"), ("b", "2")]));
    assert_eq!(m.1.len(), 2);
}

#[test]
fn a_transaction_sees_its_own_field_writes_and_a_hash_it_recreates_starts_empty() {
    let mut m = Map::default();
    m.run(hset("h", &[("a", "1"), ("b", "2")]));
    let multi = Command::Multi {
        ops: vec![
            TxOp::Write(hset("h", &[("c", "3")])),
            TxOp::Query(Query::HGetAll { key: b("h"), fields: true, values: true }),
            TxOp::Write(Command::Del { keys: vec![b("h")] }),
            TxOp::Write(hset("h", &[("z", "9")])),
            TxOp::Query(Query::HGetAll { key: b("h"), fields: true, values: true }),
        ],
        watched: vec![],
    };
    let reply = m.run(multi);
    let WriteReply::Array(replies) = reply else { panic!("{reply:?}") };
    assert_eq!(replies[1], pairs(&[("a", "1"), ("b", "2"), ("c", "3")]));
    assert_eq!(replies[4], pairs(&[("z", "9")]));
    assert_eq!(hgetall(&m, "h"), pairs(&[("z", "9")]));
    assert_eq!(m.1.len(), 1);
}

#[test]
fn ids_are_unique_across_entries_and_within_one_and_run_out_with_an_error() {
    let mut a = Ctx::new(0, 7, 1);
    let mut b = Ctx::new(0, 8, 1);
    let ids: Vec<u64> =
        (0..3).map(|_| a.next_id().unwrap()).chain([b.next_id().unwrap()]).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let mut c = Ctx::new(0, 9, 1);
    for _ in 0..(1 << 20) - 1 {
        c.next_id().unwrap();
    }
    assert_eq!(c.next_id(), None);
}

/// A plain map of elements with range deletes, the model `Layered` must agree with.
fn model_apply(model: &mut BTreeMap<Vec<u8>, Vec<u8>>, m: &Mutation) {
    match m {
        Mutation::PutElement(k, v) => {
            model.insert(k.clone(), v.clone());
        }
        Mutation::DeleteElement(k) => {
            model.remove(k);
        }
        Mutation::DeleteElements { from, to } => model.retain(|k, _| !(from <= k && k < to)),
        Mutation::Clear => model.clear(),
        _ => {}
    }
}

fn element_mutation() -> impl Strategy<Value = Mutation> {
    let key = proptest::collection::vec(0u8..4, 1..4);
    prop_oneof![
        4 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Mutation::PutElement(k, vec![v])),
        2 => key.clone().prop_map(Mutation::DeleteElement),
        1 => (key.clone(), key).prop_map(|(a, b)| {
            let (from, to) = if a <= b { (a, b) } else { (b, a) };
            Mutation::DeleteElements { from, to }
        }),
        1 => Just(Mutation::Clear),
    ]
}

proptest! {
    /// Element ranges read through pending changes, in pages of any size and either
    /// direction, equal the same range of the changes applied to a plain map.
    #[test]
    fn layered_ranges_equal_the_changes_applied(
        base in proptest::collection::vec(element_mutation(), 0..20),
        pending in proptest::collection::vec(element_mutation(), 0..20),
        from in proptest::collection::vec(0u8..4, 0..3),
        to in proptest::collection::vec(0u8..5, 0..4),
        rev in any::<bool>(),
        limit in 1usize..6,
    ) {
        let mut state = Map::default();
        for m in base.iter().filter(|m| !matches!(m, Mutation::Clear)) {
            model_apply(&mut state.1, m);
        }
        let mut model = state.1.clone();
        let mut changes = PendingChanges::default();
        for m in &pending {
            model_apply(&mut model, m);
            changes.record(std::slice::from_ref(m));
        }
        let layered = Layered { base: &state, pending: Some(&changes) };
        let got = layered.elements(&from, &to, rev, limit).unwrap();
        let want = state_range(&model, &from, &to, rev, limit);
        prop_assert_eq!(got, want);
        for k in model.keys().chain(state.1.keys()) {
            prop_assert_eq!(layered.element(k).unwrap(), model.get(k).cloned());
        }
    }
}

fn state_range(
    m: &BTreeMap<Vec<u8>, Vec<u8>>,
    from: &[u8],
    to: &[u8],
    rev: bool,
    limit: usize,
) -> Vec<(Vec<u8>, Vec<u8>)> {
    if from >= to {
        return Vec::new();
    }
    let it = m.iter().filter(|(k, _)| from <= k.as_slice() && k.as_slice() < to);
    let all: Vec<(Vec<u8>, Vec<u8>)> = it.map(|(k, v)| (k.clone(), v.clone())).collect();
    if rev {
        all.into_iter().rev().take(limit).collect()
    } else {
        all.into_iter().take(limit).collect()
    }
}

fn list_op() -> impl Strategy<Value = (u8, Vec<u8>, i64, i64)> {
    // (which op, an element, two numbers)
    (0u8..9, proptest::collection::vec(b'a'..b'd', 1..2), -6i64..7, -6i64..7)
}

/// The model of one list op, Redis's semantics over a `VecDeque`.
fn model_list(l: &mut std::collections::VecDeque<Vec<u8>>, op: u8, e: &[u8], x: i64, y: i64) {
    let len = l.len() as i64;
    let norm = |i: i64| if i < 0 { i + len } else { i };
    match op {
        0 => l.push_front(e.to_vec()),
        1 => l.push_back(e.to_vec()),
        2 => {
            for _ in 0..x.unsigned_abs().min(l.len() as u64) {
                l.pop_front();
            }
        }
        3 => {
            for _ in 0..x.unsigned_abs().min(l.len() as u64) {
                l.pop_back();
            }
        }
        4 => {
            let i = norm(x);
            if (0..len).contains(&i) {
                l[i as usize] = e.to_vec();
            }
        }
        5 => {
            let limit = if x == 0 { usize::MAX } else { x.unsigned_abs() as usize };
            let idx: Vec<usize> = if x < 0 {
                (0..l.len()).rev().filter(|i| l[*i] == e).take(limit).collect()
            } else {
                (0..l.len()).filter(|i| l[*i] == e).take(limit).collect()
            };
            let mut i = 0;
            l.retain(|_| {
                let keep = !idx.contains(&i);
                i += 1;
                keep
            });
        }
        6 => {
            let (mut s, mut t) = (norm(x), norm(y));
            if s < 0 {
                s = 0;
            }
            if s > t || s >= len {
                l.clear();
            } else {
                if t >= len {
                    t = len - 1;
                }
                *l = l.iter().skip(s as usize).take((t - s + 1) as usize).cloned().collect();
            }
        }
        7 => {
            if let Some(p) = l.iter().position(|v| v.as_slice() == b"a") {
                l.insert(if x < 0 { p } else { p + 1 }, e.to_vec());
            }
        }
        _ => {
            if let Some(v) = if x < 0 { l.pop_front() } else { l.pop_back() } {
                if y < 0 {
                    l.push_front(v)
                } else {
                    l.push_back(v)
                }
            }
        }
    }
}

fn list_command(op: u8, e: &[u8], x: i64, y: i64) -> Command {
    let key = b("l");
    Command::List(match op {
        0 | 1 => {
            ListOp::Push { key, left: op == 0, elements: vec![e.to_vec()], only_existing: false }
        }
        2 | 3 => ListOp::Pop { key, left: op == 2, count: Some(x.unsigned_abs()) },
        4 => ListOp::Set { key, index: x.to_string().into_bytes(), element: e.to_vec() },
        5 => ListOp::Rem { key, count: x, element: e.to_vec() },
        6 => ListOp::Trim { key, start: x, stop: y },
        7 => ListOp::Insert { key, before: x < 0, pivot: b("a"), element: e.to_vec() },
        _ => ListOp::Move { from: key.clone(), to: key, from_left: x < 0, to_left: y < 0 },
    })
}

proptest! {
    /// Any sequence of list writes leaves the list the model holds, stored densely: exactly its
    /// elements, at `head..head + size`, and nothing else in the element space.
    #[test]
    fn list_writes_match_a_deque(ops in proptest::collection::vec(list_op(), 1..40)) {
        let mut m = Map::default();
        let mut model = std::collections::VecDeque::new();
        for (op, e, x, y) in ops {
            m.run(list_command(op, &e, x, y));
            model_list(&mut model, op, &e, x, y);
            let got = query(&Query::List(ListQuery::Range { key: b("l"), start: 0, stop: -1 }), &m, 1_000).unwrap();
            let want = WriteReply::Array(model.iter().cloned().map(WriteReply::Bulk).collect());
            prop_assert_eq!(got, want, "after op {} {:?} {} {}", op, e, x, y);
            if model.is_empty() {
                prop_assert!(m.0.is_empty() && m.1.is_empty(), "an empty list leaves nothing: {:?}", m.1);
            } else {
                let c = coll(&m, "l");
                prop_assert_eq!(c.size as usize, model.len());
                let keys: Vec<Vec<u8>> = m.1.keys().cloned().collect();
                let dense: Vec<Vec<u8>> = (0..c.size).map(|i| coll::list_key(c.id, c.head + i)).collect();
                prop_assert_eq!(keys, dense);
            }
        }
    }
}

fn set_members(m: &Map, key: &str) -> BTreeSet<Vec<u8>> {
    let q = Query::Sets(SetQuery::Combine { how: Combine::Inter, keys: vec![b(key)] });
    match query(&q, m, 1_000).unwrap() {
        WriteReply::Set(items) => items
            .into_iter()
            .map(|i| match i {
                WriteReply::Bulk(v) => v,
                other => panic!("{other:?}"),
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

use std::collections::BTreeSet;

proptest! {
    /// Any sequence of set writes over two keys leaves each set what a `BTreeSet` model holds,
    /// SPOP pops distinct members it held, and the element space holds exactly the live
    /// members (nothing leaks when a set empties or is overwritten).
    #[test]
    fn set_writes_match_a_model(ops in proptest::collection::vec((0u8..6, 0u8..2, proptest::collection::vec(b'a'..b'f', 1..4), 0u64..4), 1..40)) {
        let mut m = Map::default();
        let mut model: [BTreeSet<Vec<u8>>; 2] = Default::default();
        let keys = ["s0", "s1"];
        for (op, which, members, n) in ops {
            let (key, other) = (keys[which as usize], keys[1 - which as usize]);
            let w = which as usize;
            let members: Vec<Vec<u8>> = members.iter().map(|c| vec![*c]).collect();
            match op {
                0 => {
                    let added = m.run(Command::Sets(SetOp::Add { key: b(key), members: members.clone() }));
                    let before = model[w].len();
                    model[w].extend(members);
                    prop_assert_eq!(added, WriteReply::Integer((model[w].len() - before) as i64));
                }
                1 => {
                    m.run(Command::Sets(SetOp::Rem { key: b(key), members: members.clone() }));
                    for x in &members {
                        model[w].remove(x);
                    }
                }
                2 => {
                    let reply = m.run(Command::Sets(SetOp::Pop { key: b(key), count: Some(n) }));
                    let WriteReply::Set(popped) = reply else { panic!("{reply:?}") };
                    prop_assert_eq!(popped.len() as u64, n.min(model[w].len() as u64));
                    for p in popped {
                        let WriteReply::Bulk(p) = p else { panic!() };
                        prop_assert!(model[w].remove(&p), "popped {:?}, not a member", p);
                    }
                }
                3 => {
                    let x = members[0].clone();
                    m.run(Command::Sets(SetOp::Move { from: b(key), to: b(other), member: x.clone() }));
                    if model[w].remove(&x) {
                        model[1 - w].insert(x);
                    }
                }
                _ => {
                    let how = [Combine::Inter, Combine::Union, Combine::Diff][n as usize % 3];
                    m.run(Command::Sets(SetOp::Store { how, dest: b(key), keys: vec![b(key), b(other)] }));
                    let (a, o) = (model[w].clone(), model[1 - w].clone());
                    model[w] = match how {
                        Combine::Inter => a.intersection(&o).cloned().collect(),
                        Combine::Union => a.union(&o).cloned().collect(),
                        Combine::Diff => a.difference(&o).cloned().collect(),
                    };
                }
            }
            for (i, k) in keys.iter().enumerate() {
                prop_assert_eq!(set_members(&m, k), model[i].clone(), "{} after op {}", k, op);
            }
            prop_assert_eq!(m.1.len(), model[0].len() + model[1].len(), "element records");
        }
    }
}

#[test]
fn spop_picks_the_same_members_on_every_replica_of_an_entry() {
    let mut m = Map::default();
    let members: Vec<Vec<u8>> = (0..2000).map(|i| format!("m{i}").into_bytes()).collect();
    m.run(Command::Sets(SetOp::Add { key: b("s"), members }));
    let pop = Command::Sets(SetOp::Pop { key: b("s"), count: Some(3) });
    let at = |index| apply(&pop, &m, &mut Ctx::new(1_000, index, 2)).unwrap();
    assert_eq!(at(10), at(10), "the same entry: the same members");
    assert_ne!(at(10).1, at(11).1, "another entry: (almost surely) others");
    let mut reseeded = Ctx::new(1_000, 10, 2);
    reseeded.reseed(7);
    assert_ne!(apply(&pop, &m, &mut reseeded).unwrap().1, at(10).1);
    // A big set is sampled by seeking: the picks are still distinct members.
    let WriteReply::Set(picked) = at(12).1 else { panic!() };
    let distinct: BTreeSet<String> = picked.iter().map(|p| format!("{p:?}")).collect();
    assert_eq!(distinct.len(), 3);
}

fn zrange_all(m: &Map, key: &str) -> Vec<(Vec<u8>, f64)> {
    let spec = zsets::RangeSpec { range: zsets::Range::Rank(0, -1), rev: false, limit: None };
    let q = Query::ZSet(ZQuery::Range { key: b(key), spec, with_scores: true });
    match query(&q, m, 1_000).unwrap() {
        WriteReply::Pairs(p) => p
            .into_iter()
            .map(|(k, v)| match (k, v) {
                (WriteReply::Bulk(k), WriteReply::Double(s)) => (k, f64::from_bits(s)),
                other => panic!("{other:?}"),
            })
            .collect(),
        WriteReply::Array(a) if a.is_empty() => Vec::new(),
        other => panic!("{other:?}"),
    }
}

proptest! {
    /// Any sequence of sorted set writes leaves the members and scores a map model holds, in
    /// (score, member) order, with exactly two element records per member.
    #[test]
    fn zset_writes_match_a_model(ops in proptest::collection::vec((0u8..6, b'a'..b'f', -3i64..4, 0u8..4), 1..40)) {
        let mut m = Map::default();
        let mut model: BTreeMap<Vec<u8>, f64> = BTreeMap::new();
        for (op, member, x, flag) in ops {
            let member = vec![member];
            let score = x as f64 / 2.0;
            match op {
                0 | 1 => {
                    let (exist, cmp) = match flag {
                        1 => (zsets::Exist::New, zsets::Cmp::Any),
                        2 => (zsets::Exist::Old, zsets::Cmp::Greater),
                        3 => (zsets::Exist::Any, zsets::Cmp::Less),
                        _ => (zsets::Exist::Any, zsets::Cmp::Any),
                    };
                    let incr = op == 1;
                    m.run(Command::ZSet(ZOp::Add { key: b("z"), pairs: vec![(score.to_bits(), member.clone())], exist, cmp, ch: false, incr }));
                    let old = model.get(&member).copied();
                    let new = match (old, incr) { (Some(o), true) => o + score, _ => score };
                    let ok = match old {
                        None => exist != zsets::Exist::Old,
                        Some(o) => exist != zsets::Exist::New && match cmp {
                            zsets::Cmp::Any => true,
                            zsets::Cmp::Greater => new > o,
                            zsets::Cmp::Less => new < o,
                        },
                    };
                    if ok {
                        model.insert(member, new);
                    }
                }
                2 => {
                    m.run(Command::ZSet(ZOp::Rem { key: b("z"), members: vec![member.clone()] }));
                    model.remove(&member);
                }
                3 | 4 => {
                    let max = op == 4;
                    let n = flag as u64;
                    m.run(Command::ZSet(ZOp::Pop { key: b("z"), max, count: Some(n) }));
                    let mut order: Vec<(Vec<u8>, f64)> = model.clone().into_iter().collect();
                    order.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap().then(a.0.cmp(&b.0)));
                    if max { order.reverse(); }
                    for (k, _) in order.into_iter().take(n as usize) {
                        model.remove(&k);
                    }
                }
                _ => {
                    let lo = zsets::ScoreBound { score: score.to_bits(), exclusive: flag % 2 == 1 };
                    let hi = zsets::ScoreBound { score: (score + 1.0).to_bits(), exclusive: flag >= 2 };
                    m.run(Command::ZSet(ZOp::RemRange { key: b("z"), range: zsets::Range::Score(lo, hi) }));
                    model.retain(|_, s| {
                        let above = if lo.exclusive { *s > score } else { *s >= score };
                        let below = if hi.exclusive { *s < score + 1.0 } else { *s <= score + 1.0 };
                        !(above && below)
                    });
                }
            }
            let mut want: Vec<(Vec<u8>, f64)> = model.clone().into_iter().collect();
            want.sort_by(|a, b| a.1.partial_cmp(&b.1).unwrap().then(a.0.cmp(&b.0)));
            prop_assert_eq!(zrange_all(&m, "z"), want);
            prop_assert_eq!(m.1.len(), 2 * model.len());
            if model.is_empty() {
                prop_assert!(m.0.is_empty());
            }
        }
    }
}

#[test]
fn score_order_keys_sort_as_numbers_and_scores_print_as_redis_7_0() {
    let scores = [
        f64::NEG_INFINITY,
        -1e300,
        -2.5,
        -1.0,
        -f64::MIN_POSITIVE,
        0.0,
        5e-324,
        0.1,
        1.0,
        2.5,
        1e300,
        f64::INFINITY,
    ];
    for w in scores.windows(2) {
        assert!(zsets::ord(w[0]) < zsets::ord(w[1]), "{} < {}", w[0], w[1]);
        assert_eq!(zsets::unord(zsets::ord(w[0])), w[0]);
    }
    assert_eq!(zsets::ord(-0.0), zsets::ord(0.0));
    for (v, text) in [
        (0.1, "0.10000000000000001"),
        (1.0, "1"),
        (2.5, "2.5"),
        (-3.0, "-3"),
        (1e17, "1e+17"),
        (1e16, "10000000000000000"),
        (0.0001, "0.0001"),
        (0.00001, "1.0000000000000001e-05"),
        (123456789.123, "123456789.123"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
        (1.0 / 3.0, "0.33333333333333331"),
    ] {
        assert_eq!(zsets::format_score(v), text, "{v}");
    }
}

#[test]
fn a_walk_counts_the_elements_a_read_takes() {
    use super::Walk;
    assert_eq!(Walk::Ranks(0, 99).elements(50_000), 100);
    assert_eq!(Walk::Ranks(0, -1).elements(10), 10);
    assert_eq!(Walk::Ranks(-2, -1).elements(10), 2);
    assert_eq!(Walk::Ranks(5, 2).elements(10), 0);
    assert_eq!(Walk::Ranks(3, 3).elements(10), 1);
    assert_eq!(Walk::Ranks(0, 99).elements(0), 0);
    assert_eq!(Walk::Ranks(-100, 5).elements(3), 3);
    assert_eq!(Walk::Ranks(i64::MIN, i64::MAX).elements(4), 4);
    assert_eq!(Walk::UpTo(10).elements(5), 5);
    assert_eq!(Walk::Whole.elements(7), 7);
}

#[test]
fn a_query_names_the_collections_it_walks_and_how_far() {
    use super::zsets::{Range, RangeSpec, ScoreBound};
    use super::{Combine, Query, Sort, Walk};
    let k = |s: &str| s.as_bytes().to_vec();
    let walks = |q: Query| -> Vec<(Vec<u8>, Walk)> {
        q.walks().into_iter().map(|(key, w)| (key.to_vec(), w)).collect()
    };
    let whole = |s: &str| vec![(k(s), Walk::Whole)];
    assert_eq!(walks(Query::HGetAll { key: k("h"), fields: true, values: true }), whole("h"));
    assert_eq!(walks(Query::HScan { key: k("h"), pattern: None }), whole("h"));
    assert_eq!(
        walks(Query::List(ListQuery::Range { key: k("l"), start: 0, stop: 99 })),
        vec![(k("l"), Walk::Ranks(0, 99))]
    );
    assert_eq!(
        walks(Query::List(ListQuery::Pos {
            key: k("l"),
            element: k("x"),
            rank: 1,
            count: None,
            maxlen: 0
        })),
        whole("l")
    );
    let two = vec![(k("a"), Walk::Whole), (k("b"), Walk::Whole)];
    assert_eq!(
        walks(Query::Sets(SetQuery::Combine { how: Combine::Inter, keys: vec![k("a"), k("b")] })),
        two
    );
    assert_eq!(
        walks(Query::Sets(SetQuery::InterCard { keys: vec![k("a"), k("b")], limit: 0 })),
        two
    );
    assert_eq!(walks(Query::Sets(SetQuery::Scan { key: k("s"), pattern: None })), whole("s"));
    let range = |range: Range, limit| {
        Query::ZSet(ZQuery::Range {
            key: k("z"),
            spec: RangeSpec { range, rev: false, limit },
            with_scores: false,
        })
    };
    let all = ScoreBound { score: f64::NEG_INFINITY.to_bits(), exclusive: false };
    let top = ScoreBound { score: f64::INFINITY.to_bits(), exclusive: false };
    assert_eq!(walks(range(Range::Rank(2, 5), None)), vec![(k("z"), Walk::Ranks(2, 5))]);
    assert_eq!(walks(range(Range::Score(all, top), Some((10, 5)))), vec![(k("z"), Walk::UpTo(15))]);
    assert_eq!(walks(range(Range::Score(all, top), Some((0, -1)))), whole("z"));
    assert_eq!(walks(range(Range::Score(all, top), None)), whole("z"));
    assert_eq!(
        walks(Query::ZSet(ZQuery::Rank { key: k("z"), member: k("m"), rev: false })),
        whole("z")
    );
    assert_eq!(walks(Query::ZSet(ZQuery::Scan { key: k("z"), pattern: None })), whole("z"));
    assert_eq!(walks(Query::ZSet(ZQuery::InterCard { keys: vec![k("a"), k("b")], limit: 0 })), two);
    let combination = super::zsets::Combination {
        how: Combine::Union,
        keys: vec![k("a"), k("b")],
        options: vec![],
    };
    assert_eq!(walks(Query::ZSet(ZQuery::Combine(combination))), two);
    let sort = Sort {
        key: k("l"),
        by: None,
        nosort: false,
        limit: None,
        get: vec![],
        desc: false,
        alpha: false,
        store: None,
    };
    assert_eq!(walks(Query::Sort(sort)), whole("l"));
    assert!(walks(Query::Get(k("g"))).is_empty());
}
