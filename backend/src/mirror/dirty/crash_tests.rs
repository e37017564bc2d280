//! Crash consistency of [`DirtyMapFile`], in the manner of redb's
//! `tests/crash_consistency.rs`: random sequences of operations run on a
//! disk twin that separates live from durable bytes; at every point a
//! crash may strike, the map is reopened from what survives and checked
//! against a model of what was acknowledged.
//!
//! The properties:
//! - a reopened map never has an unreadable header;
//! - every region a completed `mark_durable` covered, or a `mark` followed
//!   by a successful flush, not cleared since, is dirty;
//! - no region is dirty that was never marked (clean is not invented);
//! - the generation is at least the last one acknowledged, at most the
//!   last one attempted.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use super::sim_disk::{Faults, SimDisk, SimStorage};
use super::{DirtyGeometry, DirtyMapFile};
use crate::xorshift::XorShift;

const R: u64 = 64 * 1024;

#[derive(Debug, Clone)]
enum Step {
    Mark {
        offset: u64,
        len: u64,
    },
    /// A mark in memory only, made durable by the next flush.
    MarkLazily {
        offset: u64,
        len: u64,
    },
    Clear {
        region: u64,
    },
    Flush,
    Bump,
}

#[derive(Debug)]
struct Script {
    geometry: DirtyGeometry,
    steps: Vec<Step>,
}

impl Script {
    fn random(seed: u64) -> Result<Script, Box<dyn std::error::Error>> {
        let mut rng = XorShift::new(seed);
        // Up to a few bitmap bytes, often with a partial last region.
        let regions = 1 + rng.below(40);
        let device_size = regions * R - if rng.one_in(2) { rng.below(R) } else { 0 };
        let geometry = DirtyGeometry::new(device_size, R)?;
        let steps = (0..rng.below(30) + 1)
            .map(|_| match rng.below(10) {
                0..=4 => {
                    let offset = rng.below(device_size);
                    let len = match rng.below(4) {
                        0 => 0,
                        1 => rng.below(3 * R),
                        _ => rng.below(8192) + 1,
                    }
                    .min(device_size - offset);
                    match rng.one_in(2) {
                        true => Step::Mark { offset, len },
                        false => Step::MarkLazily { offset, len },
                    }
                }
                5..=7 => Step::Clear {
                    region: rng.below(geometry.region_count()),
                },
                8 => Step::Flush,
                _ => Step::Bump,
            })
            .collect();
        Ok(Script { geometry, steps })
    }
}

/// What the caller of the map was told.
#[derive(Debug, Default)]
struct Model {
    /// Marked by a `mark_durable` that succeeded, not cleared since.
    required: BTreeSet<u64>,
    /// Marked in memory, durable once a flush succeeds.
    unflushed: BTreeSet<u64>,
    /// Ever passed to `mark_durable` or `mark`, whatever it returned.
    ever: BTreeSet<u64>,
    acked_generation: u64,
    attempted_generation: u64,
}

impl Model {
    fn step(&mut self, map: &mut DirtyMapFile<SimStorage>, step: &Step) {
        let geometry = map.geometry();
        match *step {
            Step::Mark { offset, len } => {
                let regions = geometry.regions_of(offset, len);
                self.ever.extend(regions.clone());
                if map.mark_durable(offset, len).is_ok() {
                    self.required.extend(regions);
                    self.flushed();
                }
            }
            Step::MarkLazily { offset, len } => {
                let regions = geometry.regions_of(offset, len);
                self.ever.extend(regions.clone());
                if map.mark(offset, len).is_ok() {
                    self.unflushed.extend(regions);
                }
            }
            Step::Clear { region } => {
                map.clear(region);
                self.required.remove(&region);
                self.unflushed.remove(&region);
            }
            Step::Flush => {
                // A failed flush leaves clears perhaps undone: allowed.
                if map.flush().is_ok() {
                    self.flushed();
                }
            }
            Step::Bump => {
                self.attempted_generation = self.attempted_generation.max(map.generation() + 1);
                if let Ok(generation) = map.bump_generation() {
                    self.acked_generation = generation;
                }
            }
        }
    }

    /// A flush succeeded: every mark made in memory before it is durable.
    fn flushed(&mut self) {
        let unflushed = std::mem::take(&mut self.unflushed);
        self.required.extend(unflushed);
    }

    fn check(
        &self,
        disk: &Rc<RefCell<SimDisk>>,
        geometry: DirtyGeometry,
        crash_seed: u64,
        context: &str,
    ) {
        let survivor = disk.borrow().crash(crash_seed);
        let map = match DirtyMapFile::open_on(SimStorage(survivor), geometry) {
            Ok(map) => map,
            Err(e) => panic!("{context}: reopening after a crash failed: {e}"),
        };
        let dirty: BTreeSet<u64> = map.regions().iter().collect();
        let lost: Vec<_> = self.required.difference(&dirty).collect();
        assert!(
            lost.is_empty(),
            "{context}: acknowledged regions {lost:?} are clean"
        );
        let invented: Vec<_> = dirty.difference(&self.ever).collect();
        assert!(
            invented.is_empty(),
            "{context}: regions {invented:?} were never marked"
        );
        assert_eq!(map.regions().count(), dirty.len() as u64, "{context}");
        let generation = map.generation();
        assert!(
            (self.acked_generation..=self.attempted_generation).contains(&generation),
            "{context}: generation {generation}, acknowledged {}, attempted {}",
            self.acked_generation,
            self.attempted_generation,
        );
    }
}

/// Creates the map, then runs the script under `faults`; `after_step` sees
/// the model and disk after each step. Returns the storage operations the
/// script issued.
fn run(
    script: &Script,
    seed: u64,
    faults: Faults,
    mut after_step: impl FnMut(&Model, &Rc<RefCell<SimDisk>>, usize),
) -> Result<u32, Box<dyn std::error::Error>> {
    let disk = SimDisk::new(seed);
    let mut map = DirtyMapFile::create_on(SimStorage(disk.clone()), script.geometry)?;
    let (writes, syncs) = {
        let mut d = disk.borrow_mut();
        d.faults = faults;
        (d.writes, d.syncs)
    };
    let mut model = Model::default();
    for (i, step) in script.steps.iter().enumerate() {
        model.step(&mut map, step);
        after_step(&model, &disk, i);
    }
    let d = disk.borrow();
    Ok(d.writes - writes + d.syncs - syncs)
}

#[test]
fn a_crash_at_any_storage_operation_keeps_every_acknowledged_mark(
) -> Result<(), Box<dyn std::error::Error>> {
    for seed in 1..=200 {
        let script = Script::random(seed)?;
        let ops = run(&script, seed, Faults::None, |_, _, _| {})?;
        // The process dies before operation `halt`; whatever was unsynced
        // then is kept or lost sector by sector.
        for halt in 0..=ops {
            run(&script, seed, Faults::HaltAfter(halt), |model, disk, i| {
                let context = format!("seed {seed}, halt at {halt}, step {i}: {script:?}");
                let crash_seed = seed << 32 | u64::from(halt) << 8 | i as u64;
                model.check(disk, script.geometry, crash_seed, &context);
            })?;
        }
    }
    Ok(())
}

#[test]
fn failing_writes_and_syncs_never_lose_an_acknowledged_mark(
) -> Result<(), Box<dyn std::error::Error>> {
    for seed in 1..=300 {
        let script = Script::random(seed)?;
        // A crash after every step, on a copy so that the run goes on.
        run(&script, seed, Faults::OneIn(4), |model, disk, i| {
            let context = format!("seed {seed}, crash after step {i}: {script:?}");
            for crash in 0..4 {
                model.check(
                    disk,
                    script.geometry,
                    seed << 16 | (i as u64) << 4 | crash,
                    &context,
                );
            }
        })?;
    }
    Ok(())
}
