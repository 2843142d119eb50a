//! The hindsight engine: the database itself, with no networking.
//!
//! - [`store`]: the memory-resident MVCC table store and its state digest.
//! - [`sql`]: the SQL-ish language, parsed with `sqlparser`, executed in [`sql::Session`]s that
//!   read at a snapshot and buffer writes until COMMIT.
//! - [`wal`]: the write-ahead log — record format, segments, the incremental decoder, the
//!   group-commit writer.
//! - [`replay`]: the one replay step, shared by crash recovery, the committer and (later)
//!   replicas.
//! - [`checkpoint`]: snapshots and the control file.
//! - [`confirmed`]: a replica's confirmed Lsn, which bounds what crash recovery shows.
//! - `inbox`: the committer's two bounded input lanes (requests, a replica's WAL slices).
//! - [`reply`]: the one-shot slot a session blocks on for the committer's acknowledgement.
//! - [`db`]: [`Database`], which opens a data directory (running crash recovery), serves read
//!   views and commits through a single committer thread.
//!
//! Data enters as SQL text through a session; a COMMIT hands the write set to the committer,
//! which appends it to the WAL, fsyncs (one fdatasync for every waiting commit), applies it to
//! the store and publishes it. Data leaves as query results from read views, and as WAL bytes
//! for replicas and the archive.

pub mod backup;
pub mod checkpoint;
pub mod confirmed;
pub mod db;
pub mod error;
mod inbox;
pub mod replay;
pub mod reply;
pub mod schema;
pub mod sql;
pub mod store;
pub mod txn;
pub mod value;
pub mod wal;

pub use db::{Database, Status};
pub use error::{Error, ErrorCode, Position, Result, SqlError};
