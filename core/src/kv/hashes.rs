//! Hashes, field by field: HSET of one field costs one element write and the metadata, however
//! large the hash. Fields come back in byte order (Redis answers a small hash in insertion
//! order, a large one in no order: clients may rely on neither).

use super::coll::{self, all_elements, element_key, open, read_coll, store_coll, Ctx, HASH_FIELD};
use super::record::Kind;
use super::{
    add_float, error, parse_i64, KvRead, Mutation, WriteReply, ERR_HASH_NOT_FLOAT,
    ERR_HASH_NOT_INTEGER, ERR_OVERFLOW,
};
use std::collections::BTreeMap;

type Applied = (Vec<Mutation>, WriteReply);

fn field_key(id: u64, field: &[u8]) -> Vec<u8> {
    element_key(id, HASH_FIELD, field)
}

/// HSET (count of new fields), HMSET (`reply_ok`), HSETNX (`nx`, one pair).
pub fn hset<S: KvRead>(
    state: &S,
    key: &[u8],
    pairs: &[(Vec<u8>, Vec<u8>)],
    nx: bool,
    reply_ok: bool,
    ctx: &mut Ctx,
) -> Result<Applied, S::Error> {
    let mut h = typed!(open(state, key, ctx, Kind::Hash)?);
    // The last value of a field named twice wins; it counts once.
    let mut writes: BTreeMap<&[u8], &[u8]> = BTreeMap::new();
    for (f, v) in pairs {
        writes.insert(f, v);
    }
    let mut added = 0;
    for (f, v) in &writes {
        let k = field_key(h.coll.id, f);
        let exists = h.existed && state.element(&k)?.is_some();
        if nx && exists {
            return Ok((Vec::new(), WriteReply::Integer(0)));
        }
        if !exists {
            added += 1;
        }
        h.coll.saw(f.len().max(v.len()));
        h.muts.push(Mutation::PutElement(k, v.to_vec()));
    }
    h.coll.resize(h.coll.size + added);
    let meta = typed!(store_coll(key, h.coll, h.expires_at, ctx));
    h.muts.push(meta);
    let reply = if reply_ok { WriteReply::Ok } else { WriteReply::Integer(added as i64) };
    Ok((h.muts, reply))
}

pub fn hdel<S: KvRead>(
    state: &S,
    key: &[u8],
    fields: &[Vec<u8>],
    ctx: &mut Ctx,
) -> Result<Applied, S::Error> {
    let Some((mut c, t)) = typed!(read_coll(state, key, ctx.time, Kind::Hash)?) else {
        return Ok((Vec::new(), WriteReply::Integer(0)));
    };
    let mut muts = Vec::new();
    let mut gone = std::collections::BTreeSet::new();
    for f in fields {
        let k = field_key(c.id, f);
        if !gone.contains(&k) && state.element(&k)?.is_some() {
            gone.insert(k.clone());
            muts.push(Mutation::DeleteElement(k));
        }
    }
    if muts.is_empty() {
        return Ok((muts, WriteReply::Integer(0)));
    }
    let removed = muts.len() as u64;
    c.resize(c.size.saturating_sub(removed));
    muts.push(typed!(store_coll(key, c, t, ctx)));
    Ok((muts, WriteReply::Integer(removed as i64)))
}

/// HINCRBY (`Ok(delta)`) and HINCRBYFLOAT (`Err(delta as written)`).
pub fn hincr<S: KvRead>(
    state: &S,
    key: &[u8],
    field: &[u8],
    delta: Result<i64, &[u8]>,
    ctx: &mut Ctx,
) -> Result<Applied, S::Error> {
    let mut h = typed!(open(state, key, ctx, Kind::Hash)?);
    let k = field_key(h.coll.id, field);
    let current = if h.existed { state.element(&k)? } else { None };
    let (value, reply) = match delta {
        Ok(delta) => {
            let n = match &current {
                None => 0,
                Some(v) => match parse_i64(v) {
                    Some(n) => n,
                    None => return Ok(error(ERR_HASH_NOT_INTEGER)),
                },
            };
            let Some(n) = n.checked_add(delta) else { return Ok(error(ERR_OVERFLOW)) };
            (n.to_string().into_bytes(), WriteReply::Integer(n))
        }
        Err(delta) => {
            let text = typed!(add_float(current.as_deref(), delta, ERR_HASH_NOT_FLOAT));
            (text.clone(), WriteReply::Bulk(text))
        }
    };
    if current.is_none() {
        h.coll.resize(h.coll.size + 1);
    }
    h.coll.saw(field.len().max(value.len()));
    h.muts.push(Mutation::PutElement(k, value));
    h.muts.push(typed!(store_coll(key, h.coll, h.expires_at, ctx)));
    Ok((h.muts, reply))
}

/// Hash reads.
pub enum HashQuery<'a> {
    Get(&'a [u8]),
    MGet(&'a [Vec<u8>]),
    Exists(&'a [u8]),
    Len,
    StrLen(&'a [u8]),
    /// HGETALL (both), HKEYS (`fields`), HVALS (`values`).
    All {
        fields: bool,
        values: bool,
    },
    /// HSCAN: every field (matching `pattern`) at once, cursor 0.
    Scan(Option<&'a [u8]>),
}

pub fn query<S: KvRead>(
    state: &S,
    key: &[u8],
    now: u64,
    q: HashQuery<'_>,
) -> Result<WriteReply, S::Error> {
    let bulk = |v: Option<Vec<u8>>| v.map_or(WriteReply::Null, WriteReply::Bulk);
    let coll = match read_coll(state, key, now, Kind::Hash)? {
        Ok(c) => c.map(|(c, _)| c),
        Err((_, reply)) => return Ok(reply),
    };
    let get = |f: &[u8]| -> Result<Option<Vec<u8>>, S::Error> {
        match &coll {
            Some(c) => state.element(&field_key(c.id, f)),
            None => Ok(None),
        }
    };
    let all = || -> Result<coll::Elements, S::Error> {
        match &coll {
            Some(c) => all_elements(state, c.id, HASH_FIELD),
            None => Ok(Vec::new()),
        }
    };
    Ok(match q {
        HashQuery::Get(f) => bulk(get(f)?),
        HashQuery::MGet(fields) => {
            let mut out = Vec::with_capacity(fields.len());
            for f in fields {
                out.push(bulk(get(f)?));
            }
            WriteReply::Array(out)
        }
        HashQuery::Exists(f) => WriteReply::Integer(get(f)?.is_some() as i64),
        HashQuery::Len => WriteReply::Integer(coll.map_or(0, |c| c.size as i64)),
        HashQuery::StrLen(f) => WriteReply::Integer(get(f)?.map_or(0, |v| v.len() as i64)),
        HashQuery::All { fields: true, values: true } => WriteReply::Map(
            all()?.into_iter().map(|(f, v)| (WriteReply::Bulk(f), WriteReply::Bulk(v))).collect(),
        ),
        HashQuery::All { fields, values } => {
            let mut out = Vec::new();
            for (f, v) in all()? {
                if fields {
                    out.push(WriteReply::Bulk(f));
                }
                if values {
                    out.push(WriteReply::Bulk(v));
                }
            }
            WriteReply::Array(out)
        }
        HashQuery::Scan(pattern) => {
            let mut items = Vec::new();
            for (f, v) in all()? {
                if pattern.is_none_or(|p| crate::glob::matches(p, &f)) {
                    items.push(WriteReply::Bulk(f));
                    items.push(WriteReply::Bulk(v));
                }
            }
            WriteReply::Array(vec![WriteReply::Bulk(b"0".to_vec()), WriteReply::Array(items)])
        }
    })
}
