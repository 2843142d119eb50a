//! The stable error codes sent in `wire::Error.code`.
//!
//! A code is a snake_case ASCII string that clients may match on, so a code is never renamed or
//! given a new meaning; new codes may be added in any release. Clients must treat an unknown
//! code like [`INTERNAL_ERROR`] and show the message. `docs/protocol.md` has the same list with
//! the situations each code covers.

/// The SQL text does not parse.
pub const SYNTAX_ERROR: &str = "syntax_error";
/// A statement names a table that does not exist.
pub const UNDEFINED_TABLE: &str = "undefined_table";
/// A statement names a column that does not exist.
pub const UNDEFINED_COLUMN: &str = "undefined_column";
/// `CREATE TABLE` of a table that exists.
pub const DUPLICATE_TABLE: &str = "duplicate_table";
/// An insert or update would give two rows the same primary key.
pub const UNIQUE_VIOLATION: &str = "unique_violation";
/// A NULL into a NOT NULL column.
pub const NOT_NULL_VIOLATION: &str = "not_null_violation";
/// A value of the wrong type for a column or an operator.
pub const DATATYPE_MISMATCH: &str = "datatype_mismatch";
/// Division by zero, or an arithmetic overflow.
pub const NUMERIC_VALUE_OUT_OF_RANGE: &str = "numeric_value_out_of_range";
/// SQL that parses but that hindsight does not implement.
pub const FEATURE_NOT_SUPPORTED: &str = "feature_not_supported";
/// A statement other than ROLLBACK inside a failed transaction block.
pub const IN_FAILED_TRANSACTION: &str = "in_failed_transaction";
/// A commit lost a write-write conflict (first committer wins); nothing was changed. Retry the
/// transaction.
pub const SERIALIZATION_FAILURE: &str = "serialization_failure";
/// A write on a replica (or any server that is not a read-write primary).
pub const READ_ONLY: &str = "read_only";
/// A recovery target that the available backups and WAL cannot reach.
pub const TARGET_UNREACHABLE: &str = "target_unreachable";
/// WAL failed its checks (CRC, chain, digest); the error names the Lsn and the file.
pub const CORRUPT_WAL: &str = "corrupt_wal";
/// WAL needed by a replica or a recovery is no longer available.
pub const WAL_MISSING: &str = "wal_missing";
/// The peer broke the protocol: a malformed, oversized or unexpected message.
pub const PROTOCOL_VIOLATION: &str = "protocol_violation";
/// `Startup.protocol_version` is one the server does not speak.
pub const UNSUPPORTED_PROTOCOL_VERSION: &str = "unsupported_protocol_version";
/// Unknown role or wrong password. Deliberately does not say which.
pub const INVALID_PASSWORD: &str = "invalid_password";
/// The server is at its connection limit.
pub const TOO_MANY_CONNECTIONS: &str = "too_many_connections";
/// `Startup.expected_system_id` is not the server's system id: another cluster.
pub const SYSTEM_ID_MISMATCH: &str = "system_id_mismatch";
/// The server is shutting down; reconnect later or elsewhere.
pub const SHUTTING_DOWN: &str = "shutting_down";
/// Reading or writing failed on the server (disk or network).
pub const IO_ERROR: &str = "io_error";
/// A bug: something the server believed impossible happened.
pub const INTERNAL_ERROR: &str = "internal_error";

/// A function that does not exist.
pub const UNDEFINED_FUNCTION: &str = "undefined_function";
/// An aggregate or GROUP BY used where it cannot be.
pub const GROUPING_ERROR: &str = "grouping_error";
/// A value that cannot be converted (a bad timestamp literal, say).
pub const INVALID_PARAMETER_VALUE: &str = "invalid_parameter_value";
/// A statement that needs a transaction outside one, or the reverse.
pub const INVALID_TRANSACTION_STATE: &str = "invalid_transaction_state";
/// A row, statement or transaction past a named limit.
pub const PROGRAM_LIMIT_EXCEEDED: &str = "program_limit_exceeded";
/// The creation of a named object (a replication slot) whose name is taken.
pub const DUPLICATE_OBJECT: &str = "duplicate_object";
/// A named object other than a table or column (a replication slot) does not exist.
pub const UNDEFINED_OBJECT: &str = "undefined_object";
/// An object in use cannot be dropped or used again now (a slot a standby streams from).
pub const OBJECT_IN_USE: &str = "object_in_use";

/// Every code above, for documentation checks and tests.
pub const ALL: &[&str] = &[
    SYNTAX_ERROR,
    UNDEFINED_TABLE,
    UNDEFINED_COLUMN,
    DUPLICATE_TABLE,
    UNIQUE_VIOLATION,
    NOT_NULL_VIOLATION,
    DATATYPE_MISMATCH,
    NUMERIC_VALUE_OUT_OF_RANGE,
    UNDEFINED_FUNCTION,
    GROUPING_ERROR,
    INVALID_PARAMETER_VALUE,
    INVALID_TRANSACTION_STATE,
    PROGRAM_LIMIT_EXCEEDED,
    DUPLICATE_OBJECT,
    UNDEFINED_OBJECT,
    OBJECT_IN_USE,
    FEATURE_NOT_SUPPORTED,
    IN_FAILED_TRANSACTION,
    SERIALIZATION_FAILURE,
    READ_ONLY,
    TARGET_UNREACHABLE,
    CORRUPT_WAL,
    WAL_MISSING,
    PROTOCOL_VIOLATION,
    UNSUPPORTED_PROTOCOL_VERSION,
    INVALID_PASSWORD,
    TOO_MANY_CONNECTIONS,
    SYSTEM_ID_MISMATCH,
    SHUTTING_DOWN,
    IO_ERROR,
    INTERNAL_ERROR,
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_snake_case() {
        let mut seen = HashSet::new();
        for code in ALL {
            assert!(seen.insert(code), "duplicate code {code}");
            assert!(!code.is_empty() && !code.starts_with('_') && !code.ends_with('_'), "{code}");
            assert!(code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{code} is not snake_case");
        }
    }

    #[test]
    fn docs_list_every_code() {
        let doc = include_str!("../../docs/protocol.md");
        for code in ALL {
            assert!(doc.contains(&format!("`{code}`")), "docs/protocol.md does not describe `{code}`");
        }
    }
}
