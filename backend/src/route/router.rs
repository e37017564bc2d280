use std::collections::{BTreeMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Timing of the routing decisions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteConfig {
    /// A request unanswered this long on its path is resent on another.
    /// Default 5 s: far above a healthy request's latency, and link
    /// heartbeats declare a dead link much sooner.
    pub request_timeout: Duration,
    /// A request that has found no working path for this long fails with an
    /// I/O error: the only way the application ever sees one. Default 30 s,
    /// the kernel's own default command timeout for a SCSI disk.
    pub io_timeout: Duration,
    /// How soon a request that every path refused is tried again.
    pub retry_interval: Duration,
}

impl Default for RouteConfig {
    fn default() -> Self {
        RouteConfig {
            request_timeout: Duration::from_secs(5),
            io_timeout: Duration::from_secs(30),
            retry_interval: Duration::from_millis(100),
        }
    }
}

/// What the caller must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<P> {
    /// Send (or resend) request `id` on `path`. A resent write carries the
    /// same data to the same offset as before, so whichever attempts land,
    /// in whatever order, the tail ends up with those bytes while the
    /// request is pending. After it completes, the application may write
    /// that range again; an earlier attempt still queued on a silent path
    /// must not land after that, so a path that timed out is to be fenced
    /// (its node's epoch moved on, its links closed) before its requests
    /// count as lost. Refusals and dead connections need no fence.
    Send { id: u64, path: P },
    /// Request `id` succeeded: complete it and forget it.
    Complete { id: u64 },
    /// Request `id` failed on every path for `io_timeout`: complete it with
    /// an I/O error.
    Fail { id: u64 },
}

struct Pending<P> {
    /// The path it was last sent on, `None` while it waits for one.
    path: Option<P>,
    sent_at: Instant,
    /// Paths that failed this request; not tried again until every path has.
    failed: HashSet<P>,
    /// When the request first failed or found no path; `None` while all is
    /// well. If it has not completed `io_timeout` after that, it fails:
    /// refused everywhere, or without a path, for that long.
    trouble_since: Option<Instant>,
    /// Not before this time does the request go round the paths again.
    retry_at: Instant,
}

/// The pending-request table of one vdisk and the health of its paths,
/// tried in preference order (the local tail, the primary, the secondary).
pub struct Router<P> {
    config: RouteConfig,
    paths: Vec<P>,
    down: HashSet<P>,
    pending: BTreeMap<u64, Pending<P>>,
}

impl<P: Copy + Eq + Hash> Router<P> {
    /// `paths` in order of preference, all assumed up.
    pub fn new(paths: Vec<P>, config: RouteConfig) -> Self {
        Router {
            config,
            paths,
            down: HashSet::new(),
            pending: BTreeMap::new(),
        }
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// The path request `id` is out on, if it is pending and sent.
    pub fn path_of(&self, id: u64) -> Option<P> {
        self.pending.get(&id).and_then(|p| p.path)
    }

    /// Forgets request `id` without completing it: its owner holds it back
    /// or takes it elsewhere. A reply to an attempt already out is ignored
    /// from now on. Returns whether it was pending.
    pub fn withdraw(&mut self, id: u64) -> bool {
        self.pending.remove(&id).is_some()
    }

    /// Forgets the requests waiting for a path and returns their ids, in
    /// order; the requests out on a path stay.
    pub fn withdraw_unsent(&mut self) -> Vec<u64> {
        let unsent: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.path.is_none())
            .map(|(&id, _)| id)
            .collect();
        for id in &unsent {
            self.pending.remove(id);
        }
        unsent
    }

    /// Forgets every pending request and returns their ids, in order.
    pub fn withdraw_all(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.pending).into_keys().collect()
    }

    /// A new request to route.
    pub fn submit(&mut self, id: u64, now: Instant) -> Vec<Action<P>> {
        self.pending.insert(
            id,
            Pending {
                path: None,
                sent_at: now,
                failed: HashSet::new(),
                trouble_since: None,
                retry_at: now,
            },
        );
        self.dispatch(id, now).into_iter().collect()
    }

    /// The path answered request `id` successfully. Replies from a path the
    /// request has since left are ignored: the request moved on.
    pub fn succeeded(&mut self, id: u64, path: P) -> Vec<Action<P>> {
        match self.pending.get(&id) {
            Some(p) if p.path == Some(path) => {
                self.pending.remove(&id);
                vec![Action::Complete { id }]
            }
            _ => Vec::new(),
        }
    }

    /// The path refused request `id` (a NACK) or lost it: try another.
    pub fn failed(&mut self, id: u64, path: P, now: Instant) -> Vec<Action<P>> {
        match self.pending.get_mut(&id) {
            Some(p) if p.path == Some(path) => {
                p.failed.insert(path);
                p.path = None;
                p.trouble_since.get_or_insert(now);
                self.dispatch(id, now).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    /// The path refused request `id` for what it asks, as every path would
    /// (its tails are one disk): the request is forgotten, and its owner
    /// ends it with that error. Returns whether it was out on `path`.
    pub fn refused_for_good(&mut self, id: u64, path: P) -> bool {
        match self.pending.get(&id) {
            Some(p) if p.path == Some(path) => self.pending.remove(&id).is_some(),
            _ => false,
        }
    }

    /// The path is gone (every link to that node, or the node): everything
    /// in flight on it is resent elsewhere, and nothing new goes there.
    pub fn path_down(&mut self, path: P, now: Instant) -> Vec<Action<P>> {
        self.down.insert(path);
        let stranded: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.path == Some(path))
            .map(|(&id, _)| id)
            .collect();
        stranded
            .into_iter()
            .filter_map(|id| {
                if let Some(p) = self.pending.get_mut(&id) {
                    p.path = None;
                    p.trouble_since.get_or_insert(now);
                }
                self.dispatch(id, now)
            })
            .collect()
    }

    /// The path works again: new requests may use it, and requests waiting
    /// for a path are sent now.
    pub fn path_up(&mut self, path: P, now: Instant) -> Vec<Action<P>> {
        self.down.remove(&path);
        let waiting: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.path.is_none())
            .map(|(&id, _)| id)
            .collect();
        waiting
            .into_iter()
            .filter_map(|id| {
                if let Some(p) = self.pending.get_mut(&id) {
                    p.failed.remove(&path);
                }
                self.dispatch(id, now)
            })
            .collect()
    }

    /// Time passes: requests unanswered past `request_timeout` move to
    /// another path, waiting requests are retried, and requests in trouble
    /// for `io_timeout` fail.
    pub fn tick(&mut self, now: Instant) -> Vec<Action<P>> {
        let mut actions = Vec::new();
        let ids: Vec<u64> = self.pending.keys().copied().collect();
        for id in ids {
            let Some(p) = self.pending.get_mut(&id) else {
                continue;
            };
            match p.path {
                Some(path) if now.duration_since(p.sent_at) >= self.config.request_timeout => {
                    p.failed.insert(path);
                    p.path = None;
                    p.trouble_since.get_or_insert(now);
                    actions.extend(self.dispatch(id, now));
                }
                Some(_) => {}
                None => actions.extend(self.dispatch(id, now)),
            }
        }
        actions
    }

    /// When `tick` next has something to do, if anything is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .values()
            .map(|p| match p.path {
                Some(_) => p.sent_at + self.config.request_timeout,
                None => {
                    let give_up = p.trouble_since.map(|since| since + self.config.io_timeout);
                    give_up.map_or(p.retry_at, |at| at.min(p.retry_at))
                }
            })
            .min()
    }

    /// Sends a request without a path on the best one it may use: up, and
    /// not failed by it. When every path that is up has failed it, they get
    /// another round, at most one round per `retry_interval`. A request in
    /// trouble for `io_timeout` fails instead.
    fn dispatch(&mut self, id: u64, now: Instant) -> Option<Action<P>> {
        let p = self.pending.get_mut(&id)?;
        if p.trouble_since
            .is_some_and(|since| now.duration_since(since) >= self.config.io_timeout)
        {
            self.pending.remove(&id);
            return Some(Action::Fail { id });
        }
        let down = &self.down;
        let first_usable = |failed: &HashSet<P>| {
            self.paths
                .iter()
                .find(|path| !down.contains(path) && !failed.contains(path))
                .copied()
        };
        let mut choice = first_usable(&p.failed);
        if choice.is_none() && !p.failed.is_empty() && now >= p.retry_at {
            p.failed.clear();
            p.retry_at = now + self.config.retry_interval;
            choice = first_usable(&p.failed);
        }
        match choice {
            Some(path) => {
                p.path = Some(path);
                p.sent_at = now;
                Some(Action::Send { id, path })
            }
            None => {
                p.trouble_since.get_or_insert(now);
                if p.retry_at <= now {
                    p.retry_at = now + self.config.retry_interval;
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    enum Path {
        Primary,
        Secondary,
    }
    use Path::*;

    const MS: Duration = Duration::from_millis(1);

    fn router() -> (Router<Path>, Instant) {
        let config = RouteConfig {
            request_timeout: 1000 * MS,
            io_timeout: 10_000 * MS,
            retry_interval: 100 * MS,
        };
        (
            Router::new(vec![Primary, Secondary], config),
            Instant::now(),
        )
    }

    #[test]
    fn a_refusal_for_good_ends_the_request_only_from_the_path_it_is_on() {
        let (mut r, t0) = router();
        assert_eq!(r.submit(1, t0), vec![send(1, Primary)]);
        assert!(!r.refused_for_good(1, Secondary), "not out there");
        assert!(r.refused_for_good(1, Primary));
        assert_eq!(r.in_flight(), 0);
        assert!(!r.refused_for_good(1, Primary), "ended once");
        assert!(r.tick(t0 + 20_000 * MS).is_empty(), "no late failure");
    }

    fn send(id: u64, path: Path) -> Action<Path> {
        Action::Send { id, path }
    }

    #[test]
    fn requests_take_the_preferred_path_and_complete_on_success() {
        let (mut r, t) = router();
        assert_eq!(r.submit(1, t), [send(1, Primary)]);
        assert_eq!(r.succeeded(1, Primary), [Action::Complete { id: 1 }]);
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn a_refusal_resends_on_the_alternate_and_a_late_reply_from_the_old_path_is_ignored() {
        let (mut r, t) = router();
        r.submit(1, t);
        assert_eq!(r.failed(1, Primary, t + MS), [send(1, Secondary)]);
        assert_eq!(r.succeeded(1, Primary), []);
        assert_eq!(r.succeeded(1, Secondary), [Action::Complete { id: 1 }]);
    }

    #[test]
    fn a_dead_path_sends_everything_in_flight_on_it_to_the_alternate() {
        let (mut r, t) = router();
        r.submit(1, t);
        r.submit(2, t);
        assert_eq!(
            r.path_down(Primary, t + MS),
            [send(1, Secondary), send(2, Secondary)]
        );
        assert_eq!(r.submit(3, t + MS), [send(3, Secondary)]);
    }

    #[test]
    fn a_path_that_comes_back_takes_new_requests_again() {
        let (mut r, t) = router();
        r.path_down(Primary, t);
        assert_eq!(r.submit(1, t), [send(1, Secondary)]);
        assert_eq!(r.path_up(Primary, t + MS), []);
        assert_eq!(r.submit(2, t + MS), [send(2, Primary)]);
        // The request already on the secondary stays there.
        assert_eq!(r.succeeded(1, Secondary), [Action::Complete { id: 1 }]);
    }

    #[test]
    fn with_every_path_down_a_request_waits_and_goes_out_when_one_returns() {
        let (mut r, t) = router();
        r.path_down(Primary, t);
        r.path_down(Secondary, t);
        assert_eq!(r.submit(1, t), []);
        assert_eq!(r.tick(t + 5000 * MS), []);
        assert_eq!(r.path_up(Secondary, t + 6000 * MS), [send(1, Secondary)]);
        assert_eq!(r.succeeded(1, Secondary), [Action::Complete { id: 1 }]);
    }

    #[test]
    fn a_request_fails_only_after_every_path_was_down_for_the_io_timeout() {
        let (mut r, t) = router();
        r.submit(1, t);
        r.path_down(Primary, t + MS);
        assert_eq!(r.path_down(Secondary, t + 2 * MS), []);
        assert_eq!(r.tick(t + 9000 * MS), []);
        assert_eq!(r.next_deadline(), Some(t + 9100 * MS));
        assert_eq!(r.tick(t + 10_001 * MS), [Action::Fail { id: 1 }]);
        assert_eq!(r.in_flight(), 0);
    }

    #[test]
    fn a_silent_path_loses_the_request_after_the_request_timeout() {
        let (mut r, t) = router();
        r.submit(1, t);
        assert_eq!(r.next_deadline(), Some(t + 1000 * MS));
        assert_eq!(r.tick(t + 999 * MS), []);
        assert_eq!(r.tick(t + 1000 * MS), [send(1, Secondary)]);
        assert_eq!(r.succeeded(1, Secondary), [Action::Complete { id: 1 }]);
    }

    #[test]
    fn refusals_on_every_path_are_retried_at_a_measured_pace_then_fail() {
        let (mut r, t) = router();
        r.submit(1, t);
        assert_eq!(r.failed(1, Primary, t), [send(1, Secondary)]);
        // Both refused: one more round at once, then one per retry interval.
        assert_eq!(r.failed(1, Secondary, t), [send(1, Primary)]);
        assert_eq!(r.failed(1, Primary, t), [send(1, Secondary)]);
        assert_eq!(r.failed(1, Secondary, t), []);
        assert_eq!(r.tick(t + 50 * MS), []);
        assert_eq!(r.tick(t + 100 * MS), [send(1, Primary)]);
        let mut now = t + 100 * MS;
        let mut path = Primary;
        let mut sends = 0;
        loop {
            let actions = r.failed(1, path, now);
            let actions = if actions.is_empty() {
                now += 100 * MS;
                r.tick(now)
            } else {
                actions
            };
            match actions.as_slice() {
                [Action::Send { path: next, .. }] => {
                    path = *next;
                    sends += 1;
                }
                [Action::Fail { id: 1 }] => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(now >= t + 10_000 * MS, "failed at {:?}", now - t);
        assert!(sends <= 2 * 100 + 2, "{sends} sends in 10 s");
    }

    #[test]
    fn withdrawn_requests_are_forgotten_and_their_late_replies_ignored() {
        let (mut r, t) = router();
        r.path_down(Secondary, t);
        r.submit(1, t);
        r.submit(2, t);
        assert_eq!(r.path_of(1), Some(Primary));
        // Refused twice by the only path up: it waits for the next round.
        assert_eq!(r.failed(2, Primary, t), [send(2, Primary)]);
        assert_eq!(r.failed(2, Primary, t), []);
        assert_eq!(r.path_of(2), None);
        assert_eq!(r.withdraw_unsent(), [2]);
        assert_eq!(r.in_flight(), 1);
        assert!(r.withdraw(1));
        assert!(!r.withdraw(1));
        assert_eq!(r.succeeded(1, Primary), []);
        r.submit(3, t);
        r.submit(4, t);
        assert_eq!(r.withdraw_all(), [3, 4]);
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn many_requests_under_random_failures_each_end_exactly_once() {
        // A seeded simulation: paths die and return, replies succeed or are
        // refused, time passes; every request must end, exactly once.
        let (mut r, t) = router();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut on_path: BTreeMap<u64, Path> = BTreeMap::new();
        let mut submitted = Vec::new();
        let mut ended: BTreeMap<u64, Action<Path>> = BTreeMap::new();
        let mut now = t;
        let mut apply = |actions: Vec<Action<Path>>, on_path: &mut BTreeMap<u64, Path>| {
            for action in actions {
                match action {
                    Action::Send { id, path } => {
                        on_path.insert(id, path);
                    }
                    Action::Complete { id } | Action::Fail { id } => {
                        on_path.remove(&id);
                        assert!(ended.insert(id, action).is_none(), "{id} ended twice");
                    }
                }
            }
        };
        for step in 0..20_000u64 {
            now += MS * (random(20) as u32);
            let actions = match random(10) {
                0 if step < 15_000 => {
                    submitted.push(step);
                    r.submit(step, now)
                }
                1 => r.path_down(if random(2) == 0 { Primary } else { Secondary }, now),
                2 | 3 => r.path_up(if random(2) == 0 { Primary } else { Secondary }, now),
                4..=7 => match on_path
                    .keys()
                    .nth(random(on_path.len().max(1) as u64) as usize)
                {
                    Some(&id) if random(4) == 0 => r.failed(id, on_path[&id], now),
                    Some(&id) => r.succeeded(id, on_path[&id]),
                    None => Vec::new(),
                },
                _ => r.tick(now),
            };
            apply(actions, &mut on_path);
        }
        // Let everything settle with both paths up.
        now += MS;
        apply(r.path_up(Primary, now), &mut on_path);
        apply(r.path_up(Secondary, now), &mut on_path);
        while let Some((&id, &path)) = on_path.iter().next() {
            apply(r.succeeded(id, path), &mut on_path);
        }
        assert_eq!(r.in_flight(), 0);
        assert!(submitted.len() > 1000);
        assert_eq!(ended.keys().copied().collect::<Vec<_>>(), submitted);
        assert!(ended.values().any(|a| matches!(a, Action::Complete { .. })));
    }
}
