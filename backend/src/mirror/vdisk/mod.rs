use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};

use super::dirty::async_map::{AsyncDirtyMap, MarksDone};
use super::resync::Background;
use super::setup::{
    CopyRecorder, MirrorConfig, MirrorSetup, MirrorStatus, VerifyError, VerifyReport,
};
use super::sides::{attempt, flush_both, AttemptError, Job, SidePath};
use super::{Action, Recorded, Replica, Request, Side, SideState};
use crate::tail::{
    follow_reachability, BlockOp, Completion, Reported, Submission, Tail, TailError, TailFuture,
};
use crate::{AlignedBuf, IoError};

mod jobs;
mod records;

/// How soon a record the store refused is tried again.
const RECORD_RETRY: Duration = Duration::from_secs(1);

enum Input {
    Submit(Submission),
    Verify(oneshot::Sender<Result<VerifyReport, VerifyError>>),
    /// Copy the whole device to `side` (a replaced disk).
    FullResync {
        side: Side,
        done: oneshot::Sender<Result<(), String>>,
    },
}

enum Event {
    /// An attempt of request `id` on `side` ended.
    Attempt {
        id: u64,
        side: Side,
        result: Result<Option<AlignedBuf>, AttemptError>,
    },
    /// A peer side's links went down.
    Unreachable { side: Side },
    /// A lost side answered a probe, or did not.
    Probed { side: Side, answered: bool },
    Recorded {
        current: bool,
        result: Result<(), String>,
    },
    /// Both sides were flushed (or not) for a sweep of the `cold` regions.
    Swept { cold: Vec<u64>, flushed: bool },
    /// The dirty map's writer synced marks (or failed to).
    Marked(MarksDone),
    /// A job ended: for a compare, whether the copies are equal; or the
    /// side that failed it.
    JobDone {
        job: Job,
        took: Duration,
        result: Result<bool, (Side, AttemptError)>,
    },
}

/// A vdisk written to two tails at once ([`Replica`] decides, this shell
/// carries out): a write completes once both have it, or, while one side
/// is down, once the survivor has it, its range is durable in the dirty
/// map, and the store has heard that the other side is stale. A side that
/// returns is resynced in the background (dirty regions only) at a rate
/// that yields to foreground requests. Reads go to one in-sync side, the
/// preferred one if it can.
///
/// Dropping it ends its task once the requests in flight are done.
pub struct MirroredVdisk {
    inputs: mpsc::UnboundedSender<Input>,
    status: watch::Receiver<MirrorStatus>,
}

impl MirroredVdisk {
    /// Starts the mirror task on `runtime`.
    pub fn spawn(runtime: &Handle, setup: MirrorSetup) -> MirroredVdisk {
        let MirrorSetup {
            vdisk,
            epoch,
            sides,
            mut dirty,
            states,
            store_current,
            replica,
            config,
            recorder,
            full,
        } = setup;
        let geometry = dirty.geometry();
        if full {
            if let Err(e) = dirty.mark_durable(0, geometry.device_size()) {
                // Marked in memory all the same: this run copies it all;
                // a restart before the map is written starts from what it
                // says, with the side stale in the store.
                tracing::error!(vdisk, error = %e, "cannot mark the whole mirror dirty for a full resync");
            }
        }
        let replica = Replica::with_states(replica, states, store_current);
        let initial = MirrorStatus {
            sides: replica.states(),
            recorded: replica.recorded(),
            region_size: geometry.region_size(),
            dirty_bytes: match replica.states() == [SideState::InSync; 2] {
                true => 0,
                false => dirty.regions().dirty_bytes(),
            },
            resynced_bytes: 0,
            rate: 0,
            full,
        };
        let (publish, status) = watch::channel(initial);
        let (inputs, inbox) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let marked = events.clone();
        let dirty = AsyncDirtyMap::spawn(runtime, vdisk, dirty, move |done| {
            let _ = marked.send(Event::Marked(done));
        });
        let now = Instant::now();
        let task = MirrorTask {
            vdisk,
            epoch,
            sides: sides.map(SidePath::new),
            replica,
            dirty,
            config,
            recorder,
            full,
            publish,
            events,
            pending: HashMap::new(),
            deferred: Vec::new(),
            marking: VecDeque::new(),
            job: None,
            outstanding: [0; 2],
            sweeping: false,
            background: Background::new(geometry, config.pacer, config.activity_sweep, now),
            verify: None,
            records: VecDeque::new(),
            recording: false,
            record_retry_at: None,
            probing: [false; 2],
            next_probe: now,
        };
        runtime.spawn(task.run(inbox, events_rx));
        MirroredVdisk { inputs, status }
    }

    /// The mirror's state, updated as it changes.
    pub fn status(&self) -> watch::Receiver<MirrorStatus> {
        self.status.clone()
    }

    async fn submit(&self, op: BlockOp, payload: Option<Arc<AlignedBuf>>) -> Completion {
        let (done, completion) = oneshot::channel();
        self.inputs
            .send(Input::Submit(Submission { op, payload, done }))
            .map_err(|_| IoError::ShuttingDown)?;
        completion.await.map_err(|_| IoError::ShuttingDown)?
    }

    /// Compares both copies region by region, online: writes to the region
    /// being compared wait for it. Regions recorded dirty are skipped.
    pub async fn verify(&self) -> Result<VerifyReport, VerifyError> {
        let (done, report) = oneshot::channel();
        self.inputs
            .send(Input::Verify(done))
            .map_err(|_| VerifyError::ShuttingDown)?;
        report.await.map_err(|_| VerifyError::ShuttingDown)?
    }

    /// Marks the whole device dirty for `side` and treats it as lost: the
    /// store is told it is stale, and once it answers it is copied whole.
    /// For a disk replaced under a side, which the mirror cannot tell from
    /// the one it knew.
    pub async fn full_resync(&self, side: Side) -> Result<(), String> {
        let (done, outcome) = oneshot::channel();
        self.inputs
            .send(Input::FullResync { side, done })
            .map_err(|_| "vdisk is shutting down".to_owned())?;
        outcome
            .await
            .map_err(|_| "vdisk is shutting down".to_owned())?
    }
}

/// The mirror as a tail of this node: what a peer's request for the
/// vdisk, or this node's own device, runs on.
impl Tail for MirroredVdisk {
    fn execute(
        &self,
        _epoch: u64,
        op: BlockOp,
        payload: Option<Arc<AlignedBuf>>,
    ) -> TailFuture<'_> {
        Box::pin(async move {
            self.submit(op, payload)
                .await
                .map_err(|e| TailError::io(&e))
        })
    }
}

/// The core's view of a block operation: anything that changes data is
/// mirrored as a write of its range.
fn request_of(op: BlockOp) -> Request {
    match op {
        BlockOp::Read { .. } => Request::Read,
        BlockOp::Write { offset, len }
        | BlockOp::Discard { offset, len }
        | BlockOp::WriteZeroes { offset, len } => Request::Write {
            offset,
            len: u64::from(len),
        },
        BlockOp::Flush => Request::Flush,
    }
}

/// The byte range a request changes, if it changes any.
fn written(request: Request) -> Option<Range<u64>> {
    match request {
        Request::Write { offset, len } => Some(offset..offset.saturating_add(len)),
        Request::Read | Request::Flush => None,
    }
}

fn overlaps(a: &Range<u64>, b: &Range<u64>) -> bool {
    a.start < b.end && b.start < a.end
}

struct Pending {
    submission: Submission,
    request: Request,
    submitted: Instant,
    /// A read's data, from the side that answered it.
    data: Option<AlignedBuf>,
}

/// What goes on once a dirty mark is durable.
enum MarkWaiter {
    /// A write's activity-log mark: the write is submitted.
    Write(u64),
    /// A mark the core asked for (a write the lost side misses).
    Degraded(u64),
    /// The whole device for a full resync of `side`.
    FullResync {
        side: Side,
        done: oneshot::Sender<Result<(), String>>,
    },
}

struct RunningJob {
    job: Job,
    range: Range<u64>,
    running: bool,
}

/// The thin shell around a [`Replica`]: feeds it submissions, attempt
/// outcomes, reachability and the store's answers, carries out its
/// actions, and runs the resync and verify jobs beside it.
struct MirrorTask {
    vdisk: u64,
    epoch: u64,
    sides: [Arc<SidePath>; 2],
    replica: Replica,
    dirty: AsyncDirtyMap,
    config: MirrorConfig,
    recorder: Option<Arc<dyn CopyRecorder>>,
    full: bool,
    publish: watch::Sender<MirrorStatus>,
    events: mpsc::UnboundedSender<Event>,
    pending: HashMap<u64, Pending>,
    /// Writes to the region a job holds, submitted once it is done.
    deferred: Vec<(u64, Request)>,
    /// What waits for a dirty mark to be durable, with its ticket.
    marking: VecDeque<(u64, MarkWaiter)>,
    /// The job under way: the byte range it holds (writes to it wait), and
    /// whether it runs yet (it waits for writes in flight to the range).
    job: Option<RunningJob>,
    /// Attempts out on each side. A lost side is not taken back while one
    /// of its old attempts may still land after a copy.
    outstanding: [usize; 2],
    sweeping: bool,
    /// What runs the resync, the verify and the sweep decides.
    background: Background,
    /// Who waits for the verify under way.
    verify: Option<oneshot::Sender<Result<VerifyReport, VerifyError>>>,
    /// Records of the tracked side to make, in order (`true`: current).
    records: VecDeque<bool>,
    recording: bool,
    /// When a refused stale record is tried again.
    record_retry_at: Option<Instant>,
    /// Sides with a probe out.
    probing: [bool; 2],
    next_probe: Instant,
}

impl MirrorTask {
    async fn run(
        mut self,
        mut inbox: mpsc::UnboundedReceiver<Input>,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) {
        self.follow_reachability();
        let mut next_id = 0u64;
        let mut open = true;
        loop {
            let now = Instant::now();
            self.tick(now);
            self.start_job(now);
            self.start_record();
            self.publish_status(now);
            if !open && self.idle() {
                break;
            }
            let wake = self.next_wake();
            let actions = tokio::select! {
                input = inbox.recv(), if open => match input {
                    Some(Input::Submit(submission)) => {
                        next_id += 1;
                        self.submit(next_id, submission)
                    }
                    Some(Input::Verify(done)) => {
                        self.start_verify(done);
                        Vec::new()
                    }
                    Some(Input::FullResync { side, done }) => self.full_resync(side, done),
                    // The vdisk is gone: finish what is in flight, so that
                    // no caller is left without an answer and no attempt
                    // outlives its buffer.
                    None => {
                        open = false;
                        Vec::new()
                    }
                },
                Some(event) = events.recv() => self.event(event),
                () = sleep_until(wake) => Vec::new(),
            };
            self.carry_out(actions);
        }
        self.stop().await;
    }

    /// Nothing left that a caller or a buffer waits for.
    fn idle(&self) -> bool {
        self.replica.in_flight() == 0
            && self.deferred.is_empty()
            && self.marking.is_empty()
            && self.job.is_none()
    }

    /// Stopped cleanly, nothing in flight: in sync, once both sides are
    /// flushed, no region is left for the next start to resync. The map's
    /// writer ends before the task does, so that the map may be opened
    /// again as soon as the task is gone.
    async fn stop(mut self) {
        if self.settled_in_sync() {
            let (epoch, timeout) = (self.epoch, self.config.request_timeout);
            if flush_both(&self.sides, epoch, timeout).await {
                let all = self.dirty.regions().iter().collect();
                self.dirty.clear(all);
            }
        }
        self.dirty.close().await;
    }

    fn submit(&mut self, id: u64, submission: Submission) -> Vec<Action> {
        let request = request_of(submission.op);
        let mut ticket = None;
        if let Request::Write { offset, len } = request {
            // The activity log: a write's regions are durably dirty before
            // either side has it, so that a crash of this node with the
            // write half done leaves them to resync. Hot regions cost
            // nothing; the sweep clears cold ones while in sync.
            match self.dirty.mark(offset, len) {
                Ok(durable_at) => ticket = durable_at,
                Err(e) => {
                    tracing::error!(vdisk = self.vdisk, offset, len, error = %e, "cannot record a region being written: the write fails");
                    let _ = submission.done.send(Err(IoError::NoCurrentCopy));
                    return Vec::new();
                }
            }
            self.background.written(offset, len);
        }
        self.pending.insert(
            id,
            Pending {
                submission,
                request,
                submitted: Instant::now(),
                data: None,
            },
        );
        if let Some(ticket) = ticket {
            self.marking.push_back((ticket, MarkWaiter::Write(id)));
            return Vec::new();
        }
        self.start(id, request)
    }

    /// Hands a request to the core, unless a job holds its range.
    fn start(&mut self, id: u64, request: Request) -> Vec<Action> {
        let held = self
            .job
            .as_ref()
            .zip(written(request))
            .is_some_and(|(job, range)| overlaps(&job.range, &range));
        if held {
            self.deferred.push((id, request));
            return Vec::new();
        }
        self.replica.submit(id, request)
    }

    /// The writer synced the marks up to `done.ticket` (or failed to):
    /// what waited for them goes on, or fails.
    fn marked(&mut self, done: MarksDone) -> Vec<Action> {
        self.dirty.synced(&done);
        let ok = done.result.is_ok();
        let mut actions = Vec::new();
        while let Some((_, waiter)) = self
            .marking
            .pop_front_if(|(ticket, _)| *ticket <= done.ticket)
        {
            match waiter {
                MarkWaiter::Write(id) => {
                    let Some(request) = self.pending.get(&id).map(|p| p.request) else {
                        continue;
                    };
                    if ok {
                        actions.extend(self.start(id, request));
                    } else if let Some(pending) = self.pending.remove(&id) {
                        tracing::error!(
                            vdisk = self.vdisk,
                            "cannot record a region being written: the write fails"
                        );
                        let _ = pending.submission.done.send(Err(IoError::NoCurrentCopy));
                    }
                }
                MarkWaiter::Degraded(id) => actions.extend(match ok {
                    true => self.replica.dirty_marked(id),
                    false => {
                        tracing::error!(
                            vdisk = self.vdisk,
                            "cannot record a dirty region: the write fails"
                        );
                        self.replica.dirty_mark_failed(id)
                    }
                }),
                MarkWaiter::FullResync { side, done: reply } => match &done.result {
                    Ok(()) => actions.extend(self.begin_full_resync(side, reply)),
                    Err(why) => {
                        let _ =
                            reply.send(Err(format!("cannot mark the whole device dirty: {why}")));
                    }
                },
            }
        }
        actions
    }

    fn event(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Attempt { id, side, result } => {
                self.outstanding[side.index()] -= 1;
                self.attempt_ended(id, side, result)
            }
            Event::Unreachable { side } => {
                if self.replica.state(side) != SideState::Down {
                    tracing::warn!(
                        vdisk = self.vdisk,
                        side = self.name(side),
                        "mirror side unreachable: going on degraded"
                    );
                }
                self.replica.side_down(side)
            }
            Event::Probed { side, answered } => {
                self.probing[side.index()] = false;
                // Not while an old write may still land on it: it would
                // undo a resync copy made after it.
                let quiet = self.outstanding[side.index()] == 0
                    && self.sides[side.index()].is_settled()
                    && self.job.is_none();
                if answered && quiet && self.replica.state(side) == SideState::Down {
                    tracing::info!(
                        vdisk = self.vdisk,
                        side = self.name(side),
                        dirty_bytes = self.dirty.regions().dirty_bytes(),
                        "mirror side back: stale until resynced"
                    );
                    self.replica.side_up(side);
                }
                Vec::new()
            }
            Event::Recorded { current, result } => self.recorded(current, result),
            Event::JobDone { job, took, result } => self.job_done(job, took, result),
            Event::Swept { cold, flushed } => {
                self.swept(cold, flushed);
                Vec::new()
            }
            Event::Marked(done) => self.marked(done),
        }
    }

    fn name(&self, side: Side) -> &str {
        self.sides[side.index()].name()
    }

    /// Reports a peer side's links going down as an event: losing a side
    /// at once beats waiting for a request to time out. Its return is
    /// found by probes, which also see its export, not only its links.
    fn follow_reachability(&self) {
        for side in Side::BOTH {
            let closed = self.events.clone();
            let stop = async move { closed.closed().await };
            let events = self.events.clone();
            let tail = &*self.sides[side.index()].path;
            follow_reachability(tail, Reported::Changes, stop, move |up| match up {
                true => Ok(()),
                false => events.send(Event::Unreachable { side }),
            });
        }
    }

    fn attempt_ended(
        &mut self,
        id: u64,
        side: Side,
        result: Result<Option<AlignedBuf>, AttemptError>,
    ) -> Vec<Action> {
        let why = match result {
            Ok(data) => {
                let Some(pending) = self.pending.get_mut(&id) else {
                    return Vec::new();
                };
                if data.is_some() {
                    pending.data = data;
                }
                return self.replica.succeeded(id, side);
            }
            Err(why) => why,
        };
        if self.replica.state(side) != SideState::Down {
            tracing::warn!(
                vdisk = self.vdisk,
                side = self.name(side),
                "mirror side failed a request ({why}): going on degraded"
            );
        }
        self.replica.failed(id, side)
    }

    /// Carries out `actions` and whatever they lead to: a dirty mark is
    /// made here, and its outcome fed back at once.
    fn carry_out(&mut self, actions: Vec<Action>) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            match action {
                Action::Send { id, side } => self.send(id, side),
                Action::MarkDirty { id, offset, len } => match self.dirty.mark(offset, len) {
                    Ok(None) => queue.extend(self.replica.dirty_marked(id)),
                    Ok(Some(ticket)) => self.marking.push_back((ticket, MarkWaiter::Degraded(id))),
                    Err(e) => {
                        tracing::error!(vdisk = self.vdisk, offset, len, error = %e, "cannot record a dirty region: the write fails");
                        queue.extend(self.replica.dirty_mark_failed(id));
                    }
                },
                Action::RecordStale => self.records.push_back(false),
                Action::Complete { id } => {
                    if let Some(pending) = self.pending.remove(&id) {
                        self.background
                            .foreground(pending.submitted.elapsed(), Instant::now());
                        let _ = pending.submission.done.send(Ok(pending.data));
                    }
                }
                Action::Fail { id } => {
                    if let Some(pending) = self.pending.remove(&id) {
                        tracing::error!(
                            vdisk = self.vdisk,
                            recorded = ?self.replica.recorded(),
                            "request failed: no mirror side in sync could take it, or the store could not hear of a lost side"
                        );
                        let _ = pending.submission.done.send(Err(IoError::NoCurrentCopy));
                    }
                }
            }
        }
    }

    fn send(&mut self, id: u64, side: Side) {
        let Some(pending) = self.pending.get(&id) else {
            return;
        };
        self.outstanding[side.index()] += 1;
        let path = self.sides[side.index()].clone();
        let (epoch, timeout) = (self.epoch, self.config.request_timeout);
        let op = pending.submission.op;
        let payload = pending.submission.payload.clone();
        let events = self.events.clone();
        // Runs to completion even if the request moves on: a local attempt
        // owns a buffer the kernel writes into (it has no timeout).
        tokio::spawn(async move {
            let result = attempt(&path, epoch, op, payload, timeout).await;
            let _ = events.send(Event::Attempt { id, side, result });
        });
    }

    /// Timers: the activity sweep, probes of lost sides, a retry of a
    /// refused record, and the record of a side found in sync.
    fn tick(&mut self, now: Instant) {
        if let Some(touched) = self.background.sweep_due(now) {
            self.sweep(touched);
        }
        if now >= self.next_probe {
            self.next_probe = now + self.config.probe_interval;
            for side in Side::BOTH {
                if self.replica.state(side) == SideState::Down && !self.probing[side.index()] {
                    self.probing[side.index()] = true;
                    self.probe(side);
                }
            }
        }
        if self.record_retry_at.is_some_and(|at| now >= at) {
            self.record_retry_at = None;
            if self.replica.recorded() == Recorded::Unrecordable && self.records.is_empty() {
                self.records.push_back(false);
            }
        }
        let idle = !self.recording && self.records.is_empty() && self.record_retry_at.is_none();
        if idle && self.replica.record_current() {
            self.records.push_back(true);
        }
    }

    /// Whether a write to `region` is pending (held, deferred or out).
    fn writing(&self, region: u64) -> bool {
        let range = self.region_range(region);
        self.pending
            .values()
            .filter_map(|p| written(p.request))
            .any(|w| overlaps(&w, &range))
    }

    fn region_range(&self, region: u64) -> Range<u64> {
        let geometry = self.dirty.geometry();
        let start = region * geometry.region_size();
        start..start + geometry.region_len(region)
    }

    fn next_wake(&self) -> Instant {
        let mut wake = self.next_probe.min(self.background.next_sweep());
        if let Some(at) = self.record_retry_at {
            wake = wake.min(at);
        }
        let waiting = self.job.as_ref().is_none_or(|j| !j.running);
        if waiting && self.background.has_work(self.replica.states()) {
            wake = wake.min(self.background.not_before());
        }
        wake
    }

    fn publish_status(&mut self, now: Instant) {
        let states = self.replica.states();
        let now = MirrorStatus {
            sides: states,
            recorded: self.replica.recorded(),
            region_size: self.dirty.geometry().region_size(),
            dirty_bytes: self.background.left_to_copy(states, self.dirty.regions()),
            resynced_bytes: self.background.resynced_bytes(),
            rate: self.background.rate(now, states),
            full: self.full,
        };
        self.publish.send_if_modified(|status| {
            let changed = *status != now;
            *status = now;
            changed
        });
    }
}

async fn sleep_until(at: Instant) {
    tokio::time::sleep_until(at.into()).await
}
