//! One client connection: the handshake, then the session loop.
//!
//! ```text
//! accept ─► Startup (within STARTUP_TIMEOUT) ─► version ─► system id ─► purpose ─► role+password
//!                                                                                     │
//!        ┌──────────────────────── AuthOk ◄───────────────────────────────────────────┘
//!        ▼
//!   Query ─► Session::execute where blocking is allowed ─► RowDescription / DataRows* /
//!            CommandComplete per statement, Error at the first failure ─► ReadyForQuery
//! ```
//!
//! Nothing is served before authentication. A refusal (`Error`) during the handshake, a
//! protocol violation at any time, and shutdown while idle all end with the same sequence:
//! send the `Error`, half-close, read and discard what the peer still sends for a moment (so the
//! close does not reset the connection before the peer read the error), close. Each is logged
//! once, here, with the peer address from the connection's span.
//!
//! The session lives on the connection task. Each `Query` runs where blocking is allowed (the
//! engine blocks on the group-commit fsync, see [`Placement`]): right there when the connection
//! has a thread of its own, which is how the server serves connections; else in place via
//! `block_in_place` on a multi-threaded runtime, or on the blocking pool. When the client goes
//! away, mid-transaction or
//! not, the session is dropped with its buffered writes: nothing of an open transaction was
//! logged, so nothing needs undoing.

use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hindsight_engine::sql::{Session, StatementResult};
use hindsight_engine::value::{DataType, Value};
use hindsight_engine::{ErrorCode, SqlError};
use hindsight_protocol::wire::{
    self, client_message::Msg, value::Kind, Column, ColumnType, CommandComplete, Purpose, ReadyForQuery, Row,
    RowDescription, Startup,
};
use hindsight_protocol::{
    error_code, ClientMessage, DataRowsBatcher, ServerCodec, ServerMessage, FRAME_LEN_MAX, PROTOCOL_VERSION,
};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::auth::Role;
use crate::server::Shared;

/// How long a new connection has to send its `Startup`.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a closing connection keeps reading (and discarding) what the peer still sends after
/// the server's last message, so the peer reads that message before the connection goes away.
pub const CLOSE_LINGER: Duration = Duration::from_millis(250);

/// The most bytes read and discarded while lingering.
pub const CLOSE_LINGER_BYTES_MAX: usize = 64 * 1024;

/// The most characters of a client-supplied name (role, application) quoted in logs and
/// replies; the rest is cut.
pub const QUOTED_NAME_CHARS_MAX: usize = 64;

/// The largest frame accepted before authentication. A `Startup` is a few hundred bytes; a
/// stranger must not make the server buffer 64 MiB per connection before saying who it is.
pub const STARTUP_FRAME_LEN_MAX: usize = 64 * 1024;

const _: () = assert!(STARTUP_FRAME_LEN_MAX < FRAME_LEN_MAX);

/// The server's version, sent in `AuthOk.server_version`.
pub const SERVER_VERSION: &str = concat!("hindsight ", env!("CARGO_PKG_VERSION"));

pub(crate) type Transport = Framed<TcpStream, ServerCodec>;

/// What reading the next client message gave.
pub(crate) enum Incoming {
    Message(ClientMessage),
    /// The client closed the connection between messages.
    Eof,
    /// The bytes broke the protocol (malformed, oversized, truncated, empty envelope).
    Violation(hindsight_protocol::Error),
    /// The transport failed.
    Failed(io::Error),
}

pub(crate) async fn recv(transport: &mut Transport) -> Incoming {
    incoming(transport.next().await)
}

/// What a read from the transport gave, as an [`Incoming`].
pub(crate) fn incoming(read: Option<hindsight_protocol::Result<ClientMessage>>) -> Incoming {
    match read {
        None => Incoming::Eof,
        Some(Ok(message)) => Incoming::Message(message),
        Some(Err(hindsight_protocol::Error::Io(e))) => Incoming::Failed(e),
        Some(Err(e)) => Incoming::Violation(e),
    }
}

/// Where a connection's statements run. They may block (a commit waits for its group's
/// fdatasync), which a task sharing its runtime's threads must not simply do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Placement {
    /// The connection has a thread (and a current-thread runtime) of its own: a statement runs
    /// right where its query was read, and blocking stops only this connection.
    OwnThread,
    /// The connection is a task on a shared runtime: a statement runs in place with
    /// `block_in_place` on a multi-threaded runtime (the worker's other tasks move to another
    /// thread), else on the blocking pool.
    SharedRuntime,
}

/// Serves one connection until it ends. Holds `_permit` (a connection slot) throughout.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    placement: Placement,
) {
    // Request/response traffic: every reply is one small write that must leave at once.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    tracing::debug!(%peer, "connection accepted");
    let mut transport = Framed::new(stream, ServerCodec::with_frame_len_max(STARTUP_FRAME_LEN_MAX));
    let Some((role, purpose, application)) = handshake(&shared, &mut transport).await else {
        return;
    };
    // Authenticated: queries may be as large as the protocol allows. The codec keeps no
    // decode state between frames (it lives in the read buffer), so swapping it is safe.
    *transport.codec_mut() = ServerCodec::new();
    if purpose == Purpose::Replication {
        crate::walsender::serve_replication(&shared, &mut transport, peer, application).await;
    } else {
        serve_session(&shared, &mut transport, role, placement).await;
    }
}

/// Runs the handshake. Returns the authenticated role, or `None` when the connection was
/// refused (and already answered and closed) or went away.
async fn handshake(shared: &Shared, transport: &mut Transport) -> Option<(Role, Purpose, String)> {
    let first = tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => {
            refuse_shutting_down(transport).await;
            return None;
        }
        first = tokio::time::timeout(STARTUP_TIMEOUT, recv(transport)) => first,
    };
    let startup = match first {
        Err(_elapsed) => {
            tracing::warn!("no Startup within {STARTUP_TIMEOUT:?}; closing the connection");
            let message = format!("no Startup message within {} s", STARTUP_TIMEOUT.as_secs());
            refuse(transport, error_code::PROTOCOL_VIOLATION, message, "").await;
            return None;
        }
        Ok(Incoming::Eof) => {
            tracing::debug!("connection closed before Startup");
            return None;
        }
        Ok(Incoming::Failed(e)) => {
            tracing::debug!(error = %e, "connection failed before Startup");
            return None;
        }
        Ok(Incoming::Violation(e)) => {
            tracing::warn!(error = %e, "protocol violation before Startup; closing the connection");
            refuse(transport, error_code::PROTOCOL_VIOLATION, e.to_string(), "").await;
            return None;
        }
        Ok(Incoming::Message(ClientMessage { msg: Some(Msg::Startup(startup)) })) => startup,
        Ok(Incoming::Message(other)) => {
            let kind = hindsight_protocol::Envelope::kind(&other);
            tracing::warn!(kind, "first message is not Startup; closing the connection");
            let message = format!("the first message must be Startup, not {kind}");
            refuse(transport, error_code::PROTOCOL_VIOLATION, message, "").await;
            return None;
        }
    };
    check_startup(shared, transport, startup).await
}

/// The handshake's checks, in the order `docs/protocol.md` gives them.
async fn check_startup(
    shared: &Shared,
    transport: &mut Transport,
    startup: Startup,
) -> Option<(Role, Purpose, String)> {
    let role_name = clip(&startup.role);
    let application = clip(&startup.application_name);
    if startup.protocol_version != PROTOCOL_VERSION {
        tracing::warn!(
            version = startup.protocol_version,
            application = %application,
            "refusing a client speaking an unsupported protocol version"
        );
        let message = format!(
            "protocol version {} is not supported; this server speaks version {PROTOCOL_VERSION}",
            startup.protocol_version
        );
        refuse(transport, error_code::UNSUPPORTED_PROTOCOL_VERSION, message, "upgrade the client").await;
        return None;
    }
    let system_id = shared.db.system_id();
    if startup.expected_system_id != 0 && startup.expected_system_id != system_id {
        tracing::warn!(
            expected = format!("{:016X}", startup.expected_system_id),
            system_id = format!("{system_id:016X}"),
            application = %application,
            "refusing a client that expects another cluster"
        );
        let message = format!(
            "this server's system id is {system_id:016X}, but the client expected {:016X}",
            startup.expected_system_id
        );
        let hint = "the client is pointed at another cluster: check the address";
        refuse(transport, error_code::SYSTEM_ID_MISMATCH, message, hint).await;
        return None;
    }
    let purpose = match Purpose::try_from(startup.purpose) {
        Ok(purpose @ (Purpose::Session | Purpose::Replication)) => purpose,
        Ok(Purpose::Unspecified) | Err(_) => {
            tracing::warn!(purpose = startup.purpose, "refusing a Startup without a known purpose");
            let message = format!("Startup.purpose {} is not a purpose this server knows", startup.purpose);
            refuse(transport, error_code::PROTOCOL_VIOLATION, message, "").await;
            return None;
        }
    };
    let Some(role) = shared.auth.authenticate(&startup.role, &startup.password) else {
        tracing::warn!(role = %role_name, application = %application, "authentication failed");
        // The same reply for an unknown role as for a wrong password: the reply must not tell
        // which roles exist.
        let message = format!("password authentication failed for role \"{role_name}\"");
        refuse(transport, error_code::INVALID_PASSWORD, message, "").await;
        return None;
    };
    if purpose == Purpose::Replication && !role.may_replicate() {
        tracing::warn!(role = %role, application = %application, "refusing a replication connection");
        let message = format!("role \"{role}\" may not open replication connections");
        refuse(transport, error_code::INVALID_PASSWORD, message, "connect as role replication or admin")
            .await;
        return None;
    }
    let auth_ok = wire::AuthOk {
        protocol_version: PROTOCOL_VERSION,
        system_id,
        timeline: shared.db.status().timeline.0,
        role: role.name().to_string(),
        read_only: shared.db.is_read_only() || !role.may_write(),
        server_version: SERVER_VERSION.to_string(),
    };
    if let Err(e) = transport.send(ServerMessage::from(auth_ok)).await {
        tracing::debug!(error = %e, "connection failed while answering Startup");
        return None;
    }
    tracing::debug!(role = %role, application = %application, "session started");
    Some((role, purpose, application.to_string()))
}

/// The session loop: one `Query` at a time until the client leaves or the server stops.
async fn serve_session(shared: &Shared, transport: &mut Transport, role: Role, placement: Placement) {
    let mut session = Session::new(Arc::clone(&shared.db));
    // `readonly` and `replication` sessions read only: every write or administrative change
    // fails with `read_only`, and the session stays usable.
    session.set_read_only(!role.may_write());
    session.set_host(std::sync::Arc::clone(&shared.host));
    if shared.synchronous_commit != "local" {
        // The configured default; SET in the session overrides it.
        let _ = session.execute(&format!("SET synchronous_commit = {}", shared.synchronous_commit));
    }
    loop {
        let incoming = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => {
                tracing::debug!("closing an idle session for shutdown");
                refuse_shutting_down(transport).await;
                return;
            }
            incoming = recv(transport) => incoming,
        };
        let message = match incoming {
            Incoming::Message(message) => message,
            Incoming::Eof => {
                if session.in_transaction() {
                    tracing::debug!("client left inside a transaction; its writes are discarded");
                } else {
                    tracing::debug!("client closed the connection");
                }
                return;
            }
            Incoming::Failed(e) => {
                tracing::debug!(error = %e, "connection failed");
                return;
            }
            Incoming::Violation(e) => {
                tracing::warn!(error = %e, "protocol violation; closing the connection");
                refuse(transport, error_code::PROTOCOL_VIOLATION, e.to_string(), "").await;
                return;
            }
        };
        match message.msg {
            Some(Msg::Query(query)) => match run_query(transport, session, query.sql, placement).await {
                Some(back) => session = back,
                None => return,
            },
            Some(Msg::Terminate(_)) => {
                tracing::debug!("client terminated the session");
                return;
            }
            other => {
                let kind = hindsight_protocol::Envelope::kind(&ClientMessage { msg: other });
                tracing::warn!(kind, "unexpected message on a session connection; closing it");
                let message = format!("{kind} is not accepted on a session connection");
                refuse(transport, error_code::PROTOCOL_VIOLATION, message, "").await;
                return;
            }
        }
    }
}

/// Runs one `Query` where blocking is allowed and sends its answer. Returns the session for the next
/// query, or `None` when the connection is finished.
async fn run_query(
    transport: &mut Transport,
    mut session: Session,
    sql: String,
    placement: Placement,
) -> Option<Session> {
    // A commit at a synchronous_commit level above local returns from `execute` only once
    // the synchronous standbys confirmed it (the engine relays it to `shared.replication`).
    let execute = move || {
        let results = session.execute(&sql);
        let replies = answer(results, session.in_transaction(), session.transaction_failed());
        (session, replies)
    };
    // Never a hand-off to another thread and back where it can be helped: that is most of a
    // point query's round trip. Either way a panic becomes an error, not a dead server.
    let in_place = |execute| {
        std::panic::catch_unwind(AssertUnwindSafe(execute)).map_err(|panic| panic_message(panic.as_ref()))
    };
    let ran: Result<_, String> = match placement {
        Placement::OwnThread => in_place(execute),
        Placement::SharedRuntime if Handle::current().runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| in_place(execute))
        }
        Placement::SharedRuntime => tokio::task::spawn_blocking(execute).await.map_err(|e| e.to_string()),
    };
    let (session, replies) = match ran {
        Ok(ran) => ran,
        Err(panic) => {
            tracing::error!(panic = %panic, "a statement failed unexpectedly; closing the session");
            let message = "the statement failed unexpectedly (a bug); the session is closed".to_string();
            refuse(transport, error_code::INTERNAL_ERROR, message, "reconnect and try again").await;
            return None;
        }
    };
    for reply in replies {
        if let Err(e) = transport.feed(reply).await {
            tracing::debug!(error = %e, "sending an answer failed; closing the connection");
            return None;
        }
    }
    if let Err(e) = SinkExt::<ServerMessage>::flush(transport).await {
        tracing::debug!(error = %e, "sending an answer failed; closing the connection");
        return None;
    }
    Some(session)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_string(),
        (None, Some(text)) => text.clone(),
        (None, None) => "a panic without a message".to_string(),
    }
}

/// The messages answering one `Query`: per statement an optional result set and a
/// `CommandComplete`, an `Error` for the failing one, and `ReadyForQuery` last.
fn answer(
    results: Vec<Result<StatementResult, SqlError>>,
    in_transaction: bool,
    failed_transaction: bool,
) -> Vec<ServerMessage> {
    let mut replies = Vec::with_capacity(results.len() + 1);
    for result in results {
        let answered = match result {
            Ok(StatementResult::Rows { columns, rows }) => answer_rows(&mut replies, columns, rows),
            Ok(StatementResult::Command { tag, rows_affected, commit }) => {
                replies.push(ServerMessage::from(CommandComplete {
                    tag,
                    rows_affected,
                    txid: commit.map(|c| c.txid.0),
                    lsn: commit.map(|c| c.lsn.0),
                }));
                Ok(())
            }
            Err(error) => Err(error),
        };
        if let Err(error) = answered {
            replies.push(error_reply(error));
            // The engine stops at the first error; a result set too large to send stops the
            // answer the same way.
            break;
        }
    }
    replies.push(ServerMessage::from(ReadyForQuery { in_transaction, failed_transaction }));
    replies
}

fn answer_rows(
    replies: &mut Vec<ServerMessage>,
    columns: Vec<hindsight_engine::sql::Column>,
    rows: Vec<Vec<Value>>,
) -> Result<(), SqlError> {
    let columns = columns
        .into_iter()
        .map(|column| Column { name: column.name, r#type: column_type(column.data_type) as i32 })
        .collect();
    replies.push(ServerMessage::from(RowDescription { columns }));
    let count = rows.len();
    let mut batcher = DataRowsBatcher::new();
    for row in rows {
        let row = Row { values: row.into_iter().map(wire_value).collect() };
        if let Some(batch) = batcher.push(row) {
            push_batch(replies, batch)?;
        }
    }
    if let Some(batch) = batcher.finish() {
        push_batch(replies, batch)?;
    }
    replies.push(ServerMessage::from(CommandComplete {
        tag: format!("SELECT {count}"),
        rows_affected: count as u64,
        txid: None,
        lsn: None,
    }));
    Ok(())
}

/// A batch holds rows until it passes 256 KiB, so only a single enormous row can push it past
/// the frame limit; then the statement fails instead of the connection.
fn push_batch(replies: &mut Vec<ServerMessage>, batch: wire::DataRows) -> Result<(), SqlError> {
    let message = ServerMessage::from(batch);
    if message.encoded_len() > FRAME_LEN_MAX {
        return Err(SqlError::new(
            ErrorCode::ProgramLimitExceeded,
            format!("a result row is too large to send (a frame holds at most {FRAME_LEN_MAX} bytes)"),
        )
        .with_hint("select fewer or smaller columns"));
    }
    replies.push(message);
    Ok(())
}

fn column_type(data_type: DataType) -> ColumnType {
    match data_type {
        DataType::BigInt => ColumnType::Bigint,
        DataType::Double => ColumnType::Double,
        DataType::Text => ColumnType::Text,
        DataType::Boolean => ColumnType::Boolean,
        DataType::Timestamp => ColumnType::Timestamp,
    }
}

fn wire_value(value: Value) -> wire::Value {
    let kind = match value {
        Value::Null => Kind::NULL,
        Value::Int(v) => Kind::Int64(v),
        Value::Double(v) => Kind::Double(v),
        Value::Text(v) => Kind::Text(v),
        Value::Bool(v) => Kind::Boolean(v),
        Value::Timestamp(v) => Kind::TimestampUs(v),
    };
    wire::Value { kind: Some(kind) }
}

fn error_reply(error: SqlError) -> ServerMessage {
    ServerMessage::from(wire::Error {
        code: error.code.as_str().to_string(),
        message: error.message,
        hint: error.hint.unwrap_or_default(),
        position: error.position.map(|p| wire::Position { line: p.line, column: p.column }),
    })
}

/// Tells an over-limit connection so and closes it. Does not wait for its `Startup`: the
/// lingering close reads and discards it.
pub(crate) async fn refuse_over_limit(
    stream: TcpStream,
    max_connections: usize,
    shutdown: CancellationToken,
) {
    let mut transport = Framed::new(stream, ServerCodec::new());
    if shutdown.is_cancelled() {
        refuse_shutting_down(&mut transport).await;
        return;
    }
    let message = format!("the server is at its limit of {max_connections} connections");
    let hint = "try again later, or raise max_connections in the server's configuration";
    refuse(&mut transport, error_code::TOO_MANY_CONNECTIONS, message, hint).await;
}

pub(crate) async fn refuse_shutting_down(transport: &mut Transport) {
    let hint = "reconnect when the server is back, or to another server";
    refuse(transport, error_code::SHUTTING_DOWN, "the server is shutting down".to_string(), hint).await;
}

/// Sends a final `Error` and closes the connection without resetting it.
pub(crate) async fn refuse(transport: &mut Transport, code: &str, message: String, hint: &str) {
    let error = wire::Error { code: code.to_string(), message, hint: hint.to_string(), position: None };
    if let Err(e) = transport.send(ServerMessage::from(error)).await {
        tracing::debug!(error = %e, "could not send the final error");
        return;
    }
    close_gracefully(transport.get_mut()).await;
}

/// Half-closes, then reads and discards what the peer still sends for up to [`CLOSE_LINGER`]
/// (at most [`CLOSE_LINGER_BYTES_MAX`]). Closing a socket with unread input resets the
/// connection, and a reset can destroy the error just sent before the peer reads it.
async fn close_gracefully(stream: &mut TcpStream) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let drain = async {
        let mut buf = [0u8; 4096];
        let mut drained = 0usize;
        while drained < CLOSE_LINGER_BYTES_MAX {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, drain).await;
}

/// A client-supplied name cut to [`QUOTED_NAME_CHARS_MAX`] characters, control characters
/// replaced, for logs and replies.
fn clip(name: &str) -> String {
    let mut clipped: String = name
        .chars()
        .take(QUOTED_NAME_CHARS_MAX)
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if name.chars().count() > QUOTED_NAME_CHARS_MAX {
        clipped.push('…');
    }
    clipped
}

#[cfg(test)]
mod tests {
    use super::*;
    use hindsight_engine::sql::Column as EngineColumn;
    use hindsight_engine::txn::CommitInfo;
    use hindsight_protocol::wire::server_message::Msg as ServerMsg;
    use hindsight_protocol::{Lsn, TxId, DATA_ROWS_BATCH_ROWS_MAX};

    fn kinds(replies: &[ServerMessage]) -> Vec<&'static str> {
        replies.iter().map(hindsight_protocol::Envelope::kind).collect()
    }

    #[test]
    fn rows_are_batched_and_counted() {
        let rows: Vec<Vec<Value>> =
            (0..DATA_ROWS_BATCH_ROWS_MAX as i64 + 1).map(|i| vec![Value::Int(i), Value::Null]).collect();
        let columns =
            vec![EngineColumn::new("id", DataType::BigInt), EngineColumn::new("note", DataType::Text)];
        let replies = answer(vec![Ok(StatementResult::Rows { columns, rows })], false, false);
        assert_eq!(
            kinds(&replies),
            ["row_description", "data_rows", "data_rows", "command_complete", "ready_for_query"]
        );
        let Some(ServerMsg::CommandComplete(done)) = &replies[3].msg else { panic!("{replies:?}") };
        assert_eq!(done.tag, format!("SELECT {}", DATA_ROWS_BATCH_ROWS_MAX + 1));
        assert_eq!(done.rows_affected, DATA_ROWS_BATCH_ROWS_MAX as u64 + 1);
        let Some(ServerMsg::RowDescription(description)) = &replies[0].msg else { panic!() };
        assert_eq!(description.columns[0].r#type, ColumnType::Bigint as i32);
        assert_eq!(description.columns[1].name, "note");
    }

    #[test]
    fn commands_carry_their_commit_and_errors_end_the_answer() {
        let commit = CommitInfo { txid: TxId(7), lsn: Lsn(0x1234), commit_time_us: 1 };
        let results = vec![
            Ok(StatementResult::Command { tag: "INSERT 0 1".into(), rows_affected: 1, commit: Some(commit) }),
            Err(SqlError::new(ErrorCode::UndefinedTable, "table \"nope\" does not exist")
                .with_hint("create it")),
        ];
        let replies = answer(results, true, true);
        assert_eq!(kinds(&replies), ["command_complete", "error", "ready_for_query"]);
        let Some(ServerMsg::CommandComplete(done)) = &replies[0].msg else { panic!() };
        assert_eq!((done.txid, done.lsn, done.rows_affected), (Some(7), Some(0x1234), 1));
        let Some(ServerMsg::Error(error)) = &replies[1].msg else { panic!() };
        assert_eq!(error.code, "undefined_table");
        assert_eq!(error.hint, "create it");
        let Some(ServerMsg::ReadyForQuery(ready)) = &replies[2].msg else { panic!() };
        assert!(ready.in_transaction && ready.failed_transaction);
    }

    #[test]
    fn every_reply_encodes() {
        let columns = vec![EngineColumn::new("t", DataType::Timestamp)];
        let rows = vec![vec![Value::Timestamp(5)], vec![Value::Null]];
        for reply in answer(vec![Ok(StatementResult::Rows { columns, rows })], false, false) {
            hindsight_protocol::encode_frame(&reply).unwrap();
        }
    }

    #[test]
    fn names_are_clipped_for_logs() {
        assert_eq!(clip("admin"), "admin");
        assert_eq!(clip("a\nb"), "a\u{FFFD}b");
        let long = "x".repeat(QUOTED_NAME_CHARS_MAX + 10);
        assert_eq!(clip(&long).chars().count(), QUOTED_NAME_CHARS_MAX + 1);
    }
}
