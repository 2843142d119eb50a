//! `hindsight demo`: the story on this machine, narrated.
//!
//! For now (the primary milestone) it starts a primary as a separate process on a temporary
//! directory, loads a small `accounts` table through the shell's code path, runs a few
//! queries, and stops the primary with SIGTERM. Later milestones add the backup, the
//! point-in-time replica, the pause and the promotion. (Owned by the lead from here on.)

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hindsight_primary::client::ConnectOptions;

use crate::render::Format;
use crate::shell::{Outcome, Shell};

/// How long the demo waits for the primary to say it is listening.
const PRIMARY_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the demo waits for the primary to exit after SIGTERM.
const PRIMARY_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The steps: what to say, then the SQL to run.
const STEPS: &[(&str, &str)] = &[
    (
        "Create a table. Every commit is logged in the WAL before it is acknowledged.",
        "CREATE TABLE accounts (id BIGINT PRIMARY KEY, owner TEXT NOT NULL, balance BIGINT NOT NULL);",
    ),
    (
        "Load a few rows. The answer names the transaction and the Lsn of its commit record.",
        "INSERT INTO accounts VALUES (1, 'alice', 100), (2, 'bob', 50), (3, 'carol', 75);",
    ),
    ("Move money inside one transaction: both updates commit together, or neither does.", "BEGIN;"),
    ("", "UPDATE accounts SET balance = balance - 30 WHERE id = 1;"),
    ("", "UPDATE accounts SET balance = balance + 30 WHERE id = 2;"),
    ("", "COMMIT;"),
    ("Read it back.", "SELECT id, owner, balance FROM accounts ORDER BY id;"),
    ("The total did not change.", "SELECT count(*) AS accounts, sum(balance) AS total FROM accounts;"),
];

/// Runs the demo; an error is the one-line cause.
pub fn run() -> anyhow::Result<()> {
    let temp = tempfile::tempdir().context("create a temporary directory")?;
    let data = temp.path().join("data");
    let log_path = temp.path().join("primary.log");
    println!("hindsight demo: starting a primary on {} (its log: {})", data.display(), log_path.display());
    let mut primary = Primary::start(&data, &log_path)?;
    let addr = primary.wait_ready()?;
    println!("The primary is listening on {addr}.\n");

    let password = std::fs::read_to_string(data.join("admin.secret"))
        .context("read the admin secret the primary wrote")?
        .trim()
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let options =
        ConnectOptions { password, application_name: "hindsight demo".into(), ..ConnectOptions::default() };
    let mut shell =
        Shell::connect(runtime, &addr, options, Format::Table).context("connect to the primary")?;
    for (narration, sql) in STEPS {
        if !narration.is_empty() {
            println!("\n-- {narration}");
        }
        println!("{}{sql}", shell.prompt());
        if shell.run_sql(sql) != Outcome::Ok {
            bail!("the statement failed: {sql}");
        }
    }
    println!();
    shell.close();

    println!("Stopping the primary with SIGTERM: it finishes what runs and exits cleanly.");
    primary.stop()?;
    println!("Done. Every acknowledged commit was durable before it was acknowledged.");
    Ok(())
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
        let addr = line
            .strip_prefix("hindsight primary listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .with_context(|| format!("read the primary's ready line {line:?}"))?;
        Ok(addr.to_string())
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
