//! The replica's SQL host: `SHOW RECOVERY` from the receiver and the standby database, and the
//! replication statements of its own WAL senders (a replica can feed replicas: cascading).

use std::sync::Arc;

use hindsight_engine::sql::{Column, ReplicationHost, StatementResult};
use hindsight_engine::value::{format_timestamp, DataType, Value};
use hindsight_engine::{Database, SqlError};
use hindsight_primary::replication::Replication;
use hindsight_protocol::TxId;

use crate::receiver::RecoveryState;

/// SHOW RECOVERY's columns, in order.
pub const RECOVERY_COLUMNS: &[(&str, DataType)] = &[
    ("state", DataType::Text),
    ("upstream", DataType::Text),
    ("receive_lsn", DataType::Text),
    ("write_lsn", DataType::Text),
    ("flush_lsn", DataType::Text),
    ("replay_lsn", DataType::Text),
    ("upstream_flush_lsn", DataType::Text),
    ("last_replayed_txid", DataType::BigInt),
    ("last_replayed_commit_time", DataType::Text),
    ("target", DataType::Text),
    ("pause_state", DataType::Text),
    ("pause_reason", DataType::Text),
    ("last_error", DataType::Text),
];

/// What a replica's sessions run replication statements against.
pub struct ReplicaHost {
    db: Arc<Database>,
    state: Arc<RecoveryState>,
    replication: Arc<Replication>,
}

impl ReplicaHost {
    /// A host over the standby database, the receiver's state and this server's own senders.
    pub fn new(db: Arc<Database>, state: Arc<RecoveryState>, replication: Arc<Replication>) -> ReplicaHost {
        ReplicaHost { db, state, replication }
    }
}

fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

impl ReplicationHost for ReplicaHost {
    fn show_replication(&self) -> Result<StatementResult, SqlError> {
        self.replication.show_replication()
    }

    fn show_recovery(&self) -> Result<StatementResult, SqlError> {
        let s = self.db.status();
        let info = self.state.info();
        let replay_error = s.replay_error.clone();
        let phase = if replay_error.is_some() { "stopped" } else { info.phase };
        let (txid, time) = if s.last_txid == TxId::ZERO {
            (Value::Null, Value::Null)
        } else {
            (Value::Int(s.last_txid.0 as i64), text(format_timestamp(s.last_commit_time_us)))
        };
        let row = vec![
            text(phase),
            text(info.upstream),
            text(info.received_lsn.max(s.insert_lsn).to_string()),
            text(s.insert_lsn.to_string()),
            text(s.flushed_lsn.max(s.visible_lsn).to_string()),
            text(s.visible_lsn.to_string()),
            text(info.upstream_flush_lsn.to_string()),
            txid,
            time,
            Value::Null,
            text("not paused"),
            Value::Null,
            replay_error.or(info.last_error).map_or(Value::Null, text),
        ];
        Ok(StatementResult::Rows {
            columns: RECOVERY_COLUMNS.iter().map(|(n, t)| Column::new(*n, *t)).collect(),
            rows: vec![row],
        })
    }

    fn create_replication_slot(&self, name: &str) -> Result<StatementResult, SqlError> {
        self.replication.create_replication_slot(name)
    }

    fn drop_replication_slot(&self, name: &str) -> Result<StatementResult, SqlError> {
        self.replication.drop_replication_slot(name)
    }
}
