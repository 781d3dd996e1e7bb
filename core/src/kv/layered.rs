//! Changes not yet in the state they apply to, and the state read through them: a MULTI
//! block's changes so far, or (in the runtime) those of the committed entries applied in one
//! batch before it is written. The merge of element ranges lives here, once.

use super::{Key, KvRead, Mutation, Value};
use std::collections::BTreeMap;
use std::ops::Bound;

/// Key and element changes not yet written.
#[derive(Debug, Default)]
pub struct PendingChanges {
    /// None: deleted.
    changes: BTreeMap<Key, Option<Value>>,
    /// A FLUSHALL ran: keys and elements not in the maps are gone.
    cleared: bool,
    /// Element puts and deletes since the last range deletion that covers them.
    elements: BTreeMap<Vec<u8>, Option<Value>>,
    /// Element ranges `[from, to)` deleted: what lies in them underneath is gone.
    dropped: Vec<(Vec<u8>, Vec<u8>)>,
}

impl PendingChanges {
    pub fn record(&mut self, muts: &[Mutation]) {
        for m in muts {
            match m {
                Mutation::Put(k, v) => {
                    self.changes.insert(k.clone(), Some(v.clone()));
                }
                Mutation::Delete(k) => {
                    self.changes.insert(k.clone(), None);
                }
                Mutation::PutElement(k, v) => {
                    self.elements.insert(k.clone(), Some(v.clone()));
                }
                Mutation::DeleteElement(k) => {
                    self.elements.insert(k.clone(), None);
                }
                Mutation::DeleteElements { from, to } => {
                    let inside: Vec<Vec<u8>> = self
                        .elements
                        .range::<[u8], _>((Bound::Included(&from[..]), Bound::Excluded(&to[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in inside {
                        self.elements.remove(&k);
                    }
                    self.dropped.push((from.clone(), to.clone()));
                }
                Mutation::Clear => {
                    self.changes.clear();
                    self.elements.clear();
                    self.dropped.clear();
                    self.cleared = true;
                }
                Mutation::Session(..) | Mutation::Membership(_) => {}
            }
        }
    }

    /// What the changes say `key` holds (None inside: absent); None when they leave it to
    /// the state underneath.
    pub fn lookup(&self, key: &[u8]) -> Option<Option<Value>> {
        match self.changes.get(key) {
            Some(v) => Some(v.clone()),
            None if self.cleared => Some(None),
            None => None,
        }
    }

    /// Whether what lies underneath at element key `k` is gone.
    fn hides(&self, k: &[u8]) -> bool {
        self.cleared || self.dropped.iter().any(|(from, to)| from.as_slice() <= k && k < to)
    }

    /// What the changes say element `k` holds, like `lookup`.
    pub fn lookup_element(&self, k: &[u8]) -> Option<Option<Value>> {
        match self.elements.get(k) {
            Some(v) => Some(v.clone()),
            None if self.hides(k) => Some(None),
            None => None,
        }
    }
}

/// A state read through pending changes (None: none).
pub struct Layered<'a, S> {
    pub base: &'a S,
    pub pending: Option<&'a PendingChanges>,
}

impl<S: KvRead> KvRead for Layered<'_, S> {
    type Error = S::Error;

    fn get(&self, key: &[u8]) -> Result<Option<Value>, S::Error> {
        match self.pending.and_then(|p| p.lookup(key)) {
            Some(v) => Ok(v),
            None => self.base.get(key),
        }
    }

    fn element(&self, k: &[u8]) -> Result<Option<Value>, S::Error> {
        match self.pending.and_then(|p| p.lookup_element(k)) {
            Some(v) => Ok(v),
            None => self.base.element(k),
        }
    }

    fn elements(
        &self,
        from: &[u8],
        to: &[u8],
        rev: bool,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Value)>, S::Error> {
        let Some(p) = self.pending else { return self.base.elements(from, to, rev, limit) };
        if limit == 0 || from >= to {
            return Ok(Vec::new());
        }
        // Page through the base, each page covering a stretch of the range; within a stretch
        // merge the base's survivors with the pending puts, in the asked order.
        let mut out = Vec::new();
        let (mut lo, mut hi) = (from.to_vec(), to.to_vec());
        loop {
            let page = self.base.elements(&lo, &hi, rev, limit)?;
            let done = page.len() < limit;
            // The stretch this page covers: all that is left when the base ran out, else up to
            // (and including) its last key.
            let (s_lo, s_hi): (Bound<&[u8]>, Bound<&[u8]>) = match (done, rev, page.last()) {
                (false, false, Some((last, _))) => {
                    (Bound::Included(&lo[..]), Bound::Included(&last[..]))
                }
                (false, true, Some((last, _))) => {
                    (Bound::Included(&last[..]), Bound::Excluded(&hi[..]))
                }
                _ => (Bound::Included(&lo[..]), Bound::Excluded(&hi[..])),
            };
            let mut merged: BTreeMap<Vec<u8>, Value> = page
                .iter()
                .filter(|(k, _)| !p.elements.contains_key(k) && !p.hides(k))
                .cloned()
                .collect();
            for (k, v) in p.elements.range::<[u8], _>((s_lo, s_hi)) {
                if let Some(v) = v {
                    merged.insert(k.clone(), v.clone());
                }
            }
            let want = limit - out.len();
            if rev {
                out.extend(merged.into_iter().rev().take(want));
            } else {
                out.extend(merged.into_iter().take(want));
            }
            if done || out.len() >= limit {
                return Ok(out);
            }
            let last = page.last().expect("a full page").0.clone();
            if rev {
                hi = last;
            } else {
                lo = last;
                lo.push(0); // just after it
            }
        }
    }

    fn corrupt(key: &[u8]) -> S::Error {
        S::corrupt(key)
    }

    fn may_hold_collection(&self, key: &[u8]) -> bool {
        match self.pending.and_then(|p| p.lookup(key)) {
            Some(v) => v.is_some_and(|v| super::Record::is_collection(&v)),
            None => self.base.may_hold_collection(key),
        }
    }
}
