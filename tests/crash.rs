//! Rule 1 end to end: a transaction acknowledged as committed survives `kill -9` of the primary.
//!
//! Four sessions insert rows (single statements and small multi-statement transactions) and
//! record every id the server acknowledged. At a seeded random point the primary is killed with
//! SIGKILL, restarted on the same directory, and every acknowledged id must be there — and no
//! id that was never sent. Three kills per run, on the same directory, so recovery also runs on
//! a directory that recovered before. Set `HINDSIGHT_TEST_SEED` to replay a run.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use common::{wait_until, Primary};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SESSIONS: u64 = 4;
const KILLS: u64 = 3;
/// Ids are `round * ROUND_STRIDE + session * SESSION_STRIDE + n`, so each is unique.
const ROUND_STRIDE: i64 = 1_000_000_000;
const SESSION_STRIDE: i64 = 100_000_000;

/// What one writer session saw.
#[derive(Default)]
struct Ledger {
    /// Ids in a statement that was sent (acknowledged or not).
    sent: HashSet<i64>,
    /// Ids whose commit was acknowledged.
    acked: HashSet<i64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_under_load_loses_no_acknowledged_commit() -> anyhow::Result<()> {
    let seed: u64 = match std::env::var("HINDSIGHT_TEST_SEED") {
        Ok(text) => text.parse().context("parse HINDSIGHT_TEST_SEED")?,
        Err(_) => rand::random(),
    };
    // Printed first so a failure's output always names it.
    println!("seed = {seed} (replay with HINDSIGHT_TEST_SEED={seed})");
    let result = run(seed).await;
    if let Err(e) = &result {
        eprintln!("FAILED with seed {seed}: {e:#}");
    }
    result
}

async fn run(seed: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let temp = tempfile::tempdir()?;
    let data = temp.path().join("data");
    let mut primary = Primary::start(&data)?;
    primary
        .connect()
        .await?
        .query("CREATE TABLE t (id BIGINT PRIMARY KEY, session BIGINT, n BIGINT)")
        .await?;
    let ledger = Arc::new(Mutex::new(Ledger::default()));

    for round in 0..KILLS {
        let acked_before = ledger.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.acked.len();
        let acked_now = Arc::new(AtomicUsize::new(0));
        let mut writers = Vec::new();
        for session in 0..SESSIONS {
            let client = primary.connect().await?;
            let writer_seed = rng.gen::<u64>();
            writers.push(tokio::spawn(write_until_killed(
                client,
                round,
                session,
                writer_seed,
                Arc::clone(&ledger),
                Arc::clone(&acked_now),
            )));
        }
        // Kill at a seeded point: once this many commits were acknowledged in this round.
        let kill_after = rng.gen_range(20..200);
        wait_until("the writers to commit enough", || Ok(acked_now.load(Ordering::Relaxed) >= kill_after))?;
        primary.kill9()?;
        for writer in writers {
            writer.await.context("join a writer")?;
        }

        primary = Primary::start(&data).with_context(|| format!("restart after kill {}", round + 1))?;
        let mut client = primary.connect().await?;
        let rows = client.query("SELECT id FROM t").await?;
        let present: HashSet<i64> = rows[0].rows.iter().filter_map(|row| row[0].as_i64()).collect();
        check_round(&ledger, &present, round, acked_before, &primary)?;
        client.close().await;
    }
    let status = primary.terminate()?;
    anyhow::ensure!(status.success(), "clean stop after the kills: {status}");
    Ok(())
}

/// Every acknowledged id is present, and no id that was never sent.
fn check_round(
    ledger: &Mutex<Ledger>,
    present: &HashSet<i64>,
    round: u64,
    acked_before: usize,
    primary: &Primary,
) -> anyhow::Result<()> {
    let ledger = ledger.lock().map_err(|_| anyhow::anyhow!("a writer panicked holding the ledger"))?;
    let missing: Vec<i64> = ledger.acked.iter().filter(|id| !present.contains(id)).copied().collect();
    anyhow::ensure!(
        missing.is_empty(),
        "kill {}: {} acknowledged ids are missing after restart, e.g. {:?}; log:\n{}",
        round + 1,
        missing.len(),
        &missing[..missing.len().min(10)],
        primary.log()
    );
    let invented: Vec<i64> = present.iter().filter(|id| !ledger.sent.contains(id)).copied().collect();
    anyhow::ensure!(invented.is_empty(), "ids that were never sent: {invented:?}");
    anyhow::ensure!(ledger.acked.len() > acked_before, "round {round} acknowledged nothing");
    println!(
        "kill {}: {} rows acknowledged, {} present ({} committed but not yet acknowledged at the kill)",
        round + 1,
        ledger.acked.len(),
        present.len(),
        present.len() - ledger.acked.len()
    );
    Ok(())
}

/// Inserts rows until the connection fails (the primary was killed); records what was sent and
/// what was acknowledged.
async fn write_until_killed(
    mut client: hindsight_primary::Client,
    round: u64,
    session: u64,
    seed: u64,
    ledger: Arc<Mutex<Ledger>>,
    acked_now: Arc<AtomicUsize>,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let base = round as i64 * ROUND_STRIDE + session as i64 * SESSION_STRIDE;
    let mut n: i64 = 0;
    loop {
        // One row on its own, or a transaction of two to five rows.
        let rows = if rng.gen_bool(0.5) { 1 } else { rng.gen_range(2..=5) };
        let ids: Vec<i64> = (0..rows).map(|i| base + n + i).collect();
        n += rows;
        let values: Vec<String> = ids.iter().map(|id| format!("({id}, {session}, {})", id - base)).collect();
        let sql = if rows == 1 {
            format!("INSERT INTO t VALUES {}", values[0])
        } else {
            let inserts: Vec<String> = values.iter().map(|v| format!("INSERT INTO t VALUES {v};")).collect();
            format!("BEGIN; {} COMMIT", inserts.join(" "))
        };
        if let Ok(mut ledger) = ledger.lock() {
            ledger.sent.extend(&ids);
        }
        match client.query(&sql).await {
            Ok(results) => {
                let committed = results.last().is_some_and(|r| r.txid.is_some());
                assert!(committed, "the commit was acknowledged without a TxId: {results:?}");
                if let Ok(mut ledger) = ledger.lock() {
                    ledger.acked.extend(&ids);
                }
                acked_now.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if e.code().is_some() => panic!("the server refused a write: {e}"),
            Err(_) => return,
        }
    }
}
