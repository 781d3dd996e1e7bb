//! Collections stored element by element: the metadata record under the user key says where
//! the elements are (`Coll::id`), and each element is one record of the element space, keyed
//! `id (8 bytes, big-endian) ‖ tag ‖ rest`:
//!
//! | type | tag | rest | value |
//! |---|---|---|---|
//! | hash | `h` | field | value |
//! | list | `l` | sequence number (8 bytes, big-endian) | element |
//! | set | `s` | member | empty |
//! | sorted set, by member | `m` | member | score |
//! | sorted set, by score | `o` | ordered score ‖ member | empty |
//!
//! A write to a big collection costs O(log n), and a read of a range is one ordered walk.
//! A collection's elements are reachable only through the id in its current metadata, so a key
//! deleted, expired or overwritten is gone at once; its elements are deleted in the same write
//! (one by one when few, else as one range), so the element space holds only live elements and
//! a crash or a snapshot never sees a half-dropped collection.

use super::record::{Coll, Data, Kind, Record};
use super::{error, live, KvRead, Mutation, NotARecord, Value, WriteReply as Reply};

/// Element tags.
pub const HASH_FIELD: u8 = b'h';
pub const LIST_ITEM: u8 = b'l';
pub const SET_MEMBER: u8 = b's';
pub const ZSET_MEMBER: u8 = b'm';
pub const ZSET_ORDER: u8 = b'o';

/// A dead collection of at most this many element records is deleted record by record; a
/// larger one as one range (a range tombstone costs reads more than a few point deletes).
pub const DROP_POINTS_MAX: u64 = 64;

/// More collections created (or written) in one entry than ids can tell apart.
pub const ERR_TOO_MANY_WRITES: &str =
    "ERR too many collection writes in one transaction (at most 1048575)";

/// What `apply` knows of the entry it applies: its time, and its position in the log, from
/// which collection ids are made. Every replica applies an entry with the same `Ctx`.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// The entry's time (`Entry::time`), ms since the Unix epoch.
    pub time: u64,
    index: u64,
    term: u64,
    seq: u32,
    /// The choices every replica must make alike (SPOP's members), drawn in order.
    rng: SplitMix64,
}

/// SplitMix64 (Steele, Lea, Flood 2014), written out: its output is part of the replicated
/// state, so it must never change with a crate's version.
#[derive(Clone, Debug)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0), by Lemire's multiply-shift (bias below 2^-32 for the sizes
    /// here).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

/// Ids made from one entry: `index << 20 | seq`, so at most 2^20 - 1 per entry.
const SEQ_BITS: u32 = 20;

impl Ctx {
    /// The context of entry `index` of `term`, made at `time`.
    pub fn new(time: u64, index: u64, term: u64) -> Ctx {
        let seed = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ term.rotate_left(32);
        Ctx { time, index, term, seq: 0, rng: SplitMix64::new(seed) }
    }

    /// Seeds the choices from `seed` instead (`PlantedBug::PopChoiceByNode`: each node its own).
    pub fn reseed(&mut self, seed: u64) {
        self.rng = SplitMix64::new(seed);
    }

    /// The generator of the choices every replica makes alike.
    pub fn rng(&mut self) -> &mut SplitMix64 {
        &mut self.rng
    }

    /// A number no other call, on this entry or any other, returns: a new collection's id, or
    /// a write's stamp. None once the entry has made 2^20 - 1 of them.
    pub fn next_id(&mut self) -> Option<u64> {
        if self.seq >= (1 << SEQ_BITS) - 1 {
            return None;
        }
        self.seq += 1;
        Some(self.index << SEQ_BITS | self.seq as u64)
    }

    /// The entry's term (with its index, the seed of choices every replica must make alike).
    pub fn term(&self) -> u64 {
        self.term
    }
}

/// The key of element `rest` of collection `id` under `tag`.
pub fn element_key(id: u64, tag: u8, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + rest.len());
    k.extend_from_slice(&id.to_be_bytes());
    k.push(tag);
    k.extend_from_slice(rest);
    k
}

/// Every element key of collection `id`: `[from, to)`.
pub fn id_range(id: u64) -> (Vec<u8>, Vec<u8>) {
    let from = id.to_be_bytes().to_vec();
    let to = match id.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 10],
    };
    (from, to)
}

/// The element keys of collection `id` under `tag`: `[from, to)`.
pub fn tag_range(id: u64, tag: u8) -> (Vec<u8>, Vec<u8>) {
    (element_key(id, tag, b""), element_key(id, tag + 1, b""))
}

/// The key of list element `seq` of collection `id`.
pub fn list_key(id: u64, seq: u64) -> Vec<u8> {
    element_key(id, LIST_ITEM, &seq.to_be_bytes())
}

/// The stored record of `key`, live or expired.
pub fn stored<S: KvRead>(state: &S, key: &[u8]) -> Result<Option<Record>, S::Error> {
    match state.get(key)? {
        None => Ok(None),
        Some(b) => Record::decode(&b).map(Some).ok_or_else(|| S::corrupt(key)),
    }
}

/// The mutations that delete the elements of `c`, a collection whose key goes away.
pub fn drop_elements<S: KvRead>(state: &S, c: &Coll) -> Result<Vec<Mutation>, S::Error> {
    if c.size == 0 {
        return Ok(Vec::new());
    }
    if c.kind == Kind::List && c.size <= DROP_POINTS_MAX {
        return Ok((0..c.size)
            .map(|i| Mutation::DeleteElement(list_key(c.id, c.head.wrapping_add(i))))
            .collect());
    }
    let (from, to) = id_range(c.id);
    let records = if c.kind == Kind::ZSet { 2 * c.size } else { c.size };
    if records <= DROP_POINTS_MAX {
        let found = state.elements(&from, &to, false, DROP_POINTS_MAX as usize + 1)?;
        if found.len() as u64 <= DROP_POINTS_MAX {
            return Ok(found.into_iter().map(|(k, _)| Mutation::DeleteElement(k)).collect());
        }
    }
    Ok(vec![Mutation::DeleteElements { from, to }])
}

/// The mutations that delete the elements of whatever collection is stored at `key` (live or
/// expired): what a write that replaces or deletes the key adds.
pub fn retire<S: KvRead>(state: &S, key: &[u8]) -> Result<Vec<Mutation>, S::Error> {
    if !state.may_hold_collection(key) {
        return Ok(Vec::new());
    }
    retire_record(state, stored(state, key)?.as_ref())
}

/// `retire` of an already read record.
pub fn retire_record<S: KvRead>(state: &S, r: Option<&Record>) -> Result<Vec<Mutation>, S::Error> {
    match r {
        Some(Record { data: Data::Coll(c), .. }) => drop_elements(state, c),
        _ => Ok(Vec::new()),
    }
}

/// A collection of `kind` opened for a write: the live one, or a new empty one (with the
/// mutations retiring an expired one stored there).
pub struct Opened {
    pub coll: Coll,
    pub expires_at: Option<u64>,
    /// Whether it existed (and was live) before.
    pub existed: bool,
    /// Mutations to write before the write's own.
    pub muts: Vec<Mutation>,
}

/// A write refused, with its reply (and no mutations).
pub type Refused = (Vec<Mutation>, Reply);

/// A live collection of `kind` at `key` and its deadline, None if absent, or the WRONGTYPE
/// reply.
pub type CollRead = Result<Option<(Coll, Option<u64>)>, Refused>;

pub fn read_coll<S: KvRead>(
    state: &S,
    key: &[u8],
    now: u64,
    kind: Kind,
) -> Result<CollRead, S::Error> {
    let r = live(state.get(key)?, now).map_err(|NotARecord| S::corrupt(key))?;
    Ok(match r {
        None => Ok(None),
        Some(Record { data: Data::Coll(c), expires_at }) if c.kind == kind => {
            Ok(Some((c, expires_at)))
        }
        Some(_) => Err(error(super::ERR_WRONGTYPE)),
    })
}

/// Opens `key` for a write to a collection of `kind`: WRONGTYPE if it holds another type,
/// the `ERR_TOO_MANY_WRITES` reply if the entry has no ids left.
pub fn open<S: KvRead>(
    state: &S,
    key: &[u8],
    ctx: &mut Ctx,
    kind: Kind,
) -> Result<Result<Opened, Refused>, S::Error> {
    let r = stored(state, key)?;
    let now = ctx.time;
    Ok(match r {
        Some(Record { data: Data::Coll(c), expires_at }) if expires_at.is_none_or(|t| now <= t) => {
            if c.kind != kind {
                return Ok(Err(error(super::ERR_WRONGTYPE)));
            }
            Ok(Opened { coll: c, expires_at, existed: true, muts: Vec::new() })
        }
        Some(Record { data: Data::Str(_), expires_at }) if expires_at.is_none_or(|t| now <= t) => {
            Err(error(super::ERR_WRONGTYPE))
        }
        other => {
            let muts = retire_record(state, other.as_ref())?;
            let Some(id) = ctx.next_id() else { return Ok(Err(error(ERR_TOO_MANY_WRITES))) };
            Ok(Opened { coll: Coll::new(kind, id), expires_at: None, existed: false, muts })
        }
    })
}

/// The mutation that records `c` after a write: a new stamp (WATCH sees every write), or the
/// key deleted when the collection is empty (its elements were deleted one by one).
pub fn store_coll(
    key: &[u8],
    mut c: Coll,
    expires_at: Option<u64>,
    ctx: &mut Ctx,
) -> Result<Mutation, Refused> {
    if c.size == 0 {
        return Ok(Mutation::Delete(key.to_vec()));
    }
    c.stamp = ctx.next_id().ok_or_else(|| error(ERR_TOO_MANY_WRITES))?;
    Ok(Mutation::Put(key.to_vec(), Record { data: Data::Coll(c), expires_at }.encode()))
}

/// Elements as (the key after the id and tag, value).
pub type Elements = Vec<(Vec<u8>, Value)>;

/// Every element of collection `id` under `tag`, in key order, as (rest of the key, value).
pub fn all_elements<S: KvRead>(state: &S, id: u64, tag: u8) -> Result<Elements, S::Error> {
    const PAGE: usize = 1024;
    let (mut from, to) = tag_range(id, tag);
    let mut out = Vec::new();
    loop {
        let page = state.elements(&from, &to, false, PAGE)?;
        let full = page.len() == PAGE;
        if let Some((last, _)) = page.last() {
            from = last.clone();
            from.push(0);
        }
        out.extend(page.into_iter().map(|(k, v)| (k[9..].to_vec(), v)));
        if !full {
            return Ok(out);
        }
    }
}

/// A copy of collection `c`'s elements under the new id `to` (COPY).
pub fn copy_elements<S: KvRead>(state: &S, c: &Coll, to: u64) -> Result<Vec<Mutation>, S::Error> {
    const PAGE: usize = 1024;
    let (mut from, end) = id_range(c.id);
    let mut out = Vec::new();
    loop {
        let page = state.elements(&from, &end, false, PAGE)?;
        let full = page.len() == PAGE;
        if let Some((last, _)) = page.last() {
            from = last.clone();
            from.push(0);
        }
        for (k, v) in page {
            let mut nk = to.to_be_bytes().to_vec();
            nk.extend_from_slice(&k[8..]);
            out.push(Mutation::PutElement(nk, v));
        }
        if !full {
            return Ok(out);
        }
    }
}
