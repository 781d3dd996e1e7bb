//! What the key space stores under a user key: a string, or a collection's metadata record
//! (its elements live apart, under the collection's id: see `coll`).

/// The kinds of collection, each stored element by element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Hash,
    List,
    Set,
    ZSet,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Hash => 2,
            Kind::List => 3,
            Kind::Set => 4,
            Kind::ZSet => 5,
        }
    }

    fn of_tag(tag: u8) -> Option<Kind> {
        Some(match tag {
            2 => Kind::Hash,
            3 => Kind::List,
            4 => Kind::Set,
            5 => Kind::ZSet,
            _ => return None,
        })
    }

    /// TYPE's answer.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Hash => "hash",
            Kind::List => "list",
            Kind::Set => "set",
            Kind::ZSet => "zset",
        }
    }
}

/// A collection's metadata: where its elements are and what OBJECT ENCODING needs to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coll {
    pub kind: Kind,
    /// The prefix of this incarnation's elements (`Ctx::new_id`): unique for ever, so a key
    /// deleted and created again never sees the old elements.
    pub id: u64,
    /// Changed by every write to the collection (also one that changes no size): what WATCH
    /// compares.
    pub stamp: u64,
    /// Members now.
    pub size: u64,
    /// The most members it ever held (Redis never converts an encoding back).
    pub peak: u64,
    /// The longest element it ever held, in bytes.
    pub elem_max: u32,
    /// Bit 0: a set member that is no integer was added (no intset any more).
    pub flags: u8,
    /// Lists: the sequence number of the first element (elements are `head..head + size`).
    pub head: u64,
}

/// The sequence number of a new list's first element: pushes on the left count down from it,
/// on the right up.
pub const LIST_HEAD_START: u64 = 1 << 63;

impl Coll {
    pub fn new(kind: Kind, id: u64) -> Coll {
        Coll { kind, id, stamp: id, size: 0, peak: 0, elem_max: 0, flags: 0, head: LIST_HEAD_START }
    }

    /// Notes an element of `len` bytes written.
    pub fn saw(&mut self, len: usize) {
        self.elem_max = self.elem_max.max(len.min(u32::MAX as usize) as u32);
    }

    /// Sets the size, keeping the peak.
    pub fn resize(&mut self, size: u64) {
        self.size = size;
        self.peak = self.peak.max(size);
    }
}

/// What a key holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    Str(Vec<u8>),
    Coll(Coll),
}

/// A stored value and when it expires (ms since the Unix epoch; None: never). Encoded as a
/// type byte (0: string; 2 hash, 3 list, 4 set, 5 zset: a collection's metadata), a flags byte
/// (1: has a deadline), the deadline (8 bytes, big-endian) if it has one, then the string's
/// bytes, or the metadata: id, stamp, size, peak (8 bytes each), the longest element (4),
/// flags (1), the list head (8), all big-endian. (Type 1, a whole hash in one record, was
/// format 4's: no build reads it now.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub data: Data,
    pub expires_at: Option<u64>,
}

const COLL_BYTES: usize = 8 * 4 + 4 + 1 + 8;

impl Record {
    /// A string, expiring at `expires_at` (None: never).
    pub fn string(value: Vec<u8>, expires_at: Option<u64>) -> Record {
        Record { data: Data::Str(value), expires_at }
    }

    /// TYPE's answer.
    pub fn type_name(&self) -> &'static str {
        match &self.data {
            Data::Str(_) => "string",
            Data::Coll(c) => c.kind.name(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            10 + match &self.data {
                Data::Str(v) => v.len(),
                Data::Coll(_) => COLL_BYTES,
            },
        );
        out.push(match &self.data {
            Data::Str(_) => 0,
            Data::Coll(c) => c.kind.tag(),
        });
        match self.expires_at {
            Some(t) => {
                out.push(1);
                out.extend_from_slice(&t.to_be_bytes());
            }
            None => out.push(0),
        }
        match &self.data {
            Data::Str(v) => out.extend_from_slice(v),
            Data::Coll(c) => {
                for n in [c.id, c.stamp, c.size, c.peak] {
                    out.extend_from_slice(&n.to_be_bytes());
                }
                out.extend_from_slice(&c.elem_max.to_be_bytes());
                out.push(c.flags);
                out.extend_from_slice(&c.head.to_be_bytes());
            }
        }
        out
    }

    /// The deadline of an encoded record, without decoding the rest.
    pub fn deadline_of(b: &[u8]) -> Option<u64> {
        match b {
            [0 | 2..=5, 1, rest @ ..] if rest.len() >= 8 => {
                Some(u64::from_be_bytes(rest[..8].try_into().ok()?))
            }
            _ => None,
        }
    }

    /// Whether encoded bytes are a collection's metadata (its elements live apart).
    pub fn is_collection(b: &[u8]) -> bool {
        matches!(b.first(), Some(2..=5))
    }

    /// None for bytes that are no record of this build (never a panic).
    pub fn decode(b: &[u8]) -> Option<Record> {
        let (&tag, rest) = b.split_first()?;
        let (&flags, rest) = rest.split_first()?;
        let (expires_at, body) = match flags {
            0 => (None, rest),
            1 if rest.len() >= 8 => {
                (Some(u64::from_be_bytes(rest[..8].try_into().ok()?)), &rest[8..])
            }
            _ => return None,
        };
        let data = match tag {
            0 => Data::Str(body.to_vec()),
            _ => {
                let kind = Kind::of_tag(tag)?;
                if body.len() != COLL_BYTES {
                    return None;
                }
                let n = |at: usize| u64::from_be_bytes(body[at..at + 8].try_into().expect("8"));
                Data::Coll(Coll {
                    kind,
                    id: n(0),
                    stamp: n(8),
                    size: n(16),
                    peak: n(24),
                    elem_max: u32::from_be_bytes(body[32..36].try_into().expect("4")),
                    flags: body[36],
                    head: n(37),
                })
            }
        };
        Some(Record { data, expires_at })
    }

    /// Whether the key still exists at `now`: Redis keeps a key through its deadline's
    /// millisecond and drops it after.
    pub fn live_at(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|t| now <= t)
    }
}
