//! End-to-end tests of `hindsight primary`: start and stop, authentication, refusals, bad
//! input, the connection limit, the data directory lock, and clean shutdown. Each test runs the
//! real binary as a separate process on 127.0.0.1 with a free port.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use anyhow::Context;
use common::{run_bin, stderr, write_config, Primary, DEADLINE};
use hindsight_primary::client::{Client, ClientError, ConnectOptions, Value};
use hindsight_protocol::wire::server_message::Msg;
use hindsight_protocol::{decode_frame, encode_frame, ClientMessage, ServerMessage};

fn code(result: Result<Client, ClientError>) -> String {
    match result {
        Ok(_) => "connected".to_string(),
        Err(e) => e.code().map_or_else(|| format!("not a server error: {e}"), str::to_string),
    }
}

/// Sends raw bytes on a fresh connection and returns every frame the server sends back until
/// it closes the connection.
fn raw_exchange(addr: &str, bytes: &[u8]) -> anyhow::Result<Vec<ServerMessage>> {
    let mut stream = TcpStream::connect(addr).context("connect")?;
    stream.set_read_timeout(Some(DEADLINE)).context("set a read timeout")?;
    stream.write_all(bytes).context("send the bytes")?;
    // Half-close: the server sees the end of the input (and so a frame cut short) at once.
    stream.shutdown(std::net::Shutdown::Write).context("half-close")?;
    let mut received = Vec::new();
    stream.read_to_end(&mut received).context("read until the server closes")?;
    let mut messages = Vec::new();
    let mut rest = &received[..];
    while rest.len() >= 4 {
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        anyhow::ensure!(rest.len() >= 4 + len, "truncated frame from the server");
        messages.push(decode_frame::<ServerMessage>(&rest[..4 + len]).context("decode a server frame")?);
        rest = &rest[4 + len..];
    }
    anyhow::ensure!(rest.is_empty(), "{} stray bytes from the server", rest.len());
    Ok(messages)
}

fn error_code_of(messages: &[ServerMessage]) -> Option<String> {
    match messages {
        [ServerMessage { msg: Some(Msg::Error(error)) }] => Some(error.code.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_data_survives_a_restart() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let data = temp.path().join("data");
    let mut primary = Primary::start(&data)?;
    let secret = std::fs::metadata(data.join("admin.secret"))?;
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&secret.permissions()) & 0o777, 0o600);

    let mut client = primary.connect().await?;
    assert_eq!(client.system_id(), primary.system_id);
    client.query("CREATE TABLE kv (k BIGINT PRIMARY KEY, v TEXT)").await?;
    let inserted = client.query("INSERT INTO kv VALUES (1, 'one'), (2, 'two')").await?;
    assert_eq!(inserted[0].rows_affected, 2);
    assert!(inserted[0].txid.is_some() && inserted[0].lsn.is_some(), "{inserted:?}");
    // An idle session is closed by the shutdown with a reason.
    let status = primary.terminate()?;
    assert!(status.success(), "exit status {status}; log:\n{}", primary.log());
    let after = client.query("SELECT 1").await;
    assert!(after.is_err(), "the session outlived the server: {after:?}");

    let primary = Primary::start(&data)?;
    assert_eq!(primary.system_id, client.system_id(), "a restart keeps the system id");
    let mut client = primary.connect().await?;
    let rows = client.query("SELECT k, v FROM kv ORDER BY k").await?;
    assert_eq!(
        rows[0].rows,
        vec![vec![Value::Int(1), Value::Text("one".into())], vec![Value::Int(2), Value::Text("two".into())]]
    );
    client.close().await;
    Ok(())
}

#[tokio::test]
async fn wrong_password_is_refused_and_the_server_keeps_serving() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let primary = Primary::start(&temp.path().join("data"))?;
    let wrong = ConnectOptions { password: "not the secret".into(), ..ConnectOptions::default() };
    assert_eq!(code(Client::connect(primary.addr.as_str(), wrong).await), "invalid_password");
    // An unknown role gets the very same answer.
    let unknown = ConnectOptions { role: "root".into(), ..primary.admin() };
    assert_eq!(code(Client::connect(primary.addr.as_str(), unknown).await), "invalid_password");
    let mut client = primary.connect().await?;
    client.query("CREATE TABLE t (id BIGINT PRIMARY KEY)").await?;
    let log = primary.log();
    assert_eq!(log.matches("authentication failed").count(), 2, "logged once per attempt:\n{log}");
    Ok(())
}

#[tokio::test]
async fn a_client_expecting_another_cluster_is_refused() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let primary = Primary::start(&temp.path().join("data"))?;
    let other = ConnectOptions { expected_system_id: primary.system_id ^ 1, ..primary.admin() };
    assert_eq!(code(Client::connect(primary.addr.as_str(), other).await), "system_id_mismatch");
    let same = ConnectOptions { expected_system_id: primary.system_id, ..primary.admin() };
    let client = Client::connect(primary.addr.as_str(), same).await?;
    assert_eq!(client.system_id(), primary.system_id);
    Ok(())
}

#[tokio::test]
async fn garbage_on_the_wire_gets_protocol_violation_and_the_server_keeps_serving() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let primary = Primary::start(&temp.path().join("data"))?;
    let addr = primary.addr.clone();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("an oversized length prefix", vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3]),
        ("a body that is not protobuf", vec![0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ("an empty envelope", vec![0, 0, 0, 0]),
        (
            "a query before Startup",
            encode_frame(&ClientMessage::from(hindsight_protocol::wire::Query { sql: "SELECT 1".into() }))?
                .to_vec(),
        ),
        ("a frame cut short by the close", vec![0, 0, 0, 9, 1, 2]),
    ];
    for (what, bytes) in cases {
        let answer = tokio::task::spawn_blocking({
            let addr = addr.clone();
            move || raw_exchange(&addr, &bytes)
        })
        .await??;
        assert_eq!(error_code_of(&answer).as_deref(), Some("protocol_violation"), "{what}: {answer:?}");
    }
    let mut client = primary.connect().await?;
    client.query("CREATE TABLE still_serving (id BIGINT PRIMARY KEY)").await?;
    let log = primary.log();
    assert!(log.contains("protocol violation"), "{log}");
    Ok(())
}

#[tokio::test]
async fn the_connection_beyond_max_connections_is_refused() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let config = write_config(
        temp.path(),
        "hindsight.toml",
        "max_connections = 2\n[auth]\nadmin = \"limit-test-secret\"\n",
    )?;
    let primary = Primary::start_with(&temp.path().join("data"), &["--config", &config])?;
    let options = ConnectOptions { password: "limit-test-secret".into(), ..ConnectOptions::default() };
    let first = Client::connect(primary.addr.as_str(), options.clone()).await?;
    let mut second = Client::connect(primary.addr.as_str(), options.clone()).await?;
    assert_eq!(code(Client::connect(primary.addr.as_str(), options.clone()).await), "too_many_connections");
    second.query("CREATE TABLE t (id BIGINT PRIMARY KEY)").await?;
    // A slot frees when a connection ends; the server notices asynchronously.
    first.close().await;
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut third = loop {
        match Client::connect(primary.addr.as_str(), options.clone()).await {
            Ok(client) => break client,
            Err(e) if e.code() == Some("too_many_connections") && std::time::Instant::now() < deadline => {
                tokio::time::sleep(common::POLL_INTERVAL).await;
            }
            Err(e) => return Err(e).context("connect after a slot freed"),
        }
    };
    third.query("INSERT INTO t VALUES (1)").await?;
    assert!(!std::path::Path::new(&temp.path().join("data/admin.secret")).exists(), "configured secret");
    Ok(())
}

#[test]
fn transparent_huge_pages_are_off_unless_configured() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let default = Primary::start(&temp.path().join("default"))?;
    let Some(off) = default.thp_enabled()? else {
        eprintln!("SKIPPED: this kernel's /proc/PID/status has no THP_enabled field to check");
        return Ok(());
    };
    assert_eq!(off, "0", "a primary with the default settings allows transparent huge pages");
    let config = write_config(temp.path(), "thp.toml", "transparent_huge_pages = true\n")?;
    let allowed = Primary::start_with(&temp.path().join("allowed"), &["--config", &config])?;
    assert_eq!(allowed.thp_enabled()?.as_deref(), Some("1"), "transparent_huge_pages = true was not applied");
    Ok(())
}

#[test]
fn a_second_primary_on_the_same_directory_refuses_to_start() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let data = temp.path().join("data");
    let mut first = Primary::start(&data)?;
    let data_arg = data.to_str().context("utf-8 path")?;
    let second = run_bin(&["primary", "--data", data_arg, "--listen", "127.0.0.1:0"])?;
    assert!(!second.status.success(), "the second primary started");
    let err = stderr(&second);
    assert!(err.contains("in use by another hindsight process"), "{err}");
    assert_eq!(err.trim_end().lines().filter(|l| l.contains("error")).count(), 1, "one-line cause: {err}");
    assert!(first.is_running(), "the first primary died");
    Ok(())
}

#[tokio::test]
async fn a_client_vanishing_mid_transaction_leaves_no_trace() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let primary = Primary::start(&temp.path().join("data"))?;
    let mut setup = primary.connect().await?;
    setup.query("CREATE TABLE t (id BIGINT PRIMARY KEY)").await?;
    {
        let mut vanishing = primary.connect().await?;
        vanishing.query("BEGIN; INSERT INTO t VALUES (1), (2)").await?;
        assert!(vanishing.in_transaction());
        // Dropped without COMMIT or Terminate: the socket just closes.
    }
    // Nothing of an open transaction is logged or applied before COMMIT, so its writes can
    // never appear, whenever the server notices the close.
    let rows = setup.query("SELECT count(*) FROM t").await?;
    assert_eq!(rows[0].rows, vec![vec![Value::Int(0)]]);
    setup.query("INSERT INTO t VALUES (1)").await?;
    let rows = setup.query("SELECT count(*) FROM t").await?;
    assert_eq!(
        rows[0].rows,
        vec![vec![Value::Int(1)]],
        "the id is free: nothing of the vanished transaction remains"
    );
    Ok(())
}

#[test]
fn later_milestones_exit_2_with_one_line() -> anyhow::Result<()> {
    for args in [&["backup", "list", "--archive", "x"][..], &["wal", "inspect", "--data", "x"][..]] {
        let output = run_bin(args)?;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let err = stderr(&output);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("not available yet: arrives with"), "{err}");
    }
    // The replica exists; its archive and target options arrive later, each refused in one line.
    for args in [
        &["replica", "--data", "x", "--archive", "y"][..],
        &["replica", "--data", "x", "--primary", "127.0.0.1:1", "--target-lsn", "0/1"][..],
    ] {
        let output = run_bin(args)?;
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let err = stderr(&output);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("not available yet: arrives with"), "{err}");
    }
    Ok(())
}

#[test]
fn help_shows_examples() -> anyhow::Result<()> {
    for args in [&["--help"][..], &["primary", "--help"], &["shell", "--help"], &["replica", "--help"]] {
        let output = run_bin(args)?;
        assert!(output.status.success(), "{args:?}");
        assert!(common::stdout(&output).contains("Examples:"), "{args:?}");
    }
    Ok(())
}
