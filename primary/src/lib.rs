//! The hindsight primary server, and the client library that talks to it.
//!
//! A primary opens its data directory (crash recovery runs in the engine), listens on TCP and
//! serves one SQL session per authenticated connection over the wire protocol of
//! `hindsight-protocol` (`docs/protocol.md`).
//!
//! How data moves:
//! - In: a client connects and sends `Startup`; [`auth`] checks its role and password (in
//!   constant time); then each `Query` is run by the connection's engine
//!   [`Session`](hindsight_engine::sql::Session), in `block_in_place` (or on the blocking pool)
//!   because commits wait for the group-commit fsync: the executor never stalls on it.
//! - Out: each statement's rows go back as `RowDescription` + `DataRows` batches +
//!   `CommandComplete` (with the TxId and Lsn of a commit), errors as `Error` with a stable
//!   code, and every answer ends with `ReadyForQuery`.
//!
//! Modules:
//! - [`config`]: [`ServerConfig`], loaded from TOML (`docs/configuration.md`), and the duration
//!   parser (`500ms`, `30s`, `5m`, `1h`).
//! - [`server`]: [`Server::start`] and [`ServerHandle`], the accept loop, the connection limit
//!   and graceful shutdown (a `CancellationToken`, then draining every connection task).
//! - `connection`: one connection's handshake and session loop.
//! - [`auth`]: roles (`admin`, `replication`, `readonly`), secrets, `admin.secret`.
//! - [`client`]: [`Client`], used by the shell, the benchmarks and the tests.
//!
//! - [`replication`]: connected standbys, their positions and lag, replication slots
//!   (`DATA_DIR/replication_slots`), and synchronous commit waits.
//! - `walsender`: a replication connection's server side: base backups and WAL streaming.
//! - [`sidewrite`]: writing frames to a connection from the engine's flusher thread without
//!   blocking (the WAL sender's push here, a replica's status reports).
//!
//! Not here yet (later milestones): the archiver.

#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod config;
mod connection;
mod error;
pub mod ready;
pub mod replication;
pub mod server;
pub mod sidewrite;
mod walsender;

pub use auth::Role;
pub use client::{Client, ClientError, ConnectOptions, QueryResult};
pub use config::ServerConfig;
pub use connection::{CLOSE_LINGER, SERVER_VERSION, STARTUP_TIMEOUT};
pub use error::{Error, Result};
pub use server::{Server, ServerHandle};
