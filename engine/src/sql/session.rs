//! A client session: transaction state, settings, and statement dispatch.
//!
//! Outside `BEGIN … COMMIT` every statement is its own transaction (autocommit): it reads at a
//! fresh snapshot and, if it wrote anything, commits before returning. Inside a block the
//! snapshot is taken at the first statement after BEGIN (snapshot isolation) and writes are
//! buffered until COMMIT. An error inside a block fails it: later statements are refused until
//! ROLLBACK (or COMMIT, which then rolls back), as in PostgreSQL.
//!
//! Differences from PostgreSQL, on purpose or for now: a nested BEGIN is an error
//! (`invalid_transaction_state`) that leaves the open block intact (PostgreSQL warns); SET is
//! not undone by ROLLBACK; there are no savepoints; SERIALIZABLE is refused rather than
//! silently weakened, while READ COMMITTED runs as the stronger snapshot isolation.

use super::admin::{self, Settings};
use super::compile::{now_us, Env};
use super::exec::{self, SessionStats};
use super::host::ReplicationHost;
use super::plan::{self, Access};
use super::split::{self, split_statements};
use super::transaction::Txn;
use super::{bulk, ddl, Column, StatementResult, EXPR_OPERATORS_MAX, STATEMENT_LEN_MAX};
use crate::db::Database;
use crate::error::{ErrorCode, Position, SqlError};
use crate::txn::{AfterCommit, CommitInfo};
use crate::value::{DataType, Value};
use sqlparser::ast;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::{Parser, ParserError};
use std::ops::Bound;
use std::sync::Arc;

/// The error for a write on a read-only server.
/// The error for a write in a session of a read-only role.
pub(crate) fn role_read_only_error(what: &str) -> SqlError {
    SqlError::new(ErrorCode::ReadOnly, format!("cannot execute {what}: this session's role may only read"))
        .with_hint("connect with a role that may write (admin)")
}

pub(crate) fn read_only_error(what: &str) -> SqlError {
    SqlError::new(ErrorCode::ReadOnly, format!("cannot execute {what} on a read-only replica"))
        .with_hint("connect to the primary, or run PROMOTE on this replica to make it writable")
}

/// An explicit transaction block (`BEGIN` … `COMMIT`).
struct Block {
    /// `now()` for the whole block: the time of BEGIN.
    start_us: i64,
    /// Taken at the first statement that reads or writes; `None` before it and after a failure.
    txn: Option<Txn>,
    failed: bool,
    /// `BEGIN READ ONLY`.
    read_only: bool,
}

/// One parsed statement.
enum Parsed<'a> {
    Admin(admin::AdminStatement),
    Bulk(bulk::BulkInsert<'a>),
    Sql(Box<ast::Statement>),
}

/// Maps a parser error to a `syntax_error` with the position the parser names.
fn syntax_error(e: ParserError) -> SqlError {
    let text = match e {
        ParserError::TokenizerError(m) | ParserError::ParserError(m) => m,
        ParserError::RecursionLimitExceeded => {
            return SqlError::new(ErrorCode::ProgramLimitExceeded, "statement is nested too deeply");
        }
    };
    let mut message = text.as_str();
    let mut position = None;
    if let Some(at) = text.rfind(" at Line: ") {
        let tail = &text[at + " at Line: ".len()..];
        if let Some((line, column)) = tail.split_once(", Column: ") {
            if let (Ok(line), Ok(column)) = (line.trim().parse(), column.trim().parse()) {
                position = Some(Position { line, column });
                message = &text[..at];
            }
        }
    }
    SqlError {
        code: ErrorCode::SyntaxError,
        message: format!("syntax error: {message}"),
        hint: None,
        position,
    }
}

fn parse(text: &str) -> Result<Parsed<'_>, SqlError> {
    if let Some(stmt) = admin::parse(text) {
        return stmt.map(Parsed::Admin);
    }
    if let Some(b) = bulk::parse(text) {
        return Ok(Parsed::Bulk(b));
    }
    if split::expression_depth_bound(text) > EXPR_OPERATORS_MAX {
        return Err(SqlError::new(
            ErrorCode::ProgramLimitExceeded,
            format!("statement has an expression with more than {EXPR_OPERATORS_MAX} operators in a chain"),
        )
        .with_hint("write a long OR of equalities as IN (…), or split the statement"));
    }
    let mut stmts = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(text)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| {
            let mut e = syntax_error(e);
            // "found: EOF" comes without a position: it is the end of the text.
            if e.position.is_none() && e.code == ErrorCode::SyntaxError {
                let line = 1 + text.matches('\n').count();
                let column = 1 + text.rsplit('\n').next().map_or(0, |l| l.chars().count());
                e.position = Some(Position {
                    line: u32::try_from(line).unwrap_or(u32::MAX),
                    column: u32::try_from(column).unwrap_or(u32::MAX),
                });
            }
            e
        })?;
    match stmts.len() {
        1 => Ok(Parsed::Sql(Box::new(stmts.remove(0)))),
        0 => Err(SqlError::new(ErrorCode::SyntaxError, "empty statement")),
        _ => Err(SqlError::new(ErrorCode::SyntaxError, "expected one statement")),
    }
}

fn unsupported(what: impl std::fmt::Display) -> SqlError {
    SqlError::new(ErrorCode::FeatureNotSupported, format!("{what} is not supported"))
}

fn command(tag: String, rows_affected: u64, commit: Option<CommitInfo>) -> StatementResult {
    StatementResult::Command { tag, rows_affected, commit }
}

/// A client session on one database.
///
/// Invariants:
/// - Outside a block no transaction state survives a statement.
/// - A failed block holds no snapshot or writes (they are dropped at the failure).
pub struct Session {
    db: Arc<Database>,
    block: Option<Block>,
    settings: Settings,
    stats: SessionStats,
    /// Set for sessions of read-only roles: every write is refused, whatever the database.
    read_only: bool,
    /// The server's replication state and control; `None` for the engine on its own.
    host: Option<Arc<dyn ReplicationHost>>,
}

// A server moves sessions between threads.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Session>();
};

impl Session {
    /// A session in autocommit mode with default settings.
    pub fn new(db: Arc<Database>) -> Session {
        Session {
            db,
            block: None,
            settings: Settings::default(),
            stats: SessionStats::default(),
            read_only: false,
            host: None,
        }
    }

    /// Gives this session the server's replication state and control, which answers
    /// `SHOW REPLICATION`, `SHOW RECOVERY` and `CREATE`/`DROP REPLICATION SLOT` (without a host
    /// they are `feature_not_supported`).
    pub fn set_host(&mut self, host: Arc<dyn ReplicationHost>) {
        self.host = Some(host);
    }

    /// Makes this session refuse every write and administrative change with `read_only`
    /// (the server does this for sessions of the `readonly` and `replication` roles).
    pub fn set_read_only(&mut self, read_only: bool) {
        self.read_only = read_only;
    }

    /// Runs every statement in `sql` in order; stops at the first error, which is then the last
    /// element. Statements are parsed one at a time (see the module docs of [`crate::sql`]).
    /// Text without statements (empty, or only comments) gives an empty vector.
    pub fn execute(&mut self, sql: &str) -> Vec<Result<StatementResult, SqlError>> {
        if sql.len() > STATEMENT_LEN_MAX {
            self.fail_block();
            return vec![Err(SqlError::new(
                ErrorCode::ProgramLimitExceeded,
                format!(
                    "statement text of {} bytes is longer than the limit of {STATEMENT_LEN_MAX} bytes",
                    sql.len()
                ),
            ))];
        }
        let mut results = Vec::new();
        for piece in split_statements(sql) {
            let r = self.run(piece.text).map_err(|mut e| {
                e.position = e.position.map(|p| piece.translate(p));
                e
            });
            let stop = r.is_err();
            results.push(r);
            if stop {
                break;
            }
        }
        results
    }

    /// Whether a `BEGIN` block is open (possibly failed).
    pub fn in_transaction(&self) -> bool {
        self.block.is_some()
    }

    /// Whether the open block failed and only ROLLBACK (or COMMIT) is accepted.
    pub fn transaction_failed(&self) -> bool {
        self.block.as_ref().is_some_and(|b| b.failed)
    }

    /// The current value of a session setting set with SET (or its default), e.g.
    /// `setting("synchronous_commit")`; `None` for an unknown name.
    pub fn setting(&self, name: &str) -> Option<&str> {
        self.settings.get(name)
    }

    /// Where this session's commits go once durable: to its host's relay when its
    /// `synchronous_commit` level makes them wait for synchronous standbys (the commit then
    /// returns once they confirmed it), otherwise straight back.
    fn after_commit(&self) -> AfterCommit {
        let level = self.settings.get("synchronous_commit").unwrap_or("local");
        match self.host.as_ref().and_then(|host| host.commit_relay(level)) {
            Some(relay) => AfterCommit::Relayed(relay),
            None => AfterCommit::Returns,
        }
    }

    /// Counters of how this session's statements read tables.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    fn fail_block(&mut self) {
        if let Some(b) = &mut self.block {
            b.failed = true;
            b.txn = None;
        }
    }

    fn run(&mut self, text: &str) -> Result<StatementResult, SqlError> {
        let parsed = match parse(text) {
            Ok(p) => p,
            Err(e) => {
                self.fail_block();
                return Err(e);
            }
        };
        // Transaction control is accepted in a failed block.
        if let Parsed::Sql(stmt) = &parsed {
            match &**stmt {
                ast::Statement::StartTransaction { modes, statements, exception, .. } => {
                    return self.begin(modes, statements.is_empty() && exception.is_none());
                }
                ast::Statement::Commit { chain: false, .. } => return self.commit(),
                ast::Statement::Rollback { chain: false, savepoint: None } => {
                    self.block = None;
                    return Ok(StatementResult::tag("ROLLBACK"));
                }
                _ => {}
            }
        }
        if self.transaction_failed() {
            return Err(SqlError::new(
                ErrorCode::InFailedTransaction,
                "current transaction is aborted, commands ignored until end of transaction block",
            )
            .with_hint("run ROLLBACK"));
        }
        let r = self.dispatch(parsed);
        if r.is_err() {
            self.fail_block();
        }
        r
    }

    fn begin(&mut self, modes: &[ast::TransactionMode], plain: bool) -> Result<StatementResult, SqlError> {
        if self.block.is_some() {
            // PostgreSQL only warns; the open block carries on either way.
            return Err(SqlError::new(
                ErrorCode::InvalidTransactionState,
                "there is already a transaction in progress",
            )
            .with_hint("COMMIT or ROLLBACK it first; transactions do not nest"));
        }
        if !plain {
            return Err(unsupported("BEGIN … END blocks"));
        }
        let mut read_only = false;
        for m in modes {
            match m {
                ast::TransactionMode::AccessMode(ast::TransactionAccessMode::ReadOnly) => read_only = true,
                ast::TransactionMode::AccessMode(ast::TransactionAccessMode::ReadWrite) => read_only = false,
                // Snapshot isolation is stronger than READ COMMITTED, so those run as it does.
                ast::TransactionMode::IsolationLevel(
                    ast::TransactionIsolationLevel::RepeatableRead
                    | ast::TransactionIsolationLevel::Snapshot
                    | ast::TransactionIsolationLevel::ReadCommitted
                    | ast::TransactionIsolationLevel::ReadUncommitted,
                ) => {}
                ast::TransactionMode::IsolationLevel(level) => {
                    return Err(unsupported(format!("ISOLATION LEVEL {level}"))
                        .with_hint("transactions run under snapshot isolation (REPEATABLE READ)"))
                }
            }
        }
        self.block = Some(Block { start_us: now_us(), txn: None, failed: false, read_only });
        Ok(StatementResult::tag("BEGIN"))
    }

    fn commit(&mut self) -> Result<StatementResult, SqlError> {
        // COMMIT outside a block is a no-op (PostgreSQL warns "there is no transaction in progress").
        let Some(block) = self.block.take() else { return Ok(StatementResult::tag("COMMIT")) };
        if block.failed {
            return Ok(StatementResult::tag("ROLLBACK"));
        }
        match block.txn {
            Some(txn) if txn.has_writes() => {
                let after = self.after_commit();
                let info = self.db.commit_then(txn.into_write_set(), after).map_err(|e| e.to_sql_error())?;
                Ok(command("COMMIT".into(), 0, Some(info)))
            }
            _ => Ok(StatementResult::tag("COMMIT")),
        }
    }

    /// Runs `f` in the current transaction: the block's, or a new one committed afterwards.
    /// `write` names the statement when it changes data (for read-only refusals).
    fn in_txn<T>(
        &mut self,
        write: Option<&str>,
        f: impl FnOnce(&mut Txn, &Env<'_>, &mut SessionStats) -> Result<T, SqlError>,
    ) -> Result<(T, Option<CommitInfo>), SqlError> {
        let db = &self.db;
        if let Some(what) = write {
            if db.is_read_only() {
                return Err(read_only_error(what));
            }
            if self.read_only {
                return Err(role_read_only_error(what));
            }
            if self.block.as_ref().is_some_and(|b| b.read_only) {
                return Err(SqlError::new(
                    ErrorCode::ReadOnly,
                    format!("cannot execute {what} in a read-only transaction"),
                ));
            }
        }
        let status = || db.status();
        match &mut self.block {
            Some(block) => {
                let start_us = block.start_us;
                let txn = block.txn.get_or_insert_with(|| Txn::new(db.read_view(), start_us));
                let env = Env::new(start_us, &status);
                Ok((f(txn, &env, &mut self.stats)?, None))
            }
            None => {
                let mut txn = Txn::new(db.read_view(), now_us());
                let env = Env::new(txn.start_us, &status);
                let out = f(&mut txn, &env, &mut self.stats)?;
                let info = if txn.has_writes() {
                    let after = self.after_commit();
                    Some(db.commit_then(txn.into_write_set(), after).map_err(|e| e.to_sql_error())?)
                } else {
                    None
                };
                Ok((out, info))
            }
        }
    }

    fn dispatch(&mut self, parsed: Parsed<'_>) -> Result<StatementResult, SqlError> {
        let stmt = match parsed {
            Parsed::Admin(a) => {
                return admin::execute(&self.db, &mut self.settings, &a, self.read_only, self.host.as_deref())
            }
            Parsed::Bulk(b) => {
                let (n, info) = self.in_txn(Some("INSERT"), |txn, _, _| bulk::execute(txn, &b))?;
                return Ok(command(format!("INSERT 0 {n}"), n, info));
            }
            Parsed::Sql(stmt) => stmt,
        };
        let db = Arc::clone(&self.db);
        let allocate_id = move || db.allocate_table_id();
        match &*stmt {
            ast::Statement::Query(q) => {
                let ((columns, rows), _) = self.in_txn(None, |txn, env, stats| {
                    let plan = plan::plan_select(txn.catalog(), env, q)?;
                    exec::select(Some(txn), &plan, stats)
                })?;
                Ok(StatementResult::Rows { columns, rows })
            }
            ast::Statement::Insert(ins) => {
                let (n, info) = self.in_txn(Some("INSERT"), |txn, env, stats| {
                    let plan = plan::plan_insert(txn.catalog(), env, ins)?;
                    exec::insert(txn, &plan, stats)
                })?;
                Ok(command(format!("INSERT 0 {n}"), n, info))
            }
            ast::Statement::Update(up) => {
                let (n, info) = self.in_txn(Some("UPDATE"), |txn, env, stats| {
                    let plan = plan::plan_update(txn.catalog(), env, up)?;
                    exec::update(txn, &plan, stats)
                })?;
                Ok(command(format!("UPDATE {n}"), n, info))
            }
            ast::Statement::Delete(del) => {
                let (n, info) = self.in_txn(Some("DELETE"), |txn, env, stats| {
                    let plan = plan::plan_delete(txn.catalog(), env, del)?;
                    exec::delete(txn, &plan, stats)
                })?;
                Ok(command(format!("DELETE {n}"), n, info))
            }
            ast::Statement::CreateTable(ct) => {
                let (_, info) = self.in_txn(Some("CREATE TABLE"), |txn, _, _| ddl::create_table(txn, ct, &allocate_id))?;
                Ok(command("CREATE TABLE".into(), 0, info))
            }
            ast::Statement::Drop { object_type: ast::ObjectType::Table, if_exists, names, table: None, temporary: false, .. } => {
                let (_, info) = self.in_txn(Some("DROP TABLE"), |txn, _, _| ddl::drop_tables(txn, names, *if_exists))?;
                Ok(command("DROP TABLE".into(), 0, info))
            }
            ast::Statement::Truncate(t) => {
                let (_, info) = self.in_txn(Some("TRUNCATE"), |txn, _, _| ddl::truncate_tables(txn, t, &allocate_id))?;
                Ok(command("TRUNCATE TABLE".into(), 0, info))
            }
            ast::Statement::Explain { statement, analyze: false, .. } => {
                let lines = self.in_txn(None, |txn, env, _| explain(txn, env, statement))?.0;
                Ok(StatementResult::Rows {
                    columns: vec![Column::new("QUERY PLAN", DataType::Text)],
                    rows: lines.into_iter().map(|l| vec![Value::Text(l)]).collect(),
                })
            }
            ast::Statement::Set(_) => Err(unsupported("SET TRANSACTION")
                .with_hint("give the mode to BEGIN instead, e.g. BEGIN READ ONLY; transactions run under snapshot isolation")),
            ast::Statement::Savepoint { .. } | ast::Statement::ReleaseSavepoint { .. } | ast::Statement::Rollback { .. } => {
                Err(unsupported("savepoints"))
            }
            ast::Statement::Commit { .. } => Err(unsupported("COMMIT AND CHAIN")),
            other => {
                let text = other.to_string();
                let head: String = text.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
                Err(unsupported(format!("the statement {head}…")).with_hint(
                    "statements are CREATE/DROP/TRUNCATE TABLE, INSERT, UPDATE, DELETE, SELECT, BEGIN, COMMIT, \
                     ROLLBACK and the administration commands (CHECKPOINT, SHOW STATUS, …)",
                ))
            }
        }
    }
}

fn bound_text(b: &Bound<crate::value::Key>, lower: bool) -> Option<String> {
    match b {
        Bound::Unbounded => None,
        Bound::Included(k) => Some(format!("{} {k}", if lower { ">=" } else { "<=" })),
        Bound::Excluded(k) => Some(format!("{} {k}", if lower { ">" } else { "<" })),
    }
}

fn access_text(def: &crate::schema::TableDef, access: &Access) -> String {
    let key = &def.columns[def.pk].name;
    match access {
        Access::Full => format!("Full scan of {}", def.name),
        Access::Empty => format!("Nothing to read from {} (the condition is never true)", def.name),
        Access::Points(keys) => {
            let shown: Vec<String> = keys.iter().take(10).map(ToString::to_string).collect();
            let more = if keys.len() > 10 { ", …" } else { "" };
            format!("Point lookup of {} by {key} in ({}{more})", def.name, shown.join(", "))
        }
        Access::Range(l, u) => {
            let parts: Vec<String> = [bound_text(l, true), bound_text(u, false)]
                .into_iter()
                .flatten()
                .map(|b| format!("{key} {b}"))
                .collect();
            format!("Range scan of {} where {}", def.name, parts.join(" AND "))
        }
    }
}

/// The plan of a statement as text lines: how it reads, filters, aggregates, sorts and limits.
fn explain(txn: &Txn, env: &Env<'_>, stmt: &ast::Statement) -> Result<Vec<String>, SqlError> {
    let mut lines = Vec::new();
    let filter_line = |sel: &Option<ast::Expr>, lines: &mut Vec<String>| {
        if let Some(w) = sel {
            lines.push(format!("  Filter: {w}"));
        }
    };
    match stmt {
        ast::Statement::Query(q) => {
            let plan = plan::plan_select(txn.catalog(), env, q)?;
            if plan.limit.is_some() || plan.offset > 0 {
                lines.push(format!(
                    "Limit{}{}",
                    plan.limit.map(|l| format!(" {l}")).unwrap_or_default(),
                    if plan.offset > 0 { format!(" offset {}", plan.offset) } else { String::new() }
                ));
            }
            if !plan.order.is_empty() {
                lines.push(format!(
                    "Sort ({} key{})",
                    plan.order.len(),
                    if plan.order.len() == 1 { "" } else { "s" }
                ));
            }
            if plan.distinct {
                lines.push("Distinct".into());
            }
            if let Some(agg) = &plan.aggregate {
                lines.push(format!(
                    "Aggregate ({} group key(s), {} aggregate(s))",
                    agg.groups.len(),
                    agg.aggs.len()
                ));
            }
            match &plan.source {
                Some((def, access)) => lines.push(access_text(def, access)),
                None => lines.push("One row (no table)".into()),
            }
            if let ast::SetExpr::Select(s) = &*q.body {
                filter_line(&s.selection, &mut lines);
            }
        }
        ast::Statement::Update(up) => {
            let plan = plan::plan_update(txn.catalog(), env, up)?;
            lines.push(format!("Update {}", plan.table.name));
            lines.push(format!("  {}", access_text(&plan.table, &plan.access)));
            filter_line(&up.selection, &mut lines);
        }
        ast::Statement::Delete(del) => {
            let plan = plan::plan_delete(txn.catalog(), env, del)?;
            lines.push(format!("Delete from {}", plan.table.name));
            lines.push(format!("  {}", access_text(&plan.table, &plan.access)));
            filter_line(&del.selection, &mut lines);
        }
        _ => return Err(unsupported("EXPLAIN of this statement")),
    }
    Ok(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parser_errors_carry_positions() {
        let e = match parse("SELECT * FROM") {
            Err(e) => e,
            Ok(_) => panic!("parsed"),
        };
        assert_eq!(e.code, ErrorCode::SyntaxError);
        assert!(e.position.is_some(), "{e:?}");
        assert!(!e.message.contains("Line:"), "{}", e.message);
        let e = match parse("SELECT *\n FROM t WHERE )") {
            Err(e) => e,
            Ok(_) => panic!("parsed"),
        };
        assert_eq!(e.position, Some(Position { line: 2, column: 15 }), "{e:?}");
        assert_eq!(e.message, "syntax error: Expected: an expression, found: )");
        let e = match parse("SELECT 'abc") {
            Err(e) => e,
            Ok(_) => panic!("parsed"),
        };
        assert_eq!(e.code, ErrorCode::SyntaxError);
        for deep in [
            format!("SELECT {}1{}", "(".repeat(500), ")".repeat(500)),
            format!("SELECT 1{}", "+1".repeat(200_000)),
            format!("SELECT * FROM t WHERE {}", vec!["id = 1"; 100_000].join(" OR ")),
        ] {
            let e = match parse(&deep) {
                Err(e) => e,
                Ok(_) => panic!("parsed"),
            };
            assert_eq!(e.code, ErrorCode::ProgramLimitExceeded, "nesting is bounded: {e:?}");
        }
    }
}
