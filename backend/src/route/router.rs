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
mod tests;
