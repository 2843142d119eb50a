//! `hindsight-bench`: hindsight's workloads and measurements, side by side with PostgreSQL.
//!
//! ```text
//! cargo run --release -p hindsight-bench -- engine [--json] [--rows N] [--txns N] [--writers N] [--dir PATH]
//! cargo run --release -p hindsight-bench -- commit [--compare postgres] [--json] [--rows N] [--txns N] [--clients 4,16]
//! cargo run --release -p hindsight-bench -- lag [--compare postgres] [--json] [--rows N] [--txns N] [--clients N]
//! ```
//!
//! - `engine` ([`engine`]) runs the shared `accounts` workload ([`workload`]) in process against
//!   the engine library: commit throughput and latency, WAL bytes per transaction, replay speed,
//!   recovery time, snapshot write speed and memory per row.
//! - `commit` ([`commit`]) runs it over TCP through the real server and, with
//!   `--compare postgres`, through a throw-away PostgreSQL 15 cluster driven by pgbench
//!   ([`postgres`]) in the same run, and reports the ratios.
//! - `lag` ([`lag`]) adds a streaming replica (a `pg_basebackup` standby on the PostgreSQL
//!   side): time from an empty directory to a caught-up replica, replay lag while the primary
//!   takes updates, and commit throughput with `synchronous_commit = remote_apply`.
//!
//! Latencies are hdrhistogram percentiles ([`stats`]); `lag` also reports the whole machine's
//! CPU per commit and the share the host stole ([`machine`]). Progress goes to stderr; the
//! report goes to stdout, as a table or (`--json`) as exactly one JSON object. See
//! `docs/benchmarks.md`.

/// mimalloc: replay and snapshot loading allocate a small block per row version, and
/// glibc malloc's free-list maintenance showed up in their profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod client;
mod commit;
mod engine;
mod lag;
mod machine;
mod postgres;
mod stats;
mod workload;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;

/// Default rows loaded by the shared workloads.
const ROWS_DEFAULT: u64 = 1_000_000;
/// Default update transactions.
const TXNS_DEFAULT: u64 = 200_000;
/// Default update transactions per phase of the `lag` workload (two phases, one of them
/// waiting for the replica on every commit).
const LAG_TXNS_DEFAULT: u64 = 50_000;
/// Default client connections of the `lag` workload.
const LAG_CLIENTS_DEFAULT: usize = 4;
/// Default concurrent writers of the `engine` workload.
const WRITERS_DEFAULT: usize = 4;
/// Default opens timed per recovery figure.
const RECOVERY_RUNS_DEFAULT: usize = 5;
/// The most writer threads `engine` starts.
const WRITERS_MAX: usize = 256;
/// The most opens per recovery figure.
const RECOVERY_RUNS_MAX: usize = 100;
/// Characters of SQL or error text quoted in messages and table cells.
const ABBREVIATE_CHARS_MAX: usize = 120;

/// hindsight workloads and measurements, side by side with PostgreSQL.
#[derive(Parser, Debug)]
#[command(name = "hindsight-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// The accounts workload in process (fsync on): commits, WAL size, replay, recovery,
    /// snapshot writes, memory.
    ///
    /// Example: cargo run --release -p hindsight-bench -- engine --json
    Engine {
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Rows loaded.
        #[arg(long, default_value_t = ROWS_DEFAULT)]
        rows: u64,
        /// Update transactions.
        #[arg(long, default_value_t = TXNS_DEFAULT)]
        txns: u64,
        /// Concurrent writer threads, one session each.
        #[arg(long, default_value_t = WRITERS_DEFAULT)]
        writers: usize,
        /// Parent directory for the data directories (default: the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Opens timed per recovery figure (medians for recovery_s and replay).
        #[arg(long, default_value_t = RECOVERY_RUNS_DEFAULT)]
        recovery_runs: usize,
    },
    /// The accounts workload over TCP through the server, optionally against PostgreSQL.
    ///
    /// Example: cargo run --release -p hindsight-bench -- commit --compare postgres --clients 4,16
    Commit {
        /// Measure this system in the same run and report ratios.
        #[arg(long, value_enum)]
        compare: Option<Compare>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Rows loaded.
        #[arg(long, default_value_t = ROWS_DEFAULT)]
        rows: u64,
        /// Update transactions per client count.
        #[arg(long, default_value_t = TXNS_DEFAULT)]
        txns: u64,
        /// Client counts, comma-separated; the first is also reported at the top level.
        #[arg(long, value_delimiter = ',', default_values_t = [4usize, 16])]
        clients: Vec<usize>,
        /// Parent directory for the hindsight data directory (default: the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// A primary and one streaming replica over TCP: bootstrap time, replay lag, remote_apply
    /// commits; optionally the same with a PostgreSQL standby.
    ///
    /// Example: cargo run --release -p hindsight-bench -- lag --compare postgres --json
    Lag {
        /// Measure this system in the same run and report ratios.
        #[arg(long, value_enum)]
        compare: Option<Compare>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Rows loaded.
        #[arg(long, default_value_t = ROWS_DEFAULT)]
        rows: u64,
        /// Update transactions per phase (the lag phase, then the remote_apply phase).
        #[arg(long, default_value_t = LAG_TXNS_DEFAULT)]
        txns: u64,
        /// Concurrent client connections.
        #[arg(long, default_value_t = LAG_CLIENTS_DEFAULT)]
        clients: usize,
        /// Parent directory for the hindsight data directories (default: the system temp dir).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Measure only this system (implies --compare for it). For testing one side alone.
        #[arg(long, value_enum, hide = true)]
        only: Option<Compare>,
    },
}

/// Systems `--compare` can measure.
#[derive(Clone, Copy, Debug, ValueEnum)]
enum Compare {
    /// PostgreSQL 15 with pgbench, fsync on.
    Postgres,
}

/// Runs the chosen workload; on failure prints one line, `error: <cause: context…>`, to stderr
/// and exits with status 1.
fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.workload {
        Workload::Engine { json, rows, txns, writers, dir, recovery_runs } => {
            if writers > WRITERS_MAX {
                bail!("--writers {writers} is more than {WRITERS_MAX}");
            }
            if recovery_runs > RECOVERY_RUNS_MAX {
                bail!("--recovery-runs {recovery_runs} is more than {RECOVERY_RUNS_MAX}");
            }
            let opts = engine::EngineOptions { rows, txns, writers, dir, recovery_runs };
            let report = engine::run(&opts).context("run the engine workload")?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
        }
        Workload::Commit { compare, json, rows, txns, clients, dir } => {
            let opts = commit::CommitOptions {
                rows,
                txns,
                clients,
                compare_postgres: matches!(compare, Some(Compare::Postgres)),
                dir,
            };
            let report = commit::run(&opts).context("run the commit workload")?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if let Some(e) = report.first_error() {
                bail!("the commit workload was incomplete: {e}");
            }
        }
        Workload::Lag { compare, json, rows, txns, clients, dir, only } => {
            let opts = lag::LagOptions {
                rows,
                txns,
                clients,
                compare_postgres: matches!(compare.or(only), Some(Compare::Postgres)),
                skip_hindsight: matches!(only, Some(Compare::Postgres)),
                dir,
            };
            let report = lag::run(&opts).context("run the lag workload")?;
            if json {
                println!("{}", report.to_json());
            } else {
                print!("{}", report.to_table());
            }
            if let Some(e) = report.first_error() {
                bail!("the lag workload was incomplete: {e}");
            }
        }
    }
    Ok(())
}

/// The first [`ABBREVIATE_CHARS_MAX`] characters of `text` on one line, with `…` when cut.
pub fn abbreviate(text: &str) -> String {
    let one_line: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= ABBREVIATE_CHARS_MAX {
        one_line
    } else {
        let mut cut: String = one_line.chars().take(ABBREVIATE_CHARS_MAX).collect();
        cut.push('…');
        cut
    }
}

/// A plain-text table: a header, a rule, then the rows, columns padded to their widest cell.
pub fn format_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(|h| h.chars().count());
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| -> String {
        let padded: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        format!("{}\n", padded.join("  ").trim_end())
    };
    let mut out = line(header.to_vec());
    out.push_str(&line(
        widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().iter().map(|s| s.as_str()).collect(),
    ));
    for row in rows {
        out.push_str(&line(row.iter().map(|s| s.as_str()).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses_every_workload() {
        let cli = Cli::try_parse_from(["hindsight-bench", "engine", "--json", "--rows", "10"]).unwrap();
        assert!(matches!(
            cli.workload,
            Workload::Engine { json: true, rows: 10, txns: TXNS_DEFAULT, writers: 4, .. }
        ));
        let cli =
            Cli::try_parse_from(["hindsight-bench", "commit", "--compare", "postgres", "--clients", "4,16"])
                .unwrap();
        match cli.workload {
            Workload::Commit { compare: Some(Compare::Postgres), clients, .. } => {
                assert_eq!(clients, vec![4, 16])
            }
            other => panic!("parsed {other:?}"),
        }
        assert!(Cli::try_parse_from(["hindsight-bench", "commit", "--compare", "mysql"]).is_err());
        let cli = Cli::try_parse_from(["hindsight-bench", "lag", "--compare", "postgres", "--json"]).unwrap();
        assert!(matches!(
            cli.workload,
            Workload::Lag {
                compare: Some(Compare::Postgres),
                json: true,
                rows: ROWS_DEFAULT,
                txns: LAG_TXNS_DEFAULT,
                clients: LAG_CLIENTS_DEFAULT,
                only: None,
                ..
            }
        ));
        let cli = Cli::try_parse_from(["hindsight-bench", "lag", "--only", "postgres"]).unwrap();
        assert!(matches!(cli.workload, Workload::Lag { compare: None, only: Some(Compare::Postgres), .. }));
    }

    #[test]
    fn tables_align_and_text_is_abbreviated() {
        let t = format_table(&["a", "bb"], &[["xyz".into(), "1".into()]]);
        assert_eq!(t, "a    bb\n---  --\nxyz  1\n");
        assert_eq!(abbreviate("a\n  b"), "a b");
        assert!(abbreviate(&"x".repeat(500)).ends_with('…'));
    }
}
