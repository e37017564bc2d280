use std::time::{Duration, Instant};

/// Heartbeat timing of a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthConfig {
    /// How often an idle link is probed. Default 80 ms.
    pub interval: Duration,
    /// A link that has heard nothing for this many intervals is down.
    /// Default 3: a cut link is noticed within ~240 ms, so that a request
    /// caught on it stalls less than 300 ms.
    pub allowed_misses: u32,
    /// TLS records a session may carry either way before the link
    /// replaces it with a new one (a new handshake, new keys). Default
    /// 2^21: an eighth of the 2^24 AES-GCM records after which rustls sends
    /// a key update, which a session sealed by the kernel cannot take
    /// ([`identity::SecureStream`]). The link counts an upper bound of the
    /// records, which may undercount only under a backlog of partial
    /// writes; the margin covers that.
    pub records_per_session: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            interval: Duration::from_millis(80),
            allowed_misses: 3,
            records_per_session: 1 << 21,
        }
    }
}

/// A change of a link's state, for the caller to act on and log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Up,
    Down,
}

/// Whether one link is usable, from what was heard on it and when. Pure:
/// the caller reports events with the current time.
#[derive(Debug)]
pub struct Health {
    config: HealthConfig,
    up: bool,
    connected: bool,
    last_heard: Instant,
    last_sent: Instant,
    last_probe: Option<Instant>,
}

impl Health {
    /// A link not yet connected, and so down.
    pub fn new(config: HealthConfig, now: Instant) -> Self {
        Health {
            config,
            up: false,
            connected: false,
            last_heard: now,
            last_sent: now,
            last_probe: None,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn config(&self) -> &HealthConfig {
        &self.config
    }

    /// The connection is established; the link is up once the peer answers.
    pub fn connected(&mut self, now: Instant) {
        self.connected = true;
        self.last_heard = now;
        self.last_sent = now;
        self.last_probe = None;
    }

    /// The connection broke: down at once, no waiting for missed beats.
    pub fn disconnected(&mut self) -> Option<Transition> {
        self.connected = false;
        self.set(false)
    }

    /// Anything arrived from the peer: a reply or a heartbeat answer.
    pub fn heard(&mut self, now: Instant) -> Option<Transition> {
        self.last_heard = now;
        if self.connected {
            self.set(true)
        } else {
            None
        }
    }

    /// Requests went out.
    pub fn sent(&mut self, now: Instant) {
        self.last_sent = now;
    }

    /// Whether a heartbeat is due now: the link has heard nothing, or sent
    /// nothing, for an interval since it last probed. Records the probe.
    /// Sending counts too because the peer closes a connection it has not
    /// heard from for [`crate::wire::SILENCE`], even one busy answering.
    pub fn probe_due(&mut self, now: Instant) -> bool {
        let idle_since = self.last_heard.min(self.last_sent);
        let since = self.last_probe.map_or(idle_since, |p| p.max(idle_since));
        if self.connected && now.duration_since(since) >= self.config.interval {
            self.last_probe = Some(now);
            true
        } else {
            false
        }
    }

    /// Whether the connected peer has been silent too long: the caller
    /// then drops the connection and reports it `disconnected`.
    pub fn is_silent(&self, now: Instant) -> bool {
        let silence = self.config.interval * self.config.allowed_misses;
        self.connected && now.duration_since(self.last_heard) > silence
    }

    fn set(&mut self, up: bool) -> Option<Transition> {
        if self.up == up {
            return None;
        }
        self.up = up;
        Some(if up { Transition::Up } else { Transition::Down })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn link() -> (Health, Instant) {
        let t = Instant::now();
        let config = HealthConfig {
            interval: 100 * MS,
            allowed_misses: 3,
            ..HealthConfig::default()
        };
        (Health::new(config, t), t)
    }

    #[test]
    fn a_link_is_up_only_once_the_connected_peer_answers() {
        let (mut h, t) = link();
        assert!(!h.is_up());
        assert_eq!(h.heard(t), None, "nothing is heard without a connection");
        h.connected(t);
        assert!(!h.is_up());
        assert_eq!(h.heard(t + MS), Some(Transition::Up));
        assert_eq!(h.heard(t + 2 * MS), None);
    }

    #[test]
    fn an_idle_link_is_probed_once_per_interval() {
        let (mut h, t) = link();
        h.connected(t);
        h.heard(t);
        assert!(!h.probe_due(t + 99 * MS));
        assert!(h.probe_due(t + 100 * MS));
        assert!(!h.probe_due(t + 150 * MS));
        assert!(h.probe_due(t + 200 * MS));
        h.heard(t + 210 * MS);
        h.sent(t + 210 * MS);
        assert!(!h.probe_due(t + 300 * MS));
        assert!(h.probe_due(t + 310 * MS));
    }

    #[test]
    fn a_link_that_hears_but_sends_nothing_still_probes_each_interval() {
        let (mut h, t) = link();
        h.connected(t);
        h.heard(t + 90 * MS);
        assert!(
            h.probe_due(t + 100 * MS),
            "the peer has heard nothing since t"
        );
        h.heard(t + 150 * MS);
        h.heard(t + 190 * MS);
        assert!(!h.probe_due(t + 199 * MS));
        assert!(h.probe_due(t + 200 * MS));
    }

    #[test]
    fn a_link_is_silent_after_the_allowed_misses_and_up_again_when_reconnected_and_heard() {
        let (mut h, t) = link();
        h.connected(t);
        h.heard(t);
        assert!(!h.is_silent(t + 300 * MS));
        assert!(h.is_silent(t + 301 * MS));
        assert_eq!(h.disconnected(), Some(Transition::Down));
        h.connected(t + 400 * MS);
        assert!(!h.is_silent(t + 450 * MS));
        assert_eq!(h.heard(t + 450 * MS), Some(Transition::Up));
    }

    #[test]
    fn a_peer_that_never_answers_is_silent_too() {
        let (mut h, t) = link();
        h.connected(t);
        assert!(h.is_silent(t + 301 * MS));
        assert!(!h.is_up());
    }

    #[test]
    fn a_broken_connection_is_down_at_once() {
        let (mut h, t) = link();
        h.connected(t);
        h.heard(t);
        assert_eq!(h.disconnected(), Some(Transition::Down));
        assert_eq!(h.disconnected(), None);
        assert!(
            !h.probe_due(t + 1000 * MS),
            "no probes without a connection"
        );
    }
}
