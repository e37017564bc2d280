//! How often members probe each other and how long a silent one stays
//! suspect: the few knobs an admin tunes, translated into foca's config.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::PeriodicParams;

/// Gossip timing, LAN defaults. A dead member is suspected after about one
/// `probe_period` (its prober waits `probe_rtt`, then asks others), declared
/// down `suspect_to_down` later, and the verdict reaches everyone within a
/// few `gossip_interval`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often each member probes one other member.
    pub probe_period: Duration,
    /// How long a probe waits for a direct answer before asking others to
    /// probe indirectly. Above the network's worst round trip.
    pub probe_rtt: Duration,
    /// How long a suspect member has to refute before it is down.
    pub suspect_to_down: Duration,
    /// How often each member passes news to a few others, besides probes.
    pub gossip_interval: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            probe_period: Duration::from_millis(500),
            probe_rtt: Duration::from_millis(200),
            suspect_to_down: Duration::from_millis(2000),
            gossip_interval: Duration::from_millis(100),
        }
    }
}

/// Why a timing is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("gossip timing: {0}")]
pub struct TimingError(&'static str);

/// Largest foca packet: with the envelope it stays under a 1500-byte MTU.
const MAX_PACKET: usize = 1400 - crate::envelope::OVERHEAD;

impl Timing {
    pub fn check(&self) -> Result<(), TimingError> {
        if self.probe_rtt.is_zero() || self.gossip_interval.is_zero() {
            return Err(TimingError("every interval must be positive"));
        }
        // The indirect probes need the rest of the period to come back.
        if self.probe_period < 2 * self.probe_rtt {
            return Err(TimingError("probe_period must be at least twice probe_rtt"));
        }
        if self.suspect_to_down < self.probe_period {
            return Err(TimingError("suspect_to_down must be at least probe_period"));
        }
        Ok(())
    }

    /// foca's config for a cluster of about `members` nodes: news is
    /// repeated more often in a larger cluster (log10, as memberlist does),
    /// so that it still reaches everyone.
    pub fn foca_config(&self, members: usize) -> foca::Config {
        let mut config = foca::Config::simple();
        config.probe_period = self.probe_period;
        config.probe_rtt = self.probe_rtt;
        // A probe fails only if the direct one and every indirect one do.
        // With 5% loss, 5 indirect probes instead of foca's 3 made refuted
        // suspicions (each costing the suspect a rename, see BENCHMARKS.md)
        // 40 times rarer in simulation, at no cost without loss.
        config.num_indirect_probes = NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN);
        config.suspect_to_down_after = self.suspect_to_down;
        config.max_transmissions = transmissions(members);
        config.max_packet_size = NonZeroUsize::new(MAX_PACKET).unwrap_or(NonZeroUsize::MIN);
        // A member declared down is told so and rejoins under a renewed
        // identity; members meet again after a partition heals.
        config.notify_down_members = true;
        config.periodic_announce = Some(PeriodicParams {
            frequency: Duration::from_secs(30),
            num_members: NonZeroUsize::MIN,
        });
        config.periodic_announce_to_down_members = Some(PeriodicParams {
            frequency: Duration::from_secs(10),
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        config.periodic_gossip = Some(PeriodicParams {
            frequency: self.gossip_interval,
            num_members: NonZeroUsize::new(3).unwrap_or(NonZeroUsize::MIN),
        });
        config
    }
}

/// How many times each update is piggybacked: 4 × log10(members + 1), at
/// least 6.
fn transmissions(members: usize) -> NonZeroU8 {
    let count = (4.0 * ((members + 1) as f64).log10())
        .ceil()
        .clamp(6.0, 255.0);
    NonZeroU8::new(count as u8).unwrap_or(NonZeroU8::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_fit_the_mtu() {
        Timing::default().check().unwrap();
        let config = Timing::default().foca_config(5);
        assert!(config.max_packet_size.get() + crate::envelope::OVERHEAD <= 1400);
        assert!(config.probe_rtt < config.probe_period);
        assert_eq!(config.num_indirect_probes.get(), 5);
    }

    #[test]
    fn larger_clusters_repeat_news_more() {
        assert_eq!(transmissions(1).get(), 6);
        assert_eq!(transmissions(100).get(), 9);
        assert_eq!(transmissions(1000).get(), 13);
    }

    #[test]
    fn inconsistent_timings_are_refused() {
        let short_period = Timing {
            probe_period: Duration::from_millis(300),
            ..Timing::default()
        };
        assert!(short_period.check().is_err());
        let hasty = Timing {
            suspect_to_down: Duration::from_millis(100),
            ..Timing::default()
        };
        assert!(hasty.check().is_err());
    }
}
