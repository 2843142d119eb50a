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
//!
//! For the `lag` workload a cluster can also be a **streaming standby** of another
//! ([`Postgres::start_standby_of`]: `pg_basebackup -X stream -R` into its own temporary directory,
//! its own port), and [`PsqlSession`] keeps one `psql` process open for queries that run every
//! few milliseconds (starting a `psql` per query costs tens of milliseconds).

use crate::machine::{self, CpuUse};
use crate::stats::{latency_histogram, CommitStats};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The unprivileged user the cluster runs as when the bench runs as root.
pub const PG_USER: &str = "hindsight_bench";
/// The superuser name given to `initdb`.
const PG_SUPERUSER: &str = "postgres";
/// Where Debian and Ubuntu install PostgreSQL 15, tried when `postgres` is not on `PATH`.
const PG_BIN_FALLBACK: &str = "/usr/lib/postgresql/15/bin";
/// The programs the harness needs, all from one directory so their versions agree.
const PG_PROGRAMS: [&str; 6] = ["postgres", "initdb", "pg_ctl", "psql", "pgbench", "pg_basebackup"];
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
/// Settings a primary with a streaming standby needs on top of [`PG_SETTINGS`] (which already
/// has `wal_level = replica`). Both are PostgreSQL 15's defaults, spelled out so the `lag`
/// workload does not depend on them: WAL senders for the standby and `pg_basebackup -X stream`,
/// and no synchronous standby until the workload names one.
pub const PG_REPLICATION_SETTINGS: [(&str, &str); 2] =
    [("max_wal_senders", "10"), ("synchronous_standby_names", "''")];
/// Settings a standby gets on top of the primary's (copied by `pg_basebackup`): it serves
/// queries while it replays (the default, spelled out), so the bench can read its replay Lsn.
const PG_STANDBY_SETTINGS: [(&str, &str); 1] = [("hot_standby", "on")];
/// How long one query of a [`PsqlSession`] may take before the session is declared stuck.
const PSQL_SESSION_REPLY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a [`PsqlSession`]'s `psql` may take to exit after its input is closed.
const PSQL_SESSION_EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a closing [`PsqlSession`] checks whether `psql` has exited.
const PSQL_SESSION_EXIT_POLL: Duration = Duration::from_millis(5);
/// Lines of a log quoted in an error.
const LOG_TAIL_LINES: usize = 20;

/// [`find_bin_dir`] for `--compare postgres`: an error that says how to get one when neither
/// place has PostgreSQL.
pub fn require_bin_dir() -> anyhow::Result<PathBuf> {
    find_bin_dir().ok_or_else(|| {
        anyhow::anyhow!(
            "find PostgreSQL: no `postgres` on PATH and nothing in /usr/lib/postgresql/15/bin (install PostgreSQL 15 \
             or drop --compare postgres)"
        )
    })
}

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
    /// The whole machine's CPU use while pgbench ran (its connection set-up included).
    pub cpu: Option<CpuUse>,
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
        Postgres::start_with(bin_dir, &[])
    }

    /// Initialises and starts a cluster with [`PG_SETTINGS`] and then `extra` (later lines of
    /// `postgresql.conf` win) using the programs in `bin_dir`.
    pub fn start_with(bin_dir: &Path, extra: &[(&str, &str)]) -> Result<Postgres> {
        let pg = Postgres::prepare(bin_dir)?;
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
        pg.append_conf(PG_SETTINGS.iter().chain(extra))?;
        pg.start_server()
    }

    /// An empty, stopped cluster with this one's programs: its own temporary directory (no data
    /// directory in it yet) and port. [`Postgres::start_standby_of`] makes it a standby; split
    /// off so that `bootstrap_s` does not time the harness's own set-up.
    pub fn prepare_standby(&self) -> Result<Postgres> {
        Postgres::prepare(&self.bin_dir)
    }

    /// Makes this prepared cluster (from [`Postgres::prepare_standby`]) a streaming standby of
    /// `primary`, named `application_name`, and starts it: `pg_basebackup -D DIR -X stream -R
    /// --checkpoint=fast` (`DIR` does not exist before, so the standby starts from nothing),
    /// its own port and socket directory appended to the copied `postgresql.conf`, then
    /// `pg_ctl start -w`, which returns once the standby has reached a consistent state and
    /// accepts read-only queries.
    ///
    /// The name travels in the connection string given to `pg_basebackup -d`, which writes it
    /// into the `primary_conninfo` it generates in `postgresql.auto.conf` (checked here); the
    /// primary then shows it as `pg_stat_replication.application_name` and
    /// `synchronous_standby_names` can refer to it.
    ///
    /// `--checkpoint=fast`: the primary was just checkpointed, and the default (spread) would
    /// time PostgreSQL's checkpoint pacing rather than making the copy.
    pub fn start_standby_of(self, primary: &Postgres, application_name: &str) -> Result<Postgres> {
        assert!(
            !application_name.is_empty()
                && application_name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "a standby name must be a plain identifier, not {application_name:?}"
        );
        assert!(!self.running && !self.data().exists(), "a standby starts from a prepared, empty cluster");
        let standby = self;
        let primary_port = primary.port.to_string();
        let conninfo = format!("application_name={application_name}");
        run(
            standby
                .command("pg_basebackup")
                .arg("-D")
                .arg(standby.data())
                .args(["-X", "stream", "-R", "--checkpoint=fast"])
                .args(["-h", "127.0.0.1", "-p", &primary_port, "-U", PG_SUPERUSER, "-d", &conninfo]),
            "pg_basebackup",
        )?;
        let auto_conf = standby.data().join("postgresql.auto.conf");
        let text =
            std::fs::read_to_string(&auto_conf).with_context(|| format!("read {}", auto_conf.display()))?;
        if !text.lines().any(|l| l.starts_with("primary_conninfo") && l.contains(&conninfo)) {
            bail!(
                "pg_basebackup -R wrote no primary_conninfo with {conninfo} into {}:\n{text}",
                auto_conf.display()
            );
        }
        standby.append_conf(PG_STANDBY_SETTINGS.iter())?;
        standby.start_server()
    }

    /// A stopped cluster's directories (nothing in `data` yet), owned by [`PG_USER`] when we are
    /// root, and a free port for it.
    fn prepare(bin_dir: &Path) -> Result<Postgres> {
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
        Ok(Postgres {
            bin_dir: bin_dir.to_path_buf(),
            run_as: is_root.then(|| PG_USER.to_string()),
            port: free_port()?,
            running: false,
            version,
            root,
        })
    }

    /// Appends this cluster's port and socket directory, then `settings`, to its
    /// `postgresql.conf` (later lines win, so this overrides what a base backup copied).
    fn append_conf<'a>(&self, settings: impl Iterator<Item = &'a (&'a str, &'a str)>) -> Result<()> {
        let mut conf = String::from("\n# hindsight-bench\n");
        conf.push_str(&format!("port = {}\n", self.port));
        conf.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            self.root.path().join(SOCKET_DIR).display()
        ));
        for (name, value) in settings {
            conf.push_str(&format!("{name} = {value}\n"));
        }
        let conf_path = self.data().join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf_path).with_context(|| format!("read {}", conf_path.display()))?;
        text.push_str(&conf);
        std::fs::write(&conf_path, text).with_context(|| format!("write {}", conf_path.display()))
    }

    /// `pg_ctl start -w` on the data directory.
    fn start_server(mut self) -> Result<Postgres> {
        let log = self.server_log();
        let ctl_out = self.work().join("pg_ctl.out");
        let out = File::create(&ctl_out).with_context(|| format!("create {}", ctl_out.display()))?;
        let err = out.try_clone().context("duplicate the pg_ctl output file")?;
        // pg_ctl's own output goes to a file, not a pipe: the postmaster it forks must not hold
        // a pipe of ours open, or reading it would never end.
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", &PG_CTL_TIMEOUT_S.to_string(), "start"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .status()
            .context("run pg_ctl start")?;
        // Stopped on drop from here on, also when `-w` gave up waiting on a postmaster that did
        // start (it wrote its pid file).
        self.running = status.success() || self.data().join("postmaster.pid").exists();
        if !status.success() {
            bail!(
                "start PostgreSQL on port {} failed ({status}): {}\nserver log:\n{}",
                self.port,
                tail(&ctl_out, 5),
                tail(&log, LOG_TAIL_LINES)
            );
        }
        Ok(self)
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
        self.psql_with(&[], sql)
    }

    /// [`Postgres::psql`] in a session started with `settings` (see [`session_conninfo`]).
    pub fn psql_with(&self, settings: &[(&str, &str)], sql: &str) -> Result<String> {
        let out = run(
            self.psql_command(settings).args(["-c", sql]),
            &format!("psql -c {:?}", crate::abbreviate(sql)),
        )?;
        Ok(out.trim().to_string())
    }

    /// `psql` connected over TCP as the superuser, unaligned and tuples-only, stopping at the
    /// first error, in a session started with `settings`.
    fn psql_command(&self, settings: &[(&str, &str)]) -> Command {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", PG_SUPERUSER])
            .args(["-p", &self.port.to_string(), "-d", &session_conninfo(settings)]);
        cmd
    }

    /// Opens a [`PsqlSession`] on this cluster; `label` names its error file in the work
    /// directory (`psql-<label>.err`) and its errors.
    pub fn session(&self, label: &str) -> Result<PsqlSession> {
        let err_path = self.work().join(format!("psql-{label}.err"));
        let err = File::create(&err_path).with_context(|| format!("create {}", err_path.display()))?;
        let mut child = self
            .psql_command(&[])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .with_context(|| format!("start psql for {label}"))?;
        let stdin = child.stdin.take().context("take psql's stdin")?;
        let stdout = child.stdout.take().context("take psql's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("psql-{label}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .context("start the psql reader thread")?;
        Ok(PsqlSession { child: Some(child), stdin: Some(stdin), lines, label: label.to_string(), err_path })
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
        self.pgbench_updates_with(rows, txns, clients, &[])
    }

    /// [`Postgres::pgbench_updates`] with every pgbench connection started with `settings`
    /// (e.g. `synchronous_commit = remote_apply`), given in the connection string so that the
    /// transactions themselves are exactly the plain workload's.
    pub fn pgbench_updates_with(
        &self,
        rows: u64,
        txns: u64,
        clients: usize,
        settings: &[(&str, &str)],
    ) -> Result<PgbenchRun> {
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
        let (out, cpu) = machine::measure(|| {
            run(
                self.command("pgbench")
                    .args(["-n", "-h", "127.0.0.1", "-U", PG_SUPERUSER, "-p", &self.port.to_string()])
                    .args([
                        "-c",
                        &clients.to_string(),
                        "-j",
                        &threads.to_string(),
                        "-t",
                        &per_client.to_string(),
                    ])
                    .arg("-f")
                    .arg(&script)
                    .args(["--log", "--log-prefix=pgbench_log"])
                    .arg(session_conninfo(settings)),
                "pgbench",
            )
        });
        let out = out?;
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
        Ok(PgbenchRun { stats: CommitStats { txns: committed, elapsed, hist }, tps, failed, wal_bytes, cpu })
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

/// The libpq connection string for the `postgres` database whose sessions start with
/// `settings` (`options='-c name=value …'`), which psql and pgbench accept in place of a
/// database name. The names and values must be plain words (the bench's own constants).
pub fn session_conninfo(settings: &[(&str, &str)]) -> String {
    let plain = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    let mut conninfo = String::from("dbname=postgres");
    if !settings.is_empty() {
        let options: Vec<String> = settings
            .iter()
            .map(|(name, value)| {
                assert!(
                    plain(name) && plain(value),
                    "session setting {name} = {value:?} is not a plain word"
                );
                format!("-c {name}={value}")
            })
            .collect();
        conninfo.push_str(&format!(" options='{}'", options.join(" ")));
    }
    conninfo
}

/// One `psql` process kept open for many small queries (each a fraction of a millisecond,
/// where starting `psql` costs tens of milliseconds). Every query must return exactly one row
/// (write `SELECT count(*), max(x) …` rather than `SELECT x …`), which comes back as one
/// unaligned line, fields separated by `|`, NULL as an empty field.
///
/// Invariants:
/// - Every query sent has had its line read, or the session is broken and every later call
///   fails (a late line would otherwise answer the next query).
/// - `psql` ends when this is dropped: its input is closed, it exits at end of input, and it is
///   killed if it has not within [`PSQL_SESSION_EXIT_TIMEOUT`].
pub struct PsqlSession {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    label: String,
    err_path: PathBuf,
}

impl PsqlSession {
    /// Moves the session to the cluster `to` (`\connect`), so that the first query there does
    /// not wait for `runuser` and `psql` to start (tens of milliseconds, which would otherwise
    /// be timed as part of the standby's bootstrap), then checks that the new connection answers.
    pub fn reconnect(&mut self, to: &Postgres) -> Result<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            bail!("psql session {}: the session broke earlier", self.label);
        };
        let command = format!(
            "\\connect 'host=127.0.0.1 port={} user={PG_SUPERUSER} {}'\n",
            to.port,
            session_conninfo(&[])
        );
        if stdin.write_all(command.as_bytes()).and_then(|()| stdin.flush()).is_err() {
            self.stdin = None;
            bail!("psql session {}: psql exited: {}", self.label, tail(&self.err_path, LOG_TAIL_LINES));
        }
        let port = self.query_line("SELECT current_setting('port')")?;
        if port != to.port.to_string() {
            bail!("psql session {}: \\connect to port {} reached port {port}", self.label, to.port);
        }
        Ok(())
    }

    /// Runs one single-row query and returns its line.
    pub fn query_line(&mut self, sql: &str) -> Result<String> {
        let what = || format!("psql session {}: {}", self.label, crate::abbreviate(sql));
        let Some(stdin) = self.stdin.as_mut() else {
            bail!("{}: the session broke earlier", what());
        };
        let sent = stdin
            .write_all(format!("{};\n", sql.trim_end_matches(';')).as_bytes())
            .and_then(|()| stdin.flush());
        let reply = match sent {
            Ok(()) => self.lines.recv_timeout(PSQL_SESSION_REPLY_TIMEOUT),
            Err(_) => Err(mpsc::RecvTimeoutError::Disconnected),
        };
        match reply {
            Ok(line) => Ok(line),
            Err(e) => {
                self.stdin = None;
                let why = match e {
                    mpsc::RecvTimeoutError::Timeout => {
                        format!("no reply within {PSQL_SESSION_REPLY_TIMEOUT:?}")
                    }
                    mpsc::RecvTimeoutError::Disconnected => "psql exited".to_string(),
                };
                bail!("{}: {why}: {}", what(), tail(&self.err_path, LOG_TAIL_LINES))
            }
        }
    }
}

impl Drop for PsqlSession {
    fn drop(&mut self) {
        // End of input makes psql exit (and runuser with it).
        self.stdin = None;
        let Some(mut child) = self.child.take() else { return };
        let deadline = Instant::now() + PSQL_SESSION_EXIT_TIMEOUT;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => std::thread::sleep(PSQL_SESSION_EXIT_POLL),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    eprintln!("warning: psql session {} did not exit at end of input; killed", self.label);
                    return;
                }
            }
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
    fn session_conninfo_carries_settings() {
        assert_eq!(session_conninfo(&[]), "dbname=postgres");
        assert_eq!(
            session_conninfo(&[("synchronous_commit", "remote_apply"), ("work_mem", "64MB")]),
            "dbname=postgres options='-c synchronous_commit=remote_apply -c work_mem=64MB'"
        );
    }

    /// A standby made from nothing, a session moved onto it, settings in the connection string,
    /// and everything removed after.
    #[test]
    fn standby_smoke() {
        let Some(bin) = find_bin_dir() else {
            eprintln!("SKIP: standby_smoke: PostgreSQL not found (no postgres on PATH, nothing in {PG_BIN_FALLBACK})");
            return;
        };
        let started = Instant::now();
        let mut primary = Postgres::start_with(&bin, &PG_REPLICATION_SETTINGS).expect("start PostgreSQL");
        primary.load_accounts(SMOKE_ROWS).expect("load accounts");
        let prepared = primary.prepare_standby().expect("prepare the standby");
        let mut session = primary.session("smoke").expect("open a psql session");
        assert_eq!(session.query_line("SELECT pg_is_in_recovery(), 1").unwrap(), "f|1");
        let mut standby = prepared.start_standby_of(&primary, "standby1").expect("start the standby");
        let roots = [primary.root().to_path_buf(), standby.root().to_path_buf()];
        session.reconnect(&standby).expect("move the session to the standby");
        assert_eq!(session.query_line("SELECT pg_is_in_recovery(), 1").unwrap(), "t|1");
        assert_eq!(standby.balance_sum().unwrap(), SMOKE_ROWS as i64 * 1000);
        assert_eq!(
            primary.psql_with(&[("synchronous_commit", "remote_apply")], "SHOW synchronous_commit").unwrap(),
            "remote_apply"
        );
        assert!(session.query_line("SELECT nonsense").is_err());
        assert!(session.query_line("SELECT 1").unwrap_err().to_string().contains("broke earlier"));
        drop(session);
        standby.stop().expect("stop the standby");
        primary.stop().expect("stop PostgreSQL");
        drop(standby);
        drop(primary);
        for root in roots {
            assert!(!root.exists(), "the temp directory {} was left behind", root.display());
        }
        assert!(started.elapsed() < Duration::from_secs(60), "took {:?}", started.elapsed());
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
