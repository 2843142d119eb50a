//! Servers started and stopped inside one test process, on port 0: the lifecycle, shutdown
//! semantics and the client library, without spawning the binary.

use std::time::Duration;

use hindsight_primary::client::{Client, ConnectOptions, Value};
use hindsight_primary::config::ServerConfig;
use hindsight_primary::{Server, ServerHandle};

const SECRET: &str = "in-process-secret";

async fn start(dir: &std::path::Path) -> ServerHandle {
    let config = ServerConfig::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\n[engine]\nfsync = false\n[auth]\nadmin = \"{SECRET}\"\nreadonly = \"ro\"\n"
    ))
    .expect("valid configuration");
    Server::start(dir, config).await.expect("start the server")
}

fn admin() -> ConnectOptions {
    ConnectOptions { password: SECRET.into(), ..ConnectOptions::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_start_serve_and_stop_in_one_process() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (server_a, server_b) = (start(a.path()).await, start(b.path()).await);
    assert_ne!(server_a.local_addr(), server_b.local_addr());
    assert_ne!(server_a.system_id(), server_b.system_id());
    for server in [&server_a, &server_b] {
        let mut client = Client::connect(server.local_addr(), admin()).await.unwrap();
        assert_eq!(client.system_id(), server.system_id());
        assert_eq!(client.role(), "admin");
        client.query("CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT)").await.unwrap();
        let results =
            client.query("INSERT INTO t VALUES (1, 'x'); SELECT name FROM t WHERE id = 1").await.unwrap();
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].tag, "INSERT 0 1");
        assert!(results[0].txid.is_some());
        assert!(results[1].has_result_set);
        assert_eq!(results[1].rows, vec![vec![Value::Text("x".into())]]);
        assert_eq!(results[1].tag, "SELECT 1");
        client.close().await;
    }
    server_a.shutdown().await;
    server_b.shutdown().await;
    // The directory lock is released: the same directory opens again in the same process.
    let again = start(a.path()).await;
    let mut client = Client::connect(again.local_addr(), admin()).await.unwrap();
    let rows = client.query("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(rows[0].rows, vec![vec![Value::Int(1)]]);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_the_session_and_report_the_transaction_state() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = Client::connect(server.local_addr(), admin()).await.unwrap();
    client.query("CREATE TABLE t (id BIGINT PRIMARY KEY)").await.unwrap();
    let response =
        client.execute("BEGIN; INSERT INTO t VALUES (1); SELECT * FROM nope; SELECT 1").await.unwrap();
    assert_eq!(response.results.len(), 2, "BEGIN and INSERT ran: {response:?}");
    let error = response.error.expect("the SELECT failed");
    assert_eq!(error.code, "undefined_table");
    assert!(client.in_transaction() && client.transaction_failed());
    let refused = client.query("SELECT 1").await.unwrap_err();
    assert_eq!(refused.code(), Some("in_failed_transaction"));
    client.query("ROLLBACK").await.unwrap();
    assert!(!client.in_transaction() && !client.transaction_failed());
    let rows = client.query("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(rows[0].rows, vec![vec![Value::Int(0)]]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_idle_sessions_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let addr = server.local_addr();
    let mut idle = Client::connect(addr, admin()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), server.shutdown()).await.expect("shutdown finishes");
    let error = idle.query("SELECT 1").await.unwrap_err();
    // The server's last word arrived before the close; depending on timing the write of the
    // query may fail first, which the client reports as a lost connection.
    assert!(error.code() == Some("shutting_down") || error.code().is_none(), "{error}");
    assert!(idle.is_closed());
    assert!(Client::connect(addr, admin()).await.is_err(), "no new connections after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_a_commit_waiting_for_standbys_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig::from_toml(&format!(
        "listen = \"127.0.0.1:0\"\nsynchronous_standbys = \"FIRST 1 (nobody)\"\n[engine]\nfsync = false\n[auth]\nadmin = \"{SECRET}\"\n"
    ))
    .expect("valid configuration");
    let server = Server::start(dir.path(), config).await.expect("start the server");
    let mut client = Client::connect(server.local_addr(), admin()).await.unwrap();
    client.query("CREATE TABLE t (id BIGINT PRIMARY KEY)").await.unwrap();
    let before = server.database().status().visible_lsn;
    client.query("SET synchronous_commit = remote_apply").await.unwrap();
    // No standby named "nobody" will ever confirm it.
    let waiting = tokio::spawn(async move { client.query("INSERT INTO t VALUES (1)").await });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.database().status().visible_lsn == before {
        assert!(std::time::Instant::now() < deadline, "the insert never became durable");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(!waiting.is_finished(), "answered before any standby confirmed it");
    tokio::time::timeout(Duration::from_secs(30), server.shutdown()).await.expect("shutdown finishes");
    let error = waiting.await.unwrap().expect_err("not confirmed by a standby");
    assert_eq!(error.code(), Some("shutting_down"), "{error}");
    assert!(error.to_string().contains("committed locally at"), "{error}");
    // It is durable, as the error says.
    let again = start(dir.path()).await;
    let mut client = Client::connect(again.local_addr(), admin()).await.unwrap();
    let rows = client.query("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(rows[0].rows, vec![vec![Value::Int(1)]]);
    again.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_roles_cannot_open_replication_connections() {
    use futures::{SinkExt, StreamExt};
    use hindsight_protocol::wire::{server_message::Msg, Purpose, Startup};
    use hindsight_protocol::{ClientCodec, ClientMessage, PROTOCOL_VERSION};

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let stream = tokio::net::TcpStream::connect(server.local_addr()).await.unwrap();
    let mut transport = tokio_util::codec::Framed::new(stream, ClientCodec::new());
    let startup = Startup {
        protocol_version: PROTOCOL_VERSION,
        role: "readonly".into(),
        password: "ro".into(),
        expected_system_id: 0,
        application_name: "test".into(),
        purpose: Purpose::Replication as i32,
    };
    transport.send(ClientMessage::from(startup)).await.unwrap();
    let reply = transport.next().await.unwrap().unwrap();
    let Some(Msg::Error(error)) = reply.msg else { panic!("{reply:?}") };
    assert_eq!(error.code, "invalid_password");
    assert!(error.message.contains("may not open replication connections"), "{}", error.message);
    assert!(transport.next().await.is_none(), "closed after the refusal");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_roles_cannot_write() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let options =
        ConnectOptions { role: "readonly".into(), password: "ro".into(), ..ConnectOptions::default() };
    let mut admin_client = Client::connect(server.local_addr(), admin()).await.unwrap();
    admin_client.query("CREATE TABLE t (id BIGINT PRIMARY KEY); INSERT INTO t VALUES (1)").await.unwrap();
    let mut client = Client::connect(server.local_addr(), options).await.unwrap();
    assert!(client.read_only());
    assert_eq!(client.role(), "readonly");
    for write in ["INSERT INTO t VALUES (2)", "CREATE TABLE u (id BIGINT PRIMARY KEY)", "DELETE FROM t"] {
        let error = client.query(write).await.unwrap_err();
        assert_eq!(error.code(), Some("read_only"), "{write}: {error}");
    }
    let rows = client.query("SELECT count(*) FROM t").await.unwrap();
    assert_eq!(rows[0].rows, vec![vec![Value::Int(1)]], "reads work and nothing was written");
    // The admin session next to it still writes.
    admin_client.query("INSERT INTO t VALUES (2)").await.unwrap();
    server.shutdown().await;
}

/// A standby that stops reading while WAL keeps coming gets, once it reads again, every byte
/// once and in order (the publish hook's pushes, the backlog and the task's catch-up share one
/// position); and a message it may not send, arriving while frames wait, is answered with an
/// error that still arrives as a whole frame after them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_stops_reading_gets_every_wal_byte_once_and_a_whole_error() {
    use futures::{SinkExt, StreamExt};
    use hindsight_protocol::wire::{server_message::Msg, Purpose, Query, StartReplication};
    use hindsight_protocol::ClientMessage;

    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path()).await;
    let mut client = Client::connect(server.local_addr(), admin()).await.unwrap();
    client.query("CREATE TABLE t (id BIGINT PRIMARY KEY, pad TEXT)").await.unwrap();
    let lsn_of = |rows: Vec<hindsight_primary::QueryResult>| match &rows[0].rows[0][0] {
        Value::Text(t) => t.parse::<hindsight_protocol::Lsn>().unwrap(),
        other => panic!("current_lsn() gave {other:?}"),
    };
    let start_lsn = lsn_of(client.query("SELECT current_lsn()").await.unwrap());
    let (mut standby, _) =
        Client::handshake(server.local_addr(), admin(), Purpose::Replication).await.unwrap();
    let start = StartReplication {
        timeline: 1,
        start_lsn: start_lsn.0,
        slot: String::new(),
        standby_name: "slow".into(),
    };
    standby.send(ClientMessage::from(start)).await.unwrap();

    // Far more WAL than the socket buffers hold, while the standby reads nothing.
    let pad = "x".repeat(60_000);
    for id in 0..400 {
        client.query(&format!("INSERT INTO t VALUES ({id}, '{pad}')")).await.unwrap();
    }
    let end = lsn_of(client.query("SELECT current_lsn()").await.unwrap());
    assert!(end.0 - start_lsn.0 > 16 << 20, "only {} bytes of WAL", end.0 - start_lsn.0);

    // A message a streaming standby may not send, while frames are queued behind a full socket.
    standby.send(ClientMessage::from(Query { sql: "SELECT 1".into() })).await.unwrap();

    let mut next = start_lsn.0;
    let error = loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), standby.next())
            .await
            .expect("the primary kept sending")
            .expect("the connection ended with an error frame")
            .expect("every frame decodes whole");
        match frame.msg {
            Some(Msg::WalData(w)) => {
                assert_eq!(w.start_lsn, next, "WAL frames are contiguous: nothing skipped or sent twice");
                next += w.data.len() as u64;
            }
            Some(Msg::Keepalive(_)) => {}
            Some(Msg::Error(e)) => break e,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(error.code, "protocol_violation", "{error:?}");
    assert!(error.message.contains("not accepted while WAL streams"), "{}", error.message);
    assert!(next > start_lsn.0 && next <= end.0, "WAL sent up to {next}, durable end {}", end.0);
    server.shutdown().await;
}
