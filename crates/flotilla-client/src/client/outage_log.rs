//! Rate limit of the "coordinator unreachable" warning, so that an outage of hours writes a few
//! dozen lines, not one per reconnection attempt.

use std::time::{Duration, Instant};

/// Longest silence between two warnings of one outage.
pub(crate) const OUTAGE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// Decides which failures of an outage (a run of consecutive transient failures) are logged.
///
/// The first failure is always logged; after that a failure is logged when the failure count has
/// doubled since the last line (2, 4, 8, …) or when `interval` has passed since it. Each logged line
/// reports how many failures went unlogged before it.
#[derive(Debug)]
pub(crate) struct OutageLog {
    interval: Duration,
    /// Failures in the current outage.
    failures: u64,
    /// When the last line was written, and the failure count it reported.
    last: Option<(Instant, u64)>,
}

impl OutageLog {
    pub(crate) fn new(interval: Duration) -> Self {
        Self {
            interval,
            failures: 0,
            last: None,
        }
    }

    /// Records a failure at `now`. Returns `Some(unlogged)` when this failure should be logged,
    /// with the number of failures since the last line that were not.
    pub(crate) fn failure(&mut self, now: Instant) -> Option<u64> {
        self.failures += 1;
        let logged_at = match self.last {
            None => 0,
            Some((at, count)) => {
                let doubled = self.failures >= count.saturating_mul(2);
                if !doubled && now.saturating_duration_since(at) < self.interval {
                    return None;
                }
                count
            }
        };
        self.last = Some((now, self.failures));
        Some(self.failures - logged_at - 1)
    }

    /// Failures in the current outage.
    pub(crate) fn failures(&self) -> u64 {
        self.failures
    }

    /// Ends the outage. Returns how many failures it had, if there was one.
    pub(crate) fn recovered(&mut self) -> Option<u64> {
        let failures = std::mem::take(&mut self.failures);
        self.last = None;
        (failures > 0).then_some(failures)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which of `n` failures, `step` apart, are logged.
    fn logged(log: &mut OutageLog, start: Instant, n: u64, step: Duration) -> Vec<(u64, u64)> {
        (1..=n)
            .filter_map(|i| {
                let now = start + step * (i as u32);
                log.failure(now).map(|unlogged| (i, unlogged))
            })
            .collect()
    }

    #[test]
    fn fast_failures_are_logged_at_each_doubling() {
        let mut log = OutageLog::new(OUTAGE_LOG_INTERVAL);
        let lines = logged(&mut log, Instant::now(), 100, Duration::from_millis(10));
        assert_eq!(
            lines,
            vec![(1, 0), (2, 0), (4, 1), (8, 3), (16, 7), (32, 15), (64, 31)]
        );
        assert_eq!(log.failures(), 100);
    }

    #[test]
    fn slow_failures_are_logged_at_most_once_per_interval() {
        let mut log = OutageLog::new(Duration::from_secs(30));
        let start = Instant::now();
        // An hour of failures every 5 s: 720 attempts.
        let lines = logged(&mut log, start, 720, Duration::from_secs(5));
        // Doublings up to 8, then one line per 30 s (every 6th failure).
        assert_eq!(&lines[..4], &[(1, 0), (2, 0), (4, 1), (8, 3)]);
        assert!(lines.len() <= 3600 / 30 + 4, "{} lines", lines.len());
        assert!(lines.len() >= 3600 / 30 - 4, "{} lines", lines.len());
        for pair in lines[4..].windows(2) {
            assert_eq!(pair[1].0 - pair[0].0, 6, "{pair:?}");
            assert_eq!(pair[1].1, 5, "{pair:?}");
        }
        // Every failure is either logged or counted in the next line.
        let accounted: u64 = lines.iter().map(|(_, unlogged)| unlogged + 1).sum();
        assert_eq!(accounted, lines.last().unwrap().0);
    }

    #[test]
    fn recovery_starts_a_new_outage() {
        let mut log = OutageLog::new(OUTAGE_LOG_INTERVAL);
        let now = Instant::now();
        assert_eq!(log.recovered(), None);
        assert_eq!(log.failure(now), Some(0));
        assert_eq!(log.failure(now), Some(0));
        assert_eq!(log.failure(now), None);
        assert_eq!(log.recovered(), Some(3));
        // The next failure opens a new outage and is logged at once.
        assert_eq!(log.failure(now), Some(0));
        assert_eq!(log.failures(), 1);
    }
}
