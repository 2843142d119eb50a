//! Whole-machine CPU accounting from `/proc/stat`, so a figure measured on a shared machine
//! says how much CPU it took and how much of the machine the host took away meanwhile.
//!
//! The servers, their client and the kernel's work for them (softirqs for loopback TCP, block
//! I/O) all run on the same few cores, so the machine's busy time over a phase, divided by the
//! phase's commits, is the whole cost of a commit, for either system alike. Steal is the time a
//! virtual CPU was ready to run while the host ran something else: a phase with much of it was
//! measured on a slower machine than a phase without, and a ratio across the two is suspect.

/// `USER_HZ` where `sysconf` cannot tell: what Linux uses on every common architecture.
const USER_HZ_DEFAULT: f64 = 100.0;

/// The machine's cumulative CPU time, in clock ticks, from the `cpu` line of `/proc/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuTimes {
    /// user + nice + system + irq + softirq (guest time is already counted in user and nice).
    busy_ticks: u64,
    /// idle + iowait.
    idle_ticks: u64,
    /// Time the host ran something else while a virtual CPU was ready.
    steal_ticks: u64,
}

impl CpuTimes {
    /// The times now; `None` where `/proc/stat` cannot be read or parsed (not Linux), said once
    /// on stderr.
    pub fn now() -> Option<CpuTimes> {
        let times = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| CpuTimes::parse(&stat));
        if times.is_none() {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| eprintln!("bench: /proc/stat unreadable; no CPU figures in this run"));
        }
        times
    }

    /// Parses the aggregate `cpu` line of a `/proc/stat` text: user nice system idle iowait
    /// irq softirq steal guest guest_nice. Kernels before 2.6.11 have no steal column; it
    /// counts as 0.
    fn parse(stat: &str) -> Option<CpuTimes> {
        let line = stat.lines().find(|l| l.split_whitespace().next() == Some("cpu"))?;
        let fields: Vec<u64> =
            line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
        if fields.len() < 4 {
            return None;
        }
        let field = |i: usize| fields.get(i).copied().unwrap_or(0);
        let sum = |columns: &[usize]| columns.iter().try_fold(0u64, |total, &i| total.checked_add(field(i)));
        Some(CpuTimes {
            busy_ticks: sum(&[0, 1, 2, 5, 6])?,
            idle_ticks: sum(&[3, 4])?,
            steal_ticks: field(7),
        })
    }

    /// What the machine did from `self` to `later`.
    pub fn until(self, later: CpuTimes) -> CpuUse {
        let busy = later.busy_ticks.saturating_sub(self.busy_ticks);
        let idle = later.idle_ticks.saturating_sub(self.idle_ticks);
        let steal = later.steal_ticks.saturating_sub(self.steal_ticks);
        let total = busy.saturating_add(idle).saturating_add(steal);
        CpuUse {
            busy_s: busy as f64 / clock_ticks_per_second(),
            steal_fraction: if total == 0 { 0.0 } else { steal as f64 / total as f64 },
        }
    }
}

/// The machine's CPU use over an interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuUse {
    /// CPU seconds spent running anything, summed over all CPUs.
    pub busy_s: f64,
    /// The share of all CPU time (busy, idle and stolen) that the host stole, 0 to 1.
    pub steal_fraction: f64,
}

impl CpuUse {
    /// The share stolen, in percent.
    pub fn steal_pct(&self) -> f64 {
        self.steal_fraction * 100.0
    }

    /// Busy CPU microseconds per `events` (commits, say); `None` for no events.
    pub fn us_per(&self, events: u64) -> Option<f64> {
        (events > 0).then(|| self.busy_s * 1e6 / events as f64)
    }
}

/// `USER_HZ`, the unit of `/proc/stat`.
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a configuration value and has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        USER_HZ_DEFAULT
    }
}

/// The machine's CPU use from `start` (taken with [`CpuTimes::now`]) until now.
pub fn used_since(start: Option<CpuTimes>) -> Option<CpuUse> {
    start.zip(CpuTimes::now()).map(|(start, end)| start.until(end))
}

/// Measures the machine's CPU use while `phase` runs.
pub fn measure<T>(phase: impl FnOnce() -> T) -> (T, Option<CpuUse>) {
    let start = CpuTimes::now();
    let result = phase();
    (result, used_since(start))
}

#[cfg(test)]
mod tests {
    use super::*;

    // guest (40) and guest_nice (4) are already inside user (300) and nice (20).
    const STAT: &str = "cpu  300 20 100 5000 80 5 15 60 40 4\n\
                        cpu0 150 10 50 2500 40 2 7 30 20 2\n\
                        intr 12345\n";

    #[test]
    fn the_aggregate_line_is_read_by_column() {
        let t = CpuTimes::parse(STAT).expect("parses");
        assert_eq!(
            t,
            CpuTimes { busy_ticks: 300 + 20 + 100 + 5 + 15, idle_ticks: 5000 + 80, steal_ticks: 60 }
        );
        // No steal column (old kernels): counted as none.
        let old = CpuTimes::parse("cpu 1 2 3 4 5 6 7\n").expect("parses");
        assert_eq!(old, CpuTimes { busy_ticks: 1 + 2 + 3 + 6 + 7, idle_ticks: 4 + 5, steal_ticks: 0 });
    }

    #[test]
    fn unreadable_text_gives_none() {
        let overflowing = format!("cpu {} {} 0 0\n", u64::MAX, 1);
        for text in ["", "intr 5\n", "cpu 1 2\n", "cpu 1 2 x 4\n", "cpu0 1 2 3 4\n", &overflowing] {
            assert_eq!(CpuTimes::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn use_over_an_interval_counts_busy_time_and_the_share_stolen() {
        let start = CpuTimes { busy_ticks: 1000, idle_ticks: 5000, steal_ticks: 100 };
        let end = CpuTimes { busy_ticks: 1000 + 150, idle_ticks: 5000 + 30, steal_ticks: 100 + 20 };
        let used = start.until(end);
        let ticks = clock_ticks_per_second();
        assert!((used.busy_s - 150.0 / ticks).abs() < 1e-12, "{used:?}");
        assert!((used.steal_fraction - 0.1).abs() < 1e-12, "{used:?}");
        assert_eq!(used.us_per(0), None);
        let per = used.us_per(3).expect("some commits");
        assert!((per - 50.0 / ticks * 1e6).abs() < 1e-6, "{per}");
        // Nothing elapsed: no share, not a division by zero.
        assert_eq!(start.until(start).steal_fraction, 0.0);
    }

    #[test]
    fn this_machine_counts_some_busy_time_over_real_work() {
        let Some(start) = CpuTimes::now() else {
            eprintln!("SKIPPED: /proc/stat is not readable here");
            return;
        };
        // Busy-loop for a few clock ticks: the machine's busy time must grow.
        let until = std::time::Instant::now() + std::time::Duration::from_millis(60);
        let mut spins = 0u64;
        while std::time::Instant::now() < until {
            spins = std::hint::black_box(spins + 1);
        }
        let used = start.until(CpuTimes::now().expect("readable a moment ago"));
        assert!(used.busy_s > 0.0, "{used:?} after {spins} spins");
    }
}
