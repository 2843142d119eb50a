//! Replication end to end, with the real `hindsight` binary as separate processes: a primary and
//! replicas (one cascading from the other) that converge on the primary's exact state through
//! SIGKILLs of every process; `remote_apply` making each acknowledged commit visible on the
//! replica at once; queries on a replica that see a consistent snapshot while transfers replay;
//! a replica that refuses writes; a synchronous standby killed while it holds WAL its primary
//! had not confirmed; and a replica whose WAL the primary removed, which says so by name. Set `HINDSIGHT_TEST_SEED` to replay the random choices of a run.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use common::{show_one_row, show_status, write_config, Primary, Replica, DEADLINE, POLL_INTERVAL};
use hindsight_primary::client::{Client, ClientError, ConnectOptions, Value};
use hindsight_protocol::Lsn;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;

/// The bank: this many accounts, each starting with this balance; transfers keep the total.
const ACCOUNTS: i64 = 100;
const INITIAL_BALANCE: i64 = 1_000;
const TOTAL: i64 = ACCOUNTS * INITIAL_BALANCE;
/// Transfer ids are `session * SESSION_STRIDE + n`, so each is unique.
const SESSION_STRIDE: i64 = 1_000_000_000;
/// Settings for tests where durability across an operating-system crash is not what is tested.
const NO_FSYNC: &str = "[engine]\nfsync = false\n";

fn seed() -> anyhow::Result<u64> {
    let seed = match std::env::var("HINDSIGHT_TEST_SEED") {
        Ok(text) => text.parse().context("parse HINDSIGHT_TEST_SEED")?,
        Err(_) => rand::random(),
    };
    // Printed first so a failure's output always names it.
    println!("seed = {seed} (replay with HINDSIGHT_TEST_SEED={seed})");
    Ok(seed)
}

/// A deadline for one async wait; every poll loop has one.
struct Deadline {
    what: String,
    at: Instant,
}

impl Deadline {
    fn new(what: impl Into<String>) -> Deadline {
        Deadline { what: what.into(), at: Instant::now() + DEADLINE }
    }

    /// Sleeps one poll interval, or fails naming what was awaited and the last state seen.
    async fn tick(&self, last_seen: impl FnOnce() -> String) -> anyhow::Result<()> {
        if Instant::now() >= self.at {
            bail!(
                "timed out after {} s waiting for {}; last seen: {}",
                DEADLINE.as_secs(),
                self.what,
                last_seen()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        Ok(())
    }
}

/// One transfer between two accounts, as sent (and as it must read back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Transfer {
    src: i64,
    dst: i64,
    amount: i64,
}

/// What the writers saw.
#[derive(Default)]
struct Ledger {
    /// Every transfer sent, acknowledged or not.
    sent: HashMap<i64, Transfer>,
    /// The ids whose commit was acknowledged.
    acked: HashSet<i64>,
    /// Transfers refused with `serialization_failure` (nothing committed).
    conflicts: u64,
    /// Transfers whose connection failed before the answer: committed or not, nobody knows.
    unknown: u64,
}

fn lock(ledger: &Mutex<Ledger>) -> anyhow::Result<MutexGuard<'_, Ledger>> {
    ledger.lock().map_err(|_| anyhow::anyhow!("a writer panicked holding the ledger"))
}

async fn create_bank(client: &mut Client) -> anyhow::Result<()> {
    client.query("CREATE TABLE accounts (id BIGINT PRIMARY KEY, balance BIGINT NOT NULL)").await?;
    client
        .query(
            "CREATE TABLE transfers (id BIGINT PRIMARY KEY, src BIGINT NOT NULL, dst BIGINT NOT NULL, \
             amount BIGINT NOT NULL)",
        )
        .await?;
    let values: Vec<String> = (0..ACCOUNTS).map(|id| format!("({id}, {INITIAL_BALANCE})")).collect();
    client
        .query(&format!("INSERT INTO accounts VALUES {}", values.join(", ")))
        .await
        .context("open accounts")?;
    Ok(())
}

/// Writer tasks doing transfers on the primary until told to stop.
struct Load {
    ledger: Arc<Mutex<Ledger>>,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    writers: Vec<JoinHandle<anyhow::Result<()>>>,
    /// The acknowledged count [`Load::wait_for_more`] last reached.
    mark: usize,
}

impl Load {
    /// Starts `sessions` writers against `addr`. With `reconnect`, a writer whose connection
    /// fails (the primary was killed) connects again; without, that fails the test.
    fn start(addr: &str, options: &ConnectOptions, sessions: i64, seed: u64, reconnect: bool) -> Load {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let acked = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let mut rng = StdRng::seed_from_u64(seed);
        let writers = (0..sessions)
            .map(|session| {
                tokio::spawn(transfer_until_stopped(Writer {
                    addr: addr.to_string(),
                    options: options.clone(),
                    session,
                    seed: rng.gen(),
                    reconnect,
                    ledger: Arc::clone(&ledger),
                    acked: Arc::clone(&acked),
                    stop: Arc::clone(&stop),
                }))
            })
            .collect();
        Load { ledger, acked, stop, writers, mark: 0 }
    }

    fn acked(&self) -> usize {
        self.acked.load(Ordering::Relaxed)
    }

    /// Waits until `more` commits were acknowledged since the last wait and `at_least` passed,
    /// failing early if a writer failed.
    fn wait_for_more(&mut self, more: usize, at_least: Duration, what: &str) -> anyhow::Result<()> {
        let target = self.mark + more;
        let start = Instant::now();
        let deadline = start + DEADLINE;
        while self.acked() < target || start.elapsed() < at_least {
            if let Some(finished) = self.writers.iter().position(|w| w.is_finished()) {
                bail!("writer {finished} stopped early, {what} (see its error when the load is joined)");
            }
            ensure!(
                Instant::now() < deadline,
                "timed out after {} s waiting for {more} more acknowledged transfers {what}: {} of {target}",
                DEADLINE.as_secs(),
                self.acked()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
        self.mark = self.acked();
        Ok(())
    }

    /// Stops the writers and returns the ledger; fails with the first writer's error.
    async fn finish(self) -> anyhow::Result<Ledger> {
        self.stop.store(true, Ordering::Relaxed);
        for (session, writer) in self.writers.into_iter().enumerate() {
            let joined = tokio::time::timeout(DEADLINE, writer)
                .await
                .with_context(|| format!("writer {session} did not stop within {} s", DEADLINE.as_secs()))?;
            joined.with_context(|| format!("writer {session} panicked"))??;
        }
        let ledger =
            Arc::try_unwrap(self.ledger).map_err(|_| anyhow::anyhow!("the ledger is still shared"))?;
        ledger.into_inner().map_err(|_| anyhow::anyhow!("a writer panicked holding the ledger"))
    }
}

struct Writer {
    addr: String,
    options: ConnectOptions,
    session: i64,
    seed: u64,
    reconnect: bool,
    ledger: Arc<Mutex<Ledger>>,
    acked: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

/// Transfers random amounts between random accounts, one transaction each, recording what was
/// sent and what was acknowledged, until `stop`.
async fn transfer_until_stopped(w: Writer) -> anyhow::Result<()> {
    let session = w.session;
    let mut rng = StdRng::seed_from_u64(w.seed);
    let mut client: Option<Client> = None;
    let mut unreachable_since: Option<Instant> = None;
    let mut n: i64 = 0;
    while !w.stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            match Client::connect(w.addr.as_str(), w.options.clone()).await {
                Ok(c) => {
                    client = Some(c);
                    unreachable_since = None;
                }
                Err(e) if e.code().is_some() => bail!("writer {session}: the primary refused the login: {e}"),
                Err(e) => {
                    ensure!(w.reconnect, "writer {session}: cannot connect to the primary: {e}");
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    ensure!(
                        since.elapsed() < DEADLINE,
                        "writer {session}: the primary was unreachable for {} s: {e}",
                        DEADLINE.as_secs()
                    );
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
            continue;
        };
        let id = session * SESSION_STRIDE + n;
        n += 1;
        let src = rng.gen_range(0..ACCOUNTS);
        let dst = (src + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
        let amount = rng.gen_range(1..=50);
        let sql = format!(
            "BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {src}; \
             UPDATE accounts SET balance = balance + {amount} WHERE id = {dst}; \
             INSERT INTO transfers VALUES ({id}, {src}, {dst}, {amount}); COMMIT"
        );
        lock(&w.ledger)?.sent.insert(id, Transfer { src, dst, amount });
        let response = match c.execute(&sql).await {
            Ok(response) => response,
            Err(e) => {
                ensure!(w.reconnect, "writer {session}: the connection failed during transfer {id}: {e}");
                lock(&w.ledger)?.unknown += 1;
                client = None;
                continue;
            }
        };
        match response.error {
            None => {
                let commit = response.results.last();
                ensure!(
                    commit.is_some_and(|r| r.tag == "COMMIT" && r.txid.is_some()),
                    "writer {session}: transfer {id} was acknowledged without a COMMIT carrying a TxId: {:?}",
                    response.results
                );
                lock(&w.ledger)?.acked.insert(id);
                w.acked.fetch_add(1, Ordering::Relaxed);
            }
            Some(e) if e.code == "serialization_failure" => {
                lock(&w.ledger)?.conflicts += 1;
                if c.in_transaction() {
                    c.query("ROLLBACK").await.with_context(|| format!("writer {session}: roll back {id}"))?;
                }
            }
            Some(e) => bail!("writer {session}: the primary refused transfer {id}: {e}"),
        }
    }
    if let Some(c) = client {
        c.close().await;
    }
    Ok(())
}

/// A node's copy of the bank.
#[derive(Debug, PartialEq, Eq)]
struct Bank {
    accounts: BTreeMap<i64, i64>,
    transfers: BTreeMap<i64, Transfer>,
}

fn int(value: &Value, what: &str) -> anyhow::Result<i64> {
    value.as_i64().with_context(|| format!("{what} is {value:?}, not an integer"))
}

async fn read_bank(client: &mut Client) -> anyhow::Result<Bank> {
    let results =
        client.query("SELECT id, balance FROM accounts; SELECT id, src, dst, amount FROM transfers").await?;
    ensure!(results.len() == 2, "two result sets, got {}", results.len());
    let mut accounts = BTreeMap::new();
    for row in &results[0].rows {
        accounts.insert(int(&row[0], "accounts.id")?, int(&row[1], "accounts.balance")?);
    }
    let mut transfers = BTreeMap::new();
    for row in &results[1].rows {
        let transfer = Transfer {
            src: int(&row[1], "transfers.src")?,
            dst: int(&row[2], "transfers.dst")?,
            amount: int(&row[3], "transfers.amount")?,
        };
        transfers.insert(int(&row[0], "transfers.id")?, transfer);
    }
    Ok(Bank { accounts, transfers })
}

/// Every acknowledged transfer is there exactly as sent, nothing that was never sent is, the
/// accounts are exactly the opening balances plus the transfers present, and the total holds.
fn check_bank(node: &str, bank: &Bank, ledger: &Ledger) -> anyhow::Result<()> {
    let missing: Vec<i64> =
        ledger.acked.iter().filter(|id| !bank.transfers.contains_key(id)).copied().collect();
    ensure!(
        missing.is_empty(),
        "{node}: {} acknowledged transfers are missing, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    for (id, transfer) in &bank.transfers {
        match ledger.sent.get(id) {
            Some(sent) => {
                ensure!(sent == transfer, "{node}: transfer {id} reads {transfer:?}, was sent as {sent:?}")
            }
            None => bail!("{node}: transfer {id} ({transfer:?}) was never sent"),
        }
    }
    let expected: BTreeMap<i64, i64> = (0..ACCOUNTS).map(|id| (id, INITIAL_BALANCE)).collect();
    let expected = bank.transfers.values().fold(expected, |mut balances, t| {
        *balances.entry(t.src).or_default() -= t.amount;
        *balances.entry(t.dst).or_default() += t.amount;
        balances
    });
    let wrong: Vec<(i64, i64, i64)> = expected
        .iter()
        .filter(|(id, balance)| bank.accounts.get(id) != Some(balance))
        .map(|(id, balance)| (*id, *balance, bank.accounts.get(id).copied().unwrap_or(i64::MIN)))
        .collect();
    ensure!(
        wrong.is_empty() && bank.accounts.len() == expected.len(),
        "{node}: balances disagree with the transfers present: (account, expected, actual) {:?}; {} accounts",
        &wrong[..wrong.len().min(10)],
        bank.accounts.len()
    );
    let total: i64 = bank.accounts.values().sum();
    ensure!(total == TOTAL, "{node}: the balances add up to {total}, not {TOTAL}");
    Ok(())
}

/// The `SHOW STATUS` values that say two nodes hold the same state.
fn position(status: &BTreeMap<String, String>) -> (String, String, String) {
    let get = |name: &str| status.get(name).cloned().unwrap_or_else(|| format!("<no {name}>"));
    (get("current_lsn"), get("digest"), get("last_committed_txid"))
}

/// Waits until every replica's current_lsn, digest and last_committed_txid equal the primary's
/// (which must be idle); returns the primary's status.
async fn wait_converged(
    primary: &Primary,
    replicas: &[&Replica],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut primary_client = primary.connect().await?;
    let mut clients = Vec::new();
    for replica in replicas {
        clients.push(replica.connect().await?);
    }
    let names: Vec<&str> = replicas.iter().map(|r| r.name.as_str()).collect();
    let deadline = Deadline::new(format!("{names:?} to reach the primary's current_lsn and digest"));
    loop {
        let primary_status = show_status(&mut primary_client).await?;
        ensure!(primary_status.get("role").map(String::as_str) == Some("primary"), "{primary_status:?}");
        let target = position(&primary_status);
        let mut seen = Vec::new();
        for (client, name) in clients.iter_mut().zip(&names) {
            let status = show_status(client).await?;
            ensure!(status.get("role").map(String::as_str) == Some("replica"), "{name}: {status:?}");
            seen.push((name.to_string(), position(&status)));
        }
        if seen.iter().all(|(_, p)| *p == target) {
            println!("converged at (current_lsn, digest, last_committed_txid) = {target:?}");
            return Ok(primary_status);
        }
        deadline.tick(|| format!("primary {target:?}, replicas {seen:?}")).await?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_converge_through_kills() -> anyhow::Result<()> {
    let seed = seed()?;
    let result = converge_through_kills(seed).await;
    if let Err(e) = &result {
        eprintln!("FAILED with seed {seed}: {e:#}");
    }
    result
}

async fn converge_through_kills(seed: u64) -> anyhow::Result<()> {
    let mut rng = StdRng::seed_from_u64(seed);
    let temp = tempfile::tempdir()?;
    let primary_dir = temp.path().join("primary");
    let r1_dir = temp.path().join("r1");
    let r2_dir = temp.path().join("r2");
    // fsync stays on: the kills are what is tested.
    let mut primary = Primary::start(&primary_dir)?;
    let primary_addr = primary.addr.clone();
    let password_file = primary_dir.join("admin.secret");
    create_bank(&mut primary.connect().await?).await?;
    let mut r1 = Replica::start(&r1_dir, &primary_addr, &password_file, "r1", &[])?;
    let r1_addr = r1.addr.clone();
    // r2 cascades: it follows r1, so it lives through r1's restarts as well as the primary's.
    let mut r2 = Replica::start(&r2_dir, &r1_addr, &password_file, "r2", &[])?;
    // A replica forbids transparent huge pages as a primary does (tests/primary.rs checks the
    // setting; a kernel without the field shows nothing to check).
    if let Some(thp) = r1.thp_enabled()? {
        ensure!(thp == "0", "a replica with the default settings allows transparent huge pages");
    }
    ensure!(
        r1.system_id == primary.system_id && r2.system_id == primary.system_id,
        "system ids: primary {:016X}, r1 {:016X}, r2 {:016X}",
        primary.system_id,
        r1.system_id,
        r2.system_id
    );

    let mut load = Load::start(&primary_addr, &primary.admin(), 4, rng.gen(), true);
    // Each phase of the load lasts a seeded number of acknowledged transfers, and a while.
    let phase = |rng: &mut StdRng| rng.gen_range(100..300);
    let phase_min = Duration::from_millis(700);
    load.wait_for_more(phase(&mut rng), phase_min, "before killing r1")?;
    r1.kill9()?;
    println!("killed r1 after {} acknowledged transfers", load.acked());
    r1 = Replica::restart_on(&r1_dir, &r1_addr, &primary_addr, &password_file, "r1", &[])?;

    load.wait_for_more(phase(&mut rng), phase_min, "before killing r2")?;
    r2.kill9()?;
    println!("killed r2 after {} acknowledged transfers", load.acked());
    r2 = Replica::start(&r2_dir, &r1_addr, &password_file, "r2", &[])?;

    load.wait_for_more(phase(&mut rng), phase_min, "before killing the primary")?;
    primary.kill9()?;
    println!("killed the primary after {} acknowledged transfers", load.acked());
    primary = Primary::restart_on(&primary_dir, &primary_addr, &[])?;
    ensure!(primary.addr == primary_addr, "restarted on {} instead of {primary_addr}", primary.addr);

    // The writers reconnect and commit on the restarted primary before the load stops.
    load.wait_for_more(phase(&mut rng), phase_min, "after restarting the primary")?;
    let ledger = load.finish().await?;
    println!(
        "{} transfers acknowledged, {} refused as conflicts, {} with an unknown outcome",
        ledger.acked.len(),
        ledger.conflicts,
        ledger.unknown
    );

    let context = |r1: &Replica, r2: &Replica, primary: &Primary| {
        format!("\n--- primary log:\n{}\n--- r1 log:\n{}\n--- r2 log:\n{}", primary.log(), r1.log(), r2.log())
    };
    let converged = match wait_converged(&primary, &[&r1, &r2]).await {
        Ok(status) => status,
        Err(e) => bail!("{e:#}{}", context(&r1, &r2, &primary)),
    };
    let primary_bank = read_bank(&mut primary.connect().await?).await?;
    check_bank("primary", &primary_bank, &ledger)?;
    for replica in [&r1, &r2] {
        let bank = read_bank(&mut replica.connect().await?).await?;
        check_bank(&replica.name, &bank, &ledger)?;
        ensure!(
            bank == primary_bank,
            "{} holds another bank than the primary at the same Lsn and digest: {} vs {} transfers",
            replica.name,
            bank.transfers.len(),
            primary_bank.transfers.len()
        );
    }
    // Both links are back and report exactly where they are: the primary feeds r1, r1 feeds r2.
    let lsn = converged.get("current_lsn").cloned().unwrap_or_default();
    let txid = converged.get("last_committed_txid").cloned().unwrap_or_default();
    let links = [(&primary.addr, primary.connect().await?, &r1), (&r1.addr, r1.connect().await?, &r2)];
    for (upstream_addr, mut upstream, standby) in links {
        if let Err(e) = wait_link_settled(&mut upstream, upstream_addr, standby, &lsn, &txid).await {
            bail!("{e:#}{}", context(&r1, &r2, &primary));
        }
    }
    for (name, running) in
        [("primary", primary.is_running()), ("r1", r1.is_running()), ("r2", r2.is_running())]
    {
        ensure!(running, "{name} exited{}", context(&r1, &r2, &primary));
    }
    Ok(())
}

/// The `SHOW REPLICATION` rows, each as column name → value.
async fn show_replication(client: &mut Client) -> anyhow::Result<Vec<BTreeMap<String, Value>>> {
    let results = client.query("SHOW REPLICATION").await.context("SHOW REPLICATION")?;
    let result = results.first().context("SHOW REPLICATION returned no result")?;
    Ok(result
        .rows
        .iter()
        .map(|row| result.columns.iter().map(|c| c.name.clone()).zip(row.iter().cloned()).collect())
        .collect())
}

fn text_of(row: &BTreeMap<String, Value>, column: &str) -> String {
    row.get(column).map_or_else(|| format!("<no column {column}>"), Value::to_string)
}

/// Waits until the upstream's `SHOW REPLICATION` lists exactly `standby`, streaming and
/// asynchronous, with every position at `lsn` and no lag shown (caught up and idle), and the
/// standby's `SHOW RECOVERY` says it streams from `upstream_addr` with everything up to `lsn`
/// received, flushed and replayed (up to TxId `txid`) and no error left.
async fn wait_link_settled(
    upstream: &mut Client,
    upstream_addr: &str,
    standby: &Replica,
    lsn: &str,
    txid: &str,
) -> anyhow::Result<()> {
    let name = standby.name.as_str();
    let expected_replication: BTreeMap<&str, &str> = [
        ("name", name),
        ("state", "streaming"),
        ("sent_lsn", lsn),
        ("write_lsn", lsn),
        ("flush_lsn", lsn),
        ("replay_lsn", lsn),
        ("write_lag_ms", "NULL"),
        ("flush_lag_ms", "NULL"),
        ("replay_lag_ms", "NULL"),
        ("sync_state", "async"),
        ("slot", "NULL"),
        ("slot_restart_lsn", "NULL"),
        ("slot_status", "NULL"),
    ]
    .into();
    let expected_recovery: BTreeMap<&str, &str> = [
        ("state", "streaming"),
        ("upstream", upstream_addr),
        ("receive_lsn", lsn),
        ("write_lsn", lsn),
        ("flush_lsn", lsn),
        ("replay_lsn", lsn),
        ("upstream_flush_lsn", lsn),
        ("last_replayed_txid", txid),
        ("target", "NULL"),
        ("pause_state", "not paused"),
        ("pause_reason", "NULL"),
        ("last_error", "NULL"),
    ]
    .into();
    let mut session = standby.connect().await?;
    let deadline = Deadline::new(format!("{name}'s link to settle at {lsn}"));
    loop {
        let rows = show_replication(upstream).await?;
        let replication_ok = rows.len() == 1
            && expected_replication.iter().all(|(column, value)| text_of(&rows[0], column) == *value);
        let recovery = show_one_row(&mut session, "SHOW RECOVERY").await?;
        let recovery_ok =
            expected_recovery.iter().all(|(column, value)| text_of(&recovery, column) == *value);
        if replication_ok && recovery_ok {
            return Ok(());
        }
        deadline
            .tick(|| {
                format!(
                    "SHOW REPLICATION on {upstream_addr} {rows:?} (expected one row with \
                     {expected_replication:?}); SHOW RECOVERY on {name} {recovery:?} (expected \
                     {expected_recovery:?})"
                )
            })
            .await?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_apply_makes_every_acknowledged_commit_visible_on_the_replica() -> anyhow::Result<()> {
    const COMMITS: i64 = 300;
    let temp = tempfile::tempdir()?;
    let primary_config = write_config(
        temp.path(),
        "primary.toml",
        &format!("synchronous_standbys = \"FIRST 1 (r1)\"\n{NO_FSYNC}"),
    )?;
    let replica_config = write_config(temp.path(), "replica.toml", NO_FSYNC)?;
    let primary_dir = temp.path().join("primary");
    let primary = Primary::start_with(&primary_dir, &["--config", &primary_config])?;
    let mut writer = primary.connect().await?;
    writer.query("CREATE TABLE t (id BIGINT PRIMARY KEY, v TEXT NOT NULL)").await?;
    let replica = Replica::start(
        &temp.path().join("r1"),
        &primary.addr,
        &primary_dir.join("admin.secret"),
        "r1",
        &["--config", &replica_config],
    )?;

    // Wait until the primary counts r1 as its synchronous standby.
    let deadline = Deadline::new("the primary to list r1 as a streaming synchronous standby");
    loop {
        let rows = show_replication(&mut writer).await?;
        let r1 = rows.iter().find(|row| text_of(row, "name") == "r1");
        if r1.is_some_and(|row| text_of(row, "state") == "streaming" && text_of(row, "sync_state") == "sync")
        {
            break;
        }
        deadline.tick(|| format!("{rows:?}")).await?;
    }

    let set = writer.query("SET synchronous_commit = remote_apply").await?;
    ensure!(set.first().map(|r| r.tag.as_str()) == Some("SET"), "SET answered {set:?}");
    let mut reader = replica.connect().await?;
    for i in 0..COMMITS {
        let inserted = writer.query(&format!("INSERT INTO t VALUES ({i}, 'row {i}')")).await?;
        let commit_lsn = inserted.first().and_then(|r| r.txid.and(r.lsn));
        let Some(commit_lsn) = commit_lsn else {
            bail!("insert {i} was acknowledged without a commit: {inserted:?}")
        };
        let read = reader.query(&format!("SELECT v FROM t WHERE id = {i}")).await?;
        let rows = read.first().map(|r| r.rows.clone()).unwrap_or_default();
        if rows != vec![vec![Value::Text(format!("row {i}"))]] {
            let status = show_status(&mut reader).await?;
            bail!(
                "commit {i} (lsn {commit_lsn}) was acknowledged under remote_apply, but the replica's next \
                 query saw {rows:?}; the replica's current_lsn then: {:?}, {} of {COMMITS} commits checked\n\
                 --- primary log:\n{}\n--- replica log:\n{}",
                status.get("current_lsn"),
                i,
                primary.log(),
                replica.log()
            );
        }
    }
    let count = reader.query("SELECT count(*) FROM t").await?;
    ensure!(count[0].rows == vec![vec![Value::Int(COMMITS)]], "the replica counts {:?}", count[0].rows);
    Ok(())
}

/// Waits until the primary lists `name` as a streaming synchronous standby.
async fn wait_sync_standby(client: &mut Client, name: &str) -> anyhow::Result<()> {
    let deadline = Deadline::new(format!("the primary to list {name} as a streaming synchronous standby"));
    loop {
        let rows = show_replication(client).await?;
        let row = rows.iter().find(|row| text_of(row, "name") == name);
        if row.is_some_and(|row| text_of(row, "state") == "streaming" && text_of(row, "sync_state") == "sync")
        {
            return Ok(());
        }
        deadline.tick(|| format!("{rows:?}")).await?;
    }
}

/// A primary sends `remote_apply` commits to its standby before they are durable on it
/// (decision #34), so a standby killed mid-stream restarts holding WAL its primary had not
/// confirmed: it shows none of it until the primary sends the same bytes again. Every commit
/// acknowledged before, between and after three SIGKILLs of the standby is on it at the end,
/// and it reaches the primary's exact state. Both servers fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_synchronous_standby_killed_mid_stream_keeps_every_acknowledged_commit() -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let primary_config =
        write_config(temp.path(), "primary.toml", "synchronous_standbys = \"FIRST 1 (r1)\"\n")?;
    let primary_dir = temp.path().join("primary");
    let mut primary = Primary::start_with(&primary_dir, &["--config", &primary_config])?;
    let password_file = primary_dir.join("admin.secret");
    let mut admin = primary.connect().await?;
    admin.query("CREATE TABLE t (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)").await?;
    let r1_dir = temp.path().join("r1");
    let mut r1 = Replica::start(&r1_dir, &primary.addr, &password_file, "r1", &[])?;
    let r1_addr = r1.addr.clone();
    wait_sync_standby(&mut admin, "r1").await?;

    // One writer, remote_apply: each commit waits for r1, through its restarts too.
    let acked = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writer = primary.connect().await?;
    let set = writer.query("SET synchronous_commit = remote_apply").await?;
    ensure!(set.first().map(|r| r.tag.as_str()) == Some("SET"), "SET answered {set:?}");
    let (writer_acked, writer_stop) = (Arc::clone(&acked), Arc::clone(&stop));
    let writing = tokio::spawn(async move {
        let mut id = 0i64;
        while !writer_stop.load(Ordering::Relaxed) {
            writer.query(&format!("INSERT INTO t VALUES ({id}, {})", id * 3)).await.context("insert")?;
            id += 1;
            writer_acked.store(id as usize, Ordering::Relaxed);
        }
        anyhow::Ok(id)
    });
    let wait_for_more = |more: usize, what: &str| {
        let target = acked.load(Ordering::Relaxed) + more;
        let deadline = Instant::now() + DEADLINE;
        while acked.load(Ordering::Relaxed) < target {
            ensure!(!writing.is_finished(), "the writer stopped {what}");
            ensure!(Instant::now() < deadline, "timed out waiting for {more} more commits {what}");
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(())
    };
    for kill in 1..=3 {
        wait_for_more(200, &format!("before kill {kill}"))?;
        r1.kill9()?;
        // Commits wait for r1 now: none is acknowledged until it is back.
        let before = acked.load(Ordering::Relaxed) as i64;
        println!("killed r1 after {before} acknowledged commits");
        r1 = Replica::restart_on(&r1_dir, &r1_addr, &primary.addr, &password_file, "r1", &[])?;
        // Each of them was visible on r1 before the kill: it shows at once on restart, from
        // what its crash recovery replayed, whatever its pending tail holds.
        let shown = r1.connect().await?.query("SELECT count(*) FROM t").await?;
        let Some(Value::Int(count)) = shown[0].rows.first().and_then(|row| row.first()).cloned() else {
            bail!("count(*) answered {shown:?}")
        };
        ensure!(count >= before, "r1 restarted showing {count} rows, fewer than the {before} acknowledged");
    }
    wait_for_more(200, "after the last restart")?;
    stop.store(true, Ordering::Relaxed);
    let written = tokio::time::timeout(DEADLINE, writing).await.context("the writer did not stop")???;
    let tails = r1.log().matches("replayed up to the Lsn the upstream confirmed").count();
    println!("{written} commits acknowledged; r1 restarted with a pending tail {tails} of 3 times");

    let context = || format!("\n--- primary log:\n{}\n--- r1 log:\n{}", primary.log(), r1.log());
    if let Err(e) = wait_converged(&primary, &[&r1]).await {
        bail!("{e:#}{}", context());
    }
    let mut reader = r1.connect().await?;
    let read = reader.query("SELECT count(*), min(id), max(id), sum(v) FROM t").await?;
    let want = vec![vec![
        Value::Int(written),
        Value::Int(0),
        Value::Int(written - 1),
        Value::Int(3 * written * (written - 1) / 2),
    ]];
    ensure!(
        read[0].rows == want,
        "r1 holds {:?}, the writer had {want:?} acknowledged{}",
        read[0].rows,
        context()
    );
    let running = (r1.is_running(), primary.is_running());
    ensure!(running == (true, true), "a server exited (r1, primary running: {running:?})");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_standby_sum_is_invariant_while_transfers_replay() -> anyhow::Result<()> {
    const READS: usize = 500;
    /// Replay must visibly advance during the reads: at least this many distinct Lsns.
    const DISTINCT_LSNS_MIN: usize = 10;
    let seed = seed()?;
    let temp = tempfile::tempdir()?;
    let config = write_config(temp.path(), "hindsight.toml", NO_FSYNC)?;
    let primary_dir = temp.path().join("primary");
    let primary = Primary::start_with(&primary_dir, &["--config", &config])?;
    create_bank(&mut primary.connect().await?).await?;
    let replica = Replica::start(
        &temp.path().join("r1"),
        &primary.addr,
        &primary_dir.join("admin.secret"),
        "r1",
        &["--config", &config],
    )?;
    wait_converged(&primary, &[&replica]).await?;

    let mut load = Load::start(&primary.addr, &primary.admin(), 3, seed, false);
    load.wait_for_more(20, Duration::ZERO, "before the reads start")?;
    let acked_before = load.acked();
    let mut reader = replica.connect().await?;
    let mut lsns = BTreeSet::new();
    for i in 0..READS {
        let result =
            reader.query("SELECT sum(balance), count(*), current_lsn() FROM accounts").await.with_context(
                || format!("read {i} of {READS} on the replica failed (replay must never cancel it)"),
            )?;
        let rows = &result[0].rows;
        ensure!(
            rows.len() == 1 && rows[0][0] == Value::Int(TOTAL) && rows[0][1] == Value::Int(ACCOUNTS),
            "read {i} of {READS} on the replica saw (sum, count, lsn) = {rows:?}, not ({TOTAL}, {ACCOUNTS}, …)"
        );
        lsns.insert(rows[0][2].to_string().parse::<Lsn>().map_err(|e| anyhow::anyhow!("{e:?}"))?);
    }
    let acked_during = load.acked() - acked_before;
    let ledger = load.finish().await?;
    println!(
        "{READS} reads saw {} distinct replay Lsns while {acked_during} transfers were acknowledged \
         ({} conflicts)",
        lsns.len(),
        ledger.conflicts
    );
    ensure!(
        lsns.len() >= DISTINCT_LSNS_MIN,
        "the reads saw only {} distinct replay Lsns ({lsns:?}): replay did not run alongside them",
        lsns.len()
    );
    wait_converged(&primary, &[&replica]).await?;
    check_bank("replica", &read_bank(&mut replica.connect().await?).await?, &ledger)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_refuses_writes_and_a_gone_wal_range_is_named() -> anyhow::Result<()> {
    const SEGMENT_SIZE_BYTES: u64 = 1 << 20;
    /// Rows of this many bytes, this many per statement, this many statements: 4 MiB of WAL.
    const PAD_BYTES: usize = 4_000;
    const ROWS_PER_STATEMENT: usize = 25;
    const STATEMENTS: usize = 42;
    let temp = tempfile::tempdir()?;
    let config = write_config(
        temp.path(),
        "hindsight.toml",
        &format!("max_slot_wal_keep_bytes = {SEGMENT_SIZE_BYTES}\n{NO_FSYNC}segment_size_bytes = {SEGMENT_SIZE_BYTES}\n"),
    )?;
    let primary_dir = temp.path().join("primary");
    let mut primary = Primary::start_with(&primary_dir, &["--config", &config])?;
    let mut admin = primary.connect().await?;
    admin.query("CREATE TABLE t (id BIGINT PRIMARY KEY, pad TEXT NOT NULL)").await?;
    admin.query("INSERT INTO t VALUES (0, 'before the replica stopped')").await?;
    admin.query("CREATE REPLICATION SLOT r1").await?;
    let replica_dir = temp.path().join("r1");
    let password_file = primary_dir.join("admin.secret");
    let replica_args = ["--config", config.as_str(), "--slot", "r1"];
    let mut replica = Replica::start(&replica_dir, &primary.addr, &password_file, "r1", &replica_args)?;

    // Writes on a replica get `read_only` with a hint about PROMOTE, and the session goes on.
    let mut session = replica.connect().await?;
    ensure!(session.read_only(), "the replica's handshake does not say read-only");
    for sql in [
        "INSERT INTO t VALUES (1, 'x')",
        "UPDATE t SET pad = 'y' WHERE id = 0",
        "DELETE FROM t WHERE id = 0",
        "CREATE TABLE u (id BIGINT PRIMARY KEY)",
        "CREATE RESTORE POINT 'on_a_replica'",
    ] {
        match session.query(sql).await {
            Err(ClientError::Server { code, hint, message, .. }) => {
                ensure!(code == "read_only", "{sql}: code {code} ({message}), not read_only");
                let hint = hint.unwrap_or_default();
                ensure!(hint.contains("PROMOTE"), "{sql}: the hint {hint:?} does not mention PROMOTE");
            }
            other => bail!("{sql} on a replica answered {other:?}, not read_only"),
        }
    }
    let count = session.query("SELECT count(*) FROM t").await?;
    ensure!(
        count[0].rows == vec![vec![Value::Int(1)]],
        "after refused writes the replica counts {:?}",
        count[0].rows
    );
    session.close().await;

    // Stop the replica once it has everything; its slot now holds the WAL from there.
    let converged = wait_converged(&primary, &[&replica]).await?;
    let needed: Lsn = converged
        .get("current_lsn")
        .context("no current_lsn")?
        .parse()
        .map_err(|e| anyhow::anyhow!("parse current_lsn: {e:?}"))?;
    replica.kill9()?;

    // Write well past max_slot_wal_keep_bytes, then checkpoint: the slot is invalidated and the
    // segments it held are removed.
    let pad = "x".repeat(PAD_BYTES);
    for s in 0..STATEMENTS {
        let values: Vec<String> = (0..ROWS_PER_STATEMENT)
            .map(|r| format!("({}, '{pad}')", 1 + s * ROWS_PER_STATEMENT + r))
            .collect();
        admin.query(&format!("INSERT INTO t VALUES {}", values.join(", "))).await?;
    }
    let rows_on_primary = 1 + (STATEMENTS * ROWS_PER_STATEMENT) as i64;
    admin.query("CHECKPOINT").await?;
    let needed_segment = hindsight_engine::wal::segment::segment_file_name(
        hindsight_protocol::Timeline(1),
        hindsight_engine::wal::segment::segment_of(needed, SEGMENT_SIZE_BYTES),
    );
    let mut segments: Vec<String> = std::fs::read_dir(primary_dir.join("wal"))
        .context("list the primary's WAL")?
        .filter_map(|entry| entry.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    segments.sort();
    ensure!(
        !segments.contains(&needed_segment),
        "the checkpoint kept segment {needed_segment} (holding {needed}) although the slot fell {} bytes past \
         max_slot_wal_keep_bytes; WAL files: {segments:?}\n--- primary log:\n{}",
        SEGMENT_SIZE_BYTES,
        primary.log()
    );
    let slots = show_replication(&mut admin).await?;
    let slot = slots.iter().find(|row| text_of(row, "slot") == "r1");
    ensure!(
        slot.is_some_and(|row| text_of(row, "slot_status").starts_with("invalidated")),
        "SHOW REPLICATION does not show slot r1 invalidated: {slots:?}"
    );

    // The replica resumes, asks for WAL from `needed`, and is told by name that it is gone.
    let mut replica = Replica::start(&replica_dir, &primary.addr, &password_file, "r1", &replica_args)?;
    let mut session = replica.connect().await?;
    let deadline = Deadline::new("the restarted replica's SHOW RECOVERY to report the missing WAL");
    let last_error = loop {
        let recovery = show_one_row(&mut session, "SHOW RECOVERY").await?;
        match recovery.get("last_error") {
            Some(Value::Text(error)) => break error.clone(),
            Some(Value::Null) => {}
            other => bail!("SHOW RECOVERY's last_error is {other:?}: {recovery:?}"),
        }
        deadline.tick(|| format!("{recovery:?}")).await?;
    };
    println!("the replica's last_error: {last_error}");
    ensure!(
        last_error.contains("wal_missing") && last_error.contains(&needed.to_string()),
        "the replica's last_error does not name wal_missing from {needed}: {last_error:?}\n--- replica log:\n{}",
        replica.log()
    );
    let log = replica.log();
    ensure!(log.contains("wal_missing"), "the replica's log does not name wal_missing:\n{log}");

    // Both stay up: the primary serves, and the replica still serves what it has.
    ensure!(primary.is_running(), "the primary exited:\n{}", primary.log());
    let count = admin.query("SELECT count(*) FROM t").await?;
    ensure!(
        count[0].rows == vec![vec![Value::Int(rows_on_primary)]],
        "the primary counts {:?}",
        count[0].rows
    );
    ensure!(replica.is_running(), "the replica exited:\n{}", replica.log());
    let count = session.query("SELECT count(*) FROM t").await?;
    ensure!(count[0].rows == vec![vec![Value::Int(1)]], "the replica counts {:?}", count[0].rows);
    session.close().await;
    let status = primary.terminate()?;
    ensure!(status.success(), "the primary's clean stop: {status}");
    Ok(())
}
