//! The hindsight side of the `commit` workload: loads the table and runs the updates over TCP
//! with [`hindsight_primary::client`], one connection per client, each a tokio task.
//!
//! All connections are made before the clock starts, as pgbench's "without initial connection
//! time" figure does on the PostgreSQL side. A commit's latency is the round trip of its
//! autocommit `UPDATE`, retries after `serialization_failure` included (two clients updating
//! the same row at once; counted and reported).
//!
//! The test below runs this against an in-process [`hindsight_primary::Server`]; the `commit`
//! workload runs it against the real `hindsight primary` process. The `lag` workload uses the
//! pieces ([`load_accounts`], [`update_phase`], [`balance_sum`]) from its own runtime.

use crate::commit::ClientRun;
use crate::machine::{self, CpuTimes};
use crate::stats::{latency_histogram, record_latency, CommitStats};
use crate::workload::{
    expected_balance_sum, load_txn_ranges, load_txn_sql, share, update_sql, CREATE_ACCOUNTS, UPDATE_SEED,
};
use anyhow::{anyhow, bail, ensure, Context, Result};
use hdrhistogram::Histogram;
use hindsight_primary::client::{Client, ConnectOptions, QueryResult, Value};
use hindsight_protocol::Lsn;
use rand::SeedableRng;
use std::net::SocketAddr;
use std::time::Instant;

/// Attempts per update before a run of serialization failures is treated as a bug.
const UPDATE_ATTEMPTS_MAX: u32 = 100;
/// The error code of a write–write conflict.
const SERIALIZATION_FAILURE: &str = "serialization_failure";
/// The `application_name` the bench's connections log in with.
const APPLICATION_NAME: &str = "hindsight-bench";

/// Loads `rows` rows and runs `txns` updates from `clients` connections against the server at
/// `addr`, logging in as `admin` with `secret`. Blocks on its own tokio runtime.
pub fn run_updates(
    addr: SocketAddr,
    secret: &str,
    rows: u64,
    txns: u64,
    clients: usize,
) -> Result<ClientRun> {
    ensure!(rows > 0 && txns > 0 && clients > 0, "rows, txns and clients must be positive");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hindsight-bench-client")
        .build()
        .context("start the client runtime")?;
    runtime.block_on(run_async(addr, secret.to_string(), rows, txns, clients))
}

pub async fn connect(addr: SocketAddr, secret: &str) -> Result<Client> {
    let options = ConnectOptions {
        password: secret.to_string(),
        application_name: APPLICATION_NAME.to_string(),
        ..ConnectOptions::default()
    };
    Client::connect(addr, options).await.with_context(|| format!("connect to the hindsight server at {addr}"))
}

pub async fn query(client: &mut Client, sql: &str) -> Result<Vec<QueryResult>> {
    client.query(sql).await.with_context(|| format!("run {:?}", crate::abbreviate(sql)))
}

/// The single value of a one-row, one-column result.
pub async fn scalar(client: &mut Client, sql: &str) -> Result<Value> {
    let results = query(client, sql).await?;
    match results.as_slice() {
        [QueryResult { rows, .. }] if rows.len() == 1 && rows[0].len() == 1 => Ok(rows[0][0].clone()),
        other => bail!("{sql} returned {other:?}, expected one value"),
    }
}

pub async fn current_lsn(client: &mut Client) -> Result<Lsn> {
    match scalar(client, "SELECT current_lsn()").await? {
        Value::Text(text) => text.parse().map_err(|e| anyhow!("parse the Lsn {text:?}: {e}")),
        other => bail!("current_lsn() returned {other:?}"),
    }
}

async fn run_async(
    addr: SocketAddr,
    secret: String,
    rows: u64,
    txns: u64,
    clients: usize,
) -> Result<ClientRun> {
    let mut admin = connect(addr, &secret).await?;
    load_accounts(&mut admin, rows).await?;
    let run = update_phase(addr, &secret, rows, txns, clients, &[]).await?;
    let sum = balance_sum(&mut admin).await?;
    let expected = expected_balance_sum(rows, run.stats.txns);
    ensure!(sum == expected, "the balances sum to {sum}, expected {expected}");
    admin.close().await;
    Ok(run)
}

/// Creates and loads the `accounts` table with `rows` rows, then takes a checkpoint.
pub async fn load_accounts(admin: &mut Client, rows: u64) -> Result<()> {
    query(admin, CREATE_ACCOUNTS).await?;
    for ids in load_txn_ranges(rows) {
        query(admin, &load_txn_sql(ids)).await.context("load the accounts table")?;
    }
    query(admin, "CHECKPOINT").await?;
    Ok(())
}

/// `SELECT sum(balance) FROM accounts`.
pub async fn balance_sum(client: &mut Client) -> Result<i64> {
    match scalar(client, "SELECT sum(balance) FROM accounts").await? {
        Value::Int(n) => Ok(n),
        other => bail!("sum(balance) returned {other:?}"),
    }
}

/// `txns` updates from `clients` new connections to `addr`, each of which first runs the
/// statements in `session_setup` (e.g. `SET synchronous_commit = remote_apply`). Connections
/// and set-up happen before the clock starts. The caller checks the balances.
pub async fn update_phase(
    addr: SocketAddr,
    secret: &str,
    rows: u64,
    txns: u64,
    clients: usize,
    session_setup: &[&str],
) -> Result<ClientRun> {
    ensure!(rows > 0 && txns > 0 && clients > 0, "rows, txns and clients must be positive");
    let mut admin = connect(addr, secret).await?;
    let mut connections = Vec::with_capacity(clients);
    for _ in 0..clients {
        let mut client = connect(addr, secret).await?;
        for sql in session_setup {
            query(&mut client, sql).await.context("set up an update session")?;
        }
        connections.push(client);
    }
    let start_lsn = current_lsn(&mut admin).await?;
    let started = Instant::now();
    let cpu_start = CpuTimes::now();
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(i, client)| {
            tokio::spawn(updater(client, rows, share(txns, clients, i), UPDATE_SEED + i as u64))
        })
        .collect();
    let mut hist = latency_histogram();
    let mut conflicts = 0;
    for task in tasks {
        let (h, c) = task.await.context("join an update task")??;
        hist.add(&h).context("merge the clients' histograms")?;
        conflicts += c;
    }
    let elapsed = started.elapsed();
    let cpu = machine::used_since(cpu_start);
    let wal_bytes = current_lsn(&mut admin).await?.bytes_since(start_lsn);
    admin.close().await;
    let stats = CommitStats { txns: hist.len(), elapsed, hist };
    Ok(ClientRun { tps: stats.tps(), stats, wal_bytes: Some(wal_bytes), failed: 0, retried: conflicts, cpu })
}

/// One client: `count` updates of random accounts on its own connection.
async fn updater(mut client: Client, rows: u64, count: u64, seed: u64) -> Result<(Histogram<u64>, u64)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hist = latency_histogram();
    let mut conflicts = 0u64;
    for _ in 0..count {
        let sql = update_sql(&mut rng, rows);
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match client.query(&sql).await {
                Ok(results) => {
                    match results.as_slice() {
                        [QueryResult { rows_affected: 1, txid: Some(_), .. }] => {}
                        other => bail!("{sql} returned {other:?}"),
                    }
                    break;
                }
                Err(e) if e.code() == Some(SERIALIZATION_FAILURE) && attempts < UPDATE_ATTEMPTS_MAX => {
                    conflicts += 1;
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("run {sql}"))),
            }
        }
        record_latency(&mut hist, started.elapsed());
    }
    client.close().await;
    Ok((hist, conflicts))
}

/// A primary served in this process on a free loopback port, for the workloads' tests.
#[cfg(test)]
pub(crate) struct InProcessPrimary {
    /// Its data directory, removed when this is dropped.
    _dir: tempfile::TempDir,
    pub(crate) server: hindsight_primary::server::ServerHandle,
    pub(crate) addr: SocketAddr,
    /// The admin secret it wrote on first start.
    pub(crate) secret: String,
}

#[cfg(test)]
impl InProcessPrimary {
    /// Starts one on `runtime` with the default settings.
    pub(crate) fn start(runtime: &tokio::runtime::Runtime) -> InProcessPrimary {
        use hindsight_primary::{Server, ServerConfig};
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig { listen: "127.0.0.1:0".into(), ..ServerConfig::default() };
        let server = runtime.block_on(Server::start(dir.path(), config)).expect("start the server");
        let addr = server.local_addr();
        let secret = std::fs::read_to_string(dir.path().join(crate::commit::ADMIN_SECRET_FILE)).unwrap();
        let secret = secret.trim().to_string();
        InProcessPrimary { _dir: dir, server, addr, secret }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client side against an in-process server (the binary is tested by the `commit`
    /// workload itself): loads, updates, and checks the sum and the WAL growth.
    #[test]
    fn updates_through_an_in_process_server() {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let primary = InProcessPrimary::start(&runtime);
        let result = runtime
            .block_on(run_async(primary.addr, primary.secret.clone(), 500, 60, 3))
            .expect("run the updates");
        assert_eq!(result.stats.txns, 60);
        assert!(result.tps > 0.0);
        assert!(result.wal_bytes.unwrap() > 0);
        runtime.block_on(primary.server.shutdown());
    }
}
