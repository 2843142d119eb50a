//! The `commit` workload: the shared `accounts` workload over TCP through the real server, and
//! (with `--compare postgres`) through PostgreSQL 15 driven by pgbench, in the same run.
//!
//! For each client count: a fresh server and data directory (a fresh PostgreSQL cluster on the
//! other side), load `rows` rows, checkpoint, then `txns` autocommit updates split evenly over
//! that many connections. Throughput is committed updates over the wall-clock time of the update
//! phase (connection set-up excluded on both sides); latency is per statement round trip, which
//! for an autocommit update is the commit latency a client sees.
//!
//! The hindsight server is the `hindsight` binary next to the bench executable (both are built by
//! `cargo build --release`), started as `hindsight primary --data DIR --listen 127.0.0.1:0`; the
//! bench reads the address from its `listening on` line and the admin secret from
//! `DIR/admin.secret`.

use crate::machine::CpuUse;
use crate::postgres::{self, PgbenchRun, Postgres};
use crate::stats::{ms, round1, round3, thousands, work_dir, CommitStats};
use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the server may take to print its `listening on` line.
pub const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to exit after SIGTERM before it is killed.
const SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The most concurrent client connections one run opens.
pub const CLIENTS_MAX: usize = 256;
/// Lines of the server's log quoted in an error.
pub const LOG_TAIL_LINES: usize = 20;
/// The file in the data directory holding the admin secret (`hindsight_primary::auth`).
pub const ADMIN_SECRET_FILE: &str = "admin.secret";

/// Options of the `commit` workload.
#[derive(Clone, Debug)]
pub struct CommitOptions {
    /// Rows loaded.
    pub rows: u64,
    /// Update transactions per client count.
    pub txns: u64,
    /// Client counts to measure, in order; the first is reported at the top level.
    pub clients: Vec<usize>,
    /// Also measure PostgreSQL.
    pub compare_postgres: bool,
    /// Parent of the hindsight work directory (default: the system temp dir).
    pub dir: Option<PathBuf>,
}

/// What one system measured at one client count.
#[derive(Clone, Debug)]
pub struct ClientRun {
    /// Commit throughput and latency.
    pub stats: CommitStats,
    /// Throughput as reported (for PostgreSQL, pgbench's figure).
    pub tps: f64,
    /// WAL bytes written during the update phase, when known.
    pub wal_bytes: Option<u64>,
    /// Transactions that failed (serialization failures not retried by the tool).
    pub failed: u64,
    /// Serialization failures retried (the hindsight client retries; pgbench does not).
    pub retried: u64,
    /// The whole machine's CPU use while the transactions ran (`None` where unknown).
    pub cpu: Option<CpuUse>,
}

impl ClientRun {
    fn to_json(&self) -> Value {
        let mut m = self.stats.json_keys(self.tps);
        m.insert("txns".into(), json!(self.stats.txns));
        m.insert("failed_txns".into(), json!(self.failed));
        m.insert("serialization_failures_retried".into(), json!(self.retried));
        if let Some(wal) = self.wal_bytes {
            m.insert("wal_bytes_per_txn".into(), json!(round1(wal as f64 / self.stats.txns.max(1) as f64)));
        }
        Value::Object(m)
    }
}

impl From<PgbenchRun> for ClientRun {
    fn from(r: PgbenchRun) -> ClientRun {
        ClientRun {
            tps: r.tps,
            wal_bytes: Some(r.wal_bytes),
            failed: r.failed,
            retried: 0,
            stats: r.stats,
            cpu: r.cpu,
        }
    }
}

/// Everything the `commit` workload measured; a side that failed holds its error.
#[derive(Debug)]
pub struct CommitReport {
    opts: CommitOptions,
    hindsight: Vec<(usize, Result<ClientRun, String>)>,
    postgres: Vec<(usize, Result<ClientRun, String>)>,
    postgres_version: Option<String>,
}

impl CommitReport {
    /// The first error of either side, if any (the report is still printed first).
    pub fn first_error(&self) -> Option<String> {
        self.hindsight
            .iter()
            .map(|(c, r)| (c, "hindsight", r))
            .chain(self.postgres.iter().map(|(c, r)| (c, "PostgreSQL", r)))
            .find_map(|(c, side, r)| r.as_ref().err().map(|e| format!("{side} with {c} clients: {e}")))
    }

    fn postgres_run(&self, clients: usize) -> Option<&ClientRun> {
        self.postgres.iter().find(|(c, _)| *c == clients).and_then(|(_, r)| r.as_ref().ok())
    }

    /// The report as one JSON object: `clients_<C>` per client count, `postgres.clients_<C>`,
    /// `ratio_commit_tps[_<C>]`, `ratio_latency_p99[_<C>]` (no suffix for the first client
    /// count), and the first client count's hindsight figures at the top level.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("workload".into(), json!("commit"));
        m.insert("rows".into(), json!(self.opts.rows));
        m.insert("txns".into(), json!(self.opts.txns));
        m.insert("clients".into(), json!(self.opts.clients));
        let mut pg = Map::new();
        for (i, (clients, result)) in self.hindsight.iter().enumerate() {
            let suffix = if i == 0 { String::new() } else { format!("_{clients}") };
            match result {
                Ok(run) => {
                    if i == 0 {
                        m.extend(run.stats.json_keys(run.tps));
                    }
                    m.insert(format!("clients_{clients}"), run.to_json());
                    if let Some(p) = self.postgres_run(*clients) {
                        m.insert(format!("ratio_commit_tps{suffix}"), json!(round3(run.tps / p.tps)));
                        let p99 = run.stats.latency_us(0.99) as f64 / p.stats.latency_us(0.99).max(1) as f64;
                        m.insert(format!("ratio_latency_p99{suffix}"), json!(round3(p99)));
                    }
                }
                Err(e) => {
                    m.insert(format!("clients_{clients}"), json!({ "error": e }));
                }
            }
        }
        for (clients, result) in &self.postgres {
            let v = match result {
                Ok(run) => run.to_json(),
                Err(e) => json!({ "error": e }),
            };
            pg.insert(format!("clients_{clients}"), v);
        }
        if self.opts.compare_postgres {
            if let Some(v) = &self.postgres_version {
                pg.insert("version".into(), json!(v));
            }
            m.insert("postgres".into(), Value::Object(pg));
        }
        Value::Object(m)
    }

    /// The report as a readable table.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "commit workload over TCP: {} rows, {} update txns per client count (fsync on both sides)\n",
            thousands(self.opts.rows as f64),
            thousands(self.opts.txns as f64)
        );
        if let Some(v) = &self.postgres_version {
            out.push_str(&format!("PostgreSQL: {v}, measured in this run with pgbench\n"));
        }
        out.push('\n');
        let header =
            ["clients", "system", "commit_tps", "p50", "p99", "p99.9", "max", "WAL B/txn", "vs PostgreSQL"];
        let mut rows = Vec::new();
        for (clients, result) in &self.hindsight {
            let pg = self.postgres_run(*clients);
            rows.push(run_row(*clients, "hindsight", result, pg));
            if let Some((_, r)) = self.postgres.iter().find(|(c, _)| c == clients) {
                rows.push(run_row(*clients, "PostgreSQL", r, None));
            }
        }
        out.push_str(&crate::format_table(&header, &rows));
        out.push_str(
            "\nvs PostgreSQL: commit_tps ratio (higher is better) / p99 latency ratio (lower is better)\n",
        );
        for (system, runs) in [("hindsight", &self.hindsight), ("PostgreSQL", &self.postgres)] {
            for (clients, result) in runs {
                if let Err(e) = result {
                    out.push_str(&format!("error: {system} with {clients} clients: {e}\n"));
                }
            }
        }
        out
    }
}

fn run_row(
    clients: usize,
    system: &str,
    r: &Result<ClientRun, String>,
    pg: Option<&ClientRun>,
) -> [String; 9] {
    match r {
        Ok(run) => {
            let s = &run.stats;
            let ratio = pg.map_or(String::new(), |p| {
                format!(
                    "{:.2}x tps / {:.2}x p99",
                    run.tps / p.tps,
                    s.latency_us(0.99) as f64 / p.stats.latency_us(0.99).max(1) as f64
                )
            });
            [
                clients.to_string(),
                system.into(),
                thousands(run.tps),
                ms(s.latency_us(0.5)),
                ms(s.latency_us(0.99)),
                ms(s.latency_us(0.999)),
                ms(s.hist.max()),
                run.wal_bytes.map_or(String::new(), |w| format!("{:.0}", w as f64 / s.txns.max(1) as f64)),
                ratio,
            ]
        }
        Err(_) => {
            let mut row: [String; 9] = Default::default();
            row[0] = clients.to_string();
            row[1] = system.into();
            row[2] = "error (below)".into();
            row
        }
    }
}

/// Runs the workload for every client count. Each side's failure is kept in the report, so a
/// missing server still leaves the PostgreSQL figures (the caller exits non-zero after printing).
pub fn run(opts: &CommitOptions) -> Result<CommitReport> {
    if opts.rows == 0 || opts.txns == 0 || opts.clients.is_empty() {
        bail!("--rows, --txns and --clients must be positive");
    }
    if let Some(&c) = opts.clients.iter().find(|&&c| c == 0 || c > CLIENTS_MAX) {
        bail!("a client count of {c} is outside 1..={CLIENTS_MAX}");
    }
    let pg_bin = if opts.compare_postgres { Some(postgres::require_bin_dir()?) } else { None };
    let mut report = CommitReport {
        opts: opts.clone(),
        hindsight: Vec::new(),
        postgres: Vec::new(),
        postgres_version: None,
    };
    for &clients in &opts.clients {
        eprintln!("commit: hindsight, {clients} clients");
        let result = run_hindsight(opts, clients).map_err(|e| format!("{e:#}"));
        report.hindsight.push((clients, result));
        if let Some(bin) = &pg_bin {
            eprintln!("commit: PostgreSQL, {clients} clients");
            let result =
                run_postgres(bin, opts, clients, &mut report.postgres_version).map_err(|e| format!("{e:#}"));
            report.postgres.push((clients, result));
        }
    }
    Ok(report)
}

/// One PostgreSQL measurement in a fresh cluster.
fn run_postgres(
    bin: &Path,
    opts: &CommitOptions,
    clients: usize,
    version: &mut Option<String>,
) -> Result<ClientRun> {
    let mut pg = Postgres::start(bin)?;
    *version = Some(pg.version().to_string());
    pg.load_accounts(opts.rows)?;
    let run = pg.pgbench_updates(opts.rows, opts.txns, clients)?;
    let sum = pg.balance_sum()?;
    let expected = crate::workload::expected_balance_sum(opts.rows, run.stats.txns);
    if sum != expected {
        bail!("PostgreSQL's balances sum to {sum}, expected {expected}");
    }
    pg.stop()?;
    Ok(run.into())
}

/// The `hindsight` binary: next to the bench executable (both land in `target/release`).
pub fn hindsight_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("find the bench executable")?;
    let path = exe.with_file_name("hindsight");
    if !path.is_file() {
        bail!(
            "the hindsight server binary is missing at {}: build it first with `cargo build --release` \
             (the workspace root package), then rerun the bench",
            path.display()
        );
    }
    Ok(path)
}

/// One hindsight measurement with a fresh server and data directory.
fn run_hindsight(opts: &CommitOptions, clients: usize) -> Result<ClientRun> {
    let bin = hindsight_binary()?;
    let work = work_dir(opts.dir.as_deref())?;
    let data = work.path().join("data");
    let log = work.path().join("server.log");
    let server = Server::start(&bin, &data, &log)?;
    let secret = std::fs::read_to_string(data.join(ADMIN_SECRET_FILE))
        .with_context(|| format!("read the admin secret from {}", data.join(ADMIN_SECRET_FILE).display()))?;
    let run = crate::client::run_updates(server.addr, secret.trim(), opts.rows, opts.txns, clients)
        .with_context(|| {
            format!("drive the server (its log ends:\n{})", crate::postgres::tail(&log, LOG_TAIL_LINES))
        })?;
    server.stop().with_context(|| {
        format!("stop the server (its log ends:\n{})", crate::postgres::tail(&log, LOG_TAIL_LINES))
    })?;
    Ok(run)
}

/// A `hindsight primary` or `hindsight replica` process started by the bench.
///
/// Invariants:
/// - `child` is stopped (SIGTERM, then SIGKILL after [`SERVER_STOP_TIMEOUT`]) when this is
///   dropped or stopped.
pub struct Server {
    child: Option<Child>,
    /// The address from the server's ready line.
    pub addr: SocketAddr,
}

impl Server {
    /// Starts a primary with its default configuration; see [`Server::start_primary`].
    fn start(bin: &Path, data: &Path, log: &Path) -> Result<Server> {
        Server::start_primary(bin, data, None, log)
    }

    /// Starts `hindsight primary --data DATA --listen 127.0.0.1:0 [--config CONFIG]`, its stderr
    /// (the log) going to `log`, and waits up to [`SERVER_START_TIMEOUT`] for its ready line.
    pub fn start_primary(bin: &Path, data: &Path, config: Option<&Path>, log: &Path) -> Result<Server> {
        let mut args: Vec<OsString> =
            vec!["primary".into(), "--data".into(), data.into(), "--listen".into(), "127.0.0.1:0".into()];
        if let Some(config) = config {
            args.extend(["--config".into(), config.into()]);
        }
        Server::spawn(bin, &args, log, SERVER_START_TIMEOUT)
    }

    /// Starts `hindsight replica --data DATA --primary PRIMARY --listen 127.0.0.1:0
    /// --password-file PASSWORD_FILE --name NAME`, its stderr going to `log`, and waits up to
    /// `timeout` for its ready line (printed once it serves queries, after its bootstrap).
    pub fn start_replica(
        bin: &Path,
        data: &Path,
        primary: SocketAddr,
        password_file: &Path,
        name: &str,
        log: &Path,
        timeout: Duration,
    ) -> Result<Server> {
        let args: Vec<OsString> = vec![
            "replica".into(),
            "--data".into(),
            data.into(),
            "--primary".into(),
            primary.to_string().into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--password-file".into(),
            password_file.into(),
            "--name".into(),
            name.into(),
        ];
        Server::spawn(bin, &args, log, timeout)
    }

    /// Starts `bin ARGS` with stdout piped (for the ready line) and stderr to `log`.
    fn spawn(bin: &Path, args: &[OsString], log: &Path, timeout: Duration) -> Result<Server> {
        let command = args.first().map_or(String::new(), |a| a.to_string_lossy().into_owned());
        let log_file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let mut child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("start {} {command}", bin.display()))?;
        let stdout = child.stdout.take().context("take the server's stdout")?;
        let mut server = Server { child: Some(child), addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
        server.addr = wait_for_listening(stdout, timeout).with_context(|| {
            format!(
                "start hindsight {command} (its log ends:\n{})",
                crate::postgres::tail(log, LOG_TAIL_LINES)
            )
        })?;
        Ok(server)
    }

    /// Stops the server gracefully and checks that it exited cleanly.
    pub fn stop(mut self) -> Result<()> {
        let Some(child) = self.child.take() else { return Ok(()) };
        let status = terminate(child)?;
        if !status.success() {
            bail!("the hindsight server exited with {status} on SIGTERM");
        }
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            if let Err(e) = terminate(child) {
                eprintln!("warning: stop the hindsight server: {e:#}");
            }
        }
    }
}

/// Sends SIGTERM to a child we started, waits up to [`SERVER_STOP_TIMEOUT`], then kills it.
fn terminate(mut child: Child) -> Result<std::process::ExitStatus> {
    // SAFETY: kill(2) on the pid of a child process we spawned and have not yet reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + SERVER_STOP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().context("wait for the hindsight server")? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            child.kill().context("kill the hindsight server")?;
            let status = child.wait().context("reap the hindsight server")?;
            bail!("the hindsight server did not exit within {SERVER_STOP_TIMEOUT:?} of SIGTERM (killed: {status})");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads the server's stdout until its `listening on <addr>` line, within `timeout`. The
/// reader thread then keeps draining stdout so the server never blocks on a full pipe.
fn wait_for_listening(stdout: ChildStdout, timeout: Duration) -> Result<SocketAddr> {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("hindsight-stdout".into())
        .spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(addr) = parse_listening_line(&line) {
                        let _ = tx.send(Ok(addr));
                        sent = true;
                    }
                }
            }
            if !sent {
                let _ = tx.send(Err(()));
            }
        })
        .context("start the server stdout reader")?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(addr)) => Ok(addr),
        Ok(Err(())) => {
            bail!("the hindsight server exited before printing its ready line")
        }
        Err(_) => bail!("the hindsight server did not start listening within {timeout:?}"),
    }
}

/// The address in a server's ready line. Each reader reads one process's stdout, so the role
/// need not be checked: once `ReadyLine::parse` also accepts the replica's line (`hindsight
/// replica listening on …`), this serves both roles unchanged.
fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    hindsight_primary::ready::ReadyLine::parse(line)?.addr.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::latency_histogram;

    #[test]
    fn parses_the_listening_line() {
        assert_eq!(
            parse_listening_line(
                "hindsight primary listening on 127.0.0.1:40123 (system id 000000000123ABCD, data /tmp/x)"
            ),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(parse_listening_line("something else"), None);
    }

    #[test]
    fn json_has_ratios_and_top_level_figures() {
        let mut hist = latency_histogram();
        hist.record(1000).unwrap();
        let stats = CommitStats { txns: 1, elapsed: Duration::from_millis(1), hist };
        let run = |tps| ClientRun {
            stats: stats.clone(),
            tps,
            wal_bytes: Some(100),
            failed: 0,
            retried: 0,
            cpu: None,
        };
        let report = CommitReport {
            opts: CommitOptions {
                rows: 10,
                txns: 1,
                clients: vec![4, 16],
                compare_postgres: true,
                dir: None,
            },
            hindsight: vec![(4, Ok(run(2000.0))), (16, Ok(run(4000.0)))],
            postgres: vec![(4, Ok(run(1000.0))), (16, Err("boom".into()))],
            postgres_version: Some("postgres (PostgreSQL) 15".into()),
        };
        let j = report.to_json();
        assert_eq!(j["commit_tps"], json!(2000.0));
        assert_eq!(j["ratio_commit_tps"], json!(2.0));
        assert_eq!(j["ratio_latency_p99"], json!(1.0));
        assert!(j.get("ratio_commit_tps_16").is_none());
        assert_eq!(j["clients_16"]["commit_tps"], json!(4000.0));
        assert_eq!(j["postgres"]["clients_4"]["commit_latency_us_p99"], json!(1000));
        assert_eq!(j["postgres"]["clients_16"]["error"], json!("boom"));
        assert!(report.first_error().unwrap().contains("PostgreSQL with 16 clients"));
        assert!(report.to_table().contains("2.00x tps"));
    }
}
