//! A linearizability checker for client histories of the KV store.
//!
//! Every command touches exactly one key, and linearizability is *local* (P-compositional,
//! Herlihy & Wing): a history is linearizable iff its restriction to each key is. So the history
//! is split by key and each key is checked on its own, against a model of one Redis key:
//! `Option<Val>`, a string, a list, a set or a sorted set (None: the key does not exist),
//! initially None. A multi-element write (RPUSH, SADD or ZADD of two) is one operation with one
//! atomic effect, so a reader that sees part of it fails the check; so is MULTI SET DEL EXEC
//! (`Op::Replace`), which leaves the key gone whatever it held. SPOP is the one command
//! whose effect the client cannot predict (the server chooses the member): the model lets it
//! pop any member, and the search tries each where its answer was lost (`outcomes`).
//!
//! Each key is checked with Wing & Gong's search as refined by Lowe ("just-in-time"
//! linearization) and implemented by Porcupine (`checker.go`): call and return events sorted by
//! time in a doubly linked list; an operation is linearized ("lifted" out of the list) when its
//! call is reached and the model accepts its output, and the search backtracks when it reaches
//! the return of an operation it has not linearized. A cache of visited (set of linearized
//! operations, model state) configurations prunes revisits; it is what makes the search fast.
//!
//! Indeterminate operations (`Ret::Unknown`: timed out, connection lost) are handled as Knossos
//! and Porcupine do: they return at time +infinity and any output is accepted, so they may take
//! effect at any point after their call or, equivalently to being linearized after everything
//! else, never. An indeterminate read (GET, LRANGE, SMEMBERS, SCARD, ZRANGE) has no effect and
//! is dropped.
//! Indeterminate operations are what makes a search expensive (each stays pending forever, and
//! a failing history makes the search try every combination of them), so a few reductions, each
//! keeping an equivalent linearization in the search, cut them down: a failed configuration
//! prunes those that differ only by having applied more indeterminate operations (`Visited`),
//! and identical ones, no-ops and writes overwritten before anything saw them are not tried
//! (`Search::run`).
//!
//! The search is bounded by a step budget per key: a key whose budget runs out is reported as
//! `Unknown`, never as a failure, and never runs forever. When a key is not linearizable, its
//! history is shrunk to a 1-minimal failing history about the operation that broke it (see
//! `Failure`), which is usually a handful of operations a human can read.

use crate::history::{Op, Operation, Ret};
use raft_kv_core::kv::parse_i64;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};

/// Limits of a check. The defaults keep a check of a few thousand operations well under a
/// second while leaving ample room for the usual (linear-time) search of a correct history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    /// Search steps allowed per key (and per shrinking attempt) before giving up with
    /// `KeyVerdict::Unknown`. A step is one visit of an event in the search.
    pub steps_per_key_max: u64,
    /// Checks allowed while shrinking a failing key's history. When they run out, the history
    /// found so far is reported: it still fails, but may not be minimal.
    pub shrink_attempts_max: u64,
    /// Search steps allowed for shrinking in total, likewise.
    pub shrink_steps_max: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            steps_per_key_max: 2_000_000,
            shrink_attempts_max: 5_000,
            shrink_steps_max: 50_000_000,
        }
    }
}

/// The outcome of checking one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    /// Some order of the operations, consistent with real time, explains every output.
    Linearizable,
    /// No such order exists: the store misbehaved (or the history was recorded wrongly).
    NotLinearizable,
    /// The step budget ran out before the search finished.
    Unknown,
}

/// A key whose history is not linearizable, with a small history that shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub key: String,
    /// A small failing sub-history of the key, in id order, about one *culprit* operation: the
    /// first whose completion made the history fail. The rest of it is linearizable; with the
    /// culprit it is not. Operations that were still running when the culprit completed appear
    /// as indeterminate (`Ret::Unknown`, no completion), as they were checked.
    ///
    /// Unless `minimal` is false it is 1-minimal: removing any one operation makes it
    /// linearizable, or moves the failure away from the culprit, or leaves an operation whose
    /// output needs an earlier write (e.g. a GET of a value) with no operation that could have
    /// made it (such an operation fails on its own, and allowing that would shrink every stale
    /// read to the lone read, hiding the writes that matter).
    pub history: Vec<Operation>,
    /// False when shrinking stopped on `shrink_attempts_max` or `shrink_steps_max` before
    /// reaching 1-minimality, or when the history could not be shown to fail again.
    pub minimal: bool,
}

/// The outcome of checking a whole history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Distinct keys in the history.
    pub keys_checked: usize,
    /// The first failing key (in key order) with its shrunk history.
    pub failure: Option<Failure>,
    /// Every key whose history is not linearizable, in key order.
    pub failing_keys: Vec<String>,
    /// Keys whose search ran out of budget: not known to be linearizable, not failures.
    pub unknown_keys: Vec<String>,
    /// Search steps spent in total, shrinking included.
    pub steps: u64,
}

impl Report {
    /// True when no key was found non-linearizable. Keys that ran out of budget are reported in
    /// `unknown_keys` but do not fail the check: a budget is a limit of the checker, not
    /// evidence against the store.
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} keys checked in {} steps, {} not linearizable, {} unknown",
            self.keys_checked,
            self.steps,
            self.failing_keys.len(),
            self.unknown_keys.len()
        )?;
        if let Some(failure) = &self.failure {
            let minimal = if failure.minimal { "minimal" } else { "shrunk, not minimal" };
            writeln!(f, "\nkey {:?} is not linearizable; {minimal} failing history:", failure.key)?;
            for op in &failure.history {
                writeln!(f, "  {op}")?;
            }
        }
        Ok(())
    }
}

/// Checks a whole history: splits it by key and checks each key independently (in key order,
/// so the report is deterministic). The first failing key is shrunk to a minimal history.
pub fn check(history: &[Operation], opts: &CheckOptions) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let mut report = Report { keys_checked: by_key.len(), ..Report::default() };
    for (key, ops) in by_key {
        let (verdict, steps) = check_refs(&ops, opts);
        report.steps = report.steps.saturating_add(steps);
        match verdict {
            KeyVerdict::Linearizable => {}
            KeyVerdict::Unknown => report.unknown_keys.push(key.to_string()),
            KeyVerdict::NotLinearizable => {
                report.failing_keys.push(key.to_string());
                if report.failure.is_none() {
                    let (history, minimal, steps) = shrink(&ops, opts);
                    report.steps = report.steps.saturating_add(steps);
                    report.failure = Some(Failure { key: key.to_string(), history, minimal });
                }
            }
        }
    }
    report
}

/// Checks the operations of one key against the model, returning the verdict and the search
/// steps spent. The operations' `key` fields are not looked at: all of them are taken to act on
/// the same key.
pub fn check_key(ops: &[Operation], opts: &CheckOptions) -> (KeyVerdict, u64) {
    let refs: Vec<&Operation> = ops.iter().collect();
    check_refs(&refs, opts)
}

/// Shrinks a non-linearizable history of one key to a 1-minimal failing one (see `Failure` and
/// `shrink`). Returns the shrunk history in id order, whether it is 1-minimal, and the steps
/// spent. A history not shown to fail is returned whole, with `false`.
pub fn minimize(ops: &[Operation], opts: &CheckOptions) -> (Vec<Operation>, bool, u64) {
    let refs: Vec<&Operation> = ops.iter().collect();
    shrink(&refs, opts)
}

fn check_refs(ops: &[&Operation], opts: &CheckOptions) -> (KeyVerdict, u64) {
    let relevant: Vec<&Operation> =
        ops.iter().copied().filter(|op| !is_indeterminate_read(op)).collect();
    Search::new(&relevant).run(opts.steps_per_key_max)
}

/// An indeterminate read neither changes the key nor constrains it.
fn is_indeterminate_read(op: &Operation) -> bool {
    matches!(op.op, Op::Get | Op::LRange | Op::SMembers | Op::SCard | Op::ZRange)
        && op.ret == Ret::Unknown
}

// ---------------------------------------------------------------------------------------------
// Shrinking

/// Shrinks a failing history of one key to a small one that shows the failure. Removing
/// operations from a non-linearizable history can create failures of its own (drop the INCR
/// that explains the next INCR's result), so plain greedy removal tends to end on some
/// unrelated inconsistency it created. Instead:
///
/// 1. Find the *culprit*: the operation whose completion makes the history fail. Cutting the
///    history at time T (operations called by T, those still running at T made indeterminate)
///    gives a history that is linearizable whenever the whole one is, and that fails for every
///    T after the first that fails; a binary search finds that first T, and the culprit is
///    the operation completing at T.
/// 2. Remove operations greedily (chunks first, as in delta debugging, then single ones to a
///    fixpoint; from the end backwards, so readers go before the writes they depend on),
///    keeping a removal only if the rest still fails while the rest without the culprit is
///    linearizable: the failure stays the culprit's.
///
/// A removal is also refused if it leaves an operation whose output depends on an earlier
/// write (a GET of a value, an INCR past 1 or failing, an APPEND onto something, a DEL of an
/// existing key, a push onto a list, a pop or LRANGE of an element, a member of a set or sorted
/// set popped, read, removed or found there) without any operation that could have made that
/// write before it, when it had one to begin with. Otherwise a stale read
/// would shrink to the lone read (of a value "never written"), hiding the writes that show what
/// went wrong.
fn shrink(ops: &[&Operation], opts: &CheckOptions) -> (Vec<Operation>, bool, u64) {
    let mut sorted: Vec<&Operation> =
        ops.iter().copied().filter(|op| !is_indeterminate_read(op)).collect();
    sorted.sort_by_key(|op| op.id);
    let mut steps = 0;
    let Some((base, culprit)) = shortest_failing_cut(&sorted, opts, &mut steps) else {
        let mut whole: Vec<Operation> = ops.iter().map(|&op| op.clone()).collect();
        whole.sort_by_key(|op| op.id);
        return (whole, false, steps);
    };
    let refs: Vec<&Operation> = base.iter().collect();
    let mut shrinker = Shrinker::new(&refs, culprit, opts);
    shrinker.steps = steps;
    let mut current: Vec<usize> = (0..refs.len()).collect();
    let mut chunk = current.len() / 2;
    while chunk > 1 && !shrinker.exhausted() {
        current = shrinker.remove_chunks(current, chunk);
        chunk /= 2;
    }
    let minimal = shrinker.remove_singles(&mut current);
    let history = current.iter().map(|&i| base[i].clone()).collect();
    (history, minimal, shrinker.steps)
}

/// The history cut at `time`: operations called by then, those not complete by then made
/// indeterminate (they were still running).
fn cut(ops: &[&Operation], time: u64) -> Vec<Operation> {
    ops.iter()
        .filter(|op| op.call <= time)
        .map(|&op| {
            let mut op = op.clone();
            if return_time(&op) > time {
                op.ret = Ret::Unknown;
                op.complete = None;
            }
            op
        })
        .collect()
}

/// The shortest failing cut of a history (see `shrink`) and the index in it of the culprit,
/// or None if the history is not known to fail.
fn shortest_failing_cut(
    ops: &[&Operation],
    opts: &CheckOptions,
    steps: &mut u64,
) -> Option<(Vec<Operation>, Option<usize>)> {
    let mut fails = |history: &[Operation]| {
        let refs: Vec<&Operation> = history.iter().collect();
        let (verdict, spent) = Search::new(&refs).run(opts.steps_per_key_max);
        *steps = steps.saturating_add(spent);
        verdict == KeyVerdict::NotLinearizable
    };
    let mut times: Vec<u64> =
        ops.iter().filter(|op| op.ret != Ret::Unknown).map(|op| return_time(op)).collect();
    times.sort_unstable();
    times.dedup();
    let last = *times.last()?;
    if !fails(&cut(ops, last)) {
        return None;
    }
    // Invariant: the cut at times[high] fails; cuts before times[low] do not.
    let (mut low, mut high) = (0, times.len() - 1);
    while low < high {
        let mid = low + (high - low) / 2;
        if fails(&cut(ops, times[mid])) {
            high = mid;
        } else {
            low = mid + 1;
        }
    }
    let time = times[high];
    let base = cut(ops, time);
    // The culprit: an operation completing at `time` without which the cut is linearizable.
    let culprit = (0..base.len()).find(|&i| {
        base[i].ret != Ret::Unknown && return_time(&base[i]) == time && {
            let rest: Vec<Operation> = base
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, op)| op.clone())
                .collect();
            let refs: Vec<&Operation> = rest.iter().collect();
            let (verdict, spent) = Search::new(&refs).run(opts.steps_per_key_max);
            *steps = steps.saturating_add(spent);
            verdict == KeyVerdict::Linearizable
        }
    });
    Some((base, culprit))
}

struct Shrinker<'a, 'o> {
    ops: &'a [&'a Operation],
    /// The operation the failure is about (see `shrink`); None if it could not be determined,
    /// and then removals are only required to keep the history failing.
    culprit: Option<usize>,
    /// For each write an operation needs and has candidates for: the operation and the
    /// candidates (see `shrink`); an operation may need several (an LRANGE, each element's).
    needs: Vec<(usize, Vec<usize>)>,
    opts: &'o CheckOptions,
    attempts: u64,
    steps: u64,
}

impl<'a, 'o> Shrinker<'a, 'o> {
    fn new(ops: &'a [&'a Operation], culprit: Option<usize>, opts: &'o CheckOptions) -> Self {
        let needs = ops
            .iter()
            .enumerate()
            .flat_map(|(i, op)| {
                needs_of(op).into_iter().filter_map(move |need| {
                    let enablers: Vec<usize> = (0..ops.len())
                        .filter(|&w| {
                            w != i && ops[w].call <= return_time(op) && enables(ops[w], &need)
                        })
                        .collect();
                    (!enablers.is_empty()).then_some((i, enablers))
                })
            })
            .collect();
        Self { ops, culprit, needs, opts, attempts: 0, steps: 0 }
    }

    fn exhausted(&self) -> bool {
        self.attempts >= self.opts.shrink_attempts_max || self.steps >= self.opts.shrink_steps_max
    }

    fn verdict(&mut self, subset: &[usize]) -> KeyVerdict {
        let ops: Vec<&Operation> = subset.iter().map(|&i| self.ops[i]).collect();
        let (verdict, steps) = Search::new(&ops).run(self.opts.steps_per_key_max);
        self.steps = self.steps.saturating_add(steps);
        verdict
    }

    /// Whether `subset` (indices, ascending) is an acceptable shrink: it keeps the culprit and
    /// what its operations need, fails (a budget overrun counts as "no"), and is linearizable
    /// without the culprit.
    fn accepts(&mut self, subset: &[usize]) -> bool {
        let mut present = vec![false; self.ops.len()];
        for &i in subset {
            present[i] = true;
        }
        if self.culprit.is_some_and(|c| !present[c]) {
            return false;
        }
        let orphaned = self
            .needs
            .iter()
            .any(|(op, enablers)| present[*op] && !enablers.iter().any(|&w| present[w]));
        if orphaned {
            return false;
        }
        self.attempts += 1;
        if self.verdict(subset) != KeyVerdict::NotLinearizable {
            return false;
        }
        match self.culprit {
            Some(c) => {
                let without: Vec<usize> = subset.iter().copied().filter(|&i| i != c).collect();
                self.verdict(&without) == KeyVerdict::Linearizable
            }
            None => true,
        }
    }

    fn remove_chunks(&mut self, mut subset: Vec<usize>, chunk: usize) -> Vec<usize> {
        let mut end = subset.len();
        while end > 0 && !self.exhausted() {
            let start = end.saturating_sub(chunk);
            let candidate: Vec<usize> =
                subset[..start].iter().chain(&subset[end..]).copied().collect();
            if self.accepts(&candidate) {
                subset = candidate;
            }
            end = start;
        }
        subset
    }

    /// Removes single operations until none can be removed; false if attempts ran out first.
    fn remove_singles(&mut self, subset: &mut Vec<usize>) -> bool {
        loop {
            let mut removed = false;
            for i in (0..subset.len()).rev() {
                if self.exhausted() {
                    return false;
                }
                let mut candidate = subset.clone();
                candidate.remove(i);
                if self.accepts(&candidate) {
                    *subset = candidate;
                    removed = true;
                }
            }
            if !removed {
                return true;
            }
        }
    }
}

/// What an operation's output says the key held before it, beyond "absent".
enum Need {
    /// Exactly this value (a GET's result; the value before an INCR's result).
    Value(String),
    /// A value of this many bytes (the value an APPEND appended to).
    Length(usize),
    /// A value that is not an integer below i64::MAX (INCR failed).
    NonInteger,
    /// Some value (DEL deleted a key, a push found a list, SCARD counted members).
    Present,
    /// A collection holding this element (a list's, popped or read) or member (a set's or a
    /// sorted set's, popped, read, removed, or already there for an add): only a write that
    /// adds it makes one.
    Element(String),
}

/// The writes an operation's output depends on, where absence does not explain it.
fn needs_of(op: &Operation) -> Vec<Need> {
    match (&op.op, &op.ret) {
        (Op::Get | Op::GetSet(_), Ret::Get(Some(v))) => vec![Need::Value(v.clone())],
        (Op::Incr, Ret::Incr(Ok(n))) if *n != 1 => vec![Need::Value(n.wrapping_sub(1).to_string())],
        (Op::Incr, Ret::Incr(Err(()))) => vec![Need::NonInteger],
        (Op::Append(suffix), Ret::Append(len)) => usize::try_from(*len)
            .ok()
            .and_then(|len| len.checked_sub(suffix.len()))
            .filter(|&before| before > 0)
            .map(Need::Length)
            .into_iter()
            .collect(),
        (Op::Del, Ret::Del(1)) => vec![Need::Present],
        (Op::LPush(_) | Op::RPush(_), Ret::Int(n)) if *n > 1 => vec![Need::Present],
        (Op::RPush2(..), Ret::Int(n)) if *n > 2 => vec![Need::Present],
        (Op::LPop | Op::RPop, Ret::Bulk(Some(e))) => vec![Need::Element(e.clone())],
        (Op::LRange, Ret::Items(items)) => items.iter().cloned().map(Need::Element).collect(),
        (Op::SAdd(m) | Op::ZAdd(m, _), Ret::Int(0)) => vec![Need::Element(m.clone())],
        (Op::SAdd2(a, b) | Op::ZAdd2(a, _, b, _), Ret::Int(n)) if a != b && *n < 2 => {
            vec![Need::Present]
        }
        (Op::SRem(m) | Op::ZRem(m), Ret::Int(1)) => vec![Need::Element(m.clone())],
        (Op::SPop, Ret::Bulk(Some(m))) => vec![Need::Element(m.clone())],
        (Op::SMembers, Ret::Members(members)) => {
            members.iter().cloned().map(Need::Element).collect()
        }
        (Op::SCard, Ret::Int(n)) if *n > 0 => vec![Need::Present],
        (Op::ZIncrBy(m, by), Ret::Bulk(Some(score))) if *score != by.to_string() => {
            vec![Need::Element(m.clone())]
        }
        (Op::ZPopMin | Op::ZRange, Ret::Scored(pairs)) => {
            pairs.iter().map(|(m, _)| Need::Element(m.clone())).collect()
        }
        _ => Vec::new(),
    }
}

/// Whether `op` could have left the key in a state that meets `need` (an over-approximation).
fn enables(op: &Operation, need: &Need) -> bool {
    let leaves = |value: &str| match need {
        Need::Value(v) => v == value,
        Need::Length(n) => *n == value.len(),
        Need::NonInteger => parse_i64(value.as_bytes()).is_none_or(|n| n == i64::MAX),
        Need::Present => true,
        Need::Element(_) => false,
    };
    match (&op.op, &op.ret) {
        (Op::Set(v) | Op::GetSet(v), _) => leaves(v),
        (Op::Incr, Ret::Incr(Ok(n))) => leaves(&n.to_string()),
        // Some integer: any length up to 20, never a non-integer.
        (Op::Incr, Ret::Unknown) => match need {
            Need::Value(v) => parse_i64(v.as_bytes()).is_some(),
            Need::Length(n) => *n <= 20,
            Need::NonInteger | Need::Element(_) => false,
            Need::Present => true,
        },
        (Op::Append(suffix), Ret::Append(len)) => match need {
            Need::Value(v) => v.ends_with(suffix.as_str()) && usize::try_from(*len) == Ok(v.len()),
            Need::Length(n) => usize::try_from(*len) == Ok(*n),
            Need::NonInteger | Need::Present => true,
            Need::Element(_) => false,
        },
        (Op::Append(suffix), Ret::Unknown) => match need {
            Need::Value(v) => v.ends_with(suffix.as_str()),
            Need::Length(n) => *n >= suffix.len(),
            Need::NonInteger | Need::Present => true,
            Need::Element(_) => false,
        },
        (Op::LPush(v) | Op::RPush(v) | Op::SAdd(v) | Op::ZAdd(v, _) | Op::ZIncrBy(v, _), _) => {
            match need {
                Need::Element(e) => e == v,
                Need::Present => true,
                Need::Value(_) | Need::Length(_) | Need::NonInteger => false,
            }
        }
        (Op::RPush2(a, b) | Op::SAdd2(a, b) | Op::ZAdd2(a, _, b, _), _) => match need {
            Need::Element(e) => e == a || e == b,
            Need::Present => true,
            Need::Value(_) | Need::Length(_) | Need::NonInteger => false,
        },
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The model: one Redis key

/// What a key holds. Hash fields are strings, each modelled under a key of its own (see the
/// workload). A collection is never empty: Redis deletes a list, a set or a sorted set when its
/// last element goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Val {
    Str(String),
    /// Head first.
    List(VecDeque<String>),
    Set(BTreeSet<String>),
    /// Member to score. Integer scores only, as the workload sends: Redis keeps scores as
    /// doubles, which hold these exactly and which it writes as integers ("3", "-2").
    ZSet(BTreeMap<String, i64>),
}

/// How an operation changes the key.
#[derive(Debug, PartialEq, Eq)]
enum Effect {
    Unchanged,
    Becomes(Option<Val>),
}

/// Every way `op` can go on a key holding `value`, as Redis runs it: the new contents and the
/// reply the client should see. One way (`apply`), except SPOP on a set: the server chooses
/// the member (raft-kv by the log entry, so that its replicas agree), which the client cannot
/// know beforehand, so popping any member is correct, and the member answered is the one gone.
fn outcomes(value: Option<&Val>, op: &Op) -> Vec<(Effect, Ret)> {
    match (op, value) {
        (Op::SPop, Some(Val::Set(set))) => set.iter().map(|m| spop(set, m)).collect(),
        _ => vec![apply(value, op)],
    }
}

/// SPOP of `member` from `set`.
fn spop(set: &BTreeSet<String>, member: &str) -> (Effect, Ret) {
    let mut rest = set.clone();
    rest.remove(member);
    let value = (!rest.is_empty()).then_some(Val::Set(rest));
    (Effect::Becomes(value), Ret::Bulk(Some(member.to_string())))
}

/// Applies `op` to a key holding `value`, exactly as Redis would: the new contents and the
/// reply the client should see. A command of one type on a key of another answers WRONGTYPE
/// and changes nothing; SET and DEL (and so MULTI SET DEL EXEC) take a key of any type.
/// (GETSET on a list is refused, as GETSET and SET ... GET are; its MULTI form would set, but
/// the workload sends GETSET to string keys only.) SPOP pops the first member here; `outcomes`
/// gives every choice.
fn apply(value: Option<&Val>, op: &Op) -> (Effect, Ret) {
    // The key as each type (absent: empty); None where it holds another type.
    let (string, list, set, zset) = match value {
        None => (Some(None), Some(VecDeque::new()), Some(BTreeSet::new()), Some(BTreeMap::new())),
        Some(Val::Str(s)) => (Some(Some(s.as_str())), None, None, None),
        Some(Val::List(l)) => (None, Some(l.clone()), None, None),
        Some(Val::Set(s)) => (None, None, Some(s.clone()), None),
        Some(Val::ZSet(z)) => (None, None, None, Some(z.clone())),
    };
    let wrong_type = (Effect::Unchanged, Ret::WrongType);
    let count = |n: usize| Ret::Int(i64::try_from(n).unwrap_or(i64::MAX));
    let set_becomes =
        |set: BTreeSet<String>| Effect::Becomes((!set.is_empty()).then_some(Val::Set(set)));
    let zset_becomes = |zset: BTreeMap<String, i64>| {
        Effect::Becomes((!zset.is_empty()).then_some(Val::ZSet(zset)))
    };
    // A sorted set's members by (score, member), as ZRANGE orders them.
    let by_score = |zset: &BTreeMap<String, i64>| {
        let mut pairs: Vec<(String, i64)> = zset.iter().map(|(m, s)| (m.clone(), *s)).collect();
        pairs.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        pairs
    };
    let scored = |pairs: Vec<(String, i64)>| {
        Ret::Scored(pairs.into_iter().map(|(m, s)| (m, s.to_string())).collect())
    };
    let becomes_string = |s: String| Effect::Becomes(Some(Val::Str(s)));
    let pushed = |list: VecDeque<String>| {
        let len = i64::try_from(list.len()).unwrap_or(i64::MAX);
        (Effect::Becomes(Some(Val::List(list))), Ret::Int(len))
    };
    let popped = |list: VecDeque<String>, element: Option<String>| match element {
        None => (Effect::Unchanged, Ret::Bulk(None)),
        Some(e) if list.is_empty() => (Effect::Becomes(None), Ret::Bulk(Some(e))),
        Some(e) => (Effect::Becomes(Some(Val::List(list))), Ret::Bulk(Some(e))),
    };
    match op {
        Op::Set(v) => (becomes_string(v.clone()), Ret::Set),
        Op::Del if value.is_some() => (Effect::Becomes(None), Ret::Del(1)),
        Op::Del => (Effect::Unchanged, Ret::Del(0)),
        // The SET makes the key a string (the one the DEL deletes): EXEC answers [OK, 1].
        Op::Replace if value.is_some() => (Effect::Becomes(None), Ret::Replaced),
        Op::Replace => (Effect::Unchanged, Ret::Replaced),
        Op::Get => {
            let Some(old) = string else { return wrong_type };
            (Effect::Unchanged, Ret::Get(old.map(str::to_string)))
        }
        Op::GetSet(v) => {
            let Some(old) = string else { return wrong_type };
            (becomes_string(v.clone()), Ret::Get(old.map(str::to_string)))
        }
        Op::Incr => {
            let Some(old) = string else { return wrong_type };
            let current = match old {
                None => Some(0),
                Some(v) => parse_i64(v.as_bytes()),
            };
            match current.and_then(|n| n.checked_add(1)) {
                Some(n) => (becomes_string(n.to_string()), Ret::Incr(Ok(n))),
                None => (Effect::Unchanged, Ret::Incr(Err(()))),
            }
        }
        Op::Append(suffix) => {
            let Some(old) = string else { return wrong_type };
            let mut new = old.unwrap_or_default().to_string();
            new.push_str(suffix);
            let len = i64::try_from(new.len()).unwrap_or(i64::MAX);
            (becomes_string(new), Ret::Append(len))
        }
        Op::LPush(v) => {
            let Some(mut list) = list else { return wrong_type };
            list.push_front(v.clone());
            pushed(list)
        }
        Op::RPush(v) => {
            let Some(mut list) = list else { return wrong_type };
            list.push_back(v.clone());
            pushed(list)
        }
        Op::RPush2(a, b) => {
            let Some(mut list) = list else { return wrong_type };
            list.push_back(a.clone());
            list.push_back(b.clone());
            pushed(list)
        }
        Op::LPop => {
            let Some(mut list) = list else { return wrong_type };
            let element = list.pop_front();
            popped(list, element)
        }
        Op::RPop => {
            let Some(mut list) = list else { return wrong_type };
            let element = list.pop_back();
            popped(list, element)
        }
        Op::LRange => {
            let Some(list) = list else { return wrong_type };
            (Effect::Unchanged, Ret::Items(list.into()))
        }
        Op::SAdd(m) => {
            let Some(mut set) = set else { return wrong_type };
            let added = usize::from(set.insert(m.clone()));
            (set_becomes(set), count(added))
        }
        Op::SAdd2(a, b) => {
            let Some(mut set) = set else { return wrong_type };
            let added = usize::from(set.insert(a.clone())) + usize::from(set.insert(b.clone()));
            (set_becomes(set), count(added))
        }
        Op::SRem(m) => {
            let Some(mut set) = set else { return wrong_type };
            let removed = usize::from(set.remove(m));
            (set_becomes(set), count(removed))
        }
        Op::SPop => {
            let Some(set) = set else { return wrong_type };
            match set.first() {
                Some(first) => spop(&set, first),
                None => (Effect::Unchanged, Ret::Bulk(None)),
            }
        }
        Op::SMembers => {
            let Some(set) = set else { return wrong_type };
            (Effect::Unchanged, Ret::Members(set.into_iter().collect()))
        }
        Op::SCard => {
            let Some(set) = set else { return wrong_type };
            (Effect::Unchanged, count(set.len()))
        }
        Op::ZAdd(m, score) => {
            let Some(mut zset) = zset else { return wrong_type };
            let added = usize::from(zset.insert(m.clone(), *score).is_none());
            (zset_becomes(zset), count(added))
        }
        Op::ZAdd2(a, x, b, y) => {
            // Pair by pair, as Redis does: a member given twice counts once, the last score.
            let Some(mut zset) = zset else { return wrong_type };
            let added = usize::from(zset.insert(a.clone(), *x).is_none())
                + usize::from(zset.insert(b.clone(), *y).is_none());
            (zset_becomes(zset), count(added))
        }
        Op::ZIncrBy(m, by) => {
            let Some(mut zset) = zset else { return wrong_type };
            // The workload's scores stay far from i64's limits (and from 2^53).
            let score = zset.get(m).copied().unwrap_or(0).saturating_add(*by);
            zset.insert(m.clone(), score);
            (zset_becomes(zset), Ret::Bulk(Some(score.to_string())))
        }
        Op::ZPopMin => {
            let Some(mut zset) = zset else { return wrong_type };
            let Some((member, score)) = by_score(&zset).into_iter().next() else {
                return (Effect::Unchanged, Ret::Scored(Vec::new()));
            };
            zset.remove(&member);
            (zset_becomes(zset), scored(vec![(member, score)]))
        }
        Op::ZRange => {
            let Some(zset) = zset else { return wrong_type };
            (Effect::Unchanged, scored(by_score(&zset)))
        }
        Op::ZRem(m) => {
            let Some(mut zset) = zset else { return wrong_type };
            let removed = usize::from(zset.remove(m).is_some());
            (zset_becomes(zset), count(removed))
        }
    }
}

/// Key values, interned so that the search handles states as small integers.
struct States {
    values: Vec<Option<Val>>,
    ids: HashMap<Option<Val>, usize>,
}

/// The id of the absent key, the initial state.
const ABSENT: usize = 0;

impl States {
    fn new() -> Self {
        Self { values: vec![None], ids: HashMap::from([(None, ABSENT)]) }
    }

    fn intern(&mut self, value: Option<Val>) -> usize {
        if let Some(&id) = self.ids.get(&value) {
            return id;
        }
        let id = self.values.len();
        self.values.push(value.clone());
        self.ids.insert(value, id);
        id
    }

    fn get(&self, id: usize) -> Option<&Val> {
        self.values.get(id).and_then(Option::as_ref)
    }
}

// ---------------------------------------------------------------------------------------------
// The search

/// The call and return events of a key's operations in time order, as a doubly linked list
/// over arrays. Node 0 is the head sentinel and the last node the tail sentinel.
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node, the operation whose call it is (None for returns and sentinels).
    call_of: Vec<Option<usize>>,
    call_node: Vec<usize>,
    return_node: Vec<usize>,
}

const HEAD: usize = 0;

impl Events {
    /// Orders events by time; at equal times calls come before returns, so operations that
    /// touch in time count as concurrent (lenient: never a false alarm from clock granularity).
    fn new(ops: &[&Operation]) -> Self {
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, 0, i));
            events.push((return_time(op), 1, i));
        }
        events.sort_unstable();
        let nodes = events.len() + 2;
        let tail = nodes - 1;
        let mut list = Self {
            next: (1..=nodes).collect(),
            prev: (0..nodes).map(|n| n.saturating_sub(1)).collect(),
            call_of: vec![None; nodes],
            call_node: vec![0; ops.len()],
            return_node: vec![0; ops.len()],
        };
        list.next[tail] = tail;
        for (k, &(_, kind, op)) in events.iter().enumerate() {
            let node = k + 1;
            if kind == 0 {
                list.call_of[node] = Some(op);
                list.call_node[op] = node;
            } else {
                list.return_node[op] = node;
            }
        }
        list
    }

    fn first(&self) -> usize {
        self.next[HEAD]
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    /// Takes an operation's call and return out of the list (it has been linearized).
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        self.unlink(self.return_node[op]);
    }

    /// Undoes `lift`; lifts must be undone in reverse order (dancing links).
    fn unlift(&mut self, op: usize) {
        self.relink(self.return_node[op]);
        self.relink(self.call_node[op]);
    }
}

/// When an operation's effect is known to be over: never, for an indeterminate one.
fn return_time(op: &Operation) -> u64 {
    match (&op.ret, op.complete) {
        (Ret::Unknown, _) | (_, None) => u64::MAX,
        // A completion recorded before the call is malformed; read it as instantaneous.
        (_, Some(complete)) => complete.max(op.call),
    }
}

/// The set of linearized operations as a bitset, with an incrementally maintained Zobrist hash
/// of its determinate members (XOR of a fixed pseudo-random word per member), so hashing a
/// configuration costs O(1).
struct Linearized {
    words: Vec<u64>,
    /// The indeterminate operations, as a mask over `words`.
    indeterminate: Vec<u64>,
    hash: u64,
}

impl Linearized {
    fn new(ops: &[&Operation]) -> Self {
        let mut indeterminate = vec![0; ops.len().div_ceil(64)];
        for (i, op) in ops.iter().enumerate() {
            if op.ret == Ret::Unknown {
                indeterminate[i / 64] |= 1 << (i % 64);
            }
        }
        Self { words: vec![0; indeterminate.len()], indeterminate, hash: 0 }
    }

    fn is_indeterminate(&self, op: usize) -> bool {
        self.indeterminate.get(op / 64).is_some_and(|w| w & (1 << (op % 64)) != 0)
    }

    fn contains(&self, op: usize) -> bool {
        self.words.get(op / 64).is_some_and(|w| w & (1 << (op % 64)) != 0)
    }

    fn toggle(&mut self, op: usize) {
        self.words[op / 64] ^= 1 << (op % 64);
        if !self.is_indeterminate(op) {
            self.hash ^= mix(op as u64);
        }
    }
}

/// SplitMix64's finalizer: a fixed, well-spread hash of a word (no per-process randomness, so
/// runs are reproducible).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A hasher for keys that are already well-mixed (or small integer pairs); deterministic.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, x: u64) {
        self.0 = mix(self.0 ^ x);
    }

    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

type WordMap<K, V> = HashMap<K, V, BuildHasherDefault<WordHasher>>;

/// Visited configurations (linearized set, state, whether entered by an indeterminate
/// operation), stored flat. Each entry is the bitset words, then the state, the index of the
/// next entry in the same hash chain (`NO_ENTRY`: none) and flags (`FINISHED`: its search is
/// over and failed; `RESTRICTED`: see `Search::run`). Chains are keyed by the determinate
/// members and the state, so that they also gather the configurations that differ only in
/// which indeterminate operations were applied.
///
/// A new configuration is pruned if it was visited before (as in Porcupine), or if a finished
/// one has the same state, the same determinate operations, a subset of its indeterminate ones
/// and no more restrictions: applying an indeterminate operation is optional, so everything the
/// new configuration can still do, the finished one could have done by leaving the extra
/// operations out; and it found nothing. Without this, every subset of the indeterminate
/// operations pending at a failure would be explored.
struct Visited {
    words: usize,
    entries: Vec<u64>,
    heads: WordMap<u64, usize>,
}

const NO_ENTRY: u64 = u64::MAX;
const FINISHED: u64 = 1;
const RESTRICTED: u64 = 2;

impl Visited {
    fn new(words: usize) -> Self {
        Self { words, entries: Vec::new(), heads: WordMap::default() }
    }

    fn stride(&self) -> usize {
        self.words + 3
    }

    /// Records a configuration and returns its entry, or None if it is pruned.
    fn insert(&mut self, set: &Linearized, state: usize, restricted: bool) -> Option<usize> {
        let hash = set.hash ^ mix(state as u64 ^ 0x5151_5151);
        let (words, stride) = (self.words, self.stride());
        let head = self.heads.get(&hash).copied();
        let mut cursor = head;
        while let Some(entry) = cursor {
            let base = entry * stride;
            let stored = self.entries.get(base..base + stride)?;
            if stored[words] == state as u64 && subsumes(stored, stored[words + 2], set, restricted)
            {
                return None;
            }
            let link = stored[words + 1];
            cursor = (link != NO_ENTRY).then_some(link as usize);
        }
        let index = self.entries.len() / stride;
        self.entries.extend_from_slice(&set.words);
        self.entries.push(state as u64);
        self.entries.push(head.map_or(NO_ENTRY, |h| h as u64));
        self.entries.push(if restricted { RESTRICTED } else { 0 });
        self.heads.insert(hash, index);
        Some(index)
    }

    /// Marks an entry's search as finished without success.
    fn finish(&mut self, entry: usize) {
        let at = entry * self.stride() + self.words + 2;
        if let Some(flags) = self.entries.get_mut(at) {
            *flags |= FINISHED;
        }
    }
}

/// Whether a stored configuration makes a new one pointless to explore (same state given):
/// an identical one always; otherwise, if the stored search is finished, when the stored set has
/// the same determinate members, a subset of the indeterminate ones, and is no more restricted.
fn subsumes(stored: &[u64], flags: u64, set: &Linearized, restricted: bool) -> bool {
    let stored_restricted = flags & RESTRICTED != 0;
    let mut words = set.words.iter().zip(&set.indeterminate).zip(stored);
    if flags & FINISHED != 0 {
        // stored ⊆ set, and whatever set has beyond it is indeterminate.
        (!stored_restricted || restricted)
            && words.all(|((&now, &mask), &old)| old & !now == 0 && now & !old & !mask == 0)
    } else {
        stored_restricted == restricted && words.all(|((&now, _), &old)| now == old)
    }
}

/// One key's linearizability search (see the module docs).
struct Search<'a> {
    ops: &'a [&'a Operation],
    events: Events,
    linearized: Linearized,
    visited: Visited,
    states: States,
    /// Memoized transitions: (state, op) -> the states the op can lead to with its output, as
    /// a range of `successors`: empty if the output is impossible in that state, several if
    /// the op may go several ways (see `outcomes`).
    transitions: WordMap<(usize, usize), (usize, usize)>,
    successors: Vec<usize>,
    /// For an indeterminate operation, the previous indeterminate one (by call time) with the
    /// same request: identical indeterminate operations are interchangeable once both are
    /// called, so they are only applied in call order.
    twin_before: Vec<Option<usize>>,
    /// See `predecessors`.
    predecessor: Vec<Option<usize>>,
    /// Operations with a known output not yet linearized; the search succeeds at zero (the
    /// indeterminate ones left can all be linearized last, i.e. as never having happened).
    pending: usize,
}

/// A linearized operation on the search stack.
struct Frame {
    op: usize,
    /// Which of its successor states it led to (see `Search::transition`).
    choice: usize,
    /// The state before it.
    state: usize,
    /// Whether the configuration before it was restricted.
    restricted: bool,
    /// Its configuration's entry in `Visited`.
    entry: usize,
}

impl<'a> Search<'a> {
    fn new(ops: &'a [&'a Operation]) -> Self {
        let linearized = Linearized::new(ops);
        let visited = Visited::new(linearized.words.len());
        Self {
            ops,
            events: Events::new(ops),
            linearized,
            visited,
            states: States::new(),
            transitions: WordMap::default(),
            successors: Vec::new(),
            twin_before: twins(ops),
            predecessor: predecessors(ops),
            pending: ops.iter().filter(|op| op.ret != Ret::Unknown).count(),
        }
    }

    /// Porcupine's search loop, with three reductions for indeterminate operations. Each only
    /// rules out linearizations for which an equivalent one is still explored (drop the
    /// indeterminate operation, which may never have happened, or swap two identical ones), so
    /// no linearizable history is missed:
    ///
    /// - An indeterminate operation that would leave the state unchanged is not applied.
    /// - Identical indeterminate operations are applied in call order (see `twin_before`).
    /// - A configuration entered by an indeterminate operation is *restricted*: the next
    ///   operation may not be a SET or a MULTI SET DEL, nor an indeterminate DEL. Such an
    ///   operation's effect and output ignore the previous value, whatever its type (SET
    ///   replaces a list too), so the indeterminate operation before it could as well never
    ///   have happened. Collection operations get no such rule: each one's effect or output
    ///   depends on what the collection held.
    ///
    /// An operation that may go several ways (an SPOP whose answer was lost) is linearized one
    /// way at a time: when the search backtracks over it, it tries the next way before moving
    /// on to the next candidate operation.
    ///
    /// Without them the search keeps applying irrelevant indeterminate operations (consumed,
    /// then overwritten or undone, and no longer available), and a failing history multiplies
    /// its cost by the number of combinations of them.
    fn run(mut self, steps_max: u64) -> (KeyVerdict, u64) {
        let mut steps = 0u64;
        let mut state = ABSENT;
        let mut restricted = false;
        let mut stack: Vec<Frame> = Vec::new();
        let mut node = self.events.first();
        while self.pending > 0 {
            if steps >= steps_max {
                return (KeyVerdict::Unknown, steps);
            }
            steps += 1;
            let Some(op) = self.events.call_of.get(node).copied().flatten() else {
                // The return of an operation not yet linearized: it can't be put off any
                // longer, so undo the latest choice and try the next candidate after it.
                let Some(frame) = stack.pop() else {
                    return (KeyVerdict::NotLinearizable, steps);
                };
                self.visited.finish(frame.entry);
                state = frame.state;
                restricted = frame.restricted;
                self.unlinearize(frame.op);
                // The same operation may still go another way (it was allowed here before).
                match self.try_linearize(frame.op, state, frame.choice + 1) {
                    Some((next_state, entry, choice)) => {
                        let op = frame.op;
                        stack.push(Frame { op, choice, state, restricted, entry });
                        state = next_state;
                        restricted = self.linearized.is_indeterminate(op);
                        node = self.events.first();
                    }
                    None => node = self.events.next[self.events.call_node[frame.op]],
                }
                continue;
            };
            if !self.allowed(op, restricted) {
                node = self.events.next[node];
                continue;
            }
            match self.try_linearize(op, state, 0) {
                Some((next_state, entry, choice)) => {
                    stack.push(Frame { op, choice, state, restricted, entry });
                    state = next_state;
                    restricted = self.linearized.is_indeterminate(op);
                    node = self.events.first();
                }
                None => node = self.events.next[node],
            }
        }
        (KeyVerdict::Linearizable, steps)
    }

    /// The reductions of `run`.
    fn allowed(&self, op: usize, restricted: bool) -> bool {
        let indeterminate = self.linearized.is_indeterminate(op);
        if restricted {
            match self.ops[op].op {
                Op::Set(_) | Op::Replace => return false,
                Op::Del if indeterminate => return false,
                _ => {}
            }
        }
        self.twin_before[op].is_none_or(|twin| self.linearized.contains(twin))
            && self.predecessor[op].is_none_or(|p| self.linearized.contains(p))
    }

    /// Linearizes `op` next, the first of its ways from `first_choice` on (see `transition`)
    /// that the model accepts with its output and that leads to a configuration worth
    /// exploring; returns the new state, the configuration's entry and the way taken.
    fn try_linearize(
        &mut self,
        op: usize,
        state: usize,
        first_choice: usize,
    ) -> Option<(usize, usize, usize)> {
        let (start, end) = self.transition(state, op);
        let restricted = self.linearized.is_indeterminate(op);
        for choice in first_choice..end.saturating_sub(start) {
            let next_state = self.successors[start + choice];
            if restricted && next_state == state {
                continue; // an indeterminate no-op: as if it never happened
            }
            self.linearized.toggle(op);
            let Some(entry) = self.visited.insert(&self.linearized, next_state, restricted) else {
                self.linearized.toggle(op);
                continue;
            };
            self.events.lift(op);
            if !restricted {
                self.pending -= 1;
            }
            return Some((next_state, entry, choice));
        }
        None
    }

    fn unlinearize(&mut self, op: usize) {
        self.linearized.toggle(op);
        self.events.unlift(op);
        if !self.linearized.is_indeterminate(op) {
            self.pending += 1;
        }
    }

    /// The distinct states `op` can lead to from `state` with its output: `successors[start..
    /// end]`. At most one unless the op may go several ways and its output was lost.
    fn transition(&mut self, state: usize, op: usize) -> (usize, usize) {
        if let Some(&known) = self.transitions.get(&(state, op)) {
            return known;
        }
        let operation = self.ops[op];
        let start = self.successors.len();
        for (effect, expected) in outcomes(self.states.get(state), &operation.op) {
            if operation.ret != Ret::Unknown && operation.ret != expected {
                continue;
            }
            let next = match effect {
                Effect::Unchanged => state,
                Effect::Becomes(value) => self.states.intern(value),
            };
            if !self.successors[start..].contains(&next) {
                self.successors.push(next);
            }
        }
        let range = (start, self.successors.len());
        self.transitions.insert((state, op), range);
        range
    }
}

/// For each indeterminate operation, the previous one in call order with the same request.
/// For each operation, the position of the operation its connection sent just before it in
/// the same pipeline (`Operation::after`), when both are in `ops` and completed: it must be
/// linearized first. Only determinate operations are constrained, so the reductions of
/// `Search::run` (which move or drop indeterminate ones) stay sound.
fn predecessors(ops: &[&Operation]) -> Vec<Option<usize>> {
    let position: HashMap<usize, usize> =
        ops.iter().enumerate().map(|(i, op)| (op.id, i)).collect();
    ops.iter()
        .map(|op| {
            let p = *position.get(&op.after?)?;
            (op.ret != Ret::Unknown && ops[p].ret != Ret::Unknown).then_some(p)
        })
        .collect()
}

fn twins(ops: &[&Operation]) -> Vec<Option<usize>> {
    let mut order: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].ret == Ret::Unknown).collect();
    order.sort_by_key(|&i| (ops[i].call, i));
    let mut last: HashMap<&Op, usize> = HashMap::new();
    let mut twin_before = vec![None; ops.len()];
    for i in order {
        twin_before[i] = last.insert(&ops[i].op, i);
    }
    twin_before
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// One operation of a test history: (client, key, op, ret, call, complete).
    type Row<'a> = (usize, &'a str, Op, Ret, u64, Option<u64>);

    fn history(rows: Vec<Row<'_>>) -> Vec<Operation> {
        rows.into_iter()
            .enumerate()
            .map(|(id, (client, key, op, ret, call, complete))| Operation {
                id,
                client,
                node: 1,
                key: key.to_string(),
                op,
                ret,
                call,
                complete,
                after: None,
            })
            .collect()
    }

    fn set(v: &str) -> Op {
        Op::Set(v.to_string())
    }

    fn append(v: &str) -> Op {
        Op::Append(v.to_string())
    }

    fn got(v: &str) -> Ret {
        Ret::Get(Some(v.to_string()))
    }

    const NIL: Ret = Ret::Get(None);

    fn lpush(e: &str) -> Op {
        Op::LPush(e.to_string())
    }

    fn rpush(e: &str) -> Op {
        Op::RPush(e.to_string())
    }

    fn rpush2(a: &str, b: &str) -> Op {
        Op::RPush2(a.to_string(), b.to_string())
    }

    fn popped(e: &str) -> Ret {
        Ret::Bulk(Some(e.to_string()))
    }

    fn items(elements: &[&str]) -> Ret {
        Ret::Items(elements.iter().map(|e| e.to_string()).collect())
    }

    fn sadd(m: &str) -> Op {
        Op::SAdd(m.to_string())
    }

    fn sadd2(a: &str, b: &str) -> Op {
        Op::SAdd2(a.to_string(), b.to_string())
    }

    fn srem(m: &str) -> Op {
        Op::SRem(m.to_string())
    }

    fn members(ms: &[&str]) -> Ret {
        Ret::Members(ms.iter().map(|m| m.to_string()).collect())
    }

    fn zadd(m: &str, score: i64) -> Op {
        Op::ZAdd(m.to_string(), score)
    }

    fn zincrby(m: &str, by: i64) -> Op {
        Op::ZIncrBy(m.to_string(), by)
    }

    fn scored(pairs: &[(&str, i64)]) -> Ret {
        Ret::Scored(pairs.iter().map(|(m, s)| (m.to_string(), s.to_string())).collect())
    }

    fn verdict(ops: &[Operation]) -> KeyVerdict {
        check_key(ops, &CheckOptions::default()).0
    }

    fn assert_verdict(rows: Vec<Row<'_>>, expected: KeyVerdict) {
        let ops = history(rows);
        assert_eq!(verdict(&ops), expected, "history:\n{}", crate::timeline::render_text(&ops));
    }

    use KeyVerdict::{Linearizable as LIN, NotLinearizable as NOT};

    #[test]
    fn empty_history_is_ok() {
        let report = check(&[], &CheckOptions::default());
        assert!(report.is_ok());
        assert_eq!(report.keys_checked, 0);
        assert_eq!(check_key(&[], &CheckOptions::default()), (LIN, 0));
    }

    #[test]
    fn sequential_history_is_linearizable() {
        assert_verdict(
            vec![
                (0, "k", Op::Get, NIL, 0, Some(1)),
                (0, "k", set("a"), Ret::Set, 2, Some(3)),
                (1, "k", Op::Get, got("a"), 4, Some(5)),
                (0, "k", append("bc"), Ret::Append(3), 6, Some(7)),
                (1, "k", Op::Get, got("abc"), 8, Some(9)),
                (0, "k", Op::Incr, Ret::Incr(Err(())), 10, Some(11)),
                (1, "k", Op::Del, Ret::Del(1), 12, Some(13)),
                (1, "k", Op::Del, Ret::Del(0), 14, Some(15)),
                (0, "k", Op::Incr, Ret::Incr(Ok(1)), 16, Some(17)),
                (0, "k", Op::Incr, Ret::Incr(Ok(2)), 18, Some(19)),
                (1, "k", Op::Get, got("2"), 20, Some(21)),
            ],
            LIN,
        );
    }

    #[test]
    fn concurrent_sets_may_be_read_in_either_order() {
        for (read, expected) in [("a", LIN), ("b", LIN), ("c", NOT)] {
            assert_verdict(
                vec![
                    (0, "k", set("a"), Ret::Set, 0, Some(10)),
                    (1, "k", set("b"), Ret::Set, 1, Some(9)),
                    (2, "k", Op::Get, got(read), 20, Some(21)),
                    (2, "k", Op::Get, got(read), 22, Some(23)),
                ],
                expected,
            );
        }
        // But once one reader has seen the final value, it stays.
        assert_verdict(
            vec![
                (0, "k", set("a"), Ret::Set, 0, Some(10)),
                (1, "k", set("b"), Ret::Set, 1, Some(9)),
                (2, "k", Op::Get, got("a"), 20, Some(21)),
                (3, "k", Op::Get, got("b"), 22, Some(23)),
            ],
            NOT,
        );
    }

    #[test]
    fn a_pipelined_read_must_follow_the_write_before_it_on_its_connection() {
        // One write carrying SET b then GET: the intervals overlap, but Redis runs a
        // connection's commands in order, so the GET cannot see the value before the SET.
        let rows = vec![
            (0, "k", set("a"), Ret::Set, 0, Some(1)),
            (1, "k", set("b"), Ret::Set, 2, Some(5)),
            (1, "k", Op::Get, got("a"), 2, Some(6)),
        ];
        let unordered = history(rows.clone());
        assert_eq!(verdict(&unordered), LIN, "without program order the GET may go first");
        let mut ordered = history(rows);
        ordered[2].after = Some(ordered[1].id);
        assert_eq!(verdict(&ordered), NOT);
        // The GET seeing its own SET is fine.
        ordered[2].ret = got("b");
        assert_eq!(verdict(&ordered), LIN);
    }

    #[test]
    fn program_order_is_ignored_for_indeterminate_operations() {
        let mut ops = history(vec![
            (0, "k", set("a"), Ret::Set, 0, Some(1)),
            (1, "k", set("b"), Ret::Unknown, 2, None),
            (1, "k", Op::Get, got("a"), 2, Some(6)),
        ]);
        ops[2].after = Some(ops[1].id);
        assert_eq!(verdict(&ops), LIN);
    }

    #[test]
    fn stale_read_is_not_linearizable() {
        assert_verdict(
            vec![
                (0, "k", set("a"), Ret::Set, 0, Some(1)),
                (0, "k", set("b"), Ret::Set, 2, Some(3)),
                (1, "k", Op::Get, got("a"), 4, Some(5)),
            ],
            NOT,
        );
    }

    #[test]
    fn lost_write_is_not_linearizable() {
        assert_verdict(
            vec![(0, "k", set("a"), Ret::Set, 0, Some(1)), (1, "k", Op::Get, NIL, 2, Some(3))],
            NOT,
        );
        assert_verdict(
            vec![
                (0, "k", Op::Incr, Ret::Incr(Ok(1)), 0, Some(1)),
                (0, "k", Op::Incr, Ret::Incr(Ok(2)), 2, Some(3)),
                (1, "k", Op::Get, got("1"), 4, Some(5)),
            ],
            NOT,
        );
    }

    #[test]
    fn read_of_a_value_never_written_is_not_linearizable() {
        assert_verdict(vec![(0, "k", Op::Get, got("ghost"), 0, Some(1))], NOT);
        assert_verdict(
            vec![
                (0, "k", set("a"), Ret::Set, 0, Some(10)),
                (1, "k", Op::Get, got("ghost"), 1, Some(9)),
            ],
            NOT,
        );
    }

    #[test]
    fn duplicated_or_skipped_incr_is_not_linearizable() {
        let incr = |n| Ret::Incr(Ok(n));
        // Duplicated, sequential and concurrent.
        assert_verdict(
            vec![(0, "k", Op::Incr, incr(1), 0, Some(1)), (1, "k", Op::Incr, incr(1), 2, Some(3))],
            NOT,
        );
        assert_verdict(
            vec![(0, "k", Op::Incr, incr(1), 0, Some(10)), (1, "k", Op::Incr, incr(1), 1, Some(9))],
            NOT,
        );
        // Skipped.
        assert_verdict(
            vec![(0, "k", Op::Incr, incr(1), 0, Some(1)), (1, "k", Op::Incr, incr(3), 2, Some(3))],
            NOT,
        );
        // Concurrent INCRs may get their results in either order.
        for (a, b) in [(1, 2), (2, 1)] {
            assert_verdict(
                vec![
                    (0, "k", Op::Incr, incr(a), 0, Some(10)),
                    (1, "k", Op::Incr, incr(b), 1, Some(9)),
                    (2, "k", Op::Get, got("2"), 11, Some(12)),
                ],
                LIN,
            );
        }
    }

    #[test]
    fn incr_follows_redis_integer_rules() {
        let after_set = |value: &str, ret: Ret| {
            history(vec![
                (0, "k", set(value), Ret::Set, 0, Some(1)),
                (0, "k", Op::Incr, ret, 2, Some(3)),
                (0, "k", Op::Get, NIL, 4, Some(5)),
            ])
        };
        for bad in ["abc", "", " 1", "01", "+1", "1.0", "9223372036854775807", "-0"] {
            let mut ops = after_set(bad, Ret::Incr(Err(())));
            ops[2].ret = got(bad); // the error leaves the value as it was
            assert_eq!(verdict(&ops), LIN, "{bad:?}");
            ops[1].ret = Ret::Incr(Ok(1));
            assert_eq!(verdict(&ops), NOT, "{bad:?}");
        }
        for (good, n) in
            [("0", 1), ("-5", -4), ("41", 42), ("-9223372036854775808", -9223372036854775807)]
        {
            let mut ops = after_set(good, Ret::Incr(Ok(n)));
            ops[2].ret = got(&n.to_string());
            assert_eq!(verdict(&ops), LIN, "{good:?}");
            ops[1].ret = Ret::Incr(Err(()));
            assert_eq!(verdict(&ops), NOT, "{good:?}");
        }
    }

    #[test]
    fn append_returns_the_new_length() {
        assert_verdict(
            vec![
                (0, "k", append("ab"), Ret::Append(2), 0, Some(1)),
                (0, "k", append("c"), Ret::Append(3), 2, Some(3)),
                (1, "k", Op::Get, got("abc"), 4, Some(5)),
            ],
            LIN,
        );
        assert_verdict(vec![(0, "k", append("ab"), Ret::Append(3), 0, Some(1))], NOT);
        // Concurrent appends: lengths and final value must agree on one order.
        assert_verdict(
            vec![
                (0, "k", append("x"), Ret::Append(2), 0, Some(10)),
                (1, "k", append("y"), Ret::Append(1), 1, Some(9)),
                (2, "k", Op::Get, got("yx"), 11, Some(12)),
            ],
            LIN,
        );
        assert_verdict(
            vec![
                (0, "k", append("x"), Ret::Append(2), 0, Some(10)),
                (1, "k", append("y"), Ret::Append(1), 1, Some(9)),
                (2, "k", Op::Get, got("xy"), 11, Some(12)),
            ],
            NOT,
        );
        // Multi-byte UTF-8 counts bytes, as Redis does.
        assert_verdict(vec![(0, "k", append("é"), Ret::Append(2), 0, Some(1))], LIN);
    }

    #[test]
    fn del_counts_whether_the_key_existed() {
        assert_verdict(
            vec![
                (0, "k", Op::Del, Ret::Del(0), 0, Some(1)),
                (0, "k", set("a"), Ret::Set, 2, Some(3)),
                (0, "k", Op::Del, Ret::Del(1), 4, Some(5)),
                (0, "k", Op::Del, Ret::Del(0), 6, Some(7)),
                (0, "k", Op::Get, NIL, 8, Some(9)),
            ],
            LIN,
        );
        assert_verdict(vec![(0, "k", Op::Del, Ret::Del(1), 0, Some(1))], NOT);
        // Two concurrent DELs of an existing key: only one can delete it.
        let two_dels = |a, b| {
            vec![
                (0, "k", set("a"), Ret::Set, 0, Some(1)),
                (0, "k", Op::Del, Ret::Del(a), 2, Some(10)),
                (1, "k", Op::Del, Ret::Del(b), 3, Some(9)),
            ]
        };
        assert_verdict(two_dels(1, 0), LIN);
        assert_verdict(two_dels(0, 1), LIN);
        assert_verdict(two_dels(1, 1), NOT);
        assert_verdict(two_dels(0, 0), NOT);
    }

    #[test]
    fn indeterminate_set_may_take_effect_later() {
        assert_verdict(
            vec![
                (0, "k", set("a"), Ret::Set, 0, Some(1)),
                (1, "k", set("b"), Ret::Unknown, 2, None),
                (2, "k", Op::Get, got("a"), 100, Some(101)),
                (2, "k", Op::Get, got("b"), 200, Some(201)),
            ],
            LIN,
        );
    }

    #[test]
    fn indeterminate_set_may_never_take_effect() {
        assert_verdict(
            vec![
                (0, "k", set("a"), Ret::Set, 0, Some(1)),
                (1, "k", set("b"), Ret::Unknown, 2, None),
                (2, "k", Op::Get, got("a"), 100, Some(101)),
                (0, "k", set("c"), Ret::Set, 102, Some(103)),
                (2, "k", Op::Get, got("c"), 200, Some(201)),
            ],
            LIN,
        );
    }

    #[test]
    fn indeterminate_set_seen_then_unseen_is_not_linearizable() {
        assert_verdict(
            vec![
                (0, "k", set("a"), Ret::Set, 0, Some(1)),
                (1, "k", set("b"), Ret::Unknown, 2, None),
                (2, "k", Op::Get, got("b"), 3, Some(4)),
                (2, "k", Op::Get, got("a"), 5, Some(6)),
            ],
            NOT,
        );
        // Nor can it take effect before it was called.
        assert_verdict(
            vec![
                (0, "k", set("a"), Ret::Set, 0, Some(1)),
                (2, "k", Op::Get, got("b"), 3, Some(4)),
                (1, "k", set("b"), Ret::Unknown, 5, None),
            ],
            NOT,
        );
    }

    #[test]
    fn indeterminate_incr_counts_at_most_once() {
        let with_final = |n: i64| {
            vec![
                (0, "k", Op::Incr, Ret::Incr(Ok(1)), 0, Some(1)),
                (1, "k", Op::Incr, Ret::Unknown, 2, None),
                (0, "k", Op::Incr, Ret::Incr(Ok(n)), 3, Some(4)),
            ]
        };
        assert_verdict(with_final(2), LIN); // it never happened
        assert_verdict(with_final(3), LIN); // it happened before the last INCR
        assert_verdict(with_final(4), NOT); // it happened twice?
                                            // Once seen it stays counted.
        assert_verdict(
            vec![
                (1, "k", Op::Incr, Ret::Unknown, 0, None),
                (0, "k", Op::Get, got("1"), 1, Some(2)),
                (0, "k", Op::Incr, Ret::Incr(Ok(1)), 3, Some(4)),
            ],
            NOT,
        );
    }

    #[test]
    fn indeterminate_get_is_ignored() {
        assert_verdict(
            vec![
                (1, "k", Op::Get, Ret::Unknown, 0, None),
                (0, "k", set("a"), Ret::Set, 1, Some(2)),
                (1, "k", Op::Get, Ret::Unknown, 3, None),
            ],
            LIN,
        );
    }

    #[test]
    fn read_concurrent_with_a_write_sees_old_or_new() {
        for (read, expected) in [(got("a"), LIN), (got("b"), LIN), (NIL, NOT)] {
            assert_verdict(
                vec![
                    (0, "k", set("a"), Ret::Set, 0, Some(1)),
                    (0, "k", set("b"), Ret::Set, 2, Some(10)),
                    (1, "k", Op::Get, read, 3, Some(4)),
                ],
                expected,
            );
        }
        // A later read cannot go back once a concurrent read saw the new value.
        assert_verdict(
            vec![
                (0, "k", set("a"), Ret::Set, 0, Some(1)),
                (0, "k", set("b"), Ret::Set, 2, Some(10)),
                (1, "k", Op::Get, got("b"), 3, Some(4)),
                (1, "k", Op::Get, got("a"), 5, Some(6)),
            ],
            NOT,
        );
    }

    #[test]
    fn touching_intervals_count_as_concurrent() {
        // The SET completes at the instant the GET is called: lenient, either order.
        assert_verdict(
            vec![(0, "k", set("a"), Ret::Set, 0, Some(5)), (1, "k", Op::Get, NIL, 5, Some(6))],
            LIN,
        );
        assert_verdict(
            vec![(0, "k", set("a"), Ret::Set, 0, Some(5)), (1, "k", Op::Get, NIL, 6, Some(7))],
            NOT,
        );
    }

    #[test]
    fn lists_push_pop_and_range_as_redis_does() {
        assert_verdict(
            vec![
                (0, "l", Op::LPop, Ret::Bulk(None), 0, Some(1)),
                (0, "l", Op::LRange, items(&[]), 2, Some(3)),
                (0, "l", rpush("a"), Ret::Int(1), 4, Some(5)),
                (1, "l", lpush("b"), Ret::Int(2), 6, Some(7)),
                (0, "l", rpush2("c", "d"), Ret::Int(4), 8, Some(9)),
                (1, "l", Op::LRange, items(&["b", "a", "c", "d"]), 10, Some(11)),
                (0, "l", Op::RPop, popped("d"), 12, Some(13)),
                (1, "l", Op::LPop, popped("b"), 14, Some(15)),
                (0, "l", Op::LRange, items(&["a", "c"]), 16, Some(17)),
                (1, "l", Op::Del, Ret::Del(1), 18, Some(19)),
                (0, "l", Op::RPop, Ret::Bulk(None), 20, Some(21)),
                // Popping the last element deletes the list.
                (0, "l", rpush("e"), Ret::Int(1), 22, Some(23)),
                (1, "l", Op::LPop, popped("e"), 24, Some(25)),
                (1, "l", Op::Del, Ret::Del(0), 26, Some(27)),
            ],
            LIN,
        );
        // A push's length counts what was there.
        assert_verdict(
            vec![
                (0, "l", rpush("a"), Ret::Int(1), 0, Some(1)),
                (0, "l", rpush2("b", "c"), Ret::Int(2), 2, Some(3)),
            ],
            NOT,
        );
    }

    #[test]
    fn a_command_on_a_key_of_another_type_answers_wrongtype() {
        assert_verdict(
            vec![
                (0, "k", set("a"), Ret::Set, 0, Some(1)),
                (0, "k", lpush("x"), Ret::WrongType, 2, Some(3)),
                (0, "k", Op::LRange, Ret::WrongType, 4, Some(5)),
                (0, "k", Op::Get, got("a"), 6, Some(7)),
                (0, "k", Op::Del, Ret::Del(1), 8, Some(9)),
                (0, "k", rpush("x"), Ret::Int(1), 10, Some(11)),
                (0, "k", Op::Get, Ret::WrongType, 12, Some(13)),
                (0, "k", Op::Incr, Ret::WrongType, 14, Some(15)),
                // SET takes a key of any type.
                (0, "k", set("b"), Ret::Set, 16, Some(17)),
                (0, "k", Op::LPop, Ret::WrongType, 18, Some(19)),
                (0, "k", Op::Get, got("b"), 20, Some(21)),
            ],
            LIN,
        );
        assert_verdict(
            vec![(0, "k", rpush("x"), Ret::Int(1), 0, Some(1)), (0, "k", Op::Get, NIL, 2, Some(3))],
            NOT,
        );
    }

    #[test]
    fn a_collection_replaced_by_a_string_and_deleted_is_gone() {
        let replaced_then = |read: Op, seen: Ret| {
            vec![
                (0, "l", rpush2("a", "b"), Ret::Int(2), 0, Some(1)),
                (1, "l", Op::Replace, Ret::Replaced, 2, Some(3)),
                (0, "l", read, seen, 4, Some(5)),
            ]
        };
        assert_verdict(replaced_then(Op::LRange, items(&[])), LIN);
        assert_verdict(replaced_then(rpush("c"), Ret::Int(1)), LIN);
        assert_verdict(replaced_then(Op::Del, Ret::Del(0)), LIN);
        // Its elements, or the string for an instant, seen afterwards.
        assert_verdict(replaced_then(Op::LRange, items(&["a", "b"])), NOT);
        assert_verdict(replaced_then(rpush("c"), Ret::Int(3)), NOT);
        assert_verdict(replaced_then(Op::LPop, Ret::WrongType), NOT);
        // On a set, a sorted set and an absent key alike.
        assert_verdict(
            vec![
                (0, "s", sadd2("a", "b"), Ret::Int(2), 0, Some(1)),
                (1, "s", Op::Replace, Ret::Replaced, 2, Some(3)),
                (0, "s", Op::SCard, Ret::Int(0), 4, Some(5)),
                (0, "s", zadd("a", 1), Ret::Int(1), 6, Some(7)),
                (1, "s", Op::Replace, Ret::Replaced, 8, Some(9)),
                (1, "s", Op::Replace, Ret::Replaced, 10, Some(11)),
                (0, "s", Op::ZRange, scored(&[]), 12, Some(13)),
            ],
            LIN,
        );
        // EXEC answers [OK, 1] whatever the key held: any other answer is wrong.
        assert_verdict(vec![(0, "l", Op::Replace, Ret::Del(0), 0, Some(1))], NOT);
        // An indeterminate one may have happened, or not.
        for (seen, expected) in [(&["a"][..], LIN), (&[][..], LIN), (&["a", "b"][..], NOT)] {
            assert_verdict(
                vec![
                    (0, "l", rpush("a"), Ret::Int(1), 0, Some(1)),
                    (1, "l", Op::Replace, Ret::Unknown, 2, None),
                    (0, "l", Op::LRange, items(seen), 4, Some(5)),
                ],
                expected,
            );
        }
    }

    #[test]
    fn an_element_popped_twice_is_not_linearizable() {
        // Two concurrent pops of a list of two: each gets one element, whichever goes first.
        let pops = |first: Ret, second: Op, second_ret: Ret| {
            history(vec![
                (0, "l", rpush("a"), Ret::Int(1), 0, Some(1)),
                (0, "l", rpush("b"), Ret::Int(2), 2, Some(3)),
                (1, "l", Op::LPop, first, 4, Some(10)),
                (2, "l", second, second_ret, 5, Some(9)),
            ])
        };
        assert_eq!(verdict(&pops(popped("a"), Op::LPop, popped("b"))), LIN);
        assert_eq!(verdict(&pops(popped("b"), Op::LPop, popped("a"))), LIN);
        assert_eq!(verdict(&pops(popped("a"), Op::RPop, popped("b"))), LIN);
        assert_eq!(verdict(&pops(popped("a"), Op::LPop, popped("a"))), NOT);
        // Likewise from the other end.
        assert_eq!(verdict(&pops(popped("b"), Op::RPop, popped("b"))), NOT);
        // Shrinking keeps the push the duplicated element needs, and drops the other.
        let (minimal, is_minimal, _) =
            minimize(&pops(popped("a"), Op::LPop, popped("a")), &CheckOptions::default());
        assert!(is_minimal);
        assert_eq!(minimal.iter().map(|op| op.id).collect::<Vec<_>>(), vec![0, 2, 3]);
        // An indeterminate pop may have taken the element, once.
        assert_verdict(
            vec![
                (0, "l", rpush2("a", "b"), Ret::Int(2), 0, Some(1)),
                (1, "l", Op::LPop, Ret::Unknown, 2, None),
                (2, "l", Op::LPop, Ret::Unknown, 3, None),
                (0, "l", Op::LPop, popped("b"), 4, Some(5)),
                (0, "l", Op::LPop, popped("a"), 6, Some(7)),
            ],
            NOT,
        );
    }

    #[test]
    fn a_popped_element_seen_again_is_not_linearizable() {
        let seen_after_pop = |range: (u64, u64), seen: &[&str]| {
            vec![
                (0, "l", rpush("a"), Ret::Int(1), 0, Some(1)),
                (0, "l", rpush("b"), Ret::Int(2), 2, Some(3)),
                (1, "l", Op::LPop, popped("a"), 4, Some(6)),
                (2, "l", Op::LRange, items(seen), range.0, Some(range.1)),
            ]
        };
        // After the pop completed, only "b" is left.
        assert_verdict(seen_after_pop((7, 8), &["b"]), LIN);
        assert_verdict(seen_after_pop((7, 8), &["a", "b"]), NOT);
        assert_verdict(seen_after_pop((7, 8), &["a"]), NOT);
        // During the pop, either.
        assert_verdict(seen_after_pop((5, 8), &["a", "b"]), LIN);
        // But once a reader saw it gone, a later one cannot see it back.
        let mut rows = seen_after_pop((5, 8), &["b"]);
        rows.push((3, "l", Op::LRange, items(&["a", "b"]), 9, Some(10)));
        assert_verdict(rows, NOT);
    }

    #[test]
    fn a_two_element_push_seen_torn_is_not_linearizable() {
        let torn = |ret: Ret, complete: Option<u64>, seen: &[&str]| {
            history(vec![
                (0, "l", rpush2("a", "b"), ret, 0, complete),
                (1, "l", Op::LRange, items(seen), 5, Some(6)),
            ])
        };
        assert_eq!(verdict(&torn(Ret::Int(2), Some(1), &["a", "b"])), LIN);
        assert_eq!(verdict(&torn(Ret::Int(2), Some(1), &["a"])), NOT);
        assert_eq!(verdict(&torn(Ret::Int(2), Some(1), &["b"])), NOT);
        // While the push is running, or its answer lost, the list is whole or absent.
        for (ret, complete) in [(Ret::Int(2), Some(10)), (Ret::Unknown, None)] {
            assert_eq!(verdict(&torn(ret.clone(), complete, &[])), LIN);
            assert_eq!(verdict(&torn(ret.clone(), complete, &["a", "b"])), LIN);
            assert_eq!(verdict(&torn(ret, complete, &["a"])), NOT);
        }
    }

    #[test]
    fn concurrent_list_operations_with_indeterminate_ones_are_linearizable() {
        let rows = |last: &[&str]| {
            vec![
                (0, "l", rpush("a"), Ret::Int(1), 0, Some(1)),
                // Its answer is lost; the pop below shows it took effect.
                (1, "l", lpush("b"), Ret::Unknown, 2, None),
                (2, "l", rpush2("c", "d"), Ret::Int(3), 3, Some(10)),
                (3, "l", Op::LPop, popped("b"), 4, Some(8)),
                (0, "l", Op::LRange, items(&["a", "c", "d"]), 11, Some(12)),
                // May or may not have happened, at any time after its call.
                (3, "l", Op::RPop, Ret::Unknown, 13, None),
                (1, "l", lpush("e"), Ret::Unknown, 14, None),
                (0, "l", Op::LRange, items(last), 15, Some(16)),
                (2, "l", Op::RPop, popped("d"), 17, Some(18)),
            ]
        };
        // Neither indeterminate write yet, or only the push.
        assert_verdict(rows(&["a", "c", "d"]), LIN);
        assert_verdict(rows(&["e", "a", "c", "d"]), LIN);
        // The indeterminate RPOP took "d", which the last RPOP cannot get again.
        assert_verdict(rows(&["a", "c"]), NOT);
        // "c" lost.
        assert_verdict(rows(&["e", "a"]), NOT);
        // With the indeterminate RPOP seen to have happened (and the push or not), the last
        // RPOP gets "c".
        for last in [&["a", "c"][..], &["e", "a", "c"]] {
            let mut ops = history(rows(last));
            ops[8].ret = popped("c");
            assert_eq!(verdict(&ops), LIN, "{last:?}");
        }
    }

    #[test]
    fn sets_add_remove_pop_and_read_as_redis_does() {
        assert_verdict(
            vec![
                (0, "s", Op::SPop, Ret::Bulk(None), 0, Some(1)),
                (0, "s", Op::SMembers, members(&[]), 2, Some(3)),
                (0, "s", Op::SCard, Ret::Int(0), 4, Some(5)),
                (0, "s", sadd("b"), Ret::Int(1), 6, Some(7)),
                (1, "s", sadd2("a", "b"), Ret::Int(1), 8, Some(9)),
                (1, "s", sadd("a"), Ret::Int(0), 10, Some(11)),
                (0, "s", Op::SMembers, members(&["a", "b"]), 12, Some(13)),
                (0, "s", Op::SCard, Ret::Int(2), 14, Some(15)),
                (1, "s", srem("c"), Ret::Int(0), 16, Some(17)),
                (1, "s", srem("a"), Ret::Int(1), 18, Some(19)),
                // Removing the last member deletes the set.
                (0, "s", Op::SPop, popped("b"), 20, Some(21)),
                (0, "s", Op::Del, Ret::Del(0), 22, Some(23)),
                (0, "s", sadd2("c", "d"), Ret::Int(2), 24, Some(25)),
                (1, "s", Op::Del, Ret::Del(1), 26, Some(27)),
                (1, "s", Op::SCard, Ret::Int(0), 28, Some(29)),
            ],
            LIN,
        );
        // SADD counts only new members; SREM only those there.
        assert_verdict(
            vec![
                (0, "s", sadd("a"), Ret::Int(1), 0, Some(1)),
                (0, "s", sadd2("a", "b"), Ret::Int(2), 2, Some(3)),
            ],
            NOT,
        );
        assert_verdict(
            vec![
                (0, "s", sadd("a"), Ret::Int(1), 0, Some(1)),
                (0, "s", srem("b"), Ret::Int(1), 2, Some(3)),
            ],
            NOT,
        );
    }

    #[test]
    fn spop_may_pop_any_member_but_only_once() {
        let two_pops = |first: &str, second: &str| {
            history(vec![
                (0, "s", sadd2("a", "b"), Ret::Int(2), 0, Some(1)),
                (1, "s", Op::SPop, popped(first), 2, Some(3)),
                (1, "s", Op::SPop, popped(second), 4, Some(5)),
            ])
        };
        // The server chooses: either member first.
        assert_eq!(verdict(&two_pops("a", "b")), LIN);
        assert_eq!(verdict(&two_pops("b", "a")), LIN);
        // A member popped twice without being added again, or one never added.
        assert_eq!(verdict(&two_pops("a", "a")), NOT);
        assert_eq!(verdict(&two_pops("b", "b")), NOT);
        assert_eq!(verdict(&two_pops("a", "c")), NOT);
        // Concurrent pops, likewise.
        let mut concurrent = two_pops("b", "b");
        concurrent[2].call = 2;
        assert_eq!(verdict(&concurrent), NOT);
        concurrent[2].ret = popped("a");
        assert_eq!(verdict(&concurrent), LIN);
        // Added back in between, it may come out again.
        let mut readded = two_pops("a", "a");
        readded[2].call = 6;
        readded[2].complete = Some(7);
        readded.insert(2, history(vec![(0, "s", sadd("a"), Ret::Int(1), 4, Some(5))]).remove(0));
        for (id, op) in readded.iter_mut().enumerate() {
            op.id = id;
        }
        assert_eq!(verdict(&readded), LIN);
        // Both popped: the set is gone.
        let mut emptied = two_pops("a", "b");
        emptied.extend(history(vec![
            (0, "s", Op::SPop, Ret::Bulk(None), 6, Some(7)),
            (0, "s", Op::SMembers, members(&[]), 8, Some(9)),
        ]));
        for (id, op) in emptied.iter_mut().enumerate() {
            op.id = id;
        }
        assert_eq!(verdict(&emptied), LIN);
        emptied[3].ret = popped("a");
        assert_eq!(verdict(&emptied), NOT);
        // Shrinking keeps the add the twice-popped member needs.
        let (minimal, is_minimal, _) = minimize(&two_pops("a", "a"), &CheckOptions::default());
        assert!(is_minimal);
        assert_eq!(minimal.iter().map(|op| op.id).collect::<Vec<_>>(), vec![0, 1, 2]);
    }

    #[test]
    fn an_indeterminate_spop_may_have_popped_any_one_member() {
        let after = |seen: &[&[&str]]| {
            let mut rows = vec![
                (0, "s", sadd2("a", "b"), Ret::Int(2), 0, Some(1)),
                (0, "s", sadd("c"), Ret::Int(1), 2, Some(3)),
                (1, "s", Op::SPop, Ret::Unknown, 4, None),
            ];
            for (i, ms) in seen.iter().enumerate() {
                let t = 10 + 2 * i as u64;
                rows.push((2, "s", Op::SMembers, members(ms), t, Some(t + 1)));
            }
            rows
        };
        // Not yet, or never; or it took any one of them.
        assert_verdict(after(&[&["a", "b", "c"]]), LIN);
        for left in [&["a", "b"][..], &["a", "c"], &["b", "c"]] {
            assert_verdict(after(&[left]), LIN);
            // Later than the first read, too.
            assert_verdict(after(&[&["a", "b", "c"], left]), LIN);
            // But once taken, that member stays gone.
            assert_verdict(after(&[left, &["a", "b", "c"]]), NOT);
        }
        // One pop takes one member.
        assert_verdict(after(&[&["a"]]), NOT);
        // It cannot pop one member and then be seen to have popped another.
        assert_verdict(after(&[&["a", "b"], &["b", "c"]]), NOT);
        // Two indeterminate pops: any two members, each once.
        let mut rows = after(&[&["b"]]);
        rows.insert(3, (3, "s", Op::SPop, Ret::Unknown, 5, None));
        assert_verdict(rows, LIN);
        let mut rows = after(&[&[]]);
        rows.insert(3, (3, "s", Op::SPop, Ret::Unknown, 5, None));
        assert_verdict(rows, NOT);
        // With its answer lost, a determinate pop after it still gets a member still there.
        let mut rows = after(&[&["a", "c"]]);
        rows.push((2, "s", Op::SPop, popped("b"), 20, Some(21)));
        assert_verdict(rows, NOT);
        let mut rows = after(&[&["a", "c"]]);
        rows.push((2, "s", Op::SPop, popped("c"), 20, Some(21)));
        rows.push((2, "s", Op::SMembers, members(&["a"]), 22, Some(23)));
        assert_verdict(rows, LIN);
    }

    #[test]
    fn a_two_member_sadd_seen_torn_is_not_linearizable() {
        let torn = |ret: Ret, complete: Option<u64>, seen: &[&str]| {
            history(vec![
                (0, "s", sadd2("a", "b"), ret, 0, complete),
                (1, "s", Op::SMembers, members(seen), 5, Some(6)),
            ])
        };
        assert_eq!(verdict(&torn(Ret::Int(2), Some(1), &["a", "b"])), LIN);
        assert_eq!(verdict(&torn(Ret::Int(2), Some(1), &["a"])), NOT);
        assert_eq!(verdict(&torn(Ret::Int(2), Some(1), &["b"])), NOT);
        // While the add is running, or its answer lost, the set is whole or absent.
        for (ret, complete) in [(Ret::Int(2), Some(10)), (Ret::Unknown, None)] {
            assert_eq!(verdict(&torn(ret.clone(), complete, &[])), LIN);
            assert_eq!(verdict(&torn(ret.clone(), complete, &["a", "b"])), LIN);
            assert_eq!(verdict(&torn(ret, complete, &["b"])), NOT);
        }
        // Seen torn through SCARD, or through a pop that finds the set of one member.
        assert_verdict(
            vec![
                (0, "s", sadd2("a", "b"), Ret::Int(2), 0, Some(1)),
                (1, "s", Op::SCard, Ret::Int(1), 2, Some(3)),
            ],
            NOT,
        );
        assert_verdict(
            vec![
                (0, "s", sadd2("a", "b"), Ret::Unknown, 0, None),
                (1, "s", Op::SPop, popped("a"), 2, Some(3)),
                (1, "s", Op::SPop, Ret::Bulk(None), 4, Some(5)),
            ],
            NOT,
        );
        // A two-member ZADD likewise.
        assert_verdict(
            vec![
                (0, "z", Op::ZAdd2("a".into(), 1, "b".into(), 2), Ret::Int(2), 0, Some(1)),
                (1, "z", Op::ZRange, scored(&[("a", 1)]), 2, Some(3)),
            ],
            NOT,
        );
    }

    #[test]
    fn sorted_sets_add_increment_pop_and_range_as_redis_does() {
        assert_verdict(
            vec![
                (0, "z", Op::ZPopMin, scored(&[]), 0, Some(1)),
                (0, "z", Op::ZRange, scored(&[]), 2, Some(3)),
                (0, "z", zadd("b", 2), Ret::Int(1), 4, Some(5)),
                (1, "z", zadd("c", -1), Ret::Int(1), 6, Some(7)),
                (0, "z", Op::ZAdd2("a".into(), 2, "c".into(), 3), Ret::Int(1), 8, Some(9)),
                // By score, then by member within a score.
                (1, "z", Op::ZRange, scored(&[("a", 2), ("b", 2), ("c", 3)]), 10, Some(11)),
                (1, "z", zincrby("b", -3), Ret::Bulk(Some("-1".into())), 12, Some(13)),
                (0, "z", zincrby("d", 4), Ret::Bulk(Some("4".into())), 14, Some(15)),
                (
                    0,
                    "z",
                    Op::ZRange,
                    scored(&[("b", -1), ("a", 2), ("c", 3), ("d", 4)]),
                    16,
                    Some(17),
                ),
                (1, "z", Op::ZPopMin, scored(&[("b", -1)]), 18, Some(19)),
                (1, "z", Op::ZRem("c".into()), Ret::Int(1), 20, Some(21)),
                (1, "z", Op::ZRem("c".into()), Ret::Int(0), 22, Some(23)),
                (0, "z", zincrby("a", -2), Ret::Bulk(Some("0".into())), 24, Some(25)),
                (0, "z", Op::ZPopMin, scored(&[("a", 0)]), 26, Some(27)),
                // Popping the last member deletes the sorted set.
                (0, "z", Op::ZPopMin, scored(&[("d", 4)]), 28, Some(29)),
                (0, "z", Op::Del, Ret::Del(0), 30, Some(31)),
            ],
            LIN,
        );
        // A score written otherwise than Redis writes it.
        assert_verdict(
            vec![
                (0, "z", zadd("b", 2), Ret::Int(1), 0, Some(1)),
                (0, "z", zincrby("b", 1), Ret::Bulk(Some("3.0".into())), 2, Some(3)),
            ],
            NOT,
        );
    }

    #[test]
    fn zpopmin_of_a_member_that_is_not_the_lowest_is_not_linearizable() {
        let pop = |popped: &[(&str, i64)]| {
            vec![
                (0, "z", zadd("b", 1), Ret::Int(1), 0, Some(1)),
                (0, "z", zadd("c", 1), Ret::Int(1), 2, Some(3)),
                (0, "z", zadd("a", 2), Ret::Int(1), 4, Some(5)),
                (1, "z", Op::ZPopMin, scored(popped), 6, Some(7)),
            ]
        };
        assert_verdict(pop(&[("b", 1)]), LIN);
        // A higher score, the later member of a tie, the right member with a wrong score.
        assert_verdict(pop(&[("a", 2)]), NOT);
        assert_verdict(pop(&[("c", 1)]), NOT);
        assert_verdict(pop(&[("b", 2)]), NOT);
        // While a ZADD that makes "a" the lowest is running, either.
        for (seen, expected) in [("a", LIN), ("b", LIN), ("c", NOT)] {
            let mut rows = pop(&[(seen, if seen == "a" { 0 } else { 1 })]);
            rows[3].4 = 8;
            rows[3].5 = Some(12);
            rows.insert(3, (2, "z", zadd("a", 0), Ret::Int(0), 7, Some(11)));
            assert_verdict(rows, expected);
        }
        // Shrinking keeps the adds the pop depends on.
        let ops = history(pop(&[("c", 1)]));
        let (minimal, is_minimal, _) = minimize(&ops, &CheckOptions::default());
        assert!(is_minimal);
        assert!(minimal.iter().any(|op| op.op == zadd("c", 1)), "{minimal:?}");
    }

    #[test]
    fn concurrent_set_and_sorted_set_operations_with_indeterminate_ones_are_linearizable() {
        let set_rows = |last: &[&str]| {
            vec![
                (0, "s", sadd("a"), Ret::Int(1), 0, Some(1)),
                // Its answer is lost; the pop below shows it took effect.
                (1, "s", sadd("b"), Ret::Unknown, 2, None),
                (2, "s", sadd2("c", "d"), Ret::Int(2), 3, Some(10)),
                (3, "s", Op::SPop, popped("b"), 4, Some(8)),
                (0, "s", Op::SMembers, members(&["a", "c", "d"]), 11, Some(12)),
                // May or may not have happened, at any time after its call.
                (3, "s", Op::SPop, Ret::Unknown, 13, None),
                (1, "s", srem("a"), Ret::Unknown, 14, None),
                (0, "s", Op::SMembers, members(last), 15, Some(16)),
            ]
        };
        for last in [&["a", "c", "d"][..], &["c", "d"], &["a", "d"], &["c"], &["d"]] {
            assert_verdict(set_rows(last), LIN);
        }
        // Two members gone by the pop alone, or "b" back.
        assert_verdict(set_rows(&["a"]), NOT);
        assert_verdict(set_rows(&["a", "b", "c", "d"]), NOT);

        let zset_rows = |last: &[(&str, i64)]| {
            vec![
                (0, "z", zadd("a", 1), Ret::Int(1), 0, Some(1)),
                (1, "z", zincrby("a", 2), Ret::Unknown, 2, None),
                (2, "z", zadd("b", 2), Ret::Int(1), 3, Some(10)),
                (3, "z", Op::ZPopMin, Ret::Unknown, 4, None),
                (0, "z", Op::ZRange, scored(last), 11, Some(12)),
            ]
        };
        // The increment and the pop, each or not, in either order.
        for (last, expected) in [
            (&[("a", 1), ("b", 2)][..], LIN),
            (&[("b", 2), ("a", 3)], LIN),
            (&[("b", 2)], LIN),
            (&[("a", 3)], LIN),
            // Popped, then made again by the increment.
            (&[("a", 2), ("b", 2)], LIN),
            (&[("a", 1)], NOT),
            // Both popped, by one pop.
            (&[("a", 2)], NOT),
        ] {
            assert_verdict(zset_rows(last), expected);
        }
    }

    #[test]
    fn set_and_sorted_set_commands_on_a_key_of_another_type_answer_wrongtype() {
        assert_verdict(
            vec![
                (0, "k", sadd("a"), Ret::Int(1), 0, Some(1)),
                (0, "k", zadd("a", 1), Ret::WrongType, 2, Some(3)),
                (0, "k", Op::ZPopMin, Ret::WrongType, 4, Some(5)),
                (0, "k", Op::Get, Ret::WrongType, 6, Some(7)),
                (0, "k", rpush("x"), Ret::WrongType, 8, Some(9)),
                (0, "k", Op::SMembers, members(&["a"]), 10, Some(11)),
                (0, "k", Op::Del, Ret::Del(1), 12, Some(13)),
                (0, "k", zincrby("a", 1), Ret::Bulk(Some("1".into())), 14, Some(15)),
                (0, "k", Op::SPop, Ret::WrongType, 16, Some(17)),
                (0, "k", Op::SCard, Ret::WrongType, 18, Some(19)),
                (0, "k", Op::LRange, Ret::WrongType, 20, Some(21)),
                // SET takes a key of any type.
                (0, "k", set("b"), Ret::Set, 22, Some(23)),
                (0, "k", sadd("a"), Ret::WrongType, 24, Some(25)),
                (0, "k", Op::ZRange, Ret::WrongType, 26, Some(27)),
                (0, "k", Op::Get, got("b"), 28, Some(29)),
            ],
            LIN,
        );
        assert_verdict(
            vec![
                (0, "k", sadd("a"), Ret::Int(1), 0, Some(1)),
                (0, "k", Op::ZRange, scored(&[]), 2, Some(3)),
            ],
            NOT,
        );
    }

    /// All permutations of `0..n`.
    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut all = Vec::new();
        for rest in permutations(n - 1) {
            for at in 0..=rest.len() {
                let mut p = rest.clone();
                p.insert(at, n - 1);
                all.push(p);
            }
        }
        all
    }

    #[test]
    fn concurrent_operations_in_every_order() {
        let ops = [set("5"), append("1"), Op::Incr, Op::Del];
        for order in permutations(ops.len()) {
            // Outputs of running the concurrent ops sequentially in `order`.
            let mut value = Some(Val::Str("x".to_string()));
            let mut rets = vec![Ret::Unknown; ops.len()];
            for &i in &order {
                let (effect, ret) = apply(value.as_ref(), &ops[i]);
                if let Effect::Becomes(v) = effect {
                    value = v;
                }
                rets[i] = ret;
            }
            let mut rows: Vec<Row<'_>> = vec![(9, "k", set("x"), Ret::Set, 0, Some(1))];
            for (i, op) in ops.iter().enumerate() {
                rows.push((
                    i,
                    "k",
                    op.clone(),
                    rets[i].clone(),
                    10 + i as u64,
                    Some(20 - i as u64),
                ));
            }
            let (_, last_read) = apply(value.as_ref(), &Op::Get);
            rows.push((9, "k", Op::Get, last_read, 30, Some(31)));
            assert_verdict(rows.clone(), LIN);
            // A final read inconsistent with every order fails.
            let last = rows.len() - 1;
            rows[last].3 = got("51x");
            assert_verdict(rows, NOT);
        }
    }

    #[test]
    fn budget_exhaustion_gives_unknown() {
        // Many concurrent INCRs force a search; one step cannot finish it.
        let rows: Vec<Row<'_>> = (0..10)
            .map(|i| (i, "k", Op::Incr, Ret::Incr(Ok(10 - i as i64)), 0, Some(100)))
            .collect();
        let ops = history(rows);
        let tiny = CheckOptions { steps_per_key_max: 3, ..CheckOptions::default() };
        assert_eq!(check_key(&ops, &tiny), (KeyVerdict::Unknown, 3));
        assert_eq!(verdict(&ops), LIN);
        let report = check(&ops, &tiny);
        assert!(report.is_ok());
        assert_eq!(report.unknown_keys, vec!["k".to_string()]);
    }

    #[test]
    fn malformed_histories_do_not_panic() {
        // Output of the wrong kind, completion before call, unknown with a completion time.
        assert_verdict(vec![(0, "k", Op::Get, Ret::Set, 0, Some(1))], NOT);
        assert_verdict(
            vec![
                (0, "k", set("a"), Ret::Set, 10, Some(5)),
                (1, "k", Op::Get, got("a"), 11, Some(12)),
            ],
            LIN,
        );
        assert_verdict(
            vec![
                (0, "k", set("a"), Ret::Unknown, 0, Some(1)),
                (1, "k", Op::Get, got("a"), 11, Some(12)),
            ],
            LIN,
        );
        assert_verdict(vec![(0, "k", set("a"), Ret::Set, u64::MAX, None)], LIN);
    }

    /// A stale read buried among unrelated operations on the same key.
    fn buried_stale_read() -> Vec<Operation> {
        let mut rows: Vec<Row<'_>> = Vec::new();
        let mut t = 0;
        let mut push = |rows: &mut Vec<Row<'_>>, client, op: Op, ret: Ret, length: u64| {
            rows.push((client, "k", op, ret, t, Some(t + length)));
            t += length + 1;
        };
        for i in 0..30 {
            let v = format!("p{i}");
            push(&mut rows, 0, set(&v), Ret::Set, 3);
            push(&mut rows, 1, Op::Get, got(&v), 2);
        }
        push(&mut rows, 0, set("a"), Ret::Set, 1); // id 60
        push(&mut rows, 0, set("b"), Ret::Set, 1); // id 61
        push(&mut rows, 1, Op::Get, got("a"), 1); // id 62: stale
        for i in 0..30 {
            let v = format!("q{i}");
            push(&mut rows, 0, set(&v), Ret::Set, 3);
            push(&mut rows, 1, Op::Get, got(&v), 2);
        }
        history(rows)
    }

    #[test]
    fn failing_history_shrinks_to_the_operations_that_matter() {
        let ops = buried_stale_read();
        assert_eq!(verdict(&ops), NOT);
        let (minimal, is_minimal, _) = minimize(&ops, &CheckOptions::default());
        assert!(is_minimal);
        assert_eq!(minimal.iter().map(|op| op.id).collect::<Vec<_>>(), vec![60, 61, 62]);
        // Without the newer write or the read, it is linearizable.
        for skip in [1, 2] {
            let mut fewer = minimal.clone();
            fewer.remove(skip);
            assert_eq!(verdict(&fewer), LIN);
        }
        // Without the older write it still fails, but only as a read of a value never written,
        // which is why shrinking keeps the write.
        assert_eq!(verdict(&minimal[1..]), NOT);
    }

    #[test]
    fn shrinking_keeps_what_outputs_depend_on() {
        // A duplicated INCR result among others: shrinking keeps the INCRs that lead to it
        // rather than reducing it to a lone "INCR -> 3" (which fails on its own).
        let incr = |n| Ret::Incr(Ok(n));
        let ops = history(vec![
            (0, "k", Op::Incr, incr(1), 0, Some(1)),
            (0, "k", Op::Incr, incr(2), 2, Some(3)),
            (1, "k", Op::Get, got("2"), 4, Some(5)),
            (0, "k", Op::Incr, incr(3), 6, Some(7)),
            (1, "k", Op::Incr, incr(3), 8, Some(9)),
            (1, "k", Op::Get, got("3"), 10, Some(11)),
        ]);
        let (minimal, is_minimal, _) = minimize(&ops, &CheckOptions::default());
        assert!(is_minimal);
        assert_eq!(minimal.iter().map(|op| op.id).collect::<Vec<_>>(), vec![0, 1, 3, 4]);
        // A linearizable history comes back whole.
        let (whole, is_minimal, _) = minimize(&ops[..4], &CheckOptions::default());
        assert_eq!((whole.len(), is_minimal), (4, false));
    }

    #[test]
    fn only_the_failing_key_is_reported() {
        let mut ops = buried_stale_read();
        for op in &mut ops {
            // The stale read and its two writes on k2, the rest before on k1 and after on k3.
            op.key = match op.id {
                0..=59 => "k1",
                60..=62 => "k2",
                _ => "k3",
            }
            .to_string();
        }
        let report = check(&ops, &CheckOptions::default());
        assert!(!report.is_ok());
        assert_eq!(report.keys_checked, 3);
        assert_eq!(report.failing_keys, vec!["k2".to_string()]);
        let failure = report.failure.as_ref().expect("a failure");
        assert_eq!(failure.key, "k2");
        assert!(failure.minimal);
        assert_eq!(failure.history.iter().map(|op| op.id).collect::<Vec<_>>(), vec![60, 61, 62]);
        assert!(report.to_string().contains("key \"k2\" is not linearizable"));
    }

    // -----------------------------------------------------------------------------------------
    // Synthetic histories

    /// SplitMix64, so the tests need no RNG crate.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            mix(self.0) % n.max(1)
        }
    }

    /// One of the ways an operation can go (see `outcomes`), at random; no draw when there is
    /// one way, so histories without SPOP come out as before it was modelled.
    fn one_way(rng: &mut Rng, mut ways: Vec<(Effect, Ret)>) -> (Effect, Ret) {
        let i = if ways.len() > 1 { rng.below(ways.len() as u64) as usize } else { 0 };
        ways.swap_remove(i)
    }

    /// What the keys of a generated history hold.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Kind {
        Strings,
        Lists,
        /// Sets and sorted sets.
        Sets,
    }

    /// A random history of a correct store: each operation takes effect at a random instant
    /// within its interval (indeterminate ones: at a random later instant, or never), and an
    /// SPOP pops a random member. Lists are pushed with unique elements as the workload does;
    /// sets and sorted sets (half the keys each) draw members from a pool of eight; a collection
    /// is now and then replaced and deleted at once (`Op::Replace`).
    fn synthetic(
        seed: u64,
        ops: usize,
        keys: usize,
        clients: usize,
        unknown_pct: u64,
        kind: Kind,
    ) -> Vec<Operation> {
        let mut rng = Rng(seed);
        let mut clock = vec![0u64; clients];
        // (effect time, op id)
        let mut effects: Vec<(u64, usize)> = Vec::new();
        let mut history = Vec::with_capacity(ops);
        for id in 0..ops {
            let client = rng.below(clients as u64) as usize;
            let call = clock[client] + rng.below(2_000_000);
            let duration = 100_000 + rng.below(5_000_000);
            let prefix = match kind {
                Kind::Strings => "k",
                Kind::Lists => "l",
                Kind::Sets => ["s", "z"][rng.below(2) as usize],
            };
            let key = format!("{prefix}{}", rng.below(keys as u64));
            let tag = format!("c{client}-{id}");
            let member = |rng: &mut Rng| format!("m{}", rng.below(8));
            let score = |rng: &mut Rng| rng.below(5) as i64 - 2;
            let op = match (prefix, rng.below(10)) {
                ("k", 0..=3) => Op::Get,
                ("k", 4..=5) => Op::Set(tag),
                ("k", 6) => Op::Del,
                ("k", 7..=8) => Op::Incr,
                ("k", _) => Op::Append(tag),
                ("l", 0..=2) => Op::LRange,
                ("l", 3) => Op::LPush(tag),
                ("l", 4) => Op::RPush(tag),
                ("l", 5) => Op::RPush2(format!("{tag}a"), format!("{tag}b")),
                ("l", 6..=7) => Op::LPop,
                ("l", 8) => Op::RPop,
                ("s", 0..=1) => Op::SMembers,
                ("s", 2) => Op::SAdd(member(&mut rng)),
                ("s", 3) => Op::SAdd2(member(&mut rng), member(&mut rng)),
                ("s", 4) => Op::SRem(member(&mut rng)),
                ("s", 5..=6) => Op::SPop,
                ("s", 7) => Op::SCard,
                ("z", 0..=1) => Op::ZRange,
                ("z", 2) => Op::ZAdd(member(&mut rng), score(&mut rng)),
                ("z", 3) => {
                    Op::ZAdd2(member(&mut rng), score(&mut rng), member(&mut rng), score(&mut rng))
                }
                ("z", 4) => Op::ZIncrBy(member(&mut rng), score(&mut rng)),
                ("z", 5..=6) => Op::ZPopMin,
                ("z", 7) => Op::ZRem(member(&mut rng)),
                _ => Op::Del,
            };
            // Half the DELs of a collection are MULTI SET DEL EXEC instead, as in the workload.
            let op =
                if op == Op::Del && prefix != "k" && rng.below(2) == 0 { Op::Replace } else { op };
            let indeterminate = rng.below(100) < unknown_pct;
            let complete = (!indeterminate).then_some(call + duration);
            if indeterminate {
                if rng.below(2) == 0 {
                    effects.push((call + rng.below(20_000_000), id));
                }
            } else {
                effects.push((call + rng.below(duration + 1), id));
            }
            clock[client] = call + duration;
            history.push(Operation {
                id,
                client,
                node: 1,
                key,
                op,
                ret: Ret::Unknown,
                call,
                complete,
                after: None,
            });
        }
        effects.sort_unstable();
        let mut store: HashMap<String, Val> = HashMap::new();
        for (_, id) in effects {
            let op = &mut history[id];
            let (effect, ret) = one_way(&mut rng, outcomes(store.get(&op.key), &op.op));
            match effect {
                Effect::Unchanged => {}
                Effect::Becomes(Some(v)) => drop(store.insert(op.key.clone(), v)),
                Effect::Becomes(None) => drop(store.remove(&op.key)),
            }
            if op.complete.is_some() {
                op.ret = ret;
            }
        }
        history
    }

    #[test]
    fn synthetic_histories_of_a_correct_store_are_linearizable() {
        let kinds = [Kind::Strings, Kind::Lists, Kind::Sets];
        for (seed, kind) in (0..20).flat_map(|seed| kinds.map(|kind| (seed, kind))) {
            let ops = synthetic(seed, 300, 3, 6, 5, kind);
            let report = check(&ops, &CheckOptions::default());
            let ok = report.is_ok() && report.unknown_keys.is_empty();
            assert!(ok, "seed {seed}, {kind:?}: {report}");
        }
    }

    #[test]
    fn synthetic_histories_with_a_corrupted_read_fail() {
        for seed in 0..20 {
            let mut ops = synthetic(seed, 300, 3, 6, 5, Kind::Strings);
            let Some(read) = ops.iter_mut().find(|op| op.op == Op::Get && op.ret != Ret::Unknown)
            else {
                continue;
            };
            read.ret = got("never-written");
            let id = read.id;
            let report = check(&ops, &CheckOptions::default());
            let failure = report.failure.expect("a failure");
            assert!(failure.minimal);
            let key_ops: Vec<Operation> =
                ops.iter().filter(|o| o.key == failure.key).cloned().collect();
            assert_eq!(
                failure.history.iter().map(|op| op.id).collect::<Vec<_>>(),
                vec![id],
                "{}\n{}",
                crate::timeline::render_text(&failure.history),
                crate::timeline::render_text(&key_ops)
            );
        }
    }

    #[test]
    fn shrunk_histories_still_fail() {
        let mut rng = Rng(7);
        let mut failures = 0;
        for seed in 0..30 {
            let mut ops = synthetic(seed, 200, 2, 6, 5, Kind::Strings);
            // Corrupt one completed operation's output, plausibly.
            let i = rng.below(ops.len() as u64) as usize;
            ops[i].ret = match (&ops[i].op, &ops[i].ret) {
                (_, Ret::Unknown) => continue,
                (Op::Get, _) => Ret::Get(None),
                (Op::Incr, Ret::Incr(Ok(n))) => Ret::Incr(Ok(n - 1)),
                (Op::Append(_), Ret::Append(n)) => Ret::Append(n + 1),
                (Op::Del, Ret::Del(n)) => Ret::Del(1 - n),
                _ => continue,
            };
            let report = check(&ops, &CheckOptions::default());
            let Some(failure) = &report.failure else { continue };
            failures += 1;
            assert!(failure.minimal);
            assert!(!failure.history.is_empty() && failure.history.len() <= 16, "{report}");
            assert_eq!(verdict(&failure.history), NOT, "{report}");
        }
        assert!(failures >= 10, "{failures}");
    }

    /// Prints how long checking histories of 2000 operations takes (run with --nocapture).
    #[test]
    fn timing_of_a_large_history() {
        let cases = [Kind::Strings, Kind::Lists, Kind::Sets]
            .into_iter()
            .flat_map(|kind| [(4, 8, 5, kind), (1, 8, 5, kind), (4, 8, 20, kind)]);
        for (keys, clients, unknown_pct, kind) in cases {
            let ops = synthetic(7, 2000, keys, clients, unknown_pct, kind);
            let start = Instant::now();
            let report = check(&ops, &CheckOptions::default());
            let elapsed = start.elapsed();
            assert!(report.is_ok() && report.unknown_keys.is_empty(), "{report}");
            println!(
                "2000 ops, {keys} {kind:?} keys, {clients} clients, {unknown_pct}% indeterminate: \
                 linearizable in {elapsed:?}, {} steps",
                report.steps
            );

            // A read in the middle of the history returns a value never written.
            let mut bad = ops.clone();
            let read =
                |op: &Operation| matches!(op.op, Op::Get | Op::LRange | Op::SMembers | Op::ZRange);
            let Some(i) = bad[1000..].iter().position(|op| read(op) && op.ret != Ret::Unknown)
            else {
                continue;
            };
            let never = "never-written".to_string();
            bad[1000 + i].ret = match bad[1000 + i].op {
                Op::LRange => Ret::Items(vec![never]),
                Op::SMembers => Ret::Members(vec![never]),
                Op::ZRange => Ret::Scored(vec![(never, "1".to_string())]),
                _ => got(&never),
            };
            let start = Instant::now();
            let report = check(&bad, &CheckOptions::default());
            let elapsed = start.elapsed();
            assert!(!report.is_ok() || !report.unknown_keys.is_empty());
            println!(
                "  with a corrupted read: {} failing key(s), {} unknown, shrunk to {} ops, in {elapsed:?}, {} steps",
                report.failing_keys.len(),
                report.unknown_keys.len(),
                report.failure.map_or(0, |f| f.history.len()),
                report.steps
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // Cross-check against brute force

    /// Linearizability by exhaustive search over orders, with none of the search's machinery:
    /// some order of the determinate operations plus any subset of the indeterminate ones,
    /// consistent with real time, explains every determinate output.
    fn brute_force(ops: &[Operation]) -> bool {
        fn extend(ops: &[Operation], placed: &mut Vec<bool>, value: Option<Val>) -> bool {
            let all_known_placed =
                ops.iter().zip(placed.iter()).all(|(op, &p)| p || op.ret == Ret::Unknown);
            if all_known_placed {
                return true;
            }
            for i in 0..ops.len() {
                if placed[i] {
                    continue;
                }
                // Every unplaced operation that must precede ops[i] blocks it.
                let blocked = (0..ops.len())
                    .any(|j| j != i && !placed[j] && return_time(&ops[j]) < ops[i].call);
                if blocked {
                    continue;
                }
                for (effect, ret) in outcomes(value.as_ref(), &ops[i].op) {
                    if ops[i].ret != Ret::Unknown && ops[i].ret != ret {
                        continue;
                    }
                    let next = match effect {
                        Effect::Unchanged => value.clone(),
                        Effect::Becomes(v) => v,
                    };
                    placed[i] = true;
                    let found = extend(ops, placed, next);
                    placed[i] = false;
                    if found {
                        return true;
                    }
                }
            }
            false
        }
        extend(ops, &mut vec![false; ops.len()], None)
    }

    /// A small random history of one key: random overlapping intervals on a coarse clock (so
    /// ties happen), outputs from a correct execution, some replaced by plausible wrong ones,
    /// and some operations indeterminate. With `Kind::Lists`, mostly list operations over two
    /// elements (repeated, so identical pushes meet), with a SET, a MULTI SET DEL and a GET now
    /// and then. With `Kind::Sets`, mostly operations of a set or (half the histories) of a
    /// sorted set over three members, so SPOP has choices, with now and then one of the other
    /// type, a SET, a MULTI SET DEL or a GET.
    fn small_random(rng: &mut Rng, kind: Kind) -> Vec<Operation> {
        fn element(rng: &mut Rng) -> String {
            ["x", "y"][rng.below(2) as usize].to_string()
        }
        fn member(rng: &mut Rng) -> String {
            ["x", "y", "z"][rng.below(3) as usize].to_string()
        }
        fn score(rng: &mut Rng) -> i64 {
            rng.below(3) as i64 - 1
        }
        fn members(rng: &mut Rng) -> Vec<String> {
            let all = [&[][..], &["x"], &["y"], &["x", "y"], &["x", "z"], &["x", "y", "z"]];
            all[rng.below(all.len() as u64) as usize].iter().map(|m| m.to_string()).collect()
        }
        let zsets = kind == Kind::Sets && rng.below(2) == 0;
        let n = 2 + rng.below(6) as usize;
        let mut ops = Vec::new();
        let mut clock = [0u64; 3];
        for id in 0..n {
            let client = rng.below(3) as usize;
            let call = clock[client] + rng.below(4);
            let complete = call + rng.below(6);
            clock[client] = complete + 1;
            let op = match kind {
                Kind::Sets if zsets => match rng.below(13) {
                    0 => Op::ZAdd(member(rng), score(rng)),
                    1 => Op::ZAdd2(member(rng), score(rng), member(rng), score(rng)),
                    2 => Op::ZIncrBy(member(rng), score(rng)),
                    3 | 4 => Op::ZPopMin,
                    5 | 6 => Op::ZRange,
                    7 => Op::ZRem(member(rng)),
                    8 => Op::Del,
                    9 => Op::SAdd(member(rng)),
                    10 => Op::Set("a".to_string()),
                    11 => Op::Replace,
                    _ => Op::Get,
                },
                Kind::Sets => match rng.below(13) {
                    0 => Op::SAdd(member(rng)),
                    1 => Op::SAdd2(member(rng), member(rng)),
                    2 => Op::SRem(member(rng)),
                    3 | 4 => Op::SPop,
                    5 | 6 => Op::SMembers,
                    7 => Op::SCard,
                    8 => Op::Del,
                    9 => Op::ZAdd(member(rng), score(rng)),
                    10 => Op::Set("a".to_string()),
                    11 => Op::Replace,
                    _ => Op::Get,
                },
                Kind::Lists => match rng.below(11) {
                    0 => Op::LPush(element(rng)),
                    1 => Op::RPush(element(rng)),
                    2 => Op::RPush2(element(rng), element(rng)),
                    3 => Op::LPop,
                    4 => Op::RPop,
                    5 | 6 => Op::LRange,
                    7 => Op::Del,
                    8 => Op::Set("a".to_string()),
                    9 => Op::Replace,
                    _ => Op::Get,
                },
                Kind::Strings => match rng.below(7) {
                    0 | 1 => Op::Get,
                    2 => Op::Set(
                        ["a", "1", "9223372036854775807"][rng.below(3) as usize].to_string(),
                    ),
                    3 => Op::Del,
                    4 => Op::Incr,
                    5 => Op::GetSet(["a", "1"][rng.below(2) as usize].to_string()),
                    _ => Op::Append(["x", "2"][rng.below(2) as usize].to_string()),
                },
            };
            ops.push(Operation {
                id,
                client,
                node: 1,
                key: "k".into(),
                op,
                ret: Ret::Unknown,
                call,
                complete: Some(complete),
                after: None,
            });
        }
        // A correct execution: each operation takes effect at some point of its interval.
        let mut order: Vec<(u64, usize)> = ops
            .iter()
            .map(|op| (op.call + rng.below(op.complete.unwrap_or(op.call) - op.call + 1), op.id))
            .collect();
        order.sort_unstable();
        let mut value: Option<Val> = None;
        for (_, id) in order {
            let (effect, ret) = one_way(rng, outcomes(value.as_ref(), &ops[id].op));
            if let Effect::Becomes(v) = effect {
                value = v;
            }
            ops[id].ret = ret;
        }
        for op in &mut ops {
            match rng.below(8) {
                0 => {
                    op.ret = Ret::Unknown;
                    op.complete = None;
                }
                1 => {
                    op.ret = match op.op {
                        Op::Get | Op::GetSet(_) => [Ret::Get(None), got("a"), got("1"), got("ax")]
                            [rng.below(4) as usize]
                            .clone(),
                        Op::Set(_) => Ret::Set,
                        Op::Del => Ret::Del(rng.below(2) as i64),
                        Op::Incr => Ret::Incr(if rng.below(3) == 0 {
                            Err(())
                        } else {
                            Ok(rng.below(4) as i64)
                        }),
                        Op::Append(_) => Ret::Append(1 + rng.below(3) as i64),
                        Op::LPush(_) | Op::RPush(_) | Op::RPush2(..) => {
                            [Ret::Int(1 + rng.below(4) as i64), Ret::WrongType]
                                [rng.below(2) as usize]
                                .clone()
                        }
                        Op::LPop | Op::RPop => {
                            let e = Ret::Bulk(Some(element(rng)));
                            [Ret::Bulk(None), e, Ret::WrongType][rng.below(3) as usize].clone()
                        }
                        Op::LRange => {
                            let (a, b) = (element(rng), element(rng));
                            let items = [vec![], vec![a.clone()], vec![a, b]];
                            Ret::Items(items[rng.below(3) as usize].clone())
                        }
                        Op::SAdd(_)
                        | Op::SAdd2(..)
                        | Op::SRem(_)
                        | Op::SCard
                        | Op::ZAdd(..)
                        | Op::ZAdd2(..)
                        | Op::ZRem(_) => [Ret::Int(rng.below(3) as i64), Ret::WrongType]
                            [rng.below(2) as usize]
                            .clone(),
                        Op::SPop => {
                            let m = Ret::Bulk(Some(member(rng)));
                            [Ret::Bulk(None), m, Ret::WrongType][rng.below(3) as usize].clone()
                        }
                        Op::SMembers => Ret::Members(members(rng)),
                        Op::Replace => {
                            [Ret::Replaced, Ret::WrongType][rng.below(2) as usize].clone()
                        }
                        Op::ZIncrBy(..) => Ret::Bulk(Some(score(rng).to_string())),
                        Op::ZPopMin => {
                            let pair = (member(rng), score(rng).to_string());
                            [Ret::Scored(vec![]), Ret::Scored(vec![pair])][rng.below(2) as usize]
                                .clone()
                        }
                        Op::ZRange => {
                            let scores = (score(rng), score(rng));
                            let pairs: Vec<(String, String)> = members(rng)
                                .into_iter()
                                .zip([scores.0, scores.0, scores.1])
                                .map(|(m, s)| (m, s.to_string()))
                                .collect();
                            Ret::Scored(pairs)
                        }
                    }
                }
                _ => {}
            }
        }
        ops
    }

    #[test]
    fn search_agrees_with_brute_force() {
        agrees_with_brute_force(42, Kind::Strings);
    }

    #[test]
    fn search_agrees_with_brute_force_on_lists() {
        agrees_with_brute_force(43, Kind::Lists);
    }

    #[test]
    fn search_agrees_with_brute_force_on_sets_and_sorted_sets() {
        agrees_with_brute_force(44, Kind::Sets);
    }

    /// 20,000 small random histories (`small_random`) get the brute force's verdict.
    fn agrees_with_brute_force(seed: u64, kind: Kind) {
        let mut rng = Rng(seed);
        let (mut linearizable, mut not) = (0, 0);
        for case in 0..20_000 {
            let ops = small_random(&mut rng, kind);
            let expected = if brute_force(&ops) { LIN } else { NOT };
            assert_eq!(
                verdict(&ops),
                expected,
                "case {case}:\n{}",
                crate::timeline::render_text(&ops)
            );
            if expected == LIN {
                linearizable += 1;
            } else {
                not += 1;
            }
        }
        // Both outcomes are well represented.
        assert!(linearizable > 5_000 && not > 5_000, "{linearizable} / {not}");
    }

    #[test]
    fn reductions_for_indeterminate_operations_lose_nothing() {
        let incr = |n| Ret::Incr(Ok(n));
        // Two indeterminate INCRs: either, both or none may have happened, in any position.
        for (seen, expected) in [("1", LIN), ("2", LIN), ("3", LIN), ("4", NOT)] {
            assert_verdict(
                vec![
                    (0, "k", Op::Incr, Ret::Unknown, 0, None),
                    (1, "k", Op::Incr, Ret::Unknown, 1, None),
                    (2, "k", Op::Incr, incr(1), 2, Some(3)),
                    (2, "k", Op::Get, got(seen), 4, Some(5)),
                ],
                expected,
            );
        }
        // Indeterminate writes, each may land any time after its call.
        assert_verdict(
            vec![
                (0, "k", set("x"), Ret::Unknown, 0, None),
                (1, "k", set("y"), Ret::Unknown, 1, None),
                (2, "k", Op::Get, got("y"), 2, Some(3)),
                (2, "k", Op::Get, got("x"), 4, Some(5)),
                (2, "k", set("z"), Ret::Set, 6, Some(7)),
                (2, "k", Op::Get, got("z"), 8, Some(9)),
            ],
            LIN,
        );
        assert_verdict(
            vec![
                (0, "k", set("x"), Ret::Unknown, 0, None),
                (1, "k", set("y"), Ret::Unknown, 1, None),
                (2, "k", Op::Get, got("x"), 2, Some(3)),
                (2, "k", Op::Get, got("y"), 4, Some(5)),
                (2, "k", Op::Get, got("x"), 6, Some(7)),
            ],
            NOT,
        );
        // An indeterminate INCR that fails (a no-op) and an indeterminate DEL.
        assert_verdict(
            vec![
                (0, "k", set("a"), Ret::Set, 0, Some(1)),
                (1, "k", Op::Incr, Ret::Unknown, 2, None),
                (2, "k", Op::Del, Ret::Unknown, 3, None),
                (0, "k", Op::Get, got("a"), 4, Some(5)),
                (0, "k", Op::Get, NIL, 6, Some(7)),
                (0, "k", Op::Incr, incr(1), 8, Some(9)),
            ],
            LIN,
        );
        // An indeterminate write just before a SET matters when something observes it.
        assert_verdict(
            vec![
                (0, "k", append("a"), Ret::Unknown, 0, None),
                (1, "k", Op::Del, Ret::Del(1), 1, Some(2)),
                (1, "k", set("b"), Ret::Set, 3, Some(4)),
                (1, "k", Op::Get, got("b"), 5, Some(6)),
            ],
            LIN,
        );
    }
}
