//! The `engine` workload: the shared `accounts` workload in process, fsync on.
//!
//! Phases, each in a fresh directory under one temporary work directory:
//!
//! 1. **Load** `rows` rows with multi-row INSERTs (100,000 rows per transaction), measure resident
//!    memory, then time an explicit `CHECKPOINT` (the snapshot write). Shut down and copy the
//!    data directory to `base/`: a snapshot of the loaded table and no WAL after it.
//! 2. **Update**: reopen with automatic checkpoints off and run `txns` autocommit updates from
//!    `writers` threads, one session each. Per-commit latency goes into an hdrhistogram; WAL
//!    bytes are the insert Lsn's advance. Then shut down (a clean shutdown writes no checkpoint,
//!    so the directory is exactly what a crash would leave).
//! 3. **Recovery**: open a copy of `base/` (snapshot load alone) and the updated directory
//!    (snapshot load + replay of the update WAL), `recovery_runs` times each. Recovery time is
//!    the median of the latter; replay time is the median of the engine's own timing of the WAL
//!    pass (`RecoveryReport::replay_elapsed`: reading, decoding and applying every record, digest
//!    checks included). Every open checks that it replayed exactly the updates and reached the
//!    same state digest as before the shutdown.
//!
//! The page cache is warm for every open (the files were just written): the figures are CPU and
//! memory bound, not disk bound.

use crate::stats::{
    copy_dir, files_size, latency_histogram, median, ms, record_latency, round1, round3, rss_bytes,
    thousands, verdict, work_dir, CommitStats,
};
use crate::workload::{
    expected_balance_sum, load_txn_ranges, load_txn_sql, share, update_sql, CREATE_ACCOUNTS, UPDATE_SEED,
};
use anyhow::{anyhow, bail, ensure, Context, Result};
use hindsight_engine::db::Config;
use hindsight_engine::sql::{Session, StatementResult};
use hindsight_engine::value::Value;
use hindsight_engine::{Database, ErrorCode};
use rand::SeedableRng;
use serde_json::{json, Map};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Attempts per update before a run of serialization failures is treated as a bug.
const UPDATE_ATTEMPTS_MAX: u32 = 100;
/// The engine's lock file, left out of directory copies.
const LOCK_FILE: &str = "lock";

/// PostgreSQL figures for this workload from the issue: reference only, not measured here.
pub mod reference {
    /// Commits per second.
    pub const COMMIT_TPS: f64 = 3_027.0;
    /// Median commit latency, ms.
    pub const COMMIT_LATENCY_MS_P50: f64 = 1.0;
    /// 99th percentile commit latency, ms.
    pub const COMMIT_LATENCY_MS_P99: f64 = 5.9;
    /// WAL bytes per transaction.
    pub const WAL_BYTES_PER_TXN: f64 = 594.0;
    /// Replay speed, transactions per second.
    pub const REPLAY_TXN_PER_S: f64 = 110_000.0;
}

/// The targets this workload is held to.
pub mod target {
    /// Replay at least this many transactions per second.
    pub const REPLAY_TXN_PER_S: f64 = 2_000_000.0;
    /// Recover (open after a crash) within this many seconds.
    pub const RECOVERY_S: f64 = 0.5;
    /// Commit at least this many transactions per second…
    pub const COMMIT_TPS: f64 = 10_000.0;
    /// …with a 99th percentile commit latency of at most this many µs.
    pub const COMMIT_LATENCY_US_P99: u64 = 4_000;
    /// Write at most this many WAL bytes per transaction.
    pub const WAL_BYTES_PER_TXN: f64 = 100.0;
}

/// Options of the `engine` workload.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Rows loaded.
    pub rows: u64,
    /// Update transactions.
    pub txns: u64,
    /// Concurrent writer threads, each with its own session.
    pub writers: usize,
    /// Parent of the temporary work directory (default: the system temp dir). The file system
    /// matters: fsync cost is most of a commit.
    pub dir: Option<PathBuf>,
    /// Opens timed per recovery measurement (median taken).
    pub recovery_runs: usize,
}

/// Everything the `engine` workload measured.
#[derive(Clone, Debug)]
pub struct EngineReport {
    opts: EngineOptions,
    load_elapsed: Duration,
    memory_bytes_per_row: f64,
    snapshot_bytes: u64,
    checkpoint_elapsed: Duration,
    updates: CommitStats,
    conflicts: u64,
    wal_bytes: u64,
    /// Median open of `base/` (snapshot only).
    base_open: Duration,
    /// Median open of the updated directory (snapshot + WAL).
    recovery: Duration,
    replayed_txns: u64,
    replayed_bytes: u64,
    /// Median of the engine's timing of the WAL pass during recovery.
    replay: Duration,
    /// WAL fdatasyncs during the update phase, and the microseconds they took.
    wal_syncs: u64,
    wal_sync_us: u64,
}

impl EngineReport {
    /// Replay time: the median of the engine's own timing of the WAL pass.
    fn replay_seconds(&self) -> f64 {
        self.replay.as_secs_f64().max(1e-6)
    }

    fn commits_per_sync(&self) -> f64 {
        self.updates.txns as f64 / self.wal_syncs.max(1) as f64
    }

    fn wal_bytes_per_txn(&self) -> f64 {
        self.wal_bytes as f64 / self.updates.txns.max(1) as f64
    }

    fn replay_txn_per_s(&self) -> f64 {
        self.replayed_txns as f64 / self.replay_seconds()
    }

    fn replay_mb_per_s(&self) -> f64 {
        self.replayed_bytes as f64 / 1e6 / self.replay_seconds()
    }

    fn snapshot_write_mb_per_s(&self) -> f64 {
        self.snapshot_bytes as f64 / 1e6 / self.checkpoint_elapsed.as_secs_f64().max(1e-9)
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = Map::new();
        m.insert("workload".into(), json!("engine"));
        m.insert("rows".into(), json!(self.opts.rows));
        m.insert("txns".into(), json!(self.updates.txns));
        m.insert("writers".into(), json!(self.opts.writers));
        m.extend(self.updates.json_keys(self.updates.tps()));
        m.insert("serialization_failures_retried".into(), json!(self.conflicts));
        m.insert("wal_bytes_per_txn".into(), json!(round1(self.wal_bytes_per_txn())));
        m.insert("wal_syncs".into(), json!(self.wal_syncs));
        m.insert("commits_per_wal_sync".into(), json!(round1(self.commits_per_sync())));
        m.insert(
            "wal_sync_us_avg".into(),
            json!(round1(self.wal_sync_us as f64 / self.wal_syncs.max(1) as f64)),
        );
        m.insert("replay_txn_per_s".into(), json!(round1(self.replay_txn_per_s())));
        m.insert("replay_mb_per_s".into(), json!(round1(self.replay_mb_per_s())));
        m.insert("recovery_s".into(), json!(round3(self.recovery.as_secs_f64())));
        m.insert("snapshot_open_s".into(), json!(round3(self.base_open.as_secs_f64())));
        m.insert("replay_s".into(), json!(round3(self.replay_seconds())));
        m.insert("snapshot_write_mb_per_s".into(), json!(round1(self.snapshot_write_mb_per_s())));
        m.insert("snapshot_bytes".into(), json!(self.snapshot_bytes));
        m.insert("memory_bytes_per_row".into(), json!(round1(self.memory_bytes_per_row)));
        m.insert(
            "load_rows_per_s".into(),
            json!(round1(self.opts.rows as f64 / self.load_elapsed.as_secs_f64())),
        );
        serde_json::Value::Object(m)
    }

    /// The report as a readable table, with targets and the PostgreSQL reference figures.
    pub fn to_table(&self) -> String {
        let u = &self.updates;
        let p99 = u.latency_us(0.99);
        let commit_met = u.tps() >= target::COMMIT_TPS && p99 <= target::COMMIT_LATENCY_US_P99;
        let rows: Vec<[String; 4]> = vec![
            [
                "commit_tps".into(),
                thousands(u.tps()),
                format!(
                    ">= {} with p99 <= {} ({})",
                    thousands(target::COMMIT_TPS),
                    ms(target::COMMIT_LATENCY_US_P99),
                    verdict(commit_met)
                ),
                thousands(reference::COMMIT_TPS),
            ],
            [
                "commit_latency p50".into(),
                ms(u.latency_us(0.5)),
                String::new(),
                format!("{:.1} ms", reference::COMMIT_LATENCY_MS_P50),
            ],
            [
                "commit_latency p99".into(),
                ms(p99),
                String::new(),
                format!("{:.1} ms", reference::COMMIT_LATENCY_MS_P99),
            ],
            ["commit_latency p99.9".into(), ms(u.latency_us(0.999)), String::new(), String::new()],
            ["commit_latency max".into(), ms(u.hist.max()), String::new(), String::new()],
            [
                "  group commit".into(),
                format!("{:.1}/fsync", self.commits_per_sync()),
                format!(
                    "{} fdatasyncs, {:.0} µs each on average",
                    self.wal_syncs,
                    self.wal_sync_us as f64 / self.wal_syncs.max(1) as f64
                ),
                String::new(),
            ],
            [
                "wal_bytes_per_txn".into(),
                format!("{:.1}", self.wal_bytes_per_txn()),
                format!(
                    "<= {} ({})",
                    target::WAL_BYTES_PER_TXN,
                    verdict(self.wal_bytes_per_txn() <= target::WAL_BYTES_PER_TXN)
                ),
                format!("{}", reference::WAL_BYTES_PER_TXN),
            ],
            [
                "replay_txn_per_s".into(),
                thousands(self.replay_txn_per_s()),
                format!(
                    ">= {} ({})",
                    thousands(target::REPLAY_TXN_PER_S),
                    verdict(self.replay_txn_per_s() >= target::REPLAY_TXN_PER_S)
                ),
                thousands(reference::REPLAY_TXN_PER_S),
            ],
            [
                "replay_mb_per_s".into(),
                format!("{:.1}", self.replay_mb_per_s()),
                String::new(),
                String::new(),
            ],
            [
                "  replay time".into(),
                format!("{:.3} s", self.replay_seconds()),
                format!(
                    "{} txns, {:.1} MB of WAL",
                    thousands(self.replayed_txns as f64),
                    self.replayed_bytes as f64 / 1e6
                ),
                String::new(),
            ],
            [
                "recovery_s".into(),
                format!("{:.3}", self.recovery.as_secs_f64()),
                format!(
                    "<= {} ({})",
                    target::RECOVERY_S,
                    verdict(self.recovery.as_secs_f64() <= target::RECOVERY_S)
                ),
                String::new(),
            ],
            [
                "  of which snapshot load".into(),
                format!("{:.3} s", self.base_open.as_secs_f64()),
                String::new(),
                String::new(),
            ],
            [
                "snapshot_write_mb_per_s".into(),
                format!("{:.1}", self.snapshot_write_mb_per_s()),
                String::new(),
                String::new(),
            ],
            [
                "memory_bytes_per_row".into(),
                format!("{:.1}", self.memory_bytes_per_row),
                String::new(),
                String::new(),
            ],
        ];
        let mut out = format!(
            "engine workload: {} rows, {} update txns from {} writers (fsync on), {} serialization failures retried\n\
             load: {:.2} s ({} rows/s); snapshot {:.1} MB written in {:.3} s\n\n",
            thousands(self.opts.rows as f64),
            thousands(u.txns as f64),
            self.opts.writers,
            self.conflicts,
            self.load_elapsed.as_secs_f64(),
            thousands(self.opts.rows as f64 / self.load_elapsed.as_secs_f64()),
            self.snapshot_bytes as f64 / 1e6,
            self.checkpoint_elapsed.as_secs_f64(),
        );
        let header = ["metric", "hindsight", "target", "PostgreSQL (reference, not measured in this run)"];
        out.push_str(&crate::format_table(&header, &rows));
        out
    }
}

/// Runs the workload and returns what it measured.
pub fn run(opts: &EngineOptions) -> Result<EngineReport> {
    ensure!(
        opts.rows > 0 && opts.writers > 0 && opts.txns > 0,
        "--rows, --txns and --writers must be positive"
    );
    ensure!(opts.recovery_runs > 0, "--recovery-runs must be positive");
    let rss_before = rss_bytes()?;
    let work = work_dir(opts.dir.as_deref())?;
    let dir = work.path().join("data");
    let dir_base = work.path().join("base");
    let config = bench_config();

    // Phase 1: load, checkpoint, keep a copy.
    eprintln!("engine: loading {} rows into {}", opts.rows, dir.display());
    let db = Database::open(&dir, config.clone()).context("open the data directory")?;
    let mut session = Session::new(Arc::clone(&db));
    execute(&mut session, CREATE_ACCOUNTS)?;
    let started = Instant::now();
    for ids in load_txn_ranges(opts.rows) {
        execute(&mut session, &load_txn_sql(ids)).context("load the accounts table")?;
    }
    let load_elapsed = started.elapsed();
    let rss_loaded = rss_bytes()?;
    let memory_bytes_per_row = rss_loaded.saturating_sub(rss_before) as f64 / opts.rows as f64;
    let started = Instant::now();
    execute(&mut session, "CHECKPOINT")?;
    let checkpoint_elapsed = started.elapsed();
    let snapshot_bytes = files_size(&dir.join("snapshots"), ".snap")?;
    drop(session);
    close(db);
    copy_dir(&dir, &dir_base, LOCK_FILE).context("copy the loaded data directory")?;

    // Phase 2: updates.
    eprintln!("engine: {} updates from {} writers", opts.txns, opts.writers);
    let db = Database::open(&dir, config.clone()).context("reopen the data directory")?;
    let lsn_before = db.status().insert_lsn;
    let syncs_before = db.status();
    let (updates, conflicts) = run_updates(&db, opts.rows, opts.txns, opts.writers)?;
    let status = db.status();
    let wal_syncs = status.wal_syncs - syncs_before.wal_syncs;
    let wal_sync_us = status.wal_sync_us - syncs_before.wal_sync_us;
    let wal_bytes = status.insert_lsn.bytes_since(lsn_before);
    check_balance_sum(&db, expected_balance_sum(opts.rows, updates.txns)).context("check the updates")?;
    close(db);

    // Phase 3: recovery.
    eprintln!("engine: timing {} opens of the snapshot alone and of snapshot + WAL", opts.recovery_runs);
    let base_copy = work.path().join("base-open");
    copy_dir(&dir_base, &base_copy, LOCK_FILE).context("copy the base directory")?;
    let mut base_opens = Vec::new();
    let mut recovery_opens = Vec::new();
    let (mut replayed_txns, mut replayed_bytes) = (0, 0);
    let mut replays = Vec::new();
    for _ in 0..opts.recovery_runs {
        let (elapsed, db) = timed_open(&base_copy, &config)?;
        let report = db.recovery_report().clone();
        ensure!(
            report.replayed_txns == 0,
            "the base directory replayed {} transactions",
            report.replayed_txns
        );
        ensure!(report.snapshot_rows == opts.rows, "the snapshot held {} rows", report.snapshot_rows);
        base_opens.push(elapsed);
        close(db);

        let (elapsed, db) = timed_open(&dir, &config)?;
        let report = db.recovery_report().clone();
        ensure!(
            report.replayed_txns == updates.txns,
            "recovery replayed {} transactions, expected the {} updates (did a checkpoint happen during them?)",
            report.replayed_txns,
            updates.txns
        );
        ensure!(db.status().digest == status.digest, "recovery reached a different state digest");
        (replayed_txns, replayed_bytes) = (report.replayed_txns, report.replayed_bytes);
        replays.push(report.replay_elapsed);
        recovery_opens.push(elapsed);
        close(db);
    }
    Ok(EngineReport {
        opts: opts.clone(),
        load_elapsed,
        memory_bytes_per_row,
        snapshot_bytes,
        checkpoint_elapsed,
        updates,
        conflicts,
        wal_bytes,
        base_open: median(&base_opens),
        recovery: median(&recovery_opens),
        replayed_txns,
        replay: median(&replays),
        wal_syncs,
        wal_sync_us,
        replayed_bytes,
    })
}

/// Engine settings for the bench: the defaults (fsync on), with automatic checkpoints off so
/// that the update phase's WAL is all replayed by recovery.
fn bench_config() -> Config {
    Config {
        checkpoint_wal_bytes: u64::MAX,
        checkpoint_interval: Duration::from_secs(86_400),
        ..Config::default()
    }
}

/// Opens `dir` and returns the wall-clock time `Database::open` took.
fn timed_open(dir: &Path, config: &Config) -> Result<(Duration, Arc<Database>)> {
    let started = Instant::now();
    let db = Database::open(dir, config.clone()).with_context(|| format!("open {}", dir.display()))?;
    Ok((started.elapsed(), db))
}

/// Shuts a database down and drops it (dropping the last handle releases the directory lock).
fn close(db: Arc<Database>) {
    db.shutdown();
    drop(db);
}

/// Runs `sql` and fails on the first statement error.
fn execute(session: &mut Session, sql: &str) -> Result<Vec<StatementResult>> {
    session
        .execute(sql)
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{e}").context(format!("execute {:?}", crate::abbreviate(sql))))
}

/// Runs the update phase: `txns` autocommit updates from `writers` threads. Serialization
/// failures (two writers updating the same row at once) are retried and counted; a commit's
/// latency spans its retries, as a client would see it. Returns the stats and the retry count.
fn run_updates(db: &Arc<Database>, rows: u64, txns: u64, writers: usize) -> Result<(CommitStats, u64)> {
    let started = Instant::now();
    let results: Vec<Result<(hdrhistogram::Histogram<u64>, u64)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                let db = Arc::clone(db);
                scope.spawn(move || writer(db, rows, share(txns, writers, w), UPDATE_SEED + w as u64))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("a writer thread panicked"))))
            .collect()
    });
    let elapsed = started.elapsed();
    let mut hist = latency_histogram();
    let mut conflicts = 0;
    for r in results {
        let (h, c) = r?;
        hist.add(&h).context("merge the writers' histograms")?;
        conflicts += c;
    }
    Ok((CommitStats { txns: hist.len(), elapsed, hist }, conflicts))
}

/// One writer thread: its own session, `count` updates of random keys.
fn writer(
    db: Arc<Database>,
    rows: u64,
    count: u64,
    seed: u64,
) -> Result<(hdrhistogram::Histogram<u64>, u64)> {
    let mut session = Session::new(db);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut hist = latency_histogram();
    let mut conflicts = 0u64;
    for _ in 0..count {
        let sql = update_sql(&mut rng, rows);
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut results = session.execute(&sql);
            match results.pop() {
                Some(Ok(StatementResult::Command { rows_affected: 1, commit: Some(_), .. }))
                    if results.is_empty() =>
                {
                    break
                }
                Some(Err(e))
                    if e.code == ErrorCode::SerializationFailure && attempts < UPDATE_ATTEMPTS_MAX =>
                {
                    conflicts += 1;
                }
                other => bail!("{sql} returned {other:?} (after {} other results)", results.len()),
            }
        }
        record_latency(&mut hist, started.elapsed());
    }
    Ok((hist, conflicts))
}

/// Checks `SELECT sum(balance) FROM accounts`.
fn check_balance_sum(db: &Arc<Database>, expected: i64) -> Result<()> {
    let mut session = Session::new(Arc::clone(db));
    let results = execute(&mut session, "SELECT sum(balance) FROM accounts")?;
    let sum = match results.as_slice() {
        [StatementResult::Rows { rows, .. }] => match rows.as_slice() {
            [row] => match row.as_slice() {
                [Value::Int(n)] => *n,
                [Value::Double(x)] => *x as i64,
                other => bail!("sum(balance) returned {other:?}"),
            },
            other => bail!("sum(balance) returned {} rows", other.len()),
        },
        other => bail!("sum(balance) returned {other:?}"),
    };
    ensure!(sum == expected, "the balances sum to {sum}, expected {expected}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The whole workload, tiny, in a debug build: every phase runs and checks itself.
    #[test]
    fn tiny_engine_run() {
        let opts = EngineOptions { rows: 2_000, txns: 200, writers: 2, dir: None, recovery_runs: 1 };
        let report = run(&opts).expect("run the engine workload");
        assert_eq!(report.updates.txns, 200);
        assert_eq!(report.replayed_txns, 200);
        assert!(report.wal_bytes > 0 && report.replayed_bytes > 0);
        assert!(report.snapshot_bytes > 0);
        let json = report.to_json();
        for key in [
            "commit_tps",
            "commit_latency_us_p50",
            "commit_latency_us_p99",
            "commit_latency_us_p999",
            "commit_latency_us_max",
            "wal_bytes_per_txn",
            "replay_txn_per_s",
            "replay_mb_per_s",
            "recovery_s",
            "snapshot_write_mb_per_s",
            "memory_bytes_per_row",
            "rows",
            "txns",
            "writers",
        ] {
            assert!(json.get(key).is_some_and(|v| v.is_number()), "missing {key} in {json}");
        }
        assert!(report.to_table().contains("reference, not measured in this run"));
    }
}
