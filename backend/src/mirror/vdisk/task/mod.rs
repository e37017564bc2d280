//! The mirror's task: the shell around its [`Replica`] (this file), its
//! background jobs (`jobs.rs`) and its store records (`records.rs`).

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot, watch};

use super::Input;
use crate::mirror::dirty::async_map::{AsyncDirtyMap, MarksDone};
use crate::mirror::resync::Background;
use crate::mirror::setup::{
    CopyRecorder, MirrorConfig, MirrorSetup, MirrorStatus, VerifyError, VerifyReport,
};
use crate::mirror::sides::{flush_both, AttemptError, Job, SidePath};
use crate::mirror::{Action, Recorded, Replica, Request, Side, SideState};
use crate::tail::{follow_reachability, Reported, Submission};
use crate::AlignedBuf;

mod jobs;
mod records;
mod requests;

/// How soon a record the store refused is tried again.
const RECORD_RETRY: Duration = Duration::from_secs(1);

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

/// Starts the task of the mirror `setup` describes on `runtime`, taking
/// its requests from `inbox`; returns its status.
pub(super) fn start(
    runtime: &Handle,
    setup: MirrorSetup,
    inbox: mpsc::UnboundedReceiver<Input>,
) -> watch::Receiver<MirrorStatus> {
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
    status
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
