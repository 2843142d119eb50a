//! The `hindsight` command: a thin clap front end over the crates. Each subcommand parses its
//! flags and calls into a library (`hindsight-primary` for the server and client) or a module
//! here (the shell, the demo).
//!
//! Exit status: 0 on success; non-zero with a one-line cause on stderr otherwise (the shell
//! documents its own statuses; subcommands of later milestones exit 2).

/// mimalloc: replay and snapshot loading allocate a small block per row version, and
/// glibc malloc's free-list maintenance showed up in their profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod demo;
mod render;
mod shell;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use hindsight_primary::ready::ReadyLine;
use hindsight_primary::{Server, ServerConfig};

/// Exit status of a subcommand that a later milestone brings.
const EXIT_NOT_AVAILABLE: u8 = 2;

const EXAMPLES: &str = "\
Examples:
  hindsight primary --data /var/lib/hindsight
  hindsight shell --password-file /var/lib/hindsight/admin.secret
  hindsight shell -c 'SELECT count(*) FROM accounts'
  hindsight demo

Every command exits 0 on success and non-zero with a one-line cause on stderr otherwise.";

/// hindsight: a database server built for recovery.
///
/// A primary takes writes and logs every committed transaction. A replica bootstraps from a
/// backup, replays the WAL to any point in time, pauses there for queries, and can be promoted.
#[derive(Debug, Parser)]
#[command(name = "hindsight", version, after_help = EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a primary server: takes writes, logs them, serves queries.
    Primary(PrimaryArgs),
    /// Run a replica: restore a backup, replay WAL to a target, pause, promote.
    Replica(Box<ReplicaArgs>),
    /// An interactive SQL shell, or run SQL from -c, -f or a pipe.
    Shell(shell::ShellArgs),
    /// Create, list, show, verify and expire base backups in an archive.
    Backup(BackupArgs),
    /// Inspect or verify WAL in an archive or a data directory.
    Wal(WalArgs),
    /// The whole story on this machine, narrated, in under a minute.
    #[command(after_help = "Example:\n  hindsight demo")]
    Demo,
}

const PRIMARY_EXAMPLES: &str = "\
Examples:
  hindsight primary --data /var/lib/hindsight
  hindsight primary --data ./data --listen 0.0.0.0:7340
  hindsight primary --data ./data --config hindsight.toml
  RUST_LOG=debug hindsight primary --data ./data

When ready it prints one line to stdout:
  hindsight primary listening on 127.0.0.1:7340 (system id 5F3A9C0B12D4E687, data ./data)
and logs to stderr (filter with RUST_LOG, default info). SIGINT or SIGTERM stops it cleanly.
On first start without an [auth] admin secret it writes DATA/admin.secret (mode 0600): log in
as role admin with its content.";

#[derive(Debug, Args)]
#[command(after_help = PRIMARY_EXAMPLES)]
struct PrimaryArgs {
    /// The data directory; initialised when empty or missing.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// The address to listen on, host:port (port 0 picks a free one); overrides the file's
    /// `listen`. Default 127.0.0.1:7340.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// The WAL and backup archive (a directory, file://… or s3://…).
    #[arg(long, value_name = "URL")]
    archive: Option<String>,
    /// A TOML configuration file (see docs/configuration.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// What a replica does when it reaches its recovery target.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum TargetAction {
    /// Stay in recovery, serving read-only queries, until told to resume or promote.
    Pause,
    /// Become a read-write primary on a new timeline.
    Promote,
    /// Stop the process.
    Shutdown,
}

const REPLICA_EXAMPLES: &str = "\
Examples:
  hindsight replica --data ./replica --primary 10.0.0.5:7340 --password-file ./admin.secret
  hindsight replica --data ./r2 --primary 10.0.0.5:7340 --password-file ./pw --slot r2 --name r2 \\
      --listen 127.0.0.1:7342

An empty --data directory is bootstrapped from a base backup streamed by the primary; a
replica's directory resumes where it stopped. --archive, --backup, the --target-* options and
--apply-delay arrive with the archive and point-in-time recovery milestones.";

#[derive(Debug, Args)]
#[command(after_help = REPLICA_EXAMPLES)]
struct ReplicaArgs {
    /// The replica's data directory.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// The primary to stream WAL from.
    #[arg(long, value_name = "ADDR")]
    primary: Option<String>,
    /// The archive to restore the backup and fetch WAL from.
    #[arg(long, value_name = "URL")]
    archive: Option<String>,
    /// The address to serve read-only queries on (default 127.0.0.1:7341).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// A file holding the password to log in to the primary with (the primary's admin.secret
    /// works); the replica accepts the primary's roles and secrets itself.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// The role to log in to the primary as: replication or admin.
    #[arg(long, value_name = "ROLE", default_value = "admin")]
    role: String,
    /// A replication slot on the primary that keeps the WAL this replica needs.
    #[arg(long, value_name = "NAME")]
    slot: Option<String>,
    /// This replica's name on the primary (for synchronous_standbys and SHOW REPLICATION).
    #[arg(long, value_name = "NAME", default_value = "replica")]
    name: String,
    /// A configuration file (the same format as the primary's; its engine settings, `listen`,
    /// `max_connections` and `transparent_huge_pages` apply).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The backup to start from: an id, or latest.
    #[arg(long, value_name = "ID|latest")]
    backup: Option<String>,
    /// Stop at this time (RFC 3339).
    #[arg(long, value_name = "T", group = "target")]
    target_time: Option<String>,
    /// Stop at this Lsn (X/Y).
    #[arg(long, value_name = "L", group = "target")]
    target_lsn: Option<String>,
    /// Stop at this transaction id.
    #[arg(long, value_name = "N", group = "target")]
    target_xid: Option<u64>,
    /// Stop at this named restore point.
    #[arg(long, value_name = "S", group = "target")]
    target_name: Option<String>,
    /// Stop as soon as the backup is consistent.
    #[arg(long, group = "target")]
    target_immediate: bool,
    /// Stop just before the target instead of just after it.
    #[arg(long)]
    target_exclusive: bool,
    /// The timeline to follow: current, latest or a number.
    #[arg(long, value_name = "current|latest|N")]
    target_timeline: Option<String>,
    /// What to do at the target.
    #[arg(long, value_enum, default_value_t = TargetAction::Pause)]
    target_action: TargetAction,
    /// Apply each transaction this long after it committed (a delayed replica), e.g. 1h.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    apply_delay: Option<std::time::Duration>,
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    hindsight_primary::config::parse_duration(text).map_err(|e| e.to_string())
}

/// The output format of listings.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum ListFormat {
    /// Aligned text.
    Table,
    /// JSON.
    Json,
}

const BACKUP_EXAMPLES: &str = "\
Examples:
  hindsight backup create --archive /backups/hindsight
  hindsight backup list --archive s3://bucket/hindsight --format json
  hindsight backup verify --archive /backups/hindsight
  hindsight backup expire --dry-run --archive /backups/hindsight

Not available yet: arrives with the archive milestone.";

#[derive(Debug, Args)]
#[command(after_help = BACKUP_EXAMPLES)]
struct BackupArgs {
    #[command(subcommand)]
    action: BackupAction,
    /// The archive: a directory, file://… or s3://bucket/prefix.
    #[arg(long, value_name = "URL", global = true)]
    archive: Option<String>,
    /// How to print listings.
    #[arg(long, value_enum, default_value_t = ListFormat::Table, global = true)]
    format: ListFormat,
}

#[derive(Debug, Subcommand)]
enum BackupAction {
    /// Take a base backup of a running primary into the archive.
    Create,
    /// List the backups in the archive.
    List,
    /// Show one backup.
    Show {
        /// The backup id.
        id: String,
    },
    /// Check backups (all, or one) against their checksums.
    Verify {
        /// The backup id; all backups when omitted.
        id: Option<String>,
    },
    /// Delete backups and WAL that no retained recovery window needs.
    Expire {
        /// Say what would be deleted without deleting it.
        #[arg(long)]
        dry_run: bool,
    },
}

const WAL_EXAMPLES: &str = "\
Examples:
  hindsight wal inspect --data ./data
  hindsight wal verify --archive /backups/hindsight

Not available yet: arrives with the archive milestone.";

#[derive(Debug, Args)]
#[command(after_help = WAL_EXAMPLES)]
struct WalArgs {
    #[command(subcommand)]
    action: WalAction,
    /// Read WAL from this archive.
    #[arg(long, value_name = "URL", global = true, conflicts_with = "data")]
    archive: Option<String>,
    /// Read WAL from this data directory.
    #[arg(long, value_name = "DIR", global = true)]
    data: Option<PathBuf>,
    /// How to print listings.
    #[arg(long, value_enum, default_value_t = ListFormat::Table, global = true)]
    format: ListFormat,
}

#[derive(Debug, Subcommand)]
enum WalAction {
    /// List WAL segments and records.
    Inspect,
    /// Check every record's CRC, chain and digest.
    Verify,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Primary(args) => report(run_primary(args)),
        Command::Shell(args) => shell::run(args),
        Command::Demo => report(demo::run()),
        Command::Replica(args) => report(run_replica(*args)),
        Command::Backup(_) => not_available("backup", "the archive milestone"),
        Command::Wal(_) => not_available("wal", "the archive milestone"),
    }
}

/// Prints an error as one line (the context chain joined with `: `) and maps it to exit 1.
fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let cause = format!("{e:#}").replace('\n', " ");
            eprintln!("hindsight: error: {cause}");
            ExitCode::FAILURE
        }
    }
}

fn not_available(command: &str, milestone: &str) -> ExitCode {
    eprintln!("hindsight {command}: not available yet: arrives with {milestone}");
    ExitCode::from(EXIT_NOT_AVAILABLE)
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .init();
}

fn run_primary(args: PrimaryArgs) -> anyhow::Result<()> {
    if args.archive.is_some() {
        anyhow::bail!("--archive is not available yet: arrives with the archive milestone");
    }
    let mut config = match &args.config {
        Some(path) => ServerConfig::load(path).context("load the configuration")?,
        None => ServerConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    init_tracing();
    set_transparent_huge_pages(config.transparent_huge_pages);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hindsight-server")
        .build()
        .context("start the async runtime")?;
    runtime.block_on(serve(&args.data, config))
}

fn run_replica(args: ReplicaArgs) -> anyhow::Result<()> {
    let later = |flag: &str, milestone: &str| {
        anyhow::anyhow!("{flag} is not available yet: arrives with {milestone}")
    };
    if args.archive.is_some() || args.backup.is_some() {
        return Err(later("--archive/--backup", "the archive milestone"));
    }
    let targeted = args.target_time.is_some()
        || args.target_lsn.is_some()
        || args.target_xid.is_some()
        || args.target_name.is_some()
        || args.target_immediate
        || args.target_timeline.is_some()
        || args.apply_delay.is_some();
    if targeted {
        return Err(later("--target-*/--apply-delay", "the point-in-time recovery milestone"));
    }
    let primary = args.primary.context("--primary ADDR is required (until the archive milestone)")?;
    let mut server = match &args.config {
        Some(path) => ServerConfig::load(path).context("load the configuration")?,
        None => ServerConfig { listen: "127.0.0.1:7341".into(), ..ServerConfig::default() },
    };
    if let Some(listen) = args.listen {
        server.listen = listen;
    }
    let password = match &args.password_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("read the password file {}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        None => std::env::var("HINDSIGHT_PASSWORD")
            .context("give --password-file FILE (or HINDSIGHT_PASSWORD)")?,
    };
    let config = hindsight_replica::ReplicaConfig {
        data_dir: args.data.clone(),
        primary,
        role: args.role,
        password,
        slot: args.slot,
        name: args.name,
        server,
    };
    init_tracing();
    set_transparent_huge_pages(config.server.transparent_huge_pages);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hindsight-replica")
        .build()
        .context("start the async runtime")?;
    runtime.block_on(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
        let handle = hindsight_replica::start(config)
            .await
            .with_context(|| format!("start the replica on {}", args.data.display()))?;
        announce_ready(&ReadyLine::replica(handle.local_addr(), handle.system_id(), &args.data))?;
        stop_signal(&mut terminate, &mut interrupt).await;
        handle.shutdown().await;
        Ok(())
    })
}

/// Allows or forbids transparent huge pages for this process (`prctl(PR_SET_THP_DISABLE)`),
/// per the `transparent_huge_pages` setting; the kernel checks the flag at each page fault, so
/// it covers memory mapped before this call too. A kernel that refuses leaves the system's
/// policy in place, with a warning.
fn set_transparent_huge_pages(enabled: bool) {
    let disable = libc::c_ulong::from(!enabled);
    // SAFETY: PR_SET_THP_DISABLE takes one integer argument and the unused ones as zero; it
    // touches no memory of ours.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_THP_DISABLE,
            disable,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, enabled, "could not set transparent huge pages for this process; the system's setting applies");
    }
}

async fn serve(data: &Path, config: ServerConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before the ready line, so a signal sent as soon as it is read is handled.
    let mut terminate = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    let handle = Server::start(data, config)
        .await
        .with_context(|| format!("start the primary on {}", data.display()))?;
    announce_ready(&ReadyLine::new(handle.local_addr(), handle.system_id(), data))?;
    stop_signal(&mut terminate, &mut interrupt).await;
    handle.shutdown().await;
    Ok(())
}

/// Prints the ready line on stdout, flushed: whoever started the server waits for it.
fn announce_ready(line: &ReadyLine) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}").and_then(|()| stdout.flush()).context("print the ready line")
}

/// Waits for SIGTERM or SIGINT (handlers installed before the ready line) and logs which.
async fn stop_signal(
    terminate: &mut tokio::signal::unix::Signal,
    interrupt: &mut tokio::signal::unix::Signal,
) {
    let signal_name = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal = signal_name, "stopping");
}
