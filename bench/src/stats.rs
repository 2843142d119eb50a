//! Measurement helpers shared by every workload: latency histograms, resident memory, file
//! sizes, directory copies and the small formatting helpers the readable tables use.

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::Duration;

/// The largest latency a histogram records, in microseconds (one minute). Slower commits are
/// clamped to it rather than dropped, so they still count.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant decimal digits the latency histograms keep.
const LATENCY_SIGFIG: u8 = 3;

/// A new latency histogram in microseconds, 1 µs .. [`LATENCY_US_MAX`].
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGFIG)
        .expect("the latency histogram bounds are valid")
}

/// Records one latency, clamped into the histogram's range.
pub fn record_latency(hist: &mut Histogram<u64>, latency: Duration) {
    let us = (latency.as_micros() as u64).clamp(1, LATENCY_US_MAX);
    hist.record(us).expect("a clamped latency is inside the histogram's range");
}

/// Throughput and commit latency of one measured phase.
///
/// Invariants:
/// - `hist.len()` is the number of commits measured (`txns`).
#[derive(Clone, Debug)]
pub struct CommitStats {
    /// Transactions committed in the phase.
    pub txns: u64,
    /// Wall-clock time of the phase.
    pub elapsed: Duration,
    /// Per-commit latency in microseconds.
    pub hist: Histogram<u64>,
}

impl CommitStats {
    /// Commits per second over the phase, or the value measured by an external tool.
    pub fn tps(&self) -> f64 {
        self.txns as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    /// The latency at quantile `q` (0..=1), in microseconds.
    pub fn latency_us(&self, q: f64) -> u64 {
        self.hist.value_at_quantile(q)
    }

    /// The `commit_*` keys of the JSON reports, with `tps` given explicitly (pgbench's figure
    /// excludes connection set-up, ours is computed the same way by the caller).
    pub fn json_keys(&self, tps: f64) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert("commit_tps".into(), json!(round1(tps)));
        m.insert("commit_latency_us_p50".into(), json!(self.latency_us(0.50)));
        m.insert("commit_latency_us_p99".into(), json!(self.latency_us(0.99)));
        m.insert("commit_latency_us_p999".into(), json!(self.latency_us(0.999)));
        m.insert("commit_latency_us_max".into(), json!(self.hist.max()));
        m
    }
}

/// The median of some durations (the mean of the middle two for an even count).
pub fn median(values: &[Duration]) -> Duration {
    assert!(!values.is_empty(), "median of nothing");
    let mut v = values.to_vec();
    v.sort();
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2
    }
}

/// This process's resident set size in bytes, from `/proc/self/statm`.
pub fn rss_bytes() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/self/statm").context("read /proc/self/statm")?;
    let pages: u64 = text
        .split_whitespace()
        .nth(1)
        .context("find the resident field of /proc/self/statm")?
        .parse()
        .context("parse the resident page count of /proc/self/statm")?;
    // SAFETY: sysconf has no preconditions and touches no memory of ours.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page_size <= 0 {
        bail!("sysconf(_SC_PAGESIZE) failed");
    }
    Ok(pages * page_size as u64)
}

/// Total size of the files in `dir` whose names end in `suffix` (not recursive).
pub fn files_size(dir: &Path, suffix: &str) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let entry = entry.with_context(|| format!("list {}", dir.display()))?;
        if entry.file_name().to_string_lossy().ends_with(suffix) {
            total += entry.metadata().with_context(|| format!("stat {}", entry.path().display()))?.len();
        }
    }
    Ok(total)
}

/// Copies the directory tree `from` to `to` (which must not exist), leaving out files named
/// `skip` (the engine's `lock` file: a copy must not look held).
pub fn copy_dir(from: &Path, to: &Path, skip: &str) -> Result<()> {
    std::fs::create_dir(to).with_context(|| format!("create {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("list {}", from.display()))? {
        let entry = entry.with_context(|| format!("list {}", from.display()))?;
        if entry.file_name() == skip {
            continue;
        }
        let target = to.join(entry.file_name());
        let kind = entry.file_type().with_context(|| format!("stat {}", entry.path().display()))?;
        if kind.is_dir() {
            copy_dir(&entry.path(), &target, skip)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copy {} to {}", entry.path().display(), target.display()))?;
        }
    }
    Ok(())
}

/// Rounds to one decimal, for JSON figures nobody needs to the last bit.
pub fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Rounds to three decimals.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Formats a latency in microseconds as milliseconds with two decimals.
pub fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// Formats a number with thousands separators and no decimals.
pub fn thousands(x: f64) -> String {
    let n = x.round() as i128;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// `met` or `MISSED` for a figure against its target.
pub fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

/// A fresh temporary work directory, under `parent` when given (removed when dropped).
///
/// With `HINDSIGHT_BENCH_KEEP` set in the environment the directory (data directories and
/// server logs) is kept after the run, and its path printed, for looking into a result.
pub fn work_dir(parent: Option<&Path>) -> Result<tempfile::TempDir> {
    let mut dir = match parent {
        Some(parent) => {
            std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
            tempfile::Builder::new().prefix("hindsight-bench-").tempdir_in(parent)
        }
        None => tempfile::Builder::new().prefix("hindsight-bench-").tempdir(),
    }
    .context("create the work directory")?;
    if std::env::var_os(KEEP_ENV).is_some() {
        dir.disable_cleanup(true);
        eprintln!("{KEEP_ENV} is set: keeping {}", dir.path().display());
    }
    Ok(dir)
}

/// Keeps the work directory after a run when set (to anything).
const KEEP_ENV: &str = "HINDSIGHT_BENCH_KEEP";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(-12_345.0), "-12,345");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        let d = Duration::from_millis;
        assert_eq!(median(&[d(3), d(1), d(2)]), d(2));
        assert_eq!(median(&[d(4), d(1), d(2), d(3)]), Duration::from_micros(2500));
    }

    #[test]
    fn latencies_are_clamped_into_range() {
        let mut h = latency_histogram();
        record_latency(&mut h, Duration::ZERO);
        record_latency(&mut h, Duration::from_secs(3600));
        assert_eq!(h.len(), 2);
        assert_eq!(h.min(), 1);
        assert!(h.max() >= LATENCY_US_MAX);
    }

    #[test]
    fn rss_is_positive() {
        assert!(rss_bytes().unwrap() > 0);
    }

    #[test]
    fn copy_dir_skips_the_lock_file() {
        let tmp = tempfile::tempdir().unwrap();
        let from = tmp.path().join("a");
        std::fs::create_dir_all(from.join("wal")).unwrap();
        std::fs::write(from.join("lock"), b"").unwrap();
        std::fs::write(from.join("wal").join("seg"), b"xyz").unwrap();
        let to = tmp.path().join("b");
        copy_dir(&from, &to, "lock").unwrap();
        assert!(!to.join("lock").exists());
        assert_eq!(std::fs::read(to.join("wal").join("seg")).unwrap(), b"xyz");
        assert_eq!(files_size(&to.join("wal"), "seg").unwrap(), 3);
    }
}
