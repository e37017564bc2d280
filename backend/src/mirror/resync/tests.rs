use super::*;
use crate::xorshift::XorShift;

const REGION: u64 = 64 << 10;
const IN_SYNC: [SideState; 2] = [SideState::InSync; 2];
const B_STALE: [SideState; 2] = [SideState::InSync, SideState::Stale];

fn geometry(regions: u64) -> DirtyGeometry {
    DirtyGeometry::new(regions * REGION, REGION).unwrap()
}

fn background(regions: u64, now: Instant) -> Background {
    let pacer = PacerConfig {
        rate_max: 1 << 40,
        rate_min: 1 << 40,
        latency_target: Duration::from_millis(10),
    };
    Background::new(geometry(regions), pacer, Duration::from_secs(5), now)
}

fn dirty(regions: u64, marked: &[u64]) -> DirtyRegions {
    let mut map = DirtyRegions::new(geometry(regions));
    for &r in marked {
        map.mark(r * REGION, 1).unwrap();
    }
    map
}

#[test]
fn a_resync_copies_neighbouring_dirty_regions_together_then_says_it_is_done() {
    let now = Instant::now();
    let mut b = background(64, now);
    let map = dirty(64, &[3, 4, 5, 9, 40]);
    let mut copied = Vec::new();
    loop {
        // Each copy waits its share of the (large) cap.
        match b.next(b.not_before(), B_STALE, &map) {
            Next::Run(Job::Copy {
                first,
                count,
                source,
                target,
            }) => {
                assert_eq!((source, target), (Side::A, Side::B));
                copied.push(first..first + count);
                b.copied(
                    first..first + count,
                    count * REGION,
                    true,
                    Duration::ZERO,
                    now,
                );
            }
            Next::Resynced { target } => {
                assert_eq!(target, Side::B);
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(copied, [3..6, 9..10, 40..41]);
    assert_eq!(b.resynced_bytes(), 5 * REGION);
    assert_eq!(b.left_to_copy(B_STALE, &map), 0);
}

#[test]
fn a_copy_the_target_missed_stays_to_copy_at_the_next_resync() {
    let now = Instant::now();
    let mut b = background(16, now);
    let map = dirty(16, &[2]);
    let Next::Run(job) = b.next(now, B_STALE, &map) else {
        panic!("no copy");
    };
    assert_eq!(
        job,
        Job::Copy {
            first: 2,
            count: 1,
            source: Side::A,
            target: Side::B
        }
    );
    // B went down during the copy, and came back stale.
    b.copied(2..3, REGION, false, Duration::ZERO, now);
    assert_eq!(b.next(b.not_before(), B_STALE, &map), Next::Run(job));
    assert_eq!(b.resynced_bytes(), 0);
}

#[test]
fn the_pacer_spaces_copies_and_a_retry_waits_a_moment() {
    let now = Instant::now();
    let pacer = PacerConfig {
        rate_max: 64 * REGION,
        rate_min: 64 * REGION,
        latency_target: Duration::from_millis(10),
    };
    let mut b = Background::new(geometry(16), pacer, Duration::from_secs(5), now);
    let map = dirty(16, &[1, 8]);
    assert!(matches!(b.next(now, B_STALE, &map), Next::Run(_)));
    b.copied(1..2, REGION, true, Duration::ZERO, now);
    // 64 regions a second: the next copy waits 1/64 s.
    assert_eq!(b.not_before(), now + Duration::from_secs(1) / 64);
    assert_eq!(b.next(now, B_STALE, &map), Next::Idle);
    assert!(matches!(
        b.next(b.not_before(), B_STALE, &map),
        Next::Run(_)
    ));
    b.retry_later(now);
    assert_eq!(b.next(now, B_STALE, &map), Next::Idle);
    assert!(matches!(
        b.next(now + JOB_RETRY, B_STALE, &map),
        Next::Run(_)
    ));
}

#[test]
fn a_verify_in_sync_compares_every_region_and_reports_those_that_differ() {
    let now = Instant::now();
    let mut b = background(8, now);
    let map = dirty(8, &[2]);
    assert!(b.start_verify());
    assert!(!b.start_verify(), "one verify at a time");
    let mut compared = Vec::new();
    let report = loop {
        match b.next(b.not_before(), IN_SYNC, &map) {
            Next::Run(Job::Compare { region }) => {
                compared.push(region);
                b.compared(region, region != 5, REGION, Duration::ZERO, now);
            }
            Next::Verified(report) => break report,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(compared, (0..8).collect::<Vec<_>>(), "dirty regions too");
    assert_eq!(report.differing, [5]);
    assert_eq!(report.skipped_dirty, 0);
    assert_eq!(b.next(b.not_before(), IN_SYNC, &map), Next::Idle);
}

#[test]
fn a_verify_skips_the_regions_a_side_lacks_and_stops_when_a_side_is_down() {
    let now = Instant::now();
    let mut b = background(8, now);
    let map = dirty(8, &[0, 1, 6]);
    let states = [SideState::InSync, SideState::Stale];
    b.start_verify();
    // A resync comes first while B is stale; the verify waits for it.
    assert!(matches!(
        b.next(now, states, &map),
        Next::Run(Job::Copy { .. })
    ));
    // Without a resync source (A stale, B down), the verify goes on but
    // skips what a side lacks.
    let lacking = [SideState::Stale, SideState::Stale];
    assert_eq!(
        b.next(now, lacking, &map),
        Next::Run(Job::Compare { region: 2 })
    );
    b.compared(2, true, REGION, Duration::ZERO, now);
    let down = [SideState::InSync, SideState::Down];
    let at = b.not_before();
    assert_eq!(
        b.next(at, down, &map),
        Next::VerifyStopped { side: Side::B }
    );
    assert!(!b.has_work(down));
}

#[test]
fn the_sweep_sees_the_regions_written_during_its_interval() {
    let now = Instant::now();
    let mut b = background(8, now);
    b.written(REGION - 1, 2);
    assert_eq!(b.sweep_due(now), None);
    let at = b.next_sweep();
    assert_eq!(b.sweep_due(at), Some(BTreeSet::from([0, 1])));
    assert!(!b.touched(0), "a new interval begins empty");
    b.written(3 * REGION, REGION);
    assert!(b.touched(3));
    assert_eq!(b.next_sweep(), at + Duration::from_secs(5));
}

/// Random dirty maps, copies that land or are missed, and resyncs that
/// restart: every region dirty when a resync began is copied before it
/// says it is done, and none is copied twice once it landed.
#[test]
fn every_dirty_region_is_copied_once_before_the_resync_is_done() {
    let now = Instant::now();
    for seed in 0..200 {
        let mut rng = XorShift::new(seed);
        let regions = 1 + rng.below(200);
        let marked: Vec<u64> = (0..regions).filter(|_| rng.below(3) == 0).collect();
        let map = dirty(regions, &marked);
        let mut b = background(regions, now);
        let mut landed = BTreeSet::new();
        let mut steps = 0;
        loop {
            steps += 1;
            assert!(steps < 10 * regions + 10, "seed {seed}: no end");
            match b.next(b.not_before(), B_STALE, &map) {
                Next::Run(Job::Copy { first, count, .. }) => {
                    assert!(count >= 1);
                    let copy = first..first + count;
                    let lands = rng.below(4) != 0;
                    for r in copy.clone() {
                        assert!(marked.contains(&r), "seed {seed}: clean region {r}");
                        if lands {
                            assert!(landed.insert(r), "seed {seed}: region {r} twice");
                        }
                    }
                    b.copied(copy, count * REGION, lands, Duration::ZERO, now);
                }
                Next::Resynced { .. } => break,
                other => panic!("seed {seed}: {other:?}"),
            }
        }
        let all: BTreeSet<u64> = marked.iter().copied().collect();
        assert_eq!(landed, all, "seed {seed}");
    }
}
