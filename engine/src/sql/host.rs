//! TEMPORARY stub; replaced by the real module.
#![allow(missing_docs)]
use super::StatementResult;
use crate::SqlError;
pub trait ReplicationHost: Send + Sync {
    fn show_replication(&self) -> Result<StatementResult, SqlError>;
    fn show_recovery(&self) -> Result<StatementResult, SqlError>;
    fn create_replication_slot(&self, name: &str) -> Result<StatementResult, SqlError>;
    fn drop_replication_slot(&self, name: &str) -> Result<StatementResult, SqlError>;
}
