//! The mirror's background work, without I/O: which regions a resync
//! copies next and when (paced against the foreground), how far a verify
//! got and what it found, which regions a sweep may clear, and the copy
//! rate an admin sees. The shell (`vdisk.rs`) feeds it the sides' states,
//! the dirty map, the writes and each job's outcome, and runs the jobs it
//! asks for; one job runs at a time.

use std::collections::{BTreeSet, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

use super::setup::VerifyReport;
use super::sides::Job;
use super::{DirtyGeometry, DirtyRegions, PacerConfig, ResyncPacer, Side, SideState};

/// The most a resync job copies: neighbouring dirty regions smaller than
/// this go together, one round trip and one flush of the target for all,
/// so that small regions resync as fast as large ones.
const COPY_BATCH: u64 = 1 << 20;

/// How soon a job that had to wait (for writes to its regions, or for a
/// write the stale side missed) is tried again.
const JOB_RETRY: Duration = Duration::from_millis(5);

/// The window the resync rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// What the shell should do next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Nothing now: no work, or not before [`Background::not_before`].
    Idle,
    /// Run `job`: take its regions (writes to them wait), then run it once
    /// the writes in flight to them are done.
    Run(Job),
    /// Every region the resync of `target` had to copy is copied: the
    /// shell asks the replica whether the side is in sync now, and calls
    /// [`Background::retry_later`] if not.
    Resynced { target: Side },
    /// The verify compared every region.
    Verified(VerifyReport),
    /// The verify cannot go on: `side` is down.
    VerifyStopped { side: Side },
}

/// A verify under way: its next region and its findings.
struct VerifyProgress {
    next: u64,
    differing: Vec<u64>,
    skipped_dirty: u64,
}

pub(super) struct Background {
    geometry: DirtyGeometry,
    /// The regions the resync of `resync_for` (a stale side) still has to
    /// copy: the map as that side came back. Writes that reach both sides
    /// meanwhile mark the map (a crash would leave them half done) but
    /// are not copied again.
    resync: BTreeSet<u64>,
    resync_for: Option<Side>,
    /// Where the resync looks for the next dirty region.
    cursor: u64,
    /// No job starts before this: the pacer's wait, or a retry.
    not_before: Instant,
    pacer: ResyncPacer,
    /// Recent copies (when, bytes), for the measured rate.
    copies: VecDeque<(Instant, u64)>,
    resynced_bytes: u64,
    verify: Option<VerifyProgress>,
    /// Regions written since the last sweep.
    touched: BTreeSet<u64>,
    sweep_interval: Duration,
    next_sweep: Instant,
}

impl Background {
    pub(super) fn new(
        geometry: DirtyGeometry,
        pacer: PacerConfig,
        sweep_interval: Duration,
        now: Instant,
    ) -> Self {
        Background {
            geometry,
            resync: BTreeSet::new(),
            resync_for: None,
            cursor: 0,
            not_before: now,
            pacer: ResyncPacer::new(pacer),
            copies: VecDeque::new(),
            resynced_bytes: 0,
            verify: None,
            touched: BTreeSet::new(),
            sweep_interval,
            next_sweep: now + sweep_interval,
        }
    }

    /// Whether a job is waiting to run: a resync or a verify.
    pub(super) fn has_work(&self, states: [SideState; 2]) -> bool {
        resync_sides(states).is_some() || self.verify.is_some()
    }

    /// No job starts before this.
    pub(super) fn not_before(&self) -> Instant {
        self.not_before
    }

    /// The next job, if one may start now: the resync's next regions
    /// first, else the verify's next region.
    pub(super) fn next(
        &mut self,
        now: Instant,
        states: [SideState; 2],
        dirty: &DirtyRegions,
    ) -> Next {
        if now < self.not_before {
            return Next::Idle;
        }
        match resync_sides(states) {
            Some((source, target)) => {
                if self.resync_for != Some(target) {
                    self.resync = dirty.iter().collect();
                    self.resync_for = Some(target);
                }
                let next = self
                    .resync
                    .range(self.cursor..)
                    .next()
                    .or_else(|| self.resync.iter().next())
                    .copied();
                let Some(first) = next else {
                    return Next::Resynced { target };
                };
                let batch = (COPY_BATCH / self.geometry.region_size()).max(1);
                let count = (first..first + batch)
                    .take_while(|region| self.resync.contains(region))
                    .count() as u64;
                self.cursor = first;
                return Next::Run(Job::Copy {
                    first,
                    count,
                    source,
                    target,
                });
            }
            None => self.resync_for = None,
        }
        let Some(run) = &mut self.verify else {
            return Next::Idle;
        };
        if let Some(side) = Side::BOTH
            .into_iter()
            .find(|&s| states[s.index()] == SideState::Down)
        {
            self.verify = None;
            return Next::VerifyStopped { side };
        }
        // In sync, a dirty region is one written lately, on both sides:
        // compared like any. Otherwise it is one a side lacks.
        let lacking = states != [SideState::InSync; 2];
        let count = self.geometry.region_count();
        while run.next < count && lacking && dirty.is_dirty(run.next) {
            run.skipped_dirty += 1;
            run.next += 1;
        }
        if run.next < count {
            return Next::Run(Job::Compare { region: run.next });
        }
        let Some(run) = self.verify.take() else {
            return Next::Idle;
        };
        Next::Verified(VerifyReport {
            regions: count,
            region_size: self.geometry.region_size(),
            differing: run.differing,
            skipped_dirty: run.skipped_dirty,
        })
    }

    /// The job could not start, or the resync not end, yet: look again
    /// shortly.
    pub(super) fn retry_later(&mut self, now: Instant) {
        self.not_before = now + JOB_RETRY;
    }

    /// A copy of `regions` (`bytes` in all) ended after `took`. `landed`:
    /// the target is still the stale side being resynced, so the copy
    /// counts; a write it missed meanwhile left it down instead, with the
    /// regions dirty for the next resync.
    pub(super) fn copied(
        &mut self,
        regions: Range<u64>,
        bytes: u64,
        landed: bool,
        took: Duration,
        now: Instant,
    ) {
        if landed {
            for region in regions {
                self.resync.remove(&region);
            }
            self.resynced_bytes += bytes;
            self.copies.push_back((now, bytes));
        }
        self.not_before = now + self.pacer.copied(bytes, took, now);
    }

    /// The compare of `region` (`bytes`) ended after `took`: the copies
    /// are the `same`, or not.
    pub(super) fn compared(
        &mut self,
        region: u64,
        same: bool,
        bytes: u64,
        took: Duration,
        now: Instant,
    ) {
        if let Some(run) = &mut self.verify {
            if !same {
                run.differing.push(region);
            }
            run.next = region + 1;
        }
        self.not_before = now + self.pacer.copied(bytes, took, now);
    }

    /// Starts a verify from the first region; false if one is running.
    pub(super) fn start_verify(&mut self) -> bool {
        if self.verify.is_some() {
            return false;
        }
        self.verify = Some(VerifyProgress {
            next: 0,
            differing: Vec::new(),
            skipped_dirty: 0,
        });
        true
    }

    /// Ends the verify (a side failed it); whether one was running.
    pub(super) fn stop_verify(&mut self) -> bool {
        self.verify.take().is_some()
    }

    /// A foreground request completed after `latency`: the pacer backs off
    /// if that is slow.
    pub(super) fn foreground(&mut self, latency: Duration, now: Instant) {
        self.pacer.foreground(latency, now);
    }

    /// A write to `len` bytes at `offset`: its regions are not cold at the
    /// next sweep.
    pub(super) fn written(&mut self, offset: u64, len: u64) {
        self.touched.extend(self.geometry.regions_of(offset, len));
    }

    /// When the sweep interval is over: the regions written during it (the
    /// others are cold), and the next interval begins.
    pub(super) fn sweep_due(&mut self, now: Instant) -> Option<BTreeSet<u64>> {
        if now < self.next_sweep {
            return None;
        }
        self.next_sweep = now + self.sweep_interval;
        Some(std::mem::take(&mut self.touched))
    }

    /// Whether `region` was written since the current sweep interval began.
    pub(super) fn touched(&self, region: u64) -> bool {
        self.touched.contains(&region)
    }

    pub(super) fn next_sweep(&self) -> Instant {
        self.next_sweep
    }

    /// Bytes the resync still has to copy ([`MirrorStatus::dirty_bytes`](super::MirrorStatus::dirty_bytes)).
    pub(super) fn left_to_copy(&self, states: [SideState; 2], dirty: &DirtyRegions) -> u64 {
        if self.resync_for.is_some() {
            self.resync
                .iter()
                .map(|&r| self.geometry.region_len(r))
                .sum()
        } else if states != [SideState::InSync; 2] {
            dirty.dirty_bytes()
        } else {
            0
        }
    }

    pub(super) fn resynced_bytes(&self) -> u64 {
        self.resynced_bytes
    }

    /// The copy rate over the last [`RATE_WINDOW`], in bytes per second,
    /// while a resync is due; 0 otherwise.
    pub(super) fn rate(&mut self, now: Instant, states: [SideState; 2]) -> u64 {
        while self
            .copies
            .front()
            .is_some_and(|&(at, _)| now.duration_since(at) > RATE_WINDOW)
        {
            self.copies.pop_front();
        }
        if resync_sides(states).is_none() {
            return 0;
        }
        let bytes: u64 = self.copies.iter().map(|&(_, b)| b).sum();
        (bytes as f64 / RATE_WINDOW.as_secs_f64()) as u64
    }
}

/// The stale side a resync would copy to, with its in-sync source.
fn resync_sides(states: [SideState; 2]) -> Option<(Side, Side)> {
    Side::BOTH.into_iter().find_map(|target| {
        let source = target.other();
        (states[target.index()] == SideState::Stale && states[source.index()] == SideState::InSync)
            .then_some((source, target))
    })
}

#[cfg(test)]
mod tests;
