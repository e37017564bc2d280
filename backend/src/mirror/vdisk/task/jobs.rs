//! The mirror shell's background jobs: starting what `Background` (resync.rs)
//! asks for (a resync's copy, a verify's compare) once the writes to its
//! regions are done, taking its outcome back, the sweep of cold regions,
//! probes of a lost side, and a full resync on request.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::mirror::resync::Next;
use crate::mirror::setup::{VerifyError, VerifyReport};
use crate::mirror::sides::{flush_both, flush_side, run_job, AttemptError, Job};
use crate::mirror::{Action, Recorded, Side, SideState};

use super::{overlaps, written, Event, MarkWaiter, MirrorTask, RunningJob};

impl MirrorTask {
    pub(super) fn probe(&self, side: Side) {
        let path = self.sides[side.index()].clone();
        let (epoch, timeout) = (self.epoch, self.config.request_timeout);
        let events = self.events.clone();
        tokio::spawn(async move {
            let answered = flush_side(&path, epoch, timeout).await.is_ok();
            let _ = events.send(Event::Probed { side, answered });
        });
    }

    /// Clears from the dirty map the regions no write touched since the
    /// last sweep and none is writing now, while both sides are in sync and
    /// the store knows it: what a crash would have left to resync is then
    /// only what was written lately. Both sides are flushed first, so that
    /// a cleared region's writes are durable on both, not in a disk cache.
    pub(super) fn sweep(&mut self, touched: BTreeSet<u64>) {
        if !self.settled_in_sync() || self.sweeping || self.full_mark_pending() {
            return;
        }
        let cold: Vec<u64> = self
            .dirty
            .regions()
            .iter()
            .filter(|region| !touched.contains(region) && !self.writing(*region))
            .collect();
        if cold.is_empty() {
            return;
        }
        self.sweeping = true;
        let sides = self.sides.clone();
        let (epoch, timeout) = (self.epoch, self.config.request_timeout);
        let events = self.events.clone();
        tokio::spawn(async move {
            let flushed = flush_both(&sides, epoch, timeout).await;
            let _ = events.send(Event::Swept { cold, flushed });
        });
    }

    /// Both sides flushed (or not) for a sweep of the `cold` regions.
    pub(super) fn swept(&mut self, cold: Vec<u64>, flushed: bool) {
        self.sweeping = false;
        if !flushed || !self.settled_in_sync() || self.full_mark_pending() {
            return;
        }
        // Written since the sweep began: its write may not be durable.
        let cold = cold
            .into_iter()
            .filter(|&region| !self.background.touched(region) && !self.writing(region))
            .collect();
        self.dirty.clear(cold);
        self.dirty.flush();
    }

    /// A full resync waits for the whole device to be marked: no region
    /// may be cleared meanwhile, or the new disk would never get it.
    pub(super) fn full_mark_pending(&self) -> bool {
        self.marking
            .iter()
            .any(|(_, waiter)| matches!(waiter, MarkWaiter::FullResync { .. }))
    }

    /// Both sides in sync, the store calling it so, and no job under way.
    pub(super) fn settled_in_sync(&self) -> bool {
        self.replica.states() == [SideState::InSync; 2]
            && self.replica.recorded() == Recorded::Current
            && self.job.is_none()
    }

    /// Starts the next job [`Background`] asks for if none is under way.
    /// A job takes its regions at once (new writes to them wait) and runs
    /// once the writes already in flight to them are done.
    pub(super) fn start_job(&mut self, now: Instant) {
        if let Some(job) = &self.job {
            if !job.running {
                self.run_job_if_drained();
            }
            return;
        }
        loop {
            let states = self.replica.states();
            match self.background.next(now, states, self.dirty.regions()) {
                Next::Idle => return,
                Next::Run(job) => return self.take_regions(job),
                Next::Resynced { target } => {
                    if !self.finish_resync(target) {
                        self.background.retry_later(now);
                        return;
                    }
                    // In sync now: a verify may follow at once.
                }
                Next::Verified(report) => {
                    if let Some(done) = self.verify.take() {
                        let _ = done.send(Ok(report));
                    }
                    return;
                }
                Next::VerifyStopped { side } => {
                    if let Some(done) = self.verify.take() {
                        let down = VerifyError::SideDown(self.name(side).into());
                        let _ = done.send(Err(down));
                    }
                    return;
                }
            }
        }
    }

    /// Every dirty region is copied: the stale side is in sync, unless a
    /// write it missed is still in flight (then the next wake tries again).
    pub(super) fn finish_resync(&mut self, target: Side) -> bool {
        if !self.replica.resynced(target) {
            return false;
        }
        self.dirty.flush();
        tracing::info!(
            vdisk = self.vdisk,
            side = self.name(target),
            resynced_bytes = self.background.resynced_bytes(),
            full = self.full,
            "mirror resync done: both copies in sync"
        );
        self.full = false;
        true
    }

    /// Takes the regions of `job`: new writes to them wait from now on.
    pub(super) fn take_regions(&mut self, job: Job) {
        let regions = job.regions();
        let range = self.region_range(regions.start).start..self.region_range(regions.end - 1).end;
        self.job = Some(RunningJob {
            job,
            range,
            running: false,
        });
        self.run_job_if_drained();
    }

    /// Runs the job once no write to its region is in flight (deferred
    /// ones wait for it); else the next wake looks again.
    pub(super) fn run_job_if_drained(&mut self) {
        let Some(job) = &self.job else {
            return;
        };
        let busy = self
            .pending
            .iter()
            .filter(|(id, _)| !self.deferred.iter().any(|(d, _)| d == *id))
            .filter_map(|(_, p)| written(p.request))
            .any(|w| overlaps(&w, &job.range));
        if busy {
            self.background.retry_later(Instant::now());
            return;
        }
        let sides = self.sides.clone();
        let (epoch, timeout) = (self.epoch, self.config.request_timeout);
        let events = self.events.clone();
        let (kind, range) = (job.job, job.range.clone());
        tokio::spawn(async move {
            let began = Instant::now();
            let result = run_job(&sides, kind, range, (epoch, timeout)).await;
            let took = began.elapsed();
            let _ = events.send(Event::JobDone {
                job: kind,
                took,
                result,
            });
        });
        if let Some(job) = &mut self.job {
            job.running = true;
        }
    }

    pub(super) fn job_done(
        &mut self,
        job: Job,
        took: Duration,
        result: Result<bool, (Side, AttemptError)>,
    ) -> Vec<Action> {
        let now = Instant::now();
        let bytes = self
            .job
            .take()
            .map_or(0, |job| job.range.end - job.range.start);
        let mut actions = Vec::new();
        match (job, result) {
            (Job::Copy { target, .. }, Ok(_)) => {
                // A write the target missed meanwhile left it down, and
                // the regions dirty again for the next resync.
                let landed = self.replica.state(target) == SideState::Stale;
                self.background
                    .copied(job.regions(), bytes, landed, took, now);
                if landed {
                    // Writes waiting for the copy keep their regions
                    // marked: they are about to land, half done if this
                    // node dies.
                    let clean = job.regions().filter(|&r| !self.writing(r)).collect();
                    self.dirty.clear(clean);
                }
            }
            (Job::Compare { region }, Ok(same)) => {
                if !same && self.verify.is_some() {
                    tracing::error!(
                        vdisk = self.vdisk,
                        region,
                        "verify: the copies of a region not recorded dirty differ"
                    );
                }
                self.background.compared(region, same, bytes, took, now);
            }
            (job, Err((side, why))) => {
                tracing::warn!(
                    vdisk = self.vdisk,
                    side = self.name(side),
                    ?job,
                    "mirror side failed a background copy or compare ({why}): going on degraded"
                );
                if let Job::Compare { .. } = job {
                    self.background.stop_verify();
                    if let Some(done) = self.verify.take() {
                        let _ = done.send(Err(VerifyError::SideFailed {
                            side: self.name(side).into(),
                            why,
                        }));
                    }
                }
                actions.extend(self.replica.side_down(side));
            }
        }
        for (id, request) in std::mem::take(&mut self.deferred) {
            actions.extend(self.replica.submit(id, request));
        }
        actions
    }

    pub(super) fn full_resync(
        &mut self,
        side: Side,
        done: oneshot::Sender<Result<(), String>>,
    ) -> Vec<Action> {
        let size = self.dirty.geometry().device_size();
        match self.dirty.mark(0, size) {
            Ok(Some(ticket)) => self
                .marking
                .push_back((ticket, MarkWaiter::FullResync { side, done })),
            Ok(None) => return self.begin_full_resync(side, done),
            Err(e) => {
                let _ = done.send(Err(format!("cannot mark the whole device dirty: {e}")));
            }
        }
        Vec::new()
    }

    /// The whole device is durably dirty: `side` is lost, and copied whole
    /// once it answers.
    pub(super) fn begin_full_resync(
        &mut self,
        side: Side,
        done: oneshot::Sender<Result<(), String>>,
    ) -> Vec<Action> {
        tracing::warn!(
            vdisk = self.vdisk,
            side = self.name(side),
            "full resync asked for: the side's disk counts as blank"
        );
        self.full = true;
        let _ = done.send(Ok(()));
        self.replica.side_down(side)
    }

    pub(super) fn start_verify(
        &mut self,
        done: oneshot::Sender<Result<VerifyReport, VerifyError>>,
    ) {
        if !self.background.start_verify() {
            let _ = done.send(Err(VerifyError::AlreadyRunning));
            return;
        }
        self.verify = Some(done);
    }
}
