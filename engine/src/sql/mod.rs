//! The SQL-ish language: parsing, planning and executing statements in a [`Session`].
//!
//! Data enters as SQL text through [`Session::execute`]. The text is split into statements
//! (`split.rs`); each is either an administration command, hand-parsed (`admin.rs`), a plain
//! multi-row `INSERT … VALUES` of literals, hand-parsed on a fast path (`bulk.rs`) because
//! `sqlparser` needs seconds and gigabytes for a million-row statement, or anything else,
//! parsed with `sqlparser` (PostgreSQL dialect). Statements are compiled (`compile.rs`,
//! `plan.rs`, `ddl.rs`) against the catalog the transaction sees into plain plans over typed
//! expressions (`expr.rs`), and executed (`exec.rs`) against a transaction
//! (`transaction.rs`): a read view at the transaction's snapshot plus its own buffered writes.
//! Data leaves as [`StatementResult`]s; writes leave as a [`WriteSet`](crate::txn::WriteSet)
//! handed to [`Database::commit`](crate::Database::commit) at COMMIT (or at the end of an
//! autocommit statement).
//!
//! Simplifications, admitted openly:
//! - One table per query: no joins, subqueries, views or secondary indexes. The primary key is
//!   the only index; WHERE clauses that constrain it (`=`, `IN`, `<`, `<=`, `>`, `>=`,
//!   `BETWEEN`, ANDed with anything) become point lookups or range scans.
//! - Result sets are materialised in memory and unbounded for now (a wire-level row limit or
//!   cursor belongs to the server); statements are bounded by [`STATEMENT_LEN_MAX`].
//! - Statements of one `execute` call are parsed one at a time, so statements before a syntax
//!   error in a later statement have already run (as if a client had sent them one by one).

mod admin;
mod bulk;
mod compile;
mod ddl;
mod exec;
mod expr;
pub mod host;
mod plan;
mod session;
mod split;
mod transaction;

#[cfg(test)]
mod tests;

use crate::txn::CommitInfo;
use crate::value::{DataType, Value};

pub use admin::{AdminStatement, ReplayTarget};
pub use exec::SessionStats;
pub use host::{slot_name, ReplicationHost, SLOT_NAME_LEN_MAX};
pub(crate) use session::read_only_error;
pub use session::Session;

/// The longest SQL text one `execute` call accepts. Large because a million-row multi-row
/// INSERT is a legitimate way to load data (about 35 MB for three short columns).
pub const STATEMENT_LEN_MAX: usize = 256 * 1024 * 1024;
/// The most entries in an `IN (…)` list or rows in one `VALUES` list compiled by the general
/// path; the bulk path streams rows and is bounded by [`STATEMENT_LEN_MAX`] alone.
pub const VALUES_ROWS_MAX: usize = 10_000_000;
/// The deepest expression nesting the compiler accepts.
pub const EXPR_DEPTH_MAX: usize = 256;
/// The most operators in one chain of a statement's text (see
/// `split::expression_depth_bound`): longer chains are refused before parsing, because the
/// parser's trees for them are too deep to drop without overflowing the stack.
pub const EXPR_OPERATORS_MAX: usize = 1024;
const _: () = assert!(EXPR_DEPTH_MAX < EXPR_OPERATORS_MAX);

/// One column of a result set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// The column's name: the alias, the column name, the function name or `?column?`.
    pub name: String,
    /// Its type (`TEXT` for an expression whose type is unknown, like a bare `NULL`).
    pub data_type: DataType,
}

impl Column {
    /// A column of that name and type.
    pub fn new(name: impl Into<String>, data_type: DataType) -> Column {
        Column { name: name.into(), data_type }
    }
}

/// The result of one statement.
#[derive(Clone, Debug, PartialEq)]
pub enum StatementResult {
    /// A result set. Every row has one value per column, of the column's type or NULL.
    Rows {
        /// The columns.
        columns: Vec<Column>,
        /// The rows, materialised (unbounded for now: see the module docs).
        rows: Vec<Vec<Value>>,
    },
    /// A command that returns no rows.
    Command {
        /// PostgreSQL-style tag: `INSERT 0 3`, `UPDATE 1`, `CREATE TABLE`, `COMMIT`, …
        tag: String,
        /// Rows inserted, updated or deleted (0 for other commands).
        rows_affected: u64,
        /// Set when this statement committed a transaction that wrote something.
        commit: Option<CommitInfo>,
    },
}

impl StatementResult {
    /// A command result without rows affected or commit.
    pub fn tag(tag: impl Into<String>) -> StatementResult {
        StatementResult::Command { tag: tag.into(), rows_affected: 0, commit: None }
    }
}
