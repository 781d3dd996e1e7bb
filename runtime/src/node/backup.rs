//! RAFT.BACKUP: a consistent copy of the state machine, read through the client port at a
//! linearizable point (issue 16; docs/design/backup-plan.md). `START` is a read: once the node
//! has confirmed it (ReadIndex or the lease) and applied that far, it takes a view of its
//! applied state (`Storage::snapshot_reader`, the stream a leader sends a follower) and
//! answers an id. Each `NEXT <id>` answers the next chunk of keys and collection elements,
//! framed as the snapshot stream frames them, read on a blocking-pool thread; nil at the end.
//! Client sessions and the membership stay out: a restore starts a new cluster. A backup idle
//! for a minute is dropped.

use super::*;
use crate::storage::{SnapshotItem, SnapshotReader};

/// Bytes of state per NEXT (about; at least one item).
const CHUNK_BYTES: usize = 1 << 20;

/// A backup idle this long is dropped (its view released).
const IDLE_MAX: Duration = Duration::from_secs(60);

/// Backups a node reads at once: each pins a RocksDB snapshot (old versions of what it holds
/// stay on disk until it ends), so clients cannot open them without bound.
const BACKUPS_MAX: usize = 4;

pub(super) struct Backup {
    reader: Arc<std::sync::Mutex<Box<dyn SnapshotReader>>>,
    used: Instant,
}

impl<S: Storage> NodeTask<S> {
    /// RAFT.BACKUP START, served as a read: `[id, applied index, applied entry's time,
    /// format version]`.
    pub(super) fn backup_start(&mut self) -> Result<Reply, StorageError> {
        if self.backups.len() >= BACKUPS_MAX {
            return Ok(Reply::error(format!(
                "BUSY {BACKUPS_MAX} backups are being read from this node; finish or RAFT.BACKUP ABORT one, or wait a minute for an idle one to be dropped"
            )));
        }
        let reader = self.storage.snapshot_reader()?;
        let applied = reader.applied();
        let id = self.next_backup;
        self.next_backup += 1;
        let reader = Arc::new(std::sync::Mutex::new(reader));
        self.backups.insert(id, Backup { reader, used: Instant::now() });
        info!(node = %self.id, backup = id, index = %applied, "backup started");
        Ok(Reply::Array(vec![
            Reply::Integer(id as i64),
            Reply::Integer(applied.0 as i64),
            Reply::Integer(self.applied_time as i64),
            Reply::Integer(crate::codec::FORMAT_VERSION as i64),
        ]))
    }

    /// RAFT.BACKUP NEXT: the next chunk, read off the node task.
    pub(super) fn backup_next(&mut self, id: u64, reply: oneshot::Sender<Reply>) {
        let Some(b) = self.backups.get_mut(&id) else {
            let msg = format!(
                "ERR no backup {id} on this node (it ended, was aborted, or sat idle for {} s)",
                IDLE_MAX.as_secs()
            );
            let _ = reply.send(Reply::error(msg));
            return;
        };
        b.used = Instant::now();
        let reader = b.reader.clone();
        let failed = self.offload_failed.0.clone();
        // A task in the simulation, a blocking-pool thread on tokio.
        #[allow(deprecated)]
        tokio::task::spawn_blocking(move || {
            let mut r = reader.lock().unwrap_or_else(|e| e.into_inner());
            let answer = match r.next_chunk(CHUNK_BYTES) {
                Ok(items) if items.is_empty() => Reply::Null,
                Ok(items) => {
                    let keep: Vec<SnapshotItem> = items
                        .into_iter()
                        .filter(|i| matches!(i, SnapshotItem::Kv(..) | SnapshotItem::Element(..)))
                        .collect();
                    match crate::snapshot::frame_items(&keep) {
                        Ok(bytes) => Reply::Bulk(bytes.freeze()),
                        Err(e) => Reply::error(format!("ERR backup failed: {e}")),
                    }
                }
                Err(e) => {
                    let msg = format!("ERR backup failed: the node's storage failed: {e}");
                    // Damage met here stops the node, as a read on its task would.
                    let _ = failed.try_send(e);
                    Reply::error(msg)
                }
            };
            let _ = reply.send(answer);
        });
    }

    /// Drops backups idle for `IDLE_MAX`.
    pub(super) fn expire_backups(&mut self) {
        if self.backups.is_empty() {
            return;
        }
        let (now, node) = (Instant::now(), self.id);
        self.backups.retain(|id, b| {
            let keep = now.duration_since(b.used) < IDLE_MAX;
            if !keep {
                info!(node = %node, backup = id, "backup idle for a minute; dropped");
            }
            keep
        });
    }
}
