//! `hindsight demo`: the story on this machine, narrated.
//!
//! It starts a primary as a separate process on a temporary directory, opens a small bank
//! through the shell's code path, then runs a transfer load from several clients and SIGKILLs
//! the primary mid-load; it restarts it on the same directory and checks that every
//! acknowledged transfer survived and money is conserved, then stops it cleanly. Later
//! milestones add the backup, the point-in-time replica, the pause and the promotion.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use hindsight_primary::client::{Client, ConnectOptions};
use hindsight_primary::ready::ReadyLine;

use crate::render::Format;
use crate::shell::{Outcome, Shell};

/// How long the demo waits for the primary to say it is listening.
const PRIMARY_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the demo waits for the primary to exit after SIGTERM.
const PRIMARY_STOP_TIMEOUT: Duration = Duration::from_secs(30);

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
    let mut primary = Primary::start(&data, &log_path)?;
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
    let load = Load::start(addr.clone(), options.clone());
    let deadline = Instant::now() + LOAD_TIMEOUT;
    while load.acknowledged() < TRANSFERS_BEFORE_CRASH {
        if Instant::now() > deadline {
            bail!("the transfer load did not reach {TRANSFERS_BEFORE_CRASH} commits in time");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    primary.kill()?;
    let acked = load.finish();
    let total: u64 = acked.iter().sum();
    println!("kill -9 sent. Transfers acknowledged to the clients: {total} (per client: {acked:?}).");

    println!("\n== The recovery ==\n");
    println!("Starting the primary again on the same directory: newest snapshot + WAL replay, digest checked per commit.");
    let log_path2 = temp.path().join("primary-restart.log");
    let mut primary = Primary::start(&data, &log_path2)?;
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

    println!("\nStopping the primary with SIGTERM: it finishes what runs and exits cleanly.");
    primary.stop()?;
    println!(
        "Done. Next milestones extend this story: a replica, a paused point-in-time recovery, a promotion."
    );
    Ok(())
}

fn connect_shell(addr: &str, options: &ConnectOptions) -> anyhow::Result<Shell> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    Shell::connect(runtime, addr, options.clone(), Format::Table).context("connect to the primary")
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
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Client `c` numbers its transfers `c * 10^9 + 1, + 2, …`.
    fn id_range(client: i64, acked: u64) -> (i64, i64) {
        let base = client * 1_000_000_000;
        (base + 1, base + acked as i64)
    }

    fn start(addr: String, options: ConnectOptions) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut acked = Vec::new();
        let mut threads = Vec::new();
        for client in 0..LOAD_CLIENTS {
            let count = Arc::new(AtomicU64::new(0));
            acked.push(Arc::clone(&count));
            let (addr, options, stop) = (addr.clone(), options.clone(), Arc::clone(&stop));
            threads.push(std::thread::spawn(move || {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                    return;
                };
                runtime.block_on(async move {
                    let Ok(mut c) = Client::connect(addr.as_str(), options).await else { return };
                    let mut rng = client as u64 * 2_654_435_761 + 1;
                    let mut next = 1i64;
                    while !stop.load(Ordering::Relaxed) {
                        rng = rng
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        let src = (rng >> 33) as i64 % ACCOUNTS + 1;
                        let dst = (rng >> 13) as i64 % ACCOUNTS + 1;
                        let amount = (rng >> 50) as i64 % 20 + 1;
                        if src == dst {
                            continue;
                        }
                        let id = client * 1_000_000_000 + next;
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
                            Err(_) => return, // the server is gone
                        }
                    }
                });
            }));
        }
        Load { acked, stop, threads }
    }

    fn acknowledged(&self) -> u64 {
        self.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    /// Stops the clients (they also stop when the server dies) and returns what each had
    /// acknowledged.
    fn finish(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        self.acked.iter().map(|a| a.load(Ordering::Relaxed)).collect()
    }
}

/// The primary process; killed if the demo fails half-way.
struct Primary {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Primary {
    fn start(data: &Path, log_path: &Path) -> anyhow::Result<Primary> {
        let exe = std::env::current_exe().context("find the hindsight executable")?;
        let log = std::fs::File::create(log_path).context("create the primary's log file")?;
        let mut child = Command::new(exe)
            .arg("primary")
            .arg("--data")
            .arg(data)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("start the primary process")?;
        let stdout = child.stdout.take().context("read the primary's output")?;
        let (tx, lines) = mpsc::sync_channel(16);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Primary { child, lines })
    }

    /// Waits for the ready line and returns the address in it.
    fn wait_ready(&mut self) -> anyhow::Result<String> {
        let line = self
            .lines
            .recv_timeout(PRIMARY_READY_TIMEOUT)
            .context("wait for the primary to start (see its log)")?;
        let ready =
            ReadyLine::parse(&line).with_context(|| format!("read the primary's ready line {line:?}"))?;
        Ok(ready.addr)
    }

    /// SIGKILL: the process gets no chance to flush or clean up.
    fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("send SIGKILL to the primary")?;
        self.child.wait().context("wait for the killed primary")?;
        Ok(())
    }

    fn stop(&mut self) -> anyhow::Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("signal the primary")?;
        // SAFETY: kill(2) on the pid of a child we started and have not yet reaped.
        if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
            return Err(std::io::Error::last_os_error()).context("send SIGTERM to the primary");
        }
        let deadline = Instant::now() + PRIMARY_STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("wait for the primary")? {
                if !status.success() {
                    bail!("the primary exited with {status}");
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the primary did not stop within {} s", PRIMARY_STOP_TIMEOUT.as_secs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
