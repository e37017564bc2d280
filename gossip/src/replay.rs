//! Replay protection for gossip datagrams: a datagram is taken once, and
//! only while its sender's timestamp is near this node's clock. Pure: the
//! agent passes the time, so the tests move it by hand.

use std::collections::BTreeSet;

use crate::envelope::Nonce;

/// How far a datagram's timestamp may be from this node's clock, either
/// way: 30 s.
///
/// Members' clocks are NTP-synced, within milliseconds of each other; the
/// rest of the window absorbs a clock NTP has not yet corrected after a
/// boot and a VM paused for a few seconds. A node whose clock is off by
/// more is deaf to the cluster and is declared down, so the window errs on
/// the wide side: it costs only memory, since every nonce taken is kept
/// until its timestamp leaves the window (about 30 s, at most 60 s), and it
/// does not weaken the protection, since within the window the nonce memory
/// refuses a second copy.
pub const MAX_SKEW_MS: u64 = 30_000;

/// How many nonces the window keeps at most: 65,536, about 3 MiB.
///
/// With the default timing a node receives some 35 datagrams a second
/// (gossip from 3 members every 100 ms, probes), so it remembers about
/// 1,000 nonces at a time; the cap leaves sixty times that, for a shorter
/// gossip interval or a burst. Only authenticated datagrams are
/// remembered: a node without the secret cannot fill it.
pub const NONCE_CAPACITY: usize = 65_536;

/// Why a datagram that authenticated is nevertheless dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    /// `skew_ms` is the receiver's clock minus the sender's timestamp:
    /// positive for a datagram from the past.
    #[error("sent {skew_ms} ms from this node's clock, beyond the ±{MAX_SKEW_MS} ms window: a clock is off, or an old datagram was replayed")]
    Stale { skew_ms: i128 },
    #[error("received already: a replayed or duplicated datagram")]
    Replayed,
    #[error("sent before the oldest datagram this node remembers (its start, or the nonce memory's cap): it may have been received already")]
    Unverifiable,
}

/// The nonces of the datagrams taken whose timestamps are still inside
/// the window.
///
/// Entries are keyed by timestamp first, so the oldest leave first; the
/// timestamp is part of the key because the envelope authenticates it with
/// the nonce, so a copy always carries both unchanged.
///
/// Every datagram it cannot vouch for is refused: one sent before
/// `remembers_from` might have been taken without leaving a trace here.
/// That covers two cases. A window starts empty, so it refuses what was
/// sent before it existed (a datagram captured before a restart cannot be
/// played to the new life). And when the cap is reached the oldest nonce is
/// evicted and `remembers_from` moves past it, rather than refusing every
/// new datagram: refusing would make the node deaf and get it declared
/// down, while eviction only shortens how late a datagram may arrive (to
/// however long the cap lasts at the current rate), and never lets a copy
/// in.
#[derive(Debug)]
pub struct ReplayWindow {
    seen: BTreeSet<(u64, Nonce)>,
    remembers_from: u64,
    capacity: usize,
}

impl ReplayWindow {
    /// An empty window that takes datagrams sent from `now_ms` on.
    pub fn new(now_ms: u64) -> ReplayWindow {
        ReplayWindow::with_capacity(now_ms, NONCE_CAPACITY)
    }

    fn with_capacity(now_ms: u64, capacity: usize) -> ReplayWindow {
        ReplayWindow {
            seen: BTreeSet::new(),
            remembers_from: now_ms,
            capacity,
        }
    }

    /// Takes an authenticated datagram sent at `sent_at_ms` (milliseconds
    /// since the Unix epoch, the sender's clock) under `nonce`, received at
    /// `now_ms` (this node's clock), or says why not. Only a taken
    /// datagram is remembered.
    pub fn admit(&mut self, sent_at_ms: u64, nonce: Nonce, now_ms: u64) -> Result<(), ReplayError> {
        let skew_ms = i128::from(now_ms) - i128::from(sent_at_ms);
        if skew_ms.unsigned_abs() > u128::from(MAX_SKEW_MS) {
            return Err(ReplayError::Stale { skew_ms });
        }
        self.expire(now_ms);
        if sent_at_ms < self.remembers_from {
            return Err(ReplayError::Unverifiable);
        }
        let entry = (sent_at_ms, nonce);
        if !self.seen.insert(entry) {
            return Err(ReplayError::Replayed);
        }
        if self.seen.len() > self.capacity {
            if let Some(oldest) = self.seen.pop_first() {
                self.remembers_from = oldest.0.saturating_add(1);
                if oldest == entry {
                    return Err(ReplayError::Unverifiable);
                }
            }
        }
        Ok(())
    }

    /// Forgets the nonces whose timestamps have left the window: a copy of
    /// one of those is stale now.
    fn expire(&mut self, now_ms: u64) {
        let oldest_fresh = now_ms.saturating_sub(MAX_SKEW_MS);
        while self
            .seen
            .first()
            .is_some_and(|&(sent_at_ms, _)| sent_at_ms < oldest_fresh)
        {
            self.seen.pop_first();
        }
    }

    /// How many nonces the window holds.
    pub fn remembered(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Some time in 2026, in milliseconds since the epoch.
    const START: u64 = 1_780_000_000_000;

    fn nonce(n: u8) -> Nonce {
        [n; 24]
    }

    #[test]
    fn a_datagram_is_taken_once() {
        let mut window = ReplayWindow::new(START);
        assert_eq!(window.admit(START + 5, nonce(1), START + 10), Ok(()));
        assert_eq!(
            window.admit(START + 5, nonce(1), START + 20),
            Err(ReplayError::Replayed)
        );
        // Another nonce at the same time is another datagram.
        assert_eq!(window.admit(START + 5, nonce(2), START + 20), Ok(()));
        assert_eq!(window.remembered(), 2);
    }

    #[test]
    fn timestamps_beyond_the_skew_either_way_are_stale() {
        let now = START + 100_000;
        let mut window = ReplayWindow::new(START);
        let too_old = now - MAX_SKEW_MS - 1;
        assert_eq!(
            window.admit(too_old, nonce(1), now),
            Err(ReplayError::Stale {
                skew_ms: i128::from(MAX_SKEW_MS) + 1
            })
        );
        let too_new = now + MAX_SKEW_MS + 1;
        assert_eq!(
            window.admit(too_new, nonce(2), now),
            Err(ReplayError::Stale {
                skew_ms: -i128::from(MAX_SKEW_MS) - 1
            })
        );
        // The bounds themselves are inside.
        assert_eq!(window.admit(now - MAX_SKEW_MS, nonce(3), now), Ok(()));
        assert_eq!(window.admit(now + MAX_SKEW_MS, nonce(4), now), Ok(()));
        // A refused datagram leaves no trace.
        assert_eq!(window.remembered(), 2);
    }

    #[test]
    fn a_copy_stays_refused_until_it_is_stale() {
        let mut window = ReplayWindow::new(START);
        let sent = START + 1_000;
        window.admit(sent, nonce(1), sent).unwrap();
        for later in [1, 10_000, MAX_SKEW_MS] {
            assert_eq!(
                window.admit(sent, nonce(1), sent + later),
                Err(ReplayError::Replayed),
                "{later} ms later"
            );
        }
        assert!(matches!(
            window.admit(sent, nonce(1), sent + MAX_SKEW_MS + 1),
            Err(ReplayError::Stale { .. })
        ));
    }

    #[test]
    fn nonces_are_forgotten_once_their_timestamps_leave_the_window() {
        let mut window = ReplayWindow::new(START);
        for n in 0..100 {
            window
                .admit(START + u64::from(n), nonce(n), START + u64::from(n))
                .unwrap();
        }
        assert_eq!(window.remembered(), 100);
        // Half of them are now older than the window.
        let now = START + 50 + MAX_SKEW_MS;
        window.admit(now, nonce(200), now).unwrap();
        assert_eq!(window.remembered(), 51);
        // A datagram from the future is kept until it too is old.
        let future = now + MAX_SKEW_MS;
        window.admit(future, nonce(201), now).unwrap();
        let much_later = future + MAX_SKEW_MS;
        window.admit(much_later, nonce(202), much_later).unwrap();
        assert_eq!(window.remembered(), 2);
    }

    #[test]
    fn what_was_sent_before_the_window_started_is_refused() {
        let mut window = ReplayWindow::new(START);
        assert_eq!(
            window.admit(START - 1, nonce(1), START + 1),
            Err(ReplayError::Unverifiable)
        );
        assert_eq!(window.admit(START, nonce(1), START + 1), Ok(()));
    }

    #[test]
    fn at_the_cap_the_oldest_is_evicted_and_nothing_older_gets_in() {
        let mut window = ReplayWindow::with_capacity(START, 3);
        let now = START + 1_000;
        for n in 1..=3 {
            window.admit(START + u64::from(n), nonce(n), now).unwrap();
        }
        // A fourth evicts the oldest (sent at START + 1)...
        window.admit(START + 10, nonce(10), now).unwrap();
        assert_eq!(window.remembered(), 3);
        // ...whose copy is then refused, though its nonce is forgotten,
        assert_eq!(
            window.admit(START + 1, nonce(1), now),
            Err(ReplayError::Unverifiable)
        );
        // and the others are still known.
        assert_eq!(
            window.admit(START + 2, nonce(2), now),
            Err(ReplayError::Replayed)
        );
        // A new datagram that would be the oldest kept is the one evicted.
        assert_eq!(
            window.admit(START + 2, nonce(0), now),
            Err(ReplayError::Unverifiable)
        );
        // Newer ones keep coming in.
        window.admit(START + 20, nonce(20), now).unwrap();
        assert_eq!(window.remembered(), 3);
    }
}
