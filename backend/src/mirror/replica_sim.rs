//! A seeded simulation of the mirrored write path: requests are answered
//! in random order, sides fail and return, dirty marks fail now and then,
//! stale sides are resynced, and (with side B tracked by a store) the
//! store's records of B succeed or fail. Each side's "disk" is the set of writes that
//! physically landed on it (late answers of a lost side included); the
//! checks are against that, not against what the core believes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::replica::{Action, Recorded, Replica, ReplicaConfig, Request, Side, SideState};
use crate::xorshift::XorShift;

/// Writes go to one of this many blocks; the block stands for its range.
const BLOCKS: u64 = 32;

#[derive(Default)]
struct World {
    /// Write ids that landed on each side, by block.
    disks: [BTreeMap<u64, BTreeSet<u64>>; 2],
    /// Blocks durably recorded dirty. Never cleared here: clearing belongs
    /// to the resync, which is not simulated beyond its copy.
    dirty: BTreeSet<u64>,
    /// Block of each write submitted.
    block_of: BTreeMap<u64, u64>,
    /// Reads submitted.
    reads: BTreeSet<u64>,
    /// Acknowledged writes.
    acked: BTreeSet<u64>,
    /// Attempts the core asked for and not yet answered.
    sends: Vec<(u64, Side)>,
    /// Dirty marks asked for and not yet carried out.
    marks: Vec<u64>,
    ended: BTreeSet<u64>,
    completed: u64,
    degraded_writes: u64,
    /// Side B is tracked by the store.
    tracked: bool,
    /// Every acknowledged write must be on side A.
    required: bool,
    /// What the store says of B: it could take over while this is true.
    store_current: bool,
    /// Records of B the shell makes, one after another: stale (true) or
    /// current (false).
    records: VecDeque<bool>,
    stale_records: u64,
}

impl World {
    fn holds(&self, side: Side, write: u64) -> bool {
        self.disks[side.index()]
            .get(&self.block_of[&write])
            .is_some_and(|ids| ids.contains(&write))
    }

    fn apply(&mut self, r: &Replica, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { id, side } => {
                    if self.reads.contains(&id) {
                        // A read: its side must hold every write
                        // acknowledged so far.
                        assert_eq!(r.state(side), SideState::InSync, "read {id} on {side:?}");
                        for &write in &self.acked {
                            assert!(
                                self.holds(side, write),
                                "read {id} sent to {side:?}, which lacks acknowledged write {write}"
                            );
                        }
                    }
                    self.sends.push((id, side));
                }
                Action::MarkDirty { id, .. } => self.marks.push(id),
                Action::RecordStale => self.records.push_back(true),
                Action::Complete { id } | Action::Fail { id } => {
                    assert!(self.ended.insert(id), "request {id} ended twice");
                    if matches!(action, Action::Fail { .. }) {
                        continue;
                    }
                    self.completed += 1;
                    if let Some(&block) = self.block_of.get(&id) {
                        for side in Side::BOTH {
                            assert!(
                                self.holds(side, id) || self.dirty.contains(&block),
                                "write {id} acknowledged, missing on {side:?} and not dirty"
                            );
                        }
                        assert!(
                            !self.required || self.holds(Side::A, id),
                            "write {id} acknowledged without the required side A"
                        );
                        assert!(
                            !(self.tracked && self.store_current && !self.holds(Side::B, id)),
                            "write {id} acknowledged, missing on B, which the store calls current"
                        );
                        if !Side::BOTH.iter().all(|&s| self.holds(s, id)) {
                            self.degraded_writes += 1;
                        }
                        self.acked.insert(id);
                    }
                }
            }
        }
    }

    /// A resync's copy: everything the in-sync `from` holds goes to `to`.
    fn copy(&mut self, from: Side, to: Side) {
        let source = self.disks[from.index()].clone();
        for (block, ids) in source {
            self.disks[to.index()].entry(block).or_default().extend(ids);
        }
    }
}

impl World {
    /// The store carries out the shell's oldest record of B.
    fn record(&mut self, r: &mut Replica, refused: bool) -> Vec<Action> {
        match (self.records.pop_front(), refused) {
            (None, _) => Vec::new(),
            (Some(true), true) => r.stale_record_failed(),
            (Some(true), false) => {
                self.store_current = false;
                self.stale_records += 1;
                r.stale_recorded()
            }
            (Some(false), true) => {
                r.current_record_failed();
                Vec::new()
            }
            (Some(false), false) => {
                // The replica asked only with every acknowledged write on B.
                for &write in &self.acked {
                    assert!(
                        self.holds(Side::B, write),
                        "B recorded current, lacks {write}"
                    );
                }
                self.store_current = true;
                r.current_recorded();
                Vec::new()
            }
        }
    }
}

fn run(seed: u64, steps: u64) -> World {
    let mut rng = XorShift::new(seed);
    let read_from = if rng.one_in(2) { Side::A } else { Side::B };
    let tracked = rng.one_in(2);
    let required = tracked && rng.one_in(2);
    let mut r = Replica::new(ReplicaConfig {
        read_from,
        tracked: tracked.then_some(Side::B),
        required: required.then_some(Side::A),
    });
    let mut w = World {
        tracked,
        required,
        store_current: true,
        ..World::default()
    };
    let side = |rng: &mut XorShift| if rng.one_in(2) { Side::A } else { Side::B };
    for id in 0..steps {
        let actions = match rng.below(100) {
            0..=19 => {
                let request = match rng.below(10) {
                    0..=4 => {
                        let block = rng.below(BLOCKS);
                        w.block_of.insert(id, block);
                        Request::Write {
                            offset: block * 4096,
                            len: 4096,
                        }
                    }
                    5..=8 => {
                        w.reads.insert(id);
                        Request::Read
                    }
                    _ => Request::Flush,
                };
                r.submit(id, request)
            }
            20..=69 if !w.sends.is_empty() => {
                let (req, s) = w
                    .sends
                    .swap_remove(rng.below(w.sends.len() as u64) as usize);
                if rng.one_in(200) {
                    r.failed(req, s)
                } else {
                    // Physically on the side, whatever the core thinks.
                    if let Some(&block) = w.block_of.get(&req) {
                        w.disks[s.index()].entry(block).or_default().insert(req);
                    }
                    r.succeeded(req, s)
                }
            }
            70..=79 if !w.marks.is_empty() => {
                let req = w
                    .marks
                    .swap_remove(rng.below(w.marks.len() as u64) as usize);
                if rng.one_in(30) {
                    r.dirty_mark_failed(req)
                } else {
                    w.dirty.insert(w.block_of[&req]);
                    r.dirty_marked(req)
                }
            }
            80 if rng.one_in(3) => r.side_down(side(&mut rng)),
            81..=85 => {
                r.side_up(side(&mut rng));
                Vec::new()
            }
            86..=91 => {
                let s = side(&mut rng);
                if r.state(s) == SideState::Stale && r.state(s.other()) == SideState::InSync {
                    w.copy(s.other(), s);
                    r.resynced(s);
                }
                if r.record_current() {
                    w.records.push_back(false);
                }
                Vec::new()
            }
            92..=95 => w.record(&mut r, rng.one_in(10)),
            // The shell retries a stale record the store refused.
            96 if r.recorded() == Recorded::Unrecordable && w.records.is_empty() => {
                w.records.push_back(true);
                Vec::new()
            }
            _ => Vec::new(),
        };
        w.apply(&r, actions);
        // With both sides down nothing more can happen in this run.
        if r.states() == [SideState::Down; 2] && r.in_flight() == 0 {
            break;
        }
    }
    // Drain: answer everything, carry out every mark and record.
    while !w.sends.is_empty() || !w.marks.is_empty() || !w.records.is_empty() {
        let actions = if !w.records.is_empty() {
            w.record(&mut r, false)
        } else if let Some((req, s)) = w.sends.pop() {
            if let Some(&block) = w.block_of.get(&req) {
                w.disks[s.index()].entry(block).or_default().insert(req);
            }
            r.succeeded(req, s)
        } else if let Some(req) = w.marks.pop() {
            w.dirty.insert(w.block_of[&req]);
            r.dirty_marked(req)
        } else {
            Vec::new()
        };
        w.apply(&r, actions);
    }
    assert_eq!(r.in_flight(), 0, "seed {seed}: requests left pending");
    w
}

#[test]
fn acknowledged_writes_are_on_both_sides_or_dirty_and_reads_see_them_under_random_failures() {
    let (mut completed, mut degraded, mut stale_records) = (0, 0, 0);
    for seed in 0..200 {
        let w = run(seed, 3_000);
        completed += w.completed;
        degraded += w.degraded_writes;
        stale_records += w.stale_records;
    }
    assert!(stale_records > 100, "{stale_records}");
    // The simulation exercised both paths, not just the happy one.
    assert!(completed > 20_000, "{completed}");
    assert!(degraded > 1_000, "{degraded}");
}
