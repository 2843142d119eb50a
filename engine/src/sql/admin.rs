//! Administration statements, hand-parsed before `sqlparser` sees the text: `CHECKPOINT`,
//! `CREATE RESTORE POINT`, `SHOW …`, `SET`/`RESET`, replication (`SHOW REPLICATION`,
//! `SHOW RECOVERY`, `CREATE REPLICATION SLOT`, `DROP REPLICATION SLOT`) and the replica
//! controls (`PAUSE REPLAY`, `RESUME REPLAY`, `PROMOTE`).
//!
//! Every administration command is one [`AdminStatement`] variant, parsed here and executed by
//! [`execute`]. Replication statements are answered by the session's
//! [`ReplicationHost`] (the server's); without one they are `feature_not_supported`. The replay
//! controls parse fully today (so a typo is a syntax error, not "unsupported") and answer
//! `feature_not_supported` until point-in-time recovery exists.

use super::host::{self, ReplicationHost};
use super::{Column, StatementResult};
use crate::db::Database;
use crate::error::{ErrorCode, SqlError};
use crate::value::{format_timestamp, parse_timestamp, DataType, Value};
use hindsight_protocol::{Lsn, TxId};
use std::collections::BTreeMap;

/// A recovery target for `RESUME REPLAY UNTIL …`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayTarget {
    /// `UNTIL TIME '…'`: microseconds since the epoch.
    Time(i64),
    /// `UNTIL LSN 'X/Y'`.
    Lsn(Lsn),
    /// `UNTIL XID n`.
    Xid(TxId),
    /// `UNTIL RESTORE POINT 'name'`.
    RestorePoint(String),
}

/// An administration statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminStatement {
    /// `CHECKPOINT`: take a snapshot now.
    Checkpoint,
    /// `CREATE RESTORE POINT 'name'`.
    CreateRestorePoint(String),
    /// `SHOW STATUS`.
    ShowStatus,
    /// `SHOW TIMELINES`.
    ShowTimelines,
    /// `SHOW REPLICATION`.
    ShowReplication,
    /// `SHOW RECOVERY`.
    ShowRecovery,
    /// `CREATE REPLICATION SLOT name`; the name is checked and folded to lower case.
    CreateReplicationSlot(String),
    /// `DROP REPLICATION SLOT name`; the name is checked and folded to lower case.
    DropReplicationSlot(String),
    /// `PAUSE REPLAY`.
    PauseReplay,
    /// `RESUME REPLAY [UNTIL target [EXCLUSIVE]]`.
    ResumeReplay {
        /// The new target, if any.
        until: Option<ReplayTarget>,
        /// Stop just before the target instead of just after it.
        exclusive: bool,
    },
    /// `PROMOTE`.
    Promote,
    /// `SET name = value`, `SET name TO value`; `None` for `DEFAULT`.
    Set {
        /// The setting, lower-cased.
        name: String,
        /// The new value, or `None` to restore the default.
        value: Option<String>,
    },
    /// `SHOW name` (`SHOW ALL` lists every setting).
    Show(String),
    /// `RESET name` / `RESET ALL`.
    Reset(String),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Sym(char),
}

fn syntax(message: impl Into<String>) -> SqlError {
    SqlError::new(ErrorCode::SyntaxError, message)
}

fn tokenize(text: &str) -> Result<Vec<Tok>, SqlError> {
    let mut toks = Vec::new();
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '\'' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some((_, '\'')) if chars.peek().map(|p| p.1) == Some('\'') => {
                            chars.next();
                            s.push('\'');
                        }
                        Some((_, '\'')) => break,
                        Some((_, ch)) => s.push(ch),
                        None => return Err(syntax("unterminated quoted string")),
                    }
                }
                toks.push(Tok::Str(s));
            }
            '=' | ',' | '(' | ')' => toks.push(Tok::Sym(c)),
            '-' if text[i..].starts_with("--") => {
                // A trailing comment: skip to the end of the line.
                while chars.next_if(|p| p.1 != '\n').is_some() {}
            }
            _ => {
                let mut end = text.len();
                while let Some(&(j, ch)) = chars.peek() {
                    if ch.is_whitespace() || matches!(ch, '\'' | '=' | ',' | '(' | ')') {
                        end = j;
                        break;
                    }
                    chars.next();
                }
                toks.push(Tok::Word(text[i..end].to_string()));
            }
        }
    }
    Ok(toks)
}

struct Cursor {
    toks: Vec<Tok>,
    pos: usize,
}

impl Cursor {
    fn keyword(&mut self, kw: &str) -> bool {
        match self.toks.get(self.pos) {
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw) => {
                self.pos += 1;
                true
            }
            _ => false,
        }
    }

    fn expect(&mut self, kw: &str, context: &str) -> Result<(), SqlError> {
        if self.keyword(kw) {
            Ok(())
        } else {
            Err(syntax(format!("expected {kw} in {context}")))
        }
    }

    fn string(&mut self, what: &str) -> Result<String, SqlError> {
        match self.toks.get(self.pos) {
            Some(Tok::Str(s)) => {
                self.pos += 1;
                Ok(s.clone())
            }
            _ => Err(syntax(format!("expected a quoted {what}"))),
        }
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn end(&self, statement: &str) -> Result<(), SqlError> {
        match self.toks.get(self.pos) {
            None => Ok(()),
            Some(t) => Err(syntax(format!(
                "unexpected {} at the end of {statement}",
                match t {
                    Tok::Word(w) => w.clone(),
                    Tok::Str(s) => format!("'{s}'"),
                    Tok::Sym(c) => c.to_string(),
                }
            ))),
        }
    }
}

/// The slot name of `CREATE`/`DROP REPLICATION SLOT`, bare or quoted, checked by
/// [`host::slot_name`].
fn slot_name(c: &mut Cursor, statement: &str) -> Result<String, SqlError> {
    match c.next() {
        Some(Tok::Word(w) | Tok::Str(w)) => host::slot_name(&w),
        _ => Err(syntax(format!("expected a slot name after {statement}"))
            .with_hint(format!("e.g. {statement} replica_1"))),
    }
}

fn setting_name(c: &mut Cursor, statement: &str) -> Result<String, SqlError> {
    match c.next() {
        Some(Tok::Word(w)) => Ok(w.to_lowercase()),
        _ => Err(syntax(format!("expected a setting name after {statement}"))),
    }
}

/// Parses `text` (one statement, without its `;`) if it is an administration statement;
/// `None` hands it to the SQL parser.
pub(crate) fn parse(text: &str) -> Option<Result<AdminStatement, SqlError>> {
    let first = text.split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or("").to_ascii_uppercase();
    let second_is = |kw: &str| {
        text.split_whitespace().nth(1).is_some_and(|w| w.trim_end_matches(';').eq_ignore_ascii_case(kw))
    };
    let admin = match first.as_str() {
        "CHECKPOINT" | "SHOW" | "PAUSE" | "RESUME" | "PROMOTE" | "RESET" => true,
        // SET is ours except SET TRANSACTION …, which the SQL path refuses with a clear message.
        "SET" => !second_is("TRANSACTION"),
        "CREATE" => second_is("RESTORE") || second_is("REPLICATION"),
        // DROP TABLE and the rest belong to the SQL parser.
        "DROP" => second_is("REPLICATION"),
        _ => false,
    };
    if !admin {
        return None;
    }
    Some(parse_admin(text))
}

fn parse_admin(text: &str) -> Result<AdminStatement, SqlError> {
    let mut c = Cursor { toks: tokenize(text)?, pos: 0 };
    let stmt = if c.keyword("CHECKPOINT") {
        c.end("CHECKPOINT")?;
        AdminStatement::Checkpoint
    } else if c.keyword("CREATE") {
        if c.keyword("REPLICATION") {
            c.expect("SLOT", "CREATE REPLICATION SLOT")?;
            let name = slot_name(&mut c, "CREATE REPLICATION SLOT")?;
            c.end("CREATE REPLICATION SLOT")?;
            AdminStatement::CreateReplicationSlot(name)
        } else {
            c.expect("RESTORE", "CREATE RESTORE POINT")?;
            c.expect("POINT", "CREATE RESTORE POINT")?;
            let name = c.string("restore point name, e.g. CREATE RESTORE POINT 'before_migration'")?;
            c.end("CREATE RESTORE POINT")?;
            AdminStatement::CreateRestorePoint(name)
        }
    } else if c.keyword("DROP") {
        c.expect("REPLICATION", "DROP REPLICATION SLOT")?;
        c.expect("SLOT", "DROP REPLICATION SLOT")?;
        let name = slot_name(&mut c, "DROP REPLICATION SLOT")?;
        c.end("DROP REPLICATION SLOT")?;
        AdminStatement::DropReplicationSlot(name)
    } else if c.keyword("SHOW") {
        let name = setting_name(&mut c, "SHOW")?;
        c.end("SHOW")?;
        match name.as_str() {
            "status" => AdminStatement::ShowStatus,
            "timelines" => AdminStatement::ShowTimelines,
            "replication" => AdminStatement::ShowReplication,
            "recovery" => AdminStatement::ShowRecovery,
            _ => AdminStatement::Show(name),
        }
    } else if c.keyword("PAUSE") {
        c.expect("REPLAY", "PAUSE REPLAY")?;
        c.end("PAUSE REPLAY")?;
        AdminStatement::PauseReplay
    } else if c.keyword("RESUME") {
        c.expect("REPLAY", "RESUME REPLAY")?;
        let mut until = None;
        let mut exclusive = false;
        if c.keyword("UNTIL") {
            until = Some(if c.keyword("TIME") {
                let t = c.string("time, e.g. '2026-11-21 13:25:27+00'")?;
                ReplayTarget::Time(parse_timestamp(&t).ok_or_else(|| {
                    SqlError::new(ErrorCode::InvalidParameterValue, format!("invalid time '{t}'")).with_hint(
                        "times are RFC 3339, e.g. '2026-11-21T13:25:27.5Z' or '2026-11-21 13:25:27+01'",
                    )
                })?)
            } else if c.keyword("LSN") {
                let l = c.string("Lsn, e.g. '0/1A2B3C8'")?;
                ReplayTarget::Lsn(l.parse().map_err(|e: hindsight_protocol::ParseError| {
                    SqlError::new(ErrorCode::InvalidParameterValue, e.to_string())
                })?)
            } else if c.keyword("XID") {
                match c.next() {
                    Some(Tok::Word(w) | Tok::Str(w)) => {
                        ReplayTarget::Xid(w.parse().map_err(|e: hindsight_protocol::ParseError| {
                            SqlError::new(ErrorCode::InvalidParameterValue, e.to_string())
                        })?)
                    }
                    _ => return Err(syntax("expected a transaction id after XID")),
                }
            } else if c.keyword("RESTORE") {
                c.expect("POINT", "RESUME REPLAY UNTIL RESTORE POINT")?;
                ReplayTarget::RestorePoint(c.string("restore point name")?)
            } else {
                return Err(syntax("expected TIME, LSN, XID or RESTORE POINT after UNTIL"));
            });
            exclusive = c.keyword("EXCLUSIVE");
        }
        c.end("RESUME REPLAY")?;
        AdminStatement::ResumeReplay { until, exclusive }
    } else if c.keyword("PROMOTE") {
        c.end("PROMOTE")?;
        AdminStatement::Promote
    } else if c.keyword("RESET") {
        let name = setting_name(&mut c, "RESET")?;
        c.end("RESET")?;
        AdminStatement::Reset(name)
    } else if c.keyword("SET") {
        if c.keyword("LOCAL") {
            return Err(SqlError::new(ErrorCode::FeatureNotSupported, "SET LOCAL is not supported")
                .with_hint("use SET, which lasts for the session"));
        }
        c.keyword("SESSION");
        let name = setting_name(&mut c, "SET")?;
        if !(c.keyword("TO") || matches!(c.next(), Some(Tok::Sym('=')))) {
            return Err(syntax(format!("expected = or TO after SET {name}")));
        }
        let value = match c.next() {
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("DEFAULT") => None,
            Some(Tok::Word(w)) => Some(w),
            Some(Tok::Str(s)) => Some(s),
            _ => {
                return Err(syntax(format!("expected a value after SET {name} ="))
                    .with_hint("e.g. SET synchronous_commit = remote_apply"))
            }
        };
        c.end("SET")?;
        AdminStatement::Set { name, value }
    } else {
        return Err(syntax("not an administration statement"));
    };
    Ok(stmt)
}

/// One session setting.
struct SettingSpec {
    name: &'static str,
    default: &'static str,
    /// The accepted values (lower case), and what each is stored as.
    values: &'static [(&'static str, &'static str)],
    doc: &'static str,
}

/// The settings a session knows. `synchronous_commit` tells the server how long COMMIT waits:
/// `off` (not even for the local WAL flush), `local` (the local flush), `remote_write`,
/// `remote_flush` or `remote_apply` (also synchronous replicas). `on` is accepted as
/// PostgreSQL's name for `remote_flush`.
const SETTINGS: &[SettingSpec] = &[SettingSpec {
    name: "synchronous_commit",
    default: "local",
    values: &[
        ("off", "off"),
        ("local", "local"),
        ("remote_write", "remote_write"),
        ("remote_flush", "remote_flush"),
        ("on", "remote_flush"),
        ("remote_apply", "remote_apply"),
    ],
    doc: "how long COMMIT waits: off, local, remote_write, remote_flush or remote_apply",
}];

fn spec(name: &str) -> Result<&'static SettingSpec, SqlError> {
    SETTINGS.iter().find(|s| s.name == name).ok_or_else(|| {
        let known: Vec<&str> = SETTINGS.iter().map(|s| s.name).collect();
        SqlError::new(
            ErrorCode::InvalidParameterValue,
            format!("unrecognized configuration parameter \"{name}\""),
        )
        .with_hint(format!("the settings are: {}", known.join(", ")))
    })
}

/// A session's settings, each with its current value.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    values: BTreeMap<&'static str, String>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { values: SETTINGS.iter().map(|s| (s.name, s.default.to_string())).collect() }
    }
}

impl Settings {
    /// The current value of a setting.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// Sets a setting (`None` restores its default), checking the name and the value.
    pub fn set(&mut self, name: &str, value: Option<&str>) -> Result<(), SqlError> {
        let s = spec(name)?;
        let stored = match value {
            None => s.default,
            Some(v) => {
                let lower = v.to_ascii_lowercase();
                s.values
                    .iter()
                    .find(|(accepted, _)| *accepted == lower)
                    .map(|(_, stored)| *stored)
                    .ok_or_else(|| {
                        let accepted: Vec<&str> = s.values.iter().map(|(a, _)| *a).collect();
                        SqlError::new(
                            ErrorCode::InvalidParameterValue,
                            format!("invalid value for parameter \"{name}\": \"{v}\""),
                        )
                        .with_hint(format!("available values: {}", accepted.join(", ")))
                    })?
            }
        };
        self.values.insert(s.name, stored.to_string());
        Ok(())
    }
}

/// A replication statement in a session without a [`ReplicationHost`].
fn no_host(what: &str) -> SqlError {
    SqlError::new(ErrorCode::FeatureNotSupported, format!("{what} is not available without a server"))
        .with_hint("replication is run by a server: connect to a `hindsight primary` or `hindsight replica`")
}

/// A replay control, which needs point-in-time recovery.
fn replay_feature(what: &str) -> SqlError {
    SqlError::new(ErrorCode::FeatureNotSupported, format!("{what} is not available on this server yet"))
        .with_hint(
            "replay control on a replica (PAUSE REPLAY, RESUME REPLAY, PROMOTE) arrives with point-in-time recovery",
        )
}

fn text(s: impl Into<String>) -> Value {
    Value::Text(s.into())
}

/// Runs an administration statement.
pub(crate) fn execute(
    db: &Database,
    settings: &mut Settings,
    stmt: &AdminStatement,
    session_read_only: bool,
    host: Option<&dyn ReplicationHost>,
) -> Result<StatementResult, SqlError> {
    let host = |what: &str| host.ok_or_else(|| no_host(what));
    let read_only = |what: &str| -> Result<(), SqlError> {
        if db.is_read_only() {
            Err(super::session::read_only_error(what))
        } else if session_read_only {
            Err(super::session::role_read_only_error(what))
        } else {
            Ok(())
        }
    };
    Ok(match stmt {
        AdminStatement::Checkpoint => {
            // A replica may checkpoint (a restart point); a read-only role may not.
            if session_read_only {
                return Err(super::session::role_read_only_error("CHECKPOINT"));
            }
            db.checkpoint().map_err(|e| e.to_sql_error())?;
            StatementResult::tag("CHECKPOINT")
        }
        AdminStatement::CreateRestorePoint(name) => {
            read_only("CREATE RESTORE POINT")?;
            let lsn = db.create_restore_point(name).map_err(|e| e.to_sql_error())?;
            StatementResult::Rows {
                columns: vec![Column::new("lsn", DataType::Text)],
                rows: vec![vec![text(lsn.to_string())]],
            }
        }
        AdminStatement::ShowStatus => {
            let s = db.status();
            let last_commit = if s.last_txid == TxId::ZERO {
                Value::Null
            } else {
                text(format_timestamp(s.last_commit_time_us))
            };
            let rows = vec![
                ("role", text(s.role)),
                ("system_id", text(format!("{:016X}", s.system_id))),
                ("timeline", text(s.timeline.to_string())),
                ("current_lsn", text(s.visible_lsn.to_string())),
                ("insert_lsn", text(s.insert_lsn.to_string())),
                ("last_committed_txid", text(s.last_txid.to_string())),
                ("last_commit_time", last_commit),
                ("checkpoint_lsn", text(s.checkpoint_lsn.to_string())),
                ("digest", text(format!("{:016x}", s.digest))),
                ("tables", text(s.tables.to_string())),
                ("rows", text(s.rows.to_string())),
            ];
            StatementResult::Rows {
                columns: vec![Column::new("name", DataType::Text), Column::new("value", DataType::Text)],
                rows: rows.into_iter().map(|(n, v)| vec![text(n), v]).collect(),
            }
        }
        AdminStatement::ShowTimelines => {
            // Only the current timeline until promotion (and its history files) exist.
            let s = db.status();
            StatementResult::Rows {
                columns: vec![
                    Column::new("timeline", DataType::BigInt),
                    Column::new("parent", DataType::BigInt),
                    Column::new("switch_lsn", DataType::Text),
                    Column::new("reason", DataType::Text),
                ],
                rows: vec![vec![Value::Int(i64::from(s.timeline.0)), Value::Null, Value::Null, Value::Null]],
            }
        }
        AdminStatement::ShowReplication => host("SHOW REPLICATION")?.show_replication()?,
        AdminStatement::ShowRecovery => host("SHOW RECOVERY")?.show_recovery()?,
        AdminStatement::CreateReplicationSlot(name) => {
            // A replica may create slots, for replicas that stream from it (cascading); a
            // read-only role may not.
            if session_read_only {
                return Err(super::session::role_read_only_error("CREATE REPLICATION SLOT"));
            }
            host("CREATE REPLICATION SLOT")?.create_replication_slot(name)?
        }
        AdminStatement::DropReplicationSlot(name) => {
            if session_read_only {
                return Err(super::session::role_read_only_error("DROP REPLICATION SLOT"));
            }
            host("DROP REPLICATION SLOT")?.drop_replication_slot(name)?
        }
        AdminStatement::PauseReplay => return Err(replay_feature("PAUSE REPLAY")),
        AdminStatement::ResumeReplay { .. } => return Err(replay_feature("RESUME REPLAY")),
        AdminStatement::Promote => return Err(replay_feature("PROMOTE")),
        AdminStatement::Set { name, value } => {
            settings.set(name, value.as_deref())?;
            StatementResult::tag("SET")
        }
        AdminStatement::Reset(name) => {
            if name == "all" {
                *settings = Settings::default();
            } else {
                settings.set(name, None)?;
            }
            StatementResult::tag("RESET")
        }
        AdminStatement::Show(name) if name == "all" => StatementResult::Rows {
            columns: vec![
                Column::new("name", DataType::Text),
                Column::new("setting", DataType::Text),
                Column::new("description", DataType::Text),
            ],
            rows: SETTINGS
                .iter()
                .map(|s| vec![text(s.name), text(settings.get(s.name).unwrap_or(s.default)), text(s.doc)])
                .collect(),
        },
        AdminStatement::Show(name) => {
            let s = spec(name)?;
            StatementResult::Rows {
                columns: vec![Column::new(s.name, DataType::Text)],
                rows: vec![vec![text(settings.get(s.name).unwrap_or(s.default))]],
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> Result<AdminStatement, SqlError> {
        parse(text).expect("an administration statement")
    }

    #[test]
    fn parses_every_statement() {
        assert_eq!(p("checkpoint").unwrap(), AdminStatement::Checkpoint);
        assert_eq!(
            p("CREATE RESTORE POINT 'it''s'").unwrap(),
            AdminStatement::CreateRestorePoint("it's".into())
        );
        assert_eq!(p("show Status").unwrap(), AdminStatement::ShowStatus);
        assert_eq!(p("SHOW TIMELINES").unwrap(), AdminStatement::ShowTimelines);
        assert_eq!(p("SHOW REPLICATION").unwrap(), AdminStatement::ShowReplication);
        assert_eq!(p("SHOW RECOVERY -- where are we").unwrap(), AdminStatement::ShowRecovery);
        assert_eq!(p("PAUSE REPLAY").unwrap(), AdminStatement::PauseReplay);
        assert_eq!(p("PROMOTE").unwrap(), AdminStatement::Promote);
        assert_eq!(
            p("RESUME REPLAY").unwrap(),
            AdminStatement::ResumeReplay { until: None, exclusive: false }
        );
        assert_eq!(
            p("RESUME REPLAY UNTIL LSN '0/1A2B3C8' EXCLUSIVE").unwrap(),
            AdminStatement::ResumeReplay { until: Some(ReplayTarget::Lsn(Lsn(0x1A2B3C8))), exclusive: true }
        );
        assert_eq!(
            p("resume replay until xid 42").unwrap(),
            AdminStatement::ResumeReplay { until: Some(ReplayTarget::Xid(TxId(42))), exclusive: false }
        );
        assert_eq!(
            p("RESUME REPLAY UNTIL TIME '1970-01-01T00:00:01Z'").unwrap(),
            AdminStatement::ResumeReplay { until: Some(ReplayTarget::Time(1_000_000)), exclusive: false }
        );
        assert_eq!(
            p("RESUME REPLAY UNTIL RESTORE POINT 'x'").unwrap(),
            AdminStatement::ResumeReplay {
                until: Some(ReplayTarget::RestorePoint("x".into())),
                exclusive: false
            }
        );
        let set = |v: Option<&str>| AdminStatement::Set {
            name: "synchronous_commit".into(),
            value: v.map(String::from),
        };
        assert_eq!(p("SET synchronous_commit = off").unwrap(), set(Some("off")));
        assert_eq!(p("set Synchronous_Commit to 'remote_apply'").unwrap(), set(Some("remote_apply")));
        assert_eq!(p("SET SESSION synchronous_commit=DEFAULT").unwrap(), set(None));
        assert_eq!(p("SHOW synchronous_commit").unwrap(), AdminStatement::Show("synchronous_commit".into()));
        assert_eq!(p("RESET ALL").unwrap(), AdminStatement::Reset("all".into()));
        assert_eq!(
            p("create replication slot Replica_1").unwrap(),
            AdminStatement::CreateReplicationSlot("replica_1".into())
        );
        assert_eq!(
            p("CREATE REPLICATION SLOT 'quoted_name'").unwrap(),
            AdminStatement::CreateReplicationSlot("quoted_name".into())
        );
        assert_eq!(
            p("DROP REPLICATION SLOT r2 -- gone").unwrap(),
            AdminStatement::DropReplicationSlot("r2".into())
        );
    }

    #[test]
    fn slot_statements_are_checked() {
        assert!(parse("DROP TABLE t").is_none(), "DROP TABLE is the SQL parser's");
        assert!(parse("CREATE TABLE replication (id BIGINT PRIMARY KEY)").is_none());
        for (bad, code, says) in [
            ("CREATE REPLICATION SLOT", ErrorCode::SyntaxError, "expected a slot name"),
            ("CREATE REPLICATION", ErrorCode::SyntaxError, "expected SLOT"),
            ("CREATE REPLICATION SLOT a b", ErrorCode::SyntaxError, "unexpected b"),
            ("DROP REPLICATION SLOT", ErrorCode::SyntaxError, "expected a slot name"),
            ("DROP REPLICATION SLOTS x", ErrorCode::SyntaxError, "expected SLOT"),
            ("CREATE REPLICATION SLOT my-slot", ErrorCode::InvalidParameterValue, "\"my-slot\""),
            ("DROP REPLICATION SLOT ''", ErrorCode::InvalidParameterValue, "empty"),
        ] {
            let e = p(bad).unwrap_err();
            assert_eq!(e.code, code, "{bad}: {e}");
            assert!(e.message.contains(says), "{bad}: {e}");
        }
        let long = format!("CREATE REPLICATION SLOT {}", "x".repeat(64));
        assert_eq!(p(&long).unwrap_err().code, ErrorCode::InvalidParameterValue);
    }

    /// A host that records what it was asked.
    #[derive(Default)]
    struct FakeHost {
        calls: std::sync::Mutex<Vec<String>>,
    }

    impl ReplicationHost for FakeHost {
        fn show_replication(&self) -> Result<StatementResult, SqlError> {
            self.calls.lock().unwrap().push("show replication".into());
            Ok(StatementResult::Rows { columns: vec![Column::new("name", DataType::Text)], rows: vec![] })
        }
        fn show_recovery(&self) -> Result<StatementResult, SqlError> {
            Err(SqlError::new(ErrorCode::FeatureNotSupported, "not in recovery"))
        }
        fn create_replication_slot(&self, name: &str) -> Result<StatementResult, SqlError> {
            self.calls.lock().unwrap().push(format!("create {name}"));
            Ok(StatementResult::tag("CREATE REPLICATION SLOT"))
        }
        fn drop_replication_slot(&self, name: &str) -> Result<StatementResult, SqlError> {
            self.calls.lock().unwrap().push(format!("drop {name}"));
            Ok(StatementResult::tag("DROP REPLICATION SLOT"))
        }
    }

    #[test]
    fn replication_statements_go_to_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::db::Config { fsync: false, ..crate::db::Config::default() };
        let db = Database::open(dir.path(), config).unwrap();
        let mut settings = Settings::default();
        let run =
            |settings: &mut Settings, sql: &str, read_only: bool, host: Option<&dyn ReplicationHost>| {
                execute(&db, settings, &p(sql).unwrap(), read_only, host)
            };
        // Without a host: feature_not_supported, saying a server is needed.
        for sql in
            ["SHOW REPLICATION", "SHOW RECOVERY", "CREATE REPLICATION SLOT a", "DROP REPLICATION SLOT a"]
        {
            let e = run(&mut settings, sql, false, None).unwrap_err();
            assert_eq!(e.code, ErrorCode::FeatureNotSupported, "{sql}");
            assert!(e.message.contains("without a server") && e.hint.is_some(), "{sql}: {e}");
        }
        // The replay controls wait for point-in-time recovery, host or not.
        let host = FakeHost::default();
        for sql in ["PAUSE REPLAY", "RESUME REPLAY", "PROMOTE"] {
            for h in [None, Some(&host as &dyn ReplicationHost)] {
                let e = run(&mut settings, sql, false, h).unwrap_err();
                assert_eq!(e.code, ErrorCode::FeatureNotSupported, "{sql}");
                assert!(e.hint.as_deref().unwrap().contains("point-in-time recovery"), "{sql}: {e}");
            }
        }
        // With a host: answered by it; slot changes need a role that may write.
        let h = Some(&host as &dyn ReplicationHost);
        assert!(matches!(run(&mut settings, "SHOW REPLICATION", true, h), Ok(StatementResult::Rows { .. })));
        assert_eq!(run(&mut settings, "SHOW RECOVERY", false, h).unwrap_err().message, "not in recovery");
        run(&mut settings, "CREATE REPLICATION SLOT Standby_A", false, h).unwrap();
        run(&mut settings, "DROP REPLICATION SLOT standby_a", false, h).unwrap();
        for sql in ["CREATE REPLICATION SLOT b", "DROP REPLICATION SLOT b"] {
            let e = run(&mut settings, sql, true, h).unwrap_err();
            assert_eq!(e.code, ErrorCode::ReadOnly, "{sql}");
            assert!(e.message.contains("role"), "{sql}: {e}");
        }
        assert_eq!(
            *host.calls.lock().unwrap(),
            ["show replication", "create standby_a", "drop standby_a"].map(String::from)
        );
    }

    #[test]
    fn leaves_sql_to_the_parser_and_rejects_garbage() {
        for sql in
            ["SELECT 1", "CREATE TABLE t (id BIGINT PRIMARY KEY)", "SET TRANSACTION READ ONLY", "", "  "]
        {
            assert!(parse(sql).is_none(), "{sql}");
        }
        for bad in [
            "CHECKPOINT now",
            "CREATE RESTORE POINT",
            "CREATE RESTORE POINT name",
            "CREATE RESTORE POINT 'unterminated",
            "RESUME REPLAY UNTIL",
            "RESUME REPLAY UNTIL LSN 'nope'",
            "RESUME REPLAY UNTIL TIME 'yesterday'",
            "RESUME REPLAY UNTIL XID -1",
            "PAUSE",
            "SET synchronous_commit",
            "SET x = (",
            "SHOW",
            "SHOW a b",
            "SET LOCAL synchronous_commit = off",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_are_checked() {
        let mut s = Settings::default();
        assert_eq!(s.get("synchronous_commit"), Some("local"));
        s.set("synchronous_commit", Some("REMOTE_APPLY")).unwrap();
        assert_eq!(s.get("synchronous_commit"), Some("remote_apply"));
        s.set("synchronous_commit", Some("on")).unwrap();
        assert_eq!(s.get("synchronous_commit"), Some("remote_flush"));
        let e = s.set("synchronous_commit", Some("sometimes")).unwrap_err();
        assert!(e.message.contains("sometimes") && e.hint.is_some());
        let e = s.set("work_mem", Some("1")).unwrap_err();
        assert!(e.message.contains("work_mem"));
        s.set("synchronous_commit", None).unwrap();
        assert_eq!(s.get("synchronous_commit"), Some("local"));
    }
}
