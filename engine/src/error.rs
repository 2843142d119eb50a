//! The engine's one error type, grouped by what the caller must do.

use hindsight_protocol::Lsn;
use std::fmt;
use std::path::PathBuf;

/// Stable error codes a client sees. The string form (`code.as_str()`) never changes once
/// released; clients and scripts match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The statement does not parse.
    SyntaxError,
    /// The statement parses but uses something hindsight does not support.
    FeatureNotSupported,
    /// A table named in the statement does not exist.
    UndefinedTable,
    /// A column named in the statement does not exist.
    UndefinedColumn,
    /// A function named in the statement does not exist (or not with those argument types).
    UndefinedFunction,
    /// A column in an aggregated query that is neither grouped nor inside an aggregate, or an
    /// aggregate where none is allowed (WHERE, nested aggregates).
    GroupingError,
    /// CREATE TABLE of a name that exists.
    DuplicateTable,
    /// The creation of another named object (a replication slot) whose name is taken.
    DuplicateObject,
    /// A named object other than a table or column (a replication slot) does not exist.
    UndefinedObject,
    /// An object that is in use cannot be changed or dropped now (a slot a standby streams from).
    ObjectInUse,
    /// An INSERT of a primary key that exists.
    UniqueViolation,
    /// A NULL into a NOT NULL column.
    NotNullViolation,
    /// A value of the wrong type, or an expression over incompatible types.
    DatatypeMismatch,
    /// Division by zero, integer overflow and other arithmetic failures.
    NumericValueOutOfRange,
    /// A value that cannot be converted (a bad timestamp literal, say).
    InvalidParameterValue,
    /// A write–write conflict with a transaction that committed after this one's snapshot.
    SerializationFailure,
    /// A statement that needs a transaction outside one, or the reverse.
    InvalidTransactionState,
    /// The transaction failed earlier and only ROLLBACK is accepted.
    InFailedTransaction,
    /// A write on a read-only server (a replica).
    ReadOnly,
    /// A row, statement or transaction past a named limit.
    ProgramLimitExceeded,
    /// WAL or a snapshot failed a check.
    CorruptWal,
    /// A disk or other I/O failure; the server may need a restart.
    IoError,
    /// The server is shutting down.
    Shutdown,
    /// Something that should not happen; a bug.
    InternalError,
}

impl ErrorCode {
    /// The stable snake_case code.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::SyntaxError => "syntax_error",
            ErrorCode::FeatureNotSupported => "feature_not_supported",
            ErrorCode::UndefinedTable => "undefined_table",
            ErrorCode::UndefinedColumn => "undefined_column",
            ErrorCode::UndefinedFunction => "undefined_function",
            ErrorCode::GroupingError => "grouping_error",
            ErrorCode::DuplicateTable => "duplicate_table",
            ErrorCode::DuplicateObject => "duplicate_object",
            ErrorCode::UndefinedObject => "undefined_object",
            ErrorCode::ObjectInUse => "object_in_use",
            ErrorCode::UniqueViolation => "unique_violation",
            ErrorCode::NotNullViolation => "not_null_violation",
            ErrorCode::DatatypeMismatch => "datatype_mismatch",
            ErrorCode::NumericValueOutOfRange => "numeric_value_out_of_range",
            ErrorCode::InvalidParameterValue => "invalid_parameter_value",
            ErrorCode::SerializationFailure => "serialization_failure",
            ErrorCode::InvalidTransactionState => "invalid_transaction_state",
            ErrorCode::InFailedTransaction => "in_failed_transaction",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::ProgramLimitExceeded => "program_limit_exceeded",
            ErrorCode::CorruptWal => "corrupt_wal",
            ErrorCode::IoError => "io_error",
            ErrorCode::Shutdown => "shutting_down",
            ErrorCode::InternalError => "internal_error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A 1-based line and column in the statement text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// 1-based line.
    pub line: u32,
    /// 1-based column.
    pub column: u32,
}

/// An error to report to the client; the session continues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlError {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, naming the object.
    pub message: String,
    /// What to do about it, where that helps.
    pub hint: Option<String>,
    /// Where in the statement, for syntax errors.
    pub position: Option<Position>,
}

impl SqlError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> SqlError {
        SqlError { code, message: message.into(), hint: None, position: None }
    }

    /// The same error with a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> SqlError {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)?;
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

/// The engine's error, grouped by what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reply to the client and continue: bad SQL, a constraint, a conflict.
    #[error("{0}")]
    Sql(SqlError),
    /// Stop: WAL, a snapshot or the control file failed a check. Names the place.
    #[error("corrupt data at {lsn} in {}: {detail}", file.display())]
    Corrupt {
        /// The Lsn of the bad record (or of the snapshot).
        lsn: Lsn,
        /// The file it was read from.
        file: PathBuf,
        /// What check failed.
        detail: String,
    },
    /// An I/O error; the operation may be retried unless the engine is poisoned.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, as a verb phrase.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A previous fsync failed; the database refuses further writes until restarted (an fsync is
    /// never retried, because the kernel may have dropped the dirty pages).
    #[error(
        "the WAL is unusable after an earlier write or fsync failure ({0}); restart the server to recover"
    )]
    Poisoned(String),
    /// The data directory or an input belongs to another cluster or format.
    #[error("{0}")]
    Mismatch(String),
    /// The database is shutting down.
    #[error("the database is shutting down")]
    Shutdown,
}

impl Error {
    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// A SQL error with a code and message.
    pub fn sql(code: ErrorCode, message: impl Into<String>) -> Error {
        Error::Sql(SqlError::new(code, message))
    }

    /// The error as a client sees it: a code, a message and maybe a hint.
    pub fn to_sql_error(&self) -> SqlError {
        match self {
            Error::Sql(e) => e.clone(),
            Error::Corrupt { .. } => SqlError::new(ErrorCode::CorruptWal, self.to_string()),
            Error::Io { .. } | Error::Poisoned(_) => SqlError::new(ErrorCode::IoError, self.to_string()),
            Error::Mismatch(_) => SqlError::new(ErrorCode::InternalError, self.to_string()),
            Error::Shutdown => SqlError::new(ErrorCode::Shutdown, self.to_string()),
        }
    }
}

impl From<SqlError> for Error {
    fn from(e: SqlError) -> Error {
        Error::Sql(e)
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
