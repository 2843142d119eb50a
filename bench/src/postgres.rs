//! The PostgreSQL side of the shared workloads: a throw-away PostgreSQL 15 cluster started for
//! one measurement and driven with `pgbench`.
//!
//! PostgreSQL refuses to run as root, so when the bench runs as root it creates an unprivileged
//! system user ([`PG_USER`], `useradd --system --no-create-home`) and runs `initdb`, `pg_ctl`,
//! `psql` and `pgbench` as that user through `runuser`. The cluster lives in a temporary
//! directory under the system temp dir (chowned to that user), listens on a loopback port picked
//! at run time and keeps its unix socket inside the temporary directory. It is stopped with
//! `pg_ctl stop -m fast` when [`Postgres`] is dropped, whatever happened, and the directory is
//! removed after.
//!
//! The settings that make the comparison fair are in [`PG_SETTINGS`]: durable commits
//! (`fsync=on`, `synchronous_commit=on`, `full_page_writes=on`) like hindsight's default.
//!
//! Latencies come from pgbench's per-transaction logs (`--log`), whose third field is the
//! transaction's latency in microseconds; throughput is pgbench's own `tps = … (without initial
//! connection time)`.

use crate::stats::{latency_histogram, CommitStats};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// The unprivileged user the cluster runs as when the bench runs as root.
pub const PG_USER: &str = "hindsight_bench";
/// The superuser name given to `initdb`.
const PG_SUPERUSER: &str = "postgres";
/// Where Debian and Ubuntu install PostgreSQL 15, tried when `postgres` is not on `PATH`.
const PG_BIN_FALLBACK: &str = "/usr/lib/postgresql/15/bin";
/// The programs the harness needs, all from one directory so their versions agree.
const PG_PROGRAMS: [&str; 5] = ["postgres", "initdb", "pg_ctl", "psql", "pgbench"];
/// Subdirectories of the temporary directory: the cluster, its unix socket, everything else.
const DATA_DIR: &str = "data";
const SOCKET_DIR: &str = "sock";
const WORK_DIR: &str = "work";
/// Seconds `pg_ctl` waits for the server to start or stop.
const PG_CTL_TIMEOUT_S: u32 = 120;
/// The most pgbench worker threads (`-j`): the machines this runs on have two cores.
pub const PGBENCH_THREADS_MAX: usize = 2;
/// Server settings appended to `postgresql.conf` (besides the port and socket directory).
pub const PG_SETTINGS: [(&str, &str); 9] = [
    ("listen_addresses", "'127.0.0.1'"),
    ("fsync", "on"),
    ("synchronous_commit", "on"),
    ("full_page_writes", "on"),
    ("wal_level", "replica"),
    ("shared_buffers", "256MB"),
    ("max_connections", "100"),
    ("logging_collector", "off"),
    // Autovacuum may start on the freshly updated table mid-run; it is on by default in every
    // real deployment, so it stays on here too. Spelled out to make the choice visible.
    ("autovacuum", "on"),
];

/// Where the PostgreSQL programs are: the directory of `postgres` on `PATH` (symlinks
/// resolved), else [`PG_BIN_FALLBACK`]; `None` when neither holds all of [`PG_PROGRAMS`].
pub fn find_bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("postgres"))
            .find(|p| p.is_file())
            .and_then(|p| std::fs::canonicalize(p).ok())
            .and_then(|p| p.parent().map(Path::to_path_buf))
    });
    on_path
        .into_iter()
        .chain(std::iter::once(PathBuf::from(PG_BIN_FALLBACK)))
        .find(|dir| PG_PROGRAMS.iter().all(|p| dir.join(p).is_file()))
}

/// Runs a command and returns its stdout, or fails with its stderr and stdout.
fn run(cmd: &mut Command, what: &str) -> Result<String> {
    let Output { status, stdout, stderr } =
        cmd.stdin(Stdio::null()).output().with_context(|| format!("start {what}"))?;
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    if !status.success() {
        bail!("{what} failed ({status}): {}{}", String::from_utf8_lossy(&stderr).trim(), stdout.trim());
    }
    Ok(stdout)
}

/// The uid and gid of `user`, creating it as a system user first if it does not exist.
fn ensure_user(user: &str) -> Result<(u32, u32)> {
    let exists = Command::new("id")
        .args(["-u", user])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("run id")?
        .success();
    if !exists {
        run(
            Command::new("useradd").args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                user,
            ]),
            &format!("useradd {user}"),
        )?;
    }
    let uid = run(Command::new("id").args(["-u", user]), "id -u")?.trim().parse().context("parse the uid")?;
    let gid = run(Command::new("id").args(["-g", user]), "id -g")?.trim().parse().context("parse the gid")?;
    Ok((uid, gid))
}

/// A free loopback TCP port (bound and released; a race with another process is possible but
/// would only make the server fail to start, with its log in the error).
fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind a loopback port")?;
    Ok(listener.local_addr().context("read the bound port")?.port())
}

/// The last `n` lines of a text file, for error messages.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What one pgbench run measured.
#[derive(Clone, Debug)]
pub struct PgbenchRun {
    /// Transactions and latencies from the per-transaction logs; `elapsed` is derived from
    /// pgbench's tps so that `stats.tps()` equals it.
    pub stats: CommitStats,
    /// pgbench's `tps = … (without initial connection time)`.
    pub tps: f64,
    /// Transactions pgbench reported as failed (serialization or deadlock failures).
    pub failed: u64,
    /// WAL bytes written during the run (`pg_wal_lsn_diff`).
    pub wal_bytes: u64,
}

/// A running throw-away PostgreSQL cluster.
///
/// Invariants:
/// - While `running`, a postmaster owned by this value serves `root/data` on `port`.
/// - `root` (and so the data directory) is removed only after the server was stopped (field order and
///   `Drop`).
pub struct Postgres {
    bin_dir: PathBuf,
    run_as: Option<String>,
    port: u16,
    running: bool,
    version: String,
    root: TempDir,
}

impl Postgres {
    /// Initialises and starts a cluster with [`PG_SETTINGS`] using the programs in `bin_dir`.
    pub fn start(bin_dir: &Path) -> Result<Postgres> {
        // SAFETY: geteuid has no preconditions.
        let is_root = unsafe { libc::geteuid() } == 0;
        let owner = if is_root { Some(ensure_user(PG_USER)?) } else { None };
        let root = tempfile::Builder::new()
            .prefix("hindsight-bench-pg-")
            .tempdir()
            .context("create the PostgreSQL temp directory")?;
        let sock = root.path().join(SOCKET_DIR);
        let work = root.path().join(WORK_DIR);
        for dir in [&sock, &work] {
            std::fs::create_dir(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        if let Some((uid, gid)) = owner {
            for dir in [root.path(), &sock, &work] {
                std::os::unix::fs::chown(dir, Some(uid), Some(gid))
                    .with_context(|| format!("chown {} to {PG_USER}", dir.display()))?;
            }
        }
        let version = run(Command::new(bin_dir.join("postgres")).arg("--version"), "postgres --version")?
            .trim()
            .to_string();
        let mut pg = Postgres {
            bin_dir: bin_dir.to_path_buf(),
            run_as: is_root.then(|| PG_USER.to_string()),
            port: free_port()?,
            running: false,
            version,
            root,
        };
        run(
            pg.command("initdb").arg("-D").arg(pg.data()).args([
                "-U",
                PG_SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ]),
            "initdb",
        )?;
        let mut conf = String::from("\n# hindsight-bench\n");
        conf.push_str(&format!("port = {}\n", pg.port));
        conf.push_str(&format!("unix_socket_directories = '{}'\n", sock.display()));
        for (name, value) in PG_SETTINGS {
            conf.push_str(&format!("{name} = {value}\n"));
        }
        let conf_path = pg.data().join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf_path).with_context(|| format!("read {}", conf_path.display()))?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).with_context(|| format!("write {}", conf_path.display()))?;
        let log = pg.server_log();
        let ctl_out = pg.work().join("pg_ctl.out");
        let out = File::create(&ctl_out).with_context(|| format!("create {}", ctl_out.display()))?;
        let err = out.try_clone().context("duplicate the pg_ctl output file")?;
        // pg_ctl's own output goes to a file, not a pipe: the postmaster it forks must not hold
        // a pipe of ours open, or reading it would never end.
        let status = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(pg.data())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", &PG_CTL_TIMEOUT_S.to_string(), "start"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .context("run pg_ctl start")?;
        if !status.success() {
            bail!(
                "start PostgreSQL on port {} failed ({status}): {}\nserver log:\n{}",
                pg.port,
                tail(&ctl_out, 5),
                tail(&log, 20)
            );
        }
        pg.running = true;
        Ok(pg)
    }

    /// `postgres --version`, e.g. `postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The cluster's data directory.
    fn data(&self) -> PathBuf {
        self.root.path().join(DATA_DIR)
    }

    /// The directory for logs, scripts and pgbench's per-transaction logs (pgbench's working
    /// directory).
    fn work(&self) -> PathBuf {
        self.root.path().join(WORK_DIR)
    }

    fn server_log(&self) -> PathBuf {
        self.work().join("postgres.log")
    }

    /// A command running `program` from the bin directory, as [`PG_USER`] when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        cmd.current_dir(self.work());
        cmd
    }

    /// Runs SQL with psql (one implicit transaction for all of `sql`) and returns its
    /// unaligned, tuples-only output, trimmed.
    pub fn psql(&self, sql: &str) -> Result<String> {
        let out = run(
            self.command("psql")
                .args([
                    "-X",
                    "-q",
                    "-A",
                    "-t",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    "127.0.0.1",
                    "-U",
                    PG_SUPERUSER,
                ])
                .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql]),
            &format!("psql -c {:?}", crate::abbreviate(sql)),
        )?;
        Ok(out.trim().to_string())
    }

    /// Creates and loads the shared `accounts` table with `rows` rows, vacuums it and takes a
    /// checkpoint so that the measured phase starts from a clean state.
    pub fn load_accounts(&self, rows: u64) -> Result<()> {
        self.psql(&format!(
            "DROP TABLE IF EXISTS accounts; \
             CREATE TABLE accounts(id BIGINT PRIMARY KEY, balance BIGINT NOT NULL, note TEXT NOT NULL); \
             INSERT INTO accounts SELECT g, 1000, 'seed-' || g FROM generate_series(1, {rows}) g"
        ))
        .context("load the accounts table into PostgreSQL")?;
        self.psql("VACUUM ANALYZE accounts").context("vacuum the accounts table")?;
        self.psql("CHECKPOINT").context("checkpoint PostgreSQL after the load")?;
        Ok(())
    }

    /// The current WAL write position, as PostgreSQL prints it (`X/Y`).
    pub fn current_wal_lsn(&self) -> Result<String> {
        self.psql("SELECT pg_current_wal_lsn()")
    }

    /// WAL bytes written since `lsn` (from [`Postgres::current_wal_lsn`]).
    pub fn wal_bytes_since(&self, lsn: &str) -> Result<u64> {
        if !lsn.chars().all(|c| c.is_ascii_hexdigit() || c == '/') {
            bail!("{lsn:?} is not a PostgreSQL LSN");
        }
        let out = self.psql(&format!("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn}')::bigint"))?;
        out.parse().with_context(|| format!("parse the WAL byte count {out:?}"))
    }

    /// `SELECT sum(balance) FROM accounts`, to check that every update happened.
    pub fn balance_sum(&self) -> Result<i64> {
        let out = self.psql("SELECT sum(balance) FROM accounts")?;
        out.parse().with_context(|| format!("parse the balance sum {out:?}"))
    }

    /// Runs `txns` autocommit `UPDATE accounts SET balance = balance + 1 WHERE id = k` (k
    /// uniform in 1..=rows) with pgbench over TCP from `clients` connections, `txns / clients`
    /// each.
    pub fn pgbench_updates(&self, rows: u64, txns: u64, clients: usize) -> Result<PgbenchRun> {
        assert!(clients > 0 && rows > 0, "pgbench needs clients and rows");
        let per_client = (txns / clients as u64).max(1);
        let script = self.work().join("update.sql");
        std::fs::write(
            &script,
            format!("\\set k random(1, {rows})\nUPDATE accounts SET balance = balance + 1 WHERE id = :k;\n"),
        )
        .with_context(|| format!("write {}", script.display()))?;
        for entry in std::fs::read_dir(self.work()).context("list the pgbench work directory")? {
            let entry = entry.context("list the pgbench work directory")?;
            if entry.file_name().to_string_lossy().starts_with("pgbench_log") {
                std::fs::remove_file(entry.path()).context("remove an old pgbench log")?;
            }
        }
        let start_lsn = self.current_wal_lsn()?;
        let threads = clients.min(PGBENCH_THREADS_MAX);
        let out = run(
            self.command("pgbench")
                .args(["-n", "-h", "127.0.0.1", "-U", PG_SUPERUSER, "-p", &self.port.to_string()])
                .args(["-c", &clients.to_string(), "-j", &threads.to_string(), "-t", &per_client.to_string()])
                .arg("-f")
                .arg(&script)
                .args(["--log", "--log-prefix=pgbench_log", "postgres"]),
            "pgbench",
        )?;
        let wal_bytes = self.wal_bytes_since(&start_lsn)?;
        let tps = parse_pgbench_tps(&out).with_context(|| format!("find tps in pgbench's output:\n{out}"))?;
        let mut hist = latency_histogram();
        let mut failed = 0u64;
        for entry in std::fs::read_dir(self.work()).context("list the pgbench logs")? {
            let entry = entry.context("list the pgbench logs")?;
            if !entry.file_name().to_string_lossy().starts_with("pgbench_log") {
                continue;
            }
            let file =
                File::open(entry.path()).with_context(|| format!("open {}", entry.path().display()))?;
            for line in BufReader::new(file).lines() {
                let line = line.with_context(|| format!("read {}", entry.path().display()))?;
                match parse_log_latency_us(&line)? {
                    Some(us) => {
                        crate::stats::record_latency(&mut hist, Duration::from_micros(us));
                    }
                    None => failed += 1,
                }
            }
        }
        let committed = hist.len();
        if committed == 0 {
            bail!("pgbench logged no committed transactions:\n{out}");
        }
        let elapsed = Duration::from_secs_f64(committed as f64 / tps.max(f64::MIN_POSITIVE));
        Ok(PgbenchRun { stats: CommitStats { txns: committed, elapsed, hist }, tps, failed, wal_bytes })
    }

    /// Stops the server (`pg_ctl stop -m fast`). Idempotent.
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let result = run(
            self.command("pg_ctl").arg("-D").arg(self.data()).args([
                "-m",
                "fast",
                "-w",
                "-t",
                &PG_CTL_TIMEOUT_S.to_string(),
                "stop",
            ]),
            "pg_ctl stop",
        );
        if let Err(e) = result {
            // Last resort for the postmaster we started: its pid is the first line of
            // postmaster.pid. SIGQUIT is PostgreSQL's immediate shutdown.
            let pid_file = self.data().join("postmaster.pid");
            let pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()));
            if let Some(pid) = pid.filter(|p| *p > 0) {
                // SAFETY: kill(2) on the pid of the postmaster this value started.
                unsafe { libc::kill(pid, libc::SIGQUIT) };
            }
            return Err(e.context(format!("stop PostgreSQL (data {})", self.data().display())));
        }
        Ok(())
    }

    /// The temporary directory holding the cluster.
    #[cfg(test)]
    pub fn root(&self) -> &Path {
        self.root.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("warning: {e:#}");
        }
    }
}

/// pgbench's `tps = 3027.123 (without initial connection time)`.
fn parse_pgbench_tps(out: &str) -> Option<f64> {
    out.lines()
        .filter_map(|l| l.trim().strip_prefix("tps = "))
        .find(|rest| rest.contains("without initial connection time"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The latency in µs of one pgbench log line (`client_id transaction_no time script_no
/// time_epoch time_us …`), or `None` for a failed or skipped transaction.
fn parse_log_latency_us(line: &str) -> Result<Option<u64>> {
    let field = line
        .split_whitespace()
        .nth(2)
        .with_context(|| format!("find the latency in pgbench log line {line:?}"))?;
    match field {
        "failed" | "skipped" => Ok(None),
        n => Ok(Some(n.parse().with_context(|| format!("parse the latency in pgbench log line {line:?}"))?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Rows and transactions of the smoke test: small enough for well under 30 s.
    const SMOKE_ROWS: u64 = 1_000;
    const SMOKE_TXNS: u64 = 100;
    const SMOKE_CLIENTS: usize = 2;

    #[test]
    fn parses_pgbench_output() {
        let out = "latency average = 1.321 ms\n\
                   initial connection time = 5.123 ms\n\
                   tps = 3027.123456 (without initial connection time)\n";
        assert_eq!(parse_pgbench_tps(out), Some(3027.123456));
        assert_eq!(parse_pgbench_tps("nothing here"), None);
        assert_eq!(parse_log_latency_us("0 199 1321 0 1716200000 123456").unwrap(), Some(1321));
        assert_eq!(parse_log_latency_us("1 3 failed 0 1716200000 123456").unwrap(), None);
        assert!(parse_log_latency_us("garbage").is_err());
    }

    #[test]
    fn pgbench_smoke() {
        let Some(bin) = find_bin_dir() else {
            eprintln!("SKIP: pgbench_smoke: PostgreSQL not found (no postgres on PATH, nothing in {PG_BIN_FALLBACK})");
            return;
        };
        let started = Instant::now();
        let mut pg = Postgres::start(&bin).expect("start PostgreSQL");
        let root = pg.root().to_path_buf();
        assert!(pg.version().contains("PostgreSQL"), "version {:?}", pg.version());
        pg.load_accounts(SMOKE_ROWS).expect("load accounts");
        let before = pg.balance_sum().expect("sum balances");
        assert_eq!(before, SMOKE_ROWS as i64 * 1000);
        let r = pg.pgbench_updates(SMOKE_ROWS, SMOKE_TXNS, SMOKE_CLIENTS).expect("run pgbench");
        assert!(r.tps > 0.0, "tps {}", r.tps);
        assert_eq!(r.stats.txns + r.failed, SMOKE_TXNS);
        assert!(r.stats.latency_us(0.5) > 0);
        assert!(r.wal_bytes > 0);
        assert_eq!(pg.balance_sum().unwrap(), before + r.stats.txns as i64);
        pg.stop().expect("stop PostgreSQL");
        drop(pg);
        assert!(!root.exists(), "the temp directory {} was left behind", root.display());
        assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    }
}
