//! TEMPORARY stub with the agreed API; replaced by the real module.
#![allow(missing_docs, dead_code, unused_variables)]
use hindsight_engine::Database;
use hindsight_protocol::Lsn;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SyncLevel {
    Off,
    Local,
    RemoteWrite,
    RemoteFlush,
    RemoteApply,
}
impl SyncLevel {
    pub fn from_setting(value: &str) -> Option<SyncLevel> {
        None
    }
}
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StandbyPositions {
    pub received: Lsn,
    pub written: Lsn,
    pub flushed: Lsn,
    pub replayed: Lsn,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandbyState {
    Backup,
    Catchup,
    Streaming,
}
pub struct Replication;
#[derive(Debug)]
pub struct RegisterError {
    pub code: &'static str,
    pub message: String,
    pub hint: String,
}
#[derive(Debug)]
pub struct WaitCancelled;
impl Replication {
    pub fn new(
        db: Arc<Database>,
        data_dir: &Path,
        synchronous_standbys: &str,
    ) -> crate::error::Result<Arc<Replication>> {
        Ok(Arc::new(Replication))
    }
    pub fn on_published(&self, lsn: Lsn) {}
    pub fn register(
        self: &Arc<Self>,
        name: String,
        peer: SocketAddr,
        slot: Option<String>,
    ) -> Result<StandbyHandle, RegisterError> {
        Ok(StandbyHandle)
    }
    pub async fn wait_for(
        &self,
        lsn: Lsn,
        level: SyncLevel,
        cancel: &tokio_util::sync::CancellationToken,
    ) -> Result<(), WaitCancelled> {
        Ok(())
    }
}
pub struct StandbyHandle;
impl StandbyHandle {
    pub fn set_state(&self, state: StandbyState) {}
    pub fn sent(&self, lsn: Lsn) {}
    pub fn ack(&self, pos: StandbyPositions) {}
    pub fn hold_name(&self) -> &str {
        "walsender:0"
    }
}
impl hindsight_engine::sql::ReplicationHost for Replication {
    fn show_replication(&self) -> Result<hindsight_engine::sql::StatementResult, hindsight_engine::SqlError> {
        unimplemented!()
    }
    fn show_recovery(&self) -> Result<hindsight_engine::sql::StatementResult, hindsight_engine::SqlError> {
        unimplemented!()
    }
    fn create_replication_slot(
        &self,
        name: &str,
    ) -> Result<hindsight_engine::sql::StatementResult, hindsight_engine::SqlError> {
        unimplemented!()
    }
    fn drop_replication_slot(
        &self,
        name: &str,
    ) -> Result<hindsight_engine::sql::StatementResult, hindsight_engine::SqlError> {
        unimplemented!()
    }
}
