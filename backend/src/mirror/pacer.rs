//! How fast a resync copies: as fast as the cap allows while the vdisk is
//! idle, slower while its foreground requests take longer than their
//! target. A pure controller fed latencies and copies; no clock of its own.

use std::time::{Duration, Instant};

/// The resync's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacerConfig {
    /// Never faster than this, in bytes per second.
    pub rate_max: u64,
    /// Never slower than this, so that a resync under a steady load ends
    /// (it copies the regions dirty when it began, and writes meanwhile
    /// reach both sides).
    pub rate_min: u64,
    /// The foreground latency the resync backs off to keep.
    pub latency_target: Duration,
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            rate_max: 200 << 20,
            rate_min: 4 << 20,
            latency_target: Duration::from_millis(20),
        }
    }
}

/// Foreground latency older than this says nothing of the load now.
const FOREGROUND_MEMORY: Duration = Duration::from_secs(1);

/// Additive increase, multiplicative decrease, on the copy rate: TCP's
/// answer to sharing a path without knowing its capacity.
#[derive(Debug)]
pub struct ResyncPacer {
    config: PacerConfig,
    /// Bytes per second the resync aims at now.
    rate: f64,
    /// Smoothed foreground latency, and when a request last completed.
    foreground: Option<(Duration, Instant)>,
}

impl ResyncPacer {
    /// Starts at the minimum rate: the load is unknown yet.
    pub fn new(config: PacerConfig) -> Self {
        let rate_min = config.rate_min.min(config.rate_max);
        ResyncPacer {
            config: PacerConfig { rate_min, ..config },
            rate: rate_min as f64,
            foreground: None,
        }
    }

    /// The rate aimed at, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// A foreground request completed after `latency`.
    pub fn foreground(&mut self, latency: Duration, now: Instant) {
        let smoothed = match self.foreground {
            Some((old, at)) if now.duration_since(at) < FOREGROUND_MEMORY => {
                (old * 7 + latency) / 8
            }
            _ => latency,
        };
        self.foreground = Some((smoothed, now));
    }

    /// A copy of `bytes` took `took` and ended at `now`: adapts the rate
    /// and returns how long to wait before the next copy.
    pub fn copied(&mut self, bytes: u64, took: Duration, now: Instant) -> Duration {
        let loaded = self.foreground.is_some_and(|(latency, at)| {
            now.duration_since(at) < FOREGROUND_MEMORY && latency > self.config.latency_target
        });
        let (min, max) = (self.config.rate_min as f64, self.config.rate_max as f64);
        self.rate = if loaded {
            (self.rate / 2.0).max(min)
        } else {
            // A tenth of the cap per copy: from the minimum to the cap in
            // ten copies of an idle vdisk.
            (self.rate + max / 10.0).min(max)
        };
        Duration::from_secs_f64(bytes as f64 / self.rate).saturating_sub(took)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn pacer() -> ResyncPacer {
        ResyncPacer::new(PacerConfig {
            rate_max: 100 * MIB,
            rate_min: 4 * MIB,
            latency_target: Duration::from_millis(10),
        })
    }

    #[test]
    fn an_idle_vdisk_gets_the_cap_and_the_wait_spreads_copies_to_it() {
        let mut p = pacer();
        let now = Instant::now();
        assert_eq!(p.rate(), 4 * MIB);
        for _ in 0..20 {
            p.copied(MIB, Duration::ZERO, now);
        }
        assert_eq!(p.rate(), 100 * MIB);
        assert_eq!(
            p.copied(MIB, Duration::ZERO, now),
            Duration::from_millis(10)
        );
        assert_eq!(
            p.copied(MIB, Duration::from_millis(4), now),
            Duration::from_millis(6)
        );
        assert_eq!(p.copied(MIB, Duration::from_secs(1), now), Duration::ZERO);
    }

    #[test]
    fn slow_foreground_requests_halve_the_rate_down_to_the_minimum() {
        let mut p = pacer();
        let now = Instant::now();
        for _ in 0..20 {
            p.copied(MIB, Duration::ZERO, now);
        }
        p.foreground(Duration::from_millis(30), now);
        p.copied(MIB, Duration::ZERO, now);
        assert_eq!(p.rate(), 50 * MIB);
        for _ in 0..10 {
            p.copied(MIB, Duration::ZERO, now);
        }
        assert_eq!(p.rate(), 4 * MIB);
    }

    #[test]
    fn fast_or_old_foreground_latency_lets_the_rate_grow() {
        let mut p = pacer();
        let now = Instant::now();
        p.foreground(Duration::from_millis(2), now);
        p.copied(MIB, Duration::ZERO, now);
        assert_eq!(p.rate(), 14 * MIB);
        p.foreground(Duration::from_millis(50), now);
        p.copied(MIB, Duration::ZERO, now);
        assert_eq!(p.rate(), 24 * MIB, "one slow request among fast ones");
        for _ in 0..8 {
            p.foreground(Duration::from_millis(50), now);
        }
        p.copied(MIB, Duration::ZERO, now);
        assert_eq!(p.rate(), 12 * MIB);
        // A second later the slow request no longer describes the load.
        p.copied(MIB, Duration::ZERO, now + Duration::from_secs(2));
        assert_eq!(p.rate(), 22 * MIB);
    }

    #[test]
    fn the_smoothed_latency_follows_a_changing_load() {
        let mut p = pacer();
        let now = Instant::now();
        p.foreground(Duration::from_millis(50), now);
        for _ in 0..30 {
            p.foreground(Duration::from_millis(1), now);
        }
        p.copied(MIB, Duration::ZERO, now);
        assert_eq!(p.rate(), 14 * MIB, "the slow request has faded out");
    }
}
