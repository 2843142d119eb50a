//! The client library: connect, authenticate, run SQL, read results.
//!
//! ```no_run
//! # async fn example() -> Result<(), hindsight_primary::client::ClientError> {
//! use hindsight_primary::client::{Client, ConnectOptions};
//!
//! let options = ConnectOptions { password: "secret".into(), ..ConnectOptions::default() };
//! let mut client = Client::connect("127.0.0.1:7340", options).await?;
//! client.query("CREATE TABLE t (id BIGINT PRIMARY KEY, note TEXT)").await?;
//! let inserted = client.query("INSERT INTO t VALUES (1, 'one')").await?;
//! println!("committed as TxId {:?} at {:?}", inserted[0].txid, inserted[0].lsn);
//! let rows = client.query("SELECT id, note FROM t").await?;
//! assert_eq!(rows[0].rows.len(), 1);
//! client.close().await;
//! # Ok(()) }
//! ```
//!
//! One [`Client`] is one connection and one server session, used by one task at a time; open
//! several for concurrency. Every call waits for the whole answer (`ReadyForQuery`), so the
//! connection is always in step. It is built for round trips: TCP_NODELAY, one write and
//! usually one read per query, no per-query work beyond decoding the answer.

use std::fmt;
use std::io;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use hindsight_engine::value::format_timestamp;
use hindsight_protocol::wire::{self, server_message::Msg, value::Kind, Purpose};
use hindsight_protocol::{
    ClientCodec, ClientMessage, Envelope, Lsn, ServerMessage, Timeline, TxId, PROTOCOL_VERSION,
};
use tokio::net::{TcpStream, ToSocketAddrs};
use tokio_util::codec::Framed;

/// How long connecting (TCP connect and the handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    /// The role: `admin`, `replication` or `readonly`.
    pub role: String,
    /// The role's secret.
    pub password: String,
    /// The system id the server must have; 0 accepts any.
    pub expected_system_id: u64,
    /// A name for the server's logs.
    pub application_name: String,
}

impl Default for ConnectOptions {
    fn default() -> ConnectOptions {
        ConnectOptions {
            role: "admin".to_string(),
            password: String::new(),
            expected_system_id: 0,
            application_name: "hindsight-client".to_string(),
        }
    }
}

/// The password never reaches logs.
impl fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("role", &self.role)
            .field("password", &"<hidden>")
            .field("expected_system_id", &format_args!("{:016X}", self.expected_system_id))
            .field("application_name", &self.application_name)
            .finish()
    }
}

/// A place in the SQL text, 1-based.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub column: u32,
}

/// An error the server reported: a stable code, a message, maybe a hint and a position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    /// The stable snake_case code (`docs/protocol.md`).
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// How to fix it, when the server knows.
    pub hint: Option<String>,
    /// Where in the SQL, when it is about the text.
    pub position: Option<Position>,
}

impl From<wire::Error> for ServerError {
    fn from(e: wire::Error) -> ServerError {
        ServerError {
            code: e.code,
            message: e.message,
            hint: Some(e.hint).filter(|hint| !hint.is_empty()),
            position: e.position.map(|p| Position { line: p.line, column: p.column }),
        }
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)?;
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

/// What can go wrong talking to a server, grouped by what the caller must do.
///
/// - [`ClientError::Server`]: the server refused the request and said why. After a query the
///   connection is still usable (unless [`Client::is_closed`]); during connect it is gone.
/// - [`ClientError::Connect`], [`ClientError::Timeout`], [`ClientError::Io`],
///   [`ClientError::Closed`]: the connection failed or is gone; connect again.
/// - [`ClientError::Protocol`]: the server sent something this client does not understand
///   (another version, or a bug); the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{message} ({code}){}", hint.as_ref().map(|h| format!("; hint: {h}")).unwrap_or_default())]
    Server {
        /// The stable snake_case code.
        code: String,
        /// What went wrong.
        message: String,
        /// How to fix it, when the server knows.
        hint: Option<String>,
        /// Where in the SQL, when it is about the text.
        position: Option<Position>,
    },
    /// The TCP connection could not be made.
    #[error("could not connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// Connecting took longer than [`CONNECT_TIMEOUT`].
    #[error("timed out {what} after {} s", CONNECT_TIMEOUT.as_secs())]
    Timeout {
        /// What was being waited for.
        what: &'static str,
    },
    /// Reading or writing the connection failed.
    #[error("connection failed: {0}")]
    Io(#[from] io::Error),
    /// The server closed the connection.
    #[error("the server closed the connection")]
    Closed,
    /// The server broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server's error code, for [`ClientError::Server`].
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<ServerError> for ClientError {
    fn from(e: ServerError) -> ClientError {
        ClientError::Server { code: e.code, message: e.message, hint: e.hint, position: e.position }
    }
}

impl From<hindsight_protocol::Error> for ClientError {
    fn from(e: hindsight_protocol::Error) -> ClientError {
        match e {
            hindsight_protocol::Error::Io(e) => ClientError::Io(e),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

/// A result column's type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ColumnType {
    /// BIGINT.
    BigInt,
    /// DOUBLE.
    Double,
    /// TEXT.
    Text,
    /// BOOLEAN.
    Boolean,
    /// TIMESTAMP.
    Timestamp,
    /// A type number this client does not know (from a newer server).
    Unknown(i32),
}

impl ColumnType {
    fn from_wire(number: i32) -> ColumnType {
        match wire::ColumnType::try_from(number) {
            Ok(wire::ColumnType::Bigint) => ColumnType::BigInt,
            Ok(wire::ColumnType::Double) => ColumnType::Double,
            Ok(wire::ColumnType::Text) => ColumnType::Text,
            Ok(wire::ColumnType::Boolean) => ColumnType::Boolean,
            Ok(wire::ColumnType::Timestamp) => ColumnType::Timestamp,
            Ok(wire::ColumnType::Unspecified) | Err(_) => ColumnType::Unknown(number),
        }
    }

    /// The SQL name, e.g. `BIGINT`.
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::BigInt => "BIGINT",
            ColumnType::Double => "DOUBLE",
            ColumnType::Text => "TEXT",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Timestamp => "TIMESTAMP",
            ColumnType::Unknown(_) => "UNKNOWN",
        }
    }

    /// Whether values of this type are numbers (right-aligned in tables).
    pub fn is_numeric(self) -> bool {
        matches!(self, ColumnType::BigInt | ColumnType::Double)
    }
}

impl fmt::Display for ColumnType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One column of a result set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// The column's name or label.
    pub name: String,
    /// Its type.
    pub column_type: ColumnType,
}

/// One value of a result row.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// A BIGINT.
    Int(i64),
    /// A DOUBLE.
    Double(f64),
    /// A TEXT.
    Text(String),
    /// A BOOLEAN.
    Bool(bool),
    /// A TIMESTAMP, microseconds since the Unix epoch (UTC).
    Timestamp(i64),
}

impl Value {
    fn from_wire(value: wire::Value) -> Result<Value, ClientError> {
        Ok(match value.kind {
            Some(Kind::Null(_)) => Value::Null,
            Some(Kind::Int64(v)) => Value::Int(v),
            Some(Kind::Double(v)) => Value::Double(v),
            Some(Kind::Text(v)) => Value::Text(v),
            Some(Kind::Boolean(v)) => Value::Bool(v),
            Some(Kind::TimestampUs(v)) => Value::Timestamp(v),
            // The codec refuses these already; kept so a change there cannot panic here.
            None => return Err(ClientError::Protocol("a row value has no kind".into())),
        })
    }

    /// The integer, for a BIGINT.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    /// The text, for a TEXT.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(v) => Some(v),
            _ => None,
        }
    }

    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }
}

/// Values as people read them: `NULL`, `42`, `1.5`, `text`, `true`, `2026-11-21T13:25:27Z`.
/// Doubles print the shortest text that reads back as the same number; infinities and NaN the
/// PostgreSQL way (`Infinity`, `-Infinity`, `NaN`).
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Double(v) if v.is_nan() => f.write_str("NaN"),
            Value::Double(v) if v.is_infinite() => {
                f.write_str(if *v > 0.0 { "Infinity" } else { "-Infinity" })
            }
            Value::Double(v) => write!(f, "{v}"),
            Value::Text(v) => f.write_str(v),
            Value::Bool(v) => write!(f, "{v}"),
            Value::Timestamp(v) => f.write_str(&format_timestamp(*v)),
        }
    }
}

/// What one statement returned.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryResult {
    /// True when the statement returned a result set (even an empty one), false for commands.
    pub has_result_set: bool,
    /// The result set's columns (empty for commands).
    pub columns: Vec<Column>,
    /// The result set's rows, one value per column.
    pub rows: Vec<Vec<Value>>,
    /// The command tag: `SELECT 3`, `INSERT 0 1`, `CREATE TABLE`, `COMMIT`, …
    pub tag: String,
    /// Rows returned or changed.
    pub rows_affected: u64,
    /// The transaction this statement committed, if it committed one.
    pub txid: Option<TxId>,
    /// Its commit record's Lsn (or a restore point's / checkpoint's).
    pub lsn: Option<Lsn>,
}

/// The whole answer to one `Query`: the results of the statements that ran and, if one failed,
/// its error (the statements after it did not run).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Response {
    /// One result per statement that succeeded, in order.
    pub results: Vec<QueryResult>,
    /// The error of the statement that failed, if one did.
    pub error: Option<ServerError>,
}

/// A connection to a hindsight server, authenticated, with one session.
///
/// Invariants: between calls the connection is idle (every answer was read up to
/// `ReadyForQuery`), or [`Client::is_closed`] is true and every call fails.
pub struct Client {
    transport: Framed<TcpStream, ClientCodec>,
    system_id: u64,
    timeline: Timeline,
    role: String,
    read_only: bool,
    server_version: String,
    in_transaction: bool,
    transaction_failed: bool,
    closed: bool,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("peer", &self.transport.get_ref().peer_addr().ok())
            .field("system_id", &format_args!("{:016X}", self.system_id))
            .field("role", &self.role)
            .field("in_transaction", &self.in_transaction)
            .field("closed", &self.closed)
            .finish()
    }
}

impl Client {
    /// Connects to `addr` and logs in. Fails with [`ClientError::Server`] when the server
    /// refuses (`invalid_password`, `system_id_mismatch`, `too_many_connections`, …).
    pub async fn connect<A: ToSocketAddrs + fmt::Display>(
        addr: A,
        options: ConnectOptions,
    ) -> Result<Client, ClientError> {
        let (transport, auth_ok) = Client::handshake(addr, options, Purpose::Session).await?;
        Ok(Client {
            transport,
            system_id: auth_ok.system_id,
            timeline: Timeline(auth_ok.timeline),
            role: auth_ok.role,
            read_only: auth_ok.read_only,
            server_version: auth_ok.server_version,
            in_transaction: false,
            transaction_failed: false,
            closed: false,
        })
    }

    /// Connects and logs in for `purpose` (a replica's receiver uses `Replication`); returns the
    /// framed connection and the server's `AuthOk`.
    pub async fn handshake<A: ToSocketAddrs + fmt::Display>(
        addr: A,
        options: ConnectOptions,
        purpose: Purpose,
    ) -> Result<(Framed<TcpStream, ClientCodec>, wire::AuthOk), ClientError> {
        let addr_text = addr.to_string();
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            Err(_) => return Err(ClientError::Timeout { what: "connecting" }),
            Ok(Err(source)) => return Err(ClientError::Connect { addr: addr_text, source }),
            Ok(Ok(stream)) => stream,
        };
        stream.set_nodelay(true)?;
        let mut transport = Framed::new(stream, ClientCodec::new());
        let startup = wire::Startup {
            protocol_version: PROTOCOL_VERSION,
            role: options.role,
            password: options.password,
            expected_system_id: options.expected_system_id,
            application_name: options.application_name,
            purpose: purpose as i32,
        };
        let handshake = async {
            transport.send(ClientMessage::from(startup)).await?;
            match transport.next().await {
                None => Err(ClientError::Closed),
                Some(Err(e)) => Err(ClientError::from(e)),
                Some(Ok(ServerMessage { msg: Some(Msg::AuthOk(ok)) })) => Ok(ok),
                Some(Ok(ServerMessage { msg: Some(Msg::Error(e)) })) => Err(ServerError::from(e).into()),
                Some(Ok(other)) => {
                    Err(ClientError::Protocol(format!("expected AuthOk or Error, got {}", other.kind())))
                }
            }
        };
        let auth_ok = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
            Err(_) => return Err(ClientError::Timeout { what: "logging in" }),
            Ok(result) => result?,
        };
        if options.expected_system_id != 0 && auth_ok.system_id != options.expected_system_id {
            return Err(ClientError::Protocol(format!(
                "the server accepted expected system id {:016X} but says it is {:016X}",
                options.expected_system_id, auth_ok.system_id
            )));
        }
        Ok((transport, auth_ok))
    }

    /// Runs `sql` (one or more `;`-separated statements) and returns each statement's result,
    /// or the first error as [`ClientError::Server`] (the results before it are dropped; use
    /// [`Client::execute`] to keep them).
    pub async fn query(&mut self, sql: &str) -> Result<Vec<QueryResult>, ClientError> {
        let response = self.execute(sql).await?;
        match response.error {
            Some(error) => Err(error.into()),
            None => Ok(response.results),
        }
    }

    /// Runs `sql` and returns the whole answer: the results of the statements that ran and the
    /// error of the one that failed, if any. Fails only when the connection does.
    pub async fn execute(&mut self, sql: &str) -> Result<Response, ClientError> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        if let Err(e) = self.transport.send(ClientMessage::from(wire::Query { sql: sql.to_string() })).await {
            self.closed = true;
            return Err(e.into());
        }
        let answer = self.read_answer().await;
        if answer.is_err() {
            self.closed = true;
        }
        answer
    }

    /// Reads up to and including `ReadyForQuery`.
    async fn read_answer(&mut self) -> Result<Response, ClientError> {
        let mut response = Response::default();
        let mut current: Option<QueryResult> = None;
        loop {
            let message = match self.transport.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => return Err(e.into()),
                // The server said why before closing (e.g. `shutting_down`): report that.
                None => return Err(response.error.map_or(ClientError::Closed, ClientError::from)),
            };
            match message.msg {
                Some(Msg::RowDescription(description)) => {
                    let columns = description
                        .columns
                        .into_iter()
                        .map(|c| Column { name: c.name, column_type: ColumnType::from_wire(c.r#type) })
                        .collect();
                    current = Some(QueryResult { has_result_set: true, columns, ..QueryResult::default() });
                }
                Some(Msg::DataRows(batch)) => {
                    let Some(result) = current.as_mut() else {
                        return Err(ClientError::Protocol("DataRows without a RowDescription".into()));
                    };
                    result.rows.reserve(batch.rows.len());
                    for row in batch.rows {
                        let row =
                            row.values.into_iter().map(Value::from_wire).collect::<Result<Vec<_>, _>>()?;
                        result.rows.push(row);
                    }
                }
                Some(Msg::CommandComplete(done)) => {
                    let mut result = current.take().unwrap_or_default();
                    result.tag = done.tag;
                    result.rows_affected = done.rows_affected;
                    result.txid = done.txid.map(TxId);
                    result.lsn = done.lsn.map(Lsn);
                    response.results.push(result);
                }
                Some(Msg::Error(error)) => response.error = Some(error.into()),
                Some(Msg::ReadyForQuery(ready)) => {
                    self.in_transaction = ready.in_transaction;
                    self.transaction_failed = ready.failed_transaction;
                    return Ok(response);
                }
                other => {
                    let kind = ServerMessage { msg: other }.kind();
                    return Err(ClientError::Protocol(format!("unexpected {kind} in the answer to a query")));
                }
            }
        }
    }

    /// Says goodbye and closes the connection. An open transaction is discarded by the server.
    pub async fn close(mut self) {
        if !self.closed {
            let _ = self.transport.send(ClientMessage::from(wire::Terminate {})).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(self.transport.get_mut()).await;
        }
    }

    /// The cluster's system id, from the handshake.
    pub fn system_id(&self) -> u64 {
        self.system_id
    }

    /// The server's timeline at the handshake.
    pub fn timeline(&self) -> Timeline {
        self.timeline
    }

    /// The authenticated role.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Whether the session can only read (a replica, or a read-only role).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The server's version text, e.g. `hindsight 0.1.0`.
    pub fn server_version(&self) -> &str {
        &self.server_version
    }

    /// Whether the session is inside `BEGIN` … `COMMIT`, as of the last answer.
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    /// Whether that transaction failed (only `ROLLBACK` is accepted), as of the last answer.
    pub fn transaction_failed(&self) -> bool {
        self.transaction_failed
    }

    /// Whether the connection is gone; every further call fails with [`ClientError::Closed`].
    pub fn is_closed(&self) -> bool {
        self.closed
    }
}
