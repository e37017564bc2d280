use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};

use super::Input;
use crate::route::counters::path_counters;
use crate::route::{Action, Gate, PathsCounters, RouteConfig, VdiskCounters};
use crate::tail::{
    follow_reachability, Completion, Outcome, Reported, Submission, Tail, TailError,
};
use crate::{AlignedBuf, IoError, Lease};

/// A path of one mapping: its index among that mapping's paths. A new
/// mapping is a new generation, so that replies and path states of the
/// old paths are told apart from the new ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct PathKey {
    generation: u64,
    index: usize,
}

pub(super) enum Event {
    /// An attempt of request `id` on path `path` ended.
    Attempt {
        id: u64,
        path: PathKey,
        result: Outcome,
    },
    /// A path became reachable or unreachable.
    PathState { path: PathKey, up: bool },
    /// An attempt of write `id` can no longer land: answered, or lost with
    /// its connection and past the time the peer could still start it.
    Settled { id: u64 },
}

/// The thin shell around a [`Gate`]: feeds it submissions, suspensions,
/// attempt outcomes, path states and time, and carries out what it says.
pub(super) struct RoutingTask {
    vdisk: u64,
    config: RouteConfig,
    /// This node's right to touch its own tails.
    lease: Lease,
    gate: Gate<PathKey>,
    /// The current mapping: its generation, paths and their counters.
    generation: u64,
    paths: Vec<Arc<dyn Tail>>,
    path_counters: PathsCounters,
    /// Dropped when the mapping is replaced: stops following its paths.
    retire: watch::Sender<()>,
    counters: Arc<VdiskCounters>,
    learned: watch::Sender<u64>,
    events: mpsc::UnboundedSender<Event>,
    pending: HashMap<u64, Pending>,
    /// Suspensions waiting for the vdisk to drain.
    drained: Vec<oneshot::Sender<()>>,
}

/// What woke the routing task.
enum Woken {
    Input(Input),
    Event(Event),
    Timer,
}

struct Pending {
    submission: Submission,
    attempts: u32,
    since: Instant,
    /// Attempts of a write that may still land.
    unsettled: u32,
    /// How the request ended, held back while an attempt of it may still
    /// land: once it completes, the application may write the range again,
    /// and an old attempt must not overwrite that. With when it ended.
    ended: Option<(Completion, Instant)>,
}

impl RoutingTask {
    /// The task of vdisk `vdisk`, as [`RoutedVdisk::spawn`](super::RoutedVdisk::spawn)
    /// describes it, and the receiver of its events for [`RoutingTask::run`].
    pub(super) fn new(
        vdisk: u64,
        epoch: u64,
        paths: Vec<Arc<dyn Tail>>,
        config: RouteConfig,
        lease: Lease,
        counters: Arc<VdiskCounters>,
        learned: watch::Sender<u64>,
    ) -> (RoutingTask, mpsc::UnboundedReceiver<Event>) {
        let (events, events_rx) = mpsc::unbounded_channel();
        let (retire, _) = watch::channel(());
        let keys = (0..paths.len())
            .map(|index| PathKey {
                generation: 0,
                index,
            })
            .collect();
        let task = RoutingTask {
            vdisk,
            config,
            lease,
            gate: Gate::new(keys, epoch, config),
            generation: 0,
            paths,
            path_counters: counters.paths(),
            retire,
            counters,
            learned,
            events,
            pending: HashMap::new(),
            drained: Vec::new(),
        };
        (task, events_rx)
    }

    pub(super) async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Input>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        self.follow_path_states();
        let mut next_id = 0u64;
        loop {
            let deadline = [self.gate.next_deadline(), self.next_give_up()]
                .into_iter()
                .flatten()
                .min();
            let timer = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let woken = tokio::select! {
                input = inbox.recv() => match input {
                    Some(input) => Woken::Input(input),
                    None => break,
                },
                Some(event) = events.recv() => Woken::Event(event),
                () = timer => Woken::Timer,
            };
            let now = Instant::now();
            let (actions, mut data) = match woken {
                Woken::Input(Input::Submit(submission)) => {
                    next_id += 1;
                    let request = Pending {
                        submission,
                        attempts: 0,
                        since: now,
                        unsettled: 0,
                        ended: None,
                    };
                    self.pending.insert(next_id, request);
                    (self.gate.submit(next_id, now), None)
                }
                Woken::Input(Input::Suspend(drained)) => {
                    self.gate.suspend(now);
                    self.drained.push(drained);
                    (Vec::new(), None)
                }
                Woken::Input(Input::Resume(mapping)) => (self.resume(mapping, now), None),
                Woken::Event(Event::Settled { id }) => {
                    self.settled(id);
                    (Vec::new(), None)
                }
                // The old mapping's: its requests moved on.
                Woken::Event(Event::Attempt { path, .. } | Event::PathState { path, .. })
                    if path.generation != self.generation =>
                {
                    (Vec::new(), None)
                }
                Woken::Event(Event::Attempt { id, path, result }) => {
                    self.attempt_ended(id, path, result, now)
                }
                Woken::Event(Event::PathState { path, up }) => {
                    let name = self.paths[path.index].name();
                    if up {
                        tracing::info!(vdisk = self.vdisk, path = name, "path usable again");
                        (self.gate.path_up(path, now), None)
                    } else {
                        tracing::warn!(
                            vdisk = self.vdisk,
                            path = name,
                            "path down: its requests move to the next path"
                        );
                        (self.gate.path_down(path, now), None)
                    }
                }
                Woken::Timer => {
                    self.give_up_unsettled(now);
                    (self.gate.tick(now), None)
                }
            };
            for action in actions {
                self.carry_out(action, &mut data);
            }
            let learned = self.gate.learned();
            self.learned.send_if_modified(|known| {
                let raised = learned > *known;
                if raised {
                    tracing::warn!(
                        vdisk = self.vdisk,
                        epoch = self.gate.epoch(),
                        learned,
                        "a tail serves a newer epoch: requests wait for the new mapping"
                    );
                    *known = learned;
                }
                raised
            });
            if self.gate.is_drained() {
                for drained in self.drained.drain(..) {
                    let _ = drained.send(());
                }
            }
        }
    }

    /// Opens the gate, on a new mapping if given, and ends the suspensions.
    fn resume(
        &mut self,
        mapping: Option<(u64, Vec<Arc<dyn Tail>>)>,
        now: Instant,
    ) -> Vec<Action<PathKey>> {
        let mapping = mapping.map(|(epoch, paths)| {
            self.generation += 1;
            let generation = self.generation;
            tracing::info!(
                vdisk = self.vdisk,
                epoch,
                paths = ?paths.iter().map(|p| p.name()).collect::<Vec<_>>(),
                "new mapping"
            );
            self.path_counters = path_counters(&paths);
            self.counters.set_paths(self.path_counters.clone());
            let keys = (0..paths.len())
                .map(|index| PathKey { generation, index })
                .collect();
            self.paths = paths;
            self.retire = watch::channel(()).0;
            self.follow_path_states();
            (epoch, keys)
        });
        let actions = self.gate.resume(mapping, now);
        for drained in self.drained.drain(..) {
            let _ = drained.send(());
        }
        actions
    }

    /// Reports each peer path's reachability as events, until the mapping
    /// is replaced or the task ends.
    fn follow_path_states(&self) {
        for (index, tail) in self.paths.iter().enumerate() {
            let path = PathKey {
                generation: self.generation,
                index,
            };
            let mut retired = self.retire.subscribe();
            let closed = self.events.clone();
            let stop = async move {
                tokio::select! {
                    () = closed.closed() => {}
                    _ = retired.changed() => {}
                }
            };
            let events = self.events.clone();
            follow_reachability(&**tail, Reported::CurrentAndChanges, stop, move |up| {
                events.send(Event::PathState { path, up })
            });
        }
    }

    /// Feeds an attempt's outcome to the gate. Returns its actions and, for
    /// a successful read, the data to complete it with.
    fn attempt_ended(
        &mut self,
        id: u64,
        path: PathKey,
        result: Outcome,
        now: Instant,
    ) -> (Vec<Action<PathKey>>, Option<AlignedBuf>) {
        let name = self.paths[path.index].name();
        let counters = &self.path_counters[path.index].1;
        let error = match result {
            Ok(data) => {
                let actions = self.gate.succeeded(id, path);
                if !actions.is_empty() {
                    counters.completed.fetch_add(1, Ordering::Relaxed);
                }
                return (actions, data);
            }
            Err(TailError::StaleEpoch { current }) if current > self.gate.epoch() => {
                // Not the path's fault: the mapping moved on, and every
                // path of the old one would refuse the request too.
                tracing::debug!(
                    vdisk = self.vdisk,
                    path = name,
                    id,
                    "attempt held: the tail serves epoch {current}"
                );
                return (self.gate.stale_epoch(id, path, current, now), None);
            }
            Err(error @ TailError::Io { errno }) if error.refuses_the_request_itself() => {
                // Not the path's fault: every path would refuse it the same
                // way, now and after any wait.
                counters.failed.fetch_add(1, Ordering::Relaxed);
                if self.gate.refused_for_good(id, path) {
                    tracing::debug!(
                        vdisk = self.vdisk,
                        path = name,
                        id,
                        errno,
                        "request refused by its tail"
                    );
                    let error = std::io::Error::from_raw_os_error(errno as i32);
                    self.end(id, Err(IoError::Os(error)));
                }
                return (Vec::new(), None);
            }
            Err(error) => error,
        };
        tracing::debug!(
            vdisk = self.vdisk,
            path = name,
            id,
            "attempt failed: {error}"
        );
        counters.failed.fetch_add(1, Ordering::Relaxed);
        (self.gate.failed(id, path, now), None)
    }

    fn carry_out(&mut self, action: Action<PathKey>, data: &mut Option<AlignedBuf>) {
        match action {
            Action::Send { id, path } => {
                let Some(request) = self.pending.get_mut(&id) else {
                    return;
                };
                request.attempts += 1;
                if request.attempts > 1 {
                    self.counters.resends.fetch_add(1, Ordering::Relaxed);
                }
                let tail_path = self.paths[path.index].clone();
                let epoch = self.gate.epoch();
                if tail_path.reachability().is_none() && !self.lease.is_held() {
                    // Refused as a peer without a lease would refuse it: the
                    // request moves to another path, or waits for the lease.
                    let _ = self.events.send(Event::Attempt {
                        id,
                        path,
                        result: Err(TailError::NoLease),
                    });
                    return;
                }
                let op = request.submission.op;
                let payload = request.submission.payload.clone();
                let events = self.events.clone();
                let tracked = op.changes_data();
                if tracked {
                    request.unsettled += 1;
                }
                // The attempt runs to completion even if the request moves
                // on: a local attempt owns a buffer the kernel writes into,
                // and a write is not complete while an attempt may land.
                tokio::spawn(async move {
                    let result = tail_path.execute(epoch, op, payload).await;
                    let lost_until = result.as_ref().err().and_then(TailError::settles_at);
                    let _ = events.send(Event::Attempt { id, path, result });
                    if tracked {
                        if let Some(at) = lost_until {
                            tokio::time::sleep_until(at.into()).await;
                        }
                        let _ = events.send(Event::Settled { id });
                    }
                });
            }
            Action::Complete { id } => self.end(id, Ok(data.take())),
            Action::Fail { id } => {
                tracing::error!(
                    vdisk = self.vdisk,
                    "request failed: no path took it for the I/O timeout"
                );
                let seconds = self.config.io_timeout.as_secs();
                self.end(id, Err(IoError::Unreachable { seconds }));
            }
        }
    }

    /// Completes request `id` with `completion` once none of its attempts
    /// may still land.
    fn end(&mut self, id: u64, completion: Completion) {
        let Some(request) = self.pending.get_mut(&id) else {
            return;
        };
        if request.unsettled > 0 {
            request.ended = Some((completion, Instant::now()));
            return;
        }
        if let Some(request) = self.pending.remove(&id) {
            self.complete(request, completion);
        }
    }

    fn complete(&self, request: Pending, completion: Completion) {
        if completion.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        } else if request.attempts > 1 {
            self.counters.failovers.fetch_add(1, Ordering::Relaxed);
            let stall = request.since.elapsed().as_secs_f64();
            self.counters.failover_stall.observe(stall);
        }
        let _ = request.submission.done.send(completion);
    }

    /// An attempt of request `id` can no longer land.
    fn settled(&mut self, id: u64) {
        let Some(request) = self.pending.get_mut(&id) else {
            return;
        };
        request.unsettled = request.unsettled.saturating_sub(1);
        if request.unsettled == 0 && request.ended.is_some() {
            if let Some(mut request) = self.pending.remove(&id) {
                if let Some((completion, _)) = request.ended.take() {
                    self.complete(request, completion);
                }
            }
        }
    }

    /// When a request that ended but waits for its attempts gives up.
    fn next_give_up(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter_map(|r| r.ended.as_ref())
            .map(|(_, at)| *at + self.config.io_timeout)
            .min()
    }

    /// A request that ended long ago and whose attempt still has not
    /// settled (a peer that neither answers nor lets go of the connection)
    /// fails: whether its data landed, or may yet, is unknown.
    fn give_up_unsettled(&mut self, now: Instant) {
        let timeout = self.config.io_timeout;
        let stuck: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, r)| r.ended.as_ref().is_some_and(|(_, at)| now >= *at + timeout))
            .map(|(&id, _)| id)
            .collect();
        for id in stuck {
            if let Some(request) = self.pending.remove(&id) {
                tracing::error!(
                    vdisk = self.vdisk,
                    "request failed: an attempt of it on a silent path may still land"
                );
                let seconds = timeout.as_secs();
                self.complete(request, Err(IoError::Unreachable { seconds }));
            }
        }
    }
}
