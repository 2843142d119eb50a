//! The crate's one error type, grouped by what the caller must do.

use std::path::PathBuf;

/// Everything that can stop a server from starting or running.
///
/// Grouped by what the caller must do:
/// - [`Error::Config`]: the operator must fix the configuration file or a flag, then start again.
/// - [`Error::Engine`]: the database refused to open (another process holds the directory, it
///   belongs to another format, recovery found corruption); the message says which and what to
///   do. Starting again without a change fails the same way.
/// - [`Error::Io`]: a file or socket operation failed (the listen address is taken, the data
///   directory is not writable); it may work once the cause is gone.
/// - [`Error::Shutdown`]: the server is stopping; nothing to do.
///
/// Errors inside one connection never become an `Error`: they are answered on the wire and
/// logged once, and the server keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid: an unknown key, a bad value, an unreadable file.
    #[error("invalid configuration{}: {detail}", path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Config {
        /// The configuration file, when the error is about one.
        path: Option<PathBuf>,
        /// What is wrong, naming the key.
        detail: String,
    },

    /// The database did not open or failed.
    #[error("{0}")]
    Engine(#[from] hindsight_engine::Error),

    /// A file or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, as a verb phrase ("bind 127.0.0.1:7340").
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// The server is shutting down.
    #[error("the server is shutting down")]
    Shutdown,
}

impl Error {
    /// An I/O error with a verb-phrase context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { context: context.into(), source }
    }

    /// A configuration error not tied to a file (a flag, a value checked after parsing).
    pub fn config(detail: impl Into<String>) -> Error {
        Error::Config { path: None, detail: detail.into() }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
