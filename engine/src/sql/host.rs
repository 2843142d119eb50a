//! What a server adds to the SQL language: replication status and control.
//!
//! The engine parses `SHOW REPLICATION`, `SHOW RECOVERY`, `CREATE REPLICATION SLOT name` and
//! `DROP REPLICATION SLOT name`, but the state they read and change (connected standbys, lag,
//! slots, a replica's receive position) lives in the server. A server gives each session a
//! [`ReplicationHost`] with [`Session::set_host`](super::Session::set_host); a session without
//! one (the engine used on its own, in tests and tools) answers these statements with
//! `feature_not_supported`.
//!
//! Slot names are checked here, once, by [`slot_name`], so the parser and every host agree on
//! what a valid name is.

use super::StatementResult;
use crate::error::{ErrorCode, SqlError};
use crate::txn::CommitRelay;
use std::sync::Arc;

/// The longest replication slot name, in bytes (PostgreSQL's `NAMEDATALEN - 1`).
pub const SLOT_NAME_LEN_MAX: usize = 63;

/// What a server adds to the SQL language: replication status and control.
///
/// Called from a session's statement, on whatever thread runs it (the server runs statements
/// off the async executor), so implementations may take locks and do short file I/O but must
/// not wait on async code.
pub trait ReplicationHost: Send + Sync {
    /// `SHOW REPLICATION`: one row per connected standby and per idle replication slot.
    fn show_replication(&self) -> Result<StatementResult, SqlError>;
    /// `SHOW RECOVERY`: a replica's receive and replay state (an error on a primary).
    fn show_recovery(&self) -> Result<StatementResult, SqlError>;
    /// `CREATE REPLICATION SLOT name`, `name` already checked by [`slot_name`].
    fn create_replication_slot(&self, name: &str) -> Result<StatementResult, SqlError>;
    /// `DROP REPLICATION SLOT name`, `name` already checked by [`slot_name`].
    fn drop_replication_slot(&self, name: &str) -> Result<StatementResult, SqlError>;
    /// Where a commit at this `synchronous_commit` level (as the session stores it) goes once
    /// durable, when it must also wait for synchronous standbys: the relay that answers it when
    /// they confirm. `None` (the default, and a replica's answer: it takes no commits) answers
    /// commits as soon as they are durable.
    fn commit_relay(&self, _synchronous_commit: &str) -> Option<Arc<dyn CommitRelay>> {
        None
    }
}

/// Checks and normalises a replication slot name: 1 to [`SLOT_NAME_LEN_MAX`] characters of
/// `[a-z0-9_]` after folding ASCII upper case to lower (PostgreSQL's rule). Returns the folded
/// name, or `invalid_parameter_value` naming the offending name.
pub fn slot_name(name: &str) -> Result<String, SqlError> {
    let folded = name.to_ascii_lowercase();
    let why = if folded.is_empty() {
        Some("it is empty".to_string())
    } else if folded.len() > SLOT_NAME_LEN_MAX {
        Some(format!("it is {} bytes long, more than {SLOT_NAME_LEN_MAX}", folded.len()))
    } else {
        folded
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
            .map(|c| format!("it contains {c:?}"))
    };
    match why {
        None => Ok(folded),
        Some(why) => Err(SqlError::new(
            ErrorCode::InvalidParameterValue,
            format!("invalid replication slot name \"{name}\": {why}"),
        )
        .with_hint(format!(
            "slot names are 1 to {SLOT_NAME_LEN_MAX} characters of lower-case letters, digits and underscores"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_folded_and_checked() {
        assert_eq!(slot_name("Replica_1").unwrap(), "replica_1");
        assert_eq!(slot_name(&"a".repeat(SLOT_NAME_LEN_MAX)).unwrap().len(), SLOT_NAME_LEN_MAX);
        for bad in ["", "my-slot", "slot.1", "é", "a b"] {
            let e = slot_name(bad).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidParameterValue, "{bad}");
            assert!(e.message.contains(&format!("\"{bad}\"")) && e.hint.is_some(), "{e}");
        }
        let long = "a".repeat(SLOT_NAME_LEN_MAX + 1);
        assert!(slot_name(&long).unwrap_err().message.contains("more than 63"));
    }
}
