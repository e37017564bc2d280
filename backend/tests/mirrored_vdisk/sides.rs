//! Writes on both sides, a lost side's writes on the survivor, its return with exactly the dirty regions, a full resync, and verify.

use super::*;

#[test]
fn writes_land_on_both_tails_and_leave_no_dirty_region() {
    runtime().block_on(async {
        let (a, b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        for r in 0..16 {
            m.write(region_block(r) * BLOCK as u64, &block(r as u8))
                .await
                .unwrap();
        }
        m.flush().await.unwrap();
        for r in 0..16 {
            assert_eq!(a.block(region_block(r)), block(r as u8), "a, region {r}");
            assert_eq!(b.block(region_block(r)), block(r as u8), "b, region {r}");
        }
        assert_eq!(
            std::fs::read(&a.path).unwrap(),
            std::fs::read(&b.path).unwrap()
        );
        // Written regions stay in the map until swept: a crash now would
        // resync them. In sync, nothing is left to copy.
        assert_eq!(m.durable_regions(), 16);
        assert_eq!(m.status().dirty_bytes, 0);
        m.swept().await;
        let status = m.status();
        assert_eq!(status.sides, [SideState::InSync; 2]);
        assert_eq!(m.records(), [], "nothing to tell the store");
    });
}

#[test]
fn with_one_side_stopped_writes_complete_on_the_survivor_and_their_regions_are_durably_dirty() {
    runtime().block_on(async {
        let (mut a, b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        m.write(0, &block(1)).await.unwrap();
        m.swept().await;

        a.kill().await;
        for r in 1..=10 {
            m.write(region_block(r) * BLOCK as u64, &block(r as u8 + 100))
                .await
                .unwrap();
        }
        m.flush().await.unwrap();
        let status = m.status();
        assert_eq!(status.sides, [SideState::Down, SideState::InSync]);
        // Every region written while degraded, and only those (the first
        // write landed on both sides before the failure).
        assert_eq!(status.dirty_bytes, 10 * REGION);
        assert_eq!(m.records(), [], "A is not the side the store tracks");
        let durable = DirtyMapFile::open(&m.map_path, geometry()).unwrap();
        assert_eq!(
            durable.regions().iter().collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );

        for r in 1..=10 {
            assert_eq!(a.block(region_block(r)), vec![0; BLOCK], "a has region {r}");
            assert_eq!(b.block(region_block(r)), block(r as u8 + 100));
        }
        // Reads, though side A is preferred, come from the survivor.
        for r in 0..=10 {
            let mut back = vec![0; BLOCK];
            m.read(region_block(r) * BLOCK as u64, &mut back)
                .await
                .unwrap();
            let expected = if r == 0 {
                block(1)
            } else {
                block(r as u8 + 100)
            };
            assert_eq!(back, expected, "region {r}");
        }
    });
}

#[test]
fn a_returning_side_gets_exactly_the_dirty_regions_and_is_recorded_current_after_stale() {
    runtime().block_on(async {
        let (a, mut b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        write_regions(&m, 0..=63, 0).await;
        m.swept().await;
        b.kill().await;
        write_regions(&m, 5..=12, 0x55).await;
        m.flush().await.unwrap();
        assert_eq!(
            m.records(),
            [false],
            "the loss is recorded before a write completes"
        );
        assert_eq!(m.status().recorded, Recorded::Stale);
        assert!(!same_files(&a, &b));

        b.restart().await;
        let done = m
            .wait("resynced", |s| {
                s.sides == [SideState::InSync; 2] && s.recorded == Recorded::Current
            })
            .await;
        assert_eq!(
            done.resynced_bytes,
            8 * REGION,
            "only the regions written while b was away"
        );
        assert_eq!(done.dirty_bytes, 0);
        assert_eq!(m.records(), [false, true]);
        assert!(same_files(&a, &b));
        // Cleared for good: a restart would copy nothing.
        let durable = DirtyMapFile::open(&m.map_path, geometry()).unwrap();
        assert_eq!(durable.regions().count(), 0);
    });
}

#[test]
fn a_full_resync_copies_everything_while_writes_go_on() {
    runtime().block_on(async {
        let (a, b) = (TestSide::start().await, TestSide::start().await);
        std::fs::write(
            &a.path,
            (0..SIZE).map(|i| (i % 251) as u8).collect::<Vec<_>>(),
        )
        .unwrap();
        let m = mirror_from(&a, &b, [SideState::InSync, SideState::Stale], true).await;
        assert!(m.status().full);
        // Foreground writes during the resync reach both sides.
        write_regions(&m, 0..=63, 0x33).await;
        let done = m
            .wait("resynced", |s| s.sides == [SideState::InSync; 2] && !s.full)
            .await;
        // A write marks its region again (a crash would leave it half
        // done): one written after its copy is copied once more.
        assert!(done.resynced_bytes >= SIZE, "{done:?}");
        assert!(same_files(&a, &b));
        let report = m.vdisk.verify().await.unwrap();
        assert_eq!((report.regions, report.differing.len()), (SIZE / REGION, 0));
    });
}

#[test]
fn verify_finds_a_region_changed_behind_the_mirror_and_needs_both_sides() {
    runtime().block_on(async {
        let (a, mut b) = (TestSide::start().await, TestSide::start().await);
        let m = mirror(&a, &b).await;
        write_regions(&m, 0..=63, 7).await;
        let clean = m.vdisk.verify().await.unwrap();
        assert_eq!(clean.differing, Vec::<u64>::new());
        assert_eq!(clean.skipped_dirty, 0);

        // A bit flips on b's disk, unknown to the mirror.
        File::options()
            .write(true)
            .open(&b.path)
            .unwrap()
            .write_all_at(&[0xff], 9 * REGION + 17)
            .unwrap();
        assert_eq!(m.vdisk.verify().await.unwrap().differing, [9]);

        // With b away, verify refuses: it compares both copies.
        b.kill().await;
        write_regions(&m, 20..=21, 1).await;
        assert!(m.vdisk.verify().await.is_err());
    });
}
