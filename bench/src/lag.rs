//! The `lag` workload: one primary and one streaming replica, and (with `--compare postgres`)
//! a PostgreSQL 15 primary with a `pg_basebackup` standby, in the same run.
//!
//! Both systems go through the same phases, in this order:
//!
//! 1. **Load**: start the primary, load the shared `accounts` table ([`crate::workload`]),
//!    checkpoint.
//! 2. **Bootstrap** (`bootstrap_s`): read the primary's current Lsn (and, for hindsight, its
//!    state digest), then time from starting a replica on an empty data directory until its
//!    replay Lsn has reached that Lsn (and, for hindsight, its digest equals the primary's),
//!    polled every [`CATCH_UP_POLL_INTERVAL`]. hindsight: `hindsight replica --data EMPTY
//!    --primary ADDR …`, which bootstraps from a base backup the primary streams. PostgreSQL:
//!    `pg_basebackup -X stream -R` into a new directory, then `pg_ctl start -w`
//!    ([`Postgres::start_standby_of`]).
//! 3. **Lag phase**: once the primary lists the replica as streaming, synchronous and idle
//!    (replay lag NULL, so no reading is left over from before; see [`standby_ready`]), `txns`
//!    updates from `clients` connections with `synchronous_commit = local` set in every
//!    session, so no commit waits for the replica. A sampler thread reads the replica's replay
//!    lag from the primary every [`LAG_SAMPLE_INTERVAL`] — hindsight `SHOW REPLICATION`
//!    (`replay_lag_ms`), PostgreSQL `pg_stat_replication.replay_lag` — into an hdrhistogram in
//!    microseconds. NULL (nothing outstanding: the replica has applied
//!    everything it was sent) is counted apart, not recorded as zero. Afterwards the replica
//!    must catch up and hold the same balances as the primary.
//! 4. **remote_apply phase**: the same updates with `synchronous_commit = remote_apply` in every
//!    session, the replica being the one named synchronous standby: commit throughput and
//!    latency. Right after it, without waiting, the replica must show every update.
//!
//! The replica is named synchronous from before the lag phase on both sides (hindsight reads
//! `synchronous_standbys` from its configuration file at start; PostgreSQL gets
//! `synchronous_standby_names` by `ALTER SYSTEM` + `pg_reload_conf()` once the standby is up),
//! and each phase chooses its durability per session. A `local` commit never waits for a
//! standby whatever its `sync_state`, so in the lag phase the replica is asynchronous in all but
//! that label, and no server is reconfigured or restarted between phases.
//!
//! Each side's failure is kept in the report, so PostgreSQL's figures are printed even when the
//! hindsight side fails (the command then exits non-zero). See `docs/benchmarks.md`.

use crate::commit::{hindsight_binary, ClientRun, Server, ADMIN_SECRET_FILE, CLIENTS_MAX, LOG_TAIL_LINES};
use crate::postgres::{self, Postgres, PsqlSession, PG_REPLICATION_SETTINGS};
use crate::stats::{latency_histogram, round1, round3, thousands, work_dir, LATENCY_US_MAX};
use crate::workload::expected_balance_sum;
use anyhow::{anyhow, bail, ensure, Context, Result};
use hdrhistogram::Histogram;
use hindsight_primary::client::{Client, QueryResult, Value};
use hindsight_protocol::Lsn;
use serde_json::{json, Map, Value as Json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How often the replay lag is read during the lag phase.
pub const LAG_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);
/// How often the bench checks whether a replica has caught up: the resolution of `bootstrap_s`.
const CATCH_UP_POLL_INTERVAL: Duration = Duration::from_millis(2);
/// How often the bench checks a replica's row on the primary while waiting for a state.
const STATE_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The longest a replica may take from an empty data directory to caught up.
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(600);
/// The longest a replica may take to catch up after the lag phase.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(300);
/// The longest a replica may take to show up as streaming and synchronous on the primary.
const STATE_TIMEOUT: Duration = Duration::from_secs(60);
/// The hindsight replica's name (`--name`), as the primary's standby list refers to it.
pub const HINDSIGHT_REPLICA_NAME: &str = "replica1";
/// The PostgreSQL standby's `application_name`, as `synchronous_standby_names` refers to it.
pub const PG_STANDBY_NAME: &str = "standby1";
/// The `state` of a replica that is receiving WAL live (both systems).
const STREAMING_STATE: &str = "streaming";
/// The `sync_state` of the replica commits wait for under `FIRST 1 (…)` (both systems).
const SYNC_STATE: &str = "sync";
/// `synchronous_commit` in the sessions of the lag phase.
const LAG_PHASE_SYNCHRONOUS_COMMIT: &str = "local";
/// `synchronous_commit` in the sessions of the remote_apply phase.
const REMOTE_APPLY: &str = "remote_apply";
/// The hindsight primary's configuration file, in the work directory.
const PRIMARY_CONFIG_FILE: &str = "primary.toml";
/// The file holding the admin secret for `hindsight replica --password-file`.
const REPLICA_SECRET_FILE: &str = "replica.secret";

/// Options of the `lag` workload.
#[derive(Clone, Debug)]
pub struct LagOptions {
    /// Rows loaded.
    pub rows: u64,
    /// Update transactions per phase (lag phase and remote_apply phase each).
    pub txns: u64,
    /// Concurrent client connections in both phases.
    pub clients: usize,
    /// Also measure PostgreSQL.
    pub compare_postgres: bool,
    /// Skip hindsight (only with `compare_postgres`): measure PostgreSQL alone.
    pub skip_hindsight: bool,
    /// Parent of the hindsight work directory (default: the system temp dir).
    pub dir: Option<PathBuf>,
}

/// One reading of a replica's replay lag, taken on the primary.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LagSample {
    /// The replay lag in milliseconds.
    Lag(f64),
    /// NULL: nothing outstanding, the replica had applied everything it was sent.
    Idle,
    /// The replica was not listed at all (disconnected).
    Missing,
}

/// What the bench reads of one replica's row in `SHOW REPLICATION` / `pg_stat_replication`.
#[derive(Clone, Debug, PartialEq)]
struct StandbyState {
    state: String,
    sync_state: String,
    replay_lag_ms: Option<f64>,
}

impl LagSample {
    fn of(row: Option<&StandbyState>) -> LagSample {
        match row {
            None => LagSample::Missing,
            Some(StandbyState { replay_lag_ms: None, .. }) => LagSample::Idle,
            Some(StandbyState { replay_lag_ms: Some(ms), .. }) => LagSample::Lag(*ms),
        }
    }
}

/// The replay-lag readings of one lag phase.
///
/// Invariants:
/// - `hist` holds one value per [`LagSample::Lag`], in microseconds, clamped into
///   1 ..= [`LATENCY_US_MAX`] (a lag of 0 counts as 1 µs, a longer one than a minute as a minute).
/// - `idle` and `missing` count the other readings.
#[derive(Clone, Debug)]
pub struct LagSamples {
    hist: Histogram<u64>,
    idle: u64,
    missing: u64,
}

impl LagSamples {
    fn new() -> LagSamples {
        LagSamples { hist: latency_histogram(), idle: 0, missing: 0 }
    }

    fn record(&mut self, sample: LagSample) {
        match sample {
            LagSample::Lag(ms) => {
                // `as` saturates: NaN and negative lags become 0 and are clamped to 1 µs.
                let us = ((ms * 1000.0).round() as u64).clamp(1, LATENCY_US_MAX);
                self.hist.record(us).expect("a clamped lag is inside the histogram's range");
            }
            LagSample::Idle => self.idle += 1,
            LagSample::Missing => self.missing += 1,
        }
    }

    /// Readings with a lag.
    pub fn samples(&self) -> u64 {
        self.hist.len()
    }

    /// The lag at quantile `q` in milliseconds, `None` without readings.
    pub fn lag_ms(&self, q: f64) -> Option<f64> {
        (self.samples() > 0).then(|| self.hist.value_at_quantile(q) as f64 / 1000.0)
    }

    /// The largest lag read, in milliseconds.
    pub fn max_ms(&self) -> Option<f64> {
        (self.samples() > 0).then(|| self.hist.max() as f64 / 1000.0)
    }
}

/// What one system measured.
#[derive(Clone, Debug)]
pub struct SystemRun {
    /// From starting the replica on an empty directory until it had caught up.
    pub bootstrap: Duration,
    /// The replay lag during the lag phase.
    pub lag: LagSamples,
    /// The lag phase's commits (`synchronous_commit = local`).
    pub lag_phase: ClientRun,
    /// The remote_apply phase's commits, with the machine's CPU use while they ran.
    pub remote_apply: ClientRun,
}

impl SystemRun {
    /// The figures under the JSON keys both systems share.
    fn json_keys(&self) -> Map<String, Json> {
        let ms3 = |ms: Option<f64>| json!(ms.map(round3));
        let ra = &self.remote_apply.stats;
        let mut m = Map::new();
        m.insert("replay_lag_ms_p50".into(), ms3(self.lag.lag_ms(0.50)));
        m.insert("replay_lag_ms_p99".into(), ms3(self.lag.lag_ms(0.99)));
        m.insert("replay_lag_ms_max".into(), ms3(self.lag.max_ms()));
        m.insert("replay_lag_samples".into(), json!(self.lag.samples()));
        m.insert("replay_lag_null_samples".into(), json!(self.lag.idle));
        m.insert("bootstrap_s".into(), json!(round3(self.bootstrap.as_secs_f64())));
        m.insert("remote_apply_tps".into(), json!(round1(self.remote_apply.tps)));
        m.insert("remote_apply_p50_ms".into(), json!(round3(ra.latency_us(0.50) as f64 / 1000.0)));
        m.insert("remote_apply_p99_ms".into(), json!(round3(ra.latency_us(0.99) as f64 / 1000.0)));
        m.insert("remote_apply_txns".into(), json!(ra.txns));
        m.insert("lag_phase_tps".into(), json!(round1(self.lag_phase.tps)));
        m.insert("lag_phase_txns".into(), json!(self.lag_phase.stats.txns));
        m.insert(
            "remote_apply_cpu_us_per_commit".into(),
            json!(self.remote_apply_cpu_us_per_commit().map(round1)),
        );
        m.insert(
            "remote_apply_steal_pct".into(),
            json!(self.remote_apply.cpu.map(|c| round1(c.steal_pct()))),
        );
        m
    }

    /// The whole machine's busy CPU time per commit in the remote_apply phase: both servers,
    /// the client and the kernel's work for them.
    fn remote_apply_cpu_us_per_commit(&self) -> Option<f64> {
        self.remote_apply.cpu.and_then(|c| c.us_per(self.remote_apply.stats.txns))
    }
}

/// How a figure of the table is written.
#[derive(Clone, Copy, Debug)]
enum Unit {
    Seconds,
    Milliseconds,
    Microseconds,
    PerSecond,
}

impl Unit {
    fn format(self, x: f64) -> String {
        match self {
            Unit::Seconds => format!("{x:.3} s"),
            Unit::Milliseconds => format!("{x:.2} ms"),
            Unit::Microseconds => format!("{x:.0} us"),
            Unit::PerSecond => thousands(x),
        }
    }
}

/// One row of the table: a figure both systems have.
struct TableFigure {
    label: &'static str,
    value: fn(&SystemRun) -> Option<f64>,
    /// Throughput (the ratio is hindsight / PostgreSQL) rather than a time (PostgreSQL /
    /// hindsight), so that a ratio above 1 always favours hindsight.
    higher_is_better: bool,
    unit: Unit,
}

/// The table's rows, in order.
const TABLE_FIGURES: [TableFigure; 9] = [
    TableFigure {
        label: "bootstrap: empty dir to caught up",
        value: |r| Some(r.bootstrap.as_secs_f64()),
        higher_is_better: false,
        unit: Unit::Seconds,
    },
    TableFigure {
        label: "replay lag p50",
        value: |r| r.lag.lag_ms(0.50),
        higher_is_better: false,
        unit: Unit::Milliseconds,
    },
    TableFigure {
        label: "replay lag p99",
        value: |r| r.lag.lag_ms(0.99),
        higher_is_better: false,
        unit: Unit::Milliseconds,
    },
    TableFigure {
        label: "replay lag max",
        value: |r| r.lag.max_ms(),
        higher_is_better: false,
        unit: Unit::Milliseconds,
    },
    TableFigure {
        label: "lag phase commit_tps (local)",
        value: |r| Some(r.lag_phase.tps),
        higher_is_better: true,
        unit: Unit::PerSecond,
    },
    TableFigure {
        label: "remote_apply commit_tps",
        value: |r| Some(r.remote_apply.tps),
        higher_is_better: true,
        unit: Unit::PerSecond,
    },
    TableFigure {
        label: "remote_apply commit p50",
        value: |r| Some(r.remote_apply.stats.latency_us(0.50) as f64 / 1000.0),
        higher_is_better: false,
        unit: Unit::Milliseconds,
    },
    TableFigure {
        label: "remote_apply commit p99",
        value: |r| Some(r.remote_apply.stats.latency_us(0.99) as f64 / 1000.0),
        higher_is_better: false,
        unit: Unit::Milliseconds,
    },
    TableFigure {
        label: "remote_apply CPU per commit (machine)",
        value: SystemRun::remote_apply_cpu_us_per_commit,
        higher_is_better: false,
        unit: Unit::Microseconds,
    },
];

/// Everything the `lag` workload measured; a side that failed holds its error, a side that was
/// not run is `None`.
#[derive(Debug)]
pub struct LagReport {
    opts: LagOptions,
    hindsight: Option<Result<SystemRun, String>>,
    postgres: Option<Result<SystemRun, String>>,
    postgres_version: Option<String>,
}

impl LagReport {
    /// The first error of either side, if any (the report is still printed first).
    pub fn first_error(&self) -> Option<String> {
        [("hindsight", &self.hindsight), ("PostgreSQL", &self.postgres)]
            .into_iter()
            .find_map(|(side, r)| r.as_ref()?.as_ref().err().map(|e| format!("{side}: {e}")))
    }

    fn ok(side: &Option<Result<SystemRun, String>>) -> Option<&SystemRun> {
        side.as_ref()?.as_ref().ok()
    }

    /// The report as one JSON object: hindsight's figures at the top level (or `error`), the same
    /// figures for PostgreSQL under `postgres` (with `version`), and `ratio_remote_apply_tps`
    /// (hindsight / PostgreSQL) and `ratio_replay_lag_p99` (PostgreSQL / hindsight), both above
    /// 1 when hindsight does better.
    pub fn to_json(&self) -> Json {
        let mut m = Map::new();
        m.insert("workload".into(), json!("lag"));
        let params = |m: &mut Map<String, Json>| {
            m.insert("rows".into(), json!(self.opts.rows));
            m.insert("txns".into(), json!(self.opts.txns));
            m.insert("clients".into(), json!(self.opts.clients));
        };
        params(&mut m);
        match &self.hindsight {
            Some(Ok(run)) => m.extend(run.json_keys()),
            Some(Err(e)) => {
                m.insert("error".into(), json!(e));
            }
            None => {
                m.insert("hindsight".into(), json!("skipped"));
            }
        }
        if let Some(result) = &self.postgres {
            let mut pg = Map::new();
            params(&mut pg);
            match result {
                Ok(run) => pg.extend(run.json_keys()),
                Err(e) => {
                    pg.insert("error".into(), json!(e));
                }
            }
            if let Some(v) = &self.postgres_version {
                pg.insert("version".into(), json!(v));
            }
            m.insert("postgres".into(), Json::Object(pg));
        }
        if let (Some(h), Some(p)) = (LagReport::ok(&self.hindsight), LagReport::ok(&self.postgres)) {
            if p.remote_apply.tps > 0.0 {
                m.insert(
                    "ratio_remote_apply_tps".into(),
                    json!(round3(h.remote_apply.tps / p.remote_apply.tps)),
                );
            }
            if let (Some(hl), Some(pl)) = (h.lag.lag_ms(0.99), p.lag.lag_ms(0.99)) {
                m.insert("ratio_replay_lag_p99".into(), json!(round3(pl / hl)));
            }
        }
        Json::Object(m)
    }

    /// The report as a readable table.
    pub fn to_table(&self) -> String {
        let mut out = format!(
            "lag workload: {} rows, {} update txns per phase, {} clients, one streaming replica (fsync on both sides)\n",
            thousands(self.opts.rows as f64),
            thousands(self.opts.txns as f64),
            self.opts.clients
        );
        if let Some(v) = &self.postgres_version {
            out.push_str(&format!(
                "PostgreSQL: {v}, measured in this run (pg_basebackup standby, pgbench)\n"
            ));
        }
        out.push('\n');
        let h = LagReport::ok(&self.hindsight);
        let p = LagReport::ok(&self.postgres);
        let cell = |side: &Option<Result<SystemRun, String>>, text: Option<String>| match side {
            None => "skipped".to_string(),
            Some(Err(_)) => "error (below)".to_string(),
            Some(Ok(_)) => text.unwrap_or_else(|| "-".to_string()),
        };
        let mut rows = Vec::new();
        for figure in TABLE_FIGURES {
            let hv = h.and_then(figure.value);
            let pv = p.and_then(figure.value);
            let ratio = match (hv, pv) {
                (Some(hv), Some(pv)) if hv > 0.0 && pv > 0.0 => {
                    format!("{:.2}x", if figure.higher_is_better { hv / pv } else { pv / hv })
                }
                _ => String::new(),
            };
            let pg_cell = if self.postgres.is_some() {
                cell(&self.postgres, pv.map(|v| figure.unit.format(v)))
            } else {
                String::new()
            };
            rows.push([
                figure.label.to_string(),
                cell(&self.hindsight, hv.map(|v| figure.unit.format(v))),
                pg_cell,
                ratio,
            ]);
        }
        let samples = |r: &SystemRun| format!("{} (+{} NULL)", r.lag.samples(), r.lag.idle);
        let stolen = |r: &SystemRun| r.remote_apply.cpu.map(|c| format!("{:.1}%", c.steal_pct()));
        let pg_text = |text: Option<String>| {
            if self.postgres.is_some() {
                cell(&self.postgres, text)
            } else {
                String::new()
            }
        };
        rows.push([
            "lag samples every 10 ms".to_string(),
            cell(&self.hindsight, h.map(samples)),
            pg_text(p.map(samples)),
            String::new(),
        ]);
        rows.push([
            "CPU stolen by the host, remote_apply".to_string(),
            cell(&self.hindsight, h.and_then(stolen)),
            pg_text(p.and_then(stolen)),
            String::new(),
        ]);
        out.push_str(&crate::format_table(&["metric", "hindsight", "PostgreSQL", "vs PostgreSQL"], &rows));
        out.push_str(
            "\nvs PostgreSQL: how many times better hindsight is (PostgreSQL / hindsight for times, lags and CPU, \
             hindsight / PostgreSQL for throughput)\n\
             CPU per commit: the whole machine's busy time while the transactions ran (both servers, the client, \
             the kernel) per commit; phases with much CPU stolen ran on a slower machine\n",
        );
        for (system, side) in [("hindsight", &self.hindsight), ("PostgreSQL", &self.postgres)] {
            if let Some(Err(e)) = side {
                out.push_str(&format!("error: {system}: {e}\n"));
            }
        }
        out
    }
}

/// Runs the workload on hindsight and (when asked) PostgreSQL. Each side's failure is kept in
/// the report; the caller exits non-zero after printing it.
pub fn run(opts: &LagOptions) -> Result<LagReport> {
    if opts.rows == 0 || opts.txns == 0 || opts.clients == 0 {
        bail!("--rows, --txns and --clients must be positive");
    }
    if opts.clients > CLIENTS_MAX {
        bail!("--clients {} is more than {CLIENTS_MAX}", opts.clients);
    }
    if opts.skip_hindsight && !opts.compare_postgres {
        bail!("skipping hindsight leaves nothing to measure without --compare postgres");
    }
    let pg_bin = if opts.compare_postgres { Some(postgres::require_bin_dir()?) } else { None };
    let mut report =
        LagReport { opts: opts.clone(), hindsight: None, postgres: None, postgres_version: None };
    if !opts.skip_hindsight {
        eprintln!("lag: hindsight");
        report.hindsight = Some(run_hindsight(opts).map_err(|e| format!("{e:#}")));
    }
    if let Some(bin) = &pg_bin {
        eprintln!("lag: PostgreSQL");
        report.postgres =
            Some(run_postgres(bin, opts, &mut report.postgres_version).map_err(|e| format!("{e:#}")));
    }
    Ok(report)
}

/// What a polled condition looked like at one check.
enum Check {
    /// The condition holds.
    Met,
    /// Not yet; what was seen, for the error if the deadline passes.
    NotYet(String),
}

/// Checks `check` every `interval` until it is met, failing after `timeout` with the last thing
/// it saw.
fn poll_until(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<Check>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match check().with_context(|| format!("wait for {what}"))? {
            Check::Met => return Ok(()),
            Check::NotYet(seen) if Instant::now() >= deadline => {
                bail!("{what}: not within {timeout:?}; last seen: {seen}")
            }
            Check::NotYet(_) => std::thread::sleep(interval),
        }
    }
}

/// Sets the flag when dropped, so a sampler stops even when the phase beside it fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `phase` on this thread while a sampler thread calls `sample` every
/// [`LAG_SAMPLE_INTERVAL`]. The sampler opens its own connection with `open` first, and the
/// phase starts only once it has (so the first commits are sampled); it stops when the phase
/// ends, however it ends.
fn sampled_phase<S, T>(
    open: impl FnOnce() -> Result<S> + Send,
    mut sample: impl FnMut(&mut S) -> Result<LagSample> + Send,
    phase: impl FnOnce() -> Result<T>,
) -> Result<(T, LagSamples)> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let (opened_tx, opened_rx) = mpsc::sync_channel::<bool>(1);
        let stop = &stop;
        let sampler = std::thread::Builder::new()
            .name("lag-sampler".into())
            .spawn_scoped(scope, move || -> Result<LagSamples> {
                let opened = open();
                let _ = opened_tx.send(opened.is_ok());
                let mut state = opened.context("open the lag sampler's connection")?;
                sample_every(LAG_SAMPLE_INTERVAL, stop, || sample(&mut state))
            })
            .context("start the lag sampler thread")?;
        // `false` or a closed channel: the sampler failed to open; its error is in the join.
        let opened = opened_rx.recv().unwrap_or(false);
        let result = {
            let _stop = StopOnDrop(stop);
            if opened {
                Some(phase())
            } else {
                None
            }
        };
        let samples = sampler.join().map_err(|_| anyhow!("the lag sampler thread panicked"))?;
        match result {
            Some(result) => Ok((result?, samples?)),
            None => Err(samples.err().unwrap_or_else(|| anyhow!("the lag sampler did not start"))),
        }
    })
}

/// Records `sample()` every `interval` until `stop` is set. A reading that takes longer than the
/// interval makes the sampler skip the ticks it missed rather than catch up in a burst.
fn sample_every(
    interval: Duration,
    stop: &AtomicBool,
    mut sample: impl FnMut() -> Result<LagSample>,
) -> Result<LagSamples> {
    assert!(!interval.is_zero(), "a zero sampling interval");
    let mut samples = LagSamples::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::Acquire) {
        samples.record(sample()?);
        next += interval;
        let now = Instant::now();
        while next <= now {
            next += interval;
        }
        std::thread::sleep(next - now);
    }
    Ok(samples)
}

/// Fails when the replica dropped out of the primary's list during the lag phase: its lag
/// readings would then describe a reconnecting replica, not a streaming one.
fn check_no_missing(samples: &LagSamples, name: &str) -> Result<()> {
    ensure!(
        samples.missing == 0,
        "{name} was missing from the primary's replication list in {} of {} readings",
        samples.missing,
        samples.missing + samples.idle + samples.samples()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// hindsight

/// The hindsight primary's configuration: local commits by default, the replica named as the
/// synchronous standby (only `remote_*` sessions wait for it).
fn hindsight_primary_config() -> String {
    format!(
        "# Written by hindsight-bench lag.\n\
         synchronous_commit = \"{LAG_PHASE_SYNCHRONOUS_COMMIT}\"\n\
         synchronous_standbys = \"FIRST 1 ({HINDSIGHT_REPLICA_NAME})\"\n"
    )
}

/// The `SET` a session of a phase starts with.
fn set_synchronous_commit(value: &str) -> String {
    format!("SET synchronous_commit = {value}")
}

/// What `SHOW STATUS` says of a server's position and state.
#[derive(Clone, Debug, PartialEq)]
struct Position {
    /// `current_lsn`: the last visible commit (on a replica, the replay Lsn).
    lsn: Lsn,
    /// `digest`: the state digest there.
    digest: String,
}

/// Parses `SHOW STATUS` (rows `name | value`).
fn parse_status(results: &[QueryResult]) -> Result<Position> {
    let [result] = results else { bail!("SHOW STATUS returned {} results, expected 1", results.len()) };
    let get = |name: &str| -> Result<&str> {
        result
            .rows
            .iter()
            .find(|row| row.first().and_then(Value::as_str) == Some(name))
            .and_then(|row| row.get(1)?.as_str())
            .with_context(|| format!("SHOW STATUS has no text row {name:?}"))
    };
    let lsn_text = get("current_lsn")?;
    let lsn = lsn_text.parse().map_err(|e| anyhow!("parse SHOW STATUS current_lsn {lsn_text:?}: {e}"))?;
    Ok(Position { lsn, digest: get("digest")?.to_string() })
}

/// Finds `name`'s row in `SHOW REPLICATION` (columns found by name).
fn parse_show_replication(results: &[QueryResult], name: &str) -> Result<Option<StandbyState>> {
    let [result] = results else { bail!("SHOW REPLICATION returned {} results, expected 1", results.len()) };
    let column = |wanted: &str| {
        result
            .columns
            .iter()
            .position(|c| c.name == wanted)
            .with_context(|| format!("SHOW REPLICATION has no column {wanted:?}"))
    };
    let (name_at, state_at, sync_at, lag_at) =
        (column("name")?, column("state")?, column("sync_state")?, column("replay_lag_ms")?);
    let text = |row: &[Value], at: usize| match row.get(at) {
        Some(Value::Text(t)) => t.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let mut found = result.rows.iter().filter(|row| row.get(name_at).and_then(Value::as_str) == Some(name));
    let Some(row) = found.next() else { return Ok(None) };
    ensure!(found.next().is_none(), "SHOW REPLICATION lists {name} more than once");
    let replay_lag_ms = match row.get(lag_at) {
        Some(Value::Null) => None,
        Some(Value::Double(ms)) => Some(*ms),
        Some(Value::Int(ms)) => Some(*ms as f64),
        other => bail!("SHOW REPLICATION replay_lag_ms for {name} is {other:?}, expected a DOUBLE or NULL"),
    };
    Ok(Some(StandbyState { state: text(row, state_at), sync_state: text(row, sync_at), replay_lag_ms }))
}

/// A client of one hindsight server with its own blocking entry points.
struct Session<'rt> {
    runtime: &'rt tokio::runtime::Runtime,
    client: Client,
}

impl Session<'_> {
    fn connect<'rt>(
        runtime: &'rt tokio::runtime::Runtime,
        addr: SocketAddr,
        secret: &str,
    ) -> Result<Session<'rt>> {
        Ok(Session { runtime, client: runtime.block_on(crate::client::connect(addr, secret))? })
    }

    fn query(&mut self, sql: &str) -> Result<Vec<QueryResult>> {
        self.runtime.block_on(crate::client::query(&mut self.client, sql))
    }

    fn position(&mut self) -> Result<Position> {
        parse_status(&self.query("SHOW STATUS")?)
    }

    fn replica(&mut self, name: &str) -> Result<Option<StandbyState>> {
        parse_show_replication(&self.query("SHOW REPLICATION")?, name)
    }

    fn balance_sum(&mut self) -> Result<i64> {
        self.runtime.block_on(crate::client::balance_sum(&mut self.client))
    }

    fn close(self) {
        self.runtime.block_on(self.client.close());
    }
}

/// Whether the replica at `replica` has replayed up to `target` with the same digest. The
/// primary is idle while this is polled, so a different digest at or past the target Lsn is a
/// replay bug, reported at once.
fn hindsight_caught_up(replica: &mut Session<'_>, target: &Position) -> Result<Check> {
    let at = replica.position()?;
    if at.lsn < target.lsn {
        return Ok(Check::NotYet(format!("replay Lsn {} (target {})", at.lsn, target.lsn)));
    }
    ensure!(
        at.digest == target.digest,
        "the replica replayed to {} with digest {}, but the primary's digest at {} is {}",
        at.lsn,
        at.digest,
        target.lsn,
        target.digest
    );
    Ok(Check::Met)
}

/// Waits until the primary lists the replica as ready for the lag phase ([`standby_ready`]).
fn hindsight_wait_ready(primary: &mut Session<'_>) -> Result<()> {
    poll_until(
        &standby_ready_what(HINDSIGHT_REPLICA_NAME, "SHOW REPLICATION"),
        STATE_TIMEOUT,
        STATE_POLL_INTERVAL,
        || standby_ready(primary.replica(HINDSIGHT_REPLICA_NAME)?),
    )
}

/// What [`standby_ready`] waits for, for messages.
fn standby_ready_what(name: &str, list: &str) -> String {
    format!("{name} to be {STREAMING_STATE}, {SYNC_STATE} and idle (replay lag NULL) in {list}")
}

/// Whether a replica's row says it is ready for the lag phase: streaming, synchronous, and
/// idle — its replay lag NULL. The last matters for the measurement: PostgreSQL keeps showing
/// the last lag it measured until it sees the standby idle, and the last one before the phase
/// is from the standby's start-up (about 100 ms; without this wait it filled the first readings
/// of every phase and was the phase's p99 in short runs). Starting from NULL (hindsight's
/// contract: NULL means caught up and idle), every lag read in the phase was measured on the
/// phase's own WAL. PostgreSQL turns the lag NULL at the second fully-applied reply in a row,
/// i.e. after up to two `wal_receiver_status_interval`s (10 s each) of quiet.
fn standby_ready(row: Option<StandbyState>) -> Result<Check> {
    Ok(match row {
        Some(s) if s.state == STREAMING_STATE && s.sync_state == SYNC_STATE && s.replay_lag_ms.is_none() => {
            Check::Met
        }
        Some(s) => Check::NotYet(format!(
            "state {:?}, sync_state {:?}, replay lag {:?} ms",
            s.state, s.sync_state, s.replay_lag_ms
        )),
        None => Check::NotYet("not listed".into()),
    })
}

/// Checks that a session that runs `SET synchronous_commit = value` shows it back, as the update
/// phase's sessions will.
fn check_session_setting(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    secret: &str,
    value: &str,
) -> Result<()> {
    let mut session = Session::connect(runtime, addr, secret)?;
    session.query(&set_synchronous_commit(value))?;
    let shown = session.query("SHOW synchronous_commit")?;
    let shown = shown.first().and_then(|r| r.rows.first()?.first()?.as_str().map(str::to_string));
    session.close();
    ensure!(
        shown.as_deref() == Some(value),
        "a session that set synchronous_commit = {value} shows {shown:?}"
    );
    Ok(())
}

/// Writes the admin secret for `--password-file`, readable by its owner only.
fn write_secret_file(path: &Path, secret: &str) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("create {}", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("write {}", path.display()))
}

/// The hindsight measurement: a primary and a replica in a fresh work directory.
fn run_hindsight(opts: &LagOptions) -> Result<SystemRun> {
    let bin = hindsight_binary()?;
    let work = work_dir(opts.dir.as_deref())?;
    let primary_data = work.path().join("primary");
    let replica_data = work.path().join("replica");
    let config = work.path().join(PRIMARY_CONFIG_FILE);
    let primary_log = work.path().join("primary.log");
    let replica_log = work.path().join("replica.log");
    let logs = || {
        format!(
            "the primary's log ends:\n{}\nthe replica's log ends:\n{}",
            postgres::tail(&primary_log, LOG_TAIL_LINES),
            postgres::tail(&replica_log, LOG_TAIL_LINES)
        )
    };
    std::fs::write(&config, hindsight_primary_config())
        .with_context(|| format!("write {}", config.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hindsight-bench-client")
        .build()
        .context("start the client runtime")?;

    let primary = Server::start_primary(&bin, &primary_data, Some(&config), &primary_log)?;
    let secret_path = primary_data.join(ADMIN_SECRET_FILE);
    let secret = std::fs::read_to_string(&secret_path)
        .with_context(|| format!("read the admin secret from {}", secret_path.display()))?;
    let secret = secret.trim();
    let mut admin = Session::connect(&runtime, primary.addr, secret)?;
    eprintln!("lag: hindsight, loading {} rows", thousands(opts.rows as f64));
    runtime.block_on(crate::client::load_accounts(&mut admin.client, opts.rows))?;

    // Phase 2: an empty directory to a caught-up replica.
    let secret_file = work.path().join(REPLICA_SECRET_FILE);
    write_secret_file(&secret_file, secret)?;
    std::fs::create_dir(&replica_data).with_context(|| format!("create {}", replica_data.display()))?;
    let target = admin.position()?;
    eprintln!("lag: hindsight, bootstrapping {HINDSIGHT_REPLICA_NAME} up to {}", target.lsn);
    let started = Instant::now();
    let replica = Server::start_replica(
        &bin,
        &replica_data,
        primary.addr,
        &secret_file,
        HINDSIGHT_REPLICA_NAME,
        &replica_log,
        BOOTSTRAP_TIMEOUT,
    )?;
    let mut on_replica = Session::connect(&runtime, replica.addr, secret)?;
    poll_until(
        "the replica to catch up with the primary",
        BOOTSTRAP_TIMEOUT.saturating_sub(started.elapsed()),
        CATCH_UP_POLL_INTERVAL,
        || hindsight_caught_up(&mut on_replica, &target),
    )
    .with_context(logs)?;
    let bootstrap = started.elapsed();
    eprintln!("lag: hindsight, bootstrap took {:.3} s", bootstrap.as_secs_f64());
    hindsight_wait_ready(&mut admin).with_context(logs)?;

    // Phase 3: local commits, replay lag sampled on the primary.
    eprintln!("lag: hindsight, lag phase ({} txns)", thousands(opts.txns as f64));
    let local = set_synchronous_commit(LAG_PHASE_SYNCHRONOUS_COMMIT);
    let (lag_phase, lag) = sampled_phase(
        || Session::connect(&runtime, primary.addr, secret),
        |s| Ok(LagSample::of(s.replica(HINDSIGHT_REPLICA_NAME)?.as_ref())),
        || {
            runtime.block_on(crate::client::update_phase(
                primary.addr,
                secret,
                opts.rows,
                opts.txns,
                opts.clients,
                &[&local],
            ))
        },
    )
    .with_context(logs)?;
    check_no_missing(&lag, HINDSIGHT_REPLICA_NAME)?;
    let end = admin.position()?;
    poll_until(
        "the replica to catch up after the lag phase",
        CATCH_UP_TIMEOUT,
        CATCH_UP_POLL_INTERVAL,
        || hindsight_caught_up(&mut on_replica, &end),
    )
    .with_context(logs)?;
    let expected = expected_balance_sum(opts.rows, lag_phase.stats.txns);
    for (side, session) in [("primary", &mut admin), ("replica", &mut on_replica)] {
        let sum = session.balance_sum()?;
        ensure!(
            sum == expected,
            "after the lag phase the {side}'s balances sum to {sum}, expected {expected}"
        );
    }

    // Phase 4: remote_apply commits.
    eprintln!("lag: hindsight, remote_apply phase ({} txns)", thousands(opts.txns as f64));
    check_session_setting(&runtime, primary.addr, secret, REMOTE_APPLY)?;
    let remote_apply = runtime
        .block_on(crate::client::update_phase(
            primary.addr,
            secret,
            opts.rows,
            opts.txns,
            opts.clients,
            &[&set_synchronous_commit(REMOTE_APPLY)],
        ))
        .with_context(logs)?;
    // remote_apply: every acknowledged commit is visible on the replica, so no waiting here.
    let expected = expected_balance_sum(opts.rows, lag_phase.stats.txns + remote_apply.stats.txns);
    let sum = on_replica.balance_sum()?;
    ensure!(
        sum == expected,
        "right after the remote_apply phase the replica's balances sum to {sum}, expected {expected}: \
         an acknowledged remote_apply commit was not visible on the replica"
    );

    on_replica.close();
    admin.close();
    replica.stop().with_context(|| format!("stop the replica ({})", logs()))?;
    primary.stop().with_context(|| format!("stop the primary ({})", logs()))?;
    Ok(SystemRun { bootstrap, lag, lag_phase, remote_apply })
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL

/// The query reading the standby's row in `pg_stat_replication`. It always returns one row (a
/// [`PsqlSession`] needs that): the number of matching rows, then their state, sync state and
/// replay lag in milliseconds (NULL when nothing is outstanding).
fn pg_standby_query() -> String {
    format!(
        "SELECT count(*), max(state), max(sync_state), max(EXTRACT(EPOCH FROM replay_lag) * 1000) \
         FROM pg_stat_replication WHERE application_name = '{PG_STANDBY_NAME}'"
    )
}

/// Parses the line of [`pg_standby_query`]: `1|streaming|sync|0.532000`, `1|streaming|async|`,
/// or `0|||`.
fn parse_pg_standby_line(line: &str) -> Result<Option<StandbyState>> {
    let fields: Vec<&str> = line.split('|').collect();
    let [count, state, sync_state, lag] = fields.as_slice() else {
        bail!("pg_stat_replication query returned {line:?}, expected 4 fields");
    };
    match *count {
        "0" => Ok(None),
        "1" => {
            let replay_lag_ms = match *lag {
                "" => None,
                ms => Some(ms.parse().with_context(|| format!("parse the replay lag {ms:?}"))?),
            };
            Ok(Some(StandbyState {
                state: state.to_string(),
                sync_state: sync_state.to_string(),
                replay_lag_ms,
            }))
        }
        n => bail!("pg_stat_replication lists {n} standbys named {PG_STANDBY_NAME}, expected at most 1"),
    }
}

/// The standby's row in the primary's `pg_stat_replication`.
fn pg_standby_state(session: &mut PsqlSession) -> Result<Option<StandbyState>> {
    parse_pg_standby_line(&session.query_line(&pg_standby_query())?)
}

/// Whether the standby has replayed up to `target`.
fn pg_caught_up(standby: &mut PsqlSession, target: Lsn) -> Result<Check> {
    let line = standby.query_line(&format!(
        "SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn, pg_last_wal_replay_lsn()"
    ))?;
    Ok(match line.split_once('|') {
        Some(("t", _)) => Check::Met,
        Some(("f" | "", at)) => Check::NotYet(format!("replay Lsn {at:?} (target {target})")),
        _ => bail!("pg_last_wal_replay_lsn() query returned {line:?}"),
    })
}

/// The primary's `pg_current_wal_lsn()`, in hindsight's Lsn type (same `X/Y` text).
fn pg_current_lsn(pg: &Postgres) -> Result<Lsn> {
    let text = pg.current_wal_lsn()?;
    text.parse().map_err(|e| anyhow!("parse pg_current_wal_lsn() {text:?}: {e}"))
}

/// The PostgreSQL measurement: a fresh primary cluster and a standby made from it.
fn run_postgres(bin: &Path, opts: &LagOptions, version: &mut Option<String>) -> Result<SystemRun> {
    let primary = Postgres::start_with(bin, &PG_REPLICATION_SETTINGS)?;
    *version = Some(primary.version().to_string());
    eprintln!("lag: PostgreSQL, loading {} rows", thousands(opts.rows as f64));
    primary.load_accounts(opts.rows)?;

    // Phase 2: nothing to a caught-up standby.
    let standby = primary.prepare_standby()?;
    // Opened on the primary and moved to the standby once it runs (see `PsqlSession::reconnect`).
    let mut on_standby = primary.session("standby")?;
    let target = pg_current_lsn(&primary)?;
    eprintln!("lag: PostgreSQL, bootstrapping {PG_STANDBY_NAME} up to {target}");
    let started = Instant::now();
    let standby = standby.start_standby_of(&primary, PG_STANDBY_NAME)?;
    on_standby.reconnect(&standby)?;
    poll_until(
        "the standby to replay up to the primary's Lsn",
        BOOTSTRAP_TIMEOUT.saturating_sub(started.elapsed()),
        CATCH_UP_POLL_INTERVAL,
        || pg_caught_up(&mut on_standby, target),
    )?;
    let bootstrap = started.elapsed();
    eprintln!("lag: PostgreSQL, bootstrap took {:.3} s", bootstrap.as_secs_f64());
    // A server setting (no session may set it); ALTER SYSTEM refuses to run inside a
    // transaction block, hence two psql calls.
    primary.psql(&format!("ALTER SYSTEM SET synchronous_standby_names = '{PG_STANDBY_NAME}'"))?;
    primary.psql("SELECT pg_reload_conf()")?;
    let mut on_primary = primary.session("primary")?;
    poll_until(
        &standby_ready_what(PG_STANDBY_NAME, "pg_stat_replication"),
        STATE_TIMEOUT,
        STATE_POLL_INTERVAL,
        || standby_ready(pg_standby_state(&mut on_primary)?),
    )?;

    // Phase 3: local commits, replay lag sampled on the primary.
    eprintln!("lag: PostgreSQL, lag phase ({} txns)", thousands(opts.txns as f64));
    let local = [("synchronous_commit", LAG_PHASE_SYNCHRONOUS_COMMIT)];
    let (lag_phase, lag) = sampled_phase(
        || primary.session("sampler"),
        |s| Ok(LagSample::of(pg_standby_state(s)?.as_ref())),
        || primary.pgbench_updates_with(opts.rows, opts.txns, opts.clients, &local),
    )?;
    check_no_missing(&lag, PG_STANDBY_NAME)?;
    let end = pg_current_lsn(&primary)?;
    poll_until(
        "the standby to catch up after the lag phase",
        CATCH_UP_TIMEOUT,
        CATCH_UP_POLL_INTERVAL,
        || pg_caught_up(&mut on_standby, end),
    )?;
    let expected = expected_balance_sum(opts.rows, lag_phase.stats.txns);
    for (side, pg) in [("primary", &primary), ("standby", &standby)] {
        let sum = pg.balance_sum()?;
        ensure!(
            sum == expected,
            "after the lag phase the {side}'s balances sum to {sum}, expected {expected}"
        );
    }

    // Phase 4: remote_apply commits.
    eprintln!("lag: PostgreSQL, remote_apply phase ({} txns)", thousands(opts.txns as f64));
    let remote_apply = [("synchronous_commit", REMOTE_APPLY)];
    let shown = primary.psql_with(&remote_apply, "SHOW synchronous_commit")?;
    ensure!(
        shown == REMOTE_APPLY,
        "a session started with synchronous_commit={REMOTE_APPLY} shows {shown:?}"
    );
    let remote_apply = primary.pgbench_updates_with(opts.rows, opts.txns, opts.clients, &remote_apply)?;
    let expected = expected_balance_sum(opts.rows, lag_phase.stats.txns + remote_apply.stats.txns);
    let sum = standby.balance_sum()?;
    ensure!(
        sum == expected,
        "right after the remote_apply phase the standby's balances sum to {sum}, expected {expected}"
    );

    drop(on_standby);
    drop(on_primary);
    let (mut standby, mut primary) = (standby, primary);
    standby.stop()?;
    primary.stop()?;
    Ok(SystemRun { bootstrap, lag, lag_phase: lag_phase.into(), remote_apply: remote_apply.into() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::CpuUse;
    use crate::stats::CommitStats;
    use hindsight_primary::client::{Column, ColumnType};

    fn text(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn result(columns: &[&str], rows: Vec<Vec<Value>>) -> QueryResult {
        QueryResult {
            has_result_set: true,
            columns: columns
                .iter()
                .map(|n| Column { name: n.to_string(), column_type: ColumnType::Text })
                .collect(),
            rows,
            ..QueryResult::default()
        }
    }

    #[test]
    fn lag_samples_skip_nulls_and_clamp() {
        let mut s = LagSamples::new();
        for sample in [
            LagSample::Lag(1.5),
            LagSample::Lag(0.0),
            LagSample::Lag(-3.0),
            LagSample::Idle,
            LagSample::Missing,
            LagSample::Lag(1e9),
        ] {
            s.record(sample);
        }
        assert_eq!((s.samples(), s.idle, s.missing), (4, 1, 1));
        assert_eq!(s.hist.min(), 1);
        assert!(s.max_ms().unwrap() >= LATENCY_US_MAX as f64 / 1000.0);
        let p50 = s.lag_ms(0.5).unwrap();
        assert!((p50 - 0.001).abs() < 1e-9, "p50 {p50}");
        assert_eq!(LagSamples::new().lag_ms(0.99), None);
        assert!(check_no_missing(&s, "r").unwrap_err().to_string().contains("1 of 6"));
    }

    #[test]
    fn show_replication_is_read_by_column_name() {
        let columns = [
            "name",
            "client_addr",
            "state",
            "sent_lsn",
            "write_lsn",
            "flush_lsn",
            "replay_lsn",
            "write_lag_ms",
            "flush_lag_ms",
            "replay_lag_ms",
            "sync_state",
            "slot",
            "slot_restart_lsn",
            "slot_status",
        ];
        let row = |name: &str, lag: Value| {
            let mut r: Vec<Value> = columns.iter().map(|_| Value::Null).collect();
            r[0] = text(name);
            r[2] = text("streaming");
            r[9] = lag;
            r[10] = text("sync");
            r
        };
        let res = vec![result(
            &columns,
            vec![row("other", Value::Double(9.0)), row("replica1", Value::Double(2.5))],
        )];
        let got = parse_show_replication(&res, "replica1").unwrap().unwrap();
        assert_eq!(
            got,
            StandbyState { state: "streaming".into(), sync_state: "sync".into(), replay_lag_ms: Some(2.5) }
        );
        assert_eq!(LagSample::of(Some(&got)), LagSample::Lag(2.5));
        let idle = vec![result(&columns, vec![row("replica1", Value::Null)])];
        assert_eq!(
            LagSample::of(parse_show_replication(&idle, "replica1").unwrap().as_ref()),
            LagSample::Idle
        );
        assert_eq!(parse_show_replication(&idle, "nobody").unwrap(), None);
        assert_eq!(LagSample::of(None), LagSample::Missing);
        let twice = vec![result(&columns, vec![row("replica1", Value::Null), row("replica1", Value::Null)])];
        assert!(parse_show_replication(&twice, "replica1").is_err());
        let bad = vec![result(&columns, vec![row("replica1", text("1 ms"))])];
        assert!(parse_show_replication(&bad, "replica1").is_err());
        assert!(parse_show_replication(&[result(&["name"], vec![])], "replica1").is_err());
    }

    #[test]
    fn show_status_gives_position_and_digest() {
        let res = vec![result(
            &["name", "value"],
            vec![
                vec![text("role"), text("replica")],
                vec![text("current_lsn"), text("0/1A2B3C8")],
                vec![text("digest"), text("00000000deadbeef")],
            ],
        )];
        assert_eq!(
            parse_status(&res).unwrap(),
            Position { lsn: Lsn(0x1A2B3C8), digest: "00000000deadbeef".into() }
        );
        let no_digest = vec![result(&["name", "value"], vec![vec![text("current_lsn"), text("0/1")]])];
        assert!(parse_status(&no_digest).is_err());
    }

    /// The hindsight pieces that need no replica, against an in-process primary: `SHOW
    /// STATUS` as the server really writes it, the session setting check, and an update phase
    /// whose sessions start with `SET synchronous_commit = local`.
    #[test]
    fn hindsight_pieces_against_an_in_process_primary() {
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let primary = crate::client::InProcessPrimary::start(&runtime);
        let (server, addr, secret) = (primary.server, primary.addr, primary.secret.as_str());
        let mut admin = Session::connect(&runtime, addr, secret).unwrap();
        runtime.block_on(crate::client::load_accounts(&mut admin.client, 200)).unwrap();
        let before = admin.position().unwrap();
        assert_eq!(before.digest.len(), 16, "{before:?}");
        check_session_setting(&runtime, addr, secret, REMOTE_APPLY).unwrap();
        let local = set_synchronous_commit(LAG_PHASE_SYNCHRONOUS_COMMIT);
        let run = runtime.block_on(crate::client::update_phase(addr, secret, 200, 40, 2, &[&local])).unwrap();
        assert_eq!(run.stats.txns, 40);
        let after = admin.position().unwrap();
        assert!(after.lsn > before.lsn && after.digest != before.digest, "{before:?} -> {after:?}");
        assert_eq!(admin.balance_sum().unwrap(), expected_balance_sum(200, 40));
        admin.close();
        runtime.block_on(server.shutdown());
    }

    #[test]
    fn pg_standby_lines_parse() {
        assert_eq!(parse_pg_standby_line("0|||").unwrap(), None);
        assert_eq!(
            parse_pg_standby_line("1|streaming|sync|0.532000").unwrap(),
            Some(StandbyState {
                state: "streaming".into(),
                sync_state: "sync".into(),
                replay_lag_ms: Some(0.532)
            })
        );
        assert_eq!(parse_pg_standby_line("1|streaming|async|").unwrap().unwrap().replay_lag_ms, None);
        assert!(parse_pg_standby_line("2|a|b|").is_err());
        assert!(parse_pg_standby_line("1|streaming").is_err());
        assert!(parse_pg_standby_line("1|streaming|sync|soon").is_err());
    }

    #[test]
    fn the_primary_config_names_the_replica() {
        let config = hindsight_primary_config();
        assert!(config.contains("synchronous_standbys = \"FIRST 1 (replica1)\""), "{config}");
        assert!(config.contains("synchronous_commit = \"local\""), "{config}");
        assert_eq!(set_synchronous_commit(REMOTE_APPLY), "SET synchronous_commit = remote_apply");
    }

    #[test]
    fn polls_end_on_the_condition_or_the_deadline() {
        let mut n = 0;
        poll_until("three checks", Duration::from_secs(10), Duration::from_millis(1), || {
            n += 1;
            Ok(if n == 3 { Check::Met } else { Check::NotYet(format!("n={n}")) })
        })
        .unwrap();
        assert_eq!(n, 3);
        let e = poll_until("never", Duration::from_millis(20), Duration::from_millis(1), || {
            Ok(Check::NotYet("still no".into()))
        })
        .unwrap_err();
        assert!(format!("{e:#}").contains("last seen: still no"), "{e:#}");
    }

    #[test]
    fn the_sampler_runs_beside_the_phase_and_stops_with_it() {
        let (value, samples) = sampled_phase(
            || Ok(0u32),
            |n| {
                *n += 1;
                Ok(if *n % 2 == 0 { LagSample::Lag(1.0) } else { LagSample::Idle })
            },
            || {
                std::thread::sleep(LAG_SAMPLE_INTERVAL * 10);
                Ok(7)
            },
        )
        .unwrap();
        assert_eq!(value, 7);
        let total = samples.samples() + samples.idle;
        // 100 ms at 10 ms: about 11 readings; at least a few however loaded the machine is.
        assert!((2..=12).contains(&total), "{total} readings");
        let failed =
            sampled_phase(|| Err::<u32, _>(anyhow!("no connection")), |_| Ok(LagSample::Idle), || Ok(1));
        assert!(format!("{:#}", failed.unwrap_err()).contains("no connection"));
        let phase_failed =
            sampled_phase(|| Ok(()), |_| Ok(LagSample::Idle), || Err::<u32, _>(anyhow!("boom")));
        assert!(phase_failed.unwrap_err().to_string().contains("boom"));
    }

    /// A run with one remote_apply commit that took `cpu_us` of the machine's CPU.
    fn run_with(tps: f64, lag_ms: &[f64], cpu_us: Option<f64>, steal_fraction: f64) -> SystemRun {
        let mut hist = latency_histogram();
        hist.record(2_000).unwrap();
        let stats = CommitStats { txns: 1, elapsed: Duration::from_millis(1), hist };
        let cpu = cpu_us.map(|us| CpuUse { busy_s: us / 1e6, steal_fraction });
        let client_run = ClientRun { stats, tps, wal_bytes: None, failed: 0, retried: 0, cpu };
        let mut lag = LagSamples::new();
        for ms in lag_ms {
            lag.record(LagSample::Lag(*ms));
        }
        lag.record(LagSample::Idle);
        SystemRun {
            bootstrap: Duration::from_millis(1240),
            lag,
            lag_phase: client_run.clone(),
            remote_apply: client_run,
        }
    }

    fn opts() -> LagOptions {
        LagOptions { rows: 10, txns: 5, clients: 4, compare_postgres: true, skip_hindsight: false, dir: None }
    }

    #[test]
    fn json_has_the_keys_and_ratios() {
        let report = LagReport {
            opts: opts(),
            // Under 2.048 ms the histogram is exact to the microsecond.
            hindsight: Some(Ok(run_with(3500.0, &[0.25, 0.5], Some(400.0), 0.125))),
            postgres: Some(Ok(run_with(1750.0, &[1.0, 2.0], Some(600.0), 0.25))),
            postgres_version: Some("postgres (PostgreSQL) 15.18".into()),
        };
        let j = report.to_json();
        for key in [
            "replay_lag_ms_p50",
            "replay_lag_ms_p99",
            "replay_lag_ms_max",
            "replay_lag_samples",
            "bootstrap_s",
            "remote_apply_tps",
            "remote_apply_p50_ms",
            "remote_apply_p99_ms",
            "rows",
            "txns",
            "clients",
        ] {
            assert!(j.get(key).is_some(), "missing {key} in {j}");
            assert!(j["postgres"].get(key).is_some(), "missing postgres.{key} in {j}");
        }
        assert_eq!(j["replay_lag_ms_p99"], json!(0.5));
        assert_eq!(j["replay_lag_samples"], json!(2));
        assert_eq!(j["replay_lag_null_samples"], json!(1));
        assert_eq!(j["bootstrap_s"], json!(1.24));
        assert_eq!(j["remote_apply_p50_ms"], json!(2.0));
        assert_eq!(j["postgres"]["version"], json!("postgres (PostgreSQL) 15.18"));
        assert_eq!(j["ratio_remote_apply_tps"], json!(2.0));
        assert_eq!(j["ratio_replay_lag_p99"], json!(4.0));
        assert_eq!(j["remote_apply_cpu_us_per_commit"], json!(400.0));
        assert_eq!(j["remote_apply_steal_pct"], json!(12.5));
        assert_eq!(j["postgres"]["remote_apply_cpu_us_per_commit"], json!(600.0));
        assert_eq!(j["postgres"]["remote_apply_steal_pct"], json!(25.0));
        assert!(report.first_error().is_none());
        let table = report.to_table();
        assert!(table.contains("remote_apply commit_tps") && table.contains("2.00x"), "{table}");
        // CPU per commit: 400 against 600 us, 1.5 times less; steal per side, no ratio.
        let row = |label: &str| table.lines().find(|l| l.starts_with(label)).unwrap_or_default().to_string();
        let cpu = row("remote_apply CPU per commit");
        assert!(cpu.contains("400 us") && cpu.contains("600 us") && cpu.contains("1.50x"), "{table}");
        let steal = row("CPU stolen by the host");
        assert!(steal.contains("12.5%") && steal.contains("25.0%") && !steal.contains('x'), "{table}");
    }

    #[test]
    fn a_failed_or_skipped_side_keeps_the_other() {
        let report = LagReport {
            opts: opts(),
            hindsight: Some(Err("no replica command".into())),
            postgres: Some(Ok(run_with(1750.0, &[], None, 0.0))),
            postgres_version: None,
        };
        let j = report.to_json();
        assert_eq!(j["error"], json!("no replica command"));
        assert_eq!(j["postgres"]["remote_apply_tps"], json!(1750.0));
        assert_eq!(j["postgres"]["replay_lag_ms_p99"], Json::Null);
        // No /proc/stat: the CPU figures are null, and `-` in the table.
        assert_eq!(j["postgres"]["remote_apply_cpu_us_per_commit"], Json::Null);
        assert_eq!(j["postgres"]["remote_apply_steal_pct"], Json::Null);
        let table = report.to_table();
        let cpu_row =
            table.lines().find(|l| l.starts_with("remote_apply CPU per commit")).unwrap_or_default();
        assert_eq!(cpu_row.split_whitespace().last(), Some("-"), "{table}");
        assert!(j.get("ratio_remote_apply_tps").is_none());
        assert_eq!(report.first_error().unwrap(), "hindsight: no replica command");
        assert!(report.to_table().contains("error: hindsight: no replica command"));

        let skipped = LagReport { hindsight: None, ..report };
        assert_eq!(skipped.to_json()["hindsight"], json!("skipped"));
        assert!(skipped.first_error().is_none());
        assert!(skipped.to_table().contains("skipped"));
    }
}
