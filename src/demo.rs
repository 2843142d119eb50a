//! `hindsight demo`: the story on this machine, narrated.
//!
//! It starts a primary as a separate process on a temporary directory, opens a small bank
//! through the shell's code path, then runs a transfer load from several clients and SIGKILLs
//! the primary mid-load; it restarts it on the same directory and checks that every
//! acknowledged transfer survived and money is conserved. Then a replica bootstraps from the
//! primary and follows it under load, answers queries while it replays, is SIGKILLed and
//! restarted mid-load, and ends with the primary's exact state (digest). Both stop cleanly.
//! Later milestones add the archive, the paused point-in-time recovery and the promotion.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use hindsight_primary::client::{Client, ConnectOptions};
use hindsight_primary::ready::ReadyLine;
use hindsight_protocol::Lsn;

use crate::render::Format;
use crate::shell::{Outcome, Shell};

/// How long the demo waits for a server to say it is listening (a replica says so once its
/// bootstrap is done).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the demo waits for a server to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Accounts in the demo's bank.
const ACCOUNTS: i64 = 100;
/// Each account's opening balance.
const OPENING_BALANCE: i64 = 1_000;
/// Concurrent client connections making transfers before the crash.
const LOAD_CLIENTS: i64 = 4;
/// Transfers acknowledged before the demo pulls the plug.
const TRANSFERS_BEFORE_CRASH: u64 = 2_000;
/// How long the transfer load may take to reach that many.
const LOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Transfers made while the replica follows, before it is killed and again after it is back.
const TRANSFERS_PER_REPLICA_STEP: u64 = 1_000;
/// How long the replica may take to replay up to the primary once the load stops.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);
/// How often the demo looks while it waits for the load or the replica.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
/// The replica's name on the primary.
const REPLICA_NAME: &str = "demo-replica";
/// How many more times the demo sums the balances on the replica while transfers replay.
const HOT_STANDBY_SUMS: usize = 20;
/// What a replica logs when it bootstraps, which a restarted one must not.
const BOOTSTRAP_LOG_LINE: &str = "receiving a base backup";

/// Act one: what to say, then the SQL to run through the shell.
const TABLES: &[(&str, &str)] = &[
    (
        "Create a bank. Every commit is in the write-ahead log, fsynced, before it is acknowledged.",
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY, owner TEXT NOT NULL, balance BIGINT NOT NULL);",
    ),
    ("", "CREATE TABLE transfers (id BIGINT PRIMARY KEY, src BIGINT NOT NULL, dst BIGINT NOT NULL, amount BIGINT NOT NULL);"),
];

/// Act one, continued after the accounts are opened.
const SETUP: &[(&str, &str)] = &[
    ("Move money inside one transaction: both updates commit together, or neither does.", "BEGIN;"),
    ("", "UPDATE accounts SET balance = balance - 30 WHERE id = 1;"),
    ("", "UPDATE accounts SET balance = balance + 30 WHERE id = 2;"),
    ("", "COMMIT;"),
    (
        "Read it back; the index on the primary key serves the range.",
        "SELECT id, owner, balance FROM accounts WHERE id BETWEEN 1 AND 3 ORDER BY id;",
    ),
    (
        "Name this moment, so a recovery can stop exactly here later.",
        "CREATE RESTORE POINT 'before-the-rush';",
    ),
    ("Snapshot the state in the background; commits go on meanwhile.", "CHECKPOINT;"),
];

/// Act three, after the crash: the checks.
const AFTER: &[(&str, &str)] = &[
    (
        "Money is conserved: no transfer is half-applied.",
        "SELECT count(*) AS accounts, sum(balance) AS total FROM accounts;",
    ),
    (
        "Every acknowledged transfer is there (checked per client above); all of them:",
        "SELECT count(*) AS transfers, sum(amount) AS moved FROM transfers;",
    ),
    ("Where the log stands, and the digest every replayed commit was checked against.", "SHOW STATUS;"),
];

/// Runs the demo; an error is the one-line cause.
pub fn run() -> anyhow::Result<()> {
    let temp = tempfile::tempdir().context("create a temporary directory")?;
    let data = temp.path().join("data");
    let log_path = temp.path().join("primary.log");
    println!("== hindsight demo: a bank on one machine, a crash, and a recovery that proves itself ==\n");
    println!("Starting a primary on {} (its log: {})", data.display(), log_path.display());
    let mut primary = ServerProcess::primary(&data, &log_path)?;
    let addr = primary.wait_ready()?;
    println!("The primary is listening on {addr}.");

    let password = std::fs::read_to_string(data.join("admin.secret"))
        .context("read the admin secret the primary wrote")?
        .trim()
        .to_string();
    let options =
        ConnectOptions { password, application_name: "hindsight demo".into(), ..ConnectOptions::default() };
    let mut shell = connect_shell(&addr, &options)?;
    run_steps(&mut shell, TABLES)?;
    let opening = format!(
        "INSERT INTO accounts VALUES {};",
        (1..=ACCOUNTS)
            .map(|i| format!("({i}, 'owner-{i}', {OPENING_BALANCE})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("\n-- Open {ACCOUNTS} accounts with {OPENING_BALANCE} each. The answer names the transaction and the Lsn of its commit.");
    println!("{}INSERT INTO accounts VALUES (1, 'owner-1', 1000), … ({ACCOUNTS} rows);", shell.prompt());
    if shell.run_sql(&opening) != Outcome::Ok {
        bail!("the opening INSERT failed");
    }
    run_steps(&mut shell, SETUP)?;
    shell.close();

    println!("\n== The crash ==\n");
    println!(
        "{LOAD_CLIENTS} clients now make transfers as fast as they can, each a transaction of two UPDATEs and an \
         INSERT. After {TRANSFERS_BEFORE_CRASH} acknowledged transfers the primary gets SIGKILL: no shutdown, no flush."
    );
    let load = Load::start(addr.clone(), options.clone(), 0);
    load.wait_for(TRANSFERS_BEFORE_CRASH)?;
    primary.kill()?;
    let acked = load.finish();
    let total: u64 = acked.iter().sum();
    println!("kill -9 sent. Transfers acknowledged to the clients: {total} (per client: {acked:?}).");

    println!("\n== The recovery ==\n");
    println!("Starting the primary again on the same directory: newest snapshot + WAL replay, digest checked per commit.");
    let log_path2 = temp.path().join("primary-restart.log");
    let mut primary = ServerProcess::primary(&data, &log_path2)?;
    let addr = primary.wait_ready()?;
    let log = std::fs::read_to_string(&log_path2).unwrap_or_default();
    if let Some(line) = log.lines().find(|l| l.contains("database open")) {
        let fields: Vec<&str> = line
            .split_whitespace()
            .filter(|w| {
                w.starts_with("replayed_txns=") || w.starts_with("elapsed_ms=") || w.starts_with("txid=")
            })
            .collect();
        println!("The primary's log says: database open {}", fields.join(" "));
    }
    if let Some(line) = log.lines().find(|l| l.contains("torn WAL tail")) {
        println!("and: {}", line.trim());
    }
    let mut shell = connect_shell(&addr, &options)?;
    for (client, &n) in acked.iter().enumerate() {
        let (low, high) = Load::id_range(client as i64, n);
        let sql = format!("SELECT count(*) FROM transfers WHERE id BETWEEN {low} AND {high};");
        let found = shell.query_i64(&sql).context("count a client's transfers")?;
        if n > 0 && found != n as i64 {
            bail!("client {client}: {n} transfers were acknowledged but {found} survived");
        }
    }
    println!("Checked: every one of the {total} acknowledged transfers survived the kill -9.");
    run_steps(&mut shell, AFTER)?;
    let sum = shell.query_i64("SELECT sum(balance) FROM accounts;").context("sum the balances")?;
    if sum != ACCOUNTS * OPENING_BALANCE {
        bail!("money was not conserved: {sum} instead of {}", ACCOUNTS * OPENING_BALANCE);
    }
    shell.close();

    replica_act(temp.path(), &data, &addr, &options)?;

    println!("\nStopping the primary with SIGTERM: it finishes what runs and exits cleanly.");
    primary.stop()?;
    println!(
        "Done. Next milestones extend this story: the archive, a paused point-in-time recovery, a promotion."
    );
    Ok(())
}

/// Act four: a replica bootstraps, follows under load, survives a SIGKILL, and converges.
fn replica_act(dir: &Path, primary_data: &Path, addr: &str, options: &ConnectOptions) -> anyhow::Result<()> {
    println!("\n== A replica ==\n");
    let replica_data = dir.join("replica");
    let log_path = dir.join("replica.log");
    println!(
        "Starting a replica on {} (its log: {}). Its directory is empty, so it bootstraps from a base \
         backup the primary streams (a snapshot at an Lsn, then the WAL from there; writers are never \
         blocked), then follows the primary live.",
        replica_data.display(),
        log_path.display()
    );
    let password_file = primary_data.join("admin.secret");
    let mut replica = ServerProcess::replica(&replica_data, addr, &password_file, &log_path)?;
    let replica_addr = replica.wait_ready()?;
    println!("The replica serves read-only queries on {replica_addr}.");

    println!(
        "\n-- {LOAD_CLIENTS} clients make transfers on the primary again. On the replica, a query sums all \
         balances while the transfers replay: it reads one consistent snapshot, so the sum never moves, and \
         replay never waits for it nor cancels it."
    );
    let load = Load::start(addr.to_string(), options.clone(), 1);
    let mut on_replica = connect_shell(&replica_addr, options)?;
    load.wait_for(TRANSFERS_PER_REPLICA_STEP / 2)?;
    run_steps(&mut on_replica, &[("", "SELECT count(*) AS accounts, sum(balance) AS total FROM accounts;")])?;
    for _ in 0..HOT_STANDBY_SUMS {
        let sum = on_replica.query_i64("SELECT sum(balance) FROM accounts;").context("sum on the replica")?;
        if sum != ACCOUNTS * OPENING_BALANCE {
            bail!("a query on the replica summed {sum} mid-replay instead of {}", ACCOUNTS * OPENING_BALANCE);
        }
    }
    let mut shell = connect_shell(addr, options)?;
    run_steps(
        &mut shell,
        &[(
            "Meanwhile the primary sees the replica streaming, with lags measured from its acknowledgements.",
            "SHOW REPLICATION;",
        )],
    )?;
    let replicas = shell.query("SHOW REPLICATION;").context("SHOW REPLICATION")?;
    let streaming = replicas.iter().flat_map(|r| r.rows.iter()).any(|row| {
        row.first().and_then(|v| v.as_str()) == Some(REPLICA_NAME)
            && row.get(2).and_then(|v| v.as_str()) == Some("streaming")
    });
    if !streaming {
        bail!("the primary does not show {REPLICA_NAME} streaming");
    }
    load.wait_for(TRANSFERS_PER_REPLICA_STEP)?;
    on_replica.close();

    println!("\n-- The replica gets SIGKILL mid-load, and starts again on the same directory: it resumes streaming from where its WAL ends.");
    replica.kill()?;
    let restart_log = dir.join("replica-restart.log");
    let mut replica = ServerProcess::replica(&replica_data, addr, &password_file, &restart_log)?;
    let replica_addr = replica.wait_ready()?;
    if std::fs::read_to_string(&restart_log).unwrap_or_default().contains(BOOTSTRAP_LOG_LINE) {
        bail!("the restarted replica bootstrapped again instead of resuming (see {})", restart_log.display());
    }
    let back = load.acknowledged();
    load.wait_for(back + TRANSFERS_PER_REPLICA_STEP)?;
    let acked: u64 = load.finish().iter().sum();
    println!("The load stopped after {acked} more transfers.");

    let (at, digest) = wait_caught_up(addr, &replica_addr, options)?;
    println!("The replica replayed up to the primary's Lsn {at}; both have digest {digest}: the same state, row for row.");
    let mut on_replica = connect_shell(&replica_addr, options)?;
    run_steps(
        &mut on_replica,
        &[
            (
                "On the replica: the same money, the same transfers.",
                "SELECT count(*) AS accounts, sum(balance) AS total FROM accounts;",
            ),
            ("", "SELECT count(*) AS transfers FROM transfers;"),
            ("How far it got, and from where.", "SHOW RECOVERY;"),
        ],
    )?;
    println!("\n-- A write on the replica is refused, with the way out.");
    let write = "INSERT INTO accounts VALUES (999, 'nobody', 1);";
    println!("{}{write}", on_replica.prompt());
    if on_replica.run_sql(write) != Outcome::Failed {
        bail!("the replica accepted a write");
    }
    match on_replica.query(write) {
        Err(e) if e.code() == Some("read_only") => {}
        other => bail!("a write on the replica answered {other:?}, not read_only"),
    }
    on_replica.close();
    shell.close();
    println!("\nStopping the replica with SIGTERM.");
    replica.stop()
}

/// The `current_lsn` and `digest` rows of `SHOW STATUS` on `client`'s server.
fn status(runtime: &tokio::runtime::Runtime, client: &mut Client) -> anyhow::Result<(Lsn, String)> {
    let results = runtime.block_on(client.query("SHOW STATUS")).context("SHOW STATUS")?;
    let field = |name: &str| {
        results
            .iter()
            .flat_map(|r| r.rows.iter())
            .find(|row| row.first().and_then(|v| v.as_str()) == Some(name))
            .and_then(|row| row.get(1).and_then(|v| v.as_str()).map(str::to_string))
            .with_context(|| format!("SHOW STATUS has no {name}"))
    };
    let lsn = field("current_lsn")?;
    let lsn = lsn.parse().map_err(|e| anyhow::anyhow!("SHOW STATUS current_lsn {lsn:?}: {e}"))?;
    Ok((lsn, field("digest")?))
}

/// Waits until the replica at `replica` has replayed at least to the idle primary's Lsn with
/// the same digest; returns both.
fn wait_caught_up(primary: &str, replica: &str, options: &ConnectOptions) -> anyhow::Result<(Lsn, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let mut on_primary =
        runtime.block_on(Client::connect(primary, options.clone())).context("connect to the primary")?;
    let mut on_replica =
        runtime.block_on(Client::connect(replica, options.clone())).context("connect to the replica")?;
    let deadline = Instant::now() + CATCH_UP_TIMEOUT;
    loop {
        // Read again each time: the primary may log a checkpoint meanwhile.
        let target = status(&runtime, &mut on_primary)?;
        let at = status(&runtime, &mut on_replica)?;
        if at.0 >= target.0 && at.1 == target.1 {
            runtime.block_on(on_primary.close());
            runtime.block_on(on_replica.close());
            return Ok(target);
        }
        if Instant::now() > deadline {
            bail!(
                "the replica did not catch up within {} s: it is at {} (digest {}), the primary at {} (digest {})",
                CATCH_UP_TIMEOUT.as_secs(),
                at.0,
                at.1,
                target.0,
                target.1
            );
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn connect_shell(addr: &str, options: &ConnectOptions) -> anyhow::Result<Shell> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    Shell::connect(runtime, addr, options.clone(), Format::Table)
        .with_context(|| format!("connect to {addr}"))
}

fn run_steps(shell: &mut Shell, steps: &[(&str, &str)]) -> anyhow::Result<()> {
    for (narration, sql) in steps {
        if !narration.is_empty() {
            println!("\n-- {narration}");
        }
        println!("{}{sql}", shell.prompt());
        if shell.run_sql(sql) != Outcome::Ok {
            bail!("the statement failed: {sql}");
        }
    }
    Ok(())
}

/// The transfer load: clients on their own threads, each counting its acknowledged transfers.
struct Load {
    acked: Vec<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
    /// Clients still making transfers.
    running: Arc<AtomicUsize>,
    /// Why the first client that stopped on its own stopped.
    failure: Arc<Mutex<Option<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Client `c` of load `round` numbers its transfers `c * 10^9 + round * 10^8 + 1, + 2, …`.
    fn id_base(client: i64, round: i64) -> i64 {
        assert!((0..10).contains(&round), "load round {round} would reuse another client's ids");
        client * 1_000_000_000 + round * 100_000_000
    }

    /// The transfer ids client `client` of the first load used for `acked` transfers.
    fn id_range(client: i64, acked: u64) -> (i64, i64) {
        let base = Load::id_base(client, 0);
        (base + 1, base + acked as i64)
    }

    fn start(addr: String, options: ConnectOptions, round: i64) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let running = Arc::new(AtomicUsize::new(LOAD_CLIENTS as usize));
        let failure = Arc::new(Mutex::new(None));
        let mut acked = Vec::new();
        let mut threads = Vec::new();
        for client in 0..LOAD_CLIENTS {
            let count = Arc::new(AtomicU64::new(0));
            acked.push(Arc::clone(&count));
            let (addr, options, stop) = (addr.clone(), options.clone(), Arc::clone(&stop));
            let (running, failure) = (Arc::clone(&running), Arc::clone(&failure));
            threads.push(std::thread::spawn(move || {
                let stopped = Load::client(&addr, options, client, round, &count, &stop);
                if let Err(why) = stopped {
                    failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(why);
                }
                running.fetch_sub(1, Ordering::AcqRel);
            }));
        }
        Load { acked, stop, running, failure, threads }
    }

    /// One client's transfers until `stop`; an error says why it stopped on its own.
    fn client(
        addr: &str,
        options: ConnectOptions,
        client: i64,
        round: i64,
        count: &AtomicU64,
        stop: &AtomicBool,
    ) -> Result<(), String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("start a client's runtime: {e}"))?;
        runtime.block_on(async move {
            let mut c = Client::connect(addr, options).await.map_err(|e| format!("connect: {e}"))?;
            let mut rng = client as u64 * 2_654_435_761 + 1;
            let mut next = 1i64;
            while !stop.load(Ordering::Relaxed) {
                rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let src = (rng >> 33) as i64 % ACCOUNTS + 1;
                let dst = (rng >> 13) as i64 % ACCOUNTS + 1;
                let amount = (rng >> 50) as i64 % 20 + 1;
                if src == dst {
                    continue;
                }
                let id = Load::id_base(client, round) + next;
                let sql = format!(
                    "BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {src}; \
                     UPDATE accounts SET balance = balance + {amount} WHERE id = {dst}; \
                     INSERT INTO transfers VALUES ({id}, {src}, {dst}, {amount}); COMMIT;"
                );
                match c.query(&sql).await {
                    Ok(_) => {
                        next += 1;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    // A concurrent transfer touched the same account: retry with new accounts.
                    Err(e) if e.code() == Some("serialization_failure") => {
                        let _ = c.query("ROLLBACK;").await;
                    }
                    Err(e) => return Err(format!("a transfer failed: {e}")),
                }
            }
            Ok(())
        })
    }

    fn acknowledged(&self) -> u64 {
        self.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Waits until the clients have `n` acknowledged transfers in all.
    fn wait_for(&self, n: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + LOAD_TIMEOUT;
        while self.acknowledged() < n {
            if self.running.load(Ordering::Acquire) == 0 {
                let why = self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
                bail!(
                    "the transfer clients stopped after {} of {n} commits: {}",
                    self.acknowledged(),
                    why.unwrap_or_else(|| "no reason given".into())
                );
            }
            if Instant::now() > deadline {
                bail!("the transfer load did not reach {n} commits within {} s", LOAD_TIMEOUT.as_secs());
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Ok(())
    }

    /// Stops the clients (they also stop when the server dies) and returns what each had
    /// acknowledged.
    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
        self.acked.iter().map(|a| a.load(Ordering::Relaxed)).collect()
    }
}

impl Drop for Load {
    /// A demo that fails half-way stops its clients too.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A server process (the primary or the replica); killed if the demo fails half-way.
struct ServerProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    what: &'static str,
}

impl ServerProcess {
    /// `hindsight primary --data DATA --listen 127.0.0.1:0`, its log to `log_path`.
    fn primary(data: &Path, log_path: &Path) -> anyhow::Result<ServerProcess> {
        let args = [
            OsStr::new("primary"),
            OsStr::new("--data"),
            data.as_os_str(),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
        ];
        ServerProcess::spawn("primary", &args, log_path)
    }

    /// `hindsight replica --data DATA --primary ADDR --password-file F --name demo-replica
    /// --listen 127.0.0.1:0`, its log to `log_path`.
    fn replica(
        data: &Path,
        primary: &str,
        password_file: &Path,
        log_path: &Path,
    ) -> anyhow::Result<ServerProcess> {
        let args = [
            OsStr::new("replica"),
            OsStr::new("--data"),
            data.as_os_str(),
            OsStr::new("--primary"),
            OsStr::new(primary),
            OsStr::new("--password-file"),
            password_file.as_os_str(),
            OsStr::new("--name"),
            OsStr::new(REPLICA_NAME),
            OsStr::new("--listen"),
            OsStr::new("127.0.0.1:0"),
        ];
        ServerProcess::spawn("replica", &args, log_path)
    }

    fn spawn(what: &'static str, args: &[&OsStr], log_path: &Path) -> anyhow::Result<ServerProcess> {
        let exe = std::env::current_exe().context("find the hindsight executable")?;
        let log = std::fs::File::create(log_path).with_context(|| format!("create the {what}'s log file"))?;
        let mut child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start the {what} process"))?;
        let stdout = child.stdout.take().with_context(|| format!("read the {what}'s output"))?;
        let (tx, lines) = mpsc::sync_channel(16);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(ServerProcess { child, lines, what })
    }

    /// Waits for the ready line and returns the address in it.
    fn wait_ready(&mut self) -> anyhow::Result<String> {
        let what = self.what;
        let line = self
            .lines
            .recv_timeout(READY_TIMEOUT)
            .with_context(|| format!("wait for the {what} to start (see its log)"))?;
        let ready =
            ReadyLine::parse(&line).with_context(|| format!("read the {what}'s ready line {line:?}"))?;
        Ok(ready.addr)
    }

    /// SIGKILL: the process gets no chance to flush or clean up.
    fn kill(&mut self) -> anyhow::Result<()> {
        let what = self.what;
        self.child.kill().with_context(|| format!("send SIGKILL to the {what}"))?;
        self.child.wait().with_context(|| format!("wait for the killed {what}"))?;
        Ok(())
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(&mut self) -> anyhow::Result<()> {
        let what = self.what;
        let pid = libc::pid_t::try_from(self.child.id()).with_context(|| format!("signal the {what}"))?;
        // SAFETY: kill(2) on the pid of a child we started and have not yet reaped.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("send SIGTERM to the {what}"));
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().with_context(|| format!("wait for the {what}"))? {
                if !status.success() {
                    bail!("the {what} exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the {what} did not stop within {} s", STOP_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
