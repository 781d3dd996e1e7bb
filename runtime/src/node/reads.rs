//! Where a read is served: reads wait until confirmed (ReadIndex or lease) and applied far
//! enough, then run against the applied state in the order their connection sent them.

use super::apply::{corrupt_value, Stored};
use super::*;

/// Most keys KEYS returns; past it the client is told to narrow the pattern.
pub const KEYS_RESULT_MAX: usize = 1_000_000;
/// The most bytes of fields (and values) one HRANDFIELD reply may carry.
const HRANDFIELD_REPLY_BYTES_MAX: u64 = 256 << 20;
/// What MEMORY USAGE adds to a key's bytes and its value's for the cost of holding a key.
const KEY_OVERHEAD_BYTES: usize = 48;
/// What MEMORY USAGE adds to an element's bytes for holding it.
const ELEMENT_OVERHEAD_BYTES: usize = 16;

/// Keys KEYS reads from storage at a time.
const KEYS_BATCH: usize = 4096;

/// Collections of at most this many members are scanned whole, with cursor 0 (Redis does so for
/// the ones it keeps compact).
const ELEMENT_SCAN_WHOLE_MAX: u64 = 128;

/// Keys one SCAN call examines at most, whatever its COUNT.
const SCAN_COUNT_MAX: usize = 100_000;

/// SCAN cursors a node remembers; the oldest are forgotten (and answered `invalid cursor`).
const SCAN_CURSORS_MAX: usize = 10_000;

pub(super) struct PendingRead {
    pub(super) conn: u64,
    pub(super) cmd: ReadCommand,
    pub(super) reply: oneshot::Sender<Reply>,
    pub(super) output: Option<Arc<OutputBudget>>,
    /// When the node task took it (`raftkv_read_duration_seconds`).
    pub(super) arrived: Instant,
    /// The core confirmed it from the leader's lease when it was (last) asked: no round
    /// (`raftkv_reads_total{mode}`).
    pub(super) lease: bool,
}

/// The reads this node accepted and has not answered. Each waits to be confirmed (its
/// ReadIndex round, or the lease), then for the applied index to reach its read index, then
/// for the reads its connection sent before it: reads are confirmed out of order (a lease
/// answers at once while an earlier read waits for its round; a late answer comes from a
/// deposed leader), and each is served from the state applied when it is served, so out of
/// order a pipelined read could see an older state than the read before it.
#[derive(Default)]
pub(super) struct ReadQueue {
    pending: BTreeMap<u64, PendingRead>,
    /// Confirmed reads waiting for the apply index to reach theirs.
    awaiting_apply: BTreeMap<LogIndex, Vec<u64>>,
    /// Confirmed and applied far enough, waiting for earlier reads of their connection.
    ready: BTreeSet<u64>,
    /// Unanswered reads of each client connection.
    by_conn: BTreeMap<u64, BTreeSet<u64>>,
}

impl ReadQueue {
    pub(super) fn insert(&mut self, id: u64, read: PendingRead) {
        self.by_conn.entry(read.conn).or_default().insert(id);
        self.pending.insert(id, read);
    }

    pub(super) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(super) fn contains(&self, id: u64) -> bool {
        self.pending.contains_key(&id)
    }

    pub(super) fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.pending.keys().copied()
    }

    /// Removes read `id` (answered, timed out or refused).
    pub(super) fn take(&mut self, id: u64) -> Option<PendingRead> {
        let r = self.pending.remove(&id)?;
        self.ready.remove(&id);
        if let Some(ids) = self.by_conn.get_mut(&r.conn) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_conn.remove(&r.conn);
            }
        }
        Some(r)
    }

    /// Read `id` was confirmed at read index `index`; `applied` is the node's applied index.
    pub(super) fn confirmed(&mut self, id: u64, index: LogIndex, applied: LogIndex) {
        if index <= applied {
            self.mark_ready(id);
        } else {
            self.awaiting_apply.entry(index).or_default().push(id);
        }
    }

    /// The node applied up to `applied`: the reads confirmed at or below it may be served.
    pub(super) fn applied(&mut self, applied: LogIndex) {
        while let Some(entry) = self.awaiting_apply.first_entry() {
            if *entry.key() > applied {
                break;
            }
            for id in entry.remove() {
                self.mark_ready(id);
            }
        }
    }

    fn mark_ready(&mut self, id: u64) {
        if self.pending.contains_key(&id) {
            self.ready.insert(id);
        }
    }

    /// Returns a read taken by `take_servable` and not served: ready, first of its connection
    /// again (reads of a connection are put back in the order they were taken).
    pub(super) fn put_back(&mut self, id: u64, read: PendingRead) {
        self.insert(id, read);
        self.ready.insert(id);
    }

    /// Read `id` was asked of the core again; `lease`: the leader's lease confirmed it.
    pub(super) fn asked(&mut self, id: u64, lease: bool) {
        if let Some(r) = self.pending.get_mut(&id) {
            r.lease = lease;
        }
    }

    /// Takes the reads that may be served now, in the order to serve them: ready ones that
    /// no earlier read of their connection holds up.
    pub(super) fn take_servable(&mut self) -> Vec<(u64, PendingRead)> {
        let ready: Vec<u64> = self.ready.iter().copied().collect();
        let mut out = Vec::new();
        for id in ready {
            let Some(conn) = self.pending.get(&id).map(|r| r.conn) else {
                self.ready.remove(&id);
                continue;
            };
            if self.by_conn.get(&conn).and_then(|s| s.first()) == Some(&id) {
                out.push((id, self.take(id).expect("listed")));
            }
        }
        out
    }
}

impl<S: Storage> NodeTask<S> {
    /// Serves every read that may be served now (`ReadQueue::take_servable`).
    pub(super) fn release_reads(&mut self) -> Result<(), StorageError> {
        // Connections whose replies are piling up unread: their reads wait (a reader catches
        // up and they are served; one that reads nothing is disconnected by its writer).
        let mut held_back: BTreeSet<u64> = BTreeSet::new();
        for (id, r) in self.reads.take_servable() {
            if held_back.contains(&r.conn) || r.output.as_ref().is_some_and(|o| o.spent()) {
                held_back.insert(r.conn);
                self.reads.put_back(id, r);
                continue;
            }
            if self.walks_large_collection(&r.cmd)? {
                self.serve_off_task(r)?;
                continue;
            }
            let mode = crate::metrics::ReadMode {
                mode: if r.lease { "lease" } else { "read_index" }.into(),
            };
            let reply = self.execute_read(&r.cmd)?;
            if let Some(o) = &r.output {
                o.charge(reply.size_bytes());
            }
            let _ = r.reply.send(reply);
            self.metrics.reads.get_or_create(&mode).inc();
            self.metrics
                .read_seconds
                .get_or_create(&mode)
                .observe(r.arrived.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// Whether `cmd` walks at least `offload_elements_min` elements of a collection.
    fn walks_large_collection(&self, cmd: &ReadCommand) -> Result<bool, StorageError> {
        let ReadCommand::Query(q) = cmd else { return Ok(false) };
        let read = Stored(&self.storage, None);
        for (key, walk) in q.walks() {
            if let Some(kv::Record { data: kv::Data::Coll(c), .. }) = kv::coll::stored(&read, key)?
            {
                if walk.elements(c.size) >= self.tuning.offload_elements_min {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Serves read `r` from a view of the applied state as it is now (the read's point in
    /// the log: everything applied before it, nothing after), on a blocking-pool thread, so
    /// the node task goes on with heartbeats and applies meanwhile. A storage error there
    /// stops the node as one here would (`offload_failed`). Counted as mode `off_task`,
    /// however it was confirmed.
    fn serve_off_task(&mut self, r: PendingRead) -> Result<(), StorageError> {
        let ReadCommand::Query(q) = r.cmd else {
            unreachable!("checked by walks_large_collection")
        };
        raft_kv_core::reach::hit(raft_kv_core::reach::Path::ReadServedOffTask);
        let view = self.storage.state_view()?;
        let now = self.read_time();
        let metrics = self.metrics.clone();
        let mode = crate::metrics::ReadMode { mode: "off_task".into() };
        let failed = self.offload_failed.0.clone();
        let (reply_to, output, arrived) = (r.reply, r.output, r.arrived);
        // A task in the simulation (where blocking is simulated time), a blocking-pool thread
        // on tokio.
        #[allow(deprecated)]
        tokio::task::spawn_blocking(move || {
            let reply: Reply = match kv::query(&q, &Stored(&*view, None), now) {
                Ok(r) => r.into(),
                Err(e) => {
                    let _ = failed.try_send(e);
                    Reply::error("ERR the node stopped: its storage failed during this read")
                }
            };
            if let Some(o) = &output {
                o.charge(reply.size_bytes());
            }
            let _ = reply_to.send(reply);
            metrics.reads.get_or_create(&mode).inc();
            metrics.read_seconds.get_or_create(&mode).observe(arrived.elapsed().as_secs_f64());
        });
        Ok(())
    }

    /// The live record stored as `value` under `key`, as of the applied state (None if
    /// expired); a value that is no record is a storage error.
    pub(super) fn live_record(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<Option<kv::Record>, StorageError> {
        kv::live(Some(value.to_vec()), self.read_time()).map_err(|_| corrupt_value(key))
    }

    /// HRANDFIELD (Redis 7.0's semantics): no count, one random field or nil; a positive count,
    /// that many distinct fields (all of them, in the hash's order, if it has no more); a
    /// negative one, exactly that many, repeats allowed. Bounded like KEYS.
    fn hrandfield(
        &mut self,
        key: &[u8],
        count: Option<i64>,
        with_values: bool,
    ) -> Result<Reply, StorageError> {
        let read = Stored(&self.storage, None);
        let hash = match kv::coll::read_coll(&read, key, self.read_time(), kv::Kind::Hash)? {
            Ok(c) => c.map(|(c, _)| c),
            Err((_, reply)) => return Ok(reply.into()),
        };
        let size = hash.map_or(0, |c| c.size);
        let Some(count) = count else {
            let Some(c) = hash else { return Ok(Reply::Null) };
            let picked = self.random_elements(&c, kv::coll::HASH_FIELD, 1, true)?;
            return Ok(picked.into_iter().next().map_or(Reply::Null, |(f, _)| Reply::Bulk(f)));
        };
        // How many come back: a positive count never more than the hash holds.
        let len = match count {
            _ if size == 0 => 0,
            n if n < 0 => n.unsigned_abs(),
            n => n.unsigned_abs().min(size),
        };
        // A negative count repeats fields: bound what the reply holds, in fields and in bytes
        // (one large value picked a million times), before building any of it.
        let largest = hash.map_or(0, |c| c.elem_max as u64 * if with_values { 2 } else { 1 });
        if len > KEYS_RESULT_MAX as u64 || len.saturating_mul(largest) > HRANDFIELD_REPLY_BYTES_MAX
        {
            return Ok(Reply::error(format!(
                "ERR HRANDFIELD would return more than {KEYS_RESULT_MAX} fields or \
                 {HRANDFIELD_REPLY_BYTES_MAX} bytes; ask for fewer"
            )));
        }
        let picks = match hash {
            Some(c) if len > 0 => self.random_elements(&c, kv::coll::HASH_FIELD, len, count > 0)?,
            _ => Vec::new(),
        };
        Ok(if with_values {
            Reply::Pairs(picks.into_iter().map(|(f, v)| (Reply::Bulk(f), Reply::Bulk(v))).collect())
        } else {
            Reply::Array(picks.into_iter().map(|(f, _)| Reply::Bulk(f)).collect())
        })
    }

    /// HSCAN, SSCAN, ZSCAN: a collection of at most `ELEMENT_SCAN_WHOLE_MAX` members whole
    /// with cursor 0; a larger one `count` element records at a time, resuming after the last
    /// record read (a node-local cursor, as SCAN's). A walk returns every element that exists
    /// throughout it; a collection deleted meanwhile ends it (its elements go with it).
    fn element_scan(
        &mut self,
        key: &[u8],
        kind: kv::Kind,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: usize,
    ) -> Result<Reply, StorageError> {
        let tag = match kind {
            kv::Kind::Hash => kv::coll::HASH_FIELD,
            kv::Kind::Set => kv::coll::SET_MEMBER,
            _ => kv::coll::ZSET_MEMBER,
        };
        let from = match cursor {
            0 => {
                let read = Stored(&self.storage, None);
                let c = match kv::coll::read_coll(&read, key, self.read_time(), kind)? {
                    Ok(Some((c, _))) => c,
                    Ok(None) => {
                        let empty = Reply::Array(Vec::new());
                        return Ok(Reply::Array(vec![
                            Reply::Bulk(Bytes::from_static(b"0")),
                            empty,
                        ]));
                    }
                    Err((_, reply)) => return Ok(reply.into()),
                };
                if c.size <= ELEMENT_SCAN_WHOLE_MAX {
                    let q = crate::command::element_scan_whole(
                        key.to_vec(),
                        kind,
                        pattern.map(Bytes::copy_from_slice),
                    );
                    return Ok(kv::query(&q, &read, self.read_time())?.into());
                }
                kv::coll::tag_range(c.id, tag).0
            }
            c => match self.elem_cursors.get(&c) {
                Some(k) => {
                    let mut k = k.clone();
                    k.push(0);
                    k
                }
                None => return Ok(Reply::error("ERR invalid cursor")),
            },
        };
        let mut to = from[..9].to_vec();
        to[8] += 1;
        let limit = count.min(SCAN_COUNT_MAX);
        let page = self.storage.elements(&from, &to, false, limit)?;
        let mut items = Vec::new();
        for (k, v) in &page {
            let name = &k[9..];
            if pattern.is_some_and(|p| !raft_kv_core::glob::matches(p, name)) {
                continue;
            }
            items.push(Reply::Bulk(Bytes::copy_from_slice(name)));
            match kind {
                kv::Kind::Hash => items.push(Reply::Bulk(Bytes::from(v.clone()))),
                kv::Kind::ZSet => {
                    let bits =
                        v.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
                    let text = kv::zsets::d2string(f64::from_bits(bits));
                    items.push(Reply::Bulk(Bytes::from(text)));
                }
                _ => {}
            }
        }
        let next = match page.last() {
            Some((last, _)) if page.len() == limit => {
                self.next_scan_cursor += 1;
                let id = (self.id.0 << 40) | (self.next_scan_cursor & ((1 << 40) - 1));
                self.elem_cursors.insert(id, last.clone());
                while self.elem_cursors.len() > SCAN_CURSORS_MAX {
                    self.elem_cursors.pop_first();
                }
                id
            }
            _ => 0,
        };
        Ok(Reply::Array(vec![Reply::Bulk(Bytes::from(next.to_string())), Reply::Array(items)]))
    }

    /// OBJECT about `key`: ENCODING answers what Redis 7.0 would use for the value, by its
    /// size, its longest element and this node's CONFIG thresholds; a collection never goes
    /// back to a compact encoding, as in Redis (its largest size and element so far count).
    fn object(
        &mut self,
        sub: crate::command::ObjectSub,
        key: &[u8],
    ) -> Result<Reply, StorageError> {
        use crate::command::ObjectSub;
        let record = match self.storage.get(key)? {
            Some(v) => self.live_record(key, &v)?,
            None => None,
        };
        let Some(record) = record else { return Ok(Reply::Null) };
        let conf = |name: &str, default: u64| {
            self.config
                .get(name)
                .and_then(|v| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
                .unwrap_or(default)
        };
        Ok(match sub {
            ObjectSub::RefCount => Reply::Integer(1),
            ObjectSub::IdleTime => Reply::Integer(0),
            ObjectSub::Freq => Reply::error(
                "ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust.",
            ),
            ObjectSub::Encoding => {
                let name = match record.data {
                    kv::Data::Str(v) if v.len() <= 20 && kv::parse_i64(&v).is_some() => "int",
                    kv::Data::Str(v) if v.len() <= 44 => "embstr",
                    kv::Data::Str(_) => "raw",
                    kv::Data::Coll(c) => {
                        let (peak, longest) = (c.peak, c.elem_max as u64);
                        match c.kind {
                            kv::Kind::List => "quicklist",
                            kv::Kind::Hash => {
                                if peak <= conf("hash-max-listpack-entries", 512)
                                    && longest <= conf("hash-max-listpack-value", 64)
                                {
                                    "listpack"
                                } else {
                                    "hashtable"
                                }
                            }
                            kv::Kind::Set => {
                                if c.flags & 1 == 0 && peak <= conf("set-max-intset-entries", 512) {
                                    "intset"
                                } else {
                                    "hashtable"
                                }
                            }
                            kv::Kind::ZSet => {
                                if peak <= conf("zset-max-listpack-entries", 128)
                                    && longest <= conf("zset-max-listpack-value", 64)
                                {
                                    "listpack"
                                } else {
                                    "skiplist"
                                }
                            }
                        }
                    }
                };
                Reply::Bulk(Bytes::from_static(name.as_bytes()))
            }
        })
    }

    /// SRANDMEMBER (Redis 7.0's semantics): no count, one random member or nil; a positive
    /// count, that many distinct members (all, if the set has no more); a negative one, exactly
    /// that many, repeats allowed; no key, an empty array. Bounded like KEYS.
    fn srandmember(&mut self, key: &[u8], count: Option<i64>) -> Result<Reply, StorageError> {
        let read = Stored(&self.storage, None);
        let set = match kv::coll::read_coll(&read, key, self.read_time(), kv::Kind::Set)? {
            Ok(c) => c.map(|(c, _)| c),
            Err((_, reply)) => return Ok(reply.into()),
        };
        let tag = kv::coll::SET_MEMBER;
        let Some(count) = count else {
            let Some(c) = set else { return Ok(Reply::Null) };
            let picked = self.random_elements(&c, tag, 1, true)?;
            return Ok(picked.into_iter().next().map_or(Reply::Null, |(m, _)| Reply::Bulk(m)));
        };
        let Some(c) = set.filter(|_| count != 0) else { return Ok(Reply::Array(Vec::new())) };
        let len = if count < 0 { count.unsigned_abs() } else { count.unsigned_abs().min(c.size) };
        if len > KEYS_RESULT_MAX as u64
            || len.saturating_mul(c.elem_max as u64) > HRANDFIELD_REPLY_BYTES_MAX
        {
            return Ok(Reply::error(format!(
                "ERR SRANDMEMBER would return more than {KEYS_RESULT_MAX} members or \
                 {HRANDFIELD_REPLY_BYTES_MAX} bytes; ask for fewer"
            )));
        }
        let picks = self.random_elements(&c, tag, len, count > 0)?;
        Ok(Reply::Array(picks.into_iter().map(|(m, _)| Reply::Bulk(m)).collect()))
    }

    /// ZRANDMEMBER (Redis 7.0's semantics, as HRANDFIELD's, scores for values).
    fn zrandmember(
        &mut self,
        key: &[u8],
        count: Option<i64>,
        with_scores: bool,
    ) -> Result<Reply, StorageError> {
        let read = Stored(&self.storage, None);
        let zset = match kv::coll::read_coll(&read, key, self.read_time(), kv::Kind::ZSet)? {
            Ok(c) => c.map(|(c, _)| c),
            Err((_, reply)) => return Ok(reply.into()),
        };
        let tag = kv::coll::ZSET_MEMBER;
        let Some(count) = count else {
            let Some(c) = zset else { return Ok(Reply::Null) };
            let picked = self.random_elements(&c, tag, 1, true)?;
            return Ok(picked.into_iter().next().map_or(Reply::Null, |(m, _)| Reply::Bulk(m)));
        };
        let Some(c) = zset.filter(|_| count != 0) else { return Ok(Reply::Array(Vec::new())) };
        let len = if count < 0 { count.unsigned_abs() } else { count.unsigned_abs().min(c.size) };
        let each = c.elem_max as u64 + if with_scores { 24 } else { 0 };
        if len > KEYS_RESULT_MAX as u64 || len.saturating_mul(each) > HRANDFIELD_REPLY_BYTES_MAX {
            return Ok(Reply::error(format!(
                "ERR ZRANDMEMBER would return more than {KEYS_RESULT_MAX} members or \
                 {HRANDFIELD_REPLY_BYTES_MAX} bytes; ask for fewer"
            )));
        }
        let picks = self.random_elements(&c, tag, len, count > 0)?;
        let score = |v: &Bytes| {
            let bits = v.get(..8).and_then(|b| b.try_into().ok()).map_or(0, u64::from_be_bytes);
            Reply::Double(bits)
        };
        Ok(if with_scores {
            Reply::Pairs(picks.iter().map(|(m, v)| (Reply::Bulk(m.clone()), score(v))).collect())
        } else {
            Reply::Array(picks.into_iter().map(|(m, _)| Reply::Bulk(m)).collect())
        })
    }

    /// `n` random elements of collection `c` under `tag`, as (rest of the key, value): distinct
    /// ones (all, in key order, if it has no more) or, unless `distinct`, with repeats. Reads
    /// the whole collection (O(n), as Kvrocks does): a seek to a random key would favour the
    /// first of the members that share a prefix, and never pick the others.
    fn random_elements(
        &mut self,
        c: &kv::Coll,
        tag: u8,
        n: u64,
        distinct: bool,
    ) -> Result<Vec<(Bytes, Bytes)>, StorageError> {
        use rand::Rng;
        let read = Stored(&self.storage, None);
        let all: Vec<(Bytes, Bytes)> = kv::coll::all_elements(&read, c.id, tag)?
            .into_iter()
            .map(|(k, v)| (Bytes::from(k), Bytes::from(v)))
            .collect();
        if all.is_empty() {
            return Ok(Vec::new());
        }
        let n = n as usize;
        Ok(if distinct && n >= all.len() {
            all
        } else if distinct {
            let mut picked = rand::seq::index::sample(&mut self.rng, all.len(), n).into_vec();
            picked.sort_unstable();
            picked.into_iter().map(|i| all[i].clone()).collect()
        } else {
            (0..n).map(|_| all[self.rng.gen_range(0..all.len())].clone()).collect()
        })
    }

    /// The time reads decide expiry at: the applied entry's (`Entry::time`), so every node
    /// agrees at every log position whatever its own clock.
    pub(super) fn read_time(&self) -> u64 {
        if planted::active(self.raft.config().planted, PlantedBug::ExpiryByLocalClock) {
            return (self.wall_clock)();
        }
        self.applied_time
    }

    pub(super) fn execute_read(&mut self, cmd: &ReadCommand) -> Result<Reply, StorageError> {
        Ok(match cmd {
            ReadCommand::BackupStart => self.backup_start()?,
            ReadCommand::Scan { cursor, pattern, count, type_name } => {
                self.scan(*cursor, pattern.as_deref(), *count, type_name.as_deref())?
            }
            ReadCommand::RandomKey => {
                // From a random point of the key order to the end, then from the start: the
                // first live key.
                let mut probe = [0u8; 8];
                rand::Rng::fill(&mut self.rng, &mut probe);
                let mut found = Reply::Null;
                'search: for mut after in [Some(probe.to_vec()), None] {
                    loop {
                        let batch = self.storage.scan(after.as_deref(), 64)?;
                        for (k, v) in &batch {
                            if self.live_record(k, v)?.is_some() {
                                found = Reply::Bulk(Bytes::from(k.clone()));
                                break 'search;
                            }
                        }
                        match batch.last() {
                            Some((k, _)) if batch.len() == 64 => after = Some(k.clone()),
                            _ => break,
                        }
                    }
                }
                found
            }
            ReadCommand::MemoryUsage(key) => match self.storage.get(key)? {
                Some(v) => match self.live_record(key, &v)? {
                    // The key, its stored record, and what a key costs besides (the RocksDB
                    // entry's own bytes, an estimate): Redis's figure for a small key is of
                    // the same order. A collection adds its elements, estimated from the
                    // first few.
                    Some(r) => {
                        let mut bytes = (key.len() + v.len() + KEY_OVERHEAD_BYTES) as u64;
                        if let kv::Data::Coll(c) = r.data {
                            const SAMPLE: usize = 64;
                            let (from, to) = kv::coll::id_range(c.id);
                            let sample = self.storage.elements(&from, &to, false, SAMPLE)?;
                            let sampled: u64 = sample
                                .iter()
                                .map(|(k, v)| (k.len() + v.len() + ELEMENT_OVERHEAD_BYTES) as u64)
                                .sum();
                            if !sample.is_empty() {
                                bytes += sampled * c.size / sample.len() as u64;
                            }
                        }
                        Reply::Integer(bytes.min(i64::MAX as u64) as i64)
                    }
                    None => Reply::Null,
                },
                None => Reply::Null,
            },
            ReadCommand::SRandMember { key, count } => self.srandmember(key, *count)?,
            ReadCommand::Object { sub, key } => self.object(*sub, key)?,
            ReadCommand::ElementScan { key, kind, cursor, pattern, count } => {
                self.element_scan(key, *kind, *cursor, pattern.as_deref(), *count)?
            }
            ReadCommand::ZRandMember { key, count, with_scores } => {
                self.zrandmember(key, *count, *with_scores)?
            }
            ReadCommand::HRandField { key, count, with_values } => {
                self.hrandfield(key, *count, *with_values)?
            }
            ReadCommand::Query(q) => {
                kv::query(q, &Stored(&self.storage, None), self.read_time())?.into()
            }
            ReadCommand::DbSize => Reply::Integer(self.storage.key_count()? as i64),
            ReadCommand::Keys(pattern) => {
                // The whole key space in batches, as SCAN walks it.
                let mut live = Vec::new();
                let mut after: Option<Key> = None;
                loop {
                    let batch = self.storage.scan(after.as_deref(), KEYS_BATCH)?;
                    for (k, v) in &batch {
                        if raft_kv_core::glob::matches(pattern, k)
                            && self.live_record(k, v)?.is_some()
                        {
                            live.push(Reply::Bulk(Bytes::from(k.clone())));
                        }
                    }
                    if live.len() > KEYS_RESULT_MAX {
                        break Reply::error(format!("ERR KEYS would return more than {KEYS_RESULT_MAX} keys; use a narrower pattern"));
                    }
                    match batch.last() {
                        Some((k, _)) if batch.len() == KEYS_BATCH => after = Some(k.clone()),
                        _ => break Reply::Array(live),
                    }
                }
            }
        })
    }

    /// One SCAN step: about `count` stored keys after where `cursor` stopped (0: the start),
    /// those live and matching returned, and the next cursor (0 at the end). Cursors are this
    /// node's: the key each stopped at is remembered (the newest `SCAN_CURSORS_MAX`; a cursor
    /// can be sent again), so a walk is stable however keys come and go, and returns every key
    /// that exists throughout.
    pub(super) fn scan(
        &mut self,
        cursor: u64,
        pattern: Option<&[u8]>,
        count: usize,
        type_name: Option<&str>,
    ) -> Result<Reply, StorageError> {
        let after = match cursor {
            0 => None,
            c => match self.scan_cursors.get(&c).cloned() {
                Some(k) => Some(k),
                None => return Ok(Reply::error("ERR invalid cursor")),
            },
        };
        let batch = self.storage.scan(after.as_deref(), count.min(SCAN_COUNT_MAX))?;
        let mut keys = Vec::new();
        for (k, v) in &batch {
            let Some(r) = self.live_record(k, v)? else { continue };
            if pattern.is_some_and(|p| !raft_kv_core::glob::matches(p, k))
                || type_name.is_some_and(|t| t != r.type_name())
            {
                continue;
            }
            keys.push(Reply::Bulk(Bytes::from(k.clone())));
        }
        let next = match batch.last() {
            Some((last, _)) if batch.len() == count.min(SCAN_COUNT_MAX) => {
                self.next_scan_cursor += 1;
                let id = (self.id.0 << 40) | (self.next_scan_cursor & ((1 << 40) - 1));
                self.scan_cursors.insert(id, last.clone());
                while self.scan_cursors.len() > SCAN_CURSORS_MAX {
                    self.scan_cursors.pop_first();
                }
                id
            }
            _ => 0,
        };
        Ok(Reply::Array(vec![Reply::Bulk(Bytes::from(next.to_string())), Reply::Array(keys)]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(conn: u64) -> PendingRead {
        let (reply, _) = oneshot::channel();
        let arrived = Instant::now();
        PendingRead { conn, cmd: ReadCommand::DbSize, reply, output: None, arrived, lease: false }
    }

    #[test]
    fn a_read_asked_again_is_counted_by_how_it_was_last_confirmed() {
        let mut q = ReadQueue::default();
        q.insert(1, read(7));
        q.insert(2, read(8));
        q.asked(1, true);
        q.asked(3, true); // answered meanwhile: nothing to mark
        q.confirmed(1, LogIndex(5), LogIndex(5));
        q.confirmed(2, LogIndex(5), LogIndex(5));
        q.applied(LogIndex(5));
        let served: Vec<(u64, bool)> =
            q.take_servable().into_iter().map(|(id, r)| (id, r.lease)).collect();
        assert_eq!(served, vec![(1, true), (2, false)]);
    }
}
