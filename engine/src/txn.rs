//! What a session hands the committer: a transaction's write set, and what it gets back.

use crate::schema::{TableDef, TableId};
use crate::store::ReadView;
use crate::value::Key;
use crate::wal::record::DdlOp;
use hindsight_protocol::{Lsn, TxId};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A transaction's buffered writes, handed to the committer at COMMIT.
///
/// Invariants:
/// - `snapshot_lsn` is the Lsn of the read view the transaction read at.
/// - Every key in `rows[t]` has the key type of table `t`; a row value (`Some`) is a complete
///   encoded row of that table whose primary key equals the key.
/// - `ddl` is in statement order; `rows` only names tables that exist after `ddl`.
#[derive(Clone, Debug, Default)]
pub struct WriteSet {
    /// The snapshot the transaction read at.
    pub snapshot_lsn: Lsn,
    /// DDL in statement order.
    pub ddl: Vec<DdlOp>,
    /// Final row images per table: `Some(row)` to put, `None` to delete.
    pub rows: BTreeMap<TableId, TableWrites>,
    /// The read view the transaction read at, kept registered until the commit is decided, so
    /// the writer never reclaims a version (a tombstone, say) the conflict check still needs.
    /// Callers that built the write set without a view may leave it `None`.
    pub view: Option<ReadView>,
}

/// The writes to one table.
#[derive(Clone, Debug)]
pub struct TableWrites {
    /// The table's definition (for its key type and name in messages).
    pub def: Arc<TableDef>,
    /// Final image per key.
    pub rows: BTreeMap<Key, Option<Box<[u8]>>>,
}

impl WriteSet {
    /// Whether committing this would log nothing.
    pub fn is_empty(&self) -> bool {
        self.ddl.is_empty() && self.rows.values().all(|t| t.rows.is_empty())
    }
}

/// What the writer does once its commit is acknowledged, which the group commit uses to time
/// its fdatasyncs (see [`COMMIT_DELAY`](crate::db::COMMIT_DELAY)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AfterCommit {
    /// It goes on at once, so its next commit is expected soon: worth holding an fdatasync
    /// for a moment so that it shares one.
    #[default]
    Returns,
    /// It waits for synchronous standbys to confirm the commit (`synchronous_commit` above
    /// `local`), so its next commit is a replication round trip away: holding an fdatasync
    /// for it only delays everyone.
    WaitsForStandbys,
}

/// What a successful commit reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitInfo {
    /// The transaction's id.
    pub txid: TxId,
    /// The end Lsn of its commit record: visible to readers at this Lsn and later.
    pub lsn: Lsn,
    /// Its commit time, microseconds since the epoch.
    pub commit_time_us: i64,
}
