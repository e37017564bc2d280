use std::collections::BTreeMap;
use std::hash::Hash;
use std::time::Instant;

use super::{Action, RouteConfig, Router};

/// A vdisk's [`Router`] behind a gate, for reconfiguration (seed 003: the
/// mapping of a vdisk to its tails changes under a new epoch). While the
/// gate is closed no request goes out: new ones, and any that would be
/// sent again, are held until the gate opens, while the attempts already
/// out run to their end. The owner closes it to drain the vdisk before a
/// new mapping takes effect; a tail closes it by refusing a request as of
/// a stale epoch, since every path will refuse it until the new mapping is
/// known. Pure state, like the router: fed events with the time, it
/// returns the actions to carry out.
pub struct Gate<P> {
    config: RouteConfig,
    router: Router<P>,
    /// The epoch the vdisk's requests are sent under.
    epoch: u64,
    /// The highest epoch a tail reported, or `epoch` if higher.
    learned: u64,
    /// Closed by the owner until it resumes.
    suspended: bool,
    /// Closed by a tail's report of a newer epoch, until the owner resumes.
    stale: bool,
    /// Requests taken out of the router, by id (their submission order),
    /// with when each was held.
    held: BTreeMap<u64, Instant>,
}

impl<P: Copy + Eq + Hash> Gate<P> {
    /// An open gate sending under `epoch` on `paths`, in preference order.
    pub fn new(paths: Vec<P>, epoch: u64, config: RouteConfig) -> Self {
        Gate {
            config,
            router: Router::new(paths, config),
            epoch,
            learned: epoch,
            suspended: false,
            stale: false,
            held: BTreeMap::new(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The highest epoch known: a tail's report or the current mapping's.
    /// Higher than [`Gate::epoch`] once a tail reported a newer one.
    pub fn learned(&self) -> u64 {
        self.learned
    }

    pub fn is_open(&self) -> bool {
        !self.suspended && !self.stale
    }

    /// No attempt is out on a path: every request sent has completed,
    /// failed or been taken back. Held requests do not count.
    pub fn is_drained(&self) -> bool {
        self.router.in_flight() == 0
    }

    /// Requests held at the gate.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A new request: routed if the gate is open, else held.
    pub fn submit(&mut self, id: u64, now: Instant) -> Vec<Action<P>> {
        if self.is_open() {
            self.router.submit(id, now)
        } else {
            self.held.insert(id, now);
            Vec::new()
        }
    }

    /// See [`Router::succeeded`].
    pub fn succeeded(&mut self, id: u64, path: P) -> Vec<Action<P>> {
        self.router.succeeded(id, path)
    }

    /// See [`Router::refused_for_good`].
    pub fn refused_for_good(&mut self, id: u64, path: P) -> bool {
        self.router.refused_for_good(id, path)
    }

    /// See [`Router::failed`]; with the gate closed, the request is held
    /// rather than sent again.
    pub fn failed(&mut self, id: u64, path: P, now: Instant) -> Vec<Action<P>> {
        let actions = self.router.failed(id, path, now);
        self.settle(actions, now)
    }

    /// `path` refused request `id` as of an epoch older than the tail's
    /// `current`. If `current` is newer than the vdisk's epoch, the mapping
    /// has moved on: the request is held (every path of this mapping would
    /// refuse it likewise) and so is everything else until the owner
    /// resumes with the new mapping. Otherwise the tail is behind or
    /// confused, and it is an ordinary refusal.
    pub fn stale_epoch(&mut self, id: u64, path: P, current: u64, now: Instant) -> Vec<Action<P>> {
        if current <= self.epoch {
            return self.failed(id, path, now);
        }
        self.learned = self.learned.max(current);
        self.stale = true;
        // A late reply from a path the request has left changes nothing for
        // the request; the epoch it reports still counts.
        if self.router.path_of(id) == Some(path) {
            self.router.withdraw(id);
            self.held.entry(id).or_insert(now);
        }
        self.settle(Vec::new(), now)
    }

    /// See [`Router::path_down`]; with the gate closed, the requests that
    /// were on `path` are held.
    pub fn path_down(&mut self, path: P, now: Instant) -> Vec<Action<P>> {
        let actions = self.router.path_down(path, now);
        self.settle(actions, now)
    }

    /// See [`Router::path_up`].
    pub fn path_up(&mut self, path: P, now: Instant) -> Vec<Action<P>> {
        let actions = self.router.path_up(path, now);
        self.settle(actions, now)
    }

    /// See [`Router::tick`]. Besides, a request held for `io_timeout` fails:
    /// a vdisk that never learns its new mapping sees errors after a delay,
    /// not a hang.
    pub fn tick(&mut self, now: Instant) -> Vec<Action<P>> {
        let actions = self.router.tick(now);
        let mut actions = self.settle(actions, now);
        let timeout = self.config.io_timeout;
        let expired: Vec<u64> = self
            .held
            .iter()
            .filter(|(_, &since)| now.duration_since(since) >= timeout)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            self.held.remove(&id);
            actions.push(Action::Fail { id });
        }
        actions
    }

    /// When `tick` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let held = self
            .held
            .values()
            .min()
            .map(|&since| since + self.config.io_timeout);
        match (self.router.next_deadline(), held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Closes the gate until [`Gate::resume`]: requests waiting for a path
    /// are held at once, new ones and any to be sent again from now on.
    /// Suspending a suspended gate changes nothing.
    pub fn suspend(&mut self, now: Instant) {
        self.suspended = true;
        self.settle(Vec::new(), now);
    }

    /// Opens the gate and sends the held requests, in submission order. With
    /// a `mapping`, the vdisk sends under its epoch on its paths from now
    /// on; requests still out on the old paths are sent again on the new
    /// ones, and late replies from the old paths are ignored.
    pub fn resume(&mut self, mapping: Option<(u64, Vec<P>)>, now: Instant) -> Vec<Action<P>> {
        self.suspended = false;
        self.stale = false;
        if let Some((epoch, paths)) = mapping {
            self.epoch = epoch;
            self.learned = self.learned.max(epoch);
            let mut old = std::mem::replace(&mut self.router, Router::new(paths, self.config));
            for id in old.withdraw_all() {
                self.held.entry(id).or_insert(now);
            }
        }
        let released = std::mem::take(&mut self.held);
        released
            .into_keys()
            .flat_map(|id| self.router.submit(id, now))
            .collect()
    }

    /// With the gate closed, takes back what the router would send (or has
    /// left waiting for a path) and holds it; with it open, changes nothing.
    fn settle(&mut self, actions: Vec<Action<P>>, now: Instant) -> Vec<Action<P>> {
        if self.is_open() {
            return actions;
        }
        let mut kept = Vec::new();
        for action in actions {
            match action {
                Action::Send { id, .. } => {
                    self.router.withdraw(id);
                    self.held.entry(id).or_insert(now);
                }
                other => kept.push(other),
            }
        }
        for id in self.router.withdraw_unsent() {
            self.held.entry(id).or_insert(now);
        }
        kept
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Path {
        Old,
        OldAlternate,
        New,
    }
    use Path::*;

    const MS: Duration = Duration::from_millis(1);

    fn gate() -> (Gate<Path>, Instant) {
        let config = RouteConfig {
            request_timeout: 1000 * MS,
            io_timeout: 10_000 * MS,
            retry_interval: 100 * MS,
        };
        (
            Gate::new(vec![Old, OldAlternate], 1, config),
            Instant::now(),
        )
    }

    fn send(id: u64, path: Path) -> Action<Path> {
        Action::Send { id, path }
    }

    #[test]
    fn an_open_gate_routes_like_the_router() {
        let (mut g, t) = gate();
        assert_eq!(g.submit(1, t), [send(1, Old)]);
        assert_eq!(g.failed(1, Old, t), [send(1, OldAlternate)]);
        assert_eq!(g.succeeded(1, OldAlternate), [Action::Complete { id: 1 }]);
        assert!(g.is_drained());
    }

    #[test]
    fn a_suspended_gate_holds_new_requests_and_drains_those_in_flight() {
        let (mut g, t) = gate();
        g.submit(1, t);
        g.suspend(t);
        g.suspend(t);
        assert_eq!(g.submit(2, t), []);
        assert!(!g.is_drained());
        assert_eq!(g.succeeded(1, Old), [Action::Complete { id: 1 }]);
        assert!(g.is_drained());
        assert_eq!(g.held(), 1);
        assert_eq!(g.resume(None, t + MS), [send(2, Old)]);
        assert!(g.is_open());
    }

    #[test]
    fn a_request_that_fails_while_suspended_is_held_not_resent() {
        let (mut g, t) = gate();
        g.submit(1, t);
        g.path_down(OldAlternate, t);
        g.suspend(t);
        assert_eq!(g.failed(1, Old, t), []);
        assert!(g.is_drained());
        g.submit(2, t);
        assert_eq!(g.tick(t + 2000 * MS), []);
        assert_eq!(g.resume(None, t + 2000 * MS), [send(1, Old), send(2, Old)]);
    }

    #[test]
    fn requests_waiting_for_a_path_are_held_at_once_when_suspended() {
        let (mut g, t) = gate();
        g.path_down(Old, t);
        g.path_down(OldAlternate, t);
        assert_eq!(g.submit(1, t), []);
        assert!(!g.is_drained());
        g.suspend(t);
        assert!(g.is_drained());
        assert_eq!(g.held(), 1);
    }

    #[test]
    fn resuming_with_a_new_mapping_sends_everything_on_the_new_paths() {
        let (mut g, t) = gate();
        g.submit(1, t);
        g.suspend(t);
        g.submit(2, t);
        // Not drained: the request still out is sent again on the new path.
        let actions = g.resume(Some((2, vec![New])), t);
        assert_eq!(actions, [send(1, New), send(2, New)]);
        assert_eq!(g.epoch(), 2);
        assert_eq!(g.succeeded(1, Old), [], "a late reply from the old path");
        assert_eq!(g.succeeded(1, New), [Action::Complete { id: 1 }]);
        assert_eq!(g.submit(3, t), [send(3, New)]);
    }

    #[test]
    fn a_newer_epoch_from_a_tail_parks_the_request_and_holds_the_rest() {
        let (mut g, t) = gate();
        g.submit(1, t);
        g.submit(2, t);
        assert_eq!(g.stale_epoch(1, Old, 2, t), []);
        assert_eq!(g.learned(), 2);
        assert!(!g.is_open());
        assert_eq!(g.submit(3, t), []);
        // Another refusal on the same mapping is held, not tried elsewhere.
        assert_eq!(g.stale_epoch(2, Old, 3, t), []);
        assert_eq!(g.learned(), 3);
        assert!(g.is_drained());
        assert_eq!(
            g.resume(Some((3, vec![New])), t),
            [send(1, New), send(2, New), send(3, New)]
        );
        assert!(g.is_open());
    }

    #[test]
    fn a_stale_epoch_report_no_newer_than_ours_is_an_ordinary_refusal() {
        let (mut g, t) = gate();
        g.submit(1, t);
        assert_eq!(g.stale_epoch(1, Old, 1, t), [send(1, OldAlternate)]);
        assert!(g.is_open());
        assert_eq!(g.learned(), 1);
    }

    #[test]
    fn a_late_stale_reply_closes_the_gate_but_leaves_the_request_on_its_path() {
        let (mut g, t) = gate();
        g.submit(1, t);
        g.failed(1, Old, t);
        assert_eq!(g.stale_epoch(1, Old, 2, t), []);
        assert!(!g.is_open());
        assert_eq!(g.succeeded(1, OldAlternate), [Action::Complete { id: 1 }]);
    }

    #[test]
    fn held_requests_fail_after_the_io_timeout() {
        let (mut g, t) = gate();
        g.suspend(t);
        g.submit(1, t);
        g.submit(2, t + 5000 * MS);
        assert_eq!(g.next_deadline(), Some(t + 10_000 * MS));
        assert_eq!(g.tick(t + 9_999 * MS), []);
        assert_eq!(g.tick(t + 10_000 * MS), [Action::Fail { id: 1 }]);
        assert_eq!(g.next_deadline(), Some(t + 15_000 * MS));
        assert_eq!(g.resume(None, t + 11_000 * MS), [send(2, Old)]);
    }

    #[test]
    fn the_learned_epoch_never_goes_back() {
        let (mut g, t) = gate();
        g.submit(1, t);
        g.stale_epoch(1, Old, 5, t);
        g.resume(Some((3, vec![New])), t);
        assert_eq!((g.epoch(), g.learned()), (3, 5));
    }
}
