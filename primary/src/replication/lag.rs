//! Replication lag: how long ago the WAL a standby just confirmed was published here.
//!
//! The engine's publish hook calls [`super::Replication::on_published`] after every group
//! commit; it records `(lsn, Instant)` in [`LagSamples`], a bounded ring shared by all
//! standbys. When a standby confirms a position, its [`LagClock`] for that level (write, flush,
//! replay) finds the newest sample at or below the position and, if that sample is newer than
//! the one it measured last, measures `now − sample time`. This is PostgreSQL's
//! `write_lag`/`flush_lag`/`replay_lag`, timed from the local publish instead of the send.
//!
//! Simplifications, admitted openly:
//! - Samples published before the standby connected are not used (the standby may have had
//!   that WAL before it connected, and timing it would show a bogus lag); a standby catching up
//!   shows NULL until it confirms WAL published after it connected.
//! - WAL for commits that wait for standbys is sent before it is durable here (decision #34),
//!   so a standby can write and flush it before it is published. A report ahead of the newest
//!   sample measures nothing; the next report past a newer sample does. `write_lag` and
//!   `flush_lag` can therefore read one report late, never negative.
//! - The lag shown is the last one measured; between acknowledgements it does not grow.
//! - When the ring is full it drops every other sample (keeping the newest), halving its time
//!   resolution rather than forgetting old WAL; samples every standby has replayed past are
//!   forgotten ([`LagSamples::forget_below`]).
//! - Like PostgreSQL, a standby that has confirmed everything published and has measured
//!   nothing new for [`LAG_IDLE_RESET`] shows NULL rather than a stale lag.

use hindsight_protocol::Lsn;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The most publish samples kept for lag measurement.
pub const LAG_SAMPLES_MAX: usize = 8192;
/// After this long caught up with nothing new measured, lag shows as NULL.
pub const LAG_IDLE_RESET: Duration = Duration::from_secs(1);
const _: () = assert!(LAG_SAMPLES_MAX >= 2, "compaction keeps at least the newest sample");

/// One publish: WAL up to `lsn` became durable and visible at `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// The published Lsn.
    pub lsn: Lsn,
    /// When.
    pub at: Instant,
}

/// The ring of publish samples.
///
/// Invariants:
/// - Samples are in strictly increasing Lsn order (and non-decreasing time).
/// - At most [`LAG_SAMPLES_MAX`] samples.
#[derive(Debug, Default)]
pub struct LagSamples {
    samples: VecDeque<Sample>,
}

impl LagSamples {
    /// No samples.
    pub fn new() -> LagSamples {
        LagSamples { samples: VecDeque::with_capacity(LAG_SAMPLES_MAX) }
    }

    /// Records a publish. An Lsn at or below the newest sample is ignored (publishes only move
    /// forward). When full, drops every other sample first.
    pub fn record(&mut self, lsn: Lsn, at: Instant) {
        if self.samples.back().is_some_and(|s| s.lsn >= lsn) {
            return;
        }
        if self.samples.len() >= LAG_SAMPLES_MAX {
            let len = self.samples.len();
            // Keep the newest and every second one before it.
            let kept: VecDeque<Sample> = self
                .samples
                .iter()
                .enumerate()
                .filter(|(i, _)| (len - 1 - i).is_multiple_of(2))
                .map(|(_, s)| *s)
                .collect();
            self.samples = kept;
        }
        self.samples.push_back(Sample { lsn, at });
        assert!(self.samples.len() <= LAG_SAMPLES_MAX, "lag ring over its bound");
    }

    /// The newest sample at or below `lsn`.
    pub fn at_or_below(&self, lsn: Lsn) -> Option<Sample> {
        let k = self.samples.partition_point(|s| s.lsn <= lsn);
        k.checked_sub(1).map(|i| self.samples[i])
    }

    /// The newest sample's Lsn.
    pub fn newest_lsn(&self) -> Option<Lsn> {
        self.samples.back().map(|s| s.lsn)
    }

    /// Forgets samples no standby can use: every one older than the newest sample at or below
    /// `lsn`, the lowest position any standby confirmed.
    pub fn forget_below(&mut self, lsn: Lsn) {
        let k = self.samples.partition_point(|s| s.lsn <= lsn);
        if k >= 2 {
            self.samples.drain(..k - 1);
        }
    }

    /// How many samples are kept.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

/// One standby's lag at one level (write, flush or replay).
///
/// Invariants:
/// - `last_sample` only moves forward.
/// - `lag` is `Some` exactly when `measured_at` is.
#[derive(Clone, Debug)]
pub struct LagClock {
    /// Samples older than this (the standby's connection time) are not measured.
    connected_at: Instant,
    /// The newest sample passed so far.
    last_sample: Option<Lsn>,
    lag: Option<Duration>,
    measured_at: Option<Instant>,
}

impl LagClock {
    /// A clock for a standby that connected at `connected_at`.
    pub fn new(connected_at: Instant) -> LagClock {
        LagClock { connected_at, last_sample: None, lag: None, measured_at: None }
    }

    /// The standby confirmed `position` at `now`: measures the lag if the position passed a
    /// sample it had not passed before.
    pub fn observe(&mut self, samples: &LagSamples, position: Lsn, now: Instant) {
        let Some(sample) = samples.at_or_below(position) else { return };
        if self.last_sample.is_some_and(|last| sample.lsn <= last) {
            return;
        }
        self.last_sample = Some(sample.lsn);
        if sample.at >= self.connected_at {
            self.lag = Some(now.saturating_duration_since(sample.at));
            self.measured_at = Some(now);
        }
    }

    /// The lag to show for a standby at `position`: NULL before the first measurement, and
    /// once it has been caught up (at or past the newest sample) for [`LAG_IDLE_RESET`]
    /// without a new measurement.
    pub fn shown(&self, samples: &LagSamples, position: Lsn, now: Instant) -> Option<Duration> {
        let (lag, measured_at) = (self.lag?, self.measured_at?);
        let caught_up = samples.newest_lsn().is_none_or(|newest| position >= newest);
        if caught_up && now.saturating_duration_since(measured_at) >= LAG_IDLE_RESET {
            return None;
        }
        Some(lag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_is_measured_from_the_newest_sample_passed() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut samples = LagSamples::new();
        let mut clock = LagClock::new(t0);
        samples.record(Lsn(100), ms(10));
        samples.record(Lsn(200), ms(20));
        samples.record(Lsn(150), ms(25)); // out of order: ignored
        samples.record(Lsn(300), ms(30));
        assert_eq!(samples.len(), 3);
        // Nothing passed yet.
        clock.observe(&samples, Lsn(50), ms(40));
        assert_eq!(clock.shown(&samples, Lsn(50), ms(40)), None);
        // Past 200 (not 300): timed from the 200 sample.
        clock.observe(&samples, Lsn(250), ms(45));
        assert_eq!(clock.shown(&samples, Lsn(250), ms(45)), Some(Duration::from_millis(25)));
        // No new sample passed: the lag stays.
        clock.observe(&samples, Lsn(260), ms(90));
        assert_eq!(clock.shown(&samples, Lsn(260), ms(90)), Some(Duration::from_millis(25)));
        // Caught up.
        clock.observe(&samples, Lsn(300), ms(100));
        assert_eq!(clock.shown(&samples, Lsn(300), ms(100)), Some(Duration::from_millis(70)));
        // Still lagging at 260 after a long time: the last measurement is still shown.
        assert!(clock.shown(&samples, Lsn(260), ms(5000)).is_some());
        // Caught up with nothing new for LAG_IDLE_RESET: NULL, like PostgreSQL.
        assert_eq!(clock.shown(&samples, Lsn(300), ms(100) + LAG_IDLE_RESET), None);
    }

    #[test]
    fn samples_from_before_the_connection_are_not_timed() {
        let t0 = Instant::now();
        let mut samples = LagSamples::new();
        samples.record(Lsn(100), t0);
        let connected = t0 + Duration::from_secs(600);
        let mut clock = LagClock::new(connected);
        clock.observe(&samples, Lsn(100), connected + Duration::from_millis(1));
        assert_eq!(clock.shown(&samples, Lsn(100), connected), None, "not a 600 s lag");
        samples.record(Lsn(200), connected + Duration::from_millis(5));
        clock.observe(&samples, Lsn(200), connected + Duration::from_millis(8));
        assert_eq!(clock.shown(&samples, Lsn(200), connected), Some(Duration::from_millis(3)));
    }

    #[test]
    fn the_ring_stays_bounded_and_keeps_what_standbys_need() {
        let t0 = Instant::now();
        let mut samples = LagSamples::new();
        for i in 1..=(3 * LAG_SAMPLES_MAX as u64) {
            samples.record(Lsn(i * 10), t0 + Duration::from_micros(i));
            assert!(samples.len() <= LAG_SAMPLES_MAX);
        }
        let newest = 3 * LAG_SAMPLES_MAX as u64 * 10;
        assert_eq!(samples.newest_lsn(), Some(Lsn(newest)));
        // Old WAL is still covered, at a coarser resolution.
        let old = samples.at_or_below(Lsn(newest / 3)).expect("an old sample");
        assert!(old.lsn <= Lsn(newest / 3) && old.lsn >= Lsn(newest / 3 - 400), "{old:?}");
        // Forgetting below a position keeps the sample a standby there still needs.
        samples.forget_below(Lsn(newest - 15));
        assert_eq!(samples.len(), 3, "the samples at newest - 20, newest - 10 and newest");
        assert_eq!(samples.at_or_below(Lsn(newest - 15)).unwrap().lsn, Lsn(newest - 20));
        samples.forget_below(Lsn(1));
        assert_eq!(samples.len(), 3, "nothing below the oldest to forget");
    }
}
