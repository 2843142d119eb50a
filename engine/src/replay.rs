//! Replay: the one step that applies a WAL record to the store.
//!
//! [`Replayer::apply`] takes a decoded [`WalEntry`] and changes the store exactly as the primary
//! did, then checks the state digest the record carries. Crash recovery calls it for every
//! record after the snapshot; replicas call it for every record they receive; the committer
//! calls its unchecked half ([`Replayer::apply_commit`]) to apply what it is about to log, so the
//! primary and every replay run the same code.
//!
//! It does not publish: the caller decides when applied changes become visible (after fsync on
//! a primary, at once on a replica, at the end of crash recovery).

use crate::error::{Error, Result};
use crate::store::Store;
use crate::value::{row_key, Key};
use crate::wal::record::{ChangeOp, CommitRecord, DdlOp, Record, TableChanges};
use crate::wal::WalEntry;
use hindsight_protocol::{Lsn, Timeline, TxId};
use std::path::PathBuf;
use std::sync::Arc;

/// The most bytes of row changes one transaction may carry (chunks included).
pub const TXN_CHANGE_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// What applying one record did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A transaction committed.
    Commit {
        /// Its id.
        txid: TxId,
        /// Its commit Lsn (the record's end).
        lsn: Lsn,
        /// Its commit time.
        commit_time_us: i64,
    },
    /// A chunk of a transaction still open; nothing is applied until its commit.
    Chunk,
    /// A checkpoint record.
    Checkpoint {
        /// The snapshot's Lsn.
        snapshot_lsn: Lsn,
    },
    /// A restore point.
    RestorePoint {
        /// Its name.
        name: String,
        /// The Lsn just past it.
        lsn: Lsn,
    },
    /// A timeline switch.
    EndOfRecovery {
        /// The new timeline.
        new_timeline: Timeline,
    },
}

/// The replay state: the store plus what the WAL says about the newest transaction.
///
/// Invariants:
/// - `last_txid` and `last_commit_time_us` are those of the newest applied commit.
/// - `pending` holds the chunks since the last non-chunk record, in WAL order.
/// - `complete_end` is the end of the last record that is not part of an open transaction: a
///   WAL cut there holds only whole transactions.
pub struct Replayer {
    store: Arc<Store>,
    pending: Vec<TableChanges>,
    pending_bytes: usize,
    last_txid: TxId,
    last_commit_time_us: i64,
    complete_end: Lsn,
    complete_prev: Option<Lsn>,
}

impl Replayer {
    /// A replayer continuing from a store whose state is that after `last_txid`.
    pub fn new(store: Arc<Store>, last_txid: TxId, last_commit_time_us: i64, position: Lsn) -> Replayer {
        Replayer {
            store,
            pending: Vec::new(),
            pending_bytes: 0,
            last_txid,
            last_commit_time_us,
            complete_end: position,
            complete_prev: None,
        }
    }

    /// The store being replayed into.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The newest applied transaction.
    pub fn last_txid(&self) -> TxId {
        self.last_txid
    }

    /// Its commit time.
    pub fn last_commit_time_us(&self) -> i64 {
        self.last_commit_time_us
    }

    /// The end (and start) of the last record outside an open transaction.
    pub fn complete_end(&self) -> (Lsn, Option<Lsn>) {
        (self.complete_end, self.complete_prev)
    }

    /// Whether a large transaction's chunks are waiting for their commit.
    pub fn in_transaction(&self) -> bool {
        !self.pending.is_empty()
    }

    fn corrupt(lsn: Lsn, detail: String) -> Error {
        Error::Corrupt { lsn, file: PathBuf::from("WAL"), detail }
    }

    /// Applies one record and checks it. Errors are corruption: the record does not fit the
    /// state (unknown table, txid out of order, digest mismatch).
    pub fn apply(&mut self, entry: WalEntry) -> Result<Applied> {
        let applied = match entry.record {
            Record::Chunk(changes) => {
                let bytes: usize = changes.iter().flat_map(|t| &t.changes).map(|c| c.bytes.len()).sum();
                self.pending_bytes += bytes;
                if self.pending_bytes > TXN_CHANGE_BYTES_MAX {
                    return Err(Self::corrupt(entry.lsn, "transaction past TXN_CHANGE_BYTES_MAX".into()));
                }
                self.pending.extend(changes);
                return Ok(Applied::Chunk);
            }
            Record::Commit(c) => {
                let expected = self.last_txid.next();
                if c.txid != expected {
                    return Err(Self::corrupt(
                        entry.lsn,
                        format!("commit of TxId {} where {expected} was due", c.txid),
                    ));
                }
                if c.commit_time_us < self.last_commit_time_us {
                    return Err(Self::corrupt(
                        entry.lsn,
                        format!("commit time of TxId {} goes backwards", c.txid),
                    ));
                }
                let pending = std::mem::take(&mut self.pending);
                self.pending_bytes = 0;
                let (txid, commit_time_us, logged) = (c.txid, c.commit_time_us, c.digest);
                let digest = self.apply_commit(c, pending, entry.end_lsn)?;
                if digest != logged {
                    return Err(Self::corrupt(
                        entry.lsn,
                        format!(
                            "state digest mismatch after TxId {txid}: replay computed {digest:016x}, the primary logged {logged:016x}",
                        ),
                    ));
                }
                Applied::Commit { txid, lsn: entry.end_lsn, commit_time_us }
            }
            Record::Checkpoint { snapshot_lsn, .. } => Applied::Checkpoint { snapshot_lsn },
            Record::RestorePoint { name, .. } => Applied::RestorePoint { name, lsn: entry.end_lsn },
            Record::EndOfRecovery { new_timeline, .. } => Applied::EndOfRecovery { new_timeline },
        };
        if !self.pending.is_empty() {
            return Err(Self::corrupt(
                entry.lsn,
                "a large transaction's chunks are not followed by its commit".into(),
            ));
        }
        self.complete_end = entry.end_lsn;
        self.complete_prev = Some(entry.lsn);
        Ok(applied)
    }

    /// Applies a commit's DDL, then the chunks' and the record's row changes, every version
    /// stamped `end_lsn`; returns the digest after it. Does not check the record's digest (the
    /// committer calls this to learn the digest it will log). On error the store may be partly
    /// changed: the caller must stop using it (replay stops; the committer poisons itself).
    pub fn apply_commit(&mut self, c: CommitRecord, chunks: Vec<TableChanges>, end_lsn: Lsn) -> Result<u64> {
        let lsn = end_lsn;
        for op in &c.ddl {
            let catalog = self.store.newest_catalog();
            match op {
                DdlOp::Create(def) => {
                    if catalog.get(&def.name).is_some() || self.store.table_data(def.id).is_some() {
                        return Err(Self::corrupt(lsn, format!("CREATE TABLE \"{}\": it exists", def.name)));
                    }
                    self.store.create_table(Arc::new(def.clone()), lsn);
                }
                DdlOp::Drop { id, name } => {
                    if catalog.get(name).map(|d| d.id) != Some(*id) {
                        return Err(Self::corrupt(
                            lsn,
                            format!("DROP TABLE \"{name}\" (id {id}): no such table"),
                        ));
                    }
                    self.store.drop_table(name, lsn);
                }
                DdlOp::Truncate { old_id, new_id, name } => {
                    if catalog.get(name).map(|d| d.id) != Some(*old_id)
                        || self.store.table_data(*new_id).is_some()
                    {
                        return Err(Self::corrupt(
                            lsn,
                            format!("TRUNCATE \"{name}\" (id {old_id}): no such table"),
                        ));
                    }
                    self.store.truncate_table(name, *new_id, lsn);
                }
            }
        }
        let horizon = self.store.horizon();
        for t in chunks.into_iter().chain(c.changes) {
            let Some(data) = self.store.table_data(t.table) else {
                return Err(Self::corrupt(
                    lsn,
                    format!("change to table id {} that does not exist", t.table),
                ));
            };
            let def = Arc::clone(&data.def);
            for change in t.changes {
                let (key, row) = match change.op {
                    ChangeOp::Put => {
                        let key = row_key(&def.types, def.pk, &change.bytes)
                            .and_then(|k| crate::value::validate_row(&def.types, &change.bytes).map(|_| k))
                            .map_err(|e| Self::corrupt(lsn, format!("row of table \"{}\": {e}", def.name)))?;
                        (key, Some(change.bytes))
                    }
                    ChangeOp::Delete => {
                        let (key, used) = Key::decode(def.key_type(), &change.bytes)
                            .map_err(|e| Self::corrupt(lsn, format!("key of table \"{}\": {e}", def.name)))?;
                        if used != change.bytes.len() {
                            return Err(Self::corrupt(
                                lsn,
                                format!("key of table \"{}\" has trailing bytes", def.name),
                            ));
                        }
                        (key, None)
                    }
                };
                if let Err(newest) = self.store.write(&data, key.clone(), row, lsn, horizon) {
                    return Err(Self::corrupt(
                        lsn,
                        format!(
                            "key {key} of table \"{}\" changed twice (newest version at {newest})",
                            def.name
                        ),
                    ));
                }
            }
        }
        self.last_txid = c.txid;
        self.last_commit_time_us = c.commit_time_us;
        Ok(self.store.digest())
    }
}
