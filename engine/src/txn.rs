//! What a session hands the committer: a transaction's write set, and what it gets back.

use crate::error::{Error, ErrorCode, Result, SqlError};
use crate::reply::{reply_slot, ReplyRx, ReplyTx};
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

/// What happens to a commit's acknowledgement once its WAL is durable, which also tells the
/// group commit how to time its fdatasyncs (see [`COMMIT_DELAY`](crate::db::COMMIT_DELAY)).
#[derive(Clone, Debug, Default)]
pub enum AfterCommit {
    /// The writer is answered at once and goes on, so its next commit is expected soon:
    /// worth holding an fdatasync for a moment so that it shares one.
    #[default]
    Returns,
    /// The writer waits for something more before its answer (synchronous standbys, at a
    /// `synchronous_commit` level above `local`): the durable, published commit goes to the
    /// relay, which answers the writer when that is done. The writer is woken once, not once
    /// here and again there. Its next commit is a replication round trip away, so holding an
    /// fdatasync for it only delays everyone.
    Relayed(Arc<dyn CommitRelay>),
}

impl AfterCommit {
    /// Whether the writer is answered as soon as its commit is durable.
    pub fn returns(&self) -> bool {
        matches!(self, AfterCommit::Returns)
    }
}

/// Takes durable commits whose writers still wait, and answers them (see
/// [`AfterCommit::Relayed`]).
pub trait CommitRelay: Send + Sync + std::fmt::Debug {
    /// Called on the WAL flusher thread right after `pending` became durable and visible, in
    /// Lsn order: must be quick and must not block. Answers `pending` now or keeps it and
    /// answers later, from any thread.
    fn relay(&self, pending: PendingCommit);
}

/// A durable, visible commit whose writer is still waiting for its answer.
///
/// Dropping it unanswered answers the writer with a `shutting_down` error saying the
/// transaction committed locally: an answer is never lost, and never a false failure.
#[derive(Debug)]
pub struct PendingCommit {
    info: CommitInfo,
    reply: Option<ReplyTx<Result<CommitInfo>>>,
}

impl PendingCommit {
    pub(crate) fn new(info: CommitInfo, reply: ReplyTx<Result<CommitInfo>>) -> PendingCommit {
        PendingCommit { info, reply: Some(reply) }
    }

    /// A pending commit that no database made, and the slot its answer arrives in: for
    /// testing relays.
    pub fn detached(info: CommitInfo) -> (PendingCommit, ReplyRx<Result<CommitInfo>>) {
        let (tx, rx) = reply_slot();
        (PendingCommit::new(info, tx), rx)
    }

    /// What the commit reports once answered.
    pub fn info(&self) -> CommitInfo {
        self.info
    }

    /// Answers the writer: committed.
    pub fn complete(mut self) {
        if let Some(reply) = self.reply.take() {
            reply.send(Ok(self.info));
        }
    }

    /// Answers the writer with `error`. The transaction is durable here whatever the error
    /// says, so it should say so (the relay's waiting was cut short, not the commit).
    pub fn fail(mut self, error: Error) {
        if let Some(reply) = self.reply.take() {
            reply.send(Err(error));
        }
    }
}

impl Drop for PendingCommit {
    fn drop(&mut self) {
        if let Some(reply) = self.reply.take() {
            let message = format!(
                "the transaction committed locally at {}, but the wait for its confirmation ended unanswered",
                self.info.lsn
            );
            reply.send(Err(Error::Sql(
                SqlError::new(ErrorCode::Shutdown, message)
                    .with_hint("check whether it is there before retrying"),
            )));
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> CommitInfo {
        CommitInfo { txid: TxId(7), lsn: Lsn(0x1_0000_0040), commit_time_us: 1 }
    }

    #[test]
    fn a_pending_commit_is_answered_once_whatever_happens_to_it() {
        let (pending, answer) = PendingCommit::detached(info());
        pending.complete();
        assert_eq!(answer.recv().expect("answered").expect("committed"), info());

        let (pending, answer) = PendingCommit::detached(info());
        pending.fail(Error::Shutdown);
        assert!(matches!(answer.recv(), Some(Err(Error::Shutdown))));

        // Dropped unanswered (a relay that lost it): the writer hears the commit is durable.
        let (pending, answer) = PendingCommit::detached(info());
        drop(pending);
        let e = answer.recv().expect("answered on drop").expect_err("not confirmed");
        assert_eq!(e.to_sql_error().code, ErrorCode::Shutdown);
        assert!(e.to_string().contains("committed locally at 1/40"), "{e}");
    }
}
